//! What PostgreSQL tells a client about a result column beyond its Arrow type: the type as
//! declared (`uuid`, `jsonb`, `varchar(20)`, `numeric(10,2)`: Delta stores the first three as
//! strings and an unconstrained `numeric` as a decimal of fixed scale), and, for a column read
//! straight from a table, that table's OID and the column's number (RowDescription's
//! `table_oid` and `column_number`, which JDBC's `getTableName` and `isNullable` follow into
//! `pg_attribute`).
//!
//! The facts travel as Arrow field metadata on the result schema, so the wire layer needs
//! nothing but the stream it encodes: casts carry [`PG_TYPE_KEY`] from the type planner
//! ([`super::pg_compat::PgTypePlanner`]) through DataFusion, and [`annotate`] follows each
//! output column of a plan back to a table column (through projections, filters, joins,
//! grouping and views, as PostgreSQL's `resorigtbl`/`resorigcol` do) for the rest.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{JoinType, TableReference};
use datafusion::datasource::source_as_provider;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use pgwire::api::Type;

use super::Session;
use crate::catalog::Relation;

/// Field metadata key: the PostgreSQL type of the column as declared (`uuid`, `json`,
/// `jsonb`, `varchar(20)`, `numeric`, `numeric(10,2)`, ...).
pub const PG_TYPE_KEY: &str = "tally.pg_type";
/// Field metadata key: OID of the table the column is read from (`pg_class.oid`).
pub const TABLE_OID_KEY: &str = "tally.table_oid";
/// Field metadata key: the column's number in that table (`pg_attribute.attnum`).
pub const ATTNUM_KEY: &str = "tally.attnum";

/// Plans nested deeper than this are not followed (views of views of ...).
const MAX_DEPTH: usize = 64;

/// A table column an output column reads unchanged.
struct Origin {
    table: TableReference,
    /// Index of the column in the table's schema.
    index: usize,
    /// The column's name in the table.
    name: String,
}

/// Follows output column `i` of `plan` back to the table column it passes through, if any.
fn origin(plan: &LogicalPlan, i: usize, depth: usize) -> Option<Origin> {
    if depth > MAX_DEPTH {
        return None;
    }
    let next = depth + 1;
    let through_column = |input: &LogicalPlan, e: &Expr| -> Option<Origin> {
        let mut e = e;
        while let Expr::Alias(a) = e {
            e = a.expr.as_ref();
        }
        match e {
            Expr::Column(c) => {
                let j = input.schema().index_of_column(c).ok()?;
                origin(input, j, next)
            }
            _ => None,
        }
    };
    match plan {
        LogicalPlan::Projection(p) => through_column(&p.input, p.expr.get(i)?),
        LogicalPlan::Filter(f) => origin(&f.input, i, next),
        LogicalPlan::Sort(s) => origin(&s.input, i, next),
        LogicalPlan::Limit(l) => origin(&l.input, i, next),
        LogicalPlan::Repartition(r) => origin(&r.input, i, next),
        LogicalPlan::SubqueryAlias(s) => origin(&s.input, i, next),
        LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(input)) => {
            origin(input, i, next)
        }
        LogicalPlan::Aggregate(a) => through_column(&a.input, a.group_expr.get(i)?),
        LogicalPlan::Window(w) => {
            if i < w.input.schema().fields().len() {
                origin(&w.input, i, next)
            } else {
                None
            }
        }
        LogicalPlan::Join(j) => {
            let left = j.left.schema().fields().len();
            match j.join_type {
                JoinType::RightSemi | JoinType::RightAnti => origin(&j.right, i, next),
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                    origin(&j.left, i, next)
                }
                _ if i < left => origin(&j.left, i, next),
                _ => origin(&j.right, i - left, next),
            }
        }
        LogicalPlan::TableScan(scan) => {
            let index = match &scan.projection {
                Some(p) => *p.get(i)?,
                None => i,
            };
            let provider = source_as_provider(&scan.source).ok()?;
            if let Some(view) = provider.get_logical_plan() {
                return origin(view.as_ref(), index, next);
            }
            let name = provider.schema().field(index).name().clone();
            Some(Origin {
                table: scan.table_name.clone(),
                index,
                name,
            })
        }
        _ => None,
    }
}

