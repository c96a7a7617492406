//! End-to-end behaviour of the actions language, observed by a client.
//!
//! Runs in the test process; starts the real `portnanny` on 127.0.0.1 (root on CI) and checks
//! what a client connecting from a chosen 127/8 address receives: run, msg, failmsg, drop,
//! reject, ipmax, connmax, GLOBAL, see/subst/setenv, substitutions, and the UCSPI environment.
//! Rules use IP matchers only, so no test causes a DNS lookup (and as root the daemon's
//! resolver is a private dnsmasq anyway).

mod util;

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use util::*;

fn ip(a: u8, b: u8, c: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, a, b, c)
}

/// A service that announces itself and then holds the connection until the client closes.
fn hold_script(s: &Scratch) -> String {
    s.script("hold.sh", "#!/bin/sh\necho held\nexec cat >/dev/null\n")
        .display()
        .to_string()
}

/// A service that prints its environment, one KEY=VALUE per line.
fn env_script(s: &Scratch) -> String {
    s.script("env.sh", "#!/bin/sh\nexec env\n")
        .display()
        .to_string()
}

/// Connects and reads the first line; the stream stays open if the service holds it.
fn attempt(n: &Nanny, src: Ipv4Addr) -> (String, TcpStream) {
    let mut c = connect_from(src, n.addr, IO_TIMEOUT).expect("connect");
    let r = read_line(&mut c, IO_TIMEOUT);
    (r.text(), c)
}

#[test]
fn run_gets_the_socket_and_the_ucspi_environment() {
    let s = Scratch::new("beh-env");
    let env = env_script(&s);
    let rules = "first/nt: 127.0.0.9\nenvc/label=my_label: 127.0.0.9\n";
    let n = Nanny::start(&s, Setup::new(rules, &format!("envc: run {env}\n")));
    let mut c = connect_from(ip(0, 0, 9), n.addr, IO_TIMEOUT).expect("connect");
    let remport = c.local_addr().expect("local addr").port();
    let r = read_all(&mut c, IO_TIMEOUT);
    assert_eq!(r.end, End::Eof, "the service's exit closes the connection");
    let e = parse_env(&r.text());
    let get = |k: &str| e.get(k).map(String::as_str);
    assert_eq!(
        get("PROTO"),
        Some("TCP"),
        "env:\n{}\nlog:\n{}",
        r.text(),
        n.log()
    );
    assert_eq!(get("TCPLOCALIP"), Some("127.0.0.1"));
    assert_eq!(
        get("TCPLOCALPORT"),
        Some(n.addr.port().to_string().as_str())
    );
    assert_eq!(get("TCPREMOTEIP"), Some("127.0.0.9"));
    assert_eq!(get("TCPREMOTEPORT"), Some(remport.to_string().as_str()));
    assert_eq!(
        get("TCPREMOTEHOST"),
        None,
        "no hostname lookup was needed, so none is known"
    );
    assert_eq!(get("TCPREMOTEINFO"), None, "no identd lookup was done");
    assert_eq!(get("NANNY_CLASS"), Some("envc"), "the action class");
    let classes = get("NANNY_CLASSES").unwrap_or_default();
    assert!(
        classes.contains("first") && classes.contains("envc"),
        "NANNY_CLASSES lists every matched class: {classes:?}"
    );
    let label = get("NANNY_LABEL").unwrap_or_default();
    assert!(
        label == "my_label" || label == "my label",
        "NANNY_LABEL of the action class's rule: {label:?}"
    );
    assert!(
        get("PATH").is_some(),
        "the parent's environment is passed on"
    );
}

#[test]
fn msg_writes_the_expanded_message_and_closes() {
    let s = Scratch::new("beh-msg");
    let n = Nanny::start(
        &s,
        Setup::new(
            "m: ALL\n",
            "m: msg hello %(ip)s:%(remport)s to %(localip)s:%(port)s in %(class)s%(eol)s\n",
        ),
    );
    let mut c = connect_from(ip(0, 1, 1), n.addr, IO_TIMEOUT).expect("connect");
    let remport = c.local_addr().expect("local addr").port();
    let r = read_all(&mut c, IO_TIMEOUT);
    assert_eq!(
        r.text(),
        format!(
            "hello 127.0.1.1:{remport} to 127.0.0.1:{} in m\r\n",
            n.addr.port()
        ),
        "log:\n{}",
        n.log()
    );
    assert_eq!(r.end, End::Eof);
}

