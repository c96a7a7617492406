//! The facts about one connection that rules can ask for, and what a classification produces.
//!
//! The evaluator (rules::eval) runs in the classifier; the classifier implements [`Facts`] by
//! asking the resolver process and its own history table. Everything expensive is asked for only
//! when a matcher needs it, and each answer is cached by the implementation for the life of the
//! connection, so asking twice costs nothing. This module does no I/O itself.
//!
//! The sentry facts (`trap`, `blocked`, `hits:`, `mode:`, `ipfile:`; issue 10) need no
//! lookup: the classifier answers them from what the trap listeners and the `sentry` worker
//! reported and from its mirror of the parent's blocked set and address lists. Their default
//! methods give the answers for an ordinary connection to a `listen` port.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Result of the reverse lookup of the peer address with forward confirmation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HnStatus {
    /// The PTR name exists and lists the peer address: KNOWN.
    Good,
    /// No PTR name: UNKNOWN.
    Unknown,
    /// The PTR name does not resolve at all (part of PARANOID).
    NoForward,
    /// The PTR name resolves, but not to the peer address (part of PARANOID).
    AddrMismatch,
}

impl HnStatus {
    /// The word `hnstatus:` matches and `%(hnstatus)s` expands to.
    pub fn as_str(self) -> &'static str {
        match self {
            HnStatus::Good => "good",
            HnStatus::Unknown => "unknown",
            HnStatus::NoForward => "noforward",
            HnStatus::AddrMismatch => "addrmismatch",
        }
    }

    pub fn from_word(word: &str) -> Option<HnStatus> {
        match word {
            "good" => Some(HnStatus::Good),
            "unknown" => Some(HnStatus::Unknown),
            "noforward" => Some(HnStatus::NoForward),
            "addrmismatch" => Some(HnStatus::AddrMismatch),
            _ => None,
        }
    }
}

/// What the hostname lookup found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub status: HnStatus,
    /// The claimed (PTR) name, verified or not; None when status is Unknown.
    pub claimed: Option<String>,
}

impl HostInfo {
    /// The verified hostname: the claimed name only when forward confirmation succeeded.
    pub fn verified(&self) -> Option<&str> {
        match self.status {
            HnStatus::Good => self.claimed.as_deref(),
            _ => None,
        }
    }
}

/// First and last connection times of the peer address, as seconds before this connection.
///
/// Asking for these records the current connection in the history (portnanny keeps history only
/// for addresses that met a time matcher). For an address never seen before (or expired by
/// dropipafter): `first_secs_ago == 0` and `last_secs_ago == None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenTimes {
    pub first_secs_ago: u64,
    pub last_secs_ago: Option<u64>,
}

/// Which sentry detector saw a connection or probe (PortSentry's modes), for `mode:` and
/// `%(mode)s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SentryMode {
    /// A connection to a `trap tcp` port (PortSentry's classic `-tcp`).
    Tcp,
    /// A datagram to a `trap udp` port (`-udp`).
    Udp,
    /// A probe seen on the raw socket to a listed `stealth tcp PORTS` port (`-stcp`).
    Stcp,
    /// A probe to a listed `stealth udp PORTS` port (`-sudp`).
    Sudp,
    /// A probe to an unbound port under `stealth tcp below N` (`-atcp`).
    Atcp,
    /// A probe to an unbound port under `stealth udp below N` (`-audp`).
    Audp,
}

impl SentryMode {
    /// Every mode, in the order the documentation lists them.
    pub const ALL: [SentryMode; 6] = [
        SentryMode::Tcp,
        SentryMode::Udp,
        SentryMode::Stcp,
        SentryMode::Sudp,
        SentryMode::Atcp,
        SentryMode::Audp,
    ];

    /// The word `mode:` matches and `%(mode)s` expands to.
    pub fn as_str(self) -> &'static str {
        match self {
            SentryMode::Tcp => "tcp",
            SentryMode::Udp => "udp",
            SentryMode::Stcp => "stcp",
            SentryMode::Sudp => "sudp",
            SentryMode::Atcp => "atcp",
            SentryMode::Audp => "audp",
        }
    }

    pub fn from_word(word: &str) -> Option<SentryMode> {
        SentryMode::ALL.into_iter().find(|m| m.as_str() == word)
    }

    /// Whether the peer address of this mode can be forged (everything but a completed TCP
    /// handshake): blocks it causes are limited by `blockbudget`.
    pub fn forgeable(self) -> bool {
        self != SentryMode::Tcp
    }
}

