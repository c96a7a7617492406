//! The privilege drop as seen from /proc (STYLE 2.6 and 2.9): worker and service credentials.
//!
//! Runs in the test process as root (skips otherwise); starts the real `portnanny` with a
//! scratch chroot dir, privsep user nobody and service user `pntest` (created with two
//! supplementary groups if missing), then reads /proc/PID/{status,root,limits,fd} of the
//! classifier, the resolver and a service.

mod util;

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;

use util::*;

const ZERO_CAPS: &str = "0000000000000000";

fn assert_no_caps(pid: i32, who: &str) {
    for f in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(pid, f).as_deref(),
            Some(ZERO_CAPS),
            "{who} {f} must be empty"
        );
    }
}

fn max_processes(pid: i32) -> Option<String> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max processes"))?;
    line.split_whitespace().nth(2).map(str::to_string)
}

#[test]
fn workers_are_unprivileged_and_the_classifier_is_chrooted() {
    if skip_unless_root("workers_are_unprivileged_and_the_classifier_is_chrooted") {
        return;
    }
    let s = Scratch::new("privdrop-workers");
    let n = Nanny::start(&s, Setup::new("a: ALL\n", "a: msg ready%(nl)s\n"));
    // A served connection proves the classifier finished its set-up.
    assert_eq!(
        n.fetch_from(Ipv4Addr::new(127, 70, 0, 1)).text(),
        "ready\n",
        "log:\n{}",
        n.log()
    );
    let empty = s.path("empty");
    let c = n
        .wait_worker("classifier", START_TIMEOUT)
        .expect("classifier pid");
    assert_eq!(
        status_ids(c, "Uid"),
        Some(vec![NOBODY_UID; 4]),
        "classifier uids"
    );
    assert_eq!(
        status_ids(c, "Gid"),
        Some(vec![NOBODY_GID; 4]),
        "classifier gids"
    );
    assert_eq!(
        status_ids(c, "Groups"),
        Some(vec![NOBODY_GID]),
        "classifier supplementary groups"
    );
    assert_no_caps(c, "classifier");
    assert_eq!(status_field(c, "NoNewPrivs").as_deref(), Some("1"));
    assert_eq!(
        fs::read_link(format!("/proc/{c}/root")).ok(),
        Some(empty.clone()),
        "the classifier's root is the empty dir"
    );
    assert_eq!(
        max_processes(c).as_deref(),
        Some("0"),
        "the classifier cannot fork (RLIMIT_NPROC 0)"
    );

    let r = n
        .wait_worker("resolver", START_TIMEOUT)
        .expect("resolver pid");
    assert_eq!(
        status_ids(r, "Uid"),
        Some(vec![NOBODY_UID; 4]),
        "resolver uids"
    );
    assert_eq!(
        status_ids(r, "Gid"),
        Some(vec![NOBODY_GID; 4]),
        "resolver gids"
    );
    assert_no_caps(r, "resolver");
    assert_eq!(status_field(r, "NoNewPrivs").as_deref(), Some("1"));
    // It must create lookup threads on demand, so processes are forbidden by a seccomp
    // filter (fork, vfork, execve) instead of RLIMIT_NPROC 0.
    assert_eq!(
        status_field(r, "Seccomp").as_deref(),
        Some("2"),
        "the resolver runs under its no-fork filter"
    );
    let rroot = fs::read_link(format!("/proc/{r}/root")).ok();
    assert_eq!(
        rroot.as_deref(),
        Some(std::path::Path::new("/")),
        "the resolver is not chrooted (it needs /etc)"
    );
    eprintln!(
        "parent CapEff={:?} Uid={:?}",
        status_field(n.pid, "CapEff"),
        status_field(n.pid, "Uid")
    );
}

#[test]
fn service_runs_as_the_configured_user_with_its_groups_and_fds_0_1_2() {
    if skip_unless_root("service_runs_as_the_configured_user_with_its_groups_and_fds_0_1_2") {
        return;
    }
    let (uid, gid, groups) = ensure_test_user();
    let s = Scratch::new("privdrop-service");
    let n = Nanny::start(
        &s,
        Setup::new("a: ALL\n", "a: run /bin/cat\n").conf(&format!("user {TEST_USER}")),
    );
    let mut c = connect_from(Ipv4Addr::new(127, 70, 0, 2), n.addr, IO_TIMEOUT).expect("connect");
    c.write_all(b"ping\n").expect("write");
    assert_eq!(
        read_line(&mut c, IO_TIMEOUT).text(),
        "ping\n",
        "the service echoes; log:\n{}",
        n.log()
    );
    let pid = wait_for(IO_TIMEOUT, || {
        n.services()
            .into_iter()
            .find(|&p| cmdline(p).first().map(String::as_str) == Some("/bin/cat"))
    })
    .expect("service pid");
    assert_eq!(status_ids(pid, "Uid"), Some(vec![uid; 4]), "service uids");
    assert_eq!(status_ids(pid, "Gid"), Some(vec![gid; 4]), "service gids");
    let mut got = status_ids(pid, "Groups").unwrap_or_default();
    got.sort_unstable();
    got.dedup();
    assert_eq!(
        got, groups,
        "supplementary groups as a login gives (id -G {TEST_USER})"
    );
    assert_eq!(status_field(pid, "CapEff").as_deref(), Some(ZERO_CAPS));
    assert_eq!(status_field(pid, "CapPrm").as_deref(), Some(ZERO_CAPS));
    assert_eq!(
        fds(pid),
        vec![0, 1, 2],
        "the service inherits only the connection"
    );
}

#[test]
fn root_service_without_user_directive_still_gets_only_fds_0_1_2() {
    if skip_unless_root("root_service_without_user_directive_still_gets_only_fds_0_1_2") {
        return;
    }
    let s = Scratch::new("privdrop-nouser");
    let n = Nanny::start(&s, Setup::new("a: ALL\n", "a: run /bin/cat\n"));
    let mut c = connect_from(Ipv4Addr::new(127, 70, 0, 3), n.addr, IO_TIMEOUT).expect("connect");
    c.write_all(b"ping\n").expect("write");
    assert_eq!(read_line(&mut c, IO_TIMEOUT).text(), "ping\n");
    let pid = wait_for(IO_TIMEOUT, || {
        n.services()
            .into_iter()
            .find(|&p| cmdline(p).first().map(String::as_str) == Some("/bin/cat"))
    })
    .expect("service pid");
    assert_eq!(fds(pid), vec![0, 1, 2]);
}
