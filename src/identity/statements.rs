//! `CREATE IDENTITY GRAPH`, `REFRESH IDENTITY GRAPH` and `DROP IDENTITY GRAPH`: parsing and
//! execution. See the module above for the model.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use datafusion::arrow::array::{
    Array, ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::execution::TaskContext;
use datafusion::functions_aggregate::expr_fn::max;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{SendableRecordBatchStream, collect};
use datafusion::prelude::{DataFrame, ident, lit};
use datafusion::sql::sqlparser::ast::{Ident, ObjectName, ObjectType};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use futures::StreamExt;
use tally_udfs::identity::graph::EDGE_COLUMNS;
use tally_udfs::identity::{Assignments, IdentityGraph, StitchOptions};

use super::{BaseState, CachedGraph, map_version};
use crate::catalog::{IdentityGraphEntry, Relation, TableEntry, ViewEntry};
use crate::engine::Session;
use crate::error::{Result, TallyError, unwrap_datafusion};
use crate::statements::names::{QualifiedName, check_writable_schema, default_schema};
use crate::statements::{Completion, Output, change_catalog, ddl, query};
use crate::storage::delta::{DeltaTableProvider, affected_rows, create_table as create_delta};

/// Rows per batch when the map streams out of the graph into Delta.
const MAP_BATCH_ROWS: usize = 65_536;

/// Where a graph reads its edges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgesSpec {
    /// A table or view, as written (name parts).
    Table(Vec<String>),
    /// A query's text.
    Query(String),
}

/// A parsed identity graph statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphStatement {
    /// `CREATE IDENTITY GRAPH [IF NOT EXISTS] name FROM edges [WITH (...)]`.
    Create {
        /// Name parts (`[schema.]name`).
        name: Vec<String>,
        /// The edges.
        edges: EdgesSpec,
        /// `options = '<json>'`.
        options: Option<String>,
        /// `incremental_column = '<column>'`.
        incremental_column: Option<String>,
        /// IF NOT EXISTS given.
        if_not_exists: bool,
    },
    /// `REFRESH IDENTITY GRAPH name [FULL]`.
    Refresh {
        /// Name parts.
        name: Vec<String>,
        /// FULL given: recompute from every edge.
        full: bool,
    },
    /// `DROP IDENTITY GRAPH [IF EXISTS] name`.
    Drop {
        /// Name parts.
        name: Vec<String>,
        /// IF EXISTS given.
        if_exists: bool,
    },
}

fn syntax(message: impl Into<String>) -> TallyError {
    TallyError::syntax(format!("syntax error: {}", message.into()))
}

const USAGE: &str = "CREATE IDENTITY GRAPH [IF NOT EXISTS] name FROM table | (query) \
                     [WITH (options = '<json>', incremental_column = '<column>')]";