#[test]
fn reject_with_failmsg_and_default_messages() {
    let s = Scratch::new("beh-reject");
    let rules = "\
own: 127.0.2.1
dflt: 127.0.2.2
silent: 127.0.2.3
";
    let actions = "\
own: reject : failmsg go away %(ip)s%(nl)s
dflt: reject
silent: reject : failrun /bin/true
DEFAULT-REJECT: failmsg rejected by default%(nl)s
";
    let n = Nanny::start(&s, Setup::new(rules, actions));
    assert_eq!(
        n.fetch_from(ip(0, 2, 1)).text(),
        "go away 127.0.2.1\n",
        "log:\n{}",
        n.log()
    );
    assert_eq!(
        n.fetch_from(ip(0, 2, 2)).text(),
        "rejected by default\n",
        "DEFAULT-REJECT supplies the failmsg; log:\n{}",
        n.log()
    );
    let r = n.fetch_from(ip(0, 2, 3));
    assert!(
        r.closed_silently(),
        "failrun /bin/true: no default failmsg is looked up when failrun is set: {r:?}"
    );
}

#[test]
fn reject_without_any_failmsg_closes_silently() {
    let s = Scratch::new("beh-reject-silent");
    let n = Nanny::start(&s, Setup::new("r: ALL\n", "r: reject\n"));
    let r = n.fetch_from(ip(0, 2, 9));
    assert!(r.closed_silently(), "{r:?}; log:\n{}", n.log());
}

#[test]
fn drop_closes_even_when_run_is_given() {
    let s = Scratch::new("beh-drop");
    let n = Nanny::start(
        &s,
        Setup::new("d: ALL\n", "d: drop : run /bin/echo should-not-run\n"),
    );
    let r = n.fetch_from(ip(0, 3, 1));
    assert!(r.closed_silently(), "drop takes precedence over run: {r:?}");
    assert!(n.services().is_empty(), "no service was started");
}

#[test]
fn no_class_or_no_action_closes() {
    let s = Scratch::new("beh-noclass");
    let n = Nanny::start(
        &s,
        Setup::new(
            "someone: 127.0.3.50\nnoaction: 127.0.3.51\n",
            "someone: msg hi%(nl)s\n",
        ),
    );
    let r = n.fetch_from(ip(0, 3, 2));
    assert!(
        r.closed_silently(),
        "a connection in no class is closed: {r:?}"
    );
    let r = n.fetch_from(ip(0, 3, 51));
    assert!(
        r.closed_silently(),
        "a class without an action does nothing: {r:?}"
    );
    assert_eq!(n.fetch_from(ip(0, 3, 50)).text(), "hi\n");
}

#[test]
fn first_class_with_an_action_wins_and_refusal_beats_action() {
    let s = Scratch::new("beh-order");
    let rules = "\
quiet/nt: ALL
a/nt: 127.0.4.1 127.0.4.2
b: 127.0.4.1
refuser: 127.0.4.2
c: ALL
";
    let actions = "\
a: msg from-a%(nl)s
b: msg from-b%(nl)s
refuser: reject : failmsg refused-by-later-class%(nl)s
c: msg from-c%(nl)s
";
    let n = Nanny::start(&s, Setup::new(rules, actions));
    assert_eq!(
        n.fetch_from(ip(0, 4, 1)).text(),
        "from-a\n",
        "earliest action class wins"
    );
    assert_eq!(
        n.fetch_from(ip(0, 4, 2)).text(),
        "refused-by-later-class\n",
        "any refusing class refuses, even after an action class"
    );
    assert_eq!(
        n.fetch_from(ip(0, 4, 3)).text(),
        "from-c\n",
        "quiet has no action"
    );
}

