//! `nannyctl`: the operator's client of portnanny's control socket (`control PATH` in
//! nanny.conf): list, watch and end live connections, change their timeouts, block and
//! unblock addresses, reload, status, flush, explain and metrics.
//!
//! Runs as whoever invokes it (root to change things, a member of `controlgroup` to read).
//! It sends one JSON request per line and reads one JSON reply per line
//! (`privsep::control`); it never holds any privilege the daemon does not check again. The
//! daemon's replies are outside input here: decoded into typed values, bounded, and escaped
//! before they reach a terminal.
//!
//! [`args`] parses the command line, [`client`] talks to the socket, [`show`] and [`table`]
//! print replies, [`watch`] redraws `list`, [`codes`] holds the exit codes (0 ok, 1 failed,
//! 2 bad request or usage, 3 not authorised, 4 no such id, 5 daemon not running).

pub mod args;
pub mod client;
pub mod codes;
pub mod show;
pub mod table;
pub mod watch;

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use args::{Cmd, Invocation};
use client::{Client, Got};
use codes::{Fail, EXIT_OK};

/// `nannyctl`'s main.
pub fn main() -> ExitCode {
    let mut words = Vec::new();
    for a in std::env::args_os().skip(1) {
        match a.into_string() {
            Ok(s) => words.push(s),
            Err(a) => return report(&Fail::Usage(format!("argument is not UTF-8: {a:?}"))),
        }
    }
    let env = std::env::var(args::SOCKET_ENV).ok();
    if let Some((socket, rest)) = conntrack_words(&words, env.as_deref()) {
        let (out, err, code) = crate::nannyctl_conntrack::main(&socket, rest);
        print!("{out}");
        eprint!("{err}");
        return ExitCode::from(code);
    }
    let inv = match args::parse(&words, env.as_deref()) {
        Ok(i) => i,
        Err(f) => return report(&f),
    };
    match run(&inv) {
        Ok(code) => ExitCode::from(code),
        Err(f) => report(&f),
    }
}

/// `[-s PATH | --socket PATH | --socket=PATH] conntrack WORDS…`: the socket and the words after
/// `conntrack`, for the host's conntrack table (nannyctl_conntrack.rs); None for the other
/// commands.
fn conntrack_words<'a>(
    words: &'a [String],
    env: Option<&str>,
) -> Option<(std::path::PathBuf, &'a [String])> {
    let mut socket = env.unwrap_or(args::DEFAULT_SOCKET).to_owned();
    let mut i = 0;
    while let Some(w) = words.get(i) {
        match w.as_str() {
            "-s" | "--socket" => {
                socket = words.get(i + 1)?.clone();
                i += 2;
            }
            "conntrack" => return Some((socket.into(), words.get(i + 1..).unwrap_or_default())),
            w if w.starts_with("--socket=") => {
                socket = w.trim_start_matches("--socket=").to_owned();
                i += 1;
            }
            _ => return None,
        }
    }
    None
}

/// Prints why it failed (and the synopsis after a usage error); the exit code.
fn report(f: &Fail) -> ExitCode {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "nannyctl: {f}");
    if matches!(f, Fail::Usage(_)) {
        let _ = writeln!(err, "{}", args::synopsis());
    }
    ExitCode::from(f.code())
}

/// Does what `inv` asks; Ok is the exit code after what was printed.
pub fn run(inv: &Invocation) -> Result<u8, Fail> {
    let req = match &inv.cmd {
        Cmd::Help => {
            print(&format!("{}\n", args::help()));
            return Ok(EXIT_OK);
        }
        Cmd::Version => {
            print(&format!("nannyctl {}\n", env!("CARGO_PKG_VERSION")));
            return Ok(EXIT_OK);
        }
        Cmd::Watch { interval, query } => {
            return watch::run(&inv.socket, query, *interval, inv.json)
        }
        Cmd::Once(req) => req,
    };
    let mut c = Client::connect(&inv.socket)?;
    let reply = match c.ask(req, None)? {
        Got::Reply(r) => r,
        Got::Interrupted => return Err(Fail::Failed("interrupted".into())),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = show::show(req, &reply, inv.json, now);
    print(&s.out);
    if !s.err.is_empty() {
        let _ = writeln!(io::stderr().lock(), "nannyctl: {}", s.err);
    }
    Ok(s.code)
}

/// Writes to stdout; a reader that went away (`nannyctl list | head`) is not an error.
fn print(text: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
