//! The parent process: binds, accepts, hands each connection to the classifier, acts on the
//! admitted verdict, reaps, reloads and restarts workers. One thread, one loop, waiting in
//! `epoll_wait` on a set kept between turns (interest.rs).
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
//! handed on; the one exception is a PROXY header from a listed load balancer, framed and
//! bounded by proxy.rs), worker messages (admitted before use), the administrator's files.
//!
//! Layout: this file holds the loop; interest.rs its epoll set; start.rs builds the [`Parent`];
//! roles.rs is the parent's side of privsep's role table, with the one receive loop every worker is
//! read through and every restart decision (which group to kill, back-off, giving up); workers.rs
//! starts and talks to the workers and keeps each restart group's back-off; from_classifier.rs,
//! from_resolver.rs, from_sentry.rs, from_control.rs and from_netfilter.rs admit each peer's
//! messages, run their handlers and say what their side forgets when its worker dies; accept.rs,
//! verdict.rs and reap.rs move a connection through the one live-connection table in conns.rs;
//! generations.rs keeps the policy generations and generation_loop.rs reloads them, ships them and
//! rolls back to the last one that ran; memory.rs gives a large policy's memory back.
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

mod accept;
mod activation;
pub mod admit;
pub mod blockcmd;
pub mod blocker;
pub mod blocks;
mod classhost;
mod confwatch;
pub mod conns;
mod counters;
mod ctlsock;
mod ending;
mod from_classifier;
mod from_control;
mod from_netfilter;
mod from_resolver;
mod from_sentry;
mod generation_loop;
pub mod generations;
pub mod hostsdeny;
mod interest;
pub mod listen;
mod loader;
mod memory;
pub mod msgwrite;
pub mod neverblock;
mod proxy;
mod proxy_header;
mod reap;
pub mod reload;
mod roles;
mod sdnotify;
pub mod setup;
mod signalled;
pub mod signals;
pub mod spawn;
mod start;
pub mod status;
pub mod traps;
mod verdict;
pub mod workers;
mod xmlrpc;

