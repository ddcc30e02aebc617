//! Queries and DML (INSERT, UPDATE, DELETE, TRUNCATE, MERGE) through DataFusion. Table
//! writes reach the Delta tables through their providers' DML hooks, each one atomic commit.
//! Also the extended protocol's prepared statements: planned once with placeholders,
//! executed with bound values.

use std::sync::Arc;

use crate::storage::delta::affected_rows;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ParamValues;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{DdlStatement, Expr, LogicalPlan};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement;
use futures::StreamExt;

use super::{Completion, Output, Parsed, TallyStatement};
use crate::engine::Session;
use crate::error::{Result, TallyError, unwrap_datafusion};

/// Plans a sqlparser statement with the session's state; queries get PostgreSQL's column
/// names.
pub async fn plan(session: &Session, stmt: Statement) -> Result<LogicalPlan> {
    let is_query = matches!(stmt, Statement::Query(_));
    let hints = crate::engine::cte::Hints::of(&stmt);
    let state = session.ctx.state();
    let plan = state
        .statement_to_plan(DFStatement::Statement(Box::new(stmt)))
        .await
        .map_err(map_plan_error)?;
    let plan = hints.mark(plan).map_err(unwrap_datafusion)?;
    if is_query {
        pg_column_names(plan)
    } else {
        Ok(plan)
    }
}

/// The name PostgreSQL gives an unaliased result column: the column's own name, the
/// function's name (`count(*)` is `count`), else `?column?`.
fn pg_name(e: &Expr) -> Option<String> {
    match e {
        // DataFusion spells `count(*)` as `count(Int64(1)) AS "count(*)"`.
        Expr::Alias(a) if a.name == "count(*)" => Some("count".to_string()),
        Expr::Alias(_) | Expr::Column(_) => None,
        Expr::ScalarFunction(f) => Some(f.name().to_string()),
        Expr::AggregateFunction(a) => Some(a.func.name().to_string()),
        Expr::WindowFunction(w) => Some(w.fun.name().to_string()),
        Expr::Cast(c) => match c.expr.as_ref() {
            Expr::Column(col) => Some(col.name.clone()),
            inner => pg_name(inner),
        },
        Expr::TryCast(c) => pg_name(&c.expr),
        _ => Some("?column?".to_string()),
    }
}

fn pg_column_names(plan: LogicalPlan) -> Result<LogicalPlan> {
    let mut node = &plan;
    loop {
        match node {
            LogicalPlan::Sort(s) => node = s.input.as_ref(),
            LogicalPlan::Limit(l) => node = l.input.as_ref(),
            _ => break,
        }
    }
    let LogicalPlan::Projection(p) = node else {
        return Ok(plan);
    };
    let wanted: Vec<Option<String>> = p
        .expr
        .iter()
        .map(|e| match (e, p.input.as_ref()) {
            // A column that is an aggregate's output is named after the aggregate.
            (Expr::Column(c), LogicalPlan::Aggregate(agg)) if c.relation.is_none() => agg
                .aggr_expr
                .iter()
                .find(|a| a.schema_name().to_string() == c.name)
                .and_then(pg_name),
            _ => pg_name(e),
        })
        .collect();
    if wanted.iter().all(Option::is_none) {
        return Ok(plan);
    }
    let schema = plan.schema().clone();
    let mut taken: std::collections::HashSet<String> =
        schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut exprs = Vec::with_capacity(schema.fields().len());
    let mut changed = false;
    for (i, (qualifier, field)) in schema.iter().enumerate() {
        let column = Expr::Column(datafusion::common::Column::new(
            qualifier.cloned(),
            field.name(),
        ));
        match wanted.get(i).cloned().flatten() {
            Some(name) if name != *field.name() && !taken.contains(&name) => {
                taken.insert(name.clone());
                changed = true;
                exprs.push(column.alias(name));
            }
            _ => exprs.push(column),
        }
    }
    if !changed {
        return Ok(plan);
    }
    datafusion::logical_expr::LogicalPlanBuilder::from(plan)
        .project(exprs)
        .and_then(|b| b.build())
        .map_err(unwrap_datafusion)
}

/// Gives DataFusion's "table not found" the PostgreSQL wording and code.
pub fn map_plan_error(e: datafusion::error::DataFusionError) -> TallyError {
    let t = unwrap_datafusion(e);
    if let TallyError::DataFusion(d) = &t {
        let msg = d.to_string();
        if let Some(rest) = msg.split("table '").nth(1)
            && let Some(name) = rest.split("' not found").next()
            && msg.contains("not found")
        {
            // As written: schema-qualified unless it is the default schema.
            let parts: Vec<&str> = name.split('.').collect();
            let shown = match parts.as_slice() {
                [_, "public", t] | ["public", t] => t.to_string(),
                [_, s, t] => format!("{s}.{t}"),
                _ => name.to_string(),
            };
            return TallyError::no_relation(shown);
        }
    }
    t
}

