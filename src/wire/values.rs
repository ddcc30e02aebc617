//! PostgreSQL's text and binary forms of result values, written column by column straight
//! from the Arrow buffers.
//!
//! Streaming a long result is mostly formatting values. arrow-pg encodes one value at a time
//! through chrono, rust_decimal and `Display`, and the PostgreSQL forms of floats and
//! timestamps went through an intermediate string array first. The writers here cover the
//! types nearly every result is made of (integers, floats, booleans, strings, dates,
//! timestamps, numerics) with no allocation per value: integers through itoa, floats through
//! ryu's shortest digits laid out the way `float8out` does, dates and timestamps from their
//! day and microsecond counts. They are written here rather than taken from a crate because
//! no crate writes PostgreSQL's exact forms, and this is the hot path of every SELECT and
//! COPY TO. A column of any other type makes the caller take the general path (arrow-pg, or
//! Arrow's formatter for COPY), so every type still works.

use bytes::{BufMut, BytesMut};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, LargeStringArray, StringArray, StringViewArray,
};
use datafusion::arrow::buffer::{NullBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt64Type,
};
use pgwire::api::Type;
use pgwire::api::results::{FieldFormat, FieldInfo};
use pgwire::messages::data::DataRow;

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's binary epoch).
const PG_EPOCH_DAYS: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Why a value could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// A string column declared `uuid` holds something that is not a UUID.
    #[error("invalid input syntax for type uuid: \"{0}\"")]
    BadUuid(String),
}

impl From<ValueError> for crate::error::TallyError {
    fn from(e: ValueError) -> Self {
        crate::error::TallyError::InvalidValue {
            code: "22P02",
            message: e.to_string(),
        }
    }
}

