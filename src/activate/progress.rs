//! The durable progress of a sync run: what the destination confirmed, so that a run cut
//! short (kill -9, a crash, a run that failed half-way) is resumed without resending it.
//!
//! A sync's snapshot ([`super::diff`]) is replaced only when a run succeeds. Until then each
//! settled outcome (a row the destination accepted, with its key and hash; a key a mirror
//! sync removed) is appended to a journal under `<sync>/progress/`: one Parquet file every
//! [`FLUSH_EVERY`] (or every [`FLUSH_ROWS`] rows), each written with a single PUT, so a file
//! is whole or absent whatever happens to the process. The next run diffs against the
//! snapshot *with the journal on top* ([`effective_snapshot`]): a journaled key takes its
//! journaled hash, a key journaled as removed is gone. Rows confirmed before the crash then
//! compare as unchanged and are not sent again; what was in flight (the requests open at the
//! crash and at most the last flush interval's confirmations) is sent again, at least once,
//! and idempotent destinations absorb it. Rows the destination refused are never journaled,
//! so they are retried, as the sync promises.
//!
//! Journal files are filed under the snapshot version they apply on top of (`v<version>/`,
//! `none/` before the first snapshot). A successful run commits a new snapshot version, which
//! makes the journal stale at once, whether or not deleting it afterwards succeeds: stale
//! files are ignored and deleted by the next run. So no crash point can apply a journal to a
//! snapshot it does not belong to.
//!
//! Cost: one small PUT per second of a run (about 12 bytes per row plus the key's text), and
//! nothing extra at the start of a run unless a journal is there.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::TableProvider;
use datafusion::functions_aggregate::expr_fn::last_value;
use datafusion::logical_expr::{cast as cast_expr, col, not};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Result, TallyError, unwrap_datafusion};
use crate::storage::Warehouse;

/// How often a run's confirmations are made durable: the most a crash can make a run resend
/// beyond the requests it had open.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// A journal file is written early when this many rows are waiting, so a fast run's
/// buffer stays small.
pub const FLUSH_ROWS: usize = 65_536;

/// The journal's columns: the key as text (as destinations get it), the row's hash (null
/// for a removal), whether the key was removed, and the order of the entries (the run's
/// start in microseconds, then a sequence number within the run) so the last one wins.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("row_key", DataType::Utf8, false),
        Field::new("row_hash", DataType::Int64, true),
        Field::new("removed", DataType::Boolean, false),
        Field::new("run", DataType::Int64, false),
        Field::new("seq", DataType::Int64, false),
    ]))
}

/// The journal folder of a sync, given its folder (`.../syncs/<name>/`).
pub fn location(sync_dir: &str) -> String {
    format!("{sync_dir}progress/")
}

/// The journal subfolder for runs on top of snapshot `version` (none before the first).
pub fn base_tag(version: Option<u64>) -> String {
    match version {
        Some(v) => format!("v{v}"),
        None => "none".into(),
    }
}

fn arrow(e: datafusion::arrow::error::ArrowError) -> TallyError {
    TallyError::DataFusion(e.into())
}

/// What a run hands the journal.
enum Entry {
    /// `(row_key, row_hash)` of rows the destination accepted.
    Sent(RecordBatch),
    /// `(row_key, ...)` of keys the destination removed.
    Removed(RecordBatch),
}

/// A run's journal writer: entries are buffered and written by a background task, so the
/// run never waits for storage except when the task falls a whole channel behind.
pub struct Journal {
    tx: Option<mpsc::Sender<Entry>>,
    task: Option<JoinHandle<Result<u64>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

impl Journal {
    /// Starts the journal of a run that began at `run` (microseconds), writing into `dir`
    /// (the journal subfolder of the run's base snapshot).
    pub fn start(wh: Warehouse, dir: String, run: i64) -> Journal {
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(write_loop(wh, dir, run, rx));
        Journal {
            tx: Some(tx),
            task: Some(task),
        }
    }