fn guard(plan: &LogicalPlan) -> Result<()> {
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(_))
        | LogicalPlan::Ddl(_)
        | LogicalPlan::Copy(_)
        | LogicalPlan::Statement(_) => Err(TallyError::Unsupported(
            "this statement cannot run as a query".into(),
        )),
        _ => Ok(()),
    }
}

/// Runs a query and streams its rows.
pub async fn run_query(session: &Session, stmt: Statement) -> Result<Output> {
    let plan = plan(session, stmt).await?;
    stream_plan(session, plan).await
}

/// Executes a query plan and streams its rows.
pub async fn stream_plan(session: &Session, plan: LogicalPlan) -> Result<Output> {
    guard(&plan)?;
    // What PostgreSQL reports about each column (declared types, table OIDs) rides on the
    // stream's schema to the wire.
    let annotated = crate::engine::columns::annotate(session, &plan).await;
    let df = session
        .ctx
        .execute_logical_plan(plan)
        .await
        .map_err(map_plan_error)?;
    let stream = df.execute_stream().await.map_err(map_plan_error)?;
    Ok(Output::Rows(crate::engine::columns::annotate_stream(
        stream, &annotated,
    )))
}

/// Runs a DML statement to completion and reports the affected rows.
pub async fn run_dml(session: &mut Session, stmt: Statement, tag: &str) -> Result<Output> {
    let plan = plan(session, stmt).await?;
    tracked_dml(session, plan, tag).await
}

/// The Delta folder a DML plan writes, when it writes a catalog table.
fn dml_location(session: &Session, plan: &LogicalPlan) -> Option<String> {
    let LogicalPlan::Dml(d) = plan else {
        return None;
    };
    let schema = d
        .table_name
        .schema()
        .map(str::to_string)
        .unwrap_or_else(|| super::names::default_schema(session));
    match session
        .catalog
        .doc()
        .relation(&schema, d.table_name.table())
    {
        Some(crate::catalog::Relation::Table(t)) => Some(t.location.clone()),
        _ => None,
    }
}

/// Runs DML and, inside a transaction block, records the table versions it moved between so
/// ROLLBACK can undo them.
async fn tracked_dml(session: &mut Session, plan: LogicalPlan, tag: &str) -> Result<Output> {
    let in_txn = session.txn != crate::engine::session::TxnState::Idle;
    let location = if in_txn {
        dml_location(session, &plan)
    } else {
        None
    };
    let before = match &location {
        Some(loc) => session.catalog.tables().latest(loc).await?.version(),
        None => None,
    };
    let out = dml_plan(session, plan, tag).await?;
    if let (Some(loc), Some(before)) = (location, before)
        && let Some(after) = session.catalog.tables().latest(&loc).await?.version()
    {
        super::txn::record_write(session, &loc, before, after);
    }
    Ok(out)
}

async fn dml_plan(session: &Session, plan: LogicalPlan, tag: &str) -> Result<Output> {
    guard(&plan)?;
    let df = session
        .ctx
        .execute_logical_plan(plan)
        .await
        .map_err(map_plan_error)?;
    let mut stream = df.execute_stream().await.map_err(map_plan_error)?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        rows += affected_rows(&[batch.map_err(unwrap_datafusion)?]);
    }
    Ok(Output::Command(Completion::rows(tag, rows as usize)))
}

/// A statement parsed (and, for queries and DML, planned) by the extended protocol's Parse.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The statement as parsed; `None` for an empty query.
    pub parsed: Option<Parsed>,
    /// The plan with placeholders, for queries and DML.
    pub plan: Option<LogicalPlan>,
    /// The DML tag, when the plan is DML.
    pub dml_tag: Option<&'static str>,
    /// The row shape of statements that return rows without a plan (SHOW, FETCH).
    pub fixed_schema: Option<SchemaRef>,
    /// A plan used only to type parameters (the query of DECLARE ... CURSOR FOR).
    pub param_plan: Option<LogicalPlan>,
}

