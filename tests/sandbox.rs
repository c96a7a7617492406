//! The per-class sandbox (`user USER[:GROUP]`, `nice`, `rlimit`, `umask`, `chdir`, `timeout`)
//! and `msgfile`, extensions to portnanny 2 (issue 13, items 2 and 6).
//!
//! Runs in the test process; starts the real `portnanny` on 127.0.0.1 and reads what it
//! started from outside: /proc/PID/{status,limits,stat,cwd} of the service, the bytes a client
//! receives, the daemon's log and files a service writes. Rules use IP matchers only. Only
//! processes the test started are signalled (the harness's drop guard, by pid and start time).
//! The credential test needs root (it skips otherwise); the others run either way.

mod util;

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use util::*;

/// -C and a daemon that must refuse to start are bounded by this.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
/// A changed msgfile settles (3 s) and is stat'ed once a second.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

fn src(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 13, i)
}

/// A service that announces itself and then holds the connection (as `cat`, the same pid)
/// until the client closes.
fn hold_script(s: &Scratch) -> String {
    s.script("hold.sh", "#!/bin/sh\necho ready\nexec cat >/dev/null\n")
        .display()
        .to_string()
}

/// The (soft, hard) columns of one /proc/PID/limits row, e.g. "Max open files".
fn limit(pid: i32, row: &str) -> Option<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with(row))?;
    let mut f = line[row.len()..].split_whitespace();
    Some((f.next()?.to_owned(), f.next()?.to_owned()))
}

/// The nice value, field 19 of /proc/PID/stat (parsed after the last ')').
fn nice(pid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(16)?.parse().ok()
}

fn gid_of(group: &str) -> u32 {
    nix::unistd::Group::from_name(group)
        .expect("group lookup")
        .unwrap_or_else(|| panic!("group {group} exists"))
        .gid
        .as_raw()
}

/// Everything the sandbox sets is visible in /proc of the running service; a class without a
/// sandbox still runs as nanny.conf's `user`.
#[test]
fn a_class_sandbox_is_visible_in_proc_of_its_service() {
    if skip_unless_root("a_class_sandbox_is_visible_in_proc_of_its_service") {
        return;
    }
    let (uid, _, _) = ensure_test_user();
    let s = Scratch::new("sb-proc");
    let hold = hold_script(&s);
    let work = s.empty_dir("work");
    let actions = format!(
        "boxed: run {hold} : user {TEST_USER}:{group} : nice 7 : rlimit nofile 77\n\
         \x20 : rlimit as 1g : rlimit core 0:1m : rlimit cpu 1h : rlimit nproc 500:1000\n\
         \x20 : rlimit fsize 10m : umask 0027 : chdir {work} : timeout 1h\n\
         plain: run {hold}\n",
        group = TEST_GROUPS[0],
        work = work.display()
    );
    let n = Nanny::start(
        &s,
        Setup::new("boxed: ip: 127.0.13.1\nplain: ALL\n", &actions).conf("user nobody"),
    );
    let mut c = connect_from(src(1), n.addr, IO_TIMEOUT).expect("connect");
    assert_eq!(
        read_line(&mut c, IO_TIMEOUT).text(),
        "ready\n",
        "{}",
        n.log()
    );
    let svc = wait_for(IO_TIMEOUT, || n.services().first().copied()).expect("a service runs");
    // exec'd into cat: wait until the shell is gone so /proc shows the final process.
    wait_for(IO_TIMEOUT, || {
        (cmdline(svc).first().map(String::as_str) == Some("cat")).then_some(())
    })
    .expect("the service exec'd cat");

    let group = gid_of(TEST_GROUPS[0]);
    assert_eq!(status_ids(svc, "Uid"), Some(vec![uid; 4]));
    assert_eq!(
        status_ids(svc, "Gid"),
        Some(vec![group; 4]),
        "GROUP is the primary group"
    );
    let groups = status_ids(svc, "Groups").expect("Groups");
    for g in TEST_GROUPS {
        assert!(groups.contains(&gid_of(g)), "{g} in {groups:?}");
    }
    assert!(!groups.contains(&0), "no root group left: {groups:?}");
    assert_eq!(status_field(svc, "Umask").as_deref(), Some("0027"));
    assert_eq!(nice(svc), Some(7));
    let cwd = std::fs::read_link(format!("/proc/{svc}/cwd")).expect("cwd");
    assert_eq!(cwd, work);
    let rows = [
        ("Max open files", "77", "77"),
        ("Max address space", "1073741824", "1073741824"),
        ("Max core file size", "0", "1048576"),
        ("Max cpu time", "3600", "3600"),
        ("Max processes", "500", "1000"),
        ("Max file size", "10485760", "10485760"),
    ];
    for (row, soft, hard) in rows {
        assert_eq!(
            limit(svc, row),
            Some((soft.to_owned(), hard.to_owned())),
            "{row}"
        );
    }
    drop(c);

    // The class without a sandbox: nanny.conf's user, nothing else changed.
    let mut c = connect_from(src(2), n.addr, IO_TIMEOUT).expect("connect");
    assert_eq!(read_line(&mut c, IO_TIMEOUT).text(), "ready\n");
    let svc2 = wait_for(IO_TIMEOUT, || {
        n.services()
            .into_iter()
            .find(|p| status_ids(*p, "Uid") == Some(vec![NOBODY_UID; 4]))
    });
    let svc2 = svc2.unwrap_or_else(|| panic!("a service as nobody; log:\n{}", n.log()));
    assert_ne!(nice(svc2), Some(7));
    assert_ne!(
        limit(svc2, "Max open files").map(|l| l.0),
        Some("77".to_owned())
    );
}

