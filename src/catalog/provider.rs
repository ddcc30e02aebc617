//! The catalog as DataFusion sees it: one [`CatalogView`] per session over the shared
//! [`CatalogStore`](super::CatalogStore), with the session's own layers on top: catalog
//! changes staged by an open transaction, and the session's temporary tables.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use dashmap::DashMap;
use datafusion::catalog::{CatalogProvider, MemorySchemaProvider, SchemaProvider};
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::datasource::TableProvider;
use datafusion::datasource::ViewTable;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use deltalake::DeltaTable;
use parking_lot::RwLock;

use super::{CatalogDoc, CatalogStore, Relation};
use crate::error::{Result, TallyError};
use crate::storage::delta::{DeltaTableProvider, open_table};

/// Schema name of the session's temporary tables.
pub const TEMP_SCHEMA: &str = "pg_temp";

/// Open Delta tables by location, kept between statements so that each lookup only reads the
/// log entries committed since the previous one.
#[derive(Debug)]
pub struct TableCache {
    store: Arc<CatalogStore>,
    tables: DashMap<String, DeltaTable>,
}

impl TableCache {
    /// An empty cache over the warehouse of `store`.
    pub fn new(store: Arc<CatalogStore>) -> Self {
        TableCache {
            store,
            tables: DashMap::new(),
        }
    }

    /// The table at `location` (relative to the root) at its latest committed version.
    pub async fn latest(&self, location: &str) -> Result<DeltaTable> {
        let cached = self.tables.get(location).map(|t| t.clone());
        let table = match cached {
            Some(mut t) => {
                t.update_incremental(None).await?;
                t
            }
            None => {
                let wh = self.store.warehouse();
                open_table(&wh.url_of(location)?, &wh.options).await?
            }
        };
        self.tables.insert(location.to_string(), table.clone());
        Ok(table)
    }

    /// Forgets a location (after DROP TABLE).
    pub fn forget(&self, location: &str) {
        self.tables.remove(location);
    }
}

struct Inner {
    store: Arc<CatalogStore>,
    tables: Arc<TableCache>,
    staged: RwLock<Option<CatalogDoc>>,
    temp: Arc<MemorySchemaProvider>,
    default_schema: RwLock<String>,
    system: Arc<DashMap<String, Arc<dyn SchemaProvider>>>,
    state: RwLock<Weak<RwLock<SessionState>>>,
}

/// A session's view of the catalog (the DataFusion catalog named `tally`).
#[derive(Clone)]
pub struct CatalogView {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CatalogView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogView").finish()
    }
}

impl CatalogView {
    /// A view over `store`; `system` holds schemas served by code (pg_catalog), shared by all
    /// sessions.
    pub fn new(
        store: Arc<CatalogStore>,
        tables: Arc<TableCache>,
        system: Arc<DashMap<String, Arc<dyn SchemaProvider>>>,
    ) -> Self {
        CatalogView {
            inner: Arc::new(Inner {
                store,
                tables,
                staged: RwLock::new(None),
                temp: Arc::new(MemorySchemaProvider::new()),
                default_schema: RwLock::new(super::DEFAULT_SCHEMA.to_string()),
                system,
                state: RwLock::new(Weak::new()),
            }),
        }
    }

    /// Connects the view to its session's state, which plans views and external tables.
    pub fn attach_state(&self, state: &Arc<RwLock<SessionState>>) {
        *self.inner.state.write() = Arc::downgrade(state);
    }

    /// The catalog this session sees: the staged copy inside a transaction, else the latest.
    pub fn doc(&self) -> Arc<CatalogDoc> {
        match &*self.inner.staged.read() {
            Some(doc) => Arc::new(doc.clone()),
            None => self.inner.store.current(),
        }
    }

    /// Starts staging catalog changes (BEGIN).
    pub fn begin(&self) {
        let doc = (*self.inner.store.current()).clone();
        *self.inner.staged.write() = Some(doc);
    }

    /// Stops staging and returns the staged copy (COMMIT or ROLLBACK).
    pub fn end(&self) -> Option<CatalogDoc> {
        self.inner.staged.write().take()
    }

    /// Whether catalog changes are being staged.
    pub fn in_transaction(&self) -> bool {
        self.inner.staged.read().is_some()
    }

    /// Applies a change to the staged copy (inside a transaction).
    pub fn stage<T>(&self, change: impl Fn(&mut CatalogDoc) -> Result<T>) -> Result<T> {
        let mut staged = self.inner.staged.write();
        let doc = staged
            .as_mut()
            .ok_or_else(|| TallyError::Internal("no transaction to stage into".into()))?;
        change(doc)
    }

    /// The session's temporary tables.
    pub fn temp(&self) -> &Arc<MemorySchemaProvider> {
        &self.inner.temp
    }

    /// The schema where unqualified names resolve (first entry of `search_path`).
    pub fn set_default_schema(&self, schema: &str) {
        *self.inner.default_schema.write() = schema.to_string();
    }

