//! The classifier's side of the resolver protocol: numbering lookups, remembering who waits for
//! which answer, and routing `LookupResult`s back to the waiting evaluation.
//!
//! Runs in the classifier. The replies handled here come from the resolver, a separate
//! unprivileged process that talks to the network: they are decoded (shape-checked) by the
//! channel and then checked again here, with the soft response of STYLE 2.5: a reply for an id we
//! never sent or no longer wait for is logged and dropped; a reply whose echoed query differs from
//! what we asked, or whose answer is of the wrong kind, is logged and dropped while the request
//! keeps waiting (its deadline still ends it). A timeout counts as "no answer".
//!
//! Protocol: `ClassifierToResolver::Lookup { req, query }` with a fresh `ReqId`; the resolver
//! answers `LookupResult { req, query, answer }` echoing both. One reader thread
//! ([`read_resolver`]) owns the receiving half; evaluation threads share the sending half.
//!
//! Invariants: a `ReqId` is never reused in the life of the process; every entry in the request
//! table is removed by its answer, its timeout or its evaluation ending (`cancel`), so the
//! table is bounded by the lookups of the evaluations in progress.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel as cb;
use privsep::proto::{
    Answer, ClassifierSettings, ClassifierToResolver, HnStatus, LogLevel, Query, ReqId,
    ResolverToClassifier,
};
use privsep::{ChannelError, Receiver, Sender};

use super::metrics::LookupStats;
use super::ParentLink;

/// Added to the configured lookup timeout before the classifier gives up on an answer: the
/// resolver enforces the configured timeout itself and then answers "nothing", which is the
/// better outcome, so the classifier's deadline is only a backstop for a stuck resolver.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(250);

/// Per-kind lookup timeouts, from `ClassifierSettings`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub dns: Duration,
    pub identd: Duration,
    pub answerson: Duration,
}

impl Default for Timeouts {
    /// nanny.conf's defaults (dnstimeout_ms 5000, identdtimeout_ms 10000,
    /// answersontimeout_ms 5000), used until the first policy arrives.
    fn default() -> Timeouts {
        Timeouts {
            dns: Duration::from_millis(5000),
            identd: Duration::from_millis(10_000),
            answerson: Duration::from_millis(5000),
        }
    }
}

impl Timeouts {
    pub fn from_settings(s: &ClassifierSettings) -> Timeouts {
        Timeouts {
            dns: Duration::from_millis(u64::from(s.dns_timeout_ms)),
            identd: Duration::from_millis(u64::from(s.identd_timeout_ms)),
            answerson: Duration::from_millis(u64::from(s.answerson_timeout_ms)),
        }
    }

    /// How long an evaluation waits for the answer to `query`.
    pub fn wait_for(&self, query: &Query) -> Duration {
        let base = match query {
            Query::Host { .. } | Query::Forward { .. } | Query::Dnsbl { .. } => self.dns,
            Query::Identd { .. } => self.identd,
            Query::AnswersOn { .. } => self.answerson,
        };
        base + DEADLINE_MARGIN
    }
}

/// An answer routed to the evaluation that asked.
pub type Reply = (ReqId, Answer);

struct Waiter {
    query: Query,
    reply: cb::Sender<Reply>,
    /// When the request was sent, for the latency histograms (metrics.rs).
    sent: Instant,
}

/// The request table plus the sending half of the resolver channel.
pub struct Lookups {
    next_id: AtomicU64,
    waiting: Mutex<HashMap<ReqId, Waiter>>,
    /// Shared by every evaluation thread; `Sender` writes each frame whole under its own lock.
    out: Sender<ClassifierToResolver>,
    timeouts: RwLock<Timeouts>,
    /// Counted per kind for `nannyctl metrics`; kept across reloads.
    pub stats: LookupStats,
}

impl Lookups {
    pub fn new(out: Sender<ClassifierToResolver>) -> Lookups {
        Lookups {
            next_id: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            out,
            timeouts: RwLock::new(Timeouts::default()),
            stats: LookupStats::default(),
        }
    }

    pub fn set_timeouts(&self, t: Timeouts) {
        *self
            .timeouts
            .write()
            .unwrap_or_else(PoisonError::into_inner) = t;
    }

