//! `rate: N/TIMESPEC` (an extension to portnanny 2): the argument, and the token bucket
//! arithmetic every source's bucket follows.
//!
//! Pure: parsing runs wherever rules are parsed (parent, classifier, `-C`), on the
//! administrator's text; [`RateSpec::attempt`] runs in the classifier, which owns the buckets
//! and the clock (see src/classifier/rates.rs).
//!
//! Semantics: each source (an address, or its /N under `ipv4prefix`/`ipv6prefix`) has, for
//! each distinct N/T written in the rules, a bucket of N tokens that refills continuously at
//! N per T (one token every T/N). Every connection attempt from the source takes a token from
//! each bucket, whichever class it ends in; an attempt that finds a bucket empty takes
//! nothing from it and is "over" that rate. A source never seen, or idle long enough, has a
//! full bucket: N back-to-back attempts pass, the next is over, and one more passes every T/N.
//!
//! The bucket is kept as GCRA's theoretical arrival time, in nanoseconds scaled by N so the
//! emission interval T/N is a whole number and no rounding creeps in: one u128 per bucket,
//! O(1) per attempt, no allocation.

use std::fmt;

use crate::timespec::parse_timespec;

/// Most tokens a bucket may hold: beyond this, a rate is not a limit worth a bucket.
pub const MAX_COUNT: u32 = 1_000_000;

/// Longest window, in seconds (365 days).
pub const MAX_WINDOW_SECS: u64 = 365 * 86_400;

const NANOS: u128 = 1_000_000_000;

/// One `rate:` argument: `count` attempts per `per_secs` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RateSpec {
    count: u32,
    per_secs: u64,
}

impl RateSpec {
    /// None unless 1 ≤ count ≤ [`MAX_COUNT`] and 1 ≤ per_secs ≤ [`MAX_WINDOW_SECS`].
    pub fn new(count: u32, per_secs: u64) -> Option<RateSpec> {
        ((1..=MAX_COUNT).contains(&count) && (1..=MAX_WINDOW_SECS).contains(&per_secs))
            .then_some(RateSpec { count, per_secs })
    }

    pub fn count(self) -> u32 {
        self.count
    }

    pub fn per_secs(self) -> u64 {
        self.per_secs
    }

    /// The emission interval T/N, in scaled units (nanoseconds × N): exactly T in nanoseconds.
    fn interval(self) -> u128 {
        u128::from(self.per_secs) * NANOS
    }

    fn scaled(self, now_ns: u64) -> u128 {
        u128::from(now_ns) * u128::from(self.count)
    }

    /// One attempt at `now_ns` against the bucket `tat` (0 for a new bucket); true when the
    /// attempt is over the rate. Only a passing attempt changes the bucket.
    pub fn attempt(self, tat: &mut u128, now_ns: u64) -> bool {
        let now = self.scaled(now_ns);
        let interval = self.interval();
        // A burst of `count` fits: the count-th attempt at one instant starts (count-1)
        // intervals ahead of now.
        let tolerance = interval * u128::from(self.count - 1);
        let start = (*tat).max(now);
        if start - now > tolerance {
            return true;
        }
        *tat = start + interval;
        false
    }

    /// Whether the bucket has refilled completely, so forgetting it changes nothing.
    pub fn is_full(self, tat: u128, now_ns: u64) -> bool {
        tat <= self.scaled(now_ns)
    }

    /// Whole tokens left in the bucket at `now_ns` (0 to count).
    pub fn tokens(self, tat: u128, now_ns: u64) -> u32 {
        let now = self.scaled(now_ns);
        let debt = tat.saturating_sub(now).div_ceil(self.interval());
        let left = u128::from(self.count).saturating_sub(debt);
        u32::try_from(left).unwrap_or(self.count)
    }
}

impl fmt::Display for RateSpec {
    /// The canonical argument, `N/SECONDSs`; it parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.count, self.per_secs)
    }
}

