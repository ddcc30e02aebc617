//! The identity graph: interned identifiers, edges, and their resolution into profiles.
//!
//! [`IdentityGraph`] is the engine behind `identity_stitch` and the public API for
//! incremental identity graphs: feed it edges ([`IdentityGraph::add_edges`]), call
//! [`IdentityGraph::resolve`], read the assignment ([`IdentityGraph::assignments`]); later
//! add more edges and call `resolve` again, which recomputes only the components the new
//! edges touch and gives exactly what a fresh graph over all edges would give. After a
//! restart, [`IdentityGraph::seed_profiles`] rebuilds a graph from a previously stored map,
//! keeping its merge decisions and profile ids, and new edges fold in on top.
//!
//! # Algorithm
//! 1. **Interning.** Each identifier `(type, value)` becomes a dense `u32`: the type is a
//!    `u8` (at most 255 types), the value bytes go to one arena, a hash table of ids finds
//!    them again. The 64-bit hash is XXH3 of the value seeded with XXH3 of the type name, so
//!    it is stable across runs, versions and machines.
//! 2. **Shared identifiers.** An identifier with more distinct neighbours than its
//!    `max_degree` (a kiosk device, a test account) is a *hub*: its ordinary edges do not
//!    merge anything, so it stays a profile of its own.
//! 3. **Components.** Union-find (union by size, path halving) over every edge that is an
//!    explicit merge or touches no hub. This is input-order independent by nature.
//! 4. **Limits.** A component whose identifier counts respect every per-type limit is a
//!    profile as it is (no merge inside it can break a limit, because counts only grow).
//!    A component that breaks a limit is rebuilt from its own edges in a canonical order:
//!    explicit merges first; then stronger evidence first, by the priority of the edge's
//!    weaker endpoint type, then of its stronger one (a login linking a cookie to a user id
//!    is applied before a cookie seen on a shared device); then by event timestamp; then by
//!    the endpoints' stable hashes (then their values, should two hashes collide). A merge is refused when both sides
//!    already hold identifiers of a limited type and together they would exceed the limit;
//!    explicit merges are never refused. Because the order depends only on edge content,
//!    shuffled input gives the same profiles.
//! 5. **Profile ids.** Each profile is named after its *representative*: the identifier
//!    with the highest-priority type (the `priority` option), then the earliest first-seen
//!    timestamp (the minimum event timestamp over its edges), then the smallest stable hash,
//!    then the smallest value. The profile id is the XXH3-128 of the representative's value
//!    seeded by its type, as 32 lower-case hex digits. So the same input always gives the
//!    same ids, and a profile keeps its id when edges are appended, unless the appended edges
//!    bring it an identifier of a higher-priority type, or one seen earlier, or merge it with
//!    a profile whose representative ranks higher; then the surviving id is chosen by the
//!    same rule, and the absorbed one can be found by comparing the old and new maps.
//!
//! # Memory
//! Per identifier: 8 (hash) + 8 (arena end offset) + 1 (type) + 8 (first seen) + 4
//! (degree) + 4 + 4 (union-find parent and size) + 4 + 4 (representative and profile size)
//! plus about 9 (hash-table slot at 7/8 load, power-of-two capacity) = about 54 bytes, plus 16
//! bytes per stored edge (about 0.9 edges per identifier in Segment-style data, so about 15
//! bytes per identifier), plus the value bytes themselves. That is **about 70 MB per million
//! identifiers plus the strings**. Resolution adds a transient 5 bytes per identifier (flattened
//! roots, touched flags) plus 4 per identifier per limited type, and, only when some
//! component breaks a limit, 8 bytes per identifier plus 16 per edge of the offending
//! components. Capacity doubling of the vectors can add up to
//! the same again at the moment of growth.
//!
//! Measured (`memory_per_identifier_is_bounded` and BENCHMARKS.md): see BENCHMARKS.md,
//! "Identity resolution".

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Int64Builder, LargeStringArray, RecordBatch, StringArray, StringBuilder,
    StringViewArray, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use hashbrown::HashTable;
use twox_hash::{XxHash3_64, XxHash3_128};

use super::options::{StitchOptions, default_blocked};

/// Names of the edge columns `identity_stitch` reads.
pub const EDGE_COLUMNS: [&str; 4] = ["left_type", "left_value", "right_type", "right_value"];

/// Names accepted for the optional event-timestamp column of the edges, first match wins.
pub const TIMESTAMP_COLUMNS: [&str; 3] = ["event_ts", "ts", "timestamp"];

/// Errors of the identity graph. They carry enough context to fix the input.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A required edge column is absent.
    #[error(
        "identity_stitch: the edges have no column \"{0}\" (expected left_type, left_value, right_type, right_value and optionally event_ts)"
    )]
    MissingColumn(String),
    /// A column could not be read as text or timestamp.
    #[error("identity_stitch: column \"{column}\" cannot be read as {expected}: {source}")]
    BadColumn {
        /// The column.
        column: String,
        /// What it should hold.
        expected: &'static str,
        /// Arrow's reason.
        source: datafusion::arrow::error::ArrowError,
    },
    /// More identifier types than the compact type id holds.
    #[error(
        "identity_stitch: more than 255 distinct identifier types (found \"{0}\"); are type and value columns swapped?"
    )]
    TooManyTypes(String),
    /// More identifiers than the compact node id holds.
    #[error("identity_stitch: more than {max} distinct identifiers")]
    TooManyIdentifiers {
        /// The maximum.
        max: u32,
    },
    /// An Arrow error while building output.
    #[error("identity_stitch: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
}

