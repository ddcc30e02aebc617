//! `COPY table [(columns)] FROM STDIN` in PostgreSQL's text and CSV formats.
//!
//! Three stages run at once so that loading uses more than one core:
//! - the connection task only gathers the client's CopyData messages into chunks of
//!   [`CHUNK_BYTES`] and hands them on;
//! - a blocking thread ([`load::Loader`]) splits records and fields byte by byte and parses
//!   each value straight into a typed Arrow builder, cutting batches of
//!   [`load::BATCH_ROWS`] rows;
//! - the table's writer (a Delta append through `insert_into`) encodes the batches as
//!   Parquet and commits once at the end.
//!
//! Both hand-overs are bounded channels, so memory stays bounded whatever the input size.
//! A bad row fails the whole COPY with PostgreSQL's SQLSTATE and its line number, and
//! nothing is committed: the writer's input stream ends in an error unless the loader
//! reached the end of the data without one.

mod columns;
mod load;
mod scan;
mod values;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::TableProvider;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::physical_plan::collect;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::sql::sqlparser::ast::CopySource;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Output;
use super::copy::CopyFormat;
use super::names::{ident, resolve};
use crate::engine::Session;
use crate::error::{Result, TallyError, unwrap_datafusion};

/// Bytes of client data handed to the loader at a time: large enough that the hand-over
/// costs nothing per row, small enough to keep the loader busy early.
const CHUNK_BYTES: usize = 64 << 10;
/// Chunks waiting for the loader.
const CHUNK_QUEUE: usize = 16;
/// Batches waiting for the writer.
const BATCH_QUEUE: usize = 4;

/// What the connection task hands the loader.
enum Chunk {
    Data(Bytes),
    /// The client sent CopyDone: the data is complete.
    End,
}

/// How the loader thread ended.
enum Loaded {
    /// All data read and handed to the writer.
    Done,
    /// The data was bad.
    Failed(TallyError),
    /// The writer stopped taking batches; its own result says why.
    WriterGone,
    /// The connection went away before the data ended.
    Aborted,
}

/// A COPY FROM STDIN in progress.
pub struct CopyIn {
    table_name: String,
    /// Number of columns the client sends.
    pub columns: usize,
    pending: BytesMut,
    chunks: Option<mpsc::Sender<Chunk>>,
    loader: Option<JoinHandle<Loaded>>,
    writer: Option<JoinHandle<Result<u64>>>,
}

impl std::fmt::Debug for CopyIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyIn")
            .field("table", &self.table_name)
            .finish()
    }
}

/// The receiving end of COPY FROM as a one-shot partition stream for the table's writer.
/// The stream ends cleanly only once `complete` is set; if the senders go away without
/// it, the stream ends in an error so that the writer commits nothing.
#[derive(Debug)]
struct ChannelPartition {
    schema: SchemaRef,
    rx: Mutex<Option<mpsc::Receiver<datafusion::error::Result<RecordBatch>>>>,
    complete: Arc<AtomicBool>,
}

