//! The decision procedure: from the classes a connection matched to the one thing done with it.
//!
//! Runs in the classifier, which owns the connection counts; the inputs are its own actions
//! table and its own classification, nothing from the network except what the counts reflect.
//! The result names classes only by index and carries no text, so the parent can render it
//! from its own copy of the table.
//!
//! The procedure (portnanny's "deciding on the action"):
//! 1. Walk the matched classes in match order, skipping classes the actions file does not
//!    define. The first class whose checks refuse the connection (`reject`, `ipmax`, `connmax`,
//!    merged through `see`) is the action class. A limit N refuses when N or more connections
//!    are already counted (the new one is not yet counted), so a limit of 0 or below refuses
//!    everything.
//! 2. If none refuses, the action class is the first one with `drop`, `run` or `msg`; `drop`
//!    wins inside that class.
//! 3. A refusal is answered by the refusing class's `failrun`, else its `failmsg`, else (unless
//!    it has a `failrun`) the `failmsg` of DEFAULT-<why>, then of DEFAULTMSGS, else closing.
//! 4. Only run and failrun connections are counted against the limits.
//! 5. The action class's `block` (merged through `see`), if any, applies whatever the
//!    disposition: a trap class may refuse (`reject`), send a banner (`msg`) or close, and
//!    block in every case. See [`block_request`].

pub use crate::actions::BlockRequest;
use crate::actions::{
    Actions, ClassAction, Limit, DEFAULTMSGS, DEFAULT_CONNMAX, DEFAULT_IPMAX, DEFAULT_REJECT,
};
use serde::{Deserialize, Serialize};

use crate::facts::Classification;

/// The connection counts the limits are checked against (held by the classifier).
pub trait Counts {
    /// Counted connections that were members of `class` when they were classified.
    fn class_count(&self, class: &str) -> u32;
    /// Counted connections from the new connection's peer address.
    fn ip_count(&self) -> u32;
}

/// What is done with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Disposition {
    /// `run` of the action class.
    Run,
    /// `msg` of the action class.
    Msg,
    /// `failrun` of the refusing class.
    FailRun,
    /// `failmsg` of the refusing class, or of DEFAULT-<why> / DEFAULTMSGS.
    FailMsg,
    /// `drop`, a refusal with nothing to send, or nothing to do at all: close.
    Close,
}

impl Disposition {
    /// The word log lines use for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Run => "run",
            Disposition::Msg => "msg",
            Disposition::FailRun => "failrun",
            Disposition::FailMsg => "failmsg",
            Disposition::Close => "close",
        }
    }
}

/// Why the action class refused the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Refusal {
    Reject,
    IpMax,
    ConnMax,
}

impl Refusal {
    /// The class whose settings are the first fallback for this refusal.
    pub fn default_class(self) -> &'static str {
        match self {
            Refusal::Reject => DEFAULT_REJECT,
            Refusal::IpMax => DEFAULT_IPMAX,
            Refusal::ConnMax => DEFAULT_CONNMAX,
        }
    }

    /// The directive that refused: the one spelling of each reason, in log lines and as
    /// `%(limit)s`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Reject => "reject",
            Refusal::IpMax => "ipmax",
            Refusal::ConnMax => "connmax",
        }
    }

    /// The refusal a limit makes when it refuses.
    pub fn of(limit: Limit) -> Refusal {
        match limit {
            Limit::Reject => Refusal::Reject,
            Limit::IpMax(_) => Refusal::IpMax,
            Limit::ConnMax(_) => Refusal::ConnMax,
        }
    }

    /// `%(limit)s` for a limit refusal; None for `reject`.
    pub fn limit_name(self) -> Option<&'static str> {
        match self {
            Refusal::Reject => None,
            r => Some(r.as_str()),
        }
    }
}

/// The decision for one connection. It crosses from the classifier to the parent as it is
/// (privsep's `proto` re-exports it); the parent admits it against its own table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Index of the action class in the actions table; None when no class refused and none had
    /// anything to do.
    pub action_class: Option<u32>,
    pub disposition: Disposition,
    pub refusal: Option<Refusal>,
    /// Counted against ipmax/connmax (run and failrun only).
    pub counted: bool,
    /// Whether a log line is due: the action class's `log` when accepted, its `faillog` (or a
    /// default one, unless `quiet`) when refused.
    pub log: bool,
    /// Indices of member classes whose (merged) `record` is to be logged, in match order.
    pub records: Vec<u32>,
}

