//! tally's write path into Delta tables: `INSERT`, `CREATE TABLE AS`, `COPY FROM` and model
//! builds all append through [`DeltaAppendExec`].
//!
//! deltalake's own DataFusion sink writes with parquet's default writer properties (one row
//! group of up to a million rows, so a freshly loaded table scans on one core and no row
//! group can be skipped by its statistics), takes its input as one coalesced stream (so
//! Parquet encoding runs on one core) and offers no way to change either. This plan keeps
//! delta-rs's file writer ([`DeltaWriter`]: statistics, partition values, file rolling) and
//! its commit protocol ([`CommitBuilder`]: conflict checks, retries), and changes the two
//! things that matter for a warehouse:
//! - [`writer_properties`]: row groups of [`ROW_GROUP_ROWS`] rows (bounded in bytes too), so a
//!   scan splits a file across cores and prunes row groups by their min/max;
//! - every input partition is encoded by its own task into its own files, so loading uses
//!   both cores, while a partition's first row group's worth of rows goes to one shared
//!   writer, so small inserts still make one file, not one per partition.
//!
//! One statement is still one atomic Delta commit.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use deltalake::delta_datafusion::DataFusionMixins;
use deltalake::kernel::schema::cast::cast_record_batch;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, Add, EagerSnapshot};
use deltalake::logstore::LogStoreRef;
use deltalake::operations::write::WriterStatsConfig;
use deltalake::operations::write::writer::{DeltaWriter, WriterConfig};
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::delta::count_schema;

/// Rows per Parquet row group. DuckDB's row groups are 122,880 rows; about that many keeps
/// a group's statistics selective (a day of events, a range of ids) and gives a table of a
/// few hundred thousand rows enough groups to split across cores, while the per-group
/// overhead (metadata, one decode start per column) stays negligible.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// A row group also closes at this many encoded bytes, so wide rows (JSON payloads, long
/// texts) do not buffer hundreds of megabytes per writer before a group is flushed.
pub const ROW_GROUP_BYTES: usize = 64 * 1024 * 1024;

/// The Parquet writer settings of every file tally writes into a Delta table.
///
/// Snappy, as delta-rs and Spark write by default: it decodes fastest, and scans are what a
/// warehouse mostly does.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_created_by(format!("tally {}", env!("CARGO_PKG_VERSION")))
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
        .build()
}

/// Whether tally's append path can write `snapshot`'s table: it writes logical column names,
/// so a table with Delta column mapping (written by Spark or Databricks) goes through
/// delta-rs's own sink instead, which maps names to physical ones.
pub fn supports(snapshot: &EagerSnapshot) -> bool {
    snapshot
        .metadata()
        .configuration()
        .get("delta.columnMapping.mode")
        .is_none_or(|m| m.eq_ignore_ascii_case("none"))
}

/// Appends (or, with [`SaveMode::Overwrite`], replaces the contents with) the rows of its
/// input as one Delta commit, and yields one row: `count`, the rows written.
pub struct DeltaAppendExec {
    input: Arc<dyn ExecutionPlan>,
    log_store: LogStoreRef,
    snapshot: EagerSnapshot,
    save_mode: SaveMode,
    properties: Arc<PlanProperties>,
}

impl DeltaAppendExec {
    /// Plans a write of `input` into the table at `snapshot`; nothing happens until executed.
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        log_store: LogStoreRef,
        snapshot: EagerSnapshot,
        save_mode: SaveMode,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(count_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        DeltaAppendExec {
            input,
            log_store,
            snapshot,
            save_mode,
            properties,
        }
    }
}

impl fmt::Debug for DeltaAppendExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeltaAppendExec: mode={:?}", self.save_mode)
    }
}

impl DisplayAs for DeltaAppendExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DeltaAppendExec: mode={:?}", self.save_mode)
    }
}

