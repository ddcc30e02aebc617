//! Masking for display: emails, phone numbers, IP addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::validate::util::push_fmt;

/// Writes the masked form of an email (`f***@example.com`: first character of the local
/// part, three stars whatever its length, the domain as written) into `out`.
///
/// Masking is for showing data to people (support screens, BI) who need to recognise an
/// address without holding it, so it is lenient about syntax: any trimmed text with a
/// non-empty local part and domain around its last `@` and no whitespace is masked. Text
/// that is not an address returns false (NULL): echoing it could leak whatever it is.
pub fn mask_email_into(s: &str, out: &mut String) -> bool {
    let s = s.trim();
    let Some(at) = s.rfind('@') else {
        return false;
    };
    let (local, domain) = (&s[..at], &s[at + 1..]);
    let Some(first) = local.chars().next() else {
        return false;
    };
    if domain.is_empty() || s.chars().any(char::is_whitespace) {
        return false;
    }
    out.push(first);
    out.push_str("***@");
    out.push_str(domain);
    true
}

/// Characters a written phone number may contain besides digits.
fn phone_punctuation(c: char) -> bool {
    matches!(c, ' ' | '+' | '-' | '.' | '(' | ')' | '/')
}

/// Writes the masked form of a phone number into `out`: every digit but the last four
/// becomes `*`, punctuation and spacing stay (`+1 (415) 555-2671` → `+* (***) ***-2671`),
/// so the shape stays recognisable. Text with fewer than 7 digits, or with anything other
/// than digits and phone punctuation (`+ - . ( ) /`, spaces), is not treated as a phone
/// number and gives false (NULL), so free text is never echoed.
pub fn mask_phone_into(s: &str, out: &mut String) -> bool {
    let s = s.trim();
    let mut digits = 0usize;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits += 1;
        } else if !phone_punctuation(c) {
            return false;
        }
    }
    if digits < 7 {
        return false;
    }
    let mut seen = 0usize;
    for c in s.chars() {
        if c.is_ascii_digit() {
            seen += 1;
            out.push(if seen + 4 > digits { c } else { '*' });
        } else {
            out.push(c);
        }
    }
    true
}

/// Writes the anonymised form of an IP address into `out`: IPv4 with its last octet zeroed
/// (`203.0.113.57` → `203.0.113.0`), IPv6 with its last 80 bits zeroed, keeping the /48
/// routing prefix (`2001:db8:85a3:8d3:1319:8a2e:370:7348` → `2001:db8:85a3::`), which is
/// what Google Analytics' IP anonymisation does and what EU regulators accept as no longer
/// identifying a household. IPv4-mapped IPv6 addresses follow the IPv4 rule. False for text
/// that is not an address.
pub fn anonymize_ip_into(s: &str, out: &mut String) -> bool {
    match s.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => push_fmt(out, format_args!("{}", zero_last_octet(v4))),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => push_fmt(out, format_args!("::ffff:{}", zero_last_octet(v4))),
            None => {
                let bits = u128::from(v6) & !((1u128 << 80) - 1);
                push_fmt(out, format_args!("{}", Ipv6Addr::from(bits)));
            }
        },
        Err(_) => return false,
    }
    true
}

fn zero_last_octet(v4: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, _] = v4.octets();
    Ipv4Addr::new(a, b, c, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: fn(&str, &mut String) -> bool, s: &str) -> Option<String> {
        let mut out = String::new();
        f(s, &mut out).then_some(out)
    }

    #[test]
    fn masks_emails() {
        assert_eq!(
            run(mask_email_into, "foo@example.com").as_deref(),
            Some("f***@example.com")
        );
        assert_eq!(
            run(mask_email_into, " élodie@exemple.fr ").as_deref(),
            Some("é***@exemple.fr")
        );
        assert_eq!(run(mask_email_into, "a@b").as_deref(), Some("a***@b"));
        assert_eq!(run(mask_email_into, "@example.com"), None);
        assert_eq!(run(mask_email_into, "foo@"), None);
        assert_eq!(run(mask_email_into, "call me"), None);
        assert_eq!(run(mask_email_into, "a b@example.com"), None);
    }

    #[test]
    fn masks_phones() {
        assert_eq!(
            run(mask_phone_into, "+1 (415) 555-2671").as_deref(),
            Some("+* (***) ***-2671")
        );
        assert_eq!(
            run(mask_phone_into, "4155552671").as_deref(),
            Some("******2671")
        );
        assert_eq!(run(mask_phone_into, "555-12"), None);
        assert_eq!(run(mask_phone_into, "call 4155552671"), None);
    }

    #[test]
    fn anonymizes_ips() {
        assert_eq!(
            run(anonymize_ip_into, "203.0.113.57").as_deref(),
            Some("203.0.113.0")
        );
        assert_eq!(
            run(anonymize_ip_into, "2001:db8:85a3:8d3:1319:8a2e:370:7348").as_deref(),
            Some("2001:db8:85a3::")
        );
        assert_eq!(
            run(anonymize_ip_into, "::ffff:192.0.2.128").as_deref(),
            Some("::ffff:192.0.2.0")
        );
        assert_eq!(run(anonymize_ip_into, "::1").as_deref(), Some("::"));
        assert_eq!(run(anonymize_ip_into, "nope"), None);
    }
}
