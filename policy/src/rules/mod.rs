//! The rules file: `CLASS[/NOTES]: EXPRESSION` lines that sort a connection into classes.
//!
//! Parsing runs in the parent (start, reload, `-C`) and in the classifier (which re-parses the
//! text the parent sends); evaluation runs in the classifier, once per connection, over the
//! lazy [`Facts`] interface. The text is the administrator's; it is trusted but every mistake
//! gets a diagnostic with file, line and column, and no input makes the parser panic.
//!
//! Pipeline: [`SourceFile::logical_lines`] → rule head (class, notes) here → [`lex`] →
//! [`parse`] (chumsky) → [`ast`] → [`compile`] (matchers, merged address sets) → [`Rules`].
//!
//! Evaluation (as the original portnanny): rules in file order; a rule whose class already
//! matched is skipped (its expression is not evaluated at all, so it causes no lookups); after
//! the first match of a rule that is not `/nt`, only `/always` rules are still evaluated; GLOBAL
//! is appended when anything matched.
//!
//! Diagnostic codes: R001 no `CLASS:`; R002 empty class name; R003 bad class-name character or
//! length; R004 unknown note; R005 bad label; R006 empty expression; R010 unterminated quote;
//! R011 syntax error; R020 unknown matcher; R021 bad matcher argument; R022 bad bare operand;
//! R023 matcher glued to its argument; R024 more errors in one rule than are shown. Warnings:
//! R101 a `class:` operand that can never be true at that point; R102 a rule that can never be
//! evaluated.
//!
//! Where this differs from the original portnanny, and why:
//! - IPv6 (an extension): `ip:`, `localip:` and `local:` take IPv6 addresses, CIDR netblocks
//!   and ranges; a bare word containing `:` made of hex digits and `:./-` is an address (so a
//!   bare `fe80::` is an operand, not a matcher name); see [`crate::addr`].
//! - Every error in the file is reported, each with its position (the original stopped at the
//!   first); warnings are new.
//! - `re:`/`claimedre:` use the `regex` crate's syntax, which has no backreferences or
//!   look-around (the original used Python's `re`).
//! - `answerson:` ports are 1–65535 and `local:` ports 0–65535, compared as numbers (the
//!   original accepted 0–65536 for `answerson:` and compared `local:` ports as strings, so
//!   `025` never matched); `dnsbl:` zones must look like DNS names.
//! - An empty operand (`''`) is an error (the original crashed on it).
//! - Class names are printable ASCII (at most 256 bytes), and so are labels: a bare `/label`
//!   on a longer or non-ASCII expression is an error, because classes and labels cross the
//!   process boundary as checked strings.
//! - Brackets, NOT and EXCEPT may nest at most [`parse::MAX_DEPTH`] levels.
//! - GLOBAL is not added a second time when a rule itself names the class GLOBAL.
//! - The sentry matchers (issue 10, an extension): `trap`, `blocked`, `hits: N[/TIMESPEC]`,
//!   `mode: MODE[,MODE...]` and `ipfile: FILE`; see [`matchers::Matcher`]. None needs a
//!   lookup. Because `trap` and `blocked` are matcher words, a bare `trap` or `blocked` is no
//!   longer the single-label hostname it was (write `hostname: trap`).

pub mod ast;
pub mod compile;
pub mod eval;
pub mod lex;
pub mod matchers;
pub mod parse;

use std::fmt;
use std::ops::Range;

use crate::facts::{Classification, Facts};
use crate::rate::RateSpec;
use crate::source::{Diagnostic, LogicalLine, Parsed, Severity, SourceFile};

use compile::Node;
use matchers::Matcher;

/// Longest class name or label, matching what the process boundary accepts.
pub const MAX_NAME: usize = 256;

/// Most distinct `rate:` arguments in one rules file: the classifier marks each connection's
/// over-rate answers in one 64-bit mask, so charging a connection never allocates.
pub const MAX_RATES: usize = 64;

/// Most diagnostics of one kind reported for one rule. Every diagnostic carries a copy of its
/// physical line, so an enormous line full of mistakes must not produce one copy per mistake.
const MAX_PER_RULE: usize = 10;

/// One compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub class: String,
    /// Physical line where the rule starts.
    pub lineno: u32,
    pub label: Option<String>,
    /// `/nt` or `/nonterminal`: a match does not stop evaluation.
    pub nonterminal: bool,
    /// `/always`: evaluated even after evaluation stopped.
    pub always: bool,
    pub expr: Node,
}

