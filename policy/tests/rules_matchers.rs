//! Table-driven tests of every matcher, bare operands, quoting and the canonical printed form.

mod rules_common;

use policy::facts::HnStatus;
use rules_common::{expr_matches, rules, Asked, Fake};

/// (expression, remote address, want)
fn check_ip_rows(rows: &[(&str, &str, bool)]) {
    for (expr, ip, want) in rows {
        let mut f = Fake::new(ip);
        assert_eq!(expr_matches(expr, &mut f), *want, "{expr} vs {ip}");
        assert!(f.log.is_empty(), "{expr}: address matchers need no lookups");
    }
}

#[test]
fn ip_matcher() {
    check_ip_rows(&[
        ("ip: 127.0.0.0/8", "127.0.0.1", true),
        ("ip: 127.0.0.0/8", "128.100.102.1", false),
        ("ip: 127.0.0.2", "127.0.0.2", true),
        ("ip: 127.0.0.2", "127.0.0.1", false),
        ("ip: 127.0.0.", "127.0.0.1", true),
        ("ip: 127.0.", "127.1.0.0", false),
        ("ip: 142.150.0.0/15", "142.151.255.255", true),
        ("ip: 142.150.0.0/15", "142.152.0.0", false),
        ("ip: 127.0.0.0-127.0.0.240", "127.0.0.1", true),
        ("ip: 127.0.0.0-127.0.0.240", "127.0.0.241", false),
        ("ip: 127.0/8", "127.0.0.1", true),
        ("ip: 127/8", "127.255.0.1", true),
        ("ip: 0/0", "1.2.3.4", true),
        ("ip: 0/0", "::1", false),
        ("ip: 10.0.0.1", "::ffff:10.0.0.1", true),
        ("ip: ::1", "::1", true),
        ("ip: 2001:db8::/32", "2001:db8:1::5", true),
        ("ip: 2001:db8::/32", "2001:db9::", false),
        ("ip: 2001:db8::1-2001:db8::ff", "2001:db8::80", true),
        ("ip: 2001:db8::1-2001:db8::ff", "2001:db8::100", false),
        ("ip: ::ffff:10.0.0.0/104", "10.9.9.9", true),
        // Bare operands are ip: first.
        ("127.0.0.1", "127.0.0.1", true),
        ("127.", "127.8.8.8", true),
        ("10.0.0.0/8 192.168.", "192.168.3.3", true),
        ("10.0.0.0/8 192.168.", "172.16.0.1", false),
        ("::1", "::1", true),
        ("fe80::", "fe80::", true),
        ("fe80::/10", "fe80::1234", true),
        // Merged address runs behave like the separate operands.
        (
            "ip: 0.0.0.0 ip: 127.0.0.1 ip: 127.0.0.2 ip: 127.0.0.3",
            "127.0.0.3",
            true,
        ),
        (
            "ip: 0.0.0.0 ip: 127.0.0.1 ip: 127.0.0.2 ip: 127.0.0.3",
            "127.0.0.4",
            false,
        ),
        (
            "ip: 0.0.0.0 ip: 127.0.0.1 ip: 127.0.0.2 ip: 127.0.0.3",
            "0.0.0.1",
            false,
        ),
        ("128.100.100. 128.100. 128.", "128.1.1.1", true),
        ("128.100.100. 127.0.0.0/24", "127.0.0.200", true),
        ("128.100.100. 127.0.0.0/24", "128.100.101.1", false),
        ("(10.1.1.1 (10.1.1.2 10.1.1.3))", "10.1.1.3", true),
    ]);
}

