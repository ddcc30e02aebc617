//! The persistent catalog: schemas, tables, views, external tables and users, kept under the
//! warehouse root so that a restarted server, or a second server on the same root, sees the
//! same objects.
//!
//! Storage: one JSON document per catalog version at `<root>/_tally/catalog/<version>.json`,
//! written with a conditional put (create-if-absent). Two writers racing for the same version
//! cannot both win: the loser reloads and re-applies its change ([`CatalogStore::mutate`]), the
//! same optimistic protocol as the Delta log. Readers look for the next version before each
//! statement, which costs one HEAD on object storage.

pub mod provider;
pub mod types;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TallyError};
use crate::storage::Warehouse;

/// The schema every warehouse starts with, and the default `search_path`.
pub const DEFAULT_SCHEMA: &str = "public";
/// The database name clients connect to.
pub const DATABASE: &str = "tally";
/// Schemas that belong to the system and cannot be created, dropped or written by users.
pub const SYSTEM_SCHEMAS: &[&str] = &["pg_catalog", "information_schema", "pg_temp", "tally"];

const CATALOG_DIR: &str = "_tally/catalog";
/// How many times a catalog change is re-applied after losing a race before giving up.
const MAX_COMMIT_ATTEMPTS: usize = 20;

/// One version of the whole catalog.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CatalogDoc {
    /// Version number; the file name carries it too.
    #[serde(default)]
    pub version: u64,
    /// Schemas by (normalised) name.
    #[serde(default)]
    pub schemas: BTreeMap<String, SchemaEntry>,
    /// Users created with `CREATE USER` (users from `tally.toml` are not stored here).
    #[serde(default)]
    pub users: BTreeMap<String, UserEntry>,
    /// Event sources created with `CREATE SOURCE`.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceEntry>,
    /// Tracking plans created with `CREATE TRACKING PLAN`, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tracking_plans: BTreeMap<String, TrackingPlanEntry>,
    /// Identity graphs created with `CREATE IDENTITY GRAPH`, by `schema.name`.
    #[serde(default)]
    pub identity_graphs: BTreeMap<String, IdentityGraphEntry>,
    /// Activation destinations created with `CREATE DESTINATION`, by name.
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationEntry>,
    /// Syncs created with `CREATE SYNC`, by name.
    #[serde(default)]
    pub syncs: BTreeMap<String, SyncEntry>,
    /// Real-time routes created with `CREATE ROUTE`, by name.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteEntry>,
    /// Secrets created with `CREATE SECRET`, by name, encrypted.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretEntry>,
    /// Enrichment connections created with `CREATE CONNECTION`, by name.
    #[serde(default)]
    pub connections: BTreeMap<String, ConnectionEntry>,
}

/// A secret (an API key, an HMAC key): AES-256-GCM ciphertext under the warehouse's
/// secrets key (see [`crate::secrets`]), never the value itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretEntry {
    /// The 96-bit nonce, base64.
    pub nonce: String,
    /// Ciphertext and tag, base64; the secret's name is the associated data, so a
    /// ciphertext copied under another name does not decrypt.
    pub ciphertext: String,
    /// First bytes of the key's SHA-256, hex: names the key a secret needs, for a clear
    /// error when the server holds another one.
    pub key_id: String,
    /// When the secret was created (RFC 3339).
    pub created_at: String,
    /// When its value last changed (RFC 3339).
    #[serde(default)]
    pub altered_at: Option<String>,
}

/// An enrichment connection: an outside API that `enrich` and `verify_email` call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionEntry {
    /// Connection type (`http`, `zerobounce`).
    pub connection_type: String,
    /// Options by (lower-case) name; `secret` names a secret, never holds one.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// When the connection was created (RFC 3339).
    pub created_at: String,
    /// When its options last changed (RFC 3339).
    #[serde(default)]
    pub altered_at: Option<String>,
}

