//! Slow lookups and the evaluation limit: a connection whose rules wait on a lookup never delays
//! an unrelated connection, and `aftermaxthreads` sorts connections beyond `maxthreads` into its
//! class at once.
//!
//! Runs in the test process as root (it binds port 113 on a loopback address): a fake identd
//! that accepts and never answers makes one connection's rule evaluation stall for the
//! configured identd timeout. Only loopback is used; the daemon runs in the harness's private
//! mount namespace with a loopback dnsmasq, and the rules cause no DNS query.

mod util;

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use util::*;

/// An identd on ADDR:113 that accepts queries and never answers until dropped.
struct StallingIdentd {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StallingIdentd {
    fn start(addr: Ipv4Addr) -> StallingIdentd {
        let l = TcpListener::bind((addr, 113)).expect("bind identd port 113");
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&accepted));
        let thread = thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                match l.accept() {
                    Ok((c, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        held.push(c);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        StallingIdentd {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    fn wait_query(&self) -> bool {
        wait_for(IO_TIMEOUT, || {
            (self.accepted.load(Ordering::SeqCst) > 0).then_some(())
        })
        .is_some()
    }
}

impl Drop for StallingIdentd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Each test uses its own 127.NET.0.0/24 so the two fake identds do not collide.
fn rules(net: u8) -> String {
    format!("slow: 127.{net}.0.1 && identd: someone\nquick: ALL\n")
}
const ACTIONS: &str = "slow: msg slow%(nl)s\nquick: msg quick%(nl)s\nbusy: msg busy%(nl)s\n";

#[test]
fn a_stalled_lookup_does_not_delay_an_unrelated_connection() {
    if skip_unless_root("a_stalled_lookup_does_not_delay_an_unrelated_connection") {
        return;
    }
    let s = Scratch::new("conc-unrelated");
    let identd = StallingIdentd::start(Ipv4Addr::new(127, 81, 0, 1));
    let n = Nanny::start(
        &s,
        Setup::new(&rules(81), ACTIONS)
            .conf("maxthreads 4")
            .conf("identdtimeout 4000ms"),
    );
    let mut a = connect_from(Ipv4Addr::new(127, 81, 0, 1), n.addr, IO_TIMEOUT).expect("connect");
    assert!(
        identd.wait_query(),
        "the identd: rule queried 127.81.0.1:113; log:\n{}",
        n.log()
    );
    let t0 = Instant::now();
    let b = n.fetch_from(Ipv4Addr::new(127, 81, 0, 2));
    let took = t0.elapsed();
    assert_eq!(b.text(), "quick\n", "log:\n{}", n.log());
    assert!(
        took < Duration::from_secs(2),
        "an unrelated connection waited {took:?} behind a stalled lookup"
    );
    // The stalled one is decided when its lookup times out: identd unknown, so not `slow`.
    let r = read_all(&mut a, Duration::from_secs(15));
    assert_eq!(
        r.text(),
        "quick\n",
        "after the identd timeout; log:\n{}",
        n.log()
    );
}

#[test]
fn aftermaxthreads_class_applies_beyond_maxthreads() {
    if skip_unless_root("aftermaxthreads_class_applies_beyond_maxthreads") {
        return;
    }
    let s = Scratch::new("conc-aftermax");
    let identd = StallingIdentd::start(Ipv4Addr::new(127, 82, 0, 1));
    let n = Nanny::start(
        &s,
        Setup::new(&rules(82), ACTIONS)
            .conf("maxthreads 1")
            .conf("aftermaxthreads busy")
            .conf("identdtimeout 4000ms"),
    );
    let mut a = connect_from(Ipv4Addr::new(127, 82, 0, 1), n.addr, IO_TIMEOUT).expect("connect");
    assert!(
        identd.wait_query(),
        "the evaluation is stalled; log:\n{}",
        n.log()
    );
    let t0 = Instant::now();
    let b = n.fetch_from(Ipv4Addr::new(127, 82, 0, 3));
    assert_eq!(
        b.text(),
        "busy\n",
        "over maxthreads: sorted into the aftermaxthreads class; log:\n{}",
        n.log()
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "and at once");
    let r = read_all(&mut a, Duration::from_secs(15));
    assert_eq!(r.text(), "quick\n", "log:\n{}", n.log());
    // The slot is free again: normal evaluation resumes.
    assert_eq!(n.fetch_from(Ipv4Addr::new(127, 82, 0, 4)).text(), "quick\n");
}

#[test]
fn dash_m_overrides_maxthreads() {
    if skip_unless_root("dash_m_overrides_maxthreads") {
        return;
    }
    let s = Scratch::new("conc-dash-m");
    let identd = StallingIdentd::start(Ipv4Addr::new(127, 85, 0, 1));
    let n = Nanny::start(
        &s,
        Setup::new(&rules(85), ACTIONS)
            .arg("-M")
            .arg("1")
            .conf("maxthreads 8")
            .conf("aftermaxthreads busy")
            .conf("identdtimeout 4000ms"),
    );
    let _a = connect_from(Ipv4Addr::new(127, 85, 0, 1), n.addr, IO_TIMEOUT).expect("connect");
    assert!(
        identd.wait_query(),
        "the evaluation is stalled; log:\n{}",
        n.log()
    );
    assert_eq!(
        n.fetch_from(Ipv4Addr::new(127, 85, 0, 2)).text(),
        "busy\n",
        "-M 1 wins over maxthreads 8; log:\n{}",
        n.log()
    );
}

/// With threading off (maxthreads unset = 0), aftermaxthreads never applies: a second connection
/// waits for the single evaluation instead of being sorted into the overflow class (portnanny 2;
/// found when the parent sent `maxthreads.max(1)` and the classifier could not tell).
#[test]
fn aftermaxthreads_is_ignored_with_threading_off() {
    if skip_unless_root("aftermaxthreads_is_ignored_with_threading_off") {
        return;
    }
    let s = Scratch::new("conc-aftermax-off");
    let identd = StallingIdentd::start(Ipv4Addr::new(127, 86, 0, 1));
    let n = Nanny::start(
        &s,
        Setup::new(&rules(86), ACTIONS)
            .conf("aftermaxthreads busy")
            .conf("identdtimeout 1500ms"),
    );
    let mut a = connect_from(Ipv4Addr::new(127, 86, 0, 1), n.addr, IO_TIMEOUT).expect("connect");
    assert!(
        identd.wait_query(),
        "the evaluation is stalled; log:\n{}",
        n.log()
    );
    let b = n.fetch_from(Ipv4Addr::new(127, 86, 0, 2));
    assert_eq!(
        b.text(),
        "quick\n",
        "waited its turn instead of getting the overflow class; log:\n{}",
        n.log()
    );
    let r = read_all(&mut a, Duration::from_secs(15));
    assert_eq!(r.text(), "quick\n", "log:\n{}", n.log());
}