use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use interest::Interest;
use nix::errno::Errno;
use nix::poll::{PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use policy::conf::OnFileError;
use privsep::proto::{
    BuildId, ClassifierSettings, ClassifierToParent, ParentToClassifier, ParentToResolver,
    ResolverSettings, ResolverToParent,
};
use privsep::Role;

use crate::args::Args;
use crate::exit::{Error, Result};
use crate::log;
use conns::Conns;
use from_classifier::Shipped;
use generations::Generations;
use listen::Listener;
use spawn::Creds;
use verdict::finish_msg;
use workers::{Failure, Restarts, Worker, WorkerPlan};

/// Connections waiting for a verdict. Each holds a socket; beyond this a new connection is
/// closed at once and logged, so a stalled classifier cannot make the parent run out of
/// descriptors (s6 `ABSOLUTE_MAXCONN`, bgpd `MAX_CONNECT_CNT`).
pub const MAX_PENDING: usize = 4096;

/// Worker messages handled per worker per loop turn, for the same fairness.
const RECV_BATCH: usize = 512;

/// How often the rules and actions files are stat'ed.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Longest a connection may wait for its verdict. Every lookup the classifier makes has its
/// own timeout (seconds), so even a long chain of them finishes well within this; a connection
/// older than this means the classifier is stuck, and it is restarted like a dead one.
const VERDICT_DEADLINE: Duration = Duration::from_secs(300);

/// Settings from the command line and nanny.conf that the loop needs.
struct Settings {
    onfileerror: OnFileError,
    substitutions: bool,
    classifier: ClassifierSettings,
    resolver: ResolverSettings,
}

struct Parent {
    build: BuildId,
    settings: Settings,
    listeners: Vec<Listener>,
    accepting: bool,
    accept_paused_until: Option<Instant>,
    /// Poll loop turns so far (accept.rs tells a backlog from a new arrival by it).
    turn: u64,
    /// accept(2) is failing for lack of resources (logged once per episode).
    exhausted: Option<accept::Exhausted>,
    next_conn: u64,
    lifetime: u64,
    /// Every live connection: pending, running, or having its message written.
    conns: Conns,
    /// Connections to be ended at a time (timeouts, kills waiting out their grace).
    endings: ending::Endings,
    /// The control socket and its worker (`control` in nanny.conf).
    control: Option<from_control::ControlSide>,
    /// The netfilter worker (`conntrack on` or `blockflush on` in nanny.conf).
    netfilter: Option<from_netfilter::NetfilterSide>,
    counters: counters::Counters,
    classifier: Option<Worker<ParentToClassifier, ClassifierToParent>>,
    resolver: Option<Worker<ParentToResolver, ResolverToParent>>,
    /// Stealth detection (only with `stealth` lines), restarted alone.
    sentry: Option<Worker<privsep::proto::ParentToSentry, privsep::proto::SentryToParent>>,
    /// What it watches; None: no sentry (not configured, or given up).
    sentry_settings: Option<privsep::proto::SentrySettings>,
    /// The generations shipped to the running classifier.
    shipped: Shipped,
    /// Whether the workers were ever ready (a group that never comes up is fatal at start).
    ever_ready: bool,
    plan: WorkerPlan,
    /// Every restart group's back-off.
    restarts: Restarts,
    /// When the running group was started.
    group_started: Option<Instant>,
    /// Worker failures since the current generation was shipped.
    failed_since_ship: u32,
    policy: Generations,
    /// The blocked set and everything that mirrors it (sentry).
    blocker: blocker::Blocker,
    /// `trap udp` sockets (TCP traps are among the listeners).
    udp_traps: Vec<traps::UdpTrap>,
    conf_watch: confwatch::ConfWatch,
    next_reload: Instant,
    creds: Option<Creds>,
    last_log: Option<String>,
    status_wanted: bool,
    signals: signals::Signals,
    /// Set when something happened that the daemon cannot go on after; the loop returns it.
    fatal: Option<String>,
    /// The service manager's notifications (systemd `Type=notify`).
    notify: sdnotify::Notifier,
}

/// Runs the parent until SIGTERM/SIGINT (exit 0) or a fatal error.
pub fn run(args: &Args) -> Result<ExitCode> {
    let mut p = start::prepare(args)?;
    p.start_workers()?;
    p.start_sentry()?;
    p.start_control()?;
    p.start_netfilter()?;
    let addrs: Vec<String> = p.listeners.iter().map(|l| l.addr.to_string()).collect();
    log::notice(&format!(
        "started: listening on {}; policy generation {}",
        addrs.join(" "),
        p.policy.gen.0
    ));
    p.run_loop()?;
    Ok(ExitCode::SUCCESS)
}

/// What a descriptor the loop waits on is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Slot {
    Signals,
    Loader,
    BlockCmd,
    UdpTrap(usize),
    Worker(Role),
    Listener(usize),
    /// A connection whose message waits for its socket to take more.
    Msg(privsep::proto::ConnId),
    /// A connection awaiting its PROXY header.
    Header(privsep::proto::ConnId),
}

impl Parent {
    // ---- the loop -----------------------------------------------------------------------

