//! Timestamps cast to text read as PostgreSQL writes them.
//!
//! Arrow's cast writes `2024-01-01T00:00:00` (ISO 8601 with a `T`); PostgreSQL writes
//! `2024-01-01 00:00:00`, with fractional seconds only when there are some, trimmed, and
//! `+00` after a `timestamptz` (the session zone is UTC). Users compare, group by and export
//! `ts::text`, so the difference shows. An analyzer rule replaces every cast of a timestamp
//! to a string type (explicit, or one the type coercion added) by `pg_timestamp_text`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringBuilder, TimestampMicrosecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
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

fn format_micros(micros: i64, with_zone: bool, out: &mut String) {
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
        let with_zone = match array.data_type() {
            DataType::Timestamp(_, tz) => tz.is_some(),
            other => return exec_err!("pg_timestamp_text: not a timestamp: {other}"),
        };
        let micros = cast(&array, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let micros = micros
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("timestamp cast".into()))?;
        let mut b = StringBuilder::with_capacity(micros.len(), micros.len() * 20);
        let mut s = String::with_capacity(32);
        for i in 0..micros.len() {
            if micros.is_null(i) {
                b.append_null();
            } else {
                s.clear();
                format_micros(micros.value(i), with_zone, &mut s);
                b.append_value(&s);
            }
        }
        let out: ArrayRef = Arc::new(b.finish());
        Ok(match arg {
            ColumnarValue::Scalar(_) => {
                ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&out, 0)?)
            }
            ColumnarValue::Array(_) => ColumnarValue::Array(out),
        })
    }
}

/// Rewrites casts of timestamps to strings into `pg_timestamp_text`.
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
            Ok(DataType::Timestamp(_, _)) => {
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
            node.map_expressions(|e| e.transform_up(|x| self.rewrite(x, &schema)))
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
