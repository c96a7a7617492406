//! End to end (parse → decide → render) on the situations the original's own test suite
//! checked: what gets logged, which action runs with which argument, the default-message matrix,
//! `see` cascades and limits through `see`. Expected values are the original's, including the
//! internal default log lines.

use std::collections::HashMap;
use std::net::SocketAddr;

use policy::actions::{parse_actions, Actions};
use policy::decide::{decide, Counts, Disposition};
use policy::expand::{render, ExpandFacts, Rendered};
use policy::facts::{Classification, MatchedClass};

fn load(text: &str) -> Actions {
    let p = parse_actions("actions", text);
    let msgs: Vec<String> = p.diagnostics.iter().map(|d| d.to_string()).collect();
    p.value
        .unwrap_or_else(|| panic!("expected {text:?} to load, got {msgs:#?}"))
}

#[derive(Default)]
struct Fixed {
    ip: u32,
    class: HashMap<String, u32>,
}

impl Counts for Fixed {
    fn class_count(&self, class: &str) -> u32 {
        self.class.get(class).copied().unwrap_or(0)
    }
    fn ip_count(&self) -> u32 {
        self.ip
    }
}

/// What the original's `Act` held: the action, its argument string, and the log lines
/// (records first, then log/faillog).
#[derive(Debug, PartialEq)]
struct Outcome {
    what: Option<&'static str>,
    arg: Option<String>,
    logs: Vec<String>,
}

fn outcome(a: &Actions, names: &[&str], ip: &str, counts: &Fixed) -> Outcome {
    let classes = Classification {
        classes: names
            .iter()
            .map(|n| MatchedClass {
                name: (*n).to_owned(),
                lineno: 0,
                label: None,
            })
            .collect(),
    };
    let d = decide(a, &classes, counts);
    let facts = ExpandFacts {
        remote: SocketAddr::new(ip.parse().unwrap(), 5000),
        local: "127.0.0.1:25".parse().unwrap(),
        host: None,
        identd: None,
        seen: None,
        classes: &classes,
    };
    let r: Rendered = render(a, &d, &facts, true);
    let mut logs: Vec<String> = r.records.into_iter().map(|x| x.unwrap()).collect();
    if let Some(l) = r.log {
        logs.push(l.unwrap().text);
    }
    let (what, arg) = match d.disposition {
        Disposition::Run => (Some("run"), r.argv.map(|v| v.unwrap().join(" "))),
        Disposition::FailRun => (Some("failrun"), r.argv.map(|v| v.unwrap().join(" "))),
        Disposition::Msg => (Some("msg"), r.message.map(|m| m.unwrap())),
        Disposition::FailMsg => (Some("failmsg"), r.message.map(|m| m.unwrap())),
        Disposition::Close => (None, None),
    };
    Outcome { what, arg, logs }
}

fn o(what: Option<&'static str>, arg: Option<&str>, logs: &[&str]) -> Outcome {
    Outcome {
        what,
        arg: arg.map(str::to_owned),
        logs: logs.iter().map(|s| s.to_string()).collect(),
    }
}

const EVAL: &str = "
class1: record log1
class2: log log2 : run funcarg1
class3: ipmax 10 : faillog log3
class3.5: ipmax 0 : faillog class %(class)s
class4: msg funcarg2
class5: reject : quiet
class6: record log4
class7: drop : log log7 : faillog log7-fail : msg doit
class7F: drop : log log7F : faillog log7F-fail : ipmax 0
class8: quiet : log log8 : faillog log8-fail : msg doit
class8F: quiet : log log8F : faillog log8F-fail : ipmax 0
class8FD: quiet : log log8FD : ipmax 0
class9: ipmax 0
classA: failmsg a : ipmax 0
classB: failrun b : ipmax 0
classC: run c
classD: msg d
classE: drop
classF: run F %(ip)s
classG: run G : ipmax 10 : failmsg gfail
classH: run H : ipmax 0 : failmsg hfail
classI: drop : failrun i-fail : run i-success
";

