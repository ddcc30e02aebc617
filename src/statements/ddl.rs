//! Catalog statements: schemas, tables (including `CREATE TABLE AS`, streamed into Delta),
//! views, external tables, DROP, ALTER and COMMENT.
//!
//! Order of effects keeps the catalog honest after any crash: data is written first (a new
//! Delta table folder nobody references yet), then the catalog commit makes it visible;
//! DROP commits the catalog first and deletes data afterwards (or at COMMIT inside a
//! transaction block). A crash between the two leaves an unreferenced folder, never a
//! catalog entry without data.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::MemTable;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::TableProvider;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{LogicalPlan, cast, col};
use datafusion::physical_plan::collect;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    AlterTableOperation, ColumnOption, CommentObject, CreateTable, CreateView, ObjectName,
    ObjectType, Query, SchemaName, Statement, TableConstraint,
};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;

use super::names::{self, QualifiedName, check_writable_schema, ident, resolve};
use super::{Completion, Output, change_catalog, query};
use crate::catalog::types::{arrow_type, storable};
use crate::catalog::{CatalogDoc, ExternalEntry, Relation, SchemaEntry, TableEntry, ViewEntry};
use crate::engine::Session;
use crate::error::{Result, TallyError, unwrap_datafusion};
use crate::storage::delta::{DeltaTableProvider, create_table as create_delta};

/// `CREATE SCHEMA [IF NOT EXISTS] name`.
pub async fn create_schema(
    session: &mut Session,
    name: SchemaName,
    if_not_exists: bool,
) -> Result<Output> {
    let name = match &name {
        SchemaName::Simple(n) | SchemaName::NamedAuthorization(n, _) => {
            names::parts(n).pop().unwrap_or_default()
        }
        SchemaName::UnnamedAuthorization(user) => ident(user),
    };
    check_writable_schema(&name)?;
    let created = change_catalog(session, |doc| {
        if doc.schemas.contains_key(&name) {
            if if_not_exists {
                return Ok(false);
            }
            return Err(TallyError::AlreadyExists {
                kind: "schema",
                name: name.clone(),
            });
        }
        doc.schemas.insert(name.clone(), SchemaEntry::default());
        Ok(true)
    })
    .await?;
    let c = Completion::tag("CREATE SCHEMA");
    Ok(Output::Command(if created {
        c
    } else {
        c.with_notice(format!("schema \"{name}\" already exists, skipping"))
    }))
}

fn require_schema(doc: &CatalogDoc, schema: &str) -> Result<()> {
    if doc.schemas.contains_key(schema) {
        Ok(())
    } else {
        Err(TallyError::NotFound {
            kind: "schema",
            name: schema.to_string(),
        })
    }
}

/// A free folder for a new table: `<schema>/<table>/`, or a suffixed one when that folder is
/// still held by a renamed or dropped table.
pub(crate) async fn new_location(session: &Session, q: &QualifiedName) -> Result<String> {
    let wh = session.engine.warehouse();
    let doc = session.catalog.doc();
    let mut used: BTreeSet<String> = doc.table_locations().map(str::to_string).collect();
    used.extend(
        session
            .catalog
            .store()
            .current()
            .table_locations()
            .map(str::to_string),
    );
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let base = format!("{}/{}", safe(&q.schema), safe(&q.name));
    let mut candidate = format!("{base}/");
    loop {
        let log = wh.path_of(&format!("{candidate}_delta_log/"));
        let mut listing = wh.store.list(Some(&log));
        let occupied = futures::StreamExt::next(&mut listing).await.is_some();
        if !used.contains(&candidate) && !occupied {
            return Ok(candidate);
        }
        let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        candidate = format!("{base}_{suffix}/");
    }
}

fn relation_exists(session: &Session, q: &QualifiedName) -> bool {
    session.catalog.doc().relation(&q.schema, &q.name).is_some()
}

