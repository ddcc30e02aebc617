//! Persisted identity graphs: CREATE / REFRESH / DROP IDENTITY GRAPH through a real server,
//! incremental refresh against a full recomputation, merge history, restart.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use crate::common::{TestServer, code};

async fn map_of(client: &Client, table: &str) -> BTreeMap<(String, String), String> {
    client
        .query(
            &format!("SELECT identifier_type, identifier_value, profile_id FROM {table}"),
            &[],
        )
        .await
        .expect("read map")
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
}

async fn stitched(client: &Client) -> BTreeMap<(String, String), String> {
    map_of(client, "identity_stitch('edges')").await
}

async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0)
}

const EDGES: &str = "CREATE TABLE edges (left_type text, left_value text, right_type text, \
                     right_value text, event_ts timestamp, loaded_at bigint)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_refresh_equals_full_and_records_merges() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client.batch_execute(EDGES).await.expect("edges");
    client
        .batch_execute(
            "INSERT INTO edges VALUES \
             ('anonymous_id','a1','user_id','u1','2024-01-01 00:00:00',1), \
             ('anonymous_id','a1','email','one@example.com','2024-01-01 00:00:01',1), \
             ('anonymous_id','a2','user_id','u2','2024-01-02 00:00:00',1), \
             ('anonymous_id','a3','device_id','d3','2024-01-03 00:00:00',1), \
             ('anonymous_id','a4','device_id','d3','2024-01-03 00:00:00',1)",
        )
        .await
        .expect("first edges");
    client
        .batch_execute(
            "CREATE IDENTITY GRAPH people FROM edges WITH (incremental_column = 'loaded_at')",
        )
        .await
        .expect("create graph");
    let first = map_of(&client, "people_map").await;
    assert_eq!(
        first,
        stitched(&client).await,
        "the map is identity_stitch's result"
    );
    assert_eq!(first.len(), 8);
    let a3 = first[&("anonymous_id".into(), "a3".into())].clone();
    let a4 = first[&("anonymous_id".into(), "a4".into())].clone();
    assert_eq!(a3, a4, "a3 and a4 share a device");
    let row = client
        .query_one(
            "SELECT refreshes, identifiers, profiles, watermark, last_incremental \
             FROM tally.identity_graphs WHERE name = 'people'",
            &[],
        )
        .await
        .expect("system table");
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, i64>(1), 8);
    assert_eq!(row.get::<_, i64>(2), 3);
    assert_eq!(row.get::<_, Option<i64>>(3), Some(1));
    assert!(!row.get::<_, bool>(4));

    // New edges: a3's cookie logs in as u1 (merging the device profile into u1's), and a
    // new visitor appears. Only edges past the watermark are read.
    client
        .batch_execute(
            "INSERT INTO edges VALUES \
             ('anonymous_id','a3','user_id','u1','2024-02-01 00:00:00',2), \
             ('anonymous_id','a5','email','five@example.com','2024-02-02 00:00:00',2)",
        )
        .await
        .expect("new edges");
    client
        .batch_execute("REFRESH IDENTITY GRAPH people")
        .await
        .expect("refresh");
    let second = map_of(&client, "people_map").await;
    assert_eq!(
        second,
        stitched(&client).await,
        "incremental equals a full run"
    );
    let u1 = second[&("user_id".into(), "u1".into())].clone();
    assert_eq!(second[&("device_id".into(), "d3".into())], u1);
    assert_eq!(
        first[&("user_id".into(), "u1".into())],
        u1,
        "the surviving profile keeps its id"
    );
    let row = client
        .query_one(
            "SELECT last_edges, last_incremental, watermark FROM tally.identity_graphs",
            &[],
        )
        .await
        .expect("system table");
    assert_eq!(row.get::<_, i64>(0), 2, "only the new edges were read");
    assert!(row.get::<_, bool>(1));
    assert_eq!(row.get::<_, Option<i64>>(2), Some(2));
    // Merge-on-read: the incremental refresh wrote only the rows that changed (a3, a4,
    // d3 moved to u1's profile; u1's profile grew; a5 and five@ are new), not the base.
    assert_eq!(count(&client, "people_map_base").await, 8);
    let changed = count(&client, "people_map_changes").await;
    assert!(
        (3..second.len() as i64).contains(&changed),
        "{changed} change rows"
    );
    let merges = client
        .query(
            "SELECT old_profile_id, new_profile_id, refresh FROM people_merges",
            &[],
        )
        .await
        .expect("merges");
    assert_eq!(merges.len(), 1, "one absorbed profile");
    assert_eq!(merges[0].get::<_, String>(0), a3);
    assert_eq!(merges[0].get::<_, String>(1), u1);
    assert_eq!(merges[0].get::<_, i64>(2), 2);

    // A refresh with nothing new changes nothing.
    client
        .batch_execute("REFRESH IDENTITY GRAPH people")
        .await
        .expect("empty refresh");
    assert_eq!(map_of(&client, "people_map").await, second);

    // After a restart the graph is rebuilt from the stored map; new edges still fold in
    // incrementally and agree with a full computation.
    drop(client);
    server.restart().await;
    let client = server.client().await;
    client
        .batch_execute(
            "INSERT INTO edges VALUES ('email','five@example.com','user_id','u5','2024-03-01 00:00:00',3)",
        )
        .await
        .expect("more edges");
    client
        .batch_execute("REFRESH IDENTITY GRAPH people")
        .await
        .expect("refresh after restart");
    let third = map_of(&client, "people_map").await;
    assert_eq!(third, stitched(&client).await);
    let full_row = client
        .query_one("SELECT last_incremental FROM tally.identity_graphs", &[])
        .await
        .expect("system table");
    assert!(full_row.get::<_, bool>(0));

    client
        .batch_execute("REFRESH IDENTITY GRAPH people FULL")
        .await
        .expect("full refresh");
    assert_eq!(map_of(&client, "people_map").await, third);
    assert_eq!(
        count(&client, "people_map_changes").await,
        0,
        "a full refresh compacts"
    );
    assert_eq!(count(&client, "people_map_base").await, third.len() as i64);

    client
        .batch_execute("DROP IDENTITY GRAPH people")
        .await
        .expect("drop");
    for t in [
        "people_map",
        "people_map_base",
        "people_map_changes",
        "people_merges",
    ] {
        let e = client
            .query(&format!("SELECT * FROM {t}"), &[])
            .await
            .expect_err("dropped with the graph");
        assert_eq!(code(&e), "42P01", "{t}");
    }
    let n: i64 = client
        .query_one("SELECT count(*) FROM tally.identity_graphs", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_statements_fail_clearly() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.batch_execute(EDGES).await.expect("edges");
    client
        .batch_execute("CREATE TABLE wrong (a text, b text)")
        .await
        .expect("wrong");
    let cases = [
        ("CREATE IDENTITY GRAPH g FROM missing", "42P01"),
        ("CREATE IDENTITY GRAPH g FROM wrong", "42703"),
        (
            "CREATE IDENTITY GRAPH g FROM edges WITH (incremental_column = 'nope')",
            "42703",
        ),
        (
            "CREATE IDENTITY GRAPH g FROM edges WITH (incremental_column = 'left_value')",
            "42804",
        ),
        (
            "CREATE IDENTITY GRAPH g FROM edges WITH (options = '{\"limits\": 3}')",
            "22023",
        ),
        (
            "CREATE IDENTITY GRAPH g FROM edges WITH (colour = 'red')",
            "42601",
        ),
        ("REFRESH IDENTITY GRAPH nope", "42704"),
        ("DROP IDENTITY GRAPH nope", "42704"),
    ];
    for (sql, want) in cases {
        let e = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(code(&e), want, "{sql}: {e:?}");
    }
    // Nothing was left behind by the failed creations.
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'g\\_%'",
            &[],
        )
        .await
        .expect("tables")
        .get(0);
    assert_eq!(n, 0);

    client
        .batch_execute("CREATE IDENTITY GRAPH g FROM (SELECT * FROM edges WHERE left_type <> 'x')")
        .await
        .expect("create from a query over no edges");
    let e = client
        .batch_execute("CREATE IDENTITY GRAPH g FROM edges")
        .await
        .expect_err("duplicate");
    assert_eq!(code(&e), "42710");
    client
        .batch_execute("CREATE IDENTITY GRAPH IF NOT EXISTS g FROM edges")
        .await
        .expect("if not exists");
    let e = client
        .batch_execute("BEGIN; REFRESH IDENTITY GRAPH g")
        .await
        .expect_err("in a transaction");
    assert_eq!(code(&e), "25001");
    client.batch_execute("ROLLBACK").await.expect("rollback");
    // The server is still fine.
    client.batch_execute("SELECT 1").await.expect("alive");
}