#[test]
fn ipmax_limits_connections_per_address() {
    let s = Scratch::new("beh-ipmax");
    let hold = hold_script(&s);
    let n = Nanny::start(
        &s,
        Setup::new(
            "h: ALL\n",
            &format!("h: run {hold} : ipmax 2 : failmsg full %(limit)s%(nl)s\n"),
        ),
    );
    let (a, _ca) = attempt(&n, ip(0, 5, 1));
    let (b, cb) = attempt(&n, ip(0, 5, 1));
    assert_eq!(
        (a.as_str(), b.as_str()),
        ("held\n", "held\n"),
        "log:\n{}",
        n.log()
    );
    let (c, _cc) = attempt(&n, ip(0, 5, 1));
    assert_eq!(
        c, "full ipmax\n",
        "third connection from one address is refused"
    );
    let (d, _cd) = attempt(&n, ip(0, 5, 2));
    assert_eq!(d, "held\n", "another address has its own count");
    drop(cb);
    let r = wait_for(IO_TIMEOUT, || {
        let (t, c) = attempt(&n, ip(0, 5, 1));
        (t == "held\n").then_some(c)
    });
    assert!(
        r.is_some(),
        "a closed connection frees its slot; log:\n{}",
        n.log()
    );
}

#[test]
fn connmax_limits_connections_per_class() {
    let s = Scratch::new("beh-connmax");
    let hold = hold_script(&s);
    let n = Nanny::start(
        &s,
        Setup::new(
            "h: ALL\n",
            &format!("h: run {hold} : connmax 3 : failmsg full %(limit)s %(class)s%(nl)s\n"),
        ),
    );
    let mut held = Vec::new();
    for i in 1..=3 {
        let (t, c) = attempt(&n, ip(0, 6, i));
        assert_eq!(t, "held\n", "connection {i}; log:\n{}", n.log());
        held.push(c);
    }
    let (t, _c) = attempt(&n, ip(0, 6, 4));
    assert_eq!(t, "full connmax h\n");
    held.truncate(2);
    let r = wait_for(IO_TIMEOUT, || {
        let (t, c) = attempt(&n, ip(0, 6, 5));
        (t == "held\n").then_some(c)
    });
    assert!(r.is_some(), "a closed connection frees its slot");
    let (t, _c) = attempt(&n, ip(0, 6, 6));
    assert_eq!(t, "full connmax h\n", "and only that one slot");
}

#[test]
fn global_limits_all_classes_together() {
    let s = Scratch::new("beh-global");
    let hold = hold_script(&s);
    let n = Nanny::start(
        &s,
        Setup::new(
            "a: 127.0.7.0/24\nb: ALL\n",
            &format!(
                "a: run {hold}\nb: run {hold}\nGLOBAL: connmax 2 : failmsg global full%(nl)s\n"
            ),
        ),
    );
    let (t1, _c1) = attempt(&n, ip(0, 7, 1));
    let (t2, _c2) = attempt(&n, ip(0, 8, 1));
    assert_eq!(
        (t1.as_str(), t2.as_str()),
        ("held\n", "held\n"),
        "log:\n{}",
        n.log()
    );
    let (t3, _c3) = attempt(&n, ip(0, 7, 2));
    assert_eq!(t3, "global full\n", "GLOBAL counts every class");
    let (t4, _c4) = attempt(&n, ip(0, 8, 2));
    assert_eq!(t4, "global full\n");
}