/// `CREATE [TEMPORARY] TABLE [IF NOT EXISTS] name (columns) | AS query`.
pub async fn create_table(session: &mut Session, ct: CreateTable) -> Result<Output> {
    if ct.external {
        return Err(TallyError::Unsupported(
            "use CREATE EXTERNAL TABLE ... STORED AS ... LOCATION".into(),
        ));
    }
    if ct.temporary {
        return create_temp_table(session, ct).await;
    }
    let q = resolve(session, &ct.name)?;
    check_writable_schema(&q.schema)?;
    require_schema(&session.catalog.doc(), &q.schema)?;
    if relation_exists(session, &q) {
        if ct.if_not_exists {
            return Ok(Output::Command(
                Completion::tag("CREATE TABLE")
                    .with_notice(format!("relation \"{}\" already exists, skipping", q.name)),
            ));
        }
        return Err(TallyError::AlreadyExists {
            kind: "relation",
            name: q.name,
        });
    }
    if let Some(query) = ct.query {
        return create_table_as(session, q, *query).await;
    }
    let (schema, pg_types, primary_key) = columns_schema(&ct.columns, &ct.constraints)?;
    let location = new_location(session, &q).await?;
    let wh = session.engine.warehouse();
    create_delta(&wh.url_of(&location)?, &wh.options, &q.name, &schema).await?;
    let comment = ct.comment.as_ref().map(|c| match c {
        datafusion::sql::sqlparser::ast::CommentDef::WithEq(s)
        | datafusion::sql::sqlparser::ast::CommentDef::WithoutEq(s) => s.clone(),
    });
    let entry = TableEntry {
        location: location.clone(),
        pg_types,
        primary_key,
        comment,
        column_comments: Default::default(),
    };
    register_new_table(session, &q, entry).await?;
    Ok(Output::Command(Completion::tag("CREATE TABLE")))
}

/// Commits a freshly written table to the catalog; removes its folder if that fails.
pub(crate) async fn register_new_table(
    session: &mut Session,
    q: &QualifiedName,
    entry: TableEntry,
) -> Result<()> {
    let location = entry.location.clone();
    let result = change_catalog(session, |doc| {
        let schema = doc
            .schemas
            .get_mut(&q.schema)
            .ok_or_else(|| TallyError::NotFound {
                kind: "schema",
                name: q.schema.clone(),
            })?;
        if schema.relations.contains_key(&q.name) {
            return Err(TallyError::AlreadyExists {
                kind: "relation",
                name: q.name.clone(),
            });
        }
        schema
            .relations
            .insert(q.name.clone(), Relation::Table(entry.clone()));
        Ok(())
    })
    .await;
    match result {
        Ok(()) => {
            if session.catalog.in_transaction() {
                session.txn_effects.created.push(location);
            }
            Ok(())
        }
        Err(e) => {
            let _ = session.engine.warehouse().delete_prefix(&location).await;
            Err(e)
        }
    }
}

type ColumnsSchema = (
    Schema,
    std::collections::BTreeMap<String, String>,
    Vec<String>,
);

fn columns_schema(
    columns: &[datafusion::sql::sqlparser::ast::ColumnDef],
    constraints: &[TableConstraint],
) -> Result<ColumnsSchema> {
    if columns.is_empty() {
        return Err(TallyError::syntax("a table needs at least one column"));
    }
    let mut pk: Vec<String> = Vec::new();
    for c in constraints {
        if let TableConstraint::PrimaryKey(p) = c {
            pk.extend(
                p.columns
                    .iter()
                    .map(|c| c.to_string().trim_matches('"').to_lowercase()),
            );
        }
    }
    let mut fields = Vec::with_capacity(columns.len());
    let mut pg_types = std::collections::BTreeMap::new();
    let mut seen = BTreeSet::new();
    for c in columns {
        let name = ident(&c.name);
        if !seen.insert(name.clone()) {
            return Err(TallyError::AlreadyExists {
                kind: "column",
                name,
            });
        }
        let (t, pg) = arrow_type(&c.data_type)?;
        let mut nullable = true;
        for o in &c.options {
            match &o.option {
                ColumnOption::NotNull => nullable = false,
                ColumnOption::PrimaryKey(_) => {
                    nullable = false;
                    pk.push(name.clone());
                }
                ColumnOption::Null | ColumnOption::Comment(_) | ColumnOption::Unique(_) => {}
                ColumnOption::Default(_) => {
                    return Err(TallyError::Unsupported(format!(
                        "DEFAULT values (column \"{name}\") are not supported yet"
                    )));
                }
                other => {
                    return Err(TallyError::Unsupported(format!(
                        "column option {other} is not supported"
                    )));
                }
            }
        }
        if pk.contains(&name) {
            nullable = false;
        }
        if let Some(pg) = pg {
            pg_types.insert(name.clone(), pg);
        }
        fields.push(Field::new(name, t, nullable));
    }
    Ok((Schema::new(fields), pg_types, pk))
}

