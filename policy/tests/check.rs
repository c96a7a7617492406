//! Check mode: every diagnostic of all three files at once, and the cross-file warnings.

use policy::check::check_all;
use policy::Severity;

const CONF: &str = "rulefile rules\nactionfile actions\nlisten 2525@127.0.0.1\n";

fn check(conf: &str, rules: &str, actions: &str) -> Vec<String> {
    check_all(
        ("nanny.conf", conf),
        Some(("rules", rules)),
        Some(("actions", actions)),
    )
    .iter()
    .map(|d| d.to_string())
    .collect()
}

#[test]
fn clean_configuration_has_nothing_to_say() {
    let got = check(
        CONF,
        "local: ip: 127.0.0.1\nother: ALL\n",
        "local: run /bin/cat\nother: reject\nGLOBAL: connmax 10\nDEFAULTMSGS: failmsg no\n",
    );
    assert_eq!(got, Vec::<String>::new());
}

#[test]
fn unused_action_classes() {
    let got = check(
        "rulefile rules\nactionfile actions\nlisten 25\nmaxthreads 2\naftermaxthreads busy\n",
        "a: ALL\n",
        "a: see shared\n\
         shared: run /bin/cat\n\
         orphan: reject\n\
         busy: msg too busy\n\
         GLOBAL: connmax 5\n\
         DEFAULT-REJECT: faillog r\n\
         DEFAULT-IPMAX: faillog i\n\
         DEFAULT-CONNMAX: faillog c\n\
         DEFAULTMSGS: failmsg m\n\
         lonely: drop\n",
    );
    assert_eq!(
        got,
        vec![
            "actions:3:1: warning[W001]: no rule puts connections in class 'orphan', so this action rule is never used",
            "actions:10:1: warning[W001]: no rule puts connections in class 'lonely', so this action rule is never used",
        ]
    );
}

#[test]
fn aftermaxthreads_without_action() {
    let conf =
        "rulefile rules\nactionfile actions\nlisten 25\nmaxthreads 2\naftermaxthreads  busy\n";
    let want = "nanny.conf:5:18: warning[W002]: aftermaxthreads class 'busy' has no action (drop, run, msg or a refusal) in the actions file, so connections over the thread limit are just closed";
    // Not defined at all.
    assert_eq!(check(conf, "a: ALL\n", "a: run x\n"), vec![want]);
    // Defined, but only logging.
    assert_eq!(
        check(conf, "a: ALL\n", "a: run x\nbusy: record overload\n"),
        vec![want]
    );
    // A refusal counts as an action; so does drop.
    assert_eq!(
        check(conf, "a: ALL\n", "a: run x\nbusy: reject\n"),
        Vec::<String>::new()
    );
    assert_eq!(
        check(conf, "a: ALL\n", "a: run x\nbusy: see q\nq: drop\n"),
        Vec::<String>::new()
    );
}

#[test]
fn default_classes_made_by_rules() {
    let got = check(CONF, "DEFAULTMSGS: ALL\n", "DEFAULTMSGS: failmsg x\n");
    assert_eq!(
        got,
        vec!["actions:1:1: warning[W003]: 'DEFAULTMSGS' supplies default messages, but rules can also put connections in it; use another name for the rules' class"]
    );
}

#[test]
fn empty_files() {
    let got = check(CONF, "# none\n", "# none\n");
    assert_eq!(
        got,
        vec![
            "rules:1:1: warning[W004]: the rules file has no rules, so every connection will be closed",
            "actions:1:1: warning[W005]: the actions file defines no classes, so every connection will be closed",
        ]
    );
}

#[test]
fn every_error_of_every_file_in_file_order() {
    let diags = check_all(
        (
            "nanny.conf",
            "rulefile rules\nactionfile actions\nlisten 80\nbogus 1\nuser\n",
        ),
        Some(("rules", "ok: ALL\nbad ip: 1.2.3.4\n")),
        Some(("actions", "ok: run x : nope\nok: drop\nz: see nowhere\n")),
    );
    let got: Vec<(String, u32, u32, Severity, &str)> = diags
        .iter()
        .map(|d| (d.file.clone(), d.line, d.col, d.severity, d.code))
        .collect();
    let files: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(&files[..2], &["nanny.conf", "nanny.conf"]);
    assert_eq!(&got[0].1..=&got[1].1, &4..=&5);
    assert!(files.contains(&"rules"), "{got:?}");
    let actions: Vec<(u32, u32, &str)> = got
        .iter()
        .filter(|g| g.0 == "actions")
        .map(|g| (g.1, g.2, g.4))
        .collect();
    assert_eq!(
        actions,
        vec![(1, 13, "A003"), (2, 1, "A010"), (3, 8, "A011")]
    );
    // Files appear in the order given, each sorted by position.
    let ranks: Vec<usize> = files
        .iter()
        .map(|f| {
            ["nanny.conf", "rules", "actions"]
                .iter()
                .position(|x| x == f)
                .unwrap()
        })
        .collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{files:?}");
    for w in got.windows(2) {
        if w[0].0 == w[1].0 {
            assert!((w[0].1, w[0].2) <= (w[1].1, w[1].2), "{got:?}");
        }
    }
    // No cross-file warnings are made from files that did not load.
    assert!(got.iter().all(|g| !g.4.starts_with('W')));
}

