//! The parent's side of the control channel (`nannyctl`): the control worker's start and
//! greeting, the admission of its messages, and one handler per request.
//!
//! Runs in the parent (root). The control worker decoded the client's JSON, checked its shape
//! and authorised it by SO_PEERCRED; the parent receives the typed request only, checks its
//! bounds again, and acts from its own tables: it never parses request bytes. A worker that
//! breaks the protocol is killed and restarted alone, like the sentry (roles.rs); one that
//! keeps failing is tried again later, never given up for good: the control socket is how an
//! operator looks in.
//!
//! Requests that need the classifier (`explain`, `metrics`, `status`) are forwarded and
//! answered when it replies; a classifier restart answers them with an error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use privsep::control::{
    BlockRow, ConnRow, ConnState, EndedRow, ErrorKind, ExplainAsk, KillTarget, LookupMetrics,
    Reply, Request,
};
use privsep::proto::{
    Caller, ClientId, ConnId, ControlSettings, ControlToParent, ExplainReport, ParentToClassifier,
    ParentToControl, ReqId,
};
use privsep::Role;

use super::blocker::{unix_now, Outcome};
use super::blocks::Request as BlockReq;
use super::conns::{Conns, State};
use super::ctlsock::ControlSocket;
use super::ending::{Ended, Endings};
use super::generations::Reloaded;
use super::workers::{Failure, Worker};
use super::Parent;
use crate::log;

/// Control messages handled per loop turn: a `list` walks the whole table, so a flood of
/// requests is spread over turns and connections keep being accepted meanwhile.
pub(super) const CONTROL_BATCH: usize = 16;

/// Longest the classifier may take to answer an `explain` or `metrics` (every lookup has its
/// own, shorter timeout).
const ASK_DEADLINE: Duration = Duration::from_secs(60);

/// What a forwarded request is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Explain,
    Metrics,
}

/// Everything the parent keeps about the control channel (`control` in nanny.conf).
#[derive(Debug)]
pub struct ControlSide {
    pub worker: Option<Worker<ParentToControl, ControlToParent>>,
    pub socket: ControlSocket,
    settings: ControlSettings,
    asks: HashMap<ReqId, (ClientId, Ask, Instant)>,
    next_req: u64,
    reload_waiters: Vec<ClientId>,
    status_waiters: Vec<ClientId>,
    /// `xmlrpc ADDR:PORT`: its listener, handed to every control worker started.
    pub xmlrpc: Option<super::xmlrpc::XmlrpcSide>,
}

impl ControlSide {
    pub fn new(socket: ControlSocket, settings: ControlSettings) -> ControlSide {
        ControlSide {
            worker: None,
            socket,
            settings,
            asks: HashMap::new(),
            next_req: 1,
            reload_waiters: Vec::new(),
            status_waiters: Vec::new(),
            xmlrpc: None,
        }
    }

    /// The XML-RPC users a restarted worker is given (after a reload read them again).
    pub fn set_xmlrpc_auth(&mut self, auth: privsep::xmlrpc::XmlrpcAuth) {
        if let Some(x) = self.settings.xmlrpc.as_mut() {
            x.auth = auth;
        }
    }

    /// Whether a `status` request is waiting for the classifier's numbers.
    pub fn wants_status(&self) -> bool {
        !self.status_waiters.is_empty()
    }
}

/// Every live connection as a row.
pub fn conn_rows(conns: &Conns, endings: &Endings, now: Instant) -> Vec<ConnRow> {
    conns
        .iter()
        .map(|c| {
            let (pid, served, state, gen) = match &c.state {
                State::Header(_) => (None, None, ConnState::Header, 0),
                State::Pending { min_gen, .. } => (None, None, ConnState::Pending, min_gen.0),
                State::Running { pid, served, .. } => {
                    let st = if endings.terminating(c.id) {
                        ConnState::Ending
                    } else {
                        ConnState::Running
                    };
                    (Some(*pid), Some(served), st, served.gen.0)
                }
                State::Writing { served, .. } => {
                    (None, Some(served), ConnState::Writing, served.gen.0)
                }
            };
            let timeout = endings.deadline(c.id).map(|d| {
                let left = d.saturating_duration_since(now);
                left.as_secs() + u64::from(left.subsec_nanos() > 0)
            });
            ConnRow {
                id: c.id.0,
                pid,
                peer: c.remote,
                local: c.local,
                class: served.map(|s| s.action_class.clone()).filter(|c| c != "-"),
                classes: served.map(|s| s.classes.clone()).unwrap_or_default(),
                label: served.and_then(|s| s.label.clone()),
                user: served.and_then(|s| s.user.clone()),
                age_ms: now
                    .saturating_duration_since(c.accepted)
                    .as_millis()
                    .try_into()
                    .unwrap_or(u64::MAX),
                gen,
                state,
                timeout,
            }
        })
        .collect()
}

