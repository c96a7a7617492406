//! Fuzz target: the rules parser and evaluator.
//!
//! Runs only under libFuzzer, on arbitrary bytes standing in for an administrator's rules file.
//! Properties checked, beyond "no panic":
//! - `parse_rules` returns a value exactly when it reports no error;
//! - every parsed rule's canonical printed expression parses again to the same printed form;
//! - evaluation of whatever parsed finishes, against facts derived from the input, and gives
//!   the same classification twice (evaluation has no hidden state).

#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use policy::facts::{Facts, HnStatus, HostInfo, SeenTimes};

/// Facts that answer from a few input bytes, always the same way.
struct Seeded(u8);

impl Facts for Seeded {
    fn remote(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, self.0, 1)), 4000)
    }
    fn local(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 25)
    }
    fn host_info(&mut self) -> HostInfo {
        HostInfo {
            status: match self.0 % 4 {
                0 => HnStatus::Good,
                1 => HnStatus::Unknown,
                2 => HnStatus::NoForward,
                _ => HnStatus::AddrMismatch,
            },
            claimed: (self.0 % 4 != 1).then(|| "host.example.com".to_owned()),
        }
    }
    fn identd(&mut self) -> Option<String> {
        self.0.is_multiple_of(2).then(|| "user".to_owned())
    }
    fn forward_lookup(&mut self, _name: &str) -> Vec<IpAddr> {
        vec![self.remote().ip()]
    }
    fn dnsbl(&mut self, _zone: &str) -> Vec<IpAddr> {
        if self.0.is_multiple_of(3) {
            vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]
        } else {
            Vec::new()
        }
    }
    fn answers_on(&mut self, port: u16) -> bool {
        port % 2 == u16::from(self.0 % 2)
    }
    fn seen(&mut self) -> SeenTimes {
        SeenTimes {
            first_secs_ago: u64::from(self.0) * 60,
            last_secs_ago: (self.0 > 128).then_some(30),
        }
    }
}

/// The properties, as a plain function so they can be replayed over a corpus.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = policy::rules::parse_rules("fuzz", text);
    assert_eq!(parsed.value.is_some(), !parsed.has_errors());
    let Some(rules) = parsed.value else {
        return;
    };
    for r in rules.rules() {
        let printed = r.expr.to_string();
        let again = policy::rules::parse_rules("fuzz", &format!("x: {printed}\n"));
        let again = again
            .value
            .expect("the canonical form of a parsed rule parses");
        assert_eq!(again.rules()[0].expr.to_string(), printed);
    }
    let seed = data.first().copied().unwrap_or(0);
    let a = rules.evaluate(&mut Seeded(seed));
    let b = rules.evaluate(&mut Seeded(seed));
    assert_eq!(a, b);
}

fuzz_target!(|data: &[u8]| check(data));
