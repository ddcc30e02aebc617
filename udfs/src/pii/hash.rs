//! Hashing: ad-platform matching hashes, plain SHA-256 and keyed pseudonyms.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, Signature, TypeSignature, Volatility,
};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::validate::email::{normalize_email_into, split_email};
use crate::validate::phone::{parse_valid_phone, push_e164};
use crate::validate::util::{
    SimpleUdf, append_mapped, expect_args, finish, for_each_str, for_each_str2, literal_text,
    push_hex, scalar_str, string_builder, to_arrays,
};

/// The ad platform whose normalisation rules a matching hash follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Google Ads Customer Match (and Enhanced Conversions): emails trimmed and lowercased,
    /// with dots removed from the local part of `gmail.com` and `googlemail.com` addresses;
    /// phones in E.164 with the leading `+`.
    Google,
    /// Meta (Facebook) Custom Audiences and Conversions API: emails trimmed and lowercased;
    /// phones as digits only, country code included, no `+`.
    Meta,
}

impl Platform {
    /// Parses `'google'` or `'meta'` (any case, surrounding spaces ignored).
    pub fn parse(s: &str) -> Option<Platform> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("google") {
            Some(Platform::Google)
        } else if s.eq_ignore_ascii_case("meta") || s.eq_ignore_ascii_case("facebook") {
            Some(Platform::Meta)
        } else {
            None
        }
    }
}

/// The platform used when none is given.
pub const DEFAULT_PLATFORM: Platform = Platform::Google;

/// Writes the lowercase hex SHA-256 of `bytes` into `out`.
pub fn push_sha256_hex(bytes: &[u8], out: &mut String) {
    let digest = Sha256::digest(bytes);
    push_hex(out, &digest);
}

/// Writes the platform-normalised form of an email into `out` (see [`Platform`]); false
/// when `s` is not a valid address.
pub fn normalize_email_for(s: &str, platform: Platform, out: &mut String) -> bool {
    if !normalize_email_into(s, out) {
        return false;
    }
    if platform == Platform::Google
        && let Some((local, domain)) = split_email(out)
        && matches!(domain, "gmail.com" | "googlemail.com")
        && local.contains('.')
    {
        let at = local.len();
        let without_dots: String = out[..at].chars().filter(|&c| c != '.').collect();
        out.replace_range(..at, &without_dots);
    }
    true
}

/// Writes the platform-normalised form of a phone number into `out`: E.164 for Google,
/// E.164 without `+` for Meta. The number must be international (leading `+`); use
/// `to_e164(phone, region)` first for national numbers. False when it is not valid.
pub fn normalize_phone_for(s: &str, platform: Platform, out: &mut String) -> bool {
    let Some(number) = parse_valid_phone(s.trim(), None) else {
        return false;
    };
    push_e164(&number, out);
    if platform == Platform::Meta && out.starts_with('+') {
        out.remove(0);
    }
    true
}

fn platform_error(name: &str, p: &str) -> String {
    format!("{name}: argument platform: unknown platform '{p}' (expected 'google' or 'meta')")
}

fn check_platform(name: &str, args: &ReturnFieldArgs) -> Result<()> {
    if let Some(p) = literal_text(name, "platform", args, 1)?
        && Platform::parse(p).is_none()
    {
        return plan_err!("{}", platform_error(name, p));
    }
    Ok(())
}

