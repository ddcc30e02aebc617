//! PostgreSQL's text input of each fast-pathed type, read straight from the bytes of a field.
//!
//! These are hand-written rather than going through `str::parse` plus Arrow's string casts
//! because they run once per field of every COPY row, the product's loading hot path: they
//! take bytes without building a `String`, accept exactly what PostgreSQL accepts (surrounding
//! whitespace, `t`/`yes`/`on` booleans, numeric rounding to the column's scale), and tell a
//! syntax error from an out-of-range value so each gets PostgreSQL's SQLSTATE.

use datafusion::arrow::datatypes::DataType;

/// Why a field's text is not a value of its column's type. The caller adds the line, the
/// column and the text; [`ValueError::sqlstate`] gives PostgreSQL's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueError {
    /// Not a value of the type at all (22P02).
    Syntax,
    /// An integer outside its type's range (22003).
    IntRange,
    /// A float that overflows or underflows its type (22003).
    FloatRange,
    /// A numeric with more digits before the point than the column allows (22003).
    NumericOverflow,
    /// `NaN` or `Infinity` for a numeric column: Delta decimals cannot hold them (0A000).
    NumericSpecial,
    /// Not a date or timestamp (22007).
    DateTimeSyntax,
    /// A date or time field out of range, such as February 30 (22008).
    DateTimeRange,
    /// Not a one-dimensional array literal (22P02).
    MalformedArray,
}

impl ValueError {
    /// The SQLSTATE PostgreSQL reports for this kind of bad value.
    pub fn sqlstate(self) -> &'static str {
        match self {
            ValueError::Syntax | ValueError::MalformedArray => "22P02",
            ValueError::IntRange | ValueError::FloatRange | ValueError::NumericOverflow => "22003",
            ValueError::NumericSpecial => "0A000",
            ValueError::DateTimeSyntax => "22007",
            ValueError::DateTimeRange => "22008",
        }
    }

    /// PostgreSQL's message for `text` given as a value of type `ty`.
    pub fn message(self, ty: &DataType, text: &str) -> String {
        let name = type_name(ty);
        match self {
            ValueError::Syntax | ValueError::DateTimeSyntax => {
                format!("invalid input syntax for type {name}: \"{text}\"")
            }
            ValueError::IntRange => format!("value \"{text}\" is out of range for type {name}"),
            ValueError::FloatRange => format!("\"{text}\" is out of range for type {name}"),
            ValueError::NumericOverflow => {
                let (p, s) = match ty {
                    DataType::Decimal128(p, s) => (i32::from(*p), i32::from(*s)),
                    _ => (0, 0),
                };
                let bound = if p == s {
                    "1".to_string()
                } else {
                    format!("10^{}", p - s)
                };
                format!(
                    "numeric field overflow: a field with precision {p}, scale {s} must round to an absolute value less than {bound}"
                )
            }
            ValueError::NumericSpecial => format!(
                "\"{text}\" cannot be stored in a column of type {name}: Delta decimals have no NaN or Infinity"
            ),
            ValueError::DateTimeRange => format!("date/time field value out of range: \"{text}\""),
            ValueError::MalformedArray => format!("malformed array literal: \"{text}\""),
        }
    }
}

/// The type name PostgreSQL's input functions print in their errors.
pub fn type_name(ty: &DataType) -> String {
    match ty {
        DataType::Timestamp(_, None) => "timestamp".into(),
        other => crate::wire::types::pg_type_name(other),
    }
}

/// PostgreSQL's `isspace`: the whitespace its input functions skip around a value.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// `s` without leading and trailing whitespace.
pub fn trim(s: &[u8]) -> &[u8] {
    let mut a = 0;
    let mut b = s.len();
    while a < b && is_space(s[a]) {
        a += 1;
    }
    while b > a && is_space(s[b - 1]) {
        b -= 1;
    }
    &s[a..b]
}

