//! The scheduler of `tally serve`: runs syncs whose schedule (`SCHEDULE '<cron>'` or
//! `EVERY '<interval>'`, see `crate::activate::schedule`) has come due.
//!
//! Policy, chosen so that a scheduled sync behaves like a careful operator typing `RUN SYNC`:
//! - **No overlap.** A run holds the sync's lock ([`crate::activate::Activation::sync_lock`]).
//!   When a tick comes while the sync is running (a `RUN SYNC` or a slow scheduled run), the
//!   tick is skipped and nothing is recorded; the next tick is computed from now.
//! - **Paused syncs don't run**; RESUME schedules from the next tick after now.
//! - **Catch-up once.** `next_run_at` is kept in the catalog. After downtime it lies in the
//!   past: the sync runs once, and the following tick is computed from that moment, so
//!   missed ticks are not replayed one by one.
//! - The next tick is computed (and stored) when a run starts, so a run longer than its
//!   interval is followed at once by one more run, never by a queue of them.
//! - **Shutdown** stops starting runs, then waits up to the grace period for runs in
//!   progress; a run cut short is resumed by the next start (below).
//!
//! - **`AFTER MODEL`** syncs run when their model has been built (see
//!   `activate::schedule::model_fingerprint`: a new Delta version or a new table under the
//!   name, a view created again), whoever built it: `tally models run`, `dbt run` or plain
//!   SQL. The model is polled every [`MODEL_POLL`] and a new state must be seen twice in a
//!   row before the sync runs, so a build that commits several times (create, then swap)
//!   runs the sync once, after it settled. The state a run started for is kept in the
//!   catalog: a build during downtime runs the sync once after restart; a build while the
//!   sync is running waits for that run to end.
//!
//! - **Interrupted runs resume.** A run in progress is marked in the catalog
//!   ([`crate::catalog::RunMarker`]); a marker left by a process that stopped without ending
//!   its run (kill -9, a crash, a shutdown past the grace period) is found when the
//!   scheduler starts, and the sync runs at once, scheduled or not (unless paused). The run
//!   starts from the interrupted run's journal (`activate::progress`), so what the
//!   destination confirmed before the stop is not sent again.
//!
//! The lock is per server: two servers over one warehouse may each schedule the same sync.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::activate::schedule::model_fingerprint;
use crate::activate::schedule::next_after;
use crate::activate::syncs::{INSTANCE, Trigger, run_once};
use crate::catalog::{CatalogDoc, SyncEntry, SyncSchedule};
use crate::engine::Engine;

/// How often the scheduler looks for due syncs (the resolution of `EVERY`).
const TICK: Duration = Duration::from_millis(200);
/// How often it rereads the catalog from storage (changes by this server are seen at once).
const REFRESH: Duration = Duration::from_secs(2);
/// How often `AFTER MODEL` syncs look at their model (a listing of its Delta log).
pub const MODEL_POLL: Duration = Duration::from_secs(1);

/// The running scheduler; [`SchedulerHandle::shutdown`] stops it.
pub struct SchedulerHandle {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

impl std::fmt::Debug for SchedulerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchedulerHandle")
    }
}

impl SchedulerHandle {
    /// Stops starting runs and waits up to `grace` for the runs in progress.
    pub async fn shutdown(self, grace: Duration) {
        self.cancel.cancel();
        let mut handle = self.handle;
        if tokio::time::timeout(grace, &mut handle).await.is_err() {
            // Dropping the loop's task set aborts the runs; each resends next time.
            tracing::warn!("sync runs still in progress at shutdown were stopped");
            handle.abort();
            let _ = handle.await;
        }
    }
}

