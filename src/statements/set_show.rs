//! `SET`, `SHOW`, `RESET`-like `SET ... TO DEFAULT` and `DISCARD`: per-session settings.
//! Settings named `datafusion.*` tune the session's DataFusion options; the PostgreSQL ones
//! keep their usual meaning (`search_path`, `statement_timeout`, `TimeZone`, ...).

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::sql::sqlparser::ast::{Expr, Ident, Set, Value};

use super::{Completion, Output};
use crate::engine::Session;
use crate::error::{Result, TallyError};

/// Parameters whose changes PostgreSQL reports to the client with ParameterStatus.
const REPORTED: &[(&str, &str)] = &[
    ("application_name", "application_name"),
    ("client_encoding", "client_encoding"),
    ("datestyle", "DateStyle"),
    ("intervalstyle", "IntervalStyle"),
    ("timezone", "TimeZone"),
    ("standard_conforming_strings", "standard_conforming_strings"),
    ("is_superuser", "is_superuser"),
    ("session_authorization", "session_authorization"),
    ("search_path", "search_path"),
];

fn canonical(name: &str) -> String {
    REPORTED
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| name.to_string())
}

fn value_text(e: &Expr) -> String {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s)
            | Value::DoubleQuotedString(s)
            | Value::EscapedStringLiteral(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

/// `SET name = value` and its variants.
pub fn set(session: &mut Session, set: Set) -> Result<Output> {
    let (name, value) = match set {
        Set::SingleAssignment {
            variable, values, ..
        } => {
            let name = variable.to_string().trim_matches('"').to_ascii_lowercase();
            let value = values.iter().map(value_text).collect::<Vec<_>>().join(", ");
            (name, value)
        }
        Set::SetTimeZone { value, .. } => ("timezone".to_string(), value_text(&value)),
        Set::SetNames { charset_name, .. } => ("client_encoding".to_string(), charset_name.value),
        Set::SetNamesDefault {} => ("client_encoding".to_string(), "UTF8".to_string()),
        // Transaction characteristics, roles and session authorization are accepted: tally has
        // one isolation level and no role switching.
        _ => return Ok(Output::Command(Completion::tag("SET"))),
    };
    let value = if value.eq_ignore_ascii_case("default")
        || value.eq_ignore_ascii_case("local") && name == "timezone"
    {
        default_of(&name)
    } else {
        value
    };
    if let Some(key) = name.strip_prefix("datafusion.") {
        let key = format!("datafusion.{key}");
        session
            .ctx
            .state_ref()
            .write()
            .config_mut()
            .options_mut()
            .set(&key, &value)
            .map_err(|e| TallyError::InvalidValue {
                code: "22023",
                message: e.to_string(),
            })?;
        return Ok(Output::Command(Completion::tag("SET")));
    }
    session.set(&name, &value)?;
    let mut c = Completion::tag("SET");
    if REPORTED.iter().any(|(k, _)| *k == name) {
        c.parameter_status.push((canonical(&name), value));
    }
    Ok(Output::Command(c))
}

fn default_of(name: &str) -> String {
    match name {
        "search_path" => "\"$user\", public",
        "timezone" => "UTC",
        "statement_timeout" => "0",
        "datestyle" => "ISO, MDY",
        "client_encoding" => "UTF8",
        _ => "",
    }
    .to_string()
}

fn one_column(name: &str, values: Vec<String>) -> Result<Output> {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, true)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(values))])
        .map_err(|e| TallyError::Internal(e.to_string()))?;
    let stream = MemoryStream::try_new(vec![batch], schema, None)?;
    Ok(Output::Rows(Box::pin(stream)))
}

fn show_name(variable: &[Ident]) -> String {
    let name = variable
        .iter()
        .map(|i| i.value.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    match name.as_str() {
        "time zone" => "timezone".to_string(),
        "transaction isolation level" => "transaction_isolation".to_string(),
        other => other.to_string(),
    }
}

/// The row shape `SHOW` answers with, for Describe before execution.
pub fn show_schema(variable: &[Ident]) -> std::sync::Arc<Schema> {
    let name = show_name(variable);
    if name == "all" {
        return Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("setting", DataType::Utf8, false),
            Field::new("description", DataType::Utf8, false),
        ]));
    }
    let col = if name.starts_with("datafusion.") {
        name
    } else {
        canonical(&name)
    };
    Arc::new(Schema::new(vec![Field::new(col, DataType::Utf8, true)]))
}

/// `SHOW name` / `SHOW ALL`.
pub async fn show(session: &mut Session, variable: Vec<Ident>) -> Result<Output> {
    let name = show_name(&variable);
    if name == "all" {
        let settings = session.settings.read().clone();
        let schema = show_schema(&variable);
        let names: Vec<String> = settings.keys().map(|k| canonical(k)).collect();
        let values: Vec<String> = settings.values().cloned().collect();
        let empty = vec![String::new(); names.len()];
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(names)),
                Arc::new(StringArray::from(values)),
                Arc::new(StringArray::from(empty)),
            ],
        )
        .map_err(|e| TallyError::Internal(e.to_string()))?;
        return Ok(Output::Rows(Box::pin(MemoryStream::try_new(
            vec![batch],
            schema,
            None,
        )?)));
    }
    if name.starts_with("datafusion.") {
        let opts = session.ctx.state().config_options().clone();
        let entry = opts
            .entries()
            .into_iter()
            .find(|e| e.key == name)
            .ok_or_else(|| TallyError::NotFound {
                kind: "configuration parameter",
                name: name.clone(),
            })?;
        return one_column(&name, vec![entry.value.unwrap_or_default()]);
    }
    match session.setting(&name) {
        Some(v) => one_column(&canonical(&name), vec![v]),
        None => Err(TallyError::InvalidValue {
            code: "42704",
            message: format!("unrecognized configuration parameter \"{name}\""),
        }),
    }
}

/// `DISCARD ALL | TEMP | PLANS`: drops temporary tables and resets settings, as connection
/// poolers expect when they hand a connection to a new client.
pub fn discard(session: &mut Session) -> Result<Output> {
    let temp = session.catalog.temp().clone();
    for name in datafusion::catalog::SchemaProvider::table_names(temp.as_ref()) {
        let _ = datafusion::catalog::SchemaProvider::deregister_table(temp.as_ref(), &name);
    }
    for key in ["search_path", "statement_timeout", "timezone"] {
        session.set(key, &default_of(key))?;
    }
    Ok(Output::Command(Completion::tag("DISCARD ALL")))
}