impl fmt::Display for Rule {
    /// `class/nt/always/label=L: expression` in canonical form (a label with spaces, from a bare
    /// /label, is shown as `/label`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.class)?;
        if self.nonterminal {
            f.write_str("/nt")?;
        }
        if self.always {
            f.write_str("/always")?;
        }
        match &self.label {
            Some(l) if l.bytes().any(|b| b == b' ' || b == b'/' || b == b':') => {
                f.write_str("/label")?
            }
            Some(l) => write!(f, "/label={l}")?,
            None => {}
        }
        write!(f, ": {}", self.expr)
    }
}

/// A parsed rules file. Immutable after parsing; `Send + Sync`, so one copy can be shared by
/// every evaluation thread behind an `Arc`.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    has_always: bool,
    classes: Vec<String>,
    /// How to evaluate `rules` (see [`eval`]); built once here.
    plan: Vec<eval::Step>,
    /// Cross-rule DNS prefetch, one entry per plan step.
    windows: Vec<Option<eval::Window>>,
    /// A number for each rule's class, indexed like `rules`.
    class_ids: Vec<u32>,
    /// Every distinct `rate:` argument, in order of first use (at most [`MAX_RATES`]).
    rates: Vec<RateSpec>,
}

impl Rules {
    /// Classifies one connection. Lazy and short-circuit: `facts` is asked only for what the
    /// rules reached need.
    pub fn evaluate(&self, facts: &mut dyn Facts) -> Classification {
        eval::evaluate(self, facts)
    }

