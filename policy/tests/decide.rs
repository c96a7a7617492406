//! The decision procedure on hand-computed cases.

use std::collections::HashMap;

use policy::actions::{parse_actions, Actions};
use policy::decide::{decide, Counts, Decision, Disposition, Refusal};
use policy::facts::{Classification, MatchedClass};

fn load(text: &str) -> Actions {
    let p = parse_actions("actions", text);
    let msgs: Vec<String> = p.diagnostics.iter().map(|d| d.to_string()).collect();
    p.value
        .unwrap_or_else(|| panic!("expected {text:?} to load, got {msgs:#?}"))
}

fn classes(names: &[&str]) -> Classification {
    Classification {
        classes: names
            .iter()
            .map(|n| MatchedClass {
                name: (*n).to_owned(),
                lineno: 1,
                label: None,
            })
            .collect(),
    }
}

#[derive(Default)]
struct Fixed {
    ip: u32,
    class: HashMap<&'static str, u32>,
}

impl Counts for Fixed {
    fn class_count(&self, class: &str) -> u32 {
        self.class.get(class).copied().unwrap_or(0)
    }
    fn ip_count(&self) -> u32 {
        self.ip
    }
}

fn name(a: &Actions, d: &Decision) -> Option<String> {
    d.action_class
        .and_then(|i| a.get(i))
        .map(|c| c.name.clone())
}

/// (member classes, ip count, class counts) -> (action class, disposition, refusal, counted, log)
type Row = (
    &'static [&'static str],
    u32,
    &'static [(&'static str, u32)],
    Option<&'static str>,
    Disposition,
    Option<Refusal>,
    bool,
    bool,
);

fn run_rows(text: &str, rows: &[Row]) {
    let a = load(text);
    for (i, (members, ip, cc, want_class, disp, refusal, counted, log)) in rows.iter().enumerate() {
        let counts = Fixed {
            ip: *ip,
            class: cc.iter().copied().collect(),
        };
        let d = decide(&a, &classes(members), &counts);
        assert_eq!(
            (
                name(&a, &d).as_deref(),
                d.disposition,
                d.refusal,
                d.counted,
                d.log
            ),
            (*want_class, *disp, *refusal, *counted, *log),
            "row {i}: {members:?} ip={ip} {cc:?}"
        );
    }
}

use Disposition::*;

const EVAL: &str = "
class1: record log1
class2: log log2 : run funcarg1
class3: ipmax 10 : faillog log3
class4: msg funcarg2
class5: reject : quiet
class7: drop : log log7 : faillog log7-fail : msg doit
class7F: drop : log log7F : faillog log7F-fail : ipmax 0
class8FD: quiet : log log8FD : ipmax 0
class9: ipmax 0
classA: failmsg a : ipmax 0
classB: failrun b : ipmax 0
classC: run c
classD: msg d
classE: drop
classG: run G : ipmax 10 : failmsg gfail
classH: run H : ipmax 0 : failmsg hfail
classI: drop : failrun i-fail : run i-success
lim: ipmax 2 : connmax 3 : run x
neg: connmax -5 : run x
GLOBAL: connmax 100
";

#[test]
fn single_and_multiple_classes() {
    run_rows(
        EVAL,
        &[
            // No member has an action: close, nothing to log.
            (&["class1"], 0, &[], None, Close, None, false, false),
            (&["nothere"], 0, &[], None, Close, None, false, false),
            (&[], 0, &[], None, Close, None, false, false),
            // Classes not in the actions file are skipped.
            (
                &["nothere", "classC"],
                0,
                &[],
                Some("classC"),
                Run,
                None,
                true,
                false,
            ),
            (
                &["class1", "class2"],
                0,
                &[],
                Some("class2"),
                Run,
                None,
                true,
                true,
            ),
            (&["class4"], 0, &[], Some("class4"), Msg, None, false, false),
            // The earliest class with an action wins.
            (
                &["classC", "classD"],
                0,
                &[],
                Some("classC"),
                Run,
                None,
                true,
                false,
            ),
            (
                &["classD", "classC"],
                0,
                &[],
                Some("classD"),
                Msg,
                None,
                false,
                false,
            ),
            // A refusal by a later class beats an action of an earlier one.
            (
                &["classC", "classA"],
                0,
                &[],
                Some("classA"),
                FailMsg,
                Some(Refusal::IpMax),
                false,
                true,
            ),
            (
                &["classA", "classC"],
                0,
                &[],
                Some("classA"),
                FailMsg,
                Some(Refusal::IpMax),
                false,
                true,
            ),
            // drop beats run/msg in the same class, and is logged with log.
            (
                &["class7"],
                0,
                &[],
                Some("class7"),
                Close,
                None,
                false,
                true,
            ),
            (
                &["classI"],
                0,
                &[],
                Some("classI"),
                Close,
                None,
                false,
                false,
            ),
            (
                &["classE"],
                0,
                &[],
                Some("classE"),
                Close,
                None,
                false,
                false,
            ),
            // Refusals.
            (
                &["class5"],
                0,
                &[],
                Some("class5"),
                Close,
                Some(Refusal::Reject),
                false,
                false,
            ),
            (
                &["class7F"],
                0,
                &[],
                Some("class7F"),
                Close,
                Some(Refusal::IpMax),
                false,
                true,
            ),
            (
                &["class8FD"],
                0,
                &[],
                Some("class8FD"),
                Close,
                Some(Refusal::IpMax),
                false,
                false,
            ),
            (
                &["class9"],
                0,
                &[],
                Some("class9"),
                Close,
                Some(Refusal::IpMax),
                false,
                true,
            ),
            (
                &["classB"],
                0,
                &[],
                Some("classB"),
                FailRun,
                Some(Refusal::IpMax),
                true,
                true,
            ),
            (&["classG"], 0, &[], Some("classG"), Run, None, true, false),
            (
                &["classH"],
                0,
                &[],
                Some("classH"),
                FailMsg,
                Some(Refusal::IpMax),
                false,
                true,
            ),
            // ipmax 10 with 10 already counted refuses; with 9 it does not.
            (
                &["class3"],
                10,
                &[],
                Some("class3"),
                Close,
                Some(Refusal::IpMax),
                false,
                true,
            ),
            (
                &["class3", "classC"],
                9,
                &[],
                Some("classC"),
                Run,
                None,
                true,
                false,
            ),
        ],
    );
}