/// Parses a statement whose first words are `CREATE|REFRESH|DROP IDENTITY GRAPH`.
pub fn parse(text: &str) -> Result<GraphStatement> {
    let all = Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize()
        .map_err(|e| syntax(e.to_string()))?;
    // Positions (in `all`) of the meaningful tokens; whitespace is kept in `all` so a
    // parenthesised query can be cut out with its original spacing.
    let at: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
        .map(|(i, _)| i)
        .collect();
    let tok = |i: usize| at.get(i).map(|&j| &all[j]);
    let kw = |i: usize, k: &str| matches!(tok(i), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k));
    let ident = |i: usize| match tok(i) {
        Some(Token::Word(w)) if w.quote_style.is_some() => Some(w.value.clone()),
        Some(Token::Word(w)) => Some(w.value.to_ascii_lowercase()),
        _ => None,
    };
    // `name[.name[.name]]` starting at `i`: the parts and the next position.
    let object_name = |mut i: usize| -> Option<(Vec<String>, usize)> {
        let mut parts = vec![ident(i)?];
        i += 1;
        while matches!(tok(i), Some(Token::Period)) {
            parts.push(ident(i + 1)?);
            i += 2;
        }
        (parts.len() <= 3).then_some((parts, i))
    };
    let verb = ident(0).unwrap_or_default();
    let mut i = 3;
    match verb.as_str() {
        "create" => {
            let mut if_not_exists = false;
            if kw(i, "if") && kw(i + 1, "not") && kw(i + 2, "exists") {
                if_not_exists = true;
                i += 3;
            }
            let (name, next) = object_name(i).ok_or_else(|| syntax(USAGE))?;
            i = next;
            if !kw(i, "from") {
                return Err(syntax(format!(
                    "expected FROM after the graph name: {USAGE}"
                )));
            }
            i += 1;
            let edges = if matches!(tok(i), Some(Token::LParen)) {
                let mut depth = 0usize;
                let mut end = None;
                for (k, &j) in at.iter().enumerate().skip(i) {
                    match all[j] {
                        Token::LParen => depth += 1,
                        Token::RParen => {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(k);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let end =
                    end.ok_or_else(|| syntax("unbalanced parentheses around the edges query"))?;
                let sql: String = all[at[i] + 1..at[end]]
                    .iter()
                    .map(|t| t.to_string())
                    .collect();
                i = end + 1;
                EdgesSpec::Query(sql.trim().to_string())
            } else {
                let (parts, next) = object_name(i)
                    .ok_or_else(|| syntax(format!("FROM needs a table or a (query): {USAGE}")))?;
                i = next;
                EdgesSpec::Table(parts)
            };
            let mut options = None;
            let mut incremental_column = None;
            if kw(i, "with") {
                if !matches!(tok(i + 1), Some(Token::LParen)) {
                    return Err(syntax(format!("expected ( after WITH: {USAGE}")));
                }
                i += 2;
                loop {
                    let key = ident(i)
                        .ok_or_else(|| syntax(format!("expected an option name: {USAGE}")))?;
                    if !matches!(tok(i + 1), Some(Token::Eq)) {
                        return Err(syntax(format!("expected = after {key}")));
                    }
                    let value = match tok(i + 2) {
                        Some(Token::SingleQuotedString(s)) => s.clone(),
                        Some(Token::Word(w)) => w.value.clone(),
                        _ => return Err(syntax(format!("{key} needs a quoted value"))),
                    };
                    match key.as_str() {
                        "options" => options = Some(value),
                        "incremental_column" => incremental_column = Some(value),
                        other => {
                            return Err(syntax(format!(
                                "unknown option \"{other}\"; identity graphs take options and incremental_column"
                            )));
                        }
                    }
                    i += 3;
                    match tok(i) {
                        Some(Token::Comma) => i += 1,
                        Some(Token::RParen) => {
                            i += 1;
                            break;
                        }
                        _ => return Err(syntax("expected , or ) in the WITH list")),
                    }
                }
            }
            if let Some(t) = tok(i) {
                return Err(syntax(format!("unexpected {t}: {USAGE}")));
            }
            Ok(GraphStatement::Create {
                name,
                edges,
                options,
                incremental_column,
                if_not_exists,
            })
        }
        "refresh" => {
            let (name, next) =
                object_name(i).ok_or_else(|| syntax("REFRESH IDENTITY GRAPH name [FULL]"))?;
            let full = kw(next, "full");
            let end = if full { next + 1 } else { next };
            if tok(end).is_some() {
                return Err(syntax("REFRESH IDENTITY GRAPH name [FULL]"));
            }
            Ok(GraphStatement::Refresh { name, full })
        }
        "drop" => {
            let mut if_exists = false;
            if kw(i, "if") && kw(i + 1, "exists") {
                if_exists = true;
                i += 2;
            }
            let (name, next) =
                object_name(i).ok_or_else(|| syntax("DROP IDENTITY GRAPH [IF EXISTS] name"))?;
            if tok(next).is_some() {
                return Err(syntax("DROP IDENTITY GRAPH [IF EXISTS] name"));
            }
            Ok(GraphStatement::Drop { name, if_exists })
        }
        _ => Err(syntax("expected CREATE, REFRESH or DROP IDENTITY GRAPH")),
    }
}

fn qualify(session: &Session, parts: &[String]) -> Result<QualifiedName> {
    match parts {
        [n] => Ok(QualifiedName {
            schema: default_schema(session),
            name: n.clone(),
        }),
        [s, n] | [_, s, n] => Ok(QualifiedName {
            schema: s.clone(),
            name: n.clone(),
        }),
        _ => Err(syntax("improper identity graph name")),
    }
}

fn quoted(q: &QualifiedName) -> String {
    format!(
        "\"{}\".\"{}\"",
        q.schema.replace('"', "\"\""),
        q.name.replace('"', "\"\"")
    )
}

fn map_name(q: &QualifiedName) -> QualifiedName {
    QualifiedName {
        schema: q.schema.clone(),
        name: format!("{}_map", q.name),
    }
}

fn base_name(q: &QualifiedName) -> QualifiedName {
    QualifiedName {
        schema: q.schema.clone(),
        name: format!("{}_map_base", q.name),
    }
}

fn changes_name(q: &QualifiedName) -> QualifiedName {
    QualifiedName {
        schema: q.schema.clone(),
        name: format!("{}_map_changes", q.name),
    }
}

/// The map view: base rows not overridden by a change row, plus the change rows that are
/// not tombstones. DataFusion plans the NOT EXISTS as an anti hash join built on the
/// (small) change table.
fn map_view_sql(q: &QualifiedName) -> String {
    let (base, changes) = (quoted(&base_name(q)), quoted(&changes_name(q)));
    format!(
        "SELECT b.identifier_type, b.identifier_value, b.profile_id, b.profile_size, b.first_seen \
         FROM {base} AS b WHERE NOT EXISTS (SELECT 1 FROM {changes} AS c \
         WHERE c.identifier_type = b.identifier_type AND c.identifier_value = b.identifier_value) \
         UNION ALL SELECT identifier_type, identifier_value, profile_id, profile_size, first_seen \
         FROM {changes} WHERE profile_id IS NOT NULL"
    )
}

fn merges_name(q: &QualifiedName) -> QualifiedName {
    QualifiedName {
        schema: q.schema.clone(),
        name: format!("{}_merges", q.name),
    }
}

fn not_found(q: &QualifiedName) -> TallyError {
    TallyError::NotFound {
        kind: "identity graph",
        name: q.to_string(),
    }
}

fn no_transaction(session: &Session, what: &str) -> Result<()> {
    if session.catalog.in_transaction() {
        return Err(TallyError::Transaction {
            code: "25001",
            message: format!("{what} cannot run inside a transaction block"),
        });
    }
    Ok(())
}

/// Runs an identity graph statement.
pub async fn execute(session: &mut Session, stmt: GraphStatement) -> Result<Output> {
    match stmt {
        GraphStatement::Create {
            name,
            edges,
            options,
            incremental_column,
            if_not_exists,
        } => {
            no_transaction(session, "CREATE IDENTITY GRAPH")?;
            let q = qualify(session, &name)?;
            create(
                session,
                q,
                edges,
                options,
                incremental_column,
                if_not_exists,
            )
            .await
        }
        GraphStatement::Refresh { name, full } => {
            no_transaction(session, "REFRESH IDENTITY GRAPH")?;
            let q = qualify(session, &name)?;
            let report = refresh(session, &q, full).await?;
            Ok(Output::Command(
                Completion::tag("REFRESH IDENTITY GRAPH").with_notice(report.to_string()),
            ))
        }
        GraphStatement::Drop { name, if_exists } => {
            no_transaction(session, "DROP IDENTITY GRAPH")?;
            let q = qualify(session, &name)?;
            drop_graph(session, q, if_exists).await
        }
    }
}

async fn create(
    session: &mut Session,
    q: QualifiedName,
    edges: EdgesSpec,
    options: Option<String>,
    incremental_column: Option<String>,
    if_not_exists: bool,
) -> Result<Output> {
    check_writable_schema(&q.schema)?;
    let key = q.to_string();
    let doc = session.catalog.doc();
    if !doc.schemas.contains_key(&q.schema) {
        return Err(TallyError::NotFound {
            kind: "schema",
            name: q.schema.clone(),
        });
    }
    if doc.identity_graphs.contains_key(&key) {
        if if_not_exists {
            return Ok(Output::Command(
                Completion::tag("CREATE IDENTITY GRAPH")
                    .with_notice(format!("identity graph \"{key}\" already exists, skipping")),
            ));
        }
        return Err(TallyError::AlreadyExists {
            kind: "identity graph",
            name: key,
        });
    }
    for t in [
        map_name(&q),
        base_name(&q),
        changes_name(&q),
        merges_name(&q),
    ] {
        if doc.relation(&t.schema, &t.name).is_some() {
            return Err(TallyError::AlreadyExists {
                kind: "relation",
                name: format!("{t} (the identity graph's table)"),
            });
        }
    }
    if let Some(o) = &options {
        StitchOptions::from_json(o).map_err(|e| TallyError::InvalidValue {
            code: "22023",
            message: format!("invalid identity graph options: {e}"),
        })?;
    }
    let edges_sql = match &edges {
        EdgesSpec::Table(parts) => {
            let t = qualify(session, parts)?;
            format!("SELECT * FROM {}", quoted(&t))
        }
        EdgesSpec::Query(sql) => sql.clone(),
    };
    let entry = IdentityGraphEntry {
        schema: q.schema.clone(),
        name: q.name.clone(),
        edges_sql,
        default_schema: default_schema(session),
        options,
        incremental_column,
        watermark: None,
        created_at: Utc::now().to_rfc3339(),
        refreshed_at: None,
        refreshes: 0,
        identifiers: 0,
        profiles: 0,
        last_edges: 0,
        last_incremental: false,
        last_refresh_ms: 0,
        map_version: None,
    };
    // Check the edges plan and columns before anything is stored.
    let df = edges_frame(session, &entry).await?;
    check_edges(&df, &entry)?;

    let tables = [
        (base_name(&q), IdentityGraph::assignment_schema()),
        (changes_name(&q), IdentityGraph::change_schema()),
        (merges_name(&q), merges_schema()),
    ];
    for (name, schema) in &tables {
        if let Err(e) = create_graph_table(session, name, schema).await {
            drop_tables(session, &q).await;
            return Err(e);
        }
    }
    let view = map_name(&q);
    let view_entry = ViewEntry {
        sql: map_view_sql(&q),
        default_schema: Some(q.schema.clone()),
        comment: None,
        column_comments: Default::default(),
        created_at: None,
    };
    let stored = change_catalog(session, |doc| {
        if doc.identity_graphs.contains_key(&key) {
            return Err(TallyError::AlreadyExists {
                kind: "identity graph",
                name: key.clone(),
            });
        }
        let schema = doc
            .schemas
            .get_mut(&view.schema)
            .ok_or_else(|| TallyError::NotFound {
                kind: "schema",
                name: view.schema.clone(),
            })?;
        if schema.relations.contains_key(&view.name) {
            return Err(TallyError::AlreadyExists {
                kind: "relation",
                name: format!("{view} (the identity graph's map)"),
            });
        }
        schema
            .relations
            .insert(view.name.clone(), Relation::View(view_entry.clone()));
        doc.identity_graphs.insert(key.clone(), entry.clone());
        Ok(())
    })
    .await;
    if let Err(e) = stored {
        drop_tables(session, &q).await;
        return Err(e);
    }
    match refresh(session, &q, true).await {
        Ok(report) => Ok(Output::Command(
            Completion::tag("CREATE IDENTITY GRAPH").with_notice(report.to_string()),
        )),
        Err(e) => {
            // A graph that never resolved is not worth keeping: undo the creation.
            let _ = change_catalog(session, |doc| {
                doc.identity_graphs.remove(&key);
                Ok(())
            })
            .await;
            drop_tables(session, &q).await;
            session.engine.identity_graphs.forget(&key);
            Err(e)
        }
    }
}

async fn drop_graph(session: &mut Session, q: QualifiedName, if_exists: bool) -> Result<Output> {
    let key = q.to_string();
    let removed = change_catalog(session, |doc| {
        Ok(doc.identity_graphs.remove(&key).is_some())
    })
    .await?;
    if !removed {
        if if_exists {
            return Ok(Output::Command(
                Completion::tag("DROP IDENTITY GRAPH")
                    .with_notice(format!("identity graph \"{key}\" does not exist, skipping")),
            ));
        }
        return Err(not_found(&q));
    }
    session.engine.identity_graphs.forget(&key);
    drop_tables(session, &q).await;
    Ok(Output::Command(Completion::tag("DROP IDENTITY GRAPH")))
}

/// Drops the graph's map view and tables, best effort (used on DROP and to undo a failed
/// CREATE).
async fn drop_tables(session: &mut Session, q: &QualifiedName) {
    let object = |t: &QualifiedName| {
        ObjectName::from(vec![
            Ident::with_quote('"', t.schema.clone()),
            Ident::with_quote('"', t.name.clone()),
        ])
    };
    let view_exists = matches!(
        session.catalog.doc().relation(&q.schema, &map_name(q).name),
        Some(Relation::View(_))
    );
    if view_exists
        && let Err(e) = ddl::drop(
            session,
            ObjectType::View,
            true,
            vec![object(&map_name(q))],
            true,
        )
        .await
    {
        tracing::warn!(graph = %q, error = %e, "could not drop the identity graph's map view");
    }
    let names: Vec<ObjectName> = [base_name(q), changes_name(q), merges_name(q)]
        .iter()
        .map(object)
        .collect();
    if let Err(e) = ddl::drop(session, ObjectType::Table, true, names, true).await {
        tracing::warn!(graph = %q, error = %e, "could not drop the identity graph's tables");
    }
}

fn merges_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "merged_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("refresh", DataType::Int64, false),
        Field::new("old_profile_id", DataType::Utf8, false),
        Field::new("new_profile_id", DataType::Utf8, false),
    ]))
}

