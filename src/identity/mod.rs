//! Persisted identity graphs: `CREATE IDENTITY GRAPH`, `REFRESH IDENTITY GRAPH`,
//! `DROP IDENTITY GRAPH`, and the `tally.identity_graphs` system table.
//!
//! ```sql
//! CREATE IDENTITY GRAPH people FROM web.identity_edges
//!   WITH (options = '{"limits": {"user_id": 1}}', incremental_column = 'loaded_at');
//! REFRESH IDENTITY GRAPH people;        -- folds in edges with loaded_at past the watermark
//! REFRESH IDENTITY GRAPH people FULL;   -- recomputes from every edge
//! SELECT * FROM people_map;             -- identifier_type, identifier_value, profile_id, ...
//! SELECT * FROM people_merges;          -- old_profile_id -> new_profile_id, per refresh
//! ```
//!
//! A graph is a catalog object (its edges query, options and refresh state) plus Delta
//! tables in its schema, stored merge-on-read:
//! - `<name>_map_base`: one row per identifier with its profile, as of the last compaction;
//! - `<name>_map_changes`: the rows that differ from the base since then (tombstones, with
//!   a null `profile_id`, for identifiers that lost their profile), rewritten by each
//!   refresh; small, since a refresh only touches the components its new edges reach;
//! - `<name>_map`: a view, base rows not overridden plus the change rows, which is what
//!   models and syncs join;
//! - `<name>_merges`: the append-only history of profile ids that were absorbed or renamed,
//!   so downstream tools can follow an old id to its survivor.
//!
//! Why not rewrite one map table per refresh: Delta without deletion vectors must rewrite
//! every file that holds an updated row, and the rows a refresh changes are scattered over
//! the whole map, so a 100k-edge refresh of an 11M-identifier map would pay for the whole
//! map. A full refresh, the first refresh after a restart, or a change set above
//! [`COMPACT_FRACTION`](statements::COMPACT_FRACTION) of the base compacts: it rewrites the
//! base and empties the changes, in that order (a reader between the two commits can see
//! the previous refresh's rows for the identifiers that refresh changed).
//!
//! Resolution is `tally_udfs::identity::IdentityGraph`, the engine behind `identity_stitch`.
//! The server keeps each graph it refreshed in memory ([`GraphCache`]); an incremental
//! refresh reads only the edges whose `incremental_column` is past the stored watermark and
//! resolves only the components they touch. After a restart (or when another server wrote
//! the map since) the graph is rebuilt from the stored map, which keeps every earlier merge
//! decision and profile id, and new edges fold in on top.

pub mod statements;
pub mod system;

use std::collections::HashMap;
use std::sync::Arc;

use tally_udfs::identity::IdentityGraph;

/// A resolved graph kept between refreshes, with the map version it wrote: if the stored
/// map has moved on (another server refreshed it), the cached graph is stale.
#[derive(Debug)]
pub struct CachedGraph {
    /// The resolved graph.
    pub graph: IdentityGraph,
    /// Version of the stored map that this graph wrote (see [`map_version`]).
    pub map_version: i64,
    /// What the base table holds, when this graph wrote or read it: lets an incremental
    /// refresh write only the rows that differ from it. `None` after a restart, when the
    /// graph was seeded from the map view; the next write then compacts.
    pub base: Option<BaseState>,
}

/// The state of a graph's base table as of its last compaction.
#[derive(Debug)]
pub struct BaseState {
    /// Assignment of every identifier in the base table.
    pub snapshot: tally_udfs::identity::AssignmentSnapshot,
    /// Identifiers touched by new edges since (their `first_seen` may have moved without
    /// their profile changing), sorted.
    pub touched: Vec<u32>,
}

/// One number for "which map is stored": the base and change tables' Delta versions
/// together, so that a graph cached by one server is known stale once another server has
/// written either table.
pub fn map_version(base_version: i64, changes_version: i64) -> i64 {
    (base_version << 32) | (changes_version & 0xffff_ffff)
}

/// In-memory identity graphs by qualified name. Each graph has its own async lock, which
/// also keeps two refreshes of one graph from running at once (the second waits).
#[derive(Debug, Default)]
pub struct GraphCache {
    graphs: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<CachedGraph>>>>>,
}

impl GraphCache {
    /// The slot of graph `name` (created empty on first use).
    pub fn slot(&self, name: &str) -> Arc<tokio::sync::Mutex<Option<CachedGraph>>> {
        self.graphs
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Drops a graph from memory (after DROP IDENTITY GRAPH).
    pub fn forget(&self, name: &str) {
        self.graphs.lock().remove(name);
    }
}