/// Column names that Delta accepts (no `(),;{}=` or whitespace without column mapping), in
/// the spirit of PostgreSQL's naming of unnamed result columns: `count(*)` becomes `count`.
fn storable_schema(schema: &Schema) -> SchemaRef {
    let mut seen = BTreeSet::new();
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let raw = f.name();
            let bad = |c: char| " ,;{}()\n\t=".contains(c);
            let mut name = if raw.chars().any(bad) {
                let head: String = raw
                    .split('(')
                    .next()
                    .unwrap_or("")
                    .chars()
                    .filter(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if head.is_empty() {
                    format!("column{}", i + 1)
                } else {
                    head.to_lowercase()
                }
            } else {
                raw.clone()
            };
            if name.is_empty() {
                name = format!("column{}", i + 1);
            }
            let base = name.clone();
            let mut n = 1;
            while !seen.insert(name.clone()) {
                n += 1;
                name = format!("{base}_{n}");
            }
            Field::new(name, storable(f.data_type()), true)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// `CREATE TABLE ... AS query`: the query streams into a new Delta table (never collected in
/// memory); the catalog entry appears only once every row is committed.
async fn create_table_as(session: &mut Session, q: QualifiedName, query: Query) -> Result<Output> {
    let plan = query::plan(session, Statement::Query(Box::new(query))).await?;
    let target = storable_schema(plan.schema().as_arrow());
    let location = new_location(session, &q).await?;
    let wh = session.engine.warehouse().clone();
    let table = create_delta(&wh.url_of(&location)?, &wh.options, &q.name, &target).await?;
    let written = write_plan_into(session, plan, &target, table).await;
    let rows = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = wh.delete_prefix(&location).await;
            return Err(e);
        }
    };
    register_new_table(
        session,
        &q,
        TableEntry {
            location,
            pg_types: Default::default(),
            primary_key: vec![],
            comment: None,
            column_comments: Default::default(),
        },
    )
    .await?;
    Ok(Output::Command(Completion::rows("SELECT", rows as usize)))
}

/// Streams a plan's rows into a Delta table as one append commit; returns the row count.
async fn write_plan_into(
    session: &Session,
    plan: LogicalPlan,
    target: &SchemaRef,
    table: deltalake::DeltaTable,
) -> Result<u64> {
    let df = session
        .ctx
        .execute_logical_plan(plan)
        .await
        .map_err(unwrap_datafusion)?;
    let exprs: Vec<_> = df
        .schema()
        .columns()
        .into_iter()
        .zip(target.fields())
        .map(|(c, f)| cast(col(c), f.data_type().clone()).alias(f.name()))
        .collect();
    let df = df.select(exprs).map_err(unwrap_datafusion)?;
    let mut exec = df.create_physical_plan().await.map_err(unwrap_datafusion)?;
    // The Delta sink reads one partition: merge the plan's partitions into it.
    if datafusion::physical_plan::ExecutionPlanProperties::output_partitioning(&exec)
        .partition_count()
        > 1
    {
        exec = Arc::new(
            datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec::new(exec),
        );
    }
    let provider = DeltaTableProvider::try_new(table).await?;
    let state = session.ctx.state();
    let sink = provider
        .insert_into(&state, exec, InsertOp::Append)
        .await
        .map_err(unwrap_datafusion)?;
    let batches = collect(sink, session.ctx.task_ctx())
        .await
        .map_err(unwrap_datafusion)?;
    Ok(crate::storage::delta::affected_rows(&batches))
}

/// `CREATE TEMPORARY TABLE`: an in-memory table private to the session.
async fn create_temp_table(session: &mut Session, ct: CreateTable) -> Result<Output> {
    let parts = names::parts(&ct.name);
    let name = parts.last().cloned().unwrap_or_default();
    let temp = session.catalog.temp().clone();
    if datafusion::catalog::SchemaProvider::table_exist(temp.as_ref(), &name) {
        if ct.if_not_exists {
            return Ok(Output::Command(Completion::tag("CREATE TABLE")));
        }
        return Err(TallyError::AlreadyExists {
            kind: "relation",
            name,
        });
    }
    let (table, rows) = match ct.query {
        Some(query) => {
            let plan = query::plan(session, Statement::Query(Box::new(*query))).await?;
            let schema = storable_schema(plan.schema().as_arrow());
            let df = session
                .ctx
                .execute_logical_plan(plan)
                .await
                .map_err(unwrap_datafusion)?;
            let exprs: Vec<_> = df
                .schema()
                .columns()
                .into_iter()
                .zip(schema.fields())
                .map(|(c, f)| cast(col(c), f.data_type().clone()).alias(f.name()))
                .collect();
            let batches = df
                .select(exprs)
                .map_err(unwrap_datafusion)?
                .collect()
                .await
                .map_err(unwrap_datafusion)?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            (
                MemTable::try_new(schema, vec![batches]).map_err(unwrap_datafusion)?,
                Some(rows),
            )
        }
        None => {
            let (schema, _, _) = columns_schema(&ct.columns, &ct.constraints)?;
            (
                MemTable::try_new(Arc::new(schema), vec![vec![]]).map_err(unwrap_datafusion)?,
                None,
            )
        }
    };
    datafusion::catalog::SchemaProvider::register_table(temp.as_ref(), name, Arc::new(table))
        .map_err(unwrap_datafusion)?;
    Ok(Output::Command(match rows {
        Some(n) => Completion::rows("SELECT", n),
        None => Completion::tag("CREATE TABLE"),
    }))
}