impl Prepared {
    /// Parameter types in `$n` order (`None` where DataFusion could not infer one).
    pub fn param_types(&self) -> Result<Vec<Option<DataType>>> {
        let Some(plan) = self.plan.as_ref().or(self.param_plan.as_ref()) else {
            return Ok(vec![]);
        };
        let mut types = plan.get_parameter_types().map_err(unwrap_datafusion)?;
        // `$1::bigint` leaves the placeholder untyped for DataFusion; the cast names it.
        let _ = plan.apply(|node| {
            for e in node.expressions() {
                let _ = e.apply(|x| {
                    if let Expr::Cast(c) = x
                        && let Expr::Placeholder(ph) = c.expr.as_ref()
                        && types.get(&ph.id).is_some_and(Option::is_none)
                    {
                        types.insert(ph.id.clone(), Some(c.field.data_type().clone()));
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
            }
            Ok(TreeNodeRecursion::Continue)
        });
        let mut ids: Vec<(usize, Option<DataType>)> = types
            .into_iter()
            .filter_map(|(k, v)| {
                k.trim_start_matches('$')
                    .parse::<usize>()
                    .ok()
                    .map(|n| (n, v))
            })
            .collect();
        ids.sort_by_key(|(n, _)| *n);
        let max = ids.last().map(|(n, _)| *n).unwrap_or(0);
        let mut out = vec![None; max];
        for (n, t) in ids {
            if n >= 1 {
                out[n - 1] = t;
            }
        }
        Ok(out)
    }

    /// The schema of the rows the statement returns, if it returns rows.
    pub fn result_schema(&self) -> Option<SchemaRef> {
        match (&self.plan, self.dml_tag) {
            (Some(p), None) => Some(Arc::new(p.schema().as_arrow().clone())),
            _ => self.fixed_schema.clone(),
        }
    }
}

/// Parses and, where possible, plans one statement for the extended protocol. `declared`
/// holds the parameter types the client gave at Parse: each `$n` is typed with a cast, as
/// PostgreSQL types it, so results and inference follow the client's types.
pub async fn prepare(
    session: &Session,
    sql: &str,
    declared: &[Option<datafusion::sql::sqlparser::ast::DataType>],
) -> Result<Prepared> {
    let mut parsed = super::parse::parse(sql)?;
    if declared.iter().any(Option::is_some)
        && let Some(Parsed {
            stmt: TallyStatement::Sql(s),
            ..
        }) = parsed.first_mut()
    {
        super::rewrite::type_placeholders(s, declared);
    }
    if parsed.len() > 1 {
        return Err(TallyError::syntax(
            "cannot insert multiple commands into a prepared statement",
        ));
    }
    let Some(p) = parsed.pop() else {
        return Ok(Prepared {
            parsed: None,
            plan: None,
            dml_tag: None,
            fixed_schema: None,
            param_plan: None,
        });
    };
    let (plan, dml_tag) = match &p.stmt {
        TallyStatement::Sql(s) => {
            let tag = match &**s {
                Statement::Query(_) | Statement::Explain { .. } => Some(None),
                Statement::Insert(_) => Some(Some("INSERT")),
                Statement::Update(u)
                    if u.from.is_none() && !super::merge::has_subquery(u.selection.as_ref()) =>
                {
                    Some(Some("UPDATE"))
                }
                Statement::Delete(d) if !super::merge::delete_needs_merge(d) => {
                    Some(Some("DELETE"))
                }
                _ => None,
            };
            match tag {
                Some(t) => {
                    session.catalog.store().refresh().await?;
                    (Some(plan(session, (**s).clone()).await?), t)
                }
                None => (None, None),
            }
        }
        _ => (None, None),
    };
    let fixed_schema = match &p.stmt {
        TallyStatement::Sql(s) => match &**s {
            Statement::ShowVariable { variable } => Some(super::set_show::show_schema(variable)),
            Statement::Fetch { name, .. } => session
                .cursors
                .get(&super::names::ident(name))
                .map(|c| c.schema()),
            _ => None,
        },
        TallyStatement::Activate(crate::activate::statements::ActivateStatement::Copy {
            ..
        }) => Some(crate::activate::statements::copy_result_schema()),
        _ => None,
    };
    let param_plan = match &p.stmt {
        TallyStatement::Sql(s) => match &**s {
            Statement::Declare { stmts } => match stmts.first().and_then(|d| d.for_query.clone()) {
                Some(q) => Some(self::plan(session, Statement::Query(q)).await?),
                None => None,
            },
            _ => None,
        },
        _ => None,
    };
    Ok(Prepared {
        parsed: Some(p),
        plan,
        dml_tag,
        fixed_schema,
        param_plan,
    })
}

/// Executes a prepared statement with bound parameters.
pub async fn execute_prepared(
    session: &mut Session,
    prepared: &Prepared,
    params: ParamValues,
) -> Result<Output> {
    let Some(parsed) = &prepared.parsed else {
        return Ok(Output::Command(Completion::tag("")));
    };
    match &prepared.plan {
        Some(_) => {
            // Plan again at every Execute: tables are snapshots, and a statement cached by a
            // driver must see the rows committed since it was parsed.
            let TallyStatement::Sql(stmt) = &parsed.stmt else {
                return Err(TallyError::Internal("prepared plan without SQL".into()));
            };
            let run = super::begin_statement(session, false)?;
            let work = async {
                session.catalog.store().refresh().await?;
                let plan = plan(session, (**stmt).clone())
                    .await?
                    .replace_params_with_values(&params)
                    .map_err(unwrap_datafusion)?;
                match prepared.dml_tag {
                    Some(tag) => tracked_dml(session, plan, tag).await,
                    None => stream_plan(session, plan).await,
                }
            };
            let result = super::guarded(work, run.deadline, &run.token).await;
            super::finish_statement(session, run, result)
        }
        None => match (
            &parsed.stmt,
            matches!(&params, ParamValues::List(l) if l.is_empty()),
        ) {
            (TallyStatement::Sql(s), false) if matches!(**s, Statement::Declare { .. }) => {
                let Statement::Declare { stmts } = (**s).clone() else {
                    return Err(TallyError::Internal("DECLARE expected".into()));
                };
                super::cursor::declare_with(session, stmts, Some(params)).await
            }
            _ => super::run_parsed(session, parsed.clone()).await,
        },
    }
}
