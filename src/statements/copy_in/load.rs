//! Turns COPY input, chunk by chunk, into record batches of the target table's schema.
//!
//! Chunks may cut records, fields, quotes, escapes and UTF-8 characters anywhere: the
//! unfinished tail of one chunk waits for the next. Every byte is checked to be UTF-8 (and
//! not NUL) once, as PostgreSQL checks its input, so text columns take bytes unchecked.

use datafusion::arrow::array::{ArrayRef, RecordBatch, new_null_array};
use datafusion::arrow::datatypes::SchemaRef;

use super::columns::{Column, FieldError, FinishError};
use super::scan::{Dialect, Field, FormatError, Scanner, Step};
use crate::error::{Result, TallyError};

/// Rows per batch handed to the writer.
pub const BATCH_ROWS: usize = 32_768;
/// Input bytes per batch: keeps batches of long text bounded (and i32 offsets safe).
const BATCH_BYTES: usize = 32 << 20;
/// Longest value quoted in an error's context, as PostgreSQL cuts it.
const MAX_SHOWN: usize = 100;

/// The parsing state of one COPY FROM.
pub struct Loader {
    scanner: Scanner,
    table: String,
    target: SchemaRef,
    /// For each column the client sends: the target column it fills.
    sources: Vec<usize>,
    /// For each target column: the client column that fills it, if any.
    by_target: Vec<Option<usize>>,
    /// For each column the client sends, its rows in the current batch.
    columns: Vec<Column>,
    /// Input not consumed yet: the start of a record that the data so far cuts.
    buf: Vec<u8>,
    /// Do not scan the tail again before `buf` is this long, so one huge record is not
    /// rescanned for every chunk.
    retry_at: usize,
    /// `buf[..checked]` is known to be UTF-8 without NUL.
    checked: usize,
    /// The first byte of `buf` that is not UTF-8 or is NUL.
    bad: Option<usize>,
    header: bool,
    done: bool,
    /// Records read so far (PostgreSQL's line number counts records, the header included).
    line: u64,
    batch_rows: usize,
    batch_bytes: usize,
    batch_first_line: u64,
    bytes_hint: usize,
    rows: u64,
    fields: Vec<Field>,
    scratch: Vec<u8>,
}

impl Loader {
    /// A loader for `table` whose client columns fill the target columns `sources`.
    pub fn new(
        dialect: Dialect,
        header: bool,
        table: String,
        target: SchemaRef,
        sources: Vec<usize>,
    ) -> Loader {
        let mut by_target = vec![None; target.fields().len()];
        for (i, t) in sources.iter().enumerate() {
            by_target[*t] = Some(i);
        }
        let bytes_hint = BATCH_ROWS * 16;
        let columns = sources
            .iter()
            .map(|t| Column::new(target.field(*t).data_type(), BATCH_ROWS, bytes_hint))
            .collect();
        Loader {
            scanner: Scanner::new(dialect),
            table,
            target,
            sources,
            by_target,
            columns,
            buf: Vec::new(),
            retry_at: 0,
            checked: 0,
            bad: None,
            header,
            done: false,
            line: 0,
            batch_rows: 0,
            batch_bytes: 0,
            batch_first_line: 1,
            bytes_hint,
            rows: 0,
            fields: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Takes the next chunk of input; full batches are appended to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<RecordBatch>) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.buf.extend_from_slice(data);
        self.validate(false);
        if self.buf.len() < self.retry_at {
            return Ok(());
        }
        self.run(false, out)
    }

    /// The input ended: reads the last record and cuts the last batch. Returns the number
    /// of rows read.
    pub fn finish(&mut self, out: &mut Vec<RecordBatch>) -> Result<u64> {
        if !self.done {
            self.validate(true);
            self.run(true, out)?;
        }
        self.flush(out)?;
        Ok(self.rows)
    }

    fn validate(&mut self, eof: bool) {
        if self.bad.is_some() {
            return;
        }
        let rest = &self.buf[self.checked..];
        let (valid, invalid) = match std::str::from_utf8(rest) {
            Ok(_) => (rest.len(), None),
            // A character cut by the end of the chunk is checked with the next one.
            Err(e) if e.error_len().is_none() && !eof => (e.valid_up_to(), None),
            Err(e) => (e.valid_up_to(), Some(e.valid_up_to())),
        };
        if let Some(nul) = memchr::memchr(0, &rest[..valid]) {
            self.bad = Some(self.checked + nul);
        } else if let Some(at) = invalid {
            self.bad = Some(self.checked + at);
        }
        self.checked += valid;
    }