#[test]
fn see_merges_subst_and_setenv_first_one_wins() {
    let s = Scratch::new("beh-see");
    let env = env_script(&s);
    let actions = format!(
        "\
child: see parent : subst greet hello-from-child : setenv WHO child-%(greet)s
parent: run {env} : setenv WHO parent : setenv BASE base-%(ip)s-%(greet)s
\t: subst greet parent-greet : see grandparent
grandparent: setenv DEEP deep-%(class)s
"
    );
    let n = Nanny::start(
        &s,
        Setup::new("child: 127.0.9.0/24\nparent: ALL\n", &actions),
    );
    let r = n.fetch_from(ip(0, 9, 1));
    let e = parse_env(&r.text());
    assert_eq!(
        e.get("WHO").map(String::as_str),
        Some("child-hello-from-child"),
        "env:\n{}\nlog:\n{}",
        r.text(),
        n.log()
    );
    assert_eq!(
        e.get("BASE").map(String::as_str),
        Some("base-127.0.9.1-hello-from-child"),
        "the see'd class's setenv uses the first subst in the chain"
    );
    assert_eq!(
        e.get("DEEP").map(String::as_str),
        Some("deep-child"),
        "chains follow see twice"
    );
    assert_eq!(e.get("NANNY_CLASS").map(String::as_str), Some("child"));
    let r = n.fetch_from(ip(0, 10, 1));
    let e = parse_env(&r.text());
    assert_eq!(e.get("WHO").map(String::as_str), Some("parent"));
    assert_eq!(
        e.get("BASE").map(String::as_str),
        Some("base-127.0.10.1-parent-greet")
    );
}

/// A name that is only sometimes defined stays a run-time error (a name that is never defined
/// is refused when the file loads: tests/config_files.rs).
#[test]
fn undefined_substitution_drops_the_connection_and_logs() {
    let s = Scratch::new("beh-badsubst");
    let n = Nanny::start(
        &s,
        Setup::new(
            "bad: 127.0.11.1\nlim: ALL\n",
            "bad: msg hi %(identd)s%(nl)s\nlim: msg %(limit)s%(nl)s\n",
        ),
    );
    let mark = n.mark();
    let r = n.fetch_from(ip(0, 11, 1));
    assert!(
        r.closed_silently(),
        "a name undefined for this connection (no identd answer): dropped, not half-expanded: {r:?}"
    );
    n.expect_log(mark, &["identd"]);
    let r = n.fetch_from(ip(0, 11, 2));
    assert!(
        r.closed_silently(),
        "limit is undefined unless a limit refused: {r:?}"
    );
}

/// The action is prepared as a whole: an undefined name in a `record` or `log` line drops the
/// connection too (nothing is run or sent, and neither line is logged), as in portnanny 2.
#[test]
fn undefined_name_in_a_log_line_drops_the_connection() {
    let s = Scratch::new("beh-badlog");
    let n = Nanny::start(
        &s,
        Setup::new(
            "rec: 127.0.14.1
logd: 127.0.14.2
",
            "rec: record seen %(identd)s : msg rec%(nl)s
\
             logd: log served %(claimedhn)s : msg logd%(nl)s
",
        ),
    );
    for (host, word) in [(1, "identd"), (2, "claimedhn")] {
        let mark = n.mark();
        let r = n.fetch_from(ip(0, 14, host));
        assert!(
            r.closed_silently(),
            "undefined %({word})s in a log line: dropped, no message: {r:?}"
        );
        n.expect_log(mark, &[word, "dropping"]);
    }
    assert!(
        !n.log().contains("seen ") && !n.log().contains("served "),
        "neither line was logged half-expanded; log:\n{}",
        n.log()
    );
}

#[test]
fn subst_is_overridden_only_by_defined_builtins() {
    let s = Scratch::new("beh-subst-builtin");
    let n = Nanny::start(
        &s,
        Setup::new(
            "a: ALL\n",
            "a: subst identd NOIDENT : subst ip not-the-ip : msg %(identd)s %(ip)s%(nl)s\n",
        ),
    );
    assert_eq!(
        n.fetch_from(ip(0, 12, 1)).text(),
        "NOIDENT 127.0.12.1\n",
        "identd was not looked up so subst supplies it; ip is always defined; log:\n{}",
        n.log()
    );
}

#[test]
fn substitutions_off_sends_text_verbatim() {
    let s = Scratch::new("beh-subst-off");
    let n = Nanny::start(
        &s,
        Setup::new("a: ALL\n", "a: msg raw %(ip)s\n").conf("substitutions off"),
    );
    let r = n.fetch_from(ip(0, 12, 2));
    // A message that does not end in CR or LF gets CRLF appended, as in the original.
    assert_eq!(r.text(), "raw %(ip)s\r\n", "log:\n{}", n.log());
}