/// A real-time route: the events of `source`, as they arrive in the collector's log, through
/// `query` (a projection and filter over `events`) to `destination`. Its progress (the log
/// position it has delivered through) is kept beside the log, not here, since it changes
/// with every micro-batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteEntry {
    /// Source whose events the route reads.
    pub source: String,
    /// Destination it delivers to.
    pub destination: String,
    /// The `SELECT ... FROM events ...` as written.
    pub query: String,
    /// `WITH (...)` options (mode, key, batch_size, give_up_after, ...).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Default schema when the route was created (names in the query resolve against it).
    pub default_schema: String,
    /// Whether `ALTER ROUTE ... PAUSE` holds it.
    #[serde(default)]
    pub paused: bool,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last PAUSE/RESUME.
    #[serde(default)]
    pub altered_at: Option<String>,
}

/// A sync: a `COPY ... TO DESTINATION` that sends only the rows changed since its last
/// successful run (its snapshot lives under `_tally/activation/syncs/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncEntry {
    /// The `COPY (...) TO DESTINATION ... WITH (...)` statement it runs.
    pub copy_sql: String,
    /// Default schema when the sync was created.
    pub default_schema: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Runs so far.
    #[serde(default)]
    pub runs: u64,
    /// RFC 3339 time of the last run.
    #[serde(default)]
    pub last_run_at: Option<String>,
    /// `succeeded` or `failed`.
    #[serde(default)]
    pub last_status: Option<String>,
    /// The last run's error.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Rows the last run delivered.
    #[serde(default)]
    pub last_sent: u64,
    /// Rows the last run found unchanged (not sent).
    #[serde(default)]
    pub last_unchanged: u64,
    /// Rows the last run's destination refused (sent again next run).
    #[serde(default)]
    pub last_failed: u64,
    /// When the scheduler runs it on its own (none: only `RUN SYNC`).
    #[serde(default)]
    pub schedule: Option<SyncSchedule>,
    /// Whether `ALTER SYNC ... PAUSE` holds the schedule (RUN SYNC still works).
    #[serde(default)]
    pub paused: bool,
    /// RFC 3339 time of the next scheduled run. Kept in the catalog so that after downtime
    /// the scheduler sees a tick in the past and runs once to catch up.
    #[serde(default)]
    pub next_run_at: Option<String>,
    /// RFC 3339 start of the last run the scheduler started.
    #[serde(default)]
    pub last_scheduled_at: Option<String>,
    /// `AFTER MODEL` syncs: the model's state (`activate::schedule::model_fingerprint`) the
    /// last run was started for; a different state starts the next run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_seen: Option<String>,
    /// Set while a run is in progress and cleared when it ends, so that a run cut short by
    /// a crash is seen after restart: the scheduler resumes it, and `tally.sync_runs` records
    /// it as interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<RunMarker>,
}

/// A sync run in progress, as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMarker {
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// The process that runs it (a random id per server process): a marker left by another
    /// process that is no longer running is a run a crash cut short.
    pub instance: String,
    /// Who started it (`tally.sync_runs.trigger`).
    pub trigger: String,
}

/// A sync's schedule as stored (checked by `activate::schedule` when written).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SyncSchedule {
    /// A five-field cron expression, evaluated in UTC.
    Cron {
        /// The expression as written.
        expr: String,
    },
    /// A fixed interval between runs.
    Every {
        /// The interval as written (`'15 minutes'`).
        text: String,
        /// The interval in milliseconds.
        millis: u64,
    },
    /// Whenever the model relation `schema.name` has been rebuilt or changed: a new Delta
    /// version of a table (or a new table under the name, as `dbt run` swaps them in), or a
    /// view created again. See `activate::schedule::model_fingerprint`.
    AfterModel {
        /// The model's qualified name.
        model: String,
    },
}

