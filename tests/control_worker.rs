//! The control worker and its socket as the daemon runs them (issue 11): the worker's
//! credentials from /proc, the socket's owner and mode, a stale socket replaced and a live one
//! refused at start, and a killed control worker restarted while connections keep being served.
//! The nannyctl commands themselves are tested in tests/control.rs.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use util::*;

const WAIT: Duration = Duration::from_secs(10);

/// One request line, one reply line.
fn ask(path: &std::path::Path, req: &str) -> Option<String> {
    let mut s = UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(WAIT)).ok()?;
    s.write_all(format!("{req}\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    Some(line)
}

fn setup(s: &Scratch, extra: &str) -> Setup {
    Setup::new("a: ALL\n", "a: msg hello%(nl)s\n")
        .conf(&format!("control {}", s.path("ctl").display()))
        .conf(extra)
}

#[test]
fn the_control_worker_is_unprivileged_chrooted_and_holds_only_its_fds() {
    if skip_unless_root("the_control_worker_is_unprivileged_chrooted_and_holds_only_its_fds") {
        return;
    }
    let s = Scratch::new("ctl-worker");
    let n = Nanny::start(&s, setup(&s, ""));
    let w = n.wait_worker("control", WAIT).expect("control worker");
    let reply = ask(&s.path("ctl"), "\"status\"").unwrap_or_default();
    assert!(reply.starts_with("{\"lines\":["), "{reply}\n{}", n.log());
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    assert_eq!(status_ids(w, "Uid"), nobody.map(|u| vec![u; 4]), "uids");
    for f in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
        assert_eq!(
            status_field(w, f).as_deref(),
            Some("0000000000000000"),
            "{f}"
        );
    }
    assert_eq!(status_field(w, "NoNewPrivs").as_deref(), Some("1"));
    assert_eq!(
        std::fs::read_link(format!("/proc/{w}/root")).ok(),
        Some(s.path("empty")),
        "chrooted into the empty dir"
    );
    let limits = std::fs::read_to_string(format!("/proc/{w}/limits")).unwrap_or_default();
    let nproc = limits
        .lines()
        .find(|l| l.starts_with("Max processes"))
        .unwrap_or_default();
    assert_eq!(
        nproc.split_whitespace().nth(2),
        Some("0"),
        "RLIMIT_NPROC 0: {nproc}"
    );
    // stdin/out/err, its channel (3) and the listening socket (4); clients come and go.
    // (The status client above may take a moment to be seen gone.)
    let settled = wait_for(WAIT, || {
        let mut f = fds(w);
        f.sort_unstable();
        (f == [0, 1, 2, 3, 4]).then_some(())
    });
    let all: Vec<(i32, Option<String>)> =
        fds(w).into_iter().map(|f| (f, fd_target(w, f))).collect();
    assert!(settled.is_some(), "{all:?}");
    assert!(fd_target(w, 4).unwrap_or_default().starts_with("socket:"));
}

#[test]
fn the_socket_is_0600_root_only_or_0660_for_controlgroup() {
    if skip_unless_root("the_socket_is_0600_root_only_or_0660_for_controlgroup") {
        return;
    }
    ensure_test_user();
    let s = Scratch::new("ctl-mode");
    let n = Nanny::start(&s, setup(&s, ""));
    let m = std::fs::symlink_metadata(s.path("ctl")).expect("socket");
    assert!(m.file_type().is_socket());
    assert_eq!((m.mode() & 0o777, m.uid(), m.gid()), (0o600, 0, 0));
    drop(n);
    assert!(
        !s.path("ctl").exists(),
        "the socket is removed when the daemon stops"
    );

    let s = Scratch::new("ctl-mode-group");
    let group = TEST_GROUPS[0];
    let _n = Nanny::start(&s, setup(&s, &format!("controlgroup {group}")));
    let m = std::fs::symlink_metadata(s.path("ctl")).expect("socket");
    let gid = nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    assert_eq!((m.mode() & 0o777, m.uid(), Some(m.gid())), (0o660, 0, gid));
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    if skip_unless_root("a_stale_socket_is_replaced_and_a_live_one_refused") {
        return;
    }
    let s = Scratch::new("ctl-stale");
    // A socket file nothing listens on (its listener closed): stale.
    drop(UnixListener::bind(s.path("ctl")).expect("bind"));
    let n = Nanny::start(&s, setup(&s, ""));
    let r = wait_for(WAIT, || ask(&s.path("ctl"), "\"blocked\""));
    assert_eq!(r.as_deref(), Some("{\"blocks\":[]}\n"), "{}", n.log());
    assert!(n.log().contains("replacing a stale socket"), "{}", n.log());

    // A second daemon on the same path: refused at start, naming it; the first keeps it.
    let s2 = Scratch::new("ctl-stale-2");
    let mut second = setup(&s2, "");
    second.conf_extra = format!("control {}\n", s.path("ctl").display());
    let mut n2 = Nanny::spawn(&s2, &second);
    let st = n2.wait_exit(WAIT).expect("the second daemon exits");
    assert!(!st.success());
    let log2 = n2.log();
    assert!(
        log2.contains(&format!("control socket {}", s.path("ctl").display()))
            && log2.contains("another daemon is serving it"),
        "{log2}"
    );
    assert!(ask(&s.path("ctl"), "\"blocked\"").is_some());
}

