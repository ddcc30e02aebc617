//! One Arrow builder per column the client sends, filled straight from field bytes.
//!
//! Integers, floats, booleans, text, dates, timestamps, numerics and one-dimensional arrays
//! of those are parsed in place ([`super::values`]); any other type collects text and is
//! cast by Arrow when the batch is cut, which is what every column did before.

use std::sync::Arc;

use datafusion::arrow::array::builder::NullBufferBuilder;
use datafusion::arrow::array::{
    Array, ArrayRef, BinaryBuilder, BinaryViewBuilder, BooleanBuilder, Date32Builder,
    Decimal128Builder, Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder,
    ListArray, StringArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::buffer::{OffsetBuffer, ScalarBuffer};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, FieldRef, TimeUnit};

use super::values::{self, ArrayLiteral, Element, ValueError};

/// A field's text that is not a value of its type.
#[derive(Debug)]
pub struct FieldError {
    /// What is wrong.
    pub kind: ValueError,
    /// The type the text was read as (an array's element type for a bad element).
    pub ty: DataType,
    /// The text (an array's element for a bad element).
    pub text: String,
}

impl FieldError {
    fn new(kind: ValueError, ty: &DataType, text: &[u8]) -> FieldError {
        FieldError {
            kind,
            ty: ty.clone(),
            text: String::from_utf8_lossy(text).into_owned(),
        }
    }
}

/// Why a batch could not be cut.
#[derive(Debug)]
pub enum FinishError {
    /// A value the Arrow cast of a text-collected column rejected, at `row` of the batch.
    Value {
        /// Row within the batch.
        row: usize,
        /// The value.
        error: FieldError,
    },
    /// Arrow refused arrays built here; a bug.
    Internal(String),
}

/// The rows of one column in the batch being built.
pub struct Column {
    ty: DataType,
    kind: Kind,
}

enum Kind {
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Bool(BooleanBuilder),
    /// Text: the input was checked to be UTF-8 already, so bytes go in as they are and the
    /// array is validated once when the batch is cut.
    Utf8(BinaryBuilder),
    /// Text as string views (what Delta tables declare), filled and validated the same way.
    Utf8View(BinaryViewBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder, Option<Arc<str>>),
    Decimal(Decimal128Builder, u8, i8),
    List(Box<ListColumn>),
    /// Any other type: text now, an Arrow cast when the batch is cut.
    Cast(BinaryBuilder),
}

struct ListColumn {
    element: FieldRef,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
    values: Column,
    /// Elements seen so far in this batch.
    count: usize,
    scratch: Vec<u8>,
}

/// Whether `ty` is read in place rather than cast from text.
fn fast(ty: &DataType) -> bool {
    matches!(
        ty,
        DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
            | DataType::Boolean
            | DataType::Utf8
            | DataType::Utf8View
            | DataType::Date32
            | DataType::Timestamp(TimeUnit::Microsecond, _)
            | DataType::Decimal128(..)
    )
}

