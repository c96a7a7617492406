//! nanny.conf's sentry directives (issue 10): every directive, its defaults, Display, and
//! every error as a golden `file:line:col` string.

use std::net::IpAddr;

use policy::conf::parse_conf;
use policy::facts::SentryMode;
use policy::sentry::{
    parse_ipfile, parse_ports, BlockIncrement, PortRange, Proto, StealthPorts, DEFAULT_BLOCKBUDGET,
};

mod conf_common;
use conf_common::{errors, ok, BASE};

fn r(lo: u16, hi: u16) -> PortRange {
    PortRange { lo, hi }
}

#[test]
fn defaults_watch_nothing() {
    let s = ok(BASE).sentry;
    assert!(s.traps.is_empty() && s.stealth.is_empty());
    assert!(!s.watches_anything());
    assert_eq!(s.blockfile, None);
    assert_eq!(s.historyfile, None);
    assert!(s.blockcmds.is_empty() && s.unblockcmds.is_empty());
    assert_eq!(s.hostsdeny, None);
    assert_eq!(s.neverblock, None);
    assert_eq!(s.blockzone, None);
    assert_eq!(s.blockbudget, DEFAULT_BLOCKBUDGET);
    assert_eq!(s.blockincrement, None);
    assert!(!s.blockkills);
}

#[test]
fn every_directive() {
    let text = format!(
        "{BASE}\
trap tcp 1,7,9,11-15,31337
trap tcp 8080@::1
trap udp 1,7@127.0.0.1
stealth tcp 2,16-20
stealth udp below 1024 except 137,138
stealth tcp below 1024
blockfile /var/lib/nanny/blocked
historyfile /var/log/nanny/history
blockcmd /sbin/route add -host %(ip)s reject
blockcmd /usr/sbin/nft add element inet f blocked {{ %(ip)s timeout %(seconds)ds }}
unblockcmd /sbin/route del -host %(ip)s reject
hostsdeny /etc/hosts.deny
neverblock auto 192.0.2.0/24
neverblock 10. ::1
blockzone /var/lib/rbldnsd/blocked blocked.example.net
blockbudget 0
blockincrement 2 30d
blockkills on
"
    );
    let s = ok(&text).sentry;
    assert!(s.watches_anything());
    assert_eq!(s.traps.len(), 3);
    assert_eq!(s.traps[0].proto, Proto::Tcp);
    assert_eq!(
        s.traps[0].ports,
        vec![r(1, 1), r(7, 7), r(9, 9), r(11, 15), r(31337, 31337)]
    );
    assert_eq!(s.traps[0].addr, None);
    assert_eq!(s.traps[0].mode(), SentryMode::Tcp);
    assert_eq!(s.traps[1].addr, "::1".parse::<IpAddr>().ok());
    assert_eq!(s.traps[2].proto, Proto::Udp);
    assert_eq!(s.traps[2].mode(), SentryMode::Udp);
    assert_eq!(s.traps[2].addr, "127.0.0.1".parse::<IpAddr>().ok());
    let modes: Vec<SentryMode> = s.stealth.iter().map(|x| x.mode()).collect();
    assert_eq!(
        modes,
        vec![SentryMode::Stcp, SentryMode::Audp, SentryMode::Atcp]
    );
    assert_eq!(
        s.stealth[1].ports,
        StealthPorts::Below {
            below: 1024,
            except: vec![r(137, 137), r(138, 138)]
        }
    );
    assert!(s.stealth[1].watches(1023) && !s.stealth[1].watches(1024));
    assert!(!s.stealth[1].watches(137) && !s.stealth[1].watches(0));
    assert!(s.stealth[0].watches(17) && !s.stealth[0].watches(3));
    assert_eq!(s.blockfile.as_deref(), Some("/var/lib/nanny/blocked"));
    assert_eq!(s.historyfile.as_deref(), Some("/var/log/nanny/history"));
    assert_eq!(
        s.blockcmds,
        vec![
            "/sbin/route add -host %(ip)s reject",
            "/usr/sbin/nft add element inet f blocked { %(ip)s timeout %(seconds)ds }"
        ]
    );
    assert_eq!(s.unblockcmds, vec!["/sbin/route del -host %(ip)s reject"]);
    assert_eq!(s.hostsdeny.as_deref(), Some("/etc/hosts.deny"));
    let nb = s.neverblock.as_ref().expect("neverblock");
    assert!(nb.auto);
    assert_eq!(nb.specs, vec!["192.0.2.0/24", "10.", "::1"]);
    for (a, want) in [
        ("192.0.2.77", true),
        ("10.9.8.7", true),
        ("::1", true),
        ("192.0.3.1", false),
    ] {
        assert_eq!(nb.set.contains(a.parse().unwrap()), want, "{a}");
    }
    let z = s.blockzone.as_ref().expect("blockzone");
    assert_eq!(z.file, "/var/lib/rbldnsd/blocked");
    assert_eq!(z.zone.as_deref(), Some("blocked.example.net"));
    assert_eq!(s.blockbudget, 0);
    assert_eq!(
        s.blockincrement,
        Some(BlockIncrement {
            factor: 2,
            max_secs: 30 * 86_400
        })
    );
    assert!(s.blockkills);

    // Display writes every setting back, and it parses to the same value.
    let c = ok(&text);
    let printed = c.to_string();
    assert_eq!(ok(&printed), c, "{printed}");
}

