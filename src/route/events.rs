//! Events as SQL sees them in a route: each micro-batch of collected messages becomes an
//! Arrow batch registered as `events`, one row per message, with the columns of the Segment
//! message (`type`, `event`, `message_id`, `user_id`, ..., and `properties`, `traits`,
//! `context` as JSON text, so `json_get_str(properties, 'plan')` and the PII functions
//! apply). The route's query is a projection and filter over it; tally adds one hidden
//! column to its select list, the event's position in the micro-batch, so every result row
//! is tied to the event it came from (its messageId, its user, its place in the log).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::MemTable;
use datafusion::sql::sqlparser::ast::{
    Expr, GroupByExpr, Ident, SelectItem, SetExpr, Statement, TableFactor,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use futures::StreamExt;
use serde_json::{Map, Value};

use super::RouteError;
use crate::activate::rows::Mapping;
use crate::collect::message::parse_time;
use crate::engine::{Engine, Session};
use crate::error::{Result, TallyError, unwrap_datafusion};

/// The name of the hidden column holding an event's position in its micro-batch.
pub const ROW_COLUMN: &str = "__tally_event_row";
/// The name the rewritten query gives it in its result.
const ROW_ALIAS: &str = "__tally_route_row";

/// The columns of `events`.
pub fn schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("type", DataType::Utf8, false),
        Field::new("event", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("message_id", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, true),
        Field::new("anonymous_id", DataType::Utf8, true),
        Field::new("group_id", DataType::Utf8, true),
        Field::new("previous_id", DataType::Utf8, true),
        Field::new("timestamp", ts(), true),
        Field::new("original_timestamp", ts(), true),
        Field::new("sent_at", ts(), true),
        Field::new("received_at", ts(), true),
        Field::new("properties", DataType::Utf8, true),
        Field::new("traits", DataType::Utf8, true),
        Field::new("context", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, false),
        Field::new(ROW_COLUMN, DataType::Int64, false),
    ]))
}

/// One collected message on its way through a route.
#[derive(Debug, Clone)]
pub struct Event {
    /// The message as logged (normalised by the collector).
    pub body: Map<String, Value>,
    /// Its messageId: the idempotency key of everything sent for it.
    pub message_id: String,
    /// Who it is about (userId, else anonymousId): the unit of ordering.
    pub user: String,
    /// When the collector acknowledged it (microseconds since the epoch).
    pub received_us: i64,
}

impl Event {
    /// Reads a logged message; `None` when it is not an object with a messageId (the
    /// collector never logs such a message, so this is only defence).
    pub fn from_body(body: Map<String, Value>) -> Option<Event> {
        let message_id = body.get("messageId")?.as_str()?.to_string();
        let user = ["userId", "anonymousId"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_str))
            .unwrap_or("")
            .to_string();
        let received_us = body
            .get("receivedAt")
            .and_then(parse_time)
            .map(|t| t.timestamp_micros())
            .unwrap_or_else(|| chrono::Utc::now().timestamp_micros());
        Some(Event {
            body,
            message_id,
            user,
            received_us,
        })
    }
}

/// The `events` batch of `events` from `source`.
pub fn batch(source: &str, events: &[Event]) -> Result<RecordBatch> {
    let n = events.len();
    let text = |key: &str| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(n, n * 16);
        for e in events {
            match e.body.get(key) {
                Some(Value::String(s)) => b.append_value(s),
                Some(Value::Null) | None => b.append_null(),
                Some(other) => b.append_value(other.to_string()),
            }
        }
        Arc::new(b.finish())
    };
    let json = |key: &str| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(n, n * 64);
        for e in events {
            match e.body.get(key) {
                Some(Value::Null) | None => b.append_null(),
                Some(v) => b.append_value(v.to_string()),
            }
        }
        Arc::new(b.finish())
    };
    let time = |key: &str| -> ArrayRef {
        let mut b = TimestampMicrosecondBuilder::with_capacity(n);
        for e in events {
            b.append_option(
                e.body
                    .get(key)
                    .and_then(parse_time)
                    .map(|t| t.timestamp_micros()),
            );
        }
        Arc::new(b.finish().with_timezone("UTC"))
    };
    let mut kind = StringBuilder::with_capacity(n, n * 8);
    for e in events {
        kind.append_value(e.body.get("type").and_then(Value::as_str).unwrap_or(""));
    }
    let mut ids = StringBuilder::with_capacity(n, n * 36);
    for e in events {
        ids.append_value(&e.message_id);
    }
    let mut sources = StringBuilder::with_capacity(n, n * source.len());
    for _ in events {
        sources.append_value(source);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(kind.finish()),
        text("event"),
        text("name"),
        Arc::new(ids.finish()),
        text("userId"),
        text("anonymousId"),
        text("groupId"),
        text("previousId"),
        time("timestamp"),
        time("originalTimestamp"),
        time("sentAt"),
        time("receivedAt"),
        json("properties"),
        json("traits"),
        json("context"),
        Arc::new(sources.finish()),
        Arc::new(Int64Array::from_iter_values(0..n as i64)),
    ];
    RecordBatch::try_new(schema(), columns).map_err(|e| TallyError::DataFusion(e.into()))
}

