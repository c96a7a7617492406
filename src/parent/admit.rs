//! Admission of everything the classifier sends: `ClassifierToParent` in, [`Admitted`] out.
//!
//! Runs in the parent (root). Every field was decoded from the classifier's channel and is
//! treated as possibly forged: the classifier parses untrusted DNS and identd data and could be
//! compromised. The parent acts only on [`Admitted`] values, and [`Verdict`] can be built only
//! here, so spawn and message code cannot act on a verdict that skipped these checks.
//!
//! A verdict only names things in the parent's own tables: a pending connection, a generation
//! whose actions the parent still keeps, a class index in that generation, a disposition that
//! class actually has. Facts are re-checked ("check here, too, in case the child got
//! corrupted"). Any failure is a [`Violation`]: the caller logs it at LOG_CRIT, kills the
//! classifier, closes every connection it had pending and restarts it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use foldhash::{HashSet, HashSetExt};

use policy::actions::Actions;
use policy::facts::{Classification, HnStatus, HostInfo, MatchedClass, SeenTimes, GLOBAL};
use privsep::proto::{self, BuildId, ClassifierToParent, ConnId, Gen, LogLevel, MAX_LOG_LINE};

use super::classhost::HostTable;
use super::reload::LoadedActions;
use super::status::ClassifierStats;

/// One generation of policy as the parent keeps it: its own parsed actions (None when the
/// actions file is dropped by onfileerror drop, which refuses every run and msg) and the set of
/// class names its rules can produce.
#[derive(Debug)]
pub struct GenTable {
    pub gen: Gen,
    pub actions: Option<Arc<Actions>>,
    /// What the actions' classes need from this host (users, directories, msgfile bytes),
    /// resolved when the file was loaded.
    pub host: Option<Arc<HostTable>>,
    /// Every class the rules of this generation can produce, plus GLOBAL and the
    /// aftermaxthreads class.
    pub classes: HashSet<String>,
}

impl GenTable {
    pub fn new(
        gen: Gen,
        actions: Option<LoadedActions>,
        rule_classes: Vec<String>,
        aftermax: Option<&str>,
    ) -> GenTable {
        let (actions, host) = match actions {
            Some(a) => (Some(a.actions), Some(a.host)),
            None => (None, None),
        };
        let mut classes: HashSet<String> = rule_classes.into_iter().collect();
        classes.insert(GLOBAL.to_owned());
        if let Some(a) = aftermax {
            classes.insert(a.to_owned());
        }
        GenTable {
            gen,
            actions,
            host,
            classes,
        }
    }
}

/// Where the parent keeps what admission checks against; built by the caller for each message.
pub struct Ctx<'a, P: Pending> {
    pub build: &'a BuildId,
    /// Whether this classifier instance already sent its Hello.
    pub hello_seen: bool,
    /// The first ConnId never handed out: a verdict at or above it names no connection at all.
    pub next_conn: ConnId,
    pub pending: &'a P,
    /// The action tables still kept, by generation.
    pub tables: &'a BTreeMap<Gen, Arc<GenTable>>,
    /// The newest generation sent to this classifier instance.
    pub latest_sent: Gen,
    /// The generation this instance was started with (its first Policy).
    pub first_sent: Gen,
    /// The newest generation it acknowledged with PolicyLoaded.
    pub acked: Option<Gen>,
}

/// What admission needs to know about pending connections.
pub trait Pending {
    /// For a connection waiting for its verdict: the oldest generation a verdict for it may
    /// name (the one the classifier had acknowledged when the connection was accepted).
    fn min_gen(&self, conn: ConnId) -> Option<Gen>;
}

impl Pending for HashMap<ConnId, Gen> {
    fn min_gen(&self, conn: ConnId) -> Option<Gen> {
        self.get(&conn).copied()
    }
}

/// A message that passed admission.
#[derive(Debug)]
pub enum Admitted {
    Hello,
    PolicyLoaded(Gen),
    Verdict(Verdict),
    /// A log line from the classifier: level, verbosity needed, raw text (the caller escapes it
    /// with `log::worker_line`).
    Log {
        level: LogLevel,
        verbosity: u8,
        text: String,
    },
    Status(ClassifierStats),
    /// The answers to control requests; the parent matches `req` to its outstanding requests.
    Explained(proto::ReqId, Box<proto::ExplainReport>),
    Metrics(proto::ReqId, Vec<proto::LookupMetrics>),
}