    /// Says what this turn waits on and waits up to `timeout`: the slots that are ready, with
    /// what poll(2) would have said of them (interest.rs keeps the set between turns).
    fn wait_turn(
        &self,
        set: &mut Interest<Slot>,
        timeout: PollTimeout,
    ) -> nix::Result<Vec<(Slot, PollFlags)>> {
        let accept_now =
            self.accepting && self.accept_paused_until.is_none() && self.workers_ready();
        set.begin();
        let key = |slot, id| interest::Key { slot, id };
        set.want(
            key(Slot::Signals, 0),
            self.signals.as_fd(),
            PollFlags::POLLIN,
            false,
        )?;
        if let Some((fd, serial)) = self.policy.loader_fd() {
            set.want(key(Slot::Loader, serial), fd, PollFlags::POLLIN, false)?;
        }
        if let Some((fd, pid)) = self.blocker.runner_fd() {
            let id = u64::try_from(pid.as_raw()).unwrap_or(0);
            set.want(key(Slot::BlockCmd, id), fd, PollFlags::POLLIN, false)?;
        }
        for w in self.links() {
            let id = u64::try_from(w.pid().as_raw()).unwrap_or(0);
            set.want(key(Slot::Worker(w.role()), id), w.fd(), w.events(), false)?;
        }
        if accept_now {
            for (i, l) in self.listeners.iter().enumerate() {
                set.want(
                    key(Slot::Listener(i), 0),
                    l.sock.as_fd(),
                    PollFlags::POLLIN,
                    false,
                )?;
            }
            for (i, t) in self.udp_traps.iter().enumerate() {
                set.want(
                    key(Slot::UdpTrap(i), 0),
                    t.sock.as_fd(),
                    PollFlags::POLLIN,
                    false,
                )?;
            }
        }
        let writers = self
            .conns
            .writers()
            .map(|w| (Slot::Msg(w.conn), w.get_ref().as_fd(), PollFlags::POLLOUT));
        // Headers are read only for a classifier to hand them to (else they wait, on their
        // deadline).
        let read_headers = self.conns.headers_len() > 0 && self.workers_ready();
        let headers = self
            .conns
            .headers()
            .filter(|_| read_headers)
            .map(|(id, r)| (Slot::Header(id), r.stream().as_fd(), PollFlags::POLLIN));
        for (slot, fd, events) in writers.chain(headers) {
            // One-shot: a service may hold a connection's socket after the parent closed its
            // copy (interest.rs). A socket the kernel will not watch (out of epoll watches) is
            // left to its deadline; it does not end the daemon.
            if let Err(e) = set.want(key(slot, 0), fd, events, true) {
                log::debug(1, &format!("cannot watch {slot:?}: {e}"));
            }
        }
        let mut fired = Vec::new();
        set.wait(timeout, &mut fired)?;
        Ok(fired)
    }

    fn run_loop(&mut self) -> Result<()> {
        let mut set = Interest::new().map_err(|e| Error::system("epoll_create1", e))?;
        loop {
            self.turn += 1;
            if let Some(f) = self.fatal.take() {
                return Err(Error::System(f));
            }
            let now = Instant::now();
            if self.restart_due(now)? {
                continue;
            }
            if let Some(t) = self.group_started.filter(|_| !self.workers_ready()) {
                if now.duration_since(t) > workers::START_TIMEOUT {
                    self.worker_failed(Failure::new(
                        Role::Classifier,
                        "the workers did not come up in time",
                    ));
                    continue;
                }
            }
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
            }

            // This turn's messages to the workers were only queued (Worker::queue): one write
            // per worker now, before the loop sleeps, instead of one per message.
            if let Err(f) = self.flush_links() {
                self.worker_failed(f);
                continue;
            }

            let timeout = self.poll_timeout(now);
            let fired = match self.wait_turn(&mut set, timeout) {
                Ok(f) => f,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::system("epoll", e)),
            };

