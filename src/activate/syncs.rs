//! Syncs: a named `COPY ... TO DESTINATION` that sends only what changed since its last
//! successful run.
//!
//! ```sql
//! CREATE SYNC trials_to_crm AS
//!   COPY (SELECT email, plan FROM trial_users) TO DESTINATION crm WITH (mode = 'upsert', key = 'email');
//! RUN SYNC trials_to_crm;      -- first run: every row; later runs: added and changed rows
//! SELECT * FROM tally.syncs;
//! SELECT * FROM tally.sync_runs ORDER BY started_at DESC;
//! DROP SYNC trials_to_crm;
//! ```
//!
//! Each run diffs the query result against the snapshot of the last successful run, a Delta
//! table of `(row_key, row_hash)` under `_tally/activation/syncs/<name>/snapshot`, with one
//! streamed DataFusion plan ([`super::diff`]): only rows whose key is new or whose hash
//! changed are sent. The new snapshot is written from the same stream: the keys the query
//! returned, without the rows the destination refused, so those are sent again by the next
//! run. A run that fails or is cut short leaves the snapshot as it was, and what the
//! destination confirmed meanwhile in the sync's journal ([`super::progress`]): the next
//! run diffs against both, so it sends what the stopped run did not get confirmed, not
//! everything again. Memory stays bounded: the diff is
//! DataFusion's hash join (its build side, about 16 bytes per key plus the key's text, is
//! accounted in the session's memory pool), and the run holds at most one record batch of the
//! result and one request's worth of rows.
//!
//! `mode = 'mirror'` makes the destination follow the query: rows are sent as upserts, and
//! the keys of the last snapshot that the query no longer returns are removed at the
//! destination ([`super::destinations::Destination::remove`], in batches of the COPY's
//! `batch_size`), counted as `rows_removed` in `tally.sync_runs`. A key whose removal the
//! destination refused (it lands in `tally.rejected_rows`, counted in `rows_failed`) stays in
//! the new snapshot, so the next run tries again; a removal that fails for good (retries run
//! out, credentials) fails the run, and the next run tries again from the old snapshot. The
//! first run of a mirror sync has no snapshot, so it removes nothing: records the destination
//! held before the sync existed are never touched (use `COPY ... WITH (mode = 'mirror')` once
//! for a destination-side reset where the type supports it). A mirror sync is refused at
//! `CREATE SYNC` (0A000) when the destination's type cannot remove records
//! ([`super::destinations::TypeSpec::removes`]).
//!
//! Keys should be unique in the query, as for any upsert: a key returned twice is compared
//! (and may be sent) once per row.
//!
//! The query's names resolve with the search path of the session that runs it (the default
//! schema at creation is stored for when the scheduler runs syncs without a session).
//!
//! `SCHEDULE '<cron>'` or `EVERY '<interval>'` lets `tally serve`'s scheduler
//! (`crate::scheduler`) run the sync on its own; `ALTER SYNC ... PAUSE | RESUME` holds and
//! releases it. Runs of one sync never overlap within a server (see
//! [`super::Activation::sync_lock`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array,
};
use datafusion::arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::datasource::TableProvider;
use datafusion::physical_plan::memory::MemoryStream;
use futures::StreamExt;

use super::delivery::{Deliverer, DeliveryStats};
use super::destinations::{Mode, Record, TypeSpec};
use super::diff::{self, SnapshotWriter};
use super::progress::{self, Journal};
use super::statements::{ActivateStatement, REJECTED_FLUSH, fatal, prepare_copy};
use crate::catalog::{SyncEntry, SyncSchedule};
use crate::engine::Session;
use crate::error::{Result, TallyError, unwrap_datafusion};
use crate::statements::{Completion, Output, change_catalog};
use crate::storage::Warehouse;
use crate::storage::delta::{DeltaTableProvider, open_table};

/// The folder of sync `name`'s state: its snapshot and its run journal.
fn sync_dir(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let tag = &super::destinations::digest_hex(&[name.as_bytes()])[..8];
    format!("_tally/activation/syncs/{safe}_{tag}/")
}

/// Whether a sync's COPY options ask for a mirror, and the options its COPY runs with: a
/// mirror sync sends its rows as upserts and removes the rest itself.
fn sync_options(options: &BTreeMap<String, String>) -> Result<(bool, BTreeMap<String, String>)> {
    let mirror = match options.get("mode") {
        Some(m) => Mode::parse(m)? == Mode::Mirror,
        None => false,
    };
    let mut o = options.clone();
    if mirror {
        o.insert("mode".into(), "upsert".into());
    }
    Ok((mirror, o))
}

/// A mirror sync needs a destination type that upserts and removes records.
fn check_mirror(spec: &TypeSpec, destination: &str) -> Result<()> {
    if !spec.removes || !spec.modes.contains(&Mode::Upsert) {
        return Err(TallyError::Unsupported(format!(
            "a mirror sync removes the records that left its query, and {} destinations cannot remove records (destination {destination}); use mode 'upsert'",
            spec.name
        )));
    }
    Ok(())
}

/// The COPY a sync runs, checked: a key is required.
fn check_copy(stmt: &ActivateStatement) -> Result<()> {
    let ActivateStatement::Copy { options, .. } = stmt else {
        return Err(TallyError::syntax(
            "syntax error: CREATE SYNC name AS COPY (query) TO DESTINATION d WITH (...)",
        ));
    };
    if !options.contains_key("key") {
        return Err(TallyError::InvalidValue {
            code: "22023",
            message: "a sync needs key = '<column>' to tell changed rows from new ones".into(),
        });
    }
    Ok(())
}

