//! Protocol behaviour through tokio-postgres: extended protocol with parameters, binary
//! results, COPY both ways, errors with SQLSTATEs and positions, session isolation, auth,
//! limits and cancellation.

use std::time::Duration;

use futures::{SinkExt, StreamExt, pin_mut};
use tokio_postgres::SimpleQueryMessage;

use crate::common::{TestServer, code, connect};

/// Prepared statements infer parameter types and decode binary results of every type.
#[tokio::test]
async fn extended_protocol_round_trips_types() {
    let s = TestServer::start().await;
    let c = s.client().await;
    c.batch_execute(
        "CREATE TABLE t (id bigint, n integer, s smallint, d double precision, r real, b boolean, t text, day date, at timestamp, atz timestamptz, amount numeric(10,2), tags text[], nums bigint[])",
    )
    .await
    .unwrap();
    let n = c
        .execute(
            "INSERT INTO t (id, n, s, d, r, b, t, day, at, atz, amount, tags, nums) VALUES ($1, 7, 3, 2.5, 1.5, true, $2, DATE '2024-01-02', TIMESTAMP '2024-01-02 03:04:05', TIMESTAMP '2024-01-02 03:04:05', 12.34, ARRAY['x','y'], ARRAY[1,2,3])",
            &[&42i64, &"hello"],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let row = c
        .query_one(
            "SELECT id, n, s, d, r, b, t, day, at, tags, nums FROM t WHERE id = $1",
            &[&42i64],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, i32>(1), 7);
    assert_eq!(row.get::<_, i16>(2), 3);
    assert_eq!(row.get::<_, f64>(3), 2.5);
    assert_eq!(row.get::<_, f32>(4), 1.5);
    assert!(row.get::<_, bool>(5));
    assert_eq!(row.get::<_, String>(6), "hello");
    assert_eq!(
        row.get::<_, chrono::NaiveDate>(7),
        chrono::NaiveDate::from_ymd_opt(2024, 1, 2).unwrap()
    );
    assert_eq!(
        row.get::<_, chrono::NaiveDateTime>(8),
        chrono::NaiveDate::from_ymd_opt(2024, 1, 2)
            .unwrap()
            .and_hms_opt(3, 4, 5)
            .unwrap()
    );
    assert_eq!(
        row.get::<_, Vec<String>>(9),
        vec!["x".to_string(), "y".to_string()]
    );
    assert_eq!(row.get::<_, Vec<i64>>(10), vec![1, 2, 3]);
    // A statement prepared once sees rows inserted after it was prepared.
    let stmt = c.prepare("SELECT count(*) FROM t").await.unwrap();
    assert_eq!(c.query_one(&stmt, &[]).await.unwrap().get::<_, i64>(0), 1);
    c.execute("INSERT INTO t (id) VALUES (43)", &[])
        .await
        .unwrap();
    assert_eq!(c.query_one(&stmt, &[]).await.unwrap().get::<_, i64>(0), 2);
}

/// Errors carry the PostgreSQL SQLSTATE, syntax errors a position, and the connection lives on.
#[tokio::test]
async fn errors_have_sqlstates_and_positions() {
    let s = TestServer::start().await;
    let c = s.client().await;
    let e = c
        .simple_query("SELECT * FROM missing_table")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42P01");
    assert!(
        e.as_db_error().unwrap().message().contains("missing_table"),
        "{e}"
    );
    let e = c.simple_query("SELECT 1;\nSELEC 2").await.unwrap_err();
    assert_eq!(code(&e), "42601");
    let pos = e.as_db_error().unwrap().position().cloned();
    assert!(
        matches!(
            pos,
            Some(tokio_postgres::error::ErrorPosition::Original(11))
        ),
        "{pos:?}"
    );
    let e = c.query("SELECT 1 / 0", &[]).await.unwrap_err();
    assert_eq!(code(&e), "22012");
    let e = c.simple_query("CREATE DATABASE x").await.unwrap_err();
    assert_eq!(code(&e), "0A000");
    // Still usable.
    let rows = c.query("SELECT 1::bigint", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 1);
}

/// COPY FROM STDIN in text and CSV, COPY TO STDOUT, and a bad row that writes nothing.
#[tokio::test]
async fn copy_in_and_out() {
    let s = TestServer::start().await;
    let c = s.client().await;
    c.batch_execute("CREATE TABLE people (id bigint, name text, joined date, active boolean)")
        .await
        .unwrap();

    let sink = c.copy_in("COPY people FROM STDIN").await.unwrap();
    pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"1\tAnn\t2024-01-01\tt\n2\tB\\tob\t\\N\tf\n",
    ))
    .await
    .unwrap();
    sink.send(bytes::Bytes::from_static(b"3\tCe"))
        .await
        .unwrap();
    sink.send(bytes::Bytes::from_static(b"e\t2024-03-01\ttrue\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);

    let sink = c
        .copy_in("COPY people (id, name) FROM STDIN WITH (FORMAT csv, HEADER true)")
        .await
        .unwrap();
    pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"id,name\n4,\"Doe, \"\"Jr\"\"\"\n5,\n",
    ))
    .await
    .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);

    let rows = c
        .query("SELECT name FROM people ORDER BY id", &[])
        .await
        .unwrap();
    let names: Vec<Option<String>> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        names,
        vec![
            Some("Ann".into()),
            Some("B\tob".into()),
            Some("Cee".into()),
            Some("Doe, \"Jr\"".into()),
            None
        ]
    );

    // A bad value fails the whole COPY with its line, and nothing is written.
    let sink = c.copy_in("COPY people FROM STDIN").await.unwrap();
    pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(
        b"6\tok\t2024-01-01\tt\nseven\tbad\t2024-01-01\tt\n",
    ))
    .await
    .unwrap();
    let e = sink.finish().await.unwrap_err();
    assert_eq!(code(&e), "22P02", "{e}");
    assert!(e.as_db_error().unwrap().message().contains("line 2"), "{e}");
    assert_eq!(
        c.query_one("SELECT count(*) FROM people", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        5
    );

    let out = c
        .copy_out("COPY (SELECT id, name, active FROM people WHERE id <= 2 ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = out.map(|r| r.unwrap()).collect().await;
    let text: String = chunks
        .iter()
        .map(|b| String::from_utf8_lossy(b).to_string())
        .collect();
    assert_eq!(text, "1\tAnn\tt\n2\tB\\tob\tf\n");

    let out = c
        .copy_out("COPY people (id, name) TO STDOUT WITH (FORMAT csv, HEADER)")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = out.map(|r| r.unwrap()).collect().await;
    let text: String = chunks
        .iter()
        .map(|b| String::from_utf8_lossy(b).to_string())
        .collect();
    assert!(text.starts_with("id,name\n"), "{text}");
    assert!(text.contains("4,\"Doe, \"\"Jr\"\"\"\n"), "{text}");
}

/// Each connection has its own settings and temporary tables.
#[tokio::test]
async fn sessions_are_isolated() {
    let s = TestServer::start().await;
    let a = s.client().await;
    let b = s.client().await;
    a.batch_execute(
        "CREATE SCHEMA other; SET search_path TO other; CREATE TEMP TABLE mine (x int)",
    )
    .await
    .unwrap();
    let sp = b
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    assert_eq!(sp, "\"$user\", public");
    let e = b.simple_query("SELECT * FROM mine").await.unwrap_err();
    assert_eq!(code(&e), "42P01");
    // Permanent tables are shared.
    a.batch_execute("CREATE TABLE other.shared AS SELECT 1 AS x")
        .await
        .unwrap();
    let n = b
        .query_one("SELECT count(*) FROM other.shared", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(n, 1);
}

/// With users configured, SCRAM-SHA-256 is required and wrong passwords are refused.
#[tokio::test]
async fn scram_authentication() {
    let s = TestServer::start_with(|c| {
        c.users.insert(
            "alice".into(),
            tally::config::UserConfig {
                password: "s3cret".into(),
                superuser: true,
            },
        );
    })
    .await;
    let e = connect(s.port(), "alice", Some("wrong")).await.unwrap_err();
    assert_eq!(code(&e), "28P01", "{e}");
    let e = connect(s.port(), "mallory", Some("x")).await.unwrap_err();
    assert_eq!(code(&e), "28P01", "{e}");
    let c = connect(s.port(), "alice", Some("s3cret")).await.unwrap();
    c.batch_execute("CREATE USER bob WITH PASSWORD 'pw'")
        .await
        .unwrap();
    let bob = connect(s.port(), "bob", Some("pw")).await.unwrap();
    assert_eq!(
        bob.query_one("SELECT 1::int", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    // Bob is no superuser: he may not write server files nor create users.
    let e = bob
        .simple_query("COPY (SELECT 1) TO '/tmp/tally-should-not-exist.parquet'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");
    let e = bob
        .simple_query("CREATE USER eve WITH PASSWORD 'x'")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42501");
    bob.batch_execute("ALTER USER bob WITH PASSWORD 'pw2'")
        .await
        .unwrap();
    assert!(connect(s.port(), "bob", Some("pw")).await.is_err());
    assert!(connect(s.port(), "bob", Some("pw2")).await.is_ok());
}

/// Connections past the limit get 53300; the server keeps serving the others.
#[tokio::test]
async fn connection_limit() {
    let s = TestServer::start_with(|c| c.max_connections = 2).await;
    let a = s.client().await;
    let _b = s.client().await;
    let e = connect(s.port(), "tally", None).await.unwrap_err();
    assert_eq!(code(&e), "53300", "{e}");
    assert_eq!(
        a.query_one("SELECT 2::int", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
}

/// statement_timeout cancels a long query with 57014; a cancel request does too.
#[tokio::test]
async fn timeouts_and_cancel() {
    let s = TestServer::start().await;
    let c = s.client().await;
    c.batch_execute("SET statement_timeout = 200")
        .await
        .unwrap();
    let slow = "SELECT sum(a.value % 7) FROM generate_series(1, 30000000000) a";
    let e = c.simple_query(slow).await.unwrap_err();
    assert_eq!(code(&e), "57014", "{e}");
    c.batch_execute("SET statement_timeout = 0").await.unwrap();
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let e = c.simple_query(slow).await.unwrap_err();
    assert_eq!(code(&e), "57014", "{e}");
    canceller.await.unwrap().unwrap();
    let ok = c.simple_query("SELECT 1").await.unwrap();
    assert!(ok.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))));
}

/// External tables over CSV, NDJSON and Parquet files, and COPY TO a Parquet file.
#[tokio::test]
async fn external_tables_and_copy_to_file() {
    let s = TestServer::start().await;
    let c = s.client().await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("people.csv");
    std::fs::write(&csv, "id,name\n1,ann\n2,bob\n").unwrap();
    let json = dir.path().join("events.ndjson");
    std::fs::write(
        &json,
        "{\"id\":1,\"kind\":\"view\"}\n{\"id\":2,\"kind\":\"order\"}\n",
    )
    .unwrap();
    c.batch_execute(&format!(
        "CREATE EXTERNAL TABLE people STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true')",
        csv.display()
    ))
    .await
    .unwrap();
    c.batch_execute(&format!(
        "CREATE EXTERNAL TABLE ev STORED AS JSON LOCATION '{}'",
        json.display()
    ))
    .await
    .unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM people p JOIN ev e ON p.id = e.id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let parquet = dir.path().join("out.parquet");
    let msgs = c
        .simple_query(&format!(
            "COPY (SELECT * FROM people) TO '{}' (FORMAT parquet)",
            parquet.display()
        ))
        .await
        .unwrap();
    assert!(
        msgs.iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(2))),
        "{msgs:?}"
    );
    c.batch_execute(&format!(
        "CREATE EXTERNAL TABLE back STORED AS PARQUET LOCATION '{}'",
        parquet.display()
    ))
    .await
    .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM back", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let e = c
        .simple_query(
            "CREATE EXTERNAL TABLE nope STORED AS CSV LOCATION '/definitely/not/here.csv'",
        )
        .await
        .unwrap_err();
    assert_ne!(code(&e), "XX000", "{e}");
}

/// The HTTP health endpoint answers for load balancers.
#[tokio::test]
async fn health_endpoint() {
    let s = TestServer::start().await;
    let addr = s.server.as_ref().unwrap().http_addr;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await.unwrap();
    assert!(buf.starts_with("HTTP/1.1 200"), "{buf}");
    assert!(buf.contains("\"ok\""), "{buf}");
}

/// Result columns carry PostgreSQL's names: `count(*)` is `count`, `x::int` is `x`, an
/// expression is `?column?`.
#[tokio::test]
async fn result_column_names_follow_postgres() {
    let s = TestServer::start().await;
    let c = s.client().await;
    c.batch_execute("CREATE TABLE t (x int)").await.unwrap();
    let stmt = c
        .prepare("SELECT count(*), max(x), x::bigint, 1 + 1, x AS y FROM t GROUP BY x")
        .await
        .unwrap();
    let names: Vec<&str> = stmt.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, vec!["count", "max", "x", "?column?", "y"]);
}

