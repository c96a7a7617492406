//! `rate: N/TIMESPEC` and per-prefix grouping (`ipv4prefix`, `ipv6prefix`) through the real
//! binary (issue 13): exactness under 500 concurrent attempts from one source, refill after the
//! window, one bucket per source, a /24 sharing ipmax, rate and history, ::1 under
//! `ipv6prefix 64`, buckets kept across a reload, and `-C` positions for bad arguments.
//!
//! Runs in the test process; starts `portnanny` with the shared harness (`tests/util`). The
//! rules are address-only, so no test causes a lookup; every client uses a loopback address,
//! each test its own 127.7x.0.0/16 so a failure names one test.
//!
//! Invariants: every wait is bounded (client I/O by the harness deadlines, sleeps fixed and
//! short, with at least half a second of margin on the side of the boundary they test); loops
//! run a fixed number of times.

mod util;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;
use util::*;

const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

fn ip(b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, b, c, d)
}

/// The reply of one connection from `src`.
fn reply(n: &Nanny, src: Ipv4Addr) -> String {
    n.fetch_from(src).text()
}

/// Asserts the replies of `want.len()` connections from `src`, in order.
fn expect_seq(n: &Nanny, src: Ipv4Addr, want: &[&str], why: &str) {
    let got: Vec<String> = want.iter().map(|_| reply(n, src)).collect();
    assert_eq!(got, want, "{why} (client {src}); log:\n{}", n.log());
}

/// `count` attempts from `src`, all started at once; the replies, sorted.
fn storm(n: &Nanny, src: Ipv4Addr, count: usize) -> Vec<String> {
    let barrier = Arc::new(Barrier::new(count));
    let addr = n.addr;
    let handles: Vec<_> = (0..count)
        .map(|_| {
            let b = Arc::clone(&barrier);
            thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    b.wait();
                    let r = fetch(src, addr, ATTEMPT_TIMEOUT);
                    format!("{} {:?}", r.text().trim_end(), r.end)
                })
                .expect("attempt thread")
        })
        .collect();
    let mut out: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("attempt thread"))
        .collect();
    out.sort();
    out
}

fn rate_setup(rules: &str) -> Setup {
    Setup::new(
        rules,
        "slow: msg slow%(nl)s\nok: msg ok%(nl)s\nmark: msg mark%(nl)s\n",
    )
}

#[test]
fn exactly_n_of_500_concurrent_attempts_from_one_source_are_within_the_rate() {
    let s = Scratch::new("rate-500");
    let n = Nanny::start(
        &s,
        rate_setup("slow: rate: 10/1h\nok: ALL\n").conf("maxthreads 4"),
    );
    let replies = storm(&n, ip(71, 0, 1), 500);
    let ok = replies.iter().filter(|r| *r == "ok Eof").count();
    let slow = replies.iter().filter(|r| *r == "slow Eof").count();
    let other: Vec<&String> = replies
        .iter()
        .filter(|r| *r != "ok Eof" && *r != "slow Eof")
        .collect();
    assert!(other.is_empty(), "unexpected replies {other:?}");
    assert_eq!((ok, slow), (10, 490), "log:\n{}", n.log());
    // The bucket is empty now: the next attempt, alone, is over too.
    assert_eq!(reply(&n, ip(71, 0, 1)), "slow\n");
}

#[test]
fn a_bucket_refills_at_n_per_window() {
    let s = Scratch::new("rate-refill");
    // 2 per 4 s: one token back every 2 s.
    let n = Nanny::start(&s, rate_setup("slow: rate: 2/4s\nok: ALL\n"));
    let src = ip(72, 0, 1);
    expect_seq(&n, src, &["ok\n", "ok\n", "slow\n"], "a burst of 2");
    thread::sleep(Duration::from_millis(2600));
    expect_seq(&n, src, &["ok\n", "slow\n"], "one token back after 2 s");
    thread::sleep(Duration::from_millis(4600));
    expect_seq(
        &n,
        src,
        &["ok\n", "ok\n", "slow\n"],
        "full after the window",
    );
}

