//! One XML-RPC client's HTTP/1.x connection: the request being read (head parsed by httparse,
//! body by Content-Length), the response being written, keep-alive and deadlines. One request
//! at a time: the next is read only once the response to the last one is written.
//!
//! Runs in the control worker, non-blocking, inside its poll loop. Every byte read here is a
//! remote peer's: the head is capped at [`MAX_HEAD`], the body at [`MAX_BODY`] (a larger one
//! up to [`MAX_DISCARD`] is read and thrown away so the client can read its fault; beyond that
//! 413 and close), the whole request must arrive within [`REQUEST_TIME`] of its first byte,
//! and an idle keep-alive connection is closed after [`IDLE_TIME`].

use std::io::{ErrorKind as IoKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::control::outbox::{write_out, Wrote};

/// Longest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body decoded (an XML-RPC call of a few ids is under 1 KiB; a kill of
/// thousands of ids fits).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest body read only to be discarded before the "too large" fault.
pub const MAX_DISCARD: usize = 4 * 1024 * 1024;
/// Most headers in a request.
const MAX_HEADERS: usize = 32;
/// Longest a client may take to send a whole request once it began one.
pub const REQUEST_TIME: Duration = Duration::from_secs(5);
/// Longest a keep-alive connection may stay without a request.
pub const IDLE_TIME: Duration = Duration::from_secs(30);
/// Longest a response may take to be read.
pub const WRITE_TIME: Duration = Duration::from_secs(10);

/// The paths served: `/` and `/RPC2` (Python's SimpleXMLRPCServer, and so pyctd, accept both).
const PATHS: [&str; 2] = ["/", "/RPC2"];

/// What reading found.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// A whole POST body.
    Call(Vec<u8>),
    /// A body over [`MAX_BODY`], now read and discarded: answer with a fault, then close.
    TooLarge(usize),
    /// Refused at the HTTP level: this status and reason, then close.
    Refuse(u16, &'static str),
    Nothing,
    Gone,
}

#[derive(Debug)]
pub struct HttpConn {
    pub stream: TcpStream,
    inbuf: Vec<u8>,
    begun: Option<Instant>,
    last_input: Instant,
    /// After a head was parsed: (body length, keep-alive asked).
    body: Option<(usize, bool)>,
    /// Bytes of a too-large body still to read and discard.
    discard: usize,
    discarded_len: usize,
    out: Vec<u8>,
    written: usize,
    writing_since: Option<Instant>,
    /// A request is with the parent.
    pub waiting: bool,
    keep_alive: bool,
    closing: bool,
}

impl HttpConn {
    pub fn new(stream: TcpStream, now: Instant) -> HttpConn {
        HttpConn {
            stream,
            inbuf: Vec::new(),
            begun: None,
            last_input: now,
            body: None,
            discard: 0,
            discarded_len: 0,
            out: Vec::new(),
            written: 0,
            writing_since: None,
            waiting: false,
            keep_alive: true,
            closing: false,
        }
    }

    pub fn wants_read(&self) -> bool {
        !self.waiting && self.out.is_empty() && !self.closing
    }

    /// Bytes of a next request already read (a pipelining client).
    pub fn has_buffered(&self) -> bool {
        !self.inbuf.is_empty()
    }

    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Reads what is there; returns a whole request when one is complete.
    pub fn read(&mut self, now: Instant) -> Input {
        let mut buf = [0u8; 16 * 1024];
        // Bounded: each round consumes input towards the caps, or ends.
        for _ in 0..=(MAX_DISCARD / buf.len() + 2) {
            let got = self.parse();
            if !matches!(got, Input::Nothing) {
                return got;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Input::Gone,
                Ok(n) => {
                    self.last_input = now;
                    if self.begun.is_none() {
                        self.begun = Some(now);
                    }
                    let chunk = buf.get(..n).unwrap_or_default();
                    if self.discard > 0 {
                        let skip = self.discard.min(chunk.len());
                        self.discard -= skip;
                        if self.discard == 0 {
                            return Input::TooLarge(self.discarded_len);
                        }
                        continue;
                    }
                    self.inbuf.extend_from_slice(chunk);
                }
                Err(e) if e.kind() == IoKind::WouldBlock => return Input::Nothing,
                Err(e) if e.kind() == IoKind::Interrupted => continue,
                Err(_) => return Input::Gone,
            }
        }
        Input::Nothing
    }

    /// Parses the buffered bytes as far as they go.
    fn parse(&mut self) -> Input {
        if self.discard > 0 {
            return Input::Nothing;
        }
        if self.body.is_none() {
            if self.inbuf.is_empty() {
                return Input::Nothing;
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            let head_len = match req.parse(&self.inbuf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) if self.inbuf.len() > MAX_HEAD => {
                    return Input::Refuse(431, "Request Header Fields Too Large")
                }
                Ok(httparse::Status::Partial) => return Input::Nothing,
                Err(httparse::Error::TooManyHeaders) => {
                    return Input::Refuse(431, "Request Header Fields Too Large")
                }
                Err(_) => return Input::Refuse(400, "Bad Request"),
            };
            if head_len > MAX_HEAD {
                return Input::Refuse(431, "Request Header Fields Too Large");
            }
            if req.method != Some("POST") {
                return Input::Refuse(405, "Method Not Allowed");
            }
            if !req.path.is_some_and(|p| PATHS.contains(&p)) {
                return Input::Refuse(404, "Not Found");
            }
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
            };
            // Chunked bodies are not taken: every XML-RPC client sends a length.
            if header("transfer-encoding").is_some() {
                return Input::Refuse(411, "Length Required");
            }
            let Some(len) = header("content-length") else {
                return Input::Refuse(411, "Length Required");
            };
            let Ok(len) = len.parse::<usize>() else {
                return Input::Refuse(400, "Bad Request");
            };
            let conn = header("connection").unwrap_or_default();
            let keep = match req.version {
                Some(1) => conn != "close",
                _ => conn == "keep-alive",
            };
            self.inbuf.drain(..head_len);
            if len > MAX_DISCARD {
                return Input::Refuse(413, "Payload Too Large");
            }
            if len > MAX_BODY {
                let have = self.inbuf.len().min(len);
                self.inbuf.clear();
                self.discard = len - have;
                self.discarded_len = len;
                if self.discard == 0 {
                    return Input::TooLarge(len);
                }
                return Input::Nothing;
            }
            self.body = Some((len, keep));
        }
        let Some((len, keep)) = self.body else {
            return Input::Nothing;
        };
        if self.inbuf.len() < len {
            return Input::Nothing;
        }
        let body: Vec<u8> = self.inbuf.drain(..len).collect();
        self.body = None;
        self.keep_alive = keep;
        self.begun = (!self.inbuf.is_empty()).then_some(self.last_input);
        Input::Call(body)
    }

    /// Queues a 200 response with an XML body (closing after it unless kept alive).
    pub fn respond(&mut self, xml: &[u8], now: Instant) {
        self.waiting = false;
        let close = !self.keep_alive || self.closing;
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nServer: portnanny\r\nContent-Type: text/xml\r\n\
             Content-Length: {}\r\n{}\r\n",
            xml.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        out.extend_from_slice(xml);
        self.out = out;
        self.written = 0;
        self.writing_since = Some(now);
        if close {
            self.closing = true;
        }
    }

    /// Answers with a fault body and closes after it (after a body too large to read).
    pub fn respond_and_close(&mut self, xml: &[u8], now: Instant) {
        self.closing = true;
        self.inbuf.clear();
        self.respond(xml, now);
    }

    /// Queues an HTTP error status and closes after it.
    pub fn refuse(&mut self, status: u16, reason: &str, now: Instant) {
        let body = format!("{status} {reason}\n");
        self.out = format!(
            "HTTP/1.1 {status} {reason}\r\nServer: portnanny\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        self.written = 0;
        self.writing_since = Some(now);
        self.waiting = false;
        self.closing = true;
        self.inbuf.clear();
    }

    /// Writes what it can; false when the connection is to be closed.
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

    /// The next time one of its deadlines passes (None while the parent has its request).
    pub fn deadline(&self) -> Option<Instant> {
        if let Some(t) = self.writing_since {
            return Some(t + WRITE_TIME);
        }
        if self.waiting {
            return None;
        }
        Some(match self.begun {
            Some(t) => t + REQUEST_TIME,
            None => self.last_input + IDLE_TIME,
        })
    }

    /// Why it is to be dropped at `now`, if a deadline passed.
    pub fn expired(&self, now: Instant) -> Option<&'static str> {
        self.deadline()
            .filter(|d| now >= *d)
            .map(|_| match (self.writing_since, self.begun) {
                (Some(_), _) => "did not read its response",
                (None, Some(_)) => "sent part of a request and stalled",
                (None, None) => "idle",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn pair() -> (HttpConn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        (HttpConn::new(s, Instant::now()), c)
    }

    fn read_until(h: &mut HttpConn, t: Instant) -> Input {
        for _ in 0..200 {
            let got = h.read(t);
            if got != Input::Nothing {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Input::Nothing
    }

    #[test]
    fn takes_posts_with_a_length_and_keeps_alive() {
        let (mut h, mut c) = pair();
        let t = Instant::now();
        c.write_all(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel")
            .unwrap();
        assert_eq!(read_until(&mut h, t), Input::Nothing);
        c.write_all(b"lo").unwrap();
        assert_eq!(read_until(&mut h, t), Input::Call(b"hello".to_vec()));
        h.respond(b"<x/>", t);
        assert!(h.write());
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("Content-Length: 4\r\n\r\n<x/>"), "{text}");
        assert!(h.wants_read());
    }

    #[test]
    fn refuses_what_is_not_a_bounded_post() {
        for (req, want) in [
            (
                &b"GET / HTTP/1.1\r\n\r\n"[..],
                Input::Refuse(405, "Method Not Allowed"),
            ),
            (
                b"POST /x HTTP/1.1\r\nContent-Length: 1\r\n\r\n",
                Input::Refuse(404, "Not Found"),
            ),
            (
                b"POST / HTTP/1.1\r\n\r\n",
                Input::Refuse(411, "Length Required"),
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Input::Refuse(411, "Length Required"),
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
                Input::Refuse(413, "Payload Too Large"),
            ),
            (
                b"\x01\x02 / HTTP/1.1\r\n\r\n",
                Input::Refuse(400, "Bad Request"),
            ),
        ] {
            let (mut h, mut c) = pair();
            c.write_all(req).unwrap();
            assert_eq!(read_until(&mut h, Instant::now()), want);
        }
        // A head that never ends.
        let (mut h, mut c) = pair();
        c.write_all(b"POST / HTTP/1.1\r\n").unwrap();
        c.write_all(&vec![b'a'; MAX_HEAD + 10]).unwrap();
        assert_eq!(
            read_until(&mut h, Instant::now()),
            Input::Refuse(431, "Request Header Fields Too Large")
        );
    }

    #[test]
    fn a_large_body_is_read_away_then_refused_and_slow_ones_expire() {
        let (mut h, mut c) = pair();
        let n = MAX_BODY + 1000;
        let t = Instant::now();
        let writer = std::thread::spawn(move || {
            c.write_all(format!("POST / HTTP/1.1\r\nContent-Length: {n}\r\n\r\n").as_bytes())
                .unwrap();
            c.write_all(&vec![b'x'; n]).unwrap();
            c
        });
        assert_eq!(read_until(&mut h, t), Input::TooLarge(n));
        let _c = writer.join().unwrap();
        assert_eq!(
            h.expired(t + REQUEST_TIME),
            Some("sent part of a request and stalled")
        );
        let (h, _c) = pair();
        assert_eq!(h.expired(Instant::now() + IDLE_TIME), Some("idle"));
    }
}
