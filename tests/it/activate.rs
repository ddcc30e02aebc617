//! Activation over the real wire: destinations in SQL, the conformance suite every HTTP
//! destination type runs (one fault schedule, one set of promises), `COPY ... TO DESTINATION`
//! to a webhook and to a HubSpot mock (local HTTP servers that enforce the documented contract strictly and
//! inject faults: 500s, 429 with and without Retry-After, a dropped connection, a slow answer,
//! a permanently rejected row), and to the real PostgreSQL, Redis and NATS JetStream of this
//! machine. Assertions are about behaviour (every good row exactly once, order per key, the
//! bad row in `tally.rejected_rows`), never about timing.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::common::{TestServer, code, local_postgres, num, rows, unique};

#[tokio::test]
async fn destinations_are_catalog_objects_with_hidden_secrets() {
    let mut server = TestServer::start().await;
    let c = server.client().await;
    c.batch_execute(
        "CREATE DESTINATION hooks TYPE webhook WITH (url = 'https://example.com/hook', \
         hmac_secret = 'hunter2-secret', headers = '{\"Authorization\": \"Bearer sk-live-123\", \"X-Team\": \"growth\"}', batch_size = 50)",
    )
    .await
    .expect("create webhook");
    c.batch_execute(
        "CREATE DESTINATION crm TYPE hubspot WITH (token_env = 'TALLY_TEST_HUBSPOT_TOKEN')",
    )
    .await
    .expect("create hubspot");
    let list = rows(
        &c,
        "SELECT name, type, options FROM tally.destinations ORDER BY name",
    )
    .await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "crm");
    assert_eq!(list[1]["type"], "webhook");
    let opts = &list[1]["options"];
    assert!(
        !opts.contains("hunter2") && !opts.contains("sk-live"),
        "{opts}"
    );
    assert!(opts.contains("***") && opts.contains("growth") && opts.contains("example.com"));

    let err = c
        .batch_execute("CREATE DESTINATION x TYPE carrier_pigeon")
        .await
        .expect_err("unknown type");
    assert_eq!(code(&err), "22023");
    let err = c
        .batch_execute("CREATE DESTINATION x TYPE webhook WITH (hmac_secret = 'shh-very-secret')")
        .await
        .expect_err("missing url");
    assert_eq!(code(&err), "22023");
    assert!(!err.to_string().contains("shh-very-secret"));
    let err = c
        .batch_execute("CREATE DESTINATION hooks TYPE webhook WITH (url = 'http://x')")
        .await
        .expect_err("duplicate");
    assert_eq!(code(&err), "42710");
    c.batch_execute("CREATE DESTINATION IF NOT EXISTS hooks TYPE webhook WITH (url = 'http://x')")
        .await
        .expect("if not exists");
    let err = c
        .batch_execute("ALTER DESTINATION nope SET (url = 'http://y')")
        .await
        .expect_err("alter unknown");
    assert_eq!(code(&err), "42704");
    let err = c
        .batch_execute("ALTER DESTINATION hooks SET (batch_size = 'many')")
        .await
        .expect_err("bad number");
    assert_eq!(code(&err), "22023");
    c.batch_execute("ALTER DESTINATION hooks SET (url = 'https://example.org/v2')")
        .await
        .expect("alter");
    let err = c
        .simple_query("COPY (SELECT 1 AS id) TO DESTINATION nowhere")
        .await
        .expect_err("copy to unknown destination");
    assert_eq!(code(&err), "42704");
    for bad in ["0", "33", "lots"] {
        let err = c
            .simple_query(&format!(
                "COPY (SELECT 1 AS id) TO DESTINATION hooks WITH (concurrency = '{bad}')"
            ))
            .await
            .expect_err("concurrency out of range");
        assert_eq!(code(&err), "22023", "concurrency {bad}: {err}");
    }
    let err = c
        .simple_query("COPY (SELECT 1 AS id) TO DESTINATION crm WITH (mode = 'insert')")
        .await
        .expect_err("hubspot has no insert mode");
    assert_eq!(code(&err), "0A000");
    let err = c
        .simple_query(
            "COPY (SELECT 1 AS id) TO DESTINATION hooks WITH (mode = 'upsert', key = 'missing')",
        )
        .await
        .expect_err("unknown key column");
    assert_eq!(code(&err), "42703");

    server.restart().await;
    let c = server.client().await;
    let list = rows(
        &c,
        "SELECT name, options FROM tally.destinations WHERE name = 'hooks'",
    )
    .await;
    assert!(list[0]["options"].contains("example.org/v2"), "{list:?}");
    let err = c
        .batch_execute("DROP DESTINATION hooks, nope")
        .await
        .expect_err("drop unknown");
    assert_eq!(code(&err), "42704");
    c.batch_execute("DROP DESTINATION IF EXISTS hooks, nope")
        .await
        .expect("drop");
    let list = rows(&c, "SELECT name FROM tally.destinations").await;
    assert_eq!(list.len(), 1);
}

/// A fault the mock injects into the n-th request.
#[derive(Debug, Clone)]
enum Fault {
    /// Answer 500 without applying.
    ServerError,
    /// Answer 429, with `Retry-After: n` seconds when given.
    Throttle(Option<u64>),
    /// Apply the batch, then drop the connection without answering.
    Drop,
    /// Apply the batch, then answer after this long (longer than the client's timeout).
    Slow(Duration),
}

#[derive(Debug, Clone)]
enum Contract {
    /// tally's webhook contract with a bearer token, an HMAC secret and a batch limit.
    Webhook {
        token: String,
        secret: String,
        max_rows: usize,
    },
    /// HubSpot's `POST /crm/v3/objects/contacts/batch/upsert`.
    HubSpot { token: String },
    /// Braze's `POST /users/track`.
    Braze { key: String },
    /// Mixpanel's `POST /engage?verbose=1` (profile updates).
    Mixpanel { token: String },
    /// Amplitude's `POST /batch`.
    Amplitude { key: String },
}

