//! The resolver role end to end over real privsep channels: handshake, every query kind through
//! the system resolver against dnsmasq, query echo, cache and Flush, deadlines against a slow
//! DNS server, parallel DNSBL zones, and protocol violations.
//!
//! Runs in the test process: `resolver::serve` runs on a thread with the real lookups, the test
//! plays parent and classifier on the other ends of two socketpairs. Everything that can cause a
//! DNS query runs inside a private mount namespace (see `dnsenv`); without root those tests
//! print a skip line and pass.

mod dnsenv;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::ExitCode;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use dnsenv::{isolate, ns_addr, Nameserver, Records, SlowDns};
use portnanny::resolver::{serve, SystemLookups};
use privsep::proto::{
    Answer, ClassifierToResolver, HnStatus, HostFacts, HostName, ParentToResolver, Query, ReqId,
    ResolverSettings, ResolverToClassifier, ResolverToParent,
};
use privsep::Channel;

use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use std::os::fd::AsFd;

type ParentEnd = Channel<ParentToResolver, ResolverToParent>;
type ClassifierEnd = Channel<ClassifierToResolver, ResolverToClassifier>;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn name(s: &str) -> HostName {
    HostName::try_from(s.to_owned()).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn settings(dns_ms: u32) -> ResolverSettings {
    ResolverSettings {
        threads: 8,
        dns_timeout_ms: dns_ms,
        identd_timeout_ms: 1000,
        answerson_timeout_ms: 1000,
        cache_ttl_secs: 300,
        cache_entries: 100,
    }
}

struct Resolver {
    parent: ParentEnd,
    classifier: ClassifierEnd,
    thread: JoinHandle<ExitCode>,
}

/// Start `serve` on a thread; do both handshakes.
fn start(settings: ResolverSettings) -> Resolver {
    let (mut parent, p_side) = Channel::<ParentToResolver, ResolverToParent>::pair()
        .unwrap_or_else(|e| panic!("socketpair: {e}"));
    let (mut classifier, c_side) = Channel::<ClassifierToResolver, ResolverToClassifier>::pair()
        .unwrap_or_else(|e| panic!("socketpair: {e}"));
    read_timeout(&parent, 30);
    read_timeout(&classifier, 30);
    let thread = thread::spawn(move || serve(p_side, c_side, SystemLookups));
    let build = privsep::build_id();
    parent
        .send(&ParentToResolver::Hello {
            build: build.clone(),
            settings,
        })
        .unwrap_or_else(|e| panic!("send: {e}"));
    match parent.recv() {
        Ok(ResolverToParent::Hello { build: b }) => assert_eq!(b, build),
        other => panic!("expected Hello from resolver, got {other:?}"),
    }
    classifier
        .send(&ClassifierToResolver::Hello {
            build: build.clone(),
        })
        .unwrap_or_else(|e| panic!("send: {e}"));
    match classifier.recv() {
        Ok(ResolverToClassifier::Hello { build: b }) => assert_eq!(b, build),
        other => panic!("expected Hello from resolver, got {other:?}"),
    }
    Resolver {
        parent,
        classifier,
        thread,
    }
}

impl Resolver {
    fn ask(&mut self, req: u64, query: Query) {
        self.classifier
            .send(&ClassifierToResolver::Lookup {
                req: ReqId(req),
                query,
            })
            .unwrap_or_else(|e| panic!("send Lookup: {e}"));
    }

    /// The next answer; the channel read is bounded by the resolver's own deadlines, the
    /// socket timeout guards against a hang.
    fn answer(&mut self) -> (ReqId, Query, Answer) {
        match self.classifier.recv() {
            Ok(ResolverToClassifier::LookupResult { req, query, answer }) => (req, query, answer),
            other => panic!("expected LookupResult, got {other:?}"),
        }
    }

    fn lookup(&mut self, req: u64, query: Query) -> Answer {
        self.ask(req, query.clone());
        let (r, q, a) = self.answer();
        assert_eq!(r, ReqId(req), "req echoed");
        assert_eq!(q, query, "query echoed");
        a
    }

    /// Close both channels and collect the exit code.
    fn stop(self) -> String {
        drop(self.parent);
        drop(self.classifier);
        let code = self
            .thread
            .join()
            .unwrap_or_else(|_| panic!("serve panicked"));
        format!("{code:?}")
    }
}

fn code(n: u8) -> String {
    format!("{:?}", ExitCode::from(n))
}

/// Bound every blocking read on a test-side channel end, so a resolver that never answers
/// fails the test instead of hanging it.
fn read_timeout<T: AsFd>(chan: &T, secs: i64) {
    setsockopt(chan, sockopt::ReceiveTimeout, &TimeVal::new(secs, 0))
        .unwrap_or_else(|e| panic!("SO_RCVTIMEO: {e}"));
}

#[test]
fn every_query_kind_with_echo_cache_and_flush() {
    let records = Records::new()
        .host("good.test", "127.54.1.10")
        .ptr("127.54.1.12", "ghost.test")
        .a("10.1.54.127.bl.test", "127.0.0.2")
        .a("multi.test", "127.54.1.40")
        .a("multi.test", "127.54.1.41");
    let Some(env) = isolate(
        "every_query_kind_with_echo_cache_and_flush",
        ns_addr(11),
        Nameserver::Dnsmasq(records),
    ) else {
        return;
    };
    let mut r = start(settings(3000));

    let good = Query::Host {
        ip: ip("127.54.1.10"),
    };
    let want_good = Answer::Host(HostFacts {
        status: HnStatus::Good,
        claimed: Some(name("good.test")),
    });
    assert_eq!(
        r.lookup(1, good.clone()),
        want_good,
        "{}",
        env.dnsmasq_log()
    );
    assert_eq!(
        r.lookup(
            2,
            Query::Host {
                ip: ip("127.54.1.12")
            }
        ),
        Answer::Host(HostFacts {
            status: HnStatus::NoForward,
            claimed: Some(name("ghost.test"))
        })
    );
    assert_eq!(
        r.lookup(
            3,
            Query::Dnsbl {
                ip: ip("127.54.1.10"),
                zone: name("bl.test")
            }
        ),
        Answer::Addrs(vec![ip("127.0.0.2")])
    );
    let Answer::Addrs(mut fwd) = r.lookup(
        4,
        Query::Forward {
            name: name("multi.test"),
        },
    ) else {
        panic!("forward answer kind");
    };
    fwd.sort();
    assert_eq!(fwd, vec![ip("127.54.1.40"), ip("127.54.1.41")]);

    // answerson: a listener on loopback answers, a closed port does not.
    let listener = TcpListener::bind("127.54.1.50:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    assert_eq!(
        r.lookup(
            5,
            Query::AnswersOn {
                ip: ip("127.54.1.50"),
                port,
                local_ip: ip("127.0.0.1")
            }
        ),
        Answer::AnswersOn(true)
    );
    assert_eq!(
        r.lookup(
            6,
            Query::AnswersOn {
                ip: ip("127.54.1.51"),
                port,
                local_ip: ip("127.0.0.1")
            }
        ),
        Answer::AnswersOn(false)
    );
    // identd: nobody listens on 127.54.1.52:113.
    let remote: SocketAddr = "127.54.1.52:40000"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let local: SocketAddr = "127.0.0.1:25".parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.lookup(7, Query::Identd { remote, local }),
        Answer::Identd(None)
    );

    // Cached: the repeat causes no DNS query; after Flush it does.
    let ptr_queries = |log: &str| log.matches("query[PTR] 10.1.54.127.in-addr.arpa").count();
    let before = ptr_queries(&env.dnsmasq_log());
    assert_eq!(before, 1, "{}", env.dnsmasq_log());
    assert_eq!(r.lookup(8, good.clone()), want_good);
    assert_eq!(
        ptr_queries(&env.dnsmasq_log()),
        1,
        "answered from the cache"
    );
    r.parent
        .send(&ParentToResolver::Flush)
        .unwrap_or_else(|e| panic!("{e}"));
    // Flush is handled on another thread than lookups; wait (bounded) until it took effect.
    let end = Instant::now() + Duration::from_secs(10);
    let mut n = 9;
    loop {
        assert_eq!(r.lookup(n, good.clone()), want_good);
        if ptr_queries(&env.dnsmasq_log()) == 2 || Instant::now() > end {
            break;
        }
        n += 1;
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        ptr_queries(&env.dnsmasq_log()),
        2,
        "looked up again after Flush"
    );

    assert_eq!(r.stop(), code(0), "channels closed: clean exit");
}

