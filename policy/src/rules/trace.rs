//! Tracing a rules evaluation: what `nannyctl explain` shows for every rule (tcpdmatch for the
//! whole language).
//!
//! Runs in the classifier, for an explain request only; no I/O. The facts come through the same
//! [`Facts`] interface as a real connection's.
//!
//! There is one evaluator. [`eval::evaluate_traced`] and [`Node::eval_traced`] are generic over
//! a [`Tracer`]; the normal path passes [`NoTrace`], whose hooks are empty and inlined, so the
//! monomorphised code is the untraced evaluator (the benchmarks in `benches/eval.rs` show no
//! difference). [`explain`] passes a [`Recorder`], which sees exactly what the evaluator did:
//! which rules it skipped and why, which matchers it evaluated (short-circuit included) and
//! what each answered. Because it is the same code, explain cannot disagree with a real
//! connection given the same facts.
//!
//! Invariant: a tracer only observes. Its hooks run after the evaluator decided. The values a
//! matcher's reason shows come from [`Noting`], a pass-through [`Facts`] that remembers every
//! answer the evaluator was given: [`Facts`] sees exactly the calls an untraced evaluation
//! makes, no more.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::addr::parse_addrspec;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;

use crate::facts::{Classification, Facts, HnStatus, HostInfo, Lookup, SeenTimes, SentryMode};

use super::compile::Node;
pub use super::compile::{NoTrace, Tracer};
use super::eval;
use super::matchers::{canonical_ip, Cx, Matcher, TimeKind};
use super::Rules;

/// Longest `why` text kept for one rule; a longer one is cut with `…`.
pub const MAX_WHY: usize = 480;

/// What happened to one rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its expression was evaluated; `why` names the matchers that were evaluated, in order,
    /// with their answers.
    Evaluated { matched: bool, why: String },
    /// One of a run of address-only rules searched in one step (see [`eval`]): the same answer
    /// as evaluating its `ip:`/`localip:` test alone.
    InRun { matched: bool },
    /// Not evaluated: its class had already matched, through rule `by` (an index).
    ClassMatched { by: usize },
    /// Not evaluated: terminal rule `by` had matched and this rule is not `/always`.
    Stopped { by: usize },
}

impl Outcome {
    /// Whether the rule matched; None when it was not evaluated.
    pub fn matched(&self) -> Option<bool> {
        match self {
            Outcome::Evaluated { matched, .. } | Outcome::InRun { matched } => Some(*matched),
            Outcome::ClassMatched { .. } | Outcome::Stopped { .. } => None,
        }
    }
}

/// A traced evaluation: the classification (exactly what [`Rules::evaluate`] gives for the
/// same facts) and one [`Outcome`] per rule, indexed like [`Rules::rules`].
#[derive(Clone, Debug)]
pub struct Explanation {
    pub classification: Classification,
    pub outcomes: Vec<Outcome>,
    remote: SocketAddr,
    local: SocketAddr,
}

impl Explanation {
    /// The readable reason for rule `i`'s outcome.
    pub fn why(&self, rules: &Rules, i: usize) -> String {
        let line = |j: usize| rules.rules().get(j).map_or(0, |r| r.lineno);
        match self.outcomes.get(i) {
            Some(Outcome::Evaluated { why, .. }) => why.clone(),
            Some(Outcome::InRun { matched }) => match rules.rules().get(i).map(|r| &r.expr) {
                Some(Node::M(m)) => leaf_text(m, *matched, &run_value(m, self.remote, self.local)),
                _ => String::new(),
            },
            Some(Outcome::ClassMatched { by }) => format!(
                "not evaluated: the connection is already in class {} (line {})",
                rules.rules().get(*by).map_or("?", |r| r.class.as_str()),
                line(*by)
            ),
            Some(Outcome::Stopped { by }) => format!(
                "not evaluated: the rule at line {} matched and stopped evaluation (this rule is \
                 not /always)",
                line(*by)
            ),
            None => String::new(),
        }
    }
}

