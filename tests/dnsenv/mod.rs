//! DNS sandbox for the lookups tests: runs a test body in a private mount namespace whose
//! /etc/resolv.conf, /etc/hosts and /etc/nsswitch.conf are the test's own files, with a dnsmasq
//! (or a test DNS responder) on a loopback address as the only nameserver.
//!
//! Runs in the test process. How: the test calls [`isolate`]; in the normal (outer) run this
//! re-executes the same test binary for just that test under `unshare --mount --propagation
//! private`, marks the child with an environment variable, waits (bounded) and asserts that it
//! passed, then returns `None` so the outer test returns. In the child, `isolate` bind-mounts
//! the files over /etc (visible only in the new namespace), starts dnsmasq with the test's
//! records and returns the environment, and the body runs there. Every byte parsed here comes
//! from processes this module started.
//!
//! Invariants:
//! - nothing that can cause a DNS query runs outside the private namespace: the child refuses to
//!   go on if its mount namespace is the host's, or if the bind mount did not take;
//! - the nameserver addresses are 127.55.x.y (the shared harness uses 127.53.x.y), peers used
//!   by the tests are 127.54.x.y and fd00:54::/64 (never configured: only names, no traffic);
//! - every wait is bounded; dnsmasq and responders are stopped when the environment is dropped,
//!   by the pid this module got from spawning them.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};

// The process and port helpers are the end-to-end harness's; one copy of each.
#[path = "../util/mod.rs"]
mod util;
pub use util::{free_port, is_root, stop_child};

/// Set in the re-executed child to the name of the test it runs.
pub const INNER_ENV: &str = "PORTNANNY_DNSENV_TEST";
/// Set in the re-executed child to the outer test's mount namespace, which it must not share.
const OUTER_NS_ENV: &str = "PORTNANNY_DNSENV_OUTER_NS";

/// How long one isolated test may run before the outer test kills it and fails.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// The nameserver address for sandbox number `n` (each test uses its own).
pub fn ns_addr(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 55, n, 1)
}

/// Records for dnsmasq, as dnsmasq options.
#[derive(Default, Clone)]
pub struct Records {
    args: Vec<String>,
    hosts: Vec<(IpAddr, String)>,
}

impl Records {
    pub fn new() -> Records {
        Records::default()
    }
    /// A name with an A or AAAA record AND the matching PTR (forward-confirmed host).
    pub fn host(mut self, name: &str, ip: &str) -> Records {
        self.args.push(format!("--host-record={name},{ip}"));
        self
    }
    /// A PTR record only: `ip` claims `name`.
    pub fn ptr(mut self, ip: &str, name: &str) -> Records {
        let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
        self.args
            .push(format!("--ptr-record={},{name}", reverse_name(ip)));
        self
    }
    /// An A record for `name` (no PTR), e.g. a DNSBL answer or a forward-only name. May be
    /// repeated for several addresses.
    pub fn a(mut self, name: &str, ip: &str) -> Records {
        self.args.push(format!("--address=/{name}/{ip}"));
        self
    }
    /// A line in the namespace's /etc/hosts.
    pub fn etc_hosts(mut self, ip: &str, name: &str) -> Records {
        let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
        self.hosts.push((ip, name.to_owned()));
        self
    }
}

/// in-addr.arpa / ip6.arpa name of `ip` (no trailing dot).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// Which nameserver the namespace uses.
pub enum Nameserver {
    /// dnsmasq authoritative for `test`, `in-addr.arpa` and `ip6.arpa` with these records.
    Dnsmasq(Records),
    /// The caller starts its own responder on the address (e.g. [`SlowDns`]); only the files
    /// are set up. The hosts file still gets the records' `etc_hosts` lines.
    External(Records),
}

/// The isolated environment, alive in the child process only.
pub struct DnsEnv {
    pub dir: PathBuf,
    pub ns: Ipv4Addr,
    dnsmasq: Option<Child>,
    pub dnsmasq_log: PathBuf,
}

impl DnsEnv {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// dnsmasq's query log so far (for failure messages).
    pub fn dnsmasq_log(&self) -> String {
        fs::read_to_string(&self.dnsmasq_log).unwrap_or_default()
    }
}

