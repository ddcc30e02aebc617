//! The SSRF guard: an enrichment connection's URL is chosen by whoever can run
//! `CREATE CONNECTION`, and its requests leave from the server, inside the company network.
//! Without a guard, a connection to `http://169.254.169.254/` reads the cloud instance's
//! credentials, and one to `http://10.0.0.5:6379/` talks to an internal service. So every
//! address the host resolves to is checked, and refused when it is not a public unicast
//! address, unless the connection was explicitly allowed (`allow_private`), as the tests'
//! local servers are.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::EnrichError;

/// Why an address is not public, or `None` when it is.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public_v4(v4);
            }
            non_public_v6(v6)
        }
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() || ip.is_multicast() {
        Some("broadcast or multicast")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        // 100.64.0.0/10, carrier-grade NAT: inside a provider's network.
        Some("shared (carrier-grade NAT)")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignment")
    } else if o[0] >= 240 {
        Some("reserved")
    } else {
        None
    }
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some("unique local (private)")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else {
        None
    }
}

/// Resolves `host:port` and checks every address; returns the addresses to connect to.
pub async fn vet(
    connection: &str,
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, EnrichError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| EnrichError::Resolve {
                connection: connection.to_string(),
                host: host.to_string(),
                message: e.to_string(),
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(EnrichError::Resolve {
            connection: connection.to_string(),
            host: host.to_string(),
            message: "no addresses".into(),
        });
    }
    if !allow_private {
        for a in &addrs {
            if let Some(kind) = non_public(a.ip()) {
                return Err(EnrichError::PrivateAddress {
                    connection: connection.to_string(),
                    host: host.to_string(),
                    address: a.ip(),
                    kind,
                });
            }
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        let cases = [
            ("127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("0.0.0.0", Some("unspecified")),
            ("100.64.0.1", Some("shared (carrier-grade NAT)")),
            ("8.8.8.8", None),
            ("100.128.0.1", None),
            ("::1", Some("loopback")),
            ("fe80::1", Some("link-local")),
            ("fd00::1", Some("unique local (private)")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:10.0.0.1", Some("private")),
            ("2606:4700:4700::1111", None),
        ];
        for (ip, want) in cases {
            assert_eq!(non_public(ip.parse().expect("ip")), want, "{ip}");
        }
    }

    #[tokio::test]
    async fn refuses_loopback_unless_allowed() {
        let refused = vet("c", "127.0.0.1", 80, false).await;
        assert!(
            matches!(
                refused,
                Err(EnrichError::PrivateAddress {
                    kind: "loopback",
                    ..
                })
            ),
            "{refused:?}"
        );
        let resolved = vet("c", "localhost", 80, false).await;
        assert!(
            matches!(resolved, Err(EnrichError::PrivateAddress { .. })),
            "{resolved:?}"
        );
        let allowed = vet("c", "127.0.0.1", 8080, true).await.expect("allowed");
        assert_eq!(allowed, vec!["127.0.0.1:8080".parse().expect("addr")]);
    }
}
