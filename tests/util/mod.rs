//! Shared harness for the end-to-end tests (ripgrep style: a scratch dir plus the real binary).
//!
//! Runs in the test process (root on CI, possibly unprivileged on a developer machine). It
//! writes nanny.conf/rules/actions and service scripts into a private scratch directory, starts
//! `portnanny` in the foreground with stderr captured to a file, connects from chosen
//! 127.0.0.0/8 source addresses and reads what the service sends, and inspects the daemon's
//! processes through /proc. Every byte it reads comes from processes it started itself.
//!
//! Invariants:
//! - every wait is bounded by a deadline; nothing here loops forever;
//! - the only processes signalled are ones this harness started (the daemon, the dnsmasq and
//!   rsyslogd it ran) or their descendants recorded by (pid, start time) so a recycled pid is
//!   never hit;
//! - traffic only goes to loopback; a daemon started as root runs in a private mount namespace
//!   whose /etc/resolv.conf names a dnsmasq on a loopback address that the test started, so no
//!   test can send a DNS query to the machine's real resolver.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{
    bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
};
use nix::unistd::Pid;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_portnanny");

/// How long a daemon gets to start listening. Generous: CI has 2 cores and runs test binaries'
/// threads in parallel.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Default deadline for one client exchange or one log line.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The unprivileged user the daemon is run as in the non-root tests, and the default
/// privsep user in the root tests (present on every Debian system).
pub const NOBODY_UID: u32 = 65534;
pub const NOBODY_GID: u32 = 65534;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Prints the STYLE 2.9 skip line and returns true when the test needs root and we are not.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        false
    } else {
        eprintln!("{test}: skipped: needs root");
        true
    }
}

/// Polls `f` every 20 ms until it returns Some or the deadline passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Scratch directory
// ---------------------------------------------------------------------------------------------

/// A private directory per test. Kept when the test panics (its path is printed) so the
/// daemon's stderr can be read afterwards; removed otherwise.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let base = scratch_base();
        fs::create_dir_all(&base).expect("create scratch base");
        // Traversable by the unprivileged users that read configs and exec scripts.
        let _ = fs::set_permissions(&base, fs::Permissions::from_mode(0o755));
        let dir = base.join(format!("{}-{}-{}", name, std::process::id(), unique()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("create scratch dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod scratch");
        Scratch { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a file readable by everyone (the daemon may run as nobody).
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        write_atomic(&p, text, 0o644);
        p
    }

    /// Writes an executable script (mode 0755).
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.path(name);
        write_atomic(&p, body, 0o755);
        p
    }

    /// An empty root-owned 0755 directory: what the classifier's chroot must be.
    pub fn empty_dir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        fs::create_dir_all(&p).expect("create empty dir");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod empty dir");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if thread::panicking() || std::env::var_os("PORTNANNY_KEEP_SCRATCH").is_some() {
            eprintln!("scratch kept: {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Where scratch dirs live. As root, the classifier's chroot dir inside the scratch dir must
/// have no group- or world-writable ancestor (the daemon checks, as sshd does), so /tmp (mode
/// 1777) will not do: use a root-owned 0755 directory under /run (or /var/lib).
fn scratch_base() -> PathBuf {
    if !is_root() {
        return std::env::temp_dir().join("portnanny-tests");
    }
    for parent in ["/run", "/var/lib"] {
        let ok = fs::metadata(parent)
            .map(|m| m.is_dir() && m.permissions().mode() & 0o022 == 0)
            .unwrap_or(false);
        if ok {
            return Path::new(parent).join("portnanny-tests");
        }
    }
    std::env::temp_dir().join("portnanny-tests")
}

/// Replaces a file in one rename, so a daemon polling it never sees half a file.
pub fn write_atomic(path: &Path, text: &str, mode: u32) {
    let tmp = path.with_extension(format!("tmp{}", unique()));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .expect("open temp file");
        f.write_all(text.as_bytes()).expect("write temp file");
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).expect("chmod temp file");
    fs::rename(&tmp, path).expect("rename temp file");
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

// ---------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------

/// The service user of the credential tests: a user with two supplementary groups, so the test
/// can tell "groups as a login would give" from "just the primary group".
pub const TEST_USER: &str = "pntest";
pub const TEST_GROUPS: [&str; 2] = ["pntest-a", "pntest-b"];

/// Creates the test user and groups if missing (root only; `.ci/run` does it too). Returns
/// (uid, gid, sorted group list as `id -G` prints it).
pub fn ensure_test_user() -> (u32, u32, Vec<u32>) {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    if id_of(&["-u", TEST_USER]).is_none() {
        for g in TEST_GROUPS {
            let _ = Command::new("groupadd").args(["--system", g]).status();
        }
        let st = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                "--groups",
                &TEST_GROUPS.join(","),
                TEST_USER,
            ])
            .status()
            .expect("run useradd");
        assert!(st.success(), "useradd {TEST_USER} failed");
    }
    let uid = id_of(&["-u", TEST_USER]).expect("uid of test user");
    let gid = id_of(&["-g", TEST_USER]).expect("gid of test user");
    let out = Command::new("id")
        .args(["-G", TEST_USER])
        .output()
        .expect("id -G");
    let mut groups: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    assert!(
        groups.len() >= 3,
        "{TEST_USER} should have 2 supplementary groups: {groups:?}"
    );
    (uid, gid, groups)
}

