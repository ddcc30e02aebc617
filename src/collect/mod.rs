//! Collection: the Segment/RudderStack-compatible tracking API.
//!
//! An HTTP request ([`http`]) is authenticated by its source's write key, each message is
//! validated and normalised ([`message`]), de-duplicated by messageId, appended to the
//! write-ahead log ([`wal`]) and acknowledged once the log is fsynced. The [`flush`]er moves
//! the log into Delta tables laid out as the Segment warehouse destinations do ([`layout`]).
//! Sources are catalog objects managed with SQL ([`sources`]); `tally.sources` and
//! `tally.source_stats` show them ([`system`]). A source can be put under a tracking plan
//! ([`plans`]) that flags or blocks events off the plan; [`shapes`] learns what a source's
//! events usually look like and flags anomalies. Data tally fetches itself (HTTP APIs and
//! attached databases) is [`pull`] collection.

pub mod flush;
pub mod http;
pub mod layout;
pub mod message;
pub mod plans;
pub mod pull;
pub mod shapes;
pub mod sources;
pub mod system;
pub mod table_fn;
pub mod wal;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::catalog::PlanMode;
use crate::config::CollectConfig;
use crate::engine::Engine;
use crate::error::{Result, TallyError};
use message::{BatchDefaults, Kind, Rejection};
use wal::{NewRecord, RecordKind, Wal};

/// Counters of one source since the server started.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Messages accepted (durable in the log).
    pub accepted: AtomicU64,
    /// Messages that went to `_rejected` (tracking plan blocks included).
    pub rejected: AtomicU64,
    /// Messages stored with tracking plan violations (flag mode).
    pub flagged: AtomicU64,
    /// Messages acknowledged but not stored again because their messageId was seen.
    pub duplicates: AtomicU64,
    /// Log records (messages and rejections) written into tables.
    pub flushed: AtomicU64,
    /// Request bytes received.
    pub bytes: AtomicU64,
    /// When the last message arrived (microseconds since the epoch, 0 if never).
    pub last_received_us: AtomicI64,
    /// When the last flush into this source's tables finished (microseconds, 0 if never).
    pub last_flushed_us: AtomicI64,
}

/// Per-source counters, shared by the HTTP API, the flusher and `tally.source_stats`.
#[derive(Debug, Default)]
pub struct Stats {
    sources: DashMap<String, Arc<SourceCounters>>,
}

impl Stats {
    /// The counters of `source`.
    pub fn source(&self, source: &str) -> Arc<SourceCounters> {
        if let Some(c) = self.sources.get(source) {
            return c.clone();
        }
        self.sources.entry(source.to_string()).or_default().clone()
    }

    /// Every source with counters, by name.
    pub fn snapshot(&self) -> Vec<(String, Arc<SourceCounters>)> {
        let mut v: Vec<_> = self
            .sources
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn flushed(&self, source: &str, n: u64) {
        let c = self.source(source);
        c.flushed.fetch_add(n, Ordering::Relaxed);
        c.last_flushed_us
            .store(Utc::now().timestamp_micros(), Ordering::Relaxed);
    }
}

/// Recently seen messageIds, bounded by age and by count.
struct Dedupe {
    seen: HashMap<u128, i64>,
    order: VecDeque<(u128, i64)>,
    window_secs: i64,
    max: usize,
}

impl Dedupe {
    /// Remembers `key`; false when it was already seen within the window.
    fn insert(&mut self, key: u128, now: i64) -> bool {
        while let Some(&(k, t)) = self.order.front() {
            if self.order.len() >= self.max || t < now - self.window_secs {
                self.order.pop_front();
                if self.seen.get(&k) == Some(&t) {
                    self.seen.remove(&k);
                }
            } else {
                break;
            }
        }
        if let Some(&t) = self.seen.get(&key)
            && t >= now - self.window_secs
        {
            return false;
        }
        self.seen.insert(key, now);
        self.order.push_back((key, now));
        true
    }