#[derive(Debug, Default)]
struct MockState {
    requests: u64,
    faults: HashMap<u64, Fault>,
    /// Idempotency keys already applied.
    idempotency: HashSet<String>,
    /// Rows applied, in the order they were applied.
    applied: Vec<Value>,
    /// Status of every answer, in order.
    statuses: Vec<u16>,
}

type Shared = Arc<Mutex<MockState>>;

fn answer(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a request against the contract; the rows to apply, or the refusal.
fn check(
    contract: &Contract,
    parts: &hyper::http::request::Parts,
    body: &[u8],
) -> Result<(Option<String>, Vec<Value>), (u16, Value)> {
    let header = |h: &str| {
        parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match contract {
        Contract::Webhook {
            token,
            secret,
            max_rows,
        } => {
            if parts.method != hyper::Method::POST || parts.uri.path() != "/hook" {
                return Err((404, json!({"error": "not found"})));
            }
            if header("authorization").as_deref() != Some(&format!("Bearer {token}")) {
                return Err((401, json!({"error": "bad token"})));
            }
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
            let want = format!("sha256={}", hex(ring::hmac::sign(&key, body).as_ref()));
            if header("x-tally-signature").as_deref() != Some(want.as_str()) {
                return Err((401, json!({"error": "bad signature"})));
            }
            let Some(idem) = header("idempotency-key") else {
                return Err((400, json!({"error": "Idempotency-Key required"})));
            };
            let v: Value = serde_json::from_slice(body)
                .map_err(|_| (400, json!({"error": "malformed JSON"})))?;
            let Some(rows) = v.get("rows").and_then(Value::as_array) else {
                return Err((400, json!({"error": "rows must be an array"})));
            };
            if rows.len() > *max_rows {
                return Err((
                    400,
                    json!({"error": format!("at most {max_rows} rows per request")}),
                ));
            }
            for r in rows {
                let email = r.get("email").and_then(Value::as_str).unwrap_or("");
                if r.get("id").and_then(Value::as_i64).is_none() || !email.contains('@') {
                    return Err((400, json!({"error": "invalid record", "record": r})));
                }
            }
            Ok((Some(idem), rows.clone()))
        }
        Contract::Braze { key } => {
            if parts.method != hyper::Method::POST || parts.uri.path() != "/users/track" {
                return Err((404, json!({"message": "not found"})));
            }
            if header("authorization").as_deref() != Some(&format!("Bearer {key}")) {
                return Err((401, json!({"message": "Invalid API key"})));
            }
            let v: Value = serde_json::from_slice(body)
                .map_err(|_| (400, json!({"message": "Invalid JSON"})))?;
            let Some(attrs) = v.get("attributes").and_then(Value::as_array) else {
                return Err((400, json!({"message": "attributes missing"})));
            };
            if attrs.len() > 75 {
                return Err((
                    400,
                    json!({"message": "Too many attributes objects: 75 at most"}),
                ));
            }
            // Braze answers 201 with per-object errors for objects it could not process.
            let errors: Vec<Value> = attrs
                .iter()
                .enumerate()
                .filter(|(_, a)| {
                    a.get("external_id").and_then(Value::as_str).is_none()
                        || a.get("email").and_then(Value::as_str).is_some_and(|e| !e.contains('@'))
                })
                .map(|(i, _)| json!({"type": "'email' is invalid", "input_array": "attributes", "index": i}))
                .collect();
            if !errors.is_empty() {
                return Err((201, json!({"message": "success", "errors": errors})));
            }
            Ok((None, attrs.clone()))
        }
        Contract::Mixpanel { token } => {
            if parts.method != hyper::Method::POST
                || parts.uri.path() != "/engage"
                || parts.uri.query() != Some("verbose=1")
            {
                return Err((404, json!({"error": "not found"})));
            }
            let v: Value = serde_json::from_slice(body)
                .map_err(|_| (400, json!({"status": 0, "error": "malformed JSON"})))?;
            let Some(updates) = v.as_array() else {
                return Err((400, json!({"status": 0, "error": "expected an array"})));
            };
            if updates.len() > 2000 {
                return Err((400, json!({"status": 0, "error": "at most 2000 updates"})));
            }
            for u in updates {
                if u.get("$token").and_then(Value::as_str) != Some(token.as_str()) {
                    return Err((401, json!({"status": 0, "error": "Invalid token"})));
                }
                let ok = u
                    .get("$distinct_id")
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.is_empty())
                    && u.get("$set")
                        .and_then(Value::as_object)
                        .is_some_and(|s| s.get("plan").and_then(Value::as_str) != Some("???"));
                if !ok {
                    // Mixpanel refuses the whole batch with status 0 in a 200 answer.
                    return Err((
                        200,
                        json!({"status": 0, "error": format!("invalid update {u}")}),
                    ));
                }
            }
            Ok((None, updates.clone()))
        }
        Contract::Amplitude { key } => {
            if parts.method != hyper::Method::POST || parts.uri.path() != "/batch" {
                return Err((404, json!({"error": "not found"})));
            }
            let v: Value = serde_json::from_slice(body).map_err(|_| {
                (
                    400,
                    json!({"code": 400, "error": "Invalid JSON request body"}),
                )
            })?;
            if v.get("api_key").and_then(Value::as_str) != Some(key.as_str()) {
                return Err((400, json!({"code": 400, "error": "Invalid API key: wrong"})));
            }
            let Some(events) = v.get("events").and_then(Value::as_array) else {
                return Err((400, json!({"code": 400, "error": "events missing"})));
            };
            if events.len() > 2000 {
                return Err((413, json!({"code": 413, "error": "Payload too large"})));
            }
            let bad: Vec<usize> = events
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    e.get("event_type").and_then(Value::as_str) != Some("$identify")
                        || e.get("user_id")
                            .and_then(Value::as_str)
                            .is_none_or(|u| u.len() < 5)
                        || e.get("insert_id").and_then(Value::as_str).is_none()
                })
                .map(|(i, _)| i)
                .collect();
            if !bad.is_empty() {
                return Err((
                    400,
                    json!({"code": 400, "error": "Request missing required field",
                           "events_with_invalid_fields": {"user_id": bad}}),
                ));
            }
            Ok((None, events.clone()))
        }
        Contract::HubSpot { token } => {
            if parts.method != hyper::Method::POST
                || parts.uri.path() != "/crm/v3/objects/contacts/batch/upsert"
            {
                return Err((404, json!({"status": "error", "message": "not found"})));
            }
            if header("authorization").as_deref() != Some(&format!("Bearer {token}")) {
                return Err((
                    401,
                    json!({"status": "error", "category": "INVALID_AUTHENTICATION", "message": "Authentication credentials not found."}),
                ));
            }
            let v: Value = serde_json::from_slice(body).map_err(|_| {
                (400, json!({"status": "error", "category": "VALIDATION_ERROR", "message": "Invalid input JSON"}))
            })?;
            let Some(inputs) = v.get("inputs").and_then(Value::as_array) else {
                return Err((
                    400,
                    json!({"status": "error", "category": "VALIDATION_ERROR", "message": "inputs missing"}),
                ));
            };
            if inputs.is_empty() || inputs.len() > 100 {
                return Err((
                    400,
                    json!({"status": "error", "category": "VALIDATION_ERROR", "message": "Batch size must be between 1 and 100"}),
                ));
            }
            for i in inputs {
                let ok = i.get("idProperty").and_then(Value::as_str) == Some("email")
                    && i.get("id")
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty())
                    && i.get("properties")
                        .and_then(Value::as_object)
                        .is_some_and(|p| p.values().all(Value::is_string));
                if !ok {
                    return Err((
                        400,
                        json!({"status": "error", "category": "VALIDATION_ERROR", "message": "malformed input", "input": i}),
                    ));
                }
                let email = i["id"].as_str().unwrap_or("");
                if !email.contains('@') {
                    return Err((
                        400,
                        json!({"status": "error", "category": "VALIDATION_ERROR",
                               "message": format!("Property values were not valid: {email} is not a valid email address")}),
                    ));
                }
            }
            Ok((None, inputs.clone()))
        }
    }
}

