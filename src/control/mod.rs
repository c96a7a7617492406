//! The control worker: serves the local control socket that `nannyctl` talks to.
//!
//! Runs as its own process, started by the parent (re-exec with `--privsep-role control UID GID
//! [CHROOT]`, fd 3 = its channel to the parent, fd 4 = the listening control socket the parent
//! bound), demoted to the unprivileged privsep user with no capabilities, no_new_privs,
//! chrooted into the empty directory, RLIMIT_NPROC 0 (single-threaded). It is the only process
//! that reads a control client's bytes: each request is one JSON line, at most `MAX_REQUEST`
//! bytes, decoded into a typed `Request`, checked, and authorised by the client's kernel
//! credentials ([`auth`]); only then is it forwarded to the parent, which answers from its own
//! tables. `list` is filtered, ordered and paged here ([`query`]), `metrics` rendered here
//! ([`prom`]), so the parent only copies its rows.
//!
//! Protocol with the parent (privsep::proto):
//! 1. parent → `ParentToControl::Hello { build, settings }`; a differing build exits 111;
//! 2. we forbid new processes and answer `ControlToParent::Hello { build }`;
//! 3. then `Request { client, caller, req }` up, `Reply`/`Table`/`Metrics` down, one answer per
//!    request; `Log` records for refusals.
//!
//! With `xmlrpc ADDR:PORT`, fd 5 is the XML-RPC listener the parent bound, served in the same
//! poll loop ([`xmlrpc`]); without it, fd 5 is /dev/null and is closed at once.
//!
//! Exit codes: 0 when the parent closes the channel, 111 on anything else.

pub mod auth;
pub mod client;
pub mod outbox;
pub mod prom;
pub mod query;
pub mod xmlrpc;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use privsep::control::{ErrorKind, Reply, Request};
use privsep::proto::{
    Caller, ClientId, ControlSettings, ControlToParent, LogLevel, LogRecord, ParentToControl,
    MAX_LOG_LINE,
};
use privsep::{Channel, ChannelError};

use crate::exit::{EXIT_OK, EXIT_SYSTEM};
use client::{Client, Input, Waiting};

/// Clients served at once; more are told so and closed.
pub const MAX_CLIENTS: usize = 64;

/// Refusals logged per minute (the rest are counted).
const REFUSALS_LOGGED: u32 = 10;

type ToParent = Channel<ControlToParent, ParentToControl>;

struct Worker {
    parent: ToParent,
    listener: UnixListener,
    settings: ControlSettings,
    clients: HashMap<ClientId, Client>,
    next_client: u64,
    /// (minute, refusals in it) for the log budget.
    refusals: (u64, u32),
    started: Instant,
    /// pyctd's XML-RPC front end, when `xmlrpc` is configured.
    xmlrpc: Option<xmlrpc::Front>,
}

/// The control role's entry point (called by the role main after the privilege drop).
pub fn run(parent: ToParent, listener: OwnedFd, xmlrpc: OwnedFd) -> ExitCode {
    serve(parent, listener, xmlrpc, true)
}

