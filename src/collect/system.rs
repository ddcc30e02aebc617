//! The `tally` system schema's collection tables: `tally.sources` (one row per source, with
//! its write key and tracking plan), `tally.source_stats` (counters since the server
//! started, and the write-ahead log backlog) and `tally.tracking_plans`. All are computed
//! when a statement plans them, so they are always current.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray,
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
            Field::new("tracking_plan", DataType::Utf8, true),
            Field::new("tracking_plan_mode", DataType::Utf8, true),
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
                    s.clone()
                        .map(|(_, e)| e.key_rotated_at.as_deref().and_then(parse))
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter(
                s.clone()
                    .map(|(_, e)| e.tracking_plan.as_ref().map(|p| p.plan.as_str())),
            )),
            Arc::new(StringArray::from_iter(
                s.map(|(_, e)| e.tracking_plan.as_ref().map(|p| p.mode.as_str())),
            )),
        ];
        mem(schema, columns)
    }

    /// `tally.tracking_plans`: one row per plan, with the events it plans and the sources
    /// that use it.
    fn tracking_plans(&self) -> DFResult<Arc<dyn TableProvider>> {
        let doc = self.catalog.current();
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("events", text_list(), true),
            Field::new("event_count", DataType::Int64, false),
            Field::new("identify_traits", DataType::Boolean, false),
            Field::new("group_traits", DataType::Boolean, false),
            Field::new("allow_unplanned_events", DataType::Boolean, false),
            Field::new("sources", text_list(), true),
            Field::new("origin", DataType::Utf8, true),
            Field::new("created_at", ts(), true),
            Field::new("plan", DataType::Utf8, false),
        ]));
        let mut names = Vec::new();
        let mut events = ListBuilder::new(StringBuilder::new());
        let mut counts = Vec::new();
        let mut identify = Vec::new();
        let mut group = Vec::new();
        let mut unplanned = Vec::new();
        let mut sources = ListBuilder::new(StringBuilder::new());
        let mut origins = Vec::new();
        let mut created = Vec::new();
        let mut plans = Vec::new();
        for (name, entry) in &doc.tracking_plans {
            // Stored plans were checked at CREATE; one that no longer parses still shows.
            let parsed = super::plans::PlanDoc::parse(&entry.plan).ok();
            names.push(name.as_str());
            let event_names = parsed.as_ref().map(|p| p.event_names()).unwrap_or_default();
            counts.push(event_names.len() as i64);
            for e in event_names {
                events.values().append_value(e);
            }
            events.append(true);
            identify.push(parsed.as_ref().is_some_and(|p| p.identify.is_some()));
            group.push(parsed.as_ref().is_some_and(|p| p.group.is_some()));
            unplanned.push(parsed.as_ref().is_none_or(|p| p.allow_unplanned_events));
            for (source, s) in &doc.sources {
                if s.tracking_plan.as_ref().is_some_and(|p| &p.plan == name) {
                    sources.values().append_value(source);
                }
            }
            sources.append(true);
            origins.push(entry.origin.as_deref());
            created.push(
                chrono::DateTime::parse_from_rfc3339(&entry.created_at)
                    .ok()
                    .map(|t| t.timestamp_micros()),
            );
            plans.push(entry.plan.as_str());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names)),
            Arc::new(events.finish()),
            Arc::new(Int64Array::from(counts)),
            Arc::new(BooleanArray::from(identify)),
            Arc::new(BooleanArray::from(group)),
            Arc::new(BooleanArray::from(unplanned)),
            Arc::new(sources.finish()),
            Arc::new(StringArray::from(origins)),
            Arc::new(TimestampMicrosecondArray::from(created).with_timezone("UTC")),
            Arc::new(StringArray::from(plans)),
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
            Field::new("flagged", DataType::Int64, false),
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
            u(&|c| c.flagged.load(Ordering::Relaxed)),
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

/// `text[]`, as `ListBuilder<StringBuilder>` builds it.
fn text_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

fn mem(schema: SchemaRef, columns: Vec<ArrayRef>) -> DFResult<Arc<dyn TableProvider>> {
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(DataFusionError::from)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

const TABLES: &[&str] = &[
    "sources",
    "source_stats",
    "tracking_plans",
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
            "tracking_plans" => self.tracking_plans().map(Some),
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
