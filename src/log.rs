//! Logging for the whole program: stderr by default, syslog (facility daemon) with -l.
//!
//! Only the parent writes log lines; workers send `Log` records over their channel and the
//! parent passes them through [`worker_line`], which caps the length, escapes control
//! characters and prefixes the role. Anything that came from the network (hostnames, identd
//! answers) or from a worker goes through [`escape`] before it reaches a log line, so a peer
//! cannot forge log lines or smuggle terminal escapes to an operator's screen.
//!
//! The parent is single-threaded; the mutex only keeps the global sound. Workers use
//! [`stderr_line`] for the few messages they print before their channel exists.
//!
//! On stderr each line starts with a UTC timestamp (`2026-12-04T16:10:05.123Z portnanny[pid]:
//! ...`), unless stderr is the systemd journal, which stamps lines itself (JOURNAL_STREAM names
//! the journal's stream by device and inode; it is compared with stderr's own).
//!
//! Verbosity (-v / -V NUM): 0 shows warnings, errors and the log/faillog/record lines of the
//! actions file; 1 adds one line per connection decision (verdict, spawn, end, reject); 2 adds
//! accepts and reload checks; 3 and up add internal detail.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use syslog::{Facility, LogFormat, LoggerBackend, Severity};

/// Severity of a line; mapped to syslog priorities with -l. The same type workers put in their
/// `Log` records (one definition, in the message contract).
pub use privsep::proto::LogLevel as Level;

type Syslog = syslog::Logger<LoggerBackend, LocalFormat>;

/// The local-socket syslog format `<PRI>ident[pid]: message`, without a timestamp or hostname:
/// the daemon on /dev/log stamps messages on arrival. (The crate's RFC 3164 formatter writes a
/// UTC time as if it were local time.)
#[derive(Clone, Debug)]
struct LocalFormat {
    facility: Facility,
    ident: String,
    pid: u32,
}

impl<T: std::fmt::Display> LogFormat<T> for LocalFormat {
    fn format<W: std::io::Write>(
        &self,
        w: &mut W,
        severity: Severity,
        message: T,
    ) -> syslog::Result<()> {
        let pri = self.facility as u8 | severity as u8;
        write!(w, "<{pri}>{}[{}]: {message}", self.ident, self.pid).map_err(syslog::Error::Write)
    }
}

enum Target {
    Stderr,
    Syslog(Box<Syslog>),
}

struct State {
    progname: String,
    pid: u32,
    target: Target,
    /// Whether stderr lines start with a timestamp (see the header).
    stamp: bool,
}

