//! Rule evaluation and parsing benchmarks (criterion).
//!
//! - evaluation per connection for a realistic ~50-rule file, for a peer that matches early
//!   and for one that walks most of the file (lookups answered instantly by a fake);
//! - evaluation per connection for a 100,000-entry `ip:` rule (mixed single addresses, CIDR
//!   netblocks and ranges, on continuation lines), hit and miss;
//! - parse time of that 100,000-entry file.
//!
//! Run: `cargo bench -p policy --bench eval` (add `-- --quick` for a short run).

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};

use criterion::{criterion_group, criterion_main, Criterion};
use policy::facts::{Facts, HnStatus, HostInfo, SeenTimes};
use policy::rules::{parse_rules, Rules};

/// Facts answered from memory, as a warm classifier cache would.
struct Instant {
    remote: SocketAddr,
}

impl Facts for Instant {
    fn remote(&self) -> SocketAddr {
        self.remote
    }
    fn local(&self) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 25))
    }
    fn host_info(&mut self) -> HostInfo {
        HostInfo {
            status: HnStatus::Good,
            claimed: Some("dsl-10-2-3-4.pool.example.net".to_owned()),
        }
    }
    fn identd(&mut self) -> Option<String> {
        None
    }
    fn forward_lookup(&mut self, _name: &str) -> Vec<IpAddr> {
        Vec::new()
    }
    fn dnsbl(&mut self, _zone: &str) -> Vec<IpAddr> {
        Vec::new()
    }
    fn answers_on(&mut self, _port: u16) -> bool {
        false
    }
    fn seen(&mut self) -> SeenTimes {
        SeenTimes {
            first_secs_ago: 3600,
            last_secs_ago: Some(20),
        }
    }
}

/// A rules file of the kind a busy SMTP front end has: about 50 rules.
fn realistic_rules() -> String {
    let mut s = String::from(
        "# local and trusted networks\n\
         loopback: 127. ::1\n\
         lan/label=LAN: 10. 192.168. 172.16.0.0/12\n\
         partners/nt: 198.51.100.0/24 203.0.113.0/25 .partner.example.com\n\
         partners: forwhn: mx.partner.example.org\n\
         staff/always: class: lan AND identd: root\n\
         # noisy sources\n\
         scanners/label=scan: 45.0.0.0/8 EXCEPT 45.1.2.3\n\
         tarpit/nt: firsttime\n\
         slow/nt: waited: 1d AND NOT seenwithin: 10s\n",
    );
    for i in 0..20 {
        let _ = writeln!(
            s,
            "block{i}/label=blk{i}: {}.{}.0.0/16 {}.{}.",
            100 + i,
            i,
            150 + i,
            i
        );
    }
    for i in 0..10 {
        let _ = writeln!(
            s,
            "dial{i}/label=dial{i}: .dip{i}.dialup.example re: ^cm[0-9]+-{i}\\."
        );
    }
    s.push_str(
        "dnsbl/label=bl: dnsbl: zen.example.org dnsbl: bl.example.net dnsbl: dul.example.com/127.0.0.3\n\
         paranoid: PARANOID EXCEPT class: partners\n\
         unknown: UNKNOWN\n\
         mail: local: 25@ AND KNOWN\n\
         submission: local: 587@\n\
         answers/nt: answerson: 113\n\
         everyone: ALL\n\
         log/always: ALL\n",
    );
    s
}

/// `n` deterministic IPv4 operands, a third each singles, /24 CIDRs and ranges, spread over the
/// whole space by xorshift32 from `seed`.
fn ip_operands(n: usize, seed: u32) -> impl Iterator<Item = String> {
    let mut x = seed;
    (0..n).map(move |i| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let a = std::net::Ipv4Addr::from(x);
        match i % 3 {
            0 => a.to_string(),
            1 => format!("{}/24", std::net::Ipv4Addr::from(x & 0xffff_ff00)),
            _ => format!("{a}-{}", std::net::Ipv4Addr::from(x.saturating_add(1000))),
        }
    })
}

/// A deterministic 100,000-entry `ip:` rule: singles, CIDRs and ranges.
fn big_ip_rules(n: usize) -> String {
    let mut s = String::with_capacity(n * 24);
    s.push_str("blocked/label=big:\n");
    for op in ip_operands(n, 0x1234_5678) {
        let _ = writeln!(s, "  ip: {op}");
    }
    s.push_str("rest: ALL\n");
    s
}

/// The same kind of blocklist written one rule per line (evaluated as one merged lookup).
fn big_ip_lines(n: usize) -> String {
    let mut s = String::with_capacity(n * 28);
    for op in ip_operands(n, 0x8765_4321) {
        let _ = writeln!(s, "blocked: {op}");
    }
    s.push_str("rest: ALL\n");
    s
}

fn parsed(text: &str) -> Rules {
    let p = parse_rules("bench", text);
    match p.value {
        Some(r) => r,
        None => panic!("bench rules do not parse: {:?}", p.diagnostics),
    }
}

fn bench(c: &mut Criterion) {
    let realistic = parsed(&realistic_rules());
    let early = Instant {
        remote: SocketAddr::from(([10, 1, 2, 3], 40000)),
    };
    let late = Instant {
        remote: SocketAddr::from(([8, 8, 4, 4], 40000)),
    };
    let mut g = c.benchmark_group("eval");
    g.bench_function("realistic_50_rules_early_match", |b| {
        let mut f = Instant {
            remote: early.remote,
        };
        b.iter(|| black_box(realistic.evaluate(&mut f)))
    });
    g.bench_function("realistic_50_rules_walks_file", |b| {
        let mut f = Instant {
            remote: late.remote,
        };
        b.iter(|| black_box(realistic.evaluate(&mut f)))
    });

    let big_text = big_ip_rules(100_000);
    let big = parsed(&big_text);
    g.bench_function("ip_100k_entries_miss", |b| {
        // 0.0.0.1 is below every generated block.
        let mut f = Instant {
            remote: SocketAddr::from(([0, 0, 0, 1], 40000)),
        };
        b.iter(|| black_box(big.evaluate(&mut f)))
    });
    g.bench_function("ip_100k_entries_varied_peers", |b| {
        let mut x: u32 = 0x9e37_79b9;
        b.iter(|| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let mut f = Instant {
                remote: SocketAddr::from((x.to_be_bytes(), 40000)),
            };
            black_box(big.evaluate(&mut f))
        })
    });
    let lines_text = big_ip_lines(100_000);
    let lines = parsed(&lines_text);
    g.bench_function("ip_100k_one_rule_per_line_varied_peers", |b| {
        let mut x: u32 = 0x9e37_79b9;
        b.iter(|| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let mut f = Instant {
                remote: SocketAddr::from((x.to_be_bytes(), 40000)),
            };
            black_box(lines.evaluate(&mut f))
        })
    });
    g.finish();

    let mut p = c.benchmark_group("parse");
    p.sample_size(10);
    p.bench_function("ip_100k_entries", |b| {
        b.iter(|| black_box(parse_rules("bench", black_box(&big_text))))
    });
    p.bench_function("ip_100k_one_rule_per_line", |b| {
        b.iter(|| black_box(parse_rules("bench", black_box(&lines_text))))
    });
    p.bench_function("realistic_50_rules", |b| {
        let text = realistic_rules();
        b.iter(|| black_box(parse_rules("bench", black_box(&text))))
    });
    p.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
