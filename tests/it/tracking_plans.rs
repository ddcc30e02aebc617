//! Tracking plans end to end through the collection API (flag and block modes, identify
//! traits, plans from a URL, taking a source off its plan, `tracking_plan_report`), and
//! learned validation (`learn_event_shapes`, `event_anomalies`) over a history sent through
//! the API.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::common::{TestServer, code, num, rows};

/// A server with a source `web`; returns the server, a client and the write key.
async fn with_source() -> (TestServer, Client, String) {
    let server = TestServer::start_with(|c| c.collect.flush_interval_ms = 50).await;
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

async fn post(server: &TestServer, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let addr = server.server.as_ref().expect("running").http_addr;
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .basic_auth(key, Some(""))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

/// Polls `sql` (a count) until it returns `want`, for up to 20 s; returns the last count.
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

const SHOP_PLAN: &str = r#"{
  "events": {
    "Order Completed": {
      "type": "object",
      "required": ["order_id", "total"],
      "additionalProperties": false,
      "properties": {
        "order_id": {"type": "string"},
        "total": {"type": "number", "minimum": 0},
        "currency": {"enum": ["EUR", "USD"]}
      }
    },
    "Product Viewed": {"type": "object", "properties": {"sku": {"type": "string"}}}
  },
  "identify": {
    "type": "object",
    "properties": {"email": {"type": "string", "format": "email"}, "plan": {"type": "string"}}
  },
  "allow_unplanned_events": false
}"#;

fn create_plan_sql(name: &str, plan: &str) -> String {
    format!("CREATE TRACKING PLAN {name} FROM $plan${plan}$plan$")
}

/// The violations JSON of one message in `table` (`None` when null).
async fn violations_of(c: &Client, table: &str, message_id: &str) -> Option<Vec<Value>> {
    let r = rows(
        c,
        &format!("SELECT violations FROM web.{table} WHERE message_id = '{message_id}'"),
    )
    .await;
    assert_eq!(r.len(), 1, "one row for {message_id} in {table}: {r:?}");
    let v = r[0].get("violations").cloned().unwrap_or_default();
    if v == "NULL" {
        return None;
    }
    serde_json::from_str::<Vec<Value>>(&v).ok()
}

fn kinds(v: &[Value]) -> Vec<(String, String)> {
    let mut k: Vec<(String, String)> = v
        .iter()
        .map(|x| {
            (
                x["path"].as_str().unwrap_or_default().to_string(),
                x["kind"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    k.sort();
    k
}

#[tokio::test]
async fn flag_mode_records_violations_on_events_and_in_violations() {
    let (server, c, key) = with_source().await;
    c.batch_execute(&create_plan_sql("shop", SHOP_PLAN))
        .await
        .expect("create plan");
    let plans = rows(
        &c,
        "SELECT name, event_count, array_to_string(events, '|') AS events, identify_traits, \
         allow_unplanned_events, origin FROM tally.tracking_plans",
    )
    .await;
    assert_eq!(plans.len(), 1, "{plans:?}");
    assert_eq!(plans[0]["name"], "shop");
    assert_eq!(num(&plans[0], "event_count"), 2);
    assert_eq!(plans[0]["events"], "Order Completed|Product Viewed");
    assert_eq!(plans[0]["identify_traits"], "t");
    assert_eq!(plans[0]["allow_unplanned_events"], "f");
    assert_eq!(plans[0]["origin"], "NULL");

    c.batch_execute("ALTER SOURCE web SET TRACKING PLAN shop MODE flag")
        .await
        .expect("set plan");
    let src = rows(
        &c,
        "SELECT tracking_plan, tracking_plan_mode FROM tally.sources WHERE name = 'web'",
    )
    .await;
    assert_eq!(src[0]["tracking_plan"], "shop");
    assert_eq!(src[0]["tracking_plan_mode"], "flag");
    let users = rows(
        &c,
        "SELECT array_to_string(sources, ',') AS s FROM tally.tracking_plans",
    )
    .await;
    assert_eq!(users[0]["s"], "web");

    let batch = json!({"batch": [
        {"type": "track", "messageId": "clean", "userId": "u1", "event": "Order Completed",
         "properties": {"order_id": "o1", "total": 12.5, "currency": "EUR"}},
        {"type": "track", "messageId": "bad", "userId": "u1", "event": "Order Completed",
         "properties": {"total": "twelve", "coupon": "SAVE10", "currency": "GBP"}},
        {"type": "track", "messageId": "unplanned", "userId": "u1", "event": "Signed Up"},
        {"type": "track", "messageId": "forged", "userId": "u1", "event": "Product Viewed",
         "properties": {"sku": "s1"}, "_tally": {"violations": [{"kind": "type"}]}},
        {"type": "identify", "messageId": "id-bad", "userId": "u1", "traits": {"email": "not an email"}},
        {"type": "identify", "messageId": "id-ok", "userId": "u2", "traits": {"email": "ann@example.com"}},
        {"type": "page", "messageId": "page", "userId": "u1", "name": "Home", "properties": {"x": 1}}
    ]});
    let (status, body) = post(&server, "/v1/batch", &key, &batch).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("rejected").is_none(), "{body}");

    // Flagged events are stored like any other.
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web.order_completed", 2).await,
        2
    );
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web.identifies", 2).await,
        2
    );
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web._violations", 6).await,
        6
    );
    assert_eq!(violations_of(&c, "order_completed", "clean").await, None);
    let bad = violations_of(&c, "order_completed", "bad")
        .await
        .expect("violations of bad");
    assert_eq!(
        kinds(&bad),
        vec![
            ("/properties/coupon".into(), "additional_property".into()),
            ("/properties/currency".into(), "enum".into()),
            ("/properties/order_id".into(), "required".into()),
            ("/properties/total".into(), "type".into()),
        ]
    );
    // The event's row in `tracks` carries them too.
    assert_eq!(
        violations_of(&c, "tracks", "bad").await.map(|v| v.len()),
        Some(4)
    );
    let unplanned = violations_of(&c, "tracks", "unplanned")
        .await
        .expect("unplanned");
    assert_eq!(
        kinds(&unplanned),
        vec![("/event".into(), "unplanned_event".into())]
    );
    // A sender cannot forge (or hide) violations.
    assert_eq!(violations_of(&c, "product_viewed", "forged").await, None);
    let id_bad = violations_of(&c, "identifies", "id-bad")
        .await
        .expect("identify violations");
    assert_eq!(
        kinds(&id_bad),
        vec![("/traits/email".into(), "format".into())]
    );
    assert_eq!(violations_of(&c, "identifies", "id-ok").await, None);

    let v = rows(
        &c,
        "SELECT message_id, type, event, property, path, kind, plan, user_id, received_at IS NOT NULL AS r \
         FROM web._violations ORDER BY message_id, path",
    )
    .await;
    let got: Vec<(String, String, String, String, String)> = v
        .iter()
        .map(|r| {
            (
                r["message_id"].clone(),
                r["type"].clone(),
                r["event"].clone(),
                r["property"].clone(),
                r["kind"].clone(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, c: &str, d: &str, e: &str| {
        (
            a.to_string(),
            b.to_string(),
            c.to_string(),
            d.to_string(),
            e.to_string(),
        )
    };
    assert_eq!(
        got,
        vec![
            s(
                "bad",
                "track",
                "Order Completed",
                "coupon",
                "additional_property"
            ),
            s("bad", "track", "Order Completed", "currency", "enum"),
            s("bad", "track", "Order Completed", "order_id", "required"),
            s("bad", "track", "Order Completed", "total", "type"),
            s("id-bad", "identify", "NULL", "email", "format"),
            s("unplanned", "track", "Signed Up", "NULL", "unplanned_event"),
        ]
    );
    assert!(
        v.iter()
            .all(|r| r["plan"] == "shop" && r["r"] == "t" && r["user_id"] == "u1")
    );

    // A second bad order: the report counts per event and property.
    let again = json!({"type": "track", "messageId": "bad2", "userId": "u3", "event": "Order Completed",
        "properties": {"order_id": "o3", "total": "x"}});
    assert_eq!(post(&server, "/v1/track", &key, &again).await.0, 200);
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web._violations", 7).await,
        7
    );
    let report = rows(&c, "SELECT * FROM tracking_plan_report('web')").await;
    assert_eq!(report.len(), 6, "{report:?}");
    let top = &report[0];
    assert_eq!(
        (
            top["type"].as_str(),
            top["event"].as_str(),
            top["property"].as_str(),
            top["kind"].as_str()
        ),
        ("track", "Order Completed", "total", "type")
    );
    assert_eq!(num(top, "violations"), 2);
    assert_eq!(num(top, "messages"), 2);
    assert!(["bad", "bad2"].contains(&top["sample_message_id"].as_str()));
    assert!(top["sample_error"].contains("number"), "{top:?}");
    assert_ne!(top["first_seen"], "NULL");
    let by_key: BTreeMap<(String, String), i64> = report
        .iter()
        .map(|r| {
            (
                (r["event"].clone(), r["kind"].clone()),
                num(r, "violations"),
            )
        })
        .collect();
    assert_eq!(
        by_key.get(&("Signed Up".to_string(), "unplanned_event".to_string())),
        Some(&1)
    );
    assert_eq!(
        by_key.get(&("NULL".to_string(), "format".to_string())),
        Some(&1)
    );

    let stats = rows(
        &c,
        "SELECT accepted, rejected, flagged FROM tally.source_stats WHERE source = 'web'",
    )
    .await;
    assert_eq!(num(&stats[0], "accepted"), 8);
    assert_eq!(num(&stats[0], "rejected"), 0);
    assert_eq!(num(&stats[0], "flagged"), 4);
}

/// Serves `plan` at `/plan.json` (and 404 elsewhere) on a loopback port.
async fn serve_plan(plan: &'static str) -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/plan.json",
        axum::routing::get(move || async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                plan,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test]
async fn block_mode_sends_violating_events_to_rejected_and_dropping_the_plan_stops_it() {
    let (server, c, key) = with_source().await;
    let addr = serve_plan(SHOP_PLAN).await;
    c.batch_execute(&format!(
        "CREATE TRACKING PLAN shop FROM 'http://{addr}/plan.json'"
    ))
    .await
    .expect("plan from a URL");
    let origin = rows(&c, "SELECT origin, event_count FROM tally.tracking_plans").await;
    assert_eq!(origin[0]["origin"], format!("http://{addr}/plan.json"));
    assert_eq!(num(&origin[0], "event_count"), 2);
    let e = c
        .batch_execute(&format!(
            "CREATE TRACKING PLAN other FROM 'http://{addr}/missing.json'"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42P01", "{e:?}");

    c.batch_execute("ALTER SOURCE web SET TRACKING PLAN shop MODE block")
        .await
        .expect("block");
    let bad = json!({"messageId": "b1", "userId": "u1", "event": "Order Completed",
        "properties": {"order_id": 7, "total": -1}});
    let (status, body) = post(&server, "/v1/track", &key, &bad).await;
    assert_eq!(
        status, 200,
        "blocked events are acknowledged as Segment does: {body}"
    );
    let good = json!({"messageId": "g1", "userId": "u1", "event": "Order Completed",
        "properties": {"order_id": "o1", "total": 5}});
    assert_eq!(post(&server, "/v1/track", &key, &good).await.0, 200);
    let bad_traits = json!({"messageId": "i1", "userId": "u1", "traits": {"email": "nope"}});
    assert_eq!(
        post(&server, "/v1/identify", &key, &bad_traits).await.0,
        200
    );

    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web._rejected", 2).await,
        2
    );
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web.tracks", 1).await,
        1
    );
    let tracks = rows(&c, "SELECT message_id FROM web.tracks").await;
    assert_eq!(tracks[0]["message_id"], "g1");
    let rejected = rows(
        &c,
        "SELECT message_id, reason_code, reason, raw, violations FROM web._rejected ORDER BY message_id",
    )
    .await;
    assert_eq!(rejected[0]["message_id"], "b1");
    assert_eq!(rejected[0]["reason_code"], "tracking_plan");
    let reason = &rejected[0]["reason"];
    assert!(
        reason.contains("shop")
            && reason.contains("/properties/order_id")
            && reason.contains("/properties/total"),
        "{reason}"
    );
    let raw: Value = serde_json::from_str(&rejected[0]["raw"]).expect("raw is the message");
    assert_eq!(raw["properties"]["total"], -1);
    let v: Vec<Value> = serde_json::from_str(&rejected[0]["violations"]).expect("violations");
    assert_eq!(
        kinds(&v),
        vec![
            ("/properties/order_id".into(), "type".into()),
            ("/properties/total".into(), "minimum".into()),
        ]
    );
    assert_eq!(rejected[1]["message_id"], "i1");
    assert!(rejected[1]["reason"].contains("/traits/email"));
    // The blocked identify was flushed with the rejections: no identifies table came of it.
    let identifies = rows(
        &c,
        "SELECT count(*) AS n FROM information_schema.tables \
         WHERE table_schema = 'web' AND table_name = 'identifies'",
    )
    .await;
    assert_eq!(num(&identifies[0], "n"), 0);
    let stats = rows(
        &c,
        "SELECT accepted, rejected FROM tally.source_stats WHERE source = 'web'",
    )
    .await;
    assert_eq!(num(&stats[0], "rejected"), 2);
    assert_eq!(num(&stats[0], "accepted"), 1);

    // A plan in use cannot be dropped without CASCADE.
    let e = c
        .batch_execute("DROP TRACKING PLAN shop")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "2BP01");

    // Off the plan, the same kind of event is stored as sent.
    c.batch_execute("ALTER SOURCE web DROP TRACKING PLAN")
        .await
        .expect("drop plan from source");
    let src = rows(
        &c,
        "SELECT tracking_plan, tracking_plan_mode FROM tally.sources WHERE name = 'web'",
    )
    .await;
    assert_eq!(src[0]["tracking_plan"], "NULL");
    let bad2 = json!({"messageId": "b2", "userId": "u1", "event": "Order Completed",
        "properties": {"order_id": 8, "total": -2}});
    assert_eq!(post(&server, "/v1/track", &key, &bad2).await.0, 200);
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web.order_completed", 2).await,
        2
    );

    // Back under the plan, then the plan is dropped with CASCADE: checking stops again.
    c.batch_execute("ALTER SOURCE web SET TRACKING PLAN shop MODE block")
        .await
        .expect("block again");
    c.batch_execute("DROP TRACKING PLAN shop CASCADE")
        .await
        .expect("drop cascade");
    assert_eq!(
        rows(&c, "SELECT count(*) AS n FROM tally.tracking_plans").await[0]["n"],
        "0"
    );
    let bad3 = json!({"messageId": "b3", "userId": "u1", "event": "Order Completed",
        "properties": {"total": "free"}});
    assert_eq!(post(&server, "/v1/track", &key, &bad3).await.0, 200);
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web.order_completed", 3).await,
        3
    );
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web._rejected", 2).await,
        2
    );
}

#[tokio::test]
async fn bad_plans_and_misuse_are_errors() {
    let (_server, c, _key) = with_source().await;
    let cases = [
        ("CREATE TRACKING PLAN p FROM '{\"events\": '", "22P02"),
        (
            "CREATE TRACKING PLAN p FROM '{\"events\": {\"Order Completed\": {\"type\": \"decimal\"}}}'",
            "22023",
        ),
        ("CREATE TRACKING PLAN p FROM '{\"evnets\": {}}'", "22023"),
        ("CREATE TRACKING PLAN p FROM 'plans/web.json'", "22023"),
        (
            "CREATE TRACKING PLAN p FROM 'http://127.0.0.1:1/plan.json'",
            "08001",
        ),
        ("ALTER SOURCE web SET TRACKING PLAN nope", "42704"),
        ("ALTER SOURCE nope SET TRACKING PLAN nope", "42704"),
        ("DROP TRACKING PLAN nope", "42704"),
        ("SELECT * FROM tracking_plan_report('nope')", "42704"),
        ("SELECT * FROM event_anomalies('web', window => 3)", "42883"),
    ];
    for (sql, want) in cases {
        let e = c.batch_execute(sql).await.unwrap_err();
        assert_eq!(code(&e), want, "{sql}: {e:?}");
    }
    let e = c
        .batch_execute(
            "CREATE TRACKING PLAN p FROM '{\"events\": {\"Order Completed\": {\"type\": \"decimal\"}}}'",
        )
        .await
        .unwrap_err();
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("Order Completed"), "{message}");

    // From a server file (the local trusted user is a superuser).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("plan.json");
    std::fs::write(&path, SHOP_PLAN).expect("write plan");
    c.batch_execute(&format!("CREATE TRACKING PLAN p FROM '{}'", path.display()))
        .await
        .expect("plan from a file");
    let e = c
        .batch_execute(&create_plan_sql("p", SHOP_PLAN))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42710");
    c.batch_execute(&format!(
        "CREATE OR REPLACE TRACKING PLAN p FROM '{}'",
        r#"{"identify": {"type": "object"}}"#
    ))
    .await
    .expect("replace");
    let p = rows(
        &c,
        "SELECT event_count, identify_traits FROM tally.tracking_plans",
    )
    .await;
    assert_eq!(num(&p[0], "event_count"), 0);

    let e = c
        .batch_execute("BEGIN; ALTER SOURCE web SET TRACKING PLAN p MODE block")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "25001");
    c.batch_execute("ROLLBACK").await.expect("rollback");
}