/// The result schema of `plan` with what PostgreSQL reports about each column added to its
/// fields' metadata ([`PG_TYPE_KEY`], [`TABLE_OID_KEY`], [`ATTNUM_KEY`]).
pub async fn annotate(session: &Session, plan: &LogicalPlan) -> SchemaRef {
    let schema = plan.schema().as_arrow().clone();
    let doc = session.catalog.doc();
    let default_schema = default_schema(session);
    let mut fields = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let mut meta = field.metadata().clone();
        if let Some(o) = origin(plan, i, 0) {
            let schema_name = o
                .table
                .schema()
                .map(str::to_string)
                .unwrap_or_else(|| default_schema.clone());
            let table = o.table.table().to_string();
            if let Some(rel) = doc.relation(&schema_name, &table) {
                if let Relation::Table(t) = rel
                    && let Some(declared) = t.pg_types.get(&o.name)
                {
                    meta.insert(PG_TYPE_KEY.to_string(), declared.clone());
                }
                if let Some(oid) = session
                    .engine
                    .relation_oid(session, &schema_name, &table)
                    .await
                {
                    meta.insert(TABLE_OID_KEY.to_string(), oid.to_string());
                    meta.insert(ATTNUM_KEY.to_string(), (o.index + 1).to_string());
                }
            }
        }
        fields.push(field.as_ref().clone().with_metadata(meta));
    }
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The stream with `annotated`'s field metadata on its schema and batches (the physical plan
/// keeps cast metadata but knows nothing of table origins).
pub fn annotate_stream(
    stream: SendableRecordBatchStream,
    annotated: &Schema,
) -> SendableRecordBatchStream {
    let physical = stream.schema();
    if physical.fields().len() != annotated.fields().len() {
        return stream;
    }
    let fields: Vec<Field> = physical
        .fields()
        .iter()
        .zip(annotated.fields())
        .map(|(p, a)| {
            let mut meta: HashMap<String, String> = p.metadata().clone();
            meta.extend(a.metadata().iter().map(|(k, v)| (k.clone(), v.clone())));
            p.as_ref().clone().with_metadata(meta)
        })
        .collect();
    let schema = Arc::new(Schema::new_with_metadata(
        fields,
        physical.metadata().clone(),
    ));
    if schema == physical {
        return stream;
    }
    let out = schema.clone();
    let batches = stream.map(move |b| b.and_then(|b| Ok(b.with_schema(out.clone())?)));
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

/// The columns of a catalog relation with their declared PostgreSQL types in
/// [`PG_TYPE_KEY`]: from the table's declarations, or, for a view, from the table columns
/// and casts its output columns come from.
pub fn relation_fields(
    doc: &crate::catalog::CatalogDoc,
    relation: &Relation,
    provider: &dyn datafusion::catalog::TableProvider,
) -> Vec<Arc<Field>> {
    let schema = provider.schema();
    match relation {
        Relation::Table(t) => schema
            .fields()
            .iter()
            .map(|f| match t.pg_types.get(f.name()) {
                Some(declared) => {
                    let mut meta = f.metadata().clone();
                    meta.insert(PG_TYPE_KEY.to_string(), declared.clone());
                    Arc::new(f.as_ref().clone().with_metadata(meta))
                }
                None => f.clone(),
            })
            .collect(),
        Relation::View(v) => {
            let Some(plan) = provider.get_logical_plan() else {
                return schema.fields().iter().cloned().collect();
            };
            let default = v
                .default_schema
                .clone()
                .unwrap_or_else(|| crate::catalog::DEFAULT_SCHEMA.to_string());
            schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let declared = origin(plan.as_ref(), i, 0).and_then(|o| {
                        let s = o.table.schema().unwrap_or(&default).to_string();
                        match doc.relation(&s, o.table.table()) {
                            Some(Relation::Table(t)) => t.pg_types.get(&o.name).cloned(),
                            _ => None,
                        }
                    });
                    match declared {
                        Some(d) => {
                            let mut meta = f.metadata().clone();
                            meta.insert(PG_TYPE_KEY.to_string(), d);
                            Arc::new(f.as_ref().clone().with_metadata(meta))
                        }
                        None => f.clone(),
                    }
                })
                .collect()
        }
        Relation::External(_) => schema.fields().iter().cloned().collect(),
    }
}

/// The schema unqualified names resolve in (first of `search_path`).
fn default_schema(session: &Session) -> String {
    session
        .ctx
        .state_ref()
        .read()
        .config_options()
        .catalog
        .default_schema
        .clone()
}

