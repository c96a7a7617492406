//! The sentry's capture socket: AF_PACKET, SOCK_DGRAM (the kernel strips the link-layer
//! header, so every packet starts at its IPv4 or IPv6 header), all protocols, every interface
//! of the sentry's network namespace, with the [`bpf`](super::bpf) filter attached.
//!
//! Runs in the sentry after the privilege drop; opening the socket needs CAP_NET_RAW, the one
//! capability its row keeps. The packets are hostile: this module only moves bytes, the
//! parsing (etherparse) is in `detect`.
//!
//! ORDER: the socket is created with protocol 0, which receives nothing; the filter is attached;
//! only then does bind() with ETH_P_ALL start the flow. Nothing unfiltered can be queued in
//! between, and the queue is drained once anyway (the usual recipe for sockets that were bound
//! first).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::bpf;

/// Receive buffer: enough for a burst of small (cut to bpf::SNAP) probe packets; beyond it the
/// kernel drops, which only loses reports.
const RCVBUF: libc::c_int = 256 * 1024;

/// An open capture socket.
#[derive(Debug)]
pub struct Capture {
    fd: OwnedFd,
}

/// A received packet: its network-layer bytes (at most bpf::SNAP) and the interface it came in
/// on.
pub struct Received<'a> {
    pub bytes: &'a [u8],
    pub ifindex: i32,
}

fn check(r: libc::c_int, what: &str) -> io::Result<()> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn setsockopt<T>(fd: BorrowedFd<'_>, level: libc::c_int, opt: libc::c_int, val: &T) -> libc::c_int {
    // SAFETY: `val` points to a live T of the size we pass; the kernel copies it.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            std::ptr::from_ref(val).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    }
}

impl Capture {
    /// Opens the socket with the filter for these destination-port limits (see
    /// [`bpf::program`]).
    pub fn open(tcp_limit: u32, udp_limit: u32) -> io::Result<Capture> {
        // SAFETY: if_nametoindex reads the NUL-terminated constant.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        // SAFETY: socket(2) with constant arguments; the result is checked and owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        check(raw, "capture socket")?;
        // SAFETY: socket(2) just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let prog = bpf::program(tcp_limit, udp_limit, lo);
        let fprog = libc::sock_fprog {
            len: u16::try_from(prog.len()).map_err(|_| io::Error::other("filter too long"))?,
            filter: prog.as_ptr().cast_mut(),
        };
        check(
            setsockopt(fd.as_fd(), libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog),
            "SO_ATTACH_FILTER",
        )?;
        // The filter cannot be replaced or removed any more, even by this process.
        let one: libc::c_int = 1;
        check(
            setsockopt(fd.as_fd(), libc::SOL_SOCKET, libc::SO_LOCK_FILTER, &one),
            "SO_LOCK_FILTER",
        )?;
        // Outgoing packets are refused by the filter anyway; with this (Linux 4.20) the kernel
        // does not even run it for them. Older kernels: the filter suffices.
        let _ = setsockopt(
            fd.as_fd(),
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            &one,
        );
        let _ = setsockopt(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, &RCVBUF);
        // SAFETY: an all-zero sockaddr_ll is a valid value; the fields that matter are set.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = 0;
        // SAFETY: `sll` is a properly initialised sockaddr_ll of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(r, "bind capture socket")?;
        let mut c = Capture { fd };
        let mut buf = [0u8; 64];
        while c.recv(&mut buf)?.is_some() {}
        Ok(c)
    }

    /// The next packet, or None when nothing is queued. Outgoing, broadcast, multicast and
    /// other hosts' packets are skipped here too (the filter already refuses them).
    pub fn recv<'a>(&mut self, buf: &'a mut [u8]) -> io::Result<Option<Received<'a>>> {
        loop {
            // SAFETY: an all-zero sockaddr_ll is valid; recvfrom fills at most `len` bytes.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and sll are live and writable for the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    std::ptr::from_mut(&mut sll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if sll.sll_pkttype != libc::PACKET_HOST {
                continue;
            }
            // MSG_TRUNC returns the full length; the bytes are at most buf.len().
            let got = usize::try_from(n).unwrap_or(0).min(buf.len());
            return Ok(Some(Received {
                bytes: buf.get(..got).unwrap_or_default(),
                ifindex: sll.sll_ifindex,
            }));
        }
    }
}

impl AsFd for Capture {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
