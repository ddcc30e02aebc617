//! The change set of a sync run as one streamed DataFusion plan, and the snapshot it leaves.
//!
//! A sync's snapshot is a Delta table `(row_key, row_hash)`: the key of every row the last
//! successful run left at the destination and a 64-bit hash of the row as it was sent. A run
//! plans
//!
//! ```text
//! snapshot(row_key, row_hash)  FULL OUTER JOIN  query + (key, tally_row_hash(mapped columns))
//!                              ON row_key = key
//! ```
//!
//! and reads the join's record batches one at a time ([`split`]): a query row without a
//! snapshot row is *added*, one whose hash differs *changed*, one whose hash is the same
//! *unchanged*, and a snapshot row without a query row *left the query* (what a mirror sync
//! removes). Nothing is collected in tally's own memory: the join is DataFusion's hash join,
//! whose build side (the smaller input, normally the snapshot: about 16 bytes per key plus
//! the key's text) is accounted in the session's memory pool and fails cleanly with
//! "resources exhausted" instead of exhausting the machine; the query side streams.
//!
//! The new snapshot is written from the same stream ([`SnapshotWriter`]): unchanged rows as
//! they pass, sent rows once the destination has answered for them (rows it refused are left
//! out, so the next run sends them again), keys whose removal failed with their old hash (so
//! the next run tries again). The writer is one Delta overwrite whose input is a channel; it
//! commits only when the run says it finished, so a failed or cancelled run leaves the last
//! snapshot as it was.
//!
//! Row hashes are xxh3-64 over the mapped columns' values in map order (native bytes for
//! numbers and times, UTF-8 bytes for text, the display text for nested types; a null has its
//! own mark), seeded with the destination field names and types, so renaming a field in
//! `map` or changing a column's type resends every row once. The hash is stable across
//! servers and versions of tally that keep this function. Keys are stored as BIGINT when the
//! key column is an integer, as text otherwise; a snapshot written with another key type (or
//! by an older tally, with text hashes) is joined on the keys' text and its rows count as
//! changed, so such a run resends everything once and still removes what left the query.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::kernels::cmp::eq;
use datafusion::arrow::compute::{
    and, cast, filter_record_batch, is_not_null, not, prep_null_mask_filter,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::{Column, DataFusionError, Result as DFResult, ScalarValue, exec_err};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::provider_as_source;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, JoinType, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility, cast as cast_expr, col, lit,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTableBuilder;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use tokio::sync::mpsc;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::rows::Mapping;
use crate::error::{Result, TallyError, unwrap_datafusion};
use crate::storage::Warehouse;
use crate::storage::delta::open_table;

/// The join output's key of the query row (null for rows that left the query).
pub const CUR_KEY: &str = "__tally_cur_key";
/// The query row's hash (null exactly for rows that left the query).
pub const CUR_HASH: &str = "__tally_cur_hash";
/// The snapshot's key (null for added rows).
pub const OLD_KEY: &str = "__tally_old_key";
/// The snapshot's hash.
pub const OLD_HASH: &str = "__tally_old_hash";
/// Query columns travel through the join as `__tally_c<i>` (names may repeat in a query).
const COL: &str = "__tally_c";

/// Marks a null so that it differs from every value, the empty string included.
const NULL_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

/// `tally_row_hash(seed, col, ...)`: the stable 64-bit hash of the listed columns of each
/// row, chained from `seed` (a BIGINT literal).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RowHash {
    signature: Signature,
}

