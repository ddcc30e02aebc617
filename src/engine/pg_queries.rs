//! Catalog queries of known tools that DataFusion cannot plan, answered another way.
//!
//! - [`substitute`]: whole queries replaced by an equivalent DataFusion plans, keyed on a
//!   construct only that tool's query uses. pgjdbc's `getPrimaryKeys` expands `pg_index.indkey`
//!   with `information_schema._pg_expandarray` (a set-returning function of a composite
//!   type); tally has no indexes (`pg_index` is empty), so the answer is PostgreSQL's for a
//!   table without a primary key: no rows, with the columns pgjdbc reads.
//!   asyncpg's type introspection (run for any type it has no built-in codec for, such as
//!   `bigint[]`) walks element, base, range and attribute types with a recursive CTE whose
//!   per-type facts come from correlated subqueries (one a recursive CTE of its own); the
//!   substitute walks the same tree with joins. Its parameter and columns must be of types
//!   asyncpg has built-in codecs for (`oid[]`, `"char"`), or asyncpg would introspect the
//!   introspection query's own types, endlessly.
//! - [`rewrite`]: constructs rewritten in place. `ARRAY(subquery)` (psql's `\du` lists each
//!   role's memberships with it) becomes `(SELECT array_agg(...) ...)`, a scalar subquery
//!   DataFusion decorrelates. `generate_subscripts(a, 1)` (SQLAlchemy numbers index keys
//!   with it beside `unnest(a)`) becomes `unnest(generate_series(1, cardinality(a)))`. A
//!   scalar subquery that reads only `pg_attrdef` or `pg_sequence` (empty in tally, which has
//!   no column defaults and no sequences) is NULL, as it is in PostgreSQL over empty tables:
//!   SQLAlchemy's column reflection asks for defaults and identity options with correlated
//!   subqueries over them that DataFusion cannot plan. `pg_get_viewdef(oid)` becomes a
//!   scalar subquery over `pg_views` (whose definitions come from tally's catalog).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident,
    ObjectName, SelectItem, SetExpr, Statement, visit_expressions_mut,
};

/// pgjdbc's `getPrimaryKeys` over an empty `pg_index`.
const NO_PRIMARY_KEYS: &str = "SELECT CAST(NULL AS text) AS table_cat, \
     CAST(NULL AS text) AS table_schem, CAST(NULL AS text) AS table_name, \
     CAST(NULL AS text) AS column_name, CAST(NULL AS smallint) AS key_seq, \
     CAST(NULL AS text) AS pk_name WHERE false";

/// pgjdbc's primary-or-unique key lookup (the same, with `is_not_null`).
const NO_PRIMARY_OR_UNIQUE_KEYS: &str = "SELECT CAST(NULL AS text) AS table_cat, \
     CAST(NULL AS text) AS table_schem, CAST(NULL AS text) AS table_name, \
     CAST(NULL AS text) AS column_name, CAST(NULL AS smallint) AS key_seq, \
     CAST(NULL AS text) AS pk_name, CAST(NULL AS boolean) AS is_not_null WHERE false";

/// asyncpg's `INTRO_LOOKUP_TYPES`: the same recursive walk from the requested types to their
/// element, range and base types, with what it reads per type (`_TYPEINFO`) computed by
/// joins instead of correlated subqueries. tally has no composite types, so `attrtypoids`
/// and `attrnames` are NULL. `regtype::text` is `format_type`, or the type's name where
/// datafusion-pg-catalog's `format_type` does not know it (it prints `oid(n)`). The
/// `"char"` casts come after the DISTINCT: DataFusion's aggregate rejects an input whose
/// logical and physical nullability differ, as they do for a cast to a type with metadata.
const ASYNCPG_TYPES: &str = "WITH RECURSIVE ti AS ( \
     SELECT t.oid AS oid, ns.nspname AS ns, t.typname AS name, t.typtype AS kind, \
     bt.oid AS basetype, t.typelem AS elemtype, elem_t.typdelim AS elemdelim, \
     range_t.rngsubtype AS range_subtype, \
     CAST(NULL AS oid[]) AS attrtypoids, CAST(NULL AS text[]) AS attrnames \
     FROM pg_catalog.pg_type t \
     JOIN pg_catalog.pg_namespace ns ON ns.oid = t.typnamespace \
     LEFT JOIN pg_catalog.pg_type elem_t ON t.typlen = -1 AND t.typelem != 0 AND t.typelem = elem_t.oid \
     LEFT JOIN pg_catalog.pg_range range_t ON t.oid = range_t.rngtypid OR t.oid = range_t.rngmultitypid \
     LEFT JOIN pg_catalog.pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype \
     ), \
     typeinfo_tree AS ( \
     SELECT ti.*, CAST(0 AS int) AS depth FROM ti WHERE ti.oid = any($1::oid[]) \
     UNION ALL \
     SELECT ti.*, CAST(tt.depth + 1 AS int) AS depth \
     FROM ti, typeinfo_tree tt \
     WHERE (tt.elemtype IS NOT NULL AND ti.oid = tt.elemtype) \
     OR (tt.range_subtype IS NOT NULL AND ti.oid = tt.range_subtype) \
     OR (tt.basetype IS NOT NULL AND ti.oid = tt.basetype) \
     ), \
     regtype AS ( \
     SELECT oid, CASE WHEN format_type(oid, NULL) LIKE 'oid(%' THEN typname \
     ELSE format_type(oid, NULL) END AS name \
     FROM pg_catalog.pg_type \
     ) \
     SELECT tree.oid, tree.ns, tree.name, CAST(tree.kind AS \"char\") AS kind, tree.basetype, \
     tree.elemtype, CAST(tree.elemdelim AS \"char\") AS elemdelim, tree.range_subtype, \
     tree.attrtypoids, tree.attrnames, tree.depth, b.name AS basetype_name, \
     CASE WHEN tree.elemtype = 0 THEN '-' ELSE e.name END AS elemtype_name, \
     r.name AS range_subtype_name \
     FROM (SELECT DISTINCT * FROM typeinfo_tree) AS tree \
     LEFT JOIN regtype b ON b.oid = tree.basetype \
     LEFT JOIN regtype e ON e.oid = tree.elemtype \
     LEFT JOIN regtype r ON r.oid = tree.range_subtype \
     ORDER BY tree.depth DESC";