/// `CREATE SYNC [IF NOT EXISTS] name AS COPY ...`.
pub async fn create(
    session: &mut Session,
    name: String,
    copy_sql: String,
    if_not_exists: bool,
    schedule: Option<SyncSchedule>,
) -> Result<Output> {
    let stmt = super::statements::parse(&copy_sql)?;
    check_copy(&stmt)?;
    if let ActivateStatement::Copy {
        destination,
        options,
        ..
    } = &stmt
    {
        let Some(dest) = session.catalog.doc().destinations.get(destination).cloned() else {
            return Err(TallyError::NotFound {
                kind: "destination",
                name: destination.clone(),
            });
        };
        if sync_options(options)?.0 {
            check_mirror(
                super::destinations::spec(&dest.destination_type)?,
                destination,
            )?;
        }
    }
    let now = Utc::now().to_rfc3339();
    let next_run_at = schedule
        .as_ref()
        .and_then(|s| super::schedule::next_after(s, Utc::now()))
        .map(|t| t.to_rfc3339());
    let schema = crate::statements::names::default_schema(session);
    let (schedule, model_seen) = match schedule {
        Some(s) => {
            let (s, seen) = qualify_model(session, s, &schema).await?;
            (Some(s), seen)
        }
        None => (None, None),
    };
    let created = change_catalog(session, |doc| {
        if doc.syncs.contains_key(&name) {
            return if if_not_exists {
                Ok(false)
            } else {
                Err(TallyError::AlreadyExists {
                    kind: "sync",
                    name: name.clone(),
                })
            };
        }
        doc.syncs.insert(
            name.clone(),
            SyncEntry {
                copy_sql: copy_sql.clone(),
                default_schema: schema.clone(),
                created_at: now.clone(),
                runs: 0,
                last_run_at: None,
                last_status: None,
                last_error: None,
                last_sent: 0,
                last_unchanged: 0,
                last_failed: 0,
                schedule: schedule.clone(),
                paused: false,
                next_run_at: next_run_at.clone(),
                last_scheduled_at: None,
                model_seen: model_seen.clone(),
                running: None,
            },
        );
        Ok(true)
    })
    .await?;
    let mut c = Completion::tag("CREATE SYNC");
    if !created {
        c = c.with_notice(format!("sync \"{name}\" already exists, skipping"));
    }
    Ok(Output::Command(c))
}

/// `ALTER SYNC name ...`: changes the schedule or pauses/resumes it. A new schedule or a
/// RESUME starts from the next tick after now: ticks missed while paused are not replayed.
pub async fn alter(session: &mut Session, name: String, action: AlterSync) -> Result<Output> {
    let now = Utc::now();
    let (action, model_seen) = match action {
        AlterSync::SetSchedule(s) => {
            let schema = crate::statements::names::default_schema(session);
            let (s, seen) = qualify_model(session, s, &schema).await?;
            (AlterSync::SetSchedule(s), seen)
        }
        other => (other, None),
    };
    change_catalog(session, |doc| {
        let e = doc
            .syncs
            .get_mut(&name)
            .ok_or_else(|| TallyError::NotFound {
                kind: "sync",
                name: name.clone(),
            })?;
        match &action {
            AlterSync::SetSchedule(s) => {
                e.schedule = Some(s.clone());
                e.model_seen = model_seen.clone();
            }
            AlterSync::DropSchedule => e.schedule = None,
            AlterSync::Pause => e.paused = true,
            AlterSync::Resume => e.paused = false,
        }
        if !matches!(action, AlterSync::Pause) {
            e.next_run_at = e
                .schedule
                .as_ref()
                .and_then(|s| super::schedule::next_after(s, now))
                .map(|t| t.to_rfc3339());
        }
        Ok(())
    })
    .await?;
    tracing::info!(sync = name, ?action, "sync altered");
    Ok(Output::Command(Completion::tag("ALTER SYNC")))
}

/// For `AFTER MODEL`: the model's qualified name (unqualified names are in `schema`, the
/// session's default) and its state now, so that the sync runs on the model's next build
/// rather than at once. A model that does not exist yet is allowed (its first build runs
/// the sync): dbt projects are often deployed before their first run.
async fn qualify_model(
    session: &Session,
    schedule: SyncSchedule,
    schema: &str,
) -> Result<(SyncSchedule, Option<String>)> {
    match schedule {
        SyncSchedule::AfterModel { model } => {
            let model = if model.contains('.') {
                model
            } else {
                format!("{schema}.{model}")
            };
            let seen = super::schedule::model_fingerprint(&session.engine, &model, None).await?;
            Ok((SyncSchedule::AfterModel { model }, seen))
        }
        other => Ok((other, None)),
    }
}

/// `DROP SYNC [IF EXISTS] name`: forgets the sync and its snapshot. Waits for a run in
/// progress, so that the run does not write the snapshot back after it was deleted.
pub async fn drop(session: &mut Session, name: String, if_exists: bool) -> Result<Output> {
    let lock = session.engine.activation.sync_lock(&name);
    let _running = lock.lock().await;
    let removed = change_catalog(session, |doc| Ok(doc.syncs.remove(&name).is_some())).await?;
    if !removed {
        if if_exists {
            return Ok(Output::Command(
                Completion::tag("DROP SYNC")
                    .with_notice(format!("sync \"{name}\" does not exist, skipping")),
            ));
        }
        return Err(TallyError::NotFound { kind: "sync", name });
    }
    let wh = session.engine.warehouse().clone();
    if let Err(e) = wh.delete_prefix(&sync_dir(&name)).await {
        tracing::warn!(sync = name, error = %e, "could not delete the sync's snapshot");
    }
    Ok(Output::Command(Completion::tag("DROP SYNC")))
}

