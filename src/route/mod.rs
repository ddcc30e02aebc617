//! Real-time routes: collected events, as they arrive, through SQL to destinations.
//!
//! ```sql
//! CREATE ROUTE signups_to_crm FROM SOURCE web TO DESTINATION crm_hook
//!   WITH (batch_size = 100, give_up_after = '1h')
//!   AS SELECT message_id, user_id, hash_email(json_get_str(traits, 'email')) AS email_sha256
//!      FROM events WHERE type = 'identify';
//! ALTER ROUTE signups_to_crm PAUSE;   -- the log is kept for it meanwhile (within a budget)
//! ALTER ROUTE signups_to_crm RESUME;  -- catches up from where it stopped
//! REPLAY ROUTE signups_to_crm FROM '2024-05-01T00:00:00Z' TO '2024-05-02T00:00:00Z';
//! SELECT * FROM tally.routes;
//! SELECT * FROM tally.route_stats;    -- delivered, failed, retried, filtered, lag, ...
//! DROP ROUTE signups_to_crm;
//! ```
//!
//! A route is a catalog object ([`crate::catalog::RouteEntry`]); its statements are in
//! [`statements`]. Each route runs as its own task ([`runner`]) started and stopped by the
//! [`manager`], which follows the catalog. A route reads the collector's write-ahead log
//! (not the tables: delivery within a second, independent of the flush interval) from its
//! own durable position, which the log keeps for it ([`crate::collect::wal::Wal::save_reader`]),
//! so nothing a route has not delivered is deleted, within the log's retention budget.
//! Each micro-batch of the route's source becomes an Arrow batch registered as `events`
//! ([`events`]), the route's query runs over it with every tally function available, and the
//! result rows go through the activation [`Destination`](crate::activate::destinations::Destination)
//! trait with the destination's rate limiter.
//!
//! Delivery is at least once, with the event's messageId as idempotency key (in every row as
//! `message_id`, and the batch's `Idempotency-Key` derived from the messageIds). Order is kept
//! per user (userId, else anonymousId): when a send fails, the users in it are held and their
//! later events queue behind, while other users keep flowing; a held user is retried with
//! backoff (or after `Retry-After`), until the event is delivered or its age passes
//! `give_up_after`, when it goes to `tally.rejected_rows` and counts as failed. Permanent
//! rejections (4xx) are isolated by splitting the batch, and land in `tally.rejected_rows`.
//! The position a route saves is the first event it has not finished, so a crash re-sends at
//! most what was in flight (with the same messageIds).
//!
//! `REPLAY ROUTE` ([`replay`]) re-sends a time range from the warehouse tables through the
//! same query, with the same messageIds. `tally.routes` and `tally.route_stats` are in
//! [`system`].

pub mod events;
pub mod manager;
pub mod replay;
pub mod runner;
pub mod statements;
pub mod system;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use crate::collect::wal::Wal;
use crate::error::TallyError;

pub use manager::{RouteHandle, start};

/// What can go wrong with a route's definition, each with its SQLSTATE.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The query is not a projection and filter over `events` (0A000).
    #[error("route query: {0}")]
    UnsupportedQuery(String),
    /// The query does not parse (42601).
    #[error("syntax error in the route query: {0}")]
    QuerySyntax(String),
    /// A `WITH (...)` option is unknown or has a bad value (22023).
    #[error("{0}")]
    BadOption(String),
    /// A timestamp of REPLAY ROUTE does not parse (22007).
    #[error("{0}")]
    BadTimestamp(String),
}

impl RouteError {
    /// The SQLSTATE of this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            RouteError::UnsupportedQuery(_) => "0A000",
            RouteError::QuerySyntax(_) => "42601",
            RouteError::BadOption(_) => "22023",
            RouteError::BadTimestamp(_) => "22007",
        }
    }
}

