//! `msg` and `failmsg` without a fork: the parent writes the message from its poll loop.
//!
//! Runs in the parent (root). The message bytes are the parent's own rendering of its actions
//! table; the peer is untrusted. A peer that never reads must not pin memory or stall the loop,
//! so every write is non-blocking, each message has a byte cap ([`MAX_MSG_BYTES`]) and a deadline
//! ([`MSG_DEADLINE`]), and the number of messages in flight is capped ([`MAX_MSG_WRITERS`]).
//! When the message is out (or the deadline passes, or the peer goes away) what the peer sent is
//! discarded and the socket closed.
//!
//! Every write says MSG_MORE: the kernel holds a short tail back, and the close that follows
//! sends it with the FIN in one segment, so a client is woken once for the message and its end,
//! not twice. No write waits (MSG_DONTWAIT), so the accepted socket keeps the blocking mode a
//! service would want and no fcntl is spent per message.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{recv, send, MsgFlags};

use privsep::proto::ConnId;

/// Largest message sent; a longer rendered message is cut (and the cut logged by the caller).
/// One definition with the policy crate, which warns about longer texts when it reads them.
pub use policy::actions::MAX_MSG_BYTES;

/// How long a peer has to take the whole message before the parent gives up and closes.
pub const MSG_DEADLINE: Duration = Duration::from_secs(30);

/// Messages in flight at once; beyond this a new msg connection is closed unanswered, so
/// stalled peers cannot take more than `MAX_MSG_WRITERS * MAX_MSG_BYTES` of memory.
pub const MAX_MSG_WRITERS: usize = 4096;

/// Writes attempted per call; a socket that keeps accepting bytes is revisited on the next loop
/// turn rather than letting one peer monopolise the loop.
const MAX_WRITES_PER_TURN: usize = 16;

/// The bytes sent for a message: the text, with `\r\n` appended unless it already ends with a
/// carriage return or a newline (the original portnanny's convention), cut at
/// [`MAX_MSG_BYTES`]. The bool says whether it was cut.
pub fn message_bytes(text: &str) -> (Vec<u8>, bool) {
    let mut bytes = text.as_bytes().to_vec();
    if !matches!(bytes.last(), Some(b'\r' | b'\n')) {
        bytes.extend_from_slice(b"\r\n");
    }
    let cut = bytes.len() > MAX_MSG_BYTES;
    bytes.truncate(MAX_MSG_BYTES);
    (bytes, cut)
}

/// What one call to [`MsgWrite::advance`] achieved.
#[derive(Debug)]
pub enum Progress {
    /// Every byte is written; the caller closes the socket.
    Done,
    /// The socket is full; wait for POLLOUT (or the deadline).
    Blocked,
    /// The deadline passed with bytes left; the caller closes.
    TimedOut { written: usize, left: usize },
    /// The peer went away or the write failed; the caller closes.
    Failed(io::Error),
}

/// Where a message goes: a write that never waits.
pub trait Sink {
    /// Writes what the socket takes now (WouldBlock when it takes nothing).
    fn send_now(&mut self, buf: &[u8]) -> io::Result<usize>;
}

impl Sink for TcpStream {
    fn send_now(&mut self, buf: &[u8]) -> io::Result<usize> {
        let flags = MsgFlags::MSG_DONTWAIT
            | MsgFlags::MSG_NOSIGNAL
            | MsgFlags::from_bits_retain(libc::MSG_MORE);
        send(self.as_raw_fd(), buf, flags).map_err(io::Error::from)
    }
}

/// Discards what the peer has sent so far (bounded, never waiting): closing a socket with
/// unread input makes the kernel send RST instead of FIN, and the peer could lose the message.
pub fn discard_input(s: &TcpStream) {
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match recv(s.as_raw_fd(), &mut sink, MsgFlags::MSG_DONTWAIT) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
}

/// One message being written to one connection.
#[derive(Debug)]
pub struct MsgWrite<W> {
    pub conn: ConnId,
    out: W,
    buf: Vec<u8>,
    pos: usize,
    deadline: Instant,
}