/// The snapshot table of the last successful run and its Delta version, if there is one.
/// Errors other than "no table there" fail the run: treating an unreadable snapshot as none
/// would forget what a mirror sync has to remove.
async fn read_snapshot(
    wh: &Warehouse,
    location: &str,
) -> Result<(Option<Arc<dyn TableProvider>>, Option<u64>)> {
    if !wh.has_table(location).await? {
        return Ok((None, None));
    }
    let table = open_table(&wh.url_of(location)?, &wh.options).await?;
    let version = table.version();
    Ok((
        Some(Arc::new(DeltaTableProvider::try_new(table).await?)),
        version,
    ))
}

/// The counts of one run so far (kept for `tally.sync_runs` when the run fails too).
#[derive(Debug, Default)]
struct Counts {
    added: u64,
    changed: u64,
    unchanged: u64,
    left_query: u64,
    /// Journal rows of an interrupted run that this run started from.
    resumed: u64,
    /// Time spent computing the change set: waiting for the diff plan's batches and
    /// sorting them out (not sending, not writing the snapshot).
    diff: Duration,
}

/// The rows of one run whose fate is not settled yet.
struct Pending {
    /// Records waiting to fill a request.
    records: Vec<Record>,
    /// `(first ordinal, (row_key, row_hash))` of sent rows not yet written to the snapshot.
    held: VecDeque<(u64, RecordBatch)>,
    /// Ordinals the destination refused (sent rows) that are not yet settled.
    refused: BTreeSet<u64>,
    /// How many of the deliverer's rejected rows were noted in `refused`.
    seen: usize,
    /// Rows that left the query, waiting for a removal request (mirror syncs).
    gone: Vec<RecordBatch>,
    gone_rows: usize,
    /// The next ordinal: rows sent and keys removed are numbered in one sequence.
    ordinal: u64,
}

impl Pending {
    fn note_refused(&mut self, d: &Deliverer<'_>) {
        for r in &d.rejected[self.seen..] {
            self.refused.insert(r.ordinal);
        }
        self.seen = d.rejected.len();
    }

    /// Writes the held snapshot rows below ordinal `upto` (whose delivery is settled),
    /// without refused rows and rows without a key.
    /// The journal learns of them too; without a writer (a run that failed), only the
    /// journal does.
    async fn release(
        &mut self,
        upto: u64,
        mut writer: Option<&mut SnapshotWriter>,
        journal: &mut Journal,
    ) -> Result<()> {
        while let Some((start, b)) = self.held.pop_front() {
            if b.num_rows() == 0 {
                // A record batch with nothing to send: nothing to settle, and left at the
                // front it would hold back every later row.
                continue;
            }
            let end = start + b.num_rows() as u64;
            let n = upto.min(end).saturating_sub(start) as usize;
            if n == 0 {
                self.held.push_front((start, b));
                break;
            }
            let part = b.slice(0, n);
            let keys = part.column(0);
            let keep =
                BooleanArray::from_iter((0..n).map(|i| {
                    Some(!keys.is_null(i) && !self.refused.contains(&(start + i as u64)))
                }));
            let accepted =
                filter_record_batch(&part, &keep).map_err(|e| TallyError::DataFusion(e.into()))?;
            journal.sent(&accepted).await;
            if let Some(w) = writer.as_deref_mut() {
                w.write(accepted).await?;
            }
            if n < b.num_rows() {
                self.held
                    .push_front((start + n as u64, b.slice(n, b.num_rows() - n)));
            }
        }
        self.refused = self.refused.split_off(&upto);
        Ok(())
    }

    /// Removes up to `max` of the rows that left the query; keys the destination refused
    /// to remove stay in the new snapshot.
    async fn remove(
        &mut self,
        max: usize,
        d: &mut Deliverer<'_>,
        writer: &mut SnapshotWriter,
        journal: &mut Journal,
    ) -> Result<()> {
        if self.gone_rows == 0 {
            return Ok(());
        }
        let err = |e: datafusion::arrow::error::ArrowError| TallyError::DataFusion(e.into());
        let all = concat_batches(&self.gone[0].schema(), &self.gone).map_err(err)?;
        let n = max.min(all.num_rows());
        let now = all.slice(0, n);
        self.gone = if n < all.num_rows() {
            vec![all.slice(n, all.num_rows() - n)]
        } else {
            vec![]
        };
        self.gone_rows -= n;
        let keys = diff::key_texts(&now)?;
        let refused = d.remove(&keys, self.ordinal).await?;
        self.ordinal += n as u64;
        let done = UInt32Array::from_iter_values(
            (0..n as u32).filter(|i| !refused.contains(&(*i as usize))),
        );
        journal
            .removed(&take_record_batch(&now, &done).map_err(err)?)
            .await;
        if !refused.is_empty() {
            let idx = UInt32Array::from_iter_values(refused.iter().map(|&i| i as u32));
            writer
                .write(take_record_batch(&now, &idx).map_err(err)?)
                .await?;
        }
        Ok(())
    }
}

