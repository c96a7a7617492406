//! Rule evaluation order, laziness and prefetch, through the public API with a fake Facts.

mod rules_common;

use policy::facts::{HnStatus, Lookup};
use rules_common::{matched, rules, Asked, Fake};

/// The original portnanny's evaluation-order test file (line numbers matter).
const ORDER: &str = "
# this is line 2 and starts things.
a: NOT ALL
b/nt: ALL
b2/nt: NOT ALL
b/nt: ALL EXCEPT NOT ALL
c: 255.255.255.255
c: ALL
d: ALL
e/always: ALL
f/always: class: c
g/always: class: d
\tclass: d
h/always: ALL
";

#[test]
fn evaluation_order_matches_the_original() {
    let r = rules(ORDER);
    let mut f = Fake::new("127.0.0.1");
    assert_eq!(matched(&r, &mut f), "b@4 c@8 e@10 f@11 h@14 GLOBAL@0");
    assert_eq!(
        r.class_names(),
        vec!["a", "b", "b2", "c", "d", "e", "f", "g", "h"]
    );
    assert_eq!(r.len(), 11);
    assert!(!r.is_empty());
}

#[test]
fn global_only_when_something_matched() {
    let r = rules("a: NOT ALL\n");
    let mut f = Fake::new("127.0.0.1");
    assert_eq!(matched(&r, &mut f), "");
    let empty = rules("# nothing\n");
    assert!(empty.is_empty());
    assert_eq!(matched(&empty, &mut f), "");
}

#[test]
fn table_of_orders() {
    let rows: &[(&str, &str)] = &[
        // First terminal match stops everything.
        ("a: ALL\nb: ALL\n", "a@1 GLOBAL@0"),
        // /nt continues.
        ("a/nt: ALL\nb: ALL\nc: ALL\n", "a@1 b@2 GLOBAL@0"),
        ("a/nonterminal: ALL\nb: ALL\n", "a@1 b@2 GLOBAL@0"),
        // /always runs after a stop, and itself stops nothing further for /always.
        (
            "a: ALL\nb: ALL\nc/always: ALL\nd/always: ALL\n",
            "a@1 c@3 d@4 GLOBAL@0",
        ),
        // A class matched once is never evaluated again, /always or not.
        ("a/nt: ALL\na/always: ALL\nb: ALL\n", "a@1 b@3 GLOBAL@0"),
        // Second rule of the same class records its own line.
        ("a: 10.0.0.1\na: ALL\n", "a@2 GLOBAL@0"),
        // class: sees earlier matches, in order.
        ("a/nt: ALL\nb: class: a\n", "a@1 b@2 GLOBAL@0"),
        ("b/nt: class: a\na: ALL\n", "a@2 GLOBAL@0"),
        // /always with class: after a stop.
        ("a: ALL\nb/always: class: a\n", "a@1 b@2 GLOBAL@0"),
        ("a: ALL\nb/always: NOT class: a\n", "a@1 GLOBAL@0"),
        // Nothing terminal matched: every rule is tried.
        ("a/nt: NOT ALL\nb: NOT ALL\nc/nt: ALL\n", "c@3 GLOBAL@0"),
        // A rule that names GLOBAL itself does not get a second GLOBAL.
        ("GLOBAL/nt: ALL\nx: ALL\n", "GLOBAL@1 x@2"),
        // Combined notes.
        (
            "a/nt/always: ALL\nb: ALL\nc/always/nt: ALL\n",
            "a@1 b@2 c@3 GLOBAL@0",
        ),
    ];
    for (text, want) in rows {
        let r = rules(text);
        let mut f = Fake::new("127.0.0.1");
        assert_eq!(matched(&r, &mut f), *want, "{text}");
    }
}