impl PartitionStream for ChannelPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rx = self.rx.lock().ok().and_then(|mut r| r.take());
        let complete = self.complete.clone();
        let stream = futures::stream::unfold(rx, move |rx| {
            let complete = complete.clone();
            async move {
                let mut rx = rx?;
                match rx.recv().await {
                    Some(item) => Some((item, Some(rx))),
                    None if complete.load(Ordering::Acquire) => None,
                    None => Some((Err(DataFusionError::Execution("COPY aborted".into())), None)),
                }
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// Starts `COPY table [(columns)] FROM STDIN`: resolves the table and columns, starts the
/// table's writer and the loader thread, and returns the [`CopyIn`] that takes the data.
pub async fn start(
    session: &mut Session,
    source: CopySource,
    format: CopyFormat,
) -> Result<Output> {
    let CopySource::Table {
        table_name,
        columns,
    } = source
    else {
        return Err(TallyError::syntax("COPY FROM needs a table, not a query"));
    };
    let q = resolve(session, &table_name)?;
    let provider: Arc<dyn TableProvider> =
        match datafusion::catalog::SchemaProvider::table(session.catalog.temp().as_ref(), &q.name)
            .await
            .map_err(unwrap_datafusion)?
        {
            Some(t) if crate::statements::names::parts(&table_name).len() == 1 => t,
            _ => {
                let doc = session.catalog.doc();
                let rel = doc
                    .relation(&q.schema, &q.name)
                    .ok_or_else(|| TallyError::no_relation(q.name.clone()))?;
                session.catalog.relation_provider(rel).await?
            }
        };
    let target = provider.schema();
    let names: Vec<String> = if columns.is_empty() {
        target.fields().iter().map(|f| f.name().clone()).collect()
    } else {
        columns.iter().map(ident).collect()
    };
    let mut sources = Vec::with_capacity(names.len());
    for n in &names {
        let idx = target.index_of(n).map_err(|_| TallyError::NotFound {
            kind: "column",
            name: n.clone(),
        })?;
        if sources.contains(&idx) {
            return Err(TallyError::InvalidValue {
                code: "42701",
                message: format!("column \"{n}\" specified more than once"),
            });
        }
        sources.push(idx);
    }
    for (idx, f) in target.fields().iter().enumerate() {
        if !sources.contains(&idx) && !f.is_nullable() {
            return Err(TallyError::InvalidValue {
                code: "23502",
                message: format!(
                    "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                    f.name(),
                    q.name
                ),
            });
        }
    }

    // Delta tables declare text as string views for scans but write plain strings: hand the
    // writer plain strings, so it does not cast every batch.
    let target = without_views(&target);
    let (batch_tx, batch_rx) = mpsc::channel(BATCH_QUEUE);
    let complete = Arc::new(AtomicBool::new(false));
    let partition = Arc::new(ChannelPartition {
        schema: target.clone(),
        rx: Mutex::new(Some(batch_rx)),
        complete: complete.clone(),
    });
    let exec = Arc::new(
        StreamingTableExec::try_new(target.clone(), vec![partition], None, vec![], false, None)
            .map_err(unwrap_datafusion)?,
    );
    let state = session.ctx.state();
    let sink = provider
        .insert_into(&state, exec, InsertOp::Append)
        .await
        .map_err(unwrap_datafusion)?;
    let task_ctx = session.ctx.task_ctx();
    let writer = tokio::spawn(async move {
        let batches = collect(sink, task_ctx).await.map_err(unwrap_datafusion)?;
        Ok(crate::storage::delta::affected_rows(&batches))
    });

    let (dialect, header) = match format {
        CopyFormat::Text { delimiter, null } => (
            scan::Dialect {
                csv: false,
                delimiter,
                quote: b'"',
                escape: b'"',
                null: null.into_bytes(),
            },
            false,
        ),
        CopyFormat::Csv {
            delimiter,
            quote,
            escape,
            null,
            header,
        } => (
            scan::Dialect {
                csv: true,
                delimiter,
                quote,
                escape,
                null: null.into_bytes(),
            },
            header,
        ),
    };
    let columns = sources.len();
    let loader = load::Loader::new(dialect, header, q.name.clone(), target, sources);
    let (chunk_tx, chunk_rx) = mpsc::channel(CHUNK_QUEUE);
    let loader =
        tokio::task::spawn_blocking(move || run_loader(loader, chunk_rx, batch_tx, complete));
    Ok(Output::CopyIn(CopyIn {
        table_name: q.name,
        columns,
        pending: BytesMut::with_capacity(2 * CHUNK_BYTES),
        chunks: Some(chunk_tx),
        loader: Some(loader),
        writer: Some(writer),
    }))
}

/// `schema` with string and binary views as plain strings and binaries, at any depth.
fn without_views(schema: &SchemaRef) -> SchemaRef {
    fn plain(t: &DataType) -> DataType {
        match t {
            DataType::Utf8View => DataType::Utf8,
            DataType::BinaryView => DataType::Binary,
            DataType::List(f) => DataType::List(Arc::new(
                f.as_ref().clone().with_data_type(plain(f.data_type())),
            )),
            other => other.clone(),
        }
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(plain(f.data_type())))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The loader thread: parses chunks as they come and hands batches to the writer.
fn run_loader(
    mut loader: load::Loader,
    mut chunks: mpsc::Receiver<Chunk>,
    batches: mpsc::Sender<datafusion::error::Result<RecordBatch>>,
    complete: Arc<AtomicBool>,
) -> Loaded {
    let mut out = Vec::new();
    loop {
        let step = match chunks.blocking_recv() {
            None => return Loaded::Aborted,
            Some(Chunk::Data(data)) => loader.push(&data, &mut out).map(|()| None),
            Some(Chunk::End) => loader.finish(&mut out).map(Some),
        };
        let end = match step {
            Ok(end) => end,
            Err(e) => return Loaded::Failed(e),
        };
        for batch in out.drain(..) {
            if batches.blocking_send(Ok(batch)).is_err() {
                return Loaded::WriterGone;
            }
        }
        if end.is_some() {
            // Set before the sender is dropped, so the writer sees a clean end and commits.
            complete.store(true, Ordering::Release);
            drop(batches);
            return Loaded::Done;
        }
    }
}

impl CopyIn {
    /// Takes the next chunk of COPY data from the client. An error means the COPY has
    /// failed (bad data or a failed writer); nothing will be committed.
    pub async fn feed(&mut self, data: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(data);
        if self.pending.len() >= CHUNK_BYTES {
            let chunk = self.pending.split().freeze();
            self.pending.reserve(2 * CHUNK_BYTES);
            self.send(Chunk::Data(chunk)).await?;
        }
        Ok(())
    }

    async fn send(&mut self, chunk: Chunk) -> Result<()> {
        let Some(tx) = &self.chunks else {
            return Err(TallyError::Internal("COPY input is closed".into()));
        };
        if tx.send(chunk).await.is_ok() {
            return Ok(());
        }
        self.chunks = None;
        Err(self.loader_failure().await)
    }

    /// Why the loader stopped before the end of the data.
    async fn loader_failure(&mut self) -> TallyError {
        let Some(loader) = self.loader.take() else {
            return TallyError::Internal("COPY loader is gone".into());
        };
        match loader.await {
            Ok(Loaded::Failed(e)) => e,
            Ok(Loaded::WriterGone) => match self.writer_result().await {
                Err(e) => e,
                Ok(_) => TallyError::Internal("COPY writer ended early".into()),
            },
            Ok(Loaded::Done | Loaded::Aborted) => {
                TallyError::Internal("COPY loader stopped early".into())
            }
            Err(e) => TallyError::Internal(format!("COPY loader: {e}")),
        }
    }

    async fn writer_result(&mut self) -> Result<u64> {
        match self.writer.take() {
            Some(w) => w
                .await
                .map_err(|e| TallyError::Internal(format!("COPY writer: {e}")))?,
            None => Err(TallyError::Internal("COPY writer is gone".into())),
        }
    }

    /// The client finished sending: reads the rest, commits, and returns the row count.
    pub async fn finish(mut self) -> Result<usize> {
        if !self.pending.is_empty() {
            let chunk = self.pending.split().freeze();
            self.send(Chunk::Data(chunk)).await?;
        }
        self.send(Chunk::End).await?;
        self.chunks = None;
        let Some(loader) = self.loader.take() else {
            return Err(TallyError::Internal("COPY loader is gone".into()));
        };
        match loader
            .await
            .map_err(|e| TallyError::Internal(format!("COPY loader: {e}")))?
        {
            Loaded::Done => self.writer_result().await.map(|n| n as usize),
            Loaded::Failed(e) => Err(e),
            Loaded::WriterGone => Err(match self.writer_result().await {
                Err(e) => e,
                Ok(_) => TallyError::Internal("COPY writer ended early".into()),
            }),
            Loaded::Aborted => Err(TallyError::Internal("COPY input ended early".into())),
        }
    }

    /// The COPY failed or was aborted: nothing is committed.
    pub fn abort(self) {
        drop(self);
    }
}

impl Drop for CopyIn {
    /// Closing the input without its end makes the loader stop and the writer's stream end
    /// in an error; aborting the writer as well stops it at once.
    fn drop(&mut self) {
        self.chunks = None;
        if let Some(w) = self.writer.take() {
            w.abort();
        }
    }
}