impl Column {
    /// An empty column of type `ty`, sized for `rows` rows and `bytes` bytes of text.
    pub fn new(ty: &DataType, rows: usize, bytes: usize) -> Column {
        let kind = match ty {
            DataType::Int16 => Kind::Int16(Int16Builder::with_capacity(rows)),
            DataType::Int32 => Kind::Int32(Int32Builder::with_capacity(rows)),
            DataType::Int64 => Kind::Int64(Int64Builder::with_capacity(rows)),
            DataType::Float32 => Kind::Float32(Float32Builder::with_capacity(rows)),
            DataType::Float64 => Kind::Float64(Float64Builder::with_capacity(rows)),
            DataType::Boolean => Kind::Bool(BooleanBuilder::with_capacity(rows)),
            DataType::Utf8 => Kind::Utf8(BinaryBuilder::with_capacity(rows, bytes)),
            DataType::Utf8View => Kind::Utf8View(
                BinaryViewBuilder::with_capacity(rows)
                    .with_fixed_block_size(bytes.clamp(8 << 10, 8 << 20) as u32),
            ),
            DataType::Date32 => Kind::Date(Date32Builder::with_capacity(rows)),
            DataType::Timestamp(TimeUnit::Microsecond, zone) => Kind::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(rows),
                zone.clone(),
            ),
            DataType::Decimal128(p, s) => {
                Kind::Decimal(Decimal128Builder::with_capacity(rows), *p, *s)
            }
            DataType::List(element) if fast(element.data_type()) => {
                let mut offsets = Vec::with_capacity(rows + 1);
                offsets.push(0);
                Kind::List(Box::new(ListColumn {
                    element: element.clone(),
                    offsets,
                    nulls: NullBufferBuilder::new(rows),
                    values: Column::new(element.data_type(), rows, bytes),
                    count: 0,
                    scratch: Vec::new(),
                }))
            }
            _ => Kind::Cast(BinaryBuilder::with_capacity(rows, bytes)),
        };
        Column {
            ty: ty.clone(),
            kind,
        }
    }

    /// Appends NULL.
    pub fn append_null(&mut self) {
        match &mut self.kind {
            Kind::Int16(b) => b.append_null(),
            Kind::Int32(b) => b.append_null(),
            Kind::Int64(b) => b.append_null(),
            Kind::Float32(b) => b.append_null(),
            Kind::Float64(b) => b.append_null(),
            Kind::Bool(b) => b.append_null(),
            Kind::Utf8(b) | Kind::Cast(b) => b.append_null(),
            Kind::Utf8View(b) => b.append_null(),
            Kind::Date(b) => b.append_null(),
            Kind::Timestamp(b, _) => b.append_null(),
            Kind::Decimal(b, ..) => b.append_null(),
            Kind::List(l) => {
                l.offsets.push(l.offsets.last().copied().unwrap_or(0));
                l.nulls.append_null();
            }
        }
    }

    /// Appends the value whose text is `v` (already unescaped and unquoted).
    pub fn append(&mut self, v: &[u8]) -> Result<(), FieldError> {
        let ty = &self.ty;
        let err = |kind| FieldError::new(kind, ty, v);
        match &mut self.kind {
            Kind::Int16(b) => b.append_value(values::parse_i16(v).map_err(err)?),
            Kind::Int32(b) => b.append_value(values::parse_i32(v).map_err(err)?),
            Kind::Int64(b) => b.append_value(values::parse_i64(v).map_err(err)?),
            Kind::Float32(b) => b.append_value(values::parse_f32(v).map_err(err)?),
            Kind::Float64(b) => b.append_value(values::parse_f64(v).map_err(err)?),
            Kind::Bool(b) => b.append_value(values::parse_bool(v).map_err(err)?),
            Kind::Utf8(b) | Kind::Cast(b) => b.append_value(v),
            Kind::Utf8View(b) => b.append_value(v),
            Kind::Date(b) => {
                let d = match values::fast_date(v) {
                    Some(d) => d,
                    None => cast_one(v, ty).and_then(|a| {
                        a.as_any()
                            .downcast_ref::<datafusion::arrow::array::Date32Array>()
                            .filter(|a| a.is_valid(0))
                            .map(|a| a.value(0))
                            .ok_or(ValueError::DateTimeSyntax)
                    }),
                };
                b.append_value(d.map_err(err)?);
            }
            Kind::Timestamp(b, zone) => {
                let t = match values::fast_timestamp(v, zone.is_some()) {
                    Some(t) => t,
                    None => slow_timestamp(v, ty, zone.is_some()),
                };
                b.append_value(t.map_err(err)?);
            }
            Kind::Decimal(b, p, s) => {
                b.append_value(values::parse_decimal(v, *p, *s).map_err(err)?)
            }
            Kind::List(l) => l.append(v, ty)?,
        }
        Ok(())
    }

    /// The column as an Arrow array; the column is empty again afterwards, sized for `rows`
    /// rows and `bytes` bytes.
    pub fn finish(&mut self, rows: usize, bytes: usize) -> Result<ArrayRef, FinishError> {
        let fresh = Column::new(&self.ty, rows, bytes);
        let Column { ty, kind } = std::mem::replace(self, fresh);
        let internal =
            |e: datafusion::arrow::error::ArrowError| FinishError::Internal(e.to_string());
        Ok(match kind {
            Kind::Int16(mut b) => Arc::new(b.finish()),
            Kind::Int32(mut b) => Arc::new(b.finish()),
            Kind::Int64(mut b) => Arc::new(b.finish()),
            Kind::Float32(mut b) => Arc::new(b.finish()),
            Kind::Float64(mut b) => Arc::new(b.finish()),
            Kind::Bool(mut b) => Arc::new(b.finish()),
            Kind::Utf8(mut b) => {
                Arc::new(StringArray::try_from_binary(b.finish()).map_err(internal)?)
            }
            Kind::Utf8View(mut b) => Arc::new(b.finish().to_string_view().map_err(internal)?),
            Kind::Date(mut b) => Arc::new(b.finish()),
            Kind::Timestamp(mut b, zone) => Arc::new(b.finish().with_timezone_opt(zone)),
            Kind::Decimal(mut b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(p, s)
                    .map_err(internal)?,
            ),
            Kind::List(mut l) => {
                let values = l.values.finish(0, 0)?;
                let offsets = OffsetBuffer::new(ScalarBuffer::from(std::mem::take(&mut l.offsets)));
                Arc::new(
                    ListArray::try_new(l.element.clone(), offsets, values, l.nulls.finish())
                        .map_err(internal)?,
                )
            }
            Kind::Cast(mut b) => {
                let text = StringArray::try_from_binary(b.finish()).map_err(internal)?;
                cast_text(&text, &ty)?
            }
        })
    }
}

