//! COPY: `COPY table [(columns)] FROM STDIN`, `COPY table|(query) TO STDOUT` in PostgreSQL's
//! text and CSV formats, and `COPY (query) TO '<url>' (FORMAT parquet|csv|json)` onto object
//! storage for superusers.
//!
//! COPY FROM STDIN lives in [`super::copy_in`]: it streams the client's data through a
//! byte-level parser into typed Arrow batches and one Delta append.

use bytes::{BufMut, Bytes, BytesMut};
use datafusion::arrow::array::{Array, ArrayRef, ListArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};

use super::names::ident;
use super::{Completion, Output, query};
use crate::engine::Session;
use crate::error::{Result, TallyError, unwrap_datafusion};
use crate::wire::values::ColumnWriter;

pub use super::copy_in::CopyIn;

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
            super::copy_in::start(session, source, format).await
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
                        super::rewrite::client_name(f.name()).as_bytes(),
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
                    Cell::Fast(w) => w.write(row, &mut buf)?,
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
    List(&'a ListArray, FormatOptions<'static>),
    Other(ArrayFormatter<'a>),
}

impl<'a> Column<'a> {
    fn new(array: &'a ArrayRef, opts: &FormatOptions<'a>) -> Result<Self> {
        let kind = match array.data_type() {
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

/// The schema a COPY OUT describes (column count only matters on the wire).
pub fn schema_of(out: &CopyOut) -> SchemaRef {
    out.stream.schema()
}
