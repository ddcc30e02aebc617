//! Secrets, enrichment connections, `enrich` and `verify_email` (issue 4), against local HTTP
//! servers written here: a JSON lookup API that checks its bearer key and batch limit and
//! misbehaves on purpose (slow, 500, 429 with Retry-After, malformed JSON, 404, redirects),
//! and a ZeroBounce mock that follows its documented v2 contract (api_key in the body or
//! query, at most 200 addresses per validatebatch call, per-address results and errors).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::common::{TestServer, code, num, rows};

/// What the lookup API saw.
#[derive(Default)]
struct Seen {
    /// Keys of each batch request, in arrival order.
    batches: Vec<Vec<String>>,
    /// Single-key requests by key.
    singles: HashMap<String, u32>,
    /// When each request arrived.
    times: Vec<Instant>,
    /// Requests refused for a wrong bearer key.
    unauthorized: u32,
}

type Shared = Arc<Mutex<Seen>>;

const API_KEY: &str = "sk_live_4f9c2a7b1e";

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {API_KEY}"))
}

async fn batch_lookup(
    State(seen): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut s = seen.lock();
    s.times.push(Instant::now());
    if !authorized(&headers) {
        s.unauthorized += 1;
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "bad key"}))).into_response();
    }
    let keys: Vec<String> = body["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if keys.is_empty() || keys.len() > 100 {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "1 to 100 keys"})),
        )
            .into_response();
    }
    let answer: serde_json::Map<String, Value> = keys
        .iter()
        .filter(|k| !k.starts_with("unknown"))
        .map(|k| {
            let n: u64 = k.trim_start_matches("acct-").parse().unwrap_or(0);
            (
                k.clone(),
                json!({"plan": if n.is_multiple_of(2) { "pro" } else { "free" }, "seats": n, "company": {"name": format!("Co {n}")}}),
            )
        })
        .collect();
    s.batches.push(keys);
    Json(Value::Object(answer)).into_response()
}

async fn single_lookup(
    State(seen): State<Shared>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    let attempt = {
        let mut s = seen.lock();
        s.times.push(Instant::now());
        if !authorized(&headers) {
            s.unauthorized += 1;
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let n = s.singles.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    match key.as_str() {
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Json(json!({"late": true})).into_response()
        }
        "boom" => (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response(),
        "flaky" if attempt == 1 => StatusCode::BAD_GATEWAY.into_response(),
        "throttle" if attempt == 1 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            Json(json!({"error": "slow down"})),
        )
            .into_response(),
        "bad" => (StatusCode::OK, "{not json").into_response(),
        "missing" => StatusCode::NOT_FOUND.into_response(),
        "moved" => (StatusCode::FOUND, [("location", "http://169.254.169.254/")]).into_response(),
        k => Json(json!({"key": k, "score": k.len()})).into_response(),
    }
}

/// ZeroBounce's `validatebatch` (documented: api_key in the body, at most 200 addresses).
async fn zb_batch(State(seen): State<Shared>, Json(body): Json<Value>) -> Response {
    let mut s = seen.lock();
    s.times.push(Instant::now());
    if body["api_key"] != API_KEY {
        s.unauthorized += 1;
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "Invalid API Key or your account ran out of credits"})),
        )
            .into_response();
    }
    let Some(batch) = body["email_batch"].as_array() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "Missing email_batch"})),
        )
            .into_response();
    };
    if batch.len() > 200 {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "Maximum of 200 emails per batch"})),
        )
            .into_response();
    }
    let emails: Vec<String> = batch
        .iter()
        .filter_map(|e| e["email_address"].as_str().map(str::to_string))
        .collect();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for e in &emails {
        match zb_verdict(e) {
            Some(v) => results.push(v),
            None => errors.push(json!({"error": "Invalid email address", "email_address": e})),
        }
    }
    s.batches.push(emails);
    Json(json!({"email_batch": results, "errors": errors})).into_response()
}

/// ZeroBounce's single `validate` (api_key in the query).
async fn zb_single(State(seen): State<Shared>, uri: axum::http::Uri) -> Response {
    let q: HashMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let mut s = seen.lock();
    s.times.push(Instant::now());
    if q.get("api_key").map(String::as_str) != Some(API_KEY) {
        s.unauthorized += 1;
        return Json(json!({"error": "Invalid API Key or your account ran out of credits"}))
            .into_response();
    }
    let email = q.get("email").cloned().unwrap_or_default();
    *s.singles.entry(email.clone()).or_default() += 1;
    match zb_verdict(&email) {
        Some(v) => Json(v).into_response(),
        None => Json(json!({"error": "Invalid email address"})).into_response(),
    }
}