impl Parent {
    fn ctl(&mut self) -> Option<&mut ControlSide> {
        self.control.as_mut()
    }

    /// Queues a message to the control worker (nothing when it is not running).
    fn send_control(&mut self, msg: ParentToControl) {
        let r = match self.ctl().and_then(|c| c.worker.as_mut()) {
            Some(w) => w.queue(&msg, "Reply"),
            None => return,
        };
        if let Err(f) = r {
            self.worker_failed(f);
        }
    }

    fn reply(&mut self, client: ClientId, reply: Reply) {
        self.send_control(ParentToControl::Reply { client, reply });
    }

    /// Admits one message from the control worker and acts on it.
    pub(super) fn on_control(&mut self, msg: ControlToParent) -> Result<(), Failure> {
        let Some(w) = self.control.as_mut().and_then(|c| c.worker.as_mut()) else {
            return Ok(());
        };
        let violation = |why: String| Failure::violation(Role::Control, why);
        match msg {
            ControlToParent::Hello { build } => w.greeted(&self.build, &build)?,
            _ if !w.hello => {
                return Err(violation("control message refused: before Hello".into()));
            }
            ControlToParent::Log(rec) => w.relay_log(rec)?,
            ControlToParent::Request {
                client,
                caller,
                req,
            } => {
                // The worker checked these; a request that fails them now was forged.
                if let Err(why) = req.check() {
                    return Err(violation(format!("control Request refused: {why}")));
                }
                let admin = caller.uid == 0
                    || self
                        .control
                        .as_ref()
                        .is_some_and(|c| c.settings.admin_uid == caller.uid);
                if req.access() == privsep::control::Access::Change && !admin {
                    return Err(violation(format!(
                        "control Request refused: {} from uid {}, who may only read",
                        req.name(),
                        caller.uid
                    )));
                }
                self.on_request(client, caller, req);
            }
            ControlToParent::XmlrpcRequest { client, user, req } => {
                // Only when xmlrpc is configured, and only conntrack requests (the
                // variant carries no other kind); the bounds are checked again.
                if self.control.as_ref().is_none_or(|c| c.xmlrpc.is_none()) {
                    return Err(violation(
                        "control XmlrpcRequest refused: xmlrpc is not configured".into(),
                    ));
                }
                if let Err(why) = req.check() {
                    return Err(violation(format!("control XmlrpcRequest refused: {why}")));
                }
                self.on_xmlrpc_request(client, user, req);
            }
        }
        Ok(())
    }

    /// An XML-RPC procedure (already re-checked): logged with the session's user when it
    /// changes anything, then relayed to the netfilter worker like nannyctl's.
    pub(super) fn on_xmlrpc_request(
        &mut self,
        client: privsep::proto::ClientId,
        user: privsep::xmlrpc::XmlrpcUser,
        req: privsep::conntrack::CtRequest,
    ) {
        if req.changes() {
            let what = describe(&privsep::control::Request::Conntrack(req.clone()));
            log::notice(&format!("xmlrpc: user {user}: {what}"));
        }
        self.ask_netfilter(client, req);
    }

