//! A connection at run time: the vetted HTTP client, the answer cache, the rate limiter and
//! the retry policy, shared by every query that uses the connection (see the module
//! documentation of [`super`]).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lru::LruCache;
use parking_lot::Mutex;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::config::{ConnectionConfig, ConnectionKind, Method};
use super::{EnrichError, guard, zerobounce};

/// One key's answer: `Ok(None)` when the API has no value for it (404, JSON null, a missing
/// member), `Err` with the reason when the lookup failed.
pub type Lookup = Result<Option<Arc<Value>>, String>;

/// How long a vetted client (and so a DNS answer) is used before the host is resolved and
/// checked again.
const CLIENT_TTL: Duration = Duration::from_secs(300);
/// The longest wait between retries, and the longest `Retry-After` honoured as given.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Counters of a connection since it was set up, shown by `tally.connections`.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// HTTP requests sent (retries included).
    pub requests: AtomicU64,
    /// Keys asked of the API.
    pub keys: AtomicU64,
    /// Keys answered from the cache.
    pub cache_hits: AtomicU64,
    /// Keys whose lookup failed (NULL returned, or the query failed when strict).
    pub failures: AtomicU64,
    /// Requests retried after a 5xx, a timeout or a dropped connection.
    pub retries: AtomicU64,
    /// 429 answers.
    pub throttled: AtomicU64,
}

/// Paces requests to a fixed rate, and pauses everything after a 429 until its
/// `Retry-After` has passed. A fixed pace (rather than a token bucket's bursts) matches how
/// APIs count: per second or per minute, across the account.
#[derive(Debug)]
struct Pacer {
    interval: Option<Duration>,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(rate: Option<f64>) -> Self {
        Pacer {
            interval: rate.map(|r| Duration::from_secs_f64(1.0 / r)),
            next: Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock();
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + self.interval.unwrap_or_default();
            at
        };
        tokio::time::sleep_until(at).await;
    }

    fn pause(&self, for_: Duration) {
        let mut next = self.next.lock();
        *next = (*next).max(Instant::now() + for_);
    }
}

/// Why one attempt failed.
enum Failure {
    /// Worth another attempt, after `after` when the API said how long.
    Transient {
        after: Option<Duration>,
        message: String,
    },
    /// Retrying will not help (4xx, malformed answer, refused address).
    Permanent(String),
}

/// Answers by key, with when they arrived (for the TTL).
type AnswerCache = LruCache<String, (Instant, Option<Arc<Value>>)>;

/// Keys this call is asking the API for: removed from the connection's in-flight map when
/// the call ends, or is dropped (a canceled query), so that waiters never wait forever.
struct Claim<'a> {
    connection: &'a Connection,
    keys: &'a [&'a str],
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut inflight = self.connection.inflight.lock();
        for k in self.keys {
            inflight.remove(*k);
        }
    }
}

/// A connection ready to send; see the module documentation of [`super`].
#[derive(Debug)]
pub struct Connection {
    config: ConnectionConfig,
    client: tokio::sync::Mutex<Option<(reqwest::Client, Instant)>>,
    permits: Semaphore,
    pacer: Pacer,
    cache: Option<Mutex<AnswerCache>>,
    /// Keys being asked right now, with the channel their answer is published on.
    inflight: Mutex<HashMap<String, watch::Sender<Option<Lookup>>>>,
    stats: ConnectionStats,
}

impl Connection {
    /// A connection with `config`; nothing is resolved or sent until the first lookup.
    pub fn new(config: ConnectionConfig) -> Connection {
        let cache = NonZeroUsize::new(config.cache_size)
            .filter(|_| !config.cache_ttl.is_zero())
            .map(|n| Mutex::new(LruCache::new(n)));
        Connection {
            permits: Semaphore::new(config.concurrency),
            pacer: Pacer::new(config.rate_limit),
            cache,
            inflight: Mutex::new(HashMap::new()),
            client: tokio::sync::Mutex::new(None),
            stats: ConnectionStats::default(),
            config,
        }
    }