/// One sync run: the diff streamed, changed rows delivered, (mirror) rows that left the
/// query removed, and the new snapshot committed at the end, only if everything succeeded.
/// Meanwhile what the destination confirmed is journaled ([`super::progress`]), so a run
/// that stops early (a crash, a failure) is resumed by the next one without resending it.
/// `dir` is the sync's folder, `run` the run's start in microseconds.
async fn sync_copy(
    session: &mut Session,
    query: &str,
    destination: &str,
    options: &BTreeMap<String, String>,
    dir: &str,
    run: i64,
    counts: &mut Counts,
) -> Result<(String, DeliveryStats)> {
    let (mirror, copy_options) = sync_options(options)?;
    let p = prepare_copy(session, query, destination, &copy_options).await?;
    if mirror {
        check_mirror(p.spec, destination)?;
    }
    let key_field = p.key_field.as_deref();
    let copy_id = p.copy_id.clone();
    let wh = session.engine.warehouse().clone();
    let location = format!("{dir}snapshot/");
    let journal_dir = progress::location(dir);
    let (old, version) = read_snapshot(&wh, &location).await?;
    let (old, resumed) =
        progress::effective_snapshot(&session.ctx, &wh, &journal_dir, old, version).await?;
    counts.resumed = resumed;
    if resumed > 0 {
        tracing::info!(
            rows = resumed,
            "resuming an interrupted sync run: rows it confirmed are not sent again"
        );
    }
    let plan = diff::plan(&session.ctx, p.df, &p.mapping, old)?;
    p.dest
        .begin(&copy_id, p.mode, key_field)
        .await
        .map_err(fatal)?;
    let mut writer =
        SnapshotWriter::start(&session.ctx, &wh, &location, plan.snapshot.clone()).await?;
    let mut journal = progress::Journal::start(
        wh.clone(),
        format!("{journal_dir}{}/", progress::base_tag(version)),
        run,
    );
    let mut d = Deliverer::new(
        destination,
        p.dest.as_ref(),
        p.limiter.clone(),
        p.policy.clone(),
        &copy_id,
        p.mode,
        key_field,
    );
    let batch_size = p.batch_size;
    let mut st = Pending {
        records: Vec::with_capacity(batch_size),
        held: VecDeque::new(),
        refused: BTreeSet::new(),
        seen: 0,
        gone: vec![],
        gone_rows: 0,
        ordinal: 0,
    };
    let outcome: Result<()> = async {
        let t = Instant::now();
        let mut stream = plan.df.execute_stream().await.map_err(unwrap_datafusion)?;
        counts.diff += t.elapsed();
        loop {
            let t = Instant::now();
            let Some(batch) = stream.next().await else {
                counts.diff += t.elapsed();
                break;
            };
            let s = diff::split(
                &batch.map_err(unwrap_datafusion)?,
                &plan.payload,
                &plan.snapshot,
            )?;
            counts.diff += t.elapsed();
            counts.added += s.added;
            counts.changed += s.changed;
            counts.unchanged += s.unchanged;
            writer.write(s.keep).await?;
            if s.gone.num_rows() > 0 {
                counts.left_query += s.gone.num_rows() as u64;
                // Without mirror, rows that left the query simply leave the snapshot.
                if mirror {
                    st.gone_rows += s.gone.num_rows();
                    st.gone.push(s.gone);
                    while st.gone_rows >= batch_size {
                        st.remove(batch_size, &mut d, &mut writer, &mut journal)
                            .await?;
                    }
                }
            }
            let records = p.mapping.records(&s.send, st.ordinal)?;
            st.held.push_back((st.ordinal, s.send_snapshot));
            st.ordinal += s.send.num_rows() as u64;
            for r in records {
                if r.key.is_none() {
                    d.reject_locally(&r, "the key column is null");
                    continue;
                }
                let ordinal = r.ordinal;
                st.records.push(r);
                if st.records.len() >= batch_size {
                    d.deliver(&st.records).await?;
                    st.records.clear();
                    // Settled up to this row: into the journal now, not after the whole
                    // record batch, so a crash resends at most the journal's last second.
                    st.note_refused(&d);
                    st.release(ordinal + 1, Some(&mut writer), &mut journal)
                        .await?;
                }
            }
            st.note_refused(&d);
            let upto = st.records.first().map_or(st.ordinal, |r| r.ordinal);
            st.release(upto, Some(&mut writer), &mut journal).await?;
            if d.rejected.len() >= REJECTED_FLUSH {
                super::rejected::append(&wh, &d.rejected).await?;
                d.rejected.clear();
                st.seen = 0;
            }
        }
        if !st.records.is_empty() {
            d.deliver(&st.records).await?;
            st.records.clear();
        }
        st.note_refused(&d);
        st.release(u64::MAX, Some(&mut writer), &mut journal)
            .await?;
        while st.gone_rows > 0 {
            st.remove(batch_size, &mut d, &mut writer, &mut journal)
                .await?;
        }
        Ok(())
    }
    .await;
    if outcome.is_err() {
        // Requests go out one at a time in ordinal order: every row below the first one
        // still waiting (the failed request's, when a send failed) was settled.
        st.note_refused(&d);
        let upto = st.records.first().map_or(st.ordinal, |r| r.ordinal);
        if let Err(e) = st.release(upto, None, &mut journal).await {
            tracing::warn!(error = %e, "could not journal what the failed run delivered");
        }
    }
    // Refused rows are kept even when the run stops early.
    let kept = super::rejected::append(&wh, &d.rejected).await;
    let stats = d.stats.clone();
    // The journal is made whole before the snapshot commits: if the commit fails, the next
    // run still knows what was confirmed.
    if let Err(e) = journal.finish().await {
        tracing::warn!(error = %e, "could not journal the sync run's progress; a rerun may resend rows");
    }
    let committed = match (outcome, kept) {
        (Ok(()), Ok(())) => writer.commit().await,
        (Err(e), _) | (Ok(()), Err(e)) => {
            writer.abort().await;
            Err(e)
        }
    };
    committed?;
    // The new snapshot version made the journal stale; deleting it only saves the next run
    // a listing.
    progress::clear(&wh, &journal_dir).await;
    Ok((copy_id, stats))
}

