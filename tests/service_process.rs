//! The process a service runs in: its session and process group, and its environment.
//!
//! Runs in the test process; starts the real `portnanny` on 127.0.0.1 (root on CI) and reads
//! what it started from outside: /proc/PID/stat of the service, and the environment a service
//! prints to its client. Rules use IP matchers only, so no test causes a DNS lookup (and as root
//! the daemon's resolver is a private dnsmasq anyway). Only processes the test started are
//! signalled, by pid or by the process group of a daemon started as a group leader.

mod util;

use std::net::Ipv4Addr;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use util::*;

/// A service that announces itself and then holds the connection until the client closes.
fn hold_script(s: &Scratch) -> String {
    s.script("hold.sh", "#!/bin/sh\necho held\nexec cat >/dev/null\n")
        .display()
        .to_string()
}

/// Issue 10: Ctrl-C in the daemon's terminal (SIGINT to its process group) stopped the running
/// services too, although SIGTERM is documented to leave them running.
#[test]
fn services_have_their_own_session_and_survive_sigint_to_the_daemons_group() {
    let s = Scratch::new("svc-session");
    let hold = hold_script(&s);
    let mut n =
        Nanny::start_group_leader(&s, Setup::new("all: ALL\n", &format!("all: run {hold}\n")));
    let mut c = connect_from(Ipv4Addr::new(127, 0, 10, 1), n.addr, IO_TIMEOUT).expect("connect");
    assert_eq!(
        read_line(&mut c, IO_TIMEOUT).text(),
        "held\n",
        "{}",
        n.log()
    );
    let svc = wait_for(IO_TIMEOUT, || n.services().first().copied()).expect("a service runs");

    let (d_pgrp, d_sid) = pgrp_session(n.pid).expect("daemon stat");
    assert_eq!(
        d_pgrp, n.pid,
        "the test started the daemon as a group leader"
    );
    let (s_pgrp, s_sid) = pgrp_session(svc).expect("service stat");
    assert_eq!(
        (s_pgrp, s_sid),
        (svc, svc),
        "the service leads its own process group and session"
    );
    assert_ne!(s_pgrp, d_pgrp);
    assert_ne!(s_sid, d_sid);

    // What a terminal does on Ctrl-C: SIGINT to the daemon's whole process group.
    kill(Pid::from_raw(-n.pid), Signal::SIGINT).expect("signal the daemon's group");
    assert!(
        n.wait_exit(IO_TIMEOUT).is_some(),
        "SIGINT stops the daemon; log:\n{}",
        n.log()
    );
    // Signals are delivered at once; give a killed service time to be seen as gone.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        alive(svc),
        "the running service was not stopped by the daemon's SIGINT"
    );
    // Cleanup: dropping `n` kills the recorded service by pid (and start time).
    drop(c);
}