fn id_of(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// The fields of /proc/PID/status, e.g. "Uid" -> "0\t0\t0\t0".
pub fn proc_status(pid: i32) -> Option<HashMap<String, String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect(),
    )
}

pub fn status_field(pid: i32, field: &str) -> Option<String> {
    proc_status(pid)?.remove(field)
}

/// The numbers of a status field such as Uid, Gid or Groups.
pub fn status_ids(pid: i32, field: &str) -> Option<Vec<u32>> {
    let v = status_field(pid, field)?;
    Some(
        v.split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect(),
    )
}

/// (ppid, start time in clock ticks) from /proc/PID/stat; the comm field may contain spaces
/// and parentheses, so parse after the last ')'.
pub fn proc_stat(pid: i32) -> Option<(i32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); ppid is field 4, starttime field 22.
    let ppid = f.get(1)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((ppid, start))
}

pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(t) => !t
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// Direct children of `ppid`, by scanning /proc/*/stat.
pub fn children_of(ppid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((pp, _)) = proc_stat(pid) {
            if pp == ppid {
                out.push(pid);
            }
        }
    }
    out.sort_unstable();
    out
}

/// Every descendant of `pid` with its start time.
pub fn descendants(pid: i32) -> Vec<(i32, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    let mut rounds = 0;
    while let Some(p) = todo.pop() {
        rounds += 1;
        if rounds > 100_000 {
            break;
        }
        for c in children_of(p) {
            if let Some((_, st)) = proc_stat(c) {
                out.push((c, st));
                todo.push(c);
            }
        }
    }
    out
}

pub fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Open fd numbers of a process.
pub fn fds(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

pub fn fd_target(pid: i32, fd: i32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    status_field(pid, "VmRSS")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// True if a TCP socket on 127.0.0.1:port is in LISTEN state (read from /proc/net/tcp so the
/// check makes no connection the daemon would have to classify).
pub fn is_listening(ip: Ipv4Addr, port: u16) -> bool {
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), port);
    let Ok(text) = fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A")
    })
}

fn udp_bound(ip: Ipv4Addr, port: u16) -> bool {
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), port);
    fs::read_to_string("/proc/net/udp")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(&want))
        })
        .unwrap_or(false)
}