const ALIAS_BIT: u32 = 1 << 31;
const SEED_BIT: u32 = 1 << 30;
const ID_MASK: u32 = SEED_BIT - 1;
const MAX_NODES: u32 = SEED_BIT - 1;
const NONE: u32 = u32::MAX;
/// First-seen of an identifier without timestamped edges: it ranks after timestamped ones.
const NO_TS: i64 = i64::MAX;
/// First-seen of a seeded representative (from a stored map without first-seen times).
const SEEDED_REP_TS: i64 = i64::MIN + 1;
/// First-seen of other seeded identifiers.
const SEEDED_TS: i64 = i64::MIN + 2;

/// One stored edge: endpoints `a < b` (node ids) with flags in `b`'s high bits, and the
/// event timestamp in microseconds ([`NO_TS`] when unknown). 16 bytes.
#[derive(Debug, Clone, Copy)]
struct Edge {
    a: u32,
    b: u32,
    ts: i64,
}

impl Edge {
    fn b(&self) -> u32 {
        self.b & ID_MASK
    }
    fn alias(&self) -> bool {
        self.b & ALIAS_BIT != 0
    }
}

/// Per identifier type: its name, hash seed and what the options say about it.
#[derive(Debug, Clone)]
struct TypeInfo {
    name: String,
    seed: u64,
    rank: u32,
    limit: Option<u32>,
    max_degree: Option<u32>,
    blocklist: Option<HashSet<String>>,
    /// Bit `t` set: edges between this type and type `t` are explicit merges.
    merge_with: [u64; 4],
}

/// Counts of one resolution, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolveStats {
    /// Distinct identifiers in the graph.
    pub identifiers: usize,
    /// Stored edges (self-loops and edges with a blocked endpoint are not stored).
    pub edges: usize,
    /// Edges folded in by this resolution (all of them the first time).
    pub new_edges: usize,
    /// Identifiers whose profile was (re)computed.
    pub recomputed: usize,
    /// Identifiers that are hubs (above their `max_degree`).
    pub hubs: usize,
    /// Components rebuilt under limits.
    pub limited_components: usize,
    /// Merges refused by a limit.
    pub refused_merges: usize,
}

/// An identity graph: identifiers, the edges between them and, after
/// [`resolve`](Self::resolve), each identifier's profile.
///
/// This is the incremental core that `CREATE IDENTITY GRAPH` / `REFRESH IDENTITY GRAPH`
/// can keep in memory per graph: `add_edges` with the new rows, `resolve`, write
/// `assignments` (or only the changed ones, see [`changed_since`](Self::changed_since)).
/// Memory: about 70 bytes per identifier plus the value bytes (see the module docs).
#[derive(Debug, Clone)]
pub struct IdentityGraph {
    options: Arc<StitchOptions>,
    types: Vec<TypeInfo>,
    // per identifier
    hashes: Vec<u64>,
    ends: Vec<u64>,
    node_type: Vec<u8>,
    first_seen: Vec<i64>,
    degree: Vec<u32>,
    arena: Vec<u8>,
    table: HashTable<u32>,
    // edges
    edges: Vec<Edge>,
    // resolution state
    parent: Vec<u32>,
    size: Vec<u32>,
    rep: Vec<u32>,
    psize: Vec<u32>,
    hubs: HashSet<u32>,
    /// Row degree at which a hub candidate was last found not to be a hub.
    checked_degree: HashMap<u32, u32>,
    resolved_nodes: usize,
    resolved_edges: usize,
    resolved_once: bool,
    seed_anchors: HashMap<String, u32>,
    /// Resolved identifiers whose first-seen time moved earlier through an edge that was not
    /// stored (its other endpoint was blocked): their profiles must be recomputed.
    dirty: Vec<u32>,
}

/// Text columns of any Arrow string type, read without copying.
enum Strs<'a> {
    Utf8(&'a StringArray),
    Large(&'a LargeStringArray),
    View(&'a StringViewArray),
}

impl Strs<'_> {
    fn get(&self, i: usize) -> Option<&str> {
        match self {
            Strs::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            Strs::Large(a) => a.is_valid(i).then(|| a.value(i)),
            Strs::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

/// Finds `name` in `batch` and makes it readable as text (casting non-string types).
fn text_column(batch: &RecordBatch, name: &str) -> Result<ArrayRef, GraphError> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| GraphError::MissingColumn(name.to_string()))?;
    match col.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(col.clone()),
        _ => cast(col, &DataType::Utf8).map_err(|source| GraphError::BadColumn {
            column: name.to_string(),
            expected: "text",
            source,
        }),
    }
}

fn strs(a: &ArrayRef) -> Strs<'_> {
    if let Some(s) = a.as_any().downcast_ref::<StringArray>() {
        Strs::Utf8(s)
    } else if let Some(s) = a.as_any().downcast_ref::<LargeStringArray>() {
        Strs::Large(s)
    } else if let Some(s) = a.as_any().downcast_ref::<StringViewArray>() {
        Strs::View(s)
    } else {
        // text_column only returns the three string types.
        unreachable!("text_column returned {:?}", a.data_type())
    }
}

/// The optional timestamp column of `batch`, as microseconds since the epoch.
fn timestamp_column(batch: &RecordBatch) -> Result<Option<TimestampMicrosecondArray>, GraphError> {
    let Some((name, col)) = TIMESTAMP_COLUMNS
        .iter()
        .find_map(|n| batch.column_by_name(n).map(|c| (*n, c)))
    else {
        return Ok(None);
    };
    let micros =
        cast(col, &DataType::Timestamp(TimeUnit::Microsecond, None)).map_err(|source| {
            GraphError::BadColumn {
                column: name.to_string(),
                expected: "a timestamp",
                source,
            }
        })?;
    Ok(micros
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .cloned())
}

