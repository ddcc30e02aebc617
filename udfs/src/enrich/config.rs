//! A connection's settings, parsed from the `WITH (...)` options of `CREATE CONNECTION` (or
//! built by a program), with every bad value reported by option name.
//!
//! The `http` type's request contract, for APIs that do not have a type of their own:
//! - one key per request (`batch_size = 1`, the default): `GET <url>` with `{key}` in the URL
//!   replaced by the URL-encoded key, or `?<key_param>=<key>` appended when the URL has no
//!   `{key}`; with `method = 'POST'`, a JSON body `{"<key_param>": "<key>"}`. The answer's JSON
//!   body (or its member at `response_path`) is the key's value; 404 means "no value"
//!   (NULL, cached like any answer).
//! - batches (`batch_size > 1`): `POST <url>` with `{"<keys_field>": ["k1", "k2", ...]}`. The
//!   answer (or its member at `response_path`) is either a JSON array with one value per key
//!   in request order, or an object whose members are named by the keys (a missing member is
//!   NULL).
//!
//! The secret, when given, is sent as `Authorization: Bearer <secret>`, or as the value of the
//! header named by `auth_header`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::EnrichError;

/// What API a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionKind {
    /// A JSON API following the contract in the module documentation.
    Http,
    /// ZeroBounce's email validation API (v2 `validate` and `validatebatch`).
    ZeroBounce,
}

impl ConnectionKind {
    /// The kind named by `CREATE CONNECTION ... TYPE <name>`.
    pub fn parse(name: &str) -> Option<ConnectionKind> {
        match name.to_ascii_lowercase().as_str() {
            "http" => Some(ConnectionKind::Http),
            "zerobounce" => Some(ConnectionKind::ZeroBounce),
            _ => None,
        }
    }

    /// The type names, for messages.
    pub const NAMES: &'static [&'static str] = &["http", "zerobounce"];

    /// The type's name.
    pub fn name(self) -> &'static str {
        match self {
            ConnectionKind::Http => "http",
            ConnectionKind::ZeroBounce => "zerobounce",
        }
    }
}

/// HTTP method of single-key requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST` with a JSON body.
    Post,
}

/// Every setting of a connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// The connection's name (for messages and statistics).
    pub name: String,
    /// What API it speaks.
    pub kind: ConnectionKind,
    /// Endpoint URL (`http`, with its `{key}` or `{keys}` placeholder if any), or the API's
    /// base URL (`zerobounce`).
    pub url: String,
    /// The URL's host, as the SSRF guard resolves it.
    pub host: String,
    /// The URL's port (the scheme's default when not given).
    pub port: u16,
    /// Method of single-key requests.
    pub method: Method,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// The secret's value (an API key), if any. Never printed.
    pub secret: Option<String>,
    /// Header carrying the secret instead of `Authorization: Bearer`.
    pub auth_header: Option<String>,
    /// Query parameter (GET) or body member (POST) of a single key.
    pub key_param: String,
    /// Body member holding the keys of a batch request.
    pub keys_field: String,
    /// Dot path of the value inside the answer, if it is not the whole body.
    pub response_path: Vec<String>,
    /// Requests per second across all queries; `None` is unlimited.
    pub rate_limit: Option<f64>,
    /// Keys per request (1 = no batching).
    pub batch_size: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// How long an answer is reused; zero turns the cache off.
    pub cache_ttl: Duration,
    /// Most answers kept in the cache.
    pub cache_size: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries of a failed request before its keys are given up.
    pub retries: u32,
    /// Fail the query when a lookup fails, instead of returning NULL.
    pub strict: bool,
    /// Allow private, loopback and link-local addresses (see [`super::guard`]).
    pub allow_private: bool,
}

/// The option names a connection accepts, for messages.
pub const OPTIONS: &[&str] = &[
    "url",
    "method",
    "headers",
    "secret",
    "auth_header",
    "key_param",
    "keys_field",
    "response_path",
    "rate_limit",
    "batch_size",
    "concurrency",
    "cache_ttl",
    "cache_size",
    "timeout",
    "retries",
    "strict",
    "allow_private",
];

fn bad(option: &str, message: impl Into<String>) -> EnrichError {
    EnrichError::Option {
        option: option.to_string(),
        message: message.into(),
    }
}

fn number<T: std::str::FromStr>(
    options: &BTreeMap<String, String>,
    name: &str,
    default: T,
    ok: impl Fn(&T) -> bool,
    rule: &str,
) -> Result<T, EnrichError> {
    match options.get(name) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<T>() {
            Ok(n) if ok(&n) => Ok(n),
            _ => Err(bad(name, format!("expected {rule}, got '{v}'"))),
        },
    }
}