/// `timeout 1s`: the service's group gets SIGTERM after a second (a shell's trap sees it and
/// writes a file); one that ignores SIGTERM is SIGKILLed after the 3 s grace.
#[test]
fn timeout_terminates_then_kills_after_the_grace() {
    let s = Scratch::new("sb-timeout");
    let mark_file = s.path("termed");
    let trap = s.script(
        "trap.sh",
        &format!(
            "#!/bin/sh\ntrap 'echo term > {f}; exit 0' TERM\necho ready\n\
             while :; do sleep 0.1; done\n",
            f = mark_file.display()
        ),
    );
    let stubborn = s.script(
        "stubborn.sh",
        "#!/bin/sh\ntrap '' TERM\necho ready\nexec sleep 60\n",
    );
    // The trap script writes into the scratch directory, so it runs as the tester.
    let n = Nanny::start(
        &s,
        Setup::new(
            "polite: ip: 127.0.13.3\nstubborn: ALL\n",
            &format!(
                "polite: run {} : timeout 1s\nstubborn: run {} : timeout 1s\n",
                trap.display(),
                stubborn.display()
            ),
        ),
    );

    let mark = n.mark();
    let t0 = Instant::now();
    let mut c = connect_from(src(3), n.addr, IO_TIMEOUT).expect("connect");
    assert_eq!(
        read_line(&mut c, IO_TIMEOUT).text(),
        "ready\n",
        "{}",
        n.log()
    );
    let text = wait_for(IO_TIMEOUT, || {
        std::fs::read_to_string(&mark_file)
            .ok()
            .filter(|t| !t.is_empty())
    });
    assert_eq!(text.as_deref(), Some("term\n"), "log:\n{}", n.log());
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "not before its time"
    );
    n.expect_log(mark, &["class polite timeout 1s: ending pid=", "(SIGTERM)"]);
    let r = read_all(&mut c, IO_TIMEOUT);
    assert!(
        matches!(r.end, End::Eof | End::Reset),
        "the client sees the end: {r:?}"
    );

    let mark = n.mark();
    let t0 = Instant::now();
    let mut c = connect_from(src(4), n.addr, IO_TIMEOUT).expect("connect");
    assert_eq!(read_line(&mut c, IO_TIMEOUT).text(), "ready\n");
    let r = read_all(&mut c, Duration::from_secs(15));
    let took = t0.elapsed();
    assert!(
        matches!(r.end, End::Eof | End::Reset),
        "ended: {r:?}; log:\n{}",
        n.log()
    );
    assert!(
        took >= Duration::from_millis(3900) && took < Duration::from_secs(12),
        "SIGTERM at 1 s is ignored, SIGKILL 3 s later: took {took:?}"
    );
    n.expect_log(mark, &["class stubborn timeout 1s: ending pid="]);
    n.expect_log(mark, &["outlived its 3 s grace: SIGKILL"]);
}