/// `CREATE [OR REPLACE] VIEW name [(columns)] AS query`.
pub async fn create_view(session: &mut Session, cv: CreateView) -> Result<Output> {
    if cv.materialized {
        return Err(TallyError::Unsupported(
            "materialized views are not supported: use CREATE TABLE AS or a model".into(),
        ));
    }
    let q = resolve(session, &cv.name)?;
    check_writable_schema(&q.schema)?;
    require_schema(&session.catalog.doc(), &q.schema)?;
    let mut sql = cv.query.to_string();
    if !cv.columns.is_empty() {
        let cols: Vec<String> = cv
            .columns
            .iter()
            .map(|c| format!("\"{}\"", ident(&c.name)))
            .collect();
        sql = format!(
            "SELECT * FROM ({sql}) AS \"{}\"({})",
            q.name,
            cols.join(", ")
        );
    }
    // Plan once now, so a broken view is refused at creation as PostgreSQL does.
    let plan = session
        .ctx
        .state()
        .create_logical_plan(&sql)
        .await
        .map_err(query::map_plan_error)?;
    if references(&plan).contains(&q) && !cv.or_replace {
        return Err(TallyError::InvalidValue {
            code: "42P17",
            message: "view cannot reference itself".into(),
        });
    }
    let or_replace = cv.or_replace;
    let if_not_exists = cv.if_not_exists;
    let default_schema = names::default_schema(session);
    let created = change_catalog(session, |doc| {
        let schema = doc
            .schemas
            .get_mut(&q.schema)
            .ok_or_else(|| TallyError::NotFound {
                kind: "schema",
                name: q.schema.clone(),
            })?;
        match schema.relations.get(&q.name) {
            Some(Relation::View(_)) if or_replace => {}
            Some(_) if if_not_exists => return Ok(false),
            Some(Relation::View(_)) | Some(_) => {
                return Err(TallyError::AlreadyExists {
                    kind: "relation",
                    name: q.name.clone(),
                });
            }
            None => {}
        }
        schema.relations.insert(
            q.name.clone(),
            Relation::View(ViewEntry {
                sql: sql.clone(),
                default_schema: Some(default_schema.clone()),
                comment: None,
                column_comments: Default::default(),
                created_at: Some(chrono::Utc::now().to_rfc3339()),
            }),
        );
        Ok(true)
    })
    .await?;
    let c = Completion::tag("CREATE VIEW");
    Ok(Output::Command(if created {
        c
    } else {
        c.with_notice(format!("relation \"{}\" already exists, skipping", q.name))
    }))
}

/// `ALTER VIEW name AS query`.
pub async fn alter_view(session: &mut Session, name: ObjectName, query: Query) -> Result<Output> {
    let q = resolve(session, &name)?;
    let sql = query.to_string();
    session
        .ctx
        .state()
        .create_logical_plan(&sql)
        .await
        .map_err(query::map_plan_error)?;
    change_catalog(session, |doc| {
        match doc
            .schemas
            .get_mut(&q.schema)
            .and_then(|s| s.relations.get_mut(&q.name))
        {
            Some(Relation::View(v)) => {
                v.sql = sql.clone();
                Ok(())
            }
            Some(_) => Err(wrong_kind(&q.name, "a view")),
            None => Err(TallyError::no_relation(q.name.clone())),
        }
    })
    .await?;
    Ok(Output::Command(Completion::tag("ALTER VIEW")))
}

