//! Whole-file checks of the actions file and the merging of `see` chains.
//!
//! Runs after every line is read (targets may be defined later than the classes that see
//! them). Checks: a class defined twice, a `see` of a class that does not exist, loops of
//! `see`s. When there are none, builds the table with each class's chain merged in.

use std::collections::HashMap;

use super::parse::RawClass;
use super::{Actions, ClassAction, Limit};
use crate::source::{Diagnostic, Severity, SourceFile};

pub(super) fn resolve(
    src: &SourceFile,
    raw: Vec<RawClass>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Actions> {
    let err = |pos: (u32, u32, u32), code: &'static str, msg: String| {
        src.diagnostic(Severity::Error, code, pos.0, pos.1, pos.2, msg)
    };

    // Duplicate classes: the first definition stays; later ones are errors.
    let mut index: HashMap<String, u32> = HashMap::new();
    let mut classes: Vec<RawClass> = Vec::new();
    for c in raw {
        if let Some(&first) = index.get(&c.name) {
            let first_line = classes[first as usize].lineno;
            diags.push(err(
                c.name_pos,
                "A010",
                format!(
                    "class '{}' is defined twice (first on line {first_line}); a class may have \
                     only one action rule",
                    c.name
                ),
            ));
            continue;
        }
        index.insert(c.name.clone(), classes.len() as u32);
        classes.push(c);
    }

    // Missing see targets.
    let mut bad = false;
    for c in &classes {
        if let Some((target, pos)) = &c.see {
            if !index.contains_key(target) {
                bad = true;
                diags.push(err(
                    *pos,
                    "A011",
                    format!(
                        "class '{}' says to see class '{target}', which this file does not define",
                        c.name
                    ),
                ));
            }
        }
    }

    // Loops: follow each chain; a loop is reported once, at the `see` of the member of the
    // loop that comes first in the file.
    let next = |i: usize| -> Option<usize> {
        classes[i]
            .see
            .as_ref()
            .and_then(|(t, _)| index.get(t))
            .map(|&j| j as usize)
    };
    let mut reported = vec![false; classes.len()];
    let mut chains: Vec<Vec<u32>> = Vec::with_capacity(classes.len());
    for start in 0..classes.len() {
        let mut chain = vec![start];
        let mut cur = start;
        let mut looped = None;
        // Bounded by the number of classes: a chain longer than that must repeat a class.
        while let Some(n) = next(cur) {
            if let Some(p) = chain.iter().position(|&x| x == n) {
                looped = Some(p);
                break;
            }
            chain.push(n);
            cur = n;
        }
        if let Some(p) = looped {
            bad = true;
            let cycle: Vec<usize> = chain[p..].to_vec();
            let Some(&first) = cycle.iter().min() else {
                continue;
            };
            if !reported[first] {
                for &m in &cycle {
                    reported[m] = true;
                }
                let rot = cycle.iter().position(|&x| x == first).unwrap_or(0);
                let mut names: Vec<&str> = cycle[rot..]
                    .iter()
                    .chain(cycle[..rot].iter())
                    .map(|&i| classes[i].name.as_str())
                    .collect();
                names.push(classes[first].name.as_str());
                let pos = classes[first]
                    .see
                    .as_ref()
                    .map_or(classes[first].name_pos, |s| s.1);
                diags.push(err(
                    pos,
                    "A012",
                    format!("'see' loop: {}", names.join(" -> ")),
                ));
            }
        }
        chains.push(chain.into_iter().map(|i| i as u32).collect());
    }
    if bad {
        return None;
    }

    let merged = classes
        .iter()
        .zip(&chains)
        .map(|(c, chain)| merge(c, chain, &classes))
        .collect();
    Some(Actions {
        classes: merged,
        index,
    })
}

