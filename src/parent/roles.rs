//! The parent's side of the role table: which field holds each role's worker, which handler
//! serves its messages and how it is greeted. Adding a worker role means a row in privsep's
//! `ROLES`, an arm in each match here, a `from_<role>.rs` with its handlers, and its main.
//!
//! Runs in the parent; touches only the parent's own worker handles.

use std::time::Instant;

use nix::unistd::Pid;
use privsep::Role;

use super::workers::{self, Failure, Link, Worker};
use super::Parent;
use crate::exit::{Error, Result};
use crate::log;

impl Parent {
    /// The running workers, whatever their message types, for the loop.
    pub(super) fn links(&self) -> Vec<&dyn Link> {
        let mut v: Vec<&dyn Link> = Vec::with_capacity(2);
        if let Some(w) = &self.classifier {
            v.push(w);
        }
        if let Some(w) = &self.resolver {
            v.push(w);
        }
        if let Some(w) = &self.sentry {
            v.push(w);
        }
        if let Some(w) = self.control.as_ref().and_then(|c| c.worker.as_ref()) {
            v.push(w);
        }
        if let Some(w) = self.netfilter.as_ref().and_then(|n| n.worker.as_ref()) {
            v.push(w);
        }
        v
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
            Role::Classifier => self.serve_classifier(),
            Role::Resolver => self.serve_resolver(),
            Role::Sentry => self.serve_sentry(),
            Role::Control => self.serve_control(),
            Role::Netfilter => self.serve_netfilter(),
        }
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
            Err(e) => {
                // A transient failure (fork or socketpair out of resources): back off and
                // retry like any other worker failure.
                log::err(&format!("{e}; retrying"));
                let now = Instant::now();
                return match self.restarts.failed(now, now) {
                    Ok(_) => Ok(()),
                    Err(fatal) => Err(Error::System(fatal)),
                };
            }
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

    /// Takes the workers of `group` out of the parent; returns their pids.
    pub(super) fn take_workers(&mut self, group: &[Role]) -> Vec<Pid> {
        group
            .iter()
            .filter_map(|role| match role {
                Role::Classifier => self.classifier.take().map(|w| w.pid),
                Role::Resolver => self.resolver.take().map(|w| w.pid),
                Role::Sentry => self.sentry.take().map(|w| w.pid),
                Role::Control => self
                    .control
                    .as_mut()
                    .and_then(|c| c.worker.take())
                    .map(|w| w.pid),
                Role::Netfilter => self
                    .netfilter
                    .as_mut()
                    .and_then(|n| n.worker.take())
                    .map(|w| w.pid),
            })
            .collect()
    }
}
