//! Sync runs that stop early are resumed, not redone: a run that fails half-way and a run
//! cut by kill -9 of the server both leave a journal of what the destination confirmed, and
//! the next run (after a restart, started by the scheduler on its own) sends only the rest.
//! The destination is a local webhook receiver that records every request; assertions are
//! about which keys arrived and how often, never about timing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::Value;

use crate::common::{TestServer, free_port, num, rows, spawn_tally, wait_up};

/// The receiver: the keys of every accepted request, when each answer went out, and its
/// behaviour (accept only so many requests then answer 401; answer slowly).
#[derive(Default)]
struct Receiver {
    /// `(answered at, keys)` per accepted request, in arrival order.
    accepted: Mutex<Vec<(Instant, Vec<i64>)>>,
    /// Requests to accept before answering 401 (when `limited`).
    budget: AtomicUsize,
    limited: AtomicBool,
    slow: AtomicBool,
}

async fn hook(State(r): State<Arc<Receiver>>, body: axum::Json<Value>) -> axum::response::Response {
    if r.limited.load(Ordering::SeqCst) {
        let left = r.budget.load(Ordering::SeqCst);
        if left == 0 {
            return (StatusCode::UNAUTHORIZED, "token revoked").into_response();
        }
        r.budget.store(left - 1, Ordering::SeqCst);
    }
    if r.slow.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let keys: Vec<i64> = body.0["rows"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|row| row["id"].as_i64()).collect())
        .unwrap_or_default();
    r.accepted.lock().push((Instant::now(), keys));
    StatusCode::OK.into_response()
}

async fn start_receiver() -> (std::net::SocketAddr, Arc<Receiver>) {
    let state = Arc::new(Receiver::default());
    let app = axum::Router::new()
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

/// How many times each key arrived in requests `from..`.
fn arrivals(r: &Receiver, from: usize) -> BTreeMap<i64, usize> {
    let mut seen = BTreeMap::new();
    for (_, keys) in r.accepted.lock().iter().skip(from) {
        for k in keys {
            *seen.entry(*k).or_default() += 1;
        }
    }
    seen
}

#[tokio::test]
async fn a_failed_run_is_resumed_without_resending_what_the_destination_accepted() {
    let (addr, receiver) = start_receiver().await;
    receiver.budget.store(10, Ordering::SeqCst);
    receiver.limited.store(true, Ordering::SeqCst);
    let server = TestServer::start().await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE DESTINATION hooks TYPE webhook WITH (url = 'http://{addr}/hook'); \
         CREATE TABLE people (id bigint, name text); \
         INSERT INTO people SELECT CAST(value AS bigint), concat('n', value) FROM generate_series(1, 1000); \
         CREATE SYNC people_out AS COPY (SELECT id, name FROM people) TO DESTINATION hooks \
           WITH (mode = 'upsert', key = 'id', batch_size = 50)"
    ))
    .await
    .expect("setup");

    // Ten requests (500 rows) go through, then the destination refuses the credentials.
    let err = c
        .simple_query("RUN SYNC people_out")
        .await
        .expect_err("the run fails on 401");
    assert!(format!("{err:?}").contains("401"), "{err:?}");
    let first = arrivals(&receiver, 0);
    assert_eq!(first.len(), 500, "ten batches of 50 before the failure");

    // The next run sends only the other 500, each once.
    receiver.limited.store(false, Ordering::SeqCst);
    let before = receiver.accepted.lock().len();
    let r = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&r[0], "delivered"), 500, "{r:?}");
    assert_eq!(num(&r[0], "added"), 500, "{r:?}");
    assert_eq!(num(&r[0], "unchanged"), 500, "{r:?}");
    let second = arrivals(&receiver, before);
    assert!(second.values().all(|n| *n == 1), "no key twice in a run");
    let overlap: Vec<&i64> = second.keys().filter(|k| first.contains_key(k)).collect();
    assert!(overlap.is_empty(), "resent after the failure: {overlap:?}");
    let all: BTreeSet<i64> = first.keys().chain(second.keys()).copied().collect();
    assert_eq!(all, (1..=1000).collect::<BTreeSet<i64>>());

    // The snapshot is whole: a third run sends nothing; a change sends just that row.
    let r = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&r[0], "delivered"), 0, "{r:?}");
    assert_eq!(num(&r[0], "unchanged"), 1000, "{r:?}");
    c.batch_execute("UPDATE people SET name = 'changed' WHERE id = 7")
        .await
        .expect("change");
    let r = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&r[0], "delivered"), 1, "{r:?}");
    assert_eq!(num(&r[0], "changed"), 1, "{r:?}");
    let statuses = rows(
        &c,
        "SELECT status FROM tally.sync_runs WHERE sync = 'people_out' ORDER BY started_at",
    )
    .await;
    let statuses: Vec<&str> = statuses.iter().map(|r| r["status"].as_str()).collect();
    assert_eq!(
        statuses,
        ["failed", "succeeded", "succeeded", "succeeded"],
        "{statuses:?}"
    );
}