#[test]
fn localip_and_local_matchers() {
    let rows: &[(&str, &str, bool)] = &[
        ("localip: 127.0.0.1", "127.0.0.1:25", true),
        ("localip: 127.0.0.10", "127.0.0.1:25", false),
        ("localip: 10.0.0.0/8 localip: 127.", "127.0.0.1:25", true),
        ("localip: ::1", "[::1]:25", true),
        ("local: 100@", "127.0.0.1:100", true),
        ("local: 200@", "127.0.0.1:100", false),
        ("local: 127.0.0.1", "127.0.0.1:100", true),
        ("local: 100@127.0.0.1", "127.0.0.1:100", true),
        ("local: 100@127.0.0.1", "127.0.0.1:101", false),
        ("local: 127.0.0.1", "128.100.102.51:100", false),
        ("local: *@128.100.102.51", "128.100.102.51:100", true),
        ("local: 100@*", "128.100.102.51:100", true),
        ("local: 100", "10.0.0.1:100", true),
        ("local: 25@::1", "[::1]:25", true),
        ("local: @::1", "[::1]:80", true),
        ("local: ::1", "[::2]:80", false),
    ];
    for (expr, local, want) in rows {
        let mut f = Fake::new("10.9.9.9").local(local);
        assert_eq!(expr_matches(expr, &mut f), *want, "{expr} on {local}");
    }
    // localip: does not merge with ip: (different addresses are tested).
    let mut f = Fake::new("10.0.0.1").local("127.0.0.1:25");
    assert!(!expr_matches("ip: 127.0.0.1 localip: 10.0.0.1", &mut f));
    assert!(expr_matches("ip: 10.0.0.1 localip: 10.0.0.1", &mut f));
}

fn host_fake(ip: &str) -> Fake {
    // The original's test fixtures, in spirit: a few addresses with each hostname state.
    match ip {
        "127.0.0.2" => Fake::new(ip),
        "127.0.0.100" => Fake::new(ip).host(HnStatus::NoForward, "127.0.0.100"),
        "127.0.0.101" => Fake::new(ip).host(HnStatus::NoForward, "not-a-forward"),
        "127.0.0.102" => Fake::new(ip).host(HnStatus::AddrMismatch, "mismatch-reverse"),
        "127.0.0.103" => Fake::new(ip).host(HnStatus::Good, "is-a-good-name"),
        "127.0.1.1" => Fake::new(ip).host(HnStatus::Good, "Franklin.COM"),
        "127.0.1.2" => Fake::new(ip).host(HnStatus::Good, "b.a.franklin.com"),
        "127.0.2.1" => Fake::new(ip).host(HnStatus::Good, "bigbucks.smack.com"),
        _ => Fake::new(ip).host(HnStatus::Unknown, ""),
    }
}

#[test]
fn hostname_status_matchers() {
    let rows: &[(&str, &str, bool)] = &[
        ("KNOWN", "127.0.0.2", false),
        ("KNOWN", "127.0.0.102", false),
        ("KNOWN", "127.0.0.103", true),
        ("UNKNOWN", "127.0.0.2", true),
        ("UNKNOWN", "127.0.0.103", false),
        ("UNKNOWN", "127.0.0.101", false),
        ("PARANOID", "127.0.0.103", false),
        ("PARANOID", "127.0.0.2", false),
        ("PARANOID", "127.0.0.100", true),
        ("PARANOID", "127.0.0.101", true),
        ("PARANOID", "127.0.0.102", true),
        ("hnstatus: noforward", "127.0.0.100", true),
        ("hnstatus: noforward", "127.0.0.102", false),
        ("hnstatus: addrmismatch", "127.0.0.102", true),
        ("hnstatus: addrmismatch", "127.0.0.100", false),
        ("hnstatus: good", "127.0.0.103", true),
        ("hnstatus: unknown", "127.0.0.2", true),
        ("hnstatus: KNOWN", "127.0.0.103", true),
        ("hnstatus: PARANOID", "127.0.0.101", true),
        ("NOT KNOWN", "127.0.0.101", true),
        ("(UNKNOWN PARANOID)", "127.0.0.102", true),
    ];
    for (expr, ip, want) in rows {
        let mut f = host_fake(ip);
        assert_eq!(expr_matches(expr, &mut f), *want, "{expr} vs {ip}");
        let asked = f.lookups();
        assert!(
            !asked.is_empty() && asked.iter().all(|a| *a == Asked::Host),
            "{expr}: {asked:?}"
        );
    }
}

