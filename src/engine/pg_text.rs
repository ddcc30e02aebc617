//! Timestamps and floats cast to text read as PostgreSQL writes them.
//!
//! Arrow's cast writes `2024-01-01T00:00:00` (ISO 8601 with a `T`); PostgreSQL writes
//! `2024-01-01 00:00:00`, with fractional seconds only when there are some, trimmed, and
//! `+00` after a `timestamptz` (the session zone is UTC). Arrow writes the float -2 as
//! `-2.0` and infinity as `inf`; PostgreSQL as `-2` and `Infinity`, with the shortest digits
//! that read back as the same value. Users compare, group by and export `ts::text` and
//! `x::text`, so the difference shows. An analyzer rule replaces every cast of a timestamp or
//! float to a string type (explicit, or one the type coercion added) by `pg_timestamp_text`,
//! which handles both. The wire layer writes text-format results with the same functions.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, StringBuilder, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::datatypes::{Float32Type, Float64Type};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result as DFResult, exec_err};
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    Cast, ColumnarValue, Expr, ExprSchemable, LogicalPlan, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

/// `pg_timestamp_text(ts)`: a timestamp as PostgreSQL's text output writes it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TimestampText {
    signature: Signature,
}

impl TimestampText {
    /// The function.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(TimestampText {
            signature: Signature::any(1, Volatility::Immutable),
        })
    }
}

/// Writes a timestamp given in microseconds since 1970 as PostgreSQL's text output does.
pub(crate) fn format_micros(micros: i64, with_zone: bool, out: &mut String) {
    use std::fmt::Write;
    let Some(dt) = chrono::DateTime::from_timestamp_micros(micros) else {
        return;
    };
    let dt = dt.naive_utc();
    let _ = write!(out, "{}", dt.format("%Y-%m-%d %H:%M:%S"));
    let frac = micros.rem_euclid(1_000_000);
    if frac != 0 {
        let digits = format!("{frac:06}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    if with_zone {
        out.push_str("+00");
    }
}

impl ScalarUDFImpl for TimestampText {
    fn name(&self) -> &str {
        "pg_timestamp_text"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("pg_timestamp_text takes one argument");
        };
        let array = arg.to_array(args.number_rows)?;
        let out = match array.data_type() {
            DataType::Float32 | DataType::Float64 => float_text(&array),
            _ => timestamp_text(&array)?,
        };
        Ok(match arg {
            ColumnarValue::Scalar(_) => {
                ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&out, 0)?)
            }
            ColumnarValue::Array(_) => ColumnarValue::Array(out),
        })
    }
}

/// Timestamps as PostgreSQL's text output writes them (UTC for `timestamptz`).
pub fn timestamp_text(array: &ArrayRef) -> DFResult<ArrayRef> {
    let with_zone = match array.data_type() {
        DataType::Timestamp(_, tz) => tz.is_some(),
        other => return exec_err!("pg_timestamp_text: not a timestamp: {other}"),
    };
    let micros = cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    let micros = micros
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| datafusion::error::DataFusionError::Internal("timestamp cast".into()))?;
    let mut b = StringBuilder::with_capacity(micros.len(), micros.len() * 20);
    let mut s = bytes::BytesMut::with_capacity(32);
    for i in 0..micros.len() {
        if micros.is_null(i) {
            b.append_null();
        } else {
            s.clear();
            crate::wire::values::put_timestamp(&mut s, micros.value(i), with_zone);
            b.append_value(std::str::from_utf8(&s).unwrap_or(""));
        }
    }
    Ok(Arc::new(b.finish()))
}

/// Floats as PostgreSQL's text output writes them ([`crate::wire::values::put_float8`]);
/// other arrays are returned cast to text.
pub fn float_text(col: &ArrayRef) -> ArrayRef {
    use crate::wire::values::{put_float4, put_float8};
    let mut b = StringBuilder::with_capacity(col.len(), col.len() * 8);
    let mut s = bytes::BytesMut::with_capacity(32);
    match col.data_type() {
        DataType::Float32 => {
            for v in col.as_primitive::<Float32Type>() {
                match v {
                    Some(v) => {
                        s.clear();
                        put_float4(&mut s, v);
                        b.append_value(std::str::from_utf8(&s).unwrap_or(""));
                    }
                    None => b.append_null(),
                }
            }
        }
        DataType::Float64 => {
            for v in col.as_primitive::<Float64Type>() {
                match v {
                    Some(v) => {
                        s.clear();
                        put_float8(&mut s, v);
                        b.append_value(std::str::from_utf8(&s).unwrap_or(""));
                    }
                    None => b.append_null(),
                }
            }
        }
        _ => return cast(col, &DataType::Utf8).unwrap_or_else(|_| col.clone()),
    }
    Arc::new(b.finish())
}

