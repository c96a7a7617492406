//! explain against real connections: for a table of cases across every matcher kind, the
//! dry run's classes, action class and admission must be what a `ConnAccepted` from the same
//! address then gets, and the dry run must leave counts and history as they were. Also the
//! lookup metrics after known lookups.
//!
//! The test plays the parent and the resolver (a scripted fake answering by query), as the
//! other classifier tests do.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use privsep::control::{ExplainAsk, ExplainReport, LookupMetrics, LOOKUP_BUCKETS_MS};
use privsep::proto::{
    Answer, ClassifierToParent, ClassifierToResolver, ConnId, Decision, HnStatus, HostFacts,
    HostName, IdentUser, ParentToClassifier, Query, ReqId, ResolverToClassifier, SentryMode,
};

use super::{addr, recv_within, settings, start, Running, QUIET, WAIT};

/// What the fake resolver knows about the test peer.
#[derive(Clone, Default)]
struct World {
    host: Option<&'static str>,
    ident: Option<&'static str>,
    listed: Vec<&'static str>,
    forward: Vec<(&'static str, &'static str)>,
    answers: Vec<u16>,
    /// Lookups left unanswered (to time out).
    silent: bool,
}

impl World {
    fn answer(&self, query: &Query) -> Answer {
        match query {
            Query::Host { .. } => Answer::Host(match self.host {
                Some(h) => HostFacts {
                    status: HnStatus::Good,
                    claimed: Some(HostName::try_from(h.to_string()).unwrap()),
                },
                None => HostFacts {
                    status: HnStatus::Unknown,
                    claimed: None,
                },
            }),
            Query::Identd { .. } => Answer::Identd(
                self.ident
                    .map(|u| IdentUser::try_from(u.to_string()).unwrap()),
            ),
            Query::Dnsbl { zone, .. } => Answer::Addrs(if self.listed.contains(&zone.as_str()) {
                vec!["127.0.0.2".parse().unwrap()]
            } else {
                Vec::new()
            }),
            Query::Forward { name } => Answer::Addrs(
                self.forward
                    .iter()
                    .filter(|(n, _)| *n == name.as_str())
                    .map(|(_, a)| a.parse().unwrap())
                    .collect(),
            ),
            Query::AnswersOn { port, .. } => Answer::AnswersOn(self.answers.contains(port)),
        }
    }
}

/// Serve the resolver from `world` until the classifier tells the parent something (logs
/// skipped); returns it and the lookups asked.
fn serve(run: &mut Running, world: &World) -> (ClassifierToParent, Vec<Query>) {
    let deadline = Instant::now() + WAIT;
    let mut asked = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "no answer from the classifier");
        if let Ok(Some(ClassifierToResolver::Lookup { req, query })) = run.resolver.try_recv() {
            if !world.silent {
                run.resolver
                    .send(&ResolverToClassifier::LookupResult {
                        req,
                        query: query.clone(),
                        answer: world.answer(&query),
                    })
                    .unwrap();
            }
            asked.push(query);
            continue;
        }
        match run.parent.try_recv() {
            Ok(Some(ClassifierToParent::Log(_))) => continue,
            Ok(Some(msg)) => return (msg, asked),
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("parent channel: {e}"),
        }
    }
}

fn ask(remote: &str, local: &str, world: &World, give_ident: bool) -> ParentToClassifier {
    ParentToClassifier::Explain {
        req: ReqId(7),
        ask: ExplainAsk {
            addr: remote.parse().unwrap(),
            local: None,
            ident: world
                .ident
                .filter(|_| give_ident)
                .map(|u| IdentUser::try_from(u.to_string()).unwrap()),
            hostname: None,
        },
        local: addr(local),
    }
}

fn explain(run: &mut Running, msg: ParentToClassifier, world: &World) -> ExplainReport {
    run.parent.send(&msg).unwrap();
    match serve(run, world).0 {
        ClassifierToParent::Explained { req, report } => {
            assert_eq!(req, ReqId(7));
            report
        }
        other => panic!("expected Explained, got {other:?}"),
    }
}

