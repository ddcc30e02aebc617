//! COPY: `COPY table [(columns)] FROM STDIN`, `COPY table|(query) TO STDOUT` in PostgreSQL's
//! text and CSV formats, and `COPY (query) TO '<url>' (FORMAT parquet|csv|json)` onto object
//! storage for superusers.
//!
//! COPY FROM streams: rows are parsed as the client sends them, cast to the table's types in
//! batches and fed through a bounded channel into one Delta append, so memory stays bounded
//! and the whole COPY commits once at the end. A bad row fails the COPY with its line number
//! and nothing is committed.

use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, ListArray, RecordBatch, StringArray, new_null_array,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::TableProvider;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::physical_plan::collect;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::names::{ident, resolve};
use super::{Completion, Output, query};
use crate::engine::Session;
use crate::error::{Result, TallyError, unwrap_datafusion};
use crate::wire::values::ColumnWriter;

/// Rows per batch handed to the Delta writer.
const BATCH_ROWS: usize = 8192;

/// A COPY data format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    /// PostgreSQL's text format: delimited, `\N` for NULL, backslash escapes.
    Text {
        /// Field delimiter (tab by default).
        delimiter: u8,
        /// NULL marker.
        null: String,
    },
    /// CSV with optional header; empty unquoted field is NULL by default.
    Csv {
        /// Field delimiter.
        delimiter: u8,
        /// Quote character.
        quote: u8,
        /// Escape character inside quotes.
        escape: u8,
        /// NULL marker.
        null: String,
        /// First line is a header.
        header: bool,
    },
}

impl CopyFormat {
    fn from_options(
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
    ) -> Result<(CopyFormat, Option<String>)> {
        let mut kind = "text".to_string();
        let (mut delimiter, mut null, mut header, mut quote, mut escape) =
            (None, None, false, b'"', None);
        for o in options {
            match o {
                CopyOption::Format(f) => kind = f.value.to_ascii_lowercase(),
                CopyOption::Delimiter(c) => delimiter = Some(*c as u8),
                CopyOption::Null(n) => null = Some(n.clone()),
                CopyOption::Header(h) => header = *h,
                CopyOption::Quote(c) => quote = *c as u8,
                CopyOption::Escape(c) => escape = Some(*c as u8),
                CopyOption::Encoding(e)
                    if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
                CopyOption::Freeze(_)
                | CopyOption::ForceQuote(_)
                | CopyOption::ForceNotNull(_)
                | CopyOption::ForceNull(_) => {}
                other => {
                    return Err(TallyError::Unsupported(format!(
                        "COPY option {other} is not supported"
                    )));
                }
            }
        }
        for o in legacy {
            match o {
                CopyLegacyOption::Csv(csv) => {
                    kind = "csv".into();
                    for c in csv {
                        match c {
                            CopyLegacyCsvOption::Header => header = true,
                            CopyLegacyCsvOption::Quote(q) => quote = *q as u8,
                            CopyLegacyCsvOption::Escape(e) => escape = Some(*e as u8),
                            _ => {}
                        }
                    }
                }
                CopyLegacyOption::Delimiter(c) => delimiter = Some(*c as u8),
                CopyLegacyOption::Null(n) => null = Some(n.clone()),
                CopyLegacyOption::Binary => kind = "binary".into(),
                CopyLegacyOption::Header => header = true,
                other => {
                    return Err(TallyError::Unsupported(format!(
                        "COPY option {other} is not supported"
                    )));
                }
            }
        }
        match kind.as_str() {
            "text" => {
                if header {
                    return Err(TallyError::Unsupported(
                        "COPY HEADER is available only in CSV mode".into(),
                    ));
                }
                Ok((
                    CopyFormat::Text {
                        delimiter: delimiter.unwrap_or(b'\t'),
                        null: null.unwrap_or_else(|| "\\N".into()),
                    },
                    None,
                ))
            }
            "csv" => Ok((
                CopyFormat::Csv {
                    delimiter: delimiter.unwrap_or(b','),
                    quote,
                    escape: escape.unwrap_or(quote),
                    null: null.unwrap_or_default(),
                    header,
                },
                None,
            )),
            "binary" => Err(TallyError::Unsupported(
                "COPY BINARY is not supported yet; use FORMAT text or csv".into(),
            )),
            other => Ok((
                CopyFormat::Text {
                    delimiter: b'\t',
                    null: "\\N".into(),
                },
                Some(other.to_string()),
            )),
        }
    }
}

