//! Listening sockets: bind every `listen` of nanny.conf, accept from them without blocking, and
//! pace how many connections each wakeup takes ([`Pace`]).
//!
//! Runs in the parent (root or not) before any worker exists (binding low ports is the reason
//! the parent starts privileged). The peers are untrusted; all this code takes from them is the
//! connection itself and its addresses.
//!
//! Invariants: every socket is close-on-exec (`SOCK_CLOEXEC` at creation and on accept4), so no
//! service child inherits a listener or another peer's connection; listeners are non-blocking,
//! so the poll loop never waits in accept; IPv6 listeners are IPV6_V6ONLY so `listen PORT` binds v4 and v6 separately and a
//! v4-mapped peer can only appear on an explicit v6 listener, where it is shown as IPv4.
//!
//! Listen options (an extension): `backlog N` is the listen(2) backlog; `nodelay` and
//! `keepalive` are set on the listening socket, and Linux copies both to every socket accepted
//! from it (tested below), so the accept path makes no extra system call for them.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6};
use policy::addr::AddrSet;
use policy::conf::ListenOptions;

/// Listen backlog without `backlog N`: large, because a small backlog drops SYNs under bursts
/// (tcpserver's default of 20 does at concurrency 64) and the kernel caps it at
/// net.core.somaxconn anyway.
pub const LISTEN_BACKLOG: u32 = policy::listenopts::DEFAULT_BACKLOG;

/// One bound listening socket.
#[derive(Debug)]
pub struct Listener {
    pub sock: TcpListener,
    /// The address it is bound to (the port is the real one).
    pub addr: SocketAddr,
    /// A `trap tcp` port: its connections are trap hits.
    pub trap: bool,
    /// `proxy from`: connections only from these load balancers, each starting with a PROXY
    /// protocol header (proxy.rs). None on a plain listen.
    pub proxy: Option<AddrSet>,
    /// How many connections to accept on its next poll wakeup (accept.rs).
    pub pace: Pace,
}

/// Connections accepted from one listener per loop turn, so one busy port cannot starve the
/// others, the workers' channels or the reaper.
const ACCEPT_BATCH: usize = 128;

/// How many connections to accept from one listener per wakeup: between 1 and
/// [`ACCEPT_BATCH`], starting at 1. A batch that ends with the backlog empty sets the next to
/// what it found; a full batch followed, on the very next loop turn, by the listener still
/// readable (a backlog) doubles it. One connection at a time then costs one accept(2), not a
/// second one that only says EAGAIN; a backlog left behind keeps the listener readable, so
/// poll wakes the loop for it at once.
#[derive(Debug)]
pub struct Pace {
    batch: usize,
    /// The loop turn whose batch was full, if the last one was.
    full_turn: Option<u64>,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            batch: 1,
            full_turn: None,
        }
    }
}

impl Pace {
    /// The batch for a wakeup on loop turn `turn`.
    pub fn batch(&self, turn: u64) -> usize {
        if self.full_turn.is_some_and(|t| t + 1 == turn) {
            (self.batch * 2).min(ACCEPT_BATCH)
        } else {
            self.batch
        }
    }

    /// A batch of `batch` on turn `turn` took `taken` connections.
    pub fn took(&mut self, batch: usize, taken: usize, turn: u64) {
        if taken >= batch {
            self.batch = batch;
            self.full_turn = Some(turn);
        } else {
            self.batch = taken.max(1);
            self.full_turn = None;
        }
    }
}

/// Where one `listen` line binds: an explicit address, or both wildcards.
pub fn addresses(port: u16, addr: Option<IpAddr>) -> Vec<SocketAddr> {
    match addr {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        ],
    }
}

/// Binds one address with a plain listen's settings.
pub fn bind(addr: SocketAddr) -> io::Result<Listener> {
    bind_with(addr, &ListenOptions::default())
}

