//! The actions file: every directive, every error as a golden string, and `see` merging.

use policy::actions::{parse_actions_expanding, Actions, ClassAction, Limit};

fn load(text: &str) -> Actions {
    let p = parse_actions_expanding("actions", text, true);
    let msgs: Vec<String> = p.diagnostics.iter().map(|d| d.to_string()).collect();
    match p.value {
        Some(v) => v,
        None => panic!("expected {text:?} to load, got {msgs:#?}"),
    }
}

fn class<'a>(a: &'a Actions, name: &str) -> &'a ClassAction {
    a.by_name(name).unwrap_or_else(|| panic!("no class {name}"))
}

fn errors(text: &str) -> Vec<String> {
    let p = parse_actions_expanding("actions", text, true);
    assert!(p.value.is_none(), "expected {text:?} to fail");
    p.diagnostics.iter().map(|d| d.to_string()).collect()
}

fn words(s: &str) -> Option<Vec<String>> {
    Some(s.split_whitespace().map(str::to_owned).collect())
}

#[test]
fn every_directive() {
    let a = load(
        "a: run /bin/id -u : failmsg go away%(eol)s : reject : quiet : log : faillog no %(ip)s\n\
         b: msg hello: world : failrun /bin/false x : drop : log hi there : norepeatlog\n\
         c: record seen %(ip)s : ipmax 3 : connmax -1 : setenv A 1 2 : setenv B x : subst n v w\n\
         d: see c\n",
    );
    assert_eq!(a.len(), 4);
    assert_eq!(a.class_names(), vec!["a", "b", "c", "d"]);
    let ca = class(&a, "a");
    assert_eq!(ca.lineno, 1);
    assert_eq!(ca.run, words("/bin/id -u"));
    assert_eq!(ca.failmsg.as_deref(), Some("go away%(eol)s"));
    assert!(ca.reject && ca.quiet && !ca.drop && !ca.norepeatlog);
    assert_eq!(ca.log, Some(None));
    assert_eq!(ca.faillog.as_deref(), Some("no %(ip)s"));
    let cb = class(&a, "b");
    // 'a: b' inside an argument is not a separator.
    assert_eq!(cb.msg.as_deref(), Some("hello: world"));
    assert_eq!(cb.failrun, words("/bin/false x"));
    assert!(cb.drop && cb.norepeatlog);
    assert_eq!(cb.log, Some(Some("hi there".to_owned())));
    let cc = class(&a, "c");
    assert_eq!(cc.record.as_deref(), Some("seen %(ip)s"));
    assert_eq!(cc.ipmax, Some(3));
    assert_eq!(cc.connmax, Some(-1));
    assert_eq!(cc.limits, vec![Limit::IpMax(3), Limit::ConnMax(-1)]);
    assert_eq!(
        cc.setenv,
        vec![("A".into(), "1 2".into()), ("B".into(), "x".into())]
    );
    assert_eq!(cc.subst, vec![("n".into(), "v w".into())]);
    let cd = class(&a, "d");
    assert_eq!(cd.see.as_deref(), Some("c"));
    assert_eq!(cd.record, cc.record);
    assert_eq!(a.chain(3).collect::<Vec<_>>(), vec![3, 2]);
    assert_eq!(a.index_of("c"), Some(2));
    assert_eq!(a.index_of("zz"), None);
}

#[test]
fn continuation_and_tabs() {
    let a = load("x:\treject :\n\tfailmsg a\n\tb : faillog c\n");
    let x = class(&a, "x");
    assert_eq!(x.failmsg.as_deref(), Some("a b"));
    assert_eq!(x.faillog.as_deref(), Some("c"));
}

#[test]
fn run_is_split_before_substitution() {
    let a = load("x: run  foo   %(label)s\tbar\n");
    assert_eq!(class(&a, "x").run, words("foo %(label)s bar"));
}

#[test]
fn empty_file_is_empty_table() {
    let a = load("# nothing\n\n");
    assert!(a.is_empty());
}

