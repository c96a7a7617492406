//! Typed, framed channels over a connected AF_UNIX stream socket: `Channel<Out, In>` sends
//! only `Out` and receives only `In` (one message enum per direction, STYLE.md §2.3).
//!
//! Runs in every role. Received bytes come from the peer process and are untrusted: a frame
//! header is checked before any body byte is buffered, so a peer can make us hold at most
//! [`MAX_FRAME`] + [`HEADER`] + one small read chunk (16 KiB) per channel, whatever it sends.
//! Only a receiver that trusts its peer raises that cap ([`Channel::accept_frames_up_to`]: the
//! classifier, for the parent's `Policy`), and the buffer grows to a large frame only while
//! one is arriving and is given back once it is consumed. An oversize or undecodable frame is
//! a [`Violation`]: the channel shuts the socket down (the peer sees EOF) and every later call
//! returns [`ChannelError::Closed`].
//!
//! Two ways to use it:
//! - blocking (`send`/`recv`), or split into a [`Sender`] and a [`Receiver`] for threads;
//! - from a poll loop: `set_nonblocking(true)`, then `queue` (or `defer`, to coalesce a loop
//!   turn's messages into one write) + `flush` when `wants_write`, and on POLLIN call
//!   `try_recv` until it returns `Ok(None)` (several frames may arrive in one read; `Ok(None)`
//!   means a read found no more bytes, so poll again before the next call).
//!
//! Every write wakes the peer, and on a busy host wakeups cost more than the bytes, so both
//! sides coalesce: a poll loop defers a turn's messages and flushes once before it sleeps, and
//! a [`Sender`] can be held while its thread answers a batch of requests that arrived in one
//! read, then released.
//!
//! Writes use `send(MSG_NOSIGNAL)`, so a dead peer is `Closed`, never SIGPIPE.

use std::io;
use std::marker::PhantomData;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recv, send, MsgFlags};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ChannelError, Violation};
use crate::wire::{self, HEADER, MAX_FRAME, MAX_TRUSTED_FRAME};

/// Smallest read we issue: small frames arrive several per read.
const READ_CHUNK: usize = 16 * 1024;
/// Largest single read, so a big frame is not zero-filled in one MAX_FRAME piece per call.
const MAX_READ: usize = 256 * 1024;
/// Bytes queued for sending before `queue` refuses: a peer that stops reading must not make us
/// grow without bound. Room for one largest trusted frame (a Policy) plus several maximal
/// ordinary ones (traffic queued behind it).
pub const MAX_QUEUED: usize = MAX_TRUSTED_FRAME + HEADER + 4 * (MAX_FRAME + HEADER);

/// Receive buffer holding at most one incomplete frame plus one read chunk.
///
/// `buf[start..end]` are received bytes not yet handed out; `buf[end..]` is space already
/// zeroed, reused by the next read, so a read does not zero-fill its chunk again each time.
#[derive(Debug)]
struct FrameReader {
    /// The largest frame body accepted (the receiver's cap, see wire's header).
    max: usize,
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as frames.
    start: usize,
    /// End of the received bytes.
    end: usize,
    /// The last read returned less than it asked for, so the socket had nothing more then: the
    /// next receive waits (or reports "nothing") without a read that would only say EAGAIN.
    drained: bool,
}

impl Default for FrameReader {
    fn default() -> FrameReader {
        FrameReader {
            max: MAX_FRAME,
            buf: Vec::new(),
            start: 0,
            end: 0,
            drained: false,
        }
    }
}