#[test]
fn logged_results() {
    let a = load(EVAL);
    let rows: &[(&[&str], &[&str])] = &[
        (&["class1", "class3"], &["log1"]),
        (&["class1", "class2"], &["log1", "log2"]),
        (&["class1", "class2", "class6"], &["log1", "log4", "log2"]),
        (&["class1", "class6", "class2"], &["log1", "log4", "log2"]),
        (&["class5"], &[]),
        (&["class3.5"], &["class class3.5"]),
        (&["class7"], &["log7"]),
        (&["class7F"], &["log7F-fail"]),
        (&["class8"], &["log8"]),
        (&["class8F"], &["log8F-fail"]),
        (&["class8FD"], &[]),
        (
            &["class9"],
            &["refused: 127.0.0.1 rejected by class9 ipmax limit"],
        ),
    ];
    for (names, logs) in rows {
        let got = outcome(&a, names, "127.0.0.1", &Fixed::default());
        assert_eq!(got.logs, *logs, "{names:?}");
    }
}

#[test]
fn function_results() {
    let a = load(EVAL);
    let rows: &[(&[&str], Option<&str>, Option<&str>)] = &[
        (&["classA"], Some("failmsg"), Some("a")),
        (&["classB"], Some("failrun"), Some("b")),
        (&["classC"], Some("run"), Some("c")),
        (&["classD"], Some("msg"), Some("d")),
        (&["classE"], None, None),
        (&["classF"], Some("run"), Some("F 127.0.0.1")),
        (&["classA", "classC"], Some("failmsg"), Some("a")),
        (&["classC", "classD"], Some("run"), Some("c")),
        (&["classG"], Some("run"), Some("G")),
        (&["classH"], Some("failmsg"), Some("hfail")),
        (&["classI"], None, None),
    ];
    for (names, what, arg) in rows {
        let got = outcome(&a, names, "127.0.0.1", &Fixed::default());
        assert_eq!((got.what, got.arg.as_deref()), (*what, *arg), "{names:?}");
    }
}

#[test]
fn default_message_matrix() {
    let base = "
class1: faillog f1-log : failmsg f1-msg : ipmax 0
class2: ipmax 0
class3: connmax 0
class4: connmax 0 : quiet
class5: ipmax 0 : quiet
class6: faillog c6-l : ipmax 0
class7: failmsg c7-m : ipmax 0
class8: reject
";
    let ip_def = "DEFAULT-IPMAX: failmsg ipmax-m : faillog ipmax-l";
    let ip_part = "DEFAULT-IPMAX: failmsg ipmax-m2";
    let conn_def = "DEFAULT-CONNMAX: failmsg connmax-m : faillog connmax-l";
    let base_def = "DEFAULTMSGS: failmsg gen-m : faillog gen-l";
    let rej_def = "DEFAULT-REJECT: failmsg rej-m : faillog rej-l";
    let all3 = [ip_def, conn_def, base_def];
    let rows: Vec<(Vec<&str>, &str, &str, Vec<&str>)> = vec![
        (vec![], "class1", "f1-msg", vec!["f1-log"]),
        (all3.to_vec(), "class1", "f1-msg", vec!["f1-log"]),
        (all3.to_vec(), "class2", "ipmax-m", vec!["ipmax-l"]),
        (all3.to_vec(), "class3", "connmax-m", vec!["connmax-l"]),
        (vec![rej_def], "class8", "rej-m", vec!["rej-l"]),
        (vec![base_def], "class8", "gen-m", vec!["gen-l"]),
        // quiet stops default faillogs, not default failmsgs.
        (all3.to_vec(), "class4", "connmax-m", vec![]),
        (all3.to_vec(), "class5", "ipmax-m", vec![]),
        (vec![ip_def, base_def], "class2", "ipmax-m", vec!["ipmax-l"]),
        (vec![ip_def, base_def], "class3", "gen-m", vec!["gen-l"]),
        (vec![conn_def, base_def], "class2", "gen-m", vec!["gen-l"]),
        (
            vec![conn_def, base_def],
            "class3",
            "connmax-m",
            vec!["connmax-l"],
        ),
        (vec![ip_def], "class6", "ipmax-m", vec!["c6-l"]),
        (vec![ip_def], "class7", "c7-m", vec!["ipmax-l"]),
        // An incomplete DEFAULT-IPMAX: its failmsg, then DEFAULTMSGS's faillog (never
        // DEFAULT-CONNMAX's).
        (
            vec![ip_part, conn_def, base_def],
            "class2",
            "ipmax-m2",
            vec!["gen-l"],
        ),
    ];
    for (defs, cls, msg, logs) in rows {
        let a = load(&format!("{base}{}\n", defs.join("\n")));
        let got = outcome(&a, &[cls], "127.0.0.1", &Fixed::default());
        assert_eq!(got.arg.as_deref(), Some(msg), "{defs:?} {cls}");
        assert_eq!(got.logs, logs, "{defs:?} {cls}");
    }
}

