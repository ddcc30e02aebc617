//! `MERGE INTO target USING source ON ... WHEN [NOT] MATCHED ... THEN ...`, PostgreSQL 15's
//! MERGE, executed by delta-rs's merge operation as one Delta commit.
//!
//! DataFusion plans no MERGE, and delta-rs's builder takes DataFusion expressions, so the
//! statement is translated here: the source (a table or a subquery) is planned by the session
//! like any query, and every condition and value is planned against the qualified columns of
//! the target and the source. As in PostgreSQL, an `INSERT` action sees only the source
//! (dbt's merge writes `values ("id", "name")` with unqualified names), a `MATCHED` action
//! sees both, and an unqualified name present on both sides is ambiguous.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, TableReference};
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::Expr;
use datafusion::sql::sqlparser::ast::{
    self, AssignmentTarget, Expr as SqlExpr, MergeAction, MergeClauseKind, MergeInsertKind,
    SetExpr, Statement, TableFactor,
};
use deltalake::operations::merge::MergeBuilder;

use super::query::{map_plan_error, plan};
use super::{Completion, Output, names};
use crate::catalog::Relation;
use crate::engine::Session;
use crate::error::{Result, TallyError, unwrap_datafusion};

/// The source's name when a subquery source has no alias.
const SOURCE: &str = "source";

/// Executes a MERGE; the completion tag counts the rows inserted, updated and deleted, as
/// PostgreSQL's `MERGE n` does.
pub async fn execute(session: &mut Session, merge: ast::Merge) -> Result<Output> {
    let rows = run(session, merge).await?;
    Ok(Output::Command(Completion::rows("MERGE", rows)))
}

/// Executes `UPDATE target SET ... FROM source WHERE ...`, which DataFusion does not plan, as
/// the MERGE it amounts to: `MERGE INTO target USING source ON <where> WHEN MATCHED THEN
/// UPDATE SET ...`. dbt's snapshots close changed rows this way.
pub async fn update_from(session: &mut Session, update: ast::Update) -> Result<Output> {
    let from = match update.from {
        Some(ast::UpdateTableFromKind::AfterSet(f) | ast::UpdateTableFromKind::BeforeSet(f)) => f,
        None => return Err(TallyError::Internal("UPDATE without FROM".into())),
    };
    let [source] = from.as_slice() else {
        return Err(TallyError::Unsupported(
            "UPDATE ... FROM with more than one relation; join them in a subquery".into(),
        ));
    };
    if !source.joins.is_empty() || !update.table.joins.is_empty() {
        return Err(TallyError::Unsupported(
            "UPDATE ... FROM with a JOIN; join in a subquery instead".into(),
        ));
    }
    if update.returning.is_some() {
        return Err(TallyError::Unsupported("UPDATE ... RETURNING".into()));
    }
    let on = match update.selection {
        Some(e) => e,
        None => ast::Expr::Value(ast::Value::Boolean(true).into()),
    };
    let merge = merge_of(
        update.table.relation,
        source.relation.clone(),
        on,
        None,
        MergeAction::Update(ast::MergeUpdateExpr {
            update_token: ast::helpers::attached_token::AttachedToken::empty(),
            assignments: update.assignments,
            update_predicate: None,
            delete_predicate: None,
        }),
    );
    let rows = run(session, merge).await?;
    Ok(Output::Command(Completion::rows("UPDATE", rows)))
}