impl FrameReader {
    fn pending(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    /// Whether a complete frame (or a bad header) is buffered: the next receive needs no read.
    fn has_frame(&self) -> bool {
        !matches!(wire::split_frame_within(self.pending(), self.max), Ok(None))
    }

    /// The next complete frame body in the buffer, if any. Checks the header as soon as four
    /// bytes are present, before reading any of the body.
    fn next_frame(&mut self) -> Result<Option<std::ops::Range<usize>>, Violation> {
        let Some((body, _)) = wire::split_frame_within(self.pending(), self.max)? else {
            return Ok(None);
        };
        let range = self.start + HEADER..self.start + HEADER + body.len();
        self.start = range.end;
        Ok(Some(range))
    }

    /// How many body bytes the frame at the front still lacks (0 if the header is incomplete).
    fn missing(&self) -> usize {
        let avail = self.pending();
        let mut h = [0u8; HEADER];
        match avail.get(..HEADER) {
            Some(header) => {
                h.copy_from_slice(header);
                // The header was validated by next_frame before we are asked to read more.
                wire::frame_len_within(h, self.max)
                    .map_or(0, |len| (HEADER + len).saturating_sub(avail.len()))
            }
            None => 0,
        }
    }

    /// One recv(2) into the buffer, never blocking (`EWOULDBLOCK` when there is nothing).
    /// Returns the byte count (0 = EOF).
    fn fill(&mut self, sock: &UnixStream) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == 0 && self.buf.capacity() > MAX_READ {
            // Do not keep megabytes around after one large Policy frame.
            self.buf = Vec::new();
        }
        let missing = self.missing();
        let want = missing.clamp(READ_CHUNK, MAX_READ);
        if self.buf.len() < self.end + want {
            // Capacity for the rest of the frame at once (bounded by the checked header), so a
            // large frame is not copied at every growth step; exact, not amortised doubling,
            // so the bound holds for the capacity too. Only `want` bytes of it are zeroed and
            // read into per call. (Wanting more than the frame lacks only happens below
            // READ_CHUNK.)
            let cap = self.end + want.max(missing);
            self.buf.reserve_exact(cap.saturating_sub(self.buf.len()));
            self.buf.resize(self.end + want, 0);
        }
        let space = self
            .buf
            .get_mut(self.end..self.end + want)
            .unwrap_or_default();
        // MSG_DONTWAIT even for a blocking caller, who then waits in poll(POLLIN): a thread
        // asleep inside recv(2) on an AF_UNIX stream is also woken each time the peer reads
        // what we sent (the socket's write-space wake-up shares the wait queue), which cost
        // the classifier a spurious wake-up per verdict; poll only wakes for input.
        let n = recv(sock.as_raw_fd(), space, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)?;
        self.drained = n < want;
        self.end += n;
        Ok(n)
    }

    fn clear(&mut self) {
        self.buf = Vec::new();
        // `max` stays: it belongs to the channel.
        self.start = 0;
        self.end = 0;
        self.drained = false;
    }
}

/// Wait until `fd` is readable or writable (used when a blocking call meets a non-blocking
/// socket). EINTR is retried by the caller's loop.
fn wait_for(fd: BorrowedFd<'_>, flags: PollFlags) -> Result<(), ChannelError> {
    let mut fds = [PollFd::new(fd, flags)];
    match poll(&mut fds, PollTimeout::NONE) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(ChannelError::Io(e.into())),
    }
}

/// Shared receive logic: one complete frame, decoded, or `None` when the socket has nothing
/// more right now (only when `blocking` is false).
fn receive<In: DeserializeOwned>(
    sock: &mut UnixStream,
    rd: &mut FrameReader,
    broken: &mut bool,
    blocking: bool,
) -> Result<Option<In>, ChannelError> {
    if *broken {
        return Err(ChannelError::Closed);
    }
    let result = loop {
        match rd.next_frame() {
            Err(v) => break Err(ChannelError::Violation(v)),
            Ok(Some(range)) => {
                let body = rd.buf.get(range).unwrap_or_default();
                break wire::decode_within(body, rd.max)
                    .map(Some)
                    .map_err(ChannelError::Violation);
            }
            Ok(None) => {}
        }
        if std::mem::take(&mut rd.drained) {
            // Level-triggered poll reports anything that arrived since the short read.
            if !blocking {
                return Ok(None);
            }
            wait_for(sock.as_fd(), PollFlags::POLLIN)?;
        }
        match rd.fill(sock) {
            Ok(0) => break Err(ChannelError::Closed),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !blocking {
                    return Ok(None);
                }
                wait_for(sock.as_fd(), PollFlags::POLLIN)?;
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                break Err(ChannelError::Closed)
            }
            Err(e) => break Err(ChannelError::Io(e)),
        }
    };
    if let Err(ChannelError::Violation(_) | ChannelError::Closed) = &result {
        // A compromised or departed peer: stop reading for good and let it see EOF. Errors
        // from shutdown are irrelevant (the peer may already be gone).
        *broken = true;
        rd.clear();
        let _ = sock.shutdown(Shutdown::Both);
    }
    result
}

/// Write as much of `buf[*pos..]` as the socket takes. Returns when all is written or, on a
/// non-blocking socket, when the socket is full (if `blocking`, waits instead).
fn write_out(
    sock: &UnixStream,
    buf: &[u8],
    pos: &mut usize,
    blocking: bool,
) -> Result<(), ChannelError> {
    while let Some(rest) = buf.get(*pos..).filter(|r| !r.is_empty()) {
        match send(sock.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => *pos += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                if !blocking {
                    return Ok(());
                }
                wait_for(sock.as_fd(), PollFlags::POLLOUT)?;
            }
            Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(ChannelError::Closed),
            Err(e) => return Err(ChannelError::Io(e.into())),
        }
    }
    Ok(())
}