/// Text to replace in a query before parsing: pgjdbc's type lookup compares `pg_type.typinput`
/// with `'pg_catalog.array_in'::regproc`; datafusion-pg-catalog keeps `typinput` as the
/// function's name, so the comparison is with the name.
pub fn replace_text(sql: &str) -> Option<String> {
    const JDBC_IS_ARRAY: &str = "typinput='pg_catalog.array_in'::regproc";
    sql.contains(JDBC_IS_ARRAY)
        .then(|| sql.replace(JDBC_IS_ARRAY, "typinput='array_in'"))
}

/// The query to run instead of `sql`, when `sql` is one of the known tool queries above.
pub fn substitute(sql: &str) -> Option<&'static str> {
    let lower = sql.to_ascii_lowercase();
    if lower.contains("information_schema._pg_expandarray(i.indkey)")
        && lower.contains("pk_name")
        && lower.contains("indisprimary")
    {
        return Some(if lower.contains("is_not_null") {
            NO_PRIMARY_OR_UNIQUE_KEYS
        } else {
            NO_PRIMARY_KEYS
        });
    }
    if lower.contains("typeinfo_tree") && lower.contains("typebases") {
        return Some(ASYNCPG_TYPES);
    }
    None
}

/// Catalog tables tally never fills: a subquery reading only these returns no rows.
const ALWAYS_EMPTY: &[&str] = &["pg_attrdef", "pg_sequence"];

/// Whether a scalar subquery reads only tables of [`ALWAYS_EMPTY`] and aggregates nothing
/// (so it is NULL whatever it correlates with).
fn reads_only_empty_tables(q: &datafusion::sql::sqlparser::ast::Query) -> bool {
    use datafusion::sql::sqlparser::ast::{GroupByExpr, TableFactor};
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return false;
    };
    if sel.from.is_empty()
        || !matches!(&sel.group_by, GroupByExpr::Expressions(g, _) if g.is_empty())
        || sel.having.is_some()
    {
        return false;
    }
    let empty = |f: &TableFactor| match f {
        TableFactor::Table { name, .. } => name
            .0
            .last()
            .map(|p| p.to_string().trim_matches('"').to_ascii_lowercase())
            .is_some_and(|n| ALWAYS_EMPTY.contains(&n.as_str())),
        _ => false,
    };
    let aggregates = sel.projection.iter().any(|item| {
        let text = item.to_string().to_ascii_lowercase();
        [
            "count(",
            "sum(",
            "min(",
            "max(",
            "avg(",
            "array_agg(",
            "bool_and(",
            "bool_or(",
        ]
        .iter()
        .any(|a| text.contains(a))
    });
    !aggregates
        && sel
            .from
            .iter()
            .all(|t| empty(&t.relation) && t.joins.iter().all(|j| empty(&j.relation)))
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// `(SELECT first_value(definition) FROM pg_views ... WHERE c.oid = <oid>)`.
fn viewdef_subquery(oid: &Expr) -> Option<Expr> {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    let template = "SELECT (SELECT first_value(tally_v.definition) \
         FROM pg_catalog.pg_class tally_c \
         JOIN pg_catalog.pg_namespace tally_n ON tally_n.oid = tally_c.relnamespace \
         JOIN pg_catalog.pg_views tally_v \
           ON tally_v.schemaname = tally_n.nspname AND tally_v.viewname = tally_c.relname \
         WHERE tally_c.oid = tally_viewdef_oid)";
    let mut stmt = Parser::parse_sql(&PostgreSqlDialect {}, template)
        .ok()?
        .pop()?;
    let _ = visit_expressions_mut(&mut stmt, |e| {
        if matches!(e, Expr::Identifier(i) if i.value == "tally_viewdef_oid") {
            *e = oid.clone();
        }
        ControlFlow::<()>::Continue(())
    });
    let Statement::Query(q) = stmt else {
        return None;
    };
    let SetExpr::Select(sel) = *q.body else {
        return None;
    };
    match sel.projection.into_iter().next()? {
        SelectItem::UnnamedExpr(e) => Some(e),
        _ => None,
    }
}

