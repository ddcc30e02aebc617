//! `file`: the COPY's rows as one Parquet, CSV or JSON-lines file on object storage.
//!
//! `url` is a local path, `file://`, `s3://`, `gs://`, `az://`/`abfss://` or `memory://`
//! location, opened with the same object-store setup as the warehouse
//! ([`crate::storage::store_for_url`]; cloud credentials from the standard `AWS_*`,
//! `GOOGLE_*`, `AZURE_*` environment). Where the file goes:
//!
//! - a `url` ending in `/` is a folder: the file is `<copy id>.<format>[.gz]` in it, one
//!   file per COPY run;
//! - a `url` containing `{copy_id}` has it replaced by the copy id;
//! - any other `url` is the file itself, replaced by each run (a re-run of the COPY
//!   overwrites it instead of adding a second copy of the rows).
//!
//! Batches are written as they arrive through a multipart upload (object_store's
//! `BufWriter`), so memory stays at one upload part plus, for Parquet, one row group (65,536
//! rows); the object only appears when the COPY has sent every row (`finish` completes the
//! upload), so readers never see half a file and a failed run leaves nothing behind under
//! the name. A batch the engine retries is not written twice: records at or before the last
//! written ordinal are skipped.
//!
//! Formats (`format`): `parquet` (the default; column types inferred from the first batch's
//! JSON values: whole numbers Int64, other numbers Float64, booleans, text, nested values as
//! structs and lists; a column that is null throughout the first batch is text; dates and
//! timestamps arrive as text), `csv` (a header row, RFC 4180 quoting, null as an empty
//! field) and `json` (JSON lines, one object per row). `compression`: for Parquet `snappy`
//! (default), `zstd`, `gzip`, `lz4` or `none`; for CSV and JSON `gzip` or `none` (default).

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::infer_json_schema_from_iterator;
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::parquet::basic::{Compression, GzipLevel, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use url::Url;

use super::{Batch, Destination, Mode, Options, Record, SendError, value_text};
use crate::error::{Result, TallyError};

/// Rows per Parquet row group: the most a Parquet file holds in memory before writing.
const ROW_GROUP: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Parquet,
    Csv,
    Json,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Json => "jsonl",
        }
    }
}

enum Sink {
    Parquet {
        writer: AsyncArrowWriter<BufWriter>,
        schema: SchemaRef,
    },
    Text {
        writer: BufWriter,
        gzip: Option<flate2::write::GzEncoder<Vec<u8>>>,
        columns: Option<Vec<String>>,
    },
}

#[derive(Default)]
struct State {
    /// Ordinal after the last record written (retried batches skip what is written).
    next: u64,
    sink: Option<Sink>,
    path: Option<Path>,
}

/// A file destination.
pub struct FileDestination {
    name: String,
    url: String,
    format: Format,
    compression: String,
    store: Arc<dyn ObjectStore>,
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for FileDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDestination")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish()
    }
}

fn invalid(message: String) -> TallyError {
    TallyError::InvalidValue {
        code: "22023",
        message,
    }
}

/// A `url` option as a URL: paths become `file://` URLs (made absolute; a trailing `/`
/// kept).
fn to_url(location: &str) -> Result<Url> {
    if location.contains("://") {
        return Url::parse(location)
            .map_err(|e| invalid(format!("\"{location}\" is not a valid URL: {e}")));
    }
    let folder = location.ends_with('/');
    let path = std::path::Path::new(location);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| TallyError::Config(format!("current folder: {e}")))?
            .join(path)
    };
    let mut url = Url::from_file_path(&abs)
        .map_err(|_| invalid(format!("\"{location}\" is not a usable path")))?;
    if folder && !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