/// A typed channel: sends `Out`, receives `In`.
#[derive(Debug)]
pub struct Channel<Out, In> {
    sock: UnixStream,
    rd: FrameReader,
    /// Encoded frames not yet written; `wpos` bytes of it are already sent.
    wbuf: Vec<u8>,
    wpos: usize,
    broken: bool,
    _dir: PhantomData<fn(Out) -> In>,
}

impl<Out: Serialize, In: DeserializeOwned> Channel<Out, In> {
    /// Wrap a connected AF_UNIX SOCK_STREAM socket (from `socketpair` or `take_worker_fds`).
    pub fn from_fd(fd: OwnedFd) -> Channel<Out, In> {
        Channel {
            sock: UnixStream::from(fd),
            rd: FrameReader::default(),
            wbuf: Vec::new(),
            wpos: 0,
            broken: false,
            _dir: PhantomData,
        }
    }

    /// A connected pair of channels (CLOEXEC), one for each side: for tests and in-process use.
    pub fn pair() -> io::Result<(Channel<Out, In>, Channel<In, Out>)>
    where
        In: Serialize,
        Out: DeserializeOwned,
    {
        let (a, b) = UnixStream::pair()?;
        Ok((Channel::from_fd(a.into()), Channel::from_fd(b.into())))
    }

    /// Send one message, blocking until the whole frame (and anything queued before it) is
    /// written.
    pub fn send(&mut self, msg: &Out) -> Result<(), ChannelError> {
        self.append(msg)?;
        self.write(true)
    }

    /// Receive one message, blocking. `Closed` at EOF (also inside a partial frame).
    pub fn recv(&mut self) -> Result<In, ChannelError> {
        match receive(&mut self.sock, &mut self.rd, &mut self.broken, true)? {
            Some(msg) => Ok(msg),
            // receive only returns None when not blocking.
            None => Err(ChannelError::Io(io::ErrorKind::WouldBlock.into())),
        }
    }

    /// Split into halves for two threads. Anything still queued is written first (blocking);
    /// bytes already received stay with the receiver.
    pub fn split(mut self) -> io::Result<(Sender<Out>, Receiver<In>)> {
        self.write(true).map_err(|e| match e {
            ChannelError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::BrokenPipe, other.to_string()),
        })?;
        let send_sock = self.sock.try_clone()?;
        Ok((
            Sender {
                inner: Arc::new(SendHalf {
                    sock: send_sock,
                    lock: Mutex::new(Held::default()),
                }),
                _dir: PhantomData,
            },
            Receiver {
                sock: self.sock,
                rd: self.rd,
                broken: self.broken,
                _dir: PhantomData,
            },
        ))
    }

    /// Accept frames of up to `max` bytes from the peer (at most [`MAX_TRUSTED_FRAME`]; the
    /// default is [`MAX_FRAME`]). Only for a peer this process trusts: the classifier calls it
    /// for the parent, whose `Policy` carries the whole rules and actions text. Kept by
    /// [`Channel::split`]'s receiver.
    pub fn accept_frames_up_to(&mut self, max: usize) {
        self.rd.max = max.min(MAX_TRUSTED_FRAME);
    }

    /// Switch the socket between blocking and non-blocking mode (poll-loop use).
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.sock.set_nonblocking(on)
    }

    /// Append a message to the send queue and write what the socket takes now. Fails with an
    /// `Io(OutOfMemory)` error if more than [`MAX_QUEUED`] bytes would be waiting: the peer is
    /// not reading.
    pub fn queue(&mut self, msg: &Out) -> Result<(), ChannelError> {
        self.append(msg)?;
        self.write(false)
    }

    /// Append a message to the send queue without writing: the caller flushes (once per poll
    /// turn) before it sleeps. Refused as [`Channel::queue`] is when the queue is full.
    pub fn defer(&mut self, msg: &Out) -> Result<(), ChannelError> {
        self.append(msg)
    }

    /// Write queued bytes until done or the socket is full.
    pub fn flush(&mut self) -> Result<(), ChannelError> {
        self.write(false)
    }

    /// Whether `try_recv` has something to return without reading: a complete frame (or a
    /// bad header) already buffered. Poll does not report those bytes (they have left the
    /// socket), so a poll loop that stops calling `try_recv` before `Ok(None)` must check this.
    pub fn has_buffered(&self) -> bool {
        self.rd.has_frame()
    }

    /// Whether queued bytes wait for the socket to become writable (poll for POLLOUT).
    pub fn wants_write(&self) -> bool {
        self.wpos < self.wbuf.len()
    }

    /// Read what the socket has and return one complete message, or `None` if no complete
    /// frame is available yet (partial frames are kept). Call again until `Ok(None)`.
    pub fn try_recv(&mut self) -> Result<Option<In>, ChannelError> {
        receive(&mut self.sock, &mut self.rd, &mut self.broken, false)
    }

    fn append(&mut self, msg: &Out) -> Result<(), ChannelError> {
        if self.broken {
            return Err(ChannelError::Closed);
        }
        let frame = wire::encode(msg)?;
        if self.wbuf.len() - self.wpos + frame.len() > MAX_QUEUED {
            return Err(ChannelError::Io(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "send queue full: peer is not reading",
            )));
        }
        if self.wpos > 0 {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        self.wbuf.extend_from_slice(&frame);
        Ok(())
    }

    fn write(&mut self, blocking: bool) -> Result<(), ChannelError> {
        if self.broken {
            return Err(ChannelError::Closed);
        }
        let res = write_out(&self.sock, &self.wbuf, &mut self.wpos, blocking);
        if self.wpos >= self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        res
    }
}

