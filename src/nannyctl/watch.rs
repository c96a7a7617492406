//! `nannyctl watch`: the `list` table redrawn at an interval over one connection (pyctd's
//! autorefresh).
//!
//! Runs in `nannyctl`. On a terminal each frame replaces the last (cursor home, clear to the
//! end, cursor hidden while watching and shown again on exit) and the page is cut to the
//! window's height unless `--limit` says otherwise; elsewhere each frame is a header line and
//! a table, and with `--json` one JSON line per refresh. It ends cleanly (exit 0, cursor
//! restored) on SIGINT, SIGTERM and SIGHUP, which only write a byte to a pipe the waits poll
//! (signal-hook), and when stdout goes away (EPIPE, or EIO from a closed terminal).

use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use privsep::control::{ListQuery, Reply, Request};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::client::{Client, Got};
use super::codes::{Fail, EXIT_OK};
use super::show::{self, Shown};

/// Cursor home, then what the frame does not overwrite cleared.
const HOME: &str = "\x1b[H";
const CLEAR_LINE: &str = "\x1b[K";
const CLEAR_BELOW: &str = "\x1b[J";
const HIDE_CURSOR: &str = "\x1b[?25l";
const SHOW_CURSOR: &str = "\x1b[?25h";

/// Lines of a terminal frame besides the table's rows: the title, the table's header and the
/// page line.
const FRAME_LINES: u16 = 3;

/// Runs `watch`; returns the exit code, or the failure to report.
pub fn run(socket: &Path, query: &ListQuery, interval: Duration, json: bool) -> Result<u8, Fail> {
    let signals = Signals::install()
        .map_err(|e| Fail::Failed(format!("cannot set up the signal handlers: {e}")))?;
    let mut client = Client::connect(socket)?;
    let mut out = Screen::new(json);
    let r = watch(&mut client, &mut out, &signals, socket, query, interval);
    out.leave();
    r
}

fn watch(
    client: &mut Client,
    out: &mut Screen,
    signals: &Signals,
    socket: &Path,
    query: &ListQuery,
    interval: Duration,
) -> Result<u8, Fail> {
    let mut next = Instant::now();
    // Bounded by the signals and errors that end it; one round per interval.
    loop {
        let mut q = query.clone();
        if q.limit.is_none() {
            q.limit = out
                .height()
                .map(|h| u64::from(h.saturating_sub(FRAME_LINES).max(1)));
        }
        let req = Request::List(q);
        let reply = match client.ask(&req, Some(signals.fd()))? {
            Got::Interrupted => return Ok(EXIT_OK),
            Got::Reply(r) => r,
        };
        if let Reply::Error { kind, message } = &reply {
            let s = show::error(*kind, message, out.json);
            out.leave();
            if !s.out.is_empty() {
                let _ = io::stdout().write_all(s.out.as_bytes());
            }
            return Err(Fail::Daemon {
                kind: *kind,
                message: message.clone(),
            });
        }
        let shown = show::show(&req, &reply, out.json, 0);
        if shown.code != EXIT_OK {
            return Err(Fail::Failed(shown.err));
        }
        let total = match &reply {
            Reply::Conns { total, .. } => *total,
            _ => 0,
        };
        match out.frame(&title(socket, interval, total), &shown) {
            Ok(()) => {}
            Err(e) if gone(&e) => return Ok(EXIT_OK),
            Err(e) => return Err(Fail::Failed(format!("writing the table: {e}"))),
        }
        next += interval;
        let now = Instant::now();
        if next < now {
            // Late (a slow reply or a stopped process): start again from now, no burst.
            next = now + interval;
        }
        if signals.wait(next.saturating_duration_since(now)) {
            return Ok(EXIT_OK);
        }
    }
}

/// Whether a write error means the reader has gone (a closed pipe or terminal).
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe || e.raw_os_error() == Some(libc::EIO)
}

fn title(socket: &Path, interval: Duration, total: u64) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        % 86_400;
    format!(
        "nannyctl watch {}  every {}s  {:02}:{:02}:{:02} UTC  {total} connection{}",
        super::table::clean(&socket.display().to_string()),
        interval.as_secs_f64(),
        t / 3600,
        t % 3600 / 60,
        t % 60,
        if total == 1 { "" } else { "s" }
    )
}

/// Where frames go.
struct Screen {
    json: bool,
    tty: bool,
    entered: bool,
}

impl Screen {
    fn new(json: bool) -> Screen {
        Screen {
            json,
            tty: !json && io::stdout().is_terminal(),
            entered: false,
        }
    }

    /// The terminal's height, when frames go to one.
    fn height(&self) -> Option<u16> {
        if !self.tty {
            return None;
        }
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into the struct we own; stdout's fd is open
        // for the life of the process.
        let r = unsafe { libc::ioctl(io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        (r == 0 && ws.ws_row > 0).then_some(ws.ws_row)
    }

    fn frame(&mut self, title: &str, s: &Shown) -> io::Result<()> {
        let mut o = String::new();
        if self.json {
            o.push_str(&s.out);
        } else if self.tty {
            if !self.entered {
                o.push_str(HIDE_CURSOR);
                self.entered = true;
            }
            o.push_str(HOME);
            for line in std::iter::once(title).chain(s.out.lines()) {
                o.push_str(line);
                o.push_str(CLEAR_LINE);
                o.push('\n');
            }
            o.push_str(CLEAR_BELOW);
        } else {
            o.push_str(title);
            o.push('\n');
            o.push_str(&s.out);
            o.push('\n');
        }
        let mut out = io::stdout().lock();
        out.write_all(o.as_bytes())?;
        out.flush()
    }

    /// Gives the terminal its cursor back (errors ignored: it may be gone).
    fn leave(&mut self) {
        if self.entered {
            self.entered = false;
            let mut out = io::stdout().lock();
            let _ = out.write_all(SHOW_CURSOR.as_bytes());
            let _ = out.flush();
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP as bytes on a pipe.
struct Signals {
    read: UnixStream,
}

impl Signals {
    fn install() -> io::Result<Signals> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            signal_hook::low_level::pipe::register(sig, write.try_clone()?)?;
        }
        Ok(Signals { read })
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Waits `d`; true if a signal came.
    fn wait(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        // Bounded: each round waits until the deadline (or a signal).
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let ms = u16::try_from(left.as_millis().saturating_add(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.read.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(n) if n > 0 => {
                    let mut b = [0u8; 16];
                    let _ = (&self.read).read(&mut b);
                    return true;
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return true,
            }
        }
    }
}