/// An activation destination: its type and options. Secret options are stored as given
/// (use `<option>_env` to keep a secret out of the warehouse) and shown as `***`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DestinationEntry {
    /// Destination type (`webhook`, `hubspot`, `braze`, `mixpanel`, `amplitude`, `postgres`,
    /// `redis`, `nats`, `salesforce`, `intercom`, `zendesk`, `google_ads_customer_match`,
    /// `meta_custom_audiences`, `file`).
    pub destination_type: String,
    /// Options by (lower-case) name.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// When the destination was created (RFC 3339).
    pub created_at: String,
    /// When its options last changed (RFC 3339).
    #[serde(default)]
    pub altered_at: Option<String>,
}

/// A persisted identity graph: how to read its edges, its options, and where its last
/// refresh left off. Its results live in the Delta tables `<name>_map` and `<name>_merges`
/// of `schema`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityGraphEntry {
    /// Schema of the graph and of its tables.
    pub schema: String,
    /// Graph name.
    pub name: String,
    /// The edges query (`SELECT * FROM <table>` when created from a table).
    pub edges_sql: String,
    /// Default schema when the graph was created, for resolving names in `edges_sql`.
    pub default_schema: String,
    /// The `identity_stitch` options document, if any.
    #[serde(default)]
    pub options: Option<String>,
    /// A column of the edges that grows with each new edge (a load time or sequence): a
    /// refresh reads only edges past the watermark. Without it, every refresh is full.
    #[serde(default)]
    pub incremental_column: Option<String>,
    /// Highest `incremental_column` value folded in (microseconds for timestamps).
    #[serde(default)]
    pub watermark: Option<i64>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last successful refresh.
    #[serde(default)]
    pub refreshed_at: Option<String>,
    /// Number of successful refreshes (the creating one included).
    #[serde(default)]
    pub refreshes: u64,
    /// Identifiers in the map after the last refresh.
    #[serde(default)]
    pub identifiers: u64,
    /// Profiles in the map after the last refresh.
    #[serde(default)]
    pub profiles: u64,
    /// Edges read by the last refresh.
    #[serde(default)]
    pub last_edges: u64,
    /// Whether the last refresh was incremental.
    #[serde(default)]
    pub last_incremental: bool,
    /// Wall time of the last refresh in milliseconds.
    #[serde(default)]
    pub last_refresh_ms: u64,
    /// Delta version of `<name>_map` written by the last refresh.
    #[serde(default)]
    pub map_version: Option<i64>,
}

/// An event source: SDKs send to it with its write key, its events land in the schema of
/// the same name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceEntry {
    /// Source type (`tracking_api`).
    pub source_type: String,
    /// The write key SDKs authenticate with.
    pub write_key: String,
    /// When the source was created (RFC 3339).
    pub created_at: String,
    /// When the write key was last rotated (RFC 3339).
    #[serde(default)]
    pub key_rotated_at: Option<String>,
    /// The tracking plan the source's events are checked against, if any
    /// (`ALTER SOURCE ... SET TRACKING PLAN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_plan: Option<SourcePlan>,
}

/// A source's tracking plan and what happens to an event that violates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePlan {
    /// The plan's name (a key of [`CatalogDoc::tracking_plans`]).
    pub plan: String,
    /// Flag or block.
    pub mode: PlanMode,
    /// When the plan was set on the source (RFC 3339).
    pub set_at: String,
}

/// What a tracking plan does with an event that violates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanMode {
    /// The event is stored, with its violations in a `violations` column and in
    /// `<source>._violations`.
    Flag,
    /// The event goes to `<source>._rejected` with its violations instead of its tables.
    Block,
}

impl PlanMode {
    /// `flag` or `block`, as SQL writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanMode::Flag => "flag",
            PlanMode::Block => "block",
        }
    }
}

