//! URLs and IP addresses.

use std::net::IpAddr;

/// Whether `s` is an absolute `http` or `https` URL with a host, as browsers parse it (the
/// WHATWG URL standard, crate `url`; internationalised host names are accepted).
///
/// Two deliberate restrictions on top of the parser: only web schemes count (event data
/// URLs are page URLs and referrers; `javascript:` or `data:` values there are junk or
/// attacks), and the text must not contain whitespace or control characters, which the
/// WHATWG parser silently strips but which mean the value was not a clean URL.
pub fn is_valid_url(s: &str) -> bool {
    if s.is_empty() || s.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return false;
    }
    match url::Url::parse(s) {
        Ok(u) => {
            matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
        }
        Err(_) => false,
    }
}

/// Whether `s` is an IPv4 address in dotted-quad form (no leading zeros, as the standard
/// library and PostgreSQL's `inet` read it) or an IPv6 address in any RFC 4291 text form.
/// Prefix lengths (`10.0.0.0/8`) and zone ids (`fe80::1%eth0`) are not addresses.
pub fn is_valid_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(is_valid_url("https://example.com"));
        assert!(is_valid_url("http://example.com:8080/a/b?x=1#f"));
        assert!(is_valid_url("https://bücher.de/straße"));
        assert!(is_valid_url("https://[::1]/"));
        assert!(!is_valid_url("example.com"));
        assert!(!is_valid_url("/relative/path"));
        assert!(!is_valid_url("ftp://example.com/file"));
        assert!(!is_valid_url("javascript:alert(1)"));
        assert!(!is_valid_url("https://exa mple.com"));
        assert!(!is_valid_url(" https://example.com"));
        assert!(!is_valid_url("http://"));
        assert!(!is_valid_url(""));
    }

    #[test]
    fn ips() {
        assert!(is_valid_ip("192.168.1.1"));
        assert!(is_valid_ip("::1"));
        assert!(is_valid_ip("2001:db8::8a2e:370:7334"));
        assert!(is_valid_ip("::ffff:10.0.0.1"));
        assert!(!is_valid_ip("256.1.1.1"));
        assert!(!is_valid_ip("1.2.3"));
        assert!(!is_valid_ip("01.2.3.4"));
        assert!(!is_valid_ip("10.0.0.0/8"));
        assert!(!is_valid_ip(""));
    }
}
