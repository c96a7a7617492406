//! Starting worker roles: re-exec of `/proc/self/exe` with a hidden role argument, and the
//! worker side of the hand-over (taking exactly the descriptors it was given).
//!
//! `spawn_worker` runs in the parent (root, single-threaded at that point, STYLE.md §2.7);
//! its `pre_exec` closure runs in the forked child between fork and exec and is restricted to
//! async-signal-safe system calls. `take_worker_fds` runs in the worker right after exec, still
//! with the parent's privileges, before anything else opens a file.
//!
//! Hand-over contract: the worker's argv is `[exe, ROLE_ARG, role, extra_args…]`; fds 0, 1
//! and 2 are /dev/null (a compromised worker must not write raw bytes to the operator's
//! terminal or journal past the parent's escaping and rate limit: everything it says goes over
//! its channel), fds 3.. are the given sockets in order, and nothing else is open. The environment
//! holds only `PATH` (a fixed value) and `RUST_BACKTRACE` (if the parent had it). The worker
//! is in a new session (no controlling terminal) with cwd "/", an empty signal mask and
//! default signal dispositions.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::unistd::Pid;

use crate::error::SpawnError;
use crate::proto::BuildId;
use crate::role::{Peer, Role};

/// The hidden argument that selects a worker role: `portnanny --privsep-role classifier …`.
pub const ROLE_ARG: &str = "--privsep-role";

/// Most descriptors a worker can be handed (fds 3..3+MAX_WORKER_FDS).
pub const MAX_WORKER_FDS: usize = 16;

/// The fixed PATH a worker gets; workers exec nothing, this only keeps libc helpers sane.
const WORKER_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A started worker. The parent reaps it (waitpid) and owns the other ends of its sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Worker {
    pub pid: Pid,
    pub role: Role,
}