impl<Out, In> AsFd for Channel<Out, In> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl<Out, In> AsRawFd for Channel<Out, In> {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[derive(Debug)]
struct SendHalf {
    sock: UnixStream,
    /// Serialises writers so frames from different threads never interleave; holds the frames
    /// kept back while the sender is held.
    lock: Mutex<Held>,
}

/// Frames kept back by [`Sender::hold`].
#[derive(Debug, Default)]
struct Held {
    on: bool,
    buf: Vec<u8>,
}

/// Held bytes past which a held sender writes anyway: holding is for coalescing a burst of
/// small answers, never for storing a backlog.
const MAX_HELD: usize = 64 * 1024;

/// The sending half of a split channel. Cloneable and `Sync`: threads of a pool may send
/// concurrently; each frame is written whole under a lock.
#[derive(Debug)]
pub struct Sender<Out> {
    inner: Arc<SendHalf>,
    _dir: PhantomData<fn(Out)>,
}

impl<Out> Clone for Sender<Out> {
    fn clone(&self) -> Self {
        Sender {
            inner: Arc::clone(&self.inner),
            _dir: PhantomData,
        }
    }
}

impl<Out: Serialize> Sender<Out> {
    /// Send one message, blocking until the whole frame is written (or, while the sender is
    /// held, keeping it for [`Sender::release`]; it never waits then).
    pub fn send(&self, msg: &Out) -> Result<(), ChannelError> {
        let frame = wire::encode(msg)?;
        // A writer that panicked mid-frame leaves the stream unusable; report it as closed
        // rather than interleave a new frame into a torn one.
        let mut held = self.inner.lock.lock().map_err(|_| ChannelError::Closed)?;
        if held.on {
            held.buf.extend_from_slice(&frame);
            if held.buf.len() < MAX_HELD {
                return Ok(());
            }
            return self.write_held(&mut held);
        }
        let mut pos = 0;
        write_out(&self.inner.sock, &frame, &mut pos, true)
    }

    /// Keeps later frames (from any thread) back until [`Sender::release`], so answers to a
    /// batch of requests leave in one write. Whoever holds must release before it waits for
    /// anything, or the held frames wait with it.
    pub fn hold(&self) {
        if let Ok(mut held) = self.inner.lock.lock() {
            held.on = true;
        }
    }

    /// Writes the frames kept since [`Sender::hold`] (blocking) and stops holding.
    pub fn release(&self) -> Result<(), ChannelError> {
        let mut held = self.inner.lock.lock().map_err(|_| ChannelError::Closed)?;
        held.on = false;
        self.write_held(&mut held)
    }

    fn write_held(&self, held: &mut Held) -> Result<(), ChannelError> {
        let mut pos = 0;
        let res = write_out(&self.inner.sock, &held.buf, &mut pos, true);
        held.buf.clear();
        if held.buf.capacity() > MAX_HELD {
            held.buf.shrink_to(MAX_HELD);
        }
        res
    }
}

impl<Out> AsFd for Sender<Out> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.sock.as_fd()
    }
}

impl<Out> AsRawFd for Sender<Out> {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.sock.as_raw_fd()
    }
}

/// The receiving half of a split channel.
#[derive(Debug)]
pub struct Receiver<In> {
    sock: UnixStream,
    rd: FrameReader,
    broken: bool,
    _dir: PhantomData<fn() -> In>,
}

