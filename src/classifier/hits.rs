//! Trap hits per address (the `hits: N[/TIMESPEC]` matcher, PortSentry's SCAN_TRIGGER): which
//! distinct trapped ports an address touched, and when it last touched each.
//!
//! Runs in the classifier. Every key is an address a trap or the sentry saw, and scans come
//! from forged sources too, so memory is bounded: at most [`MAX_ADDRS`] addresses, at most
//! [`MAX_PORTS_PER_ADDR`] ports each (more distinct ports than any threshold needs), entries
//! older than the longest window in use are dropped, and over the cap the address hit least
//! recently is forgotten first.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

/// Most addresses remembered.
pub const MAX_ADDRS: usize = 100_000;

/// Most ports remembered per address: a `hits:` threshold above this can never be reached,
/// and -C says so.
pub const MAX_PORTS_PER_ADDR: usize = 256;

#[derive(Debug, Default)]
struct Entry {
    /// Port → the last time (seconds) it was hit.
    ports: HashMap<u16, u64>,
    last: u64,
}

/// The table. Times are whole seconds on the classifier's monotonic clock.
#[derive(Debug)]
pub struct Hits {
    entries: HashMap<IpAddr, Entry>,
    by_last: BTreeSet<(u64, IpAddr)>,
    cap: usize,
}

impl Default for Hits {
    fn default() -> Hits {
        Hits::new(MAX_ADDRS)
    }
}

impl Hits {
    pub fn new(cap: usize) -> Hits {
        Hits {
            entries: HashMap::new(),
            by_last: BTreeSet::new(),
            cap: cap.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records that `addr` hit trapped `port` at `now`.
    pub fn record(&mut self, addr: IpAddr, port: u16, now: u64) {
        if !self.entries.contains_key(&addr) && self.entries.len() >= self.cap {
            if let Some(&(t, oldest)) = self.by_last.iter().next() {
                self.by_last.remove(&(t, oldest));
                self.entries.remove(&oldest);
            }
        }
        let e = self.entries.entry(addr).or_default();
        self.by_last.remove(&(e.last, addr));
        if e.ports.len() >= MAX_PORTS_PER_ADDR && !e.ports.contains_key(&port) {
            // Forget this address's stalest port to make room.
            if let Some((&p, _)) = e.ports.iter().min_by_key(|(_, t)| **t) {
                e.ports.remove(&p);
            }
        }
        e.ports.insert(port, now);
        e.last = now;
        self.by_last.insert((now, addr));
    }

    /// Distinct ports `addr` hit within the last `window` seconds (None: ever).
    pub fn count(&self, addr: IpAddr, window: Option<u64>, now: u64) -> u32 {
        let Some(e) = self.entries.get(&addr) else {
            return 0;
        };
        let n = e
            .ports
            .values()
            .filter(|t| window.is_none_or(|w| now.saturating_sub(**t) <= w))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Forgets every hit older than `keep` seconds at `now` (the longest window in use).
    pub fn expire(&mut self, keep: u64, now: u64) {
        let cutoff = now.saturating_sub(keep);
        while let Some(&(t, addr)) = self.by_last.iter().next() {
            if t >= cutoff {
                break;
            }
            self.by_last.remove(&(t, addr));
            self.entries.remove(&addr);
        }
        for e in self.entries.values_mut() {
            e.ports.retain(|_, t| *t >= cutoff);
        }
    }

    /// SIGUSR1: forget everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_last.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn distinct_ports_within_a_window() {
        let mut h = Hits::default();
        let a = ip("192.0.2.7");
        h.record(a, 1, 100);
        h.record(a, 1, 101);
        h.record(a, 2, 150);
        h.record(a, 3, 200);
        assert_eq!(h.count(a, None, 200), 3, "repeats of one port count once");
        assert_eq!(h.count(a, Some(60), 200), 2);
        assert_eq!(h.count(a, Some(0), 200), 1);
        assert_eq!(h.count(ip("192.0.2.8"), None, 200), 0);
        h.expire(60, 200);
        assert_eq!(h.count(a, None, 200), 2, "older hits forgotten");
        h.expire(10, 500);
        assert!(h.is_empty());
    }

    #[test]
    fn memory_is_bounded_per_address_and_overall() {
        let mut h = Hits::new(3);
        for i in 0..5u8 {
            h.record(IpAddr::from([10, 0, 0, i]), 1, u64::from(i));
        }
        assert_eq!(h.len(), 3, "cap + 2 addresses: the oldest two forgotten");
        assert_eq!(h.count(IpAddr::from([10, 0, 0, 0]), None, 10), 0);
        assert_eq!(h.count(IpAddr::from([10, 0, 0, 4]), None, 10), 1);
        let a = ip("2001:db8::1");
        let mut h = Hits::default();
        for p in 0..(MAX_PORTS_PER_ADDR as u16 + 10) {
            h.record(a, p, u64::from(p));
        }
        assert_eq!(h.count(a, None, 1000), MAX_PORTS_PER_ADDR as u32);
    }
}
