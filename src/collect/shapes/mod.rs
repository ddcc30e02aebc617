//! Learned validation: what a source's events usually look like, learned from its tables,
//! and the days and properties that depart from it.
//!
//! - `learn_event_shapes('<source>' [, since => ts])`: per track event and property, the
//!   column type, how often the property is present, on how many days, and the event's
//!   median daily volume (and its MAD).
//! - `event_anomalies('<source>' [, since => ts] [, threshold => 3.5])`: per event and day,
//!   a property seen for the first time (`unseen_property`), a usually-present property
//!   missing (`missing_property`), values of another type than the property's column
//!   (`type_change`), and a volume beyond a robust threshold (`volume`). See [`anomalies`].
//!
//! Both read the per-event tables of the layout (`<source>.order_completed`, ...; any table
//! of the source's schema with `event_text` and `timestamp` columns), one aggregate query
//! per table: events and non-null values per property per UTC day of the event's
//! `timestamp`, from `since` on (all history when not given). A property's values of
//! another type than its column live in the sibling column `<property>_text`
//! ([`super::layout`]); they count as present, and as a type change. The results are small
//! tables analysts can query, join, `CREATE TABLE ... AS` or sync.

pub mod anomalies;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DataFusionError, Result as DFResult, ScalarValue, TableReference};
use datafusion::execution::SessionState;
use datafusion::functions::expr_fn::{coalesce, date_trunc};
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::{ident, lit};
use datafusion::prelude::SessionContext;
use futures::FutureExt;

use super::layout::{COMMON_COLUMNS, ColType, RESERVED_TABLES, VIOLATIONS_COLUMN};
use super::table_fn::{ComputedTable, arg_error, check_source, number_arg, text_arg, time_arg};
use crate::catalog::{CatalogStore, DATABASE, Relation};

/// Microseconds in a day.
const DAY_US: i64 = 86_400_000_000;

/// A property column of an event table.
#[derive(Debug, Clone, PartialEq)]
pub struct Property {
    /// Column name.
    pub name: String,
    /// Column type (`text`, `number`, `boolean`, `timestamp`, or the Arrow type).
    pub ty: String,
    /// The text sibling column holding values of another type, if the table has one.
    pub sibling: Option<String>,
}

/// One day of one event: events, and per property (in [`EventHistory::properties`] order)
/// values in the property's column and in its sibling.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Day {
    /// Events that day.
    pub events: i64,
    /// Non-null values in each property's column.
    pub present: Vec<i64>,
    /// Non-null values in each property's sibling column (another type).
    pub conflicts: Vec<i64>,
}

/// The daily history of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventHistory {
    /// Event name as sent.
    pub event: String,
    /// Its table.
    pub table: String,
    /// Its property columns.
    pub properties: Vec<Property>,
    /// Days (days since the epoch, UTC) with events.
    pub days: BTreeMap<i64, Day>,
}

impl EventHistory {
    /// Events per day from the event's first day to `last_day`, days without events as 0.
    pub fn daily_volume(&self, last_day: i64) -> Vec<(i64, i64)> {
        let Some(first) = self.days.keys().next().copied() else {
            return Vec::new();
        };
        (first..=last_day.max(first))
            .map(|d| (d, self.days.get(&d).map_or(0, |x| x.events)))
            .collect()
    }
}

/// The median of `v` (0 for none).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// The median absolute deviation of `v` from `center`.
pub fn mad(v: &[f64], center: f64) -> f64 {
    let dev: Vec<f64> = v.iter().map(|x| (x - center).abs()).collect();
    median(&dev)
}

fn type_name(t: &DataType) -> String {
    match ColType::from_arrow(t) {
        Some(ColType::Text) => "text".into(),
        Some(ColType::Number) => "number".into(),
        Some(ColType::Bool) => "boolean".into(),
        Some(ColType::Time) => "timestamp".into(),
        None => t.to_string().to_ascii_lowercase(),
    }
}

/// The property columns of an event table with columns `schema`: everything but the
/// layout's own columns and the text siblings of typed columns.
pub fn properties_of(schema: &Schema) -> Vec<Property> {
    let names: std::collections::HashMap<&str, &DataType> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type()))
        .collect();
    let own = |n: &str| {
        COMMON_COLUMNS.contains(&n)
            || n.starts_with("context_")
            || matches!(n, "event" | "event_text" | VIOLATIONS_COLUMN)
    };
    let is_sibling = |n: &str| {
        n.strip_suffix("_text").is_some_and(|base| {
            names
                .get(base)
                .is_some_and(|t| ColType::from_arrow(t) != Some(ColType::Text))
        }) || n == "event_text"
    };
    schema
        .fields()
        .iter()
        .filter(|f| !own(f.name()) && !is_sibling(f.name()))
        .map(|f| {
            let sib = format!("{}_text", f.name());
            let sibling = (ColType::from_arrow(f.data_type()) != Some(ColType::Text)
                && names.contains_key(sib.as_str()))
            .then_some(sib);
            Property {
                name: f.name().clone(),
                ty: type_name(f.data_type()),
                sibling,
            }
        })
        .collect()
}