#[test]
fn each_source_has_its_own_bucket() {
    let s = Scratch::new("rate-sources");
    let n = Nanny::start(&s, rate_setup("slow: rate: 2/1h\nok: ALL\n"));
    for d in 1..=3u8 {
        expect_seq(
            &n,
            ip(73, 0, d),
            &["ok\n", "ok\n", "slow\n"],
            "no grouping by default",
        );
    }
}

#[test]
fn every_attempt_counts_whichever_class_it_lands_in() {
    let s = Scratch::new("rate-any-class");
    let other = free_port();
    // Attempts on the other port land in `mark` and never reach the rate: they still use the
    // source's bucket.
    let mut setup = rate_setup(&format!(
        "mark: local: {other}
slow: rate: 2/1h
ok: ALL
"
    ));
    setup.extra_listens.push(format!("{other}@127.0.0.1"));
    let n = Nanny::start(&s, setup);
    n.wait_listening(other);
    let other_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, other));
    let src = ip(73, 1, 1);
    for _ in 0..2 {
        assert_eq!(fetch(src, other_addr, IO_TIMEOUT).text(), "mark\n");
    }
    assert_eq!(reply(&n, src), "slow\n", "log:\n{}", n.log());
    assert_eq!(
        reply(&n, ip(73, 1, 2)),
        "ok\n",
        "a neighbour is another source"
    );
}

#[test]
fn ipv4prefix_24_shares_ipmax_rate_and_history_and_logs_real_addresses() {
    let s = Scratch::new("rate-prefix");
    let hold = s.script("hold.sh", "#!/bin/sh\necho held\nexec cat >/dev/null\n");
    let n = Nanny::start(
        &s,
        Setup::new(
            "slow: rate: 3/1h\nsvc: ALL\n",
            &format!(
                "slow: msg slow%(nl)s\nsvc: run {} : ipmax 1 : failmsg full %(ip)s%(nl)s\n",
                hold.display()
            ),
        )
        .conf("ipv4prefix 24")
        .arg("-v"),
    );
    let (a, b, c) = (ip(70, 1, 1), ip(70, 1, 2), ip(70, 2, 1));
    let hold_from = |src: Ipv4Addr| -> TcpStream {
        let mut conn = connect_from(src, n.addr, IO_TIMEOUT).expect("connect");
        let r = read_line(&mut conn, IO_TIMEOUT);
        assert_eq!(r.text(), "held\n", "from {src}; log:\n{}", n.log());
        conn
    };
    let held_a = hold_from(a);
    assert_eq!(reply(&n, b), "full 127.70.1.2\n", "ipmax counts the /24");
    let held_c = hold_from(c);
    assert_eq!(
        reply(&n, b),
        "full 127.70.1.2\n",
        "third attempt from the /24"
    );
    assert_eq!(reply(&n, b), "slow\n", "the /24's bucket of 3 is empty");
    assert_eq!(reply(&n, a), "slow\n", "for every address in it");
    assert_eq!(
        reply(&n, c),
        "full 127.70.2.1\n",
        "the other /24 has its own"
    );
    assert_eq!(reply(&n, c), "full 127.70.2.1\n");
    assert_eq!(reply(&n, c), "slow\n");
    let log = n.log();
    for peer in ["peer=127.70.1.1:", "peer=127.70.1.2:", "peer=127.70.2.1:"] {
        assert!(log.contains(peer), "log lines keep {peer}; log:\n{log}");
    }
    assert!(
        !log.contains("127.70.1.0"),
        "no group key in the log:\n{log}"
    );
    drop((held_a, held_c));

    // The history is per /24 too.
    let s2 = Scratch::new("rate-prefix-hist");
    let n2 = Nanny::start(
        &s2,
        Setup::new(
            "new: firsttime\nold: ALL\n",
            "new: msg new%(nl)s\nold: msg old%(nl)s\n",
        )
        .conf("ipv4prefix 24"),
    );
    assert_eq!(reply(&n2, a), "new\n");
    assert_eq!(reply(&n2, b), "old\n", "a neighbour in the /24 was seen");
    assert_eq!(reply(&n2, c), "new\n", "the other /24 was not");
}

