//! Tests of the classifier against fake peers: the test plays the parent and the resolver over
//! real socketpairs (privsep channels), so framing and threading are the production ones.
//!
//! Runs in the test process only. Every wait is bounded by a deadline; `serve` runs with
//! `forbid_new_processes: false` because RLIMIT_NPROC 0 would break the rest of the test binary.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use policy::facts::{Classification, Facts, Lookup, MatchedClass, GLOBAL};
use privsep::proto::{
    Answer, ClassName, ClassifierSettings, ClassifierToParent, ClassifierToResolver, ConnId,
    Decision, Disposition, Gen, HnStatus, HostFacts, HostName, LiveConn, ParentToClassifier, Query,
    Refusal, ReqId, ResolverToClassifier,
};
use privsep::Channel;

use super::dispatch::{pool_size, MAX_EVAL_THREADS};
use super::facts::{ConnFacts, Observed};
use super::lookups::{self, Timeouts};
use super::pool::MAX_QUEUED;
use super::{serve, verdict, Loaded, Options, Shared};

/// Longest any single expected event may take; generous for a loaded CI machine.
const WAIT: Duration = Duration::from_secs(5);
/// How long we watch for something that must NOT happen.
const QUIET: Duration = Duration::from_millis(300);

type TestParent = Channel<ParentToClassifier, ClassifierToParent>;
type TestResolver = Channel<ResolverToClassifier, ClassifierToResolver>;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn settings(maxthreads: u32, aftermaxthreads: Option<&str>) -> ClassifierSettings {
    ClassifierSettings {
        maxthreads,
        aftermaxthreads: aftermaxthreads.map(|c| ClassName::try_from(c.to_string()).unwrap()),
        dropipafter_secs: None,
        expireevery_secs: 60,
        dns_timeout_ms: 5000,
        identd_timeout_ms: 5000,
        answerson_timeout_ms: 5000,
        grouping: Default::default(),
    }
}