#[test]
fn unreadable_files_are_left_out() {
    let got = check_all(("nanny.conf", "listen 80\n"), None, None);
    let codes: Vec<&str> = got.iter().map(|d| d.code).collect();
    assert_eq!(codes, vec!["C006", "C006"]);
}

/// Issue 9 item 2: templates that fail for every connection are check-mode errors with
/// file:line:col; with `substitutions off` they are not checked.
#[test]
fn golden_template_errors() {
    let actions = "a: msg hi %(hostnmae)s\nb: run /bin/echo %(ip)d\nc: reject : faillog x %(ip\n";
    let rules = "a: ip: 127.0.0.1\nb: ip: 127.0.0.2\nc: ALL\n";
    let got = check(CONF, rules, actions);
    assert_eq!(
        got,
        vec![
            "actions:1:13: error[A019]: '%(hostnmae)' in 'msg' of class 'a' is never defined: it is not a built-in name, and neither this class nor any class that sees it has 'subst hostnmae'",
            "actions:2:18: error[A018]: bad substitution in 'run': %(ip)d needs a number, but ip is text (use %(ip)s)",
            "actions:3:23: error[A018]: bad substitution in 'faillog': '%(' has no closing ')'",
        ]
    );
    let off = format!("{CONF}substitutions off\n");
    assert_eq!(check(&off, rules, actions), Vec::<String>::new());
}

/// Issue 9 item 3: host findings are anchored at the directive's argument, or at 1:1 when the
/// directive is not given.
#[test]
fn conf_value_diagnostics_point_at_the_directive() {
    let conf = "rulefile rules\nactionfile actions\nlisten 25\n  # c\nuser   nosuch\n";
    let d = policy::check::conf_value_diagnostic(
        ("nanny.conf", conf),
        "user",
        Severity::Error,
        "H001",
        "user 'nosuch' does not exist on this host".to_owned(),
    );
    assert_eq!(
        d.to_string(),
        "nanny.conf:5:8: error[H001]: user 'nosuch' does not exist on this host"
    );
    assert!(d.excerpt().ends_with("|        ^^^^^^"), "{}", d.excerpt());
    let d = policy::check::conf_value_diagnostic(
        ("nanny.conf", conf),
        "privsepuser",
        Severity::Error,
        "H002",
        "x".to_owned(),
    );
    assert_eq!(d.to_string(), "nanny.conf:1:1: error[H002]: x");
}

/// Issue 10: sentry matchers without traps, blocks without a blockfile or neverblock.
#[test]
fn sentry_warnings() {
    let got = check(
        CONF,
        "scan: trap AND\n  hits: 3\nbad: blocked\nlocal: ALL\n",
        "scan: msg do not block me : block 1h\nbad: drop\nlocal: run /bin/cat\n",
    );
    assert_eq!(
        got,
        vec![
            "rules:1:7: warning[W006]: 'trap' is never true here: nanny.conf has no 'trap' or 'stealth' line, so nothing is ever trapped",
            "rules:2:3: warning[W006]: 'hits:' is never true here: nanny.conf has no 'trap' or 'stealth' line, so nothing is ever trapped",
            "actions:1:29: warning[W007]: 'block' is used but nanny.conf has no 'blockfile', so every block is forgotten when portnanny restarts",
            "actions:1:29: warning[W008]: 'block' is used but nanny.conf has no 'neverblock'; add 'neverblock auto' so this machine's own addresses, its gateways and its nameservers are never blocked",
        ]
    );

    // Nothing can block: `blocked` is never true either.
    let got = check(CONF, "bad: ! blocked\n", "bad: drop\n");
    assert_eq!(
        got,
        vec!["rules:1:8: warning[W006]: 'blocked' is never true here: nothing can block an address (nanny.conf has no 'trap' or 'stealth' line and the actions file has no 'block')"]
    );

    // A complete sentry configuration has nothing to say.
    let conf =
        format!("{CONF}trap tcp 1,31337\nblockfile /var/lib/nanny/blocked\nneverblock auto\n");
    let got = check(
        &conf,
        "scan: trap AND hits: 2 mode: tcp\nbad: blocked\nlocal: ALL\n",
        "scan: msg nothing : block 1h\nbad: drop\nlocal: run /bin/cat\n",
    );
    assert_eq!(got, Vec::<String>::new());
}

/// The PortSentry example of docs/configuration.md's Sentry section loads without a word.
#[test]
fn sentry_docs_example() {
    let doc = include_str!("../../docs/configuration.md");
    let start = doc
        .find("# nanny.conf\ntrap tcp")
        .expect("the example is in the docs");
    let block = &doc[start..];
    let block = &block[..block.find("```").expect("end of the example")];
    let part = |from: &str, to: Option<&str>| -> String {
        let s = &block[block.find(from).expect(from) + from.len()..];
        match to {
            Some(t) => s[..s.find(t).expect(t)].to_owned(),
            None => s.to_owned(),
        }
    };
    let conf = format!("{CONF}{}", part("# nanny.conf\n", Some("\n# rules\n")));
    let rules = part("# rules\n", Some("\n# actions\n"));
    let actions = part("# actions\n", None);
    assert_eq!(check(&conf, &rules, &actions), Vec::<String>::new());
}
