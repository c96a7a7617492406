//! The loop's epoll set: what the loop waits on, kept registered across turns, so a turn that
//! waits on the same descriptors as the last one makes no system call but `epoll_wait`.
//!
//! Why not poll(2): poll hands the kernel every descriptor on every call, and the kernel polls
//! each one and hooks and unhooks a wait-queue entry per descriptor per call. At concurrency 1
//! the loop waits twice per connection on at least four descriptors (signalfd, classifier,
//! resolver, listener), and on every message writer and PROXY header besides. The gain at
//! concurrency 1 is small (2-3% `msg` and `drop` conn/s, bench/README.md); what a turn costs
//! no longer grows with the descriptors that did not change.
//!
//! The loop still says every turn what it wants ([`Interest::want`]); this file turns that into
//! the few `epoll_ctl` calls that change the set. Each thing watched has a [`Key`] that names
//! one open file for its whole life (a worker by its pid, a connection by its id, a loader by
//! its serial), so a descriptor number reused by a new file is a new key and is added afresh.
//! Registrations go when their key is no longer wanted. Connections' sockets (message writers,
//! PROXY headers) are watched one-shot: a stale registration for a socket the parent closed
//! while a spawned service still holds it fires at most once, and its token is ignored.
//!
//! Runs in the parent; touches only descriptors the loop passes in.

use foldhash::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::poll::{PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

/// One thing the loop waits on: which of the loop's slots it is, and the identity of the open
/// file behind it (0 where the slot alone names it for the daemon's life).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key<S> {
    pub slot: S,
    pub id: u64,
}

#[derive(Debug)]
struct Registration {
    fd: RawFd,
    events: EpollFlags,
    token: u64,
    one_shot: bool,
    /// A one-shot registration that fired is disarmed until re-armed with `EPOLL_CTL_MOD`.
    armed: bool,
    /// The turn that last wanted it.
    wanted: u64,
}

/// Events taken per `epoll_wait`; more wait for the next turn (level-triggered).
const MAX_EVENTS: usize = 256;

pub(super) struct Interest<S> {
    epoll: Epoll,
    regs: HashMap<Key<S>, Registration>,
    by_token: HashMap<u64, Key<S>>,
    by_fd: HashMap<RawFd, Key<S>>,
    next_token: u64,
    turn: u64,
    events: Vec<EpollEvent>,
}

fn epoll_flags(events: PollFlags, one_shot: bool) -> EpollFlags {
    // POLLIN, POLLOUT, POLLERR and POLLHUP have the same bits in both interfaces.
    let mut f = EpollFlags::from_bits_truncate(i32::from(events.bits()));
    if one_shot {
        f |= EpollFlags::EPOLLONESHOT;
    }
    f
}

impl<S: Copy + Eq + std::hash::Hash> Interest<S> {
    pub fn new() -> nix::Result<Interest<S>> {
        Ok(Interest {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            regs: HashMap::default(),
            by_token: HashMap::default(),
            by_fd: HashMap::default(),
            next_token: 1,
            turn: 0,
            events: vec![EpollEvent::empty(); MAX_EVENTS],
        })
    }

    /// Starts a turn: what is not wanted again before [`Interest::wait`] is removed.
    pub fn begin(&mut self) {
        self.turn += 1;
    }

    /// Waits this turn for `events` on `fd`, the open file `key` names. `one_shot` for sockets
    /// a spawned service may keep open after the parent closes them (see the module comment).
    pub fn want(
        &mut self,
        key: Key<S>,
        fd: BorrowedFd<'_>,
        events: PollFlags,
        one_shot: bool,
    ) -> nix::Result<()> {
        let raw = fd.as_raw_fd();
        let flags = epoll_flags(events, one_shot);
        if let Some(r) = self.regs.get_mut(&key) {
            r.wanted = self.turn;
            if r.fd == raw {
                if r.events != flags || !r.armed {
                    let mut ev = EpollEvent::new(flags, r.token);
                    self.epoll.modify(fd, &mut ev)?;
                    r.events = flags;
                    r.armed = true;
                }
                return Ok(());
            }
        }
        // New, or (never for a key that names one file) the same key on another descriptor.
        self.forget(&key);
        if let Some(stale) = self.by_fd.get(&raw).copied() {
            // The file that had this number was closed (the kernel dropped its registration,
            // or keeps a stale one whose token we are about to forget).
            self.forget(&stale);
        }
        let token = self.next_token;
        self.next_token += 1;
        match self.epoll.add(fd, EpollEvent::new(flags, token)) {
            Ok(()) => {}
            // Still registered: a stale entry for this very file (closed and reopened
            // through a copy is impossible, so this is the same file under a new key).
            Err(Errno::EEXIST) => self.epoll.modify(fd, &mut EpollEvent::new(flags, token))?,
            Err(e) => return Err(e),
        }
        self.regs.insert(
            key,
            Registration {
                fd: raw,
                events: flags,
                token,
                one_shot,
                armed: true,
                wanted: self.turn,
            },
        );
        self.by_token.insert(token, key);
        self.by_fd.insert(raw, key);
        Ok(())
    }

    /// Drops `key`'s registration from the tables (the kernel's is removed by the caller or
    /// went with its file).
    fn forget(&mut self, key: &Key<S>) -> Option<RawFd> {
        let r = self.regs.remove(key)?;
        self.by_token.remove(&r.token);
        if self.by_fd.get(&r.fd) == Some(key) {
            self.by_fd.remove(&r.fd);
        }
        Some(r.fd)
    }

