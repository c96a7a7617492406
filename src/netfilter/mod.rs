//! The netfilter worker: pyctd's job, the host's conntrack table viewed, killed and changed.
//!
//! Runs as its own process, started by the parent (re-exec with `--privsep-role netfilter UID
//! GID CHROOT`, fd 3 = its channel to the parent), demoted to the unprivileged privsep user with
//! CAP_NET_ADMIN as its only capability (nfnetlink wants it for every conntrack message),
//! no_new_privs, chrooted into the empty directory, RLIMIT_NPROC 0. It talks to the kernel over
//! NETLINK_NETFILTER ([`netlink`]), keeps pyctd's snapshot model ([`table`]: renewed by
//! `refresh`, or at each `list` while autorefresh is on) and answers typed requests with
//! bounded replies. Names for `conntrackuidmask` were read before the drop ([`users`]).
//!
//! Protocol with the parent (privsep::proto):
//! 1. parent → `ParentToNetfilter::Hello { build, settings }`; a differing build exits 111;
//! 2. we open the netlink socket, forbid new processes, answer `NetfilterToParent::Hello`;
//! 3. then `Ask { req, ask }` down, exactly one `Answer { req, reply }` up, in order.
//!
//! Exit codes: 0 when the parent closes the channel, 111 on anything else.

pub mod netlink;
pub mod table;
pub mod users;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

use privsep::conntrack::{CtKill, CtKilled, CtRequest};
use privsep::control::{ErrorKind, Reply};
use privsep::proto::{LogLevel, LogRecord, NetfilterToParent, ParentToNetfilter, MAX_LOG_LINE};
use privsep::{Channel, ChannelError};

use crate::exit::{EXIT_OK, EXIT_SYSTEM};
use netlink::Ctnetlink;
use table::Table;

type ToParent = Channel<NetfilterToParent, ParentToNetfilter>;

/// The netfilter role's entry point (called by the role main after the privilege drop).
pub fn run(parent: ToParent, users: HashMap<u32, String>) -> ExitCode {
    serve(parent, users, true)
}

fn log(parent: &mut ToParent, level: LogLevel, text: String) -> Result<(), ChannelError> {
    parent.send(&NetfilterToParent::Log(LogRecord {
        level,
        verbosity: 0,
        text: crate::log::cap(&text, MAX_LOG_LINE).to_owned(),
    }))
}

/// `run`, optionally without forbidding new processes (for a test that runs it in-process).
pub fn serve(
    mut parent: ToParent,
    users: HashMap<u32, String>,
    forbid_processes: bool,
) -> ExitCode {
    let build = privsep::build_id();
    let settings = match parent.recv() {
        Ok(ParentToNetfilter::Hello {
            build: theirs,
            settings,
        }) if theirs == build => settings,
        Ok(_) => {
            let _ = parent.send(&NetfilterToParent::Hello { build });
            let _ = log(
                &mut parent,
                LogLevel::Crit,
                "parent build differs or Hello missing; exiting".into(),
            );
            return ExitCode::from(EXIT_SYSTEM);
        }
        Err(ChannelError::Closed) => return ExitCode::from(EXIT_OK),
        Err(_) => return ExitCode::from(EXIT_SYSTEM),
    };
    let opened = Ctnetlink::open().map_err(|e| format!("netlink socket: {e}"));
    // ORDER: the socket first (nothing after it creates a thread or process), then the limit.
    let forbidden = match (&opened, forbid_processes) {
        (Ok(_), true) => crate::noprocs::forbid(privsep::Role::Netfilter),
        _ => Ok(()),
    };
    if parent
        .send(&NetfilterToParent::Hello {
            build: build.clone(),
        })
        .is_err()
    {
        return ExitCode::from(EXIT_SYSTEM);
    }
    let mut nl = match (opened, forbidden) {
        (Ok(s), Ok(())) => s,
        (Err(e), _) | (Ok(_), Err(e)) => {
            let _ = log(&mut parent, LogLevel::Crit, e);
            return ExitCode::from(EXIT_SYSTEM);
        }
    };
    let mut table = Table::new(settings.uid_mask, users);
    loop {
        let (req, ask) = match parent.recv() {
            Ok(ParentToNetfilter::Ask { req, ask }) => (req, ask),
            Ok(ParentToNetfilter::Hello { .. }) => {
                let _ = log(&mut parent, LogLevel::Crit, "a second Hello".into());
                return ExitCode::from(EXIT_SYSTEM);
            }
            Err(ChannelError::Closed) => return ExitCode::from(EXIT_OK),
            Err(e) => {
                let _ = log(&mut parent, LogLevel::Crit, format!("parent channel: {e}"));
                return ExitCode::from(EXIT_SYSTEM);
            }
        };
        let reply = answer(&mut nl, &mut table, ask, &mut parent);
        if parent
            .send(&NetfilterToParent::Answer { req, reply })
            .is_err()
        {
            return ExitCode::from(EXIT_SYSTEM);
        }
    }
}

