//! The resolver's lookup scheduler: cache, in-flight merging, the worker pool and deadlines.
//!
//! Runs in the resolver process. Requests come from the classifier (`Lookup { req, query }`,
//! shape-checked on decode); answers go back to it through a [`Sink`], always echoing `req` and
//! `query`. Flushes come from the parent.
//!
//! Protocol per request:
//! 1. a fresh cache entry answers at once;
//! 2. otherwise, if the same query is already being looked up, the request waits for that
//!    lookup (postscreen-style merging: one DNS query however many connections ask);
//! 3. otherwise a job goes to the bounded pool queue.
//!
//! Every request gets a deadline when it arrives (its kind's timeout) and is answered exactly
//! once: by the lookup if it finishes in time, else by the deadline timer with the query's
//! failure answer (or a better partial answer the lookup published, e.g. "PTR name known,
//! forward lookup unfinished" = `noforward`). A late lookup still fills the cache.
//!
//! Invariants:
//! - pool threads are started on demand up to the maximum, plus one timer thread; a stuck C
//!   library call holds one worker, and once the maximum is reached the jobs queued behind it
//!   are answered by the timer at their deadline;
//! - a job whose every waiter has already been answered is skipped when a worker reaches it, so
//!   a backlog drains quickly after a stall;
//! - answers are sent without holding the state lock (the sink may block on a socket);
//! - a result computed across a `flush` is not cached.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use privsep::proto::{Answer, HnStatus, HostFacts, LogLevel, Query, ReqId, ResolverSettings};

use super::cache::Cache;
use super::pool::{Pool, SubmitError};

/// Where answers and log lines go (the classifier and parent channels in production).
pub trait Sink: Send + Sync + 'static {
    fn answer(&self, req: ReqId, query: Query, answer: Answer);
    fn log(&self, level: LogLevel, verbosity: u8, text: String);
}

/// A lookup's result and whether it may be cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub answer: Answer,
    pub cacheable: bool,
}

/// Performs lookups (the real DNS/identd/connect code in production, fakes in tests).
pub trait Lookups: Send + Sync + 'static {
    /// Look `query` up, finishing by `deadline` if the operation can be bounded. `partial` may be
    /// called with a better-than-failure answer to use if the deadline passes first.
    fn lookup(&self, query: &Query, deadline: Instant, partial: &mut dyn FnMut(Answer)) -> Outcome;
}

/// Per-kind timeouts.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub dns: Duration,
    pub identd: Duration,
    pub answerson: Duration,
}

impl Timeouts {
    pub fn for_query(&self, q: &Query) -> Duration {
        match q {
            Query::Host { .. } | Query::Forward { .. } | Query::Dnsbl { .. } => self.dns,
            Query::Identd { .. } => self.identd,
            Query::AnswersOn { .. } => self.answerson,
        }
    }
}

/// Fewest pool threads, whatever `-M` says: one evaluation may start several lookups at once
/// (an or-list of five `dnsbl:` zones), and those must run in parallel.
pub const MIN_THREADS: usize = 8;
/// Most pool threads: each is a blocked C library call at worst (a small stack, little RSS);
/// beyond this the queue waits. 64 evaluations x 8 lookups each.
pub const MAX_THREADS: usize = 512;
/// Queue slots per thread: enough for bursts, small enough that a stall is felt as backpressure
/// on the classifier's socket instead of piling up here.
pub const QUEUE_PER_THREAD: usize = 4;

/// The answer a query gets when nothing better is known by its deadline.
pub fn failure(q: &Query) -> Answer {
    match q {
        Query::Host { .. } => Answer::Host(HostFacts {
            status: HnStatus::Unknown,
            claimed: None,
        }),
        Query::Forward { .. } | Query::Dnsbl { .. } => Answer::Addrs(Vec::new()),
        Query::Identd { .. } => Answer::Identd(None),
        Query::AnswersOn { .. } => Answer::AnswersOn(false),
    }
}

/// A short description for logs. DNSBL zones appear by their configured name (what the rules
/// file says), never as the constructed query name.
pub fn describe(q: &Query) -> String {
    match q {
        Query::Host { ip } => format!("host ip={ip}"),
        Query::Forward { name } => format!("forward name={}", name.as_str()),
        Query::Dnsbl { ip, zone } => format!("dnsbl zone={} ip={ip}", zone.as_str()),
        Query::Identd { remote, local } => format!("identd remote={remote} local={local}"),
        Query::AnswersOn { ip, port, .. } => format!("answerson ip={ip} port={port}"),
    }
}