    async fn send(&mut self, entry: Entry) {
        let Some(tx) = &self.tx else { return };
        if tx.send(entry).await.is_err() {
            // The writer stopped on a storage error: the run goes on (a journal only saves
            // resending), and `finish` reports why.
            self.tx = None;
        }
    }

    /// Journals rows the destination accepted: `(row_key, row_hash)`.
    pub async fn sent(&mut self, batch: &RecordBatch) {
        if batch.num_rows() > 0 {
            self.send(Entry::Sent(batch.clone())).await;
        }
    }

    /// Journals keys the destination removed: the first column of `batch`.
    pub async fn removed(&mut self, batch: &RecordBatch) {
        if batch.num_rows() > 0 {
            self.send(Entry::Removed(batch.clone())).await;
        }
    }

    /// Writes what is buffered and stops: the number of rows journaled in all.
    pub async fn finish(mut self) -> Result<u64> {
        drop(self.tx.take());
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| TallyError::Internal(format!("sync journal writer: {e}")))?,
            None => Ok(0),
        }
    }
}

/// The background writer: one Parquet file per flush, named so that files sort in the
/// order they were written (`<run>-<n>.parquet`).
async fn write_loop(
    wh: Warehouse,
    dir: String,
    run: i64,
    mut rx: mpsc::Receiver<Entry>,
) -> Result<u64> {
    let schema = schema();
    let mut buffered: Vec<RecordBatch> = vec![];
    let mut rows = 0usize;
    let mut seq = 0i64;
    let mut files = 0u32;
    let mut total = 0u64;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let done = tokio::select! {
            entry = rx.recv() => match entry {
                Some(entry) => {
                    let b = to_journal(&schema, entry, run, &mut seq)?;
                    rows += b.num_rows();
                    buffered.push(b);
                    if rows < FLUSH_ROWS {
                        continue;
                    }
                    false
                }
                None => true,
            },
            _ = tick.tick() => false,
        };
        if rows > 0 {
            let batch = concat_batches(&schema, &buffered).map_err(arrow)?;
            let path = wh.path_of(&format!("{dir}{run:020}-{files:06}.parquet"));
            let mut bytes = Vec::with_capacity(rows * 24);
            let mut w = ArrowWriter::try_new(&mut bytes, schema.clone(), None)
                .map_err(|e| TallyError::DataFusion(e.into()))?;
            w.write(&batch)
                .map_err(|e| TallyError::DataFusion(e.into()))?;
            w.close().map_err(|e| TallyError::DataFusion(e.into()))?;
            wh.store.put(&path, bytes.into()).await?;
            files += 1;
            total += rows as u64;
            buffered.clear();
            rows = 0;
        }
        if done {
            return Ok(total);
        }
    }
}

/// One entry as journal rows, numbered from `seq`.
fn to_journal(schema: &SchemaRef, entry: Entry, run: i64, seq: &mut i64) -> Result<RecordBatch> {
    let (batch, removed) = match entry {
        Entry::Sent(b) => (b, false),
        Entry::Removed(b) => (b, true),
    };
    let n = batch.num_rows();
    let key = cast(batch.column(0), &DataType::Utf8).map_err(arrow)?;
    let hash: ArrayRef = if removed {
        Arc::new(Int64Array::new_null(n))
    } else {
        batch.column(1).clone()
    };
    let first = *seq;
    *seq += n as i64;
    let columns: Vec<ArrayRef> = vec![
        key,
        hash,
        Arc::new(BooleanArray::from(vec![removed; n])),
        Arc::new(Int64Array::from(vec![run; n])),
        Arc::new(Int64Array::from_iter_values(first..first + n as i64)),
    ];
    // Rows without a key are never sent, so never journaled; keep the column non-null.
    if columns[0].null_count() > 0 {
        return Err(TallyError::Internal(
            "a sync journal entry has a null key".into(),
        ));
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(arrow)
}

/// The journal files under `dir` (the sync's progress folder), split into those of the
/// subfolder `tag` and the stale rest.
async fn journal_files(
    wh: &Warehouse,
    dir: &str,
    tag: &str,
) -> Result<(Vec<object_store::path::Path>, Vec<object_store::path::Path>)> {
    let current_prefix = wh.path_of(&format!("{dir}{tag}"));
    let all: Vec<_> = wh
        .store
        .list(Some(&wh.path_of(dir)))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    let (mut current, stale): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|p| p.prefix_match(&current_prefix).is_some());
    current.sort();
    Ok((current, stale))
}

