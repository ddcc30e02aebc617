//! The sync scheduler of `tally serve`: syncs with `EVERY`/`SCHEDULE` deliver without `RUN
//! SYNC`, PAUSE/RESUME hold and release them, runs of one sync never overlap even against a
//! slow destination, bad schedules are refused with 22023, and schedules survive a restart.
//! Waits poll with generous deadlines; nothing asserts on timing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio_postgres::Client;

use crate::common::{TestServer, code, rows};

/// A webhook receiver that counts requests and the most it ever had in flight at once.
#[derive(Default)]
struct Receiver {
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    delay_ms: AtomicU64,
}

async fn receive(
    req: Request<Incoming>,
    r: Arc<Receiver>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let now = r.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    r.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _ = req.into_body().collect().await;
    let delay = r.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    r.requests.fetch_add(1, Ordering::SeqCst);
    r.in_flight.fetch_sub(1, Ordering::SeqCst);
    Ok(Response::new(Full::new(Bytes::from_static(b"{}"))))
}

async fn start_receiver(delay_ms: u64) -> (SocketAddr, Arc<Receiver>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state = Arc::new(Receiver::default());
    state.delay_ms.store(delay_ms, Ordering::SeqCst);
    let st = state.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let st = st.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| receive(req, st.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, state)
}

/// Scheduled runs of `sync` recorded in tally.sync_runs.
async fn scheduled_runs(c: &Client, sync: &str) -> usize {
    rows(
        c,
        &format!(
            "SELECT run_id FROM tally.sync_runs WHERE sync = '{sync}' AND trigger = 'schedule'"
        ),
    )
    .await
    .len()
}

