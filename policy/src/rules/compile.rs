//! Turns a parsed expression into evaluable nodes: resolves every operand to a matcher, merges
//! runs of address operands in an or-list into one [`AddrSet`], and precomputes which lookups
//! an or-list should start together.
//!
//! Runs in the parent and the classifier on the administrator's rules text. Errors carry the
//! byte span of the offending word in the expression text.
//!
//! Invariants: an or-list never directly contains another or-list (brackets around an or-list
//! inside an or-list mean nothing, so they are flattened, as the original did); adjacent `ip:`
//! operands (and adjacent `localip:` operands) of one or-list are one matcher. Merging only
//! adjacent operands keeps the original's left-to-right lookup order exactly.

use std::fmt;
use std::ops::Range;

use crate::addr::{AddrRange, AddrSet};
use crate::facts::Lookup;

use super::ast::{Expr, Operand};
use super::matchers::{self, Cx, Matcher, Piece};

/// A compiled expression node.
#[derive(Clone, Debug)]
pub enum Node {
    M(Matcher),
    Not(Box<Node>),
    Or(OrList),
    And(Vec<Node>),
    Except(Box<Node>, Box<Node>),
}

/// An or-list, with the lookups to start together when evaluation reaches item `at`.
#[derive(Clone, Debug)]
pub struct OrList {
    pub items: Vec<Node>,
    pub prefetch: Option<(usize, Vec<Lookup>)>,
}

/// A compile error at a byte range of the expression text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    pub span: Range<usize>,
    pub code: &'static str,
    pub message: String,
}

fn compile_operand(op: &Operand) -> Result<Piece, CompileError> {
    let res = match op {
        Operand::WithArg { name, arg, .. } => matchers::with_arg(name, arg),
        Operand::Bare { word, .. } => matchers::bare(word),
    };
    res.map_err(|e| {
        let span = match op {
            Operand::WithArg {
                name_span,
                arg_span,
                ..
            } => {
                if e.at_arg {
                    arg_span.clone()
                } else {
                    name_span.clone()
                }
            }
            Operand::Bare { span, .. } => span.clone(),
        };
        CompileError {
            span,
            code: e.code,
            message: e.message,
        }
    })
}

/// Collects the children of an or-list, splicing in nested or-lists.
fn flatten_or<'a>(items: &'a [Expr], out: &mut Vec<&'a Expr>) {
    for e in items {
        match e {
            Expr::Or(inner) => flatten_or(inner, out),
            other => out.push(other),
        }
    }
}

