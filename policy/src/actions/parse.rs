//! Reading one actions file line into a class's own directives (before `see` is resolved).
//!
//! Runs wherever the actions file is parsed (parent, classifier, `-C`); the bytes are the
//! administrator's. Each line yields its class (when the `CLASS:` head is well formed) plus one
//! diagnostic per bad directive, so `-C` can show every mistake at once. A directive that is in
//! error is left out of the class; the line still counts as a definition of the class, so
//! duplicate-class and `see` checks stay meaningful.

use std::collections::HashMap;

use crate::source::{Diagnostic, LogicalLine, Severity, SourceFile};

/// A position for a diagnostic made later: physical (line, column, width).
pub(super) use super::Pos;

/// One class's own directives, as written.
#[derive(Clone, Debug, Default)]
pub(super) struct RawClass {
    pub name: String,
    pub lineno: u32,
    pub name_pos: Pos,
    pub run: Option<String>,
    pub msg: Option<String>,
    pub failrun: Option<String>,
    pub failmsg: Option<String>,
    pub drop: bool,
    pub reject: bool,
    pub quiet: bool,
    pub norepeatlog: bool,
    pub log: Option<Option<String>>,
    pub faillog: Option<String>,
    pub record: Option<String>,
    pub ipmax: Option<i64>,
    pub connmax: Option<i64>,
    pub block: Option<super::BlockRequest>,
    /// `msgfile FILE` (an extension): the file name as written, and where.
    pub msgfile: Option<super::At<String>>,
    /// The sandbox directives this class gives itself (extensions).
    pub sandbox: super::Sandbox,
    pub setenv: Vec<(String, String)>,
    pub subst: Vec<(String, String)>,
    pub see: Option<(String, Pos)>,
    /// Names used in `%(name)s` that are not built-ins, where, and in which directive; the
    /// resolver checks that a `subst` can define them.
    pub names: Vec<(String, Pos, &'static str)>,
    /// Malformed substitutions (A018) and non-built-in names in `record` (A019): errors only
    /// when substitutions are on, so kept apart until the caller says.
    pub template_diags: Vec<Diagnostic>,
}

/// What a directive takes after its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Nothing: drop, reject, quiet, norepeatlog.
    Flag,
    /// Optional text: log.
    OptText,
    /// A whole number: ipmax, connmax.
    Number,
    /// Required text: run, msg, failrun, failmsg, faillog, record.
    Text,
    /// A name, then text: setenv, subst.
    NameValue,
    /// One class name: see.
    Class,
    /// Nothing, a TIMESPEC or `cmdonly`: block.
    Block,
    /// A file name: msgfile.
    File,
    /// A sandbox value (see sandbox.rs): user, nice, rlimit, umask, timeout, chdir.
    Sandbox,
}

/// Every directive (the same list as [`super::DIRECTIVES`]) and what it takes.
const SHAPES: [(&str, Shape); 24] = [
    ("run", Shape::Text),
    ("msg", Shape::Text),
    ("failrun", Shape::Text),
    ("failmsg", Shape::Text),
    ("drop", Shape::Flag),
    ("reject", Shape::Flag),
    ("quiet", Shape::Flag),
    ("log", Shape::OptText),
    ("faillog", Shape::Text),
    ("norepeatlog", Shape::Flag),
    ("record", Shape::Text),
    ("ipmax", Shape::Number),
    ("connmax", Shape::Number),
    ("setenv", Shape::NameValue),
    ("subst", Shape::NameValue),
    ("see", Shape::Class),
    ("block", Shape::Block),
    ("msgfile", Shape::File),
    ("user", Shape::Sandbox),
    ("nice", Shape::Sandbox),
    ("rlimit", Shape::Sandbox),
    ("umask", Shape::Sandbox),
    ("timeout", Shape::Sandbox),
    ("chdir", Shape::Sandbox),
];

/// Extension directives that are everyday words: a continuation line of a message that starts
/// with one of them is prose far more often than a forgotten ' : ', so A016 does not look for
/// them (and portnanny 2 files get no new warnings).
const PROSE_WORDS: [&str; 3] = ["user", "nice", "timeout"];

