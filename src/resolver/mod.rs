//! The resolver worker: answers the classifier's lookups (reverse DNS with forward confirmation,
//! forward lookups, DNS blocklists, identd, answerson probes) on a fixed pool of threads, with
//! per-request deadlines and a TTL cache.
//!
//! Runs as its own process, started by the parent (re-exec with `--privsep-role resolver`),
//! already demoted by the role main: unprivileged uid/gid, no capabilities, no_new_privs, NOT
//! chrooted (getaddrinfo and NSS need `/etc`). fd 3 = parent channel, fd 4 = classifier channel.
//! It handles bytes from three untrusted-to-semi-trusted sources: the classifier's queries
//! (shape-checked on decode), DNS answers (via the C library) and identd replies (hostile: from
//! the peer's machine). It never talks to syslog; its log lines go to the parent as `Log`.
//!
//! Protocol:
//! 1. parent → `Hello { build, settings }` (first message, exactly once; build must be ours);
//!    we answer `Hello { build }`;
//! 2. classifier → `Hello { build }`; we answer `Hello { build }`;
//! 3. then, concurrently: classifier `Lookup { req, query }` → exactly one
//!    `LookupResult { req, query, answer }` (query echoed, possibly out of order); parent
//!    `Flush` → the cache is emptied.
//!
//! Exit codes: 0 when the parent or the classifier closes its channel (shutdown or a restart of
//! the pair), 111 on a protocol violation or a broken channel.
//!
//! Thread layout: the deadline timer (see `scheduler`) and two reader threads (parent,
//! classifier); the calling thread only waits for one of the readers to stop. Lookup threads
//! are started on demand, when lookups are queued and every existing one is busy, up to the
//! maximum (`pool`). So the resolver cannot forbid processes with RLIMIT_NPROC 0, which Linux
//! also applies to threads: before its first thread, `run` installs a seccomp filter that
//! refuses every way of creating a process or running a program but lets threads start
//! (`nofork`).

pub mod answerson;
pub mod cache;
pub mod dns;
pub mod identd;
pub mod nofork;
pub mod pool;
pub mod scheduler;

use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use privsep::proto::{
    Answer, ClassifierToResolver, LogLevel, LogRecord, ParentToResolver, Query, ReqId,
    ResolverToClassifier, ResolverToParent, MAX_LOG_LINE,
};
use privsep::{Channel, ChannelError, Sender};

use crate::exit::{EXIT_OK, EXIT_SYSTEM};

use scheduler::{Lookups, Outcome, Scheduler, Sink};

/// The lookups the resolver really performs: the system resolver, identd, TCP connects.
pub struct SystemLookups;

impl Lookups for SystemLookups {
    fn lookup(&self, query: &Query, deadline: Instant, partial: &mut dyn FnMut(Answer)) -> Outcome {
        match query {
            Query::Host { ip } => {
                let r = dns::host_info(*ip, &mut |h| partial(Answer::Host(h.clone())));
                Outcome {
                    answer: Answer::Host(r.value),
                    cacheable: r.cacheable,
                }
            }
            Query::Forward { name } => {
                let r = dns::forward(name);
                Outcome {
                    answer: Answer::Addrs(r.value),
                    cacheable: r.cacheable,
                }
            }
            Query::Dnsbl { ip, zone } => {
                let r = dns::dnsbl(*ip, zone);
                Outcome {
                    answer: Answer::Addrs(r.value),
                    cacheable: r.cacheable,
                }
            }
            // Identd answers describe one connection (the ports are in the query), so caching
            // them could never help another connection.
            Query::Identd { remote, local } => Outcome {
                answer: Answer::Identd(identd::query(*remote, *local, deadline)),
                cacheable: false,
            },
            Query::AnswersOn { ip, port, local_ip } => Outcome {
                answer: Answer::AnswersOn(answerson::answers_on(*ip, *port, *local_ip, deadline)),
                cacheable: true,
            },
        }
    }
}

/// Answers go to the classifier, log lines to the parent. Both senders serialise whole frames
/// under their own lock, so pool threads may call this concurrently.
pub struct ChannelSink {
    classifier: Sender<ResolverToClassifier>,
    parent: Sender<ResolverToParent>,
}

