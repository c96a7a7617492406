//! The parent's side of the netfilter channel (pyctd's job): the netfilter worker's start and
//! greeting, the relay of conntrack requests from the control worker to it and of its answers
//! back, and `blockflush`'s deletes.
//!
//! Runs in the parent (root). The parent does not look into the conntrack table: it forwards
//! the typed request it received from the control worker (checked again here) and relays the
//! answer after checking that it answers a request it asked, with a reply of that request's
//! kind and a bounded page. The worker holds CAP_NET_ADMIN; a worker that breaks the protocol
//! is killed and restarted alone, like the sentry (roles.rs); a client waiting on it gets an
//! error.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use privsep::conntrack::{CtKill, CtRequest, MAX_CT_PAGE};
use privsep::control::{Cidr, ErrorKind, Reply};
use privsep::proto::{
    ClientId, NetfilterSettings, NetfilterToParent, ParentToControl, ParentToNetfilter, ReqId,
};
use privsep::Role;

use super::workers::{Failure, Worker};
use super::Parent;
use crate::log;

/// Longest the worker may take to answer (a dump of a million entries takes a few seconds).
const NETFILTER_DEADLINE: Duration = Duration::from_secs(60);
/// Requests waiting on the worker at once; more are refused (the worker answers in order).
const MAX_ASKS: usize = 256;

/// Who is waiting for an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asker {
    Client(ClientId),
    /// `blockflush`: nobody waits; the result is logged.
    Block,
}

/// Everything the parent keeps about the netfilter worker (`conntrack on` / `blockflush on`).
#[derive(Debug)]
pub struct NetfilterSide {
    pub worker: Option<Worker<ParentToNetfilter, NetfilterToParent>>,
    settings: NetfilterSettings,
    /// Whether blocks delete the address's flows.
    blockflush: bool,
    asks: HashMap<ReqId, (Asker, bool, Instant)>,
    next_req: u64,
}

impl NetfilterSide {
    pub fn new(uid_mask: u32, blockflush: bool) -> NetfilterSide {
        NetfilterSide {
            worker: None,
            settings: NetfilterSettings { uid_mask },
            blockflush,
            asks: HashMap::new(),
            next_req: 1,
        }
    }
}

/// Whether `reply` is an answer `ask` can have (the bool: the ask was a `list`).
fn fits(is_list: bool, reply: &Reply) -> Result<(), String> {
    match reply {
        Reply::CtPage(p) if is_list => {
            if p.rows.len() as u64 > MAX_CT_PAGE {
                return Err(format!("a page of {} rows", p.rows.len()));
            }
            Ok(())
        }
        Reply::CtKilled(_) | Reply::Done(_) if !is_list => Ok(()),
        Reply::Error { .. } => Ok(()),
        _ => Err("an answer of the wrong kind".into()),
    }
}

impl Parent {
    /// A conntrack request from a control client (checked and authorised by the caller).
    pub(super) fn ask_netfilter(&mut self, client: ClientId, ask: CtRequest) {
        if let Err(why) = self.queue_netfilter(Asker::Client(client), ask) {
            self.send_control_reply(client, Reply::error(ErrorKind::Failed, why));
        }
    }

    /// `blockflush`: the newly blocked address's tracked flows are deleted.
    pub(super) fn flush_blocked_flows(&mut self, addr: IpAddr) {
        if !self.netfilter.as_ref().is_some_and(|n| n.blockflush) {
            return;
        }
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        let ask = CtRequest::Kill(CtKill {
            ids: vec![],
            ip: vec![Cidr { addr, prefix }],
        });
        if let Err(why) = self.queue_netfilter(Asker::Block, ask) {
            log::err(&format!("blockflush {addr}: {why}"));
        }
    }