impl FileDestination {
    /// Builds the destination from its options (nothing is written before the first batch).
    pub fn new(opts: &Options) -> Result<Self> {
        let location = match opts.get("url")? {
            Some(u) => u,
            None => opts.require("path")?,
        };
        let format = match opts
            .get("format")?
            .unwrap_or_else(|| "parquet".into())
            .to_ascii_lowercase()
            .as_str()
        {
            "parquet" => Format::Parquet,
            "csv" => Format::Csv,
            "json" | "jsonl" | "ndjson" => Format::Json,
            other => {
                return Err(invalid(format!(
                    "unknown file format \"{other}\"; formats are parquet, csv and json"
                )));
            }
        };
        let compression = opts
            .get("compression")?
            .unwrap_or_else(|| {
                if format == Format::Parquet {
                    "snappy".into()
                } else {
                    "none".into()
                }
            })
            .to_ascii_lowercase();
        let allowed: &[&str] = if format == Format::Parquet {
            &["snappy", "zstd", "gzip", "lz4", "none", "uncompressed"]
        } else {
            &["gzip", "none"]
        };
        if !allowed.contains(&compression.as_str()) {
            return Err(invalid(format!(
                "compression \"{compression}\" is not available for {} files; use {}",
                format.extension(),
                allowed.join(", ")
            )));
        }
        let url = to_url(&location)?;
        if url.scheme() == "file"
            && let Ok(p) = url.to_file_path()
        {
            let dir = if location.ends_with('/') {
                Some(p.as_path())
            } else {
                p.parent()
            };
            if let Some(d) = dir {
                std::fs::create_dir_all(d).map_err(|e| {
                    TallyError::Config(format!("cannot create folder {}: {e}", d.display()))
                })?;
            }
        }
        let (store, _) = crate::storage::store_for_url(&url, &HashMap::new())?;
        Ok(FileDestination {
            name: opts.name().to_string(),
            url: url.to_string(),
            format,
            compression,
            store,
            state: tokio::sync::Mutex::new(State::default()),
        })
    }

    /// The object a run writes.
    fn object_path(&self, copy_id: &str) -> Result<Path, SendError> {
        let gz = if self.format != Format::Parquet && self.compression == "gzip" {
            ".gz"
        } else {
            ""
        };
        let url = if self.url.contains("%7Bcopy_id%7D") || self.url.contains("{copy_id}") {
            self.url
                .replace("%7Bcopy_id%7D", copy_id)
                .replace("{copy_id}", copy_id)
        } else if self.url.ends_with('/') {
            format!("{}{copy_id}.{}{gz}", self.url, self.format.extension())
        } else {
            self.url.clone()
        };
        let url = Url::parse(&url).map_err(|e| self.fatal(format!("bad url: {e}")))?;
        Path::from_url_path(url.path()).map_err(|e| self.fatal(format!("bad path: {e}")))
    }

    fn fatal(&self, message: String) -> SendError {
        SendError::Fatal {
            code: "58030",
            message: format!("destination {}: {message}", self.name),
        }
    }

    fn parquet_properties(&self) -> WriterProperties {
        let compression = match self.compression.as_str() {
            "zstd" => Compression::ZSTD(ZstdLevel::default()),
            "gzip" => Compression::GZIP(GzipLevel::default()),
            "lz4" => Compression::LZ4_RAW,
            "none" | "uncompressed" => Compression::UNCOMPRESSED,
            _ => Compression::SNAPPY,
        };
        WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(ROW_GROUP))
            .build()
    }

    fn open(&self, path: &Path, first: &[&Record]) -> Result<Sink, SendError> {
        let writer = BufWriter::new(self.store.clone(), path.clone());
        Ok(match self.format {
            Format::Parquet => {
                let inferred = infer_json_schema_from_iterator(
                    first.iter().map(|r| Ok(Value::Object(r.fields.clone()))),
                )
                .map_err(|e| self.fatal(format!("cannot infer a Parquet schema: {e}")))?;
                // Keep the query's column order; a column null throughout is text.
                let order: Vec<&String> = first[0].fields.keys().collect();
                let fields: Vec<Field> = order
                    .iter()
                    .map(|name| match inferred.field_with_name(name) {
                        Ok(f) if f.data_type() != &DataType::Null => f.clone().with_nullable(true),
                        _ => Field::new(name.as_str(), DataType::Utf8, true),
                    })
                    .collect();
                let schema: SchemaRef = Arc::new(Schema::new(fields));
                let writer = AsyncArrowWriter::try_new(
                    writer,
                    schema.clone(),
                    Some(self.parquet_properties()),
                )
                .map_err(|e| self.fatal(format!("cannot start the Parquet file: {e}")))?;
                Sink::Parquet { writer, schema }
            }
            _ => Sink::Text {
                writer,
                gzip: (self.compression == "gzip").then(|| {
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default())
                }),
                columns: None,
            },
        })
    }

    fn encode_text(
        &self,
        columns: &mut Option<Vec<String>>,
        records: &[&Record],
    ) -> Result<Vec<u8>, SendError> {
        let mut out = Vec::new();
        match self.format {
            Format::Json => {
                for r in records {
                    serde_json::to_writer(&mut out, &r.fields)
                        .map_err(|e| self.fatal(format!("encoding a row: {e}")))?;
                    out.push(b'\n');
                }
            }
            _ => {
                let mut w = csv::WriterBuilder::new()
                    .terminator(csv::Terminator::Any(b'\n'))
                    .from_writer(&mut out);
                if columns.is_none() {
                    let cols: Vec<String> = records[0].fields.keys().cloned().collect();
                    w.write_record(&cols)
                        .map_err(|e| self.fatal(format!("encoding the header: {e}")))?;
                    *columns = Some(cols);
                }
                let cols = columns.as_ref().map(Vec::as_slice).unwrap_or_default();
                for r in records {
                    let line: Vec<String> = cols
                        .iter()
                        .map(|c| r.fields.get(c).map(value_text).unwrap_or_default())
                        .collect();
                    w.write_record(&line)
                        .map_err(|e| self.fatal(format!("encoding a row: {e}")))?;
                }
                w.flush()
                    .map_err(|e| self.fatal(format!("encoding a row: {e}")))?;
            }
        }
        Ok(out)
    }
}