const SEE: &str = "
class1: see class2 : log froboznik
class1.5: reject : see class2
class2: faillog a : run b : failmsg mf-2
class3: see class4 : ipmax 10 : connmax 10
class3.5: see class6 : ipmax 10
class4: quiet : see class5 : run class4-r
class5: ipmax 0 : connmax 0
class6: connmax 0
classA: setenv a 1 : see classB
classB: setenv a 2 : see classC
classC: setenv b 10 : run foobar : log
class10: see class11 : drop
class11: see class12 : run foobar
class12: msg baz
class13: run c13-run : see class10
class20: see class21 : failrun 20-fr
class21: see class22 : failmsg 21-fm
class22: reject : faillog 22-F
class23: see class20 : failmsg 23-fm : faillog 23-F
class30: see class31 : ipmax 30
class31: connmax 0 : ipmax 0 : see class31a
class31a: reject
class32: see class31 : connmax 30
class33: see class32 : ipmax 30
class40: see class41
class41: record 41-record
class42: see class40 : record frobnitz-42
class50: see class51
class51: ipmax 1 : connmax 1 : faillog failed %(limit)s : run foo
DEFAULT-IPMAX: faillog ipmax-fl
DEFAULT-CONNMAX: faillog connmax-fl
DEFAULT-REJECT: faillog reject-fl
";

#[test]
fn see_cascades() {
    let a = load(SEE);
    let rows: &[(&str, Outcome)] = &[
        ("class1", o(Some("run"), Some("b"), &["froboznik"])),
        ("class1.5", o(Some("failmsg"), Some("mf-2"), &["a"])),
        ("class2", o(Some("run"), Some("b"), &[])),
        ("class5", o(None, None, &["ipmax-fl"])),
        ("class4", o(None, None, &[])),
        ("class3", o(Some("run"), Some("class4-r"), &[])),
        ("class3.5", o(None, None, &["connmax-fl"])),
        (
            "classA",
            o(
                Some("run"),
                Some("foobar"),
                &["accepted: 0.0.0.1 by classA"],
            ),
        ),
        ("class10", o(None, None, &[])),
        ("class11", o(Some("run"), Some("foobar"), &[])),
        ("class12", o(Some("msg"), Some("baz"), &[])),
        ("class13", o(Some("run"), Some("c13-run"), &[])),
        ("class22", o(None, None, &["22-F"])),
        ("class20", o(Some("failrun"), Some("20-fr"), &["22-F"])),
        ("class21", o(Some("failmsg"), Some("21-fm"), &["22-F"])),
        ("class23", o(Some("failmsg"), Some("23-fm"), &["23-F"])),
        ("class30", o(None, None, &["connmax-fl"])),
        ("class32", o(None, None, &["ipmax-fl"])),
        ("class33", o(None, None, &["reject-fl"])),
        ("class40", o(None, None, &["41-record"])),
        ("class42", o(None, None, &["frobnitz-42"])),
    ];
    for (cls, want) in rows {
        let got = outcome(&a, &[cls], "0.0.0.1", &Fixed::default());
        assert_eq!(&got, want, "{cls}");
    }
}

#[test]
fn limits_through_see() {
    let a = load(SEE);
    let rows: &[(u32, u32, &[&str])] = &[
        (0, 0, &[]),
        (1, 0, &["failed ipmax"]),
        (0, 1, &["failed connmax"]),
        (1, 1, &["failed ipmax"]),
    ];
    for (ip, conns, want) in rows {
        let mut counts = Fixed {
            ip: *ip,
            class: HashMap::new(),
        };
        counts.class.insert("class50".into(), *conns);
        let got = outcome(&a, &["class50"], "0.0.0.1", &counts);
        assert_eq!(got.logs, *want, "ip={ip} conns={conns}");
        // Connections of the see target's own class do not count against class50.
        counts.class.insert("class51".into(), 3);
        let got = outcome(&a, &["class50"], "0.0.0.1", &counts);
        assert_eq!(got.logs, *want, "ip={ip} conns={conns} with class51 busy");
    }
}
