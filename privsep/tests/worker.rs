//! End-to-end tests of the worker hand-over (`spawn_worker` → `take_worker_fds`) and of the
//! privilege drop (`demote`, `forbid_new_processes`), run as real re-exec'd processes.
//!
//! This binary is its own worker: `spawn_worker` execs `/proc/self/exe`, i.e. this test
//! binary, with `--privsep-role ROLE MODE …`, and `main` dispatches on that (harness = false).
//! The worker reports what it sees over its fd 3 channel; the parent side also reads
//! `/proc/<pid>/status` and `/proc/<pid>/root` of the worker while it waits, as STYLE.md §2.9
//! asks. Root-only cases print "skipped: needs root" and pass when euid != 0.
//!
//! Every wait is bounded (RECV_TIMEOUT) and every worker is SIGKILLed and reaped by a guard.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{geteuid, getpid, getppid, Gid, Pid, Uid};
use privsep::spawn::worker_role;
use privsep::{
    build_id, demote, forbid_new_processes, spawn_worker, take_worker_fds, Channel, DropPlan, Role,
    Worker, ROLE_ARG,
};
use serde::{Deserialize, Serialize};

const RECV_TIMEOUT: Duration = Duration::from_secs(20);
const NOBODY: u32 = 65534;

/// What a worker tells the test.
#[derive(Debug, Serialize, Deserialize)]
enum Report {
    Inspect {
        argv: Vec<String>,
        env: Vec<(String, String)>,
        fds_before: Vec<(i32, String)>,
        fds_after: Vec<(i32, String)>,
        pid: i32,
        sid: i32,
        cwd: String,
        sig_blocked: String,
        sig_ignored: String,
        build: String,
    },
    TakeFailed {
        step: String,
        text: String,
    },
    Dropped {
        /// `Err((step, text))` if demote failed.
        result: Result<(), (String, String)>,
        /// Observations after the drop: name → value.
        probes: BTreeMap<String, String>,
    },
}

/// What the test tells a worker.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Cmd {
    Ping(u32),
    Pong(u32),
    Done,
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if let Some((role, rest)) = worker_role(&args) {
        let rest: Vec<String> = rest
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return worker_main(role, &rest);
    }
    let filters: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tests: [(&str, fn()); 7] = [
        (
            "spawn_hands_over_exactly_the_given_fds",
            spawn_hands_over_exactly_the_given_fds,
        ),
        (
            "take_worker_fds_refuses_a_pipe",
            take_worker_fds_refuses_a_pipe,
        ),
        ("root_demote_classifier", root_demote_classifier),
        (
            "root_demote_resolver_without_chroot",
            root_demote_resolver_without_chroot,
        ),
        ("root_demote_refusals", root_demote_refusals),
        (
            "root_demote_keeps_exactly_its_capability",
            root_demote_keeps_exactly_its_capability,
        ),
        ("unprivileged_demote", unprivileged_demote),
    ];
    let mut failed = 0;
    let mut ran = 0;
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" },
        ran - failed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------- worker side

fn worker_main(role: Role, rest: &[String]) -> ExitCode {
    // First thing, as a real role main does: the parent that started us.
    let parent = getppid();
    let mode = rest.first().map(String::as_str).unwrap_or("");
    match mode {
        "inspect" => worker_inspect(),
        "take2" => worker_take_expect_error(),
        "drop" => worker_drop(role, parent, rest.get(1..).unwrap_or_default()),
        _ => {
            eprintln!("worker: unknown mode {mode:?}");
            ExitCode::from(100)
        }
    }
}

