//! Captured statement streams of real tools, replayed statement by statement on as many
//! connections as the tool opened: the regression test for what a tool sends, runnable
//! without the tool. `tests/streams/dbt_run.sql` is dbt-core + dbt-postgres building,
//! testing, snapshotting and documenting `tests/clients/dbt_shop` twice (see
//! `scripts/capture-dbt-stream.sh`).

use std::collections::HashMap;

use crate::common::TestServer;

/// One captured statement: the connection that sent it and its text.
struct Captured {
    connection: u32,
    sql: String,
}

fn parse_stream(text: &str) -> Vec<Captured> {
    let mut out: Vec<Captured> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("--- connection ") {
            let connection = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .expect("connection number");
            out.push(Captured {
                connection,
                sql: String::new(),
            });
        } else if let Some(last) = out.last_mut() {
            last.sql.push_str(line);
            last.sql.push('\n');
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbt_statement_stream_replays_cleanly() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/streams/dbt_run.sql"),
    )
    .expect("stream file");
    let stream = parse_stream(&text);
    assert!(stream.len() > 200, "stream too short: {}", stream.len());

    let server = TestServer::start().await;
    let mut clients = HashMap::new();
    for (i, st) in stream.iter().enumerate() {
        if let std::collections::hash_map::Entry::Vacant(e) = clients.entry(st.connection) {
            e.insert(server.client().await);
        }
        let client = &clients[&st.connection];
        if let Err(e) = client.simple_query(&st.sql).await {
            panic!(
                "statement {} (connection {}) failed: {e:?}\n{}",
                i + 1,
                st.connection,
                st.sql
            );
        }
    }

    // What the second run and snapshot left behind, as dbt on PostgreSQL leaves it.
    let c = server.client().await;
    let ids = |rows: Vec<tokio_postgres::Row>| {
        rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>()
    };
    for model in ["orders_merge", "orders_delete_insert"] {
        let rows = c
            .query(
                &format!("select order_id::bigint from dbtx.{model} order by 1"),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(ids(rows), vec![10, 11, 12, 13, 14], "{model}");
    }
    let rows = c
        .query(
            "select order_id::bigint from dbtx.orders_append order by 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(ids(rows), vec![10, 11, 12, 12, 13, 14]);
    let history: Vec<(String, bool)> = c
        .query(
            "select plan, dbt_valid_to is null from dbtx_snapshots.customers_snapshot \
             where id = 2 order by dbt_valid_from",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        history,
        vec![("free".to_string(), false), ("pro".to_string(), true)]
    );
    let comment: Option<String> = c
        .query_one(
            "select d.description from pg_catalog.pg_description d \
             join pg_catalog.pg_class c on c.oid = d.objoid \
             join pg_catalog.pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = 'dbtx' and c.relname = 'stg_customers' and d.objsubid = 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(comment.as_deref(), Some("Customers, cleaned."));
}
