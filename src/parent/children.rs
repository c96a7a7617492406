//! Worker lifecycle: starting the classifier and resolver as a pair, and restarting them with
//! exponential back-off when either dies or misbehaves.
//!
//! Runs in the parent. Nothing here reads a worker's bytes (admission does); this module only
//! creates the socketpairs, re-execs the binary in its worker roles and keeps the timing.
//!
//! The pair is always restarted together: the classifier↔resolver socketpair is made by the
//! parent when it spawns them, and neither can be given a new peer later. Restarts back off
//! from [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`]; a pair that stayed up for [`STABLE_AFTER`]
//! resets the delay. More than [`MAX_RESTARTS`] restarts within [`RESTART_WINDOW`], or a pair
//! that dies before it ever came up, makes the parent exit 111: serving without a classifier is
//! not an option (fail closed) and a supervisor restart is more useful than a busy loop.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use privsep::proto::{
    ClassifierToParent, Gen, ParentToClassifier, ParentToResolver, ResolverToParent,
};
use privsep::{spawn_worker, Channel, Role};

use crate::args::RoleArgs;

/// First restart delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A pair that ran this long resets the back-off.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Restarts allowed within [`RESTART_WINDOW`] before the parent gives up (exit 111).
pub const MAX_RESTARTS: usize = 8;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How long a freshly started pair has to say Hello (and the classifier to load its policy).
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

pub type ClassifierChan = Channel<ParentToClassifier, ClassifierToParent>;
pub type ResolverChan = Channel<ParentToResolver, ResolverToParent>;

/// A running classifier + resolver pair and what the parent knows of their state.
pub struct WorkerSet {
    pub classifier: ClassifierChan,
    pub resolver: ResolverChan,
    pub cpid: Pid,
    pub rpid: Pid,
    pub c_hello: bool,
    pub r_hello: bool,
    /// The generation of the first Policy sent to this classifier.
    pub first_sent: Gen,
    /// The newest generation sent to it.
    pub latest_sent: Gen,
    /// The newest generation it acknowledged.
    pub acked: Option<Gen>,
    pub started: Instant,
}

impl WorkerSet {
    /// Ready to classify: both said Hello and the classifier loaded its first policy.
    pub fn ready(&self) -> bool {
        self.c_hello && self.r_hello && self.acked.is_some()
    }

    /// SIGKILLs both (they may already be dead; the reaper collects them).
    pub fn kill(&self) {
        let _ = kill(self.cpid, Signal::SIGKILL);
        let _ = kill(self.rpid, Signal::SIGKILL);
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
    /// The classifier's empty root (None in non-root mode).
    pub chroot: Option<std::path::PathBuf>,
}

/// Creates the three socketpairs and starts both workers. The channels come back non-blocking;
/// nothing has been sent yet.
pub fn start(plan: &WorkerPlan, gen: Gen) -> Result<WorkerSet, String> {
    let (pc_parent, pc_child) = pair().map_err(|e| format!("socketpair: {e}"))?;
    let (pr_parent, pr_child) = pair().map_err(|e| format!("socketpair: {e}"))?;
    let (cr_c, cr_r) = pair().map_err(|e| format!("socketpair: {e}"))?;
    let cargs = RoleArgs {
        uid: plan.uid,
        gid: plan.gid,
        chroot: plan.chroot.clone(),
    }
    .to_words();
    let rargs = RoleArgs {
        uid: plan.uid,
        gid: plan.gid,
        chroot: None,
    }
    .to_words();
    // Fd layout (contract): classifier fd3 = parent, fd4 = resolver; resolver fd3 = parent,
    // fd4 = classifier.
    let c = spawn_worker(Role::Classifier, vec![pc_child, cr_c], &cargs)
        .map_err(|e| format!("cannot start the classifier: {e}"))?;
    let r = match spawn_worker(Role::Resolver, vec![pr_child, cr_r], &rargs) {
        Ok(r) => r,
        Err(e) => {
            let _ = kill(c.pid, Signal::SIGKILL);
            return Err(format!("cannot start the resolver: {e}"));
        }
    };
    let classifier: ClassifierChan = Channel::from_fd(pc_parent);
    let resolver: ResolverChan = Channel::from_fd(pr_parent);
    let nb = classifier
        .set_nonblocking(true)
        .and_then(|()| resolver.set_nonblocking(true));
    if let Err(e) = nb {
        let _ = kill(c.pid, Signal::SIGKILL);
        let _ = kill(r.pid, Signal::SIGKILL);
        return Err(format!("worker channel: {e}"));
    }
    Ok(WorkerSet {
        classifier,
        resolver,
        cpid: c.pid,
        rpid: r.pid,
        c_hello: false,
        r_hello: false,
        first_sent: gen,
        latest_sent: gen,
        acked: None,
        started: Instant::now(),
    })
}

/// Restart timing.
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
    /// Records a failure of a pair started at `started`; returns Err when restarts come too
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
