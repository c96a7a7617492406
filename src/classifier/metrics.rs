//! Lookup counters for `nannyctl metrics`: how many lookups the classifier made, by kind, how
//! many got no answer, and how long the answers took, as Prometheus histograms.
//!
//! Runs in the classifier; every evaluation thread and the resolver reader record here. Nothing
//! here comes from a peer except the timing of its answers.
//!
//! What counts: a lookup is observed once, when its life in the classifier ends with an answer
//! (latency from sending the request to the answer's arrival, measured in the classifier) or
//! without one (its deadline passed, or the resolver channel was broken: a failure, observed
//! with the time waited). The resolver answers "nothing" at its own deadline, which arrives
//! first and counts as an answer: its latency shows in the histogram's slow buckets. A lookup
//! whose evaluation ended before its answer came (a prefetch nobody waited for) is not
//! observed: its latency is unknown.
//!
//! Invariants: recording is a handful of relaxed atomic adds, no allocation and no lock; the
//! counters live as long as the classifier process (reloads keep them, a restart starts from
//! zero, which Prometheus's counter resets handle).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use privsep::control::{LookupMetrics, LOOKUP_BUCKETS_MS};
use privsep::proto::Query;

/// The lookup kinds, in the order they are reported; `Query::Host` (PTR plus forward
/// confirmation) is `reverse`.
pub const KINDS: [&str; 5] = ["reverse", "forward", "dnsbl", "identd", "answerson"];

fn kind_index(query: &Query) -> usize {
    match query {
        Query::Host { .. } => 0,
        Query::Forward { .. } => 1,
        Query::Dnsbl { .. } => 2,
        Query::Identd { .. } => 3,
        Query::AnswersOn { .. } => 4,
    }
}

#[derive(Default)]
struct KindStats {
    count: AtomicU64,
    failures: AtomicU64,
    sum_us: AtomicU64,
    /// Observations per bucket (not cumulative): bucket i holds latencies above bound i-1 and
    /// at most bound i; slower ones are only in `count`.
    buckets: [AtomicU64; LOOKUP_BUCKETS_MS.len()],
}

/// Every kind's counters.
#[derive(Default)]
pub struct LookupStats {
    kinds: [KindStats; KINDS.len()],
}

impl LookupStats {
    /// One lookup of `query`'s kind ended after `took`; `failed` when it got no answer.
    pub fn observe(&self, query: &Query, took: Duration, failed: bool) {
        let Some(k) = self.kinds.get(kind_index(query)) else {
            return;
        };
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        if let Some(b) = LOOKUP_BUCKETS_MS
            .iter()
            .position(|ms| us <= ms.saturating_mul(1000))
            .and_then(|i| k.buckets.get(i))
        {
            b.fetch_add(1, Ordering::Relaxed);
        }
        k.sum_us.fetch_add(us, Ordering::Relaxed);
        if failed {
            k.failures.fetch_add(1, Ordering::Relaxed);
        }
        // ORDER: count last, so a concurrent snapshot never sees a bucket above the count
        // (it also reads count last and clamps).
        k.count.fetch_add(1, Ordering::Release);
    }

    /// The counters as `metrics` reports them: one entry per kind, buckets cumulative.
    pub fn snapshot(&self) -> Vec<LookupMetrics> {
        KINDS
            .iter()
            .zip(&self.kinds)
            .map(|(kind, k)| {
                let mut running = 0u64;
                let buckets: Vec<u64> = k
                    .buckets
                    .iter()
                    .map(|b| {
                        running = running.saturating_add(b.load(Ordering::Relaxed));
                        running
                    })
                    .collect();
                let count = k.count.load(Ordering::Acquire).max(running);
                LookupMetrics {
                    kind: (*kind).to_string(),
                    count,
                    failures: k.failures.load(Ordering::Relaxed),
                    sum_us: k.sum_us.load(Ordering::Relaxed),
                    buckets,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use privsep::proto::HostName;

    #[test]
    fn buckets_are_cumulative_and_per_kind() {
        let s = LookupStats::default();
        let host = Query::Host {
            ip: "192.0.2.1".parse().unwrap(),
        };
        let bl = Query::Dnsbl {
            ip: "192.0.2.1".parse().unwrap(),
            zone: HostName::try_from("bl.example".to_string()).unwrap(),
        };
        // (query, latency ms, failed)
        let rows = [
            (&host, 0, false),
            (&host, 1, false),
            (&host, 3, false),
            (&host, 7_000, true),
            (&host, 60_000, true),
            (&bl, 30, false),
        ];
        for (q, ms, failed) in rows {
            s.observe(q, Duration::from_millis(ms), failed);
        }
        let snap = s.snapshot();
        assert_eq!(
            snap.iter().map(|m| m.kind.as_str()).collect::<Vec<_>>(),
            KINDS.to_vec()
        );
        let rev = &snap[0];
        assert_eq!((rev.count, rev.failures), (5, 2));
        assert_eq!(rev.sum_us, (1 + 3 + 7_000 + 60_000) * 1000);
        assert_eq!(rev.buckets.len(), LOOKUP_BUCKETS_MS.len());
        // Bounds 1 5 10 25 50 100 250 500 1000 2500 5000 10000 (ms).
        assert_eq!(rev.buckets, vec![2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4]);
        let dnsbl = &snap[2];
        assert_eq!(dnsbl.count, 1);
        assert_eq!(dnsbl.buckets, vec![0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert!(snap[1].buckets.iter().all(|b| *b == 0));
    }
}