/// Who started a sync run, recorded in `tally.sync_runs.trigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `RUN SYNC`.
    Manual,
    /// The scheduler, at a tick of the sync's schedule.
    Schedule,
    /// The scheduler, after a build of the sync's `AFTER MODEL` model.
    Model,
    /// The scheduler, after a restart, for a run the server's stop cut short.
    Resume,
}

impl Trigger {
    /// The name stored in `tally.sync_runs`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::Model => "model",
            Trigger::Resume => "resume",
        }
    }
}

/// The counts of one successful run.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// The COPY id of the run.
    pub copy_id: String,
    /// Rows new since the last successful run.
    pub added: u64,
    /// Rows changed since the last successful run.
    pub changed: u64,
    /// Rows not sent because they did not change.
    pub unchanged: u64,
    /// Keys of the last snapshot the query no longer returns.
    pub left_query: u64,
    /// Records a mirror sync removed at the destination.
    pub removed: u64,
    /// Milliseconds spent computing the change set (see `tally.sync_runs.diff_ms`).
    pub diff_ms: u64,
    /// Rows the destination accepted.
    pub delivered: u64,
    /// Rows the destination refused for good.
    pub rejected: u64,
    /// Retried requests.
    pub retried: u64,
}

/// A random id of this process, stored in the run marker of the syncs it runs
/// ([`crate::catalog::RunMarker`]): a marker with another id was left by a process that
/// stopped mid-run.
pub static INSTANCE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| uuid::Uuid::new_v4().to_string());

/// Records in `tally.sync_runs` a run that a crash (or kill -9) cut short: it never
/// recorded its own end. What it confirmed is in the sync's journal, so the run that
/// records this resumes it.
async fn record_interrupted(session: &Session, name: &str, marker: &crate::catalog::RunMarker) {
    let started_at = chrono::DateTime::parse_from_rfc3339(&marker.started_at)
        .map(|t| t.timestamp_micros())
        .unwrap_or_default();
    let run = super::runs::SyncRun {
        sync: name.to_string(),
        run_id: String::new(),
        started_at,
        finished_at: Utc::now().timestamp_micros(),
        status: "interrupted".into(),
        rows_added: 0,
        rows_changed: 0,
        rows_unchanged: 0,
        rows_delivered: 0,
        rows_failed: 0,
        error: Some(
            "the server stopped during the run; the next run resumed it from its journal".into(),
        ),
        trigger: marker.trigger.clone(),
        rows_removed: 0,
        diff_ms: 0,
    };
    tracing::warn!(
        sync = name,
        started_at = marker.started_at,
        "a run of this sync was interrupted (the server stopped); resuming it"
    );
    if let Err(e) = super::runs::append(session.engine.warehouse(), &run).await {
        tracing::warn!(sync = name, error = %e, "could not record the interrupted run");
    }
}

/// One run of sync `name` in `session`, recorded in `tally.sync_runs` and in the catalog
/// whatever its outcome. The caller holds the sync's lock
/// ([`super::Activation::sync_lock`]) so that two runs never overlap.
pub async fn run_once(session: &mut Session, name: &str, trigger: Trigger) -> Result<RunReport> {
    let name = name.to_string();
    let entry = session
        .catalog
        .doc()
        .syncs
        .get(&name)
        .cloned()
        .ok_or_else(|| TallyError::NotFound {
            kind: "sync",
            name: name.clone(),
        })?;
    let ActivateStatement::Copy {
        query,
        destination,
        options,
    } = super::statements::parse(&entry.copy_sql)?
    else {
        return Err(TallyError::Internal(format!(
            "sync {name} does not hold a COPY"
        )));
    };
    let dir = sync_dir(&name);
    let mut counts = Counts::default();
    let started = Utc::now();
    let started_at = started.timestamp_micros();
    if let Some(marker) = &entry.running
        && marker.instance != *INSTANCE
    {
        record_interrupted(session, &name, marker).await;
    }
    let marker = crate::catalog::RunMarker {
        started_at: started.to_rfc3339(),
        instance: INSTANCE.clone(),
        trigger: trigger.as_str().to_string(),
    };
    change_catalog(session, |doc| {
        if let Some(e) = doc.syncs.get_mut(&name) {
            e.running = Some(marker.clone());
        }
        Ok(())
    })
    .await?;
    tracing::info!(sync = name, trigger = trigger.as_str(), "sync run starts");
    let outcome = sync_copy(
        session,
        &query,
        &destination,
        &options,
        &dir,
        started_at,
        &mut counts,
    )
    .await;
    let now = Utc::now().to_rfc3339();
    let (status, error, sent, failed) = match &outcome {
        Ok((_, s)) => ("succeeded", None, s.delivered, s.rejected),
        Err(e) => ("failed", Some(e.to_string()), 0, 0),
    };
    let unchanged = counts.unchanged;
    let removed = outcome.as_ref().map_or(0, |(_, s)| s.removed);
    let diff_ms = counts.diff.as_millis() as u64;
    let run = super::runs::SyncRun {
        sync: name.clone(),
        run_id: outcome
            .as_ref()
            .map(|(id, _)| id.clone())
            .unwrap_or_default(),
        started_at,
        finished_at: Utc::now().timestamp_micros(),
        status: status.to_string(),
        rows_added: counts.added,
        rows_changed: counts.changed,
        rows_unchanged: unchanged,
        rows_delivered: sent,
        rows_failed: failed,
        error: error.clone(),
        trigger: trigger.as_str().to_string(),
        rows_removed: removed,
        diff_ms,
    };
    if let Err(e) = super::runs::append(session.engine.warehouse(), &run).await {
        tracing::warn!(sync = name, error = %e, "could not record the sync run in tally.sync_runs");
    }
    match &error {
        Some(e) => {
            tracing::warn!(sync = name, trigger = trigger.as_str(), error = %e, "sync run failed")
        }
        None => tracing::info!(
            sync = name,
            trigger = trigger.as_str(),
            delivered = sent,
            removed,
            failed,
            diff_ms,
            "sync run finished"
        ),
    }
    let scheduled_at = (trigger != Trigger::Manual).then(|| started.to_rfc3339());
    change_catalog(session, |doc| {
        if let Some(e) = doc.syncs.get_mut(&name) {
            e.runs += 1;
            e.last_run_at = Some(now.clone());
            e.last_status = Some(status.to_string());
            e.last_error = error.clone();
            e.last_sent = sent;
            e.last_unchanged = unchanged;
            e.last_failed = failed;
            e.running = None;
            if scheduled_at.is_some() {
                e.last_scheduled_at = scheduled_at.clone();
            }
        }
        Ok(())
    })
    .await?;
    let (copy_id, stats) = outcome?;
    Ok(RunReport {
        copy_id,
        added: counts.added,
        changed: counts.changed,
        unchanged: counts.unchanged,
        left_query: counts.left_query,
        removed: stats.removed,
        diff_ms,
        delivered: stats.delivered,
        rejected: stats.rejected,
        retried: stats.retried,
    })
}

