//! Framing a PROXY protocol header (HAProxy's, v1 text and v2 binary) off a connection's first
//! bytes without reading past it: the `Header` state's reader (conns.rs) and the judgement of
//! what has arrived. The header itself is parsed by the `proxy-header` crate. See proxy.rs for
//! how the parent uses it, and whose bytes these are.
//!
//! - v1 is one line of at most [`V1_MAX`] bytes ending in CRLF; bytes are peeked and only
//!   the line (or, while it is incomplete, what has arrived of it) is consumed;
//! - v2 is 16 fixed bytes then as many as its length field says, at most [`V2_MAX_BODY`].
//!
//! The socket is never made non-blocking (its service wants a blocking one): every read is
//! `MSG_DONTWAIT`, so a slow peer cannot stall the loop.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use proxy_header::{ParseConfig, Protocol, ProxyHeader};

use super::listen::unmap;

/// How long a connection on a proxy listen may take to send its whole header. A load balancer
/// sends it with its first packet; anything slower is not one, or is stuck.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(5);

/// The longest v1 header, CRLF included (the specification's figure).
pub const V1_MAX: usize = 107;

/// The v2 header's fixed part: signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;

/// The most v2 address and TLV bytes taken. An address block is at most 216 bytes (AF_UNIX);
/// HAProxy's TLVs (unique id, ALPN, authority, SSL details) stay well inside the rest.
pub const V2_MAX_BODY: usize = 512;

/// The most bytes a header can take from a connection.
const MAX_HEADER: usize = V2_FIXED + V2_MAX_BODY;

const V1_SIGNATURE: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// What the bytes at the start of a connection amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Judged {
    /// A whole header of `len` bytes. `addrs` is (client, address reached); None for v2
    /// LOCAL and v1 UNKNOWN (use the connection's own addresses).
    Complete {
        len: usize,
        version: u8,
        addrs: Option<(SocketAddr, SocketAddr)>,
    },
    /// A header so far; more bytes are needed.
    NeedMore,
    /// The connection does not start with a PROXY header.
    Missing,
    /// It starts like one, but is not a valid one.
    Malformed(&'static str),
}

/// Judges `buf`, every byte received so far. Never looks past the header's end (the v1 CRLF,
/// the v2 length), so the bytes after it are never taken for part of it.
pub fn judge(buf: &[u8]) -> Judged {
    match buf.first() {
        None => Judged::NeedMore,
        Some(b'P') => judge_v1(buf),
        Some(b'\r') => judge_v2(buf),
        Some(_) => Judged::Missing,
    }
}

/// Whether `buf` and `sig` agree on their common length.
fn agrees(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf.get(..n) == sig.get(..n)
}

fn judge_v1(buf: &[u8]) -> Judged {
    if !agrees(buf, V1_SIGNATURE) {
        return Judged::Missing;
    }
    let window = buf.get(..buf.len().min(V1_MAX)).unwrap_or(buf);
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Judged::Malformed("a v1 header longer than 107 bytes")
        } else {
            Judged::NeedMore
        };
    };
    let line = buf.get(..=nl).unwrap_or(buf);
    let cfg = ParseConfig {
        include_tlvs: false,
        allow_v1: true,
        allow_v2: false,
    };
    match ProxyHeader::parse(line, cfg) {
        Ok((h, len)) if len == line.len() => complete(&h, len, 1),
        _ => Judged::Malformed("a bad v1 header line"),
    }
}

fn judge_v2(buf: &[u8]) -> Judged {
    if !agrees(buf, V2_SIGNATURE) {
        return Judged::Missing;
    }
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Judged::NeedMore;
    };
    let body = usize::from(u16::from_be_bytes([hi, lo]));
    if body > V2_MAX_BODY {
        return Judged::Malformed("a v2 header longer than 528 bytes");
    }
    let Some(header) = buf.get(..V2_FIXED + body) else {
        return Judged::NeedMore;
    };
    let cfg = ParseConfig {
        include_tlvs: false,
        allow_v1: false,
        allow_v2: true,
    };
    match ProxyHeader::parse(header, cfg) {
        Ok((h, len)) if len == header.len() => complete(&h, len, 2),
        _ => Judged::Malformed("a bad v2 header"),
    }
}

fn complete(h: &ProxyHeader<'_>, len: usize, version: u8) -> Judged {
    let addrs = match h.proxied_address() {
        None => None,
        Some(a) if a.protocol == Protocol::Datagram => {
            return Judged::Malformed("a header for a UDP connection")
        }
        Some(a) => Some((unmap(a.source), unmap(a.destination))),
    };
    Judged::Complete {
        len,
        version,
        addrs,
    }
}