/// Polls until `scheduled_runs` reaches `at_least`, or panics after a generous deadline.
async fn wait_for_runs(c: &Client, sync: &str, at_least: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = scheduled_runs(c, sync).await;
        if n >= at_least {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {n} scheduled runs of {sync}, wanted {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn setup(c: &Client, addr: SocketAddr) {
    c.batch_execute(&format!(
        "CREATE DESTINATION hooks TYPE webhook WITH (url = 'http://{addr}/hook', batch_size = 1); \
         CREATE TABLE users (id bigint, email text); \
         INSERT INTO users VALUES (1, 'a@x.io'), (2, 'b@x.io')"
    ))
    .await
    .expect("setup");
}

#[tokio::test]
async fn an_every_sync_delivers_on_its_own_and_pause_resume_hold_it() {
    let server = TestServer::start().await;
    let c = server.client().await;
    let (addr, recv) = start_receiver(0).await;
    setup(&c, addr).await;
    c.batch_execute(
        "CREATE SYNC users_out EVERY '1 second' AS COPY (SELECT id, email FROM users) \
         TO DESTINATION hooks WITH (mode = 'upsert', key = 'id')",
    )
    .await
    .expect("create scheduled sync");
    let s = rows(&c, "SELECT schedule, paused, next_run_at FROM tally.syncs").await;
    assert_eq!(s[0]["schedule"], "EVERY '1 second'", "{s:?}");
    assert_eq!(s[0]["paused"], "f", "{s:?}");
    assert_ne!(s[0]["next_run_at"], "NULL", "{s:?}");

    // Delivered without RUN SYNC: both rows on the first scheduled run.
    wait_for_runs(&c, "users_out", 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while recv.requests.load(Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "rows not delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A later change goes out on a later tick, still without RUN SYNC.
    c.batch_execute("INSERT INTO users VALUES (3, 'c@x.io')")
        .await
        .expect("insert");
    while recv.requests.load(Ordering::SeqCst) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new row not delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = rows(&c, "SELECT last_scheduled_at, runs FROM tally.syncs").await;
    assert_ne!(s[0]["last_scheduled_at"], "NULL", "{s:?}");

    // PAUSE: once a run that may have been in progress is over, no more runs.
    c.batch_execute("ALTER SYNC users_out PAUSE")
        .await
        .expect("pause");
    let s = rows(&c, "SELECT paused, next_run_at FROM tally.syncs").await;
    assert_eq!(s[0]["paused"], "t", "{s:?}");
    assert_eq!(s[0]["next_run_at"], "NULL", "{s:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let paused_at = scheduled_runs(&c, "users_out").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        scheduled_runs(&c, "users_out").await,
        paused_at,
        "a paused sync ran"
    );
    // RUN SYNC still works on a paused sync and is recorded as manual.
    c.simple_query("RUN SYNC users_out").await.expect("run");
    let manual = rows(
        &c,
        "SELECT trigger FROM tally.sync_runs WHERE sync = 'users_out' AND trigger = 'manual'",
    )
    .await;
    assert_eq!(manual.len(), 1, "{manual:?}");

    // RESUME: runs again.
    c.batch_execute("ALTER SYNC users_out RESUME")
        .await
        .expect("resume");
    wait_for_runs(&c, "users_out", paused_at + 2).await;

    // DROP SCHEDULE: back to RUN SYNC only.
    c.batch_execute("ALTER SYNC users_out DROP SCHEDULE")
        .await
        .expect("drop schedule");
    let s = rows(&c, "SELECT schedule, next_run_at FROM tally.syncs").await;
    assert_eq!(s[0]["schedule"], "NULL", "{s:?}");
    assert_eq!(s[0]["next_run_at"], "NULL", "{s:?}");
    c.batch_execute("ALTER SYNC users_out SET SCHEDULE '*/5 * * * *'")
        .await
        .expect("set cron");
    let s = rows(&c, "SELECT schedule FROM tally.syncs").await;
    assert_eq!(s[0]["schedule"], "SCHEDULE '*/5 * * * *'", "{s:?}");
}

#[tokio::test]
async fn a_slow_destination_never_gets_overlapping_runs() {
    let server = TestServer::start().await;
    let c = server.client().await;
    // Each request takes 700 ms and each run sends one request per row (batch_size = 1),
    // so a run lasts well over the 1-second interval.
    let (addr, recv) = start_receiver(700).await;
    setup(&c, addr).await;
    c.batch_execute(
        "CREATE SYNC slow EVERY '1 second' AS COPY (SELECT id, email, now() AS at FROM users) \
         TO DESTINATION hooks WITH (mode = 'upsert', key = 'id')",
    )
    .await
    .expect("create");
    // A RUN SYNC alongside the scheduler waits for the scheduled run instead of overlapping.
    wait_for_runs(&c, "slow", 1).await;
    c.simple_query("RUN SYNC slow").await.expect("manual run");
    wait_for_runs(&c, "slow", 3).await;
    c.batch_execute("ALTER SYNC slow PAUSE")
        .await
        .expect("pause");
    assert_eq!(
        recv.max_in_flight.load(Ordering::SeqCst),
        1,
        "two runs of one sync overlapped"
    );
    let runs = rows(
        &c,
        "SELECT started_at, finished_at FROM tally.sync_runs WHERE sync = 'slow' ORDER BY started_at",
    )
    .await;
    for w in runs.windows(2) {
        assert!(
            w[1]["started_at"] >= w[0]["finished_at"],
            "runs overlap: {runs:?}"
        );
    }
}

#[tokio::test]
async fn bad_schedules_are_refused_and_schedules_survive_a_restart() {
    let mut server = TestServer::start().await;
    let c = server.client().await;
    let (addr, _recv) = start_receiver(0).await;
    setup(&c, addr).await;
    let copy = "AS COPY (SELECT id, email FROM users) TO DESTINATION hooks WITH (key = 'id')";
    for bad in [
        format!("CREATE SYNC s SCHEDULE 'every tuesday' {copy}"),
        format!("CREATE SYNC s SCHEDULE '61 * * * *' {copy}"),
        format!("CREATE SYNC s EVERY 'soon' {copy}"),
        format!("CREATE SYNC s EVERY '10 ms' {copy}"),
    ] {
        let err = c.batch_execute(&bad).await.expect_err(&bad);
        assert_eq!(code(&err), "22023", "{bad}: {err}");
    }
    let err = c
        .batch_execute(&format!("CREATE SYNC s SCHEDULE 'every tuesday' {copy}"))
        .await
        .expect_err("bad cron");
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("cron")),
        "{err:?}"
    );
    c.batch_execute(&format!("CREATE SYNC s SCHEDULE '0 3 * * *' {copy}"))
        .await
        .expect("create");
    let err = c
        .batch_execute("ALTER SYNC s SET SCHEDULE '* * *'")
        .await
        .expect_err("bad alter");
    assert_eq!(code(&err), "22023");
    let err = c
        .batch_execute("ALTER SYNC nope PAUSE")
        .await
        .expect_err("unknown sync");
    assert_eq!(code(&err), "42704");
    c.batch_execute(&format!("CREATE SYNC fast EVERY '1 second' {copy}"))
        .await
        .expect("create fast");
    c.batch_execute("ALTER SYNC s PAUSE").await.expect("pause");
    let before = rows(
        &c,
        "SELECT name, schedule, paused, next_run_at FROM tally.syncs ORDER BY name",
    )
    .await;
    drop(c);

    server.restart().await;
    let c = server.client().await;
    let after = rows(
        &c,
        "SELECT name, schedule, paused FROM tally.syncs ORDER BY name",
    )
    .await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0]["name"], "fast");
    assert_eq!(after[0]["schedule"], "EVERY '1 second'");
    assert_eq!(after[1]["schedule"], "SCHEDULE '0 3 * * *'");
    assert_eq!(after[1]["paused"], "t");
    assert_eq!(before[1]["paused"], "t");
    // The restarted server's scheduler picks the schedule up.
    let n = scheduled_runs(&c, "fast").await;
    wait_for_runs(&c, "fast", n + 1).await;
    assert_eq!(scheduled_runs(&c, "s").await, 0);
}

#[tokio::test]
async fn a_sync_runs_table_from_before_schedules_gains_the_trigger_column() {
    let server = TestServer::start().await;
    let engine = server.server.as_ref().expect("running").engine.clone();
    let wh = engine.warehouse();
    // tally.sync_runs as written before the trigger column existed.
    let full = tally::activate::runs::schema();
    let old = datafusion::arrow::datatypes::Schema::new(
        full.fields()
            .iter()
            .filter(|f| f.name() != "trigger")
            .cloned()
            .collect::<Vec<_>>(),
    );
    tally::storage::delta::create_table(
        &wh.url_of(tally::activate::runs::LOCATION).expect("url"),
        &wh.options,
        "sync_runs",
        &old,
    )
    .await
    .expect("old table");
    let c = server.client().await;
    let (addr, recv) = start_receiver(0).await;
    setup(&c, addr).await;
    c.batch_execute(
        "CREATE SYNC users_out AS COPY (SELECT id, email FROM users) TO DESTINATION hooks \
         WITH (key = 'id')",
    )
    .await
    .expect("create");
    c.simple_query("RUN SYNC users_out").await.expect("run");
    assert_eq!(recv.requests.load(Ordering::SeqCst), 2);
    let runs = rows(&c, "SELECT status, trigger FROM tally.sync_runs").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["trigger"], "manual", "{runs:?}");
}

