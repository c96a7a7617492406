//! The PROXY protocol and the listen options (issue 13, extensions), end to end.
//!
//! Runs in the test process. It starts the real `portnanny` on 127.0.0.1 and, for the
//! HAProxy tests (root only, and only when the `haproxy` binary is installed, as
//! .ci/install-test-deps does), a real HAProxy in the foreground with its own configuration
//! file in the scratch directory, sending PROXY v1 (`send-proxy`) and v2 (`send-proxy-v2`) to
//! portnanny from 127.0.0.9. Clients connect from chosen 127/8 addresses; the other tests speak
//! the protocol themselves. Every wait is bounded; only loopback is used. Processes started
//! here are stopped on drop (util's `Daemon` and `Nanny`).

mod util;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use util::*;

/// The load balancer's address: the only one the proxy listens take headers from.
const LB: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

fn ip(a: u8, b: u8, c: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, a, b, c)
}

/// A service that prints its environment, one KEY=VALUE per line.
fn env_script(s: &Scratch) -> String {
    s.script("env.sh", "#!/bin/sh\nexec env\n")
        .display()
        .to_string()
}

/// A service that announces itself and holds the connection until the client closes.
fn hold_script(s: &Scratch) -> String {
    s.script("hold.sh", "#!/bin/sh\necho held\nexec cat >/dev/null\n")
        .display()
        .to_string()
}

/// A service that echoes the first line it reads with the addresses it was given.
fn echo_script(s: &Scratch) -> String {
    s.script(
        "echo.sh",
        "#!/bin/sh\nIFS= read -r line\n\
         echo \"got $line from $TCPREMOTEIP:$TCPREMOTEPORT to $TCPLOCALIP:$TCPLOCALPORT\"\n",
    )
    .display()
    .to_string()
}

/// A running HAProxy with a v1 and a v2 frontend in front of `backend_port`.
struct Haproxy {
    _daemon: Daemon,
    v1: SocketAddr,
    v2: SocketAddr,
}

