//! `identity_stitch(edges [, options])` as a DataFusion table function.
//!
//! DataFusion hands table functions values, not relations, so the function takes its edges
//! as one of:
//! - a table name as text, optionally schema- or catalog-qualified
//!   (`identity_stitch('web.identity_edges')`), checked to exist when the query is planned;
//! - a query as text (`identity_stitch('SELECT ... FROM ...')`), planned when the scan is.
//!
//! A subquery argument (`identity_stitch((SELECT a, b, c, d FROM t))`) does not reach the
//! function: DataFusion's SQL planner refuses a scalar subquery of more than one column
//! while planning the arguments. Giving the function a real relation needs a
//! `RelationPlanner` in the server; until then, query text does the same job.
//!
//! The output schema is fixed, so the input is only read (and its columns checked) when
//! the scan is planned, still before any row is produced. The operator reads the input's
//! Arrow batches into an [`IdentityGraph`], resolves it, and streams the assignment out in
//! batches; the graph's memory is reserved from the session's memory pool.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{
    Column, DataFusionError, Result, ScalarValue, SchemaError, TableReference,
};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, execute_stream,
};
use futures::{StreamExt, TryStreamExt};

use super::graph::{EDGE_COLUMNS, IdentityGraph, TIMESTAMP_COLUMNS};
use super::options::StitchOptions;

/// The `identity_stitch` table function. Register with
/// `ctx.register_udtf("identity_stitch", Arc::new(IdentityStitch))`.
#[derive(Debug, Default)]
pub struct IdentityStitch;

/// Where the edges come from, as resolved at planning time.
#[derive(Debug, Clone)]
enum EdgesSource {
    /// A catalog table: catalog, schema, table.
    Table {
        catalog: String,
        schema: String,
        table: String,
    },
    /// Query text, planned at scan time.
    Sql(String),
}

fn literal_text(e: &Expr) -> Option<&str> {
    match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Some(s.as_str()),
        Expr::Cast(c) => literal_text(&c.expr),
        Expr::TryCast(c) => literal_text(&c.expr),
        _ => None,
    }
}

fn looks_like_query(s: &str) -> bool {
    let first = s
        .trim_start()
        .trim_start_matches('(')
        .split_whitespace()
        .next()
        .unwrap_or("");
    ["select", "with", "values"]
        .iter()
        .any(|k| first.eq_ignore_ascii_case(k))
}

/// An error DataFusion (and tally's SQLSTATE mapping) reads as "relation does not exist".
fn no_relation(name: &str) -> DataFusionError {
    DataFusionError::Plan(format!(
        "identity_stitch: relation \"{name}\" does not exist (table '{name}' not found)"
    ))
}

/// Checks that `schema` has the edge columns; the error names the first missing one and
/// reads as an unknown column (SQLSTATE 42703).
fn check_columns(schema: &Schema) -> Result<()> {
    for c in EDGE_COLUMNS {
        if schema.field_with_name(c).is_err() {
            let err = DataFusionError::SchemaError(
                Box::new(SchemaError::FieldNotFound {
                    field: Box::new(Column::new_unqualified(c)),
                    valid_fields: schema
                        .fields()
                        .iter()
                        .map(|f| Column::new_unqualified(f.name()))
                        .collect(),
                }),
                Box::new(None),
            );
            return Err(err.context(format!(
                "identity_stitch: the edges have no column \"{c}\" (expected left_type, \
                 left_value, right_type, right_value and optionally event_ts)"
            )));
        }
    }
    Ok(())
}

impl TableFunctionImpl for IdentityStitch {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if exprs.is_empty() || exprs.len() > 2 {
            return Err(DataFusionError::Plan(format!(
                "identity_stitch(edges [, options]) takes 1 or 2 arguments, got {}",
                exprs.len()
            )));
        }
        let session = args.session();
        let source = match literal_text(&exprs[0]) {
            Some(s) if looks_like_query(s) => EdgesSource::Sql(s.to_string()),
            Some(name) => resolve_table(name, session)?,
            None => {
                return Err(DataFusionError::Plan(format!(
                    "identity_stitch: the edges argument must be a table name or a query, \
                     as text, got {}",
                    exprs[0]
                )));
            }
        };
        let options = match exprs.get(1) {
            None => StitchOptions::default(),
            Some(Expr::Literal(v, _)) if v.is_null() => StitchOptions::default(),
            Some(e) => match literal_text(e) {
                Some(json) => StitchOptions::from_json(json)
                    .map_err(|e| DataFusionError::Plan(e.to_string()))?,
                None => {
                    return Err(DataFusionError::Plan(format!(
                        "identity_stitch: invalid options: expected a JSON object as text, got {e}"
                    )));
                }
            },
        };
        Ok(Arc::new(IdentityStitchTable {
            source,
            options: Arc::new(options),
        }))
    }
}

fn resolve_table(name: &str, session: &dyn Session) -> Result<EdgesSource> {
    let r = TableReference::parse_str(name);
    let defaults = &session.config().options().catalog;
    let catalog = r.catalog().unwrap_or(&defaults.default_catalog).to_string();
    let schema = r.schema().unwrap_or(&defaults.default_schema).to_string();
    let table = r.table().to_string();
    let exists = session
        .catalog_list()
        .catalog(&catalog)
        .and_then(|c| c.schema(&schema))
        .is_some_and(|s| s.table_exist(&table));
    if !exists {
        return Err(no_relation(name));
    }
    Ok(EdgesSource::Table {
        catalog,
        schema,
        table,
    })
}