/// Creates an empty Delta table for a graph and registers it in the catalog.
async fn create_graph_table(
    session: &mut Session,
    q: &QualifiedName,
    schema: &SchemaRef,
) -> Result<()> {
    let location = ddl::new_location(session, q).await?;
    let wh = session.engine.warehouse().clone();
    create_delta(&wh.url_of(&location)?, &wh.options, &q.name, schema).await?;
    ddl::register_new_table(
        session,
        q,
        TableEntry {
            location,
            pg_types: Default::default(),
            primary_key: vec![],
            comment: Some(format!(
                "identity graph {}: written by REFRESH IDENTITY GRAPH",
                q.name
            )),
            column_comments: Default::default(),
        },
    )
    .await
}

fn table_location(session: &Session, q: &QualifiedName) -> Result<String> {
    match session
        .catalog
        .store()
        .current()
        .relation(&q.schema, &q.name)
    {
        Some(Relation::Table(t)) => Ok(t.location.clone()),
        _ => Err(TallyError::no_relation(format!(
            "{q} (the identity graph's table was dropped; DROP and CREATE the graph again)"
        ))),
    }
}

/// Plans the graph's edges query with the default schema it was created under.
async fn edges_frame(session: &Session, entry: &IdentityGraphEntry) -> Result<DataFrame> {
    let stmt = Parser::parse_sql(&PostgreSqlDialect {}, &entry.edges_sql)
        .map_err(|e| syntax(format!("in the identity graph's edges query: {e}")))?
        .into_iter()
        .next()
        .ok_or_else(|| syntax("the identity graph's edges query is empty"))?;
    let state = session.ctx.state_ref();
    let previous = {
        let mut s = state.write();
        let opts = s.config_mut().options_mut();
        std::mem::replace(
            &mut opts.catalog.default_schema,
            entry.default_schema.clone(),
        )
    };
    let planned = query::plan(session, stmt).await;
    state
        .write()
        .config_mut()
        .options_mut()
        .catalog
        .default_schema = previous;
    let plan = planned?;
    session
        .ctx
        .execute_logical_plan(plan)
        .await
        .map_err(unwrap_datafusion)
}

