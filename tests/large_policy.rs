//! Policies larger than an ordinary frame reach the classifier (issue 9 item 16).
//!
//! Runs in the test process; starts the real `portnanny` on 127.0.0.1 with a rules file of
//! 100,000 one-line `ip:` rules (about 2 MB, twice the frame cap of the untrusted directions),
//! at start and by a reload, and checks from a client that the classifier uses it. Rules use IP
//! matchers only, so no test causes a DNS lookup.

mod util;

use std::net::Ipv4Addr;
use std::time::Duration;

use util::*;

/// Generous: a debug build parses the 2 MB file twice (parent, then classifier).
const LARGE_TIMEOUT: Duration = Duration::from_secs(30);

/// 99,999 rules for addresses in 10/8 that no test uses, then one for the test's client, with
/// the class that has an action last, so the classifier must have the whole file to match it.
fn large_rules() -> String {
    let mut r = String::with_capacity(2_200_000);
    for i in 0..99_999u32 {
        r.push_str(&format!(
            "far: ip: 10.{}.{}.{}\n",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        ));
    }
    r.push_str("near: 127.0.13.1\n");
    assert!(r.len() > 2_000_000, "{}", r.len());
    r
}

const ACTIONS: &str = "near: msg near%(nl)s\nsmall: msg small%(nl)s\n";

fn client() -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 13, 1)
}

#[test]
fn a_two_megabyte_rules_file_loads_at_start() {
    let s = Scratch::new("large-start");
    let setup = Setup::new(&large_rules(), ACTIONS);
    let n = Nanny::spawn(&s, &setup);
    let ok = wait_for(LARGE_TIMEOUT, || {
        if is_listening(Ipv4Addr::LOCALHOST, setup.port) {
            return Some(true);
        }
        (!alive(n.pid)).then_some(false)
    });
    assert_eq!(ok, Some(true), "the daemon starts; log:\n{}", n.log());
    let r = fetch_until(client(), n.addr, LARGE_TIMEOUT, |r| !r.data.is_empty());
    assert_eq!(
        r.map(|r| r.text()).as_deref(),
        Some("near\n"),
        "the last of 100,000 rules matched; log:\n{}",
        n.log()
    );
    assert!(!n.log().contains("frame size"), "log:\n{}", n.log());
}

#[test]
fn a_two_megabyte_rules_file_loads_by_reload() {
    let s = Scratch::new("large-reload");
    let n = Nanny::start(&s, Setup::new("small: ALL\n", ACTIONS));
    assert_eq!(
        n.fetch_from(client()).text(),
        "small\n",
        "log:\n{}",
        n.log()
    );
    let classifier = n.worker("classifier");
    write_atomic(&n.rules, &large_rules(), 0o644);
    let r = fetch_until(client(), n.addr, LARGE_TIMEOUT, |r| r.text() == "near\n");
    assert!(r.is_some(), "the large rules are served; log:\n{}", n.log());
    assert_eq!(
        n.worker("classifier"),
        classifier,
        "the classifier took the policy without a restart; log:\n{}",
        n.log()
    );
    assert!(!n.log().contains("frame size"), "log:\n{}", n.log());
}