#[test]
fn five_slow_dnsbl_zones_answer_in_parallel() {
    let ns = ns_addr(12);
    let Some(_env) = isolate(
        "five_slow_dnsbl_zones_answer_in_parallel",
        ns,
        Nameserver::External(Records::new()),
    ) else {
        return;
    };
    let zones = ["z1.test", "z2.test", "z3.test", "z4.test", "z5.test"];
    let dns = SlowDns::start(ns, Duration::from_millis(200), &zones);
    let mut r = start(settings(3000));

    // Prime the cache with one answer (takes ~200 ms).
    let cached = Query::Dnsbl {
        ip: ip("127.54.2.1"),
        zone: name("z1.test"),
    };
    let t = Instant::now();
    assert_eq!(
        r.lookup(1, cached.clone()),
        Answer::Addrs(vec![ip("127.0.0.2")])
    );
    let one = t.elapsed();
    assert!(
        one >= Duration::from_millis(180),
        "the responder is slow: {one:?}"
    );

    // Five zones at once for another peer, then the cached question: the cached one must come
    // back first and at once, the five together in about one delay.
    let t = Instant::now();
    for (i, z) in zones.iter().enumerate() {
        r.ask(
            10 + i as u64,
            Query::Dnsbl {
                ip: ip("127.54.2.2"),
                zone: name(z),
            },
        );
    }
    r.ask(20, cached);
    let mut order = Vec::new();
    for _ in 0..6 {
        let (req, _q, a) = r.answer();
        order.push((req.0, t.elapsed()));
        assert_eq!(a, Answer::Addrs(vec![ip("127.0.0.2")]), "req {}", req.0);
    }
    let first = order.first().copied().unwrap_or((0, Duration::MAX));
    assert_eq!(first.0, 20, "cached answer first: {order:?}");
    assert!(first.1 < Duration::from_millis(100), "{order:?}");
    let last = order.iter().map(|o| o.1).max().unwrap_or(Duration::MAX);
    eprintln!("five 200 ms DNSBL zones answered in {last:?} (single zone {one:?})");
    assert!(
        last < Duration::from_millis(600),
        "parallel, not serial: {order:?}"
    );
    assert!(last >= Duration::from_millis(180), "{order:?}");
    assert_eq!(dns.query_names().len(), 6, "{:?}", dns.query_names());
    assert_eq!(r.stop(), code(0));
}