/// Checks that `query` is a projection and filter over `events` and returns it with the
/// hidden row column added to its select list.
pub fn rewrite(query: &str) -> std::result::Result<String, RouteError> {
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, query)
        .map_err(|e| RouteError::QuerySyntax(e.to_string()))?;
    if stmts.len() != 1 {
        return Err(RouteError::UnsupportedQuery(
            "a route has exactly one SELECT ... FROM events".into(),
        ));
    }
    let Statement::Query(q) = &mut stmts[0] else {
        return Err(RouteError::UnsupportedQuery(
            "a route's query must be SELECT ... FROM events [WHERE ...]".into(),
        ));
    };
    if q.with.is_some() || q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
        return Err(RouteError::UnsupportedQuery(
            "WITH, ORDER BY and LIMIT do not apply to a stream of events; a route is a projection and filter over each event".into(),
        ));
    }
    let SetExpr::Select(select) = q.body.as_mut() else {
        return Err(RouteError::UnsupportedQuery(
            "a route's query must be one SELECT (no UNION, VALUES, ...)".into(),
        ));
    };
    let grouped = match &select.group_by {
        GroupByExpr::All(_) => true,
        GroupByExpr::Expressions(e, _) => !e.is_empty(),
    };
    if grouped || select.having.is_some() || select.distinct.is_some() {
        return Err(RouteError::UnsupportedQuery(
            "GROUP BY, HAVING and DISTINCT do not apply to single events; aggregate in the warehouse instead".into(),
        ));
    }
    let Some(first) = select.from.first() else {
        return Err(RouteError::UnsupportedQuery(
            "a route's query reads FROM events".into(),
        ));
    };
    let qualifier = match &first.relation {
        TableFactor::Table { name, alias, .. }
            if name.0.len() == 1
                && name
                    .0
                    .first()
                    .and_then(|p| p.as_ident())
                    .is_some_and(|i| i.value.eq_ignore_ascii_case("events")) =>
        {
            alias.as_ref().map(|a| a.name.clone())
        }
        _ => {
            return Err(RouteError::UnsupportedQuery(
                "a route's query reads FROM events (the incoming events), first in its FROM clause"
                    .into(),
            ));
        }
    };
    let column = Ident::new(ROW_COLUMN);
    let expr = match qualifier {
        Some(a) => Expr::CompoundIdentifier(vec![a, column]),
        None => Expr::CompoundIdentifier(vec![Ident::new("events"), column]),
    };
    select.projection.push(SelectItem::ExprWithAlias {
        expr,
        alias: Ident::new(ROW_ALIAS),
    });
    Ok(stmts[0].to_string())
}

/// One result row of a route's query: the event it came from (its position in the
/// micro-batch) and the row as a JSON object.
#[derive(Debug, Clone)]
pub struct Output {
    /// Position of the event in the micro-batch.
    pub row: usize,
    /// The row (column name to value), without the hidden column.
    pub fields: Map<String, Value>,
}

/// Runs a route's query over micro-batches of events, in a session of its own.
pub struct Transformer {
    session: Session,
    sql: String,
    source: String,
}

impl std::fmt::Debug for Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transformer")
            .field("sql", &self.sql)
            .finish()
    }
}