    fn forget(&mut self, key: u128) {
        self.seen.remove(&key);
    }
}

/// What happened to the messages of one request.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Messages stored.
    pub accepted: usize,
    /// Messages acknowledged without storing them again (seen messageId).
    pub duplicates: usize,
    /// Messages that went to `_rejected`, by position in the request.
    pub rejected: Vec<(usize, Rejection)>,
    /// Messages a tracking plan in block mode sent to `_rejected`. They are acknowledged as
    /// received (Segment answers 200 for them too): the message was well-formed and is kept
    /// in `_rejected`, and a client retry would not change the verdict (within the dedupe
    /// window its messageId counts as seen).
    pub blocked: usize,
    /// Messages stored with tracking plan violations (flag mode).
    pub flagged: usize,
}

/// One message of a request: its JSON text as received.
pub struct RawMessage<'a> {
    /// The message's text.
    pub text: &'a str,
}

/// The running collector.
pub struct Collector {
    engine: Arc<Engine>,
    wal: Arc<Wal>,
    config: CollectConfig,
    keys: RwLock<(u64, HashMap<String, Arc<str>>)>,
    last_key_refresh: Mutex<std::time::Instant>,
    dedupe: Mutex<Dedupe>,
    hashers: (RandomState, RandomState),
    plans: plans::PlanCache,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").field("wal", &self.wal).finish()
    }
}

/// The log folder for `engine`'s warehouse, per the settings (see [`CollectConfig::wal_dir`]).
fn wal_root(engine: &Engine) -> PathBuf {
    if let Some(dir) = &engine.config.collect.wal_dir {
        return dir.clone();
    }
    let root = &engine.warehouse().root;
    match root.scheme() {
        "file" => root
            .to_file_path()
            .map(|p| p.join("_tally").join("wal"))
            .unwrap_or_else(|_| PathBuf::from("tally-wal")),
        _ => PathBuf::from("tally-wal"),
    }
}

/// Takes the first log slot (`<root>/0`, `<root>/1`, ...) no other running server holds.
/// Each server on a shared warehouse writes its own log, and a restarted server takes over
/// whatever a crashed one left in a free slot, so nothing waits forever.
fn claim_slot(root: &std::path::Path) -> Result<(PathBuf, std::fs::File)> {
    for n in 0..64 {
        let dir = root.join(n.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| {
            TallyError::Config(format!(
                "cannot create the write-ahead log folder {}: {e}",
                dir.display()
            ))
        })?;
        let lock_path = dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| TallyError::Config(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => return Ok((dir, lock)),
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(TallyError::Config(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )));
            }
        }
    }
    Err(TallyError::Config(format!(
        "every write-ahead log slot under {} is held by a running server",
        root.display()
    )))
}

impl Collector {
    /// Opens the log, replays what a previous run left in it, and starts the flusher.
    pub async fn start(
        engine: Arc<Engine>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Arc<Collector>, JoinHandle<()>)> {
        let config = engine.config.collect.clone();
        let (dir, lock) = claim_slot(&wal_root(&engine))?;
        let wal = Wal::open(&dir, config.wal_segment_bytes)?;
        let pending = wal.durable().seq.saturating_sub(wal.flushed());
        if pending > 0 {
            tracing::info!(events = pending, log = %dir.display(), "replaying collected events left in the write-ahead log");
        }
        let dedupe = Dedupe {
            seen: HashMap::new(),
            order: VecDeque::new(),
            window_secs: config.dedupe_window_secs as i64,
            max: config.dedupe_max_ids.max(1),
        };
        let collector = Arc::new(Collector {
            engine: engine.clone(),
            wal: wal.clone(),
            config: config.clone(),
            keys: RwLock::new((0, HashMap::new())),
            last_key_refresh: Mutex::new(std::time::Instant::now()),
            dedupe: Mutex::new(dedupe),
            hashers: (RandomState::new(), RandomState::new()),
            plans: plans::PlanCache::default(),
        });
        collector.remember_pending_ids()?;
        let flusher =
            flush::Flusher::new(engine.clone(), wal, config, engine.collect_stats.clone());
        let handle = tokio::spawn(async move {
            flusher.run(shutdown).await;
            drop(lock);
        });
        Ok((collector, handle))
    }