/// `RUN SYNC name`: one run, answered with one row of counts. When the scheduler is running
/// the same sync, this waits for that run to finish first (runs of one sync never overlap).
pub async fn run(session: &mut Session, name: String) -> Result<Output> {
    if !session.catalog.doc().syncs.contains_key(&name) {
        return Err(TallyError::NotFound { kind: "sync", name });
    }
    let lock = session.engine.activation.sync_lock(&name);
    let _running = lock.lock().await;
    let r = run_once(session, &name, Trigger::Manual).await?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("sync", DataType::Utf8, false),
        Field::new("copy_id", DataType::Utf8, false),
        Field::new("added", DataType::Int64, false),
        Field::new("changed", DataType::Int64, false),
        Field::new("unchanged", DataType::Int64, false),
        Field::new("left_query", DataType::Int64, false),
        Field::new("removed", DataType::Int64, false),
        Field::new("delivered", DataType::Int64, false),
        Field::new("rejected", DataType::Int64, false),
        Field::new("retried", DataType::Int64, false),
        Field::new("diff_ms", DataType::Int64, false),
    ]));
    let n = |v: u64| -> ArrayRef { Arc::new(Int64Array::from(vec![v as i64])) };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![name.as_str()])),
            Arc::new(StringArray::from(vec![r.copy_id.as_str()])),
            n(r.added),
            n(r.changed),
            n(r.unchanged),
            n(r.left_query),
            n(r.removed),
            n(r.delivered),
            n(r.rejected),
            n(r.retried),
            n(r.diff_ms),
        ],
    )
    .map_err(|e| TallyError::DataFusion(e.into()))?;
    Ok(Output::Rows(Box::pin(MemoryStream::try_new(
        vec![batch],
        schema,
        None,
    )?)))
}

/// `tally.syncs`: one row per sync with its COPY, the outcome of its last run and its
/// schedule (`next_run_at` is NULL when the sync has no schedule or is paused).
pub fn syncs_table(
    doc: &crate::catalog::CatalogDoc,
) -> datafusion::common::Result<Arc<dyn datafusion::datasource::TableProvider>> {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let micros = |s: Option<&str>| {
        s.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_micros())
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("copy_sql", DataType::Utf8, false),
        Field::new("runs", DataType::Int64, false),
        Field::new("last_run_at", DataType::Utf8, true),
        Field::new("last_status", DataType::Utf8, true),
        Field::new("last_error", DataType::Utf8, true),
        Field::new("last_sent", DataType::Int64, false),
        Field::new("last_unchanged", DataType::Int64, false),
        Field::new("last_failed", DataType::Int64, false),
        Field::new("schedule", DataType::Utf8, true),
        Field::new("paused", DataType::Boolean, false),
        Field::new("next_run_at", ts(), true),
        Field::new("last_scheduled_at", ts(), true),
    ]));
    let s: Vec<(&String, &SyncEntry)> = doc.syncs.iter().collect();
    let text = |f: &dyn Fn(&SyncEntry) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(
            s.iter().map(|(_, e)| f(e)).collect::<Vec<_>>(),
        ))
    };
    let int = |f: &dyn Fn(&SyncEntry) -> u64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            s.iter().map(|(_, e)| f(e) as i64),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            s.iter().map(|(n, _)| n.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            s.iter().map(|(_, e)| e.copy_sql.as_str()),
        )),
        int(&|e| e.runs),
        text(&|e| e.last_run_at.clone()),
        text(&|e| e.last_status.clone()),
        text(&|e| e.last_error.clone()),
        int(&|e| e.last_sent),
        int(&|e| e.last_unchanged),
        int(&|e| e.last_failed),
        text(&|e| e.schedule.as_ref().map(super::schedule::display)),
        Arc::new(BooleanArray::from_iter(
            s.iter().map(|(_, e)| Some(e.paused)),
        )),
        Arc::new(
            TimestampMicrosecondArray::from(
                s.iter()
                    .map(|(_, e)| {
                        if e.paused || e.schedule.is_none() {
                            None
                        } else {
                            micros(e.next_run_at.as_deref())
                        }
                    })
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from(
                s.iter()
                    .map(|(_, e)| micros(e.last_scheduled_at.as_deref()))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(datafusion::catalog::MemTable::try_new(
        schema,
        vec![vec![batch]],
    )?))
}

/// `text` without its first `n` whitespace-separated words.
fn skip_words(text: &str, n: usize) -> &str {
    let mut rest = text;
    for _ in 0..n {
        rest = next_word(rest).1;
    }
    rest
}

/// The first word of `text` and what follows it.
fn next_word(text: &str) -> (&str, &str) {
    let t = text.trim_start();
    let end = t.find(char::is_whitespace).unwrap_or(t.len());
    t.split_at(end)
}

/// A single-quoted literal at the start of `text` (`''` is a quote) and what follows it.
fn literal(text: &str) -> Result<(String, &str)> {
    let t = text.trim_start();
    let body = t.strip_prefix('\'').ok_or_else(|| {
        TallyError::syntax(
            "syntax error: expected a quoted schedule, e.g. '*/15 * * * *' or '15 minutes'",
        )
    })?;
    let mut out = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                chars.next();
                out.push('\'');
            } else {
                return Ok((out, &body[i + 1..]));
            }
        } else {
            out.push(c);
        }
    }
    Err(TallyError::syntax(
        "syntax error: unterminated quoted schedule",
    ))
}