fn check_edges(df: &DataFrame, entry: &IdentityGraphEntry) -> Result<()> {
    let schema = df.schema();
    let mut wanted: Vec<&str> = EDGE_COLUMNS.to_vec();
    if let Some(c) = &entry.incremental_column {
        wanted.push(c);
    }
    for c in wanted {
        if schema.field_with_unqualified_name(c).is_err() {
            let have: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            return Err(TallyError::InvalidValue {
                code: "42703",
                message: format!(
                    "the edges of identity graph {} have no column \"{c}\" (they have: {}); edges need {}",
                    entry.name,
                    have.join(", "),
                    EDGE_COLUMNS.join(", ")
                ),
            });
        }
    }
    if let Some(c) = &entry.incremental_column {
        let t = schema
            .field_with_unqualified_name(c)
            .map(|f| f.data_type().clone())
            .map_err(TallyError::DataFusion)?;
        if !watermark_type(&t) {
            return Err(TallyError::InvalidValue {
                code: "42804",
                message: format!(
                    "incremental_column \"{c}\" is {t}; it must be a timestamp, date or integer column"
                ),
            });
        }
    }
    Ok(())
}

fn watermark_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
    ) || t.is_integer()
}

/// A watermark value as `i64`: microseconds since the epoch for times, the value for integers.
fn watermark_of(v: &ScalarValue) -> Result<Option<i64>> {
    if v.is_null() {
        return Ok(None);
    }
    let out = if v.data_type().is_integer() {
        v.cast_to(&DataType::Int64)?
    } else {
        v.cast_to(&DataType::Timestamp(TimeUnit::Microsecond, None))?
    };
    Ok(match out {
        ScalarValue::Int64(x) | ScalarValue::TimestampMicrosecond(x, _) => x,
        _ => None,
    })
}