/// A tracking plan: per event name a JSON Schema for its properties, and schemas for
/// identify and group traits. The plan is kept as the JSON document it was created from
/// (checked when created), and compiled by the collector when a source uses it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrackingPlanEntry {
    /// The plan document (JSON text, as checked by `collect::plans::PlanDoc::parse`).
    pub plan: String,
    /// The URL it was read from, when it was not given inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// A fresh id per CREATE [OR REPLACE], so compiled plans are cached per revision.
    pub revision: String,
    /// When it was created or last replaced (RFC 3339).
    pub created_at: String,
}

/// A schema and its relations (tables, views and external tables share one namespace).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SchemaEntry {
    /// Relations by name.
    #[serde(default)]
    pub relations: BTreeMap<String, Relation>,
}

/// A named relation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Relation {
    /// A Delta table under the warehouse root.
    Table(TableEntry),
    /// A view, stored as its SQL and planned when used.
    View(ViewEntry),
    /// An external table over files at a URL, stored as its `CREATE EXTERNAL TABLE` text.
    External(ExternalEntry),
}

impl Relation {
    /// "table", "view" or "external table", for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Relation::Table(_) => "table",
            Relation::View(_) => "view",
            Relation::External(_) => "external table",
        }
    }
}

/// A Delta table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableEntry {
    /// Location relative to the warehouse root, ending in `/`. It does not change on
    /// `ALTER TABLE ... RENAME`, since object stores cannot move a folder atomically.
    pub location: String,
    /// PostgreSQL type names as declared, by column, where they say more than the Arrow type
    /// (`uuid`, `jsonb`, `varchar(20)`).
    #[serde(default)]
    pub pg_types: BTreeMap<String, String>,
    /// Columns declared NOT NULL or PRIMARY KEY.
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// `COMMENT ON TABLE`.
    #[serde(default)]
    pub comment: Option<String>,
    /// `COMMENT ON COLUMN`, by column.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub column_comments: BTreeMap<String, String>,
}

/// A view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ViewEntry {
    /// The query text.
    pub sql: String,
    /// Schema that was the default when the view was created, for resolving its names.
    #[serde(default)]
    pub default_schema: Option<String>,
    /// `COMMENT ON VIEW`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// `COMMENT ON COLUMN`, by column.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub column_comments: BTreeMap<String, String>,
    /// RFC 3339 time of the `CREATE [OR REPLACE] VIEW` that made it: a view model rebuilt
    /// by `dbt run` or `tally models run` gets a new one, which is how `AFTER MODEL` syncs
    /// over views notice the build. Views tally makes itself leave it empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// An external table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExternalEntry {
    /// The full `CREATE EXTERNAL TABLE` statement, re-planned when the table is used.
    pub sql: String,
    /// Where the files are.
    pub location: String,
}

/// A user that logs in with SCRAM-SHA-256. Only the salted password is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserEntry {
    /// Salt, hex.
    pub salt: String,
    /// SCRAM SaltedPassword, hex.
    pub salted_password: String,
    /// May write server-side files and manage users.
    #[serde(default)]
    pub superuser: bool,
}

impl CatalogDoc {
    fn initial() -> Self {
        let mut doc = CatalogDoc::default();
        doc.schemas
            .insert(DEFAULT_SCHEMA.to_string(), SchemaEntry::default());
        doc
    }

    /// The relation `schema.name`, if any.
    pub fn relation(&self, schema: &str, name: &str) -> Option<&Relation> {
        self.schemas.get(schema)?.relations.get(name)
    }

    /// Every table location referenced by the catalog.
    pub fn table_locations(&self) -> impl Iterator<Item = &str> {
        self.schemas.values().flat_map(|s| {
            s.relations.values().filter_map(|r| match r {
                Relation::Table(t) => Some(t.location.as_str()),
                _ => None,
            })
        })
    }
}

/// Reads and commits catalog versions.
#[derive(Debug)]
pub struct CatalogStore {
    warehouse: Warehouse,
    current: RwLock<Arc<CatalogDoc>>,
    commit_lock: tokio::sync::Mutex<()>,
}