impl IdentityGraph {
    /// An empty graph resolved with `options`.
    pub fn new(options: StitchOptions) -> Self {
        IdentityGraph {
            options: Arc::new(options),
            types: Vec::new(),
            hashes: Vec::new(),
            ends: Vec::new(),
            node_type: Vec::new(),
            first_seen: Vec::new(),
            degree: Vec::new(),
            arena: Vec::new(),
            table: HashTable::new(),
            edges: Vec::new(),
            parent: Vec::new(),
            size: Vec::new(),
            rep: Vec::new(),
            psize: Vec::new(),
            hubs: HashSet::new(),
            checked_degree: HashMap::new(),
            resolved_nodes: 0,
            resolved_edges: 0,
            resolved_once: false,
            seed_anchors: HashMap::new(),
            dirty: Vec::new(),
        }
    }

    /// The options this graph resolves with.
    pub fn options(&self) -> &StitchOptions {
        &self.options
    }

    /// Number of distinct identifiers.
    pub fn identifier_count(&self) -> usize {
        self.hashes.len()
    }

    /// Number of stored edges.
    pub fn edge_count(&self) -> usize {
        self.edges.len()
    }

    /// Whether edges were added since the last [`resolve`](Self::resolve).
    pub fn needs_resolve(&self) -> bool {
        !self.resolved_once
            || self.resolved_edges != self.edges.len()
            || self.resolved_nodes != self.hashes.len()
            || !self.dirty.is_empty()
    }

