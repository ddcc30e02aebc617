//! Activation: getting warehouse rows into the tools where teams act on them.
//!
//! ```sql
//! CREATE DESTINATION crm TYPE hubspot WITH (token_env = 'HUBSPOT_TOKEN', object = 'contacts');
//! ALTER DESTINATION crm SET (rate_limit = '10');
//! COPY (SELECT email, plan FROM trial_users) TO DESTINATION crm
//!   WITH (mode = 'upsert', key = 'email', map = 'plan:tally_plan');
//! SELECT * FROM tally.destinations;      -- secrets shown as ***
//! SELECT * FROM tally.rejected_rows;     -- rows a destination refused for good, with why
//! DROP DESTINATION crm;
//! ```
//!
//! A destination is a catalog object (its type and options); each type is a module of
//! [`destinations`] behind the [`destinations::Destination`] trait and follows its vendor's
//! published contract (endpoint, auth, batch limit, upsert semantics, error codes).
//! `COPY ... TO DESTINATION` ([`statements`]) streams the query's record batches, turns rows
//! into JSON objects by column name ([`rows`]) and hands batches to the delivery engine
//! ([`delivery`]): retries with exponential backoff and jitter, `Retry-After` honoured, an
//! adaptive rate limiter per destination ([`limiter`]), bisection of rejected batches to
//! isolate the bad rows, which land in `tally.rejected_rows` ([`rejected`]). Batches of one
//! COPY go out one at a time, in query order, so rows with the same key are never reordered.
//!
//! Delivery is at least once; destinations that support idempotency get a key derived from
//! the batch content and the copy id (webhook `Idempotency-Key`, NATS `Nats-Msg-Id`), and the
//! database destinations are idempotent by construction (upserts), so a retry never creates a
//! duplicate.

pub mod delivery;
pub mod destinations;
pub mod diff;
pub mod limiter;
pub mod progress;
pub mod rejected;
pub mod rows;
pub mod runs;
pub mod schedule;
pub mod statements;
pub mod syncs;
pub mod system;

use std::collections::HashMap;
use std::sync::Arc;

/// Engine-wide activation state: the rate limiter of each destination, shared by every COPY
/// to it, so that two sessions writing to one API share its request budget.
#[derive(Debug, Default)]
pub struct Activation {
    limiters: parking_lot::Mutex<HashMap<String, Arc<limiter::AimdLimiter>>>,
    sync_locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Activation {
    /// The limiter of destination `name`, created with `ceiling` requests per second (none:
    /// unthrottled until the destination first answers 429).
    pub fn limiter(&self, name: &str, ceiling: Option<f64>) -> Arc<limiter::AimdLimiter> {
        let mut map = self.limiters.lock();
        match map.get(name) {
            Some(l) if l.ceiling() == ceiling => l.clone(),
            _ => {
                let l = Arc::new(limiter::AimdLimiter::new(ceiling));
                map.insert(name.to_string(), l.clone());
                l
            }
        }
    }

    /// The lock that keeps two runs of sync `name` from overlapping in this server: `RUN
    /// SYNC` waits for it, the scheduler skips its tick when it is taken.
    pub fn sync_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.sync_locks
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Forgets the limiter of a dropped or altered destination.
    pub fn forget(&self, name: &str) {
        self.limiters.lock().remove(name);
    }
}
