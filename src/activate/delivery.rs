//! The delivery engine: sends one COPY's batches to a destination, one at a time and in
//! query order (so rows with the same key are never reordered), and turns the failures that
//! are the normal case of external APIs into outcomes:
//!
//! - transient failures (5xx, 408, timeouts, dropped connections) are retried with
//!   exponential backoff and full jitter (`backon`'s `ExponentialBuilder`), or after the
//!   destination's own `Retry-After` when it sends one;
//! - 429 halves the destination's rate ([`super::limiter`]) and waits for `Retry-After`;
//! - a permanent rejection (4xx other than 408/429, a constraint violation) splits the batch
//!   in halves until the refused rows are alone; they go to `tally.rejected_rows`, and every
//!   other row is delivered;
//! - a fatal error (credentials, endpoint) or retries running out stops the COPY.
//!
//! A retried batch carries the same idempotency key, so destinations that honour it apply it
//! once. What was confirmed before a failure stays delivered (at-least-once, not atomic).

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::Value;

use super::destinations::{Batch, Destination, Mode, Record, SendError, batch_idempotency_key};
use super::limiter::AimdLimiter;
use super::rejected::RejectedRow;
use crate::error::{Result, TallyError};

/// Retry settings of one COPY.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries of one batch after transient failures before the COPY fails.
    pub max_retries: usize,
    /// Throttled (429) answers tolerated for one batch before the COPY fails.
    pub max_throttled: usize,
    /// First backoff delay.
    pub min_delay: Duration,
    /// Longest backoff delay.
    pub max_delay: Duration,
    /// Longest `Retry-After` honoured; longer ones are capped.
    pub max_retry_after: Duration,
    /// One request's time limit (a timeout is a transient failure).
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 8,
            max_throttled: 50,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
            timeout: Duration::from_secs(30),
        }
    }
}

/// What a COPY did, returned as its result row.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Rows the destination accepted.
    pub delivered: u64,
    /// Rows refused for good (in `tally.rejected_rows`).
    pub rejected: u64,
    /// Rows sent again after a transient failure or a throttle (a row retried twice counts
    /// twice).
    pub retried: u64,
    /// Requests made, retries and bisection included.
    pub requests: u64,
    /// Records removed by mirror mode (a COPY's, or a mirror sync's removals).
    pub removed: u64,
}

impl DeliveryStats {
    /// Adds another lane's counters.
    pub fn add(&mut self, other: &DeliveryStats) {
        self.delivered += other.delivered;
        self.rejected += other.rejected;
        self.retried += other.retried;
        self.requests += other.requests;
        self.removed += other.removed;
    }
}

/// One request of the delivery engine.
enum Request<'b> {
    /// A batch of rows.
    Send(&'b Batch<'b>),
    /// Removal of the records with these values of the key field.
    Remove { key: &'b str, keys: &'b [String] },
}

/// Delivers the batches of one COPY.
pub struct Deliverer<'a> {
    destination_name: &'a str,
    dest: &'a dyn Destination,
    limiter: Arc<AimdLimiter>,
    policy: RetryPolicy,
    copy_id: &'a str,
    mode: Mode,
    key: Option<&'a str>,
    /// Counters so far.
    pub stats: DeliveryStats,
    /// Rows refused so far and not yet written to `tally.rejected_rows`.
    pub rejected: Vec<RejectedRow>,
}