/// RowDescription reports the types columns were declared with (Delta stores uuid, json,
/// jsonb and varchar as strings), with PostgreSQL's type modifiers (`numeric(10,2)`,
/// `varchar(20)`; none for a computed decimal), and for a column read straight from a table
/// that table's `pg_class.oid` and the column's `attnum` (what JDBC's getTableName and
/// isNullable follow). `$1::uuid` is described as uuid, and uuid and jsonb values decode
/// in binary.
#[tokio::test]
async fn row_description_follows_declared_types() {
    let s = TestServer::start().await;
    let c = s.client().await;
    c.batch_execute(
        "CREATE TABLE dt (id bigint, u uuid, j json, jb jsonb, v varchar(20), amount numeric(10,2), plain numeric); \
         INSERT INTO dt VALUES (1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": 1}', '{\"b\": 2}', 'x', 1.5, 2)",
    )
    .await
    .unwrap();
    let st = c
        .prepare(
            "SELECT id, u, j, jb, v, amount, plain, amount + 1 AS computed, $1::uuid AS p FROM dt",
        )
        .await
        .unwrap();
    use tokio_postgres::types::Type;
    assert_eq!(st.params(), &[Type::UUID]);
    let types: Vec<&Type> = st.columns().iter().map(|c| c.type_()).collect();
    assert_eq!(
        types,
        vec![
            &Type::INT8,
            &Type::UUID,
            &Type::JSON,
            &Type::JSONB,
            &Type::VARCHAR,
            &Type::NUMERIC,
            &Type::NUMERIC,
            &Type::NUMERIC,
            &Type::UUID
        ]
    );
    let typmods: Vec<i32> = st.columns().iter().map(|c| c.type_modifier()).collect();
    assert_eq!(
        typmods,
        vec![-1, -1, -1, -1, 24, (10 << 16 | 2) + 4, -1, -1, -1]
    );
    let oid: u32 = c
        .query_one(
            "SELECT CAST(oid AS bigint) FROM pg_catalog.pg_class WHERE relname = 'dt'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0) as u32;
    let origins: Vec<(Option<u32>, Option<i16>)> = st
        .columns()
        .iter()
        .map(|c| (c.table_oid(), c.column_id()))
        .collect();
    let expected: Vec<(Option<u32>, Option<i16>)> = (1..=7)
        .map(|n| (Some(oid), Some(n)))
        .chain([(None, None), (None, None)])
        .collect();
    assert_eq!(origins, expected);

    let u = uuid::Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
    let row = c.query_one(&st, &[&u]).await.unwrap();
    assert_eq!(row.get::<_, uuid::Uuid>(1), u);
    assert_eq!(
        row.get::<_, serde_json::Value>(3),
        serde_json::json!({"b": 2})
    );
    assert_eq!(row.get::<_, uuid::Uuid>(8), u);
    // INSERT parameters take the column's declared type.
    let ins = c
        .prepare("INSERT INTO dt (id, u) VALUES ($1, $2)")
        .await
        .unwrap();
    assert_eq!(ins.params(), &[Type::INT8, Type::UUID]);
    c.execute(&ins, &[&2i64, &u]).await.unwrap();
}

/// Text results print as PostgreSQL's: floats in shortest round-trip form without a `.0`
/// (`-2`, `1e+20`, `Infinity`), timestamps without a zero fraction and timestamptz with its
/// `+00`; casts to text agree.
#[tokio::test]
async fn text_output_follows_postgres() {
    let s = TestServer::start().await;
    let c = s.client().await;
    let rows = c
        .simple_query(
            "SELECT CAST(-2 AS double precision) AS a, CAST(1e20 AS double precision) AS b, \
             CAST('inf' AS double precision) AS c, CAST(0.1 AS real) AS d, \
             TIMESTAMP '2024-02-29 13:45:01' AS e, TIMESTAMP '2024-01-02 03:04:05.5' AS f, \
             CAST(TIMESTAMP '2024-01-02 03:04:05' AS timestamptz) AS g, \
             CAST(CAST(-2 AS double precision) AS text) AS h, CAST(CAST(1.5 AS real) AS text) AS i",
        )
        .await
        .unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .unwrap();
    let values: Vec<&str> = (0..row.len())
        .map(|i| row.get(i).unwrap_or("NULL"))
        .collect();
    assert_eq!(
        values,
        vec![
            "-2",
            "1e+20",
            "Infinity",
            "0.1",
            "2024-02-29 13:45:01",
            "2024-01-02 03:04:05.5",
            "2024-01-02 03:04:05+00",
            "-2",
            "1.5"
        ]
    );
}

/// Array parameters take the array type the client declared (`int2[]` is a list of int2,
/// not text), or the one a cast gives (`$1::bigint[]`), and round-trip in binary with NULL
/// elements, empty arrays and text that needs quoting. `$1::oid[]` is `oid[]`.
#[tokio::test]
async fn array_parameters_keep_their_types() {
    use tokio_postgres::types::Type;
    let s = TestServer::start().await;
    let c = s.client().await;

    let st = c
        .prepare_typed("SELECT $1", &[Type::INT2_ARRAY])
        .await
        .unwrap();
    assert_eq!(st.columns()[0].type_(), &Type::INT2_ARRAY);
    let row = c.query_one(&st, &[&vec![1i16, 2, 3]]).await.unwrap();
    assert_eq!(row.get::<_, Vec<i16>>(0), vec![1, 2, 3]);

    let st = c.prepare("SELECT $1::bigint[]").await.unwrap();
    assert_eq!(st.params(), &[Type::INT8_ARRAY]);
    assert_eq!(st.columns()[0].type_(), &Type::INT8_ARRAY);
    let values = vec![Some(1i64), None, Some(3_000_000_000)];
    let row = c.query_one(&st, &[&values]).await.unwrap();
    assert_eq!(row.get::<_, Vec<Option<i64>>>(0), values);
    let row = c.query_one(&st, &[&Vec::<i64>::new()]).await.unwrap();
    assert_eq!(row.get::<_, Vec<i64>>(0), Vec::<i64>::new());

    let st = c
        .prepare_typed("SELECT $1", &[Type::TEXT_ARRAY])
        .await
        .unwrap();
    assert_eq!(st.columns()[0].type_(), &Type::TEXT_ARRAY);
    let texts = vec![
        Some("a".to_string()),
        Some("b,c".to_string()),
        Some("q\"uote".to_string()),
        Some(String::new()),
        None,
        Some("{brace}".to_string()),
    ];
    let row = c.query_one(&st, &[&texts]).await.unwrap();
    assert_eq!(row.get::<_, Vec<Option<String>>>(0), texts);

    let st = c
        .prepare_typed("SELECT $1", &[Type::FLOAT8_ARRAY])
        .await
        .unwrap();
    let row = c.query_one(&st, &[&vec![1.5f64, -2.0]]).await.unwrap();
    assert_eq!(row.get::<_, Vec<f64>>(0), vec![1.5, -2.0]);

    let st = c
        .prepare("SELECT $1::oid[] AS o, CAST(NULL AS oid[]) AS n")
        .await
        .unwrap();
    assert_eq!(st.params(), &[Type::OID_ARRAY]);
    let types: Vec<&Type> = st.columns().iter().map(|c| c.type_()).collect();
    assert_eq!(types, vec![&Type::OID_ARRAY, &Type::OID_ARRAY]);
    let row = c.query_one(&st, &[&vec![20u32, 1016]]).await.unwrap();
    assert_eq!(row.get::<_, Vec<u32>>(0), vec![20, 1016]);
    assert_eq!(row.get::<_, Option<Vec<u32>>>(1), None);
}

/// asyncpg's type introspection query (`INTRO_LOOKUP_TYPES` of asyncpg 0.32, verbatim in
/// `fixtures/`), which it runs for each type it has no codec for (`bigint[]`): its parameter
/// and every column are of types asyncpg decodes without introspection (`oid[]`, not
/// `int4[]`, else it recurses), and it answers with the types and, one level deeper each,
/// their element and range subtypes, as PostgreSQL does.
#[tokio::test]
async fn asyncpg_type_introspection() {
    use tokio_postgres::types::Type;
    let s = TestServer::start().await;
    let c = s.client().await;
    let st = c
        .prepare(include_str!("fixtures/asyncpg_intro_lookup_types.sql"))
        .await
        .unwrap();
    assert_eq!(st.params(), &[Type::OID_ARRAY]);
    let columns: Vec<(&str, &Type)> = st.columns().iter().map(|c| (c.name(), c.type_())).collect();
    assert_eq!(
        columns,
        vec![
            ("oid", &Type::OID),
            ("ns", &Type::TEXT),
            ("name", &Type::TEXT),
            ("kind", &Type::CHAR),
            ("basetype", &Type::OID),
            ("elemtype", &Type::OID),
            ("elemdelim", &Type::CHAR),
            ("range_subtype", &Type::OID),
            ("attrtypoids", &Type::OID_ARRAY),
            ("attrnames", &Type::TEXT_ARRAY),
            ("depth", &Type::INT4),
            ("basetype_name", &Type::TEXT),
            ("elemtype_name", &Type::TEXT),
            ("range_subtype_name", &Type::TEXT),
        ]
    );
    // bigint[] and int4range[]: the array, its element, and the range's subtype.
    let rows = c.query(&st, &[&vec![1016u32, 3905]]).await.unwrap();
    type Info = (i32, u32, String, i8, u32, Option<i8>, Option<u32>, String);
    let mut got: Vec<Info> = rows
        .iter()
        .map(|r| {
            (
                r.get("depth"),
                r.get("oid"),
                r.get("name"),
                r.get("kind"),
                r.get("elemtype"),
                r.get("elemdelim"),
                r.get("range_subtype"),
                r.get("elemtype_name"),
            )
        })
        .collect();
    assert!(got.windows(2).all(|w| w[0].0 >= w[1].0), "deepest first");
    got.sort();
    let (b, r, comma) = (b'b' as i8, b'r' as i8, Some(b',' as i8));
    assert_eq!(
        got,
        vec![
            (0, 1016, "_int8".into(), b, 20, comma, None, "bigint".into()),
            (
                0,
                3905,
                "_int4range".into(),
                b,
                3904,
                comma,
                None,
                "int4range".into()
            ),
            (1, 20, "int8".into(), b, 0, None, None, "-".into()),
            (
                1,
                3904,
                "int4range".into(),
                r,
                0,
                None,
                Some(23),
                "-".into()
            ),
            (2, 23, "int4".into(), b, 0, None, None, "-".into()),
        ]
    );
}

/// A table dropped by another session after this one's transaction took its copy of the
/// catalog (dbt drops and renames tables while its other threads read
/// information_schema.columns) is left out of the listing instead of failing it with the
/// missing folder.
#[tokio::test]
async fn listing_columns_survives_a_concurrent_drop() {
    let s = TestServer::start().await;
    let a = s.client().await;
    let b = s.client().await;
    a.batch_execute("CREATE TABLE gone (x bigint); CREATE TABLE kept (y bigint)")
        .await
        .unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("DROP TABLE gone").await.unwrap();
    let rows = a
        .query(
            "SELECT table_name, column_name FROM information_schema.columns \
             WHERE table_schema = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    assert_eq!(names, vec!["kept".to_string()]);
    a.batch_execute("COMMIT").await.unwrap();
}

/// Several unaliased scalar subqueries in one select list run, and each column is named as
/// PostgreSQL names it (after the subquery's own column), duplicates included.
#[tokio::test]
async fn unaliased_scalar_subqueries_get_postgres_names() {
    let s = crate::common::TestServer::start().await;
    let c = s.client().await;
    c.batch_execute("CREATE TABLE sq (x bigint); INSERT INTO sq VALUES (1), (2), (3)")
        .await
        .expect("setup");
    let sql = "SELECT (SELECT count(*) FROM sq), (SELECT count(*) FROM sq WHERE x > 1), \
               (SELECT max(x) FROM sq), (SELECT x FROM sq WHERE x = 2), (SELECT 1)";
    let stmt = c.prepare(sql).await.expect("prepare");
    let names: Vec<&str> = stmt.columns().iter().map(|col| col.name()).collect();
    assert_eq!(names, ["count", "count", "max", "x", "?column?"]);
    let row = c.query_one(sql, &[]).await.expect("query");
    assert_eq!(row.get::<_, i64>(0), 3);
    assert_eq!(row.get::<_, i64>(1), 2);
    assert_eq!(row.get::<_, i64>(2), 3);
    assert_eq!(row.get::<_, i64>(3), 2);

    // COPY's CSV header names them the same way.
    let out = c
        .copy_out(
            "COPY (SELECT (SELECT count(*) FROM sq), (SELECT count(*) FROM sq WHERE x > 1), (SELECT max(x) FROM sq)) TO STDOUT WITH (FORMAT csv, HEADER)",
        )
        .await
        .expect("copy out");
    pin_mut!(out);
    let mut text = Vec::new();
    while let Some(chunk) = out.next().await {
        text.extend_from_slice(&chunk.expect("copy data"));
    }
    assert_eq!(String::from_utf8_lossy(&text), "count,count,max\n3,2,3\n");
}