/// An optional `SCHEDULE '<cron>'`, `EVERY '<interval>'` or `AFTER MODEL <model>` at the start of `text`, checked
/// (22023 when it cannot be used), and what follows it.
fn schedule_clause(text: &str) -> Result<(Option<SyncSchedule>, &str)> {
    let (kw, after) = next_word(text);
    if kw.eq_ignore_ascii_case("schedule") {
        let (lit, rest) = literal(after)?;
        Ok((Some(super::schedule::cron(&lit)?), rest))
    } else if kw.eq_ignore_ascii_case("every") {
        let (lit, rest) = literal(after)?;
        Ok((Some(super::schedule::every(&lit)?), rest))
    } else if kw.eq_ignore_ascii_case("after") {
        let (model_kw, after_model) = next_word(after);
        let (name, rest) = next_word(after_model);
        let name = name.trim_end_matches(';');
        if !model_kw.eq_ignore_ascii_case("model") || name.is_empty() {
            return Err(TallyError::syntax(
                "syntax error: expected AFTER MODEL <model>, e.g. AFTER MODEL analytics.cohort",
            ));
        }
        let model = name
            .split('.')
            .map(
                |part| match part.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
                    Some(quoted) => quoted.to_string(),
                    None => part.to_ascii_lowercase(),
                },
            )
            .collect::<Vec<_>>()
            .join(".");
        Ok((Some(SyncSchedule::AfterModel { model }), rest))
    } else {
        Ok((None, text))
    }
}

/// Parses `CREATE SYNC [IF NOT EXISTS] name [SCHEDULE '<cron>' | EVERY '<interval>'] AS COPY ...`,
/// `ALTER SYNC name SET SCHEDULE/SET EVERY/DROP SCHEDULE/PAUSE/RESUME`, `RUN SYNC name`,
/// `DROP SYNC [IF EXISTS] name`.
pub fn parse(text: &str) -> Result<SyncStatement> {
    let syntax = |m: &str| TallyError::syntax(format!("syntax error: {m}"));
    let words: Vec<&str> = text.split_whitespace().collect();
    let verb = words
        .first()
        .map(|w| w.to_ascii_lowercase())
        .unwrap_or_default();
    let ident = |w: &str| -> String {
        let w = w.trim_end_matches(';');
        match w.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
            Some(q) => q.replace("\"\"", "\""),
            None => w.to_ascii_lowercase(),
        }
    };
    let mut i = 2;
    match verb.as_str() {
        "create" => {
            let mut if_not_exists = false;
            if words.get(2).is_some_and(|w| w.eq_ignore_ascii_case("if")) {
                if_not_exists = true;
                i = 5;
            }
            let name = words
                .get(i)
                .map(|w| ident(w))
                .ok_or_else(|| syntax("CREATE SYNC needs a name"))?;
            let (schedule, rest) = schedule_clause(skip_words(text, i + 1))?;
            let (kw, rest) = next_word(rest);
            if !kw.eq_ignore_ascii_case("as") {
                return Err(syntax(
                    "CREATE SYNC name [SCHEDULE '<cron>' | EVERY '<interval>' | AFTER MODEL <model>] AS COPY (query) TO DESTINATION d WITH (...)",
                ));
            }
            let copy_sql = rest.trim().trim_end_matches(';').trim().to_string();
            Ok(SyncStatement::Create {
                name,
                copy_sql,
                if_not_exists,
                schedule,
            })
        }
        "alter" => {
            let name = words
                .get(2)
                .map(|w| ident(w))
                .ok_or_else(|| syntax("ALTER SYNC needs a name"))?;
            let usage = "ALTER SYNC name SET SCHEDULE '<cron>' | SET EVERY '<interval>' | SET AFTER MODEL <model> | DROP SCHEDULE | PAUSE | RESUME";
            let rest = skip_words(text, 3);
            let (first, after) = next_word(rest);
            let action = match first.to_ascii_lowercase().trim_end_matches(';') {
                "set" => match schedule_clause(after)? {
                    (Some(schedule), tail) if tail.trim().trim_end_matches(';').is_empty() => {
                        AlterSync::SetSchedule(schedule)
                    }
                    _ => return Err(syntax(usage)),
                },
                "drop" => {
                    let (second, tail) = next_word(after);
                    if !second
                        .trim_end_matches(';')
                        .eq_ignore_ascii_case("schedule")
                        || !tail.trim().trim_end_matches(';').is_empty()
                    {
                        return Err(syntax(usage));
                    }
                    AlterSync::DropSchedule
                }
                "pause" if after.trim().trim_end_matches(';').is_empty() => AlterSync::Pause,
                "resume" if after.trim().trim_end_matches(';').is_empty() => AlterSync::Resume,
                _ => return Err(syntax(usage)),
            };
            Ok(SyncStatement::Alter { name, action })
        }
        "run" | "drop" => {
            let mut if_exists = false;
            if verb == "drop" && words.get(2).is_some_and(|w| w.eq_ignore_ascii_case("if")) {
                if_exists = true;
                i = 4;
            }
            let name = words
                .get(i)
                .map(|w| ident(w))
                .ok_or_else(|| syntax("expected a sync name"))?;
            if words.len() > i + 1 {
                return Err(syntax("RUN SYNC name | DROP SYNC [IF EXISTS] name"));
            }
            Ok(if verb == "run" {
                SyncStatement::Run { name }
            } else {
                SyncStatement::Drop { name, if_exists }
            })
        }
        _ => Err(syntax("expected CREATE, ALTER, RUN or DROP SYNC")),
    }
}

