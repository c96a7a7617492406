//! Writing a reply to a client without waiting: the one loop both the control socket's clients
//! (client.rs) and the XML-RPC connections (xmlrpc/http.rs) use.
//!
//! Runs in the control worker; the peer is untrusted, so a write never blocks (the sockets are
//! non-blocking) and the caller's deadline ends a client that stops reading.

use std::io::{ErrorKind, Write};

/// How far a write got.
#[derive(Debug, PartialEq, Eq)]
pub enum Wrote {
    /// All of `out` is written.
    All,
    /// The socket is full; poll for POLLOUT and call again.
    Blocked,
    /// The peer is gone (or closed its side): close it.
    Failed,
}

/// Writes `out[*written..]` until it is all out or the socket is full.
pub fn write_out(stream: &mut impl Write, out: &[u8], written: &mut usize) -> Wrote {
    // Bounded: each round writes something or stops.
    while *written < out.len() {
        match stream.write(out.get(*written..).unwrap_or_default()) {
            Ok(0) => return Wrote::Failed,
            Ok(n) => *written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Wrote::Blocked,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Wrote::Failed,
        }
    }
    Wrote::All
}