impl<W: Sink> MsgWrite<W> {
    /// `bytes` should come from [`message_bytes`].
    pub fn new(conn: ConnId, out: W, bytes: Vec<u8>, now: Instant) -> MsgWrite<W> {
        MsgWrite {
            conn,
            out,
            buf: bytes,
            pos: 0,
            deadline: now + MSG_DEADLINE,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    /// Writes what the socket takes now.
    pub fn advance(&mut self, now: Instant) -> Progress {
        for _ in 0..MAX_WRITES_PER_TURN {
            let Some(rest) = self.buf.get(self.pos..).filter(|r| !r.is_empty()) else {
                return Progress::Done;
            };
            if now >= self.deadline {
                return self.timed_out();
            }
            match self.out.send_now(rest) {
                Ok(0) => return Progress::Failed(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.pos += n.min(rest.len()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Progress::Failed(e),
            }
        }
        if self.pos >= self.buf.len() {
            Progress::Done
        } else if now >= self.deadline {
            self.timed_out()
        } else {
            Progress::Blocked
        }
    }

    fn timed_out(&self) -> Progress {
        Progress::TimedOut {
            written: self.pos,
            left: self.buf.len().saturating_sub(self.pos),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A writer scripted with what each write call does: accept up to N bytes, or fail.
    #[derive(Default)]
    struct Script {
        steps: VecDeque<Result<usize, io::ErrorKind>>,
        got: Vec<u8>,
    }

    impl Sink for Script {
        fn send_now(&mut self, buf: &[u8]) -> io::Result<usize> {
            match self.steps.pop_front() {
                Some(Ok(n)) => {
                    let n = n.min(buf.len());
                    self.got.extend_from_slice(&buf[..n]);
                    Ok(n)
                }
                Some(Err(k)) => Err(k.into()),
                None => Err(io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    impl Sink for std::os::unix::net::UnixStream {
        fn send_now(&mut self, buf: &[u8]) -> io::Result<usize> {
            io::Write::write(self, buf)
        }
    }

    fn writer(
        steps: Vec<Result<usize, io::ErrorKind>>,
        msg: &[u8],
        t0: Instant,
    ) -> MsgWrite<Script> {
        let s = Script {
            steps: steps.into(),
            got: Vec::new(),
        };
        MsgWrite::new(ConnId(1), s, msg.to_vec(), t0)
    }

    #[test]
    fn message_bytes_rows() {
        let rows: &[(&str, &[u8])] = &[
            ("hello", b"hello\r\n"),
            ("hello\n", b"hello\n"),
            ("hello\r", b"hello\r"),
            ("hello\r\n", b"hello\r\n"),
            ("", b"\r\n"),
        ];
        for (text, want) in rows {
            assert_eq!(message_bytes(text), (want.to_vec(), false), "{text:?}");
        }
        let (big, cut) = message_bytes(&"x".repeat(MAX_MSG_BYTES + 5));
        assert!(cut);
        assert_eq!(big.len(), MAX_MSG_BYTES);
    }

    #[test]
    fn whole_message_in_one_write() {
        let t0 = Instant::now();
        let mut w = writer(vec![Ok(100)], b"hi\r\n", t0);
        assert!(matches!(w.advance(t0), Progress::Done));
        assert_eq!(w.into_inner().got, b"hi\r\n");
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let t0 = Instant::now();
        let steps = vec![
            Ok(2),
            Err(io::ErrorKind::WouldBlock),
            Ok(1),
            Err(io::ErrorKind::Interrupted),
            Ok(3),
        ];
        let mut w = writer(steps, b"abcdef", t0);
        assert!(matches!(w.advance(t0), Progress::Blocked));
        assert_eq!(w.get_ref().got, b"ab");
        assert!(matches!(w.advance(t0), Progress::Done));
        assert_eq!(w.into_inner().got, b"abcdef");
    }

    #[test]
    fn deadline_stops_a_peer_that_never_reads() {
        let t0 = Instant::now();
        let mut w = writer(vec![Ok(1)], b"abcd", t0);
        assert!(matches!(w.advance(t0), Progress::Blocked));
        assert!(matches!(
            w.advance(t0 + MSG_DEADLINE - Duration::from_millis(1)),
            Progress::Blocked
        ));
        match w.advance(t0 + MSG_DEADLINE) {
            Progress::TimedOut { written, left } => assert_eq!((written, left), (1, 3)),
            p => panic!("{p:?}"),
        }
        assert_eq!(w.deadline(), t0 + MSG_DEADLINE);
    }

    #[test]
    fn finished_message_is_done_even_after_the_deadline() {
        let t0 = Instant::now();
        let mut w = writer(vec![Ok(4)], b"abcd", t0);
        assert!(matches!(
            w.advance(t0 + MSG_DEADLINE * 2),
            Progress::TimedOut { .. }
        ));
        let mut w = writer(vec![Ok(4)], b"abcd", t0);
        assert!(matches!(w.advance(t0), Progress::Done));
        assert!(matches!(w.advance(t0 + MSG_DEADLINE * 2), Progress::Done));
    }

    #[test]
    fn errors_and_zero_writes_fail() {
        let t0 = Instant::now();
        let mut w = writer(vec![Err(io::ErrorKind::BrokenPipe)], b"x", t0);
        assert!(
            matches!(w.advance(t0), Progress::Failed(e) if e.kind() == io::ErrorKind::BrokenPipe)
        );
        let mut w = writer(vec![Ok(0)], b"x", t0);
        assert!(
            matches!(w.advance(t0), Progress::Failed(e) if e.kind() == io::ErrorKind::WriteZero)
        );
    }

    #[test]
    fn a_fast_reader_cannot_hold_the_loop() {
        let t0 = Instant::now();
        let msg = vec![b'x'; 100];
        let mut w = writer(vec![Ok(1); 100], &msg, t0);
        assert!(matches!(w.advance(t0), Progress::Blocked));
        assert_eq!(w.get_ref().got.len(), MAX_WRITES_PER_TURN);
    }

    #[test]
    fn real_socket_pair_partial_then_done() {
        use std::io::Read;
        use std::os::unix::net::UnixStream;
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let t0 = Instant::now();
        let msg = vec![b'y'; 4 * 1024 * 1024];
        let mut w = MsgWrite::new(ConnId(9), a, msg.clone(), t0);
        assert!(matches!(w.advance(t0), Progress::Blocked));
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        for _ in 0..100_000 {
            match w.advance(t0) {
                Progress::Done => break,
                Progress::Blocked => {}
                p => panic!("{p:?}"),
            }
            let n = b.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        drop(w);
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), msg.len());
    }
}
