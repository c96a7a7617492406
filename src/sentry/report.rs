//! The meaning check of a sentry's `ProbeReport` against the settings it was given: the one
//! function the parent calls before it believes a report (STYLE.md §2.5), and the one the
//! sentry applies to its own reports before sending them (so a correct sentry never sends
//! what the parent would refuse).
//!
//! Runs in the parent (every field came from the sentry, which got it from a packet anybody
//! could have forged) and in the sentry. Pure: no I/O, no clock.

use std::net::IpAddr;

use privsep::proto::{ProbeKind, ProbeReport, SentryMode, SentrySettings, Watch};

/// The mode a probe of `kind` to `port` is reported under with `settings`, or None if the port
/// is not watched for that protocol. A port listed for stcp/sudp is `Stcp`/`Sudp`; one covered
/// by `below N` is `Atcp`/`Audp`.
pub fn mode_for(settings: &SentrySettings, kind: ProbeKind, port: u16) -> Option<SentryMode> {
    let (watch, listed, below) = match kind {
        ProbeKind::Udp => (settings.udp.as_ref()?, SentryMode::Sudp, SentryMode::Audp),
        ProbeKind::Syn | ProbeKind::Fin | ProbeKind::Null | ProbeKind::Xmas => {
            (settings.tcp.as_ref()?, SentryMode::Stcp, SentryMode::Atcp)
        }
    };
    if !watch.covers(port) {
        return None;
    }
    Some(match watch {
        Watch::Ports(_) => listed,
        Watch::Below { .. } => below,
    })
}

/// Is `ip` an address another host could really send from? Not unspecified, loopback,
/// multicast, IPv4 broadcast, an IPv4-mapped or IPv4-compatible IPv6 address (a packet on the
/// wire never carries one as its source), nor 0.0.0.0/8.
pub fn is_unicast_peer(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.is_broadcast()
                || a.octets()[0] == 0)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            let embeds_v4 = s[..5] == [0; 5] && (s[5] == 0 || s[5] == 0xffff);
            !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || embeds_v4)
        }
    }
}

/// Refuses a report the parent must not act on. `Err` names the check that failed.
pub fn check_report(settings: &SentrySettings, r: &ProbeReport) -> Result<(), &'static str> {
    if r.port == 0 {
        return Err("port 0");
    }
    if !is_unicast_peer(r.src) {
        return Err("source is not a unicast address of another host");
    }
    if !is_unicast_peer(r.dst) {
        return Err("destination is not a unicast address");
    }
    if r.src.is_ipv4() != r.dst.is_ipv4() {
        return Err("source and destination of different families");
    }
    if r.src == r.dst {
        return Err("source is the destination");
    }
    let udp_kind = r.kind == ProbeKind::Udp;
    // The stealth modes only: `tcp` and `udp` are the trap ports', which the parent sees itself.
    if !matches!(
        r.mode,
        SentryMode::Stcp | SentryMode::Sudp | SentryMode::Atcp | SentryMode::Audp
    ) {
        return Err("not a stealth mode");
    }
    let udp_mode = matches!(r.mode, SentryMode::Sudp | SentryMode::Audp);
    if udp_kind != udp_mode {
        return Err("probe kind of the other protocol than its mode");
    }
    match mode_for(settings, r.kind, r.port) {
        None => Err("port not watched"),
        Some(m) if m != r.mode => Err("mode is not the one watching this port"),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use privsep::proto::PortSet;

    fn settings() -> SentrySettings {
        SentrySettings {
            tcp: Some(Watch::Below {
                below: 1024,
                except: PortSet::new(vec![113]).unwrap(),
            }),
            udp: Some(Watch::Ports(PortSet::new(vec![69, 161]).unwrap())),
        }
    }

    fn report(src: &str, port: u16, mode: SentryMode, kind: ProbeKind) -> ProbeReport {
        let src: IpAddr = src.parse().unwrap();
        let dst: IpAddr = if src.is_ipv4() {
            "10.99.0.1".parse().unwrap()
        } else {
            "fd00:99::1".parse().unwrap()
        };
        ProbeReport {
            src,
            dst,
            port,
            mode,
            kind,
        }
    }

    #[test]
    fn check_report_rows() {
        use ProbeKind::*;
        use SentryMode::{Atcp, Audp, Sudp};
        let s = settings();
        let rows: [(&str, ProbeReport, Result<(), &str>); 16] = [
            ("atcp syn", report("10.99.0.2", 22, Atcp, Syn), Ok(())),
            ("atcp xmas v6", report("fd00:99::2", 1, Atcp, Xmas), Ok(())),
            ("sudp", report("10.99.0.2", 161, Sudp, Udp), Ok(())),
            ("port 0", report("10.99.0.2", 0, Atcp, Syn), Err("port 0")),
            (
                "tcp port not below",
                report("10.99.0.2", 1024, Atcp, Fin),
                Err("port not watched"),
            ),
            (
                "tcp port excepted",
                report("10.99.0.2", 113, Atcp, Null),
                Err("port not watched"),
            ),
            (
                "udp port not listed",
                report("10.99.0.2", 53, Sudp, Udp),
                Err("port not watched"),
            ),
            (
                "wrong mode for a listed port",
                report("10.99.0.2", 69, Audp, Udp),
                Err("mode is not the one watching this port"),
            ),
            (
                "tcp kind in a udp mode",
                report("10.99.0.2", 69, Sudp, Syn),
                Err("probe kind of the other protocol than its mode"),
            ),
            (
                "udp kind in a tcp mode",
                report("10.99.0.2", 22, Atcp, Udp),
                Err("probe kind of the other protocol than its mode"),
            ),
            (
                "unspecified source",
                report("0.0.0.0", 22, Atcp, Syn),
                Err("source is not a unicast address of another host"),
            ),
            (
                "broadcast source",
                report("255.255.255.255", 22, Atcp, Syn),
                Err("source is not a unicast address of another host"),
            ),
            (
                "multicast source",
                report("ff02::1", 22, Atcp, Syn),
                Err("source is not a unicast address of another host"),
            ),
            (
                "loopback source",
                report("127.0.0.1", 22, Atcp, Syn),
                Err("source is not a unicast address of another host"),
            ),
            (
                "v4-mapped source",
                report("::ffff:10.99.0.2", 22, Atcp, Syn),
                Err("source is not a unicast address of another host"),
            ),
            (
                "source is the destination",
                report("10.99.0.1", 22, Atcp, Syn),
                Err("source is the destination"),
            ),
        ];
        for (label, r, want) in rows {
            assert_eq!(check_report(&s, &r), want, "{label}");
        }
        let mut mixed = report("10.99.0.2", 22, Atcp, Syn);
        mixed.dst = "fd00:99::1".parse().unwrap();
        assert!(check_report(&s, &mixed).is_err());
        let mut mcast = report("10.99.0.2", 161, Sudp, Udp);
        mcast.dst = "224.0.0.251".parse().unwrap();
        assert_eq!(
            check_report(&s, &mcast),
            Err("destination is not a unicast address")
        );
        let none = SentrySettings {
            tcp: None,
            udp: None,
        };
        assert_eq!(
            check_report(&none, &report("10.99.0.2", 22, Atcp, Syn)),
            Err("port not watched")
        );
    }
}