/// `msgfile`: the file's bytes reach the client exactly (no substitution, no added CRLF, any
/// bytes), and a changed file is served after the reload it causes.
#[test]
fn msgfile_bytes_reach_the_client_and_follow_the_file() {
    let s = Scratch::new("sb-msgfile");
    let banner = s.path("banner.txt");
    let first: &[u8] = b"hello 100% %(ip)s \xff\r\nno newline at the end";
    std::fs::write(&banner, first).expect("write banner");
    std::fs::set_permissions(&banner, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    // Relative to nanny.conf's directory, like rulefile.
    let n = Nanny::start(&s, Setup::new("all: ALL\n", "all: msgfile banner.txt\n"));
    let r = n.fetch_from(src(5));
    assert_eq!(r.data, first, "log:\n{}", n.log());

    let mark = n.mark();
    write_atomic(&banner, "second version\n", 0o644);
    let r = fetch_until(src(6), n.addr, RELOAD_TIMEOUT, |r| r.data != first);
    let r = r.unwrap_or_else(|| panic!("the new msgfile is never served; log:\n{}", n.log()));
    assert_eq!(r.text(), "second version\n");
    n.expect_log(mark, &["a msgfile changed: reloading the actions file"]);

    // A msgfile that disappears fails the reload; under use-old the last bytes are kept.
    let mark = n.mark();
    std::fs::remove_file(&banner).expect("remove banner");
    n.signal(nix::sys::signal::Signal::SIGHUP);
    n.expect_log(mark, &["error[H008]: msgfile", "banner.txt: cannot open"]);
    n.expect_log(mark, &["keeping the old actions"]);
    assert_eq!(n.fetch_from(src(7)).text(), "second version\n");
}

/// Every bad value is a -C error at the value's line and column, and the daemon refuses to
/// start naming the same place.
#[test]
fn bad_sandbox_values_are_errors_with_their_position() {
    let s = Scratch::new("sb-check");
    let actions = "a: run /bin/true : nice 20\n\
                   b: run /bin/true : rlimit stack 1m\n\
                   c: run /bin/true : umask 0999\n\
                   d: run /bin/true : user pn-no-such-user\n\
                   e: run /bin/true : user root:pn-no-such-group\n\
                   f: run /bin/true : chdir /nonexistent-portnanny-dir\n\
                   g: msgfile missing-banner.txt\n\
                   h: run /bin/true : timeout soon\n";
    let setup = Setup::new("a: ALL\n", actions);
    let conf = s.write("nanny.conf", &setup.conf_text(&s));
    s.write("nanny-rules", &setup.rules);
    let act = s.write("nanny-actions", actions);
    let act = act.display();
    let want = [
        format!("{act}:1:25: error[A022]: 'nice' takes a whole number from -20 to 19"),
        format!("{act}:2:27: error[A022]: unknown resource 'stack' for 'rlimit'"),
        format!("{act}:3:26: error[A022]: 'umask' takes an octal mode"),
        format!("{act}:4:25: error[H006]: user 'pn-no-such-user' does not exist on this host"),
        format!("{act}:5:25: error[H006]: group 'pn-no-such-group' does not exist on this host"),
        format!("{act}:6:26: error[H007]: chdir /nonexistent-portnanny-dir: No such file"),
        format!(
            "{act}:7:12: error[H008]: msgfile {}",
            s.path("missing-banner.txt").display()
        ),
        format!("{act}:8:28: error[A022]: 'timeout' takes a time"),
    ];
    let (code, _, err) = Nanny::run_once(&["-C", &conf.to_string_lossy()], RUN_TIMEOUT);
    assert_eq!(code, Some(1), "{err}");
    for w in &want {
        assert!(err.contains(w.as_str()), "-C: want {w}\n{err}");
    }
    // The daemon: the syntax errors stop it first; once they are fixed, the host ones do.
    let (code, _, err) = Nanny::run_once(&[&conf.to_string_lossy()], RUN_TIMEOUT);
    assert_eq!(code, Some(100), "{err}");
    for w in [&want[0], &want[1], &want[2], &want[7]] {
        assert!(err.contains(w.as_str()), "daemon: want {w}\n{err}");
    }
    let host_only: String = actions
        .lines()
        .filter(|l| ["d:", "e:", "f:", "g:"].iter().any(|p| l.starts_with(p)))
        .map(|l| format!("{l}\n"))
        .collect();
    s.write("nanny-actions", &host_only);
    let (code, _, err) = Nanny::run_once(&[&conf.to_string_lossy()], RUN_TIMEOUT);
    assert_eq!(code, Some(100), "{err}");
    for (i, w) in [&want[3], &want[4], &want[5], &want[6]].iter().enumerate() {
        let w = w.replace(&format!(":{}:", i + 4), &format!(":{}:", i + 1));
        assert!(err.contains(&w), "daemon: want {w}\n{err}");
    }
}

/// A reload whose actions name a user that does not exist fails like a syntax error: the
/// diagnostic with its position, then onfileerror (use-old) keeps the old actions.
#[test]
fn a_reload_naming_an_unknown_user_keeps_the_old_actions() {
    let s = Scratch::new("sb-reload");
    let n = Nanny::start(&s, Setup::new("all: ALL\n", "all: msg old%(nl)s\n"));
    assert_eq!(n.fetch_from(src(8)).text(), "old\n", "log:\n{}", n.log());
    let mark = n.mark();
    write_atomic(
        &n.actions,
        "all: run /bin/echo new : user pn-no-such-user\n",
        0o644,
    );
    let want = format!(
        "{}:1:31: error[H006]: user 'pn-no-such-user' does not exist on this host",
        n.actions.display()
    );
    n.wait_log_since(mark, RELOAD_TIMEOUT, |l| l.contains(&want))
        .unwrap_or_else(|| panic!("no {want}; log:\n{}", n.log()));
    n.expect_log(mark, &["keeping the old actions"]);
    assert_eq!(n.fetch_from(src(9)).text(), "old\n");
}

/// A daemon that is not root looks a class's user up but ignores it, as it does nanny.conf's
/// `user`, and says so at load; the service runs as the daemon's own user.
#[test]
fn without_root_a_class_user_is_ignored_with_a_warning() {
    let s = Scratch::new("sb-nonroot");
    let id = s.script("id.sh", "#!/bin/sh\nid -u\n");
    let n = Nanny::start(
        &s,
        Setup::new(
            "all: ALL\n",
            &format!("all: run {} : user root\n", id.display()),
        )
        .mode(Mode::NonRoot),
    );
    let uid = if is_root() {
        NOBODY_UID
    } else {
        nix::unistd::getuid().as_raw()
    };
    assert_eq!(
        n.fetch_from(src(10)).text(),
        format!("{uid}\n"),
        "log:\n{}",
        n.log()
    );
    n.expect_log(
        0,
        &["warning[H006]: not running as root: 'user root' is ignored"],
    );
}
