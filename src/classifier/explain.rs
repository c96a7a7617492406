//! `nannyctl explain`: classify an address as a dry run against the live policy, with a trace
//! of every rule, the decision, and the facts it used.
//!
//! Runs in the classifier, on its own thread (started with the pool, before new threads are
//! forbidden), so an explain waiting for lookups never delays the dispatch thread nor takes
//! an evaluation slot from real connections. The request came from the parent, which
//! validated the control client's shapes (address, local end, ident and hostname newtypes).
//!
//! Same path as a real connection: the rules are evaluated by the one evaluator
//! (`Rules::explain`, which is `Rules::evaluate` with a recording tracer), over the real
//! `ConnFacts` (lookups go to the resolver as usual, with the same deadlines and cache), and the
//! decision is `policy::decide::decide` against the live counts under the conntrack lock. What
//! differs, and why:
//! - nothing is recorded: the history is read with `History::peek` and the `rate:` buckets
//!   with `Rates::peek` (what the next real connection from the address would see), no
//!   counts go up, no trap hit is recorded (an
//!   explain is an ordinary `listen` connection), no verdict is produced, so nothing is
//!   spawned, written or blocked;
//! - a given `--hostname` is used instead of the reverse lookup and taken as VERIFIED (status
//!   `good`, no forward confirmation): the operator asks "what if this peer is this host", and
//!   checking a made-up pair in DNS would mostly answer `addrmismatch`;
//! - a given `--ident` is used instead of identd; without one identd is not asked at all
//!   (there is no connection for the peer's identd to report on), which reads as "no answer".
//!
//! Invariants: every `Explain` gets exactly one `Explained` (from this thread, or at once from
//! the dispatch thread when no policy is loaded yet or too many explains wait); the report is
//! bounded ([`MAX_TRACED_RULES`] rule entries, [`MAX_FACTS`] facts, every text cut), so it
//! fits a frame whatever the rules file's size.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError};

use crossbeam_channel as cb;
use policy::decide;
use policy::explain::{action_text, limit_checks};
use policy::facts::{self as pf, Facts, HostInfo, Lookup, SeenTimes, SentryMode};
use policy::rules::trace::{host_text, Explanation, Outcome};
use privsep::control::{ExplainAsk, ExplainReport, RuleTrace};
use privsep::proto::{ClassName, ClassifierToParent, HostName, IdentUser, ReqId};

use super::compiler::RULES_NAME;
use super::conntrack::IpCounts;
use super::facts::{canonical, ConnFacts};
use super::rates::RateMarks;
use super::{Loaded, Shared};

/// Explains waiting for the explain thread, at most; more are answered at once as refused.
/// The parent bounds control requests far below this.
pub const MAX_QUEUED: usize = 8;
/// Most rule entries in one report; a longer rules file has its runs of alike rules folded.
pub const MAX_TRACED_RULES: usize = 500;
/// Most facts in one report.
pub const MAX_FACTS: usize = 200;
/// Longest rule text, class name or fact value in a report (a `why` has its own cap in
/// `policy::rules::trace`). With the counts above, a report stays far below a frame.
const MAX_TEXT: usize = 480;

/// One explain request.
#[derive(Debug)]
pub struct Job {
    pub req: ReqId,
    pub ask: ExplainAsk,
    pub local: SocketAddr,
    /// The aftermaxthreads class, when every evaluation thread is busy right now (a real
    /// connection would get it without evaluation).
    pub overflow: Option<ClassName>,
}

/// The explain thread's queue.
pub struct Explainer {
    tx: cb::Sender<Box<Job>>,
}

impl Explainer {
    pub fn start(shared: &Arc<Shared>) -> std::io::Result<Explainer> {
        let (tx, rx) = cb::bounded::<Box<Job>>(MAX_QUEUED);
        let shared = Arc::clone(shared);
        std::thread::Builder::new()
            .name("explain".into())
            .spawn(move || {
                // Ends when the dispatcher (the only sender) is dropped.
                while let Ok(job) = rx.recv() {
                    let report = explain(&shared, &job);
                    shared.parent.send(&ClassifierToParent::Explained {
                        req: job.req,
                        report,
                    });
                }
            })?;
        Ok(Explainer { tx })
    }

    /// Queues a job; gives it back if too many wait.
    pub fn submit(&self, job: Box<Job>) -> Result<(), Box<Job>> {
        self.tx.try_send(job).map_err(cb::TrySendError::into_inner)
    }
}

