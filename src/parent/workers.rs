//! Worker lifecycle, generic over the role table (privsep's `ROLES`): starting a restart group
//! (the roles that share socketpairs, started together), one typed [`Worker`] per running role
//! with its channel, pid, handshake state and log budget, and restart back-off.
//!
//! Runs in the parent. Nothing here interprets a worker's messages (admission and the handlers
//! do); [`Worker::recv`] only returns decoded messages or a [`Failure`], and never calls back
//! into the parent: roles.rs decides what a failure means.
//!
//! A group is always restarted together: its worker-to-worker socketpairs are made by the
//! parent when it spawns them, and no member can be given a new peer later. Each group backs off
//! on its own ([`Restarts`], one [`Backoff`] per group): from [`BACKOFF_MIN`] doubling to
//! [`BACKOFF_MAX`]; a group that stayed up for [`STABLE_AFTER`] resets the delay. More than
//! [`MAX_RESTARTS`] restarts within [`RESTART_WINDOW`] gives the group up, as its role says
//! (roles.rs): the classifier's group makes the parent exit 111, as does a group that dies
//! before it ever came up (serving without a classifier is not an option, fail closed, and a
//! supervisor restart is more useful than a busy loop); the sentry is stopped; the control and
//! netfilter workers are tried again after [`RETRY_LATER`].

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use privsep::{spawn_worker, Channel, ChannelError, Peer, Role};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::args::RoleArgs;
use crate::log::{self, Level};

/// First restart delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A group that ran this long resets the back-off.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Restarts allowed within [`RESTART_WINDOW`] before the group is given up.
pub const MAX_RESTARTS: usize = 8;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How long a group that was given up waits before it is tried again (when its role retries).
pub const RETRY_LATER: Duration = Duration::from_secs(60);
/// How long a freshly started group has to say Hello (and the classifier to load its policy).
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Worker log lines allowed per second per worker; more are counted and summarised, so a
/// compromised worker cannot flood syslog.
pub const LOG_LINES_PER_SEC: u32 = 200;

/// Why a worker must be killed and its group restarted.
#[derive(Debug)]
pub struct Failure {
    pub role: Role,
    pub why: String,
    /// The worker broke the protocol (LOG_CRIT: it may be compromised).
    pub violation: bool,
}

impl Failure {
    pub fn new(role: Role, why: impl Into<String>) -> Failure {
        Failure {
            role,
            why: why.into(),
            violation: false,
        }
    }

    pub fn violation(role: Role, why: impl Into<String>) -> Failure {
        Failure {
            role,
            why: why.into(),
            violation: true,
        }
    }

    fn channel(role: Role, doing: &str, e: ChannelError) -> Failure {
        match e {
            ChannelError::Violation(v) => {
                Failure::violation(role, format!("the {role} sent a bad frame: {v}"))
            }
            ChannelError::Closed => Failure::new(role, format!("the {role} closed its channel")),
            e => Failure::new(role, format!("{doing} the {role}: {e}")),
        }
    }
}

/// Per-worker log flood limiter.
#[derive(Debug, Default)]
pub struct LogBudget {
    window: Option<Instant>,
    lines: u32,
    dropped: u64,
}

