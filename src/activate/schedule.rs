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
    }
}

/// How a schedule reads in SQL (`SCHEDULE '...'` or `EVERY '...'`), for `tally.syncs`.
pub fn display(schedule: &SyncSchedule) -> String {
    match schedule {
        SyncSchedule::Cron { expr } => format!("SCHEDULE '{expr}'"),
        SyncSchedule::Every { text, .. } => format!("EVERY '{text}'"),
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
