//! JSON records to Arrow: the schema inferred from the first page, and each page converted
//! to one record batch.
//!
//! Inference looks at the top-level fields of the first page's records (ordered by name
//! within a record, as serde_json keeps object keys, then by first appearance): booleans, integers (`bigint`), numbers with a fraction anywhere in the
//! page (`double`), strings (`text`); nested objects and arrays, and fields whose values
//! disagree, become JSON text, so nothing is dropped. A later page whose value does not fit
//! its column (a fraction in a `bigint` column) fails with the column named, and the
//! `columns` option fixes the schema instead.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use serde_json::Value;

use crate::error::{Result, TallyError};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    Null,
    Bool,
    Int,
    Float,
    Text,
    Json,
}

fn seen(v: &Value) -> Seen {
    match v {
        Value::Null => Seen::Null,
        Value::Bool(_) => Seen::Bool,
        Value::Number(n) if n.is_i64() => Seen::Int,
        Value::Number(_) => Seen::Float,
        Value::String(_) => Seen::Text,
        Value::Array(_) | Value::Object(_) => Seen::Json,
    }
}

fn merge(a: Seen, b: Seen) -> Seen {
    match (a, b) {
        (x, Seen::Null) | (Seen::Null, x) => x,
        (x, y) if x == y => x,
        (Seen::Int, Seen::Float) | (Seen::Float, Seen::Int) => Seen::Float,
        (Seen::Text, _) | (_, Seen::Text) => Seen::Text,
        _ => Seen::Json,
    }
}

/// The schema of `records`: one nullable column per top-level field.
pub fn infer_schema(records: &[Value]) -> Result<SchemaRef> {
    let mut cols: Vec<(String, Seen)> = Vec::new();
    for r in records {
        let Value::Object(map) = r else {
            return Err(not_object(r));
        };
        for (k, v) in map {
            match cols.iter_mut().find(|(n, _)| n == k) {
                Some((_, s)) => *s = merge(*s, seen(v)),
                None => cols.push((k.clone(), seen(v))),
            }
        }
    }
    if cols.is_empty() {
        return Err(TallyError::InvalidValue {
            code: "22023",
            message: "read_json_api: the first page has no records to infer columns from; give them with the columns option".into(),
        });
    }
    let fields: Vec<Field> = cols
        .into_iter()
        .map(|(name, s)| {
            let t = match s {
                Seen::Bool => DataType::Boolean,
                Seen::Int => DataType::Int64,
                Seen::Float => DataType::Float64,
                Seen::Null | Seen::Text | Seen::Json => DataType::Utf8,
            };
            Field::new(name, t, true)
        })
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

fn not_object(v: &Value) -> TallyError {
    let mut text = v.to_string();
    text.truncate(80);
    TallyError::InvalidValue {
        code: "22P02",
        message: format!("read_json_api: a record is not a JSON object: {text}"),
    }
}

fn mismatch(column: &str, v: &Value, t: &DataType) -> TallyError {
    let mut text = v.to_string();
    text.truncate(80);
    TallyError::InvalidValue {
        code: "22P02",
        message: format!(
            "read_json_api: value {text} of field \"{column}\" does not fit its column type {t}; give the columns option to read it differently"
        ),
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn int_of(column: &str, v: &Value, t: &DataType) -> Result<Option<i64>> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(Some(i)),
            None => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                _ => Err(mismatch(column, v, t)),
            },
        },
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| mismatch(column, v, t)),
        _ => Err(mismatch(column, v, t)),
    }
}

fn float_of(column: &str, v: &Value, t: &DataType) -> Result<Option<f64>> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_f64().map(Some).ok_or_else(|| mismatch(column, v, t)),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| mismatch(column, v, t)),
        _ => Err(mismatch(column, v, t)),
    }
}

fn narrow<T: TryFrom<i64>>(
    column: &str,
    v: &Value,
    t: &DataType,
    i: Option<i64>,
) -> Result<Option<T>> {
    i.map(|i| T::try_from(i).map_err(|_| mismatch(column, v, t)))
        .transpose()
}

