//! Acting on an admitted verdict: render it from the parent's own actions table, log the
//! `record`/`log`/`faillog` lines, then run the command, start the message or close.
//!
//! Runs in the parent (root). The input is a [`Verdict`], which only `admit.rs` can build;
//! every string used here (argv, environment, message, log text) is rendered by
//! `policy::expand` from the parent's table for the verdict's generation plus the verdict's
//! validated facts. Text that reaches the log is escaped (hostnames and identd answers come
//! from the network, even though their shapes were checked).
//!
//! [`act`] returns what became of the connection and touches no other parent state: the
//! caller files a running service or a message in the connection table, and reports a counted
//! connection that got no service to the classifier (`ConnClosed`).

use std::net::TcpStream;
use std::time::Instant;

use super::admit::Verdict;
use super::conns::{Meta, Served};
use super::msgwrite::{self, MsgWrite, Progress};
use super::spawn::{self, Creds, ServiceEnv};
use crate::log;
use privsep::proto::SentryMode;

/// What [`act`] did with the connection.
#[derive(Debug)]
pub enum Acted {
    /// A service runs it; `timeout` is its class's (the caller schedules its end).
    Running {
        pid: i32,
        served: Served,
        timeout: Option<std::time::Duration>,
    },
    /// Its message is being written by the loop.
    Writing {
        writer: MsgWrite<TcpStream>,
        served: Served,
    },
    /// Closed: nothing to do, a message already written in full, or a failure (logged).
    Closed,
}

/// What acting needs of the parent's state.
pub struct ActCtx<'a> {
    pub creds: Option<&'a Creds>,
    pub substitutions: bool,
    /// The last `log` line written (norepeatlog).
    pub last_log: &'a mut Option<String>,
    /// Messages being written now (capped at `MAX_MSG_WRITERS`).
    pub writing: usize,
}