fn flag(options: &BTreeMap<String, String>, name: &str) -> Result<bool, EnrichError> {
    match options.get(name).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if matches!(v.as_str(), "true" | "on" | "yes" | "1") => Ok(true),
        Some(v) if matches!(v.as_str(), "false" | "off" | "no" | "0") => Ok(false),
        Some(v) => Err(bad(name, format!("expected true or false, got '{v}'"))),
    }
}

/// Seconds (`30`, `1.5`) or a number with a unit (`500ms`, `30s`, `10m`, `2h`, `1d`).
fn duration(
    options: &BTreeMap<String, String>,
    name: &str,
    default: Duration,
) -> Result<Duration, EnrichError> {
    let Some(v) = options.get(name) else {
        return Ok(default);
    };
    let t = v.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "ms" => 0.001,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86400.0,
        _ => f64::NAN,
    };
    match n.parse::<f64>() {
        Ok(n) if (n * scale).is_finite() && n >= 0.0 => Ok(Duration::from_secs_f64(n * scale)),
        _ => Err(bad(
            name,
            format!("expected a duration such as 30, 500ms, 10m or 1h, got '{v}'"),
        )),
    }
}

/// Headers as a JSON object (`{"X-Team": "growth"}`) or `Name: value` pairs separated by
/// newlines or semicolons.
fn headers(options: &BTreeMap<String, String>) -> Result<Vec<(String, String)>, EnrichError> {
    let Some(v) = options.get("headers") else {
        return Ok(vec![]);
    };
    let pairs: Vec<(String, String)> = if v.trim_start().starts_with('{') {
        let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(v)
            .map_err(|e| bad("headers", format!("not a JSON object: {e}")))?;
        obj.into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                other => Ok((k, other.to_string())),
            })
            .collect::<Result<_, EnrichError>>()?
    } else {
        v.split(['\n', ';'])
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| bad("headers", format!("expected 'Name: value', got '{l}'")))
            })
            .collect::<Result<_, _>>()?
    };
    for (k, v) in &pairs {
        if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(v).is_err()
        {
            return Err(bad("headers", format!("'{k}' is not a valid HTTP header")));
        }
    }
    Ok(pairs)
}

