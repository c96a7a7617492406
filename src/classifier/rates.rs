//! The `rate:` buckets: one per (rate written in the rules, source), charged on arrival.
//!
//! Runs in the classifier, on the dispatch thread (charging) and the compile thread (pruning
//! after a reload), under `Shared::rates`. Sources are peer addresses from the parent,
//! grouped by nanny.conf's `ipv4prefix`/`ipv6prefix` (see `policy::grouping`); the arithmetic
//! of one bucket is `policy::rate`'s.
//!
//! Invariants:
//! - Every connection attempt is charged once to every rate of the policy current when it
//!   arrives, in arrival order, on the one dispatch thread, before any evaluation: so under any
//!   number of concurrent attempts exactly N of a full bucket's see "not over", whichever
//!   thread later evaluates them and whichever class they end in.
//! - A bucket is keyed by its rate (N and T) and its source, not by a position in the rules:
//!   a reload that keeps a rate keeps its buckets; buckets of a rate the new rules no longer
//!   have are dropped when the new rules are installed.
//! - A full bucket is the same as no bucket, so full ones are dropped: at most once a minute,
//!   and whenever the table reaches [`MAX_BUCKETS`]. If that is not enough room, buckets that
//!   still hold a token go next, then any: the sources kept longest are the ones over their
//!   rate now. Forgetting a bucket can only make its source look less busy (fail open), and
//!   only when more than [`MAX_BUCKETS`] buckets are in use at once.
//! - Charging a known source is one hash lookup per rate and no allocation; a new source
//!   inserts into a table that never grows past [`MAX_BUCKETS`].

use std::collections::HashMap;
use std::net::IpAddr;

use policy::grouping::Grouping;
use policy::rate::RateSpec;
use policy::rules::MAX_RATES;

/// Most buckets at once (all rates together), like the history's cap: about 60 bytes each,
/// so the table stays under 8 MB however many sources a flood uses.
pub const MAX_BUCKETS: usize = 100_000;

/// Seconds between sweeps of full buckets when the table is not full.
const SWEEP_EVERY_NS: u64 = 60 * 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    spec: RateSpec,
    source: IpAddr,
}

/// Which rates one connection attempt was over: bit i is `specs[i]`. Travels with the job, so
/// the evaluation answers from the charge made on arrival, whatever policy it runs under.
/// `specs` is the generation's list, shared (a thin pointer keeps the job small).
#[derive(Clone, Debug)]
pub struct RateMarks {
    pub specs: std::sync::Arc<Vec<RateSpec>>,
    pub over: u64,
}

impl RateMarks {
    /// Whether the attempt was over `spec`. A rate added by a reload after the attempt arrived
    /// was not charged for it: not over.
    pub fn is_over(&self, spec: RateSpec) -> bool {
        self.specs
            .iter()
            .position(|s| *s == spec)
            .is_some_and(|i| i < 64 && self.over & (1u64 << i) != 0)
    }
}

/// The bucket table.
#[derive(Debug)]
pub struct Rates {
    /// The theoretical arrival time of each bucket (`policy::rate`).
    buckets: HashMap<Key, u128>,
    grouping: Grouping,
    cap: usize,
    last_sweep_ns: u64,
}

impl Rates {
    pub fn new(cap: usize) -> Rates {
        Rates {
            buckets: HashMap::new(),
            grouping: Grouping::default(),
            cap: cap.max(1),
            last_sweep_ns: 0,
        }
    }

    /// nanny.conf's grouping. It cannot change while the daemon runs; if it ever did, buckets
    /// keyed by the old groups would mean nothing, so they are forgotten.
    pub fn set_grouping(&mut self, grouping: Grouping) {
        if grouping != self.grouping {
            self.grouping = grouping;
            self.buckets.clear();
        }
    }

    /// Charges one attempt from `ip` at `now_ns` to each of `specs` (at most [`MAX_RATES`]);
    /// returns the over-rate mask (bit i for `specs[i]`).
    pub fn charge(&mut self, specs: &[RateSpec], ip: IpAddr, now_ns: u64) -> u64 {
        let source = self.grouping.key(ip);
        if now_ns.saturating_sub(self.last_sweep_ns) >= SWEEP_EVERY_NS {
            self.last_sweep_ns = now_ns;
            self.drop_full(now_ns);
        }
        let mut over = 0u64;
        for (i, &spec) in specs.iter().enumerate().take(MAX_RATES.min(64)) {
            let key = Key { spec, source };
            // The key test runs only at the cap, so a charge is one hash per rate.
            if self.buckets.len() >= self.cap && !self.buckets.contains_key(&key) {
                self.make_room(now_ns);
            }
            let tat = self.buckets.entry(key).or_insert(0);
            if spec.attempt(tat, now_ns) {
                over |= 1u64 << i;
            }
        }
        over
    }

    /// After a reload: forget the buckets of rates the new rules do not have.
    pub fn keep_only(&mut self, specs: &[RateSpec]) {
        self.buckets.retain(|k, _| specs.contains(&k.spec));
    }

