//! Load generator for the tracking API benchmark: sends the generator's events in
//! `/v1/batch` requests of `--batch` messages over `--connections` keep-alive connections for
//! `--seconds`, and prints one JSON line with acknowledged events/s and ack latency
//! percentiles. Works against tally and against any server speaking the same API (the
//! PostgreSQL stand-in in `examples/pg_ingest_standin.rs`).
//!
//! With `--rate N` the connections together send at most N events/s (paced, for latency
//! measurements at a given load); without it they send as fast as the server acks. Every
//! request's `sentAt` is the wall-clock time it was sent (milliseconds, UTC), so a receiver
//! downstream (a route's destination) can measure end-to-end latency from it.
//!
//! Usage: ingest_load --url http://127.0.0.1:8080 --key KEY --events events.ndjson
//!        [--batch 100] [--connections 32] [--seconds 20] [--rate 20000]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A request body template: its bytes, its message count and where its messageIds start.
/// A request body template: its bytes, its message count, where its messageIds start and
/// where its `sentAt` value starts.
type Body = (Vec<u8>, usize, Vec<usize>, usize);

/// The placeholder `sentAt`, as wide as every value written over it.
const SENT_AT: &str = "2024-07-01T00:00:00.000Z";

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = format!("{}/v1/batch", arg(&args, "--url", "http://127.0.0.1:8080"));
    let key = arg(&args, "--key", "");
    let events = arg(&args, "--events", "events.ndjson");
    let batch: usize = arg(&args, "--batch", "100").parse()?;
    let conns: usize = arg(&args, "--connections", "32").parse()?;
    let seconds: u64 = arg(&args, "--seconds", "20").parse()?;
    let max_lines: usize = arg(&args, "--max-events", "200000").parse()?;
    let rate: f64 = arg(&args, "--rate", "0").parse()?;

    // Pre-built bodies, so the generator spends its CPU on sending, not on JSON.
    let text = std::fs::read_to_string(&events)?;
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty() && l.len() < 30_000)
        .take(max_lines)
        .collect();
    // Each body remembers where its messageIds are, so every pass over the data can give
    // them a new prefix: the server never sees a retry, as in a real stream.
    let bodies: Arc<Vec<Body>> = Arc::new(
        lines
            .chunks(batch)
            .map(|c| {
                let body = format!("{{\"batch\":[{}],\"sentAt\":\"{SENT_AT}\"}}", c.join(","));
                let sent_at = body.rfind(SENT_AT).unwrap_or(0);
                let marker = "\"messageId\":\"";
                let offsets: Vec<usize> = body
                    .match_indices(marker)
                    .map(|(i, _)| i + marker.len())
                    .filter(|&i| body.len() > i + 8)
                    .collect();
                (body.into_bytes(), c.len(), offsets, sent_at)
            })
            .collect(),
    );
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{key}:")
        )
    );
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    // A different messageId prefix in every run, so that a second run over the same file is
    // new events to the server, not retries it de-duplicates.
    let run_salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| {
            d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16)
        });
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (url, auth, bodies, acked, failed, stop) = (
            url.clone(),
            auth.clone(),
            bodies.clone(),
            acked.clone(),
            failed.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("client");
            let mut lat = Vec::with_capacity(100_000);
            let mut i = c;
            // Paced: this connection's share of the rate, one request per interval.
            let mut ticker = (rate > 0.0).then(|| {
                let per_conn = rate / conns as f64;
                let batch_events = bodies.first().map_or(1, |b| b.1).max(1) as f64;
                let mut t = tokio::time::interval(Duration::from_secs_f64(batch_events / per_conn));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while !stop.load(Ordering::Relaxed) {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let (template, n, offsets, sent_at) = &bodies[i % bodies.len()];
                let pass = (i / bodies.len()) as u32;
                i += conns;
                let mut body = template.clone();
                let prefix = format!("{:08x}", run_salt.wrapping_add(pass));
                for &o in offsets {
                    body[o..o + 8].copy_from_slice(prefix.as_bytes());
                }
                let now = chrono::Utc::now()
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string();
                if now.len() == SENT_AT.len() {
                    body[*sent_at..sent_at + now.len()].copy_from_slice(now.as_bytes());
                }
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.bytes().await;
                        lat.push(t.elapsed());
                        acked.fetch_add(*n as u64, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<Duration> = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    println!(
        "{{\"events_per_s\": {:.0}, \"requests\": {}, \"failed_requests\": {}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"max_ms\": {:.2}, \"acked_events\": {}}}",
        acked.load(Ordering::Relaxed) as f64 / elapsed,
        lat.len(),
        failed.load(Ordering::Relaxed),
        pct(0.50),
        pct(0.99),
        lat.last()
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN),
        acked.load(Ordering::Relaxed)
    );
    Ok(())
}
