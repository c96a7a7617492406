//! What the netfilter worker's ctnetlink and the sentry's sock_diag conversations share: a
//! netlink socket connected to the kernel with a receive timeout, sending one request, and the
//! walk over the messages of one received datagram (each frame checked by netlink-packet-core before its
//! length is believed).

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    DecodeError, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};

fn other(why: impl Into<String>) -> io::Error {
    io::Error::other(why.into())
}

/// A netlink socket of `protocol` (netlink_sys::protocols), bound and connected to the kernel;
/// a receive waits at most `timeout`.
pub fn open(protocol: isize, timeout: Duration) -> io::Result<Socket> {
    let mut sock = Socket::new(protocol)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let secs = timeout.as_secs().try_into().unwrap_or(10);
    let tv = nix::sys::time::TimeVal::new(secs, 0);
    let fd = sock.as_raw_fd();
    // SAFETY: `fd` is the socket we own for this call; borrowed only for setsockopt.
    let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::sys::socket::setsockopt(&bfd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
        .map_err(io::Error::from)?;
    Ok(sock)
}

/// Sends one request: `inner` with these header flags, numbered `seq`.
pub fn send<I: NetlinkSerializable>(
    sock: &Socket,
    flags: u16,
    seq: u32,
    inner: I,
) -> io::Result<()> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = flags;
    hdr.sequence_number = seq;
    let mut packet = NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(inner));
    packet.finalize();
    let mut out = vec![0; packet.buffer_len()];
    packet.serialize(&mut out);
    sock.send(&out, 0)?;
    Ok(())
}

/// The messages of one datagram that answer request `seq`, each whole (header included), in
/// order; messages for other requests (answers to one that timed out) are skipped.
pub fn messages(datagram: &[u8], seq: u32) -> Messages<'_> {
    Messages {
        rest: datagram,
        seq,
    }
}

pub struct Messages<'a> {
    rest: &'a [u8],
    seq: u32,
}

/// A frame that netlink-packet-core refuses.
pub fn undecodable(e: DecodeError) -> io::Error {
    other(format!("netlink: undecodable message: {e}"))
}

impl<'a> Iterator for Messages<'a> {
    type Item = io::Result<NetlinkBuffer<&'a [u8]>>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            // Checked: at least a header, and a length within the datagram.
            let frame = match NetlinkBuffer::new_checked(self.rest) {
                Ok(f) => f,
                Err(e) => {
                    self.rest = &[];
                    return Some(Err(undecodable(e)));
                }
            };
            let len = usize::try_from(frame.length()).unwrap_or(0);
            if len == 0 {
                self.rest = &[];
                return Some(Err(other("netlink: a message of length 0")));
            }
            let whole = self.rest;
            // Messages are 4-byte aligned in a datagram.
            self.rest = self.rest.get(len.div_ceil(4) * 4..).unwrap_or_default();
            if frame.sequence_number() == self.seq {
                return Some(Ok(NetlinkBuffer::new(whole)));
            }
        }
        None
    }
}