impl<'a> Deliverer<'a> {
    /// A deliverer for one COPY.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        destination_name: &'a str,
        dest: &'a dyn Destination,
        limiter: Arc<AimdLimiter>,
        policy: RetryPolicy,
        copy_id: &'a str,
        mode: Mode,
        key: Option<&'a str>,
    ) -> Self {
        Deliverer {
            destination_name,
            dest,
            limiter,
            policy,
            copy_id,
            mode,
            key,
            stats: DeliveryStats::default(),
            rejected: vec![],
        }
    }

    /// Refuses a row without sending it (a null key, say).
    pub fn reject_locally(&mut self, record: &Record, reason: &str) {
        self.reject(record, None, reason.to_string());
    }

    fn reject(&mut self, record: &Record, status: Option<u16>, response: String) {
        self.stats.rejected += 1;
        self.rejected.push(RejectedRow {
            destination: self.destination_name.to_string(),
            copy_id: self.copy_id.to_string(),
            ordinal: record.ordinal,
            key: record.key.clone(),
            row_json: Value::Object(record.fields.clone()).to_string(),
            status,
            response,
            rejected_at: chrono::Utc::now().timestamp_micros(),
        });
    }

    /// Delivers `records` (one batch, in query order), splitting it when the destination
    /// rejects it. Fails only when the COPY cannot go on.
    pub async fn deliver(&mut self, records: &[Record]) -> Result<()> {
        // Ranges still to send; the left half goes first, keeping query order.
        let mut todo = vec![(0usize, records.len())];
        while let Some((lo, hi)) = todo.pop() {
            if lo >= hi {
                continue;
            }
            let part = &records[lo..hi];
            match self.send_with_retries(part).await {
                Ok(()) => self.stats.delivered += part.len() as u64,
                Err(SendError::Rejected { status, body }) => {
                    if part.len() == 1 {
                        tracing::info!(
                            destination = self.destination_name,
                            copy_id = self.copy_id,
                            row = part[0].ordinal,
                            status,
                            "destination rejected a row"
                        );
                        self.reject(&part[0], status, body);
                    } else {
                        let mid = lo + part.len() / 2;
                        todo.push((mid, hi));
                        todo.push((lo, mid));
                    }
                }
                Err(SendError::PartlyRejected { rejected }) => {
                    let mut refused = vec![None; part.len()];
                    for r in rejected {
                        if let Some(slot) = refused.get_mut(r.index) {
                            *slot = Some((r.status, r.body));
                        }
                    }
                    for (record, verdict) in part.iter().zip(refused) {
                        match verdict {
                            Some((status, body)) => {
                                tracing::info!(
                                    destination = self.destination_name,
                                    copy_id = self.copy_id,
                                    row = record.ordinal,
                                    status,
                                    "destination rejected a row"
                                );
                                self.reject(record, status, body);
                            }
                            None => self.stats.delivered += 1,
                        }
                    }
                }
                Err(e) => return Err(self.stop(e)),
            }
        }
        Ok(())
    }

    /// Removes the records with `keys` at the destination (a mirror sync's rows that left
    /// its query), retrying transient failures and throttles and splitting a refused batch
    /// to find the keys at fault, like [`Deliverer::deliver`]. Refused keys go to
    /// `tally.rejected_rows` (numbered from `first_ordinal`) and their positions in `keys`
    /// are returned; fails only when the run cannot go on.
    pub async fn remove(&mut self, keys: &[String], first_ordinal: u64) -> Result<Vec<usize>> {
        let Some(key) = self.key else {
            return Err(TallyError::Internal("removing records needs a key".into()));
        };
        let mut refused = vec![];
        let mut todo = vec![(0usize, keys.len())];
        while let Some((lo, hi)) = todo.pop() {
            if lo >= hi {
                continue;
            }
            let part = &keys[lo..hi];
            let outcome = self
                .with_retries(part.len(), Request::Remove { key, keys: part })
                .await;
            match outcome {
                Ok(()) => self.stats.removed += part.len() as u64,
                Err(SendError::Rejected { status, body }) => {
                    if part.len() == 1 {
                        tracing::info!(
                            destination = self.destination_name,
                            copy_id = self.copy_id,
                            key = part[0],
                            status,
                            "destination refused to remove a record"
                        );
                        let record = Record {
                            ordinal: first_ordinal + lo as u64,
                            key: Some(part[0].clone()),
                            fields: serde_json::Map::from_iter([
                                ("op".to_string(), Value::from("remove")),
                                (key.to_string(), Value::from(part[0].as_str())),
                            ]),
                        };
                        self.reject(&record, status, body);
                        refused.push(lo);
                    } else {
                        let mid = lo + part.len() / 2;
                        todo.push((mid, hi));
                        todo.push((lo, mid));
                    }
                }
                Err(SendError::PartlyRejected { rejected }) => {
                    let mut verdicts = vec![None; part.len()];
                    for r in rejected {
                        if let Some(slot) = verdicts.get_mut(r.index) {
                            *slot = Some((r.status, r.body));
                        }
                    }
                    for (i, verdict) in verdicts.into_iter().enumerate() {
                        match verdict {
                            Some((status, body)) => {
                                let record = Record {
                                    ordinal: first_ordinal + (lo + i) as u64,
                                    key: Some(part[i].clone()),
                                    fields: serde_json::Map::from_iter([
                                        ("op".to_string(), Value::from("remove")),
                                        (key.to_string(), Value::from(part[i].as_str())),
                                    ]),
                                };
                                self.reject(&record, status, body);
                                refused.push(lo + i);
                            }
                            None => self.stats.removed += 1,
                        }
                    }
                }
                Err(e) => return Err(self.stop(e)),
            }
        }
        Ok(refused)
    }

    /// The COPY's error for a failure the engine does not handle itself.
    fn stop(&self, e: SendError) -> TallyError {
        match e {
            SendError::Fatal { code, message } => TallyError::Destination { code, message },
            other => TallyError::Destination {
                code: "08006",
                message: format!(
                    "giving up on destination {} after {} retries: {other}",
                    self.destination_name, self.policy.max_retries
                ),
            },
        }
    }

    /// Sends one batch, retrying transient failures and throttles.
    async fn send_with_retries(&mut self, records: &[Record]) -> Result<(), SendError> {
        let batch = Batch {
            copy_id: self.copy_id,
            mode: self.mode,
            key: self.key,
            records,
            idempotency_key: batch_idempotency_key(self.copy_id, records),
        };
        self.with_retries(records.len(), Request::Send(&batch))
            .await
    }

    /// Runs one request (about `rows` rows) through the rate limiter, with the request
    /// timeout, retrying transient failures with backoff and throttles after their
    /// `Retry-After`.
    async fn with_retries(&mut self, rows: usize, request: Request<'_>) -> Result<(), SendError> {
        let dest = self.dest;
        let copy_id = self.copy_id;
        let op = || async {
            match &request {
                Request::Send(batch) => dest.send(batch).await,
                Request::Remove { key, keys } => dest.remove(copy_id, key, keys).await,
            }
        };
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.policy.min_delay)
            .with_max_delay(self.policy.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.policy.max_retries)
            .build();
        let mut throttles = 0usize;
        loop {
            self.limiter.acquire().await;
            self.stats.requests += 1;
            let outcome = match tokio::time::timeout(self.policy.timeout, op()).await {
                Ok(r) => r,
                Err(_) => Err(SendError::Transient {
                    message: format!(
                        "destination {} did not answer within {} ms",
                        self.destination_name,
                        self.policy.timeout.as_millis()
                    ),
                    retry_after: None,
                }),
            };
            let wait = match outcome {
                Ok(()) => return Ok(()),
                Err(SendError::Throttled {
                    message,
                    retry_after,
                }) => {
                    self.limiter.throttled();
                    throttles += 1;
                    if throttles > self.policy.max_throttled {
                        return Err(SendError::Throttled {
                            message,
                            retry_after,
                        });
                    }
                    // Without Retry-After, the limiter's slower pace plus a backoff step.
                    match retry_after {
                        Some(d) => d.min(self.policy.max_retry_after),
                        None => backoff.next().unwrap_or(self.policy.max_delay),
                    }
                }
                Err(SendError::Transient {
                    message,
                    retry_after,
                }) => {
                    let Some(delay) = backoff.next() else {
                        return Err(SendError::Transient {
                            message,
                            retry_after,
                        });
                    };
                    tracing::debug!(
                        destination = self.destination_name,
                        copy_id = self.copy_id,
                        error = %message,
                        "transient delivery failure; retrying"
                    );
                    retry_after.map_or(delay, |d| d.min(self.policy.max_retry_after))
                }
                Err(other) => return Err(other),
            };
            self.stats.retried += rows as u64;
            tokio::time::sleep(wait).await;
        }
    }
}