/// `CREATE EXTERNAL TABLE name [(columns)] STORED AS PARQUET|CSV|JSON LOCATION 'url'`, and
/// `STORED AS POSTGRES|MYSQL` for attached database tables (`collect::pull::attach`).
pub async fn create_external_table(
    session: &mut Session,
    sql: String,
    stmt: DFStatement,
) -> Result<Output> {
    let DFStatement::CreateExternalTable(cet) = &stmt else {
        return Err(TallyError::Internal("not CREATE EXTERNAL TABLE".into()));
    };
    let q = resolve(session, &cet.name)?;
    check_writable_schema(&q.schema)?;
    require_schema(&session.catalog.doc(), &q.schema)?;
    if relation_exists(session, &q) {
        if cet.if_not_exists {
            return Ok(Output::Command(Completion::tag("CREATE EXTERNAL TABLE")));
        }
        return Err(TallyError::AlreadyExists {
            kind: "relation",
            name: q.name,
        });
    }
    let location = match cet.locations.as_slice() {
        [one] => one.clone(),
        _ => {
            return Err(TallyError::Unsupported(
                "CREATE EXTERNAL TABLE takes exactly one LOCATION".into(),
            ));
        }
    };
    // Register the object store for the location, then plan it once so that a missing file,
    // bad format or bad URL is reported now.
    let url = url::Url::parse(&location)
        .or_else(|_| url::Url::from_file_path(&location).map_err(|_| ()))
        .map_err(|_| TallyError::InvalidValue {
            code: "22023",
            message: format!("invalid location '{}'", location),
        })?;
    // Attached databases (STORED AS POSTGRES | MYSQL) connect themselves; files need the
    // object store of their location.
    if url.scheme() != "file" && !crate::collect::pull::attach::is_attached_type(&cet.file_type) {
        let (store, _) = crate::storage::store_for_url(&url, &session.engine.warehouse().options)?;
        session.ctx.runtime_env().register_object_store(&url, store);
    }
    let entry = ExternalEntry {
        sql: sql.clone(),
        location: location.clone(),
    };
    session
        .catalog
        .relation_provider(&Relation::External(entry.clone()))
        .await?;
    change_catalog(session, |doc| {
        let schema = doc
            .schemas
            .get_mut(&q.schema)
            .ok_or_else(|| TallyError::NotFound {
                kind: "schema",
                name: q.schema.clone(),
            })?;
        if schema.relations.contains_key(&q.name) {
            return Err(TallyError::AlreadyExists {
                kind: "relation",
                name: q.name.clone(),
            });
        }
        schema
            .relations
            .insert(q.name.clone(), Relation::External(entry.clone()));
        Ok(())
    })
    .await?;
    Ok(Output::Command(Completion::tag("CREATE EXTERNAL TABLE")))
}

fn wrong_kind(name: &str, expected: &str) -> TallyError {
    TallyError::InvalidValue {
        code: "42809",
        message: format!("\"{name}\" is not {expected}"),
    }
}

/// Relations a plan reads directly.
fn references(plan: &LogicalPlan) -> BTreeSet<QualifiedName> {
    let mut out = BTreeSet::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let r = &scan.table_name;
            if let (Some(s), t) = (r.schema(), r.table()) {
                out.insert(QualifiedName {
                    schema: s.to_string(),
                    name: t.to_string(),
                });
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

impl PartialOrd for QualifiedName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for QualifiedName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.schema, &self.name).cmp(&(&other.schema, &other.name))
    }
}

/// Views that read `target` directly, found by planning each view.
async fn dependent_views(
    session: &Session,
    targets: &BTreeSet<QualifiedName>,
) -> BTreeSet<QualifiedName> {
    let doc = session.catalog.doc();
    let state = session.ctx.state();
    let mut out = BTreeSet::new();
    for (schema_name, schema) in &doc.schemas {
        for (name, rel) in &schema.relations {
            let Relation::View(v) = rel else { continue };
            let me = QualifiedName {
                schema: schema_name.clone(),
                name: name.clone(),
            };
            if targets.contains(&me) {
                continue;
            }
            if let Ok(plan) = state.create_logical_plan(&v.sql).await
                && references(&plan).iter().any(|r| targets.contains(r))
            {
                out.insert(me);
            }
        }
    }
    out
}

/// `DROP TABLE | VIEW | SCHEMA [IF EXISTS] names [CASCADE]`.
pub async fn drop(
    session: &mut Session,
    object_type: ObjectType,
    if_exists: bool,
    names_: Vec<ObjectName>,
    cascade: bool,
) -> Result<Output> {
    match object_type {
        ObjectType::Table | ObjectType::View => {
            drop_relations(session, object_type, if_exists, names_, cascade).await
        }
        ObjectType::Schema => drop_schemas(session, if_exists, names_, cascade).await,
        other => Err(TallyError::Unsupported(format!(
            "DROP {other} is not supported"
        ))),
    }
}

