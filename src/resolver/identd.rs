//! RFC 1413 (identd/auth) client for `identd:` and `IDENTD`.
//!
//! Runs in the resolver process (unprivileged). The reply bytes come from the peer's machine,
//! i.e. from whoever controls the address that connected to us: fully hostile. They are read
//! up to a hard cap, parsed strictly, and only a user id that passes the `IdentUser` shape check
//! (printable ASCII, at most 256 bytes) leaves this module.
//!
//! Protocol (RFC 1413 §§2–6): we connect from the address the client connected to (so a
//! multi-homed host asks about the right connection) to the peer's port 113 and send
//! `<port on the peer's side> , <port on our side>` CR LF. The answer is one line:
//! `<same ports> : USERID : <opsys>[,<charset>] : <user id>` or
//! `<same ports> : ERROR : <error token>`.
//!
//! Invariants: everything (connect, send, every read) finishes by one deadline; at most
//! [`MAX_REPLY`] bytes are read; a reply that is not a well-formed USERID line for exactly the
//! ports we asked about gives `None`, as do ERROR replies, timeouts and connection failures.
//! Deliberate difference from portnanny 2: the user id is everything after the third colon (the
//! RFC lets it contain colons); portnanny 2 refused such replies.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use privsep::proto::IdentUser;

use super::answerson::connect_from;

/// The identd (auth) TCP port.
pub const IDENTD_PORT: u16 = 113;

/// Most reply bytes we read. RFC 1413 caps a user id at 512 octets; a sane whole line is far
/// shorter than this, and anything longer is junk (or an attack on our memory).
pub const MAX_REPLY: usize = 1024;

/// The request line for the connection `remote` (the peer) → `local` (us).
pub fn request_line(remote: SocketAddr, local: SocketAddr) -> String {
    format!("{} , {}\r\n", remote.port(), local.port())
}

/// A port number as identd writes it: 1–5 ASCII digits, surrounding blanks allowed.
fn port_field(s: &str) -> Option<u16> {
    let s = s.trim_matches(|c| c == ' ' || c == '\t');
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parse one reply (the bytes read, possibly without the line end) for the query
/// `remote_port , local_port`. `None` for ERROR replies and for anything malformed.
pub fn parse_reply(reply: &[u8], remote_port: u16, local_port: u16) -> Option<IdentUser> {
    let end = reply.iter().position(|&b| b == b'\n')?;
    let line = reply.get(..end)?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).ok()?;
    let mut fields = line.splitn(4, ':');
    let ports = fields.next()?;
    let kind = fields.next()?;
    let opsys = fields.next()?;
    let user = fields.next()?;

    let (rp, lp) = ports.split_once(',')?;
    if port_field(rp)? != remote_port || port_field(lp)? != local_port {
        return None;
    }
    if kind.trim_matches(|c| c == ' ' || c == '\t') != "USERID" {
        return None;
    }
    // opsys-field: an operating system token, optionally ", charset".
    let (os, charset) = match opsys.split_once(',') {
        Some((os, cs)) => (os, Some(cs)),
        None => (opsys, None),
    };
    let token_ok = |t: &str| {
        let t = t.trim_matches(|c| c == ' ' || c == '\t');
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_graphic() && b != b',' && b != b':')
    };
    if !token_ok(os) || !charset.is_none_or(token_ok) {
        return None;
    }
    let user = user.trim_matches(|c| c == ' ' || c == '\t');
    IdentUser::try_from(user.to_owned()).ok()
}

/// Time left until `deadline`, or `None` if it has passed.
fn left(deadline: Instant) -> Option<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    (!d.is_zero()).then_some(d)
}

/// Ask the peer's identd about the connection `remote` → `local`, giving up at `deadline`.
pub fn query(remote: SocketAddr, local: SocketAddr, deadline: Instant) -> Option<IdentUser> {
    let target = SocketAddr::new(remote.ip(), IDENTD_PORT);
    let mut stream = connect_from(Some(local.ip()), target, deadline).ok()?;
    stream.set_write_timeout(Some(left(deadline)?)).ok()?;
    stream
        .write_all(request_line(remote, local).as_bytes())
        .ok()?;
    let reply = read_line(&mut stream, deadline)?;
    parse_reply(&reply, remote.port(), local.port())
}