/// The relation `identity_stitch(...)` stands for: its edges source and options.
#[derive(Debug)]
pub struct IdentityStitchTable {
    source: EdgesSource,
    options: Arc<StitchOptions>,
}

/// The output schema: `identifier_type`, `identifier_value`, `profile_id`, `profile_size`.
pub fn output_schema() -> SchemaRef {
    let full = IdentityGraph::assignment_schema();
    // The first four columns of the assignment schema; projecting known indices cannot fail.
    Arc::new(
        full.project(&[0, 1, 2, 3])
            .unwrap_or_else(|_| (*full).clone()),
    )
}

#[async_trait]
impl TableProvider for IdentityStitchTable {
    fn schema(&self) -> SchemaRef {
        output_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = match &self.source {
            EdgesSource::Table {
                catalog,
                schema,
                table,
            } => {
                let qualified = format!("{schema}.{table}");
                let provider = state
                    .catalog_list()
                    .catalog(catalog)
                    .and_then(|c| c.schema(schema))
                    .ok_or_else(|| no_relation(&qualified))?
                    .table(table)
                    .await?
                    .ok_or_else(|| no_relation(&qualified))?;
                let table_schema = provider.schema();
                check_columns(&table_schema)?;
                let wanted: Vec<usize> = EDGE_COLUMNS
                    .iter()
                    .chain(TIMESTAMP_COLUMNS.iter())
                    .filter_map(|c| table_schema.index_of(c).ok())
                    .collect();
                provider.scan(state, Some(&wanted), &[], None).await?
            }
            EdgesSource::Sql(sql) => {
                let st = state
                    .as_any()
                    .downcast_ref::<datafusion::execution::SessionState>()
                    .ok_or_else(|| {
                        DataFusionError::NotImplemented(
                            "identity_stitch: a query given as text needs a DataFusion \
                             SessionState; pass a table name instead"
                                .into(),
                        )
                    })?;
                let plan = st.create_logical_plan(sql).await?;
                check_columns(plan.schema().as_arrow())?;
                state.create_physical_plan(&plan).await?
            }
        };
        Ok(Arc::new(IdentityStitchExec::new(
            input,
            self.options.clone(),
            projection.cloned(),
        )))
    }
}

/// The physical operator: reads every input batch into an [`IdentityGraph`], resolves it
/// and streams the assignment. One output partition; the input's partitions are merged.
#[derive(Debug)]
pub struct IdentityStitchExec {
    input: Arc<dyn ExecutionPlan>,
    options: Arc<StitchOptions>,
    projection: Option<Vec<usize>>,
    cache: Arc<PlanProperties>,
}

impl IdentityStitchExec {
    /// An operator over `input` (edge rows) producing the `projection` of the output schema.
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        options: Arc<StitchOptions>,
        projection: Option<Vec<usize>>,
    ) -> Self {
        let full = output_schema();
        let schema = match &projection {
            Some(p) => Arc::new(full.project(p).unwrap_or_else(|_| (*full).clone())),
            None => full,
        };
        let cache = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        IdentityStitchExec {
            input,
            options,
            projection,
            cache: Arc::new(cache),
        }
    }
}

impl DisplayAs for IdentityStitchExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "IdentityStitchExec")
    }
}

impl ExecutionPlan for IdentityStitchExec {
    fn name(&self) -> &str {
        "IdentityStitchExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children).map_err(|c| {
            DataFusionError::Internal(format!(
                "IdentityStitchExec takes one child, got {}",
                c.len()
            ))
        })?;
        Ok(Arc::new(IdentityStitchExec::new(
            input,
            self.options.clone(),
            self.projection.clone(),
        )))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "IdentityStitchExec has one partition, asked for {partition}"
            )));
        }
        let schema = self.schema();
        let input = self.input.clone();
        let options = (*self.options).clone();
        let projection = self.projection.clone();
        let batch_size = context.session_config().batch_size();
        let build = async move {
            let reservation =
                MemoryConsumer::new("identity_stitch").register(context.memory_pool());
            let mut edges = execute_stream(input, context)?;
            let mut graph = IdentityGraph::new(options);
            while let Some(batch) = edges.next().await {
                graph
                    .add_edges(&batch?)
                    .map_err(|e| DataFusionError::Execution(e.to_string()))?;
                reservation.try_resize(graph.memory_bytes())?;
            }
            let stats = graph.resolve();
            tracing::info!(
                identifiers = stats.identifiers,
                edges = stats.edges,
                hubs = stats.hubs,
                limited_components = stats.limited_components,
                refused_merges = stats.refused_merges,
                bytes = graph.memory_bytes(),
                "identity_stitch resolved"
            );
            let batches = graph
                .into_assignments(batch_size, projection)
                .map(|b| b.map_err(|e| DataFusionError::Execution(e.to_string())));
            // The reservation lives as long as the output stream.
            let out = futures::stream::iter(batches).map(move |b| {
                let _keep = &reservation;
                b
            });
            Ok::<_, DataFusionError>(out)
        };
        let stream = futures::stream::once(build).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
