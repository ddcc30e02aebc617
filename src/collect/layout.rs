//! The warehouse layout of collected events, as the Segment and RudderStack warehouse
//! destinations lay it out: per source schema, `tracks`, `identifies`, `pages`, `screens`,
//! `groups`, `aliases`, one table per track event name with its properties as columns, and a
//! `users` view with the latest traits per user. Names are snake_case; nested objects are
//! flattened with `_` (`context.page.url` becomes `context_page_url`); arrays are kept as
//! JSON text.
//!
//! A source under a tracking plan in flag mode gets a `violations` column (JSON text, null
//! for a clean event) in the tables of each checked event, and one row per violation in
//! `_violations`; a message a plan blocked lands in `_rejected` with its `violations`.
//!
//! Types follow the values: strings are `text`, numbers `double precision`, booleans
//! `boolean`, and the spec's time fields `timestamptz`. A column keeps the type it was
//! created with; a value of another type goes to the sibling column `<name>_text` as text,
//! so a conflicting value is never dropped and never breaks the batch.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::{Map, Value};

use super::message::{Kind, parse_time};

/// Columns every event table has, in this order.
pub const COMMON_COLUMNS: &[&str] = &[
    "message_id",
    "user_id",
    "anonymous_id",
    "timestamp",
    "original_timestamp",
    "sent_at",
    "received_at",
    "loaded_at",
];

/// Table names the layout uses itself; a track event with one of these names gets the
/// suffix `_event` for its own table.
pub const RESERVED_TABLES: &[&str] = &[
    "tracks",
    "identifies",
    "pages",
    "screens",
    "groups",
    "aliases",
    "users",
    "_rejected",
    "_violations",
];

/// The table of rejected messages.
pub const REJECTED_TABLE: &str = "_rejected";

/// The table of tracking plan violations, one row per violation of a flagged message.
pub const VIOLATIONS_TABLE: &str = "_violations";

/// The column of an event's tracking plan violations.
pub const VIOLATIONS_COLUMN: &str = "violations";

/// Longest identifier, as in PostgreSQL.
const MAX_IDENT: usize = 63;

