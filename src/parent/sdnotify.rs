//! The service manager's notification protocol (sd_notify(3)), for a `Type=notify` unit:
//! READY=1 once the workers have said hello and every port listens, RELOADING=1 (with
//! MONOTONIC_USEC, as `Type=notify-reload` wants) and READY=1 again around a reload,
//! STOPPING=1 at shutdown, STATUS= with the counts, and WATCHDOG=1 at half of WATCHDOG_USEC.
//! An extension to portnanny 2: without NOTIFY_SOCKET none of this runs.
//!
//! Runs in the parent only; it sends and never reads. The socket name comes from the service
//! manager. Each message is one datagram of `NAME=VALUE` lines to a Unix datagram socket named
//! by NOTIFY_SOCKET (a path, or `@name` in the abstract namespace); the manager tells the
//! sender by its credentials, which the kernel adds, so only the parent (the unit's main
//! process) can be heard.
//!
//! Written here rather than with the `sd-notify` crate: the crate reads NOTIFY_SOCKET from the
//! environment on every call, but the variable must leave the environment at start-up so that
//! no service inherits it (services get the daemon's environment), and its watchdog check
//! requires WATCHDOG_PID where sd_watchdog_enabled(3) accepts its absence. The protocol itself
//! is a few lines.
//!
//! Invariants:
//! - NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are removed from the environment at start-up,
//!   so no service inherits them; workers start from an empty environment and never notify;
//! - the watchdog is pinged from the poll loop, so a loop that stops turning stops pinging;
//! - nothing is sent per connection: STATUS is refreshed at most once a second, and only when
//!   it changed; a send failure is logged once and never stops the daemon.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use super::Parent;
use crate::log;

/// The variables of the protocol, removed from the environment by [`Notifier::from_env`].
const VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// How often STATUS may be refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Where notifications go, and what has been said.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Ping interval: half of WATCHDOG_USEC (sd_watchdog_enabled(3) advises it).
    watchdog: Option<Duration>,
    next_ping: Option<Instant>,
    /// READY=1 sent (start-up complete).
    ready: bool,
    /// RELOADING=1 sent, READY=1 not yet.
    reloading: bool,
    last_status: String,
    next_status: Option<Instant>,
    /// A send failed; logged once.
    failed: bool,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn none() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
            next_ping: None,
            ready: false,
            reloading: false,
            last_status: String::new(),
            next_status: None,
            failed: false,
        }
    }

    /// Reads the protocol's variables and removes them from the environment. Call once at
    /// start-up, while the parent has no other thread (changing the environment is not
    /// thread-safe) and before the service environment is captured.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os(VARS[0]);
        let usec = std::env::var_os(VARS[1]);
        let pid = std::env::var_os(VARS[2]);
        for k in VARS {
            std::env::remove_var(k);
        }
        let Some(socket) = socket else {
            return Notifier::none();
        };
        let addr = match parse_socket(&socket) {
            Ok(a) => a,
            Err(e) => {
                log::warn(&format!(
                    "NOTIFY_SOCKET={}: {e}; not notifying the service manager",
                    log::escape(&socket.to_string_lossy())
                ));
                return Notifier::none();
            }
        };
        let sock = match UnixDatagram::unbound() {
            Ok(s) => s,
            Err(e) => {
                log::warn(&format!("cannot notify the service manager: socket: {e}"));
                return Notifier::none();
            }
        };
        // Never wait for a full receive queue: the loop must not block on the manager.
        if let Err(e) = sock.set_nonblocking(true) {
            log::warn(&format!("cannot notify the service manager: {e}"));
            return Notifier::none();
        }
        let watchdog = watchdog_interval(
            usec.as_deref().and_then(OsStr::to_str),
            pid.as_deref().and_then(OsStr::to_str),
            std::process::id(),
        );
        if let Some(w) = watchdog {
            log::debug(1, &format!("watchdog: pinging every {} ms", w.as_millis()));
        }
        Notifier {
            target: Some((sock, addr)),
            watchdog,
            next_ping: watchdog.map(|_| Instant::now()),
            ..Notifier::none()
        }
    }

    /// Whether there is a service manager to tell anything.
    pub fn active(&self) -> bool {
        self.target.is_some()
    }

    /// When the poll loop must wake next to ping the watchdog.
    pub fn next_ping(&self) -> Option<Instant> {
        self.next_ping
    }

    fn send(&mut self, msg: &str) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        match sock.send_to_addr(msg.as_bytes(), addr) {
            Ok(_) => self.failed = false,
            Err(e) if !self.failed => {
                self.failed = true;
                log::warn(&format!("cannot notify the service manager: {e}"));
            }
            Err(_) => {}
        }
    }

    fn ping_if_due(&mut self, now: Instant) {
        if let (Some(every), Some(due)) = (self.watchdog, self.next_ping) {
            if now >= due {
                self.send("WATCHDOG=1");
                self.next_ping = Some(now + every);
            }
        }
    }

    /// Start-up or a reload is complete.
    fn ready(&mut self, status: String) {
        self.send(&format!("READY=1\nSTATUS={status}"));
        self.ready = true;
        self.reloading = false;
        self.last_status = status;
    }

    /// A reload starts (SIGHUP). Before start-up is complete the coming READY=1 covers it.
    pub fn reloading(&mut self) {
        if !self.ready || !self.active() {
            return;
        }
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the rules and actions files",
            monotonic_usec()
        ));
        self.reloading = true;
    }

    /// The daemon stops: it closes its listeners and exits.
    pub fn stopping(&mut self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    fn status(&mut self, status: String) {
        if status != self.last_status {
            self.send(&format!("STATUS={status}"));
            self.last_status = status;
        }
    }
}