impl ConnectionConfig {
    /// Parses the options of a connection named `name`. `secret` is the value of the secret
    /// the `secret` option names, already looked up by the caller.
    pub fn from_options(
        name: &str,
        kind: ConnectionKind,
        options: &BTreeMap<String, String>,
        secret: Option<String>,
    ) -> Result<ConnectionConfig, EnrichError> {
        if let Some(unknown) = options.keys().find(|k| !OPTIONS.contains(&k.as_str())) {
            return Err(bad(
                unknown,
                format!("unknown option; the options are {}", OPTIONS.join(", ")),
            ));
        }
        let url_text = match (options.get("url"), kind) {
            (Some(u), _) => u.clone(),
            (None, ConnectionKind::ZeroBounce) => zerobounce_default_url(options).to_string(),
            (None, ConnectionKind::Http) => {
                return Err(bad("url", "is required (the API's endpoint)"));
            }
        };
        // `{key}` and `{keys}` are placeholders, not URL syntax: check the URL without them.
        let url = url::Url::parse(&url_text.replace("{keys}", "k").replace("{key}", "k"))
            .map_err(|e| bad("url", format!("'{url_text}' is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad("url", "must be an http:// or https:// URL with a host"));
        }
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let method = match options.get("method").map(|m| m.to_ascii_uppercase()) {
            None => Method::Get,
            Some(m) if m == "GET" => Method::Get,
            Some(m) if m == "POST" => Method::Post,
            Some(m) => return Err(bad("method", format!("expected GET or POST, got '{m}'"))),
        };
        let max_batch = match kind {
            ConnectionKind::Http => 10_000,
            ConnectionKind::ZeroBounce => super::zerobounce::MAX_BATCH,
        };
        let default_batch = match kind {
            ConnectionKind::Http => 1,
            ConnectionKind::ZeroBounce => super::zerobounce::MAX_BATCH,
        };
        let batch_size = number(
            options,
            "batch_size",
            default_batch,
            |n| (1..=max_batch).contains(n),
            &format!("a whole number from 1 to {max_batch}"),
        )?;
        let default_rate = match kind {
            // ZeroBounce documents 5 calls a minute for validatebatch.
            ConnectionKind::ZeroBounce if batch_size > 1 => Some(5.0 / 60.0),
            _ => None,
        };
        let rate_limit = match options.get("rate_limit") {
            None => default_rate,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(r) if r > 0.0 && r.is_finite() => Some(r),
                _ => {
                    return Err(bad(
                        "rate_limit",
                        format!("expected requests per second above 0, got '{v}'"),
                    ));
                }
            },
        };
        if kind == ConnectionKind::ZeroBounce && secret.is_none() {
            return Err(bad(
                "secret",
                "is required: the secret holding the ZeroBounce API key",
            ));
        }
        Ok(ConnectionConfig {
            name: name.to_string(),
            kind,
            url: url_text.trim_end_matches('/').to_string(),
            host,
            port,
            method,
            headers: headers(options)?,
            secret,
            auth_header: options.get("auth_header").cloned(),
            key_param: options
                .get("key_param")
                .cloned()
                .unwrap_or_else(|| "key".into()),
            keys_field: options
                .get("keys_field")
                .cloned()
                .unwrap_or_else(|| "keys".into()),
            response_path: options
                .get("response_path")
                .map(|p| {
                    p.split('.')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            rate_limit,
            batch_size,
            concurrency: number(
                options,
                "concurrency",
                4,
                |n| (1..=256).contains(n),
                "a whole number from 1 to 256",
            )?,
            cache_ttl: duration(options, "cache_ttl", Duration::from_secs(3600))?,
            cache_size: number(options, "cache_size", 100_000, |_| true, "a whole number")?,
            timeout: duration(options, "timeout", Duration::from_secs(10))?,
            retries: number(
                options,
                "retries",
                3,
                |n| *n <= 20,
                "a whole number up to 20",
            )?,
            strict: flag(options, "strict")?,
            allow_private: flag(options, "allow_private")?,
        })
    }
}

fn zerobounce_default_url(options: &BTreeMap<String, String>) -> &'static str {
    let batch = options
        .get("batch_size")
        .and_then(|b| b.trim().parse::<usize>().ok())
        .unwrap_or(super::zerobounce::MAX_BATCH);
    if batch > 1 {
        super::zerobounce::BULK_URL
    } else {
        super::zerobounce::API_URL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_options_and_names_bad_ones() {
        let c = ConnectionConfig::from_options(
            "crm",
            ConnectionKind::Http,
            &opts(&[
                ("url", "https://api.example.com/companies/{key}"),
                ("headers", r#"{"X-Team": "growth"}"#),
                ("rate_limit", "20"),
                ("cache_ttl", "10m"),
                ("batch_size", "50"),
                ("method", "post"),
            ]),
            None,
        )
        .expect("valid");
        assert_eq!(c.url, "https://api.example.com/companies/{key}");
        assert_eq!((c.host.as_str(), c.port), ("api.example.com", 443));
        assert_eq!(c.method, Method::Post);
        assert_eq!(c.rate_limit, Some(20.0));
        assert_eq!(c.cache_ttl, Duration::from_secs(600));
        assert_eq!(c.batch_size, 50);
        assert_eq!(c.headers, vec![("X-Team".into(), "growth".into())]);

        for (pairs, option) in [
            (vec![], "url"),
            (vec![("url", "ftp://x")], "url"),
            (
                vec![("url", "https://x"), ("rate_limit", "0")],
                "rate_limit",
            ),
            (
                vec![("url", "https://x"), ("batch_size", "0")],
                "batch_size",
            ),
            (
                vec![("url", "https://x"), ("cache_ttl", "soon")],
                "cache_ttl",
            ),
            (vec![("url", "https://x"), ("strict", "maybe")], "strict"),
            (vec![("url", "https://x"), ("colour", "blue")], "colour"),
            (
                vec![("url", "https://x"), ("headers", "nocolon")],
                "headers",
            ),
        ] {
            match ConnectionConfig::from_options("c", ConnectionKind::Http, &opts(&pairs), None) {
                Err(EnrichError::Option { option: o, .. }) => assert_eq!(o, option, "{pairs:?}"),
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn zerobounce_defaults_follow_its_documented_limits() {
        let c = ConnectionConfig::from_options(
            "zb",
            ConnectionKind::ZeroBounce,
            &BTreeMap::new(),
            Some("key".into()),
        )
        .expect("valid");
        assert_eq!(c.batch_size, 200);
        assert_eq!(c.url, "https://bulkapi.zerobounce.net");
        assert!((c.rate_limit.expect("limited") - 5.0 / 60.0).abs() < 1e-9);
        assert!(
            ConnectionConfig::from_options(
                "zb",
                ConnectionKind::ZeroBounce,
                &BTreeMap::new(),
                None
            )
            .is_err()
        );
    }
}
