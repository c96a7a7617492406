//! A fixed pool of blocking worker threads fed by a bounded crossbeam-channel queue.
//!
//! Runs in the resolver process. The jobs are closures the scheduler builds from classifier
//! queries; they make blocking getaddrinfo/getnameinfo calls and socket connects.
//!
//! Invariants:
//! - the number of threads is fixed when the pool starts and never grows: a lookup stuck in the
//!   C library keeps its thread busy, it never causes another thread to be started (the
//!   scheduler answers its waiters at the deadline instead);
//! - the queue is bounded, so when every thread is busy and the queue is full, `submit` blocks
//!   (up to the caller's deadline) and the backpressure reaches the classifier's socket;
//! - dropping the pool closes the queue; idle workers then exit.

use std::io;
use std::thread;
use std::time::Instant;

use crossbeam_channel::{bounded, SendTimeoutError, Sender};

/// A unit of work. Jobs must not panic across the pool: a panic kills one worker, which is a bug
/// (release builds abort on panic anyway).
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Stack size of a worker: glibc's resolver keeps its packet buffers on the stack (64 KiB each
/// at most), so 512 KiB leaves ample room while keeping many threads cheap.
const WORKER_STACK: usize = 512 * 1024;

pub struct Pool {
    tx: Sender<Job>,
    threads: usize,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue stayed full until the deadline.
    Full,
    /// Every worker is gone (cannot happen while the pool lives, unless workers panicked).
    Closed,
}

impl Pool {
    /// Start `threads` workers (at least 1) sharing a queue of `queue` slots (at least 1).
    pub fn start(threads: usize, queue: usize) -> io::Result<Pool> {
        let threads = threads.max(1);
        let (tx, rx) = bounded::<Job>(queue.max(1));
        for i in 0..threads {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("lookup-{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    // Ends when every sender is dropped (the pool is gone).
                    for job in rx.iter() {
                        job();
                    }
                })?;
        }
        Ok(Pool { tx, threads })
    }

    /// Queue `job`, waiting for a free slot no later than `deadline`.
    pub fn submit(&self, job: Job, deadline: Instant) -> Result<(), SubmitError> {
        match self.tx.send_deadline(job, deadline) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(_)) => Err(SubmitError::Full),
            Err(SendTimeoutError::Disconnected(_)) => Err(SubmitError::Closed),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
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
    fn runs_jobs_in_parallel_on_fixed_threads() {
        let pool = Pool::start(4, 16).unwrap_or_else(|e| panic!("start: {e}"));
        assert_eq!(pool.threads(), 4);
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
