//! Trap ports and the blocked set (issue 10, PortSentry's tcp and udp modes) end to end: a
//! full connect to a `trap tcp` port and a datagram to a `trap udp` port are trap hits for the
//! rules; `hits:` counts distinct trapped ports; `block` blocks the address (blockfile,
//! historyfile, hosts.deny, blockcmd exactly once) and `blocked` then refuses it on every
//! port; a restart keeps the block; neverblock addresses are never blocked; other clients are
//! served throughout.
//!
//! Runs in the test process against the real daemon on loopback addresses only.

mod util;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use util::*;

fn ip(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 62, 0, d)
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

const RULES: &str = "banned: blocked\nscan: trap && hits: 2\ntrapped: trap\nok: ALL\n";
const ACTIONS: &str = "scan: block 1h : msg caught%(nl)s\ntrapped: msg banner%(nl)s\n\
                       banned: drop\nok: msg hello%(nl)s\n";

struct Ports {
    tcp: u16,
    udp: u16,
}

impl Ports {
    /// A free TCP port and a free UDP port on loopback.
    fn free() -> Ports {
        Ports {
            tcp: free_port(),
            udp: free_udp_port(),
        }
    }
}

fn setup(s: &Scratch, p: &Ports) -> Setup {
    let log = s.script(
        "blockcmd.sh",
        &format!(
            "#!/bin/sh\necho \"$@\" >> {}\n",
            s.path("cmds.log").display()
        ),
    );
    Setup::new(RULES, ACTIONS)
        .conf(&format!("trap tcp {}@127.0.0.1", p.tcp))
        .conf(&format!("trap udp {}@127.0.0.1", p.udp))
        .conf(&format!("blockfile {}", s.path("blocks").display()))
        .conf(&format!("historyfile {}", s.path("history").display()))
        .conf(&format!("hostsdeny {}", s.path("hosts.deny").display()))
        .conf(&format!(
            "blockcmd {} block %(ip)s %(port)s %(mode)s",
            log.display()
        ))
        .conf(&format!("unblockcmd {} unblock %(ip)s", log.display()))
        .conf("neverblock 127.62.0.1")
        .arg("-v")
}

fn trap_connect(src: Ipv4Addr, port: u16) -> String {
    let dst = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match connect_from(src, dst, IO_TIMEOUT) {
        Ok(mut c) => read_all(&mut c, IO_TIMEOUT).text(),
        Err(e) => format!("connect failed: {e}"),
    }
}

fn datagram(src: Ipv4Addr, port: u16) {
    let s = UdpSocket::bind((src, 0)).expect("bind udp");
    s.send_to(b"probe", (Ipv4Addr::LOCALHOST, port))
        .expect("send");
}

fn read(s: &Scratch, f: &str) -> String {
    std::fs::read_to_string(s.path(f)).unwrap_or_default()
}

/// The text of scratch file `f` once `ready` holds for it (bounded: 10 s), else what it holds.
fn wait_file(s: &Scratch, f: &str, ready: impl Fn(&str) -> bool) -> String {
    wait_for(Duration::from_secs(10), || {
        let c = read(s, f);
        ready(&c).then_some(c)
    })
    .unwrap_or_else(|| read(s, f))
}

