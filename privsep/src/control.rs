//! The control protocol: what `nannyctl` asks of the daemon over the control socket and what
//! it is answered, and the typed pieces the control worker and the parent exchange about it.
//!
//! On the control socket every request and every reply is one JSON object on one line
//! (serde_json of [`Request`] and [`Reply`]; enums are externally tagged, names in kebab-case).
//! The control worker decodes the JSON (the only place request bytes are parsed), checks the
//! shapes and the caller's authority, and forwards the same typed [`Request`] to the parent in
//! a bincode frame ([`crate::proto::ControlToParent`]). Field names here are the `--json`
//! output's names: keep them stable, and document a change in the README.
//!
//! Shapes are checked while decoding, as in [`crate::proto`]: newtypes with `serde(try_from)`
//! and bounded lists ([`Request::check`]).

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

pub use crate::cidr::Cidr;
use crate::conntrack::{CtKilled, CtPage, CtRequest};
use crate::proto::{ClassName, HostName, IdentUser};

/// Longest request line a client may send (bytes, newline included).
pub const MAX_REQUEST: usize = 64 * 1024;
/// Most ids, addresses, classes, ports or users in one request's lists.
pub const MAX_LIST: usize = 4096;
/// Longest user name in a filter.
pub const MAX_USER: usize = 256;
/// Longest `change ID timeout` (a 32-bit count of seconds, as pyctd's).
pub const MAX_TIMEOUT: u64 = u32::MAX as u64;

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The live connections, filtered, ordered and paged.
    List(ListQuery),
    /// End connections.
    Kill(KillTarget),
    /// End connection `id` `timeout` seconds from now (0: now).
    Change {
        id: u64,
        timeout: u64,
    },
    /// Block an address (None: until unblocked); neverblock applies.
    Block {
        addr: IpAddr,
        seconds: Option<u64>,
    },
    Unblock {
        addr: IpAddr,
    },
    /// The blocked set.
    Blocked,
    /// Re-read the rules and actions files now (as SIGHUP); answered once the load finished.
    Reload,
    /// What SIGUSR2 logs.
    Status,
    /// What SIGUSR1 does: empty the IP history and the caches.
    Flush,
    /// A dry-run classification against the live policy.
    Explain(ExplainAsk),
    /// Counters, in Prometheus's text exposition format.
    Metrics,
    /// The kernel's conntrack table (pyctd's job), answered by the netfilter worker.
    Conntrack(CtRequest),
}

/// Which requests only root may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Members of `controlgroup` (and root).
    Read,
    /// Root only.
    Change,
}

impl Request {
    pub fn access(&self) -> Access {
        match self {
            Request::List(_)
            | Request::Blocked
            | Request::Status
            | Request::Explain(_)
            | Request::Metrics => Access::Read,
            Request::Kill(_)
            | Request::Change { .. }
            | Request::Block { .. }
            | Request::Unblock { .. }
            | Request::Reload
            | Request::Flush => Access::Change,
            Request::Conntrack(c) if c.changes() => Access::Change,
            Request::Conntrack(_) => Access::Read,
        }
    }

    /// The command's name, for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Request::List(_) => "list",
            Request::Kill(_) => "kill",
            Request::Change { .. } => "change",
            Request::Block { .. } => "block",
            Request::Unblock { .. } => "unblock",
            Request::Blocked => "blocked",
            Request::Reload => "reload",
            Request::Status => "status",
            Request::Flush => "flush",
            Request::Explain(_) => "explain",
            Request::Metrics => "metrics",
            Request::Conntrack(c) => c.name(),
        }
    }

    /// The limits decoding alone does not enforce: list lengths and value ranges.
    pub fn check(&self) -> Result<(), String> {
        let list = |what: &str, n: usize| {
            if n > MAX_LIST {
                Err(format!("too many {what}: {n} (at most {MAX_LIST})"))
            } else {
                Ok(())
            }
        };
        match self {
            Request::List(q) => {
                let f = &q.filter;
                list("addresses", f.addr.len())?;
                list("classes", f.class.len())?;
                list("ports", f.local_port.len())?;
                list("users", f.user.len())?;
                list("order columns", q.order.len())?;
                if let Some(u) = f.user.iter().find(|u| u.len() > MAX_USER || u.is_empty()) {
                    return Err(format!("bad user name '{}'", u.escape_debug()));
                }
                Ok(())
            }
            Request::Kill(k) => {
                list("ids", k.ids.len())?;
                list("addresses", k.ip.len())?;
                list("classes", k.class.len())?;
                if k.ids.is_empty() && k.ip.is_empty() && k.class.is_empty() {
                    return Err("kill needs ids, --ip or --class".into());
                }
                Ok(())
            }
            Request::Change { timeout, .. } if *timeout > MAX_TIMEOUT => Err(format!(
                "timeout {timeout} is out of range (0 to {MAX_TIMEOUT} seconds)"
            )),
            Request::Block {
                seconds: Some(0), ..
            } => Err("a block of 0 seconds: leave the time out to block until unblocked".into()),
            Request::Conntrack(c) => c.check(),
            _ => Ok(()),
        }
    }
}

