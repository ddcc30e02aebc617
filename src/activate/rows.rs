//! Rows of a query result as JSON objects for destinations: by column name, or renamed and
//! selected by the COPY's `map = 'src:dst,...'`. Conversion is per record batch, so a COPY
//! never holds more than one batch of the result plus one request's worth of records.

use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::json::writer::{JsonArray, WriterBuilder};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};

use super::destinations::Record;
use crate::error::{Result, TallyError};

/// How result columns become destination fields.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// (source column, destination field) pairs, in output order.
    pub columns: Vec<(String, String)>,
    /// The key column's source name.
    pub key_source: Option<String>,
}

impl Mapping {
    /// The mapping of a result `schema` under `map` (`'src:dst,...'`; without it every
    /// column keeps its name) with the COPY's `key` column (a source name).
    pub fn new(schema: &Schema, map: Option<&str>, key: Option<&str>) -> Result<Mapping> {
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let columns: Vec<(String, String)> = match map {
            None => names.iter().map(|n| (n.clone(), n.clone())).collect(),
            Some(m) => {
                let mut out = Vec::new();
                for part in m.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let (src, dst) = match part.split_once(':') {
                        Some((s, d)) => (s.trim(), d.trim()),
                        None => (part, part),
                    };
                    if src.is_empty() || dst.is_empty() {
                        return Err(invalid(format!(
                            "map entry \"{part}\" must be source_column:destination_field"
                        )));
                    }
                    if !names.iter().any(|n| n == src) {
                        return Err(TallyError::InvalidValue {
                            code: "42703",
                            message: format!(
                                "map names column \"{src}\", which the query does not return (it returns: {})",
                                names.join(", ")
                            ),
                        });
                    }
                    out.push((src.to_string(), dst.to_string()));
                }
                if out.is_empty() {
                    return Err(invalid("map is empty".into()));
                }
                out
            }
        };
        if let Some(k) = key {
            if !names.iter().any(|n| n == k) {
                return Err(TallyError::InvalidValue {
                    code: "42703",
                    message: format!(
                        "key column \"{k}\" is not in the query result (it returns: {})",
                        names.join(", ")
                    ),
                });
            }
            if !columns.iter().any(|(s, _)| s == k) {
                return Err(invalid(format!(
                    "key column \"{k}\" must be in the map too"
                )));
            }
        }
        Ok(Mapping {
            columns,
            key_source: key.map(str::to_string),
        })
    }

    /// The key's destination field name.
    pub fn key_field(&self) -> Option<&str> {
        let k = self.key_source.as_deref()?;
        self.columns
            .iter()
            .find(|(s, _)| s == k)
            .map(|(_, d)| d.as_str())
    }

    /// The records of one record batch, numbered from `first_ordinal`.
    pub fn records(&self, batch: &RecordBatch, first_ordinal: u64) -> Result<Vec<Record>> {
        if batch.num_rows() == 0 {
            return Ok(vec![]);
        }
        let mut buf = Vec::with_capacity(batch.num_rows() * 64);
        {
            let mut w = WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, JsonArray>(&mut buf);
            w.write(batch)
                .map_err(|e| TallyError::DataFusion(e.into()))?;
            w.finish().map_err(|e| TallyError::DataFusion(e.into()))?;
        }
        let rows: Vec<Map<String, Value>> = serde_json::from_slice(&buf)
            .map_err(|e| TallyError::Internal(format!("row to JSON: {e}")))?;
        // Without a map every column keeps its name: the parsed object is the record as is.
        let identity = self.columns.len() == batch.num_columns()
            && self
                .columns
                .iter()
                .zip(batch.schema().fields())
                .all(|((src, dst), f)| src == dst && src == f.name());
        let mut out = Vec::with_capacity(rows.len());
        for (i, mut row) in rows.into_iter().enumerate() {
            let key = self
                .key_source
                .as_ref()
                .and_then(|k| row.get(k))
                .and_then(key_text);
            let fields = if identity {
                row
            } else {
                let mut fields = Map::with_capacity(self.columns.len());
                for (src, dst) in &self.columns {
                    let v = row.remove(src).unwrap_or(Value::Null);
                    fields.insert(dst.clone(), v);
                }
                fields
            };
            out.push(Record {
                ordinal: first_ordinal + i as u64,
                key,
                fields,
            });
        }
        Ok(out)
    }
}

/// A key value as text; null keys have none.
fn key_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn invalid(message: String) -> TallyError {
    TallyError::InvalidValue {
        code: "22023",
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field};

    use super::*;

    #[test]
    fn rows_become_objects_renamed_by_the_map() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("email", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("a@x.io"), None])),
            ],
        )
        .expect("batch");
        let m = Mapping::new(&schema, Some("id:user_id, email:mail"), Some("id")).expect("map");
        assert_eq!(m.key_field(), Some("user_id"));
        let r = m.records(&batch, 10).expect("records");
        assert_eq!(r[0].ordinal, 10);
        assert_eq!(r[0].key.as_deref(), Some("1"));
        assert_eq!(
            Value::Object(r[0].fields.clone()),
            serde_json::json!({"user_id": 1, "mail": "a@x.io"})
        );
        assert_eq!(r[1].fields.get("mail"), Some(&Value::Null));
        assert!(Mapping::new(&schema, Some("nope:x"), None).is_err());
        assert!(Mapping::new(&schema, None, Some("missing")).is_err());
    }
}
