//! The real `portnanny` binary classifying clients by lookups: KNOWN/UNKNOWN/PARANOID,
//! hnstatus:, hostname:, re:, claimedhn:, forwhn:, dnsbl: (with /IP), identd:, answerson:, the
//! %(hostname)s %(hnstatus)s %(claimedhn)s %(identd)s substitutions, and lookups that are slow
//! for real (a DNS server that answers late).
//!
//! Runs as root: each test re-runs itself in a private mount namespace (see `dnsenv`) whose
//! resolv.conf names a nameserver the test started on 127.55.N.1, then starts the daemon there
//! (its resolver worker inherits the namespace) and connects from 127.54.x.y. The test identd
//! and answerson listeners run on 127.54.x.y too. Without root every test prints a skip line.

mod dnsenv;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use dnsenv::{fetch, fetch_from, isolate, ns_addr, Nameserver, Records, SlowDns};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// A test identd on `ip`:113 answering USERID `user` for whatever ports it is asked about,
/// for up to `conns` connections (accepts bounded by a deadline).
fn identd(ip: &str, user: &'static str, conns: usize) {
    let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{e}"));
    let l = TcpListener::bind((ip, 113)).unwrap_or_else(|e| panic!("bind {ip}:113: {e}"));
    let _ = l.set_nonblocking(true);
    thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(60);
        let mut served = 0;
        while served < conns && Instant::now() < end {
            let Ok((mut c, _)) = l.accept() else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            served += 1;
            let _ = c.set_nonblocking(false);
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut b = [0u8; 1];
            while !req.ends_with(b"\n") && req.len() < 100 {
                match c.read(&mut b) {
                    Ok(1) => req.push(b[0]),
                    _ => break,
                }
            }
            let req = String::from_utf8_lossy(&req);
            let ports = req.trim_end();
            let _ = c.write_all(format!("{ports} : USERID : UNIX : {user}\r\n").as_bytes());
        }
    });
}

fn reply(src: &str, port: u16) -> String {
    fetch_from(src, port, CLIENT_TIMEOUT).0
}

#[test]
fn classes_from_every_lookup_kind() {
    let records = Records::new()
        .host("host.good.test", "127.54.5.10")
        .host("r17.dyn.test", "127.54.5.11")
        .ptr("127.54.5.12", "ghost.test")
        .ptr("127.54.5.13", "liar.test")
        .host("liar.test", "127.54.5.98")
        .host("plain.test", "127.54.5.15")
        .ptr("127.54.5.16", "other.test")
        .host("other.test", "127.54.5.99")
        .a("multi.test", "127.54.5.30")
        .a("multi.test", "127.54.5.31")
        .a("40.5.54.127.bl.test", "127.0.0.2")
        .a("41.5.54.127.bl.test", "127.0.0.4")
        .a("42.5.54.127.any.test", "127.0.0.9");
    let Some(env) = isolate(
        "classes_from_every_lookup_kind",
        ns_addr(21),
        Nameserver::Dnsmasq(records),
    ) else {
        return;
    };
    identd("127.54.5.20", "alice", 1);
    let ans = TcpListener::bind("127.54.5.50:0").unwrap_or_else(|e| panic!("{e}"));
    let ans_port = ans.local_addr().map(|a| a.port()).unwrap_or(0);

    // First matching rule wins; lookup-free rules first, as the Configuration advises.
    let rules = format!(
        "ans: ip: 127.54.5.50 && answerson: {ans_port}\n\
         ident: ip: 127.54.5.20 && identd: alice\n\
         fw: forwhn: multi.test\n\
         bl2: dnsbl: bl.test/127.0.0.2\n\
         bl4: dnsbl: bl.test/127.0.0.4\n\
         blany: dnsbl: any.test\n\
         byname: hostname: .good.test\n\
         byre: re: ^r[0-9]+\\.dyn\\.test$\n\
         noforw: hnstatus: noforward\n\
         liar: claimedhn: liar.test\n\
         unk: UNKNOWN\n\
         known: KNOWN\n\
         para: PARANOID\n"
    );
    let actions = "\
ans: msg ans%(nl)s
ident: msg ident %(identd)s %(connsum)s%(nl)s
fw: msg fw%(nl)s
bl2: msg bl2%(nl)s
bl4: msg bl4%(nl)s
blany: msg blany%(nl)s
byname: msg byname %(hostname)s %(hnstatus)s%(nl)s
byre: msg byre %(hostname)s%(nl)s
noforw: msg noforw %(hostname)s %(claimedhn)s%(nl)s
liar: msg liar %(hostname)s %(hnstatus)s %(claimedhn)s%(nl)s
unk: msg unk %(hostname)s %(hnstatus)s%(nl)s
known: msg known %(hostname)s%(nl)s
para: msg para %(hnstatus)s %(claimedhn)s%(nl)s
";
    let n = env.start_nanny(&rules, actions, "dnstimeout 3s\nidentdtimeout 3s");
    let port = n.port;
    let rows: &[(&str, &str)] = &[
        ("127.54.5.10", "byname host.good.test good\n"),
        ("127.54.5.11", "byre r17.dyn.test\n"),
        ("127.54.5.12", "noforw 127.54.5.12 ghost.test\n"),
        ("127.54.5.13", "liar 127.54.5.13 addrmismatch liar.test\n"),
        ("127.54.5.14", "unk 127.54.5.14 unknown\n"),
        ("127.54.5.15", "known plain.test\n"),
        ("127.54.5.16", "para addrmismatch other.test\n"),
        ("127.54.5.20", "ident alice alice@127.54.5.20\n"),
        ("127.54.5.30", "fw\n"),
        ("127.54.5.31", "fw\n"),
        ("127.54.5.40", "bl2\n"),
        ("127.54.5.41", "bl4\n"),
        ("127.54.5.42", "blany\n"),
        ("127.54.5.50", "ans\n"),
    ];
    for (src, want) in rows {
        let got = reply(src, port);
        assert_eq!(
            got,
            *want,
            "client {src}\n--- daemon log:\n{}\n--- dns log:\n{}",
            n.log(),
            env.dnsmasq_log()
        );
    }
    drop(ans);
}