/// snake_case for table and column names: `userId` → `user_id`, `Order Completed` →
/// `order_completed`, `$browser` → `browser`.
pub fn snake_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    let mut prev: Option<char> = None;
    for c in s.chars() {
        if c.is_alphanumeric() {
            if c.is_uppercase()
                && prev.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit())
                && !out.ends_with('_')
            {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
        prev = Some(c);
    }
    while out.ends_with('_') {
        out.pop();
    }
    if out.is_empty() {
        out.push('_');
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if out.len() > MAX_IDENT {
        let mut end = MAX_IDENT;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// The table of a track event.
pub fn event_table(event: &str) -> String {
    let name = snake_case(event);
    if RESERVED_TABLES.contains(&name.as_str()) {
        format!("{name}_event")
    } else {
        name
    }
}

/// The type a column gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    /// `text`.
    Text,
    /// `double precision`.
    Number,
    /// `boolean`.
    Bool,
    /// `timestamptz`.
    Time,
}

impl ColType {
    /// The Arrow type stored in Delta.
    pub fn arrow(self) -> DataType {
        match self {
            ColType::Text => DataType::Utf8,
            ColType::Number => DataType::Float64,
            ColType::Bool => DataType::Boolean,
            ColType::Time => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }

    /// The type of an existing column, if the layout can write it.
    pub fn from_arrow(t: &DataType) -> Option<ColType> {
        Some(match t {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColType::Text,
            DataType::Float64 | DataType::Float32 => ColType::Number,
            DataType::Boolean => ColType::Bool,
            DataType::Timestamp(_, _) => ColType::Time,
            _ => return None,
        })
    }
}

/// A value on its way into a column.
#[derive(Debug, Clone)]
pub enum Cell {
    /// Text.
    Text(String),
    /// A number.
    Number(f64),
    /// A boolean.
    Bool(bool),
    /// A time.
    Time(DateTime<Utc>),
    /// No value, but the column must exist with this type (null in this row): a table whose
    /// rows may all lack a value still gets the column, so queries over it plan.
    Declared(ColType),
}

impl Cell {
    fn col_type(&self) -> ColType {
        match self {
            Cell::Text(_) => ColType::Text,
            Cell::Number(_) => ColType::Number,
            Cell::Bool(_) => ColType::Bool,
            Cell::Time(_) => ColType::Time,
            Cell::Declared(t) => *t,
        }
    }

    fn into_text(self) -> String {
        match self {
            Cell::Declared(_) => String::new(),
            Cell::Text(s) => s,
            Cell::Number(n) => serde_json::Number::from_f64(n)
                .map(|n| n.to_string())
                .unwrap_or_else(|| n.to_string()),
            Cell::Bool(b) => b.to_string(),
            Cell::Time(t) => super::message::format_time(t),
        }
    }

    fn from_json(v: &Value) -> Option<Cell> {
        match v {
            Value::Null => None,
            Value::String(s) => Some(Cell::Text(s.clone())),
            Value::Number(n) => n.as_f64().map(Cell::Number),
            Value::Bool(b) => Some(Cell::Bool(*b)),
            Value::Array(_) | Value::Object(_) => Some(Cell::Text(v.to_string())),
        }
    }
}

enum Values {
    Text(StringBuilder),
    Number(Float64Builder),
    Bool(BooleanBuilder),
    Time(TimestampMicrosecondBuilder),
}

impl Values {
    fn new(t: ColType, rows: usize) -> Values {
        let mut v = match t {
            ColType::Text => Values::Text(StringBuilder::new()),
            ColType::Number => Values::Number(Float64Builder::new()),
            ColType::Bool => Values::Bool(BooleanBuilder::new()),
            ColType::Time => Values::Time(TimestampMicrosecondBuilder::new()),
        };
        for _ in 0..rows {
            v.push_null();
        }
        v
    }

    fn len(&self) -> usize {
        use datafusion::arrow::array::ArrayBuilder;
        match self {
            Values::Text(b) => b.len(),
            Values::Number(b) => b.len(),
            Values::Bool(b) => b.len(),
            Values::Time(b) => b.len(),
        }
    }

    fn push_null(&mut self) {
        match self {
            Values::Text(b) => b.append_null(),
            Values::Number(b) => b.append_null(),
            Values::Bool(b) => b.append_null(),
            Values::Time(b) => b.append_null(),
        }
    }

    /// Pushes `cell` if it has this column's type; gives it back otherwise.
    fn push(&mut self, cell: Cell) -> Option<Cell> {
        match (self, cell) {
            (v, Cell::Declared(_)) => v.push_null(),
            (Values::Text(b), c) => b.append_value(c.into_text()),
            (Values::Number(b), Cell::Number(n)) => b.append_value(n),
            (Values::Bool(b), Cell::Bool(x)) => b.append_value(x),
            (Values::Time(b), Cell::Time(t)) => b.append_value(t.timestamp_micros()),
            (_, other) => return Some(other),
        }
        None
    }

    fn finish(self) -> ArrayRef {
        match self {
            Values::Text(mut b) => Arc::new(b.finish()),
            Values::Number(mut b) => Arc::new(b.finish()),
            Values::Bool(mut b) => Arc::new(b.finish()),
            Values::Time(mut b) => Arc::new(b.finish().with_timezone(Arc::<str>::from("UTC"))),
        }
    }
}

struct Column {
    name: String,
    ty: ColType,
    values: Values,
    existing: bool,
}

/// One row: `(column, value)` cells.
pub type Row = Vec<(String, Cell)>;

/// Rows for one table, built column by column against the table's current schema.
pub struct TableRows {
    columns: Vec<Column>,
    index: HashMap<String, usize>,
    rows: usize,
    /// Sequence number of the last record added.
    pub last_seq: u64,
}

impl TableRows {
    /// Rows for a table whose current columns are `schema` (empty for a new table).
    pub fn new(schema: &Schema) -> TableRows {
        let mut t = TableRows {
            columns: Vec::new(),
            index: HashMap::new(),
            rows: 0,
            last_seq: 0,
        };
        for f in schema.fields() {
            // Columns of types the layout never writes (added by hand) stay null.
            let ty = ColType::from_arrow(f.data_type()).unwrap_or(ColType::Text);
            t.index.insert(f.name().clone(), t.columns.len());
            t.columns.push(Column {
                name: f.name().clone(),
                ty,
                values: Values::new(ty, 0),
                existing: ColType::from_arrow(f.data_type()).is_some(),
            });
        }
        t
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Adds one row of `(column, value)` cells. A column seen for the first time is created
    /// with the value's type; a value whose type differs from its column's goes to the
    /// text sibling column `<column>_text`.
    pub fn push_row(&mut self, cells: Vec<(String, Cell)>) {
        for (name, cell) in cells {
            let idx = self.column(&name, cell.col_type());
            if matches!(cell, Cell::Declared(_)) {
                continue;
            }
            if self.columns[idx].values.len() > self.rows {
                // The same column twice in one message (two keys that snake_case alike):
                // the first value wins, the later one goes to the text sibling.
                let sib = self.column(&format!("{name}_text"), ColType::Text);
                if self.columns[sib].values.len() == self.rows {
                    self.columns[sib].values.push(cell);
                }
                continue;
            }
            if let Some(back) = self.columns[idx].values.push(cell) {
                let sib = self.column(&format!("{name}_text"), ColType::Text);
                if self.columns[sib].values.len() == self.rows {
                    self.columns[sib].values.push(back);
                }
            }
        }
        self.rows += 1;
        for c in &mut self.columns {
            while c.values.len() < self.rows {
                c.values.push_null();
            }
        }
    }

    fn column(&mut self, name: &str, ty: ColType) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.columns.len();
        self.columns.push(Column {
            name: name.to_string(),
            ty,
            values: Values::new(ty, self.rows),
            existing: false,
        });
        self.index.insert(name.to_string(), i);
        i
    }

    /// Whether the rows add columns the table does not have yet.
    pub fn adds_columns(&self) -> bool {
        self.columns.iter().any(|c| !c.existing)
    }

    /// The rows as one batch, columns in table order then new ones.
    pub fn finish(self) -> datafusion::common::Result<RecordBatch> {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(&c.name, c.ty.arrow(), true))
            .collect();
        let arrays: Vec<ArrayRef> = self
            .columns
            .into_iter()
            .map(|c| c.values.finish())
            .collect();
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        Ok(RecordBatch::try_new(schema, arrays)?)
    }
}

/// Flattens a JSON object into cells: `prefix` + snake_case key, nested objects joined
/// with `_`.
pub fn flatten(prefix: &str, obj: &Map<String, Value>, out: &mut Vec<(String, Cell)>) {
    for (k, v) in obj {
        let key = snake_case(k);
        let name = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}_{key}")
        };
        match v {
            Value::Object(inner) => flatten(&name, inner, out),
            other => {
                if let Some(c) = Cell::from_json(other) {
                    out.push((name, c));
                }
            }
        }
    }
}