fn list_fds() -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let dir = std::fs::read_dir("/proc/self/fd").unwrap();
    for entry in dir.flatten() {
        let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap();
        match std::fs::read_link(entry.path()) {
            // The directory being listed is itself an open fd; leave it out.
            Ok(t) if t.to_string_lossy().starts_with("/proc/") && t.ends_with("fd") => {}
            Ok(t) => out.push((fd, t.to_string_lossy().into_owned())),
            Err(_) => {}
        }
    }
    out.sort();
    out
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn worker_inspect() -> ExitCode {
    let fds_before = list_fds();
    let fds = take_worker_fds(2).unwrap();
    let fds_after = list_fds();
    let mut it = fds.into_iter();
    let mut parent: Channel<Report, Cmd> = Channel::from_fd(it.next().unwrap());
    let mut second: Channel<Cmd, Cmd> = Channel::from_fd(it.next().unwrap());
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let report = Report::Inspect {
        argv: std::env::args().collect(),
        env: std::env::vars().collect(),
        fds_before,
        fds_after,
        pid: getpid().as_raw(),
        sid: nix::unistd::getsid(None).unwrap().as_raw(),
        cwd: std::env::current_dir()
            .unwrap()
            .to_string_lossy()
            .into_owned(),
        sig_blocked: status_field(&status, "SigBlk"),
        sig_ignored: status_field(&status, "SigIgn"),
        build: build_id().0,
    };
    parent.send(&report).unwrap();
    // fd 4 is the second socket: answer a ping on it.
    match second.recv().unwrap() {
        Cmd::Ping(n) => second.send(&Cmd::Pong(n + 1)).unwrap(),
        other => panic!("unexpected {other:?}"),
    }
    let _ = parent.recv();
    ExitCode::SUCCESS
}

fn worker_take_expect_error() -> ExitCode {
    match take_worker_fds(2) {
        Ok(_) => ExitCode::from(3),
        Err(e) => {
            // fd 3 is still a good socket even though take refused: report through it.
            use std::os::fd::FromRawFd;
            // SAFETY: fd 3 was checked to be an AF_UNIX socket before fd 4 was refused, and
            // take_worker_fds handed out nothing, so nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(3) };
            let mut ch: Channel<Report, Cmd> = Channel::from_fd(fd);
            ch.send(&Report::TakeFailed {
                step: e.step.to_owned(),
                text: e.to_string(),
            })
            .unwrap();
            ExitCode::SUCCESS
        }
    }
}

/// rest: UID GID CHROOT|- PARENT(ppid|wrong) NOFILE|- FSIZE(0|1) NPROC(0|1) PRE(root|unpriv)
fn worker_drop(role: Role, real_parent: Pid, rest: &[String]) -> ExitCode {
    let arg = |i: usize| rest.get(i).map(String::as_str).unwrap_or("");
    let fds = take_worker_fds(1).unwrap();
    let mut ch: Channel<Report, Cmd> = Channel::from_fd(fds.into_iter().next().unwrap());
    if arg(7) == "unpriv" && geteuid().is_root() {
        // Simulate a daemon started by an ordinary user: become nobody the plain way first.
        let g = Gid::from_raw(NOBODY);
        nix::unistd::setgroups(&[g]).unwrap();
        nix::unistd::setresgid(g, g, g).unwrap();
        let u = Uid::from_raw(NOBODY);
        nix::unistd::setresuid(u, u, u).unwrap();
    }
    let mut plan = DropPlan::new(
        Uid::from_raw(arg(0).parse().unwrap()),
        Gid::from_raw(arg(1).parse().unwrap()),
        if arg(3) == "wrong" {
            Pid::from_raw(1)
        } else {
            real_parent
        },
    );
    if arg(2) != "-" {
        plan.chroot = Some(PathBuf::from(arg(2)));
    }
    if arg(4) != "-" {
        plan.nofile = Some(arg(4).parse().unwrap());
    }
    plan.fsize_zero = arg(5) == "1";
    if arg(8) == "net_raw" {
        // A throwaway role's row: keeps only CAP_NET_RAW (as a raw-socket worker would).
        let row = privsep::Profile {
            role,
            channels: &[privsep::Peer::Parent],
            chroot: false,
            nofile: 32,
            fsize_zero: true,
            no_processes: privsep::NoProcesses::Seccomp,
            keep_caps: &[caps::Capability::CAP_NET_RAW],
            restart_with: &[],
        };
        plan = DropPlan::for_profile(&row, plan.uid, plan.gid, None, plan.parent);
    }
    let mut result = demote(&plan).map_err(|e| (e.step.to_owned(), e.to_string()));
    let mut probes = BTreeMap::new();
    if result.is_ok() {
        probes.insert(
            "setuid0".to_owned(),
            format!("{:?}", nix::unistd::setuid(Uid::from_raw(0))),
        );
        probes.insert(
            "etc_passwd".to_owned(),
            format!(
                "{:?}",
                std::fs::metadata("/etc/passwd")
                    .map(|_| ())
                    .map_err(|e| e.kind())
            ),
        );
        probes.insert("ppid".to_owned(), getppid().to_string());
        // SAFETY: socket(2) with constant arguments; the descriptor is closed right away.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
        probes.insert(
            "raw_socket".to_owned(),
            if raw >= 0 {
                // SAFETY: `raw` is the descriptor socket(2) just returned and nothing else owns.
                unsafe { libc::close(raw) };
                "ok".to_owned()
            } else {
                format!("{}", std::io::Error::last_os_error())
            },
        );
        probes.insert(
            "root".to_owned(),
            format!(
                "{:?}",
                std::fs::read_link("/proc/self/root").map_err(|e| e.kind())
            ),
        );
        if arg(6) == "1" {
            if let Err(e) = forbid_new_processes() {
                result = Err((e.step.to_owned(), e.to_string()));
            }
            let spawned = std::thread::Builder::new()
                .spawn(|| ())
                .map(|h| h.join().is_ok());
            probes.insert(
                "thread_after_nproc".to_owned(),
                format!("{:?}", spawned.map_err(|e| e.kind())),
            );
        }
    }
    ch.send(&Report::Dropped { result, probes }).unwrap();
    // Wait for the test to finish reading /proc/<pid>/*; EOF also ends us.
    let _ = ch.recv();
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------- parent side

/// Kills and reaps the worker when the test ends, whatever happened.
struct Reap(Pid);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGKILL);
        let _ = waitpid(self.0, None);
    }
}

