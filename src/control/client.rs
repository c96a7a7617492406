//! One control client: its credentials, the bytes of the request it is sending, the reply
//! being written, and its deadlines. One request at a time: the next line is read only once
//! the reply to the last one is written.
//!
//! Runs in the control worker. Everything read here is a local user's bytes: bounded
//! ([`MAX_REQUEST`]), timed ([`REQUEST_TIME`]), and decoded only as JSON into typed requests.

use std::io::{ErrorKind as IoKind, Read};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use privsep::control::{ErrorKind, ListQuery, Reply, Request, MAX_REQUEST};

use super::auth::Peer;
use super::outbox::{write_out, Wrote};

/// Longest a client may take to send a whole request once it has begun one.
pub const REQUEST_TIME: Duration = Duration::from_secs(5);
/// Longest a client may stay connected without sending anything (between `watch` refreshes).
pub const IDLE_TIME: Duration = Duration::from_secs(600);
/// Longest a reply may take to be read by its client.
pub const WRITE_TIME: Duration = Duration::from_secs(10);

/// What the client waits for from the parent.
#[derive(Debug)]
pub enum Waiting {
    /// A `list`: the table comes back and is viewed here.
    List(ListQuery),
    Other,
}

#[derive(Debug)]
pub struct Client {
    pub stream: UnixStream,
    pub peer: Peer,
    inbuf: Vec<u8>,
    /// When the request now being read began (its first byte).
    begun: Option<Instant>,
    last_input: Instant,
    out: Vec<u8>,
    written: usize,
    writing_since: Option<Instant>,
    pub waiting: Option<Waiting>,
    /// Close once the reply is written (after a protocol error).
    closing: bool,
}

/// What reading found.
#[derive(Debug)]
pub enum Input {
    /// A whole request line.
    Line(Vec<u8>),
    /// Nothing complete yet.
    Nothing,
    /// The client closed its end or the socket failed.
    Gone,
    /// Too long: answered with an error, closed after.
    TooLong,
}

impl Client {
    pub fn new(stream: UnixStream, peer: Peer, now: Instant) -> Client {
        Client {
            stream,
            peer,
            inbuf: Vec::new(),
            begun: None,
            last_input: now,
            out: Vec::new(),
            written: 0,
            writing_since: None,
            waiting: None,
            closing: false,
        }
    }

    /// Whether it can take a new request: not waiting for the parent, nothing left to write.
    pub fn idle(&self) -> bool {
        self.waiting.is_none() && self.out.is_empty() && !self.closing
    }

    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether it is to be read (a client that is being answered is not read, so a flood of
    /// pipelined requests waits in the socket, not in our memory).
    pub fn wants_read(&self) -> bool {
        self.idle()
    }

    /// Reads what is there and returns the next whole line, if any.
    pub fn read(&mut self, now: Instant) -> Input {
        if let Some(line) = self.take_line() {
            return Input::Line(line);
        }
        let mut buf = [0u8; 8192];
        // Bounded: each round either fills the buffer towards MAX_REQUEST or ends.
        for _ in 0..=(MAX_REQUEST / buf.len() + 1) {
            match self.stream.read(&mut buf) {
                Ok(0) => return Input::Gone,
                Ok(n) => {
                    self.last_input = now;
                    if self.begun.is_none() {
                        self.begun = Some(now);
                    }
                    self.inbuf
                        .extend_from_slice(buf.get(..n).unwrap_or_default());
                    if let Some(line) = self.take_line() {
                        return Input::Line(line);
                    }
                    if self.inbuf.len() > MAX_REQUEST {
                        return Input::TooLong;
                    }
                }
                Err(e) if e.kind() == IoKind::WouldBlock => return Input::Nothing,
                Err(e) if e.kind() == IoKind::Interrupted => continue,
                Err(_) => return Input::Gone,
            }
        }
        Input::Nothing
    }

    fn take_line(&mut self) -> Option<Vec<u8>> {
        let end = self.inbuf.iter().position(|b| *b == b'\n')?;
        if end >= MAX_REQUEST {
            return None;
        }
        let mut line: Vec<u8> = self.inbuf.drain(..=end).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        self.begun = (!self.inbuf.is_empty()).then_some(self.last_input);
        Some(line)
    }

    /// Queues `reply` as one JSON line.
    pub fn send(&mut self, reply: &Reply, now: Instant) {
        self.waiting = None;
        match serde_json::to_vec(reply) {
            Ok(mut v) => {
                v.push(b'\n');
                self.out = v;
            }
            Err(e) => {
                let r = Reply::error(ErrorKind::Failed, format!("cannot encode the reply: {e}"));
                self.out = serde_json::to_vec(&r).unwrap_or_default();
                self.out.push(b'\n');
            }
        }
        self.written = 0;
        self.writing_since = Some(now);
    }

    /// Answers with an error and closes once it is written.
    pub fn refuse(&mut self, kind: ErrorKind, message: String, now: Instant) {
        self.send(&Reply::error(kind, message), now);
        self.closing = true;
        self.inbuf.clear();
    }

    /// Writes what it can; false when the client is to be closed.
    pub fn write(&mut self) -> bool {
        match write_out(&mut self.stream, &self.out, &mut self.written) {
            Wrote::All => {}
            Wrote::Blocked => return true,
            Wrote::Failed => return false,
        }
        self.out = Vec::new();
        self.written = 0;
        self.writing_since = None;
        !self.closing
    }

    /// The next time one of its deadlines passes.
    pub fn deadline(&self) -> Option<Instant> {
        if let Some(t) = self.writing_since {
            return Some(t + WRITE_TIME);
        }
        if self.waiting.is_some() {
            return None;
        }
        Some(match self.begun {
            Some(t) => t + REQUEST_TIME,
            None => self.last_input + IDLE_TIME,
        })
    }

    /// Why it is to be dropped at `now`, if a deadline passed.
    pub fn expired(&self, now: Instant) -> Option<&'static str> {
        if self.writing_since.is_some_and(|t| now >= t + WRITE_TIME) {
            return Some("did not read its reply");
        }
        if self.waiting.is_some() || self.writing_since.is_some() {
            return None;
        }
        match self.begun {
            Some(t) if now >= t + REQUEST_TIME => Some("sent half a request and stalled"),
            None if now >= self.last_input + IDLE_TIME => Some("idle"),
            _ => None,
        }
    }
}