/// `int8in`: optional whitespace, an optional sign, decimal digits.
pub fn parse_i64(s: &[u8]) -> Result<i64, ValueError> {
    let t = trim(s);
    let (neg, digits) = match t.first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() {
        return Err(ValueError::Syntax);
    }
    let mut acc: u64 = 0;
    if digits.len() <= 18 {
        // 18 digits cannot overflow a u64, so the common case needs no checked arithmetic.
        for &b in digits {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                return Err(ValueError::Syntax);
            }
            acc = acc * 10 + u64::from(d);
        }
    } else {
        for &b in digits {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                return Err(ValueError::Syntax);
            }
            acc = acc
                .checked_mul(10)
                .and_then(|a| a.checked_add(u64::from(d)))
                .ok_or(ValueError::IntRange)?;
        }
    }
    if neg {
        if acc > i64::MAX as u64 + 1 {
            return Err(ValueError::IntRange);
        }
        Ok((acc as i64).wrapping_neg())
    } else {
        i64::try_from(acc).map_err(|_| ValueError::IntRange)
    }
}

/// `int4in`.
pub fn parse_i32(s: &[u8]) -> Result<i32, ValueError> {
    parse_i64(s).and_then(|v| i32::try_from(v).map_err(|_| ValueError::IntRange))
}

/// `int2in`.
pub fn parse_i16(s: &[u8]) -> Result<i16, ValueError> {
    parse_i64(s).and_then(|v| i16::try_from(v).map_err(|_| ValueError::IntRange))
}

/// `float8in`: `strtod` syntax plus `NaN`, `Infinity` and `inf`; a finite literal that
/// overflows or underflows to zero is out of range.
pub fn parse_f64(s: &[u8]) -> Result<f64, ValueError> {
    let t = trim(s);
    if let Some(v) = simple_f64(t) {
        return Ok(v);
    }
    let text = std::str::from_utf8(t).map_err(|_| ValueError::Syntax)?;
    let v: f64 = text.parse().map_err(|_| ValueError::Syntax)?;
    check_float_range(t, v.is_infinite(), v == 0.0)?;
    Ok(v)
}

/// Powers of ten that are exact in an f64.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// Plain decimals of at most 15 digits (`-12.5`, `3`), the common case, without the
/// general parser: the digits as an integer and the power of ten are both exact in an
/// f64, so one division rounds correctly (Clinger's fast path). `None` for anything else.
fn simple_f64(t: &[u8]) -> Option<f64> {
    let (neg, body) = match t.first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if body.is_empty() || body.len() > 16 {
        return None;
    }
    let mut mantissa: u64 = 0;
    let mut digits = 0;
    let mut frac = None;
    for (i, &b) in body.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                digits += 1;
            }
            b'.' if frac.is_none() => frac = Some(body.len() - i - 1),
            _ => return None,
        }
    }
    if digits == 0 || digits > 15 {
        return None;
    }
    let v = mantissa as f64 / POW10[frac.unwrap_or(0)];
    Some(if neg { -v } else { v })
}

/// `float4in`.
pub fn parse_f32(s: &[u8]) -> Result<f32, ValueError> {
    let t = trim(s);
    let text = std::str::from_utf8(t).map_err(|_| ValueError::Syntax)?;
    let v: f32 = text.parse().map_err(|_| ValueError::Syntax)?;
    check_float_range(t, v.is_infinite(), v == 0.0)?;
    Ok(v)
}

fn check_float_range(t: &[u8], infinite: bool, zero: bool) -> Result<(), ValueError> {
    // A spelled-out infinity ends in a letter; a numeric literal never does.
    if infinite && !t.last().is_some_and(u8::is_ascii_alphabetic) {
        return Err(ValueError::FloatRange);
    }
    if zero {
        let mantissa = t.split(|b| *b == b'e' || *b == b'E').next().unwrap_or(t);
        if mantissa.iter().any(|b| (b'1'..=b'9').contains(b)) {
            return Err(ValueError::FloatRange);
        }
    }
    Ok(())
}