fn watermark_literal(wm: i64, t: &DataType) -> Result<ScalarValue> {
    let v = if t.is_integer() {
        ScalarValue::Int64(Some(wm))
    } else {
        ScalarValue::TimestampMicrosecond(Some(wm), None)
    };
    Ok(v.cast_to(t)?)
}

/// What a refresh did, shown as the statement's notice.
#[derive(Debug, Default)]
struct RefreshReport {
    graph: String,
    incremental: bool,
    edges: u64,
    identifiers: u64,
    profiles: u64,
    merges: u64,
    millis: u64,
}

impl std::fmt::Display for RefreshReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "identity graph {}: {} refresh read {} edges; {} identifiers in {} profiles; {} profile ids merged or renamed; {} ms",
            self.graph,
            if self.incremental {
                "incremental"
            } else {
                "full"
            },
            self.edges,
            self.identifiers,
            self.profiles,
            self.merges,
            self.millis
        )
    }
}

/// Refreshes a graph: incrementally when it has an incremental column, a watermark and a
/// stored map (and `full` is not asked), else from every edge. Holds the graph's lock for
/// the whole refresh, so refreshes of one graph never overlap.
async fn refresh(session: &mut Session, q: &QualifiedName, full: bool) -> Result<RefreshReport> {
    let key = q.to_string();
    let slot = session.engine.identity_graphs.slot(&key);
    let mut cached = slot.lock_owned().await;
    // Read the entry under the lock: an earlier refresh may have just moved the watermark.
    let entry = session
        .catalog
        .store()
        .refresh()
        .await?
        .identity_graphs
        .get(&key)
        .cloned()
        .ok_or_else(|| not_found(q))?;
    // On failure the slot stays empty: the in-memory graph may hold edges the stored map
    // lacks, so the next refresh starts again from the map.
    let taken = cached.take();
    let (report, graph) = refresh_locked(session, q, &entry, full, taken).await?;
    *cached = Some(graph);
    Ok(report)
}

