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
//!   another process decides about each connection, as portnanny's classifier does.
//! - `floor-spawn`: accept → posix_spawn(ARGV) with the socket as stdin and stdout → close the
//!   parent's copy; children reaped with waitpid(WNOHANG), one call per accept (blocking only
//!   at 1024 live children). The fork+exec+wait floor that portnanny's `run` is compared with.

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
                Some(libc::EAGAIN | libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => {}
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    errors.note(&e);
                    thread::sleep(PAUSE);
                }
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

/// Waits up to TICK for `fd` to become readable; true if it did.
fn poll_in(fd: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd that lives across the call; nfds is 1.
    let n = unsafe { libc::poll(&mut p, 1, TICK.as_millis() as libc::c_int) };
    match n {
        n if n > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
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

/// One round trip to the helper: the request carries the peer address and a sequence number,
/// and the answer must be the same bytes (so the helper really read it).
fn ask(helper: &mut UnixStream, peer: &SockAddr, seq: u64) -> io::Result<()> {
    let mut req = [0u8; REQ_LEN];
    if let Some(SocketAddr::V4(a)) = peer.as_socket() {
        req[..4].copy_from_slice(&a.ip().octets());
        req[4..6].copy_from_slice(&a.port().to_be_bytes());
    }
    req[8..16].copy_from_slice(&seq.to_be_bytes());
    helper.write_all(&req)?;
    let mut waited = 0;
    while !poll_in(helper.as_raw_fd())? {
        waited += 1;
        if waited >= 10 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "helper silent 10 s",
            ));
        }
    }
    let mut ans = [0u8; REQ_LEN];
    helper.read_exact(&mut ans)?;
    if ans != req {
        return Err(io::Error::other("helper answered wrong bytes"));
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
    let mut errors = Errors::new("floor-roundtrip accept");
    let deadline = Instant::now() + o.lifetime;
    let mut seq = 0u64;
    while Instant::now() < deadline {
        if let Some((c, peer)) = accept(&l, &mut errors) {
            seq += 1;
            if let Err(e) = ask(&mut helper, &peer, seq) {
                // Without its helper this floor measures nothing: stop, loudly.
                eprintln!("portnanny-loadgen floor-roundtrip: helper: {e}");
                return ExitCode::FAILURE;
            }
            reply_and_close(c, &o.reply);
        }
    }
    ExitCode::SUCCESS
}

extern "C" {
    /// The process environment, passed to every spawned service as tcpserver does.
    static environ: *const *mut libc::c_char;
}

/// The service to spawn, prepared once: argv as C strings and a spawn attribute that resets
/// SIGPIPE to its default (the Rust runtime ignores it, and ignored signals survive exec).
struct Spawner {
    // Kept alive because `argv_ptrs` points into them.
    _argv: Vec<CString>,
    argv_ptrs: Vec<*mut libc::c_char>,
    attr: libc::posix_spawnattr_t,
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
        let mut argv_ptrs: Vec<*mut libc::c_char> =
            cargv.iter().map(|a| a.as_ptr() as *mut _).collect();
        argv_ptrs.push(std::ptr::null_mut());
        // SAFETY: the attribute and the signal set are initialised by their init calls before
        // any other use; all pointers are to locals that outlive the calls.
        let attr = unsafe {
            let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
            let rc = libc::posix_spawnattr_init(&mut attr);
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGPIPE);
            libc::posix_spawnattr_setsigdefault(&mut attr, &set);
            libc::posix_spawnattr_setflags(&mut attr, libc::POSIX_SPAWN_SETSIGDEF as libc::c_short);
            attr
        };
        Ok(Spawner {
            _argv: cargv,
            argv_ptrs,
            attr,
        })
    }

    /// Spawns the service with `fd` as its stdin and stdout.
    fn spawn(&self, fd: i32) -> io::Result<libc::pid_t> {
        // SAFETY: the file actions are initialised before use and destroyed after; argv is a
        // NULL-terminated array of pointers to live C strings; `environ` is the process's own
        // environment (this program never modifies it); `fd` is open for the whole call.
        unsafe {
            let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
            let rc = libc::posix_spawn_file_actions_init(&mut fa);
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            libc::posix_spawn_file_actions_adddup2(&mut fa, fd, 0);
            libc::posix_spawn_file_actions_adddup2(&mut fa, fd, 1);
            let mut pid: libc::pid_t = 0;
            let rc = libc::posix_spawn(
                &mut pid,
                self.argv_ptrs[0],
                &fa,
                &self.attr,
                self.argv_ptrs.as_ptr(),
                environ,
            );
            libc::posix_spawn_file_actions_destroy(&mut fa);
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(pid)
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe {
            libc::posix_spawnattr_destroy(&mut self.attr);
        }
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
    let spawner = match Spawner::new(&o.argv) {
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
