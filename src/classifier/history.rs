//! Per-IP connection history: when an address first and last connected (firsttime, seenwithin:,
//! notseenfor:, stallfor:, waited:, and the `seensince`/`lastseen` substitutions).
//!
//! Runs in the classifier (unprivileged, chrooted). Every key is a peer address the parent
//! accepted a connection from, so an attacker chooses how many distinct keys arrive: memory is
//! bounded by [`MAX_HISTORY`] whatever dropipafter says.
//!
//! Invariants:
//! - An address is recorded only when a time matcher asked about it (`Facts::seen`), never for
//!   every connection, as nanny.conf's reference promises.
//! - The first question about an unknown address answers "first time" (0 seconds since first
//!   seen, never seen last) and records now as both first and last; later questions answer the
//!   age of both and move "last" to now.
//! - With `dropipafter`, entries whose last connection is older than that are removed by a sweep
//!   that runs at most every `expireevery` seconds (0: at every connection). A dropipafter of 0
//!   keeps entries forever, as in the original.
//! - Over the cap, the address seen least recently is forgotten first.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use policy::facts::SeenTimes;
use policy::grouping::Grouping;

/// Most addresses remembered at once. Every entry costs roughly 100 bytes across the map and
/// the age index, so this caps the table near 10 MB even when a scan from many sources meets a
/// time matcher and dropipafter is unset or long.
pub const MAX_HISTORY: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Entry {
    first: u64,
    last: u64,
}

/// The history table. Times are whole seconds on the classifier's monotonic clock.
#[derive(Debug)]
pub struct History {
    entries: HashMap<IpAddr, Entry>,
    /// (last seen, address), oldest first: expiry and eviction both take from the front.
    by_last: BTreeSet<(u64, IpAddr)>,
    cap: usize,
    drop_after: Option<u64>,
    expire_every: u64,
    last_sweep: Option<u64>,
    /// nanny.conf's `ipv4prefix`/`ipv6prefix`: entries are per group, not per address.
    grouping: Grouping,
}

impl History {
    pub fn new(cap: usize) -> History {
        History {
            entries: HashMap::new(),
            by_last: BTreeSet::new(),
            cap: cap.max(1),
            drop_after: None,
            expire_every: 60,
            last_sweep: None,
            grouping: Grouping::default(),
        }
    }

    /// Apply nanny.conf's dropipafter and expireevery (seconds).
    pub fn configure(&mut self, drop_after: Option<u64>, expire_every: u64) {
        // A dropipafter of 0 turns expiry off: the original treats a zero duration as unset.
        self.drop_after = drop_after.filter(|secs| *secs > 0);
        self.expire_every = expire_every;
    }

    /// nanny.conf's grouping. It cannot change while the daemon runs; if it ever did, entries
    /// keyed by the old groups would mean nothing, so they are forgotten.
    pub fn set_grouping(&mut self, grouping: Grouping) {
        if grouping != self.grouping {
            self.grouping = grouping;
            self.clear();
        }
    }

