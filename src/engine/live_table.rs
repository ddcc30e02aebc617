//! A system table computed when a query scans it (`tally.secrets`, `tally.connections`): the
//! rows come from a closure over the current catalog and counters, so they are always
//! current without a table of their own.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemTable, Session as CatalogSession};
use datafusion::common::Result as DFResult;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// Builds the table's one batch, of the table's schema.
pub type BuildBatch = Arc<dyn Fn() -> DFResult<RecordBatch> + Send + Sync>;

/// See the module documentation.
pub struct LiveTable {
    schema: SchemaRef,
    build: BuildBatch,
}

impl std::fmt::Debug for LiveTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTable")
            .field("schema", &self.schema)
            .finish()
    }
}

impl LiveTable {
    /// A table of `schema` whose rows `build` computes at each scan.
    pub fn new(schema: SchemaRef, build: BuildBatch) -> Self {
        LiveTable { schema, build }
    }
}

#[async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let batch = (self.build)()?;
        let mem = MemTable::try_new(self.schema.clone(), vec![vec![batch]])?;
        mem.scan(state, projection, filters, limit).await
    }
}
