//! Addresses that are never blocked (`neverblock ADDRSPEC… | auto`): blocking one of them would
//! cut the host off from itself, its router or its resolver, and a scan is easy to forge from
//! exactly those addresses. `auto` means every local address, loopback, the default gateways
//! (IPv4 and IPv6) and the nameservers of resolv.conf, read when the set is built.
//!
//! Runs in the parent, at start and on reload. Reads only the kernel's own tables
//! (getifaddrs, /proc/net/route, /proc/net/ipv6_route) and /etc/resolv.conf.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policy::addr::{AddrRange, AddrSet};

/// The addresses `auto` stands for, with where each came from (for the log line).
pub fn auto() -> Vec<(IpAddr, &'static str)> {
    let mut out: Vec<(IpAddr, &'static str)> = vec![
        (IpAddr::V4(Ipv4Addr::LOCALHOST), "loopback"),
        (IpAddr::V6(Ipv6Addr::LOCALHOST), "loopback"),
    ];
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sa) = a.address else { continue };
            if let Some(v4) = sa.as_sockaddr_in() {
                out.push((IpAddr::V4(v4.ip()), "local"));
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                out.push((IpAddr::V6(v6.ip()), "local"));
            }
        }
    }
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    out.extend(gateways_v4(&read("/proc/net/route")).map(|g| (g, "gateway")));
    out.extend(gateways_v6(&read("/proc/net/ipv6_route")).map(|g| (g, "gateway")));
    out.extend(nameservers(&read("/etc/resolv.conf")).map(|n| (n, "nameserver")));
    out.sort();
    out.dedup_by_key(|(a, _)| *a);
    out
}

/// The set to check block requests against: `specs` plus, with `auto`, [`auto`]'s addresses.
pub fn build(specs: &AddrSet, with_auto: bool) -> AddrSet {
    let mut set = specs.clone();
    if with_auto {
        for (a, _) in auto() {
            set.insert(single(a));
        }
    }
    set
}

fn single(a: IpAddr) -> AddrRange {
    match a {
        IpAddr::V4(v4) => {
            let n = u32::from(v4);
            AddrRange::V4(n, n)
        }
        IpAddr::V6(v6) => {
            let n = u128::from(v6);
            AddrRange::V6(n, n)
        }
    }
}

/// Gateways of /proc/net/route: fields are hex in host (little-endian) byte order.
fn gateways_v4(text: &str) -> impl Iterator<Item = IpAddr> + '_ {
    text.lines().skip(1).filter_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let gw = u32::from_str_radix(f.get(2)?, 16).ok()?;
        let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
        // RTF_GATEWAY (0x2): the route goes through this address.
        (flags & 0x2 != 0 && gw != 0).then(|| IpAddr::V4(Ipv4Addr::from(u32::from_be(gw))))
    })
}

/// Next hops of /proc/net/ipv6_route (32 hex digits, network order).
fn gateways_v6(text: &str) -> impl Iterator<Item = IpAddr> + '_ {
    text.lines().filter_map(|l| {
        let hop = l.split_whitespace().nth(4)?;
        let n = u128::from_str_radix(hop, 16).ok()?;
        (n != 0).then(|| IpAddr::V6(Ipv6Addr::from(n)))
    })
}

/// `nameserver ADDR` lines of resolv.conf.
fn nameservers(text: &str) -> impl Iterator<Item = IpAddr> + '_ {
    text.lines().filter_map(|l| {
        let mut w = l.split_whitespace();
        (w.next()? == "nameserver").then_some(())?;
        // A scoped IPv6 nameserver (fe80::1%eth0) is the address before the %.
        w.next()?.split('%').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_and_nameservers_from_kernel_and_resolver_tables() {
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n\
                     eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        let v4: Vec<IpAddr> = gateways_v4(route).collect();
        assert_eq!(v4, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        let v6route = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 \
                       00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n\
                       00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                       fd000000000000000000000000000001 00000400 00000003 00000000 00000003 eth0\n";
        let v6: Vec<IpAddr> = gateways_v6(v6route).collect();
        assert_eq!(v6, vec!["fd00::1".parse::<IpAddr>().unwrap()]);
        let resolv = "# x\nsearch example.org\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n\
                      nameserver bogus\n";
        let ns: Vec<IpAddr> = nameservers(resolv).collect();
        assert_eq!(
            ns,
            vec![
                "192.0.2.53".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn auto_covers_loopback_and_this_hosts_addresses() {
        let set = build(&AddrSet::new(), true);
        assert!(set.contains("127.0.0.1".parse().unwrap()));
        assert!(set.contains("::1".parse().unwrap()));
        let specs = AddrSet::from_ranges([policy::addr::parse_addrspec("203.0.113.0/24").unwrap()]);
        let none = build(&specs, false);
        assert!(none.contains("203.0.113.9".parse().unwrap()));
        assert!(!none.contains("127.0.0.1".parse().unwrap()));
    }
}