    fn queue_netfilter(&mut self, asker: Asker, ask: CtRequest) -> Result<(), &'static str> {
        let failed = |m: &'static str| m;
        let Some(n) = self.netfilter.as_mut() else {
            return Err(failed("conntrack is off: nanny.conf has no 'conntrack on'"));
        };
        let Some(w) = n.worker.as_mut().filter(|w| w.hello) else {
            return Err(failed("the netfilter worker is not running right now"));
        };
        if n.asks.len() >= MAX_ASKS {
            return Err(failed("too many conntrack requests waiting; try again"));
        }
        let req = ReqId(n.next_req);
        n.next_req += 1;
        let is_list = matches!(ask, CtRequest::List(_));
        let r = w.queue(&ParentToNetfilter::Ask { req, ask }, "Ask");
        n.asks.insert(req, (asker, is_list, Instant::now()));
        if let Err(f) = r {
            self.worker_failed(f);
        }
        Ok(())
    }

    fn send_control_reply(&mut self, client: ClientId, reply: Reply) {
        let r = match self.control.as_mut().and_then(|c| c.worker.as_mut()) {
            Some(w) => w.queue(&ParentToControl::Reply { client, reply }, "Reply"),
            None => return,
        };
        if let Err(f) = r {
            self.worker_failed(f);
        }
    }

    /// Admits one message from the netfilter worker and relays it.
    pub(super) fn on_netfilter(&mut self, msg: NetfilterToParent) -> Result<(), Failure> {
        let Some(w) = self.netfilter.as_mut().and_then(|n| n.worker.as_mut()) else {
            return Ok(());
        };
        let violation = |why: String| Failure::violation(Role::Netfilter, why);
        match msg {
            NetfilterToParent::Hello { build } => w.greeted(&self.build, &build)?,
            _ if !w.hello => {
                return Err(violation("netfilter message refused: before Hello".into()));
            }
            NetfilterToParent::Log(rec) => w.relay_log(rec)?,
            NetfilterToParent::Answer { req, reply } => {
                let Some((asker, is_list, _)) =
                    self.netfilter.as_mut().and_then(|n| n.asks.remove(&req))
                else {
                    return Err(violation(format!(
                        "netfilter Answer refused: request {} was never asked",
                        req.0
                    )));
                };
                if let Err(why) = fits(is_list, &reply) {
                    return Err(violation(format!("netfilter Answer refused: {why}")));
                }
                match asker {
                    Asker::Client(client) => self.send_control_reply(client, reply),
                    Asker::Block => match reply {
                        Reply::CtKilled(k) if !k.killed.is_empty() => log::notice(&format!(
                            "blockflush: deleted {} conntrack entries",
                            k.killed.len()
                        )),
                        Reply::Error { message, .. } => {
                            log::err(&format!("blockflush: {}", log::escape(&message)))
                        }
                        _ => {}
                    },
                }
            }
        }
        Ok(())
    }

    /// Requests the worker left unanswered for [`NETFILTER_DEADLINE`]: it is stuck; restart it.
    pub(super) fn expire_netfilter(&mut self, now: Instant) {
        let late = self.netfilter.as_ref().is_some_and(|n| {
            n.asks
                .values()
                .any(|(_, _, at)| now.saturating_duration_since(*at) > NETFILTER_DEADLINE)
        });
        if late {
            self.worker_failed(Failure::new(
                Role::Netfilter,
                "it did not answer a conntrack request in time",
            ));
        }
    }

    /// Starts the netfilter worker (with `conntrack on` or `blockflush on`) and greets it.
    pub(super) fn start_netfilter(&mut self) -> crate::exit::Result<()> {
        let Some(n) = self.netfilter.as_ref() else {
            return Ok(());
        };
        let settings = n.settings.clone();
        let s = match super::workers::start_one(&self.plan, Role::Netfilter, None, None) {
            Ok(s) => s,
            Err(e) => return self.start_failed(Role::Netfilter, e),
        };
        log::debug(2, &format!("started netfilter={}", s.pid));
        let mut w = Worker::new(s);
        let hello = ParentToNetfilter::Hello {
            build: self.build.clone(),
            settings,
        };
        let r = w.queue(&hello, "Hello");
        if let Some(n) = self.netfilter.as_mut() {
            n.worker = Some(w);
        }
        if let Err(f) = r {
            self.worker_failed(f);
        }
        Ok(())
    }

    /// The netfilter worker went down (roles.rs killed it; it is restarted alone): the
    /// clients waiting on it get an error.
    pub(super) fn netfilter_down(&mut self) {
        let Some(n) = self.netfilter.as_mut() else {
            return;
        };
        let waiting: Vec<ClientId> = n
            .asks
            .drain()
            .filter_map(|(_, (a, _, _))| match a {
                Asker::Client(c) => Some(c),
                Asker::Block => None,
            })
            .collect();
        for c in waiting {
            self.send_control_reply(
                c,
                Reply::error(ErrorKind::Failed, "the netfilter worker failed; try again"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use privsep::conntrack::{CtKilled, CtPage};

    #[test]
    fn answers_must_fit_their_question() {
        let page = |n: usize| {
            Reply::CtPage(CtPage {
                total: 0,
                tracked: 0,
                age_ms: 0,
                autorefresh: false,
                rows: Vec::with_capacity(n),
            })
        };
        // label, is_list, reply, ok
        let rows: Vec<(&str, bool, Reply, bool)> = vec![
            ("page to list", true, page(0), true),
            ("page to kill", false, page(0), false),
            (
                "killed to kill",
                false,
                Reply::CtKilled(CtKilled::default()),
                true,
            ),
            (
                "killed to list",
                true,
                Reply::CtKilled(CtKilled::default()),
                false,
            ),
            ("done to refresh", false, Reply::Done("x".into()), true),
            (
                "error to list",
                true,
                Reply::error(ErrorKind::Failed, "x"),
                true,
            ),
            ("lines to list", true, Reply::Lines(vec![]), false),
        ];
        for (label, is_list, reply, ok) in rows {
            assert_eq!(fits(is_list, &reply).is_ok(), ok, "{label}");
        }
    }
}