#[test]
fn labels_and_line_numbers_are_carried() {
    let r = rules("x/label=dipDE/nt: .dip.t-dialin.net 10.\ny/label: 10.0.0.0/8  \n");
    let mut f = Fake::new("10.1.2.3");
    let c = r.evaluate(&mut f);
    let got: Vec<(String, u32, Option<String>)> = c
        .classes
        .iter()
        .map(|m| (m.name.clone(), m.lineno, m.label.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("x".to_owned(), 1, Some("dipDE".to_owned())),
            ("y".to_owned(), 2, Some("10.0.0.0/8".to_owned())),
            ("GLOBAL".to_owned(), 0, None),
        ]
    );
}

#[test]
fn continuation_lines_keep_the_starting_line_number() {
    let r = rules("# c\na: NOT ALL\nb:\n  10.0.0.1\n  # inner\n  10.0.0.2\n");
    let mut f = Fake::new("10.0.0.2");
    assert_eq!(matched(&r, &mut f), "b@3 GLOBAL@0");
}

#[test]
fn matched_class_rules_cause_no_lookups() {
    // The second 'a' rule would need the hostname, but a already matched.
    let r = rules("a/nt: ALL\na: KNOWN\nb: dnsbl: bl.example\n");
    let mut f = Fake::new("10.0.0.1");
    assert_eq!(matched(&r, &mut f), "a@1 GLOBAL@0");
    assert_eq!(f.lookups(), vec![Asked::Dnsbl("bl.example".into())]);
}

#[test]
fn stopped_rules_cause_no_lookups() {
    let r = rules("a: ALL\nb: KNOWN identd: x\n");
    let mut f = Fake::new("10.0.0.1");
    assert_eq!(matched(&r, &mut f), "a@1 GLOBAL@0");
    assert!(f.log.is_empty(), "{:?}", f.log);
}

#[test]
fn short_circuit_inside_expressions() {
    let rows: &[(&str, &str, Vec<Asked>)] = &[
        // An address hit ends the or-list before the identd lookup.
        ("128.100. identd: bad-idea", "128.100.1.1", vec![]),
        ("128.100. identd: bad-idea", "10.0.0.1", vec![Asked::Identd]),
        // AND stops at the first false.
        ("128.100. AND identd: cks", "10.0.0.1", vec![]),
        ("identd: cks AND 128.100.", "10.0.0.1", vec![Asked::Identd]),
        // EXCEPT does not evaluate the right side when the left is false.
        ("10.0.0.2 EXCEPT KNOWN", "10.0.0.1", vec![]),
        ("10.0.0.1 EXCEPT KNOWN", "10.0.0.1", vec![Asked::Host]),
        // NOT evaluates its operand.
        ("NOT firsttime", "10.0.0.1", vec![Asked::Seen]),
        // Left to right within an or-list.
        (
            "dnsbl: a.example dnsbl: b.example",
            "10.0.0.1",
            vec![
                Asked::Dnsbl("a.example".into()),
                Asked::Dnsbl("b.example".into()),
            ],
        ),
    ];
    for (expr, ip, want) in rows {
        let r = rules(&format!("x: {expr}\n"));
        let mut f = Fake::new(ip);
        r.evaluate(&mut f);
        assert_eq!(&f.lookups(), want, "{expr} from {ip}");
    }
}

#[test]
fn or_lists_prefetch_their_lookups_together() {
    let r = rules("bl: 10.9.9.9 dnsbl: a.example dnsbl: b.example KNOWN answerson: 25\n");
    // An address hit first: no lookups, no prefetch.
    let mut f = Fake::new("10.9.9.9");
    assert_eq!(matched(&r, &mut f), "bl@1 GLOBAL@0");
    assert!(f.log.is_empty());
    // Otherwise one prefetch of everything, then the lookups in order until one matches.
    let mut f = Fake::new("10.0.0.1").listed("b.example", "127.0.0.2");
    assert_eq!(matched(&r, &mut f), "bl@1 GLOBAL@0");
    assert_eq!(
        f.log,
        vec![
            Asked::Prefetch(vec![
                Lookup::Dnsbl("a.example".into()),
                Lookup::Dnsbl("b.example".into()),
                Lookup::Host,
                Lookup::AnswersOn(25),
            ]),
            Asked::Dnsbl("a.example".into()),
            Asked::Dnsbl("b.example".into()),
        ]
    );
}