/// Starts a COPY statement.
pub async fn start(
    session: &mut Session,
    source: CopySource,
    to: bool,
    target: CopyTarget,
    options: Vec<CopyOption>,
    legacy: Vec<CopyLegacyOption>,
) -> Result<Output> {
    let (format, file_format) = CopyFormat::from_options(&options, &legacy)?;
    match (to, target) {
        (false, CopyTarget::Stdin) => {
            if file_format.is_some() {
                return Err(TallyError::Unsupported("COPY FROM STDIN supports FORMAT text and csv".into()));
            }
            copy_in(session, source, format).await
        }
        (true, CopyTarget::Stdout) => {
            if file_format.is_some() {
                return Err(TallyError::Unsupported("COPY TO STDOUT supports FORMAT text and csv".into()));
            }
            let stream = source_stream(session, source).await?;
            Ok(Output::CopyOut(CopyOut { format, stream }))
        }
        (true, CopyTarget::File { filename }) => copy_to_url(session, source, &filename, file_format.as_deref(), &format).await,
        (false, CopyTarget::File { .. }) => Err(TallyError::Unsupported(
            "COPY FROM a server file is not supported: use COPY FROM STDIN (psql \\copy) or CREATE EXTERNAL TABLE".into(),
        )),
        (_, CopyTarget::Program { .. }) => Err(TallyError::PermissionDenied("COPY ... PROGRAM is not allowed".into())),
        _ => Err(TallyError::syntax("COPY FROM needs STDIN and COPY TO needs STDOUT or a URL")),
    }
}