#[test]
fn slow_dns_never_delays_an_ip_only_connection() {
    let ns = ns_addr(22);
    let Some(env) = isolate(
        "slow_dns_never_delays_an_ip_only_connection",
        ns,
        Nameserver::External(Records::new()),
    ) else {
        return;
    };
    // Every DNS answer takes 1.5 s; nothing is listed.
    let _dns = SlowDns::start_with(ns, Duration::from_millis(1500), |_| false);
    let rules = "fast: ip: 127.54.6.1\nbl: dnsbl: slow.test\nother: ALL\n";
    let actions = "fast: msg fast%(nl)s\nbl: msg listed%(nl)s\nother: msg other%(nl)s\n";
    let n = env.start_nanny(rules, actions, "maxthreads 4\ndnstimeout 5s");
    let port = n.port;
    // Two clients whose rules need the slow DNSBL start first ...
    let slow: Vec<_> = ["127.54.6.2", "127.54.6.3"]
        .iter()
        .map(|src| {
            let src = src.to_string();
            thread::spawn(move || fetch_from(&src, port, CLIENT_TIMEOUT))
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    // ... then the IP-only client, which must be served at once.
    let (got, took) = fetch_from("127.54.6.1", port, CLIENT_TIMEOUT);
    assert_eq!(got, "fast\n", "{}", n.log());
    for h in slow {
        let (got, slow_took) = h.join().unwrap_or_else(|_| panic!("client thread"));
        assert_eq!(got, "other\n", "{}", n.log());
        assert!(slow_took >= Duration::from_millis(1400), "{slow_took:?}");
    }
    eprintln!("ip-only client served in {took:?} while two DNSBL lookups took 1.5 s");
    assert!(took < Duration::from_millis(500), "{took:?}\n{}", n.log());
}

#[test]
fn five_slow_dnsbl_zones_classify_in_one_delay() {
    let ns = ns_addr(23);
    let Some(env) = isolate(
        "five_slow_dnsbl_zones_classify_in_one_delay",
        ns,
        Nameserver::External(Records::new()),
    ) else {
        return;
    };
    // Each answer takes 200 ms. The client is listed only in the fifth zone, so left-to-right
    // evaluation needs all five answers.
    let dns = SlowDns::start_with(ns, Duration::from_millis(200), |name| {
        name.ends_with(".z5.test")
    });
    let rules = "bl: dnsbl: z1.test dnsbl: z2.test dnsbl: z3.test dnsbl: z4.test dnsbl: z5.test\n\
                 other: ALL\n";
    let actions = "bl: msg listed%(nl)s\nother: msg other%(nl)s\n";
    let n = env.start_nanny(rules, actions, "maxthreads 4\ndnstimeout 5s");
    let (got, took) = fetch_from("127.54.7.1", n.port, CLIENT_TIMEOUT);
    assert_eq!(got, "listed\n", "{}", n.log());
    let names = dns.query_names();
    eprintln!("five 200 ms DNSBL zones classified in {took:?}; queries: {names:?}");
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(took >= Duration::from_millis(180), "{took:?}");
    assert!(
        took < Duration::from_millis(600),
        "zones looked up in parallel, not one after another: {took:?}\n{}",
        n.log()
    );
    // The same client again: all five answers come from the resolver's cache, at once.
    let (_, again) = fetch_from("127.54.7.1", n.port, CLIENT_TIMEOUT);
    eprintln!("same client again (cached): {again:?}");
    assert!(again < Duration::from_millis(150), "{again:?}");
}

#[test]
fn aftermaxthreads_applies_while_the_only_evaluation_waits_on_dns() {
    let ns = ns_addr(24);
    let Some(env) = isolate(
        "aftermaxthreads_applies_while_the_only_evaluation_waits_on_dns",
        ns,
        Nameserver::External(Records::new()),
    ) else {
        return;
    };
    let _dns = SlowDns::start_with(ns, Duration::from_millis(1500), |_| false);
    let rules = "bl: dnsbl: slow.test\nother: ALL\n";
    let actions = "bl: msg listed%(nl)s\nother: msg other%(nl)s\nbusy: msg busy%(nl)s\n";
    let n = env.start_nanny(
        rules,
        actions,
        "maxthreads 1\naftermaxthreads busy\ndnstimeout 5s",
    );
    let port = n.port;
    let first = thread::spawn(move || fetch_from("127.54.8.1", port, CLIENT_TIMEOUT));
    thread::sleep(Duration::from_millis(300));
    // The single evaluation slot is waiting on DNS: the next client goes straight to `busy`.
    let (got, took) = fetch_from("127.54.8.2", port, CLIENT_TIMEOUT);
    assert_eq!(got, "busy\n", "{}", n.log());
    assert!(took < Duration::from_millis(500), "{took:?}");
    let (got, took) = first.join().unwrap_or_else(|_| panic!("client thread"));
    assert_eq!(got, "other\n", "{}", n.log());
    assert!(took >= Duration::from_millis(1400), "{took:?}");
}

#[test]
fn ipv6_client_hostname_and_nibble_dnsbl() {
    // ::1 is listed in bl6.test under its 32-nibble name; its name comes from /etc/hosts.
    let nibbles = format!("1{}", ".0".repeat(31));
    let records = Records::new().a(&format!("{nibbles}.bl6.test"), "127.0.0.2");
    let Some(env) = isolate(
        "ipv6_client_hostname_and_nibble_dnsbl",
        ns_addr(25),
        Nameserver::Dnsmasq(records),
    ) else {
        return;
    };
    let rules = "v6bl: dnsbl: bl6.test/127.0.0.2 && KNOWN\nother: ALL\n";
    let actions = "v6bl: msg v6bl %(ip)s %(hostname)s %(hnstatus)s%(nl)s\nother: msg other%(nl)s\n";
    let n = env.start_nanny_on(rules, actions, "", true);
    let dst: std::net::SocketAddr = format!("[::1]:{}", n.port)
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let (got, took) = fetch("::1", dst, CLIENT_TIMEOUT);
    eprintln!("ipv6 client classified in {took:?}");
    assert_eq!(
        got,
        "v6bl ::1 localhost good\n",
        "{}\n{}",
        n.log(),
        env.dnsmasq_log()
    );
}

/// A test identd on `ip`:113 that answers USERID `user` only after `delay`, each connection
/// on its own thread, for up to `conns` connections (accepts bounded by a deadline).
fn slow_identd(ip: &str, user: &'static str, delay: Duration, conns: usize) {
    let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{e}"));
    let l = TcpListener::bind((ip, 113)).unwrap_or_else(|e| panic!("bind {ip}:113: {e}"));
    let _ = l.set_nonblocking(true);
    thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(60);
        let mut served = 0;
        while served < conns && Instant::now() < end {
            let Ok((mut c, _)) = l.accept() else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            served += 1;
            thread::spawn(move || {
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut req = Vec::new();
                let mut b = [0u8; 1];
                while !req.ends_with(b"\n") && req.len() < 100 {
                    match c.read(&mut b) {
                        Ok(1) => req.push(b[0]),
                        _ => break,
                    }
                }
                thread::sleep(delay);
                let req = String::from_utf8_lossy(&req);
                let ports = req.trim_end();
                let _ = c.write_all(format!("{ports} : USERID : UNIX : {user}\r\n").as_bytes());
            });
        }
    });
}

