//! `tally.secrets`: one row per secret with its dates and the connections that use it. The
//! value is never a column.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::catalog::CatalogStore;
use crate::engine::live_table::LiveTable;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Microseconds of an RFC 3339 time.
pub fn micros(s: Option<&str>) -> Option<i64> {
    s.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_micros())
}

/// The `tally.secrets` table.
pub fn table(catalog: Arc<CatalogStore>) -> LiveTable {
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("created_at", ts(), true),
        Field::new("altered_at", ts(), true),
        Field::new("used_by", DataType::Utf8, true),
    ]));
    let s = schema.clone();
    LiveTable::new(
        schema,
        Arc::new(move || {
            let doc = catalog.current();
            let used_by = |name: &str| {
                let users: Vec<&str> = doc
                    .connections
                    .iter()
                    .filter(|(_, c)| c.options.get("secret").map(String::as_str) == Some(name))
                    .map(|(n, _)| n.as_str())
                    .collect();
                (!users.is_empty()).then(|| users.join(", "))
            };
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(doc.secrets.keys())),
                Arc::new(
                    TimestampMicrosecondArray::from_iter(
                        doc.secrets.values().map(|e| micros(Some(&e.created_at))),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(
                    TimestampMicrosecondArray::from_iter(
                        doc.secrets
                            .values()
                            .map(|e| micros(e.altered_at.as_deref())),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from_iter(
                    doc.secrets.keys().map(|n| used_by(n)),
                )),
            ];
            Ok(RecordBatch::try_new(s.clone(), columns)?)
        }),
    )
}