#[test]
fn single_lookup_or_lists_do_not_prefetch() {
    let r = rules("x: KNOWN .example.com re: foo\ny: 10.9.9.9\nz: dnsbl: a.example\n");
    let mut f = Fake::new("10.0.0.1");
    r.evaluate(&mut f);
    assert!(f.prefetches().is_empty(), "{:?}", f.log);
}

#[test]
fn prefetch_does_not_change_results() {
    // The same rules with and without a prefetch-worthy or-list give the same answers.
    let with = rules("x: dnsbl: a.example dnsbl: b.example/127.0.0.3 forwhn: h.example\n");
    let without =
        rules("x/nt: dnsbl: a.example\nx/nt: dnsbl: b.example/127.0.0.3\nx: forwhn: h.example\n");
    let cases = [
        Fake::new("10.0.0.1"),
        Fake::new("10.0.0.1").listed("b.example", "127.0.0.2"),
        Fake::new("10.0.0.1").listed("b.example", "127.0.0.3"),
        Fake::new("10.0.0.1").resolves("h.example", "10.0.0.1"),
        Fake::new("10.0.0.1").listed("a.example", "127.0.0.2"),
    ];
    for f in cases {
        let mut a = f.clone();
        let mut b = f.clone();
        let ca: Vec<String> = with.evaluate(&mut a).names().map(str::to_owned).collect();
        let cb: Vec<String> = without
            .evaluate(&mut b)
            .names()
            .map(str::to_owned)
            .collect();
        assert_eq!(ca, cb);
        assert_eq!(a.lookups(), b.lookups());
    }
}

#[test]
fn time_matchers_ask_for_history_only_when_reached() {
    let r = rules("new: 10.0.0.1 firsttime\nold: waited: 1h\n");
    let mut f = Fake::new("10.0.0.1").seen(7200, Some(10));
    assert_eq!(matched(&r, &mut f), "new@1 GLOBAL@0");
    assert!(f.log.is_empty());
    let mut f = Fake::new("10.0.0.2").seen(7200, Some(10));
    assert_eq!(matched(&r, &mut f), "old@2 GLOBAL@0");
    assert_eq!(f.lookups(), vec![Asked::Seen, Asked::Seen]);
}

#[test]
fn hostname_rules_only_look_up_once_needed() {
    let r = rules("lan: 10.\nnames: .example.com\n");
    let mut f = Fake::new("10.1.1.1").host(HnStatus::Good, "a.example.com");
    assert_eq!(matched(&r, &mut f), "lan@1 GLOBAL@0");
    assert!(f.log.is_empty());
    let mut f = Fake::new("192.0.2.1").host(HnStatus::Good, "a.example.com");
    assert_eq!(matched(&r, &mut f), "names@2 GLOBAL@0");
    assert_eq!(f.lookups(), vec![Asked::Host]);
}

#[test]
fn rules_are_shareable_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<policy::rules::Rules>();
}

