//! ADDRSPEC parsing and [`AddrSet`], the interval set behind `ip:` and `localip:`.
//!
//! Runs wherever rules are parsed (parent, classifier) and on every evaluation in the
//! classifier. The text is the administrator's rules file; the addresses tested are peers'.
//!
//! An ADDRSPEC is, for IPv4 (with the original portnanny's exact rules):
//! - a full dotted quad (`10.1.2.3`; decimal octets, leading zeros allowed);
//! - a tcpwrappers prefix ending in a dot, one to three octets (`128.100.`);
//! - a proper CIDR netblock (`127.0.0.0/8`); the address may be shortened (`127/8`,
//!   `127.0/16`), missing octets being zero. An improper netblock such as `127.0.0.1/24`
//!   is an error that names the proper one, because it has two plausible meanings;
//! - an inclusive range `A-B` of two full addresses, with A ≤ B.
//!
//! IPv6 (an extension) accepts an address in any form `std` parses, a proper CIDR netblock and an
//! `A-B` range. The prefix-with-trailing-separator form has no sensible IPv6 meaning and is not
//! accepted. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are stored as the IPv4 addresses they
//! stand for, because the classifier presents v4-mapped peers as IPv4 (only specs lying wholly
//! inside `::ffff:0:0/96`; `::/0` means every IPv6 peer and no IPv4 one).
//!
//! Invariant: an [`AddrSet`] holds sorted, disjoint, non-adjacent inclusive intervals, so
//! `contains` is a binary search (O(log n)), never a scan.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One parsed ADDRSPEC: an inclusive interval of addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrRange {
    V4(u32, u32),
    V6(u128, u128),
}

/// Why an ADDRSPEC did not parse. The message names the text and, where there is one, the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrError {
    pub spec: String,
    pub kind: AddrErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddrErrorKind {
    Empty,
    /// Characters that cannot appear in any address form.
    BadCharacters,
    /// Wrong number of octets for the form used.
    OctetCount,
    /// An octet that is empty, not a number or above 255.
    BadOctet,
    /// The part after `/` is not a whole number in range.
    BadPrefixLength {
        max: u32,
    },
    /// A CIDR netblock whose address is not the start of the block; carries the proper form.
    ImproperCidr {
        proper: String,
    },
    /// `A-B` with A above B.
    RangeBackwards,
    /// `A-B` mixing IPv4 and IPv6.
    RangeMixed,
    /// An IPv6 address `std` does not accept.
    BadV6,
    /// A prefix form (`a.b.`) for IPv6 or with too many octets.
    BadPrefix,
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.spec;
        match &self.kind {
            AddrErrorKind::Empty => write!(f, "an empty IP address"),
            AddrErrorKind::BadCharacters => write!(
                f,
                "'{s}' is not an IP address, prefix, CIDR netblock or range (bad characters)"
            ),
            AddrErrorKind::OctetCount => write!(
                f,
                "'{s}' does not have the right number of octets for an IPv4 address (four, or one \
                 to three followed by '.' for a prefix)"
            ),
            AddrErrorKind::BadOctet => {
                write!(
                    f,
                    "'{s}' has an octet that is empty or not a number from 0 to 255"
                )
            }
            AddrErrorKind::BadPrefixLength { max } => {
                write!(
                    f,
                    "'{s}' has a netblock size that is not a number from 0 to {max}"
                )
            }
            AddrErrorKind::ImproperCidr { proper } => write!(
                f,
                "{s} is not a proper CIDR netblock; did you mean {proper}?"
            ),
            AddrErrorKind::RangeBackwards => {
                write!(f, "the range '{s}' starts after it ends")
            }
            AddrErrorKind::RangeMixed => {
                write!(f, "the range '{s}' mixes IPv4 and IPv6 addresses")
            }
            AddrErrorKind::BadV6 => write!(f, "'{s}' is not a valid IPv6 address"),
            AddrErrorKind::BadPrefix => write!(
                f,
                "'{s}' is not a valid address prefix (one to three IPv4 octets each followed by \
                 '.'; IPv6 has no prefix form, use a CIDR netblock)"
            ),
        }
    }
}

impl std::error::Error for AddrError {}

fn err(spec: &str, kind: AddrErrorKind) -> AddrError {
    AddrError {
        spec: spec.to_owned(),
        kind,
    }
}

