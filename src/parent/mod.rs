//! The parent process: binds, accepts, hands each connection to the classifier, acts on the
//! admitted verdict, reaps, reloads and restarts workers. One thread, one `poll` loop.
//!
//! Runs as root (or the invoking user in non-root mode). It keeps root on purpose: services
//! must be started as arbitrary configured users, which needs CAP_SETUID/CAP_SETGID for the
//! life of the daemon, and a parent that cannot setuid could not run `user` services at all.
//! What keeps that safe is what the parent does NOT do: it never parses DNS or identd data and
//! never evaluates a rule; it reads only admitted, typed messages from the workers (admit.rs),
//! builds every argv, environment and message from its own copy of the actions table, and
//! the systemd unit in contrib/ bounds its capabilities.
//!
//! Whose bytes: connections from the network (never read by the parent, only accepted and
//! handed on), worker messages (admitted before use), the administrator's files.
//!
//! Invariants:
//! - every connection gets exactly one verdict, or is closed unanswered (fail closed) when its
//!   classifier dies; the parent never acts on a guess;
//! - at most [`MAX_PENDING`] connections wait for verdicts; at most `MAX_MSG_WRITERS` messages
//!   are in flight; nothing a peer does can block the loop (all sockets non-blocking);
//! - a counted connection is reported with `ConnClosed` exactly once, when its service is
//!   reaped or fails to start, so the classifier's limits stay exact;
//! - action tables of older generations are kept while a pending connection might still get a
//!   verdict under them.

#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod admit;
pub mod children;
pub mod listen;
pub mod msgwrite;
pub mod reload;
pub mod setup;
pub mod signals;
pub mod spawn;
pub mod status;
mod verdict;

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use policy::conf::OnFileError;
use privsep::proto::{
    BuildId, ClassName, ClassifierSettings, ConnId, Gen, LiveConn, LogLevel, ParentToClassifier,
    ParentToResolver, ResolverSettings,
};
use privsep::ChannelError;

use crate::args::Args;
use crate::exit::{Error, Result};
use crate::log::{self, Level};
use admit::{Admitted, AdmittedResolver, GenTable};
use children::{Backoff, WorkerPlan, WorkerSet};
use listen::{AcceptResult, Listener};
use msgwrite::{MsgWrite, Progress};
use reload::{Outcome, PolicyFiles, Watched};
use spawn::Creds;
use verdict::finish_msg;

/// Connections waiting for a verdict. Each holds a socket; beyond this a new connection is
/// closed at once and logged, so a stalled classifier cannot make the parent run out of
/// descriptors (s6 `ABSOLUTE_MAXCONN`, bgpd `MAX_CONNECT_CNT`).
pub const MAX_PENDING: usize = 4096;

/// Resolver threads per classifier evaluation thread: the widest or-list of lookups that runs
/// in one round trip while every evaluation is busy. The resolver caps the total.
const RESOLVER_THREADS_PER_EVALUATION: u32 = 8;

/// Connections accepted from one listener per loop turn, so one busy port cannot starve the
/// others, the workers' channels or the reaper.
const ACCEPT_BATCH: usize = 128;

/// Worker messages handled per worker per loop turn, for the same fairness.
const RECV_BATCH: usize = 512;

/// How often the rules and actions files are stat'ed.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Pause after accept fails for lack of descriptors or memory (the listener stays readable;
/// without a pause the loop would spin).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Longest a connection may wait for its verdict. Every lookup the classifier makes has its
/// own timeout (seconds), so even a long chain of them finishes well within this; a connection
/// older than this means the classifier is stuck, and it is restarted like a dead one.
const VERDICT_DEADLINE: Duration = Duration::from_secs(300);

/// Worker log lines allowed per second per worker; more are counted and summarised, so a
/// compromised worker cannot flood syslog.
const LOG_LINES_PER_SEC: u32 = 200;

/// A connection waiting for its verdict.
struct PendingConn {
    stream: TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
    /// The oldest generation its verdict may name.
    min_gen: Gen,
    accepted: Instant,
}

struct PendingMap(HashMap<ConnId, PendingConn>);

impl admit::Pending for PendingMap {
    fn min_gen(&self, conn: ConnId) -> Option<Gen> {
        self.0.get(&conn).map(|p| p.min_gen)
    }
}

/// A running service child.
struct Service {
    conn: ConnId,
    remote: SocketAddr,
    local: SocketAddr,
    classes: Vec<String>,
    counted: bool,
    started: Instant,
}

/// Per-worker log flood limiter.
#[derive(Default)]
struct LogBudget {
    window: Option<Instant>,
    lines: u32,
    dropped: u64,
}

impl LogBudget {
    /// Whether a line may be logged now; returns a summary line to log when a window of
    /// suppression ends.
    fn admit(&mut self, now: Instant) -> (bool, Option<u64>) {
        let mut summary = None;
        let fresh = self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1));
        if fresh {
            if self.dropped > 0 {
                summary = Some(self.dropped);
            }
            self.window = Some(now);
            self.lines = 0;
            self.dropped = 0;
        }
        if self.lines < LOG_LINES_PER_SEC {
            self.lines += 1;
            (true, summary)
        } else {
            self.dropped += 1;
            (false, summary)
        }
    }
}

