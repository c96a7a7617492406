//! Connection history through the real binary: firsttime, seenwithin:, notseenfor:, stallfor:,
//! waited:, the %(seensince)s and %(lastseen)s substitutions (and the dropped connection when
//! one is used without a time matcher having run), dropipafter + expireevery expiry, SIGUSR1
//! flushing the history, and history being kept only for addresses a time matcher asked about.
//!
//! Runs in the test process; starts `portnanny` with the shared harness (`tests/util`), which as
//! root runs it in a private mount namespace whose resolv.conf names a dnsmasq the harness
//! started on loopback. The rules here are IP-only and time matchers, so no test causes a DNS
//! lookup at all; every byte read comes from the daemon this test started.
//!
//! Invariants: every wait is bounded (client I/O by `IO_TIMEOUT`, sleeps are fixed and short);
//! the daemon's history clock counts whole seconds, so every sleep leaves at least half a second
//! of margin on the side of the boundary it tests; each test uses its own 127.6x.0.0/16
//! sources so a failure names one test.

mod util;

use std::net::Ipv4Addr;
use std::thread::sleep;
use std::time::Duration;

use nix::sys::signal::Signal;
use util::*;

fn ip(b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, b, c, d)
}

/// What a client from `src` receives before the daemon closes.
fn reply(n: &Nanny, src: Ipv4Addr) -> String {
    n.fetch_from(src).text()
}

/// Asserts the reply of one connection from `src`, with the daemon's log on failure.
fn expect(n: &Nanny, src: Ipv4Addr, want: &str, why: &str) {
    let got = reply(n, src);
    assert_eq!(got, want, "{why} (client {src}); log:\n{}", n.log());
}

/// Two `key=N` numbers from a reply such as `again since=3 last=1`.
fn numbers(text: &str, keys: [&str; 2]) -> [u64; 2] {
    let f = fields(text);
    keys.map(|k| {
        f.get(k)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no number {k}= in reply {text:?}"))
    })
}

#[test]
fn firsttime_then_seen_before() {
    let s = Scratch::new("hist-first");
    let n = Nanny::start(
        &s,
        Setup::new("a: firsttime\nb: ALL\n", "a: msg A%(nl)s\nb: msg B%(nl)s\n"),
    );
    let (one, two) = (ip(61, 0, 1), ip(61, 0, 2));
    expect(&n, one, "A\n", "the first connection is a first time");
    expect(&n, one, "B\n", "the second connection has been seen");
    expect(&n, one, "B\n", "and so has the third");
    expect(&n, two, "A\n", "history is per address");
    expect(&n, two, "B\n", "the other address is now known too");
}

#[test]
fn history_is_kept_only_for_addresses_a_time_matcher_asked_about() {
    let s = Scratch::new("hist-only");
    // 127.61.1.1 stops at an IP rule, so no time matcher ever sees it; 127.61.1.2 meets
    // firsttime. After a reload that lets 127.61.1.1 reach firsttime, it must be new, while
    // 127.61.1.2 (history is kept across reloads) must not be.
    let rules = "skip: 127.61.1.1\na: firsttime\nb: ALL\n";
    let actions = "skip: msg skip%(nl)s\na: msg A%(nl)s\nb: msg B%(nl)s\n";
    let n = Nanny::start(&s, Setup::new(rules, actions));
    let (skipped, asked) = (ip(61, 1, 1), ip(61, 1, 2));
    for _ in 0..3 {
        expect(&n, skipped, "skip\n", "an IP rule matches first");
    }
    expect(&n, asked, "A\n", "first time");
    expect(&n, asked, "B\n", "seen before");

    let mark = n.mark();
    write_atomic(&n.rules, "a: firsttime\nb: ALL\n", 0o644);
    n.signal(Signal::SIGHUP);
    n.expect_log(mark, &["reloaded rules file"]);
    let first = fetch_until(skipped, n.addr, IO_TIMEOUT, |r| r.text() != "skip\n")
        .unwrap_or_else(|| panic!("the new rules never took effect; log:\n{}", n.log()));
    assert_eq!(
        first.text(),
        "A\n",
        "connections that met no time matcher leave no history; log:\n{}",
        n.log()
    );
    expect(&n, skipped, "B\n", "recorded once firsttime asked");
    expect(&n, asked, "B\n", "the history survives a reload");
}