/// A verdict that passed every check. Fields are private: only [`admit`] builds one.
#[derive(Debug)]
pub struct Verdict {
    conn: ConnId,
    table: Arc<GenTable>,
    decision: policy::decide::Decision,
    classification: Classification,
    host: Option<HostInfo>,
    identd: Option<String>,
    seen: Option<SeenTimes>,
}

impl Verdict {
    pub fn conn(&self) -> ConnId {
        self.conn
    }
    pub fn gen(&self) -> Gen {
        self.table.gen
    }
    /// The parent's own actions for the verdict's generation (Some whenever the disposition is
    /// not Close).
    pub fn actions(&self) -> Option<&Arc<Actions>> {
        self.table.actions.as_ref()
    }
    /// The host-resolved parts (sandboxes, msgfile bytes) of the verdict's generation.
    pub fn host_table(&self) -> Option<&HostTable> {
        self.table.host.as_deref()
    }
    pub fn decision(&self) -> &policy::decide::Decision {
        &self.decision
    }
    pub fn classification(&self) -> &Classification {
        &self.classification
    }
    pub fn host(&self) -> Option<&HostInfo> {
        self.host.as_ref()
    }
    pub fn identd(&self) -> Option<&str> {
        self.identd.as_deref()
    }
    pub fn seen(&self) -> Option<SeenTimes> {
        self.seen
    }
    /// The name of the action class, from the parent's table.
    pub fn action_class_name(&self) -> Option<&str> {
        let idx = self.decision.action_class?;
        Some(self.table.actions.as_ref()?.get(idx)?.name.as_str())
    }
    /// The label of the action class's matching rule, if it had one.
    pub fn label(&self) -> Option<&str> {
        let name = self.action_class_name()?;
        self.classification.get(name)?.label.as_deref()
    }
}

/// Why a message was refused: the variant and the check that failed, for the LOG_CRIT line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub variant: &'static str,
    pub check: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} refused: {}", self.variant, self.check)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// `conn=N` in a refusal's detail, formatted only when something is refused.
#[derive(Clone, Copy, Debug)]
struct Cid(ConnId);

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn={}", self.0 .0)
    }
}

impl From<Cid> for String {
    fn from(cid: Cid) -> String {
        cid.to_string()
    }
}

fn refuse(variant: &'static str, check: &'static str, detail: impl Into<String>) -> Violation {
    Violation {
        variant,
        check,
        detail: detail.into(),
    }
}

/// A log record from either worker: refused when longer than [`MAX_LOG_LINE`] (a worker that
/// sends more is not logging, it is flooding or corrupted).
fn admit_log(rec: proto::LogRecord) -> Result<proto::LogRecord, Violation> {
    if rec.text.len() > MAX_LOG_LINE {
        return Err(refuse(
            "Log",
            "log line longer than MAX_LOG_LINE",
            format!("{} bytes", rec.text.len()),
        ));
    }
    Ok(rec)
}

/// Checks one classifier message against the parent's state.
pub fn admit<P: Pending>(ctx: &Ctx<'_, P>, msg: ClassifierToParent) -> Result<Admitted, Violation> {
    match msg {
        ClassifierToParent::Hello { build } => {
            if ctx.hello_seen {
                return Err(refuse("Hello", "second Hello", ""));
            }
            if &build != ctx.build {
                return Err(refuse(
                    "Hello",
                    "build id differs from the parent's",
                    format!("{} != {}", log_text(&build.0), log_text(&ctx.build.0)),
                ));
            }
            Ok(Admitted::Hello)
        }
        other if !ctx.hello_seen => Err(refuse(variant_name(&other), "message before Hello", "")),
        ClassifierToParent::PolicyLoaded { gen } => {
            if gen > ctx.latest_sent || gen < ctx.first_sent {
                return Err(refuse(
                    "PolicyLoaded",
                    "generation never sent to this classifier",
                    format!("gen={}", gen.0),
                ));
            }
            if ctx.acked.is_some_and(|a| gen <= a) {
                return Err(refuse(
                    "PolicyLoaded",
                    "generation acknowledged out of order",
                    format!("gen={}", gen.0),
                ));
            }
            Ok(Admitted::PolicyLoaded(gen))
        }
        ClassifierToParent::Log(rec) => {
            let rec = admit_log(rec)?;
            Ok(Admitted::Log {
                level: rec.level,
                verbosity: rec.verbosity,
                text: rec.text,
            })
        }
        ClassifierToParent::Status {
            evaluations,
            eval_micros_total,
            class_counts,
            history_entries,
        } => Ok(Admitted::Status(ClassifierStats {
            evaluations,
            eval_micros_total,
            class_counts: class_counts
                .into_iter()
                .map(|(c, n)| (String::from(c), n))
                .collect(),
            history_entries,
        })),
        ClassifierToParent::Verdict {
            conn,
            gen,
            decision,
            facts,
        } => admit_verdict(ctx, conn, gen, decision, facts).map(Admitted::Verdict),
        ClassifierToParent::Explained { req, report } => {
            Ok(Admitted::Explained(req, Box::new(report)))
        }
        ClassifierToParent::Metrics { req, lookups } => Ok(Admitted::Metrics(req, lookups)),
    }
}

