//! Phone numbers, with the `phonenumber` crate (a Rust port of Google's libphonenumber and
//! its metadata, the reference that ad platforms and CRMs validate against).

use std::fmt::Write as _;
use std::sync::Arc;

use datafusion::arrow::array::{BooleanBuilder, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, Signature, TypeSignature, Volatility,
};
use phonenumber::country::Id;
use phonenumber::{Mode, PhoneNumber};

use super::util::{
    SimpleUdf, expect_args, finish, for_each_str, for_each_str2, literal_text, scalar_str,
    string_builder, to_arrays,
};

/// libphonenumber's own limit on the input it will look at; longer text is not a number.
const MAX_PHONE_INPUT: usize = 250;

/// Parses a region argument: an ISO 3166-1 alpha-2 code (any case), as libphonenumber's
/// metadata knows them (`US`, `GB`, `DE`, ...; also `AC`, `TA` and the other
/// numbering-plan regions).
pub fn parse_region(region: &str) -> Option<Id> {
    let r = region.trim();
    if r.len() != 2 {
        return None;
    }
    r.to_ascii_uppercase().parse::<Id>().ok()
}

/// Parses `text` as a phone number of `region` (numbers written with a leading `+` or an
/// international prefix are read as international whatever the region), and returns it only
/// if it is a valid number (right length and a range in use, per libphonenumber's metadata).
pub fn parse_valid_phone(text: &str, region: Option<Id>) -> Option<PhoneNumber> {
    if text.len() > MAX_PHONE_INPUT || !text.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    // The parser is third-party code fed with user data: a panic inside it must cost one
    // row (NULL), not the query.
    let parsed =
        std::panic::catch_unwind(|| phonenumber::parse(region, text).ok()).unwrap_or(None)?;
    phonenumber::is_valid(&parsed).then_some(parsed)
}

/// Writes the E.164 form (`+14155552671`) of a valid number.
pub fn push_e164(number: &PhoneNumber, out: &mut String) {
    let _ = write!(out, "{}", number.format().mode(Mode::E164));
}

fn region_error(name: &str, region: &str) -> String {
    format!(
        "{name}: argument region: unknown region '{region}' (expected an ISO 3166-1 alpha-2 code such as 'US')"
    )
}

/// Planning-time check: a literal region must be known.
fn check_region(name: &str, args: &ReturnFieldArgs) -> Result<()> {
    if let Some(region) = literal_text(name, "region", args, 1)?
        && parse_region(region).is_none()
    {
        return plan_err!("{}", region_error(name, region));
    }
    Ok(())
}

/// Where the region of each row comes from.
enum Region {
    /// No region argument: numbers must be international.
    Absent,
    /// One region for all rows (a constant argument).
    Constant(Id),
    /// A NULL constant: every result is NULL.
    Null,
    /// A region per row; an unknown region gives NULL for that row.
    PerRow,
}

/// Runs `emit` with the parsed number (or `None`) of every row.
fn phone_rows(
    name: &str,
    args: &ScalarFunctionArgs,
    mut emit: impl FnMut(Option<Option<PhoneNumber>>),
) -> Result<bool> {
    expect_args(name, args, &[1, 2])?;
    let region = match args.args.get(1) {
        None => Region::Absent,
        Some(ColumnarValue::Scalar(s)) => match scalar_str(s) {
            Some(None) => Region::Null,
            Some(Some(r)) => match parse_region(r) {
                Some(id) => Region::Constant(id),
                None => return exec_err!("{}", region_error(name, r)),
            },
            None => return exec_err!("{name}: argument region must be text"),
        },
        Some(ColumnarValue::Array(_)) => Region::PerRow,
    };
    let (arrays, all_scalar) = to_arrays(args)?;
    let phones = arrays[0].as_ref();
    match region {
        Region::Absent => for_each_str(phones, |p| {
            emit(p.map(|p| parse_valid_phone(p, None)));
            Ok(())
        })?,
        Region::Constant(id) => for_each_str(phones, |p| {
            emit(p.map(|p| parse_valid_phone(p, Some(id))));
            Ok(())
        })?,
        Region::Null => (0..phones.len()).for_each(|_| emit(None)),
        Region::PerRow => for_each_str2(phones, arrays[1].as_ref(), |p, r| {
            emit(match (p, r) {
                (Some(p), Some(r)) => {
                    Some(parse_region(r).and_then(|id| parse_valid_phone(p, Some(id))))
                }
                _ => None,
            });
            Ok(())
        })?,
    }
    Ok(all_scalar)
}