async fn refresh_locked(
    session: &mut Session,
    q: &QualifiedName,
    entry: &IdentityGraphEntry,
    full: bool,
    cached: Option<CachedGraph>,
) -> Result<(RefreshReport, CachedGraph)> {
    let started = Instant::now();
    let options = match &entry.options {
        Some(o) => StitchOptions::from_json(o).map_err(|e| TallyError::InvalidValue {
            code: "22023",
            message: format!("invalid identity graph options: {e}"),
        })?,
        None => StitchOptions::default(),
    };
    let merges_location = table_location(session, &merges_name(q))?;
    let edges = edges_frame(session, entry).await?;
    check_edges(&edges, entry)?;
    let incremental = !full
        && entry.incremental_column.is_some()
        && entry.watermark.is_some()
        && entry.map_version.is_some();

    // The watermark this refresh goes up to, read before the edges so that edges arriving
    // meanwhile wait for the next refresh instead of being skipped.
    let (mut edges, new_watermark) = match &entry.incremental_column {
        Some(c) => {
            let t = edges
                .schema()
                .field_with_unqualified_name(c)
                .map(|f| f.data_type().clone())
                .map_err(TallyError::DataFusion)?;
            let mut frame = edges.clone();
            if let (true, Some(old)) = (incremental, entry.watermark) {
                frame = frame
                    .filter(ident(c).gt(lit(watermark_literal(old, &t)?)))
                    .map_err(unwrap_datafusion)?;
            }
            let top = frame
                .clone()
                .aggregate(vec![], vec![max(ident(c)).alias("wm")])
                .map_err(unwrap_datafusion)?
                .collect()
                .await
                .map_err(unwrap_datafusion)?;
            let wm = match top.first() {
                Some(b) if b.num_rows() > 0 => {
                    watermark_of(&ScalarValue::try_from_array(b.column(0), 0)?)?
                }
                _ => None,
            };
            let frame = match wm {
                Some(w) => frame
                    .filter(ident(c).lt_eq(lit(watermark_literal(w, &t)?)))
                    .map_err(unwrap_datafusion)?,
                // Nothing new (or no edges at all with a value): read nothing more.
                None if incremental => frame.limit(0, Some(0)).map_err(unwrap_datafusion)?,
                None => frame,
            };
            (frame, wm.or(entry.watermark))
        }
        None => (edges, None),
    };
    let ts_column = tally_udfs::identity::graph::TIMESTAMP_COLUMNS
        .iter()
        .find(|c| edges.schema().field_with_unqualified_name(c).is_ok());
    let wanted: Vec<_> = EDGE_COLUMNS
        .iter()
        .chain(ts_column)
        .map(|c| ident(*c))
        .collect();
    edges = edges.select(wanted).map_err(unwrap_datafusion)?;

    let mut merges: BTreeSet<(String, String)> = BTreeSet::new();
    let mut edge_count = 0u64;
    let mut touched: Vec<u32> = Vec::new();
    let (graph, base) = if incremental {
        let (mut graph, base) = match cached {
            Some(c) if Some(c.map_version) == entry.map_version => (c.graph, c.base),
            _ => (seed_from_map(session, q, options).await?, None),
        };
        let mut before: HashMap<(String, String), String> = HashMap::new();
        let mut stream = edges.execute_stream().await.map_err(unwrap_datafusion)?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(unwrap_datafusion)?;
            edge_count += batch.num_rows() as u64;
            record_profiles(&graph, &batch, &mut before)?;
            graph.add_edges(&batch).map_err(graph_error)?;
            if base.is_some() {
                note_endpoints(&graph, &batch, &mut touched)?;
            }
        }
        graph.resolve();
        for c in graph.changed_since(&before) {
            merges.insert((c.old_profile_id, c.new_profile_id));
        }
        (graph, base)
    } else {
        let mut graph = IdentityGraph::new(options);
        let mut stream = edges.execute_stream().await.map_err(unwrap_datafusion)?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(unwrap_datafusion)?;
            edge_count += batch.num_rows() as u64;
            graph.add_edges(&batch).map_err(graph_error)?;
        }
        graph.resolve();
        if entry.map_version.is_some() {
            compare_with_map(session, q, &graph, &mut merges).await?;
        }
        (graph, None)
    };

    let identifiers = graph.assigned_count() as u64;
    let profiles = graph.profile_count() as u64;
    let (graph, map_version, base) = match (incremental && edge_count == 0, entry.map_version) {
        // Nothing new: the stored map is the graph's.
        (true, Some(v)) => (graph, v, base),
        _ => store_map(session, q, graph, base, touched).await?,
    };
    let refresh_no = entry.refreshes as i64 + 1;
    if !merges.is_empty() {
        append_merges(session, &merges_location, refresh_no, &merges).await?;
    }
    let millis = started.elapsed().as_millis() as u64;
    let key = q.to_string();
    let now = Utc::now().to_rfc3339();
    change_catalog(session, |doc| {
        let e = doc
            .identity_graphs
            .get_mut(&key)
            .ok_or_else(|| not_found(q))?;
        e.watermark = new_watermark;
        e.refreshed_at = Some(now.clone());
        e.refreshes = refresh_no as u64;
        e.identifiers = identifiers;
        e.profiles = profiles;
        e.last_edges = edge_count;
        e.last_incremental = incremental;
        e.last_refresh_ms = millis;
        e.map_version = Some(map_version);
        Ok(())
    })
    .await?;
    Ok((
        RefreshReport {
            graph: key,
            incremental,
            edges: edge_count,
            identifiers,
            profiles,
            merges: merges.len() as u64,
            millis,
        },
        CachedGraph {
            graph,
            map_version,
            base,
        },
    ))
}

fn graph_error(e: tally_udfs::identity::GraphError) -> TallyError {
    TallyError::InvalidValue {
        code: "22023",
        message: format!("identity graph edges: {e}"),
    }
}

fn text(batch: &RecordBatch, name: &str) -> Result<StringArray> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| TallyError::Internal(format!("column {name} missing from a batch")))?;
    let c = cast(col, &DataType::Utf8).map_err(|e| TallyError::DataFusion(e.into()))?;
    c.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| TallyError::Internal(format!("column {name} is not text")))
}

/// Calls `f` with the type and value of both endpoints of every edge of `batch`, skipping
/// null ones.
fn for_each_endpoint(batch: &RecordBatch, mut f: impl FnMut(&str, &str)) -> Result<()> {
    let cols = EDGE_COLUMNS
        .iter()
        .map(|c| text(batch, c))
        .collect::<Result<Vec<_>>>()?;
    for (t, v) in [(&cols[0], &cols[1]), (&cols[2], &cols[3])] {
        for i in 0..batch.num_rows() {
            if !t.is_null(i) && !v.is_null(i) {
                f(t.value(i), v.value(i));
            }
        }
    }
    Ok(())
}

/// Notes the current profile of every already-known endpoint of `batch`, before the batch
/// is added: comparing after the refresh gives the merges.
fn record_profiles(
    graph: &IdentityGraph,
    batch: &RecordBatch,
    out: &mut HashMap<(String, String), String>,
) -> Result<()> {
    for_each_endpoint(batch, |t, v| {
        let key = (t.to_string(), v.to_string());
        if !out.contains_key(&key)
            && let Some((pid, _)) = graph.profile_of(t, v)
        {
            out.insert(key, pid);
        }
    })
}