/// Cut `text` to at most `max` bytes on a character boundary.
fn cap(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl Sink for ChannelSink {
    fn answer(&self, req: ReqId, query: Query, answer: Answer) {
        // A failed send means the classifier is gone; its reader thread sees the EOF and
        // ends the process, so there is nothing more to do here.
        let _ = self
            .classifier
            .send(&ResolverToClassifier::LookupResult { req, query, answer });
    }

    fn log(&self, level: LogLevel, verbosity: u8, text: String) {
        let _ = self.parent.send(&ResolverToParent::Log(LogRecord {
            level,
            verbosity,
            text: cap(text, MAX_LOG_LINE),
        }));
    }
}

/// Log through a parent channel that is not split yet (handshake errors).
fn log_early(parent: &mut Channel<ResolverToParent, ParentToResolver>, text: String) {
    let _ = parent.send(&ResolverToParent::Log(LogRecord {
        level: LogLevel::Crit,
        verbosity: 0,
        text: cap(text, MAX_LOG_LINE),
    }));
}

/// The resolver role's entry point (called by the role main after the privilege drop).
pub fn run(
    parent: Channel<ResolverToParent, ParentToResolver>,
    classifier: Channel<ResolverToClassifier, ClassifierToResolver>,
) -> ExitCode {
    serve_with(parent, classifier, SystemLookups, true)
}

/// `run` with the lookups supplied and without the process-creation filter (tests run it
/// in-process, where the filter would stop the rest of the test binary from running programs).
pub fn serve<L: Lookups>(
    parent: Channel<ResolverToParent, ParentToResolver>,
    classifier: Channel<ResolverToClassifier, ClassifierToResolver>,
    lookups: L,
) -> ExitCode {
    serve_with(parent, classifier, lookups, false)
}

fn serve_with<L: Lookups>(
    mut parent: Channel<ResolverToParent, ParentToResolver>,
    mut classifier: Channel<ResolverToClassifier, ClassifierToResolver>,
    lookups: L,
    forbid_new_processes: bool,
) -> ExitCode {
    let build = privsep::build_id();

    // ORDER: the parent's Hello carries the settings the pool is sized by, so it comes first.
    let settings = match parent.recv() {
        Ok(ParentToResolver::Hello {
            build: theirs,
            settings,
        }) if theirs == build => settings,
        Ok(ParentToResolver::Hello { .. }) => {
            log_early(&mut parent, "parent build differs; exiting".into());
            return ExitCode::from(EXIT_SYSTEM);
        }
        Ok(_) => {
            log_early(&mut parent, "first parent message was not Hello".into());
            return ExitCode::from(EXIT_SYSTEM);
        }
        Err(ChannelError::Closed) => return ExitCode::from(EXIT_OK),
        Err(e) => {
            log_early(&mut parent, format!("parent channel: {e}"));
            return ExitCode::from(EXIT_SYSTEM);
        }
    };
    if parent
        .send(&ResolverToParent::Hello {
            build: build.clone(),
        })
        .is_err()
    {
        return ExitCode::from(EXIT_SYSTEM);
    }

    match classifier.recv() {
        Ok(ClassifierToResolver::Hello { build: theirs }) if theirs == build => {}
        Ok(ClassifierToResolver::Hello { .. }) => {
            log_early(&mut parent, "classifier build differs; exiting".into());
            return ExitCode::from(EXIT_SYSTEM);
        }
        Ok(ClassifierToResolver::Lookup { .. }) => {
            log_early(&mut parent, "classifier sent Lookup before Hello".into());
            return ExitCode::from(EXIT_SYSTEM);
        }
        Err(ChannelError::Closed) => return ExitCode::from(EXIT_OK),
        Err(e) => {
            log_early(&mut parent, format!("classifier channel: {e}"));
            return ExitCode::from(EXIT_SYSTEM);
        }
    }
    if classifier
        .send(&ResolverToClassifier::Hello { build })
        .is_err()
    {
        return ExitCode::from(EXIT_SYSTEM);
    }

    let (parent_tx, mut parent_rx) = match parent.split() {
        Ok(halves) => halves,
        Err(_) => return ExitCode::from(EXIT_SYSTEM),
    };
    let (class_tx, mut class_rx) = match classifier.split() {
        Ok(halves) => halves,
        Err(_) => return ExitCode::from(EXIT_SYSTEM),
    };
    let sink = ChannelSink {
        classifier: class_tx,
        parent: parent_tx.clone(),
    };
    let log = move |level: LogLevel, verbosity: u8, text: String| {
        let _ = parent_tx.send(&ResolverToParent::Log(LogRecord {
            level,
            verbosity,
            text: cap(text, MAX_LOG_LINE),
        }));
    };

    // ORDER: before the first thread of this process (the filter is synchronised to every
    // thread anyway, and inherited by the ones started later).
    if forbid_new_processes {
        if let Err(e) = crate::noprocs::forbid(privsep::Role::Resolver) {
            log(LogLevel::Crit, 0, format!("forbidding new processes: {e}"));
            return ExitCode::from(EXIT_SYSTEM);
        }
    }
    let scheduler = match Scheduler::from_settings(&settings, sink, lookups) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            log(
                LogLevel::Crit,
                0,
                format!("cannot start lookup threads: {e}"),
            );
            return ExitCode::from(EXIT_SYSTEM);
        }
    };
    log(
        LogLevel::Info,
        1,
        format!(
            "resolver ready maxthreads={} dnstimeout={}ms identdtimeout={}ms answersontimeout={}ms cachettl={}s cachesize={}",
            scheduler.max_threads(),
            settings.dns_timeout_ms,
            settings.identd_timeout_ms,
            settings.answerson_timeout_ms,
            settings.cache_ttl_secs,
            settings.cache_entries
        ),
    );

    // Whichever reader stops first decides the exit code.
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<u8>(2);

    let d = Arc::clone(&scheduler);
    let plog = log.clone();
    let stop = stop_tx.clone();
    let parent_reader = thread::Builder::new()
        .name("parent-reader".into())
        .spawn(move || {
            let code = loop {
                match parent_rx.recv() {
                    Ok(ParentToResolver::Flush) => {
                        d.flush();
                        plog(LogLevel::Info, 1, "caches flushed".into());
                    }
                    Ok(ParentToResolver::Hello { .. }) => {
                        plog(LogLevel::Crit, 0, "second Hello from parent".into());
                        break EXIT_SYSTEM;
                    }
                    Err(ChannelError::Closed) => break EXIT_OK,
                    Err(e) => {
                        plog(LogLevel::Crit, 0, format!("parent channel: {e}"));
                        break EXIT_SYSTEM;
                    }
                }
            };
            let _ = stop.send(code);
        });
    let d = Arc::clone(&scheduler);
    let clog = log.clone();
    let stop = stop_tx;
    let class_reader = thread::Builder::new()
        .name("classifier-reader".into())
        .spawn(move || {
            let code = loop {
                match class_rx.recv() {
                    Ok(ClassifierToResolver::Lookup { req, query }) => {
                        if !scheduler::plausible(&query) {
                            clog(
                                LogLevel::Warning,
                                0,
                                format!(
                                    "refusing lookup about a non-peer address: {}",
                                    scheduler::describe(&query)
                                ),
                            );
                            d.answer_failure(req, query);
                            continue;
                        }
                        d.submit(req, query);
                    }
                    Ok(ClassifierToResolver::Hello { .. }) => {
                        clog(LogLevel::Crit, 0, "second Hello from classifier".into());
                        break EXIT_SYSTEM;
                    }
                    Err(ChannelError::Closed) => break EXIT_OK,
                    Err(e) => {
                        clog(LogLevel::Crit, 0, format!("classifier channel: {e}"));
                        break EXIT_SYSTEM;
                    }
                }
            };
            let _ = stop.send(code);
        });
    if parent_reader.is_err() || class_reader.is_err() {
        log(LogLevel::Crit, 0, "cannot start reader threads".into());
        return ExitCode::from(EXIT_SYSTEM);
    }
    let code = stop_rx.recv().unwrap_or(EXIT_SYSTEM);
    ExitCode::from(code)
}
