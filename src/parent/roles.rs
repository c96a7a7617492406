//! The parent's side of the role table: which field holds each role's worker, which handler
//! serves its messages, how its group is started, and every restart decision: one receive loop
//! ([`Parent::drain`]) and one failure path ([`Parent::worker_failed`]) for all roles. Adding a
//! worker role means a row in privsep's `ROLES`, an arm in each match here, a `from_<role>.rs`
//! with its start, its handler and what it forgets when its worker dies, and its main.
//!
//! Runs in the parent; touches only the parent's own worker handles and back-off state.

use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use privsep::Role;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::workers::{self, Failure, Link, Worker};
use super::{Parent, RECV_BATCH};
use crate::exit::{Error, Result};
use crate::log;

/// What the parent does with a group that fails more than `MAX_RESTARTS` times within
/// `RESTART_WINDOW`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GiveUp {
    /// Exit 111: nothing is served without a classifier (fail closed).
    Exit,
    /// Stop running it; the text says what is lost. Stealth detection is not worth the daemon.
    Stop(&'static str),
    /// Try again after `RETRY_LATER`: the control socket is how an operator looks in, and
    /// conntrack requests fail cleanly meanwhile.
    RetryLater,
}

/// How a role's group is named in log lines, what is missing while it cannot be started, and
/// what happens when it keeps failing.
struct Restart {
    name: &'static str,
    down: &'static str,
    give_up: GiveUp,
}

fn restart(role: Role) -> Restart {
    match role {
        Role::Classifier | Role::Resolver => Restart {
            name: "workers",
            down: "retrying",
            give_up: GiveUp::Exit,
        },
        Role::Sentry => Restart {
            name: "the sentry",
            down: "stealth detection is off until it starts",
            give_up: GiveUp::Stop("stealth detection is off"),
        },
        Role::Control => Restart {
            name: "the control worker",
            down: "the control socket is not served until it starts",
            give_up: GiveUp::RetryLater,
        },
        Role::Netfilter => Restart {
            name: "the netfilter worker",
            down: "conntrack requests fail until it starts",
            give_up: GiveUp::RetryLater,
        },
    }
}

impl Parent {
    /// The running workers, whatever their message types, for the loop (no allocation: the
    /// loop asks several times a turn).
    pub(super) fn links(&self) -> impl Iterator<Item = &dyn Link> {
        [
            self.classifier.as_ref().map(|w| w as &dyn Link),
            self.resolver.as_ref().map(|w| w as &dyn Link),
            self.sentry.as_ref().map(|w| w as &dyn Link),
            self.control
                .as_ref()
                .and_then(|c| c.worker.as_ref())
                .map(|w| w as &dyn Link),
            self.netfilter
                .as_ref()
                .and_then(|n| n.worker.as_ref())
                .map(|w| w as &dyn Link),
        ]
        .into_iter()
        .flatten()
    }

    /// Writes what each worker's channel has queued (what its socket takes now; the rest
    /// waits for POLLOUT).
    pub(super) fn flush_links(&mut self) -> std::result::Result<(), Failure> {
        for role in [
            Role::Classifier,
            Role::Resolver,
            Role::Sentry,
            Role::Control,
            Role::Netfilter,
        ] {
            if let Some(w) = self.link_mut(role) {
                w.write_queued()?;
            }
        }
        Ok(())
    }

    pub(super) fn link_mut(&mut self, role: Role) -> Option<&mut dyn Link> {
        match role {
            Role::Classifier => self.classifier.as_mut().map(|w| w as &mut dyn Link),
            Role::Resolver => self.resolver.as_mut().map(|w| w as &mut dyn Link),
            Role::Sentry => self.sentry.as_mut().map(|w| w as &mut dyn Link),
            Role::Control => self
                .control
                .as_mut()
                .and_then(|c| c.worker.as_mut())
                .map(|w| w as &mut dyn Link),
            Role::Netfilter => self
                .netfilter
                .as_mut()
                .and_then(|n| n.worker.as_mut())
                .map(|w| w as &mut dyn Link),
        }
    }

