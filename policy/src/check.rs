//! Check mode (`portnanny -C`): every error and warning of all three files at once, plus
//! warnings about how the files fit together.
//!
//! Runs in the parent, before any privilege is dropped or socket bound, on the administrator's
//! files; it only reads the texts it is given. Nothing here changes what a load accepts: the
//! cross-file findings are warnings, because each of them describes a configuration that works
//! (a class with actions but no rule is just never used).
//!
//! Cross-file warnings:
//! - W001: a class in the actions file that no rule can produce. Exempt: GLOBAL, the default
//!   message classes (DEFAULT-REJECT, DEFAULT-IPMAX, DEFAULT-CONNMAX, DEFAULTMSGS), classes that
//!   other classes `see`, and the aftermaxthreads class.
//! - W002: the aftermaxthreads class has no action (not in the actions file, or defined without
//!   drop/run/msg and without any refusal), so overflow connections are just closed.
//! - W003: a default message class that rules can also produce (the original refused this in
//!   its check mode; the document advises against it).
//! - W004 / W005: the rules file has no rules / the actions file defines no classes.
//! - W006: a rule uses `trap`, `hits:` or `mode:` but nanny.conf has no `trap` or `stealth`
//!   line, so it is never true; or `blocked` while nothing can block (no trap or stealth, and
//!   no `block` in the actions file).
//! - W007: the actions file uses `block` but nanny.conf has no `blockfile`, so blocks are
//!   forgotten at restart.
//! - W008: the actions file uses `block` but nanny.conf has no `neverblock` (suggests
//!   `neverblock auto`, so the machine's own addresses, gateways and nameservers are safe).
//!
//! Host checks (users, the chroot directory) need I/O, so the binary makes them and anchors
//! them with [`conf_value_diagnostic`].

use std::collections::HashSet;

use crate::actions::{
    parse_actions_expanding, DEFAULTMSGS, DEFAULT_CONNMAX, DEFAULT_IPMAX, DEFAULT_REJECT,
};
use crate::conf::parse_conf_positions;
use crate::facts::GLOBAL;
use crate::rules::parse_rules;
use crate::source::{Diagnostic, Severity, SourceFile};

/// A diagnostic about the value of a nanny.conf directive that only the caller can check (a
/// user that must exist on this host, a directory that must be safe), anchored at the
/// argument of the directive's last line; at 1:1 when the file does not give the directive
/// (the value is a default).
pub fn conf_value_diagnostic(
    conf: (&str, &str),
    directive: &str,
    severity: Severity,
    code: &'static str,
    message: String,
) -> Diagnostic {
    let src = SourceFile::new(conf.0, conf.1);
    let found = src.logical_lines().ok().and_then(|lines| {
        lines.into_iter().rev().find_map(|ll| {
            let words = crate::words::words(&ll.text);
            let (_, first) = words.first().copied()?;
            let (off, arg) = words.get(1).copied()?;
            (first == directive).then(|| (ll.clone(), off..off + arg.len()))
        })
    });
    match found {
        Some((ll, range)) => src.diag_at(severity, code, &ll, range, message),
        None => src.diagnostic(severity, code, 1, 1, 1, message),
    }
}

/// A diagnostic about the address list file an `ipfile:` operand names, for what only the
/// caller can check (the file's size), anchored at the file name of the first operand that
/// names it (as written); at 1:1 when no operand does.
pub fn ipfile_diagnostic(
    rules: (&str, &str),
    ipfile: &str,
    severity: Severity,
    code: &'static str,
    message: String,
) -> Diagnostic {
    use crate::rules::lex::{tokenize, Tok};
    let src = SourceFile::new(rules.0, rules.1);
    let found = src.logical_lines().ok().and_then(|lines| {
        lines.into_iter().find_map(|ll| {
            let tokens = tokenize(&ll.text).ok()?;
            let range = tokens.windows(2).find_map(|w| match w {
                [m, a] => match (&m.tok, &a.tok) {
                    (Tok::Word(mw), Tok::Word(aw)) if mw == "ipfile:" && aw == ipfile => {
                        Some(a.span.clone())
                    }
                    _ => None,
                },
                _ => None,
            })?;
            Some((ll, range))
        })
    });
    match found {
        Some((ll, range)) => src.diag_at(severity, code, &ll, range, message),
        None => src.diagnostic(severity, code, 1, 1, 1, message),
    }
}

const DEFAULT_CLASSES: [&str; 4] = [DEFAULT_REJECT, DEFAULT_IPMAX, DEFAULT_CONNMAX, DEFAULTMSGS];

