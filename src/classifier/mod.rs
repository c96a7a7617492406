//! The classifier worker: evaluates the rules for each new connection, decides its action
//! against the live per-class and per-IP counts, and answers the parent with a verdict that
//! only names an action.
//!
//! Runs as the unprivileged privsep user, chrooted into an empty directory, with no
//! capabilities and no_new_privs (the role main in main.rs drops privileges before calling
//! [`run`]); after its threads are started it also gives up creating processes
//! (`privsep::drop::forbid_new_processes`, RLIMIT_NPROC 0: Linux counts threads against it, so
//! it must come after the pool exists). It handles bytes from the parent (fd 3, trusted: the
//! parent checked the policy text it ships) and from the resolver (fd 4, less trusted: answers
//! are matched against what was asked, see lookups.rs).
//!
//! Protocol (see privsep::proto):
//! 1. parent → `Hello`; we answer `Hello` with our build id. Anything else first: exit 111.
//! 2. we send the resolver `Hello` and expect its `Hello` with the same build.
//! 3. parent → `Policy` (before any `ConnAccepted`): on the first one the evaluation pool is
//!    started, then new processes are forbidden; each good policy is answered `PolicyLoaded`.
//!    A policy that fails to parse (the parent checked it, so this is a bug) is logged at Crit
//!    and the old one stays, without `PolicyLoaded`.
//! 4. `ConnAccepted` → exactly one `Verdict`; `ConnClosed` releases counts; `Seed` rebuilds
//!    them after a restart; `Flush` empties the history; `StatusRequest` → `Status`.
//!
//! Threads: the dispatch thread (this function's), which reads the parent channel itself, a
//! reader for the resolver channel, and the evaluation pool. The dispatch thread never waits
//! for a lookup: it evaluates a connection itself only when the rules cannot need one and the
//! pool is idle, which saves a thread hop per connection; everything else goes to the pool.
//! When the resolver channel ends, its reader shuts the read side of the parent channel so
//! the dispatch thread wakes and exits. After the handshake nothing is written to stderr: logs
//! go to the parent as `ClassifierToParent::Log`.
//!
//! Exit codes: 0 when the parent closes the channel; 111 for everything else (resolver gone,
//! protocol violation, failed set-up); the parent restarts the workers.

mod compiler;
mod conntrack;
mod dispatch;
mod explain;
mod facts;
mod history;
pub mod hits;
mod lookups;
mod metrics;
mod pool;
mod rates;
mod verdict;

#[cfg(test)]
mod tests;

use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use policy::actions::Actions;
use policy::rules::Rules;
use privsep::proto::{
    ClassifierToParent, ClassifierToResolver, Gen, LogLevel, LogRecord, ParentToClassifier,
    ResolverToClassifier, MAX_LOG_LINE,
};
use privsep::{Channel, ChannelError, Sender};

use crate::exit::{EXIT_OK, EXIT_SYSTEM};

use self::conntrack::Conntrack;
use self::dispatch::{Dispatcher, Flow};
use self::history::{History, MAX_HISTORY};
use self::lookups::{Lookups, ResolverEnd};

/// Entry point of the classifier role, called by the role main after the privilege drop.
pub fn run(
    parent: Channel<ClassifierToParent, ParentToClassifier>,
    resolver: Channel<ClassifierToResolver, ResolverToClassifier>,
) -> ExitCode {
    serve(
        parent,
        resolver,
        Options {
            forbid_new_processes: true,
        },
    )
}

/// How [`serve`] sets itself up; tests run it inside the test process, where RLIMIT_NPROC 0
/// would break every later test.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    pub forbid_new_processes: bool,
}

/// The sending half of the parent channel, shared by every thread.
pub(crate) struct ParentLink {
    /// `Sender` writes each frame whole under its own lock, so threads share it freely.
    tx: Sender<ClassifierToParent>,
}

impl ParentLink {
    fn new(tx: Sender<ClassifierToParent>) -> ParentLink {
        ParentLink { tx }
    }

    /// Send one message. A failure means the parent is gone; the parent reader sees the same EOF
    /// and ends the process, so the caller need not act.
    pub fn send(&self, msg: &ClassifierToParent) -> bool {
        self.tx.send(msg).is_ok()
    }

    /// Keeps answers back (from every thread) while the dispatch thread works through requests
    /// that arrived in one read, so they reach the parent in one write: one wakeup, not one
    /// per connection.
    fn hold(&self) {
        self.tx.hold();
    }

    /// Writes what was kept back since [`ParentLink::hold`]. A failure is the parent gone (as
    /// for `send`).
    fn release(&self) {
        let _ = self.tx.release();
    }