/// The body of a successful answer, as each API sends it.
fn success_body(contract: &Contract) -> Value {
    match contract {
        Contract::Mixpanel { .. } => json!({"status": 1, "error": null}),
        Contract::Amplitude { .. } => json!({"code": 200, "events_ingested": 1}),
        Contract::Braze { .. } => json!({"message": "success"}),
        _ => json!({"status": "COMPLETE", "results": []}),
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Shared,
    contract: Contract,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let fault = {
        let mut s = state.lock();
        s.requests += 1;
        let n = s.requests;
        s.faults.remove(&n)
    };
    let record = |status: u16| state.lock().statuses.push(status);
    match &fault {
        Some(Fault::ServerError) => {
            record(500);
            return Ok(answer(500, json!({"error": "internal"})));
        }
        Some(Fault::Throttle(after)) => {
            record(429);
            let mut r = answer(
                429,
                json!({"status": "error", "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING"}),
            );
            if let Some(s) = after {
                r.headers_mut().insert(
                    hyper::header::RETRY_AFTER,
                    hyper::header::HeaderValue::from(*s),
                );
            }
            return Ok(r);
        }
        _ => {}
    }
    match check(&contract, &parts, &body) {
        Err((status, b)) => {
            record(status);
            Ok(answer(status, b))
        }
        Ok((idem, rows)) => {
            {
                let mut s = state.lock();
                let fresh = match idem {
                    Some(k) => s.idempotency.insert(k),
                    None => true,
                };
                if fresh {
                    s.applied.extend(rows.iter().cloned());
                }
                s.statuses.push(200);
            }
            match fault {
                Some(Fault::Drop) => Err(std::io::Error::other("connection dropped on purpose")),
                Some(Fault::Slow(d)) => {
                    tokio::time::sleep(d).await;
                    Ok(answer(200, success_body(&contract)))
                }
                _ => Ok(answer(200, success_body(&contract))),
            }
        }
    }
}

/// Starts a mock on an ephemeral port.
async fn start_mock(contract: Contract, faults: HashMap<u64, Fault>) -> (SocketAddr, Shared) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state: Shared = Arc::new(Mutex::new(MockState {
        faults,
        ..Default::default()
    }));
    let st = state.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let st = st.clone();
            let contract = contract.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    handle(req, st.clone(), contract.clone())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, state)
}

/// `people`: ids 1..=20, each in versions 1..=3; id 13 version 3 has a bad email.
async fn people(c: &Client) {
    let mut values = Vec::new();
    for v in 1..=3 {
        for id in 1..=20 {
            let email = if id == 13 && v == 3 {
                "not-an-email".to_string()
            } else {
                format!("user{id}.v{v}@example.com")
            };
            values.push(format!("({id}, {v}, '{email}')"));
        }
    }
    c.batch_execute(&format!(
        "CREATE TABLE people (id bigint, version int, email text); INSERT INTO people VALUES {}",
        values.join(", ")
    ))
    .await
    .expect("people");
}