async fn drop_relations(
    session: &mut Session,
    object_type: ObjectType,
    if_exists: bool,
    names_: Vec<ObjectName>,
    cascade: bool,
) -> Result<Output> {
    let is_table = object_type == ObjectType::Table;
    let tag = if is_table { "DROP TABLE" } else { "DROP VIEW" };
    let mut completion = Completion::tag(tag);
    let mut targets = BTreeSet::new();
    for n in &names_ {
        let q = resolve(session, n)?;
        // Temporary tables shadow permanent ones, as in PostgreSQL.
        let temp = session.catalog.temp().clone();
        if is_table
            && names::parts(n).len() == 1
            && datafusion::catalog::SchemaProvider::table_exist(temp.as_ref(), &q.name)
        {
            datafusion::catalog::SchemaProvider::deregister_table(temp.as_ref(), &q.name)
                .map_err(unwrap_datafusion)?;
            continue;
        }
        match session.catalog.doc().relation(&q.schema, &q.name) {
            None if if_exists => {
                completion = completion.with_notice(format!(
                    "{} \"{}\" does not exist, skipping",
                    if is_table { "table" } else { "view" },
                    q.name
                ));
            }
            None => return Err(TallyError::no_relation(q.name)),
            Some(Relation::View(_)) if is_table => return Err(wrong_kind(&q.name, "a table")),
            Some(Relation::Table(_) | Relation::External(_)) if !is_table => {
                return Err(wrong_kind(&q.name, "a view"));
            }
            Some(_) => {
                check_writable_schema(&q.schema)?;
                targets.insert(q);
            }
        }
    }
    if targets.is_empty() {
        return Ok(Output::Command(completion));
    }
    // Views that depend on what goes: refuse without CASCADE, drop with it (transitively).
    let mut all = targets.clone();
    loop {
        let deps = dependent_views(session, &all).await;
        let new: BTreeSet<_> = deps.difference(&all).cloned().collect();
        if new.is_empty() {
            break;
        }
        if !cascade {
            let first = new
                .iter()
                .next()
                .map(|q| q.name.clone())
                .unwrap_or_default();
            let target = targets
                .iter()
                .next()
                .map(|q| q.name.clone())
                .unwrap_or_default();
            return Err(TallyError::InvalidValue {
                code: "2BP01",
                message: format!(
                    "cannot drop {} {target} because other objects depend on it (view {first} depends on it); use DROP ... CASCADE",
                    if is_table { "table" } else { "view" }
                ),
            });
        }
        all.extend(new);
    }
    let removed = change_catalog(session, |doc| {
        let mut locations = Vec::new();
        for q in &all {
            if let Some(s) = doc.schemas.get_mut(&q.schema)
                && let Some(Relation::Table(t)) = s.relations.remove(&q.name)
            {
                locations.push(t.location);
            }
        }
        Ok(locations)
    })
    .await?;
    if all.len() > targets.len() {
        completion = completion.with_notice(format!(
            "drop cascades to {} other objects",
            all.len() - targets.len()
        ));
    }
    dispose_locations(session, removed).await;
    Ok(Output::Command(completion))
}

/// Deletes dropped tables' data now, or at COMMIT inside a transaction block.
async fn dispose_locations(session: &mut Session, locations: Vec<String>) {
    if session.catalog.in_transaction() {
        session.txn_effects.dropped.extend(locations);
        return;
    }
    for loc in locations {
        session.catalog.tables().forget(&loc);
        if let Err(e) = session.engine.warehouse().delete_prefix(&loc).await {
            tracing::warn!(location = %loc, error = %e, "could not delete dropped table data");
        }
    }
}

async fn drop_schemas(
    session: &mut Session,
    if_exists: bool,
    names_: Vec<ObjectName>,
    cascade: bool,
) -> Result<Output> {
    let mut completion = Completion::tag("DROP SCHEMA");
    let mut to_drop = Vec::new();
    for n in &names_ {
        let name = names::parts(n).pop().unwrap_or_default();
        check_writable_schema(&name)?;
        match session.catalog.doc().schemas.get(&name) {
            None if if_exists => {
                completion =
                    completion.with_notice(format!("schema \"{name}\" does not exist, skipping"))
            }
            None => {
                return Err(TallyError::NotFound {
                    kind: "schema",
                    name,
                });
            }
            Some(s) if !s.relations.is_empty() && !cascade => {
                return Err(TallyError::InvalidValue {
                    code: "2BP01",
                    message: format!(
                        "cannot drop schema {name} because other objects depend on it; use DROP ... CASCADE"
                    ),
                });
            }
            Some(_) => to_drop.push(name),
        }
    }
    let removed = change_catalog(session, |doc| {
        let mut locations = Vec::new();
        for name in &to_drop {
            if let Some(s) = doc.schemas.remove(name) {
                locations.extend(s.relations.into_values().filter_map(|r| match r {
                    Relation::Table(t) => Some(t.location),
                    _ => None,
                }));
            }
        }
        Ok(locations)
    })
    .await?;
    dispose_locations(session, removed).await;
    Ok(Output::Command(completion))
}