impl Parent {
    /// Once per loop turn: the watchdog when due, READY=1 when start-up or a reload is
    /// complete, STATUS= when the counts changed (at most once a second).
    pub(super) fn notify_turn(&mut self, now: Instant) {
        if !self.notify.active() {
            return;
        }
        self.notify.ping_if_due(now);
        if !self.notify.ready {
            if self.all_workers_up() {
                let s = self.status_text();
                self.notify.ready(s);
                self.notify.next_status = Some(now + STATUS_EVERY);
            }
            return;
        }
        if self.notify.reloading && self.reload_done() {
            let s = self.status_text();
            self.notify.ready(s);
            return;
        }
        if self.notify.next_status.is_none_or(|t| now >= t) {
            let s = self.status_text();
            self.notify.status(s);
            self.notify.next_status = Some(now + STATUS_EVERY);
        }
    }

    /// Every worker has said hello and the classifier has loaded the policy. The listeners
    /// were bound before any worker started, so every port listens by then. A configured
    /// sentry counts once it said hello or was given up (it is optional to serving).
    fn all_workers_up(&self) -> bool {
        self.workers_ready()
            && (self.sentry_settings.is_none() || self.sentry.as_ref().is_some_and(|w| w.hello))
    }

    /// A reload is complete when no parse is running or waiting and the classifier (if one
    /// runs) has loaded the current generation; a reload whose files had errors is complete
    /// too (the old policy goes on serving).
    fn reload_done(&self) -> bool {
        !self.policy.reload_pending()
            && (self.classifier.is_none() || self.shipped.acked == Some(self.policy.gen))
    }

    /// STATUS=: what `systemctl status` shows.
    fn status_text(&self) -> String {
        format!(
            "{} running, {} awaiting a verdict, {} messages; {} connections since start; \
             policy generation {}; {} blocked",
            self.conns.running_len(),
            self.conns.pending_len(),
            self.conns.writing_len(),
            self.lifetime,
            self.policy.gen.0,
            self.blocker.set().len()
        )
    }
}

/// NOTIFY_SOCKET as an address: an absolute path, or `@name` in the abstract namespace.
fn parse_socket(v: &OsStr) -> std::io::Result<SocketAddr> {
    let b = v.as_bytes();
    match b.first() {
        Some(b'/') => SocketAddr::from_pathname(v),
        Some(b'@') => SocketAddr::from_abstract_name(b.get(1..).unwrap_or_default()),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "neither an absolute path nor an abstract name (@NAME)",
        )),
    }
}

/// The ping interval the variables ask of process `me`: half of WATCHDOG_USEC, when it is a
/// positive number and WATCHDOG_PID, if set, is `me`.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// CLOCK_MONOTONIC in microseconds, the clock MONOTONIC_USEC= is read against.
fn monotonic_usec() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `t`, which is one.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) } != 0 {
        return 0;
    }
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let micros = u64::try_from(t.tv_nsec / 1000).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_rows() {
        let rows = [
            (Some("2000000"), None, Some(Duration::from_secs(1))),
            (Some("2000000"), Some("42"), Some(Duration::from_secs(1))),
            (Some("2000000"), Some("43"), None),
            (Some("2000000"), Some("x"), None),
            (Some("0"), None, None),
            (Some("soon"), None, None),
            (None, Some("42"), None),
        ];
        for (usec, pid, want) in rows {
            assert_eq!(watchdog_interval(usec, pid, 42), want, "{usec:?} {pid:?}");
        }
    }

    #[test]
    fn socket_names() {
        assert!(parse_socket(OsStr::new("/run/systemd/notify")).is_ok());
        let a = parse_socket(OsStr::new("@/org/example/notify")).unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"/org/example/notify"[..]));
        assert!(parse_socket(OsStr::new("vsock:2:1234")).is_err());
        assert!(parse_socket(OsStr::new("relative")).is_err());
        assert!(parse_socket(OsStr::new("")).is_err());
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        let name = format!("portnanny-sdnotify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut n = Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), addr)),
            watchdog: Some(Duration::from_millis(10)),
            next_ping: Some(Instant::now()),
            ..Notifier::none()
        };
        let recv = || {
            let mut buf = [0u8; 512];
            let len = rx.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..len]).into_owned()
        };
        // Not ready yet: a SIGHUP says nothing.
        n.reloading();
        n.ready("1 running".into());
        assert_eq!(recv(), "READY=1\nSTATUS=1 running");
        n.status("1 running".into());
        n.status("2 running".into());
        assert_eq!(recv(), "STATUS=2 running");
        n.reloading();
        let r = recv();
        assert!(r.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{r}");
        let usec: u64 = r
            .lines()
            .nth(1)
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(usec > 0 && usec <= monotonic_usec());
        let t = Instant::now();
        n.ping_if_due(t);
        assert_eq!(recv(), "WATCHDOG=1");
        n.ping_if_due(t);
        n.stopping();
        // The second ping was not due: the next datagram is STOPPING.
        assert_eq!(recv(), "STOPPING=1\nSTATUS=stopping");
    }
}
