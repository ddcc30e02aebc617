//! Requests and pages: one GET with the credential header, through the rate limiter,
//! retried with exponential backoff and jitter (`backon`) on 5xx, timeouts and connection
//! errors, and after `Retry-After` on 429; then the [`Pager`] that decides the next request
//! from the pagination style.
//!
//! The credential is read from its environment variable for each request and is never put
//! in an error or log: URLs are shown through [`redact_url`], and every message goes
//! through [`scrub`] with the credential before it leaves.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use url::Url;

use super::options::{Options, Pagination};
use crate::activate::limiter::AimdLimiter;
use crate::collect::pull::{redact_url, scrub, secret_from_env};
use crate::error::{Result, TallyError};

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server answered with an error status.
    #[error("GET {url} answered HTTP {status}{detail}")]
    Status {
        /// The request URL, redacted.
        url: String,
        /// HTTP status.
        status: u16,
        /// `: <start of the body>` or empty.
        detail: String,
        /// `Retry-After` of a 429 or 503.
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused or reset, timeout, broken body.
    #[error("GET {url} failed: {message}")]
    Transport {
        /// The request URL, redacted.
        url: String,
        /// What went wrong (reqwest's message without the URL).
        message: String,
    },
    /// The body is not JSON, or not the expected shape.
    #[error("GET {url}: {message}")]
    Body {
        /// The request URL, redacted.
        url: String,
        /// What is wrong with it.
        message: String,
    },
}

impl FetchError {
    fn transient(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => *status == 429 || *status >= 500,
            FetchError::Transport { .. } => true,
            FetchError::Body { .. } => false,
        }
    }

    fn into_tally(self, secrets: &[String]) -> TallyError {
        let code = match &self {
            FetchError::Status {
                status: 401 | 403, ..
            } => "28000",
            FetchError::Status {
                status: 404 | 410, ..
            } => "42P01",
            FetchError::Status { status: 429, .. } => "53400",
            FetchError::Status { status, .. } if *status >= 500 => "08006",
            FetchError::Status { .. } => "22023",
            FetchError::Transport { .. } => "08001",
            FetchError::Body { .. } => "22P02",
        };
        TallyError::Remote {
            code,
            message: scrub(format!("read_json_api: {self}"), secrets),
        }
    }
}

/// One response: its JSON body and the `rel="next"` link, if any.
#[derive(Debug, Clone)]
pub struct Response {
    /// The parsed body.
    pub body: Value,
    /// Target of the `Link: <...>; rel="next"` header.
    pub next_link: Option<Url>,
}

/// Makes requests for one `read_json_api` call.
#[derive(Debug)]
pub struct Fetcher {
    client: reqwest::Client,
    opts: Arc<Options>,
    limiter: Arc<AimdLimiter>,
}

impl Fetcher {
    /// A fetcher with the options' timeout and static headers, paced by `limiter` (shared
    /// by the requests of one call, planning's included).
    pub fn new(opts: Arc<Options>, limiter: Arc<AimdLimiter>) -> Result<Fetcher> {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in &opts.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| invalid_header(k))?;
            let value = HeaderValue::from_str(v).map_err(|_| invalid_header(k))?;
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(opts.timeout)
            .user_agent(concat!("tally/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TallyError::Internal(format!("HTTP client: {e}")))?;
        Ok(Fetcher {
            client,
            limiter,
            opts,
        })
    }

    /// The credential, read now from its environment variable.
    fn secret(&self) -> Result<Option<(HeaderName, HeaderValue, String)>> {
        let Some(h) = &self.opts.secret_header else {
            return Ok(None);
        };
        let raw = secret_from_env(h.option, &h.env)?;
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| invalid_header(&h.name))?;
        let mut value = HeaderValue::from_str(&format!("{}{raw}", h.prefix)).map_err(|_| {
            TallyError::InvalidValue {
                code: "22023",
                message: format!(
                    "read_json_api: the value of {} is not a valid header value",
                    h.env
                ),
            }
        })?;
        value.set_sensitive(true);
        Ok(Some((name, value, raw)))
    }

