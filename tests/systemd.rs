//! systemd: the contrib units checked by `systemd-analyze verify`, the sysusers.d and
//! tmpfiles.d files applied to a scratch root by the real tools, socket activation through
//! `systemd-socket-activate` handing real sockets to the real binary, and the sd_notify
//! protocol read back from a datagram socket the test binds and names in NOTIFY_SOCKET.
//!
//! Runs in the test process (root on CI; as another user the steps that need root print
//! `skipped: needs root`, and a missing systemd tool prints `skipped: no TOOL`). No systemd
//! runs as init here: the units are only verified. Every daemon is one this file started, on
//! 127.0.0.1 ports; as root it runs in a private mount namespace whose resolver is the
//! harness's loopback dnsmasq (the rules need no lookup anyway). Every wait is bounded.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use util::*;

/// The variables a service or worker must never inherit.
const SYSTEMD_VARS: [&str; 6] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(name)
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The path of `tool` if it is installed.
fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn skip_without(test: &str, name: &str) -> Option<PathBuf> {
    let t = tool(name);
    if t.is_none() {
        eprintln!("{test}: skipped: no {name}");
    }
    t
}

/// Values of `Key=` in a unit file, in order (comments skipped).
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The contrib files
// ---------------------------------------------------------------------------------------------

#[test]
fn units_pass_systemd_analyze_verify() {
    let test = "units_pass_systemd_analyze_verify";
    let Some(analyze) = skip_without(test, "systemd-analyze") else {
        return;
    };
    let s = Scratch::new("sd-verify");
    // The units name the installed binary; point them at the one under test so verify can
    // check that ExecStart= and ExecStartPre= are executable.
    for unit in ["portnanny.service", "portnanny.socket"] {
        let text = read(&contrib(unit)).replace("/usr/local/sbin/portnanny", BIN);
        s.write(unit, &text);
    }
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(s.path("portnanny.service"))
        .arg(s.path("portnanny.socket"))
        .env("SYSTEMD_LOG_COLOR", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("portnanny")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {:?}\n{err}",
        out.status
    );
}

/// The unit's restart settings against the exit codes the binary really uses: a failed `-C`
/// (ExecStartPre=) and a configuration error at start stop the unit, a system error restarts
/// it. RestartPreventExitStatus= never sees ExecStartPre='s status, so Restart= must not
/// restart on a plain exit status.
#[test]
fn unit_restart_settings_match_the_exit_codes() {
    let unit = read(&contrib("portnanny.service"));
    assert_eq!(unit_values(&unit, "Type"), ["notify"]);
    assert_eq!(unit_values(&unit, "Restart"), ["on-abnormal"]);
    let codes = |k: &str| -> Vec<i32> {
        unit_values(&unit, k)
            .iter()
            .flat_map(|v| v.split_whitespace().map(|c| c.parse::<i32>().unwrap()))
            .collect()
    };
    let force = codes("RestartForceExitStatus");
    let prevent = codes("RestartPreventExitStatus");
    let pre = unit_values(&unit, "ExecStartPre");
    assert!(
        pre.iter().any(|c| c.split_whitespace().any(|w| w == "-C")),
        "ExecStartPre= runs -C: {pre:?}"
    );
    assert!(!unit_values(&unit, "WatchdogSec").is_empty());

    let s = Scratch::new("sd-codes");
    s.write("nanny-rules", "all: ALL\n");
    s.write("nanny-actions", "all: msg hello%(nl)s\n");
    // -C on a broken file: 1, which must not force a restart.
    let bad = s.write(
        "bad.conf",
        &format!(
            "rulefile {}\nactionfile {}\nlisten 4040@127.0.0.1\nnosuchdirective 1\n",
            s.path("nanny-rules").display(),
            s.path("nanny-actions").display()
        ),
    );
    let (code, _, err) = Nanny::run_once(&["-C", &bad.to_string_lossy()], IO_TIMEOUT);
    assert_eq!(code, Some(1), "-C: {err}");
    assert!(!force.contains(&1), "a failed -C must not restart");
    // The daemon on the same file: 100, which must stop the unit.
    let (code, _, err) = Nanny::run_once(&[&bad.to_string_lossy()], IO_TIMEOUT);
    assert_eq!(code, Some(100), "daemon on a broken file: {err}");
    assert!(!force.contains(&100) && prevent.contains(&100));
    // A port it cannot bind: 111, which must restart it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let setup = Setup::new("all: ALL\n", "all: msg hello%(nl)s\n");
    let mut text = setup.conf_text(&s);
    text.push_str(&format!(
        "listen {}@127.0.0.1\n",
        held.local_addr().unwrap().port()
    ));
    let conf = s.write("held.conf", &text);
    let (code, _, err) = Nanny::run_once(&[&conf.to_string_lossy()], START_TIMEOUT);
    assert_eq!(code, Some(111), "daemon on a held port: {err}");
    assert!(force.contains(&111));
}