/// One column of `records`, read from field `name` as type `t`.
fn column(records: &[Value], name: &str, t: &DataType) -> Result<ArrayRef> {
    let get = |r: &'_ Value| -> Value { r.get(name).cloned().unwrap_or(Value::Null) };
    let n = records.len();
    Ok(match t {
        DataType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(n);
            for r in records {
                let v = get(r);
                b.append_option(match &v {
                    Value::Null => None,
                    Value::Bool(x) => Some(*x),
                    Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
                    Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
                    _ => return Err(mismatch(name, &v, t)),
                });
            }
            Arc::new(b.finish())
        }
        DataType::Int64 => {
            let mut b = Int64Builder::with_capacity(n);
            for r in records {
                let v = get(r);
                b.append_option(int_of(name, &v, t)?);
            }
            Arc::new(b.finish())
        }
        DataType::Int32 => {
            let mut b = Int32Builder::with_capacity(n);
            for r in records {
                let v = get(r);
                b.append_option(narrow(name, &v, t, int_of(name, &v, t)?)?);
            }
            Arc::new(b.finish())
        }
        DataType::Int16 => {
            let mut b = Int16Builder::with_capacity(n);
            for r in records {
                let v = get(r);
                b.append_option(narrow(name, &v, t, int_of(name, &v, t)?)?);
            }
            Arc::new(b.finish())
        }
        DataType::Float64 => {
            let mut b = Float64Builder::with_capacity(n);
            for r in records {
                let v = get(r);
                b.append_option(float_of(name, &v, t)?);
            }
            Arc::new(b.finish())
        }
        DataType::Float32 => {
            let mut b = Float32Builder::with_capacity(n);
            for r in records {
                let v = get(r);
                b.append_option(float_of(name, &v, t)?.map(|f| f as f32));
            }
            Arc::new(b.finish())
        }
        other => {
            // Text, and every type Arrow can parse from text (timestamps, dates, decimals).
            let mut b = StringBuilder::with_capacity(n, n * 16);
            for r in records {
                b.append_option(text_of(&get(r)));
            }
            let text: ArrayRef = Arc::new(b.finish());
            if *other == DataType::Utf8 {
                text
            } else {
                let opts = datafusion::arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                };
                datafusion::arrow::compute::cast_with_options(&text, other, &opts).map_err(|e| {
                    TallyError::InvalidValue {
                        code: "22P02",
                        message: format!(
                            "read_json_api: field \"{name}\" does not read as {other}: {e}"
                        ),
                    }
                })?
            }
        }
    })
}

/// `records` as one batch of `schema`. Fields missing from a record are null; fields the
/// schema does not name are left out.
pub fn to_batch(records: &[Value], schema: &SchemaRef) -> Result<RecordBatch> {
    for r in records {
        if !r.is_object() {
            return Err(not_object(r));
        }
    }
    let columns = schema
        .fields()
        .iter()
        .map(|f| column(records, f.name(), f.data_type()))
        .collect::<Result<Vec<_>>>()?;
    let opts = RecordBatchOptions::new().with_row_count(Some(records.len()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &opts)
        .map_err(|e| TallyError::Internal(format!("read_json_api batch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn infers_and_converts() {
        let recs = vec![
            json!({"id": 1, "name": "a", "score": 1, "tags": ["x"], "ok": true}),
            json!({"id": 2, "name": null, "score": 2.5, "meta": {"k": 1}}),
        ];
        let schema = infer_schema(&recs).unwrap();
        let types: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(
            types,
            vec![
                DataType::Int64,
                DataType::Utf8,
                DataType::Boolean,
                DataType::Float64,
                DataType::Utf8,
                DataType::Utf8
            ]
        );
        let b = to_batch(&recs, &schema).unwrap();
        assert_eq!(b.num_rows(), 2);
        let bad = vec![json!({"id": 1.5})];
        assert!(to_batch(&bad, &schema).is_err());
    }
}