fn connect(run: &mut Running, conn: u64, remote: &str, local: &str, world: &World) -> Verdict {
    run.parent
        .send(&ParentToClassifier::ConnAccepted {
            conn: ConnId(conn),
            remote: SocketAddr::new(remote.parse().unwrap(), 40000),
            local: addr(local),
            trap: None,
        })
        .unwrap();
    match serve(run, world).0 {
        ClassifierToParent::Verdict {
            conn: c,
            decision,
            facts,
            ..
        } => {
            assert_eq!(c, ConnId(conn));
            Verdict {
                classes: facts
                    .classes
                    .iter()
                    .map(|c| c.name.as_str().to_string())
                    .collect(),
                decision,
            }
        }
        other => panic!("expected a verdict, got {other:?}"),
    }
}

struct Verdict {
    classes: Vec<String>,
    decision: Decision,
}

/// The action class's name, from the same actions text the classifier loaded.
fn class_name(actions: &str, d: &Decision) -> Option<String> {
    let table = policy::actions::parse_actions("actions", actions)
        .value
        .unwrap();
    d.action_class
        .and_then(|i| table.get(i))
        .map(|c| c.name.clone())
}

fn agree(label: &str, actions: &str, report: &ExplainReport, v: &Verdict) {
    assert_eq!(report.classes, v.classes, "{label}: classes");
    assert_eq!(
        report.action_class,
        class_name(actions, &v.decision),
        "{label}: action class"
    );
    assert_eq!(
        report.admitted,
        v.decision.refusal.is_none(),
        "{label}: admission"
    );
    assert_eq!(
        report.refusal.as_deref(),
        v.decision.refusal.map(|r| r.as_str()),
        "{label}: refusal"
    );
}

const ACTIONS: &str = "\
lan: run /bin/true : ipmax 1
named: msg hello named
bad: msg go away
ident: msg hello ident
listed: msg listed
fw: msg fw
ans: msg answers
local25: msg smtp
new: msg new
seen: msg seen again
blk: drop
scan: msg scanner
hnu: msg unknown host
other: msg other
";

/// One rule per matcher kind; each case's peer matches exactly one of them first.
const RULES: &str = "\
blk: blocked
scan: hits: 1
lan: 10.1.0.0/16
named: hostname: .example.com
hnu: hnstatus: unknown AND 10.9.
bad: re: '^bad' EXCEPT ip: 10.8.0.1
ident: 10.2. AND identd: alice
listed: dnsbl: bl.example
fw: forwhn: fw.example
ans: 10.4. AND answerson: 8080
local25: local: 25@
new: 10.6. AND firsttime
seen: 10.6. AND seenwithin: 1h
other: ALL
";

