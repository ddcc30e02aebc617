//! The collector's write-ahead log: an acknowledgement means the event is on disk.
//!
//! Appends go to one writer thread, which takes every request waiting in its queue, writes
//! them in one `write`, calls `fdatasync` once and then answers them all (group commit): under
//! load one fsync covers hundreds of requests, and an idle server acknowledges a lone request
//! after a single fsync. The log is a folder of segment files named by their first sequence
//! number. Each record is framed as `len: u32, crc32: u32, seq: u64, kind: u8, source_len:
//! u16, source, payload`, so a torn tail after a crash is detected by length or checksum and
//! cut off at restart; everything before it was acknowledged and is kept.
//!
//! The flusher reads the log from its own cursor, never past what is durable, and records in
//! [`Wal::mark_flushed`] the sequence up to which records are in tables; whole segments
//! below that mark are deleted.
//!
//! Other named readers (real-time routes) keep durable positions of their own
//! ([`Wal::save_reader`], a small file per reader under `readers/`, loaded at open so a
//! restart never deletes what a reader still needs). A segment is deleted only when the
//! flusher and every reader have passed it, unless the log outgrows its retention budget
//! ([`Wal::set_retention_budget`]): then flushed segments go anyway, with a warning, and the
//! readers behind skip ahead ([`Wal::oldest_cursor`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Result, TallyError};

/// What a log record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A normalised message (JSON).
    Message = 0,
    /// A message that could not be stored as given (JSON with the raw text and the reason).
    Rejected = 1,
}

/// One record to append.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// What it holds.
    pub kind: RecordKind,
    /// The source it came in through.
    pub source: Arc<str>,
    /// The payload (JSON).
    pub payload: Vec<u8>,
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its sequence number, increasing by one per record across the whole log.
    pub seq: u64,
    /// What it holds.
    pub kind: RecordKind,
    /// The source it came in through.
    pub source: String,
    /// The payload.
    pub payload: Vec<u8>,
}

/// How far the log is durable: the last sequence number and where the log ends on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Durable {
    /// The last durable sequence number (0 when the log is empty).
    pub seq: u64,
    /// The first sequence number of the segment being written.
    pub segment: u64,
    /// Bytes of that segment that are durable.
    pub len: u64,
}

/// A reader position: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// First sequence number of the segment.
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
}

struct AppendRequest {
    records: Vec<NewRecord>,
    done: oneshot::Sender<Result<u64>>,
}

/// A named reader's durable position: where to read next, and the last sequence number
/// it has finished with (everything at or below it may be deleted as far as it cares).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderPos {
    /// Where the reader continues.
    pub cursor: Cursor,
    /// The last sequence number it is done with.
    pub seq: u64,
}

/// The write-ahead log.
pub struct Wal {
    dir: PathBuf,
    tx: mpsc::Sender<AppendRequest>,
    durable: watch::Receiver<Durable>,
    flushed: Mutex<u64>,
    id: String,
    /// Named readers' positions (sequence numbers they are done with).
    readers: Mutex<HashMap<String, u64>>,
    /// Bytes the log may keep for readers behind the flusher.
    budget: AtomicU64,
    /// Whether the last clean-up had to delete segments a reader still needed.
    over_budget: AtomicBool,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").field("dir", &self.dir).finish()
    }
}

const HEADER: usize = 8;
const FLUSHED_FILE: &str = "flushed";
const READERS_DIR: &str = "readers";
const ID_FILE: &str = "id";
/// Requests waiting for the writer before appends push back on senders.
const QUEUE: usize = 4096;
/// Bytes the writer gathers into one write before it syncs.
const GROUP_BYTES: usize = 8 << 20;