    fn on_request(&mut self, client: ClientId, caller: Caller, req: Request) {
        let now = Instant::now();
        if req.access() == privsep::control::Access::Change {
            log::notice(&format!(
                "control: uid {} (pid {}): {}",
                caller.uid,
                caller.pid,
                describe(&req)
            ));
        }
        let by = format!("nannyctl (uid {})", caller.uid);
        match req {
            Request::List(_) => {
                let rows = conn_rows(&self.conns, &self.endings, now);
                self.send_control(ParentToControl::Table { client, rows });
            }
            Request::Kill(t) => {
                let r = self.kill(&t, &by, now);
                self.reply(client, r);
            }
            Request::Change { id, timeout } => {
                let r = self.change_timeout(ConnId(id), timeout, &by, now);
                self.reply(client, r);
            }
            Request::Block { addr, seconds } => {
                let req = BlockReq {
                    addr,
                    port: 0,
                    mode: String::new(),
                    reason: by,
                    seconds,
                };
                let r = self.block_from_control(req);
                self.reply(client, r);
            }
            Request::Unblock { addr } => {
                let r = match self.blocker.unblock(addr, unix_now()) {
                    Some(_) => {
                        if let Err(f) = self.mirror_blocks(vec![addr], false) {
                            self.worker_failed(f);
                        }
                        Reply::Done(format!("{addr} is no longer blocked"))
                    }
                    None => Reply::error(ErrorKind::Failed, format!("{addr} is not blocked")),
                };
                self.reply(client, r);
            }
            Request::Blocked => {
                let rows = self
                    .blocker
                    .set()
                    .iter()
                    .map(|b| BlockRow {
                        addr: b.addr,
                        since: b.since,
                        until: b.until,
                        port: b.port,
                        mode: b.mode.clone(),
                        reason: b.reason.clone(),
                        repeat: b.repeat,
                    })
                    .collect();
                self.reply(client, Reply::Blocks(rows));
            }
            Request::Reload => {
                if let Some(c) = self.ctl() {
                    c.reload_waiters.push(client);
                }
                self.conf_watch.check();
                self.reload(true);
            }
            Request::Status => self.control_status(client),
            Request::Flush => {
                self.flush_caches();
                self.reply(
                    client,
                    Reply::Done("flushed the IP history and the lookup caches".into()),
                );
            }
            Request::Explain(ask) => self.explain(client, ask),
            Request::Metrics => self.ask_classifier(client, Ask::Metrics, None),
            Request::Conntrack(ask) => self.ask_netfilter(client, ask),
        }
    }