/// Binds one address with a listen line's options. `SO_REUSEADDR` so a restart does not wait
/// out TIME_WAIT.
pub fn bind_with(addr: SocketAddr, opts: &ListenOptions) -> io::Result<Listener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    match addr {
        SocketAddr::V4(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(a))?,
        SocketAddr::V6(a) => {
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
            socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?;
        }
    }
    // Inherited by every accepted socket (see the module header).
    if opts.nodelay {
        socket::setsockopt(&fd, sockopt::TcpNoDelay, &true)?;
    }
    if opts.keepalive {
        socket::setsockopt(&fd, sockopt::KeepAlive, &true)?;
    }
    // nix's Backlog refuses values above libc's SOMAXCONN constant, but `backlog N` may be up
    // to 65535 for a host whose net.core.somaxconn was raised; the kernel caps it itself.
    let backlog = i32::try_from(opts.backlog.unwrap_or(LISTEN_BACKLOG)).unwrap_or(i32::MAX);
    // SAFETY: listen(2) on a socket descriptor we own; no memory is passed.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let sock = TcpListener::from(fd);
    let addr = sock.local_addr()?;
    Ok(Listener {
        sock,
        addr,
        trap: false,
        proxy: opts.proxy.as_ref().map(|p| p.set.clone()),
        pace: Pace::default(),
    })
}

/// A `listen` line's options on a socket bound elsewhere (an inherited one): `nodelay` and
/// `keepalive` on the listening socket, which accepted sockets inherit, and `proxy from`.
pub fn apply_options(l: &mut Listener, opts: &ListenOptions) -> io::Result<()> {
    if opts.nodelay {
        socket::setsockopt(&l.sock, sockopt::TcpNoDelay, &true)?;
    }
    if opts.keepalive {
        socket::setsockopt(&l.sock, sockopt::KeepAlive, &true)?;
    }
    l.proxy = opts.proxy.as_ref().map(|p| p.set.clone());
    Ok(())
}

/// A listening socket the service manager handed over (activation.rs), made non-blocking like
/// one bound here. Its backlog and options are the `.socket` unit's.
pub fn adopt(fd: OwnedFd) -> io::Result<Listener> {
    let sock = TcpListener::from(fd);
    sock.set_nonblocking(true)?;
    let addr = sock.local_addr()?;
    Ok(Listener {
        sock,
        addr,
        trap: false,
        proxy: None,
        pace: Pace::default(),
    })
}

/// Binds every listen line. A wildcard line whose IPv6 half cannot be created because the host
/// has no IPv6 is bound on IPv4 only (the caller gets the skipped address back to log it); any
/// other failure is an error naming the address.
pub fn bind_all(
    lines: &[(u16, Option<IpAddr>, ListenOptions)],
) -> Result<(Vec<Listener>, Vec<SocketAddr>), (SocketAddr, io::Error)> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (port, ip, opts) in lines {
        for addr in addresses(*port, *ip) {
            match bind_with(addr, opts) {
                Ok(l) => out.push(l),
                Err(e) if ip.is_none() && addr.is_ipv6() && no_ipv6(&e) => skipped.push(addr),
                Err(e) => return Err((addr, e)),
            }
        }
    }
    Ok((out, skipped))
}

fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