/// Routes one COPY's records into batches on `n` lanes that deliver concurrently, so that a
/// destination answering in a few milliseconds is not limited to one batch per round trip.
///
/// Rows with a key always take the lane of their key's hash, and a lane sends its batches
/// one at a time in query order: rows of one key are never reordered, whatever the number
/// of lanes. Rows without a key (insert mode) fill one batch at a time, handed to the lanes
/// in turn, so batches may be confirmed out of query order. Each lane's channel holds one
/// batch, so a COPY holds at most about `2 x n` batches in memory besides those in flight.
pub struct LaneRouter {
    txs: Vec<tokio::sync::mpsc::Sender<Vec<Record>>>,
    pending: Vec<Vec<Record>>,
    batch_size: usize,
    next: usize,
}

/// The receiving ends of a [`LaneRouter`], one per lane.
pub type LaneReceivers = Vec<tokio::sync::mpsc::Receiver<Vec<Record>>>;

/// Every lane stopped (one failed): the COPY cannot go on, and the failing lane has the error.
#[derive(Debug)]
pub struct LanesClosed;

impl LaneRouter {
    /// A router over `lanes` lanes of `batch_size` rows.
    pub fn new(lanes: usize, batch_size: usize) -> (LaneRouter, LaneReceivers) {
        let lanes = lanes.max(1);
        let (txs, rxs) = (0..lanes).map(|_| tokio::sync::mpsc::channel(1)).unzip();
        let router = LaneRouter {
            txs,
            pending: (0..lanes).map(|_| Vec::with_capacity(batch_size)).collect(),
            batch_size: batch_size.max(1),
            next: 0,
        };
        (router, rxs)
    }

