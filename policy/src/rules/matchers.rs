//! Every rules matcher: argument checking at parse time, and evaluation against [`Facts`].
//!
//! Parsing runs in the parent and the classifier on the administrator's rules text; evaluation
//! runs in the classifier, where the facts come from the resolver and the history table (peer
//! data, already validated there). A matcher asks [`Facts`] only for what it needs, when it is
//! evaluated, so lookups stay lazy.
//!
//! Semantics follow the original portnanny's matchers (see `Configuration`): hostname
//! comparisons ignore ASCII case; `re:` is case-insensitive and unanchored; a hostname or
//! regexp matcher fails when there is no (verified, or claimed for the claimed* matchers) name;
//! an empty identd answer counts as none.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use regex::{Regex, RegexBuilder};

use crate::addr::{looks_like_addr, parse_addrspec, AddrRange, AddrSet};
use crate::facts::{Facts, HnStatus, Lookup, MatchedClass, SentryMode};
use crate::rate::{parse_rate, RateSpec};
use crate::timespec::parse_timespec;

/// The peer or local address as rules see it: v4-mapped IPv6 as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Which time matcher, for [`Matcher::Time`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeKind {
    /// `seenwithin:`: last connection at most N seconds ago.
    SeenWithin,
    /// `notseenfor:`: no previous connection, or the last one more than N seconds ago.
    NotSeenFor,
    /// `stallfor:`: first connection at most N seconds ago.
    StallFor,
    /// `waited:`: first connection more than N seconds ago.
    Waited,
}

impl TimeKind {
    fn name(self) -> &'static str {
        match self {
            TimeKind::SeenWithin => "seenwithin:",
            TimeKind::NotSeenFor => "notseenfor:",
            TimeKind::StallFor => "stallfor:",
            TimeKind::Waited => "waited:",
        }
    }
}

/// One compiled matcher.
#[derive(Clone, Debug)]
pub enum Matcher {
    All,
    /// `IDENTD` (None) or `identd: USER`.
    Identd(Option<String>),
    /// `KNOWN`, `UNKNOWN`, `PARANOID` or `hnstatus: WORD`; `word` is as written.
    HnStatus {
        word: String,
        states: &'static [HnStatus],
    },
    /// `ip:` (remote) or `localip:`; one or more merged ADDRSPECs.
    Ip {
        local: bool,
        specs: Vec<String>,
        set: AddrSet,
    },
    /// `hostname:` or `claimedhn:`; `host` is lower case, `domain` set for `.suffix` forms.
    Hostname {
        claimed: bool,
        host: String,
        domain: bool,
    },
    /// `re:` or `claimedre:`.
    Regex {
        claimed: bool,
        pattern: String,
        re: Regex,
    },
    Class(String),
    Forwhn(String),
    Dnsbl {
        zone: String,
        want: Option<Ipv4Addr>,
    },
    AnswersOn(u16),
    Local {
        port: Option<u16>,
        ip: Option<IpAddr>,
    },
    FirstTime,
    Time(TimeKind, u64),
    /// `trap`: this connection or probe hit a trap or stealth port.
    Trap,
    /// `blocked`: the peer address is in the blocked set.
    Blocked,
    /// `hits: N[/TIMESPEC]`: the peer touched at least `n` distinct trapped ports within
    /// `window_secs` (PortSentry's SCAN_TRIGGER).
    Hits {
        n: u32,
        window_secs: u64,
    },
    /// `mode: tcp,stcp,...`: one of these detectors saw it.
    Mode(Vec<SentryMode>),
    /// `ipfile: FILE`: the peer address is in the address list file FILE (as written).
    IpFile(String),
    /// `rate: N/TIMESPEC` (an extension): this connection attempt is over the source's rate.
    Rate(RateSpec),
}

/// The window of `hits: N` written without `/TIMESPEC`: an hour.
pub const DEFAULT_HITS_WINDOW: u64 = 3600;

/// An operand's compiled form before or-list merging: address operands are kept as ranges so
/// that a run of them becomes one [`AddrSet`] built in a single sort.
#[derive(Debug)]
pub enum Piece {
    Ip {
        local: bool,
        spec: String,
        range: AddrRange,
    },
    Other(Matcher),
}