fn split_argv(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// Merges a class's chain: for each directive the first class in the chain that gives it wins.
fn merge(own: &RawClass, chain: &[u32], all: &[RawClass]) -> ClassAction {
    let mut out = ClassAction {
        name: own.name.clone(),
        lineno: own.lineno,
        run: None,
        msg: None,
        failrun: None,
        failmsg: None,
        drop: false,
        reject: false,
        quiet: false,
        log: None,
        faillog: None,
        norepeatlog: false,
        record: None,
        ipmax: None,
        connmax: None,
        setenv: Vec::new(),
        subst: Vec::new(),
        see: own.see.as_ref().map(|s| s.0.clone()),
        chain: chain.to_vec(),
        limits: Vec::new(),
        own_directives: own_directives(own),
    };
    let mut have_action = false;
    let mut have_fail = false;
    let mut limits_done = false;
    for &i in chain {
        let c = &all[i as usize];
        // The first class in the chain that names drop, run or msg decides all three, so
        // 'A: run x : see B' with 'B: drop' runs x.
        if !have_action && (c.drop || c.run.is_some() || c.msg.is_some()) {
            have_action = true;
            out.drop = c.drop;
            out.run = c.run.as_deref().map(split_argv);
            out.msg = c.msg.clone();
        }
        if !have_fail && (c.failrun.is_some() || c.failmsg.is_some()) {
            have_fail = true;
            out.failrun = c.failrun.as_deref().map(split_argv);
            out.failmsg = c.failmsg.clone();
        }
        out.reject |= c.reject;
        out.quiet |= c.quiet;
        out.norepeatlog |= c.norepeatlog;
        if out.log.is_none() {
            out.log = c.log.clone();
        }
        if out.faillog.is_none() {
            out.faillog = c.faillog.clone();
        }
        if out.record.is_none() {
            out.record = c.record.clone();
        }
        // ORDER: the limit checks keep chain order, reject before ipmax before connmax within
        // a class, so the reported reason is the first check that fails, as in the original.
        if !limits_done {
            if c.reject {
                out.limits.push(Limit::Reject);
                limits_done = true;
            }
            if let (Some(n), None, false) = (c.ipmax, out.ipmax, limits_done) {
                out.limits.push(Limit::IpMax(n));
            }
            if let (Some(n), None, false) = (c.connmax, out.connmax, limits_done) {
                out.limits.push(Limit::ConnMax(n));
            }
        }
        if out.ipmax.is_none() {
            out.ipmax = c.ipmax;
        }
        if out.connmax.is_none() {
            out.connmax = c.connmax;
        }
        for (k, v) in &c.setenv {
            if !out.setenv.iter().any(|(n, _)| n == k) {
                out.setenv.push((k.clone(), v.clone()));
            }
        }
        for (k, v) in &c.subst {
            if !out.subst.iter().any(|(n, _)| n == k) {
                out.subst.push((k.clone(), v.clone()));
            }
        }
    }
    out
}

fn own_directives(c: &RawClass) -> Vec<String> {
    let flags: [(&str, bool); 16] = [
        ("run", c.run.is_some()),
        ("msg", c.msg.is_some()),
        ("failrun", c.failrun.is_some()),
        ("failmsg", c.failmsg.is_some()),
        ("drop", c.drop),
        ("reject", c.reject),
        ("quiet", c.quiet),
        ("log", c.log.is_some()),
        ("faillog", c.faillog.is_some()),
        ("norepeatlog", c.norepeatlog),
        ("record", c.record.is_some()),
        ("ipmax", c.ipmax.is_some()),
        ("connmax", c.connmax.is_some()),
        ("see", c.see.is_some()),
        ("setenv", !c.setenv.is_empty()),
        ("subst", !c.subst.is_empty()),
    ];
    let mut out: Vec<String> = flags
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| (*n).to_owned())
        .collect();
    out.extend(c.setenv.iter().map(|(k, _)| format!("setenv {k}")));
    out.extend(c.subst.iter().map(|(k, _)| format!("subst {k}")));
    out
}