/// A resolver message that passed admission.
#[derive(Debug)]
pub enum AdmittedResolver {
    Hello,
    Log {
        level: LogLevel,
        verbosity: u8,
        text: String,
    },
}

/// Checks one resolver message: Hello exactly once with the parent's build, then only Log.
pub fn admit_resolver(
    build: &BuildId,
    hello_seen: bool,
    msg: proto::ResolverToParent,
) -> Result<AdmittedResolver, Violation> {
    match msg {
        proto::ResolverToParent::Hello { build: b } => {
            if hello_seen {
                return Err(refuse("Hello", "second Hello", ""));
            }
            if &b != build {
                return Err(refuse(
                    "Hello",
                    "build id differs from the parent's",
                    format!("{} != {}", log_text(&b.0), log_text(&build.0)),
                ));
            }
            Ok(AdmittedResolver::Hello)
        }
        proto::ResolverToParent::Log(_) if !hello_seen => {
            Err(refuse("Log", "message before Hello", ""))
        }
        proto::ResolverToParent::Log(rec) => {
            let rec = admit_log(rec)?;
            Ok(AdmittedResolver::Log {
                level: rec.level,
                verbosity: rec.verbosity,
                text: rec.text,
            })
        }
    }
}

fn variant_name(m: &ClassifierToParent) -> &'static str {
    match m {
        ClassifierToParent::Hello { .. } => "Hello",
        ClassifierToParent::PolicyLoaded { .. } => "PolicyLoaded",
        ClassifierToParent::Verdict { .. } => "Verdict",
        ClassifierToParent::Log(_) => "Log",
        ClassifierToParent::Status { .. } => "Status",
        ClassifierToParent::Explained { .. } => "Explained",
        ClassifierToParent::Metrics { .. } => "Metrics",
    }
}

fn log_text(s: &str) -> String {
    crate::log::escape(crate::log::cap(s, 64)).into_owned()
}

const V: &str = "Verdict";