/// The answer to an explain that cannot be evaluated (`why`: no policy yet, too many waiting).
pub fn unanswered(shared: &Shared, job: &Job, why: &str) -> ClassifierToParent {
    let gen = shared.current_policy().map_or(0, |p| p.gen.0);
    ClassifierToParent::Explained {
        req: job.req,
        report: ExplainReport {
            addr: job.ask.addr.to_canonical(),
            local: canonical(job.local),
            gen,
            facts: vec![("not evaluated".to_string(), why.to_string())],
            rules: Vec::new(),
            classes: Vec::new(),
            action_class: None,
            action: format!("none (not evaluated: {why})"),
            admitted: false,
            refusal: Some("not-evaluated".to_string()),
        },
    }
}

/// Classifies `job` as a dry run and reports everything.
pub fn explain(shared: &Shared, job: &Job) -> ExplainReport {
    let remote = SocketAddr::new(job.ask.addr.to_canonical(), 0);
    let local = canonical(job.local);
    let Some(snapshot) = shared.current_policy() else {
        return match unanswered(shared, job, "no policy is loaded") {
            ClassifierToParent::Explained { report, .. } => report,
            _ => empty_report(remote.ip(), local),
        };
    };
    // What charging the rates now would answer, charging nothing.
    let rates = snapshot.rates.as_ref().map(|specs| RateMarks {
        specs: Arc::clone(specs),
        over: shared
            .rates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .peek(specs, remote.ip(), shared.clock.now_nanos()),
    });
    let (ex, mut facts) = {
        let inner = ConnFacts::new(shared, remote, local)
            .with_ipfiles(&snapshot.ipfiles)
            .with_rates(rates.as_ref());
        let mut dry = DryFacts::new(shared, inner, &job.ask);
        let ex = snapshot.rules.explain(&mut dry);
        (ex, dry.into_facts())
    };
    let rules = traces(&snapshot, &ex);
    // As a real verdict (verdict.rs): the decision uses the actions current at decision time.
    let policy = shared.current_policy().unwrap_or(snapshot);
    let (decision, checks) = {
        let table = shared
            .conntrack
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let counts = IpCounts {
            table: &table,
            ip: remote.ip(),
        };
        (
            decide::decide(&policy.actions, &ex.classification, &counts),
            limit_checks(&policy.actions, &ex.classification, &counts),
        )
    };
    if !checks.is_empty() {
        push_fact(&mut facts, "limits".to_string(), checks.join("; "));
    }
    if let Some(class) = &job.overflow {
        push_fact(
            &mut facts,
            "evaluation threads".to_string(),
            format!(
                "all busy right now: a real connection would be put in class {} without \
                 evaluation (aftermaxthreads)",
                class.as_str()
            ),
        );
    }
    let classes = ex
        .classification
        .names()
        .map(|n| cut(n.to_string()))
        .collect();
    let action_class = decision
        .action_class
        .and_then(|i| policy.actions.get(i))
        .map(|c| cut(c.name.clone()));
    ExplainReport {
        addr: remote.ip(),
        local,
        gen: policy.gen.0,
        facts,
        rules,
        classes,
        action_class,
        action: cut(action_text(&policy.actions, &decision)),
        admitted: decision.refusal.is_none(),
        refusal: decision.refusal.map(|r| r.as_str().to_string()),
    }
}