#[test]
fn golden_errors() {
    let rows: &[(&str, &[&str])] = &[
        ("a\n", &["actions:1:1: error[A001]: an action rule starts with the class name and a colon ('CLASS: DIRECTIVE ...'); 'a' does not end in ':'"]),
        ("a b\n", &["actions:1:1: error[A001]: an action rule starts with the class name and a colon ('CLASS: DIRECTIVE ...'); 'a' does not end in ':'"]),
        (": reject\n", &["actions:1:1: error[A001]: the class name is empty"]),
        ("a:\n", &["actions:1:1: error[A002]: class 'a' has no directives; an action rule needs at least one"]),
        ("a: foobar\n", &["actions:1:4: error[A003]: unknown directive 'foobar' (known: run, msg, failrun, failmsg, drop, reject, quiet, log, faillog, norepeatlog, record, ipmax, connmax, setenv, subst, see, block, msgfile, user, nice, rlimit, umask, timeout, chdir)"]),
        ("a: reject: faillog x\n", &["actions:1:4: error[A003]: unknown directive 'reject:': directives are separated by ' : ', with whitespace on both sides of the colon"]),
        ("a: ipmax : quiet\n", &["actions:1:4: error[A004]: 'ipmax' needs a number"]),
        ("a: quiet : ipmax\n", &["actions:1:12: error[A004]: 'ipmax' needs a number"]),
        ("a: failmsg : ipmax 1\n", &["actions:1:4: error[A004]: 'failmsg' needs a message"]),
        ("a: quiet a\n", &["actions:1:10: error[A005]: 'quiet' takes no argument; 'a' is extra"]),
        ("a: drop a a\n", &["actions:1:9: error[A005]: 'drop' takes no argument; 'a a' is extra"]),
        ("a: reject :\n", &["actions:1:11: error[A005]: 'reject' takes no argument; ':' is extra (a ':' at the end of a line separates nothing; it is read as an argument)"]),
        ("a: norepeatlog x\n", &["actions:1:16: error[A005]: 'norepeatlog' takes no argument; 'x' is extra"]),
        ("a: ipmax a\n", &["actions:1:10: error[A006]: 'ipmax' takes a whole number, not 'a'"]),
        ("a: connmax 1 2\n", &["actions:1:12: error[A006]: 'connmax' takes a whole number, not '1 2'"]),
        ("a: run\n", &["actions:1:4: error[A004]: 'run' needs a command"]),
        ("a: msg\n", &["actions:1:4: error[A004]: 'msg' needs a message"]),
        ("a: failrun\n", &["actions:1:4: error[A004]: 'failrun' needs a command"]),
        ("a: faillog\n", &["actions:1:4: error[A004]: 'faillog' needs a message to log"]),
        ("a: record\n", &["actions:1:4: error[A004]: 'record' needs a message to log"]),
        ("a: setenv\n", &["actions:1:4: error[A004]: 'setenv' needs a variable name and a value"]),
        ("a: setenv A\n", &["actions:1:11: error[A004]: 'setenv A' needs a value after the name"]),
        ("a: subst\n", &["actions:1:4: error[A004]: 'subst' needs a substitution name and a value"]),
        ("a: subst n\n", &["actions:1:10: error[A004]: 'subst n' needs a value after the name"]),
        ("a: see\n", &["actions:1:4: error[A004]: 'see' needs the name of a class"]),
        ("a: see a b\n", &["actions:1:10: error[A005]: 'see' takes one class name; 'a b' is more than one word"]),
        ("a: setenv A=B c\n", &["actions:1:11: error[A014]: environment variable names cannot contain '=': 'A=B'"]),
        ("a: quiet : quiet\n", &["actions:1:12: error[A007]: 'quiet' is given twice for class 'a' (first at column 4)"]),
        ("a: ipmax 1 : ipmax 10\n", &["actions:1:14: error[A007]: 'ipmax' is given twice for class 'a' (first at column 4)"]),
        ("a: log : log x\n", &["actions:1:10: error[A007]: 'log' is given twice for class 'a' (first at column 4)"]),
        ("a: see b : see b\nb: drop\n", &["actions:1:12: error[A007]: 'see' is given twice for class 'a' (first at column 4)"]),
        ("a: msg a : run b\n", &["actions:1:12: error[A009]: class 'a' has both 'msg' and 'run'; only one of them can happen"]),
        ("a: run b : msg a\n", &["actions:1:12: error[A009]: class 'a' has both 'run' and 'msg'; only one of them can happen"]),
        ("a: failmsg a : failrun b\n", &["actions:1:16: error[A009]: class 'a' has both 'failmsg' and 'failrun'; only one of them can happen"]),
        ("a: setenv a 1 : setenv a 2\n", &["actions:1:24: error[A008]: 'setenv a' is given twice for class 'a' (first at column 4)"]),
        ("a: subst a 1 : subst a 2\n", &["actions:1:22: error[A008]: 'subst a' is given twice for class 'a' (first at column 4)"]),
        ("a: reject :  : drop\n", &["actions:1:14: error[A013]: empty directive: a ' : ' separator must sit between two directives"]),
        ("a: reject : \n", &["actions:1:11: error[A013]: empty directive: a ' : ' separator must sit between two directives"]),
        ("a: quiet\na: ipmax 0\n", &["actions:2:1: error[A010]: class 'a' is defined twice (first on line 1); a class may have only one action rule"]),
        ("class1: see class2\n", &["actions:1:13: error[A011]: class 'class1' says to see class 'class2', which this file does not define"]),
        (
            "class1: see class2\nclass2: see class3\nclass3: see class1\n",
            &["actions:1:13: error[A012]: 'see' loop: class1 -> class2 -> class3 -> class1"],
        ),
        ("a: see a\n", &["actions:1:8: error[A012]: 'see' loop: a -> a"]),
        (
            "x: see b\na: reject : see b\nb: see a\n",
            &["actions:2:17: error[A012]: 'see' loop: a -> b -> a"],
        ),
        ("a b: reject\n", &["actions:1:1: error[A001]: an action rule starts with the class name and a colon ('CLASS: DIRECTIVE ...'); 'a' does not end in ':'"]),
        ("  a: reject\n", &["actions:1:1: error[F001]: the first line is indented, which makes it a continuation of nothing"]),
        // Issue 9 item 2: what fails for every connection fails the load.
        ("a: msg %(hostnmae)s\n", &["actions:1:10: error[A019]: '%(hostnmae)' in 'msg' of class 'a' is never defined: it is not a built-in name, and neither this class nor any class that sees it has 'subst hostnmae'"]),
        ("a: msg %(ip)d\n", &["actions:1:8: error[A018]: bad substitution in 'msg': %(ip)d needs a number, but ip is text (use %(ip)s)"]),
        ("a: reject : faillog at %(ip\n", &["actions:1:24: error[A018]: bad substitution in 'faillog': '%(' has no closing ')'"]),
        ("a: run /bin/echo 50% %(ip)s\n", &["actions:1:20: error[A018]: bad substitution in 'run': a lone '%' at the end: write %% for a percent sign"]),
        ("a: run x : setenv V %(nope)s : see b\nb: subst nop 1\n", &["actions:1:23: error[A019]: '%(nope)' in 'setenv' of class 'a' is never defined: it is not a built-in name, and neither this class nor any class that sees it has 'subst nope'"]),
        ("a: run x : log at %(ip) %(nl)s\n", &["actions:1:19: error[A018]: bad substitution in 'log': unsupported conversion '%' in %(ip)% (use %(ip)s)"]),
        ("a: record %(x)s : subst x 1\n", &["actions:1:13: error[A019]: '%(x)' is never defined: record strings see only the built-in names, and 'x' is not one"]),
        ("caf\u{e9}: reject\n", &["actions:1:1: error[A015]: class names are printable ASCII without spaces, at most 256 bytes; 'caf\u{e9}' is not"]),
    ];
    for (text, want) in rows {
        assert_eq!(&errors(text), want, "{text}");
    }
}