/// Starts the scheduler over `engine`'s catalog.
pub fn start(engine: Arc<Engine>) -> SchedulerHandle {
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(run(engine, cancel.clone()));
    SchedulerHandle { cancel, handle }
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Stores `next` as the sync's next tick, unless the sync changed meanwhile (dropped,
/// paused or given another schedule by an ALTER that computed its own next tick).
async fn set_next(
    engine: &Engine,
    name: &str,
    seen: &crate::catalog::SyncEntry,
    next: Option<DateTime<Utc>>,
) {
    let next = next.map(|t| t.to_rfc3339());
    let result = engine
        .catalog
        .mutate(|doc| {
            if let Some(e) = doc.syncs.get_mut(name)
                && e.schedule == seen.schedule
                && e.paused == seen.paused
                && e.next_run_at == seen.next_run_at
            {
                e.next_run_at = next.clone();
            }
            Ok(())
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(sync = name, error = %e, "scheduler could not store the next run time");
    }
}

/// Starts one run of sync `name` in `runs`, holding `guard` (its lock) until it ends.
fn spawn_run(
    runs: &mut JoinSet<String>,
    engine: &Arc<Engine>,
    name: &str,
    entry: &SyncEntry,
    guard: tokio::sync::OwnedMutexGuard<()>,
    trigger: Trigger,
) {
    let engine = engine.clone();
    let name = name.to_string();
    let schema = entry.default_schema.clone();
    runs.spawn(async move {
        let _guard = guard;
        let _statement = engine.statement_started();
        let mut session = engine.new_session("tally");
        if let Err(e) = session.set("search_path", &schema) {
            tracing::warn!(sync = name, error = %e, "cannot set the sync's schema");
        }
        if let Err(e) = run_once(&mut session, &name, trigger).await {
            tracing::warn!(sync = name, trigger = trigger.as_str(), error = %e, "sync run failed");
        }
        name
    });
}

/// The new state of an `AFTER MODEL` sync's model once it has settled (the same state at
/// two polls in a row and different from the one the last run started for), else `None`.
async fn model_built(
    engine: &Engine,
    name: &str,
    model: &str,
    entry: &SyncEntry,
    settling: &mut HashMap<String, String>,
) -> Option<String> {
    let state = match model_fingerprint(engine, model, entry.model_seen.as_deref()).await {
        Ok(Some(state)) => state,
        // Not there (yet, or between the two renames of a swap).
        Ok(None) => {
            settling.remove(name);
            return None;
        }
        Err(e) => {
            tracing::warn!(sync = name, model, error = %e, "cannot read the sync's model");
            return None;
        }
    };
    if entry.model_seen.as_deref() == Some(state.as_str()) {
        settling.remove(name);
        return None;
    }
    if settling.get(name) == Some(&state) {
        return Some(state);
    }
    tracing::debug!(
        sync = name,
        model,
        state,
        "model changed; waiting for it to settle"
    );
    settling.insert(name.to_string(), state);
    None
}

/// Stores the model state an `AFTER MODEL` run starts for, unless the sync changed meanwhile.
async fn set_model_seen(engine: &Engine, name: &str, seen: &SyncEntry, state: String) {
    let result = engine
        .catalog
        .mutate(|doc| {
            if let Some(e) = doc.syncs.get_mut(name)
                && e.schedule == seen.schedule
                && e.model_seen == seen.model_seen
            {
                e.model_seen = Some(state.clone());
            }
            Ok(())
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(sync = name, error = %e, "scheduler could not store the model state");
    }
}

/// What to do with a scheduled sync at `now`.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Its tick has not come.
    Wait,
    /// It has no (readable) next tick yet: store this one.
    Start(Option<DateTime<Utc>>),
    /// Its tick has come (perhaps long ago, after downtime): run once, and store this as
    /// the next tick, counted from now so that missed ticks are not replayed.
    Run(Option<DateTime<Utc>>),
}

fn plan(schedule: &SyncSchedule, next_run_at: Option<&str>, now: DateTime<Utc>) -> Plan {
    match parse_time(next_run_at) {
        None => Plan::Start(next_after(schedule, now)),
        Some(due) if due > now => Plan::Wait,
        Some(_) => Plan::Run(next_after(schedule, now)),
    }
}

/// Starts a run of every sync whose last run a stopped process left unfinished.
async fn resume_interrupted(
    engine: &Arc<Engine>,
    runs: &mut JoinSet<String>,
    running: &mut HashSet<String>,
) {
    let doc = match engine.catalog.refresh().await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "scheduler cannot read the catalog to resume interrupted runs");
            return;
        }
    };
    for (name, entry) in &doc.syncs {
        let Some(marker) = &entry.running else {
            continue;
        };
        if marker.instance == *INSTANCE || entry.paused {
            continue;
        }
        let lock = engine.activation.sync_lock(name);
        let Ok(guard) = lock.try_lock_owned() else {
            continue;
        };
        tracing::info!(
            sync = name,
            started_at = marker.started_at,
            "resuming an interrupted sync run"
        );
        running.insert(name.clone());
        spawn_run(runs, engine, name, entry, guard, Trigger::Resume);
    }
}