/// Evaluates `rules` for `facts` on the real evaluator, recording every rule's outcome.
pub fn explain(rules: &Rules, facts: &mut dyn Facts) -> Explanation {
    let notes = RefCell::new(Notes::default());
    let mut rec = Recorder::new(rules, &notes);
    let classification = {
        let mut noting = Noting {
            inner: &mut *facts,
            notes: &notes,
        };
        eval::evaluate_traced(rules, &mut noting, &mut rec)
    };
    let outcomes = rec.finish();
    Explanation {
        classification,
        outcomes,
        remote: facts.remote(),
        local: facts.local(),
    }
}

/// One compound node being evaluated: its kind and the texts of the parts evaluated so far.
struct Frame {
    kind: Kind,
    parts: Vec<String>,
}

#[derive(Clone, Copy)]
enum Kind {
    Not,
    Or,
    And,
    Except,
}

/// The tracer behind [`explain`].
pub struct Recorder<'r> {
    rules: &'r Rules,
    notes: &'r RefCell<Notes>,
    outcomes: Vec<Option<Outcome>>,
    stack: Vec<Frame>,
    /// Texts at the rule's top level (one, once the expression is done).
    top: Vec<String>,
    /// Index of the first rule that matched, per class (for ClassMatched).
    by_class: std::collections::HashMap<&'r str, usize>,
    /// The terminal rule that stopped evaluation.
    stopper: Option<usize>,
}

impl<'r> Recorder<'r> {
    fn new(rules: &'r Rules, notes: &'r RefCell<Notes>) -> Recorder<'r> {
        Recorder {
            rules,
            notes,
            outcomes: vec![None; rules.len()],
            stack: Vec::new(),
            top: Vec::new(),
            by_class: std::collections::HashMap::new(),
            stopper: None,
        }
    }

    fn matched(&mut self, i: usize) {
        if let Some(rule) = self.rules.rules().get(i) {
            self.by_class.entry(rule.class.as_str()).or_insert(i);
            if !rule.nonterminal && self.stopper.is_none() {
                self.stopper = Some(i);
            }
        }
    }

    fn push_part(&mut self, text: String) {
        match self.stack.last_mut() {
            Some(frame) => frame.parts.push(text),
            None => self.top.push(text),
        }
    }

    /// Every rule the evaluator never reached (it stops at a terminal match when no rule is
    /// /always) was cut off by the stopper.
    fn finish(self) -> Vec<Outcome> {
        let by = self.stopper.unwrap_or(0);
        self.outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Stopped { by }))
            .collect()
    }
}

