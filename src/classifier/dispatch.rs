//! The classifier's handlers for parent messages, one `on_<variant>` each, run on the dispatch
//! thread.
//!
//! Runs in the classifier. Every message here came from the parent, which is trusted (it runs
//! as root and checked the policy text it ships), but its order is still checked: a second
//! `Hello`, or a connection before any policy, ends the process (exit 111) so the parent
//! restarts a classifier in a known state.
//!
//! Invariants:
//! - Nothing here waits for a lookup. Every connection is first evaluated on this thread, up
//!   to the first fact that needs a lookup (pool::try_here); only one that needs a lookup goes
//!   to the pool. So a connection whose evaluation needs no lookup is decided at once and takes
//!   no evaluation slot, however busy the pool is with slow lookups. When every slot is busy
//!   and aftermaxthreads is set, the shortcut decides here instead, without rules or lookups,
//!   as documented ("not evaluated at all").
//! - Every `ConnAccepted` is answered by exactly one `Verdict` (from the pool, from this
//!   thread, from the aftermaxthreads shortcut, or a close verdict when the queue is full).
//! - The pool is started once, on the first policy, and only then are new processes forbidden.
//! - Every `Explain` is answered by exactly one `Explained` (explain.rs), every
//!   `MetricsRequest` by one `Metrics`; neither changes counts, history or any other state.
//! - Every connection (not a forgeable probe) is charged to the policy's `rate:` buckets here,
//!   on arrival and before anything can decide it, so rates are exact and counted once
//!   whichever path decides it (rates.rs); the answers travel with the job.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError};

use policy::facts::Classification;
use privsep::proto::{
    ClassName, ClassifierSettings, ClassifierToParent, ConnId, ExplainAsk, Gen, LiveConn, LogLevel,
    ParentToClassifier, ReqId, SentryMode,
};

use super::compiler::{self, Compiler, PolicyJob};
use super::explain::{self, Explainer};
use super::facts::{canonical, Observed};
use super::lookups::Timeouts;
use super::pool::{self, Job, Pool};
use super::rates::RateMarks;
use super::{verdict, Options, Shared};
use crate::exit::EXIT_SYSTEM;

/// How long trap hits are remembered: longer than any sensible `hits:` window (the matcher's
/// window is checked against this in the policy's -C warnings).
const HITS_KEEP: u64 = 24 * 3600;

/// Evaluation threads, at most, whatever maxthreads says: each one reserves a stack, and past
/// this many concurrent lookups the resolver's own pool is the bottleneck anyway.
pub const MAX_EVAL_THREADS: usize = 1024;

/// Evaluation threads for a maxthreads setting: at least one (maxthreads 0 evaluates one
/// connection at a time, like the original's main loop), at most [`MAX_EVAL_THREADS`].
pub fn pool_size(maxthreads: u32) -> usize {
    usize::try_from(maxthreads.max(1))
        .unwrap_or(MAX_EVAL_THREADS)
        .min(MAX_EVAL_THREADS)
}

/// Whether the dispatch loop goes on.
pub(crate) enum Flow {
    Continue,
    Exit(u8),
}

pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
    opts: Options,
    pool: Option<Pool>,
    /// Compiles reloaded generations off this thread (started with the pool).
    compiler: Option<Compiler>,
    /// Runs explains off this thread (started with the pool).
    explainer: Option<Explainer>,
    settings: Option<ClassifierSettings>,
}

impl Dispatcher {
    pub fn new(shared: Arc<Shared>, opts: Options) -> Dispatcher {
        Dispatcher {
            shared,
            opts,
            pool: None,
            compiler: None,
            explainer: None,
            settings: None,
        }
    }