    /// Answer a time matcher's question about `ip` (its group) at `now` and record this
    /// connection.
    pub fn seen(&mut self, ip: IpAddr, now: u64) -> SeenTimes {
        let ip = self.grouping.key(ip);
        if let Some(entry) = self.entries.get_mut(&ip) {
            let times = SeenTimes {
                first_secs_ago: now.saturating_sub(entry.first),
                last_secs_ago: Some(now.saturating_sub(entry.last)),
            };
            self.by_last.remove(&(entry.last, ip));
            entry.last = entry.last.max(now);
            self.by_last.insert((entry.last, ip));
            return times;
        }
        self.entries.insert(
            ip,
            Entry {
                first: now,
                last: now,
            },
        );
        self.by_last.insert((now, ip));
        // Bounded: each pass removes one entry and only one was added.
        while self.entries.len() > self.cap {
            match self.by_last.pop_first() {
                Some((_, old)) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        SeenTimes {
            first_secs_ago: 0,
            last_secs_ago: None,
        }
    }

    /// Run the dropipafter sweep if expireevery allows one now; returns how many were removed.
    pub fn maybe_expire(&mut self, now: u64) -> usize {
        if self.drop_after.is_none() {
            return 0;
        }
        if let Some(at) = self.last_sweep {
            if now.saturating_sub(at) < self.expire_every {
                return 0;
            }
        }
        self.last_sweep = Some(now);
        self.expire(now)
    }

    /// Forget every address whose last connection is more than dropipafter seconds before `now`.
    pub fn expire(&mut self, now: u64) -> usize {
        let Some(drop_after) = self.drop_after else {
            return 0;
        };
        let cutoff = now.saturating_sub(drop_after);
        let mut removed = 0;
        while let Some(&(last, ip)) = self.by_last.first() {
            if last >= cutoff {
                break;
            }
            self.by_last.pop_first();
            self.entries.remove(&ip);
            removed += 1;
        }
        removed
    }

    /// SIGUSR1: forget everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_last.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn times(first: u64, last: Option<u64>) -> SeenTimes {
        SeenTimes {
            first_secs_ago: first,
            last_secs_ago: last,
        }
    }

    #[test]
    fn first_time_then_ages() {
        let mut h = History::new(10);
        let a = ip("192.0.2.1");
        // (label, ip, now, want)
        let rows = [
            ("first contact", a, 100, times(0, None)),
            ("second, 5s later", a, 105, times(5, Some(5))),
            ("third, 20s later", a, 125, times(25, Some(20))),
            (
                "other address is new",
                ip("2001:db8::1"),
                125,
                times(0, None),
            ),
            ("same second", a, 125, times(25, Some(0))),
        ];
        for (label, addr, now, want) in rows {
            assert_eq!(h.seen(addr, now), want, "{label}");
        }
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn expiry_honours_dropipafter_and_expireevery() {
        let mut h = History::new(10);
        h.configure(Some(30), 10);
        h.seen(ip("192.0.2.1"), 0);
        h.seen(ip("192.0.2.2"), 20);
        // The first sweep may run at once; nothing is older than 30s yet.
        assert_eq!(h.maybe_expire(25), 0);
        // Within expireevery of the last sweep: no sweep even though .1 is now stale.
        assert_eq!(h.maybe_expire(31), 0);
        assert_eq!(h.len(), 2);
        // 10s after the last sweep: .1 (last seen at 0, cutoff 5) goes, .2 stays.
        assert_eq!(h.maybe_expire(35), 1);
        assert_eq!(h.len(), 1);
        // An expired address is a first-timer again.
        assert_eq!(h.seen(ip("192.0.2.1"), 36), times(0, None));
        // Exactly dropipafter old is kept (strictly older goes), as in the original.
        assert_eq!(h.expire(50), 0);
        assert_eq!(h.expire(51), 1);
    }

    #[test]
    fn expireevery_zero_sweeps_every_time_and_no_dropipafter_never() {
        let mut h = History::new(10);
        h.seen(ip("192.0.2.1"), 0);
        assert_eq!(h.maybe_expire(1_000_000), 0, "no dropipafter: kept forever");
        h.configure(Some(0), 0);
        assert_eq!(
            h.maybe_expire(2_000_000),
            0,
            "dropipafter 0 disables expiry"
        );
        h.configure(Some(5), 0);
        h.seen(ip("192.0.2.2"), 10);
        assert_eq!(h.maybe_expire(10), 1);
        assert_eq!(h.maybe_expire(16), 1);
        assert!(h.is_empty());
    }

    #[test]
    fn cap_drops_least_recently_seen() {
        let mut h = History::new(3);
        h.seen(ip("10.0.0.1"), 1);
        h.seen(ip("10.0.0.2"), 2);
        h.seen(ip("10.0.0.3"), 3);
        // Touch .1 so .2 becomes the least recently seen.
        h.seen(ip("10.0.0.1"), 4);
        h.seen(ip("10.0.0.4"), 5);
        assert_eq!(h.len(), 3);
        assert_eq!(h.seen(ip("10.0.0.2"), 6), times(0, None), ".2 was evicted");
        assert_eq!(h.len(), 3);
        assert_eq!(h.seen(ip("10.0.0.1"), 7), times(6, Some(3)), ".1 survived");
        for n in 0..1000u32 {
            h.seen(IpAddr::from(n.to_be_bytes()), 100);
        }
        assert_eq!(h.len(), 3, "never above the cap");
    }

    #[test]
    fn grouping_shares_one_entry_per_prefix() {
        let mut h = History::new(10);
        h.set_grouping(Grouping::new(24, 64).unwrap());
        assert_eq!(h.seen(ip("127.70.1.1"), 1), times(0, None));
        assert_eq!(h.seen(ip("127.70.1.2"), 3), times(2, Some(2)), "same /24");
        assert_eq!(h.seen(ip("127.70.2.1"), 3), times(0, None), "other /24");
        assert_eq!(h.seen(ip("2001:db8::1"), 4), times(0, None));
        assert_eq!(
            h.seen(ip("2001:db8::ffff:1"), 9),
            times(5, Some(5)),
            "same /64"
        );
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn clear_forgets_everything() {
        let mut h = History::new(10);
        h.seen(ip("192.0.2.1"), 1);
        h.clear();
        assert!(h.is_empty());
        assert_eq!(h.seen(ip("192.0.2.1"), 2), times(0, None));
    }
}