impl<In: DeserializeOwned> Receiver<In> {
    /// Receive one message, blocking. `Closed` at EOF.
    pub fn recv(&mut self) -> Result<In, ChannelError> {
        match receive(&mut self.sock, &mut self.rd, &mut self.broken, true)? {
            Some(msg) => Ok(msg),
            None => Err(ChannelError::Io(io::ErrorKind::WouldBlock.into())),
        }
    }

    /// As [`Channel::try_recv`] (for a receiver whose socket was made non-blocking).
    pub fn try_recv(&mut self) -> Result<Option<In>, ChannelError> {
        receive(&mut self.sock, &mut self.rd, &mut self.broken, false)
    }

    /// As [`Channel::has_buffered`]: `recv` will return without reading.
    pub fn has_buffered(&self) -> bool {
        self.rd.has_frame()
    }
}

impl<In> AsFd for Receiver<In> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl<In> AsRawFd for Receiver<In> {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::proto::{ClassifierToParent, Gen, LogLevel, LogRecord, ParentToClassifier};

    type ParentSide = Channel<ParentToClassifier, ClassifierToParent>;

    fn log(text: &str) -> ClassifierToParent {
        ClassifierToParent::Log(LogRecord {
            level: LogLevel::Info,
            verbosity: 0,
            text: text.to_owned(),
        })
    }

    /// A channel on one end and the raw socket (the "peer", which may misbehave) on the other.
    fn raw_pair() -> (ParentSide, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let ch = ParentSide::from_fd(a.into());
        ch.set_nonblocking(true).unwrap();
        (ch, b)
    }

    #[test]
    fn blocking_round_trip() {
        let (mut parent, mut child) = ParentSide::pair().unwrap();
        parent.send(&ParentToClassifier::Flush).unwrap();
        assert_eq!(child.recv().unwrap(), ParentToClassifier::Flush);
        child
            .send(&ClassifierToParent::PolicyLoaded { gen: Gen(3) })
            .unwrap();
        child.send(&log("x")).unwrap();
        assert_eq!(
            parent.recv().unwrap(),
            ClassifierToParent::PolicyLoaded { gen: Gen(3) }
        );
        assert_eq!(parent.recv().unwrap(), log("x"));
        drop(child);
        assert!(matches!(parent.recv(), Err(ChannelError::Closed)));
        assert!(matches!(
            parent.send(&ParentToClassifier::Flush),
            Err(ChannelError::Closed)
        ));
    }

    /// Frames that arrived in one read wait in the buffer, invisible to poll: `has_buffered`
    /// says so until the last one is taken, and a bad header counts (try_recv must see it).
    #[test]
    fn has_buffered_until_the_last_frame_is_taken() {
        let (mut ch, mut peer) = raw_pair();
        let mut burst = wire::encode(&log("a")).unwrap();
        burst.extend_from_slice(&wire::encode(&log("b")).unwrap());
        peer.write_all(&burst).unwrap();
        assert!(!ch.has_buffered());
        assert_eq!(ch.try_recv().unwrap(), Some(log("a")));
        assert!(ch.has_buffered());
        let mut fds = [PollFd::new(ch.as_fd(), PollFlags::POLLIN)];
        assert_eq!(
            poll(&mut fds, PollTimeout::ZERO).unwrap(),
            0,
            "poll sees no input"
        );
        assert_eq!(ch.try_recv().unwrap(), Some(log("b")));
        assert!(!ch.has_buffered());
        assert_eq!(ch.try_recv().unwrap(), None);

        let mut bad = wire::encode(&log("c")).unwrap();
        bad.extend_from_slice(&u32::MAX.to_be_bytes());
        peer.write_all(&bad).unwrap();
        wait_for(ch.as_fd(), PollFlags::POLLIN).unwrap();
        assert_eq!(ch.try_recv().unwrap(), Some(log("c")));
        assert!(ch.has_buffered());
        assert!(matches!(ch.try_recv(), Err(ChannelError::Violation(_))));
    }

