//! nanny.conf's listen options (issue 13, an extension): `proxy from ADDRSPEC...`, `backlog N`,
//! `nodelay`, `keepalive` after `PORT[@IP]`; plain lines unchanged; every error as a golden
//! `file:line:col` string.

use std::net::IpAddr;

use policy::conf::{Listen, ListenOptions};
use policy::listenopts::DEFAULT_BACKLOG;

mod conf_common;
use conf_common::{errors, ok, BASE};

const HEAD: &str = "rulefile r\nactionfile a\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn opts(line: &str) -> ListenOptions {
    let c = ok(&format!("{HEAD}{line}\n"));
    assert_eq!(c.listens.len(), 1);
    c.listen_options(&c.listens[0])
}

#[test]
fn a_plain_listen_has_no_options() {
    let c = ok(&format!("{HEAD}listen 80\nlisten 81@127.0.0.1\n"));
    assert!(c.listen_options.is_empty(), "portnanny 2 lines stay plain");
    assert!(ok(BASE).listen_options.is_empty());
    for l in &c.listens {
        let o = c.listen_options(l);
        assert!(o.is_plain());
        assert_eq!(o.backlog(), DEFAULT_BACKLOG);
    }
}

#[test]
fn options_in_any_order() {
    let want_set = |o: &ListenOptions| {
        let p = o.proxy.as_ref().expect("proxy");
        assert!(p.set.contains(ip("192.0.2.10")));
        assert!(p.set.contains(ip("10.1.2.3")));
        assert!(p.set.contains(ip("2001:db8::7")));
        assert!(!p.set.contains(ip("192.0.2.11")));
        assert!(!p.set.contains(ip("127.0.0.1")));
    };
    for line in [
        "listen 2525 proxy from 192.0.2.10,10.0.0.0/8,2001:db8::/64 backlog 50 nodelay keepalive",
        "listen 2525 keepalive nodelay backlog 50 proxy from 192.0.2.10 10.0.0.0/8 2001:db8::/64",
        "listen 2525 nodelay proxy from 192.0.2.10,10.0.0.0/8\n  2001:db8::/64 keepalive backlog +50",
    ] {
        let o = opts(line);
        want_set(&o);
        assert_eq!(o.backlog, Some(50), "{line}");
        assert!(o.nodelay && o.keepalive, "{line}");
    }
    let o = opts("listen 25@127.0.0.1 nodelay");
    assert!(o.nodelay && !o.keepalive && o.proxy.is_none() && o.backlog.is_none());
    let o = opts("listen 25 backlog 65535");
    assert_eq!(o.backlog(), 65535);
    let o = opts("listen 25 proxy from 127.0.0.9");
    assert_eq!(o.proxy.unwrap().specs, vec!["127.0.0.9".to_owned()]);
}

#[test]
fn options_belong_to_their_own_listen() {
    let c = ok(&format!(
        "{HEAD}listen 80\nlisten 81@127.0.0.1 proxy from 127.0.0.9\nlisten 82 keepalive\n"
    ));
    let l = |port: u16, addr: Option<&str>| Listen {
        port,
        addr: addr.map(ip),
    };
    assert!(c.listen_options(&l(80, None)).is_plain());
    assert!(c.listen_options(&l(81, Some("127.0.0.1"))).proxy.is_some());
    assert!(c.listen_options(&l(82, None)).keepalive);
    assert!(!c.listen_options(&l(82, None)).nodelay);
}

#[test]
fn display_parses_back_to_the_same_value() {
    let c = ok(&format!(
        "{HEAD}listen 80 proxy from 192.0.2.0/24 ::1 backlog 7 keepalive\nlisten 81 nodelay\n\
         listen 82\n"
    ));
    let printed = c.to_string();
    assert!(
        printed.contains("listen 80@* proxy from 192.0.2.0/24,::1 backlog 7 keepalive\n"),
        "{printed}"
    );
    assert_eq!(ok(&printed), c, "{printed}");
}