/// `boolin`: `t`, `true`, `yes`, `on`, `1` and their opposites, any case, and unique
/// prefixes of the words.
pub fn parse_bool(s: &[u8]) -> Result<bool, ValueError> {
    let t = trim(s);
    let prefix_of = |word: &[u8]| {
        !t.is_empty() && t.len() <= word.len() && word[..t.len()].eq_ignore_ascii_case(t)
    };
    let v = match t.first().map(u8::to_ascii_lowercase) {
        Some(b't') if prefix_of(b"true") => true,
        Some(b'f') if prefix_of(b"false") => false,
        Some(b'y') if prefix_of(b"yes") => true,
        Some(b'n') if prefix_of(b"no") => false,
        Some(b'o') if t.eq_ignore_ascii_case(b"on") => true,
        Some(b'o') if t.len() >= 2 && prefix_of(b"off") => false,
        Some(b'1') if t.len() == 1 => true,
        Some(b'0') if t.len() == 1 => false,
        _ => return Err(ValueError::Syntax),
    };
    Ok(v)
}

/// `numeric_in` for a `numeric(precision, scale)` column, as the unscaled integer Arrow's
/// Decimal128 stores: digits with an optional point and exponent, rounded half away from
/// zero to `scale` digits, and too many digits before the point is an overflow.
pub fn parse_decimal(s: &[u8], precision: u8, scale: i8) -> Result<i128, ValueError> {
    let t = trim(s);
    let (neg, body) = match t.first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if [&b"nan"[..], b"infinity", b"inf"]
        .iter()
        .any(|w| body.eq_ignore_ascii_case(w))
    {
        return Err(ValueError::NumericSpecial);
    }
    let digits_end = |from: usize| {
        let mut i = from;
        while i < body.len() && body[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let int_end = digits_end(0);
    let int_digits = &body[..int_end];
    let mut i = int_end;
    let mut frac_digits: &[u8] = &[];
    if body.get(i) == Some(&b'.') {
        let end = digits_end(i + 1);
        frac_digits = &body[i + 1..end];
        i = end;
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(ValueError::Syntax);
    }
    let mut exp: i64 = 0;
    if matches!(body.get(i), Some(b'e' | b'E')) {
        i += 1;
        let exp_neg = match body.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let end = digits_end(i);
        if end == i {
            return Err(ValueError::Syntax);
        }
        for &b in &body[i..end] {
            // Saturate: anything this large overflows or rounds to zero anyway.
            exp = (exp * 10 + i64::from(b - b'0')).min(1_000_000);
        }
        if exp_neg {
            exp = -exp;
        }
        i = end;
    }
    if i != body.len() {
        return Err(ValueError::Syntax);
    }
    // The digits D = int ++ frac with the decimal point after D[pt - 1]; the scaled
    // integer is D[..pt + scale], rounded by D[pt + scale].
    let int_len = int_digits.len() as i64;
    let total = int_len + frac_digits.len() as i64;
    let digit = |j: i64| -> i128 {
        let b = if j < 0 || j >= total {
            b'0'
        } else if j < int_len {
            int_digits[j as usize]
        } else {
            frac_digits[(j - int_len) as usize]
        };
        i128::from(b - b'0')
    };
    let mut first = 0;
    while first < total && digit(first) == 0 {
        first += 1;
    }
    if first == total {
        return Ok(0);
    }
    let units = int_len + exp + i64::from(scale);
    let limit = 10i128.pow(u32::from(precision.min(38)));
    let mut acc: i128 = 0;
    let mut j = first;
    while j < units {
        acc = acc
            .checked_mul(10)
            .and_then(|a| a.checked_add(digit(j)))
            .filter(|a| *a < limit)
            .ok_or(ValueError::NumericOverflow)?;
        j += 1;
    }
    if digit(units) >= 5 {
        acc += 1;
        if acc >= limit {
            return Err(ValueError::NumericOverflow);
        }
    }
    Ok(if neg { -acc } else { acc })
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn two_digits(s: &[u8], at: usize) -> Option<u32> {
    let a = s.get(at)?.wrapping_sub(b'0');
    let b = s.get(at + 1)?.wrapping_sub(b'0');
    (a <= 9 && b <= 9).then(|| u32::from(a) * 10 + u32::from(b))
}

/// ISO `YYYY-MM-DD` at the start of `t` as days since the epoch. `None` when `t` does not
/// start with that shape (the caller falls back to the general parser).
fn iso_date(t: &[u8]) -> Option<Result<i64, ValueError>> {
    if t.len() < 10 || t[4] != b'-' || t[7] != b'-' {
        return None;
    }
    let y = i64::from(two_digits(t, 0)? * 100 + two_digits(t, 2)?);
    let m = two_digits(t, 5)?;
    let d = two_digits(t, 8)?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return Some(Err(ValueError::DateTimeRange));
    }
    Some(Ok(days_from_civil(y, m, d)))
}

/// `date_in` for ISO dates: `Some(days)` since the epoch, or `None` for any other spelling,
/// which the caller hands to the general parser.
pub fn fast_date(s: &[u8]) -> Option<Result<i32, ValueError>> {
    let t = trim(s);
    if t.len() != 10 {
        return None;
    }
    Some(iso_date(t)?.and_then(|d| i32::try_from(d).map_err(|_| ValueError::DateTimeRange)))
}

const MICROS_PER_SEC: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SEC;

/// `timestamp_in` / `timestamptz_in` for ISO timestamps (`YYYY-MM-DD[ T]HH:MM[:SS[.frac]]`
/// with an optional `Z`, `UTC` or `±HH[:MM[:SS]]` zone) as microseconds since the epoch in
/// UTC. A zone is applied for `timestamptz` and ignored for `timestamp`, as PostgreSQL does;
/// without one the session zone (UTC) applies. `None` for any other spelling.
pub fn fast_timestamp(s: &[u8], with_zone: bool) -> Option<Result<i64, ValueError>> {
    let t = trim(s);
    let days = match iso_date(t)? {
        Ok(d) => d,
        Err(e) => return Some(Err(e)),
    };
    let mut rest = &t[10..];
    let mut micros = 0i64;
    let mut offset_secs = 0i64;
    if !rest.is_empty() {
        if !matches!(rest[0], b' ' | b'T' | b't') {
            return None;
        }
        rest = &rest[1..];
        let h = two_digits(rest, 0)?;
        if rest.get(2) != Some(&b':') {
            return None;
        }
        let m = two_digits(rest, 3)?;
        rest = &rest[5..];
        let mut sec = 0;
        let mut frac = 0i64;
        if rest.first() == Some(&b':') {
            sec = two_digits(rest, 1)?;
            rest = &rest[3..];
            if rest.first() == Some(&b'.') {
                let mut i = 1;
                let mut scale = 100_000i64;
                while i < rest.len() && rest[i].is_ascii_digit() {
                    let d = i64::from(rest[i] - b'0');
                    if scale > 0 {
                        frac += d * scale;
                    } else if scale == 0 && d >= 5 {
                        frac += 1;
                    }
                    scale = if scale > 0 { scale / 10 } else { -1 };
                    i += 1;
                }
                if i == 1 {
                    return None;
                }
                rest = &rest[i..];
            }
        }
        if h > 24 || m > 59 || sec > 60 || (h == 24 && (m > 0 || sec > 0 || frac > 0)) {
            return Some(Err(ValueError::DateTimeRange));
        }
        micros = (i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(sec)) * MICROS_PER_SEC + frac;
        if rest.first() == Some(&b' ') {
            rest = &rest[1..];
        }
        if !rest.is_empty() {
            offset_secs = match zone(rest)? {
                Ok(o) => o,
                Err(e) => return Some(Err(e)),
            };
        }
    }
    let mut v = days * MICROS_PER_DAY + micros;
    if with_zone {
        v -= offset_secs * MICROS_PER_SEC;
    }
    Some(Ok(v))
}

/// A zone suffix as seconds east of UTC.
fn zone(z: &[u8]) -> Option<Result<i64, ValueError>> {
    if z.eq_ignore_ascii_case(b"z")
        || z.eq_ignore_ascii_case(b"utc")
        || z.eq_ignore_ascii_case(b"gmt")
    {
        return Some(Ok(0));
    }
    let sign = match z.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let z = &z[1..];
    let h = two_digits(z, 0)?;
    let mut rest = &z[2..];
    let part = |rest: &mut &[u8]| -> Option<u32> {
        if rest.is_empty() {
            return Some(0);
        }
        if rest[0] == b':' {
            *rest = &rest[1..];
        }
        let v = two_digits(rest, 0)?;
        *rest = &rest[2..];
        Some(v)
    };
    let m = part(&mut rest)?;
    let s = part(&mut rest)?;
    if !rest.is_empty() {
        return None;
    }
    if h > 15 || m > 59 || s > 59 {
        return Some(Err(ValueError::DateTimeRange));
    }
    Some(Ok(
        sign * (i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s))
    ))
}

/// One element of an array literal.
#[derive(Debug, PartialEq, Eq)]
pub enum Element {
    /// An unquoted `NULL`.
    Null,
    /// A value; its text is in the scratch buffer passed to [`ArrayLiteral::next`].
    Value,
}

/// The elements of a one-dimensional PostgreSQL array literal (`{a,"b c",NULL}`), with
/// `array_in`'s quoting, backslash escapes and whitespace rules.
pub struct ArrayLiteral<'a> {
    s: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> ArrayLiteral<'a> {
    /// Starts reading `s`; fails unless it opens with `{`.
    pub fn new(s: &'a [u8]) -> Result<Self, ValueError> {
        let t = trim(s);
        if t.first() != Some(&b'{') || t.last() != Some(&b'}') {
            return Err(ValueError::MalformedArray);
        }
        let mut a = ArrayLiteral {
            s: &t[..t.len() - 1],
            pos: 1,
            done: false,
        };
        a.skip_space();
        if a.pos == a.s.len() {
            a.done = true;
        }
        Ok(a)
    }

    fn skip_space(&mut self) {
        while self.pos < self.s.len() && is_space(self.s[self.pos]) {
            self.pos += 1;
        }
    }

    /// The next element, its text decoded into `out`; `None` after the last one.
    pub fn next(&mut self, out: &mut Vec<u8>) -> Result<Option<Element>, ValueError> {
        if self.done {
            return Ok(None);
        }
        out.clear();
        self.skip_space();
        let s = self.s;
        let element = if s.get(self.pos) == Some(&b'"') {
            self.pos += 1;
            loop {
                match s.get(self.pos) {
                    None => return Err(ValueError::MalformedArray),
                    Some(b'"') => {
                        self.pos += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let c = *s.get(self.pos + 1).ok_or(ValueError::MalformedArray)?;
                        out.push(c);
                        self.pos += 2;
                    }
                    Some(&c) => {
                        out.push(c);
                        self.pos += 1;
                    }
                }
            }
            self.skip_space();
            Element::Value
        } else {
            // Unquoted: up to the next unescaped comma, trailing unescaped spaces dropped.
            let mut kept = 0;
            let mut escaped = false;
            loop {
                match s.get(self.pos) {
                    None | Some(b',') => break,
                    Some(b'{' | b'}' | b'"') => return Err(ValueError::MalformedArray),
                    Some(b'\\') => {
                        let c = *s.get(self.pos + 1).ok_or(ValueError::MalformedArray)?;
                        out.push(c);
                        kept = out.len();
                        escaped = true;
                        self.pos += 2;
                    }
                    Some(&c) => {
                        out.push(c);
                        if !is_space(c) {
                            kept = out.len();
                        }
                        self.pos += 1;
                    }
                }
            }
            out.truncate(kept);
            if out.is_empty() {
                return Err(ValueError::MalformedArray);
            }
            if !escaped && out.eq_ignore_ascii_case(b"null") {
                Element::Null
            } else {
                Element::Value
            }
        };
        match s.get(self.pos) {
            None => self.done = true,
            Some(b',') => self.pos += 1,
            Some(_) => return Err(ValueError::MalformedArray),
        }
        Ok(Some(element))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_take_whitespace_and_signs_and_know_their_range() {
        assert_eq!(parse_i64(b" 42 "), Ok(42));
        assert_eq!(parse_i64(b"-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775807"), Ok(i64::MAX));
        assert_eq!(parse_i64(b"9223372036854775808"), Err(ValueError::IntRange));
        assert_eq!(parse_i64(b"+7"), Ok(7));
        assert_eq!(parse_i64(b""), Err(ValueError::Syntax));
        assert_eq!(parse_i64(b"-"), Err(ValueError::Syntax));
        assert_eq!(parse_i64(b"1 2"), Err(ValueError::Syntax));
        assert_eq!(parse_i64(b"1.0"), Err(ValueError::Syntax));
        assert_eq!(parse_i32(b"2147483648"), Err(ValueError::IntRange));
        assert_eq!(parse_i32(b"-2147483648"), Ok(i32::MIN));
        assert_eq!(parse_i16(b"32768"), Err(ValueError::IntRange));
    }

    #[test]
    fn floats_accept_special_values_and_reject_overflow() {
        assert_eq!(parse_f64(b"1.5"), Ok(1.5));
        assert_eq!(parse_f64(b" -2e3 "), Ok(-2000.0));
        assert_eq!(parse_f64(b"Infinity"), Ok(f64::INFINITY));
        assert_eq!(parse_f64(b"-inf"), Ok(f64::NEG_INFINITY));
        assert!(parse_f64(b"NaN").is_ok_and(f64::is_nan));
        assert_eq!(parse_f64(b"1e400"), Err(ValueError::FloatRange));
        assert_eq!(parse_f64(b"1e-400"), Err(ValueError::FloatRange));
        assert_eq!(parse_f64(b"0e-400"), Ok(0.0));
        assert_eq!(parse_f64(b"abc"), Err(ValueError::Syntax));
        assert_eq!(parse_f32(b"1e39"), Err(ValueError::FloatRange));
        assert_eq!(parse_f32(b"0.25"), Ok(0.25));
    }

    #[test]
    fn the_short_float_path_rounds_like_the_general_parser() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for i in 0..200_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let digits = (seed % 15 + 1) as usize;
            let mantissa = seed % 10u64.pow(digits as u32);
            let mut s = format!("{mantissa:0digits$}");
            let point = (seed >> 40) as usize % (digits + 1);
            if point < digits {
                s.insert(point, '.');
            }
            if i % 3 == 0 {
                s.insert(0, '-');
            }
            let want: f64 = s.parse().unwrap();
            assert_eq!(
                simple_f64(s.as_bytes()).map(f64::to_bits),
                Some(want.to_bits()),
                "{s}"
            );
        }
        assert_eq!(simple_f64(b"1e5"), None);
        assert_eq!(simple_f64(b"1234567890123456"), None);
        assert_eq!(simple_f64(b"."), None);
        assert_eq!(simple_f64(b"1.2.3"), None);
        assert_eq!(
            simple_f64(b"-0").map(f64::to_bits),
            Some((-0.0f64).to_bits())
        );
    }

    #[test]
    fn booleans_take_postgres_spellings() {
        for t in [
            &b"t"[..],
            b"TRUE",
            b"tr",
            b"yes",
            b"y",
            b"on",
            b"1",
            b" true ",
        ] {
            assert_eq!(parse_bool(t), Ok(true), "{t:?}");
        }
        for f in [&b"f"[..], b"false", b"no", b"n", b"off", b"of", b"0"] {
            assert_eq!(parse_bool(f), Ok(false), "{f:?}");
        }
        for bad in [&b"o"[..], b"truee", b"2", b"", b"onn"] {
            assert_eq!(parse_bool(bad), Err(ValueError::Syntax), "{bad:?}");
        }
    }

    #[test]
    fn decimals_round_half_away_from_zero_and_check_precision() {
        assert_eq!(parse_decimal(b"12.345", 10, 2), Ok(1235));
        assert_eq!(parse_decimal(b"-12.345", 10, 2), Ok(-1235));
        assert_eq!(parse_decimal(b"12.344", 10, 2), Ok(1234));
        assert_eq!(parse_decimal(b"0.005", 10, 2), Ok(1));
        assert_eq!(parse_decimal(b".5", 10, 0), Ok(1));
        assert_eq!(parse_decimal(b"5.", 10, 0), Ok(5));
        assert_eq!(parse_decimal(b"1.5e2", 10, 0), Ok(150));
        assert_eq!(parse_decimal(b"15E-1", 10, 1), Ok(15));
        assert_eq!(
            parse_decimal(b"000000000000000000000000000000000000000000001", 5, 0),
            Ok(1)
        );
        assert_eq!(parse_decimal(b"0e999999", 5, 0), Ok(0));
        assert_eq!(
            parse_decimal(b"999.995", 5, 2),
            Err(ValueError::NumericOverflow)
        );
        assert_eq!(parse_decimal(b"999.994", 5, 2), Ok(99999));
        assert_eq!(
            parse_decimal(b"1e40", 38, 0),
            Err(ValueError::NumericOverflow)
        );
        assert_eq!(
            parse_decimal(b"99999999999999999999999999999999999999", 38, 0),
            Ok(99_999_999_999_999_999_999_999_999_999_999_999_999)
        );
        assert_eq!(
            parse_decimal(b"NaN", 10, 2),
            Err(ValueError::NumericSpecial)
        );
        for bad in [&b"."[..], b"1e", b"abc", b"1.2.3", b"--1", b""] {
            assert_eq!(
                parse_decimal(bad, 10, 2),
                Err(ValueError::Syntax),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn iso_dates_and_timestamps() {
        assert_eq!(fast_date(b"1970-01-01"), Some(Ok(0)));
        assert_eq!(fast_date(b"2024-03-01"), Some(Ok(19783)));
        assert_eq!(fast_date(b"2024-02-29"), Some(Ok(19782)));
        assert_eq!(
            fast_date(b"2023-02-29"),
            Some(Err(ValueError::DateTimeRange))
        );
        assert_eq!(fast_date(b"1969-12-31"), Some(Ok(-1)));
        assert_eq!(fast_date(b"Jan 1 2024"), None);
        let day = 86_400_000_000i64;
        assert_eq!(fast_timestamp(b"1970-01-02", false), Some(Ok(day)));
        assert_eq!(
            fast_timestamp(b"1970-01-02 00:00:01.5", false),
            Some(Ok(day + 1_500_000))
        );
        assert_eq!(
            fast_timestamp(b"1970-01-01T00:00:00.0000005", false),
            Some(Ok(1))
        );
        assert_eq!(
            fast_timestamp(b"1970-01-02 02:00:00+02", true),
            Some(Ok(day))
        );
        assert_eq!(
            fast_timestamp(b"1970-01-02 02:00:00+02", false),
            Some(Ok(day + 7_200_000_000))
        );
        assert_eq!(
            fast_timestamp(b"1970-01-01 22:30:00-01:30", true),
            Some(Ok(day))
        );
        assert_eq!(fast_timestamp(b"1970-01-02 00:00:00Z", true), Some(Ok(day)));
        assert_eq!(fast_timestamp(b"1970-01-02 00:00 UTC", true), Some(Ok(day)));
        assert_eq!(fast_timestamp(b"1970-01-01 24:00:00", false), Some(Ok(day)));
        assert_eq!(
            fast_timestamp(b"1970-01-01 25:00:00", false),
            Some(Err(ValueError::DateTimeRange))
        );
        assert_eq!(
            fast_timestamp(b"1970-01-01 00:00:00 Europe/Paris", true),
            None
        );
        assert_eq!(fast_timestamp(b"yesterday", true), None);
    }

    fn elements(s: &str) -> Result<Vec<Option<String>>, ValueError> {
        let mut a = ArrayLiteral::new(s.as_bytes())?;
        let mut out = Vec::new();
        let mut v = Vec::new();
        while let Some(e) = a.next(&mut out)? {
            v.push((e == Element::Value).then(|| String::from_utf8_lossy(&out).to_string()));
        }
        Ok(v)
    }

    #[test]
    fn array_literals_quote_escape_and_null() {
        assert_eq!(elements("{}"), Ok(vec![]));
        assert_eq!(elements(" { } "), Ok(vec![]));
        assert_eq!(
            elements(r#"{a, "b, c" ,NULL,"NULL",x\,y, d e }"#),
            Ok(vec![
                Some("a".into()),
                Some("b, c".into()),
                None,
                Some("NULL".into()),
                Some("x,y".into()),
                Some("d e".into()),
            ])
        );
        assert_eq!(elements(r#"{"a\"b"}"#), Ok(vec![Some("a\"b".into())]));
        assert_eq!(elements("{1,2,3}").map(|v| v.len()), Ok(3));
        for bad in ["1,2", "{1,,2}", "{{1,2},{3,4}}", "{\"a}", "{a\"b}", "{1,2"] {
            assert_eq!(elements(bad), Err(ValueError::MalformedArray), "{bad}");
        }
    }
}
