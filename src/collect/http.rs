//! The HTTP side of collection: the Segment HTTP Tracking API (`/v1/track`, `/v1/identify`,
//! `/v1/page`, `/v1/screen`, `/v1/group`, `/v1/alias`, `/v1/batch`, `/v1/import`), which the
//! RudderStack data plane and every Segment and RudderStack SDK speak, plus `GET /health`.
//!
//! Authentication is the source's write key as the HTTP Basic user name (empty password),
//! or `writeKey` in the body as browsers send it. Bodies may be gzip-compressed. Limits are
//! the spec's: 32 KB per message and 500 KB per batch (after decompression, so a gzip bomb
//! stops at the limit); headers must arrive within 10 s and the body within 30 s, so slow
//! clients cannot hold connections open. Answers are JSON: `{"success": true}` or
//! `{"success": false, "code": ..., "message": ...}` with the HTTP status.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::message::{BatchDefaults, Kind, MAX_BATCH_BYTES, Rejection};
use super::{Collector, RawMessage};
use crate::error::{Result, TallyError};

/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send its request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest body read off the wire, compressed or not.
const MAX_WIRE_BYTES: usize = MAX_BATCH_BYTES + 64 * 1024;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 10_000;

#[derive(Clone)]
struct App {
    collector: Option<Arc<Collector>>,
}

/// An error answer.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"success": false, "code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

/// The HTTP routes. Without a collector (embedded use), only `/health` answers.
pub fn router(collector: Option<Arc<Collector>>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/batch", post(batch))
        .route("/v1/import", post(batch))
        .route("/v1/{kind}", post(single))
        .with_state(App { collector })
        .layer(axum::middleware::from_fn(cors))
}

async fn health(State(app): State<App>) -> Response {
    let mut body = json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")});
    if let Some(c) = &app.collector {
        let d = c.wal().durable();
        body["collect"] = json!({
            "wal_pending_events": d.seq.saturating_sub(c.wal().flushed()),
            "wal_bytes": c.wal().disk_bytes(),
        });
    }
    axum::Json(body).into_response()
}

/// CORS for browsers: any origin may send events (the write key is the credential), and
/// preflight requests are answered here without reaching the handlers.
async fn cors(req: Request<Body>, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let requested = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned();
    let mut resp = if req.method() == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        origin.unwrap_or(HeaderValue::from_static("*")),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        requested.unwrap_or(HeaderValue::from_static(
            "Content-Type, Authorization, Content-Encoding, AnonymousId",
        )),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    resp
}

/// The write key from `Authorization: Basic base64(key:)`.
fn basic_key(headers: &HeaderMap) -> std::result::Result<Option<String>, ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "malformed Authorization header: expected Basic with the write key as user name",
        )
    };
    let v = v.to_str().map_err(|_| bad())?;
    let Some(b64) = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))
    else {
        return Err(bad());
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let key = text.split(':').next().unwrap_or("").to_string();
    Ok((!key.is_empty()).then_some(key))
}

/// Reads the body within the time and size limits and undoes gzip.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> std::result::Result<Vec<u8>, ApiError> {
    let too_large = |what: &str| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("{what} is over the limit of {limit} bytes"),
        )
    };
    let limited = http_body_util::Limited::new(body, MAX_WIRE_BYTES);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            ));
        }
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(too_large("request body"));
            }
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("cannot read the request body: {e}"),
            ));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_str() {
        "" | "identity" => {
            if bytes.len() > limit {
                return Err(too_large("request body"));
            }
            Ok(bytes.to_vec())
        }
        "gzip" | "x-gzip" => {
            let mut out = Vec::with_capacity(bytes.len() * 4);
            let mut decoder = flate2::read::GzDecoder::new(&bytes[..]).take(limit as u64 + 1);
            decoder.read_to_end(&mut out).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("the gzip body cannot be decompressed: {e}"),
                )
            })?;
            if out.len() > limit {
                return Err(too_large("decompressed request body"));
            }
            Ok(out)
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!("Content-Encoding '{other}' is not supported; send gzip or no encoding"),
        )),
    }
}

fn collector(app: &App) -> std::result::Result<&Arc<Collector>, ApiError> {
    app.collector.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "collection is not running",
        )
    })
}

async fn authenticate(
    c: &Collector,
    header_key: Option<String>,
    body_key: Option<&str>,
) -> std::result::Result<Arc<str>, ApiError> {
    let key = header_key.or(body_key.map(str::to_string)).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "no write key: send it as the Basic auth user name or as writeKey in the body",
        )
    })?;
    c.source_for_key(&key).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid write key",
        )
    })
}

