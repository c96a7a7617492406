//! Acting on an admitted verdict: render it from the parent's own actions table, log the
//! `record`/`log`/`faillog` lines, then run the command, write the message or close.
//!
//! Runs in the parent (root). The input is a [`Verdict`], which only `admit.rs` can build;
//! every string used here (argv, environment, message, log text) is rendered by
//! `policy::expand` from the parent's table for the verdict's generation plus the verdict's
//! validated facts. Text that reaches the log is escaped (hostnames and identd answers come
//! from the network, even though their shapes were checked).
//!
//! Invariant: a counted connection that gets no running service (expansion error, spawn
//! failure, close) is reported to the classifier with `ConnClosed` right here; one that gets a
//! service is reported when the service is reaped.

use std::net::TcpStream;
use std::time::Instant;

use privsep::proto::{ConnId, ParentToClassifier};

use super::admit::Verdict;
use super::msgwrite::{self, MsgWrite, Progress};
use super::spawn::{self, ServiceEnv};
use super::{Parent, Service};
use crate::log;

impl Parent {
    pub(super) fn on_verdict(&mut self, v: Verdict) {
        let Some(p) = self.pending.0.remove(&v.conn()) else {
            // admit() checked it is pending; nothing to act on otherwise.
            return;
        };
        // Old tables are pruned once a second and on PolicyLoaded, not per verdict: finding the
        // oldest pending generation is a walk over every pending connection.
        let conn = v.conn();
        let d = v.decision();
        let disposition = d.disposition;
        let counted = d.counted;
        let class = v.action_class_name().unwrap_or("-").to_owned();
        let action = match disposition {
            policy::decide::Disposition::Run => "run",
            policy::decide::Disposition::Msg => "msg",
            policy::decide::Disposition::FailRun => "failrun",
            policy::decide::Disposition::FailMsg => "failmsg",
            policy::decide::Disposition::Close => "close",
        };
        if log::enabled(1) {
            let why = match d.refusal {
                None => String::new(),
                Some(r) => format!(" refused={}", refusal_word(r)),
            };
            log::debug(
                1,
                &format!(
                    "verdict conn={} class={} action={action}{why} gen={}",
                    conn.0,
                    log::escape(&class),
                    v.gen().0
                ),
            );
        }
        let Some(actions) = v.actions().cloned() else {
            // A dropped actions file: admission let only Close through.
            return self.finish_unserved(conn, counted, p.stream);
        };
        let facts = policy::expand::ExpandFacts {
            remote: p.remote,
            local: p.local,
            host: v.host(),
            identd: v.identd(),
            seen: v.seen(),
            classes: v.classification(),
        };
        let rendered = policy::expand::render(&actions, d, &facts, self.settings.substitutions);
        // As in portnanny 2, the action is prepared as a whole: one string that cannot be
        // expanded (an unknown or undefined %(name)s anywhere: record, log, command, environment
        // or message) is logged and the connection is dropped, with no other line logged.
        let r = match Prepared::from(rendered) {
            Ok(r) => r,
            Err(e) => {
                log::err(&format!(
                    "conn={} class={}: {e}; dropping the connection",
                    conn.0,
                    log::escape(&class)
                ));
                return self.finish_unserved(conn, counted, p.stream);
            }
        };
        for t in &r.records {
            log::info(&log::escape(t));
        }
        if let Some(line) = &r.log {
            let repeat = line.norepeat && self.last_log.as_deref() == Some(line.text.as_str());
            if !repeat {
                log::info(&log::escape(&line.text));
            }
            self.last_log = Some(line.text.clone());
        }
        match disposition {
            policy::decide::Disposition::Run | policy::decide::Disposition::FailRun => {
                let argv = match r.argv {
                    Some(a) => a,
                    None => {
                        log::err(&format!(
                            "conn={} class={}: nothing to run; dropping",
                            conn.0,
                            log::escape(&class)
                        ));
                        return self.finish_unserved(conn, counted, p.stream);
                    }
                };
                let extra = r.env;
                let names: Vec<&str> = v.classification().names().collect();
                let mut env = ServiceEnv {
                    remote: p.remote,
                    local: p.local,
                    host: v.host().and_then(|h| h.verified()),
                    identd: v.identd(),
                    class: &class,
                    classes: &names,
                    label: v.label(),
                }
                .vars();
                env.extend(extra);
                let classes: Vec<String> = names.iter().map(|s| s.to_string()).collect();
                match spawn::spawn_service(&argv, &env, self.creds.as_ref(), p.stream) {
                    Ok(pid) => {
                        if log::enabled(1) {
                            log::debug(1, &format!("spawn conn={} pid={pid}", conn.0));
                        }
                        let pid = i32::try_from(pid).unwrap_or(i32::MAX);
                        self.services.insert(
                            pid,
                            Service {
                                conn,
                                remote: p.remote,
                                local: p.local,
                                classes,
                                counted,
                                started: Instant::now(),
                            },
                        );
                    }
                    Err(e) => {
                        log::err(&format!(
                            "conn={} class={}: cannot run {}: {e}",
                            conn.0,
                            log::escape(&class),
                            log::escape(argv.first().map_or("", String::as_str))
                        ));
                        self.conn_closed(conn, counted);
                    }
                }
            }
            policy::decide::Disposition::Msg | policy::decide::Disposition::FailMsg => {
                let Some(text) = r.message else {
                    return self.finish_unserved(conn, counted, p.stream);
                };
                if self.msgs.len() >= msgwrite::MAX_MSG_WRITERS {
                    log::warn(&format!(
                        "drop conn={} reason=too-many-messages-in-flight",
                        conn.0
                    ));
                    return self.finish_unserved(conn, counted, p.stream);
                }
                let (bytes, cut) = msgwrite::message_bytes(&text);
                if cut {
                    log::warn(&format!(
                        "conn={} class={}: message cut to {} bytes",
                        conn.0,
                        log::escape(&class),
                        msgwrite::MAX_MSG_BYTES
                    ));
                }
                // Accepted sockets are blocking (services want that); the parent's own writes
                // must never wait on a peer.
                if let Err(e) = p.stream.set_nonblocking(true) {
                    log::debug(1, &format!("msg conn={} failed: {e}", conn.0));
                    return self.finish_unserved(conn, counted, p.stream);
                }
                let mut w = MsgWrite::new(conn, p.stream, bytes, Instant::now());
                match w.advance(Instant::now()) {
                    Progress::Blocked => self.msgs.push(w),
                    other => finish_msg(w, other),
                }
                // Messages are never counted (admission refuses counted msg verdicts).
            }
            policy::decide::Disposition::Close => {
                self.finish_unserved(conn, counted, p.stream);
            }
        }
    }