/// Runs a MERGE and returns the number of rows it inserted, updated and deleted.
async fn run(session: &mut Session, merge: ast::Merge) -> Result<usize> {
    let (target_name, target_alias) = match &merge.table {
        TableFactor::Table { name, alias, .. } => {
            (name.clone(), alias.as_ref().map(|a| names::ident(&a.name)))
        }
        other => {
            return Err(TallyError::Unsupported(format!(
                "MERGE target must be a table, not {other}"
            )));
        }
    };
    let qualified = names::resolve(session, &target_name)?;
    names::check_writable_schema(&qualified.schema)?;
    let location = match session
        .catalog
        .doc()
        .relation(&qualified.schema, &qualified.name)
    {
        Some(Relation::Table(t)) => t.location.clone(),
        Some(_) => {
            return Err(TallyError::Unsupported(format!(
                "cannot MERGE into \"{}\": it is not a table",
                qualified.name
            )));
        }
        None => return Err(TallyError::no_relation(target_name.to_string())),
    };
    let target_alias = target_alias.unwrap_or_else(|| qualified.name.clone());

    let (source_query, source_alias) = source_query(&merge.source)?;
    let source_plan = plan(session, Statement::Query(Box::new(source_query))).await?;
    let source_alias = source_alias.unwrap_or_else(|| SOURCE.to_string());
    if source_alias == target_alias {
        return Err(TallyError::syntax(format!(
            "table name \"{source_alias}\" specified more than once"
        )));
    }

    // delta-rs plans the source with its own planner, which cannot read shared CTEs.
    let state = crate::engine::cte::without_sharing(session.ctx.state());
    let table = session.catalog.tables().latest(&location).await?;
    let target_schema = table
        .snapshot()
        .map_err(TallyError::from)?
        .snapshot()
        .arrow_schema();
    let source_schema = source_plan.schema().as_arrow().clone();
    let target_df = DFSchema::try_from_qualified_schema(
        TableReference::bare(target_alias.clone()),
        &target_schema,
    )
    .map_err(unwrap_datafusion)?;
    let source_df = DFSchema::try_from_qualified_schema(
        TableReference::bare(source_alias.clone()),
        &source_schema,
    )
    .map_err(unwrap_datafusion)?;
    let mut both = target_df.clone();
    both.merge(&source_df);

    // Planned against the clause's scope, then every unqualified column is qualified by it,
    // so that a name on both sides is an ambiguity error (42702) as in PostgreSQL, and
    // delta-rs never guesses the side.
    let expr = |sql: &SqlExpr, schema: &DFSchema| -> Result<Expr> {
        let planned = state
            .create_logical_expr(&sql.to_string(), schema)
            .map_err(map_plan_error)?;
        planned
            .transform(|e| match e {
                Expr::Column(c) => {
                    // `"db"."schema"."table".col` (as dbt writes) becomes `table.col`.
                    let (qualifier, field) = match &c.relation {
                        None => schema.qualified_field_with_unqualified_name(&c.name)?,
                        Some(_) => schema.qualified_field(schema.index_of_column(&c)?),
                    };
                    Ok(Transformed::yes(Expr::Column(Column::new(
                        qualifier.cloned(),
                        field.name(),
                    ))))
                }
                other => Ok(Transformed::no(other)),
            })
            .map(|t| t.data)
            .map_err(unwrap_datafusion)
    };

    let on = expr(&merge.on, &both)?;
    let source = DataFrame::new(state.clone(), source_plan);
    let mut builder: MergeBuilder = table
        .clone()
        .merge(source, on)
        .with_source_alias(source_alias.clone())
        .with_target_alias(target_alias.clone())
        .with_session_state(Arc::new(state.clone()));

    let target_columns: Vec<String> = target_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let target_column = |name: &ast::ObjectName| -> Result<String> {
        let parts = names::parts(name);
        let col = parts.last().cloned().unwrap_or_default();
        if target_columns.contains(&col) {
            Ok(col)
        } else {
            Err(TallyError::NotFound {
                kind: "column",
                name: format!("{col}\" of relation \"{}", qualified.name),
            })
        }
    };

    for clause in merge.clauses {
        let matched = matches!(clause.clause_kind, MergeClauseKind::Matched);
        let by_source = matches!(clause.clause_kind, MergeClauseKind::NotMatchedBySource);
        // What each kind of clause may reference, as PostgreSQL scopes it.
        let scope = if matched {
            &both
        } else if by_source {
            &target_df
        } else {
            &source_df
        };
        let predicate = clause
            .predicate
            .as_ref()
            .map(|p| expr(p, scope))
            .transpose()?;
        match clause.action {
            MergeAction::Update(update) => {
                if !(matched || by_source) {
                    return Err(TallyError::syntax(
                        "UPDATE is not allowed in a WHEN NOT MATCHED clause",
                    ));
                }
                let mut sets = Vec::with_capacity(update.assignments.len());
                for a in &update.assignments {
                    let AssignmentTarget::ColumnName(name) = &a.target else {
                        return Err(TallyError::Unsupported(
                            "MERGE ... UPDATE SET with a tuple of columns".into(),
                        ));
                    };
                    sets.push((target_column(name)?, expr(&a.value, scope)?));
                }
                let apply = move |mut u: deltalake::operations::merge::UpdateBuilder| {
                    if let Some(p) = predicate {
                        u = u.predicate(p);
                    }
                    for (c, e) in sets {
                        u = u.update(c.as_str(), e);
                    }
                    u
                };
                builder = if matched {
                    builder.when_matched_update(apply)
                } else {
                    builder.when_not_matched_by_source_update(apply)
                }?;
            }
            MergeAction::Delete { .. } => {
                if !(matched || by_source) {
                    return Err(TallyError::syntax(
                        "DELETE is not allowed in a WHEN NOT MATCHED clause",
                    ));
                }
                let apply = move |mut d: deltalake::operations::merge::DeleteBuilder| {
                    if let Some(p) = predicate {
                        d = d.predicate(p);
                    }
                    d
                };
                builder = if matched {
                    builder.when_matched_delete(apply)
                } else {
                    builder.when_not_matched_by_source_delete(apply)
                }?;
            }
            MergeAction::Insert(insert) => {
                if matched || by_source {
                    return Err(TallyError::syntax(
                        "INSERT is not allowed in a WHEN MATCHED clause",
                    ));
                }
                let MergeInsertKind::Values(values) = &insert.kind else {
                    return Err(TallyError::Unsupported("MERGE ... INSERT ROW".into()));
                };
                let [row] = values.rows.as_slice() else {
                    return Err(TallyError::syntax(
                        "MERGE ... INSERT takes exactly one VALUES row",
                    ));
                };
                let columns = if insert.columns.is_empty() {
                    target_columns.clone()
                } else {
                    insert
                        .columns
                        .iter()
                        .map(&target_column)
                        .collect::<Result<Vec<_>>>()?
                };
                if columns.len() != row.len() {
                    return Err(TallyError::syntax(if row.len() > columns.len() {
                        "INSERT has more expressions than target columns"
                    } else {
                        "INSERT has more target columns than expressions"
                    }));
                }
                let sets = columns
                    .into_iter()
                    .zip(row.iter())
                    .map(|(c, v)| Ok((c, expr(v, scope)?)))
                    .collect::<Result<Vec<_>>>()?;
                builder = builder.when_not_matched_insert(move |mut i| {
                    if let Some(p) = predicate {
                        i = i.predicate(p);
                    }
                    for (c, e) in sets {
                        i = i.set(c.as_str(), e);
                    }
                    i
                })?;
            }
        }
    }

    let before = table.version();
    let (after, metrics) = builder.await?;
    if let (Some(before), Some(after)) = (before, after.version()) {
        super::txn::record_write(session, &location, before, after);
    }
    Ok(metrics.num_target_rows_inserted
        + metrics.num_target_rows_updated
        + metrics.num_target_rows_deleted)
}