    /// The shared store.
    pub fn store(&self) -> &Arc<CatalogStore> {
        &self.inner.store
    }

    /// The shared table cache.
    pub fn tables(&self) -> &Arc<TableCache> {
        &self.inner.tables
    }

    fn session_state(&self) -> Option<SessionState> {
        self.inner.state.read().upgrade().map(|s| s.read().clone())
    }

    /// Builds the DataFusion table for a catalog relation.
    pub async fn relation_provider(&self, rel: &Relation) -> Result<Arc<dyn TableProvider>> {
        match rel {
            Relation::Table(t) => {
                let table = self.inner.tables.latest(&t.location).await?;
                Ok(Arc::new(DeltaTableProvider::try_new(table).await?))
            }
            Relation::View(v) => {
                let state = self
                    .session_state()
                    .ok_or_else(|| TallyError::Internal("no session to plan view".into()))?;
                let plan = state.create_logical_plan(&v.sql).await?;
                Ok(Arc::new(ViewTable::new(plan, Some(v.sql.clone()))))
            }
            Relation::External(e) => {
                let state = self.session_state().ok_or_else(|| {
                    TallyError::Internal("no session to plan external table".into())
                })?;
                // Plan the stored statement without the catalog: DataFusion looks the new
                // name up while planning CREATE, which would lead straight back here.
                let bare =
                    datafusion::execution::SessionStateBuilder::new_from_existing(state.clone())
                        .with_catalog_list(Arc::new(
                            datafusion::catalog::MemoryCatalogProviderList::new(),
                        ))
                        .build();
                let plan = bare.create_logical_plan(&e.sql).await?;
                let LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)) = plan else {
                    return Err(TallyError::Internal(
                        "stored external table is not CREATE EXTERNAL TABLE".into(),
                    ));
                };
                let factory = state
                    .table_factories()
                    .get(&cmd.file_type.to_uppercase())
                    .cloned()
                    .ok_or_else(|| {
                        TallyError::Unsupported(format!("file type {}", cmd.file_type))
                    })?;
                Ok(factory.create(&state, &cmd).await?)
            }
        }
    }
}

impl CatalogProvider for CatalogView {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.doc().schemas.keys().cloned().collect();
        names.extend(self.inner.system.iter().map(|e| e.key().clone()));
        // Listed so that information_schema shows the session's temporary tables, as
        // PostgreSQL does (dbt reads the columns of its temporary tables from there).
        if !self.inner.temp.table_names().is_empty() {
            names.push(TEMP_SCHEMA.to_string());
        }
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if let Some(s) = self.inner.system.get(name) {
            return Some(s.clone());
        }
        if name == TEMP_SCHEMA {
            return Some(self.inner.temp.clone());
        }
        if self.doc().schemas.contains_key(name) {
            Some(Arc::new(DocSchema {
                view: self.clone(),
                name: name.to_string(),
            }))
        } else {
            None
        }
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> DFResult<Option<Arc<dyn SchemaProvider>>> {
        // Only code registers schemas here (pg_catalog); user schemas go through the catalog.
        Ok(self.inner.system.insert(name.to_string(), schema))
    }
}

fn table_location(rel: &Relation) -> Option<&str> {
    match rel {
        Relation::Table(t) => Some(t.location.as_str()),
        _ => None,
    }
}

/// A user schema, read from the catalog document on every lookup.
struct DocSchema {
    view: CatalogView,
    name: String,
}

impl std::fmt::Debug for DocSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DocSchema({})", self.name)
    }
}

impl DocSchema {
    fn overlays_temp(&self) -> bool {
        *self.view.inner.default_schema.read() == self.name
    }
}

#[async_trait]
impl SchemaProvider for DocSchema {
    fn table_names(&self) -> Vec<String> {
        self.view
            .doc()
            .schemas
            .get(&self.name)
            .map(|s| s.relations.keys().cloned().collect())
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        if self.overlays_temp()
            && let Some(t) = self.view.inner.temp.table(name).await?
        {
            return Ok(Some(t));
        }
        let doc = self.view.doc();
        let Some(rel) = doc.relation(&self.name, name) else {
            return Ok(None);
        };
        let first = match self.view.relation_provider(rel).await {
            Ok(p) => return Ok(Some(p)),
            Err(e) => e,
        };
        // Another session may have dropped or swapped this table (DROP, RENAME: what dbt does
        // on every model while its other threads list columns) after this session read the
        // catalog, or after its transaction took its copy, and deleted the old folder. Ask
        // the latest catalog: a table that is gone is not there, one that moved opens anew.
        let latest = self.view.store().current();
        match latest.relation(&self.name, name) {
            None => Ok(None),
            Some(now) if table_location(now) != table_location(rel) => self
                .view
                .relation_provider(now)
                .await
                .map(Some)
                .map_err(DataFusionError::from),
            Some(_) => Err(first.into()),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        (self.overlays_temp() && self.view.inner.temp.table_exist(name))
            || self.view.doc().relation(&self.name, name).is_some()
    }
}