/// Compiles an expression; collects every operand error rather than stopping at the first.
pub fn compile(expr: &Expr, errors: &mut Vec<CompileError>) -> Option<Node> {
    match expr {
        Expr::Operand(op) => match compile_operand(op) {
            Ok(p) => Some(Node::M(p.into_matcher())),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        Expr::Not(x) => compile(x, errors).map(|n| Node::Not(Box::new(n))),
        Expr::And(v) => {
            let nodes: Vec<Option<Node>> = v.iter().map(|e| compile(e, errors)).collect();
            nodes
                .into_iter()
                .collect::<Option<Vec<Node>>>()
                .map(Node::And)
        }
        Expr::Except(a, b) => {
            let a = compile(a, errors);
            let b = compile(b, errors);
            Some(Node::Except(Box::new(a?), Box::new(b?)))
        }
        Expr::Or(v) => {
            let mut flat = Vec::new();
            flatten_or(v, &mut flat);
            compile_or(&flat, errors)
        }
    }
}

/// A run of adjacent address operands being gathered into one set.
struct IpRun {
    local: bool,
    specs: Vec<String>,
    ranges: Vec<AddrRange>,
}

impl IpRun {
    fn finish(self) -> Node {
        Node::M(Matcher::Ip {
            local: self.local,
            specs: self.specs,
            set: AddrSet::from_ranges(self.ranges),
        })
    }
}

fn compile_or(flat: &[&Expr], errors: &mut Vec<CompileError>) -> Option<Node> {
    let mut items: Vec<Node> = Vec::with_capacity(flat.len().min(64));
    let mut run: Option<IpRun> = None;
    let mut ok = true;
    for e in flat {
        let piece = match e {
            Expr::Operand(op) => match compile_operand(op) {
                Ok(p) => p,
                Err(err) => {
                    errors.push(err);
                    ok = false;
                    continue;
                }
            },
            other => match compile(other, errors) {
                Some(n) => {
                    if let Some(r) = run.take() {
                        items.push(r.finish());
                    }
                    items.push(n);
                    continue;
                }
                None => {
                    ok = false;
                    continue;
                }
            },
        };
        match piece {
            Piece::Ip { local, spec, range } => match &mut run {
                Some(r) if r.local == local => {
                    r.specs.push(spec);
                    r.ranges.push(range);
                }
                _ => {
                    if let Some(r) = run.take() {
                        items.push(r.finish());
                    }
                    run = Some(IpRun {
                        local,
                        specs: vec![spec],
                        ranges: vec![range],
                    });
                }
            },
            Piece::Other(m) => {
                if let Some(r) = run.take() {
                    items.push(r.finish());
                }
                items.push(Node::M(m));
            }
        }
    }
    if let Some(r) = run.take() {
        items.push(r.finish());
    }
    if !ok {
        return None;
    }
    if items.len() == 1 {
        return items.pop();
    }
    let prefetch = prefetch_plan(&items);
    Some(Node::Or(OrList { items, prefetch }))
}

/// The lookup certain to be needed first when `node` is evaluated.
pub(crate) fn leading_lookup(node: &Node) -> Option<Lookup> {
    match node {
        Node::M(m) => m.lookup(),
        Node::Not(x) => leading_lookup(x),
        Node::Or(o) => o.items.first().and_then(leading_lookup),
        Node::And(v) => v.first().and_then(leading_lookup),
        Node::Except(a, _) => leading_lookup(a),
    }
}

/// From the first item that needs a lookup: the distinct lookups of it and everything after
/// it, when there are at least two (one lookup gains nothing from being started early).
fn prefetch_plan(items: &[Node]) -> Option<(usize, Vec<Lookup>)> {
    let first = items.iter().position(|n| leading_lookup(n).is_some())?;
    let mut lookups: Vec<Lookup> = Vec::new();
    // A set beside the list keeps a huge or-list of lookups linear.
    let mut seen = std::collections::HashSet::new();
    for n in items.get(first..).unwrap_or(&[]) {
        if let Some(l) = leading_lookup(n) {
            if seen.insert(l.clone()) {
                lookups.push(l);
            }
        }
    }
    (lookups.len() >= 2).then_some((first, lookups))
}

impl Node {
    /// Evaluates lazily and left to right, stopping as soon as the answer is known.
    pub fn eval(&self, cx: &mut Cx<'_>) -> bool {
        self.eval_traced(cx, &mut NoTrace)
    }

    /// [`Node::eval`], reporting to a tracer (see [`super::trace`]); with [`NoTrace`] this is
    /// the same code as without one.
    pub(crate) fn eval_traced<T: Tracer>(&self, cx: &mut Cx<'_>, t: &mut T) -> bool {
        if let Node::M(m) = self {
            let hit = m.eval(cx);
            t.matcher(m, hit, cx);
            return hit;
        }
        t.enter(self);
        let hit = match self {
            Node::M(m) => m.eval(cx),
            Node::Not(x) => !x.eval_traced(cx, t),
            Node::Or(o) => {
                let mut hit = false;
                for (i, item) in o.items.iter().enumerate() {
                    if let Some((at, lookups)) = &o.prefetch {
                        if *at == i {
                            cx.facts.prefetch(lookups);
                        }
                    }
                    if item.eval_traced(cx, t) {
                        hit = true;
                        break;
                    }
                }
                hit
            }
            Node::And(v) => v.iter().all(|n| n.eval_traced(cx, t)),
            Node::Except(a, b) => a.eval_traced(cx, t) && !b.eval_traced(cx, t),
        };
        t.leave(self, hit);
        hit
    }

    /// Some(answer) when the node gives the same answer for every connection.
    pub fn constant(&self) -> Option<bool> {
        match self {
            Node::M(Matcher::All) => Some(true),
            Node::M(Matcher::Ip { set, .. }) if set.is_everything() => Some(true),
            Node::M(_) => None,
            Node::Not(x) => x.constant().map(|b| !b),
            Node::Or(o) => {
                let cs: Vec<Option<bool>> = o.items.iter().map(Node::constant).collect();
                if cs.contains(&Some(true)) {
                    Some(true)
                } else if cs.iter().all(|c| *c == Some(false)) {
                    Some(false)
                } else {
                    None
                }
            }
            Node::And(v) => {
                let cs: Vec<Option<bool>> = v.iter().map(Node::constant).collect();
                if cs.contains(&Some(false)) {
                    Some(false)
                } else if cs.iter().all(|c| *c == Some(true)) {
                    Some(true)
                } else {
                    None
                }
            }
            Node::Except(a, b) => match (a.constant(), b.constant()) {
                (Some(false), _) | (_, Some(true)) => Some(false),
                (Some(true), Some(false)) => Some(true),
                _ => None,
            },
        }
    }

    /// Every `class:` operand's class name, in order.
    pub fn class_refs<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Node::M(Matcher::Class(c)) => out.push(c),
            Node::M(_) => {}
            Node::Not(x) => x.class_refs(out),
            Node::Or(o) => o.items.iter().for_each(|n| n.class_refs(out)),
            Node::And(v) => v.iter().for_each(|n| n.class_refs(out)),
            Node::Except(a, b) => {
                a.class_refs(out);
                b.class_refs(out);
            }
        }
    }

    fn is_compound(&self) -> bool {
        matches!(self, Node::Or(_) | Node::And(_) | Node::Except(..))
    }
}

