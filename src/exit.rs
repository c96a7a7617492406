//! Exit codes and the binary's top-level error type.
//!
//! Runs in every role of the `portnanny` binary. Exit codes follow s6 because portnanny runs under
//! supervisors that read them: 0 normal exit, 100 "permanent" (usage error, invalid
//! configuration: restarting will not help), 111 "temporary" (a system call failed, a worker
//! could not be started or its privilege drop could not be verified).

use std::fmt;
use std::process::ExitCode;

/// Normal exit.
pub const EXIT_OK: u8 = 0;
/// Usage error or invalid configuration: do not restart.
pub const EXIT_USAGE: u8 = 100;
/// Temporary or system error, including a failed privilege drop.
pub const EXIT_SYSTEM: u8 = 111;

/// Why the program stops. The message is printed (or logged) once, by `main`.
#[derive(Debug)]
pub enum Error {
    /// Bad command line; the usage text is printed after the message.
    Usage(String),
    /// The configuration could not be used (exit 100).
    Config(String),
    /// A system-level failure (exit 111).
    System(String),
}

impl Error {
    pub fn code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Config(_) => EXIT_USAGE,
            Error::System(_) => EXIT_SYSTEM,
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }

    /// A system error with context: `what: err`.
    pub fn system(what: impl fmt::Display, err: impl fmt::Display) -> Error {
        Error::System(format!("{what}: {err}"))
    }

    /// A configuration error with context: `what: err`.
    pub fn config(what: impl fmt::Display, err: impl fmt::Display) -> Error {
        Error::Config(format!("{what}: {err}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Config(m) | Error::System(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(Error::Usage("x".into()).code(), 100);
        assert_eq!(Error::Config("x".into()).code(), 100);
        assert_eq!(Error::System("x".into()).code(), 111);
        assert_eq!(Error::system("bind", "in use").to_string(), "bind: in use");
    }
}
