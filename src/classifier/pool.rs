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
//! - An evaluation that may need a lookup never runs on the dispatch thread, so a slow lookup
//!   never delays it; [`evaluate_here`] is only for rules that cannot need one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel as cb;
use privsep::proto::{ConnId, LogLevel};

use super::facts::{canonical, ConnFacts};
use super::{verdict, Shared};

/// Connections waiting for a free evaluation thread, at most. The parent bounds the verdicts it
/// waits for far below this; a full queue means something is wrong, and the connection is
/// closed rather than letting memory grow.
pub const MAX_QUEUED: usize = 4096;

/// One connection to classify.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    pub conn: ConnId,
    pub remote: SocketAddr,
    pub local: SocketAddr,
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

    /// Whether no job is queued or being evaluated.
    pub fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
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
    let msg = classify(shared, job);
    in_flight.fetch_sub(1, Ordering::AcqRel);
    send(shared, job.conn, msg);
}

/// Evaluates `job` on the calling thread (the dispatch thread) and sends its verdict. Only for
/// rules that cannot need a lookup (`Loaded::needs_lookups` false), so it never waits.
pub fn evaluate_here(shared: &Shared, job: Job) {
    let msg = classify(shared, job);
    send(shared, job.conn, msg);
}

/// The verdict for `job` under the current policy; None if no policy was ever loaded.
fn classify(shared: &Shared, job: Job) -> Option<privsep::proto::ClassifierToParent> {
    match shared.current_policy() {
        Some(snapshot) => {
            let remote = canonical(job.remote);
            let started = Instant::now();
            let (classification, observed) = {
                let mut facts = ConnFacts::new(shared, remote, job.local);
                let classification = snapshot.rules.evaluate(&mut facts);
                (classification, facts.observed())
            };
            shared.stats.record(started.elapsed());
            // The rules snapshot is released here; decisions use the current actions.
            drop(snapshot);
            verdict::decide(shared, job.conn, remote.ip(), &classification, observed)
        }
        None => None,
    }
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
