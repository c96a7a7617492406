//! `answerson: PORT`: can a TCP connection to the peer's PORT be completed before the deadline?
//! Also the deadline-bounded connect that the identd client uses.
//!
//! Runs in the resolver process (unprivileged). It sends nothing and reads nothing: the probe
//! only completes the handshake and closes. The target address comes from the classifier's
//! query, i.e. from the accepted connection's peer address.
//!
//! Invariants: the connect never outlives the deadline (non-blocking connect + poll, EINTR
//! retried against the absolute deadline, not the original timeout); the socket is CLOEXEC; it
//! is bound to the local address the client connected to when that has the peer's family, so a
//! multi-homed host probes from the address the peer already talks to.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
};

/// Addresses we never probe: nothing legitimate connects from them, and a corrupted query must
/// not make the resolver talk to broadcast or multicast groups.
fn probeable(ip: IpAddr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST))
}

/// Connect to `remote`, from `local_ip` (port chosen by the kernel) when given and of the same
/// family, giving up at `deadline`. The stream is returned in blocking mode.
pub fn connect_from(
    local_ip: Option<IpAddr>,
    remote: SocketAddr,
    deadline: Instant,
) -> io::Result<TcpStream> {
    let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
    if !probeable(remote.ip()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to connect to that address",
        ));
    }
    let family = match remote {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if let Some(local) = local_ip.map(|l| l.to_canonical()) {
        if local.is_ipv4() == remote.is_ipv4() && !local.is_unspecified() {
            bind(
                fd.as_raw_fd(),
                &SockaddrStorage::from(SocketAddr::new(local, 0)),
            )?;
        }
    }
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(remote)) {
        Ok(()) => {}
        Err(Errno::EINPROGRESS) | Err(Errno::EINTR) => loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            // Round up so a sub-millisecond remainder still waits instead of spinning.
            let ms = u32::try_from(left.as_millis().saturating_add(1)).unwrap_or(u32::MAX);
            let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
            match poll(&mut fds, timeout) {
                Ok(0) => continue,
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        },
        Err(e) => return Err(e.into()),
    }
    // The connect finished one way or the other; SO_ERROR says which.
    let err = getsockopt(&fd, sockopt::SocketError)?;
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// True if a TCP connection to `ip:port` completes before `deadline`. Any failure (refused,
/// unreachable, timed out, an address we never probe) is `false`.
pub fn answers_on(ip: IpAddr, port: u16, local_ip: IpAddr, deadline: Instant) -> bool {
    connect_from(Some(local_ip), SocketAddr::new(ip, port), deadline).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    #[test]
    fn open_and_closed_ports() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let lo: IpAddr = "127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"));
        let deadline = Instant::now() + Duration::from_secs(2);
        assert!(answers_on(lo, port, lo, deadline));
        drop(listener);
        assert!(!answers_on(
            lo,
            port,
            lo,
            Instant::now() + Duration::from_secs(2)
        ));
    }

    #[test]
    fn binds_the_local_address() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let from: IpAddr = "127.0.0.9".parse().unwrap_or_else(|e| panic!("{e}"));
        let s = connect_from(Some(from), addr, Instant::now() + Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{e}"));
        let (_c, peer) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(peer.ip(), from);
        assert_eq!(s.local_addr().map(|a| a.ip()).ok(), Some(from));
    }

    #[test]
    fn refuses_unprobeable_targets() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"));
        let any: IpAddr = "0.0.0.0".parse().unwrap_or_else(|e| panic!("{e}"));
        let mc: IpAddr = "224.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"));
        let soon = Instant::now() + Duration::from_secs(1);
        assert!(!answers_on(any, 80, lo, soon));
        assert!(!answers_on(mc, 80, lo, soon));
    }

    #[test]
    fn a_silent_peer_times_out_at_the_deadline() {
        use nix::sys::socket::{getsockname, listen, Backlog, SockaddrIn};
        // A listener that never accepts, with the smallest backlog: once its accept queue is
        // full the kernel drops further SYNs, so a connect neither succeeds nor fails.
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let at: SocketAddr = "127.113.2.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
        bind(fd.as_raw_fd(), &SockaddrStorage::from(at)).unwrap_or_else(|e| panic!("{e}"));
        listen(&fd, Backlog::new(0).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        let port = getsockname::<SockaddrIn>(fd.as_raw_fd())
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let ip: IpAddr = "127.113.2.1".parse().unwrap_or_else(|e| panic!("{e}"));
        let lo: IpAddr = "127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut held = Vec::new();
        let mut timed_out = None;
        for _ in 0..8 {
            let t = Instant::now();
            match connect_from(
                Some(lo),
                SocketAddr::new(ip, port),
                t + Duration::from_millis(300),
            ) {
                Ok(s) => held.push(s),
                Err(e) => {
                    timed_out = Some((e.kind(), t.elapsed()));
                    break;
                }
            }
        }
        let (kind, took) = timed_out.unwrap_or_else(|| panic!("every connect completed"));
        assert_eq!(kind, std::io::ErrorKind::TimedOut);
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(800),
            "{took:?}"
        );
        assert!(!answers_on(
            ip,
            port,
            lo,
            Instant::now() + Duration::from_millis(200)
        ));
    }
}