    /// The messageIds still in the log count as seen, so a client retrying across a restart
    /// is not stored twice.
    fn remember_pending_ids(&self) -> Result<()> {
        let mut cursor = self.wal.start_cursor()?;
        let now = Utc::now().timestamp();
        loop {
            let (records, next) = self.wal.read(cursor, 10_000)?;
            if records.is_empty() {
                return Ok(());
            }
            let mut dd = self.dedupe.lock();
            for r in records.iter().filter(|r| r.kind == RecordKind::Message) {
                if let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&r.payload)
                    && let Some(Value::String(id)) = body.get("messageId")
                {
                    dd.insert(self.id_key(&r.source, id), now);
                }
            }
            cursor = next;
        }
    }

    fn id_key(&self, source: &str, id: &str) -> u128 {
        let a = self.hashers.0.hash_one((source, id)) as u128;
        let b = self.hashers.1.hash_one((source, id)) as u128;
        (a << 64) | b
    }

    /// The write-ahead log.
    pub fn wal(&self) -> &Arc<Wal> {
        &self.wal
    }

    /// The source a write key belongs to. A key not known locally triggers one catalog
    /// refresh (at most one per second), so keys created on another server work too.
    pub async fn source_for_key(&self, key: &str) -> Option<Arc<str>> {
        let version = self.engine.catalog.current().version;
        {
            let keys = self.keys.read();
            if keys.0 == version
                && let Some(s) = keys.1.get(key)
            {
                return Some(s.clone());
            }
        }
        let refresh = {
            let mut last = self.last_key_refresh.lock();
            if last.elapsed() >= std::time::Duration::from_secs(1) {
                *last = std::time::Instant::now();
                true
            } else {
                false
            }
        };
        let doc = if refresh {
            self.engine.catalog.refresh().await.ok()?
        } else {
            self.engine.catalog.current()
        };
        let mut keys = self.keys.write();
        if keys.0 != doc.version {
            keys.1 = doc
                .sources
                .iter()
                .map(|(name, s)| (s.write_key.clone(), Arc::<str>::from(name.as_str())))
                .collect();
            keys.0 = doc.version;
        }
        keys.1.get(key).cloned()
    }

    /// Validates, de-duplicates and durably logs the messages of one request. Returns once
    /// every accepted message and every rejection is fsynced.
    ///
    /// A source under a tracking plan has each new message checked here, before the log
    /// (see [`plans`] for why here and not in the flusher): in flag mode the message is
    /// logged with its violations under [`plans::META_KEY`], in block mode a violating
    /// message is logged as a rejection instead.
    pub async fn ingest(
        &self,
        source: &Arc<str>,
        messages: Vec<RawMessage<'_>>,
        kind: Option<Kind>,
        defaults: &BatchDefaults,
        request_bytes: usize,
    ) -> Result<Outcome> {
        let received_at = Utc::now();
        let now = received_at.timestamp();
        let mut out = Outcome::default();
        let mut records = Vec::with_capacity(messages.len());
        let mut claimed = Vec::new();
        let plan = self
            .plans
            .for_source(&self.engine.catalog.current(), source);
        for (i, raw) in messages.into_iter().enumerate() {
            let parsed: std::result::Result<Value, Rejection> = serde_json::from_str(raw.text)
                .map_err(|e| Rejection {
                    code: "invalid_json",
                    message: format!("message is not valid JSON: {e}"),
                });
            match parsed
                .and_then(|v| message::normalize(v, kind, defaults, received_at, raw.text.len()))
            {
                Ok(mut n) => {
                    // Only the collector records plan outcomes.
                    n.body.remove(plans::META_KEY);
                    if n.id_given {
                        let key = self.id_key(source, &n.message_id);
                        if !self.dedupe.lock().insert(key, now) {
                            out.duplicates += 1;
                            continue;
                        }
                        claimed.push(key);
                    }
                    if let Some(active) = &plan {
                        let violations = active.plan.check(n.kind, &n.body);
                        match active.mode {
                            PlanMode::Block if !violations.is_empty() => {
                                let rej = Rejection {
                                    code: "tracking_plan",
                                    message: active.block_reason(&violations),
                                };
                                let extra = serde_json::json!({
                                    "plan": active.plan.name,
                                    "violations": violations,
                                });
                                let mut rec = rejection_record(source, &rej, raw.text, received_at);
                                add_to_payload(&mut rec, extra);
                                records.push(rec);
                                out.blocked += 1;
                                continue;
                            }
                            PlanMode::Block => {}
                            PlanMode::Flag => {
                                if !violations.is_empty() {
                                    out.flagged += 1;
                                }
                                n.body
                                    .insert(plans::META_KEY.into(), active.meta(&violations));
                            }
                        }
                    }
                    let payload = serde_json::to_vec(&Value::Object(n.body)).map_err(|e| {
                        TallyError::Internal(format!("cannot encode a message: {e}"))
                    })?;
                    records.push(NewRecord {
                        kind: RecordKind::Message,
                        source: source.clone(),
                        payload,
                    });
                    out.accepted += 1;
                }
                Err(rej) => {
                    records.push(rejection_record(source, &rej, raw.text, received_at));
                    out.rejected.push((i, rej));
                }
            }
        }
        if let Err(e) = self.wal.append(records).await {
            let mut dd = self.dedupe.lock();
            for k in claimed {
                dd.forget(k);
            }
            return Err(e);
        }
        let c = self.engine.collect_stats.source(source);
        c.accepted.fetch_add(out.accepted as u64, Ordering::Relaxed);
        c.rejected
            .fetch_add((out.rejected.len() + out.blocked) as u64, Ordering::Relaxed);
        c.flagged.fetch_add(out.flagged as u64, Ordering::Relaxed);
        c.duplicates
            .fetch_add(out.duplicates as u64, Ordering::Relaxed);
        c.bytes.fetch_add(request_bytes as u64, Ordering::Relaxed);
        c.last_received_us
            .store(received_at.timestamp_micros(), Ordering::Relaxed);
        Ok(out)
    }

    /// Logs a request that could not be read as messages at all (malformed JSON), so that
    /// it shows in `_rejected` and in the source's counters.
    pub async fn reject_request(
        &self,
        source: &Arc<str>,
        raw: &str,
        rej: &Rejection,
    ) -> Result<()> {
        let rec = rejection_record(source, rej, raw, Utc::now());
        self.wal.append(vec![rec]).await?;
        let c = self.engine.collect_stats.source(source);
        c.rejected.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(raw.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The settings in use.
    pub fn config(&self) -> &CollectConfig {
        &self.config
    }
}

/// Adds the fields of `extra` (an object) to a rejection record's payload.
fn add_to_payload(rec: &mut NewRecord, extra: Value) {
    if let (Ok(Value::Object(mut payload)), Value::Object(extra)) =
        (serde_json::from_slice::<Value>(&rec.payload), extra)
    {
        payload.extend(extra);
        if let Ok(bytes) = serde_json::to_vec(&Value::Object(payload)) {
            rec.payload = bytes;
        }
    }
}

/// Longest raw text kept for a rejected message; larger ones are cut, with a note.
const MAX_REJECTED_RAW: usize = 512 * 1024;

fn rejection_record(
    source: &Arc<str>,
    rej: &Rejection,
    raw: &str,
    received_at: DateTime<Utc>,
) -> NewRecord {
    let mut text = raw;
    let mut note = String::new();
    if raw.len() > MAX_REJECTED_RAW {
        let mut end = MAX_REJECTED_RAW;
        while !raw.is_char_boundary(end) {
            end -= 1;
        }
        text = &raw[..end];
        note = format!(" (raw payload cut from {} bytes)", raw.len());
    }
    let message_id = serde_json::from_str::<Value>(raw).ok().and_then(|v| {
        v.get("messageId")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let payload = serde_json::json!({
        "reason_code": rej.code,
        "reason": format!("{}{note}", rej.message),
        "raw": text,
        "message_id": message_id,
        "received_at": message::format_time(received_at),
    });
    NewRecord {
        kind: RecordKind::Rejected,
        source: source.clone(),
        payload: serde_json::to_vec(&payload).unwrap_or_default(),
    }
}