#[test]
fn explain_agrees_with_real_connections_for_every_matcher_kind() {
    let mut run = start(RULES, ACTIONS, settings(2, None));
    // The sentry state the blocked/hits cases need, set up the way real traffic does.
    run.parent
        .send(&ParentToClassifier::Blocked {
            addrs: vec!["10.7.0.1".parse().unwrap()],
            on: true,
        })
        .unwrap();
    run.parent
        .send(&ParentToClassifier::ConnAccepted {
            conn: ConnId(900),
            remote: addr("10.7.0.2:5555"),
            local: addr("127.0.0.1:1"),
            trap: Some(SentryMode::Tcp),
        })
        .unwrap();
    let _ = serve(&mut run, &World::default());

    let w = World::default;
    // (label, peer, local, world, want action class)
    let cases: Vec<(&str, &str, &str, World, &str)> = vec![
        ("blocked", "10.7.0.1", "127.0.0.1:2525", w(), "blk"),
        ("hits", "10.7.0.2", "127.0.0.1:2525", w(), "scan"),
        ("ip", "10.1.2.3", "127.0.0.1:2525", w(), "lan"),
        (
            "hostname",
            "192.0.2.10",
            "127.0.0.1:2525",
            World {
                host: Some("mail.example.com"),
                ..w()
            },
            "named",
        ),
        ("hnstatus", "10.9.0.1", "127.0.0.1:2525", w(), "hnu"),
        (
            "re",
            "192.0.2.11",
            "127.0.0.1:2525",
            World {
                host: Some("bad.example.net"),
                ..w()
            },
            "bad",
        ),
        (
            "re EXCEPT",
            "10.8.0.1",
            "127.0.0.1:2525",
            World {
                host: Some("bad.example.net"),
                ..w()
            },
            "other",
        ),
        (
            "identd",
            "10.2.0.1",
            "127.0.0.1:2525",
            World {
                ident: Some("alice"),
                ..w()
            },
            "ident",
        ),
        (
            "dnsbl",
            "192.0.2.12",
            "127.0.0.1:2525",
            World {
                listed: vec!["bl.example"],
                ..w()
            },
            "listed",
        ),
        (
            "forwhn",
            "192.0.2.13",
            "127.0.0.1:2525",
            World {
                forward: vec![("fw.example", "192.0.2.13")],
                ..w()
            },
            "fw",
        ),
        (
            "answerson",
            "10.4.0.1",
            "127.0.0.1:2525",
            World {
                answers: vec![8080],
                ..w()
            },
            "ans",
        ),
        ("local", "192.0.2.14", "127.0.0.1:25", w(), "local25"),
        ("firsttime", "10.6.0.1", "127.0.0.1:2525", w(), "new"),
        ("seenwithin", "10.6.0.1", "127.0.0.1:2525", w(), "seen"),
        ("nothing else", "192.0.2.15", "127.0.0.1:2525", w(), "other"),
    ];
    for (n, (label, peer, local, world, want)) in cases.into_iter().enumerate() {
        let before = explain(&mut run, ask(peer, local, &world, true), &world);
        // Twice: a dry run must not change what the next one (or a real connection) sees.
        let report = explain(&mut run, ask(peer, local, &world, true), &world);
        assert_eq!(before, report, "{label}: a second explain differs");
        let v = connect(&mut run, n as u64 + 1, peer, local, &world);
        agree(label, ACTIONS, &report, &v);
        assert_eq!(
            report.action_class.as_deref(),
            Some(want),
            "{label}: {report:#?}"
        );
        assert!(
            report.rules.iter().any(|r| r.matched == Some(true)),
            "{label}: no rule shown as matched"
        );
    }
}

#[test]
fn explain_leaves_history_and_counts_unchanged() {
    let rules = "new/nt: firsttime\nlan: 10.1.\n";
    // `new` has no action: lan's run is what is counted.
    let actions = "lan: run /bin/true : ipmax 1\n";
    let mut run = start(rules, actions, settings(2, None));
    let w = World::default();
    for _ in 0..3 {
        let r = explain(&mut run, ask("10.1.0.1", "127.0.0.1:2525", &w, false), &w);
        assert_eq!(r.classes, ["new", "lan", "GLOBAL"]);
        assert!(r.admitted);
        let history = r.facts.iter().find(|(n, _)| n == "history").unwrap();
        assert!(
            history.1.starts_with("never seen (firsttime)"),
            "{history:?}"
        );
    }
    // The real first connection still sees firsttime, and is admitted (explains counted nothing).
    let v = connect(&mut run, 1, "10.1.0.1", "127.0.0.1:2525", &w);
    assert_eq!(v.classes, ["new", "lan", "GLOBAL"]);
    assert!(v.decision.counted && v.decision.refusal.is_none());
    // Now explain sees what the second real connection will: seen, and over ipmax.
    let r = explain(&mut run, ask("10.1.0.1", "127.0.0.1:2525", &w, false), &w);
    assert_eq!(r.classes, ["lan", "GLOBAL"]);
    assert_eq!((r.admitted, r.refusal.as_deref()), (false, Some("ipmax")));
    let limits = r.facts.iter().find(|(n, _)| n == "limits").unwrap();
    assert!(
        limits
            .1
            .contains("lan: ipmax 1 (1 counted from this address): refuses"),
        "{limits:?}"
    );
    let v = connect(&mut run, 2, "10.1.0.1", "127.0.0.1:2525", &w);
    agree("second", actions, &r, &v);
    // Release the first: explain admits again.
    run.parent
        .send(&ParentToClassifier::ConnClosed { conn: ConnId(1) })
        .unwrap();
    let r = explain(&mut run, ask("10.1.0.1", "127.0.0.1:2525", &w, false), &w);
    assert!(r.admitted, "{r:#?}");
}

