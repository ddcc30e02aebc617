//! PII functions: hashing for ad-platform matching, keyed pseudonymisation, masking and
//! redaction. Each is vectorised over Arrow string arrays and returns NULL for NULL input.
//!
//! | function | result |
//! |---|---|
//! | `hash_email(email [, 'google' \| 'meta'])` | SHA-256 hex of the platform-normalised address, see [`hash`] |
//! | `hash_phone(phone [, 'google' \| 'meta'])` | SHA-256 hex of the platform-normalised number |
//! | `sha256_hex(text \| bytea)` | SHA-256 as lowercase hex (`sha256` stays PostgreSQL's, returning bytea) |
//! | `pseudonymize(value, key)` | HMAC-SHA256 hex |
//! | `mask_email(text)`, `mask_phone(text)` | display masks, see [`mask`] |
//! | `anonymize_ip(text)` | last IPv4 octet / last 80 IPv6 bits zeroed |
//! | `redact_pii(text)` | free text with PII replaced by placeholders, see [`redact`] |

pub mod hash;
pub mod mask;
pub mod redact;

use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{ScalarUDF, Signature, Volatility};

use crate::validate::util::{SimpleUdf, map_string};

/// Every PII function.
pub fn functions() -> Vec<ScalarUDF> {
    vec![
        hash::hash_email_udf().udf(),
        hash::hash_phone_udf().udf(),
        hash::sha256_hex_udf().udf(),
        hash::pseudonymize_udf().udf(),
        mask_email_udf().udf(),
        mask_phone_udf().udf(),
        anonymize_ip_udf().udf(),
        redact_pii_udf().udf(),
    ]
}

/// `mask_email(text) -> text`: `f***@example.com`, for showing an address to people who
/// must recognise but not hold it; NULL for text that is not an address. See
/// [`mask::mask_email_into`].
pub fn mask_email_udf() -> SimpleUdf {
    SimpleUdf::new(
        "mask_email",
        Signature::string(1, Volatility::Immutable),
        DataType::Utf8,
        |name, args| map_string(name, args, mask::mask_email_into),
    )
}

/// `mask_phone(text) -> text`: every digit but the last four replaced by `*`, punctuation
/// kept; NULL for text that is not a phone number. See [`mask::mask_phone_into`].
pub fn mask_phone_udf() -> SimpleUdf {
    SimpleUdf::new(
        "mask_phone",
        Signature::string(1, Volatility::Immutable),
        DataType::Utf8,
        |name, args| map_string(name, args, mask::mask_phone_into),
    )
}

/// `anonymize_ip(text) -> text`: the address with its last IPv4 octet or last 80 IPv6 bits
/// zeroed, keeping coarse geography for analytics; NULL for text that is not an address.
/// See [`mask::anonymize_ip_into`].
pub fn anonymize_ip_udf() -> SimpleUdf {
    SimpleUdf::new(
        "anonymize_ip",
        Signature::string(1, Volatility::Immutable),
        DataType::Utf8,
        |name, args| map_string(name, args, mask::anonymize_ip_into),
    )
}

/// `redact_pii(text) -> text`: free text (support notes, form fields, error messages) with
/// emails, IBANs, card numbers, IP addresses and phone numbers replaced by `[EMAIL]`,
/// `[IBAN]`, `[CARD]`, `[IP]` and `[PHONE]`. See [`redact`] for the rules.
pub fn redact_pii_udf() -> SimpleUdf {
    SimpleUdf::new(
        "redact_pii",
        Signature::string(1, Volatility::Immutable),
        DataType::Utf8,
        |name, args| {
            map_string(name, args, |s, out| {
                out.push_str(&redact::redact_pii(s));
                true
            })
        },
    )
}