impl LogBudget {
    /// Whether a line may be logged now; returns a summary line to log when a window of
    /// suppression ends.
    pub fn admit(&mut self, now: Instant) -> (bool, Option<u64>) {
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

/// A running worker: `S` is what the parent sends it, `R` what it sends the parent.
#[derive(Debug)]
pub struct Worker<S, R> {
    pub role: Role,
    pub pid: Pid,
    chan: Channel<S, R>,
    /// It sent its Hello.
    pub hello: bool,
    pub started: Instant,
    budget: LogBudget,
}

impl<S: Serialize, R: DeserializeOwned> Worker<S, R> {
    pub fn new(w: Started) -> Worker<S, R> {
        Worker {
            role: w.role,
            pid: w.pid,
            chan: Channel::from_fd(w.parent_end),
            hello: false,
            started: w.started,
            budget: LogBudget::default(),
        }
    }

    /// The next message, if one is complete.
    pub fn recv(&mut self) -> Result<Option<R>, Failure> {
        self.chan
            .try_recv()
            .map_err(|e| Failure::channel(self.role, "reading from", e))
    }

    /// Queues a message without writing it; the poll loop flushes every worker once per turn
    /// (`flush_links`), so a turn's messages cost the worker one wakeup. `what` names it in the
    /// failure.
    pub fn queue(&mut self, msg: &S, what: &str) -> Result<(), Failure> {
        self.chan.defer(msg).map_err(|e| {
            Failure::new(
                self.role,
                format!("sending {what} to the {}: {e}", self.role),
            )
        })
    }

    pub fn flush(&mut self) -> Result<(), Failure> {
        self.chan
            .flush()
            .map_err(|e| Failure::channel(self.role, "writing to", e))
    }

    /// A worker's Hello: exactly once, carrying the parent's own build.
    pub fn greeted(
        &mut self,
        ours: &privsep::proto::BuildId,
        theirs: &privsep::proto::BuildId,
    ) -> Result<(), Failure> {
        let refuse = |why: &str| {
            Failure::violation(self.role, format!("{} Hello refused: {why}", self.role))
        };
        if self.hello {
            return Err(refuse("second Hello"));
        }
        if theirs != ours {
            return Err(refuse("build id differs from the parent's"));
        }
        self.hello = true;
        Ok(())
    }

    /// A worker's log record (after its Hello), refused when longer than a log line may be.
    pub fn relay_log(&mut self, rec: privsep::proto::LogRecord) -> Result<(), Failure> {
        if rec.text.len() > privsep::proto::MAX_LOG_LINE {
            return Err(Failure::violation(
                self.role,
                format!("{} Log refused: line too long", self.role),
            ));
        }
        self.log(rec.level, rec.verbosity, &rec.text);
        Ok(())
    }

    /// A worker's log line: escaped, prefixed with the role and rate-limited.
    pub fn log(&mut self, level: Level, verbosity: u8, text: &str) {
        if !log::enabled(verbosity) {
            return;
        }
        let (ok, summary) = self.budget.admit(Instant::now());
        if let Some(n) = summary {
            log::warn(&format!(
                "{}: {n} log lines suppressed (more than {LOG_LINES_PER_SEC}/s)",
                self.role
            ));
        }
        if ok {
            log::write(level, &log::worker_line(self.role.as_str(), text));
        }
    }
}

/// What the poll loop needs of any worker, whatever its message types.
pub trait Link {
    fn role(&self) -> Role;
    fn pid(&self) -> Pid;
    fn fd(&self) -> BorrowedFd<'_>;
    /// POLLIN, plus POLLOUT while queued bytes wait.
    fn events(&self) -> PollFlags;
    /// Whole frames already read from the socket (poll cannot see them).
    fn has_buffered(&self) -> bool;
    fn write_queued(&mut self) -> Result<(), Failure>;
}

impl<S: Serialize, R: DeserializeOwned> Link for Worker<S, R> {
    fn role(&self) -> Role {
        self.role
    }
    fn pid(&self) -> Pid {
        self.pid
    }
    fn fd(&self) -> BorrowedFd<'_> {
        self.chan.as_fd()
    }
    fn events(&self) -> PollFlags {
        if self.chan.wants_write() {
            PollFlags::POLLIN | PollFlags::POLLOUT
        } else {
            PollFlags::POLLIN
        }
    }
    fn has_buffered(&self) -> bool {
        self.chan.has_buffered()
    }
    fn write_queued(&mut self) -> Result<(), Failure> {
        self.flush()
    }
}

fn pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// The credentials and root the workers drop to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerPlan {
    pub uid: u32,
    pub gid: u32,
    /// The empty root for roles whose row asks for a chroot (None in non-root mode).
    pub chroot: Option<std::path::PathBuf>,
}

/// A worker just started: its pid and the parent's end of its channel (non-blocking).
#[derive(Debug)]
pub struct Started {
    pub role: Role,
    pub pid: Pid,
    pub parent_end: OwnedFd,
    pub started: Instant,
}

