//! From a classification to the `Verdict` message: the decision against live counts, the
//! counting itself, and the conversion into the typed, validated values of `privsep::proto`.
//!
//! Runs in the classifier, on evaluation threads and (for aftermaxthreads) on the dispatch
//! thread. The classification came from our own rules evaluation; class names and labels are
//! re-validated into `ClassName`/`Label` because the parent trusts only newtypes.
//!
//! Invariants:
//! - The decision uses the actions current at decision time (nanny's actions are not frozen
//!   during an evaluation) and the verdict names that actions table's generation, because a
//!   `ClassId` indexes that table.
//! - Check-and-count happens under the conntrack lock, so concurrent decisions never exceed a
//!   limit; a counted connection is recorded before its verdict leaves.
//! - A value that fails newtype validation is left out (treated as not known) and logged.

use std::net::IpAddr;
use std::sync::PoisonError;

use policy::decide;
use policy::facts::Classification;
use privsep::proto::{
    ClassName, ClassifierToParent, ConnId, Decision, Disposition, Label, LogLevel,
    MatchedClassFact, VerdictFacts,
};

use super::conntrack::IpCounts;
use super::facts::Observed;
use super::Shared;

/// Decide `conn` from `ip` with its classification and build its verdict. None only if no
/// policy was ever loaded (the dispatcher refuses connections before the first policy).
pub fn decide(
    shared: &Shared,
    conn: ConnId,
    ip: IpAddr,
    classification: &Classification,
    observed: Observed,
) -> Option<ClassifierToParent> {
    let Some(policy) = shared.current_policy() else {
        shared.parent.log(
            LogLevel::Crit,
            0,
            format!("no policy loaded while deciding conn={}", conn.0),
        );
        return None;
    };
    let ip = ip.to_canonical();
    let (decision, fresh) = {
        let mut table = shared
            .conntrack
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let decision = decide::decide(
            &policy.actions,
            classification,
            &IpCounts { table: &table, ip },
        );
        let fresh = !decision.counted
            || table.up(
                conn,
                ip,
                classification.names().map(str::to_owned).collect(),
            );
        (decision, fresh)
    };
    // Logged outside the lock: a write to the parent may wait, decisions must not.
    if !fresh {
        shared.parent.log(
            LogLevel::Err,
            0,
            format!("conn={} was already counted; counted again", conn.0),
        );
    }
    Some(ClassifierToParent::Verdict {
        conn,
        gen: policy.gen,
        decision,
        facts: verdict_facts(shared, classification, observed),
    })
}

/// The verdict for a connection the classifier cannot classify (its queue is full): close it.
pub fn close(shared: &Shared, conn: ConnId) -> Option<ClassifierToParent> {
    let policy = shared.current_policy()?;
    Some(ClassifierToParent::Verdict {
        conn,
        gen: policy.gen,
        decision: Decision {
            action_class: None,
            disposition: Disposition::Close,
            refusal: None,
            counted: false,
            log: false,
            records: Vec::new(),
        },
        facts: VerdictFacts {
            classes: Vec::new(),
            host: None,
            identd: None,
            seen: None,
        },
    })
}

fn verdict_facts(
    shared: &Shared,
    classification: &Classification,
    observed: Observed,
) -> VerdictFacts {
    let mut classes = Vec::with_capacity(classification.classes.len());
    for class in &classification.classes {
        let name = match ClassName::try_from(class.name.clone()) {
            Ok(name) => name,
            Err(e) => {
                shared.parent.log(
                    LogLevel::Err,
                    0,
                    format!("class name left out of a verdict: {e}"),
                );
                continue;
            }
        };
        let label = match class.label.clone().map(Label::try_from) {
            None => None,
            Some(Ok(label)) => Some(label),
            Some(Err(e)) => {
                shared.parent.log(
                    LogLevel::Err,
                    0,
                    format!(
                        "label of class {} left out of a verdict: {e}",
                        name.as_str()
                    ),
                );
                None
            }
        };
        classes.push(MatchedClassFact {
            name,
            lineno: class.lineno,
            label,
        });
    }
    VerdictFacts {
        classes,
        host: observed.host,
        identd: observed.identd,
        seen: observed.seen,
    }
}