fn time_cell(body: &Map<String, Value>, key: &str) -> Option<Cell> {
    body.get(key).and_then(parse_time).map(Cell::Time)
}

fn text_cell(body: &Map<String, Value>, key: &str) -> Option<Cell> {
    match body.get(key)? {
        Value::String(s) => Some(Cell::Text(s.clone())),
        Value::Null => None,
        other => Some(Cell::Text(other.to_string())),
    }
}

/// The cells every table of a message shares: ids, times and the flattened context.
fn common_cells(body: &Map<String, Value>, loaded_at: DateTime<Utc>) -> Vec<(String, Cell)> {
    let mut cells = Vec::with_capacity(32);
    for (col, key) in [
        ("message_id", "messageId"),
        ("user_id", "userId"),
        ("anonymous_id", "anonymousId"),
    ] {
        if let Some(c) = text_cell(body, key) {
            cells.push((col.to_string(), c));
        }
    }
    for (col, key) in [
        ("timestamp", "timestamp"),
        ("original_timestamp", "originalTimestamp"),
        ("sent_at", "sentAt"),
        ("received_at", "receivedAt"),
    ] {
        if let Some(c) = time_cell(body, key) {
            cells.push((col.to_string(), c));
        }
    }
    cells.push(("loaded_at".to_string(), Cell::Time(loaded_at)));
    if let Some(Value::Object(ctx)) = body.get("context") {
        flatten("context", ctx, &mut cells);
    }
    cells
}

/// Keys that are already columns; a property or trait of the same name gets a prefix.
fn is_reserved_column(name: &str) -> bool {
    COMMON_COLUMNS.contains(&name)
        || name.starts_with("context_")
        || matches!(
            name,
            "event"
                | "event_text"
                | "name"
                | "category"
                | "group_id"
                | "previous_id"
                | VIOLATIONS_COLUMN
        )
}