#[test]
fn a_scanner_is_trapped_blocked_everywhere_and_stays_blocked_after_a_restart() {
    let s = Scratch::new("traps-block");
    let p = Ports::free();
    let n = Nanny::start(&s, setup(&s, &p));
    let scanner = ip(5);
    let bystander = ip(9);
    assert_eq!(n.fetch_from(bystander).text(), "hello\n", "{}", n.log());

    // One trapped port: the banner (PORT_BANNER), no block yet.
    assert_eq!(trap_connect(scanner, p.tcp), "banner\n", "{}", n.log());
    assert_eq!(
        n.fetch_from(scanner).text(),
        "hello\n",
        "not blocked after one port"
    );
    // A second, distinct trapped port (UDP): hits 2, blocked.
    let mark = n.mark();
    datagram(scanner, p.udp);
    let line = n.expect_log(mark, &["blocked 127.62.0.5"]);
    assert!(line.contains(&format!("port {} udp", p.udp)), "{line}");

    // Refused on every port, the listen port included; others keep being served.
    let r = n.fetch_from(scanner);
    assert!(r.closed_silently(), "a blocked address is dropped: {r:?}");
    assert_eq!(n.fetch_from(bystander).text(), "hello\n");

    // Everything that mirrors the set followed; the block command ran exactly once.
    assert!(
        read(&s, "blocks").contains("block 127.62.0.5 "),
        "{}",
        read(&s, "blocks")
    );
    assert!(read(&s, "history").contains(" block 127.62.0.5 "));
    assert_eq!(read(&s, "hosts.deny"), "ALL: 127.62.0.5 # portnanny\n");
    let cmds = wait_file(&s, "cmds.log", |c| !c.is_empty());
    assert_eq!(
        cmds,
        format!("block 127.62.0.5 {} udp\n", p.udp),
        "{}",
        n.log()
    );
    // More probes extend nothing and run nothing again.
    datagram(scanner, p.udp);
    assert_eq!(
        trap_connect(scanner, p.tcp),
        "",
        "blocked: no banner either"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(&s, "cmds.log").lines().count(), 1);

    // A restart restores the set from the blockfile and the classifier's mirror with it.
    drop(n);
    let n = Nanny::start(&s, setup(&s, &p));
    let r = n.fetch_from(scanner);
    assert!(
        r.closed_silently(),
        "still blocked after a restart: {r:?}\n{}",
        n.log()
    );
    assert_eq!(n.fetch_from(bystander).text(), "hello\n");
    assert!(
        n.log().contains("restored 1 blocked addresses"),
        "{}",
        n.log()
    );
}

#[test]
fn neverblock_addresses_are_trapped_but_never_blocked() {
    let s = Scratch::new("traps-never");
    let p = Ports::free();
    let n = Nanny::start(&s, setup(&s, &p));
    let friend = ip(1);
    let mark = n.mark();
    assert_eq!(trap_connect(friend, p.tcp), "banner\n");
    datagram(friend, p.udp);
    n.expect_log(mark, &["not blocking 127.62.0.1", "neverblock"]);
    assert_eq!(n.fetch_from(friend).text(), "hello\n");
    assert!(read(&s, "history").contains(" refuse 127.62.0.1 "));
    assert!(!read(&s, "blocks").contains("block 127.62.0.1"));
    assert_eq!(read(&s, "cmds.log"), "");
}

#[test]
fn a_trap_port_in_use_is_a_start_up_error_naming_it() {
    let s = Scratch::new("traps-inuse");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let p = Ports {
        tcp: port,
        udp: free_udp_port(),
    };
    let setup = setup(&s, &p);
    let mut n = Nanny::spawn(&s, &setup);
    let st = n.wait_exit(START_TIMEOUT).expect("the daemon exits");
    assert_eq!(st.code(), Some(111), "{}", n.log());
    assert!(
        n.log()
            .contains(&format!("cannot bind trap tcp 127.0.0.1:{port}")),
        "{}",
        n.log()
    );
}

