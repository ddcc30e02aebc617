//! Pull collection over the real wire: `read_json_api` against a local HTTP API written
//! here (it requires a bearer token, paginates in every supported style, and answers one
//! 429 with Retry-After and one 500 before succeeding), and PostgreSQL and MariaDB tables
//! of this machine attached as read-only external tables.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::common::{TestServer, code, local_postgres, num, rows, unique};

const TOKEN: &str = "pull-s3cret-token-1234";
const RECORDS: u64 = 25;

/// What the mock API saw: every request's path and query, and its answer.
#[derive(Default)]
struct ApiState {
    log: Vec<(String, u16)>,
    /// Answers to give before the real one, by path and query.
    faults: HashMap<String, Vec<u16>>,
}

type Shared = Arc<Mutex<ApiState>>;

fn record(i: u64) -> Value {
    json!({
        "id": i,
        "name": format!("user {i}"),
        "score": i as f64 * 1.5,
        "active": i.is_multiple_of(2),
        "tags": ["a", i.to_string()],
        "address": {"city": "Lyon", "zip": 69000 + i},
        "note": if i == 3 { Value::Null } else { json!("n") },
    })
}

fn slice(from: u64, n: u64) -> Vec<Value> {
    (from..(from + n).min(RECORDS + 1)).map(record).collect()
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn api(
    req: Request<Incoming>,
    state: Shared,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let key = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    let n = |k: &str, d: u64| {
        query
            .get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(d)
    };
    let fault = state
        .lock()
        .faults
        .get_mut(&key)
        .and_then(|f| (!f.is_empty()).then(|| f.remove(0)));
    let resp = if !authorized {
        reply(401, json!({"error": "unauthorized"}))
    } else if let Some(status) = fault {
        let mut r = reply(status, json!({"error": "try again"}));
        if status == 429 {
            r.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
        }
        r
    } else {
        match path.as_str() {
            // Cursor: the cursor is the next id, in `meta.next`; records under `data`.
            "/cursor" => {
                let from = n("after", 1);
                let recs = slice(from, 10);
                let next = if from + 10 <= RECORDS {
                    json!((from + 10).to_string())
                } else {
                    Value::Null
                };
                reply(200, json!({"data": recs, "meta": {"next": next}}))
            }
            // Page numbers from 1, `per_page` records; the body is the array.
            "/page" => {
                let (page, per) = (n("page", 1), n("per_page", 10));
                reply(200, Value::Array(slice((page - 1) * per + 1, per)))
            }
            // Offset and limit; records under `items`.
            "/offset" => {
                let (off, lim) = (n("offset", 0), n("limit", 10));
                reply(200, json!({"items": slice(off + 1, lim)}))
            }
            // RFC 8288 Link headers.
            "/link" => {
                let page = n("p", 1);
                let mut r = reply(200, Value::Array(slice((page - 1) * 10 + 1, 10)));
                if page * 10 < RECORDS {
                    let link = format!(
                        "</link?p={}>; rel=\"next\", </link?p=1>; rel=\"first\"",
                        page + 1
                    );
                    r.headers_mut().insert(
                        hyper::header::LINK,
                        hyper::header::HeaderValue::from_str(&link).expect("link"),
                    );
                }
                r
            }
            _ => reply(404, json!({"error": "no such resource"})),
        }
    };
    state.lock().log.push((key, resp.status().as_u16()));
    Ok(resp)
}

async fn start_api(faults: HashMap<String, Vec<u16>>) -> (SocketAddr, Shared) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state: Shared = Arc::new(Mutex::new(ApiState {
        faults,
        ..Default::default()
    }));
    let st = state.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let st = st.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| api(req, st.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, state)
}

fn ids(rows: &[std::collections::BTreeMap<String, String>]) -> Vec<i64> {
    rows.iter().map(|r| num(r, "id")).collect()
}

