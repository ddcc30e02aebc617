//! Syncs over the real wire: the streamed diff (added, changed, unchanged and removed rows
//! across many record batches) and mirror syncs, which remove at the destination the rows
//! that left the query, against the real PostgreSQL (127.0.0.1:5432, database `test`) and
//! Redis (127.0.0.1:6379) of this machine, and a local HTTP server that keeps HubSpot's,
//! Braze's and the webhook contract for removals. Assertions are about behaviour, never
//! timing.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::common::{TestServer, code, local_postgres, num, rows, unique};

async fn pg_count(pg: &Client, sql: &str) -> i64 {
    pg.query_one(sql, &[]).await.expect(sql).get(0)
}

/// A PostgreSQL table for a test and a tally destination writing into it.
async fn pg_target(c: &Client, pg: &Client, destination: &str) -> String {
    let table = unique("tally_sync");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, name text NOT NULL)"
    ))
    .await
    .expect("target table");
    c.batch_execute(&format!(
        "CREATE DESTINATION {destination} TYPE postgres WITH (host = '127.0.0.1', user = 'postgres', dbname = 'test', table = '{table}')"
    ))
    .await
    .expect("destination");
    table
}

#[tokio::test]
async fn a_mirror_sync_to_postgres_removes_rows_that_left_the_query_from_its_second_run() {
    let pg = local_postgres().await;
    let server = TestServer::start().await;
    let c = server.client().await;
    let table = pg_target(&c, &pg, "app_db").await;
    // A record the destination held before the sync existed.
    pg.batch_execute(&format!("INSERT INTO {table} VALUES (1000, 'from before')"))
        .await
        .expect("seed");
    c.batch_execute(
        "CREATE TABLE people (id bigint, name text); \
         INSERT INTO people SELECT CAST(value AS bigint), concat('n', value) FROM generate_series(1, 50)",
    )
    .await
    .expect("source");
    c.batch_execute(
        "CREATE SYNC people_out AS COPY (SELECT id, name FROM people) TO DESTINATION app_db \
         WITH (mode = 'mirror', key = 'id', batch_size = 7)",
    )
    .await
    .expect("create mirror sync");

    let first = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&first[0], "added"), 50, "{first:?}");
    assert_eq!(num(&first[0], "removed"), 0, "{first:?}");
    assert_eq!(
        pg_count(&pg, &format!("SELECT count(*) FROM {table}")).await,
        51,
        "the first run has no snapshot and removes nothing"
    );

    c.batch_execute(
        "DELETE FROM people WHERE id > 40; \
         UPDATE people SET name = 'five' WHERE id = 5; \
         INSERT INTO people VALUES (51, 'n51')",
    )
    .await
    .expect("change");
    let second = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&second[0], "added"), 1, "{second:?}");
    assert_eq!(num(&second[0], "changed"), 1, "{second:?}");
    assert_eq!(num(&second[0], "unchanged"), 39, "{second:?}");
    assert_eq!(num(&second[0], "left_query"), 10, "{second:?}");
    assert_eq!(num(&second[0], "removed"), 10, "{second:?}");
    assert_eq!(num(&second[0], "delivered"), 2, "{second:?}");
    let ids: Vec<i64> = pg
        .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut want: Vec<i64> = (1..=40).collect();
    want.extend([51, 1000]);
    assert_eq!(ids, want);
    let name: String = pg
        .query_one(&format!("SELECT name FROM {table} WHERE id = 5"), &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(name, "five");

    // Nothing changed: nothing sent, nothing removed.
    let third = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&third[0], "unchanged"), 41, "{third:?}");
    assert_eq!(num(&third[0], "delivered"), 0, "{third:?}");
    assert_eq!(num(&third[0], "removed"), 0, "{third:?}");

    let runs = rows(
        &c,
        "SELECT rows_removed, rows_added, rows_changed FROM tally.sync_runs \
         WHERE sync = 'people_out' ORDER BY started_at",
    )
    .await;
    let removed: Vec<&str> = runs.iter().map(|r| r["rows_removed"].as_str()).collect();
    assert_eq!(removed, vec!["0", "10", "0"], "{runs:?}");
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .expect("drop");
}

