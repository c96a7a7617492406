//! The PROXY protocol (HAProxy's, v1 text and v2 binary) on `listen ... proxy from ADDRSPEC`:
//! a connection's first bytes name the client and the address it reached on the load balancer,
//! and those become the connection's peer and local address for everything after (rules, log
//! lines, limits, history, blocks, the UCSPI variables). An extension to portnanny 2.
//!
//! Runs in the parent (root). Whose bytes: the first bytes of a connection from a peer that
//! `proxy from` lists (a load balancer the administrator trusts to tell the truth about its
//! clients); a peer not listed is dropped before a byte is read. The header is parsed by the
//! `proxy-header` crate; proxy_header.rs frames it, so the service still receives every byte
//! after the header and the parent never reads more than a header can be.
//!
//! The socket is never made non-blocking (its service wants a blocking one): every read is
//! `MSG_DONTWAIT`, so a slow peer cannot stall the loop. A connection waits in the connection
//! table's `Header` state, polled with the rest, until its header is in (then it is classified),
//! or it fails: closed, a missing or malformed header, or no complete header within
//! [`HEADER_DEADLINE`]; each failure drops the connection with a log line.
//!
//! v2 LOCAL (a load balancer's own health check) and v1 `PROXY UNKNOWN` are served with the
//! connection's real addresses, as the protocol's specification requires of a receiver.
//!
//! Cost: a plain listen pays one test of an `Option` per accept. A proxy connection costs one
//! peek and one read when its header came with the connection (HAProxy sends it at once), plus
//! one loop turn and one more peek when it had not arrived yet.

use std::time::Instant;

use privsep::proto::ConnId;

use super::conns::Meta;
use super::listen::Accepted;
use super::proxy_header::{HeaderError, HeaderRead, Step, HEADER_DEADLINE};
use super::workers::Failure;
use super::{Parent, MAX_PENDING};
use crate::log;

/// Connections awaiting their header at once. Only listed load balancers get this far, and
/// their headers come at once, so a full table means something is wrong; beyond it new
/// connections on proxy listens are dropped (each one still held a descriptor).
const MAX_AWAITING: usize = 1024;

impl Parent {
    /// A connection accepted on a proxy listen (accept.rs): dropped unless its peer is a
    /// listed load balancer (`allowed`), else filed to await its header, which is tried at
    /// once because it usually came with the connection.
    pub(super) fn await_header(
        &mut self,
        a: Accepted,
        conn: ConnId,
        allowed: bool,
        now: Instant,
    ) -> Result<(), Failure> {
        if !allowed {
            log::notice(&format!(
                "drop conn={} peer={} local={}: not a load balancer this listen takes PROXY \
                 headers from",
                conn.0, a.remote, a.local
            ));
            return Ok(());
        }
        if self.conns.headers_len() >= MAX_AWAITING {
            log::debug(
                1,
                &format!(
                    "drop conn={} via {} reason=too-many-awaiting-proxy-headers ({MAX_AWAITING})",
                    conn.0, a.remote
                ),
            );
            return Ok(());
        }
        let meta = Meta {
            id: conn,
            remote: a.remote,
            local: a.local,
            via: None,
            accepted: now,
        };
        let mut read = HeaderRead::new(a.stream, now);
        let step = read.advance();
        self.conns.add_header(meta, read);
        self.header_step(conn, step, now)
    }

    /// Reads the headers of the connections poll found readable.
    pub(super) fn read_headers(&mut self, ready: &[ConnId], now: Instant) -> Result<(), Failure> {
        for &id in ready {
            let Some(read) = self.conns.header_mut(id) else {
                continue;
            };
            let step = read.advance();
            self.header_step(id, step, now)?;
        }
        Ok(())
    }

    /// Drops the connections whose header did not come in time: the oldest first, up to the
    /// first still in time (a turn costs nothing per waiting connection).
    pub(super) fn expire_headers(&mut self, now: Instant) {
        while let Some(id) = self
            .conns
            .oldest_header()
            .filter(|(_, r)| r.deadline() <= now)
            .map(|(id, _)| id)
        {
            if let Some((meta, _)) = self.conns.take_header(id) {
                log::notice(&format!(
                    "drop conn={} via {}: no PROXY header within {} s",
                    id.0,
                    meta.remote,
                    HEADER_DEADLINE.as_secs()
                ));
            } else {
                break;
            }
        }
    }

    /// Closes every connection awaiting its header (shutdown).
    pub(super) fn drop_headers(&mut self) {
        let ids: Vec<ConnId> = self.conns.headers().map(|(id, _)| id).collect();
        for id in ids {
            self.conns.take_header(id);
        }
    }

    /// The earliest header deadline (for the loop's timeout).
    pub(super) fn next_header_deadline(&self) -> Option<Instant> {
        self.conns.oldest_header().map(|(_, r)| r.deadline())
    }

    fn header_step(&mut self, id: ConnId, step: Step, now: Instant) -> Result<(), Failure> {
        let (version, addrs) = match step {
            Step::Blocked => return Ok(()),
            Step::Done { version, addrs } => (version, addrs),
            Step::Failed(e) => {
                let Some((meta, _)) = self.conns.take_header(id) else {
                    return Ok(());
                };
                let via = meta.remote;
                match e {
                    // A load balancer's plain TCP health check connects and closes: not news.
                    HeaderError::Closed { partial: false } => log::debug(
                        1,
                        &format!("drop conn={} via {via}: closed before a PROXY header", id.0),
                    ),
                    HeaderError::Closed { partial: true } => log::notice(&format!(
                        "drop conn={} via {via}: closed in the middle of its PROXY header",
                        id.0
                    )),
                    HeaderError::Missing => log::notice(&format!(
                        "drop conn={} via {via}: no PROXY header (the connection starts with \
                         other bytes)",
                        id.0
                    )),
                    HeaderError::Malformed(why) => log::notice(&format!(
                        "drop conn={} via {via}: malformed PROXY header ({why})",
                        id.0
                    )),
                }
                return Ok(());
            }
        };
        let Some((meta, read)) = self.conns.take_header(id) else {
            return Ok(());
        };
        let (remote, local) = addrs.unwrap_or((meta.remote, meta.local));
        if log::enabled(1) {
            let what = if addrs.is_some() {
                ""
            } else {
                " (LOCAL or UNKNOWN: the connection's own addresses)"
            };
            log::debug(
                1,
                &format!(
                    "proxy conn={} peer={remote} local={local} via {} v{version}{what}",
                    id.0, meta.remote
                ),
            );
        }
        // The classifier may have failed since the accept; fail closed as accept.rs does.
        if !self.workers_ready() {
            log::debug(1, &format!("drop conn={} reason=classifier-restart", id.0));
            return Ok(());
        }
        if self.conns.pending_len() >= MAX_PENDING {
            log::debug(
                1,
                &format!(
                    "drop conn={} reason=too-many-pending ({MAX_PENDING} waiting for a verdict)",
                    id.0
                ),
            );
            return Ok(());
        }
        let a = Accepted {
            stream: read.into_stream(),
            remote,
            local,
        };
        self.classify(a, id, now, None)?;
        self.conns.set_via(id, meta.remote);
        Ok(())
    }
}
