//! The collection API over real HTTP: sources in SQL, the Segment tracking endpoints, the
//! warehouse layout, rejections, de-duplication, limits, and kill -9 with replay.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::common::{TestServer, code, connect, free_port, spawn_tally};

/// A server with a source `web`; returns the server, a client and the write key.
async fn with_source(flush_ms: u64) -> (TestServer, Client, String) {
    let server = TestServer::start_with(|c| c.collect.flush_interval_ms = flush_ms).await;
    let c = server.client().await;
    c.batch_execute("CREATE SOURCE web TYPE tracking_api")
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
    (server, c, key)
}

fn url(server: &TestServer, path: &str) -> String {
    format!(
        "http://{}{path}",
        server.server.as_ref().expect("running").http_addr
    )
}

async fn post(server: &TestServer, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url(server, path)).json(body);
    if let Some(k) = key {
        req = req.basic_auth(k, Some(""));
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

async fn post_raw(
    server: &TestServer,
    path: &str,
    key: Option<&str>,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url(server, path)).body(body);
    if let Some(k) = key {
        req = req.basic_auth(k, Some(""));
    }
    for (h, v) in headers {
        req = req.header(*h, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

/// Polls `sql` (a count) until it returns `want`, for up to 20 s.
async fn wait_count(c: &Client, sql: &str, want: i64) -> i64 {
    let mut last = -1;
    for _ in 0..200 {
        if let Ok(row) = c.query_one(sql, &[]).await {
            last = row.get::<_, i64>(0);
            if last == want {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

#[tokio::test]
async fn sources_are_managed_in_sql() {
    let (server, c, key) = with_source(100).await;
    assert!(key.len() >= 22, "write key too short for 128 bits: {key}");
    let e = c
        .batch_execute("CREATE SOURCE web TYPE tracking_api")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42710");
    c.batch_execute("CREATE SOURCE IF NOT EXISTS web TYPE tracking_api")
        .await
        .expect("if not exists");
    let e = c
        .batch_execute("CREATE SOURCE app TYPE carrier_pigeon")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22023");
    let e = c.batch_execute("CREATE SOURCE app").await.unwrap_err();
    assert_eq!(code(&e), "42601");

    let ok = json!({"userId": "u1", "event": "Signed Up"});
    assert_eq!(post(&server, "/v1/track", Some(&key), &ok).await.0, 200);

    c.batch_execute("ALTER SOURCE web ROTATE WRITE KEY")
        .await
        .expect("rotate");
    let new_key: String = c
        .query_one(
            "SELECT write_key FROM tally.sources WHERE name = 'web'",
            &[],
        )
        .await
        .expect("sources")
        .get(0);
    assert_ne!(new_key, key);
    let (status, body) = post(&server, "/v1/track", Some(&key), &ok).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(post(&server, "/v1/track", Some(&new_key), &ok).await.0, 200);

    c.batch_execute("DROP SOURCE web").await.expect("drop");
    assert_eq!(post(&server, "/v1/track", Some(&new_key), &ok).await.0, 401);
    let e = c.batch_execute("DROP SOURCE web").await.unwrap_err();
    assert_eq!(code(&e), "42704");
    c.batch_execute("DROP SOURCE IF EXISTS web")
        .await
        .expect("if exists");
    // The data stays after the source is gone.
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web.tracks", 2).await,
        2
    );
}

#[tokio::test]
async fn every_message_type_lands_in_the_segment_layout() {
    let (server, c, key) = with_source(100).await;
    let ctx = json!({"ip": "203.0.113.9", "userAgent": "Mozilla/5.0", "library": {"name": "analytics-python", "version": "2.3.0"},
        "page": {"url": "https://shop.example/p/1"}, "device": {"id": "dev-1"}});
    let batch = json!({"batch": [
        {"type": "track", "messageId": "m1", "anonymousId": "a1", "event": "Order Completed",
         "properties": {"revenue": 42.5, "currency": "EUR", "items": [{"sku": "x"}], "coupon": {"code": "SAVE"}},
         "context": ctx, "timestamp": "2024-05-01T10:00:00.000Z"},
        {"type": "identify", "messageId": "m2", "userId": "u1", "anonymousId": "a1",
         "traits": {"email": "ann@example.com", "plan": "pro"}, "timestamp": "2024-05-01T10:00:01.000Z"},
        {"type": "identify", "messageId": "m3", "userId": "u1", "traits": {"plan": "enterprise"},
         "timestamp": "2024-05-01T11:00:00.000Z"},
        {"type": "page", "messageId": "m4", "userId": "u1", "name": "Home", "properties": {"path": "/"}},
        {"type": "screen", "messageId": "m5", "userId": "u1", "name": "Settings"},
        {"type": "group", "messageId": "m6", "userId": "u1", "groupId": "g1", "traits": {"employees": 40}},
        {"type": "alias", "messageId": "m7", "userId": "u1", "previousId": "a1"}
    ], "sentAt": "2024-05-01T11:00:00.000Z"});
    let (status, body) = post(&server, "/v1/batch", Some(&key), &batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    // The single-message endpoints, one without a messageId.
    let (status, _) = post(
        &server,
        "/v1/track",
        Some(&key),
        &json!({"userId": "u2", "event": "Order Completed", "properties": {"revenue": 10}}),
    )
    .await;
    assert_eq!(status, 200);

    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web.tracks", 2).await,
        2
    );
    for (table, n) in [
        ("identifies", 2),
        ("pages", 1),
        ("screens", 1),
        ("groups", 1),
        ("aliases", 1),
        ("order_completed", 2),
    ] {
        assert_eq!(
            wait_count(&c, &format!("SELECT count(*) FROM web.{table}"), n).await,
            n,
            "rows in web.{table}"
        );
    }
    let row = c
        .query_one(
            "SELECT event, event_text, revenue, currency, coupon_code, items, context_ip, context_library_name, \
             context_page_url, context_device_id, anonymous_id, CAST(\"timestamp\" AS text), received_at IS NOT NULL \
             FROM web.order_completed WHERE message_id = 'm1'",
            &[],
        )
        .await
        .expect("order_completed row");
    assert_eq!(row.get::<_, String>(0), "order_completed");
    assert_eq!(row.get::<_, String>(1), "Order Completed");
    assert_eq!(row.get::<_, f64>(2), 42.5);
    assert_eq!(row.get::<_, String>(3), "EUR");
    assert_eq!(row.get::<_, String>(4), "SAVE");
    assert_eq!(row.get::<_, String>(5), r#"[{"sku":"x"}]"#);
    assert_eq!(row.get::<_, String>(6), "203.0.113.9");
    assert_eq!(row.get::<_, String>(7), "analytics-python");
    assert_eq!(row.get::<_, String>(8), "https://shop.example/p/1");
    assert_eq!(row.get::<_, String>(9), "dev-1");
    assert_eq!(row.get::<_, String>(10), "a1");
    assert!(row.get::<_, bool>(12));
    // Skew correction: the event happened an hour before the batch was sent, so it lands
    // an hour before the server received it.
    let skew = c
        .query_one(
            "SELECT CAST(date_part('epoch', received_at) - date_part('epoch', \"timestamp\") AS bigint), \
             CAST(date_part('epoch', original_timestamp) AS bigint) FROM web.tracks WHERE message_id = 'm1'",
            &[],
        )
        .await
        .expect("skew");
    assert_eq!(skew.get::<_, i64>(0), 3600);
    assert_eq!(
        skew.get::<_, i64>(1),
        1_714_557_600,
        "2024-05-01T10:00:00Z as sent"
    );
    // A missing messageId is generated.
    let generated: String = c
        .query_one(
            "SELECT message_id FROM web.tracks WHERE user_id = 'u2'",
            &[],
        )
        .await
        .expect("generated id")
        .get(0);
    assert_eq!(generated.len(), 36);
    // Latest traits per user, by event time.
    let user = c
        .query_one(
            "SELECT email, plan FROM web.users WHERE user_id = 'u1'",
            &[],
        )
        .await
        .expect("users view");
    assert_eq!(user.get::<_, String>(0), "ann@example.com");
    assert_eq!(user.get::<_, String>(1), "enterprise");
    let g = c
        .query_one("SELECT group_id, employees FROM web.groups", &[])
        .await
        .expect("groups");
    assert_eq!(g.get::<_, String>(0), "g1");
    assert_eq!(g.get::<_, f64>(1), 40.0);
    let a: String = c
        .query_one("SELECT previous_id FROM web.aliases", &[])
        .await
        .expect("aliases")
        .get(0);
    assert_eq!(a, "a1");
}

#[tokio::test]
async fn new_properties_add_columns_and_conflicting_types_are_kept() {
    let (server, c, key) = with_source(50).await;
    let send = |props: Value| json!({"batch": [{"type": "track", "userId": "u", "event": "Product Viewed", "properties": props}]});
    assert_eq!(
        post(
            &server,
            "/v1/batch",
            Some(&key),
            &send(json!({"price": 9.5}))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web.product_viewed", 1).await,
        1
    );
    assert_eq!(
        post(
            &server,
            "/v1/batch",
            Some(&key),
            &send(json!({"price": "12.50", "color": "red"}))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web.product_viewed", 2).await,
        2
    );
    let rows = c
        .query(
            "SELECT price, price_text, color FROM web.product_viewed ORDER BY received_at",
            &[],
        )
        .await
        .expect("evolved table");
    assert_eq!(rows[0].get::<_, Option<f64>>(0), Some(9.5));
    assert_eq!(rows[0].get::<_, Option<String>>(2), None);
    assert_eq!(rows[1].get::<_, Option<f64>>(0), None);
    assert_eq!(
        rows[1].get::<_, Option<String>>(1).as_deref(),
        Some("12.50")
    );
    assert_eq!(rows[1].get::<_, Option<String>>(2).as_deref(), Some("red"));
}

#[tokio::test]
async fn bad_requests_get_their_status_and_lose_nothing() {
    let (server, c, key) = with_source(50).await;
    let ok = json!({"userId": "u1", "event": "E"});
    // Authentication.
    assert_eq!(post(&server, "/v1/track", None, &ok).await.0, 401);
    assert_eq!(post(&server, "/v1/track", Some("nope"), &ok).await.0, 401);
    let mut in_body = ok.clone();
    in_body["writeKey"] = json!(key);
    assert_eq!(post(&server, "/v1/track", None, &in_body).await.0, 200);
    // Malformed JSON: 400, and the raw text is kept.
    let (status, body) = post_raw(
        &server,
        "/v1/track",
        Some(&key),
        b"{\"userId\": ".to_vec(),
        &[],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "invalid_json");
    // No user id.
    let (status, body) = post(&server, "/v1/track", Some(&key), &json!({"event": "E"})).await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap_or("").contains("userId"),
        "{body}"
    );
    // Oversized message (over 32 KB) and oversized batch (over 500 KB).
    let big = json!({"userId": "u1", "event": "E", "properties": {"blob": "x".repeat(40_000)}});
    assert_eq!(post(&server, "/v1/track", Some(&key), &big).await.0, 413);
    let huge = json!({"batch": [{"type": "track", "userId": "u", "event": "E", "properties": {"b": "y".repeat(600_000)}}]});
    let (status, body) = post(&server, "/v1/batch", Some(&key), &huge).await;
    assert_eq!(status, 413, "{body}");
    // A gzip bomb stops at the limit.
    let bomb = gzip(&vec![b' '; 50 << 20]);
    let (status, _) = post_raw(
        &server,
        "/v1/batch",
        Some(&key),
        bomb,
        &[("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(status, 413);
    let (status, _) = post_raw(
        &server,
        "/v1/batch",
        Some(&key),
        b"{}".to_vec(),
        &[("content-encoding", "br")],
    )
    .await;
    assert_eq!(status, 415);
    // A gzip batch with one bad message: the good ones are stored, the bad one is reported.
    let mixed = json!({"batch": [
        {"type": "track", "userId": "u1", "event": "Good"},
        {"type": "track", "userId": "u1"},
        {"type": "teleport", "userId": "u1"}
    ]});
    let (status, body) = post_raw(
        &server,
        "/v1/batch",
        Some(&key),
        gzip(mixed.to_string().as_bytes()),
        &[
            ("content-encoding", "gzip"),
            ("content-type", "application/json"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rejected"].as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(body["rejected"][0]["index"], 1);
    // Unknown endpoint.
    assert_eq!(post(&server, "/v1/teleport", Some(&key), &ok).await.0, 404);

    // Rejections are kept with their reasons: malformed, no id, oversized, 2 in the batch.
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web._rejected", 5).await,
        5
    );
    let reasons: BTreeSet<String> = c
        .query("SELECT reason_code FROM web._rejected", &[])
        .await
        .expect("rejected")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for r in [
        "invalid_json",
        "missing_id",
        "too_large",
        "missing_event",
        "invalid_type",
    ] {
        assert!(reasons.contains(r), "{r} not in {reasons:?}");
    }
    let raw: String = c
        .query_one(
            "SELECT raw FROM web._rejected WHERE reason_code = 'invalid_json'",
            &[],
        )
        .await
        .expect("raw")
        .get(0);
    assert_eq!(raw, "{\"userId\": ");
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web.tracks", 2).await,
        2
    );
    let stats = c
        .query_one(
            "SELECT accepted, rejected FROM tally.source_stats WHERE source = 'web'",
            &[],
        )
        .await
        .expect("stats");
    assert_eq!(stats.get::<_, i64>(0), 2);
    assert_eq!(stats.get::<_, i64>(1), 5);
    // The server is still up.
    let health = reqwest::get(url(&server, "/health")).await.expect("health");
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test]
async fn cors_preflight_and_duplicate_message_ids() {
    let (server, c, key) = with_source(50).await;
    let resp = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, url(&server, "/v1/batch"))
        .header("Origin", "https://shop.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await
        .expect("preflight");
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert!(
        resp.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap_or("")
            .contains("POST")
    );

    let msg = json!({"userId": "u1", "event": "E", "messageId": "dup-1"});
    for _ in 0..3 {
        assert_eq!(post(&server, "/v1/track", Some(&key), &msg).await.0, 200);
    }
    let (_, body) = post(
        &server,
        "/v1/batch",
        Some(&key),
        &json!({"batch": [{"type": "track", "userId": "u1", "event": "E", "messageId": "dup-1"}]}),
    )
    .await;
    assert_eq!(body["duplicates"], 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web.tracks", 1).await,
        1
    );
}

#[tokio::test]
async fn unflushed_events_survive_a_restart() {
    // A flush interval longer than the test: events are only in the log at shutdown.
    let (mut server, c, key) = with_source(600_000).await;
    drop(c);
    let batch: Vec<Value> = (0..50)
        .map(|i| json!({"type": "track", "userId": format!("u{i}"), "event": "E", "messageId": format!("r{i}")}))
        .collect();
    assert_eq!(
        post(&server, "/v1/batch", Some(&key), &json!({"batch": batch}))
            .await
            .0,
        200
    );
    server.restart().await;
    let c = server.client().await;
    assert_eq!(
        wait_count(&c, "SELECT count(DISTINCT message_id) FROM web.tracks", 50).await,
        50
    );
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web.tracks", 50).await,
        50
    );
}

async fn wait_http(http: u16) {
    for _ in 0..300 {
        if reqwest::get(format!("http://127.0.0.1:{http}/health"))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("tally did not come up");
}

/// kill -9 at several points while a client streams batches: every acknowledged messageId
/// is in the tables exactly once after the last restart.
#[tokio::test]
async fn kill_9_loses_no_acknowledged_event_and_stores_none_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pg, http) = (free_port(), free_port());
    let mut child = spawn_tally(dir.path(), pg, http).await;
    wait_http(http).await;
    let c = loop {
        match connect(pg, "tally", None).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    c.batch_execute("CREATE SOURCE web TYPE tracking_api")
        .await
        .expect("source");
    let key: String = c
        .query_one("SELECT write_key FROM tally.sources", &[])
        .await
        .expect("key")
        .get(0);
    drop(c);
    let client = reqwest::Client::new();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut next = 0u64;
    // Kill points vary: after a few, then more batches.
    for round in 0..4u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300 + 250 * round);
        let killer = tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
        });
        while !killer.is_finished() {
            let ids: Vec<String> = (next..next + 20).map(|i| format!("k{i}")).collect();
            next += 20;
            let batch: Vec<Value> = ids
                .iter()
                .map(|id| json!({"type": "track", "userId": "u", "event": "Tick", "messageId": id}))
                .collect();
            let resp = client
                .post(format!("http://127.0.0.1:{http}/v1/batch"))
                .basic_auth(&key, Some(""))
                .json(&json!({"batch": batch}))
                .send()
                .await;
            if let Ok(r) = resp
                && r.status().as_u16() == 200
            {
                acked.extend(ids);
            }
        }
        child.start_kill().expect("kill");
        let _ = child.wait().await;
        child = spawn_tally(dir.path(), pg, http).await;
        wait_http(http).await;
    }
    assert!(
        acked.len() > 100,
        "too few acknowledged events: {}",
        acked.len()
    );
    let c = connect(pg, "tally", None).await.expect("connect");
    let mut counts: HashMap<String, i64> = HashMap::new();
    for _ in 0..100 {
        counts = c
            .query(
                "SELECT message_id, count(*) FROM web.tracks GROUP BY message_id",
                &[],
            )
            .await
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            .unwrap_or_default();
        if acked.iter().all(|id| counts.contains_key(id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "events stored twice: {doubled:?}");
    // The per-event table agrees.
    let n: i64 = c
        .query_one("SELECT count(*) FROM web.tick", &[])
        .await
        .expect("tick")
        .get(0);
    assert_eq!(n as usize, counts.len());
    child.start_kill().expect("kill");
}
