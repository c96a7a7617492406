//! The traced evaluation behind `nannyctl explain`: every rule's outcome and reason, on the
//! same evaluator as a real connection (so the classes always agree), and no extra lookup.

mod rules_common;

use policy::facts::HnStatus;
use policy::rules::trace::Outcome;
use rules_common::{matched, rules, Asked, Fake, SentryFacts};

/// (rule line, matched?, why) for every rule, in file order.
fn trace(text: &str, facts: &mut Fake) -> Vec<(u32, Option<bool>, String)> {
    let r = rules(text);
    let ex = r.explain(facts);
    // The traced evaluation classifies exactly as the untraced one.
    let plain = r.evaluate(&mut facts.clone());
    assert_eq!(ex.classification, plain, "explain disagrees on {text:?}");
    r.rules()
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            (
                rule.lineno,
                ex.outcomes.get(i).and_then(Outcome::matched),
                ex.why(&r, i),
            )
        })
        .collect()
}

fn why_of(text: &str, facts: &mut Fake) -> String {
    trace(text, facts).remove(0).2
}

#[test]
fn every_matcher_kind_names_its_value() {
    let fake = || {
        Fake::new("127.0.0.5")
            .host(HnStatus::Good, "mail.example.com")
            .identd("bob")
            .listed("bl.example", "127.0.0.2")
            .resolves("fw.example", "127.0.0.5")
            .answers(25)
            .seen(100, Some(10))
            .local("127.0.0.1:2525")
            .over("2/1m")
    };
    // (expression, want a match, a fragment the reason must contain)
    let rows: &[(&str, bool, &str)] = &[
        ("ALL", true, "ALL: yes"),
        ("127.0.0.0/8", true, "ip: 127.0.0.0/8: yes (peer 127.0.0.5)"),
        ("10.", false, "ip: 10.: no (peer 127.0.0.5)"),
        (
            "ip: 10. ip: 127.0.0.0/8",
            true,
            "peer 127.0.0.5 is in 127.0.0.0/8",
        ),
        ("localip: 127.0.0.1", true, "local address 127.0.0.1"),
        ("local: 2525@", true, "local 127.0.0.1:2525"),
        ("local: 25@", false, "local: 25@: no (local 127.0.0.1:2525)"),
        (
            "KNOWN",
            true,
            "good (mail.example.com resolves to the peer)",
        ),
        ("hnstatus: noforward", false, "hnstatus: noforward: no"),
        (
            "hostname: .example.com",
            true,
            "verified hostname mail.example.com",
        ),
        ("re: '^mail'", true, "verified hostname mail.example.com"),
        ("claimedhn: .example.org", false, "claimed hostname"),
        ("IDENTD", true, "identd says 'bob'"),
        (
            "identd: root",
            false,
            "identd: root: no (identd says 'bob')",
        ),
        ("dnsbl: bl.example", true, "listed: 127.0.0.2"),
        ("dnsbl: bl.example/127.0.0.3", false, "listed: 127.0.0.2"),
        ("dnsbl: other.example", false, "not listed"),
        ("forwhn: fw.example", true, "fw.example is 127.0.0.5"),
        ("forwhn: none.example", false, "none.example has no address"),
        ("answerson: 25", true, "port 25 answers"),
        ("answerson: 26", false, "port 26 does not answer"),
        ("firsttime", false, "last seen 10s ago"),
        (
            "seenwithin: 1m",
            true,
            "seenwithin: 60s: yes (last seen 10s ago)",
        ),
        ("waited: 1m", true, "first seen 100s ago"),
        ("trap", false, "not a trap connection"),
        ("blocked", false, "blocked: no"),
        ("hits: 2", false, "0 trapped ports within 3600s"),
        ("mode: tcp", false, "no sentry mode"),
        ("ipfile: list", false, "ipfile: list: no"),
        // A matcher kind with no arm of its own in the tracer: its answer alone.
        ("rate: 2/1m", true, ": yes"),
        ("rate: 5/1m", false, ": no"),
    ];
    for (expr, want, why) in rows {
        let text = format!("a: {expr}\n");
        let t = trace(&text, &mut fake());
        assert_eq!(t[0].1, Some(*want), "{expr}: {:?}", t[0].2);
        assert!(t[0].2.contains(why), "{expr}: {:?} lacks {why:?}", t[0].2);
    }
}

#[test]
fn unknown_hostname_is_said_so() {
    let why = why_of("a: hostname: .example.com\n", &mut Fake::new("192.0.2.1"));
    assert!(
        why.starts_with("hostname: .example.com: no (hostname is unknown"),
        "{why}"
    );
    let mut f = Fake::new("192.0.2.1").host(HnStatus::AddrMismatch, "liar.example.com");
    let why = why_of("a: hostname: .example.com\n", &mut f);
    assert!(
        why.contains("addrmismatch (PTR name liar.example.com"),
        "{why}"
    );
}

