//! Smoke tests: the real binary starts, serves two classes, and its command line behaves.
//!
//! Runs in the test process; starts `portnanny` (root on CI, also as nobody for the non-root
//! mode) on 127.0.0.1 and reads what it sends. Every configuration here uses IP rules only;
//! when run as root the daemon still sits in a private mount namespace whose resolver is a
//! dnsmasq the harness started (see tests/util).

mod util;

use std::net::Ipv4Addr;
use std::time::Duration;

use util::*;

const RULES: &str = "\
# two classes by source address
near: 127.0.0.5
far: ALL
";

fn actions(s: &Scratch) -> String {
    let far = s.script("far.sh", "#!/bin/sh\necho \"far $TCPREMOTEIP\"\n");
    format!("near: msg near %(ip)s%(nl)s\nfar: run {}\n", far.display())
}

fn serves_two_classes(mode: Mode) {
    let s = Scratch::new(&format!("smoke-{mode:?}"));
    let acts = actions(&s);
    let n = Nanny::start(&s, Setup::new(RULES, &acts).mode(mode));
    let near = n.fetch_from(Ipv4Addr::new(127, 0, 0, 5));
    assert_eq!(
        near.text(),
        "near 127.0.0.5\n",
        "msg class; log:\n{}",
        n.log()
    );
    let far = n.fetch_from(Ipv4Addr::new(127, 0, 0, 6));
    assert_eq!(
        far.text(),
        "far 127.0.0.6\n",
        "run class; log:\n{}",
        n.log()
    );
    if let Some(dns) = &n.dns {
        // The resolver (the only process that makes DNS queries) sees our dnsmasq as its
        // nameserver, through its own mount namespace.
        let r = n
            .wait_worker("resolver", START_TIMEOUT)
            .expect("resolver pid");
        let seen =
            std::fs::read_to_string(format!("/proc/{r}/root/etc/resolv.conf")).unwrap_or_default();
        assert!(
            seen.contains(&format!("nameserver {}", dns.addr)),
            "the resolver's resolv.conf points at the test's dnsmasq: {seen:?}"
        );
    }
    if is_root() && mode == Mode::NonRoot {
        assert_eq!(
            status_ids(n.pid, "Uid"),
            Some(vec![NOBODY_UID; 4]),
            "the non-root daemon runs as nobody"
        );
    }
}

#[test]
fn serves_two_classes_privileged() {
    serves_two_classes(Mode::AsTester);
}

#[test]
fn non_root_mode_starts_and_serves() {
    serves_two_classes(Mode::NonRoot);
}

#[test]
fn relative_file_names_resolve_against_the_config_dir() {
    let s = Scratch::new("smoke-relative");
    let setup = Setup::new("", "");
    let port = setup.port;
    let mut text =
        format!("rulefile nanny-rules\nactionfile nanny-actions\nlisten {port}@127.0.0.1\n");
    if setup.privileged() {
        text.push_str(&format!(
            "chrootdir {}\nprivsepuser nobody\n",
            s.empty_dir("empty").display()
        ));
    }
    // The daemon's cwd is the scratch dir; the files live only in conf/, next to nanny.conf,
    // so only resolving against the config file's directory can explain success.
    s.empty_dir("conf");
    let conf = s.write("conf/nanny.conf", &text);
    s.write("conf/nanny-rules", "all: ALL\n");
    s.write("conf/nanny-actions", "all: msg relative-ok%(nl)s\n");
    let n = Nanny::start_conf(&s, &setup, conf);
    let r = n.fetch_from(Ipv4Addr::new(127, 0, 0, 8));
    assert_eq!(r.text(), "relative-ok\n", "log:\n{}", n.log());
}

#[test]
fn check_mode_accepts_valid_files() {
    let s = Scratch::new("smoke-check-ok");
    let acts = actions(&s);
    let setup = Setup::new(RULES, &acts);
    let conf = s.write("nanny.conf", &setup.conf_text(&s));
    s.write("nanny-rules", RULES);
    s.write("nanny-actions", &acts);
    let (code, out, err) = Nanny::run_once(&["-C", &conf.to_string_lossy()], IO_TIMEOUT);
    assert_eq!(code, Some(0), "-C on valid files must exit 0: {out}{err}");
}