    /// Reads and handles what `role` sent.
    pub(super) fn serve(&mut self, role: Role) -> std::result::Result<(), Failure> {
        match role {
            Role::Classifier => {
                self.drain(RECV_BATCH, |p| p.classifier.as_mut(), Parent::on_classifier)
            }
            Role::Resolver => self.drain(RECV_BATCH, |p| p.resolver.as_mut(), Parent::on_resolver),
            Role::Sentry => self.drain(RECV_BATCH, |p| p.sentry.as_mut(), Parent::on_sentry),
            Role::Control => self.drain(
                super::from_control::CONTROL_BATCH,
                |p| p.control.as_mut().and_then(|c| c.worker.as_mut()),
                Parent::on_control,
            ),
            Role::Netfilter => self.drain(
                RECV_BATCH,
                |p| p.netfilter.as_mut().and_then(|n| n.worker.as_mut()),
                Parent::on_netfilter,
            ),
        }
    }

    /// The one receive loop: hands up to `batch` whole messages from the worker `worker` finds
    /// to `handle`, stopping early when no whole frame is left or the worker is gone (a
    /// handler's failure ended it). A bounded batch keeps one busy worker from starving the
    /// listeners and the others; frames left over are served next turn (the loop asks
    /// `has_buffered`).
    fn drain<S: Serialize, R: DeserializeOwned>(
        &mut self,
        batch: usize,
        worker: fn(&mut Parent) -> Option<&mut Worker<S, R>>,
        handle: fn(&mut Parent, R) -> std::result::Result<(), Failure>,
    ) -> std::result::Result<(), Failure> {
        for _ in 0..batch {
            let Some(w) = worker(self) else {
                return Ok(());
            };
            let Some(msg) = w.recv()? else {
                return Ok(());
            };
            handle(self, msg)?;
        }
        Ok(())
    }

    /// Ready to classify: both said Hello and the classifier loaded its first policy.
    pub(super) fn workers_ready(&self) -> bool {
        self.classifier.as_ref().is_some_and(|w| w.hello)
            && self.resolver.as_ref().is_some_and(|w| w.hello)
            && self.shipped.acked.is_some()
    }

    pub(super) fn start_workers(&mut self) -> Result<()> {
        let group = Role::Classifier.restart_group();
        let started = match workers::start_group(&self.plan, &group, None, None) {
            Ok(s) => s,
            Err(e) if !self.ever_ready => return Err(Error::System(e)),
            // A transient failure (fork or socketpair out of resources): back off and retry
            // like any other worker failure.
            Err(e) => return self.start_failed(Role::Classifier, e),
        };
        let mut pids = Vec::with_capacity(started.len());
        for s in started {
            pids.push(format!("{}={}", s.role, s.pid));
            self.group_started = Some(s.started);
            match s.role {
                Role::Classifier => self.classifier = Some(Worker::new(s)),
                Role::Resolver => self.resolver = Some(Worker::new(s)),
                // Not in the classifier's restart group; never started here.
                Role::Sentry | Role::Control | Role::Netfilter => {}
            }
        }
        log::debug(2, &format!("started {}", pids.join(" ")));
        let greeted = self.greet_classifier().and_then(|()| self.greet_resolver());
        if let Err(f) = greeted {
            self.worker_failed(f);
        }
        Ok(())
    }

    /// Starts the group whose restart is due, if any; true when one was started.
    pub(super) fn restart_due(&mut self, now: Instant) -> Result<bool> {
        let due = self
            .restarts
            .scheduled()
            .find(|(role, at)| now >= *at && !self.group_running(*role))
            .map(|(role, _)| role);
        let Some(role) = due else {
            return Ok(false);
        };
        self.restarts.clear(role);
        match role {
            Role::Classifier | Role::Resolver => self.start_workers()?,
            Role::Sentry => self.start_sentry()?,
            Role::Control => self.start_control()?,
            Role::Netfilter => self.start_netfilter()?,
        }
        Ok(true)
    }

