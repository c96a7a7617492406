//! `nannyctl`'s end of the control socket: connect, send one request line, read one reply
//! line. A connection may carry several requests in turn (`watch` keeps one open).
//!
//! Runs in `nannyctl`. The reply is outside input: it is read with a deadline and a size cap
//! ([`MAX_REPLY`]) and decoded as JSON into the typed [`Reply`]; nothing is trusted beyond
//! what that decoding checks. While waiting, an optional second descriptor (the signal pipe of
//! `watch`) ends the wait, so ^C never waits for the daemon.

use std::io::{self, ErrorKind as IoKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use privsep::control::{Reply, Request, MAX_REQUEST};

use super::codes::Fail;

/// Longest a reply may be: a `list` of 100,000 connections is about 30 MB of JSON.
pub const MAX_REPLY: usize = 128 * 1024 * 1024;
/// How long the daemon has to answer. The parent gives the classifier 60 s for `explain` and
/// `metrics`, so this is longer than that.
pub const REPLY_TIME: Duration = Duration::from_secs(75);

/// One connection to the control socket.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    /// Bytes read past the last reply's newline (none, in this protocol; kept for safety).
    inbuf: Vec<u8>,
    path: String,
}

/// What waiting for a reply ended with.
#[derive(Debug)]
pub enum Got {
    Reply(Reply),
    /// The interrupting descriptor became readable first.
    Interrupted,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, Fail> {
        let shown = path.display().to_string();
        let stream = UnixStream::connect(path).map_err(|e| connect_error(&shown, &e))?;
        Ok(Client {
            stream,
            inbuf: Vec::new(),
            path: shown,
        })
    }

    /// Sends `req` and waits for its reply (at most [`REPLY_TIME`]); `interrupt`, when
    /// readable, ends the wait.
    pub fn ask(&mut self, req: &Request, interrupt: Option<BorrowedFd<'_>>) -> Result<Got, Fail> {
        let mut line = serde_json::to_vec(req)
            .map_err(|e| Fail::Failed(format!("cannot encode the request: {e}")))?;
        line.push(b'\n');
        if line.len() > MAX_REQUEST {
            return Err(Fail::Usage(format!(
                "the request is {} bytes, more than the {MAX_REQUEST} the daemon takes",
                line.len()
            )));
        }
        self.send_line(&line)?;
        self.read_reply(Instant::now() + REPLY_TIME, interrupt)
    }

    fn send_line(&mut self, line: &[u8]) -> Result<(), Fail> {
        self.stream
            .set_write_timeout(Some(REPLY_TIME))
            .map_err(|e| Fail::Failed(format!("{}: {e}", self.path)))?;
        match self.stream.write_all(line) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.kind(), IoKind::BrokenPipe | IoKind::ConnectionReset) => {
                Err(self.closed())
            }
            Err(e) => Err(Fail::Failed(format!(
                "{}: sending the request: {e}",
                self.path
            ))),
        }
    }

    fn closed(&self) -> Fail {
        Fail::NotRunning(format!(
            "{}: the daemon closed the connection without a reply",
            self.path
        ))
    }

    /// Reads up to the next newline and decodes it.
    fn read_reply(
        &mut self,
        deadline: Instant,
        interrupt: Option<BorrowedFd<'_>>,
    ) -> Result<Got, Fail> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut scanned = 0;
        // Bounded: each round reads something, or waits until the deadline or an interrupt.
        loop {
            if let Some(end) = self
                .inbuf
                .get(scanned..)
                .and_then(|b| b.iter().position(|c| *c == b'\n'))
            {
                let end = scanned + end;
                let line: Vec<u8> = self.inbuf.drain(..=end).collect();
                return decode(line.get(..end).unwrap_or_default()).map(Got::Reply);
            }
            scanned = self.inbuf.len();
            if self.inbuf.len() > MAX_REPLY {
                return Err(Fail::Failed(format!(
                    "{}: the reply is longer than {MAX_REPLY} bytes",
                    self.path
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Fail::Failed(format!(
                    "{}: no reply within {} s",
                    self.path,
                    REPLY_TIME.as_secs()
                )));
            }
            match wait(self.stream.as_fd(), interrupt, left) {
                Ok(Ready::Interrupted) => return Ok(Got::Interrupted),
                Ok(Ready::Nothing) => continue,
                Ok(Ready::Stream) => {}
                Err(e) => return Err(Fail::Failed(format!("{}: poll: {e}", self.path))),
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(self.closed()),
                Ok(n) => self
                    .inbuf
                    .extend_from_slice(buf.get(..n).unwrap_or_default()),
                Err(e) if matches!(e.kind(), IoKind::Interrupted | IoKind::WouldBlock) => {}
                Err(e) if e.kind() == IoKind::ConnectionReset => return Err(self.closed()),
                Err(e) => {
                    return Err(Fail::Failed(format!(
                        "{}: reading the reply: {e}",
                        self.path
                    )))
                }
            }
        }
    }
}

