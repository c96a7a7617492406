//! The sentry's capture socket: AF_PACKET, SOCK_DGRAM (the kernel strips the link-layer
//! header, so every packet starts at its IPv4 or IPv6 header), all protocols, every interface
//! of the sentry's network namespace, with the [`bpf`](super::bpf) filter attached, read
//! through a TPACKET_V3 receive ring: the kernel packs accepted packets into blocks of shared
//! memory and hands a block over when it is full or [`RETIRE_MS`] after its first packet, so
//! the sentry wakes once per block, not once per packet, and reads packets without a system
//! call (a full-range SYN scan is 65,535 packets in about a second).
//!
//! Runs in the sentry after the privilege drop; opening the socket needs CAP_NET_RAW, the one
//! capability its row keeps. The packets are hostile: this module only moves bytes (every
//! offset the ring's headers give is checked against the block before it is used), the parsing
//! (etherparse) is in `detect`.
//!
//! ORDER: the socket is created with protocol 0, which receives nothing; the filter is attached
//! and the ring set up; only then does bind() with ETH_P_ALL start the flow. Nothing unfiltered
//! can be queued in between.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::bpf;

/// One block of the ring: several hundred probes (each cut to bpf::SNAP). The kernel wants a
/// multiple of the page size, and 64 KiB is one for 4, 16 and 64 KiB pages alike.
const BLOCK_SIZE: usize = 64 * 1024;
/// Blocks in the ring: some 1,400 packets can wait for the sentry; beyond that the kernel
/// drops (counted, see [`Capture::take_drops`]), which only loses reports.
const BLOCK_NR: usize = 4;
/// The frame size TPACKET_V3 validates the request against (its packets are packed, not put
/// in fixed frames).
const FRAME_SIZE: usize = 2048;
/// A block that holds a packet is handed over at most this long after it was opened: the most
/// a report waits for the ring.
pub const RETIRE_MS: u32 = 10;

// The ring's layout (linux/if_packet.h). A block starts with `tpacket_block_desc`: version,
// offset_to_priv, then `tpacket_hdr_v1`'s block_status, num_pkts, offset_to_first_pkt.
const BLOCK_STATUS: usize = 8;
const BLOCK_NUM_PKTS: usize = 12;
const BLOCK_FIRST_PKT: usize = 16;
// A packet starts with `tpacket3_hdr`: tp_next_offset, .., tp_snaplen, .., tp_net; its
// sockaddr_ll follows the header, aligned to TPACKET_ALIGNMENT.
const PKT_NEXT: usize = 0;
const PKT_SNAPLEN: usize = 12;
const PKT_NET: usize = 26;
const PKT_SLL: usize = 48;
const SLL_IFINDEX: usize = 4;
const SLL_PKTTYPE: usize = 10;
const PKT_HEADERS: usize = PKT_SLL + std::mem::size_of::<libc::sockaddr_ll>();

/// The ring's mapping; unmapped on drop.
#[derive(Debug)]
struct Ring {
    base: NonNull<u8>,
}

impl Ring {
    const LEN: usize = BLOCK_SIZE * BLOCK_NR;

    /// The block's status word, which the kernel and the sentry hand the block over with.
    fn status(&self, block: usize) -> &AtomicU32 {
        let offset = block % BLOCK_NR * BLOCK_SIZE + BLOCK_STATUS;
        // SAFETY: `offset` is inside the mapping (block < BLOCK_NR), 8-aligned in a
        // page-aligned block, and the mapping lives as long as `self`; the kernel writes the
        // word concurrently, which is what the atomic is for.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast()) }
    }

    /// The bytes of a block the sentry owns (its status has TP_STATUS_USER): the kernel does
    /// not write to it until it is handed back.
    fn block(&self, block: usize) -> &[u8] {
        let offset = block % BLOCK_NR * BLOCK_SIZE;
        // SAFETY: the range is inside the mapping; the caller only reads blocks it owns, and
        // the slice does not outlive the borrow of `self`.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(offset), BLOCK_SIZE) }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `base` and LEN are what mmap returned and was asked for; nothing borrows the
        // mapping any more.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), Ring::LEN);
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// An open capture socket and its ring.
#[derive(Debug)]
pub struct Capture {
    fd: OwnedFd,
    ring: Ring,
    /// The block read next.
    block: usize,
    /// In an owned block: the next packet's offset and how many packets are left.
    cursor: Option<(usize, u32)>,
}

/// A received packet: its network-layer bytes (at most bpf::SNAP) and the interface it came in
/// on.
pub struct Received<'a> {
    pub bytes: &'a [u8],
    /// As sock_diag takes it (the kernel's int, never negative for a real interface).
    pub ifindex: u32,
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
        let ring = Capture::ring(fd.as_fd())?;
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
        Ok(Capture {
            fd,
            ring,
            block: 0,
            cursor: None,
        })
    }