    /// Bytes held by the graph (vector and table capacities plus the value arena), for
    /// memory accounting.
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        self.hashes.capacity() * 8
            + self.ends.capacity() * 8
            + self.node_type.capacity()
            + self.first_seen.capacity() * 8
            + self.degree.capacity() * 4
            + self.arena.capacity()
            + self.table.allocation_size()
            + self.edges.capacity() * size_of::<Edge>()
            + (self.parent.capacity()
                + self.size.capacity()
                + self.rep.capacity()
                + self.psize.capacity())
                * 4
            + self.hubs.capacity() * 8
            + self.checked_degree.capacity() * 12
    }

    fn type_id(&mut self, name: &str) -> Result<u8, GraphError> {
        if let Some(i) = self.types.iter().position(|t| t.name == name) {
            return Ok(i as u8);
        }
        if self.types.len() >= 255 {
            return Err(GraphError::TooManyTypes(name.to_string()));
        }
        let id = self.types.len();
        let opts = &self.options;
        let rank = match opts.priority.iter().position(|p| p == name) {
            Some(p) => p as u32,
            // Unlisted types rank after listed ones; among themselves by name (see `better`).
            None => u32::MAX,
        };
        let mut blocklist: Option<HashSet<String>> = None;
        for key in ["*", name] {
            if let Some(values) = opts.blocklist.get(key) {
                blocklist
                    .get_or_insert_with(HashSet::new)
                    .extend(values.iter().cloned());
            }
        }
        let mut merge_with = [0u64; 4];
        for (j, other) in self.types.iter_mut().enumerate() {
            if opts.is_merge_edge(name, &other.name) {
                merge_with[j / 64] |= 1 << (j % 64);
                other.merge_with[id / 64] |= 1 << (id % 64);
            }
        }
        if opts.is_merge_edge(name, name) {
            merge_with[id / 64] |= 1 << (id % 64);
        }
        self.types.push(TypeInfo {
            name: name.to_string(),
            seed: XxHash3_64::oneshot(name.as_bytes()),
            rank,
            limit: opts.limits.get(name).copied(),
            max_degree: opts.max_degree_for(name),
            blocklist,
            merge_with,
        });
        Ok(id as u8)
    }

    fn blocked(&self, t: u8, value: &str) -> bool {
        if self.options.default_blocklist && default_blocked(value) {
            return true;
        }
        match &self.types[t as usize].blocklist {
            Some(set) => set.contains(&value.trim().to_ascii_lowercase()),
            None => false,
        }
    }

    fn value(&self, id: u32) -> &str {
        let i = id as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let bytes = &self.arena[start..self.ends[i] as usize];
        // The arena only ever receives whole `&str` values.
        std::str::from_utf8(bytes).unwrap_or_default()
    }

    /// The id of `(t, value)`, interning it if new.
    fn intern(&mut self, t: u8, value: &str) -> Result<u32, GraphError> {
        let h = XxHash3_64::oneshot_with_seed(self.types[t as usize].seed, value.as_bytes());
        let found = self.table.find(h, |&id| {
            let i = id as usize;
            let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
            self.node_type[i] == t && &self.arena[start..self.ends[i] as usize] == value.as_bytes()
        });
        if let Some(&id) = found {
            return Ok(id);
        }
        let id = self.hashes.len();
        if id >= MAX_NODES as usize {
            return Err(GraphError::TooManyIdentifiers { max: MAX_NODES });
        }
        let id = id as u32;
        self.arena.extend_from_slice(value.as_bytes());
        self.ends.push(self.arena.len() as u64);
        self.hashes.push(h);
        self.node_type.push(t);
        self.first_seen.push(NO_TS);
        self.degree.push(0);
        let hashes = &self.hashes;
        self.table.insert_unique(h, id, |&id| hashes[id as usize]);
        Ok(id)
    }

    /// Interns one endpoint unless it is null or blocked.
    fn endpoint(&mut self, t: Option<&str>, v: Option<&str>) -> Result<Option<u32>, GraphError> {
        let (Some(t), Some(v)) = (t, v) else {
            return Ok(None);
        };
        let tid = self.type_id(t)?;
        if self.blocked(tid, v) {
            return Ok(None);
        }
        self.intern(tid, v).map(Some)
    }

    fn push_edge(&mut self, x: u32, y: u32, ts: i64, seed: bool) {
        if x == y {
            return;
        }
        let (a, b) = if x < y { (x, y) } else { (y, x) };
        let (ta, tb) = (self.node_type[a as usize], self.node_type[b as usize]);
        let alias =
            seed || self.types[ta as usize].merge_with[tb as usize / 64] & (1 << (tb % 64)) != 0;
        let mut flags = 0;
        if alias {
            flags |= ALIAS_BIT;
        }
        if seed {
            flags |= SEED_BIT;
        } else {
            self.degree[a as usize] = self.degree[a as usize].saturating_add(1);
            self.degree[b as usize] = self.degree[b as usize].saturating_add(1);
        }
        self.edges.push(Edge {
            a,
            b: b | flags,
            ts,
        });
    }

    fn saw(&mut self, id: u32, ts: i64) {
        let f = &mut self.first_seen[id as usize];
        if ts < *f {
            *f = ts;
            if (id as usize) < self.resolved_nodes {
                self.dirty.push(id);
            }
        }
    }

    /// Adds one edge. Null or blocked endpoints are dropped (the other endpoint is still
    /// recorded as an identifier); `ts` is the event time in microseconds, if known.
    pub fn add_edge(
        &mut self,
        left_type: &str,
        left_value: &str,
        right_type: &str,
        right_value: &str,
        ts: Option<i64>,
    ) -> Result<(), GraphError> {
        let ts = ts.unwrap_or(NO_TS);
        let a = self.endpoint(Some(left_type), Some(left_value))?;
        let b = self.endpoint(Some(right_type), Some(right_value))?;
        self.link(a, b, ts);
        Ok(())
    }

    fn link(&mut self, a: Option<u32>, b: Option<u32>, ts: i64) {
        if let Some(a) = a {
            self.saw(a, ts);
        }
        if let Some(b) = b {
            self.saw(b, ts);
        }
        if let (Some(a), Some(b)) = (a, b) {
            self.push_edge(a, b, ts, false);
        }
    }

    /// Adds every edge of `batch`, which must have the columns [`EDGE_COLUMNS`] (any string
    /// type, other types are cast to text) and may have an event timestamp column (one of
    /// [`TIMESTAMP_COLUMNS`], any type castable to a timestamp).
    pub fn add_edges(&mut self, batch: &RecordBatch) -> Result<(), GraphError> {
        let cols = EDGE_COLUMNS
            .iter()
            .map(|n| text_column(batch, n))
            .collect::<Result<Vec<_>, _>>()?;
        let ts = timestamp_column(batch)?;
        let (lt, lv, rt, rv) = (
            strs(&cols[0]),
            strs(&cols[1]),
            strs(&cols[2]),
            strs(&cols[3]),
        );
        self.edges.reserve(batch.num_rows());
        for i in 0..batch.num_rows() {
            let t = match &ts {
                Some(c) if c.is_valid(i) => c.value(i),
                _ => NO_TS,
            };
            let a = self.endpoint(lt.get(i), lv.get(i))?;
            let b = self.endpoint(rt.get(i), rv.get(i))?;
            self.link(a, b, t);
        }
        Ok(())
    }

    /// Seeds the graph with a previously stored assignment, so that a graph rebuilt after a
    /// restart keeps its earlier merge decisions and profile ids. `batch` has the columns
    /// `identifier_type`, `identifier_value`, `profile_id` and optionally `first_seen`
    /// (a timestamp), as [`assignments`](Self::assignments) writes them. Identifiers of one
    /// profile are joined by explicit-merge edges (never refused, not counted as degree);
    /// without `first_seen`, seeded identifiers rank as seen before any new edge, and the
    /// representative named by each `profile_id` before the other members, so ids survive.
    /// Call it for every batch of the stored map before adding new edges and resolving.
    pub fn seed_profiles(&mut self, batch: &RecordBatch) -> Result<(), GraphError> {
        let cols = ["identifier_type", "identifier_value", "profile_id"]
            .iter()
            .map(|n| text_column(batch, n))
            .collect::<Result<Vec<_>, _>>()?;
        let first_seen = match batch.column_by_name("first_seen") {
            Some(c) => Some(
                cast(c, &DataType::Timestamp(TimeUnit::Microsecond, None))
                    .map_err(|source| GraphError::BadColumn {
                        column: "first_seen".into(),
                        expected: "a timestamp",
                        source,
                    })?
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .cloned(),
            ),
            None => None,
        }
        .flatten();
        let (tc, vc, pc) = (strs(&cols[0]), strs(&cols[1]), strs(&cols[2]));
        for i in 0..batch.num_rows() {
            let (Some(node), Some(pid)) = (self.endpoint(tc.get(i), vc.get(i))?, pc.get(i)) else {
                continue;
            };
            let ts = match &first_seen {
                Some(c) if c.is_valid(i) => c.value(i),
                Some(_) => NO_TS,
                None if self.profile_id_of(node) == pid => SEEDED_REP_TS,
                None => SEEDED_TS,
            };
            self.saw(node, ts);
            let anchor = self.seed_anchors.get(pid).copied();
            match anchor {
                Some(anchor) => self.push_edge(anchor, node, ts, true),
                None => {
                    self.seed_anchors.insert(pid.to_string(), node);
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ resolution

    fn find(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            let p = parent[x as usize];
            let gp = parent[p as usize];
            parent[x as usize] = gp;
            x = gp;
        }
        x
    }

    fn union(parent: &mut [u32], size: &mut [u32], a: u32, b: u32) -> u32 {
        let (ra, rb) = (Self::find(parent, a), Self::find(parent, b));
        if ra == rb {
            return ra;
        }
        let (big, small) = if size[ra as usize] >= size[rb as usize] {
            (ra, rb)
        } else {
            (rb, ra)
        };
        parent[small as usize] = big;
        size[big as usize] += size[small as usize];
        big
    }

    fn mergeable(&self, e: &Edge) -> bool {
        e.alias() || !(self.hubs.contains(&e.a) || self.hubs.contains(&e.b()))
    }

    /// Finds identifiers above their `max_degree` (counting distinct neighbours) and returns
    /// the ones that became hubs now.
    fn update_hubs(&mut self) -> Vec<u32> {
        let mut candidates: HashMap<u32, Vec<u32>> = HashMap::new();
        for (i, &d) in self.degree.iter().enumerate() {
            let id = i as u32;
            let Some(max) = self.types[self.node_type[i] as usize].max_degree else {
                continue;
            };
            if d > max
                && !self.hubs.contains(&id)
                && self.checked_degree.get(&id).is_none_or(|&c| c != d)
            {
                candidates.insert(id, Vec::new());
            }
        }
        if candidates.is_empty() {
            return Vec::new();
        }
        for e in &self.edges {
            if e.b & SEED_BIT != 0 {
                continue;
            }
            let (a, b) = (e.a, e.b());
            if let Some(n) = candidates.get_mut(&a) {
                n.push(b);
            }
            if let Some(n) = candidates.get_mut(&b) {
                n.push(a);
            }
        }
        let mut new_hubs = Vec::new();
        for (id, mut neighbours) in candidates {
            neighbours.sort_unstable();
            neighbours.dedup();
            let max = self.types[self.node_type[id as usize] as usize]
                .max_degree
                .unwrap_or(u32::MAX);
            if neighbours.len() as u64 > max as u64 {
                self.hubs.insert(id);
                self.checked_degree.remove(&id);
                new_hubs.push(id);
            } else {
                self.checked_degree.insert(id, self.degree[id as usize]);
            }
        }
        new_hubs.sort_unstable();
        new_hubs
    }

    /// Resolves the graph: assigns every identifier to a profile. The first call processes
    /// every edge; later calls fold in the edges added since, recomputing only the
    /// components they touch, and give the same result as a fresh graph over all edges.
    pub fn resolve(&mut self) -> ResolveStats {
        let n = self.hashes.len();
        let first = !self.resolved_once;
        let new_from = if first { 0 } else { self.resolved_edges };
        self.seed_anchors.clear();
        if first {
            self.dirty.clear();
        }
        let new_hubs = self.update_hubs();

        // Union-find state for new identifiers.
        let old_n = self.parent.len();
        self.parent.extend(old_n as u32..n as u32);
        self.size.resize(n, 1);
        self.rep.resize(n, NONE);
        self.psize.resize(n, 0);

        // Components of new hubs lose the merges through them: rebuild them.
        let mut rebuild_roots: HashSet<u32> = HashSet::new();
        if !first && !new_hubs.is_empty() {
            for &h in &new_hubs {
                rebuild_roots.insert(Self::find(&mut self.parent, h));
            }
            let mut members = vec![false; n];
            for x in 0..old_n as u32 {
                if rebuild_roots.contains(&Self::find(&mut self.parent, x)) {
                    members[x as usize] = true;
                }
            }
            for (x, m) in members.iter().enumerate() {
                if *m {
                    self.parent[x] = x as u32;
                    self.size[x] = 1;
                }
            }
            for i in 0..new_from {
                let e = self.edges[i];
                if members[e.a as usize] && self.mergeable(&e) {
                    Self::union(&mut self.parent, &mut self.size, e.a, e.b());
                }
            }
            rebuild_roots = (0..n as u32)
                .filter(|&x| members[x as usize])
                .map(|x| Self::find(&mut self.parent, x))
                .collect();
        }
        for i in new_from..self.edges.len() {
            let e = self.edges[i];
            if self.mergeable(&e) {
                Self::union(&mut self.parent, &mut self.size, e.a, e.b());
            }
        }

        // Which components to (re)compute.
        let touched: Option<Vec<bool>> = if first {
            None
        } else {
            let mut t = vec![false; n];
            for x in old_n..n {
                let r = Self::find(&mut self.parent, x as u32);
                t[r as usize] = true;
            }
            for i in new_from..self.edges.len() {
                let e = self.edges[i];
                let r = Self::find(&mut self.parent, e.a);
                t[r as usize] = true;
                let r = Self::find(&mut self.parent, e.b());
                t[r as usize] = true;
            }
            for x in std::mem::take(&mut self.dirty) {
                let r = Self::find(&mut self.parent, x);
                t[r as usize] = true;
            }
            for &r in &rebuild_roots {
                let r = Self::find(&mut self.parent, r);
                t[r as usize] = true;
            }
            Some(t)
        };
        // Flatten the forest so that later passes read roots directly.
        let roots: Vec<u32> = (0..n)
            .map(|x| Self::find(&mut self.parent, x as u32))
            .collect();
        let is_touched = |x: usize| touched.as_ref().is_none_or(|t| t[roots[x] as usize]);

        // Limit check per component.
        let limited: Vec<(u8, u32)> = self
            .types
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.limit.map(|l| (i as u8, l)))
            .collect();
        let mut counts: Vec<Vec<u32>> = Vec::new();
        let mut violating = vec![false; if limited.is_empty() { 0 } else { n }];
        let mut any_violating = false;
        if !limited.is_empty() {
            counts = vec![vec![0u32; n]; limited.len()];
            for (x, &root) in roots.iter().enumerate() {
                if !is_touched(x) {
                    continue;
                }
                let t = self.node_type[x];
                if let Some(slot) = limited.iter().position(|(lt, _)| *lt == t) {
                    let r = root as usize;
                    counts[slot][r] += 1;
                    if counts[slot][r] > limited[slot].1 {
                        violating[r] = true;
                        any_violating = true;
                    }
                }
            }
        }

        // Rebuild violating components under limits, in canonical edge order.
        let mut stats = ResolveStats::default();
        let mut fparent: Vec<u32> = Vec::new();
        if any_violating {
            fparent = (0..n as u32).collect();
            let mut fsize = vec![1u32; n];
            for c in counts.iter_mut() {
                c.iter_mut().for_each(|v| *v = 0);
            }
            for x in 0..n {
                if violating[roots[x] as usize] {
                    let t = self.node_type[x];
                    if let Some(slot) = limited.iter().position(|(lt, _)| *lt == t) {
                        counts[slot][x] = 1;
                    }
                }
            }
            stats.limited_components = violating.iter().filter(|v| **v).count();
            let mut local: Vec<Edge> = self
                .edges
                .iter()
                .filter(|e| violating[roots[e.a as usize] as usize] && self.mergeable(e))
                .copied()
                .collect();
            local.sort_unstable_by(|x, y| self.canonical(x, y));
            for e in &local {
                let (ra, rb) = (
                    Self::find(&mut fparent, e.a),
                    Self::find(&mut fparent, e.b()),
                );
                if ra == rb {
                    continue;
                }
                if !e.alias() {
                    let refuse = limited.iter().enumerate().any(|(slot, (_, limit))| {
                        let (ca, cb) = (counts[slot][ra as usize], counts[slot][rb as usize]);
                        ca > 0 && cb > 0 && ca + cb > *limit
                    });
                    if refuse {
                        stats.refused_merges += 1;
                        continue;
                    }
                }
                let root = Self::union(&mut fparent, &mut fsize, ra, rb);
                let other = if root == ra { rb } else { ra };
                for c in counts.iter_mut() {
                    c[root as usize] += c[other as usize];
                }
            }
        }
        drop(counts);

        // Group of each identifier: its limited-rebuild root, or its component root.
        let group = |x: usize, fparent: &mut Vec<u32>| -> u32 {
            if any_violating && violating[roots[x] as usize] {
                Self::find(fparent, x as u32)
            } else {
                roots[x]
            }
        };
        for x in 0..n {
            if is_touched(x) {
                self.rep[x] = NONE;
                self.psize[x] = 0;
                stats.recomputed += 1;
            }
        }
        for x in 0..n {
            if !is_touched(x) {
                continue;
            }
            let g = group(x, &mut fparent) as usize;
            let best = self.rep[g];
            if best == NONE || self.better(x as u32, best) {
                self.rep[g] = x as u32;
            }
            self.psize[g] += 1;
        }
        for x in 0..n {
            if !is_touched(x) {
                continue;
            }
            let g = group(x, &mut fparent) as usize;
            if g != x {
                self.rep[x] = self.rep[g];
            }
        }
        // Move each group's size from its root to its representative.
        for x in 0..n {
            if is_touched(x) && group(x, &mut fparent) as usize == x {
                let r = self.rep[x] as usize;
                if r != x {
                    self.psize[r] = self.psize[x];
                    self.psize[x] = 0;
                }
            }
        }

        stats.identifiers = n;
        stats.edges = self.edges.len();
        stats.new_edges = self.edges.len() - new_from;
        stats.hubs = self.hubs.len();
        self.resolved_nodes = n;
        self.resolved_edges = self.edges.len();
        self.resolved_once = true;
        tracing::debug!(?stats, "identity graph resolved");
        stats
    }

    /// Canonical edge order for limit-aware merging: explicit merges first; then stronger
    /// edges first, by the priority of the weaker endpoint type and then of the stronger
    /// one (so `anonymous_id`–`user_id` links come before `anonymous_id`–`device_id` ones);
    /// then by timestamp; then by the endpoints' stable hashes, then by their values.
    fn canonical(&self, x: &Edge, y: &Edge) -> std::cmp::Ordering {
        let key = |e: &Edge| {
            let (a, b) = (e.a as usize, e.b() as usize);
            let (ra, rb) = (
                self.types[self.node_type[a] as usize].rank,
                self.types[self.node_type[b] as usize].rank,
            );
            let (ha, hb) = (self.hashes[a], self.hashes[b]);
            (
                !e.alias(),
                ra.max(rb),
                ra.min(rb),
                e.ts,
                ha.min(hb),
                ha.max(hb),
            )
        };
        key(x).cmp(&key(y)).then_with(|| {
            let ends = |e: &Edge| {
                let (a, b) = (e.a, e.b());
                let (ka, kb) = (self.node_key(a), self.node_key(b));
                if ka <= kb { (ka, kb) } else { (kb, ka) }
            };
            ends(x).cmp(&ends(y))
        })
    }

    fn node_key(&self, id: u32) -> (u64, &str, &str) {
        (
            self.hashes[id as usize],
            self.types[self.node_type[id as usize] as usize]
                .name
                .as_str(),
            self.value(id),
        )
    }

    /// Whether `x` ranks before `y` as a profile representative.
    fn better(&self, x: u32, y: u32) -> bool {
        let (tx, ty) = (
            &self.types[self.node_type[x as usize] as usize],
            &self.types[self.node_type[y as usize] as usize],
        );
        let kx = (tx.rank, self.first_seen[x as usize]);
        let ky = (ty.rank, self.first_seen[y as usize]);
        kx.cmp(&ky)
            .then_with(|| tx.name.cmp(&ty.name))
            .then_with(|| self.hashes[x as usize].cmp(&self.hashes[y as usize]))
            .then_with(|| self.value(x).cmp(self.value(y)))
            .is_lt()
    }

    /// The profile id an identifier would give its profile as representative.
    fn profile_id_of(&self, id: u32) -> String {
        let mut s = String::with_capacity(32);
        push_profile_id(&mut s, self.profile_hash(id));
        s
    }

    fn profile_hash(&self, id: u32) -> u128 {
        let t = &self.types[self.node_type[id as usize] as usize];
        XxHash3_128::oneshot_with_seed(t.seed, self.value(id).as_bytes())
    }

    fn lookup(&self, t: &str, value: &str) -> Option<u32> {
        let tid = self.types.iter().position(|x| x.name == t)? as u8;
        let h = XxHash3_64::oneshot_with_seed(self.types[tid as usize].seed, value.as_bytes());
        self.table
            .find(h, |&id| {
                self.node_type[id as usize] == tid && self.value(id) == value
            })
            .copied()
    }

    /// The profile of one identifier after [`resolve`](Self::resolve): its profile id and
    /// size, or `None` if the identifier is unknown (or blocked).
    pub fn profile_of(&self, identifier_type: &str, value: &str) -> Option<(String, u64)> {
        let id = self.lookup(identifier_type, value)?;
        let rep = *self.rep.get(id as usize)?;
        if rep == NONE {
            return None;
        }
        Some((self.profile_id_of(rep), self.psize[rep as usize] as u64))
    }

    /// The number of identifiers with a profile after [`resolve`](Self::resolve): the rows
    /// of the map (blocked identifiers have none).
    pub fn assigned_count(&self) -> usize {
        self.rep.iter().filter(|&&r| r != NONE).count()
    }

    /// The number of profiles after [`resolve`](Self::resolve): identifiers that represent
    /// their profile.
    pub fn profile_count(&self) -> usize {
        self.rep
            .iter()
            .enumerate()
            .filter(|&(i, &r)| r as usize == i)
            .count()
    }

    /// The schema of [`assignments`](Self::assignments): `identifier_type`,
    /// `identifier_value`, `profile_id`, `profile_size` (the `identity_stitch` output) and
    /// `first_seen` (microsecond timestamp, null when unknown), which a stored map keeps so
    /// that [`seed_profiles`](Self::seed_profiles) can restore the representative rule.
    pub fn assignment_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("identifier_type", DataType::Utf8, false),
            Field::new("identifier_value", DataType::Utf8, false),
            Field::new("profile_id", DataType::Utf8, false),
            Field::new("profile_size", DataType::Int64, false),
            Field::new(
                "first_seen",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                true,
            ),
        ]))
    }

    /// The schema of [`shared_rows`](Self::shared_rows): that of
    /// [`assignment_schema`](Self::assignment_schema) with `profile_id` and `profile_size`
    /// nullable, null marking an identifier that no longer has a profile.
    pub fn change_schema() -> SchemaRef {
        let base = Self::assignment_schema();
        let fields: Vec<Field> = base
            .fields()
            .iter()
            .map(|f| {
                let nullable =
                    f.is_nullable() || matches!(f.name().as_str(), "profile_id" | "profile_size");
                f.as_ref().clone().with_nullable(nullable)
            })
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// The assignment of every identifier, as batches of at most `batch_size` rows with the
    /// columns of [`assignment_schema`](Self::assignment_schema) selected by `projection`
    /// (indices into it; `None`: all). Call [`resolve`](Self::resolve) first; unresolved
    /// identifiers are skipped.
    pub fn assignments(
        &self,
        batch_size: usize,
        projection: Option<Vec<usize>>,
    ) -> Assignments<'_> {
        Assignments {
            graph: AssignmentSource::Borrowed(self),
            next: 0,
            batch_size: batch_size.max(1),
            projection,
            rows: None,
        }
    }

    /// Like [`assignments`](Self::assignments), but owning the graph, so the batches can be
    /// streamed out of an operator after the graph is built.
    pub fn into_assignments(
        self,
        batch_size: usize,
        projection: Option<Vec<usize>>,
    ) -> Assignments<'static> {
        Assignments {
            graph: AssignmentSource::Owned(Box::new(self)),
            next: 0,
            batch_size: batch_size.max(1),
            projection,
            rows: None,
        }
    }

    /// Like [`into_assignments`](Self::into_assignments), but sharing the graph, so that a
    /// caller that keeps the graph for later incremental resolutions (a persisted identity
    /// graph) can stream the map out and take the graph back with `Arc::try_unwrap`.
    pub fn shared_assignments(
        graph: Arc<Self>,
        batch_size: usize,
        projection: Option<Vec<usize>>,
    ) -> Assignments<'static> {
        Assignments {
            graph: AssignmentSource::Shared(graph),
            next: 0,
            batch_size: batch_size.max(1),
            projection,
            rows: None,
        }
    }

    /// Identifiers whose profile id differs from `previous` (a map of
    /// `(identifier_type, identifier_value) -> profile_id`), with the old and new id: the
    /// merge history after a refresh. Identifiers absent from `previous` are new, not
    /// changed, and are not listed.
    pub fn changed_since<'a>(
        &'a self,
        previous: &'a HashMap<(String, String), String>,
    ) -> impl Iterator<Item = ProfileChange> + 'a {
        previous.iter().filter_map(|((t, v), old)| {
            let (new, _) = self.profile_of(t, v)?;
            (&new != old).then(|| ProfileChange {
                identifier_type: t.clone(),
                identifier_value: v.clone(),
                old_profile_id: old.clone(),
                new_profile_id: new,
            })
        })
    }
}