async fn run(engine: Arc<Engine>, cancel: CancellationToken) {
    let mut runs: JoinSet<String> = JoinSet::new();
    let mut running: HashSet<String> = HashSet::new();
    let mut last_refresh = tokio::time::Instant::now();
    let mut last_model_poll = tokio::time::Instant::now();
    // AFTER MODEL syncs: the model state seen at the last poll, not yet run for.
    let mut settling: HashMap<String, String> = HashMap::new();
    tracing::info!("sync scheduler started");
    resume_interrupted(&engine, &mut runs, &mut running).await;
    loop {
        while let Some(done) = runs.try_join_next() {
            match done {
                Ok(name) => {
                    running.remove(&name);
                }
                Err(e) => tracing::warn!(error = %e, "a scheduled sync run panicked"),
            }
        }
        let doc: Arc<CatalogDoc> = if last_refresh.elapsed() >= REFRESH {
            last_refresh = tokio::time::Instant::now();
            match engine.catalog.refresh().await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler cannot read the catalog; using the last one");
                    engine.catalog.current()
                }
            }
        } else {
            engine.catalog.current()
        };
        let now = Utc::now();
        let poll_models = last_model_poll.elapsed() >= MODEL_POLL;
        if poll_models {
            last_model_poll = tokio::time::Instant::now();
        }
        for (name, entry) in &doc.syncs {
            let Some(schedule) = &entry.schedule else {
                continue;
            };
            if entry.paused || running.contains(name) {
                continue;
            }
            if let SyncSchedule::AfterModel { model } = schedule {
                if !poll_models {
                    continue;
                }
                let Some(state) = model_built(&engine, name, model, entry, &mut settling).await
                else {
                    continue;
                };
                let lock = engine.activation.sync_lock(name);
                let Ok(guard) = lock.try_lock_owned() else {
                    // RUN SYNC is running: the build is run for once it ends.
                    continue;
                };
                settling.remove(name);
                set_model_seen(&engine, name, entry, state).await;
                running.insert(name.clone());
                spawn_run(&mut runs, &engine, name, entry, guard, Trigger::Model);
                continue;
            }
            let next = match plan(schedule, entry.next_run_at.as_deref(), now) {
                Plan::Wait => continue,
                Plan::Start(next) => {
                    set_next(&engine, name, entry, next).await;
                    continue;
                }
                Plan::Run(next) => next,
            };
            let lock = engine.activation.sync_lock(name);
            let Ok(guard) = lock.try_lock_owned() else {
                tracing::info!(
                    sync = name,
                    "sync is running (RUN SYNC); skipping this scheduled tick"
                );
                set_next(&engine, name, entry, next).await;
                continue;
            };
            set_next(&engine, name, entry, next).await;
            running.insert(name.clone());
            spawn_run(&mut runs, &engine, name, entry, guard, Trigger::Schedule);
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
    if !runs.is_empty() {
        tracing::info!(
            runs = runs.len(),
            "scheduler stopping; waiting for sync runs in progress"
        );
        while runs.join_next().await.is_some() {}
    }
    tracing::info!("sync scheduler stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catches_up_once_after_downtime() {
        let hourly = crate::activate::schedule::every("1 hour").expect("every");
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let hour = chrono::Duration::hours(1);
        // Down for five hours: one run now, the next tick an hour from now.
        let missed = (now - hour * 5).to_rfc3339();
        assert_eq!(
            plan(&hourly, Some(&missed), now),
            Plan::Run(Some(now + hour))
        );
        let later = (now + hour).to_rfc3339();
        assert_eq!(plan(&hourly, Some(&later), now), Plan::Wait);
        assert_eq!(plan(&hourly, None, now), Plan::Start(Some(now + hour)));
        let cron = crate::activate::schedule::cron("0 3 * * *").expect("cron");
        assert_eq!(
            plan(&cron, Some(&missed), now),
            Plan::Run(Some(now + hour * 15))
        );
    }
}