#[tokio::test]
async fn a_refused_removal_stays_in_the_snapshot_and_is_tried_again_next_run() {
    let pg = local_postgres().await;
    let server = TestServer::start().await;
    let c = server.client().await;
    let table = pg_target(&c, &pg, "app_db").await;
    let child = unique("tally_sync_child");
    pg.batch_execute(&format!(
        "CREATE TABLE {child} (parent bigint REFERENCES {table} (id))"
    ))
    .await
    .expect("child table");
    c.batch_execute(
        "CREATE TABLE people (id bigint, name text); \
         INSERT INTO people SELECT CAST(value AS bigint), concat('n', value) FROM generate_series(1, 10)",
    )
    .await
    .expect("source");
    c.batch_execute(
        "CREATE SYNC people_out AS COPY (SELECT id, name FROM people) TO DESTINATION app_db \
         WITH (mode = 'mirror', key = 'id')",
    )
    .await
    .expect("create mirror sync");
    rows(&c, "RUN SYNC people_out").await;
    // Row 3 is referenced at the destination: deleting it violates a foreign key.
    pg.batch_execute(&format!("INSERT INTO {child} VALUES (3)"))
        .await
        .expect("child row");
    c.batch_execute("DELETE FROM people WHERE id IN (3, 4)")
        .await
        .expect("change");
    let second = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&second[0], "left_query"), 2, "{second:?}");
    assert_eq!(num(&second[0], "removed"), 1, "{second:?}");
    assert_eq!(num(&second[0], "rejected"), 1, "{second:?}");
    assert_eq!(
        pg_count(
            &pg,
            &format!("SELECT count(*) FROM {table} WHERE id IN (3, 4)")
        )
        .await,
        1
    );
    let refused = rows(
        &c,
        "SELECT row_key, response FROM tally.rejected_rows WHERE destination = 'app_db'",
    )
    .await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["row_key"], "3");
    assert!(refused[0]["response"].contains("23503"), "{refused:?}");
    let run = rows(
        &c,
        "SELECT status, rows_failed, rows_removed FROM tally.sync_runs \
         WHERE sync = 'people_out' ORDER BY started_at DESC LIMIT 1",
    )
    .await;
    assert_eq!(run[0]["status"], "succeeded");
    assert_eq!(run[0]["rows_failed"], "1");

    // While the reference stays, every run tries again (and is refused again).
    let third = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&third[0], "left_query"), 1, "{third:?}");
    assert_eq!(num(&third[0], "removed"), 0, "{third:?}");
    // Once it is gone, the next run removes the row.
    pg.batch_execute(&format!("DELETE FROM {child}"))
        .await
        .expect("unblock");
    let fourth = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&fourth[0], "removed"), 1, "{fourth:?}");
    assert_eq!(num(&fourth[0], "rejected"), 0, "{fourth:?}");
    assert_eq!(
        pg_count(&pg, &format!("SELECT count(*) FROM {table}")).await,
        8
    );
    let fifth = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&fifth[0], "left_query"), 0, "{fifth:?}");
    pg.batch_execute(&format!("DROP TABLE {child}; DROP TABLE {table}"))
        .await
        .expect("drop");
}

