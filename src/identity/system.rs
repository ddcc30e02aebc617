//! `tally.identity_graphs`: one row per persisted identity graph with its definition and the
//! outcome of its last refresh, so operators can see how fresh each map is.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::catalog::MemTable;
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::datasource::TableProvider;

use crate::catalog::CatalogDoc;

/// The `tally.identity_graphs` table over the catalog document `doc`.
pub fn identity_graphs_table(doc: &CatalogDoc) -> DFResult<Arc<dyn TableProvider>> {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("schema_name", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("map_table", DataType::Utf8, false),
        Field::new("merges_table", DataType::Utf8, false),
        Field::new("edges_sql", DataType::Utf8, false),
        Field::new("options", DataType::Utf8, true),
        Field::new("incremental_column", DataType::Utf8, true),
        Field::new("watermark", DataType::Int64, true),
        Field::new("created_at", ts(), true),
        Field::new("refreshed_at", ts(), true),
        Field::new("refreshes", DataType::Int64, false),
        Field::new("identifiers", DataType::Int64, false),
        Field::new("profiles", DataType::Int64, false),
        Field::new("last_edges", DataType::Int64, false),
        Field::new("last_incremental", DataType::Boolean, false),
        Field::new("last_refresh_ms", DataType::Int64, false),
    ]));
    let g: Vec<_> = doc.identity_graphs.values().collect();
    let micros = |s: Option<&str>| {
        s.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_micros())
    };
    let text = |f: &dyn Fn(&crate::catalog::IdentityGraphEntry) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(g.iter().map(|e| f(e))))
    };
    let opt_text = |f: &dyn Fn(&crate::catalog::IdentityGraphEntry) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(
            g.iter().map(|e| f(e)).collect::<Vec<_>>(),
        ))
    };
    let int = |f: &dyn Fn(&crate::catalog::IdentityGraphEntry) -> u64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(g.iter().map(|e| f(e) as i64)))
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|e| e.schema.clone()),
        text(&|e| e.name.clone()),
        text(&|e| format!("{}_map", e.name)),
        text(&|e| format!("{}_merges", e.name)),
        text(&|e| e.edges_sql.clone()),
        opt_text(&|e| e.options.clone()),
        opt_text(&|e| e.incremental_column.clone()),
        Arc::new(Int64Array::from(
            g.iter().map(|e| e.watermark).collect::<Vec<_>>(),
        )),
        Arc::new(
            TimestampMicrosecondArray::from(
                g.iter()
                    .map(|e| micros(Some(&e.created_at)))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from(
                g.iter()
                    .map(|e| micros(e.refreshed_at.as_deref()))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        int(&|e| e.refreshes),
        int(&|e| e.identifiers),
        int(&|e| e.profiles),
        int(&|e| e.last_edges),
        Arc::new(BooleanArray::from(
            g.iter().map(|e| e.last_incremental).collect::<Vec<_>>(),
        )),
        int(&|e| e.last_refresh_ms),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(DataFusionError::from)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}
