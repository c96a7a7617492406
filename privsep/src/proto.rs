//! Every type that crosses a process boundary, one enum per direction (`<Sender>To<Receiver>`).
//!
//! Decoded by every role; the bytes come from a less (or differently) privileged peer and are
//! checked twice: shape while decoding (newtypes with `serde(try_from)`), meaning by the receiver
//! (the parent's `admit_*` functions). Append new variants at the end and never reorder them:
//! bincode encodes the variant index.
//!
//! Protocol summary:
//! - parent → child: `Hello` first, exactly once; the child answers `Hello` with its OWN
//!   `privsep::build_id()` (computed before any chroot), and a differing build is killed.
//! - parent → classifier: `Policy` (gen N) before the first `ConnAccepted`; the classifier answers
//!   `PolicyLoaded`. Every `ConnAccepted` gets exactly one `Verdict` naming the gen it was decided
//!   under. `ConnClosed` tells the classifier to release the connection's counts.
//! - classifier → resolver: `Lookup` with a fresh `ReqId`; the resolver answers `LookupResult`
//!   echoing the id and the query.
//! - children → parent: `Log` records at any time after `Hello`.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

pub use crate::control::{
    ConnRow, ExplainAsk, ExplainReport, LookupMetrics, Metrics, Reply, Request,
};

/// The classifier's decision crosses to the parent as the policy crate defines it: one
/// definition for the evaluator, the wire and the parent's admission. It names classes only
/// by index into the parent's own actions table and carries no text.
pub use policy::decide::{Decision, Disposition, Refusal};
/// Lookup results that cross a boundary, as the policy crate defines them.
pub use policy::facts::{HnStatus, SeenTimes, SentryMode};

/// Longest hostname we accept from a peer (RFC 1035 presentation form without the final dot).
pub const MAX_HOSTNAME: usize = 253;
/// Longest identd user id we accept; RFC 1413 allows 512 octets, we keep less.
pub const MAX_IDENT_USER: usize = 256;
/// Longest class name or label carried in a verdict.
pub const MAX_CLASS_NAME: usize = 256;
/// Longest log line a child may send; longer lines are a violation.
pub const MAX_LOG_LINE: usize = 2048;

/// A connection, numbered by the parent when it accepts it. Never reused in one parent's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnId(pub u64);

/// Policy generation: bumped by the parent every time it ships new rules or actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Gen(pub u32);

/// A lookup request, numbered by the classifier; the resolver echoes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReqId(pub u64);

/// Identifies the binary: a child whose build differs from the parent's is killed. Decoded
/// only if it is 1..=[`MAX_BUILD_ID`] printable ASCII bytes, so a hostile Hello cannot put a
/// megabyte or control characters into the parent's log line about the mismatch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BuildId(pub String);

/// Longest build id accepted from a peer (`privsep::build_id()` is far shorter).
pub const MAX_BUILD_ID: usize = 128;

impl TryFrom<String> for BuildId {
    type Error = ShapeError;
    fn try_from(s: String) -> Result<Self, ShapeError> {
        if s.is_empty() || s.len() > MAX_BUILD_ID {
            return Err(ShapeError("build id length"));
        }
        if !s.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(ShapeError("build id character"));
        }
        Ok(BuildId(s))
    }
}

impl From<BuildId> for String {
    fn from(b: BuildId) -> String {
        b.0
    }
}

pub use crate::error::ShapeError;

/// A DNS name that passed the Postfix `valid_hostname` style checks: letters, digits, `-`, `_`
/// and dots; no empty label; labels at most 63 bytes; whole name at most [`MAX_HOSTNAME`].
/// Stored lower-case without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostName(String);

impl HostName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HostName {
    type Error = ShapeError;
    fn try_from(s: String) -> Result<Self, ShapeError> {
        let s = s.strip_suffix('.').map(str::to_owned).unwrap_or(s);
        if s.is_empty() || s.len() > MAX_HOSTNAME {
            return Err(ShapeError("hostname length"));
        }
        for label in s.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(ShapeError("hostname label length"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ShapeError("hostname character"));
            }
        }
        Ok(HostName(s.to_ascii_lowercase()))
    }
}