/// The haproxy binary: Debian's (in /usr/sbin, which a test's PATH may lack), else PATH's.
fn haproxy_bin() -> Option<&'static str> {
    ["/usr/sbin/haproxy", "haproxy"].into_iter().find(|b| {
        Command::new(b)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

impl Haproxy {
    fn start(s: &Scratch, backend_port: u16) -> Haproxy {
        let (p1, p2) = (free_port(), free_port());
        let cfg = format!(
            "global\n    maxconn 200\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    \
             timeout server 30s\n\
             frontend v1\n    bind 127.0.0.1:{p1}\n    default_backend v1\n\
             backend v1\n    server n1 127.0.0.1:{backend_port} source {LB} send-proxy\n\
             frontend v2\n    bind 127.0.0.1:{p2}\n    default_backend v2\n\
             backend v2\n    server n2 127.0.0.1:{backend_port} source {LB} send-proxy-v2\n"
        );
        let path = s.write("haproxy.cfg", &cfg);
        let out = std::fs::File::create(s.path("haproxy.out")).expect("haproxy.out");
        let err = std::fs::File::create(s.path("haproxy.err")).expect("haproxy.err");
        // -db: stay in the foreground (no daemon mode, no master process).
        let bin = haproxy_bin().expect("haproxy (checked by the caller)");
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .current_dir(&s.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn haproxy");
        let daemon = Daemon {
            child,
            name: "haproxy",
        };
        let pid = daemon.pid();
        let up = wait_for(START_TIMEOUT, || {
            if is_listening(Ipv4Addr::LOCALHOST, p1) && is_listening(Ipv4Addr::LOCALHOST, p2) {
                return Some(true);
            }
            (!alive(pid)).then_some(false)
        });
        assert_eq!(
            up,
            Some(true),
            "haproxy did not start; its stderr:\n{}",
            std::fs::read_to_string(s.path("haproxy.err")).unwrap_or_default()
        );
        let at = |p| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), p);
        Haproxy {
            _daemon: daemon,
            v1: at(p1),
            v2: at(p2),
        }
    }
}

fn skip_without_haproxy(test: &str) -> bool {
    if skip_unless_root(test) {
        return true;
    }
    if haproxy_bin().is_none() {
        eprintln!("{test}: skipped: haproxy is not installed (.ci/install-test-deps installs it)");
        return true;
    }
    false
}

/// Connects from `src` to `dst` and reads the first line (the stream stays open).
fn first_line(src: Ipv4Addr, dst: SocketAddr) -> (String, TcpStream) {
    let mut c = connect_from(src, dst, IO_TIMEOUT).expect("connect");
    let r = read_line(&mut c, IO_TIMEOUT);
    (r.text(), c)
}

#[test]
fn haproxy_v1_and_v2_clients_are_the_peers() {
    if skip_without_haproxy("haproxy_v1_and_v2_clients_are_the_peers") {
        return;
    }
    let s = Scratch::new("proxy-haproxy");
    let env = env_script(&s);
    let hold = hold_script(&s);
    let port = free_port();
    // The load balancer's own address has a class: a rule that saw it would pick `lb`.
    let rules = "viaclient: 127.0.5.7\nlb: 127.0.0.9\nheld: 127.0.6.\nother: ALL\n";
    let actions = format!(
        "viaclient: run {env}\nother: run {env}\nlb: msg the load balancer%(nl)s\n\
         held: run {hold} : ipmax 1 : failmsg full %(ip)s%(nl)s\n"
    );
    let mut setup = Setup::new(rules, &actions).arg("-v");
    setup
        .extra_listens
        .push(format!("{port}@127.0.0.1 proxy from {LB}"));
    let n = Nanny::start(&s, setup);
    n.wait_listening(port);
    let hp = Haproxy::start(&s, port);

    for (version, front) in [("v1", hp.v1), ("v2", hp.v2)] {
        let mark = n.mark();
        let mut c = connect_from(ip(0, 5, 7), front, IO_TIMEOUT).expect("connect");
        let client_port = c.local_addr().expect("local addr").port();
        let r = read_all(&mut c, IO_TIMEOUT);
        let e = parse_env(&r.text());
        let get = |k: &str| e.get(k).cloned().unwrap_or_default();
        assert_eq!(
            get("NANNY_CLASS"),
            "viaclient",
            "{version}: rules match the client's address; env:\n{}\nlog:\n{}",
            r.text(),
            n.log()
        );
        assert_eq!(get("TCPREMOTEIP"), "127.0.5.7", "{version}");
        assert_eq!(get("TCPREMOTEPORT"), client_port.to_string(), "{version}");
        assert_eq!(get("TCPLOCALIP"), "127.0.0.1", "{version}");
        assert_eq!(
            get("TCPLOCALPORT"),
            front.port().to_string(),
            "{version}: the local address is the one the client reached on the load balancer"
        );
        let line = n.expect_log(mark, &["verdict", "peer=127.0.5.7:", "via 127.0.0.9:"]);
        assert!(
            line.contains(&format!("local=127.0.0.1:{}", front.port()))
                && line.contains("class=viaclient"),
            "{version}: {line}"
        );

        // Another client is not the load balancer either.
        let r = fetch(ip(0, 5, 8), front, IO_TIMEOUT);
        let e = parse_env(&r.text());
        assert_eq!(
            e.get("NANNY_CLASS").map(String::as_str),
            Some("other"),
            "{version}: {}",
            r.text()
        );
        assert_eq!(e.get("TCPREMOTEIP").map(String::as_str), Some("127.0.5.8"));
    }

    // ipmax counts the clients, not the load balancer they all come through.
    let (a, _ca) = first_line(ip(0, 6, 1), hp.v2);
    assert_eq!(a, "held\n", "log:\n{}", n.log());
    let (b, _cb) = first_line(ip(0, 6, 1), hp.v1);
    assert_eq!(
        b, "full 127.0.6.1\n",
        "a second connection from one client is over its ipmax"
    );
    let (c, _cc) = first_line(ip(0, 6, 2), hp.v1);
    assert_eq!(c, "held\n", "another client has its own count");
    let (d, _cd) = first_line(ip(0, 6, 3), hp.v2);
    assert_eq!(d, "held\n");
    assert!(
        !n.log().contains("the load balancer"),
        "no rule saw 127.0.0.9"
    );
}

/// Writes `bytes` from `src` to the proxy listen and reads what comes back.
fn send(src: Ipv4Addr, dst: SocketAddr, bytes: &[u8]) -> Reply {
    let mut c = connect_from(src, dst, IO_TIMEOUT).expect("connect");
    c.write_all(bytes).expect("write");
    read_all(&mut c, IO_TIMEOUT)
}

fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(cmd);
    h.push(fam);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

#[test]
fn bad_or_missing_headers_are_dropped_and_good_ones_served() {
    let s = Scratch::new("proxy-direct");
    let echo = echo_script(&s);
    let port = free_port();
    let mut setup = Setup::new("c: ALL\n", &format!("c: run {echo}\n"));
    setup
        .extra_listens
        .push(format!("{port}@127.0.0.1 proxy from 127.0.0.10,{LB}"));
    let n = Nanny::start(&s, setup);
    n.wait_listening(port);
    let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);

    // v1, with the client's first line in the same write: it reaches the service whole.
    let r = send(LB, dst, b"PROXY TCP4 127.0.7.7 192.0.2.1 5555 25\r\nping\n");
    assert_eq!(
        r.text(),
        "got ping from 127.0.7.7:5555 to 192.0.2.1:25\n",
        "log:\n{}",
        n.log()
    );

    // v2 with a TLV, in two writes 300 ms apart, the client's line right behind it.
    let mut body = vec![127, 0, 7, 8, 192, 0, 2, 1, 0x15, 0xb3, 0, 110];
    body.extend_from_slice(&[0x05, 0, 2, b'i', b'd']);
    let header = v2(0x21, 0x11, &body);
    let mut c = connect_from(LB, dst, IO_TIMEOUT).expect("connect");
    c.write_all(&header[..10]).expect("write");
    thread::sleep(Duration::from_millis(300));
    let mut rest = header[10..].to_vec();
    // Bytes that look like another header are the client's: they reach the service.
    rest.extend_from_slice(b"PROXY pong\n");
    c.write_all(&rest).expect("write");
    let r = read_all(&mut c, IO_TIMEOUT);
    assert_eq!(
        r.text(),
        "got PROXY pong from 127.0.7.8:5555 to 192.0.2.1:110\n",
        "log:\n{}",
        n.log()
    );

    // v2 LOCAL (a health check): served with the connection's own addresses.
    let mut local = v2(0x20, 0x00, &[]);
    local.extend_from_slice(b"check\n");
    let mut c = connect_from(LB, dst, IO_TIMEOUT).expect("connect");
    let lb_port = c.local_addr().expect("local").port();
    c.write_all(&local).expect("write");
    let r = read_all(&mut c, IO_TIMEOUT);
    assert_eq!(
        r.text(),
        format!("got check from 127.0.0.9:{lb_port} to 127.0.0.1:{port}\n")
    );

    // Not a listed load balancer: dropped before a byte is read.
    let mark = n.mark();
    let r = send(
        ip(0, 0, 11),
        dst,
        b"PROXY TCP4 127.0.7.7 192.0.2.1 5555 25\r\nping\n",
    );
    assert!(r.closed_silently(), "{r:?}");
    n.expect_log(
        mark,
        &["drop conn=", "peer=127.0.0.11:", "not a load balancer"],
    );

    // A plain client on the proxy listen.
    let mark = n.mark();
    let r = send(LB, dst, b"hello\r\n");
    assert!(r.closed_silently(), "{r:?}");
    n.expect_log(
        mark,
        &["via 127.0.0.9:", "no PROXY header (the connection starts"],
    );

    // Malformed, v1 and v2.
    for bad in [
        b"PROXY TCP4 127.0.7.7 ::1 1 2\r\nping\n".to_vec(),
        v2(0x21, 0x11, &[1, 2, 3]),
    ] {
        let mark = n.mark();
        let r = send(LB, dst, &bad);
        assert!(r.closed_silently(), "{r:?}");
        n.expect_log(mark, &["via 127.0.0.9:", "malformed PROXY header"]);
    }

    // Too slow: half a header, then nothing. Dropped at the 5 s deadline, not before.
    let mark = n.mark();
    let start = Instant::now();
    let r = send(LB, dst, b"PROXY TCP4 ");
    let took = start.elapsed();
    assert!(r.closed_silently(), "{r:?}");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(9),
        "dropped after {took:?}"
    );
    n.expect_log(mark, &["via 127.0.0.9:", "no PROXY header within 5 s"]);

    // Still serving, from the other listed address too.
    let r = send(
        ip(0, 0, 10),
        dst,
        b"PROXY TCP6 2001:db8::7 2001:db8::1 7 8\r\nagain\n",
    );
    assert_eq!(r.text(), "got again from 2001:db8::7:7 to 2001:db8::1:8\n");
    // And the plain listen never wanted a header.
    let mut c = connect_from(ip(0, 0, 12), n.addr, IO_TIMEOUT).expect("connect");
    let client_port = c.local_addr().expect("local").port();
    c.write_all(b"plain\n").expect("write");
    let r = read_all(&mut c, IO_TIMEOUT);
    assert_eq!(
        r.text(),
        format!(
            "got plain from 127.0.0.12:{client_port} to 127.0.0.1:{}\n",
            n.addr.port()
        )
    );
}

