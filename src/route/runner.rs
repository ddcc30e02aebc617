//! One route's task: read the log from the route's position, run the query over each
//! micro-batch, deliver the rows, save the position.
//!
//! Per-user order with independence between users: rows go out in log order, in batches.
//! When a batch fails (after a couple of quick retries), every user in it is *held*: the
//! user's rows wait in a queue of its own, retried with exponential backoff (or after the
//! destination's `Retry-After`), and every later row of that user joins the queue behind
//! them, while rows of other users keep going out. A held user's oldest row is given up when
//! it is older than `give_up_after` (into `tally.rejected_rows`, counted as failed), and the
//! user's next rows are tried. A batch the destination refuses for good is split until the
//! refused rows are alone; those go to `tally.rejected_rows` too.
//!
//! Memory is bounded: the route stops reading the log while `max_pending` rows wait, and the
//! log keeps what it has not read (within the retention budget).
//!
//! The saved position is the first event not finished (delivered, refused, given up or
//! filtered out), so after a crash only what was in flight, or held, is sent again, under
//! the same messageIds.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::RouteStats;
use super::events::{Event, Transformer};
use crate::activate::destinations::{self, Batch, Destination, Mode, Record, SendError};
use crate::activate::limiter::AimdLimiter;
use crate::activate::rejected::{self, RejectedRow};
use crate::catalog::{DestinationEntry, RouteEntry};
use crate::collect::wal::{Cursor, ReaderPos, RecordKind, Wal};
use crate::engine::Engine;
use crate::error::{Result, TallyError};

/// A route's settings from its `WITH (...)` options, checked.
#[derive(Debug, Clone)]
pub struct RouteOptions {
    /// How rows apply at the destination.
    pub mode: Mode,
    /// The key column for keyed destinations (Redis, HubSpot, ...).
    pub key: Option<String>,
    /// Rows per request.
    pub batch_size: usize,
    /// Log records read per micro-batch.
    pub read_batch: usize,
    /// Rows that may wait in memory behind failed sends before the route stops reading.
    pub max_pending: usize,
    /// Quick retries of a batch before its users are held.
    pub quick_retries: u32,
    /// An event still undelivered this long after it was received is given up.
    pub give_up_after: Duration,
    /// One request's time limit.
    pub timeout: Duration,
    /// Longest backoff between retries of a held user.
    pub max_backoff: Duration,
}

/// Options `WITH (...)` of CREATE ROUTE accepts.
pub const OPTIONS: &[&str] = &[
    "mode",
    "key",
    "batch_size",
    "read_batch",
    "max_pending",
    "give_up_after",
    "timeout_ms",
    "max_backoff_ms",
];

fn bad(message: String) -> TallyError {
    super::RouteError::BadOption(message).into()
}

/// Parses a duration: a number of seconds, or a number with `ms`, `s`, `min`, `h`, `d`
/// (`'90s'`, `'1h'`, `'7 days'`).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => n,
        "ms" | "millisecond" | "milliseconds" => n / 1000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => n * 60.0,
        "h" | "hour" | "hours" => n * 3600.0,
        "d" | "day" | "days" => n * 86_400.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