#[test]
fn hostname_matchers() {
    let rows: &[(&str, &str, bool)] = &[
        ("hostname: is-a-good-name", "127.0.0.103", true),
        ("hostname: not-a-forward", "127.0.0.101", false),
        ("hostname: 127.0.0.100", "127.0.0.100", false),
        ("hostname: franklin.com", "127.0.1.1", true),
        ("hostname: a.franklin.com", "127.0.1.1", false),
        ("hostname: klin.com", "127.0.1.1", false),
        ("hostname: .klin.com", "127.0.1.1", false),
        ("hostname: b.a.franklin.com", "127.0.1.2", true),
        ("hostname: .a.franklin.com", "127.0.1.2", true),
        ("hostname: .franklin.com", "127.0.1.2", true),
        ("hostname: .franklin.com", "127.0.1.1", true),
        ("hostname: b.a.", "127.0.1.2", false),
        ("hostname: FRANKlin.CoM", "127.0.1.1", true),
        ("hostname: .smack.com", "127.0.2.1", true),
        ("hostname: .com", "127.0.0.2", false),
        // Bare words that are not addresses are hostnames.
        ("franklin.com", "127.0.1.1", true),
        (".smack.com", "127.0.2.1", true),
        ("is-a-good-name", "127.0.0.103", true),
        // claimedhn: looks at the unverified name.
        ("claimedhn: is-a-good-name", "127.0.0.103", true),
        ("claimedhn: not-a-forward", "127.0.0.101", true),
        ("claimedhn: mismatch-reverse", "127.0.0.102", true),
        ("claimedhn: 127.0.0.100", "127.0.0.100", true),
        ("claimedhn: .reverse", "127.0.0.102", false),
        ("claimedhn: anything", "127.0.0.2", false),
        // re: is unanchored, case-insensitive, on the verified name only.
        ("re: ^good", "127.0.0.103", false),
        ("re: good", "127.0.0.103", true),
        ("re: smack\\.com$", "127.0.2.1", true),
        ("re: match", "127.0.0.102", false),
        ("re: ^FRANKLIN", "127.0.1.1", true),
        ("re: '(abc|franklin)'", "127.0.1.1", true),
        ("re: .", "127.0.0.2", false),
        ("claimedre: good", "127.0.0.103", true),
        ("claimedre: -forward", "127.0.0.101", true),
        ("claimedre: 127", "127.0.0.104", false),
        ("claimedre: ^127", "127.0.0.100", true),
    ];
    for (expr, ip, want) in rows {
        let mut f = host_fake(ip);
        assert_eq!(expr_matches(expr, &mut f), *want, "{expr} vs {ip}");
        assert_eq!(f.lookups(), vec![Asked::Host], "{expr}");
    }
}

#[test]
fn identd_matchers() {
    let rows: &[(&str, Option<&str>, bool)] = &[
        ("identd: cks", Some("cks"), true),
        ("identd: foobar", Some("cks"), false),
        ("identd: cks", None, false),
        ("identd: CKS", Some("cks"), false),
        ("IDENTD", Some("cks"), true),
        ("IDENTD", None, false),
        ("IDENTD", Some(""), false),
        ("identd: 'a b'", Some("a b"), true),
    ];
    for (expr, user, want) in rows {
        let mut f = Fake::new("10.0.0.1");
        if let Some(u) = user {
            f = f.identd(u);
        }
        assert_eq!(expr_matches(expr, &mut f), *want, "{expr} vs {user:?}");
        assert_eq!(f.lookups(), vec![Asked::Identd]);
    }
}