/// Sends `sig` to a pid this harness recorded, only if it is still the same process.
fn signal_if_same(pid: i32, start: u64, sig: Signal) {
    if proc_stat(pid).map(|(_, s)| s) == Some(start) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

// ---------------------------------------------------------------------------------------------
// Helper daemons the tests start: dnsmasq (DNS sandbox) and rsyslogd
// ---------------------------------------------------------------------------------------------

/// A process the harness started; killed (TERM, then KILL) when dropped.
pub struct Daemon {
    pub child: Child,
    pub name: &'static str,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

pub fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
    let _ = child.wait();
}

/// A dnsmasq on a private loopback address that answers NXDOMAIN for every name and forwards
/// nothing; plus the resolv.conf that points at it.
pub struct DnsSandbox {
    pub daemon: Daemon,
    pub addr: Ipv4Addr,
    pub resolv_conf: PathBuf,
}

pub fn start_dns_sandbox(s: &Scratch) -> DnsSandbox {
    let mut last_err = String::new();
    for attempt in 0..20u32 {
        let n = std::process::id()
            .wrapping_mul(31)
            .wrapping_add(unique() * 7 + attempt);
        let addr = Ipv4Addr::new(127, 53, (n % 250 + 1) as u8, ((n / 250) % 250 + 1) as u8);
        let log = s.path("dnsmasq.log");
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                "--port=53",
                "--address=/#/",
                "--pid-file=",
                "--user=root",
                "--cache-size=0",
            ])
            .arg(format!("--listen-address={addr}"))
            .arg(format!("--log-facility={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => panic!("cannot start dnsmasq (install it; .ci/run does): {e}"),
        };
        let ok = wait_for(Duration::from_secs(5), || {
            if udp_bound(addr, 53) {
                return Some(true);
            }
            match child.try_wait() {
                Ok(Some(_)) => Some(false),
                _ => None,
            }
        });
        if ok == Some(true) {
            let resolv = s.write(
                "resolv.conf",
                &format!("nameserver {addr}\noptions timeout:1 attempts:1\n"),
            );
            return DnsSandbox {
                daemon: Daemon {
                    child,
                    name: "dnsmasq",
                },
                addr,
                resolv_conf: resolv,
            };
        }
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        last_err = err;
        stop_child(&mut child);
    }
    panic!("dnsmasq did not start: {last_err}");
}

/// rsyslogd writing everything it receives on `socket` to `out`, one line per message as
/// `FACILITY.SEVERITY TAG MSG`.
pub struct Syslogd {
    pub daemon: Daemon,
    pub socket: PathBuf,
    pub out: PathBuf,
}

