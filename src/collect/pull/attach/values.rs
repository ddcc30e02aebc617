//! Remote values to Arrow. Both engines send every value as text in one canonical form per
//! type (the query asks PostgreSQL for it with casts and `to_char`; MySQL's text protocol
//! already sends it), and [`BatchSender`] parses the text into Arrow builders and hands a
//! record batch downstream every [`super::BATCH_ROWS`] rows.

use std::sync::Arc;

use chrono::{NaiveDate, NaiveDateTime};
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder,
    Int16Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::Result as DFResult;
use tokio::sync::mpsc::Sender;

use super::Engine;
use crate::error::{Result, TallyError};

/// How a remote column is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `boolean`, MySQL `tinyint(1)`.
    Bool,
    /// `smallint`.
    Int16,
    /// `integer`.
    Int32,
    /// `bigint`.
    Int64,
    /// `real`, MySQL `float`.
    Float32,
    /// `double precision`.
    Float64,
    /// `numeric(p, s)` within 38 digits.
    Decimal(u8, i8),
    /// Text, and every type read as its text (json, uuid, enums, time, interval, arrays).
    Text,
    /// `date`.
    Date,
    /// `timestamp` without time zone.
    Timestamp,
    /// `timestamptz` (MySQL `timestamp`), in UTC.
    TimestampTz,
    /// `bytea`, MySQL binary and blob types.
    Binary,
}

impl Kind {
    /// The Arrow type of the column.
    pub fn arrow_type(&self) -> DataType {
        match self {
            Kind::Bool => DataType::Boolean,
            Kind::Int16 => DataType::Int16,
            Kind::Int32 => DataType::Int32,
            Kind::Int64 => DataType::Int64,
            Kind::Float32 => DataType::Float32,
            Kind::Float64 => DataType::Float64,
            Kind::Decimal(p, s) => DataType::Decimal128(*p, *s),
            Kind::Text => DataType::Utf8,
            Kind::Date => DataType::Date32,
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Kind::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC"))),
            Kind::Binary => DataType::Binary,
        }
    }

    /// The select-list expression that sends column `quoted` in its canonical text form.
    pub fn select_text(&self, engine: Engine, quoted: &str) -> String {
        match engine {
            Engine::Mysql => quoted.to_string(),
            Engine::Postgres => match self {
                Kind::Date => format!("to_char({quoted}, 'YYYY-MM-DD')"),
                Kind::Timestamp => format!("to_char({quoted}, 'YYYY-MM-DD HH24:MI:SS.US')"),
                Kind::TimestampTz => {
                    format!("to_char({quoted} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
                }
                Kind::Binary => format!("encode({quoted}, 'hex')"),
                _ => format!("{quoted}::text"),
            },
        }
    }
}

/// A remote column.
#[derive(Debug, Clone)]
pub struct Column {
    /// Name, as the remote database spells it.
    pub name: String,
    /// How it is read.
    pub kind: Kind,
}

enum Builder {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Dec(StringBuilder, DataType),
    Text(StringBuilder),
    Date(Date32Builder),
    Ts(TimestampMicrosecondBuilder, bool),
    Bin(BinaryBuilder),
}

fn builder(kind: &Kind) -> Builder {
    match kind {
        Kind::Bool => Builder::Bool(BooleanBuilder::new()),
        Kind::Int16 => Builder::I16(Int16Builder::new()),
        Kind::Int32 => Builder::I32(Int32Builder::new()),
        Kind::Int64 => Builder::I64(Int64Builder::new()),
        Kind::Float32 => Builder::F32(Float32Builder::new()),
        Kind::Float64 => Builder::F64(Float64Builder::new()),
        Kind::Decimal(..) => Builder::Dec(StringBuilder::new(), kind.arrow_type()),
        Kind::Text => Builder::Text(StringBuilder::new()),
        Kind::Date => Builder::Date(Date32Builder::new()),
        Kind::Timestamp => Builder::Ts(TimestampMicrosecondBuilder::new(), false),
        Kind::TimestampTz => Builder::Ts(TimestampMicrosecondBuilder::new(), true),
        Kind::Binary => Builder::Bin(BinaryBuilder::new()),
    }
}

fn bad(column: &str, text: &[u8], what: &str) -> TallyError {
    let mut shown = String::from_utf8_lossy(text).into_owned();
    shown.truncate(60);
    TallyError::InvalidValue {
        code: "22P02",
        message: format!(
            "attached table: value \"{shown}\" of column \"{column}\" is not a valid {what}"
        ),
    }
}

fn utf8<'a>(column: &str, b: &'a [u8], what: &str) -> Result<&'a str> {
    std::str::from_utf8(b).map_err(|_| bad(column, b, what))
}

