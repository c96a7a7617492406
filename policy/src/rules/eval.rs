//! Rule evaluation for one connection, and the evaluation plan built once per rules file.
//!
//! Runs in the classifier, once per connection, possibly on several threads at once over the
//! same shared [`Rules`]. The facts come through the lazy [`Facts`] interface (resolver answers
//! and history, which the classifier validated); nothing here does I/O.
//!
//! Order, exactly as the original portnanny: rules in file order; a rule whose class already
//! matched is skipped without evaluating it; once a rule without /nt matched, only /always
//! rules are evaluated; GLOBAL is appended last when anything matched (once, even if a rule
//! names GLOBAL itself).
//!
//! The plan: a run of consecutive rules with the same class and notes, each of which is only an
//! `ip:` (or only a `localip:`) test, behaves exactly like one test "is the address in any of
//! them, and which is the first?". Such a run (a blocklist written one address per line) is
//! evaluated with one binary search over prioritised segments instead of one rule at a time,
//! so 100,000 one-line rules still cost microseconds. Nothing else changes: the skip
//! conditions are the same for every rule of the run, and the rule reported (line number,
//! label) is the first one in file order that contains the address.
//!
//! Prefetch across rules: several consecutive rules that each start with a DNS lookup (one
//! `dnsbl:` per rule, as in the documentation's dialup and DNSBL examples) would otherwise wait
//! for their answers one after another. When evaluation reaches the first of them, the DNS
//! lookups of the whole block are announced with [`Facts::prefetch`] so they run in parallel.
//! Only DNS lookups are announced this way: identd and `answerson:` connect to the peer, which
//! the original did only when a rule needed it. Answers are still read in file order, so results
//! are exactly those of strict evaluation.
//!
//! Tracing (`nannyctl explain`): [`evaluate_traced`] is this evaluator, generic over a
//! [`Tracer`] that is told what happens to every rule; [`evaluate`] passes [`NoTrace`], whose
//! empty inlined hooks leave the same machine code as an evaluator without them. See
//! [`super::trace`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::net::IpAddr;

use crate::addr::AddrRange;
use crate::facts::{Classification, Facts, Lookup, MatchedClass, GLOBAL};

use super::compile::{leading_lookup, Node};
use super::compile::{NoTrace, Tracer};
use super::matchers::{canonical_ip, Cx, Matcher};
use super::{Rule, Rules};

/// One step of the evaluation plan.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// Evaluate `rules[i]`.
    One(usize),
    /// A run of address-only rules, `rules[first..first + len]`.
    Run(AddrRun),
}

/// Prioritised address segments for a run: each address maps to the offset (within the run)
/// of the first rule that contains it.
#[derive(Clone, Debug)]
pub(crate) struct AddrRun {
    first: usize,
    /// How many rules the run covers (for tracing).
    len: usize,
    local: bool,
    v4: Vec<(u32, u32, u32)>,
    v6: Vec<(u128, u128, u32)>,
}

/// Shortest run worth a merged lookup.
const MIN_RUN: usize = 2;

/// Most rules one cross-rule prefetch looks ahead (bounds the plan-building work).
const PREFETCH_WINDOW: usize = 16;

/// The DNS lookup a step needs first, if any.
fn leading_dns(rules: &[Rule], step: &Step) -> Option<Lookup> {
    let Step::One(i) = step else {
        return None;
    };
    match leading_lookup(&rules.get(*i)?.expr)? {
        l @ (Lookup::Host | Lookup::Forward(_) | Lookup::Dnsbl(_)) => Some(l),
        Lookup::Identd | Lookup::AnswersOn(_) => None,
    }
}

/// For each step: the last step of its block of DNS-needing rules and the block's distinct
/// lookups, when there are at least two.
pub(crate) fn prefetch_windows(rules: &[Rule], steps: &[Step]) -> Vec<Option<Window>> {
    (0..steps.len())
        .map(|s| {
            let mut lookups: Vec<Lookup> = Vec::new();
            let mut last = s;
            for (e, step) in steps.iter().enumerate().skip(s).take(PREFETCH_WINDOW) {
                let Some(l) = leading_dns(rules, step) else {
                    break;
                };
                if !lookups.contains(&l) {
                    lookups.push(l);
                }
                last = e;
            }
            (lookups.len() >= 2).then_some(Window { last, lookups })
        })
        .collect()
}

/// Lookups to announce together when evaluation reaches a step, covering steps up to `last`.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    last: usize,
    lookups: Vec<Lookup>,
}

/// The address test of a rule whose whole expression is one `ip:`/`localip:` matcher.
fn addr_only(rule: &Rule) -> Option<bool> {
    match &rule.expr {
        Node::M(Matcher::Ip { local, .. }) => Some(*local),
        _ => None,
    }
}