async fn source_stream(session: &Session, source: CopySource) -> Result<SendableRecordBatchStream> {
    let query = match source {
        CopySource::Query(q) => *q,
        CopySource::Table {
            table_name,
            columns,
        } => {
            let cols = if columns.is_empty() {
                "*".to_string()
            } else {
                columns
                    .iter()
                    .map(|c| format!("\"{}\"", ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let sql = format!("SELECT {cols} FROM {table_name}");
            match super::parse::parse(&sql)?.pop().map(|p| p.stmt) {
                Some(super::TallyStatement::Sql(s)) => match *s {
                    Statement::Query(q) => *q,
                    _ => return Err(TallyError::Internal("COPY source".into())),
                },
                _ => return Err(TallyError::Internal("COPY source".into())),
            }
        }
    };
    match query::run_query(session, Statement::Query(Box::new(query))).await? {
        Output::Rows(s) => Ok(s),
        _ => Err(TallyError::Internal("query without rows".into())),
    }
}

/// `COPY (query) TO '<url>' (FORMAT parquet|csv|json)`: writes files on object storage.
/// Only superusers may, since it writes wherever the server's credentials reach.
async fn copy_to_url(
    session: &Session,
    source: CopySource,
    target: &str,
    file_format: Option<&str>,
    format: &CopyFormat,
) -> Result<Output> {
    if !session.is_superuser() {
        return Err(TallyError::PermissionDenied(
            "permission denied: COPY to a file or URL requires the superuser privilege".into(),
        ));
    }
    let url = url::Url::parse(target)
        .or_else(|_| {
            if std::path::Path::new(target).is_absolute() {
                url::Url::from_file_path(target)
            } else {
                Err(())
            }
        })
        .map_err(|_| TallyError::InvalidValue {
            code: "22023",
            message: format!("COPY target must be a URL or an absolute path: '{target}'"),
        })?;
    let stream_query = match source {
        CopySource::Query(q) => Statement::Query(q),
        CopySource::Table { table_name, .. } => {
            match super::parse::parse(&format!("SELECT * FROM {table_name}"))?
                .pop()
                .map(|p| p.stmt)
            {
                Some(super::TallyStatement::Sql(s)) => *s,
                _ => return Err(TallyError::Internal("COPY source".into())),
            }
        }
    };
    if url.scheme() != "file" {
        let (store, _) = crate::storage::store_for_url(&url, &session.engine.warehouse().options)?;
        session.ctx.runtime_env().register_object_store(&url, store);
    }
    let plan = query::plan(session, stream_query).await?;
    let df = session
        .ctx
        .execute_logical_plan(plan)
        .await
        .map_err(unwrap_datafusion)?;
    let kind = file_format
        .map(str::to_string)
        .unwrap_or_else(|| match format {
            CopyFormat::Csv { .. } => "csv".into(),
            CopyFormat::Text { .. } => {
                if target.ends_with(".parquet") {
                    "parquet".into()
                } else {
                    "csv".into()
                }
            }
        });
    let opts = datafusion::dataframe::DataFrameWriteOptions::new();
    let batches = match kind.as_str() {
        "parquet" => df.write_parquet(url.as_str(), opts, None).await,
        "csv" => df.write_csv(url.as_str(), opts, None).await,
        "json" | "ndjson" => df.write_json(url.as_str(), opts, None).await,
        other => {
            return Err(TallyError::Unsupported(format!(
                "COPY TO format '{other}' (use parquet, csv or json)"
            )));
        }
    }
    .map_err(unwrap_datafusion)?;
    let rows: u64 = crate::storage::delta::affected_rows(&batches);
    Ok(Output::Command(Completion::rows("COPY", rows as usize)))
}

/// Rows streaming out in COPY format.
pub struct CopyOut {
    /// Text or CSV.
    pub format: CopyFormat,
    /// The rows.
    pub stream: SendableRecordBatchStream,
}

/// The formats a COPY OUT writes values in: PostgreSQL's text output of each type.
fn pg_format_options() -> FormatOptions<'static> {
    FormatOptions::new()
        .with_null("")
        .with_date_format(Some("%Y-%m-%d"))
        .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.f"))
        .with_timestamp_tz_format(Some("%Y-%m-%d %H:%M:%S%.f%:::z"))
}

impl CopyOut {
    /// The CSV header line, if the format asks for one.
    pub fn header(&self) -> Option<Bytes> {
        match &self.format {
            CopyFormat::Csv {
                header: true,
                delimiter,
                quote,
                escape,
                ..
            } => {
                let mut buf = BytesMut::new();
                for (i, f) in self.stream.schema().fields().iter().enumerate() {
                    if i > 0 {
                        buf.put_u8(*delimiter);
                    }
                    write_csv_field(
                        &mut buf,
                        f.name().as_bytes(),
                        *delimiter,
                        *quote,
                        *escape,
                        false,
                    );
                }
                buf.put_u8(b'\n');
                Some(buf.freeze())
            }
            _ => None,
        }
    }

    /// Encodes a batch as one buffer, split into one message per row (PostgreSQL sends a
    /// CopyData per row, and clients count rows that way). Columns of the common types are
    /// written straight from the Arrow buffers ([`crate::wire::values`]); the rest through
    /// Arrow's formatter.
    pub fn encode(format: &CopyFormat, batch: &RecordBatch) -> Result<Vec<Bytes>> {
        let opts = pg_format_options();
        let columns: Vec<Cell> = batch
            .columns()
            .iter()
            .map(|a| match ColumnWriter::text(a) {
                Some(w) => Ok(Cell::Fast(w)),
                None => Column::new(a, &opts).map(Cell::General),
            })
            .collect::<Result<_>>()?;
        let (delimiter, null) = match format {
            CopyFormat::Text { delimiter, null }
            | CopyFormat::Csv {
                delimiter, null, ..
            } => (*delimiter, null.as_bytes()),
        };
        // The bytes that make a value need escaping (text) or quoting (CSV).
        let mut special = [false; 256];
        special[usize::from(delimiter)] = true;
        special[usize::from(b'\n')] = true;
        special[usize::from(b'\r')] = true;
        match format {
            CopyFormat::Text { .. } => special[usize::from(b'\\')] = true,
            CopyFormat::Csv { quote, escape, .. } => {
                special[usize::from(*quote)] = true;
                special[usize::from(*escape)] = true;
            }
        }
        let mut buf = BytesMut::with_capacity(batch.num_rows() * 16 * columns.len().max(1));
        let mut ends = Vec::with_capacity(batch.num_rows());
        let mut scratch = String::new();
        let mut raw: Vec<u8> = Vec::new();
        for row in 0..batch.num_rows() {
            for (i, c) in columns.iter().enumerate() {
                if i > 0 {
                    buf.put_u8(delimiter);
                }
                let at = buf.len();
                match c {
                    Cell::Fast(w) if w.is_null(row) => {
                        buf.put_slice(null);
                        continue;
                    }
                    Cell::Fast(w) => {
                        w.write(row, &mut buf)
                            .map_err(|e| TallyError::InvalidValue {
                                code: "22P02",
                                message: e.to_string(),
                            })?
                    }
                    Cell::General(c) if c.array.is_null(row) => {
                        buf.put_slice(null);
                        continue;
                    }
                    Cell::General(c) => {
                        scratch.clear();
                        c.write(row, &mut scratch)?;
                        buf.put_slice(scratch.as_bytes());
                    }
                }
                let value = &buf[at..];
                let quote_csv =
                    matches!(format, CopyFormat::Csv { .. }) && (value.is_empty() || value == null);
                if quote_csv || value.iter().any(|&b| special[usize::from(b)]) {
                    raw.clear();
                    raw.extend_from_slice(value);
                    buf.truncate(at);
                    match format {
                        CopyFormat::Text { .. } => write_text_field(&mut buf, &raw, delimiter),
                        CopyFormat::Csv { quote, escape, .. } => {
                            write_csv_field(&mut buf, &raw, delimiter, *quote, *escape, quote_csv)
                        }
                    }
                }
            }
            buf.put_u8(b'\n');
            ends.push(buf.len());
        }
        let all = buf.freeze();
        let mut start = 0;
        Ok(ends
            .into_iter()
            .map(|end| {
                let b = all.slice(start..end);
                start = end;
                b
            })
            .collect())
    }
}

/// How one column of a COPY OUT is written.
enum Cell<'a> {
    Fast(ColumnWriter<'a>),
    General(Column<'a>),
}

/// A column ready to print values in PostgreSQL's text output format.
struct Column<'a> {
    array: &'a ArrayRef,
    kind: ColumnKind<'a>,
}

enum ColumnKind<'a> {
    Bool(&'a BooleanArray),
    List(&'a ListArray, FormatOptions<'static>),
    Other(ArrayFormatter<'a>),
}

impl<'a> Column<'a> {
    fn new(array: &'a ArrayRef, opts: &FormatOptions<'a>) -> Result<Self> {
        let kind = match array.data_type() {
            DataType::Boolean => ColumnKind::Bool(
                array
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| TallyError::Internal("bool".into()))?,
            ),
            DataType::List(_) => ColumnKind::List(
                array
                    .as_any()
                    .downcast_ref::<ListArray>()
                    .ok_or_else(|| TallyError::Internal("list".into()))?,
                pg_format_options(),
            ),
            _ => ColumnKind::Other(
                ArrayFormatter::try_new(array.as_ref(), opts)
                    .map_err(|e| TallyError::Internal(e.to_string()))?,
            ),
        };
        Ok(Column { array, kind })
    }

    fn write(&self, row: usize, out: &mut String) -> Result<()> {
        use std::fmt::Write;
        match &self.kind {
            ColumnKind::Bool(b) => out.push(if b.value(row) { 't' } else { 'f' }),
            ColumnKind::List(l, opts) => {
                let values = l.value(row);
                let f = ArrayFormatter::try_new(values.as_ref(), opts)
                    .map_err(|e| TallyError::Internal(e.to_string()))?;
                out.push('{');
                for i in 0..values.len() {
                    if i > 0 {
                        out.push(',');
                    }
                    if values.is_null(i) {
                        out.push_str("NULL");
                    } else {
                        let v = f.value(i).to_string();
                        if v.is_empty()
                            || v.contains([',', '{', '}', '"', '\\', ' '])
                            || v.eq_ignore_ascii_case("null")
                        {
                            out.push('"');
                            out.push_str(&v.replace('\\', "\\\\").replace('"', "\\\""));
                            out.push('"');
                        } else {
                            out.push_str(&v);
                        }
                    }
                }
                out.push('}');
            }
            ColumnKind::Other(f) => {
                write!(out, "{}", f.value(row)).map_err(|e| TallyError::Internal(e.to_string()))?
            }
        }
        Ok(())
    }
}

fn write_text_field(buf: &mut BytesMut, v: &[u8], delimiter: u8) {
    for &b in v {
        match b {
            b'\\' => buf.put_slice(b"\\\\"),
            b'\n' => buf.put_slice(b"\\n"),
            b'\r' => buf.put_slice(b"\\r"),
            b'\t' if delimiter == b'\t' => buf.put_slice(b"\\t"),
            d if d == delimiter => {
                buf.put_u8(b'\\');
                buf.put_u8(d);
            }
            other => buf.put_u8(other),
        }
    }
}

fn write_csv_field(
    buf: &mut BytesMut,
    v: &[u8],
    delimiter: u8,
    quote: u8,
    escape: u8,
    force_quote: bool,
) {
    let needs = force_quote
        || v.iter()
            .any(|&b| b == delimiter || b == quote || b == b'\n' || b == b'\r' || b == escape);
    if !needs {
        buf.put_slice(v);
        return;
    }
    buf.put_u8(quote);
    for &b in v {
        if b == quote || b == escape {
            buf.put_u8(escape);
        }
        buf.put_u8(b);
    }
    buf.put_u8(quote);
}

/// A COPY FROM STDIN in progress.
pub struct CopyIn {
    format: CopyFormat,
    table_name: String,
    /// Number of columns the client sends.
    pub columns: usize,
    target: SchemaRef,
    /// For each target column, the index of the client's column that fills it.
    mapping: Vec<Option<usize>>,
    buffer: Vec<u8>,
    header_pending: bool,
    rows: Vec<Vec<Option<String>>>,
    line: usize,
    done: bool,
    tx: Option<mpsc::Sender<datafusion::error::Result<RecordBatch>>>,
    writer: Option<JoinHandle<Result<u64>>>,
}

impl std::fmt::Debug for CopyIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyIn")
            .field("table", &self.table_name)
            .field("line", &self.line)
            .finish()
    }
}