fn zb_verdict(email: &str) -> Option<Value> {
    let (local, domain) = email.split_once('@')?;
    let (status, sub_status) = if local.contains("nobody") {
        ("invalid", "mailbox_not_found")
    } else if domain == "mailinator.com" {
        ("do_not_mail", "disposable")
    } else {
        ("valid", "")
    };
    Some(json!({
        "address": email,
        "status": status,
        "sub_status": sub_status,
        "free_email": domain == "gmail.com",
        "did_you_mean": if domain == "gmial.com" { Value::from(format!("{local}@gmail.com")) } else { Value::Null },
        "domain": domain,
        "processed_at": "2026-12-08 10:00:00.000"
    }))
}

async fn serve_api() -> (SocketAddr, Shared) {
    let seen: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/lookup", post(batch_lookup))
        .route("/company/{key}", get(single_lookup))
        .route("/v2/validatebatch", post(zb_batch))
        .route("/v2/validate", get(zb_single))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

fn hmac_hex(key: &str, value: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    ring::hmac::sign(&k, value.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test]
async fn secrets_are_stored_encrypted_and_key_pseudonyms() {
    let mut srv = TestServer::start().await;
    let c = srv.client().await;
    c.batch_execute("CREATE SECRET pii_key VALUE 'hmac-k3y-0123456789'")
        .await
        .expect("create secret");
    let dup = c
        .batch_execute("CREATE SECRET pii_key VALUE 'other'")
        .await
        .expect_err("duplicate");
    assert_eq!(code(&dup), "42710");
    c.batch_execute("CREATE SECRET IF NOT EXISTS pii_key VALUE 'other'")
        .await
        .expect("if not exists");

    // Listed by name, never by value; and no file of the warehouse holds the value.
    let listed = rows(&c, "SELECT * FROM tally.secrets").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "pii_key");
    assert!(!listed[0].values().any(|v| v.contains("hmac-k3y")));
    let mut files = Vec::new();
    walk(srv.dir.path(), &mut files);
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().contains("catalog"))
    );
    for f in &files {
        let bytes = std::fs::read(f).expect("read");
        assert!(
            !String::from_utf8_lossy(&bytes).contains("hmac-k3y-0123456789"),
            "{} holds the secret in clear",
            f.display()
        );
    }

    // pseudonymize takes the secret's name and keys the HMAC with its value.
    let want = hmac_hex("hmac-k3y-0123456789", "user-42");
    let got = rows(&c, "SELECT pseudonymize('user-42', 'pii_key') AS p").await;
    assert_eq!(got[0]["p"], want);
    let unknown = c
        .simple_query("SELECT pseudonymize('user-42', 'no_such_secret')")
        .await
        .expect_err("unknown secret");
    assert!(
        unknown.as_db_error().is_some_and(|e| e
            .message()
            .contains("secret \"no_such_secret\" does not exist")),
        "{unknown:?}"
    );

    // Still readable after a restart (the key lives under the warehouse root), and ALTER
    // changes the key.
    drop(c);
    srv.restart().await;
    let c = srv.client().await;
    let got = rows(&c, "SELECT pseudonymize('user-42', 'pii_key') AS p").await;
    assert_eq!(got[0]["p"], want);
    c.batch_execute("ALTER SECRET pii_key VALUE 'rotated-key'")
        .await
        .expect("alter");
    let got = rows(&c, "SELECT pseudonymize('user-42', 'pii_key') AS p").await;
    assert_eq!(got[0]["p"], hmac_hex("rotated-key", "user-42"));
    let altered = rows(&c, "SELECT altered_at FROM tally.secrets").await;
    assert_ne!(altered[0]["altered_at"], "NULL");

    c.batch_execute("DROP SECRET pii_key").await.expect("drop");
    let gone = c
        .batch_execute("DROP SECRET pii_key")
        .await
        .expect_err("dropped");
    assert_eq!(code(&gone), "42704");
    c.batch_execute("DROP SECRET IF EXISTS pii_key")
        .await
        .expect("if exists");
}

