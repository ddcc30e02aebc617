//! Result columns as PostgreSQL describes and writes them.
//!
//! - RowDescription: the type a column was declared with where Arrow lost it (`uuid`,
//!   `json`, `jsonb`, `varchar(n)` are strings in Delta), the type modifier of
//!   `numeric(p,s)`, `varchar(n)` and `char(n)` columns, the type's length, and for a column
//!   read straight from a table the table's OID and the column's number
//!   ([`crate::engine::columns`] puts these in the fields' metadata).
//! - Text format: floats in PostgreSQL's shortest round-trip form (`-2`, `1e+20`,
//!   `Infinity`) and timestamps as `2024-01-02 03:04:05.5` (no `.000000`), `+00` after a
//!   `timestamptz`, instead of the forms pgwire writes (`-2.0`, `inf`, six fraction digits).
//! - Binary format: a `uuid` as its 16 bytes and a `jsonb` with its version byte, from the
//!   strings Delta stores.
//!
//! Columns that need it are rewritten batch by batch into what the encoder of arrow-pg then
//! writes as is; everything else goes to arrow-pg untouched.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::error::ArrowError;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldFormat, FieldInfo};
use pgwire::error::PgWireResult;
use pgwire::types::format::FormatOptions;

use crate::engine::columns::{ATTNUM_KEY, TABLE_OID_KEY, pg_type, type_len};

/// RowDescription fields for a result schema.
pub fn fields(
    schema: &Schema,
    format: &Format,
    opts: Option<Arc<FormatOptions>>,
) -> PgWireResult<Vec<FieldInfo>> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (t, typmod) = pg_type(f, f.metadata().contains_key(TABLE_OID_KEY))?;
            let meta = f.metadata();
            let table = meta.get(TABLE_OID_KEY).and_then(|v| v.parse::<i32>().ok());
            let column = meta.get(ATTNUM_KEY).and_then(|v| v.parse::<i16>().ok());
            let len = type_len(&t);
            let mut info = FieldInfo::new(
                crate::statements::rewrite::client_name(f.name()).to_string(),
                table,
                column,
                t,
                format.format_for(i),
            )
            .with_type_modifier(typmod)
            .with_type_size(len);
            if let Some(o) = &opts {
                info = info.with_format_options(o.clone());
            }
            Ok(info)
        })
        .collect()
}

/// Whether [`present`] changes anything in batches of these fields (so most results skip it).
pub fn needs_presenting(schema: &Schema, fields: &[FieldInfo]) -> bool {
    schema
        .fields()
        .iter()
        .zip(fields)
        .any(|(f, info)| rewrite_kind(f.data_type(), info).is_some())
}

enum Rewrite {
    FloatText,
    TimestampText,
    UuidBinary,
    JsonbBinary,
}

fn rewrite_kind(arrow: &DataType, info: &FieldInfo) -> Option<Rewrite> {
    let text = info.format() == FieldFormat::Text;
    match (arrow, text) {
        (DataType::Float32 | DataType::Float64, true) => Some(Rewrite::FloatText),
        (DataType::Timestamp(..), true) => Some(Rewrite::TimestampText),
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, false)
            if *info.datatype() == Type::UUID =>
        {
            Some(Rewrite::UuidBinary)
        }
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, false)
            if *info.datatype() == Type::JSONB =>
        {
            Some(Rewrite::JsonbBinary)
        }
        _ => None,
    }
}

/// The batch with its columns in the form the encoder writes as PostgreSQL does (see the
/// module comment).
pub fn present(batch: RecordBatch, fields: &[FieldInfo]) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    let mut new_fields: Vec<Field> = Vec::with_capacity(batch.num_columns());
    let mut changed = false;
    for (i, (col, field)) in batch.columns().iter().zip(schema.fields()).enumerate() {
        let Some(kind) = fields
            .get(i)
            .and_then(|info| rewrite_kind(col.data_type(), info))
        else {
            columns.push(col.clone());
            new_fields.push(field.as_ref().clone());
            continue;
        };
        changed = true;
        let (array, t): (ArrayRef, DataType) = match kind {
            Rewrite::FloatText => (crate::engine::pg_text::float_text(col), DataType::Utf8),
            Rewrite::TimestampText => (
                crate::engine::pg_text::timestamp_text(col)
                    .map_err(|e| ArrowError::ComputeError(e.to_string()))?,
                DataType::Utf8,
            ),
            Rewrite::UuidBinary => (uuid_binary(col)?, DataType::Binary),
            Rewrite::JsonbBinary => (jsonb_binary(col)?, DataType::Binary),
        };
        columns.push(array);
        new_fields.push(Field::new(field.name(), t, true));
    }
    if !changed {
        return Ok(batch);
    }
    RecordBatch::try_new(Arc::new(Schema::new(new_fields)), columns)
}

fn uuid_binary(col: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let col = datafusion::arrow::compute::cast(col, &DataType::Utf8)?;
    let strings = col.as_string::<i32>();
    let mut b = BinaryBuilder::with_capacity(strings.len(), strings.len() * 16);
    for v in strings {
        match v {
            Some(s) => {
                let u = uuid::Uuid::parse_str(s.trim()).map_err(|_| {
                    ArrowError::InvalidArgumentError(format!(
                        "invalid input syntax for type uuid: \"{s}\""
                    ))
                })?;
                b.append_value(u.as_bytes());
            }
            None => b.append_null(),
        }
    }
    Ok(Arc::new(b.finish()))
}

fn jsonb_binary(col: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let col = datafusion::arrow::compute::cast(col, &DataType::Utf8)?;
    let strings = col.as_string::<i32>();
    let mut b = BinaryBuilder::with_capacity(strings.len(), strings.len() * 16);
    let mut buf = Vec::new();
    for v in strings {
        match v {
            Some(s) => {
                buf.clear();
                buf.push(1u8);
                buf.extend_from_slice(s.as_bytes());
                b.append_value(&buf);
            }
            None => b.append_null(),
        }
    }
    Ok(Arc::new(b.finish()))
}
