//! Rewrites of parsed statements into forms DataFusion plans, for PostgreSQL syntax it lacks.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident,
    ObjectName, Statement, Value, visit_expressions_mut,
};

/// PostgreSQL's composite field selection `(expr).field` (as in
/// `(verify_email('zb', email)).status`) becomes `expr['field']`, which DataFusion plans as a
/// struct field access; it refuses the dot form on anything but a column.
pub fn composite_field_access(stmt: &mut Statement) {
    use datafusion::sql::sqlparser::ast::{AccessExpr, Subscript};
    let _ = visit_expressions_mut(stmt, |e| {
        if let Expr::CompoundFieldAccess { root, access_chain } = e
            && matches!(**root, Expr::Nested(_) | Expr::Function(_))
        {
            for access in access_chain.iter_mut() {
                if let AccessExpr::Dot(Expr::Identifier(id)) = access {
                    *access = AccessExpr::Subscript(Subscript::Index {
                        index: Expr::Value(Value::SingleQuotedString(id.value.clone()).into()),
                    });
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `a [NOT] LIKE|ILIKE p ESCAPE 'c'` with an escape character other than backslash (which
/// DataFusion refuses) becomes `[NOT] pg_like(a, p, 'c', case_insensitive)`.
pub fn like_escape(stmt: &mut Statement) {
    let _ = visit_expressions_mut(stmt, |e| {
        let (negated, expr, pattern, escape, ci) = match e {
            Expr::Like {
                negated,
                any: false,
                expr,
                pattern,
                escape_char: Some(esc),
            } => (*negated, expr.clone(), pattern.clone(), esc.clone(), false),
            Expr::ILike {
                negated,
                any: false,
                expr,
                pattern,
                escape_char: Some(esc),
            } => (*negated, expr.clone(), pattern.clone(), esc.clone(), true),
            _ => return ControlFlow::<()>::Continue(()),
        };
        let esc_text = match &escape.value {
            Value::SingleQuotedString(s) => s.clone(),
            other => other.to_string(),
        };
        if esc_text == "\\" {
            return ControlFlow::Continue(());
        }
        let arg = |x: Expr| FunctionArg::Unnamed(FunctionArgExpr::Expr(x));
        let call = Expr::Function(Function {
            name: ObjectName::from(vec![Ident::new("pg_like")]),
            uses_odbc_syntax: false,
            parameters: FunctionArguments::None,
            args: FunctionArguments::List(FunctionArgumentList {
                duplicate_treatment: None,
                args: vec![
                    arg(*expr),
                    arg(*pattern),
                    arg(Expr::Value(Value::SingleQuotedString(esc_text).into())),
                    arg(Expr::Value(Value::Boolean(ci).into())),
                ],
                clauses: vec![],
            }),
            filter: None,
            null_treatment: None,
            over: None,
            within_group: vec![],
        });
        *e = if negated {
            Expr::UnaryOp {
                op: datafusion::sql::sqlparser::ast::UnaryOperator::Not,
                expr: Box::new(Expr::Nested(Box::new(call))),
            }
        } else {
            call
        };
        ControlFlow::Continue(())
    });
}

/// Wraps each `$n` whose type the client declared in a cast to that type.
pub fn type_placeholders(
    stmt: &mut Statement,
    declared: &[Option<datafusion::sql::sqlparser::ast::DataType>],
) {
    let _ = visit_expressions_mut(stmt, |e| {
        if let Expr::Value(v) = e
            && let Value::Placeholder(p) = &v.value
            && let Some(n) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
            && let Some(Some(t)) = declared.get(n.wrapping_sub(1))
        {
            *e = Expr::Cast {
                kind: datafusion::sql::sqlparser::ast::CastKind::Cast,
                expr: Box::new(e.clone()),
                data_type: t.clone(),
                array: false,
                format: None,
            };
        }
        ControlFlow::<()>::Continue(())
    });
}

/// In catalog queries (those naming `pg_catalog` or `information_schema`), a scalar
/// subquery in a select list that returns one plain column becomes
/// `(SELECT first_value(col) ...)`: DataFusion only decorrelates aggregated scalar
/// subqueries, and introspection queries (SQLAlchemy's column reflection, psql's `\dT`) use
/// unaggregated ones that return at most one row by construction.
pub fn aggregate_catalog_subqueries(stmt: &mut Statement) {
    let text = stmt.to_string().to_ascii_lowercase();
    if !text.contains("pg_catalog") && !text.contains("information_schema") {
        return;
    }
    let _ = visit_expressions_mut(stmt, |e| {
        if let Expr::Subquery(q) = e
            && let datafusion::sql::sqlparser::ast::SetExpr::Select(sel) = q.body.as_mut()
            && sel.projection.len() == 1
            && matches!(sel.group_by, datafusion::sql::sqlparser::ast::GroupByExpr::Expressions(ref g, _) if g.is_empty())
            && q.limit_clause.is_none()
            && q.order_by.is_none()
        {
            use datafusion::sql::sqlparser::ast::SelectItem;
            let (inner, alias) = match &sel.projection[0] {
                SelectItem::UnnamedExpr(x) => (x.clone(), None),
                SelectItem::ExprWithAlias { expr, alias } => (expr.clone(), Some(alias.clone())),
                _ => return ControlFlow::<()>::Continue(()),
            };
            if contains_aggregate(&inner) {
                return ControlFlow::Continue(());
            }
            let call = Expr::Function(Function {
                name: ObjectName::from(vec![Ident::new("first_value")]),
                uses_odbc_syntax: false,
                parameters: FunctionArguments::None,
                args: FunctionArguments::List(FunctionArgumentList {
                    duplicate_treatment: None,
                    args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(inner))],
                    clauses: vec![],
                }),
                filter: None,
                null_treatment: None,
                over: None,
                within_group: vec![],
            });
            sel.projection[0] = match alias {
                Some(alias) => SelectItem::ExprWithAlias { expr: call, alias },
                None => SelectItem::UnnamedExpr(call),
            };
        }
        ControlFlow::Continue(())
    });
}

fn contains_aggregate(e: &Expr) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    [
        "count(",
        "sum(",
        "min(",
        "max(",
        "avg(",
        "array_agg(",
        "string_agg(",
        "bool_and(",
        "bool_or(",
        "first_value(",
    ]
    .iter()
    .any(|a| text.contains(a))
}

/// An unaliased `col::type` (or `CAST(col AS type)`) in a query's select list gets its
/// column's name as an explicit alias, the name PostgreSQL gives it. DataFusion names the cast
/// after its column too, so when ORDER BY names that column the planner adds it beside the
/// cast and rejects the projection for a duplicate name; with the alias, ORDER BY refers to
/// the output column, as PostgreSQL resolves it.
pub fn alias_column_casts(stmt: &mut Statement) {
    if let Statement::Query(q) = stmt {
        alias_in_set_expr(&mut q.body);
    }
}

fn alias_in_set_expr(body: &mut datafusion::sql::sqlparser::ast::SetExpr) {
    use datafusion::sql::sqlparser::ast::{SelectItem, SetExpr};
    match body {
        SetExpr::Select(select) => {
            let mut taken: Vec<String> = Vec::new();
            for item in &mut select.projection {
                let SelectItem::UnnamedExpr(e) = item else {
                    continue;
                };
                let Expr::Cast { expr, .. } = e else {
                    continue;
                };
                let name = match expr.as_ref() {
                    Expr::Identifier(i) => i.clone(),
                    Expr::CompoundIdentifier(parts) => match parts.last() {
                        Some(i) => i.clone(),
                        None => continue,
                    },
                    _ => continue,
                };
                // Two casts of one column keep DataFusion's own naming (and its error).
                if taken.contains(&name.value) {
                    continue;
                }
                taken.push(name.value.clone());
                *item = SelectItem::ExprWithAlias {
                    expr: e.clone(),
                    alias: name,
                };
            }
        }
        SetExpr::Query(q) => alias_in_set_expr(&mut q.body),
        _ => {}
    }
}

/// Separates the name a client sees from a suffix that only keeps it unique inside
/// DataFusion; the wire shows the part before it ([`client_name`]).
pub const NAME_SUFFIX: char = '\u{1f}';

/// The column name a client sees for a result field named `name`.
pub fn client_name(name: &str) -> &str {
    name.split(NAME_SUFFIX).next().unwrap_or(name)
}

/// Two or more unaliased scalar subqueries in a query's select list get the names
/// PostgreSQL gives them (their own output column's name: `count`, `max`, `x`, else
/// `?column?`). DataFusion names every one `(<subquery>)` and then rejects the projection
/// for duplicate names, where PostgreSQL answers `SELECT (SELECT count(*) FROM a),
/// (SELECT count(*) FROM b)` with two columns named `count`. Each alias carries a
/// [`NAME_SUFFIX`]ed number so they stay distinct until the wire drops it.
pub fn name_scalar_subqueries(stmt: &mut Statement) {
    use datafusion::sql::sqlparser::ast::{CopySource, SelectItem, SetExpr};
    let q = match stmt {
        Statement::Query(q) => q,
        Statement::Copy {
            source: CopySource::Query(q),
            ..
        } => q,
        _ => return,
    };
    let SetExpr::Select(select) = q.body.as_mut() else {
        return;
    };
    let unnamed = select
        .projection
        .iter()
        .filter(|i| matches!(i, SelectItem::UnnamedExpr(Expr::Subquery(_))))
        .count();
    if unnamed < 2 {
        return;
    }
    for (n, item) in select.projection.iter_mut().enumerate() {
        let SelectItem::UnnamedExpr(Expr::Subquery(sub)) = item else {
            continue;
        };
        let name = subquery_column_name(sub);
        *item = SelectItem::ExprWithAlias {
            expr: Expr::Subquery(sub.clone()),
            alias: Ident::with_quote('"', format!("{name}{NAME_SUFFIX}{n}")),
        };
    }
}

/// PostgreSQL's name for a scalar subquery's value: its single output column's name.
fn subquery_column_name(q: &datafusion::sql::sqlparser::ast::Query) -> String {
    use datafusion::sql::sqlparser::ast::{SelectItem, SetExpr};
    let SetExpr::Select(select) = q.body.as_ref() else {
        return "?column?".into();
    };
    use super::names::ident as normalize;
    match select.projection.first() {
        Some(SelectItem::ExprWithAlias { alias, .. }) => normalize(alias),
        Some(SelectItem::UnnamedExpr(e)) => match e {
            Expr::Identifier(i) => normalize(i),
            Expr::CompoundIdentifier(parts) => parts.last().map(normalize).unwrap_or_default(),
            Expr::Function(f) => f
                .name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(normalize)
                .unwrap_or_else(|| "?column?".into()),
            Expr::Cast { expr, .. } => match expr.as_ref() {
                Expr::Identifier(i) => normalize(i),
                _ => "?column?".into(),
            },
            _ => "?column?".into(),
        },
        _ => "?column?".into(),
    }
}