/// Whether `fd` is a socket (the XML-RPC listener) rather than the /dev/null placeholder
/// (`take_worker_fds_as` already proved it is one of the two).
fn is_socket(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

/// `run`, optionally without forbidding new processes (for a test that runs it in-process).
pub fn serve(
    mut parent: ToParent,
    listener: OwnedFd,
    xmlrpc_fd: OwnedFd,
    forbid_processes: bool,
) -> ExitCode {
    parent.accept_frames_up_to(privsep::wire::MAX_TRUSTED_FRAME);
    let build = privsep::build_id();
    let settings = match parent.recv() {
        Ok(ParentToControl::Hello {
            build: theirs,
            settings,
        }) if theirs == build => settings,
        Ok(_) => {
            let _ = parent.send(&ControlToParent::Hello { build });
            let _ = parent.send(&log_record(
                LogLevel::Crit,
                "parent build differs or Hello missing; exiting".into(),
            ));
            return ExitCode::from(EXIT_SYSTEM);
        }
        Err(ChannelError::Closed) => return ExitCode::from(EXIT_OK),
        Err(_) => return ExitCode::from(EXIT_SYSTEM),
    };
    let forbidden = if forbid_processes {
        crate::noprocs::forbid(privsep::Role::Control)
    } else {
        Ok(())
    };
    if parent
        .send(&ControlToParent::Hello {
            build: build.clone(),
        })
        .is_err()
    {
        return ExitCode::from(EXIT_SYSTEM);
    }
    let listener = UnixListener::from(listener);
    let serving = (settings.xmlrpc.clone(), is_socket(&xmlrpc_fd));
    let front = match serving {
        (Some(x), true) => x
            .check()
            .and_then(|()| {
                xmlrpc::Front::new(std::net::TcpListener::from(xmlrpc_fd), x)
                    .map_err(|e| format!("xmlrpc listener: {e}"))
            })
            .map(Some),
        // The /dev/null placeholder is closed here: nothing is kept that is not used.
        (None, false) => {
            drop(xmlrpc_fd);
            Ok(None)
        }
        (Some(_), false) => Err("xmlrpc is configured but fd 5 is not its listener".into()),
        (None, true) => Err("fd 5 is a listener but xmlrpc is not configured".into()),
    };
    let set_up = forbidden
        .and_then(|()| front.as_ref().map(|_| ()).map_err(Clone::clone))
        .and_then(|()| listener.set_nonblocking(true).map_err(|e| e.to_string()))
        .and_then(|()| parent.set_nonblocking(true).map_err(|e| e.to_string()));
    if let Err(e) = set_up {
        let _ = parent.send(&log_record(LogLevel::Crit, format!("control: {e}")));
        return ExitCode::from(EXIT_SYSTEM);
    }
    let mut w = Worker {
        parent,
        listener,
        settings,
        clients: HashMap::new(),
        next_client: 1,
        refusals: (0, 0),
        started: Instant::now(),
        xmlrpc: front.ok().flatten(),
    };
    match w.run() {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            let _ = w.parent.set_nonblocking(false);
            let _ = w.parent.send(&log_record(LogLevel::Crit, e));
            ExitCode::from(EXIT_SYSTEM)
        }
    }
}