/// The graph's map as the view shows it.
async fn map_frame(session: &Session, q: &QualifiedName, columns: &str) -> Result<DataFrame> {
    session
        .ctx
        .sql(&format!("SELECT {columns} FROM {}", quoted(&map_name(q))))
        .await
        .map_err(unwrap_datafusion)
}

/// Notes the internal indices of the endpoints of `batch` (already added to the graph).
fn note_endpoints(graph: &IdentityGraph, batch: &RecordBatch, out: &mut Vec<u32>) -> Result<()> {
    for_each_endpoint(batch, |t, v| out.extend(graph.identifier_index(t, v)))
}

/// Rebuilds a graph from the stored map, keeping its merge decisions and profile ids.
async fn seed_from_map(
    session: &Session,
    q: &QualifiedName,
    options: StitchOptions,
) -> Result<IdentityGraph> {
    let mut graph = IdentityGraph::new(options);
    let mut stream = map_frame(
        session,
        q,
        "identifier_type, identifier_value, profile_id, first_seen",
    )
    .await?
    .execute_stream()
    .await
    .map_err(unwrap_datafusion)?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(unwrap_datafusion)?;
        graph.seed_profiles(&batch).map_err(graph_error)?;
    }
    graph.resolve();
    Ok(graph)
}

/// After a full refresh: the profile ids of the stored map that the new graph renamed.
async fn compare_with_map(
    session: &Session,
    q: &QualifiedName,
    graph: &IdentityGraph,
    merges: &mut BTreeSet<(String, String)>,
) -> Result<()> {
    let mut stream = map_frame(session, q, "identifier_type, identifier_value, profile_id")
        .await?
        .execute_stream()
        .await
        .map_err(unwrap_datafusion)?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(unwrap_datafusion)?;
        let (t, v, p) = (
            text(&batch, "identifier_type")?,
            text(&batch, "identifier_value")?,
            text(&batch, "profile_id")?,
        );
        for i in 0..batch.num_rows() {
            if let Some((now, _)) = graph.profile_of(t.value(i), v.value(i))
                && now != p.value(i)
            {
                merges.insert((p.value(i).to_string(), now));
            }
        }
    }
    Ok(())
}

/// A partition that streams map rows out of a shared graph once.
struct GraphPartition {
    schema: SchemaRef,
    rows: parking_lot::Mutex<Option<Assignments<'static>>>,
}

impl std::fmt::Debug for GraphPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GraphPartition")
    }
}

impl PartitionStream for GraphPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rows = self.rows.lock().take();
        let iter: Box<dyn Iterator<Item = datafusion::common::Result<RecordBatch>> + Send> =
            match rows {
                Some(rows) => {
                    Box::new(rows.map(|r| r.map_err(|e| DataFusionError::External(Box::new(e)))))
                }
                None => Box::new(std::iter::once(Err(DataFusionError::Internal(
                    "identity graph map streamed twice".into(),
                )))),
            };
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(iter),
        ))
    }
}

/// A change set above this fraction of the base table (and above [`COMPACT_MIN_ROWS`])
/// compacts instead: past it, reading through the view costs more than rewriting the base
/// saves.
pub const COMPACT_FRACTION: f64 = 0.1;

/// Change sets up to this many rows never force a compaction: rewriting them is cheap
/// whatever the size of the base.
pub const COMPACT_MIN_ROWS: usize = 100_000;

/// Stores the graph's assignment: only the rows that differ from the base when the cached
/// base state allows it and the change set is small, else a compaction. Gives the graph
/// back with the new map version and base state.
async fn store_map(
    session: &Session,
    q: &QualifiedName,
    graph: IdentityGraph,
    base: Option<BaseState>,
    touched: Vec<u32>,
) -> Result<(IdentityGraph, i64, Option<BaseState>)> {
    let base_location = table_location(session, &base_name(q))?;
    let changes_location = table_location(session, &changes_name(q))?;
    let changed = base.map(|mut b| {
        b.touched.extend(touched);
        b.touched.sort_unstable();
        b.touched.dedup();
        let rows = graph.changed_identifiers(&b.snapshot, &b.touched);
        (b, rows)
    });
    let shared = Arc::new(graph);
    let base = match changed {
        Some((b, rows))
            if rows.len() <= COMPACT_MIN_ROWS
                || (rows.len() as f64) <= COMPACT_FRACTION * b.snapshot.len() as f64 =>
        {
            let rows = IdentityGraph::shared_rows(shared.clone(), rows, MAP_BATCH_ROWS);
            overwrite(
                session,
                &changes_location,
                IdentityGraph::change_schema(),
                rows,
            )
            .await?;
            b
        }
        _ => {
            let rows = IdentityGraph::shared_assignments(shared.clone(), MAP_BATCH_ROWS, None);
            overwrite(
                session,
                &base_location,
                IdentityGraph::assignment_schema(),
                rows,
            )
            .await?;
            truncate(session, &changes_location).await?;
            BaseState {
                snapshot: shared.snapshot(),
                touched: Vec::new(),
            }
        }
    };
    let graph = Arc::try_unwrap(shared)
        .map_err(|_| TallyError::Internal("identity graph still shared after writing".into()))?;
    let version = map_version(
        table_version(session, &base_location).await?,
        table_version(session, &changes_location).await?,
    );
    Ok((graph, version, Some(base)))
}

