//! `pg_catalog` relations that datafusion-pg-catalog gets wrong for tally, replaced by views
//! over its `pg_class`, `pg_namespace` and `pg_attribute`.
//!
//! - `pg_tables` and `pg_views`: datafusion-pg-catalog lists every relation in `pg_tables`
//!   (views included) and leaves `pg_views` empty. Tools decide what to do with a relation
//!   from these two: dbt-postgres renames and drops a view with `DROP TABLE` when it was
//!   listed as a table, which fails. `pg_class.relkind` is right, so both derive from it, as
//!   PostgreSQL defines them.
//! - `pg_description`: datafusion-pg-catalog serves PostgreSQL's built-in descriptions only;
//!   the comments users set with `COMMENT ON` (dbt's `persist_docs`, read back by
//!   `dbt docs generate`, psql's `\d+`) are added from tally's catalog.
//! - `pg_attribute`: datafusion-pg-catalog derives each column's type from its Arrow type
//!   alone, so `uuid`, `json`, `jsonb` and `varchar` columns (strings in Delta) read as
//!   `text`, arrays of anything but text and int4 as `text`, and no column has a type
//!   modifier (`numeric(10,2)` reads as `numeric`). psql's `\d`, JDBC's `getColumns` and
//!   SQLAlchemy's reflection format the type from `atttypid` and `atttypmod`, so both are
//!   taken from tally's declarations (`tally_column_types`) where it has them.
//! - `pg_views.definition` (and so `pg_get_viewdef`, which SQLAlchemy's
//!   `get_view_definition` calls): the view's query as stored (`tally_view_definitions`).
//! - `pg_class`: datafusion-pg-catalog's lacks `relacl` and `reloptions`, which
//!   SQLAlchemy's index reflection selects (`pg_class.reloptions` of each index); both are
//!   NULL, as in PostgreSQL for a relation without grants or storage options, in
//!   PostgreSQL's column order.
//! - `pg_index`: empty (tally has no indexes), but its `int2vector`/`oidvector` columns
//!   (`indkey`, `indclass`, `indcollation`, `indoption`) are arrays, so that catalog queries
//!   that `unnest` them (SQLAlchemy's primary key and index reflection) plan.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemTable, SchemaProvider, Session, TableProvider, view::ViewTable};
use datafusion::common::Result as DFResult;
use datafusion::datasource::TableType;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

use crate::catalog::{CatalogStore, DATABASE, Relation};
use crate::error::{Result, TallyError};

const PG_TABLES: &str = "SELECT n.nspname AS schemaname, c.relname AS tablename, \
     pg_get_userbyid(c.relowner) AS tableowner, CAST(NULL AS text) AS tablespace, \
     false AS hasindexes, false AS hasrules, false AS hastriggers, false AS rowsecurity \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p')";

const PG_VIEWS: &str = "SELECT n.nspname AS schemaname, c.relname AS viewname, \
     pg_get_userbyid(c.relowner) AS viewowner, d.definition \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     LEFT JOIN pg_catalog.tally_view_definitions d \
       ON d.nspname = n.nspname AND d.relname = c.relname \
     WHERE c.relkind = 'v'";

/// datafusion-pg-catalog's `pg_class` with the columns it lacks, in PostgreSQL's order.
const PG_CLASS: &str = "SELECT c.oid, c.relname, c.relnamespace, c.reltype, c.reloftype, \
     c.relowner, c.relam, c.relfilenode, c.reltablespace, c.relpages, c.reltuples, \
     c.relallvisible, c.reltoastrelid, c.relhasindex, c.relisshared, c.relpersistence, \
     c.relkind, c.relnatts, c.relchecks, c.relhasrules, c.relhastriggers, c.relhassubclass, \
     c.relrowsecurity, c.relforcerowsecurity, c.relispopulated, c.relreplident, \
     c.relispartition, c.relrewrite, c.relfrozenxid, c.relminmxid, \
     CAST(NULL AS text[]) AS relacl, CAST(NULL AS text[]) AS reloptions, c.relpartbound \
     FROM pg_catalog.tally_base_class c";

