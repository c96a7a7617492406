//! Trap ports (PortSentry's tcp and udp modes): ports bound only to catch scanners. A TCP trap
//! is an ordinary listener whose connections are classified as trap hits (a full connect); a
//! UDP trap fires on any datagram, which is read and thrown away.
//!
//! Runs in the parent, which binds them at start like the `listen` ports (low ports need its
//! privileges). The datagrams are untrusted: nothing but their source address and the trap's
//! own port is taken from them, and each poll turn reads a bounded number, so a flood costs a
//! bounded amount of work per turn.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6};

pub use policy::sentry::Proto;

use super::listen::{self, Listener};

/// Datagrams read from one UDP trap per poll turn.
const UDP_BATCH: usize = 64;

/// One trap port to bind (a nanny.conf `trap` line gives one per port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapSpec {
    pub proto: Proto,
    pub port: u16,
    /// None: both wildcards, as `listen PORT` binds.
    pub addr: Option<IpAddr>,
}

/// A bound UDP trap.
#[derive(Debug)]
pub struct UdpTrap {
    pub sock: UdpSocket,
    pub addr: SocketAddr,
}

/// Every bound trap.
#[derive(Debug, Default)]
pub struct Traps {
    pub tcp: Vec<Listener>,
    pub udp: Vec<UdpTrap>,
}

/// Why a trap could not be bound: it names the protocol and the address, so the start-up
/// error says which trap line to fix (a port in use is the common case).
#[derive(Debug)]
pub struct BindError {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub err: io::Error,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot bind trap {} {}: {}",
            self.proto.as_str(),
            self.addr,
            self.err
        )?;
        if self.err.kind() == io::ErrorKind::AddrInUse {
            write!(
                f,
                " (another program listens there: drop the port from the trap line)"
            )?;
        }
        Ok(())
    }
}

/// Receive buffer asked for each UDP trap (bytes; the kernel doubles it for bookkeeping).
const UDP_TRAP_RCVBUF: usize = 2 << 20;

fn bind_udp(addr: SocketAddr) -> io::Result<UdpTrap> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket::socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    match addr {
        SocketAddr::V4(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(a))?,
        SocketAddr::V6(a) => {
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
            socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?;
        }
    }
    // A sweep arrives as a burst that the loop drains a turn later: a receive buffer the size
    // of a few thousand datagrams keeps a busy moment from losing hits. Root may exceed
    // rmem_max (SO_RCVBUFFORCE); otherwise the kernel's cap applies, and that is fine.
    if socket::setsockopt(&fd, sockopt::RcvBufForce, &UDP_TRAP_RCVBUF).is_err() {
        let _ = socket::setsockopt(&fd, sockopt::RcvBuf, &UDP_TRAP_RCVBUF);
    }
    let sock = UdpSocket::from(fd);
    let addr = sock.local_addr()?;
    Ok(UdpTrap { sock, addr })
}

/// Binds every trap; the first that fails is the error (a half-armed sentry is not started).
pub fn bind_all(specs: &[TrapSpec]) -> Result<Traps, BindError> {
    let mut t = Traps::default();
    for s in specs {
        for addr in listen::addresses(s.port, s.addr) {
            let r = match s.proto {
                Proto::Tcp => listen::bind(addr).map(|mut l| {
                    l.trap = true;
                    t.tcp.push(l)
                }),
                Proto::Udp => bind_udp(addr).map(|u| t.udp.push(u)),
            };
            match r {
                Ok(()) => {}
                // A wildcard trap on a host without IPv6 is armed on IPv4 only.
                Err(e) if s.addr.is_none() && addr.is_ipv6() && no_ipv6(&e) => {}
                Err(err) => {
                    return Err(BindError {
                        proto: s.proto,
                        addr,
                        err,
                    })
                }
            }
        }
    }
    Ok(t)
}

fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

/// One datagram that hit a UDP trap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpHit {
    pub src: SocketAddr,
    pub trap: SocketAddr,
}

/// Reads (and discards) up to [`UDP_BATCH`] datagrams from `t`.
pub fn drain_udp(t: &UdpTrap) -> Vec<UdpHit> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..UDP_BATCH {
        match t.sock.recv_from(&mut buf) {
            Ok((_, src)) => out.push(UdpHit {
                src: listen::unmap(src),
                trap: t.addr,
            }),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // ICMP errors of earlier sends and the like: nothing to report, keep reading.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => continue,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_udp_traps_bind_and_a_datagram_is_a_hit() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let free = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let t = bind_all(&[
            TrapSpec {
                proto: Proto::Tcp,
                port: 0,
                addr: Some(lo),
            },
            TrapSpec {
                proto: Proto::Udp,
                port: free,
                addr: Some(lo),
            },
        ])
        .unwrap();
        assert_eq!((t.tcp.len(), t.udp.len()), (1, 1));
        let u = &t.udp[0];
        assert!(drain_udp(u).is_empty());
        let c = std::net::UdpSocket::bind("127.0.0.9:0").unwrap();
        for _ in 0..3 {
            c.send_to(b"probe", u.addr).unwrap();
        }
        let mut hits = Vec::new();
        for _ in 0..100 {
            hits.extend(drain_udp(u));
            if hits.len() == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(hits.len(), 3);
        assert_eq!(hits[0].src, c.local_addr().unwrap());
        assert_eq!(hits[0].trap, u.addr);
    }

    #[test]
    fn a_trap_port_in_use_names_the_trap() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = bind_all(&[TrapSpec {
            proto: Proto::Tcp,
            port,
            addr: Some("127.0.0.1".parse().unwrap()),
        }])
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("cannot bind trap tcp 127.0.0.1:{port}: ")),
            "{text}"
        );
        assert!(text.contains("another program listens there"), "{text}");
    }
}