#[tokio::test]
async fn webhook_delivers_every_good_row_once_in_key_order_through_faults() {
    let server = TestServer::start().await;
    let c = server.client().await;
    people(&c).await;
    let faults: HashMap<u64, Fault> = [
        (2, Fault::ServerError),
        (4, Fault::Throttle(Some(1))),
        (6, Fault::Drop),
        (8, Fault::Slow(Duration::from_millis(1500))),
        (9, Fault::ServerError),
    ]
    .into_iter()
    .collect();
    let contract = Contract::Webhook {
        token: "hook-token".into(),
        secret: "hook-secret".into(),
        max_rows: 10,
    };
    let (addr, state) = start_mock(contract, faults).await;
    c.batch_execute(&format!(
        "CREATE DESTINATION hooks TYPE webhook WITH (url = 'http://{addr}/hook', \
         headers = '{{\"Authorization\": \"Bearer hook-token\"}}', hmac_secret = 'hook-secret', timeout_ms = 500)"
    ))
    .await
    .expect("create");
    let out = rows(
        &c,
        "COPY (SELECT id, version, email FROM people ORDER BY version, id) TO DESTINATION hooks \
         WITH (mode = 'upsert', key = 'id', batch_size = 10)",
    )
    .await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(num(&out[0], "delivered"), 59, "{out:?}");
    assert_eq!(num(&out[0], "rejected"), 1, "{out:?}");
    assert!(num(&out[0], "retried") > 0, "{out:?}");

    let applied = state.lock().applied.clone();
    let mut seen = HashSet::new();
    let mut last_version: HashMap<i64, i64> = HashMap::new();
    for r in &applied {
        let (id, v) = (
            r["id"].as_i64().expect("id"),
            r["version"].as_i64().expect("version"),
        );
        assert!(seen.insert((id, v)), "({id}, {v}) applied twice");
        let prev = last_version.insert(id, v).unwrap_or(0);
        assert!(v > prev, "id {id}: version {v} arrived after {prev}");
    }
    assert_eq!(applied.len(), 59);
    assert!(!seen.contains(&(13, 3)));
    assert!(state.lock().statuses.contains(&429));

    let rejected = rows(
        &c,
        &format!(
            "SELECT destination, copy_id, row_key, row_json, status, response FROM tally.rejected_rows \
             WHERE copy_id = '{}'",
            out[0]["copy_id"]
        ),
    )
    .await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["destination"], "hooks");
    assert_eq!(rejected[0]["row_key"], "13");
    assert_eq!(rejected[0]["status"], "400");
    assert!(rejected[0]["row_json"].contains("not-an-email"));
    assert!(rejected[0]["response"].contains("invalid record"));

    // Wrong credentials stop the COPY with 28000 and never echo the secret.
    c.batch_execute(&format!(
        "CREATE DESTINATION bad_hooks TYPE webhook WITH (url = 'http://{addr}/hook', \
         headers = '{{\"Authorization\": \"Bearer wrong-token-xyz\"}}', hmac_secret = 'hook-secret')"
    ))
    .await
    .expect("create");
    let err = c
        .simple_query("COPY (SELECT id, version, email FROM people) TO DESTINATION bad_hooks")
        .await
        .expect_err("401");
    assert_eq!(code(&err), "28000", "{err:?}");
    assert!(!format!("{err:?}").contains("wrong-token-xyz"));
}

#[tokio::test]
async fn hubspot_batch_upsert_follows_the_contract_through_throttling() {
    let server = TestServer::start().await;
    let c = server.client().await;
    let values: Vec<String> = (1..=250)
        .map(|i| {
            let email = if i == 137 {
                "broken.example.com".to_string()
            } else {
                format!("c{i}@example.com")
            };
            format!("('{email}', 'First{i}', {i})")
        })
        .collect();
    c.batch_execute(&format!(
        "CREATE TABLE contacts (email text, first_name text, score bigint); INSERT INTO contacts VALUES {}",
        values.join(", ")
    ))
    .await
    .expect("contacts");
    let faults: HashMap<u64, Fault> = [
        (1, Fault::Throttle(Some(1))),
        (3, Fault::ServerError),
        (4, Fault::Throttle(None)),
    ]
    .into_iter()
    .collect();
    let (addr, state) = start_mock(
        Contract::HubSpot {
            token: "pat-na1-test".into(),
        },
        faults,
    )
    .await;
    c.batch_execute(&format!(
        "CREATE DESTINATION crm TYPE hubspot WITH (token = 'pat-na1-test', base_url = 'http://{addr}')"
    ))
    .await
    .expect("create");
    let out = rows(
        &c,
        "COPY (SELECT email, first_name AS firstname, score FROM contacts ORDER BY score) TO DESTINATION crm \
         WITH (mode = 'upsert', key = 'email', map = 'email:email,firstname:firstname,score:hs_score')",
    )
    .await;
    assert_eq!(num(&out[0], "delivered"), 249, "{out:?}");
    assert_eq!(num(&out[0], "rejected"), 1, "{out:?}");
    assert!(num(&out[0], "retried") > 0, "{out:?}");
    let applied = state.lock().applied.clone();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for i in &applied {
        *by_id
            .entry(i["id"].as_str().expect("id").to_string())
            .or_default() += 1;
        assert!(i["properties"].get("hs_score").is_some(), "{i}");
        assert!(i["properties"].get("score").is_none(), "{i}");
    }
    assert_eq!(by_id.len(), 249);
    assert!(
        by_id.values().all(|n| *n == 1),
        "a contact was upserted twice"
    );
    let rejected = rows(
        &c,
        "SELECT row_key, status, response FROM tally.rejected_rows WHERE destination = 'crm'",
    )
    .await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["row_key"], "broken.example.com");
    assert!(rejected[0]["response"].contains("VALIDATION_ERROR"));

    c.batch_execute("ALTER DESTINATION crm SET (token = 'pat-na1-wrong')")
        .await
        .expect("alter");
    let err = c
        .simple_query("COPY (SELECT email FROM contacts) TO DESTINATION crm WITH (key = 'email')")
        .await
        .expect_err("401");
    assert_eq!(code(&err), "28000");
    assert!(!format!("{err:?}").contains("pat-na1-wrong"));
}

