//! Whole-file checks of the actions file and the merging of `see` chains.
//!
//! Runs after every line is read (targets may be defined later than the classes that see
//! them). Checks: a class defined twice, a `see` of a class that does not exist, loops of
//! `see`s. When there are none, builds the table with each class's chain merged in.

use std::collections::HashMap;

use super::parse::{Pos, RawClass};
use super::{Actions, ClassAction, Limit};
use crate::source::{Diagnostic, Severity, SourceFile};

pub(super) fn resolve(
    src: &SourceFile,
    mut raw: Vec<RawClass>,
    diags: &mut Vec<Diagnostic>,
    templates: bool,
) -> Option<Actions> {
    if templates {
        for c in &mut raw {
            diags.append(&mut c.template_diags);
        }
    }
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

    // Loops: each class is visited once (colour marking), so resolving is linear in the
    // number of classes; a naive walk per class was cubic on long chains (issue 18). A loop is
    // reported once, at the `see` of the member of the loop that comes first in the file.
    let next: Vec<Option<usize>> = classes
        .iter()
        .map(|c| {
            c.see
                .as_ref()
                .and_then(|(t, _)| index.get(t))
                .map(|&j| j as usize)
        })
        .collect();
    // 0 = not visited, 1 = on the walk in progress, 2 = done.
    let mut state = vec![0u8; classes.len()];
    let mut walk: Vec<usize> = Vec::new();
    let mut order: Vec<usize> = Vec::with_capacity(classes.len());
    for start in 0..classes.len() {
        walk.clear();
        let mut cur = Some(start);
        while let Some(i) = cur {
            match state[i] {
                0 => {
                    state[i] = 1;
                    walk.push(i);
                    cur = next[i];
                }
                1 => {
                    // A loop: the members are the walk from i's first appearance on.
                    bad = true;
                    let p = walk.iter().position(|&x| x == i).unwrap_or(0);
                    let cycle = &walk[p..];
                    let first = cycle.iter().copied().min().unwrap_or(i);
                    let rot = cycle.iter().position(|&x| x == first).unwrap_or(0);
                    let mut names: Vec<&str> = cycle[rot..]
                        .iter()
                        .chain(cycle[..rot].iter())
                        .map(|&k| classes[k].name.as_str())
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
                    cur = None;
                }
                _ => cur = None,
            }
        }
        // Done in reverse: each class after the class it sees, so merging can reuse it.
        for &i in walk.iter().rev() {
            state[i] = 2;
            order.push(i);
        }
    }
    if bad {
        return None;
    }
    if templates && !names_defined(&classes, &next, &err, diags) {
        return None;
    }

    // Each class merges its own directives over the already merged class it sees: the chain
    // is never walked again, so the work is linear in the number of classes.
    let mut merged: Vec<Option<ClassAction>> = vec![None; classes.len()];
    for &i in &order {
        let target = next[i].and_then(|j| merged[j].as_ref());
        let m = merge(&classes[i], next[i], target);
        merged[i] = Some(m);
    }
    let merged: Vec<ClassAction> = merged.into_iter().flatten().collect();
    // The same conflict as A021 on one line, arising through `see`: reported once per class
    // that ends up with both, at its name (its own line already had A021 if both were there).
    let mut conflict = false;
    for (c, raw) in merged.iter().zip(&classes) {
        let own_both = raw.block.is_some() && raw.run.is_some();
        if c.block.is_some() && c.run.is_some() && !own_both {
            conflict = true;
            diags.push(err(
                raw.name_pos,
                "A021",
                format!(
                    "class '{}' gets both 'run' and 'block' through its 'see' chain; a blocked \
                     address gets no service (use 'msg' for a banner, or 'drop')",
                    c.name
                ),
            ));
        }
    }
    if conflict {
        return None;
    }
    unused_sandboxes(&merged, &classes, &next, &err, diags);
    Some(Actions {
        classes: merged,
        index,
    })
}