fn empty_report(addr: IpAddr, local: SocketAddr) -> ExplainReport {
    ExplainReport {
        addr,
        local,
        gen: 0,
        facts: Vec::new(),
        rules: Vec::new(),
        classes: Vec::new(),
        action_class: None,
        action: String::new(),
        admitted: false,
        refusal: None,
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut at = MAX_TEXT - 3;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
    s
}

fn push_fact(facts: &mut Vec<(String, String)>, name: String, value: String) {
    if facts.len() < MAX_FACTS && !facts.iter().any(|(n, _)| *n == name) {
        facts.push((cut(name), cut(value)));
    }
}

/// The rule entries: one per rule, or, for a rules file longer than [`MAX_TRACED_RULES`],
/// consecutive rules of one class with the same unmatched outcome folded into one entry
/// (a blocklist of 100,000 lines becomes a handful).
fn traces(policy: &Loaded, ex: &Explanation) -> Vec<RuleTrace> {
    let all = policy.rules.rules();
    let fold = all.len() > MAX_TRACED_RULES;
    // (first, last) index of each entry.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for (i, rule) in all.iter().enumerate() {
        let out = ex.outcomes.get(i);
        let alike = |j: usize| {
            let (Some(prev), Some(o)) = (all.get(j), ex.outcomes.get(j)) else {
                return false;
            };
            prev.class == rule.class
                && o.matched() != Some(true)
                && out.is_some_and(|out| out.matched() == o.matched() && same_kind(out, o))
        };
        match groups.last_mut() {
            Some((_, last)) if fold && alike(*last) => *last = i,
            _ => groups.push((i, i)),
        }
    }
    // Room for the closing "N more" entry only when it is needed.
    let shown = if groups.len() <= MAX_TRACED_RULES {
        groups.len()
    } else {
        MAX_TRACED_RULES - 1
    };
    let wanted: HashSet<u32> = groups
        .iter()
        .take(shown)
        .filter_map(|(f, _)| all.get(*f).map(|r| r.lineno))
        .collect();
    let texts = rule_texts(&policy.rules_text, &wanted);
    let mut out: Vec<RuleTrace> = groups
        .iter()
        .take(shown)
        .filter_map(|&(first, last)| {
            let rule = all.get(first)?;
            let end = all.get(last)?;
            let text = texts
                .get(&rule.lineno)
                .cloned()
                .unwrap_or_else(|| rule.to_string());
            let n = last - first;
            let (at, text, why) = if n == 0 {
                (
                    format!("{RULES_NAME}:{}", rule.lineno),
                    text,
                    ex.why(&policy.rules, first),
                )
            } else {
                (
                    format!("{RULES_NAME}:{}-{}", rule.lineno, end.lineno),
                    format!("{text} (and {n} more rules of class {})", rule.class),
                    format!(
                        "{} (and the same for the {n} rules after it)",
                        ex.why(&policy.rules, first)
                    ),
                )
            };
            Some(RuleTrace {
                at,
                class: cut(rule.class.clone()),
                rule: cut(text),
                matched: ex.outcomes.get(first).and_then(Outcome::matched),
                why: cut(why),
            })
        })
        .collect();
    if groups.len() > shown {
        let hidden: usize = groups.iter().skip(shown).map(|(f, l)| l - f + 1).sum();
        out.push(RuleTrace {
            at: RULES_NAME.to_string(),
            class: String::new(),
            rule: String::new(),
            matched: None,
            why: format!("{hidden} more rules not shown (report size limit)"),
        });
    }
    out
}

fn same_kind(a: &Outcome, b: &Outcome) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// The text of each logical line starting at one of `lines`, as written.
fn rule_texts(text: &str, lines: &HashSet<u32>) -> HashMap<u32, String> {
    let src = policy::SourceFile::new(RULES_NAME, text);
    src.logical_lines()
        .map(|ls| {
            ls.into_iter()
                .filter(|l| lines.contains(&l.lineno))
                .map(|l| (l.lineno, l.text))
                .collect()
        })
        .unwrap_or_default()
}

/// A real connection's facts for a dry run: lookups through `ConnFacts`, the given facts
/// instead of lookups, the history only read; and every fact used, noted for the report.
struct DryFacts<'a> {
    shared: &'a Shared,
    inner: ConnFacts<'a>,
    given_host: Option<HostName>,
    given_ident: Option<IdentUser>,
    seen: Option<SeenTimes>,
    facts: Vec<(String, String)>,
}

impl<'a> DryFacts<'a> {
    fn new(shared: &'a Shared, inner: ConnFacts<'a>, ask: &ExplainAsk) -> DryFacts<'a> {
        DryFacts {
            shared,
            inner,
            given_host: ask.hostname.clone(),
            given_ident: ask.ident.clone(),
            seen: None,
            facts: Vec::new(),
        }
    }

    fn into_facts(self) -> Vec<(String, String)> {
        self.facts
    }

    fn note(&mut self, name: impl Into<String>, value: impl Into<String>) {
        push_fact(&mut self.facts, name.into(), value.into());
    }

    /// " (no answer before the deadline: timed out)" when `lookup` got no answer.
    fn timed_out(&self, lookup: &Lookup) -> &'static str {
        if self.inner.answered(lookup) == Some(false) {
            " (no answer before the deadline: treated as no answer)"
        } else {
            ""
        }
    }
}

