//! Error types of the privsep crate.
//!
//! Runs in every role. A [`Violation`] is the peer's fault (it sent bytes that are not a valid
//! frame of the agreed message type): the receiver treats the peer as compromised. The other
//! types are our own failures (a syscall that failed, a check that did not hold) and name the
//! step that failed so the log line says what went wrong without a backtrace.

use std::fmt;
use std::io;

/// A peer broke the framing or message contract. Distinct from an error: a violation means the
/// peer is buggy or compromised, and the receiver closes the channel (DESIGN.md §2).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// A frame length of 0 or more than [`crate::wire::MAX_FRAME`] (checked before anything is
    /// allocated), or an outgoing message whose encoding would not fit in a frame.
    FrameSize(usize),
    /// The body ended before the message did (a length field inside the body claims more bytes
    /// than the frame holds).
    Truncated,
    /// The body is not an encoding of the expected message type: unknown variant index,
    /// invalid tag, bad UTF-8, or a newtype's shape check refused a value.
    Decode(String),
    /// The message was complete but this many bytes of the frame were left over.
    Trailing(usize),
    /// Our own message could not be encoded (a serde error other than size).
    Encode(String),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::FrameSize(n) => write!(f, "frame size {n} out of range"),
            Violation::Truncated => f.write_str("frame body ends inside the message"),
            Violation::Decode(e) => write!(f, "undecodable frame: {e}"),
            Violation::Trailing(n) => write!(f, "{n} trailing bytes after the message"),
            Violation::Encode(e) => write!(f, "cannot encode message: {e}"),
        }
    }
}

impl std::error::Error for Violation {}

/// What went wrong on a [`crate::channel::Channel`].
#[derive(Debug)]
pub enum ChannelError {
    /// The peer closed its end (EOF, EPIPE or ECONNRESET), or this channel was closed after a
    /// violation. Callers treat a worker's channel closing as the worker having died.
    Closed,
    /// A system call failed for a reason that is not the peer's fault (or the send queue is
    /// full: `ErrorKind::OutOfMemory`).
    Io(io::Error),
    /// The peer sent an oversize or undecodable frame. The channel has already shut the socket
    /// down; every later call returns `Closed`.
    Violation(Violation),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Closed => f.write_str("channel closed by peer"),
            ChannelError::Io(e) => write!(f, "channel i/o error: {e}"),
            ChannelError::Violation(v) => write!(f, "protocol violation: {v}"),
        }
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChannelError::Closed => None,
            ChannelError::Io(e) => Some(e),
            ChannelError::Violation(v) => Some(v),
        }
    }
}

impl From<Violation> for ChannelError {
    fn from(v: Violation) -> Self {
        ChannelError::Violation(v)
    }
}

/// Starting a worker, or taking over the descriptors in a freshly exec'd worker, failed.
#[derive(Debug)]
pub struct SpawnError {
    /// The step that failed, e.g. `"dup_fds"`, `"exec"`, `"check_fd"`, `"close_fds"`.
    pub step: &'static str,
    pub source: io::Error,
}

impl SpawnError {
    pub(crate) fn new(step: &'static str, source: io::Error) -> Self {
        SpawnError { step, source }
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker set-up failed at {}: {}", self.step, self.source)
    }
}

impl std::error::Error for SpawnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Why a step of the privilege drop failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum DropCause {
    /// A system call failed.
    Os(io::Error),
    /// The `caps` crate failed to read or change a capability set.
    Caps(caps::errors::CapsError),
    /// A verification found the process in a state other than the one required; the text
    /// says what was found.
    Check(String),
}

impl fmt::Display for DropCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropCause::Os(e) => write!(f, "{e}"),
            DropCause::Caps(e) => write!(f, "{e}"),
            DropCause::Check(s) => f.write_str(s),
        }
    }
}

/// A step of the privilege-drop checklist (STYLE.md §2.6) failed. The process must not go on:
/// the role main exits 111 and the parent refuses to serve without a working classifier.
#[derive(Debug)]
pub struct DropError {
    /// The checklist step, e.g. `"chroot"`, `"setresuid"`, `"verify_uid"`, `"no_new_privs"`.
    pub step: &'static str,
    pub source: DropCause,
}

impl DropError {
    pub(crate) fn os(step: &'static str, e: impl Into<io::Error>) -> Self {
        DropError {
            step,
            source: DropCause::Os(e.into()),
        }
    }

    pub(crate) fn caps(step: &'static str, e: caps::errors::CapsError) -> Self {
        DropError {
            step,
            source: DropCause::Caps(e),
        }
    }

    pub(crate) fn check(step: &'static str, what: impl Into<String>) -> Self {
        DropError {
            step,
            source: DropCause::Check(what.into()),
        }
    }
}

impl fmt::Display for DropError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "privilege drop failed at {}: {}", self.step, self.source)
    }
}

impl std::error::Error for DropError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.source {
            DropCause::Os(e) => Some(e),
            DropCause::Caps(e) => Some(e),
            DropCause::Check(_) => None,
        }
    }
}

/// Why a newtype refused a value while decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeError(pub &'static str);

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ShapeError {}
