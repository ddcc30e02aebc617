//! Transformation functions: user-agent parsing, URL parts and UTM parameters, sampling.

use datafusion::logical_expr::ScalarUDF;

/// Every transformation function.
pub fn functions() -> Vec<ScalarUDF> {
    vec![]
}
