//! Per-prefix grouping of source addresses (an extension to portnanny 2): nanny.conf's
//! `ipv4prefix N` and `ipv6prefix N` make every per-source notion (ipmax counting, `rate:`
//! buckets, the connection history) treat all addresses of one /N as one source.
//!
//! Pure arithmetic on addresses, used by the classifier (which owns those tables) and by the
//! nanny.conf parser (the parent's, on the administrator's file). One IPv6 host usually owns a
//! whole /64, so `ipv6prefix 64` stops it from dodging a per-address limit by changing its
//! interface identifier. The defaults (32 and 128) group nothing, so a portnanny 2
//! configuration means the same. Log lines and substitutions keep the real address: only the
//! keys of the tables change.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// The default `ipv4prefix`: every address on its own.
pub const DEFAULT_IPV4_PREFIX: u8 = 32;
/// The default `ipv6prefix`: every address on its own.
pub const DEFAULT_IPV6_PREFIX: u8 = 128;

/// How source addresses are grouped. Only built by [`Grouping::new`], so the lengths are in
/// range (1–32, 1–128); decoding checks them again, since it crosses to the classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Lengths")]
pub struct Grouping {
    v4: u8,
    v6: u8,
}

/// The decoded form of a [`Grouping`], before its range check.
#[derive(Deserialize)]
struct Lengths {
    v4: u8,
    v6: u8,
}

impl TryFrom<Lengths> for Grouping {
    type Error = String;

    fn try_from(l: Lengths) -> Result<Grouping, String> {
        Grouping::new(l.v4, l.v6)
            .ok_or_else(|| format!("prefix lengths /{} and /{} out of range", l.v4, l.v6))
    }
}

impl Default for Grouping {
    fn default() -> Grouping {
        Grouping {
            v4: DEFAULT_IPV4_PREFIX,
            v6: DEFAULT_IPV6_PREFIX,
        }
    }
}

impl Grouping {
    /// None when a length is out of range (0 would make one source of the whole Internet:
    /// that is `connmax`'s job).
    pub fn new(v4: u8, v6: u8) -> Option<Grouping> {
        ((1..=32).contains(&v4) && (1..=128).contains(&v6)).then_some(Grouping { v4, v6 })
    }

    pub fn v4(self) -> u8 {
        self.v4
    }

    pub fn v6(self) -> u8 {
        self.v6
    }

    /// Whether this groups nothing (the portnanny 2 behaviour).
    pub fn is_identity(self) -> bool {
        self == Grouping::default()
    }

    /// The key of `ip`'s group: the first address of its /N. A v4-mapped IPv6 address is
    /// grouped as the IPv4 address it stands for. Costs a mask; no allocation.
    pub fn key(self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                // v4 is 1..=32, so the shift is 0..=31 (checked anyway: never a panic).
                let mask = u32::MAX
                    .checked_shl(32u32.saturating_sub(u32::from(self.v4)))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128u32.saturating_sub(u32::from(self.v6)))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }
}

/// Parses a prefix length argument (`24`, or `/24`) for `ipv4prefix` (`max` 32) or
/// `ipv6prefix` (`max` 128); Err explains the accepted range.
pub fn parse_prefix(arg: &str, max: u8) -> Result<u8, String> {
    let digits = arg.strip_prefix('/').unwrap_or(arg);
    let n = if !digits.is_empty() && digits.len() <= 3 && digits.bytes().all(|b| b.is_ascii_digit())
    {
        digits.parse::<u8>().ok()
    } else {
        None
    };
    match n {
        Some(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{arg}' is not a prefix length from 1 to {max} (such as {})",
            if max == 32 { "24" } else { "64" }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn keys() {
        let g = Grouping::new(24, 64).unwrap();
        // (label, address, key)
        let rows = [
            ("v4 /24", "127.70.1.1", "127.70.1.0"),
            ("same /24", "127.70.1.2", "127.70.1.0"),
            ("other /24", "127.70.2.1", "127.70.2.0"),
            ("v6 /64", "2001:db8:1:2:aaaa::1", "2001:db8:1:2::"),
            (
                "same /64",
                "2001:db8:1:2:ffff:ffff:ffff:ffff",
                "2001:db8:1:2::",
            ),
            ("other /64", "2001:db8:1:3::1", "2001:db8:1:3::"),
            ("loopback", "::1", "::"),
            ("v4-mapped groups as v4", "::ffff:127.70.1.9", "127.70.1.0"),
        ];
        for (label, a, want) in rows {
            assert_eq!(g.key(ip(a)), ip(want), "{label}");
        }
        let d = Grouping::default();
        assert!(d.is_identity());
        for a in ["192.0.2.77", "2001:db8::7", "0.0.0.0", "255.255.255.255"] {
            assert_eq!(d.key(ip(a)), ip(a), "identity {a}");
        }
        let widest = Grouping::new(1, 1).unwrap();
        assert_eq!(widest.key(ip("200.1.2.3")), ip("128.0.0.0"));
        assert_eq!(widest.key(ip("ffff::1")), ip("8000::"));
    }

    #[test]
    fn ranges() {
        assert!(Grouping::new(0, 64).is_none());
        assert!(Grouping::new(33, 64).is_none());
        assert!(Grouping::new(24, 0).is_none());
        assert!(Grouping::new(24, 129).is_none());
        let rows: &[(&str, u8, Result<u8, ()>)] = &[
            ("24", 32, Ok(24)),
            ("/24", 32, Ok(24)),
            ("32", 32, Ok(32)),
            ("1", 32, Ok(1)),
            ("0", 32, Err(())),
            ("33", 32, Err(())),
            ("64", 128, Ok(64)),
            ("128", 128, Ok(128)),
            ("129", 128, Err(())),
            ("", 32, Err(())),
            ("/", 32, Err(())),
            ("+24", 32, Err(())),
            ("24s", 32, Err(())),
            ("0024", 32, Err(())),
            ("99999999999", 128, Err(())),
        ];
        for (arg, max, want) in rows {
            assert_eq!(parse_prefix(arg, *max).map_err(|_| ()), *want, "{arg}");
        }
    }
}
