//! With -l, log lines reach a real syslog daemon with the -p ident and facility daemon.
//!
//! Runs in the test process as root: starts rsyslogd (listening on a socket in the scratch
//! dir, writing `FACILITY.SEVERITY TAG MSG` lines to a file) and `portnanny -l -p IDENT` in a
//! private mount namespace whose /dev/log is that socket, so the machine's own logging is never
//! touched.

mod util;

use std::fs;
use std::net::Ipv4Addr;

use util::*;

#[test]
fn dash_l_logs_to_syslog_with_ident_and_facility_daemon() {
    if skip_unless_root("dash_l_logs_to_syslog_with_ident_and_facility_daemon") {
        return;
    }
    let s = Scratch::new("syslog");
    let n = Nanny::start(
        &s,
        Setup::new("a: ALL\n", "a: msg hi%(nl)s : log via-syslog-%(ip)s\n")
            .arg("-l")
            .arg("-p")
            .arg("pntestident")
            .syslog(),
    );
    assert_eq!(n.fetch_from(Ipv4Addr::new(127, 60, 0, 1)).text(), "hi\n");
    let out = n.syslogd.as_ref().map(|d| d.out.clone()).expect("syslogd");
    let line = wait_for(IO_TIMEOUT, || {
        fs::read_to_string(&out)
            .ok()?
            .lines()
            .find(|l| l.contains("via-syslog-127.60.0.1"))
            .map(str::to_string)
    });
    let Some(line) = line else {
        panic!(
            "the log line did not reach syslog; syslog got:\n{}\nstderr:\n{}",
            fs::read_to_string(&out).unwrap_or_default(),
            n.log()
        );
    };
    let mut parts = line.split_whitespace();
    let prio = parts.next().unwrap_or_default();
    let tag = parts.next().unwrap_or_default();
    assert!(prio.starts_with("daemon."), "facility daemon: {line}");
    assert!(
        tag.starts_with("pntestident"),
        "the -p NAME ident tags every line: {line}"
    );
    assert!(
        !n.log().contains("via-syslog-127.60.0.1"),
        "with -l the line goes to syslog, not stderr"
    );
}