    /// Adds a record; waits while its lane's channel is full.
    pub async fn push(&mut self, record: Record) -> Result<(), LanesClosed> {
        let n = self.txs.len();
        let lane = match &record.key {
            Some(k) if n > 1 => {
                use std::hash::Hasher;
                // `DefaultHasher::new()` has fixed keys: a key takes the same lane in every
                // run, which keeps runs reproducible when debugging.
                let mut h = std::hash::DefaultHasher::new();
                h.write(k.as_bytes());
                (h.finish() % n as u64) as usize
            }
            Some(_) => 0,
            None => self.next,
        };
        self.pending[lane].push(record);
        if self.pending[lane].len() >= self.batch_size {
            let batch =
                std::mem::replace(&mut self.pending[lane], Vec::with_capacity(self.batch_size));
            self.txs[lane].send(batch).await.map_err(|_| LanesClosed)?;
            if lane == self.next {
                self.next = (self.next + 1) % n;
            }
        }
        Ok(())
    }

    /// Sends every partial batch and closes the lanes.
    pub async fn finish(mut self) -> Result<(), LanesClosed> {
        for (lane, tx) in self.txs.iter().enumerate() {
            let batch = std::mem::take(&mut self.pending[lane]);
            if !batch.is_empty() {
                tx.send(batch).await.map_err(|_| LanesClosed)?;
            }
        }
        Ok(())
    }
}