/// Longest class name the privsep protocol carries.
const MAX_CLASS_NAME: usize = 256;

/// Splits a file into raw classes plus the diagnostics of every line.
pub(super) fn parse_file(name: &str, text: &str) -> (Vec<RawClass>, Vec<Diagnostic>, SourceFile) {
    let src = SourceFile::new(name, text);
    let mut diags = Vec::new();
    let mut out = Vec::new();
    match src.logical_lines() {
        Ok(lines) => {
            for ll in &lines {
                if let Some(c) = parse_line(&src, ll, &mut diags) {
                    out.push(c);
                }
            }
        }
        Err(d) => diags.push(d),
    }
    (out, diags, src)
}

/// The byte ranges of the directives of `text[start..]`: split at every colon that has
/// whitespace on both sides, scanning left to right without overlap (as portnanny did).
fn split_directives(text: &str, start: usize) -> Vec<std::ops::Range<usize>> {
    let b = text.as_bytes();
    let ws = |i: usize| b.get(i).is_some_and(|c| c.is_ascii_whitespace());
    let mut out = Vec::new();
    let mut from = start;
    let mut i = start;
    while i + 2 < b.len() {
        if ws(i) && b[i + 1] == b':' && ws(i + 2) {
            out.push(from..i);
            from = i + 3;
            i += 3;
        } else {
            i += 1;
        }
    }
    out.push(from..b.len());
    out
}

/// `range` with surrounding whitespace removed.
fn trim_range(text: &str, range: std::ops::Range<usize>) -> std::ops::Range<usize> {
    let s = &text[range.clone()];
    let lead = s.len() - s.trim_start().len();
    let t = s.trim();
    range.start + lead..range.start + lead + t.len()
}

