//! `tally.routes` (one row per route: source, destination, query, options, paused) and
//! `tally.route_stats` (per route since the server started: delivered, failed, retried,
//! filtered, rejected, skipped, pending, lag, delivery latency, and the log kept for routes
//! against its budget, with an alarm column). Both are computed when a query scans them, so
//! they are always current.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{MemTable, Session as CatalogSession};
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::Registry;
use crate::catalog::CatalogStore;

/// Which of the two tables.
#[derive(Debug, Clone, Copy)]
enum Which {
    Routes,
    Stats,
}

/// A system table about routes.
#[derive(Debug)]
pub struct RouteTable {
    which: Which,
    catalog: Arc<CatalogStore>,
    registry: Arc<Registry>,
}

impl RouteTable {
    /// `tally.routes`.
    pub fn routes(catalog: Arc<CatalogStore>, registry: Arc<Registry>) -> Self {
        RouteTable {
            which: Which::Routes,
            catalog,
            registry,
        }
    }

    /// `tally.route_stats`.
    pub fn stats(catalog: Arc<CatalogStore>, registry: Arc<Registry>) -> Self {
        RouteTable {
            which: Which::Stats,
            catalog,
            registry,
        }
    }

    fn batch(&self) -> DFResult<RecordBatch> {
        match self.which {
            Which::Routes => self.routes_batch(),
            Which::Stats => self.stats_batch(),
        }
    }

    fn routes_batch(&self) -> DFResult<RecordBatch> {
        let doc = self.catalog.current();
        let r: Vec<_> = doc.routes.iter().collect();
        let text = |f: &dyn Fn(&crate::catalog::RouteEntry) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(r.iter().map(|(_, e)| f(e))))
        };
        let micros = |s: Option<&str>| {
            s.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.timestamp_micros())
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                r.iter().map(|(n, _)| n.as_str()),
            )),
            text(&|e| e.source.clone()),
            text(&|e| e.destination.clone()),
            text(&|e| e.query.clone()),
            text(&|e| serde_json::to_string(&e.options).unwrap_or_default()),
            Arc::new(BooleanArray::from(
                r.iter().map(|(_, e)| e.paused).collect::<Vec<_>>(),
            )),
            Arc::new(
                TimestampMicrosecondArray::from(
                    r.iter()
                        .map(|(_, e)| micros(Some(&e.created_at)))
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
        ];
        RecordBatch::try_new(self.schema(), columns).map_err(DataFusionError::from)
    }

    fn stats_batch(&self) -> DFResult<RecordBatch> {
        let doc = self.catalog.current();
        let names: Vec<&String> = doc.routes.keys().collect();
        let stats: Vec<_> = names
            .iter()
            .map(|n| self.registry.existing_stats(n))
            .collect();
        let wal = self.registry.wal();
        let retained = wal.as_ref().map(|w| w.disk_bytes() as i64).unwrap_or(0);
        let budget = wal
            .as_ref()
            .map(|w| w.retention_budget().min(i64::MAX as u64) as i64)
            .unwrap_or(0);
        let over = wal.as_ref().is_some_and(|w| w.over_budget());
        let now_us = chrono::Utc::now().timestamp_micros();
        let int = |f: &dyn Fn(&super::RouteStats) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(
                stats.iter().map(|s| s.as_ref().map(|s| f(s)).unwrap_or(0)),
            ))
        };
        let opt_int = |f: &dyn Fn(&super::RouteStats) -> Option<i64>| -> ArrayRef {
            Arc::new(Int64Array::from(
                stats
                    .iter()
                    .map(|s| s.as_ref().and_then(|s| f(s)))
                    .collect::<Vec<_>>(),
            ))
        };
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as i64;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                names.iter().map(|n| n.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(names.iter().zip(&stats).map(
                |(n, s)| {
                    if doc.routes.get(*n).is_some_and(|e| e.paused) {
                        "paused"
                    } else {
                        s.as_ref().map(|s| *s.state.lock()).unwrap_or("starting")
                    }
                },
            ))),
            int(&|s| load(&s.delivered)),
            int(&|s| load(&s.failed)),
            int(&|s| load(&s.retried)),
            int(&|s| load(&s.filtered)),
            int(&|s| load(&s.rejected)),
            int(&|s| load(&s.skipped)),
            int(&|s| load(&s.pending)),
            int(&|s| load(&s.lag_events)),
            int(&|s| {
                let oldest = s.oldest_unfinished_us.load(Ordering::Relaxed);
                if oldest > 0 {
                    (now_us - oldest).max(0) / 1000
                } else {
                    0
                }
            }),
            opt_int(&|s| s.latency_quantile(0.5).map(|v| v as i64)),
            opt_int(&|s| s.latency_quantile(0.99).map(|v| v as i64)),
            int(&|s| load(&s.requests)),
            Arc::new(
                TimestampMicrosecondArray::from(
                    stats
                        .iter()
                        .map(|s| {
                            s.as_ref()
                                .map(|s| s.last_delivered_us.load(Ordering::Relaxed))
                                .filter(|t| *t > 0)
                        })
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(
                stats
                    .iter()
                    .map(|s| s.as_ref().and_then(|s| s.last_error.lock().clone()))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from_iter_values(names.iter().map(|_| retained))),
            Arc::new(Int64Array::from_iter_values(names.iter().map(|_| budget))),
            Arc::new(BooleanArray::from(
                names
                    .iter()
                    .map(|_| over || (budget > 0 && retained > budget / 10 * 8))
                    .collect::<Vec<_>>(),
            )),
        ];
        RecordBatch::try_new(self.schema(), columns).map_err(DataFusionError::from)
    }
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

#[async_trait]
impl TableProvider for RouteTable {
    fn schema(&self) -> SchemaRef {
        match self.which {
            Which::Routes => Arc::new(Schema::new(vec![
                Field::new("name", DataType::Utf8, false),
                Field::new("source", DataType::Utf8, false),
                Field::new("destination", DataType::Utf8, false),
                Field::new("query", DataType::Utf8, false),
                Field::new("options", DataType::Utf8, false),
                Field::new("paused", DataType::Boolean, false),
                Field::new("created_at", ts(), true),
            ])),
            Which::Stats => Arc::new(Schema::new(vec![
                Field::new("route", DataType::Utf8, false),
                Field::new("state", DataType::Utf8, false),
                Field::new("delivered", DataType::Int64, false),
                Field::new("failed", DataType::Int64, false),
                Field::new("retried", DataType::Int64, false),
                Field::new("filtered", DataType::Int64, false),
                Field::new("rejected", DataType::Int64, false),
                Field::new("skipped", DataType::Int64, false),
                Field::new("pending", DataType::Int64, false),
                Field::new("lag_events", DataType::Int64, false),
                Field::new("lag_ms", DataType::Int64, false),
                Field::new("latency_p50_ms", DataType::Int64, true),
                Field::new("latency_p99_ms", DataType::Int64, true),
                Field::new("requests", DataType::Int64, false),
                Field::new("last_delivered_at", ts(), true),
                Field::new("last_error", DataType::Utf8, true),
                Field::new("wal_retained_bytes", DataType::Int64, false),
                Field::new("wal_budget_bytes", DataType::Int64, false),
                Field::new("wal_alarm", DataType::Boolean, false),
            ])),
        }
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let batch = self.batch()?;
        let mem = MemTable::try_new(self.schema(), vec![vec![batch]])?;
        mem.scan(state, projection, filters, limit).await
    }
}