/// The snapshot a run diffs against: the last successful run's snapshot `old` (Delta
/// version `version`) with the journal of interrupted runs on top of it, or `old` alone when
/// there is no journal. Stale journal files (of older snapshot versions) are deleted.
///
/// The result has the snapshot's columns `(row_key, row_hash)`, the key in the snapshot's
/// key type (text when there is only a journal). Journaled entries are few next to the
/// snapshot (what one interrupted run confirmed); they are the build side of one anti-join.
pub async fn effective_snapshot(
    ctx: &SessionContext,
    wh: &Warehouse,
    dir: &str,
    old: Option<Arc<dyn TableProvider>>,
    version: Option<u64>,
) -> Result<(Option<DataFrame>, u64)> {
    let tag = base_tag(version);
    let (current, stale) = journal_files(wh, dir, &tag).await?;
    for p in stale {
        if let Err(e) = wh.store.delete(&p).await {
            tracing::debug!(path = %p, error = %e, "could not delete a stale sync journal file");
        }
    }
    let old_df = match old {
        Some(p) => Some(ctx.read_table(p).map_err(unwrap_datafusion)?),
        None => None,
    };
    if current.is_empty() {
        return Ok((old_df, 0));
    }
    let url = wh.url_of(&format!("{dir}{tag}/"))?;
    let journal = ctx
        .read_parquet(url.as_str(), ParquetReadOptions::default())
        .await
        .map_err(unwrap_datafusion)?;
    let journaled = journal.clone().count().await.map_err(unwrap_datafusion)? as u64;
    let order = || vec![col("run").sort(true, true), col("seq").sort(true, true)];
    let latest = journal
        .aggregate(
            vec![col("row_key")],
            vec![
                last_value(col("row_hash"), order()).alias("row_hash"),
                last_value(col("removed"), order()).alias("removed"),
            ],
        )
        .map_err(unwrap_datafusion)?;
    let kept = latest
        .clone()
        .filter(not(col("removed")))
        .and_then(|df| df.select(vec![col("row_key"), col("row_hash")]))
        .map_err(unwrap_datafusion)?;
    let Some(old_df) = old_df else {
        return Ok((Some(kept), journaled));
    };
    let key_type = old_df
        .schema()
        .field_with_unqualified_name("row_key")
        .map_err(unwrap_datafusion)?
        .data_type()
        .clone();
    let journal_keys = latest
        .select(vec![col("row_key").alias("__tally_journal_key")])
        .map_err(unwrap_datafusion)?;
    let effective = old_df
        .select(vec![
            cast_expr(col("row_key"), DataType::Utf8).alias("row_key"),
            col("row_hash"),
        ])
        .and_then(|df| {
            df.join(
                journal_keys,
                datafusion::logical_expr::JoinType::LeftAnti,
                &["row_key"],
                &["__tally_journal_key"],
                None,
            )
        })
        .and_then(|df| df.union(kept))
        .and_then(|df| {
            df.select(vec![
                cast_expr(col("row_key"), key_type).alias("row_key"),
                col("row_hash"),
            ])
        })
        .map_err(unwrap_datafusion)?;
    Ok((Some(effective), journaled))
}

/// Deletes the whole journal of a sync (after a successful run, or with the sync).
pub async fn clear(wh: &Warehouse, dir: &str) {
    if let Err(e) = wh.delete_prefix(dir).await {
        tracing::debug!(error = %e, "could not delete a sync journal (it is stale now)");
    }
}