fn same_head(a: &Rule, b: &Rule) -> bool {
    a.class == b.class && a.nonterminal == b.nonterminal && a.always == b.always
}

/// Builds the plan for a list of rules.
pub(crate) fn plan(rules: &[Rule]) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut i = 0;
    while let Some(rule) = rules.get(i) {
        let Some(local) = addr_only(rule) else {
            steps.push(Step::One(i));
            i += 1;
            continue;
        };
        let mut end = i + 1;
        while rules
            .get(end)
            .is_some_and(|r| same_head(rule, r) && addr_only(r) == Some(local))
        {
            end += 1;
        }
        if end - i >= MIN_RUN {
            steps.push(Step::Run(build_run(rules, i, end, local)));
        } else {
            steps.push(Step::One(i));
        }
        i = end;
    }
    steps
}

fn build_run(rules: &[Rule], first: usize, end: usize, local: bool) -> AddrRun {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (off, rule) in rules.get(first..end).unwrap_or(&[]).iter().enumerate() {
        let off = u32::try_from(off).unwrap_or(u32::MAX);
        if let Node::M(Matcher::Ip { set, .. }) = &rule.expr {
            for r in set.ranges() {
                match r {
                    AddrRange::V4(lo, hi) => v4.push((u128::from(lo), u128::from(hi), off)),
                    AddrRange::V6(lo, hi) => v6.push((lo, hi, off)),
                }
            }
        }
    }
    let count = end - first;
    AddrRun {
        first,
        len: count,
        local,
        v4: prioritise(v4, count)
            .into_iter()
            .map(|(lo, hi, o)| {
                (
                    u32::try_from(lo).unwrap_or(u32::MAX),
                    u32::try_from(hi).unwrap_or(u32::MAX),
                    o,
                )
            })
            .collect(),
        v6: prioritise(v6, count),
    }
}

/// Turns overlapping tagged intervals into disjoint sorted segments tagged with the smallest
/// tag covering them (a sweep with a min-heap: O(n log n) whatever the overlaps).
fn prioritise(intervals: Vec<(u128, u128, u32)>, tags: usize) -> Vec<(u128, u128, u32)> {
    // (position, is_start, tag); an interval ending at u128::MAX has no end event.
    let mut events: Vec<(u128, bool, u32)> = Vec::with_capacity(intervals.len() * 2);
    for &(lo, hi, tag) in &intervals {
        events.push((lo, true, tag));
        if let Some(after) = hi.checked_add(1) {
            events.push((after, false, tag));
        }
    }
    events.sort_unstable_by_key(|e| e.0);
    let mut active = vec![0u32; tags];
    let mut heap: BinaryHeap<Reverse<u32>> = BinaryHeap::new();
    let mut out: Vec<(u128, u128, u32)> = Vec::new();
    let mut i = 0;
    while let Some(&(pos, _, _)) = events.get(i) {
        while let Some(&(p, start, tag)) = events.get(i) {
            if p != pos {
                break;
            }
            if let Some(n) = active.get_mut(tag as usize) {
                if start {
                    *n += 1;
                    heap.push(Reverse(tag));
                } else {
                    *n = n.saturating_sub(1);
                }
            }
            i += 1;
        }
        while let Some(&Reverse(top)) = heap.peek() {
            if active.get(top as usize).copied().unwrap_or(0) == 0 {
                heap.pop();
            } else {
                break;
            }
        }
        let Some(&Reverse(top)) = heap.peek() else {
            continue;
        };
        let seg_end = events.get(i).map_or(u128::MAX, |e| e.0 - 1);
        match out.last_mut() {
            Some(last) if last.2 == top && last.1.checked_add(1) == Some(pos) => last.1 = seg_end,
            _ => out.push((pos, seg_end, top)),
        }
    }
    out
}

fn find<T: Ord + Copy>(segs: &[(T, T, u32)], x: T) -> Option<u32> {
    let i = segs.partition_point(|s| s.0 <= x);
    let s = segs.get(i.checked_sub(1)?)?;
    (x <= s.1).then_some(s.2)
}

impl AddrRun {
    /// The offset of the first rule of the run containing the connection's address.
    #[inline]
    fn first_match(&self, facts: &dyn Facts) -> Option<usize> {
        let ip = if self.local {
            facts.local().ip()
        } else {
            facts.remote().ip()
        };
        let hit = match canonical_ip(ip) {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        };
        hit.map(|o| o as usize)
    }
}

fn matched_class(rule: &Rule) -> MatchedClass {
    MatchedClass {
        name: rule.class.clone(),
        lineno: rule.lineno,
        label: rule.label.clone(),
    }
}

/// Class ids of the classes matched so far: a short list, with a set once it grows (a file of
/// thousands of /nt rules must not make evaluation quadratic).
#[derive(Default)]
struct MatchedIds {
    list: Vec<u32>,
    set: Option<HashSet<u32>>,
}

