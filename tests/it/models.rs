//! `tally models`: the fixture dbt project (tests/models_project) built embedded and over the
//! wire, incremental models run twice, ephemeral inlining, schema tests passing and failing,
//! selection, load errors naming files and lines, failures skipping dependants, and the
//! shipped project (sql/models) sessionising collected-like events.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tally::config::Config;
use tally::models::runner::Quiet;
use tally::models::{
    self, Command, Embedded, Executor, LoadOptions, ModelError, Project, Remote, RunOptions,
    RunReport, Status,
};

use crate::common::TestServer;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/models_project")
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/models")
}

fn load(dir: &Path, vars: Option<&str>) -> Arc<Project> {
    Arc::new(
        Project::load(
            dir,
            &LoadOptions {
                vars: vars.map(str::to_string),
                ..Default::default()
            },
        )
        .expect("project loads"),
    )
}

fn options(select: &[&str]) -> RunOptions {
    RunOptions {
        select: select.iter().map(|s| s.to_string()).collect(),
        threads: 3,
        write_target: false,
        ..Default::default()
    }
}

async fn embedded(dir: &Path) -> Arc<dyn Executor> {
    let mut config = Config::for_data(dir.to_string_lossy().to_string());
    config.memory_limit = 2 << 30;
    let engine = tally::engine::Engine::open(config).await.expect("engine");
    Arc::new(Embedded::new(engine, "test warehouse"))
}

async fn run(
    project: &Arc<Project>,
    exec: &Arc<dyn Executor>,
    command: Command,
    select: &[&str],
) -> RunReport {
    models::run(
        project.clone(),
        exec.clone(),
        command,
        options(select),
        Arc::new(Quiet),
    )
    .await
    .expect("run starts")
}

async fn rows(exec: &Arc<dyn Executor>, sql: &str) -> Vec<Vec<Option<String>>> {
    let mut c = exec.connect().await.expect("connect");
    c.execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .rows
}

