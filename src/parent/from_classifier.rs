//! The parent's side of the classifier channel: every `ClassifierToParent` message is admitted
//! here (admit.rs) and handed to its `on_<variant>` handler (OpenBSD's
//! `parent_dispatch_<peer>`).
//!
//! Runs in the parent (root). Every message came from the classifier, which parses untrusted
//! DNS and identd data; nothing is acted on before `admit::admit` accepted it. Handlers return
//! a [`Failure`] instead of restarting anything themselves: roles.rs decides.

use std::time::Instant;

use std::net::{IpAddr, SocketAddr};

use privsep::proto::{ClassifierToParent, ConnId, Gen, LiveConn, ParentToClassifier, SentryMode};
use privsep::Role;

use super::admit::{self, Admitted, Verdict};
use super::blocker::Outcome;
use super::blocks::Request;
use super::conns::{Conns, Meta, Taken};
use super::generation_loop::ROLLBACK_AFTER;
use super::status;
use super::verdict::{self, ActCtx, Acted};
use super::workers::Failure;
use super::Parent;
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
    /// Admits one message from the classifier and hands it to its handler.
    pub(super) fn on_classifier(&mut self, msg: ClassifierToParent) -> Result<(), Failure> {
        let ctx = admit::Ctx {
            build: &self.build,
            hello_seen: self.classifier.as_ref().is_some_and(|w| w.hello),
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
            Ok(Admitted::Explained(req, report)) => self.on_explained(req, *report)?,
            Ok(Admitted::Metrics(req, lookups)) => self.on_metrics(req, lookups)?,
        }
        Ok(())
    }

    /// The classifier's group went down (roles.rs killed it): answer the questions it had,
    /// close every connection waiting for a verdict (fail closed), and roll back a generation
    /// the workers keep failing under. False when the group never came up: that is fatal.
    pub(super) fn classifier_down(&mut self, why: &str) -> bool {
        self.group_started = None;
        self.fail_asks("the classifier restarted before it answered");
        let dropped = self.conns.drop_pending();
        for conn in &dropped {
            log::debug(
                1,
                &format!("drop conn={} reason=classifier-restart", conn.0),
            );
        }
        if !dropped.is_empty() {
            log::warn(&format!(
                "closed {} connections that were waiting for a verdict",
                dropped.len()
            ));
        }
        if !self.ever_ready {
            self.fatal = Some(format!(
                "the workers could not be started ({why}); see the messages above"
            ));
            return false;
        }
        self.failed_since_ship = self.failed_since_ship.saturating_add(1);
        if self.failed_since_ship >= ROLLBACK_AFTER {
            self.roll_back();
        }
        self.prune_tables();
        true
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
        self.status_ready(Some(stats));
    }

    fn on_verdict(&mut self, v: Verdict) -> Result<(), Failure> {
        // Old tables are pruned once a second and on PolicyLoaded, not per verdict: finding the
        // oldest pending generation is a walk over every pending connection.
        let counted = v.decision().counted;
        let (meta, stream, trap) = match self.conns.take_pending(v.conn()) {
            Some(Taken::Live(p, trap)) => (p.meta, Some(p.stream), trap),
            Some(Taken::Gone(meta, trap)) => {
                log::debug(1, &format!("drop conn={} reason=peer-gone", meta.id.0));
                (meta, None, trap)
            }
            Some(Taken::Probe(meta, mode)) => (meta, None, Some(mode)),
            // admit() checked it is pending; nothing to act on otherwise.
            None => return Ok(()),
        };
        let mut ctx = ActCtx {
            creds: self.creds.as_ref(),
            substitutions: self.settings.substitutions,
            last_log: &mut self.last_log,
            writing: self.conns.writing_len(),
        };
        let acted = verdict::act(&v, meta, stream, trap, &mut ctx);
        self.counters.verdict(
            v.action_class_name(),
            v.decision().refusal.map(|r| r.as_str()),
        );
        // The class's `block`, from the parent's own table for the verdict's generation.
        let block = v
            .actions()
            .and_then(|a| policy::decide::block_request(a, v.decision()));
        if let Some(req) = block {
            self.block(&v, &meta, trap, req)?;
        }
        match acted {
            Acted::Running {
                pid,
                served,
                timeout,
            } => {
                let class = served.action_class.clone();
                self.conns.add_running(meta, pid, counted, served);
                if let Some(t) = timeout {
                    self.end_at(
                        meta.id,
                        Instant::now() + t,
                        format!("class {} timeout {}s", log::escape(&class), t.as_secs()),
                    );
                }
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
        let blocked: Vec<IpAddr> = self.blocker.set().iter().map(|b| b.addr).collect();
        if !blocked.is_empty() {
            sends.push((
                ParentToClassifier::Blocked {
                    addrs: blocked,
                    on: true,
                },
                "Blocked",
            ));
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
        trap: Option<SentryMode>,
    ) -> Result<(), Failure> {
        let min_gen = self.shipped.oldest();
        let sent = match self.classifier.as_mut() {
            Some(w) => w.queue(
                &ParentToClassifier::ConnAccepted {
                    conn,
                    remote: a.remote,
                    local: a.local,
                    trap,
                },
                "ConnAccepted",
            ),
            None => Err(Failure::new(Role::Classifier, "no classifier")),
        };
        self.conns
            .add_pending(conn, a.stream, a.remote, a.local, min_gen, now, trap);
        sent
    }

    /// A probe with no connection (a UDP trap datagram, a stealth probe), classified like a
    /// connection so its rules can block it.
    pub(super) fn classify_probe(
        &mut self,
        remote: SocketAddr,
        local: SocketAddr,
        mode: SentryMode,
        now: Instant,
    ) -> Result<(), Failure> {
        if !self.workers_ready() || self.conns.pending_len() >= super::MAX_PENDING {
            log::debug(
                1,
                &format!(
                    "probe from {remote} to {local} ({}) not classified: busy",
                    mode.as_str()
                ),
            );
            return Ok(());
        }
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let meta = Meta {
            id: conn,
            remote,
            local,
            via: None,
            accepted: now,
        };
        self.conns.add_probe(meta, mode, self.shipped.oldest());
        match self.classifier.as_mut() {
            Some(w) => w.queue(
                &ParentToClassifier::Probe {
                    conn,
                    remote,
                    local,
                    mode,
                },
                "Probe",
            ),
            None => Err(Failure::new(Role::Classifier, "no classifier")),
        }
    }

    /// Carries out a verdict's `block` for the connection or probe `meta`, and tells the
    /// classifier's mirror. A full connect is not forgeable; every other detection is.
    fn block(
        &mut self,
        v: &Verdict,
        meta: &Meta,
        trap: Option<SentryMode>,
        req: policy::actions::BlockRequest,
    ) -> Result<(), Failure> {
        let now = super::blocker::unix_now();
        let request = Request {
            addr: meta.remote.ip(),
            port: meta.local.port(),
            mode: trap.map_or_else(String::new, |m| m.as_str().to_owned()),
            reason: format!("class {}", v.action_class_name().unwrap_or("-")),
            seconds: req.seconds,
        };
        let forgeable = trap.is_some_and(SentryMode::forgeable);
        if req.cmd_only {
            self.blocker.commands_only(&request, forgeable, now);
            return Ok(());
        }
        self.apply_block(request, forgeable);
        Ok(())
    }

    /// Blocks as `req` asks; a new block ends the address's services (`blockkills`) and
    /// reaches the classifier's mirror of the set.
    pub(super) fn apply_block(&mut self, req: Request, forgeable: bool) -> Outcome {
        let out = self
            .blocker
            .block(req, forgeable, super::blocker::unix_now());
        if let Outcome::Blocked(b) = &out {
            self.counters.blocked();
            if self.blocker.kills() {
                self.kill_services_of(b.addr);
            }
            self.flush_blocked_flows(b.addr);
            if let Err(f) = self.mirror_blocks(vec![b.addr], true) {
                self.worker_failed(f);
            }
        }
        out
    }

    /// `blockkills on`: ends every running service of a newly blocked address (each leads its
    /// own process group, so its children go too): SIGTERM, then SIGKILL after the grace.
    fn kill_services_of(&mut self, addr: IpAddr) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|c| c.pid().is_some() && c.remote.ip() == addr)
            .map(|c| c.id)
            .collect();
        let now = Instant::now();
        for id in ids {
            self.end_conn(id, "blockkills", now);
        }
    }

    /// Tells the classifier's mirror of the blocked set.
    pub(super) fn mirror_blocks(&mut self, addrs: Vec<IpAddr>, on: bool) -> Result<(), Failure> {
        if addrs.is_empty() {
            return Ok(());
        }
        match self.classifier.as_mut() {
            Some(w) => w.queue(&ParentToClassifier::Blocked { addrs, on }, "Blocked"),
            None => Ok(()),
        }
    }
}