impl From<HostName> for String {
    fn from(h: HostName) -> String {
        h.0
    }
}

/// An identd user id: printable ASCII (space allowed), at most [`MAX_IDENT_USER`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdentUser(String);

impl IdentUser {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdentUser {
    type Error = ShapeError;
    fn try_from(s: String) -> Result<Self, ShapeError> {
        if s.is_empty() || s.len() > MAX_IDENT_USER {
            return Err(ShapeError("identd user length"));
        }
        if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(ShapeError("identd user character"));
        }
        Ok(IdentUser(s))
    }
}

impl From<IdentUser> for String {
    fn from(u: IdentUser) -> String {
        u.0
    }
}

/// A class name or rule label: non-empty, at most [`MAX_CLASS_NAME`] bytes, printable ASCII
/// without spaces (the rules language cannot produce anything else).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClassName(String);

impl ClassName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClassName {
    type Error = ShapeError;
    fn try_from(s: String) -> Result<Self, ShapeError> {
        if s.is_empty() || s.len() > MAX_CLASS_NAME {
            return Err(ShapeError("class name length"));
        }
        if !s.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(ShapeError("class name character"));
        }
        Ok(ClassName(s))
    }
}

impl From<ClassName> for String {
    fn from(c: ClassName) -> String {
        c.0
    }
}

/// A label: like a class name, but a /label with no `=` takes the whole rule expression, which
/// may contain spaces. Printable ASCII, at most [`MAX_CLASS_NAME`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Label(String);

impl Label {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Label {
    type Error = ShapeError;
    fn try_from(s: String) -> Result<Self, ShapeError> {
        if s.len() > MAX_CLASS_NAME || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(ShapeError("label"));
        }
        Ok(Label(s))
    }
}

impl From<Label> for String {
    fn from(l: Label) -> String {
        l.0
    }
}

/// The reverse-lookup result as it crosses a boundary. `claimed` is None exactly when
/// status is Unknown (checked by receivers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub status: HnStatus,
    pub claimed: Option<HostName>,
}

/// One matched class of a verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchedClassFact {
    pub name: ClassName,
    pub lineno: u32,
    pub label: Option<Label>,
}

/// What the classifier learned about a connection, for the parent's substitutions and
/// environment. Every field is a validated newtype; `None` means "not looked up".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictFacts {
    pub classes: Vec<MatchedClassFact>,
    pub host: Option<HostFacts>,
    pub identd: Option<IdentUser>,
    pub seen: Option<SeenTimes>,
}

/// Log severity of a child's record; the parent maps it to syslog levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LogLevel {
    Crit,
    Err,
    Warning,
    Notice,
    Info,
    Debug,
}

/// A log line from a child. The parent escapes control characters, caps the length and prefixes
/// the role before writing it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub level: LogLevel,
    /// Verbosity needed to show it (0 = always); compared with -v / -V.
    pub verbosity: u8,
    pub text: String,
}

/// Settings from nanny.conf and the command line that the classifier needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassifierSettings {
    /// Evaluations running at once (at least 1).
    pub maxthreads: u32,
    pub aftermaxthreads: Option<ClassName>,
    pub dropipafter_secs: Option<u64>,
    pub expireevery_secs: u64,
    /// How long an evaluation waits for a DNS answer (host name, forwhn:, dnsbl:); nanny.conf
    /// `dnstimeout_ms`, the same value the resolver enforces. The classifier adds a small margin
    /// so the resolver's own "no answer" normally arrives first.
    pub dns_timeout_ms: u32,
    /// As `dns_timeout_ms`, for identd: (nanny.conf `identdtimeout_ms`).
    pub identd_timeout_ms: u32,
    /// As `dns_timeout_ms`, for answerson: (nanny.conf `answersontimeout_ms`).
    pub answerson_timeout_ms: u32,
    /// nanny.conf `ipv4prefix`/`ipv6prefix`: how the classifier groups sources for ipmax,
    /// `rate:` and the history. Lengths are range-checked by construction (and again on decode,
    /// see `Grouping`'s deserialisation).
    pub grouping: policy::grouping::Grouping,
}

