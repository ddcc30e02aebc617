//! What collect's table functions over a source share: their registration, named
//! arguments, argument values, and the provider that computes a small result when the
//! query is planned.
//!
//! | function | module |
//! |---|---|
//! | `tracking_plan_report('<source>')` | [`super::plans::report`] |
//! | `learn_event_shapes('<source>' [, since => ts])` | [`super::shapes`] |
//! | `event_anomalies('<source>' [, since => ts] [, threshold => x])` | [`super::shapes`] |
//!
//! DataFusion's SQL planner passes table functions positional arguments only (a named one
//! is a planning error), so [`positional_args`] rewrites `f('web', since => x)` into
//! `f('web', x)` before planning, by each function's parameter list; leaving one out passes
//! NULL, its default.
//!
//! Each function reads the source's tables with queries of its own and returns an aggregate
//! (a row per event and property, per violation kind, per anomaly), so the provider
//! ([`ComputedTable`]) computes it in one go when the scan is planned and serves it from
//! memory.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, new_null_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::catalog::Session as CatalogSession;
use datafusion::common::{DataFusionError, Result as DFResult, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::SessionState;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, Statement, TableFactor, Value, VisitMut,
    VisitorMut,
};
use futures::future::BoxFuture;

use crate::catalog::CatalogStore;
use crate::error::{Result, TallyError};

/// The table functions of this module and their parameters, in positional order.
const SIGNATURES: &[(&str, &[&str])] = &[
    ("tracking_plan_report", &["source"]),
    ("learn_event_shapes", &["source", "since"]),
    ("event_anomalies", &["source", "since", "threshold"]),
];

/// Registers the table functions on `ctx` (sessions cloned from it inherit them).
pub fn register(ctx: &SessionContext, catalog: Arc<CatalogStore>) {
    ctx.register_udtf(
        "tracking_plan_report",
        Arc::new(super::plans::report::TrackingPlanReport::new(
            catalog.clone(),
        )),
    );
    ctx.register_udtf(
        "learn_event_shapes",
        Arc::new(super::shapes::LearnEventShapes::new(catalog.clone())),
    );
    ctx.register_udtf(
        "event_anomalies",
        Arc::new(super::shapes::EventAnomalies::new(catalog)),
    );
}

struct NamedArgs(Option<TallyError>);

impl VisitorMut for NamedArgs {
    type Break = ();

