//! Hidden modes that run as child processes of something else in the benchmark.
//!
//! - `floor-helper`: the helper process of `floor-roundtrip` (floor.rs), started by it with one
//!   end of an AF_UNIX socketpair as stdin. It reads fixed-size requests (REQ_LEN bytes, built
//!   by its parent from an accepted peer address) and writes each back unchanged: the cheapest
//!   possible "decision" by another process. Requests that arrive together are read with one
//!   read and answered with one write. With `--helper-wait poll` it waits in
//!   poll(POLLIN) before each read instead of sleeping in the read itself.
//! - `hold-service`: a service that portnanny's `run` starts per held connection (stdin and
//!   stdout are the client's socket): it writes "held\n" and then reads and discards the
//!   client's bytes until EOF. A single small process instead of `sh` + `cat`.
//!
//! Both are bounded by `--lifetime` (default 1 h) through alarm(2), whose default action ends
//! the process, so even a blocked read cannot outlive it.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Instant;

use crate::floor::REQ_LEN;
use crate::Opts;

fn set_alarm(o: &Opts) {
    let secs = o.lifetime.as_secs().clamp(1, u64::from(u32::MAX)) as libc::c_uint;
    // SAFETY: alarm only arms a timer; SIGALRM keeps its default action (terminate).
    unsafe {
        libc::alarm(secs);
    }
}

/// Waits for POLLIN on `fd` without a timeout (the alarm bounds it); false on error.
fn wait_readable(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd that lives across the call; nfds is 1.
    let n = unsafe { libc::poll(&mut p, 1, -1) };
    n > 0 || (n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted)
}

pub fn floor_helper(o: &Opts) -> ExitCode {
    set_alarm(o);
    let mut parent = match io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!("portnanny-loadgen floor-helper: stdin: {e}");
            return ExitCode::FAILURE;
        }
    };
    let poll_first = o.helper_wait == "poll";
    let deadline = Instant::now() + o.lifetime;
    // Requests that arrive together are read with one read and answered with one write.
    let mut buf = [0u8; 64 * REQ_LEN];
    let mut have = 0usize;
    while Instant::now() < deadline {
        if poll_first && !wait_readable(parent.as_raw_fd()) {
            return ExitCode::FAILURE;
        }
        let n = match parent.read(&mut buf[have..]) {
            // The parent closed its end: done.
            Ok(0) => return ExitCode::SUCCESS,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("portnanny-loadgen floor-helper: read: {e}");
                return ExitCode::FAILURE;
            }
        };
        have += n;
        let whole = have / REQ_LEN * REQ_LEN;
        if let Err(e) = parent.write_all(&buf[..whole]) {
            eprintln!("portnanny-loadgen floor-helper: write: {e}");
            return ExitCode::FAILURE;
        }
        buf.copy_within(whole..have, 0);
        have -= whole;
    }
    ExitCode::SUCCESS
}

pub fn hold_service(o: &Opts) -> ExitCode {
    set_alarm(o);
    if io::stdout().write_all(b"held\n").is_err() || io::stdout().flush().is_err() {
        return ExitCode::FAILURE;
    }
    let mut stdin = io::stdin().lock();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + o.lifetime;
    while Instant::now() < deadline {
        match stdin.read(&mut buf) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return ExitCode::FAILURE,
        }
    }
    ExitCode::SUCCESS
}