/// The assignment of every identifier at one point in time, kept by a caller that stored
/// the map then (a persisted graph's base table), so that a later resolution can list only
/// the identifiers whose row differs: 8 bytes per identifier.
#[derive(Debug, Clone, Default)]
pub struct AssignmentSnapshot {
    rep: Vec<u32>,
    psize: Vec<u32>,
}

impl AssignmentSnapshot {
    /// Identifiers covered.
    pub fn len(&self) -> usize {
        self.rep.len()
    }

    /// Whether it covers no identifier.
    pub fn is_empty(&self) -> bool {
        self.rep.is_empty()
    }

    /// Heap bytes held.
    pub fn memory_bytes(&self) -> usize {
        (self.rep.capacity() + self.psize.capacity()) * 4
    }
}

impl IdentityGraph {
    /// Snapshot of the current assignment; call after [`resolve`](Self::resolve).
    pub fn snapshot(&self) -> AssignmentSnapshot {
        let psize = self
            .rep
            .iter()
            .map(|&r| if r == NONE { 0 } else { self.psize[r as usize] })
            .collect();
        AssignmentSnapshot {
            rep: self.rep.clone(),
            psize,
        }
    }

    /// The internal index of an identifier, if known: lets a caller name identifiers it
    /// touched (the endpoints of new edges, whose `first_seen` may have moved).
    pub fn identifier_index(&self, identifier_type: &str, value: &str) -> Option<u32> {
        self.lookup(identifier_type, value)
    }