/// Why a header was not had.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The peer closed (or reset) the connection; `partial`: after some header bytes.
    Closed {
        partial: bool,
    },
    Missing,
    Malformed(&'static str),
}

/// What one [`HeaderRead::advance`] achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing (more) to read yet.
    Blocked,
    /// The header is in and consumed; the next byte on the socket is the client's first.
    Done {
        version: u8,
        addrs: Option<(SocketAddr, SocketAddr)>,
    },
    Failed(HeaderError),
}

/// A connection whose header is being read.
#[derive(Debug)]
pub struct HeaderRead {
    stream: TcpStream,
    /// The header bytes consumed so far (only while it is incomplete).
    got: Vec<u8>,
    deadline: Instant,
}

impl HeaderRead {
    pub fn new(stream: TcpStream, now: Instant) -> HeaderRead {
        HeaderRead {
            stream,
            got: Vec::new(),
            deadline: now + HEADER_DEADLINE,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Reads what has arrived of the header, without blocking: peeks, judges, and consumes
    /// only header bytes (all of them while it is incomplete, so a level-triggered poll does
    /// not keep waking for bytes already seen).
    pub fn advance(&mut self) -> Step {
        let mut peek = [0u8; MAX_HEADER];
        // judge() refuses a header before it outgrows MAX_HEADER, so there is always room;
        // an empty window would read as end-of-file, hence the explicit test.
        let room = MAX_HEADER.saturating_sub(self.got.len());
        let Some(window) = peek.get_mut(..room).filter(|w| !w.is_empty()) else {
            return Step::Failed(HeaderError::Malformed("a header too long"));
        };
        let fd = self.stream.as_raw_fd();
        let n = match recv(fd, window, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
            Ok(0) => {
                return Step::Failed(HeaderError::Closed {
                    partial: !self.got.is_empty(),
                })
            }
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => return Step::Blocked,
            Err(_) => {
                return Step::Failed(HeaderError::Closed {
                    partial: !self.got.is_empty(),
                })
            }
        };
        let fresh = window.get(..n).unwrap_or_default();
        let judged = if self.got.is_empty() {
            judge(fresh)
        } else {
            let mut all = self.got.clone();
            all.extend_from_slice(fresh);
            judge(&all)
        };
        let (take, step) = match judged {
            Judged::Complete {
                len,
                version,
                addrs,
            } => (
                len.saturating_sub(self.got.len()),
                Step::Done { version, addrs },
            ),
            Judged::NeedMore => (n, Step::Blocked),
            Judged::Missing => return Step::Failed(HeaderError::Missing),
            Judged::Malformed(why) => return Step::Failed(HeaderError::Malformed(why)),
        };
        // Consume exactly `take` bytes: they were peeked, so they are there to read.
        let mut sink = [0u8; MAX_HEADER];
        let Some(dst) = sink.get_mut(..take) else {
            return Step::Failed(HeaderError::Malformed("a header too long"));
        };
        match recv(fd, dst, MsgFlags::MSG_DONTWAIT) {
            Ok(k) if k == take => {}
            _ => {
                return Step::Failed(HeaderError::Closed {
                    partial: !self.got.is_empty(),
                })
            }
        }
        if step == Step::Blocked {
            self.got.extend_from_slice(dst);
        } else {
            self.got = Vec::new();
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_tcp4() -> Vec<u8> {
        // 127.0.0.7:40000 -> 127.0.0.1:8080
        v2(
            0x21,
            0x11,
            &[127, 0, 0, 7, 127, 0, 0, 1, 0x9c, 0x40, 0x1f, 0x90],
        )
    }

    #[test]
    fn judge_rows() {
        let v1 = b"PROXY TCP4 127.0.0.7 127.0.0.1 40000 8080\r\n";
        let want = Judged::Complete {
            len: v1.len(),
            version: 1,
            addrs: Some((sa("127.0.0.7:40000"), sa("127.0.0.1:8080"))),
        };
        assert_eq!(judge(v1), want);
        // The client's bytes after the header are not part of it.
        let mut more = v1.to_vec();
        more.extend_from_slice(b"HELO x\r\n");
        assert_eq!(judge(&more), want);
        let v6 = b"PROXY TCP6 2001:db8::7 ::1 1 2\r\n";
        assert!(matches!(
            judge(v6),
            Judged::Complete { addrs: Some((s, d)), .. } if s == sa("[2001:db8::7]:1") && d == sa("[::1]:2")
        ));
        let mapped = b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:192.0.2.1 1 2\r\n";
        assert!(
            matches!(
                judge(mapped),
                Judged::Complete { addrs: Some((s, _)), .. } if s == sa("192.0.2.7:1")
            ),
            "v4-mapped clients are IPv4, as accepted peers are"
        );
        assert_eq!(
            judge(b"PROXY UNKNOWN\r\n"),
            Judged::Complete {
                len: 15,
                version: 1,
                addrs: None
            }
        );

        let h = v2_tcp4();
        let want2 = Judged::Complete {
            len: 28,
            version: 2,
            addrs: Some((sa("127.0.0.7:40000"), sa("127.0.0.1:8080"))),
        };
        assert_eq!(judge(&h), want2);
        let mut more = h.clone();
        more.extend_from_slice(b"\r\n\r\nrest");
        assert_eq!(judge(&more), want2);
        // LOCAL: a health check; the connection's own addresses.
        assert_eq!(
            judge(&v2(0x20, 0x00, &[])),
            Judged::Complete {
                len: 16,
                version: 2,
                addrs: None
            }
        );
        // TLVs after the addresses are skipped by length.
        let mut body = vec![127, 0, 0, 7, 127, 0, 0, 1, 0, 1, 0, 2];
        body.extend_from_slice(&[0x05, 0, 3, b'a', b'b', b'c']);
        assert!(matches!(
            judge(&v2(0x21, 0x11, &body)),
            Judged::Complete { len: 34, .. }
        ));

        // Incomplete: every prefix of a header needs more.
        for i in 0..v1.len() {
            assert_eq!(judge(&v1[..i]), Judged::NeedMore, "v1 prefix {i}");
        }
        for i in 0..h.len() {
            assert_eq!(judge(&h[..i]), Judged::NeedMore, "v2 prefix {i}");
        }

        let rows: &[(&[u8], Judged)] = &[
            (b"GET / HTTP/1.0\r\n", Judged::Missing),
            (b"POST / HTTP/1.0\r\n", Judged::Missing),
            (b"PROXX", Judged::Missing),
            (b"\r\n\r\n\0\r\nQUIZ", Judged::Missing),
            (b"\r\nHELO", Judged::Missing),
            (b"SSH-2.0-x\r\n", Judged::Missing),
            (
                b"PROXY TCP4 127.0.0.7 127.0.0.1 40000\r\n",
                Judged::Malformed("a bad v1 header line"),
            ),
            (
                b"PROXY TCP4 127.0.0.7 ::1 1 2\r\n",
                Judged::Malformed("a bad v1 header line"),
            ),
            (
                b"PROXY TCP4 300.0.0.7 127.0.0.1 1 2\r\n",
                Judged::Malformed("a bad v1 header line"),
            ),
            (
                b"PROXY TCP4 127.0.0.7 127.0.0.1 1 70000\r\n",
                Judged::Malformed("a bad v1 header line"),
            ),
            (
                b"PROXY UDP4 127.0.0.7 127.0.0.1 1 2\r\n",
                Judged::Malformed("a bad v1 header line"),
            ),
            (
                b"PROXY TCP4 127.0.0.7 127.0.0.1 1 2\n",
                Judged::Malformed("a bad v1 header line"),
            ),
        ];
        for (input, want) in rows {
            assert_eq!(&judge(input), want, "{:?}", String::from_utf8_lossy(input));
        }
        // 107 bytes without a line end.
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(V1_MAX, b'1');
        assert_eq!(
            judge(&long),
            Judged::Malformed("a v1 header longer than 107 bytes")
        );
        long.truncate(V1_MAX - 1);
        assert_eq!(judge(&long), Judged::NeedMore, "limit - 1");
        // v2: a length over the cap, a bad version, a UDP header, an address block too short.
        let mut big = v2(0x21, 0x11, &[]);
        big[14..16].copy_from_slice(&((V2_MAX_BODY + 1) as u16).to_be_bytes());
        assert_eq!(
            judge(&big),
            Judged::Malformed("a v2 header longer than 528 bytes")
        );
        let mut at_cap = v2(0x21, 0x11, &[0; V2_MAX_BODY]);
        at_cap[16..20].copy_from_slice(&[127, 0, 0, 7]);
        assert!(
            matches!(judge(&at_cap), Judged::Complete { len: 528, .. }),
            "the cap itself is taken"
        );
        assert_eq!(
            judge(&v2(0x11, 0x11, &[0; 12])),
            Judged::Malformed("a bad v2 header")
        );
        assert_eq!(
            judge(&v2(0x21, 0x12, &[0; 12])),
            Judged::Malformed("a header for a UDP connection")
        );
        assert_eq!(
            judge(&v2(0x21, 0x11, &[0; 8])),
            Judged::Malformed("a bad v2 header")
        );
        assert_eq!(
            judge(&v2(0x21, 0x99, &[0; 12])),
            Judged::Malformed("a bad v2 header")
        );
    }

    /// Mangled and random inputs: judge never panics, never claims more bytes than it was
    /// given or than a header may have, and a v1 header it takes ends at its first LF.
    #[test]
    fn judge_holds_its_bounds_on_any_input() {
        let seeds: Vec<Vec<u8>> = vec![
            b"PROXY TCP4 127.0.0.7 127.0.0.1 40000 8080\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::7 ::1 1 2\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2_tcp4(),
            v2(0x20, 0x00, &[]),
            v2(0x21, 0x21, &[0; 36]),
            v2(0x21, 0x31, &[0; 216]),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000u32 {
            let mut b = seeds[round as usize % seeds.len()].clone();
            for _ in 0..(next() % 4) {
                let r = next();
                let i = (r >> 8) as usize % (b.len() + 1);
                match r % 4 {
                    0 if i < b.len() => b[i] = (r >> 32) as u8,
                    1 => b.insert(i, (r >> 40) as u8),
                    2 if i < b.len() => {
                        b.remove(i);
                    }
                    _ => b.truncate(i),
                }
            }
            if round % 7 == 0 {
                b = (0..next() % 600).map(|_| next() as u8).collect();
            }
            if let Judged::Complete { len, version, .. } = judge(&b) {
                assert!(len <= b.len() && len <= MAX_HEADER, "{b:?}");
                if version == 1 {
                    assert!(len <= V1_MAX);
                    assert_eq!(b.iter().position(|&c| c == b'\n'), Some(len - 1));
                }
            }
        }
    }

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    /// Advances until something other than Blocked, bounded.
    fn run(r: &mut HeaderRead) -> Step {
        for _ in 0..200 {
            match r.advance() {
                Step::Blocked => std::thread::sleep(Duration::from_millis(5)),
                other => return other,
            }
        }
        Step::Blocked
    }

    #[test]
    fn the_service_gets_every_byte_after_the_header() {
        for header in [
            b"PROXY TCP4 127.0.0.7 127.0.0.1 40000 8080\r\n".to_vec(),
            v2_tcp4(),
        ] {
            let (mut c, s) = pair();
            let mut r = HeaderRead::new(s, Instant::now());
            assert_eq!(r.advance(), Step::Blocked, "nothing sent yet");
            // In pieces, the body starting in the same write as the header's end.
            let (a, b) = header.split_at(7);
            c.write_all(a).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(r.advance(), Step::Blocked);
            let mut rest = b.to_vec();
            rest.extend_from_slice(b"PROXY hello\r\n");
            c.write_all(&rest).unwrap();
            let step = run(&mut r);
            assert!(
                matches!(step, Step::Done { addrs: Some((s, _)), .. } if s == sa("127.0.0.7:40000")),
                "{step:?}"
            );
            drop(c);
            let mut got = Vec::new();
            r.into_stream().read_to_end(&mut got).unwrap();
            assert_eq!(got, b"PROXY hello\r\n");
        }
    }

    #[test]
    fn closed_missing_and_malformed() {
        let (c, s) = pair();
        drop(c);
        let mut r = HeaderRead::new(s, Instant::now());
        assert_eq!(
            run(&mut r),
            Step::Failed(HeaderError::Closed { partial: false })
        );

        let (mut c, s) = pair();
        c.write_all(b"PROXY TCP4 1.2").unwrap();
        let mut r = HeaderRead::new(s, Instant::now());
        assert_eq!(run(&mut r), Step::Blocked, "a partial header waits");
        drop(c);
        assert_eq!(
            run(&mut r),
            Step::Failed(HeaderError::Closed { partial: true })
        );

        let (mut c, s) = pair();
        c.write_all(b"EHLO client\r\n").unwrap();
        let mut r = HeaderRead::new(s, Instant::now());
        assert_eq!(run(&mut r), Step::Failed(HeaderError::Missing));

        let (mut c, s) = pair();
        c.write_all(b"PROXY TCP4 x y 1 2\r\n").unwrap();
        let mut r = HeaderRead::new(s, Instant::now());
        assert!(matches!(
            run(&mut r),
            Step::Failed(HeaderError::Malformed(_))
        ));
    }
}
