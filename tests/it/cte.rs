//! Shared CTEs: a CTE read more than once is computed once (its table scanned once, a
//! volatile value the same for every reader), `AS [NOT] MATERIALIZED` decides it, and a CTE
//! larger than the memory pool spills to disk and still gives every row.

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::TestServer;

/// The text of the physical plan of `sql`.
async fn physical_plan(c: &Client, sql: &str) -> String {
    let mut plan = String::new();
    for m in c
        .simple_query(&format!("EXPLAIN {sql}"))
        .await
        .expect("explain")
    {
        if let SimpleQueryMessage::Row(r) = m
            && r.get(0) == Some("physical_plan")
        {
            plan.push_str(r.get(1).unwrap_or_default());
        }
    }
    plan
}

async fn one(c: &Client, sql: &str) -> String {
    let rows = c.simple_query(sql).await.expect(sql);
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .expect("a row")
}

const FUNNEL: &str = "WITH e AS {hint} (SELECT who, event, ts FROM ev WHERE event IN ('view', 'add', 'order')),
s1 AS (SELECT who, min(ts) AS t1 FROM e WHERE event = 'view' GROUP BY who),
s2 AS (SELECT s1.who, min(e.ts) AS t2 FROM s1 JOIN e ON e.who = s1.who AND e.event = 'add' AND e.ts > s1.t1 GROUP BY s1.who)
SELECT (SELECT count(*) FROM s1) AS viewed, (SELECT count(*) FROM s2) AS added";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cte_read_many_times_scans_its_table_once() {
    let server = TestServer::start().await;
    let c = server.client().await;
    c.batch_execute(
        "CREATE TABLE ev (who text, event text, ts bigint);
         INSERT INTO ev VALUES ('a', 'view', 1), ('a', 'add', 2), ('b', 'view', 3), ('b', 'add', 1)",
    )
    .await
    .expect("setup");

    let shared = physical_plan(&c, &FUNNEL.replace("{hint}", "")).await;
    assert!(shared.contains("MaterializeCtesExec"), "{shared}");
    assert!(shared.contains("CteScanExec: cte=e"), "{shared}");
    assert_eq!(shared.matches("DataSourceExec").count(), 1, "{shared}");

    let inlined = physical_plan(&c, &FUNNEL.replace("{hint}", "NOT MATERIALIZED")).await;
    assert!(!inlined.contains("CteScanExec: cte=e"), "{inlined}");
    // e is read again by s1 and by s2, which are still shared.
    assert_eq!(inlined.matches("DataSourceExec").count(), 2, "{inlined}");

    // Both give the same answer.
    let answer = |sql: String| {
        let c = &c;
        async move {
            let rows = c.simple_query(&sql).await.expect("funnel");
            rows.iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(format!("{:?} {:?}", r.get(0), r.get(1))),
                    _ => None,
                })
                .expect("a row")
        }
    };
    assert_eq!(
        answer(FUNNEL.replace("{hint}", "")).await,
        "Some(\"2\") Some(\"1\")"
    );
    assert_eq!(
        answer(FUNNEL.replace("{hint}", "NOT MATERIALIZED")).await,
        "Some(\"2\") Some(\"1\")"
    );

    // A CTE that is only a table's columns is read again rather than buffered...
    let plain = physical_plan(&c, "WITH p AS (SELECT who, ts FROM ev) SELECT (SELECT count(*) FROM p) AS n, (SELECT max(ts) FROM p) AS last").await;
    assert!(!plain.contains("CteScanExec"), "{plain}");
    // ...unless it asks to be materialized; MATERIALIZED also holds for a single reader.
    let forced = physical_plan(
        &c,
        "WITH p AS MATERIALIZED (SELECT who, ts FROM ev) SELECT count(*) FROM p",
    )
    .await;
    assert!(forced.contains("CteScanExec: cte=p"), "{forced}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reader_of_a_volatile_cte_sees_the_same_rows() {
    let server = TestServer::start().await;
    let c = server.client().await;
    let q = |hint: &str| {
        format!(
            "WITH r AS {hint} (SELECT random() AS x) SELECT ((SELECT max(x) FROM r) = (SELECT min(x) FROM r))::text"
        )
    };
    assert_eq!(one(&c, &q("")).await, "true");
    assert_eq!(one(&c, &q("MATERIALIZED")).await, "true");
    assert_eq!(one(&c, &q("NOT MATERIALIZED")).await, "false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cte_larger_than_the_memory_pool_spills_and_keeps_every_row() {
    let server = TestServer::start_with(|c| c.memory_limit = 8 << 20).await;
    let c = server.client().await;
    let sql = "WITH c AS (SELECT value AS x, value * 2 AS y FROM generate_series(1, 1000000) WHERE value % 3 <> 0)
               SELECT (SELECT count(*) FROM c) AS n, (SELECT sum(y) FROM c) AS total";
    let rows = c.simple_query(sql).await.expect("spilling CTE");
    let row = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get(0).unwrap_or_default().to_string(),
                r.get(1).unwrap_or_default().to_string(),
            )),
            _ => None,
        })
        .expect("a row");
    assert_eq!(row, ("666667".to_string(), "666667333334".to_string()));

    let mut analyzed = String::new();
    for m in c
        .simple_query(&format!("EXPLAIN ANALYZE {sql}"))
        .await
        .expect("explain analyze")
    {
        if let SimpleQueryMessage::Row(r) = m {
            analyzed.push_str(r.get(1).unwrap_or_default());
        }
    }
    let spilled: u64 = analyzed
        .lines()
        .filter(|l| l.contains("CteScanExec"))
        .filter_map(|l| l.split("spilled_rows=").nth(1))
        .filter_map(|v| {
            v.split(|ch: char| !ch.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(spilled > 0, "no CTE rows spilled:\n{analyzed}");
}
