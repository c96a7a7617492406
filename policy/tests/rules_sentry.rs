//! The sentry matchers (issue 10): `trap`, `blocked`, `hits:`, `mode:`, `ipfile:`; their
//! defaults for ordinary connections, printing, `Rules::ipfiles` and golden diagnostics.

mod rules_common;

use policy::facts::SentryMode;
use rules_common::{diags, expr_matches, rules, Asked, Fake, SentryFacts};

fn trapped(mode: SentryMode, hits: &[(u64, u16)]) -> Fake {
    Fake::new("192.0.2.7").sentry(SentryFacts {
        trap: true,
        hits: hits.to_vec(),
        mode: Some(mode),
        ..SentryFacts::default()
    })
}

#[test]
fn an_ordinary_connection_is_not_a_trap() {
    for expr in [
        "trap",
        "blocked",
        "hits: 1",
        "mode: tcp,udp,stcp,sudp,atcp,audp",
        "ipfile: /etc/nanny/ignore",
    ] {
        let mut f = Fake::new("192.0.2.7");
        assert!(!expr_matches(expr, &mut f), "{expr}");
        assert!(expr_matches(&format!("! {expr}"), &mut f), "! {expr}");
    }
}

#[test]
fn sentry_matchers() {
    // label, expression, facts, want
    let hits = [(10, 1), (20, 7), (30, 7), (4000, 9)];
    let rows: Vec<(&str, &str, Fake, bool)> = vec![
        ("trap", "trap", trapped(SentryMode::Tcp, &[]), true),
        (
            "blocked",
            "blocked",
            Fake::new("192.0.2.7").sentry(SentryFacts {
                blocked: true,
                ..SentryFacts::default()
            }),
            true,
        ),
        (
            "hits distinct ports",
            "hits: 2",
            trapped(SentryMode::Tcp, &hits),
            true,
        ),
        (
            "hits not reached",
            "hits: 3",
            trapped(SentryMode::Tcp, &hits),
            false,
        ),
        (
            "hits wider window",
            "hits: 3/2h",
            trapped(SentryMode::Tcp, &hits),
            true,
        ),
        (
            "hits narrow window",
            "hits: 2/15s",
            trapped(SentryMode::Tcp, &hits),
            false,
        ),
        (
            "mode one",
            "mode: stcp",
            trapped(SentryMode::Stcp, &[]),
            true,
        ),
        (
            "mode other",
            "mode: tcp",
            trapped(SentryMode::Stcp, &[]),
            false,
        ),
        (
            "mode list",
            "mode: atcp,audp",
            trapped(SentryMode::Audp, &[]),
            true,
        ),
        (
            "ipfile",
            "ipfile: ignore",
            Fake::new("192.0.2.7").sentry(SentryFacts {
                ipfiles: vec!["ignore".to_owned()],
                ..SentryFacts::default()
            }),
            true,
        ),
        (
            "ipfile other file",
            "ipfile: other",
            Fake::new("192.0.2.7").sentry(SentryFacts {
                ipfiles: vec!["ignore".to_owned()],
                ..SentryFacts::default()
            }),
            false,
        ),
        (
            "portsentry's SCAN_TRIGGER on a trap, not for ignored hosts",
            "trap AND hits: 2 EXCEPT ipfile: ignore",
            trapped(SentryMode::Tcp, &hits),
            true,
        ),
    ];
    for (label, expr, mut facts, want) in rows {
        assert_eq!(expr_matches(expr, &mut facts), want, "{label}: {expr}");
    }
}

#[test]
fn hits_asks_with_its_window_and_needs_no_lookup() {
    let mut f = trapped(SentryMode::Tcp, &[]);
    assert!(!expr_matches("hits: 1 hits: 1/10m", &mut f));
    assert_eq!(f.lookups(), vec![Asked::Hits(3600), Asked::Hits(600)]);
    let r = rules("a: trap\nb: blocked hits: 3 mode: tcp ipfile: x\n");
    assert!(!r.can_need_lookups());
}

#[test]
fn printing_round_trips() {
    let rows: &[(&str, &str)] = &[
        ("trap", "trap"),
        ("blocked", "blocked"),
        ("hits: 3", "hits: 3/3600s"),
        ("hits: 3/10m", "hits: 3/600s"),
        ("mode: tcp", "mode: tcp"),
        ("mode: stcp,atcp,stcp", "mode: stcp,atcp"),
        (
            "ipfile: /etc/portsentry/ignore",
            "ipfile: /etc/portsentry/ignore",
        ),
        ("ipfile: 'a b'", "ipfile: 'a b'"),
    ];
    for (input, want) in rows {
        let r = rules(&format!("x: {input}\n"));
        let printed = r.rules()[0].expr.to_string();
        assert_eq!(printed, *want, "{input}");
        let again = rules(&format!("x: {printed}\n"));
        assert_eq!(again.rules()[0].expr.to_string(), printed, "{input}");
    }
}

#[test]
fn ipfiles_lists_each_file_once_in_order() {
    let r = rules("a: ipfile: b ipfile: a\nc: ! ipfile: b AND (ALL EXCEPT ipfile: c)\nd: ALL\n");
    assert_eq!(r.ipfiles(), vec!["b", "a", "c"]);
    assert!(rules("a: ALL\n").ipfiles().is_empty());
}

#[test]
fn golden_diagnostics() {
    let rows: &[(&str, &str)] = &[
        ("x: hits: 0\n", "rules:1:10: error[R021]: hits: '0' must be a number of ports (1 or more), optionally followed by /TIMESPEC, as in 3 or 3/10m"),
        ("x: hits: many\n", "rules:1:10: error[R021]: hits: 'many' must be a number of ports (1 or more), optionally followed by /TIMESPEC, as in 3 or 3/10m"),
        ("x: hits: 3/10\n", "rules:1:10: error[R021]: hits: '3/10': a time must end in s, m, h or d (as in 30s, 10m, 2h, 1d)"),
        ("x: hits: 3/0s\n", "rules:1:10: error[R021]: hits: '3/0s': the window must be longer than 0s"),
        ("x: mode: tcp,icmp\n", "rules:1:10: error[R021]: mode: 'icmp' is not a sentry mode (tcp, udp, stcp, sudp, atcp or audp; several are separated by commas)"),
        ("x: mode: ''\n", "rules:1:10: error[R021]: mode: '' is not a sentry mode (tcp, udp, stcp, sudp, atcp or audp; several are separated by commas)"),
        ("x: ipfile: ''\n", "rules:1:12: error[R021]: ipfile: '' is not a file name"),
        ("x: trap: 1\n", "rules:1:4: error[R020]: trap takes no argument; write it without the ':'"),
        ("x: hits:3\n", "rules:1:4: error[R023]: 'hits:3' is one word; a matcher and its argument need a space between them: write 'hits: 3'"),
    ];
    for (text, want) in rows {
        assert_eq!(diags(text), vec![want.to_string()], "{text}");
    }
}