fn log_record(level: LogLevel, mut text: String) -> ControlToParent {
    if text.len() > MAX_LOG_LINE {
        let mut end = MAX_LOG_LINE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    ControlToParent::Log(LogRecord {
        level,
        verbosity: 0,
        text,
    })
}

/// What one poll slot is.
#[derive(Clone, Copy)]
enum Slot {
    Parent,
    Listener,
    Client(ClientId),
    XmlrpcListener,
    Http(ClientId),
}

impl Worker {
    /// The loop; Ok(()) when the parent closed the channel.
    fn run(&mut self) -> Result<(), String> {
        loop {
            let now = Instant::now();
            let timeout = self
                .clients
                .values()
                .filter_map(Client::deadline)
                .chain(self.xmlrpc.as_ref().and_then(xmlrpc::Front::deadline))
                .min()
                .map_or(PollTimeout::NONE, |d| {
                    let ms = d
                        .saturating_duration_since(now)
                        .as_millis()
                        .saturating_add(1);
                    PollTimeout::from(u16::try_from(ms).unwrap_or(u16::MAX))
                });
            let timeout = if self.parent.has_buffered() {
                PollTimeout::ZERO
            } else {
                timeout
            };
            let mut slots = Vec::with_capacity(2 + self.clients.len());
            let mut fired = Vec::new();
            {
                let mut fds = Vec::with_capacity(2 + self.clients.len());
                let mut pev = PollFlags::POLLIN;
                if self.parent.wants_write() {
                    pev |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(self.parent.as_fd(), pev));
                slots.push(Slot::Parent);
                fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
                slots.push(Slot::Listener);
                for (id, c) in &self.clients {
                    let mut ev = PollFlags::empty();
                    if c.wants_read() {
                        ev |= PollFlags::POLLIN;
                    }
                    if c.wants_write() {
                        ev |= PollFlags::POLLOUT;
                    }
                    // One waiting for the parent is not polled at all: its hang-up would
                    // wake every turn until the answer comes.
                    if ev.is_empty() {
                        continue;
                    }
                    fds.push(PollFd::new(c.stream.as_fd(), ev));
                    slots.push(Slot::Client(*id));
                }
                if let Some(x) = &self.xmlrpc {
                    fds.push(PollFd::new(x.listener_fd(), PollFlags::POLLIN));
                    slots.push(Slot::XmlrpcListener);
                    for (id, c) in &x.conns {
                        let mut ev = PollFlags::empty();
                        if c.wants_read() {
                            ev |= PollFlags::POLLIN;
                        }
                        if c.wants_write() {
                            ev |= PollFlags::POLLOUT;
                        }
                        if ev.is_empty() {
                            continue;
                        }
                        fds.push(PollFd::new(c.stream.as_fd(), ev));
                        slots.push(Slot::Http(*id));
                    }
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(format!("poll: {e}")),
                }
                for (s, f) in slots.iter().zip(fds.iter()) {
                    let r = f.revents().unwrap_or(PollFlags::empty());
                    if !r.is_empty() {
                        fired.push((*s, r));
                    }
                }
            }
            let now = Instant::now();
            let parent_ready =
                self.parent.has_buffered() || fired.iter().any(|(s, _)| matches!(s, Slot::Parent));
            for (slot, rev) in fired {
                match slot {
                    Slot::Parent => {
                        if rev.contains(PollFlags::POLLOUT) {
                            self.flush()?;
                        }
                    }
                    Slot::Listener => self.accept(now),
                    Slot::Client(id) => self.on_client(id, rev, now),
                    Slot::XmlrpcListener => {
                        if let Some(x) = self.xmlrpc.as_mut() {
                            x.accept(&mut self.next_client, now);
                        }
                    }
                    Slot::Http(id) => {
                        let mut fx = xmlrpc::Effects::default();
                        if let Some(x) = self.xmlrpc.as_mut() {
                            let readable = rev.intersects(
                                PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR,
                            );
                            x.on_conn(id, rev.contains(PollFlags::POLLOUT), readable, now, &mut fx);
                        }
                        self.apply(fx)?;
                    }
                }
            }
            if parent_ready && !self.serve_parent(now)? {
                return Ok(());
            }
            self.expire(now);
            self.flush()?;
        }
    }

    fn flush(&mut self) -> Result<(), String> {
        match self.parent.flush() {
            Ok(()) => Ok(()),
            Err(e) => Err(format!("parent channel: {e}")),
        }
    }

    fn send_parent(&mut self, msg: &ControlToParent) -> Result<(), String> {
        self.parent
            .queue(msg)
            .map_err(|e| format!("parent channel: {e}"))
    }

    fn accept(&mut self, now: Instant) {
        // Bounded: a burst of clients is taken a few at a time per turn.
        for _ in 0..16 {
            let (stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(_) => return,
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if self.clients.len() >= MAX_CLIENTS {
                let mut c = Client::new(stream, auth::Peer::unknown(), now);
                c.refuse(
                    ErrorKind::Failed,
                    format!("too many control clients (at most {MAX_CLIENTS}); try again"),
                    now,
                );
                let _ = c.write();
                continue;
            }
            let peer = match auth::peer_of(stream.as_fd()) {
                Ok(p) => p,
                Err(_) => continue,
            };
            let id = ClientId(self.next_client);
            self.next_client += 1;
            self.clients.insert(id, Client::new(stream, peer, now));
        }
    }

    fn on_client(&mut self, id: ClientId, rev: PollFlags, now: Instant) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if rev.contains(PollFlags::POLLOUT) && !c.write() {
            self.clients.remove(&id);
            return;
        }
        if !rev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return;
        }
        self.take_requests(id, now);
    }

    /// Reads and handles the client's next request, if it can take one now.
    fn take_requests(&mut self, id: ClientId, now: Instant) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if !c.wants_read() {
            return;
        }
        match c.read(now) {
            Input::Nothing => {}
            Input::Gone => {
                // A reply on its way from the parent finds no client and is dropped.
                if c.waiting.is_none() {
                    self.clients.remove(&id);
                }
            }
            Input::TooLong => {
                c.refuse(
                    ErrorKind::BadRequest,
                    format!(
                        "bad request: longer than {} bytes",
                        privsep::control::MAX_REQUEST
                    ),
                    now,
                );
                if !c.write() {
                    self.clients.remove(&id);
                }
            }
            Input::Line(line) => self.handle(id, &line, now),
        }
    }

    fn handle(&mut self, id: ClientId, line: &[u8], now: Instant) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let req = match client::decode(line) {
            Ok(r) => r,
            Err(e) => {
                c.send(&Reply::error(ErrorKind::BadRequest, e), now);
                if !c.write() {
                    self.clients.remove(&id);
                }
                return;
            }
        };
        if let Err(why) = auth::may(&c.peer, req.access(), &self.settings) {
            let (uid, pid, name) = (c.peer.uid, c.peer.pid, req.name());
            c.send(
                &Reply::error(ErrorKind::NotAuthorised, format!("{name}: {why}")),
                now,
            );
            if !c.write() {
                self.clients.remove(&id);
            }
            self.log_refusal(uid, pid, name);
            return;
        }
        c.waiting = Some(match &req {
            Request::List(q) => Waiting::List(q.clone()),
            _ => Waiting::Other,
        });
        let caller = Caller {
            uid: c.peer.uid,
            pid: c.peer.pid,
        };
        let msg = ControlToParent::Request {
            client: id,
            caller,
            req,
        };
        if let Err(e) = self.send_parent(&msg) {
            if let Some(c) = self.clients.get_mut(&id) {
                c.refuse(ErrorKind::Failed, e, now);
            }
        }
    }

    /// Sends what the XML-RPC front end asked for: requests and log lines.
    fn apply(&mut self, fx: xmlrpc::Effects) -> Result<(), String> {
        for line in fx.logs {
            self.send_parent(&log_record(LogLevel::Notice, line))?;
        }
        for msg in fx.to_parent {
            self.send_parent(&msg)?;
        }
        Ok(())
    }

    fn log_refusal(&mut self, uid: u32, pid: i32, name: &str) {
        let minute = self.started.elapsed().as_secs() / 60;
        if self.refusals.0 != minute {
            self.refusals = (minute, 0);
        }
        self.refusals.1 += 1;
        if self.refusals.1 <= REFUSALS_LOGGED {
            let msg = log_record(
                LogLevel::Notice,
                format!("control: refused {name} from uid {uid} (pid {pid}): not authorised"),
            );
            let _ = self.send_parent(&msg);
        }
    }

    /// Handles what the parent sent; false when it closed the channel.
    fn serve_parent(&mut self, now: Instant) -> Result<bool, String> {
        // Bounded per turn so clients keep being served.
        for _ in 0..256 {
            let msg = match self.parent.try_recv() {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(true),
                Err(ChannelError::Closed) => return Ok(false),
                Err(e) => return Err(format!("parent channel: {e}")),
            };
            let (id, reply) = match msg {
                ParentToControl::Hello { .. } => {
                    return Err("a second Hello from the parent".into());
                }
                ParentToControl::Reply { client, reply } => {
                    if let Some(x) = self.xmlrpc.as_mut() {
                        if x.owns(client) && x.on_reply(client, &reply, now) {
                            continue;
                        }
                    }
                    (client, reply)
                }
                ParentToControl::XmlrpcUsers(auth) => {
                    auth.check()
                        .map_err(|e| format!("XmlrpcUsers from the parent: {e}"))?;
                    if let Some(x) = self.xmlrpc.as_mut() {
                        x.set_auth(auth);
                    }
                    continue;
                }
                ParentToControl::Table { client, rows } => {
                    let q = match self.clients.get_mut(&client).map(|c| c.waiting.take()) {
                        Some(Some(Waiting::List(q))) => q,
                        _ => continue,
                    };
                    let (total, rows) = query::page(rows, &q);
                    (client, Reply::Conns { total, rows })
                }
                ParentToControl::Metrics { client, metrics } => {
                    (client, Reply::Metrics(prom::render(&metrics)))
                }
            };
            let Some(c) = self.clients.get_mut(&id) else {
                continue;
            };
            c.send(&reply, now);
            if !c.write() {
                self.clients.remove(&id);
                continue;
            }
            // A pipelined request already read waits for this reply to be written.
            if c.idle() {
                self.take_requests(id, now);
            }
        }
        Ok(true)
    }

    fn expire(&mut self, now: Instant) {
        if let Some(x) = self.xmlrpc.as_mut() {
            x.expire(now);
        }
        let late: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.expired(now).is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let Some(mut c) = self.clients.remove(&id) else {
                continue;
            };
            if c.expired(now) == Some("sent half a request and stalled") {
                c.refuse(
                    ErrorKind::BadRequest,
                    format!(
                        "bad request: not complete within {} s",
                        client::REQUEST_TIME.as_secs()
                    ),
                    now,
                );
                let _ = c.write();
            }
        }
    }
}
