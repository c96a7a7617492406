//! Socket activation (sd_listen_fds(3)): listening sockets handed over by the service manager (a
//! systemd `.socket` unit, or `systemd-socket-activate`) instead of bound by portnanny. An
//! extension to portnanny 2: without the variables below nothing changes.
//!
//! Runs in the parent at start-up, before any worker exists and before the service environment
//! is captured. The descriptors come from the service manager, which is trusted like the
//! command line, but they are checked all the same, because a `.socket` unit and nanny.conf are
//! written separately and drift apart: each must be a listening TCP socket or a bound UDP
//! socket, and each is matched to a `listen` or `trap` line by the address it is bound to
//! (getsockname). A `listen 4040` with no address is matched by sockets bound to the wildcards.
//!
//! Protocol: `LISTEN_PID` is the process the variables are for (not us: ignore them),
//! `LISTEN_FDS` = N means descriptors 3 … 3+N-1, `LISTEN_FDNAMES` their colon-separated names
//! (`FileDescriptorName=`), used only in messages.
//!
//! Invariants:
//! - the three variables are removed from the environment whether or not they were ours, so no
//!   service inherits them (workers start from an empty environment anyway);
//! - every inherited socket serves a line, or start-up fails naming it (exit 100: the units and
//!   nanny.conf disagree, and restarting cannot fix that);
//! - the lines no inherited socket serves are bound by portnanny as without activation, so a
//!   `.socket` unit may hand over some ports and leave the rest to portnanny;
//! - an inherited socket is made close-on-exec and non-blocking like one portnanny binds.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, sockopt, SockType, SockaddrLike, SockaddrStorage};

use super::listen::{self, Listener};
use super::traps::{Proto, TrapSpec, UdpTrap};
use crate::exit::{Error, Result};
use crate::log;

/// The first inherited descriptor (SD_LISTEN_FDS_START).
pub const LISTEN_FDS_START: RawFd = 3;

/// More sockets than any `.socket` unit hands over; bounds the work a garbled `LISTEN_FDS` can
/// cause before it is refused.
const MAX_INHERITED: u32 = 4096;

/// The variables of the protocol, removed from the environment by [`take`].
const VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// One inherited socket, checked.
#[derive(Debug)]
struct Inherited {
    fd: OwnedFd,
    name: Option<String>,
    shape: Shape,
}

/// What an inherited socket is, as far as matching goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    number: RawFd,
    proto: Proto,
    addr: SocketAddr,
    /// An IPv6 socket with IPV6_V6ONLY off: it takes IPv4 connections too.
    dual_stack: bool,
}

impl fmt::Display for Inherited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fd {}", self.shape.number)?;
        if let Some(n) = &self.name {
            write!(f, " (\"{}\")", log::escape(n))?;
        }
        write!(f, ", {} {}", self.shape.proto.as_str(), self.shape.addr)
    }
}

/// The sockets the service manager handed over; empty without socket activation.
#[derive(Debug, Default)]
pub struct Activation {
    sockets: Vec<Inherited>,
}

/// What is left to bind once the inherited sockets have taken their lines, and the listeners
/// and UDP traps made of those sockets.
#[derive(Debug, Default)]
pub struct Split {
    pub lines: Vec<(u16, Option<IpAddr>)>,
    pub traps: Vec<TrapSpec>,
    pub listeners: Vec<Listener>,
    pub udp: Vec<UdpTrap>,
}

/// Reads the protocol's variables, removes them from the environment and takes the sockets
/// they describe. Call once at start-up, while the parent has no other thread (changing the
/// environment is not thread-safe) and before the service environment is captured.
pub fn take() -> Result<Activation> {
    let get = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
    let (pid, fds, names) = (get(VARS[0]), get(VARS[1]), get(VARS[2]));
    for k in VARS {
        std::env::remove_var(k);
    }
    let n = count(pid.as_deref(), fds.as_deref(), std::process::id())
        .map_err(|e| Error::Config(format!("socket activation: {e}")))?;
    if n == 0 {
        return Ok(Activation::default());
    }
    let mut names = names.map(|s| split_names(&s, n));
    if names.as_ref().is_some_and(|v| v.is_none()) {
        log::warn("socket activation: LISTEN_FDNAMES does not name every descriptor; ignored");
        names = None;
    }
    let names = names.flatten().unwrap_or_default();
    let mut sockets = Vec::new();
    for i in 0..n {
        let number = LISTEN_FDS_START.saturating_add(i32::try_from(i).unwrap_or(i32::MAX));
        let name = names.get(i as usize).cloned().filter(|s| !s.is_empty());
        let fd = own(number).map_err(|e| {
            Error::Config(format!(
                "socket activation: LISTEN_FDS={n} but fd {number} is not open: {e}"
            ))
        })?;
        let shape = inspect(&fd, number).map_err(|e| {
            let who = match &name {
                Some(n) => format!("fd {number} (\"{}\")", log::escape(n)),
                None => format!("fd {number}"),
            };
            Error::Config(format!("socket activation: inherited {who}: {e}"))
        })?;
        sockets.push(Inherited { fd, name, shape });
    }
    Ok(Activation { sockets })
}

