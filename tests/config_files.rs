//! Issue 9: what the configuration files may be, and when a changed file is taken.
//!
//! Runs in the test process; starts the real `portnanny` (or `portnanny -C`) on scratch files
//! and observes exit codes, stderr lines and what a loopback client receives: a file caught
//! mid-write or emptied is not loaded; only regular files are read (a FIFO or /dev/zero neither
//! hangs nor fills memory); Latin-1 in comments is accepted, elsewhere it is an error with
//! file:line:col; host problems (users) are found by -C with nanny.conf's position; a bad
//! reload logs every diagnostic, then says it keeps the old rules.

mod util;

use std::io::Write;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use util::*;

/// Longer than the daemon's settle interval (3 s) plus a check (1 s), with slack for a busy
/// machine.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// -C and a daemon that must refuse to start are bounded by this.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

fn src(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 51, 0, i)
}

fn check(conf: &std::path::Path) -> (Option<i32>, String) {
    let (code, _, err) = Nanny::run_once(&["-C", &conf.to_string_lossy()], RUN_TIMEOUT);
    (code, err)
}

/// Writes `text` into `path` in place (same inode, truncated first), as `cat > rules` does.
fn write_in_place(path: &std::path::Path, text: &[u8]) -> std::fs::File {
    let mut f = std::fs::File::create(path).expect("open in place");
    f.write_all(text).expect("write");
    f.flush().expect("flush");
    f
}