impl Transformer {
    /// A transformer for `query` (as written) over events of `source`, resolving other
    /// names against `default_schema`.
    pub fn new(
        engine: &Arc<Engine>,
        source: &str,
        query: &str,
        default_schema: &str,
    ) -> Result<Transformer> {
        let sql = rewrite(query)?;
        let mut session = engine.new_session("tally");
        session.set("search_path", default_schema)?;
        Ok(Transformer {
            session,
            sql,
            source: source.to_string(),
        })
    }

    /// Plans the query against an empty micro-batch: what CREATE ROUTE checks, so a bad
    /// column or function is an error at once, not in the log later.
    pub async fn check(&mut self) -> Result<Vec<String>> {
        self.register(RecordBatch::new_empty(schema()))?;
        let df = self.dataframe().await?;
        Ok(df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != ROW_ALIAS)
            .collect())
    }

    fn register(&self, batch: RecordBatch) -> Result<()> {
        let temp = self
            .session
            .ctx
            .catalog(crate::catalog::DATABASE)
            .and_then(|c| c.schema(crate::catalog::provider::TEMP_SCHEMA))
            .ok_or_else(|| TallyError::Internal("the session has no temporary schema".into()))?;
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        temp.deregister_table("events")?;
        temp.register_table("events".into(), Arc::new(table))?;
        Ok(())
    }

    async fn dataframe(&self) -> Result<datafusion::dataframe::DataFrame> {
        let stmt = Parser::parse_sql(&PostgreSqlDialect {}, &self.sql)
            .map_err(|e| RouteError::QuerySyntax(e.to_string()))?
            .into_iter()
            .next()
            .ok_or_else(|| RouteError::QuerySyntax("empty query".into()))?;
        let plan = crate::statements::query::plan(&self.session, stmt).await?;
        self.session
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(unwrap_datafusion)
    }

    /// Runs the query over `events`; returns the result rows, each tied to its event.
    pub async fn apply(&mut self, events: &[Event]) -> Result<Vec<Output>> {
        self.register(batch(&self.source, events)?)?;
        let df = self.dataframe().await?;
        let out_schema = df.schema().as_arrow().clone();
        let mapping = Mapping::new(&out_schema, None, None)?;
        let mut stream = df.execute_stream().await.map_err(unwrap_datafusion)?;
        let mut out = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(unwrap_datafusion)?;
            for rec in mapping.records(&batch, 0)? {
                let mut fields = rec.fields;
                let row = match fields.remove(ROW_ALIAS) {
                    Some(Value::Number(n)) => n.as_u64().unwrap_or(u64::MAX) as usize,
                    _ => usize::MAX,
                };
                fields.remove(ROW_COLUMN);
                if row < events.len() {
                    out.push(Output { row, fields });
                }
            }
        }
        // Free the batch now rather than at the next micro-batch.
        self.register(RecordBatch::new_empty(schema()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_column_is_added_and_other_shapes_are_refused() {
        let q = rewrite("SELECT user_id, event FROM events WHERE type = 'track'").expect("ok");
        assert!(q.contains(ROW_COLUMN) && q.contains(ROW_ALIAS), "{q}");
        let q = rewrite("select e.user_id from events e").expect("alias");
        assert!(q.contains(&format!("e.{ROW_COLUMN}")), "{q}");
        assert_eq!(
            rewrite("SELECT count(*) FROM events GROUP BY user_id")
                .unwrap_err()
                .sqlstate(),
            "0A000"
        );
        assert_eq!(
            rewrite("SELECT * FROM web.tracks").unwrap_err().sqlstate(),
            "0A000"
        );
        assert_eq!(
            rewrite("SELEC user_id FROM events").unwrap_err().sqlstate(),
            "42601"
        );
        assert_eq!(
            rewrite("DELETE FROM events").unwrap_err().sqlstate(),
            "0A000"
        );
    }

    #[test]
    fn events_become_a_batch() {
        let body = serde_json::json!({"type": "track", "event": "Signed Up", "messageId": "m1",
            "userId": "u1", "receivedAt": "2024-01-01T00:00:00.000Z",
            "properties": {"plan": "pro"}});
        let Value::Object(body) = body else {
            unreachable!()
        };
        let e = Event::from_body(body).expect("event");
        assert_eq!(e.user, "u1");
        let b = batch("web", &[e]).expect("batch");
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.num_columns(), schema().fields().len());
    }
}