            let now = Instant::now();
            let mut msg_ready = Vec::new();
            let mut header_ready = Vec::new();
            let mut signalled = false;
            for (slot, rev) in &fired {
                match slot {
                    Slot::Signals => signalled = true,
                    Slot::Loader => self.loaded(),
                    Slot::BlockCmd => self.blocker.runner().on_output(),
                    Slot::UdpTrap(i) => self.on_udp_trap(*i),
                    Slot::Worker(role) => self.on_worker_ready(*role, *rev),
                    Slot::Listener(i) => {
                        if let Err(f) = self.accept_from(*i) {
                            self.worker_failed(f);
                        }
                    }
                    Slot::Msg(i) => msg_ready.push(*i),
                    Slot::Header(id) => header_ready.push(*id),
                }
            }
            if self.conns.headers_len() > 0 {
                if let Err(f) = self.read_headers(&header_ready, now) {
                    self.worker_failed(f);
                }
                self.expire_headers(Instant::now());
            }
            // A batch that ended early can leave whole frames in a channel's buffer, where epoll
            // cannot see them (poll_timeout made this turn not wait for them). If a worker
            // failed just now, its group was restarted and this reads nothing.
            let buffered: Vec<Role> = self
                .links()
                .filter(|w| w.has_buffered())
                .map(|w| w.role())
                .filter(|r| !fired.iter().any(|(s, _)| *s == Slot::Worker(*r)))
                .collect();
            for role in buffered {
                if let Err(f) = self.serve(role) {
                    self.worker_failed(f);
                }
            }
            msg_ready.sort_unstable();
            for (w, how) in self.conns.advance_writers(&msg_ready, now) {
                finish_msg(w, how);
            }
            // One clock read for the turn's timers (a read costs more than the comparisons).
            let now = Instant::now();
            self.fire_endings(now);
            self.notify_turn(now);
            if signalled && self.on_signals() {
                return Ok(());
            }
            if now >= self.next_reload {
                self.check_verdict_deadline(now);
                self.expire_asks(now);
                self.expire_netfilter(now);
                self.note_good_policy(now);
                self.end_exhaustion(now);
                let ended = self.blocker.tick(now);
                if let Err(f) = self.mirror_blocks(ended, false) {
                    self.worker_failed(f);
                }
                if self.exhausted.is_some() || self.conns.pending_len() >= MAX_PENDING / 2 {
                    if let Err(f) = self.close_gone() {
                        self.worker_failed(f);
                    }
                }
                self.prune_tables();
                self.reload(false);
                self.next_reload = Instant::now() + RELOAD_EVERY;
            }
        }
    }

    fn on_worker_ready(&mut self, role: Role, rev: PollFlags) {
        if rev.contains(PollFlags::POLLOUT) {
            if let Some(Err(f)) = self.link_mut(role).map(|w| w.write_queued()) {
                return self.worker_failed(f);
            }
        }
        if rev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            if let Err(f) = self.serve(role) {
                self.worker_failed(f);
            }
        }
    }

    /// A classifier that leaves a connection without a verdict for [`VERDICT_DEADLINE`] is
    /// treated as hung: restarted, its pending connections closed.
    fn check_verdict_deadline(&mut self, now: Instant) {
        let Some(limit) = now.checked_sub(VERDICT_DEADLINE) else {
            return;
        };
        if let Some(conn) = self.conns.pending_since(limit) {
            self.worker_failed(Failure::new(
                Role::Classifier,
                format!(
                    "no verdict for conn={} within {} seconds: the classifier is stuck",
                    conn.0,
                    VERDICT_DEADLINE.as_secs()
                ),
            ));
        }
    }

    fn poll_timeout(&self, now: Instant) -> PollTimeout {
        if self.links().any(|w| w.has_buffered()) {
            return PollTimeout::ZERO;
        }
        let mut until = self.next_reload;
        if let Some(d) = self.next_restart() {
            until = until.min(d);
        }
        if let Some(t) = self.accept_paused_until {
            until = until.min(t);
        }
        if let Some(t) = self.group_started.filter(|_| !self.workers_ready()) {
            until = until.min(t + workers::START_TIMEOUT + Duration::from_millis(1));
        }
        if let Some(d) = self.conns.writers().map(|w| w.deadline()).min() {
            until = until.min(d);
        }
        if let Some(d) = self.blocker.runner_deadline() {
            until = until.min(d);
        }
        if let Some(d) = self.endings.next() {
            until = until.min(d);
        }
        if let Some(d) = self.notify.next_ping() {
            until = until.min(d);
        }
        if let Some(d) = self.next_header_deadline() {
            until = until.min(d);
        }
        let ms = until.saturating_duration_since(now).as_millis();
        // Round up so the loop does not wake a hair early and spin.
        let ms = u16::try_from(ms.saturating_add(1)).unwrap_or(u16::MAX);
        PollTimeout::from(ms)
    }

    /// SIGTERM/SIGINT: stop accepting, close the listeners and every connection still waiting,
    /// stop the workers; running services are left alone (they are not our process group's
    /// business to kill, as with inetd).
    fn shutdown(&mut self) {
        self.notify.stopping();
        self.accepting = false;
        let addrs: Vec<String> = self.listeners.iter().map(|l| l.addr.to_string()).collect();
        self.listeners.clear();
        self.conns.drop_pending();
        self.drop_headers();
        let every: Vec<Role> = privsep::ROLES.iter().map(|p| p.role).collect();
        for (pid, _) in self.take_workers(&every) {
            let _ = kill(pid, Signal::SIGTERM);
        }
        if let Some(c) = self.control.as_mut() {
            c.socket.remove();
        }
        log::notice(&format!(
            "stopping: closed {}; {} services left running",
            addrs.join(" "),
            self.conns.running_len()
        ));
        for w in self.conns.drain_writers() {
            let _ = w.into_inner().shutdown(std::net::Shutdown::Both);
        }
    }
}