/// Settings from the command line and nanny.conf that the loop needs.
struct Settings {
    onfileerror: OnFileError,
    substitutions: bool,
    classifier: ClassifierSettings,
    resolver: ResolverSettings,
    aftermax: Option<String>,
}

struct Parent {
    build: BuildId,
    settings: Settings,
    listeners: Vec<Listener>,
    accepting: bool,
    accept_paused_until: Option<Instant>,
    next_conn: u64,
    lifetime: u64,
    pending: PendingMap,
    services: HashMap<i32, Service>,
    msgs: Vec<MsgWrite<TcpStream>>,
    workers: Option<WorkerSet>,
    /// Whether any worker pair ever became ready (a pair that never does is fatal at start).
    ever_ready: bool,
    plan: WorkerPlan,
    backoff: Backoff,
    gen: Gen,
    tables: BTreeMap<Gen, Arc<GenTable>>,
    files: PolicyFiles,
    rules_watch: Watched,
    actions_watch: Watched,
    next_reload: Instant,
    creds: Option<Creds>,
    last_log: Option<String>,
    status_wanted: bool,
    budgets: [LogBudget; 2],
    signals: signals::Signals,
    /// Set when something happened that the daemon cannot go on after; the loop returns it.
    fatal: Option<String>,
}

/// Runs the parent until SIGTERM/SIGINT (exit 0) or a fatal error.
pub fn run(args: &Args) -> Result<ExitCode> {
    if let Some(s) = args.stack {
        setup::set_stack(s);
    }
    match spawn::raise_nofile() {
        Ok(n) => log::debug(3, &format!("descriptor limit {n}")),
        Err(e) => log::warn(&format!("cannot raise the descriptor limit: {e}")),
    }
    let cfg = setup::load_conf(&args.config)?;
    let conf = &cfg.conf;
    let root = nix::unistd::geteuid().is_root();

    // Users, while /etc is visible (STYLE.md §2.6 step 2).
    let creds = match (&conf.user, root) {
        (Some(u), true) => Some(spawn::resolve_user(u).map_err(Error::Config)?),
        (Some(u), false) => {
            let c = spawn::resolve_user(u).map_err(Error::Config)?;
            if c.uid != nix::unistd::getuid().as_raw() {
                log::warn(&format!(
                    "not running as root: ignoring user {u}; services run as uid {}",
                    nix::unistd::getuid()
                ));
            }
            None
        }
        (None, true) => {
            // Like the original portnanny and inetd: no `user` means services run as root.
            log::warn("no user in nanny.conf: services will run as root");
            None
        }
        (None, false) => None,
    };
    spawn::set_env_policy(spawn::ServiceEnvPolicy::from_conf(conf));
    let plan = if root {
        let (name, uid, gid) = setup::privsep_user(conf)?;
        let dir =
            std::path::PathBuf::from(conf.chrootdir.as_deref().unwrap_or(setup::DEFAULT_CHROOT));
        setup::prepare_chroot(&dir)?;
        log::debug(
            2,
            &format!(
                "workers run as {name} (uid {uid}, gid {gid}); classifier root {}",
                dir.display()
            ),
        );
        WorkerPlan {
            uid,
            gid,
            chroot: Some(dir),
        }
    } else {
        log::warn(
            "not running as root: workers are not chrooted and keep this user's ids (development mode)",
        );
        WorkerPlan {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            chroot: None,
        }
    };

    // The first policy must load; a daemon that starts with a broken file would silently drop
    // every connection.
    let mut rules_watch = Watched::new(cfg.rules_path.clone());
    let mut actions_watch = Watched::new(cfg.actions_path.clone());
    let files = initial_policy(&mut rules_watch, &mut actions_watch)?;

    let maxthreads = args.maxthreads.unwrap_or(conf.maxthreads);
    let aftermax = match &conf.aftermaxthreads {
        None => None,
        Some(c) => Some(
            ClassName::try_from(c.clone())
                .map_err(|e| Error::Config(format!("aftermaxthreads {c}: {e}")))?,
        ),
    };
    let settings = Settings {
        onfileerror: conf.onfileerror,
        substitutions: conf.substitutions,
        classifier: ClassifierSettings {
            // Sent as configured: 0 (threading off) means aftermaxthreads never applies, as in
            // portnanny 2; the classifier still evaluates on one thread.
            maxthreads,
            aftermaxthreads: aftermax,
            dropipafter_secs: conf.dropipafter,
            expireevery_secs: conf.expireevery,
            dns_timeout_ms: conf.dnstimeout_ms,
            identd_timeout_ms: conf.identdtimeout_ms,
            answerson_timeout_ms: conf.answersontimeout_ms,
        },
        resolver: ResolverSettings {
            // Lookups block a resolver thread each, and one evaluation starts all the lookups
            // of an or-list at once (five dnsbl: zones, say). With fewer threads than busy
            // evaluations times that width, K zones cost K rounds instead of one (measured:
            // 8 evaluations x 5 zones at 200 ms took 1 s on 8 threads).
            threads: maxthreads
                .max(1)
                .saturating_mul(RESOLVER_THREADS_PER_EVALUATION),
            dns_timeout_ms: conf.dnstimeout_ms,
            identd_timeout_ms: conf.identdtimeout_ms,
            answerson_timeout_ms: conf.answersontimeout_ms,
            cache_ttl_secs: conf.cachettl_secs,
            cache_entries: conf.cachesize,
        },
        aftermax: conf.aftermaxthreads.clone(),
    };

    // Bind (step 4).
    let lines: Vec<_> = conf.listens.iter().map(|l| (l.port, l.addr)).collect();
    let (listeners, skipped) = listen::bind_all(&lines)
        .map_err(|(addr, e)| Error::system(format!("cannot listen on {addr}"), e))?;
    for s in skipped {
        log::warn(&format!("no IPv6 on this host: not listening on {s}"));
    }

    // Signals before the first child, so no SIGCHLD can be missed.
    let signals = signals::Signals::install().map_err(|e| Error::system("signal handlers", e))?;

    let mut p = Parent {
        build: privsep::build_id(),
        settings,
        listeners,
        accepting: true,
        accept_paused_until: None,
        next_conn: 1,
        lifetime: 0,
        pending: PendingMap(HashMap::new()),
        services: HashMap::new(),
        msgs: Vec::new(),
        workers: None,
        ever_ready: false,
        plan,
        backoff: Backoff::default(),
        gen: Gen(1),
        tables: BTreeMap::new(),
        files,
        rules_watch,
        actions_watch,
        next_reload: Instant::now() + RELOAD_EVERY,
        creds,
        last_log: None,
        status_wanted: false,
        budgets: [LogBudget::default(), LogBudget::default()],
        signals,
        fatal: None,
    };
    p.install_table();
    p.start_workers()?;
    let addrs: Vec<String> = p.listeners.iter().map(|l| l.addr.to_string()).collect();
    log::notice(&format!(
        "started: listening on {}; policy generation {}",
        addrs.join(" "),
        p.gen.0
    ));
    p.run_loop()?;
    Ok(ExitCode::SUCCESS)
}

