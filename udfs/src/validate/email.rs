//! Email addresses: validation, normalisation, domain extraction and the disposable-domain
//! list.
//!
//! The syntax check is written here rather than taken from a crate because it runs on every
//! row of every event table and must be both fast (a byte-table scan, no regex, no
//! allocation for ASCII addresses) and explicit about its rules, which are the practical
//! subset of RFC 5321/5322 and RFC 6531 (internationalised addresses) that mail providers
//! accept for mailboxes:
//!
//! - exactly one unquoted `@` (quoted local parts such as `"a b"@x.com` and IP-literal
//!   domains such as `a@[10.0.0.1]` are rejected: no consumer mailbox uses them, and they are
//!   a favourite of injection payloads);
//! - the local part is a dot-atom of at most 64 bytes: letters, digits,
//!   ``!#$%&'*+/=?^_`{|}~-``, and any non-ASCII character except whitespace and control
//!   characters (RFC 6531), with no leading, trailing or doubled dot;
//! - the domain has at least two labels (`a@localhost` is rejected), each 1-63 characters of
//!   letters, digits and inner hyphens; a top-level label of at least two characters that is
//!   not all digits. Internationalised domains (non-ASCII or `xn--` labels) must convert
//!   under UTS 46 strict rules (crate `idna`), and are checked in their ASCII form;
//! - at most 254 bytes in all; no surrounding whitespace (use `normalize_email` to trim).

use std::collections::HashSet;
use std::sync::LazyLock;

/// Whether `b` may appear in an unquoted local part (RFC 5322 `atext`, plus `.`).
const fn local_byte_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'/'
                | b'='
                | b'?'
                | b'^'
                | b'_'
                | b'`'
                | b'{'
                | b'|'
                | b'}'
                | b'~'
                | b'-'
                | b'.'
        )
}

/// Lookup table for [`local_byte_ok`], so the scan is one load per byte.
static LOCAL_OK: [bool; 128] = {
    let mut t = [false; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = local_byte_ok(i as u8);
        i += 1;
    }
    t
};

/// Splits an address at its last `@` into local part and domain.
pub fn split_email(s: &str) -> Option<(&str, &str)> {
    let at = s.rfind('@')?;
    Some((&s[..at], &s[at + 1..]))
}

fn local_part_ok(local: &str) -> bool {
    let b = local.as_bytes();
    if b.is_empty() || b.len() > 64 || b[0] == b'.' || b[b.len() - 1] == b'.' {
        return false;
    }
    let mut prev_dot = false;
    let mut ascii = true;
    for &c in b {
        if c >= 0x80 {
            ascii = false;
            prev_dot = false;
            continue;
        }
        if !LOCAL_OK[c as usize] {
            return false;
        }
        let dot = c == b'.';
        if dot && prev_dot {
            return false;
        }
        prev_dot = dot;
    }
    // Non-ASCII characters are allowed (RFC 6531) except whitespace and controls.
    ascii
        || local
            .chars()
            .all(|c| c.is_ascii() || !(c.is_whitespace() || c.is_control()))
}

/// Checks an ASCII domain name under the rules in the module documentation.
fn ascii_domain_ok(d: &[u8]) -> bool {
    if d.is_empty() || d.len() > 253 {
        return false;
    }
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for label in d.split(|&c| c == b'.') {
        let n = label.len();
        if n == 0
            || n > 63
            || label[0] == b'-'
            || label[n - 1] == b'-'
            || !label
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        {
            return false;
        }
        labels += 1;
        last = label;
    }
    labels >= 2 && last.len() >= 2 && !last.iter().all(u8::is_ascii_digit)
}

/// Whether `domain` (ASCII or internationalised) is an acceptable mail domain.
pub fn domain_ok(domain: &str) -> bool {
    if domain.is_ascii() && !has_ace_label(domain) {
        return ascii_domain_ok(domain.as_bytes());
    }
    // Internationalised: UTS 46 with STD3 rules and DNS lengths, then the ASCII rules.
    match idna::domain_to_ascii_strict(domain) {
        Ok(ascii) => ascii_domain_ok(ascii.as_bytes()),
        Err(_) => false,
    }
}

/// Whether `domain` has an ASCII-compatible-encoding (`xn--`) label, which must be valid
/// punycode.
fn has_ace_label(domain: &str) -> bool {
    domain
        .split('.')
        .any(|l| l.len() >= 4 && l[..4].eq_ignore_ascii_case("xn--"))
}

/// Whether `s` is a syntactically valid email address (see the module documentation for the
/// exact rules). Used by `is_valid_email`, and by the other email functions to decide
/// whether a value is an address at all.
pub fn is_valid_email(s: &str) -> bool {
    if s.len() > 254 {
        return false;
    }
    let Some((local, domain)) = split_email(s) else {
        return false;
    };
    local_part_ok(local) && domain_ok(domain)
}

