//! The resolver's answer cache: bounded in entries, every entry lives for one TTL.
//!
//! Runs in the resolver process (unprivileged, not chrooted). Keys are the classifier's
//! `Query` values (already shape-checked on decode); values are answers the resolver computed
//! itself from DNS, identd and connect probes.
//!
//! Invariants:
//! - never more than `capacity` entries; a full cache evicts the oldest entry first;
//! - an entry is never returned after `inserted + ttl` (the caller passes the clock, so tests
//!   need no sleeping);
//! - `clear` (SIGUSR1 via `ParentToResolver::Flush`) empties it at once.
//!
//! getaddrinfo/getnameinfo do not report DNS TTLs, so every entry gets the configured TTL
//! (`cachettl`); the system resolver (or a local caching server) still applies the record TTLs.
//! Because all entries share one TTL, insertion order is expiry order, and one FIFO queue serves
//! both expiry and eviction in O(1) amortised time.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use privsep::proto::{Answer, Query};

struct Entry {
    answer: Answer,
    expires: Instant,
    /// Matches the queue record that owns this entry; older records for the same key are stale.
    seq: u64,
}

/// A TTL + size bounded map from query to answer.
pub struct Cache {
    map: HashMap<Query, Entry>,
    /// Insertion order (= expiry order). May hold stale records for keys re-inserted since;
    /// those are skipped, and the queue is compacted when it grows past twice the capacity.
    order: VecDeque<(u64, Query)>,
    capacity: usize,
    ttl: Duration,
    next_seq: u64,
}

impl Cache {
    /// A cache holding at most `capacity` answers for `ttl` each. Either being zero disables
    /// caching (every `get` misses, `insert` does nothing).
    pub fn new(capacity: usize, ttl: Duration) -> Cache {
        Cache {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            ttl,
            next_seq: 0,
        }
    }

    fn enabled(&self) -> bool {
        self.capacity > 0 && !self.ttl.is_zero()
    }

    /// The cached answer for `query`, if one is younger than the TTL at `now`.
    pub fn get(&mut self, query: &Query, now: Instant) -> Option<Answer> {
        let fresh = match self.map.get(query) {
            None => return None,
            Some(e) => e.expires > now,
        };
        if fresh {
            self.map.get(query).map(|e| e.answer.clone())
        } else {
            self.map.remove(query);
            None
        }
    }

