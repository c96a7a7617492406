//! explain's description of a decision: the action text and the limit checks agree with what
//! `decide` decided.

use std::collections::HashMap;

use policy::actions::parse_actions;
use policy::decide::{decide, Counts};
use policy::explain::{action_text, limit_checks};
use policy::facts::{Classification, MatchedClass};

struct Fixed {
    ip: u32,
    class: HashMap<&'static str, u32>,
}

impl Counts for Fixed {
    fn class_count(&self, class: &str) -> u32 {
        self.class.get(class).copied().unwrap_or(0)
    }
    fn ip_count(&self) -> u32 {
        self.ip
    }
}

fn classes(names: &[&str]) -> Classification {
    Classification {
        classes: names
            .iter()
            .map(|n| MatchedClass {
                name: (*n).to_owned(),
                lineno: 1,
                label: None,
            })
            .collect(),
    }
}

/// (classes, ip count, smtp count, action, last limit check, refusal)
type Row = (
    &'static [&'static str],
    u32,
    u32,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

#[test]
fn action_and_limits_follow_the_decision() {
    let actions = parse_actions(
        "actions",
        "smtp: run /usr/sbin/smtpd -v : ipmax 2 : connmax 10\n\
         trap: msg go away : block 1h\n\
         dul: reject\n\
         spam: drop\n\
         DEFAULTMSGS: failmsg 421 busy\n",
    )
    .value
    .expect("actions load");
    let rows: &[Row] = &[
        (
            &["smtp", "GLOBAL"],
            0,
            0,
            "run /usr/sbin/smtpd -v",
            Some("GLOBAL: not in the actions file (no limits)"),
            None,
        ),
        (
            &["smtp", "GLOBAL"],
            2,
            0,
            "failmsg \"421 busy\" (from DEFAULTMSGS)",
            Some("smtp: ipmax 2 (2 counted from this address): refuses"),
            Some("ipmax"),
        ),
        (
            &["smtp", "GLOBAL"],
            1,
            10,
            "failmsg \"421 busy\" (from DEFAULTMSGS)",
            Some("smtp: connmax 10 (10 counted in class smtp): refuses"),
            Some("connmax"),
        ),
        (
            &["dul", "smtp"],
            0,
            0,
            "failmsg \"421 busy\" (from DEFAULTMSGS)",
            Some("dul: reject: refuses"),
            Some("reject"),
        ),
        (
            &["trap", "GLOBAL"],
            0,
            0,
            "msg \"go away\" : block 3600s",
            Some("GLOBAL: not in the actions file (no limits)"),
            None,
        ),
        (&["spam"], 0, 0, "drop", Some("spam: no limits"), None),
        (
            &["other"],
            0,
            0,
            "close (no matched class has an action)",
            Some("other: not in the actions file (no limits)"),
            None,
        ),
    ];
    for (members, ip, smtp, want_action, want_last, want_refusal) in rows {
        let counts = Fixed {
            ip: *ip,
            class: [("smtp", *smtp)].into_iter().collect(),
        };
        let c = classes(members);
        let d = decide(&actions, &c, &counts);
        assert_eq!(action_text(&actions, &d), *want_action, "{members:?}");
        let checks = limit_checks(&actions, &c, &counts);
        assert_eq!(checks.last().map(String::as_str), *want_last, "{members:?}");
        assert_eq!(d.refusal.map(|r| r.as_str()), *want_refusal, "{members:?}");
        // The first refusing check named is the decision's refusal.
        let refusing = checks.iter().find(|c| c.ends_with(": refuses"));
        assert_eq!(
            refusing.is_some(),
            d.refusal.is_some(),
            "{members:?}: {checks:?}"
        );
        // ... and it names the limit with the refusal's one spelling.
        if let (Some(check), Some(r)) = (refusing, d.refusal) {
            let limit = check.split_once(": ").map(|(_, l)| l).unwrap_or_default();
            assert!(limit.starts_with(r.as_str()), "{check}");
        }
    }
}