    /// When the next restart of a group that is down is due.
    pub(super) fn next_restart(&self) -> Option<Instant> {
        self.restarts
            .scheduled()
            .filter(|(role, _)| !self.group_running(*role))
            .map(|(_, at)| at)
            .min()
    }

    fn group_running(&self, role: Role) -> bool {
        let group = role.restart_group();
        self.links().any(|w| group.contains(&w.role()))
    }

    /// A worker failed (died, closed its channel, broke the protocol or timed out): kill its
    /// restart group, let each member's side forget what waited on it (the classifier's
    /// pending connections are closed: fail closed) and schedule the restart. Fatal errors are
    /// stored for the loop to return.
    pub(super) fn worker_failed(&mut self, f: Failure) {
        let group = f.role.restart_group();
        let taken = self.take_workers(&group);
        // Nothing running: this failure was already handled.
        let Some(started) = taken.iter().map(|(_, at)| *at).max() else {
            return;
        };
        let r = restart(f.role);
        let them = match group.as_slice() {
            [_] => "it".to_owned(),
            _ => group
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(" and "),
        };
        if f.violation {
            log::crit(&format!(
                "{} protocol violation: {}; killing {them}",
                f.role, f.why
            ));
        } else {
            log::err(&format!("{} failed: {}; restarting {them}", r.name, f.why));
        }
        for (pid, _) in taken {
            // It may already be dead; the reaper collects it.
            let _ = kill(pid, Signal::SIGKILL);
        }
        for role in &group {
            self.counters.restarted(*role);
        }
        let go_on = match f.role {
            Role::Classifier | Role::Resolver => self.classifier_down(&f.why),
            Role::Sentry => true,
            Role::Control => {
                self.control_down();
                true
            }
            Role::Netfilter => {
                self.netfilter_down();
                true
            }
        };
        if !go_on {
            return;
        }
        let now = Instant::now();
        match self.restarts.failed(f.role, started, now) {
            Ok(d) => log::debug(1, &format!("restarting {} in {} ms", r.name, d.as_millis())),
            Err(e) => {
                if let Err(Error::System(fatal)) = self.give_up(f.role, e) {
                    self.fatal = Some(fatal);
                }
            }
        }
    }

    /// `role`'s group could not be started (fork, socketpair or exec failed): back off and try
    /// again, or give it up.
    pub(super) fn start_failed(&mut self, role: Role, e: String) -> Result<()> {
        log::err(&format!("{e}; {}", restart(role).down));
        let now = Instant::now();
        match self.restarts.failed(role, now, now) {
            Ok(_) => Ok(()),
            Err(e) => self.give_up(role, e),
        }
    }

    /// `role`'s group failed too often: what its row in [`restart`] says.
    fn give_up(&mut self, role: Role, e: String) -> Result<()> {
        let r = restart(role);
        match r.give_up {
            GiveUp::Exit => return Err(Error::System(e)),
            GiveUp::Stop(lost) => {
                log::crit(&format!("{}: {e}; {lost}", r.name));
                if role == Role::Sentry {
                    self.sentry_settings = None;
                }
            }
            GiveUp::RetryLater => {
                log::crit(&format!("{}: {e}; retrying later", r.name));
                self.restarts.retry_later(role, Instant::now());
            }
        }
        Ok(())
    }

    /// Takes the workers of `group` out of the parent; returns their pids and start times.
    pub(super) fn take_workers(&mut self, group: &[Role]) -> Vec<(Pid, Instant)> {
        fn out<S, R>(w: Worker<S, R>) -> (Pid, Instant) {
            (w.pid, w.started)
        }
        group
            .iter()
            .filter_map(|role| match role {
                Role::Classifier => self.classifier.take().map(out),
                Role::Resolver => self.resolver.take().map(out),
                Role::Sentry => self.sentry.take().map(out),
                Role::Control => self.control.as_mut().and_then(|c| c.worker.take()).map(out),
                Role::Netfilter => self
                    .netfilter
                    .as_mut()
                    .and_then(|n| n.worker.take())
                    .map(out),
            })
            .collect()
    }
}