/// Starts every role of `group` with the channels their rows name: one socketpair to the
/// parent each, and one per pair of members that talk to each other. Nothing has been sent yet.
/// On failure every member already started is killed.
/// `clients` is the listening control socket, for a row that receives it; `xmlrpc` the
/// XML-RPC listener for a row with [`Peer::XmlrpcClients`] (None: /dev/null in its place).
pub fn start_group(
    plan: &WorkerPlan,
    group: &[Role],
    clients: Option<std::os::fd::BorrowedFd<'_>>,
    xmlrpc: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<Vec<Started>, String> {
    // Each member's descriptors, in its row's fd order.
    let mut child_fds: Vec<Vec<Option<OwnedFd>>> = Vec::with_capacity(group.len());
    let mut parent_ends: Vec<OwnedFd> = Vec::with_capacity(group.len());
    for role in group {
        let chans = role.profile().channels;
        let mut fds: Vec<Option<OwnedFd>> = chans.iter().map(|_| None).collect();
        let (ours, theirs) = pair().map_err(|e| format!("socketpair: {e}"))?;
        parent_ends.push(ours);
        if let Some(slot) = fds.first_mut() {
            *slot = Some(theirs);
        }
        for (k, peer) in chans.iter().enumerate() {
            if *peer == Peer::XmlrpcClients {
                let fd = match xmlrpc {
                    Some(fd) => fd.try_clone_to_owned(),
                    None => std::fs::File::open("/dev/null").map(OwnedFd::from),
                }
                .map_err(|e| format!("{role}: the xmlrpc descriptor: {e}"))?;
                if let Some(slot) = fds.get_mut(k) {
                    *slot = Some(fd);
                }
                continue;
            }
            if *peer != Peer::ControlClients {
                continue;
            }
            let Some(fd) = clients else {
                return Err(format!("{role} needs the control socket"));
            };
            let fd = fd
                .try_clone_to_owned()
                .map_err(|e| format!("{role}: dup of the control socket: {e}"))?;
            if let Some(slot) = fds.get_mut(k) {
                *slot = Some(fd);
            }
        }
        child_fds.push(fds);
    }
    // Worker-to-worker pairs: made once, from the member that comes first in the group.
    for (i, role) in group.iter().enumerate() {
        for (k, peer) in role.profile().channels.iter().enumerate() {
            let Peer::Worker(other) = *peer else { continue };
            let Some(j) = group.iter().position(|r| *r == other) else {
                return Err(format!("{role} needs {other}, which is not in its group"));
            };
            if j < i {
                continue;
            }
            let Some(back) = other
                .profile()
                .channels
                .iter()
                .position(|p| *p == Peer::Worker(*role))
            else {
                return Err(format!("{other} has no channel to {role}"));
            };
            let (a, b) = pair().map_err(|e| format!("socketpair: {e}"))?;
            if let Some(slot) = child_fds.get_mut(i).and_then(|f| f.get_mut(k)) {
                *slot = Some(a);
            }
            if let Some(slot) = child_fds.get_mut(j).and_then(|f| f.get_mut(back)) {
                *slot = Some(b);
            }
        }
    }
    let mut started: Vec<Started> = Vec::with_capacity(group.len());
    let kill_all = |started: &[Started]| {
        for s in started {
            let _ = kill(s.pid, Signal::SIGKILL);
        }
    };
    for ((role, fds), ours) in group.iter().zip(child_fds).zip(parent_ends) {
        let Some(fds) = fds.into_iter().collect::<Option<Vec<OwnedFd>>>() else {
            kill_all(&started);
            return Err(format!("{role}: a channel has no peer"));
        };
        let args = RoleArgs {
            uid: plan.uid,
            gid: plan.gid,
            chroot: plan.chroot.clone().filter(|_| role.profile().chroot),
        }
        .to_words();
        let w = match spawn_worker(*role, fds, &args) {
            Ok(w) => w,
            Err(e) => {
                kill_all(&started);
                return Err(format!("cannot start the {role}: {e}"));
            }
        };
        if let Err(e) = nix::fcntl::fcntl(
            &ours,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        ) {
            let _ = kill(w.pid, Signal::SIGKILL);
            kill_all(&started);
            return Err(format!("{role} channel: {e}"));
        }
        started.push(Started {
            role: *role,
            pid: w.pid,
            parent_end: ours,
            started: Instant::now(),
        });
    }
    Ok(started)
}

/// Every restart group's back-off, kept under the group's first role, so the members of a
/// group (the classifier and the resolver) back off as one.
#[derive(Debug, Default)]
pub struct Restarts {
    groups: BTreeMap<Role, Backoff>,
}

/// The role a group's back-off is kept under.
fn leader(role: Role) -> Role {
    role.restart_group().first().copied().unwrap_or(role)
}

impl Restarts {
    /// Records a failure of `role`'s group, started at `started`: the delay before its restart,
    /// or Err when restarts come too fast to go on.
    pub fn failed(
        &mut self,
        role: Role,
        started: Instant,
        now: Instant,
    ) -> Result<Duration, String> {
        self.groups
            .entry(leader(role))
            .or_default()
            .failed(started, now)
    }

    /// After giving up: `role`'s group is tried again after [`RETRY_LATER`].
    pub fn retry_later(&mut self, role: Role, now: Instant) {
        self.groups.entry(leader(role)).or_default().due = Some(now + RETRY_LATER);
    }

    /// The groups with a restart scheduled (by their first role, in role order) and when.
    pub fn scheduled(&self) -> impl Iterator<Item = (Role, Instant)> + '_ {
        self.groups
            .iter()
            .filter_map(|(role, b)| b.due.map(|at| (*role, at)))
    }

    /// `role`'s group is being started now.
    pub fn clear(&mut self, role: Role) {
        if let Some(b) = self.groups.get_mut(&leader(role)) {
            b.due = None;
        }
    }
}