/// A v4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is; others unchanged.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// One accepted connection.
#[derive(Debug)]
pub struct Accepted {
    pub stream: TcpStream,
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// What an accept attempt gave.
#[derive(Debug)]
pub enum AcceptResult {
    Conn(Accepted),
    /// Nothing more to accept now.
    Empty,
    /// Out of file descriptors or memory: stop accepting for a moment (the listener would stay
    /// readable and spin the loop otherwise).
    Exhausted(io::Error),
}

/// Accepts one connection: close-on-exec and blocking (a service expects ordinary blocking
/// stdio; the message writer makes its own socket non-blocking). Errors that belong to one aborted
/// connection are skipped; the loop is bounded so a storm of them cannot hold the caller.
pub fn accept(l: &Listener) -> AcceptResult {
    for _ in 0..64 {
        // std's accept is accept4(SOCK_CLOEXEC) and hands back the peer address the kernel
        // recorded, so no getpeername(2): that also serves a peer that reset before we got to
        // it (its service sees the reset) instead of silently skipping it.
        let (stream, remote) = match l.sock.accept() {
            Ok(c) => c,
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => return AcceptResult::Empty,
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    return AcceptResult::Exhausted(e)
                }
                // ECONNABORTED, EINTR, EPROTO and friends: that one is gone; try the next.
                _ => continue,
            },
        };
        let local = if l.addr.ip().is_unspecified() {
            match stream.local_addr() {
                Ok(a) => a,
                Err(_) => continue,
            }
        } else {
            l.addr
        };
        return AcceptResult::Conn(Accepted {
            stream,
            remote: unmap(remote),
            local: unmap(local),
        });
    }
    AcceptResult::Empty
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn unmap_rows() {
        let rows = [
            ("[::ffff:192.0.2.7]:4711", "192.0.2.7:4711"),
            ("192.0.2.7:1", "192.0.2.7:1"),
            ("[2001:db8::1]:25", "[2001:db8::1]:25"),
            ("[::1]:25", "[::1]:25"),
        ];
        for (input, want) in rows {
            let a: SocketAddr = input.parse().unwrap();
            assert_eq!(unmap(a).to_string(), want);
        }
    }

    #[test]
    fn wildcard_binds_both_families() {
        assert_eq!(addresses(25, None).len(), 2);
        let one = addresses(25, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(one, vec!["127.0.0.1:25".parse().unwrap()]);
    }

    #[test]
    fn bind_accept_cloexec_and_blocking() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(l.addr.port(), 0);
        assert!(matches!(accept(&l), AcceptResult::Empty));
        let mut c = TcpStream::connect(l.addr).unwrap();
        let mut got = None;
        for _ in 0..200 {
            match accept(&l) {
                AcceptResult::Conn(a) => {
                    got = Some(a);
                    break;
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        let a = got.expect("accepted");
        assert_eq!(a.remote, c.local_addr().unwrap());
        assert_eq!(a.local, l.addr);
        let fd = a.stream.as_raw_fd();
        let fdflags = nix::fcntl::fcntl(&a.stream, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(fdflags & libc::FD_CLOEXEC != 0, "fd {fd} not CLOEXEC");
        let flflags = nix::fcntl::fcntl(&a.stream, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert!(
            flflags & libc::O_NONBLOCK == 0,
            "services need blocking stdio"
        );
        drop(a);
        let mut buf = [0u8; 1];
        assert_eq!(c.read(&mut buf).unwrap(), 0);
    }

    /// The module header's claim: TCP_NODELAY and SO_KEEPALIVE set on the listener reach
    /// every accepted socket (Linux copies them), and a plain listen sets neither.
    #[test]
    fn accepted_sockets_inherit_nodelay_and_keepalive() {
        let accepted = |opts: &ListenOptions| {
            let l = bind_with("127.0.0.1:0".parse().unwrap(), opts).unwrap();
            let _c = TcpStream::connect(l.addr).unwrap();
            for _ in 0..200 {
                if let AcceptResult::Conn(a) = accept(&l) {
                    let nd = socket::getsockopt(&a.stream, sockopt::TcpNoDelay).unwrap();
                    let ka = socket::getsockopt(&a.stream, sockopt::KeepAlive).unwrap();
                    return (nd, ka);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            panic!("nothing accepted");
        };
        let both = ListenOptions {
            nodelay: true,
            keepalive: true,
            backlog: Some(7),
            ..ListenOptions::default()
        };
        assert_eq!(accepted(&both), (true, true));
        let nodelay = ListenOptions {
            nodelay: true,
            ..ListenOptions::default()
        };
        assert_eq!(accepted(&nodelay), (true, false));
        assert_eq!(accepted(&ListenOptions::default()), (false, false));
    }

    #[test]
    fn bind_conflict_is_an_error() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let lines = [(l.addr.port(), Some(l.addr.ip()), ListenOptions::default())];
        // SO_REUSEADDR does not allow two listeners on one address.
        assert!(bind_all(&lines).is_err());
    }

    #[test]
    fn the_batch_grows_only_for_a_backlog_and_shrinks_to_what_was_waiting() {
        let mut p = Pace::default();
        // A lone connection per wakeup, turns apart: one accept each time.
        for turn in [10, 13, 16] {
            assert_eq!(p.batch(turn), 1);
            p.took(1, 1, turn);
        }
        // Still readable on the next turn: a backlog, so the batch doubles, up to the cap.
        p.took(1, 1, 20);
        assert_eq!(p.batch(21), 2);
        let mut turn = 21;
        let mut batch = 2;
        while batch < ACCEPT_BATCH {
            p.took(batch, batch, turn);
            turn += 1;
            batch = p.batch(turn);
        }
        assert_eq!(batch, ACCEPT_BATCH);
        p.took(batch, batch, turn);
        assert_eq!(p.batch(turn + 1), ACCEPT_BATCH);
        // The backlog emptied after 3: the next batch is 3, whatever the turn.
        p.took(ACCEPT_BATCH, 3, turn + 1);
        assert_eq!(p.batch(turn + 2), 3);
        p.took(3, 0, turn + 2);
        assert_eq!(p.batch(turn + 3), 1);
    }
}