/// Whether a bare rules operand should be read as an address (and not a hostname): the
/// original's test (only digits, `.`, `/`, `-`, not starting with `.`), extended to IPv6 words
/// (containing `:`, made only of hex digits and `:./-`).
pub fn looks_like_addr(word: &str) -> bool {
    if word.is_empty() {
        return false;
    }
    if word.contains(':') {
        return word
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'/' | b'-'));
    }
    !word.starts_with('.')
        && word
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'/' | b'-'))
}

/// An octet as Python's `int()` reads an all-digit string: any number of digits, value ≤ 255.
fn octet(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let trimmed = s.trim_start_matches('0');
    if trimmed.len() > 3 {
        return None;
    }
    let v: u32 = if trimmed.is_empty() {
        0
    } else {
        trimmed.parse().ok()?
    };
    (v <= 255).then_some(v)
}

/// A dotted IPv4 address with at least `min` octets; missing trailing octets are zero.
fn v4_number(spec: &str, text: &str, min: usize) -> Result<u32, AddrError> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() > 4 || parts.len() < min {
        return Err(err(spec, AddrErrorKind::OctetCount));
    }
    let mut n: u32 = 0;
    for p in &parts {
        let o = octet(p).ok_or_else(|| err(spec, AddrErrorKind::BadOctet))?;
        n = (n << 8) | o;
    }
    let missing = 4 - parts.len() as u32;
    Ok(if missing == 4 { 0 } else { n << (8 * missing) })
}

fn prefix_len(spec: &str, text: &str, max: u32) -> Result<u32, AddrError> {
    let bad = || err(spec, AddrErrorKind::BadPrefixLength { max });
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u32 = text.parse().map_err(|_| bad())?;
    if n > max {
        return Err(bad());
    }
    Ok(n)
}

fn v4_mask(len: u32) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len)
    }
}

fn v6_mask(len: u32) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

fn parse_v4(spec: &str) -> Result<AddrRange, AddrError> {
    if spec.starts_with('.')
        || !spec
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'/' | b'-'))
    {
        return Err(err(spec, AddrErrorKind::BadCharacters));
    }
    if let Some((ip, len)) = spec.split_once('/') {
        let addr = v4_number(spec, ip, 1)?;
        let len = prefix_len(spec, len, 32)?;
        let mask = v4_mask(len);
        if addr & !mask != 0 {
            let proper = format!("{}/{len}", Ipv4Addr::from(addr & mask));
            return Err(err(spec, AddrErrorKind::ImproperCidr { proper }));
        }
        return Ok(AddrRange::V4(addr, addr | !mask));
    }
    if let Some((lo, hi)) = spec.split_once('-') {
        let lo = v4_number(spec, lo, 4)?;
        let hi = v4_number(spec, hi, 4)?;
        if lo > hi {
            return Err(err(spec, AddrErrorKind::RangeBackwards));
        }
        return Ok(AddrRange::V4(lo, hi));
    }
    if let Some(body) = spec.strip_suffix('.') {
        // tcpwrappers prefix: one to three octets, each followed by a dot.
        let parts: Vec<&str> = body.split('.').collect();
        if parts.len() > 3 {
            return Err(err(spec, AddrErrorKind::BadPrefix));
        }
        let mut n: u32 = 0;
        for p in &parts {
            let o = octet(p).ok_or_else(|| err(spec, AddrErrorKind::BadOctet))?;
            n = (n << 8) | o;
        }
        let len = 8 * parts.len() as u32;
        let lo = n << (32 - len);
        return Ok(AddrRange::V4(lo, lo | !v4_mask(len)));
    }
    let a = v4_number(spec, spec, 4)?;
    Ok(AddrRange::V4(a, a))
}

fn v6_number(spec: &str, text: &str) -> Result<u128, AddrError> {
    text.parse::<Ipv6Addr>()
        .map(u128::from)
        .map_err(|_| err(spec, AddrErrorKind::BadV6))
}