enum Ready {
    Stream,
    Interrupted,
    Nothing,
}

/// Waits until the stream (or `interrupt`) is readable, at most `left`.
fn wait(
    stream: BorrowedFd<'_>,
    interrupt: Option<BorrowedFd<'_>>,
    left: Duration,
) -> io::Result<Ready> {
    let ms = u16::try_from(left.as_millis().saturating_add(1)).unwrap_or(u16::MAX);
    let mut fds = vec![PollFd::new(stream, PollFlags::POLLIN)];
    if let Some(i) = interrupt {
        fds.push(PollFd::new(i, PollFlags::POLLIN));
    }
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return Ok(Ready::Nothing),
        Err(e) => return Err(e.into()),
    }
    let fired = |f: Option<&PollFd<'_>>| f.and_then(PollFd::revents).is_some_and(|r| !r.is_empty());
    if fired(fds.get(1)) {
        return Ok(Ready::Interrupted);
    }
    Ok(if fired(fds.first()) {
        Ready::Stream
    } else {
        Ready::Nothing
    })
}

/// The reply in one line of JSON.
pub fn decode(line: &[u8]) -> Result<Reply, Fail> {
    serde_json::from_slice(line)
        .map_err(|e| Fail::Failed(format!("cannot read the daemon's reply: {e}")))
}

/// What a failed connect means for the operator.
fn connect_error(path: &str, e: &io::Error) -> Fail {
    match e.raw_os_error() {
        Some(libc::ENOENT) => Fail::NotRunning(format!(
            "{path}: no control socket (is portnanny running, with `control {path}` in \
             nanny.conf? -s PATH or $NANNYCTL_SOCKET names another)"
        )),
        Some(libc::ECONNREFUSED) => Fail::NotRunning(format!(
            "{path}: connection refused (a socket left by a daemon that is no longer running)"
        )),
        Some(libc::EACCES | libc::EPERM) => Fail::Denied(format!(
            "{path}: permission denied (root may use it, and members of nanny.conf's \
             controlgroup)"
        )),
        _ => Fail::NotRunning(format!("{path}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use privsep::control::ErrorKind;
    use std::os::unix::net::UnixListener;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("nannyctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn connect_failures_map_to_their_exit_codes() {
        let d = scratch("connect");
        let missing = Client::connect(&d.join("nothing")).unwrap_err();
        assert_eq!(missing.code(), 5, "{missing}");
        // A socket file nothing listens on: refused.
        drop(UnixListener::bind(d.join("stale")).unwrap());
        let stale = Client::connect(&d.join("stale")).unwrap_err();
        assert_eq!(stale.code(), 5, "{stale}");
        assert!(stale.to_string().contains("connection refused"), "{stale}");
        let denied = connect_error("/x", &io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(denied.code(), 3);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn replies_are_read_line_by_line_and_a_silent_close_is_not_running() {
        let d = scratch("reply");
        let l = UnixListener::bind(d.join("ctl")).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 256];
            let n = s.read(&mut b).unwrap();
            assert_eq!(&b[..n], b"\"status\"\n");
            // Two writes for one line, then an error reply on the same connection.
            s.write_all(b"{\"lines\":[\"a\",").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            s.write_all(b"\"b\"]}\n").unwrap();
            let n = s.read(&mut b).unwrap();
            assert_eq!(&b[..n], b"\"reload\"\n");
            s.write_all(b"{\"error\":{\"kind\":\"not-authorised\",\"message\":\"no\"}}\n")
                .unwrap();
            let _ = s.read(&mut b);
            // Closed without a reply to the third.
        });
        let mut c = Client::connect(&d.join("ctl")).unwrap();
        let r = c.ask(&Request::Status, None).unwrap();
        assert!(matches!(r, Got::Reply(Reply::Lines(l)) if l == ["a", "b"]));
        let r = c.ask(&Request::Reload, None).unwrap();
        assert!(matches!(
            r,
            Got::Reply(Reply::Error {
                kind: ErrorKind::NotAuthorised,
                ..
            })
        ));
        let e = c.ask(&Request::Flush, None).unwrap_err();
        assert_eq!(e.code(), 5, "{e}");
        server.join().unwrap();
        assert_eq!(decode(b"{\"bogus\":1}").unwrap_err().code(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_interrupt_ends_the_wait() {
        let d = scratch("interrupt");
        let l = UnixListener::bind(d.join("ctl")).unwrap();
        let mut c = Client::connect(&d.join("ctl")).unwrap();
        let (_held, _) = l.accept().unwrap();
        let (r, mut w) = UnixStream::pair().unwrap();
        w.write_all(b"x").unwrap();
        let t = Instant::now();
        let got = c.ask(&Request::Status, Some(r.as_fd())).unwrap();
        assert!(matches!(got, Got::Interrupted));
        assert!(t.elapsed() < Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&d);
    }
}
