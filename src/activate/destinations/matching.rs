//! Customer-list identifiers for the ad platforms: a record's `email` and `phone` columns
//! normalised and SHA-256 hashed exactly as the platform requires, with the same functions
//! as SQL's `hash_email(x, 'google' | 'meta')` and `hash_phone(...)` (`tally-udfs`), so a
//! list uploaded by a COPY matches one hashed in SQL.
//!
//! Columns: `email` (or `hashed_email`: already a lowercase hex SHA-256 of the normalised
//! address) and `phone` (or `hashed_phone`), in international form (`+` and country code;
//! use `to_e164(phone, region)` in the query for national numbers). A record whose given
//! identifier is not valid is refused rather than sent without it; a record with none is
//! refused too.

use serde_json::{Map, Value};
use tally_udfs::pii::hash::{Platform, normalize_email_for, normalize_phone_for, push_sha256_hex};

/// A record's hashed identifiers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hashed {
    /// SHA-256 hex of the normalised email.
    pub email: Option<String>,
    /// SHA-256 hex of the normalised phone number.
    pub phone: Option<String>,
}

fn sha256_hex(s: &str) -> String {
    let mut out = String::with_capacity(64);
    push_sha256_hex(s.as_bytes(), &mut out);
    out
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The hash of an email as `platform` requires; `None` when it is not a valid address.
pub fn hash_email(email: &str, platform: Platform) -> Option<String> {
    let mut n = String::new();
    normalize_email_for(email, platform, &mut n).then(|| sha256_hex(&n))
}

/// The hash of an international phone number as `platform` requires; `None` when invalid.
pub fn hash_phone(phone: &str, platform: Platform) -> Option<String> {
    let mut n = String::new();
    normalize_phone_for(phone, platform, &mut n).then(|| sha256_hex(&n))
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The hashed identifiers of a record, or why it cannot be uploaded.
pub fn identifiers(fields: &Map<String, Value>, platform: Platform) -> Result<Hashed, String> {
    let mut h = Hashed::default();
    if let Some(e) = text(fields.get("email")) {
        h.email = Some(hash_email(&e, platform).ok_or("email is not a valid address")?);
    } else if let Some(e) = text(fields.get("hashed_email")) {
        if !is_sha256_hex(&e) {
            return Err("hashed_email is not a lowercase hex SHA-256".into());
        }
        h.email = Some(e);
    }
    if let Some(p) = text(fields.get("phone")) {
        h.phone = Some(
            hash_phone(&p, platform)
                .ok_or("phone is not a valid international number (+ and country code)")?,
        );
    } else if let Some(p) = text(fields.get("hashed_phone")) {
        if !is_sha256_hex(&p) {
            return Err("hashed_phone is not a lowercase hex SHA-256".into());
        }
        h.phone = Some(p);
    }
    if h.email.is_none() && h.phone.is_none() {
        return Err("the row has no email or phone to match on".into());
    }
    Ok(h)
}

/// The identifiers of a key being removed: a phone when the key column's name says so, an
/// email otherwise; already-hashed keys pass as they are.
pub fn key_identifiers(key_field: &str, key: &str, platform: Platform) -> Option<Hashed> {
    let phone = key_field.to_ascii_lowercase().contains("phone");
    let hashed = key_field.to_ascii_lowercase().starts_with("hashed");
    let value = if hashed {
        is_sha256_hex(key).then(|| key.to_string())
    } else if phone {
        hash_phone(key, platform)
    } else {
        hash_email(key, platform)
    }?;
    Some(if phone {
        Hashed {
            email: None,
            phone: Some(value),
        }
    } else {
        Hashed {
            email: Some(value),
            phone: None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_per_platform() {
        // Google drops dots before @gmail.com; Meta keeps them. Both trim and lowercase.
        assert_eq!(
            hash_email(" Jo.Doe@GMAIL.com ", Platform::Google),
            Some(sha256_hex("jodoe@gmail.com"))
        );
        assert_eq!(
            hash_email(" Jo.Doe@GMAIL.com ", Platform::Meta),
            Some(sha256_hex("jo.doe@gmail.com"))
        );
        assert_eq!(
            hash_phone("+1 650-253-0000", Platform::Google),
            Some(sha256_hex("+16502530000"))
        );
        assert_eq!(
            hash_phone("+1 650-253-0000", Platform::Meta),
            Some(sha256_hex("16502530000"))
        );
        assert_eq!(hash_email("not-an-email", Platform::Meta), None);
    }
}