/// A live connection, for re-seeding a restarted classifier so that counts stay exact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveConn {
    pub conn: ConnId,
    pub remote: SocketAddr,
    pub classes: Vec<ClassName>,
}

/// Sent by the parent; decoded only by the classifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParentToClassifier {
    /// First message, exactly once.
    Hello { build: BuildId },
    /// New rules and actions text (already checked by the parent) for generation `gen`. `None`
    /// for a file means "empty": onfileerror drop after a failed reload.
    Policy {
        gen: Gen,
        rules: Option<String>,
        actions: Option<String>,
        settings: ClassifierSettings,
        /// The `ipfile:` address lists the rules name: (name as written, text read by the
        /// parent; empty when it could not be read).
        ipfiles: Vec<(String, String)>,
    },
    /// Live counted connections after a classifier restart (sent once, before any
    /// `ConnAccepted`).
    Seed { live: Vec<LiveConn> },
    /// A new connection to classify; answered by exactly one `Verdict`. `trap` is set when it
    /// came in on a `trap tcp` port (a full connect to a port that exists to catch scanners).
    ConnAccepted {
        conn: ConnId,
        remote: SocketAddr,
        local: SocketAddr,
        trap: Option<SentryMode>,
    },
    /// A counted connection ended (its service exited, or spawning failed).
    ConnClosed { conn: ConnId },
    /// SIGUSR1: empty the IP history and any caches.
    Flush,
    /// SIGUSR2: answer with `Status`.
    StatusRequest,
    /// The peer of pending connection `conn` has gone (reset, or closed without sending
    /// anything) and the parent closed its socket. If its evaluation has not started it is
    /// skipped: the classifier answers a close verdict at once (still exactly one `Verdict`).
    ConnGone { conn: ConnId },
    /// A probe with no connection behind it (a datagram to a `trap udp` port, or a stealth
    /// probe the sentry saw), numbered from the connections' counter and classified like one:
    /// answered by exactly one `Verdict`, whose service or message the parent never starts
    /// (there is no socket), but whose `block` it carries out.
    Probe {
        conn: ConnId,
        remote: SocketAddr,
        local: SocketAddr,
        mode: SentryMode,
    },
    /// The blocked set changed (`blocked` matcher): these addresses are now blocked (`on`) or
    /// no longer are. After a restart the whole set is sent this way, before any connection.
    Blocked { addrs: Vec<IpAddr>, on: bool },
    /// `nannyctl explain`: classify `ask` against the live policy as a dry run (no count,
    /// history, rate or trap state changes), tracing every rule; answered by one `Explained`.
    /// `local` is the local end to assume.
    Explain {
        req: ReqId,
        ask: ExplainAsk,
        local: SocketAddr,
    },
    /// `nannyctl metrics`: answered by one `Metrics`.
    MetricsRequest { req: ReqId },
}

/// Sent by the classifier; decoded only by the parent, which admits it in `parent/admit.rs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClassifierToParent {
    /// First message, exactly once, carrying the classifier's own `build_id()`; the parent
    /// kills a classifier whose build differs from its own.
    Hello { build: BuildId },
    /// The classifier now evaluates with generation `gen`.
    PolicyLoaded { gen: Gen },
    /// The decision for `conn`, made with the actions of generation `gen`.
    Verdict {
        conn: ConnId,
        gen: Gen,
        decision: Decision,
        facts: VerdictFacts,
    },
    /// A log line, any time after `Hello`; the parent caps, escapes and rate-limits it.
    Log(LogRecord),
    /// Answer to `StatusRequest`.
    Status {
        evaluations: u64,
        eval_micros_total: u64,
        class_counts: Vec<(ClassName, u32)>,
        history_entries: u64,
    },
    /// Answer to `Explain`.
    Explained { req: ReqId, report: ExplainReport },
    /// Answer to `MetricsRequest`: the lookups this classifier made, by kind.
    Metrics {
        req: ReqId,
        lookups: Vec<LookupMetrics>,
    },
}

