//! Property tests: the nanny.conf and actions parsers, the decision procedure and substitution
//! never panic on any input, and what they return is consistent.

use std::net::SocketAddr;

use proptest::prelude::*;

use policy::actions::parse_actions;
use policy::conf::parse_conf;
use policy::decide::{decide, Counts};
use policy::expand::{format_template, render, ExpandFacts, Value};
use policy::facts::{Classification, MatchedClass};
use policy::Severity;

/// Text made mostly of the characters the languages care about, so the parsers get past their
/// first checks often.
fn texty() -> impl Strategy<Value = String> {
    let words = prop::sample::select(
        vec![
            "a:",
            "b:",
            "GLOBAL:",
            "DEFAULTMSGS:",
            "DEFAULT-REJECT:",
            " : ",
            ":",
            " ",
            "\t",
            "\n",
            "\n ",
            "#",
            "a",
            "b",
            "0",
            "1",
            "-3",
            "%(ip)s",
            "%(x)s",
            "%",
            "%%",
            "%(",
            ")",
            "listen",
            "80@",
            "@*",
            "::1",
            "rulefile",
            "actionfile",
            "user",
            "expireevery",
            "0",
            "10s",
            "5ms",
            "é",
            "\r",
        ]
        .into_iter()
        .chain(policy::actions::DIRECTIVES.iter().copied())
        .collect::<Vec<_>>(),
    );
    prop::collection::vec(words, 0..40).prop_map(|v| v.concat())
}

/// Plausible actions files: mostly valid lines, so the decision and rendering get exercised.
fn action_file() -> impl Strategy<Value = String> {
    let class = prop::sample::select(vec![
        "a",
        "b",
        "c",
        "d",
        "GLOBAL",
        "DEFAULTMSGS",
        "DEFAULT-REJECT",
        "DEFAULT-IPMAX",
        "DEFAULT-CONNMAX",
    ]);
    let directive = prop::sample::select(vec![
        "run /bin/x %(ip)s %(label)s",
        "msg hi %(connsum)s%(eol)s",
        "failrun /bin/f %(limit)s",
        "failmsg no %(class)s",
        "drop",
        "reject",
        "quiet",
        "log",
        "log ok %(lineno)d",
        "faillog bad %(hostname)s %(limit)s",
        "norepeatlog",
        "record r %(class)s",
        "ipmax 1",
        "ipmax 0",
        "connmax 2",
        "connmax -1",
        "setenv V %(ip)s",
        "setenv W x",
        "subst s %(ip)s",
        "subst t %(s)s",
        "see a",
        "see b",
        "see c",
        "see d",
        "log %(t)s %(identd)s",
    ]);
    let line = (class, prop::collection::vec(directive, 1..5))
        .prop_map(|(c, ds)| format!("{c}: {}\n", ds.join(" : ")));
    prop::collection::vec(line, 0..8).prop_map(|v| v.concat())
}

struct Counted(u32);
impl Counts for Counted {
    fn class_count(&self, class: &str) -> u32 {
        self.0.wrapping_add(class.len() as u32) % 3
    }
    fn ip_count(&self) -> u32 {
        self.0 % 4
    }
}

fn diag_sane(text: &str, d: &policy::Diagnostic) {
    let lines = text.lines().count().max(1) as u32;
    assert!(d.line >= 1 && d.line <= lines, "{d} in {text:?}");
    assert!(d.col >= 1, "{d}");
    assert!(d.width >= 1, "{d}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn actions_never_panic(text in prop_oneof![texty(), any::<String>(), action_file(), action_file()], n in 0u32..12) {
        let p = parse_actions("actions", &text);
        prop_assert_eq!(p.value.is_some(), !p.has_errors());
        for d in &p.diagnostics {
            diag_sane(&text, d);
        }
        if let Some(a) = p.value {
            let names = a.class_names();
            for (i, c) in a.iter().enumerate() {
                let chain: Vec<u32> = a.chain(i as u32).take(a.len() + 1).collect();
                prop_assert_eq!(chain.first().copied(), Some(i as u32));
                let mut seen = std::collections::HashSet::new();
                for &j in &chain {
                    prop_assert!(a.get(j).is_some());
                    prop_assert!(seen.insert(j), "chain repeats");
                }
                prop_assert!(!(c.run.is_some() && c.msg.is_some()));
                prop_assert!(!(c.failrun.is_some() && c.failmsg.is_some()));
            }
            // Decide and render for every class (plus GLOBAL and an unknown one).
            let mut members: Vec<MatchedClass> = names
                .iter()
                .map(|name| MatchedClass { name: name.clone(), lineno: n, label: Some("x_y".into()) })
                .collect();
            members.push(MatchedClass { name: "GLOBAL".into(), lineno: 0, label: None });
            members.push(MatchedClass { name: "nothere".into(), lineno: 0, label: None });
            for k in 0..members.len() {
                let classes = Classification { classes: members[k..].to_vec() };
                let d = decide(&a, &classes, &Counted(n));
                if let Some(i) = d.action_class {
                    prop_assert!((i as usize) < a.len());
                }
                let facts = ExpandFacts {
                    remote: SocketAddr::from(([192, 0, 2, 1], 1234)),
                    local: SocketAddr::from(([127, 0, 0, 1], 25)),
                    host: None,
                    identd: Some("u"),
                    seen: None,
                    classes: &classes,
                };
                let r = render(&a, &d, &facts, n % 2 == 0);
                prop_assert_eq!(r.records.len(), d.records.len());
                prop_assert_eq!(r.log.is_some(), d.log && d.action_class.is_some());
            }
        }
    }

    #[test]
    fn conf_never_panics(text in prop_oneof![texty(), any::<String>()]) {
        let p = parse_conf("nanny.conf", &text);
        prop_assert_eq!(p.value.is_some(), !p.has_errors());
        for d in &p.diagnostics {
            prop_assert!(d.line >= 1 && d.col >= 1);
            prop_assert_eq!(d.severity, Severity::Error);
        }
        if let Some(c) = p.value {
            prop_assert!(!c.listens.is_empty());
            prop_assert!(c.listens.iter().all(|l| l.port != 0));
            let again = parse_conf("again", &c.to_string()).value;
            prop_assert_eq!(again.as_ref(), Some(&c));
        }
    }

    #[test]
    fn templates_never_panic(t in prop_oneof![texty(), any::<String>()]) {
        let _ = format_template(&t, &|n| {
            if n.len() % 2 == 0 { Ok(Value::Str(n.to_owned())) } else { Ok(Value::Int(n.len() as i64 - 3)) }
        });
    }

    #[test]
    fn escaped_text_comes_back(t in any::<String>()) {
        let escaped = t.replace('%', "%%");
        let got = format_template(&escaped, &|n| Err(policy::expand::ExpandErrorKind::Unknown(n.to_owned())));
        prop_assert_eq!(got, Ok(t));
    }
}
