//! COPY FROM STDIN over the wire: every fast-pathed type, CSV and text options, data cut
//! anywhere between CopyData messages, and failures that commit nothing and leave the
//! connection usable.

use bytes::Bytes;
use futures::{SinkExt, pin_mut};
use tokio_postgres::Client;

use crate::common::{TestServer, code};

/// Sends `chunks` as CopyData messages for `sql` and returns the COPY's row count or error.
async fn copy(c: &Client, sql: &str, chunks: &[&[u8]]) -> Result<u64, tokio_postgres::Error> {
    let sink = c.copy_in(sql).await?;
    pin_mut!(sink);
    for chunk in chunks {
        sink.send(Bytes::copy_from_slice(chunk)).await?;
    }
    sink.finish().await
}

async fn count(c: &Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// Every type the loader parses in place lands as the value PostgreSQL would store.
#[tokio::test]
async fn copy_from_reads_every_fast_type() {
    let s = TestServer::start().await;
    let c = s.client().await;
    c.batch_execute(
        "CREATE TABLE t (i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision, b boolean, \
         s varchar(10), n numeric(8,2), d date, ts timestamp, tz timestamptz, u uuid, j jsonb, \
         tags text[], nums bigint[])",
    )
    .await
    .unwrap();
    let rows = copy(
        &c,
        "COPY t FROM STDIN WITH (FORMAT csv, HEADER, NULL 'NULL')",
        &[
            b"i2,i4,i8,f4,f8,b,s,n,d,ts,tz,u,j,tags,nums\n",
            b"-3, 7 ,9223372036854775807,0.5,-1.25e2,yes,\"h\xc3",
            b"\xa9,\"\"llo\",12.345,2024-02-29,2024-01-02 03:04:05.678,2024-01-02 03:04:05+02,",
            b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,\"{\"\"k\"\": [1, 2]}\",\"{a,\"\"b c\"\",NULL}\",\"{1, -2}\"\n",
            b"NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL\n",
        ],
    )
    .await
    .unwrap();
    assert_eq!(rows, 2);
    let r = c
        .query_one(
            "SELECT i2, i4, i8, f4, f8, b, s, n::text, d::text, ts::text, tz::text, u::text, j::text, tags, nums FROM t WHERE i2 IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i16>(0), -3);
    assert_eq!(r.get::<_, i32>(1), 7);
    assert_eq!(r.get::<_, i64>(2), i64::MAX);
    assert_eq!(r.get::<_, f32>(3), 0.5);
    assert_eq!(r.get::<_, f64>(4), -125.0);
    assert!(r.get::<_, bool>(5));
    assert_eq!(r.get::<_, String>(6), "hé,\"llo");
    assert_eq!(r.get::<_, String>(7), "12.35");
    assert_eq!(r.get::<_, String>(8), "2024-02-29");
    assert_eq!(r.get::<_, String>(9), "2024-01-02 03:04:05.678");
    assert_eq!(r.get::<_, String>(10), "2024-01-02 01:04:05+00");
    assert_eq!(
        r.get::<_, String>(11),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    assert_eq!(r.get::<_, String>(12), "{\"k\": [1, 2]}");
    assert_eq!(
        r.get::<_, Vec<Option<String>>>(13),
        vec![Some("a".into()), Some("b c".into()), None]
    );
    assert_eq!(r.get::<_, Vec<i64>>(14), vec![1, -2]);
    let nulls: i64 = c
        .query_one(
            "SELECT count(*) FROM t WHERE i2 IS NULL AND s IS NULL AND n IS NULL AND tz IS NULL AND tags IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(nulls, 1);
}

/// Text format with its escapes and end marker, custom delimiters, CRLF, and columns
/// named in the COPY with the others left NULL.
#[tokio::test]
async fn copy_from_formats_and_options() {
    let s = TestServer::start().await;
    let c = s.client().await;
    c.batch_execute("CREATE TABLE p (id bigint, name text, note text)")
        .await
        .unwrap();
    let n = copy(
        &c,
        "COPY p (id, name) FROM STDIN",
        &[
            b"1\ttab\\there\r\n2\t\\N\r",
            b"\n3\toctal \\101\\x42\r\n\\.\r\n4\tafter the end\r\n",
        ],
    )
    .await
    .unwrap();
    assert_eq!(n, 3);
    let n = copy(
        &c,
        "COPY p (note, id) FROM STDIN WITH (FORMAT csv, DELIMITER '|', NULL '-', QUOTE '''', ESCAPE '\\')",
        &[b"'it\\'s|",b" here'|5\n-|6\n"],
    )
    .await
    .unwrap();
    assert_eq!(n, 2);
    let rows = c
        .query("SELECT id, name, note FROM p ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(i64, Option<String>, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, Some("tab\there".into()), None),
            (2, None, None),
            (3, Some("octal AB".into()), None),
            (5, None, Some("it's| here".into())),
            (6, None, None),
        ]
    );
    // Temporary tables take COPY too.
    c.batch_execute("CREATE TEMP TABLE tmp (id bigint, tags text[])")
        .await
        .unwrap();
    let n = copy(&c, "COPY tmp FROM STDIN", &[b"1\t{a,b}\n2\t\\N\n"])
        .await
        .unwrap();
    assert_eq!(n, 2);
    let tags: Vec<String> = c
        .query_one("SELECT tags FROM tmp WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tags, vec!["a".to_string(), "b".to_string()]);
    let e = copy(&c, "COPY p (id, id) FROM STDIN", &[b"1\t1\n"])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42701", "{e}");
}

/// A bad value after many batches have gone to the writer fails the whole COPY with its
/// line and SQLSTATE, commits nothing, and the connection carries on.
#[tokio::test]
async fn copy_from_failures_commit_nothing() {
    let s = TestServer::start().await;
    let c = s.client().await;
    c.batch_execute("CREATE TABLE f (id bigint, n integer, d date)")
        .await
        .unwrap();
    let mut good = Vec::new();
    for i in 1..=100_000 {
        good.extend_from_slice(format!("{i},{},2024-01-01\n", i % 7).as_bytes());
    }
    let cases: [(&[u8], &str, &str); 5] = [
        (
            b"100001,x,2024-01-01\n",
            "22P02",
            "line 100001, column n: \"x\"",
        ),
        (
            b"100001,3000000000,2024-01-01\n",
            "22003",
            "line 100001, column n",
        ),
        (b"100001,1,2024-13-01\n", "22008", "line 100001, column d"),
        (b"100001,1,someday\n", "22007", "line 100001, column d"),
        (b"100001,1\n", "22P04", "missing data for column \"d\""),
    ];
    for (bad, want_code, want_text) in cases {
        let chunks: Vec<&[u8]> = good.chunks(8192).chain([bad]).collect();
        let e = copy(&c, "COPY f FROM STDIN WITH (FORMAT csv)", &chunks)
            .await
            .unwrap_err();
        assert_eq!(code(&e), want_code, "{e}");
        assert!(message(&e).contains(want_text), "{}", message(&e));
        assert_eq!(count(&c, "f").await, 0);
    }
    // A bad first row fails the COPY while the client is still sending.
    let chunks: Vec<&[u8]> = [&b"0,x,2024-01-01\n"[..]]
        .into_iter()
        .chain(good.chunks(8192))
        .collect();
    let e = copy(&c, "COPY f FROM STDIN WITH (FORMAT csv)", &chunks)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22P02", "{e}");
    assert!(message(&e).contains("line 1, column n"), "{}", message(&e));
    // Extra columns are a format error.
    let e = copy(
        &c,
        "COPY f FROM STDIN WITH (FORMAT csv)",
        &[b"1,2,2024-01-01,4\n"],
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), "22P04", "{e}");
    assert!(message(&e).contains("extra data after last expected column"));
    // The client giving up mid-COPY commits nothing either.
    {
        let sink = c
            .copy_in("COPY f FROM STDIN WITH (FORMAT csv)")
            .await
            .unwrap();
        pin_mut!(sink);
        sink.send(Bytes::copy_from_slice(&good)).await.unwrap();
        // Dropped without finish: tokio-postgres sends CopyFail.
    }
    // The connection is usable and the same data loads once it is good.
    assert_eq!(count(&c, "f").await, 0);
    let chunks: Vec<&[u8]> = good.chunks(8192).collect();
    let n = copy(&c, "COPY f FROM STDIN WITH (FORMAT csv)", &chunks)
        .await
        .unwrap();
    assert_eq!(n, 100_000);
    assert_eq!(count(&c, "f").await, 100_000);
    let sum: i64 = c
        .query_one("SELECT sum(id) FROM f", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 5_000_050_000);
}
