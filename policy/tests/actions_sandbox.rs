//! The per-class sandbox directives and `msgfile` (extensions to portnanny 2): values, merging
//! through `see`, conflicts, and every error with its line and column.

use policy::actions::{parse_actions_expanding, Actions, Rlimit, RlimitName, Sandbox};
use policy::Severity;

fn parsed(text: &str) -> (Option<Actions>, Vec<String>) {
    let p = parse_actions_expanding("actions", text, true);
    (
        p.value,
        p.diagnostics.iter().map(|d| d.to_string()).collect(),
    )
}

fn load(text: &str) -> Actions {
    match parsed(text) {
        (Some(a), _) => a,
        (None, d) => panic!("expected {text:?} to load, got {d:#?}"),
    }
}

fn sandbox<'a>(a: &'a Actions, class: &str) -> &'a Sandbox {
    &a.by_name(class).expect("class").sandbox
}

#[test]
fn values_and_see_merging() {
    let a = load(
        "web: run /bin/true : user www:web : nice 5 : rlimit nofile 64 : rlimit as 1g\n\
         \x20 : umask 027 : timeout 2m : chdir /srv/web\n\
         child: see web : nice -3 : rlimit nofile 32:128 : rlimit cpu 10s\n\
         plain: run /bin/true\n",
    );
    let w = sandbox(&a, "web");
    let u = w.user.as_ref().expect("user");
    assert_eq!(
        (u.value.user.as_str(), u.value.group.as_deref()),
        ("www", Some("web"))
    );
    assert_eq!(u.pos, (1, 27, 7), "where the value is written");
    assert_eq!(w.nice, Some(5));
    assert_eq!(w.umask, Some(0o27));
    assert_eq!(w.timeout, Some(120));
    let dir = w.chdir.as_ref().expect("chdir");
    assert_eq!((dir.value.as_str(), dir.pos.0), ("/srv/web", 2));
    // The first class in the chain that gives a directive wins; rlimits per resource.
    let c = sandbox(&a, "child");
    assert_eq!(c.nice, Some(-3));
    assert_eq!(
        c.user, w.user,
        "user comes from the class it sees, with its position"
    );
    assert_eq!(c.timeout, Some(120));
    let lim = |name| c.rlimits.iter().find(|r| r.name == name).copied();
    assert_eq!(
        lim(RlimitName::Nofile),
        Some(Rlimit {
            name: RlimitName::Nofile,
            soft: Some(32),
            hard: Some(128)
        })
    );
    assert_eq!(lim(RlimitName::Cpu).map(|r| r.soft), Some(Some(10)));
    assert_eq!(lim(RlimitName::As).map(|r| r.hard), Some(Some(1 << 30)));
    assert!(sandbox(&a, "plain").is_empty());
}

#[test]
fn msgfile_is_a_message_merged_with_run_and_msg() {
    let a = load("banner: msgfile banner.txt\nsees: see banner\nown: run /bin/true : see banner\n");
    let b = a.by_name("banner").expect("banner");
    assert!(b.has_msg() && b.has_action() && b.msg.is_none());
    assert_eq!(
        b.msgfile.as_ref().map(|f| f.value.as_str()),
        Some("banner.txt")
    );
    assert_eq!(b.msgfile.as_ref().map(|f| f.pos), Some((1, 17, 10)));
    assert!(a.by_name("sees").expect("sees").msgfile.is_some());
    // 'own' names run itself, so the group (drop, run, msg, msgfile) is its own.
    assert!(a.by_name("own").expect("own").msgfile.is_none());
}

#[test]
fn golden_errors() {
    let rows: &[(&str, &str)] = &[
        ("a: run x : nice 20\n", "actions:1:17: error[A022]: 'nice' takes a whole number from -20 to 19, not '20'"),
        ("a: run x : umask 0999\n", "actions:1:18: error[A022]: 'umask' takes an octal mode from 000 to 777 (as in 022 or 0027), not '0999'"),
        ("a: run x : rlimit stack 1m\n", "actions:1:19: error[A022]: unknown resource 'stack' for 'rlimit' (known: as, cpu, nofile, nproc, core, fsize)"),
        ("a: run x : rlimit as lots\n", "actions:1:19: error[A022]: 'rlimit as' takes a number of bytes with an optional k, m or g (as in 512m) or 'unlimited', not 'lots'"),
        ("a: run x : timeout 10\n", "actions:1:20: error[A022]: 'timeout' takes a time (as in 30s, 10m or 2h), not '10': a time must end in s, m, h or d (as in 30s, 10m, 2h, 1d)"),
        ("a: run x : chdir srv\n", "actions:1:18: error[A022]: 'chdir' takes an absolute directory (starting with '/'), not 'srv'"),
        ("a: run x : user a:b:c\n", "actions:1:17: error[A022]: 'user' takes a user name, optionally ':' and a group name (as in nobody or nobody:nogroup), not 'a:b:c'"),
        ("a: run x : user\n", "actions:1:12: error[A004]: 'user' needs a user name"),
        ("a: run x : nice 1 : nice 2\n", "actions:1:21: error[A007]: 'nice' is given twice for class 'a' (first at column 12)"),
        ("a: run x : rlimit as 1 : rlimit as 2\n", "actions:1:33: error[A008]: 'rlimit as' is given twice for class 'a' (first at column 12)"),
        ("a: msg hi : msgfile f\n", "actions:1:13: error[A009]: class 'a' has both 'msg' and 'msgfile'; only one of them can happen"),
        ("a: msgfile f : run x\n", "actions:1:16: error[A009]: class 'a' has both 'msgfile' and 'run'; only one of them can happen"),
        ("a: msgfile\n", "actions:1:4: error[A004]: 'msgfile' needs a file name"),
    ];
    for (text, want) in rows {
        let (value, diags) = parsed(text);
        assert!(value.is_none(), "{text:?} should not load");
        assert!(
            diags.iter().any(|d| d == want),
            "{text:?}: want {want}\ngot {diags:#?}"
        );
    }
}

#[test]
fn sandbox_of_a_class_that_runs_nothing_is_a_warning() {
    let text = "m: msg hi : user nobody\nbase: timeout 1m\nuser: see base : run /bin/true\n\
                lone: nice 3\n";
    let p = parse_actions_expanding("actions", text, true);
    assert!(p.value.is_some());
    let warns: Vec<String> = p
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| d.to_string())
        .collect();
    // 'base' is seen by a class that runs a program, so its timeout applies there.
    assert_eq!(warns.len(), 2, "{warns:#?}");
    assert!(warns[0].starts_with("actions:1:1: warning[A023]: class 'm' has sandbox directives"));
    assert!(warns[1].starts_with("actions:4:1: warning[A023]: class 'lone'"));
}

#[test]
fn prose_after_a_message_is_not_a_swallowed_directive() {
    // A message continued on a line that starts with an everyday word that is now also a
    // directive: no new warning for a portnanny 2 file.
    let p = parse_actions_expanding("actions", "a: msg hello\n  nice to see you\n", true);
    assert!(p.value.is_some());
    assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
    let p = parse_actions_expanding("actions", "a: msg hello\n  chdir /x\n", true);
    assert!(p.diagnostics.iter().any(|d| d.code == "A016"));
}