impl ListColumn {
    fn append(&mut self, v: &[u8], list_ty: &DataType) -> Result<(), FieldError> {
        let mut literal = ArrayLiteral::new(v).map_err(|k| FieldError::new(k, list_ty, v))?;
        let mut scratch = std::mem::take(&mut self.scratch);
        loop {
            match literal.next(&mut scratch) {
                Ok(Some(Element::Null)) => self.values.append_null(),
                Ok(Some(Element::Value)) => self.values.append(&scratch)?,
                Ok(None) => break,
                Err(k) => return Err(FieldError::new(k, list_ty, v)),
            }
            self.count += 1;
        }
        self.scratch = scratch;
        let end = i32::try_from(self.count)
            .map_err(|_| FieldError::new(ValueError::MalformedArray, list_ty, v))?;
        self.offsets.push(end);
        self.nulls.append_non_null();
        Ok(())
    }
}

fn cast_options() -> CastOptions<'static> {
    CastOptions {
        safe: false,
        ..Default::default()
    }
}

/// Casts one value with Arrow, for spellings the fast paths do not read.
fn cast_one(v: &[u8], ty: &DataType) -> Result<ArrayRef, ValueError> {
    let text = std::str::from_utf8(v).map_err(|_| ValueError::DateTimeSyntax)?;
    let array: ArrayRef = Arc::new(StringArray::from(vec![text.trim()]));
    cast_with_options(&array, ty, &cast_options()).map_err(|_| ValueError::DateTimeSyntax)
}

fn slow_timestamp(v: &[u8], ty: &DataType, with_zone: bool) -> Result<i64, ValueError> {
    let text = std::str::from_utf8(v).map_err(|_| ValueError::DateTimeSyntax)?;
    let text = if with_zone {
        normalize_offset(text.trim())
    } else {
        text.trim().to_string()
    };
    let a = cast_one(text.as_bytes(), ty)?;
    a.as_any()
        .downcast_ref::<datafusion::arrow::array::TimestampMicrosecondArray>()
        .filter(|a| a.is_valid(0))
        .map(|a| a.value(0))
        .ok_or(ValueError::DateTimeSyntax)
}

