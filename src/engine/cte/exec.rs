//! Physical planning and execution of shared CTEs (see the [parent module](super)).
//!
//! Each [`CteRef`] becomes a [`CteScanExec`]; [`WithCtes`] becomes a [`MaterializeCtesExec`]
//! over the query, after its bodies are physically optimized and handed to their
//! [`SharedCte`]s. A [`SharedCte`] is created per CTE by the [`CtePlanner`] of one physical
//! planning, so a prepared statement's plan executed twice computes its CTEs twice, never
//! reusing rows across executions. The bodies are optimized at planning, not left as
//! children for the physical optimizer, because DataFusion runs a query's uncorrelated
//! scalar subqueries (which may read a CTE) before any node above them starts.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricsSet, SpillMetrics};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, SpillManager,
    displayable, execute_stream,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use deltalake::delta_datafusion::planner::DeltaExtensionPlanner;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use super::{CteRef, WithCtes};

/// tally's query planner: DataFusion's, with delta-rs's extension nodes (MERGE, writes) and
/// shared CTEs.
#[derive(Debug, Default)]
pub struct TallyQueryPlanner;

#[async_trait]
impl QueryPlanner for TallyQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let planners: Vec<Arc<dyn ExtensionPlanner + Send + Sync>> = vec![
            DeltaExtensionPlanner::new(),
            Arc::new(CtePlanner::default()),
        ];
        let planner = DefaultPhysicalPlanner::with_extension_planners(planners);
        planner.create_physical_plan(logical_plan, session).await
    }
}

/// Plans [`WithCtes`] and [`CteRef`]; one per physical planning, holding its CTEs by number.
#[derive(Debug, Default)]
pub struct CtePlanner {
    ctes: Mutex<HashMap<usize, Arc<SharedCte>>>,
}

impl CtePlanner {
    fn cte(&self, id: usize, name: &str) -> Arc<SharedCte> {
        let mut ctes = self.ctes.lock().unwrap_or_else(|e| e.into_inner());
        ctes.entry(id)
            .or_insert_with(|| {
                Arc::new(SharedCte {
                    name: name.to_string(),
                    body: OnceLock::new(),
                    rows: OnceCell::new(),
                })
            })
            .clone()
    }
}

#[async_trait]
impl ExtensionPlanner for CtePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        if let Some(with) = node.as_any().downcast_ref::<WithCtes>() {
            let (main, bodies) = physical_inputs
                .split_first()
                .ok_or_else(|| DataFusionError::Internal("WithCtes without its query".into()))?;
            let mut ctes = Vec::with_capacity(bodies.len());
            for ((&id, body), logical) in with.ids().iter().zip(bodies).zip(&logical_inputs[1..]) {
                let name = match logical {
                    LogicalPlan::SubqueryAlias(a) => a.alias.to_string(),
                    _ => format!("#{id}"),
                };
                let cte = self.cte(id, &name);
                // Optimized here, not as a child of the plan: uncorrelated scalar subqueries
                // run before any node of the query above them starts, and may read a CTE.
                let body = DefaultPhysicalPlanner::default().optimize_physical_plan(
                    body.clone(),
                    session,
                    |_, _| {},
                )?;
                let _ = cte.body.set(body);
                ctes.push(cte);
            }
            return Ok(Some(Arc::new(MaterializeCtesExec::new(ctes, main.clone()))));
        }
        if let Some(reference) = node.as_any().downcast_ref::<CteRef>() {
            let partitions = session.config().target_partitions().max(1);
            return Ok(Some(Arc::new(CteScanExec::new(
                self.cte(reference.id, &reference.name),
                reference.schema.inner().clone(),
                partitions,
            ))));
        }
        Ok(None)
    }
}

/// One shared CTE of one execution: its optimized body, once [`MaterializeCtesExec`] starts,
/// and its rows, once the first reader asked.
pub struct SharedCte {
    name: String,
    body: OnceLock<Arc<dyn ExecutionPlan>>,
    rows: OnceCell<Arc<Materialized>>,
}

impl fmt::Debug for SharedCte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedCte({})", self.name)
    }
}

/// A CTE's rows, dealt round-robin into one part per reading partition. Each part keeps
/// batches in memory while the memory pool grants them and the rest in a spill file.
struct Materialized {
    parts: Vec<Part>,
    spill: Option<SpillManager>,
    _reservation: MemoryReservation,
}

#[derive(Default)]
struct Part {
    batches: Vec<RecordBatch>,
    spilled: Option<Arc<dyn datafusion::execution::spill_file::SpillFile>>,
}

