//! Validation functions. Each is vectorised over Arrow string arrays and returns NULL for
//! NULL input.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Every validation function.
pub fn functions() -> Vec<ScalarUDF> {
    vec![ScalarUDF::new_from_impl(IsValidUuid::new())]
}

/// `is_valid_uuid(text) -> boolean`: true for the canonical 8-4-4-4-12 hex form (any case,
/// optionally in braces), as PostgreSQL's `uuid` input accepts it. Event pipelines use it to
/// drop malformed `messageId`s and device ids before they reach identity resolution.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct IsValidUuid {
    signature: Signature,
}

impl IsValidUuid {
    /// The function.
    pub fn new() -> Self {
        IsValidUuid {
            signature: Signature::string(1, Volatility::Immutable),
        }
    }
}

impl Default for IsValidUuid {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `s` is a UUID in PostgreSQL's accepted textual forms.
pub fn is_valid_uuid(s: &str) -> bool {
    let s = s
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .unwrap_or(s);
    let b = s.as_bytes();
    if b.len() == 32 {
        return b.iter().all(u8::is_ascii_hexdigit);
    }
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

impl ScalarUDFImpl for IsValidUuid {
    fn name(&self) -> &str {
        "is_valid_uuid"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("is_valid_uuid takes one argument");
        };
        match arg {
            ColumnarValue::Scalar(s) => {
                let v = match s {
                    ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
                        v.as_deref().map(is_valid_uuid)
                    }
                    _ => None,
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Boolean(v)))
            }
            ColumnarValue::Array(a) => {
                let strings = cast(a, &DataType::Utf8)?;
                let strings = strings
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| {
                        datafusion::error::DataFusionError::Internal("expected strings".into())
                    })?;
                let out: BooleanArray = strings.iter().map(|v| v.map(is_valid_uuid)).collect();
                Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_valid_uuid;

    #[test]
    fn accepts_postgres_forms() {
        assert!(is_valid_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
        assert!(is_valid_uuid("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"));
        assert!(is_valid_uuid("{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"));
        assert!(is_valid_uuid("a0eebc999c0b4ef8bb6d6bb9bd380a11"));
    }

    #[test]
    fn rejects_malformed() {
        assert!(!is_valid_uuid(""));
        assert!(!is_valid_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"));
        assert!(!is_valid_uuid("g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
        assert!(!is_valid_uuid("a0eebc99x9c0b-4ef8-bb6d-6bb9bd380a11"));
    }
}