/// Parses an integer as portnanny did: optional sign, decimal digits.
fn parse_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_line(src: &SourceFile, ll: &LogicalLine, diags: &mut Vec<Diagnostic>) -> Option<RawClass> {
    let text = ll.text.as_str();
    let err = |range: std::ops::Range<usize>, code: &'static str, msg: String| {
        src.diag_at(Severity::Error, code, ll, range, msg)
    };
    let pos_of = |range: std::ops::Range<usize>| -> Pos {
        let (line, col) = src.position(ll, range.start);
        let w = text.get(range).map_or(1, |s| s.chars().count().max(1));
        (line, col, u32::try_from(w).unwrap_or(1))
    };
    let head_end = text.find(|c: char| c.is_whitespace()).unwrap_or(text.len());
    let head = &text[..head_end];
    let rest_start = text[head_end..]
        .find(|c: char| !c.is_whitespace())
        .map(|o| head_end + o);
    let Some(cname) = head.strip_suffix(':') else {
        diags.push(err(
            0..head_end,
            "A001",
            format!(
                "an action rule starts with the class name and a colon ('CLASS: DIRECTIVE ...'); \
                 '{head}' does not end in ':'"
            ),
        ));
        return None;
    };
    if cname.is_empty() {
        diags.push(err(
            0..head_end,
            "A001",
            "the class name is empty".to_owned(),
        ));
        return None;
    }
    if cname.len() > MAX_CLASS_NAME || !cname.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        diags.push(err(
            0..head_end - 1,
            "A015",
            format!(
                "class names are printable ASCII without spaces, at most {MAX_CLASS_NAME} bytes; \
                 '{cname}' is not"
            ),
        ));
        return None;
    }
    let mut class = RawClass {
        name: cname.to_owned(),
        lineno: ll.lineno,
        name_pos: pos_of(0..head_end - 1),
        ..RawClass::default()
    };
    let Some(rest_start) = rest_start else {
        diags.push(err(
            0..head_end,
            "A002",
            format!("class '{cname}' has no directives; an action rule needs at least one"),
        ));
        return Some(class);
    };

    // Where each directive kind was first given on this line (for duplicate messages).
    let mut first_at: HashMap<&'static str, u32> = HashMap::new();
    let mut setenv_at: HashMap<String, u32> = HashMap::new();
    let mut subst_at: HashMap<String, u32> = HashMap::new();
    let mut rlimit_at: HashMap<super::RlimitName, u32> = HashMap::new();
    let mut run_like: HashMap<&'static str, std::ops::Range<usize>> = HashMap::new();
    let mut block_range: Option<std::ops::Range<usize>> = None;

    for piece in split_directives(text, rest_start) {
        let range = trim_range(text, piece.clone());
        if range.is_empty() {
            // Point at the colon after the empty directive, or before it at the end of line.
            let at = if piece.end < text.len() {
                piece.end + 1
            } else {
                piece.start.saturating_sub(2)
            };
            diags.push(err(
                at..at + 1,
                "A013",
                "empty directive: a ' : ' separator must sit between two directives".to_owned(),
            ));
            continue;
        }
        let comp = &text[range.clone()];
        let kw_len = comp.find(char::is_whitespace).unwrap_or(comp.len());
        let kw_range = range.start..range.start + kw_len;
        let kw = &text[kw_range.clone()];
        let arg_range = trim_range(text, kw_range.end..range.end);
        let arg = &text[arg_range.clone()];
        let Some(&(directive, shape)) = SHAPES.iter().find(|(d, _)| *d == kw) else {
            diags.push(err(
                kw_range,
                "A003",
                match kw.strip_suffix(':') {
                    Some(k) if SHAPES.iter().any(|(d, _)| *d == k) => format!(
                        "unknown directive '{kw}': directives are separated by ' : ', with \
                         whitespace on both sides of the colon"
                    ),
                    _ => format!(
                        "unknown directive '{kw}' (known: {})",
                        super::DIRECTIVES.join(", ")
                    ),
                },
            ));
            continue;
        };
        let (_, kw_col) = src.position(ll, kw_range.start);
        if !matches!(directive, "setenv" | "subst" | "rlimit") {
            if let Some(col) = first_at.get(directive) {
                diags.push(err(
                    kw_range,
                    "A007",
                    format!(
                        "'{directive}' is given twice for class '{cname}' (first at column {col})"
                    ),
                ));
                continue;
            }
        }
        let missing = |what: &str| {
            err(
                kw_range.clone(),
                "A004",
                format!("'{directive}' needs {what}"),
            )
        };
        let extra = |what: &str| {
            let hint = if arg == ":" {
                " (a ':' at the end of a line separates nothing; it is read as an argument)"
            } else {
                ""
            };
            err(
                arg_range.clone(),
                "A005",
                format!("'{directive}' {what}; '{arg}' is extra{hint}"),
            )
        };
        match shape {
            Shape::Flag => {
                if !arg.is_empty() {
                    diags.push(extra("takes no argument"));
                    continue;
                }
                match directive {
                    "drop" => class.drop = true,
                    "reject" => class.reject = true,
                    "quiet" => class.quiet = true,
                    _ => class.norepeatlog = true,
                }
            }
            Shape::OptText => {
                swallowed_directive(src, ll, arg_range.clone(), directive, diags);
                check_template(src, ll, arg_range.start, arg, directive, &mut class);
                class.log = Some((!arg.is_empty()).then(|| arg.to_owned()));
            }
            Shape::Number => {
                if arg.is_empty() {
                    diags.push(missing("a number"));
                    continue;
                }
                let Some(n) = parse_int(arg) else {
                    diags.push(err(
                        arg_range.clone(),
                        "A006",
                        format!("'{directive}' takes a whole number, not '{arg}'"),
                    ));
                    continue;
                };
                if directive == "ipmax" {
                    class.ipmax = Some(n);
                } else {
                    class.connmax = Some(n);
                }
            }
            Shape::Text => {
                if arg.is_empty() {
                    diags.push(missing(match directive {
                        "run" | "failrun" => "a command",
                        "record" | "faillog" => "a message to log",
                        _ => "a message",
                    }));
                    continue;
                }
                swallowed_directive(src, ll, arg_range.clone(), directive, diags);
                if matches!(directive, "msg" | "failmsg") && arg.len() > super::MAX_MSG_BYTES {
                    diags.push(src.diag_at(
                        Severity::Warning,
                        "A017",
                        ll,
                        kw_range.clone(),
                        format!(
                            "the '{directive}' text is {} bytes, over the {}-byte cap of a \
                             message: only the first {} bytes are sent",
                            arg.len(),
                            super::MAX_MSG_BYTES,
                            super::MAX_MSG_BYTES
                        ),
                    ));
                }
                // run/failrun are split into words before substitution, so each word is a
                // template of its own.
                let templates: Vec<(usize, &str)> = if matches!(directive, "run" | "failrun") {
                    crate::words::words(arg)
                        .into_iter()
                        .map(|(o, w)| (arg_range.start + o, w))
                        .collect()
                } else {
                    vec![(arg_range.start, arg)]
                };
                for (at, t) in templates {
                    check_template(src, ll, at, t, directive, &mut class);
                }
                let v = Some(arg.to_owned());
                match directive {
                    "run" => class.run = v,
                    "msg" => class.msg = v,
                    "failrun" => class.failrun = v,
                    "failmsg" => class.failmsg = v,
                    "faillog" => class.faillog = v,
                    _ => class.record = v,
                }
                if matches!(directive, "run" | "msg" | "failrun" | "failmsg") {
                    if let Some(other) = conflict(directive, &kw_range, &mut run_like) {
                        diags.push(err(
                            kw_range.clone(),
                            "A009",
                            format!(
                            "class '{cname}' has both '{other}' and '{directive}'; only one of \
                             them can happen"
                        ),
                        ));
                    }
                }
            }
            Shape::NameValue => {
                let what = if directive == "setenv" {
                    "a variable name and a value"
                } else {
                    "a substitution name and a value"
                };
                if arg.is_empty() {
                    diags.push(missing(what));
                    continue;
                }
                let nlen = arg.find(char::is_whitespace).unwrap_or(arg.len());
                let vname = &arg[..nlen];
                let value = arg[nlen..].trim_start();
                let name_range = arg_range.start..arg_range.start + nlen;
                if value.is_empty() {
                    diags.push(err(
                        name_range,
                        "A004",
                        format!("'{directive} {vname}' needs a value after the name"),
                    ));
                    continue;
                }
                if directive == "setenv" && (vname.contains('=') || vname.contains('\0')) {
                    diags.push(err(
                        name_range,
                        "A014",
                        format!("environment variable names cannot contain '=': '{vname}'"),
                    ));
                    continue;
                }
                let (seen, list) = if directive == "setenv" {
                    (&mut setenv_at, &mut class.setenv)
                } else {
                    (&mut subst_at, &mut class.subst)
                };
                if let Some(col) = seen.get(vname) {
                    diags.push(err(
                        name_range,
                        "A008",
                        format!(
                            "'{directive} {vname}' is given twice for class '{cname}' \
                             (first at column {col})"
                        ),
                    ));
                    continue;
                }
                seen.insert(vname.to_owned(), kw_col);
                list.push((vname.to_owned(), value.to_owned()));
                let at = arg_range.end - value.len();
                check_template(src, ll, at, value, directive, &mut class);
            }
            Shape::Class => {
                if arg.is_empty() {
                    diags.push(missing("the name of a class"));
                    continue;
                }
                if arg.contains(char::is_whitespace) {
                    let nlen = arg.find(char::is_whitespace).unwrap_or(arg.len());
                    let extra_range = trim_range(text, arg_range.start + nlen..arg_range.end);
                    diags.push(err(
                        extra_range,
                        "A005",
                        format!("'see' takes one class name; '{arg}' is more than one word"),
                    ));
                    continue;
                }
                class.see = Some((arg.to_owned(), pos_of(arg_range.clone())));
            }
            Shape::Block => {
                let seconds = match arg {
                    "" | "cmdonly" => None,
                    _ if arg.contains(char::is_whitespace) => {
                        diags.push(extra("takes at most one argument, a time or 'cmdonly'"));
                        continue;
                    }
                    _ => match crate::timespec::parse_timespec(arg) {
                        Ok(0) => {
                            diags.push(err(
                                arg_range.clone(),
                                "A020",
                                "'block 0s' would end at once; write 'block' for a block \
                                 without end"
                                    .to_owned(),
                            ));
                            continue;
                        }
                        Ok(s) => Some(s),
                        Err(e) => {
                            diags.push(err(
                                arg_range.clone(),
                                "A020",
                                format!(
                                    "'block' takes a time (as in 1h or 7d) or 'cmdonly', not \
                                     '{arg}': {e}"
                                ),
                            ));
                            continue;
                        }
                    },
                };
                class.block = Some(super::BlockRequest {
                    seconds,
                    cmd_only: arg == "cmdonly",
                });
                block_range = Some(kw_range.clone());
            }
            Shape::File => {
                if arg.is_empty() {
                    diags.push(missing("a file name"));
                    continue;
                }
                class.msgfile = Some(super::At {
                    value: arg.to_owned(),
                    pos: pos_of(arg_range.clone()),
                });
                if let Some(other) = conflict(directive, &kw_range, &mut run_like) {
                    diags.push(err(
                        kw_range.clone(),
                        "A009",
                        format!(
                            "class '{cname}' has both '{other}' and '{directive}'; only one of \
                             them can happen"
                        ),
                    ));
                }
            }
            Shape::Sandbox => {
                if arg.is_empty() {
                    diags.push(missing(match directive {
                        "user" => "a user name",
                        "rlimit" => "a resource and a value",
                        "chdir" => "a directory",
                        "timeout" => "a time",
                        _ => "a number",
                    }));
                    continue;
                }
                let value = match super::sandbox::parse(directive, arg) {
                    Ok(v) => v,
                    Err(m) => {
                        diags.push(err(arg_range.clone(), "A022", m));
                        continue;
                    }
                };
                let at = pos_of(arg_range.clone());
                let sb = &mut class.sandbox;
                use super::sandbox::Value as V;
                match value {
                    V::User(u) => sb.user = Some(super::At { value: u, pos: at }),
                    V::Nice(n) => sb.nice = Some(n),
                    V::Umask(m) => sb.umask = Some(m),
                    V::Timeout(t) => sb.timeout = Some(t),
                    V::Chdir(d) => sb.chdir = Some(super::At { value: d, pos: at }),
                    V::Rlimit(r) => {
                        if let Some(col) = rlimit_at.get(&r.name) {
                            diags.push(err(
                                arg_range.clone(),
                                "A008",
                                format!(
                                    "'rlimit {}' is given twice for class '{cname}' (first at \
                                     column {col})",
                                    r.name.as_str()
                                ),
                            ));
                            continue;
                        }
                        rlimit_at.insert(r.name, kw_col);
                        sb.rlimits.push(r);
                    }
                }
            }
        }
        first_at.insert(directive, kw_col);
    }
    // A trap or a scanner's connection gets a banner (msg) or nothing; a service for an
    // address that is being blocked contradicts the block (and blockkills would end it).
    if let (Some(range), Some(_)) = (block_range, &class.run) {
        diags.push(err(
            range,
            "A021",
            format!(
                "class '{cname}' has both 'run' and 'block'; a blocked address gets no \
                 service (use 'msg' for a banner, or 'drop')"
            ),
        ));
        class.block = None;
    }
    Some(class)
}

