//! DNS lookups through the system resolver: reverse lookup with forward confirmation, forward
//! lookups (`forwhn:`) and DNS blocklist queries (`dnsbl:`).
//!
//! Runs in the resolver process (unprivileged, not chrooted, because getaddrinfo/NSS read
//! `/etc/nsswitch.conf`, `/etc/hosts` and `/etc/resolv.conf`). The bytes handled are DNS answers
//! as decoded by the C library; the names it hands back are untrusted (a PTR record says
//! whatever its owner likes) and become facts only after passing the `HostName` shape check.
//! Every call here blocks for as long as the C library decides; the scheduler runs them on the
//! pool and answers at the request deadline regardless.
//!
//! Hostname statuses (the four words `hnstatus:` matches):
//! - `unknown`: no PTR name (NXDOMAIN, no data, timeout or any failure), or a PTR name that is
//!   not a valid hostname (it could not be carried as a fact anyway);
//! - `noforward`: a PTR name that has no addresses of the peer's family, or that is itself an
//!   IP address written out;
//! - `addrmismatch`: the PTR name resolves, but not to the peer's address;
//! - `good`: the PTR name resolves to a list that includes the peer's address.

use std::net::{IpAddr, SocketAddr};

use dns_lookup::{getaddrinfo, getnameinfo, AddrInfoHints, LookupError, LookupErrorKind};
use privsep::proto::{HnStatus, HostFacts, HostName};

/// A lookup's value and whether it may be cached. Definite answers (found, or the DNS said the
/// name does not exist) are cacheable; temporary failures (timeouts, SERVFAIL, local errors) are
/// not, so the next connection asks again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Looked<T> {
    pub value: T,
    pub cacheable: bool,
}

/// Most addresses we keep from one answer; a DNSBL or a hostname with more is unusual and the
/// extra ones cannot change a `/IP` match in practice.
pub const MAX_ADDRS: usize = 64;

/// True if the C library's error means "the DNS said no" rather than "we could not find out".
fn definite(e: &LookupError) -> bool {
    matches!(e.kind(), LookupErrorKind::NoName | LookupErrorKind::NoData)
}

/// getaddrinfo for `name` restricted to `family` (`libc::AF_UNSPEC`, `AF_INET`, `AF_INET6`);
/// addresses canonical (v4-mapped shown as IPv4), deduplicated, in the library's order.
fn addresses(name: &str, family: i32) -> Looked<Vec<IpAddr>> {
    let hints = AddrInfoHints {
        flags: 0,
        address: family,
        // One entry per address instead of one per socket type.
        socktype: libc::SOCK_STREAM,
        protocol: 0,
    };
    match getaddrinfo(Some(name), None, Some(hints)) {
        Ok(iter) => {
            let mut out: Vec<IpAddr> = Vec::new();
            for ai in iter.flatten() {
                let ip = ai.sockaddr.ip().to_canonical();
                if !out.contains(&ip) && out.len() < MAX_ADDRS {
                    out.push(ip);
                }
            }
            Looked {
                value: out,
                cacheable: true,
            }
        }
        Err(e) => Looked {
            value: Vec::new(),
            cacheable: definite(&e),
        },
    }
}

/// The peer's PTR name, unverified: `Ok(Some)` found, `Ok(None)` definitely none,
/// `Err(())` temporary failure.
fn ptr_name(ip: IpAddr) -> Result<Option<String>, ()> {
    let sa = SocketAddr::new(ip, 0);
    match getnameinfo(&sa, libc::NI_NAMEREQD) {
        Ok((name, _service)) => Ok(Some(name)),
        Err(e) if definite(&e) => Ok(None),
        Err(_) => Err(()),
    }
}

/// Reverse lookup of `ip` with forward confirmation, as `KNOWN`/`UNKNOWN`/`PARANOID` need.
///
/// `claimed` is called as soon as the PTR name is known, with the answer to use if the forward
/// lookup does not finish in time (`noforward`: the name did not resolve by the deadline).
pub fn host_info(ip: IpAddr, claimed: &mut dyn FnMut(&HostFacts)) -> Looked<HostFacts> {
    let ip = ip.to_canonical();
    let unknown = HostFacts {
        status: HnStatus::Unknown,
        claimed: None,
    };
    let name = match ptr_name(ip) {
        Ok(Some(name)) => name,
        Ok(None) => {
            return Looked {
                value: unknown,
                cacheable: true,
            }
        }
        Err(()) => {
            return Looked {
                value: unknown,
                cacheable: false,
            }
        }
    };
    let Ok(host) = HostName::try_from(name) else {
        // Not a hostname we can carry (bad characters, over-long, an IPv6 literal): as far as
        // the rules can tell there is no name.
        return Looked {
            value: unknown,
            cacheable: true,
        };
    };
    let fallback = HostFacts {
        status: HnStatus::NoForward,
        claimed: Some(host.clone()),
    };
    // A PTR record naming an address (tcpwrappers' classic trick) must not "confirm" itself
    // through getaddrinfo's numeric parsing.
    if host.as_str().parse::<IpAddr>().is_ok() {
        return Looked {
            value: fallback,
            cacheable: true,
        };
    }
    claimed(&fallback);
    let family = match ip {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    };
    let fwd = addresses(host.as_str(), family);
    let status = if fwd.value.is_empty() {
        HnStatus::NoForward
    } else if fwd.value.contains(&ip) {
        HnStatus::Good
    } else {
        HnStatus::AddrMismatch
    };
    Looked {
        value: HostFacts {
            status,
            claimed: Some(host),
        },
        cacheable: fwd.cacheable,
    }
}