/// Shared body of `hash_email` and `hash_phone`: normalise with `normalize` for the
/// platform, then SHA-256 hex. A scratch buffer for the normalised form and one for the
/// hex are reused across rows.
fn matching_hash(
    name: &str,
    args: &ScalarFunctionArgs,
    normalize: fn(&str, Platform, &mut String) -> bool,
) -> Result<ColumnarValue> {
    expect_args(name, args, &[1, 2])?;
    let constant = match args.args.get(1) {
        None => Some(Some(DEFAULT_PLATFORM)),
        Some(ColumnarValue::Scalar(s)) => match scalar_str(s) {
            Some(None) => Some(None),
            Some(Some(p)) => match Platform::parse(p) {
                Some(p) => Some(Some(p)),
                None => return exec_err!("{}", platform_error(name, p)),
            },
            None => return exec_err!("{name}: argument platform must be text"),
        },
        Some(ColumnarValue::Array(_)) => None,
    };
    let (arrays, all_scalar) = to_arrays(args)?;
    let input = arrays[0].as_ref();
    let mut out = StringBuilder::with_capacity(input.len(), input.len() * 64);
    let mut normalized = String::new();
    let mut hex = String::with_capacity(64);
    let mut row = |v: Option<&str>, platform: Option<Platform>| {
        let (Some(v), Some(platform)) = (v, platform) else {
            out.append_null();
            return;
        };
        normalized.clear();
        if normalize(v, platform, &mut normalized) {
            hex.clear();
            push_sha256_hex(normalized.as_bytes(), &mut hex);
            out.append_value(&hex);
        } else {
            out.append_null();
        }
    };
    match constant {
        Some(platform) => for_each_str(input, |v| {
            row(v, platform);
            Ok(())
        })?,
        None => for_each_str2(input, arrays[1].as_ref(), |v, p| {
            row(v, p.and_then(Platform::parse));
            Ok(())
        })?,
    }
    finish(Arc::new(out.finish()), all_scalar)
}

fn platform_signature() -> Signature {
    Signature::one_of(
        vec![TypeSignature::String(1), TypeSignature::String(2)],
        Volatility::Immutable,
    )
}

/// `hash_email(email [, platform]) -> text`: lowercase hex SHA-256 of the address
/// normalised as the ad platform requires for customer-list matching, `platform` being
/// `'google'` (the default: trim, lowercase, and drop dots before `@gmail.com` /
/// `@googlemail.com`) or `'meta'` (trim, lowercase). Uploading anything else silently
/// lowers match rates, which is why the normalisation is part of the function. NULL when
/// the text is not a valid address (a hash of junk would only pollute the audience).
pub fn hash_email_udf() -> SimpleUdf {
    SimpleUdf::new(
        "hash_email",
        platform_signature(),
        DataType::Utf8,
        |name, args| matching_hash(name, args, normalize_email_for),
    )
    .with_check(check_platform)
}

/// `hash_phone(phone [, platform]) -> text`: lowercase hex SHA-256 of an international
/// number normalised for `platform`: `'google'` (the default) hashes the E.164 form with
/// `+` (`+14155552671`), `'meta'` the digits only (`14155552671`). The number must carry
/// its country code (`+`...); write `hash_phone(to_e164(phone, 'US'))` for national
/// numbers. NULL when it is not a valid number.
pub fn hash_phone_udf() -> SimpleUdf {
    SimpleUdf::new(
        "hash_phone",
        platform_signature(),
        DataType::Utf8,
        |name, args| matching_hash(name, args, normalize_phone_for),
    )
    .with_check(check_platform)
}

fn sha256_hex_kernel(name: &str, args: &ScalarFunctionArgs) -> Result<ColumnarValue> {
    expect_args(name, args, &[1])?;
    let (arrays, all_scalar) = to_arrays(args)?;
    let input = arrays[0].as_ref();
    let mut out = StringBuilder::with_capacity(input.len(), input.len() * 64);
    let mut hex = String::with_capacity(64);
    let mut row = |v: Option<&[u8]>| match v {
        Some(v) => {
            hex.clear();
            push_sha256_hex(v, &mut hex);
            out.append_value(&hex);
        }
        None => out.append_null(),
    };
    match input.data_type() {
        DataType::Binary => input.as_binary::<i32>().iter().for_each(row),
        DataType::LargeBinary => input.as_binary::<i64>().iter().for_each(row),
        DataType::BinaryView => input.as_binary_view().iter().for_each(row),
        DataType::FixedSizeBinary(_) => input.as_fixed_size_binary().iter().for_each(row),
        _ => for_each_str(input, |v| {
            row(v.map(str::as_bytes));
            Ok(())
        })?,
    }
    finish(Arc::new(out.finish()), all_scalar)
}

/// `sha256_hex(text | bytea) -> text`: SHA-256 as 64 lowercase hex digits (of the UTF-8
/// bytes for text, of the bytes for `bytea`). It is a separate name because `sha256` keeps
/// PostgreSQL's (and DataFusion's) meaning, returning `bytea`;
/// `sha256_hex(x)` equals `encode(sha256(x), 'hex')` and DuckDB's `sha256(x)`.
pub fn sha256_hex_udf() -> SimpleUdf {
    SimpleUdf::new(
        "sha256_hex",
        Signature::any(1, Volatility::Immutable),
        DataType::Utf8,
        sha256_hex_kernel,
    )
}

