//! Rewrites of parsed statements into forms DataFusion plans, for PostgreSQL syntax it lacks.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident,
    ObjectName, Statement, Value, visit_expressions_mut,
};

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