    #[test]
    fn partial_frames_byte_by_byte() {
        let (mut ch, mut peer) = raw_pair();
        let one = wire::encode(&log("first")).unwrap();
        let two = wire::encode(&ClassifierToParent::PolicyLoaded { gen: Gen(9) }).unwrap();
        for (i, b) in one.iter().enumerate() {
            assert!(
                ch.try_recv().unwrap().is_none(),
                "frame complete early at byte {i}"
            );
            peer.write_all(&[*b]).unwrap();
        }
        assert_eq!(ch.try_recv().unwrap(), Some(log("first")));
        assert!(ch.try_recv().unwrap().is_none());
        // Two frames and a half in one write: one frame per call, then None.
        let mut burst = two.clone();
        burst.extend_from_slice(&one);
        burst.extend_from_slice(&two[..3]);
        peer.write_all(&burst).unwrap();
        assert_eq!(
            ch.try_recv().unwrap(),
            Some(ClassifierToParent::PolicyLoaded { gen: Gen(9) })
        );
        assert_eq!(ch.try_recv().unwrap(), Some(log("first")));
        assert!(ch.try_recv().unwrap().is_none());
        peer.write_all(&two[3..]).unwrap();
        assert_eq!(
            ch.try_recv().unwrap(),
            Some(ClassifierToParent::PolicyLoaded { gen: Gen(9) })
        );
        // EOF inside a frame is Closed, not a message. As in a poll loop, Ok(None) means
        // "wait for POLLIN": the partial frame and the EOF may take a poll each.
        peer.write_all(&one[..5]).unwrap();
        drop(peer);
        let mut end = ch.try_recv();
        for _ in 0..4 {
            if !matches!(end, Ok(None)) {
                break;
            }
            wait_for(ch.as_fd(), PollFlags::POLLIN).unwrap();
            end = ch.try_recv();
        }
        assert!(matches!(end, Err(ChannelError::Closed)), "{end:?}");
    }

    /// Each bad header is refused from its four bytes alone; the channel then shuts the socket
    /// (the peer reads EOF) and stays closed.
    #[test]
    fn bad_lengths_are_violations() {
        let rows: [(&str, u32, usize); 3] = [
            ("zero length", 0, 0),
            ("oversize", MAX_FRAME as u32 + 1, MAX_FRAME + 1),
            ("huge", u32::MAX, u32::MAX as usize),
        ];
        for (label, len, want) in rows {
            let (mut ch, mut peer) = raw_pair();
            peer.write_all(&len.to_be_bytes()).unwrap();
            match ch.try_recv() {
                Err(ChannelError::Violation(Violation::FrameSize(n))) => {
                    assert_eq!(n, want, "{label}")
                }
                other => panic!("{label}: {other:?}"),
            }
            assert!(
                ch.rd.buf.capacity() <= READ_CHUNK,
                "{label}: buffered a body"
            );
            assert!(
                matches!(ch.try_recv(), Err(ChannelError::Closed)),
                "{label}"
            );
            let mut buf = [0u8; 8];
            peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert_eq!(
                peer.read(&mut buf).unwrap(),
                0,
                "{label}: peer not shut out"
            );
        }
    }

    fn policy(rules: String) -> ParentToClassifier {
        ParentToClassifier::Policy {
            gen: Gen(1),
            rules: Some(rules),
            actions: None,
            settings: crate::proto::ClassifierSettings {
                maxthreads: 1,
                aftermaxthreads: None,
                dropipafter_secs: None,
                expireevery_secs: 60,
                dns_timeout_ms: 5000,
                identd_timeout_ms: 10000,
                answerson_timeout_ms: 5000,
                grouping: Default::default(),
            },
            ipfiles: Vec::new(),
        }
    }

    /// Issue 16: a 2 MB policy (100,000 rules) crosses from the parent to a classifier that
    /// trusts it, and its buffer is given back afterwards; the same frame to a receiver with
    /// the default cap, and an oversize header from an untrusted peer, stay violations.
    #[test]
    fn large_frames_only_where_the_receiver_trusts_the_sender() {
        let big = policy("ip: 10.0.0.1\n".repeat(2_100_000 / 13));
        let frame = wire::encode(&big).unwrap();
        assert!(frame.len() > 2 * MAX_FRAME, "{}", frame.len());

        let (mut parent, child) = ParentSide::pair().unwrap();
        let mut child: Channel<ClassifierToParent, ParentToClassifier> = child;
        child.accept_frames_up_to(MAX_TRUSTED_FRAME);
        let writer = std::thread::spawn(move || {
            parent.send(&big).unwrap();
            parent.send(&ParentToClassifier::Flush).unwrap();
            (parent, big)
        });
        let got = child.recv().unwrap();
        assert_eq!(child.recv().unwrap(), ParentToClassifier::Flush);
        let (_parent, big) = writer.join().unwrap();
        assert_eq!(got, big);
        child.set_nonblocking(true).unwrap();
        assert!(child.try_recv().unwrap().is_none());
        assert!(
            child.rd.buf.capacity() <= MAX_READ,
            "the large buffer is given back: {}",
            child.rd.buf.capacity()
        );

        // The same bytes to a receiver with the default cap: refused from the header.
        let (mut untrusting, mut peer) = {
            let (a, b) = UnixStream::pair().unwrap();
            let ch: Channel<ClassifierToParent, ParentToClassifier> = Channel::from_fd(a.into());
            ch.set_nonblocking(true).unwrap();
            (ch, b)
        };
        peer.write_all(&frame[..HEADER]).unwrap();
        assert!(matches!(
            untrusting.try_recv(),
            Err(ChannelError::Violation(Violation::FrameSize(n))) if n == frame.len() - HEADER
        ));

        // Raising the cap is bounded by MAX_TRUSTED_FRAME.
        let (mut ch, mut peer) = raw_pair();
        ch.accept_frames_up_to(usize::MAX);
        peer.write_all(&(MAX_TRUSTED_FRAME as u32 + 1).to_be_bytes())
            .unwrap();
        assert!(matches!(
            ch.try_recv(),
            Err(ChannelError::Violation(Violation::FrameSize(n))) if n == MAX_TRUSTED_FRAME + 1
        ));
    }