impl Tracer for Recorder<'_> {
    fn skip(&mut self, rule: usize, class_done: bool) {
        let class = self.rules.rules().get(rule).map(|r| r.class.as_str());
        let outcome = match class.and_then(|c| self.by_class.get(c)) {
            Some(&by) if class_done => Outcome::ClassMatched { by },
            _ => Outcome::Stopped {
                by: self.stopper.unwrap_or(0),
            },
        };
        if let Some(slot) = self.outcomes.get_mut(rule) {
            *slot = Some(outcome);
        }
    }

    fn rule_start(&mut self, _rule: usize) {
        self.stack.clear();
        self.top.clear();
    }

    fn rule_end(&mut self, rule: usize, hit: bool) {
        let why = cut(std::mem::take(&mut self.top).join("; "));
        if let Some(slot) = self.outcomes.get_mut(rule) {
            *slot = Some(Outcome::Evaluated { matched: hit, why });
        }
        if hit {
            self.matched(rule);
        }
    }

    fn run(&mut self, first: usize, len: usize, hit: Option<usize>) {
        for off in 0..len {
            let outcome = match hit {
                Some(h) if off > h => Outcome::ClassMatched { by: first + h },
                Some(h) => Outcome::InRun { matched: off == h },
                None => Outcome::InRun { matched: false },
            };
            if let Some(slot) = self.outcomes.get_mut(first + off) {
                *slot = Some(outcome);
            }
        }
        if let Some(h) = hit {
            self.matched(first + h);
        }
    }

    fn enter(&mut self, node: &Node) {
        let kind = match node {
            Node::Not(_) => Kind::Not,
            Node::Or(_) => Kind::Or,
            Node::And(_) => Kind::And,
            Node::Except(..) | Node::M(_) => Kind::Except,
        };
        self.stack.push(Frame {
            kind,
            parts: Vec::new(),
        });
    }

    fn leave(&mut self, node: &Node, hit: bool) {
        let Some(mut frame) = self.stack.pop() else {
            return;
        };
        let yes = yes_no(hit);
        // Items short-circuit left unevaluated, said once at the end.
        let total = match node {
            Node::Or(o) => o.items.len(),
            Node::And(v) => v.len(),
            _ => 0,
        };
        let left = total.saturating_sub(frame.parts.len());
        if left > 0 {
            frame.parts.push(format!("{left} more not evaluated"));
        }
        let text = match (frame.kind, frame.parts.as_slice()) {
            (Kind::Not, [x]) => format!("NOT ({x}): {yes}"),
            (Kind::Or | Kind::And, [x]) => x.clone(),
            (Kind::Or, parts) => format!("any of ({}): {yes}", parts.join("; ")),
            (Kind::And, parts) => format!("all of ({}): {yes}", parts.join("; ")),
            (Kind::Except, [a]) => format!("{a}; EXCEPT not evaluated: {yes}"),
            (Kind::Except, [a, b]) => format!("{a}; EXCEPT {b}: {yes}"),
            (_, parts) => format!("({}): {yes}", parts.join("; ")),
        };
        self.push_part(text);
    }

    fn matcher(&mut self, m: &Matcher, hit: bool, cx: &mut Cx<'_>) {
        let value = leaf_value(m, cx, &self.notes.borrow());
        self.push_part(leaf_text(m, hit, &value));
    }
}

fn yes_no(hit: bool) -> &'static str {
    if hit {
        "yes"
    } else {
        "no"
    }
}