#[test]
fn explain_traces_rules_and_names_given_facts() {
    let rules = "\
named/nt: hostname: .example.com
who/nt: identd: alice
lan: 10.1. EXCEPT 10.1.9.
later: ALL
";
    let actions = "lan: msg hi\n";
    let mut run = start(rules, actions, settings(2, None));
    let w = World::default();
    let msg = ParentToClassifier::Explain {
        req: ReqId(7),
        ask: ExplainAsk {
            addr: "::ffff:10.1.0.1".parse().unwrap(),
            local: None,
            ident: Some(IdentUser::try_from("alice".to_string()).unwrap()),
            hostname: Some(HostName::try_from("a.example.com".to_string()).unwrap()),
        },
        local: addr("127.0.0.1:2525"),
    };
    run.parent.send(&msg).unwrap();
    let (reply, asked) = serve(&mut run, &w);
    assert!(asked.is_empty(), "given facts are not looked up: {asked:?}");
    let ClassifierToParent::Explained { report: r, .. } = reply else {
        panic!("expected Explained, got {reply:?}");
    };
    assert_eq!(r.addr.to_string(), "10.1.0.1", "v4-mapped shown as IPv4");
    assert_eq!(r.classes, ["named", "who", "lan", "GLOBAL"]);
    assert_eq!(r.action_class.as_deref(), Some("lan"));
    assert_eq!(r.action, "msg \"hi\"");
    let at: Vec<&str> = r.rules.iter().map(|t| t.at.as_str()).collect();
    assert_eq!(at, ["rules:1", "rules:2", "rules:3", "rules:4"]);
    assert_eq!(r.rules[2].rule, "lan: 10.1. EXCEPT 10.1.9.");
    assert_eq!(
        r.rules[2].why,
        "ip: 10.1.: yes (peer 10.1.0.1); EXCEPT ip: 10.1.9.: no (peer 10.1.0.1): yes"
    );
    assert_eq!(r.rules[3].matched, None);
    assert!(
        r.rules[3].why.contains("line 3 matched and stopped"),
        "{:?}",
        r.rules[3]
    );
    let fact = |name: &str| {
        r.facts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no fact {name}: {:?}", r.facts))
    };
    assert_eq!(fact("hostname"), "a.example.com (given; taken as verified)");
    assert_eq!(fact("identd"), "alice (given)");
}

#[test]
fn explain_answers_once_when_lookups_time_out() {
    let mut s = settings(2, None);
    s.dns_timeout_ms = 20;
    let rules = "listed: dnsbl: bl.example\nnamed: KNOWN\nother: ALL\n";
    let mut run = start(rules, "other: msg hi\n", s);
    let silent = World {
        silent: true,
        ..World::default()
    };
    let r = explain(
        &mut run,
        ask("192.0.2.1", "127.0.0.1:2525", &silent, false),
        &silent,
    );
    assert_eq!(r.classes, ["other", "GLOBAL"]);
    let timed_out: Vec<&(String, String)> = r
        .facts
        .iter()
        .filter(|(_, v)| v.contains("no answer before the deadline"))
        .collect();
    assert_eq!(timed_out.len(), 2, "{:?}", r.facts);
    assert!(
        recv_within(&mut run.parent, QUIET)
            .into_iter()
            .all(|m| matches!(m, ClassifierToParent::Log(_))),
        "exactly one Explained"
    );
    // Both timeouts are failed lookups in the metrics.
    let m = metrics(&mut run);
    assert_eq!(
        (m[0].kind.as_str(), m[0].count, m[0].failures),
        ("reverse", 1, 1)
    );
    assert_eq!(
        (m[2].kind.as_str(), m[2].count, m[2].failures),
        ("dnsbl", 1, 1)
    );
}

fn metrics(run: &mut Running) -> Vec<LookupMetrics> {
    run.parent
        .send(&ParentToClassifier::MetricsRequest { req: ReqId(9) })
        .unwrap();
    match serve(run, &World::default()).0 {
        ClassifierToParent::Metrics { req, lookups } => {
            assert_eq!(req, ReqId(9));
            lookups
        }
        other => panic!("expected Metrics, got {other:?}"),
    }
}