/// A parsed sync statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncStatement {
    /// `CREATE SYNC`.
    Create {
        /// Sync name.
        name: String,
        /// The `COPY ... TO DESTINATION` text it runs.
        copy_sql: String,
        /// IF NOT EXISTS given.
        if_not_exists: bool,
        /// `SCHEDULE '...'` or `EVERY '...'`, checked.
        schedule: Option<SyncSchedule>,
    },
    /// `ALTER SYNC`.
    Alter {
        /// Sync name.
        name: String,
        /// What changes.
        action: AlterSync,
    },
    /// `RUN SYNC`.
    Run {
        /// Sync name.
        name: String,
    },
    /// `DROP SYNC`.
    Drop {
        /// Sync name.
        name: String,
        /// IF EXISTS given.
        if_exists: bool,
    },
}

/// What `ALTER SYNC` changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlterSync {
    /// `SET SCHEDULE '<cron>'` or `SET EVERY '<interval>'`: replaces the schedule; the next
    /// run is the first tick from now.
    SetSchedule(SyncSchedule),
    /// `DROP SCHEDULE`: back to `RUN SYNC` only.
    DropSchedule,
    /// `PAUSE`: the scheduler leaves the sync alone (a run in progress finishes).
    Pause,
    /// `RESUME`: scheduled again from the next tick after now (missed ticks are not replayed).
    Resume,
}

/// Runs a sync statement.
pub async fn execute(session: &mut Session, stmt: SyncStatement) -> Result<Output> {
    match stmt {
        SyncStatement::Create {
            name,
            copy_sql,
            if_not_exists,
            schedule,
        } => create(session, name, copy_sql, if_not_exists, schedule).await,
        SyncStatement::Alter { name, action } => alter(session, name, action).await,
        SyncStatement::Run { name } => run(session, name).await,
        SyncStatement::Drop { name, if_exists } => drop(session, name, if_exists).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sync_statements() {
        assert_eq!(
            parse("CREATE SYNC IF NOT EXISTS Out AS COPY (SELECT a AS b FROM t) TO DESTINATION d WITH (key = 'b');")
                .expect("parses"),
            SyncStatement::Create {
                name: "out".into(),
                copy_sql: "COPY (SELECT a AS b FROM t) TO DESTINATION d WITH (key = 'b')".into(),
                if_not_exists: true,
                schedule: None,
            }
        );
        assert_eq!(
            parse("CREATE SYNC out SCHEDULE '*/5 * * * *' AS COPY (SELECT 1 AS k) TO DESTINATION d WITH (key = 'k')")
                .expect("parses"),
            SyncStatement::Create {
                name: "out".into(),
                copy_sql: "COPY (SELECT 1 AS k) TO DESTINATION d WITH (key = 'k')".into(),
                if_not_exists: false,
                schedule: Some(SyncSchedule::Cron { expr: "*/5 * * * *".into() }),
            }
        );
        let every =
            parse("CREATE SYNC out EVERY '15 minutes' AS COPY t TO DESTINATION d").expect("parses");
        assert!(matches!(
            every,
            SyncStatement::Create {
                schedule: Some(SyncSchedule::Every {
                    millis: 900_000,
                    ..
                }),
                ..
            }
        ));
        let bad = parse("CREATE SYNC out SCHEDULE 'every tuesday' AS COPY t TO DESTINATION d")
            .expect_err("bad cron");
        assert_eq!(bad.sqlstate(), "22023");
        assert_eq!(
            parse("ALTER SYNC out SET EVERY '2 hours'").expect("parses"),
            SyncStatement::Alter {
                name: "out".into(),
                action: AlterSync::SetSchedule(SyncSchedule::Every {
                    text: "2 hours".into(),
                    millis: 7_200_000
                }),
            }
        );
        assert_eq!(
            parse("ALTER SYNC out DROP SCHEDULE;").expect("parses"),
            SyncStatement::Alter {
                name: "out".into(),
                action: AlterSync::DropSchedule
            }
        );
        assert_eq!(
            parse("alter sync out pause").expect("parses"),
            SyncStatement::Alter {
                name: "out".into(),
                action: AlterSync::Pause
            }
        );
        assert!(parse("ALTER SYNC out SET SCHEDULE").is_err());
        assert!(parse("ALTER SYNC out RESUME now").is_err());
        assert_eq!(
            parse("RUN SYNC out").expect("parses"),
            SyncStatement::Run { name: "out".into() }
        );
        assert_eq!(
            parse("DROP SYNC IF EXISTS out").expect("parses"),
            SyncStatement::Drop {
                name: "out".into(),
                if_exists: true
            }
        );
    }
}