/// The ranges a list parses to, or the byte range at fault and the message.
type PortsWant = Result<&'static [(u16, u16)], (std::ops::Range<usize>, &'static str)>;

#[test]
fn port_lists() {
    let rows: &[(&str, PortsWant)] = &[
        ("1", Ok(&[(1, 1)])),
        ("1,7,9,11-15,31337", Ok(&[(1, 1), (7, 7), (9, 9), (11, 15), (31337, 31337)])),
        ("65535", Ok(&[(65535, 65535)])),
        ("5-5", Ok(&[(5, 5)])),
        ("0", Err((0..1, "'0': port 0 cannot be watched; ports are 1 to 65535"))),
        ("1,0-3", Err((2..5, "'0-3': port 0 cannot be watched; ports are 1 to 65535"))),
        ("15-11", Err((0..5, "'15-11': a range goes from the lower port to the higher one (11-15)"))),
        ("1,,2", Err((2..2, "an empty port in the list: ports are separated by single commas, as in 1,7,11-15"))),
        ("65536", Err((0..5, "'65536' is not a port or a range of ports (a port is 1 to 65535; a range is LOW-HIGH)"))),
        ("1-2-3", Err((0..5, "'1-2-3' is not a port or a range of ports (a port is 1 to 65535; a range is LOW-HIGH)"))),
        ("11-15,14", Err((6..8, "'14' repeats port(s) already in this list (11-15)"))),
    ];
    for (text, want) in rows {
        let got = parse_ports(text);
        match want {
            Ok(w) => {
                let got: Vec<(u16, u16)> = got
                    .unwrap_or_else(|e| panic!("{text}: {e:?}"))
                    .iter()
                    .map(|p| (p.lo, p.hi))
                    .collect();
                assert_eq!(&got, w, "{text}");
            }
            Err((range, msg)) => {
                let (gr, gm) = got.expect_err(text);
                assert_eq!((&gr, gm.as_str()), (range, *msg), "{text}");
            }
        }
    }
}

