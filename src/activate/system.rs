//! `tally.destinations`: one row per destination with its type and options as JSON, secrets
//! shown as `***`, so operators can see where data goes without seeing credentials.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::catalog::MemTable;
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::datasource::TableProvider;
use serde_json::{Map, Value};

use super::destinations::display_value;
use crate::catalog::CatalogDoc;

/// The `tally.destinations` table over the catalog document `doc`.
pub fn destinations_table(doc: &CatalogDoc) -> DFResult<Arc<dyn TableProvider>> {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("options", DataType::Utf8, false),
        Field::new("created_at", ts(), true),
        Field::new("altered_at", ts(), true),
    ]));
    let micros = |s: Option<&str>| {
        s.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_micros())
    };
    let d: Vec<_> = doc.destinations.iter().collect();
    let options = d.iter().map(|(_, e)| {
        let shown: Map<String, Value> = e
            .options
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(display_value(k, v))))
            .collect();
        Value::Object(shown).to_string()
    });
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            d.iter().map(|(n, _)| n.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            d.iter().map(|(_, e)| e.destination_type.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(options)),
        Arc::new(
            TimestampMicrosecondArray::from(
                d.iter()
                    .map(|(_, e)| micros(Some(&e.created_at)))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from(
                d.iter()
                    .map(|(_, e)| micros(e.altered_at.as_deref()))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(DataFusionError::from)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}
