//! nanny.conf: every directive, defaults, and every error as a golden `file:line:col` string.

use std::net::IpAddr;

use policy::conf::{parse_conf, parse_listen, Listen, NannyConf, OnFileError};

mod conf_common;
use conf_common::{errors, ok, BASE};

type Getter = fn(&NannyConf) -> u64;
type ListenWant = Result<(u16, Option<&'static str>), &'static str>;

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[test]
fn defaults() {
    let c = ok(BASE);
    assert_eq!(c.rulefile, "r");
    assert_eq!(c.actionfile, "a");
    assert_eq!(
        c.listens,
        vec![Listen {
            port: 80,
            addr: None
        }]
    );
    assert_eq!(c.user, None);
    assert_eq!(c.dropipafter, None);
    assert_eq!(c.expireevery, 60);
    assert_eq!(c.onfileerror, OnFileError::UseOld);
    assert!(c.substitutions);
    assert_eq!(c.maxthreads, 0);
    assert_eq!(c.aftermaxthreads, None);
    assert_eq!(c.privsepuser, None);
    assert_eq!(c.chrootdir, None);
    assert_eq!(c.dnstimeout_ms, 5000);
    assert_eq!(c.identdtimeout_ms, 10_000);
    assert_eq!(c.answersontimeout_ms, 5000);
    assert_eq!(c.cachettl_secs, 300);
    assert_eq!(c.cachesize, 10_000);
    assert_eq!(
        c.passenv, None,
        "without passenv, services inherit everything"
    );
}

#[test]
fn every_directive() {
    let text = "\
# a comment
rulefile /etc/nanny/rules
actionfile /etc/nanny/actions
listen 80
listen 81@
listen 82@*
listen 83@127.0.0.1
listen 83@::1
listen 84@[2001:db8::1]
user nobody
dropipafter 1d
expireevery 10m
onfileerror drop
substitutions off
maxthreads 8
aftermaxthreads overload
privsepuser _nanny
chrootdir /var/empty
dnstimeout 500ms
identdtimeout 3s
answersontimeout 1m
cachettl 2h
cachesize 0
";
    let c = ok(text);
    assert_eq!(c.rulefile, "/etc/nanny/rules");
    assert_eq!(c.actionfile, "/etc/nanny/actions");
    let l: Vec<(u16, Option<IpAddr>)> = c.listens.iter().map(|l| (l.port, l.addr)).collect();
    assert_eq!(
        l,
        vec![
            (80, None),
            (81, None),
            (82, None),
            (83, ip("127.0.0.1")),
            (83, ip("::1")),
            (84, ip("2001:db8::1")),
        ]
    );
    assert_eq!(c.user.as_deref(), Some("nobody"));
    assert_eq!(c.dropipafter, Some(86_400));
    assert_eq!(c.expireevery, 600);
    assert_eq!(c.onfileerror, OnFileError::Drop);
    assert!(!c.substitutions);
    assert_eq!(c.maxthreads, 8);
    assert_eq!(c.aftermaxthreads.as_deref(), Some("overload"));
    assert_eq!(c.privsepuser.as_deref(), Some("_nanny"));
    assert_eq!(c.chrootdir.as_deref(), Some("/var/empty"));
    assert_eq!(c.dnstimeout_ms, 500);
    assert_eq!(c.identdtimeout_ms, 3000);
    assert_eq!(c.answersontimeout_ms, 60_000);
    assert_eq!(c.cachettl_secs, 7200);
    assert_eq!(c.cachesize, 0);
}

#[test]
fn small_values() {
    let rows: &[(&str, Getter, u64)] = &[
        ("expireevery 0", |c| c.expireevery, 0),
        ("expireevery 0s", |c| c.expireevery, 0),
        ("expireevery 30s", |c| c.expireevery, 30),
        ("dropipafter 1m", |c| c.dropipafter.unwrap_or(0), 60),
        ("dropipafter 1h", |c| c.dropipafter.unwrap_or(0), 3600),
        ("substitutions on", |c| u64::from(c.substitutions), 1),
        (
            "onfileerror use-old",
            |c| (c.onfileerror == OnFileError::UseOld) as u64,
            1,
        ),
        ("maxthreads 0", |c| u64::from(c.maxthreads), 0),
        ("maxthreads +3", |c| u64::from(c.maxthreads), 3),
        ("dnstimeout 1ms", |c| u64::from(c.dnstimeout_ms), 1),
        ("cachettl 0s", |c| u64::from(c.cachettl_secs), 0),
    ];
    for (line, get, want) in rows {
        let c = ok(&format!("{BASE}{line}\n"));
        assert_eq!(get(&c), *want, "{line}");
    }
}

#[test]
fn continuation_lines_work() {
    let c = ok("rulefile\n  r\nactionfile a\nlisten\n\t80\n");
    assert_eq!(c.rulefile, "r");
    assert_eq!(c.listens[0].port, 80);
}

#[test]
fn listen_forms() {
    let rows: &[(&str, ListenWant)] = &[
        ("80", Ok((80, None))),
        ("80@", Ok((80, None))),
        ("80@*", Ok((80, None))),
        ("80@127.0.0.1", Ok((80, Some("127.0.0.1")))),
        ("80@001.010.090.05", Ok((80, Some("1.10.90.5")))),
        ("80@::1", Ok((80, Some("::1")))),
        ("80@[::1]", Ok((80, Some("::1")))),
        ("65535", Ok((65535, None))),
        ("0", Err("bad port '0': a port is 1 to 65535")),
        ("65536", Err("bad port '65536': a port is 1 to 65535")),
        ("foobar", Err("bad port 'foobar': a port must be a number")),
        (
            "127.0.0.1",
            Err("listen needs a port; '127.0.0.1' is only an address (write PORT@127.0.0.1)"),
        ),
        (
            "@127.0.0.1",
            Err("listen needs a port number, as in 80 or 80@127.0.0.1; '@127.0.0.1' has none"),
        ),
        (
            "*@*",
            Err("listen needs a port number, as in 80 or 80@127.0.0.1; '*@*' has none"),
        ),
        (
            "@",
            Err("listen needs a port number, as in 80 or 80@127.0.0.1; '@' has none"),
        ),
        ("abc@", Err("bad port 'abc': a port must be a number")),
        (
            "80@foobar",
            Err("bad address 'foobar': listen takes a numeric IPv4 or IPv6 address or '*'"),
        ),
        (
            "80@1.2.3.256",
            Err("bad address '1.2.3.256': listen takes a numeric IPv4 or IPv6 address or '*'"),
        ),
    ];
    for (arg, want) in rows {
        let got = parse_listen(arg).map(|l| (l.port, l.addr));
        let want = (*want)
            .map(|(p, a)| (p, a.map(|s| s.parse::<IpAddr>().unwrap())))
            .map_err(str::to_owned);
        assert_eq!(got, want, "{arg}");
    }
}

#[test]
fn golden_errors() {
    let rows: &[(&str, &[&str])] = &[
        (
            "foobar x\n",
            &["nanny.conf:4:1: error[C001]: unknown directive 'foobar' (known: rulefile, actionfile, listen, user, dropipafter, expireevery, onfileerror, substitutions, maxthreads, aftermaxthreads, privsepuser, chrootdir, dnstimeout, identdtimeout, answersontimeout, cachettl, cachesize, passenv, ipv4prefix, ipv6prefix, trap, stealth, blockfile, historyfile, blockcmd, unblockcmd, hostsdeny, neverblock, blockzone, blockbudget, blockincrement, blockkills, control, controlgroup, conntrack, conntrackuidmask, blockflush, xmlrpc, xmlrpcusers, xmlrpcauth, xmlrpcidle)"],
        ),
        ("user\n", &["nanny.conf:4:1: error[C002]: 'user' needs an argument (a user name)"]),
        (
            "chrootdir relative/empty\n",
            &["nanny.conf:4:11: error[C005]: chrootdir must be an absolute path; 'relative/empty' is not"],
        ),
        (
            "user a b c\n",
            &["nanny.conf:4:8: error[C003]: 'user' takes exactly one argument (a user name); this is extra"],
        ),
        (
            "user a # the user\n",
            &["nanny.conf:4:8: error[C003]: 'user' takes exactly one argument (a user name); this is extra (a comment must be on a line of its own)"],
        ),
        (
            "user a\nuser b\n",
            &["nanny.conf:5:1: error[C004]: 'user' may be given only once; it was already given on line 4"],
        ),
        (
            "rulefile again\n",
            &["nanny.conf:4:1: error[C004]: 'rulefile' may be given only once; it was already given on line 1"],
        ),
        (
            "dropipafter abc\n",
            &["nanny.conf:4:13: error[C005]: bad time 'abc': a time must end in s, m, h or d (as in 30s, 10m, 2h, 1d)"],
        ),
        (
            "dropipafter 10\n",
            &["nanny.conf:4:13: error[C005]: bad time '10': a time must end in s, m, h or d (as in 30s, 10m, 2h, 1d)"],
        ),
        (
            "expireevery -1s\n",
            &["nanny.conf:4:13: error[C005]: bad time '-1s': a time must be a whole number followed by s, m, h or d"],
        ),
        (
            "onfileerror foobar\n",
            &["nanny.conf:4:13: error[C005]: onfileerror must be 'use-old' or 'drop', not 'foobar'"],
        ),
        (
            "substitutions abc\n",
            &["nanny.conf:4:15: error[C005]: substitutions must be 'on' or 'off', not 'abc'"],
        ),
        (
            "maxthreads abc\n",
            &["nanny.conf:4:12: error[C005]: maxthreads must be a whole number (0 or more), not 'abc'"],
        ),
        (
            "maxthreads -1\n",
            &["nanny.conf:4:12: error[C005]: maxthreads must be a whole number (0 or more), not '-1'"],
        ),
        (
            "dnstimeout 0ms\n",
            &["nanny.conf:4:12: error[C005]: bad timeout '0ms': a timeout must be more than zero"],
        ),
        (
            "identdtimeout 10\n",
            &["nanny.conf:4:15: error[C005]: bad timeout '10': a time must end in s, m, h or d (as in 30s, 10m, 2h, 1d), or NNNms"],
        ),
        (
            "answersontimeout 50d\n",
            &["nanny.conf:4:18: error[C005]: bad timeout '50d': at most 4294967295ms"],
        ),
        (
            "cachesize lots\n",
            &["nanny.conf:4:11: error[C005]: cachesize must be a whole number of entries, not 'lots'"],
        ),
        (
            "listen 80@127.0.0.1\n",
            &["nanny.conf:4:8: error[C007]: port 80 is listened on for all addresses and for one address (line 3); the operating system does not allow both"],
        ),
        (
            "listen 80\n",
            &["nanny.conf:4:8: error[C007]: 'listen 80@*' was already given on line 3"],
        ),
        (
            "listen 0\n",
            &["nanny.conf:4:8: error[C005]: bad port '0': a port is 1 to 65535"],
        ),
        (
            "aftermaxthreads \u{e9}t\u{e9}\n",
            &["nanny.conf:4:17: error[C005]: class names are printable ASCII without spaces, at most 256 bytes; '\u{e9}t\u{e9}' is not"],
        ),
        (
            "aftermaxthreads\n",
            &["nanny.conf:4:1: error[C002]: 'aftermaxthreads' needs an argument (a class name)"],
        ),
    ];
    for (extra, want) in rows {
        let got = errors(&format!("{BASE}{extra}"));
        assert_eq!(&got, want, "{extra}");
    }
}

#[test]
fn ip_then_all_addresses_clash_too() {
    let got = errors("rulefile r\nactionfile a\nlisten 80@::1\nlisten 80@\n");
    assert_eq!(
        got,
        vec!["nanny.conf:4:8: error[C007]: port 80 is listened on for all addresses and for one address (line 3); the operating system does not allow both"]
    );
    // Two different addresses on one port are fine.
    ok("rulefile r\nactionfile a\nlisten 80@127.0.0.1\nlisten 80@127.0.0.2\n");
}

#[test]
fn missing_required_directives() {
    let rows: &[(&str, &str)] = &[
        ("actionfile a\nlisten 80\n", "nanny.conf:1:1: error[C006]: there is no 'rulefile' directive; the configuration must name the rules file"),
        ("rulefile r\nlisten 80\n", "nanny.conf:1:1: error[C006]: there is no 'actionfile' directive; the configuration must name the actions file"),
        ("rulefile r\nactionfile a\n", "nanny.conf:1:1: error[C006]: there is no 'listen' directive; the configuration needs at least one 'listen PORT[@IP]'"),
    ];
    for (text, want) in rows {
        assert_eq!(errors(text), vec![want.to_string()], "{text}");
    }
    assert_eq!(errors("").len(), 3);
}

#[test]
fn every_error_is_reported_at_once() {
    let got = errors("bogus\nuser\nlisten x\nlisten 80\n");
    let codes: Vec<&str> = got.iter().map(|s| &s[..s.find(": ").unwrap()]).collect();
    assert_eq!(
        codes,
        vec![
            "nanny.conf:1:1",
            "nanny.conf:1:1",
            "nanny.conf:1:1",
            "nanny.conf:2:1",
            "nanny.conf:3:8"
        ]
    );
}

#[test]
fn indented_first_line() {
    assert_eq!(
        errors("  rulefile r\n"),
        vec!["nanny.conf:1:1: error[F001]: the first line is indented, which makes it a continuation of nothing"]
    );
}

#[test]
fn error_excerpt_points_at_the_argument() {
    let p = parse_conf("n", "rulefile r\nactionfile a\nlisten 80\nmaxthreads x\n");
    let d = &p.diagnostics[0];
    assert!(
        d.excerpt().ends_with("4 | maxthreads x\n  |            ^"),
        "{}",
        d.excerpt()
    );
}

#[test]
fn display_parses_back_to_the_same_value() {
    let texts = [
        BASE.to_owned(),
        "rulefile /r\nactionfile /a\nlisten 1@::1\nlisten 2@10.0.0.1\nlisten 3\nuser u\n\
         dropipafter 2h\nexpireevery 0\nonfileerror drop\nsubstitutions off\nmaxthreads 4\n\
         aftermaxthreads busy\nprivsepuser p\nchrootdir /c\ndnstimeout 1s\nidentdtimeout 7ms\n\
         answersontimeout 1m\ncachettl 1d\ncachesize 5\npassenv TZ LANG\n"
            .to_owned(),
        format!("{BASE}passenv\n"),
    ];
    for t in texts {
        let c = ok(&t);
        let printed = c.to_string();
        assert_eq!(ok(&printed), c, "{printed}");
    }
}

/// Issue 11: xinetd's `passenv`, repeatable, names checked one by one.
#[test]
fn passenv_lists_names_and_reports_each_bad_one() {
    assert_eq!(ok(&format!("{BASE}passenv\n")).passenv, Some(vec![]));
    assert_eq!(
        ok(&format!("{BASE}passenv TZ LANG\npassenv _X1 TZ\n")).passenv,
        Some(vec!["TZ".into(), "LANG".into(), "_X1".into()]),
        "every line adds its names, in order, once each"
    );
    assert_eq!(
        ok(&format!("{BASE}passenv TZ\n  LC_ALL\n")).passenv,
        Some(vec!["TZ".into(), "LC_ALL".into()]),
        "a continuation line carries more names"
    );
    let rows: &[(&str, &[&str])] = &[
        (
            "passenv TZ 1X A-B\n",
            &[
                "nanny.conf:4:12: error[C005]: passenv takes environment variable names (letters, digits and '_', not starting with a digit); '1X' is not one",
                "nanny.conf:4:15: error[C005]: passenv takes environment variable names (letters, digits and '_', not starting with a digit); 'A-B' is not one",
            ],
        ),
        (
            "passenv HOME=/x\n",
            &["nanny.conf:4:9: error[C005]: passenv takes environment variable names (letters, digits and '_', not starting with a digit); 'HOME=/x' is not one"],
        ),
        (
            "passenv TZ # keep the zone\n",
            &["nanny.conf:4:12: error[C005]: passenv takes environment variable names (letters, digits and '_', not starting with a digit); '#' is not one (a comment must be on a line of its own)"],
        ),
    ];
    for (extra, want) in rows {
        let got = errors(&format!("{BASE}{extra}"));
        assert_eq!(&got, want, "{extra}");
    }
}

/// Issue 13: `ipv4prefix` and `ipv6prefix` group source addresses; the defaults group nothing.
#[test]
fn prefix_lengths_group_sources_and_are_range_checked() {
    use policy::grouping::Grouping;
    assert_eq!(ok(BASE).grouping, Grouping::default());
    assert!(ok(BASE).grouping.is_identity());
    let c = ok(&format!("{BASE}ipv4prefix 24\nipv6prefix /64\n"));
    assert_eq!(c.grouping, Grouping::new(24, 64).unwrap());
    assert_eq!(ok(&c.to_string()), c, "printed form parses back");
    let only6 = ok(&format!("{BASE}ipv6prefix 56\n")).grouping;
    assert_eq!((only6.v4(), only6.v6()), (32, 56));
    let rows: &[(&str, &str)] = &[
        (
            "ipv4prefix 0\n",
            "nanny.conf:4:12: error[C005]: ipv4prefix: '0' is not a prefix length from 1 to 32 (such as 24)",
        ),
        (
            "ipv4prefix 33\n",
            "nanny.conf:4:12: error[C005]: ipv4prefix: '33' is not a prefix length from 1 to 32 (such as 24)",
        ),
        (
            "ipv6prefix 129\n",
            "nanny.conf:4:12: error[C005]: ipv6prefix: '129' is not a prefix length from 1 to 128 (such as 64)",
        ),
        (
            "ipv6prefix 64s\n",
            "nanny.conf:4:12: error[C005]: ipv6prefix: '64s' is not a prefix length from 1 to 128 (such as 64)",
        ),
        (
            "ipv4prefix 24\nipv4prefix 16\n",
            "nanny.conf:5:1: error[C004]: 'ipv4prefix' may be given only once; it was already given on line 4",
        ),
        (
            "ipv6prefix\n",
            "nanny.conf:4:1: error[C002]: 'ipv6prefix' needs an argument (a prefix length from 1 to 128)",
        ),
    ];
    for (extra, want) in rows {
        let text = format!("{BASE}{extra}");
        assert_eq!(errors(&text), vec![want.to_string()], "{text}");
    }
}
