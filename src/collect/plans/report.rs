//! `tracking_plan_report('<source>')`: the source's tracking plan violations summarised per
//! event and property, from `<source>._violations` (flag mode records them there).
//!
//! | column | meaning |
//! |---|---|
//! | `type` | message type (`track`, `identify`, `group`) |
//! | `event` | event name (null for identify and group) |
//! | `property` | property or trait (`price`, `items[].sku`; null for the event as a whole) |
//! | `kind` | violation kind (`type`, `required`, `additional_property`, `unplanned_event`, ...) |
//! | `violations` | violations recorded |
//! | `messages` | distinct messages with this violation |
//! | `first_seen`, `last_seen` | when the first and the last of them were received |
//! | `sample_message_id` | the latest such message, to look it up in the event's table |
//! | `sample_error` | the latest violation's message |
//!
//! Rows come with the most violated first. A source without violations (or whose
//! `_violations` table does not exist yet) gives no rows.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::Result as DFResult;
use datafusion::execution::SessionState;
use datafusion::physical_plan::collect;
use futures::FutureExt;

use crate::catalog::{CatalogStore, DATABASE};
use crate::collect::layout::VIOLATIONS_TABLE;
use crate::collect::table_fn::{ComputedTable, arg_error, check_source, text_arg};

const NAME: &str = "tracking_plan_report";

/// The `tracking_plan_report` table function.
#[derive(Debug)]
pub struct TrackingPlanReport {
    catalog: Arc<CatalogStore>,
}

impl TrackingPlanReport {
    /// The function over the catalog's sources.
    pub fn new(catalog: Arc<CatalogStore>) -> Self {
        TrackingPlanReport { catalog }
    }
}

/// The result's columns.
pub fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("type", DataType::Utf8, true),
        Field::new("event", DataType::Utf8, true),
        Field::new("property", DataType::Utf8, true),
        Field::new("kind", DataType::Utf8, true),
        Field::new("violations", DataType::Int64, true),
        Field::new("messages", DataType::Int64, true),
        Field::new("first_seen", ts.clone(), true),
        Field::new("last_seen", ts, true),
        Field::new("sample_message_id", DataType::Utf8, true),
        Field::new("sample_error", DataType::Utf8, true),
    ]))
}

/// A quoted SQL identifier.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl TableFunctionImpl for TrackingPlanReport {
    fn call_with_args(&self, args: TableFunctionArgs) -> DFResult<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if exprs.len() != 1 {
            return Err(arg_error(
                NAME,
                format!("takes one argument, the source, got {}", exprs.len()),
            ));
        }
        let source = text_arg(args.session(), NAME, exprs, 0, "the source")?;
        check_source(&self.catalog, &source)?;
        let catalog = self.catalog.clone();
        Ok(Arc::new(ComputedTable::new(
            NAME,
            schema(),
            Arc::new(move |state: SessionState| {
                let source = source.clone();
                let catalog = catalog.clone();
                async move { report(&catalog, &state, &source).await }.boxed()
            }),
        )))
    }
}

async fn report(
    catalog: &CatalogStore,
    state: &SessionState,
    source: &str,
) -> DFResult<RecordBatch> {
    let exists = matches!(
        catalog.current().relation(source, VIOLATIONS_TABLE),
        Some(crate::catalog::Relation::Table(_))
    );
    if !exists {
        return Ok(RecordBatch::new_empty(schema()));
    }
    let sql = format!(
        "SELECT \"type\", \"event\", \"property\", \"kind\", \
           count(*) AS violations, \
           count(DISTINCT \"message_id\") AS messages, \
           min(\"received_at\") AS first_seen, \
           max(\"received_at\") AS last_seen, \
           first_value(\"message_id\" ORDER BY \"received_at\" DESC, \"message_id\") AS sample_message_id, \
           first_value(\"message\" ORDER BY \"received_at\" DESC, \"message_id\") AS sample_error \
         FROM {}.{}.{} \
         GROUP BY \"type\", \"event\", \"property\", \"kind\" \
         ORDER BY violations DESC, \"type\", \"event\" NULLS FIRST, \"property\" NULLS FIRST, \"kind\"",
        quote(DATABASE),
        quote(source),
        quote(VIOLATIONS_TABLE)
    );
    let plan = state.create_logical_plan(&sql).await?;
    let exec = state.create_physical_plan(&plan).await?;
    let batches = collect(exec, state.task_ctx()).await?;
    let out = schema();
    let conformed = batches
        .iter()
        .map(|b| crate::collect::table_fn::conform(b, &out))
        .collect::<DFResult<Vec<_>>>()?;
    Ok(concat_batches(&out, &conformed)?)
}