#[test]
fn limits_count_existing_connections_only() {
    run_rows(
        EVAL,
        &[
            (
                &["lim"],
                1,
                &[("lim", 2)],
                Some("lim"),
                Run,
                None,
                true,
                false,
            ),
            (
                &["lim"],
                2,
                &[("lim", 0)],
                Some("lim"),
                Close,
                Some(Refusal::IpMax),
                false,
                true,
            ),
            (
                &["lim"],
                0,
                &[("lim", 3)],
                Some("lim"),
                Close,
                Some(Refusal::ConnMax),
                false,
                true,
            ),
            // ipmax is checked before connmax within a class.
            (
                &["lim"],
                5,
                &[("lim", 5)],
                Some("lim"),
                Close,
                Some(Refusal::IpMax),
                false,
                true,
            ),
            // A negative limit refuses everything.
            (
                &["neg"],
                0,
                &[],
                Some("neg"),
                Close,
                Some(Refusal::ConnMax),
                false,
                true,
            ),
            // connmax counts the class's own connections, not others'.
            (
                &["lim"],
                0,
                &[("other", 50)],
                Some("lim"),
                Run,
                None,
                true,
                false,
            ),
        ],
    );
}

#[test]
fn global_limits() {
    run_rows(
        EVAL,
        &[
            (
                &["classC", "GLOBAL"],
                0,
                &[("GLOBAL", 99)],
                Some("classC"),
                Run,
                None,
                true,
                false,
            ),
            (
                &["classC", "GLOBAL"],
                0,
                &[("GLOBAL", 100)],
                Some("GLOBAL"),
                Close,
                Some(Refusal::ConnMax),
                false,
                true,
            ),
        ],
    );
}

#[test]
fn failrun_vs_failmsg_and_defaults() {
    let base = "
class1: faillog f1-log : failmsg f1-msg : ipmax 0
class2: ipmax 0
class3: connmax 0
class4: connmax 0 : quiet
class8: reject
classR: failrun r : reject
";
    let rows: &[(&str, &str, Disposition, bool)] = &[
        ("", "class1", FailMsg, true),
        ("", "class2", Close, true),
        ("", "class8", Close, true),
        ("", "class4", Close, false),
        ("DEFAULT-IPMAX: failmsg m\n", "class2", FailMsg, true),
        ("DEFAULT-IPMAX: failmsg m\n", "class3", Close, true),
        ("DEFAULT-CONNMAX: failmsg m\n", "class3", FailMsg, true),
        ("DEFAULT-CONNMAX: failmsg m\n", "class4", FailMsg, false),
        ("DEFAULT-REJECT: failmsg m\n", "class8", FailMsg, true),
        ("DEFAULTMSGS: failmsg m\n", "class8", FailMsg, true),
        ("DEFAULTMSGS: failmsg m\n", "class2", FailMsg, true),
        // A class with failrun never takes a default failmsg.
        ("DEFAULTMSGS: failmsg m\n", "classR", FailRun, true),
        // DEFAULT-IPMAX without failmsg falls through to DEFAULTMSGS.
        (
            "DEFAULT-IPMAX: faillog l\nDEFAULTMSGS: failmsg m\n",
            "class2",
            FailMsg,
            true,
        ),
        // Defaults give no failrun.
        ("DEFAULT-REJECT: failrun x\n", "class8", Close, true),
    ];
    for (defs, cls, disp, log) in rows {
        let a = load(&format!("{base}{defs}"));
        let d = decide(&a, &classes(&[cls]), &Fixed::default());
        assert_eq!((d.disposition, d.log), (*disp, *log), "{defs} {cls}");
        assert_eq!(d.counted, *disp == FailRun);
        assert_eq!(name(&a, &d).as_deref(), Some(*cls));
    }
}