fn initial_policy(rules: &mut Watched, actions: &mut Watched) -> Result<PolicyFiles> {
    let mut errors: Vec<String> = Vec::new();
    let mut files = PolicyFiles::default();
    match rules.poll(true) {
        Some(Ok(text)) => match reload::load_rules(&rules.name, &text) {
            Ok((classes, warns)) => {
                warns.iter().for_each(|w| log::warn(&w.to_string()));
                files.rules = Some((text, classes));
            }
            Err(e) => errors.extend(e.lines()),
        },
        Some(Err(e)) => errors.push(e),
        None => errors.push(format!("{}: not read", rules.name)),
    }
    match actions.poll(true) {
        Some(Ok(text)) => match reload::load_actions(&actions.name, &text) {
            Ok((a, warns)) => {
                warns.iter().for_each(|w| log::warn(&w.to_string()));
                files.actions = Some((text, Arc::new(a)));
            }
            Err(e) => errors.extend(e.lines()),
        },
        Some(Err(e)) => errors.push(e),
        None => errors.push(format!("{}: not read", actions.name)),
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(Error::Config(errors.join("\n")))
    }
}

/// Logs what onfileerror did about a file that failed to load.
fn report_failed(name: &str, what: &str, mode: OnFileError, outcome: Outcome) -> Outcome {
    match (mode, &outcome) {
        (OnFileError::Drop, Outcome::Dropped) => log::err(&format!(
            "{what} file {name} has errors: dropped until it loads (every connection is closed)"
        )),
        (OnFileError::Drop, _) => log::err(&format!(
            "{what} file {name} still has errors: still dropped"
        )),
        _ => log::err(&format!(
            "{what} file {name} has errors: keeping the old {what}"
        )),
    }
    outcome
}

/// Which descriptor a poll slot watches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Signals,
    Classifier,
    Resolver,
    Listener(usize),
    Msg(usize),
}

impl Parent {
    // ---- policy generations -------------------------------------------------------------

    /// Records the current files as generation `self.gen`.
    fn install_table(&mut self) {
        let classes = self
            .files
            .rules
            .as_ref()
            .map(|(_, c)| c.clone())
            .unwrap_or_default();
        let actions = self.files.actions.as_ref().map(|(_, a)| Arc::clone(a));
        let t = GenTable::new(
            self.gen,
            actions,
            classes,
            self.settings.aftermax.as_deref(),
        );
        self.tables.insert(self.gen, Arc::new(t));
        self.prune_tables();
    }

    /// Drops action tables no pending verdict can name any more.
    fn prune_tables(&mut self) {
        let mut oldest = self.gen;
        if let Some(ws) = &self.workers {
            oldest = oldest.min(ws.acked.unwrap_or(ws.first_sent));
        }
        if let Some(m) = self.pending.0.values().map(|p| p.min_gen).min() {
            oldest = oldest.min(m);
        }
        self.tables.retain(|g, _| *g >= oldest);
    }