fn query_ip(q: &Query) -> Option<IpAddr> {
    match q {
        Query::Host { ip } | Query::Dnsbl { ip, .. } | Query::AnswersOn { ip, .. } => Some(*ip),
        Query::Identd { remote, .. } => Some(remote.ip()),
        Query::Forward { .. } => None,
    }
}

struct Waiter {
    id: u64,
    req: ReqId,
}

struct Inflight {
    waiters: Vec<Waiter>,
    /// What the timer answers with: the failure answer, improved by `partial`.
    fallback: Answer,
    /// The flush generation when the lookup started.
    generation: u64,
}

struct State {
    cache: Cache,
    inflight: HashMap<Query, Inflight>,
    /// Deadlines of waiting requests; entries whose id is gone from `deadline_keys` are stale.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    deadline_keys: HashMap<u64, Query>,
    next_id: u64,
    generation: u64,
    stopping: bool,
}

struct Shared<S: Sink, L: Lookups> {
    state: Mutex<State>,
    /// Wakes the timer when a nearer deadline arrives or on shutdown.
    timer: Condvar,
    sink: S,
    lookups: L,
    timeouts: Timeouts,
}

/// Counters for tests and status lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub cached: usize,
    pub inflight: usize,
    pub waiting: usize,
}

pub struct Scheduler<S: Sink, L: Lookups> {
    shared: Arc<Shared<S, L>>,
    pool: Pool,
}