#[tokio::test]
async fn postgres_upserts_rejects_and_mirrors() {
    let pg = local_postgres().await;
    let table = unique("tally_act");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, name text NOT NULL, score float8 CHECK (score >= 0), seen_at timestamp)"
    ))
    .await
    .expect("target table");

    let server = TestServer::start().await;
    let c = server.client().await;
    let values: Vec<String> = (1..=100)
        .map(|i| {
            let score = if i == 42 { -1.0 } else { f64::from(i) / 2.0 };
            format!("({i}, 'n{i}', {score}, TIMESTAMP '2026-01-01 00:00:00')")
        })
        .collect();
    c.batch_execute(&format!(
        "CREATE TABLE src (id int, name text, score double precision, seen_at timestamp); INSERT INTO src VALUES {}",
        values.join(", ")
    ))
    .await
    .expect("src");
    c.batch_execute(&format!(
        "CREATE DESTINATION app_db TYPE postgres WITH (host = '127.0.0.1', user = 'postgres', dbname = 'test', table = '{table}')"
    ))
    .await
    .expect("create");
    let out = rows(
        &c,
        "COPY (SELECT * FROM src ORDER BY id) TO DESTINATION app_db WITH (mode = 'upsert', key = 'id', batch_size = 25)",
    )
    .await;
    assert_eq!(num(&out[0], "delivered"), 99, "{out:?}");
    assert_eq!(num(&out[0], "rejected"), 1, "{out:?}");
    let n: i64 = pg
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 99);
    let rejected = rows(
        &c,
        "SELECT row_key, response FROM tally.rejected_rows WHERE destination = 'app_db'",
    )
    .await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["row_key"], "42");
    assert!(rejected[0]["response"].contains("23514"), "{rejected:?}");

    // Upsert again with changed names, twice for one key: the last one wins.
    let out = rows(
        &c,
        "COPY (SELECT * FROM (SELECT id, name || '-v2' AS name, 1 AS ord FROM src WHERE id <= 10 \
         UNION ALL SELECT 5 AS id, 'five-last' AS name, 2 AS ord) ORDER BY ord, id) \
         TO DESTINATION app_db WITH (mode = 'upsert', key = 'id', map = 'id, name')",
    )
    .await;
    assert_eq!(num(&out[0], "delivered"), 11, "{out:?}");
    let name: String = pg
        .query_one(&format!("SELECT name FROM {table} WHERE id = 5"), &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(name, "five-last");
    let score: f64 = pg
        .query_one(&format!("SELECT score FROM {table} WHERE id = 5"), &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(score, 2.5, "columns not in the COPY are kept");

    // Mirror: only ids 1..=30 stay.
    let out = rows(
        &c,
        "COPY (SELECT id, name FROM src WHERE id <= 30) TO DESTINATION app_db WITH (mode = 'mirror', key = 'id')",
    )
    .await;
    assert_eq!(num(&out[0], "removed"), 69, "{out:?}");
    let n: i64 = pg
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 30);

    // Update touches only existing keys.
    let out = rows(
        &c,
        "COPY (SELECT id, 'upd' AS name FROM src WHERE id IN (1, 99)) TO DESTINATION app_db WITH (mode = 'update', key = 'id')",
    )
    .await;
    assert_eq!(num(&out[0], "delivered"), 2, "{out:?}");
    let n: i64 = pg
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE name = 'upd'"),
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1);

    let err = c
        .batch_execute(&format!(
            "CREATE DESTINATION gone TYPE postgres WITH (dbname = 'test', table = '{table}_missing')"
        ))
        .await;
    assert!(err.is_ok());
    let err = c
        .simple_query("COPY (SELECT 1 AS id) TO DESTINATION gone")
        .await
        .expect_err("missing table");
    assert_eq!(code(&err), "42P01");
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .expect("drop");
}

#[tokio::test]
async fn redis_keeps_a_hash_per_key_and_mirror_removes() {
    let prefix = unique("tally_test");
    let server = TestServer::start().await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE DESTINATION features TYPE redis WITH (url = 'redis://127.0.0.1:6379/0', prefix = '{prefix}')"
    ))
    .await
    .expect("create");
    let out = rows(
        &c,
        "COPY (SELECT CAST(value AS bigint) AS user_id, value * 2 AS score, CASE WHEN value % 2 = 0 THEN 'even' END AS tag \
         FROM generate_series(1, 30)) TO DESTINATION features WITH (key = 'user_id', batch_size = 7)",
    )
    .await;
    assert_eq!(num(&out[0], "delivered"), 30, "{out:?}");
    let client = redis::Client::open("redis://127.0.0.1:6379/0").expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("local Redis on 127.0.0.1:6379");
    let h: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{prefix}:4"))
        .query_async(&mut conn)
        .await
        .expect("hgetall");
    assert_eq!(h.get("score").map(String::as_str), Some("8"));
    assert_eq!(h.get("tag").map(String::as_str), Some("even"));
    let h: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{prefix}:3"))
        .query_async(&mut conn)
        .await
        .expect("hgetall");
    assert!(!h.contains_key("tag"), "null fields are not stored: {h:?}");

    let out = rows(
        &c,
        "COPY (SELECT CAST(value AS bigint) AS user_id, value AS score FROM generate_series(1, 10)) \
         TO DESTINATION features WITH (mode = 'mirror', key = 'user_id')",
    )
    .await;
    assert_eq!(num(&out[0], "removed"), 20, "{out:?}");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}:20"))
        .query_async(&mut conn)
        .await
        .expect("exists");
    assert_eq!(exists, 0);
    let score: String = redis::cmd("HGET")
        .arg(format!("{prefix}:10"))
        .arg("score")
        .query_async(&mut conn)
        .await
        .expect("hget");
    assert_eq!(score, "10");
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    keys.push("__none__".into());
    let _: i64 = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn nats_publishes_one_jetstream_message_per_row() {
    let stream = unique("TALLY");
    let subject = unique("tally_test");
    let nc = async_nats::connect("nats://127.0.0.1:4222")
        .await
        .expect("local NATS on 127.0.0.1:4222");
    let js = async_nats::jetstream::new(nc);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{subject}.>")],
        ..Default::default()
    })
    .await
    .expect("stream");

    let server = TestServer::start().await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE DESTINATION bus TYPE nats WITH (url = 'nats://127.0.0.1:4222', subject = '{subject}.users.{{key}}')"
    ))
    .await
    .expect("create");
    let out = rows(
        &c,
        "COPY (SELECT value % 5 AS user_id, value AS seq FROM generate_series(1, 25) ORDER BY value) \
         TO DESTINATION bus WITH (key = 'user_id', batch_size = 4)",
    )
    .await;
    assert_eq!(num(&out[0], "delivered"), 25, "{out:?}");
    let mut s = js.get_stream(&stream).await.expect("stream");
    let info = s.info().await.expect("info");
    assert_eq!(info.state.messages, 25);
    let first = s.get_raw_message(1).await.expect("first message");
    assert!(first.subject.starts_with(&format!("{subject}.users.")));
    let body: Value = serde_json::from_slice(&first.payload).expect("json");
    assert_eq!(body["seq"], 1);
    assert!(first.headers.get("Nats-Msg-Id").is_some());
    // Per-key order: messages of one subject come in sequence order.
    let mut last: HashMap<String, i64> = HashMap::new();
    for n in 1..=25u64 {
        let m = s.get_raw_message(n).await.expect("message");
        let body: Value = serde_json::from_slice(&m.payload).expect("json");
        let seq = body["seq"].as_i64().expect("seq");
        let prev = last.insert(m.subject.to_string(), seq).unwrap_or(0);
        assert!(seq > prev);
    }
    js.delete_stream(&stream).await.expect("cleanup");

    let err = c
        .batch_execute("CREATE DESTINATION bus2 TYPE nats WITH (url = 'nats://127.0.0.1:4222', subject = 'no_stream_here.x')")
        .await;
    assert!(err.is_ok());
    let err = c
        .simple_query("COPY (SELECT 1 AS id) TO DESTINATION bus2")
        .await
        .expect_err("no stream");
    assert_eq!(code(&err), "08001", "{err:?}");
}

