//! `tally.sync_runs`: one row per sync run (when, outcome, what it sent), kept as a Delta
//! table under the warehouse root (`_tally/activation/sync_runs`) so that operators can see a
//! sync's history with SQL, across restarts and servers.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::MemTable;
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::datasource::TableProvider;

use crate::error::{Result, TallyError};
use crate::storage::Warehouse;
use crate::storage::delta::{DeltaTableProvider, create_table, open_table};

/// Where the table lives, relative to the warehouse root.
pub const LOCATION: &str = "_tally/activation/sync_runs/";

/// One run of a sync.
#[derive(Debug, Clone)]
pub struct SyncRun {
    /// Sync name.
    pub sync: String,
    /// The run's copy id (empty when the run failed before sending).
    pub run_id: String,
    /// Start, microseconds since the epoch.
    pub started_at: i64,
    /// End, microseconds since the epoch.
    pub finished_at: i64,
    /// `succeeded`, `failed`, or `interrupted` (the server stopped during the run; recorded
    /// by the run that resumed it).
    pub status: String,
    /// Rows new since the last successful run.
    pub rows_added: u64,
    /// Rows changed since the last successful run.
    pub rows_changed: u64,
    /// Rows not sent because they did not change.
    pub rows_unchanged: u64,
    /// Rows the destination accepted.
    pub rows_delivered: u64,
    /// Rows the destination refused (sent again next run), and keys it refused to remove
    /// (removal tried again next run).
    pub rows_failed: u64,
    /// The error of a failed run.
    pub error: Option<String>,
    /// `manual` (RUN SYNC), `schedule` (the scheduler), `model` (after a build of an
    /// `AFTER MODEL` model) or `resume` (the scheduler resuming an interrupted run).
    pub trigger: String,
    /// Records a mirror sync removed at the destination.
    pub rows_removed: u64,
    /// Milliseconds spent computing the change set (the diff plan's time, without sending
    /// and without writing the snapshot).
    pub diff_ms: u64,
}

/// The table's columns.
pub fn schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("sync", DataType::Utf8, false),
        Field::new("run_id", DataType::Utf8, false),
        Field::new("started_at", ts(), false),
        Field::new("finished_at", ts(), false),
        Field::new("status", DataType::Utf8, false),
        Field::new("rows_added", DataType::Int64, false),
        Field::new("rows_changed", DataType::Int64, false),
        Field::new("rows_unchanged", DataType::Int64, false),
        Field::new("rows_delivered", DataType::Int64, false),
        Field::new("rows_failed", DataType::Int64, false),
        Field::new("error", DataType::Utf8, true),
        // Nullable and last: tables written before schedules existed gain it by schema merge.
        Field::new("trigger", DataType::Utf8, true),
        // Nullable and last for the same reason: NULL in runs from before mirror syncs.
        Field::new("rows_removed", DataType::Int64, true),
        Field::new("diff_ms", DataType::Int64, true),
    ]))
}

/// Appends one run, creating the table on first use.
pub async fn append(warehouse: &Warehouse, run: &SyncRun) -> Result<()> {
    let n = |v: u64| -> ArrayRef { Arc::new(Int64Array::from(vec![v as i64])) };
    let t = |v: i64| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone("UTC"))
    };
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec![run.sync.as_str()])),
            Arc::new(StringArray::from(vec![run.run_id.as_str()])),
            t(run.started_at),
            t(run.finished_at),
            Arc::new(StringArray::from(vec![run.status.as_str()])),
            n(run.rows_added),
            n(run.rows_changed),
            n(run.rows_unchanged),
            n(run.rows_delivered),
            n(run.rows_failed),
            Arc::new(StringArray::from(vec![run.error.clone()])),
            Arc::new(StringArray::from(vec![run.trigger.as_str()])),
            n(run.rows_removed),
            n(run.diff_ms),
        ],
    )
    .map_err(|e| TallyError::DataFusion(e.into()))?;
    let url = warehouse.url_of(LOCATION)?;
    let table = match open_table(&url, &warehouse.options).await {
        Ok(t) => t,
        Err(_) => match create_table(&url, &warehouse.options, "sync_runs", &schema()).await {
            Ok(t) => t,
            Err(_) => open_table(&url, &warehouse.options).await?,
        },
    };
    table
        .write(vec![batch])
        .with_schema_mode(deltalake::operations::write::SchemaMode::Merge)
        .await?;
    Ok(())
}

/// The table for `SELECT ... FROM tally.sync_runs` (empty until the first run).
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
