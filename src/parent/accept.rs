//! Accepting: new connections from the listeners (and trap ports) become pending rows of the
//! connection table and `ConnAccepted` messages to the classifier; datagrams on UDP traps
//! become probes.
//!
//! Runs in the parent. The only input is accept(2) on our own listening sockets; the peer's
//! bytes are never read here (on a `proxy from` listen, proxy.rs reads the PROXY header).

use std::time::{Duration, Instant};

use privsep::proto::ConnId;

use super::listen::{self, AcceptResult};
use super::workers::Failure;
use super::{Parent, MAX_PENDING};
use crate::log;

/// Pause after accept fails for lack of descriptors or memory (the listener stays readable;
/// without a pause the loop would spin).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// An exhaustion episode ends after this long without a failed accept: under steady pressure
/// accepts alternate between failing and succeeding, and that is still one episode.
const EPISODE_QUIET: Duration = Duration::from_secs(5);

/// An episode of accept(2) failing for lack of descriptors or memory.
#[derive(Debug)]
pub(super) struct Exhausted {
    since: Instant,
    last: Instant,
    failures: u64,
}

impl Parent {
    /// Ends an exhaustion episode that has been quiet for [`EPISODE_QUIET`], with one line.
    pub(super) fn end_exhaustion(&mut self, now: Instant) {
        let Some(ep) = &self.exhausted else {
            return;
        };
        if now.saturating_duration_since(ep.last) < EPISODE_QUIET {
            return;
        }
        log::notice(&format!(
            "accepts resumed: {} failed attempts over {:.1} s",
            ep.failures,
            ep.last.saturating_duration_since(ep.since).as_secs_f64()
        ));
        self.exhausted = None;
    }

    /// Accepts a batch of connections (its listener's [`Pace`](listen::Pace)) from listener `idx` and hands each to the
    /// classifier.
    pub(super) fn accept_from(&mut self, idx: usize) -> Result<(), Failure> {
        let turn = self.turn;
        let Some(l) = self.listeners.get(idx) else {
            return Ok(());
        };
        let batch = l.pace.batch(turn);
        let mut taken = 0;
        let r = self.accept_up_to(idx, batch, &mut taken);
        if let Some(l) = self.listeners.get_mut(idx) {
            l.pace.took(batch, taken, turn);
        }
        r?;
        // The batch's requests leave together, now: the classifier works on them while this
        // turn goes on, instead of waiting for the flush before poll.
        self.flush_links()
    }

    /// Accepts up to `batch` connections from listener `idx`, counting them in `taken`; stops
    /// early when the backlog is empty (leaving `taken` below `batch`).
    fn accept_up_to(&mut self, idx: usize, batch: usize, taken: &mut usize) -> Result<(), Failure> {
        for _ in 0..batch {
            // The classifier may have failed earlier in this loop turn: leave new connections
            // in the listen backlog until a new one is ready.
            if !self.workers_ready() {
                return Ok(());
            }
            let Some(l) = self.listeners.get(idx) else {
                return Ok(());
            };
            let a = match listen::accept(l) {
                AcceptResult::Conn(a) => a,
                AcceptResult::Empty => return Ok(()),
                AcceptResult::Exhausted(e) => {
                    let now = Instant::now();
                    match &mut self.exhausted {
                        // Once per episode: the pause repeats ten times a second.
                        Some(ep) => {
                            ep.failures += 1;
                            ep.last = now;
                        }
                        None => {
                            log::err(&format!(
                                "accept on {}: {e}; pausing accepts (logged once until they resume)",
                                l.addr
                            ));
                            self.exhausted = Some(Exhausted {
                                since: now,
                                last: now,
                                failures: 1,
                            });
                            // Clients that gave up still hold descriptors here: free them now.
                            self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                            return self.close_gone();
                        }
                    }
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    return Ok(());
                }
            };

            *taken += 1;
            self.lifetime += 1;
            let conn = ConnId(self.next_conn);
            self.next_conn += 1;
            // Per-connection lines are formatted only when they will be written: formatting two
            // addresses costs more than the rest of this loop turn's user-space work.
            if log::enabled(2) {
                log::debug(
                    2,
                    &format!("accept {} conn={} local={}", a.remote, conn.0, a.local),
                );
            }
            if self.conns.pending_len() >= MAX_PENDING {
                self.counters.refused("too-many-pending");
                // Per connection and only with -v: under a flood this would be thousands of lines.
                log::debug(
                    1,
                    &format!(
                        "drop conn={} reason=too-many-pending ({MAX_PENDING} waiting for a verdict)",
                        conn.0
                    ),
                );
                continue;
            }
            // `proxy from`: the PROXY header comes before anything else (proxy.rs).
            if let Some(allowed) = self
                .listeners
                .get(idx)
                .and_then(|l| l.proxy.as_ref())
                .map(|from| from.contains(a.remote.ip()))
            {
                self.await_header(a, conn, allowed, Instant::now())?;
                continue;
            }
            let trap = self
                .listeners
                .get(idx)
                .is_some_and(|l| l.trap)
                .then_some(privsep::proto::SentryMode::Tcp);
            self.classify(a, conn, Instant::now(), trap)?;
        }
        Ok(())
    }

    /// Datagrams on UDP trap `i`: each is a probe for the rules.
    pub(super) fn on_udp_trap(&mut self, i: usize) {
        let Some(t) = self.udp_traps.get(i) else {
            return;
        };
        for hit in super::traps::drain_udp(t) {
            let r = self.classify_probe(
                hit.src,
                hit.trap,
                privsep::proto::SentryMode::Udp,
                Instant::now(),
            );
            if let Err(f) = r {
                return self.worker_failed(f);
            }
        }
    }
}