/// The source of a MERGE as a query of its own, and the name its columns are qualified with.
fn source_query(source: &TableFactor) -> Result<(ast::Query, Option<String>)> {
    match source {
        TableFactor::Table { name, alias, .. } => {
            let sql = format!("SELECT * FROM {name}");
            let parsed = super::parse::parse(&sql)?;
            let query = parsed.into_iter().next().and_then(|p| match p.stmt {
                super::TallyStatement::Sql(s) => match *s {
                    Statement::Query(q) => Some(*q),
                    _ => None,
                },
                _ => None,
            });
            let query =
                query.ok_or_else(|| TallyError::Internal("MERGE source did not parse".into()))?;
            let alias = alias
                .as_ref()
                .map(|a| names::ident(&a.name))
                .or_else(|| names::parts(name).last().cloned());
            Ok((query, alias))
        }
        TableFactor::Derived {
            subquery, alias, ..
        } => {
            if !matches!(
                *subquery.body,
                SetExpr::Select(_)
                    | SetExpr::SetOperation { .. }
                    | SetExpr::Values(_)
                    | SetExpr::Query(_)
            ) {
                return Err(TallyError::Unsupported(
                    "this MERGE source is not a query".into(),
                ));
            }
            Ok((
                (**subquery).clone(),
                alias.as_ref().map(|a| names::ident(&a.name)),
            ))
        }
        other => Err(TallyError::Unsupported(format!(
            "MERGE source must be a table or a subquery, not {other}"
        ))),
    }
}