fn set_token() {
    // SAFETY: nextest runs each test in its own process; this is set before any thread
    // of the test reads the environment.
    unsafe {
        std::env::set_var("PULL_TEST_TOKEN", TOKEN);
        std::env::set_var("PULL_TEST_WRONG_TOKEN", "wrong-s3cret-value-999");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_json_api_pages_in_every_style_through_faults() {
    set_token();
    let mut faults = HashMap::new();
    // The second cursor page answers 429 (Retry-After: 1), then 500, then the records.
    faults.insert("/cursor?after=11".to_string(), vec![429, 500]);
    let (addr, state) = start_api(faults).await;
    let server = TestServer::start().await;
    let c = server.client().await;
    let base = format!("http://{addr}");
    let want: Vec<i64> = (1..=RECORDS as i64).collect();

    let cursor = format!(
        "read_json_api('{base}/cursor', '{{\"records\": \"/data\", \"pagination\": \"cursor\", \"cursor_path\": \"meta.next\", \"cursor_param\": \"after\", \"bearer_env\": \"PULL_TEST_TOKEN\", \"min_delay_ms\": 50}}')"
    );
    let got = rows(
        &c,
        &format!("SELECT id, name, score, active, tags, address, note FROM {cursor}"),
    )
    .await;
    assert_eq!(
        ids(&got),
        want,
        "cursor pages, each record once and in order"
    );
    assert_eq!(got[0]["name"], "user 1");
    assert_eq!(got[1]["score"].parse::<f64>().ok(), Some(3.0));
    assert_eq!(got[1]["active"], "t");
    assert_eq!(got[0]["tags"], r#"["a","1"]"#);
    assert!(
        got[0]["address"].contains("\"city\":\"Lyon\""),
        "{:?}",
        got[0]
    );
    assert_eq!(got[2]["note"], "NULL");
    {
        let s = state.lock();
        let statuses: Vec<u16> = s
            .log
            .iter()
            .filter(|(k, _)| k == "/cursor?after=11")
            .map(|(_, st)| *st)
            .collect();
        assert_eq!(
            statuses,
            vec![429, 500, 200],
            "429 and 500 were retried: {:?}",
            s.log
        );
    }

    let page = format!(
        "read_json_api('{base}/page', '{{\"pagination\": \"page\", \"page_size\": 10, \"bearer_env\": \"PULL_TEST_TOKEN\"}}')"
    );
    assert_eq!(
        ids(&rows(&c, &format!("SELECT id FROM {page}")).await),
        want,
        "page numbers"
    );

    let offset = format!(
        "read_json_api('{base}/offset', '{{\"records\": \"items\", \"pagination\": \"offset\", \"page_size\": 7, \"bearer_env\": \"PULL_TEST_TOKEN\"}}')"
    );
    assert_eq!(
        ids(&rows(&c, &format!("SELECT id FROM {offset}")).await),
        want,
        "offset/limit"
    );

    let link =
        format!("read_json_api('{base}/link?p=1', '{{\"bearer_env\": \"PULL_TEST_TOKEN\"}}')");
    assert_eq!(
        ids(&rows(&c, &format!("SELECT id FROM {link}")).await),
        want,
        "Link rel=next"
    );

    // Caps: max_pages and max_rows, and explicit columns (no inference request).
    let capped = format!(
        "read_json_api('{base}/link?p=1', '{{\"bearer_env\": \"PULL_TEST_TOKEN\", \"max_pages\": 2, \"columns\": \"id integer, name text\"}}')"
    );
    let got = rows(&c, &format!("SELECT * FROM {capped}")).await;
    assert_eq!(ids(&got), (1..=20).collect::<Vec<i64>>());
    assert_eq!(got[0].len(), 2);
    let rows_capped = format!(
        "read_json_api('{base}/page', '{{\"pagination\": \"page\", \"page_size\": 10, \"max_rows\": 13, \"bearer_env\": \"PULL_TEST_TOKEN\"}}')"
    );
    assert_eq!(
        ids(&rows(&c, &format!("SELECT id FROM {rows_capped}")).await),
        (1..=13).collect::<Vec<i64>>()
    );

    // Into the warehouse.
    c.batch_execute("CREATE TABLE api_users (id bigint, name text, score double precision)")
        .await
        .expect("create");
    c.batch_execute(&format!(
        "INSERT INTO api_users SELECT id, name, score FROM {page}"
    ))
    .await
    .expect("insert");
    let got = rows(
        &c,
        "SELECT count(*) AS n, count(DISTINCT id) AS d, sum(id) AS s FROM api_users",
    )
    .await;
    assert_eq!(
        (num(&got[0], "n"), num(&got[0], "d"), num(&got[0], "s")),
        (25, 25, 325)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_json_api_errors_are_clear_and_keep_secrets() {
    set_token();
    let (addr, _state) = start_api(HashMap::new()).await;
    let server = TestServer::start().await;
    let c = server.client().await;
    let base = format!("http://{addr}");

    let err = c
        .simple_query(&format!(
            "SELECT * FROM read_json_api('{base}/page?api_key=querys3cret', '{{\"bearer_env\": \"PULL_TEST_WRONG_TOKEN\"}}')"
        ))
        .await
        .expect_err("401");
    let text = err
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert_eq!(code(&err), "28000", "{text}");
    assert!(
        text.contains("401") && text.contains(&format!("{addr}/page")),
        "{text}"
    );
    assert!(
        !text.contains("wrong-s3cret") && !text.contains("querys3cret"),
        "{text}"
    );

    let err = c
        .simple_query(&format!(
            "SELECT * FROM read_json_api('{base}/nothing', '{{\"bearer_env\": \"PULL_TEST_TOKEN\"}}')"
        ))
        .await
        .expect_err("404");
    let text = err
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert_eq!(code(&err), "42P01", "{text}");
    assert!(text.contains("404") && text.contains("/nothing"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");

    let err = c
        .simple_query(&format!(
            "SELECT * FROM read_json_api('{base}/page', '{{\"paging\": \"page\"}}')"
        ))
        .await
        .expect_err("unknown option");
    assert_eq!(code(&err), "22023");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_postgres_table_reads_filters_copies_and_refuses_writes() {
    let pg = local_postgres().await;
    let t = unique("pull_users");
    pg.batch_execute(&format!(
        "CREATE TABLE public.{t} (
            id integer PRIMARY KEY, big bigint, small smallint, name text, code varchar(10),
            active boolean, amount numeric(10,2), ratio double precision, r real, born date,
            seen timestamp, at timestamptz, doc jsonb, uid uuid, raw bytea);
         INSERT INTO public.{t} VALUES
           (1, 10000000000, 1, 'Ada', 'A1', true, 12.34, 0.5, 1.5, '1990-05-01',
            '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05+02', '{{\"k\": [1, 2]}}',
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff'),
           (2, NULL, NULL, 'Bob', NULL, false, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (3, 3, 3, 'o''Neil', 'C', true, 0.01, 2, 2, '2000-02-29', '2000-01-01', '2000-01-01 00:00:00+00', '[]', NULL, '\\x');
         INSERT INTO public.{t} (id, name, active) SELECT g, 'bulk ' || g, g % 3 = 0 FROM generate_series(100, 20099) g;"
    ))
    .await
    .expect("remote table");

    let mut server = TestServer::start().await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE EXTERNAL TABLE app_users STORED AS POSTGRES LOCATION 'postgres://postgres@127.0.0.1:5432/test' OPTIONS ('table' 'public.{t}')"
    ))
    .await
    .expect("attach");

    let got = rows(&c, "SELECT id, big, small, name, code, active, amount, ratio, r, born, seen, at, doc, uid, raw FROM app_users WHERE id < 10 ORDER BY id").await;
    assert_eq!(got.len(), 3);
    let a = &got[0];
    assert_eq!(a["big"], "10000000000");
    assert_eq!(a["name"], "Ada");
    assert_eq!(a["active"], "t");
    assert_eq!(a["amount"], "12.34");
    assert_eq!(a["born"], "1990-05-01");
    assert_eq!(a["seen"], "2024-01-02 03:04:05.123456");
    assert!(a["at"].starts_with("2024-01-02 01:04:05"), "{a:?}");
    assert_eq!(a["doc"], r#"{"k": [1, 2]}"#);
    assert_eq!(a["uid"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(a["raw"], "\\x00ff");
    assert_eq!(got[1]["big"], "NULL");
    assert_eq!(got[2]["name"], "o'Neil");

    // Projection and pushed filters, with a text equality (quotes escaped) and an AND.
    let got = rows(
        &c,
        "SELECT id FROM app_users WHERE name = 'o''Neil' AND active",
    )
    .await;
    assert_eq!(ids(&got), vec![3]);
    let got = rows(
        &c,
        "SELECT count(*) AS n FROM app_users WHERE id >= 100 AND active",
    )
    .await;
    assert_eq!(num(&got[0], "n"), 6666);
    let got = rows(&c, "SELECT id FROM app_users ORDER BY id LIMIT 2").await;
    assert_eq!(ids(&got), vec![1, 2]);

    // Into the warehouse, many batches.
    c.batch_execute(
        "CREATE TABLE users_copy (id integer, name text, amount numeric(10,2), at timestamptz);
         INSERT INTO users_copy SELECT id, name, amount, at FROM app_users",
    )
    .await
    .expect("copy");
    let got = rows(&c, "SELECT count(*) AS n, sum(id) AS s FROM users_copy").await;
    assert_eq!(num(&got[0], "n"), 20003);
    assert_eq!(num(&got[0], "s"), 6 + (100..20100).sum::<i64>());

    // Writes are refused, and nothing changed remotely.
    for sql in [
        "INSERT INTO app_users (id, name) VALUES (9, 'x')",
        "UPDATE app_users SET name = 'x' WHERE id = 1",
        "DELETE FROM app_users WHERE id = 1",
        "TRUNCATE app_users",
    ] {
        let err = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(code(&err), "25006", "{sql}: {err:?}");
        assert!(format!("{err:?}").contains("read-only"), "{sql}: {err:?}");
    }
    let n: i64 = pg
        .query_one(&format!("SELECT count(*) FROM public.{t}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 20003);

    // The attachment survives a restart.
    server.restart().await;
    let c = server.client().await;
    let got = rows(&c, "SELECT count(*) AS n FROM app_users").await;
    assert_eq!(num(&got[0], "n"), 20003);

    // A missing remote table and an unreachable server fail the CREATE, password unshown.
    let err = c
        .simple_query("CREATE EXTERNAL TABLE nope STORED AS POSTGRES LOCATION 'postgres://postgres@127.0.0.1:5432/test' OPTIONS ('table' 'public.no_such_table_here')")
        .await
        .expect_err("missing");
    assert_eq!(code(&err), "42P01", "{err:?}");
    let err = c
        .simple_query("CREATE EXTERNAL TABLE nope STORED AS POSTGRES LOCATION 'postgres://postgres:hunter2pw@127.0.0.1:1/test' OPTIONS ('table' 'x')")
        .await
        .expect_err("unreachable");
    assert_eq!(code(&err), "08001", "{err:?}");
    assert!(!format!("{err:?}").contains("hunter2pw"), "{err:?}");
    assert!(
        rows(
            &c,
            "SELECT * FROM information_schema.tables WHERE table_name = 'nope'"
        )
        .await
        .is_empty()
    );

    // The password can come from the server's environment instead of the URL.
    let err = c
        .simple_query(&format!("CREATE EXTERNAL TABLE nope STORED AS POSTGRES LOCATION 'postgres://postgres@127.0.0.1:5432/test' OPTIONS ('table' 'public.{t}', 'password_env' 'PULL_NO_SUCH_VAR')"))
        .await
        .expect_err("unset variable");
    assert_eq!(code(&err), "22023", "{err:?}");
    // SAFETY: nextest runs each test in its own process, and no other thread reads it now.
    unsafe { std::env::set_var("PULL_TEST_PG_PASSWORD", "envpw-123") };
    c.batch_execute(&format!("CREATE EXTERNAL TABLE app_users_env STORED AS POSTGRES LOCATION 'postgres://postgres@127.0.0.1:5432/test' OPTIONS ('table' 'public.{t}', 'password_env' 'PULL_TEST_PG_PASSWORD')"))
        .await
        .expect("attach with password_env");
    let got = rows(&c, "SELECT count(*) AS n FROM app_users_env WHERE id = 1").await;
    assert_eq!(num(&got[0], "n"), 1);
    c.batch_execute("DROP TABLE app_users_env")
        .await
        .expect("detach");

    c.batch_execute("DROP TABLE app_users")
        .await
        .expect("detach");
    let n: i64 = pg
        .query_one(&format!("SELECT count(*) FROM public.{t}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 20003, "DROP TABLE detaches only");
    pg.batch_execute(&format!("DROP TABLE public.{t}"))
        .await
        .expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_mysql_table_reads_filters_copies_and_refuses_writes() {
    use mysql_async::prelude::Queryable;
    let mut my = mysql_async::Conn::new(
        mysql_async::Opts::from_url("mysql://root@127.0.0.1:3306/test").expect("url"),
    )
    .await
    .expect("local MariaDB on 127.0.0.1:3306 (root, database test)");
    let t = unique("pull_orders");
    my.query_drop(format!(
        "CREATE TABLE {t} (
            id INT PRIMARY KEY, big BIGINT, ubig BIGINT UNSIGNED, tiny TINYINT, flag BOOLEAN,
            name VARCHAR(40), amount DECIMAL(10,2), ratio DOUBLE, f FLOAT, born DATE,
            seen DATETIME(6), at TIMESTAMP NULL, doc JSON, note TEXT, raw VARBINARY(8))"
    ))
    .await
    .expect("remote table");
    my.query_drop("SET time_zone = '+00:00'").await.expect("tz");
    my.query_drop(format!(
        "INSERT INTO {t} VALUES
          (1, 10000000000, 18446744073709551615, -5, TRUE, 'Ada', 12.34, 0.5, 1.5, '1990-05-01',
           '2024-01-02 03:04:05.123456', '2024-01-02 01:04:05', '{{\"k\": 1}}', 'back\\\\slash', X'00FF'),
          (2, NULL, NULL, NULL, FALSE, 'Bob', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
          (3, 3, 3, 3, TRUE, 'o''Neil', 0.01, 2, 2, '2000-02-29', '2000-01-01', '2000-01-01 00:00:00', '[]', '', X'')"
    ))
    .await
    .expect("rows");
    my.query_drop(format!(
        "INSERT INTO {t} (id, name, flag)
         SELECT 100 + a.n + 10 * b.n + 100 * c.n + 1000 * d.n, CONCAT('bulk ', a.n), (a.n % 3) = 0
           FROM (SELECT 0 n UNION SELECT 1 UNION SELECT 2 UNION SELECT 3 UNION SELECT 4 UNION SELECT 5 UNION SELECT 6 UNION SELECT 7 UNION SELECT 8 UNION SELECT 9) a,
                (SELECT 0 n UNION SELECT 1 UNION SELECT 2 UNION SELECT 3 UNION SELECT 4 UNION SELECT 5 UNION SELECT 6 UNION SELECT 7 UNION SELECT 8 UNION SELECT 9) b,
                (SELECT 0 n UNION SELECT 1 UNION SELECT 2 UNION SELECT 3 UNION SELECT 4 UNION SELECT 5 UNION SELECT 6 UNION SELECT 7 UNION SELECT 8 UNION SELECT 9) c,
                (SELECT 0 n UNION SELECT 1 UNION SELECT 2 UNION SELECT 3 UNION SELECT 4 UNION SELECT 5 UNION SELECT 6 UNION SELECT 7 UNION SELECT 8 UNION SELECT 9 UNION SELECT 10 UNION SELECT 11) d"
    ))
    .await
    .expect("bulk rows");

    let mut server = TestServer::start().await;
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE EXTERNAL TABLE shop_orders STORED AS MYSQL LOCATION 'mysql://root@127.0.0.1:3306/test' OPTIONS ('table' '{t}')"
    ))
    .await
    .expect("attach");

    let got = rows(&c, "SELECT id, big, ubig, tiny, flag, name, amount, ratio, f, born, seen, at, doc, note, raw FROM shop_orders WHERE id < 10 ORDER BY id").await;
    assert_eq!(got.len(), 3);
    let a = &got[0];
    assert_eq!(a["big"], "10000000000");
    assert_eq!(a["ubig"], "18446744073709551615");
    assert_eq!(a["tiny"], "-5");
    assert_eq!(a["flag"], "t");
    assert_eq!(a["amount"], "12.34");
    assert_eq!(a["born"], "1990-05-01");
    assert_eq!(a["seen"], "2024-01-02 03:04:05.123456");
    assert!(a["at"].starts_with("2024-01-02 01:04:05"), "{a:?}");
    assert!(a["doc"].contains("\"k\""), "{a:?}");
    assert_eq!(a["note"], "back\\slash");
    assert_eq!(a["raw"], "\\x00ff");
    assert_eq!(got[1]["big"], "NULL");
    assert_eq!(got[1]["flag"], "f");

    let got = rows(
        &c,
        "SELECT id FROM shop_orders WHERE name = 'o''Neil' AND flag",
    )
    .await;
    assert_eq!(ids(&got), vec![3]);
    let got = rows(&c, "SELECT count(*) AS n FROM shop_orders WHERE id >= 100").await;
    assert_eq!(num(&got[0], "n"), 12000);

    c.batch_execute(
        "CREATE TABLE orders_copy (id integer, name text, amount numeric(10,2));
         INSERT INTO orders_copy SELECT id, name, amount FROM shop_orders",
    )
    .await
    .expect("copy");
    let got = rows(&c, "SELECT count(*) AS n, sum(id) AS s FROM orders_copy").await;
    assert_eq!(num(&got[0], "n"), 12003);
    assert_eq!(num(&got[0], "s"), 6 + (100..12100).sum::<i64>());

    for sql in [
        "INSERT INTO shop_orders (id, name) VALUES (9, 'x')",
        "DELETE FROM shop_orders WHERE id = 1",
    ] {
        let err = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(code(&err), "25006", "{sql}: {err:?}");
    }

    server.restart().await;
    let c = server.client().await;
    let got = rows(&c, "SELECT count(*) AS n FROM shop_orders").await;
    assert_eq!(num(&got[0], "n"), 12003);

    let err = c
        .simple_query("CREATE EXTERNAL TABLE nope STORED AS MYSQL LOCATION 'mysql://root@127.0.0.1:3306/test' OPTIONS ('table' 'no_such_table_here')")
        .await
        .expect_err("missing");
    assert_eq!(code(&err), "42P01", "{err:?}");
    let err = c
        .simple_query("CREATE EXTERNAL TABLE nope STORED AS MYSQL LOCATION 'mysql://root:hunter2pw@127.0.0.1:1/test' OPTIONS ('table' 'x')")
        .await
        .expect_err("unreachable");
    assert_eq!(code(&err), "08001", "{err:?}");
    assert!(!format!("{err:?}").contains("hunter2pw"), "{err:?}");

    my.query_drop(format!("DROP TABLE {t}"))
        .await
        .expect("cleanup");
}