impl CatalogStore {
    /// Loads the latest catalog version, creating version 1 on an empty warehouse.
    pub async fn open(warehouse: Warehouse) -> Result<Arc<CatalogStore>> {
        let dir = warehouse.path_of(CATALOG_DIR);
        let metas: Vec<_> = warehouse.store.list(Some(&dir)).try_collect().await?;
        let latest = metas
            .iter()
            .filter_map(|m| {
                m.location
                    .filename()
                    .and_then(|f| f.strip_suffix(".json"))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .max();
        let store = Arc::new(CatalogStore {
            warehouse,
            current: RwLock::new(Arc::new(CatalogDoc::default())),
            commit_lock: tokio::sync::Mutex::new(()),
        });
        match latest {
            Some(v) => {
                let doc = store.read_version(v).await?.ok_or_else(|| {
                    TallyError::Internal(format!("catalog version {v} vanished while opening"))
                })?;
                *store.current.write() = Arc::new(doc);
                store.refresh().await?;
            }
            None => {
                let mut doc = CatalogDoc::initial();
                doc.version = 1;
                match store.write_version(&doc).await {
                    Ok(()) => *store.current.write() = Arc::new(doc),
                    // Another server initialised the same root at the same moment.
                    Err(TallyError::Conflict(_)) => {
                        let doc = store.read_version(1).await?.unwrap_or_default();
                        *store.current.write() = Arc::new(doc);
                        store.refresh().await?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(store)
    }

    /// The warehouse the catalog lives in.
    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// The latest version this process has seen.
    pub fn current(&self) -> Arc<CatalogDoc> {
        self.current.read().clone()
    }

    /// Picks up versions committed by other servers since the last look.
    pub async fn refresh(&self) -> Result<Arc<CatalogDoc>> {
        loop {
            let next = self.current().version + 1;
            match self.read_version(next).await? {
                Some(doc) => {
                    let mut cur = self.current.write();
                    if cur.version < doc.version {
                        *cur = Arc::new(doc);
                    }
                }
                None => return Ok(self.current()),
            }
        }
    }

    /// Applies `change` to the latest catalog and commits the result as the next version,
    /// re-applying it on top of a concurrent commit when one wins the race.
    pub async fn mutate<T>(&self, change: impl Fn(&mut CatalogDoc) -> Result<T>) -> Result<T> {
        let _guard = self.commit_lock.lock().await;
        for _ in 0..MAX_COMMIT_ATTEMPTS {
            let base = self.refresh().await?;
            let mut doc = (*base).clone();
            let out = change(&mut doc)?;
            doc.version = base.version + 1;
            match self.write_version(&doc).await {
                Ok(()) => {
                    *self.current.write() = Arc::new(doc);
                    return Ok(out);
                }
                Err(TallyError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(TallyError::Conflict(
            "could not commit the catalog change: too many concurrent changes".into(),
        ))
    }

    async fn read_version(&self, version: u64) -> Result<Option<CatalogDoc>> {
        let path = self
            .warehouse
            .path_of(&format!("{CATALOG_DIR}/{version:020}.json"));
        match self.warehouse.store.get(&path).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                let mut doc: CatalogDoc = serde_json::from_slice(&bytes).map_err(|e| {
                    TallyError::Internal(format!("catalog version {version} is unreadable: {e}"))
                })?;
                doc.version = version;
                Ok(Some(doc))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn write_version(&self, doc: &CatalogDoc) -> Result<()> {
        let path = self
            .warehouse
            .path_of(&format!("{CATALOG_DIR}/{:020}.json", doc.version));
        let body = serde_json::to_vec_pretty(doc)
            .map_err(|e| TallyError::Internal(format!("cannot encode catalog: {e}")))?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .warehouse
            .store
            .put_opts(&path, PutPayload::from(Bytes::from(body)), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(TallyError::Conflict(format!(
                "catalog version {} was committed concurrently",
                doc.version
            ))),
            Err(e) => Err(e.into()),
        }
    }
}
