//! Filters that travel to the remote database as SQL: comparisons of a column with a
//! literal, `IS [NOT] NULL`, and `AND`/`OR` of those. Anything else stays in DataFusion.
//!
//! Text columns only travel as `=`: a remote collation may order strings differently
//! (MySQL's default collation ignores case, so `'B' < 'a'` there), and since pushed filters
//! are re-checked by DataFusion, a remote filter may let extra rows through but must never
//! drop one that DataFusion would keep. Equality under a case-insensitive collation only
//! lets extra rows through, which is safe.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};

use super::Engine;
use super::values::{Column, Kind};

/// The SQL for `expr`, or `None` when it does not translate.
pub fn to_sql(expr: &Expr, engine: Engine, columns: &[Column]) -> Option<String> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => {
                let l = to_sql(left, engine, columns)?;
                let r = to_sql(right, engine, columns)?;
                let word = if *op == Operator::And { "AND" } else { "OR" };
                Some(format!("({l} {word} {r})"))
            }
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq => {
                let (col, lit, op) = match (column_of(left, columns), column_of(right, columns)) {
                    (Some(c), None) => (c, literal_of(right)?, *op),
                    (None, Some(c)) => (c, literal_of(left)?, op.swap()?),
                    _ => return None,
                };
                if col.kind == Kind::Text && op != Operator::Eq {
                    return None;
                }
                let lit = literal_sql(lit, &col.kind, engine)?;
                Some(format!("{} {op} {lit}", engine.quote(&col.name)))
            }
            _ => None,
        },
        Expr::IsNull(e) => {
            column_of(e, columns).map(|c| format!("{} IS NULL", engine.quote(&c.name)))
        }
        Expr::IsNotNull(e) => {
            column_of(e, columns).map(|c| format!("{} IS NOT NULL", engine.quote(&c.name)))
        }
        _ => None,
    }
}

fn column_of<'a>(e: &Expr, columns: &'a [Column]) -> Option<&'a Column> {
    match e {
        Expr::Column(c) => columns.iter().find(|col| col.name == c.name),
        // A numeric column widened to compare with a literal of a wider type.
        Expr::Cast(c) if c.field.data_type().is_numeric() => {
            let col = column_of(&c.expr, columns)?;
            col.kind.arrow_type().is_numeric().then_some(col)
        }
        _ => None,
    }
}

fn literal_of(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) if !v.is_null() => Some(v),
        _ => None,
    }
}

fn quote_text(s: &str, engine: Engine) -> String {
    let s = s.replace('\'', "''");
    match engine {
        // MySQL treats backslash as an escape in strings unless NO_BACKSLASH_ESCAPES.
        Engine::Mysql => format!("'{}'", s.replace('\\', "\\\\")),
        Engine::Postgres => format!("'{s}'"),
    }
}

fn literal_sql(v: &ScalarValue, kind: &Kind, engine: Engine) -> Option<String> {
    use ScalarValue as S;
    let numeric = matches!(
        kind,
        Kind::Int16 | Kind::Int32 | Kind::Int64 | Kind::Float32 | Kind::Float64 | Kind::Decimal(..)
    );
    match v {
        S::Int8(Some(x)) if numeric => Some(x.to_string()),
        S::Int16(Some(x)) if numeric => Some(x.to_string()),
        S::Int32(Some(x)) if numeric => Some(x.to_string()),
        S::Int64(Some(x)) if numeric => Some(x.to_string()),
        S::UInt8(Some(x)) if numeric => Some(x.to_string()),
        S::UInt16(Some(x)) if numeric => Some(x.to_string()),
        S::UInt32(Some(x)) if numeric => Some(x.to_string()),
        S::UInt64(Some(x)) if numeric => Some(x.to_string()),
        // Floats compare exactly only with float columns.
        S::Float64(Some(x)) if x.is_finite() && matches!(kind, Kind::Float64) => {
            Some(format!("{x:?}"))
        }
        S::Decimal128(Some(_), _, _) if numeric => Some(v.to_string()),
        S::Utf8(Some(s)) | S::LargeUtf8(Some(s)) | S::Utf8View(Some(s)) if *kind == Kind::Text => {
            Some(quote_text(s, engine))
        }
        S::Boolean(Some(b)) if *kind == Kind::Bool => {
            Some(if *b { "TRUE" } else { "FALSE" }.into())
        }
        S::Date32(Some(_)) if *kind == Kind::Date => Some(format!("DATE '{v}'")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn cols() -> Vec<Column> {
        vec![
            Column {
                name: "id".into(),
                kind: Kind::Int64,
            },
            Column {
                name: "name".into(),
                kind: Kind::Text,
            },
        ]
    }

    #[test]
    fn translates_simple_filters() {
        let c = cols();
        let e = col("id").gt(lit(5i64)).and(col("name").eq(lit("o'k")));
        assert_eq!(
            to_sql(&e, Engine::Postgres, &c).unwrap(),
            "(\"id\" > 5 AND \"name\" = 'o''k')"
        );
        assert_eq!(
            to_sql(&lit(3i64).lt(col("id")), Engine::Mysql, &c).unwrap(),
            "`id` > 3"
        );
        assert!(to_sql(&col("name").lt(lit("b")), Engine::Mysql, &c).is_none());
        assert!(to_sql(&col("id").eq(col("id")), Engine::Mysql, &c).is_none());
    }
}