/// Whether a WHERE clause holds a subquery. DataFusion turns such a DELETE or UPDATE into
/// a join, and the Delta table then receives no filter at all: it would change every row.
/// These statements go through MERGE instead (or are refused), never through the plan.
pub fn has_subquery(selection: Option<&SqlExpr>) -> bool {
    let Some(e) = selection else {
        return false;
    };
    ast::visit_expressions(e, |x| {
        if matches!(
            x,
            SqlExpr::Subquery(_) | SqlExpr::InSubquery { .. } | SqlExpr::Exists { .. }
        ) {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    })
    .is_break()
}

/// Whether a DELETE must run as a MERGE: it has `USING` or a subquery in its WHERE.
pub fn delete_needs_merge(delete: &ast::Delete) -> bool {
    delete.using.is_some() || has_subquery(delete.selection.as_ref())
}

/// `DELETE FROM t USING s WHERE ...` and `DELETE FROM t WHERE k IN (SELECT ...) [AND ...]`,
/// as `MERGE INTO t USING s ON ... WHEN MATCHED [AND ...] THEN DELETE`. dbt's
/// delete+insert strategy deletes the rows it is about to insert again this way.
pub async fn delete(session: &mut Session, delete: ast::Delete) -> Result<Output> {
    let tables = match &delete.from {
        ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
    };
    let [target] = tables.as_slice() else {
        return Err(TallyError::Unsupported(
            "DELETE from more than one table".into(),
        ));
    };
    if !target.joins.is_empty() || delete.returning.is_some() || delete.limit.is_some() {
        return Err(TallyError::Unsupported(
            "DELETE with a join, RETURNING or LIMIT".into(),
        ));
    }
    let (source, on, predicate) = match delete.using {
        Some(using) => {
            let [source] = using.as_slice() else {
                return Err(TallyError::Unsupported(
                    "DELETE ... USING more than one relation; join them in a subquery".into(),
                ));
            };
            if !source.joins.is_empty() {
                return Err(TallyError::Unsupported(
                    "DELETE ... USING with a JOIN; join in a subquery instead".into(),
                ));
            }
            let on = delete
                .selection
                .unwrap_or_else(|| SqlExpr::Value(ast::Value::Boolean(true).into()));
            if has_subquery(Some(&on)) {
                return Err(subquery_unsupported("DELETE ... USING"));
            }
            (source.relation.clone(), on, None)
        }
        None => key_subquery(delete.selection, "DELETE")?,
    };
    let merge = merge_of(
        target.relation.clone(),
        source,
        on,
        predicate,
        MergeAction::Delete {
            delete_token: ast::helpers::attached_token::AttachedToken::empty(),
        },
    );
    let rows = run(session, merge).await?;
    Ok(Output::Command(Completion::rows("DELETE", rows)))
}

/// `UPDATE t SET ... WHERE k IN (SELECT ...) [AND ...]` as a MERGE, for the same reason as
/// [`delete`].
pub async fn update_with_subquery(session: &mut Session, update: ast::Update) -> Result<Output> {
    if !update.table.joins.is_empty() || update.returning.is_some() {
        return Err(TallyError::Unsupported(
            "UPDATE with a join or RETURNING".into(),
        ));
    }
    let (source, on, predicate) = key_subquery(update.selection, "UPDATE")?;
    let merge = merge_of(
        update.table.relation,
        source,
        on,
        predicate,
        MergeAction::Update(ast::MergeUpdateExpr {
            update_token: ast::helpers::attached_token::AttachedToken::empty(),
            assignments: update.assignments,
            update_predicate: None,
            delete_predicate: None,
        }),
    );
    let rows = run(session, merge).await?;
    Ok(Output::Command(Completion::rows("UPDATE", rows)))
}

const KEYS: &str = "tally_subquery_keys";
const KEY: &str = "tally_key";

/// Splits `k IN (SELECT ...) AND rest` into a MERGE source (the distinct keys), its ON
/// condition and the remaining condition, which must hold no subquery.
fn key_subquery(
    selection: Option<SqlExpr>,
    what: &str,
) -> Result<(TableFactor, SqlExpr, Option<SqlExpr>)> {
    let mut terms = Vec::new();
    if let Some(e) = selection {
        split_and(e, &mut terms);
    }
    let position = terms.iter().position(|t| {
        matches!(t, SqlExpr::InSubquery { negated: false, expr, .. }
            if !matches!(expr.as_ref(), SqlExpr::Tuple(_)) && !has_subquery(Some(expr)))
    });
    let Some(position) = position else {
        return Err(subquery_unsupported(what));
    };
    let SqlExpr::InSubquery { expr, subquery, .. } = terms.remove(position) else {
        return Err(TallyError::Internal("IN subquery expected".into()));
    };
    if terms.iter().any(|t| has_subquery(Some(t))) {
        return Err(subquery_unsupported(what));
    }
    let sql = format!("SELECT DISTINCT * FROM ({subquery}) AS {KEYS}({KEY})");
    let query = super::parse::parse(&sql)?
        .into_iter()
        .next()
        .and_then(|p| match p.stmt {
            super::TallyStatement::Sql(s) => match *s {
                Statement::Query(q) => Some(q),
                _ => None,
            },
            _ => None,
        })
        .ok_or_else(|| TallyError::Internal("key subquery did not parse".into()))?;
    let source = TableFactor::Derived {
        lateral: false,
        subquery: query,
        alias: Some(ast::TableAlias {
            explicit: true,
            at: None,
            name: ast::Ident::new(KEYS),
            columns: vec![],
        }),
        sample: None,
    };
    let on = SqlExpr::BinaryOp {
        left: expr,
        op: ast::BinaryOperator::Eq,
        right: Box::new(SqlExpr::CompoundIdentifier(vec![
            ast::Ident::new(KEYS),
            ast::Ident::new(KEY),
        ])),
    };
    let rest = terms.into_iter().reduce(|a, b| SqlExpr::BinaryOp {
        left: Box::new(a),
        op: ast::BinaryOperator::And,
        right: Box::new(b),
    });
    Ok((source, on, rest))
}

fn split_and(e: SqlExpr, out: &mut Vec<SqlExpr>) {
    match e {
        SqlExpr::BinaryOp {
            left,
            op: ast::BinaryOperator::And,
            right,
        } => {
            split_and(*left, out);
            split_and(*right, out);
        }
        SqlExpr::Nested(inner)
            if matches!(
                *inner,
                SqlExpr::BinaryOp {
                    op: ast::BinaryOperator::And,
                    ..
                }
            ) =>
        {
            split_and(*inner, out)
        }
        other => out.push(other),
    }
}

fn subquery_unsupported(what: &str) -> TallyError {
    TallyError::Unsupported(format!(
        "{what} supports a subquery in WHERE only as `column IN (SELECT ...)` (ANDed with \
         conditions without subqueries); rewrite it with a join in USING/FROM"
    ))
}

fn merge_of(
    table: TableFactor,
    source: TableFactor,
    on: SqlExpr,
    predicate: Option<SqlExpr>,
    action: MergeAction,
) -> ast::Merge {
    ast::Merge {
        merge_token: ast::helpers::attached_token::AttachedToken::empty(),
        optimizer_hints: vec![],
        into: true,
        table,
        source,
        on: Box::new(on),
        clauses: vec![ast::MergeClause {
            when_token: ast::helpers::attached_token::AttachedToken::empty(),
            clause_kind: MergeClauseKind::Matched,
            predicate,
            action,
        }],
        output: None,
    }
}
