//! The shared engine: the warehouse, the catalog, the runtime (memory pool with spilling) and
//! a template session state with every function registered. Each client connection gets its
//! own [`Session`], a cheap clone of the template with its own settings, temporary tables and
//! transaction, over the shared catalog.

pub mod columns;
pub mod cte;
pub mod live_table;
mod pg_compat;
mod pg_overrides;
pub mod pg_queries;
pub mod pg_text;
pub mod session;

use std::sync::Arc;

use dashmap::DashMap;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProviderList, SchemaProvider};
use datafusion::execution::SessionState;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::setup_pg_catalog;

pub use session::Session;

use crate::catalog::provider::{CatalogView, TableCache};
use crate::catalog::{CatalogStore, DATABASE, DEFAULT_SCHEMA};
use crate::config::Config;
use crate::error::{Result, TallyError};
use crate::storage::Warehouse;

/// PostgreSQL version tally reports, so that drivers and tools pick their PostgreSQL code paths.
pub const PG_VERSION: &str = "16.6";

/// Everything sessions share.
pub struct Engine {
    /// Settings the engine was opened with.
    pub config: Config,
    /// The catalog store under the warehouse root.
    pub catalog: Arc<CatalogStore>,
    /// Open Delta tables.
    pub tables: Arc<TableCache>,
    system_schemas: Arc<DashMap<String, Arc<dyn SchemaProvider>>>,
    template: SessionState,
    /// Keeps the template context alive: the engine-wide catalog view plans views with it
    /// (pg_catalog lists every relation, views included).
    _template_ctx: SessionContext,
    config_credentials: std::collections::HashMap<String, Credentials>,
    next_session_id: std::sync::atomic::AtomicU32,
    running: Arc<std::sync::atomic::AtomicUsize>,
    /// Counters of the collection API, shown in `tally.source_stats`.
    pub collect_stats: Arc<crate::collect::Stats>,
    /// Identity graphs kept in memory between refreshes.
    pub identity_graphs: Arc<crate::identity::GraphCache>,
    /// Activation state shared by sessions (each destination's rate limiter).
    pub activation: Arc<crate::activate::Activation>,
    /// Real-time routes' counters and change signal (`tally.route_stats`).
    pub routes: Arc<crate::route::Registry>,
    /// The warehouse's secrets (`CREATE SECRET`), decrypted on use.
    pub secrets: Arc<crate::secrets::SecretStore>,
    /// Enrichment connections built from the catalog, with their caches and limiters.
    pub connections: Arc<crate::connections::CatalogConnections>,
    /// `pg_class` OIDs of user relations by (schema, name), for RowDescription's table OID
    /// ([`columns`]); re-read when a relation is missing and the catalog moved on.
    relation_oids: DashMap<(String, String), i32>,
    /// Catalog version `relation_oids` was last read at.
    relation_oids_version: std::sync::atomic::AtomicU64,
}

/// Counts a statement as running while alive, so shutdown can wait for commits to finish.
pub struct RunningGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data", &self.config.data)
            .finish()
    }
}

