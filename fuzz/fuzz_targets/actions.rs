//! Fuzz target: the actions-file parser, the decision procedure and substitution.
//!
//! Runs only under libFuzzer, on arbitrary bytes standing in for an administrator's file.
//! Properties checked, beyond "no panic":
//! - `parse_actions` returns a value exactly when it reports no error, is deterministic, and
//!   every diagnostic points inside the file, in position order;
//! - in a loaded table every `see` chain starts with its own class, stays in the table and
//!   never repeats a class; no class has both run and msg, or both failrun and failmsg;
//! - `decide`, for every suffix of the class list (plus GLOBAL and an undefined class), under
//!   counts derived from the input: names a class in the table, counts exactly run/failrun, and
//!   its disposition matches the class's directives;
//! - `render` gives one record result per record, a log exactly when the decision asks for one,
//!   an argv exactly for run/failrun and a message exactly for msg (not msgfile)/failmsg; with substitutions
//!   on or off.

#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use policy::decide::{decide, Counts, Disposition};
use policy::expand::{render, ExpandFacts};
use policy::facts::{Classification, MatchedClass};

/// Counts derived from one input byte, the same for every call.
struct Seeded(u8);

impl Counts for Seeded {
    fn class_count(&self, class: &str) -> u32 {
        (u32::from(self.0) + class.len() as u32) % 4
    }
    fn ip_count(&self) -> u32 {
        u32::from(self.0 % 3)
    }
}

/// The properties, as a plain function so they can be replayed over a corpus.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = policy::actions::parse_actions("fuzz", text);
    assert_eq!(parsed.value.is_some(), !parsed.has_errors());
    let again = policy::actions::parse_actions("fuzz", text);
    assert_eq!(again.value, parsed.value);
    assert_eq!(again.diagnostics, parsed.diagnostics);
    let lines = text.lines().count().max(1) as u32;
    for d in &parsed.diagnostics {
        assert!(d.line >= 1 && d.line <= lines && d.col >= 1, "{d}");
    }
    assert!(parsed
        .diagnostics
        .windows(2)
        .all(|w| (w[0].line, w[0].col) <= (w[1].line, w[1].col)));
    let Some(actions) = parsed.value else {
        return;
    };
    for (i, c) in actions.iter().enumerate() {
        // Bounded: a chain that repeats is caught by the set long before this many steps.
        let chain: Vec<u32> = actions.chain(i as u32).take(actions.len() + 1).collect();
        assert_eq!(chain.first().copied(), Some(i as u32));
        let mut seen = std::collections::HashSet::new();
        for &j in &chain {
            assert!(actions.get(j).is_some());
            assert!(seen.insert(j), "chain of {} repeats", c.name);
        }
        assert!(!(c.run.is_some() && c.msg.is_some()));
        assert!(!(c.failrun.is_some() && c.failmsg.is_some()));
        assert_eq!(actions.index_of(&c.name), Some(i as u32));
    }

    let seed = data.first().copied().unwrap_or(0);
    let mut members: Vec<MatchedClass> = actions
        .class_names()
        .into_iter()
        .map(|name| MatchedClass {
            name,
            lineno: u32::from(seed),
            label: Some("a_label".to_owned()),
        })
        .collect();
    for extra in ["GLOBAL", "not-in-the-file"] {
        members.push(MatchedClass {
            name: extra.to_owned(),
            lineno: 0,
            label: None,
        });
    }
    for k in 0..members.len() {
        let classes = Classification {
            classes: members[k..].to_vec(),
        };
        let d = decide(&actions, &classes, &Seeded(seed));
        assert_eq!(
            d.counted,
            matches!(d.disposition, Disposition::Run | Disposition::FailRun)
        );
        match d.action_class.and_then(|i| actions.get(i)) {
            None => {
                assert!(d.action_class.is_none());
                assert_eq!(d.disposition, Disposition::Close);
            }
            Some(c) => match d.disposition {
                Disposition::Run => assert!(c.run.is_some() && !c.drop),
                Disposition::Msg => assert!(c.has_msg() && !c.drop),
                Disposition::FailRun => assert!(c.failrun.is_some() && d.refusal.is_some()),
                Disposition::FailMsg => assert!(d.refusal.is_some() && c.failrun.is_none()),
                Disposition::Close => {}
            },
        }
        for &r in &d.records {
            assert!(actions.get(r).is_some_and(|c| c.record.is_some()));
        }
        let facts = ExpandFacts {
            remote: SocketAddr::from(([192, 0, 2, seed], 1234)),
            local: SocketAddr::from(([127, 0, 0, 1], 25)),
            host: None,
            identd: (seed % 2 == 0).then_some("someone"),
            seen: None,
            classes: &classes,
        };
        for subst in [true, false] {
            let r = render(&actions, &d, &facts, subst);
            assert_eq!(r.records.len(), d.records.len());
            assert_eq!(r.log.is_some(), d.log && d.action_class.is_some());
            assert_eq!(
                r.argv.is_some(),
                d.action_class.is_some()
                    && matches!(d.disposition, Disposition::Run | Disposition::FailRun)
            );
            // A msgfile's bytes are the parent's: nothing is rendered for them.
            let msgfile = d
                .action_class
                .and_then(|i| actions.get(i))
                .is_some_and(|c| c.msgfile.is_some());
            assert_eq!(
                r.message.is_some(),
                d.action_class.is_some()
                    && match d.disposition {
                        Disposition::Msg => !msgfile,
                        Disposition::FailMsg => true,
                        _ => false,
                    }
            );
            if !subst {
                // Literal strings never fail.
                if let Some(m) = &r.message {
                    assert!(m.is_ok());
                }
                if let Some(a) = &r.argv {
                    assert!(a.is_ok());
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| check(data));
