//! The options of `read_json_api`, given as one JSON object in the second argument:
//!
//! ```sql
//! SELECT * FROM read_json_api('https://api.example.com/tickets', '{
//!   "records": "/data",
//!   "pagination": "cursor", "cursor_path": "/meta/next", "cursor_param": "after",
//!   "bearer_env": "TICKETS_TOKEN", "rate_limit": 5, "max_pages": 100
//! }');
//! ```
//!
//! One JSON document rather than named arguments because DataFusion 55 hands table
//! functions positional values only, and a document keeps nested values (static headers and
//! query parameters) readable. Unknown options are an error, so a typo never silently turns
//! pagination off.

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;

use crate::error::{Result, TallyError};

/// How the next page is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pagination {
    /// Follow an RFC 8288 `Link: <...>; rel="next"` header when the response has one, else
    /// stop after the first page.
    #[default]
    Auto,
    /// One request only.
    None,
    /// Follow `Link: rel="next"` headers (same as `auto`; named for clarity).
    Link,
    /// The next cursor is read from the response (`cursor_path`) and sent as the query
    /// parameter `cursor_param`; a missing, null or empty cursor (or an empty page) ends.
    Cursor,
    /// `page_param` counts up from `page_start`; an empty page, or one shorter than
    /// `page_size`, ends.
    Page,
    /// `offset_param` advances by the records received, `limit_param` asks for
    /// `page_size`; an empty or short page ends.
    Offset,
}

/// The options as written, before defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOptions {
    records: Option<String>,
    #[serde(default)]
    pagination: Pagination,
    cursor_path: Option<String>,
    cursor_param: Option<String>,
    page_param: Option<String>,
    page_start: Option<u64>,
    page_size: Option<u64>,
    page_size_param: Option<String>,
    offset_param: Option<String>,
    limit_param: Option<String>,
    max_pages: Option<u64>,
    max_rows: Option<u64>,
    bearer_env: Option<String>,
    header_name: Option<String>,
    header_env: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    params: BTreeMap<String, serde_json::Value>,
    rate_limit: Option<f64>,
    max_retries: Option<usize>,
    min_delay_ms: Option<u64>,
    max_delay_ms: Option<u64>,
    max_retry_after_ms: Option<u64>,
    timeout_ms: Option<u64>,
    columns: Option<String>,
}

/// Where the secret header comes from: the header's name and the environment variable
/// holding its value (the value is read when a request is made, never stored).
#[derive(Debug, Clone)]
pub struct SecretHeader {
    /// Header name (`Authorization` for `bearer_env`).
    pub name: String,
    /// Environment variable holding the value.
    pub env: String,
    /// The option that named it, for messages.
    pub option: &'static str,
    /// Prefix put before the value (`Bearer ` for `bearer_env`).
    pub prefix: &'static str,
}

/// The options with their defaults applied and checked.
#[derive(Debug, Clone)]
pub struct Options {
    /// JSON pointer to the records array; `None`: the body itself is the array.
    pub records: Option<String>,
    /// Pagination style.
    pub pagination: Pagination,
    /// JSON pointer to the next cursor (cursor pagination).
    pub cursor_path: String,
    /// Query parameter carrying the cursor.
    pub cursor_param: String,
    /// Query parameter carrying the page number.
    pub page_param: String,
    /// First page number.
    pub page_start: u64,
    /// Records per page asked for (page and offset pagination).
    pub page_size: Option<u64>,
    /// Query parameter carrying `page_size`.
    pub page_size_param: String,
    /// Query parameter carrying the offset.
    pub offset_param: String,
    /// Requests at most this many pages.
    pub max_pages: Option<u64>,
    /// Returns at most this many rows.
    pub max_rows: Option<u64>,
    /// The credential header, if any.
    pub secret_header: Option<SecretHeader>,
    /// Headers sent with every request (not secret: use `bearer_env`/`header_env` for those).
    pub headers: BTreeMap<String, String>,
    /// Query parameters added to every request.
    pub params: Vec<(String, String)>,
    /// Requests per second at most (the limiter also halves its pace after each 429).
    pub rate_limit: Option<f64>,
    /// Retries of one request after a 5xx, 429, timeout or connection error.
    pub max_retries: usize,
    /// First backoff delay.
    pub min_delay: Duration,
    /// Longest backoff delay.
    pub max_delay: Duration,
    /// Longest `Retry-After` honoured (a longer one is cut to this).
    pub max_retry_after: Duration,
    /// Time limit of one request.
    pub timeout: Duration,
    /// Columns given explicitly, instead of inferred from the first page.
    pub columns: Option<SchemaRef>,
}

fn invalid(message: impl Into<String>) -> TallyError {
    TallyError::InvalidValue {
        code: "22023",
        message: message.into(),
    }
}

/// A path to a value in a response: a JSON pointer (`/data/items`) or dotted
/// (`data.items`), normalised to a JSON pointer.
pub fn to_pointer(path: &str) -> String {
    let p = path.trim();
    if p.is_empty() || p.starts_with('/') {
        p.to_string()
    } else {
        p.split('.')
            .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
            .collect()
    }
}