fn recv_within<Out: Serialize, In: serde::de::DeserializeOwned>(ch: &mut Channel<Out, In>) -> In {
    ch.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        if let Some(m) = ch.try_recv().unwrap() {
            ch.set_nonblocking(false).unwrap();
            return m;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "worker did not answer within {RECV_TIMEOUT:?}"
        );
        let ms = u16::try_from(left.as_millis().min(10_000)).unwrap();
        let mut fds = [PollFd::new(ch.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }
}

fn wait_exit(w: &Worker) -> WaitStatus {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        match waitpid(w.pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)).unwrap() {
            WaitStatus::StillAlive => {
                assert!(Instant::now() < deadline, "worker did not exit");
                std::thread::sleep(Duration::from_millis(20));
            }
            s => return s,
        }
    }
}

fn spawn(role: Role, fds: Vec<OwnedFd>, args: &[&str]) -> (Worker, Reap) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let w = spawn_worker(role, fds, &args).unwrap();
    assert_eq!(w.role, role);
    (w, Reap(w.pid))
}

fn spawn_hands_over_exactly_the_given_fds() {
    let (mine, theirs) = UnixStream::pair().unwrap();
    let (mine2, theirs2) = UnixStream::pair().unwrap();
    // A descriptor without CLOEXEC in the parent must still not reach the worker.
    let leaky = std::fs::File::open("/dev/zero").unwrap();
    nix::fcntl::fcntl(
        &leaky,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    // A blocked signal must not stay blocked in the worker.
    let mut usr2 = SigSet::empty();
    usr2.add(Signal::SIGUSR2);
    usr2.thread_block().unwrap();
    let (w, _reap) = spawn(
        Role::Resolver,
        vec![theirs.into(), theirs2.into()],
        &["inspect"],
    );
    usr2.thread_unblock().unwrap();
    drop(leaky);
    let mut ch: Channel<Cmd, Report> = Channel::from_fd(mine.into());
    let Report::Inspect {
        argv,
        env,
        fds_before,
        fds_after,
        pid,
        sid,
        cwd,
        sig_blocked,
        sig_ignored: _,
        build,
    } = recv_within(&mut ch)
    else {
        panic!("wrong report")
    };
    let exe = std::env::current_exe().unwrap();
    assert_eq!(
        argv,
        vec![
            exe.to_string_lossy().into_owned(),
            ROLE_ARG.to_owned(),
            "resolver".to_owned(),
            "inspect".to_owned()
        ]
    );
    for (k, v) in &env {
        match k.as_str() {
            "PATH" => assert_eq!(v, "/usr/sbin:/usr/bin:/sbin:/bin"),
            "RUST_BACKTRACE" => assert_eq!(Some(v.clone()), std::env::var("RUST_BACKTRACE").ok()),
            other => panic!("unexpected environment variable {other}"),
        }
    }
    let nums: Vec<i32> = fds_before.iter().map(|f| f.0).collect();
    assert_eq!(nums, vec![0, 1, 2, 3, 4], "fds at exec: {fds_before:?}");
    // 0, 1 and 2 are /dev/null: a worker writes nothing to the parent's terminal or journal.
    for (fd, target) in fds_before.iter().take(3) {
        assert_eq!(target, "/dev/null", "fd {fd}");
    }
    assert!(fds_before[3].1.starts_with("socket:") && fds_before[4].1.starts_with("socket:"));
    assert_eq!(fds_after, fds_before);
    assert_eq!(pid, w.pid.as_raw());
    assert_eq!(sid, pid, "worker is not a session leader");
    assert_eq!(cwd, "/");
    assert_eq!(sig_blocked, "0000000000000000");
    assert_eq!(build, build_id().0, "same binary, same build id");
    // The second socket is the worker's fd 4.
    let mut second: Channel<Cmd, Cmd> = Channel::from_fd(mine2.into());
    second.send(&Cmd::Ping(41)).unwrap();
    assert_eq!(recv_within(&mut second), Cmd::Pong(42));
    ch.send(&Cmd::Done).unwrap();
    assert_eq!(wait_exit(&w), WaitStatus::Exited(w.pid, 0));
}

fn take_worker_fds_refuses_a_pipe() {
    let (mine, theirs) = UnixStream::pair().unwrap();
    let (_pipe_r, pipe_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let (w, _reap) = spawn(Role::Classifier, vec![theirs.into(), pipe_w], &["take2"]);
    let mut ch: Channel<Cmd, Report> = Channel::from_fd(mine.into());
    match recv_within(&mut ch) {
        Report::TakeFailed { step, text } => {
            assert_eq!(step, "check_fd");
            assert!(text.contains("fd 4 is not a socket"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(wait_exit(&w), WaitStatus::Exited(w.pid, 0));
}

fn needs_root() -> bool {
    if geteuid().is_root() {
        true
    } else {
        println!("skipped: needs root");
        false
    }
}

/// An empty chroot dir under a root-owned, non-writable base (not under /tmp, nor under the
/// checkout, which may itself be under /tmp: sticky world-writable ancestors are refused, as
/// sshd refuses them).
fn chroot_dir(tag: &str) -> PathBuf {
    let base = Path::new("/run/portnanny-tests");
    std::fs::create_dir_all(base).unwrap();
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = base.join(format!("chroot-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn proc_status(pid: Pid) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
}

fn proc_limit(pid: Pid, name: &str) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
    line[name.len()..]
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn assert_dropped_status(pid: Pid) {
    let st = proc_status(pid);
    let nobody = format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}");
    assert_eq!(status_field(&st, "Uid"), nobody, "Uid");
    assert_eq!(status_field(&st, "Gid"), nobody, "Gid");
    assert_eq!(status_field(&st, "Groups"), NOBODY.to_string(), "Groups");
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&st, key), "0000000000000000", "{key}");
    }
    assert_eq!(status_field(&st, "NoNewPrivs"), "1", "NoNewPrivs");
}

/// A worker that ran `demote`: handle, reaper, channel, demote's result and the probes.
type DropRun = (
    Worker,
    Reap,
    Channel<Cmd, Report>,
    Result<(), (String, String)>,
    BTreeMap<String, String>,
);

fn drop_worker(role: Role, args: &[&str]) -> DropRun {
    let (mine, theirs) = UnixStream::pair().unwrap();
    let mut full = vec!["drop"];
    full.extend_from_slice(args);
    let (w, reap) = spawn(role, vec![theirs.into()], &full);
    let mut ch: Channel<Cmd, Report> = Channel::from_fd(mine.into());
    match recv_within(&mut ch) {
        Report::Dropped { result, probes } => (w, reap, ch, result, probes),
        other => panic!("{other:?}"),
    }
}

fn root_demote_classifier() {
    if !needs_root() {
        return;
    }
    let dir = chroot_dir("classifier");
    let nobody = NOBODY.to_string();
    let (w, _reap, mut ch, result, probes) = drop_worker(
        Role::Classifier,
        &[
            &nobody,
            &nobody,
            dir.to_str().unwrap(),
            "ppid",
            "32",
            "1",
            "1",
            "root",
        ],
    );
    assert_eq!(result, Ok(()));
    assert_dropped_status(w.pid);
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/root", w.pid)).unwrap(),
        dir
    );
    assert_eq!(proc_limit(w.pid, "Max open files"), "32 32");
    assert_eq!(proc_limit(w.pid, "Max file size"), "0 0");
    assert_eq!(proc_limit(w.pid, "Max processes"), "0 0");
    assert_eq!(proc_limit(w.pid, "Max core file size"), "0 0");
    assert_eq!(probes["setuid0"], "Err(EPERM)");
    assert_eq!(
        probes["etc_passwd"], "Err(NotFound)",
        "/etc visible inside the chroot"
    );
    assert_eq!(probes["ppid"], getpid().to_string());
    assert!(
        probes["thread_after_nproc"].starts_with("Err("),
        "{probes:?}"
    );
    ch.send(&Cmd::Done).unwrap();
    assert_eq!(wait_exit(&w), WaitStatus::Exited(w.pid, 0));
    std::fs::remove_dir(&dir).unwrap();
}

fn root_demote_resolver_without_chroot() {
    if !needs_root() {
        return;
    }
    let nobody = NOBODY.to_string();
    let (w, _reap, mut ch, result, probes) = drop_worker(
        Role::Resolver,
        &[&nobody, &nobody, "-", "ppid", "-", "0", "0", "root"],
    );
    assert_eq!(result, Ok(()));
    assert_dropped_status(w.pid);
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/root", w.pid)).unwrap(),
        Path::new("/")
    );
    // The resolver keeps /etc (the system resolver needs it) and may create threads.
    assert_eq!(probes["etc_passwd"], "Ok(())");
    assert!(!probes.contains_key("thread_after_nproc"));
    assert_ne!(proc_limit(w.pid, "Max processes"), "0 0");
    ch.send(&Cmd::Done).unwrap();
    assert_eq!(wait_exit(&w), WaitStatus::Exited(w.pid, 0));
}

/// A role whose row keeps CAP_NET_RAW (and nothing else): /proc shows that one bit in the
/// effective, permitted and bounding sets, nothing inheritable or ambient, unprivileged ids
/// and NoNewPrivs; the worker can open a raw socket. The classifier's row (no capability)
/// cannot: the same probe fails with EPERM.
fn root_demote_keeps_exactly_its_capability() {
    if !needs_root() {
        return;
    }
    let nobody = NOBODY.to_string();
    let (w, _reap, mut ch, result, probes) = drop_worker(
        Role::Resolver,
        &[
            &nobody, &nobody, "-", "ppid", "-", "0", "0", "root", "net_raw",
        ],
    );
    assert_eq!(result, Ok(()));
    let st = proc_status(w.pid);
    let net_raw = format!("{:016x}", 1u64 << 13);
    for key in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(status_field(&st, key), net_raw, "{key}");
    }
    for key in ["CapInh", "CapAmb"] {
        assert_eq!(status_field(&st, key), "0000000000000000", "{key}");
    }
    let ids = format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}");
    assert_eq!(status_field(&st, "Uid"), ids, "Uid");
    assert_eq!(status_field(&st, "Gid"), ids, "Gid");
    assert_eq!(status_field(&st, "NoNewPrivs"), "1");
    assert_eq!(probes["setuid0"], "Err(EPERM)");
    assert_eq!(probes["raw_socket"], "ok", "{probes:?}");
    ch.send(&Cmd::Done).unwrap();
    assert_eq!(wait_exit(&w), WaitStatus::Exited(w.pid, 0));

    // The same worker under a row that keeps nothing.
    let (w, _reap, mut ch, result, probes) = drop_worker(
        Role::Resolver,
        &[&nobody, &nobody, "-", "ppid", "-", "0", "0", "root"],
    );
    assert_eq!(result, Ok(()));
    assert_dropped_status(w.pid);
    assert!(
        probes["raw_socket"].contains("Operation not permitted"),
        "{probes:?}"
    );
    ch.send(&Cmd::Done).unwrap();
    assert_eq!(wait_exit(&w), WaitStatus::Exited(w.pid, 0));
}

