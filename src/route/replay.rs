//! `REPLAY ROUTE name FROM 'ts' [TO 'ts']`: re-sends a time range of a route's source from
//! the warehouse tables (for a new destination, or after fixing one), through the route's
//! query, with the events' own messageIds, so a destination that de-duplicates by them
//! applies each event once.
//!
//! The tables hold the events laid out for analysis (`identifies`, `pages`, `screens`,
//! `groups`, `aliases`, and one table per track event with its properties as columns), so
//! each row is turned back into a message: the common columns become the message's fields,
//! `context_*` columns its `context`, and the remaining columns its `properties` (`traits`
//! for identify and group). Nested objects come back flattened (`context.page.url` as
//! `context.page_url`): the tables do not keep the nesting. The tables are read sorted by
//! `timestamp` and merged, so events go out in time order (per user, as live), a bounded
//! micro-batch at a time. A replay runs in the statement: it answers when done, with counts.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::memory::MemoryStream;
use futures::StreamExt;
use serde_json::{Map, Value};

use super::RouteError;
use super::events::{Event, Transformer};
use super::runner::RouteOptions;
use crate::activate::delivery::{Deliverer, RetryPolicy};
use crate::activate::destinations::{self, Record};
use crate::activate::rejected;
use crate::catalog::Relation;
use crate::collect::layout::RESERVED_TABLES;
use crate::collect::message::{format_time, parse_time};
use crate::engine::Session;
use crate::error::{Result, TallyError, unwrap_datafusion};
use crate::statements::Output;

/// Events per micro-batch of a replay.
const MICRO_BATCH: usize = 1_000;

