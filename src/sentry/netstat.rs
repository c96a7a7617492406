//! The host's own sockets, from /proc/net/{tcp,tcp6,udp,udp6}: which ports have a listener (a
//! TCP socket in LISTEN, or any bound UDP socket) and which TCP/UDP 4-tuples belong to an
//! existing socket (any state, TIME_WAIT included). The sentry reports neither: a port with a
//! listener is served, not a stealth target, and a packet of an existing connection (the FIN of
//! one of the host's own connections, a reply to a UDP query) is not a probe.
//!
//! The sentry reads these files only when the kernel cannot answer sock_diag
//! ([`super::diag`]), whose dumps and lookups give the same facts without walking the whole
//! connection hash (a read of the four files costs 8.4 ms of CPU on this VM with no sockets).
//!
//! Runs in the sentry. The four files are opened before the privilege drop and the chroot
//! ([`NetTables::open`]) and re-read from offset 0 afterwards: a /proc seq_file regenerates its
//! text on every read from the start, so the chrooted sentry needs no path. The text comes from
//! the kernel; the parser still treats it as untrusted (no indexing, no unwrap).

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::FileExt;

/// TCP_LISTEN in the `st` column.
const TCP_LISTEN: u8 = 0x0A;

/// Most bytes read from one table per refresh (a host with a very large number of sockets is
/// seen partially rather than making every refresh arbitrarily slow); about 150 bytes a line,
/// so some 100,000 sockets.
const MAX_TABLE_BYTES: usize = 16 << 20;

/// Transport protocol of a socket or a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One refresh of the host's sockets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketTable {
    /// Ports with a listener, by protocol: whatever the address it is bound to (a listener on
    /// one address makes the port a served one, and `::` may or may not cover IPv4).
    listening: HashSet<(Proto, u16)>,
    /// (protocol, local, remote) of every other socket with a remote address.
    connected: HashSet<(Proto, SocketAddr, SocketAddr)>,
}

impl SocketTable {
    /// Records a listener on `port` (for a table built from elsewhere than /proc).
    pub fn add_listener(&mut self, proto: Proto, port: u16) {
        self.listening.insert((proto, port));
    }

    pub fn has_listener(&self, proto: Proto, port: u16) -> bool {
        self.listening.contains(&(proto, port))
    }

    /// Does the packet `remote` → `local` belong to one of the host's sockets?
    pub fn owns(&self, proto: Proto, local: SocketAddr, remote: SocketAddr) -> bool {
        self.connected
            .contains(&(proto, canonical(local), canonical(remote)))
    }