/// Reads the relation OIDs of `pg_class` into a map by (schema, name).
pub(super) async fn read_relation_oids(
    session: &Session,
) -> datafusion::error::Result<HashMap<(String, String), i32>> {
    let batches = session
        .ctx
        .sql(
            "SELECT n.nspname, c.relname, CAST(c.oid AS INT) AS oid \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')",
        )
        .await?
        .collect()
        .await?;
    let mut out = HashMap::new();
    for b in batches {
        let cast = |i: usize| {
            datafusion::arrow::compute::cast(
                b.column(i),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
        };
        let (nsp, rel) = (cast(0)?, cast(1)?);
        let oid = datafusion::arrow::compute::cast(
            b.column(2),
            &datafusion::arrow::datatypes::DataType::Int32,
        )?;
        let (nsp, rel, oid) = (
            nsp.as_string::<i32>(),
            rel.as_string::<i32>(),
            oid.as_primitive::<datafusion::arrow::datatypes::Int32Type>(),
        );
        for r in 0..b.num_rows() {
            if nsp.is_valid(r) && rel.is_valid(r) && oid.is_valid(r) {
                out.insert(
                    (nsp.value(r).to_string(), rel.value(r).to_string()),
                    oid.value(r),
                );
            }
        }
    }
    Ok(out)
}

/// The `$n` parameter a plan's output column `i` is, unchanged but for casts, if any (the
/// values of `INSERT ... VALUES ($1, $2)`).
fn placeholder_at(plan: &LogicalPlan, i: usize, depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    fn strip(mut e: &Expr) -> &Expr {
        loop {
            match e {
                Expr::Alias(a) => e = a.expr.as_ref(),
                Expr::Cast(c) => e = c.expr.as_ref(),
                Expr::TryCast(c) => e = c.expr.as_ref(),
                _ => return e,
            }
        }
    }
    let number = |e: &Expr| match e {
        Expr::Placeholder(p) => p.id.trim_start_matches('$').parse::<usize>().ok(),
        _ => None,
    };
    match plan {
        LogicalPlan::Projection(p) => {
            let e = strip(p.expr.get(i)?);
            match e {
                Expr::Column(c) => {
                    let j = p.input.schema().index_of_column(c).ok()?;
                    placeholder_at(&p.input, j, depth + 1)
                }
                other => number(other),
            }
        }
        LogicalPlan::SubqueryAlias(s) => placeholder_at(&s.input, i, depth + 1),
        LogicalPlan::Values(v) => number(strip(v.values.first()?.get(i)?)),
        _ => None,
    }
}

/// The declared PostgreSQL types of a statement's parameters, by number from 1: those cast
/// to a type tally stores differently (`$1::uuid`), and those inserted straight into a
/// column declared so (`INSERT INTO t (u) VALUES ($1)` with `u uuid`), as PostgreSQL infers
/// them. The wire layer describes these parameters with their declared types, which is
/// what lets asyncpg send a `uuid.UUID`.
pub fn declared_parameters(session: &Session, plan: &LogicalPlan) -> HashMap<usize, String> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut out = HashMap::new();
    let _ = plan.apply_with_subqueries(|node| {
        for e in node.expressions() {
            let _ = e.apply(|x| {
                if let Expr::Cast(c) = x
                    && let Expr::Placeholder(p) = c.expr.as_ref()
                    && let Some(declared) = c.field.metadata().get(PG_TYPE_KEY)
                    && let Ok(n) = p.id.trim_start_matches('$').parse::<usize>()
                {
                    out.insert(n, declared.clone());
                }
                Ok(TreeNodeRecursion::Continue)
            });
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if let LogicalPlan::Dml(dml) = plan
        && matches!(dml.op, datafusion::logical_expr::WriteOp::Insert(_))
    {
        let schema_name = dml
            .table_name
            .schema()
            .map(str::to_string)
            .unwrap_or_else(|| default_schema(session));
        let doc = session.catalog.doc();
        if let Some(Relation::Table(t)) = doc.relation(&schema_name, dml.table_name.table()) {
            for (i, field) in dml.input.schema().fields().iter().enumerate() {
                if let Some(declared) = t.pg_types.get(field.name())
                    && let Some(n) = placeholder_at(&dml.input, i, 0)
                {
                    out.entry(n).or_insert_with(|| declared.clone());
                }
            }
        }
    }
    out
}

/// The PostgreSQL type named `name` as tally records declared types (`uuid`, `varchar(20)`,
/// `character varying(20)`, `char(3)`, `numeric(10,2)`, ...), with its type modifier.
pub fn declared_type(name: &str) -> Option<(Type, i32)> {
    let name = name.trim().to_ascii_lowercase();
    let (base, args) = match name.split_once('(') {
        Some((b, rest)) => (b.trim(), rest.trim_end_matches(')').trim()),
        None => (name.as_str(), ""),
    };
    let nums: Vec<i32> = args
        .split(',')
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    Some(match base {
        "uuid" => (Type::UUID, -1),
        "json" => (Type::JSON, -1),
        "jsonb" => (Type::JSONB, -1),
        "text" => (Type::TEXT, -1),
        "varchar" | "character varying" | "char varying" => {
            (Type::VARCHAR, nums.first().map_or(-1, |n| n + 4))
        }
        "char" | "character" | "bpchar" => (Type::BPCHAR, nums.first().map_or(-1, |n| n + 4)),
        "numeric" | "decimal" => match nums.as_slice() {
            [p] => (Type::NUMERIC, numeric_typmod(*p, 0)),
            [p, s] => (Type::NUMERIC, numeric_typmod(*p, *s)),
            _ => (Type::NUMERIC, -1),
        },
        _ => return None,
    })
}

/// PostgreSQL's `numeric(p,s)` type modifier.
pub fn numeric_typmod(precision: i32, scale: i32) -> i32 {
    ((precision << 16) | (scale & 0xffff)) + 4
}

/// The type a result field is reported as, and its type modifier. `column`: the field is a
/// table column (or reads one unchanged), whose decimal precision and scale PostgreSQL reports
/// as the attribute's typmod; computed decimals report none.
pub fn pg_type(field: &Arc<Field>, column: bool) -> pgwire::error::PgWireResult<(Type, i32)> {
    let arrow = field.data_type();
    if let Some(declared) = field.metadata().get(PG_TYPE_KEY)
        && let Some((t, typmod)) = declared_type(declared)
    {
        let fits = match t {
            Type::NUMERIC => matches!(arrow, DataType::Decimal128(..)),
            _ => matches!(
                arrow,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ),
        };
        if fits {
            return Ok((t, typmod));
        }
    }
    // An array of oids (`$1::oid[]`, asyncpg's introspection parameter) is `oid[]`: asyncpg
    // has a codec for it but not for `int4[]`.
    let oid_list = match arrow {
        DataType::List(f) | DataType::LargeList(f) => f
            .metadata()
            .get(arrow_pg::datatypes::PG_OID_ALIAS_KEY)
            .is_some_and(|k| k == "oid"),
        _ => false,
    };
    // The oid-alias marker describes an Int32; a cast keeps the marker (`oid::bigint`), which
    // must then be reported as its own type.
    let aliased_other = !matches!(arrow, DataType::Int32)
        && field
            .metadata()
            .contains_key(arrow_pg::datatypes::PG_OID_ALIAS_KEY);
    let t = if oid_list {
        Type::OID_ARRAY
    } else if aliased_other {
        arrow_pg::datatypes::into_pg_type(arrow)?
    } else {
        arrow_pg::datatypes::field_into_pg_type(field)?
    };
    let typmod = match arrow {
        DataType::Decimal128(p, s) if column => numeric_typmod(*p as i32, *s as i32),
        _ => -1,
    };
    Ok((t, typmod))
}

/// `pg_type.typlen` of a type: its fixed width, or -1 for variable-length types.
pub fn type_len(t: &Type) -> i16 {
    match *t {
        Type::BOOL | Type::CHAR => 1,
        Type::INT2 => 2,
        Type::INT4 | Type::FLOAT4 | Type::DATE | Type::OID => 4,
        Type::INT8 | Type::FLOAT8 | Type::TIMESTAMP | Type::TIMESTAMPTZ | Type::TIME => 8,
        Type::UUID | Type::INTERVAL => 16,
        _ => -1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types() {
        assert_eq!(declared_type("uuid"), Some((Type::UUID, -1)));
        assert_eq!(declared_type("varchar(20)"), Some((Type::VARCHAR, 24)));
        assert_eq!(
            declared_type("character varying"),
            Some((Type::VARCHAR, -1))
        );
        assert_eq!(declared_type("char(3)"), Some((Type::BPCHAR, 7)));
        assert_eq!(
            declared_type("numeric(10,2)"),
            Some((Type::NUMERIC, 655366))
        );
        assert_eq!(declared_type("numeric"), Some((Type::NUMERIC, -1)));
        assert_eq!(declared_type("citext"), None);
    }
}