fn int_column(batch: &RecordBatch, name: &str) -> DFResult<Int64Array> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| DataFusionError::Internal(format!("shape query lost column {name}")))?;
    let arr = cast(col, &DataType::Int64)?;
    Ok(arr
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .unwrap_or_else(|| Int64Array::new_null(arr.len())))
}

/// Reads the daily history of every track event of `source` (from `since`, microseconds),
/// with the last day any of them was seen.
pub async fn histories(
    catalog: &CatalogStore,
    state: &SessionState,
    source: &str,
    since: Option<i64>,
) -> DFResult<(Vec<EventHistory>, Option<i64>)> {
    let doc = catalog.current();
    let tables: Vec<String> = doc
        .schemas
        .get(source)
        .map(|s| {
            s.relations
                .iter()
                .filter(|(n, r)| {
                    matches!(r, Relation::Table(_)) && !RESERVED_TABLES.contains(&n.as_str())
                })
                .map(|(n, _)| n.clone())
                .collect()
        })
        .unwrap_or_default();
    let ctx = SessionContext::new_with_state(state.clone());
    let mut out = Vec::new();
    let mut last_day: Option<i64> = None;
    for table in tables {
        let df = ctx
            .table(TableReference::full(DATABASE, source, table.as_str()))
            .await?;
        let schema = df.schema().as_arrow().clone();
        let has = |c: &str| schema.field_with_name(c).is_ok();
        if !has("event_text") || !has("timestamp") {
            continue;
        }
        let properties = properties_of(&schema);
        let ts = if has("received_at") {
            coalesce(vec![ident("timestamp"), ident("received_at")])
        } else {
            ident("timestamp")
        };
        let mut df = df;
        if let Some(us) = since {
            df = df.filter(ts.clone().gt_eq(lit(ScalarValue::TimestampMicrosecond(
                Some(us),
                Some("UTC".into()),
            ))))?;
        }
        let mut aggs = vec![count(lit(1)).alias("__n")];
        for (i, p) in properties.iter().enumerate() {
            aggs.push(count(ident(&p.name)).alias(format!("__p{i}")));
            if let Some(s) = &p.sibling {
                aggs.push(count(ident(s)).alias(format!("__t{i}")));
            }
        }
        let df = df.aggregate(
            vec![
                ident("event_text").alias("__event"),
                date_trunc(lit("day"), ts).alias("__day"),
            ],
            aggs,
        )?;
        let batches = df.collect().await?;
        let mut by_event: BTreeMap<String, EventHistory> = BTreeMap::new();
        for b in &batches {
            let events = cast(
                b.column_by_name("__event").ok_or_else(|| {
                    DataFusionError::Internal("shape query lost its event column".into())
                })?,
                &DataType::Utf8,
            )?;
            let events = events
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .unwrap_or_else(|| StringArray::new_null(b.num_rows()));
            let day_col = b.column_by_name("__day").ok_or_else(|| {
                DataFusionError::Internal("shape query lost its day column".into())
            })?;
            let days = cast(
                &cast(day_col, &DataType::Timestamp(TimeUnit::Microsecond, None))?,
                &DataType::Int64,
            )?;
            let days = days
                .as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .unwrap_or_else(|| Int64Array::new_null(b.num_rows()));
            let n = int_column(b, "__n")?;
            let present: Vec<Int64Array> = (0..properties.len())
                .map(|i| int_column(b, &format!("__p{i}")))
                .collect::<DFResult<_>>()?;
            let conflicts: Vec<Option<Int64Array>> = properties
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    p.sibling
                        .as_ref()
                        .map(|_| int_column(b, &format!("__t{i}")))
                        .transpose()
                })
                .collect::<DFResult<_>>()?;
            for row in 0..b.num_rows() {
                if events.is_null(row) || days.is_null(row) {
                    continue;
                }
                let day = days.value(row).div_euclid(DAY_US);
                last_day = Some(last_day.map_or(day, |l| l.max(day)));
                let h = by_event
                    .entry(events.value(row).to_string())
                    .or_insert_with(|| EventHistory {
                        event: events.value(row).to_string(),
                        table: table.clone(),
                        properties: properties.clone(),
                        days: BTreeMap::new(),
                    });
                let d = h.days.entry(day).or_insert_with(|| Day {
                    events: 0,
                    present: vec![0; properties.len()],
                    conflicts: vec![0; properties.len()],
                });
                d.events += n.value(row);
                for i in 0..properties.len() {
                    d.present[i] += present[i].value(row);
                    if let Some(c) = &conflicts[i] {
                        d.conflicts[i] += c.value(row);
                    }
                }
            }
        }
        out.extend(by_event.into_values());
    }
    out.sort_by(|a, b| a.event.cmp(&b.event).then(a.table.cmp(&b.table)));
    Ok((out, last_day))
}