/// Rewrites casts of timestamps and floats to strings into `pg_timestamp_text`.
#[derive(Debug)]
pub struct PgTextCasts {
    udf: Arc<ScalarUDF>,
}

impl PgTextCasts {
    /// The rule, calling `udf` (the registered `pg_timestamp_text`).
    pub fn new(udf: Arc<ScalarUDF>) -> Self {
        PgTextCasts { udf }
    }

    fn rewrite(&self, e: Expr, schema: &DFSchema) -> DFResult<Transformed<Expr>> {
        let (inner, to) = match &e {
            Expr::Cast(Cast { expr, field })
                if matches!(
                    field.data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) =>
            {
                (expr.as_ref().clone(), field.data_type().clone())
            }
            _ => return Ok(Transformed::no(e)),
        };
        match inner.get_type(schema) {
            Ok(DataType::Timestamp(_, _) | DataType::Float32 | DataType::Float64) => {
                let text = self.udf.call(vec![inner]);
                Ok(Transformed::yes(if to == DataType::Utf8 {
                    text
                } else {
                    datafusion::logical_expr::cast(text, to)
                }))
            }
            _ => Ok(Transformed::no(e)),
        }
    }
}

impl AnalyzerRule for PgTextCasts {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DFResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let inputs = node.inputs();
            let schema = if inputs.is_empty() {
                node.schema().as_ref().clone()
            } else {
                merge_schema(&inputs)
            };
            // Rewritten expressions keep their names, so the columns above still resolve.
            let names = datafusion::logical_expr::expr_rewriter::NamePreserver::new(&node);
            node.map_expressions(|e| {
                let saved = names.save(&e);
                e.transform_up(|x| self.rewrite(x, &schema))
                    .map(|t| t.update_data(|e| saved.restore(e)))
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "pg_text_casts"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f8(v: f64) -> String {
        let mut s = bytes::BytesMut::new();
        crate::wire::values::put_float8(&mut s, v);
        String::from_utf8(s.to_vec()).expect("ascii")
    }

    fn f4(v: f32) -> String {
        let mut s = bytes::BytesMut::new();
        crate::wire::values::put_float4(&mut s, v);
        String::from_utf8(s.to_vec()).expect("ascii")
    }

    #[test]
    fn floats_print_as_postgres() {
        // Each expectation is PostgreSQL 15's output for the same value.
        assert_eq!(f8(-2.0), "-2");
        assert_eq!(f8(1e20), "1e+20");
        assert_eq!(f8(1e15), "1e+15");
        assert_eq!(f8(1e14), "100000000000000");
        assert_eq!(f8(1e-5), "1e-05");
        assert_eq!(f8(0.0001), "0.0001");
        assert_eq!(f8(123456789012345678.0), "1.2345678901234568e+17");
        assert_eq!(f8(f64::INFINITY), "Infinity");
        assert_eq!(f8(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(f8(f64::NAN), "NaN");
        assert_eq!(f8(-0.0), "-0");
        assert_eq!(f8(1.5e300), "1.5e+300");
        assert_eq!(f8(1.25e-7), "1.25e-07");
        assert_eq!(f8(0.1f32 as f64), "0.10000000149011612");
        assert_eq!(f8(2.5), "2.5");
        // A tie between two shortest forms: PostgreSQL's Ryu picks the even last digit.
        assert_eq!(f8(1_658_206_780_088_562.2), "1.6582067800885622e+15");
        assert_eq!(f4(1.5), "1.5");
        assert_eq!(f4(1e6), "1e+06");
        assert_eq!(f4(1e5), "100000");
        assert_eq!(f4(123456.7), "123456.7");
        assert_eq!(f4(0.1), "0.1");
    }

    #[test]
    fn formats_as_postgres() {
        let mut s = String::new();
        format_micros(1_704_067_200_000_000, false, &mut s);
        assert_eq!(s, "2024-01-01 00:00:00");
        s.clear();
        format_micros(1_704_067_200_500_000, true, &mut s);
        assert_eq!(s, "2024-01-01 00:00:00.5+00");
        s.clear();
        format_micros(-1, false, &mut s);
        assert_eq!(s, "1969-12-31 23:59:59.999999");
    }
}