impl<S: Sink, L: Lookups> Shared<S, L> {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug in this file; the data stays consistent
        // enough to keep answering (every mutation is completed before anything can panic).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn send_all(&self, answers: Vec<(ReqId, Query, Answer)>) {
        for (req, query, answer) in answers {
            self.sink.answer(req, query, answer);
        }
    }

    /// Run the lookup for `query` (on a pool thread) and answer its waiters.
    fn run_job(self: &Arc<Self>, query: Query, deadline: Instant) {
        {
            let mut st = self.lock();
            let idle = st.inflight.get(&query).is_none_or(|e| e.waiters.is_empty());
            if idle {
                // Everyone asking was answered by the timer while this job sat in the queue.
                st.inflight.remove(&query);
                return;
            }
        }
        let me = Arc::clone(self);
        let key = query.clone();
        let mut partial = move |a: Answer| {
            if let Some(e) = me.lock().inflight.get_mut(&key) {
                e.fallback = a;
            }
        };
        let outcome = self.lookups.lookup(&query, deadline, &mut partial);
        self.finish(query, outcome);
    }

    fn finish(&self, query: Query, outcome: Outcome) {
        let answers = {
            let mut st = self.lock();
            let Some(entry) = st.inflight.remove(&query) else {
                return;
            };
            if outcome.cacheable && entry.generation == st.generation {
                st.cache
                    .insert(query.clone(), outcome.answer.clone(), Instant::now());
            }
            let mut out = Vec::with_capacity(entry.waiters.len());
            for w in entry.waiters {
                st.deadline_keys.remove(&w.id);
                out.push((w.req, query.clone(), outcome.answer.clone()));
            }
            out
        };
        self.send_all(answers);
    }

    /// The deadline thread: answers requests whose lookup did not finish in time.
    fn timer_loop(&self) {
        let mut st = self.lock();
        loop {
            if st.stopping {
                return;
            }
            let now = Instant::now();
            let mut expired = Vec::new();
            while let Some(Reverse((when, id))) = st.deadlines.peek().copied() {
                if when > now {
                    break;
                }
                st.deadlines.pop();
                let Some(key) = st.deadline_keys.remove(&id) else {
                    continue;
                };
                if let Some(entry) = st.inflight.get_mut(&key) {
                    if let Some(pos) = entry.waiters.iter().position(|w| w.id == id) {
                        let w = entry.waiters.swap_remove(pos);
                        expired.push((w.req, key.clone(), entry.fallback.clone()));
                    }
                }
            }
            if !expired.is_empty() {
                drop(st);
                for (_, q, _) in &expired {
                    self.sink.log(
                        LogLevel::Info,
                        1,
                        format!("lookup timed out: {}", describe(q)),
                    );
                }
                self.send_all(expired);
                st = self.lock();
                continue;
            }
            let wait = st
                .deadlines
                .peek()
                .map(|Reverse((when, _))| when.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(3600));
            st = match self.timer.wait_timeout(st, wait) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl<S: Sink, L: Lookups> Scheduler<S, L> {
    /// Start the pool (`threads` clamped to [`MIN_THREADS`]..=[`MAX_THREADS`]) and the timer.
    pub fn start(
        threads: usize,
        timeouts: Timeouts,
        cache: Cache,
        sink: S,
        lookups: L,
    ) -> std::io::Result<Scheduler<S, L>> {
        let threads = threads.clamp(MIN_THREADS, MAX_THREADS);
        let pool = Pool::start(threads, threads * QUEUE_PER_THREAD)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                cache,
                inflight: HashMap::new(),
                deadlines: BinaryHeap::new(),
                deadline_keys: HashMap::new(),
                next_id: 0,
                generation: 0,
                stopping: false,
            }),
            timer: Condvar::new(),
            sink,
            lookups,
            timeouts,
        });
        let t = Arc::clone(&shared);
        thread::Builder::new()
            .name("lookup-deadlines".to_owned())
            .spawn(move || t.timer_loop())?;
        Ok(Scheduler { shared, pool })
    }

    /// Settings → scheduler, as the resolver's `run` uses it.
    pub fn from_settings(s: &ResolverSettings, sink: S, lookups: L) -> std::io::Result<Self> {
        let ms = |v: u32| Duration::from_millis(u64::from(v.max(1)));
        let timeouts = Timeouts {
            dns: ms(s.dns_timeout_ms),
            identd: ms(s.identd_timeout_ms),
            answerson: ms(s.answerson_timeout_ms),
        };
        let cache = Cache::new(
            usize::try_from(s.cache_entries).unwrap_or(usize::MAX),
            Duration::from_secs(u64::from(s.cache_ttl_secs)),
        );
        let threads = usize::try_from(s.threads).unwrap_or(MAX_THREADS);
        Self::start(threads, timeouts, cache, sink, lookups)
    }

    /// Lookup threads started so far (they are started on demand).
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// The most lookup threads this scheduler starts.
    pub fn max_threads(&self) -> usize {
        self.pool.max_threads()
    }

    /// Handle one request from the classifier. Blocks only when the pool queue is full, and
    /// then at most until the request's deadline (backpressure).
    pub fn submit(&self, req: ReqId, query: Query) {
        let sh = &self.shared;
        let now = Instant::now();
        let deadline = now + sh.timeouts.for_query(&query);
        {
            let mut st = sh.lock();
            if let Some(answer) = st.cache.get(&query, now) {
                drop(st);
                sh.sink.answer(req, query, answer);
                return;
            }
            let id = st.next_id;
            st.next_id += 1;
            st.deadlines.push(Reverse((deadline, id)));
            st.deadline_keys.insert(id, query.clone());
            let generation = st.generation;
            let waiter = Waiter { id, req };
            if let Some(entry) = st.inflight.get_mut(&query) {
                entry.waiters.push(waiter);
                sh.timer.notify_one();
                return;
            }
            st.inflight.insert(
                query.clone(),
                Inflight {
                    waiters: vec![waiter],
                    fallback: failure(&query),
                    generation,
                },
            );
            sh.timer.notify_one();
        }
        let job_shared = Arc::clone(sh);
        let job_query = query.clone();
        let job = Box::new(move || job_shared.run_job(job_query, deadline));
        if let Err(e) = self.pool.submit(job, deadline) {
            let why = match e {
                SubmitError::Full => "every lookup thread stayed busy",
                SubmitError::Closed => "lookup threads are gone",
            };
            sh.sink.log(
                LogLevel::Warning,
                0,
                format!("lookup not started ({why}): {}", describe(&query)),
            );
            let answer = failure(&query);
            sh.finish(
                query,
                Outcome {
                    answer,
                    cacheable: false,
                },
            );
        }
    }

    /// Answer `req` at once with the query's failure answer (a query refused without lookup).
    pub fn answer_failure(&self, req: ReqId, query: Query) {
        let answer = failure(&query);
        self.shared.sink.answer(req, query, answer);
    }

    /// Empty the cache (SIGUSR1). Lookups under way finish and answer, but are not cached.
    pub fn flush(&self) {
        let mut st = self.shared.lock();
        st.cache.clear();
        st.generation += 1;
    }

    pub fn stats(&self) -> Stats {
        let st = self.shared.lock();
        Stats {
            cached: st.cache.len(),
            inflight: st.inflight.len(),
            waiting: st.deadline_keys.len(),
        }
    }
}