    pub fn on_message(&mut self, msg: ParentToClassifier) -> Flow {
        match msg {
            ParentToClassifier::Hello { .. } => self.on_hello(),
            ParentToClassifier::Policy {
                gen,
                rules,
                actions,
                settings,
                ipfiles,
            } => self.on_policy(gen, rules, actions, settings, ipfiles),
            ParentToClassifier::Seed { live } => self.on_seed(live),
            ParentToClassifier::ConnAccepted {
                conn,
                remote,
                local,
                trap,
            } => self.on_conn_accepted(conn, remote, local, trap),
            ParentToClassifier::Probe {
                conn,
                remote,
                local,
                mode,
            } => self.on_conn_accepted(conn, remote, local, Some(mode)),
            ParentToClassifier::Blocked { addrs, on } => self.on_blocked(addrs, on),
            ParentToClassifier::ConnClosed { conn } => self.on_conn_closed(conn),
            ParentToClassifier::Flush => self.on_flush(),
            ParentToClassifier::StatusRequest => self.on_status_request(),
            ParentToClassifier::ConnGone { conn } => self.on_conn_gone(conn),
            ParentToClassifier::Explain { req, ask, local } => self.on_explain(req, ask, local),
            ParentToClassifier::MetricsRequest { req } => self.on_metrics_request(req),
        }
    }

    /// Remembers that `conn`'s peer has gone; the pool skips its evaluation if it is still
    /// queued. The set only ever needs the queued connections: when it outgrows the queue,
    /// stale entries (connections decided before the message came) are dropped wholesale,
    /// which at worst evaluates a gone connection as before.
    fn on_conn_gone(&mut self, conn: ConnId) -> Flow {
        let mut gone = self
            .shared
            .gone
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if gone.len() >= pool::MAX_QUEUED {
            gone.clear();
        }
        gone.insert(conn);
        Flow::Continue
    }

    fn log(&self, level: LogLevel, verbosity: u8, text: String) {
        self.shared.parent.log(level, verbosity, text);
    }

    fn on_hello(&mut self) -> Flow {
        self.log(
            LogLevel::Crit,
            0,
            "protocol: second Hello from the parent".to_string(),
        );
        Flow::Exit(EXIT_SYSTEM)
    }

    fn on_policy(
        &mut self,
        gen: Gen,
        rules: Option<String>,
        actions: Option<String>,
        settings: ClassifierSettings,
        ipfiles: Vec<(String, String)>,
    ) -> Flow {
        let job = PolicyJob {
            gen,
            rules: rules.unwrap_or_default(),
            actions: actions.unwrap_or_default(),
            ipfiles,
        };
        // A reload: compiled off this thread, connections meanwhile use the current policy.
        let job = match &self.compiler {
            Some(c) => c.submit(job).err(),
            None => Some(job),
        };
        let first = self.pool.is_none();
        if let Some(job) = &job {
            match compiler::compile(job) {
                Ok(loaded) if first => {
                    // ORDER: installed before the pool starts; acknowledged at the end.
                    *self
                        .shared
                        .policy
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(loaded));
                }
                Ok(loaded) => compiler::install(&self.shared, loaded),
                Err(e) => {
                    self.log(LogLevel::Crit, 0, e);
                    if first {
                        // No old policy to keep: nothing could ever be decided.
                        return Flow::Exit(EXIT_SYSTEM);
                    }
                    return Flow::Continue;
                }
            }
        }
        {
            let mut history = self
                .shared
                .history
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            history.configure(settings.dropipafter_secs, settings.expireevery_secs);
            history.set_grouping(settings.grouping);
        }
        // ORDER: before any Seed (the parent sends it after this Policy), so re-seeded counts
        // are grouped as new ones are.
        self.shared
            .conntrack
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_grouping(settings.grouping);
        self.shared
            .rates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_grouping(settings.grouping);
        self.shared
            .lookups
            .set_timeouts(Timeouts::from_settings(&settings));