    fn policy_msg(&self) -> ParentToClassifier {
        ParentToClassifier::Policy {
            gen: self.gen,
            rules: self.files.rules.as_ref().map(|(t, _)| t.clone()),
            actions: self.files.actions.as_ref().map(|(t, _)| t.clone()),
            settings: self.settings.classifier.clone(),
        }
    }

    /// Checks both files; on any change bumps the generation and ships it.
    fn reload(&mut self, force: bool) {
        let mode = self.settings.onfileerror;
        let mut outcomes = Vec::with_capacity(2);
        if let Some(res) = self.rules_watch.poll(force) {
            let name = self.rules_watch.name.clone();
            let loaded = res
                .map_err(reload::LoadError::Read)
                .and_then(|text| reload::load_rules(&name, &text).map(|(c, w)| (text, c, w)));
            outcomes.push(match loaded {
                Ok((text, classes, warns)) => {
                    warns.iter().for_each(|w| log::warn(&w.to_string()));
                    self.files.rules = Some((text, classes));
                    log::info(&format!("reloaded rules file {name}"));
                    Outcome::Loaded
                }
                Err(e) => {
                    e.lines().iter().for_each(|l| log::err(l));
                    report_failed(
                        &name,
                        "rules",
                        mode,
                        reload::on_error(&mut self.files.rules, mode),
                    )
                }
            });
        }
        if let Some(res) = self.actions_watch.poll(force) {
            let name = self.actions_watch.name.clone();
            let loaded = res
                .map_err(reload::LoadError::Read)
                .and_then(|text| reload::load_actions(&name, &text).map(|(a, w)| (text, a, w)));
            outcomes.push(match loaded {
                Ok((text, actions, warns)) => {
                    warns.iter().for_each(|w| log::warn(&w.to_string()));
                    self.files.actions = Some((text, Arc::new(actions)));
                    // norepeatlog remembers the last line of one loaded actions file.
                    self.last_log = None;
                    log::info(&format!("reloaded actions file {name}"));
                    Outcome::Loaded
                }
                Err(e) => {
                    e.lines().iter().for_each(|l| log::err(l));
                    report_failed(
                        &name,
                        "actions",
                        mode,
                        reload::on_error(&mut self.files.actions, mode),
                    )
                }
            });
        }
        if outcomes.iter().any(Outcome::changes_policy) {
            self.gen = Gen(self.gen.0.saturating_add(1));
            self.install_table();
            log::debug(2, &format!("policy generation {}", self.gen.0));
            let msg = self.policy_msg();
            if let Some(ws) = self.workers.as_mut() {
                ws.latest_sent = self.gen;
                if let Err(e) = ws.classifier.queue(&msg) {
                    self.worker_failed(format!("sending the new policy: {e}"), false);
                }
            }
        }
    }

    // ---- workers ------------------------------------------------------------------------

    fn start_workers(&mut self) -> Result<()> {
        let mut ws = match children::start(&self.plan, self.gen) {
            Ok(ws) => ws,
            Err(e) if !self.ever_ready => return Err(Error::System(e)),
            Err(e) => {
                // A transient failure (fork or socketpair out of resources): back off and
                // retry like any other worker failure.
                log::err(&format!("{e}; retrying"));
                let now = Instant::now();
                return match self.backoff.failed(now, now) {
                    Ok(_) => Ok(()),
                    Err(fatal) => Err(Error::System(fatal)),
                };
            }
        };
        let live: Vec<LiveConn> = self
            .services
            .values()
            .filter(|s| s.counted)
            .map(|s| LiveConn {
                conn: s.conn,
                remote: s.remote,
                classes: s
                    .classes
                    .iter()
                    .filter_map(|c| ClassName::try_from(c.clone()).ok())
                    .collect(),
            })
            .collect();
        let mut sends = vec![
            ParentToClassifier::Hello {
                build: self.build.clone(),
            },
            self.policy_msg(),
        ];
        if !live.is_empty() || self.ever_ready {
            sends.push(ParentToClassifier::Seed { live });
        }
        let mut res: std::result::Result<(), ChannelError> = Ok(());
        for m in &sends {
            res = res.and_then(|()| ws.classifier.queue(m));
        }
        res = res.and_then(|()| {
            ws.resolver.queue(&ParentToResolver::Hello {
                build: self.build.clone(),
                settings: self.settings.resolver.clone(),
            })
        });
        log::debug(
            2,
            &format!(
                "started classifier pid={} resolver pid={}",
                ws.cpid, ws.rpid
            ),
        );
        self.workers = Some(ws);
        if let Err(e) = res {
            self.worker_failed(format!("greeting the workers: {e}"), false);
        }
        Ok(())
    }