impl RowHash {
    /// The function.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(RowHash {
            signature: Signature::variadic_any(Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for RowHash {
    fn name(&self) -> &str {
        "tally_row_hash"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let n = args.number_rows;
        let Some((first, rest)) = args.args.split_first() else {
            return exec_err!("tally_row_hash needs a seed");
        };
        let seed = match first {
            ColumnarValue::Scalar(ScalarValue::Int64(Some(s))) => *s as u64,
            _ => return exec_err!("tally_row_hash: the seed must be a BIGINT literal"),
        };
        let mut hashes = vec![seed; n];
        for a in rest {
            hash_array(&a.to_array(n)?, &mut hashes)?;
        }
        Ok(ColumnarValue::Array(Arc::new(
            Int64Array::from_iter_values(hashes.into_iter().map(|h| h as i64)),
        )))
    }
}

/// Chains every value of `array` into `hashes` (one per row).
pub fn hash_array(array: &ArrayRef, hashes: &mut [u64]) -> DFResult<()> {
    let nulls = array.logical_nulls();
    let null = |i: usize| nulls.as_ref().is_some_and(|b| b.is_null(i));
    macro_rules! bytes {
        ($a:expr) => {{
            let a = $a;
            for (i, h) in hashes.iter_mut().enumerate() {
                *h = if null(i) {
                    xxh3_64_with_seed(&[], *h ^ NULL_SALT)
                } else {
                    let v: &[u8] = a.value(i).as_ref();
                    xxh3_64_with_seed(v, *h)
                };
            }
        }};
    }
    match array.data_type() {
        DataType::Null => {
            for h in hashes.iter_mut() {
                *h = xxh3_64_with_seed(&[], *h ^ NULL_SALT);
            }
        }
        DataType::Boolean => {
            let a = array.as_boolean();
            for (i, h) in hashes.iter_mut().enumerate() {
                *h = if null(i) {
                    xxh3_64_with_seed(&[], *h ^ NULL_SALT)
                } else {
                    xxh3_64_with_seed(&[a.value(i) as u8], *h)
                };
            }
        }
        DataType::Utf8 => bytes!(array.as_string::<i32>()),
        DataType::LargeUtf8 => bytes!(array.as_string::<i64>()),
        DataType::Utf8View => bytes!(array.as_string_view()),
        DataType::Binary => bytes!(array.as_binary::<i32>()),
        DataType::LargeBinary => bytes!(array.as_binary::<i64>()),
        DataType::BinaryView => bytes!(array.as_binary_view()),
        DataType::FixedSizeBinary(_) => bytes!(array.as_fixed_size_binary()),
        DataType::Dictionary(_, value) => {
            let plain = cast(array, value)?;
            return hash_array(&plain, hashes);
        }
        t if t.is_primitive() => {
            let width = t.primitive_width().unwrap_or(8);
            let data = array.to_data();
            let values = &data.buffers()[0].as_slice()[data.offset() * width..];
            for (i, h) in hashes.iter_mut().enumerate() {
                *h = if null(i) {
                    xxh3_64_with_seed(&[], *h ^ NULL_SALT)
                } else {
                    xxh3_64_with_seed(&values[i * width..(i + 1) * width], *h)
                };
            }
        }
        _ => {
            use std::fmt::Write;
            let f = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
            let mut s = String::new();
            for (i, h) in hashes.iter_mut().enumerate() {
                *h = if null(i) {
                    xxh3_64_with_seed(&[], *h ^ NULL_SALT)
                } else {
                    s.clear();
                    let _ = write!(s, "{}", f.value(i));
                    xxh3_64_with_seed(s.as_bytes(), *h)
                };
            }
        }
    }
    Ok(())
}

/// The hash seed of a mapping: its destination field names and source types.
pub fn seed(fields: &[(String, DataType)]) -> u64 {
    let mut text = String::from("tally-sync-row-hash-v1");
    for (name, t) in fields {
        text.push('\u{1e}');
        text.push_str(name);
        text.push('\u{1f}');
        text.push_str(&t.to_string());
    }
    xxh3_64(text.as_bytes())
}

/// How a key column is stored in the snapshot: integers as BIGINT, anything else as text.
pub fn snapshot_key_type(t: &DataType) -> DataType {
    match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => DataType::Int64,
        _ => DataType::Utf8,
    }
}

/// The snapshot table's columns for keys stored as `key_type`.
pub fn snapshot_schema(key_type: &DataType) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("row_key", key_type.clone(), true),
        Field::new("row_hash", DataType::Int64, true),
    ]))
}

/// The diff of one run, planned and not yet executed.
pub struct DiffPlan {
    /// The join: query columns, then [`CUR_KEY`], [`CUR_HASH`], [`OLD_KEY`], [`OLD_HASH`].
    pub df: DataFrame,
    /// The query result's columns (all nullable), what [`Split::send`] holds.
    pub payload: SchemaRef,
    /// The new snapshot's columns.
    pub snapshot: SchemaRef,
}

