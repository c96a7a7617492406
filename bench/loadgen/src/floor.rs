//! Reference ("floor") servers: the least a server of each kind can do per connection, so the
//! benchmark can put portnanny's rates next to what no implementation of that design can beat
//! on the same machine in the same run.
//!
//! Each runs in its own portnanny-loadgen process started by bench/run.sh, listens on
//! 127.0.0.1:PORT only (backlog 1024, like tcpserver -b 1024 and portnanny), serves until it is
//! killed or its lifetime (default 1 h) ends, and never reads the client's bytes: it only
//! writes a fixed reply (or lets a spawned service do so). Accept errors that a busy server
//! meets (EINTR, ECONNABORTED, EMFILE/ENFILE/ENOBUFS/ENOMEM: after a 10 ms pause) do not end
//! it. The listener has 1 s SO_RCVTIMEO/SO_SNDTIMEO (accepted sockets inherit them), so the
//! accept loop checks the lifetime at least once a second and a write to a stalled client is
//! bounded.
//!
//! - `floor-inproc`: one thread, blocking accept → write reply → shutdown(Write) → close.
//!   DESIGN §8's "in-process accept-write-close" server: any server's ceiling.
//! - `floor-roundtrip`: as floor-inproc, but before replying it sends a 32-byte request over an
//!   AF_UNIX socketpair to a helper process (this binary re-executed as `floor-helper`) and
//!   waits (poll POLLIN, then read) for the 32-byte answer. The ceiling of any design in which
//!   another process decides about each connection, as portnanny's classifier does. At
//!   concurrency 1 it is strictly serial (accept, write, poll, read, send, shutdown, close);
//!   with requests in flight it also accepts further connections and sends their requests
//!   (at most 64 outstanding), because a serial loop would be beaten by any pipelined design
//!   at concurrency 8 and 64 and so would not be a ceiling there.
//! - `floor-spawn`: accept → vfork-style clone + execve(ARGV) with the socket as stdin and
//!   stdout → close the parent's copy; children reaped with waitpid(WNOHANG), one call per
//!   accept (blocking only at 1024 live children). The fork+exec+wait floor that portnanny's
//!   `run` is compared with.

use std::collections::VecDeque;
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::Opts;

/// Listen backlog: large enough that concurrency 64 never overflows it.
const BACKLOG: i32 = 1024;

/// How long accept blocks before the loop looks at the clock; also bounds each reply write.
const TICK: Duration = Duration::from_secs(1);

/// Pause after an accept or spawn failure caused by a resource shortage.
const PAUSE: Duration = Duration::from_millis(10);

/// Size of the request and the answer exchanged with `floor-helper` (a verdict-sized message).
pub const REQ_LEN: usize = 32;

/// Most live children of `floor-spawn` (tcpserver -c 1024 in the benchmark).
const MAX_CHILDREN: usize = 1024;

fn listen(port: u16) -> io::Result<Socket> {
    let l = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    l.set_reuse_address(true)?;
    l.bind(&SockAddr::from(SocketAddrV4::new(
        Ipv4Addr::LOCALHOST,
        port,
    )))?;
    l.listen(BACKLOG)?;
    l.set_read_timeout(Some(TICK))?;
    l.set_write_timeout(Some(TICK))?;
    Ok(l)
}

/// Counts failures so that only the first few are reported.
struct Errors {
    what: &'static str,
    seen: u64,
}

impl Errors {
    fn new(what: &'static str) -> Errors {
        Errors { what, seen: 0 }
    }
    fn note(&mut self, e: &io::Error) {
        self.seen += 1;
        if self.seen <= 5 {
            eprintln!("portnanny-loadgen {}: {e}", self.what);
        }
    }
}