impl RouteOptions {
    /// Checks `options` against the destination's type.
    pub fn parse(
        options: &BTreeMap<String, String>,
        dest: &DestinationEntry,
    ) -> Result<RouteOptions> {
        for k in options.keys() {
            if !OPTIONS.contains(&k.as_str()) {
                return Err(bad(format!(
                    "unknown route option \"{k}\"; options: {}",
                    OPTIONS.join(", ")
                )));
            }
        }
        let spec = destinations::spec(&dest.destination_type)?;
        let key = options.get("key").cloned();
        let mode = match options.get("mode") {
            Some(m) => Mode::parse(m)?,
            None if key.is_some() || spec.key_required || !spec.modes.contains(&Mode::Insert) => {
                Mode::Upsert
            }
            None => Mode::Insert,
        };
        if mode == Mode::Mirror || !spec.modes.contains(&mode) {
            return Err(TallyError::Unsupported(format!(
                "a route to a {} destination cannot use mode {}",
                spec.name,
                mode.as_str()
            )));
        }
        if key.is_none() && (mode.needs_key() || spec.key_required) {
            return Err(bad(format!(
                "a route to a {} destination in mode {} needs key = '<column>'",
                spec.name,
                mode.as_str()
            )));
        }
        let number = |k: &str, default: u64| -> Result<u64> {
            match options.get(k).or_else(|| dest.options.get(k)) {
                Some(v) => v
                    .parse::<u64>()
                    .map_err(|_| bad(format!("{k} must be a whole number, not \"{v}\""))),
                None => Ok(default),
            }
        };
        let batch_size = number("batch_size", spec.default_batch as u64)? as usize;
        if batch_size == 0 || batch_size > spec.max_batch {
            return Err(bad(format!(
                "batch_size {batch_size} is out of range for {}: 1 to {} rows per request",
                spec.name, spec.max_batch
            )));
        }
        let give_up_after = match options.get("give_up_after") {
            Some(v) => parse_duration(v).ok_or_else(|| {
                bad(format!(
                    "give_up_after must be a duration like '90s', '1h' or '7 days', not \"{v}\""
                ))
            })?,
            None => Duration::from_secs(24 * 3600),
        };
        Ok(RouteOptions {
            mode,
            key,
            batch_size,
            read_batch: number("read_batch", 5_000)?.clamp(1, 100_000) as usize,
            max_pending: number("max_pending", 100_000)?.max(1) as usize,
            quick_retries: 2,
            give_up_after,
            timeout: Duration::from_millis(number("timeout_ms", 10_000)?.max(1)),
            max_backoff: Duration::from_millis(number("max_backoff_ms", 30_000)?.max(1)),
        })
    }
}

/// A row waiting to be delivered.
#[derive(Debug, Clone)]
struct Pending {
    seq: u64,
    record: Record,
    user: String,
    message_id: String,
    received_us: i64,
}

/// A user whose rows wait behind a failed send.
#[derive(Debug)]
struct Held {
    rows: VecDeque<Pending>,
    next_try: Instant,
    backoff: Duration,
}

/// How one row's send ended.
enum Outcome {
    Delivered,
    Rejected { status: Option<u16>, body: String },
    Failed(SendError),
}

/// Everything a route's task needs.
pub struct RouteTask {
    /// Route name.
    pub name: String,
    /// Its definition.
    pub entry: RouteEntry,
    /// The engine.
    pub engine: Arc<Engine>,
    /// The log it reads.
    pub wal: Arc<Wal>,
    /// Its counters.
    pub stats: Arc<RouteStats>,
    /// Whether it is paused.
    pub paused: watch::Receiver<bool>,
    /// Stops it.
    pub cancel: CancellationToken,
}

struct State {
    name: String,
    dest_name: String,
    source: String,
    engine: Arc<Engine>,
    wal: Arc<Wal>,
    stats: Arc<RouteStats>,
    opts: RouteOptions,
    transformer: Transformer,
    dest: Option<(DestinationEntry, Box<dyn Destination>, Arc<AimdLimiter>)>,
    /// Where reading continues.
    read_pos: ReaderPos,
    /// Events read and not finished: seq → (position, rows outstanding).
    unfinished: BTreeMap<u64, (Cursor, usize)>,
    /// Held users.
    held: HashMap<String, Held>,
    held_rows: usize,
    /// The last position saved.
    saved: ReaderPos,
    /// No request before this (a 429's Retry-After).
    not_before: Instant,
    rejected: Vec<RejectedRow>,
    copy_id: String,
}

impl RouteTask {
    /// Runs until cancelled. Errors that a user can fix (the destination's options, a
    /// failing destination) are reported in `tally.route_stats` and retried; the task ends
    /// only when cancelled.
    pub async fn run(mut self) {
        let name = self.name.clone();
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.run_once().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(route = %name, error = %e, "route stopped on an error; restarting it from its saved position");
                    *self.stats.last_error.lock() = Some(e.to_string());
                    self.stats.set_state("error");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.cancel.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        self.stats.set_state("stopped");
    }