/// Read until a newline, EOF, [`MAX_REPLY`] bytes or the deadline, whichever comes first.
/// `None` unless a newline arrived within the cap and the deadline.
fn read_line(stream: &mut TcpStream, deadline: Instant) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MAX_REPLY];
    let mut len = 0;
    while len < MAX_REPLY {
        stream.set_read_timeout(Some(left(deadline)?)).ok()?;
        let n = match stream.read(buf.get_mut(len..)?) {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        };
        let had = len;
        len += n;
        if buf.get(had..len)?.contains(&b'\n') {
            buf.truncate(len);
            return Some(buf);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_names_peer_port_first() {
        let remote: SocketAddr = "192.0.2.7:6193".parse().unwrap_or_else(|e| panic!("{e}"));
        let local: SocketAddr = "198.51.100.1:23".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(request_line(remote, local), "6193 , 23\r\n");
    }

    #[test]
    fn reply_table() {
        let long_user = "u".repeat(300);
        let long_line = format!("6193, 23 : USERID : UNIX : {long_user}\r\n");
        let rows: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
            (
                "rfc example",
                b"6193, 23 : USERID : UNIX : stjohns\r\n".to_vec(),
                Some("stjohns"),
            ),
            (
                "no blanks",
                b"6193,23:USERID:UNIX:cks\r\n".to_vec(),
                Some("cks"),
            ),
            (
                "bare LF",
                b"6193 , 23 : USERID : UNIX : cks\n".to_vec(),
                Some("cks"),
            ),
            (
                "charset field",
                b"6193, 23 : USERID : UNIX , US-ASCII : cks\r\n".to_vec(),
                Some("cks"),
            ),
            (
                "other opsys",
                b"6193, 23 : USERID : OTHER : 4e2a1f\r\n".to_vec(),
                Some("4e2a1f"),
            ),
            (
                "colon in user id",
                b"6193, 23 : USERID : UNIX : a:b\r\n".to_vec(),
                Some("a:b"),
            ),
            (
                "space inside user id",
                b"6193, 23 : USERID : UNIX : John Doe \r\n".to_vec(),
                Some("John Doe"),
            ),
            (
                "second line ignored",
                b"6193, 23 : USERID : UNIX : cks\r\njunk\r\n".to_vec(),
                Some("cks"),
            ),
            (
                "error no-user",
                b"6193, 23 : ERROR : NO-USER\r\n".to_vec(),
                None,
            ),
            (
                "error hidden-user",
                b"6193, 23 : ERROR : HIDDEN-USER\r\n".to_vec(),
                None,
            ),
            (
                "error shaped like userid",
                b"6193, 23 : ERROR : UNIX : cks\r\n".to_vec(),
                None,
            ),
            (
                "lower-case userid",
                b"6193, 23 : userid : UNIX : cks\r\n".to_vec(),
                None,
            ),
            (
                "wrong remote port",
                b"6194, 23 : USERID : UNIX : cks\r\n".to_vec(),
                None,
            ),
            (
                "wrong local port",
                b"6193, 25 : USERID : UNIX : cks\r\n".to_vec(),
                None,
            ),
            (
                "ports swapped",
                b"23, 6193 : USERID : UNIX : cks\r\n".to_vec(),
                None,
            ),
            (
                "port overflow",
                b"6193, 65559 : USERID : UNIX : cks\r\n".to_vec(),
                None,
            ),
            (
                "signed port",
                b"+6193, 23 : USERID : UNIX : cks\r\n".to_vec(),
                None,
            ),
            ("missing ports", b": USERID : UNIX : cks\r\n".to_vec(), None),
            (
                "missing opsys",
                b"6193, 23 : USERID :  : cks\r\n".to_vec(),
                None,
            ),
            (
                "empty charset",
                b"6193, 23 : USERID : UNIX , : cks\r\n".to_vec(),
                None,
            ),
            (
                "empty user",
                b"6193, 23 : USERID : UNIX :   \r\n".to_vec(),
                None,
            ),
            ("too few fields", b"6193, 23 : USERID\r\n".to_vec(), None),
            (
                "no newline",
                b"6193, 23 : USERID : UNIX : cks".to_vec(),
                None,
            ),
            ("junk", b"HTTP/1.0 400 Bad Request\r\n".to_vec(), None),
            ("binary junk", vec![0xff, 0xfe, b':', 0, b'\n'], None),
            (
                "escape in user id",
                b"6193, 23 : USERID : UNIX : a\x1b[2J\r\n".to_vec(),
                None,
            ),
            (
                "non-ascii user id",
                "6193, 23 : USERID : UNIX : j\u{f6}rg\r\n"
                    .as_bytes()
                    .to_vec(),
                None,
            ),
            ("oversized user id", long_line.into_bytes(), None),
            ("empty", Vec::new(), None),
        ];
        for (label, reply, want) in rows {
            let got = parse_reply(&reply, 6193, 23);
            assert_eq!(got.as_ref().map(IdentUser::as_str), want, "{label}");
        }
    }

    // --- A live client against a test identd on 127.113.0.N:113 (port 113 needs root). ---

    use std::net::{IpAddr, TcpListener};
    use std::thread::{self, JoinHandle};

    /// What the test identd does after reading the request.
    enum Identd {
        /// Write these chunks, pausing between them, then close.
        Chunks(Vec<Vec<u8>>, Duration),
        /// Wait, then write.
        Slow(Duration, Vec<u8>),
    }

    /// The request line and the client's address as the test identd saw them.
    type Seen = Option<(String, SocketAddr)>;

    /// Start a one-shot identd on `ip`:113, or `None` if we may not bind port 113.
    fn test_identd(ip: &str, how: Identd) -> Option<JoinHandle<Seen>> {
        let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{e}"));
        let listener = match TcpListener::bind((ip, IDENTD_PORT)) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                eprintln!("skipped: binding port 113 needs root");
                return None;
            }
            Err(e) => panic!("bind {ip}:113: {e}"),
        };
        Some(thread::spawn(move || {
            listener.set_nonblocking(true).ok()?;
            let end = Instant::now() + Duration::from_secs(5);
            let (mut conn, peer) = loop {
                match listener.accept() {
                    Ok(c) => break c,
                    Err(_) if Instant::now() < end => thread::sleep(Duration::from_millis(5)),
                    Err(_) => return None,
                }
            };
            conn.set_nonblocking(false).ok()?;
            conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(b"\n") && req.len() < 100 {
                match conn.read(&mut byte) {
                    Ok(1) => req.push(byte[0]),
                    _ => break,
                }
            }
            match how {
                Identd::Chunks(chunks, pause) => {
                    for c in chunks {
                        if conn.write_all(&c).is_err() {
                            break;
                        }
                        thread::sleep(pause);
                    }
                }
                Identd::Slow(wait, reply) => {
                    thread::sleep(wait);
                    let _ = conn.write_all(&reply);
                }
            }
            Some((String::from_utf8_lossy(&req).into_owned(), peer))
        }))
    }

    fn addrs(remote: &str, local: &str) -> (SocketAddr, SocketAddr) {
        (
            format!("{remote}:40001")
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
            format!("{local}:2525")
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    #[test]
    fn live_userid_from_the_local_address() {
        let reply = b"40001 , 2525 : USERID : UNIX , US-ASCII : alice\r\n".to_vec();
        let Some(server) = test_identd("127.113.0.1", Identd::Chunks(vec![reply], Duration::ZERO))
        else {
            return;
        };
        let (remote, local) = addrs("127.113.0.1", "127.113.1.1");
        let got = query(remote, local, Instant::now() + Duration::from_secs(3));
        assert_eq!(got.as_ref().map(IdentUser::as_str), Some("alice"));
        let seen = server.join().unwrap_or_else(|_| panic!("identd thread"));
        let (req, peer) = seen.unwrap_or_else(|| panic!("identd saw no request"));
        assert_eq!(req, "40001 , 2525\r\n", "peer's port first, ours second");
        assert_eq!(
            peer.ip().to_string(),
            "127.113.1.1",
            "sent from the local address"
        );
    }

    #[test]
    fn live_reply_in_pieces() {
        let chunks = vec![
            b"40001 , 25".to_vec(),
            b"25 : USERID : UN".to_vec(),
            b"IX : bob\r".to_vec(),
            b"\n".to_vec(),
        ];
        let Some(server) = test_identd(
            "127.113.0.2",
            Identd::Chunks(chunks, Duration::from_millis(30)),
        ) else {
            return;
        };
        let (remote, local) = addrs("127.113.0.2", "127.113.1.2");
        let got = query(remote, local, Instant::now() + Duration::from_secs(3));
        assert_eq!(got.as_ref().map(IdentUser::as_str), Some("bob"));
        let _ = server.join();
    }

    #[test]
    fn live_error_reply() {
        let reply = b"40001 , 2525 : ERROR : NO-USER\r\n".to_vec();
        let Some(server) = test_identd("127.113.0.3", Identd::Chunks(vec![reply], Duration::ZERO))
        else {
            return;
        };
        let (remote, local) = addrs("127.113.0.3", "127.113.1.3");
        assert_eq!(
            query(remote, local, Instant::now() + Duration::from_secs(3)),
            None
        );
        let _ = server.join();
    }

    #[test]
    fn live_wrong_ports() {
        let reply = b"40002 , 2525 : USERID : UNIX : mallory\r\n".to_vec();
        let Some(server) = test_identd("127.113.0.4", Identd::Chunks(vec![reply], Duration::ZERO))
        else {
            return;
        };
        let (remote, local) = addrs("127.113.0.4", "127.113.1.4");
        assert_eq!(
            query(remote, local, Instant::now() + Duration::from_secs(3)),
            None
        );
        let _ = server.join();
    }

    #[test]
    fn live_garbage_is_capped_before_the_deadline() {
        // An endless line of junk: the client must stop at MAX_REPLY bytes, not at the deadline.
        let junk = vec![vec![b'A'; 512]; 40];
        let Some(server) = test_identd(
            "127.113.0.5",
            Identd::Chunks(junk, Duration::from_millis(50)),
        ) else {
            return;
        };
        let (remote, local) = addrs("127.113.0.5", "127.113.1.5");
        let t = Instant::now();
        assert_eq!(query(remote, local, t + Duration::from_secs(5)), None);
        // The identd needs 2 s to send it all; stopping well before means the cap worked.
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        let _ = server.join();
    }

    #[test]
    fn live_binary_garbage_line() {
        let junk = vec![vec![0xff, 0x00, b':', b':', b':', 0x1b, b'\r', b'\n']];
        let Some(server) = test_identd("127.113.0.6", Identd::Chunks(junk, Duration::ZERO)) else {
            return;
        };
        let (remote, local) = addrs("127.113.0.6", "127.113.1.6");
        assert_eq!(
            query(remote, local, Instant::now() + Duration::from_secs(3)),
            None
        );
        let _ = server.join();
    }

    #[test]
    fn live_slow_identd_times_out() {
        let reply = b"40001 , 2525 : USERID : UNIX : late\r\n".to_vec();
        let Some(_server) = test_identd(
            "127.113.0.7",
            Identd::Slow(Duration::from_millis(2000), reply),
        ) else {
            return;
        };
        let (remote, local) = addrs("127.113.0.7", "127.113.1.7");
        let t = Instant::now();
        assert_eq!(query(remote, local, t + Duration::from_millis(400)), None);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(350) && took < Duration::from_millis(1000),
            "{took:?}"
        );
    }

    #[test]
    fn live_no_identd_is_none_at_once() {
        let (remote, local) = addrs("127.113.0.8", "127.113.1.8");
        let t = Instant::now();
        assert_eq!(query(remote, local, t + Duration::from_secs(3)), None);
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