fn flatten_payload(prefix: &str, obj: Option<&Value>, out: &mut Vec<(String, Cell)>) {
    let Some(Value::Object(obj)) = obj else {
        return;
    };
    let mut cells = Vec::new();
    flatten("", obj, &mut cells);
    for (name, cell) in cells {
        if is_reserved_column(&name) {
            out.push((format!("{prefix}_{name}"), cell));
        } else {
            out.push((name, cell));
        }
    }
}

/// The traits of an identify call. RudderStack's SDKs send them as `context.traits` only, while
/// Segment's send top-level `traits`; like RudderStack's warehouse loader, both are merged, the
/// top-level value winning, so the `users` view gets the traits whichever SDK sent them.
pub fn identify_traits(body: &Map<String, Value>) -> Option<Value> {
    let top = body.get("traits").and_then(Value::as_object);
    let ctx = body
        .get("context")
        .and_then(Value::as_object)
        .and_then(|c| c.get("traits"))
        .and_then(Value::as_object);
    match (ctx, top) {
        (None, None) => None,
        (Some(ctx), None) => Some(Value::Object(ctx.clone())),
        (None, Some(top)) => Some(Value::Object(top.clone())),
        (Some(ctx), Some(top)) => {
            let mut merged = ctx.clone();
            for (k, v) in top {
                merged.insert(k.clone(), v.clone());
            }
            Some(Value::Object(merged))
        }
    }
}

/// The rows one message contributes: `(table, cells)` pairs. A message checked against a
/// tracking plan in flag mode (it carries the collector's [`META_KEY`]) also gets its
/// `violations` cell in each of its tables and a `_violations` row per violation.
///
/// [`META_KEY`]: super::plans::META_KEY
pub fn rows_of(
    kind: Kind,
    body: &Map<String, Value>,
    loaded_at: DateTime<Utc>,
) -> Vec<(String, Vec<(String, Cell)>)> {
    let mut rows = message_rows(kind, body, loaded_at);
    let Some(Value::Object(meta)) = body.get(super::plans::META_KEY) else {
        return rows;
    };
    let violations = match meta.get("violations") {
        Some(Value::Array(v)) => v.as_slice(),
        _ => &[],
    };
    let cell = if violations.is_empty() {
        Cell::Declared(ColType::Text)
    } else {
        Cell::Text(Value::Array(violations.to_vec()).to_string())
    };
    for (_, cells) in &mut rows {
        cells.push((VIOLATIONS_COLUMN.to_string(), cell.clone()));
    }
    let plan = meta.get("plan").and_then(Value::as_str);
    for v in violations {
        rows.push((
            VIOLATIONS_TABLE.to_string(),
            violation_row(kind, body, plan, v, loaded_at),
        ));
    }
    rows
}

/// One `_violations` row. Every column is written (null when there is no value), so the
/// table has its full shape from its first row and `tracking_plan_report` can rely on it.
fn violation_row(
    kind: Kind,
    body: &Map<String, Value>,
    plan: Option<&str>,
    violation: &Value,
    loaded_at: DateTime<Utc>,
) -> Vec<(String, Cell)> {
    let text = |v: Option<&str>| match v {
        Some(s) => Cell::Text(s.to_string()),
        None => Cell::Declared(ColType::Text),
    };
    let time = |key: &str| match body.get(key).and_then(parse_time) {
        Some(t) => Cell::Time(t),
        None => Cell::Declared(ColType::Time),
    };
    let field = |key: &str| text(violation.get(key).and_then(Value::as_str));
    let event = match kind {
        Kind::Track => body.get("event").and_then(Value::as_str),
        _ => None,
    };
    vec![
        (
            "message_id".into(),
            text(body.get("messageId").and_then(Value::as_str)),
        ),
        ("type".into(), Cell::Text(kind.as_str().to_string())),
        ("event".into(), text(event)),
        ("property".into(), field("property")),
        ("path".into(), field("path")),
        ("kind".into(), field("kind")),
        ("message".into(), field("message")),
        ("plan".into(), text(plan)),
        (
            "user_id".into(),
            text(body.get("userId").and_then(Value::as_str)),
        ),
        (
            "anonymous_id".into(),
            text(body.get("anonymousId").and_then(Value::as_str)),
        ),
        ("timestamp".into(), time("timestamp")),
        ("received_at".into(), time("receivedAt")),
        ("loaded_at".into(), Cell::Time(loaded_at)),
    ]
}