    /// GETs `url` with retries; the body must be JSON.
    pub async fn get(&self, url: &Url) -> Result<Response> {
        let secret = self.secret()?;
        let secrets: Vec<String> = secret.iter().map(|(_, _, raw)| raw.clone()).collect();
        let shown = redact_url(url);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.opts.min_delay)
            .with_max_delay(self.opts.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.opts.max_retries);
        let max_retry_after = self.opts.max_retry_after;
        let once = || async {
            self.limiter.acquire().await;
            self.get_once(url, &shown, secret.as_ref()).await
        };
        once.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(FetchError::transient)
            .adjust(|e, delay| match (e, delay) {
                // Retry-After replaces the backoff step, as long as retries remain.
                (
                    FetchError::Status {
                        retry_after: Some(after),
                        ..
                    },
                    Some(_),
                ) => Some((*after).min(max_retry_after)),
                _ => delay,
            })
            .notify(|e, delay| {
                if matches!(e, FetchError::Status { status: 429, .. }) {
                    self.limiter.throttled();
                }
                tracing::debug!(error = %scrub(e.to_string(), &secrets), ?delay, "read_json_api: retrying");
            })
            .await
            .map_err(|e| e.into_tally(&secrets))
    }

    async fn get_once(
        &self,
        url: &Url,
        shown: &str,
        secret: Option<&(HeaderName, HeaderValue, String)>,
    ) -> std::result::Result<Response, FetchError> {
        let mut req = self.client.get(url.clone());
        if let Some((name, value, _)) = secret {
            req = req.header(name.clone(), value.clone());
        }
        let transport = |e: reqwest::Error| FetchError::Transport {
            url: shown.to_string(),
            message: e.without_url().to_string(),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let header = |n: &str| {
            resp.headers()
                .get_all(n)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let retry_after = crate::activate::destinations::parse_retry_after(&header("retry-after"))
            .filter(|_| !header("retry-after").is_empty());
        let next_link = next_link(url, &header("link"));
        if !status.is_success() {
            let mut detail = resp.text().await.unwrap_or_default();
            detail = detail.trim().chars().take(200).collect();
            return Err(FetchError::Status {
                url: shown.to_string(),
                status: status.as_u16(),
                detail: if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                },
                retry_after,
            });
        }
        let bytes = resp.bytes().await.map_err(transport)?;
        let body = serde_json::from_slice(&bytes).map_err(|e| FetchError::Body {
            url: shown.to_string(),
            message: format!("the response is not JSON: {e}"),
        })?;
        Ok(Response { body, next_link })
    }
}

fn invalid_header(name: &str) -> TallyError {
    TallyError::InvalidValue {
        code: "22023",
        message: format!("read_json_api: invalid header {name}"),
    }
}

/// The `rel="next"` target of an RFC 8288 `Link` header value, resolved against `base`.
pub fn next_link(base: &Url, header: &str) -> Option<Url> {
    // Split on commas outside <...>: a URL may hold commas.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in header.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&header[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&header[start..]);
    parts.into_iter().find_map(|link| {
        let link = link.trim();
        let target = link.strip_prefix('<')?.split('>').next()?;
        let params = link.split_once('>')?.1;
        let is_next = params.split(';').any(|p| {
            let p = p.trim();
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            })
        });
        if is_next {
            base.join(target).ok()
        } else {
            None
        }
    })
}

/// `url` with query parameter `name` set to `value` (replacing any earlier value).
pub fn with_param(url: &Url, name: &str, value: &str) -> Url {
    let mut out = url.clone();
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    out.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair(name, value);
    out
}

/// What the pager knows between pages.
#[derive(Debug)]
pub struct Pager {
    opts: Arc<Options>,
    base: Url,
    next: Option<Url>,
    page_no: u64,
    offset: u64,
    pages: u64,
    rows: u64,
    row_cap: Option<u64>,
}

impl Pager {
    /// A pager starting at `url` with the options' static parameters and the first page's
    /// pagination parameters; `limit` caps rows on top of `max_rows`.
    pub fn new(url: &Url, opts: Arc<Options>, limit: Option<usize>) -> Pager {
        let mut base = url.clone();
        for (k, v) in &opts.params {
            base = with_param(&base, k, v);
        }
        if let (Some(size), Pagination::Page | Pagination::Offset) =
            (opts.page_size, opts.pagination)
        {
            base = with_param(&base, &opts.page_size_param, &size.to_string());
        }
        let first = match opts.pagination {
            Pagination::Page => with_param(&base, &opts.page_param, &opts.page_start.to_string()),
            Pagination::Offset => with_param(&base, &opts.offset_param, "0"),
            _ => base.clone(),
        };
        let row_cap = match (opts.max_rows, limit) {
            (Some(a), Some(b)) => Some(a.min(b as u64)),
            (a, b) => a.or(b.map(|b| b as u64)),
        };
        Pager {
            page_no: opts.page_start,
            opts,
            base,
            next: Some(first),
            offset: 0,
            pages: 0,
            rows: 0,
            row_cap,
        }
    }

