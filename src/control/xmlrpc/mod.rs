//! pyctd's XML-RPC API (`xmlrpc ADDR:PORT` in nanny.conf), served by the control worker beside
//! the control socket: HTTP/1.x clients ([`http`], httparse), XML-RPC calls ([`codec`],
//! quick-xml), pyctd's procedures ([`procs`]) and sessions ([`sessions`]).
//!
//! Runs in the control worker (unprivileged, chrooted, single-threaded): the listener was bound
//! by the parent and handed over as fd 5. Every byte here comes from a remote frontend. A call
//! is either answered at once (login, faults) or forwarded to the parent as
//! `ControlToParent::XmlrpcRequest` (conntrack requests only, naming the session's user); the
//! parent's `Reply` comes back through [`Front::on_reply`]. At most [`MAX_HTTP_CLIENTS`]
//! connections; more are accepted and closed at once.

pub mod codec;
pub mod http;
pub mod procs;
pub mod sessions;

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use privsep::control::Reply;
use privsep::proto::{ClientId, ControlToParent};
use privsep::xmlrpc::{XmlrpcAuth, XmlrpcSettings};

use http::{HttpConn, Input};
use procs::{Expect, Outcome};
use sessions::Sessions;

/// XML-RPC connections served at once.
pub const MAX_HTTP_CLIENTS: usize = 32;

#[derive(Debug)]
pub struct Front {
    pub listener: TcpListener,
    pub conns: HashMap<ClientId, HttpConn>,
    waiting: HashMap<ClientId, Expect>,
    sessions: Sessions,
    auth: XmlrpcAuth,
    idle_secs: u32,
}

/// What the worker must do for the front end.
#[derive(Debug, Default)]
pub struct Effects {
    pub to_parent: Vec<ControlToParent>,
    pub logs: Vec<String>,
}

impl Front {
    pub fn new(listener: TcpListener, s: XmlrpcSettings) -> std::io::Result<Front> {
        listener.set_nonblocking(true)?;
        Ok(Front {
            listener,
            conns: HashMap::new(),
            waiting: HashMap::new(),
            sessions: Sessions::new(Duration::from_secs(u64::from(s.idle_secs))),
            auth: s.auth,
            idle_secs: s.idle_secs,
        })
    }

    /// A new password file (reload); sessions stay.
    pub fn set_auth(&mut self, auth: XmlrpcAuth) {
        self.auth = auth;
    }

    pub fn listener_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.conns.values().filter_map(HttpConn::deadline).min()
    }

    pub fn accept(&mut self, next_client: &mut u64, now: Instant) {
        // Bounded: a burst is taken a few at a time per turn.
        for _ in 0..16 {
            let Ok((stream, _)) = self.listener.accept() else {
                return;
            };
            if self.conns.len() >= MAX_HTTP_CLIENTS || stream.set_nonblocking(true).is_err() {
                // Closed at once: the frontend sees a reset and may retry.
                continue;
            }
            let id = ClientId(*next_client);
            *next_client += 1;
            self.conns.insert(id, HttpConn::new(stream, now));
        }
    }

    /// A poll event on connection `id`.
    pub fn on_conn(
        &mut self,
        id: ClientId,
        writable: bool,
        readable: bool,
        now: Instant,
        fx: &mut Effects,
    ) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if writable && !c.write() {
            self.close(id);
            return;
        }
        // A request read along with the last one is taken once that one is answered.
        if !(readable || c.has_buffered()) || !c.wants_read() {
            return;
        }
        match c.read(now) {
            Input::Nothing => {}
            Input::Gone => {
                // An answer on its way from the parent finds no connection and is dropped.
                self.close(id);
            }
            Input::Refuse(status, reason) => {
                c.refuse(status, reason, now);
                if !c.write() {
                    self.close(id);
                }
            }
            Input::TooLarge(n) => {
                let body = codec::encode_fault(
                    procs::fault::INVALID_REQUEST,
                    &format!("request too large: {n} bytes (at most {})", http::MAX_BODY),
                );
                c.respond_and_close(&body, now);
                if !c.write() {
                    self.close(id);
                }
            }
            Input::Call(body) => self.handle(id, &body, now, fx),
        }
    }

    fn handle(&mut self, id: ClientId, body: &[u8], now: Instant, fx: &mut Effects) {
        let outcome = match codec::decode_call(body) {
            Ok(call) => {
                let (o, note) =
                    procs::call(&call, &self.auth, &mut self.sessions, self.idle_secs, now);
                fx.logs.extend(note);
                o
            }
            Err(e) => Outcome::Answer(codec::encode_fault(
                procs::fault::PARSE_ERROR,
                &format!("not an XML-RPC call: {e}"),
            )),
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        match outcome {
            Outcome::Answer(body) => {
                c.respond(&body, now);
                if !c.write() {
                    self.close(id);
                }
            }
            Outcome::Forward { user, req, expect } => {
                c.waiting = true;
                self.waiting.insert(id, expect);
                fx.to_parent.push(ControlToParent::XmlrpcRequest {
                    client: id,
                    user,
                    req: *req,
                });
            }
        }
    }

    /// The parent's answer for `id`, if `id` is ours; true when it was.
    pub fn on_reply(&mut self, id: ClientId, reply: &Reply, now: Instant) -> bool {
        let Some(expect) = self.waiting.remove(&id) else {
            return false;
        };
        if let Some(c) = self.conns.get_mut(&id) {
            c.respond(&procs::answer(&expect, reply), now);
            if !c.write() {
                self.close(id);
            }
        }
        true
    }

    /// Whether `id` is (or was, while its answer is pending) one of ours.
    pub fn owns(&self, id: ClientId) -> bool {
        self.conns.contains_key(&id) || self.waiting.contains_key(&id)
    }

    fn close(&mut self, id: ClientId) {
        self.conns.remove(&id);
    }

    /// Drops connections past a deadline, and idle sessions.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<ClientId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.expired(now).is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.close(id);
        }
        self.sessions.expire(now);
    }
}