    /// The pair failed (died, closed a channel, broke the protocol or timed out): kill both,
    /// close every connection waiting on the classifier (fail closed) and schedule a restart.
    /// Fatal errors are stored for the loop to return.
    fn worker_failed(&mut self, why: String, violation: bool) {
        let Some(ws) = self.workers.take() else {
            return;
        };
        if violation {
            log::crit(&format!(
                "classifier/resolver protocol violation: {why}; killing both workers"
            ));
        } else {
            log::err(&format!("workers failed: {why}; restarting them"));
        }
        ws.kill();
        let n = self.pending.0.len();
        for (conn, _) in self.pending.0.drain() {
            log::debug(
                1,
                &format!("drop conn={} reason=classifier-restart", conn.0),
            );
        }
        if n > 0 {
            log::warn(&format!(
                "closed {n} connections that were waiting for a verdict"
            ));
        }
        if !self.ever_ready {
            self.fatal = Some(format!(
                "the workers could not be started ({why}); see the messages above"
            ));
            return;
        }
        let now = Instant::now();
        match self.backoff.failed(ws.started, now) {
            Ok(d) => log::debug(1, &format!("restarting workers in {} ms", d.as_millis())),
            Err(e) => self.fatal = Some(e),
        }
        self.prune_tables();
    }
}

impl Parent {
    // ---- worker messages ----------------------------------------------------------------

    fn on_classifier_readable(&mut self) {
        for _ in 0..RECV_BATCH {
            let Some(ws) = self.workers.as_mut() else {
                return;
            };
            let msg = match ws.classifier.try_recv() {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(ChannelError::Violation(v)) => {
                    return self.worker_failed(format!("classifier sent a bad frame: {v}"), true)
                }
                Err(ChannelError::Closed) => {
                    return self.worker_failed("the classifier closed its channel".into(), false)
                }
                Err(e) => return self.worker_failed(format!("classifier channel: {e}"), false),
            };
            let admitted = {
                let ctx = admit::Ctx {
                    build: &self.build,
                    hello_seen: ws.c_hello,
                    next_conn: ConnId(self.next_conn),
                    pending: &self.pending,
                    tables: &self.tables,
                    latest_sent: ws.latest_sent,
                    first_sent: ws.first_sent,
                    acked: ws.acked,
                };
                admit::admit(&ctx, msg)
            };
            match admitted {
                Err(v) => return self.worker_failed(format!("classifier {v}"), true),
                Ok(a) => self.on_admitted(a),
            }
        }
    }

    fn on_admitted(&mut self, a: Admitted) {
        match a {
            Admitted::Hello => {
                if let Some(ws) = self.workers.as_mut() {
                    ws.c_hello = true;
                }
            }
            Admitted::PolicyLoaded(g) => {
                if let Some(ws) = self.workers.as_mut() {
                    ws.acked = Some(g);
                    if ws.ready() && !self.ever_ready {
                        self.ever_ready = true;
                    }
                }
                log::debug(2, &format!("classifier loaded policy generation {}", g.0));
                self.prune_tables();
            }
            Admitted::Log {
                level,
                verbosity,
                text,
            } => self.worker_log(0, "classifier", level, verbosity, &text),
            Admitted::Status {
                evaluations,
                eval_micros_total,
                class_counts,
                history_entries,
            } => {
                if std::mem::take(&mut self.status_wanted) {
                    self.log_status(Some(status::ClassifierStats {
                        evaluations,
                        eval_micros_total,
                        class_counts,
                        history_entries,
                    }));
                }
            }
            Admitted::Verdict(v) => self.on_verdict(v),
        }
    }

    fn on_resolver_readable(&mut self) {
        for _ in 0..RECV_BATCH {
            let Some(ws) = self.workers.as_mut() else {
                return;
            };
            let msg = match ws.resolver.try_recv() {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(ChannelError::Violation(v)) => {
                    return self.worker_failed(format!("resolver sent a bad frame: {v}"), true)
                }
                Err(ChannelError::Closed) => {
                    return self.worker_failed("the resolver closed its channel".into(), false)
                }
                Err(e) => return self.worker_failed(format!("resolver channel: {e}"), false),
            };
            match admit::admit_resolver(&self.build, ws.r_hello, msg) {
                Err(v) => return self.worker_failed(format!("resolver {v}"), true),
                Ok(AdmittedResolver::Hello) => {
                    ws.r_hello = true;
                    if ws.ready() {
                        self.ever_ready = true;
                    }
                }
                Ok(AdmittedResolver::Log {
                    level,
                    verbosity,
                    text,
                }) => self.worker_log(1, "resolver", level, verbosity, &text),
            }
        }
    }

    fn worker_log(&mut self, idx: usize, role: &str, level: LogLevel, verbosity: u8, text: &str) {
        if !log::enabled(verbosity) {
            return;
        }
        let Some(budget) = self.budgets.get_mut(idx) else {
            return;
        };
        let (ok, summary) = budget.admit(Instant::now());
        if let Some(n) = summary {
            log::warn(&format!(
                "{role}: {n} log lines suppressed (more than {LOG_LINES_PER_SEC}/s)"
            ));
        }
        if ok {
            log::write(Level::from(level), &log::worker_line(role, text));
        }
    }