#[test]
fn every_error_of_a_file_at_once() {
    let got = errors("a: bogus : quiet x\nb:\nc: see nowhere\nc: drop\n");
    let at: Vec<&str> = got.iter().map(|s| &s[..s.find(": e").unwrap()]).collect();
    assert_eq!(
        at,
        vec![
            "actions:1:4",
            "actions:1:18",
            "actions:2:1",
            "actions:3:8",
            "actions:4:1"
        ]
    );
}

#[test]
fn continuation_positions() {
    let got = errors("a: reject :\n    ipmax x\n");
    assert_eq!(
        got,
        vec!["actions:2:11: error[A006]: 'ipmax' takes a whole number, not 'x'"]
    );
}

/// The `see` test file of the original's test suite (rewritten), checked field by field.
const SEE: &str = "
class1: see class2 : log froboznik
class1.5: reject : see class2
class2: faillog a : run b : failmsg mf-2
class3: see class4 : ipmax 10 : connmax 10
class4: quiet : see class5 : run class4-r
class5: ipmax 0 : connmax 0
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
";

#[test]
fn see_merging() {
    let a = load(SEE);
    let c1 = class(&a, "class1");
    assert_eq!(c1.run, words("b"));
    assert_eq!(c1.log, Some(Some("froboznik".into())));
    assert_eq!(c1.faillog.as_deref(), Some("a"));
    assert_eq!(c1.failmsg.as_deref(), Some("mf-2"));
    assert!(!c1.reject);
    assert!(class(&a, "class1.5").reject);

    // The first limit in the chain wins; the stricter later one is shadowed.
    let c3 = class(&a, "class3");
    assert_eq!(c3.ipmax, Some(10));
    assert_eq!(c3.connmax, Some(10));
    assert_eq!(c3.limits, vec![Limit::IpMax(10), Limit::ConnMax(10)]);
    assert!(c3.quiet);
    assert_eq!(c3.run, words("class4-r"));

    // setenv: merged, first value of a name wins.
    assert_eq!(
        class(&a, "classA").setenv,
        vec![("a".into(), "1".into()), ("b".into(), "10".into())]
    );
    assert_eq!(
        class(&a, "classB").setenv,
        vec![("a".into(), "2".into()), ("b".into(), "10".into())]
    );
    assert_eq!(class(&a, "classA").log, Some(None));

    // drop/run/msg as a group: the first class in the chain naming any of them decides.
    let c10 = class(&a, "class10");
    assert!(c10.drop && c10.run.is_none() && c10.msg.is_none());
    let c11 = class(&a, "class11");
    assert!(!c11.drop && c11.run == words("foobar") && c11.msg.is_none());
    let c13 = class(&a, "class13");
    assert!(!c13.drop && c13.run == words("c13-run"));

    // failrun/failmsg as a group.
    let c20 = class(&a, "class20");
    assert_eq!(c20.failrun, words("20-fr"));
    assert_eq!(c20.failmsg, None);
    assert_eq!(c20.faillog.as_deref(), Some("22-F"));
    assert!(c20.reject);
    let c23 = class(&a, "class23");
    assert_eq!(c23.failmsg.as_deref(), Some("23-fm"));
    assert_eq!(c23.failrun, None);

    // The order of checks keeps the chain order, so the reason reported is the first to fail.
    assert_eq!(
        class(&a, "class30").limits,
        vec![Limit::IpMax(30), Limit::ConnMax(0), Limit::Reject]
    );
    assert_eq!(
        class(&a, "class32").limits,
        vec![Limit::ConnMax(30), Limit::IpMax(0), Limit::Reject]
    );
    assert_eq!(
        class(&a, "class33").limits,
        vec![Limit::IpMax(30), Limit::ConnMax(30), Limit::Reject]
    );
    assert_eq!(
        class(&a, "class31").limits,
        vec![Limit::IpMax(0), Limit::ConnMax(0), Limit::Reject]
    );
}

