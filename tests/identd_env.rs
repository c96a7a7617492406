//! identd answers end to end: a known answer reaches the rules (`identd:`), the service's
//! TCPREMOTEINFO and %(identd)s; an answer full of control characters never reaches the log
//! raw.
//!
//! Runs in the test process as root (it binds port 113 on a loopback address): a fake identd
//! answers RFC 1413 queries with a fixed user name. Only loopback is used; the daemon runs in
//! the harness's private mount namespace with a loopback dnsmasq, and the rules cause no DNS
//! query.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use util::*;

/// Answers every query on ADDR:113 with `USERID : UNIX : <user>` until dropped.
struct FakeIdentd {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeIdentd {
    fn start(addr: Ipv4Addr, user: &'static str) -> FakeIdentd {
        let l = TcpListener::bind((addr, 113)).expect("bind identd port 113");
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((c, _)) = l.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(c);
                let mut q = String::new();
                if r.read_line(&mut q).is_err() {
                    continue;
                }
                let ports = q.trim_end_matches(['\r', '\n']).to_string();
                let mut c = r.into_inner();
                let _ = write!(c, "{ports} : USERID : UNIX : {user}\r\n");
            }
        });
        FakeIdentd {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeIdentd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn identd_answer_reaches_rules_env_and_substitutions() {
    if skip_unless_root("identd_answer_reaches_rules_env_and_substitutions") {
        return;
    }
    let s = Scratch::new("identd-env");
    let _identd = FakeIdentd::start(Ipv4Addr::new(127, 83, 0, 1), "alice");
    let env = s.script("env.sh", "#!/bin/sh\nexec env\n");
    let n = Nanny::start(
        &s,
        Setup::new(
            "who: identd: alice\nother: ALL\n",
            &format!(
                "who: run {} : setenv WHO %(identd)s : log ident=%(identd)s sum=%(connsum)s\n\
                 other: msg other%(nl)s\n",
                env.display()
            ),
        )
        .conf("identdtimeout 5000ms"),
    );
    let mark = n.mark();
    let r = n.fetch_from(Ipv4Addr::new(127, 83, 0, 1));
    let e = parse_env(&r.text());
    assert_eq!(
        e.get("TCPREMOTEINFO").map(String::as_str),
        Some("alice"),
        "identd answered, so TCPREMOTEINFO is set; got:\n{}\nlog:\n{}",
        r.text(),
        n.log()
    );
    assert_eq!(e.get("WHO").map(String::as_str), Some("alice"));
    assert_eq!(e.get("NANNY_CLASS").map(String::as_str), Some("who"));
    n.expect_log(mark, &["ident=alice", "sum=alice@127.83.0.1"]);
}

#[test]
fn control_characters_from_identd_never_reach_the_log_raw() {
    if skip_unless_root("control_characters_from_identd_never_reach_the_log_raw") {
        return;
    }
    let s = Scratch::new("identd-escape");
    let _identd = FakeIdentd::start(Ipv4Addr::new(127, 84, 0, 1), "ev\x1b[31mil\x07x");
    let n = Nanny::start(
        &s,
        Setup::new(
            "probe/nt: IDENTD\nall: ALL\n",
            "probe: record identd=%(identd)s\nall: msg done%(nl)s : log seen %(connsum)s\n",
        )
        .arg("-v")
        .conf("identdtimeout 5000ms"),
    );
    let mark = n.mark();
    assert_eq!(n.fetch_from(Ipv4Addr::new(127, 84, 0, 1)).text(), "done\n");
    n.expect_log(mark, &["seen"]);
    let raw = std::fs::read(&n.stderr).expect("read stderr");
    assert!(
        !raw.iter().any(|&b| b == 0x1b || b == 0x07),
        "raw control characters in the log:\n{}",
        String::from_utf8_lossy(&raw)
    );
}
