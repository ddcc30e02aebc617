//! The `tally` system schema's collection tables: `tally.sources` (one row per source, with
//! its write key) and `tally.source_stats` (counters since the server started, and the
//! write-ahead log backlog). Both are computed when a statement plans them, so they are
//! always current.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{MemTable, SchemaProvider};
use datafusion::common::{DataFusionError, Result as DFResult};
use datafusion::datasource::TableProvider;

use super::Stats;
use crate::catalog::CatalogStore;

/// The `tally` schema: tables about tally itself.
pub struct TallySchema {
    catalog: Arc<CatalogStore>,
    stats: Arc<Stats>,
    extra: parking_lot::RwLock<BTreeMap<String, Arc<dyn TableProvider>>>,
}

impl std::fmt::Debug for TallySchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TallySchema")
    }
}

impl TallySchema {
    /// The schema over the catalog and the collector's counters.
    pub fn new(catalog: Arc<CatalogStore>, stats: Arc<Stats>) -> Self {
        TallySchema {
            catalog,
            stats,
            extra: Default::default(),
        }
    }

    fn sources(&self) -> DFResult<Arc<dyn TableProvider>> {
        let doc = self.catalog.current();
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, false),
            Field::new("write_key", DataType::Utf8, false),
            Field::new("schema_name", DataType::Utf8, false),
            Field::new("created_at", ts(), true),
            Field::new("key_rotated_at", ts(), true),
        ]));
        let parse = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.timestamp_micros())
        };
        let s = doc.sources.iter();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                s.clone().map(|(n, _)| n.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                s.clone().map(|(_, e)| e.source_type.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                s.clone().map(|(_, e)| e.write_key.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                s.clone().map(|(n, _)| n.as_str()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from(
                    s.clone()
                        .map(|(_, e)| parse(&e.created_at))
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from(
                    s.map(|(_, e)| e.key_rotated_at.as_deref().and_then(parse))
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
        ];
        mem(schema, columns)
    }

    fn source_stats(&self) -> DFResult<Arc<dyn TableProvider>> {
        let doc = self.catalog.current();
        let counters = self.stats.snapshot();
        let mut names: Vec<String> = doc.sources.keys().cloned().collect();
        for (n, _) in &counters {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        names.sort();
        let by_name: BTreeMap<_, _> = counters.into_iter().collect();
        let get = |n: &str, f: &dyn Fn(&super::SourceCounters) -> u64| {
            by_name.get(n).map(|c| f(c) as i64).unwrap_or(0)
        };
        let time = |n: &str, f: &dyn Fn(&super::SourceCounters) -> i64| {
            by_name.get(n).map(|c| f(c)).filter(|t| *t > 0)
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("source", DataType::Utf8, false),
            Field::new("accepted", DataType::Int64, false),
            Field::new("rejected", DataType::Int64, false),
            Field::new("duplicates", DataType::Int64, false),
            Field::new("flushed", DataType::Int64, false),
            Field::new("bytes_received", DataType::Int64, false),
            Field::new("last_received_at", ts(), true),
            Field::new("last_flushed_at", ts(), true),
        ]));
        let u = |f: &dyn Fn(&super::SourceCounters) -> u64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(
                names.iter().map(|n| get(n, f)),
            ))
        };
        let t = |f: &dyn Fn(&super::SourceCounters) -> i64| -> ArrayRef {
            Arc::new(
                TimestampMicrosecondArray::from(
                    names.iter().map(|n| time(n, f)).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            )
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(names.iter())),
            u(&|c| c.accepted.load(Ordering::Relaxed)),
            u(&|c| c.rejected.load(Ordering::Relaxed)),
            u(&|c| c.duplicates.load(Ordering::Relaxed)),
            u(&|c| c.flushed.load(Ordering::Relaxed)),
            u(&|c| c.bytes.load(Ordering::Relaxed)),
            t(&|c| c.last_received_us.load(Ordering::Relaxed)),
            t(&|c| c.last_flushed_us.load(Ordering::Relaxed)),
        ];
        mem(schema, columns)
    }
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn mem(schema: SchemaRef, columns: Vec<ArrayRef>) -> DFResult<Arc<dyn TableProvider>> {
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(DataFusionError::from)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

const TABLES: &[&str] = &[
    "sources",
    "source_stats",
    "identity_graphs",
    "destinations",
    "rejected_rows",
    "syncs",
    "sync_runs",
];

#[async_trait]
impl SchemaProvider for TallySchema {
    fn table_names(&self) -> Vec<String> {
        let mut v: Vec<String> = TABLES.iter().map(|s| s.to_string()).collect();
        v.extend(self.extra.read().keys().cloned());
        v
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        match name {
            "sources" => self.sources().map(Some),
            "source_stats" => self.source_stats().map(Some),
            "identity_graphs" => {
                crate::identity::system::identity_graphs_table(&self.catalog.current()).map(Some)
            }
            "destinations" => {
                crate::activate::system::destinations_table(&self.catalog.current()).map(Some)
            }
            "syncs" => crate::activate::syncs::syncs_table(&self.catalog.current()).map(Some),
            "sync_runs" => crate::activate::runs::table(self.catalog.warehouse())
                .await
                .map(Some),
            "rejected_rows" => crate::activate::rejected::table(self.catalog.warehouse())
                .await
                .map(Some),
            other => Ok(self.extra.read().get(other).cloned()),
        }
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> DFResult<Option<Arc<dyn TableProvider>>> {
        Ok(self.extra.write().insert(name, table))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name) || self.extra.read().contains_key(name)
    }
}