/// Start `role` by fork + exec of `/proc/self/exe` (the very binary the parent runs, even if
/// the file on disk has since been replaced) with argv `[exe, ROLE_ARG, role, extra_args…]`.
/// `fds[i]` becomes the child's fd `3 + i`; every other descriptor except 0, 1, 2 is closed
/// at exec. Call before any thread exists in the parent.
pub fn spawn_worker(
    role: Role,
    fds: Vec<OwnedFd>,
    extra_args: &[String],
) -> Result<Worker, SpawnError> {
    let n = fds.len();
    if n > MAX_WORKER_FDS {
        return Err(SpawnError::new(
            "dup_fds",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many descriptors for a worker",
            ),
        ));
    }
    // ORDER: move every source above the target range 3..3+n first, so that the dup2 calls in
    // the child can never overwrite a source that has not been copied yet. The copies are
    // CLOEXEC, like every descriptor the parent has.
    let first_free = RawFd::try_from(3 + n).unwrap_or(RawFd::MAX);
    let mut high: Vec<OwnedFd> = Vec::with_capacity(n);
    for fd in &fds {
        let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(first_free))
            .map_err(|e| SpawnError::new("dup_fds", e.into()))?;
        // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
        high.push(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    drop(fds);
    let sources: Vec<RawFd> = high.iter().map(AsRawFd::as_raw_fd).collect();

    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(exe_name())
        .arg(ROLE_ARG)
        .arg(role.as_str())
        .args(extra_args)
        .env_clear()
        .env("PATH", WORKER_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(bt) = std::env::var_os("RUST_BACKTRACE") {
        cmd.env("RUST_BACKTRACE", bt);
    }
    // SAFETY: the closure runs in the forked child before exec. async-signal-safe: no alloc,
    // no locks — it reads the `sources` vector allocated above in the parent and makes raw
    // system calls only (setsid, dup2, sigprocmask, signal, close_range, fcntl, getrlimit).
    unsafe {
        cmd.pre_exec(move || child_setup(&sources));
    }
    // If std's own exec-status pipe happened to get a number in 3..3+n, the dup2 above
    // replaces it in the child: a failed exec then reads as success here, and the worker's
    // missing Hello (it exits at once) is what the parent notices. Nothing worse can follow.
    let child = cmd.spawn().map_err(|e| SpawnError::new("exec", e))?;
    // The child holds its own copies now; ours (and the originals) close here.
    drop(high);
    let pid = i32::try_from(child.id()).map_err(|_| {
        SpawnError::new(
            "exec",
            io::Error::new(io::ErrorKind::InvalidData, "pid out of range"),
        )
    })?;
    Ok(Worker {
        pid: Pid::from_raw(pid),
        role,
    })
}

fn exe_name() -> OsString {
    std::fs::read_link("/proc/self/exe")
        .map(|p| p.into_os_string())
        .unwrap_or_else(|_| OsString::from("portnanny"))
}

/// Between fork and exec. async-signal-safe: no alloc, no locks.
fn child_setup(sources: &[RawFd]) -> io::Result<()> {
    // SAFETY: plain system calls on integers and stack values; no Rust-level state is touched.
    unsafe {
        // A new session: no controlling terminal, no job-control signals from the parent's tty.
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut target: libc::c_int = 3;
        for &src in sources {
            // dup2 clears FD_CLOEXEC on the target: exactly these survive the exec.
            if libc::dup2(src, target) < 0 {
                return Err(io::Error::last_os_error());
            }
            target += 1;
        }
        // std leaves the signal mask as the parent had it; the worker starts clean.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        // Ignored signals stay ignored across exec; reset them (handled ones reset anyway).
        for sig in 1..libc::SIGRTMIN() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        cloexec_from(target);
    }
    Ok(())
}

/// Mark every descriptor from `first` up as close-on-exec (they should be already; this is the
/// belt to that brace). Marking rather than closing keeps std's exec-error pipe working.
/// async-signal-safe: no alloc, no locks.
unsafe fn cloexec_from(first: libc::c_int) {
    let Ok(first_u) = libc::c_uint::try_from(first) else {
        return;
    };
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    if unsafe { libc::close_range(first_u, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) }
        == 0
    {
        return;
    }
    // Kernels before 5.11: walk the descriptor table up to the soft limit (capped).
    let top = fd_limit();
    let mut fd = first;
    while fd < top {
        // SAFETY: F_SETFD on a descriptor that may not be open just fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        fd += 1;
    }
}

/// Highest descriptor number worth walking: RLIMIT_NOFILE's soft limit, capped at 2^20.
/// async-signal-safe (getrlimit is a plain system call).
fn fd_limit() -> libc::c_int {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0;
    let cap: libc::rlim_t = 1 << 20;
    let lim = if ok && rl.rlim_cur != libc::RLIM_INFINITY {
        rl.rlim_cur.min(cap)
    } else {
        cap
    };
    libc::c_int::try_from(lim).unwrap_or(libc::c_int::MAX)
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// In a freshly exec'd worker: check that fds 3..3+n are connected AF_UNIX stream sockets,
/// make sure 0, 1 and 2 are open (on /dev/null if not), close every other descriptor, and
/// return the sockets (CLOEXEC). Also records [`build_id`] while `/proc` is still visible.
/// May be called once per process.
pub fn take_worker_fds(n: usize) -> Result<Vec<OwnedFd>, SpawnError> {
    let unix = [Peer::Parent; MAX_WORKER_FDS];
    match unix.get(..n) {
        Some(peers) => take_worker_fds_as(peers),
        None => Err(SpawnError::new(
            "take_fds",
            io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"),
        )),
    }
}

/// [`take_worker_fds`] for a role row's `channels`: fd `3 + i` must be what `peers[i]` says,
/// an AF_UNIX stream socket for every peer but [`Peer::XmlrpcClients`], which must be a
/// listening TCP socket or `/dev/null` (xmlrpc off).
pub fn take_worker_fds_as(peers: &[Peer]) -> Result<Vec<OwnedFd>, SpawnError> {
    let n = peers.len();
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(SpawnError::new(
            "take_fds",
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "worker descriptors already taken",
            ),
        ));
    }
    if n > MAX_WORKER_FDS {
        return Err(SpawnError::new(
            "take_fds",
            io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"),
        ));
    }
    let _ = build_id();
    for fd in 0..3 {
        ensure_open(fd).map_err(|e| SpawnError::new("stdio", e))?;
    }
    let last = 3 + n as RawFd;
    for (fd, peer) in (3..last).zip(peers) {
        let checked = match peer {
            Peer::XmlrpcClients => check_tcp_listener_or_null(fd),
            Peer::Parent | Peer::Worker(_) | Peer::ControlClients => check_unix_stream(fd),
        };
        checked.map_err(|e| SpawnError::new("check_fd", e))?;
    }
    close_from(last).map_err(|e| SpawnError::new("close_fds", e))?;
    let mut out = Vec::with_capacity(n);
    for fd in 3..last {
        // SAFETY: the checks above proved fd is open; nothing else in this process refers to
        // it (it was inherited, and TAKEN guarantees we hand it out once).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map_err(|e| SpawnError::new("cloexec", e.into()))?;
        out.push(owned);
    }
    Ok(out)
}

fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any integer is harmless; EBADF means not open.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Open /dev/null on `fd` if it is closed, so a later open() cannot land on 0, 1 or 2.
fn ensure_open(fd: RawFd) -> io::Result<()> {
    if is_open(fd) {
        return Ok(());
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    if null.as_raw_fd() == fd {
        // The lowest free number was the one we wanted: keep it open for the life of the
        // process, without the CLOEXEC std opened it with (0, 1 and 2 never carry it).
        fcntl(&null, FcntlArg::F_SETFD(FdFlag::empty()))?;
        let _kept: RawFd = null.into_raw_fd();
        return Ok(());
    }
    // SAFETY: dup2 onto a descriptor number we just checked is not open; `null` (a higher
    // number) is closed when it goes out of scope.
    if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockopt_int(fd: BorrowedFd<'_>, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `val`, an int on our stack.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(val)
}

fn check_unix_stream(fd: RawFd) -> io::Result<()> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("fd {fd} is {what}"));
    if !is_open(fd) {
        return Err(bad("not open"));
    }
    // SAFETY: fd is open (checked above) and stays open while borrowed: nothing else in this
    // process touches inherited descriptors before take_worker_fds returns.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    let st = nix::sys::stat::fstat(b).map_err(io::Error::from)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(bad("not a socket"));
    }
    if sockopt_int(b, libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err(bad("not an AF_UNIX socket"));
    }
    if sockopt_int(b, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(bad("not a stream socket"));
    }
    Ok(())
}

/// A listening IPv4 or IPv6 TCP socket, or the character device /dev/null (1:3).
fn check_tcp_listener_or_null(fd: RawFd) -> io::Result<()> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("fd {fd} is {what}"));
    if !is_open(fd) {
        return Err(bad("not open"));
    }
    // SAFETY: fd is open (checked above) and stays open while borrowed, as in
    // check_unix_stream.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    let st = nix::sys::stat::fstat(b).map_err(io::Error::from)?;
    if st.st_mode & libc::S_IFMT == libc::S_IFCHR {
        if libc::major(st.st_rdev) == 1 && libc::minor(st.st_rdev) == 3 {
            return Ok(());
        }
        return Err(bad("a character device other than /dev/null"));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(bad("neither a socket nor /dev/null"));
    }
    if !matches!(
        sockopt_int(b, libc::SO_DOMAIN)?,
        libc::AF_INET | libc::AF_INET6
    ) {
        return Err(bad("not a TCP/IP socket"));
    }
    if sockopt_int(b, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(bad("not a stream socket"));
    }
    if sockopt_int(b, libc::SO_ACCEPTCONN)? != 1 {
        return Err(bad("not listening"));
    }
    Ok(())
}

/// Close every descriptor from `first` up.
fn close_from(first: RawFd) -> io::Result<()> {
    let first_u = libc::c_uint::try_from(first)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative fd"))?;
    // SAFETY: only descriptors at or above `first` are closed, none of which this process
    // has handed to an owner (take_worker_fds runs first thing in the worker).
    if unsafe { libc::close_range(first_u, libc::c_uint::MAX, 0) } == 0 {
        return Ok(());
    }
    for fd in first..fd_limit() {
        // SAFETY: as above; EBADF for numbers that are not open is expected.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Identifies the running binary: package version plus device, inode, size and mtime of
/// `/proc/self/exe`. A worker exec'd from a different file than the parent's reports a
/// different id and is killed (STYLE.md §2.4). Computed once and cached, so it still works
/// after a chroot hides /proc (take_worker_fds computes it first). If /proc/self/exe cannot be
/// read the id says "unknown": it then differs from any real id and the check fails closed.
pub fn build_id() -> BuildId {
    static ID: OnceLock<BuildId> = OnceLock::new();
    ID.get_or_init(|| {
        let version = env!("CARGO_PKG_VERSION");
        match std::fs::metadata("/proc/self/exe") {
            Ok(m) => BuildId(format!(
                "{version}-{:x}:{:x}-{}-{}.{:09}",
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec()
            )),
            Err(_) => BuildId(format!("{version}-unknown-{}", std::process::id())),
        }
    })
    .clone()
}

/// The role selected by argv, if the process was started as a worker: `Some((role, rest))`
/// when `args[1] == ROLE_ARG` and `args[2]` names a role; `rest` are the extra arguments.
pub fn worker_role(args: &[OsString]) -> Option<(Role, &[OsString])> {
    let flag = args.get(1)?;
    if flag.as_os_str() != OsStr::from_bytes(ROLE_ARG.as_bytes()) {
        return None;
    }
    let role = Role::from_arg(args.get(2)?.to_str()?)?;
    Some((role, args.get(3..).unwrap_or_default()))
}
