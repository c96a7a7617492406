//! Rule evaluation for one connection.
//!
//! Runs in the classifier, once per connection, possibly on several threads at once over the
//! same shared [`Rules`]. The facts come through the lazy [`Facts`] interface (resolver answers
//! and history, which the classifier validated); nothing here does I/O.
//!
//! Order, exactly as the original portnanny: rules in file order; a rule whose class already
//! matched is skipped without evaluating it; once a rule without /nt matched, only /always
//! rules are evaluated; GLOBAL is appended last when anything matched (once, even if a rule
//! names GLOBAL itself).

use crate::facts::{Classification, Facts, MatchedClass, GLOBAL};

use super::matchers::Cx;
use super::Rules;

pub fn evaluate(rules: &Rules, facts: &mut dyn Facts) -> Classification {
    let mut matched: Vec<MatchedClass> = Vec::new();
    let mut stopped = false;
    for rule in &rules.rules {
        if stopped && !rule.always {
            continue;
        }
        if matched.iter().any(|m| m.name == rule.class) {
            continue;
        }
        let hit = {
            let mut cx = Cx {
                facts: &mut *facts,
                classes: &matched,
            };
            rule.expr.eval(&mut cx)
        };
        if hit {
            matched.push(MatchedClass {
                name: rule.class.clone(),
                lineno: rule.lineno,
                label: rule.label.clone(),
            });
            if !rule.nonterminal {
                stopped = true;
                if !rules.has_always {
                    break;
                }
            }
        }
    }
    if !matched.is_empty() && !matched.iter().any(|m| m.name == GLOBAL) {
        matched.push(MatchedClass {
            name: GLOBAL.to_owned(),
            lineno: 0,
            label: None,
        });
    }
    Classification { classes: matched }
}