fn parse_v6(spec: &str) -> Result<AddrRange, AddrError> {
    if let Some((ip, len)) = spec.split_once('/') {
        let addr = v6_number(spec, ip)?;
        let len = prefix_len(spec, len, 128)?;
        let mask = v6_mask(len);
        if addr & !mask != 0 {
            let proper = format!("{}/{len}", Ipv6Addr::from(addr & mask));
            return Err(err(spec, AddrErrorKind::ImproperCidr { proper }));
        }
        return Ok(AddrRange::V6(addr, addr | !mask));
    }
    if let Some((lo, hi)) = spec.split_once('-') {
        if !lo.contains(':') || !hi.contains(':') {
            return Err(err(spec, AddrErrorKind::RangeMixed));
        }
        let lo = v6_number(spec, lo)?;
        let hi = v6_number(spec, hi)?;
        if lo > hi {
            return Err(err(spec, AddrErrorKind::RangeBackwards));
        }
        return Ok(AddrRange::V6(lo, hi));
    }
    let a = v6_number(spec, spec)?;
    Ok(AddrRange::V6(a, a))
}

/// Parses one ADDRSPEC (see the module documentation).
pub fn parse_addrspec(spec: &str) -> Result<AddrRange, AddrError> {
    if spec.is_empty() {
        return Err(err(spec, AddrErrorKind::Empty));
    }
    if spec.contains(':') {
        parse_v6(spec)
    } else {
        parse_v4(spec)
    }
}

/// The v4-mapped block ::ffff:0:0/96.
const MAPPED_LO: u128 = 0xffff_0000_0000;
const MAPPED_HI: u128 = 0xffff_ffff_ffff;

/// A set of IPv4 and IPv6 addresses as sorted, merged inclusive intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

/// Sorts and merges overlapping or adjacent intervals in place.
fn normalize<T: Ord + Copy>(v: &mut Vec<(T, T)>, succ: impl Fn(T) -> Option<T>) {
    v.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(v.len());
    for &(lo, hi) in v.iter() {
        if let Some(last) = out.last_mut() {
            // Adjacent when last.1 + 1 == lo (no successor means last.1 is the maximum).
            let touches = match succ(last.1) {
                Some(next) => lo <= next,
                None => true,
            };
            if touches {
                if hi > last.1 {
                    last.1 = hi;
                }
                continue;
            }
        }
        out.push((lo, hi));
    }
    *v = out;
}

fn find<T: Ord + Copy>(v: &[(T, T)], x: T) -> bool {
    // Index of the first interval starting after x; the candidate is the one before it.
    let i = v.partition_point(|&(lo, _)| lo <= x);
    i > 0 && v.get(i - 1).is_some_and(|&(_, hi)| x <= hi)
}

impl AddrSet {
    pub fn new() -> AddrSet {
        AddrSet::default()
    }

    /// Builds a set from ranges in one sort-and-merge pass (O(n log n)).
    pub fn from_ranges(ranges: impl IntoIterator<Item = AddrRange>) -> AddrSet {
        let mut set = AddrSet::new();
        for r in ranges {
            set.push_raw(r);
        }
        set.normalize();
        set
    }

    fn push_raw(&mut self, r: AddrRange) {
        match r {
            AddrRange::V4(lo, hi) => self.v4.push((lo, hi)),
            AddrRange::V6(lo, hi) => {
                // A spec written entirely inside ::ffff:0:0/96 names IPv4 peers (which the
                // classifier presents as IPv4). A wider spec such as ::/0 means IPv6 peers
                // only; its mapped part is never consulted (mapped lookups use the v4 side).
                if lo >= MAPPED_LO && hi <= MAPPED_HI {
                    self.v4
                        .push(((lo - MAPPED_LO) as u32, (hi - MAPPED_LO) as u32));
                } else {
                    self.v6.push((lo, hi));
                }
            }
        }
    }

    fn normalize(&mut self) {
        normalize(&mut self.v4, |x: u32| x.checked_add(1));
        normalize(&mut self.v6, |x: u128| x.checked_add(1));
    }

    /// Adds one range (re-normalises; use [`AddrSet::from_ranges`] for many).
    pub fn insert(&mut self, r: AddrRange) {
        self.push_raw(r);
        self.normalize();
    }

    /// Adds every range of `other`.
    pub fn extend(&mut self, other: &AddrSet) {
        self.v4.extend_from_slice(&other.v4);
        self.v6.extend_from_slice(&other.v6);
        self.normalize();
    }