    /// Every class some rule can produce, in file order, without duplicates.
    pub fn class_names(&self) -> Vec<String> {
        self.classes.clone()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Every distinct `rate:` argument, in order of first use. The classifier keeps a bucket
    /// per source for each and charges every connection attempt to all of them (see
    /// [`crate::rate`]), whether or not evaluation reaches the operand.
    pub fn rates(&self) -> &[RateSpec] {
        &self.rates
    }

    /// Whether evaluating some connection could ask [`Facts`] for a lookup (host, identd,
    /// forward, dnsbl, answerson). When false, every evaluation is answered from the addresses,
    /// the classes matched so far and the history, without waiting on anyone.
    pub fn can_need_lookups(&self) -> bool {
        fn walk(node: &Node) -> bool {
            match node {
                Node::M(m) => m.lookup().is_some(),
                Node::Not(x) => walk(x),
                Node::Or(o) => o.items.iter().any(walk),
                Node::And(v) => v.iter().any(walk),
                Node::Except(a, b) => walk(a) || walk(b),
            }
        }
        self.rules.iter().any(|r| walk(&r.expr))
    }

    /// The files `ipfile:` operands name, as written, in order of first use, without
    /// duplicates. The parent reads each (relative to nanny.conf's directory), parses it with
    /// [`crate::sentry::parse_ipfile`] and ships the sets; a rule's operand asks for its file
    /// by this name through [`Facts::in_ipfile`].
    pub fn ipfiles(&self) -> Vec<String> {
        fn walk(node: &Node, out: &mut Vec<String>) {
            match node {
                Node::M(Matcher::IpFile(name)) => {
                    if !out.contains(name) {
                        out.push(name.clone());
                    }
                }
                Node::M(_) => {}
                Node::Not(x) => walk(x, out),
                Node::Or(o) => o.items.iter().for_each(|n| walk(n, out)),
                Node::And(v) => v.iter().for_each(|n| walk(n, out)),
                Node::Except(a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
            }
        }
        let mut out = Vec::new();
        for r in &self.rules {
            walk(&r.expr, &mut out);
        }
        out
    }

    /// Every use of a sentry matcher that needs a trap or a block to be true (`trap`,
    /// `blocked`, `hits:`, `mode:`), as (line where the rule starts, matcher word), in file
    /// order; -C warns about them when nothing is trapped or blocked.
    pub fn sentry_matchers(&self) -> Vec<(u32, &'static str)> {
        fn walk(node: &Node, line: u32, out: &mut Vec<(u32, &'static str)>) {
            match node {
                Node::M(Matcher::Trap) => out.push((line, "trap")),
                Node::M(Matcher::Blocked) => out.push((line, "blocked")),
                Node::M(Matcher::Hits { .. }) => out.push((line, "hits:")),
                Node::M(Matcher::Mode(_)) => out.push((line, "mode:")),
                Node::M(_) => {}
                Node::Not(x) => walk(x, line, out),
                Node::Or(o) => o.items.iter().for_each(|n| walk(n, line, out)),
                Node::And(v) => v.iter().for_each(|n| walk(n, line, out)),
                Node::Except(a, b) => {
                    walk(a, line, out);
                    walk(b, line, out);
                }
            }
        }
        let mut out = Vec::new();
        for r in &self.rules {
            walk(&r.expr, r.lineno, &mut out);
        }
        out
    }
}

impl fmt::Display for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.rules {
            writeln!(f, "{r}")?;
        }
        Ok(())
    }
}

/// What the warning pass needs to know about every rule whose head parsed, even when its
/// expression had errors (so that a broken rule does not cause false warnings).
struct Head {
    class: String,
    lineno: u32,
    nonterminal: bool,
    always: bool,
    /// Some(answer) when the compiled expression is constant; None if unknown or not compiled.
    constant: Option<bool>,
    /// `class:` operands with their spans (in the logical line).
    class_refs: Vec<(String, Range<usize>)>,
    line: usize,
}

/// Parses a rules file; returns the rules when there is no error, and every diagnostic.
pub fn parse_rules(name: &str, text: &str) -> Parsed<Rules> {
    let src = SourceFile::new(name, text);
    let mut diags: Vec<Diagnostic> = Vec::new();
    let lines = match src.logical_lines() {
        Ok(l) => l,
        Err(d) => {
            return Parsed {
                value: None,
                diagnostics: vec![d],
            }
        }
    };
    let mut rules = Vec::new();
    let mut heads = Vec::new();
    let mut rates = Vec::new();
    for (idx, ll) in lines.iter().enumerate() {
        if let Some((rule, head)) = parse_line(&src, ll, idx, &mut rates, &mut diags) {
            if let Some(r) = rule {
                rules.push(r);
            }
            heads.push(head);
        }
    }
    warn(&src, &lines, &heads, &mut diags);
    diags.sort_by_key(|d| (d.line, d.col));
    let has_errors = diags.iter().any(|d| d.severity == Severity::Error);
    let value = (!has_errors).then(|| {
        let mut classes: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for r in &rules {
            if seen.insert(r.class.as_str()) {
                classes.push(r.class.clone());
            }
        }
        let plan = eval::plan(&rules);
        Rules {
            has_always: rules.iter().any(|r| r.always),
            windows: eval::prefetch_windows(&rules, &plan),
            class_ids: eval::class_ids(&rules),
            plan,
            rules,
            classes,
            rates,
        }
    });
    Parsed {
        value,
        diagnostics: diags,
    }
}

fn is_ws(c: char) -> bool {
    c.is_ascii() && lex::is_space(c as u8)
}

/// Parses one logical line. Returns None when the head (class and notes) is unusable;
/// otherwise the compiled rule (None if the expression had errors) and its head.
fn parse_line(
    src: &SourceFile,
    ll: &LogicalLine,
    idx: usize,
    rates: &mut Vec<RateSpec>,
    diags: &mut Vec<Diagnostic>,
) -> Option<(Option<Rule>, Head)> {
    let text = ll.text.as_str();
    let err = |diags: &mut Vec<Diagnostic>, code, range: Range<usize>, msg: String| {
        diags.push(src.diag_at(Severity::Error, code, ll, range, msg));
    };
    let word_end = text.find(is_ws).unwrap_or(text.len());
    let word = &text[..word_end];
    let expr_start = text[word_end..]
        .find(|c: char| !is_ws(c))
        .map_or(text.len(), |i| word_end + i);
    let expr_text = text[expr_start..].trim_end_matches(is_ws);

    let Some(head) = word.strip_suffix(':') else {
        let msg = match word.find(':') {
            Some(i) => format!(
                "a rule starts with 'CLASS:' and a space; put a space after '{}'",
                &word[..=i]
            ),
            None => format!(
                "a rule starts with 'CLASS:' (a class name and a colon); '{word}' has no colon"
            ),
        };
        err(diags, "R001", 0..word_end, msg);
        return None;
    };
    let (class, notes) = match head.find('/') {
        Some(i) => (&head[..i], Some((i + 1, &head[i + 1..]))),
        None => (head, None),
    };
    if class.is_empty() {
        err(
            diags,
            "R002",
            0..word_end,
            "the rule has no class name before ':' or '/'".to_owned(),
        );
        return None;
    }
    if class.len() > MAX_NAME {
        err(
            diags,
            "R003",
            0..class.len(),
            format!("a class name may be at most {MAX_NAME} bytes long"),
        );
        return None;
    }
    if let Some((i, c)) = class.char_indices().find(|&(_, c)| !(c.is_ascii_graphic())) {
        err(
            diags,
            "R003",
            i..i + c.len_utf8(),
            format!("class names are printable ASCII; {c:?} is not allowed"),
        );
        return None;
    }

    let mut nonterminal = false;
    let mut always = false;
    let mut label: Option<String> = None;
    let mut head_ok = true;
    if let Some((start, notes)) = notes {
        let mut off = start;
        for note in notes.split('/') {
            let range = off..off + note.len();
            off += note.len() + 1;
            match note {
                "nt" | "nonterminal" => nonterminal = true,
                "always" => always = true,
                "label" => label = Some(expr_text.to_owned()),
                _ => {
                    if let Some(l) = note.strip_prefix("label=") {
                        if l.is_empty() {
                            err(diags, "R005", range, "'label=' needs a label".to_owned());
                            head_ok = false;
                        } else if label.as_deref().is_some_and(|old| old != l) {
                            err(
                                diags,
                                "R005",
                                range,
                                "a rule can have only one label".to_owned(),
                            );
                            head_ok = false;
                        } else {
                            label = Some(l.to_owned());
                        }
                    } else {
                        let shown = if note.is_empty() {
                            "an empty rule note".to_owned()
                        } else {
                            format!("unknown rule note '{note}'")
                        };
                        err(
                            diags,
                            "R004",
                            if note.is_empty() {
                                range.start.saturating_sub(1)..range.start
                            } else {
                                range
                            },
                            format!(
                                "{shown} (notes are /always, /nt, /nonterminal, /label and \
                                 /label=LABEL)"
                            ),
                        );
                        head_ok = false;
                    }
                }
            }
        }
    }
    if let Some(l) = &label {
        if l.len() > MAX_NAME || !l.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            err(
                diags,
                "R005",
                0..word_end,
                format!(
                    "a label must be printable ASCII of at most {MAX_NAME} bytes (a bare /label \
                     uses the whole expression)"
                ),
            );
            head_ok = false;
        }
    }