    async fn run_once(&mut self) -> Result<()> {
        let doc = self.engine.catalog.current();
        let dest_entry = doc
            .destinations
            .get(&self.entry.destination)
            .cloned()
            .ok_or_else(|| TallyError::NotFound {
                kind: "destination",
                name: self.entry.destination.clone(),
            })?;
        let opts = RouteOptions::parse(&self.entry.options, &dest_entry)?;
        let transformer = Transformer::new(
            &self.engine,
            &self.entry.source,
            &self.entry.query,
            &self.entry.default_schema,
        )?;
        let start = match self.wal.reader(&self.name) {
            Some(p) if p.seq <= self.wal.durable().seq => p,
            Some(p) => {
                // The log was replaced (its folder emptied): the position means nothing there.
                tracing::warn!(route = %self.name, seq = p.seq, "route position is past the end of the log; starting at its end");
                let p = self.wal.end_position();
                self.wal.save_reader(&self.name, p)?;
                p
            }
            None => {
                let p = self.wal.end_position();
                self.wal.save_reader(&self.name, p)?;
                tracing::info!(route = %self.name, seq = p.seq, "new route starts at the end of the log");
                p
            }
        };
        let mut st = State {
            name: self.name.clone(),
            dest_name: self.entry.destination.clone(),
            source: self.entry.source.clone(),
            engine: self.engine.clone(),
            wal: self.wal.clone(),
            stats: self.stats.clone(),
            opts,
            transformer,
            dest: None,
            read_pos: start,
            unfinished: BTreeMap::new(),
            held: HashMap::new(),
            held_rows: 0,
            saved: start,
            not_before: Instant::now(),
            rejected: Vec::new(),
            copy_id: format!("route:{}", self.name),
        };
        let mut durable = self.wal.watch();
        let result = self.main_loop(&mut st, &mut durable).await;
        // Keep what was finished, whatever happened.
        let _ = st.flush_rejected().await;
        let _ = st.save().await;
        result
    }

    async fn main_loop(
        &mut self,
        st: &mut State,
        durable: &mut watch::Receiver<crate::collect::wal::Durable>,
    ) -> Result<()> {
        loop {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            if *self.paused.borrow() {
                st.stats.set_state("paused");
                st.save().await?;
                tokio::select! {
                    _ = self.paused.changed() => {}
                    _ = self.cancel.cancelled() => return Ok(()),
                }
                continue;
            }
            if let Err(e) = st.ensure_destination().await {
                *st.stats.last_error.lock() = Some(e.to_string());
                st.stats.set_state("waiting");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = self.cancel.cancelled() => return Ok(()),
                }
                continue;
            }
            st.give_up_old().await;
            st.retry_due(&self.cancel).await;
            let mut full = false;
            if st.held_rows < st.opts.max_pending {
                full = st.read_and_deliver(&self.cancel).await?;
            }
            st.flush_rejected().await?;
            st.save().await?;
            st.update_gauges();
            if full || self.cancel.is_cancelled() {
                continue;
            }
            // Wait for more of the log, the next retry, a pause or the end.
            let next_retry = st
                .held
                .values()
                .map(|h| h.next_try)
                .min()
                .map(|t| t.max(st.not_before));
            let sleep = async {
                match next_retry {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            };
            let reading = st.held_rows < st.opts.max_pending;
            let caught_up = st.read_pos.seq >= self.wal.durable().seq;
            if reading && !caught_up {
                continue;
            }
            tokio::select! {
                r = durable.changed(), if reading => {
                    if r.is_err() {
                        return Ok(());
                    }
                }
                _ = sleep => {}
                _ = self.paused.changed() => {}
                _ = self.cancel.cancelled() => return Ok(()),
            }
        }
    }
}