#[tokio::test]
async fn enrich_batches_deduplicates_and_caches_lookups() {
    let (addr, seen) = serve_api().await;
    let srv = TestServer::start().await;
    let c = srv.client().await;
    c.batch_execute(&format!(
        "CREATE SECRET crm_key VALUE '{API_KEY}';
         CREATE CONNECTION crm TYPE http WITH (url = 'http://{addr}/lookup', secret = 'crm_key',
             batch_size = 100, concurrency = 3, allow_private = 'true');
         CREATE TABLE accounts AS
             SELECT 'acct-' || (v % 250) AS account, v FROM generate_series(1, 500) AS t(v)
             UNION ALL SELECT 'unknown-1', 0"
    ))
    .await
    .expect("setup");
    // The secret guards against dropping what a connection uses.
    let in_use = c
        .batch_execute("DROP SECRET crm_key")
        .await
        .expect_err("in use");
    assert_eq!(code(&in_use), "2BP01");

    let q = "SELECT account, enrich('crm', account, 'plan') AS plan,
                    enrich('crm', account, 'company.name') AS company,
                    enrich('crm', account) AS doc
             FROM accounts ORDER BY v";
    let got = rows(&c, q).await;
    assert_eq!(got.len(), 501);
    for r in &got {
        if r["account"] == "unknown-1" {
            assert_eq!(r["plan"], "NULL");
            assert_eq!(r["doc"], "NULL");
            continue;
        }
        let n: u64 = r["account"].trim_start_matches("acct-").parse().expect("n");
        assert_eq!(r["plan"], if n.is_multiple_of(2) { "pro" } else { "free" });
        assert_eq!(r["company"], format!("Co {n}"));
        let doc: Value = serde_json::from_str(&r["doc"]).expect("json");
        assert_eq!(doc["seats"], n);
    }
    let (batches, unauthorized) = {
        let s = seen.lock();
        (s.batches.clone(), s.unauthorized)
    };
    assert_eq!(unauthorized, 0);
    assert!(batches.iter().all(|b| b.len() <= 100), "batch limit kept");
    let mut asked: Vec<&String> = batches.iter().flatten().collect();
    let total = asked.len();
    asked.sort();
    asked.dedup();
    assert_eq!(asked.len(), 251, "every distinct key asked");
    assert_eq!(total, 251, "no key asked twice");

    // A second query is answered from the cache.
    let again = rows(&c, q).await;
    assert_eq!(again, got);
    assert_eq!(seen.lock().batches.len(), batches.len(), "no new request");
    let stats = rows(&c, "SELECT * FROM tally.connections WHERE name = 'crm'").await;
    assert_eq!(stats[0]["type"], "http");
    assert!(num(&stats[0], "cache_hits") >= 251, "{stats:?}");
    assert_eq!(num(&stats[0], "failures"), 0);
    assert!(!stats[0]["options"].contains(API_KEY));

    // A wrong key is the API's 401: NULLs and failures, not a failed query.
    c.batch_execute(
        "CREATE SECRET wrong_key VALUE 'nope';
         ALTER CONNECTION crm SET (secret = 'wrong_key', cache_ttl = '0')",
    )
    .await
    .expect("alter");
    let nulls = rows(
        &c,
        "SELECT count(enrich('crm', account, 'plan')) AS n FROM accounts",
    )
    .await;
    assert_eq!(num(&nulls[0], "n"), 0);
    assert!(seen.lock().unauthorized > 0);
    let stats = rows(&c, "SELECT failures FROM tally.connections").await;
    assert!(num(&stats[0], "failures") >= 251);
}

