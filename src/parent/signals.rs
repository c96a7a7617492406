//! Signals for the parent's poll loop: a self-pipe plus one flag per signal (signal-hook).
//!
//! Runs in the parent. The handlers (installed by signal-hook) only set an atomic flag and
//! write a byte to the pipe, both async-signal-safe; all the work happens in the poll loop
//! after it drains the pipe and takes the flags. Flags are registered before the pipe, so a
//! woken loop always finds its flag already set.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};

static CHLD: AtomicBool = AtomicBool::new(false);
static HUP: AtomicBool = AtomicBool::new(false);
static USR1: AtomicBool = AtomicBool::new(false);
static USR2: AtomicBool = AtomicBool::new(false);
static TERM: AtomicBool = AtomicBool::new(false);

/// Which signals arrived since the last [`Signals::take`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub child: bool,
    pub hup: bool,
    pub usr1: bool,
    pub usr2: bool,
    pub term: bool,
}

/// The read end of the self-pipe.
pub struct Signals {
    read: UnixStream,
}

impl Signals {
    /// Installs the handlers. Call once, before any child exists, so no SIGCHLD is missed.
    pub fn install() -> io::Result<Signals> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let table: [(i32, &'static AtomicBool); 6] = [
            (SIGCHLD, &CHLD),
            (SIGHUP, &HUP),
            (SIGUSR1, &USR1),
            (SIGUSR2, &USR2),
            (SIGTERM, &TERM),
            (SIGINT, &TERM),
        ];
        for (sig, flag) in table {
            signal_hook::flag::register(sig, flag)?;
            signal_hook::low_level::pipe::register(sig, write.try_clone()?)?;
        }
        Ok(Signals { read })
    }

    /// Empties the pipe and returns (and clears) the flags.
    pub fn take(&mut self) -> Pending {
        let mut buf = [0u8; 64];
        // Bounded: the pipe holds at most its buffer; each read empties up to 64 bytes.
        for _ in 0..1024 {
            match self.read.read(&mut buf) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
        Pending {
            child: CHLD.swap(false, Ordering::SeqCst),
            hup: HUP.swap(false, Ordering::SeqCst),
            usr1: USR1.swap(false, Ordering::SeqCst),
            usr2: USR2.swap(false, Ordering::SeqCst),
            term: TERM.swap(false, Ordering::SeqCst),
        }
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}