/// Parses `N/TIMESPEC`; Err is the message (without the matcher name).
pub fn parse_rate(arg: &str) -> Result<RateSpec, String> {
    let Some((n, window)) = arg.split_once('/') else {
        return Err(format!(
            "'{arg}' is not N/TIMESPEC (attempts per time, as in 10/1m)"
        ));
    };
    let count = if !n.is_empty() && n.len() <= 10 && n.bytes().all(|b| b.is_ascii_digit()) {
        n.parse::<u64>().ok()
    } else {
        None
    };
    let count = match count {
        Some(c) if (1..=u64::from(MAX_COUNT)).contains(&c) => c as u32,
        Some(0) => {
            return Err(format!(
                "'{arg}': the number of attempts must be at least 1 (a rate of 0 refuses \
                 everyone: use reject)"
            ))
        }
        _ => {
            return Err(format!(
                "'{arg}': the number of attempts must be a whole number from 1 to {MAX_COUNT}"
            ))
        }
    };
    let per_secs = match parse_timespec(window) {
        Ok(0) => return Err(format!("'{arg}': the time must be longer than 0s")),
        Ok(s) if s > MAX_WINDOW_SECS => {
            return Err(format!("'{arg}': the time may be at most 365d"))
        }
        Ok(s) => s,
        Err(e) => return Err(format!("'{arg}': {e}")),
    };
    RateSpec::new(count, per_secs).ok_or_else(|| format!("'{arg}' is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn spec(n: u32, secs: u64) -> RateSpec {
        RateSpec::new(n, secs).unwrap()
    }

    #[test]
    fn parsing() {
        let rows: &[(&str, Option<(u32, u64)>)] = &[
            ("10/1m", Some((10, 60))),
            ("1/1s", Some((1, 1))),
            ("3/2h", Some((3, 7200))),
            ("1000000/1d", Some((1_000_000, 86_400))),
            ("5/365d", Some((5, MAX_WINDOW_SECS))),
            ("0/1m", None),
            ("1000001/1m", None),
            ("10/0s", None),
            ("10/366d", None),
            ("10", None),
            ("10/", None),
            ("/1m", None),
            ("10/60", None),
            ("-1/1m", None),
            ("1.5/1m", None),
            ("10/1m/2", None),
            ("99999999999999999999/1m", None),
        ];
        for (arg, want) in rows {
            let got = parse_rate(arg).ok().map(|r| (r.count(), r.per_secs()));
            assert_eq!(got, *want, "{arg}");
        }
        assert!(parse_rate("0/1m").unwrap_err().contains("at least 1"));
        assert!(parse_rate("10/1x").unwrap_err().contains("s, m, h or d"));
        assert_eq!(spec(10, 60).to_string(), "10/60s");
    }

    #[test]
    fn burst_of_n_then_over() {
        let r = spec(5, 60);
        let mut tat = 0;
        let t = 1000 * S;
        let over: Vec<bool> = (0..8).map(|_| r.attempt(&mut tat, t)).collect();
        assert_eq!(over, [false, false, false, false, false, true, true, true]);
        assert_eq!(r.tokens(tat, t), 0);
        // One token comes back every 12 s, not before.
        assert!(r.attempt(&mut tat, t + 12 * S - 1));
        assert!(!r.attempt(&mut tat, t + 12 * S));
        assert!(r.attempt(&mut tat, t + 12 * S));
        // After the whole window (from the last pass) the bucket is full again.
        let later = t + 12 * S + 60 * S;
        assert!(r.is_full(tat, later));
        assert_eq!(r.tokens(tat, later), 5);
        assert!(!r.is_full(tat, later - 1));
    }

    #[test]
    fn steady_rate_is_exact_over_a_long_run() {
        // 7 per 10 s (not a whole number of ns per token before scaling): over 1000 windows
        // of one attempt every 100 ms, exactly 7 per window pass after the first burst.
        let r = spec(7, 10);
        let mut tat = 0;
        let mut passed = 0u64;
        let steps = 1000 * 100;
        for i in 0..steps {
            if !r.attempt(&mut tat, i * (S / 10)) {
                passed += 1;
            }
        }
        // The first burst of 7, then one every 10/7 s over the 9999.9 s that follow.
        let want = 7 + (steps - 1) * (S / 10) * 7 / (10 * S);
        assert_eq!(passed, want);
    }

    #[test]
    fn tokens_count_partial_refill() {
        let r = spec(4, 4);
        let mut tat = 0;
        for _ in 0..4 {
            assert!(!r.attempt(&mut tat, 0));
        }
        assert_eq!(r.tokens(tat, 0), 0);
        assert_eq!(r.tokens(tat, S), 1);
        assert_eq!(r.tokens(tat, 2 * S + S / 2), 2);
        assert_eq!(r.tokens(tat, 4 * S), 4);
        assert_eq!(r.tokens(0, 0), 4, "a new bucket is full");
    }
}