async fn exec_ok(exec: &Arc<dyn Executor>, sql: &str) {
    let mut c = exec.connect().await.expect("connect");
    c.execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn status(report: &RunReport, name: &str) -> Status {
    report
        .get(name)
        .unwrap_or_else(|| panic!("{name} not in report: {report:#?}"))
        .status
}

fn text(v: &[Vec<Option<String>>]) -> Vec<Vec<String>> {
    v.iter()
        .map(|r| {
            r.iter()
                .map(|c| c.clone().unwrap_or_else(|| "NULL".into()))
                .collect()
        })
        .collect()
}

/// Seeds, models, tests, and an incremental model run a second time after its input
/// changed: the changed row is merged and the new row added, nothing duplicated.
async fn build_fixture(exec: Arc<dyn Executor>) {
    let project = load(&fixture(), None);

    let seeded = run(&project, &exec, Command::Seed, &[]).await;
    assert!(seeded.success(), "{seeded:#?}");
    assert_eq!(seeded.get("orders").and_then(|r| r.rows), Some(5));

    let report = run(&project, &exec, Command::Run, &[]).await;
    assert!(report.success(), "{report:#?}");
    let names: Vec<&str> = report.results.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names.len(), 4, "ephemeral models are not built: {names:?}");
    assert!(!names.contains(&"paid_orders"));
    assert_eq!(report.get("customer_orders").and_then(|r| r.rows), Some(3));
    assert_eq!(
        report.get("orders_incremental").and_then(|r| r.rows),
        Some(5)
    );

    // The ephemeral model was inlined: returned and zero-amount orders are left out.
    let got = rows(
        &exec,
        "SELECT name, order_count, CAST(revenue * 100 AS bigint), CASE WHEN last_order_at IS NULL THEN 'none' ELSE 'some' END FROM customer_orders ORDER BY customer_id",
    )
    .await;
    assert_eq!(
        text(&got),
        vec![
            vec!["Ann", "3", "3775", "some"],
            vec!["Bob", "1", "500", "some"],
            vec!["Cid", "0", "0", "none"]
        ]
    );
    let kinds = rows(
        &exec,
        "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'public' AND table_name IN ('stg_orders', 'customer_orders', 'paid_orders') ORDER BY table_name",
    )
    .await;
    assert_eq!(
        text(&kinds),
        vec![
            vec!["customer_orders", "BASE TABLE"],
            vec!["stg_orders", "VIEW"]
        ]
    );

    // Tests: everything passes but the deliberate not_null on Cid's missing last order.
    let tested = run(&project, &exec, Command::Test, &[]).await;
    assert!(!tested.success());
    assert_eq!(
        status(&tested, "not_null_customer_orders_last_order_at"),
        Status::Fail
    );
    assert_eq!(
        tested
            .get("not_null_customer_orders_last_order_at")
            .and_then(|r| r.rows),
        Some(1)
    );
    for pass in [
        "unique_stg_customers_customer_id",
        "accepted_values_stg_orders_status__placed__shipped__returned",
        "relationships_stg_orders_customer_id__customer_id__stg_customers",
        "no_negative_revenue",
    ] {
        assert_eq!(status(&tested, pass), Status::Pass, "{pass}");
    }
    assert_eq!(tested.count(Status::Fail), 1, "{tested:#?}");

    // Second incremental run: order 5 changed, order 6 is new.
    exec_ok(
        &exec,
        "UPDATE orders SET status = 'shipped', updated_at = TIMESTAMP '2024-01-06 10:00:00' WHERE id = 5",
    )
    .await;
    exec_ok(
        &exec,
        "INSERT INTO orders VALUES (6, 3, 12, 'placed', TIMESTAMP '2024-01-07 10:00:00')",
    )
    .await;
    let again = run(&project, &exec, Command::Run, &["orders_incremental"]).await;
    assert!(again.success(), "{again:#?}");
    assert_eq!(again.results.len(), 1, "selection builds one model");
    assert_eq!(
        again.get("orders_incremental").and_then(|r| r.rows),
        Some(2)
    );
    let got = rows(
        &exec,
        "SELECT count(*), count(DISTINCT order_id), max(CASE WHEN order_id = 5 THEN status END) FROM orders_incremental",
    )
    .await;
    assert_eq!(text(&got), vec![vec!["6", "6", "shipped"]]);

    // A table model rebuilt in place keeps the views over it working.
    exec_ok(
        &exec,
        "CREATE VIEW big_customers AS SELECT name FROM customer_orders WHERE revenue > 30",
    )
    .await;
    let rebuilt = run(&project, &exec, Command::Run, &["customer_orders"]).await;
    assert!(rebuilt.success(), "{rebuilt:#?}");
    assert_eq!(
        text(&rows(&exec, "SELECT name FROM big_customers").await),
        vec![vec!["Ann"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_project_embedded() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_fixture(embedded(dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_project_over_the_wire() {
    let server = TestServer::start().await;
    let exec: Arc<dyn Executor> = Arc::new(Remote::new(format!(
        "postgres://tally@127.0.0.1:{}/tally",
        server.port()
    )));
    build_fixture(exec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_runs_seeds_models_and_tests_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exec = embedded(dir.path()).await;
    let project = load(&fixture(), None);
    let report = run(&project, &exec, Command::Build, &[]).await;
    // 2 seeds + 4 models + tests; only the deliberate test fails, and it is on a leaf.
    assert_eq!(report.count(Status::Success), 6, "{report:#?}");
    assert_eq!(report.count(Status::Fail), 1);
    assert_eq!(report.count(Status::Skipped), 0);
    assert!(!report.success());
    let summary = models::report::summary_text(&report);
    assert!(
        summary.contains(
            "FAIL  not_null_customer_orders_last_order_at: models/schema.yml: 1 failing row"
        ),
        "{summary}"
    );
}

#[test]
fn selection() {
    let project = load(&fixture(), None);
    let names = |select: &[&str], exclude: &[&str]| -> Vec<String> {
        let mut o = options(select);
        o.exclude = exclude.iter().map(|s| s.to_string()).collect();
        models::list(&project, &o)
            .expect("selects")
            .into_iter()
            .filter(|l| !l.starts_with("test"))
            .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
            .collect()
    };
    let mut down = names(&["stg_orders+"], &[]);
    down.sort();
    assert_eq!(
        down,
        vec![
            "customer_orders",
            "orders_incremental",
            "paid_orders",
            "stg_orders"
        ]
    );
    let mut up = names(&["+customer_orders"], &[]);
    up.sort();
    assert_eq!(
        up,
        vec![
            "customer_orders",
            "customers",
            "orders",
            "paid_orders",
            "stg_customers",
            "stg_orders"
        ]
    );
    let mut tagged = names(&["tag:marts"], &[]);
    tagged.sort();
    assert_eq!(tagged, vec!["customer_orders", "orders_incremental"]);
    assert_eq!(names(&["stg_*"], &["stg_orders"]), vec!["stg_customers"]);
    // Space: union; comma: intersection (dbt's syntax).
    let mut union = names(&["stg_customers stg_orders"], &[]);
    union.sort();
    assert_eq!(union, vec!["stg_customers", "stg_orders"]);
    assert_eq!(
        names(&["tag:marts,stg_orders+"], &["customer_orders"]),
        vec!["orders_incremental"]
    );
    assert_eq!(
        names(&["path:models/marts"], &["customer_orders"]),
        vec!["orders_incremental"]
    );
    let err = models::list(&project, &options(&["nope"])).expect_err("unknown selector");
    assert!(err.to_string().contains("nope"), "{err}");
}

fn write_project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("dbt_project.yml"),
        "name: scratch\nconfig-version: 2\n",
    )
    .expect("write");
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    dir
}

#[test]
fn load_errors_name_the_file_and_line() {
    let cyc = write_project(&[
        ("models/a.sql", "select * from {{ ref('b') }}"),
        ("models/b.sql", "select * from {{ ref('c') }}"),
        ("models/c.sql", "select * from {{ ref('a') }}"),
        ("models/ok.sql", "select 1 as x"),
    ]);
    let project = Project::load(cyc.path(), &LoadOptions::default()).expect("loads");
    let err = tally::models::graph::Graph::build(&project).expect_err("cycle");
    assert!(matches!(err, ModelError::Cycle { .. }), "{err}");
    let msg = err.to_string();
    for f in ["models/a.sql", "models/b.sql", "models/c.sql"] {
        assert!(msg.contains(f), "{msg}");
    }
    assert!(!msg.contains("ok.sql"), "{msg}");

    let missing = write_project(&[
        (
            "models/orders.sql",
            "select *\nfrom {{ ref('customers') }}\njoin {{ ref('nope') }} using (id)",
        ),
        ("models/customers.sql", "select 1 as id"),
    ]);
    let err = Project::load(missing.path(), &LoadOptions::default()).expect_err("missing ref");
    assert!(matches!(err, ModelError::MissingRef { .. }), "{err}");
    assert!(
        err.to_string().starts_with("models/orders.sql:3: "),
        "{err}"
    );
    assert!(err.to_string().contains("'nope'"), "{err}");

    let src = write_project(&[("models/m.sql", "select * from {{ source('web', 'pages') }}")]);
    let err = Project::load(src.path(), &LoadOptions::default()).expect_err("missing source");
    assert!(err.to_string().starts_with("models/m.sql:1: "), "{err}");

    let bad = write_project(&[("models/bad.sql", "select 1\nfrom {{ ref('x' }}\n")]);
    let err = Project::load(bad.path(), &LoadOptions::default()).expect_err("bad jinja");
    assert!(matches!(err, ModelError::Jinja { .. }), "{err}");
    assert!(err.to_string().starts_with("models/bad.sql:2: "), "{err}");

    let var = write_project(&[("models/v.sql", "select {{ var('needed') }} as x")]);
    let err = Project::load(var.path(), &LoadOptions::default()).expect_err("missing var");
    assert!(err.to_string().contains("needed"), "{err}");
    let ok = Project::load(
        var.path(),
        &LoadOptions {
            vars: Some("{needed: 42}".into()),
            ..Default::default()
        },
    );
    assert!(ok.is_ok(), "--vars fills it: {ok:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_model_skips_its_dependants() {
    let project_dir = write_project(&[
        ("models/good.sql", "select 1 as x"),
        (
            "models/broken.sql",
            "{{ config(materialized='table') }}\nselect x,\n       nope\nfrom {{ ref('good') }}",
        ),
        ("models/child.sql", "select * from {{ ref('broken') }}"),
        ("models/grandchild.sql", "select * from {{ ref('child') }}"),
        (
            "models/sibling.sql",
            "select x + 1 as y from {{ ref('good') }}",
        ),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let exec = embedded(dir.path()).await;
    let project = load(project_dir.path(), None);
    let report = run(&project, &exec, Command::Run, &[]).await;
    assert!(!report.success());
    assert_eq!(status(&report, "good"), Status::Success);
    assert_eq!(status(&report, "sibling"), Status::Success);
    assert_eq!(status(&report, "broken"), Status::Error);
    let msg = report
        .get("broken")
        .and_then(|r| r.message.clone())
        .unwrap_or_default();
    assert!(msg.starts_with("models/broken.sql:3: "), "{msg}");
    for skipped in ["child", "grandchild"] {
        assert_eq!(status(&report, skipped), Status::Skipped);
        let why = report
            .get(skipped)
            .and_then(|r| r.message.clone())
            .unwrap_or_default();
        assert!(why.contains("broken"), "{skipped}: {why}");
    }
    // No half-built table is left behind.
    let left = rows(
        &exec,
        "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'broken%'",
    )
    .await;
    assert!(left.is_empty(), "{left:?}");
}

/// Creates collected-like tables (the layout of src/collect/layout.rs) in schema `web`.
async fn collected_events(exec: &Arc<dyn Executor>) {
    let common = "message_id text, user_id text, anonymous_id text, \"timestamp\" timestamptz, received_at timestamptz";
    for stmt in [
        "CREATE SCHEMA web".to_string(),
        format!("CREATE TABLE web.pages ({common}, name text)"),
        format!("CREATE TABLE web.screens ({common}, name text)"),
        format!("CREATE TABLE web.tracks ({common}, event text, event_text text)"),
        format!("CREATE TABLE web.order_completed ({common}, event text, event_text text, revenue double precision)"),
        format!("CREATE TABLE web.identifies ({common}, email text, phone text, name text, plan text)"),
        // a1: 10:00, 10:10, then 35 minutes of silence, 10:45, 10:50 -> two sessions.
        // a2: 09:00, 09:29 -> one session. a3: 11:00, 11:30 (exactly 30 minutes) -> two.
        "INSERT INTO web.pages (message_id, anonymous_id, user_id, \"timestamp\") VALUES \
            ('p1', 'a1', NULL, TIMESTAMPTZ '2024-03-01 10:00:00+00'), \
            ('p2', 'a1', NULL, TIMESTAMPTZ '2024-03-01 10:10:00+00'), \
            ('p3', 'a1', 'u1', TIMESTAMPTZ '2024-03-01 10:45:00+00'), \
            ('p4', 'a3', NULL, TIMESTAMPTZ '2024-03-01 11:00:00+00'), \
            ('p5', 'a3', NULL, TIMESTAMPTZ '2024-03-01 11:30:00+00')".to_string(),
        "INSERT INTO web.screens (message_id, anonymous_id, user_id, \"timestamp\") VALUES \
            ('s1', 'a1', 'u1', TIMESTAMPTZ '2024-03-01 10:50:00+00'), \
            ('s2', 'a2', NULL, TIMESTAMPTZ '2024-03-02 09:00:00+00'), \
            ('s3', 'a2', NULL, TIMESTAMPTZ '2024-03-02 09:29:00+00')".to_string(),
        "INSERT INTO web.tracks (message_id, anonymous_id, user_id, \"timestamp\", event, event_text) VALUES \
            ('t1', 'a1', 'u1', TIMESTAMPTZ '2024-03-01 10:46:00+00', 'order_completed', 'Order Completed'), \
            ('t2', 'a2', NULL, TIMESTAMPTZ '2024-03-02 09:01:00+00', 'product_viewed', 'Product Viewed')".to_string(),
        "INSERT INTO web.order_completed (message_id, anonymous_id, user_id, \"timestamp\", event, event_text, revenue) VALUES \
            ('t1', 'a1', 'u1', TIMESTAMPTZ '2024-03-01 10:46:00+00', 'order_completed', 'Order Completed', 120.0)".to_string(),
        "INSERT INTO web.identifies (message_id, anonymous_id, user_id, \"timestamp\", email, plan) VALUES \
            ('i1', 'a1', 'u1', TIMESTAMPTZ '2024-03-01 10:44:00+00', 'u1@example.com', 'pro')".to_string(),
    ] {
        exec_ok(exec, &stmt).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_models_sessionise_collected_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exec = embedded(dir.path()).await;
    collected_events(&exec).await;
    let project = load(&shipped(), Some("{source_schema: web}"));
    let report = run(&project, &exec, Command::Build, &[]).await;
    assert!(
        report.success(),
        "{}",
        models::report::summary_text(&report)
    );

    let sessions = rows(
        &exec,
        "SELECT visitor_id, session_number, event_count, user_id FROM sessions ORDER BY visitor_id, session_number",
    )
    .await;
    assert_eq!(
        text(&sessions),
        vec![
            vec!["a1", "1", "2", "NULL"],
            vec!["a1", "2", "2", "u1"],
            vec!["a2", "1", "2", "NULL"],
            vec!["a3", "1", "1", "NULL"],
            vec!["a3", "2", "1", "NULL"],
        ]
    );
    let dau = rows(
        &exec,
        "SELECT CAST(activity_date AS text) AS day, active_users FROM daily_active_users ORDER BY day",
    )
    .await;
    // 1 March: a1, who signed in as u1 (one profile), and a3; 2 March: a2.
    assert_eq!(
        text(&dau),
        vec![vec!["2024-03-01", "2"], vec!["2024-03-02", "1"]]
    );
    let profile = rows(
        &exec,
        "SELECT email, plan, order_count, revenue FROM profiles WHERE array_has(user_ids, 'u1')",
    )
    .await;
    assert_eq!(
        text(&profile),
        vec![vec!["u1@example.com", "pro", "1", "120.0"]]
    );
    let high = rows(&exec, "SELECT email FROM cohort_high_value").await;
    assert_eq!(text(&high), vec![vec!["u1@example.com"]]);

    // The gap is a var: with 40 minutes a1's four events are one session.
    let project = load(
        &shipped(),
        Some("{source_schema: web, session_gap_minutes: 40}"),
    );
    let again = run(&project, &exec, Command::Run, &["sessions"]).await;
    assert!(again.success(), "{again:#?}");
    let n = rows(
        &exec,
        "SELECT count(*) FROM sessions WHERE visitor_id = 'a1'",
    )
    .await;
    assert_eq!(text(&n), vec![vec!["1"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialisations_change_in_place_and_full_refresh_rebuilds() {
    let project_dir = write_project(&[
        (
            "models/m.sql",
            "{{ config(materialized=var('mat', 'view')) }}\nselect 1 as id, 'a' as v",
        ),
        ("models/over_m.sql", "select id from {{ ref('m') }}"),
        (
            "models/inc.sql",
            "{{ config(materialized='incremental') }}\nselect {{ var('n', 1) }} as n",
        ),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let exec = embedded(dir.path()).await;
    let kind = |name: &'static str| {
        let exec = exec.clone();
        async move {
            text(
                &rows(
                    &exec,
                    &format!(
                        "SELECT table_type FROM information_schema.tables WHERE table_schema = 'public' AND table_name = '{name}'"
                    ),
                )
                .await,
            )
        }
    };
    for (vars, expected) in [
        ("{mat: view}", "VIEW"),
        ("{mat: table, n: 2}", "BASE TABLE"),
        ("{mat: view, n: 3}", "VIEW"),
    ] {
        let report = run(
            &load(project_dir.path(), Some(vars)),
            &exec,
            Command::Run,
            &[],
        )
        .await;
        assert!(report.success(), "{vars}: {report:#?}");
        assert_eq!(kind("m").await, vec![vec![expected]], "{vars}");
        assert_eq!(
            text(&rows(&exec, "SELECT id FROM over_m").await),
            vec![vec!["1"]]
        );
    }
    // Without a unique key, each run appends; --full-refresh starts over.
    assert_eq!(
        text(&rows(&exec, "SELECT n FROM inc ORDER BY n").await),
        vec![vec!["1"], vec!["2"], vec!["3"]]
    );
    let project = load(project_dir.path(), Some("{n: 4}"));
    let report = models::run(
        project,
        exec.clone(),
        Command::Run,
        RunOptions {
            full_refresh: true,
            ..options(&["inc"])
        },
        Arc::new(Quiet),
    )
    .await
    .expect("runs");
    assert!(report.success(), "{report:#?}");
    assert_eq!(
        text(&rows(&exec, "SELECT n FROM inc").await),
        vec![vec!["4"]]
    );
}

const SNAPSHOTS: &str = "{% snapshot people_ts %}
{{ config(unique_key='id', strategy='timestamp', updated_at='updated_at', hard_deletes='invalidate') }}
select * from {{ ref('people') }}
{% endsnapshot %}

{% snapshot people_check %}
{{ config(unique_key='id', strategy='check', check_cols=['plan']) }}
select id, plan from {{ ref('people') }}
{% endsnapshot %}
";

/// Snapshots keep every version of a row (dbt's SCD2 columns): the first build stores the
/// rows as current; after the seed changes, the changed row is closed and its new version
/// inserted, the new row inserted, the deleted row closed only where hard deletes are
/// invalidated; a model refs a snapshot; an unchanged run adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_keep_history_across_runs() {
    let project_dir = write_project(&[
        (
            "seeds/people.csv",
            "id,plan,updated_at\n1,free,2024-01-01 00:00:00\n2,free,2024-01-02 00:00:00\n3,pro,2024-01-03 00:00:00\n",
        ),
        ("snapshots/people.sql", SNAPSHOTS),
        (
            "models/current_people.sql",
            "select id, plan from {{ ref('people_ts') }} where dbt_valid_to is null",
        ),
    ]);
    std::fs::write(
        project_dir.path().join("dbt_project.yml"),
        "name: scratch\nconfig-version: 2\nsnapshot-paths: [snapshots]\nsnapshots:\n  scratch:\n    +target_schema: \"{{ target.schema }}_history\"\n",
    )
    .expect("write");
    let dir = tempfile::tempdir().expect("tempdir");
    let exec = embedded(dir.path()).await;
    let project = load(project_dir.path(), None);
    assert_eq!(
        project.node("people_ts").map(|n| n.relation.to_string()),
        Some("\"public_history\".\"people_ts\"".to_string())
    );

    let first = run(&project, &exec, Command::Build, &[]).await;
    assert!(first.success(), "{first:#?}");
    assert_eq!(first.get("people_ts").and_then(|r| r.rows), Some(3));
    assert_eq!(
        first.get("people_ts").map(|r| r.kind.as_str()),
        Some("snapshot")
    );

    std::fs::write(
        project_dir.path().join("seeds/people.csv"),
        "id,plan,updated_at\n1,pro,2024-02-01 00:00:00\n3,pro,2024-01-03 00:00:00\n4,pro,2024-02-02 00:00:00\n",
    )
    .expect("write");
    let project = load(project_dir.path(), None);
    let second = run(&project, &exec, Command::Build, &[]).await;
    assert!(second.success(), "{second:#?}");
    assert_eq!(second.get("people_ts").and_then(|r| r.rows), Some(2));
    assert_eq!(second.get("people_check").and_then(|r| r.rows), Some(2));

    let ts = "SELECT id, plan, CAST(updated_at AS VARCHAR), CAST(dbt_updated_at AS VARCHAR), \
              CAST(dbt_valid_from AS VARCHAR), CAST(dbt_valid_to AS VARCHAR), \
              dbt_scd_id = md5(CAST(id AS VARCHAR) || '|' || CAST(updated_at AS VARCHAR)) \
              FROM public_history.people_ts WHERE id <> 2 ORDER BY id, dbt_valid_from";
    let expected = vec![
        vec![
            "1",
            "free",
            "2024-01-01 00:00:00",
            "2024-01-01 00:00:00",
            "2024-01-01 00:00:00",
            "2024-02-01 00:00:00",
            "true",
        ],
        vec![
            "1",
            "pro",
            "2024-02-01 00:00:00",
            "2024-02-01 00:00:00",
            "2024-02-01 00:00:00",
            "NULL",
            "true",
        ],
        vec![
            "3",
            "pro",
            "2024-01-03 00:00:00",
            "2024-01-03 00:00:00",
            "2024-01-03 00:00:00",
            "NULL",
            "true",
        ],
        vec![
            "4",
            "pro",
            "2024-02-02 00:00:00",
            "2024-02-02 00:00:00",
            "2024-02-02 00:00:00",
            "NULL",
            "true",
        ],
    ];
    assert_eq!(text(&rows(&exec, ts).await), expected);
    // The hard-deleted row is closed at the snapshot time.
    assert_eq!(
        text(
            &rows(
                &exec,
                "SELECT id, plan, CAST(dbt_valid_from AS VARCHAR), dbt_valid_to IS NOT NULL FROM public_history.people_ts WHERE id = 2"
            )
            .await
        ),
        vec![vec!["2", "free", "2024-01-02 00:00:00", "true"]]
    );

    // check: versions by value; the deleted row stays current (hard deletes ignored), and
    // a closed version ends exactly where its successor starts.
    assert_eq!(
        text(
            &rows(
                &exec,
                "SELECT id, plan, dbt_valid_to IS NULL FROM public_history.people_check ORDER BY id, dbt_valid_from"
            )
            .await
        ),
        vec![
            vec!["1", "free", "false"],
            vec!["1", "pro", "true"],
            vec!["2", "free", "true"],
            vec!["3", "pro", "true"],
            vec!["4", "pro", "true"],
        ]
    );
    assert_eq!(
        text(
            &rows(
                &exec,
                "SELECT count(*) FROM public_history.people_check a JOIN public_history.people_check b \
                 ON a.id = b.id AND a.dbt_valid_to = b.dbt_valid_from AND b.dbt_updated_at = b.dbt_valid_from"
            )
            .await
        ),
        vec![vec!["1"]]
    );
    assert_eq!(
        text(&rows(&exec, "SELECT id, plan FROM current_people ORDER BY id").await),
        vec![vec!["1", "pro"], vec!["3", "pro"], vec!["4", "pro"]]
    );

    // Nothing changed: nothing is added.
    let third = run(&project, &exec, Command::Snapshot, &[]).await;
    assert!(third.success(), "{third:#?}");
    assert_eq!(third.results.len(), 2, "snapshot runs only snapshots");
    assert_eq!(third.get("people_ts").and_then(|r| r.rows), Some(0));
    assert_eq!(third.get("people_check").and_then(|r| r.rows), Some(0));
    assert_eq!(
        text(&rows(&exec, "SELECT count(*) FROM public_history.people_check").await),
        vec![vec!["5"]]
    );
}

#[test]
fn snapshot_config_errors_name_the_file() {
    for (config, needle) in [
        ("unique_key='id', strategy='timestamp'", "updated_at"),
        ("unique_key='id', strategy='check'", "check_cols"),
        ("strategy='check', check_cols='all'", "unique_key"),
        ("unique_key='id', strategy='nope'", "strategy='nope'"),
    ] {
        let p = write_project(&[(
            "snapshots/s.sql",
            &format!(
                "{{% snapshot s %}}\n{{{{ config({config}) }}}}\nselect 1 as id\n{{% endsnapshot %}}\n"
            ),
        )]);
        let err = Project::load(p.path(), &LoadOptions::default()).expect_err(config);
        let msg = err.to_string();
        assert!(msg.starts_with("snapshots/s.sql"), "{msg}");
        assert!(msg.contains(needle), "{config}: {msg}");
    }
    let p = write_project(&[("snapshots/s.sql", "\n{% snapshot s %}\nselect 1\n")]);
    let err = Project::load(p.path(), &LoadOptions::default()).expect_err("unclosed");
    assert!(err.to_string().starts_with("snapshots/s.sql:2"), "{err}");
}