    let mut head = Head {
        class: class.to_owned(),
        lineno: ll.lineno,
        nonterminal,
        always,
        constant: None,
        class_refs: Vec::new(),
        line: idx,
    };

    if expr_text.is_empty() {
        err(
            diags,
            "R006",
            0..word_end,
            format!("the rule for class {class} has no expression (use ALL to match everything)"),
        );
        return Some((None, head));
    }

    let tokens = match lex::tokenize(expr_text) {
        Ok(t) => t,
        Err(e) => {
            err(
                diags,
                "R010",
                expr_start + e.start..expr_start + e.end,
                e.to_string(),
            );
            return Some((None, head));
        }
    };
    let ast = match parse::parse_tokens(&tokens, expr_text.len()) {
        Ok(a) => a,
        Err(errs) => {
            for e in errs {
                err(
                    diags,
                    "R011",
                    expr_start + e.span.start..expr_start + e.span.end,
                    e.message,
                );
            }
            return Some((None, head));
        }
    };
    let mut cerrs = Vec::new();
    let node = compile::compile(&ast, &mut cerrs);
    let hidden = cerrs.len().saturating_sub(MAX_PER_RULE);
    let first_hidden = cerrs.get(MAX_PER_RULE).map(|e| e.span.clone());
    for e in cerrs.into_iter().take(MAX_PER_RULE) {
        err(
            diags,
            e.code,
            expr_start + e.span.start..expr_start + e.span.end,
            e.message,
        );
    }
    if let Some(span) = first_hidden {
        err(
            diags,
            "R024",
            expr_start + span.start..expr_start + span.end,
            format!(
                "this and {} more errors in this rule are not shown",
                hidden - 1
            ),
        );
    }
    let node = node?;
    for (spec, range) in new_rates(&node, &tokens, rates) {
        err(
            diags,
            "R021",
            expr_start + range.start..expr_start + range.end,
            format!(
                "rate: {spec} would be the rules' {}th different rate; at most {MAX_RATES} are \
                 allowed",
                MAX_RATES + 1
            ),
        );
    }
    head.constant = node.constant();
    let mut refs = Vec::new();
    node.class_refs(&mut refs);
    if !refs.is_empty() {
        let spans = class_ref_spans(&tokens);
        let mut seen = std::collections::HashSet::new();
        head.class_refs = refs
            .into_iter()
            .filter(|c| seen.insert(*c))
            .map(|c| {
                let span = spans
                    .get(c)
                    .map_or(0..word_end, |s| expr_start + s.start..expr_start + s.end);
                (c.to_owned(), span)
            })
            .collect();
    }
    if !head_ok {
        return Some((None, head));
    }
    Some((
        Some(Rule {
            class: class.to_owned(),
            lineno: ll.lineno,
            label,
            nonterminal,
            always,
            expr: node,
        }),
        head,
    ))
}