    /// The next request to make, or `None` when done.
    pub fn next_url(&self) -> Option<&Url> {
        if self.opts.max_pages.is_some_and(|m| self.pages >= m)
            || self.row_cap.is_some_and(|c| self.rows >= c)
        {
            return None;
        }
        self.next.as_ref()
    }

    /// Takes one response: returns its records (cut to the row cap) and works out the next
    /// request.
    pub fn take(&mut self, resp: Response, shown_url: &str) -> Result<Vec<Value>> {
        let opts = self.opts.clone();
        let mut records = records_of(resp.body.clone(), opts.records.as_deref(), shown_url)?;
        self.pages += 1;
        let received = records.len() as u64;
        let short = opts.page_size.is_some_and(|s| received < s);
        self.next = match opts.pagination {
            Pagination::None => None,
            Pagination::Auto | Pagination::Link => resp.next_link,
            Pagination::Cursor => match resp.body.pointer(&opts.cursor_path) {
                _ if received == 0 => None,
                Some(Value::String(s)) if !s.is_empty() => {
                    Some(with_param(&self.base, &opts.cursor_param, s))
                }
                Some(Value::Number(n)) => {
                    Some(with_param(&self.base, &opts.cursor_param, &n.to_string()))
                }
                _ => None,
            },
            Pagination::Page => {
                if received == 0 || short {
                    None
                } else {
                    self.page_no += 1;
                    Some(with_param(
                        &self.base,
                        &opts.page_param,
                        &self.page_no.to_string(),
                    ))
                }
            }
            Pagination::Offset => {
                if received == 0 || short {
                    None
                } else {
                    self.offset += received;
                    Some(with_param(
                        &self.base,
                        &opts.offset_param,
                        &self.offset.to_string(),
                    ))
                }
            }
        };
        if let Some(cap) = self.row_cap {
            let room = cap.saturating_sub(self.rows) as usize;
            records.truncate(room);
        }
        self.rows += records.len() as u64;
        Ok(records)
    }
}

/// The records array of a body: at the pointer, or the body itself when it is an array
/// (a single object without a pointer is one record).
fn records_of(body: Value, pointer: Option<&str>, shown_url: &str) -> Result<Vec<Value>> {
    let found = match pointer {
        Some(p) => match body {
            Value::Object(_) | Value::Array(_) => body.pointer(p).cloned(),
            _ => None,
        },
        None => Some(body),
    };
    match found {
        Some(Value::Array(a)) => Ok(a),
        Some(Value::Null) => Ok(Vec::new()),
        Some(o @ Value::Object(_)) if pointer.is_none() => Ok(vec![o]),
        Some(other) => Err(TallyError::Remote {
            code: "22P02",
            message: format!(
                "read_json_api: GET {shown_url}: the records at {} are not an array but {}",
                pointer.unwrap_or("the top level"),
                kind(&other)
            ),
        }),
        None => Err(TallyError::Remote {
            code: "22P02",
            message: format!(
                "read_json_api: GET {shown_url}: the response has nothing at {}",
                pointer.unwrap_or("")
            ),
        }),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        let base = Url::parse("https://api.example.com/items?page=1").unwrap();
        let h = r#"<https://api.example.com/items?page=1>; rel="prev", <https://api.example.com/items?page=3&a=1,2>; rel="next""#;
        assert_eq!(
            next_link(&base, h).unwrap().as_str(),
            "https://api.example.com/items?page=3&a=1,2"
        );
        assert_eq!(
            next_link(&base, "</items?page=2>; rel=next")
                .unwrap()
                .as_str(),
            "https://api.example.com/items?page=2"
        );
        assert!(next_link(&base, r#"<x>; rel="last""#).is_none());
        assert!(next_link(&base, "").is_none());
    }

    #[test]
    fn params_replace() {
        let u = Url::parse("http://h/p?page=1&q=x").unwrap();
        assert_eq!(
            with_param(&u, "page", "2").as_str(),
            "http://h/p?q=x&page=2"
        );
    }
}