#[test]
fn seenwithin_two_seconds() {
    let s = Scratch::new("hist-seenwithin");
    let n = Nanny::start(
        &s,
        Setup::new(
            "recent: seenwithin: 2s\nother: ALL\n",
            "recent: msg recent%(nl)s\nother: msg other%(nl)s\n",
        ),
    );
    let c = ip(62, 0, 1);
    expect(&n, c, "other\n", "never seen: seenwithin is false");
    expect(&n, c, "recent\n", "seen a moment ago");
    sleep(Duration::from_millis(1000));
    expect(&n, c, "recent\n", "seen about 1 s ago (at most 2 s)");
    sleep(Duration::from_millis(3500));
    expect(&n, c, "other\n", "last seen 3.5 s ago, more than 2 s");
    expect(
        &n,
        c,
        "recent\n",
        "the connection just made counts as the last one",
    );
}

#[test]
fn notseenfor_two_seconds() {
    let s = Scratch::new("hist-notseenfor");
    let n = Nanny::start(
        &s,
        Setup::new(
            "away: notseenfor: 2s\nhere: ALL\n",
            "away: msg away%(nl)s\nhere: msg here%(nl)s\n",
        ),
    );
    let c = ip(63, 0, 1);
    expect(&n, c, "away\n", "never seen: notseenfor is true");
    expect(&n, c, "here\n", "seen a moment ago");
    sleep(Duration::from_millis(1000));
    expect(&n, c, "here\n", "seen about 1 s ago");
    sleep(Duration::from_millis(3500));
    expect(&n, c, "away\n", "not seen for 3.5 s");
    expect(&n, c, "here\n", "and now seen again");
}

#[test]
fn stallfor_then_waited() {
    let s = Scratch::new("hist-stall");
    let n = Nanny::start(
        &s,
        Setup::new(
            "stall: stallfor: 2s\nwaited: waited: 2s\nother: ALL\n",
            "stall: msg stall%(nl)s\nwaited: msg waited%(nl)s\nother: msg other%(nl)s\n",
        ),
    );
    let (c, d) = (ip(64, 0, 1), ip(64, 0, 2));
    expect(&n, c, "stall\n", "first seen just now: within 2 s");
    sleep(Duration::from_millis(1000));
    expect(&n, c, "stall\n", "first seen about 1 s ago");
    expect(&n, d, "stall\n", "another address starts its own clock");
    sleep(Duration::from_millis(3000));
    // Connections keep moving "last seen" but never "first seen".
    expect(&n, c, "waited\n", "first seen 4 s ago: it has waited 2 s");
    expect(&n, c, "waited\n", "still waited");
    expect(&n, d, "waited\n", "first seen 3 s ago");
}

#[test]
fn seensince_and_lastseen_substitutions() {
    let s = Scratch::new("hist-subst");
    let rules = "nohist: 127.65.0.9\n\
                 firstlast: 127.65.0.7 && firsttime\n\
                 fresh: firsttime\n\
                 again: ALL\n";
    let actions = "nohist: msg nohist last=%(lastseen)s%(nl)s\n\
                   firstlast: msg firstlast last=%(lastseen)s%(nl)s\n\
                   fresh: msg fresh since=%(seensince)s%(nl)s\n\
                   again: msg again since=%(seensince)s last=%(lastseen)s%(nl)s\n";
    let n = Nanny::start(&s, Setup::new(rules, actions));

    let c = ip(65, 0, 1);
    expect(&n, c, "fresh since=0\n", "first time: seensince is 0");
    sleep(Duration::from_millis(1300));
    // `again: ALL` consults no history itself, but `fresh: firsttime` did on the way.
    let text = reply(&n, c);
    assert!(text.starts_with("again "), "{text:?}; log:\n{}", n.log());
    let [since, last] = numbers(&text, ["since", "last"]);
    assert!((1..=2).contains(&since), "seensince after 1.3 s: {text:?}");
    assert!((1..=2).contains(&last), "lastseen after 1.3 s: {text:?}");
    let text = reply(&n, c);
    let [since2, last2] = numbers(&text, ["since", "last"]);
    assert!(
        since2 >= since && since2 <= 3,
        "seensince counts from the first connection: {text:?}"
    );
    assert!(
        last2 <= 1,
        "lastseen counts from the previous connection: {text:?}"
    );

    // A class whose rule consulted no history: %(lastseen)s is undefined, so the connection is
    // dropped without a reply and the error is logged.
    let mark = n.mark();
    let r = n.fetch_from(ip(65, 0, 9));
    assert!(
        r.closed_silently(),
        "undefined %(lastseen)s drops the connection: {:?}; log:\n{}",
        r.text(),
        n.log()
    );
    let line = n.expect_log(mark, &["nohist", "lastseen"]);
    assert!(
        line.contains("not defined"),
        "the error says the substitution is undefined: {line}"
    );

    // firsttime was evaluated, but a first connection has no previous one: lastseen is
    // undefined for it too. The second connection is not a first time any more.
    let mark = n.mark();
    let r = n.fetch_from(ip(65, 0, 7));
    assert!(
        r.closed_silently(),
        "no previous connection, no %(lastseen)s: {:?}; log:\n{}",
        r.text(),
        n.log()
    );
    n.expect_log(mark, &["firstlast", "lastseen", "not defined"]);
    let text = reply(&n, ip(65, 0, 7));
    assert!(
        text.starts_with("again since=") && text.ends_with('\n'),
        "{text:?}; log:\n{}",
        n.log()
    );
    let [since, last] = numbers(&text, ["since", "last"]);
    assert!(since <= 1 && last <= 1, "{text:?}");
}