    /// Identifiers whose map row differs from `base`: new identifiers, identifiers whose
    /// profile (representative) or profile size changed, identifiers that were dropped
    /// (blocked since), plus `touched`, in index order. A profile id is a function of the
    /// representative alone, so comparing representatives is exact.
    pub fn changed_identifiers(&self, base: &AssignmentSnapshot, touched: &[u32]) -> Vec<u32> {
        let n = self.rep.len();
        let mut out: Vec<u32> = (0..n)
            .filter(|&x| {
                let r = self.rep[x];
                match base.rep.get(x) {
                    None => r != NONE,
                    Some(&b) => b != r || (r != NONE && base.psize[x] != self.psize[r as usize]),
                }
            })
            .map(|x| x as u32)
            .collect();
        out.extend(touched.iter().copied().filter(|&x| (x as usize) < n));
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Map rows of the given identifiers (indices from
    /// [`changed_identifiers`](Self::changed_identifiers)) with the columns of
    /// [`assignment_schema`](Self::assignment_schema), except that an identifier without a
    /// profile (blocked) comes out as a tombstone: null `profile_id` and `profile_size`.
    pub fn shared_rows(
        graph: Arc<Self>,
        rows: Vec<u32>,
        batch_size: usize,
    ) -> Assignments<'static> {
        Assignments {
            graph: AssignmentSource::Shared(graph),
            next: 0,
            batch_size: batch_size.max(1),
            projection: None,
            rows: Some(rows),
        }
    }
}

/// One identifier whose profile id changed between two resolutions (a merge or a new
/// representative). Downstream tools follow `old_profile_id` to `new_profile_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileChange {
    /// The identifier's type.
    pub identifier_type: String,
    /// The identifier's value.
    pub identifier_value: String,
    /// Its profile id before.
    pub old_profile_id: String,
    /// Its profile id now.
    pub new_profile_id: String,
}