impl Drop for DnsEnv {
    fn drop(&mut self) {
        if let Some(child) = self.dnsmasq.as_mut() {
            stop_child(child);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Run the test `name` (the `#[test]` function's name; top-level in its test file) isolated.
/// Outer run: re-executes it in a private mount namespace, asserts it passed, returns `None`.
/// Inner run: sets up the namespace and nameserver `ns` and returns the environment.
/// Not root: prints a skip line and returns `None`.
pub fn isolate(name: &str, ns: Ipv4Addr, server: Nameserver) -> Option<DnsEnv> {
    match std::env::var(INNER_ENV) {
        Ok(inner) if inner == name => Some(enter(name, ns, server)),
        Ok(other) => panic!("dnsenv: child for {other} ran {name}; use the test's own name"),
        Err(_) => {
            if !is_root() {
                eprintln!("skipped: {name} needs root (mount namespace, port 53)");
                return None;
            }
            run_child(name);
            None
        }
    }
}

fn run_child(name: &str) {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let outer_ns = mount_ns_id("self").unwrap_or_else(|e| panic!("read own mount ns: {e}"));
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INNER_ENV, name)
        .env(OUTER_NS_ENV, &outer_ns)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn unshare (util-linux): {e}"));
    let mut out = child.stdout.take().unwrap_or_else(|| panic!("stdout pipe"));
    let mut err = child.stderr.take().unwrap_or_else(|| panic!("stderr pipe"));
    let t_out = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(20)),
            _ => {
                stop_child(&mut child);
                break None;
            }
        }
    };
    let out = t_out.join().unwrap_or_default();
    let err = t_err.join().unwrap_or_default();
    // Show the child's output in the outer test's output (captured unless --nocapture).
    println!("{out}");
    eprintln!("{err}");
    match status {
        Some(st) if st.success() => {
            assert!(
                out.contains(&format!("test {name} ... ok")),
                "isolated test {name} did not run (filter mismatch?)"
            );
        }
        Some(st) => panic!("isolated test {name} failed ({st})"),
        None => panic!("isolated test {name} timed out after {CHILD_TIMEOUT:?}"),
    }
}

/// Where environments live: under a root-owned, not world-writable directory, because the
/// classifier's chroot directory (created inside) must have only such ancestors.
fn scratch_base() -> PathBuf {
    for parent in ["/run", "/var/lib"] {
        let ok = fs::metadata(parent)
            .map(|m| m.is_dir() && m.permissions().mode() & 0o022 == 0)
            .unwrap_or(false);
        if ok {
            return Path::new(parent).join("portnanny-lookups");
        }
    }
    std::env::temp_dir().join("portnanny-lookups")
}

fn mount_ns_id(pid: &str) -> std::io::Result<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/mnt"))
}

fn bind_over(src: &Path, target: &str) {
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap_or_else(|e| panic!("bind {} over {target}: {e}", src.display()));
    let want = fs::read(src).unwrap_or_default();
    let got = fs::read(target).unwrap_or_default();
    assert_eq!(
        got, want,
        "{target} is not the test's file after the bind mount"
    );
}

fn enter(name: &str, ns: Ipv4Addr, server: Nameserver) -> DnsEnv {
    // Refuse to touch /etc unless we are really in a namespace of our own: ours must differ
    // from the outer test's (passed down by it) and from init's (when we may read that).
    let mine = mount_ns_id("self").unwrap_or_else(|e| panic!("read own mount ns: {e}"));
    let outer = std::env::var(OUTER_NS_ENV).unwrap_or_default();
    assert!(
        !outer.is_empty() && mine.as_os_str() != outer.as_str(),
        "dnsenv: not in a private mount namespace ({mine:?} vs outer {outer:?}); refusing"
    );
    if let Ok(init) = mount_ns_id("1") {
        assert_ne!(mine, init, "dnsenv: in init's mount namespace; refusing");
    }

    let dir = scratch_base().join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    // Readable by the daemon's unprivileged users (config files live here too).
    for d in [dir.as_path(), scratch_base().as_path()] {
        let _ = fs::set_permissions(d, fs::Permissions::from_mode(0o755));
    }
    let records = match &server {
        Nameserver::Dnsmasq(r) | Nameserver::External(r) => r.clone(),
    };
    let write = |file: &str, text: &str| -> PathBuf {
        let p = dir.join(file);
        fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    };
    let resolv = write(
        "resolv.conf",
        &format!("nameserver {ns}\noptions timeout:2 attempts:1\n"),
    );
    let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for (ip, n) in &records.hosts {
        hosts.push_str(&format!("{ip} {n}\n"));
    }
    let hosts = write("hosts", &hosts);
    let nss = write("nsswitch.conf", "hosts: files dns\n");
    bind_over(&resolv, "/etc/resolv.conf");
    bind_over(&hosts, "/etc/hosts");
    bind_over(&nss, "/etc/nsswitch.conf");

    let log = dir.join("dnsmasq.log");
    let dnsmasq = match server {
        Nameserver::External(_) => None,
        Nameserver::Dnsmasq(r) => Some(start_dnsmasq(ns, &r, &log)),
    };
    DnsEnv {
        dir,
        ns,
        dnsmasq,
        dnsmasq_log: log,
    }
}