    /// Closes a connection that gets no service, and releases its count if it had one.
    pub(super) fn finish_unserved(&mut self, conn: ConnId, counted: bool, stream: TcpStream) {
        drop(stream);
        if log::enabled(2) {
            log::debug(2, &format!("close conn={}", conn.0));
        }
        self.conn_closed(conn, counted);
    }

    pub(super) fn conn_closed(&mut self, conn: ConnId, counted: bool) {
        if !counted {
            return;
        }
        if let Some(ws) = self.workers.as_mut() {
            if let Err(e) = ws
                .classifier
                .queue(&ParentToClassifier::ConnClosed { conn })
            {
                self.worker_failed(format!("sending ConnClosed: {e}"), false);
            }
        }
        // Without a classifier there is nothing to tell: the next one is seeded with the live
        // services only.
    }
}

/// The first string of a rendered action that failed to expand, if any. The environment only
/// matters when a program is run.
/// A rendered action in which every string expanded.
struct Prepared {
    records: Vec<String>,
    log: Option<policy::expand::LogLine>,
    argv: Option<Vec<String>>,
    /// `setenv` values; only looked at when a program is run.
    env: Vec<(String, String)>,
    message: Option<String>,
}

impl Prepared {
    /// The first string that failed to expand, in the order portnanny 2 prepared them.
    fn from(r: policy::expand::Rendered) -> Result<Prepared, policy::expand::ExpandError> {
        let records = r.records.into_iter().collect::<Result<Vec<_>, _>>()?;
        let log = r.log.transpose()?;
        let argv = r.argv.transpose()?;
        let env = match (r.env, argv.is_some()) {
            (Ok(env), _) => env,
            (Err(e), true) => return Err(e),
            (Err(_), false) => Vec::new(),
        };
        let message = r.message.transpose()?;
        Ok(Prepared {
            records,
            log,
            argv,
            env,
            message,
        })
    }
}

fn refusal_word(r: policy::decide::Refusal) -> &'static str {
    match r {
        policy::decide::Refusal::Reject => "reject",
        policy::decide::Refusal::IpMax => "ipmax",
        policy::decide::Refusal::ConnMax => "connmax",
    }
}

/// Ends a message write: shut the write side (a clean FIN after the bytes) and close.
pub(super) fn finish_msg(w: MsgWrite<TcpStream>, how: Progress) {
    let conn = w.conn;
    match how {
        Progress::Done if log::enabled(2) => log::debug(2, &format!("msg conn={} sent", conn.0)),
        Progress::Done => {}
        Progress::TimedOut { written, left } => log::debug(
            1,
            &format!(
                "msg conn={} timed out after {written} bytes, {left} unsent",
                conn.0
            ),
        ),
        Progress::Failed(e) => log::debug(1, &format!("msg conn={} failed: {e}", conn.0)),
        Progress::Blocked => {}
    }
    let mut s = w.into_inner();
    let _ = s.shutdown(std::net::Shutdown::Write);
    // Closing a socket with unread input makes the kernel send RST instead of FIN, and a
    // client that sent a request line before the message arrived would then lose the message.
    // Discard what is already there (bounded; the socket is non-blocking) before closing.
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match std::io::Read::read(&mut s, &mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
}