/// The nanny.conf lines contrib/README.md says the units assume match the units: every socket
/// of portnanny.socket has its listen line, the privsep user is the sysusers.d user, the
/// chroot is a tmpfiles.d directory. As root, the real tools apply both files to a scratch
/// root and the daemon's own check accepts the chroot they make.
#[test]
fn contrib_files_agree_with_each_other() {
    let readme = read(&contrib("README.md"));
    let start = readme
        .find("# /etc/portnanny/nanny.conf: the lines contrib/ assumes")
        .expect("the nanny.conf block in contrib/README.md");
    let block = &readme[start..];
    let block = &block[..block.find("```").expect("end of the block")];
    let conf: BTreeMap<String, Vec<String>> = block
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .fold(BTreeMap::new(), |mut m, l| {
            let mut w = l.split_whitespace();
            if let (Some(k), Some(v)) = (w.next(), w.next()) {
                m.entry(k.to_owned()).or_default().push(v.to_owned());
            }
            m
        });
    let one = |k: &str| -> String {
        conf.get(k)
            .and_then(|v| v.first())
            .cloned()
            .unwrap_or_else(|| panic!("no {k} in the README block"))
    };

    // portnanny.socket: ListenStream=PORT or ADDR:PORT, one listen line each.
    let socket = read(&contrib("portnanny.socket"));
    let streams = unit_values(&socket, "ListenStream");
    assert!(!streams.is_empty());
    let listens = conf.get("listen").cloned().unwrap_or_default();
    for st in &streams {
        let want = match st.rsplit_once(':') {
            Some((addr, port)) => format!("{port}@{addr}"),
            None => st.clone(),
        };
        assert!(
            listens.contains(&want),
            "ListenStream={st} has no `listen {want}` in contrib/README.md ({listens:?})"
        );
    }
    assert_eq!(unit_values(&socket, "BindIPv6Only"), ["both"]);

    let sysusers = read(&contrib("portnanny.sysusers.conf"));
    let user = sysusers
        .lines()
        .find(|l| l.starts_with("u "))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("a u line");
    assert_eq!(one("privsepuser"), user);

    let tmpfiles = read(&contrib("portnanny.tmpfiles.conf"));
    let dirs: Vec<&str> = tmpfiles
        .lines()
        .filter(|l| l.starts_with("d "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let chroot = one("chrootdir");
    assert!(dirs.contains(&chroot.as_str()), "{chroot} not in {dirs:?}");
    for f in ["blockfile", "historyfile"] {
        let parent = Path::new(&one(f))
            .parent()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            dirs.contains(&parent.as_str()),
            "{f}'s directory not in {dirs:?}"
        );
    }

    let test = "contrib_files_agree_with_each_other (real tools)";
    if skip_unless_root(test) {
        return;
    }
    let (Some(sysusers_bin), Some(tmpfiles_bin)) = (
        skip_without(test, "systemd-sysusers"),
        skip_without(test, "systemd-tmpfiles"),
    ) else {
        return;
    };
    let s = Scratch::new("sd-contrib");
    let root = s.empty_dir("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    let st = Command::new(sysusers_bin)
        .arg(format!("--root={}", root.display()))
        .arg(contrib("portnanny.sysusers.conf"))
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-sysusers");
    assert!(st.status.success(), "{st:?}");
    let passwd = read(&root.join("etc/passwd"));
    let entry = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .unwrap_or_else(|| panic!("no {user} in {passwd}"));
    let f: Vec<&str> = entry.split(':').collect();
    assert!(
        f[2].parse::<u32>().unwrap() < 1000,
        "a system user: {entry}"
    );
    assert!(f[6].ends_with("nologin"), "{entry}");

    let st = Command::new(tmpfiles_bin)
        .arg(format!("--root={}", root.display()))
        .arg("--create")
        .arg(contrib("portnanny.tmpfiles.conf"))
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-tmpfiles");
    assert!(st.status.success(), "{st:?}");
    let made = root.join(chroot.trim_start_matches('/'));
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(&made).expect("the chroot directory");
    assert!(
        m.is_dir() && m.uid() == 0 && m.mode() & 0o7777 == 0o755,
        "{m:?}"
    );
    // The daemon's own check (-C as root checks the chroot directory, H003).
    s.write("nanny-rules", "all: ALL\n");
    s.write("nanny-actions", "all: msg hello%(nl)s\n");
    let conf = s.write(
        "nanny.conf",
        &format!(
            "rulefile nanny-rules\nactionfile nanny-actions\nlisten 4040@127.0.0.1\n\
             privsepuser nobody\nchrootdir {}\n",
            made.display()
        ),
    );
    let (code, out, err) = Nanny::run_once(&["-C", &conf.to_string_lossy()], IO_TIMEOUT);
    assert_eq!(code, Some(0), "-C on the tmpfiles chroot: {out}{err}");
}

// ---------------------------------------------------------------------------------------------
// A daemon started under a wrapper (systemd-socket-activate) or with extra variables
// ---------------------------------------------------------------------------------------------

/// A `portnanny` this file started; stopped on drop (TERM, then KILL), with every descendant
/// it was seen with.
struct Run {
    child: Child,
    pid: i32,
    stderr: PathBuf,
    _dns: Option<DnsSandbox>,
    seen: std::cell::RefCell<BTreeMap<i32, u64>>,
}

impl Run {
    /// Starts `[prefix…] BIN ARGS… CONF` with PATH and `env` only; as root inside a private
    /// mount namespace whose resolv.conf names the harness's dnsmasq. Each wrapper execs the
    /// next, so the daemon keeps the child's pid (LISTEN_PID works).
    fn spawn(
        s: &Scratch,
        prefix: &[String],
        args: &[&str],
        conf: &Path,
        env: &[(&str, &str)],
    ) -> Run {
        let stderr = s.path("nanny.stderr");
        let errf = fs::File::create(&stderr).expect("create stderr file");
        let mut argv: Vec<String> = prefix.to_vec();
        argv.push(BIN.to_owned());
        argv.extend(args.iter().map(|a| a.to_string()));
        argv.push(conf.to_string_lossy().into_owned());
        let mut dns = None;
        let mut cmd = if is_root() {
            let d = start_dns_sandbox(s);
            let script = format!(
                "set -e\nmount --bind {} /etc/resolv.conf\nexec \"$@\"\n",
                d.resolv_conf.display()
            );
            dns = Some(d);
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                .arg(script)
                .arg("sh")
                .args(&argv);
            c
        } else {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        };
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(env.iter().copied())
            .current_dir(&s.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(errf));
        let child = cmd.spawn().expect("spawn portnanny");
        let pid = child.id() as i32;
        Run {
            child,
            pid,
            stderr,
            _dns: dns,
            seen: std::cell::RefCell::new(BTreeMap::new()),
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn note(&self) {
        let mut seen = self.seen.borrow_mut();
        for (p, st) in descendants(self.pid) {
            seen.insert(p, st);
        }
    }

    /// The worker of `role`, a child whose argv carries the hidden role argument.
    fn worker(&self, role: &str) -> Option<i32> {
        self.note();
        children_of(self.pid).into_iter().find(|&p| {
            let c = cmdline(p);
            c.iter().any(|a| a == "--privsep-role") && c.iter().any(|a| a == role)
        })
    }

    fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid), sig);
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for(timeout, || self.child.try_wait().ok().flatten())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.note();
        stop_child(&mut self.child);
        for (p, st) in self.seen.borrow().iter() {
            if proc_stat(*p).map(|(_, s)| s) == Some(*st) {
                let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
            }
        }
        if std::thread::panicking() {
            eprintln!("---- portnanny stderr ----\n{}\n---- end ----", self.log());
        }
    }
}

/// A datagram socket standing in for the service manager's notification socket.
struct NotifySocket {
    sock: UnixDatagram,
    /// Every message received, in order.
    got: Vec<String>,
}

impl NotifySocket {
    fn bind_path(p: &Path) -> NotifySocket {
        NotifySocket {
            sock: UnixDatagram::bind(p).expect("bind the notify socket"),
            got: Vec::new(),
        }
    }

    fn bind_abstract(name: &str) -> NotifySocket {
        let a = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
        NotifySocket {
            sock: UnixDatagram::bind_addr(&a).expect("bind the abstract notify socket"),
            got: Vec::new(),
        }
    }

    /// The next message within `timeout`.
    fn recv(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).ok()?;
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.got.push(m.clone());
                    return Some(m);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// The next message that is not a watchdog ping.
    fn next(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.recv(deadline.saturating_duration_since(Instant::now()))?;
            if m != "WATCHDOG=1" {
                return Some(m);
            }
        }
    }

    /// The next message (not a ping) for which `pred` holds.
    fn wait_until(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.next(deadline.saturating_duration_since(Instant::now()))?;
            if pred(&m) {
                return Some(m);
            }
        }
    }

    /// The next message with a line that starts with `prefix`.
    fn wait_for(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        self.wait_until(timeout, |m| m.lines().any(|l| l.starts_with(prefix)))
    }
}

fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn monotonic_usec() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `t`.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) },
        0
    );
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1000
}

/// The service environment as the `env` service printed it; none of systemd's variables.
fn assert_no_systemd_vars(env_text: &str, what: &str) {
    let env = parse_env(env_text);
    assert_eq!(
        env.get("PROTO").map(String::as_str),
        Some("TCP"),
        "{what}: {env_text}"
    );
    for v in SYSTEMD_VARS {
        assert!(!env.contains_key(v), "{what} inherited {v}: {env_text}");
    }
}

/// Workers start from an empty environment: none of systemd's variables either.
fn assert_workers_clean(r: &Run) {
    for role in ["classifier", "resolver"] {
        let pid = r.worker(role).unwrap_or_else(|| panic!("no {role}"));
        match fs::read(format!("/proc/{pid}/environ")) {
            Ok(b) => {
                let text = String::from_utf8_lossy(&b).replace('\0', "\n");
                for v in SYSTEMD_VARS {
                    assert!(!text.contains(&format!("{v}=")), "{role} has {v}: {text}");
                }
            }
            // Another user's non-dumpable process: only root can look.
            Err(e) => assert!(!is_root(), "/proc/{pid}/environ: {e}"),
        }
    }
}

/// Rules and actions whose one class runs `env`: the reply is the service's environment.
fn env_service() -> (String, String) {
    (
        "all: ALL\n".to_owned(),
        format!("all: run {}\n", env_path()),
    )
}

