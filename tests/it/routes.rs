//! Real-time routes end to end over real sockets: events posted to the HTTP tracking API,
//! routes created in SQL over the PostgreSQL wire, and local webhook receivers (hyper) that
//! record what they get, fail on purpose, or are not there at all. Assertions are about
//! behaviour (every event arrives, per-user order, projection and filter applied, the same
//! messageIds after a replay or a restart), never about timing: waits poll with a generous
//! deadline.

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

use crate::common::{TestServer, code, free_port, rows, spawn_tally, wait_up};

/// What a receiver does with requests.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Out of every 10 requests, this many fail with 500 (half of them after applying the
    /// rows, as a receiver that times out after doing the work would).
    fail_in_10: u64,
}

#[derive(Default, Clone)]
struct Received {
    requests: u64,
    failures: u64,
    /// Rows applied, in arrival order.
    rows: Vec<Value>,
}

type Shared = Arc<Mutex<Received>>;

async fn handle(
    req: Request<Incoming>,
    state: Shared,
    b: Behaviour,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let answer = |status: u16, body: Value| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
        r
    };
    let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
        return Ok(answer(400, json!({"error": "not json"})));
    };
    let rows = parsed["rows"].as_array().cloned().unwrap_or_default();
    if rows
        .iter()
        .any(|r| r.get("bad") == Some(&Value::Bool(true)))
    {
        return Ok(answer(400, json!({"error": "row refused"})));
    }
    let mut s = state.lock();
    s.requests += 1;
    let n = s.requests;
    let fail = (n * 7919) % 10 < b.fail_in_10;
    if fail {
        s.failures += 1;
        if n.is_multiple_of(2) {
            s.rows.extend(rows);
        }
        return Ok(answer(500, json!({"error": "try again"})));
    }
    s.rows.extend(rows);
    Ok(answer(200, json!({"ok": true})))
}

/// A webhook receiver on an ephemeral port.
async fn receiver(b: Behaviour) -> (SocketAddr, Shared) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state: Shared = Arc::default();
    let st = state.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let st = st.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(req, st.clone(), b));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, state)
}

/// An address where nothing listens.
async fn nowhere() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}

async fn stat(c: &Client, route: &str, col: &str) -> String {
    rows(
        c,
        &format!("SELECT {col} FROM tally.route_stats WHERE route = '{route}'"),
    )
    .await
    .first()
    .and_then(|r| r.get(col).cloned())
    .unwrap_or_default()
}

async fn with_source(server: &TestServer) -> (Client, String) {
    let c = server.client().await;
    c.batch_execute("CREATE SOURCE IF NOT EXISTS web TYPE tracking_api")
        .await
        .expect("create source");
    let key: String = c
        .query_one(
            "SELECT write_key FROM tally.sources WHERE name = 'web'",
            &[],
        )
        .await
        .expect("sources")
        .get(0);
    (c, key)
}

/// Posts `messages` to /v1/batch and checks they are acknowledged.
async fn post(server: &TestServer, key: &str, messages: Vec<Value>) {
    let addr = server.server.as_ref().expect("running").http_addr;
    for chunk in messages.chunks(100) {
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/v1/batch"))
            .basic_auth(key, Some(""))
            .json(&json!({"batch": chunk}))
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status().as_u16(), 200, "batch acknowledged");
    }
}

fn track(user: &str, n: u64, event: &str) -> Value {
    json!({"type": "track", "userId": user, "event": event, "messageId": format!("{user}-{n}"),
        "properties": {"n": n, "email": format!("{user}@Example.com")}})
}