fn start_dnsmasq(ns: Ipv4Addr, records: &Records, log: &Path) -> Child {
    let mut child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--port=53",
            "--pid-file=",
            "--user=root",
            "--cache-size=0",
            "--log-queries",
            // Authoritative for everything the tests use: unknown names are NXDOMAIN.
            "--local=/test/",
            "--local=/in-addr.arpa/",
            "--local=/ip6.arpa/",
        ])
        .arg(format!("--listen-address={ns}"))
        .arg(format!("--log-facility={}", log.display()))
        .args(&records.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start dnsmasq (apt-get install dnsmasq-base): {e}"));
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        // dnsmasq also listens on TCP; a completed connect means it is serving.
        if TcpStream::connect_timeout(
            &SocketAddr::new(IpAddr::V4(ns), 53),
            Duration::from_millis(200),
        )
        .is_ok()
        {
            return child;
        }
        if let Ok(Some(st)) = child.try_wait() {
            let mut e = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut e);
            }
            panic!("dnsmasq exited ({st}): {e}");
        }
        if Instant::now() > end {
            stop_child(&mut child);
            panic!("dnsmasq did not start listening on {ns}:53");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny slow DNS responder (UDP), for latency tests.
// ---------------------------------------------------------------------------------------------

/// Answers A queries for names under one of `zones` with 127.0.0.2 after `delay`, every other
/// query with NXDOMAIN after `delay`. Each query is answered from its own thread, so the
/// responder itself never serialises them.
pub struct SlowDns {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub queries: Arc<std::sync::Mutex<Vec<(String, Instant)>>>,
}

impl SlowDns {
    /// Names under any of `zones` are listed (A 127.0.0.2).
    pub fn start(addr: Ipv4Addr, delay: Duration, zones: &[&str]) -> SlowDns {
        let zones: Vec<String> = zones.iter().map(|z| z.to_ascii_lowercase()).collect();
        SlowDns::start_with(addr, delay, move |name| {
            zones
                .iter()
                .any(|z| name.ends_with(&format!(".{z}")) || name == z)
        })
    }

    /// Names for which `listed(name)` is true get A 127.0.0.2, the rest NXDOMAIN.
    pub fn start_with(
        addr: Ipv4Addr,
        delay: Duration,
        listed: impl Fn(&str) -> bool + Send + 'static,
    ) -> SlowDns {
        let sock = UdpSocket::bind((addr, 53)).unwrap_or_else(|e| panic!("bind {addr}:53: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap_or_else(|e| panic!("{e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (st, q) = (Arc::clone(&stop), Arc::clone(&queries));
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !st.load(Ordering::SeqCst) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Some((name, qtype, qend)) = parse_question(&buf[..n]) else {
                    continue;
                };
                if let Ok(mut g) = q.lock() {
                    g.push((name.clone(), Instant::now()));
                }
                let reply = build_reply(&buf[..qend], qtype == 1 && listed(&name));
                let Ok(s) = sock.try_clone() else { continue };
                thread::spawn(move || {
                    thread::sleep(delay);
                    let _ = s.send_to(&reply, from);
                });
            }
        });
        SlowDns {
            stop,
            thread: Some(thread),
            queries,
        }
    }

    pub fn query_names(&self) -> Vec<String> {
        self.queries
            .lock()
            .map(|g| g.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default()
    }
}

impl Drop for SlowDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The question of a DNS query: (lower-case name without trailing dot, qtype, end offset of
/// the question section).
fn parse_question(msg: &[u8]) -> Option<(String, u16, usize)> {
    if msg.len() < 12 || msg.get(4..6)? != [0, 1] {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(msg.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]);
    Some((labels.join("."), qtype, pos + 4))
}

/// A reply to `query` (header + question): one A record 127.0.0.2 if `listed`, else NXDOMAIN.
fn build_reply(query: &[u8], listed: bool) -> Vec<u8> {
    let mut r = query.to_vec();
    // QR=1, opcode 0, AA=1, RD copied; RA=1; rcode 0 or 3.
    r[2] = 0x84 | (query[2] & 0x01);
    r[3] = if listed { 0x80 } else { 0x83 };
    // QDCOUNT 1, ANCOUNT, NSCOUNT 0, ARCOUNT 0.
    r[4..12].copy_from_slice(&[0, 1, 0, u8::from(listed), 0, 0, 0, 0]);
    if listed {
        // Name pointer to the question (offset 12), type A, class IN, TTL 60, 4 bytes.
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 2]);
    }
    r
}

// ---------------------------------------------------------------------------------------------
// The real daemon inside the environment, and clients on 127.54.x.y.
// ---------------------------------------------------------------------------------------------

/// A `portnanny` started inside the environment (so it and its resolver use the sandbox DNS);
/// stopped (TERM, then KILL) when dropped.
pub struct Nanny {
    child: Child,
    pub port: u16,
    pub stderr: PathBuf,
}

impl Drop for Nanny {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

impl Nanny {
    /// Everything the daemon logged so far (stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// A TCP port nobody listens on right now.
/// True if something listens on TCP `port` (any address), per /proc/net/tcp.
fn listening(port: u16) -> bool {
    let want = format!(":{port:04X} ");
    fs::read_to_string("/proc/net/tcp")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().nth(3) == Some("0A") && l.contains(&want))
        })
        .unwrap_or(false)
}