    /// SIGUSR1: forget every bucket.
    pub fn clear(&mut self) {
        self.buckets.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    fn drop_full(&mut self, now_ns: u64) {
        self.buckets.retain(|k, tat| !k.spec.is_full(*tat, now_ns));
    }

    /// Frees at least a quarter of the table, so the next full sweep is MAX/4 inserts away
    /// (amortised O(1) per attempt): full buckets first, then those with a token left, then
    /// any.
    fn make_room(&mut self, now_ns: u64) {
        let target = self.cap - self.cap / 4;
        self.drop_full(now_ns);
        if self.buckets.len() > target {
            self.buckets
                .retain(|k, tat| k.spec.tokens(*tat, now_ns) == 0);
        }
        let mut excess = self.buckets.len().saturating_sub(target);
        if excess > 0 {
            self.buckets.retain(|_, _| {
                if excess > 0 {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
        self.last_sweep_ns = now_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn spec(n: u32, secs: u64) -> RateSpec {
        RateSpec::new(n, secs).unwrap()
    }

    /// How many of `tries` attempts from `src` at `now` were not over `specs[0]`.
    fn passes(r: &mut Rates, specs: &[RateSpec], src: &str, tries: u32, now: u64) -> u32 {
        (0..tries)
            .filter(|_| r.charge(specs, ip(src), now) & 1 == 0)
            .count() as u32
    }

    #[test]
    fn exactly_n_pass_then_refill() {
        let mut r = Rates::new(100);
        let specs = [spec(10, 60)];
        assert_eq!(passes(&mut r, &specs, "192.0.2.1", 500, 5 * S), 10);
        assert_eq!(passes(&mut r, &specs, "192.0.2.1", 5, 5 * S + 6 * S), 1);
        assert_eq!(passes(&mut r, &specs, "192.0.2.1", 50, 200 * S), 10);
        assert_eq!(
            passes(&mut r, &specs, "192.0.2.2", 50, 200 * S),
            10,
            "per source"
        );
    }

    #[test]
    fn each_rate_keeps_its_own_bucket() {
        let mut r = Rates::new(100);
        let specs = [spec(2, 10), spec(5, 3600)];
        let masks: Vec<u64> = (0..7)
            .map(|_| r.charge(&specs, ip("10.0.0.1"), S))
            .collect();
        assert_eq!(masks, [0, 0, 0b01, 0b01, 0b01, 0b11, 0b11]);
        // 10 s later the short bucket is full again; the hour bucket is still empty.
        assert_eq!(r.charge(&specs, ip("10.0.0.1"), 11 * S), 0b10);
    }

    #[test]
    fn grouping_shares_buckets() {
        let mut r = Rates::new(100);
        r.set_grouping(Grouping::new(24, 64).unwrap());
        let specs = [spec(3, 60)];
        assert_eq!(passes(&mut r, &specs, "127.70.1.1", 2, S), 2);
        assert_eq!(passes(&mut r, &specs, "127.70.1.2", 5, S), 1, "same /24");
        assert_eq!(passes(&mut r, &specs, "127.70.2.1", 5, S), 3, "other /24");
        assert_eq!(passes(&mut r, &specs, "2001:db8:0:1::a", 2, S), 2);
        assert_eq!(
            passes(&mut r, &specs, "2001:db8:0:1:ffff::b", 5, S),
            1,
            "same /64"
        );
        assert_eq!(
            passes(&mut r, &specs, "2001:db8:0:2::a", 5, S),
            3,
            "other /64"
        );
        assert_eq!(
            passes(&mut r, &specs, "::ffff:127.70.1.3", 1, S),
            0,
            "v4-mapped is its IPv4 /24"
        );
    }

    #[test]
    fn reload_keeps_buckets_of_rates_that_remain() {
        let mut r = Rates::new(100);
        let (a, b) = (spec(2, 60), spec(3, 60));
        assert_eq!(passes(&mut r, &[a, b], "10.0.0.1", 2, S), 2);
        r.keep_only(&[b]);
        assert_eq!(r.len(), 1);
        // b's bucket went on (one token left); a comes back full.
        assert_eq!(r.charge(&[b, a], ip("10.0.0.1"), S), 0);
        assert_eq!(r.charge(&[b, a], ip("10.0.0.1"), S), 0b01);
    }

    #[test]
    fn full_buckets_are_dropped_and_the_table_is_bounded() {
        let mut r = Rates::new(40);
        let specs = [spec(2, 10)];
        for i in 0..30u32 {
            r.charge(&specs, IpAddr::from(i.to_be_bytes()), S);
        }
        assert_eq!(r.len(), 30);
        // A minute later every bucket is full: the periodic sweep drops them all.
        r.charge(&specs, ip("192.0.2.9"), 61 * S);
        assert_eq!(r.len(), 1);
        // A hammering source stays tracked while a flood of one-shot sources fills the table.
        let busy = ip("198.51.100.1");
        assert_eq!(passes(&mut r, &specs, "198.51.100.1", 3, 62 * S), 2);
        for i in 0..10_000u32 {
            r.charge(
                &specs,
                IpAddr::from((0x0a00_0000 + i).to_be_bytes()),
                62 * S,
            );
            assert!(r.len() <= 40, "never above the cap");
        }
        assert_eq!(r.charge(&specs, busy, 62 * S), 1, "still over its rate");
        r.clear();
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn marks_answer_by_rate() {
        let marks = RateMarks {
            specs: std::sync::Arc::new(vec![spec(1, 1), spec(2, 2)]),
            over: 0b10,
        };
        assert!(!marks.is_over(spec(1, 1)));
        assert!(marks.is_over(spec(2, 2)));
        assert!(!marks.is_over(spec(3, 3)), "not charged: not over");
    }
}