/// Writes the normalised form of `s` into `out` and returns true, or returns false when the
/// trimmed value is not a valid address.
///
/// Normalisation trims surrounding whitespace and lowercases the whole address (local part
/// included: every large provider treats it case-insensitively, and case differences are
/// the most common reason the same person appears twice). Internationalised domains are
/// written in their Unicode form after UTS 46 mapping, so `bücher.de` and `xn--bcher-kva.de`
/// normalise alike. Provider-specific rewriting (Gmail ignores dots and `+tags`) is
/// deliberately not applied: it is only correct for some providers and would merge distinct
/// people elsewhere; `hash_email(email, 'google')` applies Google's documented dot rule.
pub fn normalize_email_into(s: &str, out: &mut String) -> bool {
    let s = s.trim();
    if !is_valid_email(s) {
        return false;
    }
    let Some((local, domain)) = split_email(s) else {
        return false;
    };
    if local.is_ascii() {
        let start = out.len();
        out.push_str(local);
        out[start..].make_ascii_lowercase();
    } else {
        out.push_str(&local.to_lowercase());
    }
    out.push('@');
    push_normalized_domain(domain, out);
    true
}

/// Appends the normalised (lowercase; Unicode form for IDNs) domain.
fn push_normalized_domain(domain: &str, out: &mut String) {
    if domain.is_ascii() && !has_ace_label(domain) {
        let start = out.len();
        out.push_str(domain);
        out[start..].make_ascii_lowercase();
    } else {
        let (unicode, _) = idna::domain_to_unicode(domain);
        out.push_str(&unicode);
    }
}

/// Writes the normalised domain of the address `s` into `out`, or returns false when `s`
/// (trimmed) is not a valid address.
pub fn email_domain_into(s: &str, out: &mut String) -> bool {
    let s = s.trim();
    if !is_valid_email(s) {
        return false;
    }
    match split_email(s) {
        Some((_, domain)) => {
            push_normalized_domain(domain, out);
            true
        }
        None => false,
    }
}

/// The disposable-domain blocklist of the `disposable-email-domains` project, shipped in
/// `udfs/data/` (see `udfs/data/README.md` for its version and how to refresh it).
static DISPOSABLE_LIST: &str = include_str!("../../data/disposable_email_blocklist.conf");

/// The blocklist as a set, built on first use.
static DISPOSABLE: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    DISPOSABLE_LIST
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

/// Whether a normalised (lowercase) domain or any of its parent domains is on the
/// disposable list: `x.mailinator.com` is as disposable as `mailinator.com`. The top-level
/// label alone is never looked up.
pub fn is_disposable_domain(domain: &str) -> bool {
    let set = &*DISPOSABLE;
    let mut d = domain;
    loop {
        if set.contains(d) {
            return true;
        }
        match d.find('.') {
            Some(i) if d[i + 1..].contains('.') => d = &d[i + 1..],
            _ => return false,
        }
    }
}

/// Whether the address `s` uses a disposable domain; `None` when `s` is not a valid address
/// (the answer is unknown, not "no").
pub fn is_disposable_email(s: &str, scratch: &mut String) -> Option<bool> {
    scratch.clear();
    if !email_domain_into(s, scratch) {
        return None;
    }
    // The list is in ASCII (punycode) form.
    if scratch.is_ascii() {
        Some(is_disposable_domain(scratch))
    } else {
        let ascii = idna::domain_to_ascii(scratch).ok()?;
        Some(is_disposable_domain(&ascii))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_addresses() {
        for ok in [
            "a@b.co",
            "first.last+tag@example.com",
            "o'brien@example.ie",
            "x_y-z@sub.example-site.org",
            "josé@example.com",
            "用户@例子.广告",
            "me@bücher.de",
            "me@xn--bcher-kva.de",
            "UPPER@EXAMPLE.COM",
        ] {
            assert!(is_valid_email(ok), "{ok}");
        }
    }

    #[test]
    fn invalid_addresses() {
        for bad in [
            "",
            "@",
            "bob@",
            "@example.com",
            "n/a",
            "a@localhost",
            "a@b.c",
            "a@1.2.3.4",
            "a@[1.2.3.4]",
            ".a@example.com",
            "a.@example.com",
            "a..b@example.com",
            "a b@example.com",
            " a@example.com",
            "a@example.com ",
            "a@-example.com",
            "a@example-.com",
            "a@exa_mple.com",
            "a@example..com",
            "\"quoted\"@example.com",
            "a@b@example.com",
            "a@xn--zz.com",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(!is_valid_email(&long_local));
        let long = format!("a@{}.com", "b".repeat(260));
        assert!(!is_valid_email(&long));
    }

    #[test]
    fn normalises() {
        let mut s = String::new();
        assert!(normalize_email_into("  First.Last@Example.COM\t", &mut s));
        assert_eq!(s, "first.last@example.com");
        s.clear();
        assert!(normalize_email_into("José@Bücher.DE", &mut s));
        assert_eq!(s, "josé@bücher.de");
        s.clear();
        assert!(normalize_email_into("me@xn--bcher-kva.de", &mut s));
        assert_eq!(s, "me@bücher.de");
        s.clear();
        assert!(!normalize_email_into("n/a", &mut s));
    }

    #[test]
    fn disposable() {
        let mut s = String::new();
        assert_eq!(is_disposable_email("x@mailinator.com", &mut s), Some(true));
        assert_eq!(
            is_disposable_email("x@Sub.Mailinator.com", &mut s),
            Some(true)
        );
        assert_eq!(is_disposable_email("x@gmail.com", &mut s), Some(false));
        assert_eq!(is_disposable_email("nope", &mut s), None);
        assert!(DISPOSABLE.len() > 1000);
    }
}
