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
     pg_get_userbyid(c.relowner) AS viewowner, CAST(NULL AS text) AS definition \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'v'";

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

/// Replaces `pg_tables`, `pg_views` and `pg_description` in the context's `pg_catalog`;
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
    // Helpers the views read, resolvable by name but not listed.
    let mut overrides: HashMap<String, Arc<dyn TableProvider>> = HashMap::new();
    overrides.insert("tally_builtin_description".into(), builtin);
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