    fn run(&mut self, eof: bool, out: &mut Vec<RecordBatch>) -> Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let result = self.records(&buf, eof, out);
        self.buf = buf;
        let pos = result?;
        if self.done {
            self.buf = Vec::new();
            return Ok(());
        }
        self.buf.drain(..pos);
        self.checked -= pos.min(self.checked);
        self.bad = self.bad.map(|b| b.saturating_sub(pos));
        self.retry_at = 2 * self.buf.len();
        Ok(())
    }

    /// Reads the whole records in `buf`; returns where the unfinished one starts.
    fn records(&mut self, buf: &[u8], eof: bool, out: &mut Vec<RecordBatch>) -> Result<usize> {
        let mut pos = 0;
        while pos < buf.len() {
            let step = self
                .scanner
                .scan(buf, pos, eof, &mut self.fields)
                .map_err(|e| self.format_error(e, self.line + 1))?;
            match step {
                Step::Incomplete => break,
                Step::Record { next } => {
                    self.line += 1;
                    self.record(buf, pos, next)?;
                    pos = next;
                }
                Step::End { record } => {
                    if record {
                        self.line += 1;
                        let end = self.fields.last().map_or(pos, |f| f.end);
                        self.record(buf, pos, end)?;
                    }
                    self.done = true;
                    break;
                }
            }
            if self.batch_rows >= BATCH_ROWS || self.batch_bytes >= BATCH_BYTES {
                self.flush(out)?;
            }
        }
        Ok(pos)
    }

    /// Appends the record at `buf[start..end]`, whose fields the scanner just found.
    fn record(&mut self, buf: &[u8], start: usize, end: usize) -> Result<()> {
        if let Some(bad) = self.bad
            && bad < end
        {
            return Err(self.encoding_error(&buf[bad.max(start)..end]));
        }
        if self.header {
            self.header = false;
            return Ok(());
        }
        if self.fields.len() > self.columns.len() {
            return Err(self.line_error("22P04", "extra data after last expected column"));
        }
        if self.batch_rows == 0 {
            self.batch_first_line = self.line;
        }
        for i in 0..self.columns.len() {
            let Some(f) = self.fields.get(i).copied() else {
                let name = self.target.field(self.sources[i]).name().clone();
                return Err(
                    self.line_error("22P04", &format!("missing data for column \"{name}\""))
                );
            };
            if self.scanner.is_null(buf, &f) {
                let field = self.target.field(self.sources[i]);
                if !field.is_nullable() {
                    return Err(TallyError::InvalidValue {
                        code: "23502",
                        message: format!(
                            "null value in column \"{}\" of relation \"{}\" violates not-null constraint (COPY {}, line {})",
                            field.name(),
                            self.table,
                            self.table,
                            self.line
                        ),
                    });
                }
                self.columns[i].append_null();
                continue;
            }
            let raw = &buf[f.start..f.end];
            let value: &[u8] = if f.plain {
                raw
            } else {
                if self.scanner.decode(raw, &mut self.scratch)
                    && (self.scratch.contains(&0) || std::str::from_utf8(&self.scratch).is_err())
                {
                    return Err(self.encoding_error(&self.scratch));
                }
                &self.scratch
            };
            if let Err(e) = self.columns[i].append(value) {
                return Err(self.value_error(i, e, value));
            }
        }
        self.batch_rows += 1;
        self.batch_bytes += end - start;
        self.rows += 1;
        Ok(())
    }

    /// Cuts the rows so far into a batch of the target schema.
    fn flush(&mut self, out: &mut Vec<RecordBatch>) -> Result<()> {
        if self.batch_rows == 0 {
            return Ok(());
        }
        let rows = self.batch_rows;
        self.bytes_hint = self.bytes_hint.max(self.batch_bytes);
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.target.fields().len());
        for (t, field) in self.target.fields().iter().enumerate() {
            let array = match self.by_target[t] {
                None => new_null_array(field.data_type(), rows),
                Some(i) => match self.columns[i].finish(BATCH_ROWS, self.bytes_hint) {
                    Ok(a) => a,
                    Err(FinishError::Value { row, error }) => {
                        self.line = self.batch_first_line + row as u64;
                        let text = error.text.clone();
                        return Err(self.value_error(i, error, text.as_bytes()));
                    }
                    Err(FinishError::Internal(m)) => return Err(TallyError::Internal(m)),
                },
            };
            arrays.push(array);
        }
        let batch = RecordBatch::try_new(self.target.clone(), arrays)
            .map_err(|e| TallyError::Internal(format!("COPY batch: {e}")))?;
        out.push(batch);
        self.batch_rows = 0;
        self.batch_bytes = 0;
        Ok(())
    }

    fn context(&self) -> String {
        format!("COPY {}, line {}", self.table, self.line)
    }

    fn line_error(&self, code: &'static str, message: &str) -> TallyError {
        TallyError::InvalidValue {
            code,
            message: format!("{message} ({})", self.context()),
        }
    }

    fn format_error(&self, e: FormatError, line: u64) -> TallyError {
        TallyError::InvalidValue {
            code: "22P04",
            message: format!("{e} (COPY {}, line {line})", self.table),
        }
    }

    fn encoding_error(&self, bad: &[u8]) -> TallyError {
        let bytes: Vec<String> = first_bad(bad)
            .iter()
            .map(|b| format!("0x{b:02x}"))
            .collect();
        self.line_error(
            "22021",
            &format!(
                "invalid byte sequence for encoding \"UTF8\": {}",
                bytes.join(" ")
            ),
        )
    }

    /// A bad value of client column `i`, whose whole text is `value`.
    fn value_error(&self, i: usize, e: FieldError, value: &[u8]) -> TallyError {
        let column = self.target.field(self.sources[i]).name();
        let shown = shown(value);
        let message = e.kind.message(&e.ty, &e.text);
        TallyError::InvalidValue {
            code: e.kind.sqlstate(),
            message: format!(
                "{message} ({}, column {column}: \"{shown}\")",
                self.context()
            ),
        }
    }
}