fn check_key(name: &str, args: &ReturnFieldArgs) -> Result<()> {
    if let Some(k) = literal_text(name, "key", args, 1)?
        && k.is_empty()
    {
        return plan_err!("{name}: argument key must not be empty");
    }
    Ok(())
}

fn pseudonymize_kernel(name: &str, args: &ScalarFunctionArgs) -> Result<ColumnarValue> {
    expect_args(name, args, &[2])?;
    let (arrays, all_scalar) = to_arrays(args)?;
    let input = arrays[0].as_ref();
    let mut out = string_builder(input);
    let mut scratch = String::with_capacity(64);
    // A constant key: set up the HMAC state once and clone it per row.
    let constant_key = match &args.args[1] {
        ColumnarValue::Scalar(s) => match scalar_str(s) {
            Some(Some("")) => return exec_err!("{name}: argument key must not be empty"),
            Some(k) => Some(k.map(|k| Hmac::<Sha256>::new_from_slice(k.as_bytes()))),
            None => return exec_err!("{name}: argument key must be text"),
        },
        ColumnarValue::Array(_) => None,
    };
    let hmac_hex = |mac: Hmac<Sha256>, v: &str, out: &mut String| {
        let mut mac = mac;
        mac.update(v.as_bytes());
        push_hex(out, &mac.finalize().into_bytes());
        true
    };
    match constant_key {
        Some(None) => (0..input.len()).for_each(|_| out.append_null()),
        Some(Some(Err(e))) => return exec_err!("{name}: argument key: {e}"),
        Some(Some(Ok(mac))) => for_each_str(input, |v| {
            append_mapped(&mut out, &mut scratch, v, &mut |v, s| {
                hmac_hex(mac.clone(), v, s)
            });
            Ok(())
        })?,
        None => for_each_str2(input, arrays[1].as_ref(), |v, k| {
            match (v, k) {
                (Some(v), Some(k)) if !k.is_empty() => {
                    match Hmac::<Sha256>::new_from_slice(k.as_bytes()) {
                        Ok(mac) => {
                            scratch.clear();
                            hmac_hex(mac, v, &mut scratch);
                            out.append_value(&scratch);
                        }
                        Err(e) => return exec_err!("{name}: argument key: {e}"),
                    }
                }
                (Some(_), Some(_)) => return exec_err!("{name}: argument key must not be empty"),
                _ => out.append_null(),
            }
            Ok(())
        })?,
    }
    finish(Arc::new(out.finish()), all_scalar)
}

/// `pseudonymize(value, key) -> text`: HMAC-SHA256 of the value under `key`, as 64
/// lowercase hex digits. Unlike a plain hash, a pseudonym cannot be reversed by hashing
/// every known email and comparing, unless the key is known; the same value and key always
/// give the same pseudonym, so joins still work. Here `key` is the key text itself; a
/// program with a secret store registers [`pseudonymize_with_secrets`] instead, where the
/// argument names a secret. An empty key is an error (a planning error when it is a
/// constant).
pub fn pseudonymize_udf() -> SimpleUdf {
    SimpleUdf::new(
        "pseudonymize",
        Signature::string(2, Volatility::Immutable),
        DataType::Utf8,
        pseudonymize_kernel,
    )
    .with_check(check_key)
}

/// Looks secrets up by name, for [`pseudonymize_with_secrets`]: tally's secret store, or any
/// program's own.
pub trait SecretResolver: Send + Sync + std::fmt::Debug {
    /// The value of the secret `name`, or why it cannot be had (unknown name, no key).
    fn secret(&self, name: &str) -> std::result::Result<String, String>;
}

/// `pseudonymize(value, secret_name) -> text`: [`pseudonymize_udf`] with the key read from
/// the secret the second argument names, so that the key never appears in SQL text, query
/// logs or history. A constant name that is not a secret is a planning error.
#[derive(Debug)]
pub struct SecretPseudonymize {
    resolver: Arc<dyn SecretResolver>,
    signature: Signature,
}