#[test]
fn check_mode_reports_every_error_with_positions() {
    let s = Scratch::new("smoke-check-bad");
    let setup = Setup::new("", "");
    let conf = s.write("nanny.conf", &setup.conf_text(&s));
    // Two independent errors, in two files: an improper CIDR and a run+msg conflict.
    s.write("nanny-rules", "ok: ALL\nbad: ip: 127.0.0.1/24\n");
    s.write(
        "nanny-actions",
        "ok: msg fine\nworse: msg a : run /bin/true\n",
    );
    let (code, out, err) = Nanny::run_once(&["-C", &conf.to_string_lossy()], IO_TIMEOUT);
    let all = format!("{out}{err}");
    assert_eq!(code, Some(1), "-C with errors must exit 1: {all}");
    let rules_pos = format!("{}:2:", s.path("nanny-rules").display());
    let actions_pos = format!("{}:2:", s.path("nanny-actions").display());
    assert!(
        all.contains(&rules_pos),
        "the rules error is reported as {rules_pos}COL: {all}"
    );
    assert!(
        all.contains(&actions_pos),
        "the actions error is reported as {actions_pos}COL: {all}"
    );
}

#[test]
fn usage_errors_exit_100_and_help_exits_0() {
    let (code, out, err) = Nanny::run_once(&[], IO_TIMEOUT);
    assert_eq!(
        code,
        Some(100),
        "no config file is a usage error: {out}{err}"
    );
    let (code, out, err) = Nanny::run_once(&["--no-such-switch", "x"], IO_TIMEOUT);
    assert_eq!(
        code,
        Some(100),
        "unknown switch is a usage error: {out}{err}"
    );
    let (code, out, err) = Nanny::run_once(&["-h"], IO_TIMEOUT);
    assert_eq!(code, Some(0), "-h: {out}{err}");
    assert!(
        format!("{out}{err}").contains("CONFIGFILE") || format!("{out}{err}").contains("Usage"),
        "-h prints usage: {out}{err}"
    );
    let (code, out, err) = Nanny::run_once(&["--version"], IO_TIMEOUT);
    assert_eq!(code, Some(0), "--version: {out}{err}");
}

#[test]
fn sigterm_exits_0_and_leaves_running_services_alone() {
    let s = Scratch::new("smoke-sigterm");
    let hold = s.script("hold.sh", "#!/bin/sh\necho held\nexec cat\n");
    let mut n = Nanny::start(
        &s,
        Setup::new("all: ALL\n", &format!("all: run {}\n", hold.display())),
    );
    let mut c = connect_from(Ipv4Addr::new(127, 0, 0, 7), n.addr, IO_TIMEOUT).expect("connect");
    let line = read_line(&mut c, IO_TIMEOUT);
    assert_eq!(line.text(), "held\n", "log:\n{}", n.log());
    let services = n.services();
    assert_eq!(services.len(), 1, "one service process: {services:?}");
    n.signal(nix::sys::signal::Signal::SIGTERM);
    let st = n.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some(),
        "SIGTERM must stop the daemon; log:\n{}",
        n.log()
    );
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "exit status after SIGTERM"
    );
    assert!(
        alive(services[0]),
        "the running service must survive SIGTERM"
    );
    // The service still owns the connection and echoes through cat.
    use std::io::Write;
    c.write_all(b"still here\n").expect("write to service");
    let echo = read_line(&mut c, IO_TIMEOUT);
    assert_eq!(echo.text(), "still here\n");
    drop(c);
    let gone = wait_for(IO_TIMEOUT, || (!alive(services[0])).then_some(()));
    assert!(gone.is_some(), "the service ends when its client closes");
}

#[test]
fn unknown_service_user_is_a_startup_error() {
    let s = Scratch::new("smoke-nouser");
    let setup = Setup::new("a: ALL\n", "a: msg hi%(nl)s\n").conf("user no-such-user-pntest");
    let conf = s.write("nanny.conf", &setup.conf_text(&s));
    s.write("nanny-rules", &setup.rules);
    s.write("nanny-actions", &setup.actions);
    let (code, out, err) = Nanny::run_once(&[&conf.to_string_lossy()], Duration::from_secs(20));
    let all = format!("{out}{err}");
    assert!(
        matches!(code, Some(c) if c != 0),
        "a user that does not exist stops the daemon: {code:?} {all}"
    );
    assert!(
        all.contains("no-such-user-pntest"),
        "the message names the user: {all}"
    );
}

/// -S sets the daemon's RLIMIT_STACK soft limit in KiB (the hard limit is kept).
#[test]
fn dash_s_sets_the_stack_soft_limit() {
    let s = Scratch::new("smoke-stack");
    let n = Nanny::start(
        &s,
        Setup::new("all: ALL\n", "all: msg ok%(nl)s\n")
            .arg("-S")
            .arg("512"),
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", n.pid)).expect("limits");
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max stack size"))
        .and_then(|rest| rest.split_whitespace().next().map(str::to_owned));
    assert_eq!(soft.as_deref(), Some("524288"), "limits:\n{limits}");
    assert_eq!(n.fetch_from(Ipv4Addr::new(127, 0, 0, 9)).text(), "ok\n");
}