/// Issue 9 item 13: with every evaluation slot waiting on a 3 s identd, a connection whose rules
/// need no lookup (`local:` only) waited for a slot (8.8 s measured). It is decided at once now.
#[test]
fn all_slots_on_slow_identd_never_delay_a_local_only_connection() {
    let ns = ns_addr(26);
    let Some(env) = isolate(
        "all_slots_on_slow_identd_never_delay_a_local_only_connection",
        ns,
        Nameserver::External(Records::new()),
    ) else {
        return;
    };
    let slow_srcs = ["127.54.9.2", "127.54.9.3"];
    for src in slow_srcs {
        slow_identd(src, "alice", Duration::from_secs(3), 1);
    }
    // A second port: connections to it match `local:` before any rule needs a lookup.
    let fast_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"));
    let rules = format!("fast: local: {fast_port}\nident: identd: alice\nother: ALL\n");
    let actions = "fast: msg fast%(nl)s\nident: msg ident%(nl)s\nother: msg other%(nl)s\n";
    let n = env.start_nanny(
        &rules,
        actions,
        &format!("listen {fast_port}@127.0.0.1\nmaxthreads 2\nidentdtimeout 10s"),
    );
    let port = n.port;
    // Both evaluation slots go to clients whose identd answers after 3 s ...
    let slow: Vec<_> = slow_srcs
        .iter()
        .map(|src| {
            let src = src.to_string();
            thread::spawn(move || fetch_from(&src, port, CLIENT_TIMEOUT))
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    // ... then a client on the `local:` port, which must be served at once.
    let (got, took) = fetch_from("127.54.9.1", fast_port, CLIENT_TIMEOUT);
    assert_eq!(got, "fast\n", "{}", n.log());
    for h in slow {
        let (got, slow_took) = h.join().unwrap_or_else(|_| panic!("client thread"));
        assert_eq!(got, "ident\n", "{}", n.log());
        assert!(slow_took >= Duration::from_millis(2900), "{slow_took:?}");
    }
    eprintln!("local:-only client served in {took:?} while both slots waited 3 s on identd");
    assert!(took < Duration::from_secs(1), "{took:?}\n{}", n.log());
}

/// Parent pid of `pid`, from /proc/PID/stat (after the last ')': comm may hold anything).
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The worker whose argv names `role`, of a daemon this test process started (the daemon is
/// our child, the worker its child).
fn worker_pid(role: &str) -> Option<u32> {
    let me = std::process::id();
    let dir = std::fs::read_dir("/proc").ok()?;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if ppid(pid).and_then(ppid) != Some(me) {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let mut args = cmd.split(|b| *b == 0);
        if args.any(|a| a == b"--privsep-role") && args.next() == Some(role.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// Threads of `pid`, from /proc/PID/task.
fn tasks(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Issue 9 item 12: the resolver started 32 lookup threads even when no rule needed a lookup. They
/// are started on demand now: few before the first lookup, one per parallel lookup after; and
/// the resolver still cannot create processes (a seccomp filter instead of RLIMIT_NPROC 0).
#[test]
fn resolver_threads_start_on_demand() {
    let ns = ns_addr(27);
    let Some(env) = isolate(
        "resolver_threads_start_on_demand",
        ns,
        Nameserver::External(Records::new()),
    ) else {
        return;
    };
    let srcs = ["127.54.10.1", "127.54.10.2", "127.54.10.3", "127.54.10.4"];
    for src in srcs {
        slow_identd(src, "alice", Duration::from_millis(2500), 1);
    }
    let rules = "ident: identd: alice\nother: ALL\n";
    let actions = "ident: msg ident%(nl)s\nother: msg other%(nl)s\n";
    let n = env.start_nanny(rules, actions, "maxthreads 4\nidentdtimeout 10s");
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let resolver = loop {
        if let Some(p) = worker_pid("resolver") {
            break p;
        }
        assert!(Instant::now() < deadline, "no resolver; log:\n{}", n.log());
        thread::sleep(Duration::from_millis(20));
    };
    let status = std::fs::read_to_string(format!("/proc/{resolver}/status")).unwrap_or_default();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["Seccomp:", "2"])),
        "the resolver runs under its process-creation filter:\n{status}"
    );
    let before = tasks(resolver);
    let port = n.port;
    let clients: Vec<_> = srcs
        .iter()
        .map(|src| {
            let src = src.to_string();
            thread::spawn(move || fetch_from(&src, port, CLIENT_TIMEOUT))
        })
        .collect();
    // While the four identd lookups wait (2.5 s each), look at the thread count.
    let mut during = 0;
    let until = Instant::now() + Duration::from_millis(2000);
    while Instant::now() < until {
        during = during.max(tasks(resolver));
        thread::sleep(Duration::from_millis(50));
    }
    for h in clients {
        let (got, _) = h.join().unwrap_or_else(|_| panic!("client thread"));
        assert_eq!(got, "ident\n", "{}", n.log());
    }
    eprintln!(
        "resolver threads: {before} before any lookup (max lookup threads 32), {during} during 4 parallel lookups"
    );
    assert!(before <= 4, "main, two readers, the timer: {before}");
    assert!(
        during >= before + 4,
        "one lookup thread per parallel lookup: {before} -> {during}"
    );
}