impl Engine {
    /// Opens the warehouse named by `config.data` and prepares the template session.
    pub async fn open(config: Config) -> Result<Arc<Engine>> {
        let options = config.storage.clone().into_iter().collect();
        let warehouse = Warehouse::open(&config.data, options)?;
        let catalog = CatalogStore::open(warehouse.clone()).await?;
        let tables = Arc::new(TableCache::new(catalog.clone()));

        let mut disk = DiskManagerBuilder::default();
        if let Some(dir) = &config.spill_dir {
            disk = disk.with_mode(DiskManagerMode::Directories(vec![dir.clone()]));
        }
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(config.memory_limit, 1.0)
            .with_disk_manager_builder(disk)
            .build_arc()?;
        runtime.register_object_store(&warehouse.root, warehouse.store.clone());

        let session_config = SessionConfig::new()
            .with_default_catalog_and_schema(DATABASE, DEFAULT_SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true)
            .set_bool("datafusion.sql_parser.enable_ident_normalization", true)
            .set_str("datafusion.sql_parser.dialect", "PostgreSQL")
            // Delta and PostgreSQL clients expect plain Utf8 strings.
            .set_bool(
                "datafusion.execution.parquet.schema_force_view_types",
                false,
            )
            .set_bool("datafusion.sql_parser.map_string_types_to_utf8view", false)
            // `timestamptz` values and casts carry a zone, as PostgreSQL's do (UTC here).
            .set_str("datafusion.execution.time_zone", "+00:00");
        let system_schemas: Arc<DashMap<String, Arc<dyn SchemaProvider>>> =
            Arc::new(DashMap::new());
        let base = CatalogView::new(catalog.clone(), tables.clone(), system_schemas.clone());
        let list = Arc::new(MemoryCatalogProviderList::new());
        datafusion::catalog::CatalogProviderList::register_catalog(
            list.as_ref(),
            DATABASE.to_string(),
            Arc::new(base.clone()) as Arc<dyn CatalogProvider>,
        );
        let state = SessionStateBuilder::new()
            .with_config(session_config)
            .with_runtime_env(runtime)
            .with_default_features()
            // delta-rs operations (UPDATE, DELETE, MERGE, writes) plan their own nodes, and
            // shared CTEs theirs.
            .with_query_planner(Arc::new(cte::exec::TallyQueryPlanner))
            .with_catalog_list(list)
            .build();
        let ctx = SessionContext::new_with_state(state);
        base.attach_state(&ctx.state_ref());
        setup_pg_catalog(&ctx, DATABASE, EmptyContextProvider)
            .map_err(|e| TallyError::Internal(format!("pg_catalog setup failed: {e}")))?;
        tally_udfs::register_all(&ctx);
        let secrets = crate::secrets::SecretStore::open(catalog.clone()).await?;
        let connections = Arc::new(crate::connections::CatalogConnections::new(
            catalog.clone(),
            secrets.clone(),
        ));
        tally_udfs::enrich::register(&ctx, connections.clone());
        // In tally, pseudonymize's key argument names a secret rather than holding a key.
        ctx.register_udf(tally_udfs::pii::hash::pseudonymize_with_secrets(
            secrets.clone(),
        ));
        crate::collect::pull::register(&ctx);
        crate::collect::table_fn::register(&ctx, catalog.clone());
        pg_compat::register(&ctx);
        pg_overrides::install(&ctx, catalog.clone()).await?;
        let timestamp_text = Arc::new(pg_text::TimestampText::udf());
        ctx.register_udf(timestamp_text.as_ref().clone());
        ctx.add_analyzer_rule(Arc::new(pg_text::PgTextCasts::new(timestamp_text)));
        // Last, so that the bodies it shares are fully analyzed.
        ctx.add_analyzer_rule(Arc::new(cte::ShareCtes));
        {
            let mut builder = SessionStateBuilder::new_from_existing(ctx.state());
            let inner = builder.type_planner().take();
            *builder.type_planner() = Some(Arc::new(pg_compat::PgTypePlanner { inner }));
            *ctx.state_ref().write() = builder.build();
        }
        let collect_stats = Arc::new(crate::collect::Stats::default());
        system_schemas.insert(
            "tally".to_string(),
            Arc::new(crate::collect::system::TallySchema::new(
                catalog.clone(),
                collect_stats.clone(),
            )),
        );
        let routes = Arc::new(crate::route::Registry::default());
        if let Some(tally) = system_schemas.get("tally") {
            use crate::route::system::RouteTable;
            tally.register_table(
                "routes".into(),
                Arc::new(RouteTable::routes(catalog.clone(), routes.clone())),
            )?;
            tally.register_table(
                "route_stats".into(),
                Arc::new(RouteTable::stats(catalog.clone(), routes.clone())),
            )?;
            tally.register_table(
                "secrets".into(),
                Arc::new(crate::secrets::system::table(catalog.clone())),
            )?;
            tally.register_table(
                "connections".into(),
                Arc::new(crate::connections::system::table(
                    catalog.clone(),
                    connections.clone(),
                )),
            )?;
        }
        let template = ctx.state();
        let config_credentials = config
            .users
            .iter()
            .map(|(name, u)| {
                (
                    name.clone(),
                    Credentials::from_password(&u.password, u.superuser),
                )
            })
            .collect();
        Ok(Arc::new(Engine {
            config_credentials,
            _template_ctx: ctx,
            config,
            catalog,
            tables,
            system_schemas,
            template,
            next_session_id: std::sync::atomic::AtomicU32::new(1),
            running: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            collect_stats,
            identity_graphs: Default::default(),
            activation: Default::default(),
            routes,
            secrets,
            connections,
            relation_oids: DashMap::new(),
            relation_oids_version: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// A new session for `user`.
    pub fn new_session(self: &Arc<Self>, user: &str) -> Session {
        let view = CatalogView::new(
            self.catalog.clone(),
            self.tables.clone(),
            self.system_schemas.clone(),
        );
        let list = Arc::new(MemoryCatalogProviderList::new());
        datafusion::catalog::CatalogProviderList::register_catalog(
            list.as_ref(),
            DATABASE.to_string(),
            Arc::new(view.clone()) as Arc<dyn CatalogProvider>,
        );
        let state = SessionStateBuilder::new_from_existing(self.template.clone())
            .with_catalog_list(list)
            .build();
        let ctx = SessionContext::new_with_state(state);
        view.attach_state(&ctx.state_ref());
        let id = self
            .next_session_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Session::new(self.clone(), ctx, view, user.to_string(), id)
    }

    /// Marks a statement as running until the guard drops.
    pub fn statement_started(&self) -> RunningGuard {
        self.running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        RunningGuard(self.running.clone())
    }

    /// Statements running right now.
    pub fn running_statements(&self) -> usize {
        self.running.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The `pg_class` OID of the relation `schema.name` as the session's catalog sees it
    /// (`None` when it has none: temporary tables, relations not committed yet).
    pub async fn relation_oid(&self, session: &Session, schema: &str, name: &str) -> Option<i32> {
        let key = (schema.to_string(), name.to_string());
        if let Some(oid) = self.relation_oids.get(&key) {
            return Some(*oid);
        }
        let version = self.catalog.current().version;
        if self
            .relation_oids_version
            .swap(version, std::sync::atomic::Ordering::SeqCst)
            == version
        {
            return None;
        }
        match columns::read_relation_oids(session).await {
            Ok(oids) => {
                self.relation_oids.clear();
                for (k, v) in oids {
                    self.relation_oids.insert(k, v);
                }
            }
            Err(e) => tracing::debug!(error = %e, "reading pg_class OIDs failed"),
        }
        self.relation_oids.get(&key).map(|o| *o)
    }

    /// The warehouse.
    pub fn warehouse(&self) -> &Warehouse {
        self.catalog.warehouse()
    }
}

/// SCRAM-SHA-256 iterations for stored passwords (PostgreSQL's default).
pub const SCRAM_ITERATIONS: usize = 4096;

/// What the server needs to check a password: the salt and the SCRAM SaltedPassword.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Random salt.
    pub salt: Vec<u8>,
    /// PBKDF2-SHA-256 of the password with `salt` and [`SCRAM_ITERATIONS`].
    pub salted_password: Vec<u8>,
    /// May write server-side files and manage users.
    pub superuser: bool,
}

impl Credentials {
    /// Hashes a clear-text password with a fresh salt.
    pub fn from_password(password: &str, superuser: bool) -> Credentials {
        let salt: [u8; 16] = rand::random();
        let salted_password =
            pgwire::api::auth::sasl::scram::gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        Credentials {
            salt: salt.to_vec(),
            salted_password,
            superuser,
        }
    }
}

impl Engine {
    /// Whether any user is defined (in `tally.toml` or with CREATE USER). Without users,
    /// tally trusts loopback connections, as PostgreSQL's default `trust` for local sockets.
    pub fn has_users(&self) -> bool {
        !self.config.users.is_empty() || !self.catalog.current().users.is_empty()
    }

    /// The credentials of `user`, if it may log in with a password.
    pub fn credentials(&self, user: &str) -> Option<Credentials> {
        if let Some(c) = self.config_credentials.get(user) {
            return Some(c.clone());
        }
        let doc = self.catalog.current();
        let u = doc.users.get(user)?;
        Some(Credentials {
            salt: hex_decode(&u.salt)?,
            salted_password: hex_decode(&u.salted_password)?,
            superuser: u.superuser,
        })
    }

    /// Whether `user` holds the superuser privilege. With no users defined, the local
    /// trusted user does.
    pub fn is_superuser(&self, user: &str) -> bool {
        if !self.has_users() {
            return true;
        }
        self.credentials(user).is_some_and(|c| c.superuser)
    }
}

/// Lower-case hex, for salts and hashes stored in the catalog.
pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}