/// A lookup the classifier asks of the resolver.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Query {
    /// Reverse lookup of the address with forward confirmation.
    Host { ip: IpAddr },
    /// Forward lookup (forwhn:).
    Forward { name: HostName },
    /// DNS blocklist query for `ip` under `zone`.
    Dnsbl { ip: IpAddr, zone: HostName },
    /// RFC 1413 query about the connection `remote` → `local`, sent from `local`'s address.
    Identd {
        remote: SocketAddr,
        local: SocketAddr,
    },
    /// Can a TCP connection be made to `ip:port` (from `local_ip`)?
    AnswersOn {
        ip: IpAddr,
        port: u16,
        local_ip: IpAddr,
    },
}

/// The resolver's answer to a `Query`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// For `Query::Host`: the forward-confirmed reverse lookup.
    Host(HostFacts),
    /// Addresses found (forward lookup or DNSBL); empty = none / not listed / failed.
    Addrs(Vec<IpAddr>),
    /// For `Query::Identd`: the user id, or None for no (usable) answer.
    Identd(Option<IdentUser>),
    /// For `Query::AnswersOn`: whether the connection was accepted in time.
    AnswersOn(bool),
}

/// Sent by the classifier; decoded only by the resolver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClassifierToResolver {
    /// First message, exactly once; the resolver checks the build against its own.
    Hello { build: BuildId },
    /// Do `query`; answered by exactly one `LookupResult` echoing `req` and the query.
    Lookup { req: ReqId, query: Query },
}

/// Sent by the resolver; decoded only by the classifier, which drops replies to ids it never
/// sent or no longer waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResolverToClassifier {
    /// First message, exactly once, carrying the resolver's own `build_id()`.
    Hello { build: BuildId },
    /// The answer to `Lookup { req, query }`; the classifier checks that `req` is outstanding
    /// and that `query` is the one it asked, and ignores the reply otherwise.
    LookupResult {
        req: ReqId,
        query: Query,
        answer: Answer,
    },
}

/// Settings from nanny.conf and the command line that the resolver needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolverSettings {
    /// Worker threads doing blocking lookups.
    pub threads: u32,
    pub dns_timeout_ms: u32,
    pub identd_timeout_ms: u32,
    pub answerson_timeout_ms: u32,
    pub cache_ttl_secs: u32,
    pub cache_entries: u32,
}

/// Sent by the parent; decoded only by the resolver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParentToResolver {
    /// First message, exactly once, with the settings the resolver runs with.
    Hello {
        build: BuildId,
        settings: ResolverSettings,
    },
    /// SIGUSR1: empty the caches.
    Flush,
}

/// Sent by the resolver; decoded only by the parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResolverToParent {
    /// First message, exactly once; the parent kills a resolver whose build differs.
    Hello { build: BuildId },
    /// A log line, any time after `Hello`; the parent caps, escapes and rate-limits it.
    Log(LogRecord),
}

/// Most ports one stealth watch may list (a `PortSet`). PortSentry's own lists are a few dozen
/// ports; the cap keeps a Hello small and a lookup cheap.
pub const MAX_WATCH_PORTS: usize = 4096;

/// A set of ports, never 0: strictly ascending on the wire (checked on decode), so a lookup is
/// a binary search and a duplicated or unsorted list from a peer is a shape error.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<u16>", into = "Vec<u16>")]
pub struct PortSet(Vec<u16>);

impl PortSet {
    /// The set of `ports`, sorted and deduplicated; refused if it holds 0 or more than
    /// [`MAX_WATCH_PORTS`] ports.
    pub fn new(mut ports: Vec<u16>) -> Result<PortSet, ShapeError> {
        ports.sort_unstable();
        ports.dedup();
        PortSet::try_from(ports)
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.binary_search(&port).is_ok()
    }

    pub fn ports(&self) -> &[u16] {
        &self.0
    }

    /// The highest port in the set (None if empty).
    pub fn max(&self) -> Option<u16> {
        self.0.last().copied()
    }
}

