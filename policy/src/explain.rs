//! The decision side of `nannyctl explain`: the action a [`Decision`] names, as the actions
//! file gives it, and every limit check the decision procedure made, as text.
//!
//! Runs in the classifier, for an explain request only; no I/O. The decision itself always
//! comes from [`crate::decide::decide`] (the one procedure real connections get); this file
//! only describes it. The limit checks are walked in the same order and with the same test
//! ([`crate::decide::refuses`]) as the procedure's step 1, so the first refusing check named
//! here is the refusal the decision carries.

use crate::actions::{Actions, ClassAction, Limit};
use crate::decide::{failmsg_source, refuses, Counts, Decision, Disposition, Refusal};
use crate::facts::Classification;

/// Longest piece of a `run` argv or message shown.
const MAX_SHOWN: usize = 200;

fn shown(s: &str) -> String {
    if s.len() <= MAX_SHOWN {
        return s.escape_debug().to_string();
    }
    let mut at = MAX_SHOWN;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}…", s[..at].escape_debug())
}

/// The action `decision` names, as the actions file writes it: `run ARGV`, `msg "TEXT"`,
/// `failmsg "TEXT" (from DEFAULTMSGS)`, `drop`, ..., with the class's `block` appended.
pub fn action_text(actions: &Actions, decision: &Decision) -> String {
    let Some(class) = decision.action_class.and_then(|i| actions.get(i)) else {
        return "close (no matched class has an action)".to_owned();
    };
    let mut text = match (decision.disposition, decision.refusal) {
        (Disposition::Run, _) => format!("run {}", shown(&argv(class.run.as_deref()))),
        (Disposition::Msg, _) => format!("msg \"{}\"", shown(class.msg.as_deref().unwrap_or(""))),
        (Disposition::FailRun, _) => {
            format!("failrun {}", shown(&argv(class.failrun.as_deref())))
        }
        (Disposition::FailMsg, Some(r)) => match failmsg_source(actions, class, r) {
            Some((from, m)) if from.name != class.name => {
                format!("failmsg \"{}\" (from {})", shown(m), from.name)
            }
            Some((_, m)) => format!("failmsg \"{}\"", shown(m)),
            None => "failmsg".to_owned(),
        },
        (Disposition::Close, Some(r)) => format!("close (refused by {}, no message)", r.as_str()),
        (Disposition::Close, None) if class.drop => "drop".to_owned(),
        (Disposition::FailMsg | Disposition::Close, _) => "close".to_owned(),
    };
    if let Some(block) = class.block {
        text.push_str(&format!(" : {block}"));
    }
    text
}

fn argv(v: Option<&[String]>) -> String {
    v.map(|a| a.join(" ")).unwrap_or_default()
}

/// Every limit check the decision procedure makes for `classes` against `counts`, in its
/// order, up to and including the first that refuses: `smtp: ipmax 2 (1 counted from this
/// address): admits`. Classes without an actions entry are named as such.
pub fn limit_checks(
    actions: &Actions,
    classes: &Classification,
    counts: &dyn Counts,
) -> Vec<String> {
    let mut out = Vec::new();
    for name in classes.names() {
        let Some(class) = actions.by_name(name) else {
            out.push(format!("{name}: not in the actions file (no limits)"));
            continue;
        };
        if class.limits.is_empty() {
            out.push(format!("{name}: no limits"));
        }
        for &limit in &class.limits {
            let refused = refuses(limit, &class.name, counts).is_some();
            out.push(format!(
                "{name}: {}: {}",
                limit_text(limit, class, counts),
                if refused { "refuses" } else { "admits" }
            ));
            if refused {
                return out;
            }
        }
    }
    out
}

/// The limit as the actions file gives it, named by its refusal's one spelling, with the
/// count it is checked against.
fn limit_text(limit: Limit, class: &ClassAction, counts: &dyn Counts) -> String {
    let name = Refusal::of(limit).as_str();
    match limit {
        Limit::Reject => name.to_owned(),
        Limit::IpMax(n) => format!(
            "{name} {n} ({} counted from this address)",
            counts.ip_count()
        ),
        Limit::ConnMax(n) => format!(
            "{name} {n} ({} counted in class {})",
            counts.class_count(&class.name),
            class.name
        ),
    }
}