/// Waits until `f` holds for the receiver, for up to 60 s; returns whether it did.
async fn wait_for(state: &Shared, f: impl Fn(&Received) -> bool) -> bool {
    for _ in 0..600 {
        if f(&state.lock()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn ids(r: &Received) -> HashSet<String> {
    r.rows
        .iter()
        .filter_map(|v| v["message_id"].as_str().map(str::to_string))
        .collect()
}

/// Each user's `n`s in the order they first arrived.
fn first_arrivals(r: &Received) -> HashMap<String, Vec<u64>> {
    let mut seen = HashSet::new();
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    for v in &r.rows {
        let id = v["message_id"].as_str().unwrap_or_default().to_string();
        if !seen.insert(id) {
            continue;
        }
        let user = v["user_id"].as_str().unwrap_or_default().to_string();
        out.entry(user)
            .or_default()
            .push(v["n"].as_u64().unwrap_or(0));
    }
    out
}

fn assert_user_order(r: &Received) {
    for (user, ns) in first_arrivals(r) {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "events of {user} arrived out of order");
    }
}

#[tokio::test]
async fn routes_deliver_projected_filtered_events_in_user_order() {
    let server = TestServer::start().await;
    let (c, key) = with_source(&server).await;
    let (addr, got) = receiver(Behaviour::default()).await;
    c.batch_execute(&format!(
        "CREATE DESTINATION hook TYPE webhook WITH (url = 'http://{addr}/events', batch_size = 7)"
    ))
    .await
    .expect("destination");
    c.batch_execute(
        "CREATE ROUTE live FROM SOURCE web TO DESTINATION hook AS \
         SELECT message_id, user_id, event, json_get_int(properties, 'n') AS n, \
                hash_email(json_get_str(properties, 'email')) AS email_sha256, \
                json_get_bool(properties, 'bad') AS bad \
         FROM events WHERE type = 'track' AND event <> 'Ignored'",
    )
    .await
    .expect("create route");

    let mut messages = Vec::new();
    for n in 0..20 {
        for user in ["ann", "bob", "cyd"] {
            messages.push(track(user, n, "Viewed"));
        }
        messages.push(track("zed", n, "Ignored"));
    }
    messages.push(json!({"type": "identify", "userId": "ann", "traits": {"plan": "pro"}}));
    messages.push(
        json!({"type": "track", "userId": "bad", "event": "Viewed", "messageId": "bad-1",
        "properties": {"n": 1, "bad": true}}),
    );
    post(&server, &key, messages).await;

    assert!(
        wait_for(&got, |r| ids(r).len() == 60).await,
        "60 events delivered"
    );
    let r = got.lock().clone();
    let expected_hash: String = c
        .query_one("SELECT hash_email('ann@example.com')", &[])
        .await
        .expect("hash")
        .get(0);
    for v in &r.rows {
        assert_eq!(v["event"], "Viewed");
        assert!(v.get("properties").is_none(), "only the projection is sent");
        if v["user_id"] == "ann" {
            assert_eq!(v["email_sha256"], expected_hash.as_str());
        }
    }
    assert!(!ids(&r).iter().any(|id| id.starts_with("zed")));
    assert_user_order(&r);
    drop(r);

    // The refused row is alone in tally.rejected_rows, everything else went through.
    for _ in 0..100 {
        if stat(&c, "live", "rejected").await == "1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rej = rows(
        &c,
        "SELECT row_key, status FROM tally.rejected_rows WHERE copy_id = 'route:live'",
    )
    .await;
    assert_eq!(rej.len(), 1, "{rej:?}");
    assert_eq!(rej[0]["row_key"], "bad-1");
    assert_eq!(rej[0]["status"], "400");
    let s = rows(
        &c,
        "SELECT delivered, filtered, rejected, failed FROM tally.route_stats WHERE route = 'live'",
    )
    .await;
    assert_eq!(s[0]["delivered"], "60");
    assert_eq!(s[0]["filtered"], "21", "20 Ignored and one identify");
    assert_eq!(s[0]["failed"], "0");
    let list = rows(
        &c,
        "SELECT name, source, destination, paused FROM tally.routes",
    )
    .await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["destination"], "hook");
    assert_eq!(list[0]["paused"], "f");
}

#[tokio::test]
async fn a_flaky_destination_gets_everything_and_a_down_one_holds_no_one_else() {
    let server = TestServer::start().await;
    let (c, key) = with_source(&server).await;
    let (flaky, got) = receiver(Behaviour { fail_in_10: 3 }).await;
    let down = nowhere().await;
    c.batch_execute(&format!(
        "CREATE DESTINATION flaky TYPE webhook WITH (url = 'http://{flaky}/', batch_size = 10); \
         CREATE DESTINATION down TYPE webhook WITH (url = 'http://{down}/', timeout_ms = 500)"
    ))
    .await
    .expect("destinations");
    c.batch_execute(
        "CREATE ROUTE to_flaky FROM SOURCE web TO DESTINATION flaky \
           AS SELECT message_id, user_id, json_get_int(properties, 'n') AS n FROM events; \
         CREATE ROUTE to_down FROM SOURCE web TO DESTINATION down \
           AS SELECT message_id, user_id FROM events",
    )
    .await
    .expect("routes");
    let users: Vec<String> = (0..10).map(|i| format!("user{i}")).collect();
    let mut messages = Vec::new();
    for n in 0..30 {
        for u in &users {
            messages.push(track(u, n, "Clicked"));
        }
    }
    post(&server, &key, messages).await;
    assert!(
        wait_for(&got, |r| ids(r).len() == 300).await,
        "every event reached the flaky receiver"
    );
    let r = got.lock().clone();
    assert!(r.failures > 0, "the receiver did fail");
    // Duplicates only as the same messageId with the same content.
    let mut by_id: HashMap<String, &Value> = HashMap::new();
    for v in &r.rows {
        let id = v["message_id"].as_str().unwrap_or_default().to_string();
        if let Some(prev) = by_id.insert(id, v) {
            assert_eq!(prev, v);
        }
    }
    assert_user_order(&r);
    drop(r);
    assert!(
        stat(&c, "to_flaky", "retried")
            .await
            .parse::<i64>()
            .unwrap_or(0)
            > 0
    );
    // The route to the down destination holds its events, not the other route.
    assert_eq!(stat(&c, "to_down", "delivered").await, "0");
    assert_ne!(stat(&c, "to_down", "last_error").await, "NULL");
    assert_eq!(stat(&c, "to_down", "state").await, "waiting");
}

#[tokio::test]
async fn pause_resume_and_restarts_continue_from_the_saved_position() {
    let mut server = TestServer::start().await;
    let (c, key) = with_source(&server).await;
    let (addr, got) = receiver(Behaviour::default()).await;
    c.batch_execute(&format!(
        "CREATE DESTINATION hook TYPE webhook WITH (url = 'http://{addr}/'); \
         CREATE ROUTE r FROM SOURCE web TO DESTINATION hook \
           AS SELECT message_id, user_id, json_get_int(properties, 'n') AS n FROM events"
    ))
    .await
    .expect("route");
    post(&server, &key, (0..10).map(|n| track("u", n, "A")).collect()).await;
    assert!(wait_for(&got, |r| ids(r).len() == 10).await);

    c.batch_execute("ALTER ROUTE r PAUSE").await.expect("pause");
    assert_eq!(
        rows(&c, "SELECT paused FROM tally.routes WHERE name = 'r'").await[0]["paused"],
        "t"
    );
    post(
        &server,
        &key,
        (10..20).map(|n| track("u", n, "A")).collect(),
    )
    .await;
    // Paused across a restart: the log keeps the events for the route.
    server.restart().await;
    let c = server.client().await;
    assert_eq!(stat(&c, "r", "state").await, "paused");
    assert_eq!(ids(&got.lock()).len(), 10, "nothing sent while paused");
    c.batch_execute("ALTER ROUTE r RESUME")
        .await
        .expect("resume");
    assert!(
        wait_for(&got, |r| ids(r).len() == 20).await,
        "resumed route catches up"
    );

    // Restart while running: nothing lost, nothing new invented.
    post(
        &server,
        &key,
        (20..30).map(|n| track("u", n, "A")).collect(),
    )
    .await;
    server.restart().await;
    let c = server.client().await;
    post(
        &server,
        &key,
        (30..40).map(|n| track("u", n, "A")).collect(),
    )
    .await;
    assert!(
        wait_for(&got, |r| ids(r).len() == 40).await,
        "every event after restarts"
    );
    let want: HashSet<String> = (0..40).map(|n| format!("u-{n}")).collect();
    assert_eq!(ids(&got.lock()), want);
    assert_user_order(&got.lock());

    // A dropped route stops; its position is forgotten.
    c.batch_execute("DROP ROUTE r").await.expect("drop");
    assert!(rows(&c, "SELECT * FROM tally.routes").await.is_empty());
    c.batch_execute("DROP ROUTE IF EXISTS r")
        .await
        .expect("drop if exists");
}

#[tokio::test]
async fn replay_resends_the_same_message_ids_from_the_tables() {
    let server = TestServer::start_with(|c| c.collect.flush_interval_ms = 100).await;
    let (c, key) = with_source(&server).await;
    let (addr, got) = receiver(Behaviour::default()).await;
    c.batch_execute(&format!(
        "CREATE DESTINATION hook TYPE webhook WITH (url = 'http://{addr}/'); \
         CREATE ROUTE r FROM SOURCE web TO DESTINATION hook \
           AS SELECT message_id, user_id, event, json_get_int(properties, 'n') AS n FROM events \
              WHERE event = 'Bought'"
    ))
    .await
    .expect("route");
    let mut messages: Vec<Value> = (0..15).map(|n| track("v", n, "Bought")).collect();
    messages.extend((0..5).map(|n| track("w", n, "Looked")));
    post(&server, &key, messages).await;
    assert!(wait_for(&got, |r| r.rows.len() == 15).await);
    for _ in 0..200 {
        let n: i64 = c
            .query_one("SELECT count(*) FROM web.tracks", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live: Vec<Value> = got.lock().rows.clone();
    let res = rows(&c, "REPLAY ROUTE r FROM '2000-01-01'").await;
    assert_eq!(res[0]["events"], "20");
    assert_eq!(res[0]["filtered"], "5");
    assert_eq!(res[0]["delivered"], "15");
    let r = got.lock().clone();
    assert_eq!(r.rows.len(), 30);
    // The same messageIds, with the same content.
    let replayed: Vec<Value> = r.rows[15..].to_vec();
    let key_of = |v: &Value| v["message_id"].as_str().unwrap_or_default().to_string();
    let live_by: HashMap<String, Value> = live.iter().map(|v| (key_of(v), v.clone())).collect();
    for v in &replayed {
        assert_eq!(live_by.get(&key_of(v)), Some(v));
    }
    drop(r);
    let none = rows(&c, "REPLAY ROUTE r FROM '2000-01-01' TO '2000-01-02'").await;
    assert_eq!(none[0]["events"], "0");
    let e = c
        .simple_query("REPLAY ROUTE r FROM 'last tuesday'")
        .await
        .expect_err("bad timestamp");
    assert_eq!(code(&e), "22007");
}

#[tokio::test]
async fn route_statements_check_their_inputs_and_persist() {
    let mut server = TestServer::start().await;
    let (c, _) = with_source(&server).await;
    c.batch_execute("CREATE DESTINATION hook TYPE webhook WITH (url = 'http://127.0.0.1:9/')")
        .await
        .expect("destination");
    let err = |sql: &'static str| {
        let c = &c;
        async move { code(&c.batch_execute(sql).await.expect_err(sql)) }
    };
    assert_eq!(
        err("CREATE ROUTE r FROM SOURCE nope TO DESTINATION hook AS SELECT * FROM events").await,
        "42704"
    );
    assert_eq!(
        err("CREATE ROUTE r FROM SOURCE web TO DESTINATION nope AS SELECT * FROM events").await,
        "42704"
    );
    assert_eq!(
        err("CREATE ROUTE r FROM SOURCE web TO DESTINATION hook AS SELEC * FROM events").await,
        "42601"
    );
    assert_eq!(
        err("CREATE ROUTE r FROM SOURCE web TO DESTINATION hook AS SELECT nope FROM events").await,
        "42703"
    );
    assert_eq!(
        err("CREATE ROUTE r FROM SOURCE web TO DESTINATION hook AS SELECT no_such_fn(user_id) FROM events").await,
        "42883"
    );
    assert_eq!(
        err("CREATE ROUTE r FROM SOURCE web TO DESTINATION hook AS SELECT user_id, count(*) FROM events GROUP BY user_id").await,
        "0A000"
    );
    assert_eq!(
        err("CREATE ROUTE r FROM SOURCE web TO DESTINATION hook WITH (colour = 'red') AS SELECT * FROM events").await,
        "22023"
    );
    assert_eq!(
        err("CREATE ROUTE r FROM SOURCE web TO DESTINATION hook WITH (give_up_after = 'never') AS SELECT * FROM events").await,
        "22023"
    );
    assert_eq!(
        err("CREATE ROUTE r FROM web TO hook AS SELECT 1").await,
        "42601"
    );
    c.batch_execute(
        "CREATE ROUTE r FROM SOURCE web TO DESTINATION hook WITH (give_up_after = '1h') \
         AS SELECT * FROM events WHERE type = 'track'",
    )
    .await
    .expect("create");
    assert_eq!(
        err("CREATE ROUTE r FROM SOURCE web TO DESTINATION hook AS SELECT * FROM events").await,
        "42710"
    );
    c.batch_execute(
        "CREATE ROUTE IF NOT EXISTS r FROM SOURCE web TO DESTINATION hook AS SELECT * FROM events",
    )
    .await
    .expect("if not exists");
    assert_eq!(err("ALTER ROUTE nope PAUSE").await, "42704");
    assert_eq!(err("DROP ROUTE nope").await, "42704");
    assert_eq!(err("REPLAY ROUTE nope FROM '2024-01-01'").await, "42704");
    c.batch_execute("ALTER ROUTE r PAUSE").await.expect("pause");

    server.restart().await;
    let c = server.client().await;
    let list = rows(
        &c,
        "SELECT name, source, query, options, paused FROM tally.routes",
    )
    .await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["source"], "web");
    assert_eq!(list[0]["paused"], "t");
    assert!(list[0]["query"].contains("type = 'track'"));
    assert!(list[0]["options"].contains("give_up_after"));
    c.batch_execute("DROP ROUTE r").await.expect("drop");
}

/// kill -9 of tally while events stream: after restarts, the receiver has every
/// acknowledged event (duplicates only as the same messageId), in per-user order.
#[tokio::test]
async fn kill_9_mid_stream_loses_nothing_and_the_route_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pg, http) = (free_port(), free_port());
    let (addr, got) = receiver(Behaviour::default()).await;
    let mut child = spawn_tally(dir.path(), pg, http).await;
    let c = wait_up(pg, http).await;
    c.batch_execute(&format!(
        "CREATE SOURCE web TYPE tracking_api; \
         CREATE DESTINATION hook TYPE webhook WITH (url = 'http://{addr}/', batch_size = 20); \
         CREATE ROUTE r FROM SOURCE web TO DESTINATION hook \
           AS SELECT message_id, user_id, json_get_int(properties, 'n') AS n FROM events"
    ))
    .await
    .expect("setup");
    let key: String = c
        .query_one("SELECT write_key FROM tally.sources", &[])
        .await
        .expect("key")
        .get(0);
    drop(c);
    let client = reqwest::Client::new();
    let mut acked: HashSet<String> = HashSet::new();
    let mut n = 0u64;
    for round in 0..3u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(400 + 300 * round);
        while tokio::time::Instant::now() < deadline {
            let batch: Vec<Value> = (n..n + 10)
                .flat_map(|i| [track("p", i, "Tick"), track("q", i, "Tick")])
                .collect();
            n += 10;
            let resp = client
                .post(format!("http://127.0.0.1:{http}/v1/batch"))
                .basic_auth(&key, Some(""))
                .json(&json!({"batch": batch}))
                .send()
                .await;
            if let Ok(r) = resp
                && r.status().as_u16() == 200
            {
                for v in &batch {
                    acked.insert(v["messageId"].as_str().unwrap_or_default().to_string());
                }
            }
        }
        child.start_kill().expect("kill -9");
        let _ = child.wait().await;
        child = spawn_tally(dir.path(), pg, http).await;
        drop(wait_up(pg, http).await);
    }
    assert!(acked.len() > 100, "too few acknowledged: {}", acked.len());
    assert!(
        wait_for(&got, |r| {
            let have = ids(r);
            acked.iter().all(|id| have.contains(id))
        })
        .await,
        "every acknowledged event reached the receiver after kill -9"
    );
    let r = got.lock().clone();
    assert_user_order(&r);
    let mut by_id: HashMap<String, &Value> = HashMap::new();
    for v in &r.rows {
        let id = v["message_id"].as_str().unwrap_or_default().to_string();
        if let Some(prev) = by_id.insert(id, v) {
            assert_eq!(prev, v, "a duplicate is the same event");
        }
    }
    child.start_kill().expect("stop");
    let _ = child.wait().await;
}