/// Takes a new snapshot; an error is the client's answer.
fn refresh(nl: &mut Ctnetlink, table: &mut Table, parent: &mut ToParent) -> Result<(), String> {
    let d = nl
        .dump(table.len())
        .map_err(|e| format!("conntrack dump failed: {e}"))?;
    if d.skipped > 0 {
        let _ = log(
            parent,
            LogLevel::Warning,
            format!(
                "conntrack dump: {} entries skipped (unreadable, or over the cap)",
                d.skipped
            ),
        );
    }
    table.replace(d.rows, Instant::now());
    // The dump's parse buffers are free now; hand their pages back rather than keep the peak.
    // SAFETY: malloc_trim only releases free heap memory; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
    Ok(())
}

fn answer(nl: &mut Ctnetlink, table: &mut Table, ask: CtRequest, parent: &mut ToParent) -> Reply {
    // The parent checked it; a request out of bounds here is a bug upstream, refused anyway.
    if let Err(why) = ask.check() {
        return Reply::error(ErrorKind::BadRequest, why);
    }
    let now = Instant::now();
    match ask {
        CtRequest::List(q) => {
            if table.wants_refresh(now) {
                if let Err(e) = refresh(nl, table, parent) {
                    return Reply::error(ErrorKind::Failed, e);
                }
            }
            Reply::CtPage(table.query(&q, Instant::now()))
        }
        CtRequest::Refresh => match refresh(nl, table, parent) {
            Ok(()) => Reply::Done(format!(
                "conntrack snapshot refreshed: {} entries",
                table.len()
            )),
            Err(e) => Reply::error(ErrorKind::Failed, e),
        },
        CtRequest::Autorefresh { on } => {
            table.autorefresh = on;
            Reply::Done(format!(
                "conntrack autorefresh {}",
                if on { "on" } else { "off" }
            ))
        }
        CtRequest::Kill(k) => kill(nl, table, &k, parent),
        CtRequest::Change { id, field, value } => {
            if table.taken.is_none() {
                if let Err(e) = refresh(nl, table, parent) {
                    return Reply::error(ErrorKind::Failed, e);
                }
            }
            let Some(row) = table.get(id).cloned() else {
                return Reply::error(
                    ErrorKind::NoSuchId,
                    format!("no conntrack entry has id {id}"),
                );
            };
            match nl.change(&row, field, value) {
                Ok(()) => {
                    if let Some(r) = table.get_mut(id) {
                        match field {
                            privsep::conntrack::CtField::Mark => r.mark = value,
                            privsep::conntrack::CtField::Timeout => r.timeout = value,
                        }
                    }
                    Reply::Done(format!("conntrack entry {id}: {field} set to {value}"))
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    table.remove(&[id]);
                    Reply::error(ErrorKind::NoSuchId, format!("conntrack entry {id} is gone"))
                }
                Err(e) => Reply::error(
                    ErrorKind::Failed,
                    format!("conntrack entry {id}: setting {field} failed: {e}"),
                ),
            }
        }
    }
}

/// Deletes by id (from the snapshot) and by address (from a fresh dump, so a block ends the
/// flows that exist now, not those of an old snapshot).
fn kill(nl: &mut Ctnetlink, table: &mut Table, k: &CtKill, parent: &mut ToParent) -> Reply {
    if table.taken.is_none() || !k.ip.is_empty() {
        if let Err(e) = refresh(nl, table, parent) {
            return Reply::error(ErrorKind::Failed, e);
        }
    }
    let mut out = CtKilled::default();
    let mut ids: Vec<u32> = Vec::new();
    for id in &k.ids {
        if table.get(*id).is_some() {
            ids.push(*id);
        } else {
            out.missing.push(*id);
        }
    }
    for r in table.by_id() {
        let hit =
            k.ip.iter()
                .any(|c| c.contains(r.orig.src) || c.contains(r.orig.dst));
        if hit && !ids.contains(&r.id) {
            ids.push(r.id);
        }
    }
    let mut failed = Vec::new();
    for id in &ids {
        let Some(row) = table.get(*id) else {
            continue;
        };
        match nl.delete(row) {
            Ok(()) => out.killed.push(*id),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => out.missing.push(*id),
            Err(e) => failed.push(format!("{id}: {e}")),
        }
    }
    table.remove(&ids);
    if !failed.is_empty() {
        let _ = log(
            parent,
            LogLevel::Err,
            format!(
                "conntrack kill: {} deletes failed: {}",
                failed.len(),
                failed.join(", ")
            ),
        );
    }
    Reply::CtKilled(out)
}