/// A service that reports TCP_NODELAY and SO_KEEPALIVE of its fd 0 (perl is in every Debian
/// system: perl-base is essential).
fn sockopts_script(s: &Scratch) -> String {
    s.script(
        "sockopts.sh",
        "#!/bin/sh\nexec perl -e '\n\
         use Socket qw(IPPROTO_TCP TCP_NODELAY SOL_SOCKET SO_KEEPALIVE);\n\
         my $nd = getsockopt(STDIN, IPPROTO_TCP, TCP_NODELAY);\n\
         my $ka = getsockopt(STDIN, SOL_SOCKET, SO_KEEPALIVE);\n\
         defined $nd && defined $ka or die \"getsockopt: $!\\n\";\n\
         printf \"nodelay=%d keepalive=%d\\n\", unpack(\"i\", $nd) ? 1 : 0, unpack(\"i\", $ka) ? 1 : 0;\n\
         '\n",
    )
    .display()
    .to_string()
}

/// The Send-Q column of `ss -ltn` for the listening socket on 127.0.0.1:`port` (its backlog).
fn listen_backlog(port: u16) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(3) == Some(&format!("127.0.0.1:{port}").as_str()))
        .and_then(|f| f.get(2).and_then(|q| q.parse().ok()))
}

#[test]
fn listen_options_reach_the_accepted_socket() {
    let s = Scratch::new("proxy-listenopts");
    let opts = sockopts_script(&s);
    let port = free_port();
    let mut setup = Setup::new("c: ALL\n", &format!("c: run {opts}\n"));
    setup
        .extra_listens
        .push(format!("{port}@127.0.0.1 keepalive backlog 77 nodelay"));
    let n = Nanny::start(&s, setup);
    n.wait_listening(port);
    let with = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let r = fetch(ip(0, 0, 20), with, IO_TIMEOUT);
    assert_eq!(r.text(), "nodelay=1 keepalive=1\n", "log:\n{}", n.log());
    let r = fetch(ip(0, 0, 20), n.addr, IO_TIMEOUT);
    assert_eq!(
        r.text(),
        "nodelay=0 keepalive=0\n",
        "a plain listen sets neither"
    );
    assert_eq!(listen_backlog(port), Some(77), "backlog 77");
    assert_eq!(
        listen_backlog(n.addr.port()),
        Some(1024),
        "a plain listen keeps the default backlog"
    );
}

#[test]
fn check_mode_reports_bad_listen_options_with_positions() {
    let s = Scratch::new("proxy-check");
    let mut setup = Setup::new("c: ALL\n", "c: msg hi\n");
    setup
        .extra_listens
        .push("2@127.0.0.1 proxy from 127.0.0.9,lb.example nodelay nodelay backlog 0".into());
    let conf = s.write("nanny.conf", &setup.conf_text(&s));
    s.write("nanny-rules", &setup.rules);
    s.write("nanny-actions", &setup.actions);
    let (code, out, err) = Nanny::run_once(&["-C", &conf.to_string_lossy()], IO_TIMEOUT);
    let all = format!("{out}{err}");
    assert_eq!(code, Some(1), "-C with errors exits 1: {all}");
    let at = |col: u32| format!("{}:5:{col}: error[C020]", conf.display());
    for (col, what) in [
        (41, "'lb.example' is not an IP address"),
        (60, "'nodelay' is given twice"),
        (
            76,
            "backlog must be a whole number from 1 to 65535, not '0'",
        ),
    ] {
        let want = at(col);
        assert!(
            all.lines().any(|l| l.contains(&want) && l.contains(what)),
            "expected {want} ... {what} in:\n{all}"
        );
    }
}