/// `list`: filters (every one given must hold; within one, any value may match), ordering
/// (columns in priority order), then paging.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListQuery {
    pub filter: Filter,
    pub order: Vec<OrderBy>,
    pub offset: u64,
    /// None: every row from `offset` on.
    pub limit: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    /// The peer is in one of these.
    pub addr: Vec<Cidr>,
    /// One of these is the action class or a matched class.
    pub class: Vec<ClassName>,
    pub local_port: Vec<u16>,
    /// The service's user is one of these.
    pub user: Vec<String>,
    /// At least this old (seconds).
    pub min_age: Option<u64>,
    /// At most this old (seconds).
    pub max_age: Option<u64>,
    pub state: Vec<ConnState>,
}

/// A column of the connection table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Column {
    Id,
    Pid,
    Peer,
    Local,
    Class,
    Classes,
    Label,
    User,
    Age,
    Gen,
    State,
    Timeout,
}

impl Column {
    pub const ALL: [Column; 12] = [
        Column::Id,
        Column::Pid,
        Column::Peer,
        Column::Local,
        Column::Class,
        Column::Classes,
        Column::Label,
        Column::User,
        Column::Age,
        Column::Gen,
        Column::State,
        Column::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Column::Id => "id",
            Column::Pid => "pid",
            Column::Peer => "peer",
            Column::Local => "local",
            Column::Class => "class",
            Column::Classes => "classes",
            Column::Label => "label",
            Column::User => "user",
            Column::Age => "age",
            Column::Gen => "gen",
            Column::State => "state",
            Column::Timeout => "timeout",
        }
    }

    pub fn from_name(s: &str) -> Option<Column> {
        Column::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderBy {
    pub column: Column,
    #[serde(default)]
    pub descending: bool,
}

/// `kill`: every connection named by an id, or whose peer is in one of `ip`, or whose action
/// or matched classes include one of `class`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KillTarget {
    pub ids: Vec<u64>,
    pub ip: Vec<Cidr>,
    pub class: Vec<ClassName>,
}

/// `explain ADDR [--local ADDR:PORT] [--ident NAME] [--hostname NAME]`: facts given are used
/// instead of being looked up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainAsk {
    pub addr: IpAddr,
    /// The local end (default: the first listen address).
    #[serde(default)]
    pub local: Option<SocketAddr>,
    #[serde(default)]
    pub ident: Option<IdentUser>,
    #[serde(default)]
    pub hostname: Option<HostName>,
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnState {
    /// On a `proxy from` listen, waiting for its PROXY protocol header (its peer is still the
    /// load balancer).
    Header,
    /// Waiting for its verdict.
    Pending,
    /// Its service runs.
    Running,
    /// Its message is being written.
    Writing,
    /// Its service got SIGTERM and is within its grace period.
    Ending,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Header => "header",
            ConnState::Pending => "pending",
            ConnState::Running => "running",
            ConnState::Writing => "writing",
            ConnState::Ending => "ending",
        }
    }
}

/// One live connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRow {
    pub id: u64,
    /// The service's pid (its process group), when it runs.
    pub pid: Option<i32>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The action class (None while pending, or when no class had an action).
    pub class: Option<String>,
    /// Every matched class, in match order.
    pub classes: Vec<String>,
    pub label: Option<String>,
    /// The user its service runs as.
    pub user: Option<String>,
    /// Milliseconds since it was accepted.
    pub age_ms: u64,
    /// The policy generation of its verdict (while pending: the oldest it may get).
    pub gen: u32,
    pub state: ConnState,
    /// Seconds until a timeout ends it, if one is set.
    pub timeout: Option<u64>,
}

/// What `kill` did to one connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedRow {
    pub id: u64,
    pub pid: Option<i32>,
    pub peer: SocketAddr,
    pub class: Option<String>,
    /// `sigterm` (its process group; SIGKILL follows after the grace), `message-cut`, `closed`.
    pub how: String,
}

/// One blocked address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRow {
    pub addr: IpAddr,
    /// Unix time it was blocked.
    pub since: u64,
    /// Unix time it ends (None: until unblocked).
    pub until: Option<u64>,
    pub port: u16,
    pub mode: String,
    pub reason: String,
    /// How many times it was blocked before (the ban time grows with it).
    pub repeat: u32,
}

