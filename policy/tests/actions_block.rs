//! The actions file's `block` (issue 10): forms, merging through `see`, the run conflict,
//! golden diagnostics, and the block request a decision carries.

use policy::actions::{parse_actions_expanding, Actions, BlockRequest};
use policy::decide::{block_request, decide, Counts, Disposition};
use policy::facts::{Classification, MatchedClass};

fn load(text: &str) -> Actions {
    let p = parse_actions_expanding("actions", text, true);
    let msgs: Vec<String> = p.diagnostics.iter().map(|d| d.to_string()).collect();
    match p.value {
        Some(v) => v,
        None => panic!("expected {text:?} to load, got {msgs:#?}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    let p = parse_actions_expanding("actions", text, true);
    assert!(p.value.is_none(), "expected {text:?} to fail");
    p.diagnostics.iter().map(|d| d.to_string()).collect()
}

fn block(a: &Actions, class: &str) -> Option<BlockRequest> {
    a.by_name(class).and_then(|c| c.block)
}

const FOREVER: BlockRequest = BlockRequest {
    seconds: None,
    cmd_only: false,
};

#[test]
fn forms() {
    let a =
        load("a: block\nb: block 1h\nc: block cmdonly\nd: msg go away%(nl)s : block 7d\ne: drop\n");
    assert_eq!(block(&a, "a"), Some(FOREVER));
    assert_eq!(
        block(&a, "b"),
        Some(BlockRequest {
            seconds: Some(3600),
            cmd_only: false
        })
    );
    assert_eq!(
        block(&a, "c"),
        Some(BlockRequest {
            seconds: None,
            cmd_only: true
        })
    );
    assert_eq!(block(&a, "d").and_then(|b| b.seconds), Some(7 * 86_400));
    assert_eq!(block(&a, "e"), None);
    let printed: Vec<String> = ["a", "b", "c"]
        .iter()
        .filter_map(|c| block(&a, c))
        .map(|b| b.to_string())
        .collect();
    assert_eq!(printed, vec!["block", "block 3600s", "block cmdonly"]);
}

#[test]
fn see_merges_block_first_class_wins() {
    let a = load("a: see b\nb: block 1d : see c\nc: block\nd: block 1m : see b\n");
    assert_eq!(block(&a, "a").and_then(|b| b.seconds), Some(86_400));
    assert_eq!(block(&a, "c"), Some(FOREVER));
    assert_eq!(block(&a, "d").and_then(|b| b.seconds), Some(60));
}

#[test]
fn golden_errors() {
    let rows: &[(&str, &[&str])] = &[
        ("t: block 10\n", &["actions:1:10: error[A020]: 'block' takes a time (as in 1h or 7d) or 'cmdonly', not '10': a time must end in s, m, h or d (as in 30s, 10m, 2h, 1d)"]),
        ("t: block xs\n", &["actions:1:10: error[A020]: 'block' takes a time (as in 1h or 7d) or 'cmdonly', not 'xs': a time must be a whole number followed by s, m, h or d"]),
        ("t: block 0s\n", &["actions:1:10: error[A020]: 'block 0s' would end at once; write 'block' for a block without end"]),
        ("t: block 1h cmdonly\n", &["actions:1:10: error[A005]: 'block' takes at most one argument, a time or 'cmdonly'; '1h cmdonly' is extra"]),
        ("t: block : block 1h\n", &["actions:1:12: error[A007]: 'block' is given twice for class 't' (first at column 4)"]),
        ("t: run /bin/true : block\n", &["actions:1:20: error[A021]: class 't' has both 'run' and 'block'; a blocked address gets no service (use 'msg' for a banner, or 'drop')"]),
        ("t: block : see s\ns: run /bin/true\n", &["actions:1:1: error[A021]: class 't' gets both 'run' and 'block' through its 'see' chain; a blocked address gets no service (use 'msg' for a banner, or 'drop')"]),
    ];
    for (text, want) in rows {
        assert_eq!(&errors(text), want, "{text}");
    }
}

struct NoCounts;

impl Counts for NoCounts {
    fn class_count(&self, _class: &str) -> u32 {
        0
    }
    fn ip_count(&self) -> u32 {
        0
    }
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

#[test]
fn the_action_class_block_applies_whatever_the_disposition() {
    let a = load(
        "trap: msg nothing here%(nl)s : block 1h\n\
         scan: reject : failmsg go away%(nl)s : block\n\
         quiet: drop : block cmdonly\n\
         local: run /bin/true\n\
         nobody: log\n",
    );
    // label, classes, disposition, block
    let rows: &[(&str, &[&str], Disposition, Option<BlockRequest>)] = &[
        (
            "banner and block",
            &["trap", "GLOBAL"],
            Disposition::Msg,
            Some(BlockRequest {
                seconds: Some(3600),
                cmd_only: false,
            }),
        ),
        (
            "refused and blocked",
            &["scan"],
            Disposition::FailMsg,
            Some(FOREVER),
        ),
        (
            "closed, command only",
            &["quiet"],
            Disposition::Close,
            Some(BlockRequest {
                seconds: None,
                cmd_only: true,
            }),
        ),
        ("an ordinary service", &["local"], Disposition::Run, None),
        (
            "a refusal wins over an earlier action",
            &["local", "scan"],
            Disposition::FailMsg,
            Some(FOREVER),
        ),
        ("no action class", &["nobody"], Disposition::Close, None),
        ("no class at all", &[], Disposition::Close, None),
    ];
    for (label, names, disp, want) in rows {
        let d = decide(&a, &classes(names), &NoCounts);
        assert_eq!(d.disposition, *disp, "{label}");
        assert_eq!(block_request(&a, &d), *want, "{label}");
    }
}
