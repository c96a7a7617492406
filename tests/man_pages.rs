//! The manual pages: `mandoc -T lint -W warning` is silent on each, and every directive,
//! matcher, listen option and command-line switch the code knows is a documented item.
//!
//! Convention: a documented item is an `.It` line. nanny.conf.5 documents a directive or
//! matcher as `.It Ic NAME ...` (matchers with their colon, `.It Ic ip: ...`) under the `.Ss`
//! section of its file; portnanny.8 documents a switch as `.Fl X` (`.Fl \-long`) on an `.It`
//! line. The lists come from the code (the policy crate's constants and `args::help()`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn page(name: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join("contrib").join(name))
        .unwrap_or_else(|e| panic!("contrib/{name}: {e}"))
}

#[test]
fn mandoc_lint_is_silent() {
    if Command::new("mandoc").arg("-h").output().is_err() {
        eprintln!("mandoc is not installed (.ci/install-test-deps installs it): lint skipped");
        return;
    }
    for name in ["portnanny.8", "nanny.conf.5", "nannyctl.1"] {
        let path = Path::new(ROOT).join("contrib").join(name);
        if !path.exists() {
            assert_ne!(name, "portnanny.8");
            assert_ne!(name, "nanny.conf.5");
            eprintln!("contrib/{name} is absent: skipped");
            continue;
        }
        let out = Command::new("mandoc")
            .args(["-T", "lint", "-W", "warning"])
            .arg(&path)
            .output()
            .expect("run mandoc");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.is_empty(),
            "mandoc -T lint -W warning contrib/{name}:\n{text}"
        );
    }
}

/// The `.Ic` items (first word after `.It Ic`) of the `.Ss` section whose title starts with
/// `section`.
fn ic_items(text: &str, section: &str) -> BTreeSet<String> {
    let mut inside = false;
    let mut items = BTreeSet::new();
    for line in text.lines() {
        if let Some(title) = line.strip_prefix(".Ss ").or(line.strip_prefix(".Sh ")) {
            inside = title.starts_with(section);
        } else if inside {
            if let Some(rest) = line.strip_prefix(".It Ic ") {
                if let Some(word) = rest.split_whitespace().next() {
                    items.insert(word.to_string());
                }
            }
        }
    }
    items
}

fn missing(items: &BTreeSet<String>, wanted: &[&str]) -> Vec<String> {
    wanted
        .iter()
        .filter(|w| !items.contains(**w))
        .map(|w| w.to_string())
        .collect()
}

#[test]
fn nanny_conf_5_documents_every_directive_and_matcher() {
    let text = page("nanny.conf.5");
    let conf = ic_items(&text, "nanny.conf directives");
    let rules = ic_items(&text, "The rules file");
    let actions = ic_items(&text, "The actions file");
    let mut problems = Vec::new();
    for (what, items, list) in [
        ("nanny.conf directive", &conf, policy::conf::DIRECTIVES),
        ("sentry directive", &conf, policy::sentry::DIRECTIVES),
        ("control directive", &conf, policy::control_conf::DIRECTIVES),
        ("xmlrpc directive", &conf, policy::xmlrpc_conf::DIRECTIVES),
        ("listen option", &conf, policy::listenopts::OPTIONS),
        (
            "rules matcher",
            &rules,
            policy::rules::matchers::ARG_MATCHERS,
        ),
        (
            "rules matcher",
            &rules,
            policy::rules::matchers::BARE_MATCHERS,
        ),
        ("actions directive", &actions, policy::actions::DIRECTIVES),
    ] {
        for m in missing(items, list) {
            problems.push(format!("{what} {m}"));
        }
    }
    assert!(
        problems.is_empty(),
        "contrib/nanny.conf.5 has no `.It Ic NAME` item for: {}",
        problems.join(", ")
    );
}

/// The switches `-h` lists (getopts' usage text): `-X` and `--long` words before each
/// description.
fn switches() -> Vec<String> {
    let help = portnanny::args::help();
    let mut out = Vec::new();
    let mut options = false;
    for line in help.lines() {
        if line.starts_with("Options:") {
            options = true;
            continue;
        }
        if !options {
            continue;
        }
        let head = line.trim_start().split("  ").next().unwrap_or("");
        for word in head.split([' ', ',']) {
            if word.starts_with('-') {
                out.push(word.to_string());
            }
        }
    }
    out
}

#[test]
fn portnanny_8_documents_every_switch() {
    let text = page("portnanny.8");
    let mut documented = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with(".It ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            if pair[0] == "Fl" {
                documented.insert(format!("-{}", pair[1].replace("\\-", "-")));
            }
        }
    }
    let switches = switches();
    assert!(
        switches.len() >= 9,
        "too few switches parsed from -h: {switches:?}"
    );
    let missing: Vec<&String> = switches
        .iter()
        .filter(|s| !documented.contains(*s))
        .collect();
    assert!(
        missing.is_empty(),
        "contrib/portnanny.8 has no `.It Fl X` item for: {missing:?}"
    );
}