/// Decodes one request line; Err is the message for a `bad-request` reply.
pub fn decode(line: &[u8]) -> Result<Request, String> {
    let req: Request = serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))?;
    req.check().map_err(|e| format!("bad request: {e}"))?;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn decode_takes_the_documented_json_and_refuses_the_rest() {
        assert_eq!(decode(b"\"reload\""), Ok(Request::Reload));
        assert!(matches!(
            decode(br#"{"list":{"filter":{"addr":["127.0.0.0/8"]},"limit":5}}"#),
            Ok(Request::List(q)) if q.limit == Some(5) && q.filter.addr.len() == 1
        ));
        assert!(matches!(
            decode(br#"{"kill":{"ids":[3,4]}}"#),
            Ok(Request::Kill(k)) if k.ids == [3, 4]
        ));
        for bad in [
            &b"{"[..],
            b"\"nosuch\"",
            br#"{"list":{"filter":{"addr":["300.0.0.1"]}}}"#,
            br#"{"list":{"bogus":1}}"#,
            br#"{"kill":{}}"#,
            br#"{"change":{"id":1,"timeout":99999999999}}"#,
            br#"{"explain":{"addr":"127.0.0.1","hostname":"a b"}}"#,
        ] {
            let e = decode(bad).unwrap_err();
            assert!(e.starts_with("bad request: "), "{e}");
        }
    }

    #[test]
    fn lines_are_split_bounded_and_timed() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let peer = Peer {
            uid: 0,
            gid: 0,
            pid: 1,
            groups: vec![],
        };
        let t0 = Instant::now();
        let mut c = Client::new(a, peer, t0);
        b.write_all(b"\"status\"\r\n\"reload\"\n\"fl").unwrap();
        assert!(matches!(c.read(t0), Input::Line(l) if l == b"\"status\""));
        assert!(matches!(c.read(t0), Input::Line(l) if l == b"\"reload\""));
        assert!(matches!(c.read(t0), Input::Nothing));
        // Half a request: expires after REQUEST_TIME.
        assert_eq!(c.expired(t0 + REQUEST_TIME / 2), None);
        assert_eq!(
            c.expired(t0 + REQUEST_TIME),
            Some("sent half a request and stalled")
        );
        let big = vec![b'x'; MAX_REQUEST + 10];
        b.write_all(&big).unwrap_or(());
        let mut got = Input::Nothing;
        for _ in 0..100 {
            got = c.read(t0);
            if !matches!(got, Input::Nothing) {
                break;
            }
        }
        assert!(matches!(got, Input::TooLong), "{got:?}");
    }
}