/// 2024-03-01 plus `day` days, at `hour`:00 UTC, as the tracking API writes times.
fn at(day: i64, n: i64) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2024-03-01T00:00:00Z").expect("base");
    (base + chrono::Duration::days(day) + chrono::Duration::minutes(n))
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test]
async fn learned_shapes_and_anomalies_over_a_history() {
    let (server, c, key) = with_source().await;
    // Fourteen days of orders: 9 to 11 a day, 40 on day 9; `coupon` on every order until
    // day 11, gone on days 12 and 13; `total` a number, but text in some orders of day 12;
    // `gift_wrap` new on day 13. Product views steady at 5 a day.
    let mut messages = Vec::new();
    let mut expected_orders = 0;
    let mut since_day_4 = 0;
    for day in 0..14 {
        let orders = if day == 9 { 40 } else { 9 + day % 3 };
        for n in 0..orders {
            let mut props = json!({"order_id": format!("o{day}-{n}"), "total": 10.0 + n as f64});
            if day < 12 {
                props["coupon"] = json!("SAVE");
            }
            if day == 12 && n < 3 {
                props["total"] = json!("ten");
            }
            if day == 13 {
                props["gift_wrap"] = json!(true);
            }
            messages.push(json!({"type": "track", "messageId": format!("o-{day}-{n}"),
                "userId": format!("u{n}"), "event": "Order Completed", "properties": props,
                "timestamp": at(day, n)}));
            expected_orders += 1;
            if day >= 4 {
                since_day_4 += 1;
            }
        }
        for n in 0..5 {
            messages.push(json!({"type": "track", "messageId": format!("v-{day}-{n}"),
                "anonymousId": format!("a{n}"), "event": "Product Viewed",
                "properties": {"sku": format!("s{n}")}, "timestamp": at(day, n)}));
        }
    }
    for chunk in messages.chunks(200) {
        let (status, body) = post(&server, "/v1/batch", &key, &json!({"batch": chunk})).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        wait_count(
            &c,
            "SELECT count(*) FROM web.order_completed",
            expected_orders
        )
        .await,
        expected_orders
    );
    assert_eq!(
        wait_count(&c, "SELECT count(*) FROM web.product_viewed", 70).await,
        70
    );

    let shapes = rows(
        &c,
        "SELECT event, table_name, property, type, present, events, presence_rate, days_seen, \
         event_days, median_daily_volume, conflicting_values, first_seen, last_seen \
         FROM learn_event_shapes('web') ORDER BY event, property",
    )
    .await;
    let shape = |event: &str, prop: &str| {
        shapes
            .iter()
            .find(|r| r["event"] == event && r["property"] == prop)
            .unwrap_or_else(|| panic!("no shape for {event}.{prop} in {shapes:?}"))
            .clone()
    };
    let coupon = shape("Order Completed", "coupon");
    assert_eq!(coupon["table_name"], "order_completed");
    assert_eq!(coupon["type"], "text");
    assert_eq!(num(&coupon, "events"), expected_orders);
    assert_eq!(num(&coupon, "days_seen"), 12);
    assert_eq!(num(&coupon, "event_days"), 14);
    assert_eq!(coupon["first_seen"], "2024-03-01");
    assert_eq!(coupon["last_seen"], "2024-03-12");
    assert_eq!(coupon["median_daily_volume"], "10");
    let rate: f64 = coupon["presence_rate"].parse().expect("rate");
    assert!(rate > 0.8 && rate < 1.0, "{rate}");
    let total = shape("Order Completed", "total");
    assert_eq!(total["type"], "number");
    assert_eq!(total["presence_rate"], "1");
    assert_eq!(num(&total, "conflicting_values"), 3);
    let gift = shape("Order Completed", "gift_wrap");
    assert_eq!(
        (gift["type"].as_str(), num(&gift, "days_seen")),
        ("boolean", 1)
    );
    let sku = shape("Product Viewed", "sku");
    assert_eq!(sku["median_daily_volume"], "5");
    assert!(!shapes.iter().any(|r| r["property"].starts_with("context_")
        || r["property"] == "total_text"
        || r["property"] == "event_text"));

    let recent = rows(
        &c,
        "SELECT sum(present) AS n FROM learn_event_shapes('web', since => '2024-03-05') \
         WHERE event = 'Order Completed' AND property = 'order_id'",
    )
    .await;
    assert_eq!(num(&recent[0], "n"), since_day_4);

    let anomalies = rows(
        &c,
        "SELECT event, CAST(day AS text) AS day, property, kind, observed, expected, score, detail \
         FROM event_anomalies('web') ORDER BY day, event, kind, property",
    )
    .await;
    let found: Vec<(String, String, String, String)> = anomalies
        .iter()
        .map(|r| {
            (
                r["event"].clone(),
                r["day"].clone(),
                r["kind"].clone(),
                r["property"].clone(),
            )
        })
        .collect();
    let a = |e: &str, d: &str, k: &str, p: &str| {
        (e.to_string(), d.to_string(), k.to_string(), p.to_string())
    };
    assert_eq!(
        found,
        vec![
            a("Order Completed", "2024-03-10", "volume", "NULL"),
            a(
                "Order Completed",
                "2024-03-13",
                "missing_property",
                "coupon"
            ),
            a("Order Completed", "2024-03-13", "type_change", "total"),
            a(
                "Order Completed",
                "2024-03-14",
                "missing_property",
                "coupon"
            ),
            a(
                "Order Completed",
                "2024-03-14",
                "unseen_property",
                "gift_wrap"
            ),
        ],
        "{anomalies:?}"
    );
    let spike = &anomalies[0];
    assert_eq!(spike["observed"], "40");
    assert_eq!(spike["expected"], "10");
    assert!(spike["score"].parse::<f64>().expect("score") > 3.5);
    assert!(spike["detail"].contains("40"), "{spike:?}");

    // A higher threshold keeps the spike; a window after it leaves it out.
    let n = rows(
        &c,
        "SELECT count(*) AS n FROM event_anomalies('web', threshold => 1000) WHERE kind = 'volume'",
    )
    .await;
    assert_eq!(num(&n[0], "n"), 0);
    let n = rows(
        &c,
        "SELECT count(*) AS n FROM event_anomalies('web', since => timestamp '2024-03-11') WHERE kind = 'volume'",
    )
    .await;
    assert_eq!(num(&n[0], "n"), 0);

    // The output is a table to keep and sync.
    c.batch_execute("CREATE TABLE public.order_anomalies AS SELECT * FROM event_anomalies('web')")
        .await
        .expect("create table as");
    let kept = rows(&c, "SELECT count(*) AS n FROM public.order_anomalies").await;
    assert_eq!(num(&kept[0], "n"), 5);
}