/// The receiving end of COPY FROM as a one-shot partition stream for the Delta writer.
#[derive(Debug)]
struct ChannelPartition {
    schema: SchemaRef,
    rx: Mutex<Option<mpsc::Receiver<datafusion::error::Result<RecordBatch>>>>,
}

impl PartitionStream for ChannelPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }
    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rx = self.rx.lock().ok().and_then(|mut r| r.take());
        let stream = futures::stream::unfold(rx, |rx| async move {
            let mut rx = rx?;
            let item = rx.recv().await?;
            Some((item, Some(rx)))
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

async fn copy_in(session: &mut Session, source: CopySource, format: CopyFormat) -> Result<Output> {
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
    let mut mapping = vec![None; target.fields().len()];
    for (i, n) in names.iter().enumerate() {
        let idx = target.index_of(n).map_err(|_| TallyError::NotFound {
            kind: "column",
            name: n.clone(),
        })?;
        mapping[idx] = Some(i);
    }
    for (idx, f) in target.fields().iter().enumerate() {
        if mapping[idx].is_none() && !f.is_nullable() {
            return Err(TallyError::InvalidValue {
                code: "23502",
                message: format!(
                    "null value in column \"{}\" violates not-null constraint",
                    f.name()
                ),
            });
        }
    }
    let (tx, rx) = mpsc::channel(4);
    let partition = Arc::new(ChannelPartition {
        schema: target.clone(),
        rx: Mutex::new(Some(rx)),
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
    let header_pending = matches!(format, CopyFormat::Csv { header: true, .. });
    Ok(Output::CopyIn(CopyIn {
        format,
        table_name: q.name,
        columns: names.len(),
        target,
        mapping,
        buffer: Vec::new(),
        header_pending,
        rows: Vec::new(),
        line: 0,
        done: false,
        tx: Some(tx),
        writer: Some(writer),
    }))
}

impl CopyIn {
    /// Takes the next chunk of COPY data from the client.
    pub async fn feed(&mut self, data: &[u8]) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.buffer.extend_from_slice(data);
        let mut start = 0;
        let mut in_quotes = false;
        let quote = match &self.format {
            CopyFormat::Csv { quote, .. } => Some(*quote),
            _ => None,
        };
        let mut i = 0;
        let buf = std::mem::take(&mut self.buffer);
        while i < buf.len() {
            let b = buf[i];
            if Some(b) == quote {
                in_quotes = !in_quotes;
            } else if b == b'\n' && !in_quotes {
                let mut line = &buf[start..i];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                self.take_line(line).await?;
                start = i + 1;
                if self.done {
                    break;
                }
            }
            i += 1;
        }
        self.buffer = buf[start..].to_vec();
        Ok(())
    }

    async fn take_line(&mut self, line: &[u8]) -> Result<()> {
        self.line += 1;
        if self.header_pending {
            self.header_pending = false;
            return Ok(());
        }
        if line == b"\\." {
            self.done = true;
            return Ok(());
        }
        let text = std::str::from_utf8(line).map_err(|_| TallyError::InvalidValue {
            code: "22021",
            message: format!(
                "invalid byte sequence for encoding \"UTF8\" (COPY {}, line {})",
                self.table_name, self.line
            ),
        })?;
        let fields = match &self.format {
            CopyFormat::Text { delimiter, null } => parse_text_line(text, *delimiter as char, null),
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
                ..
            } => parse_csv_line(
                text,
                *delimiter as char,
                *quote as char,
                *escape as char,
                null,
            ),
        };
        if fields.len() != self.columns {
            let message = if fields.len() < self.columns {
                format!(
                    "missing data for column (COPY {}, line {}: expected {} columns, got {})",
                    self.table_name,
                    self.line,
                    self.columns,
                    fields.len()
                )
            } else {
                format!(
                    "extra data after last expected column (COPY {}, line {})",
                    self.table_name, self.line
                )
            };
            return Err(TallyError::InvalidValue {
                code: "22P04",
                message,
            });
        }
        self.rows.push(fields);
        if self.rows.len() >= BATCH_ROWS {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let first_line = self.line + 1 - rows.len() - usize::from(self.done);
        let batch = build_batch(
            &self.target,
            &self.mapping,
            &rows,
            &self.table_name,
            first_line,
        )?;
        if let Some(tx) = &self.tx
            && tx.send(Ok(batch)).await.is_err()
        {
            // The writer stopped early: its error is reported by finish().
            return self.writer_error().await;
        }
        Ok(())
    }

    async fn writer_error(&mut self) -> Result<()> {
        self.tx = None;
        match self.writer.take() {
            Some(w) => match w.await {
                Ok(Ok(_)) => Err(TallyError::Internal("COPY writer ended early".into())),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(TallyError::Internal(e.to_string())),
            },
            None => Err(TallyError::Internal("COPY writer is gone".into())),
        }
    }

    /// The client finished sending: parses the last line, commits, and returns the row count.
    pub async fn finish(mut self) -> Result<usize> {
        if !self.buffer.is_empty() && !self.done {
            let rest = std::mem::take(&mut self.buffer);
            let mut line: &[u8] = &rest;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            self.take_line(line).await?;
        }
        self.flush().await?;
        self.tx = None;
        match self.writer.take() {
            Some(w) => match w.await {
                Ok(r) => r.map(|n| n as usize),
                Err(e) => Err(TallyError::Internal(e.to_string())),
            },
            None => Err(TallyError::Internal("COPY writer is gone".into())),
        }
    }

    /// The COPY failed or was aborted: nothing is committed.
    pub fn abort(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(Err(datafusion::error::DataFusionError::Execution(
                "COPY aborted".into(),
            )));
        }
        if let Some(w) = self.writer.take() {
            w.abort();
        }
    }
}

fn unescape_text(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some(d @ '0'..='7') => {
                let mut v = d.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match chars.peek().and_then(|c| c.to_digit(8)) {
                        Some(n) => {
                            v = v * 8 + n;
                            chars.next();
                        }
                        None => break,
                    }
                }
                out.push(char::from_u32(v).unwrap_or('\u{fffd}'));
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

fn parse_text_line(line: &str, delimiter: char, null: &str) -> Vec<Option<String>> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else if c == delimiter {
            fields.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    fields.push(cur);
    fields
        .into_iter()
        .map(|f| {
            if f == null {
                None
            } else {
                Some(unescape_text(&f))
            }
        })
        .collect()
}

fn parse_csv_line(
    line: &str,
    delimiter: char,
    quote: char,
    escape: char,
    null: &str,
) -> Vec<Option<String>> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == escape && chars.peek() == Some(&quote) {
                // An escaped quote ("" by default) is a literal quote; a lone quote closes.
                chars.next();
                cur.push(quote);
            } else if c == quote {
                in_quotes = false;
            } else {
                cur.push(c);
            }
        } else if c == quote {
            in_quotes = true;
            quoted = true;
        } else if c == delimiter {
            fields.push(finish_csv_field(std::mem::take(&mut cur), quoted, null));
            quoted = false;
        } else {
            cur.push(c);
        }
    }
    fields.push(finish_csv_field(cur, quoted, null));
    fields
}