#[test]
fn msg_without_a_line_end_gets_crlf() {
    let s = Scratch::new("beh-msg-crlf");
    let n = Nanny::start(
        &s,
        Setup::new("a: 127.0.12.3\nb: ALL\n", "a: msg plain\nb: msg cr%(cr)s\n"),
    );
    assert_eq!(
        n.fetch_from(ip(0, 12, 3)).text(),
        "plain\r\n",
        "log:\n{}",
        n.log()
    );
    assert_eq!(
        n.fetch_from(ip(0, 12, 4)).text(),
        "cr\r",
        "ends in CR: sent as is"
    );
}

#[test]
fn log_and_record_lines_reach_the_log() {
    let s = Scratch::new("beh-log");
    let n = Nanny::start(
        &s,
        Setup::new(
            "seen/nt: ALL\na: ALL\n",
            "seen: record recorded-%(ip)s\na: msg x%(nl)s : log logged-%(ip)s-%(class)s\n",
        ),
    );
    let mark = n.mark();
    assert_eq!(n.fetch_from(ip(0, 13, 1)).text(), "x\n");
    n.expect_log(mark, &["logged-127.0.13.1-a"]);
    n.expect_log(mark, &["recorded-127.0.13.1"]);
}

#[test]
fn argv_is_split_before_substitution() {
    let s = Scratch::new("beh-argv");
    let args = s.script(
        "args.sh",
        "#!/bin/sh\necho \"argc=$#\"\nfor a in \"$@\"; do echo \"arg=$a\"; done\n",
    );
    let n = Nanny::start(
        &s,
        Setup::new(
            "a: ALL\n",
            &format!(
                "a: subst two one two : run {} %(two)s x%(ip)s\n",
                args.display()
            ),
        ),
    );
    let r = n.fetch_from(ip(0, 14, 1));
    assert_eq!(
        r.text(),
        "argc=2\narg=one two\narg=x127.0.14.1\n",
        "spaces from a substitution never make new arguments; log:\n{}",
        n.log()
    );
}

#[test]
fn service_has_only_fds_0_1_2_and_they_are_the_connection() {
    let s = Scratch::new("beh-fds");
    let n = Nanny::start(&s, Setup::new("a: ALL\n", "a: run /bin/cat\n"));
    let mut c = connect_from(ip(0, 15, 1), n.addr, IO_TIMEOUT).expect("connect");
    c.write_all(b"ping\n").expect("write");
    assert_eq!(
        read_line(&mut c, IO_TIMEOUT).text(),
        "ping\n",
        "cat echoes through fd 0/1"
    );
    let pid = wait_for(IO_TIMEOUT, || {
        n.services()
            .into_iter()
            .find(|&p| cmdline(p).first().map(String::as_str) == Some("/bin/cat"))
    })
    .expect("the cat service process");
    assert_eq!(fds(pid), vec![0, 1, 2], "fds of the service");
    let t0 = fd_target(pid, 0).unwrap_or_default();
    assert!(t0.starts_with("socket:"), "fd 0 is the socket: {t0}");
    assert_eq!(fd_target(pid, 1), Some(t0.clone()));
    assert_eq!(fd_target(pid, 2), Some(t0));
}

#[test]
fn many_listens_and_local_matcher() {
    let s = Scratch::new("beh-listens");
    let second = free_port();
    let mut setup = Setup::new(
        &format!("two: local: {second}@\none: ALL\n"),
        "one: msg one%(nl)s\ntwo: msg two %(port)s%(nl)s\n",
    );
    setup.extra_listens.push(format!("{second}@127.0.0.1"));
    let n = Nanny::start(&s, setup);
    n.wait_listening(second);
    assert_eq!(n.fetch_from(ip(0, 16, 1)).text(), "one\n");
    let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, second));
    assert_eq!(
        fetch(ip(0, 16, 1), addr, IO_TIMEOUT).text(),
        format!("two {second}\n")
    );
}