/// Acts on `v` for the pending connection `meta`. `stream` is None for a probe (a UDP trap
/// datagram, a stealth probe) or a connection whose peer has gone: its `log` and `record`
/// lines are written, but nothing is run or sent. `trap` names the detector that saw it.
pub fn act(
    v: &Verdict,
    meta: Meta,
    stream: Option<TcpStream>,
    trap: Option<SentryMode>,
    ctx: &mut ActCtx<'_>,
) -> Acted {
    let conn = meta.id;
    let d = v.decision();
    let disposition = d.disposition;
    let class = v.action_class_name().unwrap_or("-");
    if log::enabled(1) {
        let why = match d.refusal {
            None => String::new(),
            Some(r) => format!(" refused={}", r.as_str()),
        };
        log::debug(
            1,
            &format!(
                "verdict conn={} peer={} local={} class={} action={}{why} gen={}{}{}",
                conn.0,
                meta.remote,
                meta.local,
                log::escape(class),
                disposition.as_str(),
                v.gen().0,
                trap.map_or_else(String::new, |m| format!(" trap={}", m.as_str())),
                meta.via.map_or_else(String::new, |v| format!(" via {v}"))
            ),
        );
    }
    let Some(actions) = v.actions().cloned() else {
        // A dropped actions file: admission let only Close through.
        return close(meta, stream);
    };
    let facts = policy::expand::ExpandFacts {
        remote: meta.remote,
        local: meta.local,
        host: v.host(),
        identd: v.identd(),
        seen: v.seen(),
        classes: v.classification(),
    };
    let rendered = policy::expand::render(&actions, d, &facts, ctx.substitutions);
    // As in portnanny 2, the action is prepared as a whole: one string that cannot be
    // expanded (an unknown or undefined %(name)s anywhere: record, log, command, environment
    // or message) is logged and the connection is dropped, with no other line logged.
    let r = match Prepared::from(rendered) {
        Ok(r) => r,
        Err(e) => {
            log::err(&format!(
                "conn={} class={}: {e}; dropping the connection",
                conn.0,
                log::escape(class)
            ));
            return close(meta, stream);
        }
    };
    for t in &r.records {
        log::info(&log::escape(t));
    }
    if let Some(line) = &r.log {
        let repeat = line.norepeat && ctx.last_log.as_deref() == Some(line.text.as_str());
        if !repeat {
            log::info(&log::escape(&line.text));
        }
        *ctx.last_log = Some(line.text.clone());
    }
    let Some(stream) = stream else {
        // A probe or a peer that has gone: nothing to run or send.
        return close(meta, None);
    };
    let served = |user: Option<String>| Served {
        classes: v.classification().names().map(str::to_owned).collect(),
        action_class: class.to_owned(),
        label: v.label().map(str::to_owned),
        gen: v.gen(),
        user,
        started: Instant::now(),
    };
    use policy::decide::Disposition as D;
    match disposition {
        D::Run | D::FailRun => {
            let Some(argv) = r.argv else {
                log::err(&format!(
                    "conn={} class={}: nothing to run; dropping",
                    conn.0,
                    log::escape(class)
                ));
                return close(meta, Some(stream));
            };
            let names: Vec<&str> = v.classification().names().collect();
            let mut env = ServiceEnv {
                remote: meta.remote,
                local: meta.local,
                host: v.host().and_then(|h| h.verified()),
                identd: v.identd(),
                class,
                classes: &names,
                label: v.label(),
            }
            .vars();
            env.extend(r.env);
            // The class's sandbox, from the parent's own table for the verdict's generation.
            let sandbox = d.action_class.and_then(|i| v.host_table()?.sandbox(i));
            let creds = sandbox.and_then(|s| s.creds.as_ref()).or(ctx.creds);
            match spawn::spawn_service(&argv, &env, creds, sandbox, stream) {
                Ok(pid) => {
                    if log::enabled(1) {
                        log::debug(1, &format!("spawn conn={} pid={pid}", conn.0));
                    }
                    Acted::Running {
                        pid: i32::try_from(pid).unwrap_or(i32::MAX),
                        served: served(creds.map(|c| c.name.clone())),
                        timeout: sandbox.and_then(|s| s.timeout),
                    }
                }
                Err(e) => {
                    log::err(&format!(
                        "conn={} class={}: cannot run {}: {e}",
                        conn.0,
                        log::escape(class),
                        log::escape(argv.first().map_or("", String::as_str))
                    ));
                    Acted::Closed
                }
            }
        }
        D::Msg | D::FailMsg => {
            // A msgfile's bytes, read when the actions file was loaded, are sent as they are.
            let file = (disposition == D::Msg)
                .then(|| d.action_class.and_then(|i| v.host_table()?.msgfile(i)))
                .flatten();
            let text = match (file, r.message) {
                (Some(_), _) => None,
                (None, Some(text)) => Some(text),
                (None, None) => return close(meta, Some(stream)),
            };
            if ctx.writing >= msgwrite::MAX_MSG_WRITERS {
                log::warn(&format!(
                    "drop conn={} reason=too-many-messages-in-flight",
                    conn.0
                ));
                return close(meta, Some(stream));
            }
            let (bytes, cut) = match (&text, file) {
                (Some(text), _) => msgwrite::message_bytes(text),
                // Never over the cap: a larger file fails its load.
                (None, Some(f)) => (f.to_vec(), false),
                (None, None) => return close(meta, Some(stream)),
            };
            if cut {
                log::warn(&format!(
                    "conn={} class={}: message cut to {} bytes",
                    conn.0,
                    log::escape(class),
                    msgwrite::MAX_MSG_BYTES
                ));
            }
            let now = Instant::now();
            let mut w = MsgWrite::new(conn, stream, bytes, now);
            match w.advance(now) {
                Progress::Blocked => Acted::Writing {
                    writer: w,
                    served: served(None),
                },
                other => {
                    finish_msg(w, other);
                    Acted::Closed
                }
            }
            // Messages are never counted (admission refuses counted msg verdicts).
        }
        D::Close => close(meta, Some(stream)),
    }
}

/// Closes a connection that gets no service.
fn close(meta: Meta, stream: Option<TcpStream>) -> Acted {
    drop(stream);
    if log::enabled(2) {
        log::debug(2, &format!("close conn={}", meta.id.0));
    }
    Acted::Closed
}

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

/// Ends a message write: discard what the peer sent, then close (the FIN goes out with the
/// message's held-back tail, see msgwrite).
pub fn finish_msg(w: MsgWrite<TcpStream>, how: Progress) {
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
    msgwrite::discard_input(&w.into_inner());
}