async fn table_version(session: &Session, location: &str) -> Result<i64> {
    Ok(session
        .catalog
        .tables()
        .latest(location)
        .await?
        .version()
        .map_or(0, |v| v as i64))
}

/// Replaces the contents of the Delta table at `location` with `rows`, in one commit
/// (readers see the old rows or the new ones, never a mix), streaming batches out of the
/// graph.
async fn overwrite(
    session: &Session,
    location: &str,
    schema: SchemaRef,
    rows: Assignments<'static>,
) -> Result<u64> {
    let part = Arc::new(GraphPartition {
        schema: schema.clone(),
        rows: parking_lot::Mutex::new(Some(rows)),
    });
    let exec = Arc::new(
        StreamingTableExec::try_new(schema, vec![part], None, vec![], false, None)
            .map_err(unwrap_datafusion)?,
    );
    let table = session.catalog.tables().latest(location).await?;
    let provider = DeltaTableProvider::try_new(table).await?;
    let state = session.ctx.state();
    let sink = provider
        .insert_into(&state, exec, InsertOp::Overwrite)
        .await
        .map_err(unwrap_datafusion)?;
    let written = collect(sink, session.ctx.task_ctx())
        .await
        .map_err(unwrap_datafusion)?;
    Ok(affected_rows(&written))
}

/// Empties the Delta table at `location` (no commit when it is already empty).
async fn truncate(session: &Session, location: &str) -> Result<()> {
    let table = session.catalog.tables().latest(location).await?;
    let provider = DeltaTableProvider::try_new(table).await?;
    let state = session.ctx.state();
    let plan = provider.truncate(&state).await.map_err(unwrap_datafusion)?;
    collect(plan, session.ctx.task_ctx())
        .await
        .map_err(unwrap_datafusion)?;
    Ok(())
}

async fn append_merges(
    session: &Session,
    location: &str,
    refresh_no: i64,
    merges: &BTreeSet<(String, String)>,
) -> Result<()> {
    let now = Utc::now().timestamp_micros();
    let n = merges.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
        Arc::new(datafusion::arrow::array::Int64Array::from(vec![
            refresh_no;
            n
        ])),
        Arc::new(StringArray::from_iter_values(
            merges.iter().map(|m| m.0.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            merges.iter().map(|m| m.1.as_str()),
        )),
    ];
    let batch = RecordBatch::try_new(merges_schema(), columns)
        .map_err(|e| TallyError::DataFusion(e.into()))?;
    let table = session.catalog.tables().latest(location).await?;
    table.write(vec![batch]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_graph_statements() {
        let s = parse(
            "CREATE IDENTITY GRAPH IF NOT EXISTS crm.People FROM (SELECT * FROM e WHERE x = 'a(b') \
             WITH (options = '{\"limits\": {\"user_id\": 1}}', incremental_column = 'loaded_at')",
        )
        .expect("parses");
        assert_eq!(
            s,
            GraphStatement::Create {
                name: vec!["crm".into(), "people".into()],
                edges: EdgesSpec::Query("SELECT * FROM e WHERE x = 'a(b'".into()),
                options: Some("{\"limits\": {\"user_id\": 1}}".into()),
                incremental_column: Some("loaded_at".into()),
                if_not_exists: true,
            }
        );
        assert_eq!(
            parse("create identity graph g from web.edges").expect("parses"),
            GraphStatement::Create {
                name: vec!["g".into()],
                edges: EdgesSpec::Table(vec!["web".into(), "edges".into()]),
                options: None,
                incremental_column: None,
                if_not_exists: false,
            }
        );
        assert_eq!(
            parse("REFRESH IDENTITY GRAPH g FULL;").expect("parses"),
            GraphStatement::Refresh {
                name: vec!["g".into()],
                full: true
            }
        );
        assert_eq!(
            parse("DROP IDENTITY GRAPH IF EXISTS s.g").expect("parses"),
            GraphStatement::Drop {
                name: vec!["s".into(), "g".into()],
                if_exists: true
            }
        );
        for bad in [
            "CREATE IDENTITY GRAPH g",
            "CREATE IDENTITY GRAPH g FROM (SELECT 1",
            "CREATE IDENTITY GRAPH g FROM e WITH (colour = 'red')",
            "REFRESH IDENTITY GRAPH g PARTIAL",
        ] {
            assert!(parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn watermarks_round_trip_through_the_column_type() {
        let t = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
        let v = watermark_literal(1_700_000_000_000_000, &t).expect("literal");
        assert_eq!(watermark_of(&v).expect("wm"), Some(1_700_000_000_000_000));
        let v = watermark_literal(42, &DataType::Int32).expect("literal");
        assert_eq!(watermark_of(&v).expect("wm"), Some(42));
        assert_eq!(watermark_of(&ScalarValue::Int64(None)).expect("wm"), None);
    }
}