/// Plans the diff of `query` (a COPY's query) under `mapping` against the snapshot `old`,
/// `(row_key, row_hash)` (none before the first successful run; see
/// [`super::progress::effective_snapshot`] for what a run reads as its snapshot).
pub fn plan(
    ctx: &SessionContext,
    query: DataFrame,
    mapping: &Mapping,
    old: Option<DataFrame>,
) -> Result<DiffPlan> {
    let qschema = query.schema().clone();
    let fields = qschema.fields();
    let index_of = |name: &str| -> Result<usize> {
        fields
            .iter()
            .position(|f| f.name() == name)
            .ok_or_else(|| TallyError::Internal(format!("sync diff: no column {name}")))
    };
    let column = |i: usize| {
        let (q, f) = qschema.qualified_field(i);
        Expr::Column(Column::new(q.cloned(), f.name()))
    };
    let key_source = mapping
        .key_source
        .as_deref()
        .ok_or_else(|| TallyError::Internal("a sync diff needs a key".into()))?;
    let key_idx = index_of(key_source)?;
    let key_type = snapshot_key_type(fields[key_idx].data_type());

    let (old_key_type, old_hash_ok) = match &old {
        Some(p) => {
            let s = p.schema();
            (
                s.field_with_unqualified_name("row_key")
                    .ok()
                    .map(|f| f.data_type().clone()),
                s.field_with_unqualified_name("row_hash")
                    .is_ok_and(|f| f.data_type() == &DataType::Int64),
            )
        }
        None => (None, true),
    };
    let join_type = match &old_key_type {
        Some(t) if *t != key_type => DataType::Utf8,
        _ => key_type.clone(),
    };

    let mut hash_args = vec![];
    let mut seed_fields = vec![];
    for (src, dst) in &mapping.columns {
        let i = index_of(src)?;
        hash_args.push(column(i));
        seed_fields.push((dst.clone(), fields[i].data_type().clone()));
    }
    hash_args.insert(0, lit(seed(&seed_fields) as i64));

    let n = fields.len();
    let mut exprs: Vec<Expr> = (0..n)
        .map(|i| column(i).alias(format!("{COL}{i}")))
        .collect();
    exprs.push(
        cast_expr(
            cast_expr(column(key_idx), key_type.clone()),
            join_type.clone(),
        )
        .alias(CUR_KEY),
    );
    exprs.push(RowHash::udf().call(hash_args).alias(CUR_HASH));
    let cur = query.select(exprs).map_err(unwrap_datafusion)?;

    let old_df = match old {
        Some(p) if old_key_type.is_some() => {
            let hash = if old_hash_ok {
                col("row_hash")
            } else {
                lit(ScalarValue::Int64(None))
            };
            p.select(vec![
                cast_expr(col("row_key"), join_type.clone()).alias(OLD_KEY),
                hash.alias(OLD_HASH),
            ])
            .map_err(unwrap_datafusion)?
        }
        _ => {
            let schema = Arc::new(Schema::new(vec![
                Field::new(OLD_KEY, join_type.clone(), true),
                Field::new(OLD_HASH, DataType::Int64, true),
            ]));
            ctx.read_batch(RecordBatch::new_empty(schema))
                .map_err(unwrap_datafusion)?
        }
    };
    // The snapshot first: the hash join builds on its left input unless statistics say the
    // query is smaller.
    let joined = old_df
        .join(cur, JoinType::Full, &[OLD_KEY], &[CUR_KEY], None)
        .map_err(unwrap_datafusion)?;
    let mut out: Vec<Expr> = (0..n).map(|i| col(format!("{COL}{i}"))).collect();
    out.extend([col(CUR_KEY), col(CUR_HASH), col(OLD_KEY), col(OLD_HASH)]);
    let df = joined.select(out).map_err(unwrap_datafusion)?;

    let payload = Arc::new(Schema::new(
        fields
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    Ok(DiffPlan {
        df,
        payload,
        snapshot: snapshot_schema(&key_type),
    })
}

/// One batch of the diff, sorted out.
#[derive(Debug)]
pub struct Split {
    /// Rows new since the last snapshot.
    pub added: u64,
    /// Rows whose hash changed.
    pub changed: u64,
    /// Rows whose hash did not change.
    pub unchanged: u64,
    /// The query columns of the rows to send: added, changed, and rows with a null key
    /// (which the caller refuses).
    pub send: RecordBatch,
    /// `(row_key, row_hash)` of the rows in `send`, in the same order (null key for null-key
    /// rows): they join the new snapshot once the destination accepted them.
    pub send_snapshot: RecordBatch,
    /// `(row_key, row_hash)` of the unchanged rows: straight into the new snapshot.
    pub keep: RecordBatch,
    /// `(row_key, row_hash)` of the snapshot rows the query no longer returns.
    pub gone: RecordBatch,
}

/// Sorts one batch of [`DiffPlan::df`] out.
pub fn split(batch: &RecordBatch, payload: &SchemaRef, snapshot: &SchemaRef) -> Result<Split> {
    let df = |e: datafusion::arrow::error::ArrowError| TallyError::DataFusion(e.into());
    let n = payload.fields().len();
    let (cur_key, cur_hash) = (batch.column(n), batch.column(n + 1));
    let (old_key, old_hash) = (batch.column(n + 2), batch.column(n + 3));
    let present = is_not_null(cur_hash).map_err(df)?;
    let keyed = is_not_null(cur_key).map_err(df)?;
    let matched = and(&keyed, &is_not_null(old_key).map_err(df)?).map_err(df)?;
    let same = eq(
        cur_hash.as_primitive::<Int64Type>(),
        old_hash.as_primitive::<Int64Type>(),
    )
    .map_err(df)?;
    // Null (either side missing, or a legacy snapshot without hashes) is "not the same".
    let same = if same.null_count() > 0 {
        prep_null_mask_filter(&same)
    } else {
        same
    };
    let unchanged = and(&matched, &same).map_err(df)?;
    let send = and(&present, &not(&unchanged).map_err(df)?).map_err(df)?;
    let gone = not(&present).map_err(df)?;
    let changed = and(&matched, &not(&same).map_err(df)?).map_err(df)?;
    let added = and(
        &keyed,
        &not(&is_not_null(old_key).map_err(df)?).map_err(df)?,
    )
    .map_err(df)?;

    let pair = |key: &ArrayRef, hash: &ArrayRef| -> Result<RecordBatch> {
        let key = if key.data_type() == snapshot.field(0).data_type() {
            key.clone()
        } else {
            cast(key, snapshot.field(0).data_type()).map_err(df)?
        };
        RecordBatch::try_new(snapshot.clone(), vec![key, hash.clone()]).map_err(df)
    };
    let send_rows = filter_record_batch(batch, &send).map_err(df)?;
    let keep_rows = filter_record_batch(batch, &unchanged).map_err(df)?;
    let gone_rows = filter_record_batch(batch, &gone).map_err(df)?;
    Ok(Split {
        added: added.true_count() as u64,
        changed: changed.true_count() as u64,
        unchanged: unchanged.true_count() as u64,
        send: RecordBatch::try_new(payload.clone(), send_rows.columns()[..n].to_vec())
            .map_err(df)?,
        send_snapshot: pair(send_rows.column(n), send_rows.column(n + 1))?,
        keep: pair(keep_rows.column(n), keep_rows.column(n + 1))?,
        gone: pair(gone_rows.column(n + 2), gone_rows.column(n + 3))?,
    })
}

/// What the snapshot writer's input channel carries: batches, then the word that the run
/// finished. A channel that closes without it (a failed or cancelled run) fails the write.
enum Msg {
    Batch(RecordBatch),
    End,
}

/// The writer's input as a one-partition stream for a DataFusion scan.
struct ChannelSource {
    schema: SchemaRef,
    rx: parking_lot::Mutex<Option<mpsc::Receiver<Msg>>>,
}

impl fmt::Debug for ChannelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSource").finish()
    }
}