/// Starts a role that restarts alone (see [`start_group`]).
pub fn start_one(
    plan: &WorkerPlan,
    role: Role,
    clients: Option<BorrowedFd<'_>>,
    xmlrpc: Option<BorrowedFd<'_>>,
) -> Result<Started, String> {
    start_group(plan, &[role], clients, xmlrpc)?
        .pop()
        .ok_or_else(|| format!("the {role} did not start"))
}

/// Restart timing of one group.
#[derive(Debug)]
pub struct Backoff {
    delay: Duration,
    recent: VecDeque<Instant>,
    /// When the next start is due (None: no restart pending).
    pub due: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delay: BACKOFF_MIN,
            recent: VecDeque::new(),
            due: None,
        }
    }
}

impl Backoff {
    /// Records a failure of a group started at `started`; returns Err when restarts come too
    /// fast to go on.
    pub fn failed(&mut self, started: Instant, now: Instant) -> Result<Duration, String> {
        if now.duration_since(started) >= STABLE_AFTER {
            self.delay = BACKOFF_MIN;
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() > MAX_RESTARTS {
            return Err(format!(
                "workers failed {} times within {} seconds; giving up",
                self.recent.len(),
                RESTART_WINDOW.as_secs()
            ));
        }
        let d = self.delay;
        self.due = Some(now + d);
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
        Ok(d)
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

    #[test]
    fn backoff_doubles_caps_and_gives_up() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        let mut delays = Vec::new();
        for i in 0..MAX_RESTARTS {
            let now = t0 + Duration::from_millis(i as u64);
            delays.push(b.failed(now, now).unwrap());
        }
        assert_eq!(delays[0], BACKOFF_MIN);
        assert_eq!(delays[1], BACKOFF_MIN * 2);
        assert!(delays.iter().all(|d| *d <= BACKOFF_MAX));
        let now = t0 + Duration::from_secs(1);
        assert!(b.failed(now, now).is_err());
    }

    #[test]
    fn a_group_backs_off_as_one_and_each_group_on_its_own() {
        let mut r = Restarts::default();
        let t0 = Instant::now();
        // The resolver's failure schedules the classifier's group, under its first role.
        assert_eq!(r.failed(Role::Resolver, t0, t0), Ok(BACKOFF_MIN));
        assert_eq!(r.failed(Role::Classifier, t0, t0), Ok(BACKOFF_MIN * 2));
        assert_eq!(r.failed(Role::Sentry, t0, t0), Ok(BACKOFF_MIN));
        let due: Vec<(Role, Instant)> = r.scheduled().collect();
        assert_eq!(
            due,
            vec![
                (Role::Classifier, t0 + BACKOFF_MIN * 2),
                (Role::Sentry, t0 + BACKOFF_MIN)
            ]
        );
        r.clear(Role::Resolver);
        r.retry_later(Role::Control, t0);
        let due: Vec<(Role, Instant)> = r.scheduled().collect();
        assert_eq!(
            due,
            vec![
                (Role::Sentry, t0 + BACKOFF_MIN),
                (Role::Control, t0 + RETRY_LATER)
            ]
        );
    }

    #[test]
    fn backoff_resets_after_a_stable_run_and_forgets_old_failures() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        b.failed(t0, t0).unwrap();
        b.failed(t0, t0).unwrap();
        let later = t0 + STABLE_AFTER + Duration::from_secs(1);
        assert_eq!(b.failed(t0, later).unwrap(), BACKOFF_MIN);
        // Failures spread wider than the window never trip the limit.
        let mut b = Backoff::default();
        for i in 0..(MAX_RESTARTS * 3) {
            let now = t0 + RESTART_WINDOW * (i as u32);
            assert!(b.failed(now, now).is_ok());
        }
        assert_eq!(b.due.map(|d| d > t0), Some(true));
    }
}