fn finish_csv_field(v: String, quoted: bool, null: &str) -> Option<String> {
    if !quoted && v == null { None } else { Some(v) }
}

/// Casts text fields to the table's types; a value that does not fit fails the COPY with
/// its line and column.
fn build_batch(
    target: &SchemaRef,
    mapping: &[Option<usize>],
    rows: &[Vec<Option<String>>],
    table: &str,
    first_line: usize,
) -> Result<RecordBatch> {
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for (idx, field) in target.fields().iter().enumerate() {
        let Some(src) = mapping[idx] else {
            arrays.push(new_null_array(field.data_type(), rows.len()));
            continue;
        };
        let fix_tz = matches!(field.data_type(), DataType::Timestamp(_, Some(_)));
        let strings: StringArray = rows
            .iter()
            .map(|r| {
                r[src].as_deref().map(|v| {
                    if fix_tz {
                        normalize_offset(v)
                    } else {
                        v.to_string()
                    }
                })
            })
            .collect();
        let array: ArrayRef = Arc::new(strings);
        let cast = if matches!(field.data_type(), DataType::Utf8) {
            Ok(array.clone())
        } else {
            cast_with_options(&array, field.data_type(), &opts)
        };
        match cast {
            Ok(a) => {
                if !field.is_nullable() && a.null_count() > 0 {
                    let row = (0..a.len()).find(|i| a.is_null(*i)).unwrap_or(0);
                    return Err(TallyError::InvalidValue {
                        code: "23502",
                        message: format!(
                            "null value in column \"{}\" violates not-null constraint (COPY {table}, line {})",
                            field.name(),
                            first_line + row
                        ),
                    });
                }
                arrays.push(a);
            }
            Err(_) => {
                let strings = array
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| TallyError::Internal("strings".into()))?;
                let (row, value) = (0..strings.len())
                    .find(|i| {
                        strings.is_valid(*i)
                            && cast_with_options(
                                &(Arc::new(StringArray::from(vec![strings.value(*i)])) as ArrayRef),
                                field.data_type(),
                                &opts,
                            )
                            .is_err()
                    })
                    .map(|i| (i, strings.value(i).to_string()))
                    .unwrap_or((0, String::new()));
                return Err(TallyError::InvalidValue {
                    code: "22P02",
                    message: format!(
                        "invalid input syntax for type {}: \"{value}\" (COPY {table}, line {}, column {})",
                        crate::wire::types::pg_type_name(field.data_type()),
                        first_line + row,
                        field.name()
                    ),
                });
            }
        }
    }
    RecordBatch::try_new(target.clone(), arrays).map_err(|e| TallyError::InvalidValue {
        code: "22000",
        message: e.to_string(),
    })
}