/// Poll a non-blocking test channel until a message arrives or `within` passes.
fn recv_within<O, I>(ch: &mut Channel<O, I>, within: Duration) -> Option<I>
where
    O: serde::Serialize,
    I: serde::de::DeserializeOwned,
{
    let deadline = Instant::now() + within;
    loop {
        match ch.try_recv() {
            Ok(Some(msg)) => return Some(msg),
            Ok(None) => {}
            Err(e) => panic!("test channel: {e}"),
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The next non-log message from the classifier to the parent.
fn from_classifier(p: &mut TestParent, within: Duration) -> Option<ClassifierToParent> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match recv_within(p, left)? {
            ClassifierToParent::Log(_) => continue,
            other => return Some(other),
        }
    }
}

fn expect_verdict(p: &mut TestParent, conn: u64) -> (Decision, privsep::proto::VerdictFacts) {
    match from_classifier(p, WAIT) {
        Some(ClassifierToParent::Verdict {
            conn: c,
            decision,
            facts,
            ..
        }) => {
            assert_eq!(c, ConnId(conn), "verdict for the wrong connection");
            (decision, facts)
        }
        other => panic!("expected a verdict for conn={conn}, got {other:?}"),
    }
}

fn class_names(facts: &privsep::proto::VerdictFacts) -> Vec<String> {
    facts
        .classes
        .iter()
        .map(|c| c.name.as_str().to_string())
        .collect()
}

fn expect_lookup(r: &mut TestResolver) -> (ReqId, Query) {
    match recv_within(r, WAIT) {
        Some(ClassifierToResolver::Lookup { req, query }) => (req, query),
        other => panic!("expected a Lookup, got {other:?}"),
    }
}

struct Running {
    parent: TestParent,
    resolver: TestResolver,
    done: JoinHandle<ExitCode>,
}

/// Start `serve` on a thread without doing any handshake.
fn spawn_raw() -> Running {
    let (p_cls, p_test) = Channel::<ClassifierToParent, ParentToClassifier>::pair().unwrap();
    let (r_cls, r_test) = Channel::<ClassifierToResolver, ResolverToClassifier>::pair().unwrap();
    p_test.set_nonblocking(true).unwrap();
    r_test.set_nonblocking(true).unwrap();
    let done = std::thread::spawn(move || {
        serve(
            p_cls,
            r_cls,
            Options {
                forbid_new_processes: false,
            },
        )
    });
    Running {
        parent: p_test,
        resolver: r_test,
        done,
    }
}

/// Start `serve`, do both handshakes and load one policy.
fn start(rules: &str, actions: &str, s: ClassifierSettings) -> Running {
    let mut run = spawn_raw();
    let build = privsep::build_id();
    run.parent
        .send(&ParentToClassifier::Hello {
            build: build.clone(),
        })
        .unwrap();
    match from_classifier(&mut run.parent, WAIT) {
        Some(ClassifierToParent::Hello { build: b }) => assert_eq!(b, build),
        other => panic!("expected Hello, got {other:?}"),
    }
    match recv_within(&mut run.resolver, WAIT) {
        Some(ClassifierToResolver::Hello { build: b }) => assert_eq!(b, build),
        other => panic!("expected the resolver Hello, got {other:?}"),
    }
    run.resolver
        .send(&ResolverToClassifier::Hello { build })
        .unwrap();
    run.parent
        .send(&ParentToClassifier::Policy {
            gen: Gen(1),
            rules: Some(rules.to_string()),
            actions: Some(actions.to_string()),
            settings: s,
            ipfiles: Vec::new(),
        })
        .unwrap();
    match from_classifier(&mut run.parent, WAIT) {
        Some(ClassifierToParent::PolicyLoaded { gen }) => assert_eq!(gen, Gen(1)),
        other => panic!("expected PolicyLoaded, got {other:?}"),
    }
    run
}

fn accept(run: &mut Running, conn: u64, remote: &str) {
    run.parent
        .send(&ParentToClassifier::ConnAccepted {
            conn: ConnId(conn),
            remote: addr(remote),
            local: addr("127.0.0.1:2525"),
            trap: None,
        })
        .unwrap();
}

fn answer(r: &mut TestResolver, req: ReqId, query: Query, answer: Answer) {
    r.send(&ResolverToClassifier::LookupResult { req, query, answer })
        .unwrap();
}

fn finish(run: Running) -> ExitCode {
    drop(run.parent);
    let deadline = Instant::now() + WAIT;
    while !run.done.is_finished() {
        assert!(Instant::now() < deadline, "classifier did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
    run.done.join().unwrap()
}

#[test]
fn handshake_refuses_anything_but_hello_first() {
    let mut run = spawn_raw();
    run.parent.send(&ParentToClassifier::StatusRequest).unwrap();
    let deadline = Instant::now() + WAIT;
    while !run.done.is_finished() {
        assert!(Instant::now() < deadline, "classifier kept running");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(run.done.join().unwrap(), ExitCode::from(111));
    match run.parent.try_recv() {
        Err(privsep::ChannelError::Closed) | Ok(None) => {}
        other => panic!("no Hello may be sent, got {other:?}"),
    }
}

#[test]
fn resolver_eof_ends_the_classifier() {
    let run = start("a: ALL\n", "a: msg hi\n", settings(2, None));
    drop(run.resolver);
    let deadline = Instant::now() + WAIT;
    while !run.done.is_finished() {
        assert!(
            Instant::now() < deadline,
            "classifier survived resolver EOF"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(run.done.join().unwrap(), ExitCode::from(111));
}

#[test]
fn parent_eof_is_a_clean_exit() {
    let run = start("a: ALL\n", "a: msg hi\n", settings(1, None));
    assert_eq!(finish(run), ExitCode::SUCCESS);
}

#[test]
fn ip_only_rules_ask_the_resolver_nothing() {
    let mut run = start(
        "local: 127.0.0.1\nlisted: dnsbl: bl.example.org\n",
        "local: msg hi\nlisted: msg go away\n",
        settings(2, None),
    );
    accept(&mut run, 1, "127.0.0.1:4000");
    let (decision, facts) = expect_verdict(&mut run.parent, 1);
    assert_eq!(class_names(&facts), ["local", GLOBAL]);
    assert_eq!(decision.disposition, Disposition::Msg);
    assert!(facts.host.is_none() && facts.identd.is_none() && facts.seen.is_none());
    assert!(
        recv_within(&mut run.resolver, QUIET).is_none(),
        "an IP-only match must not cause a lookup"
    );

    // The other direction: a peer that needs the DNSBL rule does cause exactly that lookup.
    accept(&mut run, 2, "127.0.0.2:4000");
    let (req, query) = expect_lookup(&mut run.resolver);
    match &query {
        Query::Dnsbl { ip: i, zone } => {
            assert_eq!(*i, ip("127.0.0.2"));
            assert_eq!(zone.as_str(), "bl.example.org");
        }
        other => panic!("unexpected query {other:?}"),
    }
    answer(
        &mut run.resolver,
        req,
        query,
        Answer::Addrs(vec![ip("127.0.0.2")]),
    );
    let (_, facts) = expect_verdict(&mut run.parent, 2);
    assert_eq!(class_names(&facts), ["listed", GLOBAL]);
    finish(run);
}

#[test]
fn ip_only_connection_is_not_delayed_by_a_slow_lookup() {
    let mut run = start(
        "local: 127.0.0.1\nlisted: dnsbl: bl.example.org\n",
        "local: msg hi\nlisted: msg go away\n",
        settings(2, None),
    );
    accept(&mut run, 1, "127.0.0.2:4000");
    let (req, query) = expect_lookup(&mut run.resolver);
    // conn 1 now waits for the resolver; conn 2 needs no lookup and must not wait for it.
    accept(&mut run, 2, "127.0.0.1:4001");
    let (_, facts) = expect_verdict(&mut run.parent, 2);
    assert_eq!(class_names(&facts), ["local", GLOBAL]);
    answer(&mut run.resolver, req, query, Answer::Addrs(vec![]));
    let (decision, facts) = expect_verdict(&mut run.parent, 1);
    assert!(facts.classes.is_empty(), "not listed: nothing matched");
    assert_eq!(decision.disposition, Disposition::Close);
    finish(run);
}

#[test]
fn aftermaxthreads_takes_the_overflow_class_when_all_threads_are_busy() {
    let mut run = start(
        "listed: dnsbl: bl.example.org\n",
        "listed: msg go away\noverflow: msg busy\n",
        settings(1, Some("overflow")),
    );
    accept(&mut run, 1, "127.0.0.2:4000");
    let (req, query) = expect_lookup(&mut run.resolver);
    // The only thread waits on conn 1's lookup: conn 2 goes straight to the overflow class.
    accept(&mut run, 2, "127.0.0.3:4000");
    let (decision, facts) = expect_verdict(&mut run.parent, 2);
    assert_eq!(class_names(&facts), ["overflow", GLOBAL]);
    assert_eq!(decision.disposition, Disposition::Msg);
    assert_eq!(facts.classes[0].lineno, 0);
    assert!(
        recv_within(&mut run.resolver, QUIET).is_none(),
        "the overflow class evaluates no rules"
    );
    answer(
        &mut run.resolver,
        req,
        query,
        Answer::Addrs(vec![ip("127.0.0.2")]),
    );
    let (_, facts) = expect_verdict(&mut run.parent, 1);
    assert_eq!(class_names(&facts), ["listed", GLOBAL]);
    // With the thread free again, the next connection is evaluated normally.
    accept(&mut run, 3, "127.0.0.4:4000");
    let (req, query) = expect_lookup(&mut run.resolver);
    answer(&mut run.resolver, req, query, Answer::Addrs(vec![]));
    let (_, facts) = expect_verdict(&mut run.parent, 3);
    assert!(facts.classes.is_empty());
    finish(run);
}

#[test]
fn lookup_free_rules_are_decided_at_once_and_never_overflow() {
    // Evaluated on the dispatch thread, one at a time: the only pool thread is never busy, so
    // back-to-back connections all get their rules' class, in order.
    let mut run = start(
        "svc: 127.0.0.0/8\n",
        "svc: msg hi\noverflow: msg busy\n",
        settings(1, Some("overflow")),
    );
    for n in 1..=50u64 {
        accept(&mut run, n, "127.0.0.2:4000");
    }
    for n in 1..=50u64 {
        let (_, facts) = expect_verdict(&mut run.parent, n);
        assert_eq!(class_names(&facts), ["svc", GLOBAL], "conn {n}");
    }
    assert!(recv_within(&mut run.resolver, QUIET).is_none(), "no lookup");
    finish(run);
}

#[test]
fn without_aftermaxthreads_a_connection_waits_its_turn() {
    let mut run = start(
        "listed: dnsbl: bl.example.org\n",
        "listed: msg go away\noverflow: msg busy\n",
        settings(1, None),
    );
    accept(&mut run, 1, "127.0.0.2:4000");
    let (req1, q1) = expect_lookup(&mut run.resolver);
    accept(&mut run, 2, "127.0.0.3:4000");
    assert!(
        from_classifier(&mut run.parent, QUIET).is_none(),
        "conn 2 must wait for the only thread"
    );
    assert!(recv_within(&mut run.resolver, QUIET).is_none());
    answer(&mut run.resolver, req1, q1, Answer::Addrs(vec![]));
    expect_verdict(&mut run.parent, 1);
    let (req2, q2) = expect_lookup(&mut run.resolver);
    answer(
        &mut run.resolver,
        req2,
        q2,
        Answer::Addrs(vec![ip("127.0.0.2")]),
    );
    let (_, facts) = expect_verdict(&mut run.parent, 2);
    assert_eq!(class_names(&facts), ["listed", GLOBAL]);
    finish(run);
}

#[test]
fn maxthreads_zero_ignores_aftermaxthreads() {
    let mut run = start(
        "listed: dnsbl: bl.example.org\n",
        "listed: msg go away\noverflow: msg busy\n",
        settings(0, Some("overflow")),
    );
    accept(&mut run, 1, "127.0.0.2:4000");
    let (req, query) = expect_lookup(&mut run.resolver);
    accept(&mut run, 2, "127.0.0.3:4000");
    assert!(from_classifier(&mut run.parent, QUIET).is_none());
    answer(&mut run.resolver, req, query, Answer::Addrs(vec![]));
    expect_verdict(&mut run.parent, 1);
    let (req, query) = expect_lookup(&mut run.resolver);
    answer(&mut run.resolver, req, query, Answer::Addrs(vec![]));
    let (_, facts) = expect_verdict(&mut run.parent, 2);
    assert!(facts.classes.is_empty());
    finish(run);
}

#[test]
fn counts_release_seed_and_status() {
    let mut run = start(
        "svc: ALL\n",
        "svc: run /bin/cat : connmax 1\n",
        settings(2, None),
    );
    accept(&mut run, 1, "127.0.0.2:4000");
    let (d1, _) = expect_verdict(&mut run.parent, 1);
    assert!(d1.counted);
    assert_eq!(d1.disposition, Disposition::Run);
    accept(&mut run, 2, "127.0.0.3:4000");
    let (d2, _) = expect_verdict(&mut run.parent, 2);
    assert_eq!(d2.refusal, Some(Refusal::ConnMax));
    assert!(!d2.counted);

    run.parent.send(&ParentToClassifier::StatusRequest).unwrap();
    match from_classifier(&mut run.parent, WAIT) {
        Some(ClassifierToParent::Status {
            evaluations,
            class_counts,
            ..
        }) => {
            assert_eq!(evaluations, 2);
            let svc = class_counts.iter().find(|(c, _)| c.as_str() == "svc");
            assert_eq!(svc.map(|(_, n)| *n), Some(1));
        }
        other => panic!("expected Status, got {other:?}"),
    }

    run.parent
        .send(&ParentToClassifier::ConnClosed { conn: ConnId(1) })
        .unwrap();
    accept(&mut run, 3, "127.0.0.3:4000");
    let (d3, _) = expect_verdict(&mut run.parent, 3);
    assert!(d3.counted, "released by ConnClosed");

    // After a restart the parent re-seeds: conn 3 is gone, conn 9 is live in svc.
    run.parent
        .send(&ParentToClassifier::Seed {
            live: vec![LiveConn {
                conn: ConnId(9),
                remote: addr("127.0.0.9:1"),
                classes: vec![
                    ClassName::try_from("svc".to_string()).unwrap(),
                    ClassName::try_from(GLOBAL.to_string()).unwrap(),
                ],
            }],
        })
        .unwrap();
    accept(&mut run, 4, "127.0.0.4:4000");
    let (d4, _) = expect_verdict(&mut run.parent, 4);
    assert_eq!(d4.refusal, Some(Refusal::ConnMax), "seeded conn 9 counts");
    run.parent
        .send(&ParentToClassifier::ConnClosed { conn: ConnId(9) })
        .unwrap();
    accept(&mut run, 5, "127.0.0.4:4000");
    let (d5, _) = expect_verdict(&mut run.parent, 5);
    assert!(d5.counted);
    finish(run);
}

#[test]
fn history_is_kept_only_when_asked_and_flush_empties_it() {
    let mut run = start(
        "local: 127.0.0.1\nnew: firsttime\nold: ALL\n",
        "local: msg hi\nnew: msg welcome\nold: msg again\n",
        settings(1, None),
    );
    let status_history = |run: &mut Running| -> u64 {
        run.parent.send(&ParentToClassifier::StatusRequest).unwrap();
        match from_classifier(&mut run.parent, WAIT) {
            Some(ClassifierToParent::Status {
                history_entries, ..
            }) => history_entries,
            other => panic!("expected Status, got {other:?}"),
        }
    };
    accept(&mut run, 1, "127.0.0.1:4000");
    let (_, f) = expect_verdict(&mut run.parent, 1);
    assert!(f.seen.is_none(), "no time matcher was consulted");
    assert_eq!(status_history(&mut run), 0);

    accept(&mut run, 2, "127.0.0.5:4000");
    let (_, f) = expect_verdict(&mut run.parent, 2);
    assert_eq!(class_names(&f), ["new", GLOBAL]);
    let seen = f.seen.expect("seen facts after firsttime");
    assert_eq!((seen.first_secs_ago, seen.last_secs_ago), (0, None));
    assert_eq!(status_history(&mut run), 1);

    accept(&mut run, 3, "127.0.0.5:4001");
    let (_, f) = expect_verdict(&mut run.parent, 3);
    assert_eq!(class_names(&f), ["old", GLOBAL]);
    assert!(f.seen.and_then(|s| s.last_secs_ago).is_some());

    run.parent.send(&ParentToClassifier::Flush).unwrap();
    assert_eq!(status_history(&mut run), 0);
    accept(&mut run, 4, "127.0.0.5:4002");
    let (_, f) = expect_verdict(&mut run.parent, 4);
    assert_eq!(
        class_names(&f),
        ["new", GLOBAL],
        "first time again after Flush"
    );
    finish(run);
}

#[test]
fn a_new_policy_applies_to_later_connections() {
    let mut run = start("a: ALL\n", "a: msg one\n", settings(1, None));
    run.parent
        .send(&ParentToClassifier::Policy {
            gen: Gen(2),
            rules: Some("b: ALL\n".to_string()),
            actions: None,
            settings: settings(1, None),
            ipfiles: Vec::new(),
        })
        .unwrap();
    match from_classifier(&mut run.parent, WAIT) {
        Some(ClassifierToParent::PolicyLoaded { gen }) => assert_eq!(gen, Gen(2)),
        other => panic!("expected PolicyLoaded, got {other:?}"),
    }
    accept(&mut run, 1, "127.0.0.2:1");
    match from_classifier(&mut run.parent, WAIT) {
        Some(ClassifierToParent::Verdict {
            gen,
            decision,
            facts,
            ..
        }) => {
            assert_eq!(gen, Gen(2));
            assert_eq!(class_names(&facts), ["b", GLOBAL]);
            // No actions file: nothing to do, the parent closes.
            assert_eq!(decision.action_class, None);
            assert_eq!(decision.disposition, Disposition::Close);
        }
        other => panic!("expected a verdict, got {other:?}"),
    }
    finish(run);
}

// ---- the Facts implementation against a fake resolver, without the dispatch loop ----

struct FactsRig {
    shared: Arc<Shared>,
    parent: TestParent,
    resolver: TestResolver,
}

fn facts_rig() -> FactsRig {
    let (p_cls, p_test) = Channel::<ClassifierToParent, ParentToClassifier>::pair().unwrap();
    let (r_cls, r_test) = Channel::<ClassifierToResolver, ResolverToClassifier>::pair().unwrap();
    p_test.set_nonblocking(true).unwrap();
    r_test.set_nonblocking(true).unwrap();
    let (p_tx, _p_rx) = p_cls.split().unwrap();
    let (r_tx, r_rx) = r_cls.split().unwrap();
    let shared = Arc::new(Shared::new(p_tx, r_tx));
    let reader = Arc::clone(&shared);
    std::thread::spawn(move || lookups::read_resolver(r_rx, &reader.lookups, &reader.parent));
    FactsRig {
        shared,
        parent: p_test,
        resolver: r_test,
    }
}

fn zone(z: &str) -> HostName {
    HostName::try_from(z.to_string()).unwrap()
}

fn logs(p: &mut TestParent) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(msg) = recv_within(p, Duration::from_millis(50)) {
        if let ClassifierToParent::Log(r) = msg {
            out.push(r.text);
        }
    }
    out
}

#[test]
fn prefetch_sends_every_dnsbl_lookup_before_any_answer() {
    let mut rig = facts_rig();
    let zones = [
        "a.bl.example",
        "b.bl.example",
        "c.bl.example",
        "d.bl.example",
        "e.bl.example",
    ];
    let shared = Arc::clone(&rig.shared);
    let eval = std::thread::spawn(move || {
        let mut f = ConnFacts::new(&shared, addr("192.0.2.7:4000"), addr("127.0.0.1:25"));
        let wanted: Vec<Lookup> = zones.iter().map(|z| Lookup::Dnsbl(z.to_string())).collect();
        f.prefetch(&wanted);
        let listed: Vec<bool> = zones.iter().map(|z| !f.dnsbl(z).is_empty()).collect();
        // Asking again is answered from the per-connection cache.
        let again = !f.dnsbl("c.bl.example").is_empty();
        (listed, again)
    });
    // All five requests arrive while none has been answered: one round trip, not five.
    let mut asked = Vec::new();
    for _ in 0..5 {
        asked.push(expect_lookup(&mut rig.resolver));
    }
    let mut seen_zones: Vec<String> = asked
        .iter()
        .map(|(_, q)| match q {
            Query::Dnsbl { ip: i, zone } => {
                assert_eq!(*i, ip("192.0.2.7"));
                zone.as_str().to_string()
            }
            other => panic!("unexpected query {other:?}"),
        })
        .collect();
    seen_zones.sort();
    assert_eq!(seen_zones, zones);
    // Answer in reverse order; only c lists the peer.
    for (req, query) in asked.into_iter().rev() {
        let listed = matches!(&query, Query::Dnsbl { zone, .. } if zone.as_str() == "c.bl.example");
        let addrs = if listed {
            vec![ip("127.0.0.2")]
        } else {
            vec![]
        };
        answer(&mut rig.resolver, req, query, Answer::Addrs(addrs));
    }
    let (listed, again) = eval.join().unwrap();
    assert_eq!(listed, [false, false, true, false, false]);
    assert!(again);
    assert!(
        recv_within(&mut rig.resolver, QUIET).is_none(),
        "no lookup is sent twice"
    );
    assert_eq!(rig.shared.lookups.pending(), 0);
}

#[test]
fn stale_ids_and_mismatched_answers_are_ignored() {
    let mut rig = facts_rig();
    let shared = Arc::clone(&rig.shared);
    let eval = std::thread::spawn(move || {
        let mut f = ConnFacts::new(&shared, addr("192.0.2.7:4000"), addr("127.0.0.1:25"));
        f.dnsbl("z.bl.example")
    });
    let (req, query) = expect_lookup(&mut rig.resolver);
    // (label, req, query, answer) — each must be ignored while the lookup keeps waiting.
    let bad = [
        (
            "unknown id",
            ReqId(req.0 + 1000),
            query.clone(),
            Answer::Addrs(vec![ip("127.0.0.66")]),
        ),
        (
            "query not asked",
            req,
            Query::Dnsbl {
                ip: ip("192.0.2.7"),
                zone: zone("other.bl.example"),
            },
            Answer::Addrs(vec![ip("127.0.0.67")]),
        ),
        (
            "wrong answer kind",
            req,
            query.clone(),
            Answer::AnswersOn(true),
        ),
    ];
    for (_, r, q, a) in bad {
        answer(&mut rig.resolver, r, q, a);
    }
    answer(
        &mut rig.resolver,
        req,
        query.clone(),
        Answer::Addrs(vec![ip("127.0.0.4")]),
    );
    assert_eq!(eval.join().unwrap(), vec![ip("127.0.0.4")]);
    // The same id again is now stale.
    answer(&mut rig.resolver, req, query, Answer::Addrs(vec![]));
    let logs = logs(&mut rig.parent);
    let count = |needle: &str| logs.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("nobody waits"), 2, "{logs:?}");
    assert_eq!(count("not asked"), 1, "{logs:?}");
    assert_eq!(count("does not fit"), 1, "{logs:?}");
}

#[test]
fn a_timeout_means_not_listed_and_a_late_answer_is_stale() {
    let mut rig = facts_rig();
    rig.shared.lookups.set_timeouts(Timeouts {
        dns: Duration::from_millis(100),
        identd: Duration::from_millis(100),
        answerson: Duration::from_millis(100),
    });
    let shared = Arc::clone(&rig.shared);
    let eval = std::thread::spawn(move || {
        let mut f = ConnFacts::new(&shared, addr("192.0.2.7:4000"), addr("127.0.0.1:25"));
        let started = Instant::now();
        let listed = f.dnsbl("slow.bl.example");
        let host = f.host_info();
        (listed, host, started.elapsed(), f.observed())
    });
    let (req, query) = expect_lookup(&mut rig.resolver);
    let (_, host_query) = expect_lookup(&mut rig.resolver);
    assert!(matches!(host_query, Query::Host { .. }));
    let (listed, host, took, observed) = eval.join().unwrap();
    assert!(listed.is_empty(), "a timeout is 'not listed'");
    assert_eq!(host.status, policy::facts::HnStatus::Unknown);
    assert!(host.claimed.is_none());
    assert!(
        took >= Duration::from_millis(200),
        "waited for both deadlines: {took:?}"
    );
    assert!(took < WAIT, "{took:?}");
    // The host lookup was asked, so the verdict reports it (as unknown).
    assert_eq!(
        observed,
        Observed {
            host: Some(HostFacts {
                status: HnStatus::Unknown,
                claimed: None
            }),
            identd: None,
            seen: None,
        }
    );
    assert_eq!(
        rig.shared.lookups.pending(),
        0,
        "timed-out requests are withdrawn"
    );
    answer(
        &mut rig.resolver,
        req,
        query,
        Answer::Addrs(vec![ip("127.0.0.2")]),
    );
    let logs = logs(&mut rig.parent);
    assert!(logs.iter().any(|l| l.contains("timed out")), "{logs:?}");
    assert!(logs.iter().any(|l| l.contains("nobody waits")), "{logs:?}");
}

#[test]
fn host_identd_and_answerson_answers_reach_the_evaluator_and_the_verdict() {
    let mut rig = facts_rig();
    let shared = Arc::clone(&rig.shared);
    let eval = std::thread::spawn(move || {
        let mut f = ConnFacts::new(
            &shared,
            addr("[::ffff:192.0.2.7]:4000"),
            addr("127.0.0.1:25"),
        );
        let host = f.host_info();
        let user = f.identd();
        let answers = f.answers_on(113);
        let fwd = f.forward_lookup("mail.example.org");
        let bad_name = f.forward_lookup("not a name");
        (host, user, answers, fwd, bad_name, f.observed())
    });
    let (req, q) = expect_lookup(&mut rig.resolver);
    assert_eq!(
        q,
        Query::Host {
            ip: ip("192.0.2.7")
        },
        "v4-mapped shown as IPv4"
    );
    let host = HostFacts {
        status: HnStatus::Good,
        claimed: Some(zone("mail.example.org")),
    };
    answer(&mut rig.resolver, req, q, Answer::Host(host.clone()));
    let (req, q) = expect_lookup(&mut rig.resolver);
    assert_eq!(
        q,
        Query::Identd {
            remote: addr("192.0.2.7:4000"),
            local: addr("127.0.0.1:25")
        }
    );
    let user = privsep::proto::IdentUser::try_from("cks".to_string()).unwrap();
    answer(
        &mut rig.resolver,
        req,
        q,
        Answer::Identd(Some(user.clone())),
    );
    let (req, q) = expect_lookup(&mut rig.resolver);
    assert_eq!(
        q,
        Query::AnswersOn {
            ip: ip("192.0.2.7"),
            port: 113,
            local_ip: ip("127.0.0.1")
        }
    );
    answer(&mut rig.resolver, req, q, Answer::AnswersOn(true));
    let (req, q) = expect_lookup(&mut rig.resolver);
    assert!(matches!(&q, Query::Forward { name } if name.as_str() == "mail.example.org"));
    answer(
        &mut rig.resolver,
        req,
        q,
        Answer::Addrs(vec![ip("192.0.2.7")]),
    );
    let (h, u, a, fwd, bad_name, observed) = eval.join().unwrap();
    assert_eq!(h.verified(), Some("mail.example.org"));
    assert_eq!(u.as_deref(), Some("cks"));
    assert!(a);
    assert_eq!(fwd, vec![ip("192.0.2.7")]);
    assert!(bad_name.is_empty(), "an invalid name is never asked");
    assert!(recv_within(&mut rig.resolver, QUIET).is_none());
    assert_eq!(observed.host, Some(host));
    assert_eq!(observed.identd, Some(user));
}

#[test]
fn no_lookup_is_sent_for_facts_nobody_asks() {
    let mut rig = facts_rig();
    {
        let mut f = ConnFacts::new(&rig.shared, addr("192.0.2.7:4000"), addr("127.0.0.1:25"));
        assert_eq!(f.remote().ip(), ip("192.0.2.7"));
        let first = f.seen();
        assert_eq!(first.last_secs_ago, None);
        assert_eq!(f.seen(), first, "cached for the connection");
        assert_eq!(f.observed().seen, Some(first));
        assert!(f.observed().host.is_none());
    }
    assert!(recv_within(&mut rig.resolver, QUIET).is_none());
}

// ---- decisions under concurrency ----

fn loaded(rules: &str, actions: &str) -> Arc<Loaded> {
    let rules = policy::rules::parse_rules("rules", rules).value.unwrap();
    let actions = policy::actions::parse_actions("actions", actions)
        .value
        .unwrap();
    Arc::new(Loaded {
        gen: Gen(1),
        needs_lookups: rules.can_need_lookups(),
        rates: None,
        rules,
        actions,
        ipfiles: Default::default(),
    })
}

fn classified(class: &str) -> Classification {
    Classification {
        classes: vec![
            MatchedClass {
                name: class.to_string(),
                lineno: 1,
                label: None,
            },
            MatchedClass {
                name: GLOBAL.to_string(),
                lineno: 0,
                label: None,
            },
        ],
    }
}

/// 50 threads decide at once; returns how many were counted, and the table's count.
fn race(actions: &str, class: &str, same_ip: bool) -> (usize, u32) {
    let rig = facts_rig();
    *rig.shared.policy.write().unwrap() = Some(loaded(&format!("{class}: ALL\n"), actions));
    let start = Arc::new(Barrier::new(50));
    let threads: Vec<_> = (0..50u64)
        .map(|n| {
            let shared = Arc::clone(&rig.shared);
            let start = Arc::clone(&start);
            let class = class.to_string();
            std::thread::spawn(move || {
                let peer = if same_ip {
                    ip("192.0.2.1")
                } else {
                    IpAddr::from([10, 0, 0, n as u8 + 1])
                };
                start.wait();
                match verdict::decide(
                    &shared,
                    ConnId(n),
                    peer,
                    &classified(&class),
                    Observed::default(),
                ) {
                    Some(ClassifierToParent::Verdict { decision, .. }) => decision.counted,
                    other => panic!("expected a verdict, got {other:?}"),
                }
            })
        })
        .collect();
    let counted = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|c| *c)
        .count();
    let table = rig.shared.conntrack.lock().unwrap().class_count(class);
    (counted, table)
}

#[test]
fn connmax_is_exact_under_50_concurrent_decisions() {
    for _ in 0..5 {
        assert_eq!(
            race("svc: run /bin/cat : connmax 10\n", "svc", false),
            (10, 10)
        );
    }
}

#[test]
fn ipmax_is_exact_under_50_concurrent_decisions() {
    for _ in 0..5 {
        assert_eq!(race("svc: run /bin/cat : ipmax 3\n", "svc", true), (3, 3));
    }
}

#[test]
fn an_or_list_of_five_dnsbl_zones_costs_one_round_trip() {
    let mut run = start(
        "bl/label=listed_somewhere: dnsbl: a.bl.example dnsbl: b.bl.example \
         dnsbl: c.bl.example dnsbl: d.bl.example dnsbl: e.bl.example\n",
        "bl: msg go away\n",
        settings(2, None),
    );
    accept(&mut run, 1, "192.0.2.9:4000");
    // Five requests arrive before any answer: they were started together.
    let mut asked: Vec<(ReqId, Query)> = (0..5).map(|_| expect_lookup(&mut run.resolver)).collect();
    asked.sort_by_key(|(req, _)| *req);
    for (req, query) in asked {
        let listed = matches!(&query, Query::Dnsbl { zone, .. } if zone.as_str() == "e.bl.example");
        let addrs = if listed {
            vec![ip("127.0.0.2")]
        } else {
            vec![]
        };
        answer(&mut run.resolver, req, query, Answer::Addrs(addrs));
    }
    let (decision, facts) = expect_verdict(&mut run.parent, 1);
    assert_eq!(class_names(&facts), ["bl", GLOBAL]);
    assert_eq!(
        facts.classes[0].label.as_ref().map(|l| l.as_str()),
        Some("listed_somewhere")
    );
    assert_eq!(facts.classes[0].lineno, 1);
    assert_eq!(decision.disposition, Disposition::Msg);
    assert!(recv_within(&mut run.resolver, QUIET).is_none());
    finish(run);
}

#[test]
fn pool_size_is_at_least_one_and_capped() {
    // (maxthreads, threads)
    let rows = [
        (0, 1),
        (1, 1),
        (8, 8),
        (MAX_EVAL_THREADS as u32, MAX_EVAL_THREADS),
        (MAX_EVAL_THREADS as u32 + 1, MAX_EVAL_THREADS),
        (u32::MAX, MAX_EVAL_THREADS),
    ];
    for (maxthreads, want) in rows {
        assert_eq!(pool_size(maxthreads), want, "maxthreads {maxthreads}");
    }
}

#[test]
fn a_full_queue_closes_the_connection_instead_of_growing() {
    let mut s = settings(1, None);
    s.dns_timeout_ms = 3000;
    let mut run = start(
        "listed: dnsbl: bl.example.org\n",
        "listed: msg go away\n",
        s,
    );
    // conn 0 holds the only thread; MAX_QUEUED more fill the queue; the next one overflows.
    accept(&mut run, 0, "127.0.0.2:4000");
    expect_lookup(&mut run.resolver);
    let overflow = MAX_QUEUED as u64 + 1;
    for conn in 1..=overflow {
        accept(&mut run, conn, "127.0.0.3:4000");
    }
    let (decision, facts) = expect_verdict(&mut run.parent, overflow);
    assert_eq!(decision.disposition, Disposition::Close);
    assert_eq!(decision.action_class, None);
    assert!(!decision.counted);
    assert!(facts.classes.is_empty());
    finish(run);
}

/// Issue 13: with the only evaluation slot waiting on a lookup, a connection that needs none is
/// still decided at once (it takes no slot), and the waiting one is decided afterwards.
#[test]
fn a_lookup_free_connection_is_decided_while_every_slot_waits() {
    let mut run = start(
        "local: 127.0.0.1\nlisted: dnsbl: bl.example.org\n",
        "local: msg hi\nlisted: msg go away\n",
        settings(1, None),
    );
    accept(&mut run, 1, "127.0.0.2:4000");
    let (req, query) = expect_lookup(&mut run.resolver);
    accept(&mut run, 2, "127.0.0.1:4001");
    let (_, facts) = expect_verdict(&mut run.parent, 2);
    assert_eq!(class_names(&facts), ["local", GLOBAL]);
    answer(&mut run.resolver, req, query, Answer::Addrs(vec![]));
    let (decision, _) = expect_verdict(&mut run.parent, 1);
    assert_eq!(decision.disposition, Disposition::Close);
    finish(run);
}

/// A dispatch-thread try that consulted the history before it met a lookup hands the times it
/// read to the pool, so the connection is recorded once: `firsttime` still holds there.
#[test]
fn a_try_that_reached_a_lookup_records_the_history_once() {
    let mut run = start(
        "new: firsttime && identd: someone\nold: ALL\n",
        "new: msg welcome\nold: msg again\n",
        settings(2, None),
    );
    accept(&mut run, 1, "127.0.0.2:4000");
    let (req, query) = expect_lookup(&mut run.resolver);
    assert!(matches!(query, Query::Identd { .. }), "{query:?}");
    let user = privsep::proto::IdentUser::try_from("someone".to_string()).unwrap();
    answer(&mut run.resolver, req, query, Answer::Identd(Some(user)));
    let (_, facts) = expect_verdict(&mut run.parent, 1);
    assert_eq!(class_names(&facts), ["new", GLOBAL]);
    // The address is known now: the next connection is not a first time, and needs no lookup.
    accept(&mut run, 2, "127.0.0.2:4001");
    let (_, facts) = expect_verdict(&mut run.parent, 2);
    assert_eq!(class_names(&facts), ["old", GLOBAL]);
    finish(run);
}

fn grouped(s: ClassifierSettings, v4: u8, v6: u8) -> ClassifierSettings {
    ClassifierSettings {
        grouping: policy::grouping::Grouping::new(v4, v6).unwrap(),
        ..s
    }
}

/// The verdict's first class for `conn` from `remote`.
fn class_of(run: &mut Running, conn: u64, remote: &str) -> String {
    accept(run, conn, remote);
    let (_, facts) = expect_verdict(&mut run.parent, conn);
    class_names(&facts).into_iter().next().unwrap_or_default()
}

/// Issue 13: 500 attempts from one source, sent at once: exactly N are not over the rate,
/// and each source (or /24 under ipv4prefix 24) has its own bucket.
#[test]
fn rate_is_charged_once_per_attempt_in_arrival_order() {
    let mut run = start(
        "slow: rate: 10/1h\nok: ALL\n",
        "slow: msg slow\nok: msg ok\n",
        grouped(settings(4, None), 24, 64),
    );
    for n in 0..500u64 {
        accept(&mut run, n, "192.0.2.1:4000");
    }
    let mut ok = 0;
    for n in 0..500u64 {
        let (_, facts) = expect_verdict(&mut run.parent, n);
        if class_names(&facts).first().map(String::as_str) == Some("ok") {
            assert!(n < 10, "conn {n} passed after the burst was used");
            ok += 1;
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(class_of(&mut run, 600, "192.0.2.200:1"), "slow", "same /24");
    assert_eq!(class_of(&mut run, 601, "192.0.3.1:1"), "ok", "other /24");
    // SIGUSR1 forgets the buckets with the rest of the per-address history.
    run.parent.send(&ParentToClassifier::Flush).unwrap();
    assert_eq!(class_of(&mut run, 602, "192.0.2.1:1"), "ok", "flushed");
    finish(run);
}

/// A connection whose rules need a lookup is tried on the dispatch thread and evaluated
/// again on the pool: its rate must be charged once, not once per try.
#[test]
fn rate_is_not_charged_again_when_the_pool_re_evaluates() {
    let mut run = start(
        "over: rate: 2/1h\nknown: KNOWN\nother: ALL\n",
        "over: msg over\nknown: msg known\nother: msg other\n",
        settings(2, None),
    );
    for n in 0..4u64 {
        accept(&mut run, n, "192.0.2.7:4000");
        if n < 2 {
            let (req, query) = expect_lookup(&mut run.resolver);
            answer(
                &mut run.resolver,
                req,
                query,
                Answer::Host(HostFacts {
                    status: HnStatus::Unknown,
                    claimed: None,
                }),
            );
        }
        let (_, facts) = expect_verdict(&mut run.parent, n);
        let want = if n < 2 { "other" } else { "over" };
        assert_eq!(class_names(&facts)[0], want, "conn {n}");
    }
    finish(run);
}

/// A reload that keeps a rate keeps its buckets; one that drops it starts afresh if it comes
/// back.
#[test]
fn reload_keeps_the_buckets_of_a_rate_that_remains() {
    let mut run = start(
        "slow: rate: 2/1h\nok: ALL\n",
        "slow: msg slow\nok: msg ok\n",
        settings(1, None),
    );
    let reload = |run: &mut Running, gen: u32, rules: &str| {
        run.parent
            .send(&ParentToClassifier::Policy {
                gen: Gen(gen),
                rules: Some(rules.to_string()),
                actions: Some("slow: msg slow\nok: msg ok\nnew: msg new\n".to_string()),
                settings: settings(1, None),
                ipfiles: Vec::new(),
            })
            .unwrap();
        match from_classifier(&mut run.parent, WAIT) {
            Some(ClassifierToParent::PolicyLoaded { gen: g }) => assert_eq!(g, Gen(gen)),
            other => panic!("expected PolicyLoaded, got {other:?}"),
        }
    };
    assert_eq!(class_of(&mut run, 1, "192.0.2.1:1"), "ok");
    assert_eq!(class_of(&mut run, 2, "192.0.2.1:1"), "ok");
    assert_eq!(class_of(&mut run, 3, "192.0.2.1:1"), "slow");
    reload(&mut run, 2, "new/nt: 10.\nslow: rate: 2/1h\nok: ALL\n");
    assert_eq!(class_of(&mut run, 4, "192.0.2.1:1"), "slow", "bucket kept");
    reload(&mut run, 3, "ok: ALL\n");
    reload(&mut run, 4, "slow: rate: 2/1h\nok: ALL\n");
    assert_eq!(
        class_of(&mut run, 5, "192.0.2.1:1"),
        "ok",
        "dropped, then new"
    );
    finish(run);
}

/// ipmax counts a /24 (or /64) as one source, for new and re-seeded connections alike.
#[test]
fn ipmax_counts_a_prefix_after_a_seed_too() {
    let mut run = start(
        "svc: ALL\n",
        "svc: run /bin/cat : ipmax 2\n",
        grouped(settings(1, None), 24, 64),
    );
    let svc = || {
        vec![
            ClassName::try_from("svc".to_string()).unwrap(),
            ClassName::try_from(GLOBAL.to_string()).unwrap(),
        ]
    };
    run.parent
        .send(&ParentToClassifier::Seed {
            live: vec![
                LiveConn {
                    conn: ConnId(90),
                    remote: addr("127.70.1.1:1"),
                    classes: svc(),
                },
                LiveConn {
                    conn: ConnId(91),
                    remote: addr("[::ffff:127.70.1.2]:1"),
                    classes: svc(),
                },
            ],
        })
        .unwrap();
    accept(&mut run, 1, "127.70.1.3:4000");
    let (d1, _) = expect_verdict(&mut run.parent, 1);
    assert_eq!(d1.refusal, Some(Refusal::IpMax), "two seeded in the /24");
    accept(&mut run, 2, "127.70.2.1:4000");
    let (d2, _) = expect_verdict(&mut run.parent, 2);
    assert!(d2.counted, "another /24");
    accept(&mut run, 3, "[2001:db8::1]:4000");
    accept(&mut run, 4, "[2001:db8::2]:4000");
    accept(&mut run, 5, "[2001:db8::ffff:3]:4000");
    let decided: Vec<Option<Refusal>> = (3..=5)
        .map(|n| expect_verdict(&mut run.parent, n).0.refusal)
        .collect();
    assert_eq!(decided, [None, None, Some(Refusal::IpMax)], "one /64");
    finish(run);
}
