//! A pool of blocking worker threads, started on demand, fed by a bounded crossbeam-channel
//! queue.
//!
//! Runs in the resolver process. The jobs are closures the scheduler builds from classifier
//! queries; they make blocking getaddrinfo/getnameinfo calls and socket connects.
//!
//! Invariants:
//! - no thread exists before the first job: a resolver whose rules never need a lookup keeps
//!   only its readers and timer. A thread is started when a job is queued while every existing
//!   thread has a job (`outstanding` > `live`), up to the maximum, so N lookups at once get N
//!   threads; a thread left without work for [`IDLE_EXIT`] exits, unless a job is waiting
//!   that would then have no thread;
//! - a lookup stuck in the C library keeps its thread busy; the maximum bounds how many such
//!   threads can pile up (the scheduler answers waiters at their deadline regardless);
//! - `outstanding` (queued plus running jobs) is raised only by the submitter, before the job
//!   is queued, and lowered by a worker after the job has run, so "a free thread exists" is
//!   never over-estimated (at worst one thread too many is started); `live` never exceeds the
//!   maximum (a place is reserved before a thread is started);
//! - the queue is bounded, so when every thread is busy and the queue is full, `submit` blocks
//!   (up to the caller's deadline) and the backpressure reaches the classifier's socket;
//! - dropping the pool closes the queue; idle workers then exit.
//!
//! Threads are created after the privilege drop, so the resolver cannot use RLIMIT_NPROC 0 to
//! forbid processes (Linux counts threads against it); it installs a seccomp filter that
//! refuses process creation but allows threads instead (see nofork.rs).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{
    bounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError,
};

/// A unit of work. Jobs must not panic across the pool: a panic kills one worker, which is a bug
/// (release builds abort on panic anyway).
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Stack size of a worker: glibc's resolver keeps its packet buffers on the stack (64 KiB each
/// at most), so 512 KiB leaves ample room while keeping many threads cheap.
const WORKER_STACK: usize = 512 * 1024;

/// How long a lookup thread waits for work before it exits: a burst's threads do not stay
/// for the life of the process, and the next burst starts them again.
pub const IDLE_EXIT: Duration = Duration::from_secs(60);

/// Counts shared by the submitter and the workers.
struct Counts {
    /// Jobs queued or running.
    outstanding: AtomicUsize,
    /// Worker threads running (or reserved and being started).
    live: AtomicUsize,
    max: usize,
    idle_exit: Duration,
}

impl Counts {
    /// Reserve a place for one more thread, unless `max` are there.
    fn reserve(&self) -> bool {
        self.live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether an idle worker may exit now; if not it has kept its place and waits again.
    ///
    /// ORDER (with `Pool::submit`): the worker gives its place up, then looks at the jobs;
    /// the submitter counts its job, then looks at the threads (all four SeqCst). So either
    /// the submitter sees one thread fewer and starts another, or the worker sees the job and
    /// stays: a queued job never loses its last thread.
    fn retire(&self) -> bool {
        let live = self.live.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        if self.outstanding.load(Ordering::SeqCst) <= live {
            return true;
        }
        // Work came in meanwhile: stay, unless the submitter already started a replacement.
        !self.reserve()
    }
}

pub struct Pool {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    counts: Arc<Counts>,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue stayed full until the deadline.
    Full,
    /// No worker could be started and none exists.
    Closed,
}

impl Pool {
    /// A pool of up to `max` workers (at least 1), none started yet, sharing a queue of `queue`
    /// slots (at least 1).
    pub fn start(max: usize, queue: usize) -> io::Result<Pool> {
        Pool::with_idle_exit(max, queue, IDLE_EXIT)
    }

    /// [`Pool::start`] with idle threads exiting after `idle_exit` (tests use a short one).
    pub fn with_idle_exit(max: usize, queue: usize, idle_exit: Duration) -> io::Result<Pool> {
        let (tx, rx) = bounded::<Job>(queue.max(1));
        Ok(Pool {
            tx,
            rx,
            counts: Arc::new(Counts {
                outstanding: AtomicUsize::new(0),
                live: AtomicUsize::new(0),
                max: max.max(1),
                idle_exit,
            }),
        })
    }