/// The block a decision asks for: the action class's `block`, from `actions`, the table the
/// decision was made against. None when there is no action class or it has no `block`.
///
/// Deliberately not a field of [`Decision`]: a verdict names an action class and the parent
/// renders everything else from its own copy of the table (STYLE.md 2.4), so a classifier
/// cannot ask for a block the administrator did not write; and the message's shape stays as
/// it is. The classifier, the parent and the sentry worker's path all call this.
pub fn block_request(actions: &Actions, decision: &Decision) -> Option<BlockRequest> {
    decision
        .action_class
        .and_then(|i| actions.get(i))
        .and_then(|c| c.block)
}

/// The classes that supply defaults for a refusal, in lookup order (those the file defines).
pub fn default_sources(actions: &Actions, refusal: Refusal) -> impl Iterator<Item = &ClassAction> {
    [refusal.default_class(), DEFAULTMSGS]
        .into_iter()
        .filter_map(|n| actions.by_name(n))
}

/// The `failmsg` text for a refusal by `class` and the class it comes from, if any. Not looked
/// for in the defaults when the class has a `failrun`.
pub fn failmsg_source<'a>(
    actions: &'a Actions,
    class: &'a ClassAction,
    refusal: Refusal,
) -> Option<(&'a ClassAction, &'a str)> {
    if class.failrun.is_some() {
        return None;
    }
    if let Some(m) = &class.failmsg {
        return Some((class, m));
    }
    default_sources(actions, refusal).find_map(|c| c.failmsg.as_deref().map(|m| (c, m)))
}

/// Where the `faillog` of a refusal comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailLog<'a> {
    /// This text, from this class (the refusing class, through `see`, or a default class).
    Text(&'a ClassAction, &'a str),
    /// The internal default for the refusal.
    Internal,
}

/// The `faillog` for a refusal by `class`; None when nothing is logged (`quiet` and no faillog
/// of its own, so the defaults are not looked at).
pub fn faillog_source<'a>(
    actions: &'a Actions,
    class: &'a ClassAction,
    refusal: Refusal,
) -> Option<FailLog<'a>> {
    if let Some(m) = &class.faillog {
        return Some(FailLog::Text(class, m));
    }
    if class.quiet {
        return None;
    }
    Some(
        default_sources(actions, refusal)
            .find_map(|c| c.faillog.as_deref().map(|m| FailLog::Text(c, m)))
            .unwrap_or(FailLog::Internal),
    )
}

/// Whether one limit check refuses (step 1); shared with [`crate::explain`].
pub(crate) fn refuses(limit: Limit, class: &str, counts: &dyn Counts) -> Option<Refusal> {
    let hit = match limit {
        Limit::Reject => true,
        Limit::IpMax(n) => i64::from(counts.ip_count()) >= n,
        Limit::ConnMax(n) => i64::from(counts.class_count(class)) >= n,
    };
    hit.then_some(Refusal::of(limit))
}

/// Decides what to do with a classified connection.
pub fn decide(actions: &Actions, classes: &Classification, counts: &dyn Counts) -> Decision {
    let members: Vec<(u32, &ClassAction)> = classes
        .names()
        .filter_map(|n| {
            actions
                .index_of(n)
                .and_then(|i| actions.get(i).map(|c| (i, c)))
        })
        .collect();
    let records = members
        .iter()
        .filter(|(_, c)| c.record.is_some())
        .map(|(i, _)| *i)
        .collect();

    // ORDER: every member's limits are checked before any member's action is looked at: a
    // refusal by a later class beats an action of an earlier one.
    for &(idx, class) in &members {
        let refusal = class
            .limits
            .iter()
            .find_map(|&l| refuses(l, &class.name, counts));
        if let Some(refusal) = refusal {
            let disposition = if class.failrun.is_some() {
                Disposition::FailRun
            } else if failmsg_source(actions, class, refusal).is_some() {
                Disposition::FailMsg
            } else {
                Disposition::Close
            };
            return Decision {
                action_class: Some(idx),
                disposition,
                refusal: Some(refusal),
                counted: disposition == Disposition::FailRun,
                log: faillog_source(actions, class, refusal).is_some(),
                records,
            };
        }
    }

    for &(idx, class) in &members {
        let disposition = if class.drop {
            Disposition::Close
        } else if class.run.is_some() {
            Disposition::Run
        } else if class.has_msg() {
            Disposition::Msg
        } else {
            continue;
        };
        return Decision {
            action_class: Some(idx),
            disposition,
            refusal: None,
            counted: disposition == Disposition::Run,
            log: class.log.is_some(),
            records,
        };
    }

    Decision {
        action_class: None,
        disposition: Disposition::Close,
        refusal: None,
        counted: false,
        log: false,
        records,
    }
}