impl Piece {
    pub fn into_matcher(self) -> Matcher {
        match self {
            Piece::Ip { local, spec, range } => Matcher::Ip {
                local,
                specs: vec![spec],
                set: AddrSet::from_ranges([range]),
            },
            Piece::Other(m) => m,
        }
    }
}

/// Why an operand was refused, and which of its words to point at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperandError {
    /// True when the argument word (not the matcher name) is at fault.
    pub at_arg: bool,
    /// Stable diagnostic code.
    pub code: &'static str,
    pub message: String,
}

fn arg_err(message: String) -> OperandError {
    OperandError {
        at_arg: true,
        code: "R021",
        message,
    }
}

const KNOWN_STATES: &[HnStatus] = &[HnStatus::Good];
const UNKNOWN_STATES: &[HnStatus] = &[HnStatus::Unknown];
const PARANOID_STATES: &[HnStatus] = &[HnStatus::NoForward, HnStatus::AddrMismatch];
const NOFORWARD_STATES: &[HnStatus] = &[HnStatus::NoForward];
const MISMATCH_STATES: &[HnStatus] = &[HnStatus::AddrMismatch];

fn hn_states(word: &str) -> Option<&'static [HnStatus]> {
    Some(match word {
        "KNOWN" | "good" => KNOWN_STATES,
        "UNKNOWN" | "unknown" => UNKNOWN_STATES,
        "PARANOID" => PARANOID_STATES,
        "noforward" => NOFORWARD_STATES,
        "addrmismatch" => MISMATCH_STATES,
        _ => return None,
    })
}

/// Matchers that take an argument, as written in rules (with the colon).
pub const ARG_MATCHERS: &[&str] = &[
    "identd:",
    "class:",
    "forwhn:",
    "answerson:",
    "ip:",
    "localip:",
    "hnstatus:",
    "hostname:",
    "re:",
    "claimedhn:",
    "claimedre:",
    "local:",
    "dnsbl:",
    "seenwithin:",
    "notseenfor:",
    "stallfor:",
    "waited:",
    "hits:",
    "mode:",
    "ipfile:",
    "rate:",
];

/// Matchers that take no argument.
pub const BARE_MATCHERS: &[&str] = &[
    "ALL",
    "KNOWN",
    "UNKNOWN",
    "PARANOID",
    "IDENTD",
    "firsttime",
    "trap",
    "blocked",
];

