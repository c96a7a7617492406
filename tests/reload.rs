//! Reload of the rules and actions files while serving, under both `onfileerror` settings.
//!
//! Runs in the test process; starts the real `portnanny`, rewrites its files atomically and
//! observes the change from a client: use-old keeps serving the old policy when a new file is
//! broken, drop refuses everything until the file is fixed, and every error is logged as
//! file:line:column.

mod util;

use std::net::Ipv4Addr;
use std::time::Duration;

use util::*;

const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

fn src(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 50, 0, i)
}

/// Waits for a log line naming `file:line:COL` (COL a number); returns the line.
fn expect_position(n: &Nanny, mark: usize, file: &std::path::Path, line: u32) -> String {
    let name = file
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let needle = format!("{name}:{line}:");
    let found = n.wait_log_since(mark, RELOAD_TIMEOUT, |l| {
        l.match_indices(&needle).any(|(i, m)| {
            l[i + m.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "no log line with {needle}COL within {RELOAD_TIMEOUT:?}; log:\n{}",
            n.log()
        )
    })
}

fn served(n: &Nanny, want: &str) -> bool {
    fetch_until(src(1), n.addr, RELOAD_TIMEOUT, |r| r.text() == want).is_some()
}

#[test]
fn actions_change_takes_effect() {
    let s = Scratch::new("reload-ok");
    let n = Nanny::start(&s, Setup::new("a: ALL\n", "a: msg old%(nl)s\n"));
    assert_eq!(n.fetch_from(src(1)).text(), "old\n", "log:\n{}", n.log());
    write_atomic(&n.actions, "a: msg new%(nl)s\n", 0o644);
    assert!(served(&n, "new\n"), "new actions served; log:\n{}", n.log());
    write_atomic(&n.rules, "b: ALL\n", 0o644);
    write_atomic(&n.actions, "a: msg new%(nl)s\nb: msg from-b%(nl)s\n", 0o644);
    assert!(
        served(&n, "from-b\n"),
        "new rules served; log:\n{}",
        n.log()
    );
}

#[test]
fn broken_actions_with_use_old_keeps_serving_the_old_policy() {
    let s = Scratch::new("reload-useold");
    let n = Nanny::start(
        &s,
        Setup::new("a: ALL\n", "a: msg old%(nl)s\n").conf("onfileerror use-old"),
    );
    assert_eq!(n.fetch_from(src(1)).text(), "old\n", "log:\n{}", n.log());
    let mark = n.mark();
    write_atomic(
        &n.actions,
        "a: msg new%(nl)s\nb: msg x : run /bin/true\n",
        0o644,
    );
    expect_position(&n, mark, &n.actions, 2);
    for _ in 0..3 {
        assert_eq!(
            n.fetch_from(src(2)).text(),
            "old\n",
            "use-old: nothing from the broken file is used, not even its good first line"
        );
    }
    write_atomic(&n.actions, "a: msg new%(nl)s\n", 0o644);
    assert!(
        served(&n, "new\n"),
        "fixed file is loaded; log:\n{}",
        n.log()
    );
}

#[test]
fn broken_rules_with_use_old_keeps_serving_the_old_policy() {
    let s = Scratch::new("reload-useold-rules");
    let n = Nanny::start(
        &s,
        Setup::new("a: ALL\n", "a: msg from-a%(nl)s\nb: msg from-b%(nl)s\n"),
    );
    assert_eq!(n.fetch_from(src(1)).text(), "from-a\n", "log:\n{}", n.log());
    let mark = n.mark();
    // An improper CIDR on line 3 (a /24 does not start at .1).
    write_atomic(&n.rules, "b: ALL\n# comment\nc: ip: 127.0.0.1/24\n", 0o644);
    expect_position(&n, mark, &n.rules, 3);
    assert_eq!(
        n.fetch_from(src(3)).text(),
        "from-a\n",
        "old rules still in use"
    );
    write_atomic(&n.rules, "b: ALL\n", 0o644);
    assert!(
        served(&n, "from-b\n"),
        "fixed rules loaded; log:\n{}",
        n.log()
    );
}

#[test]
fn broken_actions_with_drop_refuses_everything_until_fixed() {
    let s = Scratch::new("reload-drop");
    let n = Nanny::start(
        &s,
        Setup::new("a: ALL\n", "a: msg old%(nl)s\n").conf("onfileerror drop"),
    );
    assert_eq!(n.fetch_from(src(1)).text(), "old\n", "log:\n{}", n.log());
    let mark = n.mark();
    write_atomic(&n.actions, "a: msg new%(nl)s\na: msg twice%(nl)s\n", 0o644);
    expect_position(&n, mark, &n.actions, 2);
    // The classifier compiles the dropped policy off its dispatch thread and serves the old
    // one until it is in.
    let dropped = fetch_until(src(3), n.addr, START_TIMEOUT, |r| r.closed_silently());
    assert!(dropped.is_some(), "never dropped; log:\n{}", n.log());
    for i in 0..3 {
        let r = n.fetch_from(src(4 + i));
        assert!(
            r.closed_silently(),
            "drop: every connection is closed while the file is broken: {r:?}"
        );
    }
    write_atomic(&n.actions, "a: msg new%(nl)s\n", 0o644);
    assert!(
        served(&n, "new\n"),
        "fixed file is loaded; log:\n{}",
        n.log()
    );
}

#[test]
fn broken_rules_with_drop_refuses_everything_until_fixed() {
    let s = Scratch::new("reload-drop-rules");
    let n = Nanny::start(
        &s,
        Setup::new("a: ALL\n", "a: msg from-a%(nl)s\n").conf("onfileerror drop"),
    );
    assert_eq!(n.fetch_from(src(1)).text(), "from-a\n", "log:\n{}", n.log());
    let mark = n.mark();
    write_atomic(&n.rules, "a: ALL\na: ( 127.0.0.1\n", 0o644);
    expect_position(&n, mark, &n.rules, 2);
    // Compiled off the classifier's dispatch thread: the old policy serves until it is in.
    let r = fetch_until(src(8), n.addr, START_TIMEOUT, |r| r.closed_silently());
    assert!(
        r.is_some(),
        "drop: refused while the rules are broken; log:\n{}",
        n.log()
    );
    write_atomic(&n.rules, "a: ALL\n", 0o644);
    assert!(
        served(&n, "from-a\n"),
        "fixed rules loaded; log:\n{}",
        n.log()
    );
}

#[test]
fn sighup_reloads() {
    let s = Scratch::new("reload-hup");
    let n = Nanny::start(&s, Setup::new("a: ALL\n", "a: msg old%(nl)s\n"));
    assert_eq!(n.fetch_from(src(1)).text(), "old\n", "log:\n{}", n.log());
    write_atomic(&n.actions, "a: msg new%(nl)s\n", 0o644);
    n.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(served(&n, "new\n"), "reloaded; log:\n{}", n.log());
    assert!(alive(n.pid), "SIGHUP does not stop the daemon");
}

#[test]
fn counts_survive_a_reload() {
    let s = Scratch::new("reload-counts");
    let hold = s.script("hold.sh", "#!/bin/sh\necho held\nexec cat >/dev/null\n");
    let h = hold.display().to_string();
    let n = Nanny::start(
        &s,
        Setup::new(
            "h: ALL\n",
            &format!("h: run {h} : connmax 2 : failmsg full-old%(nl)s\n"),
        ),
    );
    let mut held = Vec::new();
    for i in 10..12 {
        let mut c = connect_from(src(i), n.addr, IO_TIMEOUT).expect("connect");
        assert_eq!(
            read_line(&mut c, IO_TIMEOUT).text(),
            "held\n",
            "log:\n{}",
            n.log()
        );
        held.push(c);
    }
    write_atomic(
        &n.actions,
        &format!("h: run {h} : connmax 2 : failmsg full-new%(nl)s\n"),
        0o644,
    );
    // The new actions are in force and the two live connections still count.
    let r = fetch_until(src(12), n.addr, RELOAD_TIMEOUT, |r| {
        r.text() != "full-old\n"
    });
    assert_eq!(
        r.map(|r| r.text()).as_deref(),
        Some("full-new\n"),
        "after the reload the class is still full; log:\n{}",
        n.log()
    );
}
