//! The fixed pool of evaluation threads and its bounded queue.
//!
//! Runs in the classifier. Jobs come from the dispatch thread (one per `ConnAccepted` from the
//! parent). The threads are started once, before `forbid_new_processes` sets RLIMIT_NPROC to 0
//! (Linux counts threads against it), and live as long as the process.
//!
//! Invariants:
//! - At most `size` evaluations run at once; `in_flight` counts queued plus running jobs and is
//!   incremented only by the dispatch thread, so "all busy" can be checked without a race that
//!   would overshoot.
//! - A job is evaluated with the rules current when its evaluation starts (an `Arc` snapshot
//!   taken off the queue, not when it was queued).
//! - A job leaves `in_flight` as soon as it is decided, before its verdict is written, so the
//!   next connection after a verdict never sees a stale "busy".
//! - An evaluation that waits for a lookup never runs on the dispatch thread, so a slow lookup
//!   never delays it: [`evaluate_here`] is only for rules that cannot need one, and
//!   [`try_here`] gives the job back (for the pool) at the first fact that needs a lookup.
//!   Evaluations on the dispatch thread take no pool slot, so a connection that needs no
//!   lookup never waits behind the pool's slow ones (README, DESIGN §4).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel as cb;
use policy::facts::{SeenTimes, SentryMode};
use privsep::proto::{ConnId, LogLevel};

use super::facts::{canonical, ConnFacts};
use super::rates::RateMarks;
use super::{verdict, Shared};

/// Connections waiting for a free evaluation thread, at most. The parent bounds the verdicts it
/// waits for far below this; a full queue means something is wrong, and the connection is
/// closed rather than letting memory grow.
pub const MAX_QUEUED: usize = 4096;

/// One connection to classify.
#[derive(Clone, Debug)]
pub struct Job {
    pub conn: ConnId,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// History times a speculative try already read (and recorded); None if it read none.
    pub seen: Option<SeenTimes>,
    /// The detector that saw it, for a trap connection or a probe.
    pub trap: Option<SentryMode>,
    /// The `rate:` answers charged on arrival; None when the rules had no rate then.
    pub rates: Option<RateMarks>,
}

/// The evaluation pool.
pub struct Pool {
    tx: cb::Sender<Job>,
    in_flight: Arc<AtomicUsize>,
    size: usize,
}

impl Pool {
    /// Start `size` (at least 1) evaluation threads.
    pub fn start(size: usize, shared: &Arc<Shared>) -> std::io::Result<Pool> {
        let size = size.max(1);
        let (tx, rx) = cb::bounded::<Job>(MAX_QUEUED);
        let in_flight = Arc::new(AtomicUsize::new(0));
        for n in 0..size {
            let rx = rx.clone();
            let shared = Arc::clone(shared);
            let in_flight = Arc::clone(&in_flight);
            std::thread::Builder::new()
                .name(format!("eval-{n}"))
                .spawn(move || {
                    // Ends when the pool (the only sender) is dropped.
                    while let Ok(job) = rx.recv() {
                        evaluate(&shared, job, &in_flight);
                    }
                })?;
        }
        Ok(Pool {
            tx,
            in_flight,
            size,
        })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether every evaluation thread is taken (queued jobs count as taken).
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) >= self.size
    }

    /// Queue a job; gives it back if the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                Err(e.into_inner())
            }
        }
    }
}

fn evaluate(shared: &Shared, job: Job, in_flight: &AtomicUsize) {
    let gone = shared
        .gone
        .lock()
        .map(|mut g| !g.is_empty() && g.remove(&job.conn))
        .unwrap_or(false);
    let msg = if gone {
        // Its peer left while it waited for a thread: no evaluation, no lookups.
        verdict::close(shared, job.conn)
    } else {
        classify(shared, &job)
    };
    in_flight.fetch_sub(1, Ordering::AcqRel);
    send(shared, job.conn, msg);
}

/// Evaluates `job` on the calling thread (the dispatch thread) and sends its verdict. Only for
/// rules that cannot need a lookup (`Loaded::needs_lookups` false), so it never waits.
pub fn evaluate_here(shared: &Shared, job: Job) {
    let msg = classify(shared, &job);
    send(shared, job.conn, msg);
}

/// Evaluates `job` on the calling thread (the dispatch thread) unless that would wait for a
/// lookup: then nothing is decided or sent, and the job comes back (with the history times the
/// try read) for the pool. Never waits.
pub fn try_here(shared: &Shared, job: Job) -> Result<(), Job> {
    match classify_with(shared, &job, true) {
        Ok(msg) => {
            send(shared, job.conn, msg);
            Ok(())
        }
        Err(seen) => Err(Job { seen, ..job }),
    }
}

/// The verdict for `job` under the current policy; None if no policy was ever loaded.
fn classify(shared: &Shared, job: &Job) -> Option<privsep::proto::ClassifierToParent> {
    // A waiting evaluation is never blocked.
    classify_with(shared, job, false).unwrap_or(None)
}

/// [`classify`]; when `speculative`, Err(history times read) as soon as a lookup is needed.
fn classify_with(
    shared: &Shared,
    job: &Job,
    speculative: bool,
) -> Result<Option<privsep::proto::ClassifierToParent>, Option<SeenTimes>> {
    Ok(match shared.current_policy() {
        Some(snapshot) => {
            let remote = canonical(job.remote);
            let started = Instant::now();
            let (classification, observed) = {
                let mut facts = if speculative {
                    ConnFacts::speculative(shared, remote, job.local)
                } else {
                    ConnFacts::new(shared, remote, job.local)
                }
                .with_seen(job.seen)
                .with_trap(job.trap)
                .with_rates(job.rates.as_ref())
                .with_ipfiles(&snapshot.ipfiles);
                let classification = snapshot.rules.evaluate(&mut facts);
                if facts.needed_lookup() {
                    return Err(facts.seen_times());
                }
                (classification, facts.observed())
            };
            shared.stats.record(started.elapsed());
            // The rules snapshot is released here; decisions use the current actions.
            drop(snapshot);
            verdict::decide(shared, job.conn, remote.ip(), &classification, observed)
        }
        None => None,
    })
}

fn send(shared: &Shared, conn: ConnId, msg: Option<privsep::proto::ClassifierToParent>) {
    match msg {
        Some(msg) => {
            shared.parent.send(&msg);
        }
        None => shared.parent.log(
            LogLevel::Crit,
            0,
            format!("conn={} had no policy to be evaluated with", conn.0),
        ),
    }
}