#[tokio::test]
async fn a_mirror_sync_to_redis_deletes_the_hashes_of_keys_that_left_the_query() {
    let prefix = unique("tally_sync");
    let server = TestServer::start().await;
    let c = server.client().await;
    let client = redis::Client::open("redis://127.0.0.1:6379/0").expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("local Redis on 127.0.0.1:6379");
    // A hash written before the sync existed.
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:999"))
        .arg("score")
        .arg("1")
        .query_async(&mut conn)
        .await
        .expect("hset");
    c.batch_execute(&format!(
        "CREATE DESTINATION features TYPE redis WITH (url = 'redis://127.0.0.1:6379/0', prefix = '{prefix}'); \
         CREATE TABLE scores (user_id bigint, score bigint); \
         INSERT INTO scores SELECT CAST(value AS bigint), CAST(value * 2 AS bigint) FROM generate_series(1, 30)"
    ))
    .await
    .expect("setup");
    c.batch_execute(
        "CREATE SYNC features_out AS COPY (SELECT user_id, score FROM scores) \
         TO DESTINATION features WITH (mode = 'mirror', key = 'user_id', batch_size = 4)",
    )
    .await
    .expect("create mirror sync");
    let first = rows(&c, "RUN SYNC features_out").await;
    assert_eq!(num(&first[0], "delivered"), 30, "{first:?}");
    assert_eq!(num(&first[0], "removed"), 0, "{first:?}");
    let exists = |k: String| {
        let mut conn = conn.clone();
        async move {
            let n: i64 = redis::cmd("EXISTS")
                .arg(k)
                .query_async(&mut conn)
                .await
                .expect("exists");
            n
        }
    };
    assert_eq!(exists(format!("{prefix}:999")).await, 1);

    c.batch_execute(
        "DELETE FROM scores WHERE user_id > 20; UPDATE scores SET score = 0 WHERE user_id = 1",
    )
    .await
    .expect("change");
    let second = rows(&c, "RUN SYNC features_out").await;
    assert_eq!(num(&second[0], "removed"), 10, "{second:?}");
    assert_eq!(num(&second[0], "changed"), 1, "{second:?}");
    assert_eq!(num(&second[0], "delivered"), 1, "{second:?}");
    for k in 21..=30 {
        assert_eq!(exists(format!("{prefix}:{k}")).await, 0, "hash {k}");
    }
    assert_eq!(exists(format!("{prefix}:20")).await, 1);
    assert_eq!(
        exists(format!("{prefix}:999")).await,
        1,
        "never synced, never removed"
    );
    let score: String = redis::cmd("HGET")
        .arg(format!("{prefix}:1"))
        .arg("score")
        .query_async(&mut conn)
        .await
        .expect("hget");
    assert_eq!(score, "0");

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
async fn a_mirror_sync_is_refused_for_a_type_that_cannot_remove_records() {
    let server = TestServer::start().await;
    let c = server.client().await;
    c.batch_execute(
        "CREATE DESTINATION analytics TYPE mixpanel WITH (token = 't'); \
         CREATE DESTINATION bus TYPE nats WITH (url = 'nats://127.0.0.1:4222', subject = 's'); \
         CREATE TABLE users (id bigint, email text)",
    )
    .await
    .expect("setup");
    for d in ["analytics", "bus"] {
        let err = c
            .batch_execute(&format!(
                "CREATE SYNC s_{d} AS COPY (SELECT id, email FROM users) TO DESTINATION {d} \
                 WITH (mode = 'mirror', key = 'id')"
            ))
            .await
            .expect_err("mirror needs removes");
        assert_eq!(code(&err), "0A000", "{err:?}");
        assert!(
            format!("{err:?}").contains("cannot remove records"),
            "{err:?}"
        );
    }
    // The same sync in upsert mode is fine.
    c.batch_execute(
        "CREATE SYNC s_ok AS COPY (SELECT id, email FROM users) TO DESTINATION analytics \
         WITH (mode = 'upsert', key = 'id')",
    )
    .await
    .expect("upsert sync");
    let none = rows(&c, "SELECT name FROM tally.syncs").await;
    assert_eq!(none.len(), 1, "{none:?}");
}

#[tokio::test]
async fn the_diff_streams_added_changed_removed_and_unchanged_rows_across_batches() {
    let pg = local_postgres().await;
    let server = TestServer::start().await;
    let c = server.client().await;
    let table = pg_target(&c, &pg, "app_db").await;
    c.batch_execute(
        "CREATE TABLE people (id bigint, name text); \
         INSERT INTO people SELECT CAST(value AS bigint), concat('n', value) FROM generate_series(1, 20000)",
    )
    .await
    .expect("source");
    c.batch_execute(
        "CREATE SYNC people_out AS COPY (SELECT id, name FROM people) TO DESTINATION app_db \
         WITH (mode = 'mirror', key = 'id', batch_size = 1000)",
    )
    .await
    .expect("create");
    let first = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&first[0], "added"), 20_000, "{first:?}");
    assert_eq!(num(&first[0], "delivered"), 20_000, "{first:?}");

    // 500 changed, 1,000 removed, 700 added, 18,500 unchanged.
    c.batch_execute(
        "UPDATE people SET name = concat(name, '-v2') WHERE id % 37 = 0 AND id <= 18500; \
         DELETE FROM people WHERE id > 19000; \
         INSERT INTO people SELECT CAST(value AS bigint), concat('n', value) FROM generate_series(20001, 20700)",
    )
    .await
    .expect("change");
    let changed = rows(
        &c,
        "SELECT count(*) AS n FROM people WHERE name LIKE '%-v2'",
    )
    .await;
    let n_changed = num(&changed[0], "n");
    let second = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&second[0], "added"), 700, "{second:?}");
    assert_eq!(num(&second[0], "changed"), n_changed, "{second:?}");
    assert_eq!(
        num(&second[0], "unchanged"),
        19_000 - n_changed,
        "{second:?}"
    );
    assert_eq!(num(&second[0], "left_query"), 1_000, "{second:?}");
    assert_eq!(num(&second[0], "removed"), 1_000, "{second:?}");
    assert_eq!(num(&second[0], "delivered"), 700 + n_changed, "{second:?}");

    // The destination now equals the query.
    let dest: BTreeSet<(i64, String)> = pg
        .query(&format!("SELECT id, name FROM {table}"), &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let src: BTreeSet<(i64, String)> = rows(&c, "SELECT id, name FROM people")
        .await
        .iter()
        .map(|r| (num(r, "id"), r["name"].clone()))
        .collect();
    assert_eq!(dest.len(), 19_700);
    assert!(dest == src, "the destination differs from the query");

    let third = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&third[0], "unchanged"), 19_700, "{third:?}");
    assert_eq!(num(&third[0], "added"), 0, "{third:?}");
    assert_eq!(num(&third[0], "changed"), 0, "{third:?}");
    assert_eq!(num(&third[0], "left_query"), 0, "{third:?}");
    pg.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .expect("drop");
}

