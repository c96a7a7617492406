//! What the parent does on a signal (SIGCHLD, SIGTERM/SIGINT, SIGHUP, SIGUSR1, SIGUSR2), after
//! the loop has read them from its signalfd (signals.rs): never in a handler.
//!
//! Runs in the parent.

use std::time::Instant;

use privsep::proto::{ParentToClassifier, ParentToResolver};

use super::{status, Parent, RELOAD_EVERY};
use crate::log;

impl Parent {
    /// Acts on the signals that arrived; true when the daemon is to exit.
    pub(super) fn on_signals(&mut self) -> bool {
        let sig = self.signals.take();
        if sig.child {
            if let Some(f) = self.reap() {
                self.worker_failed(f);
            }
        }
        if sig.term {
            self.shutdown();
            return true;
        }
        if sig.hup {
            log::info("SIGHUP: reloading the rules and actions files");
            self.notify.reloading();
            self.conf_watch.check();
            self.reload(true);
            self.next_reload = Instant::now() + RELOAD_EVERY;
        }
        if sig.usr1 {
            log::info("SIGUSR1: flushing caches and IP history");
            self.flush_caches();
        }
        if sig.usr2 {
            self.status_wanted = true;
            self.request_status();
        }
        false
    }

    /// The status report: what SIGUSR2 logs and `nannyctl status` prints.
    pub(super) fn status_lines(&self, c: Option<status::ClassifierStats>) -> Vec<String> {
        let p = status::ParentStats {
            lifetime: self.lifetime,
            pending: self.conns.pending_len(),
            messages: self.conns.writing_len(),
            gen: self.policy.gen.0,
        };
        let mut out = status::report(&p, &self.conns, c.as_ref(), Instant::now());
        let traps: Vec<String> = self
            .listeners
            .iter()
            .filter(|l| l.trap)
            .map(|l| format!("tcp {}", l.addr))
            .chain(self.udp_traps.iter().map(|t| format!("udp {}", t.addr)))
            .collect();
        if !traps.is_empty() {
            out.push(format!("status: traps: {}", traps.join(", ")));
        }
        if let Some(st) = &self.sentry_settings {
            let watch = |proto: &str, w: &Option<privsep::proto::Watch>| match w {
                None => None,
                Some(privsep::proto::Watch::Ports(p)) => Some(format!(
                    "{proto} {} ports up to {}",
                    p.ports().len(),
                    p.max().unwrap_or(0)
                )),
                Some(privsep::proto::Watch::Below { below, except }) => Some(format!(
                    "{proto} below {below} except {} ports",
                    except.ports().len()
                )),
            };
            let parts: Vec<String> = [watch("tcp", &st.tcp), watch("udp", &st.udp)]
                .into_iter()
                .flatten()
                .collect();
            out.push(format!(
                "status: stealth: {} (sentry {})",
                parts.join(", "),
                match &self.sentry {
                    Some(w) if w.hello => format!("pid {}", w.pid),
                    Some(_) => "starting".to_owned(),
                    None => "restarting".to_owned(),
                }
            ));
        }
        if self.blocker.in_use() {
            out.extend(self.blocker.status(super::blocker::unix_now()));
        }
        out
    }

    /// The report, once the classifier's numbers (if any) are in: logged when SIGUSR2 asked
    /// for it, and answered to every `nannyctl status` waiting.
    pub(super) fn status_ready(&mut self, c: Option<status::ClassifierStats>) {
        let lines = self.status_lines(c);
        if std::mem::take(&mut self.status_wanted) {
            for line in &lines {
                log::info(line);
            }
        }
        self.answer_status(&lines);
    }

    /// Asks the classifier for its numbers; without a classifier the report is made at once.
    pub(super) fn request_status(&mut self) {
        if !self.workers_ready() {
            return self.status_ready(None);
        }
        let sent = match self.classifier.as_mut() {
            Some(w) => w.queue(&ParentToClassifier::StatusRequest, "StatusRequest"),
            None => return self.status_ready(None),
        };
        if let Err(f) = sent {
            self.worker_failed(f);
            self.status_ready(None);
        }
    }

    pub(super) fn flush_caches(&mut self) {
        let mut r = Ok(());
        if let Some(w) = self.classifier.as_mut() {
            r = w.queue(&ParentToClassifier::Flush, "Flush");
        }
        if let (Ok(()), Some(w)) = (&r, self.resolver.as_mut()) {
            r = w.queue(&ParentToResolver::Flush, "Flush");
        }
        if let Err(f) = r {
            self.worker_failed(f);
        }
    }
}
