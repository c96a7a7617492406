//! A fake [`Facts`] for rules tests: fixed answers, and a log of every lookup asked for, so
//! tests can prove what evaluation did and did not look up (laziness) and what it prefetched.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use policy::facts::{Facts, HnStatus, HostInfo, Lookup, SeenTimes, SentryMode};
use policy::rate::RateSpec;
use policy::rules::{parse_rules, Rules};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Asked {
    Host,
    Identd,
    Forward(String),
    Dnsbl(String),
    AnswersOn(u16),
    Seen,
    Prefetch(Vec<Lookup>),
    /// `hits:` asked with this window.
    Hits(u64),
    /// `rate:` asked with this argument.
    Rate(RateSpec),
}

#[derive(Clone, Debug)]
pub struct Fake {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub host: HostInfo,
    pub identd: Option<String>,
    pub forward: HashMap<String, Vec<IpAddr>>,
    pub dnsbl: HashMap<String, Vec<IpAddr>>,
    pub answers: Vec<u16>,
    pub seen: SeenTimes,
    pub log: Vec<Asked>,
    /// The sentry facts; None: use the trait's defaults (an ordinary connection).
    pub sentry: Option<SentryFacts>,
    /// The `rate:` arguments this attempt is over.
    pub over: Vec<RateSpec>,
}

/// What the sentry knows about the connection or probe.
#[derive(Clone, Debug, Default)]
pub struct SentryFacts {
    pub trap: bool,
    pub blocked: bool,
    /// (timestamp in seconds before now, port) of each trap hit of the address.
    pub hits: Vec<(u64, u16)>,
    pub mode: Option<SentryMode>,
    /// The ipfiles the address is in.
    pub ipfiles: Vec<String>,
}

impl Fake {
    pub fn new(remote: &str) -> Fake {
        let ip: IpAddr = remote.parse().expect("test address");
        Fake {
            remote: SocketAddr::new(ip, 40000),
            local: "127.0.0.1:25".parse().expect("test address"),
            host: HostInfo {
                status: HnStatus::Unknown,
                claimed: None,
            },
            identd: None,
            forward: HashMap::new(),
            dnsbl: HashMap::new(),
            answers: Vec::new(),
            seen: SeenTimes {
                first_secs_ago: 0,
                last_secs_ago: None,
            },
            log: Vec::new(),
            sentry: None,
            over: Vec::new(),
        }
    }

    pub fn sentry(mut self, s: SentryFacts) -> Fake {
        self.sentry = Some(s);
        self
    }

    pub fn host(mut self, status: HnStatus, claimed: &str) -> Fake {
        self.host = HostInfo {
            status,
            claimed: Some(claimed.to_owned()),
        };
        self
    }

    pub fn identd(mut self, user: &str) -> Fake {
        self.identd = Some(user.to_owned());
        self
    }

    pub fn listed(mut self, zone: &str, answer: &str) -> Fake {
        self.dnsbl
            .entry(zone.to_owned())
            .or_default()
            .push(answer.parse().expect("test address"));
        self
    }

    pub fn resolves(mut self, name: &str, addr: &str) -> Fake {
        self.forward
            .entry(name.to_owned())
            .or_default()
            .push(addr.parse().expect("test address"));
        self
    }

    pub fn local(mut self, local: &str) -> Fake {
        self.local = local.parse().expect("test address");
        self
    }

    pub fn seen(mut self, first: u64, last: Option<u64>) -> Fake {
        self.seen = SeenTimes {
            first_secs_ago: first,
            last_secs_ago: last,
        };
        self
    }

    /// This attempt is over the rate written `arg` (as in `10/1m`).
    pub fn over(mut self, arg: &str) -> Fake {
        self.over
            .push(policy::rate::parse_rate(arg).expect("test rate"));
        self
    }

    pub fn answers(mut self, port: u16) -> Fake {
        self.answers.push(port);
        self
    }

    /// The lookups asked for, without prefetch hints.
    pub fn lookups(&self) -> Vec<Asked> {
        self.log
            .iter()
            .filter(|a| !matches!(a, Asked::Prefetch(_)))
            .cloned()
            .collect()
    }

    pub fn prefetches(&self) -> Vec<Vec<Lookup>> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Asked::Prefetch(l) => Some(l.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Facts for Fake {
    fn remote(&self) -> SocketAddr {
        self.remote
    }
    fn local(&self) -> SocketAddr {
        self.local
    }
    fn host_info(&mut self) -> HostInfo {
        self.log.push(Asked::Host);
        self.host.clone()
    }
    fn identd(&mut self) -> Option<String> {
        self.log.push(Asked::Identd);
        self.identd.clone()
    }
    fn forward_lookup(&mut self, name: &str) -> Vec<IpAddr> {
        self.log.push(Asked::Forward(name.to_owned()));
        self.forward.get(name).cloned().unwrap_or_default()
    }
    fn dnsbl(&mut self, zone: &str) -> Vec<IpAddr> {
        self.log.push(Asked::Dnsbl(zone.to_owned()));
        self.dnsbl.get(zone).cloned().unwrap_or_default()
    }
    fn answers_on(&mut self, port: u16) -> bool {
        self.log.push(Asked::AnswersOn(port));
        self.answers.contains(&port)
    }
    fn seen(&mut self) -> SeenTimes {
        self.log.push(Asked::Seen);
        self.seen
    }
    fn prefetch(&mut self, lookups: &[Lookup]) {
        self.log.push(Asked::Prefetch(lookups.to_vec()));
    }
    fn trap(&mut self) -> bool {
        self.sentry.as_ref().is_some_and(|s| s.trap)
    }
    fn blocked(&mut self) -> bool {
        self.sentry.as_ref().is_some_and(|s| s.blocked)
    }
    fn trap_hits(&mut self, window_secs: u64) -> u32 {
        self.log.push(Asked::Hits(window_secs));
        let Some(s) = &self.sentry else { return 0 };
        let mut ports: Vec<u16> = s
            .hits
            .iter()
            .filter(|(ago, _)| *ago <= window_secs)
            .map(|(_, p)| *p)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports.len() as u32
    }
    fn sentry_mode(&mut self) -> Option<SentryMode> {
        self.sentry.as_ref().and_then(|s| s.mode)
    }
    fn in_ipfile(&mut self, name: &str) -> bool {
        self.sentry
            .as_ref()
            .is_some_and(|s| s.ipfiles.iter().any(|f| f == name))
    }
    fn over_rate(&mut self, spec: RateSpec) -> bool {
        self.log.push(Asked::Rate(spec));
        self.over.contains(&spec)
    }
}

/// Parses rules that must be free of errors.
pub fn rules(text: &str) -> Rules {
    let p = parse_rules("rules", text);
    match p.value {
        Some(r) => r,
        None => panic!(
            "rules did not parse: {:#?}",
            p.diagnostics
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        ),
    }
}

/// `class@line` for each matched class, as the original's tests print them.
pub fn matched(rules: &Rules, facts: &mut Fake) -> String {
    rules
        .evaluate(facts)
        .classes
        .iter()
        .map(|c| format!("{}@{}", c.name, c.lineno))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a one-rule expression matches.
pub fn expr_matches(expr: &str, facts: &mut Fake) -> bool {
    let r = rules(&format!("x: {expr}\n"));
    !r.evaluate(facts).classes.is_empty()
}

/// All diagnostics of a rules text, as `file:line:col: severity[CODE]: message` strings.
pub fn diags(text: &str) -> Vec<String> {
    parse_rules("rules", text)
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect()
}