/// A block with a time ends on time: the unblock command runs, hosts.deny and the blockfile
/// lose the address, the history says `expire`, and the address is served again.
#[test]
fn a_block_expires_on_time_and_everything_follows() {
    let s = Scratch::new("traps-expire");
    let p = Ports::free();
    let actions = ACTIONS.replace("block 1h", "block 2s");
    let mut setup = setup(&s, &p);
    setup.actions = actions;
    let n = Nanny::start(&s, setup);
    let scanner = ip(6);
    let mark = n.mark();
    assert_eq!(trap_connect(scanner, p.tcp), "banner\n");
    datagram(scanner, p.udp);
    n.expect_log(mark, &["blocked 127.62.0.6"]);
    assert!(n.fetch_from(scanner).closed_silently());
    let line = n
        .wait_log_since(mark, Duration::from_secs(10), |l| {
            l.contains("expire: 127.62.0.6 is no longer blocked")
        })
        .unwrap_or_else(|| panic!("no expiry; log:\n{}", n.log()));
    assert!(!line.is_empty());
    let served = wait_for(Duration::from_secs(5), || {
        (n.fetch_from(scanner).text() == "hello\n").then_some(())
    });
    assert!(
        served.is_some(),
        "served again after the block ended; {}",
        n.log()
    );
    assert_eq!(read(&s, "hosts.deny"), "");
    assert!(!read(&s, "blocks").contains("block 127.62.0.6"));
    assert!(read(&s, "history").contains(" expire 127.62.0.6 "));
    let cmds = wait_file(&s, "cmds.log", |c| c.contains("unblock"));
    assert_eq!(
        cmds,
        format!("block 127.62.0.6 {} udp\nunblock 127.62.0.6\n", p.udp)
    );
}

/// `ipfile: FILE` (PortSentry's IGNORE_FILE): an address list next to nanny.conf, read by the
/// parent and shipped with the policy; an edit is picked up (here at once, by SIGHUP).
#[test]
fn ipfile_lists_are_matched_and_reloaded_when_they_change() {
    let s = Scratch::new("traps-ipfile");
    s.write("friends.txt", "# ours\n127.62.1.0/30\n");
    let n = Nanny::start(
        &s,
        Setup::new(
            "friends: ipfile: friends.txt\nok: ALL\n",
            "friends: msg friend%(nl)s\nok: msg hello%(nl)s\n",
        ),
    );
    let listed = Ipv4Addr::new(127, 62, 1, 2);
    let other = Ipv4Addr::new(127, 62, 1, 9);
    assert_eq!(n.fetch_from(listed).text(), "friend\n", "{}", n.log());
    assert_eq!(n.fetch_from(other).text(), "hello\n");
    // A bad entry: reported with its position, and the list holds nothing until it is fixed.
    write_atomic(
        &s.path("friends.txt"),
        "127.62.1.9\nnot-an-address\n",
        0o644,
    );
    let mark = n.mark();
    n.signal(nix::sys::signal::Signal::SIGHUP);
    n.expect_log(mark, &["friends.txt:2:1"]);
    n.expect_log(mark, &["holds no address until it is fixed"]);
    let emptied = wait_for(Duration::from_secs(10), || {
        (n.fetch_from(listed).text() == "hello\n").then_some(())
    });
    assert!(emptied.is_some(), "{}", n.log());
    assert_eq!(n.fetch_from(other).text(), "hello\n");
    // Fixed: the new list applies.
    write_atomic(&s.path("friends.txt"), "127.62.1.9\n", 0o644);
    n.signal(nix::sys::signal::Signal::SIGHUP);
    let got = wait_for(Duration::from_secs(10), || {
        (n.fetch_from(other).text() == "friend\n").then_some(())
    });
    assert!(got.is_some(), "the edited list applies; log:\n{}", n.log());
    assert_eq!(n.fetch_from(listed).text(), "hello\n", "no longer listed");
}

