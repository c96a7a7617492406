//! The benchmark clients: `fetch` (connections per second and latency) and `hold` (many
//! connections kept open).
//!
//! Runs in the portnanny-loadgen process on the benchmark host; it reads the bytes a loopback
//! server under test sends and compares them with what the benchmark expects. Bounded by a
//! connection count and a wall-clock duration, whichever comes first; every socket operation
//! is bounded by `IO_TIMEOUT`, so a stuck server shows up as errors, not as a hung benchmark.
//!
//! The client is kept as cheap as possible so that it does not hide differences between
//! servers: per connection it makes socket, 3 setsockopt, bind, a blocking connect (bounded by
//! SO_SNDTIMEO, which Linux applies to connect), 2 recv (the reply, EOF) and close: 9 system
//! calls. socket2's `connect_timeout` costs 4 fcntl and a poll more.
//!
//! - `fetch`: CONCURRENCY threads each loop connect → read to EOF → close, from rotating
//!   127.X.Y.Z source addresses (bound before connect, so TIME_WAIT and ephemeral ports spread
//!   over many 4-tuples). Each reply is compared with `--expect`; latency is connect start to
//!   EOF. Prints one `key=value` line: conns, ok, errors, secs, rate, p50_ms, p99_ms.
//! - `hold`: opens COUNT connections, reads the first line of each (the service is up), keeps
//!   them all open until stdin reaches EOF or the duration ends, then closes them. Prints
//!   `held=N failed=M` as soon as all are open (so a script can measure while they are held).

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::Opts;

/// Per-connection deadline for connect and for each read.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest reply we keep for comparison; anything longer is an error anyway.
const MAX_REPLY: usize = 4096;

/// The i-th source address of a thread: 127.NET.THREAD.(1..=250).
fn src(net: u8, thread: usize, i: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, net, (thread % 256) as u8, (i % 250 + 1) as u8)
}

/// A blocking socket connected from `src` to `dst`, with send and receive timeouts.
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<Socket> {
    // socket2 passes SOCK_CLOEXEC to socket() itself: one system call.
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    // The source port may be one of ours still in TIME_WAIT toward another server.
    s.set_reuse_address(true)?;
    // Linux bounds a blocking connect by SO_SNDTIMEO (it then fails with EINPROGRESS).
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
    match s.connect(&SocketAddr::V4(dst).into()) {
        Ok(()) => Ok(s),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
        }
        Err(e) => Err(e),
    }
}

/// One connection: returns the reply (read to EOF) or an error.
fn one(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<Vec<u8>> {
    let mut s = connect_from(src, dst)?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    // Each pass either reads bytes (at most MAX_REPLY in all), ends, or is an EINTR; the
    // bound only guards against a kernel that keeps interrupting.
    for _ in 0..MAX_REPLY + 16 {
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
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"))
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("too many interrupted reads"))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

pub fn fetch(o: &Opts) -> ExitCode {
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
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < count {
                    i += 1;
                    let t0 = Instant::now();
                    let r = one(src(net, t, i), dst);
                    let us = t0.elapsed().as_micros() as u64;
                    match r {
                        Ok(reply) if reply == expect => lat_us.push(us),
                        other => {
                            errors.fetch_add(1, Ordering::Relaxed);
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

/// Reads up to and including the first newline (at most 256 bytes); true if a whole line came.
fn first_line(s: &mut Socket) -> bool {
    let mut got = 0usize;
    let mut buf = [0u8; 256];
    for _ in 0..64 {
        match s.read(&mut buf[got..]) {
            Ok(0) => return false,
            Ok(n) => {
                if buf[got..got + n].contains(&b'\n') {
                    return true;
                }
                got += n;
                if got == buf.len() {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    false
}

pub fn hold(o: &Opts) -> ExitCode {
    let want = if o.count == u64::MAX { 1000 } else { o.count };
    let start = Instant::now();
    let mut held = Vec::new();
    let mut failed = 0u64;
    let mut first_error = None::<String>;
    for i in 0..want {
        let source = src(o.src_net, (i / 250) as usize, i);
        match connect_from(source, o.addr) {
            // The first line proves a service owns the connection.
            Ok(mut s) => {
                if first_line(&mut s) {
                    held.push(s);
                } else {
                    failed += 1;
                    first_error.get_or_insert_with(|| format!("connection {i}: no first line"));
                }
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("connection {i}: {e}"));
            }
        }
    }
    println!(
        "held={} failed={} secs={:.1}",
        held.len(),
        failed,
        start.elapsed().as_secs_f64()
    );
    if let Some(e) = first_error {
        eprintln!("loadgen: first error: {e}");
    }
    // Hold until stdin closes or the duration ends (a thread reads stdin to EOF).
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let _ = io::copy(&mut io::stdin(), &mut io::sink());
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(o.duration);
    drop(held);
    ExitCode::SUCCESS
}