    /// Remember `answer` for `query` from `now` on, evicting expired entries and then, if still
    /// full, the oldest ones.
    pub fn insert(&mut self, query: Query, answer: Answer, now: Instant) {
        if !self.enabled() {
            return;
        }
        self.expire(now);
        if !self.map.contains_key(&query) {
            while self.map.len() >= self.capacity {
                if !self.pop_oldest() {
                    break;
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let expires = now + self.ttl;
        self.order.push_back((seq, query.clone()));
        self.map.insert(
            query,
            Entry {
                answer,
                expires,
                seq,
            },
        );
        if self.order.len() > self.capacity.saturating_mul(2).max(16) {
            let map = &self.map;
            self.order
                .retain(|(seq, q)| map.get(q).is_some_and(|e| e.seq == *seq));
        }
    }

    /// Drop every entry whose TTL ran out by `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some((seq, q)) = self.order.front() {
            match self.map.get(q) {
                Some(e) if e.seq == *seq => {
                    if e.expires > now {
                        break;
                    }
                    self.map.remove(q);
                }
                // Stale record: the key was re-inserted (or removed) since.
                _ => {}
            }
            self.order.pop_front();
        }
    }

    /// Remove the oldest live entry; false if there was none.
    fn pop_oldest(&mut self) -> bool {
        while let Some((seq, q)) = self.order.pop_front() {
            if self.map.get(&q).is_some_and(|e| e.seq == seq) {
                self.map.remove(&q);
                return true;
            }
        }
        false
    }

    /// Forget everything (SIGUSR1).
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    /// Number of live (possibly expired but not yet purged) entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn q(n: u8) -> Query {
        Query::Host {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)),
        }
    }

    fn a(n: u8) -> Answer {
        Answer::Addrs(vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))])
    }

    #[test]
    fn ttl_expires_entries() {
        let t0 = Instant::now();
        let mut c = Cache::new(10, Duration::from_secs(300));
        c.insert(q(1), a(2), t0);
        assert_eq!(c.get(&q(1), t0 + Duration::from_secs(299)), Some(a(2)));
        assert_eq!(c.get(&q(1), t0 + Duration::from_secs(300)), None);
        assert!(c.is_empty(), "an expired entry is dropped when seen");
    }

    #[test]
    fn size_bound_evicts_oldest() {
        let t0 = Instant::now();
        let mut c = Cache::new(3, Duration::from_secs(300));
        for n in 1..=5u8 {
            c.insert(q(n), a(n), t0 + Duration::from_secs(u64::from(n)));
            assert!(c.len() <= 3);
        }
        let now = t0 + Duration::from_secs(6);
        assert_eq!(c.get(&q(1), now), None);
        assert_eq!(c.get(&q(2), now), None);
        assert_eq!(c.get(&q(3), now), Some(a(3)));
        assert_eq!(c.get(&q(5), now), Some(a(5)));
    }

    #[test]
    fn reinsert_refreshes_and_stale_records_do_not_evict() {
        let t0 = Instant::now();
        let mut c = Cache::new(2, Duration::from_secs(10));
        c.insert(q(1), a(1), t0);
        c.insert(q(2), a(2), t0 + Duration::from_secs(1));
        // Re-inserting q(1) makes it the youngest; the full cache must then evict q(2).
        c.insert(q(1), a(7), t0 + Duration::from_secs(2));
        c.insert(q(3), a(3), t0 + Duration::from_secs(3));
        let now = t0 + Duration::from_secs(4);
        assert_eq!(c.get(&q(1), now), Some(a(7)));
        assert_eq!(c.get(&q(2), now), None);
        assert_eq!(c.get(&q(3), now), Some(a(3)));
        // The re-inserted entry lives a full TTL from its re-insertion.
        assert_eq!(c.get(&q(1), t0 + Duration::from_secs(11)), Some(a(7)));
    }

    #[test]
    fn expire_purges_in_order() {
        let t0 = Instant::now();
        let mut c = Cache::new(100, Duration::from_secs(10));
        for n in 0..50u8 {
            c.insert(q(n), a(n), t0 + Duration::from_millis(u64::from(n) * 100));
        }
        c.expire(t0 + Duration::from_millis(10_000 + 2450));
        assert_eq!(c.len(), 25);
    }

    #[test]
    fn flush_empties() {
        let t0 = Instant::now();
        let mut c = Cache::new(10, Duration::from_secs(300));
        c.insert(q(1), a(1), t0);
        c.insert(q(2), a(2), t0);
        c.clear();
        assert!(c.is_empty());
        assert_eq!(c.get(&q(1), t0), None);
        // Still usable afterwards.
        c.insert(q(1), a(3), t0);
        assert_eq!(c.get(&q(1), t0), Some(a(3)));
    }

    #[test]
    fn zero_size_or_ttl_disables() {
        let t0 = Instant::now();
        let mut c = Cache::new(0, Duration::from_secs(300));
        c.insert(q(1), a(1), t0);
        assert_eq!(c.get(&q(1), t0), None);
        let mut c = Cache::new(10, Duration::ZERO);
        c.insert(q(1), a(1), t0);
        assert_eq!(c.get(&q(1), t0), None);
    }

    #[test]
    fn queue_stays_bounded_under_reinsertion() {
        let t0 = Instant::now();
        let mut c = Cache::new(4, Duration::from_secs(1000));
        for i in 0..10_000u32 {
            c.insert(
                q((i % 3) as u8),
                a(1),
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert!(c.order.len() <= 16, "queue length {}", c.order.len());
        assert_eq!(c.len(), 3);
    }
}