fn message_rows(
    kind: Kind,
    body: &Map<String, Value>,
    loaded_at: DateTime<Utc>,
) -> Vec<(String, Vec<(String, Cell)>)> {
    let common = common_cells(body, loaded_at);
    match kind {
        Kind::Track => {
            let event = body.get("event").and_then(Value::as_str).unwrap_or("");
            let mut tracks = common;
            tracks.push(("event".into(), Cell::Text(event_table(event))));
            tracks.push(("event_text".into(), Cell::Text(event.to_string())));
            let mut own = tracks.clone();
            flatten_payload("property", body.get("properties"), &mut own);
            vec![("tracks".into(), tracks), (event_table(event), own)]
        }
        Kind::Identify => {
            let mut cells = common;
            let traits = identify_traits(body);
            flatten_payload("trait", traits.as_ref(), &mut cells);
            vec![("identifies".into(), cells)]
        }
        Kind::Page | Kind::Screen => {
            let mut cells = common;
            for key in ["name", "category"] {
                if let Some(c) = text_cell(body, key) {
                    cells.push((key.into(), c));
                }
            }
            flatten_payload("property", body.get("properties"), &mut cells);
            vec![(kind.table().into(), cells)]
        }
        Kind::Group => {
            let mut cells = common;
            if let Some(c) = text_cell(body, "groupId") {
                cells.push(("group_id".into(), c));
            }
            flatten_payload("trait", body.get("traits"), &mut cells);
            vec![("groups".into(), cells)]
        }
        Kind::Alias => {
            let mut cells = common;
            if let Some(c) = text_cell(body, "previousId") {
                cells.push(("previous_id".into(), c));
            }
            vec![("aliases".into(), cells)]
        }
    }
}

/// The row of a rejected message.
pub fn rejected_row(payload: &Value, loaded_at: DateTime<Utc>) -> Vec<(String, Cell)> {
    let mut cells = vec![("loaded_at".to_string(), Cell::Time(loaded_at))];
    if let Value::Object(o) = payload {
        for key in ["message_id", "reason_code", "reason", "raw"] {
            if let Some(Value::String(s)) = o.get(key) {
                cells.push((key.to_string(), Cell::Text(s.clone())));
            }
        }
        if let Some(t) = o.get("received_at").and_then(parse_time) {
            cells.push(("received_at".to_string(), Cell::Time(t)));
        }
        if let Some(v @ Value::Array(_)) = o.get("violations") {
            cells.push((VIOLATIONS_COLUMN.to_string(), Cell::Text(v.to_string())));
        }
    }
    cells
}