/// Parses all three files and returns every diagnostic, in file order (nanny.conf, rules,
/// actions) and by position within each file. `rules`/`actions` are `(name, text)`; None when the
/// caller could not read the file (and reports that itself).
pub fn check_all(
    conf: (&str, &str),
    rules: Option<(&str, &str)>,
    actions: Option<(&str, &str)>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let (conf_parsed, conf_pos) = parse_conf_positions(conf.0, conf.1);
    out.extend(conf_parsed.diagnostics);
    let conf_value = conf_parsed.value;

    let mut sentry_uses: Vec<(u32, &'static str)> = Vec::new();
    let rule_classes: Option<Vec<String>> = rules.and_then(|(name, text)| {
        let parsed = parse_rules(name, text);
        out.extend(parsed.diagnostics);
        let rules = parsed.value?;
        sentry_uses = rules.sentry_matchers();
        if rules.is_empty() {
            out.push(SourceFile::new(name, text).diagnostic(
                Severity::Warning,
                "W004",
                1,
                1,
                1,
                "the rules file has no rules, so every connection will be closed".to_owned(),
            ));
        }
        Some(rules.class_names())
    });

    // Templates are checked as the daemon checks them: only when they will be expanded.
    let substitutions = conf_value.as_ref().is_none_or(|c| c.substitutions);
    let actions_value = actions.and_then(|(name, text)| {
        let parsed = parse_actions_expanding(name, text, substitutions);
        out.extend(parsed.diagnostics);
        let acts = parsed.value?;
        if acts.is_empty() {
            out.push(
                SourceFile::new(name, text).diagnostic(
                    Severity::Warning,
                    "W005",
                    1,
                    1,
                    1,
                    "the actions file defines no classes, so every connection will be closed"
                        .to_owned(),
                ),
            );
        }
        Some((SourceFile::new(name, text), acts))
    });

    let after = conf_value
        .as_ref()
        .and_then(|c| c.aftermaxthreads.as_deref());

    if let (Some(produced), Some((asrc, acts))) = (&rule_classes, &actions_value) {
        let produced: HashSet<&str> = produced.iter().map(String::as_str).collect();
        let see_targets: HashSet<&str> = acts.iter().filter_map(|c| c.see.as_deref()).collect();
        for c in acts.iter() {
            let name = c.name.as_str();
            let width = u32::try_from(name.chars().count()).unwrap_or(1);
            let is_default = DEFAULT_CLASSES.contains(&name);
            if is_default && produced.contains(name) {
                out.push(asrc.diagnostic(
                    Severity::Warning,
                    "W003",
                    c.lineno,
                    1,
                    width,
                    format!(
                        "'{name}' supplies default messages, but rules can also put connections \
                         in it; use another name for the rules' class"
                    ),
                ));
            }
            if produced.contains(name)
                || name == GLOBAL
                || is_default
                || see_targets.contains(name)
                || after == Some(name)
            {
                continue;
            }
            out.push(asrc.diagnostic(
                Severity::Warning,
                "W001",
                c.lineno,
                1,
                width,
                format!(
                    "no rule puts connections in class '{name}', so this action rule is never used"
                ),
            ));
        }
    }

    if let (Some(class), Some((_, acts)), Some((line, col, width))) =
        (after, &actions_value, conf_pos.aftermaxthreads)
    {
        let acting = acts
            .by_name(class)
            .is_some_and(|c| c.has_action() || !c.limits.is_empty());
        if !acting {
            out.push(SourceFile::new(conf.0, conf.1).diagnostic(
                Severity::Warning,
                "W002",
                line,
                col,
                width,
                format!(
                    "aftermaxthreads class '{class}' has no action (drop, run, msg or a refusal) \
                     in the actions file, so connections over the thread limit are just closed"
                ),
            ));
        }
    }

    if let Some(c) = &conf_value {
        sentry_warnings(c, rules, &sentry_uses, actions, &actions_value, &mut out);
    }

    let rank = |file: &str| -> usize {
        [Some(conf.0), rules.map(|r| r.0), actions.map(|a| a.0)]
            .iter()
            .position(|n| *n == Some(file))
            .unwrap_or(3)
    };
    out.sort_by_key(|d| (rank(&d.file), d.line, d.col));
    out
}

/// W006-W008 (see the module comment).
fn sentry_warnings(
    conf: &crate::conf::NannyConf,
    rules: Option<(&str, &str)>,
    uses: &[(u32, &'static str)],
    actions: Option<(&str, &str)>,
    actions_value: &Option<(SourceFile, crate::actions::Actions)>,
    out: &mut Vec<Diagnostic>,
) {
    let s = &conf.sentry;
    let watching = s.watches_anything();
    // The first class (in file order) that gives `block` itself, and where.
    let block_at = match (actions, actions_value) {
        (Some((_, _)), Some((asrc, acts))) => acts
            .iter()
            .find(|c| c.own_directives.iter().any(|d| d == "block"))
            .map(|c| (asrc, find_word(asrc, c.lineno, "block", true))),
        _ => None,
    };
    if let Some((name, text)) = rules {
        let rsrc = SourceFile::new(name, text);
        for &(line, word) in uses {
            let why = match word {
                "blocked" if watching || block_at.is_some() => continue,
                "blocked" => {
                    "nothing can block an address (nanny.conf has no 'trap' or 'stealth' line \
                     and the actions file has no 'block')"
                }
                _ if watching => continue,
                _ => "nanny.conf has no 'trap' or 'stealth' line, so nothing is ever trapped",
            };
            let (l, col, width) = find_word(&rsrc, line, word, false);
            out.push(rsrc.diagnostic(
                Severity::Warning,
                "W006",
                l,
                col,
                width,
                format!("'{word}' is never true here: {why}"),
            ));
        }
    }
    let Some((asrc, (l, col, width))) = block_at else {
        return;
    };
    if s.blockfile.is_none() {
        out.push(
            asrc.diagnostic(
                Severity::Warning,
                "W007",
                l,
                col,
                width,
                "'block' is used but nanny.conf has no 'blockfile', so every block is forgotten \
             when portnanny restarts"
                    .to_owned(),
            ),
        );
    }
    if s.neverblock.is_none() {
        out.push(asrc.diagnostic(
            Severity::Warning,
            "W008",
            l,
            col,
            width,
            "'block' is used but nanny.conf has no 'neverblock'; add 'neverblock auto' so this \
             machine's own addresses, its gateways and its nameservers are never blocked"
                .to_owned(),
        ));
    }
}

/// Where `word` is first written as a whole word from physical line `from` on (a rule or an
/// action line may continue over several lines): (line, column, width). The start of line
/// `from` when it cannot be found. `directive`: only where an actions-file directive starts
/// (after `CLASS:` or a ` : ` separator), so a `msg` text that mentions the word is skipped.
fn find_word(src: &SourceFile, from: u32, word: &str, directive: bool) -> (u32, u32, u32) {
    let width = u32::try_from(word.chars().count()).unwrap_or(1);
    // A logical line is never longer than this many physical lines in practice; the bound
    // keeps a miss from scanning a huge file.
    for line in from..from.saturating_add(64) {
        let text = src.physical_line(line);
        let mut start = 0;
        while let Some(i) = text
            .get(start..)
            .and_then(|t| t.find(word))
            .map(|i| start + i)
        {
            let before = text.get(..i).and_then(|t| t.chars().last());
            let after = text.get(i + word.len()..).and_then(|t| t.chars().next());
            let open = if directive {
                text.get(..i).is_some_and(|t| t.trim_end().ends_with(':'))
                    && before.is_some_and(char::is_whitespace)
            } else {
                before.is_none_or(|c| c.is_whitespace() || c == '(' || c == '!')
            };
            let close = word.ends_with(':') || after.is_none_or(|c| c.is_whitespace() || c == ')');
            if open && close {
                let col = text.get(..i).map_or(0, |t| t.chars().count()) + 1;
                return (line, u32::try_from(col).unwrap_or(1), width);
            }
            start = i + word.len();
        }
    }
    (from, 1, width)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `ipfile:` diagnostic points at the first operand naming the list, continuation lines
    /// and comments included; at 1:1 when no operand names it.
    #[test]
    fn ipfile_diagnostics_point_at_the_operand() {
        let rules = "# lists\na: ipfile: one\nb: ip: 10.0.0.1\n   ipfile:  two\nc: ipfile: two\n";
        let at = |list: &str| {
            let d = ipfile_diagnostic(("r", rules), list, Severity::Error, "H013", "m".into());
            (d.line, d.col, d.width, d.source_line)
        };
        assert_eq!(at("one"), (2, 12, 3, "a: ipfile: one".to_owned()));
        assert_eq!(at("two"), (4, 13, 3, "   ipfile:  two".to_owned()));
        assert_eq!(at("three").0, 1);
    }
}