/// Registers the rule's `rate:` arguments in `known` (first use order); returns those that
/// did not fit under [`MAX_RATES`], with the span of their argument word.
fn new_rates(
    node: &Node,
    tokens: &[lex::Spanned],
    known: &mut Vec<RateSpec>,
) -> Vec<(RateSpec, Range<usize>)> {
    fn walk(node: &Node, out: &mut Vec<RateSpec>) {
        match node {
            Node::M(Matcher::Rate(spec)) => out.push(*spec),
            Node::M(_) => {}
            Node::Not(x) => walk(x, out),
            Node::Or(o) => o.items.iter().for_each(|n| walk(n, out)),
            Node::And(v) => v.iter().for_each(|n| walk(n, out)),
            Node::Except(a, b) => {
                walk(a, out);
                walk(b, out);
            }
        }
    }
    let mut used = Vec::new();
    walk(node, &mut used);
    let mut refused = Vec::new();
    for spec in used {
        if known.contains(&spec) || refused.iter().any(|(s, _)| *s == spec) {
            continue;
        }
        if known.len() < MAX_RATES {
            known.push(spec);
            continue;
        }
        // The argument word that spells this spec (the first one; a rule's words are few).
        let span = tokens
            .windows(2)
            .find_map(|w| match w {
                [m, a] => match (&m.tok, &a.tok) {
                    (lex::Tok::Word(mw), lex::Tok::Word(aw))
                        if mw == "rate:" && crate::rate::parse_rate(aw).ok() == Some(spec) =>
                    {
                        Some(a.span.clone())
                    }
                    _ => None,
                },
                _ => None,
            })
            .unwrap_or(0..0);
        refused.push((spec, span));
    }
    refused
}

/// For each `class: NAME` in the tokens, the span of the first NAME word (one pass, so a line
/// with many `class:` operands stays linear).
fn class_ref_spans(tokens: &[lex::Spanned]) -> std::collections::HashMap<&str, Range<usize>> {
    let mut spans = std::collections::HashMap::new();
    for w in tokens.windows(2) {
        if let [m, a] = w {
            if let (lex::Tok::Word(mw), lex::Tok::Word(aw)) = (&m.tok, &a.tok) {
                if mw == "class:" {
                    spans.entry(aw.as_str()).or_insert_with(|| a.span.clone());
                }
            }
        }
    }
    spans
}

/// What the warning pass knows about one class from the rules before the current one.
#[derive(Default)]
struct ClassState {
    /// Some earlier rule of the class can match.
    produced: bool,
    /// Some earlier /nt rule of the class can match.
    produced_nt: bool,
    /// The first earlier rule of the class that matches every connection: (index, line).
    first_uncond: Option<(usize, u32)>,
    /// The same, limited to rules that are always reached (/always, or no rule before them can
    /// stop evaluation).
    first_uncond_reached: Option<(usize, u32)>,
}