/// The blockfile is rewritten atomically: SIGKILL of the parent while blocks are being written
/// never leaves it unreadable, and the next start restores every block it holds.
#[test]
fn sigkill_during_blockfile_rewrites_never_leaves_it_unreadable() {
    let s = Scratch::new("traps-sigkill");
    let p = Ports::free();
    let mut setup = setup(&s, &p);
    setup.rules = "banned: blocked\nscan: trap\nok: ALL\n".into();
    setup.actions = "scan: block 1h : drop\nbanned: drop\nok: msg hello%(nl)s\n".into();
    let setup = setup.conf("blockbudget 100000");
    for round in 0..8u8 {
        let mut n = Nanny::start(&s, clone_setup(&setup));
        let restored = n.log();
        assert!(
            !restored.contains("line skipped"),
            "round {round}: the blockfile was unreadable:\n{restored}"
        );
        // A burst of blocks from distinct addresses, then SIGKILL in the middle of it.
        for i in 0..120u8 {
            datagram(Ipv4Addr::new(127, 63, round, i + 1), p.udp);
        }
        std::thread::sleep(Duration::from_millis(u64::from(round) * 7 % 40));
        n.signal(nix::sys::signal::Signal::SIGKILL);
        assert!(n.wait_exit(Duration::from_secs(10)).is_some());
        let text = read(&s, "blocks");
        for (i, line) in text.lines().enumerate() {
            assert!(
                line.starts_with('#') || line.starts_with("block ") || line.starts_with("offence "),
                "round {round} line {}: {line:?}",
                i + 1
            );
        }
    }
    // Whatever the last rewrite held is restored, and those addresses are still refused.
    let kept = read(&s, "blocks")
        .lines()
        .filter(|l| l.starts_with("block "))
        .count();
    let n = Nanny::start(&s, clone_setup(&setup));
    if kept > 0 {
        assert!(
            n.log()
                .contains(&format!("restored {kept} blocked addresses")),
            "{}",
            n.log()
        );
    }
}

fn clone_setup(s: &Setup) -> Setup {
    let mut c = Setup::new(&s.rules, &s.actions);
    c.port = s.port;
    c.conf_extra = s.conf_extra.clone();
    c.args = s.args.clone();
    c
}