        let wanted = pool_size(settings.maxthreads);
        match &self.pool {
            None => {
                if wanted < usize::try_from(settings.maxthreads).unwrap_or(usize::MAX) {
                    self.log(
                        LogLevel::Warning,
                        0,
                        format!(
                            "maxthreads {} capped at {MAX_EVAL_THREADS}",
                            settings.maxthreads
                        ),
                    );
                }
                match Pool::start(wanted, &self.shared) {
                    Ok(pool) => self.pool = Some(pool),
                    Err(e) => {
                        self.log(
                            LogLevel::Crit,
                            0,
                            format!("starting {wanted} evaluation threads: {e}"),
                        );
                        return Flow::Exit(EXIT_SYSTEM);
                    }
                }
                match Compiler::start(&self.shared) {
                    Ok(c) => self.compiler = Some(c),
                    Err(e) => {
                        self.log(LogLevel::Crit, 0, format!("starting the compiler: {e}"));
                        return Flow::Exit(EXIT_SYSTEM);
                    }
                }
                match Explainer::start(&self.shared) {
                    Ok(x) => self.explainer = Some(x),
                    Err(e) => {
                        self.log(LogLevel::Crit, 0, format!("starting the explainer: {e}"));
                        return Flow::Exit(EXIT_SYSTEM);
                    }
                }
                // ORDER: all threads exist now; from here on none can be created.
                if self.opts.forbid_new_processes {
                    if let Err(e) = crate::noprocs::forbid(privsep::Role::Classifier) {
                        self.log(LogLevel::Crit, 0, format!("forbidding new processes: {e}"));
                        return Flow::Exit(EXIT_SYSTEM);
                    }
                }
            }
            Some(pool) if pool.size() != wanted => {
                self.log(
                    LogLevel::Warning,
                    0,
                    format!(
                        "maxthreads changed to {} but the classifier keeps {} threads until it \
                         restarts",
                        settings.maxthreads,
                        pool.size()
                    ),
                );
            }
            Some(_) => {}
        }
        self.settings = Some(settings);
        if first {
            self.shared
                .parent
                .send(&ClassifierToParent::PolicyLoaded { gen });
            self.log(LogLevel::Info, 2, format!("policy gen={} loaded", gen.0));
        }
        Flow::Continue
    }

    fn on_seed(&mut self, live: Vec<LiveConn>) -> Flow {
        let count = live.len();
        self.shared
            .conntrack
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .seed(live.into_iter().map(|c| {
                (
                    c.conn,
                    c.remote.ip().to_canonical(),
                    c.classes.into_iter().map(String::from).collect(),
                )
            }));
        self.log(
            LogLevel::Info,
            1,
            format!("seeded with {count} live connections"),
        );
        Flow::Continue
    }

    /// The parent's blocked set changed; `blocked` answers from this mirror.
    fn on_blocked(&mut self, addrs: Vec<IpAddr>, on: bool) -> Flow {
        let mut set = self
            .shared
            .blocked
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for a in addrs {
            if on {
                set.insert(a);
            } else {
                set.remove(&a);
            }
        }
        Flow::Continue
    }

    /// A connection (or, with `trap`, a trap connection or probe) to classify.
    fn on_conn_accepted(
        &mut self,
        conn: ConnId,
        remote: SocketAddr,
        local: SocketAddr,
        trap: Option<SentryMode>,
    ) -> Flow {
        let Some(pool) = &self.pool else {
            self.log(
                LogLevel::Crit,
                0,
                format!("protocol: conn={} arrived before any policy", conn.0),
            );
            return Flow::Exit(EXIT_SYSTEM);
        };
        let remote = canonical(remote);
        let now = self.shared.clock.now_secs();
        let expired = self
            .shared
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .maybe_expire(now);
        if expired > 0 {
            self.log(
                LogLevel::Debug,
                3,
                format!("expired {expired} IP history entries"),
            );
        }

        if trap.is_some() {
            // ORDER: recorded before the rules run, so `hits:` counts this one too.
            let mut hits = self
                .shared
                .hits
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            hits.expire(HITS_KEEP, now);
            hits.record(remote.ip(), local.port(), now);
        }
        let policy = self.shared.current_policy();
        // Charged before anything can decide the connection (aftermaxthreads, a full queue, an
        // evaluation that never reaches a rate:): every attempt counts once. Probes other than
        // a completed TCP connect are forgeable and are not connection attempts: not charged.
        let rates = match policy.as_ref().and_then(|p| p.rates.as_ref()) {
            Some(specs) if trap.is_none_or(|m| !m.forgeable()) => {
                let over = self
                    .shared
                    .rates
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .charge(specs, remote.ip(), self.shared.clock.now_nanos());
                Some(RateMarks {
                    specs: Arc::clone(specs),
                    over,
                })
            }
            _ => None,
        };
        // Scans are always judged by the rules: the overflow class is for ordinary load.
        if let Some(class) = self.overflow_class().filter(|_| trap.is_none()) {
            if pool.busy() {
                // aftermaxthreads: decided here at once, without rules or lookups.
                let classification = Classification::forced(class.as_str());
                self.log(
                    LogLevel::Info,
                    2,
                    format!(
                        "all evaluation threads busy; conn={} goes to class {}",
                        conn.0,
                        class.as_str()
                    ),
                );
                let verdict = verdict::decide(
                    &self.shared,
                    conn,
                    remote.ip(),
                    &classification,
                    Observed::default(),
                );
                if let Some(msg) = verdict {
                    self.shared.parent.send(&msg);
                }
                return Flow::Continue;
            }
        }
        let job = Job {
            conn,
            remote,
            local,
            seen: None,
            trap,
            rates,
        };
        // Evaluating here saves waking a pool thread, and, above all, a connection that needs
        // no lookup never waits for a slot behind slow lookups. Rules that cannot need one
        // evaluate straight away; others are tried up to their first lookup.
        if policy.is_some_and(|p| !p.needs_lookups) {
            pool::evaluate_here(&self.shared, job);
            return Flow::Continue;
        }
        let job = match pool::try_here(&self.shared, job) {
            Ok(()) => return Flow::Continue,
            Err(job) => job,
        };
        if let Err(job) = pool.submit(job) {
            self.log(
                LogLevel::Warning,
                0,
                format!("evaluation queue full; closing conn={}", job.conn.0),
            );
            if let Some(msg) = verdict::close(&self.shared, job.conn) {
                self.shared.parent.send(&msg);
            }
        }
        Flow::Continue
    }

    /// The aftermaxthreads class, if it applies: as in the original, only when maxthreads
    /// enables threading at all (maxthreads 0 means "evaluate one at a time, always").
    fn overflow_class(&self) -> Option<&ClassName> {
        let settings = self.settings.as_ref()?;
        if settings.maxthreads == 0 {
            return None;
        }
        settings.aftermaxthreads.as_ref()
    }

    fn on_conn_closed(&mut self, conn: ConnId) -> Flow {
        let released = self
            .shared
            .conntrack
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .down(conn);
        if !released {
            self.log(
                LogLevel::Info,
                2,
                format!("ConnClosed for conn={} which was not counted", conn.0),
            );
        }
        Flow::Continue
    }

    fn on_flush(&mut self) -> Flow {
        self.shared
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        // Trap hits and rate buckets are history too; the blocked set is the parent's and is
        // never flushed.
        self.shared
            .rates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.shared
            .hits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.log(LogLevel::Info, 1, "IP history flushed".to_string());
        Flow::Continue
    }

    /// A dry-run classification for `nannyctl explain`, on the explain thread (it may wait for
    /// lookups); answered at once when it cannot run. Exactly one `Explained` either way.
    fn on_explain(&mut self, req: ReqId, ask: ExplainAsk, local: SocketAddr) -> Flow {
        let overflow = match &self.pool {
            Some(pool) if pool.busy() => self.overflow_class().cloned(),
            _ => None,
        };
        let job = Box::new(explain::Job {
            req,
            ask,
            local,
            overflow,
        });
        let refused = match &self.explainer {
            None => Some((job, "no policy is loaded yet")),
            Some(x) => x
                .submit(job)
                .err()
                .map(|job| (job, "too many explains are waiting")),
        };
        if let Some((job, why)) = refused {
            let msg = explain::unanswered(&self.shared, &job, why);
            self.shared.parent.send(&msg);
        }
        Flow::Continue
    }

    /// `nannyctl metrics`: the lookup counters, read without waiting for anyone.
    fn on_metrics_request(&mut self, req: ReqId) -> Flow {
        let lookups = self.shared.lookups.stats.snapshot();
        self.shared
            .parent
            .send(&ClassifierToParent::Metrics { req, lookups });
        Flow::Continue
    }

    fn on_status_request(&mut self) -> Flow {
        let class_counts = self
            .shared
            .conntrack
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .class_counts()
            .into_iter()
            .filter_map(|(name, n)| ClassName::try_from(name).ok().map(|c| (c, n)))
            .collect();
        let history_entries = self
            .shared
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64;
        self.shared.parent.send(&ClassifierToParent::Status {
            evaluations: self.shared.stats.evaluations(),
            eval_micros_total: self.shared.stats.eval_micros(),
            class_counts,
            history_entries,
        });
        Flow::Continue
    }
}