/// Built-in descriptions plus the users' comments; `classoid` 1259 is `pg_class`, and
/// `objsubid` is 0 for the relation itself, else the column's number.
const PG_DESCRIPTION: &str = "SELECT objoid, classoid, objsubid, description \
     FROM pg_catalog.tally_builtin_description \
     UNION ALL \
     SELECT c.oid AS objoid, CAST(1259 AS int) AS classoid, \
            CAST(COALESCE(a.attnum, 0) AS int) AS objsubid, d.description \
     FROM pg_catalog.tally_comments d \
     JOIN pg_catalog.pg_namespace n ON n.nspname = d.nspname \
     JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = d.relname \
     LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = d.attname \
     WHERE d.attname IS NULL OR a.attnum IS NOT NULL";

/// datafusion-pg-catalog's `pg_attribute` with the types tally knows better.
const PG_ATTRIBUTE: &str = "SELECT a.attrelid, a.attname, \
     CAST(COALESCE(t.atttypid, a.atttypid) AS oid) AS atttypid, a.attstattarget, \
     COALESCE(t.attlen, a.attlen) AS attlen, a.attnum, \
     COALESCE(t.attndims, a.attndims) AS attndims, a.attcacheoff, \
     COALESCE(t.atttypmod, a.atttypmod) AS atttypmod, a.attbyval, a.attalign, a.attstorage, \
     a.attcompression, a.attnotnull, a.atthasdef, a.atthasmissing, a.attidentity, \
     a.attgenerated, a.attisdropped, a.attislocal, a.attinhcount, a.attcollation, a.attacl, \
     a.attoptions, a.attfdwoptions, a.attmissingval \
     FROM pg_catalog.tally_base_attribute a \
     LEFT JOIN (SELECT c.oid AS relid, ct.attname, ct.atttypid, ct.atttypmod, ct.attlen, \
                       ct.attndims \
                FROM pg_catalog.tally_column_types ct \
                JOIN pg_catalog.pg_namespace n ON n.nspname = ct.nspname \
                JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = ct.relname) t \
       ON t.relid = a.attrelid AND t.attname = a.attname";

/// Replaces `pg_tables`, `pg_views`, `pg_description`, `pg_attribute`, `pg_class` and
/// `pg_index` in the context's `pg_catalog`;
/// call after datafusion-pg-catalog's setup.
pub async fn install(ctx: &SessionContext, store: Arc<CatalogStore>) -> Result<()> {
    let catalog = ctx
        .catalog(DATABASE)
        .ok_or_else(|| TallyError::Internal("catalog missing".into()))?;
    let inner = catalog
        .schema("pg_catalog")
        .ok_or_else(|| TallyError::Internal("pg_catalog missing".into()))?;
    let builtin = inner
        .table("pg_description")
        .await?
        .ok_or_else(|| TallyError::Internal("pg_description missing".into()))?;
    let base_attribute = inner
        .table("pg_attribute")
        .await?
        .ok_or_else(|| TallyError::Internal("pg_attribute missing".into()))?;
    let base_class = inner
        .table("pg_class")
        .await?
        .ok_or_else(|| TallyError::Internal("pg_class missing".into()))?;
    // Helpers the views read, resolvable by name but not listed.
    let mut overrides: HashMap<String, Arc<dyn TableProvider>> = HashMap::new();
    overrides.insert("tally_builtin_description".into(), builtin);
    overrides.insert("tally_base_attribute".into(), base_attribute);
    overrides.insert("tally_base_class".into(), base_class);
    if let Some(index) = inner.table("pg_index").await? {
        overrides.insert("pg_index".into(), empty_index_table(&index.schema())?);
    }
    overrides.insert(
        "tally_column_types".into(),
        Arc::new(ColumnTypes {
            store: store.clone(),
            catalog: catalog.clone(),
        }),
    );
    overrides.insert(
        "tally_view_definitions".into(),
        Arc::new(ViewDefinitions {
            store: store.clone(),
        }),
    );
    overrides.insert("tally_comments".into(), Arc::new(Comments { store }));
    catalog.register_schema(
        "pg_catalog",
        Arc::new(Overridden {
            inner: inner.clone(),
            overrides: overrides.clone(),
        }),
    )?;
    for (name, sql) in [
        ("pg_tables", PG_TABLES),
        ("pg_views", PG_VIEWS),
        ("pg_description", PG_DESCRIPTION),
        ("pg_attribute", PG_ATTRIBUTE),
        ("pg_class", PG_CLASS),
    ] {
        let plan = ctx.state().create_logical_plan(sql).await?;
        overrides.insert(
            name.to_string(),
            Arc::new(ViewTable::new(plan, Some(sql.to_string()))),
        );
    }
    catalog.register_schema("pg_catalog", Arc::new(Overridden { inner, overrides }))?;
    Ok(())
}