/// Parses a replay bound: RFC 3339, or `YYYY-MM-DD[ HH:MM:SS[.fff]]` in UTC.
pub fn parse_bound(text: &str) -> std::result::Result<DateTime<Utc>, RouteError> {
    let t = text.trim();
    if let Some(v) = parse_time(&Value::String(t.to_string())) {
        return Ok(v);
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, f) {
            return Ok(n.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d")
        && let Some(n) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(n.and_utc());
    }
    Err(RouteError::BadTimestamp(format!(
        "invalid input syntax for type timestamp: \"{t}\" (use '2024-05-01T00:00:00Z' or '2024-05-01 00:00:00')"
    )))
}

/// The message type of the events in `table`.
fn kind_of(table: &str) -> &'static str {
    match table {
        "identifies" => "identify",
        "pages" => "page",
        "screens" => "screen",
        "groups" => "group",
        "aliases" => "alias",
        _ => "track",
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A row of an event table back as a message.
fn message_of(kind: &str, row: Map<String, Value>) -> Option<(i64, Map<String, Value>)> {
    let mut body = Map::new();
    let mut context = Map::new();
    let mut payload = Map::new();
    let mut texts = Vec::new();
    body.insert("type".into(), Value::String(kind.into()));
    for (col, v) in row {
        let field = match col.as_str() {
            "message_id" => "messageId",
            "user_id" => "userId",
            "anonymous_id" => "anonymousId",
            "group_id" => "groupId",
            "previous_id" => "previousId",
            "timestamp" => "timestamp",
            "original_timestamp" => "originalTimestamp",
            "sent_at" => "sentAt",
            "received_at" => "receivedAt",
            "event_text" => "event",
            "name" | "category" if kind == "page" || kind == "screen" => col.as_str(),
            // `violations` is a tracking plan's verdict, not part of the message.
            "event" | "loaded_at" | "violations" => continue,
            _ => {
                if v.is_null() {
                    continue;
                }
                if let Some(c) = col.strip_prefix("context_") {
                    context.insert(c.to_string(), v);
                } else if let Some(base) = col.strip_suffix("_text") {
                    texts.push((base.to_string(), v));
                } else {
                    let name = col
                        .strip_prefix("property_")
                        .or_else(|| col.strip_prefix("trait_"))
                        .unwrap_or(&col);
                    payload.insert(name.to_string(), v);
                }
                continue;
            }
        };
        if !v.is_null() {
            body.insert(field.into(), v);
        }
    }
    // A value kept as text beside a column of another type is the event's value.
    for (base, v) in texts {
        payload.entry(base).or_insert(v);
    }
    for key in ["timestamp", "originalTimestamp", "sentAt", "receivedAt"] {
        if let Some(t) = body.get(key).and_then(parse_time) {
            body.insert(key.into(), Value::String(format_time(t)));
        }
    }
    if !context.is_empty() {
        body.insert("context".into(), Value::Object(context));
    }
    if !payload.is_empty() {
        let key = if kind == "identify" || kind == "group" {
            "traits"
        } else {
            "properties"
        };
        body.insert(key.into(), Value::Object(payload));
    }
    let ts = body
        .get("timestamp")
        .and_then(parse_time)
        .map(|t| t.timestamp_micros())
        .unwrap_or(0);
    body.contains_key("messageId").then_some((ts, body))
}

/// One table's rows in time order.
struct Reader {
    kind: &'static str,
    stream: SendableRecordBatchStream,
    buf: VecDeque<(i64, Map<String, Value>)>,
    done: bool,
}

impl Reader {
    async fn fill(&mut self) -> Result<()> {
        while self.buf.is_empty() && !self.done {
            match self.stream.next().await {
                None => self.done = true,
                Some(batch) => {
                    let batch = batch.map_err(unwrap_datafusion)?;
                    let mapping = crate::activate::rows::Mapping::new(&batch.schema(), None, None)?;
                    for r in mapping.records(&batch, 0)? {
                        if let Some(m) = message_of(self.kind, r.fields) {
                            self.buf.push_back(m);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// What a replay did.
#[derive(Debug, Default)]
struct Counts {
    events: u64,
    filtered: u64,
    delivered: u64,
    rejected: u64,
    retried: u64,
}

fn result_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("route", DataType::Utf8, false),
        Field::new("events", DataType::Int64, false),
        Field::new("filtered", DataType::Int64, false),
        Field::new("delivered", DataType::Int64, false),
        Field::new("rejected", DataType::Int64, false),
        Field::new("retried", DataType::Int64, false),
    ]))
}

/// Runs `REPLAY ROUTE name FROM from [TO to]`.
pub async fn run(
    session: &mut Session,
    name: &str,
    from: &str,
    to: Option<&str>,
) -> Result<Output> {
    let from = parse_bound(from)?;
    let to = to.map(parse_bound).transpose()?;
    let doc = session.catalog.doc();
    let route = doc
        .routes
        .get(name)
        .cloned()
        .ok_or_else(|| TallyError::NotFound {
            kind: "route",
            name: name.to_string(),
        })?;
    let dest_entry = doc
        .destinations
        .get(&route.destination)
        .cloned()
        .ok_or_else(|| TallyError::NotFound {
            kind: "destination",
            name: route.destination.clone(),
        })?;
    let opts = RouteOptions::parse(&route.options, &dest_entry)?;
    let mut transformer = Transformer::new(
        &session.engine,
        &route.source,
        &route.query,
        &route.default_schema,
    )?;

    // Every event table of the source, read in time order.
    let tables: Vec<String> = doc
        .schemas
        .get(&route.source)
        .map(|s| {
            s.relations
                .iter()
                .filter(|(n, r)| {
                    matches!(r, Relation::Table(_))
                        && (!RESERVED_TABLES.contains(&n.as_str())
                            || matches!(
                                n.as_str(),
                                "identifies" | "pages" | "screens" | "groups" | "aliases"
                            ))
                })
                .map(|(n, _)| n.clone())
                .collect()
        })
        .unwrap_or_default();
    let mut readers = Vec::new();
    for table in &tables {
        let mut sql = format!(
            "SELECT * FROM {}.{} WHERE \"timestamp\" >= '{}'",
            quote(&route.source),
            quote(table),
            from.to_rfc3339()
        );
        if let Some(to) = to {
            sql.push_str(&format!(" AND \"timestamp\" < '{}'", to.to_rfc3339()));
        }
        sql.push_str(" ORDER BY \"timestamp\", message_id");
        let df = session.ctx.sql(&sql).await.map_err(unwrap_datafusion)?;
        let stream = df.execute_stream().await.map_err(unwrap_datafusion)?;
        readers.push(Reader {
            kind: kind_of(table),
            stream,
            buf: VecDeque::new(),
            done: false,
        });
    }

    let dest = destinations::build(&route.destination, &dest_entry).await?;
    let spec = destinations::spec(&dest_entry.destination_type)?;
    let ceiling = match dest_entry.options.get("rate_limit") {
        Some(r) => r.parse::<f64>().ok(),
        None => spec.default_rate,
    };
    let limiter = session
        .engine
        .activation
        .limiter(&route.destination, ceiling);
    let copy_id = format!("replay:{name}:{}", uuid::Uuid::new_v4().simple());
    let policy = RetryPolicy {
        timeout: opts.timeout,
        ..RetryPolicy::default()
    };
    let mut deliverer = Deliverer::new(
        &route.destination,
        dest.as_ref(),
        limiter,
        policy,
        &copy_id,
        opts.mode,
        opts.key.as_deref(),
    );
    tracing::info!(route = name, copy_id = %copy_id, from = %from, "route replay started");
    let mut counts = Counts::default();
    let mut ordinal = 0u64;
    let warehouse = session.engine.warehouse().clone();
    let outcome: Result<()> = async {
        loop {
            // Merge the tables by timestamp into one micro-batch.
            let mut events = Vec::with_capacity(MICRO_BATCH);
            while events.len() < MICRO_BATCH {
                for r in readers.iter_mut() {
                    r.fill().await?;
                }
                let next = readers
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| r.buf.front().map(|(ts, _)| (*ts, i)))
                    .min();
                let Some((_, i)) = next else { break };
                if let Some((_, body)) = readers[i].buf.pop_front()
                    && let Some(e) = Event::from_body(body)
                {
                    events.push(e);
                }
            }
            if events.is_empty() {
                return Ok(());
            }
            counts.events += events.len() as u64;
            let outputs = transformer.apply(&events).await?;
            let mut hit = vec![false; events.len()];
            let mut records = Vec::with_capacity(outputs.len());
            for o in outputs {
                hit[o.row] = true;
                let e = &events[o.row];
                let mut fields = o.fields;
                if !fields.contains_key("message_id") {
                    fields.insert("message_id".into(), Value::String(e.message_id.clone()));
                }
                let key = match &opts.key {
                    Some(k) => fields.get(k).and_then(|v| match v {
                        Value::Null => None,
                        Value::String(s) => Some(s.clone()),
                        other => Some(other.to_string()),
                    }),
                    None => Some(e.message_id.clone()),
                };
                records.push(Record {
                    ordinal,
                    key,
                    fields,
                });
                ordinal += 1;
            }
            counts.filtered += hit.iter().filter(|h| !**h).count() as u64;
            for chunk in records.chunks(opts.batch_size) {
                let (keyed, unkeyed): (Vec<&Record>, Vec<&Record>) =
                    chunk.iter().partition(|r| r.key.is_some());
                for r in unkeyed {
                    deliverer.reject_locally(r, "the route's key column is null");
                }
                let keyed: Vec<Record> = keyed.into_iter().cloned().collect();
                deliverer.deliver(&keyed).await?;
            }
            rejected::append(&warehouse, &deliverer.rejected).await?;
            deliverer.rejected.clear();
        }
    }
    .await;
    let kept = rejected::append(&warehouse, &deliverer.rejected).await;
    counts.delivered = deliverer.stats.delivered;
    counts.rejected = deliverer.stats.rejected;
    counts.retried = deliverer.stats.retried;
    tracing::info!(route = name, copy_id = %copy_id, events = counts.events, delivered = counts.delivered, ok = outcome.is_ok(), "route replay finished");
    outcome?;
    kept?;
    let n = |v: u64| -> ArrayRef { Arc::new(Int64Array::from(vec![v as i64])) };
    let schema = result_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![name])),
            n(counts.events),
            n(counts.filtered),
            n(counts.delivered),
            n(counts.rejected),
            n(counts.retried),
        ],
    )
    .map_err(|e| TallyError::DataFusion(e.into()))?;
    Ok(Output::Rows(Box::pin(MemoryStream::try_new(
        vec![batch],
        schema,
        None,
    )?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse() {
        assert!(parse_bound("2024-05-01T00:00:00Z").is_ok());
        assert!(parse_bound("2024-05-01 10:00:00").is_ok());
        assert!(parse_bound("2024-05-01").is_ok());
        assert_eq!(parse_bound("yesterday").unwrap_err().sqlstate(), "22007");
    }

    #[test]
    fn rows_come_back_as_messages() {
        let row = serde_json::json!({"message_id": "m1", "user_id": "u1", "event": "order_completed",
            "event_text": "Order Completed", "timestamp": "2024-01-01T00:00:00Z", "loaded_at": "x",
            "context_ip": "1.2.3.4", "total": 12.5, "total_text": null, "property_event": "e"});
        let serde_json::Value::Object(row) = row else {
            unreachable!()
        };
        let (_, m) = message_of("track", row).expect("message");
        assert_eq!(m["messageId"], "m1");
        assert_eq!(m["event"], "Order Completed");
        assert_eq!(m["properties"]["total"], 12.5);
        assert_eq!(m["properties"]["event"], "e");
        assert_eq!(m["context"]["ip"], "1.2.3.4");
        assert_eq!(m["timestamp"], "2024-01-01T00:00:00.000Z");
    }
}