fn admit_verdict<P: Pending>(
    ctx: &Ctx<'_, P>,
    conn: ConnId,
    gen: Gen,
    d: proto::Decision,
    facts: proto::VerdictFacts,
) -> Result<Verdict, Violation> {
    use proto::Disposition as D;
    let cid = Cid(conn);

    // The connection: exactly one verdict per accepted connection.
    let Some(min_gen) = ctx.pending.min_gen(conn) else {
        return Err(if conn >= ctx.next_conn {
            refuse(V, "connection never accepted", cid)
        } else {
            refuse(V, "connection not pending (already decided or closed)", cid)
        });
    };

    // The generation: one whose tables the parent still has and that could apply.
    if gen > ctx.latest_sent {
        return Err(refuse(
            V,
            "generation never sent",
            format!("{cid} gen={}", gen.0),
        ));
    }
    if gen < min_gen {
        return Err(refuse(
            V,
            "generation older than the connection",
            format!("{cid} gen={} oldest={}", gen.0, min_gen.0),
        ));
    }
    let Some(table) = ctx.tables.get(&gen) else {
        return Err(refuse(
            V,
            "stale generation (tables discarded)",
            format!("{cid} gen={}", gen.0),
        ));
    };

    // Facts, re-validated.
    let classification = check_classes(table, &facts.classes, cid)?;
    let host = match facts.host {
        None => None,
        Some(h) => Some(check_host(h, cid)?),
    };

    // The decision must name only what the table has.
    let n = table.actions.as_ref().map_or(0, |a| a.len());
    let class = match d.action_class {
        None => None,
        Some(id) => {
            let ac = table.actions.as_ref().and_then(|a| {
                usize::try_from(id)
                    .ok()
                    .filter(|i| *i < n)
                    .and_then(|_| a.get(id))
            });
            let Some(ac) = ac else {
                return Err(refuse(
                    V,
                    "action class out of range",
                    format!("{cid} class={id} of {n}"),
                ));
            };
            if classification.get(&ac.name).is_none() {
                return Err(refuse(V, "action class not among the matched classes", cid));
            }
            Some(ac)
        }
    };
    match (d.disposition, d.refusal.is_some()) {
        (D::Run | D::Msg, true) => {
            return Err(refuse(V, "run or msg for a refused connection", cid));
        }
        (D::FailRun | D::FailMsg, false) => {
            return Err(refuse(V, "failrun or failmsg without a refusal", cid));
        }
        _ => {}
    }
    let refusal = d.refusal;
    let has = |what: D| -> bool {
        let Some(ac) = class else { return false };
        match what {
            D::Run => ac.run.is_some(),
            D::Msg => ac.has_msg(),
            D::FailRun => ac.failrun.is_some(),
            D::FailMsg => match (table.actions.as_deref(), refusal) {
                (Some(actions), Some(r)) => {
                    policy::decide::failmsg_source(actions, ac, r).is_some()
                }
                _ => false,
            },
            D::Close => true,
        }
    };
    if d.disposition != D::Close && !has(d.disposition) {
        return Err(refuse(
            V,
            "disposition the action class does not have",
            format!("{cid} disposition={:?}", d.disposition),
        ));
    }
    if d.counted && !matches!(d.disposition, D::Run | D::FailRun) {
        return Err(refuse(V, "counted connection that runs nothing", cid));
    }
    if class.is_none() && d.log {
        return Err(refuse(V, "log requested without an action class", cid));
    }
    let mut records = Vec::with_capacity(d.records.len());
    let mut seen_rec = HashSet::new();
    for r in &d.records {
        let rc = table.actions.as_ref().and_then(|a| a.get(*r));
        let Some(rc) = rc.filter(|_| usize::try_from(*r).is_ok_and(|i| i < n)) else {
            return Err(refuse(
                V,
                "record class out of range",
                format!("{cid} class={r}"),
            ));
        };
        if rc.record.is_none() || classification.get(&rc.name).is_none() || !seen_rec.insert(*r) {
            return Err(refuse(
                V,
                "record for a class without record, unmatched or repeated",
                cid,
            ));
        }
        records.push(*r);
    }
    // The decision as admitted; its records are the checked list, in the order sent.
    let decision = proto::Decision { records, ..d };
    Ok(Verdict {
        conn,
        table: Arc::clone(table),
        decision,
        classification,
        host,
        identd: facts.identd.map(String::from),
        seen: facts.seen,
    })
}

/// Up to this many matched classes, duplicates are found by comparison instead of a set.
const FEW_CLASSES: usize = 8;

fn check_classes(
    table: &GenTable,
    classes: &[proto::MatchedClassFact],
    cid: Cid,
) -> Result<Classification, Violation> {
    if classes.len() > table.classes.len() {
        return Err(refuse(V, "more matched classes than the rules have", cid));
    }
    // A handful of classes is the rule: comparing with those already taken beats building a
    // set; the set is for the long lists (bounded by the table's size, checked above).
    let mut seen = (classes.len() > FEW_CLASSES).then(|| HashSet::with_capacity(classes.len()));
    let mut out: Vec<MatchedClass> = Vec::with_capacity(classes.len());
    for c in classes {
        let name = c.name.as_str();
        if !table.classes.contains(name) {
            return Err(refuse(
                V,
                "class the current rules cannot produce",
                format!("{cid} class={}", log_text(name)),
            ));
        }
        let twice = match &mut seen {
            Some(seen) => !seen.insert(name),
            None => out.iter().any(|m| m.name == name),
        };
        if twice {
            return Err(refuse(V, "class matched twice", cid));
        }
        out.push(MatchedClass {
            name: name.to_owned(),
            lineno: c.lineno,
            label: c.label.as_ref().map(|l| l.as_str().to_owned()),
        });
    }
    if let Some(last) = out.last() {
        if last.name != GLOBAL {
            return Err(refuse(V, "GLOBAL missing or not last", cid));
        }
    }
    Ok(Classification { classes: out })
}