/// PostgreSQL prints offsets as `+00`; Arrow's parser wants `+00:00`.
fn normalize_offset(v: &str) -> String {
    let b = v.as_bytes();
    let has_time = v.len() > 10 && v[10..].contains(':');
    if has_time
        && b.len() > 3
        && (b[b.len() - 3] == b'+' || b[b.len() - 3] == b'-')
        && b[b.len() - 2..].iter().all(u8::is_ascii_digit)
    {
        format!("{v}:00")
    } else {
        v.to_string()
    }
}

/// The schema a COPY OUT describes (column count only matters on the wire).
pub fn schema_of(out: &CopyOut) -> SchemaRef {
    out.stream.schema()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_unescape_and_null() {
        let f = parse_text_line("a\\tb\t\\N\t\\\\x", '\t', "\\N");
        assert_eq!(f, vec![Some("a\tb".into()), None, Some("\\x".into())]);
    }

    #[test]
    fn csv_quotes_and_empty() {
        let f = parse_csv_line("1,\"a,\"\"b\"\"\",,\"\"", ',', '"', '"', "");
        assert_eq!(
            f,
            vec![
                Some("1".into()),
                Some("a,\"b\"".into()),
                None,
                Some("".into())
            ]
        );
    }

    #[test]
    fn offsets_gain_minutes() {
        assert_eq!(
            normalize_offset("2024-01-01 00:00:00+00"),
            "2024-01-01 00:00:00+00:00"
        );
        assert_eq!(normalize_offset("2024-01-01"), "2024-01-01");
    }
}