/// Cuts a text to [`MAX_WHY`] bytes at a character boundary.
fn cut(mut s: String) -> String {
    if s.len() > MAX_WHY {
        let mut at = MAX_WHY - 3;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
    s
}

/// `MATCHER: yes|no (VALUE)`, the matcher in its canonical form (long address lists
/// shortened).
fn leaf_text(m: &Matcher, hit: bool, value: &str) -> String {
    let name = match m {
        Matcher::Ip { local, specs, .. } if specs.len() > 3 => {
            let first = specs.first().map_or("", String::as_str);
            format!(
                "{} {first} … ({} addresses)",
                if *local { "localip:" } else { "ip:" },
                specs.len()
            )
        }
        _ => m.to_string(),
    };
    let mut out = cut(name);
    let _ = write!(out, ": {}", yes_no(hit));
    if !value.is_empty() {
        let _ = write!(out, " ({value})");
    }
    out
}

/// The value an address rule of a run was tested with (the run needs no other fact).
fn run_value(m: &Matcher, remote: SocketAddr, local: SocketAddr) -> String {
    match m {
        Matcher::Ip { local: true, .. } => format!("local address {}", canonical_ip(local.ip())),
        _ => format!("peer {}", canonical_ip(remote.ip())),
    }
}

/// The fact a matcher decided on, as text, from the answers the evaluator was given (see
/// [`Noting`]). A matcher kind with no arm here is shown with its answer alone.
fn leaf_value(m: &Matcher, cx: &Cx<'_>, notes: &Notes) -> String {
    let unknown = HostInfo {
        status: HnStatus::Unknown,
        claimed: None,
    };
    match m {
        Matcher::All => String::new(),
        Matcher::Ip { local, specs, set } => {
            let addr = canonical_ip(if *local {
                cx.facts.local().ip()
            } else {
                cx.facts.remote().ip()
            });
            let who = if *local { "local address" } else { "peer" };
            if !set.contains(addr) {
                return format!("{who} {addr}");
            }
            let spec = specs.iter().find(|s| {
                parse_addrspec(s)
                    .is_ok_and(|r| crate::addr::AddrSet::from_ranges([r]).contains(addr))
            });
            match spec {
                Some(s) if specs.len() > 1 => format!("{who} {addr} is in {s}"),
                _ => format!("{who} {addr}"),
            }
        }
        Matcher::Identd(_) => match notes.identd.as_ref() {
            Some(Some(u)) if !u.is_empty() => format!("identd says '{}'", u.escape_debug()),
            _ => "no identd answer".to_owned(),
        },
        Matcher::HnStatus { .. } => {
            let info = notes.host.as_ref().unwrap_or(&unknown);
            host_text(info.status, info.claimed.as_deref())
        }
        Matcher::Hostname { claimed, .. } | Matcher::Regex { claimed, .. } => {
            let info = notes.host.as_ref().unwrap_or(&unknown);
            match (claimed, info.verified(), info.claimed.as_deref()) {
                (false, Some(v), _) => format!("verified hostname {v}"),
                (true, _, Some(c)) => format!("claimed hostname {c}"),
                (_, _, _) => format!(
                    "hostname is {}",
                    host_text(info.status, info.claimed.as_deref())
                ),
            }
        }
        Matcher::Class(_) => {
            if cx.classes.is_empty() {
                "no class matched so far".to_owned()
            } else {
                let names: Vec<&str> = cx.classes.iter().map(|c| c.name.as_str()).collect();
                format!("classes so far: {}", names.join(" "))
            }
        }
        Matcher::Forwhn(h) => match notes.forward.get(h) {
            Some(addrs) if !addrs.is_empty() => format!("{h} is {}", list(addrs)),
            _ => format!("{h} has no address"),
        },
        Matcher::Dnsbl { zone, .. } => match notes.dnsbl.get(zone) {
            Some(answers) if !answers.is_empty() => format!("listed: {}", list(answers)),
            _ => "not listed".to_owned(),
        },
        Matcher::AnswersOn(p) => {
            let on = notes.answers_on.get(p).copied().unwrap_or(false);
            format!(
                "port {p} {}",
                if on { "answers" } else { "does not answer" }
            )
        }
        Matcher::Local { .. } => {
            let l = cx.facts.local();
            format!("local {}:{}", canonical_ip(l.ip()), l.port())
        }
        Matcher::FirstTime | Matcher::Time(..) => {
            let seen = notes.seen.unwrap_or(SeenTimes {
                first_secs_ago: 0,
                last_secs_ago: None,
            });
            let first = match m {
                Matcher::Time(TimeKind::StallFor | TimeKind::Waited, _) => {
                    format!("first seen {}s ago", seen.first_secs_ago)
                }
                _ => String::new(),
            };
            let last = match seen.last_secs_ago {
                Some(l) => format!("last seen {l}s ago"),
                None => "never seen before".to_owned(),
            };
            if first.is_empty() {
                last
            } else {
                format!("{first}, {last}")
            }
        }
        Matcher::Trap => match notes.mode {
            Some(Some(mode)) => format!("a {} trap", mode.as_str()),
            _ if notes.trap == Some(true) => "a trap".to_owned(),
            _ => "not a trap connection".to_owned(),
        },
        Matcher::Blocked => String::new(),
        Matcher::Hits { window_secs, .. } => {
            let n = notes.hits.get(window_secs).copied().unwrap_or(0);
            format!("{n} trapped ports within {window_secs}s")
        }
        Matcher::Mode(_) => match notes.mode {
            Some(Some(mode)) => format!("mode {}", mode.as_str()),
            _ => "no sentry mode (a listen connection)".to_owned(),
        },
        // ipfile: and any matcher added later: its answer says it all.
        _ => String::new(),
    }
}

/// The answers the evaluator was given, by question (the last one for each).
#[derive(Default)]
pub struct Notes {
    host: Option<HostInfo>,
    identd: Option<Option<String>>,
    forward: HashMap<String, Vec<IpAddr>>,
    dnsbl: HashMap<String, Vec<IpAddr>>,
    answers_on: HashMap<u16, bool>,
    seen: Option<SeenTimes>,
    trap: Option<bool>,
    hits: HashMap<u64, u32>,
    mode: Option<Option<SentryMode>>,
}

/// A pass-through [`Facts`] that notes every answer for the [`Recorder`]. It must forward
/// EVERY method of [`Facts`], defaulted ones included: one left to its default would answer
/// explain differently from a real connection.
struct Noting<'f, 'n> {
    inner: &'f mut dyn Facts,
    notes: &'n RefCell<Notes>,
}

impl Facts for Noting<'_, '_> {
    fn remote(&self) -> SocketAddr {
        self.inner.remote()
    }
    fn local(&self) -> SocketAddr {
        self.inner.local()
    }
    fn host_info(&mut self) -> HostInfo {
        let v = self.inner.host_info();
        self.notes.borrow_mut().host = Some(v.clone());
        v
    }
    fn identd(&mut self) -> Option<String> {
        let v = self.inner.identd();
        self.notes.borrow_mut().identd = Some(v.clone());
        v
    }
    fn forward_lookup(&mut self, name: &str) -> Vec<IpAddr> {
        let v = self.inner.forward_lookup(name);
        self.notes
            .borrow_mut()
            .forward
            .insert(name.to_owned(), v.clone());
        v
    }
    fn dnsbl(&mut self, zone: &str) -> Vec<IpAddr> {
        let v = self.inner.dnsbl(zone);
        self.notes
            .borrow_mut()
            .dnsbl
            .insert(zone.to_owned(), v.clone());
        v
    }
    fn answers_on(&mut self, port: u16) -> bool {
        let v = self.inner.answers_on(port);
        self.notes.borrow_mut().answers_on.insert(port, v);
        v
    }
    fn seen(&mut self) -> SeenTimes {
        let v = self.inner.seen();
        self.notes.borrow_mut().seen = Some(v);
        v
    }
    fn prefetch(&mut self, lookups: &[Lookup]) {
        self.inner.prefetch(lookups);
    }
    fn trap(&mut self) -> bool {
        let v = self.inner.trap();
        self.notes.borrow_mut().trap = Some(v);
        v
    }
    fn blocked(&mut self) -> bool {
        self.inner.blocked()
    }
    fn trap_hits(&mut self, window_secs: u64) -> u32 {
        let v = self.inner.trap_hits(window_secs);
        self.notes.borrow_mut().hits.insert(window_secs, v);
        v
    }
    fn sentry_mode(&mut self) -> Option<SentryMode> {
        let v = self.inner.sentry_mode();
        self.notes.borrow_mut().mode = Some(v);
        v
    }
    fn in_ipfile(&mut self, name: &str) -> bool {
        self.inner.in_ipfile(name)
    }
    fn over_rate(&mut self, spec: crate::rate::RateSpec) -> bool {
        self.inner.over_rate(spec)
    }
}

/// A hostname status as text: `good (a.example)`, `unknown (no PTR name)`, ...
pub fn host_text(status: HnStatus, claimed: Option<&str>) -> String {
    match (status, claimed) {
        (HnStatus::Unknown, _) | (_, None) => {
            "unknown (no usable PTR name, or the lookup failed)".to_owned()
        }
        (HnStatus::Good, Some(c)) => format!("good ({c} resolves to the peer)"),
        (HnStatus::NoForward, Some(c)) => {
            format!("noforward (PTR name {c} has no address)")
        }
        (HnStatus::AddrMismatch, Some(c)) => {
            format!("addrmismatch (PTR name {c} does not resolve to the peer)")
        }
    }
}

fn list(addrs: &[std::net::IpAddr]) -> String {
    let shown: Vec<String> = addrs.iter().take(8).map(|a| a.to_string()).collect();
    let more = addrs.len().saturating_sub(8);
    if more > 0 {
        format!("{} and {more} more", shown.join(" "))
    } else {
        shown.join(" ")
    }
}