fn push_profile_id(s: &mut String, h: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..32).rev() {
        s.push(HEX[((h >> (i * 4)) & 0xf) as usize] as char);
    }
}

enum AssignmentSource<'a> {
    Borrowed(&'a IdentityGraph),
    Owned(Box<IdentityGraph>),
    Shared(Arc<IdentityGraph>),
}

/// Iterator of assignment batches; see [`IdentityGraph::assignments`].
pub struct Assignments<'a> {
    graph: AssignmentSource<'a>,
    next: usize,
    batch_size: usize,
    projection: Option<Vec<usize>>,
    /// Only these identifiers, with tombstones for those without a profile.
    rows: Option<Vec<u32>>,
}

impl Iterator for Assignments<'_> {
    type Item = Result<RecordBatch, GraphError>;

    fn next(&mut self) -> Option<Self::Item> {
        let g: &IdentityGraph = match &self.graph {
            AssignmentSource::Borrowed(g) => g,
            AssignmentSource::Owned(g) => g,
            AssignmentSource::Shared(g) => g,
        };
        let tombstones = self.rows.is_some();
        let n = self.rows.as_ref().map_or(g.rep.len(), Vec::len);
        if self.next >= n {
            return None;
        }
        let end = (self.next + self.batch_size).min(n);
        let range = self.next..end;
        self.next = end;
        let schema = if tombstones {
            IdentityGraph::change_schema()
        } else {
            IdentityGraph::assignment_schema()
        };
        let wanted: Vec<usize> = self
            .projection
            .clone()
            .unwrap_or_else(|| (0..schema.fields().len()).collect());
        let rows: Vec<u32> = match &self.rows {
            Some(list) => list[range].to_vec(),
            None => range
                .map(|x| x as u32)
                .filter(|&x| g.rep[x as usize] != NONE)
                .collect(),
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(wanted.len());
        for &c in &wanted {
            let col: ArrayRef = match c {
                0 => {
                    let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 8);
                    for &x in &rows {
                        b.append_value(&g.types[g.node_type[x as usize] as usize].name);
                    }
                    Arc::new(b.finish())
                }
                1 => {
                    let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 24);
                    for &x in &rows {
                        b.append_value(g.value(x));
                    }
                    Arc::new(b.finish())
                }
                2 => {
                    let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 32);
                    let mut s = String::with_capacity(32);
                    let mut last = (NONE, 0u128);
                    for &x in &rows {
                        let r = g.rep[x as usize];
                        if r == NONE {
                            b.append_null();
                            continue;
                        }
                        if r != last.0 {
                            last = (r, g.profile_hash(r));
                        }
                        s.clear();
                        push_profile_id(&mut s, last.1);
                        b.append_value(&s);
                    }
                    Arc::new(b.finish())
                }
                3 => {
                    let mut b = Int64Builder::with_capacity(rows.len());
                    for &x in &rows {
                        match g.rep[x as usize] {
                            NONE => b.append_null(),
                            r => b.append_value(g.psize[r as usize] as i64),
                        }
                    }
                    Arc::new(b.finish())
                }
                4 => {
                    let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len());
                    for &x in &rows {
                        let t = g.first_seen[x as usize];
                        if t == NO_TS || t == SEEDED_REP_TS || t == SEEDED_TS {
                            b.append_null();
                        } else {
                            b.append_value(t);
                        }
                    }
                    Arc::new(b.finish())
                }
                _ => continue,
            };
            columns.push(col);
        }
        let projected = match schema.project(&wanted) {
            Ok(s) => Arc::new(s),
            Err(e) => return Some(Err(e.into())),
        };
        let options =
            datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
        Some(
            RecordBatch::try_new_with_options(projected, columns, &options)
                .map_err(GraphError::from),
        )
    }
}