/// A lookup the evaluator may ask the implementation to start early, so that several of them
/// (an or-list of `dnsbl:` zones, say) run in parallel. Starting is only a hint: the answers are
/// still read through the normal [`Facts`] methods, in left-to-right order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Lookup {
    Host,
    Identd,
    Forward(String),
    Dnsbl(String),
    AnswersOn(u16),
}

/// The connection's facts, as the evaluator sees them. Methods that need a lookup block until it
/// is answered or timed out; a failed lookup answers "no" (no hostname, no identd, not listed,
/// does not answer), never an error.
pub trait Facts {
    /// The peer's address (v4-mapped IPv6 already presented as IPv4).
    fn remote(&self) -> SocketAddr;
    /// The local address the connection arrived on.
    fn local(&self) -> SocketAddr;
    /// Reverse lookup plus forward confirmation of the peer address.
    fn host_info(&mut self) -> HostInfo;
    /// The identd (RFC 1413) user name, if the peer's identd answered with one.
    fn identd(&mut self) -> Option<String>;
    /// The addresses `name` resolves to (empty if it does not resolve).
    fn forward_lookup(&mut self, name: &str) -> Vec<IpAddr>;
    /// The addresses a DNS blocklist returns for the peer under `zone`; empty means not listed.
    fn dnsbl(&mut self, zone: &str) -> Vec<IpAddr>;
    /// Whether a TCP connection to the peer on `port` can be established.
    fn answers_on(&mut self, port: u16) -> bool;
    /// First and last seen times; see [`SeenTimes`].
    fn seen(&mut self) -> SeenTimes;
    /// A hint that these lookups will probably be needed soon; start them together.
    fn prefetch(&mut self, _lookups: &[Lookup]) {}

    // The sentry facts. None of them needs a lookup: the classifier answers them from what the
    // sentry worker or the trap listener reported and from its mirror of the parent's blocked
    // set. The defaults are the answers for an ordinary TCP connection to a `listen` port.

    /// `trap`: this connection or probe hit a `trap` or `stealth` port.
    fn trap(&mut self) -> bool {
        false
    }
    /// `blocked`: the peer address is in the blocked set.
    fn blocked(&mut self) -> bool {
        false
    }
    /// `hits:`: how many distinct trapped ports (trap and stealth, TCP and UDP) this peer
    /// address touched in the last `window_secs` seconds, this connection or probe included.
    fn trap_hits(&mut self, _window_secs: u64) -> u32 {
        0
    }
    /// `mode:`: which detector saw this connection or probe; None for a `listen` connection.
    fn sentry_mode(&mut self) -> Option<SentryMode> {
        None
    }
    /// `ipfile:`: whether the peer address is in the address list file `name` (as written in
    /// the rules; see [`crate::rules::Rules::ipfiles`] and [`crate::sentry::parse_ipfile`]).
    /// A file that could not be read holds nothing.
    fn in_ipfile(&mut self, _name: &str) -> bool {
        false
    }

    /// `rate:` (an extension): whether this connection attempt was over `spec` for its source.
    /// Needs no lookup: the classifier charges every attempt to every rate of the rules when
    /// the connection arrives, in arrival order, and answers from what that found (see
    /// [`crate::rate`]). The default is an attempt nobody counted.
    fn over_rate(&mut self, _spec: crate::rate::RateSpec) -> bool {
        false
    }
}

/// One class the connection became a member of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchedClass {
    pub name: String,
    /// Starting line of the rule that matched (0 for GLOBAL and aftermaxthreads classes).
    pub lineno: u32,
    /// The rule's /label, exactly as written (underscores are turned into spaces only by the
    /// `%(label)s` substitution).
    pub label: Option<String>,
}

/// The classes a connection is a member of, in the order they first matched, GLOBAL last when
/// anything matched.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    pub classes: Vec<MatchedClass>,
}

/// The pseudo-class every classified connection also belongs to.
pub const GLOBAL: &str = "GLOBAL";

impl Classification {
    /// The classification used when `aftermaxthreads CLASS` applies: CLASS, then GLOBAL.
    pub fn forced(class: &str) -> Classification {
        Classification {
            classes: vec![
                MatchedClass {
                    name: class.to_owned(),
                    lineno: 0,
                    label: None,
                },
                MatchedClass {
                    name: GLOBAL.to_owned(),
                    lineno: 0,
                    label: None,
                },
            ],
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.classes.iter().map(|c| c.name.as_str())
    }

    pub fn get(&self, name: &str) -> Option<&MatchedClass> {
        self.classes.iter().find(|c| c.name == name)
    }
}