/// The original's hostname test, on the lower-cased name: letters, digits, `.`, `-`, `_`,
/// not empty and not just `.`.
pub fn valid_hostname(lower: &str) -> bool {
    !lower.is_empty()
        && lower != "."
        && lower.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

fn hostname_matcher(claimed: bool, name: &str, arg: &str) -> Result<Matcher, OperandError> {
    let lower = arg.to_ascii_lowercase();
    if !valid_hostname(&lower) {
        return Err(arg_err(format!(
            "{name} '{arg}' is not a valid hostname or .domain (letters, digits, '.', '-', '_')"
        )));
    }
    Ok(match lower.strip_prefix('.') {
        Some(rest) => Matcher::Hostname {
            claimed,
            host: rest.to_owned(),
            domain: true,
        },
        None => Matcher::Hostname {
            claimed,
            host: lower,
            domain: false,
        },
    })
}

fn regex_matcher(claimed: bool, name: &str, arg: &str) -> Result<Matcher, OperandError> {
    match RegexBuilder::new(arg).case_insensitive(true).build() {
        Ok(re) => Ok(Matcher::Regex {
            claimed,
            pattern: arg.to_owned(),
            re,
        }),
        Err(e) => {
            let text = e.to_string();
            let why = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map_or("invalid", |l| l.trim().trim_start_matches("error: "));
            Err(arg_err(format!(
                "{name} bad regular expression '{arg}': {why}"
            )))
        }
    }
}

/// Python's `int()` on a port-like word, limited to what fits a TCP port.
fn port_number(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A full dotted quad, the original's `isipaddr` (leading zeros allowed).
fn dotted_quad(s: &str) -> Option<Ipv4Addr> {
    match parse_addrspec(s) {
        Ok(AddrRange::V4(lo, hi)) if lo == hi && s.split('.').count() == 4 && !s.contains('/') => {
            Some(Ipv4Addr::from(lo))
        }
        _ => None,
    }
}

/// An address for `local:`: a dotted quad or an IPv6 address.
fn host_address(s: &str) -> Option<IpAddr> {
    if s.contains(':') {
        s.parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|a| canonical_ip(IpAddr::V6(a)))
    } else {
        dotted_quad(s).map(IpAddr::V4)
    }
}

fn local_matcher(arg: &str) -> Result<Matcher, OperandError> {
    let bad = || {
        arg_err(format!(
            "local: '{arg}' is not [PORT][@][IP] (numeric port and IP address, either may be \
             '*' or missing, not both)"
        ))
    };
    let (port, ip) = match arg.split_once('@') {
        None => {
            if let Some(ip) = host_address(arg) {
                (None, Some(ip))
            } else {
                (Some(port_number(arg).ok_or_else(bad)?), None)
            }
        }
        Some((p, h)) => {
            let p = if p == "*" { "" } else { p };
            let h = if h == "*" { "" } else { h };
            let port = if p.is_empty() {
                None
            } else {
                Some(port_number(p).ok_or_else(bad)?)
            };
            let ip = if h.is_empty() {
                None
            } else {
                Some(host_address(h).ok_or_else(bad)?)
            };
            (port, ip)
        }
    };
    if port.is_none() && ip.is_none() {
        return Err(bad());
    }
    Ok(Matcher::Local { port, ip })
}

fn dnsbl_matcher(arg: &str) -> Result<Matcher, OperandError> {
    if arg.is_empty() || arg.starts_with('/') || arg.ends_with('/') {
        return Err(arg_err(format!(
            "dnsbl: '{arg}' must be a DNS zone, optionally followed by /IPADDR"
        )));
    }
    let (zone, want) = match arg.split_once('/') {
        Some((z, ip)) => {
            let want = dotted_quad(ip).ok_or_else(|| {
                arg_err(format!(
                    "dnsbl: the part after '/' in '{arg}' must be an IPv4 address"
                ))
            })?;
            (z, Some(want))
        }
        None => (arg, None),
    };
    let zone = zone.to_ascii_lowercase();
    if !valid_hostname(&zone) || zone.starts_with('.') {
        return Err(arg_err(format!(
            "dnsbl: '{zone}' is not a valid DNS zone (letters, digits, '.', '-', '_')"
        )));
    }
    Ok(Matcher::Dnsbl { zone, want })
}

/// `hits: N[/TIMESPEC]`, N at least 1.
fn hits_matcher(arg: &str) -> Result<Matcher, OperandError> {
    let (n_s, window) = match arg.split_once('/') {
        Some((n, w)) => (n, Some(w)),
        None => (arg, None),
    };
    let n = match n_s.parse::<u32>() {
        Ok(n) if n >= 1 && n_s.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => {
            return Err(arg_err(format!(
                "hits: '{arg}' must be a number of ports (1 or more), optionally followed by \
                 /TIMESPEC, as in 3 or 3/10m"
            )))
        }
    };
    let window_secs = match window {
        None => DEFAULT_HITS_WINDOW,
        Some(w) => match parse_timespec(w) {
            Ok(0) => {
                return Err(arg_err(format!(
                    "hits: '{arg}': the window must be longer than 0s"
                )))
            }
            Ok(s) => s,
            Err(e) => return Err(arg_err(format!("hits: '{arg}': {e}"))),
        },
    };
    Ok(Matcher::Hits { n, window_secs })
}

/// `mode: WORD[,WORD...]`.
fn mode_matcher(arg: &str) -> Result<Matcher, OperandError> {
    let mut modes = Vec::new();
    for w in arg.split(',') {
        let Some(m) = SentryMode::from_word(w) else {
            return Err(arg_err(format!(
                "mode: '{w}' is not a sentry mode (tcp, udp, stcp, sudp, atcp or audp; several \
                 are separated by commas)"
            )));
        };
        if !modes.contains(&m) {
            modes.push(m);
        }
    }
    Ok(Matcher::Mode(modes))
}

/// Compiles `MATCHER: ARG`.
pub fn with_arg(name: &str, arg: &str) -> Result<Piece, OperandError> {
    let m = match name {
        "ip:" | "localip:" => {
            let range = parse_addrspec(arg).map_err(|e| arg_err(format!("{name} {e}")))?;
            return Ok(Piece::Ip {
                local: name == "localip:",
                spec: arg.to_owned(),
                range,
            });
        }
        "identd:" => Matcher::Identd(Some(arg.to_owned())),
        "hnstatus:" => Matcher::HnStatus {
            word: arg.to_owned(),
            states: hn_states(arg).ok_or_else(|| {
                arg_err(format!(
                    "hnstatus: '{arg}' is not a hostname status (good, unknown, noforward, \
                     addrmismatch, KNOWN, UNKNOWN or PARANOID)"
                ))
            })?,
        },
        "hostname:" => hostname_matcher(false, name, arg)?,
        "claimedhn:" => hostname_matcher(true, name, arg)?,
        "re:" => regex_matcher(false, name, arg)?,
        "claimedre:" => regex_matcher(true, name, arg)?,
        "class:" => Matcher::Class(arg.to_owned()),
        "forwhn:" => {
            let lower = arg.to_ascii_lowercase();
            if !valid_hostname(&lower) {
                return Err(arg_err(format!(
                    "forwhn: '{arg}' is not a valid hostname (letters, digits, '.', '-', '_')"
                )));
            }
            Matcher::Forwhn(lower)
        }
        "answerson:" => {
            Matcher::AnswersOn(port_number(arg).filter(|&p| p != 0).ok_or_else(|| {
                arg_err(format!(
                    "answerson: '{arg}' is not a port number from 1 to 65535"
                ))
            })?)
        }
        "local:" => local_matcher(arg)?,
        "dnsbl:" => dnsbl_matcher(arg)?,
        "hits:" => hits_matcher(arg)?,
        "mode:" => mode_matcher(arg)?,
        // The parent reads the file (by this name, relative names against nanny.conf's
        // directory) and ships its contents; see Rules::ipfiles.
        "ipfile:" if arg.is_empty() || arg.bytes().any(|b| b.is_ascii_control()) => {
            return Err(arg_err(format!(
                "ipfile: '{}' is not a file name",
                arg.escape_debug()
            )))
        }
        "ipfile:" => Matcher::IpFile(arg.to_owned()),
        "rate:" => Matcher::Rate(parse_rate(arg).map_err(|e| arg_err(format!("rate: {e}")))?),
        "seenwithin:" | "notseenfor:" | "stallfor:" | "waited:" => {
            let secs = parse_timespec(arg).map_err(|e| arg_err(format!("{name} '{arg}': {e}")))?;
            let kind = match name {
                "seenwithin:" => TimeKind::SeenWithin,
                "notseenfor:" => TimeKind::NotSeenFor,
                "stallfor:" => TimeKind::StallFor,
                _ => TimeKind::Waited,
            };
            Matcher::Time(kind, secs)
        }
        _ => {
            let bare = name.trim_end_matches(':');
            let message = if BARE_MATCHERS.contains(&bare) {
                format!("{bare} takes no argument; write it without the ':'")
            } else {
                format!("unknown matcher '{name}'{}", suggestion(name))
            };
            return Err(OperandError {
                at_arg: false,
                code: "R020",
                message,
            });
        }
    };
    Ok(Piece::Other(m))
}

/// " (did you mean 'ip:'?)" for a matcher name that differs only in case.
fn suggestion(name: &str) -> String {
    ARG_MATCHERS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(name))
        .map_or_else(String::new, |m| format!(" (did you mean '{m}'?)"))
}