static VERBOSITY: AtomicU8 = AtomicU8::new(0);
static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Sets where lines go. With `syslog` true this connects to /dev/log now (while the parent can
/// still see it); an error is returned so the caller can exit instead of losing every line.
pub fn init(progname: &str, verbosity: u8, syslog: bool) -> Result<(), String> {
    VERBOSITY.store(verbosity, Ordering::Relaxed);
    let pid = std::process::id();
    let target = if syslog {
        Target::Syslog(Box::new(connect(progname, pid)?))
    } else {
        Target::Stderr
    };
    let mut st = STATE.lock().unwrap_or_else(|p| p.into_inner());
    *st = Some(State {
        progname: progname.to_owned(),
        pid,
        target,
        stamp: !stderr_is_journal(),
    });
    Ok(())
}

/// The local syslog socket `-l` logs to.
const SYSLOG_SOCKET: &str = "/dev/log";

fn connect(progname: &str, pid: u32) -> Result<Syslog, String> {
    let f = LocalFormat {
        facility: Facility::LOG_DAEMON,
        ident: progname.to_owned(),
        pid,
    };
    syslog::unix(f).map_err(|e| {
        // The crate's own message ("Initialization error: Io error: ...") names neither the
        // socket nor what to do; say which socket could not be reached, and why.
        let why = probe_socket(SYSLOG_SOCKET).unwrap_or_else(|| e.to_string());
        format!(
            "cannot log to syslog (-l): {SYSLOG_SOCKET} could not be reached: {why}; is a \
             syslog daemon running?"
        )
    })
}

/// Why the syslog socket at `path` cannot be connected to (datagram, then stream, as the
/// syslog crate tries), or None if it can now.
fn probe_socket(path: &str) -> Option<String> {
    use std::os::unix::net::{UnixDatagram, UnixStream};
    let dgram = UnixDatagram::unbound().and_then(|s| s.connect(path));
    match dgram {
        Ok(()) => None,
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => {
            UnixStream::connect(path).err().map(|e| e.to_string())
        }
        Err(e) => Some(e.to_string()),
    }
}

/// Whether stderr is the systemd journal: JOURNAL_STREAM is `DEVICE:INODE` (decimal) of the
/// journal's stream, and a process whose stderr was redirected elsewhere still inherits it, so
/// it is compared with stderr's own device and inode.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_fd()) {
        #[allow(clippy::unnecessary_cast)] // the field types differ between targets
        Ok(st) => st.st_dev as u64 == dev && st.st_ino as u64 == ino,
        Err(_) => false,
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time in milliseconds since the Unix epoch (UTC: no time
/// zone database is needed, and lines from different machines compare).
fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// The current time for a stderr line.
fn now_stamp() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    timestamp(ms)
}

/// The verbosity set with -v / -V.
pub fn verbosity() -> u8 {
    VERBOSITY.load(Ordering::Relaxed)
}

/// Whether a line needing verbosity `v` is shown; call it before formatting expensive lines.
pub fn enabled(v: u8) -> bool {
    verbosity() >= v
}

/// Writes one line at `level`. The text must already be escaped where it holds foreign bytes.
pub fn write(level: Level, text: &str) {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let Some(st) = guard.as_mut() else {
        stderr_line("portnanny", text);
        return;
    };
    let stamp = st.stamp;
    match &mut st.target {
        Target::Stderr => stderr_pid_line(&st.progname, st.pid, stamp, text),
        Target::Syslog(logger) => {
            if send(logger, level, text).is_err() {
                // The daemon may have restarted; reconnect once, then fall back to stderr
                // rather than lose the line.
                match connect(&st.progname, st.pid) {
                    Ok(new) => {
                        **logger = new;
                        if send(logger, level, text).is_err() {
                            stderr_pid_line(&st.progname, st.pid, stamp, text);
                        }
                    }
                    Err(_) => stderr_pid_line(&st.progname, st.pid, stamp, text),
                }
            }
        }
    }
}

fn send(logger: &mut Syslog, level: Level, text: &str) -> Result<(), syslog::Error> {
    match level {
        Level::Crit => logger.crit(text),
        Level::Err => logger.err(text),
        Level::Warning => logger.warning(text),
        Level::Notice => logger.notice(text),
        Level::Info => logger.info(text),
        Level::Debug => logger.debug(text),
    }
}

fn stderr_pid_line(progname: &str, pid: u32, stamp: bool, text: &str) {
    let line = if stamp {
        format!("{} {progname}[{pid}]: {text}\n", now_stamp())
    } else {
        format!("{progname}[{pid}]: {text}\n")
    };
    // One write per line so lines from several processes sharing stderr do not interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `progname: text` on stderr, for workers and for messages before [`init`].
pub fn stderr_line(progname: &str, text: &str) {
    let line = format!("{progname}: {text}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub fn crit(text: &str) {
    write(Level::Crit, text);
}
pub fn err(text: &str) {
    write(Level::Err, text);
}
pub fn warn(text: &str) {
    write(Level::Warning, text);
}
pub fn notice(text: &str) {
    write(Level::Notice, text);
}
pub fn info(text: &str) {
    write(Level::Info, text);
}
/// A debug line shown at verbosity `v` and above.
pub fn debug(v: u8, text: &str) {
    if enabled(v) {
        write(Level::Debug, text);
    }
}

/// Formats and logs a debug line only when verbosity `$v` is on.
#[macro_export]
macro_rules! debug {
    ($v:expr, $($arg:tt)*) => {
        if $crate::log::enabled($v) {
            $crate::log::write($crate::log::Level::Debug, &format!($($arg)*));
        }
    };
}

/// Makes foreign text safe for one log line: backslash, control characters (including
/// newline and DEL) and everything outside printable ASCII become escapes (`\\`, `\x0a`,
/// `\u{202e}`), so the result is one line of printable ASCII.
pub fn escape(s: &str) -> Cow<'_, str> {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn cap(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

/// The line the parent logs for a worker's `Log` record: the role, then the record's text capped
/// at `MAX_LOG_LINE` bytes and escaped.
pub fn worker_line(role: &str, text: &str) -> String {
    let capped = cap(text, privsep::proto::MAX_LOG_LINE);
    let more = if capped.len() < text.len() {
        " [truncated]"
    } else {
        ""
    };
    format!("{role}: {}{more}", escape(capped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_rows() {
        let rows: &[(&str, &str)] = &[
            ("plain text 1.2.3.4", "plain text 1.2.3.4"),
            ("a\nb", "a\\x0ab"),
            ("a\r\n", "a\\x0d\\x0a"),
            ("\u{1b}[2J", "\\x1b[2J"),
            ("nul\0", "nul\\x00"),
            ("del\u{7f}", "del\\x7f"),
            ("back\\slash", "back\\\\slash"),
            ("\u{202e}rev", "\\u{202e}rev"),
            ("caf\u{e9}", "caf\\xe9"),
            ("tab\there", "tab\\x09here"),
        ];
        for (input, want) in rows {
            assert_eq!(escape(input), *want, "{input:?}");
        }
        assert!(matches!(escape("ok"), Cow::Borrowed(_)));
    }

    #[test]
    fn escaped_text_is_one_printable_line() {
        let all: String = (0u32..0x300).filter_map(char::from_u32).collect();
        let e = escape(&all);
        assert!(e.bytes().all(|b| (0x20..0x7f).contains(&b)));
    }

    #[test]
    fn syslog_lines_carry_facility_daemon_and_the_ident() {
        let f = LocalFormat {
            facility: Facility::LOG_DAEMON,
            ident: "pn2".into(),
            pid: 42,
        };
        let mut out = Vec::new();
        f.format(&mut out, Severity::LOG_INFO, "hello").unwrap();
        assert_eq!(out, b"<30>pn2[42]: hello");
        let mut out = Vec::new();
        f.format(&mut out, Severity::LOG_CRIT, "x").unwrap();
        assert_eq!(out, b"<26>pn2[42]: x");
    }

    #[test]
    fn timestamps_are_utc_rfc3339_with_milliseconds() {
        let rows: &[(u64, &str)] = &[
            (0, "1970-01-01T00:00:00.000Z"),
            (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (951_868_799_999, "2000-02-29T23:59:59.999Z"),
            (4_102_444_800_000, "2100-01-01T00:00:00.000Z"),
            (1_796_400_000_000, "2026-12-04T16:00:00.000Z"),
        ];
        for (ms, want) in rows {
            assert_eq!(timestamp(*ms), *want, "{ms}");
        }
    }

    #[test]
    fn a_missing_syslog_socket_is_named_with_its_error() {
        let why = probe_socket("/nonexistent/portnanny-test/log").expect("cannot connect");
        assert!(why.contains("No such file"), "{why}");
    }

    #[test]
    fn cap_on_char_boundary() {
        assert_eq!(cap("abc", 5), "abc");
        assert_eq!(cap("abcdef", 3), "abc");
        assert_eq!(cap("a\u{e9}b", 2), "a");
        assert_eq!(cap("", 0), "");
    }

    #[test]
    fn worker_lines_are_capped_prefixed_and_escaped() {
        assert_eq!(
            worker_line("classifier", "bad\nline"),
            "classifier: bad\\x0aline"
        );
        let long = "x".repeat(privsep::proto::MAX_LOG_LINE + 10);
        let line = worker_line("resolver", &long);
        assert!(line.starts_with("resolver: xxx"));
        assert!(line.ends_with(" [truncated]"));
        assert_eq!(
            line.len(),
            "resolver: ".len() + privsep::proto::MAX_LOG_LINE + " [truncated]".len()
        );
    }
}