/// Runs of `sync` started by a build of its model.
async fn model_runs(c: &Client, sync: &str) -> Vec<BTreeMap<String, String>> {
    rows(
        c,
        &format!(
            "SELECT run_id, rows_delivered AS rows_sent, status FROM tally.sync_runs \
             WHERE sync = '{sync}' AND trigger = 'model' ORDER BY started_at"
        ),
    )
    .await
}

/// Polls until `sync` has `at_least` model-triggered runs that finished.
async fn wait_for_model_runs(
    c: &Client,
    sync: &str,
    at_least: usize,
) -> Vec<BTreeMap<String, String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let runs = model_runs(c, sync).await;
        if runs.len() >= at_least {
            return runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} model runs of {sync}, wanted {at_least}",
            runs.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_after_model_sync_runs_when_its_model_is_built() {
    let mut server = TestServer::start().await;
    let c = server.client().await;
    let (addr, recv) = start_receiver(0).await;
    setup(&c, addr).await;
    c.batch_execute(
        "CREATE SCHEMA marts; CREATE TABLE marts.cohort AS SELECT id, email FROM users; \
         CREATE SYNC cohort_out AFTER MODEL marts.cohort AS COPY (SELECT id, email FROM marts.cohort) \
         TO DESTINATION hooks WITH (mode = 'upsert', key = 'id')",
    )
    .await
    .expect("create after-model sync");
    let s = rows(&c, "SELECT schedule, next_run_at FROM tally.syncs").await;
    assert_eq!(s[0]["schedule"], "AFTER MODEL marts.cohort", "{s:?}");
    assert_eq!(s[0]["next_run_at"], "NULL", "{s:?}");

    // Creating the sync over an existing model is not a build: nothing runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(model_runs(&c, "cohort_out").await.is_empty());
    assert_eq!(recv.requests.load(Ordering::SeqCst), 0);

    // An incremental build (a new Delta version) runs it: first run, every row.
    c.batch_execute("INSERT INTO marts.cohort VALUES (3, 'c@x.io')")
        .await
        .expect("incremental build");
    let runs = wait_for_model_runs(&c, "cohort_out", 1).await;
    assert_eq!(runs[0]["status"], "succeeded", "{runs:?}");
    assert_eq!(runs[0]["rows_sent"], "3", "{runs:?}");

    // A dbt-style rebuild: a new table swapped in under the model's name by two renames.
    c.batch_execute(
        "CREATE TABLE marts.cohort__dbt_tmp AS SELECT id, email FROM marts.cohort \
           UNION ALL SELECT 4, 'd@x.io'; \
         ALTER TABLE marts.cohort RENAME TO cohort__dbt_backup; \
         ALTER TABLE marts.cohort__dbt_tmp RENAME TO cohort; \
         DROP TABLE marts.cohort__dbt_backup",
    )
    .await
    .expect("swap build");
    let runs = wait_for_model_runs(&c, "cohort_out", 2).await;
    assert_eq!(runs[1]["rows_sent"], "1", "only the new row: {runs:?}");

    // The state a run started for is kept: a restart does not run the sync again, and a
    // build while the server was down runs it once after the restart.
    server.restart().await;
    let c = server.client().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(model_runs(&c, "cohort_out").await.len(), 2);
    c.batch_execute("UPDATE marts.cohort SET email = 'a2@x.io' WHERE id = 1")
        .await
        .expect("build after restart");
    let runs = wait_for_model_runs(&c, "cohort_out", 3).await;
    assert_eq!(runs[2]["rows_sent"], "1", "{runs:?}");

    // A view model runs its sync when the view is created again.
    c.batch_execute(
        "CREATE VIEW marts.active AS SELECT id, email FROM users WHERE id < 3; \
         CREATE SYNC active_out AFTER MODEL marts.active AS COPY (SELECT * FROM marts.active) \
         TO DESTINATION hooks WITH (mode = 'upsert', key = 'id'); \
         CREATE OR REPLACE VIEW marts.active AS SELECT id, email FROM users WHERE id < 3",
    )
    .await
    .expect("view model");
    let runs = wait_for_model_runs(&c, "active_out", 1).await;
    assert_eq!(runs[0]["rows_sent"], "2", "{runs:?}");

    // Unqualified names are in the session's schema; a bad clause is a syntax error.
    c.batch_execute("ALTER SYNC active_out SET AFTER MODEL users")
        .await
        .expect("set after model");
    let s = rows(
        &c,
        "SELECT schedule FROM tally.syncs WHERE name = 'active_out'",
    )
    .await;
    assert_eq!(s[0]["schedule"], "AFTER MODEL public.users", "{s:?}");
    let e = c
        .batch_execute("CREATE SYNC bad AFTER MODUL x AS COPY (SELECT 1 AS id) TO DESTINATION hooks WITH (key = 'id')")
        .await
        .expect_err("bad clause");
    assert_eq!(code(&e), "42601", "{e}");
}
