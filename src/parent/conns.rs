//! The live-connection table: one row for every connection the parent holds or answers for,
//! from accept to the end of its service or message.
//!
//! Runs in the parent. Rows are created from accept(2) results and updated only from admitted
//! verdicts and the parent's own spawn and reap results; nothing here reads a worker's bytes.
//! Reaping, the SIGUSR2 status report, re-seeding a restarted classifier's counts and the
//! control channel's list and kill requests all read this one table; nobody keeps a second copy.
//!
//! A row is in one of four states:
//! - `Header`: accepted on a `proxy from` listen, its PROXY header being read (proxy.rs);
//!   not yet known to the classifier;
//! - `Pending`: accepted, its socket held, waiting for the classifier's verdict;
//! - `Running`: handed to a service (the parent no longer holds the socket; the peer sees EOF
//!   when the service closes, as with inetd);
//! - `Writing`: its `msg`/`failmsg` is being written by the parent's loop.
//!
//! Connections closed at once (drop, reject without a message, expansion errors) never outlive
//! the verdict and have no row after it.

use foldhash::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use privsep::proto::{ClassName, ConnId, Gen, LiveConn, SentryMode};

use super::msgwrite::{MsgWrite, Progress};
use super::proxy_header::HeaderRead;

/// What the verdict said about a connection that got a service or a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// Matched classes, in match order.
    pub classes: Vec<String>,
    /// The action class ("-" when none).
    pub action_class: String,
    pub label: Option<String>,
    /// The policy generation whose actions were used.
    pub gen: Gen,
    /// The user the service runs as (None: the parent's own user, or a message).
    pub user: Option<String>,
    /// When the service started or the message write began.
    pub started: Instant,
}

/// Where a connection is in its life.
#[derive(Debug)]
pub enum State {
    /// Its PROXY header is being read; `remote` and `local` are still the load balancer's
    /// connection's, until the header replaces them.
    Header(HeaderRead),
    Pending {
        /// None once its peer has gone (the socket is closed, the verdict still awaited), and
        /// for a probe, which never had one.
        stream: Option<TcpStream>,
        /// The detector, for a trap connection or a probe.
        trap: Option<SentryMode>,
        /// The oldest generation its verdict may name.
        min_gen: Gen,
    },
    Running {
        pid: i32,
        /// Counted against ipmax/connmax: the classifier gets `ConnClosed` when it ends.
        counted: bool,
        served: Served,
    },
    Writing {
        writer: MsgWrite<TcpStream>,
        served: Served,
    },
}

/// One live connection.
#[derive(Debug)]
pub struct Conn {
    pub id: ConnId,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// The load balancer a PROXY header came from (`remote` and `local` are the header's).
    pub via: Option<SocketAddr>,
    pub accepted: Instant,
    pub state: State,
}

impl Conn {
    pub fn served(&self) -> Option<&Served> {
        match &self.state {
            State::Header(_) | State::Pending { .. } => None,
            State::Running { served, .. } | State::Writing { served, .. } => Some(served),
        }
    }

    pub fn pid(&self) -> Option<i32> {
        match &self.state {
            State::Running { pid, .. } => Some(*pid),
            _ => None,
        }
    }
}

/// The table, with the indexes the loop needs every turn.
#[derive(Debug, Default)]
pub struct Conns {
    rows: HashMap<ConnId, Conn>,
    by_pid: HashMap<i32, ConnId>,
    /// Rows in `Writing`, in the order their poll slots are built.
    writers: Vec<ConnId>,
    pending: usize,
    /// Pending rows that are probes (no socket ever).
    probes: HashSet<ConnId>,
    /// Rows in `Header` (so a loop turn without any costs nothing).
    headers: Vec<ConnId>,
}

/// The fixed part of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub id: ConnId,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub via: Option<SocketAddr>,
    pub accepted: Instant,
}