fn unavailable(e: TallyError) -> ApiError {
    tracing::error!(error = %e, "cannot log collected events");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "events could not be written durably; retry later",
    )
}

#[derive(Deserialize)]
struct KeyOnly<'a> {
    #[serde(rename = "writeKey", borrow, default)]
    write_key: Option<&'a str>,
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow, default)]
    batch: Option<Vec<&'a RawValue>>,
    #[serde(rename = "writeKey", borrow, default)]
    write_key: Option<&'a str>,
    #[serde(rename = "sentAt", default)]
    sent_at: Option<Value>,
    #[serde(default)]
    context: Option<Map<String, Value>>,
}

async fn single(
    State(app): State<App>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> std::result::Result<Response, ApiError> {
    let c = collector(&app)?;
    let kind = Kind::parse(&kind).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no endpoint /v1/{kind}"),
        )
    })?;
    let header_key = basic_key(&headers)?;
    let bytes = read_body(&headers, body, MAX_BATCH_BYTES).await?;
    let text = String::from_utf8_lossy(&bytes);
    let parsed: std::result::Result<KeyOnly, _> = serde_json::from_str(&text);
    let body_key = parsed.as_ref().ok().and_then(|k| k.write_key);
    let source = authenticate(c, header_key, body_key).await?;
    if let Err(e) = parsed {
        let rej = Rejection {
            code: "invalid_json",
            message: format!("body is not a JSON object: {e}"),
        };
        c.reject_request(&source, &text, &rej)
            .await
            .map_err(unavailable)?;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            rej.code,
            rej.message,
        ));
    }
    let outcome = c
        .ingest(
            &source,
            vec![RawMessage { text: &text }],
            Some(kind),
            &BatchDefaults::default(),
            bytes.len(),
        )
        .await
        .map_err(unavailable)?;
    if let Some((_, rej)) = outcome.rejected.into_iter().next() {
        let status = if rej.code == "too_large" {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        return Err(ApiError::new(status, rej.code, rej.message));
    }
    Ok(axum::Json(json!({"success": true})).into_response())
}

async fn batch(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> std::result::Result<Response, ApiError> {
    let c = collector(&app)?;
    let header_key = basic_key(&headers)?;
    let bytes = read_body(&headers, body, MAX_BATCH_BYTES).await?;
    let text = String::from_utf8_lossy(&bytes);
    let parsed: std::result::Result<BatchBody, _> = serde_json::from_str(&text);
    let body_key = parsed.as_ref().ok().and_then(|b| b.write_key);
    let source = authenticate(c, header_key, body_key).await?;
    let parsed = match parsed {
        Ok(b) => b,
        Err(e) => {
            let rej = Rejection {
                code: "invalid_json",
                message: format!("body is not a JSON batch: {e}"),
            };
            c.reject_request(&source, &text, &rej)
                .await
                .map_err(unavailable)?;
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                rej.code,
                rej.message,
            ));
        }
    };
    let Some(messages) = parsed.batch else {
        let rej = Rejection {
            code: "invalid_request",
            message: "batch request has no \"batch\" array".into(),
        };
        c.reject_request(&source, &text, &rej)
            .await
            .map_err(unavailable)?;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            rej.code,
            rej.message,
        ));
    };
    let defaults = BatchDefaults {
        sent_at: parsed.sent_at,
        context: parsed.context,
    };
    let raw: Vec<RawMessage> = messages
        .iter()
        .map(|m| RawMessage { text: m.get() })
        .collect();
    let outcome = c
        .ingest(&source, raw, None, &defaults, bytes.len())
        .await
        .map_err(unavailable)?;
    let mut answer = json!({"success": true});
    if outcome.duplicates > 0 {
        answer["duplicates"] = json!(outcome.duplicates);
    }
    if !outcome.rejected.is_empty() {
        answer["rejected"] = outcome
            .rejected
            .iter()
            .map(|(i, r)| json!({"index": i, "code": r.code, "message": r.message}))
            .collect();
    }
    Ok(axum::Json(answer).into_response())
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let tracker = tokio_util::task::TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.map_err(|e| TallyError::Internal(e.to_string()))?,
            _ = shutdown.changed() => break,
        };
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut stop = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(30), tracker.wait()).await;
    Ok(())
}
