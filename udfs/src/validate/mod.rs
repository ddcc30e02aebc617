//! Validation and normalisation functions. Each is vectorised over Arrow string arrays
//! (`Utf8`, `LargeUtf8` and `Utf8View`, read in place) and returns NULL for NULL input.
//!
//! | function | result |
//! |---|---|
//! | `is_valid_email(text)` | boolean, see [`email`] for the rules |
//! | `normalize_email(text)` | trimmed, lowercased address; NULL when not an address |
//! | `email_domain(text)` | lowercased domain of an address; NULL when not an address |
//! | `is_disposable_email(text)` | boolean: domain on the shipped disposable list; NULL when not an address |
//! | `is_valid_phone(text [, region])`, `to_e164(text [, region])` | see [`phone`] |
//! | `is_valid_url(text)`, `is_valid_ip(text)` | see [`net`] |
//! | `is_valid_uuid(text)` | boolean |
//! | `json_schema_errors(json, schema)` | list of `{path, message}`, see [`json_schema`] |

pub mod email;
pub mod json_schema;
pub mod net;
pub mod phone;
pub mod util;

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use util::{SimpleUdf, map_bool, map_string};

/// Every validation function.
pub fn functions() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::new_from_impl(IsValidUuid::new()),
        is_valid_email_udf().udf(),
        normalize_email_udf().udf(),
        email_domain_udf().udf(),
        is_disposable_email_udf().udf(),
        phone::is_valid_phone_udf().udf(),
        phone::to_e164_udf().udf(),
        is_valid_url_udf().udf(),
        is_valid_ip_udf().udf(),
        ScalarUDF::new_from_impl(json_schema::JsonSchemaErrors::new()),
    ]
}

/// `is_valid_email(text) -> boolean`: whether the text is an email address a mailbox could
/// have (rules in [`email`]). Sign-up forms and SDKs let through typos, placeholders
/// (`n/a`, `test@`) and junk; this is the filter before identity resolution and activation.
pub fn is_valid_email_udf() -> SimpleUdf {
    SimpleUdf::new(
        "is_valid_email",
        Signature::string(1, Volatility::Immutable),
        DataType::Boolean,
        |name, args| map_bool(name, args, |s| Some(email::is_valid_email(s))),
    )
}

/// `normalize_email(text) -> text`: trimmed and lowercased address, the join key for
/// identities; NULL when the trimmed text is not a valid address, so placeholders never
/// become keys. Gmail dots and `+tags` are kept (see [`email::normalize_email_into`]).
pub fn normalize_email_udf() -> SimpleUdf {
    SimpleUdf::new(
        "normalize_email",
        Signature::string(1, Volatility::Immutable),
        DataType::Utf8,
        |name, args| map_string(name, args, email::normalize_email_into),
    )
}

/// `email_domain(text) -> text`: the lowercased domain of a valid address (Unicode form for
/// internationalised domains), for B2B account matching and provider statistics; NULL when
/// the text is not an address.
pub fn email_domain_udf() -> SimpleUdf {
    SimpleUdf::new(
        "email_domain",
        Signature::string(1, Volatility::Immutable),
        DataType::Utf8,
        |name, args| map_string(name, args, email::email_domain_into),
    )
}

/// `is_disposable_email(text) -> boolean`: whether the address's domain, or a parent of it,
/// is on the `disposable-email-domains` blocklist shipped in `udfs/data/`; NULL when the
/// text is not a valid address. Throwaway addresses inflate sign-up counts and bounce.
pub fn is_disposable_email_udf() -> SimpleUdf {
    SimpleUdf::new(
        "is_disposable_email",
        Signature::string(1, Volatility::Immutable),
        DataType::Boolean,
        |name, args| {
            let mut scratch = String::new();
            map_bool(name, args, |s| email::is_disposable_email(s, &mut scratch))
        },
    )
}

/// `is_valid_url(text) -> boolean`: an absolute http(s) URL with a host, see
/// [`net::is_valid_url`].
pub fn is_valid_url_udf() -> SimpleUdf {
    SimpleUdf::new(
        "is_valid_url",
        Signature::string(1, Volatility::Immutable),
        DataType::Boolean,
        |name, args| map_bool(name, args, |s| Some(net::is_valid_url(s))),
    )
}

/// `is_valid_ip(text) -> boolean`: an IPv4 or IPv6 address, see [`net::is_valid_ip`].
pub fn is_valid_ip_udf() -> SimpleUdf {
    SimpleUdf::new(
        "is_valid_ip",
        Signature::string(1, Volatility::Immutable),
        DataType::Boolean,
        |name, args| map_bool(name, args, |s| Some(net::is_valid_ip(s))),
    )
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