    /// Whether `ip` is in the set. A v4-mapped IPv6 address is tested as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => find(&self.v4, u32::from(v4)),
                None => find(&self.v6, u128::from(a)),
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether every IPv4 and every IPv6 address is in the set (an `ALL` in disguise).
    pub fn is_everything(&self) -> bool {
        self.v4.as_slice() == [(0, u32::MAX)] && self.v6.as_slice() == [(0, u128::MAX)]
    }

    /// The set's disjoint intervals, IPv4 first, each in ascending order.
    pub fn ranges(&self) -> impl Iterator<Item = AddrRange> + '_ {
        self.v4
            .iter()
            .map(|&(lo, hi)| AddrRange::V4(lo, hi))
            .chain(self.v6.iter().map(|&(lo, hi)| AddrRange::V6(lo, hi)))
    }

    /// Number of disjoint intervals (for tests and benchmarks).
    pub fn interval_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: &str) -> u32 {
        u32::from(a.parse::<Ipv4Addr>().unwrap())
    }

    #[test]
    fn addrspec_table() {
        let ok: &[(&str, &str, &str)] = &[
            ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
            ("127.0.0.", "127.0.0.0", "127.0.0.255"),
            ("128.100.", "128.100.0.0", "128.100.255.255"),
            ("10.", "10.0.0.0", "10.255.255.255"),
            ("127.0.0.0/24", "127.0.0.0", "127.0.0.255"),
            ("127/8", "127.0.0.0", "127.255.255.255"),
            ("127.0/16", "127.0.0.0", "127.0.255.255"),
            ("127/32", "127.0.0.0", "127.0.0.0"),
            ("0/0", "0.0.0.0", "255.255.255.255"),
            ("142.150.0.0/15", "142.150.0.0", "142.151.255.255"),
            ("127.0.0.0-127.0.0.240", "127.0.0.0", "127.0.0.240"),
            ("127.0.0.5-127.0.0.5", "127.0.0.5", "127.0.0.5"),
            ("010.001.0.0", "10.1.0.0", "10.1.0.0"),
        ];
        for (spec, lo, hi) in ok {
            assert_eq!(
                parse_addrspec(spec),
                Ok(AddrRange::V4(v4(lo), v4(hi))),
                "{spec}"
            );
        }
        let v6ok: &[(&str, u128, u128)] = &[
            ("::1", 1, 1),
            (
                "2001:db8::/32",
                0x2001_0db8 << 96,
                (0x2001_0db8 << 96) | (u128::MAX >> 32),
            ),
            ("::/0", 0, u128::MAX),
            ("::1-::5", 1, 5),
        ];
        for (spec, lo, hi) in v6ok {
            assert_eq!(parse_addrspec(spec), Ok(AddrRange::V6(*lo, *hi)), "{spec}");
        }
    }

    #[test]
    fn addrspec_errors() {
        let bad: &[(&str, &str)] = &[
            ("", "an empty IP address"),
            ("abc", "'abc' is not an IP address, prefix, CIDR netblock or range (bad characters)"),
            ("localhost.foobar", "'localhost.foobar' is not an IP address, prefix, CIDR netblock or range (bad characters)"),
            ("256.100.100.100", "'256.100.100.100' has an octet that is empty or not a number from 0 to 255"),
            ("128.100.100.100.", "'128.100.100.100.' is not a valid address prefix (one to three IPv4 octets each followed by '.'; IPv6 has no prefix form, use a CIDR netblock)"),
            ("256.100.", "'256.100.' has an octet that is empty or not a number from 0 to 255"),
            ("128.100.0.0/16/16", "'128.100.0.0/16/16' has a netblock size that is not a number from 0 to 32"),
            ("128.100.0.0/33", "'128.100.0.0/33' has a netblock size that is not a number from 0 to 32"),
            ("0.0.0.0/-1", "'0.0.0.0/-1' has a netblock size that is not a number from 0 to 32"),
            ("127.0.0.0/", "'127.0.0.0/' has a netblock size that is not a number from 0 to 32"),
            ("/24", "'/24' has an octet that is empty or not a number from 0 to 255"),
            ("127.0.0.10-127.0.0.1", "the range '127.0.0.10-127.0.0.1' starts after it ends"),
            ("127.0.0", "'127.0.0' does not have the right number of octets for an IPv4 address (four, or one to three followed by '.' for a prefix)"),
            ("128.100", "'128.100' does not have the right number of octets for an IPv4 address (four, or one to three followed by '.' for a prefix)"),
            ("0.0.0.0.0", "'0.0.0.0.0' does not have the right number of octets for an IPv4 address (four, or one to three followed by '.' for a prefix)"),
            ("127.0.0.1/24", "127.0.0.1/24 is not a proper CIDR netblock; did you mean 127.0.0.0/24?"),
            ("127.0.1.0/16", "127.0.1.0/16 is not a proper CIDR netblock; did you mean 127.0.0.0/16?"),
            ("127.0./16", "'127.0./16' has an octet that is empty or not a number from 0 to 255"),
            (".127/8", "'.127/8' is not an IP address, prefix, CIDR netblock or range (bad characters)"),
            ("1.2.3.4-", "'1.2.3.4-' does not have the right number of octets for an IPv4 address (four, or one to three followed by '.' for a prefix)"),
            ("2001:db8::1/32", "2001:db8::1/32 is not a proper CIDR netblock; did you mean 2001:db8::/32?"),
            ("::5-::1", "the range '::5-::1' starts after it ends"),
            ("1.2.3.4-::1", "the range '1.2.3.4-::1' mixes IPv4 and IPv6 addresses"),
            ("::g", "'::g' is not a valid IPv6 address"),
            ("::/129", "'::/129' has a netblock size that is not a number from 0 to 128"),
        ];
        for (spec, msg) in bad {
            let e = parse_addrspec(spec).expect_err(spec);
            assert_eq!(e.to_string(), *msg, "{spec}");
        }
    }

    #[test]
    fn set_merges_and_searches() {
        let set = AddrSet::from_ranges(
            [
                "127.0.0.0/24",
                "127.0.1.0/24",
                "10.0.0.5",
                "10.0.0.6",
                "::1",
                "::2",
            ]
            .iter()
            .map(|s| parse_addrspec(s).unwrap()),
        );
        assert_eq!(set.interval_count(), 3);
        for (ip, want) in [
            ("127.0.0.0", true),
            ("127.0.1.255", true),
            ("127.0.2.0", false),
            ("126.255.255.255", false),
            ("10.0.0.5", true),
            ("10.0.0.6", true),
            ("10.0.0.7", false),
            ("10.0.0.4", false),
            ("::1", true),
            ("::2", true),
            ("::3", false),
            ("::ffff:127.0.0.9", true),
        ] {
            assert_eq!(set.contains(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn mapped_v6_specs_become_v4() {
        let set = AddrSet::from_ranges([parse_addrspec("::ffff:10.0.0.0/104").unwrap()]);
        assert!(set.contains("10.1.2.3".parse().unwrap()));
        assert!(!set.contains("11.0.0.0".parse().unwrap()));
        let all = AddrSet::from_ranges(["0/0", "::/0"].iter().map(|s| parse_addrspec(s).unwrap()));
        assert!(all.is_everything());
        assert!(!AddrSet::from_ranges([parse_addrspec("0/0").unwrap()]).is_everything());
        // ::/0 is every IPv6 peer, not the IPv4 ones.
        let v6 = AddrSet::from_ranges([parse_addrspec("::/0").unwrap()]);
        assert!(!v6.is_everything());
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(!v6.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn extremes_merge() {
        let set = AddrSet::from_ranges([
            AddrRange::V4(u32::MAX, u32::MAX),
            AddrRange::V4(0, u32::MAX - 1),
            AddrRange::V6(u128::MAX, u128::MAX),
        ]);
        assert_eq!(set.interval_count(), 2);
        assert!(set.contains("255.255.255.255".parse().unwrap()));
        assert!(set.contains(IpAddr::V6(Ipv6Addr::from(u128::MAX))));
    }

    #[test]
    fn looks_like_addr_table() {
        for (w, want) in [
            ("127.0.0.1", true),
            ("127.", true),
            ("128.100", true),
            ("/24", true),
            (".foo.com", false),
            (".127", false),
            ("localhost", false),
            ("::1", true),
            ("fe80::1/64", true),
            ("ip:1.2.3.4", false),
            ("", false),
        ] {
            assert_eq!(looks_like_addr(w), want, "{w}");
        }
    }
}