impl TryFrom<Vec<u16>> for PortSet {
    type Error = ShapeError;
    fn try_from(v: Vec<u16>) -> Result<Self, ShapeError> {
        if v.len() > MAX_WATCH_PORTS {
            return Err(ShapeError("port list length"));
        }
        if v.first() == Some(&0) {
            return Err(ShapeError("port 0 in a port list"));
        }
        if !v.windows(2).all(|w| matches!(w, [a, b] if a < b)) {
            return Err(ShapeError("port list not strictly ascending"));
        }
        Ok(PortSet(v))
    }
}

impl From<PortSet> for Vec<u16> {
    fn from(p: PortSet) -> Vec<u16> {
        p.0
    }
}

/// What the sentry watches for one protocol (nanny.conf `stealth tcp|udp ...`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Watch {
    /// `stealth tcp|udp PORTS`: exactly these ports (PortSentry's stcp / sudp modes).
    Ports(PortSet),
    /// `stealth tcp|udp below N except PORTS`: every port 1..N that is not in `except`
    /// (PortSentry's atcp / audp modes; ADVANCED_PORTS_TCP/UDP and ADVANCED_EXCLUDE_*).
    Below { below: u16, except: PortSet },
}

impl Watch {
    /// Does this watch cover `port`? Never port 0.
    pub fn covers(&self, port: u16) -> bool {
        port != 0
            && match self {
                Watch::Ports(p) => p.contains(port),
                Watch::Below { below, except } => port < *below && !except.contains(port),
            }
    }

    /// One past the highest port covered (0 if none): the sentry's packet filter passes only
    /// destination ports below it.
    pub fn limit(&self) -> u32 {
        match self {
            Watch::Ports(p) => p.max().map_or(0, |m| u32::from(m) + 1),
            Watch::Below { below, .. } => u32::from(*below),
        }
    }
}

/// What the sentry watches: nothing for a protocol that is `None`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentrySettings {
    pub tcp: Option<Watch>,
    pub udp: Option<Watch>,
}

/// What a probe looked like on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ProbeKind {
    /// TCP SYN without ACK (a half-open scan, `nmap -sS`, or a plain connect attempt).
    Syn,
    /// TCP FIN without ACK, SYN, PSH or URG (`nmap -sF`).
    Fin,
    /// TCP with none of FIN, SYN, RST, PSH, URG, ACK set (`nmap -sN`).
    Null,
    /// TCP FIN + PSH + URG without ACK (`nmap -sX`).
    Xmas,
    /// A UDP datagram (`nmap -sU`).
    Udp,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Syn => "syn",
            ProbeKind::Fin => "fin",
            ProbeKind::Null => "null",
            ProbeKind::Xmas => "xmas",
            ProbeKind::Udp => "udp",
        }
    }
}

/// One probe the sentry saw: from `src` to this host's `dst`, destination `port`. Every field
/// is forgeable by whoever sent the packet (the source address above all): the parent treats
/// a report as a claim, checks it against the settings it sent
/// (`portnanny::sentry::report::check_report`), and forgeable modes have a block budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProbeReport {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub port: u16,
    pub mode: SentryMode,
    pub kind: ProbeKind,
}

/// Sent by the parent; decoded only by the sentry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParentToSentry {
    /// First message, exactly once, with what to watch. The sentry checks the build against its
    /// own (a differing build exits 111) and only then opens its capture socket, whose kernel
    /// filter is built from `settings`.
    Hello {
        build: BuildId,
        settings: SentrySettings,
    },
}