#[test]
fn dropipafter_with_expireevery_forgets_idle_addresses() {
    let s = Scratch::new("hist-dropip");
    let n = Nanny::start(
        &s,
        Setup::new("a: firsttime\nb: ALL\n", "a: msg A%(nl)s\nb: msg B%(nl)s\n")
            .conf("dropipafter 2s")
            .conf("expireevery 1s"),
    );
    let (c, busy) = (ip(66, 0, 1), ip(66, 0, 2));
    expect(&n, c, "A\n", "first time");
    expect(&n, c, "B\n", "seen");
    expect(&n, busy, "A\n", "first time");
    sleep(Duration::from_millis(1000));
    expect(
        &n,
        c,
        "B\n",
        "idle about 1 s: not yet older than dropipafter",
    );
    // `busy` keeps connecting (so sweeps run) while `c` stays silent for 3.5 s.
    for _ in 0..7 {
        sleep(Duration::from_millis(500));
        expect(&n, busy, "B\n", "an address that keeps connecting is kept");
    }
    expect(
        &n,
        c,
        "A\n",
        "silent for longer than dropipafter: a first-timer again",
    );
    expect(&n, c, "B\n", "and recorded again");
}

#[test]
fn dropipafter_expiry_needs_no_other_traffic() {
    let s = Scratch::new("hist-dropip-quiet");
    let n = Nanny::start(
        &s,
        Setup::new("a: firsttime\nb: ALL\n", "a: msg A%(nl)s\nb: msg B%(nl)s\n")
            .conf("dropipafter 2s")
            .conf("expireevery 1s"),
    );
    let c = ip(67, 0, 1);
    expect(&n, c, "A\n", "first time");
    expect(&n, c, "B\n", "seen");
    sleep(Duration::from_millis(3500));
    expect(
        &n,
        c,
        "A\n",
        "after 3.5 s of silence everywhere the address is new again",
    );
}

#[test]
fn sigusr1_flushes_history_at_once() {
    let s = Scratch::new("hist-usr1");
    let n = Nanny::start(
        &s,
        Setup::new("a: firsttime\nb: ALL\n", "a: msg A%(nl)s\nb: msg B%(nl)s\n"),
    );
    let (c, d) = (ip(68, 0, 1), ip(68, 0, 2));
    expect(&n, c, "A\n", "first time");
    expect(&n, c, "B\n", "seen");
    expect(&n, d, "A\n", "first time");
    let mark = n.mark();
    n.signal(Signal::SIGUSR1);
    n.expect_log(mark, &["SIGUSR1"]);
    // The flush travels to the classifier ahead of any connection accepted after the signal,
    // so the very next connection already sees an empty history: no retry here.
    expect(&n, c, "A\n", "right after SIGUSR1: a first time again");
    expect(&n, d, "A\n", "every address is forgotten");
    expect(&n, c, "B\n", "and history starts again");
}
