//! `%(name)s` substitution: every built-in, undefined names, subst/see merging and the
//! Configuration document's examples.

use std::collections::HashMap;
use std::net::SocketAddr;

use policy::actions::{parse_actions_expanding, Actions};
use policy::decide::{decide, Counts, Decision};
use policy::expand::{
    format_template, render, ExpandErrorKind, ExpandFacts, LogLine, Rendered, Value,
};
use policy::facts::{Classification, HnStatus, HostInfo, MatchedClass, SeenTimes};

fn load(text: &str) -> Actions {
    let p = parse_actions_expanding("actions", text, true);
    let msgs: Vec<String> = p.diagnostics.iter().map(|d| d.to_string()).collect();
    p.value
        .unwrap_or_else(|| panic!("expected {text:?} to load, got {msgs:#?}"))
}

struct NoCounts;
impl Counts for NoCounts {
    fn class_count(&self, _: &str) -> u32 {
        0
    }
    fn ip_count(&self) -> u32 {
        0
    }
}

/// Everything that can vary about a connection, owned, so tests can tweak fields.
struct Conn {
    remote: SocketAddr,
    local: SocketAddr,
    host: Option<HostInfo>,
    identd: Option<String>,
    seen: Option<SeenTimes>,
    classes: Classification,
}

impl Conn {
    fn new(ip: &str, classes: &[(&str, u32, Option<&str>)]) -> Conn {
        Conn {
            remote: format!("{ip}:4711").parse().unwrap(),
            local: "10.0.0.1:25".parse().unwrap(),
            host: None,
            identd: None,
            seen: None,
            classes: Classification {
                classes: classes
                    .iter()
                    .map(|(n, l, lab)| MatchedClass {
                        name: (*n).to_owned(),
                        lineno: *l,
                        label: lab.map(str::to_owned),
                    })
                    .collect(),
            },
        }
    }

    fn facts(&self) -> ExpandFacts<'_> {
        ExpandFacts {
            remote: self.remote,
            local: self.local,
            host: self.host.as_ref(),
            identd: self.identd.as_deref(),
            seen: self.seen,
            classes: &self.classes,
        }
    }

    fn go(&self, a: &Actions) -> (Decision, Rendered) {
        let d = decide(a, &self.classes, &NoCounts);
        let r = render(a, &d, &self.facts(), true);
        (d, r)
    }
}