/// A pending row taken out of the table for its verdict.
#[derive(Debug)]
pub struct PendingConn {
    pub meta: Meta,
    pub stream: TcpStream,
}

/// What [`Conns::take_pending`] found.
#[derive(Debug)]
pub enum Taken {
    Live(PendingConn, Option<SentryMode>),
    /// Its peer had gone and its socket is closed already.
    Gone(Meta, Option<SentryMode>),
    /// A probe: there never was a socket.
    Probe(Meta, SentryMode),
}

/// Whether the peer of an accepted socket has gone: it reset the connection, or closed it
/// without sending a byte. Never blocks.
fn peer_gone(s: &TcpStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    match recv(
        s.as_raw_fd(),
        &mut b,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(0) => true,
        Ok(_) => false,
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => false,
        Err(_) => true,
    }
}

impl Conns {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn pending_len(&self) -> usize {
        self.pending
    }

    pub fn writing_len(&self) -> usize {
        self.writers.len()
    }

    pub fn running_len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn get(&self, id: ConnId) -> Option<&Conn> {
        self.rows.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Conn> {
        self.rows.values()
    }

    /// A probe (no connection: a UDP trap datagram or a stealth probe) awaiting its verdict.
    pub fn add_probe(&mut self, m: Meta, mode: SentryMode, min_gen: Gen) {
        self.probes.insert(m.id);
        self.insert(
            m,
            State::Pending {
                stream: None,
                trap: Some(mode),
                min_gen,
            },
        );
        self.pending += 1;
    }

    /// A newly accepted connection (`trap`: on a trap port).
    #[allow(clippy::too_many_arguments)]
    pub fn add_pending(
        &mut self,
        id: ConnId,
        stream: TcpStream,
        remote: SocketAddr,
        local: SocketAddr,
        min_gen: Gen,
        now: Instant,
        trap: Option<SentryMode>,
    ) {
        let row = Conn {
            id,
            remote,
            local,
            via: None,
            accepted: now,
            state: State::Pending {
                stream: Some(stream),
                trap,
                min_gen,
            },
        };
        if let Some(old) = self.rows.insert(id, row) {
            // Ids are never reused; keep the indexes right even so.
            self.forget(&old);
        }
        self.pending += 1;
    }

    /// The oldest generation a verdict for `id` may name, if it is pending.
    pub fn min_gen(&self, id: ConnId) -> Option<Gen> {
        match self.rows.get(&id).map(|c| &c.state) {
            Some(State::Pending { min_gen, .. }) => Some(*min_gen),
            _ => None,
        }
    }

    /// The oldest generation any pending verdict may name.
    pub fn oldest_pending_gen(&self) -> Option<Gen> {
        self.rows
            .values()
            .filter_map(|c| match &c.state {
                State::Pending { min_gen, .. } => Some(*min_gen),
                _ => None,
            })
            .min()
    }

    /// A pending connection accepted before `deadline`, if any.
    pub fn pending_since(&self, deadline: Instant) -> Option<ConnId> {
        self.rows
            .values()
            .find(|c| matches!(c.state, State::Pending { .. }) && c.accepted < deadline)
            .map(|c| c.id)
    }

    /// Closes the sockets of pending connections whose peer has gone (see [`peer_gone`]), so
    /// they hold no descriptor while their verdict is awaited; returns their ids.
    pub fn close_gone(&mut self) -> Vec<ConnId> {
        let mut ids = Vec::new();
        for c in self.rows.values_mut() {
            if let State::Pending { stream, .. } = &mut c.state {
                if stream.as_ref().is_some_and(peer_gone) {
                    *stream = None;
                    ids.push(c.id);
                }
            }
        }
        ids
    }

    /// Takes a pending connection out for its verdict (None if it is not pending).
    /// Closes a pending connection's socket (its verdict will find it gone). Whether it held one.
    pub fn close_pending(&mut self, id: ConnId) -> bool {
        match self.rows.get_mut(&id).map(|c| &mut c.state) {
            Some(State::Pending { stream, .. }) => stream.take().is_some(),
            _ => false,
        }
    }

    /// Cuts off a message being written: the row goes and the socket is closed.
    pub fn cut_writer(&mut self, id: ConnId) -> bool {
        let Some(i) = self.writers.iter().position(|w| *w == id) else {
            return false;
        };
        match self.finish_writer(i) {
            Some(w) => {
                let _ = w.into_inner().shutdown(std::net::Shutdown::Both);
                true
            }
            None => false,
        }
    }

    pub fn take_pending(&mut self, id: ConnId) -> Option<Taken> {
        if !matches!(
            self.rows.get(&id).map(|c| &c.state),
            Some(State::Pending { .. })
        ) {
            return None;
        }
        let c = self.rows.remove(&id)?;
        self.pending = self.pending.saturating_sub(1);
        let meta = Meta {
            id,
            remote: c.remote,
            local: c.local,
            via: c.via,
            accepted: c.accepted,
        };
        match c.state {
            State::Pending {
                stream: Some(stream),
                trap,
                ..
            } => Some(Taken::Live(PendingConn { meta, stream }, trap)),
            State::Pending {
                stream: None,
                trap: Some(mode),
                ..
            } if self.probes.remove(&id) => Some(Taken::Probe(meta, mode)),
            State::Pending {
                stream: None, trap, ..
            } => Some(Taken::Gone(meta, trap)),
            _ => None,
        }
    }

    /// Drops every pending connection (their classifier failed, or shutdown); returns their ids.
    pub fn drop_pending(&mut self) -> Vec<ConnId> {
        let ids: Vec<ConnId> = self
            .rows
            .values()
            .filter(|c| matches!(c.state, State::Pending { .. }))
            .map(|c| c.id)
            .collect();
        for id in &ids {
            self.rows.remove(id);
        }
        self.pending = 0;
        self.probes.clear();
        ids
    }

    /// The counted running services, for seeding a restarted classifier.
    pub fn live_counted(&self) -> Vec<LiveConn> {
        self.rows
            .values()
            .filter_map(|c| match &c.state {
                State::Running {
                    counted: true,
                    served,
                    ..
                } => Some(LiveConn {
                    conn: c.id,
                    remote: c.remote,
                    classes: served
                        .classes
                        .iter()
                        .filter_map(|n| ClassName::try_from(n.clone()).ok())
                        .collect(),
                }),
                _ => None,
            })
            .collect()
    }

    fn insert(&mut self, m: Meta, state: State) {
        let row = Conn {
            id: m.id,
            remote: m.remote,
            local: m.local,
            via: m.via,
            accepted: m.accepted,
            state,
        };
        self.rows.insert(m.id, row);
    }

    /// A connection handed to service `pid`.
    pub fn add_running(&mut self, p: Meta, pid: i32, counted: bool, served: Served) {
        self.by_pid.insert(pid, p.id);
        let state = State::Running {
            pid,
            counted,
            served,
        };
        self.insert(p, state);
    }

    /// The connection whose service `pid` ended; its row is removed.
    pub fn end_service(&mut self, pid: i32) -> Option<Conn> {
        let id = self.by_pid.remove(&pid)?;
        self.rows.remove(&id)
    }

    /// A message to write from the loop.
    pub fn add_writing(&mut self, p: Meta, writer: MsgWrite<TcpStream>, served: Served) {
        self.writers.push(p.id);
        self.insert(p, State::Writing { writer, served });
    }

    /// The message writers.
    pub fn writers(&self) -> impl Iterator<Item = &MsgWrite<TcpStream>> {
        self.writers
            .iter()
            .filter_map(|id| match self.rows.get(id).map(|c| &c.state) {
                Some(State::Writing { writer, .. }) => Some(writer),
                _ => None,
            })
    }

    /// The `i`th writer.
    pub fn writer_mut(&mut self, i: usize) -> Option<&mut MsgWrite<TcpStream>> {
        let id = self.writers.get(i)?;
        match self.rows.get_mut(id).map(|c| &mut c.state) {
            Some(State::Writing { writer, .. }) => Some(writer),
            _ => None,
        }
    }

    /// Removes the `i`th writer (the last takes its place).
    pub fn finish_writer(&mut self, i: usize) -> Option<MsgWrite<TcpStream>> {
        if i >= self.writers.len() {
            return None;
        }
        let id = self.writers.swap_remove(i);
        match self.rows.remove(&id)?.state {
            State::Writing { writer, .. } => Some(writer),
            _ => None,
        }
    }

    /// Writes what the sockets of `ready` (sorted; the loop saw them writable) take, and times
    /// out the writers past their deadline. Returns the writers that are done, with how they ended;
    /// their rows are gone.
    pub fn advance_writers(
        &mut self,
        ready: &[ConnId],
        now: Instant,
    ) -> Vec<(MsgWrite<TcpStream>, Progress)> {
        let mut done = Vec::new();
        // Walk backwards so finishing a slot never moves one we have yet to visit.
        for i in (0..self.writers.len()).rev() {
            let flagged = self
                .writers
                .get(i)
                .is_some_and(|id| ready.binary_search(id).is_ok());
            let Some(w) = self.writer_mut(i) else {
                continue;
            };
            if !flagged && now < w.deadline() {
                continue;
            }
            match w.advance(now) {
                Progress::Blocked => {}
                other => {
                    if let Some(w) = self.finish_writer(i) {
                        done.push((w, other));
                    }
                }
            }
        }
        done
    }

    /// Removes every message writer (shutdown).
    pub fn drain_writers(&mut self) -> Vec<MsgWrite<TcpStream>> {
        let ids = std::mem::take(&mut self.writers);
        ids.into_iter()
            .filter_map(|id| match self.rows.remove(&id)?.state {
                State::Writing { writer, .. } => Some(writer),
                _ => None,
            })
            .collect()
    }

    /// A connection on a proxy listen, to await its header.
    pub fn add_header(&mut self, m: Meta, read: HeaderRead) {
        self.headers.push(m.id);
        self.insert(m, State::Header(read));
    }

    pub fn headers_len(&self) -> usize {
        self.headers.len()
    }

    /// The row that has awaited its header longest. Rows are added as they are accepted and
    /// every deadline is the accept time plus the same `HEADER_DEADLINE`, so this one's
    /// deadline is also the earliest.
    pub fn oldest_header(&self) -> Option<(ConnId, &HeaderRead)> {
        self.headers
            .iter()
            .find_map(|id| match self.rows.get(id).map(|c| &c.state) {
                Some(State::Header(r)) => Some((*id, r)),
                _ => None,
            })
    }

    /// The rows awaiting their header.
    pub fn headers(&self) -> impl Iterator<Item = (ConnId, &HeaderRead)> {
        self.headers
            .iter()
            .filter_map(|id| match self.rows.get(id).map(|c| &c.state) {
                Some(State::Header(r)) => Some((*id, r)),
                _ => None,
            })
    }

    pub fn header_mut(&mut self, id: ConnId) -> Option<&mut HeaderRead> {
        match self.rows.get_mut(&id).map(|c| &mut c.state) {
            Some(State::Header(r)) => Some(r),
            _ => None,
        }
    }

    /// Takes a row awaiting its header out of the table.
    pub fn take_header(&mut self, id: ConnId) -> Option<(Meta, HeaderRead)> {
        if !matches!(self.rows.get(&id).map(|c| &c.state), Some(State::Header(_))) {
            return None;
        }
        self.headers.retain(|h| *h != id);
        let c = self.rows.remove(&id)?;
        let meta = Meta {
            id,
            remote: c.remote,
            local: c.local,
            via: c.via,
            accepted: c.accepted,
        };
        match c.state {
            State::Header(r) => Some((meta, r)),
            _ => None,
        }
    }

    /// Records the load balancer a pending connection's PROXY header came from.
    pub fn set_via(&mut self, id: ConnId, via: SocketAddr) {
        if let Some(c) = self.rows.get_mut(&id) {
            c.via = Some(via);
        }
    }

    fn forget(&mut self, old: &Conn) {
        match &old.state {
            State::Header(_) => self.headers.retain(|h| *h != old.id),
            State::Pending { .. } => self.pending = self.pending.saturating_sub(1),
            State::Running { pid, .. } => {
                self.by_pid.remove(pid);
            }
            State::Writing { .. } => self.writers.retain(|w| *w != old.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::parent::msgwrite::MsgWrite;

    fn stream(l: &TcpListener) -> TcpStream {
        TcpStream::connect(l.local_addr().unwrap()).unwrap()
    }

    fn served(gen: u32, now: Instant) -> Served {
        Served {
            classes: vec!["a".into(), "GLOBAL".into()],
            action_class: "a".into(),
            label: None,
            gen: Gen(gen),
            user: Some("nobody".into()),
            started: now,
        }
    }

    #[test]
    fn a_row_moves_from_pending_to_running_to_gone() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let now = Instant::now();
        let remote: SocketAddr = "127.0.0.9:4000".parse().unwrap();
        let local = l.local_addr().unwrap();
        let mut t = Conns::default();
        t.add_pending(ConnId(1), stream(&l), remote, local, Gen(2), now, None);
        t.add_pending(ConnId(2), stream(&l), remote, local, Gen(3), now, None);
        assert_eq!((t.len(), t.pending_len()), (2, 2));
        assert_eq!(t.min_gen(ConnId(1)), Some(Gen(2)));
        assert_eq!(t.oldest_pending_gen(), Some(Gen(2)));

        let Some(Taken::Live(p, None)) = t.take_pending(ConnId(1)) else {
            panic!("pending")
        };
        assert!(t.take_pending(ConnId(1)).is_none(), "one verdict per conn");
        assert_eq!(t.min_gen(ConnId(1)), None);
        t.add_running(p.meta, 4242, true, served(2, now));
        assert_eq!(t.pending_len(), 1);
        assert_eq!(t.running_len(), 1);
        assert_eq!(t.get(ConnId(1)).and_then(Conn::pid), Some(4242));
        assert_eq!(
            t.min_gen(ConnId(1)),
            None,
            "a running conn takes no verdict"
        );
        assert_eq!(t.oldest_pending_gen(), Some(Gen(3)));

        let ended = t.end_service(4242).unwrap();
        assert_eq!(ended.id, ConnId(1));
        assert_eq!(ended.remote, remote);
        assert!(t.end_service(4242).is_none());
        assert_eq!(t.drop_pending(), vec![ConnId(2)]);
        assert!(t.is_empty());
        assert_eq!(t.pending_len(), 0);
    }

    #[test]
    fn a_gone_peer_loses_its_socket_but_keeps_its_row() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let now = Instant::now();
        let local = l.local_addr().unwrap();
        let mut t = Conns::default();
        // Accepted sockets: one whose client left, one that sent a request, one still quiet.
        let left = stream(&l);
        let (a, ra) = l.accept().unwrap();
        let mut talking = stream(&l);
        let (b, rb) = l.accept().unwrap();
        let _quiet = stream(&l);
        let (c, rc) = l.accept().unwrap();
        std::io::Write::write_all(&mut talking, b"GET\n").unwrap();
        drop(talking);
        drop(left);
        t.add_pending(ConnId(1), a, ra, local, Gen(1), now, None);
        t.add_pending(ConnId(2), b, rb, local, Gen(1), now, None);
        t.add_pending(ConnId(3), c, rc, local, Gen(1), now, None);
        let gone = crate::parent::conns::tests::wait_gone(&mut t);
        assert_eq!(gone, vec![ConnId(1)]);
        assert!(t.close_gone().is_empty(), "reported once");
        assert_eq!(t.pending_len(), 3, "rows stay until their verdicts");
        assert!(matches!(t.take_pending(ConnId(1)), Some(Taken::Gone(m, None)) if m.remote == ra));
        assert!(matches!(t.take_pending(ConnId(2)), Some(Taken::Live(..))));
        let probe = Meta {
            id: ConnId(9),
            remote: ra,
            local,
            via: None,
            accepted: now,
        };
        t.add_probe(probe, SentryMode::Udp, Gen(1));
        assert_eq!(t.min_gen(ConnId(9)), Some(Gen(1)));
        assert!(t.close_gone().is_empty(), "a probe has no socket to close");
        assert!(matches!(
            t.take_pending(ConnId(9)),
            Some(Taken::Probe(m, SentryMode::Udp)) if m == probe
        ));
    }

    /// close_gone, retried briefly: the FIN reaches the accepted socket asynchronously.
    fn wait_gone(t: &mut Conns) -> Vec<ConnId> {
        for _ in 0..200 {
            let g = t.close_gone();
            if !g.is_empty() {
                return g;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Vec::new()
    }

    #[test]
    fn writers_keep_their_slots() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let now = Instant::now();
        let local = l.local_addr().unwrap();
        let mut t = Conns::default();
        for i in 1..=3 {
            t.add_pending(ConnId(i), stream(&l), local, local, Gen(1), now, None);
            let Some(Taken::Live(p, _)) = t.take_pending(ConnId(i)) else {
                panic!("pending")
            };
            let s = p.stream.try_clone().unwrap();
            t.add_writing(
                p.meta,
                MsgWrite::new(ConnId(i), s, b"hi".to_vec(), now),
                served(1, now),
            );
        }
        assert_eq!(t.writing_len(), 3);
        let ids: Vec<u64> = t.writers().map(|w| w.conn.0).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        // Slot 0 ends; the last slot moves into it.
        assert_eq!(t.finish_writer(0).map(|w| w.conn), Some(ConnId(1)));
        let ids: Vec<u64> = t.writers().map(|w| w.conn.0).collect();
        assert_eq!(ids, vec![3, 2]);
        assert_eq!(t.writer_mut(1).map(|w| w.conn), Some(ConnId(2)));
        assert!(t.finish_writer(5).is_none());
        assert_eq!(t.drain_writers().len(), 2);
        assert!(t.is_empty());
    }

    /// The oldest row awaiting its header has the earliest deadline: expiry stops at the first
    /// row still in time (proxy.rs), so this order is what drops late headers at all.
    #[test]
    fn the_oldest_header_is_the_first_accepted_still_waiting() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = l.local_addr().unwrap();
        let t0 = Instant::now();
        let mut t = Conns::default();
        for i in 1..=3u64 {
            let at = t0 + std::time::Duration::from_millis(i);
            let meta = Meta {
                id: ConnId(i),
                remote: local,
                local,
                via: None,
                accepted: at,
            };
            t.add_header(meta, HeaderRead::new(stream(&l), at));
        }
        let oldest = |t: &Conns| t.oldest_header().map(|(id, r)| (id.0, r.deadline()));
        assert_eq!(oldest(&t).map(|o| o.0), Some(1));
        assert!(t.take_header(ConnId(2)).is_some());
        assert_eq!(
            oldest(&t).map(|o| o.0),
            Some(1),
            "taking a younger one changes nothing"
        );
        let first = oldest(&t).map(|o| o.1);
        assert!(t.take_header(ConnId(1)).is_some());
        let (id, deadline) = oldest(&t).unwrap();
        assert_eq!(id, 3);
        assert!(
            Some(deadline) > first,
            "the next oldest has the next deadline"
        );
        assert!(t.take_header(ConnId(3)).is_some());
        assert!(t.oldest_header().is_none());
    }
}