/// The secret-aware `pseudonymize` over `resolver`.
pub fn pseudonymize_with_secrets(
    resolver: Arc<dyn SecretResolver>,
) -> datafusion::logical_expr::ScalarUDF {
    datafusion::logical_expr::ScalarUDF::new_from_impl(SecretPseudonymize {
        resolver,
        signature: Signature::string(2, Volatility::Stable),
    })
}

impl PartialEq for SecretPseudonymize {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.resolver, &other.resolver)
    }
}
impl Eq for SecretPseudonymize {}
impl std::hash::Hash for SecretPseudonymize {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        "pseudonymize".hash(state);
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for SecretPseudonymize {
    fn name(&self) -> &str {
        "pseudonymize"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn return_field_from_args(
        &self,
        args: ReturnFieldArgs,
    ) -> Result<datafusion::arrow::datatypes::FieldRef> {
        if let Some(name) = literal_text("pseudonymize", "secret_name", &args, 1)?
            && let Err(e) = self.resolver.secret(name)
        {
            return plan_err!("pseudonymize: argument secret_name: {e}");
        }
        Ok(Arc::new(datafusion::arrow::datatypes::Field::new(
            "pseudonymize",
            DataType::Utf8,
            true,
        )))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::common::ScalarValue;
        let resolve = |name: &str| {
            self.resolver
                .secret(name)
                .or_else(|e| exec_err!("pseudonymize: argument secret_name: {e}"))
        };
        let key = match &args.args[1] {
            ColumnarValue::Scalar(s) => match scalar_str(s) {
                Some(Some(name)) => ColumnarValue::Scalar(ScalarValue::Utf8(Some(resolve(name)?))),
                Some(None) => ColumnarValue::Scalar(ScalarValue::Utf8(None)),
                None => return exec_err!("pseudonymize: argument secret_name must be text"),
            },
            ColumnarValue::Array(a) => {
                let mut resolved: std::collections::HashMap<String, String> = Default::default();
                let mut out = StringBuilder::with_capacity(a.len(), a.len() * 16);
                for_each_str(a.as_ref(), |name| {
                    match name {
                        Some(n) => {
                            if !resolved.contains_key(n) {
                                resolved.insert(n.to_string(), resolve(n)?);
                            }
                            out.append_option(resolved.get(n));
                        }
                        None => out.append_null(),
                    }
                    Ok(())
                })?;
                ColumnarValue::Array(Arc::new(out.finish()))
            }
        };
        let mut args = args;
        args.args[1] = key;
        pseudonymize_kernel("pseudonymize", &args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(s: &str, p: Platform) -> Option<String> {
        let mut out = String::new();
        normalize_email_for(s, p, &mut out).then_some(out)
    }

    fn sha(s: &str) -> String {
        let mut out = String::new();
        push_sha256_hex(s.as_bytes(), &mut out);
        out
    }

    #[test]
    fn platform_email_rules() {
        assert_eq!(
            email(" John.Doe+x@GMail.com ", Platform::Google).as_deref(),
            Some("johndoe+x@gmail.com")
        );
        assert_eq!(
            email(" John.Doe+x@GMail.com ", Platform::Meta).as_deref(),
            Some("john.doe+x@gmail.com")
        );
        assert_eq!(
            email("john.doe@example.com", Platform::Google).as_deref(),
            Some("john.doe@example.com")
        );
        assert_eq!(email("n/a", Platform::Google), None);
    }

    #[test]
    fn platform_phone_rules() {
        let mut s = String::new();
        assert!(normalize_phone_for(
            "+1 (415) 555-2671",
            Platform::Google,
            &mut s
        ));
        assert_eq!(s, "+14155552671");
        s.clear();
        assert!(normalize_phone_for(
            "+1 (415) 555-2671",
            Platform::Meta,
            &mut s
        ));
        assert_eq!(s, "14155552671");
        s.clear();
        assert!(!normalize_phone_for(
            "(415) 555-2671",
            Platform::Meta,
            &mut s
        ));
    }

    #[test]
    fn sha256_vectors() {
        // printf 'abc' | sha256sum
        assert_eq!(
            sha("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // printf '' | sha256sum
        assert_eq!(
            sha(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hmac_vector() {
        // RFC 4231 test case 2.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let mut s = String::new();
        push_hex(&mut s, &mac.finalize().into_bytes());
        assert_eq!(
            s,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