impl fmt::Display for Node {
    /// The canonical form. Unlike the original's printer, an AND or EXCEPT inside an or-list is
    /// bracketed so that the text parses back to the same tree.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::M(m) => write!(f, "{m}"),
            Node::Not(x) => write!(f, "!({x})"),
            Node::Or(o) => {
                for (i, item) in o.items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    if item.is_compound() {
                        write!(f, "({item})")?;
                    } else {
                        write!(f, "{item}")?;
                    }
                }
                Ok(())
            }
            Node::And(v) => {
                // Nested to the right, as the original prints it.
                let n = v.len();
                for (i, item) in v.iter().enumerate() {
                    if i + 1 < n {
                        write!(f, "({item}) AND ")?;
                        if i + 2 < n {
                            f.write_str("(")?;
                        }
                    } else if n > 1 {
                        write!(f, "({item})")?;
                    } else {
                        write!(f, "{item}")?;
                    }
                }
                for _ in 0..n.saturating_sub(2) {
                    f.write_str(")")?;
                }
                Ok(())
            }
            Node::Except(a, b) => write!(f, "({a}) EXCEPT ({b})"),
        }
    }
}

/// What the evaluator reports to a tracer (trace.rs's Recorder for `explain`). It lives with
/// the nodes it sees, so the tree and its evaluation do not depend on the recorder. Every hook is called after the fact.
pub trait Tracer {
    /// Rule `rule` was not evaluated: its class had already matched (`class_done`), or a
    /// terminal rule had matched and it is not `/always`.
    fn skip(&mut self, rule: usize, class_done: bool);
    /// Rule `rule`'s expression is about to be evaluated.
    fn rule_start(&mut self, rule: usize);
    /// Rule `rule`'s expression gave `hit`.
    fn rule_end(&mut self, rule: usize, hit: bool);
    /// Rules `first..first + len`, a run of address-only rules, were searched in one step;
    /// `hit` is the offset of the first one containing the address.
    fn run(&mut self, first: usize, len: usize, hit: Option<usize>);
    /// A compound node (NOT, or-list, AND, EXCEPT) is about to be evaluated.
    fn enter(&mut self, node: &Node);
    /// The compound node just entered gave `hit`.
    fn leave(&mut self, node: &Node, hit: bool);
    /// Matcher `m` was evaluated and gave `hit`.
    fn matcher(&mut self, m: &Matcher, hit: bool, cx: &mut Cx<'_>);
}

/// The tracer of every real connection: records nothing, costs nothing.
pub struct NoTrace;

impl Tracer for NoTrace {
    #[inline(always)]
    fn skip(&mut self, _: usize, _: bool) {}
    #[inline(always)]
    fn rule_start(&mut self, _: usize) {}
    #[inline(always)]
    fn rule_end(&mut self, _: usize, _: bool) {}
    #[inline(always)]
    fn run(&mut self, _: usize, _: usize, _: Option<usize>) {}
    #[inline(always)]
    fn enter(&mut self, _: &Node) {}
    #[inline(always)]
    fn leave(&mut self, _: &Node, _: bool) {}
    #[inline(always)]
    fn matcher(&mut self, _: &Matcher, _: bool, _: &mut Cx<'_>) {}
}