/// How many descriptors the variables hand to process `me`: 0 when they are absent or meant
/// for another process (libsystemd's rules), an error when they are garbled.
fn count(pid: Option<&str>, fds: Option<&str>, me: u32) -> std::result::Result<u32, String> {
    let Some(pid) = pid else {
        return Ok(0);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_PID={pid:?} is not a process id"))?;
    if pid != me {
        return Ok(0);
    }
    let Some(fds) = fds else {
        return Ok(0);
    };
    let n: u32 = fds
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS={fds:?} is not a number"))?;
    if n > MAX_INHERITED {
        return Err(format!(
            "LISTEN_FDS={n}: more than {MAX_INHERITED} descriptors"
        ));
    }
    Ok(n)
}

/// LISTEN_FDNAMES split into `n` names; None when the count differs (libsystemd refuses those).
fn split_names(s: &str, n: u32) -> Option<Vec<String>> {
    let v: Vec<String> = s.split(':').map(str::to_owned).collect();
    (v.len() == n as usize).then_some(v)
}

/// Takes ownership of inherited descriptor `number`, close-on-exec.
fn own(number: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; -1 means it is not open.
    if unsafe { libc::fcntl(number, libc::F_GETFD) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open, and LISTEN_FDS hands it to this process: nothing else
    // in the parent owns it (main only marked it close-on-exec, fds.rs), so this is its one
    // owner from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(number) };
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(fd)
}

/// Checks that `fd` is an IPv4 or IPv6 socket portnanny can use (a listening TCP socket or a
/// bound UDP socket) and says what it is bound to.
fn inspect(fd: &OwnedFd, number: RawFd) -> std::result::Result<Shape, String> {
    let ss: SockaddrStorage =
        socket::getsockname(fd.as_raw_fd()).map_err(|e| format!("not a socket ({e})"))?;
    let addr = if let Some(a) = ss.as_sockaddr_in() {
        SocketAddr::from(*a)
    } else if let Some(a) = ss.as_sockaddr_in6() {
        SocketAddr::from(*a)
    } else {
        return Err(format!(
            "not an IPv4 or IPv6 socket (address family {})",
            ss.family().map_or(-1, |f| f as i32)
        ));
    };
    let ty = socket::getsockopt(fd, sockopt::SockType).map_err(|e| format!("SO_TYPE: {e}"))?;
    let proto = match (ty, protocol(fd)) {
        (SockType::Stream, Ok(libc::IPPROTO_TCP)) => Proto::Tcp,
        (SockType::Datagram, Ok(libc::IPPROTO_UDP)) => Proto::Udp,
        (_, Err(e)) => return Err(format!("SO_PROTOCOL: {e}")),
        (t, Ok(p)) => {
            return Err(format!(
                "{addr}: socket type {t:?}, protocol {p}: neither TCP nor UDP \
                 (ListenStream= or ListenDatagram= in the .socket unit)"
            ))
        }
    };
    if proto == Proto::Tcp
        && !socket::getsockopt(fd, sockopt::AcceptConn)
            .map_err(|e| format!("SO_ACCEPTCONN: {e}"))?
    {
        return Err(format!("tcp {addr} is not listening"));
    }
    if addr.port() == 0 {
        return Err(format!("{} {addr} is not bound", proto.as_str()));
    }
    let dual_stack = addr.is_ipv6()
        && !socket::getsockopt(fd, sockopt::Ipv6V6Only).map_err(|e| format!("IPV6_V6ONLY: {e}"))?;
    Ok(Shape {
        number,
        proto,
        addr,
        dual_stack,
    })
}

/// SO_PROTOCOL (nix has no wrapper for it).
fn protocol(fd: &OwnedFd) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`, an int of that size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PROTOCOL,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(v)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One line that wants sockets: a `listen` line (TCP) or one port of a `trap` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Want {
    proto: Proto,
    port: u16,
    /// None: both wildcards.
    addr: Option<IpAddr>,
    trap: bool,
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = match self.addr {
            None => String::new(),
            Some(ip) => format!("@{ip}"),
        };
        if self.trap {
            write!(f, "trap {} {}{at}", self.proto.as_str(), self.port)
        } else {
            write!(f, "listen {}{at}", self.port)
        }
    }
}

/// Which want each socket serves, and what of each want is left to bind: None when inherited
/// sockets serve all of it, else the address to bind (the line's own, or the one wildcard of an
/// every-address line that no socket serves).
#[derive(Debug, PartialEq, Eq)]
struct Assignment {
    served: Vec<usize>,
    rest: Vec<Option<Option<IpAddr>>>,
}

/// Matches sockets to wants by protocol and bound address. An IPv6 wildcard socket that also
/// takes IPv4 serves both halves of an every-address line, and is refused for a line that asks
/// for the IPv6 wildcard alone.
fn assign(wants: &[Want], socks: &[Shape]) -> std::result::Result<Assignment, (usize, String)> {
    // Per want, which of its addresses (listen::addresses order) are served.
    let mut covered: Vec<Vec<bool>> = wants
        .iter()
        .map(|w| vec![false; listen::addresses(w.port, w.addr).len()])
        .collect();
    let mut served = Vec::with_capacity(socks.len());
    for (si, s) in socks.iter().enumerate() {
        let found = wants.iter().enumerate().find_map(|(wi, w)| {
            let addrs = listen::addresses(w.port, w.addr);
            (w.proto == s.proto)
                .then(|| addrs.iter().position(|a| *a == s.addr))
                .flatten()
                .map(|ai| (wi, ai))
        });
        let Some((wi, ai)) = found else {
            return Err((
                si,
                "matches no listen or trap line of nanny.conf".to_owned(),
            ));
        };
        let Some(w) = wants.get(wi) else {
            return Err((si, "internal: want out of range".to_owned()));
        };
        let Some(cov) = covered.get_mut(wi) else {
            return Err((si, "internal: want out of range".to_owned()));
        };
        if cov.get(ai).copied().unwrap_or(true) {
            return Err((si, format!("a second socket for `{w}`")));
        }
        if s.dual_stack {
            if w.addr.is_some() {
                return Err((
                    si,
                    format!(
                        "takes IPv4 connections too (IPV6_V6ONLY is off), but `{w}` asks for \
                         IPv6 only: set BindIPv6Only=ipv6-only in the .socket unit, or listen \
                         on every address (`listen {}`)",
                        w.port
                    ),
                ));
            }
            cov.iter_mut().for_each(|c| *c = true);
        } else if let Some(c) = cov.get_mut(ai) {
            *c = true;
        }
        served.push(wi);
    }
    let rest = wants
        .iter()
        .zip(&covered)
        .map(|(w, cov)| {
            let addrs = listen::addresses(w.port, w.addr);
            match cov.iter().filter(|c| !**c).count() {
                0 => None,
                n if n == cov.len() => Some(w.addr),
                _ => addrs
                    .iter()
                    .zip(cov)
                    .find(|(_, c)| !**c)
                    .map(|(a, _)| Some(a.ip())),
            }
        })
        .collect();
    Ok(Assignment { served, rest })
}

impl Activation {
    /// Gives each inherited socket its line and returns what is left to bind. Without
    /// activation, everything is left to bind, unchanged.
    pub fn split(self, lines: &[(u16, Option<IpAddr>)], traps: &[TrapSpec]) -> Result<Split> {
        if self.sockets.is_empty() {
            return Ok(Split {
                lines: lines.to_vec(),
                traps: traps.to_vec(),
                ..Split::default()
            });
        }
        let wants: Vec<Want> = lines
            .iter()
            .map(|(port, addr)| Want {
                proto: Proto::Tcp,
                port: *port,
                addr: *addr,
                trap: false,
            })
            .chain(traps.iter().map(|t| Want {
                proto: t.proto,
                port: t.port,
                addr: t.addr,
                trap: true,
            }))
            .collect();
        let shapes: Vec<Shape> = self.sockets.iter().map(|s| s.shape).collect();
        let a = assign(&wants, &shapes).map_err(|(si, why)| {
            let who = self
                .sockets
                .get(si)
                .map_or_else(|| "a socket".to_owned(), |s| s.to_string());
            let known: Vec<String> = wants.iter().map(|w| format!("`{w}`")).collect();
            Error::Config(format!(
                "socket activation: inherited {who} {why} (nanny.conf has {})",
                known.join(", ")
            ))
        })?;
        let mut out = Split::default();
        for (s, wi) in self.sockets.into_iter().zip(&a.served) {
            let Some(w) = wants.get(*wi) else {
                continue;
            };
            log::info(&format!("socket activation: {s} serves `{w}`"));
            let what = s.to_string();
            let fail = |e: io::Error| Error::system(format!("socket activation: {what}"), e);
            match w.proto {
                Proto::Tcp => {
                    let mut l = listen::adopt(s.fd).map_err(fail)?;
                    l.trap = w.trap;
                    out.listeners.push(l);
                }
                Proto::Udp => {
                    let sock = UdpSocket::from(s.fd);
                    sock.set_nonblocking(true).map_err(fail)?;
                    out.udp.push(UdpTrap {
                        sock,
                        addr: s.shape.addr,
                    });
                }
            }
        }
        for (w, rest) in wants.iter().zip(a.rest) {
            let Some(addr) = rest else {
                continue;
            };
            if w.trap {
                out.traps.push(TrapSpec {
                    proto: w.proto,
                    port: w.port,
                    addr,
                });
            } else {
                out.lines.push((w.port, addr));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};

    /// What is left to bind of each want.
    type Rest = Vec<Option<Option<IpAddr>>>;

    /// The unspecified address of one family.
    fn wildcard(v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    }

    fn sock(proto: Proto, addr: &str, dual: bool) -> Shape {
        Shape {
            number: 3,
            proto,
            addr: addr.parse().unwrap(),
            dual_stack: dual,
        }
    }

    fn listen(port: u16, addr: Option<&str>) -> Want {
        Want {
            proto: Proto::Tcp,
            port,
            addr: addr.map(|a| a.parse().unwrap()),
            trap: false,
        }
    }

    fn trap(proto: Proto, port: u16) -> Want {
        Want {
            proto,
            port,
            addr: None,
            trap: true,
        }
    }

    #[test]
    fn count_rows() {
        // None: refused as garbled.
        let rows: [(Option<&str>, Option<&str>, Option<u32>); 8] = [
            (None, None, Some(0)),
            (None, Some("2"), Some(0)),
            (Some("77"), Some("2"), Some(0)),
            (Some("42"), None, Some(0)),
            (Some("42"), Some("2"), Some(2)),
            (Some("42"), Some("x"), None),
            (Some("pid"), Some("2"), None),
            (Some("42"), Some("100000"), None),
        ];
        for (pid, fds, want) in rows {
            let got = count(pid, fds, 42).ok();
            assert_eq!(got, want, "LISTEN_PID={pid:?} LISTEN_FDS={fds:?}");
        }
    }

    #[test]
    fn names_must_match_the_count() {
        assert_eq!(
            split_names("smtp:pop3", 2),
            Some(vec!["smtp".to_owned(), "pop3".to_owned()])
        );
        assert_eq!(split_names("smtp", 2), None);
    }

    #[test]
    fn assignment_rows() {
        let lines = [
            listen(25, None),
            listen(4040, Some("127.0.0.1")),
            listen(4041, Some("::")),
            trap(Proto::Udp, 31337),
        ];
        // (sockets, expected served wants, expected rest)
        let some = |s: &str| Some(Some(s.parse::<IpAddr>().unwrap()));
        let rows: Vec<(Vec<Shape>, Vec<usize>, Rest)> = vec![
            // Nothing inherited: everything bound as written.
            (
                vec![],
                vec![],
                vec![Some(None), some("127.0.0.1"), some("::"), Some(None)],
            ),
            // A dual-stack [::]:25 serves both halves of `listen 25`.
            (
                vec![sock(Proto::Tcp, "[::]:25", true)],
                vec![0],
                vec![None, some("127.0.0.1"), some("::"), Some(None)],
            ),
            // An IPv6-only [::]:25 leaves the IPv4 wildcard to bind.
            (
                vec![sock(Proto::Tcp, "[::]:25", false)],
                vec![0],
                vec![
                    Some(Some(wildcard(false))),
                    some("127.0.0.1"),
                    some("::"),
                    Some(None),
                ],
            ),
            // 0.0.0.0:25 leaves the IPv6 wildcard; a specific address and a UDP trap.
            (
                vec![
                    sock(Proto::Tcp, "0.0.0.0:25", false),
                    sock(Proto::Tcp, "127.0.0.1:4040", false),
                    sock(Proto::Udp, "0.0.0.0:31337", false),
                ],
                vec![0, 1, 3],
                vec![
                    Some(Some(wildcard(true))),
                    None,
                    some("::"),
                    Some(Some(wildcard(true))),
                ],
            ),
            // An IPv6-only socket serves `listen 4041@::`.
            (
                vec![sock(Proto::Tcp, "[::]:4041", false)],
                vec![2],
                vec![Some(None), some("127.0.0.1"), None, Some(None)],
            ),
        ];
        for (socks, served, rest) in rows {
            let a = assign(&lines, &socks).unwrap_or_else(|e| panic!("{socks:?}: {e:?}"));
            assert_eq!(a.served, served, "{socks:?}");
            assert_eq!(a.rest, rest, "{socks:?}");
        }
    }

    #[test]
    fn mismatches_name_the_socket() {
        let lines = [listen(25, None), listen(4040, Some("127.0.0.1"))];
        let rows: [(Vec<Shape>, usize, &str); 5] = [
            (
                vec![sock(Proto::Tcp, "127.0.0.1:2525", false)],
                0,
                "matches no listen",
            ),
            // Right port, wrong address.
            (
                vec![
                    sock(Proto::Tcp, "[::]:25", true),
                    sock(Proto::Tcp, "127.0.0.2:4040", false),
                ],
                1,
                "matches no listen",
            ),
            // UDP on a TCP listen's port.
            (
                vec![sock(Proto::Udp, "127.0.0.1:4040", false)],
                0,
                "matches no listen",
            ),
            // A dual-stack socket for an IPv6-only line.
            (
                vec![sock(Proto::Tcp, "[::]:4040", true)],
                0,
                "matches no listen",
            ),
            (
                vec![
                    sock(Proto::Tcp, "127.0.0.1:4040", false),
                    sock(Proto::Tcp, "127.0.0.1:4040", false),
                ],
                1,
                "a second socket",
            ),
        ];
        for (socks, bad, why) in rows {
            let (i, e) = assign(&lines, &socks).unwrap_err();
            assert_eq!(i, bad, "{socks:?}");
            assert!(e.contains(why), "{socks:?}: {e}");
        }
        let v6only = [listen(4040, Some("::"))];
        let (_, e) = assign(&v6only, &[sock(Proto::Tcp, "[::]:4040", true)]).unwrap_err();
        assert!(e.contains("BindIPv6Only=ipv6-only"), "{e}");
    }

    #[test]
    fn inspect_tells_listeners_from_other_sockets() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let fd = OwnedFd::from(l);
        let s = inspect(&fd, 3).unwrap();
        assert_eq!((s.proto, s.addr, s.dual_stack), (Proto::Tcp, addr, false));

        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let uaddr = u.local_addr().unwrap();
        let s = inspect(&OwnedFd::from(u), 4).unwrap();
        assert_eq!((s.proto, s.addr), (Proto::Udp, uaddr));

        // A bound but not listening TCP socket, and a Unix socket.
        let t = socket::socket(
            socket::AddressFamily::Inet,
            SockType::Stream,
            socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let any = socket::SockaddrIn::new(127, 0, 0, 1, 0);
        socket::bind(t.as_raw_fd(), &any).unwrap();
        assert!(inspect(&t, 5).unwrap_err().contains("not listening"));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(inspect(&OwnedFd::from(a), 6)
            .unwrap_err()
            .contains("not an IPv4 or IPv6"));
    }
}