#[test]
fn ipv6_loopback_is_grouped_by_its_64() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("ipv6_loopback_is_grouped_by_its_64: skipped: no ::1 on this machine");
        return;
    }
    let s = Scratch::new("rate-v6");
    let v6 = free_port();
    let mut setup = rate_setup("slow: rate: 2/1h\nok: ALL\n").conf("ipv6prefix 64");
    setup.extra_listens.push(format!("{v6}@::1"));
    let n = Nanny::start(&s, setup);
    let dst: SocketAddr = format!("[::1]:{v6}").parse().expect("addr");
    let got: Vec<String> = (0..3)
        .map(|_| {
            let c = wait_for(START_TIMEOUT, || {
                TcpStream::connect_timeout(&dst, IO_TIMEOUT).ok()
            });
            let mut c = c.expect("connect [::1]");
            read_all(&mut c, IO_TIMEOUT).text()
        })
        .collect();
    assert_eq!(got, ["ok\n", "ok\n", "slow\n"], "log:\n{}", n.log());
    // IPv4 sources are not in ::/64.
    assert_eq!(reply(&n, ip(74, 0, 1)), "ok\n");
}

#[test]
fn a_reload_keeps_the_buckets_of_a_rate_that_remains() {
    let s = Scratch::new("rate-reload");
    let n = Nanny::start(&s, rate_setup("slow: rate: 2/1h\nok: ALL\n"));
    let src = ip(75, 0, 1);
    let marker = ip(75, 9, 9);
    expect_seq(&n, src, &["ok\n", "ok\n", "slow\n"], "before the reload");
    let reload = |rules: &str, want: &str| {
        write_atomic(&n.rules, rules, 0o644);
        n.signal(Signal::SIGHUP);
        let r = fetch_until(marker, n.addr, Duration::from_secs(20), |r| {
            r.text() == want
        });
        assert!(r.is_some(), "reload to {rules:?}; log:\n{}", n.log());
    };
    reload("mark: 127.75.9.9\nslow: rate: 2/1h\nok: ALL\n", "mark\n");
    assert_eq!(reply(&n, src), "slow\n", "the same rate keeps its bucket");
    reload("ok: ALL\n", "ok\n");
    reload("mark: 127.75.9.9\nslow: rate: 2/1h\nok: ALL\n", "mark\n");
    expect_seq(
        &n,
        src,
        &["ok\n", "ok\n", "slow\n"],
        "a rate dropped by a reload starts afresh when it comes back",
    );
}

#[test]
fn check_mode_points_at_bad_rates_and_prefix_lengths() {
    let s = Scratch::new("rate-check");
    s.write(
        "nanny-rules",
        "a: ALL\nb: 10. AND rate: 0/1m\nc: rate: 5/1x\n",
    );
    s.write("nanny-actions", "a: msg a\n");
    let conf = s.write(
        "nanny.conf",
        &format!(
            "rulefile {}\nactionfile {}\nlisten 1@127.0.0.1\nipv4prefix 24\nipv6prefix 64\n",
            s.path("nanny-rules").display(),
            s.path("nanny-actions").display()
        ),
    );
    let (code, _, err) = Nanny::run_once(&["-C", &conf.to_string_lossy()], IO_TIMEOUT);
    assert_eq!(code, Some(1), "{err}");
    let rules = s.path("nanny-rules");
    for want in [
        format!("{}:2:18: error[R021]: rate: '0/1m'", rules.display()),
        format!("{}:3:10: error[R021]: rate: '5/1x'", rules.display()),
    ] {
        assert!(err.contains(&want), "want {want:?} in:\n{err}");
    }

    let bad = s.write(
        "bad.conf",
        "rulefile r\nactionfile a\nlisten 1@127.0.0.1\nipv4prefix 33\nipv6prefix 0\n",
    );
    let (code, _, err) = Nanny::run_once(&["-C", &bad.to_string_lossy()], IO_TIMEOUT);
    assert_eq!(code, Some(1), "{err}");
    let path = bad.display();
    for want in [
        format!("{path}:4:12: error[C005]: ipv4prefix: '33' is not a prefix length"),
        format!("{path}:5:12: error[C005]: ipv6prefix: '0' is not a prefix length"),
    ] {
        assert!(err.contains(&want), "want {want:?} in:\n{err}");
    }
}
