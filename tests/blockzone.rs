//! `blockzone` shared through DNS (issue 10): one portnanny blocks a scanner and keeps its
//! blocked set as rbldnsd data; a real rbldnsd serves that file; a second portnanny, whose
//! rules say `dnsbl: bl.test`, then refuses the scanner too, while a bystander is served by
//! both.
//!
//! Runs as root in a private mount namespace (see `dnsenv`) whose resolv.conf names the
//! rbldnsd this test starts on 127.55.32.1:53; rbldnsd is the Debian package's binary, which
//! .ci/install-test-deps unpacks without installing the package (its socket unit would want
//! the host's port 53). Skipped with a note when it is absent.

mod dnsenv;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dnsenv::{fetch, fetch_from, isolate, ns_addr, Nameserver, Records};

const RBLDNSD: &str = "/var/cache/portnanny-tests/rbldnsd/usr/sbin/rbldnsd";
const T: Duration = Duration::from_secs(10);

/// rbldnsd, stopped by pid on drop.
struct Rbldnsd(std::process::Child);

impl Drop for Rbldnsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_blockzone_served_by_rbldnsd_makes_another_instance_refuse_the_scanner() {
    if !std::path::Path::new(RBLDNSD).exists() {
        println!("skipped: needs {RBLDNSD} (.ci/install-test-deps unpacks it)");
        return;
    }
    let ns = ns_addr(32);
    let Some(env) = isolate(
        "a_blockzone_served_by_rbldnsd_makes_another_instance_refuse_the_scanner",
        ns,
        Nameserver::External(Records::new()),
    ) else {
        return;
    };
    let zone = env.dir.join("blocked.zone");
    let trap = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("addr").port()
    };
    // Instance A: a trap that blocks at once, the set kept as zone data.
    let a = env.start_nanny(
        "banned: blocked\nscan: trap\nok: ALL\n",
        "scan: block 1h : drop\nbanned: drop\nok: msg hello a%(nl)s\n",
        &format!(
            "trap tcp {trap}@127.0.0.1\nblockzone {} bl.test\nneverblock 127.0.0.1",
            zone.display()
        ),
    );
    let scanner = "127.66.0.5";
    let bystander = "127.66.0.9";
    assert_eq!(
        fetch_from(bystander, a.port, T).0,
        "hello a\n",
        "{}",
        a.log()
    );
    // Before anything is blocked the zone exists (empty) for rbldnsd to load.
    let _ = fetch(scanner, SocketAddr::from((Ipv4Addr::LOCALHOST, trap)), T);
    let blocked = {
        let end = Instant::now() + T;
        loop {
            let z = std::fs::read_to_string(&zone).unwrap_or_default();
            if z.contains(scanner) || Instant::now() > end {
                break z;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(
        blocked.contains(&format!("{scanner} :127.0.0.2:")),
        "{blocked}\n{}",
        a.log()
    );

    let dir = env.dir.to_string_lossy().into_owned();
    let _rbl = Rbldnsd(
        Command::new(RBLDNSD)
            .args(["-n", "-u", "nobody", "-w", &dir, "-c", "1", "-b"])
            .arg(format!("{ns}/53"))
            .arg("bl.test:ip4set:blocked.zone")
            .arg("bl.test:ip6trie:blocked.zone.ip6")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(env.dir.join("rbldnsd.log")).expect("log"))
            .spawn()
            .expect("rbldnsd"),
    );
    // rbldnsd answers before B asks (B's resolver would cache an early "not listed").
    let served = {
        let end = Instant::now() + T;
        loop {
            if listed_by(ns, "5.0.66.127.bl.test") || Instant::now() > end {
                break listed_by(ns, "5.0.66.127.bl.test");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(
        served,
        "rbldnsd does not list the scanner:\n{}",
        std::fs::read_to_string(env.dir.join("rbldnsd.log")).unwrap_or_default()
    );
    // Instance B knows nothing of A but the zone.
    let b = env.start_another_nanny(
        "b",
        "listed: dnsbl: bl.test\nok: ALL\n",
        "listed: msg refused by bl.test%(nl)s\nok: msg hello b%(nl)s\n",
        "dnstimeout 2s",
    );
    let refused = {
        let end = Instant::now() + T;
        loop {
            let r = fetch_from(scanner, b.port, T).0;
            if r == "refused by bl.test\n" || Instant::now() > end {
                break r;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert_eq!(refused, "refused by bl.test\n", "{}", b.log());
    assert_eq!(
        fetch_from(bystander, b.port, T).0,
        "hello b\n",
        "{}",
        b.log()
    );
}

/// Whether the nameserver at `ns`:53 answers an A query for `name` with 127.0.0.2.
fn listed_by(ns: Ipv4Addr, name: &str) -> bool {
    let mut q = vec![0x50, 0x4e, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).unwrap_or(0));
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let Ok(s) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.send_to(&q, SocketAddr::from((IpAddr::V4(ns), 53)))
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 512];
    match s.recv(&mut buf) {
        Ok(n) => buf.get(..n).is_some_and(|r| r.ends_with(&[127, 0, 0, 2])),
        Err(_) => false,
    }
}