fn env_path() -> String {
    tool("env").map_or("/usr/bin/env".into(), |p| p.display().to_string())
}

fn env_reply(addr: SocketAddr, timeout: Duration) -> String {
    fetch(Ipv4Addr::LOCALHOST, addr, timeout).text()
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

// ---------------------------------------------------------------------------------------------
// Socket activation
// ---------------------------------------------------------------------------------------------

#[test]
fn socket_activation_serves_inherited_and_own_ports() {
    let test = "socket_activation_serves_inherited_and_own_ports";
    let Some(ssa) = skip_without(test, "systemd-socket-activate") else {
        return;
    };
    let s = Scratch::new("sd-activate");
    let (rules, actions) = env_service();
    let mut setup = Setup::new(&rules, &actions);
    let (p1, p2, p3, trap) = (setup.port, free_port(), free_port(), free_port());
    setup.extra_listens = vec![format!("{p2}@127.0.0.1"), format!("{p3}@127.0.0.1")];
    s.write("nanny-rules", &rules);
    s.write("nanny-actions", &actions);
    let conf = s.write(
        "nanny.conf",
        &format!("{}trap tcp {trap}@127.0.0.1\n", setup.conf_text(&s)),
    );
    // The notification socket in the abstract namespace, as systemd's own is.
    let name = format!("portnanny-test-{}-{p1}", std::process::id());
    let mut notify = NotifySocket::bind_abstract(&name);
    let notify_var = format!("NOTIFY_SOCKET=@{name}");
    // Ports 1 and 2 are handed over; port 3 portnanny binds itself.
    let prefix: Vec<String> = vec![
        ssa.to_string_lossy().into_owned(),
        format!("--listen=127.0.0.1:{p1}"),
        format!("--listen=127.0.0.1:{p2}"),
        format!("--listen=127.0.0.1:{trap}"),
        "--fdname=first:second:trap".to_owned(),
        format!("--setenv={notify_var}"),
    ];
    let r = Run::spawn(&s, &prefix, &["-v"], &conf, &[]);
    // systemd-socket-activate starts the daemon on the first connection; that connection
    // waits in the inherited socket's queue and is served.
    wait_for(START_TIMEOUT, || {
        fs::read_to_string(&r.stderr)
            .ok()
            .filter(|l| l.contains(&format!("127.0.0.1:{trap}")))
    })
    .unwrap_or_else(|| panic!("systemd-socket-activate did not listen: {}", r.log()));
    let first = env_reply(localhost(p1), START_TIMEOUT);
    assert!(
        first.contains(&format!("TCPLOCALPORT={p1}")),
        "the first connection, on an inherited socket: {first:?}; log:\n{}",
        r.log()
    );
    assert_no_systemd_vars(&first, "a service");
    let ready = notify
        .wait_for("READY=1", START_TIMEOUT)
        .unwrap_or_else(|| panic!("no READY=1 on @{name}; log:\n{}", r.log()));
    assert!(field(&ready, "STATUS").is_some(), "{ready}");
    for p in [p2, p3] {
        let reply = env_reply(localhost(p), IO_TIMEOUT);
        assert!(
            reply.contains(&format!("TCPLOCALPORT={p}")),
            "port {p}: {reply:?}"
        );
    }
    let log = r.log();
    for want in [
        format!("socket activation: fd 3 (\"first\"), tcp 127.0.0.1:{p1} serves `listen {p1}@127.0.0.1`"),
        format!("socket activation: fd 4 (\"second\"), tcp 127.0.0.1:{p2} serves `listen {p2}@127.0.0.1`"),
        format!("socket activation: fd 5 (\"trap\"), tcp 127.0.0.1:{trap} serves `trap tcp {trap}@127.0.0.1`"),
    ] {
        assert!(log.contains(&want), "no {want:?} in the log:\n{log}");
    }
    // Port 3 was bound by portnanny: its listener is not among fds 3 and 4.
    assert!(is_listening(Ipv4Addr::LOCALHOST, p3));
    assert_workers_clean(&r);
}

#[test]
fn socket_activation_mismatch_is_a_clear_error() {
    let test = "socket_activation_mismatch_is_a_clear_error";
    let Some(ssa) = skip_without(test, "systemd-socket-activate") else {
        return;
    };
    let s = Scratch::new("sd-mismatch");
    let setup = Setup::new("all: ALL\n", "all: msg hello%(nl)s\n");
    s.write("nanny-rules", &setup.rules);
    s.write("nanny-actions", &setup.actions);
    let conf = s.write("nanny.conf", &setup.conf_text(&s));
    let stray = free_port();
    let prefix: Vec<String> = vec![
        ssa.to_string_lossy().into_owned(),
        format!("--listen=127.0.0.1:{stray}"),
        "--fdname=stray".to_owned(),
    ];
    let mut r = Run::spawn(&s, &prefix, &[], &conf, &[]);
    wait_for(START_TIMEOUT, || {
        fs::read_to_string(&r.stderr)
            .ok()
            .filter(|l| l.contains(&format!("127.0.0.1:{stray}")))
    })
    .unwrap_or_else(|| panic!("systemd-socket-activate did not listen: {}", r.log()));
    // The connection that starts the daemon; it is never served.
    let reply = fetch(Ipv4Addr::LOCALHOST, localhost(stray), START_TIMEOUT);
    assert!(reply.data.is_empty(), "{:?}", reply.text());
    let st = r
        .wait_exit(START_TIMEOUT)
        .unwrap_or_else(|| panic!("still running; log:\n{}", r.log()));
    assert_eq!(st.code(), Some(100), "log:\n{}", r.log());
    let log = r.log();
    let want = format!(
        "socket activation: inherited fd 3 (\"stray\"), tcp 127.0.0.1:{stray} matches no listen \
         or trap line of nanny.conf (nanny.conf has `listen {}@127.0.0.1`)",
        setup.port
    );
    assert!(log.contains(&want), "no {want:?} in the log:\n{log}");
    // It bound nothing of its own before refusing.
    assert!(!is_listening(Ipv4Addr::LOCALHOST, setup.port));
}

// ---------------------------------------------------------------------------------------------
// sd_notify
// ---------------------------------------------------------------------------------------------

/// One-line rules that make the classifier take a while to load the policy, so a READY=1
/// sent before it has would be caught (the log line of the load is checked at READY time).
fn slow_rules(n: u32) -> String {
    let mut r = String::with_capacity(n as usize * 24);
    for i in 0..n {
        r.push_str(&format!(
            "r{i}: 10.{}.{}.{}\n",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        ));
    }
    r.push_str("all: ALL\n");
    r
}

#[test]
fn notify_ready_reload_status_watchdog_stopping() {
    let s = Scratch::new("sd-notify");
    let rules = slow_rules(20_000);
    let actions = env_service().1;
    let mut setup = Setup::new(&rules, &actions);
    let p2 = free_port();
    setup.extra_listens = vec![format!("{p2}@127.0.0.1")];
    s.write("nanny-rules", &rules);
    s.write("nanny-actions", &actions);
    let conf = s.write("nanny.conf", &setup.conf_text(&s));
    let sock_path = s.path("notify.sock");
    let mut notify = NotifySocket::bind_path(&sock_path);
    // 400 ms: a ping every 200 ms.
    let mut r = Run::spawn(
        &s,
        &[],
        &["-V", "2"],
        &conf,
        &[
            ("NOTIFY_SOCKET", &sock_path.to_string_lossy()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );

    // READY=1 once the classifier has loaded the policy; then every port answers at once.
    let ready = notify
        .wait_for("READY=1", START_TIMEOUT)
        .unwrap_or_else(|| panic!("no READY=1; log:\n{}", r.log()));
    assert!(
        r.log().contains("classifier loaded policy generation 1"),
        "READY=1 before the classifier loaded the policy; log:\n{}",
        r.log()
    );
    assert!(r.worker("classifier").is_some() && r.worker("resolver").is_some());
    let status = field(&ready, "STATUS").unwrap_or_default();
    assert!(status.contains("policy generation 1"), "{ready}");
    for p in [setup.port, p2] {
        let reply = env_reply(localhost(p), Duration::from_secs(5));
        assert!(
            reply.contains(&format!("TCPLOCALPORT={p}")),
            "port {p} after READY: {reply:?}"
        );
        assert_no_systemd_vars(&reply, "a service");
    }
    assert_workers_clean(&r);

    // STATUS= follows the counts (two connections so far).
    notify
        .wait_until(Duration::from_secs(5), |m| {
            field(m, "STATUS").is_some_and(|s| s.contains("2 connections since start"))
        })
        .unwrap_or_else(|| panic!("no STATUS= with the count; got {:?}", notify.got));

    // The watchdog: every 200 ms, counted over 3 s (15 expected; pinging at the full
    // interval would give 7, pinging every loop turn far more).
    let before = notify.got.len();
    let window = Instant::now() + Duration::from_secs(3);
    while Instant::now() < window {
        notify.recv(window.saturating_duration_since(Instant::now()));
    }
    let pings = notify.got[before..]
        .iter()
        .filter(|m| *m == "WATCHDOG=1")
        .count();
    assert!((11..=18).contains(&pings), "{pings} pings in 3 s");

    // SIGHUP: RELOADING=1 with the monotonic clock, then READY=1 once the classifier has the
    // new generation.
    let t0 = monotonic_usec();
    r.signal(Signal::SIGHUP);
    let reloading = notify
        .wait_for("RELOADING=1", IO_TIMEOUT)
        .unwrap_or_else(|| panic!("no RELOADING=1 after SIGHUP; log:\n{}", r.log()));
    let t1 = monotonic_usec();
    assert!(reloading.starts_with("RELOADING=1\n"), "{reloading}");
    let usec: u64 = field(&reloading, "MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading}"));
    assert!((t0..=t1).contains(&usec), "{t0} <= {usec} <= {t1}");
    let ready = notify
        .wait_for("READY=1", START_TIMEOUT)
        .unwrap_or_else(|| panic!("no READY=1 after the reload; log:\n{}", r.log()));
    assert!(
        r.log().contains("classifier loaded policy generation 2"),
        "READY=1 before the classifier loaded the reloaded policy; log:\n{}",
        r.log()
    );
    assert!(ready.contains("policy generation 2"), "{ready}");

    // SIGTERM: STOPPING=1, then exit 0.
    r.signal(Signal::SIGTERM);
    let stopping = notify
        .wait_for("STOPPING=1", IO_TIMEOUT)
        .unwrap_or_else(|| panic!("no STOPPING=1 after SIGTERM; log:\n{}", r.log()));
    assert!(stopping.starts_with("STOPPING=1"), "{stopping}");
    let st = r.wait_exit(IO_TIMEOUT).expect("exit after SIGTERM");
    assert_eq!(st.code(), Some(0));
}