/// The warning pass: `class:` operands that can never be true, and rules never evaluated.
/// One pass in file order with per-class state, so it stays linear for huge files.
fn warn(src: &SourceFile, lines: &[LogicalLine], heads: &[Head], diags: &mut Vec<Diagnostic>) {
    let mut classes: std::collections::HashMap<&str, ClassState> = std::collections::HashMap::new();
    // No rule so far can stop evaluation (all /nt or never matching).
    let mut nothing_stops_yet = true;
    // The first rule that certainly stops evaluation when reached: (index, line).
    let mut first_stopper: Option<(usize, u32)> = None;
    for (k, h) in heads.iter().enumerate() {
        if let Some(ll) = lines.get(h.line) {
            let word_end = ll.text.find(is_ws).unwrap_or(ll.text.len());
            warn_class_refs(src, ll, h, &classes, diags);
            // R102. A later rule of j's class is skipped once j matched; j is evaluated (or
            // skipped because its class matched) whenever this rule would be, unless this rule
            // is /always and j is not always reached. A terminal j that always matches stops
            // evaluation, unless an earlier /nt rule of its class may have matched first.
            let own = classes.get(h.class.as_str()).and_then(|c| {
                if h.always {
                    c.first_uncond_reached
                } else {
                    c.first_uncond
                }
            });
            let stopper = if h.always { None } else { first_stopper };
            let pick = match (own, stopper) {
                (Some(o), Some(st)) if st.0 < o.0 => Some((st, false)),
                (Some(o), _) => Some((o, true)),
                (None, Some(st)) => Some((st, false)),
                (None, None) => None,
            };
            if let Some(((_, line), same_class)) = pick {
                let msg = if same_class {
                    format!(
                        "this rule is never evaluated: the rule at line {line} always puts the \
                         connection in class {} first",
                        h.class
                    )
                } else {
                    format!(
                        "this rule is never evaluated: the rule at line {line} matches every \
                         connection and stops evaluation (mark this rule /always, or move it \
                         earlier)"
                    )
                };
                diags.push(src.diag_at(Severity::Warning, "R102", ll, 0..word_end, msg));
            }
        }
        // Now record rule k for the rules after it.
        let can_match = h.constant != Some(false);
        let cs = classes.entry(h.class.as_str()).or_default();
        if h.constant == Some(true) {
            if cs.first_uncond.is_none() {
                cs.first_uncond = Some((k, h.lineno));
            }
            if (h.always || nothing_stops_yet) && cs.first_uncond_reached.is_none() {
                cs.first_uncond_reached = Some((k, h.lineno));
            }
            if !h.nonterminal && !cs.produced_nt && first_stopper.is_none() {
                first_stopper = Some((k, h.lineno));
            }
        }
        if can_match {
            cs.produced = true;
            if h.nonterminal {
                cs.produced_nt = true;
            }
        }
        nothing_stops_yet &= h.nonterminal || !can_match;
    }
}

/// R101: `class: X` at rule h. If h is /always, X can be a member if any earlier rule can
/// produce X. Otherwise h runs only while nothing terminal has matched, so X must come from an
/// earlier /nt rule.
fn warn_class_refs(
    src: &SourceFile,
    ll: &LogicalLine,
    h: &Head,
    classes: &std::collections::HashMap<&str, ClassState>,
    diags: &mut Vec<Diagnostic>,
) {
    // class_refs holds each name once, in order of first use.
    let mut shown = 0;
    for (c, span) in &h.class_refs {
        let state = classes.get(c.as_str());
        let produced = state.is_some_and(|s| s.produced);
        let possible = if h.always {
            produced
        } else {
            state.is_some_and(|s| s.produced_nt)
        };
        if possible {
            continue;
        }
        let why = if *c == h.class {
            "this rule is skipped once the connection is in its own class".to_owned()
        } else if !produced {
            format!("no earlier rule can put a connection in class {c}")
        } else {
            format!(
                "the earlier rules for {c} are terminal, so when one matched this rule \
                 (not /always) is never evaluated"
            )
        };
        if shown == MAX_PER_RULE {
            break;
        }
        shown += 1;
        diags.push(src.diag_at(
            Severity::Warning,
            "R101",
            ll,
            span.clone(),
            format!("'class: {c}' can never be true here: {why}"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Rules {
        let parsed = parse_rules("rules", text);
        let diags: Vec<String> = parsed.diagnostics.iter().map(|d| d.to_string()).collect();
        parsed
            .value
            .unwrap_or_else(|| panic!("{text:?} does not parse: {diags:?}"))
    }

    #[test]
    fn can_need_lookups_finds_a_lookup_anywhere() {
        let none = [
            "",
            "all: ALL\n",
            "a: 127.0.0.1 10.0.0.0/8\nb: NOT class: a\nc: local: 25 AND ip: ::1\n",
            "seen: seenwithin: 60s\nnew: firsttime\nw: waited: 10s stallfor: 5m\n",
        ];
        for text in none {
            assert!(!rules(text).can_need_lookups(), "{text:?}");
        }
        let some = [
            "a: hostname: example.org\n",
            "a: 127.0.0.1 identd: root\n",
            "a: ALL\nb: 10.0.0.1 EXCEPT dnsbl: bl.example.org\n",
            "a: NOT answerson: 25\n",
            "a: ALL AND (127.0.0.1 forwhn: x.example.org)\n",
            "a: 10.0.0.1\nb: .example.org\n",
            "a: hnstatus: good\n",
            "a: PARANOID\n",
            "a: 10.0.0.0/8 IDENTD\n",
        ];
        for text in some {
            assert!(rules(text).can_need_lookups(), "{text:?}");
        }
    }
}