/// Delivers what one lane receives, in order, until the router finishes or a batch fails
/// for good. Refused rows are written to `tally.rejected_rows` whenever `flush_at` of them
/// are pending, so a COPY with many bad rows holds a bounded number of them.
pub async fn drain_lane(
    mut rx: tokio::sync::mpsc::Receiver<Vec<Record>>,
    deliverer: &mut Deliverer<'_>,
    warehouse: &crate::storage::Warehouse,
    flush_at: usize,
) -> Result<()> {
    while let Some(batch) = rx.recv().await {
        deliverer.deliver(&batch).await?;
        if deliverer.rejected.len() >= flush_at {
            super::rejected::append(warehouse, &deliverer.rejected).await?;
            deliverer.rejected.clear();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use async_trait::async_trait;
    use parking_lot::Mutex;
    use serde_json::Map;

    use super::*;

    /// Fails every other request transiently, rejects batches holding a "bad" row, and
    /// records what it applied.
    #[derive(Default)]
    struct Flaky {
        calls: Mutex<u64>,
        applied: Mutex<Vec<u64>>,
        seen_keys: Mutex<HashSet<String>>,
    }

    #[async_trait]
    impl Destination for Flaky {
        async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
            let n = {
                let mut c = self.calls.lock();
                *c += 1;
                *c
            };
            if n % 2 == 0 {
                return Err(SendError::Transient {
                    message: "503".into(),
                    retry_after: Some(Duration::ZERO),
                });
            }
            if batch.records.iter().any(|r| r.fields.contains_key("bad")) {
                return Err(SendError::Rejected {
                    status: Some(400),
                    body: "bad row".into(),
                });
            }
            if self.seen_keys.lock().insert(batch.idempotency_key.clone()) {
                self.applied
                    .lock()
                    .extend(batch.records.iter().map(|r| r.ordinal));
            }
            Ok(())
        }
    }

    fn record(i: u64, bad: bool) -> Record {
        let mut fields = Map::new();
        fields.insert("id".into(), Value::from(i));
        if bad {
            fields.insert("bad".into(), Value::Bool(true));
        }
        Record {
            ordinal: i,
            key: Some(i.to_string()),
            fields,
        }
    }

    /// Applies every record but those with a "bad" field, and says which in one answer.
    #[derive(Default)]
    struct PerRecord {
        applied: Mutex<Vec<u64>>,
        requests: Mutex<u64>,
    }

    #[async_trait]
    impl Destination for PerRecord {
        async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
            *self.requests.lock() += 1;
            let mut refused = vec![];
            for (index, r) in batch.records.iter().enumerate() {
                if r.fields.contains_key("bad") {
                    refused.push(crate::activate::destinations::RecordRejection {
                        index,
                        status: Some(400),
                        body: "invalid".into(),
                    });
                } else {
                    self.applied.lock().push(r.ordinal);
                }
            }
            crate::activate::destinations::partly_rejected(refused)
        }
    }

    #[tokio::test]
    async fn per_record_verdicts_reject_exactly_those_rows_without_resending() {
        let dest = PerRecord::default();
        let limiter = Arc::new(AimdLimiter::new(None));
        let mut d = Deliverer::new(
            "t",
            &dest,
            limiter,
            RetryPolicy::default(),
            "c1",
            Mode::Upsert,
            Some("id"),
        );
        let records: Vec<Record> = (0..10).map(|i| record(i, i == 3 || i == 7)).collect();
        d.deliver(&records).await.expect("delivers");
        assert_eq!(d.stats.delivered, 8);
        assert_eq!(d.stats.rejected, 2);
        assert_eq!(*dest.requests.lock(), 1);
        assert_eq!(dest.applied.lock().clone(), vec![0, 1, 2, 4, 5, 6, 8, 9]);
        let bad: Vec<u64> = d.rejected.iter().map(|r| r.ordinal).collect();
        assert_eq!(bad, vec![3, 7]);
    }

    #[tokio::test]
    async fn lanes_keep_each_keys_order_and_lose_nothing() {
        // 3 lanes of 4-row batches; 50 records over 7 keys.
        let (mut router, rxs) = LaneRouter::new(3, 4);
        let records: Vec<Record> = (0..50u64)
            .map(|i| Record {
                ordinal: i,
                key: Some(format!("k{}", i % 7)),
                fields: Map::new(),
            })
            .collect();
        let produce = async {
            for r in records.clone() {
                router.push(r).await.expect("lanes open");
            }
            router.finish().await.expect("lanes open");
        };
        let consume = futures::future::join_all(rxs.into_iter().map(|mut rx| async move {
            let mut got = vec![];
            while let Some(b) = rx.recv().await {
                assert!(b.len() <= 4);
                got.extend(
                    b.into_iter()
                        .map(|r| (r.key.unwrap_or_default(), r.ordinal)),
                );
            }
            got
        }));
        let ((), lanes) = tokio::join!(produce, consume);
        let mut all: Vec<u64> = lanes.iter().flatten().map(|(_, o)| *o).collect();
        all.sort_unstable();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
        for lane in &lanes {
            for key in 0..7 {
                let k = format!("k{key}");
                let order: Vec<u64> = lane
                    .iter()
                    .filter(|(kk, _)| *kk == k)
                    .map(|(_, o)| *o)
                    .collect();
                assert!(
                    order.windows(2).all(|w| w[0] < w[1]),
                    "{k} reordered: {order:?}"
                );
            }
        }
        // A key lives on one lane only.
        for key in 0..7 {
            let k = format!("k{key}");
            let lanes_with = lanes
                .iter()
                .filter(|l| l.iter().any(|(kk, _)| *kk == k))
                .count();
            assert_eq!(lanes_with, 1, "{k}");
        }
    }

    #[tokio::test]
    async fn retries_and_isolates_bad_rows_in_order() {
        let dest = Flaky::default();
        let policy = RetryPolicy {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            ..RetryPolicy::default()
        };
        let limiter = Arc::new(AimdLimiter::new(None));
        let mut d = Deliverer::new("t", &dest, limiter, policy, "c1", Mode::Upsert, Some("id"));
        let records: Vec<Record> = (0..10).map(|i| record(i, i == 3 || i == 7)).collect();
        d.deliver(&records).await.expect("delivers");
        assert_eq!(d.stats.delivered, 8);
        assert_eq!(d.stats.rejected, 2);
        assert!(d.stats.retried > 0);
        let applied = dest.applied.lock().clone();
        assert_eq!(applied, vec![0, 1, 2, 4, 5, 6, 8, 9]);
        let bad: Vec<u64> = d.rejected.iter().map(|r| r.ordinal).collect();
        assert_eq!(bad, vec![3, 7]);
    }
}
