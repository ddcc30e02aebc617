//! `redact_pii(text)`: replaces personal data found in free text with placeholders.
//!
//! Detection is candidate patterns (crate `regex`, linear time whatever the input) followed
//! by the checks that make a candidate real, in this order, each pass working on the output
//! of the previous one:
//!
//! 1. emails → `[EMAIL]` (local part, `@`, a dotted domain with an alphabetic top label);
//! 2. IBANs → `[IBAN]`: two capital letters, two check digits, 11-30 letters or digits,
//!    written solid or in groups of four, whose ISO 13616 mod-97 check passes;
//! 3. card numbers → `[CARD]`: 13-19 digits, optionally in groups separated by single
//!    spaces or dashes, that pass the Luhn check;
//! 4. IP addresses → `[IP]`: dotted-quad IPv4 and IPv6 text that parses as an address;
//! 5. phone numbers → `[PHONE]`: digit runs with phone punctuation holding 10-15 digits, or
//!    8-15 after a leading `+`, that do not read as a date (`2024-07-01`, `01.07.2024`).
//!
//! The checks are written here (Luhn and mod-97 are a few lines each) because no
//! maintained crate does "find and validate in free text"; the phone rule is a heuristic by
//! nature (without a region, any long digit run could be a phone number) and errs on the
//! side of redacting, as a redaction function should.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use regex::{Captures, Regex};

/// Compiles one of the fixed patterns below; they are constants checked by the unit tests,
/// so failure is a programming error.
fn pattern(re: &str) -> Regex {
    Regex::new(re).unwrap_or_else(|e| panic!("redact_pii pattern {re}: {e}"))
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    pattern(
        r"[\p{L}\p{N}.!#$%&'*+/=?^_`{|}~-]+@(?:[\p{L}\p{N}](?:[\p{L}\p{N}-]{0,61}[\p{L}\p{N}])?\.)+\p{L}[\p{L}\p{N}-]*\p{L}",
    )
});

static IBAN: LazyLock<Regex> = LazyLock::new(|| {
    pattern(r"\b[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)\b")
});

static CARD: LazyLock<Regex> = LazyLock::new(|| pattern(r"\b[0-9](?:[ -]?[0-9]){12,18}\b"));

static IPV4: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"\b[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\b"));

static IPV6: LazyLock<Regex> = LazyLock::new(|| {
    pattern(r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{1,4})?")
});

static PHONE: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"(?:\+|\(|\b)[0-9][0-9 ().\-]{5,}[0-9]\b"));

static DATE_LIKE: LazyLock<Regex> = LazyLock::new(|| {
    pattern(r"^(?:[0-9]{4}[-./][0-9]{1,2}[-./][0-9]{1,2}|[0-9]{1,2}[-./][0-9]{1,2}[-./][0-9]{2,4})")
});

/// The Luhn checksum over the digits of `s` (other characters ignored).
pub fn luhn_ok(s: &str) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for b in s.bytes().rev().filter(u8::is_ascii_digit) {
        let mut d = u32::from(b - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    sum.is_multiple_of(10)
}

/// The ISO 13616 IBAN check: move the first four characters to the end, read letters as
/// 10-35, and the number mod 97 must be 1. Spaces are ignored; the length must be 15-34.
pub fn iban_ok(s: &str) -> bool {
    let chars: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&chars.len()) {
        return false;
    }
    let mut rem = 0u32;
    for &c in chars[4..].iter().chain(&chars[..4]) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            b'a'..=b'z' => u32::from(c - b'a') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// Whether a phone candidate has a phone's digit count and does not read as a date.
fn phone_ok(s: &str) -> bool {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    let international = s.starts_with('+');
    let range = if international { 8..=15 } else { 10..=15 };
    range.contains(&digits) && !DATE_LIKE.is_match(s.trim_start_matches(['+', '(']))
}

/// Replaces the matches of `re` in `text` that pass `ok` with `label`; borrowed when
/// nothing matched.
fn replace<'a>(text: Cow<'a, str>, re: &Regex, ok: fn(&str) -> bool, label: &str) -> Cow<'a, str> {
    let replaced = match re.replace_all(&text, |c: &Captures| {
        let m = &c[0];
        if ok(m) {
            label.to_owned()
        } else {
            m.to_owned()
        }
    }) {
        Cow::Borrowed(_) => None,
        Cow::Owned(s) => Some(s),
    };
    match replaced {
        Some(s) => Cow::Owned(s),
        None => text,
    }
}

/// The text with emails, IBANs, card numbers, IP addresses and phone numbers replaced by
/// `[EMAIL]`, `[IBAN]`, `[CARD]`, `[IP]` and `[PHONE]` (see the module documentation).
pub fn redact_pii(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let has_at = bytes.contains(&b'@');
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    let has_colon = bytes.contains(&b':');
    let mut out = Cow::Borrowed(text);
    if has_at {
        out = replace(out, &EMAIL, |_| true, "[EMAIL]");
    }
    if digits >= 4 {
        out = replace(out, &IBAN, iban_ok, "[IBAN]");
    }
    if digits >= 13 {
        out = replace(out, &CARD, luhn_ok, "[CARD]");
    }
    if digits >= 4 {
        out = replace(out, &IPV4, |s| s.parse::<Ipv4Addr>().is_ok(), "[IP]");
    }
    if has_colon {
        out = replace(
            out,
            &IPV6,
            |s| s.matches(':').count() >= 2 && s.parse::<Ipv6Addr>().is_ok(),
            "[IP]",
        );
    }
    if digits >= 8 {
        out = replace(out, &PHONE, phone_ok, "[PHONE]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums() {
        assert!(luhn_ok("4111 1111 1111 1111"));
        assert!(luhn_ok("5500-0000-0000-0004"));
        assert!(!luhn_ok("4111 1111 1111 1112"));
        assert!(iban_ok("DE89 3704 0044 0532 0130 00"));
        assert!(iban_ok("GB82WEST12345698765432"));
        assert!(!iban_ok("GB82WEST12345698765433"));
    }

    #[test]
    fn redacts() {
        let cases = [
            ("mail me at jane.doe@example.com!", "mail me at [EMAIL]!"),
            ("José: josé@bücher.de", "José: [EMAIL]"),
            (
                "card 4111 1111 1111 1111 exp 12/27",
                "card [CARD] exp 12/27",
            ),
            (
                "card 4111 1111 1111 1112 exp",
                "card 4111 1111 1111 1112 exp",
            ),
            ("IBAN DE89 3704 0044 0532 0130 00 EUR", "IBAN [IBAN] EUR"),
            ("iban GB82WEST12345698765432.", "iban [IBAN]."),
            ("from 203.0.113.57 and 2001:db8::1", "from [IP] and [IP]"),
            ("call +1 (415) 555-2671 now", "call [PHONE] now"),
            ("call (415) 555-2671", "call [PHONE]"),
            ("ring 020 7946 0958", "ring [PHONE]"),
            (
                "on 2024-07-01 12:30:45 order 42",
                "on 2024-07-01 12:30:45 order 42",
            ),
            ("version 1.2.3 build 77", "version 1.2.3 build 77"),
            ("ip 999.1.1.1", "ip 999.1.1.1"),
            ("mac 00:1A:2B:3C:4D:5E", "mac 00:1A:2B:3C:4D:5E"),
            ("nothing here", "nothing here"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(redact_pii(input), want, "{input}");
        }
    }

    #[test]
    fn huge_input_is_linear() {
        let text = "a1 ".repeat(200_000) + "x@example.com";
        assert!(redact_pii(&text).ends_with("[EMAIL]"));
    }
}