/// Compiles a bare word: a no-argument matcher, else an address, else a hostname.
pub fn bare(word: &str) -> Result<Piece, OperandError> {
    let m = match word {
        "ALL" => Matcher::All,
        "KNOWN" | "UNKNOWN" | "PARANOID" => Matcher::HnStatus {
            word: word.to_owned(),
            states: hn_states(word).unwrap_or(PARANOID_STATES),
        },
        "IDENTD" => Matcher::Identd(None),
        "firsttime" => Matcher::FirstTime,
        "trap" => Matcher::Trap,
        "blocked" => Matcher::Blocked,
        "" => {
            return Err(OperandError {
                at_arg: false,
                code: "R022",
                message: "an empty operand ('') matches nothing; remove it".to_owned(),
            })
        }
        _ => {
            if let Some(m) = ARG_MATCHERS
                .iter()
                .find(|m| word.len() > m.len() && word.starts_with(*m))
            {
                let rest = &word[m.len()..];
                return Err(OperandError {
                    at_arg: false,
                    code: "R023",
                    message: format!(
                        "'{word}' is one word; a matcher and its argument need a space between \
                         them: write '{m} {rest}'"
                    ),
                });
            }
            if looks_like_addr(word) {
                let range = parse_addrspec(word).map_err(|e| OperandError {
                    at_arg: false,
                    code: "R022",
                    message: e.to_string(),
                })?;
                return Ok(Piece::Ip {
                    local: false,
                    spec: word.to_owned(),
                    range,
                });
            }
            let lower = word.to_ascii_lowercase();
            if !valid_hostname(&lower) {
                return Err(OperandError {
                    at_arg: false,
                    code: "R022",
                    message: format!(
                        "'{word}' is not a matcher, an IP address or a hostname{}",
                        suggestion(&format!("{word}:"))
                    ),
                });
            }
            return hostname_matcher(false, "hostname:", word).map(Piece::Other);
        }
    };
    Ok(Piece::Other(m))
}

