//! identd against a real one: Debian's oidentd (unpacked by .ci/install-test-deps, never
//! installed) answers portnanny's queries by looking the connection's owner up in the kernel.
//! That checks what the suite's own test identd cannot: the query leaves from the address the
//! client connected to (oidentd matches the connection by both of its ends and says NO-USER
//! otherwise), the port pair is the right way round, oidentd's reply (no spaces around its
//! colons) parses, and two users' connections from one address get two answers.
//!
//! Runs as root: oidentd binds 127.87.0.1:113 and then runs as nobody; the first client runs as
//! the suite's test user through setpriv and netcat. Loopback only; the daemon runs in the
//! harness's private mount namespace and the rules cause no DNS query. oidentd is stopped by
//! pid.

mod util;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

const OIDENTD: &str = "/var/cache/portnanny-tests/oidentd/usr/sbin/oidentd";
const OIDENTD_CONF: &str = "/var/cache/portnanny-tests/oidentd/etc/oidentd.conf";
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 87, 0, 1);
const T: Duration = Duration::from_secs(10);

/// A child stopped by pid on drop.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) for a child to exit and returns its stdout; kills it past `T`.
fn output_within(mut child: Child) -> String {
    let deadline = Instant::now() + T;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => break,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("client did not finish within {T:?}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        std::io::Read::read_to_string(&mut o, &mut out).expect("read client output");
    }
    out
}

#[test]
fn oidentd_names_the_user_who_owns_the_connection() {
    if skip_unless_root("oidentd_names_the_user_who_owns_the_connection") {
        return;
    }
    if !Path::new(OIDENTD).exists() {
        println!("skipped: needs {OIDENTD} (.ci/install-test-deps unpacks it)");
        return;
    }
    ensure_test_user();
    let s = Scratch::new("identd-oidentd");
    let oidentd_log = s.dir.join("oidentd.log");
    let _oidentd = Stopped(
        Command::new(OIDENTD)
            .args(["-i", "-S", "-a", "127.87.0.1", "-p", "113"])
            .args(["-u", "nobody", "-g", "nogroup", "-C", OIDENTD_CONF])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&oidentd_log).expect("oidentd log"))
            .spawn()
            .expect("start oidentd"),
    );
    let identd = SocketAddr::from((CLIENT, 113));
    let deadline = Instant::now() + T;
    while TcpStream::connect_timeout(&identd, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "oidentd did not listen on {identd}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let n = Nanny::start(
        &s,
        Setup::new(
            &format!("who: identd: {TEST_USER}\nother: ALL\n"),
            "who: msg hello %(identd)s%(nl)s : log ident=%(identd)s\n\
             other: msg other %(identd)s%(nl)s\n",
        )
        .conf("identdtimeout 5000ms"),
    );
    let mark = n.mark();
    // The test user's connection, from 127.87.0.1.
    let client = Command::new("setpriv")
        .args([
            &format!("--reuid={TEST_USER}"),
            &format!("--regid={TEST_USER}"),
            "--clear-groups",
            "nc",
            "-s",
            "127.87.0.1",
            "-w",
            "10",
            "127.0.0.1",
            &n.addr.port().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start nc as the test user");
    let got = output_within(client);
    let oidentd_said = || std::fs::read_to_string(&oidentd_log).unwrap_or_default();
    assert_eq!(
        got,
        format!("hello {TEST_USER}\n"),
        "log:\n{}\noidentd:\n{}",
        n.log(),
        oidentd_said()
    );
    n.expect_log(mark, &[&format!("ident={TEST_USER}")]);
    // The same address, another owner: root's own connection.
    assert_eq!(
        n.fetch_from(CLIENT).text(),
        "other root\n",
        "oidentd:\n{}",
        oidentd_said()
    );
}