    fn kill(&mut self, t: &KillTarget, by: &str, now: Instant) -> Reply {
        let mut ids: Vec<ConnId> = Vec::new();
        let mut missing = Vec::new();
        for id in &t.ids {
            if self.conns.get(ConnId(*id)).is_some() {
                ids.push(ConnId(*id));
            } else {
                missing.push(*id);
            }
        }
        for c in self.conns.iter() {
            let by_ip = t.ip.iter().any(|n| n.contains(c.remote.ip()));
            let by_class = c.served().is_some_and(|s| {
                t.class.iter().any(|k| {
                    let k = k.as_str();
                    s.action_class == k || s.classes.iter().any(|m| m == k)
                })
            });
            if (by_ip || by_class) && !ids.contains(&c.id) {
                ids.push(c.id);
            }
        }
        ids.sort();
        let mut ended = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(c) = self.conns.get(id) else {
                continue;
            };
            let (peer, class) = (c.remote, c.served().map(|s| s.action_class.clone()));
            let how = match self.end_conn(id, by, now) {
                Some(Ended::Terminated(pid)) => (Some(pid), "sigterm"),
                Some(Ended::MessageCut) => (None, "message-cut"),
                Some(Ended::Closed) => (None, "closed"),
                None => continue,
            };
            ended.push(EndedRow {
                id: id.0,
                pid: how.0,
                peer,
                class: class.filter(|c| c != "-"),
                how: how.1.to_owned(),
            });
        }
        Reply::Ended { ended, missing }
    }

    fn change_timeout(&mut self, id: ConnId, secs: u64, by: &str, now: Instant) -> Reply {
        if self.conns.get(id).is_none() {
            return Reply::error(
                ErrorKind::NoSuchId,
                format!("no live connection has id {}", id.0),
            );
        }
        if secs == 0 {
            self.end_conn(id, by, now);
        } else {
            self.end_at(
                id,
                now + Duration::from_secs(secs),
                format!("{by}: its {secs} s timeout passed"),
            );
        }
        Reply::Changed {
            id: id.0,
            timeout: secs,
        }
    }

    fn block_from_control(&mut self, req: BlockReq) -> Reply {
        let addr = req.addr;
        let until = |b: &super::blocks::Block| match b.until {
            Some(u) => format!("until {u} ({} s)", u.saturating_sub(unix_now())),
            None => "until unblocked".to_owned(),
        };
        match self.apply_block(req, false) {
            Outcome::Blocked(b) => Reply::Done(format!("blocked {addr} {}", until(&b))),
            Outcome::Extended(b) => Reply::Done(format!("block of {addr} extended {}", until(&b))),
            Outcome::AlreadyBlocked => Reply::Done(format!("{addr} is already blocked")),
            Outcome::Never => Reply::error(
                ErrorKind::Failed,
                format!("{addr} is in neverblock: not blocked"),
            ),
            Outcome::OverBudget => Reply::error(
                ErrorKind::Failed,
                format!("{addr}: the block budget is spent for this minute"),
            ),
        }
    }

    fn explain(&mut self, client: ClientId, ask: ExplainAsk) {
        let local = ask
            .local
            .or_else(|| self.listeners.iter().find(|l| !l.trap).map(|l| l.addr));
        let Some(local) = local else {
            return self.reply(
                client,
                Reply::error(ErrorKind::BadRequest, "no listen address; give --local"),
            );
        };
        self.ask_classifier(client, Ask::Explain, Some((ask, local)));
    }

    /// Forwards `explain`/`metrics` to the classifier.
    fn ask_classifier(
        &mut self,
        client: ClientId,
        ask: Ask,
        explain: Option<(ExplainAsk, SocketAddr)>,
    ) {
        if !self.workers_ready() {
            if ask == Ask::Metrics {
                let m = self.metrics(Vec::new());
                return self.send_control(ParentToControl::Metrics { client, metrics: m });
            }
            return self.reply(
                client,
                Reply::error(ErrorKind::Failed, "the classifier is not running right now"),
            );
        }
        let Some(c) = self.control.as_mut() else {
            return;
        };
        let req = ReqId(c.next_req);
        c.next_req += 1;
        c.asks.insert(req, (client, ask, Instant::now()));
        let msg = match explain {
            Some((ask, local)) => ParentToClassifier::Explain { req, ask, local },
            None => ParentToClassifier::MetricsRequest { req },
        };
        let sent = match self.classifier.as_mut() {
            Some(w) => w.queue(&msg, "Explain"),
            None => Ok(()),
        };
        if let Err(f) = sent {
            self.worker_failed(f);
        }
    }

    fn metrics(&self, lookups: Vec<LookupMetrics>) -> privsep::control::Metrics {
        self.counters.snapshot(
            self.lifetime,
            &self.conns,
            self.policy.gen.0,
            self.blocker.set().len(),
            lookups,
        )
    }

    /// The classifier's answer to an `Explain`.
    pub(super) fn on_explained(
        &mut self,
        req: ReqId,
        mut report: ExplainReport,
    ) -> Result<(), Failure> {
        let client = self.take_ask(req, Ask::Explain)?;
        // The chrooted classifier never knew the file's name; the parent does.
        let name = self.policy.rules_name().to_owned();
        for r in &mut report.rules {
            if let Some(line) = r.at.strip_prefix("rules:") {
                r.at = format!("{name}:{line}");
            }
        }
        self.reply(client, Reply::Explained(report));
        Ok(())
    }

    /// The classifier's answer to a `MetricsRequest`.
    pub(super) fn on_metrics(
        &mut self,
        req: ReqId,
        lookups: Vec<LookupMetrics>,
    ) -> Result<(), Failure> {
        let client = self.take_ask(req, Ask::Metrics)?;
        let m = self.metrics(lookups);
        self.send_control(ParentToControl::Metrics { client, metrics: m });
        Ok(())
    }

    fn take_ask(&mut self, req: ReqId, want: Ask) -> Result<ClientId, Failure> {
        match self.control.as_mut().and_then(|c| c.asks.remove(&req)) {
            Some((client, ask, _)) if ask == want => Ok(client),
            _ => Err(Failure::violation(
                Role::Classifier,
                format!(
                    "classifier answer refused: request {} was never asked",
                    req.0
                ),
            )),
        }
    }

    /// The classifier went away: every question it had is answered with an error.
    pub(super) fn fail_asks(&mut self, why: &str) {
        let Some(c) = self.control.as_mut() else {
            return;
        };
        let mut clients: Vec<ClientId> = c.asks.drain().map(|(_, (client, _, _))| client).collect();
        clients.append(&mut c.status_waiters);
        for client in clients {
            self.reply(client, Reply::error(ErrorKind::Failed, why.to_owned()));
        }
    }

    /// Questions the classifier left unanswered for [`ASK_DEADLINE`].
    pub(super) fn expire_asks(&mut self, now: Instant) {
        let Some(c) = self.control.as_mut() else {
            return;
        };
        let late: Vec<ReqId> = c
            .asks
            .iter()
            .filter(|(_, (_, _, at))| now.saturating_duration_since(*at) > ASK_DEADLINE)
            .map(|(r, _)| *r)
            .collect();
        for req in late {
            if let Some((client, _, _)) = self.control.as_mut().and_then(|c| c.asks.remove(&req)) {
                self.reply(
                    client,
                    Reply::error(ErrorKind::Failed, "the classifier did not answer in time"),
                );
            }
        }
    }

    fn control_status(&mut self, client: ClientId) {
        let asked = self.control.as_ref().is_some_and(|c| c.wants_status());
        if let Some(c) = self.ctl() {
            c.status_waiters.push(client);
        }
        // One question to the classifier answers every waiter.
        if !asked {
            self.request_status();
        }
    }

    /// The classifier's status numbers arrived: answer every `status` waiting for them.
    pub(super) fn answer_status(&mut self, lines: &[String]) {
        let waiters = match self.ctl() {
            Some(c) => std::mem::take(&mut c.status_waiters),
            None => return,
        };
        for client in waiters {
            self.reply(client, Reply::Lines(lines.to_vec()));
        }
    }

    /// A reload finished: answer every `reload` waiting for it.
    pub(super) fn answer_reload(&mut self, changed: &Reloaded) {
        let waiters = match self.ctl() {
            Some(c) if !c.reload_waiters.is_empty() => std::mem::take(&mut c.reload_waiters),
            _ => return,
        };
        let reply = if changed.errors.is_empty() {
            Reply::Done(format!(
                "reloaded the rules and actions files: policy generation {}",
                self.policy.gen.0
            ))
        } else {
            Reply::error(ErrorKind::Failed, changed.errors.join("\n"))
        };
        for client in waiters {
            self.reply(client, reply.clone());
        }
    }

    /// Starts the control worker and greets it.
    pub(super) fn start_control(&mut self) -> crate::exit::Result<()> {
        let Some(c) = self.control.as_ref() else {
            return Ok(());
        };
        let settings = c.settings.clone();
        let fd = std::os::fd::AsFd::as_fd(&c.socket.fd);
        let xmlrpc = c
            .xmlrpc
            .as_ref()
            .map(|x| std::os::fd::AsFd::as_fd(&x.listener));
        let s = match super::workers::start_one(&self.plan, Role::Control, Some(fd), xmlrpc) {
            Ok(s) => s,
            Err(e) => return self.start_failed(Role::Control, e),
        };
        log::debug(2, &format!("started control={}", s.pid));
        let mut w = Worker::new(s);
        let hello = ParentToControl::Hello {
            build: self.build.clone(),
            settings,
        };
        let r = w.queue(&hello, "Hello");
        if let Some(c) = self.ctl() {
            c.worker = Some(w);
        }
        if let Err(f) = r {
            self.worker_failed(f);
        }
        Ok(())
    }

    /// The control worker went down (roles.rs killed it; it is restarted alone and the daemon
    /// serves connections meanwhile): its clients are gone with it.
    pub(super) fn control_down(&mut self) {
        if let Some(c) = self.control.as_mut() {
            c.asks.clear();
            c.reload_waiters.clear();
            c.status_waiters.clear();
        }
    }
}