#[test]
fn ipv6_listen_and_rules() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("ipv6_listen_and_rules: skipped: no ::1 on this machine");
        return;
    }
    let s = Scratch::new("beh-ipv6");
    let v6 = free_port();
    let mut setup = Setup::new(
        "six: ip: ::1\nfour: ALL\n",
        "six: msg six %(ip)s%(nl)s\nfour: msg four %(ip)s%(nl)s\n",
    );
    setup.extra_listens.push(format!("{v6}@::1"));
    let n = Nanny::start(&s, setup);
    let ok = wait_for(START_TIMEOUT, || {
        std::fs::read_to_string("/proc/net/tcp6").ok().filter(|t| {
            t.contains(&format!(
                ":{v6:04X} 00000000000000000000000000000000:0000 0A"
            ))
        })
    });
    assert!(ok.is_some(), "listening on [::1]:{v6}");
    let mut c = TcpStream::connect(("::1", v6)).expect("connect ::1");
    let r = read_all(&mut c, IO_TIMEOUT);
    assert_eq!(r.text(), "six ::1\n", "log:\n{}", n.log());
    assert_eq!(n.fetch_from(ip(0, 17, 1)).text(), "four 127.0.17.1\n");
}

#[test]
fn sigusr2_reports_active_connections_and_counts() {
    let s = Scratch::new("beh-usr2");
    let hold = hold_script(&s);
    let n = Nanny::start(
        &s,
        Setup::new("h: ALL\n", &format!("h: run {hold} : connmax 5\n")),
    );
    let (t, c) = attempt(&n, ip(0, 19, 1));
    assert_eq!(t, "held\n", "log:\n{}", n.log());
    let remport = c.local_addr().expect("local addr").port();
    let pid = wait_for(IO_TIMEOUT, || n.services().first().copied()).expect("service pid");
    let mark = n.mark();
    n.signal(nix::sys::signal::Signal::SIGUSR2);
    let peer = format!("127.0.19.1:{remport}");
    let line = n.expect_log(mark, &["status", &format!("pid={pid}"), &peer]);
    assert!(
        line.contains('h'),
        "the active line names the classes: {line}"
    );
    n.expect_log(mark, &["status", "class h", "count=1"]);
    assert!(alive(n.pid), "SIGUSR2 does not stop the daemon");
}

#[test]
fn firsttime_history_and_sigusr1_flush() {
    let s = Scratch::new("beh-usr1");
    let n = Nanny::start(
        &s,
        Setup::new(
            "new: firsttime\nold: ALL\n",
            "new: msg new%(nl)s\nold: msg old%(nl)s\n",
        ),
    );
    assert_eq!(
        n.fetch_from(ip(0, 20, 1)).text(),
        "new\n",
        "log:\n{}",
        n.log()
    );
    assert_eq!(n.fetch_from(ip(0, 20, 1)).text(), "old\n", "seen before");
    assert_eq!(
        n.fetch_from(ip(0, 20, 2)).text(),
        "new\n",
        "history is per address"
    );
    let mark = n.mark();
    n.signal(nix::sys::signal::Signal::SIGUSR1);
    n.expect_log(mark, &["SIGUSR1"]);
    let r = fetch_until(ip(0, 20, 1), n.addr, IO_TIMEOUT, |r| r.text() == "new\n");
    assert!(
        r.is_some(),
        "SIGUSR1 flushes the IP history; log:\n{}",
        n.log()
    );
}

#[test]
fn dropipafter_forgets_idle_addresses() {
    let s = Scratch::new("beh-dropip");
    let n = Nanny::start(
        &s,
        Setup::new(
            "new: firsttime\nold: ALL\n",
            "new: msg new%(nl)s\nold: msg old%(nl)s\n",
        )
        .conf("dropipafter 3s")
        .conf("expireevery 0s"),
    );
    assert_eq!(
        n.fetch_from(ip(0, 21, 1)).text(),
        "new\n",
        "log:\n{}",
        n.log()
    );
    assert_eq!(n.fetch_from(ip(0, 21, 1)).text(), "old\n");
    // Margin both ways: the first two connections are well within 3 s of each other even
    // on a loaded machine, and 5 s of silence is well past it.
    std::thread::sleep(std::time::Duration::from_millis(5000));
    assert_eq!(
        n.fetch_from(ip(0, 21, 1)).text(),
        "new\n",
        "not seen for longer than dropipafter: a first time again"
    );
}