pub fn start_rsyslogd(s: &Scratch) -> Syslogd {
    let socket = s.path("log.sock");
    let out = s.path("syslog.out");
    let work = s.empty_dir("rsyslog-work");
    let conf = s.write(
        "rsyslog.conf",
        &format!(
            r#"global(workDirectory="{work}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{sock}" RateLimit.Interval="0" UseSpecialParser="off")
template(name="pnfmt" type="string" string="%syslogfacility-text%.%syslogseverity-text% %syslogtag% %msg%\n")
*.* action(type="omfile" file="{out}" template="pnfmt")
"#,
            work = work.display(),
            sock = socket.display(),
            out = out.display()
        ),
    );
    let child = Command::new("rsyslogd")
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(s.path("rsyslogd.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            fs::File::create(s.path("rsyslogd.stderr")).expect("rsyslogd stderr file"),
        ))
        .spawn()
        .expect("start rsyslogd (install rsyslog; .ci/run does)");
    let d = Daemon {
        child,
        name: "rsyslogd",
    };
    let ready = wait_for(START_TIMEOUT, || socket.exists().then_some(()));
    assert!(
        ready.is_some(),
        "rsyslogd did not create {}: {}",
        socket.display(),
        fs::read_to_string(s.path("rsyslogd.stderr")).unwrap_or_default()
    );
    Syslogd {
        daemon: d,
        socket,
        out,
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon under test
// ---------------------------------------------------------------------------------------------

/// How to run the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// As whoever runs the tests (root on CI): the full privilege-separated setup.
    AsTester,
    /// As nobody (via setpriv) when the tests run as root; as the tester otherwise.
    NonRoot,
}

/// The three configuration files and how to start the daemon.
pub struct Setup {
    pub port: u16,
    /// Extra nanny.conf lines (user, onfileerror, ...).
    pub conf_extra: String,
    pub rules: String,
    pub actions: String,
    pub args: Vec<String>,
    pub mode: Mode,
    /// Start rsyslogd and bind its socket over /dev/log inside the daemon's mount namespace.
    pub syslog: bool,
    /// Extra `listen` lines beyond `listen PORT@127.0.0.1`.
    pub extra_listens: Vec<String>,
}

impl Setup {
    pub fn new(rules: &str, actions: &str) -> Setup {
        Setup {
            port: free_port(),
            conf_extra: String::new(),
            rules: rules.to_string(),
            actions: actions.to_string(),
            args: Vec::new(),
            mode: Mode::AsTester,
            syslog: false,
            extra_listens: Vec::new(),
        }
    }

    pub fn conf(mut self, line: &str) -> Setup {
        self.conf_extra.push_str(line);
        self.conf_extra.push('\n');
        self
    }

    pub fn arg(mut self, a: &str) -> Setup {
        self.args.push(a.to_string());
        self
    }

    pub fn mode(mut self, m: Mode) -> Setup {
        self.mode = m;
        self
    }

    pub fn syslog(mut self) -> Setup {
        self.syslog = true;
        self
    }

    /// True when the daemon will run with root privileges.
    pub fn privileged(&self) -> bool {
        is_root() && self.mode == Mode::AsTester
    }

    /// The nanny.conf text for this setup (absolute file names, so log lines and diagnostics
    /// name the same paths the tests check).
    pub fn conf_text(&self, s: &Scratch) -> String {
        let mut c = format!(
            "# written by tests/util\nrulefile {}\nactionfile {}\nlisten {}@127.0.0.1\n",
            s.path("nanny-rules").display(),
            s.path("nanny-actions").display(),
            self.port
        );
        for l in &self.extra_listens {
            c.push_str(&format!("listen {l}\n"));
        }
        if self.privileged() {
            // The classifier's chroot must be root-owned, not writable and empty; the default
            // privsep user may not exist on a test machine, so name one that does.
            let empty = s.empty_dir("empty");
            c.push_str(&format!(
                "chrootdir {}\nprivsepuser nobody\n",
                empty.display()
            ));
        }
        c.push_str(&self.conf_extra);
        c
    }
}

/// A running `portnanny`; stopped (TERM, then KILL, then its leftover descendants) on drop.
pub struct Nanny {
    pub child: Option<Child>,
    pub pid: i32,
    pub addr: SocketAddr,
    pub stderr: PathBuf,
    pub conf: PathBuf,
    pub rules: PathBuf,
    pub actions: PathBuf,
    pub dns: Option<DnsSandbox>,
    pub syslogd: Option<Syslogd>,
    /// Descendants seen while the daemon ran, with their start times (for the drop guard).
    seen: std::sync::Mutex<BTreeMap<i32, u64>>,
}

impl Nanny {
    /// Writes the files and starts the daemon; waits until it listens.
    pub fn start(s: &Scratch, setup: Setup) -> Nanny {
        let n = Nanny::spawn(s, &setup);
        n.wait_listening(setup.port);
        n
    }

    /// Writes the files and starts the daemon without waiting for it.
    pub fn spawn(s: &Scratch, setup: &Setup) -> Nanny {
        let conf = s.write("nanny.conf", &setup.conf_text(s));
        let rules = s.write("nanny-rules", &setup.rules);
        let actions = s.write("nanny-actions", &setup.actions);
        let mut args: Vec<String> = setup.args.clone();
        args.push(conf.to_string_lossy().into_owned());
        Nanny::spawn_args(s, setup, &args, conf, rules, actions)
    }

    /// Starts the daemon on an existing config file (written by the test itself).
    pub fn start_conf(s: &Scratch, setup: &Setup, conf: PathBuf) -> Nanny {
        let mut args: Vec<String> = setup.args.clone();
        args.push(conf.to_string_lossy().into_owned());
        let n = Nanny::spawn_args(
            s,
            setup,
            &args,
            conf,
            s.path("nanny-rules"),
            s.path("nanny-actions"),
        );
        n.wait_listening(setup.port);
        n
    }

    fn spawn_args(
        s: &Scratch,
        setup: &Setup,
        args: &[String],
        conf: PathBuf,
        rules: PathBuf,
        actions: PathBuf,
    ) -> Nanny {
        let stderr = s.path("nanny.stderr");
        let errf = fs::File::create(&stderr).expect("create stderr file");
        let outf = fs::File::create(s.path("nanny.stdout")).expect("create stdout file");
        let as_nobody = is_root() && setup.mode == Mode::NonRoot;
        let mut dns = None;
        let mut syslogd = None;
        let mut cmd;
        if is_root() {
            // A private mount namespace: resolv.conf -> our dnsmasq, and /dev/log -> our
            // rsyslogd when asked. `unshare` and `sh -c exec` keep the pid, so child.id() is
            // the daemon's pid.
            let d = start_dns_sandbox(s);
            let mut script = String::from("set -e\n");
            script.push_str(&format!(
                "mount --bind {} /etc/resolv.conf\n",
                d.resolv_conf.display()
            ));
            if setup.syslog {
                let sl = start_rsyslogd(s);
                // /dev/log may not exist and /dev is shared with the host, so put a tmpfs over
                // /dev in this namespace and bring back the nodes a daemon needs.
                let hostdev = s.empty_dir("hostdev");
                script.push_str(&format!(
                    "mount --rbind /dev {hd}\nmount -t tmpfs -o mode=0755 pndev /dev\n\
                     for n in null zero full random urandom tty; do\n\
                     if [ -e {hd}/$n ]; then : > /dev/$n; mount --bind {hd}/$n /dev/$n; fi\n\
                     done\n\
                     ln -s /proc/self/fd /dev/fd\n\
                     : > /dev/log\nmount --bind {sock} /dev/log\n",
                    hd = hostdev.display(),
                    sock = sl.socket.display()
                ));
                syslogd = Some(sl);
            }
            if as_nobody {
                script.push_str(&format!(
                    "exec setpriv --reuid={NOBODY_UID} --regid={NOBODY_GID} --clear-groups \
                     -- \"$@\"\n"
                ));
            } else {
                script.push_str("exec \"$@\"\n");
            }
            dns = Some(d);
            cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                .arg(script)
                .arg("sh")
                .arg(BIN);
        } else {
            cmd = Command::new(BIN);
        }
        cmd.args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .current_dir(&s.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(outf))
            .stderr(Stdio::from(errf));
        let child = cmd.spawn().expect("spawn portnanny");
        let pid = child.id() as i32;
        Nanny {
            child: Some(child),
            pid,
            addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, setup.port)),
            stderr,
            conf,
            rules,
            actions,
            dns,
            syslogd,
            seen: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs `portnanny ARGS` to completion (for -C, -h, usage errors), bounded in time.
    pub fn run_once(args: &[&str], timeout: Duration) -> (Option<i32>, String, String) {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portnanny");
        let mut out = child.stdout.take().expect("stdout pipe");
        let mut err = child.stderr.take().expect("stderr pipe");
        let to = thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let te = thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break Some(st);
            }
            if Instant::now() >= deadline {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(10));
        };
        let o = String::from_utf8_lossy(&to.join().unwrap_or_default()).into_owned();
        let e = String::from_utf8_lossy(&te.join().unwrap_or_default()).into_owned();
        (status.and_then(|s| s.code()), o, e)
    }

    pub fn wait_listening(&self, port: u16) {
        let ok = wait_for(START_TIMEOUT, || {
            if is_listening(Ipv4Addr::LOCALHOST, port) {
                return Some(true);
            }
            if !alive(self.pid) {
                return Some(false);
            }
            None
        });
        assert_eq!(
            ok,
            Some(true),
            "portnanny did not start listening on 127.0.0.1:{port}; stderr:\n{}",
            self.log()
        );
        self.note_descendants();
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The current length of the log, to wait for lines written after this point.
    pub fn mark(&self) -> usize {
        self.log().len()
    }

    pub fn log_since(&self, mark: usize) -> String {
        let l = self.log();
        l.get(mark..).unwrap_or("").to_string()
    }

    /// Waits for a log line (after `mark`) for which `pred` holds; returns it.
    pub fn wait_log_since(
        &self,
        mark: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        wait_for(timeout, || {
            self.log_since(mark)
                .lines()
                .find(|l| pred(l))
                .map(str::to_string)
        })
    }

    /// Waits for a log line containing every one of `words`; panics with the log if none comes.
    pub fn expect_log(&self, mark: usize, words: &[&str]) -> String {
        match self.wait_log_since(mark, IO_TIMEOUT, |l| words.iter().all(|w| l.contains(w))) {
            Some(l) => l,
            None => panic!(
                "no log line containing {words:?} within {IO_TIMEOUT:?}; log:\n{}",
                self.log()
            ),
        }
    }

    pub fn signal(&self, sig: Signal) {
        if let Some(c) = &self.child {
            if let Some((_, st)) = proc_stat(c.id() as i32) {
                signal_if_same(self.pid, st, sig);
            }
        }
    }

    /// Waits for the daemon to exit; None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Worker processes: children of the daemon whose argv carries the hidden role argument.
    pub fn worker(&self, role: &str) -> Option<i32> {
        children_of(self.pid).into_iter().find(|&p| {
            let c = cmdline(p);
            c.iter().any(|a| a == "--privsep-role") && c.iter().any(|a| a == role)
        })
    }

    pub fn wait_worker(&self, role: &str, timeout: Duration) -> Option<i32> {
        let r = wait_for(timeout, || self.worker(role));
        self.note_descendants();
        r
    }

    /// Children of the daemon that are not workers: the services.
    pub fn services(&self) -> Vec<i32> {
        self.note_descendants();
        children_of(self.pid)
            .into_iter()
            .filter(|&p| !cmdline(p).iter().any(|a| a == "--privsep-role"))
            .collect()
    }

    /// Records the daemon's descendants, so the drop guard can clean up services that outlive a
    /// test (running services are deliberately left alone by SIGTERM).
    pub fn note_descendants(&self) {
        let d = descendants(self.pid);
        if let Ok(mut seen) = self.seen.lock() {
            for (p, st) in d {
                seen.insert(p, st);
            }
        }
    }

    pub fn fetch_from(&self, src: Ipv4Addr) -> Reply {
        fetch(src, self.addr, IO_TIMEOUT)
    }
}