/// The SQL of the `users` view over `identifies` with the given columns: one row per user
/// id, each trait its latest non-null value by event time.
pub fn users_view_sql(schema: &str, identifies: &Schema) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut cols = vec![
        "user_id".to_string(),
        "max(received_at) AS received_at".to_string(),
        "min(\"timestamp\") AS first_seen_at".to_string(),
        "max(\"timestamp\") AS last_seen_at".to_string(),
    ];
    for f in identifies.fields() {
        let n = f.name();
        if COMMON_COLUMNS.contains(&n.as_str())
            || n.starts_with("context_")
            || n == VIOLATIONS_COLUMN
        {
            continue;
        }
        cols.push(format!(
            "last_value({c} ORDER BY \"timestamp\") FILTER (WHERE {c} IS NOT NULL) AS {c}",
            c = q(n)
        ));
    }
    format!(
        "SELECT {} FROM {}.identifies WHERE user_id IS NOT NULL GROUP BY user_id",
        cols.join(", "),
        q(schema)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_snake_case() {
        assert_eq!(snake_case("userId"), "user_id");
        assert_eq!(snake_case("Order Completed"), "order_completed");
        assert_eq!(snake_case("$browser"), "browser");
        assert_eq!(snake_case("utm_source"), "utm_source");
        assert_eq!(snake_case("2fa enabled"), "_2fa_enabled");
        assert_eq!(snake_case("!!!"), "_");
        assert_eq!(event_table("Users"), "users_event");
    }

    #[test]
    fn conflicting_types_go_to_a_text_sibling() {
        let existing = Schema::new(vec![Field::new("price", DataType::Float64, true)]);
        let mut t = TableRows::new(&existing);
        t.push_row(vec![("price".into(), Cell::Number(9.5))]);
        t.push_row(vec![("price".into(), Cell::Text("12.50".into()))]);
        t.push_row(vec![("color".into(), Cell::Text("red".into()))]);
        assert!(t.adds_columns());
        let b = t.finish().expect("batch");
        let names: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, vec!["price", "price_text", "color"]);
        assert_eq!(b.num_rows(), 3);
        assert_eq!(b.column(0).null_count(), 2);
        assert_eq!(b.column(1).null_count(), 2);
    }

    #[test]
    fn track_rows_go_to_tracks_and_the_event_table() {
        let body = json!({"type": "track", "messageId": "m1", "userId": "u1", "event": "Order Completed",
            "timestamp": "2024-01-01T00:00:00.000Z", "receivedAt": "2024-01-01T00:00:01.000Z",
            "context": {"library": {"name": "analytics-python"}, "ip": "1.2.3.4"},
            "properties": {"revenue": 10, "event": "x", "items": [1, 2]}});
        let Value::Object(body) = body else {
            unreachable!()
        };
        let rows = rows_of(Kind::Track, &body, Utc::now());
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, "tracks");
        assert_eq!(rows[1].0, "order_completed");
        let own: Vec<_> = rows[1].1.iter().map(|(n, _)| n.as_str()).collect();
        for expected in [
            "context_library_name",
            "context_ip",
            "revenue",
            "property_event",
            "items",
        ] {
            assert!(own.contains(&expected), "{expected} missing from {own:?}");
        }
    }

    #[test]
    fn flagged_messages_get_a_violations_column_and_rows() {
        let body = json!({"type": "track", "messageId": "m1", "userId": "u1", "event": "Order Completed",
            "properties": {"total": "x", "violations": 3},
            "_tally": {"plan": "shop", "violations": [
                {"path": "/properties/total", "property": "total", "kind": "type", "message": "not a number"}]}});
        let Value::Object(body) = body else {
            unreachable!()
        };
        let rows = rows_of(Kind::Track, &body, Utc::now());
        let tables: Vec<_> = rows.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(tables, vec!["tracks", "order_completed", "_violations"]);
        for (_, cells) in &rows[..2] {
            let v = cells
                .iter()
                .find(|(c, _)| c == "violations")
                .map(|(_, v)| v);
            assert!(matches!(v, Some(Cell::Text(t)) if t.contains("/properties/total")));
        }
        // A property called `violations` does not take the column.
        assert!(rows[1].1.iter().any(|(c, _)| c == "property_violations"));
        let mut t = TableRows::new(&Schema::empty());
        t.push_row(rows[2].1.clone());
        let b = t.finish().expect("batch");
        for col in [
            "message_id",
            "event",
            "property",
            "kind",
            "plan",
            "received_at",
        ] {
            assert!(b.schema().field_with_name(col).is_ok(), "{col}");
        }

        // A clean message under a plan: the column exists, null.
        let clean = json!({"type": "identify", "userId": "u1", "_tally": {"plan": "shop", "violations": []}});
        let Value::Object(clean) = clean else {
            unreachable!()
        };
        let rows = rows_of(Kind::Identify, &clean, Utc::now());
        assert_eq!(rows.len(), 1);
        let mut t = TableRows::new(&Schema::empty());
        t.push_row(rows[0].1.clone());
        let b = t.finish().expect("batch");
        let col = b.column_by_name("violations").expect("violations column");
        assert_eq!(col.null_count(), 1);
    }

    #[test]
    fn identify_traits_from_context_and_top_level_are_merged() {
        let body = json!({"type": "identify", "userId": "u1",
            "context": {"traits": {"email": "ctx@example.com", "plan": "free"}},
            "traits": {"plan": "pro"}});
        let Value::Object(body) = body else {
            unreachable!()
        };
        let rows = rows_of(Kind::Identify, &body, Utc::now());
        let cells = &rows[0].1;
        let get = |n: &str| {
            cells
                .iter()
                .find(|(c, _)| c == n)
                .map(|(_, v)| format!("{v:?}"))
        };
        assert!(get("email").is_some_and(|v| v.contains("ctx@example.com")));
        assert!(get("plan").is_some_and(|v| v.contains("pro")));
    }
}