/// Each row is a plan the drop must refuse, with the step it must name.
fn root_demote_refusals() {
    if !needs_root() {
        return;
    }
    let full = chroot_dir("full");
    std::fs::write(full.join("junk"), b"x").unwrap();
    let open = chroot_dir("open");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let nobody = NOBODY.to_string();
    let rows: [(&str, [&str; 8], &str); 5] = [
        (
            "uid 0",
            ["0", &nobody, "-", "ppid", "-", "0", "0", "root"],
            "plan",
        ),
        (
            "gid 0",
            [&nobody, "0", "-", "ppid", "-", "0", "0", "root"],
            "plan",
        ),
        (
            "wrong parent",
            [&nobody, &nobody, "-", "wrong", "-", "0", "0", "root"],
            "verify_parent",
        ),
        (
            "chroot not empty",
            [
                &nobody,
                &nobody,
                full.to_str().unwrap(),
                "ppid",
                "-",
                "0",
                "0",
                "root",
            ],
            "chroot_dir",
        ),
        (
            "chroot world-writable",
            [
                &nobody,
                &nobody,
                open.to_str().unwrap(),
                "ppid",
                "-",
                "0",
                "0",
                "root",
            ],
            "chroot_dir",
        ),
    ];
    for (label, args, step) in rows {
        let (w, _reap, mut ch, result, _) = drop_worker(Role::Classifier, &args);
        match result {
            Err((s, text)) => assert_eq!(s, step, "{label}: {text}"),
            Ok(()) => panic!("{label}: demote succeeded"),
        }
        let _ = ch.send(&Cmd::Done);
        assert_eq!(wait_exit(&w), WaitStatus::Exited(w.pid, 0), "{label}");
    }
    std::fs::remove_dir_all(&full).unwrap();
    std::fs::remove_dir(&open).unwrap();
}

