//! End-to-end DNS tests of the resolver's lookup functions against a real dnsmasq, through the
//! system resolver (getnameinfo/getaddrinfo, nsswitch, /etc/hosts), each test in its own
//! private mount namespace (see `dnsenv`).
//!
//! Runs as root (mount namespace, port 53); without root every test prints a skip line and
//! passes. The DNS answers come from the dnsmasq each test starts on 127.55.N.1; no query can
//! reach the machine's real resolver.

mod dnsenv;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dnsenv::{isolate, ns_addr, Nameserver, Records};
use portnanny::resolver::dns;
use privsep::proto::{HnStatus, HostFacts, HostName};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn name(s: &str) -> HostName {
    HostName::try_from(s.to_owned()).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn host(s: &str) -> dns::Looked<HostFacts> {
    let mut seen = None;
    let r = dns::host_info(ip(s), &mut |h| seen = Some(h.clone()));
    if let Some(partial) = seen {
        // The partial answer offered before the forward lookup names the same PTR name.
        assert_eq!(partial.status, HnStatus::NoForward);
        assert_eq!(partial.claimed, r.value.claimed);
    }
    r
}

#[test]
fn host_statuses() {
    let records = Records::new()
        .host("good.test", "127.54.0.10")
        .ptr("127.54.0.12", "ghost.test")
        .ptr("127.54.0.13", "liar.test")
        .host("liar.test", "127.54.0.99")
        .ptr("127.54.0.14", "MiXeD.Case.test")
        .a("mixed.case.test", "127.54.0.14")
        .ptr("127.54.0.15", "127.54.0.15")
        .ptr("127.54.0.16", "v6only.test")
        .host("v6only.test", "fd00:54::16")
        .etc_hosts("127.54.0.20", "from-hosts-file.test");
    let Some(env) = isolate("host_statuses", ns_addr(1), Nameserver::Dnsmasq(records)) else {
        return;
    };
    let rows: &[(&str, &str, HnStatus, Option<&str>, bool)] = &[
        (
            "good",
            "127.54.0.10",
            HnStatus::Good,
            Some("good.test"),
            true,
        ),
        (
            "unknown (NXDOMAIN PTR)",
            "127.54.0.11",
            HnStatus::Unknown,
            None,
            true,
        ),
        (
            "noforward",
            "127.54.0.12",
            HnStatus::NoForward,
            Some("ghost.test"),
            true,
        ),
        (
            "addrmismatch",
            "127.54.0.13",
            HnStatus::AddrMismatch,
            Some("liar.test"),
            true,
        ),
        (
            "case folded",
            "127.54.0.14",
            HnStatus::Good,
            Some("mixed.case.test"),
            true,
        ),
        (
            "PTR naming an address",
            "127.54.0.15",
            HnStatus::NoForward,
            Some("127.54.0.15"),
            true,
        ),
        (
            "name has only AAAA",
            "127.54.0.16",
            HnStatus::NoForward,
            Some("v6only.test"),
            true,
        ),
        (
            "/etc/hosts honoured",
            "127.54.0.20",
            HnStatus::Good,
            Some("from-hosts-file.test"),
            true,
        ),
    ];
    for (label, addr, status, claimed, cacheable) in rows {
        let r = host(addr);
        assert_eq!(r.value.status, *status, "{label}\n{}", env.dnsmasq_log());
        assert_eq!(
            r.value.claimed.as_ref().map(HostName::as_str),
            *claimed,
            "{label}"
        );
        assert_eq!(r.cacheable, *cacheable, "{label}");
    }
}

#[test]
fn ipv6_reverse_and_dnsbl() {
    let records = Records::new()
        .host("v6host.test", "fd00:54::10")
        .ptr("fd00:54::11", "v6liar.test")
        .host("v6liar.test", "fd00:54::99")
        // 2001:db8::1 listed in bl6.test as 127.0.0.2 (nibble name built by hand here).
        .a(
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl6.test",
            "127.0.0.2",
        );
    let Some(env) = isolate(
        "ipv6_reverse_and_dnsbl",
        ns_addr(2),
        Nameserver::Dnsmasq(records),
    ) else {
        return;
    };
    let r = host("fd00:54::10");
    assert_eq!(r.value.status, HnStatus::Good, "{}", env.dnsmasq_log());
    assert_eq!(
        r.value.claimed.as_ref().map(HostName::as_str),
        Some("v6host.test")
    );
    let r = host("fd00:54::11");
    assert_eq!(r.value.status, HnStatus::AddrMismatch);
    let r = host("fd00:54::12");
    assert_eq!(r.value.status, HnStatus::Unknown);

    let listed = dns::dnsbl(ip("2001:db8::1"), &name("bl6.test"));
    assert_eq!(listed.value, vec![ip("127.0.0.2")], "{}", env.dnsmasq_log());
    let not = dns::dnsbl(ip("2001:db8::2"), &name("bl6.test"));
    assert!(not.value.is_empty());
    assert!(not.cacheable, "NXDOMAIN is a definite 'not listed'");
}

#[test]
fn dnsbl_return_codes() {
    let records = Records::new()
        .a("30.0.54.127.bl.test", "127.0.0.2")
        .a("31.0.54.127.bl.test", "127.0.0.4")
        .a("32.0.54.127.bl.test", "127.0.0.2")
        .a("32.0.54.127.bl.test", "127.0.0.4")
        .a("30.0.54.127.other.test", "127.0.0.3");
    let Some(env) = isolate(
        "dnsbl_return_codes",
        ns_addr(3),
        Nameserver::Dnsmasq(records),
    ) else {
        return;
    };
    let bl = name("bl.test");
    let rows: &[(&str, &str, &[&str])] = &[
        ("listed .2", "127.54.0.30", &["127.0.0.2"]),
        ("listed .4", "127.54.0.31", &["127.0.0.4"]),
        ("listed twice", "127.54.0.32", &["127.0.0.2", "127.0.0.4"]),
        ("not listed", "127.54.0.33", &[]),
    ];
    for (label, addr, want) in rows {
        let r = dns::dnsbl(ip(addr), &bl);
        let mut got = r.value.clone();
        got.sort();
        let want: Vec<IpAddr> = want.iter().map(|s| ip(s)).collect();
        assert_eq!(got, want, "{label}\n{}", env.dnsmasq_log());
        assert!(r.cacheable, "{label}");
    }
    // Another zone is another question.
    assert_eq!(
        dns::dnsbl(ip("127.54.0.30"), &name("other.test")).value,
        vec![ip("127.0.0.3")]
    );
    // The zone appears in the query only after the reversed address, as an absolute name.
    let log = env.dnsmasq_log();
    assert!(log.contains("query[A] 33.0.54.127.bl.test from"), "{log}");
    assert!(
        !log.contains("bl.test.test"),
        "no search domain appended: {log}"
    );
}

#[test]
fn forward_lookups() {
    let records = Records::new()
        .a("multi.test", "127.54.0.40")
        .a("multi.test", "127.54.0.41")
        .host("dual.test", "127.54.0.42")
        .host("dual.test", "fd00:54::42");
    let Some(env) = isolate("forward_lookups", ns_addr(4), Nameserver::Dnsmasq(records)) else {
        return;
    };
    let mut got = dns::forward(&name("multi.test")).value;
    got.sort();
    assert_eq!(
        got,
        vec![ip("127.54.0.40"), ip("127.54.0.41")],
        "{}",
        env.dnsmasq_log()
    );
    let got = dns::forward(&name("dual.test")).value;
    assert!(
        got.contains(&ip("127.54.0.42")) && got.contains(&ip("fd00:54::42")),
        "{got:?}"
    );
    let none = dns::forward(&name("nonexistent.test"));
    assert!(none.value.is_empty());
    assert!(none.cacheable);
}

#[test]
fn unreachable_nameserver_is_a_temporary_failure() {
    // resolv.conf names 127.55.5.1, where nothing listens: every lookup fails fast (ICMP
    // port unreachable on loopback) and must not be cached.
    let Some(_env) = isolate(
        "unreachable_nameserver_is_a_temporary_failure",
        ns_addr(5),
        Nameserver::External(Records::new()),
    ) else {
        return;
    };
    let t = Instant::now();
    let r = host("127.54.0.50");
    assert_eq!(r.value.status, HnStatus::Unknown);
    assert!(!r.cacheable, "a failed lookup is not a negative answer");
    let r = dns::dnsbl(ip("127.54.0.50"), &name("bl.test"));
    assert!(r.value.is_empty());
    assert!(!r.cacheable);
    assert!(t.elapsed() < Duration::from_secs(10));
}
