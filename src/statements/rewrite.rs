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