/// Sent by the sentry; decoded only by the parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SentryToParent {
    /// First message, exactly once, after the parent's Hello and once the capture socket is
    /// open, carrying the sentry's own `build_id()`; the parent kills a sentry whose build
    /// differs.
    Hello { build: BuildId },
    /// A probe to a watched port that has no listener and belongs to no socket of this host,
    /// any time after `Hello`; at most one per (source, port, kind) per second and a bounded
    /// number per second in all. The parent refuses (as a violation) a report that fails
    /// `check_report` against the settings it sent: a port or mode not watched, port 0, a
    /// kind of the other protocol, a source that is not a unicast address of another host.
    Probe(ProbeReport),
    /// A log line, any time after `Hello`; the parent caps, escapes and rate-limits it.
    Log(LogRecord),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_shapes() {
        let ok = |s: &str| HostName::try_from(s.to_owned()).map(|h| h.0);
        assert_eq!(ok("Mail.Example.COM."), Ok("mail.example.com".to_owned()));
        assert!(ok("").is_err());
        assert!(ok("a..b").is_err());
        assert!(ok("a\nb").is_err());
        assert!(ok("a b").is_err());
        assert!(ok(&"x".repeat(64)).is_err());
        assert!(ok(&["a"; 130].join(".")).is_err());
    }

    #[test]
    fn build_id_shapes() {
        assert!(BuildId::try_from(crate::spawn::build_id().0).is_ok());
        assert!(BuildId::try_from(String::new()).is_err());
        assert!(BuildId::try_from("a\nb".to_owned()).is_err());
        assert!(BuildId::try_from("x".repeat(MAX_BUILD_ID)).is_ok());
        assert!(BuildId::try_from("x".repeat(MAX_BUILD_ID + 1)).is_err());
    }

    #[test]
    fn ident_and_class_shapes() {
        assert!(IdentUser::try_from("cks".to_owned()).is_ok());
        assert!(IdentUser::try_from("a\u{1b}[2J".to_owned()).is_err());
        assert!(IdentUser::try_from("x".repeat(MAX_IDENT_USER + 1)).is_err());
        assert!(ClassName::try_from("bl-a".to_owned()).is_ok());
        assert!(ClassName::try_from("a b".to_owned()).is_err());
        assert!(Label::try_from("dip DE".to_owned()).is_ok());
        assert!(Label::try_from("a\tb".to_owned()).is_err());
    }

    #[test]
    fn port_set_shapes() {
        let from = |v: Vec<u16>| PortSet::try_from(v);
        assert!(from(vec![1, 22, 65535]).is_ok());
        assert!(from(vec![]).is_ok());
        assert_eq!(from(vec![0, 1]), Err(ShapeError("port 0 in a port list")));
        assert!(from(vec![22, 22]).is_err());
        assert!(from(vec![80, 22]).is_err());
        assert!(from((1..=MAX_WATCH_PORTS as u16 + 1).collect()).is_err());
        assert_eq!(PortSet::new(vec![80, 22, 80]).unwrap().ports(), &[22, 80]);
        let w = Watch::Below {
            below: 1024,
            except: PortSet::new(vec![113]).unwrap(),
        };
        assert!(w.covers(1) && w.covers(1023) && !w.covers(1024) && !w.covers(113));
        assert!(!w.covers(0));
        assert_eq!(w.limit(), 1024);
        let p = Watch::Ports(PortSet::new(vec![31337, 1]).unwrap());
        assert!(p.covers(1) && p.covers(31337) && !p.covers(2));
        assert_eq!(p.limit(), 31338);
        assert_eq!(Watch::Ports(PortSet::new(vec![]).unwrap()).limit(), 0);
    }

    #[test]
    fn sentry_messages_round_trip_and_refuse_bad_port_lists() {
        use crate::wire::{decode, encode, HEADER};
        let hello = ParentToSentry::Hello {
            build: crate::spawn::build_id(),
            settings: SentrySettings {
                tcp: Some(Watch::Below {
                    below: 1024,
                    except: PortSet::new(vec![113, 22]).unwrap(),
                }),
                udp: Some(Watch::Ports(PortSet::new(vec![69]).unwrap())),
            },
        };
        let frame = encode(&hello).unwrap();
        assert_eq!(decode::<ParentToSentry>(&frame[HEADER..]).unwrap(), hello);
        let probe = SentryToParent::Probe(ProbeReport {
            src: "fd00::2".parse().unwrap(),
            dst: "fd00::1".parse().unwrap(),
            port: 22,
            mode: SentryMode::Atcp,
            kind: ProbeKind::Xmas,
        });
        let frame = encode(&probe).unwrap();
        assert_eq!(decode::<SentryToParent>(&frame[HEADER..]).unwrap(), probe);
        // An unsorted or zero-holding port list from a peer fails to decode.
        for bad in [vec![80u16, 22], vec![0], vec![5, 5]] {
            let raw = Watch::Ports(PortSet(bad.clone()));
            let frame = encode(&raw).unwrap();
            assert!(decode::<Watch>(&frame[HEADER..]).is_err(), "{bad:?}");
        }
    }
}