    /// The connection's settings.
    pub fn config(&self) -> &ConnectionConfig {
        &self.config
    }

    /// Its counters.
    pub fn stats(&self) -> &ConnectionStats {
        &self.stats
    }

    /// Resolves and checks the host (the SSRF guard), without sending anything: `CREATE
    /// CONNECTION` calls it so that a refused address is an error at once.
    pub async fn check_address(&self) -> Result<(), EnrichError> {
        self.client().await.map(|_| ())
    }

    async fn client(&self) -> Result<reqwest::Client, EnrichError> {
        let mut slot = self.client.lock().await;
        if let Some((c, built)) = slot.as_ref()
            && built.elapsed() < CLIENT_TTL
        {
            return Ok(c.clone());
        }
        let c = &self.config;
        let addrs = guard::vet(&c.name, &c.host, c.port, c.allow_private).await?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(c.timeout)
            .resolve_to_addrs(&c.host, &addrs)
            .user_agent(concat!("tally-enrich/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EnrichError::Request {
                connection: c.name.clone(),
                message: e.to_string(),
            })?;
        *slot = Some((client.clone(), Instant::now()));
        Ok(client)
    }

    /// Looks up every key (NULL keys stay NULL). Duplicates are asked once, cached answers
    /// are reused, a key another query is asking right now waits for that answer (so two
    /// partitions of one scan do not ask twice), the rest go out in batches. A key whose
    /// lookup failed is `None` and counted, or fails the call when the connection is strict.
    pub async fn lookup_all(
        &self,
        keys: &[Option<&str>],
    ) -> Result<Vec<Option<Arc<Value>>>, EnrichError> {
        let mut answers: HashMap<&str, Option<Arc<Value>>> = HashMap::new();
        let mut missing: Vec<&str> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        let now = Instant::now();
        for k in keys.iter().flatten() {
            if !seen.insert(k) {
                continue;
            }
            let cached = self.cache.as_ref().and_then(|c| {
                let mut c = c.lock();
                match c.get(*k) {
                    Some((at, v)) if now.duration_since(*at) < self.config.cache_ttl => {
                        Some(v.clone())
                    }
                    _ => None,
                }
            });
            match cached {
                Some(v) => {
                    self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                    answers.insert(k, v);
                }
                None => missing.push(k),
            }
        }
        // Claim the keys nobody is asking for yet; wait for the others.
        let mut mine: Vec<&str> = Vec::new();
        let mut theirs: Vec<(&str, watch::Receiver<Option<Lookup>>)> = Vec::new();
        {
            let mut inflight = self.inflight.lock();
            for k in missing {
                match inflight.get(k) {
                    Some(tx) => theirs.push((k, tx.subscribe())),
                    None => {
                        inflight.insert(k.to_string(), watch::channel(None).0);
                        mine.push(k);
                    }
                }
            }
        }
        let claim = Claim {
            connection: self,
            keys: &mine,
        };
        let mut first_failure: Option<String> = None;
        let mut settle = |l: Lookup, owner: bool| -> Option<Arc<Value>> {
            match l {
                Ok(v) => v,
                Err(message) => {
                    if owner {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(connection = %self.config.name, "lookup failed: {message}");
                    }
                    first_failure.get_or_insert(message);
                    None
                }
            }
        };
        let fetched = self.fetch(&mine).await;
        for (k, l) in mine.iter().zip(fetched) {
            if let (Ok(v), Some(c)) = (&l, &self.cache) {
                c.lock().put(k.to_string(), (Instant::now(), v.clone()));
            }
            if let Some(tx) = self.inflight.lock().get(*k) {
                tx.send_replace(Some(l.clone()));
            }
            answers.insert(k, settle(l, true));
        }
        drop(claim);
        let mut orphaned: Vec<&str> = Vec::new();
        for (k, mut rx) in theirs {
            let got = rx.wait_for(Option::is_some).await.map(|v| v.clone());
            match got {
                Ok(Some(l)) => {
                    self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                    answers.insert(k, settle(l, false));
                }
                // The query asking it was canceled: ask ourselves.
                _ => orphaned.push(k),
            }
        }
        let fetched = self.fetch(&orphaned).await;
        for (k, l) in orphaned.iter().zip(fetched) {
            answers.insert(k, settle(l, true));
        }
        if self.config.strict
            && let Some(message) = first_failure
        {
            return Err(EnrichError::Request {
                connection: self.config.name.clone(),
                message,
            });
        }
        Ok(keys
            .iter()
            .map(|k| k.and_then(|k| answers.get(k).cloned().flatten()))
            .collect())
    }