impl State {
    /// Builds (or rebuilds, after ALTER DESTINATION) the destination.
    async fn ensure_destination(&mut self) -> Result<()> {
        let doc = self.engine.catalog.current();
        let name = &self.dest_name;
        let entry = doc
            .destinations
            .get(name)
            .cloned()
            .ok_or_else(|| TallyError::NotFound {
                kind: "destination",
                name: name.clone(),
            })?;
        let stale = match &self.dest {
            Some((e, _, _)) => e.options != entry.options || e.altered_at != entry.altered_at,
            None => true,
        };
        if stale {
            let dest = destinations::build(name, &entry).await?;
            let spec = destinations::spec(&entry.destination_type)?;
            let ceiling = match entry.options.get("rate_limit") {
                Some(r) => r.parse::<f64>().ok(),
                None => spec.default_rate,
            };
            let limiter = self.engine.activation.limiter(name, ceiling);
            dest.begin(&self.copy_id, self.opts.mode, self.opts.key.as_deref())
                .await
                .map_err(|e| TallyError::Destination {
                    code: "08006",
                    message: e.to_string(),
                })?;
            self.dest = Some((entry, dest, limiter));
        }
        Ok(())
    }

    /// Reads the next micro-batch, runs the query, and delivers. Returns whether the read
    /// was full (more is waiting in the log).
    async fn read_and_deliver(&mut self, cancel: &CancellationToken) -> Result<bool> {
        if !self.wal.has_segment(self.read_pos.cursor) && self.read_pos.seq < self.wal.durable().seq
        {
            // The log outgrew its budget and dropped what this route had not read.
            let oldest = self.wal.oldest_cursor()?;
            if oldest.seq > self.read_pos.seq {
                let skipped = oldest.seq - self.read_pos.seq;
                self.stats.skipped.fetch_add(skipped, Ordering::Relaxed);
                tracing::error!(route = %self.name, skipped, "route skipped events the log deleted over its retention budget; REPLAY ROUTE re-sends them from the tables");
                self.unfinished.clear();
                self.held.clear();
                self.held_rows = 0;
                self.read_pos = oldest;
            }
        }
        let wal = self.wal.clone();
        let cursor = self.read_pos.cursor;
        let max = self.opts.read_batch;
        let (records, next) = tokio::task::spawn_blocking(move || wal.read_positioned(cursor, max))
            .await
            .map_err(|e| TallyError::Internal(format!("log reader failed: {e}")))??;
        let full = records.len() >= max;
        let Some(last_seq) = records.last().map(|(_, r)| r.seq) else {
            self.read_pos.cursor = next;
            return Ok(false);
        };
        let mut events = Vec::new();
        let mut seqs = Vec::new();
        for (pos, rec) in records {
            if rec.kind != RecordKind::Message || rec.source != self.source {
                continue;
            }
            let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&rec.payload) else {
                continue;
            };
            if let Some(e) = Event::from_body(body) {
                events.push(e);
                seqs.push((rec.seq, pos));
            }
        }
        self.read_pos = ReaderPos {
            cursor: next,
            seq: last_seq,
        };
        if events.is_empty() {
            return Ok(full);
        }
        let outputs = self.transformer.apply(&events).await?;
        let mut per_event = vec![0usize; events.len()];
        for o in &outputs {
            per_event[o.row] += 1;
        }
        let dropped = per_event.iter().filter(|n| **n == 0).count();
        self.stats
            .filtered
            .fetch_add(dropped as u64, Ordering::Relaxed);
        for (i, n) in per_event.iter().enumerate() {
            if *n > 0 {
                self.unfinished.insert(seqs[i].0, (seqs[i].1, *n));
            }
        }
        let mut rows = Vec::with_capacity(outputs.len());
        for o in outputs {
            let e = &events[o.row];
            rows.push(self.pending(seqs[o.row].0, e, o.fields));
        }
        // Rows go out in log order (the query may have reordered them).
        rows.sort_by_key(|p| p.seq);
        drop(events);
        let mut chunk: Vec<Pending> = Vec::with_capacity(self.opts.batch_size);
        for p in rows {
            if let Some(h) = self.held.get_mut(&p.user) {
                h.rows.push_back(p);
                self.held_rows += 1;
                continue;
            }
            chunk.push(p);
            if chunk.len() >= self.opts.batch_size {
                let c = std::mem::take(&mut chunk);
                self.send_fresh(c, cancel).await;
            }
        }
        if !chunk.is_empty() {
            self.send_fresh(chunk, cancel).await;
        }
        Ok(full)
    }

    fn pending(&self, seq: u64, e: &Event, mut fields: serde_json::Map<String, Value>) -> Pending {
        if !fields.contains_key("message_id") {
            fields.insert("message_id".into(), Value::String(e.message_id.clone()));
        }
        let key = match &self.opts.key {
            Some(k) => fields.get(k).and_then(|v| match v {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }),
            None => Some(e.message_id.clone()),
        };
        Pending {
            seq,
            record: Record {
                ordinal: seq,
                key,
                fields,
            },
            user: e.user.clone(),
            message_id: e.message_id.clone(),
            received_us: e.received_us,
        }
    }

    /// Sends rows of users not held; the users of rows that fail are held.
    async fn send_fresh(&mut self, chunk: Vec<Pending>, cancel: &CancellationToken) {
        // A row with a null key cannot be addressed at a keyed destination.
        let mut ok = Vec::with_capacity(chunk.len());
        for p in chunk {
            if self.opts.key.is_some() && p.record.key.is_none() {
                self.reject(&p, None, "the route's key column is null".into());
                self.finish(p.seq);
            } else {
                ok.push(p);
            }
        }
        if ok.is_empty() {
            return;
        }
        let outcomes = self.send_split(&ok, self.opts.quick_retries, cancel).await;
        let mut newly_held: HashSet<String> = HashSet::new();
        for (p, o) in ok.into_iter().zip(outcomes) {
            match o {
                Outcome::Delivered => self.delivered(&p),
                Outcome::Rejected { status, body } => {
                    self.reject(&p, status, body);
                    self.finish(p.seq);
                }
                Outcome::Failed(e) => {
                    let wait = self.failure_wait(&e, self.initial_backoff(&e));
                    if newly_held.insert(p.user.clone()) {
                        *self.stats.last_error.lock() = Some(e.to_string());
                    }
                    let h = self.held.entry(p.user.clone()).or_insert_with(|| Held {
                        rows: VecDeque::new(),
                        next_try: Instant::now() + wait,
                        backoff: wait,
                    });
                    h.rows.push_back(p);
                    self.held_rows += 1;
                }
            }
        }
    }

    fn initial_backoff(&self, e: &SendError) -> Duration {
        match e {
            SendError::Fatal { .. } => Duration::from_secs(5).min(self.opts.max_backoff),
            _ => Duration::from_millis(200).min(self.opts.max_backoff),
        }
    }

    /// How long to wait after `e`: its Retry-After when it has one, else `backoff` with
    /// jitter.
    fn failure_wait(&mut self, e: &SendError, backoff: Duration) -> Duration {
        let retry_after = match e {
            SendError::Transient { retry_after, .. } | SendError::Throttled { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        };
        if let Some(d) = retry_after {
            let d = d.min(self.opts.max_backoff.max(Duration::from_secs(300)));
            if matches!(e, SendError::Throttled { .. }) {
                self.not_before = self.not_before.max(Instant::now() + d);
            }
            return d;
        }
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        backoff.mul_f64(jitter)
    }

    /// Retries the held users whose time has come, oldest rows first, per user in order.
    async fn retry_due(&mut self, cancel: &CancellationToken) {
        let now = Instant::now();
        if now < self.not_before {
            return;
        }
        let mut due: Vec<(String, Instant)> = self
            .held
            .iter()
            .filter(|(_, h)| h.next_try <= now)
            .map(|(u, h)| (u.clone(), h.next_try))
            .collect();
        if due.is_empty() {
            return;
        }
        due.sort_by_key(|d| d.1);
        // One batch from the due users' queue heads.
        let mut batch: Vec<Pending> = Vec::new();
        let mut taken: Vec<(String, usize)> = Vec::new();
        for (user, _) in &due {
            if batch.len() >= self.opts.batch_size {
                break;
            }
            let Some(h) = self.held.get_mut(user) else {
                continue;
            };
            let room = self.opts.batch_size - batch.len();
            let n = h.rows.len().min(room);
            batch.extend(h.rows.drain(..n));
            taken.push((user.clone(), n));
        }
        self.held_rows = self.held_rows.saturating_sub(batch.len());
        self.stats
            .retried
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let outcomes = self.send_split(&batch, 0, cancel).await;
        // Put back what failed, at the front of each user's queue, in order.
        let mut failed: HashMap<String, Vec<Pending>> = HashMap::new();
        let mut last_err: Option<SendError> = None;
        for (p, o) in batch.into_iter().zip(outcomes) {
            match o {
                Outcome::Delivered => self.delivered(&p),
                Outcome::Rejected { status, body } => {
                    self.reject(&p, status, body);
                    self.finish(p.seq);
                }
                Outcome::Failed(e) => {
                    failed.entry(p.user.clone()).or_default().push(p);
                    last_err = Some(e);
                }
            }
        }
        for (user, _) in taken {
            let back = failed.remove(&user).unwrap_or_default();
            let restored = back.len();
            let wait = match (&last_err, restored > 0) {
                (Some(e), true) => {
                    let prev = self.held.get(&user).map(|h| h.backoff).unwrap_or_default();
                    let next = (prev * 2).clamp(Duration::from_millis(200), self.opts.max_backoff);
                    Some((self.failure_wait(e, next), next))
                }
                _ => None,
            };
            let Some(h) = self.held.get_mut(&user) else {
                continue;
            };
            for p in back.into_iter().rev() {
                h.rows.push_front(p);
            }
            self.held_rows += restored;
            match wait {
                Some((w, b)) => {
                    h.next_try = Instant::now() + w;
                    h.backoff = b;
                }
                None => h.next_try = Instant::now(),
            }
            if h.rows.is_empty() {
                self.held.remove(&user);
            }
        }
        match last_err {
            Some(e) => {
                *self.stats.last_error.lock() = Some(e.to_string());
            }
            None => {
                *self.stats.last_error.lock() = None;
            }
        }
    }

    /// Gives up the held rows older than `give_up_after`; the user's next rows are tried at
    /// once.
    async fn give_up_old(&mut self) {
        let limit_us = self.opts.give_up_after.as_micros() as i64;
        let now_us = chrono::Utc::now().timestamp_micros();
        let mut expired = Vec::new();
        let mut emptied = Vec::new();
        for (user, h) in self.held.iter_mut() {
            let before = expired.len();
            while h
                .rows
                .front()
                .is_some_and(|p| now_us - p.received_us > limit_us)
            {
                if let Some(p) = h.rows.pop_front() {
                    expired.push(p);
                }
            }
            if h.rows.is_empty() {
                emptied.push(user.clone());
            } else if expired.len() > before {
                h.next_try = Instant::now();
            }
        }
        for user in emptied {
            self.held.remove(&user);
        }
        for p in expired {
            self.held_rows = self.held_rows.saturating_sub(1);
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            let why = format!(
                "gave up after {} s without delivery: {}",
                self.opts.give_up_after.as_secs(),
                self.stats.last_error.lock().clone().unwrap_or_default()
            );
            tracing::warn!(route = %self.name, message_id = %p.message_id, "route gave up an event");
            self.push_rejected(&p, None, why);
            self.finish(p.seq);
        }
    }

    /// Sends `rows` in order, splitting on permanent rejections so the refused rows are
    /// alone. After a transient failure nothing later is sent (that would overtake the
    /// failed rows of the same users): the failed part and everything after it fail.
    async fn send_split(
        &mut self,
        rows: &[Pending],
        quick_retries: u32,
        cancel: &CancellationToken,
    ) -> Vec<Outcome> {
        let mut out: Vec<Option<Outcome>> = (0..rows.len()).map(|_| None).collect();
        let mut todo = vec![(0usize, rows.len())];
        while let Some((lo, hi)) = todo.pop() {
            if lo >= hi {
                continue;
            }
            match self.send_one(&rows[lo..hi], quick_retries, cancel).await {
                Ok(()) => {
                    for o in &mut out[lo..hi] {
                        *o = Some(Outcome::Delivered);
                    }
                }
                Err(SendError::Rejected { status, body }) if hi - lo == 1 => {
                    out[lo] = Some(Outcome::Rejected { status, body });
                }
                Err(SendError::PartlyRejected { rejected }) => {
                    for o in &mut out[lo..hi] {
                        *o = Some(Outcome::Delivered);
                    }
                    for r in rejected {
                        if let Some(o) = out[lo..hi].get_mut(r.index) {
                            *o = Some(Outcome::Rejected {
                                status: r.status,
                                body: r.body,
                            });
                        }
                    }
                }
                Err(SendError::Rejected { .. }) => {
                    let mid = lo + (hi - lo) / 2;
                    todo.push((mid, hi));
                    todo.push((lo, mid));
                }
                Err(e) => {
                    let message = e.to_string();
                    for (i, o) in out.iter_mut().enumerate().skip(lo) {
                        if o.is_none() {
                            *o = Some(Outcome::Failed(if i == lo {
                                clone_error(&e)
                            } else {
                                SendError::Transient {
                                    message: message.clone(),
                                    retry_after: None,
                                }
                            }));
                        }
                    }
                    break;
                }
            }
        }
        out.into_iter()
            .map(|o| {
                o.unwrap_or(Outcome::Failed(SendError::Transient {
                    message: "not sent".into(),
                    retry_after: None,
                }))
            })
            .collect()
    }

    /// One request (with up to `quick_retries` quick retries of transient failures).
    async fn send_one(
        &mut self,
        rows: &[Pending],
        quick_retries: u32,
        cancel: &CancellationToken,
    ) -> std::result::Result<(), SendError> {
        let Some((_, dest, limiter)) = &self.dest else {
            return Err(SendError::Transient {
                message: "destination not ready".into(),
                retry_after: None,
            });
        };
        let records: Vec<Record> = rows.iter().map(|p| p.record.clone()).collect();
        let ids: Vec<&[u8]> = rows.iter().map(|p| p.message_id.as_bytes()).collect();
        let mut parts: Vec<&[u8]> = vec![self.copy_id.as_bytes()];
        parts.extend(ids);
        let key = if rows.len() == 1 {
            rows[0].message_id.clone()
        } else {
            format!("tally-route-{}", &destinations::digest_hex(&parts)[..40])
        };
        let batch = Batch {
            copy_id: &self.copy_id,
            mode: self.opts.mode,
            key: self.opts.key.as_deref(),
            records: &records,
            idempotency_key: key,
        };
        let mut attempt = 0u32;
        loop {
            let now = Instant::now();
            if now < self.not_before {
                tokio::select! {
                    _ = tokio::time::sleep_until(self.not_before) => {}
                    _ = cancel.cancelled() => return Err(SendError::Transient { message: "route stopping".into(), retry_after: None }),
                }
            }
            limiter.acquire().await;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let sent = tokio::select! {
                r = tokio::time::timeout(self.opts.timeout, dest.send(&batch)) => r,
                _ = cancel.cancelled() => return Err(SendError::Transient { message: "route stopping".into(), retry_after: None }),
            };
            let result = match sent {
                Ok(r) => r,
                Err(_) => Err(SendError::Transient {
                    message: format!(
                        "destination did not answer within {} ms",
                        self.opts.timeout.as_millis()
                    ),
                    retry_after: None,
                }),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(SendError::Throttled {
                    message,
                    retry_after,
                }) => {
                    limiter.throttled();
                    return Err(SendError::Throttled {
                        message,
                        retry_after,
                    });
                }
                Err(SendError::Transient {
                    message,
                    retry_after,
                }) if attempt < quick_retries
                    && retry_after.is_none_or(|d| d < Duration::from_secs(1)) =>
                {
                    attempt += 1;
                    self.stats
                        .retried
                        .fetch_add(rows.len() as u64, Ordering::Relaxed);
                    tracing::debug!(route = %self.name, error = %message, "transient delivery failure; retrying");
                    let wait = retry_after.unwrap_or(Duration::from_millis(25u64 << attempt));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => return Err(SendError::Transient { message, retry_after: None }),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn delivered(&mut self, p: &Pending) {
        let now_us = chrono::Utc::now().timestamp_micros();
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        self.stats
            .record_latency(((now_us - p.received_us).max(0) / 1000) as u64);
        self.stats
            .last_delivered_us
            .store(now_us, Ordering::Relaxed);
        self.finish(p.seq);
    }

    fn reject(&mut self, p: &Pending, status: Option<u16>, response: String) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::info!(route = %self.name, message_id = %p.message_id, status, "destination rejected a routed event");
        self.push_rejected(p, status, response);
    }

    fn push_rejected(&mut self, p: &Pending, status: Option<u16>, response: String) {
        self.rejected.push(RejectedRow {
            destination: self.dest_name.clone(),
            copy_id: self.copy_id.clone(),
            ordinal: p.seq,
            key: Some(p.message_id.clone()),
            row_json: Value::Object(p.record.fields.clone()).to_string(),
            status,
            response,
            rejected_at: chrono::Utc::now().timestamp_micros(),
        });
    }

    fn finish(&mut self, seq: u64) {
        if let Some(e) = self.unfinished.get_mut(&seq) {
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 {
                self.unfinished.remove(&seq);
            }
        }
    }

    async fn flush_rejected(&mut self) -> Result<()> {
        if self.rejected.is_empty() {
            return Ok(());
        }
        rejected::append(self.engine.warehouse(), &self.rejected).await?;
        self.rejected.clear();
        Ok(())
    }

    /// The position to save: the first unfinished event, else where reading continues.
    fn position(&self) -> ReaderPos {
        match self.unfinished.iter().next() {
            Some((seq, (cursor, _))) => ReaderPos {
                cursor: *cursor,
                seq: seq.saturating_sub(1),
            },
            None => self.read_pos,
        }
    }

    /// Saves the position (an fsync, so off the async workers).
    async fn save(&mut self) -> Result<()> {
        let pos = self.position();
        if pos != self.saved {
            let wal = self.wal.clone();
            let name = self.name.clone();
            tokio::task::spawn_blocking(move || wal.save_reader(&name, pos))
                .await
                .map_err(|e| TallyError::Internal(format!("saving a route position: {e}")))??;
            self.saved = pos;
        }
        Ok(())
    }

    fn update_gauges(&self) {
        let s = &self.stats;
        s.pending.store(self.held_rows as u64, Ordering::Relaxed);
        s.lag_events.store(
            self.wal.durable().seq.saturating_sub(self.saved.seq),
            Ordering::Relaxed,
        );
        let oldest = self
            .held
            .values()
            .filter_map(|h| h.rows.front().map(|p| p.received_us))
            .min()
            .unwrap_or(0);
        s.oldest_unfinished_us.store(oldest, Ordering::Relaxed);
        s.set_state(if self.held.is_empty() {
            "running"
        } else {
            "waiting"
        });
    }
}

fn clone_error(e: &SendError) -> SendError {
    match e {
        SendError::Transient {
            message,
            retry_after,
        } => SendError::Transient {
            message: message.clone(),
            retry_after: *retry_after,
        },
        SendError::Throttled {
            message,
            retry_after,
        } => SendError::Throttled {
            message: message.clone(),
            retry_after: *retry_after,
        },
        SendError::Rejected { status, body } => SendError::Rejected {
            status: *status,
            body: body.clone(),
        },
        SendError::PartlyRejected { rejected } => SendError::PartlyRejected {
            rejected: rejected.clone(),
        },
        SendError::Fatal { code, message } => SendError::Fatal {
            code,
            message: message.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_duration("7 days"),
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("soon"), None);
    }
}