#[test]
fn golden_errors() {
    let rows: &[(&str, &[&str])] = &[
        ("trap\n", &["nanny.conf:4:1: error[C002]: 'trap' needs an argument (tcp|udp PORTS[@IP], as in 'trap tcp 1,11-15,31337@192.0.2.1')"]),
        ("trap tcp\n", &["nanny.conf:4:6: error[C002]: 'trap' needs 2 arguments (tcp|udp PORTS[@IP], as in 'trap tcp 1,11-15,31337@192.0.2.1')"]),
        ("trap icmp 1\n", &["nanny.conf:4:6: error[C005]: 'trap' is followed by tcp or udp, not 'icmp'"]),
        ("trap tcp 1 2\n", &["nanny.conf:4:12: error[C003]: 'trap' takes at most 2 arguments (tcp|udp PORTS[@IP], as in 'trap tcp 1,11-15,31337@192.0.2.1'); this is extra"]),
        ("trap tcp 1,0\n", &["nanny.conf:4:12: error[C008]: '0': port 0 cannot be watched; ports are 1 to 65535"]),
        ("trap udp 7,20-10\n", &["nanny.conf:4:12: error[C008]: '20-10': a range goes from the lower port to the higher one (10-20)"]),
        ("trap tcp 1@localhost\n", &["nanny.conf:4:12: error[C005]: bad address 'localhost': trap takes a numeric IPv4 or IPv6 address or '*'"]),
        ("trap tcp 1,2\ntrap tcp 5,2-3\n", &["nanny.conf:5:12: error[C009]: trap port(s) 2-3 overlap 'trap tcp 2' on line 4: a port can be bound only once for the same address"]),
        ("trap tcp 7@::1\ntrap tcp 7\n", &["nanny.conf:5:10: error[C009]: trap port(s) 7 overlap 'trap tcp 7' on line 4: a port can be bound only once for the same address"]),
        ("trap tcp 79-81\n", &["nanny.conf:4:10: error[C009]: trap port(s) 79-81 overlap 'listen 80@*' on line 3: a port can be bound only once for the same address"]),
        ("trap tcp 22\nlisten 22@127.0.0.1\n", &["nanny.conf:5:8: error[C009]: port 22 is already a trap (line 4): a port can be bound only once for the same address"]),
        ("stealth tcp below\n", &["nanny.conf:4:13: error[C002]: 'stealth below' needs a port number, as in 'stealth tcp below 1024'"]),
        ("stealth udp below 1\n", &["nanny.conf:4:19: error[C005]: 'below 1': N must be a port number from 2 to 65535"]),
        ("stealth udp below 1024 but 7\n", &["nanny.conf:4:24: error[C005]: expected 'except PORTS' after 'below 1024', found 'but'"]),
        ("stealth tcp below 1024 except 0\n", &["nanny.conf:4:31: error[C008]: '0': port 0 cannot be watched; ports are 1 to 65535"]),
        ("stealth tcp 1 2\n", &["nanny.conf:4:15: error[C003]: 'stealth tcp|udp PORTS' takes one port list; this is extra"]),
        ("stealth tcp 7,79-81\n", &["nanny.conf:4:15: error[C012]: stealth port(s) 79-81 are bound by 'listen 80@*' (line 3): every connection to them would count as a probe"]),
        ("stealth udp 5,9\ntrap udp 9@::1\n", &["nanny.conf:4:15: error[C012]: stealth port(s) 9 are bound by 'trap udp 9' (line 5): every connection to them would count as a probe"]),
        ("blockfile a\nblockfile b\n", &["nanny.conf:5:1: error[C004]: 'blockfile' may be given only once; it was already given on line 4"]),
        ("blockcmd /bin/x %(ip)s %(host)s\n", &["nanny.conf:4:24: error[C010]: blockcmd: unknown name '%(host)': a block command may use %(ip)s, %(port)s, %(mode)s, %(until)s, %(seconds)s"]),
        ("unblockcmd /bin/x 50%\n", &["nanny.conf:4:21: error[C010]: unblockcmd: a lone '%' at the end: write %% for a percent sign"]),
        ("blockcmd /bin/x %(ip)d\n", &["nanny.conf:4:17: error[C010]: blockcmd: %(ip)d needs a number, but ip is text (use %(ip)s)"]),
        ("neverblock 10.0.0.1/8 auto\n", &["nanny.conf:4:12: error[C005]: neverblock takes addresses or 'auto': 10.0.0.1/8 is not a proper CIDR netblock; did you mean 10.0.0.0/8?"]),
        ("blockzone f bad/zone\n", &["nanny.conf:4:13: error[C005]: 'bad/zone' is not a DNS zone name (letters, digits, '.', '-', '_')"]),
        ("blockbudget many\n", &["nanny.conf:4:13: error[C005]: blockbudget must be a whole number of blocks per minute, not 'many'"]),
        ("blockincrement 0 1d\n", &["nanny.conf:4:16: error[C005]: the blockincrement factor must be a whole number, 1 or more, not '0'"]),
        ("blockincrement 2 forever\n", &["nanny.conf:4:18: error[C005]: bad time 'forever': a time must end in s, m, h or d (as in 30s, 10m, 2h, 1d)"]),
        ("blockincrement 2\n", &["nanny.conf:4:16: error[C002]: 'blockincrement' needs 2 arguments (a factor and the longest block, as in '2 30d')"]),
        ("blockkills yes\n", &["nanny.conf:4:12: error[C005]: blockkills must be 'on' or 'off', not 'yes'"]),
    ];
    for (extra, want) in rows {
        let text = format!("{BASE}{extra}");
        assert_eq!(&errors(&text), want, "{extra}");
    }
}

