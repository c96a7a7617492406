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

/// Connects from `ip` to a daemon whose class runs [`hold_script`]: the held connection and
/// the pid of its service.
fn held_service(n: &Nanny, ip: Ipv4Addr) -> (std::net::TcpStream, i32) {
    let mut c = connect_from(ip, n.addr, IO_TIMEOUT).expect("connect");
    assert_eq!(
        read_line(&mut c, IO_TIMEOUT).text(),
        "held\n",
        "{}",
        n.log()
    );
    let svc = wait_for(IO_TIMEOUT, || n.services().first().copied()).expect("a service runs");
    (c, svc)
}

/// Issue 9 item 10: Ctrl-C in the daemon's terminal (SIGINT to its process group) stopped the
/// running services too, although SIGTERM is documented to leave them running.
#[test]
fn services_have_their_own_session_and_survive_sigint_to_the_daemons_group() {
    let s = Scratch::new("svc-session");
    let hold = hold_script(&s);
    let mut n =
        Nanny::start_group_leader(&s, Setup::new("all: ALL\n", &format!("all: run {hold}\n")));
    let (c, svc) = held_service(&n, Ipv4Addr::new(127, 0, 10, 1));

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

/// A service that prints its environment, one KEY=VALUE per line.
fn env_script(s: &Scratch) -> String {
    s.script("env.sh", "#!/bin/sh\nexec env\n")
        .display()
        .to_string()
}

/// The daemon's environment in the environment tests: login variables that are not any
/// service user's, a secret, and a variable an administrator would pass on.
const DAEMON_ENV: [(&str, &str); 6] = [
    ("HOME", "/daemon-home"),
    ("USER", "daemon-user"),
    ("LOGNAME", "daemon-user"),
    ("SHELL", "/daemon-shell"),
    ("SECRET_TOKEN", "s3cret"),
    ("TZ", "Europe/Paris"),
];

/// (name, home, shell) of the user services run as: nobody when the test runs as root (the
/// conf says `user nobody`), else the tester (services run as the daemon's own user).
fn service_user() -> (String, String, String) {
    let uid = if is_root() {
        nix::unistd::Uid::from_raw(NOBODY_UID)
    } else {
        nix::unistd::geteuid()
    };
    let u = nix::unistd::User::from_uid(uid)
        .expect("passwd lookup")
        .expect("the service user has a passwd entry");
    (
        u.name,
        u.dir.to_string_lossy().into_owned(),
        u.shell.to_string_lossy().into_owned(),
    )
}

/// Runs the env service once under `conf_extra` and returns what it printed.
fn service_env(name: &str, conf_extra: &str) -> std::collections::HashMap<String, String> {
    let s = Scratch::new(name);
    let env = env_script(&s);
    let mut setup = Setup::new(
        "envc: ALL\n",
        &format!("envc: run {env} : setenv FROM_SETENV yes\n"),
    );
    if is_root() {
        setup = setup.conf("user nobody");
    }
    if !conf_extra.is_empty() {
        setup = setup.conf(conf_extra);
    }
    let n = Nanny::start_group_leader_env(&s, setup, &DAEMON_ENV);
    let r = fetch(Ipv4Addr::new(127, 0, 11, 1), n.addr, IO_TIMEOUT);
    let e = parse_env(&r.text());
    assert_eq!(
        e.get("PROTO").map(String::as_str),
        Some("TCP"),
        "the service ran; env:\n{}\nlog:\n{}",
        r.text(),
        n.log()
    );
    e
}

fn assert_login_vars(e: &std::collections::HashMap<String, String>) {
    let (user, home, shell) = service_user();
    let get = |k: &str| e.get(k).map(String::as_str);
    assert_eq!(
        get("HOME"),
        Some(home.as_str()),
        "HOME is the service user's"
    );
    assert_eq!(get("USER"), Some(user.as_str()));
    assert_eq!(get("LOGNAME"), Some(user.as_str()));
    assert_eq!(get("SHELL"), Some(shell.as_str()));
}

/// Issue 9 item 11: a service run as nobody inherited HOME=/root (and USER, LOGNAME, SHELL) from
/// the daemon. Without `passenv` the rest of the environment is still inherited (tcpserver's
/// way).
#[test]
fn login_variables_are_the_service_users_and_the_rest_is_inherited_by_default() {
    let e = service_env("svc-env-inherit", "");
    assert_login_vars(&e);
    let get = |k: &str| e.get(k).map(String::as_str);
    assert_eq!(
        get("SECRET_TOKEN"),
        Some("s3cret"),
        "inherited without passenv"
    );
    assert_eq!(get("TZ"), Some("Europe/Paris"));
    assert_eq!(get("FROM_SETENV"), Some("yes"));
    assert!(get("PATH").is_some());
}

/// Issue 9 item 11: with `passenv`, services start from a minimal environment: PATH, the UCSPI and
/// NANNY_ variables, setenv, the login variables, and only the names passed.
#[test]
fn passenv_starts_services_from_a_minimal_environment() {
    let e = service_env("svc-env-passenv", "passenv TZ NOT_SET_ANYWHERE");
    assert_login_vars(&e);
    let get = |k: &str| e.get(k).map(String::as_str);
    assert_eq!(get("SECRET_TOKEN"), None, "not passed: {e:?}");
    assert_eq!(get("TZ"), Some("Europe/Paris"), "passed");
    assert_eq!(get("NOT_SET_ANYWHERE"), None);
    assert_eq!(
        get("PATH"),
        Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "the daemon's PATH"
    );
    assert_eq!(get("FROM_SETENV"), Some("yes"));
    assert_eq!(get("NANNY_CLASS"), Some("envc"));
    assert!(get("TCPREMOTEIP").is_some() && get("TCPLOCALPORT").is_some());
    let mut names: Vec<&str> = e.keys().map(String::as_str).collect();
    names.sort_unstable();
    let allowed = |k: &str| {
        k.starts_with("TCP")
            || k.starts_with("NANNY_")
            || [
                "PROTO",
                "PATH",
                "HOME",
                "USER",
                "LOGNAME",
                "SHELL",
                "TZ",
                "FROM_SETENV",
                // Set by the shell that runs env.sh itself.
                "PWD",
                "SHLVL",
                "_",
                "OLDPWD",
            ]
            .contains(&k)
    };
    assert!(
        names.iter().all(|k| allowed(k)),
        "unexpected variables: {names:?}"
    );
}

/// The daemon reads its signals from a signalfd, so it keeps them blocked; nothing it starts
/// may inherit that mask (a service with SIGTERM blocked could not be stopped, one with SIGCHLD
/// blocked would miss its own children).
#[test]
fn services_and_workers_start_with_no_signal_blocked() {
    let s = Scratch::new("svc-sigmask");
    let hold = hold_script(&s);
    let n = Nanny::start(&s, Setup::new("all: ALL\n", &format!("all: run {hold}\n")));
    let (c, svc) = held_service(&n, Ipv4Addr::new(127, 0, 10, 2));

    let blocked = |pid: i32| {
        let hex = status_field(pid, "SigBlk").expect("SigBlk in /proc/PID/status");
        u64::from_str_radix(hex.trim(), 16).expect("SigBlk is hex")
    };
    // Bit N-1 is signal N.
    let chld = 1u64 << (libc::SIGCHLD - 1);
    let term = 1u64 << (libc::SIGTERM - 1);
    assert_eq!(
        blocked(n.pid) & (chld | term),
        chld | term,
        "the daemon blocks what its signalfd reads"
    );
    assert_eq!(blocked(svc), 0, "the service's signal mask");
    for role in ["classifier", "resolver"] {
        let pid = n.wait_worker(role, IO_TIMEOUT).expect("worker runs");
        assert_eq!(blocked(pid), 0, "the {role}'s signal mask");
    }
    drop(c);
}

/// A service holds nothing of the daemon's but its own connection: no listener, no worker
/// channel, no signalfd, no epoll set, no other client's socket. A leaked descriptor would
/// outlive its use in the daemon (the loop's epoll set relies on closed sockets going away,
/// src/parent/interest.rs) and hand the service another client's connection.
#[test]
fn services_inherit_only_descriptors_0_1_and_2() {
    let s = Scratch::new("svc-fds");
    let hold = hold_script(&s);
    let n = Nanny::start(&s, Setup::new("all: ALL\n", &format!("all: run {hold}\n")));
    // A second client's service, so another connection's socket was open in the daemon.
    let (first, _) = held_service(&n, Ipv4Addr::new(127, 0, 10, 3));
    let (second, _) = held_service(&n, Ipv4Addr::new(127, 0, 10, 4));
    let services = wait_for(IO_TIMEOUT, || {
        let all = n.services();
        (all.len() == 2).then_some(all)
    })
    .expect("two services run");
    for svc in services {
        assert_eq!(fds(svc), vec![0, 1, 2], "descriptors open in service {svc}");
    }
    drop((first, second));
}