    #[test]
    fn undecodable_frame_closes() {
        let (mut ch, mut peer) = raw_pair();
        // Variant 200 of ClassifierToParent does not exist.
        let mut frame = 4u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&200u32.to_le_bytes());
        frame.extend_from_slice(&wire::encode(&log("after")).unwrap());
        peer.write_all(&frame).unwrap();
        assert!(matches!(
            ch.try_recv(),
            Err(ChannelError::Violation(Violation::Decode(_)))
        ));
        // The valid frame behind it is never delivered.
        assert!(matches!(ch.try_recv(), Err(ChannelError::Closed)));
    }

    /// A maximal frame arriving in pieces never makes the buffer exceed one frame plus a read.
    #[test]
    fn buffer_stays_bounded() {
        let (mut ch, peer) = raw_pair();
        let overhead = wire::encode(&log("")).unwrap().len() - HEADER;
        let big = log(&"z".repeat(MAX_FRAME - overhead));
        let mut stream = wire::encode(&big).unwrap();
        assert_eq!(stream.len(), HEADER + MAX_FRAME);
        stream.extend_from_slice(&wire::encode(&log("tail")).unwrap());
        stream.extend_from_slice(&wire::encode(&big).unwrap());
        let writer = std::thread::spawn(move || {
            let mut peer = peer;
            for piece in stream.chunks(100_000) {
                peer.write_all(piece).unwrap();
            }
            peer
        });
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < 3 {
            assert!(
                Instant::now() < deadline,
                "timed out with {} messages",
                got.len()
            );
            match ch.try_recv().unwrap() {
                Some(m) => got.push(m),
                None => wait_for(ch.as_fd(), PollFlags::POLLIN).unwrap(),
            }
            let cap = ch.rd.buf.capacity();
            assert!(cap <= HEADER + MAX_FRAME + READ_CHUNK, "capacity {cap}");
        }
        assert_eq!(got, vec![big.clone(), log("tail"), big]);
        drop(writer.join().unwrap());
    }

    #[test]
    fn queue_flush_nonblocking() {
        let (mut parent, child) = ParentSide::pair().unwrap();
        parent.set_nonblocking(true).unwrap();
        let msg = ParentToClassifier::Policy {
            gen: Gen(1),
            rules: Some("r".repeat(60_000)),
            actions: None,
            settings: crate::proto::ClassifierSettings {
                maxthreads: 1,
                aftermaxthreads: None,
                dropipafter_secs: None,
                expireevery_secs: 60,
                dns_timeout_ms: 5000,
                identd_timeout_ms: 10000,
                answerson_timeout_ms: 5000,
                grouping: Default::default(),
            },
            ipfiles: Vec::new(),
        };
        // Queue until the socket buffer is full (bounded: 64 frames is far beyond any buffer).
        let mut sent = 0;
        while !parent.wants_write() {
            assert!(sent < 64, "socket never filled");
            parent.queue(&msg).unwrap();
            sent += 1;
        }
        parent.queue(&ParentToClassifier::Flush).unwrap();
        sent += 1;
        let reader = std::thread::spawn(move || {
            let mut child = child;
            let mut n = 0;
            while let Ok(m) = child.recv() {
                n += 1;
                if m == ParentToClassifier::Flush {
                    break;
                }
            }
            n
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while parent.wants_write() {
            assert!(Instant::now() < deadline, "flush never finished");
            wait_for(parent.as_fd(), PollFlags::POLLOUT).unwrap();
            parent.flush().unwrap();
        }
        assert_eq!(reader.join().unwrap(), sent);
    }

    #[test]
    fn queue_is_capped_when_peer_stops_reading() {
        let (mut parent, _child) = ParentSide::pair().unwrap();
        parent.set_nonblocking(true).unwrap();
        let big = ParentToClassifier::Policy {
            gen: Gen(1),
            rules: Some("r".repeat(MAX_FRAME - 100)),
            actions: None,
            settings: crate::proto::ClassifierSettings {
                maxthreads: 1,
                aftermaxthreads: None,
                dropipafter_secs: None,
                expireevery_secs: 60,
                dns_timeout_ms: 5000,
                identd_timeout_ms: 10000,
                answerson_timeout_ms: 5000,
                grouping: Default::default(),
            },
            ipfiles: Vec::new(),
        };
        let mut refused = None;
        let fit = MAX_QUEUED / MAX_FRAME;
        for i in 0..fit + 2 {
            if let Err(e) = parent.queue(&big) {
                refused = Some((i, e));
                break;
            }
        }
        match refused {
            Some((i, ChannelError::Io(e))) => {
                assert_eq!(e.kind(), io::ErrorKind::OutOfMemory);
                // The socket takes some of the first frames; the queue the rest.
                assert!(i >= fit - 1, "refused too early: {i} of {fit}");
            }
            other => panic!("queue not capped: {other:?}"),
        }
    }

    #[test]
    fn split_halves_across_threads() {
        let (parent, mut child) = ParentSide::pair().unwrap();
        let (tx, mut rx) = parent.split().unwrap();
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        tx.send(&ParentToClassifier::ConnClosed {
                            conn: crate::proto::ConnId(t * 1000 + i),
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        for _ in 0..200 {
            match child.recv().unwrap() {
                ParentToClassifier::ConnClosed { conn } => seen.push(conn.0),
                other => panic!("{other:?}"),
            }
        }
        for s in senders {
            s.join().unwrap();
        }
        seen.sort_unstable();
        let want: Vec<u64> = (0..4)
            .flat_map(|t| (0..50).map(move |i| t * 1000 + i))
            .collect();
        assert_eq!(seen, want);
        child.send(&log("to receiver")).unwrap();
        assert_eq!(rx.recv().unwrap(), log("to receiver"));
        drop(child);
        assert!(matches!(rx.recv(), Err(ChannelError::Closed)));
        assert!(matches!(
            tx.send(&ParentToClassifier::Flush),
            Err(ChannelError::Closed)
        ));
    }

    /// A held sender keeps frames back (from every clone) and one release writes them all, in
    /// order; `defer` does the same for a poll loop's channel until `flush`.
    #[test]
    fn held_and_deferred_frames_leave_together() {
        let (parent, child) = ParentSide::pair().unwrap();
        let (_ptx, mut prx) = parent.split().unwrap();
        let (ctx, _crx) = child.split().unwrap();
        prx.sock.set_nonblocking(true).unwrap();
        ctx.hold();
        let other = ctx.clone();
        ctx.send(&log("one")).unwrap();
        other.send(&log("two")).unwrap();
        assert!(
            matches!(prx.try_recv(), Ok(None)),
            "nothing leaves while held"
        );
        ctx.release().unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < 2 && Instant::now() < deadline {
            match prx.try_recv().unwrap() {
                Some(m) => got.push(m),
                None => wait_for(prx.as_fd(), PollFlags::POLLIN).unwrap(),
            }
        }
        assert_eq!(got, vec![log("one"), log("two")]);
        // Released: the next frame goes straight out.
        assert!(matches!(prx.try_recv(), Ok(None)));
        ctx.send(&log("three")).unwrap();
        wait_for(prx.as_fd(), PollFlags::POLLIN).unwrap();
        assert_eq!(prx.try_recv().unwrap(), Some(log("three")));

        let (mut parent, mut child) = ParentSide::pair().unwrap();
        parent.set_nonblocking(true).unwrap();
        child.set_nonblocking(true).unwrap();
        parent.defer(&ParentToClassifier::Flush).unwrap();
        assert!(parent.wants_write());
        assert!(
            matches!(child.try_recv(), Ok(None)),
            "nothing leaves before flush"
        );
        parent.flush().unwrap();
        assert!(!parent.wants_write());
        wait_for(child.as_fd(), PollFlags::POLLIN).unwrap();
        assert_eq!(child.try_recv().unwrap(), Some(ParentToClassifier::Flush));
    }
}
