//! The classifier's implementation of `policy::facts::Facts` for one connection: lazy lookups
//! through the resolver, a per-connection cache, and the history table for time matchers.
//!
//! Runs in the classifier, on an evaluation thread. Addresses come from the parent; answers come
//! from the resolver and were checked by lookups.rs (id, echoed query, answer kind) before they
//! reach this file; hostnames and identd users are validated newtypes from decoding.
//!
//! Invariants:
//! - Nothing is asked before a matcher needs it (or the evaluator prefetches it), and nothing is
//!   asked twice for one connection: each distinct query has one slot, Pending or Done.
//! - `prefetch` starts every lookup it is given without waiting, so an or-list of N DNSBL zones
//!   costs one round trip; answers are still consumed in the evaluator's order.
//! - Every wait ends by its deadline; a timeout, a broken resolver channel or a name that is not
//!   a valid hostname mean "no answer": no hostname, no identd, not listed, does not answer.
//! - Dropping a `ConnFacts` withdraws its pending requests, so late answers are stale.
//! - A speculative `ConnFacts` (the dispatch thread's first try, see pool.rs) never asks the
//!   resolver and never waits: the first fact that would need a lookup marks it `blocked` and
//!   answers "no"; its classification is then thrown away and the connection is evaluated
//!   again on the pool. The history is consulted (and the connection recorded in it) only
//!   before it is blocked, and the times it read go with the job, so nothing is recorded twice.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::PoisonError;
use std::time::Instant;

use crossbeam_channel::{self as cb, RecvTimeoutError};
use policy::facts::{self as pf, Facts, HostInfo, Lookup, SeenTimes, SentryMode};
use privsep::proto::{Answer, HnStatus, HostFacts, HostName, IdentUser, LogLevel, Query, ReqId};

use super::lookups::Reply;
use super::rates::RateMarks;
use super::Shared;

enum Slot {
    Pending {
        req: ReqId,
        deadline: Instant,
    },
    /// None: no answer (timeout, broken channel, or a query we could not even ask).
    Done(Option<Answer>),
}

/// What the evaluation learned that the verdict may carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Present iff the host lookup was asked for (a failed one reads as unknown).
    pub host: Option<HostFacts>,
    /// Present iff identd answered with a user.
    pub identd: Option<IdentUser>,
    /// Present iff a time matcher consulted the history.
    pub seen: Option<SeenTimes>,
}

/// The facts of one connection under evaluation.
pub struct ConnFacts<'a> {
    shared: &'a Shared,
    remote: SocketAddr,
    local: SocketAddr,
    /// Where the resolver reader answers this connection's lookups: made by the first lookup
    /// (most connections need none, and a channel costs allocations to make and to drop).
    replies: Option<(cb::Sender<Reply>, cb::Receiver<Reply>)>,
    slots: HashMap<Query, Slot>,
    pending: HashMap<ReqId, Query>,
    seen: Option<SeenTimes>,
    /// Whether a matcher consumed the host / identd answer: only then may the verdict carry it
    /// (a prefetched answer nobody read must not make substitutions depend on timing).
    host_asked: bool,
    identd_asked: bool,
    /// The dispatch thread's try: answer nothing that needs a lookup (see the header).
    speculative: bool,
    /// A speculative evaluation reached a fact that needs a lookup.
    blocked: bool,
    /// Set for a trap connection or a probe: the detector that saw it.
    trap: Option<SentryMode>,
    /// The evaluated generation's `ipfile:` lists.
    ipfiles: Option<&'a HashMap<String, policy::addr::AddrSet>>,
    /// The `rate:` answers charged when the connection arrived.
    rates: Option<&'a RateMarks>,
}