impl<S: Sink, L: Lookups> Drop for Scheduler<S, L> {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.timer.notify_all();
    }
}

/// Whether an address may be the subject of a lookup at all (the classifier only asks about
/// peers, which are never these). Used to log nonsense queries.
pub fn plausible(q: &Query) -> bool {
    query_ip(q).is_none_or(|ip| !ip.is_unspecified() && !ip.is_multicast())
}

#[cfg(test)]
mod tests {
    use super::*;
    use privsep::proto::HostName;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Collects answers; tests wait on it with a bound.
    #[derive(Default)]
    struct Collect {
        got: Mutex<Vec<(ReqId, Query, Answer, Instant)>>,
        cv: Condvar,
    }

    #[derive(Clone, Default)]
    struct SinkRef(Arc<Collect>);

    impl Sink for SinkRef {
        fn answer(&self, req: ReqId, query: Query, answer: Answer) {
            let mut g = self.0.got.lock().unwrap_or_else(|p| p.into_inner());
            g.push((req, query, answer, Instant::now()));
            self.0.cv.notify_all();
        }
        fn log(&self, _: LogLevel, _: u8, _: String) {}
    }

    impl SinkRef {
        fn wait_for(&self, n: usize, max: Duration) -> Vec<(ReqId, Query, Answer, Instant)> {
            let end = Instant::now() + max;
            let mut g = self.0.got.lock().unwrap_or_else(|p| p.into_inner());
            while g.len() < n {
                let left = end.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                g = self
                    .0
                    .cv
                    .wait_timeout(g, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            g.clone()
        }
    }

    /// Answers every Dnsbl query with 127.0.0.2 after `delay`; counts calls.
    struct Slow {
        delay: Duration,
        calls: Arc<AtomicUsize>,
        partial: Option<Answer>,
    }

    impl Lookups for Slow {
        fn lookup(&self, q: &Query, _d: Instant, partial: &mut dyn FnMut(Answer)) -> Outcome {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(p) = &self.partial {
                partial(p.clone());
            }
            thread::sleep(self.delay);
            let answer = match q {
                Query::Dnsbl { .. } => Answer::Addrs(vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]),
                other => failure(other),
            };
            Outcome {
                answer,
                cacheable: true,
            }
        }
    }