#[tokio::test]
async fn braze_users_track_isolates_objects_with_errors() {
    let server = TestServer::start().await;
    let c = server.client().await;
    let (addr, state) = start_mock(
        Contract::Braze {
            key: "braze-rest-key".into(),
        },
        [(2, Fault::ServerError)].into_iter().collect(),
    )
    .await;
    c.batch_execute(&format!(
        "CREATE DESTINATION engage TYPE braze WITH (api_key = 'braze-rest-key', base_url = 'http://{addr}')"
    ))
    .await
    .expect("create");
    let out = rows(
        &c,
        "COPY (SELECT 'u' || CAST(value AS text) AS user_id, \
               CASE WHEN value = 90 THEN 'nope' ELSE 'u' || CAST(value AS text) || '@x.io' END AS email \
               FROM generate_series(1, 160) ORDER BY value) \
         TO DESTINATION engage WITH (key = 'user_id')",
    )
    .await;
    assert_eq!(num(&out[0], "delivered"), 159, "{out:?}");
    assert_eq!(num(&out[0], "rejected"), 1, "{out:?}");
    let applied = state.lock().applied.clone();
    let ids: HashSet<&str> = applied
        .iter()
        .filter_map(|a| a["external_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 159);
    assert!(!ids.contains("u90"));
    assert!(applied.iter().all(|a| a.get("user_id").is_none()));
    let err = c
        .simple_query(
            "COPY (SELECT 1 AS id) TO DESTINATION engage WITH (batch_size = 76, key = 'id')",
        )
        .await
        .expect_err("over the documented limit");
    assert_eq!(code(&err), "22023");
}

#[tokio::test]
async fn mixpanel_and_amplitude_take_profiles_and_isolate_bad_ones() {
    let server = TestServer::start().await;
    let c = server.client().await;
    let (mp, mp_state) = start_mock(
        Contract::Mixpanel {
            token: "mp-project-token".into(),
        },
        [(1, Fault::Throttle(Some(1)))].into_iter().collect(),
    )
    .await;
    let (amp, amp_state) = start_mock(
        Contract::Amplitude {
            key: "amp-key".into(),
        },
        [(2, Fault::ServerError)].into_iter().collect(),
    )
    .await;
    c.batch_execute(&format!(
        "CREATE DESTINATION product TYPE mixpanel WITH (token = 'mp-project-token', base_url = 'http://{mp}'); \
         CREATE DESTINATION analytics TYPE amplitude WITH (api_key = 'amp-key', base_url = 'http://{amp}')"
    ))
    .await
    .expect("create");
    let query = "SELECT 'user-' || CAST(value AS text) AS user_id, \
                 CASE WHEN value = 33 THEN '???' ELSE 'pro' END AS plan FROM generate_series(1, 60) ORDER BY value";
    let out = rows(
        &c,
        &format!("COPY ({query}) TO DESTINATION product WITH (key = 'user_id', batch_size = 25)"),
    )
    .await;
    assert_eq!(num(&out[0], "delivered"), 59, "{out:?}");
    assert_eq!(num(&out[0], "rejected"), 1, "{out:?}");
    let applied = mp_state.lock().applied.clone();
    assert_eq!(applied.len(), 59);
    assert!(applied.iter().all(|u| u["$set"].get("user_id").is_none()));

    // Amplitude: user ids shorter than 5 characters are invalid.
    let query = "SELECT CASE WHEN value = 7 THEN 'u7' ELSE 'user-' || CAST(value AS text) END AS user_id, \
                 'pro' AS plan FROM generate_series(1, 60) ORDER BY value";
    let out = rows(
        &c,
        &format!("COPY ({query}) TO DESTINATION analytics WITH (key = 'user_id')"),
    )
    .await;
    assert_eq!(num(&out[0], "delivered"), 59, "{out:?}");
    assert_eq!(num(&out[0], "rejected"), 1, "{out:?}");
    assert!(num(&out[0], "retried") > 0, "{out:?}");
    let events = amp_state.lock().applied.clone();
    let ids: HashSet<&str> = events
        .iter()
        .filter_map(|e| e["insert_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 59, "insert ids are unique per row");
    assert!(
        events
            .iter()
            .all(|e| e["user_properties"]["$set"]["plan"] == "pro")
    );
    let rejected = rows(
        &c,
        "SELECT destination, row_key FROM tally.rejected_rows ORDER BY destination",
    )
    .await;
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["row_key"], "u7");
    assert_eq!(rejected[1]["row_key"], "user-33");

    c.batch_execute("ALTER DESTINATION analytics SET (api_key = 'wrong')")
        .await
        .expect("alter");
    let err = c
        .simple_query(&format!(
            "COPY ({query}) TO DESTINATION analytics WITH (key = 'user_id')"
        ))
        .await
        .expect_err("bad key");
    assert_eq!(code(&err), "28000");
}

/// One destination type in the conformance suite: how to create it against a mock, the query
/// that gives it `conformance_people` in its vendor's fields (one row, id 13 version 3, bad
/// in the vendor's eyes), its key column, and how to read `(key, version)` back from what
/// the mock applied.
struct Conformance {
    contract: Contract,
    create: fn(SocketAddr) -> String,
    query: &'static str,
    key: &'static str,
    bad_key: &'static str,
    applied: fn(&Value) -> (String, i64),
    /// Retries of an applied batch whose answer was lost are recognised by the destination
    /// (an idempotency key): every row is applied exactly once, not just at least once.
    idempotent: bool,
}

fn version_of(v: &Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("no version in {v}"))
}

fn text_of(v: &Value) -> String {
    v.as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

fn conformance_cases() -> Vec<Conformance> {
    vec![
        Conformance {
            contract: Contract::Webhook {
                token: "t".into(),
                secret: "s".into(),
                max_rows: 10,
            },
            create: |a| {
                format!(
                    "CREATE DESTINATION conf_webhook TYPE webhook WITH (url = 'http://{a}/hook', \
                 headers = '{{\"Authorization\": \"Bearer t\"}}', hmac_secret = 's')"
                )
            },
            query: "SELECT id, version, CASE WHEN id = 13 AND version = 3 THEN 'not-an-email' \
                    ELSE concat('user', id, '@example.com') END AS email \
                    FROM conformance_people ORDER BY version, id",
            key: "id",
            bad_key: "13",
            applied: |r| (text_of(&r["id"]), version_of(&r["version"])),
            idempotent: true,
        },
        Conformance {
            contract: Contract::HubSpot {
                token: "pat".into(),
            },
            create: |a| {
                format!(
                    "CREATE DESTINATION conf_hubspot TYPE hubspot WITH (token = 'pat', base_url = 'http://{a}')"
                )
            },
            query: "SELECT CASE WHEN id = 13 AND version = 3 THEN 'broken.example.com' \
                    ELSE concat('user', id, '@example.com') END AS email, version \
                    FROM conformance_people ORDER BY version, id",
            key: "email",
            bad_key: "broken.example.com",
            applied: |r| (text_of(&r["id"]), version_of(&r["properties"]["version"])),
            idempotent: false,
        },
        Conformance {
            contract: Contract::Braze { key: "bk".into() },
            create: |a| {
                format!(
                    "CREATE DESTINATION conf_braze TYPE braze WITH (api_key = 'bk', base_url = 'http://{a}')"
                )
            },
            query: "SELECT concat('u', id) AS user_id, version, \
                    CASE WHEN id = 13 AND version = 3 THEN 'nope' ELSE concat('u', id, '@x.io') END AS email \
                    FROM conformance_people ORDER BY version, id",
            key: "user_id",
            bad_key: "u13",
            applied: |r| (text_of(&r["external_id"]), version_of(&r["version"])),
            idempotent: false,
        },
        Conformance {
            contract: Contract::Mixpanel {
                token: "mpt".into(),
            },
            create: |a| {
                format!(
                    "CREATE DESTINATION conf_mixpanel TYPE mixpanel WITH (token = 'mpt', base_url = 'http://{a}')"
                )
            },
            query: "SELECT concat('user-', id) AS user_id, version, \
                    CASE WHEN id = 13 AND version = 3 THEN '???' ELSE 'pro' END AS plan \
                    FROM conformance_people ORDER BY version, id",
            key: "user_id",
            bad_key: "user-13",
            applied: |r| {
                (
                    text_of(&r["$distinct_id"]),
                    version_of(&r["$set"]["version"]),
                )
            },
            idempotent: false,
        },
        Conformance {
            contract: Contract::Amplitude { key: "ak".into() },
            create: |a| {
                format!(
                    "CREATE DESTINATION conf_amplitude TYPE amplitude WITH (api_key = 'ak', base_url = 'http://{a}')"
                )
            },
            query: "SELECT CASE WHEN id = 13 AND version = 3 THEN 'u13' ELSE concat('user-', id) END AS user_id, \
                    version FROM conformance_people ORDER BY version, id",
            key: "user_id",
            bad_key: "u13",
            applied: |r| {
                (
                    text_of(&r["user_id"]),
                    version_of(&r["user_properties"]["$set"]["version"]),
                )
            },
            idempotent: false,
        },
    ]
}

/// The conformance suite every HTTP destination type runs: the same faults (500, 429 with
/// and without Retry-After, a connection dropped after the batch was applied, an answer
/// slower than the timeout, another 500) over the same 60 rows (20 keys in three versions,
/// one row the vendor refuses). Every good row arrives, versions of a key never go
/// backwards, the bad row alone lands in `tally.rejected_rows`, and where the type has
/// idempotency keys nothing is applied twice (Amplitude: a repeat carries the same
/// `insert_id`, which Amplitude deduplicates).
#[tokio::test]
async fn every_http_destination_type_passes_the_same_fault_schedule() {
    let server = TestServer::start().await;
    let c = server.client().await;
    c.batch_execute(
        "CREATE TABLE conformance_people AS \
         SELECT CAST(i.value AS bigint) AS id, CAST(v.value AS bigint) AS version \
         FROM generate_series(1, 20) i CROSS JOIN generate_series(1, 3) v",
    )
    .await
    .expect("people");
    for case in conformance_cases() {
        let faults: HashMap<u64, Fault> = [
            (2, Fault::ServerError),
            (4, Fault::Throttle(Some(1))),
            (6, Fault::Drop),
            (8, Fault::Slow(Duration::from_millis(1500))),
            (9, Fault::ServerError),
            (11, Fault::Throttle(None)),
        ]
        .into_iter()
        .collect();
        let (addr, state) = start_mock(case.contract.clone(), faults).await;
        c.batch_execute(&(case.create)(addr)).await.expect("create");
        let name = (case.create)(addr)
            .split_whitespace()
            .nth(2)
            .expect("name")
            .to_string();
        let out = rows(
            &c,
            &format!(
                "COPY ({}) TO DESTINATION {name} WITH (mode = 'upsert', key = '{}', batch_size = 10, timeout_ms = 500)",
                case.query, case.key
            ),
        )
        .await;
        assert_eq!(num(&out[0], "delivered"), 59, "{name}: {out:?}");
        assert_eq!(num(&out[0], "rejected"), 1, "{name}: {out:?}");
        assert!(num(&out[0], "retried") > 0, "{name}: {out:?}");

        let applied = state.lock().applied.clone();
        let mut times: HashMap<(String, i64), usize> = HashMap::new();
        let mut last: HashMap<String, i64> = HashMap::new();
        for r in &applied {
            let (key, version) = (case.applied)(r);
            *times.entry((key.clone(), version)).or_default() += 1;
            let prev = last.insert(key.clone(), version).unwrap_or(0);
            assert!(
                version >= prev,
                "{name}: key {key} went back from version {prev} to {version}"
            );
        }
        assert_eq!(times.len(), 59, "{name}: every good row arrives");
        assert!(
            !times.contains_key(&(case.bad_key.to_string(), 3)),
            "{name}: the refused row was applied"
        );
        if case.idempotent {
            assert!(
                times.values().all(|n| *n == 1),
                "{name}: a row was applied twice despite idempotency keys"
            );
        }
        if matches!(case.contract, Contract::Amplitude { .. }) {
            let ids: HashSet<&str> = applied
                .iter()
                .filter_map(|e| e["insert_id"].as_str())
                .collect();
            assert_eq!(
                ids.len(),
                59,
                "{name}: one insert_id per row, repeats included"
            );
        }
        let statuses = state.lock().statuses.clone();
        assert!(statuses.contains(&429) && statuses.contains(&500), "{name}");
        let rejected = rows(
            &c,
            &format!(
                "SELECT row_key FROM tally.rejected_rows WHERE copy_id = '{}'",
                out[0]["copy_id"]
            ),
        )
        .await;
        assert_eq!(rejected.len(), 1, "{name}: {rejected:?}");
        assert_eq!(rejected[0]["row_key"], case.bad_key, "{name}");
    }
}

#[tokio::test]
async fn a_sync_sends_only_changes_on_its_second_run() {
    let server = TestServer::start().await;
    let c = server.client().await;
    let (addr, state) = start_mock(
        Contract::Webhook {
            token: "t".into(),
            secret: "s".into(),
            max_rows: 100,
        },
        HashMap::new(),
    )
    .await;
    c.batch_execute(&format!(
        "CREATE DESTINATION hooks TYPE webhook WITH (url = 'http://{addr}/hook', \
         headers = '{{\"Authorization\": \"Bearer t\"}}', hmac_secret = 's'); \
         CREATE TABLE users (id bigint, email text); \
         INSERT INTO users VALUES (1, 'a@x.io'), (2, 'b@x.io'), (3, 'c@x.io'), (4, 'bad')"
    ))
    .await
    .expect("setup");
    c.batch_execute(
        "CREATE SYNC users_out AS COPY (SELECT id, email FROM users) TO DESTINATION hooks \
         WITH (mode = 'upsert', key = 'id')",
    )
    .await
    .expect("create sync");
    let first = rows(&c, "RUN SYNC users_out").await;
    assert_eq!(num(&first[0], "added"), 4, "{first:?}");
    assert_eq!(num(&first[0], "delivered"), 3, "{first:?}");
    assert_eq!(num(&first[0], "rejected"), 1, "{first:?}");
    c.batch_execute(
        "UPDATE users SET email = 'b2@x.io' WHERE id = 2; INSERT INTO users VALUES (5, 'e@x.io')",
    )
    .await
    .expect("change");
    let second = rows(&c, "RUN SYNC users_out").await;
    assert_eq!(num(&second[0], "unchanged"), 2, "{second:?}");
    assert_eq!(num(&second[0], "changed"), 1, "{second:?}");
    // The refused row is sent again (and refused again), plus the new one.
    assert_eq!(num(&second[0], "added"), 2, "{second:?}");
    assert_eq!(num(&second[0], "delivered"), 2, "{second:?}");
    let applied = state.lock().applied.clone();
    let ids: Vec<i64> = applied.iter().filter_map(|r| r["id"].as_i64()).collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    let syncs = rows(
        &c,
        "SELECT name, runs, last_status, last_unchanged FROM tally.syncs",
    )
    .await;
    assert_eq!(syncs[0]["runs"], "2");
    assert_eq!(syncs[0]["last_status"], "succeeded");
    let runs = rows(
        &c,
        "SELECT status, rows_added, rows_changed, rows_unchanged, rows_delivered, rows_failed \
         FROM tally.sync_runs WHERE sync = 'users_out' ORDER BY started_at",
    )
    .await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1]["status"], "succeeded");
    assert_eq!(runs[1]["rows_changed"], "1");
    assert_eq!(runs[1]["rows_unchanged"], "2");
    assert_eq!(runs[0]["rows_failed"], "1");
    let err = c.batch_execute("RUN SYNC nope").await.expect_err("unknown");
    assert_eq!(code(&err), "42704");
    c.batch_execute("DROP SYNC users_out").await.expect("drop");
    let err = c
        .batch_execute("CREATE SYNC s2 AS COPY (SELECT id FROM users) TO DESTINATION hooks")
        .await
        .expect_err("a sync needs a key");
    assert_eq!(code(&err), "22023");
}
