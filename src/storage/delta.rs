//! Delta Lake tables as DataFusion tables.
//!
//! deltalake's own provider reads and appends (INSERT) but does not implement DataFusion's
//! DELETE, UPDATE and TRUNCATE hooks; [`DeltaTableProvider`] wraps it and routes those to
//! delta-rs operation builders, each committing one atomic Delta version. Every hook returns
//! a plan that does its work only when executed (so `EXPLAIN DELETE ...` changes nothing) and
//! yields one row with the affected-row `count`, the contract DataFusion's DML planning expects.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DataFusionError, Result as DFResult};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use deltalake::kernel::StructField;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder};
use futures::future::BoxFuture;
use url::Url;

use super::append::{self, DeltaAppendExec};
use crate::error::{Result, TallyError};

/// Opens the Delta table at `url` at its latest version.
pub async fn open_table(url: &Url, options: &HashMap<String, String>) -> Result<DeltaTable> {
    let table = DeltaTableBuilder::from_url(url.clone())?
        .with_storage_options(options.clone())
        .load()
        .await?;
    Ok(table)
}

/// Creates an empty Delta table at `url` with the given Arrow schema.
pub async fn create_table(
    url: &Url,
    options: &HashMap<String, String>,
    name: &str,
    schema: &Schema,
) -> Result<DeltaTable> {
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    let fields: Vec<StructField> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().try_into_kernel())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| TallyError::Unsupported(format!("column type not storable in Delta: {e}")))?;
    let table = DeltaTableBuilder::from_url(url.clone())?
        .with_storage_options(options.clone())
        .build()?;
    let table = table
        .create()
        .with_columns(fields)
        .with_table_name(name)
        .with_save_mode(SaveMode::ErrorIfExists)
        .await?;
    Ok(table)
}

/// A Delta table as a DataFusion table with full DML.
pub struct DeltaTableProvider {
    table: DeltaTable,
    inner: Arc<dyn TableProvider>,
}

impl fmt::Debug for DeltaTableProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaTableProvider")
            .field("url", &self.table.table_url().as_str())
            .field("version", &self.table.version())
            .finish()
    }
}

impl DeltaTableProvider {
    /// Wraps a loaded table; the provider reads the snapshot it was built from.
    pub async fn try_new(table: DeltaTable) -> Result<Self> {
        let inner = table.table_provider().await?;
        Ok(DeltaTableProvider { table, inner })
    }

    /// The underlying Delta table (its snapshot is the one this provider reads).
    pub fn table(&self) -> &DeltaTable {
        &self.table
    }

    fn session_arc(state: &dyn Session) -> Option<Arc<dyn Session>> {
        state
            .as_any()
            .downcast_ref::<SessionState>()
            .map(|s| Arc::new(s.clone()) as Arc<dyn Session>)
    }
}