impl MatchedIds {
    const LIST_MAX: usize = 32;

    #[inline]
    fn contains(&self, id: u32) -> bool {
        match &self.set {
            Some(set) => set.contains(&id),
            None => self.list.contains(&id),
        }
    }

    #[inline]
    fn insert(&mut self, id: u32) {
        match &mut self.set {
            Some(set) => {
                set.insert(id);
            }
            None => {
                self.list.push(id);
                if self.list.len() > Self::LIST_MAX {
                    self.set = Some(self.list.drain(..).collect());
                }
            }
        }
    }
}

/// A number per distinct class name, per rule (so evaluation compares integers).
pub(crate) fn class_ids(rules: &[Rule]) -> Vec<u32> {
    let mut ids = std::collections::HashMap::new();
    rules
        .iter()
        .map(|r| {
            let next = u32::try_from(ids.len()).unwrap_or(u32::MAX);
            *ids.entry(r.class.as_str()).or_insert(next)
        })
        .collect()
}

pub fn evaluate(rules: &Rules, facts: &mut dyn Facts) -> Classification {
    evaluate_traced(rules, facts, &mut NoTrace)
}

/// [`evaluate`], reporting every rule's fate to `t` (see [`super::trace`]); with [`NoTrace`]
/// the hooks compile to nothing.
pub(crate) fn evaluate_traced<T: Tracer>(
    rules: &Rules,
    facts: &mut dyn Facts,
    t: &mut T,
) -> Classification {
    let mut matched: Vec<MatchedClass> = Vec::new();
    let mut ids = MatchedIds::default();
    let mut stopped = false;
    // Steps up to this index have had their DNS lookups announced.
    let mut announced: Option<usize> = None;
    for (s, step) in rules.plan.iter().enumerate() {
        let (head, id, hit) = match step {
            Step::One(i) => {
                let (Some(rule), Some(&id)) = (rules.rules.get(*i), rules.class_ids.get(*i)) else {
                    continue;
                };
                // ORDER: the same tests in the same order as without a tracer (the cheap one
                // first), so the untraced evaluator does no extra work.
                if stopped && !rule.always {
                    t.skip(*i, false);
                    continue;
                }
                if ids.contains(id) {
                    t.skip(*i, true);
                    continue;
                }
                if announced.is_none_or(|a| a < s) {
                    if let Some(Some(w)) = rules.windows.get(s) {
                        facts.prefetch(&w.lookups);
                        announced = Some(w.last);
                    }
                }
                t.rule_start(*i);
                let hit = {
                    let mut cx = Cx {
                        facts: &mut *facts,
                        classes: &matched,
                    };
                    rule.expr.eval_traced(&mut cx, t)
                };
                t.rule_end(*i, hit);
                (rule, id, hit.then_some(rule))
            }
            Step::Run(run) => {
                let (Some(rule), Some(&id)) =
                    (rules.rules.get(run.first), rules.class_ids.get(run.first))
                else {
                    continue;
                };
                if stopped && !rule.always {
                    (run.first..run.first + run.len).for_each(|i| t.skip(i, false));
                    continue;
                }
                if ids.contains(id) {
                    (run.first..run.first + run.len).for_each(|i| t.skip(i, true));
                    continue;
                }
                let offset = run.first_match(facts);
                t.run(run.first, run.len, offset);
                let hit = offset.and_then(|o| rules.rules.get(run.first + o));
                (rule, id, hit)
            }
        };
        if let Some(rule) = hit {
            ids.insert(id);
            matched.push(matched_class(rule));
            if !head.nonterminal {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prioritise_keeps_the_first_tag() {
        let segs = prioritise(
            vec![
                (10, 20, 1),
                (0, 5, 2),
                (15, 30, 0),
                (4, 12, 3),
                (40, u128::MAX, 4),
            ],
            5,
        );
        assert_eq!(
            segs,
            vec![
                (0, 3, 2),
                (4, 5, 2),
                (6, 9, 3),
                (10, 14, 1),
                (15, 30, 0),
                (40, u128::MAX, 4)
            ]
            .into_iter()
            .fold(Vec::<(u128, u128, u32)>::new(), |mut v, s| {
                match v.last_mut() {
                    Some(l) if l.2 == s.2 && l.1 + 1 == s.0 => l.1 = s.1,
                    _ => v.push(s),
                }
                v
            })
        );
        for (x, want) in [
            (0, Some(2)),
            (5, Some(2)),
            (6, Some(3)),
            (12, Some(1)),
            (15, Some(0)),
            (31, None),
            (39, None),
            (u128::MAX, Some(4)),
        ] {
            assert_eq!(find(&segs, x), want, "{x}");
        }
    }
}