/// One accept. `None` when there is nothing to serve now (timeout, a connection that went
/// away, an interrupted call, or a resource shortage after a pause).
fn accept(l: &Socket, errors: &mut Errors) -> Option<(Socket, SockAddr)> {
    match l.accept() {
        Ok(c) => Some(c),
        Err(e) => {
            match e.raw_os_error() {
                // The 1 s tick, a signal, or a client that left before we accepted it.
                Some(libc::EAGAIN | libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => {}
                // EMFILE/ENFILE/ENOBUFS/ENOMEM, or anything unexpected: the pending connection
                // stays queued; pausing keeps the loop from spinning until resources return.
                _ => {
                    errors.note(&e);
                    thread::sleep(PAUSE);
                }
            }
            None
        }
    }
}

/// Writes the whole reply (bounded by the inherited send timeout), then FIN, then close.
/// A client that went away is not an error of the server.
fn reply_and_close(c: Socket, reply: &[u8]) {
    let mut off = 0;
    // Each pass writes at least one byte or ends; EINTR passes are bounded by the count.
    for _ in 0..reply.len() + 8 {
        if off == reply.len() {
            break;
        }
        match c.send(&reply[off..]) {
            Ok(0) => break,
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = c.shutdown(std::net::Shutdown::Write);
    drop(c);
}

fn bind_failed(o: &Opts, e: io::Error) -> ExitCode {
    eprintln!("portnanny-loadgen {}: 127.0.0.1:{}: {e}", o.mode, o.port);
    ExitCode::FAILURE
}

pub fn inproc(o: &Opts) -> ExitCode {
    let l = match listen(o.port) {
        Ok(l) => l,
        Err(e) => return bind_failed(o, e),
    };
    let mut errors = Errors::new("floor-inproc accept");
    let deadline = Instant::now() + o.lifetime;
    while Instant::now() < deadline {
        if let Some((c, _)) = accept(&l, &mut errors) {
            reply_and_close(c, &o.reply);
        }
    }
    ExitCode::SUCCESS
}

/// Starts the helper: this executable again, as `floor-helper`, with its end of the pair as
/// stdin. It exits when our end closes (read returns 0) or its lifetime ends.
fn start_helper(o: &Opts) -> io::Result<UnixStream> {
    let (mine, theirs) = UnixStream::pair()?;
    Command::new("/proc/self/exe")
        .arg("floor-helper")
        .arg("--helper-wait")
        .arg(&o.helper_wait)
        .arg("--lifetime")
        .arg(format!("{}", o.lifetime.as_secs_f64()))
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .spawn()?;
    Ok(mine)
}

/// The request for one connection: the peer address and a sequence number, so that each
/// answer can be checked to be the helper's echo of this very request.
fn request(peer: &SockAddr, seq: u64) -> [u8; REQ_LEN] {
    let mut req = [0u8; REQ_LEN];
    if let Some(SocketAddr::V4(a)) = peer.as_socket() {
        req[..4].copy_from_slice(&a.ip().octets());
        req[4..6].copy_from_slice(&a.port().to_be_bytes());
    }
    req[8..16].copy_from_slice(&seq.to_be_bytes());
    req
}

/// Most connections waiting for their answer at once.
const MAX_PENDING: usize = 64;

/// Waits up to TICK for POLLIN on the helper and, if `listener` is given, on it too. Returns
/// (helper readable, listener readable).
fn poll2(helper: i32, listener: Option<i32>) -> io::Result<(bool, bool)> {
    let mut p = [
        libc::pollfd {
            fd: helper,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: listener.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let nfds = if listener.is_some() { 2 } else { 1 };
    // SAFETY: `p` holds `nfds` valid pollfds and lives across the call.
    let n = unsafe { libc::poll(p.as_mut_ptr(), nfds, TICK.as_millis() as libc::c_int) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok((false, false))
        } else {
            Err(e)
        };
    }
    Ok((p[0].revents != 0, p[1].revents != 0))
}

/// The loop of `floor-roundtrip`. With nothing in flight it sleeps in accept; with requests in
/// flight it polls the helper and the listener, so that at concurrency > 1 further connections
/// are accepted and their requests sent while earlier answers are on their way (as portnanny's
/// parent does), and answers that arrive together are read with one read.
fn serve_roundtrip(o: &Opts, l: &Socket, helper: &mut UnixStream) -> io::Result<()> {
    let mut errors = Errors::new("floor-roundtrip accept");
    let deadline = Instant::now() + o.lifetime;
    let mut seq = 0u64;
    let mut pending: VecDeque<(Socket, [u8; REQ_LEN])> = VecDeque::with_capacity(MAX_PENDING);
    let mut answers = [0u8; MAX_PENDING * REQ_LEN];
    let mut have = 0usize;
    let mut silent = 0u32;
    while Instant::now() < deadline {
        let (answer_ready, conn_ready) = if pending.is_empty() {
            (false, true)
        } else {
            let more = (pending.len() < MAX_PENDING).then(|| l.as_raw_fd());
            poll2(helper.as_raw_fd(), more)?
        };
        if !pending.is_empty() && !answer_ready && !conn_ready {
            silent += 1;
            if silent >= 10 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "helper silent 10 s",
                ));
            }
        }
        if answer_ready {
            silent = 0;
            // At most the answers still owed fit, so `have` stays below the buffer's size.
            let n = helper.read(&mut answers[have..pending.len() * REQ_LEN])?;
            if n == 0 {
                return Err(io::Error::other("helper closed its end"));
            }
            have += n;
            let done = have / REQ_LEN;
            for k in 0..done {
                let Some((c, req)) = pending.pop_front() else {
                    return Err(io::Error::other("helper answered more than asked"));
                };
                if answers[k * REQ_LEN..(k + 1) * REQ_LEN] != req {
                    return Err(io::Error::other("helper answered wrong bytes"));
                }
                reply_and_close(c, &o.reply);
            }
            answers.copy_within(done * REQ_LEN..have, 0);
            have -= done * REQ_LEN;
        }
        // The listener is blocking: with requests in flight accept is called only when poll
        // said a connection is waiting; otherwise it sleeps in accept (bounded by TICK).
        if conn_ready {
            if let Some((c, peer)) = accept(l, &mut errors) {
                seq += 1;
                let req = request(&peer, seq);
                helper.write_all(&req)?;
                pending.push_back((c, req));
            }
        }
    }
    Ok(())
}

pub fn roundtrip(o: &Opts) -> ExitCode {
    let l = match listen(o.port) {
        Ok(l) => l,
        Err(e) => return bind_failed(o, e),
    };
    let mut helper = match start_helper(o) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("portnanny-loadgen floor-roundtrip: starting the helper: {e}");
            return ExitCode::FAILURE;
        }
    };
    match serve_roundtrip(o, &l, &mut helper) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Without its helper this floor measures nothing: stop, loudly.
            eprintln!("portnanny-loadgen floor-roundtrip: helper: {e}");
            ExitCode::FAILURE
        }
    }
}