    fn dnsbl(zone: &str) -> Query {
        Query::Dnsbl {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            zone: HostName::try_from(zone.to_owned()).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    fn timeouts(dns_ms: u64) -> Timeouts {
        Timeouts {
            dns: Duration::from_millis(dns_ms),
            identd: Duration::from_millis(dns_ms),
            answerson: Duration::from_millis(dns_ms),
        }
    }

    fn start(
        delay_ms: u64,
        dns_ms: u64,
        partial: Option<Answer>,
    ) -> (Scheduler<SinkRef, Slow>, SinkRef, Arc<AtomicUsize>) {
        let sink = SinkRef::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let d = Scheduler::start(
            8,
            timeouts(dns_ms),
            Cache::new(100, Duration::from_secs(300)),
            sink.clone(),
            Slow {
                delay: Duration::from_millis(delay_ms),
                calls: Arc::clone(&calls),
                partial,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (d, sink, calls)
    }

    #[test]
    fn identical_queries_in_flight_are_merged() {
        let (d, sink, calls) = start(200, 5000, None);
        for i in 0..5 {
            d.submit(ReqId(i), dnsbl("bl.example"));
        }
        let got = sink.wait_for(5, Duration::from_secs(5));
        assert_eq!(got.len(), 5);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one lookup for five requests"
        );
        let mut reqs: Vec<u64> = got.iter().map(|g| g.0 .0).collect();
        reqs.sort_unstable();
        assert_eq!(reqs, vec![0, 1, 2, 3, 4], "every request answered once");
        assert!(
            got.iter().all(|g| g.1 == dnsbl("bl.example")),
            "query echoed"
        );
        // Now cached: a sixth request is answered without a lookup.
        d.submit(ReqId(9), dnsbl("bl.example"));
        let got = sink.wait_for(6, Duration::from_secs(5));
        assert_eq!(got.len(), 6);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(d.stats().cached, 1);
    }

    #[test]
    fn different_queries_run_in_parallel() {
        let (d, sink, calls) = start(200, 5000, None);
        let t = Instant::now();
        for (i, z) in [
            "a.example",
            "b.example",
            "c.example",
            "d.example",
            "e.example",
        ]
        .iter()
        .enumerate()
        {
            d.submit(ReqId(i as u64), dnsbl(z));
        }
        let got = sink.wait_for(5, Duration::from_secs(5));
        assert_eq!(got.len(), 5);
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        let took = got.iter().map(|g| g.3).max().map(|m| m - t);
        assert!(
            took.is_some_and(|t| t < Duration::from_millis(600)),
            "{took:?}"
        );
    }

    #[test]
    fn deadline_answers_failure_and_late_result_is_cached() {
        let (d, sink, calls) = start(400, 100, None);
        let t = Instant::now();
        d.submit(ReqId(1), dnsbl("slow.example"));
        let got = sink.wait_for(1, Duration::from_secs(5));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].2, Answer::Addrs(Vec::new()), "timeout = not listed");
        let at = got[0].3 - t;
        assert!(
            at >= Duration::from_millis(90) && at < Duration::from_millis(350),
            "{at:?}"
        );
        // The lookup finishes in the background and fills the cache.
        let end = Instant::now() + Duration::from_secs(5);
        while d.stats().cached == 0 && Instant::now() < end {
            thread::sleep(Duration::from_millis(10));
        }
        d.submit(ReqId(2), dnsbl("slow.example"));
        let got = sink.wait_for(2, Duration::from_secs(5));
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1].2,
            Answer::Addrs(vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))])
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn partial_answer_is_used_at_deadline() {
        let claimed = Answer::Host(HostFacts {
            status: HnStatus::NoForward,
            claimed: Some(
                HostName::try_from("ptr.example".to_owned()).unwrap_or_else(|e| panic!("{e}")),
            ),
        });
        let (d, sink, _calls) = start(400, 100, Some(claimed.clone()));
        let q = Query::Host {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)),
        };
        d.submit(ReqId(1), q);
        let got = sink.wait_for(1, Duration::from_secs(5));
        assert_eq!(got.first().map(|g| g.2.clone()), Some(claimed));
    }

    #[test]
    fn stuck_lookups_do_not_grow_threads_and_backlog_is_answered() {
        // Every lookup takes 1 s; the deadline is 100 ms. 8 threads, 32 queue slots: 40
        // distinct queries fill both; the 41st waits for a slot until its deadline (the
        // backpressure) and is then answered as failed. Every request is answered close to its
        // deadline although no lookup finished.
        let (d, sink, calls) = start(1000, 100, None);
        assert_eq!(d.max_threads(), MIN_THREADS);
        assert_eq!(d.threads(), 0, "started on demand");
        let t = Instant::now();
        for i in 0..41u64 {
            d.submit(ReqId(i), dnsbl(&format!("z{i}.example")));
        }
        let blocked = t.elapsed();
        assert_eq!(d.threads(), MIN_THREADS, "grown to the maximum, not beyond");
        assert!(
            blocked >= Duration::from_millis(90),
            "41st submit waited: {blocked:?}"
        );
        let got = sink.wait_for(41, Duration::from_secs(5));
        assert_eq!(got.len(), 41);
        let last = got.iter().map(|g| g.3).max().map(|m| m - t);
        assert!(
            last.is_some_and(|l| l < Duration::from_millis(900)),
            "{last:?}"
        );
        assert!(got.iter().all(|g| g.2 == Answer::Addrs(Vec::new())));
        // Only the jobs that reached a thread ran; queued ones whose waiters were answered are
        // skipped instead of occupying the pool for another second each.
        thread::sleep(Duration::from_millis(1200));
        assert!(
            calls.load(Ordering::SeqCst) <= 2 * MIN_THREADS,
            "{}",
            calls.load(Ordering::SeqCst)
        );
    }

    #[test]
    fn flush_empties_cache_and_skips_caching_across_it() {
        let (d, sink, calls) = start(150, 5000, None);
        d.submit(ReqId(1), dnsbl("x.example"));
        d.flush();
        let _ = sink.wait_for(1, Duration::from_secs(5));
        assert_eq!(d.stats().cached, 0, "started before the flush: not cached");
        d.submit(ReqId(2), dnsbl("x.example"));
        let _ = sink.wait_for(2, Duration::from_secs(5));
        assert_eq!(d.stats().cached, 1);
        d.flush();
        assert_eq!(d.stats().cached, 0);
        d.submit(ReqId(3), dnsbl("x.example"));
        let got = sink.wait_for(3, Duration::from_secs(5));
        assert_eq!(got.len(), 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