#[test]
fn every_error_has_its_column() {
    let rows: &[(&str, &[&str])] = &[
        (
            "listen 80 fast\n",
            &["nanny.conf:3:11: error[C020]: unknown listen option 'fast' (known: proxy from ADDRSPEC, backlog N, nodelay, keepalive)"],
        ),
        (
            "listen 80 # web\n",
            &["nanny.conf:3:11: error[C020]: unknown listen option '#' (known: proxy from ADDRSPEC, backlog N, nodelay, keepalive) (a comment must be on a line of its own)"],
        ),
        (
            "listen 80 nodelay nodelay\n",
            &["nanny.conf:3:19: error[C020]: 'nodelay' is given twice on this listen line"],
        ),
        (
            "listen 80 backlog\n",
            &["nanny.conf:3:11: error[C020]: 'backlog' needs a number, as in 'backlog 4096'"],
        ),
        (
            "listen 80 backlog nodelay\n",
            &["nanny.conf:3:11: error[C020]: 'backlog' needs a number, as in 'backlog 4096'"],
        ),
        (
            "listen 80 backlog 0\n",
            &["nanny.conf:3:19: error[C020]: backlog must be a whole number from 1 to 65535, not '0'"],
        ),
        (
            "listen 80 backlog 65536\n",
            &["nanny.conf:3:19: error[C020]: backlog must be a whole number from 1 to 65535, not '65536'"],
        ),
        (
            "listen 80 proxy\n",
            &["nanny.conf:3:11: error[C020]: 'proxy' is followed by 'from' and the load balancers' addresses, as in 'proxy from 192.0.2.10,192.0.2.11'"],
        ),
        (
            "listen 80 proxy 10.0.0.1\n",
            &[
                "nanny.conf:3:11: error[C020]: 'proxy' is followed by 'from' and the load balancers' addresses, as in 'proxy from 192.0.2.10,192.0.2.11'",
                "nanny.conf:3:17: error[C020]: unknown listen option '10.0.0.1' (known: proxy from ADDRSPEC, backlog N, nodelay, keepalive)",
            ],
        ),
        (
            "listen 80 proxy from\n",
            &["nanny.conf:3:17: error[C020]: 'proxy from' needs the load balancers' addresses, as in 'proxy from 192.0.2.10,192.0.2.11'"],
        ),
        (
            "listen 80 proxy from nodelay\n",
            &["nanny.conf:3:17: error[C020]: 'proxy from' needs the load balancers' addresses, as in 'proxy from 192.0.2.10,192.0.2.11'"],
        ),
        (
            "listen 80 proxy from 10.0.0.1,lb.example\n",
            &["nanny.conf:3:31: error[C020]: proxy from takes load balancers' addresses: 'lb.example' is not an IP address, prefix, CIDR netblock or range (bad characters)"],
        ),
        (
            "listen 80 proxy from 10.0.0.1,,10.0.0.2\n",
            &["nanny.conf:3:31: error[C020]: proxy from takes load balancers' addresses: an empty IP address"],
        ),
        (
            "listen 80 proxy from 10.0.0.1/8\n",
            &["nanny.conf:3:22: error[C020]: proxy from takes load balancers' addresses: 10.0.0.1/8 is not a proper CIDR netblock; did you mean 10.0.0.0/8?"],
        ),
        (
            "listen 80 proxy from 10.0.0.1 #lb\n",
            &["nanny.conf:3:31: error[C020]: a comment must be on a line of its own"],
        ),
        (
            "listen 80 proxy from 10.0.0.1 proxy from 10.0.0.2\n",
            &["nanny.conf:3:31: error[C020]: 'proxy' is given twice on this listen line"],
        ),
        (
            // A bad port and a bad option: both reported in one run.
            "listen 0 nodelay fast\n",
            &[
                "nanny.conf:1:1: error[C006]: there is no 'listen' directive; the configuration needs at least one 'listen PORT[@IP]'",
                "nanny.conf:3:8: error[C005]: bad port '0': a port is 1 to 65535",
                "nanny.conf:3:18: error[C020]: unknown listen option 'fast' (known: proxy from ADDRSPEC, backlog N, nodelay, keepalive)",
            ],
        ),
    ];
    for (line, want) in rows {
        let got = errors(&format!("{HEAD}{line}"));
        assert_eq!(&got, want, "{line:?}");
    }
}