impl<'a> ConnFacts<'a> {
    pub fn new(shared: &'a Shared, remote: SocketAddr, local: SocketAddr) -> ConnFacts<'a> {
        ConnFacts {
            shared,
            remote: canonical(remote),
            local: canonical(local),
            replies: None,
            slots: HashMap::new(),
            pending: HashMap::new(),
            seen: None,
            host_asked: false,
            identd_asked: false,
            speculative: false,
            blocked: false,
            trap: None,
            ipfiles: None,
            rates: None,
        }
    }

    /// Facts for the dispatch thread's try, which must never wait (see the header).
    pub fn speculative(shared: &'a Shared, remote: SocketAddr, local: SocketAddr) -> Self {
        let mut facts = ConnFacts::new(shared, remote, local);
        facts.speculative = true;
        facts
    }

    /// Starts from history times an earlier (speculative) evaluation of this connection
    /// already read, so the connection is not recorded twice.
    pub fn with_seen(mut self, seen: Option<SeenTimes>) -> Self {
        self.seen = seen;
        self
    }

    /// Whether a speculative evaluation needed a lookup: its classification is not valid.
    pub fn needed_lookup(&self) -> bool {
        self.blocked
    }

    /// The `ipfile:` lists of the generation the rules come from.
    pub fn with_ipfiles(mut self, ipfiles: &'a HashMap<String, policy::addr::AddrSet>) -> Self {
        self.ipfiles = Some(ipfiles);
        self
    }

    /// The `rate:` answers the dispatch thread charged on arrival (see rates.rs).
    pub fn with_rates(mut self, rates: Option<&'a RateMarks>) -> Self {
        self.rates = rates;
        self
    }

    /// A trap connection or probe, and the detector that saw it.
    pub fn with_trap(mut self, trap: Option<SentryMode>) -> Self {
        self.trap = trap;
        self
    }

    /// The history times read, for [`ConnFacts::with_seen`].
    pub fn seen_times(&self) -> Option<SeenTimes> {
        self.seen
    }

    /// True (and marks this evaluation blocked) when a fact needing a lookup must not be
    /// asked: in a speculative evaluation.
    fn must_not_wait(&mut self) -> bool {
        if self.speculative {
            self.blocked = true;
        }
        self.speculative
    }

    /// Whether `lookup` was answered: Some(false) when it was asked but got no answer (its
    /// deadline passed, the resolver channel broke, or it could not be asked); None when it
    /// was not asked or is still pending. For explain's facts.
    pub fn answered(&self, lookup: &Lookup) -> Option<bool> {
        match self.slots.get(&self.query_for_quiet(lookup)?)? {
            Slot::Done(answer) => Some(answer.is_some()),
            Slot::Pending { .. } => None,
        }
    }

    /// [`ConnFacts::query_for`] without its log line (the lookup was already made or refused).
    fn query_for_quiet(&self, lookup: &Lookup) -> Option<Query> {
        let ip = self.remote.ip();
        Some(match lookup {
            Lookup::Host => self.host_query(),
            Lookup::Identd => self.identd_query(),
            Lookup::Forward(name) => Query::Forward {
                name: HostName::try_from(name.clone()).ok()?,
            },
            Lookup::Dnsbl(zone) => Query::Dnsbl {
                ip,
                zone: HostName::try_from(zone.clone()).ok()?,
            },
            Lookup::AnswersOn(port) => Query::AnswersOn {
                ip,
                port: *port,
                local_ip: self.local.ip(),
            },
        })
    }

    /// The facts a verdict may carry, as far as this evaluation looked them up.
    pub fn observed(&self) -> Observed {
        let host = if self.host_asked {
            match self.slots.get(&self.host_query()) {
                Some(Slot::Done(Some(Answer::Host(h)))) => Some(h.clone()),
                // Asked but not answered: the lookup happened and found nothing.
                _ => Some(HostFacts {
                    status: HnStatus::Unknown,
                    claimed: None,
                }),
            }
        } else {
            None
        };
        let identd = match self.slots.get(&self.identd_query()) {
            Some(Slot::Done(Some(Answer::Identd(user)))) if self.identd_asked => user.clone(),
            _ => None,
        };
        Observed {
            host,
            identd,
            seen: self.seen,
        }
    }

    fn host_query(&self) -> Query {
        Query::Host {
            ip: self.remote.ip(),
        }
    }

    fn identd_query(&self) -> Query {
        Query::Identd {
            remote: self.remote,
            local: self.local,
        }
    }

    /// The resolver query for an evaluator's lookup; None if it cannot be asked at all.
    fn query_for(&self, lookup: &Lookup) -> Option<Query> {
        let ip = self.remote.ip();
        Some(match lookup {
            Lookup::Host => self.host_query(),
            Lookup::Identd => self.identd_query(),
            Lookup::Forward(name) => Query::Forward {
                name: self.hostname(name, "forwhn:")?,
            },
            Lookup::Dnsbl(zone) => Query::Dnsbl {
                ip,
                zone: self.hostname(zone, "dnsbl:")?,
            },
            Lookup::AnswersOn(port) => Query::AnswersOn {
                ip,
                port: *port,
                local_ip: self.local.ip(),
            },
        })
    }

    /// The name as a validated DNS name. It is not logged: DNSBL zones can carry access keys.
    fn hostname(&self, name: &str, matcher: &str) -> Option<HostName> {
        match HostName::try_from(name.to_owned()) {
            Ok(h) => Some(h),
            Err(e) => {
                self.shared.parent.log(
                    LogLevel::Warning,
                    0,
                    format!(
                        "{matcher} argument is not a valid DNS name ({e}); treated as no answer"
                    ),
                );
                None
            }
        }
    }

    /// Send `query` unless this connection already asked it.
    fn start(&mut self, query: &Query) {
        if self.slots.contains_key(query) {
            return;
        }
        let (reply_tx, _) = self.replies.get_or_insert_with(cb::unbounded);
        let slot = match self.shared.lookups.start(query.clone(), reply_tx) {
            Some((req, deadline)) => {
                self.pending.insert(req, query.clone());
                Slot::Pending { req, deadline }
            }
            None => Slot::Done(None),
        };
        self.slots.insert(query.clone(), slot);
    }

    /// The answer to `query`, asking and waiting if needed.
    fn answer(&mut self, query: Query) -> Option<Answer> {
        self.start(&query);
        // Bounded: each pass either returns, or settles one pending request (an answer arrived,
        // or a deadline passed; recv_deadline returns at once for a past deadline).
        loop {
            let (req, deadline) = match self.slots.get(&query) {
                Some(Slot::Done(answer)) => return answer.clone(),
                Some(Slot::Pending { req, deadline }) => (*req, *deadline),
                None => return None,
            };
            // A pending slot was started, so the channel exists.
            let got = match &self.replies {
                Some((_, reply_rx)) => reply_rx.recv_deadline(deadline),
                None => Err(RecvTimeoutError::Disconnected),
            };
            match got {
                Ok((got, answer)) => self.settle(got, Some(answer)),
                Err(RecvTimeoutError::Timeout) => {
                    self.shared.lookups.timed_out(req);
                    self.shared.parent.log(
                        LogLevel::Info,
                        1,
                        format!(
                            "lookup timed out: {} for {}; treated as no answer",
                            describe(&query),
                            self.remote.ip()
                        ),
                    );
                    self.settle(req, None);
                }
                // Cannot happen while we hold the sender; treat like a timeout.
                Err(RecvTimeoutError::Disconnected) => {
                    self.shared.lookups.timed_out(req);
                    self.settle(req, None);
                }
            }
        }
    }

    fn settle(&mut self, req: ReqId, answer: Option<Answer>) {
        // An id we no longer track (already timed out) is ignored.
        if let Some(query) = self.pending.remove(&req) {
            self.slots.insert(query, Slot::Done(answer));
        }
    }

    fn addrs(&mut self, lookup: &Lookup) -> Vec<IpAddr> {
        let Some(query) = self.query_for(lookup) else {
            return Vec::new();
        };
        match self.answer(query) {
            Some(Answer::Addrs(addrs)) => addrs.into_iter().map(|a| a.to_canonical()).collect(),
            _ => Vec::new(),
        }
    }
}

impl Drop for ConnFacts<'_> {
    fn drop(&mut self) {
        for req in self.pending.keys() {
            self.shared.lookups.cancel(*req);
        }
    }
}