/// Rewrites the constructs of the module comment in place.
pub fn rewrite(stmt: &mut Statement) {
    let text = stmt.to_string().to_ascii_lowercase();
    let catalog = text.contains("pg_catalog") || text.contains("information_schema");
    let _ = visit_expressions_mut(stmt, |e| {
        if catalog
            && let Expr::Subquery(q) = e
            && reads_only_empty_tables(q)
        {
            *e = Expr::Value(datafusion::sql::sqlparser::ast::Value::Null.into());
            return ControlFlow::<()>::Continue(());
        }
        if let Expr::Function(f) = e
            && f.name
                .to_string()
                .to_ascii_lowercase()
                .trim_start_matches("pg_catalog.")
                == "pg_get_viewdef"
            && let FunctionArguments::List(list) = &f.args
            && let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(oid))) = list.args.first()
            && let Some(sub) = viewdef_subquery(oid)
        {
            *e = sub;
            return ControlFlow::Continue(());
        }
        if let Expr::Function(f) = e
            && f.name
                .to_string()
                .eq_ignore_ascii_case("generate_subscripts")
            && let FunctionArguments::List(list) = &f.args
            && let [
                FunctionArg::Unnamed(FunctionArgExpr::Expr(array)),
                FunctionArg::Unnamed(_),
            ] = list.args.as_slice()
        {
            // Catalog arrays are one-dimensional: the dimension asked for is 1.
            let bigint = |x: Expr| Expr::Cast {
                kind: datafusion::sql::sqlparser::ast::CastKind::Cast,
                expr: Box::new(x),
                data_type: datafusion::sql::sqlparser::ast::DataType::BigInt(None),
                array: false,
                format: None,
            };
            let one = Expr::Value(
                datafusion::sql::sqlparser::ast::Value::Number("1".into(), false).into(),
            );
            *e = call(
                "unnest",
                vec![call(
                    "generate_series",
                    vec![
                        bigint(one),
                        bigint(call("cardinality", vec![array.clone()])),
                    ],
                )],
            );
            return ControlFlow::Continue(());
        }
        let Expr::Function(f) = e else {
            return ControlFlow::Continue(());
        };
        if !f.name.to_string().eq_ignore_ascii_case("array") {
            return ControlFlow::Continue(());
        }
        let FunctionArguments::Subquery(q) = &f.args else {
            return ControlFlow::Continue(());
        };
        let mut q = q.clone();
        let SetExpr::Select(sel) = q.body.as_mut() else {
            return ControlFlow::Continue(());
        };
        if sel.projection.len() != 1 {
            return ControlFlow::Continue(());
        }
        let (inner, alias) = match &sel.projection[0] {
            SelectItem::UnnamedExpr(x) => (x.clone(), None),
            SelectItem::ExprWithAlias { expr, alias } => (expr.clone(), Some(alias.clone())),
            _ => return ControlFlow::Continue(()),
        };
        let agg = call("array_agg", vec![inner]);
        sel.projection[0] = match alias {
            Some(alias) => SelectItem::ExprWithAlias { expr: agg, alias },
            None => SelectItem::UnnamedExpr(agg),
        };
        *e = Expr::Subquery(q);
        ControlFlow::Continue(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    #[test]
    fn array_subquery_becomes_array_agg() {
        let mut stmts = Parser::parse_sql(
            &PostgreSqlDialect {},
            "SELECT ARRAY(SELECT b.rolname FROM m b WHERE b.x = r.oid) AS memberof FROM r",
        )
        .unwrap_or_default();
        let Some(stmt) = stmts.first_mut() else {
            panic!("no statement");
        };
        rewrite(stmt);
        assert_eq!(
            stmt.to_string(),
            "SELECT (SELECT array_agg(b.rolname) FROM m b WHERE b.x = r.oid) AS memberof FROM r"
        );
    }
}
