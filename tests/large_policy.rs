//! Policies larger than an ordinary frame reach the classifier (issue 9 item 16).
//!
//! Runs in the test process; starts the real `portnanny` on 127.0.0.1 with a rules file of
//! 100,000 one-line `ip:` rules (about 2 MB, twice the frame cap of the untrusted directions),
//! at start and by a reload, and checks from a client that the classifier uses it. A policy
//! whose `ipfile:` lists would take it over what the classifier accepts (32 MiB together) is
//! refused by `-C` with the list's position, and the daemon, at start and on reload, leaves that
//! list out with the same line and keeps serving. Rules use IP matchers and address lists only,
//! so no test causes a DNS lookup.

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

/// An `ipfile:` list of exactly `size` bytes: `addr`, then comment lines.
fn list_of(addr: &str, size: usize) -> String {
    let mut t = format!("{addr}\n");
    let line = format!("#{}\n", "x".repeat(1022));
    while t.len() + line.len() <= size {
        t.push_str(&line);
    }
    let rest = size - t.len();
    if rest > 0 {
        t.push('#');
        t.push_str(&"x".repeat(rest.saturating_sub(2)));
        t.push('\n');
    }
    assert_eq!(t.len(), size);
    t
}

/// Issue 9 item 16: two 16 MiB lists passed `-C` and then could not be sent to the classifier.
/// Now `-C` refuses the one that goes over (H013, at its `ipfile:` operand, with the total and
/// the limit); the daemon logs the same line at start and on every reload that goes over,
/// leaves that list out (it holds no address) and keeps serving the rest; when the lists
/// shrink, the list is used again.
#[test]
fn lists_over_the_policy_budget_are_refused_by_check_and_left_out_by_the_daemon() {
    const MIB16: usize = 16 << 20;
    let s = Scratch::new("large-ipfiles");
    let setup = Setup::new(
        "a: ipfile: list-a\nb: ipfile: list-b\nok: ALL\n",
        "a: msg A%(nl)s\nb: msg B%(nl)s\nok: msg ok%(nl)s\n",
    );
    let conf = s.write("nanny.conf", &setup.conf_text(&s));
    let rules = s.write("nanny-rules", &setup.rules);
    s.write("nanny-actions", &setup.actions);
    s.write("list-a", &list_of("127.0.14.1", MIB16));
    s.write("list-b", &list_of("127.0.14.2", MIB16));
    // What the message would hold: the rules, the actions, then each list's name, text and 16.
    let base = setup.rules.len() + setup.actions.len();
    let total = base + 2 * (6 + MIB16 + 16);
    let want = format!(
        "{}:2:12: error[H013]: ipfile {} would take the policy to {total} bytes, over the limit \
         of 33554432 bytes for the rules file, the actions file and every ipfile together (what \
         the classifier accepts); it holds no address until the policy fits",
        rules.display(),
        s.path("list-b").display()
    );
    let (code, _, err) = Nanny::run_once(&["-C", &conf.to_string_lossy()], Duration::from_secs(60));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&want), "want {want}\n{err}");
    assert!(err.contains("1 error"), "only list-b: {err}");

    // The daemon starts with the same policy, says the same, and serves without list-b.
    let n = Nanny::start_conf(&s, &setup, conf);
    // (The listener is bound before the policy is loaded.)
    n.wait_log_since(0, LARGE_TIMEOUT, |l| l.contains(&want))
        .unwrap_or_else(|| panic!("no H013 at start; log:\n{}", n.log()));
    let a = fetch_until(Ipv4Addr::new(127, 0, 14, 1), n.addr, LARGE_TIMEOUT, |r| {
        !r.data.is_empty()
    });
    assert_eq!(a.map(|r| r.text()).as_deref(), Some("A\n"), "{}", n.log());
    assert_eq!(
        n.fetch_from(Ipv4Addr::new(127, 0, 14, 2)).text(),
        "ok\n",
        "list-b holds nothing; log:\n{}",
        n.log()
    );
    assert!(!n.log().contains("frame size"), "log:\n{}", n.log());

    // list-a shrinks: list-b fits and is used.
    let mark = n.mark();
    write_atomic(&s.path("list-a"), "127.0.14.1\n", 0o644);
    let b = fetch_until(Ipv4Addr::new(127, 0, 14, 2), n.addr, LARGE_TIMEOUT, |r| {
        r.text() == "B\n"
    });
    assert!(b.is_some(), "list-b fits again; log:\n{}", n.log());
    n.expect_log(mark, &["ipfile", "list-b fits in the policy again"]);

    // A reload that goes over again: the same line, list-b left out, still serving.
    let mark = n.mark();
    let classifier = n.worker("classifier");
    write_atomic(&s.path("list-a"), &list_of("127.0.14.1", MIB16), 0o644);
    n.wait_log_since(mark, LARGE_TIMEOUT, |l| l.contains(&want))
        .unwrap_or_else(|| panic!("no H013 on reload; log:\n{}", n.log()));
    let left_out = fetch_until(Ipv4Addr::new(127, 0, 14, 2), n.addr, LARGE_TIMEOUT, |r| {
        r.text() == "ok\n"
    });
    assert!(left_out.is_some(), "list-b left out; log:\n{}", n.log());
    assert_eq!(n.fetch_from(Ipv4Addr::new(127, 0, 14, 1)).text(), "A\n");
    assert_eq!(
        n.worker("classifier"),
        classifier,
        "the classifier took the policy without a failure; log:\n{}",
        n.log()
    );
    assert!(!n.log().contains("frame size"), "log:\n{}", n.log());
}