impl PartitionStream for ChannelSource {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rx = self.rx.lock().take();
        let stream = futures::stream::unfold((rx, false), |(rx, done)| async move {
            if done {
                return None;
            }
            let Some(mut rx) = rx else {
                let e = DataFusionError::Internal("the sync snapshot input was read twice".into());
                return Some((Err(e), (None, true)));
            };
            match rx.recv().await {
                Some(Msg::Batch(b)) => Some((Ok(b), (Some(rx), false))),
                Some(Msg::End) => None,
                None => Some((
                    Err(DataFusionError::Execution(
                        "the sync run stopped; its snapshot is not replaced".into(),
                    )),
                    (None, true),
                )),
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// Writes a sync's new snapshot from batches handed over during the run: one Delta
/// overwrite, committed by [`SnapshotWriter::commit`] and by nothing else.
pub struct SnapshotWriter {
    schema: SchemaRef,
    tx: mpsc::Sender<Msg>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
    /// Rows handed over so far.
    pub rows: u64,
}

impl SnapshotWriter {
    /// Starts the overwrite of the snapshot at `location` (created when missing).
    pub async fn start(
        ctx: &SessionContext,
        warehouse: &Warehouse,
        location: &str,
        schema: SchemaRef,
    ) -> Result<Self> {
        let url = warehouse.url_of(location)?;
        let table = match open_table(&url, &warehouse.options).await {
            Ok(t) => t,
            Err(_) => DeltaTableBuilder::from_url(url)?
                .with_storage_options(warehouse.options.clone())
                .build()?,
        };
        let (tx, rx) = mpsc::channel(4);
        let source = ChannelSource {
            schema: schema.clone(),
            rx: parking_lot::Mutex::new(Some(rx)),
        };
        let provider = StreamingTable::try_new(schema.clone(), vec![Arc::new(source)])
            .map_err(unwrap_datafusion)?;
        let input = LogicalPlanBuilder::scan(
            "sync_snapshot",
            provider_as_source(Arc::new(provider)),
            None,
        )
        .and_then(|b| b.build())
        .map_err(unwrap_datafusion)?;
        let state: Arc<dyn datafusion::catalog::Session> = Arc::new(ctx.state());
        let write = table
            .write(Vec::<RecordBatch>::new())
            .with_input_plan(input)
            .with_save_mode(SaveMode::Overwrite)
            .with_schema_mode(SchemaMode::Overwrite)
            .with_session_state(state);
        let task = tokio::spawn(async move {
            let table = write.await?;
            // Only this sync (under its lock) reads the snapshot: old versions' files can go.
            if let Err(e) = table
                .vacuum()
                .with_retention_period(chrono::Duration::zero())
                .with_enforce_retention_duration(false)
                .await
            {
                tracing::debug!(error = %e, "could not vacuum a sync snapshot");
            }
            Ok(())
        });
        Ok(SnapshotWriter {
            schema,
            tx,
            task: Some(task),
            rows: 0,
        })
    }

    /// Hands `batch` (`(row_key, row_hash)`, key cast to the snapshot's type) to the writer.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let key_type = self.schema.field(0).data_type();
        let key = if batch.column(0).data_type() == key_type {
            batch.column(0).clone()
        } else {
            cast(batch.column(0), key_type).map_err(|e| TallyError::DataFusion(e.into()))?
        };
        let batch = RecordBatch::try_new(self.schema.clone(), vec![key, batch.column(1).clone()])
            .map_err(|e| TallyError::DataFusion(e.into()))?;
        self.rows += batch.num_rows() as u64;
        if self.tx.send(Msg::Batch(batch)).await.is_err() {
            // The write stopped: its own error says why.
            return Err(self.finish().await.err().unwrap_or_else(|| {
                TallyError::Internal("the sync snapshot writer stopped early".into())
            }));
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        let Some(task) = self.task.take() else {
            return Err(TallyError::Internal(
                "the sync snapshot writer already stopped".into(),
            ));
        };
        match task.await {
            Ok(r) => r,
            Err(e) => Err(TallyError::Internal(format!("sync snapshot writer: {e}"))),
        }
    }

    /// Ends the input and waits for the commit.
    pub async fn commit(mut self) -> Result<()> {
        let _ = self.tx.send(Msg::End).await;
        self.finish().await
    }

    /// Stops the write without committing: the last snapshot stays.
    pub async fn abort(mut self) {
        // Closing the input without `End` fails the write.
        drop(std::mem::replace(&mut self.tx, mpsc::channel(1).0));
        let _ = self.finish().await;
    }
}

/// The key of every row of `batch` (`(row_key, ...)`) as text, what destinations get.
pub fn key_texts(batch: &RecordBatch) -> Result<Vec<String>> {
    let text =
        cast(batch.column(0), &DataType::Utf8).map_err(|e| TallyError::DataFusion(e.into()))?;
    let text = text.as_string::<i32>();
    Ok((0..text.len()).map(|i| text.value(i).to_string()).collect())
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{StringArray, TimestampMicrosecondArray};

    use super::*;

    fn hashes(cols: &[ArrayRef]) -> Vec<u64> {
        let mut h = vec![7u64; cols[0].len()];
        for c in cols {
            hash_array(c, &mut h).expect("hash");
        }
        h
    }

    #[test]
    fn row_hashes_are_stable_and_tell_values_apart() {
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(1), None, Some(2)]));
        let text: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), Some(""), Some(""), None]));
        let h = hashes(&[ints.clone(), text.clone()]);
        assert_eq!(h, hashes(&[ints.clone(), text.clone()]), "deterministic");
        let distinct: std::collections::HashSet<_> = h.iter().collect();
        assert_eq!(distinct.len(), 4, "{h:?}");
        // Sliced arrays hash like their rows.
        let h2 = hashes(&[ints.slice(1, 3), text.slice(1, 3)]);
        assert_eq!(h2, h[1..].to_vec());
        // Column order matters; types go through their own paths.
        assert_ne!(hashes(&[text.clone(), ints.clone()]), h);
        let ts: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![1, 2, 3, 4]));
        assert_eq!(hashes(std::slice::from_ref(&ts)), hashes(&[ts]));
        assert_ne!(
            seed(&[("a".into(), DataType::Int64)]),
            seed(&[("b".into(), DataType::Int64)])
        );
    }

    #[test]
    fn a_diff_batch_sorts_into_added_changed_unchanged_and_gone() {
        let payload = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let snap = snapshot_schema(&DataType::Int64);
        let int = |v: Vec<Option<i64>>| -> ArrayRef { Arc::new(Int64Array::from(v)) };
        let schema = Arc::new(Schema::new(
            ["c0", CUR_KEY, CUR_HASH, OLD_KEY, OLD_HASH]
                .map(|n| Field::new(n, DataType::Int64, true))
                .to_vec(),
        ));
        // Rows: added 1, changed 2, unchanged 3, gone 4, a null key, a legacy null hash.
        let batch = RecordBatch::try_new(
            schema,
            vec![
                int(vec![Some(1), Some(2), Some(3), None, None, Some(6)]),
                int(vec![Some(1), Some(2), Some(3), None, None, Some(6)]),
                int(vec![Some(10), Some(20), Some(30), None, Some(50), Some(60)]),
                int(vec![None, Some(2), Some(3), Some(4), None, Some(6)]),
                int(vec![None, Some(21), Some(30), Some(40), None, None]),
            ],
        )
        .expect("batch");
        let s = split(&batch, &payload, &snap).expect("split");
        assert_eq!((s.added, s.changed, s.unchanged), (1, 2, 1));
        let ids = |b: &RecordBatch| -> Vec<Option<i64>> {
            b.column(0).as_primitive::<Int64Type>().iter().collect()
        };
        assert_eq!(ids(&s.send), vec![Some(1), Some(2), None, Some(6)]);
        assert_eq!(ids(&s.send_snapshot), vec![Some(1), Some(2), None, Some(6)]);
        assert_eq!(ids(&s.keep), vec![Some(3)]);
        assert_eq!(ids(&s.gone), vec![Some(4)]);
        let gone_hash: Vec<Option<i64>> = s
            .gone
            .column(1)
            .as_primitive::<Int64Type>()
            .iter()
            .collect();
        assert_eq!(gone_hash, vec![Some(40)]);
        assert_eq!(key_texts(&s.gone).expect("text"), vec!["4".to_string()]);
    }
}