impl Options {
    /// Parses the options document (`None`: every default).
    pub fn parse(text: Option<&str>) -> Result<Options> {
        let raw: RawOptions = match text.map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => serde_json::from_str(t)
                .map_err(|e| invalid(format!("read_json_api options: {e}")))?,
            None => RawOptions::default(),
        };
        if raw.pagination == Pagination::Cursor && raw.cursor_path.is_none() {
            return Err(invalid(
                "read_json_api: cursor pagination needs cursor_path (where the next cursor is in the response)",
            ));
        }
        if raw.pagination == Pagination::Offset && raw.page_size.is_none() {
            return Err(invalid(
                "read_json_api: offset pagination needs page_size (the limit asked per request)",
            ));
        }
        if raw.page_size == Some(0) {
            return Err(invalid("read_json_api: page_size must be positive"));
        }
        if raw.rate_limit.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err(invalid(
                "read_json_api: rate_limit must be a positive number",
            ));
        }
        let secret_header = match (&raw.bearer_env, &raw.header_env) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "read_json_api: give bearer_env or header_env, not both",
                ));
            }
            (Some(env), None) => Some(SecretHeader {
                name: "Authorization".into(),
                env: env.clone(),
                option: "bearer_env",
                prefix: "Bearer ",
            }),
            (None, Some(env)) => Some(SecretHeader {
                name: raw
                    .header_name
                    .clone()
                    .unwrap_or_else(|| "Authorization".into()),
                env: env.clone(),
                option: "header_env",
                prefix: "",
            }),
            (None, None) => None,
        };
        if let Some(h) = &secret_header {
            reqwest::header::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| invalid(format!("read_json_api: invalid header name {}", h.name)))?;
        }
        for name in raw.headers.keys() {
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("read_json_api: invalid header name {name}")))?;
        }
        let params = raw
            .params
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect();
        let columns = raw.columns.as_deref().map(parse_columns).transpose()?;
        let offset_like = raw.pagination == Pagination::Offset;
        Ok(Options {
            records: raw
                .records
                .as_deref()
                .map(to_pointer)
                .filter(|p| !p.is_empty()),
            pagination: raw.pagination,
            cursor_path: raw
                .cursor_path
                .as_deref()
                .map(to_pointer)
                .unwrap_or_default(),
            cursor_param: raw.cursor_param.unwrap_or_else(|| "cursor".into()),
            page_param: raw.page_param.unwrap_or_else(|| "page".into()),
            page_start: raw.page_start.unwrap_or(1),
            page_size: raw.page_size,
            page_size_param: match (raw.page_size_param, raw.limit_param) {
                (Some(p), _) | (None, Some(p)) => p,
                (None, None) if offset_like => "limit".into(),
                (None, None) => "per_page".into(),
            },
            offset_param: raw.offset_param.unwrap_or_else(|| "offset".into()),
            max_pages: raw.max_pages,
            max_rows: raw.max_rows,
            secret_header,
            headers: raw.headers,
            params,
            rate_limit: raw.rate_limit,
            max_retries: raw.max_retries.unwrap_or(5),
            min_delay: Duration::from_millis(raw.min_delay_ms.unwrap_or(200)),
            max_delay: Duration::from_millis(raw.max_delay_ms.unwrap_or(30_000)),
            max_retry_after: Duration::from_millis(raw.max_retry_after_ms.unwrap_or(120_000)),
            timeout: Duration::from_millis(raw.timeout_ms.unwrap_or(30_000)),
            columns,
        })
    }
}

/// Parses `"id bigint, name text, created_at timestamptz"` into a schema, with the same
/// type names as `CREATE TABLE`.
fn parse_columns(text: &str) -> Result<SchemaRef> {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| invalid(format!("read_json_api columns: {e}")))?;
    let mut fields = Vec::new();
    loop {
        let name = parser
            .parse_identifier()
            .map_err(|e| invalid(format!("read_json_api columns: {e}")))?;
        let ty = parser
            .parse_data_type()
            .map_err(|e| invalid(format!("read_json_api columns: {e}")))?;
        let (arrow, _) = crate::catalog::types::arrow_type(&ty)?;
        fields.push(Field::new(name.value, arrow, true));
        if !parser.consume_token(&datafusion::sql::sqlparser::tokenizer::Token::Comma) {
            break;
        }
    }
    if parser.peek_token().token != datafusion::sql::sqlparser::tokenizer::Token::EOF {
        return Err(invalid(format!(
            "read_json_api columns: expected \"name type, ...\", found {}",
            parser.peek_token().token
        )));
    }
    if fields
        .iter()
        .any(|f| matches!(f.data_type(), DataType::List(_)))
    {
        return Err(invalid(
            "read_json_api columns: arrays are read as JSON text; declare them as text",
        ));
    }
    Ok(std::sync::Arc::new(Schema::new(fields)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let o = Options::parse(None).unwrap();
        assert_eq!(o.pagination, Pagination::Auto);
        assert!(Options::parse(Some(r#"{"pagination":"cursor"}"#)).is_err());
        assert!(Options::parse(Some(r#"{"paging":"cursor"}"#)).is_err());
        let o = Options::parse(Some(
            r#"{"pagination":"offset","page_size":10,"records":"data.items","columns":"id bigint, at timestamptz"}"#,
        ))
        .unwrap();
        assert_eq!(o.page_size_param, "limit");
        assert_eq!(o.records.as_deref(), Some("/data/items"));
        assert_eq!(o.columns.unwrap().fields().len(), 2);
    }
}