#[test]
fn reject_stops_later_checks() {
    let a = load("a: ipmax 5 : reject : connmax 1\n");
    assert_eq!(class(&a, "a").limits, vec![Limit::Reject]);
}

#[test]
fn see_targets_may_come_later_and_subst_merges_in_chain_order() {
    let a = load(
        "A: see C : subst extra we are coming from %(hostname)s in A\n\
         B: see C : subst extra we are coming from B\n\
         C: see E : subst info %(extra)s and from C too\n\
         D: see E : subst info because we came from %(ip)s\n\
         E: reject : faillog Failed in E: %(info)s\n",
    );
    assert_eq!(
        class(&a, "A").subst,
        vec![
            (
                "extra".into(),
                "we are coming from %(hostname)s in A".into()
            ),
            ("info".into(), "%(extra)s and from C too".into())
        ]
    );
    assert_eq!(a.chain(0).collect::<Vec<_>>(), vec![0, 2, 4]);
    assert_eq!(a.chain(3).collect::<Vec<_>>(), vec![3, 4]);
}

#[test]
fn original_test_file_loads() {
    let a = load(
        "\n# Test action file.\nclass0:\trecord odd connect from non-localhost 127/8: %(ip)s\n\n\
         class2:\tfaillog DNSB %(label)s rejects %(ip)s :\n\treject\n\n\
         class1:\tipmax 3 : connmax 10 :\n\trun /usr/bin/id\n",
    );
    let mut names = a.class_names();
    names.sort();
    assert_eq!(names, vec!["class0", "class1", "class2"]);
    assert_eq!(
        class(&a, "class0").record.as_deref(),
        Some("odd connect from non-localhost 127/8: %(ip)s")
    );
    assert_eq!(class(&a, "class1").lineno, 8);
}