impl Drop for Nanny {
    fn drop(&mut self) {
        self.note_descendants();
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        for (p, st) in seen {
            signal_if_same(p, st, Signal::SIGKILL);
        }
        if thread::panicking() {
            eprintln!("---- portnanny stderr ----\n{}\n---- end ----", self.log());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Connects from `src` (bound before connect, any port) to `dst`, with a connect timeout.
pub fn connect_from(src: Ipv4Addr, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let SocketAddr::V4(dst4) = dst else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 only"));
    };
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let tv = nix::sys::time::TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64);
    // Linux applies SO_SNDTIMEO to connect(): a dropped SYN cannot hang the test.
    setsockopt(&fd, sockopt::SendTimeout, &tv)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(dst4))?;
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// How a read ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The connection is still open (read_line got its line).
    Open,
    Eof,
    Reset,
    Timeout,
    ConnectFailed,
}

#[derive(Clone, Debug)]
pub struct Reply {
    pub data: Vec<u8>,
    pub end: End,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// Closed by the far end with no data at all (drop, reject without failmsg).
    pub fn closed_silently(&self) -> bool {
        self.data.is_empty() && matches!(self.end, End::Eof | End::Reset)
    }
}

/// Reads until EOF, reset or the deadline.
pub fn read_all(s: &mut TcpStream, timeout: Duration) -> Reply {
    read_until(s, timeout, false)
}