#[test]
fn traps_on_other_addresses_or_protocols_do_not_clash() {
    let s = ok(&format!(
        "{BASE}trap tcp 7@127.0.0.1\ntrap tcp 7@::1\ntrap udp 7\ntrap udp 80\nlisten 81@::1\n\
         trap tcp 81@127.0.0.1\n"
    ))
    .sentry;
    assert_eq!(s.traps.len(), 5);
}

#[test]
fn ipfiles() {
    let text = "# ignored hosts\n127.0.0.1\n\n10.  192.0.2.0/24 # office\n  2001:db8::/32\n";
    let p = parse_ipfile("ignore", text);
    assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
    let set = p.value.expect("set");
    for (a, want) in [
        ("127.0.0.1", true),
        ("10.1.1.1", true),
        ("192.0.2.9", true),
        ("2001:db8::5", true),
        ("127.0.0.2", false),
    ] {
        assert_eq!(set.contains(a.parse().unwrap()), want, "{a}");
    }
    let p = parse_ipfile("ignore", "1.2.3.4\n  bad-host ok?\n5.6.7.8/33\n");
    assert!(p.value.is_none());
    let got: Vec<String> = p.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        got,
        vec![
            "ignore:2:3: error[C011]: 'bad-host' is not an IP address, prefix, CIDR netblock or range (bad characters)",
            "ignore:2:12: error[C011]: 'ok?' is not an IP address, prefix, CIDR netblock or range (bad characters)",
            "ignore:3:1: error[C011]: '5.6.7.8/33' has a netblock size that is not a number from 0 to 32",
        ]
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("trap".to_owned()),
            Just("stealth".to_owned()),
            Just("tcp".to_owned()),
            Just("udp".to_owned()),
            Just("below".to_owned()),
            Just("except".to_owned()),
            Just("blockcmd".to_owned()),
            Just("neverblock".to_owned()),
            Just("blockzone".to_owned()),
            Just("blockincrement".to_owned()),
            Just("auto".to_owned()),
            Just("\n".to_owned()),
            Just("%(ip)s".to_owned()),
            Just("%(".to_owned()),
            "[0-9,@:.*-]{0,12}",
            any::<char>().prop_map(String::from),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Never a panic; a value exactly when there is no error; and what loads prints back
        /// to the same value.
        #[test]
        fn sentry_lines_never_panic_and_round_trip(
            words in proptest::collection::vec(word(), 0..16),
        ) {
            let text = format!("{BASE}{}\n", words.join(" "));
            let p = parse_conf("nanny.conf", &text);
            prop_assert_eq!(p.value.is_some(), !p.has_errors());
            if let Some(c) = p.value {
                let again = parse_conf("nanny.conf", &c.to_string());
                prop_assert_eq!(again.value, Some(c));
            }
        }

        #[test]
        fn port_lists_never_panic(text in "[0-9,-]{0,20}") {
            if let Ok(list) = parse_ports(&text) {
                for r in &list {
                    prop_assert!(r.lo >= 1 && r.lo <= r.hi);
                }
            }
        }
    }
}