/// PostgreSQL prints offsets as `+00`; Arrow's parser wants `+00:00`.
fn normalize_offset(v: &str) -> String {
    let b = v.as_bytes();
    let has_time = v.len() > 10 && v.get(10..).is_some_and(|t| t.contains(':'));
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

/// Casts a text-collected column; a value the cast rejects is reported with its row.
fn cast_text(text: &StringArray, ty: &DataType) -> Result<ArrayRef, FinishError> {
    let array: ArrayRef = Arc::new(text.clone());
    if let Ok(a) = cast_with_options(&array, ty, &cast_options()) {
        return Ok(a);
    }
    for row in 0..text.len() {
        if text.is_null(row) {
            continue;
        }
        let one: ArrayRef = Arc::new(StringArray::from(vec![text.value(row)]));
        if cast_with_options(&one, ty, &cast_options()).is_err() {
            return Err(FinishError::Value {
                row,
                error: FieldError::new(ValueError::Syntax, ty, text.value(row).as_bytes()),
            });
        }
    }
    Err(FinishError::Internal(format!(
        "the cast of a COPY column to {ty} failed on no single value"
    )))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, Decimal128Array, Int64Array};
    use datafusion::arrow::datatypes::{Field, Int64Type};

    use super::*;

    #[test]
    fn lists_of_bigint_and_text() {
        let ty = DataType::List(Arc::new(Field::new("element", DataType::Int64, true)));
        let mut c = Column::new(&ty, 4, 16);
        c.append(b"{1, 2,NULL}").unwrap();
        c.append_null();
        c.append(b"{}").unwrap();
        let e = c.append(b"{1,x}").unwrap_err();
        assert_eq!(
            (e.kind, e.ty, e.text.as_str()),
            (ValueError::Syntax, DataType::Int64, "x")
        );
        let mut c = Column::new(&ty, 4, 16);
        c.append(b"{1, 2,NULL}").unwrap();
        c.append_null();
        c.append(b"{}").unwrap();
        let a = c.finish(4, 16).unwrap();
        let l = a.as_list::<i32>();
        assert_eq!(l.len(), 3);
        assert!(l.is_null(1));
        let first = l.value(0);
        let first = first.as_primitive::<Int64Type>();
        assert_eq!(first, &Int64Array::from(vec![Some(1), Some(2), None]));
        assert_eq!(l.value(2).len(), 0);

        let ty = DataType::List(Arc::new(Field::new("element", DataType::Utf8, true)));
        let mut c = Column::new(&ty, 4, 16);
        c.append(br#"{a,"b,c"}"#).unwrap();
        let a = c.finish(4, 16).unwrap();
        let v = a.as_list::<i32>().value(0);
        assert_eq!(v.as_string::<i32>(), &StringArray::from(vec!["a", "b,c"]));

        let ty = DataType::List(Arc::new(Field::new("element", DataType::Utf8View, true)));
        let mut c = Column::new(&ty, 4, 16);
        c.append(br#"{"a long value that is not inlined",NULL}"#)
            .unwrap();
        let a = c.finish(4, 16).unwrap();
        assert_eq!(a.data_type(), &ty);
        let v = a.as_list::<i32>().value(0);
        let v = v.as_string_view();
        assert_eq!(v.value(0), "a long value that is not inlined");
        assert!(v.is_null(1));
    }

    #[test]
    fn decimals_and_dates_keep_their_types() {
        let ty = DataType::Decimal128(10, 2);
        let mut c = Column::new(&ty, 2, 0);
        c.append(b"1.005").unwrap();
        let a = c.finish(2, 0).unwrap();
        assert_eq!(a.data_type(), &ty);
        assert_eq!(
            a.as_any()
                .downcast_ref::<Decimal128Array>()
                .map(|a| a.value(0)),
            Some(101)
        );

        let mut c = Column::new(&DataType::Date32, 2, 0);
        c.append(b"2024-01-02").unwrap();
        assert_eq!(
            c.append(b"2024-02-30").unwrap_err().kind,
            ValueError::DateTimeRange
        );
        assert_eq!(
            c.append(b"soon").unwrap_err().kind,
            ValueError::DateTimeSyntax
        );
    }

    #[test]
    fn timestamps_with_zone_fall_back_for_other_spellings() {
        let ty = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let mut c = Column::new(&ty, 2, 0);
        c.append(b"2024-01-01 00:00:00+00").unwrap();
        c.append(b"2024-01-01T00:00:00.000+00:00").unwrap();
        let a = c.finish(2, 0).unwrap();
        assert_eq!(a.data_type(), &ty);
        let t = a.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(t.value(0), 1_704_067_200_000_000);
        assert_eq!(t.value(1), 1_704_067_200_000_000);
        assert_eq!(
            normalize_offset("2024-01-01 00:00:00+00"),
            "2024-01-01 00:00:00+00:00"
        );
        assert_eq!(normalize_offset("2024-01-01"), "2024-01-01");
    }

    #[test]
    fn other_types_are_cast_and_report_the_bad_row() {
        let ty = DataType::Time64(TimeUnit::Microsecond);
        let mut c = Column::new(&ty, 2, 0);
        c.append(b"01:02:03").unwrap();
        c.append(b"nope").unwrap();
        match c.finish(2, 0) {
            Err(FinishError::Value { row, error }) => {
                assert_eq!((row, error.text.as_str()), (1, "nope"));
            }
            other => panic!("{other:?}"),
        }
    }
}