fn parse<T: std::str::FromStr>(column: &str, b: &[u8], what: &str) -> Result<T> {
    utf8(column, b, what)?
        .trim()
        .parse::<T>()
        .map_err(|_| bad(column, b, what))
}

const EPOCH_DAYS_FROM_CE: i32 = 719_163;

impl Builder {
    fn push(&mut self, column: &str, cell: Option<&[u8]>, hex: bool) -> Result<()> {
        let Some(b) = cell else {
            match self {
                Builder::Bool(x) => x.append_null(),
                Builder::I16(x) => x.append_null(),
                Builder::I32(x) => x.append_null(),
                Builder::I64(x) => x.append_null(),
                Builder::F32(x) => x.append_null(),
                Builder::F64(x) => x.append_null(),
                Builder::Dec(x, _) | Builder::Text(x) => x.append_null(),
                Builder::Date(x) => x.append_null(),
                Builder::Ts(x, _) => x.append_null(),
                Builder::Bin(x) => x.append_null(),
            }
            return Ok(());
        };
        match self {
            Builder::Bool(x) => x.append_value(match b {
                b"t" | b"true" | b"1" => true,
                b"f" | b"false" | b"0" => false,
                _ => return Err(bad(column, b, "boolean")),
            }),
            Builder::I16(x) => x.append_value(parse(column, b, "smallint")?),
            Builder::I32(x) => x.append_value(parse(column, b, "integer")?),
            Builder::I64(x) => x.append_value(parse(column, b, "bigint")?),
            Builder::F32(x) => x.append_value(parse(column, b, "real")?),
            Builder::F64(x) => x.append_value(parse(column, b, "double precision")?),
            Builder::Dec(x, _) => x.append_value(utf8(column, b, "numeric")?),
            Builder::Text(x) => x.append_value(String::from_utf8_lossy(b)),
            Builder::Date(x) => {
                let s = utf8(column, b, "date")?;
                if s.starts_with("0000-00-00") {
                    // MySQL's zero date: no date.
                    x.append_null();
                } else {
                    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
                        .map_err(|_| bad(column, b, "date"))?;
                    x.append_value(chrono::Datelike::num_days_from_ce(&d) - EPOCH_DAYS_FROM_CE);
                }
            }
            Builder::Ts(x, _) => {
                let s = utf8(column, b, "timestamp")?;
                if s.starts_with("0000-00-00") {
                    x.append_null();
                } else {
                    let t = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
                        .map_err(|_| bad(column, b, "timestamp"))?;
                    x.append_value(t.and_utc().timestamp_micros());
                }
            }
            Builder::Bin(x) => {
                if hex {
                    x.append_value(decode_hex(b).ok_or_else(|| bad(column, b, "bytea"))?);
                } else {
                    x.append_value(b);
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, column: &str) -> Result<ArrayRef> {
        Ok(match self {
            Builder::Bool(x) => Arc::new(x.finish()),
            Builder::I16(x) => Arc::new(x.finish()),
            Builder::I32(x) => Arc::new(x.finish()),
            Builder::I64(x) => Arc::new(x.finish()),
            Builder::F32(x) => Arc::new(x.finish()),
            Builder::F64(x) => Arc::new(x.finish()),
            Builder::Dec(x, t) => {
                let text: ArrayRef = Arc::new(x.finish());
                let opts = datafusion::arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                };
                datafusion::arrow::compute::cast_with_options(&text, t, &opts).map_err(|e| {
                    TallyError::InvalidValue {
                        code: "22003",
                        message: format!(
                            "attached table: column \"{column}\" does not fit {t}: {e}"
                        ),
                    }
                })?
            }
            Builder::Text(x) => Arc::new(x.finish()),
            Builder::Date(x) => Arc::new(x.finish()),
            Builder::Ts(x, tz) => {
                let a = x.finish();
                if *tz {
                    Arc::new(a.with_timezone("UTC"))
                } else {
                    Arc::new(a)
                }
            }
            Builder::Bin(x) => Arc::new(x.finish()),
        })
    }
}

fn decode_hex(b: &[u8]) -> Option<Vec<u8>> {
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    b.chunks(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

/// The receiving end went away: the query was cancelled or its LIMIT reached.
#[derive(Debug)]
pub struct Closed;

/// Collects remote rows into batches and sends each full batch downstream.
pub struct BatchSender {
    tx: Sender<DFResult<RecordBatch>>,
    schema: SchemaRef,
    builders: Vec<Builder>,
    rows: usize,
}

impl BatchSender {
    /// A sender of batches of `schema` whose columns are read as `kinds`.
    pub fn new(tx: Sender<DFResult<RecordBatch>>, schema: SchemaRef, kinds: Vec<Kind>) -> Self {
        let builders = kinds.iter().map(builder).collect();
        BatchSender {
            tx,
            schema,
            builders,
            rows: 0,
        }
    }

    /// Columns per row (a `count(*)` scan reads none, whatever the query selects).
    pub fn width(&self) -> usize {
        self.builders.len()
    }

    /// Adds one row (one text cell per column, `None` for NULL); sends a batch when full.
    /// `Ok(false)`: nobody reads any more, stop.
    pub async fn push<'a>(
        &mut self,
        cells: impl IntoIterator<Item = Option<&'a [u8]>>,
        hex_binary: bool,
    ) -> Result<bool> {
        for ((b, cell), field) in self
            .builders
            .iter_mut()
            .zip(cells)
            .zip(self.schema.fields().iter())
        {
            b.push(field.name(), cell, hex_binary)?;
        }
        self.rows += 1;
        if self.rows >= super::BATCH_ROWS {
            return self.flush().await;
        }
        Ok(true)
    }

    /// Sends the rows collected so far. `Ok(false)`: nobody reads any more.
    pub async fn flush(&mut self) -> Result<bool> {
        if self.rows == 0 {
            return Ok(!self.tx.is_closed());
        }
        let columns = self
            .builders
            .iter_mut()
            .zip(self.schema.fields().iter())
            .map(|(b, f)| b.finish(f.name()))
            .collect::<Result<Vec<_>>>()?;
        let opts = RecordBatchOptions::new().with_row_count(Some(self.rows));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &opts)
            .map_err(|e| TallyError::Internal(format!("attached table batch: {e}")))?;
        self.rows = 0;
        Ok(self.tx.send(Ok(batch)).await.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_canonical_text() {
        let mut b = builder(&Kind::Timestamp);
        b.push("t", Some(b"2024-01-02 03:04:05.000006"), false)
            .unwrap();
        b.push("t", Some(b"0000-00-00 00:00:00"), false).unwrap();
        let a = b.finish("t").unwrap();
        assert_eq!(a.len(), 2);
        let mut d = builder(&Kind::Date);
        d.push("d", Some(b"1970-01-02"), false).unwrap();
        let a = d.finish("d").unwrap();
        let a = a
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Date32Array>()
            .unwrap();
        assert_eq!(a.value(0), 1);
        assert_eq!(decode_hex(b"00ff10"), Some(vec![0, 255, 16]));
        let mut n = builder(&Kind::Decimal(10, 2));
        n.push("n", Some(b"12.34"), false).unwrap();
        assert_eq!(
            n.finish("n").unwrap().data_type(),
            &DataType::Decimal128(10, 2)
        );
        assert!(builder(&Kind::Int32).push("i", Some(b"x"), false).is_err());
    }
}