/// A record batch of the diff with nothing to send must not hold back the rows sent after
/// it: here the first record batches (8,192 rows each) are unchanged and only the last rows
/// change, and the new snapshot must still hold them, so the next run sends nothing.
#[tokio::test]
async fn rows_sent_after_an_unchanged_record_batch_reach_the_snapshot() {
    let pg = local_postgres().await;
    let server = TestServer::start().await;
    let c = server.client().await;
    let table = pg_target(&c, &pg, "app_db").await;
    c.batch_execute(
        "CREATE TABLE people (id bigint, name text); \
         INSERT INTO people SELECT CAST(value AS bigint), concat('n', value) FROM generate_series(1, 20000); \
         CREATE SYNC people_out AS COPY (SELECT id, name FROM people ORDER BY id) TO DESTINATION app_db \
           WITH (mode = 'upsert', key = 'id', batch_size = 500)",
    )
    .await
    .expect("setup");
    let first = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&first[0], "delivered"), 20000, "{first:?}");
    c.batch_execute("UPDATE people SET name = 'late' WHERE id > 19000")
        .await
        .expect("change");
    let second = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&second[0], "changed"), 1000, "{second:?}");
    assert_eq!(num(&second[0], "delivered"), 1000, "{second:?}");
    let third = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&third[0], "delivered"), 0, "{third:?}");
    assert_eq!(num(&third[0], "unchanged"), 20000, "{third:?}");
    assert_eq!(
        pg_count(
            &pg,
            &format!("SELECT count(*) FROM {table} WHERE name = 'late'")
        )
        .await,
        1000
    );
}

// ------------------------------------------------------------------ SaaS removals

/// What the mock saw: every request's path and body, and the records it holds.
#[derive(Default)]
struct Mock {
    requests: Vec<(String, Value)>,
    /// HubSpot contacts by email, with their internal ids.
    contacts: HashMap<String, String>,
    /// Braze users and webhook records by key.
    users: BTreeSet<String>,
    records: BTreeSet<String>,
}

type Shared = Arc<Mutex<Mock>>;

fn bad(msg: &str) -> axum::response::Response {
    (StatusCode::BAD_REQUEST, msg.to_string()).into_response()
}

fn authorized(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer t")
}