#[test]
fn runs_of_one_line_address_rules_behave_like_single_rules() {
    // The same blocklist as one rule per line (merged into one lookup), with overlaps, labels,
    // v6, and a different rule breaking the run.
    let text = "\
bl/label=first: 10.0.0.0/8
bl/label=second: 10.1.0.0/16
bl: 192.168.1.1-192.168.1.9
bl: 192.168.1.5
bl/label=v6: 2001:db8::/32
other/nt: 172.16.
bl: 172.16.0.1
bl: 172.16.0.2
nt/nt: 8.8.8.8
nt/nt: 8.8.4.4
loc: localip: 127.0.0.1
loc: localip: 127.0.0.2
last: ALL
";
    let r = rules(text);
    let rows: &[(&str, &str)] = &[
        ("10.1.2.3", "bl@1 GLOBAL@0"),
        ("10.2.0.0", "bl@1 GLOBAL@0"),
        ("192.168.1.5", "bl@3 GLOBAL@0"),
        ("2001:db8::9", "bl@5 GLOBAL@0"),
        ("172.16.0.2", "other@6 bl@8 GLOBAL@0"),
        ("172.16.9.9", "other@6 loc@11 GLOBAL@0"),
        ("8.8.4.4", "nt@10 loc@11 GLOBAL@0"),
        ("1.1.1.1", "loc@11 GLOBAL@0"),
    ];
    for (ip, want) in rows {
        let mut f = Fake::new(ip);
        assert_eq!(matched(&r, &mut f), *want, "{ip}");
        assert!(f.log.is_empty());
    }
    let mut f = Fake::new("10.1.2.3");
    let c = r.evaluate(&mut f);
    assert_eq!(c.classes[0].label.as_deref(), Some("first"));
    // A run of 100,000 one-line rules: the first containing rule is reported.
    let mut big = String::new();
    for i in 0..100_000u32 {
        big.push_str(&format!(
            "big: 10.{}.{}.{}\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ));
    }
    big.push_str("big: 10.0.0.0/8\n");
    let r = rules(&big);
    let mut f = Fake::new("10.1.134.160");
    assert_eq!(matched(&r, &mut f), "big@100001 GLOBAL@0");
    let mut f = Fake::new("10.1.134.159");
    assert_eq!(matched(&r, &mut f), "big@100000 GLOBAL@0");
    let mut f = Fake::new("10.200.0.0");
    assert_eq!(matched(&r, &mut f), "big@100001 GLOBAL@0");
    let mut f = Fake::new("11.0.0.0");
    assert_eq!(matched(&r, &mut f), "");
}

#[test]
fn consecutive_dns_rules_prefetch_together() {
    let text = "\
d1/label=a: dnsbl: a.example
d2: dnsbl: b.example
d3: .dialup.example
lan: 10.
d4: dnsbl: c.example
who: identd: x
port: answerson: 113
";
    let r = rules(text);
    let mut f = Fake::new("192.0.2.1");
    assert_eq!(matched(&r, &mut f), "");
    assert_eq!(
        f.log,
        vec![
            Asked::Prefetch(vec![
                Lookup::Dnsbl("a.example".into()),
                Lookup::Dnsbl("b.example".into()),
                Lookup::Host,
            ]),
            Asked::Dnsbl("a.example".into()),
            Asked::Dnsbl("b.example".into()),
            Asked::Host,
            Asked::Dnsbl("c.example".into()),
            Asked::Identd,
            Asked::AnswersOn(113),
        ]
    );
    // The first rule matches: the others were announced but are not read.
    let mut f = Fake::new("192.0.2.1").listed("a.example", "127.0.0.2");
    assert_eq!(matched(&r, &mut f), "d1@1 GLOBAL@0");
    assert_eq!(f.lookups(), vec![Asked::Dnsbl("a.example".into())]);
    assert_eq!(f.prefetches().len(), 1);
    // A skipped first rule (class already matched) still lets the block be announced from the
    // next rule that is evaluated.
    let r = rules("d1/nt: ALL\nd1: dnsbl: a.example\nd2: dnsbl: b.example\nd3: dnsbl: c.example\n");
    let mut f = Fake::new("192.0.2.1");
    assert_eq!(matched(&r, &mut f), "d1@1 GLOBAL@0");
    assert_eq!(
        f.prefetches(),
        vec![vec![
            Lookup::Dnsbl("b.example".into()),
            Lookup::Dnsbl("c.example".into()),
        ]]
    );
}

#[test]
fn many_nonterminal_classes_are_each_matched_once() {
    // Enough classes that evaluation switches from a list to a set of matched classes.
    let mut text = String::new();
    for _ in 0..2 {
        for i in 0..50 {
            text.push_str(&format!("c{i}/nt: ALL EXCEPT class: c{i}\n"));
        }
    }
    text.push_str("end: class: c49\n");
    let r = rules(&text);
    let mut f = Fake::new("10.0.0.1");
    let c = r.evaluate(&mut f);
    let lines: Vec<u32> = c.classes.iter().map(|m| m.lineno).collect();
    let mut want: Vec<u32> = (1..=50).collect();
    want.push(101);
    want.push(0);
    assert_eq!(lines, want);
}