/// One rule as `explain` evaluated it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleTrace {
    /// Where it is written: `FILE:LINE`.
    pub at: String,
    pub class: String,
    /// The rule as written.
    pub rule: String,
    /// Whether it matched (None: not evaluated, e.g. its class had already matched).
    pub matched: Option<bool>,
    /// Why: the matchers that decided it and their results.
    pub why: String,
}

/// `explain`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainReport {
    pub addr: IpAddr,
    pub local: SocketAddr,
    pub gen: u32,
    /// The facts used, given or looked up: (name, value), e.g. ("hostname", "a.example").
    pub facts: Vec<(String, String)>,
    pub rules: Vec<RuleTrace>,
    /// Matched classes, in match order.
    pub classes: Vec<String>,
    /// The class whose action would be used.
    pub action_class: Option<String>,
    /// The action, as the actions file gives it (`run …`, `msg …`, `drop`, …).
    pub action: String,
    /// Whether the limits would admit it right now.
    pub admitted: bool,
    /// If not: which limit refuses it (`ipmax`, `connmax`, `reject`, …).
    pub refusal: Option<String>,
}

/// Buckets (upper bounds, milliseconds) of the lookup latency histograms.
pub const LOOKUP_BUCKETS_MS: [u64; 12] = [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// One lookup kind's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupMetrics {
    /// `reverse`, `forward`, `dnsbl`, `identd`, `answerson`, …
    pub kind: String,
    pub count: u64,
    /// Lookups that failed or timed out.
    pub failures: u64,
    /// Total latency, microseconds.
    pub sum_us: u64,
    /// Cumulative counts per [`LOOKUP_BUCKETS_MS`] bound (same length).
    pub buckets: Vec<u64>,
}

/// Per-class counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    /// Connections whose verdict used this class's action.
    pub accepted: u64,
    /// Live connections with this action class.
    pub active: u64,
}

/// The counters `metrics` exposes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    pub uptime_s: u64,
    pub policy_gen: u32,
    pub connections_total: u64,
    pub pending: u64,
    pub running: u64,
    pub writing: u64,
    pub classes: Vec<ClassMetrics>,
    /// Refusals by reason (`ipmax`, `connmax`, `reject`, `maxconn`, …).
    pub refused: Vec<(String, u64)>,
    pub lookups: Vec<LookupMetrics>,
    pub blocked_now: u64,
    pub blocks_total: u64,
    /// Restarts by worker role.
    pub restarts: Vec<(String, u64)>,
}

/// Why a request failed; each has its own `nannyctl` exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Malformed, oversized, too slow, or a bad value.
    BadRequest,
    /// The caller may not make this request.
    NotAuthorised,
    /// No live connection has this id.
    NoSuchId,
    /// The daemon cannot do it now (no classifier, a reload failed, no sentry configured…).
    Failed,
}

/// An answer to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    Conns {
        /// Rows that passed the filter, before paging.
        total: u64,
        rows: Vec<ConnRow>,
    },
    /// What `kill` ended; `missing`: ids given that name no live connection.
    Ended {
        ended: Vec<EndedRow>,
        missing: Vec<u64>,
    },
    /// `change`: the connection and its new deadline.
    Changed {
        id: u64,
        timeout: u64,
    },
    Blocks(Vec<BlockRow>),
    /// Lines of text (`status`).
    Lines(Vec<String>),
    /// A sentence saying what was done (`block`, `unblock`, `reload`, `flush`).
    Done(String),
    Explained(ExplainReport),
    /// Prometheus text exposition.
    Metrics(String),
    Error {
        kind: ErrorKind,
        message: String,
    },
    /// `conntrack list`: a page of the snapshot.
    CtPage(CtPage),
    /// `conntrack kill`.
    CtKilled(CtKilled),
}

impl Reply {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
        Reply::Error {
            kind,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_bound_lists_and_values() {
        let kill_none = Request::Kill(KillTarget::default());
        assert!(kill_none.check().is_err());
        let many = Request::Kill(KillTarget {
            ids: vec![1; MAX_LIST + 1],
            ..KillTarget::default()
        });
        assert!(many.check().is_err());
        let t = Request::Change {
            id: 1,
            timeout: MAX_TIMEOUT + 1,
        };
        assert!(t.check().is_err());
        assert!(Request::Change { id: 1, timeout: 5 }.check().is_ok());
        assert_eq!(Request::Reload.access(), Access::Change);
        assert_eq!(Request::Metrics.access(), Access::Read);
    }
}
