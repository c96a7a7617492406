//! Property tests: the rules parser never panics, printing round-trips, and AddrSet agrees with
//! a naive list of ranges.

mod rules_common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policy::addr::{AddrRange, AddrSet};
use policy::rules::parse_rules;
use proptest::prelude::*;
use rules_common::Fake;

/// Words that steer random input into the interesting corners of the grammar.
fn vocab() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("ALL".to_owned()),
        Just("KNOWN".to_owned()),
        Just("NOT".to_owned()),
        Just("!".to_owned()),
        Just("AND".to_owned()),
        Just("&&".to_owned()),
        Just("EXCEPT".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just("'".to_owned()),
        Just("''".to_owned()),
        Just("ip:".to_owned()),
        Just("re:".to_owned()),
        Just("local:".to_owned()),
        Just("dnsbl:".to_owned()),
        Just("class:".to_owned()),
        Just("trap".to_owned()),
        Just("blocked".to_owned()),
        Just("hits:".to_owned()),
        Just("3/10m".to_owned()),
        Just("mode:".to_owned()),
        Just("tcp,stcp".to_owned()),
        Just("ipfile:".to_owned()),
        Just("/nt".to_owned()),
        Just("/always".to_owned()),
        Just("/label=".to_owned()),
        Just(":".to_owned()),
        Just("\n".to_owned()),
        Just("\n  ".to_owned()),
        Just("#".to_owned()),
        Just("10.0.0.0/8".to_owned()),
        Just("127.".to_owned()),
        Just("::1".to_owned()),
        Just("1.2.3.4-1.2.3.9".to_owned()),
        Just(".example.com".to_owned()),
        "[a-z0-9.:/@*'()!& -]{0,8}",
        any::<char>().prop_map(String::from),
    ]
}

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(vocab(), 0..24).prop_map(|v| v.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parser_never_panics_on_any_string(text in any::<String>()) {
        let p = parse_rules("r", &text);
        prop_assert_eq!(p.value.is_some(), !p.has_errors());
    }

    #[test]
    fn parser_never_panics_on_rule_soup(head in "[a-z]{1,3}(/[a-z=]{0,6}){0,2}:", body in soup()) {
        let text = format!("{head} {body}\n");
        let p = parse_rules("r", &text);
        if let Some(rules) = p.value {
            // Whatever parsed evaluates without panicking, and prints to text that parses to
            // the same printed form.
            let mut f = Fake::new("10.0.0.1");
            rules.evaluate(&mut f);
            for r in rules.rules() {
                let printed = r.expr.to_string();
                let again = parse_rules("r", &format!("x: {printed}\n"));
                let again = again.value.expect("printed form parses");
                prop_assert_eq!(again.rules()[0].expr.to_string(), printed);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// explain runs the same evaluator: on any rules, the same classes, and exactly the same
    /// facts asked in the same order (the tracer only observes).
    #[test]
    fn explain_is_the_evaluation(body in soup(), body2 in soup()) {
        let text = format!("a/nt: {body}\nb: {body2}\nc/always: {body}\n");
        if let Some(rules) = parse_rules("r", &text).value {
            let fake = Fake::new("10.0.0.1")
                .host(policy::facts::HnStatus::Good, "a.example.com")
                .listed("x", "127.0.0.2")
                .seen(5, Some(3))
                .sentry(rules_common::SentryFacts {
                    trap: true,
                    blocked: true,
                    hits: vec![(1, 1), (2, 2), (3, 3)],
                    mode: Some(policy::facts::SentryMode::Tcp),
                    ipfiles: Vec::new(),
                });
            let (mut plain, mut traced) = (fake.clone(), fake);
            let want = rules.evaluate(&mut plain);
            let got = rules.explain(&mut traced);
            prop_assert_eq!(got.classification, want);
            prop_assert_eq!(traced.log, plain.log);
            prop_assert_eq!(got.outcomes.len(), rules.len());
        }
    }
}

/// A strategy for IPv4 ranges concentrated in a small window so that they overlap and touch.
fn v4_range() -> impl Strategy<Value = (u32, u32)> {
    prop_oneof![
        (0u32..512, 0u32..64).prop_map(|(a, l)| (a, a.saturating_add(l))),
        (any::<u32>(), 0u32..4).prop_map(|(a, l)| (a, a.saturating_add(l))),
        Just((u32::MAX - 3, u32::MAX)),
        Just((0, 0)),
    ]
}

fn v6_range() -> impl Strategy<Value = (u128, u128)> {
    prop_oneof![
        (0u128..512, 0u128..64).prop_map(|(a, l)| (a, a.saturating_add(l))),
        (any::<u128>(), 0u128..4).prop_map(|(a, l)| (a, a.saturating_add(l))),
        Just((u128::MAX - 1, u128::MAX)),
        (0u128..512, 0u128..64).prop_map(|(a, l)| {
            let lo = 0xffff_0000_0000u128 + a;
            (lo, lo + l)
        }),
        Just((0xffff_0000_0000u128 - 2, 0xffff_0000_0005u128)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn addrset_agrees_with_naive_ranges(
        v4 in prop::collection::vec(v4_range(), 0..40),
        v6 in prop::collection::vec(v6_range(), 0..20),
        probes4 in prop::collection::vec(prop_oneof![0u32..600, any::<u32>()], 0..200),
        probes6 in prop::collection::vec(
            prop_oneof![0u128..600, any::<u128>(), (0u128..600).prop_map(|x| 0xffff_0000_0000u128 + x)],
            0..100,
        ),
    ) {
        let set = AddrSet::from_ranges(
            v4.iter().map(|&(a, b)| AddrRange::V4(a, b))
                .chain(v6.iter().map(|&(a, b)| AddrRange::V6(a, b))),
        );
        // Probe the edges of every range too.
        let mut p4 = probes4.clone();
        for &(a, b) in &v4 {
            p4.extend([a, b, a.wrapping_sub(1), b.wrapping_add(1)]);
        }
        let mapped = 0xffff_0000_0000u128..=0xffff_ffff_ffffu128;
        for x in p4 {
            // An IPv4 peer is in the v4 ranges or in a v6 range written inside ::ffff:0:0/96.
            let m = 0xffff_0000_0000u128 + u128::from(x);
            let naive = v4.iter().any(|&(a, b)| a <= x && x <= b)
                || v6.iter().any(|&(a, b)| {
                    mapped.contains(&a) && mapped.contains(&b) && a <= m && m <= b
                });
            prop_assert_eq!(set.contains(IpAddr::V4(Ipv4Addr::from(x))), naive, "v4 {}", x);
        }
        let mut p6 = probes6.clone();
        for &(a, b) in &v6 {
            p6.extend([a, b, a.wrapping_sub(1), b.wrapping_add(1)]);
        }
        for x in p6 {
            let addr = Ipv6Addr::from(x);
            let naive = if let Some(v4addr) = addr.to_ipv4_mapped() {
                // v4-mapped addresses are answered from the IPv4 side, which holds the v4
                // ranges and the v6 ranges lying wholly inside ::ffff:0:0/96.
                let n = u32::from(v4addr);
                v4.iter().any(|&(a, b)| a <= n && n <= b)
                    || v6.iter().any(|&(a, b)| {
                        mapped.contains(&a) && mapped.contains(&b) && a <= x && x <= b
                    })
            } else {
                v6.iter().any(|&(a, b)| a <= x && x <= b)
            };
            prop_assert_eq!(set.contains(IpAddr::V6(addr)), naive, "v6 {}", x);
        }
        // Merged: never more intervals than inputs.
        prop_assert!(set.interval_count() <= v4.len() + 2 * v6.len());
    }
}

fn spec() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..4, 0u8..4).prop_map(|(a, b)| format!("10.0.{a}.{b}")),
        (0u8..4).prop_map(|a| format!("10.0.{a}.0/30")),
        (0u8..4, 0u8..4).prop_map(|(a, b)| format!("10.0.{}.0-10.0.{}.2", a.min(b), a.max(b))),
        Just("10.0.".to_owned()),
        Just("::1".to_owned()),
        Just("::/127".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Runs of one-line address rules are evaluated as one lookup; the answer must be the one
    /// rule-at-a-time evaluation gives (forced by making each expression not address-only).
    #[test]
    fn merged_address_runs_equal_rule_by_rule(
        lines in prop::collection::vec((0u8..3, any::<bool>(), any::<bool>(), spec()), 1..30),
        probes in prop::collection::vec((0u8..5, 0u8..5), 1..20),
    ) {
        let mut merged = String::new();
        let mut single = String::new();
        for (i, (class, nt, always, spec)) in lines.iter().enumerate() {
            let notes = format!("{}{}", if *nt { "/nt" } else { "" }, if *always { "/always" } else { "" });
            if i % 7 == 3 {
                merged.push_str(&format!("c{class}{notes}/label=L{i}: ip: {spec}\n"));
                single.push_str(&format!("c{class}{notes}/label=L{i}: ip: {spec}\n"));
            } else {
                merged.push_str(&format!("c{class}{notes}: {spec}\n"));
                single.push_str(&format!("c{class}{notes}: {spec} AND ALL\n"));
            }
        }
        let a = parse_rules("m", &merged).value.expect("merged parses");
        let b = parse_rules("s", &single).value.expect("single parses");
        let mut addrs: Vec<String> = probes.iter().map(|(x, y)| format!("10.0.{x}.{y}")).collect();
        addrs.extend(["::1".to_owned(), "::2".to_owned(), "10.1.0.0".to_owned()]);
        for ip in addrs {
            let ca = a.evaluate(&mut Fake::new(&ip));
            let cb = b.evaluate(&mut Fake::new(&ip));
            prop_assert_eq!(ca, cb, "{}", ip);
        }
    }
}