impl SharedCte {
    /// The CTE's rows, computing them on the first call; concurrent callers wait for it.
    async fn rows(
        &self,
        parts: usize,
        schema: &SchemaRef,
        context: &Arc<TaskContext>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> DFResult<Arc<Materialized>> {
        self.rows
            .get_or_try_init(|| async {
                let body = self.body.get().cloned().ok_or_else(|| {
                    DataFusionError::Internal(format!(
                        "CTE {} is read before its query started",
                        self.name
                    ))
                })?;
                materialize(&self.name, body, parts, schema, context, metrics)
                    .await
                    .map(Arc::new)
            })
            .await
            .cloned()
    }
}

/// Runs `body` to the end, keeping its batches in memory while the pool grants them and
/// writing the rest to one spill file per part.
async fn materialize(
    name: &str,
    body: Arc<dyn ExecutionPlan>,
    parts: usize,
    schema: &SchemaRef,
    context: &Arc<TaskContext>,
    metrics: &ExecutionPlanMetricsSet,
) -> DFResult<Materialized> {
    let reservation = MemoryConsumer::new(format!("CteScan[{name}]"))
        .with_can_spill(true)
        .register(context.memory_pool());
    let mut stream = execute_stream(body, context.clone())?;
    let mut out: Vec<Part> = (0..parts).map(|_| Part::default()).collect();
    let mut spill: Option<SpillManager> = None;
    let mut files = Vec::new();
    let mut next = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        // Body batches may carry the body's own field names; readers expect the CTE's.
        let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
        let part = next % parts;
        next += 1;
        if spill.is_none() && reservation.try_grow(batch.get_array_memory_size()).is_ok() {
            out[part].batches.push(batch);
            continue;
        }
        let manager = spill.get_or_insert_with(|| {
            SpillManager::new(
                context.runtime_env(),
                SpillMetrics::new(metrics, 0),
                schema.clone(),
            )
        });
        if files.is_empty() {
            for _ in 0..parts {
                files.push(manager.create_in_progress_file(&format!("CTE {name}"))?);
            }
        }
        files[part].append_batch(&batch)?;
    }
    for (part, file) in files.iter_mut().enumerate() {
        out[part].spilled = file.finish()?;
    }
    Ok(Materialized {
        parts: out,
        spill,
        _reservation: reservation,
    })
}

/// The query of a statement with shared CTEs. It only passes the query's rows through; it
/// is there so that EXPLAIN shows each shared body once, the way it runs.
#[derive(Debug)]
pub struct MaterializeCtesExec {
    ctes: Vec<Arc<SharedCte>>,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl MaterializeCtesExec {
    fn new(ctes: Vec<Arc<SharedCte>>, input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = input.properties().clone();
        MaterializeCtesExec {
            ctes,
            input,
            properties,
        }
    }
}

impl DisplayAs for MaterializeCtesExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let names: Vec<&str> = self.ctes.iter().map(|c| c.name.as_str()).collect();
        write!(f, "MaterializeCtesExec: ctes=[{}]", names.join(", "))?;
        if matches!(t, DisplayFormatType::TreeRender) {
            return Ok(());
        }
        for cte in &self.ctes {
            if let Some(body) = cte.body.get() {
                write!(f, "\n  CTE {}:", cte.name)?;
                for line in displayable(body.as_ref()).indent(false).to_string().lines() {
                    write!(f, "\n    {line}")?;
                }
            }
        }
        Ok(())
    }
}

impl ExecutionPlan for MaterializeCtesExec {
    fn name(&self) -> &str {
        "MaterializeCtesExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
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
            .ok_or_else(|| DataFusionError::Internal("MaterializeCtesExec has one input".into()))?;
        Ok(Arc::new(MaterializeCtesExec::new(self.ctes.clone(), input)))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}

/// Reads a shared CTE: partition `p` yields part `p` of its rows, computing them first if no
/// other reader has.
#[derive(Debug)]
pub struct CteScanExec {
    cte: Arc<SharedCte>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl CteScanExec {
    fn new(cte: Arc<SharedCte>, schema: SchemaRef, partitions: usize) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        CteScanExec {
            cte,
            schema,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for CteScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CteScanExec: cte={}", self.cte.name)
    }
}

impl ExecutionPlan for CteScanExec {
    fn name(&self) -> &str {
        "CteScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let parts = self.properties.partitioning.partition_count();
        let cte = self.cte.clone();
        let schema = self.schema.clone();
        let metrics = self.metrics.clone();
        let rows = futures::stream::once(async move {
            let rows = cte.rows(parts, &schema, &context, &metrics).await?;
            let part = rows.parts.get(partition).ok_or_else(|| {
                DataFusionError::Internal(format!("CTE {} has no part {partition}", cte.name))
            })?;
            let memory = futures::stream::iter(part.batches.clone().into_iter().map(Ok));
            let spilled = match (&part.spilled, &rows.spill) {
                (Some(file), Some(manager)) => {
                    manager.read_spill_as_stream(file.clone(), None)?.boxed()
                }
                _ => futures::stream::empty().boxed(),
            };
            Ok::<_, DataFusionError>(memory.chain(spilled))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            rows,
        )))
    }
}