    /// Asks the API for `keys` in batches, `concurrency` requests at a time; one result per
    /// key, in order.
    async fn fetch(&self, keys: &[&str]) -> Vec<Lookup> {
        // The futures are built here (lazily: nothing runs until polled) rather than by a
        // closure inside the stream, whose borrowed arguments would not be `Send` for every
        // lifetime, as async functions called through `async_trait` need.
        let requests: Vec<_> = keys
            .chunks(self.config.batch_size)
            .enumerate()
            .map(|(i, chunk)| self.fetch_chunk(i, chunk))
            .collect();
        let mut done: Vec<(usize, Vec<Lookup>)> = futures::stream::iter(requests)
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().flat_map(|(_, l)| l).collect()
    }

    async fn fetch_chunk(&self, i: usize, chunk: &[&str]) -> (usize, Vec<Lookup>) {
        self.stats
            .keys
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        (i, self.with_retries(chunk).await)
    }

    async fn with_retries(&self, keys: &[&str]) -> Vec<Lookup> {
        let mut attempt = 0u32;
        loop {
            match self.attempt(keys).await {
                Ok(v) => return v,
                Err(Failure::Transient { after, message }) if attempt < self.config.retries => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(connection = %self.config.name, attempt, "retrying: {message}");
                    tokio::time::sleep(after.unwrap_or_else(|| backoff(attempt))).await;
                    attempt += 1;
                }
                Err(Failure::Transient { message, .. } | Failure::Permanent(message)) => {
                    return keys.iter().map(|_| Err(message.clone())).collect();
                }
            }
        }
    }

    async fn attempt(&self, keys: &[&str]) -> Result<Vec<Lookup>, Failure> {
        let client = self
            .client()
            .await
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        self.pacer.wait().await;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let request = self.request(&client, keys)?;
        let response = request.send().await.map_err(|e| Failure::Transient {
            after: None,
            message: format!(
                "request failed: {}",
                self.scrub(e.without_url().to_string())
            ),
        })?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            let after = retry_after(response.headers()).unwrap_or(Duration::from_secs(1));
            self.pacer.pause(after);
            return Err(Failure::Transient {
                after: Some(after),
                message: "429 Too Many Requests".into(),
            });
        }
        let body = response.bytes().await.map_err(|e| Failure::Transient {
            after: None,
            message: format!("reading the answer failed: {}", e.without_url()),
        })?;
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            return Err(Failure::Transient {
                after: None,
                message: format!("HTTP {status}: {}", self.snippet(&body)),
            });
        }
        let single = self.config.batch_size == 1;
        if status == StatusCode::NOT_FOUND && single && self.config.kind == ConnectionKind::Http {
            return Ok(vec![Ok(None)]);
        }
        if !status.is_success() {
            return Err(Failure::Permanent(format!(
                "HTTP {status}: {}",
                self.snippet(&body)
            )));
        }
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            Failure::Permanent(format!(
                "malformed JSON answer ({e}): {}",
                self.snippet(&body)
            ))
        })?;
        match self.config.kind {
            ConnectionKind::Http => self.decode_http(keys, value).map_err(Failure::Permanent),
            ConnectionKind::ZeroBounce if single => Ok(vec![zerobounce::decode_single(value)]),
            ConnectionKind::ZeroBounce => {
                zerobounce::decode_batch(keys, &value).map_err(Failure::Permanent)
            }
        }
    }

    fn request(
        &self,
        client: &reqwest::Client,
        keys: &[&str],
    ) -> Result<reqwest::RequestBuilder, Failure> {
        let c = &self.config;
        let encode = |k: &str| utf8_percent_encode(k, NON_ALPHANUMERIC).to_string();
        let builder = match c.kind {
            ConnectionKind::ZeroBounce => {
                let key = c.secret.as_deref().unwrap_or_default();
                if c.batch_size > 1 {
                    client
                        .post(format!("{}/v2/validatebatch", c.url))
                        .json(&zerobounce::batch_body(key, keys))
                } else {
                    client
                        .get(format!("{}/v2/validate", c.url))
                        .query(&zerobounce::single_query(key, keys[0]))
                }
            }
            ConnectionKind::Http if c.batch_size > 1 => {
                if c.url.contains("{keys}") {
                    let joined = keys.iter().map(|k| encode(k)).collect::<Vec<_>>().join(",");
                    client.get(c.url.replace("{keys}", &joined))
                } else {
                    client
                        .post(&c.url)
                        .json(&json!({ c.keys_field.as_str(): keys }))
                }
            }
            ConnectionKind::Http => {
                let key = keys[0];
                if c.url.contains("{key}") {
                    let url = c.url.replace("{key}", &encode(key));
                    match c.method {
                        Method::Get => client.get(url),
                        Method::Post => {
                            client.post(url).json(&json!({ c.key_param.as_str(): key }))
                        }
                    }
                } else {
                    match c.method {
                        Method::Get => client.get(&c.url).query(&[(c.key_param.as_str(), key)]),
                        Method::Post => client
                            .post(&c.url)
                            .json(&json!({ c.key_param.as_str(): key })),
                    }
                }
            }
        };
        let mut builder = builder.header(reqwest::header::ACCEPT, "application/json");
        for (k, v) in &c.headers {
            builder = builder.header(k, v);
        }
        if let (Some(secret), ConnectionKind::Http) = (&c.secret, c.kind) {
            builder = match &c.auth_header {
                Some(h) => builder.header(h, secret),
                None => builder.bearer_auth(secret),
            };
        }
        Ok(builder)
    }

    fn decode_http(&self, keys: &[&str], body: Value) -> Result<Vec<Lookup>, String> {
        let mut value = &body;
        for step in &self.config.response_path {
            value = match value {
                Value::Object(o) => o.get(step).unwrap_or(&Value::Null),
                Value::Array(a) => step
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| a.get(i))
                    .unwrap_or(&Value::Null),
                _ => &Value::Null,
            };
        }
        let some = |v: &Value| match v {
            Value::Null => None,
            v => Some(Arc::new(v.clone())),
        };
        if self.config.batch_size == 1 {
            return Ok(vec![Ok(some(value))]);
        }
        match value {
            Value::Array(items) if items.len() == keys.len() => {
                Ok(items.iter().map(|v| Ok(some(v))).collect())
            }
            Value::Array(items) => Err(format!(
                "the answer holds {} values for {} keys",
                items.len(),
                keys.len()
            )),
            Value::Object(members) => Ok(keys
                .iter()
                .map(|k| Ok(members.get(*k).and_then(some)))
                .collect()),
            _ => Err("a batch answer must be a JSON array or object".into()),
        }
    }

    fn snippet(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        self.scrub(text)
    }

    fn scrub(&self, text: String) -> String {
        match &self.config.secret {
            Some(s) if s.len() >= 3 => text.replace(s.as_str(), "***"),
            _ => text,
        }
    }
}

/// Exponential backoff with full jitter: 100 ms, 200 ms, 400 ms, ... up to [`MAX_BACKOFF`],
/// each scaled by a random factor in [0.5, 1) so that concurrent retries spread out.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    base.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let wait = match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
        _ => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(wait.min(MAX_BACKOFF))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let d0 = backoff(0);
        assert!(d0 >= Duration::from_millis(50) && d0 < Duration::from_millis(100));
        let d3 = backoff(3);
        assert!(d3 >= Duration::from_millis(400) && d3 < Duration::from_millis(800));
        assert!(backoff(30) <= MAX_BACKOFF);
    }

    #[test]
    fn reads_retry_after() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().expect("header"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "soon".parse().expect("header"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