#[test]
fn a_killed_control_worker_is_restarted_and_connections_are_served_meanwhile() {
    if skip_unless_root("a_killed_control_worker_is_restarted_and_connections_are_served_meanwhile")
    {
        return;
    }
    let s = Scratch::new("ctl-restart");
    let n = Nanny::start(&s, setup(&s, ""));
    let w = n.wait_worker("control", WAIT).expect("control worker");
    let mark = n.mark();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert_eq!(
        n.fetch_from(Ipv4Addr::new(127, 71, 0, 1)).text(),
        "hello\n",
        "{}",
        n.log()
    );
    n.expect_log(mark, &["the control worker failed"]);
    let back = wait_for(WAIT, || {
        n.worker("control")
            .filter(|p| *p != w)
            .and_then(|_| ask(&s.path("ctl"), "\"blocked\""))
    });
    assert_eq!(back.as_deref(), Some("{\"blocks\":[]}\n"), "{}", n.log());
}

#[test]
fn check_mode_names_a_missing_controlgroup_and_socket_directory() {
    let s = Scratch::new("ctl-check");
    let conf = s.write(
        "nanny.conf",
        &format!(
            "rulefile {r}\nactionfile {a}\nlisten 5999@127.0.0.1\ncontrol /nonexistent-pn/ctl\n\
             controlgroup no-such-group-pn\n",
            r = s.write("rules", "a: ALL\n").display(),
            a = s.write("actions", "a: drop\n").display(),
        ),
    );
    let conf = conf.to_string_lossy().into_owned();
    let (code, _, err) = Nanny::run_once(&["-C", &conf], WAIT);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{conf}:4:9: error[H010]: /nonexistent-pn is not a directory"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{conf}:5:14: error[H009]: group 'no-such-group-pn' does not exist"
        )),
        "{err}"
    );
}

#[test]
fn check_mode_names_a_bad_xmlrpc_password_file_and_warns_of_a_remote_address() {
    let s = Scratch::new("xmlrpc-check");
    let pw = s.write("pw", "alice:not-a-hash\n");
    let conf = s.write(
        "nanny.conf",
        &format!(
            "rulefile {r}\nactionfile {a}\nlisten 5998@127.0.0.1\ncontrol {c}\nconntrack on\n\
             xmlrpc 0.0.0.0:8000 allow-remote\nxmlrpcusers {pw}\n",
            r = s.write("rules", "a: ALL\n").display(),
            a = s.write("actions", "a: drop\n").display(),
            c = s.path("ctl").display(),
            pw = pw.display(),
        ),
    );
    let conf = conf.to_string_lossy().into_owned();
    let (code, _, err) = Nanny::run_once(&["-C", &conf], WAIT);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("{conf}:6:8: warning[C021]: xmlrpc on 0.0.0.0")),
        "{err}"
    );
    assert!(err.contains("error[H012]"), "{err}");
    assert!(err.contains("pw:1: the hash of alice"), "{err}");
}