    fn pre_visit_table_factor(&mut self, tf: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            args: Some(args),
            ..
        } = tf
        else {
            return ControlFlow::Continue(());
        };
        let func = name.to_string().to_ascii_lowercase();
        let Some((func, params)) = SIGNATURES.iter().find(|(f, _)| *f == func) else {
            return ControlFlow::Continue(());
        };
        if !args
            .args
            .iter()
            .any(|a| matches!(a, FunctionArg::Named { .. } | FunctionArg::ExprNamed { .. }))
        {
            return ControlFlow::Continue(());
        }
        match reorder(func, params, std::mem::take(&mut args.args)) {
            Ok(v) => {
                args.args = v;
                ControlFlow::Continue(())
            }
            Err(e) => {
                self.0 = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

fn reorder(func: &str, params: &[&str], args: Vec<FunctionArg>) -> Result<Vec<FunctionArg>> {
    let bad = |message: String| TallyError::InvalidValue {
        code: "42883",
        message,
    };
    let mut slots: Vec<Option<FunctionArgExpr>> = vec![None; params.len()];
    let mut next = 0;
    let mut named = false;
    for a in args {
        let (name, value) = match a {
            FunctionArg::Unnamed(v) => (None, v),
            FunctionArg::Named { name, arg, .. } => (Some(name.value.to_ascii_lowercase()), arg),
            FunctionArg::ExprNamed { name, arg, .. } => match name {
                SqlExpr::Identifier(i) => (Some(i.value.to_ascii_lowercase()), arg),
                other => {
                    return Err(bad(format!(
                        "{func}: argument name {other} is not a parameter name"
                    )));
                }
            },
        };
        let is_named = name.is_some();
        let at = match name {
            None if named => {
                return Err(TallyError::syntax(format!(
                    "{func}: a positional argument cannot follow a named argument"
                )));
            }
            None => next,
            Some(n) => params.iter().position(|p| *p == n).ok_or_else(|| {
                bad(format!(
                    "{func} has no parameter named \"{n}\" (parameters: {})",
                    params.join(", ")
                ))
            })?,
        };
        if at >= slots.len() {
            return Err(bad(format!(
                "{func} takes at most {} arguments ({})",
                params.len(),
                params.join(", ")
            )));
        }
        if slots[at].is_some() {
            return Err(bad(format!(
                "{func}: parameter \"{}\" is given twice",
                params[at]
            )));
        }
        slots[at] = Some(value);
        next = at + 1;
        named |= is_named;
    }
    while slots.last().is_some_and(Option::is_none) {
        slots.pop();
    }
    Ok(slots
        .into_iter()
        .map(|s| {
            FunctionArg::Unnamed(
                s.unwrap_or_else(|| FunctionArgExpr::Expr(SqlExpr::Value(Value::Null.into()))),
            )
        })
        .collect())
}

/// Rewrites named arguments of collect's table functions (`since => x`) into positions.
/// A name the function does not have is an error (42883), as in PostgreSQL.
pub fn positional_args(stmt: &mut Statement) -> Result<()> {
    let mut v = NamedArgs(None);
    let _ = stmt.visit(&mut v);
    match v.0 {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A planning error of a table function (reads as SQLSTATE 22023).
pub fn arg_error(func: &str, message: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::from(TallyError::InvalidValue {
        code: "22023",
        message: format!("{func}: {message}"),
    })
}

/// An argument's constant value: literals, and expressions of constants folded as the
/// planner would (`now() - interval '7 days'`, `timestamp '2024-05-01'`).
fn constant(session: &dyn CatalogSession, e: &Expr) -> Option<ScalarValue> {
    if let Expr::Literal(v, _) = e {
        return Some(v.clone());
    }
    let ctx = SimplifyContext::builder()
        .with_config_options(Arc::new(session.config_options().clone()))
        .with_query_execution_start_time(
            session
                .execution_props()
                .query_execution_start_time
                .or_else(|| Some(chrono::Utc::now())),
        )
        .build();
    match ExprSimplifier::new(ctx).simplify(e.clone()) {
        Ok(Expr::Literal(v, _)) => Some(v),
        _ => None,
    }
}

/// The text argument `i` (required).
pub fn text_arg(
    session: &dyn CatalogSession,
    func: &str,
    args: &[Expr],
    i: usize,
    what: &str,
) -> DFResult<String> {
    match args.get(i).and_then(|e| constant(session, e)) {
        Some(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => Ok(s),
        _ => Err(arg_error(func, format!("{what} must be given as text"))),
    }
}

/// The timestamp argument `i` as microseconds since the epoch; `None` when absent or NULL.
/// Text is read as a timestamp (`'2024-05-01'`, `'2024-05-01T12:00:00Z'`).
pub fn time_arg(
    session: &dyn CatalogSession,
    func: &str,
    args: &[Expr],
    i: usize,
    what: &str,
) -> DFResult<Option<i64>> {
    let Some(e) = args.get(i) else {
        return Ok(None);
    };
    let v = constant(session, e)
        .ok_or_else(|| arg_error(func, format!("{what} must be a constant timestamp")))?;
    if v.is_null() {
        return Ok(None);
    }
    let target = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    match v.cast_to(&target) {
        Ok(ScalarValue::TimestampMicrosecond(Some(us), _)) => Ok(Some(us)),
        _ => Err(arg_error(
            func,
            format!("{what} must be a timestamp, got {v}"),
        )),
    }
}

/// The numeric argument `i`; `None` when absent or NULL.
pub fn number_arg(
    session: &dyn CatalogSession,
    func: &str,
    args: &[Expr],
    i: usize,
    what: &str,
) -> DFResult<Option<f64>> {
    let Some(e) = args.get(i) else {
        return Ok(None);
    };
    let v = constant(session, e)
        .ok_or_else(|| arg_error(func, format!("{what} must be a constant number")))?;
    if v.is_null() {
        return Ok(None);
    }
    match v.cast_to(&DataType::Float64) {
        Ok(ScalarValue::Float64(Some(x))) if x.is_finite() => Ok(Some(x)),
        _ => Err(arg_error(func, format!("{what} must be a number, got {v}"))),
    }
}

/// Checks that `name` is a source (or the schema of a dropped source, whose tables stay),
/// so a typo is an error (42704) and not an empty result.
pub fn check_source(catalog: &CatalogStore, name: &str) -> DFResult<()> {
    let doc = catalog.current();
    if doc.sources.contains_key(name) || doc.schemas.contains_key(name) {
        Ok(())
    } else {
        Err(TallyError::NotFound {
            kind: "source",
            name: name.to_string(),
        }
        .into())
    }
}

/// Computes a table function's result from the session it is planned in.
pub type Compute =
    Arc<dyn Fn(SessionState) -> BoxFuture<'static, DFResult<RecordBatch>> + Send + Sync>;

/// A table function's result, computed when the scan is planned and served from memory.
pub struct ComputedTable {
    name: &'static str,
    schema: SchemaRef,
    compute: Compute,
}

impl std::fmt::Debug for ComputedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputedTable")
            .field("name", &self.name)
            .finish()
    }
}

impl ComputedTable {
    /// The result of `name`, with columns `schema`, computed by `compute`.
    pub fn new(name: &'static str, schema: SchemaRef, compute: Compute) -> Self {
        ComputedTable {
            name,
            schema,
            compute,
        }
    }
}

/// `batch` with exactly `schema`'s columns and types: columns found by name are cast,
/// missing ones are null.
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> DFResult<RecordBatch> {
    let by_name: HashMap<&str, usize> = batch
        .schema_ref()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name().as_str(), i))
        .collect();
    let columns = schema
        .fields()
        .iter()
        .map(|f| match by_name.get(f.name().as_str()) {
            Some(&i) => cast(batch.column(i), f.data_type()).map_err(DataFusionError::from),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<DFResult<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

#[async_trait]
impl TableProvider for ComputedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let st = state
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| {
                DataFusionError::NotImplemented(format!(
                    "{} needs a DataFusion SessionState",
                    self.name
                ))
            })?
            .clone();
        let batch = (self.compute)(st).await?;
        let batch = conform(&batch, &self.schema)?;
        let exec = MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?;
        Ok(exec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn rewrite(sql: &str) -> Result<String> {
        let mut stmt = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .expect("parse")
            .remove(0);
        positional_args(&mut stmt)?;
        Ok(stmt.to_string())
    }

    #[test]
    fn named_arguments_become_positions() {
        assert_eq!(
            rewrite("SELECT * FROM event_anomalies('web', threshold => 5)").expect("rewrite"),
            "SELECT * FROM event_anomalies('web', NULL, 5)"
        );
        assert_eq!(
            rewrite("SELECT * FROM learn_event_shapes('web', since => '2024-01-01')")
                .expect("rewrite"),
            "SELECT * FROM learn_event_shapes('web', '2024-01-01')"
        );
        assert_eq!(
            rewrite("SELECT * FROM event_anomalies(source => 'web', since => now())")
                .expect("rewrite"),
            "SELECT * FROM event_anomalies('web', now())"
        );
        // Other functions and positional calls are left alone.
        assert_eq!(
            rewrite("SELECT * FROM event_anomalies('web', NULL, 2)").expect("rewrite"),
            "SELECT * FROM event_anomalies('web', NULL, 2)"
        );
        let e = rewrite("SELECT * FROM event_anomalies('web', limit => 3)").unwrap_err();
        assert_eq!(e.sqlstate(), "42883");
        assert!(rewrite("SELECT * FROM event_anomalies('web', since => 1, since => 2)").is_err());
    }
}