    /// Sets up and maps the TPACKET_V3 receive ring.
    fn ring(fd: BorrowedFd<'_>) -> io::Result<Ring> {
        let version = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        check(
            setsockopt(fd, libc::SOL_PACKET, libc::PACKET_VERSION, &version),
            "PACKET_VERSION",
        )?;
        let req = libc::tpacket_req3 {
            tp_block_size: BLOCK_SIZE as libc::c_uint,
            tp_block_nr: BLOCK_NR as libc::c_uint,
            tp_frame_size: FRAME_SIZE as libc::c_uint,
            tp_frame_nr: (BLOCK_SIZE / FRAME_SIZE * BLOCK_NR) as libc::c_uint,
            tp_retire_blk_tov: RETIRE_MS,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        check(
            setsockopt(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req),
            "PACKET_RX_RING",
        )?;
        // SAFETY: maps the ring the kernel just allocated for this socket, at a fresh address;
        // the result is checked before use and unmapped by Ring's drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Ring::LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("mmap capture ring: {e}")));
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap: null"))?;
        Ok(Ring { base })
    }

    /// Hands the current block back to the kernel and moves to the next one.
    fn release(&mut self) {
        self.ring
            .status(self.block)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.block = (self.block + 1) % BLOCK_NR;
        self.cursor = None;
    }

    /// The next packet, copied into `buf` (cut to its length), or None when no block is ready.
    /// Outgoing, broadcast, multicast and other hosts' packets are skipped here too (the filter
    /// already refuses them).
    pub fn recv<'a>(&mut self, buf: &'a mut [u8]) -> io::Result<Option<Received<'a>>> {
        // Bounded: each round takes a packet or a block, and a block holds finitely many.
        for _ in 0..BLOCK_NR * BLOCK_SIZE {
            let (at, left) = match self.cursor {
                Some(c) => c,
                None => {
                    let status = self.ring.status(self.block).load(Ordering::Acquire);
                    if status & libc::TP_STATUS_USER == 0 {
                        return Ok(None);
                    }
                    let b = self.ring.block(self.block);
                    let num = u32_at(b, BLOCK_NUM_PKTS).unwrap_or(0);
                    let first = u32_at(b, BLOCK_FIRST_PKT).unwrap_or(0) as usize;
                    (first, num)
                }
            };
            let b = self.ring.block(self.block);
            // A header that does not fit the block (never, from a sound kernel) ends it.
            let packet = (left > 0 && at.checked_add(PKT_HEADERS).is_some_and(|e| e <= BLOCK_SIZE))
                .then(|| {
                    let next = u32_at(b, at + PKT_NEXT)? as usize;
                    let snaplen = u32_at(b, at + PKT_SNAPLEN)? as usize;
                    let net = usize::from(u16_at(b, at + PKT_NET)?);
                    let ifindex = u32_at(b, at + PKT_SLL + SLL_IFINDEX)?;
                    let pkttype = *b.get(at + PKT_SLL + SLL_PKTTYPE)?;
                    let bytes =
                        b.get(at.checked_add(net)?..at.checked_add(net)?.checked_add(snaplen)?)?;
                    Some((next, ifindex, pkttype, bytes))
                })
                .flatten();
            let Some((next, ifindex, pkttype, bytes)) = packet else {
                self.release();
                continue;
            };
            let n = bytes.len().min(buf.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            match at.checked_add(next) {
                Some(following) if left > 1 && next != 0 => {
                    self.cursor = Some((following, left - 1));
                }
                _ => self.release(),
            }
            if pkttype != libc::PACKET_HOST {
                continue;
            }
            return Ok(Some(Received {
                bytes: &buf[..n],
                ifindex,
            }));
        }
        Ok(None)
    }

    /// Packets the kernel dropped since the last call because the ring was full.
    pub fn take_drops(&self) -> u32 {
        let mut st = libc::tpacket_stats_v3 {
            tp_packets: 0,
            tp_drops: 0,
            tp_freeze_q_cnt: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `st` and `len` are live and writable; the kernel writes at most `len` bytes
        // (and resets its counters: each call reports what came since the last).
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                std::ptr::from_mut(&mut st).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return 0;
        }
        st.tp_drops
    }
}

impl AsFd for Capture {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