fn log_text(r: &Rendered) -> Result<String, String> {
    match &r.log {
        Some(Ok(LogLine { text, .. })) => Ok(text.clone()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("no log".into()),
    }
}

fn msg_text(r: &Rendered) -> Result<String, String> {
    match &r.message {
        Some(Ok(t)) => Ok(t.clone()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("no message".into()),
    }
}

fn argv(r: &Rendered) -> Result<Vec<String>, String> {
    match &r.argv {
        Some(Ok(v)) => Ok(v.clone()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("no argv".into()),
    }
}

/// Expands `template` as the faillog of a class refused by ipmax 0, so every name is visible.
fn expand_with(conn: &Conn, template: &str) -> Result<String, String> {
    let name = conn.classes.classes[0].name.clone();
    let a = load(&format!("{name}: ipmax 0 : faillog {template}\n"));
    let (_, r) = conn.go(&a);
    log_text(&r)
}

#[test]
fn every_builtin_when_everything_is_known() {
    let mut c = Conn::new(
        "192.0.2.7",
        &[("cls", 12, Some("dip_DE_pool")), ("GLOBAL", 0, None)],
    );
    c.host = Some(HostInfo {
        status: HnStatus::Good,
        claimed: Some("host.example.org".into()),
    });
    c.identd = Some("bob".into());
    c.seen = Some(SeenTimes {
        first_secs_ago: 3600,
        last_secs_ago: Some(5),
    });
    let rows: &[(&str, &str)] = &[
        ("ip", "192.0.2.7"),
        ("remport", "4711"),
        ("localip", "10.0.0.1"),
        ("port", "25"),
        ("hnstatus", "good"),
        ("claimedhn", "host.example.org"),
        ("hostname", "host.example.org"),
        ("identd", "bob"),
        ("seensince", "3600"),
        ("lastseen", "5"),
        ("connsum", "bob@host.example.org"),
        ("connipsum", "bob@192.0.2.7"),
        ("class", "cls"),
        ("lineno", "12"),
        ("label", "dip DE pool"),
        ("cr", "\r"),
        ("nl", "\n"),
        ("eol", "\r\n"),
        ("limit", "ipmax"),
    ];
    for (name, want) in rows {
        assert_eq!(
            expand_with(&c, &format!("<%({name})s>")),
            Ok(format!("<{want}>")),
            "{name}"
        );
    }
    assert_eq!(rows.len(), policy::expand::BUILTINS.len());
}

#[test]
fn builtins_when_nothing_was_looked_up() {
    let c = Conn::new("192.0.2.7", &[("cls", 3, None)]);
    let defined: &[(&str, &str)] = &[
        ("ip", "192.0.2.7"),
        ("hostname", "192.0.2.7"),
        ("connsum", "192.0.2.7"),
        ("connipsum", "192.0.2.7"),
        ("lineno", "3"),
    ];
    for (name, want) in defined {
        assert_eq!(
            expand_with(&c, &format!("%({name})s")),
            Ok(want.to_string()),
            "{name}"
        );
    }
    for name in [
        "hnstatus",
        "claimedhn",
        "identd",
        "seensince",
        "lastseen",
        "label",
    ] {
        assert_eq!(
            expand_with(&c, &format!("x %({name})s")),
            Err(format!(
                "class cls, faillog: %({name})s is not defined for this connection"
            )),
            "{name}"
        );
    }
}

#[test]
fn partial_lookups() {
    // A failed forward confirmation: claimed name and status known, hostname is the IP.
    let mut c = Conn::new("192.0.2.7", &[("cls", 3, None)]);
    c.host = Some(HostInfo {
        status: HnStatus::AddrMismatch,
        claimed: Some("liar.example".into()),
    });
    assert_eq!(
        expand_with(&c, "%(hnstatus)s %(claimedhn)s %(hostname)s %(connsum)s"),
        Ok("addrmismatch liar.example 192.0.2.7 192.0.2.7".into())
    );
    // No PTR at all: status known, claimed name undefined.
    c.host = Some(HostInfo {
        status: HnStatus::Unknown,
        claimed: None,
    });
    assert_eq!(expand_with(&c, "%(hnstatus)s"), Ok("unknown".into()));
    assert!(expand_with(&c, "%(claimedhn)s").is_err());
    // First connection: seensince is 0 and lastseen undefined.
    c.seen = Some(SeenTimes {
        first_secs_ago: 0,
        last_secs_ago: None,
    });
    assert_eq!(expand_with(&c, "%(seensince)s"), Ok("0".into()));
    assert_eq!(
        expand_with(&c, "%(lastseen)s"),
        Err("class cls, faillog: %(lastseen)s is not defined for this connection".into())
    );
    // An empty identd answer counts as no answer.
    c.identd = Some(String::new());
    assert!(expand_with(&c, "%(identd)s").is_err());
    assert_eq!(expand_with(&c, "%(connsum)s"), Ok("192.0.2.7".into()));
}

#[test]
fn unknown_names() {
    let c = Conn::new("192.0.2.7", &[("cls", 3, None)]);
    let a = load("cls: ipmax 0 : faillog %(labels)s\nother: subst labels x : see cls\n");
    assert_eq!(
        log_text(&c.go(&a).1),
        Err("class cls, faillog: %(labels)s is not a known substitution".into())
    );
    // A name nothing can define fails the load (issue 9 item 2); one that some chain defines
    // fails at run time for a chain that does not.
    let p = parse_actions_expanding("actions", "a: ipmax 0 : failmsg %(abcdef)s\n", true);
    assert!(p.value.is_none());
    let a = load("a: ipmax 0 : failmsg %(abcdef)s\nb: subst abcdef x : see a\n");
    let c = Conn::new("1.2.3.4", &[("a", 1, None)]);
    let (_, r) = c.go(&a);
    let Some(Err(e)) = &r.message else {
        panic!("want an error")
    };
    assert_eq!(e.class, "a");
    assert_eq!(e.directive, "failmsg");
    assert_eq!(e.kind, ExpandErrorKind::Unknown("abcdef".into()));
}

#[test]
fn limit_only_on_limit_refusals() {
    let a = load("a: reject : faillog %(limit)s\nb: connmax 0 : faillog %(limit)s\nc: run x : log %(limit)s\n");
    let (_, r) = Conn::new("1.2.3.4", &[("a", 1, None)]).go(&a);
    assert_eq!(
        log_text(&r),
        Err("class a, faillog: %(limit)s is not defined for this connection".into())
    );
    let (_, r) = Conn::new("1.2.3.4", &[("b", 1, None)]).go(&a);
    assert_eq!(log_text(&r), Ok("connmax".into()));
    let (_, r) = Conn::new("1.2.3.4", &[("c", 1, None)]).go(&a);
    assert!(log_text(&r).is_err());
}

#[test]
fn internal_default_messages() {
    let a = load("lim: ipmax 0\nrej: reject\nok: run x : log\n");
    let (_, r) = Conn::new("127.0.0.1", &[("lim", 1, None)]).go(&a);
    assert_eq!(
        log_text(&r),
        Ok("refused: 127.0.0.1 rejected by lim ipmax limit".into())
    );
    let (_, r) = Conn::new("127.0.0.1", &[("rej", 1, None)]).go(&a);
    assert_eq!(log_text(&r), Ok("rejected: 127.0.0.1 by rej".into()));
    let (_, r) = Conn::new("0.0.0.1", &[("ok", 1, None)]).go(&a);
    assert_eq!(log_text(&r), Ok("accepted: 0.0.0.1 by ok".into()));
}

#[test]
fn subst_is_overridden_only_by_defined_builtins() {
    let a = load(
        "A: subst identd UNKNOWN : run whatever :\n   log Got a connection from %(ip)s with identd %(identd)s\n",
    );
    let mut c = Conn::new("1.2.3.4", &[("A", 1, None)]);
    let (_, r) = c.go(&a);
    assert_eq!(
        log_text(&r),
        Ok("Got a connection from 1.2.3.4 with identd UNKNOWN".into())
    );
    c.identd = Some("alice".into());
    let (_, r) = c.go(&a);
    assert_eq!(
        log_text(&r),
        Ok("Got a connection from 1.2.3.4 with identd alice".into())
    );
    // A subst named like an always-defined built-in is always ignored.
    let a = load("B: subst ip nope : msg %(ip)s\n");
    let (_, r) = Conn::new("1.2.3.4", &[("B", 1, None)]).go(&a);
    assert_eq!(msg_text(&r), Ok("1.2.3.4".into()));
}

#[test]
fn original_subst_tests() {
    let a = load(
        "class1: reject : subst abc foo-%(ip)s-bar : subst def HUP HIKE\n\
         class2: subst identd UNKNOWN : run id -x %(identd)s\n\
         DEFAULT-REJECT: faillog 1: %(abc)s 2: %(def)s\n",
    );
    let (_, r) = Conn::new("127.100.1.2", &[("class1", 1, None)]).go(&a);
    assert_eq!(
        log_text(&r),
        Ok("1: foo-127.100.1.2-bar 2: HUP HIKE".into())
    );
    let (_, r) = Conn::new("127.100.1.2", &[("class2", 1, None)]).go(&a);
    assert_eq!(
        argv(&r),
        Ok(vec!["id".into(), "-x".into(), "UNKNOWN".into()])
    );
    // The table is not changed by rendering: a second connection gets its own values.
    let (_, r) = Conn::new("0.0.1.0", &[("class1", 1, None)]).go(&a);
    assert_eq!(log_text(&r), Ok("1: foo-0.0.1.0-bar 2: HUP HIKE".into()));
}

#[test]
fn subst_shadowing_through_see() {
    let a = load(
        "classA1: subst abc def : subst def DEFJAM : see classA2\n\
         classA2: subst qzi take-%(abc)s : see classA3\n\
         classA3: subst abc HIKE : subst kij HERE :\n\
         \trun foobar-me : log %(abc)s -- %(qzi)s -- %(def)s -- %(kij)s\n\
         classA4: see classA3 : subst qzi IKE : subst def 2IKE : subst kij not-here\n",
    );
    let (_, r) = Conn::new("0.0.0.1", &[("classA1", 1, None)]).go(&a);
    assert_eq!(argv(&r), Ok(vec!["foobar-me".into()]));
    assert_eq!(log_text(&r), Ok("def -- take-def -- DEFJAM -- HERE".into()));
    let (_, r) = Conn::new("0.0.0.1", &[("classA4", 1, None)]).go(&a);
    assert_eq!(log_text(&r), Ok("HIKE -- IKE -- 2IKE -- not-here".into()));
}

const WIZARD: &str = "\
A: see C : subst extra we are coming from %(hostname)s in A
B: see C : subst extra we are coming from B
C: see E : subst info %(extra)s and from C too
D: see E : subst info because we came from %(ip)s
E: reject : faillog Failed in E: %(info)s
";

#[test]
fn bonus_wizard_example() {
    let a = load(WIZARD);
    let mut c = Conn::new("192.0.2.9", &[("A", 1, None)]);
    c.host = Some(HostInfo {
        status: HnStatus::Good,
        claimed: Some("wiz.example".into()),
    });
    let (_, r) = c.go(&a);
    assert_eq!(
        log_text(&r),
        Ok("Failed in E: we are coming from wiz.example in A and from C too".into())
    );
    let (_, r) = Conn::new("192.0.2.9", &[("B", 1, None)]).go(&a);
    assert_eq!(
        log_text(&r),
        Ok("Failed in E: we are coming from B and from C too".into())
    );
    let (_, r) = Conn::new("192.0.2.9", &[("D", 1, None)]).go(&a);
    assert_eq!(
        log_text(&r),
        Ok("Failed in E: because we came from 192.0.2.9".into())
    );
    // "If C is ever used directly there will be explosions."
    let (_, r) = Conn::new("192.0.2.9", &[("C", 1, None)]).go(&a);
    assert_eq!(
        log_text(&r),
        Err("class C, subst info: %(extra)s is not a known substitution".into())
    );
    let (_, r) = Conn::new("192.0.2.9", &[("E", 1, None)]).go(&a);
    assert_eq!(
        log_text(&r),
        Err("class E, faillog: %(info)s is not a known substitution".into())
    );
}

#[test]
fn dnsbl_example_as_printed() {
    // As printed in the document: the faillog line has no ' : ' before failmsg, so the
    // failmsg text is part of the faillog and the classes have no failmsg.
    let a = load(
        "bl-a:\tsubst blmsg On DNSBL http://foo.bar : see DNSBL\n\
         DNSBL:\tfaillog refused %(connsum)s: DNS blocklist class %(class)s\n\
         \t\tfailmsg 500 Sorry, %(ip)s. Connection refused. %(blmsg)s\n\
         \t\t: reject : norepeatlog\n",
    );
    let (d, r) = Conn::new("192.0.2.1", &[("bl-a", 1, None)]).go(&a);
    assert_eq!(d.disposition, policy::decide::Disposition::Close);
    assert_eq!(
        log_text(&r),
        Ok("refused 192.0.2.1: DNS blocklist class bl-a failmsg 500 Sorry, 192.0.2.1. Connection refused. On DNSBL http://foo.bar".into())
    );
}

#[test]
fn dnsbl_example_with_separator() {
    let a = load(
        "bl-a:\tsubst blmsg On DNSBL http://foo.bar : see DNSBL\n\
         bl-b:\tsubst blmsg http://baz.orp lists you as an open proxy\n\t: see DNSBL\n\
         bl-c:\tsubst blmsg Please read http://dnsbl/FAQ : see DNSBL\n\
         bl-d:\tsubst blmsg Pleass see http://dnsbl2/query?ip=%(ip)s\n\t: see DNSBL\n\
         DNSBL:\tfaillog refused %(connsum)s: DNS blocklist class %(class)s :\n\
         \t\tfailmsg 500 Sorry, %(ip)s. Connection refused. %(blmsg)s\n\
         \t\t: reject : norepeatlog\n",
    );
    let rows: &[(&str, &str)] = &[
        ("bl-a", "On DNSBL http://foo.bar"),
        ("bl-b", "http://baz.orp lists you as an open proxy"),
        ("bl-c", "Please read http://dnsbl/FAQ"),
        ("bl-d", "Pleass see http://dnsbl2/query?ip=192.0.2.1"),
    ];
    for (cls, blmsg) in rows {
        let (d, r) = Conn::new("192.0.2.1", &[(cls, 1, None)]).go(&a);
        assert_eq!(d.disposition, policy::decide::Disposition::FailMsg);
        assert_eq!(
            msg_text(&r),
            Ok(format!("500 Sorry, 192.0.2.1. Connection refused. {blmsg}"))
        );
        let Some(Ok(line)) = &r.log else {
            panic!("no log for {cls}")
        };
        assert_eq!(
            line.text,
            format!("refused 192.0.2.1: DNS blocklist class {cls}")
        );
        assert!(line.norepeat);
    }
    // Used directly, DNSBL's failmsg has no blmsg.
    let (_, r) = Conn::new("192.0.2.1", &[("DNSBL", 1, None)]).go(&a);
    assert_eq!(
        msg_text(&r),
        Err("class DNSBL, failmsg: %(blmsg)s is not a known substitution".into())
    );
}

#[test]
fn errors_name_the_class_that_holds_the_text() {
    let a = load(
        "x: see y\ny: msg %(nope)s\nz: see w : reject\nw: faillog %(bad)s\n\
         v: subst nope 1 : subst bad 2 : see y\nu: see w : subst bad 2\n",
    );
    let (_, r) = Conn::new("1.2.3.4", &[("x", 1, None)]).go(&a);
    assert_eq!(
        msg_text(&r),
        Err("class y, msg (used for class x): %(nope)s is not a known substitution".into())
    );
    let a = load("r: reject\nDEFAULTMSGS: failmsg %(oops)s\ns: reject : subst oops 1\n");
    let (_, r) = Conn::new("1.2.3.4", &[("r", 1, None)]).go(&a);
    assert_eq!(
        msg_text(&r),
        Err(
            "class DEFAULTMSGS, failmsg (used for class r): %(oops)s is not a known substitution"
                .into()
        )
    );
}

#[test]
fn default_class_strings_use_the_refusing_class() {
    let a = load(
        "class8: reject\nDEFAULT-REJECT: failmsg no %(class)s at %(lineno)s : faillog by %(class)s/%(label)s\n",
    );
    let (_, r) = Conn::new("1.2.3.4", &[("class8", 42, Some("a_b"))]).go(&a);
    assert_eq!(msg_text(&r), Ok("no class8 at 42".into()));
    assert_eq!(log_text(&r), Ok("by class8/a b".into()));
}

#[test]
fn run_argv_split_before_substitution() {
    let a = load(
        "class1: run foo %(label)s\nclass2: failrun bar %(label)s : reject\nclass3: run baz%(label)s\nclass4: reject : failmsg a b c\n",
    );
    let rows: &[(&str, &str, Option<&[&str]>)] = &[
        ("class1", "1 2", Some(&["foo", "1 2"])),
        ("class2", "3 4", Some(&["bar", "3 4"])),
        ("class3", "5 6", Some(&["baz5 6"])),
        ("class1", " 1 3", Some(&["foo", " 1 3"])),
        ("class4", "1 2", None),
    ];
    for (cls, label, want) in rows {
        let (_, r) = Conn::new("1.2.3.4", &[(cls, 1, Some(label))]).go(&a);
        match want {
            Some(w) => assert_eq!(
                argv(&r),
                Ok(w.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            ),
            None => {
                assert!(r.argv.is_none());
                assert_eq!(msg_text(&r), Ok("a b c".into()));
            }
        }
    }
}

#[test]
fn environment() {
    let a = load(
        "env1: msg foo : setenv a 1\n\
         env2: run foo : setenv b ip %(ip)s is it\n\
         env3: run foo : setenv foobar 1 : setenv barozp 2 : see env4\n\
         env4: setenv foobar 3 : setenv c %(nope)s\n\
         env5: subst nope 1 : see env4\n",
    );
    let (_, r) = Conn::new("127.0.0.1", &[("env2", 1, None)]).go(&a);
    assert_eq!(r.env, Ok(vec![("b".into(), "ip 127.0.0.1 is it".into())]));
    // Environment is only for programs.
    let (_, r) = Conn::new("127.0.0.1", &[("env1", 1, None)]).go(&a);
    assert_eq!(r.env, Ok(vec![]));
    let (_, r) = Conn::new("127.0.0.1", &[("env3", 1, None)]).go(&a);
    assert_eq!(
        r.env.map_err(|e| e.to_string()),
        Err(
            "class env4, setenv c (used for class env3): %(nope)s is not a known substitution"
                .into()
        )
    );
}

#[test]
fn records_have_no_subst_and_their_own_class() {
    // A record never sees subst names, so a name that is not a built-in fails the load.
    let p = parse_actions_expanding("actions", "q: record %(x)s : subst x y\n", true);
    let got: Vec<String> = p.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(got, vec!["actions:1:13: error[A019]: '%(x)' is never defined: record strings see only the built-in names, and 'x' is not one"]);
    let a =
        load("r: record rec %(class)s %(lineno)s : subst x y : run p %(x)s\nq: record %(label)s\n");
    let c = Conn::new("1.2.3.4", &[("r", 7, None), ("q", 9, None)]);
    let (_, r) = c.go(&a);
    assert_eq!(argv(&r), Ok(vec!["p".into(), "y".into()]));
    assert_eq!(r.records.len(), 2);
    assert_eq!(r.records[0], Ok("rec r 7".into()));
    assert_eq!(
        r.records[1].clone().map_err(|e| e.to_string()),
        Err("class q, record: %(label)s is not defined for this connection".to_string())
    );
}

#[test]
fn substitutions_off_uses_strings_literally() {
    let a = load(
        "a: ipmax 0 : faillog %(ip)s 100%% : failmsg %(nope)s\nb: run x %(ip)s\n\
         c: subst nope 1 : see a\n",
    );
    let c = Conn::new("1.2.3.4", &[("a", 1, None)]);
    let d = decide(&a, &c.classes, &NoCounts);
    let r = render(&a, &d, &c.facts(), false);
    assert_eq!(log_text(&r), Ok("%(ip)s 100%%".into()));
    assert_eq!(msg_text(&r), Ok("%(nope)s".into()));
    let c = Conn::new("1.2.3.4", &[("b", 1, None)]);
    let d = decide(&a, &c.classes, &NoCounts);
    let r = render(&a, &d, &c.facts(), false);
    assert_eq!(argv(&r), Ok(vec!["x".into(), "%(ip)s".into()]));
}

#[test]
fn format_specs_like_python() {
    let vals: HashMap<&str, Value> = [
        ("ip", Value::Str("1.2.3.4".into())),
        ("port", Value::Int(80)),
        ("neg", Value::Int(-5)),
        ("q", Value::Str("it's".into())),
        ("a(b)", Value::Str("nested".into())),
    ]
    .into_iter()
    .collect();
    let lookup = |n: &str| {
        vals.get(n)
            .cloned()
            .ok_or_else(|| ExpandErrorKind::Unknown(n.to_owned()))
    };
    let ok: &[(&str, &str)] = &[
        ("plain", "plain"),
        ("100%%", "100%"),
        ("%%(ip)s", "%(ip)s"),
        ("%(ip)s", "1.2.3.4"),
        ("%(port)s", "80"),
        ("%(port)d", "80"),
        ("%(port)i", "80"),
        ("%(port)05d", "00080"),
        ("%(port)-5d|", "80   |"),
        ("%(port)+d", "+80"),
        ("%(neg)d", "-5"),
        ("%(neg)04d", "-005"),
        ("%(port)x %(port)X %(port)o", "50 50 120"),
        ("%(port)#x %(port)#o", "0x50 0120"),
        ("%(port).3d", "080"),
        ("%(port)ld", "80"),
        ("%(port).1f", "80.0"),
        ("%(ip)10s|", "   1.2.3.4|"),
        ("%(ip)-10s|", "1.2.3.4   |"),
        ("%(ip).3s", "1.2"),
        ("%(ip) s", "1.2.3.4"),
        ("%(ip)r", "'1.2.3.4'"),
        ("%(q)r", "\"it's\""),
        ("%(a(b))s", "nested"),
        ("%(port)c", "P"),
        ("%(port)05s|", "   80|"),
        ("%(neg) d", "-5"),
        ("%(port) d", " 80"),
    ];
    for (t, want) in ok {
        assert_eq!(format_template(t, &lookup), Ok(want.to_string()), "{t}");
    }
    let bad: &[(&str, ExpandErrorKind)] = &[
        ("%(nope)s", ExpandErrorKind::Unknown("nope".into())),
        (
            "%(ip)d",
            ExpandErrorKind::BadFormat("%(ip)d needs a number, but ip is text (use %(ip)s)".into()),
        ),
        (
            "100%",
            ExpandErrorKind::BadFormat(
                "a lone '%' at the end: write %% for a percent sign (character 4)".into(),
            ),
        ),
        (
            "100% sure",
            ExpandErrorKind::BadFormat(
                "'% ' at character 4: write %(name)s for a substitution or %% for a percent sign"
                    .into(),
            ),
        ),
        (
            "%s",
            ExpandErrorKind::BadFormat(
                "'%s' at character 1: write %(name)s for a substitution or %% for a percent sign"
                    .into(),
            ),
        ),
        (
            "%(ip",
            ExpandErrorKind::BadFormat("'%(' at character 1 has no closing ')'".into()),
        ),
        (
            "x %(ip)",
            ExpandErrorKind::BadFormat(
                "%(ip) at character 3 has no conversion letter (as in %(ip)s)".into(),
            ),
        ),
        (
            "%(ip). ",
            ExpandErrorKind::BadFormat("unsupported conversion ' ' in %(ip)  (use %(ip)s)".into()),
        ),
        (
            "%(ip)*s",
            ExpandErrorKind::BadFormat(
                "'*' in %(ip) needs a number argument, which substitutions cannot give".into(),
            ),
        ),
        (
            "%(ip)99999s",
            ExpandErrorKind::BadFormat("width or precision '99999' in %(ip) is too large".into()),
        ),
    ];
    for (t, want) in bad {
        assert_eq!(format_template(t, &lookup).as_ref(), Err(want), "{t}");
    }
}

#[test]
fn no_action_class_renders_only_records() {
    let a = load("r: record hi %(ip)s\n");
    let (d, r) = Conn::new("1.2.3.4", &[("r", 1, None)]).go(&a);
    assert_eq!(d.action_class, None);
    assert_eq!(r.argv, None);
    assert_eq!(r.message, None);
    assert_eq!(r.log, None);
    assert_eq!(r.records, vec![Ok("hi 1.2.3.4".into())]);
}

#[test]
fn norepeat_flag_is_passed_on() {
    let a = load("a: run x : log : norepeatlog\nb: run x : log\n");
    let (_, r) = Conn::new("1.2.3.4", &[("a", 1, None)]).go(&a);
    assert!(matches!(&r.log, Some(Ok(l)) if l.norepeat));
    let (_, r) = Conn::new("1.2.3.4", &[("b", 1, None)]).go(&a);
    assert!(matches!(&r.log, Some(Ok(l)) if !l.norepeat));
}

#[test]
fn ipv6_peer() {
    let c = Conn::new("[2001:db8::5]", &[("cls", 1, None)]);
    assert_eq!(
        expand_with(&c, "%(ip)s %(connsum)s"),
        Ok("2001:db8::5 2001:db8::5".into())
    );
}