#[tokio::test]
async fn enrich_retries_transient_errors_and_never_fails_the_query_for_one_key() {
    let (addr, seen) = serve_api().await;
    let srv = TestServer::start().await;
    let c = srv.client().await;
    c.batch_execute(&format!(
        "CREATE SECRET k VALUE '{API_KEY}';
         CREATE CONNECTION api TYPE http WITH (url = 'http://{addr}/company/{{key}}', secret = 'k',
             timeout = '1s', retries = 2, concurrency = 8, allow_private = 'true');
         CREATE TABLE keys (k text);
         INSERT INTO keys VALUES ('acme'), ('flaky'), ('throttle'), ('boom'), ('bad'),
             ('missing'), ('slow'), ('moved'), (NULL), ('with space/slash')"
    ))
    .await
    .expect("setup");
    let got = rows(
        &c,
        "SELECT k, enrich('api', k, 'score') AS score FROM keys ORDER BY k NULLS LAST",
    )
    .await;
    let score: HashMap<String, String> = got
        .iter()
        .map(|r| (r["k"].clone(), r["score"].clone()))
        .collect();
    assert_eq!(score["acme"], "4");
    assert_eq!(score["flaky"], "5", "a 502 is retried");
    assert_eq!(score["throttle"], "8", "a 429 is retried after Retry-After");
    assert_eq!(score["with space/slash"], "16", "keys are URL-encoded");
    for k in ["boom", "bad", "missing", "slow", "moved", "NULL"] {
        assert_eq!(score[k], "NULL", "{k}");
    }
    {
        let s = seen.lock();
        assert_eq!(s.singles["boom"], 3, "a 500 is tried 1 + retries times");
        assert_eq!(s.singles["bad"], 1, "malformed JSON is not retried");
        assert_eq!(s.singles["missing"], 1, "404 is an answer");
        assert_eq!(s.singles["moved"], 1, "redirects are not followed");
        assert_eq!(s.singles["throttle"], 2);
    }
    let stats = rows(&c, "SELECT * FROM tally.connections").await;
    assert_eq!(
        num(&stats[0], "failures"),
        4,
        "boom, bad, slow, moved: {stats:?}"
    );
    assert!(num(&stats[0], "throttled") >= 1);
    assert!(num(&stats[0], "retries") >= 4);

    // strict turns a failed lookup into a failed query, naming the connection and cause.
    c.batch_execute("ALTER CONNECTION api SET (strict = 'true', cache_ttl = '0')")
        .await
        .expect("alter");
    let e = c
        .simple_query("SELECT enrich('api', k) FROM keys WHERE k = 'boom'")
        .await
        .expect_err("strict");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("connection api") && msg.contains("500"),
        "{msg}"
    );
    assert!(!msg.contains(API_KEY));

    // Planning-time errors name the argument.
    let e = c
        .simple_query("SELECT enrich('nope', k) FROM keys")
        .await
        .expect_err("unknown connection");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("argument connection") && msg.contains("\"nope\" does not exist"),
        "{msg}"
    );
    let e = c
        .simple_query("SELECT verify_email('api', 'a@b.co')")
        .await
        .expect_err("wrong type");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("not an email verification API"), "{msg}");
}

#[tokio::test]
async fn connections_refuse_private_addresses_and_bad_options() {
    let (addr, _seen) = serve_api().await;
    let srv = TestServer::start().await;
    let c = srv.client().await;
    for url in [
        format!("http://{addr}/company/{{key}}"),
        "http://169.254.169.254/latest/meta-data/{key}".to_string(),
        "http://10.0.0.5:6379/{key}".to_string(),
        "http://localhost:9/{key}".to_string(),
        "http://[::1]:9/{key}".to_string(),
    ] {
        let e = c
            .batch_execute(&format!(
                "CREATE CONNECTION internal TYPE http WITH (url = '{url}')"
            ))
            .await
            .expect_err("refused");
        assert_eq!(code(&e), "42501", "{url}");
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(msg.contains("allow_private"), "{msg}");
    }
    let none = rows(&c, "SELECT count(*) AS n FROM tally.connections").await;
    assert_eq!(num(&none[0], "n"), 0);

    for (options, option) in [
        (
            "url = 'http://x.example/{key}', rate_limit = '-1'",
            "rate_limit",
        ),
        ("url = 'ftp://x.example/'", "url"),
        ("url = 'https://x.example/', colour = 'red'", "colour"),
        ("url = 'https://x.example/', secret = 'missing'", "secret"),
    ] {
        let e = c
            .batch_execute(&format!("CREATE CONNECTION bad TYPE http WITH ({options})"))
            .await
            .expect_err(options);
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(msg.contains(option), "{options}: {msg}");
    }
    let e = c
        .batch_execute(
            "CREATE CONNECTION bad TYPE carrier_pigeon WITH (url = 'https://x.example/')",
        )
        .await
        .expect_err("type");
    assert_eq!(code(&e), "22023");
}

#[tokio::test]
async fn rate_limit_paces_requests_across_the_connection() {
    let (addr, seen) = serve_api().await;
    let srv = TestServer::start().await;
    let c = srv.client().await;
    c.batch_execute(&format!(
        "CREATE SECRET k VALUE '{API_KEY}';
         CREATE CONNECTION paced TYPE http WITH (url = 'http://{addr}/company/{{key}}', secret = 'k',
             rate_limit = 10, concurrency = 8, allow_private = 'true');
         CREATE TABLE keys AS SELECT 'k' || v AS k FROM generate_series(1, 25) AS t(v)"
    ))
    .await
    .expect("setup");
    let got = rows(&c, "SELECT count(enrich('paced', k)) AS n FROM keys").await;
    assert_eq!(num(&got[0], "n"), 25);
    let times = seen.lock().times.clone();
    assert_eq!(times.len(), 25);
    // At 10 requests a second, no one-second window holds more than 11 of them.
    for (i, t) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(within <= 11, "{within} requests within a second");
    }
}

