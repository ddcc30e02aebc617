//! When a sync runs on its own: a cron expression (`SCHEDULE '0 * * * *'`, minute
//! granularity, UTC) or a fixed interval (`EVERY '15 minutes'`, down to one second so tests
//! and near-real-time syncs need no cron tricks).
//!
//! This module only parses and computes tick times; the loop that runs due syncs is
//! `crate::scheduler`, which sits above activation in the dependency order. Schedules are
//! checked when `CREATE SYNC`/`ALTER SYNC` run, so a bad expression is an error for the user
//! at once (SQLSTATE 22023), never a silent sync that does not run.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::catalog::SyncSchedule;
use crate::error::TallyError;

/// Shortest interval `EVERY` accepts: the scheduler ticks a few times per second, so shorter
/// intervals would not be honoured.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// A schedule that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error(
        "invalid cron expression '{expr}': {reason} (expected five fields: minute hour day-of-month month day-of-week, e.g. '*/15 * * * *')"
    )]
    Cron {
        /// The expression as written.
        expr: String,
        /// What croner said.
        reason: String,
    },
    /// The interval does not parse or is too short.
    #[error(
        "invalid interval '{0}': expected a number and a unit of at least 1 second, e.g. '30 seconds', '15 minutes', '2 hours', '1 day'"
    )]
    Interval(String),
    /// The cron expression has no future occurrence (e.g. February 30th).
    #[error("cron expression '{0}' never fires")]
    Never(String),
}

impl From<ScheduleError> for TallyError {
    fn from(e: ScheduleError) -> Self {
        TallyError::InvalidValue {
            code: "22023",
            message: e.to_string(),
        }
    }
}

/// Checks `SCHEDULE '<expr>'` and returns it as stored in the catalog.
pub fn cron(expr: &str) -> Result<SyncSchedule, ScheduleError> {
    let expr = expr.trim().to_string();
    let parsed = croner::Cron::from_str(&expr).map_err(|e| ScheduleError::Cron {
        expr: expr.clone(),
        reason: e.to_string(),
    })?;
    if parsed.find_next_occurrence(&Utc::now(), false).is_err() {
        return Err(ScheduleError::Never(expr));
    }
    Ok(SyncSchedule::Cron { expr })
}

/// Checks `EVERY '<interval>'` and returns it as stored in the catalog.
pub fn every(text: &str) -> Result<SyncSchedule, ScheduleError> {
    let d = parse_interval(text)
        .filter(|d| *d >= MIN_INTERVAL)
        .ok_or_else(|| ScheduleError::Interval(text.to_string()))?;
    Ok(SyncSchedule::Every {
        text: text.trim().to_string(),
        millis: d.as_millis().min(u64::MAX as u128) as u64,
    })
}