fn check_host(h: proto::HostFacts, cid: Cid) -> Result<HostInfo, Violation> {
    let status = h.status;
    if (status == HnStatus::Unknown) != h.claimed.is_none() {
        return Err(refuse(
            V,
            "claimed hostname inconsistent with hnstatus",
            cid,
        ));
    }
    Ok(HostInfo {
        status,
        claimed: h.claimed.map(String::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use privsep::proto::{
        ClassName, Decision, Disposition, HostFacts, HostName, LogRecord, MatchedClassFact,
        Refusal, VerdictFacts,
    };

    const ACTIONS: &str = "\
local: run /bin/echo hi %(ip)s : record seen %(ip)s
remote: msg go away : ipmax 2 : failmsg too many
quiet: drop
limited: run /bin/true : failrun /bin/false
";
    const RULE_CLASSES: &[&str] = &["local", "remote", "quiet", "limited", "other"];

    struct World {
        build: BuildId,
        pending: HashMap<ConnId, Gen>,
        tables: BTreeMap<Gen, Arc<GenTable>>,
    }

    fn world() -> World {
        let parsed = policy::actions::parse_actions("actions", ACTIONS);
        assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
        let actions = Arc::new(parsed.value.expect("actions"));
        let mut tables = BTreeMap::new();
        for g in [3, 4] {
            tables.insert(
                Gen(g),
                Arc::new(GenTable::new(
                    Gen(g),
                    Some(LoadedActions {
                        actions: Arc::clone(&actions),
                        host: Arc::default(),
                    }),
                    RULE_CLASSES.iter().map(|s| s.to_string()).collect(),
                    Some("overflow"),
                )),
            );
        }
        let mut pending = HashMap::new();
        pending.insert(ConnId(10), Gen(3));
        pending.insert(ConnId(11), Gen(4));
        World {
            build: BuildId("build-1".into()),
            pending,
            tables,
        }
    }

    fn ctx(w: &World) -> Ctx<'_, HashMap<ConnId, Gen>> {
        Ctx {
            build: &w.build,
            hello_seen: true,
            next_conn: ConnId(20),
            pending: &w.pending,
            tables: &w.tables,
            latest_sent: Gen(4),
            first_sent: Gen(3),
            acked: Some(Gen(3)),
        }
    }

    fn id(w: &World, class: &str) -> u32 {
        let a = w.tables[&Gen(4)].actions.as_ref().unwrap();
        a.index_of(class).unwrap()
    }

    fn classes(names: &[&str]) -> Vec<MatchedClassFact> {
        names
            .iter()
            .map(|n| MatchedClassFact {
                name: ClassName::try_from(n.to_string()).unwrap(),
                lineno: 1,
                label: None,
            })
            .collect()
    }

    /// A good Run verdict for conn 10 under gen 3 in class `local`.
    fn good(w: &World) -> ClassifierToParent {
        ClassifierToParent::Verdict {
            conn: ConnId(10),
            gen: Gen(3),
            decision: Decision {
                action_class: Some(id(w, "local")),
                disposition: Disposition::Run,
                refusal: None,
                counted: true,
                log: false,
                records: vec![id(w, "local")],
            },
            facts: VerdictFacts {
                classes: classes(&["local", "GLOBAL"]),
                host: Some(HostFacts {
                    status: proto::HnStatus::Good,
                    claimed: Some(HostName::try_from("a.example".to_string()).unwrap()),
                }),
                identd: None,
                seen: None,
            },
        }
    }

    /// The good verdict turned into an uncounted `msg` for the class `remote`.
    fn remote_msg(w: &World) -> ClassifierToParent {
        with(w, |_, _, d, f| {
            d.action_class = Some(id(w, "remote"));
            d.disposition = Disposition::Msg;
            d.counted = false;
            d.records.clear();
            f.classes = classes(&["remote", "GLOBAL"]);
        })
    }

    fn with(
        w: &World,
        f: impl FnOnce(&mut ConnId, &mut Gen, &mut Decision, &mut VerdictFacts),
    ) -> ClassifierToParent {
        let ClassifierToParent::Verdict {
            mut conn,
            mut gen,
            mut decision,
            mut facts,
        } = good(w)
        else {
            unreachable!()
        };
        f(&mut conn, &mut gen, &mut decision, &mut facts);
        ClassifierToParent::Verdict {
            conn,
            gen,
            decision,
            facts,
        }
    }

    #[test]
    fn many_matched_classes_are_checked_for_repeats_too() {
        // More classes than FEW_CLASSES: the set path.
        let names: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
        let table = GenTable::new(Gen(1), None, names.clone(), None);
        let mut distinct: Vec<&str> = names.iter().map(String::as_str).take(10).collect();
        distinct.push(GLOBAL);
        assert!(distinct.len() > FEW_CLASSES);
        let got = check_classes(&table, &classes(&distinct), Cid(ConnId(1))).expect("distinct");
        assert_eq!(got.classes.len(), 11);
        let mut repeated = distinct.clone();
        repeated[9] = "c2";
        let err = check_classes(&table, &classes(&repeated), Cid(ConnId(1))).unwrap_err();
        assert_eq!(err.check, "class matched twice");
        // And the comparison path, below the threshold.
        let err =
            check_classes(&table, &classes(&["c1", "c1", GLOBAL]), Cid(ConnId(1))).unwrap_err();
        assert_eq!(err.check, "class matched twice");
    }

    #[test]
    fn good_verdicts_pass() {
        let w = world();
        let c = ctx(&w);
        let Ok(Admitted::Verdict(v)) = admit(&c, good(&w)) else {
            panic!("good verdict refused: {:?}", admit(&c, good(&w)));
        };
        assert_eq!(v.conn(), ConnId(10));
        assert_eq!(v.action_class_name(), Some("local"));
        assert_eq!(v.host().and_then(|h| h.verified()), Some("a.example"));
        // msg, failmsg (own and default), close, aftermaxthreads class, newer gen for conn 10.
        let rows = vec![
            remote_msg(&w),
            with(&w, |_, g, d, f| {
                *g = Gen(4);
                d.action_class = Some(id(&w, "remote"));
                d.disposition = Disposition::FailMsg;
                d.refusal = Some(Refusal::IpMax);
                d.counted = false;
                d.records.clear();
                f.classes = classes(&["remote", "GLOBAL"]);
            }),
            with(&w, |_, _, d, f| {
                d.action_class = Some(id(&w, "quiet"));
                d.disposition = Disposition::Close;
                d.counted = false;
                d.records.clear();
                f.classes = classes(&["quiet", "overflow", "GLOBAL"]);
            }),
            with(&w, |_, _, d, f| {
                d.action_class = None;
                d.disposition = Disposition::Close;
                d.counted = false;
                d.records.clear();
                f.classes = vec![];
                f.host = None;
            }),
            with(&w, |_, _, d, f| {
                d.action_class = Some(id(&w, "limited"));
                d.disposition = Disposition::FailRun;
                d.refusal = Some(Refusal::Reject);
                d.records.clear();
                f.classes = classes(&["limited", "GLOBAL"]);
            }),
        ];
        for (i, m) in rows.into_iter().enumerate() {
            assert!(matches!(admit(&c, m), Ok(Admitted::Verdict(_))), "row {i}");
        }
    }

    /// One row per refusal: (label, message, expected check).
    #[test]
    fn refusals() {
        let w = world();
        let hello = |b: &str| ClassifierToParent::Hello {
            build: BuildId(b.into()),
        };
        let log = |n: usize| {
            ClassifierToParent::Log(LogRecord {
                level: LogLevel::Info,
                verbosity: 0,
                text: "x".repeat(n),
            })
        };
        let mut rows: Vec<(&str, ClassifierToParent, &str)> = vec![
            ("second hello", hello("build-1"), "second Hello"),
            (
                "policy loaded from the future",
                ClassifierToParent::PolicyLoaded { gen: Gen(5) },
                "generation never sent to this classifier",
            ),
            (
                "policy loaded before this instance",
                ClassifierToParent::PolicyLoaded { gen: Gen(2) },
                "generation never sent to this classifier",
            ),
            (
                "policy loaded twice",
                ClassifierToParent::PolicyLoaded { gen: Gen(3) },
                "generation acknowledged out of order",
            ),
            (
                "oversize log",
                log(MAX_LOG_LINE + 1),
                "log line longer than MAX_LOG_LINE",
            ),
            (
                "conn never accepted",
                with(&w, |c, _, _, _| *c = ConnId(25)),
                "connection never accepted",
            ),
            (
                "conn already decided",
                with(&w, |c, _, _, _| *c = ConnId(5)),
                "connection not pending (already decided or closed)",
            ),
            (
                "gen from the future",
                with(&w, |_, g, _, _| *g = Gen(9)),
                "generation never sent",
            ),
            (
                "gen older than conn",
                with(&w, |c, g, _, _| {
                    *c = ConnId(11);
                    *g = Gen(3);
                }),
                "generation older than the connection",
            ),
            (
                "action class out of range",
                with(&w, |_, _, d, _| d.action_class = Some(99)),
                "action class out of range",
            ),
            (
                "action class not matched",
                with(&w, |_, _, d, _| {
                    d.action_class = Some(id(&w, "limited"));
                }),
                "action class not among the matched classes",
            ),
            (
                "run without run",
                with(&w, |_, _, d, f| {
                    d.action_class = Some(id(&w, "remote"));
                    d.records.clear();
                    f.classes = classes(&["remote", "GLOBAL"]);
                }),
                "disposition the action class does not have",
            ),
            (
                "msg without msg",
                with(&w, |_, _, d, _| {
                    d.disposition = Disposition::Msg;
                    d.counted = false;
                }),
                "disposition the action class does not have",
            ),
            (
                "failrun without failrun",
                with(&w, |_, _, d, f| {
                    d.action_class = Some(id(&w, "remote"));
                    d.disposition = Disposition::FailRun;
                    d.refusal = Some(Refusal::IpMax);
                    d.records.clear();
                    f.classes = classes(&["remote", "GLOBAL"]);
                }),
                "disposition the action class does not have",
            ),
            (
                "failmsg without any failmsg",
                with(&w, |_, _, d, _| {
                    d.disposition = Disposition::FailMsg;
                    d.refusal = Some(Refusal::Reject);
                    d.counted = false;
                }),
                "disposition the action class does not have",
            ),
            (
                "run for a refused connection",
                with(&w, |_, _, d, _| d.refusal = Some(Refusal::ConnMax)),
                "run or msg for a refused connection",
            ),
            (
                "failrun without refusal",
                with(&w, |_, _, d, f| {
                    d.action_class = Some(id(&w, "limited"));
                    d.disposition = Disposition::FailRun;
                    d.records.clear();
                    f.classes = classes(&["limited", "GLOBAL"]);
                }),
                "failrun or failmsg without a refusal",
            ),
            (
                "counted close",
                with(&w, |_, _, d, _| d.disposition = Disposition::Close),
                "counted connection that runs nothing",
            ),
            (
                "log without class",
                with(&w, |_, _, d, _| {
                    d.action_class = None;
                    d.disposition = Disposition::Close;
                    d.counted = false;
                    d.log = true;
                }),
                "log requested without an action class",
            ),
            (
                "record out of range",
                with(&w, |_, _, d, _| d.records = vec![77]),
                "record class out of range",
            ),
            (
                "record without record",
                with(&w, |_, _, d, f| {
                    d.records = vec![id(&w, "quiet")];
                    f.classes = classes(&["local", "quiet", "GLOBAL"]);
                }),
                "record for a class without record, unmatched or repeated",
            ),
            (
                "record repeated",
                with(&w, |_, _, d, _| {
                    d.records = vec![id(&w, "local"), id(&w, "local")]
                }),
                "record for a class without record, unmatched or repeated",
            ),
            (
                "unknown class",
                with(&w, |_, _, _, f| {
                    f.classes = classes(&["local", "bogus", "GLOBAL"])
                }),
                "class the current rules cannot produce",
            ),
            (
                "class twice",
                with(&w, |_, _, _, f| {
                    f.classes = classes(&["local", "local", "GLOBAL"])
                }),
                "class matched twice",
            ),
            (
                "too many classes",
                with(&w, |_, _, _, f| {
                    f.classes = classes(&[
                        "local", "remote", "quiet", "limited", "other", "overflow", "GLOBAL",
                        "GLOBAL",
                    ]);
                }),
                "more matched classes than the rules have",
            ),
            (
                "GLOBAL not last",
                with(&w, |_, _, _, f| f.classes = classes(&["GLOBAL", "local"])),
                "GLOBAL missing or not last",
            ),
            (
                "claimed name with unknown status",
                with(&w, |_, _, _, f| {
                    f.host = Some(HostFacts {
                        status: proto::HnStatus::Unknown,
                        claimed: Some(HostName::try_from("x.example".to_string()).unwrap()),
                    });
                }),
                "claimed hostname inconsistent with hnstatus",
            ),
            (
                "no claimed name with good status",
                with(&w, |_, _, _, f| {
                    f.host = Some(HostFacts {
                        status: proto::HnStatus::Good,
                        claimed: None,
                    });
                }),
                "claimed hostname inconsistent with hnstatus",
            ),
        ];
        // Stale generation: the table for gen 3 was discarded.
        let mut w2 = world();
        w2.tables.remove(&Gen(3));
        let c2 = ctx(&w2);
        assert_eq!(
            admit(&c2, good(&w)).unwrap_err().check,
            "stale generation (tables discarded)"
        );
        // Dropped actions table (onfileerror drop): any run is out of range.
        let mut w3 = world();
        let t = GenTable::new(
            Gen(3),
            None,
            RULE_CLASSES.iter().map(|s| s.to_string()).collect(),
            None,
        );
        w3.tables.insert(Gen(3), Arc::new(t));
        assert_eq!(
            admit(&ctx(&w3), good(&w)).unwrap_err().check,
            "action class out of range"
        );

        let c = ctx(&w);
        for (label, msg, want) in rows.drain(..) {
            match admit(&c, msg) {
                Err(v) => assert_eq!(v.check, want, "{label}: {v}"),
                Ok(a) => panic!("{label}: admitted {a:?}"),
            }
        }

        // Before Hello: everything but Hello is refused; a wrong build is refused.
        let mut c = ctx(&w);
        c.hello_seen = false;
        assert_eq!(
            admit(&c, good(&w)).unwrap_err().check,
            "message before Hello"
        );
        assert_eq!(admit(&c, log(1)).unwrap_err().check, "message before Hello");
        assert_eq!(
            admit(&c, hello("build-2")).unwrap_err().check,
            "build id differs from the parent's"
        );
        assert!(matches!(admit(&c, hello("build-1")), Ok(Admitted::Hello)));
        assert!(matches!(
            admit(&ctx(&w), ClassifierToParent::PolicyLoaded { gen: Gen(4) }),
            Ok(Admitted::PolicyLoaded(Gen(4)))
        ));
    }

    #[test]
    fn resolver_refusals() {
        use privsep::proto::ResolverToParent as R;
        let b = BuildId("build-1".into());
        let hello = |s: &str| R::Hello {
            build: BuildId(s.into()),
        };
        let log = |n: usize| {
            R::Log(LogRecord {
                level: LogLevel::Info,
                verbosity: 0,
                text: "y".repeat(n),
            })
        };
        let rows: Vec<(bool, R, &str)> = vec![
            (true, hello("build-1"), "second Hello"),
            (false, hello("other"), "build id differs from the parent's"),
            (false, log(1), "message before Hello"),
            (
                true,
                log(MAX_LOG_LINE + 1),
                "log line longer than MAX_LOG_LINE",
            ),
        ];
        for (seen, m, want) in rows {
            assert_eq!(admit_resolver(&b, seen, m).unwrap_err().check, want);
        }
        assert!(matches!(
            admit_resolver(&b, false, hello("build-1")),
            Ok(AdmittedResolver::Hello)
        ));
        assert!(matches!(
            admit_resolver(&b, true, log(MAX_LOG_LINE)),
            Ok(AdmittedResolver::Log { .. })
        ));
    }

    /// Mutated frames: bytes → decode → admit never panics, and whatever it admits only names
    /// what the parent's table has (STYLE.md §2.9's admit property, replayed on stable).
    #[test]
    fn mutated_verdicts_never_admit_out_of_range() {
        let w = world();
        let c = ctx(&w);
        let n = w.tables[&Gen(4)].actions.as_ref().unwrap().len() as u32;
        let seeds: Vec<Vec<u8>> = [good(&w), remote_msg(&w)]
            .iter()
            .map(|m| privsep::wire::encode(m).unwrap())
            .collect();
        // xorshift64*: deterministic, no dependency.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut admitted = 0;
        for round in 0..20_000 {
            let mut frame = seeds[round % seeds.len()].clone();
            // Skip the 4-byte length header: mutate the body.
            let body_len = frame.len() - 4;
            for _ in 0..(1 + next() % 4) {
                let at = 4 + (next() as usize) % body_len;
                frame[at] = match next() % 3 {
                    0 => next() as u8,
                    1 => frame[at].wrapping_add(1),
                    _ => frame[at] ^ (1 << (next() % 8)),
                };
            }
            let Ok(msg) = privsep::wire::decode::<ClassifierToParent>(&frame[4..]) else {
                continue;
            };
            if let Ok(Admitted::Verdict(v)) = admit(&c, msg) {
                admitted += 1;
                let d = v.decision();
                assert!(d.action_class.is_none_or(|a| a < n));
                assert!(d.records.iter().all(|r| *r < n));
                assert!(w.pending.contains_key(&v.conn()));
                assert!(v
                    .classification()
                    .names()
                    .all(|x| RULE_CLASSES.contains(&x) || x == "GLOBAL" || x == "overflow"));
            }
        }
        // Mutations that keep a verdict valid exist (e.g. a lineno byte); the property held for
        // every one of them.
        assert!(admitted > 0);
    }
}