#[test]
fn see_chains_in_decisions() {
    let text = "
class3: see class4 : ipmax 10 : connmax 10
class3.5: see class6 : ipmax 10
class4: quiet : see class5 : run class4-r
class5: ipmax 0 : connmax 0
class6: connmax 0
class10: see class11 : drop
class11: see class12 : run foobar
class12: msg baz
class13: run c13-run : see class10
class20: see class21 : failrun 20-fr
class21: see class22 : failmsg 21-fm
class22: reject : faillog 22-F
class30: see class31 : ipmax 30
class31: connmax 0 : ipmax 0 : see class31a
class31a: reject
class32: see class31 : connmax 30
class33: see class32 : ipmax 30
";
    run_rows(
        text,
        &[
            (&["class3"], 0, &[], Some("class3"), Run, None, true, false),
            (
                &["class5"],
                0,
                &[],
                Some("class5"),
                Close,
                Some(Refusal::IpMax),
                false,
                true,
            ),
            (
                &["class4"],
                0,
                &[],
                Some("class4"),
                Close,
                Some(Refusal::IpMax),
                false,
                false,
            ),
            (
                &["class3.5"],
                0,
                &[],
                Some("class3.5"),
                Close,
                Some(Refusal::ConnMax),
                false,
                true,
            ),
            (
                &["class10"],
                0,
                &[],
                Some("class10"),
                Close,
                None,
                false,
                false,
            ),
            (
                &["class11"],
                0,
                &[],
                Some("class11"),
                Run,
                None,
                true,
                false,
            ),
            (
                &["class12"],
                0,
                &[],
                Some("class12"),
                Msg,
                None,
                false,
                false,
            ),
            (
                &["class13"],
                0,
                &[],
                Some("class13"),
                Run,
                None,
                true,
                false,
            ),
            (
                &["class20"],
                0,
                &[],
                Some("class20"),
                FailRun,
                Some(Refusal::Reject),
                true,
                true,
            ),
            (
                &["class21"],
                0,
                &[],
                Some("class21"),
                FailMsg,
                Some(Refusal::Reject),
                false,
                true,
            ),
            (
                &["class30"],
                0,
                &[],
                Some("class30"),
                Close,
                Some(Refusal::ConnMax),
                false,
                true,
            ),
            (
                &["class32"],
                0,
                &[],
                Some("class32"),
                Close,
                Some(Refusal::IpMax),
                false,
                true,
            ),
            (
                &["class33"],
                0,
                &[],
                Some("class33"),
                Close,
                Some(Refusal::Reject),
                false,
                true,
            ),
            // class3's own limits are checked against class3's count, not class4/5's.
            (
                &["class3"],
                0,
                &[("class3", 10)],
                Some("class3"),
                Close,
                Some(Refusal::ConnMax),
                false,
                false,
            ),
            (
                &["class3"],
                0,
                &[("class5", 100)],
                Some("class3"),
                Run,
                None,
                true,
                false,
            ),
        ],
    );
}

#[test]
fn records_are_member_classes_with_record_in_match_order() {
    let a = load(
        "r1: record one\nr2: record two : reject\nr3: see r1\nplain: run x\nr4: record four\n",
    );
    let d = decide(
        &a,
        &classes(&["r4", "plain", "nothere", "r3", "r2", "r1"]),
        &Fixed::default(),
    );
    let recs: Vec<String> = d
        .records
        .iter()
        .map(|&i| a.get(i).unwrap().name.clone())
        .collect();
    assert_eq!(recs, vec!["r4", "r3", "r2", "r1"]);
    // Records are kept even when the connection is refused.
    assert_eq!(d.refusal, Some(Refusal::Reject));
    assert_eq!(name(&a, &d).as_deref(), Some("r2"));
    // And when nothing acts at all.
    let d = decide(&a, &classes(&["r1"]), &Fixed::default());
    assert_eq!(d.action_class, None);
    assert_eq!(d.records.len(), 1);
}

#[test]
fn aftermaxthreads_forced_classification() {
    let a = load("overload: msg busy\nGLOBAL: connmax 1\n");
    let d = decide(&a, &Classification::forced("overload"), &Fixed::default());
    assert_eq!(name(&a, &d).as_deref(), Some("overload"));
    assert_eq!(d.disposition, Msg);
    let mut full = Fixed::default();
    full.class.insert("GLOBAL", 1);
    let d = decide(&a, &Classification::forced("overload"), &full);
    assert_eq!(name(&a, &d).as_deref(), Some("GLOBAL"));
    assert_eq!(d.refusal, Some(Refusal::ConnMax));
}