/// `'<number> <unit>'` with units from seconds to weeks (`'90s'`, `'15 minutes'`, `'1 day'`).
fn parse_interval(text: &str) -> Option<Duration> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" | "millisecond" | "milliseconds" => n / 1000.0,
        "s" | "sec" | "secs" | "second" | "seconds" => n,
        "m" | "min" | "mins" | "minute" | "minutes" => n * 60.0,
        "h" | "hour" | "hours" => n * 3600.0,
        "d" | "day" | "days" => n * 86_400.0,
        "w" | "week" | "weeks" => n * 604_800.0,
        _ => return None,
    };
    (secs.is_finite() && (0.0..1e12).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// The first tick strictly after `after`, or `None` when a cron expression never fires again.
pub fn next_after(schedule: &SyncSchedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match schedule {
        SyncSchedule::Every { millis, .. } => {
            let step = chrono::Duration::milliseconds((*millis).min(i64::MAX as u64) as i64);
            after.checked_add_signed(step)
        }
        SyncSchedule::Cron { expr } => croner::Cron::from_str(expr)
            .ok()?
            .find_next_occurrence(&after, false)
            .ok(),
        // Not a clock: the scheduler watches the model instead (`model_fingerprint`).
        SyncSchedule::AfterModel { .. } => None,
    }
}

/// The state of model relation `model` (`schema.name`) that an `AFTER MODEL` sync compares
/// with the state its last run started for; `None` while no such relation exists.
///
/// A table's state is its location and latest Delta version, so every commit to it counts
/// (`tally models run` and `dbt run` rebuilding it, an incremental MERGE, an INSERT) and so
/// does a new table swapped in under the name (`dbt run` builds `x__dbt_tmp` and renames it).
/// Only the log is listed, from `since` (the version seen last time) on, never the table's
/// files. A view's state is when it was created, which a rebuild of a view model renews;
/// the data under a view changing is not a build of the view and does not count. An
/// external table's state is its definition.
pub async fn model_fingerprint(
    engine: &crate::engine::Engine,
    model: &str,
    since: Option<&str>,
) -> crate::error::Result<Option<String>> {
    use crate::catalog::Relation;
    use deltalake::logstore::LogStore as _;
    let Some((schema, name)) = model.split_once('.') else {
        return Ok(None);
    };
    let doc = engine.catalog.current();
    let Some(relation) = doc.schemas.get(schema).and_then(|s| s.relations.get(name)) else {
        return Ok(None);
    };
    Ok(Some(match relation {
        Relation::Table(t) => {
            let prefix = format!("table:{}@", t.location);
            let start = since
                .and_then(|s| s.strip_prefix(&prefix))
                .and_then(|v| v.parse::<deltalake::kernel::Version>().ok())
                .unwrap_or(0);
            let wh = engine.warehouse();
            let url = wh.url_of(&t.location)?;
            let table = deltalake::DeltaTableBuilder::from_url(url)?
                .with_storage_options(wh.options.clone())
                .build()?;
            let store = table.log_store();
            let version = match store.get_latest_version(start).await {
                Ok(v) => v,
                // The log was cleaned up below `start`, or the table is new: list it all.
                Err(_) if start > 0 => store.get_latest_version(0).await.map_err(|e| {
                    crate::error::TallyError::Internal(format!("reading {model}'s log: {e}"))
                })?,
                Err(e) => {
                    return Err(crate::error::TallyError::Internal(format!(
                        "reading {model}'s log: {e}"
                    )));
                }
            };
            format!("{prefix}{version}")
        }
        Relation::View(v) => match &v.created_at {
            Some(at) => format!("view:{at}"),
            None => format!(
                "view:{}",
                super::destinations::digest_hex(&[v.sql.as_bytes()])
            ),
        },
        Relation::External(e) => format!(
            "external:{}",
            super::destinations::digest_hex(&[e.sql.as_bytes()])
        ),
    }))
}

/// How a schedule reads in SQL (`SCHEDULE '...'` or `EVERY '...'`), for `tally.syncs`.
pub fn display(schedule: &SyncSchedule) -> String {
    match schedule {
        SyncSchedule::Cron { expr } => format!("SCHEDULE '{expr}'"),
        SyncSchedule::Every { text, .. } => format!("EVERY '{text}'"),
        SyncSchedule::AfterModel { model } => format!("AFTER MODEL {model}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_steps_schedules() {
        let c = cron("*/15 * * * *").expect("cron");
        let t = DateTime::parse_from_rfc3339("2026-01-01T10:07:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let next = next_after(&c, t).expect("next");
        assert_eq!(next.to_rfc3339(), "2026-01-01T10:15:00+00:00");
        assert!(cron("not a cron").is_err());
        assert!(cron("61 * * * *").is_err());
        let e = every("15 minutes").expect("every");
        assert_eq!(
            next_after(&e, t).expect("next").to_rfc3339(),
            "2026-01-01T10:22:00+00:00"
        );
        assert!(every("1 second").is_ok());
        assert!(every("100ms").is_err());
        assert!(every("soon").is_err());
        assert_eq!(display(&e), "EVERY '15 minutes'");
    }
}