/// An empty `pg_index` with datafusion-pg-catalog's columns, its vector columns as arrays.
fn empty_index_table(schema: &SchemaRef) -> Result<Arc<dyn TableProvider>> {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let element = match f.name().as_str() {
                "indkey" | "indoption" => Some(DataType::Int16),
                "indclass" | "indcollation" => Some(DataType::Int32),
                _ => None,
            };
            match element {
                Some(t) => Field::new(
                    f.name(),
                    DataType::List(Arc::new(Field::new("item", t, true))),
                    true,
                ),
                None => f.as_ref().clone(),
            }
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?))
}

/// datafusion-pg-catalog's schema with some of its tables replaced.
#[derive(Debug)]
struct Overridden {
    inner: Arc<dyn SchemaProvider>,
    overrides: HashMap<String, Arc<dyn TableProvider>>,
}

#[async_trait]
impl SchemaProvider for Overridden {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        match self.overrides.get(name) {
            Some(t) => Ok(Some(t.clone())),
            None => self.inner.table(name).await,
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.overrides.contains_key(name) || self.inner.table_exist(name)
    }
}

/// The comments in the committed catalog, one row per commented relation or column, read
/// at every scan.
#[derive(Debug)]
struct Comments {
    store: Arc<CatalogStore>,
}

impl Comments {
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("nspname", DataType::Utf8, false),
            Field::new("relname", DataType::Utf8, false),
            Field::new("attname", DataType::Utf8, true),
            Field::new("description", DataType::Utf8, false),
        ]))
    }

    fn batch(&self) -> DFResult<RecordBatch> {
        let doc = self.store.current();
        let (mut nsp, mut rel, mut att, mut desc) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        for (schema, entry) in &doc.schemas {
            for (name, relation) in &entry.relations {
                let (comment, columns) = match relation {
                    Relation::Table(t) => (&t.comment, &t.column_comments),
                    Relation::View(v) => (&v.comment, &v.column_comments),
                    Relation::External(_) => continue,
                };
                let rows = comment
                    .iter()
                    .map(|c| (None, c))
                    .chain(columns.iter().map(|(col, c)| (Some(col.as_str()), c)));
                for (column, text) in rows {
                    nsp.append_value(schema);
                    rel.append_value(name);
                    att.append_option(column);
                    desc.append_value(text);
                }
            }
        }
        Ok(RecordBatch::try_new(
            Self::schema(),
            vec![
                Arc::new(nsp.finish()),
                Arc::new(rel.finish()),
                Arc::new(att.finish()),
                Arc::new(desc.finish()),
            ],
        )?)
    }
}

#[async_trait]
impl TableProvider for Comments {
    fn schema(&self) -> SchemaRef {
        Self::schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let table = MemTable::try_new(Self::schema(), vec![vec![self.batch()?]])?;
        table.scan(state, projection, filters, limit).await
    }
}

/// The type of every column of every user relation as PostgreSQL would report it
/// (`atttypid`, `atttypmod`, `attlen`, `attndims`), from tally's declarations
/// ([`crate::engine::columns::relation_fields`]), read at every scan.
struct ColumnTypes {
    store: Arc<CatalogStore>,
    catalog: Arc<dyn datafusion::catalog::CatalogProvider>,
}