    /// Queue `job`, starting a worker if every existing one has a job, and waiting for a free
    /// queue slot no later than `deadline`. Call from one thread (the classifier reader).
    pub fn submit(&self, job: Job, deadline: Instant) -> Result<(), SubmitError> {
        // ORDER: count the job, then look at the threads (see Counts::retire).
        let outstanding = self.counts.outstanding.fetch_add(1, Ordering::SeqCst) + 1;
        // A failed start (thread limit, memory) leaves the job to the existing workers; with
        // none, nothing could ever run it.
        if outstanding > self.counts.live.load(Ordering::SeqCst)
            && self.grow().is_err()
            && self.counts.live.load(Ordering::SeqCst) == 0
        {
            self.counts.outstanding.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Closed);
        }
        let sent = match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) => match self.tx.send_deadline(job, deadline) {
                Ok(()) => Ok(()),
                Err(SendTimeoutError::Timeout(_)) => Err(SubmitError::Full),
                Err(SendTimeoutError::Disconnected(_)) => Err(SubmitError::Closed),
            },
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Closed),
        };
        if sent.is_err() {
            self.counts.outstanding.fetch_sub(1, Ordering::SeqCst);
        }
        sent
    }

    /// Start one more worker unless the maximum is reached.
    fn grow(&self) -> io::Result<()> {
        if !self.counts.reserve() {
            return Ok(());
        }
        let rx = self.rx.clone();
        let counts = Arc::clone(&self.counts);
        let n = counts.live.load(Ordering::Relaxed);
        let started = thread::Builder::new()
            .name(format!("lookup-{n}"))
            .stack_size(WORKER_STACK)
            .spawn(move || loop {
                match rx.recv_timeout(counts.idle_exit) {
                    Ok(job) => {
                        job();
                        counts.outstanding.fetch_sub(1, Ordering::SeqCst);
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if counts.retire() {
                            return;
                        }
                    }
                    // Every sender is gone (the pool was dropped).
                    Err(RecvTimeoutError::Disconnected) => {
                        counts.live.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        if let Err(e) = started {
            self.counts.live.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
        Ok(())
    }

    /// The most workers this pool starts.
    pub fn max_threads(&self) -> usize {
        self.counts.max
    }

    /// Workers running now.
    pub fn threads(&self) -> usize {
        self.counts.live.load(Ordering::SeqCst)
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    #[test]
    fn runs_jobs_in_parallel_on_threads_started_on_demand() {
        let pool = Pool::start(4, 16).unwrap_or_else(|e| panic!("start: {e}"));
        assert_eq!(pool.threads(), 0, "no thread before the first job");
        let barrier = Arc::new(Barrier::new(5));
        for _ in 0..4 {
            let b = Arc::clone(&barrier);
            let deadline = Instant::now() + Duration::from_secs(5);
            pool.submit(
                Box::new(move || {
                    b.wait();
                }),
                deadline,
            )
            .unwrap_or_else(|e| panic!("submit: {e:?}"));
        }
        // All four jobs must be running at once to pass the barrier.
        let (tx, rx) = crossbeam_channel::bounded(1);
        let b = Arc::clone(&barrier);
        thread::spawn(move || {
            b.wait();
            let _ = tx.send(());
        });
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
        assert_eq!(pool.threads(), 4);
    }

    #[test]
    fn idle_threads_are_reused_and_the_maximum_holds() {
        let pool = Pool::start(2, 16).unwrap_or_else(|e| panic!("start: {e}"));
        let far = Instant::now() + Duration::from_secs(5);
        let done = Arc::new(AtomicUsize::new(0));
        let wait_done = |n: usize| {
            for _ in 0..2500 {
                if done.load(Ordering::SeqCst) >= n {
                    return;
                }
                thread::sleep(Duration::from_millis(2));
            }
            panic!("jobs did not finish");
        };
        // One job at a time: one thread, reused.
        for i in 1..=3 {
            let d = Arc::clone(&done);
            pool.submit(
                Box::new(move || {
                    d.fetch_add(1, Ordering::SeqCst);
                }),
                far,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
            wait_done(i);
        }
        assert_eq!(pool.threads(), 1);
        // Five blocked at once: never more than the maximum.
        let (release_tx, release_rx) = crossbeam_channel::unbounded::<()>();
        for _ in 0..5 {
            let d = Arc::clone(&done);
            let r = release_rx.clone();
            pool.submit(
                Box::new(move || {
                    let _ = r.recv_timeout(Duration::from_secs(5));
                    d.fetch_add(1, Ordering::SeqCst);
                }),
                far,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        }
        assert_eq!(pool.threads(), 2);
        for _ in 0..5 {
            let _ = release_tx.send(());
        }
        wait_done(8);
        assert_eq!(pool.threads(), 2);
    }

    #[test]
    fn idle_threads_exit_and_come_back_with_work() {
        let pool = Pool::with_idle_exit(4, 16, Duration::from_millis(100))
            .unwrap_or_else(|e| panic!("start: {e}"));
        let far = Instant::now() + Duration::from_secs(5);
        let (release_tx, release_rx) = crossbeam_channel::unbounded::<()>();
        for _ in 0..3 {
            let r = release_rx.clone();
            pool.submit(
                Box::new(move || {
                    let _ = r.recv_timeout(Duration::from_secs(5));
                }),
                far,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        }
        assert_eq!(pool.threads(), 3);
        for _ in 0..3 {
            let _ = release_tx.send(());
        }
        let mut left = pool.threads();
        for _ in 0..250 {
            left = pool.threads();
            if left == 0 {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(left, 0, "idle threads exit");
        let done = Arc::new(AtomicUsize::new(0));
        let d = Arc::clone(&done);
        pool.submit(
            Box::new(move || {
                d.fetch_add(1, Ordering::SeqCst);
            }),
            far,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        for _ in 0..250 {
            if done.load(Ordering::SeqCst) == 1 {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(done.load(Ordering::SeqCst), 1, "work starts a thread again");
    }

    /// Jobs arriving just as idle threads time out are never stranded.
    #[test]
    fn no_job_is_stranded_while_threads_exit() {
        let pool = Pool::with_idle_exit(2, 64, Duration::from_millis(1))
            .unwrap_or_else(|e| panic!("start: {e}"));
        let done = Arc::new(AtomicUsize::new(0));
        for i in 0..300 {
            let d = Arc::clone(&done);
            pool.submit(
                Box::new(move || {
                    d.fetch_add(1, Ordering::SeqCst);
                }),
                Instant::now() + Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
            if i % 7 == 0 {
                thread::sleep(Duration::from_millis(2));
            }
        }
        for _ in 0..500 {
            if done.load(Ordering::SeqCst) == 300 {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(done.load(Ordering::SeqCst), 300);
        assert!(pool.threads() <= 2);
    }

    #[test]
    fn full_queue_blocks_until_deadline() {
        let pool = Pool::start(1, 1).unwrap_or_else(|e| panic!("start: {e}"));
        let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(0);
        let started = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&started);
        let far = Instant::now() + Duration::from_secs(5);
        pool.submit(
            Box::new(move || {
                s.fetch_add(1, Ordering::SeqCst);
                let _ = release_rx.recv_timeout(Duration::from_secs(5));
            }),
            far,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        // Wait (bounded) until the worker holds the first job, so the queue slot is free.
        for _ in 0..500 {
            if started.load(Ordering::SeqCst) == 1 {
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
        pool.submit(Box::new(|| {}), far)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let t = Instant::now();
        let r = pool.submit(Box::new(|| {}), t + Duration::from_millis(100));
        assert_eq!(r, Err(SubmitError::Full));
        assert!(t.elapsed() >= Duration::from_millis(90));
        let _ = release_tx.send(());
    }
}