/// Reads one line (up to and including '\n'), or until EOF/reset/deadline; leaves the
/// connection open (`End::Open`) when the line arrived.
pub fn read_line(s: &mut TcpStream, timeout: Duration) -> Reply {
    read_until(s, timeout, true)
}

/// The read loop of [`read_all`] and [`read_line`]; with `one_line`, stops after the first '\n'
/// (reading a byte at a time so nothing after it is consumed) and reports `End::Open`.
fn read_until(s: &mut TcpStream, timeout: Duration, one_line: bool) -> Reply {
    let deadline = Instant::now() + timeout;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let chunk = if one_line { 1 } else { buf.len() };
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break End::Timeout;
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf[..chunk]) {
            Ok(0) => break End::Eof,
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                if one_line && data.last() == Some(&b'\n') {
                    break End::Open;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                break End::Timeout
            }
            Err(_) => break End::Reset,
        }
    };
    Reply { data, end }
}

/// Connects from `src`, reads everything until the far end closes.
pub fn fetch(src: Ipv4Addr, dst: SocketAddr, timeout: Duration) -> Reply {
    match connect_from(src, dst, timeout) {
        Ok(mut s) => read_all(&mut s, timeout),
        Err(_) => Reply {
            data: Vec::new(),
            end: End::ConnectFailed,
        },
    }
}

