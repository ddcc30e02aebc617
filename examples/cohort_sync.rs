//! A cohort is a view; a sync over it is the audience. This example starts tally in-process
//! over a temporary warehouse, loads a week of product events, defines the cohort "viewed a
//! product in the last 7 days but did not buy", and syncs it to a mock CRM that follows
//! HubSpot's batch-upsert contract and to Redis (a hash per user: the online feature store a
//! real-time model reads). Then a cohort member buys, and the next run of each sync sends
//! only the change: the Redis sync mirrors the cohort, so the buyer's hash is removed.
//!
//! Run it with Redis on 127.0.0.1:6379 (or `REDIS_URL`):
//!
//! ```sh
//! cargo run --example cohort_sync
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

type Contacts = Arc<Mutex<BTreeMap<String, Value>>>;

/// The mock CRM: `POST /crm/v3/objects/contacts/batch/upsert` with the Bearer token `demo`,
/// at most 100 inputs, upserting by `idProperty`, as HubSpot documents it.
async fn crm(
    req: Request<Incoming>,
    contacts: Contacts,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let answer = |status: u16, body: Value| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
        r
    };
    let authorized = req
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == b"Bearer demo");
    let path_ok = req.uri().path() == "/crm/v3/objects/contacts/batch/upsert";
    let body = req.into_body().collect().await?.to_bytes();
    if !authorized {
        return Ok(answer(
            401,
            json!({"status": "error", "category": "INVALID_AUTHENTICATION"}),
        ));
    }
    if !path_ok {
        return Ok(answer(404, json!({"status": "error"})));
    }
    let Ok(Value::Object(payload)) = serde_json::from_slice::<Value>(&body) else {
        return Ok(answer(
            400,
            json!({"status": "error", "category": "VALIDATION_ERROR"}),
        ));
    };
    let inputs = payload
        .get("inputs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if inputs.is_empty() || inputs.len() > 100 {
        return Ok(answer(
            400,
            json!({"status": "error", "category": "VALIDATION_ERROR"}),
        ));
    }
    let mut store = contacts.lock();
    for input in inputs {
        if let Some(id) = input.get("id").and_then(Value::as_str) {
            store.insert(id.to_string(), input["properties"].clone());
        }
    }
    Ok(answer(200, json!({"status": "COMPLETE", "results": []})))
}

async fn start_crm(contacts: Contacts) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let contacts = contacts.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| crm(req, contacts.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Prints a statement's result rows as `column=value` lines.
async fn show(c: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    println!("tally=> {sql}");
    for m in c.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            let cols: Vec<String> = r
                .columns()
                .iter()
                .enumerate()
                .map(|(i, col)| format!("{}={}", col.name(), r.get(i).unwrap_or("NULL")))
                .collect();
            println!("  {}", cols.join("  "));
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let contacts: Contacts = Arc::default();
    let crm_addr = start_crm(contacts.clone()).await?;

    let dir = tempfile::tempdir()?;
    let mut config = tally::config::Config::for_data(dir.path().to_string_lossy().to_string());
    config.pg_listen = "127.0.0.1:0".parse()?;
    config.http_listen = "127.0.0.1:0".parse()?;
    let server = tally::server::start(config).await?;
    let (c, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(server.pg_addr.port())
        .user("tally")
        .dbname("tally")
        .connect(NoTls)
        .await?;
    tokio::spawn(conn);

    // A week of events: four users view products, one of them already bought.
    c.batch_execute(
        "CREATE SCHEMA web;
         CREATE TABLE web.tracks (user_id text, email text, event text, product text, ts timestamptz);
         INSERT INTO web.tracks VALUES
           ('u1', 'ada@example.com',   'Product Viewed',  'boots',  now() - INTERVAL '2 days'),
           ('u2', 'brian@example.com', 'Product Viewed',  'jacket', now() - INTERVAL '1 day'),
           ('u2', 'brian@example.com', 'Order Completed', 'jacket', now() - INTERVAL '20 hours'),
           ('u3', 'chen@example.com',  'Product Viewed',  'scarf',  now() - INTERVAL '3 days'),
           ('u4', 'dana@example.com',  'Product Viewed',  'boots',  now() - INTERVAL '10 days');
         CREATE SCHEMA marts;
         CREATE VIEW marts.viewed_not_bought AS
           SELECT user_id, max(email) AS email, count(*) AS views, max(ts) AS last_viewed_at
           FROM web.tracks
           WHERE event = 'Product Viewed' AND ts > now() - INTERVAL '7 days'
             AND user_id NOT IN (SELECT user_id FROM web.tracks
                                 WHERE event = 'Order Completed' AND ts > now() - INTERVAL '7 days')
           GROUP BY user_id;",
    )
    .await?;
    c.batch_execute(&format!(
        "CREATE DESTINATION crm TYPE hubspot WITH (token = 'demo', base_url = 'http://{crm_addr}');
         CREATE DESTINATION features TYPE redis WITH (url = '{redis_url}', prefix = 'example:cohort');
         CREATE SYNC cohort_to_crm AS COPY (SELECT email, user_id, views FROM marts.viewed_not_bought)
           TO DESTINATION crm WITH (mode = 'upsert', key = 'email');
         CREATE SYNC cohort_to_redis AS COPY (SELECT user_id, views, last_viewed_at FROM marts.viewed_not_bought)
           TO DESTINATION features WITH (mode = 'mirror', key = 'user_id');"
    ))
    .await?;

    show(&c, "SELECT * FROM marts.viewed_not_bought ORDER BY user_id").await?;
    show(&c, "RUN SYNC cohort_to_crm").await?;
    show(&c, "RUN SYNC cohort_to_redis").await?;

    // u1 buys: they leave the cohort.
    c.batch_execute(
        "INSERT INTO web.tracks VALUES ('u1', 'ada@example.com', 'Order Completed', 'boots', now())",
    )
    .await?;
    show(&c, "RUN SYNC cohort_to_crm").await?;
    show(&c, "RUN SYNC cohort_to_redis").await?;
    show(
        &c,
        "SELECT sync, trigger, status, rows_added, rows_changed, rows_delivered FROM tally.sync_runs ORDER BY started_at",
    )
    .await?;

    println!("CRM contacts (the CRM keeps u1: upsert syncs never delete):");
    for (email, props) in contacts.lock().iter() {
        println!("  {email}: {props}");
    }
    let redis = redis::Client::open(redis_url.as_str())?;
    let mut r = redis.get_multiplexed_async_connection().await?;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("example:cohort:*")
        .query_async(&mut r)
        .await?;
    keys.sort();
    let bookkeeping: Vec<String> = keys
        .iter()
        .filter(|k| k.ends_with("__tally_keys"))
        .cloned()
        .collect();
    keys.retain(|k| !k.ends_with("__tally_keys"));
    println!("Redis feature hashes (mirror: u1's hash was removed):");
    for k in &keys {
        let h: BTreeMap<String, String> = redis::cmd("HGETALL").arg(k).query_async(&mut r).await?;
        println!("  {k}: {h:?}");
    }
    // Leave Redis as it was: the hashes and the mirror's key set.
    keys.extend(bookkeeping);
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut r).await?;
    }
    server.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