/// A change request, for the audit line.
fn describe(req: &Request) -> String {
    match req {
        Request::Kill(t) => {
            let mut parts = Vec::new();
            if !t.ids.is_empty() {
                let ids: Vec<String> = t.ids.iter().map(u64::to_string).collect();
                parts.push(format!("ids {}", ids.join(",")));
            }
            if !t.ip.is_empty() {
                let ips: Vec<String> = t.ip.iter().map(|c| c.to_string()).collect();
                parts.push(format!("--ip {}", ips.join(",")));
            }
            if !t.class.is_empty() {
                let cs: Vec<&str> = t.class.iter().map(|c| c.as_str()).collect();
                parts.push(format!("--class {}", log::escape(&cs.join(","))));
            }
            format!("kill {}", parts.join(" "))
        }
        Request::Change { id, timeout } => format!("change {id} timeout {timeout}"),
        Request::Block { addr, seconds } => match seconds {
            Some(s) => format!("block {addr} {s}s"),
            None => format!("block {addr}"),
        },
        Request::Unblock { addr } => format!("unblock {addr}"),
        Request::Conntrack(privsep::conntrack::CtRequest::Kill(k)) => {
            let mut parts: Vec<String> = k.ids.iter().map(u32::to_string).collect();
            parts.extend(k.ip.iter().map(|c| format!("--ip {c}")));
            format!("conntrack kill {}", parts.join(" "))
        }
        Request::Conntrack(privsep::conntrack::CtRequest::Change { id, field, value }) => {
            format!("conntrack change {id} {field} {value}")
        }
        Request::Conntrack(privsep::conntrack::CtRequest::Autorefresh { on }) => {
            format!("conntrack autorefresh {}", if *on { "on" } else { "off" })
        }
        other => other.name().to_owned(),
    }
}