impl ExecutionPlan for DeltaAppendExec {
    fn name(&self) -> &str {
        "DeltaAppendExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    /// More input partitions mean more cores encoding Parquet, except when the input is
    /// sorted: a user who writes `INSERT ... SELECT ... ORDER BY ts` wants files whose row
    /// groups follow that order, which round-robin repartitioning would interleave.
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![self.input.output_ordering().is_none()]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .filter(|_| children.is_empty())
            .ok_or_else(|| DataFusionError::Internal("DeltaAppendExec has one input".into()))?;
        Ok(Arc::new(DeltaAppendExec::new(
            input,
            self.log_store.clone(),
            self.snapshot.clone(),
            self.save_mode,
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "DeltaAppendExec has one output partition, not {partition}"
            )));
        }
        let inputs = (0..self.input.output_partitioning().partition_count())
            .map(|i| self.input.execute(i, context.clone()))
            .collect::<DFResult<Vec<_>>>()?;
        let write = Write {
            log_store: self.log_store.clone(),
            snapshot: self.snapshot.clone(),
            save_mode: self.save_mode,
        };
        let schema = count_schema();
        let out = schema.clone();
        let stream = futures::stream::once(async move {
            let rows = write.run(inputs).await?;
            RecordBatch::try_new(out, vec![Arc::new(UInt64Array::from(vec![rows]))])
                .map_err(DataFusionError::from)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// One execution of a [`DeltaAppendExec`].
struct Write {
    log_store: LogStoreRef,
    snapshot: EagerSnapshot,
    save_mode: SaveMode,
}

/// The writer that partitions share until they have written [`ROW_GROUP_ROWS`] rows.
type SharedWriter = Arc<Mutex<Option<DeltaWriter>>>;

impl Write {
    fn writer(&self, operation_id: Uuid) -> DeltaWriter {
        let stats = WriterStatsConfig::from_config(self.snapshot.table_configuration());
        let config = WriterConfig::new(
            self.snapshot.read_schema(),
            self.snapshot.metadata().partition_columns().to_vec(),
            Some(writer_properties()),
            Some(
                self.snapshot
                    .table_configuration()
                    .table_properties()
                    .target_file_size(),
            ),
            None,
            stats.num_indexed_cols,
            stats.stats_columns,
        );
        DeltaWriter::new(self.log_store.object_store(Some(operation_id)), config)
    }

    /// Writes every input partition on its own task, then commits all files at once.
    /// Dropping the future (a cancelled statement) aborts the tasks and commits nothing; the
    /// files already uploaded are unreferenced and go at the next VACUUM.
    async fn run(self, inputs: Vec<SendableRecordBatchStream>) -> DFResult<u64> {
        let this = Arc::new(self);
        let operation_id = Uuid::new_v4();
        let target = this.snapshot.input_schema();
        let shared: SharedWriter = Arc::new(Mutex::new(None));
        let mut tasks = tokio::task::JoinSet::new();
        for input in inputs {
            let (this, target, shared) = (this.clone(), target.clone(), shared.clone());
            tasks.spawn(async move {
                this.write_partition(input, target, shared, operation_id)
                    .await
            });
        }
        let mut adds: Vec<Add> = Vec::new();
        let mut rows = 0u64;
        while let Some(done) = tasks.join_next().await {
            let (partition_adds, partition_rows) =
                done.map_err(|e| DataFusionError::External(Box::new(e)))??;
            adds.extend(partition_adds);
            rows += partition_rows;
        }
        if let Some(writer) = shared.lock().await.take() {
            adds.extend(writer.close().await.map_err(external)?);
        }
        this.commit(adds, operation_id).await?;
        Ok(rows)
    }

    async fn write_partition(
        &self,
        mut input: SendableRecordBatchStream,
        target: SchemaRef,
        shared: SharedWriter,
        operation_id: Uuid,
    ) -> DFResult<(Vec<Add>, u64)> {
        let mut own: Option<DeltaWriter> = None;
        let mut rows = 0u64;
        while let Some(batch) = input.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            let batch = cast_record_batch(&batch, target.clone(), false, true).map_err(external)?;
            rows += batch.num_rows() as u64;
            match own.as_mut() {
                Some(writer) => writer.write(&batch).await.map_err(external)?,
                None if rows <= ROW_GROUP_ROWS as u64 => {
                    let mut guard = shared.lock().await;
                    guard
                        .get_or_insert_with(|| self.writer(operation_id))
                        .write(&batch)
                        .await
                        .map_err(external)?;
                }
                None => {
                    let writer = own.insert(self.writer(operation_id));
                    writer.write(&batch).await.map_err(external)?;
                }
            }
        }
        let adds = match own {
            Some(writer) => writer.close().await.map_err(external)?,
            None => Vec::new(),
        };
        Ok((adds, rows))
    }

    async fn commit(&self, adds: Vec<Add>, operation_id: Uuid) -> DFResult<()> {
        let mut actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
        if self.save_mode == SaveMode::Overwrite {
            let removes: Vec<Action> = self
                .snapshot
                .file_views(self.log_store.as_ref(), None)
                .map_ok(|f| Action::Remove(f.remove_action(true)))
                .try_collect()
                .await
                .map_err(external)?;
            actions.extend(removes);
        }
        if actions.is_empty() {
            // Nothing written and nothing replaced: PostgreSQL answers `INSERT 0 0` without
            // a trace, and an empty Delta commit would only lengthen the log.
            return Ok(());
        }
        let partition_columns = self.snapshot.metadata().partition_columns().to_vec();
        let operation = DeltaOperation::Write {
            mode: self.save_mode,
            partition_by: (!partition_columns.is_empty()).then_some(partition_columns),
            predicate: None,
        };
        CommitBuilder::default()
            .with_actions(actions)
            .with_operation_id(operation_id)
            .build(Some(&self.snapshot), self.log_store.clone(), operation)
            .await
            .map_err(external)?;
        Ok(())
    }
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}