/// Whether every `%(name)` that is not a built-in can be defined by a `subst`: the one of the
/// class that holds the text, or of a class that sees it (directly or along a chain), since
/// substitutions come from the action class's merged chain. Each name that is not is an error
/// (A019). Linear per distinct name: the classes a `subst` reaches are marked by walking
/// forward from each class that defines it, stopping at a class already marked.
fn names_defined(
    classes: &[RawClass],
    next: &[Option<usize>],
    err: &dyn Fn(Pos, &'static str, String) -> Diagnostic,
    diags: &mut Vec<Diagnostic>,
) -> bool {
    let mut uses: HashMap<&str, Vec<(usize, Pos, &str)>> = HashMap::new();
    for (i, c) in classes.iter().enumerate() {
        for (n, pos, directive) in &c.names {
            uses.entry(n.as_str())
                .or_default()
                .push((i, *pos, directive));
        }
    }
    // The default classes' texts are used for whichever class refused, with that class's
    // substitutions, so a name any class defines may appear in them (and in what they see).
    let defaults: Vec<usize> = classes
        .iter()
        .enumerate()
        .filter(|(_, c)| super::DEFAULT_NAMES.contains(&c.name.as_str()))
        .map(|(i, _)| i)
        .collect();
    let mut ok = true;
    let mut names: Vec<&str> = uses.keys().copied().collect();
    names.sort_unstable();
    for name in names {
        let mut reached = vec![false; classes.len()];
        let definers: Vec<usize> = classes
            .iter()
            .enumerate()
            .filter(|(_, c)| c.subst.iter().any(|(k, _)| k == name))
            .map(|(i, _)| i)
            .collect();
        let starts = if definers.is_empty() {
            definers
        } else {
            definers
                .into_iter()
                .chain(defaults.iter().copied())
                .collect()
        };
        for d in starts {
            let mut cur = Some(d);
            while let Some(i) = cur {
                if reached[i] {
                    break;
                }
                reached[i] = true;
                cur = next[i];
            }
        }
        for &(i, pos, directive) in uses.get(name).map_or(&[][..], Vec::as_slice) {
            if reached[i] {
                continue;
            }
            ok = false;
            diags.push(err(
                pos,
                "A019",
                format!(
                    "'%({name})' in '{directive}' of class '{}' is never defined: it is not a \
                     built-in name, and neither this class nor any class that sees it has \
                     'subst {name}'",
                    classes[i].name
                ),
            ));
        }
    }
    ok
}

/// Warning A023: a class gives sandbox directives itself, but neither it nor any class that
/// sees it (along a chain) runs a program (`run` or `failrun`), so they never apply: a `msg`
/// or `drop` class is answered by the parent itself, with no process to sandbox.
fn unused_sandboxes(
    merged: &[ClassAction],
    classes: &[RawClass],
    next: &[Option<usize>],
    err: &dyn Fn(Pos, &'static str, String) -> Diagnostic,
    diags: &mut Vec<Diagnostic>,
) {
    let mut used = vec![false; classes.len()];
    for (i, c) in merged.iter().enumerate() {
        if c.run.is_none() && c.failrun.is_none() {
            continue;
        }
        // Stops at a class already marked: what it sees is marked too, so the walk is linear.
        let mut cur = Some(i);
        while let Some(j) = cur {
            if used[j] {
                break;
            }
            used[j] = true;
            cur = next[j];
        }
    }
    for (raw, used) in classes.iter().zip(used) {
        if used || raw.sandbox.is_empty() {
            continue;
        }
        diags.push(src_warning(err(
            raw.name_pos,
            "A023",
            format!(
                "class '{}' has sandbox directives (user, nice, rlimit, umask, timeout, chdir) \
                 but runs no program, and no class that sees it does; they only apply to \
                 'run' and 'failrun'",
                raw.name
            ),
        )));
    }
}

/// A diagnostic made by the error helper, as a warning.
fn src_warning(mut d: Diagnostic) -> Diagnostic {
    d.severity = Severity::Warning;
    d
}

fn split_argv(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// Merges a class's own directives over `seen`, the fully merged class it sees (if any): for
/// each directive the first class in the chain that gives it wins, which is the class itself
/// when it gives it, else whatever the rest of the chain merged to.
fn merge(own: &RawClass, see_idx: Option<usize>, seen: Option<&ClassAction>) -> ClassAction {
    let mut out = ClassAction {
        name: own.name.clone(),
        lineno: own.lineno,
        run: None,
        msg: None,
        failrun: None,
        failmsg: None,
        drop: own.drop,
        reject: own.reject,
        quiet: own.quiet,
        log: own.log.clone(),
        faillog: own.faillog.clone(),
        norepeatlog: own.norepeatlog,
        record: own.record.clone(),
        ipmax: own.ipmax,
        connmax: own.connmax,
        block: own.block,
        msgfile: None,
        sandbox: own.sandbox.clone(),
        setenv: Vec::new(),
        subst: Vec::new(),
        see: own.see.as_ref().map(|s| s.0.clone()),
        see_idx: see_idx.and_then(|i| u32::try_from(i).ok()),
        limits: Vec::new(),
        own_directives: own_directives(own),
    };
    // The first class in the chain that names drop, run or msg decides all three, so
    // 'A: run x : see B' with 'B: drop' runs x.
    let own_action = own.drop || own.run.is_some() || own.msg.is_some() || own.msgfile.is_some();
    if own_action {
        out.run = own.run.as_deref().map(split_argv);
        out.msg = own.msg.clone();
        out.msgfile = own.msgfile.clone();
    }
    let own_fail = own.failrun.is_some() || own.failmsg.is_some();
    if own_fail {
        out.failrun = own.failrun.as_deref().map(split_argv);
        out.failmsg = own.failmsg.clone();
    }
    // ORDER: the limit checks keep chain order, reject before ipmax before connmax within a
    // class, so the reported reason is the first check that fails, as in the original; a
    // limit set here shadows the same limit further down the chain, and nothing follows a
    // reject.
    if own.reject {
        out.limits.push(Limit::Reject);
    } else {
        if let Some(n) = own.ipmax {
            out.limits.push(Limit::IpMax(n));
        }
        if let Some(n) = own.connmax {
            out.limits.push(Limit::ConnMax(n));
        }
    }
    push_unique(&mut out.setenv, &own.setenv);
    push_unique(&mut out.subst, &own.subst);
    let Some(s) = seen else {
        return out;
    };
    if !own_action {
        out.drop = s.drop;
        out.run = s.run.clone();
        out.msg = s.msg.clone();
        out.msgfile = s.msgfile.clone();
    }
    if !own_fail {
        out.failrun = s.failrun.clone();
        out.failmsg = s.failmsg.clone();
    }
    out.reject |= s.reject;
    out.quiet |= s.quiet;
    out.norepeatlog |= s.norepeatlog;
    if out.log.is_none() {
        out.log = s.log.clone();
    }
    if out.faillog.is_none() {
        out.faillog = s.faillog.clone();
    }
    if out.record.is_none() {
        out.record = s.record.clone();
    }
    if !own.reject {
        out.limits.extend(s.limits.iter().filter(|l| match l {
            Limit::Reject => true,
            Limit::IpMax(_) => own.ipmax.is_none(),
            Limit::ConnMax(_) => own.connmax.is_none(),
        }));
    }
    if out.ipmax.is_none() {
        out.ipmax = s.ipmax;
    }
    if out.connmax.is_none() {
        out.connmax = s.connmax;
    }
    if out.block.is_none() {
        out.block = s.block;
    }
    out.sandbox.merge_from(&s.sandbox);
    push_unique(&mut out.setenv, &s.setenv);
    push_unique(&mut out.subst, &s.subst);
    out
}

/// Appends the pairs whose name is not there yet (first value of a name wins).
fn push_unique(out: &mut Vec<(String, String)>, from: &[(String, String)]) {
    for (k, v) in from {
        if !out.iter().any(|(n, _)| n == k) {
            out.push((k.clone(), v.clone()));
        }
    }
}

fn own_directives(c: &RawClass) -> Vec<String> {
    let sb = &c.sandbox;
    let flags: [(&str, bool); 24] = [
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
        ("block", c.block.is_some()),
        ("setenv", !c.setenv.is_empty()),
        ("subst", !c.subst.is_empty()),
        ("msgfile", c.msgfile.is_some()),
        ("user", sb.user.is_some()),
        ("nice", sb.nice.is_some()),
        ("rlimit", !sb.rlimits.is_empty()),
        ("umask", sb.umask.is_some()),
        ("timeout", sb.timeout.is_some()),
        ("chdir", sb.chdir.is_some()),
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
