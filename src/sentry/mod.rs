//! The sentry worker: PortSentry's stealth and advanced scan detection (stcp, sudp, atcp,
//! audp) from raw packets, reported to the parent as typed `Probe` messages.
//!
//! Runs as its own process, started by the parent (re-exec with `--privsep-role sentry UID GID
//! [CHROOT]`, fd 3 = its channel to the parent, nothing else), demoted by the role main to an
//! unprivileged uid/gid that keeps exactly CAP_NET_RAW (bounding, permitted, effective),
//! no_new_privs, chrooted into the empty directory. The role main opens the /proc/net tables
//! ([`netstat::NetTables`]) before the drop; this module opens the capture socket and the
//! sock_diag socket ([`diag::SockDiag`], exact lookups of one packet's socket) after it. It
//! handles bytes from the network (every captured packet, hostile; parsed with etherparse in
//! [`detect`]) and from the parent (trusted, but decoded with the usual limits).
//!
//! Protocol (privsep::proto):
//! 1. parent → `ParentToSentry::Hello { build, settings }`, first and only message; the build
//!    must be ours, else we log and exit 111;
//! 2. we open the capture socket with a kernel filter built from `settings`, forbid new
//!    processes (RLIMIT_NPROC 0: the sentry is single-threaded), and answer
//!    `SentryToParent::Hello { build }`; if the socket cannot be opened we still say Hello,
//!    then `Log` the reason at LOG_CRIT and exit 111;
//! 3. from then on `Probe(ProbeReport)` for each probe (see [`detect`] for what is reported
//!    and the rate limits) and `Log` records (a once-a-second summary of suppressed reports,
//!    and of packets the capture ring dropped; at start, a warning if the kernel answers no
//!    exact lookups, and an error if sock_diag fails later and is given up).
//!
//! Starting it (the parent's side, parent/from_sentry.rs and workers.rs): only when nanny.conf
//! has a `stealth` line; one socketpair (CLOEXEC), `spawn_worker(Role::Sentry, ...)` with the
//! classifier's privsep user and empty chroot directory; it is a restart group of its own
//! (`Role::Sentry.restart_group()`). Then send `Hello { build: build_id(), settings }`, expect
//! `Hello` with the same build within the start timeout, and pass every `Probe` through
//! `report::check_report(&settings, &report)` before believing it: a refusal is a violation
//! (LOG_CRIT, kill, restart with back-off). A parent without root (or CAP_NET_RAW) gets a
//! sentry that says Hello, logs why the capture socket failed and exits 111.
//!
//! Exit codes: 0 when the parent closes the channel, 111 on anything else (a second parent
//! message is a protocol violation, a broken channel or capture socket a system error).

pub mod bpf;
pub mod capture;
pub mod detect;
pub mod diag;
pub mod netstat;
pub mod report;

use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use privsep::proto::{LogLevel, LogRecord, ParentToSentry, SentryToParent, MAX_LOG_LINE};
use privsep::{Channel, ChannelError};

use crate::exit::{EXIT_OK, EXIT_SYSTEM};

use capture::Capture;
use detect::{Detector, Packet, Sockets};
use diag::SockDiag;
use netstat::{NetTables, SocketTable};

/// Packets handled per wakeup before the parent channel is looked at again.
const BATCH: usize = 256;
/// How often suppressed reports are summarised and the duplicate table is expired.
const TICK: Duration = Duration::from_secs(1);

type ToParent = Channel<SentryToParent, ParentToSentry>;

/// The host's sockets as the sentry sees them: sock_diag's listener dumps and exact lookups
/// while the kernel answers them, the /proc/net tables otherwise.
pub struct HostSockets {
    tables: NetTables,
    diag: Option<SockDiag>,
    /// Why sock_diag was given up, until the next summary says so.
    gave_up: Option<String>,
}

impl HostSockets {
    /// A sock_diag request failed: something is wrong with it (a module unloaded, a security
    /// policy), so it is not trusted again, and /proc/net answers from now on (lookups are
    /// then the table's, re-read if older than RECHECK).
    fn give_up(&mut self, what: &str, e: &std::io::Error) {
        self.diag = None;
        self.gave_up = Some(format!("{what}: {e}"));
    }
}

impl Sockets for HostSockets {
    fn read(&mut self) -> Option<SocketTable> {
        // With sock_diag, the listeners alone (connections are asked about one by one), from
        // dumps that do not walk the connection hash.
        if let Some(d) = self.diag.as_mut() {
            match d.listeners() {
                Ok(t) => return Some(t),
                Err(e) => self.give_up("listener dump", &e),
            }
        }
        self.tables.read().ok()
    }

    fn lookup(&mut self, p: &Packet, ifindex: u32) -> Option<bool> {
        match self.diag.as_mut()?.owns(p.proto, p.dst, p.src, ifindex) {
            Ok(owned) => Some(owned),
            Err(e) => {
                self.give_up("exact lookup", &e);
                None
            }
        }
    }
}

/// Whether a message reached the parent: Ok(false) when the parent had closed its end (the
/// same as its EOF: the end of the sentry's job), Err on any other failure.
fn sent(r: Result<(), ChannelError>) -> Result<bool, String> {
    match r {
        Ok(()) => Ok(true),
        Err(ChannelError::Closed) => Ok(false),
        Err(e) => Err(format!("parent channel: {e}")),
    }
}