/// Records `directive` (run, msg, msgfile, failrun or failmsg) and reports A009 when the
/// class already has another of its group: only one of run, msg and msgfile can happen to an
/// accepted connection, only one of failrun and failmsg to a refused one.
fn conflict(
    directive: &'static str,
    kw_range: &std::ops::Range<usize>,
    seen: &mut HashMap<&'static str, std::ops::Range<usize>>,
) -> Option<&'static str> {
    let group: &[&'static str] = if matches!(directive, "failrun" | "failmsg") {
        &["failrun", "failmsg"]
    } else {
        &["run", "msg", "msgfile"]
    };
    let other = group
        .iter()
        .find(|o| **o != directive && seen.contains_key(**o))
        .copied();
    seen.insert(directive, kw_range.clone());
    other
}

/// Checks one template at byte `at` of the logical line: malformed substitutions (A018), and
/// names that are not built-ins in `record` (A019; it sees no `subst` names), go to the
/// class's `template_diags`; other names that are not built-ins are kept for the resolver,
/// which knows the `see` chains.
fn check_template(
    src: &SourceFile,
    ll: &LogicalLine,
    at: usize,
    template: &str,
    directive: &'static str,
    class: &mut RawClass,
) {
    for f in super::templates::scan(template) {
        match f {
            super::templates::Finding::Bad(r, m) => class.template_diags.push(src.diag_at(
                Severity::Error,
                "A018",
                ll,
                at + r.start..at + r.end,
                format!("bad substitution in '{directive}': {m}"),
            )),
            super::templates::Finding::Name(r, n) if directive == "record" => {
                class.template_diags.push(src.diag_at(
                    Severity::Error,
                    "A019",
                    ll,
                    at + r.start..at + r.end,
                    format!(
                        "'%({n})' is never defined: record strings see only the built-in names, \
                         and '{n}' is not one"
                    ),
                ));
            }
            super::templates::Finding::Name(r, n) => {
                let (line, col) = src.position(ll, at + r.start);
                let width = u32::try_from(n.chars().count().max(1)).unwrap_or(1);
                class.names.push((n, (line, col, width), directive));
            }
        }
    }
}