/// `ALTER TABLE name RENAME TO | RENAME COLUMN | ADD COLUMN | DROP COLUMN`.
pub async fn alter_table(
    session: &mut Session,
    at: datafusion::sql::sqlparser::ast::AlterTable,
) -> Result<Output> {
    let q = resolve(session, &at.name)?;
    let doc = session.catalog.doc();
    let Some(rel) = doc.relation(&q.schema, &q.name).cloned() else {
        if at.if_exists {
            return Ok(Output::Command(Completion::tag("ALTER TABLE").with_notice(
                format!("relation \"{}\" does not exist, skipping", q.name),
            )));
        }
        return Err(TallyError::no_relation(q.name));
    };
    check_writable_schema(&q.schema)?;
    for op in at.operations {
        match op {
            AlterTableOperation::RenameTable { table_name } => {
                let new_name = match table_name {
                    datafusion::sql::sqlparser::ast::RenameTableNameKind::To(n)
                    | datafusion::sql::sqlparser::ast::RenameTableNameKind::As(n) => {
                        names::parts(&n).pop().unwrap_or_default()
                    }
                };
                change_catalog(session, |doc| {
                    let s = doc
                        .schemas
                        .get_mut(&q.schema)
                        .ok_or_else(|| TallyError::no_relation(q.name.clone()))?;
                    if s.relations.contains_key(&new_name) {
                        return Err(TallyError::AlreadyExists {
                            kind: "relation",
                            name: new_name.clone(),
                        });
                    }
                    let r = s
                        .relations
                        .remove(&q.name)
                        .ok_or_else(|| TallyError::no_relation(q.name.clone()))?;
                    s.relations.insert(new_name.clone(), r);
                    Ok(())
                })
                .await?;
            }
            AlterTableOperation::AddColumn {
                if_not_exists,
                column_def,
                ..
            } => {
                let Relation::Table(t) = &rel else {
                    return Err(wrong_kind(&q.name, "a table"));
                };
                let name = ident(&column_def.name);
                let table = session.catalog.tables().latest(&t.location).await?;
                let exists = table
                    .snapshot()?
                    .schema()
                    .fields()
                    .any(|f| f.name() == &name);
                if exists {
                    if if_not_exists {
                        continue;
                    }
                    return Err(TallyError::AlreadyExists {
                        kind: "column",
                        name,
                    });
                }
                let (dt, pg) = arrow_type(&column_def.data_type)?;
                let field: deltalake::kernel::StructField = (&Field::new(&name, dt, true))
                    .try_into_kernel()
                    .map_err(|e| TallyError::Unsupported(e.to_string()))?;
                table.add_columns().with_fields([field]).await?;
                if let Some(pg) = pg {
                    let loc = t.location.clone();
                    change_catalog(session, |doc| {
                        if let Some(Relation::Table(t)) = doc
                            .schemas
                            .get_mut(&q.schema)
                            .and_then(|s| s.relations.get_mut(&q.name))
                            && t.location == loc
                        {
                            t.pg_types.insert(name.clone(), pg.clone());
                        }
                        Ok(())
                    })
                    .await?;
                }
            }
            AlterTableOperation::RenameColumn {
                old_column_name,
                new_column_name,
            } => {
                let Relation::Table(t) = &rel else {
                    return Err(wrong_kind(&q.name, "a table"));
                };
                let (old, new) = (ident(&old_column_name), ident(&new_column_name));
                rewrite_columns(session, &t.location, |cols| {
                    if cols.contains(&new) {
                        return Err(TallyError::AlreadyExists {
                            kind: "column",
                            name: new.clone(),
                        });
                    }
                    let i = cols.iter().position(|c| *c == old).ok_or_else(|| {
                        TallyError::NotFound {
                            kind: "column",
                            name: old.clone(),
                        }
                    })?;
                    Ok(cols
                        .iter()
                        .enumerate()
                        .map(|(j, c)| (c.clone(), if j == i { new.clone() } else { c.clone() }))
                        .collect())
                })
                .await?;
            }
            AlterTableOperation::DropColumn {
                column_names,
                if_exists,
                ..
            } => {
                let Relation::Table(t) = &rel else {
                    return Err(wrong_kind(&q.name, "a table"));
                };
                let drop: Vec<String> = column_names.iter().map(ident).collect();
                rewrite_columns(session, &t.location, |cols| {
                    for d in &drop {
                        if !cols.contains(d) && !if_exists {
                            return Err(TallyError::NotFound {
                                kind: "column",
                                name: d.clone(),
                            });
                        }
                    }
                    let keep: Vec<(String, String)> = cols
                        .iter()
                        .filter(|c| !drop.contains(c))
                        .map(|c| (c.clone(), c.clone()))
                        .collect();
                    if keep.is_empty() {
                        return Err(TallyError::Unsupported(
                            "cannot drop every column of a table".into(),
                        ));
                    }
                    Ok(keep)
                })
                .await?;
            }
            other => {
                return Err(TallyError::Unsupported(format!(
                    "ALTER TABLE {other} is not supported"
                )));
            }
        }
    }
    Ok(Output::Command(Completion::tag("ALTER TABLE")))
}