/// Item 1: `(printf 'x: ...\n'; sleep 2; cat rest) > rules`. The first half alone is a valid
/// policy under which no class matches (every connection closed); it must never be loaded.
#[test]
fn regression_9_a_slow_writer_is_not_loaded_half_written() {
    let s = Scratch::new("cf-slow");
    let n = Nanny::start(
        &s,
        Setup::new("a: ALL\n", "a: msg old%(nl)s\nc: msg new%(nl)s\nx: quiet\n"),
    );
    assert_eq!(n.fetch_from(src(1)).text(), "old\n", "log:\n{}", n.log());
    let mark = n.mark();
    // The writer keeps its own time, whatever the clients below take.
    let path = n.rules.clone();
    let writer = std::thread::spawn(move || {
        let mut f = write_in_place(&path, b"x: ip: 10.0.0.0/8\n");
        std::thread::sleep(Duration::from_secs(2));
        f.write_all(b"c: ALL\n").expect("write the rest");
    });
    let started = Instant::now();
    let mut replies = Vec::new();
    loop {
        let r = n.fetch_from(src(2)).text();
        replies.push(r.clone());
        if r == "new\n" || started.elapsed() >= RELOAD_TIMEOUT {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    writer.join().expect("writer");
    assert_eq!(
        replies.last().map(String::as_str),
        Some("new\n"),
        "log:\n{}",
        n.log()
    );
    assert!(
        replies.iter().all(|r| r == "old\n" || r == "new\n"),
        "the half-written file was never in use: {replies:?}; log:\n{}",
        n.log()
    );
    let reloads = n
        .log_since(mark)
        .lines()
        .filter(|l| l.contains("reloaded rules file"))
        .count();
    assert_eq!(reloads, 1, "one load, of the whole file; log:\n{}", n.log());
}

/// Item 1: `: > rules` under use-old is a warning and the old rules stay.
#[test]
fn regression_9_an_emptied_rules_file_keeps_the_old_rules_under_use_old() {
    let s = Scratch::new("cf-empty");
    let n = Nanny::start(
        &s,
        Setup::new("a: ALL\n", "a: msg old%(nl)s\n").conf("onfileerror use-old"),
    );
    assert_eq!(n.fetch_from(src(1)).text(), "old\n", "log:\n{}", n.log());
    let mark = n.mark();
    drop(write_in_place(&n.rules, b""));
    let why = n
        .wait_log_since(mark, RELOAD_TIMEOUT, |l| {
            l.contains("the file is now empty")
        })
        .unwrap_or_else(|| panic!("no warning about the empty file; log:\n{}", n.log()));
    assert!(why.contains("nanny-rules"), "{why}");
    n.expect_log(mark, &["keeping the old rules"]);
    for i in 0..3 {
        assert_eq!(
            n.fetch_from(src(4 + i)).text(),
            "old\n",
            "log:\n{}",
            n.log()
        );
    }
}

/// Item 1: under drop an empty file still drops.
#[test]
fn regression_9_an_emptied_rules_file_drops_under_drop() {
    let s = Scratch::new("cf-empty-drop");
    let n = Nanny::start(
        &s,
        Setup::new("a: ALL\n", "a: msg old%(nl)s\n").conf("onfileerror drop"),
    );
    assert_eq!(n.fetch_from(src(1)).text(), "old\n", "log:\n{}", n.log());
    let mark = n.mark();
    drop(write_in_place(&n.rules, b""));
    n.wait_log_since(mark, RELOAD_TIMEOUT, |l| {
        l.contains("dropped until it loads")
    })
    .unwrap_or_else(|| panic!("no drop; log:\n{}", n.log()));
    // Compiled off the classifier's dispatch thread: the old policy serves until it is in.
    let r = fetch_until(src(2), n.addr, START_TIMEOUT, |r| r.closed_silently());
    assert!(r.is_some(), "never dropped; log:\n{}", n.log());
}

/// Item 4: a FIFO or /dev/zero as the rules file: -C and the daemon answer at once with an
/// error naming the file, instead of hanging in open(2) or reading forever.
#[test]
fn regression_9_only_regular_files_are_read() {
    let s = Scratch::new("cf-fifo");
    let fifo = s.path("fifo-rules");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    s.write("nanny-actions", "a: msg x\n");
    for (rules, kind) in [
        (fifo.as_path(), "a FIFO"),
        (std::path::Path::new("/dev/zero"), "a character device"),
    ] {
        // The harness's nanny.conf (its own chroot directory and privsep user as root), with
        // the rules file replaced.
        let setup = Setup::new("", "a: msg x\n");
        let text = setup.conf_text(&s).replace(
            &format!("rulefile {}\n", s.path("nanny-rules").display()),
            &format!("rulefile {}\n", rules.display()),
        );
        assert!(text.contains(&format!("rulefile {}", rules.display())));
        let conf = s.write("nanny.conf", &text);
        let t = Instant::now();
        let (code, err) = check(&conf);
        assert_eq!(code, Some(1), "-C on {kind}: {err}");
        let want = format!("{}: error: not a regular file ({kind})", rules.display());
        assert!(err.contains(&want), "-C on {kind}: {err}");
        let (code, _, err) = Nanny::run_once(&[&conf.to_string_lossy()], RUN_TIMEOUT);
        assert_eq!(code, Some(100), "daemon on {kind}: {err}");
        assert!(
            err.contains("not a regular file"),
            "daemon on {kind}: {err}"
        );
        assert!(t.elapsed() < RUN_TIMEOUT, "did not hang");
    }
}

/// Item 4: a rules file replaced by a FIFO while running: the parent does not hang (it still
/// serves), the error is logged, the old rules stay.
#[test]
fn regression_9_a_fifo_on_reload_does_not_hang_the_parent() {
    let s = Scratch::new("cf-fifo-reload");
    let n = Nanny::start(&s, Setup::new("a: ALL\n", "a: msg old%(nl)s\n"));
    assert_eq!(n.fetch_from(src(1)).text(), "old\n", "log:\n{}", n.log());
    let mark = n.mark();
    let tmp = s.path("fifo-new");
    nix::unistd::mkfifo(&tmp, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    std::fs::rename(&tmp, &n.rules).expect("rename");
    n.wait_log_since(mark, RELOAD_TIMEOUT, |l| {
        l.contains("not a regular file (a FIFO)")
    })
    .unwrap_or_else(|| panic!("no error about the FIFO; log:\n{}", n.log()));
    assert_eq!(n.fetch_from(src(2)).text(), "old\n", "log:\n{}", n.log());
}

/// Item 5: Latin-1 in a comment is accepted; in a class name it is an error at file:line:col.
#[test]
fn regression_9_latin1_in_comments_only() {
    let s = Scratch::new("cf-latin1");
    let setup = Setup::new("a: ALL\n", "a: msg ok%(nl)s\n");
    let conf = s.write("nanny.conf", &setup.conf_text(&s));
    s.write("nanny-actions", &setup.actions);
    let rules = s.path("nanny-rules");
    std::fs::write(&rules, b"# r\xe8gles de caf\xe9\na: ALL\n").expect("write");
    let (code, err) = check(&conf);
    assert_eq!(code, Some(0), "{err}");
    let n = Nanny::start_conf(&s, &setup, conf.clone());
    assert_eq!(n.fetch_from(src(1)).text(), "ok\n", "log:\n{}", n.log());
    drop(n);
    std::fs::write(&rules, b"# ok\ncaf\xe9: ALL\n").expect("write");
    let (code, err) = check(&conf);
    assert_eq!(code, Some(1), "{err}");
    let want = format!(
        "{}:2:4: error[F002]: byte 0xe9 is not UTF-8",
        rules.display()
    );
    assert!(err.contains(&want), "{err}");
}

/// Item 3: users that do not exist, or a privsep user that is root, are -C errors at
/// nanny.conf's line and column; the daemon's refusal names the line too. A missing
/// nanny.conf is exit 1 from -C.
#[test]
fn regression_9_host_problems_found_by_check() {
    let s = Scratch::new("cf-host");
    let setup = Setup::new("a: ALL\n", "a: msg ok%(nl)s\n");
    s.write("nanny-rules", &setup.rules);
    s.write("nanny-actions", &setup.actions);
    let base = setup.conf_text(&s).replace("privsepuser nobody\n", "");
    let rows = [
        (
            "user pn-no-such-user\n",
            "H001",
            "user 'pn-no-such-user' does not exist on this host",
            6,
        ),
        (
            "privsepuser root\n",
            "H002",
            "privsepuser root is root; the workers must run unprivileged",
            13,
        ),
        (
            "privsepuser pn-no-such-user\n",
            "H002",
            "no privsep user: none of pn-no-such-user exists",
            13,
        ),
    ];
    for (line, code_name, message, col) in rows {
        let text = format!("{base}{line}");
        let lineno = text.lines().count();
        let conf = s.write("nanny.conf", &text);
        let (code, err) = check(&conf);
        assert_eq!(code, Some(1), "{line}: {err}");
        let want = format!(
            "{}:{lineno}:{col}: error[{code_name}]: {message}",
            conf.display()
        );
        assert!(err.contains(&want), "{line}: want {want}\n{err}");
        if line.starts_with("user") || is_root() {
            let (code, _, err) = Nanny::run_once(&[&conf.to_string_lossy()], RUN_TIMEOUT);
            assert_eq!(code, Some(100), "daemon with {line}: {err}");
            assert!(
                err.contains(&want),
                "daemon with {line}: want {want}\n{err}"
            );
        }
    }
    let (code, err) = check(&s.path("no-such-nanny.conf"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no-such-nanny.conf: error: cannot open"),
        "{err}"
    );
}

/// Item 19: a reload that keeps the old rules logs every diagnostic with file:line:col, then
/// the line that says the old rules are kept.
#[test]
fn regression_9_a_bad_reload_says_why_then_keeps_the_old_rules() {
    let s = Scratch::new("cf-why");
    let n = Nanny::start(&s, Setup::new("a: ALL\n", "a: msg old%(nl)s\n"));
    assert_eq!(n.fetch_from(src(1)).text(), "old\n", "log:\n{}", n.log());
    let mark = n.mark();
    write_atomic(&n.rules, "a: ALL\nb: nosuch: x\nc: ip: 300.1.1.1\n", 0o644);
    n.wait_log_since(mark, RELOAD_TIMEOUT, |l| {
        l.contains("keeping the old rules")
    })
    .unwrap_or_else(|| panic!("no keeping line; log:\n{}", n.log()));
    let log = n.log_since(mark);
    let lines: Vec<&str> = log.lines().collect();
    let name = n.rules.display().to_string();
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
    let l2 = at(&format!("{name}:2:")).unwrap_or_else(|| panic!("line 2; log:\n{log}"));
    let l3 = at(&format!("{name}:3:")).unwrap_or_else(|| panic!("line 3; log:\n{log}"));
    let keep = at("keeping the old rules").unwrap_or(0);
    assert!(l2 < keep && l3 < keep, "diagnostics first; log:\n{log}");
    assert_eq!(n.fetch_from(src(2)).text(), "old\n");
}

/// Item 2: names nothing can define and malformed templates are -C errors with
/// file:line:col, and the daemon refuses them the same way.
#[test]
fn regression_9_templates_checked_by_check_and_daemon() {
    let s = Scratch::new("cf-templates");
    let setup = Setup::new("a: ALL\n", "a: msg hello %(hostnmae)s\n");
    let n = Nanny::spawn(&s, &setup);
    let (code, err) = check(&n.conf);
    assert_eq!(code, Some(1), "{err}");
    let want = format!(
        "{}:1:16: error[A019]: '%(hostnmae)' in 'msg' of class 'a' is never defined",
        n.actions.display()
    );
    assert!(err.contains(&want), "{err}");
    drop(n);
    let (code, _, err) = Nanny::run_once(&[&s.path("nanny.conf").to_string_lossy()], RUN_TIMEOUT);
    assert_eq!(code, Some(100), "{err}");
    assert!(err.contains(&want), "{err}");
    s.write("nanny-actions", "a: msg %(ip)d\nb: log x %(ip\n");
    let (code, err) = check(&s.path("nanny.conf"));
    assert_eq!(code, Some(1), "{err}");
    for want in [":1:8: error[A018]", ":2:10: error[A018]"] {
        assert!(
            err.contains(&format!("{}{want}", s.path("nanny-actions").display())),
            "{err}"
        );
    }
}

/// Item 18: a 20,000-link `see` chain is checked in well under the time the cubic resolver
/// took (over a minute in release builds).
#[test]
fn regression_9_a_long_see_chain_checks_quickly() {
    let s = Scratch::new("cf-chain");
    let mut actions = String::new();
    for i in 0..20_000 {
        actions.push_str(&format!("c{i}: see c{}\n", i + 1));
    }
    actions.push_str("c20000: drop\n");
    let setup = Setup::new("c0: ALL\n", &actions);
    let conf = s.write("nanny.conf", &setup.conf_text(&s));
    s.write("nanny-rules", &setup.rules);
    s.write("nanny-actions", &setup.actions);
    let t = Instant::now();
    let (code, err) = check(&conf);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
}

/// Item 2: with `substitutions off` strings are sent as written, so a lone `%` is not an
/// error for -C nor for the daemon.
#[test]
fn regression_9_templates_unchecked_with_substitutions_off() {
    let s = Scratch::new("cf-subst-off");
    let setup = Setup::new("a: ALL\n", "a: msg 100% sure %(x)s%(nl)s\n").conf("substitutions off");
    let conf = s.write("nanny.conf", &setup.conf_text(&s));
    s.write("nanny-rules", &setup.rules);
    s.write("nanny-actions", &setup.actions);
    let (code, err) = check(&conf);
    assert_eq!(code, Some(0), "{err}");
    let n = Nanny::start_conf(&s, &setup, conf);
    assert_eq!(
        n.fetch_from(src(1)).text(),
        "100% sure %(x)s%(nl)s\r\n",
        "log:\n{}",
        n.log()
    );
}

/// Writes nanny.conf for `setup` with its `chrootdir` line replaced by `dir`, last: the file
/// and the line number of that line.
fn conf_with_chrootdir(
    s: &Scratch,
    setup: &Setup,
    dir: &std::path::Path,
) -> (std::path::PathBuf, usize) {
    let base = setup
        .conf_text(s)
        .lines()
        .filter(|l| !l.starts_with("chrootdir"))
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    let text = format!("{base}chrootdir {}\n", dir.display());
    (s.write("nanny.conf", &text), text.lines().count())
}

/// Item 3: as root, a chroot directory that fails the daemon's checks is a -C error at the
/// `chrootdir` line, and the daemon's refusal names it too.
#[test]
fn regression_9_unsafe_chrootdir_found_by_check_as_root() {
    if skip_unless_root("regression_9_unsafe_chrootdir_found_by_check_as_root") {
        return;
    }
    let s = Scratch::new("cf-chroot");
    let setup = Setup::new("a: ALL\n", "a: msg ok%(nl)s\n");
    s.write("nanny-rules", &setup.rules);
    s.write("nanny-actions", &setup.actions);
    let open = s.empty_dir("open");
    std::os::unix::fs::chown(&open, Some(0), Some(0)).expect("chown");
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let (conf, lineno) = conf_with_chrootdir(&s, &setup, &open);
    let (code, err) = check(&conf);
    assert_eq!(code, Some(1), "{err}");
    let want = format!(
        "{}:{lineno}:11: error[H003]: chroot directory {}",
        conf.display(),
        open.display()
    );
    assert!(err.contains(&want), "want {want}\n{err}");
    let (code, _, err) = Nanny::run_once(&[&conf.to_string_lossy()], RUN_TIMEOUT);
    assert_eq!(code, Some(100), "{err}");
    assert!(err.contains(&want), "want {want}\n{err}");
}

/// Items 5 and 19: a reload whose file has a byte that is not UTF-8 outside a comment logs
/// where it is (it used to say only "stream did not contain valid UTF-8"), then keeps the old
/// rules.
#[test]
fn regression_9_a_non_utf8_reload_names_the_position() {
    let s = Scratch::new("cf-utf8-reload");
    let n = Nanny::start(&s, Setup::new("a: ALL\n", "a: msg old%(nl)s\n"));
    assert_eq!(n.fetch_from(src(1)).text(), "old\n", "log:\n{}", n.log());
    let mark = n.mark();
    let tmp = s.path("rules.new");
    std::fs::write(&tmp, b"# caf\xe9 ok\nb\xe9: ALL\n").expect("write");
    std::fs::rename(&tmp, &n.rules).expect("rename");
    let want = format!(
        "{}:2:2: error[F002]: byte 0xe9 is not UTF-8",
        n.rules.display()
    );
    n.wait_log_since(mark, RELOAD_TIMEOUT, |l| l.contains(&want))
        .unwrap_or_else(|| panic!("no {want}; log:\n{}", n.log()));
    n.expect_log(mark, &["keeping the old rules"]);
    assert_eq!(n.fetch_from(src(2)).text(), "old\n");
}

/// Item 3: as root, a chroot directory that does not exist yet is a -C warning (H004) at the
/// `chrootdir` line, not an error; the daemon then creates it (root-owned, mode 0755, empty),
/// says so, and chroots the classifier into it.
#[test]
fn regression_9_missing_chrootdir_is_a_check_warning_and_created_at_start() {
    use std::os::unix::fs::MetadataExt;
    if skip_unless_root("regression_9_missing_chrootdir_is_a_check_warning_and_created_at_start") {
        return;
    }
    let s = Scratch::new("cf-chroot-missing");
    let setup = Setup::new("a: ALL\n", "a: msg ok%(nl)s\n");
    s.write("nanny-rules", &setup.rules);
    s.write("nanny-actions", &setup.actions);
    let dir = s.path("not-yet").join("empty");
    assert!(!dir.exists());
    let (conf, lineno) = conf_with_chrootdir(&s, &setup, &dir);
    let (code, err) = check(&conf);
    assert_eq!(code, Some(0), "a warning only: {err}");
    let want = format!(
        "{}:{lineno}:11: warning[H004]: chroot directory {} does not exist; portnanny creates \
         it at start (owned by root, mode 0755)",
        conf.display(),
        dir.display()
    );
    assert!(err.contains(&want), "want {want}\n{err}");
    assert!(!dir.exists(), "-C creates nothing");

    let n = Nanny::start_conf(&s, &setup, conf);
    assert_eq!(n.fetch_from(src(9)).text(), "ok\n", "log:\n{}", n.log());
    assert!(
        n.log().contains(&format!(
            "created the empty chroot directory {}",
            dir.display()
        )),
        "{}",
        n.log()
    );
    let meta = std::fs::metadata(&dir).expect("the daemon created it");
    assert!(meta.is_dir());
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(meta.mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::read_dir(&dir).expect("read it").count(),
        0,
        "empty"
    );
    let classifier = n
        .wait_worker("classifier", START_TIMEOUT)
        .expect("classifier");
    assert_eq!(
        std::fs::read_link(format!("/proc/{classifier}/root")).expect("its root"),
        dir,
        "the classifier is chrooted into it"
    );
}