impl DnsEnv {
    /// Start `portnanny -v` with these rules and actions, listening on 127.0.0.1, workers as
    /// nobody with the classifier chrooted to an empty directory; `conf_extra` lines are added
    /// to nanny.conf. Returns once the daemon listens.
    pub fn start_nanny(&self, rules: &str, actions: &str, conf_extra: &str) -> Nanny {
        self.start_nanny_on(rules, actions, conf_extra, false)
    }

    /// As [`DnsEnv::start_nanny`], listening on [::1] as well when `v6` is true.
    pub fn start_nanny_on(&self, rules: &str, actions: &str, conf_extra: &str, v6: bool) -> Nanny {
        self.start_nanny_at(&self.dir, rules, actions, conf_extra, v6)
    }

    /// A second (third…) daemon in the same environment, with its files in `sub`.
    #[allow(dead_code)]
    pub fn start_another_nanny(&self, sub: &str, rules: &str, actions: &str, conf: &str) -> Nanny {
        let dir = self.dir.join(sub);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        self.start_nanny_at(&dir, rules, actions, conf, false)
    }

    fn start_nanny_at(
        &self,
        dir: &Path,
        rules: &str,
        actions: &str,
        conf_extra: &str,
        v6: bool,
    ) -> Nanny {
        let Some(bin) = option_env!("CARGO_BIN_EXE_portnanny") else {
            panic!("the portnanny binary is not part of this build");
        };
        let port = free_port();
        let empty = self.dir.join("empty");
        fs::create_dir_all(&empty).unwrap_or_else(|e| panic!("mkdir empty: {e}"));
        let _ = fs::set_permissions(&empty, fs::Permissions::from_mode(0o755));
        let write = |file: &str, text: &str| -> PathBuf {
            let p = dir.join(file);
            fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
            let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o644));
            p
        };
        let rules_p = write("rules", rules);
        let actions_p = write("actions", actions);
        let conf = write(
            "nanny.conf",
            &format!(
                "rulefile {}\nactionfile {}\nlisten {port}@127.0.0.1\n{}privsepuser nobody\n\
                 chrootdir {}\n{conf_extra}\n",
                rules_p.display(),
                actions_p.display(),
                if v6 {
                    format!("listen {port}@::1\n")
                } else {
                    String::new()
                },
                empty.display()
            ),
        );
        let stderr = dir.join("nanny.stderr");
        let errf = fs::File::create(&stderr).unwrap_or_else(|e| panic!("stderr file: {e}"));
        let child = Command::new(bin)
            .arg("-v")
            .arg(&conf)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(errf))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn portnanny: {e}"));
        let mut n = Nanny {
            child,
            port,
            stderr,
        };
        let end = Instant::now() + Duration::from_secs(20);
        while !listening(port) {
            if let Ok(Some(st)) = n.child.try_wait() {
                panic!("portnanny exited ({st}):\n{}", n.log());
            }
            if Instant::now() > end {
                panic!("portnanny did not listen on {port}:\n{}", n.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
        n
    }
}

/// What a client from `src` received from 127.0.0.1:`port` until the daemon closed, and how
/// long that took from the start of the connect.
pub fn fetch_from(src: &str, port: u16, timeout: Duration) -> (String, Duration) {
    fetch(
        src,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        timeout,
    )
}

/// As [`fetch_from`], to any daemon address (e.g. `[::1]:port`).
pub fn fetch(src: &str, dst: SocketAddr, timeout: Duration) -> (String, Duration) {
    let src: IpAddr = src.parse().unwrap_or_else(|e| panic!("{src}: {e}"));
    let t = Instant::now();
    let mut s = portnanny::resolver::answerson::connect_from(Some(src), dst, t + timeout)
        .unwrap_or_else(|e| panic!("connect from {src}: {e}"));
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = (t + timeout).saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}