/// Rewrites a Delta table with renamed or dropped columns in one overwrite commit (Delta
/// without column mapping cannot rename in place). `plan` maps current column names to
/// (source, new name) pairs.
async fn rewrite_columns(
    session: &Session,
    location: &str,
    plan: impl FnOnce(&[String]) -> Result<Vec<(String, String)>>,
) -> Result<()> {
    let table = session.catalog.tables().latest(location).await?;
    let provider = Arc::new(DeltaTableProvider::try_new(table.clone()).await?);
    let cols: Vec<String> = provider
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mapping = plan(&cols)?;
    let df = session
        .ctx
        .read_table(provider)
        .map_err(unwrap_datafusion)?;
    let df = df
        .select(
            mapping
                .iter()
                .map(|(src, dst)| col(format!("\"{src}\"")).alias(dst))
                .collect::<Vec<_>>(),
        )
        .map_err(unwrap_datafusion)?;
    let logical = df.logical_plan().clone();
    table
        .write(Vec::new())
        .with_input_plan(logical)
        .with_save_mode(deltalake::protocol::SaveMode::Overwrite)
        .with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite)
        .with_session_state(Arc::new(session.ctx.state()))
        .await?;
    Ok(())
}

/// `COMMENT ON TABLE | VIEW | COLUMN ... IS '...'`.
pub async fn comment(
    session: &mut Session,
    object_type: CommentObject,
    name: ObjectName,
    comment: Option<String>,
) -> Result<Output> {
    // PostgreSQL stores an empty comment as none.
    let comment = comment.filter(|c| !c.is_empty());
    match object_type {
        CommentObject::Table | CommentObject::View => {
            let q = resolve(session, &name)?;
            change_catalog(session, |doc| {
                match doc
                    .schemas
                    .get_mut(&q.schema)
                    .and_then(|s| s.relations.get_mut(&q.name))
                {
                    Some(Relation::Table(t)) => t.comment = comment.clone(),
                    Some(Relation::View(v)) => v.comment = comment.clone(),
                    Some(Relation::External(_)) => {}
                    None => return Err(TallyError::no_relation(q.name.clone())),
                }
                Ok(())
            })
            .await?;
        }
        CommentObject::Column => {
            let mut relation = name.clone();
            let column = match relation.0.pop().and_then(|p| p.as_ident().map(ident)) {
                Some(c) if !relation.0.is_empty() => c,
                _ => {
                    return Err(TallyError::syntax(format!(
                        "column name must be qualified: {name}"
                    )));
                }
            };
            let q = resolve(session, &relation)?;
            let provider = session
                .catalog
                .doc()
                .relation(&q.schema, &q.name)
                .cloned()
                .ok_or_else(|| TallyError::no_relation(q.name.clone()))?;
            let provider = session.catalog.relation_provider(&provider).await?;
            if provider.schema().field_with_name(&column).is_err() {
                return Err(TallyError::NotFound {
                    kind: "column",
                    name: format!("{column}\" of relation \"{}", q.name),
                });
            }
            change_catalog(session, |doc| {
                let comments = match doc
                    .schemas
                    .get_mut(&q.schema)
                    .and_then(|s| s.relations.get_mut(&q.name))
                {
                    Some(Relation::Table(t)) => &mut t.column_comments,
                    Some(Relation::View(v)) => &mut v.column_comments,
                    Some(Relation::External(_)) => return Ok(()),
                    None => return Err(TallyError::no_relation(q.name.clone())),
                };
                match &comment {
                    Some(c) => comments.insert(column.clone(), c.clone()),
                    None => comments.remove(&column),
                };
                Ok(())
            })
            .await?;
        }
        CommentObject::Schema => {}
        other => {
            return Err(TallyError::Unsupported(format!(
                "COMMENT ON {other} is not supported"
            )));
        }
    }
    Ok(Output::Command(Completion::tag("COMMENT")))
}