/// Forward lookup of `name` (`forwhn:`): every address, IPv4 and IPv6.
pub fn forward(name: &HostName) -> Looked<Vec<IpAddr>> {
    addresses(name.as_str(), libc::AF_UNSPEC)
}

/// The DNSBL query name for `ip` under `zone`, absolute (trailing dot) so that no resolv.conf
/// search domain is ever appended to it. IPv4: reversed octets. IPv6: the 32 nibbles of the
/// address, least significant first, as in ip6.arpa (v4-mapped addresses are queried as IPv4).
pub fn dnsbl_name(ip: IpAddr, zone: &HostName) -> String {
    let mut out = String::with_capacity(64 + zone.as_str().len() + 2);
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            out.push_str(&format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0]));
        }
        IpAddr::V6(v6) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for (i, b) in v6.octets().iter().rev().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push(char::from(HEX[usize::from(b & 0xf)]));
                out.push('.');
                out.push(char::from(HEX[usize::from(b >> 4)]));
            }
        }
    }
    out.push('.');
    out.push_str(zone.as_str());
    out.push('.');
    out
}

/// DNSBL lookup: the A records of the query name (empty = not listed). Blocklists answer with
/// IPv4 addresses (127.0.0.x) for IPv4 and IPv6 listings alike.
pub fn dnsbl(ip: IpAddr, zone: &HostName) -> Looked<Vec<IpAddr>> {
    addresses(&dnsbl_name(ip, zone), libc::AF_INET)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(z: &str) -> HostName {
        HostName::try_from(z.to_owned()).unwrap_or_else(|e| panic!("{z}: {e}"))
    }

    #[test]
    fn dnsbl_names() {
        let rows: &[(&str, &str, &str, &str)] = &[
            ("v4", "192.0.2.99", "bl.example", "99.2.0.192.bl.example."),
            (
                "v4 loopback test point",
                "127.0.0.2",
                "zen.spamhaus.org",
                "2.0.0.127.zen.spamhaus.org.",
            ),
            ("v4 zeros", "10.0.0.0", "bl.example", "0.0.0.10.bl.example."),
            (
                "v4-mapped queried as v4",
                "::ffff:198.51.100.7",
                "bl.example",
                "7.100.51.198.bl.example.",
            ),
            (
                "v4-mapped in hex is still an IPv4 peer",
                "::ffff:7f00:2",
                "bl.example",
                "2.0.0.127.bl.example.",
            ),
            (
                "v6 documentation address",
                "2001:db8::1",
                "bl.example",
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example.",
            ),
            (
                "v6 all nibbles",
                "2001:db8:1234:5678:9abc:def0:fedc:ba98",
                "v6.bl.example",
                "8.9.a.b.c.d.e.f.0.f.e.d.c.b.a.9.8.7.6.5.4.3.2.1.8.b.d.0.1.0.0.2.v6.bl.example.",
            ),
            (
                "zone case folded by HostName",
                "192.0.2.1",
                "BL.Example.",
                "1.2.0.192.bl.example.",
            ),
        ];
        for (label, ip, z, want) in rows {
            let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(dnsbl_name(ip, &zone(z)), *want, "{label}");
        }
    }

    #[test]
    fn v6_name_has_32_nibbles() {
        let ip: IpAddr = "fe80::abcd".parse().unwrap_or_else(|e| panic!("{e}"));
        let name = dnsbl_name(ip, &zone("z"));
        let labels: Vec<&str> = name.trim_end_matches('.').split('.').collect();
        assert_eq!(labels.len(), 33);
        assert!(labels[..32].iter().all(|l| l.len() == 1));
        assert_eq!(&labels[..4], &["d", "c", "b", "a"]);
    }
}