#[test]
fn forwhn_dnsbl_answerson() {
    let f0 = || Fake::new("13.12.11.10");
    let rows: Vec<(&str, Fake, bool, Vec<Asked>)> = vec![
        (
            "forwhn: no-reverse-name",
            f0().resolves("no-reverse-name", "13.12.11.10"),
            true,
            vec![Asked::Forward("no-reverse-name".into())],
        ),
        (
            "forwhn: Many-IP-Addrs",
            f0().resolves("many-ip-addrs", "1.1.1.1")
                .resolves("many-ip-addrs", "13.12.11.10"),
            true,
            vec![Asked::Forward("many-ip-addrs".into())],
        ),
        (
            "forwhn: elsewhere",
            f0().resolves("elsewhere", "1.1.1.1"),
            false,
            vec![Asked::Forward("elsewhere".into())],
        ),
        (
            "dnsbl: dnsbl1",
            f0().listed("dnsbl1", "127.0.0.4"),
            true,
            vec![Asked::Dnsbl("dnsbl1".into())],
        ),
        (
            "dnsbl: dnsbl1",
            f0(),
            false,
            vec![Asked::Dnsbl("dnsbl1".into())],
        ),
        (
            "dnsbl: dnsbl1/127.0.0.4",
            f0().listed("dnsbl1", "127.0.0.4"),
            true,
            vec![Asked::Dnsbl("dnsbl1".into())],
        ),
        (
            "dnsbl: dnsbl1/127.0.0.3",
            f0().listed("dnsbl1", "127.0.0.4"),
            false,
            vec![Asked::Dnsbl("dnsbl1".into())],
        ),
        (
            "dnsbl: DNSBL2/127.0.0.6",
            f0().listed("dnsbl2", "127.0.0.2")
                .listed("dnsbl2", "127.0.0.6"),
            true,
            vec![Asked::Dnsbl("dnsbl2".into())],
        ),
        (
            "answerson: 10",
            f0().answers(10),
            true,
            vec![Asked::AnswersOn(10)],
        ),
        (
            "answerson: 25",
            f0().answers(10),
            false,
            vec![Asked::AnswersOn(25)],
        ),
    ];
    for (expr, mut f, want, asked) in rows {
        assert_eq!(expr_matches(expr, &mut f), want, "{expr}");
        assert_eq!(f.lookups(), asked, "{expr}");
    }
}

#[test]
fn class_matcher() {
    let r = rules("frotz/nt: ALL\nx: class: frotz AND 10.\ny/always: class: nope\n");
    let mut f = Fake::new("10.0.0.1");
    let names: Vec<String> = r.evaluate(&mut f).names().map(str::to_owned).collect();
    assert_eq!(names, vec!["frotz", "x", "GLOBAL"]);
}