fn io_error(name: &str, e: impl std::fmt::Display) -> SendError {
    // Storage hiccups (a failed part upload, a full disk) are worth a retry.
    SendError::Transient {
        message: format!("destination {name}: writing the file failed: {e}"),
        retry_after: None,
    }
}

#[async_trait]
impl Destination for FileDestination {
    async fn begin(&self, copy_id: &str, _mode: Mode, _key: Option<&str>) -> Result<(), SendError> {
        let path = self.object_path(copy_id)?;
        let mut state = self.state.lock().await;
        *state = State {
            path: Some(path),
            ..State::default()
        };
        Ok(())
    }

    async fn send(&self, batch: &Batch<'_>) -> Result<(), SendError> {
        let mut state = self.state.lock().await;
        let next = state.next;
        let fresh: Vec<&Record> = batch.records.iter().filter(|r| r.ordinal >= next).collect();
        let Some(last) = fresh.last().map(|r| r.ordinal) else {
            return Ok(());
        };
        if state.path.is_none() {
            state.path = Some(self.object_path(batch.copy_id)?);
        }
        if state.sink.is_none() {
            let path = state.path.clone().unwrap_or_default();
            state.sink = Some(self.open(&path, &fresh)?);
        }
        match state.sink.as_mut() {
            Some(Sink::Parquet { writer, schema }) => {
                let mut decoder = ReaderBuilder::new(schema.clone())
                    .with_coerce_primitive(true)
                    .build_decoder()
                    .map_err(|e| self.fatal(format!("Parquet decoder: {e}")))?;
                let rows: Vec<&serde_json::Map<String, Value>> =
                    fresh.iter().map(|r| &r.fields).collect();
                decoder.serialize(&rows).map_err(|e| {
                    self.fatal(format!(
                        "a row does not fit the file's columns (inferred from the first rows): {e}"
                    ))
                })?;
                if let Some(b) = decoder
                    .flush()
                    .map_err(|e| self.fatal(format!("Parquet decoder: {e}")))?
                {
                    writer
                        .write(&b)
                        .await
                        .map_err(|e| io_error(&self.name, e))?;
                }
            }
            Some(Sink::Text {
                writer,
                gzip,
                columns,
            }) => {
                let bytes = self.encode_text(columns, &fresh)?;
                let out = match gzip {
                    Some(gz) => {
                        gz.write_all(&bytes).map_err(|e| io_error(&self.name, e))?;
                        std::mem::take(gz.get_mut())
                    }
                    None => bytes,
                };
                writer
                    .write_all(&out)
                    .await
                    .map_err(|e| io_error(&self.name, e))?;
            }
            None => {}
        }
        state.next = last + 1;
        Ok(())
    }

    async fn finish(
        &self,
        copy_id: &str,
        _mode: Mode,
        _key: Option<&str>,
    ) -> Result<u64, SendError> {
        let mut state = self.state.lock().await;
        let sink = match state.sink.take() {
            Some(s) => s,
            None if self.format == Format::Parquet => return Ok(0),
            None => {
                // No rows: an empty file, so the run still leaves its (empty) result.
                let path = match state.path.clone() {
                    Some(p) => p,
                    None => self.object_path(copy_id)?,
                };
                self.open(&path, &[])?
            }
        };
        match sink {
            Sink::Parquet { writer, .. } => {
                writer.close().await.map_err(|e| io_error(&self.name, e))?;
            }
            Sink::Text {
                mut writer, gzip, ..
            } => {
                if let Some(gz) = gzip {
                    let rest = gz.finish().map_err(|e| io_error(&self.name, e))?;
                    writer
                        .write_all(&rest)
                        .await
                        .map_err(|e| io_error(&self.name, e))?;
                }
                writer
                    .shutdown()
                    .await
                    .map_err(|e| io_error(&self.name, e))?;
            }
        }
        Ok(0)
    }
}
