//! Receiver for the activation benchmarks (`scripts/bench-activation.sh`): a local HTTP server
//! that answers like a destination would, counts what it received and prints one JSON line
//! of totals on `GET /stats`.
//!
//! - `--mode webhook --delay-ms 5`: tally's webhook contract (`{"rows": [...]}`), answering
//!   200 after the delay (the "local webhook answering in 5 ms");
//! - `--mode hubspot`: HubSpot's batch upsert contract (`POST
//!   /crm/v3/objects/contacts/batch/upsert`, Bearer token, at most 100 inputs) with its
//!   documented private-app limit of 190 requests per rolling 10 seconds: a request beyond it
//!   gets 429 with HubSpot's `RATE_LIMIT` body. `/stats` reports accepted requests, 429s, and
//!   429s after warm-up (the first 10 s).
//!
//! In webhook mode, a row with a `received_ms` field (epoch milliseconds when tally received
//! the event, which a route projects from `received_at`, stamped just before the ack) adds
//! `now - received_ms` to a latency sample; `/stats` reports its p50, p99 and max.
//!
//! Written in Rust rather than Python so that the receiver is never what limits the measure.
//!
//! Usage: activation_sink --listen 127.0.0.1:0 --mode webhook|hubspot [--delay-ms 5]
//! (prints `listening <addr>` on stdout first).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};

/// HubSpot's documented burst limit for Professional/Enterprise private apps.
const HUBSPOT_WINDOW: Duration = Duration::from_secs(10);
const HUBSPOT_LIMIT: usize = 190;

struct Sink {
    mode: String,
    delay: Duration,
    rows: AtomicU64,
    requests: AtomicU64,
    throttled: AtomicU64,
    throttled_after_warmup: AtomicU64,
    first_at: Mutex<Option<Instant>>,
    last_at: Mutex<Option<Instant>>,
    window: Mutex<VecDeque<Instant>>,
    latencies_ms: Mutex<Vec<i64>>,
}

fn percentile(sorted: &[i64], p: f64) -> Value {
    if sorted.is_empty() {
        return Value::Null;
    }
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    Value::from(sorted[i])
}

fn answer(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    s: Arc<Sink>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.uri().path() == "/stats" {
        let span = match (*s.first_at.lock(), *s.last_at.lock()) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let mut lat = s.latencies_ms.lock().clone();
        lat.sort_unstable();
        return Ok(answer(
            200,
            json!({
                "latency_count": lat.len(),
                "latency_p50_ms": percentile(&lat, 0.50),
                "latency_p99_ms": percentile(&lat, 0.99),
                "latency_max_ms": lat.last(),
                "rows": s.rows.load(Ordering::SeqCst),
                "requests": s.requests.load(Ordering::SeqCst),
                "throttled": s.throttled.load(Ordering::SeqCst),
                "throttled_after_warmup": s.throttled_after_warmup.load(Ordering::SeqCst),
                "span_s": span,
            }),
        ));
    }
    if req.uri().path() == "/reset" {
        s.rows.store(0, Ordering::SeqCst);
        s.requests.store(0, Ordering::SeqCst);
        s.throttled.store(0, Ordering::SeqCst);
        s.throttled_after_warmup.store(0, Ordering::SeqCst);
        *s.first_at.lock() = None;
        *s.last_at.lock() = None;
        s.window.lock().clear();
        s.latencies_ms.lock().clear();
        return Ok(answer(200, json!({})));
    }
    let authorized = s.mode != "hubspot"
        || req
            .headers()
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == b"Bearer bench");
    let body = req.into_body().collect().await?.to_bytes();
    if !authorized {
        return Ok(answer(
            401,
            json!({"status": "error", "category": "INVALID_AUTHENTICATION"}),
        ));
    }
    let now = Instant::now();
    if s.mode == "hubspot" {
        let mut w = s.window.lock();
        while w
            .front()
            .is_some_and(|t| now.duration_since(*t) >= HUBSPOT_WINDOW)
        {
            w.pop_front();
        }
        if w.len() >= HUBSPOT_LIMIT {
            drop(w);
            s.throttled.fetch_add(1, Ordering::SeqCst);
            if s.first_at
                .lock()
                .is_some_and(|f| now.duration_since(f) > HUBSPOT_WINDOW)
            {
                s.throttled_after_warmup.fetch_add(1, Ordering::SeqCst);
            }
            return Ok(answer(
                429,
                json!({"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
                       "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING"}),
            ));
        }
        w.push_back(now);
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return Ok(answer(
                400,
                json!({"status": "error", "message": "malformed JSON"}),
            ));
        }
    };
    let field = if s.mode == "hubspot" {
        "inputs"
    } else {
        "rows"
    };
    let rows = parsed.get(field).and_then(Value::as_array);
    let n = rows.map_or(0, Vec::len) as u64;
    if let Some(rows) = rows {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let latencies: Vec<i64> = rows
            .iter()
            .filter_map(|r| r.get("received_ms").and_then(Value::as_i64))
            .map(|t| now_ms - t)
            .collect();
        if !latencies.is_empty() {
            s.latencies_ms.lock().extend(latencies);
        }
    }
    if s.mode == "hubspot" && (n == 0 || n > 100) {
        return Ok(answer(
            400,
            json!({"status": "error", "category": "VALIDATION_ERROR"}),
        ));
    }
    if !s.delay.is_zero() {
        tokio::time::sleep(s.delay).await;
    }
    let done = Instant::now();
    s.first_at.lock().get_or_insert(now);
    *s.last_at.lock() = Some(done);
    s.rows.fetch_add(n, Ordering::SeqCst);
    s.requests.fetch_add(1, Ordering::SeqCst);
    Ok(answer(200, json!({"status": "COMPLETE", "results": []})))
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let sink = Arc::new(Sink {
        mode: arg(&args, "--mode", "webhook"),
        delay: Duration::from_millis(arg(&args, "--delay-ms", "5").parse()?),
        rows: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        throttled: AtomicU64::new(0),
        throttled_after_warmup: AtomicU64::new(0),
        first_at: Mutex::new(None),
        last_at: Mutex::new(None),
        window: Mutex::new(VecDeque::new()),
        latencies_ms: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind(arg(&args, "--listen", "127.0.0.1:0")).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let sink = sink.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, sink.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