/// Repeats `fetch` until `pred` holds or the deadline passes (for reloads, restarts).
pub fn fetch_until(
    src: Ipv4Addr,
    dst: SocketAddr,
    timeout: Duration,
    pred: impl Fn(&Reply) -> bool,
) -> Option<Reply> {
    let deadline = Instant::now() + timeout;
    let mut tries = 0;
    loop {
        tries += 1;
        let r = fetch(src, dst, Duration::from_secs(3));
        if pred(&r) {
            return Some(r);
        }
        if Instant::now() >= deadline || tries > 10_000 {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A distinct 127/8 source address per index (127.A.B.C with C never 0 or 255).
pub fn src_ip(net: u8, i: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, net, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// Parses `KEY=VALUE` lines (a service that runs `env`).
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim_end_matches('\r').to_string(),
                v.trim_end_matches('\r').to_string(),
            )
        })
        .collect()
}

/// The `key=value` fields of a log line.
pub fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A daemon in a process group of its own
// ---------------------------------------------------------------------------------------------

impl Nanny {
    /// Like [`Nanny::start`], but the daemon leads a process group of its own, as a shell's
    /// foreground job does, so a test can signal that whole group (a terminal's Ctrl-C) without
    /// signalling itself. As root it runs in the same DNS sandbox as `start` (no syslog, no
    /// `Mode::NonRoot`).
    pub fn start_group_leader(s: &Scratch, setup: Setup) -> Nanny {
        Nanny::start_group_leader_env(s, setup, &[])
    }

    /// [`Nanny::start_group_leader`] with these variables in the daemon's environment besides
    /// PATH.
    pub fn start_group_leader_env(s: &Scratch, setup: Setup, env: &[(&str, &str)]) -> Nanny {
        use std::os::unix::process::CommandExt;
        let conf = s.write("nanny.conf", &setup.conf_text(s));
        let rules = s.write("nanny-rules", &setup.rules);
        let actions = s.write("nanny-actions", &setup.actions);
        let stderr = s.path("nanny.stderr");
        let errf = fs::File::create(&stderr).expect("create stderr file");
        let mut dns = None;
        let mut cmd;
        if is_root() {
            let d = start_dns_sandbox(s);
            let script = format!(
                "set -e\nmount --bind {} /etc/resolv.conf\nexec \"$@\"\n",
                d.resolv_conf.display()
            );
            dns = Some(d);
            cmd = Command::new("unshare");
            cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                .arg(script)
                .arg("sh")
                .arg(BIN);
        } else {
            cmd = Command::new(BIN);
        }
        cmd.args(&setup.args)
            .arg(&conf)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(env.iter().copied())
            .current_dir(&s.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(errf))
            .process_group(0);
        let child = cmd.spawn().expect("spawn portnanny");
        let pid = child.id() as i32;
        let n = Nanny {
            child: Some(child),
            pid,
            addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, setup.port)),
            stderr,
            conf,
            rules,
            actions,
            dns,
            syslogd: None,
            seen: std::sync::Mutex::new(BTreeMap::new()),
        };
        n.wait_listening(setup.port);
        n
    }
}

/// (process group, session) of `pid`, fields 5 and 6 of /proc/PID/stat.
pub fn pgrp_session(pid: i32) -> Option<(i32, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): pgrp is field 5, session field 6.
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}