/// Whether a word needs quoting to come back as the same single word.
fn needs_quotes(w: &str) -> bool {
    w.is_empty()
        || matches!(w, "AND" | "NOT" | "EXCEPT")
        || w.contains("&&")
        || w.bytes()
            .any(|b| super::lex::is_space(b) || matches!(b, b'(' | b')' | b'!' | b'\''))
}

/// A word as it must be written in a rule.
pub fn quote_word(w: &str) -> String {
    if needs_quotes(w) {
        format!("'{}'", w.replace('\'', "''"))
    } else {
        w.to_owned()
    }
}

impl fmt::Display for Matcher {
    /// The canonical form; parsing it gives back the same matcher.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::All => f.write_str("ALL"),
            Matcher::Identd(None) => f.write_str("IDENTD"),
            Matcher::Identd(Some(u)) => write!(f, "identd: {}", quote_word(u)),
            Matcher::HnStatus { word, .. } => write!(f, "hnstatus: {}", quote_word(word)),
            Matcher::Ip { local, specs, .. } => {
                let name = if *local { "localip:" } else { "ip:" };
                for (i, s) in specs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{name} {}", quote_word(s))?;
                }
                Ok(())
            }
            Matcher::Hostname {
                claimed,
                host,
                domain,
            } => write!(
                f,
                "{} {}{host}",
                if *claimed { "claimedhn:" } else { "hostname:" },
                if *domain { "." } else { "" }
            ),
            Matcher::Regex {
                claimed, pattern, ..
            } => write!(
                f,
                "{} '{}'",
                if *claimed { "claimedre:" } else { "re:" },
                pattern.replace('\'', "''")
            ),
            Matcher::Class(c) => write!(f, "class: {}", quote_word(c)),
            Matcher::Forwhn(h) => write!(f, "forwhn: {h}"),
            Matcher::Dnsbl { zone, want: None } => write!(f, "dnsbl: {zone}"),
            Matcher::Dnsbl {
                zone,
                want: Some(ip),
            } => write!(f, "dnsbl: {zone}/{ip}"),
            Matcher::AnswersOn(p) => write!(f, "answerson: {p}"),
            Matcher::Local { port, ip } => {
                f.write_str("local: ")?;
                if let Some(p) = port {
                    write!(f, "{p}")?;
                }
                f.write_str("@")?;
                if let Some(ip) = ip {
                    write!(f, "{ip}")?;
                }
                Ok(())
            }
            Matcher::FirstTime => f.write_str("firsttime"),
            Matcher::Time(kind, secs) => write!(f, "{} {secs}s", kind.name()),
            Matcher::Trap => f.write_str("trap"),
            Matcher::Blocked => f.write_str("blocked"),
            Matcher::Hits { n, window_secs } => write!(f, "hits: {n}/{window_secs}s"),
            Matcher::Mode(modes) => {
                f.write_str("mode: ")?;
                for (i, m) in modes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(m.as_str())?;
                }
                Ok(())
            }
            Matcher::IpFile(name) => write!(f, "ipfile: {}", quote_word(name)),
            Matcher::Rate(spec) => write!(f, "rate: {spec}"),
        }
    }
}

/// What a matcher evaluates against: the connection's facts and the classes matched so far.
pub struct Cx<'a> {
    pub facts: &'a mut dyn Facts,
    pub classes: &'a [MatchedClass],
}