    /// Removes what this turn did not want, then waits up to `timeout` and appends what is
    /// ready to `fired`, as the slots the loop passed in with poll's revents bits.
    pub fn wait(
        &mut self,
        timeout: PollTimeout,
        fired: &mut Vec<(S, PollFlags)>,
    ) -> nix::Result<()> {
        let turn = self.turn;
        let gone: Vec<Key<S>> = self
            .regs
            .iter()
            .filter(|(_, r)| r.wanted != turn)
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            if let Some(fd) = self.forget(&key) {
                // SAFETY: epoll_ctl only looks the number up; a number already closed gives
                // EBADF, and one reused by a file not in the set gives ENOENT. A number
                // reused by a file that *is* in the set cannot reach here: `want` forgot the
                // old key when it added the new file (`by_fd`).
                unsafe {
                    libc::epoll_ctl(
                        self.epoll.0.as_raw_fd(),
                        libc::EPOLL_CTL_DEL,
                        fd,
                        std::ptr::null_mut(),
                    );
                }
            }
        }
        let n = self.epoll.wait(&mut self.events, timeout)?;
        for ev in self.events.iter().take(n) {
            let Some(key) = self.by_token.get(&ev.data()) else {
                // A stale registration (see the module comment).
                continue;
            };
            let Some(r) = self.regs.get_mut(key) else {
                continue;
            };
            if r.one_shot {
                r.armed = false;
            }
            let bits = ev.events().bits() & 0xffff;
            fired.push((
                key.slot,
                PollFlags::from_bits_truncate(i16::try_from(bits).unwrap_or(0)),
            ));
        }
        Ok(())
    }

    /// How many registrations the set holds (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.regs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn key(slot: u32, id: u64) -> Key<u32> {
        Key { slot, id }
    }

    fn turn(i: &mut Interest<u32>, want: &[(Key<u32>, &UnixStream, bool)]) -> Vec<u32> {
        i.begin();
        for (k, s, one_shot) in want {
            i.want(*k, s.as_fd(), PollFlags::POLLIN, *one_shot).unwrap();
        }
        let mut fired = Vec::new();
        i.wait(PollTimeout::ZERO, &mut fired).unwrap();
        let mut slots: Vec<u32> = fired.iter().map(|(s, _)| *s).collect();
        slots.sort_unstable();
        slots
    }

    #[test]
    fn reports_readiness_level_triggered_and_drops_what_is_not_wanted() {
        let mut i = Interest::new().unwrap();
        let (a, mut a_peer) = UnixStream::pair().unwrap();
        let (b, mut b_peer) = UnixStream::pair().unwrap();
        assert!(turn(&mut i, &[(key(1, 0), &a, false), (key(2, 0), &b, false)]).is_empty());
        a_peer.write_all(b"x").unwrap();
        b_peer.write_all(b"y").unwrap();
        let want = [(key(1, 0), &a, false), (key(2, 0), &b, false)];
        assert_eq!(turn(&mut i, &want), vec![1, 2]);
        assert_eq!(turn(&mut i, &want), vec![1, 2], "level-triggered");
        assert_eq!(turn(&mut i, &[(key(2, 0), &b, false)]), vec![2]);
        assert_eq!(i.len(), 1, "slot 1 was removed");
        assert_eq!(turn(&mut i, &want), vec![1, 2], "and added again");
    }

    #[test]
    fn one_shot_fires_once_until_wanted_again() {
        let mut i = Interest::new().unwrap();
        let (a, mut a_peer) = UnixStream::pair().unwrap();
        a_peer.write_all(b"x").unwrap();
        i.begin();
        i.want(key(1, 0), a.as_fd(), PollFlags::POLLIN, true)
            .unwrap();
        let mut fired = Vec::new();
        i.wait(PollTimeout::ZERO, &mut fired).unwrap();
        assert_eq!(fired.len(), 1);
        // Not wanted-again within the turn: disarmed, so the next wait sees nothing even
        // though the input is still there.
        fired.clear();
        i.wait(PollTimeout::ZERO, &mut fired).unwrap();
        assert!(fired.is_empty());
        assert_eq!(turn(&mut i, &[(key(1, 0), &a, true)]), vec![1], "re-armed");
    }

    #[test]
    fn one_file_under_a_new_key_is_watched_under_the_new_key() {
        let mut i = Interest::new().unwrap();
        let (a, mut a_peer) = UnixStream::pair().unwrap();
        assert!(turn(&mut i, &[(key(1, 7), &a, false)]).is_empty());
        a_peer.write_all(b"x").unwrap();
        // The kernel still holds the registration for this file: re-registered, not lost.
        assert_eq!(turn(&mut i, &[(key(2, 8), &a, false)]), vec![2]);
        assert_eq!(i.len(), 1);
    }

    #[test]
    fn a_closed_descriptor_is_dropped_quietly() {
        let mut i = Interest::new().unwrap();
        let (a, _a_peer) = UnixStream::pair().unwrap();
        let (b, mut b_peer) = UnixStream::pair().unwrap();
        assert!(turn(&mut i, &[(key(1, 1), &a, false), (key(2, 2), &b, false)]).is_empty());
        drop(a);
        b_peer.write_all(b"x").unwrap();
        assert_eq!(turn(&mut i, &[(key(2, 2), &b, false)]), vec![2]);
        assert_eq!(i.len(), 1);
    }
}
