//! `nannyctl`'s exit codes and the one error type every command returns.
//!
//! Runs in `nannyctl` (any user). The codes are distinct per cause so scripts can branch on
//! them, and small: 2 is what getopts-style tools (POSIX utilities, grep, diff) exit with on a
//! usage error, and a bad request is the same kind of mistake (asking again will not help), so
//! they share it; 1 is the generic failure, as in systemctl; 3–5 are ours. Nothing reaches 126
//! and above, which shells keep for "cannot execute", "not found" and death by signal.

use std::fmt;

use privsep::control::ErrorKind;

/// Done.
pub const EXIT_OK: u8 = 0;
/// The daemon could not do it (`failed`), did not answer in time, or answered with something
/// nannyctl cannot read.
pub const EXIT_FAILED: u8 = 1;
/// A bad command line, or a request the daemon refused as malformed (`bad-request`).
pub const EXIT_BAD_REQUEST: u8 = 2;
/// Not allowed: the daemon said `not-authorised`, or the socket's mode refused us.
pub const EXIT_NOT_AUTHORISED: u8 = 3;
/// No live connection has that id (`no-such-id`; `kill` when any id given was missing).
pub const EXIT_NO_SUCH_ID: u8 = 4;
/// The daemon is not running: no socket, connection refused, or closed without a reply.
pub const EXIT_NOT_RUNNING: u8 = 5;

/// Why a command did not succeed. The message is printed once, by `main`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fail {
    /// A bad command line; the usage hint is printed after it.
    Usage(String),
    /// The daemon's error reply.
    Daemon { kind: ErrorKind, message: String },
    /// The socket's permissions refused us before the daemon could.
    Denied(String),
    /// Nothing answers on the socket.
    NotRunning(String),
    /// Our side failed: a timeout, an unreadable reply, an I/O error.
    Failed(String),
}

impl Fail {
    pub fn code(&self) -> u8 {
        match self {
            Fail::Usage(_) => EXIT_BAD_REQUEST,
            Fail::Daemon { kind, .. } => code_of(*kind),
            Fail::Denied(_) => EXIT_NOT_AUTHORISED,
            Fail::NotRunning(_) => EXIT_NOT_RUNNING,
            Fail::Failed(_) => EXIT_FAILED,
        }
    }
}

/// The exit code of a daemon's error reply.
pub fn code_of(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Failed => EXIT_FAILED,
        ErrorKind::BadRequest => EXIT_BAD_REQUEST,
        ErrorKind::NotAuthorised => EXIT_NOT_AUTHORISED,
        ErrorKind::NoSuchId => EXIT_NO_SUCH_ID,
    }
}

/// The kind's name as it is on the wire (`not-authorised`), for messages.
pub fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Failed => "failed",
        ErrorKind::BadRequest => "bad-request",
        ErrorKind::NotAuthorised => "not-authorised",
        ErrorKind::NoSuchId => "no-such-id",
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Usage(m) | Fail::Denied(m) | Fail::NotRunning(m) | Fail::Failed(m) => {
                f.write_str(m)
            }
            Fail::Daemon { kind, message } => write!(f, "{}: {message}", kind_name(*kind)),
        }
    }
}

impl std::error::Error for Fail {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_has_its_own_code() {
        let rows: &[(Fail, u8)] = &[
            (Fail::Usage("x".into()), 2),
            (
                Fail::Daemon {
                    kind: ErrorKind::Failed,
                    message: "x".into(),
                },
                1,
            ),
            (
                Fail::Daemon {
                    kind: ErrorKind::BadRequest,
                    message: "x".into(),
                },
                2,
            ),
            (
                Fail::Daemon {
                    kind: ErrorKind::NotAuthorised,
                    message: "x".into(),
                },
                3,
            ),
            (
                Fail::Daemon {
                    kind: ErrorKind::NoSuchId,
                    message: "x".into(),
                },
                4,
            ),
            (Fail::Denied("x".into()), 3),
            (Fail::NotRunning("x".into()), 5),
            (Fail::Failed("x".into()), 1),
        ];
        for (f, want) in rows {
            assert_eq!(f.code(), *want, "{f:?}");
        }
        // The wire names, so a message can be grepped for the same word the JSON has.
        for k in [
            ErrorKind::Failed,
            ErrorKind::BadRequest,
            ErrorKind::NotAuthorised,
            ErrorKind::NoSuchId,
        ] {
            let json = serde_json::to_string(&k).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", kind_name(k)));
        }
        let d = Fail::Daemon {
            kind: ErrorKind::NotAuthorised,
            message: "kill: read only".into(),
        };
        assert_eq!(d.to_string(), "not-authorised: kill: read only");
    }
}
