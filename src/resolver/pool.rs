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
//!   threads; threads then stay (they are cheap while blocked in the queue);
//! - a lookup stuck in the C library keeps its thread busy; the maximum bounds how many such
//!   threads can pile up (the scheduler answers waiters at their deadline regardless);
//! - `outstanding` (queued plus running jobs) is raised only by the submitter, before the job
//!   is queued, and lowered by a worker after the job has run, so "a free thread exists" is
//!   never over-estimated (at worst one thread too many is started);
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
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender, TrySendError};

/// A unit of work. Jobs must not panic across the pool: a panic kills one worker, which is a bug
/// (release builds abort on panic anyway).
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Stack size of a worker: glibc's resolver keeps its packet buffers on the stack (64 KiB each
/// at most), so 512 KiB leaves ample room while keeping many threads cheap.
const WORKER_STACK: usize = 512 * 1024;

/// Counts shared by the submitter and the workers.
struct Counts {
    /// Jobs queued or running.
    outstanding: AtomicUsize,
    /// Worker threads started (they never exit while the pool lives).
    live: AtomicUsize,
}

pub struct Pool {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    counts: Arc<Counts>,
    max: usize,
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
        let (tx, rx) = bounded::<Job>(queue.max(1));
        Ok(Pool {
            tx,
            rx,
            counts: Arc::new(Counts {
                outstanding: AtomicUsize::new(0),
                live: AtomicUsize::new(0),
            }),
            max: max.max(1),
        })
    }

    /// Queue `job`, starting a worker if every existing one has a job, and waiting for a free
    /// queue slot no later than `deadline`. Call from one thread (the classifier reader).
    pub fn submit(&self, job: Job, deadline: Instant) -> Result<(), SubmitError> {
        let outstanding = self.counts.outstanding.fetch_add(1, Ordering::AcqRel) + 1;
        // A failed start (thread limit, memory) leaves the job to the existing workers; with
        // none, nothing could ever run it.
        if outstanding > self.counts.live.load(Ordering::Acquire)
            && self.grow().is_err()
            && self.counts.live.load(Ordering::Acquire) == 0
        {
            self.counts.outstanding.fetch_sub(1, Ordering::AcqRel);
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
            self.counts.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }

    /// Start one more worker unless the maximum is reached.
    fn grow(&self) -> io::Result<()> {
        let n = self.counts.live.load(Ordering::Acquire);
        if n >= self.max {
            return Ok(());
        }
        let rx = self.rx.clone();
        let counts = Arc::clone(&self.counts);
        thread::Builder::new()
            .name(format!("lookup-{n}"))
            .stack_size(WORKER_STACK)
            .spawn(move || {
                // Ends when every sender is dropped (the pool is gone).
                for job in rx.iter() {
                    job();
                    counts.outstanding.fetch_sub(1, Ordering::AcqRel);
                }
            })?;
        // Only the submitter thread starts workers, so this cannot overshoot `max`.
        self.counts.live.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// The most workers this pool starts.
    pub fn max_threads(&self) -> usize {
        self.max
    }

    /// Workers started so far.
    pub fn threads(&self) -> usize {
        self.counts.live.load(Ordering::Acquire)
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