#[test]
fn metrics_count_lookups_by_kind_with_cumulative_buckets() {
    let rules = "a/nt: KNOWN\nb/nt: dnsbl: one.example dnsbl: two.example\nc: ALL\n";
    let mut run = start(rules, "c: msg hi\n", settings(2, None));
    let zero = metrics(&mut run);
    assert!(zero
        .iter()
        .all(|m| m.count == 0 && m.buckets.iter().all(|b| *b == 0)));
    let w = World::default();
    for conn in 1..=3 {
        let peer = format!("192.0.2.{conn}");
        let _ = connect(&mut run, conn, &peer, "127.0.0.1:2525", &w);
    }
    let m = metrics(&mut run);
    let by_kind = |k: &str| m.iter().find(|x| x.kind == k).unwrap().clone();
    let rev = by_kind("reverse");
    assert_eq!((rev.count, rev.failures), (3, 0));
    assert_eq!(by_kind("dnsbl").count, 6, "two zones per connection");
    assert_eq!(by_kind("identd").count, 0);
    for k in &m {
        assert_eq!(k.buckets.len(), LOOKUP_BUCKETS_MS.len());
        assert!(k.buckets.windows(2).all(|w| w[0] <= w[1]), "cumulative");
        // Answered at once by the fake: every one within the last bound.
        assert_eq!(k.buckets.last().copied(), Some(k.count), "{k:?}");
    }
    // A reload keeps the counters.
    run.parent
        .send(&ParentToClassifier::Policy {
            gen: privsep::proto::Gen(2),
            rules: Some("c: ALL\n".to_string()),
            actions: Some("c: msg hi\n".to_string()),
            settings: settings(2, None),
            ipfiles: Vec::new(),
        })
        .unwrap();
    let _ = serve(&mut run, &w);
    assert_eq!(metrics(&mut run), m);
}

#[test]
fn a_long_rules_file_is_folded_into_a_bounded_report() {
    let mut rules = String::new();
    for i in 0..1000u32 {
        rules.push_str(&format!("deny: 10.0.{}.{}\n", i / 256, i % 256));
    }
    rules.push_str("ok: ALL\nlog/always: ALL\n");
    let mut run = start(&rules, "deny: drop\nok: msg hi\n", settings(2, None));
    let w = World::default();
    let r = explain(&mut run, ask("10.0.1.244", "127.0.0.1:2525", &w, false), &w);
    let rows: Vec<(&str, Option<bool>)> =
        r.rules.iter().map(|t| (t.at.as_str(), t.matched)).collect();
    // 10.0.1.244 is rule 501: 500 misses folded, the hit, the 499 skipped folded, then the
    // two rules after the run.
    assert_eq!(
        rows,
        [
            ("rules:1-500", Some(false)),
            ("rules:501", Some(true)),
            ("rules:502-1000", None),
            ("rules:1001", None),
            ("rules:1002", Some(true)),
        ]
    );
    assert!(
        r.rules[0]
            .rule
            .contains("(and 499 more rules of class deny)"),
        "{:?}",
        r.rules[0]
    );
    assert_eq!(r.action_class.as_deref(), Some("deny"));
    assert_eq!(r.action, "drop");
}

#[test]
fn explain_peeks_at_rates_without_charging_them() {
    let rules = "slow: rate: 2/1h\nok: ALL\n";
    let actions = "slow: msg slow down\nok: msg hi\n";
    let mut run = start(rules, actions, settings(2, None));
    let w = World::default();
    for conn in 1..=3u64 {
        // Explains before each attempt: what that attempt will get, and they charge nothing
        // (else the second real attempt would already be over).
        for _ in 0..3 {
            let r = explain(&mut run, ask("192.0.2.5", "127.0.0.1:2525", &w, false), &w);
            let want = if conn <= 2 { "ok" } else { "slow" };
            assert_eq!(
                r.action_class.as_deref(),
                Some(want),
                "before attempt {conn}"
            );
            let fact = r
                .facts
                .iter()
                .find(|(n, _)| n.starts_with("rate "))
                .unwrap();
            assert!(
                fact.1.ends_with("(this explain is not charged)"),
                "{fact:?}"
            );
        }
        let r = explain(&mut run, ask("192.0.2.5", "127.0.0.1:2525", &w, false), &w);
        let v = connect(&mut run, conn, "192.0.2.5", "127.0.0.1:2525", &w);
        agree("rate", actions, &r, &v);
    }
}