/// (expression, (first seen, last seen), want)
type TimeRow = (&'static str, (u64, Option<u64>), bool);

#[test]
fn time_matchers() {
    // (expression, (first, last), want) — the original's table.
    let rows: &[TimeRow] = &[
        ("firsttime", (0, None), true),
        ("firsttime", (61, Some(0)), false),
        ("stallfor: 60s", (50, Some(20)), true),
        ("stallfor: 60s", (60, Some(20)), true),
        ("stallfor: 60s", (61, Some(20)), false),
        ("stallfor: 1m", (61, Some(20)), false),
        ("waited: 60s", (50, Some(20)), false),
        ("waited: 60s", (60, Some(20)), false),
        ("waited: 60s", (61, Some(20)), true),
        ("seenwithin: 60s", (65, Some(50)), true),
        ("seenwithin: 60s", (65, Some(60)), true),
        ("seenwithin: 60s", (65, Some(61)), false),
        ("notseenfor: 60s", (65, Some(50)), false),
        ("notseenfor: 60s", (65, Some(60)), false),
        ("notseenfor: 60s", (65, Some(61)), true),
        ("seenwithin: 60s", (0, None), false),
        ("notseenfor: 60s", (0, None), true),
        ("waited: 1d", (86_401, Some(1)), true),
        ("stallfor: 2h", (7_200, Some(1)), true),
    ];
    for (expr, (first, last), want) in rows {
        let mut f = Fake::new("10.0.0.1").seen(*first, *last);
        assert_eq!(expr_matches(expr, &mut f), *want, "{expr} {first} {last:?}");
        assert_eq!(f.lookups(), vec![Asked::Seen]);
    }
}

#[test]
fn operators_evaluate_correctly() {
    // The original's boolean table, with ALL / NOT ALL as true and false.
    let t = "ALL";
    let f = "(NOT ALL)";
    let rows: &[(String, bool)] = &[
        (format!("{t} {f}"), true),
        (format!("{f} {f}"), false),
        (format!("{f} {f} {f} {f} {t}"), true),
        (format!("!{t}"), false),
        (format!("NOT ({t} {f})"), false),
        (format!("{t} AND {t}"), true),
        (format!("{t} AND {f}"), false),
        (format!("{f} && {t}"), false),
        (format!("{t} EXCEPT {f}"), true),
        (format!("{t} EXCEPT {t}"), false),
        (format!("{f} EXCEPT {f}"), false),
        (format!("{t} {t} {f} AND {t}"), true),
        (format!("{t} AND {f} {f} {t}"), true),
        (format!("{t} AND {t} EXCEPT {f}"), true),
        (format!("{t} AND {t} EXCEPT {t} AND {f}"), true),
        (format!("{t} AND ({t} EXCEPT {t} AND {f})"), true),
        (format!("{t} AND ({t} EXCEPT {t})"), false),
        (format!("{t} EXCEPT {f} EXCEPT {t}"), true),
        (format!("({t} EXCEPT {f}) EXCEPT {t}"), false),
        (format!("{t} EXCEPT {t} EXCEPT {f}"), false),
        (format!("{f} ({t} AND {f}) ({t} EXCEPT {f})"), true),
        (format!("{f} ({t} AND {f}) ({t} EXCEPT {t})"), false),
        (format!("!{f} AND !!{t}"), true),
    ];
    for (expr, want) in rows {
        let mut fk = Fake::new("10.0.0.1");
        assert_eq!(expr_matches(expr, &mut fk), *want, "{expr}");
    }
    // And the original's address-and-hostname examples.
    let rows: &[(&str, &str, bool)] = &[
        ("127.0.0.0/8 EXCEPT 127.0.0.1", "127.0.0.1", false),
        ("127.0.0.0/8 EXCEPT 127.0.0.1", "127.0.0.2", true),
        ("127. EXCEPT KNOWN", "127.0.0.2", true),
        ("127. EXCEPT KNOWN", "127.0.1.1", false),
        ("127. EXCEPT KNOWN", "127.0.0.101", true),
        ("127. 128. AND KNOWN", "127.0.0.103", true),
        ("127. 128. AND KNOWN", "127.0.0.2", false),
        (
            "127.0.0.0/8 AND NOT KNOWN EXCEPT 127.0.0.101",
            "127.0.0.101",
            false,
        ),
        (
            "127.0.0.0/8 AND NOT KNOWN EXCEPT 127.0.0.101",
            "127.0.0.102",
            true,
        ),
    ];
    for (expr, ip, want) in rows {
        let mut fk = host_fake(ip);
        assert_eq!(expr_matches(expr, &mut fk), *want, "{expr} vs {ip}");
    }
}

#[test]
fn quoting_makes_words() {
    let rows: &[(&str, &str, bool)] = &[
        // A quoted operator is an ordinary word (here a bad hostname would be an error, so use
        // identd:, which takes any word).
        ("identd: '&&'", "&&", true),
        ("identd: 'AND'", "AND", true),
        ("identd: a'&&'b", "a&&b", true),
        ("identd: 'it''s'", "it's", true),
        ("identd: ''''", "'", true),
        ("identd: a'  'b", "a  b", true),
        ("identd: 'x(y)!z'", "x(y)!z", true),
        ("identd: a&b", "a&b", true),
        ("identd: 'ip:'", "ip:", true),
    ];
    for (expr, user, want) in rows {
        let mut f = Fake::new("10.0.0.1").identd(user);
        assert_eq!(expr_matches(expr, &mut f), *want, "{expr}");
    }
    // Quoted matcher words still name matchers; quotes do not break words.
    let mut f = Fake::new("10.0.0.1");
    assert!(expr_matches("'ip:' '10.0.0.1'", &mut f));
    assert!(expr_matches("'10.0.'0.1", &mut f));
    // (a&&b) splits into operators.
    assert!(expr_matches("(10.0.0.1&&ALL)", &mut f));
    assert!(!expr_matches("(10.0.0.1&&!ALL)", &mut f));
}

#[test]
fn canonical_printing_round_trips() {
    let rows: &[(&str, &str)] = &[
        ("ALL", "ALL"),
        ("IDENTD", "IDENTD"),
        ("identd: foo", "identd: foo"),
        ("local: 1@0.0.0.0", "local: 1@0.0.0.0"),
        ("local: 1", "local: 1@"),
        ("local: 0.0.0.0", "local: @0.0.0.0"),
        ("KNOWN", "hnstatus: KNOWN"),
        ("UNKNOWN", "hnstatus: UNKNOWN"),
        ("PARANOID", "hnstatus: PARANOID"),
        ("hnstatus: noforward", "hnstatus: noforward"),
        ("ip: 128.", "ip: 128."),
        ("ip: 128.0.0.0/16", "ip: 128.0.0.0/16"),
        ("localip: 127.", "localip: 127."),
        ("hostname: foobar.com", "hostname: foobar.com"),
        ("claimedhn: .FOOBAR.com", "claimedhn: .foobar.com"),
        ("class: foobar", "class: foobar"),
        ("re: ^abcdef", "re: '^abcdef'"),
        ("claimedre: ppp", "claimedre: 'ppp'"),
        ("re: '(abc|def)'", "re: '(abc|def)'"),
        ("re: 'it''s'", "re: 'it''s'"),
        ("re: it''s", "re: 'its'"),
        ("forwhn: foobar.com", "forwhn: foobar.com"),
        ("dnsbl: sbl.spamhaus.org", "dnsbl: sbl.spamhaus.org"),
        ("dnsbl: t.org/127.0.0.1", "dnsbl: t.org/127.0.0.1"),
        ("answerson: 25", "answerson: 25"),
        ("stallfor: 10s", "stallfor: 10s"),
        ("stallfor: 1m", "stallfor: 60s"),
        ("waited: 30s", "waited: 30s"),
        ("notseenfor: 1h", "notseenfor: 3600s"),
        ("seenwithin: 1d", "seenwithin: 86400s"),
        ("firsttime", "firsttime"),
        ("127.0.0.1", "ip: 127.0.0.1"),
        ("127.0.", "ip: 127.0."),
        ("localhost", "hostname: localhost"),
        (".foobar.com", "hostname: .foobar.com"),
        ("UNKNOWN PARANOID", "hnstatus: UNKNOWN hnstatus: PARANOID"),
        ("128.120. 128.100.", "ip: 128.120. ip: 128.100."),
        ("identd: 'a b'", "identd: 'a b'"),
        ("class: 'AND'", "class: 'AND'"),
        (
            "127.0.0.0/8 EXCEPT 127.0.0.1",
            "(ip: 127.0.0.0/8) EXCEPT (ip: 127.0.0.1)",
        ),
        (
            "128.100. 142.150.0.0/15 AND NOT KNOWN EXCEPT 128.100.100.1",
            "((ip: 128.100. ip: 142.150.0.0/15) AND (!(hnstatus: KNOWN))) EXCEPT (ip: 128.100.100.1)",
        ),
        ("a AND b AND c", "(hostname: a) AND ((hostname: b) AND (hostname: c))"),
        ("(a AND b) c", "((hostname: a) AND (hostname: b)) hostname: c"),
        ("! c d", "!(hostname: c) hostname: d"),
    ];
    for (input, want) in rows {
        let r = rules(&format!("x: {input}\n"));
        let printed = r.rules()[0].expr.to_string();
        assert_eq!(printed, *want, "{input}");
        let again = rules(&format!("x: {printed}\n"));
        assert_eq!(
            again.rules()[0].expr.to_string(),
            printed,
            "{input} is not stable"
        );
    }
    let r = rules("f/label=b/nt/always: ALL\nfoobar/nonterminal: ALL\n");
    assert_eq!(r.to_string(), "f/nt/always/label=b: ALL\nfoobar/nt: ALL\n");
}
