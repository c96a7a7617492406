//! Signals for the parent's poll loop, read from a signalfd.
//!
//! Runs in the parent. The signals the loop acts on are blocked in the parent (in every thread:
//! the mask is set before any thread or child exists, and threads inherit it) and read from a
//! signalfd the loop polls, so no handler ever interrupts the loop and a child's exit costs one
//! read, not a handler, a self-pipe write and a read. Children start with an empty mask:
//! services (spawn.rs), workers (privsep's spawn) and block commands (std's `Command`) each
//! reset it before exec.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Which signals arrived since the last [`Signals::take`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub child: bool,
    pub hup: bool,
    pub usr1: bool,
    pub usr2: bool,
    pub term: bool,
}

impl Pending {
    fn note(&mut self, signo: u32) {
        let Ok(sig) = i32::try_from(signo).map(Signal::try_from) else {
            return;
        };
        match sig {
            Ok(Signal::SIGCHLD) => self.child = true,
            Ok(Signal::SIGHUP) => self.hup = true,
            Ok(Signal::SIGUSR1) => self.usr1 = true,
            Ok(Signal::SIGUSR2) => self.usr2 = true,
            Ok(Signal::SIGTERM | Signal::SIGINT) => self.term = true,
            _ => {}
        }
    }
}

/// The signals the loop handles.
const HANDLED: [Signal; 6] = [
    Signal::SIGCHLD,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTERM,
    Signal::SIGINT,
];

/// The signalfd the loop polls.
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks the handled signals and opens the signalfd. Call once, before any thread or child
    /// exists: a thread started earlier would keep them unblocked and could take one (lost to
    /// the signalfd), and no SIGCHLD may come before the fd exists.
    pub fn install() -> io::Result<Signals> {
        let mut mask = SigSet::empty();
        for sig in HANDLED {
            mask.add(sig);
        }
        mask.thread_block()?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    /// Reads every pending signal and returns which arrived (several of one kind are one).
    pub fn take(&mut self) -> Pending {
        let mut got = Pending::default();
        // One read takes every pending signal: standard signals do not queue, so at most one
        // of each handled kind is pending, and the buffer holds a record for each.
        let mut buf = [0u8; SIGINFO_SIZE * HANDLED.len()];
        // Bounded: a second read only if the first filled the buffer.
        for _ in 0..4 {
            let n = match nix::unistd::read(&self.fd, &mut buf) {
                Ok(n) => n,
                Err(_) => break,
            };
            for rec in buf.get(..n).unwrap_or_default().chunks_exact(SIGINFO_SIZE) {
                // ssi_signo is the record's first field, in host byte order.
                if let Some(signo) = rec.first_chunk::<4>() {
                    got.note(u32::from_ne_bytes(*signo));
                }
            }
            if n < buf.len() {
                break;
            }
        }
        got
    }
}

/// The size of one `struct signalfd_siginfo` record (signalfd(2)).
const SIGINFO_SIZE: usize = 128;
const _: () = assert!(std::mem::size_of::<libc::signalfd_siginfo>() == SIGINFO_SIZE);

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
