//! What the daemon's own log lines look like outside syslog, and what `-l` says when there is
//! no syslog socket (issue 9 item 14).
//!
//! Runs in the test process; starts the real `portnanny` (root on CI) and reads its stderr.
//! The rules need no lookup and the `-l` run stops before any connection, so no test causes a
//! DNS query (as root the daemons run in the harness's DNS sandbox or a private mount namespace
//! anyway). Only processes the test started are waited for or killed, by pid.

mod util;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

/// Whether `s` starts with `YYYY-MM-DDTHH:MM:SS.mmmZ ` (digits where the pattern has 9).
fn starts_with_timestamp(s: &str) -> bool {
    let pattern = "9999-99-99T99:99:99.999Z ";
    s.len() >= pattern.len()
        && s.bytes().zip(pattern.bytes()).all(|(c, p)| match p {
            b'9' => c.is_ascii_digit(),
            p => c == p,
        })
}

/// Issue 9 item 14: stderr lines carried no time at all.
#[test]
fn stderr_lines_start_with_a_utc_timestamp() {
    let s = Scratch::new("log-stamp");
    let n = Nanny::start(&s, Setup::new("a: ALL\n", "a: msg hi%(nl)s\n"));
    assert_eq!(
        n.fetch_from(std::net::Ipv4Addr::new(127, 0, 14, 1)).text(),
        "hi\n"
    );
    let log = n.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("portnanny[")).collect();
    assert!(!lines.is_empty(), "{log}");
    for l in &lines {
        assert!(starts_with_timestamp(l), "no timestamp: {l:?}");
        assert!(
            l[25..].starts_with("portnanny["),
            "the timestamp is a prefix: {l:?}"
        );
    }
}

/// Under systemd, stderr is the journal (JOURNAL_STREAM names it), which stamps lines itself.
#[test]
fn no_timestamp_when_stderr_is_the_journal() {
    let s = Scratch::new("log-journal");
    let err = s.write("nanny.stderr", "");
    let md = std::fs::metadata(&err).expect("stat the stderr file");
    let journal = format!("{}:{}", md.dev(), md.ino());
    let n = Nanny::start_group_leader_env(
        &s,
        Setup::new("a: ALL\n", "a: msg hi%(nl)s\n"),
        &[("JOURNAL_STREAM", &journal)],
    );
    let log = n.log();
    let first = log
        .lines()
        .find(|l| l.contains("portnanny["))
        .unwrap_or_else(|| panic!("no line: {log}"));
    assert!(first.starts_with("portnanny["), "{first:?}");

    // A JOURNAL_STREAM inherited by a daemon whose stderr went elsewhere does not count.
    let s2 = Scratch::new("log-notjournal");
    let n2 = Nanny::start_group_leader_env(
        &s2,
        Setup::new("a: ALL\n", "a: msg hi%(nl)s\n"),
        &[("JOURNAL_STREAM", &journal)],
    );
    let log2 = n2.log();
    let first2 = log2
        .lines()
        .find(|l| l.contains("portnanny["))
        .unwrap_or_else(|| panic!("no line: {log2}"));
    assert!(starts_with_timestamp(first2), "{first2:?}");
}

/// Issue 9 item 14: `-l` without a syslog socket exited 111 with the library's "Initialization
/// error: Io error: Connection refused", which names no socket.
#[test]
fn dash_l_without_dev_log_names_the_socket() {
    let s = Scratch::new("log-nodevlog");
    let setup = Setup::new("a: ALL\n", "a: msg hi%(nl)s\n");
    let conf = s.write("nanny.conf", &setup.conf_text(&s));
    s.write("nanny-rules", &setup.rules);
    s.write("nanny-actions", &setup.actions);
    let mut cmd = if is_root() {
        // A private /dev without a log socket (the host may have one).
        let hostdev = s.empty_dir("hostdev");
        let script = format!(
            "set -e\nmount --rbind /dev {hd}\nmount -t tmpfs -o mode=0755 pndev /dev\n\
             : > /dev/null\nmount --bind {hd}/null /dev/null\nexec \"$@\"\n",
            hd = hostdev.display()
        );
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(script)
            .arg("sh")
            .arg(BIN);
        c
    } else if std::path::Path::new("/dev/log").exists() {
        eprintln!("skipped: dash_l_without_dev_log_names_the_socket needs root (/dev/log exists)");
        return;
    } else {
        Command::new(BIN)
    };
    let errf = s.path("stderr");
    let mut child = cmd
        .arg("-l")
        .arg(&conf)
        .current_dir(&s.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&errf).expect("stderr file"))
        .spawn()
        .expect("spawn portnanny");
    let deadline = Instant::now() + IO_TIMEOUT;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&errf).unwrap_or_default();
    assert_eq!(status.and_then(|s| s.code()), Some(111), "{err}");
    eprintln!("-l without /dev/log: {err}");
    assert!(err.contains("/dev/log could not be reached"), "{err}");
    assert!(!err.contains("Initialization error"), "{err}");
}