#[test]
fn class_order_skips_and_stops_are_reported() {
    let text = "\
staff/nt: 10.20.
greylist/nt: firsttime
staff: ALL
smtp: local: 25@
relay: class: staff AND local: 587@
audit/always: class: greylist
";
    let mut f = Fake::new("10.20.1.5").local("127.0.0.1:25");
    let t = trace(text, &mut f);
    let got: Vec<(u32, Option<bool>)> = t.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(
        got,
        vec![
            (1, Some(true)),
            (2, Some(true)),
            (3, None),
            (4, Some(true)),
            (5, None),
            (6, Some(true)),
        ]
    );
    assert!(
        t[2].2.contains("already in class staff (line 1)"),
        "{}",
        t[2].2
    );
    assert!(
        t[4].2.contains("the rule at line 4 matched and stopped"),
        "{}",
        t[4].2
    );
    assert!(
        t[5].2.contains("classes so far: staff greylist smtp"),
        "{}",
        t[5].2
    );
    assert_eq!(
        matched(&rules(text), &mut f),
        "staff@1 greylist@2 smtp@4 audit@6 GLOBAL@0"
    );
}

#[test]
fn rules_after_a_terminal_match_are_cut_off_without_always() {
    let t = trace("a: ALL\nb: ALL\nc: 10.\n", &mut Fake::new("10.0.0.1"));
    assert_eq!(t[0].1, Some(true));
    for row in &t[1..] {
        assert_eq!(row.1, None);
        assert!(row.2.contains("line 1 matched and stopped"), "{}", row.2);
    }
}

#[test]
fn short_circuit_not_except_and_are_shown_as_evaluated() {
    // The or-list stops at its first true operand: the hostname is never asked for.
    let mut f = Fake::new("127.0.0.5");
    let why = why_of("a: 127. hostname: x.example\n", &mut f);
    assert_eq!(
        why,
        "any of (ip: 127.: yes (peer 127.0.0.5); 1 more not evaluated): yes"
    );
    assert!(f.lookups().is_empty(), "tracing asked {:?}", f.lookups());

    // EXCEPT: the right side only when the left is true.
    let why = why_of("a: 10. EXCEPT identd: bob\n", &mut f);
    assert_eq!(
        why,
        "ip: 10.: no (peer 127.0.0.5); EXCEPT not evaluated: no"
    );
    assert!(f.lookups().is_empty(), "{:?}", f.lookups());
    let mut f = Fake::new("127.0.0.5").identd("bob");
    let why = why_of("a: 127. EXCEPT identd: bob\n", &mut f);
    assert_eq!(
        why,
        "ip: 127.: yes (peer 127.0.0.5); EXCEPT identd: bob: yes (identd says 'bob'): no"
    );
    assert_eq!(
        f.lookups(),
        vec![Asked::Identd],
        "one identd lookup, not two"
    );

    // NOT and AND.
    let mut f = Fake::new("127.0.0.5");
    let why = why_of("a: NOT KNOWN AND 10.\n", &mut f);
    assert!(
        why.starts_with("all of (NOT (hnstatus: KNOWN: no (unknown"),
        "{why}"
    );
    assert!(why.ends_with("ip: 10.: no (peer 127.0.0.5)): no"), "{why}");
    let why = why_of("a: (10. 11.) && blocked\n", &mut f);
    // Merged address operands are one matcher; AND stopped at the false side.
    assert_eq!(
        why,
        "all of (ip: 10. ip: 11.: no (peer 127.0.0.5); 1 more not evaluated): no"
    );
    let why = why_of("a: 10. 11. hostname: x.example 127.\n", &mut f);
    assert_eq!(
        why,
        "any of (ip: 10. ip: 11.: no (peer 127.0.0.5); hostname: x.example: no (hostname is \
         unknown (no usable PTR name, or the lookup failed)); ip: 127.: yes (peer 127.0.0.5)): \
         yes"
    );
}

#[test]
fn a_run_of_address_rules_traces_each_rule() {
    let mut text = String::new();
    for n in 1..=5 {
        text.push_str(&format!("deny: 10.0.0.{n}\n"));
    }
    text.push_str("ok: ALL\n");
    let t = trace(&text, &mut Fake::new("10.0.0.3"));
    let got: Vec<Option<bool>> = t.iter().map(|r| r.1).collect();
    assert_eq!(
        got,
        vec![Some(false), Some(false), Some(true), None, None, None]
    );
    assert_eq!(t[2].2, "ip: 10.0.0.3: yes (peer 10.0.0.3)");
    assert_eq!(t[0].2, "ip: 10.0.0.1: no (peer 10.0.0.3)");
    assert!(
        t[3].2.contains("already in class deny (line 3)"),
        "{}",
        t[3].2
    );
}

#[test]
fn sentry_facts_are_traced() {
    let mut f = Fake::new("192.0.2.9").sentry(SentryFacts {
        trap: true,
        blocked: true,
        hits: vec![(10, 1), (20, 2), (30, 3)],
        mode: Some(policy::facts::SentryMode::Tcp),
        ipfiles: vec!["bad.list".to_owned()],
    });
    let t = trace(
        "s/nt: trap\nb/nt: blocked\nh/nt: hits: 3/1m\nm/nt: mode: tcp,udp\ni/nt: ipfile: bad.list\n",
        &mut f,
    );
    assert!(t.iter().all(|r| r.1 == Some(true)), "{t:?}");
    assert_eq!(t[0].2, "trap: yes (a trap)");
    assert!(t[2].2.contains("3 trapped ports within 60s"), "{}", t[2].2);
    assert!(t[3].2.contains("mode tcp"), "{}", t[3].2);
}