    pub fn timeouts(&self) -> Timeouts {
        *self.timeouts.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Send `query` to the resolver; its answer will arrive on `reply`. Returns the id and the
    /// deadline, or None if the resolver channel is broken (the reader thread will notice EOF
    /// and end the process; until then the lookup simply has no answer).
    pub fn start(&self, query: Query, reply: &cb::Sender<Reply>) -> Option<(ReqId, Instant)> {
        let req = ReqId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let sent = Instant::now();
        let deadline = sent + self.timeouts().wait_for(&query);
        let msg = ClassifierToResolver::Lookup {
            req,
            query: query.clone(),
        };
        // ORDER: the waiter is registered before the request leaves, so a fast answer always
        // finds it.
        self.table().insert(
            req,
            Waiter {
                query,
                reply: reply.clone(),
                sent,
            },
        );
        match self.out.send(&msg) {
            Ok(()) => Some((req, deadline)),
            Err(_) => {
                self.timed_out(req);
                None
            }
        }
    }

    /// `req` got no answer by its deadline (or could not be sent): stop waiting, and count it
    /// as a failed lookup.
    pub fn timed_out(&self, req: ReqId) {
        let waiter = self.table().remove(&req);
        if let Some(w) = waiter {
            self.stats.observe(&w.query, w.sent.elapsed(), true);
        }
    }

    /// Stop waiting for `req` (timed out, or its evaluation ended); a late answer is stale.
    pub fn cancel(&self, req: ReqId) {
        self.table().remove(&req);
    }

    /// Requests still waiting for an answer.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.table().len()
    }

    /// Route one `LookupResult` from the resolver. Never blocks: the waiter's channel is
    /// unbounded and owned by an evaluation that reads it.
    pub fn deliver(&self, req: ReqId, query: Query, answer: Answer, log: &ParentLink) {
        let mut table = self.table();
        let Some(waiter) = table.get(&req) else {
            drop(table);
            log.log(
                LogLevel::Info,
                2,
                format!(
                    "resolver answer for req={} nobody waits for; ignored",
                    req.0
                ),
            );
            return;
        };
        if waiter.query != query {
            drop(table);
            log.log(
                LogLevel::Warning,
                0,
                format!(
                    "resolver answer for req={} echoes a query that was not asked; ignored",
                    req.0
                ),
            );
            return;
        }
        if let Err(why) = answer_fits(&query, &answer) {
            drop(table);
            log.log(
                LogLevel::Warning,
                0,
                format!("resolver answer for req={}: {why}; ignored", req.0),
            );
            return;
        }
        if let Some(waiter) = table.remove(&req) {
            drop(table);
            self.stats.observe(&query, waiter.sent.elapsed(), false);
            // The evaluation may have finished in the meantime; then nobody needs the answer.
            let _ = waiter.reply.send((req, answer));
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<ReqId, Waiter>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `answer` is the kind of answer `query` asks for, and internally consistent.
pub fn answer_fits(query: &Query, answer: &Answer) -> Result<(), &'static str> {
    match (query, answer) {
        (Query::Host { .. }, Answer::Host(h)) => {
            // A claimed name exists exactly when there is a PTR record.
            if (h.status == HnStatus::Unknown) == h.claimed.is_none() {
                Ok(())
            } else {
                Err("host answer's claimed name does not fit its status")
            }
        }
        (Query::Forward { .. } | Query::Dnsbl { .. }, Answer::Addrs(_))
        | (Query::Identd { .. }, Answer::Identd(_))
        | (Query::AnswersOn { .. }, Answer::AnswersOn(_)) => Ok(()),
        _ => Err("answer kind does not fit the query"),
    }
}

/// Why the resolver side ended.
#[derive(Debug)]
pub enum ResolverEnd {
    /// EOF: the resolver exited (the parent restarts both workers).
    Closed,
    /// A read error or an undecodable frame: the resolver is treated as broken.
    Broken(String),
}

/// Body of the resolver reader thread: route answers until the channel ends, then return why.
pub fn read_resolver(
    mut rx: Receiver<ResolverToClassifier>,
    lookups: &Lookups,
    log: &ParentLink,
) -> ResolverEnd {
    loop {
        match rx.recv() {
            Ok(ResolverToClassifier::LookupResult { req, query, answer }) => {
                lookups.deliver(req, query, answer, log);
            }
            Ok(ResolverToClassifier::Hello { .. }) => {
                log.log(
                    LogLevel::Warning,
                    0,
                    "resolver sent a second Hello; ignored".to_string(),
                );
            }
            Err(ChannelError::Closed) => return ResolverEnd::Closed,
            Err(e) => return ResolverEnd::Broken(e.to_string()),
        }
    }
}