#[test]
fn warns_when_a_continuation_directive_is_swallowed() {
    // The document's DNSBL example as printed: no ' : ' before failmsg.
    let p = parse_actions_expanding(
        "actions",
        "DNSBL:\tfaillog refused %(connsum)s: DNS blocklist class %(class)s\n\
         \t\tfailmsg\t500 Sorry, %(ip)s. Connection refused. %(blmsg)s\n\
         \t\t: reject : norepeatlog\n\
         bl-a:\tsubst blmsg x : see DNSBL\n",
        true,
    );
    let got: Vec<String> = p.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        got,
        vec!["actions:2:3: warning[A016]: 'failmsg' starts a continuation line but is part of the text of 'faillog'; if it is meant as a directive, end the line before with ' :'"]
    );
    // Only a warning: the file loads, with the text as written.
    let a = p.value.expect("loads");
    assert!(a.by_name("DNSBL").unwrap().failmsg.is_none());
    // Not when the word is in the middle of a line, or the line ends with ' :'.
    for text in [
        "a: msg please run the tests\n",
        "a: msg hello :\n  run x\n",
        "a: log x\n  y run\n",
    ] {
        let p = parse_actions_expanding("actions", text, true);
        assert!(
            p.diagnostics.iter().all(|d| d.code != "A016"),
            "{text}: {:?}",
            p.diagnostics
        );
    }
}

/// Issue 18: `see` chains resolved in cubic time (20,000 links took over a minute). Each class
/// is now merged once over the class it sees, so this is linear; the bound is generous for
/// debug builds on a busy machine, and the cubic version missed it by orders of magnitude.
#[test]
fn regression_18_long_see_chain_is_linear() {
    const LINKS: usize = 20_000;
    let mut text = String::new();
    for i in 0..LINKS {
        text.push_str(&format!("c{i}: see c{}\n", i + 1));
    }
    text.push_str(&format!("c{LINKS}: drop : setenv TAIL yes : ipmax 2\n"));
    let t = std::time::Instant::now();
    let a = load(&text);
    let took = t.elapsed();
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    let head = class(&a, "c0");
    assert!(head.drop);
    assert_eq!(head.setenv, vec![("TAIL".into(), "yes".into())]);
    assert_eq!(head.limits, vec![Limit::IpMax(2)]);
    assert_eq!(a.chain(0).count(), LINKS + 1);

    // A loop at the end of a long chain: one diagnostic, at the loop's first member.
    let mut text = String::new();
    for i in 0..LINKS {
        text.push_str(&format!("c{i}: see c{}\n", i + 1));
    }
    text.push_str(&format!("c{LINKS}: see c{}\n", LINKS - 1));
    let t = std::time::Instant::now();
    let got = errors(&text);
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(
        got,
        vec![format!(
            "actions:{LINKS}:{}: error[A012]: 'see' loop: c{} -> c{LINKS} -> c{}",
            format!("c{}: see ", LINKS - 1).len() + 1,
            LINKS - 1,
            LINKS - 1
        )]
    );
}