impl std::fmt::Debug for ColumnTypes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ColumnTypes")
    }
}

impl ColumnTypes {
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("nspname", DataType::Utf8, false),
            Field::new("relname", DataType::Utf8, false),
            Field::new("attname", DataType::Utf8, false),
            Field::new("atttypid", DataType::Int32, false),
            Field::new("atttypmod", DataType::Int32, false),
            Field::new("attlen", DataType::Int16, false),
            Field::new("attndims", DataType::Int32, false),
        ]))
    }

    async fn batch(&self) -> DFResult<RecordBatch> {
        use datafusion::arrow::array::{Int16Builder, Int32Builder};
        let doc = self.store.current();
        let (mut nsp, mut rel, mut att) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let (mut typid, mut typmod, mut len, mut ndims) = (
            Int32Builder::new(),
            Int32Builder::new(),
            Int16Builder::new(),
            Int32Builder::new(),
        );
        for (schema_name, entry) in &doc.schemas {
            let Some(schema) = self.catalog.schema(schema_name) else {
                continue;
            };
            for (name, relation) in &entry.relations {
                // A relation that cannot be opened right now keeps datafusion-pg-catalog's
                // answer (which skips it too).
                let Ok(Some(provider)) = schema.table(name).await else {
                    continue;
                };
                for field in
                    crate::engine::columns::relation_fields(&doc, relation, provider.as_ref())
                {
                    let Ok((t, m)) = crate::engine::columns::pg_type(&field, true) else {
                        continue;
                    };
                    let dims = match field.data_type() {
                        DataType::List(_)
                        | DataType::LargeList(_)
                        | DataType::FixedSizeList(..) => 1,
                        _ => 0,
                    };
                    nsp.append_value(schema_name);
                    rel.append_value(name);
                    att.append_value(field.name());
                    typid.append_value(t.oid() as i32);
                    typmod.append_value(m);
                    len.append_value(crate::engine::columns::type_len(&t));
                    ndims.append_value(dims);
                }
            }
        }
        Ok(RecordBatch::try_new(
            Self::schema(),
            vec![
                Arc::new(nsp.finish()),
                Arc::new(rel.finish()),
                Arc::new(att.finish()),
                Arc::new(typid.finish()),
                Arc::new(typmod.finish()),
                Arc::new(len.finish()),
                Arc::new(ndims.finish()),
            ],
        )?)
    }
}

#[async_trait]
impl TableProvider for ColumnTypes {
    fn schema(&self) -> SchemaRef {
        Self::schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let table = MemTable::try_new(Self::schema(), vec![vec![self.batch().await?]])?;
        table.scan(state, projection, filters, limit).await
    }
}

/// The query of every view in the committed catalog (`pg_views.definition`).
#[derive(Debug)]
struct ViewDefinitions {
    store: Arc<CatalogStore>,
}

impl ViewDefinitions {
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("nspname", DataType::Utf8, false),
            Field::new("relname", DataType::Utf8, false),
            Field::new("definition", DataType::Utf8, false),
        ]))
    }

    fn batch(&self) -> DFResult<RecordBatch> {
        let doc = self.store.current();
        let (mut nsp, mut rel, mut def) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        for (schema, entry) in &doc.schemas {
            for (name, relation) in &entry.relations {
                if let Relation::View(v) = relation {
                    nsp.append_value(schema);
                    rel.append_value(name);
                    def.append_value(&v.sql);
                }
            }
        }
        Ok(RecordBatch::try_new(
            Self::schema(),
            vec![
                Arc::new(nsp.finish()),
                Arc::new(rel.finish()),
                Arc::new(def.finish()),
            ],
        )?)
    }
}

#[async_trait]
impl TableProvider for ViewDefinitions {
    fn schema(&self) -> SchemaRef {
        Self::schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let table = MemTable::try_new(Self::schema(), vec![vec![self.batch()?]])?;
        table.scan(state, projection, filters, limit).await
    }
}