/// Delta expressions resolve columns against the table alone; DataFusion hands the hooks
/// expressions qualified with the table name, so the qualifiers are dropped.
fn unqualify(expr: Expr) -> DFResult<Expr> {
    expr.transform(|e| match e {
        Expr::Column(c) if c.relation.is_some() => Ok(Transformed::yes(Expr::Column(
            Column::new_unqualified(c.name),
        ))),
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

fn conjunction(filters: Vec<Expr>) -> DFResult<Option<Expr>> {
    let mut out: Option<Expr> = None;
    for f in filters {
        let f = unqualify(f)?;
        out = Some(match out {
            None => f,
            Some(acc) => acc.and(f),
        });
    }
    Ok(out)
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl TableProvider for DeltaTableProvider {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    async fn insert_into(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let snapshot = self.table.snapshot().map_err(external)?.snapshot();
        let save_mode = match insert_op {
            InsertOp::Append => SaveMode::Append,
            InsertOp::Overwrite => SaveMode::Overwrite,
            InsertOp::Replace => {
                return Err(DataFusionError::NotImplemented(
                    "INSERT OR REPLACE into a Delta table".into(),
                ));
            }
        };
        if !append::supports(snapshot) {
            return self.inner.insert_into(state, input, insert_op).await;
        }
        Ok(Arc::new(DeltaAppendExec::new(
            input,
            self.table.log_store(),
            snapshot.clone(),
            save_mode,
        )))
    }

    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let table = self.table.clone();
        let predicate = conjunction(filters)?;
        let session = Self::session_arc(state);
        Ok(CountExec::new_plan("DeltaDeleteExec", move || {
            Box::pin(async move {
                let mut builder = table.delete();
                if let Some(p) = predicate {
                    builder = builder.with_predicate(p);
                }
                if let Some(s) = session {
                    builder = builder.with_session_state(s);
                }
                let (_, metrics) = builder.await.map_err(external)?;
                Ok(metrics.num_deleted_rows.unwrap_or(0) as u64)
            })
        }))
    }

    async fn update(
        &self,
        state: &dyn Session,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let table = self.table.clone();
        let predicate = conjunction(filters)?;
        let assignments = assignments
            .into_iter()
            .map(|(c, e)| Ok((c, unqualify(e)?)))
            .collect::<DFResult<Vec<_>>>()?;
        let session = Self::session_arc(state);
        Ok(CountExec::new_plan("DeltaUpdateExec", move || {
            Box::pin(async move {
                let mut builder = table.update();
                if let Some(p) = predicate {
                    builder = builder.with_predicate(p);
                }
                for (col, expr) in assignments {
                    builder = builder.with_update(col.as_str(), expr);
                }
                if let Some(s) = session {
                    builder = builder.with_session_state(s);
                }
                let (_, metrics) = builder.await.map_err(external)?;
                Ok(metrics.num_updated_rows as u64)
            })
        }))
    }

    async fn truncate(&self, state: &dyn Session) -> DFResult<Arc<dyn ExecutionPlan>> {
        let table = self.table.clone();
        let session = Self::session_arc(state);
        Ok(CountExec::new_plan("DeltaTruncateExec", move || {
            Box::pin(async move {
                let mut builder = table.delete();
                if let Some(s) = session {
                    builder = builder.with_session_state(s);
                }
                let (_, metrics) = builder.await.map_err(external)?;
                Ok(metrics.num_deleted_rows.unwrap_or(0) as u64)
            })
        }))
    }
}

type CountFuture = BoxFuture<'static, DFResult<u64>>;
type CountFn = Box<dyn FnOnce() -> CountFuture + Send + Sync>;

/// A leaf plan that runs one operation when executed and yields `count: UInt64`.
pub struct CountExec {
    name: &'static str,
    op: std::sync::Mutex<Option<CountFn>>,
    properties: Arc<PlanProperties>,
}

impl CountExec {
    /// Wraps an operation; it runs at most once, on the first `execute`.
    pub fn new_plan(
        name: &'static str,
        op: impl FnOnce() -> CountFuture + Send + Sync + 'static,
    ) -> Arc<dyn ExecutionPlan> {
        let schema = count_schema();
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Arc::new(CountExec {
            name,
            op: std::sync::Mutex::new(Some(Box::new(op))),
            properties,
        })
    }
}

/// The rows a write plan reports: the sum of the `count` column of its result batches
/// (DataFusion's sinks and [`CountExec`] answer with one such row each).
pub fn affected_rows(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .filter_map(|b| b.column_by_name("count"))
        .filter_map(|c| c.as_any().downcast_ref::<UInt64Array>())
        .flat_map(|c| c.iter().flatten())
        .sum()
}

/// The schema of a DML result: one `count` column.
pub fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]))
}

impl fmt::Debug for CountExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)
    }
}

impl DisplayAs for CountExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.name)
    }
}

impl ExecutionPlan for CountExec {
    fn name(&self) -> &str {
        self.name
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let op = self
            .op
            .lock()
            .map_err(|_| DataFusionError::Internal("poisoned".into()))?
            .take()
            .ok_or_else(|| DataFusionError::Internal(format!("{} executed twice", self.name)))?;
        let schema = count_schema();
        let s = schema.clone();
        let stream = futures::stream::once(async move {
            let n = op().await?;
            RecordBatch::try_new(s, vec![Arc::new(UInt64Array::from(vec![n]))])
                .map_err(DataFusionError::from)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
