//! Identity resolution: the `identity_stitch` table function and the [`IdentityGraph`]
//! behind it.
//!
//! ```sql
//! SELECT * FROM identity_stitch('web.identity_edges');
//! SELECT * FROM identity_stitch('identity_edges', '{"limits": {"user_id": 1, "email": 3}}');
//! SELECT * FROM identity_stitch('SELECT left_type, left_value, right_type, right_value, event_ts
//!                                FROM identity_edges WHERE event_ts > now() - INTERVAL ''30 days''');
//! ```
//!
//! The edges have the columns `left_type, left_value, right_type, right_value` and
//! optionally an event timestamp (`event_ts`, `ts` or `timestamp`), the shape of the
//! generator's `identity_edges.csv` and of the edges a tracking plan derives from events.
//! The result has one row per identifier: `identifier_type, identifier_value, profile_id,
//! profile_size`.
//!
//! - Junk values never merge anyone: a default blocklist (empty, `null`, `undefined`,
//!   `anonymous`, `0`, `-1`, all-zero ids) plus user lists per type; blocked identifiers
//!   are left out of the result.
//! - A shared identifier (a kiosk device) above `max_degree` distinct neighbours does not
//!   merge through ordinary edges; per-type limits (default: 1 user id, 5 emails, 3 phones
//!   per profile) refuse the merges that would break them, in a canonical order, so the
//!   result never depends on the order of the input. Explicit merges (aliases, by default
//!   `user_id`–`user_id` edges) are never refused.
//! - Profile ids are stable: derived from the profile's highest-priority, earliest-seen
//!   identifier (see [`graph`] for the exact rule).
//!
//! See [`options`] for the options document and [`graph`] for the algorithm, the memory
//! per identifier and the incremental API.

pub mod graph;
pub mod options;
pub mod table;

use std::sync::Arc;

use datafusion::prelude::SessionContext;

pub use graph::{
    AssignmentSnapshot, Assignments, GraphError, IdentityGraph, ProfileChange, ResolveStats,
};
pub use options::{OptionsError, StitchOptions};
pub use table::IdentityStitch;

/// Registers the identity table functions on `ctx`: `identity_stitch`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udtf("identity_stitch", Arc::new(IdentityStitch));
}

#[cfg(test)]
mod tests;