fn log(parent: &mut ToParent, level: LogLevel, text: String) -> Result<(), ChannelError> {
    let mut text = text;
    if text.len() > MAX_LOG_LINE {
        let mut end = MAX_LOG_LINE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    parent.send(&SentryToParent::Log(LogRecord {
        level,
        verbosity: 0,
        text,
    }))
}

/// The sentry role's entry point (called by the role main after the privilege drop, with the
/// tables it opened before it).
pub fn run(parent: ToParent, tables: NetTables) -> ExitCode {
    serve(parent, tables, true)
}

/// `run`, optionally without forbidding new processes (for a test that runs it in-process).
pub fn serve(mut parent: ToParent, tables: NetTables, forbid_processes: bool) -> ExitCode {
    let build = privsep::build_id();
    let settings = match parent.recv() {
        Ok(ParentToSentry::Hello {
            build: theirs,
            settings,
        }) if theirs == build => settings,
        Ok(ParentToSentry::Hello { .. }) => {
            let _ = log(
                &mut parent,
                LogLevel::Crit,
                "parent build differs; exiting".into(),
            );
            return ExitCode::from(EXIT_SYSTEM);
        }
        Err(ChannelError::Closed) => return ExitCode::from(EXIT_OK),
        Err(e) => {
            let _ = log(&mut parent, LogLevel::Crit, format!("parent channel: {e}"));
            return ExitCode::from(EXIT_SYSTEM);
        }
    };
    let (tcp_limit, udp_limit) = (
        settings.tcp.as_ref().map_or(0, |w| w.limit()),
        settings.udp.as_ref().map_or(0, |w| w.limit()),
    );
    let opened = Capture::open(tcp_limit, udp_limit).map_err(|e| e.to_string());
    // ORDER: the socket first (nothing after it creates a thread or process), then the limit.
    let forbidden = match (&opened, forbid_processes) {
        (Ok(_), true) => crate::noprocs::forbid(privsep::Role::Sentry),
        _ => Ok(()),
    };
    if parent
        .send(&SentryToParent::Hello {
            build: build.clone(),
        })
        .is_err()
    {
        return ExitCode::from(EXIT_SYSTEM);
    }
    let mut capture = match (opened, forbidden) {
        (Ok(c), Ok(())) => c,
        (Err(e), _) | (Ok(_), Err(e)) => {
            let _ = log(&mut parent, LogLevel::Crit, format!("capture: {e}"));
            return ExitCode::from(EXIT_SYSTEM);
        }
    };
    // Exact lookups need no privilege and no path; without them the table decides alone.
    let diag = SockDiag::open().and_then(|mut d| d.check().map(|()| d));
    if let Err(e) = &diag {
        let said = log(
            &mut parent,
            LogLevel::Warning,
            format!(
                "exact socket lookups unavailable ({e}): probes are checked against /proc/net \
                 only, so a packet of a connection opened in the last few milliseconds may be \
                 reported (load the tcp_diag and udp_diag modules)"
            ),
        );
        if said.is_err() {
            return ExitCode::from(EXIT_SYSTEM);
        }
    }
    let sockets = HostSockets {
        tables,
        diag: diag.ok(),
        gave_up: None,
    };
    let mut detector = Detector::new(settings, sockets, Instant::now());
    match watch(&mut parent, &mut capture, &mut detector) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            let _ = log(&mut parent, LogLevel::Crit, e);
            ExitCode::from(EXIT_SYSTEM)
        }
    }
}

/// The poll loop. Ok(()) when the parent closed the channel.
fn watch(
    parent: &mut ToParent,
    capture: &mut Capture,
    detector: &mut Detector<HostSockets>,
) -> Result<(), String> {
    let mut buf = [0u8; bpf::SNAP as usize];
    let mut tick = Instant::now() + TICK;
    loop {
        let left = tick.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let (cap_ready, parent_ready) = {
            let mut fds = [
                PollFd::new(capture.as_fd(), PollFlags::POLLIN),
                PollFd::new(parent.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if parent_ready {
            // The parent sends nothing after Hello: EOF is the only normal event.
            return match parent.recv() {
                Err(ChannelError::Closed) => Ok(()),
                Ok(m) => Err(format!("unexpected parent message after Hello: {m:?}")),
                Err(e) => Err(format!("parent channel: {e}")),
            };
        }
        if cap_ready {
            for _ in 0..BATCH {
                let now = Instant::now();
                let report = match capture.recv(&mut buf) {
                    Ok(Some(pkt)) => detector.examine(pkt.bytes, pkt.ifindex, now),
                    Ok(None) => break,
                    Err(e) => return Err(format!("capture: {e}")),
                };
                if let Some(r) = report {
                    if !sent(parent.send(&SentryToParent::Probe(r)))? {
                        return Ok(());
                    }
                }
            }
        }
        let now = Instant::now();
        if now >= tick {
            tick = now + TICK;
            detector.expire(now);
            // The once-a-second summary: what was not reported, and why.
            if let Some(why) = detector.sockets_mut().gave_up.take() {
                let text = format!(
                    "sock_diag failed ({why}): from now on /proc/net answers, and a packet of a \
                     connection opened in the last few milliseconds may be reported"
                );
                if !sent(log(parent, LogLevel::Err, text))? {
                    return Ok(());
                }
            }
            let summary = [
                (
                    detector.take_self_sourced(),
                    " probes forged with this host's own address as their source ignored \
                     (never reported, never blocked)"
                        .to_owned(),
                ),
                (
                    u64::from(capture.take_drops()),
                    " packets dropped by the kernel: the capture ring was full".to_owned(),
                ),
                (
                    detector.take_dropped(),
                    format!(
                        " probe reports suppressed (more than {} a second)",
                        detect::MAX_REPORTS_PER_SEC
                    ),
                ),
            ];
            for (count, what) in summary {
                if count > 0 && !sent(log(parent, LogLevel::Warning, format!("{count}{what}")))? {
                    return Ok(());
                }
            }
        }
    }
}