/// The development mode: a worker that is not root skips chroot and ids but still ends with no
/// capabilities, NO_NEW_PRIVS and its rlimits. As root the worker first becomes nobody the
/// plain way (leaving its bounding set full, which an ordinary user's process also has).
fn unprivileged_demote() {
    // Never created: without root the chroot step is skipped, so the path is not even looked at.
    let dir = Path::new("/nonexistent/portnanny-test-chroot");
    let (w, _reap, mut ch, result, probes) = drop_worker(
        Role::Classifier,
        &[
            "12345",
            "12345",
            dir.to_str().unwrap(),
            "ppid",
            "16",
            "1",
            "1",
            "unpriv",
        ],
    );
    assert_eq!(result, Ok(()));
    let st = proc_status(w.pid);
    for key in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(status_field(&st, key), "0000000000000000", "{key}");
    }
    assert_eq!(status_field(&st, "NoNewPrivs"), "1");
    assert!(!status_field(&st, "Uid").split(' ').any(|u| u == "0"));
    // No chroot without root; the plan's uid is not applied.
    // (Read by the worker itself: a non-dumpable process's /proc/<pid>/root is closed to an
    // unprivileged parent.)
    assert_eq!(probes["root"], "Ok(\"/\")");
    assert!(!status_field(&st, "Uid").contains("12345"));
    assert_eq!(proc_limit(w.pid, "Max open files"), "16 16");
    assert_eq!(proc_limit(w.pid, "Max file size"), "0 0");
    assert_eq!(probes["setuid0"], "Err(EPERM)");
    assert!(
        probes["thread_after_nproc"].starts_with("Err("),
        "{probes:?}"
    );
    ch.send(&Cmd::Done).unwrap();
    assert_eq!(wait_exit(&w), WaitStatus::Exited(w.pid, 0));
}