fn hostname_eq(name: &str, host: &str, domain: bool) -> bool {
    if name.eq_ignore_ascii_case(host) {
        return true;
    }
    if !domain || name.len() <= host.len() {
        return false;
    }
    // name ends with "." + host, compared without case.
    let cut = name.len() - host.len();
    name.as_bytes().get(cut - 1) == Some(&b'.')
        && name
            .get(cut..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(host))
}

impl Matcher {
    /// The lookup this matcher needs before it can answer, if any.
    pub fn lookup(&self) -> Option<Lookup> {
        match self {
            Matcher::Identd(_) => Some(Lookup::Identd),
            Matcher::HnStatus { .. } | Matcher::Hostname { .. } | Matcher::Regex { .. } => {
                Some(Lookup::Host)
            }
            Matcher::Forwhn(h) => Some(Lookup::Forward(h.clone())),
            Matcher::Dnsbl { zone, .. } => Some(Lookup::Dnsbl(zone.clone())),
            Matcher::AnswersOn(p) => Some(Lookup::AnswersOn(*p)),
            _ => None,
        }
    }

    /// Evaluates the matcher, asking `cx.facts` only for what it needs.
    pub fn eval(&self, cx: &mut Cx<'_>) -> bool {
        match self {
            Matcher::All => true,
            Matcher::Identd(want) => match cx.facts.identd() {
                Some(user) if !user.is_empty() => want.as_ref().is_none_or(|w| *w == user),
                _ => false,
            },
            Matcher::HnStatus { states, .. } => states.contains(&cx.facts.host_info().status),
            Matcher::Ip { local, set, .. } => {
                let addr = if *local {
                    cx.facts.local().ip()
                } else {
                    cx.facts.remote().ip()
                };
                set.contains(addr)
            }
            Matcher::Hostname {
                claimed,
                host,
                domain,
            } => {
                let info = cx.facts.host_info();
                let name = if *claimed {
                    info.claimed.as_deref()
                } else {
                    info.verified()
                };
                name.is_some_and(|n| !n.is_empty() && hostname_eq(n, host, *domain))
            }
            Matcher::Regex { claimed, re, .. } => {
                let info = cx.facts.host_info();
                let name = if *claimed {
                    info.claimed.as_deref()
                } else {
                    info.verified()
                };
                name.is_some_and(|n| !n.is_empty() && re.is_match(n))
            }
            Matcher::Class(c) => cx.classes.iter().any(|m| m.name == *c),
            Matcher::Forwhn(h) => {
                let peer = canonical_ip(cx.facts.remote().ip());
                cx.facts
                    .forward_lookup(h)
                    .into_iter()
                    .any(|a| canonical_ip(a) == peer)
            }
            Matcher::Dnsbl { zone, want } => {
                let answers = cx.facts.dnsbl(zone);
                match want {
                    None => !answers.is_empty(),
                    Some(w) => answers.contains(&IpAddr::V4(*w)),
                }
            }
            Matcher::AnswersOn(p) => cx.facts.answers_on(*p),
            Matcher::Local { port, ip } => {
                let local = cx.facts.local();
                port.is_none_or(|p| p == local.port())
                    && ip.is_none_or(|i| i == canonical_ip(local.ip()))
            }
            Matcher::FirstTime => cx.facts.seen().last_secs_ago.is_none(),
            Matcher::Time(kind, secs) => {
                let seen = cx.facts.seen();
                match kind {
                    TimeKind::SeenWithin => seen.last_secs_ago.is_some_and(|l| l <= *secs),
                    TimeKind::NotSeenFor => seen.last_secs_ago.is_none_or(|l| l > *secs),
                    TimeKind::StallFor => seen.first_secs_ago <= *secs,
                    TimeKind::Waited => seen.first_secs_ago > *secs,
                }
            }
            Matcher::Trap => cx.facts.trap(),
            Matcher::Blocked => cx.facts.blocked(),
            Matcher::Hits { n, window_secs } => cx.facts.trap_hits(*window_secs) >= *n,
            Matcher::Mode(modes) => cx.facts.sentry_mode().is_some_and(|m| modes.contains(&m)),
            Matcher::IpFile(name) => cx.facts.in_ipfile(name),
            Matcher::Rate(spec) => cx.facts.over_rate(*spec),
        }
    }
}