/// Merging over the already merged target gives what walking the chain gives: the first
/// class naming a directive wins, limits keep chain order and stop at a reject.
#[test]
fn merged_chain_rows() {
    let a = load(
        "A: ipmax 2 : setenv X a : see B\n\
         B: connmax 3 : ipmax 5 : setenv X b : setenv Y b : failmsg no : see C\n\
         C: reject : run /bin/true : log hi\n\
         D: reject : ipmax 1 : see C\n",
    );
    let ca = class(&a, "A");
    assert_eq!(
        ca.limits,
        vec![Limit::IpMax(2), Limit::ConnMax(3), Limit::Reject]
    );
    assert_eq!(ca.ipmax, Some(2));
    assert_eq!(
        ca.setenv,
        vec![("X".into(), "a".into()), ("Y".into(), "b".into())]
    );
    assert_eq!(ca.run, Some(vec!["/bin/true".to_owned()]));
    assert_eq!(ca.failmsg.as_deref(), Some("no"));
    assert_eq!(ca.log, Some(Some("hi".to_owned())));
    assert!(ca.reject);
    assert_eq!(class(&a, "D").limits, vec![Limit::Reject]);
}

/// Issue 9 item 2: names a chain can define, and names a default class's text may get from
/// whichever class refused, load.
#[test]
fn names_defined_somewhere_load() {
    for text in [
        "a: msg %(who)s : subst who x\n",
        "a: msg %(who)s\nb: subst who x : see a\n",
        "a: see b : subst who x\nb: see c\nc: msg %(who)s\n",
        "r: reject : subst why x\nDEFAULT-REJECT: failmsg %(why)s : see M\nM: faillog %(why)s\n",
        "a: msg %(hostname)s %(identd)s %(lineno)d %(port)05d 100%%\n",
        "a: run /bin/echo %(ip)s%(nl)s : setenv A %(class)s\n",
    ] {
        let p = parse_actions_expanding("actions", text, true);
        assert!(p.value.is_some(), "{text}: {:?}", p.diagnostics);
    }
}

/// Issue 19: a message over the writer's cap is a warning when the file is read.
#[test]
fn regression_19_message_over_the_cap_warns() {
    let cap = policy::actions::MAX_MSG_BYTES;
    let ok = format!("a: msg {}\n", "x".repeat(cap));
    let p = parse_actions_expanding("actions", &ok, true);
    assert!(
        p.value.is_some() && p.diagnostics.is_empty(),
        "{:?}",
        p.diagnostics
    );
    let over = format!("a: reject : failmsg {}\n", "x".repeat(cap + 1));
    let p = parse_actions_expanding("actions", &over, true);
    assert!(p.value.is_some(), "only a warning");
    let got: Vec<String> = p.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        got,
        vec![format!(
            "actions:1:13: warning[A017]: the 'failmsg' text is {} bytes, over the {cap}-byte cap \
             of a message: only the first {cap} bytes are sent",
            cap + 1
        )]
    );
}

/// With `substitutions off` strings are sent as written, so templates are not checked; the
/// classifier's plain parse never checks them (it must accept what the parent loaded).
#[test]
fn templates_unchecked_when_not_expanded() {
    let text = "a: msg 100% sure %(nope)s : record %(x)s\n";
    assert!(parse_actions_expanding("actions", text, false)
        .value
        .is_some());
    assert!(policy::actions::parse_actions("actions", text)
        .value
        .is_some());
    assert!(parse_actions_expanding("actions", text, true)
        .value
        .is_none());
}