async fn hubspot_upsert(
    State(s): State<Shared>,
    h: HeaderMap,
    body: axum::Json<Value>,
) -> axum::response::Response {
    if !authorized(&h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut m = s.lock();
    m.requests.push(("upsert".into(), body.0.clone()));
    let Some(inputs) = body.0["inputs"].as_array() else {
        return bad("inputs");
    };
    if inputs.len() > 100 {
        return bad("too many inputs");
    }
    for i in inputs {
        let email = i["id"].as_str().unwrap_or_default().to_string();
        let next = format!("{}", 500 + m.contacts.len());
        m.contacts.entry(email).or_insert(next);
    }
    (
        StatusCode::OK,
        axum::Json(json!({"status": "COMPLETE", "results": []})),
    )
        .into_response()
}

async fn hubspot_read(
    State(s): State<Shared>,
    h: HeaderMap,
    body: axum::Json<Value>,
) -> axum::response::Response {
    if !authorized(&h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut m = s.lock();
    m.requests.push(("read".into(), body.0.clone()));
    if body.0["idProperty"] != "email" {
        return bad("idProperty");
    }
    let inputs = body.0["inputs"].as_array().cloned().unwrap_or_default();
    if inputs.is_empty() || inputs.len() > 100 {
        return bad("inputs");
    }
    let mut results = vec![];
    let mut errors = vec![];
    for i in inputs {
        let email = i["id"].as_str().unwrap_or_default();
        match m.contacts.get(email) {
            Some(id) => results.push(json!({"id": id, "properties": {"email": email}})),
            None => errors.push(json!({"status": "error", "category": "OBJECT_NOT_FOUND", "message": "not found", "context": {"ids": [email]}})),
        }
    }
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    (
        status,
        axum::Json(json!({"status": "COMPLETE", "results": results, "errors": errors})),
    )
        .into_response()
}

async fn hubspot_archive(
    State(s): State<Shared>,
    h: HeaderMap,
    body: axum::Json<Value>,
) -> axum::response::Response {
    if !authorized(&h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut m = s.lock();
    m.requests.push(("archive".into(), body.0.clone()));
    let inputs = body.0["inputs"].as_array().cloned().unwrap_or_default();
    if inputs.is_empty() || inputs.len() > 100 {
        return bad("inputs");
    }
    for i in inputs {
        let Some(id) = i["id"].as_str() else {
            return bad("ids are strings");
        };
        m.contacts.retain(|_, v| v != id);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn braze_track(
    State(s): State<Shared>,
    h: HeaderMap,
    body: axum::Json<Value>,
) -> axum::response::Response {
    if !authorized(&h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut m = s.lock();
    let attrs = body.0["attributes"].as_array().cloned().unwrap_or_default();
    if attrs.len() > 75 {
        return bad("too many attributes");
    }
    for a in attrs {
        m.users
            .insert(a["external_id"].as_str().unwrap_or_default().to_string());
    }
    (
        StatusCode::CREATED,
        axum::Json(json!({"message": "success"})),
    )
        .into_response()
}

async fn braze_delete(
    State(s): State<Shared>,
    h: HeaderMap,
    body: axum::Json<Value>,
) -> axum::response::Response {
    if !authorized(&h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut m = s.lock();
    m.requests.push(("users/delete".into(), body.0.clone()));
    let Some(ids) = body.0["external_ids"].as_array() else {
        return bad("external_ids");
    };
    if ids.is_empty() || ids.len() > 50 {
        return bad("1 to 50 external_ids");
    }
    let mut deleted = 0;
    for id in ids {
        if m.users.remove(id.as_str().unwrap_or_default()) {
            deleted += 1;
        }
    }
    (
        StatusCode::CREATED,
        axum::Json(json!({"deleted": deleted, "message": "success"})),
    )
        .into_response()
}

async fn hook(
    State(s): State<Shared>,
    h: HeaderMap,
    body: axum::Json<Value>,
) -> axum::response::Response {
    if !authorized(&h) || h.get("idempotency-key").is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut m = s.lock();
    m.requests.push(("hook".into(), body.0.clone()));
    match body.0["op"].as_str() {
        Some("delete") => {
            if body.0["key"] != "id" {
                return bad("key");
            }
            for k in body.0["keys"].as_array().cloned().unwrap_or_default() {
                m.records.remove(k.as_str().unwrap_or_default());
            }
        }
        None => {
            for r in body.0["rows"].as_array().cloned().unwrap_or_default() {
                m.records.insert(r["id"].to_string());
            }
        }
        Some(_) => return bad("op"),
    }
    StatusCode::OK.into_response()
}

async fn start_saas_mock() -> (std::net::SocketAddr, Shared) {
    let state: Shared = Arc::default();
    let app = axum::Router::new()
        .route(
            "/crm/v3/objects/contacts/batch/upsert",
            post(hubspot_upsert),
        )
        .route("/crm/v3/objects/contacts/batch/read", post(hubspot_read))
        .route(
            "/crm/v3/objects/contacts/batch/archive",
            post(hubspot_archive),
        )
        .route("/users/track", post(braze_track))
        .route("/users/delete", post(braze_delete))
        .route("/hook", post(hook))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, state)
}

#[tokio::test]
async fn mirror_syncs_remove_through_hubspot_braze_and_webhook_contracts() {
    let (addr, mock) = start_saas_mock().await;
    let server = TestServer::start().await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE DESTINATION crm TYPE hubspot WITH (token = 't', base_url = 'http://{addr}'); \
         CREATE DESTINATION engage TYPE braze WITH (api_key = 't', base_url = 'http://{addr}'); \
         CREATE DESTINATION hooks TYPE webhook WITH (url = 'http://{addr}/hook', headers = '{{\"Authorization\": \"Bearer t\"}}'); \
         CREATE TABLE users (id bigint, email text); \
         INSERT INTO users SELECT CAST(value AS bigint), concat('u', value, '@x.io') FROM generate_series(1, 120)"
    ))
    .await
    .expect("setup");
    c.batch_execute(
        "CREATE SYNC to_crm AS COPY (SELECT email, id FROM users) TO DESTINATION crm WITH (mode = 'mirror', key = 'email'); \
         CREATE SYNC to_braze AS COPY (SELECT CAST(id AS text) AS uid, email FROM users) TO DESTINATION engage WITH (mode = 'mirror', key = 'uid'); \
         CREATE SYNC to_hook AS COPY (SELECT id, email FROM users) TO DESTINATION hooks WITH (mode = 'mirror', key = 'id', batch_size = 500)",
    )
    .await
    .expect("syncs");
    for s in ["to_crm", "to_braze", "to_hook"] {
        let r = rows(&c, &format!("RUN SYNC {s}")).await;
        assert_eq!(num(&r[0], "delivered"), 120, "{s}: {r:?}");
    }
    {
        let m = mock.lock();
        assert_eq!(m.contacts.len(), 120);
        assert_eq!(m.users.len(), 120);
        assert_eq!(m.records.len(), 120);
    }
    c.batch_execute("DELETE FROM users WHERE id > 10")
        .await
        .expect("change");
    for s in ["to_crm", "to_braze", "to_hook"] {
        let r = rows(&c, &format!("RUN SYNC {s}")).await;
        assert_eq!(num(&r[0], "removed"), 110, "{s}: {r:?}");
        assert_eq!(num(&r[0], "rejected"), 0, "{s}: {r:?}");
    }
    let m = mock.lock();
    let left: BTreeSet<String> = m.contacts.keys().cloned().collect();
    let want: BTreeSet<String> = (1..=10).map(|i| format!("u{i}@x.io")).collect();
    assert_eq!(left, want);
    assert_eq!(m.users.len(), 10);
    assert_eq!(m.records.len(), 10);
    // HubSpot: ids read by email, then archived, at most 100 per call.
    let reads = m.requests.iter().filter(|(p, _)| p == "read").count();
    let archives = m.requests.iter().filter(|(p, _)| p == "archive").count();
    assert_eq!((reads, archives), (2, 2));
    // Braze: at most 50 ids per delete.
    let deletes: Vec<usize> = m
        .requests
        .iter()
        .filter(|(p, _)| p == "users/delete")
        .map(|(_, b)| b["external_ids"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(deletes.iter().sum::<usize>(), 110);
    assert!(deletes.iter().all(|n| *n <= 50), "{deletes:?}");
    // Webhook: one delete body with the keys as text.
    let hook_deletes: Vec<&Value> = m
        .requests
        .iter()
        .filter(|(p, b)| p == "hook" && b["op"] == "delete")
        .map(|(_, b)| b)
        .collect();
    assert_eq!(hook_deletes.len(), 1);
    assert_eq!(hook_deletes[0]["keys"].as_array().map(Vec::len), Some(110));
    assert!(hook_deletes[0]["keys"][0].is_string());
}