fn addrs_text(addrs: &[IpAddr], none: &str) -> String {
    if addrs.is_empty() {
        return none.to_string();
    }
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl Facts for DryFacts<'_> {
    fn remote(&self) -> SocketAddr {
        self.inner.remote()
    }

    fn local(&self) -> SocketAddr {
        self.inner.local()
    }

    fn host_info(&mut self) -> HostInfo {
        if let Some(name) = &self.given_host {
            let name = name.as_str().to_string();
            self.note("hostname", format!("{name} (given; taken as verified)"));
            self.note("hnstatus", "good (given, not looked up)");
            return HostInfo {
                status: pf::HnStatus::Good,
                claimed: Some(name),
            };
        }
        let info = self.inner.host_info();
        let late = self.timed_out(&Lookup::Host);
        let peer = self.inner.remote().ip();
        let claimed = info.claimed.clone().unwrap_or_default();
        self.note(
            "hnstatus",
            format!("{}{late}", host_text(info.status, info.claimed.as_deref())),
        );
        self.note("hostname", info.verified().unwrap_or("none (not verified)"));
        if info.claimed.is_some() {
            self.note("claimed hostname", claimed.clone());
        }
        let check = match info.status {
            pf::HnStatus::Good => format!("{claimed} resolves to {peer}"),
            pf::HnStatus::NoForward => format!("{claimed} has no address"),
            pf::HnStatus::AddrMismatch => format!("{claimed} does not resolve to {peer}"),
            pf::HnStatus::Unknown => "not made (no PTR name)".to_string(),
        };
        self.note("forward name check", check);
        info
    }

    fn identd(&mut self) -> Option<String> {
        match &self.given_ident {
            Some(user) => {
                let user = user.as_str().to_string();
                self.note("identd", format!("{user} (given)"));
                Some(user)
            }
            None => {
                self.note(
                    "identd",
                    "no answer: not asked (an explain has no connection for the peer's identd \
                     to report on; give --ident)",
                );
                None
            }
        }
    }

    fn forward_lookup(&mut self, name: &str) -> Vec<IpAddr> {
        let addrs = self.inner.forward_lookup(name);
        let late = self.timed_out(&Lookup::Forward(name.to_string()));
        let text = addrs_text(&addrs, "no address");
        self.note(format!("forwhn {name}"), format!("{text}{late}"));
        addrs
    }

    fn dnsbl(&mut self, zone: &str) -> Vec<IpAddr> {
        let answers = self.inner.dnsbl(zone);
        let late = self.timed_out(&Lookup::Dnsbl(zone.to_string()));
        let text = addrs_text(&answers, "not listed");
        self.note(format!("dnsbl {zone}"), format!("{text}{late}"));
        answers
    }

    fn answers_on(&mut self, port: u16) -> bool {
        let on = self.inner.answers_on(port);
        let late = self.timed_out(&Lookup::AnswersOn(port));
        self.note(format!("answerson {port}"), format!("{}{late}", yes_no(on)));
        on
    }

    fn seen(&mut self) -> SeenTimes {
        if let Some(times) = self.seen {
            return times;
        }
        let now = self.shared.clock.now_secs();
        let ip = self.inner.remote().ip();
        let times = self
            .shared
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .peek(ip, now);
        self.seen = Some(times);
        let text = match times.last_secs_ago {
            None => "never seen (firsttime); this explain is not recorded".to_string(),
            Some(last) => format!(
                "first seen {}s ago, last seen {last}s ago; this explain is not recorded",
                times.first_secs_ago
            ),
        };
        self.note("history", text);
        times
    }

    fn prefetch(&mut self, lookups: &[Lookup]) {
        // Given facts and identd are never looked up here (see the header).
        let wanted: Vec<Lookup> = lookups
            .iter()
            .filter(|l| match l {
                Lookup::Identd => false,
                Lookup::Host => self.given_host.is_none(),
                _ => true,
            })
            .cloned()
            .collect();
        self.inner.prefetch(&wanted);
    }

    fn trap(&mut self) -> bool {
        let hit = self.inner.trap();
        self.note(
            "trap",
            format!("{} (an explain is a listen connection)", yes_no(hit)),
        );
        hit
    }

    fn blocked(&mut self) -> bool {
        let b = self.inner.blocked();
        self.note("blocked", yes_no(b));
        b
    }

    fn trap_hits(&mut self, window_secs: u64) -> u32 {
        let n = self.inner.trap_hits(window_secs);
        self.note(
            format!("trap hits within {window_secs}s"),
            format!("{n} distinct ports"),
        );
        n
    }

    fn sentry_mode(&mut self) -> Option<SentryMode> {
        let mode = self.inner.sentry_mode();
        self.note(
            "mode",
            mode.map_or("none (a listen connection)", |m| m.as_str()),
        );
        mode
    }

    fn in_ipfile(&mut self, name: &str) -> bool {
        let inside = self.inner.in_ipfile(name);
        self.note(format!("ipfile {name}"), yes_no(inside));
        inside
    }

    fn over_rate(&mut self, spec: policy::rate::RateSpec) -> bool {
        let over = self.inner.over_rate(spec);
        self.note(
            format!("rate {spec}"),
            format!(
                "{} (this explain is not charged)",
                if over { "over" } else { "within" }
            ),
        );
        over
    }
}
