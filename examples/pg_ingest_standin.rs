//! A stand-in of RudderStack's gateway design, for the ingest benchmark: an HTTP server that
//! takes `/v1/batch` requests, parses and checks each message, hands requests to a pool of
//! database writers that gather whatever requests are waiting (up to 5 ms), COPY their
//! messages into PostgreSQL in one transaction, commit, and only then acknowledge them. This
//! is how rudder-server's gateway makes events durable (batched writes into its PostgreSQL
//! jobs database), so it is the fair peer for tally's write-ahead log.
//!
//! Usage: pg_ingest_standin --listen 127.0.0.1:8091 --pg "host=127.0.0.1 user=postgres dbname=test"
//!        [--writers 4]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use futures::SinkExt;
use serde_json::Value;
use tokio::sync::{Mutex, mpsc, oneshot};

type Job = (Vec<String>, oneshot::Sender<bool>);

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

async fn batch(State(tx): State<mpsc::Sender<Job>>, body: Bytes) -> StatusCode {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let Some(msgs) = v.get("batch").and_then(Value::as_array) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut rows = Vec::with_capacity(msgs.len());
    for m in msgs {
        if m.get("userId").is_none() && m.get("anonymousId").is_none() {
            continue;
        }
        let id = m.get("messageId").and_then(Value::as_str).unwrap_or("");
        // COPY text format: tab-separated, backslashes escaped.
        rows.push(format!("{}\t{}\n", id, m.to_string().replace('\\', "\\\\")));
    }
    let (done, wait) = oneshot::channel();
    if tx.send((rows, done)).await.is_err() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match wait.await {
        Ok(true) => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn writer(
    pg: String,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
) -> Result<(), tokio_postgres::Error> {
    let (mut client, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    loop {
        let mut jobs = Vec::new();
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(j) => jobs.push(j),
                None => return Ok(()),
            }
            let deadline = tokio::time::Instant::now() + Duration::from_millis(5);
            while jobs.len() < 200 {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(j)) => jobs.push(j),
                    _ => break,
                }
            }
        }
        let ok = async {
            let tx = client.transaction().await?;
            let sink = tx
                .copy_in("COPY standin_events (message_id, payload) FROM STDIN")
                .await?;
            futures::pin_mut!(sink);
            let mut buf = String::new();
            for (rows, _) in &jobs {
                for r in rows {
                    buf.push_str(r);
                }
            }
            sink.send(Bytes::from(buf)).await?;
            sink.finish().await?;
            tx.commit().await
        }
        .await
        .is_ok();
        for (_, done) in jobs {
            let _ = done.send(ok);
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let listen = arg(&args, "--listen", "127.0.0.1:8091");
    let pg = arg(&args, "--pg", "host=127.0.0.1 user=postgres dbname=test");
    let writers: usize = arg(&args, "--writers", "4").parse()?;
    let (client, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(
            "DROP TABLE IF EXISTS standin_events; \
             CREATE TABLE standin_events (id bigserial PRIMARY KEY, message_id text, payload jsonb, \
             received_at timestamptz DEFAULT now())",
        )
        .await?;
    let (tx, rx) = mpsc::channel::<Job>(10_000);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..writers {
        let (pg, rx) = (pg.clone(), rx.clone());
        tokio::spawn(async move {
            if let Err(e) = writer(pg, rx).await {
                eprintln!("writer failed: {e}");
            }
        });
    }
    let app = axum::Router::new()
        .route("/v1/batch", axum::routing::post(batch))
        .route("/health", axum::routing::get(|| async { "ok" }))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("stand-in listening on {listen}");
    axum::serve(listener, app).await?;
    Ok(())
}