#[test]
fn failrun_connections_count_against_limits() {
    let s = Scratch::new("beh-failrun-count");
    let hold = hold_script(&s);
    let failhold = s.script(
        "failhold.sh",
        "#!/bin/sh\necho failheld\nexec cat >/dev/null\n",
    );
    let n = Nanny::start(
        &s,
        Setup::new(
            "h: ALL\n",
            &format!(
                "h: run {hold} : connmax 2 : failrun {}\n",
                failhold.display()
            ),
        ),
    );
    let (a, ca) = attempt(&n, ip(0, 22, 1));
    let (b, _cb) = attempt(&n, ip(0, 22, 2));
    assert_eq!(
        (a.as_str(), b.as_str()),
        ("held\n", "held\n"),
        "log:\n{}",
        n.log()
    );
    let (c, _cc) = attempt(&n, ip(0, 22, 3));
    assert_eq!(c, "failheld\n", "over connmax: failrun");
    // Three connections are counted now (run, run, failrun): freeing one run slot leaves the
    // class at its limit, so the next attempt is refused again.
    drop(ca);
    let ok = wait_for(IO_TIMEOUT, || (n.services().len() == 2).then_some(()));
    assert!(ok.is_some(), "one service ended: {:?}", n.services());
    let (d, _cd) = attempt(&n, ip(0, 22, 4));
    assert_eq!(
        d, "failheld\n",
        "a failrun connection counts against connmax"
    );
}

#[test]
fn a_service_that_cannot_exec_closes_and_frees_its_slot() {
    let s = Scratch::new("beh-execfail");
    let n = Nanny::start(
        &s,
        Setup::new(
            "a: ALL\n",
            "a: run /nonexistent/portnanny-test-program : connmax 1 : failmsg full%(nl)s\n",
        ),
    );
    for i in 1..=3 {
        let r = n.fetch_from(ip(0, 23, i));
        assert!(
            r.closed_silently(),
            "attempt {i}: the connection is closed, and the slot freed again: {r:?}\nlog:\n{}",
            n.log()
        );
        // The next attempt may only come after the failed child was reaped.
        let ok = wait_for(IO_TIMEOUT, || n.services().is_empty().then_some(()));
        assert!(ok.is_some());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn global_joins_only_connections_in_some_class() {
    let s = Scratch::new("beh-global-only");
    let n = Nanny::start(
        &s,
        Setup::new(
            "member: 127.0.24.1\n",
            "GLOBAL: msg from-global %(class)s%(nl)s\n",
        ),
    );
    assert_eq!(
        n.fetch_from(ip(0, 24, 1)).text(),
        "from-global GLOBAL\n",
        "a member of some class is also in GLOBAL, whose action applies; log:\n{}",
        n.log()
    );
    let r = n.fetch_from(ip(0, 24, 2));
    assert!(
        r.closed_silently(),
        "in no class, so not in GLOBAL either: {r:?}"
    );
}

/// A client that talks first (an HTTP request, say) still gets the whole message and a clean
/// end: input left unread at close would make the kernel answer with a reset instead of a FIN,
/// and the parent closes with the message's tail still held back by MSG_MORE.
#[test]
fn msg_reaches_a_client_that_sent_a_request_first_and_ends_in_a_clean_eof() {
    let s = Scratch::new("msg-talker");
    let text = "x".repeat(3000);
    let n = Nanny::start(
        &s,
        Setup::new("a: ALL\n", &format!("a: msg {text}%(nl)s\n")),
    );
    for i in 0..20u8 {
        let mut c =
            connect_from(Ipv4Addr::new(127, 0, 12, i + 1), n.addr, IO_TIMEOUT).expect("connect");
        c.write_all(b"GET / HTTP/1.0\r\nHost: example\r\n\r\n")
            .expect("write the request");
        let r = read_all(&mut c, IO_TIMEOUT);
        assert_eq!(r.text(), format!("{text}\n"), "try {i}; log:\n{}", n.log());
        assert_eq!(r.end, End::Eof, "try {i}: the end is a FIN, not a reset");
    }
}