fn is_valid_phone_kernel(name: &str, args: &ScalarFunctionArgs) -> Result<ColumnarValue> {
    let rows = args.number_rows.max(1);
    let mut out = BooleanBuilder::with_capacity(rows);
    let all_scalar = phone_rows(name, args, |n| out.append_option(n.map(|n| n.is_some())))?;
    finish(Arc::new(out.finish()), all_scalar)
}

fn to_e164_kernel(name: &str, args: &ScalarFunctionArgs) -> Result<ColumnarValue> {
    let mut out: StringBuilder = match args.args.first() {
        Some(ColumnarValue::Array(a)) => string_builder(a.as_ref()),
        _ => StringBuilder::new(),
    };
    let mut scratch = String::with_capacity(16);
    let all_scalar = phone_rows(name, args, |n| match n {
        Some(Some(n)) => {
            scratch.clear();
            push_e164(&n, &mut scratch);
            out.append_value(&scratch);
        }
        _ => out.append_null(),
    })?;
    finish(Arc::new(out.finish()), all_scalar)
}

fn phone_signature() -> Signature {
    Signature::one_of(
        vec![TypeSignature::String(1), TypeSignature::String(2)],
        Volatility::Immutable,
    )
}

/// `is_valid_phone(phone [, region]) -> boolean`: whether `phone` is a valid number of
/// `region` (ISO 3166-1 alpha-2, e.g. `'US'`), or, without a region or when written with a
/// leading `+`, a valid international number. Validity is libphonenumber's: the length and
/// number range are in use in that country. An unknown constant region is a planning error;
/// an unknown region in a column gives NULL for that row.
pub fn is_valid_phone_udf() -> SimpleUdf {
    SimpleUdf::new(
        "is_valid_phone",
        phone_signature(),
        DataType::Boolean,
        is_valid_phone_kernel,
    )
    .with_check(check_region)
}

/// `to_e164(phone [, region]) -> text`: the number in E.164 form (`+14155552671`), the form
/// ad platforms and SMS providers require, or NULL when it is not a valid number of
/// `region` (see `is_valid_phone`).
pub fn to_e164_udf() -> SimpleUdf {
    SimpleUdf::new("to_e164", phone_signature(), DataType::Utf8, to_e164_kernel)
        .with_check(check_region)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e164(p: &str, r: Option<&str>) -> Option<String> {
        let n = parse_valid_phone(p, r.and_then(parse_region))?;
        let mut s = String::new();
        push_e164(&n, &mut s);
        Some(s)
    }

    #[test]
    fn formats_e164() {
        assert_eq!(
            e164("(415) 555-2671", Some("US")).as_deref(),
            Some("+14155552671")
        );
        assert_eq!(
            e164("+44 20 7946 0958", Some("us")).as_deref(),
            Some("+442079460958")
        );
        assert_eq!(
            e164("020 7946 0958", Some("GB")).as_deref(),
            Some("+442079460958")
        );
        assert_eq!(
            e164("+1 415 555 2671", None).as_deref(),
            Some("+14155552671")
        );
        assert_eq!(
            e164("06 12 34 56 78", Some("FR")).as_deref(),
            Some("+33612345678")
        );
    }

    #[test]
    fn rejects_invalid() {
        assert_eq!(e164("555-2671", Some("US")), None);
        assert_eq!(e164("", Some("US")), None);
        assert_eq!(e164("not a phone", Some("US")), None);
        assert_eq!(e164(&"1".repeat(10_000), Some("US")), None);
        assert!(parse_region("XX").is_none());
        assert!(parse_region("USA").is_none());
        assert!(parse_region("de").is_some());
    }
}
