//! `tally.rejected_rows`: the dead-letter table of activation. Every row a destination
//! refused for good lands here with the destination's answer, so nothing is silently lost
//! and a user can fix the data and send those rows again with plain SQL:
//!
//! ```sql
//! SELECT row_json, status, response FROM tally.rejected_rows WHERE destination = 'crm';
//! ```
//!
//! It is a Delta table under the warehouse root (`_tally/activation/rejected_rows`), created
//! on the first rejection; appends from concurrent COPYs commit as separate Delta versions.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::MemTable;
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::datasource::TableProvider;

use crate::error::{Result, TallyError};
use crate::storage::Warehouse;
use crate::storage::delta::{DeltaTableProvider, create_table, open_table};

/// Where the table lives, relative to the warehouse root.
pub const LOCATION: &str = "_tally/activation/rejected_rows/";

/// One refused row.
#[derive(Debug, Clone)]
pub struct RejectedRow {
    /// Destination name.
    pub destination: String,
    /// The COPY's id.
    pub copy_id: String,
    /// The row's position in the COPY's result.
    pub ordinal: u64,
    /// The row's key, if the COPY had one.
    pub key: Option<String>,
    /// The row as sent (JSON object).
    pub row_json: String,
    /// HTTP status or equivalent, when the destination gave one.
    pub status: Option<u16>,
    /// The destination's answer (truncated) or tally's reason.
    pub response: String,
    /// When (microseconds since the epoch).
    pub rejected_at: i64,
}

/// The table's columns.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("destination", DataType::Utf8, false),
        Field::new("copy_id", DataType::Utf8, false),
        Field::new("row_number", DataType::Int64, false),
        Field::new("row_key", DataType::Utf8, true),
        Field::new("row_json", DataType::Utf8, false),
        Field::new("status", DataType::Int32, true),
        Field::new("response", DataType::Utf8, false),
        Field::new(
            "rejected_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

fn to_batch(rows: &[RejectedRow]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.destination.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.copy_id.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.ordinal as i64),
        )),
        Arc::new(StringArray::from(
            rows.iter().map(|r| r.key.clone()).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.row_json.as_str()),
        )),
        Arc::new(Int32Array::from(
            rows.iter()
                .map(|r| r.status.map(i32::from))
                .collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.response.as_str()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.rejected_at))
                .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(schema(), columns).map_err(|e| TallyError::DataFusion(e.into()))
}

/// Appends rows to the table, creating it on first use.
pub async fn append(warehouse: &Warehouse, rows: &[RejectedRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let url = warehouse.url_of(LOCATION)?;
    let table = match open_table(&url, &warehouse.options).await {
        Ok(t) => t,
        Err(_) => match create_table(&url, &warehouse.options, "rejected_rows", &schema()).await {
            Ok(t) => t,
            // Another COPY created it meanwhile.
            Err(_) => open_table(&url, &warehouse.options).await?,
        },
    };
    table.write(vec![to_batch(rows)?]).await?;
    Ok(())
}

/// The table for `SELECT ... FROM tally.rejected_rows` (empty until the first rejection).
pub async fn table(warehouse: &Warehouse) -> DFResult<Arc<dyn TableProvider>> {
    let url = warehouse.url_of(LOCATION).map_err(DataFusionError::from)?;
    if !warehouse
        .has_table(LOCATION)
        .await
        .map_err(DataFusionError::from)?
    {
        return Ok(Arc::new(MemTable::try_new(schema(), vec![vec![]])?));
    }
    match open_table(&url, &warehouse.options).await {
        Ok(t) => Ok(Arc::new(
            DeltaTableProvider::try_new(t)
                .await
                .map_err(DataFusionError::from)?,
        )),
        Err(_) => Ok(Arc::new(MemTable::try_new(schema(), vec![vec![]])?)),
    }
}