/// `learn_event_shapes`' columns.
pub fn shapes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, true),
        Field::new("property", DataType::Utf8, true),
        Field::new("type", DataType::Utf8, true),
        Field::new("present", DataType::Int64, true),
        Field::new("events", DataType::Int64, true),
        Field::new("presence_rate", DataType::Float64, true),
        Field::new("days_seen", DataType::Int64, true),
        Field::new("event_days", DataType::Int64, true),
        Field::new("median_daily_volume", DataType::Float64, true),
        Field::new("mad_daily_volume", DataType::Float64, true),
        Field::new("conflicting_values", DataType::Int64, true),
        Field::new("first_seen", DataType::Date32, true),
        Field::new("last_seen", DataType::Date32, true),
    ]))
}

/// The shapes of `histories`: one row per event and property (one with a null property
/// for an event without properties).
pub fn shapes(histories: &[EventHistory], last_day: Option<i64>) -> DFResult<RecordBatch> {
    let mut event = Vec::new();
    let mut table = Vec::new();
    let mut property: Vec<Option<String>> = Vec::new();
    let mut ty: Vec<Option<String>> = Vec::new();
    let mut present = Vec::new();
    let mut events = Vec::new();
    let mut rate = Vec::new();
    let mut days_seen = Vec::new();
    let mut event_days = Vec::new();
    let mut med = Vec::new();
    let mut mads = Vec::new();
    let mut conflicting = Vec::new();
    let mut first: Vec<Option<i32>> = Vec::new();
    let mut last: Vec<Option<i32>> = Vec::new();
    for h in histories {
        let total: i64 = h.days.values().map(|d| d.events).sum();
        let volume: Vec<f64> = h
            .daily_volume(last_day.unwrap_or(0))
            .iter()
            .map(|(_, n)| *n as f64)
            .collect();
        let m = median(&volume);
        let spread = mad(&volume, m);
        let mut push = |p: Option<&Property>, i: usize| {
            event.push(h.event.clone());
            table.push(h.table.clone());
            events.push(total);
            event_days.push(h.days.len() as i64);
            med.push(m);
            mads.push(spread);
            let Some(p) = p else {
                property.push(None);
                ty.push(None);
                present.push(None);
                rate.push(None);
                days_seen.push(None);
                conflicting.push(None);
                first.push(h.days.keys().next().map(|d| *d as i32));
                last.push(h.days.keys().next_back().map(|d| *d as i32));
                return;
            };
            let seen: Vec<i64> = h
                .days
                .iter()
                .filter(|(_, d)| d.present[i] + d.conflicts[i] > 0)
                .map(|(day, _)| *day)
                .collect();
            let n: i64 = h
                .days
                .values()
                .map(|d| (d.present[i] + d.conflicts[i]).min(d.events))
                .sum();
            property.push(Some(p.name.clone()));
            ty.push(Some(p.ty.clone()));
            present.push(Some(n));
            rate.push((total > 0).then(|| n as f64 / total as f64));
            days_seen.push(Some(seen.len() as i64));
            conflicting.push(Some(h.days.values().map(|d| d.conflicts[i]).sum::<i64>()));
            first.push(seen.first().map(|d| *d as i32));
            last.push(seen.last().map(|d| *d as i32));
        };
        if h.properties.is_empty() {
            push(None, 0);
        }
        for (i, p) in h.properties.iter().enumerate() {
            push(Some(p), i);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(event)),
        Arc::new(StringArray::from(table)),
        Arc::new(StringArray::from(property)),
        Arc::new(StringArray::from(ty)),
        Arc::new(Int64Array::from(present)),
        Arc::new(Int64Array::from(events)),
        Arc::new(Float64Array::from(rate)),
        Arc::new(Int64Array::from(days_seen)),
        Arc::new(Int64Array::from(event_days)),
        Arc::new(Float64Array::from(med)),
        Arc::new(Float64Array::from(mads)),
        Arc::new(Int64Array::from(conflicting)),
        Arc::new(Date32Array::from(first)),
        Arc::new(Date32Array::from(last)),
    ];
    Ok(RecordBatch::try_new(shapes_schema(), columns)?)
}

