//! `tally.connections`: one row per enrichment connection, with its options (the `secret`
//! option holds a secret's name, never its value) and the counters of its run-time state
//! since the server started: requests, keys asked, cache hits, failed keys, retries and 429s.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::CatalogConnections;
use crate::catalog::CatalogStore;
use crate::engine::live_table::LiveTable;
use crate::secrets::system::micros;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The `tally.connections` table.
pub fn table(catalog: Arc<CatalogStore>, registry: Arc<CatalogConnections>) -> LiveTable {
    let mut fields = vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, true),
        Field::new("options", DataType::Utf8, false),
        Field::new("created_at", ts(), true),
        Field::new("altered_at", ts(), true),
    ];
    const COUNTERS: [&str; 6] = [
        "requests",
        "keys",
        "cache_hits",
        "failures",
        "retries",
        "throttled",
    ];
    fields.extend(
        COUNTERS
            .iter()
            .map(|c| Field::new(*c, DataType::Int64, false)),
    );
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let s = schema.clone();
    LiveTable::new(
        schema,
        Arc::new(move || {
            let doc = catalog.current();
            let entries: Vec<_> = doc.connections.iter().collect();
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(
                    entries.iter().map(|(n, _)| n.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    entries.iter().map(|(_, e)| e.connection_type.as_str()),
                )),
                Arc::new(StringArray::from_iter(
                    entries.iter().map(|(_, e)| e.options.get("url").cloned()),
                )),
                Arc::new(StringArray::from_iter_values(entries.iter().map(
                    |(_, e)| serde_json::to_string(&e.options).unwrap_or_default(),
                ))),
                Arc::new(
                    TimestampMicrosecondArray::from_iter(
                        entries.iter().map(|(_, e)| micros(Some(&e.created_at))),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(
                    TimestampMicrosecondArray::from_iter(
                        entries.iter().map(|(_, e)| micros(e.altered_at.as_deref())),
                    )
                    .with_timezone("UTC"),
                ),
            ];
            let built: Vec<_> = entries.iter().map(|(n, _)| registry.built(n)).collect();
            for i in 0..COUNTERS.len() {
                columns.push(Arc::new(Int64Array::from_iter_values(built.iter().map(
                    |c| {
                        c.as_ref().map_or(0, |c| {
                            let s = c.stats();
                            let counter = match i {
                                0 => &s.requests,
                                1 => &s.keys,
                                2 => &s.cache_hits,
                                3 => &s.failures,
                                4 => &s.retries,
                                _ => &s.throttled,
                            };
                            counter.load(Ordering::Relaxed) as i64
                        })
                    },
                ))));
            }
            Ok(RecordBatch::try_new(s.clone(), columns)?)
        }),
    )
}