    /// Adds the lines of one /proc/net table (`tcp`, `tcp6`, `udp` or `udp6` text); lines that
    /// do not parse are skipped.
    pub fn add_text(&mut self, proto: Proto, text: &str) {
        for line in text.lines().skip(1) {
            if let Some((local, remote, state)) = parse_line(line) {
                let unbound_remote = remote.ip().is_unspecified() && remote.port() == 0;
                match proto {
                    Proto::Tcp if state == TCP_LISTEN => {
                        self.listening.insert((proto, local.port()));
                    }
                    // Every bound UDP socket receives datagrams for its port: a listener.
                    Proto::Udp if local.port() != 0 => {
                        self.listening.insert((proto, local.port()));
                    }
                    _ => {}
                }
                if !unbound_remote {
                    self.connected.insert((proto, local, remote));
                }
            }
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it stands for (a dual-stack socket in
/// tcp6 carries the IPv4 peer this way; the packet has the plain IPv4 address).
fn canonical(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// `  sl  local_address rem_address   st ...`: the local and remote addresses and the state.
fn parse_line(line: &str) -> Option<(SocketAddr, SocketAddr, u8)> {
    let mut words = line.split_whitespace();
    let _sl = words.next()?;
    let local = parse_addr(words.next()?)?;
    let remote = parse_addr(words.next()?)?;
    let state = u8::from_str_radix(words.next()?, 16).ok()?;
    Some((canonical(local), canonical(remote), state))
}

/// `HEX:PORT`, where HEX is 8 (IPv4) or 32 (IPv6) hex digits: the address as 32-bit words
/// printed in the kernel's native byte order, the port big-endian as a number.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (hex, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if !hex.is_ascii() {
        return None;
    }
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match hex.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The four tables, opened once (before the chroot).
#[derive(Debug)]
pub struct NetTables {
    files: Vec<(Proto, File)>,
    buf: Vec<u8>,
}

impl NetTables {
    /// Opens /proc/net/{tcp,tcp6,udp,udp6} of the caller's network namespace. A missing
    /// IPv6 table (IPv6 disabled) is skipped; a missing IPv4 one is an error.
    pub fn open() -> io::Result<NetTables> {
        let mut files = Vec::with_capacity(4);
        for (proto, name, required) in [
            (Proto::Tcp, "tcp", true),
            (Proto::Tcp, "tcp6", false),
            (Proto::Udp, "udp", true),
            (Proto::Udp, "udp6", false),
        ] {
            match File::open(format!("/proc/self/net/{name}")) {
                Ok(f) => files.push((proto, f)),
                Err(e) if !required && e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("/proc/net/{name}: {e}"))),
            }
        }
        Ok(NetTables {
            files,
            buf: Vec::new(),
        })
    }

    /// Reads every table afresh.
    pub fn read(&mut self) -> io::Result<SocketTable> {
        let mut table = SocketTable::default();
        for (proto, file) in &self.files {
            self.buf.clear();
            let mut chunk = [0u8; 16 * 1024];
            let mut off = 0u64;
            loop {
                let n = file.read_at(&mut chunk, off)?;
                if n == 0 || self.buf.len() >= MAX_TABLE_BYTES {
                    break;
                }
                self.buf
                    .extend_from_slice(chunk.get(..n).unwrap_or_default());
                off += n as u64;
            }
            // Cut at the last full line: a partial one would parse as garbage or not at all.
            let end = self
                .buf
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let text = String::from_utf8_lossy(self.buf.get(..end).unwrap_or_default());
            table.add_text(*proto, &text);
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Little-endian text, as an x86_64 or aarch64 kernel prints it.
    #[cfg(target_endian = "little")]
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100630A:9C40 0200630A:0050 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100630A:9C41 0200630A:0051 06 00000000:00000000 03:00000F9F 00000000     0        0 0 3 0000000000000000
   3: garbage
";
    #[cfg(target_endian = "little")]
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100630A:0019 0000000000000000FFFF00000300630A:D431 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 20 4 30 10 -1
   2: 000000FD000000000000000001000000:1F90 000000FD000000000000000002000000:C350 08 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 20 4 30 10 -1
";
    #[cfg(target_endian = "little")]
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 00000000:0045 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 6 2 0000000000000000 0
  2: 0100630A:E000 0200630A:0035 01 00000000:00000000 00:00000000 00000000     0        0 7 2 0000000000000000 0
";

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn listeners_and_own_sockets_from_proc_text() {
        let mut t = SocketTable::default();
        t.add_text(Proto::Tcp, TCP);
        t.add_text(Proto::Tcp, TCP6);
        t.add_text(Proto::Udp, UDP);
        assert!(t.has_listener(Proto::Tcp, 22), "0.0.0.0:22 LISTEN");
        assert!(t.has_listener(Proto::Tcp, 443), ":::443 LISTEN");
        assert!(
            !t.has_listener(Proto::Tcp, 80),
            "a remote port is no listener"
        );
        assert!(
            !t.has_listener(Proto::Tcp, 40000),
            "ESTABLISHED is no listener"
        );
        assert!(t.has_listener(Proto::Udp, 69), "bound UDP socket");
        assert!(
            t.has_listener(Proto::Udp, 0xE000),
            "connected UDP socket is bound too"
        );
        assert!(!t.has_listener(Proto::Udp, 22));
        // ESTABLISHED, TIME_WAIT (06), CLOSE_WAIT (08) all belong to the host.
        assert!(t.owns(Proto::Tcp, sa("10.99.0.1:40000"), sa("10.99.0.2:80")));
        assert!(t.owns(Proto::Tcp, sa("10.99.0.1:40001"), sa("10.99.0.2:81")));
        assert!(t.owns(Proto::Tcp, sa("[fd00::1]:8080"), sa("[fd00::2]:50000")));
        // A dual-stack socket's mapped peer matches the plain IPv4 packet.
        assert!(t.owns(Proto::Tcp, sa("10.99.0.1:25"), sa("10.99.0.3:54321")));
        assert!(!t.owns(Proto::Tcp, sa("10.99.0.1:40000"), sa("10.99.0.2:81")));
        assert!(!t.owns(Proto::Udp, sa("10.99.0.1:40000"), sa("10.99.0.2:80")));
        assert!(t.owns(Proto::Udp, sa("10.99.0.1:57344"), sa("10.99.0.2:53")));
    }

    #[test]
    fn bad_addresses_are_skipped() {
        for s in [
            "",
            "0100007F",
            "0100007F:",
            "0100007:0016",
            "ZZ00007F:0016",
            "é1234567:0016",
        ] {
            assert_eq!(parse_addr(s), None, "{s:?}");
        }
    }

    #[test]
    fn the_live_tables_parse() {
        let mut t = NetTables::open().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let table = t.read().unwrap();
        assert!(table.has_listener(Proto::Tcp, port));
        assert!(table.owns(Proto::Tcp, c.local_addr().unwrap(), c.peer_addr().unwrap()));
        // A second read from offset 0 sees the table again.
        assert!(t.read().unwrap().has_listener(Proto::Tcp, port));
    }
}