extern "C" {
    /// The process environment, passed to every spawned service as tcpserver does.
    static environ: *const *const libc::c_char;
}

/// Bytes of stack for the child between clone and execve (it calls signal, dup2 and execve).
const CHILD_STACK: usize = 64 * 1024;

/// What the child of a spawn needs, prepared by the parent before the clone.
struct ChildArgs {
    fd: libc::c_int,
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
}

/// The clone entry point. Runs in the parent's memory (CLONE_VM) while the parent is
/// suspended (CLONE_VFORK), so it only reads what the parent prepared and makes system calls.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildArgs that `Spawner::spawn` passed to clone; the parent is
    // suspended until execve or _exit, so it stays alive and unchanged. The calls only take
    // prepared values. The child has its own copy of the signal dispositions (no
    // CLONE_SIGHAND), so resetting SIGPIPE (ignored by the Rust runtime; ignored signals
    // survive exec) does not touch the parent's.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if libc::dup2(a.fd, 0) < 0 || libc::dup2(a.fd, 1) < 0 {
            libc::_exit(126);
        }
        libc::execve(a.path, a.argv, a.envp);
        libc::_exit(127)
    }
}

/// The service to spawn, prepared once: argv as C strings and a reusable child stack.
///
/// Spawning is vfork-style, `clone(CLONE_VM | CLONE_VFORK)`: no copy of the parent's page
/// tables, the parent resumes when the child has called execve. glibc's posix_spawn does the
/// same clone but also maps a fresh stack per call, checks the descriptor limit per file action
/// and resets all 64 signal dispositions in the child (~130 system calls): measurably slower
/// than portnanny's own spawn, so not a floor. This process installs no signal handlers of its
/// own, so unlike portnanny it need not block signals around the clone.
struct Spawner {
    // Kept alive because `argv_ptrs` points into them.
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    stack: Vec<u8>,
}

