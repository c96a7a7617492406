//! Connection load generator and reference ("floor") servers for bench/run.sh.
//!
//! Runs on the benchmark host as an ordinary process started by bench/run.sh (or by hand); it
//! talks only to loopback: the clients connect to a 127.0.0.1 port, the floor servers listen on
//! 127.0.0.1 only. Every mode is bounded in time (a duration or a lifetime) and in count.
//!
//! Modes (see `usage`):
//! - `fetch`, `hold`: the clients (client.rs).
//! - `floor-inproc`, `floor-roundtrip`, `floor-spawn`: reference servers that do the least any
//!   server of their kind can do, so the table can say how close portnanny gets (floor.rs).
//! - `floor-helper`, `hold-service`: hidden; the helper process of `floor-roundtrip` and a
//!   light service that holds a connection (service.rs).
//!
//! This file only parses arguments and dispatches; it handles no peer bytes.

mod client;
mod floor;
mod service;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

/// Parsed command line. Not every field applies to every mode; each mode reads its own.
pub struct Opts {
    pub mode: String,
    pub addr: SocketAddrV4,
    pub concurrency: usize,
    pub count: u64,
    pub duration: Duration,
    pub expect: Vec<u8>,
    pub src_net: u8,
    /// Floor servers: the 127.0.0.1 port to listen on.
    pub port: u16,
    /// `floor-inproc`, `floor-roundtrip`: the bytes each connection gets.
    pub reply: Vec<u8>,
    /// Floor servers and `hold-service`: exit after this long even if nobody kills them.
    pub lifetime: Duration,
    /// `floor-roundtrip`: how the helper waits for a request (`read` or `poll`).
    pub helper_wait: String,
    /// `floor-spawn`: the service argv (after `--`).
    pub argv: Vec<String>,
}

const MODES: &[&str] = &[
    "fetch",
    "hold",
    "floor-inproc",
    "floor-roundtrip",
    "floor-spawn",
    "floor-helper",
    "hold-service",
];

fn usage() -> String {
    "usage:\n  \
     portnanny-loadgen fetch --addr IP:PORT [--concurrency N] [--count N] [--duration SECS] \
     [--expect TEXT] [--src-net N]\n  \
     portnanny-loadgen hold --addr IP:PORT [--count N] [--duration SECS] [--src-net N]\n  \
     portnanny-loadgen floor-inproc --port P --reply TEXT [--lifetime SECS]\n  \
     portnanny-loadgen floor-roundtrip --port P --reply TEXT [--helper-wait read|poll] \
     [--lifetime SECS]\n  \
     portnanny-loadgen floor-spawn --port P [--lifetime SECS] -- ARGV...\n\
     --expect and --reply take \\n and \\r escapes; --src-net picks 127.N.x.y client sources"
        .to_string()
}

fn unescape(v: &str) -> Vec<u8> {
    v.replace("\\n", "\n").replace("\\r", "\r").into_bytes()
}

fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or_else(usage)?;
    if !MODES.contains(&mode.as_str()) {
        return Err(usage());
    }
    let mut o = Opts {
        mode,
        addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
        concurrency: 1,
        count: u64::MAX,
        duration: Duration::from_secs(5),
        expect: Vec::new(),
        src_net: 100,
        port: 0,
        reply: Vec::new(),
        lifetime: Duration::from_secs(3600),
        helper_wait: "read".to_string(),
        argv: Vec::new(),
    };
    while let Some(a) = args.next() {
        if a == "--" {
            o.argv = args.by_ref().collect();
            break;
        }
        let v = args
            .next()
            .ok_or_else(|| format!("{a} needs a value\n{}", usage()))?;
        let bad = |e: &dyn std::fmt::Display| format!("{a} {v}: {e}");
        let secs = |v: &str| -> Result<Duration, String> {
            let f: f64 = v.parse().map_err(|e| bad(&e))?;
            Duration::try_from_secs_f64(f).map_err(|e| bad(&e))
        };
        match a.as_str() {
            "--addr" => o.addr = v.parse().map_err(|e| bad(&e))?,
            "--concurrency" => o.concurrency = v.parse().map_err(|e| bad(&e))?,
            "--count" => o.count = v.parse().map_err(|e| bad(&e))?,
            "--duration" => o.duration = secs(&v)?,
            "--expect" => o.expect = unescape(&v),
            "--src-net" => o.src_net = v.parse().map_err(|e| bad(&e))?,
            "--port" => o.port = v.parse().map_err(|e| bad(&e))?,
            "--reply" => o.reply = unescape(&v),
            "--lifetime" => o.lifetime = secs(&v)?,
            "--helper-wait" if v == "read" || v == "poll" => o.helper_wait = v,
            _ => return Err(format!("bad option {a} {v}\n{}", usage())),
        }
    }
    let ok = match o.mode.as_str() {
        "fetch" | "hold" => o.addr.port() != 0 && o.concurrency != 0,
        "floor-inproc" | "floor-roundtrip" => o.port != 0,
        "floor-spawn" => o.port != 0 && !o.argv.is_empty(),
        _ => true,
    };
    if !ok {
        return Err(usage());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(100);
        }
    };
    match o.mode.as_str() {
        "fetch" => client::fetch(&o),
        "hold" => client::hold(&o),
        "floor-inproc" => floor::inproc(&o),
        "floor-roundtrip" => floor::roundtrip(&o),
        "floor-spawn" => floor::spawn(&o),
        "floor-helper" => service::floor_helper(&o),
        _ => service::hold_service(&o),
    }
}