fn io_err(what: &str, path: &Path, e: std::io::Error) -> TallyError {
    TallyError::Internal(format!("write-ahead log: {what} {}: {e}", path.display()))
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

/// Segments in the folder, by first sequence number.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_err("cannot list", dir, e))?;
    for e in entries {
        let e = e.map_err(|e| io_err("cannot list", dir, e))?;
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if let Ok(seq) = stem.parse::<u64>() {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync", dir, e))
}

/// Encodes one record onto `buf`.
fn encode(buf: &mut Vec<u8>, seq: u64, r: &NewRecord) {
    let source = r.source.as_bytes();
    let source_len = source.len().min(u16::MAX as usize);
    let body_len = 8 + 1 + 2 + source_len + r.payload.len();
    let start = buf.len();
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.push(r.kind as u8);
    buf.extend_from_slice(&(source_len as u16).to_le_bytes());
    buf.extend_from_slice(&source[..source_len]);
    buf.extend_from_slice(&r.payload);
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the record at the front of `bytes`: the record and its framed length, or `None`
/// when the bytes end inside it or fail the checksum (a torn write).
fn decode(bytes: &[u8]) -> Option<(Record, usize)> {
    if bytes.len() < HEADER {
        return None;
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
    let body = bytes.get(HEADER..HEADER + len)?;
    if len < 11 || crc32fast::hash(body) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().ok()?);
    let kind = match body[8] {
        0 => RecordKind::Message,
        1 => RecordKind::Rejected,
        _ => return None,
    };
    let source_len = u16::from_le_bytes(body[9..11].try_into().ok()?) as usize;
    let source = std::str::from_utf8(body.get(11..11 + source_len)?)
        .ok()?
        .to_string();
    let payload = body.get(11 + source_len..)?.to_vec();
    Some((
        Record {
            seq,
            kind,
            source,
            payload,
        },
        HEADER + len,
    ))
}

/// Reads the valid records of a segment: the records and the byte length they span.
fn scan_segment(path: &Path) -> Result<(Vec<Record>, u64)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_err("cannot read", path, e))?;
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((rec, n)) = decode(&bytes[pos..]) {
        out.push(rec);
        pos += n;
    }
    Ok((out, pos as u64))
}

impl Wal {
    /// Opens (or creates) the log in `dir`, cuts off a torn tail, and starts the writer.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Arc<Wal>> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("cannot create", dir, e))?;
        let id_path = dir.join(ID_FILE);
        let id = match std::fs::read_to_string(&id_path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            _ => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                std::fs::write(&id_path, &id).map_err(|e| io_err("cannot write", &id_path, e))?;
                id
            }
        };
        let flushed = match std::fs::read_to_string(dir.join(FLUSHED_FILE)) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
            Err(_) => 0,
        };
        let segments = list_segments(dir)?;
        let (last_seq, segment, len) = match segments.last() {
            Some(&first) => {
                let path = dir.join(segment_name(first));
                let (records, valid) = scan_segment(&path)?;
                let file_len = std::fs::metadata(&path)
                    .map_err(|e| io_err("cannot stat", &path, e))?
                    .len();
                if valid < file_len {
                    tracing::warn!(
                        segment = %path.display(),
                        torn_bytes = file_len - valid,
                        "write-ahead log ends in a torn record (a crash during a write that was never acknowledged); cutting it off"
                    );
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| {
                            f.set_len(valid)?;
                            f.sync_all()
                        })
                        .map_err(|e| io_err("cannot truncate", &path, e))?;
                }
                let last = records
                    .last()
                    .map(|r| r.seq)
                    .unwrap_or(first.saturating_sub(1));
                (last.max(flushed), first, valid)
            }
            None => {
                let first = flushed + 1;
                let path = dir.join(segment_name(first));
                File::create(&path).map_err(|e| io_err("cannot create", &path, e))?;
                sync_dir(dir)?;
                (flushed, first, 0)
            }
        };
        let durable = Durable {
            seq: last_seq,
            segment,
            len,
        };
        let (durable_tx, durable_rx) = watch::channel(durable);
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            dir: dir.to_path_buf(),
            segment_bytes,
            durable,
            file: OpenOptions::new()
                .append(true)
                .open(dir.join(segment_name(segment)))
                .map_err(|e| io_err("cannot open", dir, e))?,
            notify: durable_tx,
        };
        std::thread::Builder::new()
            .name("tally-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| TallyError::Internal(format!("cannot start the log writer: {e}")))?;
        let readers = load_readers(dir)
            .into_iter()
            .map(|(name, pos)| (name, pos.seq))
            .collect();
        Ok(Arc::new(Wal {
            dir: dir.to_path_buf(),
            tx,
            durable: durable_rx,
            flushed: Mutex::new(flushed),
            id,
            readers: Mutex::new(readers),
            budget: AtomicU64::new(u64::MAX),
            over_budget: AtomicBool::new(false),
        }))
    }

    /// The folder of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sets how many bytes the log may keep for readers that are behind the flusher.
    pub fn set_retention_budget(&self, bytes: u64) {
        self.budget.store(bytes.max(1), Ordering::Relaxed);
    }

    /// The retention budget in bytes.
    pub fn retention_budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    /// Whether the log outgrew its budget at the last clean-up, so that segments a reader
    /// still needed were deleted.
    pub fn over_budget(&self) -> bool {
        self.over_budget.load(Ordering::Relaxed)
    }

    /// The durable position of reader `name`, if it saved one.
    pub fn reader(&self, name: &str) -> Option<ReaderPos> {
        read_reader_file(&self.dir.join(READERS_DIR).join(reader_file(name)))
    }

    /// Every saved reader, by name.
    pub fn readers(&self) -> Vec<(String, ReaderPos)> {
        load_readers(&self.dir)
    }

    /// Durably records reader `name`'s position (written to a temporary file, fsynced and
    /// renamed), then deletes the segments nobody needs any more.
    pub fn save_reader(&self, name: &str, pos: ReaderPos) -> Result<()> {
        let dir = self.dir.join(READERS_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let file = reader_file(name);
        let tmp = dir.join(format!("{file}.tmp"));
        let dst = dir.join(&file);
        let text = format!(
            "{} {} {} {}",
            pos.cursor.segment, pos.cursor.offset, pos.seq, name
        );
        File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_data()
            })
            .and_then(|_| std::fs::rename(&tmp, &dst))
            .map_err(|e| io_err("cannot record a reader position in", &dst, e))?;
        let crossed = {
            let mut readers = self.readers.lock();
            let old = readers.insert(name.to_string(), pos.seq);
            old.is_none_or(|o| o < pos.seq)
        };
        if crossed {
            self.collect_garbage();
        }
        Ok(())
    }

    /// Forgets reader `name` (its route was dropped), so it holds no segment any more.
    pub fn remove_reader(&self, name: &str) {
        let path = self.dir.join(READERS_DIR).join(reader_file(name));
        let _ = std::fs::remove_file(&path);
        self.readers.lock().remove(name);
        self.collect_garbage();
    }

    /// Where a reader starts that wants only what is appended from now on.
    pub fn end_position(&self) -> ReaderPos {
        let d = self.durable();
        ReaderPos {
            cursor: Cursor {
                segment: d.segment,
                offset: d.len,
            },
            seq: d.seq,
        }
    }

    /// The start of the oldest segment still on disk: where a reader continues whose
    /// segment was deleted for the retention budget. Returns it with the sequence number
    /// just before its first record.
    pub fn oldest_cursor(&self) -> Result<ReaderPos> {
        let first = list_segments(&self.dir)?
            .into_iter()
            .next()
            .unwrap_or(self.durable().segment);
        Ok(ReaderPos {
            cursor: Cursor {
                segment: first,
                offset: 0,
            },
            seq: first.saturating_sub(1),
        })
    }

    /// Whether the segment of `cursor` is still on disk.
    pub fn has_segment(&self, cursor: Cursor) -> bool {
        self.dir.join(segment_name(cursor.segment)).exists()
    }

    /// Reads up to `max` durable records from `cursor`, whether flushed or not, each with
    /// the position where it starts (a reader that stops in the middle of a batch saves the
    /// position of the first record it has not finished). Returns the position after them.
    pub fn read_positioned(
        &self,
        cursor: Cursor,
        max: usize,
    ) -> Result<(Vec<(Cursor, Record)>, Cursor)> {
        self.read_inner(cursor, max, 0)
    }

    /// A stable id of this log, used as the Delta application-transaction id of its flushes,
    /// so that two servers flushing into one table never mistake each other's progress.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Appends records and waits until they are on disk. Returns the last sequence number.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<u64> {
        if records.is_empty() {
            return Ok(self.durable.borrow().seq);
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(AppendRequest { records, done })
            .await
            .map_err(|_| TallyError::Internal("the write-ahead log writer has stopped".into()))?;
        wait.await
            .map_err(|_| TallyError::Internal("the write-ahead log writer has stopped".into()))?
    }

    /// How far the log is durable.
    pub fn durable(&self) -> Durable {
        *self.durable.borrow()
    }

    /// A receiver that changes whenever more of the log becomes durable.
    pub fn watch(&self) -> watch::Receiver<Durable> {
        self.durable.clone()
    }

    /// The sequence number up to which records are in tables.
    pub fn flushed(&self) -> u64 {
        *self.flushed.lock()
    }

    /// Where a reader starts: the first record after the flushed mark.
    pub fn start_cursor(&self) -> Result<Cursor> {
        let segments = list_segments(&self.dir)?;
        let flushed = self.flushed();
        // The last segment starting at or below flushed + 1 holds the first unflushed record.
        let segment = segments
            .iter()
            .copied()
            .filter(|s| *s <= flushed + 1)
            .max()
            .or_else(|| segments.first().copied())
            .unwrap_or(flushed + 1);
        Ok(Cursor { segment, offset: 0 })
    }

    /// Reads up to `max` durable records from `cursor`, skipping those at or below the
    /// flushed mark. Returns the records and the position after them.
    pub fn read(&self, cursor: Cursor, max: usize) -> Result<(Vec<Record>, Cursor)> {
        let (records, next) = self.read_inner(cursor, max, self.flushed())?;
        Ok((records.into_iter().map(|(_, r)| r).collect(), next))
    }

    fn read_inner(
        &self,
        cursor: Cursor,
        max: usize,
        flushed: u64,
    ) -> Result<(Vec<(Cursor, Record)>, Cursor)> {
        let durable = self.durable();
        let mut out = Vec::new();
        let mut cur = cursor;
        loop {
            let path = self.dir.join(segment_name(cur.segment));
            let end = if cur.segment == durable.segment {
                durable.len
            } else {
                std::fs::metadata(&path)
                    .map_err(|e| io_err("cannot stat", &path, e))?
                    .len()
            };
            if cur.offset < end {
                let mut f = BufReader::with_capacity(
                    1 << 20,
                    File::open(&path).map_err(|e| io_err("cannot open", &path, e))?,
                );
                f.seek(SeekFrom::Start(cur.offset))
                    .map_err(|e| io_err("cannot seek", &path, e))?;
                let mut header = [0u8; HEADER];
                while cur.offset < end && out.len() < max {
                    f.read_exact(&mut header)
                        .map_err(|e| io_err("cannot read", &path, e))?;
                    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
                    let mut frame = vec![0u8; HEADER + len as usize];
                    frame[..HEADER].copy_from_slice(&header);
                    f.read_exact(&mut frame[HEADER..])
                        .map_err(|e| io_err("cannot read", &path, e))?;
                    let (rec, n) = decode(&frame).ok_or_else(|| {
                        TallyError::Internal(format!(
                            "write-ahead log: corrupt record in {} at byte {}",
                            path.display(),
                            cur.offset
                        ))
                    })?;
                    let at = cur;
                    cur.offset += n as u64;
                    if rec.seq > flushed {
                        out.push((at, rec));
                    }
                }
            }
            if out.len() >= max || cur.segment == durable.segment {
                return Ok((out, cur));
            }
            // This segment is finished: move to the next one.
            let next = list_segments(&self.dir)?
                .into_iter()
                .find(|s| *s > cur.segment);
            match next {
                Some(s) => {
                    cur = Cursor {
                        segment: s,
                        offset: 0,
                    }
                }
                None => return Ok((out, cur)),
            }
        }
    }

    /// Records that everything up to `seq` is in tables, then deletes the segments that
    /// hold nothing newer.
    pub fn mark_flushed(&self, seq: u64) -> Result<()> {
        {
            let mut f = self.flushed.lock();
            if seq <= *f {
                return Ok(());
            }
            let tmp = self.dir.join("flushed.tmp");
            let dst = self.dir.join(FLUSHED_FILE);
            File::create(&tmp)
                .and_then(|mut file| {
                    file.write_all(seq.to_string().as_bytes())?;
                    file.sync_data()
                })
                .and_then(|_| std::fs::rename(&tmp, &dst))
                .map_err(|e| io_err("cannot record progress in", &dst, e))?;
            sync_dir(&self.dir)?;
            *f = seq;
        }
        self.collect_garbage();
        Ok(())
    }

    /// Deletes the segments that the flusher and every reader have passed. When what is left
    /// is over the retention budget, flushed segments that only readers still need are
    /// deleted too (oldest first), with a warning: the readers behind skip ahead.
    fn collect_garbage(&self) {
        let flushed = self.flushed();
        let floor = self
            .readers
            .lock()
            .values()
            .copied()
            .min()
            .map_or(flushed, |r| r.min(flushed));
        let current = self.durable().segment;
        let Ok(segments) = list_segments(&self.dir) else {
            return;
        };
        let mut kept = Vec::new();
        for pair in segments.windows(2) {
            let (first, next) = (pair[0], pair[1]);
            let path = self.dir.join(segment_name(first));
            if first != current && next - 1 <= floor {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(segment = %path.display(), error = %e, "cannot delete a flushed log segment");
                }
            } else {
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                kept.push((first, next, len));
            }
        }
        let current_len = self.durable().len;
        let mut total: u64 = kept.iter().map(|k| k.2).sum::<u64>() + current_len;
        let budget = self.retention_budget();
        if total > budget / 10 * 8 && total <= budget {
            tracing::warn!(
                log = %self.dir.display(),
                retained_bytes = total,
                budget_bytes = budget,
                "the write-ahead log kept for routes that are behind is near its retention budget; a route's destination may be down or paused"
            );
        }
        let mut over = false;
        for (first, next, len) in kept {
            if total <= budget {
                break;
            }
            if first == current || next - 1 > flushed {
                break;
            }
            let path = self.dir.join(segment_name(first));
            tracing::error!(
                segment = %path.display(),
                retained_bytes = total,
                budget_bytes = budget,
                "write-ahead log over its retention budget: deleting a flushed segment that a route has not delivered yet; that route skips these events (they stay in the tables, REPLAY ROUTE re-sends them)"
            );
            if std::fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(len);
                over = true;
            }
        }
        self.over_budget.store(over, Ordering::Relaxed);
    }

    /// Bytes the log holds on disk.
    pub fn disk_bytes(&self) -> u64 {
        list_segments(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| std::fs::metadata(self.dir.join(segment_name(s))).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// A reader's file name: its name in hex, so any route name is a safe file name.
fn reader_file(name: &str) -> String {
    format!("{}.pos", crate::engine::hex_encode(name.as_bytes()))
}

fn read_reader_file(path: &Path) -> Option<ReaderPos> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.splitn(4, ' ');
    let segment = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some(ReaderPos {
        cursor: Cursor { segment, offset },
        seq,
    })
}

fn load_readers(dir: &Path) -> Vec<(String, ReaderPos)> {
    let Ok(entries) = std::fs::read_dir(dir.join(READERS_DIR)) else {
        return vec![];
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("pos") {
            continue;
        }
        let name = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.splitn(4, ' ').nth(3).map(str::to_string));
        if let (Some(name), Some(pos)) = (name, read_reader_file(&path)) {
            out.push((name, pos));
        }
    }
    out
}

struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    durable: Durable,
    file: File,
    notify: watch::Sender<Durable>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<AppendRequest>) {
        let mut buf = Vec::with_capacity(1 << 20);
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            let mut bytes: usize = group[0].records.iter().map(|r| r.payload.len()).sum();
            while bytes < GROUP_BYTES {
                match rx.try_recv() {
                    Ok(req) => {
                        bytes += req.records.iter().map(|r| r.payload.len()).sum::<usize>();
                        group.push(req);
                    }
                    Err(_) => break,
                }
            }
            let mut seq = self.durable.seq;
            let result = self.write_group(&mut buf, &group);
            for req in group {
                seq += req.records.len() as u64;
                let answer = match &result {
                    Ok(()) => Ok(seq),
                    Err(e) => Err(TallyError::Internal(e.clone())),
                };
                let _ = req.done.send(answer);
            }
        }
    }

    fn write_group(
        &mut self,
        buf: &mut Vec<u8>,
        group: &[AppendRequest],
    ) -> std::result::Result<(), String> {
        if self.durable.len >= self.segment_bytes {
            self.rotate().map_err(|e| e.to_string())?;
        }
        buf.clear();
        let mut seq = self.durable.seq;
        for req in group {
            for r in &req.records {
                seq += 1;
                encode(buf, seq, r);
            }
        }
        let path = self.dir.join(segment_name(self.durable.segment));
        let outcome = self.file.write_all(buf).and_then(|_| self.file.sync_data());
        if let Err(e) = outcome {
            // Nothing of this group is acknowledged; cut the file back so that a partial
            // write is not taken for data later.
            let _ = self.file.set_len(self.durable.len);
            tracing::error!(segment = %path.display(), error = %e, "write-ahead log write failed");
            return Err(format!("write-ahead log write failed: {e}"));
        }
        self.durable.seq = seq;
        self.durable.len += buf.len() as u64;
        let _ = self.notify.send(self.durable);
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        let first = self.durable.seq + 1;
        let path = self.dir.join(segment_name(first));
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err("cannot create", &path, e))?;
        sync_dir(&self.dir)?;
        self.durable.segment = first;
        self.durable.len = 0;
        let _ = self.notify.send(self.durable);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(payload: &str) -> NewRecord {
        NewRecord {
            kind: RecordKind::Message,
            source: Arc::from("web"),
            payload: payload.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn appends_are_read_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), 64).expect("open");
        for i in 0..10 {
            let seq = wal
                .append(vec![rec(&format!("{{\"i\":{i}}}"))])
                .await
                .expect("append");
            assert_eq!(seq, i + 1);
        }
        let (recs, _) = wal
            .read(wal.start_cursor().expect("cursor"), 100)
            .expect("read");
        assert_eq!(
            recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        wal.mark_flushed(6).expect("mark");
        drop(wal);
        let wal = Wal::open(dir.path(), 64).expect("reopen");
        let (recs, _) = wal
            .read(wal.start_cursor().expect("cursor"), 100)
            .expect("read");
        assert_eq!(
            recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![7, 8, 9, 10]
        );
        assert_eq!(wal.append(vec![rec("{}")]).await.expect("append"), 11);
    }

    #[tokio::test]
    async fn readers_hold_segments_until_passed_or_over_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), 64).expect("open");
        wal.save_reader("r", wal.end_position()).expect("reader");
        for i in 0..10 {
            wal.append(vec![rec(&format!("{{\"i\":{i}}}"))])
                .await
                .expect("append");
        }
        wal.mark_flushed(10).expect("mark");
        // The reader has read nothing: every record is still there for it.
        let start = wal.reader("r").expect("saved");
        let (recs, next) = wal.read_positioned(start.cursor, 100).expect("read");
        assert_eq!(recs.len(), 10);
        // Resuming from the position of record 4 reads 4 and on.
        let (pos4, r4) = &recs[3];
        assert_eq!(r4.seq, 4);
        let (again, _) = wal.read_positioned(*pos4, 100).expect("read");
        assert_eq!(again.first().map(|r| r.1.seq), Some(4));
        // Restart keeps the hold; passing the records releases them.
        drop(recs);
        drop(wal);
        let wal = Wal::open(dir.path(), 64).expect("reopen");
        assert_eq!(wal.readers().len(), 1);
        let before = list_segments(dir.path()).expect("list").len();
        wal.save_reader(
            "r",
            ReaderPos {
                cursor: next,
                seq: 10,
            },
        )
        .expect("advance");
        assert!(list_segments(dir.path()).expect("list").len() < before);
        // Over budget, flushed segments go even if a reader needs them.
        wal.remove_reader("r");
        wal.save_reader("slow", wal.oldest_cursor().expect("oldest"))
            .expect("slow reader");
        for i in 0..10 {
            wal.append(vec![rec(&format!("{{\"j\":{i}}}"))])
                .await
                .expect("append");
        }
        wal.set_retention_budget(1);
        wal.mark_flushed(20).expect("mark");
        assert!(wal.over_budget());
        assert!(!wal.has_segment(wal.reader("slow").expect("slow").cursor));
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), 1 << 20).expect("open");
        wal.append(vec![rec("{\"a\":1}"), rec("{\"a\":2}")])
            .await
            .expect("append");
        drop(wal);
        let seg = dir.path().join(segment_name(1));
        let mut f = OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("open segment");
        f.write_all(&[42, 0, 0, 0, 1, 2]).expect("write garbage");
        drop(f);
        let wal = Wal::open(dir.path(), 1 << 20).expect("reopen");
        let (recs, _) = wal
            .read(wal.start_cursor().expect("cursor"), 100)
            .expect("read");
        assert_eq!(recs.len(), 2);
        assert_eq!(wal.append(vec![rec("{}")]).await.expect("append"), 3);
    }
}