/// A forged sweep (UDP from 1,000 source addresses) blocks no more than the budget allows;
/// every other hit is refused in the history, and the log is not flooded.
#[test]
fn the_block_budget_holds_under_a_forged_sweep() {
    let s = Scratch::new("traps-budget");
    let p = Ports::free();
    let mut setup = setup(&s, &p);
    setup.rules = "banned: blocked\nscan: trap\nok: ALL\n".into();
    setup.actions = "scan: block 1h : drop\nbanned: drop\nok: msg hello%(nl)s\n".into();
    setup.args.clear();
    let n = Nanny::start(&s, setup.conf("blockbudget 10"));
    let sources: Vec<Ipv4Addr> = (0..1000u32)
        .map(|i| Ipv4Addr::new(127, 65, (i / 250) as u8, (i % 250) as u8 + 1))
        .collect();
    // Paced a little: a UDP socket's receive buffer drops what the loop has not read yet, and
    // this test counts every hit.
    for (i, src) in sources.iter().enumerate() {
        datagram(*src, p.udp);
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let done = wait_for(Duration::from_secs(30), || {
        let h = read(&s, "history");
        (h.lines().count() >= sources.len()).then_some(h)
    })
    .unwrap_or_else(|| panic!("not every hit reached the history; log:\n{}", n.log()));
    let blocks = done.lines().filter(|l| l.contains(" block ")).count();
    let refused = done.lines().filter(|l| l.contains(" refuse ")).count();
    // Ten a minute; a sweep that straddles a minute boundary may get twice that.
    assert!((10..=20).contains(&blocks), "{blocks} blocks");
    assert_eq!(blocks + refused, sources.len());
    let warnings = n.log().matches("not blocking").count();
    assert!(
        warnings <= 2,
        "{warnings} refusal lines logged:\n{}",
        n.log()
    );
    // A bystander is still served.
    assert_eq!(n.fetch_from(ip(200)).text(), "hello\n");
}

/// `blockkills on`: a block also ends the blocked address's running services (their whole
/// process group); other addresses' services keep running.
#[test]
fn blockkills_ends_the_blocked_addresses_services() {
    let s = Scratch::new("traps-kills");
    let p = Ports::free();
    let mut setup = setup(&s, &p);
    setup.rules = "banned: blocked\nscan: trap\nheld: ALL\n".into();
    setup.actions = "scan: block 1h : drop\nbanned: drop\nheld: run /bin/sleep 30\n".into();
    let n = Nanny::start(&s, setup.conf("blockkills on"));
    let scanner = ip(7);
    let bystander = ip(8);
    let _c1 = connect_from(scanner, n.addr, IO_TIMEOUT).expect("scanner's service");
    let _c2 = connect_from(bystander, n.addr, IO_TIMEOUT).expect("bystander's service");
    let services = wait_for(Duration::from_secs(10), || {
        let s = n.services();
        (s.len() == 2).then_some(s)
    })
    .unwrap_or_else(|| panic!("two services; log:\n{}", n.log()));
    let mark = n.mark();
    assert_eq!(trap_connect(scanner, p.tcp), "", "{}", n.log());
    n.expect_log(mark, &["blockkills: ending pid="]);
    let left = wait_for(Duration::from_secs(10), || {
        let alive: Vec<i32> = services.iter().copied().filter(|p| alive(*p)).collect();
        (alive.len() == 1).then_some(alive)
    })
    .unwrap_or_else(|| panic!("one service left; log:\n{}", n.log()));
    let line = n.expect_log(mark, &["blockkills: ending pid="]);
    assert!(line.contains("127.62.0.7"), "{line}");
    assert!(
        !line.contains(&format!("pid={} ", left[0])),
        "the bystander's service was killed: {line}"
    );
}

/// IPv6 traps: a TCP trap on [::1] hits like an IPv4 one (and the address is blocked).
#[test]
fn ipv6_traps_catch_and_block() {
    let s = Scratch::new("traps-v6");
    let port = free_port();
    let setup = Setup::new(
        "banned: blocked\nscan: trap\nok: ALL\n",
        "scan: block 1h : msg caught%(nl)s\nbanned: drop\nok: msg hello%(nl)s\n",
    )
    .conf(&format!("trap tcp {port}@::1"))
    .conf(&format!("historyfile {}", s.path("history").display()));
    let n = Nanny::start(&s, setup);
    let dst: SocketAddr = format!("[::1]:{port}").parse().expect("addr");
    let mark = n.mark();
    let mut c = std::net::TcpStream::connect_timeout(&dst, IO_TIMEOUT).expect("connect [::1]");
    assert_eq!(
        read_all(&mut c, IO_TIMEOUT).text(),
        "caught\n",
        "{}",
        n.log()
    );
    n.expect_log(mark, &["blocked ::1 "]);
    assert!(read(&s, "history").contains(" block ::1 "));
    let mut c = std::net::TcpStream::connect_timeout(&dst, IO_TIMEOUT).expect("connect again");
    assert_eq!(read_all(&mut c, IO_TIMEOUT).text(), "", "blocked now");
}

/// Seconds since the epoch, as the daemon's block times are.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Waits (at most a minute) until at least `need` seconds of the current minute are left, so
/// that steps that share the block budget (per minute) fall in one minute.
fn room_in_this_minute(need: u64) {
    let left = 60 - unix_now() % 60;
    if left < need {
        std::thread::sleep(Duration::from_secs(left + 1));
    }
}

/// Issue 10: `block cmdonly` (PortSentry's BLOCK_TCP/BLOCK_UDP 2) runs the blockcmd lines with
/// the peer's values and blocks nothing: no blocked-set entry (the address is served
/// afterwards, `blocked` stays false), no blockfile or hosts.deny line, no unblockcmd; the
/// history says `command`. From a forgeable detection (UDP) it spends the block budget like a
/// block: past it the command does not run and the refusal is logged.
#[test]
fn block_cmdonly_runs_the_commands_and_blocks_nothing() {
    let s = Scratch::new("traps-cmdonly");
    let p = Ports::free();
    let mut setup = setup(&s, &p);
    setup.rules = "banned: blocked\nscan: trap\nok: ALL\n".into();
    setup.actions =
        "scan: block cmdonly : msg caught%(nl)s\nbanned: drop\nok: msg hello%(nl)s\n".into();
    let n = Nanny::start(&s, setup.conf("blockbudget 1"));
    let scanner = ip(11);

    // A TCP trap (a completed handshake: not forgeable, no budget), twice.
    assert_eq!(trap_connect(scanner, p.tcp), "caught\n", "{}", n.log());
    let cmds = wait_file(&s, "cmds.log", |c| !c.is_empty());
    assert_eq!(
        cmds,
        format!("block 127.62.0.11 {} tcp\n", p.tcp),
        "{}",
        n.log()
    );
    // Not blocked: served on the listen port, and a second trap hit runs the commands again
    // (there is no block it could find).
    assert_eq!(n.fetch_from(scanner).text(), "hello\n", "{}", n.log());
    assert_eq!(trap_connect(scanner, p.tcp), "caught\n", "{}", n.log());
    let cmds = wait_file(&s, "cmds.log", |c| c.lines().count() >= 2);
    assert_eq!(
        cmds,
        format!(
            "block 127.62.0.11 {0} tcp\nblock 127.62.0.11 {0} tcp\n",
            p.tcp
        )
    );
    assert_eq!(n.fetch_from(scanner).text(), "hello\n");
    let history = read(&s, "history");
    assert_eq!(
        history
            .lines()
            .filter(|l| l.contains(&format!(" command 127.62.0.11 {} tcp ", p.tcp)))
            .count(),
        2,
        "{history}"
    );
    assert!(!history.contains(" block "), "{history}");
    assert!(!n.log().contains("blocked 127.62.0.11"), "{}", n.log());
    assert!(!read(&s, "blocks").contains("block 127.62.0.11"));
    assert_eq!(read(&s, "hosts.deny"), "");

    // UDP (forgeable): the first address of the minute runs the command, the next is refused.
    room_in_this_minute(15);
    let mark = n.mark();
    datagram(ip(12), p.udp);
    let cmds = wait_file(&s, "cmds.log", |c| c.contains("127.62.0.12"));
    assert!(
        cmds.ends_with(&format!("block 127.62.0.12 {} udp\n", p.udp)),
        "{cmds}\n{}",
        n.log()
    );
    datagram(ip(13), p.udp);
    n.expect_log(
        mark,
        &[
            "not running the block commands for 127.62.0.13: more than 1 new blocks this \
             minute from forgeable detections (class scan)",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!read(&s, "cmds.log").contains("127.62.0.13"));
    assert!(read(&s, "history").contains(" refuse 127.62.0.13 "));
    for a in [ip(12), ip(13)] {
        assert_eq!(n.fetch_from(a).text(), "hello\n", "{a} is not blocked");
    }
    // Nothing was blocked, so nothing is unblocked either.
    assert!(!read(&s, "cmds.log").contains("unblock"));
}

/// Issue 10: SIGUSR1 empties the IP history and the caches, never the blocked set: a blocked
/// address is still refused afterwards (while `firsttime` shows that the history did go).
#[test]
fn sigusr1_leaves_the_blocked_set_alone() {
    let s = Scratch::new("traps-usr1");
    let p = Ports::free();
    let mut setup = setup(&s, &p);
    setup.rules = "banned: blocked\nscan: trap\nnew: firsttime\nok: ALL\n".into();
    setup.actions =
        "scan: block 1h : drop\nbanned: drop\nnew: msg new%(nl)s\nok: msg hello%(nl)s\n".into();
    let n = Nanny::start(&s, setup);
    let scanner = ip(14);
    let bystander = ip(15);
    assert_eq!(n.fetch_from(bystander).text(), "new\n", "{}", n.log());
    assert_eq!(n.fetch_from(bystander).text(), "hello\n", "seen before");
    let mark = n.mark();
    assert_eq!(trap_connect(scanner, p.tcp), "", "{}", n.log());
    n.expect_log(mark, &["blocked 127.62.0.14 "]);
    assert!(n.fetch_from(scanner).closed_silently(), "{}", n.log());

    let mark = n.mark();
    n.signal(nix::sys::signal::Signal::SIGUSR1);
    n.expect_log(mark, &["SIGUSR1: flushing caches and IP history"]);
    // The flush reached the classifier before this connection did (one ordered channel).
    assert_eq!(
        n.fetch_from(bystander).text(),
        "new\n",
        "the history was emptied; log:\n{}",
        n.log()
    );
    let r = n.fetch_from(scanner);
    assert!(
        r.closed_silently(),
        "still blocked after SIGUSR1: {r:?}\n{}",
        n.log()
    );
    let log = n.log_since(mark);
    assert!(
        !log.contains("no longer blocked") && !log.contains("blocked 127.62.0.14"),
        "{log}"
    );
    assert!(read(&s, "blocks").contains("block 127.62.0.14 "));
    assert_eq!(read(&s, "hosts.deny"), "ALL: 127.62.0.14 # portnanny\n");
    let history = read(&s, "history");
    assert_eq!(history.lines().count(), 1, "{history}");
}

/// Issue 10 item 8: the SIGUSR2 report's lines for the traps and the blocked set, exactly.
#[test]
fn sigusr2_reports_the_traps_and_the_blocked_set() {
    let s = Scratch::new("traps-usr2");
    let p = Ports::free();
    let mut setup = setup(&s, &p);
    setup.rules = "banned: blocked\nscan: trap\nok: ALL\n".into();
    setup.actions = "scan: block 1h : drop\nbanned: drop\nok: msg hello%(nl)s\n".into();
    let n = Nanny::start(&s, setup);
    // Listening comes before the signal handlers; "started" after them.
    n.expect_log(0, &["started: listening"]);
    let status = |mark: usize| -> Vec<String> {
        n.signal(nix::sys::signal::Signal::SIGUSR2);
        // The blocked count comes after the traps line; the blocks after the count.
        let last = n
            .wait_log_since(mark, IO_TIMEOUT, |l| {
                l.contains("status: ") && l.contains(" addresses blocked")
            })
            .unwrap_or_else(|| panic!("no blocked count; log:\n{}", n.log()));
        assert!(!last.is_empty());
        std::thread::sleep(Duration::from_millis(200));
        n.log_since(mark)
            .lines()
            .filter_map(|l| {
                l.split_once("status: ")
                    .map(|(_, r)| format!("status: {r}"))
            })
            .collect()
    };
    let traps = format!(
        "status: traps: tcp 127.0.0.1:{}, udp 127.0.0.1:{}",
        p.tcp, p.udp
    );
    let lines = status(n.mark());
    assert!(lines.contains(&traps), "{lines:#?}");
    assert!(
        lines.contains(&"status: 0 addresses blocked".to_owned()),
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("status: blocked ")));

    let mark = n.mark();
    assert_eq!(trap_connect(ip(16), p.tcp), "", "{}", n.log());
    n.expect_log(mark, &["blocked 127.62.0.16 "]);
    // The block's start and end, from the blockfile: `block ADDR SINCE UNTIL PORT MODE ...`
    // (rewritten right after the log line).
    let blocks = wait_file(&s, "blocks", |c| c.contains("block 127.62.0.16 "));
    let fields: Vec<&str> = blocks
        .lines()
        .find(|l| l.starts_with("block 127.62.0.16 "))
        .unwrap_or_else(|| panic!("{blocks}"))
        .split(' ')
        .collect();
    let since: u64 = fields[2].parse().expect("since");
    let until: u64 = fields[3].parse().expect("until");
    assert_eq!(until, since + 3600);
    let before = unix_now();
    let lines = status(n.mark());
    let after = unix_now();
    assert!(lines.contains(&traps), "{lines:#?}");
    assert!(
        lines.contains(&"status: 1 addresses blocked".to_owned()),
        "{lines:#?}"
    );
    let want = |left: u64| {
        format!(
            "status: blocked 127.62.0.16 since {since} ({left}s left; port {} tcp; class scan)",
            p.tcp
        )
    };
    let blocked: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("status: blocked "))
        .collect();
    assert_eq!(blocked.len(), 1, "{lines:#?}");
    assert!(
        (until.saturating_sub(after)..=until.saturating_sub(before))
            .any(|left| *blocked[0] == want(left)),
        "{} is not {}",
        blocked[0],
        want(until - before)
    );
}