impl From<RouteError> for TallyError {
    fn from(e: RouteError) -> Self {
        let code = e.sqlstate();
        match e {
            RouteError::UnsupportedQuery(m) => TallyError::Unsupported(format!("route query: {m}")),
            RouteError::QuerySyntax(m) => TallyError::syntax(format!("syntax error: {m}")),
            other => TallyError::InvalidValue {
                code,
                message: other.to_string(),
            },
        }
    }
}

/// Upper bounds (milliseconds) of the delivery-latency histogram's buckets; the last bucket
/// holds everything slower.
const LATENCY_BOUNDS_MS: [u64; 20] = [
    1, 2, 5, 10, 20, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 2_000, 5_000, 10_000, 30_000,
    60_000, 300_000,
];

/// Counters of one route since the server started, read by `tally.route_stats`.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Rows the destination accepted.
    pub delivered: AtomicU64,
    /// Events given up after `give_up_after` (in `tally.rejected_rows`).
    pub failed: AtomicU64,
    /// Rows sent again after a transient failure or a throttle.
    pub retried: AtomicU64,
    /// Events of the source that the route's WHERE dropped.
    pub filtered: AtomicU64,
    /// Rows the destination refused for good (in `tally.rejected_rows`).
    pub rejected: AtomicU64,
    /// Events skipped because the log outgrew its retention budget before delivery.
    pub skipped: AtomicU64,
    /// Rows waiting behind a failed send (held users), a gauge.
    pub pending: AtomicU64,
    /// Log records between the route's position and the log's end, a gauge.
    pub lag_events: AtomicU64,
    /// When the oldest unfinished event was received (microseconds, 0 when caught up).
    pub oldest_unfinished_us: AtomicI64,
    /// When the last row was delivered (microseconds, 0 if never).
    pub last_delivered_us: AtomicI64,
    /// Requests made to the destination.
    pub requests: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    /// `running`, `paused`, `waiting` (destination failing), `stopped`.
    pub state: Mutex<&'static str>,
    /// The last delivery error (no secrets), cleared by the next success.
    pub last_error: Mutex<Option<String>>,
}

impl RouteStats {
    /// Records one row's time from acknowledgement to delivery.
    pub fn record_latency(&self, ms: u64) {
        let i = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The latency (ms) below which fraction `q` of delivered rows fall, from the histogram
    /// (the bucket's upper bound); `None` before the first delivery.
    pub fn latency_quantile(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(
                    LATENCY_BOUNDS_MS
                        .get(i)
                        .copied()
                        .unwrap_or(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1] * 2),
                );
            }
        }
        None
    }

    fn set_state(&self, s: &'static str) {
        *self.state.lock() = s;
    }
}

/// Engine-wide route state: each route's counters, the log routes read (for the log's
/// numbers in `tally.route_stats`), and a signal that the catalog's routes changed so the
/// manager reacts at once instead of at its next poll.
#[derive(Debug, Default)]
pub struct Registry {
    stats: DashMap<String, Arc<RouteStats>>,
    changed: tokio::sync::Notify,
    wal: RwLock<Option<Arc<Wal>>>,
}

impl Registry {
    /// The counters of route `name` (created on first use).
    pub fn stats(&self, name: &str) -> Arc<RouteStats> {
        if let Some(s) = self.stats.get(name) {
            return s.clone();
        }
        self.stats.entry(name.to_string()).or_default().clone()
    }

    /// The counters of route `name`, if it ran since the server started.
    pub fn existing_stats(&self, name: &str) -> Option<Arc<RouteStats>> {
        self.stats.get(name).map(|s| s.clone())
    }

    /// Forgets a dropped route's counters.
    pub fn forget(&self, name: &str) {
        self.stats.remove(name);
    }

    /// Tells the manager that routes were created, altered or dropped.
    pub fn notify_changed(&self) {
        self.changed.notify_one();
    }

    /// Waits for [`Registry::notify_changed`].
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The log the routes read, once the collector runs.
    pub fn wal(&self) -> Option<Arc<Wal>> {
        self.wal.read().clone()
    }

    fn set_wal(&self, wal: Arc<Wal>) {
        *self.wal.write() = Some(wal);
    }
}
