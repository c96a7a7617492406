//! Connection load generator for bench/run.sh.
//!
//! Runs on the benchmark host as an ordinary user process; it only talks to the loopback
//! server it is pointed at and reads the bytes that server sends. Bounded by a connection
//! count and a wall-clock duration, whichever comes first.
//!
//! Modes:
//! - `fetch`: CONCURRENCY threads each loop connect → read to EOF → close, from rotating
//!   127.X.Y.Z source addresses (bound before connect, so TIME_WAIT and ephemeral ports spread
//!   over many 4-tuples). Each reply is compared with `--expect`; latency is connect start to
//!   EOF. Prints one `key=value` line: conns, ok, errors, secs, rate, p50_ms, p99_ms.
//! - `hold`: opens COUNT connections, reads the first line of each (the service is up), keeps
//!   them all open until stdin reaches EOF or the duration ends, then closes them. Prints
//!   `held=N failed=M` as soon as all are open (so a script can measure while they are held).

use std::io::{self, BufRead, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// Per-connection deadline: a stuck server shows up as errors, not as a hung benchmark.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest reply we keep for comparison; anything longer is an error anyway.
const MAX_REPLY: usize = 4096;

struct Opts {
    mode: String,
    addr: SocketAddrV4,
    concurrency: usize,
    count: u64,
    duration: Duration,
    expect: Vec<u8>,
    src_net: u8,
}

fn usage() -> String {
    "usage: loadgen fetch|hold --addr IP:PORT [--concurrency N] [--count N] [--duration SECS] \
     [--expect TEXT] [--src-net N]\n  --expect uses \\n escapes; --src-net picks 127.N.x.y sources"
        .to_string()
}

fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or_else(usage)?;
    if mode != "fetch" && mode != "hold" {
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
    };
    while let Some(a) = args.next() {
        let v = args
            .next()
            .ok_or_else(|| format!("{a} needs a value\n{}", usage()))?;
        let bad = |e: &dyn std::fmt::Display| format!("{a} {v}: {e}");
        match a.as_str() {
            "--addr" => o.addr = v.parse().map_err(|e| bad(&e))?,
            "--concurrency" => o.concurrency = v.parse().map_err(|e| bad(&e))?,
            "--count" => o.count = v.parse().map_err(|e| bad(&e))?,
            "--duration" => o.duration = Duration::from_secs_f64(v.parse().map_err(|e| bad(&e))?),
            "--expect" => o.expect = v.replace("\\n", "\n").replace("\\r", "\r").into_bytes(),
            "--src-net" => o.src_net = v.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option {a}\n{}", usage())),
        }
    }
    if o.addr.port() == 0 || o.concurrency == 0 {
        return Err(usage());
    }
    Ok(o)
}

/// The i-th source address of a thread: 127.NET.THREAD.(1..=250).
fn src(net: u8, thread: usize, i: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, net, (thread % 256) as u8, (i % 250 + 1) as u8)
}

fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
    s.connect_timeout(&SocketAddr::V4(dst).into(), IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(s.into())
}

/// One connection: returns the reply (read to EOF) or an error.
fn one(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<Vec<u8>> {
    let mut s = connect_from(src, dst)?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(reply),
            Ok(n) => {
                if reply.len() + n > MAX_REPLY {
                    return Err(io::Error::other("reply too long"));
                }
                reply.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A server that resets after writing everything (drop, or close with unread
            // data) still delivered its reply.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(reply),
            Err(e) => return Err(e),
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

fn fetch(o: &Opts) -> ExitCode {
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let start = Instant::now();
    let deadline = start + o.duration;
    let handles: Vec<_> = (0..o.concurrency)
        .map(|t| {
            let (issued, errors, first_error) = (
                Arc::clone(&issued),
                Arc::clone(&errors),
                Arc::clone(&first_error),
            );
            let (dst, count, net, expect) = (o.addr, o.count, o.src_net, o.expect.clone());
            thread::spawn(move || {
                let mut lat_us = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::SeqCst) < count {
                    i += 1;
                    let t0 = Instant::now();
                    let r = one(src(net, t, i), dst);
                    let us = t0.elapsed().as_micros() as u64;
                    match r {
                        Ok(reply) if reply == expect => lat_us.push(us),
                        other => {
                            errors.fetch_add(1, Ordering::SeqCst);
                            let mut fe = first_error.lock().unwrap_or_else(|e| e.into_inner());
                            if fe.is_none() {
                                *fe = Some(match other {
                                    Ok(reply) => format!(
                                        "unexpected reply {:?}",
                                        String::from_utf8_lossy(&reply)
                                    ),
                                    Err(e) => e.to_string(),
                                });
                            }
                        }
                    }
                }
                lat_us
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        match h.join() {
            Ok(v) => all.extend(v),
            Err(_) => return ExitCode::FAILURE,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let errs = errors.load(Ordering::SeqCst);
    let ok = all.len() as u64;
    println!(
        "conns={} ok={} errors={} secs={:.2} rate={:.0} p50_ms={:.2} p99_ms={:.2}",
        ok + errs,
        ok,
        errs,
        secs,
        ok as f64 / secs,
        percentile(&all, 0.50),
        percentile(&all, 0.99)
    );
    if let Some(e) = first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        eprintln!("loadgen: first error: {e}");
    }
    ExitCode::SUCCESS
}

fn hold(o: &Opts) -> ExitCode {
    let want = if o.count == u64::MAX { 1000 } else { o.count };
    let mut held = Vec::new();
    let mut failed = 0u64;
    for i in 0..want {
        let source = src(o.src_net, (i / 250) as usize, i);
        match connect_from(source, o.addr) {
            Ok(s) => {
                // The first line proves a service owns the connection.
                let mut r = io::BufReader::new(s);
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(n) if n > 0 => held.push(r.into_inner()),
                    _ => failed += 1,
                }
            }
            Err(_) => failed += 1,
        }
    }
    println!("held={} failed={}", held.len(), failed);
    // Hold until stdin closes or the duration ends (a thread reads stdin to EOF).
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(o.duration);
    drop(held);
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(100);
        }
    };
    if o.mode == "fetch" {
        fetch(&o)
    } else {
        hold(&o)
    }
}
