//! Ending live connections on purpose: `nannyctl kill`, `nannyctl change ID timeout` and a
//! class's `timeout`. A running service's process group gets SIGTERM, and SIGKILL when its
//! leader has not been reaped after the grace period (or, when the leader is reaped first, at
//! once, for whatever it left in its group); a message being written is cut off; a connection
//! still waiting for its verdict is closed (its verdict then finds it gone).
//!
//! Runs in the parent. Deadlines come from the parent's own table and from typed control
//! requests; nothing here reads a worker's bytes.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use privsep::proto::ConnId;

use super::conns::State;
use super::Parent;
use crate::log;

/// How long a service has between SIGTERM and SIGKILL (systemd's and s6's default is longer;
/// inetd services are small and a stuck one holds a slot).
pub const GRACE: Duration = Duration::from_secs(3);

/// What happens to a connection at its time.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Its deadline: end it (the reason is logged).
    End(String),
    /// SIGTERM was sent to this process group: SIGKILL it.
    Kill(i32),
}

/// The schedule: at most one step per connection, ordered by time.
#[derive(Debug, Default)]
pub struct Endings {
    due: BTreeMap<(Instant, ConnId), Step>,
    by_conn: HashMap<ConnId, Instant>,
}

/// What ending a connection did, for the log and for nannyctl's reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// SIGTERM sent to the service's process group.
    Terminated(i32),
    /// Its message was cut off.
    MessageCut,
    /// It was waiting for its verdict and is closed.
    Closed,
}

impl Endings {
    fn set(&mut self, id: ConnId, at: Instant, step: Step) {
        self.cancel(id);
        self.due.insert((at, id), step);
        self.by_conn.insert(id, at);
    }

    /// Drops whatever was scheduled for `id`.
    pub fn cancel(&mut self, id: ConnId) {
        if let Some(at) = self.by_conn.remove(&id) {
            self.due.remove(&(at, id));
        }
    }

    // The class `timeout` and nannyctl's `change ID timeout` set deadlines (next commits).
    #[allow(dead_code)]
    /// When `id` is to be ended (None: no deadline, or it is already being ended).
    pub fn deadline(&self, id: ConnId) -> Option<Instant> {
        let at = self.by_conn.get(&id)?;
        match self.due.get(&(*at, id)) {
            Some(Step::End(_)) => Some(*at),
            _ => None,
        }
    }

    /// Whether `id` got SIGTERM and is waiting out its grace period.
    pub fn terminating(&self, id: ConnId) -> bool {
        self.by_conn
            .get(&id)
            .is_some_and(|at| matches!(self.due.get(&(*at, id)), Some(Step::Kill(_))))
    }

    /// The next time something is due.
    pub fn next(&self) -> Option<Instant> {
        self.due.keys().next().map(|(at, _)| *at)
    }

    /// Takes every step due at `now`.
    fn take_due(&mut self, now: Instant) -> Vec<(ConnId, Step)> {
        let mut out = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, id), step) = entry.remove_entry();
            self.by_conn.remove(&id);
            out.push((id, step));
        }
        out
    }
}

impl Parent {
    /// Ends `id` when `at` comes (replacing an earlier deadline); `why` is logged then.
    pub(super) fn end_at(&mut self, id: ConnId, at: Instant, why: String) {
        if !self.endings.terminating(id) {
            self.endings.set(id, at, Step::End(why));
        }
    }

    /// Ends `id` now. None: no such connection.
    pub(super) fn end_conn(&mut self, id: ConnId, why: &str, now: Instant) -> Option<Ended> {
        let c = self.conns.get(id)?;
        let who = format!("conn={} of {}", id.0, c.remote.ip());
        let ended = match &c.state {
            State::Running { pid, .. } => {
                let pid = *pid;
                if !self.endings.terminating(id) {
                    log::notice(&format!("{why}: ending pid={pid} {who} (SIGTERM)"));
                    if let Err(e) = killpg(Pid::from_raw(pid), Signal::SIGTERM) {
                        log::debug(1, &format!("killpg {pid} SIGTERM: {e}"));
                    }
                    self.endings.set(id, now + GRACE, Step::Kill(pid));
                }
                Ended::Terminated(pid)
            }
            State::Writing { .. } => {
                log::notice(&format!("{why}: cutting off the message to {who}"));
                self.endings.cancel(id);
                self.conns.cut_writer(id);
                Ended::MessageCut
            }
            State::Pending { .. } => {
                log::notice(&format!("{why}: closing {who} before its verdict"));
                self.endings.cancel(id);
                self.conns.close_pending(id);
                Ended::Closed
            }
        };
        Some(ended)
    }

    /// Runs every step that is due.
    pub(super) fn fire_endings(&mut self, now: Instant) {
        if self.endings.next().is_none_or(|t| t > now) {
            return;
        }
        for (id, step) in self.endings.take_due(now) {
            match step {
                Step::End(why) => {
                    self.end_conn(id, &why, now);
                }
                Step::Kill(pgid) => {
                    // Only while its leader is unreaped: the pid cannot have been reused.
                    if self.conns.get(id).and_then(|c| c.pid()) == Some(pgid) {
                        log::notice(&format!(
                            "pid={pgid} conn={} outlived its {} s grace: SIGKILL",
                            id.0,
                            GRACE.as_secs()
                        ));
                        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                    }
                }
            }
        }
    }

    /// A service was reaped: nothing more is scheduled for it, and if it was being ended,
    /// whatever it left in its process group is killed now (the group id cannot be reused
    /// while a member lives).
    pub(super) fn service_reaped(&mut self, id: ConnId, pgid: i32) {
        if self.endings.terminating(id) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        self.endings.cancel(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_come_out_in_time_order_and_one_per_connection() {
        let mut e = Endings::default();
        let t0 = Instant::now();
        e.set(
            ConnId(1),
            t0 + Duration::from_secs(5),
            Step::End("a".into()),
        );
        e.set(
            ConnId(2),
            t0 + Duration::from_secs(2),
            Step::End("b".into()),
        );
        // A later deadline for the same connection replaces the first.
        e.set(
            ConnId(1),
            t0 + Duration::from_secs(1),
            Step::End("c".into()),
        );
        assert_eq!(e.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(e.deadline(ConnId(1)), Some(t0 + Duration::from_secs(1)));
        let due = e.take_due(t0 + Duration::from_secs(3));
        assert_eq!(
            due,
            vec![
                (ConnId(1), Step::End("c".into())),
                (ConnId(2), Step::End("b".into()))
            ]
        );
        assert_eq!(e.next(), None);
        assert_eq!(e.deadline(ConnId(1)), None);
    }

    #[test]
    fn a_terminating_connection_has_no_deadline_and_cancel_clears_it() {
        let mut e = Endings::default();
        let t0 = Instant::now();
        e.set(ConnId(7), t0 + GRACE, Step::Kill(700));
        assert!(e.terminating(ConnId(7)));
        assert_eq!(e.deadline(ConnId(7)), None);
        e.cancel(ConnId(7));
        assert!(!e.terminating(ConnId(7)));
        assert!(e.take_due(t0 + GRACE * 2).is_empty());
    }
}