impl Spawner {
    fn new(argv: &[String]) -> io::Result<Spawner> {
        let cargv = argv
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(io::Error::other))
            .collect::<io::Result<Vec<_>>>()?;
        // SAFETY: access only reads the NUL-terminated path.
        if unsafe { libc::access(cargv[0].as_ptr(), libc::X_OK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut argv_ptrs: Vec<*const libc::c_char> = cargv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        Ok(Spawner {
            _argv: cargv,
            argv_ptrs,
            stack: vec![0u8; CHILD_STACK],
        })
    }

    /// Spawns the service with `fd` as its stdin and stdout.
    fn spawn(&mut self, fd: i32) -> io::Result<libc::pid_t> {
        let mut args = ChildArgs {
            fd,
            path: self.argv_ptrs[0],
            argv: self.argv_ptrs.as_ptr(),
            // SAFETY: reading the pointer value of the process's environment; this program
            // never modifies its environment.
            envp: unsafe { environ },
        };
        // The stack grows down: start at the 16-byte aligned top.
        let top = (self.stack.as_mut_ptr() as usize + self.stack.len()) & !15;
        // SAFETY: CLONE_VFORK suspends this (only) thread until the child has called execve or
        // _exit, so `args`, argv and the stack stay alive and unused by anyone else meanwhile,
        // and the stack may be reused by the next spawn. child_entry needs far less stack than
        // CHILD_STACK.
        let pid = unsafe {
            libc::clone(
                child_entry,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                &mut args as *mut ChildArgs as *mut libc::c_void,
            )
        };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(pid)
    }
}

/// Reaps at most one child; `block` waits for one. Keeps `live` in step (ECHILD: none left).
fn reap_one(live: &mut usize, block: bool) -> bool {
    let mut status = 0;
    let flags = if block { 0 } else { libc::WNOHANG };
    // SAFETY: `status` is a valid out-pointer for the call.
    let r = unsafe { libc::waitpid(-1, &mut status, flags) };
    if r > 0 {
        *live = live.saturating_sub(1);
        true
    } else {
        if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            *live = 0;
        }
        false
    }
}

/// The services' stdin and stdout are dup2'ed from the socket; if 0, 1 or 2 were closed an
/// accepted socket could land there, so they are opened on /dev/null first.
fn ensure_std_fds() -> io::Result<()> {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            let f = std::fs::File::open("/dev/null")?;
            // The lowest free descriptor is the closed standard one: keep it open for good.
            std::mem::forget(f);
        }
    }
    Ok(())
}

pub fn spawn(o: &Opts) -> ExitCode {
    if let Err(e) = ensure_std_fds() {
        eprintln!("portnanny-loadgen floor-spawn: /dev/null: {e}");
        return ExitCode::FAILURE;
    }
    let mut spawner = match Spawner::new(&o.argv) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("portnanny-loadgen floor-spawn: {}: {e}", o.argv[0]);
            return ExitCode::from(100);
        }
    };
    let l = match listen(o.port) {
        Ok(l) => l,
        Err(e) => return bind_failed(o, e),
    };
    let mut errors = Errors::new("floor-spawn accept");
    let mut spawn_errors = Errors::new("floor-spawn spawn");
    let deadline = Instant::now() + o.lifetime;
    let mut live = 0usize;
    while Instant::now() < deadline {
        if live >= MAX_CHILDREN {
            // Collect what has exited; if all are still running, wait for one.
            let mut n = 0;
            while n < MAX_CHILDREN && reap_one(&mut live, false) {
                n += 1;
            }
            if live >= MAX_CHILDREN {
                reap_one(&mut live, true);
                continue;
            }
        }
        let Some((c, _)) = accept(&l, &mut errors) else {
            // Idle (or an aborted connection): collect every child that has exited.
            let mut n = 0;
            while n < MAX_CHILDREN && reap_one(&mut live, false) {
                n += 1;
            }
            continue;
        };
        match spawner.spawn(c.as_raw_fd()) {
            Ok(_) => live += 1,
            Err(e) => {
                spawn_errors.note(&e);
                if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOMEM)) {
                    thread::sleep(PAUSE);
                }
            }
        }
        drop(c);
        // One reap per accept keeps pace with one child per accept.
        reap_one(&mut live, false);
    }
    ExitCode::SUCCESS
}