#[test]
fn dns_deadline_answers_no_answer_in_time() {
    let ns = ns_addr(13);
    let Some(_env) = isolate(
        "dns_deadline_answers_no_answer_in_time",
        ns,
        Nameserver::External(Records::new()),
    ) else {
        return;
    };
    // The server answers after 1.5 s; the resolver's DNS deadline is 300 ms.
    let _dns = SlowDns::start(ns, Duration::from_millis(1500), &["slow.test"]);
    let mut r = start(settings(300));
    let t = Instant::now();
    let a = r.lookup(
        1,
        Query::Dnsbl {
            ip: ip("127.54.3.1"),
            zone: name("slow.test"),
        },
    );
    let took = t.elapsed();
    assert_eq!(a, Answer::Addrs(Vec::new()), "timeout = not listed");
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(800),
        "{took:?}"
    );
    let t = Instant::now();
    let a = r.lookup(
        2,
        Query::Host {
            ip: ip("127.54.3.2"),
        },
    );
    assert_eq!(
        a,
        Answer::Host(HostFacts {
            status: HnStatus::Unknown,
            claimed: None
        })
    );
    assert!(
        t.elapsed() < Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
    // The late answer of the first lookup lands in the cache once it arrives.
    thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let a = r.lookup(
        3,
        Query::Dnsbl {
            ip: ip("127.54.3.1"),
            zone: name("slow.test"),
        },
    );
    assert_eq!(a, Answer::Addrs(vec![ip("127.0.0.2")]));
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r.stop(), code(0));
}

#[test]
fn lookup_before_hello_is_refused() {
    // No lookup is ever made here, so no namespace is needed.
    let (mut parent, p_side) = Channel::<ParentToResolver, ResolverToParent>::pair()
        .unwrap_or_else(|e| panic!("socketpair: {e}"));
    let (mut classifier, c_side) = Channel::<ClassifierToResolver, ResolverToClassifier>::pair()
        .unwrap_or_else(|e| panic!("socketpair: {e}"));
    read_timeout(&parent, 30);
    let t = thread::spawn(move || serve(p_side, c_side, SystemLookups));
    parent
        .send(&ParentToResolver::Hello {
            build: privsep::build_id(),
            settings: settings(1000),
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(parent.recv(), Ok(ResolverToParent::Hello { .. })));
    classifier
        .send(&ClassifierToResolver::Lookup {
            req: ReqId(1),
            query: Query::Host {
                ip: ip("127.54.4.1"),
            },
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let code111 = code(111);
    assert_eq!(
        format!("{:?}", t.join().unwrap_or_else(|_| panic!("panicked"))),
        code111
    );
    // The parent is told why.
    match parent.recv() {
        Ok(ResolverToParent::Log(rec)) => assert!(rec.text.contains("before Hello"), "{rec:?}"),
        other => panic!("expected a Log record, got {other:?}"),
    }
}

#[test]
fn wrong_build_is_refused() {
    let (mut parent, p_side) = Channel::<ParentToResolver, ResolverToParent>::pair()
        .unwrap_or_else(|e| panic!("socketpair: {e}"));
    let (_classifier, c_side) = Channel::<ClassifierToResolver, ResolverToClassifier>::pair()
        .unwrap_or_else(|e| panic!("socketpair: {e}"));
    read_timeout(&parent, 30);
    let t = thread::spawn(move || serve(p_side, c_side, SystemLookups));
    parent
        .send(&ParentToResolver::Hello {
            build: privsep::proto::BuildId("some-other-build".into()),
            settings: settings(1000),
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        format!("{:?}", t.join().unwrap_or_else(|_| panic!("panicked"))),
        code(111)
    );
}