    // ---- accepting ----------------------------------------------------------------------

    fn accept_from(&mut self, idx: usize) {
        for _ in 0..ACCEPT_BATCH {
            // The classifier may have failed earlier in this loop turn: leave new connections
            // in the listen backlog until a new one is ready.
            if !self.workers.as_ref().is_some_and(WorkerSet::ready) {
                return;
            }
            let Some(l) = self.listeners.get(idx) else {
                return;
            };
            let a = match listen::accept(l) {
                AcceptResult::Conn(a) => a,
                AcceptResult::Empty => return,
                AcceptResult::Exhausted(e) => {
                    log::err(&format!("accept on {}: {e}; pausing accepts", l.addr));
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
            };
            self.lifetime += 1;
            let conn = ConnId(self.next_conn);
            self.next_conn += 1;
            // Per-connection lines are formatted only when they will be written: formatting two
            // addresses costs more than the rest of this loop turn's user-space work.
            if log::enabled(2) {
                log::debug(
                    2,
                    &format!("accept {} conn={} local={}", a.remote, conn.0, a.local),
                );
            }
            if self.pending.0.len() >= MAX_PENDING {
                // Per connection and only with -v: under a flood this would be thousands of lines.
                log::debug(
                    1,
                    &format!(
                        "drop conn={} reason=too-many-pending ({MAX_PENDING} waiting for a verdict)",
                        conn.0
                    ),
                );
                continue;
            }
            let Some(ws) = self.workers.as_mut() else {
                // Not reached: checked at the top of the loop.
                return;
            };
            let min_gen = ws.acked.unwrap_or(ws.first_sent);
            let sent = ws.classifier.queue(&ParentToClassifier::ConnAccepted {
                conn,
                remote: a.remote,
                local: a.local,
            });
            self.pending.0.insert(
                conn,
                PendingConn {
                    stream: a.stream,
                    remote: a.remote,
                    local: a.local,
                    min_gen,
                    accepted: Instant::now(),
                },
            );
            if let Err(e) = sent {
                return self.worker_failed(format!("sending ConnAccepted: {e}"), false);
            }
        }
    }

    // ---- children -----------------------------------------------------------------------

    fn reap(&mut self) {
        // Bounded: each iteration reaps one child; there cannot be more zombies than children.
        for _ in 0..100_000 {
            let st = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::err(&format!("waitpid: {e}"));
                    return;
                }
                Ok(st) => st,
            };
            let pid = match st {
                WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _) => pid,
                _ => continue,
            };
            // Only for log lines, so built only when one is written.
            let how = || match st {
                WaitStatus::Signaled(_, sig, _) => format!("signal={}", sig.as_str()),
                WaitStatus::Exited(_, code) => format!("exit={code}"),
                _ => String::new(),
            };
            if let Some(s) = self.services.remove(&pid.as_raw()) {
                let hint = match st {
                    WaitStatus::Exited(_, spawn::EXIT_SETUP_FAILED) => {
                        Some("its set-up failed before exec (dup2 or the user's ids)")
                    }
                    WaitStatus::Exited(_, spawn::EXIT_EXEC_FAILED) => {
                        Some("execve failed (not an executable?)")
                    }
                    _ => None,
                };
                if let (Some(h), true) = (hint, s.started.elapsed() < Duration::from_secs(1)) {
                    log::err(&format!(
                        "service pid={pid} conn={} {}: {h}",
                        s.conn.0,
                        how()
                    ));
                }
                if log::enabled(1) {
                    log::debug(
                        1,
                        &format!(
                            "end pid={pid} conn={} {} secs={}",
                            s.conn.0,
                            how(),
                            s.started.elapsed().as_secs()
                        ),
                    );
                }
                self.conn_closed(s.conn, s.counted);
                continue;
            }
            let worker = self.workers.as_ref().and_then(|ws| {
                if ws.cpid == pid {
                    Some("classifier")
                } else if ws.rpid == pid {
                    Some("resolver")
                } else {
                    None
                }
            });
            match worker {
                Some(role) => {
                    self.worker_failed(format!("the {role} (pid {pid}) died: {}", how()), false)
                }
                None => log::debug(3, &format!("reaped pid={pid} {}", how())),
            }
        }
    }

    // ---- messages -----------------------------------------------------------------------

    fn advance_msgs(&mut self, ready: &[usize], now: Instant) {
        let mut flagged = vec![false; self.msgs.len()];
        for i in ready {
            if let Some(f) = flagged.get_mut(*i) {
                *f = true;
            }
        }
        // Walk backwards so swap_remove never moves an entry we have yet to visit.
        for i in (0..self.msgs.len()).rev() {
            let due = self.msgs.get(i).is_some_and(|w| now >= w.deadline());
            if !flagged.get(i).copied().unwrap_or(false) && !due {
                continue;
            }
            let Some(w) = self.msgs.get_mut(i) else {
                continue;
            };
            match w.advance(now) {
                Progress::Blocked => {}
                other => {
                    let w = self.msgs.swap_remove(i);
                    finish_msg(w, other);
                }
            }
        }
    }

    // ---- status -------------------------------------------------------------------------

    fn log_status(&self, c: Option<status::ClassifierStats>) {
        let mut active: Vec<status::ActiveLine<'_>> = self
            .services
            .iter()
            .map(|(pid, s)| status::ActiveLine {
                pid: u32::try_from(*pid).unwrap_or(0),
                conn: s.conn.0,
                remote: s.remote,
                local: s.local,
                classes: &s.classes,
                started: s.started,
            })
            .collect();
        let p = status::ParentStats {
            lifetime: self.lifetime,
            pending: self.pending.0.len(),
            messages: self.msgs.len(),
            gen: self.gen.0,
        };
        for line in status::report(&p, &mut active, c.as_ref(), Instant::now()) {
            log::info(&line);
        }
    }

    // ---- the loop -----------------------------------------------------------------------

    fn run_loop(&mut self) -> Result<()> {
        loop {
            if let Some(f) = self.fatal.take() {
                return Err(Error::System(f));
            }
            let now = Instant::now();
            if self.workers.is_none() && self.backoff.due.is_some_and(|d| now >= d) {
                self.backoff.due = None;
                self.start_workers()?;
                continue;
            }
            if let Some(ws) = &self.workers {
                if !ws.ready() && now.duration_since(ws.started) > children::START_TIMEOUT {
                    self.worker_failed("the workers did not come up in time".into(), false);
                    continue;
                }
            }
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
            }

            let timeout = self.poll_timeout(now);
            let accept_now = self.accepting
                && self.accept_paused_until.is_none()
                && self.workers.as_ref().is_some_and(WorkerSet::ready);
            let mut slots: Vec<Slot> =
                Vec::with_capacity(3 + self.listeners.len() + self.msgs.len());
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(slots.capacity());
            fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
            slots.push(Slot::Signals);
            if let Some(ws) = &self.workers {
                let mut ev = PollFlags::POLLIN;
                if ws.classifier.wants_write() {
                    ev |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(ws.classifier.as_fd(), ev));
                slots.push(Slot::Classifier);
                let mut ev = PollFlags::POLLIN;
                if ws.resolver.wants_write() {
                    ev |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(ws.resolver.as_fd(), ev));
                slots.push(Slot::Resolver);
            }
            if accept_now {
                for (i, l) in self.listeners.iter().enumerate() {
                    fds.push(PollFd::new(l.sock.as_fd(), PollFlags::POLLIN));
                    slots.push(Slot::Listener(i));
                }
            }
            for (i, w) in self.msgs.iter().enumerate() {
                fds.push(PollFd::new(w.get_ref().as_fd(), PollFlags::POLLOUT));
                slots.push(Slot::Msg(i));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::system("poll", e)),
            }
            let fired: Vec<(Slot, PollFlags)> = slots
                .iter()
                .zip(fds.iter())
                .filter_map(|(s, f)| {
                    let r = f.revents().unwrap_or(PollFlags::empty());
                    (!r.is_empty()).then_some((*s, r))
                })
                .collect();
            drop(fds);

            let now = Instant::now();
            let mut msg_ready = Vec::new();
            let mut signalled = false;
            for (slot, rev) in &fired {
                match slot {
                    Slot::Signals => signalled = true,
                    Slot::Classifier => {
                        if rev.contains(PollFlags::POLLOUT) {
                            self.flush_classifier();
                        }
                        if rev
                            .intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                        {
                            self.on_classifier_readable();
                        }
                    }
                    Slot::Resolver => {
                        if rev.contains(PollFlags::POLLOUT) {
                            self.flush_resolver();
                        }
                        if rev
                            .intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                        {
                            self.on_resolver_readable();
                        }
                    }
                    Slot::Listener(i) => self.accept_from(*i),
                    Slot::Msg(i) => msg_ready.push(*i),
                }
            }
            // A batch that ended early can leave whole frames in a channel's buffer, where poll
            // cannot see them (poll_timeout made this turn not wait for them).
            let fired_slot = |want: Slot| fired.iter().any(|(s, _)| *s == want);
            let (c_buffered, r_buffered) = self.workers.as_ref().map_or((false, false), |ws| {
                (ws.classifier.has_buffered(), ws.resolver.has_buffered())
            });
            if c_buffered && !fired_slot(Slot::Classifier) {
                self.on_classifier_readable();
            }
            // (If the classifier failed just now, both workers were restarted; this reads nothing.)
            if r_buffered && !fired_slot(Slot::Resolver) {
                self.on_resolver_readable();
            }
            self.advance_msgs(&msg_ready, now);
            if signalled {
                let sig = self.signals.take();
                if sig.child {
                    self.reap();
                }
                if sig.term {
                    self.shutdown();
                    return Ok(());
                }
                if sig.hup {
                    log::info("SIGHUP: reloading the rules and actions files");
                    self.reload(true);
                    self.next_reload = Instant::now() + RELOAD_EVERY;
                }
                if sig.usr1 {
                    log::info("SIGUSR1: flushing caches and IP history");
                    if let Some(ws) = self.workers.as_mut() {
                        let r = ws
                            .classifier
                            .queue(&ParentToClassifier::Flush)
                            .and_then(|()| ws.resolver.queue(&ParentToResolver::Flush));
                        if let Err(e) = r {
                            self.worker_failed(format!("sending Flush: {e}"), false);
                        }
                    }
                }
                if sig.usr2 {
                    self.request_status();
                }
            }
            if Instant::now() >= self.next_reload {
                self.check_verdict_deadline(Instant::now());
                self.prune_tables();
                self.reload(false);
                self.next_reload = Instant::now() + RELOAD_EVERY;
            }
        }
    }

    /// A classifier that leaves a connection without a verdict for [`VERDICT_DEADLINE`] is
    /// treated as hung: restarted, its pending connections closed.
    fn check_verdict_deadline(&mut self, now: Instant) {
        let stuck = self
            .pending
            .0
            .iter()
            .find(|(_, p)| now.saturating_duration_since(p.accepted) > VERDICT_DEADLINE)
            .map(|(c, _)| *c);
        if let Some(conn) = stuck {
            self.worker_failed(
                format!(
                    "no verdict for conn={} within {} seconds: the classifier is stuck",
                    conn.0,
                    VERDICT_DEADLINE.as_secs()
                ),
                false,
            );
        }
    }

    fn poll_timeout(&self, now: Instant) -> PollTimeout {
        if self
            .workers
            .as_ref()
            .is_some_and(|ws| ws.classifier.has_buffered() || ws.resolver.has_buffered())
        {
            return PollTimeout::ZERO;
        }
        let mut until = self.next_reload;
        if let Some(d) = self.backoff.due.filter(|_| self.workers.is_none()) {
            until = until.min(d);
        }
        if let Some(t) = self.accept_paused_until {
            until = until.min(t);
        }
        if let Some(ws) = self.workers.as_ref().filter(|ws| !ws.ready()) {
            until = until.min(ws.started + children::START_TIMEOUT + Duration::from_millis(1));
        }
        if let Some(d) = self.msgs.iter().map(MsgWrite::deadline).min() {
            until = until.min(d);
        }
        let ms = until.saturating_duration_since(now).as_millis();
        // Round up so the loop does not wake a hair early and spin.
        let ms = u16::try_from(ms.saturating_add(1)).unwrap_or(u16::MAX);
        PollTimeout::from(ms)
    }

    fn flush_classifier(&mut self) {
        if let Some(ws) = self.workers.as_mut() {
            if let Err(e) = ws.classifier.flush() {
                self.worker_failed(format!("writing to the classifier: {e}"), false);
            }
        }
    }

    fn flush_resolver(&mut self) {
        if let Some(ws) = self.workers.as_mut() {
            if let Err(e) = ws.resolver.flush() {
                self.worker_failed(format!("writing to the resolver: {e}"), false);
            }
        }
    }

    fn request_status(&mut self) {
        let ready = self.workers.as_ref().is_some_and(WorkerSet::ready);
        if !ready {
            return self.log_status(None);
        }
        if let Some(ws) = self.workers.as_mut() {
            if let Err(e) = ws.classifier.queue(&ParentToClassifier::StatusRequest) {
                self.worker_failed(format!("sending StatusRequest: {e}"), false);
                return self.log_status(None);
            }
            self.status_wanted = true;
        }
    }

    /// SIGTERM/SIGINT: stop accepting, close the listeners and every connection still waiting,
    /// stop the workers; running services are left alone (they are not our process group's
    /// business to kill, as with inetd).
    fn shutdown(&mut self) {
        self.accepting = false;
        let addrs: Vec<String> = self.listeners.iter().map(|l| l.addr.to_string()).collect();
        self.listeners.clear();
        self.pending.0.clear();
        if let Some(ws) = self.workers.take() {
            let _ = kill(ws.cpid, Signal::SIGTERM);
            let _ = kill(ws.rpid, Signal::SIGTERM);
        }
        log::notice(&format!(
            "stopping: closed {}; {} services left running",
            addrs.join(" "),
            self.services.len()
        ));
        for w in self.msgs.drain(..) {
            let _ = w.into_inner().shutdown(std::net::Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_budget_allows_the_limit_then_summarises_the_rest() {
        let mut b = LogBudget::default();
        let t0 = Instant::now();
        for i in 0..LOG_LINES_PER_SEC {
            assert_eq!(b.admit(t0), (true, None), "line {i}");
        }
        // limit + 1 and beyond: dropped and counted.
        assert_eq!(b.admit(t0), (false, None));
        assert_eq!(b.admit(t0 + Duration::from_millis(999)), (false, None));
        // The next window reports the two dropped lines and lets lines through again.
        assert_eq!(b.admit(t0 + Duration::from_secs(1)), (true, Some(2)));
        assert_eq!(b.admit(t0 + Duration::from_secs(1)), (true, None));
    }
}