enum Values<'a> {
    I16(&'a [i16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    F32(&'a [f32]),
    F64(&'a [f64]),
    Bool(&'a BooleanArray),
    Str(&'a StringArray),
    LargeStr(&'a LargeStringArray),
    View(&'a StringViewArray),
    Date(&'a [i32]),
    /// Timestamps: the raw values, the factor that turns them into microseconds (negative:
    /// a divisor), and whether the column is `timestamptz`.
    Timestamp {
        values: &'a [i64],
        scale: i64,
        zone: bool,
    },
    Decimal {
        values: &'a [i128],
        scale: i8,
    },
}

/// How a column's values go on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Text,
    Binary,
    /// A string column declared `uuid`, sent as its 16 bytes.
    BinaryUuid,
    /// A string column declared `jsonb`, sent after jsonb's version byte.
    BinaryJsonb,
}

/// Writes one column's values in PostgreSQL's text or binary form.
pub struct ColumnWriter<'a> {
    nulls: Option<&'a NullBuffer>,
    values: Values<'a>,
    form: Form,
}

fn prim<T: datafusion::arrow::datatypes::ArrowPrimitiveType>(
    a: &ArrayRef,
) -> &ScalarBuffer<T::Native> {
    a.as_primitive::<T>().values()
}

impl<'a> ColumnWriter<'a> {
    /// A writer of `array` in PostgreSQL's text form, or `None` for a type the general path
    /// must write.
    pub fn text(array: &'a ArrayRef) -> Option<Self> {
        Self::with_form(array, Form::Text)
    }

    /// A writer of `array` as the client asked for it in `info` (the column's declared type
    /// and format), or `None` for a combination the general path must write.
    pub fn for_field(array: &'a ArrayRef, info: &FieldInfo) -> Option<Self> {
        if info.format() == FieldFormat::Text {
            if matches!(array.data_type(), DataType::Date32)
                && !info
                    .format_options()
                    .date_style
                    .trim_start()
                    .to_ascii_uppercase()
                    .starts_with("ISO")
            {
                return None;
            }
            return Self::text(array);
        }
        let t = info.datatype();
        let form = match array.data_type() {
            DataType::Int16 if *t == Type::INT2 => Form::Binary,
            DataType::Int32 if *t == Type::INT4 || *t == Type::OID => Form::Binary,
            DataType::Int64 if *t == Type::INT8 => Form::Binary,
            DataType::Float32 if *t == Type::FLOAT4 => Form::Binary,
            DataType::Float64 if *t == Type::FLOAT8 => Form::Binary,
            DataType::Boolean if *t == Type::BOOL => Form::Binary,
            DataType::Date32 if *t == Type::DATE => Form::Binary,
            DataType::Timestamp(_, None) if *t == Type::TIMESTAMP => Form::Binary,
            DataType::Timestamp(_, Some(_)) if *t == Type::TIMESTAMPTZ => Form::Binary,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => match *t {
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON => Form::Binary,
                Type::UUID => Form::BinaryUuid,
                Type::JSONB => Form::BinaryJsonb,
                _ => return None,
            },
            _ => return None,
        };
        Self::with_form(array, form)
    }

    fn with_form(array: &'a ArrayRef, form: Form) -> Option<Self> {
        let values = match array.data_type() {
            DataType::Int16 => Values::I16(prim::<Int16Type>(array)),
            DataType::Int32 => Values::I32(prim::<Int32Type>(array)),
            DataType::Int64 => Values::I64(prim::<Int64Type>(array)),
            DataType::UInt16 => Values::U16(prim::<UInt16Type>(array)),
            DataType::UInt32 => Values::U32(prim::<UInt32Type>(array)),
            DataType::UInt64 => Values::U64(prim::<UInt64Type>(array)),
            DataType::Float32 => Values::F32(prim::<Float32Type>(array)),
            DataType::Float64 => Values::F64(prim::<Float64Type>(array)),
            DataType::Boolean => Values::Bool(array.as_boolean()),
            DataType::Utf8 => Values::Str(array.as_string::<i32>()),
            DataType::LargeUtf8 => Values::LargeStr(array.as_string::<i64>()),
            DataType::Utf8View => Values::View(array.as_string_view()),
            DataType::Date32 => Values::Date(prim::<Date32Type>(array)),
            DataType::Timestamp(unit, zone) => {
                let (values, scale): (&[i64], i64) = match unit {
                    TimeUnit::Second => (prim::<TimestampSecondType>(array), 1_000_000),
                    TimeUnit::Millisecond => (prim::<TimestampMillisecondType>(array), 1_000),
                    TimeUnit::Microsecond => (prim::<TimestampMicrosecondType>(array), 1),
                    TimeUnit::Nanosecond => (prim::<TimestampNanosecondType>(array), -1_000),
                };
                Values::Timestamp {
                    values,
                    scale,
                    zone: zone.is_some(),
                }
            }
            DataType::Decimal128(_, scale) if form == Form::Text => Values::Decimal {
                values: prim::<Decimal128Type>(array),
                scale: *scale,
            },
            _ => return None,
        };
        Some(ColumnWriter {
            nulls: array.nulls(),
            values,
            form,
        })
    }

    /// Whether the value in `row` is NULL.
    #[inline]
    pub fn is_null(&self, row: usize) -> bool {
        self.nulls.is_some_and(|n| n.is_null(row))
    }

    /// Whether the text form of this column is a string's own bytes (which COPY must
    /// escape), rather than a number, boolean or date that never needs it.
    pub fn is_string(&self) -> bool {
        matches!(
            self.values,
            Values::Str(_) | Values::LargeStr(_) | Values::View(_)
        )
    }

    /// Appends the (non-NULL) value in `row` to `out`.
    #[inline]
    pub fn write(&self, row: usize, out: &mut BytesMut) -> Result<(), ValueError> {
        let text = self.form == Form::Text;
        match &self.values {
            Values::I16(v) if text => put_int(out, v[row]),
            Values::I16(v) => out.put_i16(v[row]),
            Values::I32(v) if text => put_int(out, v[row]),
            Values::I32(v) => out.put_i32(v[row]),
            Values::I64(v) if text => put_int(out, v[row]),
            Values::I64(v) => out.put_i64(v[row]),
            Values::U16(v) => put_int(out, v[row]),
            Values::U32(v) => put_int(out, v[row]),
            Values::U64(v) => put_int(out, v[row]),
            Values::F32(v) if text => put_float4(out, v[row]),
            Values::F32(v) => out.put_f32(v[row]),
            Values::F64(v) if text => put_float8(out, v[row]),
            Values::F64(v) => out.put_f64(v[row]),
            Values::Bool(b) if text => out.put_u8(if b.value(row) { b't' } else { b'f' }),
            Values::Bool(b) => out.put_u8(u8::from(b.value(row))),
            Values::Str(s) => self.put_str(out, s.value(row))?,
            Values::LargeStr(s) => self.put_str(out, s.value(row))?,
            Values::View(s) => self.put_str(out, s.value(row))?,
            Values::Date(v) if text => put_date(out, v[row]),
            Values::Date(v) => out.put_i32((i64::from(v[row]) - PG_EPOCH_DAYS) as i32),
            Values::Timestamp {
                values,
                scale,
                zone,
            } => {
                let micros = to_micros(values[row], *scale);
                if text {
                    put_timestamp(out, micros, *zone);
                } else {
                    out.put_i64(micros.saturating_sub(PG_EPOCH_DAYS * MICROS_PER_DAY));
                }
            }
            Values::Decimal { values, scale } => put_decimal(out, values[row], *scale),
        }
        Ok(())
    }

    fn put_str(&self, out: &mut BytesMut, s: &str) -> Result<(), ValueError> {
        match self.form {
            Form::Text | Form::Binary => out.put_slice(s.as_bytes()),
            Form::BinaryJsonb => {
                out.put_u8(1);
                out.put_slice(s.as_bytes());
            }
            Form::BinaryUuid => {
                let u = uuid::Uuid::parse_str(s.trim())
                    .map_err(|_| ValueError::BadUuid(s.to_string()))?;
                out.put_slice(u.as_bytes());
            }
        }
        Ok(())
    }
}

/// The batch's rows as DataRow messages, or `None` when a column needs the general encoder.
/// All rows are written into one buffer that is then split, so a batch costs one allocation.
pub fn data_rows(
    columns: &[ArrayRef],
    rows: usize,
    fields: &[FieldInfo],
) -> Option<Result<Vec<DataRow>, ValueError>> {
    let writers: Vec<ColumnWriter> = columns
        .iter()
        .zip(fields)
        .map(|(a, f)| ColumnWriter::for_field(a, f))
        .collect::<Option<_>>()?;
    Some(encode_rows(&writers, rows))
}

fn encode_rows(writers: &[ColumnWriter], rows: usize) -> Result<Vec<DataRow>, ValueError> {
    let field_count = writers.len() as i16;
    let mut buf = BytesMut::with_capacity(rows * (writers.len() * 12 + 8));
    let mut ends = Vec::with_capacity(rows);
    for row in 0..rows {
        for w in writers {
            if w.is_null(row) {
                buf.put_i32(-1);
                continue;
            }
            let at = buf.len();
            buf.put_i32(0);
            w.write(row, &mut buf)?;
            let len = (buf.len() - at - 4) as i32;
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        ends.push(buf.len());
    }
    let mut out = Vec::with_capacity(rows);
    let mut start = 0;
    for end in ends {
        out.push(DataRow::new(buf.split_to(end - start), field_count));
        start = end;
    }
    Ok(out)
}

#[inline]
fn put_int<I: itoa::Integer>(out: &mut BytesMut, v: I) {
    let mut b = itoa::Buffer::new();
    out.put_slice(b.format(v).as_bytes());
}

#[inline]
fn to_micros(v: i64, scale: i64) -> i64 {
    if scale >= 1 {
        v.saturating_mul(scale)
    } else {
        v.div_euclid(-scale)
    }
}

/// Writes a `float8` as PostgreSQL's `float8out` does with the default
/// `extra_float_digits` (1): the shortest digits that read back as the same value (Ryu, the
/// algorithm PostgreSQL itself uses, so ties break the same way), in fixed notation when the
/// decimal exponent is in -4..15, else as `1.5e+20`; `NaN`, `Infinity`, `-Infinity`.
pub fn put_float8(out: &mut BytesMut, v: f64) {
    let digits = ShortestDigits::of(ryu::Buffer::new().format_finite(v.abs()));
    put_float(out, v, digits, 15);
}

/// Writes a `float4` as `float4out` does: [`put_float8`]'s form with the shortest digits of
/// the single-precision value and fixed notation for exponents in -4..6.
pub fn put_float4(out: &mut BytesMut, v: f32) {
    let digits = ShortestDigits::of(ryu::Buffer::new().format_finite(v.abs()));
    put_float(out, f64::from(v), digits, 6);
}

/// The shortest decimal digits that read back as a float, and the power of ten of the
/// first one (`1.5e20`: digits `15`, exponent 20).
struct ShortestDigits {
    digits: [u8; 24],
    len: usize,
    exp: i32,
}

impl ShortestDigits {
    /// Parses ryu's output (`1.5`, `1e20`, `1.5e-7`, `0.0001`, `100000.0`) of a finite,
    /// non-negative value.
    fn of(repr: &str) -> ShortestDigits {
        let (mantissa, exp) = match repr.split_once(['e', 'E']) {
            Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
            None => (repr, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let mut d = ShortestDigits {
            digits: [0; 24],
            len: 0,
            exp: 0,
        };
        let mut first: Option<i32> = None;
        // Position of each digit relative to the decimal point: int digits count down to 0,
        // fraction digits go -1, -2, ...
        let int_len = int.len() as i32;
        for (i, c) in int.bytes().chain(frac.bytes()).enumerate() {
            let pos = int_len - 1 - i as i32;
            if first.is_none() {
                if c == b'0' {
                    continue;
                }
                first = Some(pos);
            }
            if d.len < d.digits.len() {
                d.digits[d.len] = c;
                d.len += 1;
            }
        }
        while d.len > 1 && d.digits[d.len - 1] == b'0' {
            d.len -= 1;
        }
        d.exp = first.unwrap_or(0) + exp;
        d
    }

    fn digits(&self) -> &[u8] {
        &self.digits[..self.len]
    }
}

fn put_float(out: &mut BytesMut, v: f64, shortest: ShortestDigits, fixed_below: i32) {
    if v.is_nan() {
        out.put_slice(b"NaN");
        return;
    }
    if v.is_infinite() {
        out.put_slice(if v > 0.0 { b"Infinity" } else { b"-Infinity" });
        return;
    }
    if v.is_sign_negative() {
        out.put_u8(b'-');
    }
    if v == 0.0 {
        out.put_u8(b'0');
        return;
    }
    let digits = shortest.digits();
    let exp = shortest.exp;
    if (-4..fixed_below).contains(&exp) {
        if exp < 0 {
            out.put_slice(b"0.");
            for _ in 0..(-exp - 1) {
                out.put_u8(b'0');
            }
            out.put_slice(digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.put_slice(digits);
                for _ in digits.len()..int_len {
                    out.put_u8(b'0');
                }
            } else {
                out.put_slice(&digits[..int_len]);
                out.put_u8(b'.');
                out.put_slice(&digits[int_len..]);
            }
        }
    } else {
        out.put_u8(digits[0]);
        if digits.len() > 1 {
            out.put_u8(b'.');
            out.put_slice(&digits[1..]);
        }
        out.put_u8(b'e');
        out.put_u8(if exp < 0 { b'-' } else { b'+' });
        let a = exp.unsigned_abs();
        if a < 10 {
            out.put_u8(b'0');
        }
        put_int(out, a);
    }
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[inline]
fn put_2(out: &mut BytesMut, v: u32) {
    out.put_slice(&[b'0' + (v / 10) as u8, b'0' + (v % 10) as u8]);
}

/// Writes `YYYY-MM-DD`; years outside 1..=9999 go through chrono as the general path does.
fn put_ymd(out: &mut BytesMut, days: i64) -> bool {
    let (y, m, d) = civil_from_days(days);
    if !(1..=9999).contains(&y) {
        return false;
    }
    let y = y as u32;
    put_2(out, y / 100);
    put_2(out, y % 100);
    out.put_u8(b'-');
    put_2(out, m);
    out.put_u8(b'-');
    put_2(out, d);
    true
}

fn put_date(out: &mut BytesMut, days: i32) {
    if put_ymd(out, i64::from(days)) {
        return;
    }
    use std::fmt::Write;
    if let Some(date) = chrono::NaiveDate::from_num_days_from_ce_opt(days.saturating_add(719_163)) {
        let _ = write!(out, "{}", date.format("%Y-%m-%d"));
    }
}

/// Writes a timestamp (microseconds since 1970) as PostgreSQL's text output does:
/// `2024-01-02 03:04:05.5`, with `+00` after a `timestamptz` (the session zone is UTC).
pub fn put_timestamp(out: &mut BytesMut, micros: i64, zone: bool) {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let in_day = micros.rem_euclid(MICROS_PER_DAY);
    let at = out.len();
    if !put_ymd(out, days) {
        out.truncate(at);
        let mut s = String::new();
        crate::engine::pg_text::format_micros(micros, zone, &mut s);
        out.put_slice(s.as_bytes());
        return;
    }
    let secs = (in_day / 1_000_000) as u32;
    out.put_u8(b' ');
    put_2(out, secs / 3600);
    out.put_u8(b':');
    put_2(out, secs / 60 % 60);
    out.put_u8(b':');
    put_2(out, secs % 60);
    let mut frac = (in_day % 1_000_000) as u32;
    if frac != 0 {
        let mut digits = [b'0'; 6];
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        let mut len = 6;
        while digits[len - 1] == b'0' {
            len -= 1;
        }
        out.put_u8(b'.');
        out.put_slice(&digits[..len]);
    }
    if zone {
        out.put_slice(b"+00");
    }
}

/// Writes a decimal with exactly `scale` fraction digits, as `numeric_out` does.
fn put_decimal(out: &mut BytesMut, v: i128, scale: i8) {
    if v < 0 {
        out.put_u8(b'-');
    }
    let mut b = itoa::Buffer::new();
    let digits = b.format(v.unsigned_abs()).as_bytes();
    if scale <= 0 {
        out.put_slice(digits);
        if v != 0 {
            for _ in 0..(-i32::from(scale)) {
                out.put_u8(b'0');
            }
        }
        return;
    }
    let scale = scale as usize;
    if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.put_slice(int);
        out.put_u8(b'.');
        out.put_slice(frac);
    } else {
        out.put_slice(b"0.");
        for _ in digits.len()..scale {
            out.put_u8(b'0');
        }
        out.put_slice(digits);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        Date32Array, Decimal128Array, Float32Array, Float64Array, Int64Array,
        TimestampMicrosecondArray, TimestampNanosecondArray,
    };

    use super::*;

    fn text(array: ArrayRef) -> Vec<Option<String>> {
        let w = ColumnWriter::text(&array).expect("fast path");
        (0..array.len())
            .map(|i| {
                (!w.is_null(i)).then(|| {
                    let mut b = BytesMut::new();
                    w.write(i, &mut b).expect("write");
                    String::from_utf8(b.to_vec()).expect("utf8")
                })
            })
            .collect()
    }

    /// PostgreSQL's float layout over the standard library's shortest digits, written
    /// independently of the code under test.
    fn reference(v: f64, sci: String, fixed_below: i32) -> String {
        if v.is_nan() {
            return "NaN".into();
        }
        if v.is_infinite() {
            return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
        }
        let mut out = String::new();
        if v.is_sign_negative() {
            out.push('-');
        }
        if v == 0.0 {
            out.push('0');
            return out;
        }
        let (mantissa, exp) = sci.split_once('e').expect("e");
        let exp: i32 = exp.parse().expect("exponent");
        let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
        if (-4..fixed_below).contains(&exp) {
            if exp < 0 {
                out.push_str("0.");
                out.push_str(&"0".repeat((-exp - 1) as usize));
                out.push_str(&digits);
            } else {
                let int_len = exp as usize + 1;
                if digits.len() <= int_len {
                    out.push_str(&digits);
                    out.push_str(&"0".repeat(int_len - digits.len()));
                } else {
                    out.push_str(&digits[..int_len]);
                    out.push('.');
                    out.push_str(&digits[int_len..]);
                }
            }
        } else {
            out.push_str(&digits[..1]);
            if digits.len() > 1 {
                out.push('.');
                out.push_str(&digits[1..]);
            }
            out.push_str(&format!(
                "e{}{:02}",
                if exp < 0 { '-' } else { '+' },
                exp.abs()
            ));
        }
        out
    }

    /// The same output, or (a tie between two shortest forms, where Ryu and the standard
    /// library may pick different last digits) one as long that reads back as the same value.
    fn same_or_tie<F: std::str::FromStr + PartialEq + std::fmt::Debug>(
        got: &str,
        want: &str,
        v: F,
    ) {
        if got == want {
            return;
        }
        assert_eq!(got.len(), want.len(), "{got} vs {want}");
        assert_eq!(got.parse::<F>().ok(), Some(v), "{got} does not read back");
    }

    #[test]
    fn floats_match_an_independent_reference_layout() {
        // A deterministic walk over bit patterns of every magnitude, plus the edge values.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut f64s = vec![0.0, -0.0, 1.0, -2.0, 1e20, 1e15, 1e14, 1e-5, 1e-4, 0.1, 2.5];
        let mut f32s = vec![0.0f32, 1.5, 1e6, 1e5, 123456.7, 0.1, -3.25, 1e-5];
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let d = f64::from_bits(x);
            if d.is_finite() {
                f64s.push(d);
            }
            f64s.push((x % 1_000_000) as f64 / 100.0);
            let f = f32::from_bits((x >> 32) as u32);
            if f.is_finite() {
                f32s.push(f);
            }
        }
        let a: ArrayRef = Arc::new(Float64Array::from(f64s.clone()));
        for (v, got) in f64s.iter().zip(text(a)) {
            let want = reference(*v, format!("{:e}", v.abs()), 15);
            same_or_tie(&got.expect("value"), &want, *v);
        }
        let a: ArrayRef = Arc::new(Float32Array::from(f32s.clone()));
        for (v, got) in f32s.iter().zip(text(a)) {
            let want = reference(f64::from(*v), format!("{:e}", v.abs()), 6);
            same_or_tie(&got.expect("value"), &want, *v);
        }
        let a: ArrayRef = Arc::new(Float64Array::from(vec![
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ]));
        assert_eq!(
            text(a),
            vec![
                Some("NaN".into()),
                Some("Infinity".into()),
                Some("-Infinity".into())
            ]
        );
    }

    #[test]
    fn timestamps_and_dates_match_the_reference_formatter() {
        let mut x: u64 = 42;
        let mut micros = vec![0i64, -1, 1_704_067_200_500_000, 253_402_300_799_999_999];
        for _ in 0..5_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            micros.push((x as i64) % 300_000_000_000_000_000);
        }
        let a: ArrayRef = Arc::new(TimestampMicrosecondArray::from(micros.clone()));
        let z: ArrayRef =
            Arc::new(TimestampMicrosecondArray::from(micros.clone()).with_timezone("+00:00"));
        for ((m, got), got_z) in micros.iter().zip(text(a)).zip(text(z)) {
            let mut s = String::new();
            crate::engine::pg_text::format_micros(*m, false, &mut s);
            assert_eq!(got.as_deref(), Some(s.as_str()), "{m}");
            s.clear();
            crate::engine::pg_text::format_micros(*m, true, &mut s);
            assert_eq!(got_z.as_deref(), Some(s.as_str()), "{m}");
        }
        let days: Vec<i32> = (-800_000..3_000_000).step_by(997).collect();
        let a: ArrayRef = Arc::new(Date32Array::from(days.clone()));
        for (d, got) in days.iter().zip(text(a)) {
            let want = chrono::NaiveDate::from_num_days_from_ce_opt(d + 719_163)
                .expect("date")
                .format("%Y-%m-%d")
                .to_string();
            assert_eq!(got, Some(want), "{d}");
        }
        let ns: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![1_500_000_001i64]));
        assert_eq!(text(ns), vec![Some("1970-01-01 00:00:01.5".into())]);
    }

    #[test]
    fn decimals_keep_their_scale_and_nulls_stay_null() {
        let a: ArrayRef = Arc::new(
            Decimal128Array::from(vec![Some(150), Some(-5), None, Some(0), Some(123_456)])
                .with_precision_and_scale(10, 2)
                .expect("decimal"),
        );
        assert_eq!(
            text(a),
            vec![
                Some("1.50".into()),
                Some("-0.05".into()),
                None,
                Some("0.00".into()),
                Some("1234.56".into())
            ]
        );
        let a: ArrayRef = Arc::new(Int64Array::from(vec![Some(i64::MIN), None, Some(7)]));
        assert_eq!(
            text(a),
            vec![Some(i64::MIN.to_string()), None, Some("7".into())]
        );
    }
}
