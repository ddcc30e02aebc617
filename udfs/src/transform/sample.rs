//! `sample_by_key(key, rate)`: deterministic sampling by key.
//!
//! The decision for a key is `xxh64(key, seed 0) < rate × 2^64`, where `key` is hashed as
//! its UTF-8 text (non-text keys by their text form, so `42` and `'42'` decide alike) and
//! xxh64 is XXH64 of the xxHash specification with seed 0. That is a fixed, documented
//! function: the same key decides the same way in every process, on every machine and in
//! every future tally version (changing it would be a breaking change), and other systems
//! can reproduce the sample, for example ClickHouse with `xxHash64(key) < rate * 2^64`.
//! Samples nest: every key kept at rate 0.01 is also kept at rate 0.1, so a small sample of
//! users is a subset of a larger one.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanBuilder, Float64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, Signature, Volatility,
};
use twox_hash::XxHash64;

use crate::validate::util::{SimpleUdf, expect_args, finish, for_each_str, literal, to_arrays};

/// The seed of the sampling hash. Part of the function's definition: never change it.
pub const SAMPLE_SEED: u64 = 0;

/// The hash that decides the sample for `key`.
pub fn sample_hash(key: &str) -> u64 {
    XxHash64::oneshot(SAMPLE_SEED, key.as_bytes())
}

/// The threshold for `rate` in `[0, 1]`: keys whose hash is below it are kept.
pub fn threshold(rate: f64) -> u128 {
    // 2^64 × rate, exact at both ends: 0 keeps nothing, 1 keeps everything.
    (rate * 18_446_744_073_709_551_616.0) as u128
}

/// Whether `key` is in the sample of `rate` (in `[0, 1]`).
pub fn in_sample(key: &str, rate: f64) -> bool {
    u128::from(sample_hash(key)) < threshold(rate)
}

/// A rate argument as a number, or an error message naming the argument.
fn rate_value(name: &str, v: &ScalarValue) -> std::result::Result<Option<f64>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let as_f64 = v.cast_to(&DataType::Float64).map_err(|_| {
        format!(
            "{name}: argument rate must be a number, got {}",
            v.data_type()
        )
    })?;
    match as_f64 {
        ScalarValue::Float64(Some(r)) if (0.0..=1.0).contains(&r) => Ok(Some(r)),
        ScalarValue::Float64(Some(r)) => Err(format!(
            "{name}: argument rate must be between 0 and 1, got {r}"
        )),
        _ => Ok(None),
    }
}

fn check_rate(name: &str, args: &ReturnFieldArgs) -> Result<()> {
    if let Some(v) = literal(args, 1)
        && let Err(e) = rate_value(name, v)
    {
        return plan_err!("{e}");
    }
    Ok(())
}

fn sample_kernel(name: &str, args: &ScalarFunctionArgs) -> Result<ColumnarValue> {
    expect_args(name, args, &[2])?;
    let constant = match &args.args[1] {
        ColumnarValue::Scalar(v) => match rate_value(name, v) {
            Ok(r) => Some(r),
            Err(e) => return exec_err!("{e}"),
        },
        ColumnarValue::Array(_) => None,
    };
    let (arrays, all_scalar) = to_arrays(args)?;
    let keys = arrays[0].as_ref();
    let mut out = BooleanBuilder::with_capacity(keys.len());
    match constant {
        Some(None) => (0..keys.len()).for_each(|_| out.append_null()),
        Some(Some(rate)) => {
            let t = threshold(rate);
            for_each_str(keys, |k| {
                out.append_option(k.map(|k| u128::from(sample_hash(k)) < t));
                Ok(())
            })?
        }
        None => {
            let rates = datafusion::arrow::compute::cast(&arrays[1], &DataType::Float64)?;
            let rates = rates
                .as_any()
                .downcast_ref::<Float64Array>()
                .ok_or_else(|| {
                    datafusion::error::DataFusionError::Internal("rates as f64".into())
                })?;
            let mut i = 0;
            for_each_str(keys, |k| {
                let rate = rates.is_valid(i).then(|| rates.value(i));
                i += 1;
                match (k, rate) {
                    (Some(k), Some(r)) if (0.0..=1.0).contains(&r) => {
                        out.append_value(in_sample(k, r))
                    }
                    (Some(_), Some(r)) => {
                        return exec_err!("{name}: argument rate must be between 0 and 1, got {r}");
                    }
                    _ => out.append_null(),
                }
                Ok(())
            })?
        }
    }
    finish(Arc::new(out.finish()), all_scalar)
}

/// `sample_by_key(key, rate) -> boolean`: true for a stable fraction `rate` (0 to 1) of
/// keys, the same keys every time (see the module documentation for the exact hash). Use
/// it to sample users rather than events (`WHERE sample_by_key(user_id, 0.1)` keeps all
/// events of 10% of users). A rate outside `[0, 1]` is a planning error when constant; a
/// NULL key or rate gives NULL.
pub fn sample_by_key_udf() -> SimpleUdf {
    SimpleUdf::new(
        "sample_by_key",
        Signature::any(2, Volatility::Immutable),
        DataType::Boolean,
        sample_kernel,
    )
    .with_check(check_rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_xxh64_seed_0() {
        // Reference values of XXH64 with seed 0 from the xxHash specification's test suite.
        assert_eq!(sample_hash(""), 0xEF46_DB37_51D8_E999);
        assert_eq!(sample_hash("a"), 0xD24E_C4F1_A98C_6E5B);
    }

    #[test]
    fn rates_at_the_ends_and_in_between() {
        assert!(!in_sample("user-1", 0.0));
        assert!(in_sample("user-1", 1.0));
        let kept = (0..100_000)
            .filter(|i| in_sample(&format!("user-{i}"), 0.1))
            .count();
        assert!((9_500..10_500).contains(&kept), "{kept}");
        // Nested samples.
        for i in 0..10_000 {
            let k = format!("u{i}");
            if in_sample(&k, 0.01) {
                assert!(in_sample(&k, 0.1));
            }
        }
    }
}