/// The first byte of `s` that is not UTF-8 (with the continuation bytes after it) or is
/// NUL, as PostgreSQL prints an invalid sequence.
fn first_bad(s: &[u8]) -> &[u8] {
    let invalid = std::str::from_utf8(s).err().map(|e| e.valid_up_to());
    let nul = memchr::memchr(0, s);
    let start = match (invalid, nul) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(0),
    };
    let rest = &s[start.min(s.len())..];
    if rest.first() == Some(&0) {
        return &rest[..1];
    }
    let len = 1 + rest
        .iter()
        .skip(1)
        .take(3)
        .take_while(|b| (0x80..0xc0).contains(*b))
        .count();
    &rest[..len.min(rest.len())]
}

/// `value` as text for an error, cut like PostgreSQL cuts COPY context.
fn shown(value: &[u8]) -> String {
    let s = String::from_utf8_lossy(value);
    match s.char_indices().nth(MAX_SHOWN) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{
        DataType, Field, Float64Type, Int32Type, Int64Type, Schema, TimeUnit,
        TimestampMicrosecondType,
    };

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
            Field::new("bucket", DataType::Int32, true),
        ]))
    }

    fn csv(header: bool) -> Loader {
        let dialect = Dialect {
            csv: true,
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: Vec::new(),
        };
        Loader::new(dialect, header, "t".into(), schema(), vec![0, 1, 2, 3])
    }

    fn text() -> Loader {
        let dialect = Dialect {
            csv: false,
            delimiter: b'\t',
            quote: b'"',
            escape: b'"',
            null: b"\\N".to_vec(),
        };
        Loader::new(dialect, false, "t".into(), schema(), vec![0, 1, 2, 3])
    }

    /// Feeds `input` in chunks of `chunk` bytes and returns all rows as one batch.
    fn load(mut l: Loader, input: &[u8], chunk: usize) -> Result<RecordBatch> {
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            l.push(c, &mut out)?;
        }
        let rows = l.finish(&mut out)?;
        let batch = datafusion::arrow::compute::concat_batches(&schema(), &out)
            .map_err(|e| TallyError::Internal(e.to_string()))?;
        assert_eq!(rows as usize, batch.num_rows());
        Ok(batch)
    }

    fn names(b: &RecordBatch) -> Vec<Option<String>> {
        let s = b.column(1).as_string::<i32>();
        (0..s.len())
            .map(|i| s.is_valid(i).then(|| s.value(i).to_string()))
            .collect()
    }

    fn error(r: Result<RecordBatch>) -> (String, String) {
        match r {
            Err(e) => (e.sqlstate().to_string(), e.to_string()),
            Ok(b) => panic!("loaded {} rows", b.num_rows()),
        }
    }

    #[test]
    fn csv_loads_the_same_whatever_the_chunk_boundaries() {
        let input: &[u8] = "id,name,score,bucket\r\n1,\"a,\"\"b\"\"\",1.5,1\r\n2,,,\r\n3,\"multi\r\nline é\",-2e3,3\r\n4,\"\",0,4"
            .as_bytes();
        for chunk in 1..input.len() + 1 {
            let b = load(csv(true), input, chunk).unwrap();
            assert_eq!(b.num_rows(), 4, "chunk {chunk}");
            let ids = b.column(0).as_primitive::<Int64Type>();
            assert_eq!(ids.values().to_vec(), vec![1, 2, 3, 4]);
            assert_eq!(
                names(&b),
                vec![
                    Some("a,\"b\"".into()),
                    None,
                    Some("multi\r\nline é".into()),
                    Some(String::new())
                ]
            );
            let scores = b.column(2).as_primitive::<Float64Type>();
            assert!(scores.is_null(1));
            assert_eq!(scores.value(2), -2000.0);
            let buckets = b.column(3).as_primitive::<Int32Type>();
            assert_eq!(buckets.value(3), 4);
        }
    }

    #[test]
    fn text_loads_escapes_across_chunks_and_stops_at_the_end_marker() {
        let input: &[u8] =
            b"1\ta\\tb\\\\c\\x41\\101\t\\N\t7\n2\t\\N\t2.5\t\\N\n\\.\n3\tignored\t1\t1\n";
        for chunk in 1..input.len() + 1 {
            let b = load(text(), input, chunk).unwrap();
            assert_eq!(b.num_rows(), 2, "chunk {chunk}");
            assert_eq!(names(&b), vec![Some("a\tb\\cAA".into()), None]);
        }
    }

    #[test]
    fn bad_values_name_line_column_and_sqlstate() {
        let (code, msg) = error(load(csv(false), b"1,a,1,1\n2,b,1,x\n", 64));
        assert_eq!(code, "22P02");
        assert_eq!(
            msg,
            "invalid input syntax for type integer: \"x\" (COPY t, line 2, column bucket: \"x\")"
        );
        let (code, msg) = error(load(csv(true), b"h\n1,a,1,1\n1,b,1,3000000000\n", 64));
        assert_eq!(code, "22003");
        assert!(msg.contains("line 3, column bucket"), "{msg}");
        let (code, msg) = error(load(csv(false), b"1,a,1e999,1\n", 64));
        assert_eq!(code, "22003");
        assert!(
            msg.contains("out of range for type double precision"),
            "{msg}"
        );
        let (code, msg) = error(load(csv(false), b"1,a,1,1\n2,b\n", 64));
        assert_eq!(code, "22P04");
        assert_eq!(msg, "missing data for column \"score\" (COPY t, line 2)");
        let (code, msg) = error(load(csv(false), b"1,a,1,1,5\n", 64));
        assert_eq!(code, "22P04");
        assert_eq!(
            msg,
            "extra data after last expected column (COPY t, line 1)"
        );
        let (code, msg) = error(load(csv(false), b"1,a,1,1\n,b,1,1\n", 64));
        assert_eq!(code, "23502");
        assert!(
            msg.contains("column \"id\"") && msg.contains("line 2"),
            "{msg}"
        );
        let (code, msg) = error(load(csv(false), b"1,a,1,1\n2,\"open,1,1\n", 64));
        assert_eq!(code, "22P04");
        assert_eq!(msg, "unterminated CSV quoted field (COPY t, line 2)");
        let (code, msg) = error(load(text(), b"1\ta\t1\t1\n2\tb\\.x\t1\t1\n", 64));
        assert_eq!(code, "22P04");
        assert_eq!(msg, "end-of-copy marker corrupt (COPY t, line 2)");
        let (code, _) = error(load(text(), b"1\ta\t1\t1\r\n2\tb\t1\t1\n", 64));
        assert_eq!(code, "22P04");
    }

    #[test]
    fn bad_bytes_are_encoding_errors_on_their_line() {
        for chunk in [1, 3, 64] {
            let (code, msg) = error(load(csv(false), b"1,a,1,1\n2,\xc3\x28,1,1\n", chunk));
            assert_eq!(code, "22021");
            assert_eq!(
                msg,
                "invalid byte sequence for encoding \"UTF8\": 0xc3 (COPY t, line 2)"
            );
        }
        let (code, msg) = error(load(csv(false), b"1,a\0,1,1\n", 64));
        assert_eq!(
            (code.as_str(), msg.contains("0x00")),
            ("22021", true),
            "{msg}"
        );
        let (code, msg) = error(load(text(), b"1\ta\\303\t1\t1\n", 64));
        assert_eq!(code, "22021", "{msg}");
        // A character cut at the very end of the data is bad too.
        let (code, _) = error(load(csv(false), b"1,\xc3", 64));
        assert_eq!(code, "22021");
    }

    #[test]
    fn errors_found_when_a_batch_is_cut_still_name_their_line() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "t",
            DataType::Time64(TimeUnit::Microsecond),
            true,
        )]));
        let dialect = Dialect {
            csv: true,
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: Vec::new(),
        };
        let mut l = Loader::new(dialect, true, "t".into(), schema, vec![0]);
        let mut out = Vec::new();
        l.push(b"t\n01:00:00\n\nnope\n", &mut out).unwrap();
        let e = l.finish(&mut out).unwrap_err();
        assert_eq!(e.sqlstate(), "22P02");
        assert!(e.to_string().contains("line 4, column t: \"nope\""), "{e}");
    }

    #[test]
    fn columns_map_to_their_targets_and_the_rest_are_null() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("c", DataType::Utf8, true),
        ]));
        let dialect = Dialect {
            csv: true,
            delimiter: b'|',
            quote: b'"',
            escape: b'"',
            null: b"NULL".to_vec(),
        };
        // With NULL 'NULL', an empty field is an empty string, which is no timestamp.
        let mut l = Loader::new(dialect, false, "t".into(), schema, vec![2, 1]);
        let e = l.push(b"x|\n", &mut Vec::new()).unwrap_err();
        assert_eq!(e.sqlstate(), "22007", "{e}");

        let dialect = Dialect {
            csv: true,
            delimiter: b'|',
            quote: b'"',
            escape: b'"',
            null: b"NULL".to_vec(),
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("c", DataType::Utf8, true),
        ]));
        let mut l = Loader::new(dialect, false, "t".into(), schema, vec![2, 1]);
        let mut out = Vec::new();
        l.push(
            b"x|2024-01-01 01:00:00+01\nNULL|NULL\n\"NULL\"|NULL\n",
            &mut out,
        )
        .unwrap();
        assert_eq!(l.finish(&mut out).unwrap(), 3);
        let b = &out[0];
        assert_eq!(b.column(0).null_count(), 3);
        let at = b.column(1).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(at.value(0), 1_704_067_200_000_000);
        assert!(at.is_null(1));
        let c = b.column(2).as_string::<i32>();
        assert_eq!(c.value(0), "x");
        assert!(c.is_null(1));
        assert_eq!(c.value(2), "NULL");
    }

    #[test]
    fn batches_are_cut_at_the_row_limit() {
        let mut input = Vec::new();
        for i in 0..BATCH_ROWS + 10 {
            input.extend_from_slice(format!("{i},n{i},{i}.5,{}\n", i % 100).as_bytes());
        }
        let mut l = csv(false);
        let mut out = Vec::new();
        for c in input.chunks(CHUNK) {
            l.push(c, &mut out).unwrap();
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].num_rows(), BATCH_ROWS);
        assert_eq!(l.finish(&mut out).unwrap(), (BATCH_ROWS + 10) as u64);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].num_rows(), 10);
    }

    const CHUNK: usize = 65_536;
}