/// A control client, numbered by the control worker for the life of its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClientId(pub u64);

/// Who made a control request (SO_PEERCRED), for the parent's audit log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub pid: i32,
}

/// What the control worker needs to know to authorise requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlSettings {
    /// `controlgroup`'s gid: its members may make read requests.
    pub group: Option<u32>,
    /// Besides root, the uid that may change things: the daemon's own user when it does not
    /// run as root (development), else 0.
    pub admin_uid: u32,
    /// `xmlrpc ADDR:PORT`: pyctd's XML-RPC API is served on the listener handed over as the
    /// row's [`crate::Peer::XmlrpcClients`] fd (None: that fd is /dev/null).
    pub xmlrpc: Option<crate::xmlrpc::XmlrpcSettings>,
}

/// Sent by the parent; decoded only by the control worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParentToControl {
    /// First message, exactly once; the worker starts accepting clients only after it.
    Hello {
        build: BuildId,
        settings: ControlSettings,
    },
    /// The answer to a client's request.
    Reply { client: ClientId, reply: Reply },
    /// The answer to a `list`: every live connection; the worker filters, orders and pages.
    Table {
        client: ClientId,
        rows: Vec<ConnRow>,
    },
    /// The answer to `metrics`; the worker renders the text exposition.
    Metrics { client: ClientId, metrics: Metrics },
    /// On a reload (SIGHUP, `nannyctl reload`): the XML-RPC password file as read again. Sent
    /// only when `xmlrpc` is configured; the worker checks its bounds and keeps its sessions.
    XmlrpcUsers(crate::xmlrpc::XmlrpcAuth),
}

/// Sent by the control worker; decoded only by the parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlToParent {
    /// First message, exactly once, after the parent's Hello.
    Hello { build: BuildId },
    /// A request the worker decoded, checked ([`Request::check`]) and authorised (a `Change`
    /// request only from root). Answered by exactly one `Reply`, `Table` or `Metrics`.
    Request {
        client: ClientId,
        caller: Caller,
        req: Request,
    },
    /// A log line, any time after `Hello`; the parent caps, escapes and rate-limits it.
    Log(LogRecord),
    /// A pyctd XML-RPC procedure (`xmlrpc` in nanny.conf) from a session `user` logged into.
    /// Only conntrack requests can travel this way; the parent refuses it when `xmlrpc` is not
    /// configured, checks the request's bounds again and logs every change with the user's
    /// name. Answered by exactly one `Reply`.
    XmlrpcRequest {
        client: ClientId,
        user: crate::xmlrpc::XmlrpcUser,
        req: crate::conntrack::CtRequest,
    },
}

/// What the netfilter worker needs besides its requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetfilterSettings {
    /// `conntrackuidmask`: the bits of the mark that hold a uid (0: no uid column).
    pub uid_mask: u32,
}

/// Sent by the parent; decoded only by the netfilter worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParentToNetfilter {
    /// First message, exactly once; the worker opens its netlink socket after it.
    Hello {
        build: BuildId,
        settings: NetfilterSettings,
    },
    /// A conntrack request a control client made (already checked and authorised), or the
    /// parent's own `Kill` of a newly blocked address's flows (`blockflush`). Answered by
    /// exactly one `Answer` with the same `req`.
    Ask {
        req: ReqId,
        ask: crate::conntrack::CtRequest,
    },
}

/// Sent by the netfilter worker; decoded only by the parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetfilterToParent {
    /// First message, exactly once, after the parent's Hello and once the netlink socket is
    /// open; the parent kills a worker whose build differs.
    Hello { build: BuildId },
    /// The answer to `Ask { req }`: a `CtPage` (at most `MAX_CT_PAGE` rows), `CtKilled`,
    /// `Done` or `Error`. The parent refuses (as a violation) an answer to a request it never
    /// asked, an answer of a kind the request does not have, or an oversized page.
    Answer { req: ReqId, reply: Reply },
    /// A log line, any time after `Hello`; the parent caps, escapes and rate-limits it.
    Log(LogRecord),
}
