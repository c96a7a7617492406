//! Limits stay exact under concurrency: many simultaneous connection attempts from many 127/8
//! addresses, against connmax, ipmax and GLOBAL.
//!
//! Runs in the test process; starts the real `portnanny` (root on CI) whose services announce
//! themselves and hold the connection open, so every attempt ends up either served ("held") or
//! refused (the failmsg), and the counts can be compared exactly with the configured limits.

mod util;

use std::net::{Ipv4Addr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use util::*;

const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Default)]
struct Tally {
    served: usize,
    refused: usize,
    other: Vec<String>,
    held: Vec<TcpStream>,
    served_from: Vec<Ipv4Addr>,
}

/// Starts all attempts at once (a barrier), reads the first line of each; keeps served
/// connections open so their slots stay taken.
fn storm(n: &Nanny, srcs: &[Ipv4Addr], refused_text: &str) -> Tally {
    let barrier = Arc::new(Barrier::new(srcs.len()));
    let addr = n.addr;
    let handles: Vec<_> = srcs
        .iter()
        .map(|&src| {
            let b = Arc::clone(&barrier);
            thread::spawn(move || {
                b.wait();
                match connect_from(src, addr, ATTEMPT_TIMEOUT) {
                    Ok(mut c) => {
                        let r = read_line(&mut c, ATTEMPT_TIMEOUT);
                        (src, r, Some(c))
                    }
                    Err(e) => (
                        src,
                        Reply {
                            data: format!("connect error: {e}").into_bytes(),
                            end: End::ConnectFailed,
                        },
                        None,
                    ),
                }
            })
        })
        .collect();
    let mut t = Tally::default();
    for h in handles {
        let (src, r, c) = h.join().expect("attempt thread");
        let text = r.text();
        if text == "held\n" && r.end == End::Open {
            t.served += 1;
            t.served_from.push(src);
            if let Some(c) = c {
                t.held.push(c);
            }
        } else if text == refused_text {
            t.refused += 1;
        } else {
            t.other.push(format!("{src}: {text:?} {:?}", r.end));
        }
    }
    t
}

fn wait_services(n: &Nanny, count: usize) {
    let ok = wait_for(Duration::from_secs(15), || {
        (n.services().len() == count).then_some(())
    });
    assert!(
        ok.is_some(),
        "expected {count} services, have {:?}",
        n.services()
    );
}

#[test]
fn connmax_is_exact_under_50_concurrent_attempts() {
    let s = Scratch::new("limits-connmax");
    let hold = s.script("hold.sh", "#!/bin/sh\necho held\nexec cat >/dev/null\n");
    let n = Nanny::start(
        &s,
        Setup::new(
            "h: ALL\n",
            &format!(
                "h: run {} : connmax 10 : failmsg full%(nl)s\n",
                hold.display()
            ),
        ),
    );
    for round in 0..2u8 {
        let srcs: Vec<Ipv4Addr> = (0..50).map(|i| src_ip(20 + round, i)).collect();
        let t = storm(&n, &srcs, "full\n");
        assert!(
            t.other.is_empty(),
            "round {round}: unexpected replies {:?}",
            t.other
        );
        assert_eq!(
            (t.served, t.refused),
            (10, 40),
            "round {round}: exactly connmax served; log:\n{}",
            n.log()
        );
        wait_services(&n, 10);
        drop(t.held);
        // Every slot comes back once the services end: the next round is exact again.
        wait_services(&n, 0);
    }
}

#[test]
fn ipmax_is_exact_under_concurrent_attempts_from_one_address() {
    let s = Scratch::new("limits-ipmax");
    let hold = s.script("hold.sh", "#!/bin/sh\necho held\nexec cat >/dev/null\n");
    let n = Nanny::start(
        &s,
        Setup::new(
            "h: ALL\n",
            &format!("h: run {} : ipmax 3 : failmsg full%(nl)s\n", hold.display()),
        ),
    );
    let one = Ipv4Addr::new(127, 30, 0, 1);
    let mut srcs: Vec<Ipv4Addr> = vec![one; 20];
    srcs.extend((0..5).map(|i| src_ip(31, i)));
    let t = storm(&n, &srcs, "full\n");
    assert!(t.other.is_empty(), "unexpected replies {:?}", t.other);
    let from_one = t.served_from.iter().filter(|&&a| a == one).count();
    assert_eq!(
        from_one,
        3,
        "exactly ipmax from the busy address; log:\n{}",
        n.log()
    );
    assert_eq!(t.served, 8, "every other address is served");
    assert_eq!(t.refused, 17);
}

#[test]
fn class_and_global_limits_combine_exactly() {
    let s = Scratch::new("limits-global");
    let hold = s.script("hold.sh", "#!/bin/sh\necho held\nexec cat >/dev/null\n");
    let h = hold.display();
    let n = Nanny::start(
        &s,
        Setup::new(
            "a: 127.32.0.0/16\nb: ALL\n",
            &format!(
                "a: run {h} : connmax 8 : failmsg full%(nl)s\nb: run {h}\n\
                 GLOBAL: connmax 12 : failmsg full%(nl)s\n"
            ),
        ),
    );
    let mut srcs: Vec<Ipv4Addr> = (0..25).map(|i| src_ip(32, i)).collect();
    srcs.extend((0..25).map(|i| src_ip(33, i)));
    let t = storm(&n, &srcs, "full\n");
    assert!(t.other.is_empty(), "unexpected replies {:?}", t.other);
    let from_a = t.served_from.iter().filter(|a| a.octets()[1] == 32).count();
    assert_eq!(
        t.served,
        12,
        "GLOBAL connmax caps the total; log:\n{}",
        n.log()
    );
    assert!(from_a <= 8, "class a never exceeds its connmax: {from_a}");
    assert_eq!(t.refused, 38);
}