#[tokio::test]
async fn verify_email_speaks_zerobounce() {
    let (addr, seen) = serve_api().await;
    let srv = TestServer::start().await;
    let c = srv.client().await;
    c.batch_execute(&format!(
        "CREATE SECRET zb_key VALUE '{API_KEY}';
         CREATE CONNECTION zb TYPE zerobounce WITH (url = 'http://{addr}', secret = 'zb_key',
             rate_limit = 50, allow_private = 'true');
         CREATE TABLE signups AS
             SELECT CASE WHEN v % 10 = 0 THEN 'nobody' || v || '@example.com'
                         WHEN v % 10 = 1 THEN 'user' || v || '@gmial.com'
                         WHEN v % 10 = 2 THEN 'user' || v || '@mailinator.com'
                         WHEN v % 10 = 3 THEN 'user' || v || '@gmail.com'
                         ELSE 'user' || v || '@example.com' END AS email, v
             FROM generate_series(1, 450) AS t(v)
             UNION ALL SELECT 'not-an-address', 0"
    ))
    .await
    .expect("setup");
    let got = rows(
        &c,
        "SELECT email,
                get_field(verify_email('zb', email), 'status') AS status,
                get_field(verify_email('zb', email), 'sub_status') AS sub_status,
                get_field(verify_email('zb', email), 'free_email') AS free,
                get_field(verify_email('zb', email), 'did_you_mean') AS suggestion
         FROM signups ORDER BY v",
    )
    .await;
    assert_eq!(got.len(), 451);
    for r in &got {
        let e = r["email"].as_str();
        let (status, sub) = if e == "not-an-address" {
            ("NULL", "NULL")
        } else if e.starts_with("nobody") {
            ("invalid", "mailbox_not_found")
        } else if e.ends_with("@mailinator.com") {
            ("do_not_mail", "disposable")
        } else {
            ("valid", "NULL")
        };
        assert_eq!(
            (r["status"].as_str(), r["sub_status"].as_str()),
            (status, sub),
            "{e}"
        );
        if e.ends_with("@gmail.com") {
            assert_eq!(r["free"], "t");
        }
        if e.ends_with("@gmial.com") {
            assert_eq!(r["suggestion"], e.replace("gmial", "gmail"));
        }
    }
    let batches = seen.lock().batches.clone();
    assert!(batches.iter().all(|b| b.len() <= 200));
    assert_eq!(
        batches.iter().map(Vec::len).sum::<usize>(),
        451,
        "each address once"
    );
    assert_eq!(batches.len(), 3);

    // One address per call speaks the single endpoint, with the key in the query.
    c.batch_execute(&format!(
        "CREATE CONNECTION zb1 TYPE zerobounce WITH (url = 'http://{addr}', secret = 'zb_key',
             batch_size = 1, allow_private = 'true')"
    ))
    .await
    .expect("single");
    let one = rows(
        &c,
        "SELECT (verify_email('zb1', 'nobody@example.com')).status AS s",
    )
    .await;
    assert_eq!(one[0]["s"], "invalid");
    assert_eq!(seen.lock().singles["nobody@example.com"], 1);
}

#[tokio::test]
async fn secrets_and_connections_follow_transactions() {
    let (addr, _seen) = serve_api().await;
    let srv = TestServer::start().await;
    let c = srv.client().await;
    c.batch_execute(&format!(
        "BEGIN;
         CREATE SECRET t_key VALUE '{API_KEY}';
         CREATE CONNECTION t_api TYPE http WITH (url = 'http://{addr}/company/{{key}}',
             secret = 't_key', allow_private = 'true');
         ROLLBACK"
    ))
    .await
    .expect("rolled back");
    let none = rows(
        &c,
        "SELECT (SELECT count(*) FROM tally.secrets) AS s, (SELECT count(*) FROM tally.connections) AS c",
    )
    .await;
    assert_eq!((num(&none[0], "s"), num(&none[0], "c")), (0, 0));
    c.batch_execute(&format!(
        "BEGIN;
         CREATE SECRET t_key VALUE '{API_KEY}';
         CREATE CONNECTION t_api TYPE http WITH (url = 'http://{addr}/company/{{key}}',
             secret = 't_key', allow_private = 'true');
         COMMIT"
    ))
    .await
    .expect("committed");
    let got = rows(&c, "SELECT enrich('t_api', 'acme', 'score') AS s").await;
    assert_eq!(got[0]["s"], "4", "the committed connection and secret work");
    let other = srv.client().await;
    let seen_by_other = rows(&other, "SELECT name FROM tally.connections").await;
    assert_eq!(seen_by_other.len(), 1);
}
