//! The parent's side of the classifier channel: every `ClassifierToParent` message is admitted
//! here (admit.rs) and handed to its `on_<variant>` handler (OpenBSD's
//! `parent_dispatch_<peer>`).
//!
//! Runs in the parent (root). Every message came from the classifier, which parses untrusted
//! DNS and identd data; nothing is acted on before `admit::admit` accepted it. Handlers return
//! a [`Failure`] instead of restarting anything themselves: the loop in mod.rs decides.

use std::time::Instant;

use privsep::proto::{ConnId, Gen, LiveConn, ParentToClassifier};
use privsep::Role;

use super::admit::{self, Admitted, Verdict};
use super::conns::{Conns, Taken};
use super::status;
use super::verdict::{self, ActCtx, Acted};
use super::workers::Failure;
use super::{Parent, RECV_BATCH};
use crate::log::{self, Level};

/// Which generations this classifier instance was sent and has acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shipped {
    /// The generation of the first Policy sent to this instance.
    pub first_sent: Gen,
    /// The newest generation sent to it.
    pub latest_sent: Gen,
    /// The newest generation it acknowledged, and when.
    pub acked: Option<Gen>,
    pub acked_at: Option<Instant>,
}

impl Shipped {
    pub fn new(gen: Gen) -> Shipped {
        Shipped {
            first_sent: gen,
            latest_sent: gen,
            acked: None,
            acked_at: None,
        }
    }

    /// The oldest generation this instance may still name in a verdict.
    pub fn oldest(&self) -> Gen {
        self.acked.unwrap_or(self.first_sent)
    }
}

impl admit::Pending for Conns {
    fn min_gen(&self, conn: ConnId) -> Option<Gen> {
        Conns::min_gen(self, conn)
    }
}

impl Parent {
    /// Reads and handles up to [`RECV_BATCH`] classifier messages.
    pub(super) fn serve_classifier(&mut self) -> Result<(), Failure> {
        for _ in 0..RECV_BATCH {
            let Some(w) = self.classifier.as_mut() else {
                return Ok(());
            };
            let Some(msg) = w.recv()? else {
                return Ok(());
            };
            let ctx = admit::Ctx {
                build: &self.build,
                hello_seen: w.hello,
                next_conn: ConnId(self.next_conn),
                pending: &self.conns,
                tables: &self.policy.tables,
                latest_sent: self.shipped.latest_sent,
                first_sent: self.shipped.first_sent,
                acked: self.shipped.acked,
            };
            match admit::admit(&ctx, msg) {
                Err(v) => {
                    return Err(Failure::violation(
                        Role::Classifier,
                        format!("classifier {v}"),
                    ))
                }
                Ok(Admitted::Hello) => self.on_hello(),
                Ok(Admitted::PolicyLoaded(g)) => self.on_policy_loaded(g),
                Ok(Admitted::Verdict(v)) => self.on_verdict(v)?,
                Ok(Admitted::Log {
                    level,
                    verbosity,
                    text,
                }) => self.on_log(level, verbosity, &text),
                Ok(Admitted::Status(stats)) => self.on_status(stats),
            }
        }
        Ok(())
    }

    fn on_hello(&mut self) {
        if let Some(w) = self.classifier.as_mut() {
            w.hello = true;
        }
    }

    fn on_policy_loaded(&mut self, g: Gen) {
        self.shipped.acked = Some(g);
        self.shipped.acked_at = Some(Instant::now());
        if self.workers_ready() {
            self.ever_ready = true;
        }
        log::debug(2, &format!("classifier loaded policy generation {}", g.0));
        self.prune_tables();
    }

    fn on_log(&mut self, level: Level, verbosity: u8, text: &str) {
        if let Some(w) = self.classifier.as_mut() {
            w.log(level, verbosity, text);
        }
    }

    fn on_status(&mut self, stats: status::ClassifierStats) {
        if std::mem::take(&mut self.status_wanted) {
            self.log_status(Some(stats));
        }
    }

