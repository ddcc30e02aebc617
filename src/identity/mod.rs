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
//! A graph is a catalog object (its edges query, options and refresh state) plus two Delta
//! tables in its schema: `<name>_map`, one row per identifier with its profile, rewritten
//! atomically by each refresh (readers never see a half-written map), and `<name>_merges`,
//! the append-only history of profile ids that were absorbed or renamed, so downstream tools
//! can follow an old id to its survivor.
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
    /// Delta version of `<name>_map` that this graph wrote.
    pub map_version: i64,
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