/// Warns when a continuation line that starts with a directive name ends up inside the text of
/// the directive before it, which happens when the ' : ' that should end that text is missing
/// (the document's own DNSBL example has this mistake). Only a warning: the text is legal.
fn swallowed_directive(
    src: &SourceFile,
    ll: &LogicalLine,
    range: std::ops::Range<usize>,
    directive: &str,
    diags: &mut Vec<Diagnostic>,
) {
    for (rel, word) in crate::words::words(&ll.text[range.clone()]) {
        let at = range.start + rel;
        if !SHAPES.iter().any(|(d, _)| *d == word) || PROSE_WORDS.contains(&word) {
            continue;
        }
        let (line, col) = src.position(ll, at);
        let phys = src.physical_line(line);
        let indent = phys.len() - phys.trim_start_matches([' ', '\t']).len();
        let starts_line = phys[..indent.min(phys.len())].chars().count() as u32 + 1 == col;
        if line != ll.lineno && starts_line {
            diags.push(src.diag_at(
                Severity::Warning,
                "A016",
                ll,
                at..at + word.len(),
                format!(
                    "'{word}' starts a continuation line but is part of the text of '{directive}'; \
                     if it is meant as a directive, end the line before with ' :'"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(s: &str) -> Vec<&str> {
        split_directives(s, 0).into_iter().map(|r| &s[r]).collect()
    }

    #[test]
    fn separator_needs_whitespace_on_both_sides() {
        assert_eq!(pieces("a : b"), vec!["a", "b"]);
        assert_eq!(pieces("a: b"), vec!["a: b"]);
        assert_eq!(pieces("a :b"), vec!["a :b"]);
        assert_eq!(pieces("a\t:\tb"), vec!["a", "b"]);
        assert_eq!(pieces("a : : b"), vec!["a", ": b"]);
        assert_eq!(pieces("x :"), vec!["x :"]);
        assert_eq!(pieces("x : "), vec!["x", ""]);
    }

    #[test]
    fn shapes_cover_every_directive() {
        let names: Vec<&str> = SHAPES.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, super::super::DIRECTIVES);
    }

    #[test]
    fn ints() {
        assert_eq!(parse_int("10"), Some(10));
        assert_eq!(parse_int("-1"), Some(-1));
        assert_eq!(parse_int("+3"), Some(3));
        assert_eq!(parse_int("1 2"), None);
        assert_eq!(parse_int("a"), None);
        assert_eq!(parse_int("-"), None);
        assert_eq!(parse_int("99999999999999999999"), None);
    }
}