    fn on_verdict(&mut self, v: Verdict) -> Result<(), Failure> {
        // Old tables are pruned once a second and on PolicyLoaded, not per verdict: finding the
        // oldest pending generation is a walk over every pending connection.
        let counted = v.decision().counted;
        let p = match self.conns.take_pending(v.conn()) {
            Some(Taken::Live(p)) => p,
            Some(Taken::Gone(meta)) => {
                log::debug(1, &format!("drop conn={} reason=peer-gone", meta.id.0));
                return self.conn_closed(meta.id, counted);
            }
            // admit() checked it is pending; nothing to act on otherwise.
            None => return Ok(()),
        };
        let meta = p.meta;
        let mut ctx = ActCtx {
            creds: self.creds.as_ref(),
            substitutions: self.settings.substitutions,
            last_log: &mut self.last_log,
            writing: self.conns.writing_len(),
        };
        match verdict::act(&v, p, &mut ctx) {
            Acted::Running { pid, served } => {
                self.conns.add_running(meta, pid, counted, served);
                Ok(())
            }
            Acted::Writing { writer, served } => {
                self.conns.add_writing(meta, writer, served);
                Ok(())
            }
            Acted::Closed => self.conn_closed(meta.id, counted),
        }
    }

    /// A counted connection ended: the classifier releases its count. Without a classifier
    /// there is nothing to tell: the next one is seeded with the live services only.
    pub(super) fn conn_closed(&mut self, conn: ConnId, counted: bool) -> Result<(), Failure> {
        match self.classifier.as_mut() {
            Some(w) if counted => w.queue(&ParentToClassifier::ConnClosed { conn }, "ConnClosed"),
            _ => Ok(()),
        }
    }

    /// Greets a new classifier: Hello, the current policy, and (after a restart) the counted
    /// live connections so its limits stay exact.
    pub(super) fn greet_classifier(&mut self) -> Result<(), Failure> {
        self.shipped = Shipped::new(self.policy.gen);
        let live: Vec<LiveConn> = self.conns.live_counted();
        let mut sends = vec![
            (
                ParentToClassifier::Hello {
                    build: self.build.clone(),
                },
                "Hello",
            ),
            (self.policy.policy_msg(&self.settings.classifier), "Policy"),
        ];
        if !live.is_empty() || self.ever_ready {
            sends.push((ParentToClassifier::Seed { live }, "Seed"));
        }
        let Some(w) = self.classifier.as_mut() else {
            return Ok(());
        };
        for (m, what) in &sends {
            w.queue(m, what)?;
        }
        Ok(())
    }

    /// Closes pending connections whose peer has gone and tells the classifier, which skips
    /// their evaluation if it has not started: a flood of clients that gave up must not hold
    /// descriptors, or lookups, for the time their evaluations would take.
    pub(super) fn close_gone(&mut self) -> Result<(), Failure> {
        let gone = self.conns.close_gone();
        if gone.is_empty() {
            return Ok(());
        }
        log::debug(
            1,
            &format!(
                "closed {} pending connections whose peer has gone",
                gone.len()
            ),
        );
        let Some(w) = self.classifier.as_mut() else {
            return Ok(());
        };
        for conn in gone {
            w.queue(&ParentToClassifier::ConnGone { conn }, "ConnGone")?;
        }
        Ok(())
    }

    /// Ships the current generation after a reload.
    pub(super) fn ship_policy(&mut self) -> Result<(), Failure> {
        let msg = self.policy.policy_msg(&self.settings.classifier);
        let Some(w) = self.classifier.as_mut() else {
            return Ok(());
        };
        self.shipped.latest_sent = self.policy.gen;
        self.failed_since_ship = 0;
        w.queue(&msg, "the new policy")
    }

    /// A new connection for the classifier, filed as pending.
    pub(super) fn classify(
        &mut self,
        a: super::listen::Accepted,
        conn: ConnId,
        now: Instant,
    ) -> Result<(), Failure> {
        let min_gen = self.shipped.oldest();
        let sent = match self.classifier.as_mut() {
            Some(w) => w.queue(
                &ParentToClassifier::ConnAccepted {
                    conn,
                    remote: a.remote,
                    local: a.local,
                },
                "ConnAccepted",
            ),
            None => Err(Failure::new(Role::Classifier, "no classifier")),
        };
        self.conns
            .add_pending(conn, a.stream, a.remote, a.local, min_gen, now);
        sent
    }
}