impl Facts for ConnFacts<'_> {
    fn remote(&self) -> SocketAddr {
        self.remote
    }

    // The sentry facts need no lookup: the detector came with the connection, the hits were
    // recorded by the dispatch thread before the rules ran, the blocked set is the parent's,
    // mirrored.
    fn trap(&mut self) -> bool {
        self.trap.is_some()
    }

    fn sentry_mode(&mut self) -> Option<SentryMode> {
        self.trap
    }

    fn trap_hits(&mut self, window_secs: u64) -> u32 {
        let now = self.shared.clock.now_secs();
        self.shared
            .hits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .count(self.remote.ip(), Some(window_secs), now)
    }

    fn in_ipfile(&mut self, name: &str) -> bool {
        self.ipfiles
            .and_then(|m| m.get(name))
            .is_some_and(|set| set.contains(self.remote.ip()))
    }

    // Decided on arrival, in arrival order (rates.rs): a lookup-free answer, the same in a
    // speculative try and in the pool's evaluation, so nothing is charged twice.
    fn over_rate(&mut self, spec: policy::rate::RateSpec) -> bool {
        self.rates.is_some_and(|r| r.is_over(spec))
    }

    fn blocked(&mut self) -> bool {
        self.shared
            .blocked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&self.remote.ip())
    }

    fn local(&self) -> SocketAddr {
        self.local
    }

    fn host_info(&mut self) -> HostInfo {
        if self.must_not_wait() {
            return HostInfo {
                status: pf::HnStatus::Unknown,
                claimed: None,
            };
        }
        self.host_asked = true;
        match self.answer(self.host_query()) {
            Some(Answer::Host(h)) => HostInfo {
                status: h.status,
                claimed: h.claimed.map(String::from),
            },
            _ => HostInfo {
                status: pf::HnStatus::Unknown,
                claimed: None,
            },
        }
    }

    fn identd(&mut self) -> Option<String> {
        if self.must_not_wait() {
            return None;
        }
        self.identd_asked = true;
        match self.answer(self.identd_query()) {
            Some(Answer::Identd(user)) => user.map(String::from),
            _ => None,
        }
    }

    fn forward_lookup(&mut self, name: &str) -> Vec<IpAddr> {
        if self.must_not_wait() {
            return Vec::new();
        }
        self.addrs(&Lookup::Forward(name.to_owned()))
    }

    fn dnsbl(&mut self, zone: &str) -> Vec<IpAddr> {
        if self.must_not_wait() {
            return Vec::new();
        }
        self.addrs(&Lookup::Dnsbl(zone.to_owned()))
    }

    fn answers_on(&mut self, port: u16) -> bool {
        if self.must_not_wait() {
            return false;
        }
        let Some(query) = self.query_for(&Lookup::AnswersOn(port)) else {
            return false;
        };
        matches!(self.answer(query), Some(Answer::AnswersOn(true)))
    }

    fn seen(&mut self) -> SeenTimes {
        if let Some(times) = self.seen {
            return times;
        }
        if self.blocked {
            // Past a lookup this try is thrown away; the pool's evaluation records the
            // connection if its path really reaches a time matcher.
            return SeenTimes {
                first_secs_ago: 0,
                last_secs_ago: None,
            };
        }
        let now = self.shared.clock.now_secs();
        let times = self
            .shared
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .seen(self.remote.ip(), now);
        self.seen = Some(times);
        times
    }

    fn prefetch(&mut self, lookups: &[Lookup]) {
        // Only a hint: a speculative try starts nothing (it may never need the lookups).
        if self.speculative {
            return;
        }
        for lookup in lookups {
            if let Some(query) = self.query_for(lookup) {
                self.start(&query);
            }
        }
    }
}

/// v4-mapped IPv6 shown as IPv4, so counts, history and queries use one spelling per peer.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// A query for log lines. DNSBL zones are not named: access keys hide in zone names.
fn describe(query: &Query) -> String {
    match query {
        Query::Host { .. } => "host name".to_string(),
        Query::Forward { name } => format!("forwhn: {}", name.as_str()),
        Query::Dnsbl { .. } => "dnsbl:".to_string(),
        Query::Identd { .. } => "identd".to_string(),
        Query::AnswersOn { port, .. } => format!("answerson: {port}"),
    }
}