#[tokio::test]
async fn kill_9_mid_run_resumes_after_restart_without_resending_confirmed_rows() {
    const ROWS: i64 = 30_000;
    let (addr, receiver) = start_receiver().await;
    receiver.slow.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("tempdir");
    let (pg, http) = (free_port(), free_port());
    let mut child = spawn_tally(dir.path(), pg, http).await;
    let c = wait_up(pg, http).await;
    c.batch_execute(&format!(
        "CREATE DESTINATION hooks TYPE webhook WITH (url = 'http://{addr}/hook'); \
         CREATE TABLE people (id bigint, name text); \
         INSERT INTO people SELECT CAST(value AS bigint), concat('n', value) FROM generate_series(1, {ROWS}); \
         CREATE SYNC people_out AS COPY (SELECT id, name FROM people) TO DESTINATION hooks \
           WITH (mode = 'upsert', key = 'id', batch_size = 100)"
    ))
    .await
    .expect("setup");
    let run = tokio::spawn(async move { c.simple_query("RUN SYNC people_out").await.is_ok() });

    // Let 40 requests through, note what was confirmed by then, give the journal well over
    // its flush interval, then kill -9 in the middle of the run.
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.accepted.lock().len() < 40 {
        assert!(Instant::now() < deadline, "the run did not start sending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let confirmed_early = arrivals(&receiver, 0);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    child.start_kill().expect("kill -9");
    let _ = child.wait().await;
    assert!(
        !run.await.expect("client task"),
        "the run finished before the kill; the test needs it cut short"
    );
    let before_restart = receiver.accepted.lock().len();
    assert!(
        (before_restart as i64) < ROWS / 100,
        "the run was cut short"
    );
    receiver.slow.store(false, Ordering::SeqCst);

    // After restart the scheduler resumes the run on its own (the sync has no schedule).
    let mut child = spawn_tally(dir.path(), pg, http).await;
    let c = wait_up(pg, http).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = rows(
            &c,
            "SELECT last_status FROM tally.syncs WHERE name = 'people_out'",
        )
        .await;
        if s[0]["last_status"] == "succeeded" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the interrupted run was not resumed: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let after = arrivals(&receiver, before_restart);
    let resent: Vec<&i64> = after
        .keys()
        .filter(|k| confirmed_early.contains_key(k))
        .collect();
    assert!(
        resent.is_empty(),
        "{} rows confirmed seconds before the kill were sent again",
        resent.len()
    );
    let all: BTreeSet<i64> = arrivals(&receiver, 0).keys().copied().collect();
    assert_eq!(all.len() as i64, ROWS, "every row arrived");
    let runs = rows(
        &c,
        "SELECT status, trigger FROM tally.sync_runs WHERE sync = 'people_out' ORDER BY started_at",
    )
    .await;
    let runs: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| (r["status"].as_str(), r["trigger"].as_str()))
        .collect();
    assert_eq!(
        runs,
        [("interrupted", "manual"), ("succeeded", "resume")],
        "{runs:?}"
    );
    // The resumed run left a whole snapshot.
    let r = rows(&c, "RUN SYNC people_out").await;
    assert_eq!(num(&r[0], "delivered"), 0, "{r:?}");
    assert_eq!(num(&r[0], "unchanged"), ROWS, "{r:?}");
    child.start_kill().expect("kill");
    let _ = child.wait().await;
}