    /// Ends reading from the parent channel (shutdown of its read side), so that a thread
    /// blocked reading it gets EOF; writing to the parent still works.
    pub fn stop_reading(&self) {
        // Fails only if the socket is already gone, when there is nothing left to wake.
        let _ = nix::sys::socket::shutdown(self.tx.as_raw_fd(), nix::sys::socket::Shutdown::Read);
    }

    /// Log through the parent; the text is cut to [`MAX_LOG_LINE`] (longer is a violation).
    pub fn log(&self, level: LogLevel, verbosity: u8, text: String) {
        let text = truncate(text, MAX_LOG_LINE);
        self.send(&ClassifierToParent::Log(LogRecord {
            level,
            verbosity,
            text,
        }));
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// One generation's policy. Evaluations hold an `Arc` to the generation they started with.
pub(crate) struct Loaded {
    pub gen: Gen,
    pub rules: Rules,
    pub actions: Actions,
    /// `rules.can_need_lookups()`, computed once: when false, the dispatch thread may evaluate
    /// a connection itself (see dispatch.rs), since nothing in the rules can make it wait.
    pub needs_lookups: bool,
    /// The `ipfile:` address lists, by the name the rules use.
    pub ipfiles: std::collections::HashMap<String, policy::addr::AddrSet>,
    /// The rules text as the parent sent it: explain quotes each rule as written.
    pub rules_text: String,
    /// `rules.rates()`, shared with the jobs charged under this generation; None when the
    /// rules have no `rate:` (then nothing is charged).
    pub rates: Option<Arc<Vec<policy::rate::RateSpec>>>,
}

/// Evaluation counters for `Status`.
#[derive(Default)]
pub(crate) struct Stats {
    evaluations: AtomicU64,
    eval_micros: AtomicU64,
}

impl Stats {
    pub fn record(&self, took: Duration) {
        self.evaluations.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.eval_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn evaluations(&self) -> u64 {
        self.evaluations.load(Ordering::Relaxed)
    }

    pub fn eval_micros(&self) -> u64 {
        self.eval_micros.load(Ordering::Relaxed)
    }
}

/// Whole seconds on a monotonic clock, for the history (immune to wall-clock steps; history is
/// not kept across restarts anyway).
pub(crate) struct Clock {
    start: Instant,
}

impl Clock {
    pub fn now_secs(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// Nanoseconds, for the `rate:` buckets (a u64 lasts 584 years).
    pub fn now_nanos(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// State shared by the dispatch thread, the evaluation pool and the resolver reader.
pub(crate) struct Shared {
    pub parent: ParentLink,
    /// Trap hits per address (`hits:`).
    pub hits: Mutex<hits::Hits>,
    /// The parent's blocked set, mirrored (`blocked`).
    pub blocked: RwLock<std::collections::HashSet<std::net::IpAddr>>,
    /// Pending connections whose peer has gone (`ConnGone`): skipped if not yet evaluated.
    pub gone: Mutex<std::collections::HashSet<privsep::proto::ConnId>>,
    pub lookups: Lookups,
    pub history: Mutex<History>,
    /// The `rate:` buckets; charged on the dispatch thread only (see rates.rs).
    pub rates: Mutex<rates::Rates>,
    pub conntrack: Mutex<Conntrack>,
    pub policy: RwLock<Option<Arc<Loaded>>>,
    pub stats: Stats,
    pub clock: Clock,
}

impl Shared {
    #[cfg(test)]
    pub fn new(parent: Sender<ClassifierToParent>, resolver: Sender<ClassifierToResolver>) -> Self {
        Shared::with_link(ParentLink::new(parent), resolver)
    }

    fn with_link(parent: ParentLink, resolver: Sender<ClassifierToResolver>) -> Self {
        Shared {
            parent,
            gone: Mutex::new(std::collections::HashSet::new()),
            hits: Mutex::new(hits::Hits::default()),
            blocked: RwLock::new(std::collections::HashSet::new()),
            lookups: Lookups::new(resolver),
            history: Mutex::new(History::new(MAX_HISTORY)),
            rates: Mutex::new(rates::Rates::new(rates::MAX_BUCKETS)),
            conntrack: Mutex::new(Conntrack::new()),
            policy: RwLock::new(None),
            stats: Stats::default(),
            clock: Clock {
                start: Instant::now(),
            },
        }
    }

    pub fn current_policy(&self) -> Option<Arc<Loaded>> {
        self.policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

pub(crate) fn serve(
    mut parent: Channel<ClassifierToParent, ParentToClassifier>,
    mut resolver: Channel<ClassifierToResolver, ResolverToClassifier>,
    opts: Options,
) -> ExitCode {
    let build = privsep::spawn::build_id();
    // The parent is trusted (root; it checked the policy text it ships), and its Policy frame
    // carries the whole rules and actions text: any policy -C accepts must get through. The
    // resolver channel keeps the small cap.
    parent.accept_frames_up_to(privsep::wire::MAX_TRUSTED_FRAME);
    // ORDER: the parent's Hello comes first; until it is answered, stderr (the parent's) is the
    // only place to report.
    match parent.recv() {
        Ok(ParentToClassifier::Hello { .. }) => {}
        Ok(_) => {
            eprintln!("portnanny classifier: first message from the parent is not Hello");
            return ExitCode::from(EXIT_SYSTEM);
        }
        Err(e) => {
            eprintln!("portnanny classifier: reading the parent's Hello: {e}");
            return ExitCode::from(EXIT_SYSTEM);
        }
    }
    if let Err(e) = parent.send(&ClassifierToParent::Hello {
        build: build.clone(),
    }) {
        eprintln!("portnanny classifier: answering the parent's Hello: {e}");
        return ExitCode::from(EXIT_SYSTEM);
    }
    let (parent_tx, mut parent_rx) = match parent.split() {
        Ok(halves) => halves,
        Err(e) => {
            eprintln!("portnanny classifier: splitting the parent channel: {e}");
            return ExitCode::from(EXIT_SYSTEM);
        }
    };
    let link = ParentLink::new(parent_tx);
    let crit = |text: String| {
        link.log(LogLevel::Crit, 0, text);
        ExitCode::from(EXIT_SYSTEM)
    };

    if let Err(e) = resolver.send(&ClassifierToResolver::Hello {
        build: build.clone(),
    }) {
        return crit(format!("sending Hello to the resolver: {e}"));
    }
    match resolver.recv() {
        Ok(ResolverToClassifier::Hello { build: theirs }) if theirs == build => {}
        Ok(ResolverToClassifier::Hello { build: theirs }) => {
            return crit(format!(
                "resolver build {:?} differs from ours {:?}",
                theirs.0, build.0
            ));
        }
        Ok(_) => return crit("first message from the resolver is not Hello".to_string()),
        Err(e) => return crit(format!("reading the resolver's Hello: {e}")),
    }
    let (resolver_tx, resolver_rx) = match resolver.split() {
        Ok(halves) => halves,
        Err(e) => return crit(format!("splitting the resolver channel: {e}")),
    };

    let shared = Arc::new(Shared::with_link(link, resolver_tx));
    // Why the resolver channel ended, left here by its reader before it wakes this thread.
    let resolver_end: Arc<Mutex<Option<ResolverEnd>>> = Arc::new(Mutex::new(None));

    let spawned = {
        let shared = Arc::clone(&shared);
        let resolver_end = Arc::clone(&resolver_end);
        std::thread::Builder::new()
            .name("resolver-reader".to_string())
            .spawn(move || {
                let end = lookups::read_resolver(resolver_rx, &shared.lookups, &shared.parent);
                // ORDER: record why, then end our reading of the parent channel, so the
                // dispatch thread's blocking read returns EOF and finds the reason.
                *resolver_end.lock().unwrap_or_else(PoisonError::into_inner) = Some(end);
                shared.parent.stop_reading();
            })
    };
    if let Err(e) = spawned {
        return ExitCode::from(fail(&shared, format!("starting the resolver reader: {e}")));
    }

    let mut dispatcher = Dispatcher::new(Arc::clone(&shared), opts);
    // The dispatch thread reads the parent channel itself (a reader thread in between would cost
    // a thread hop per connection). Bounded by the channel: every pass handles one message, and
    // the loop ends at its end, or when the resolver reader ends it.
    let mut holding = false;
    loop {
        let end = match parent_rx.recv() {
            Ok(msg) => {
                // More requests already read: hold the answers until the last of them is done.
                // Released before the next blocking read, so nothing waits on the parent.
                if !holding && parent_rx.has_buffered() {
                    shared.parent.hold();
                    holding = true;
                }
                let flow = dispatcher.on_message(msg);
                if holding && (!parent_rx.has_buffered() || matches!(flow, Flow::Exit(_))) {
                    shared.parent.release();
                    holding = false;
                }
                if let Flow::Exit(code) = flow {
                    return ExitCode::from(code);
                }
                continue;
            }
            Err(e) => e,
        };
        let resolver = resolver_end
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        return match (resolver, end) {
            (Some(ResolverEnd::Closed), _) => {
                ExitCode::from(fail(&shared, "resolver closed its channel".to_string()))
            }
            (Some(ResolverEnd::Broken(why)), _) => {
                ExitCode::from(fail(&shared, format!("resolver channel broke: {why}")))
            }
            (None, ChannelError::Closed) => ExitCode::from(EXIT_OK),
            (None, e) => ExitCode::from(fail(&shared, format!("parent channel broke: {e}"))),
        };
    }
}

/// Log a fatal condition at Crit and give the exit code for it.
fn fail(shared: &Shared, text: String) -> u8 {
    shared.parent.log(LogLevel::Crit, 0, text);
    EXIT_SYSTEM
}