/// The `learn_event_shapes` table function.
#[derive(Debug)]
pub struct LearnEventShapes {
    catalog: Arc<CatalogStore>,
}

impl LearnEventShapes {
    /// The function over the catalog's sources.
    pub fn new(catalog: Arc<CatalogStore>) -> Self {
        LearnEventShapes { catalog }
    }
}

impl TableFunctionImpl for LearnEventShapes {
    fn call_with_args(&self, args: TableFunctionArgs) -> DFResult<Arc<dyn TableProvider>> {
        const NAME: &str = "learn_event_shapes";
        let exprs = args.exprs();
        if exprs.is_empty() || exprs.len() > 2 {
            return Err(arg_error(
                NAME,
                format!(
                    "takes the source and optionally since => timestamp, got {} arguments",
                    exprs.len()
                ),
            ));
        }
        let source = text_arg(args.session(), NAME, exprs, 0, "the source")?;
        check_source(&self.catalog, &source)?;
        let since = time_arg(args.session(), NAME, exprs, 1, "since")?;
        let catalog = self.catalog.clone();
        Ok(Arc::new(ComputedTable::new(
            NAME,
            shapes_schema(),
            Arc::new(move |state: SessionState| {
                let (catalog, source) = (catalog.clone(), source.clone());
                async move {
                    let (h, last) = histories(&catalog, &state, &source, since).await?;
                    shapes(&h, last)
                }
                .boxed()
            }),
        )))
    }
}

/// The `event_anomalies` table function.
#[derive(Debug)]
pub struct EventAnomalies {
    catalog: Arc<CatalogStore>,
}

impl EventAnomalies {
    /// The function over the catalog's sources.
    pub fn new(catalog: Arc<CatalogStore>) -> Self {
        EventAnomalies { catalog }
    }
}

impl TableFunctionImpl for EventAnomalies {
    fn call_with_args(&self, args: TableFunctionArgs) -> DFResult<Arc<dyn TableProvider>> {
        const NAME: &str = "event_anomalies";
        let exprs = args.exprs();
        if exprs.is_empty() || exprs.len() > 3 {
            return Err(arg_error(
                NAME,
                format!(
                    "takes the source and optionally since => timestamp and threshold => number, got {} arguments",
                    exprs.len()
                ),
            ));
        }
        let source = text_arg(args.session(), NAME, exprs, 0, "the source")?;
        check_source(&self.catalog, &source)?;
        let since = time_arg(args.session(), NAME, exprs, 1, "since")?;
        let threshold = number_arg(args.session(), NAME, exprs, 2, "threshold")?
            .unwrap_or(anomalies::DEFAULT_THRESHOLD);
        if threshold <= 0.0 {
            return Err(arg_error(NAME, "threshold must be positive"));
        }
        let catalog = self.catalog.clone();
        Ok(Arc::new(ComputedTable::new(
            NAME,
            anomalies::schema(),
            Arc::new(move |state: SessionState| {
                let (catalog, source) = (catalog.clone(), source.clone());
                async move {
                    let (h, last) = histories(&catalog, &state, &source, since).await?;
                    anomalies::batch(&anomalies::detect(&h, last, threshold))
                }
                .boxed()
            }),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn robust_statistics() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let v = [10.0, 12.0, 11.0, 9.0, 100.0];
        let m = median(&v);
        assert_eq!(m, 11.0);
        assert_eq!(mad(&v, m), 1.0);
    }

    #[test]
    fn property_columns_leave_out_the_layout_and_siblings() {
        let s = Schema::new(vec![
            Field::new("message_id", DataType::Utf8, true),
            Field::new("timestamp", DataType::Int64, true),
            Field::new("event", DataType::Utf8, true),
            Field::new("event_text", DataType::Utf8, true),
            Field::new("context_ip", DataType::Utf8, true),
            Field::new("violations", DataType::Utf8, true),
            Field::new("total", DataType::Float64, true),
            Field::new("total_text", DataType::Utf8, true),
            Field::new("coupon", DataType::Utf8, true),
            Field::new("coupon_text", DataType::Utf8, true),
        ]);
        let p = properties_of(&s);
        assert_eq!(
            p,
            vec![
                Property {
                    name: "total".into(),
                    ty: "number".into(),
                    sibling: Some("total_text".into())
                },
                Property {
                    name: "coupon".into(),
                    ty: "text".into(),
                    sibling: None
                },
                // The sibling of a text column cannot exist, so this one is a property.
                Property {
                    name: "coupon_text".into(),
                    ty: "text".into(),
                    sibling: None
                },
            ]
        );
    }
}
