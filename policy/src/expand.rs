//! `%(name)s` substitution: turning a decision into the command line, environment, message and
//! log lines for one connection.
//!
//! Runs in the parent, with the parent's own actions table; the facts come from the
//! classifier's verdict (already validated into newtypes by the receiver) and from the accepted
//! socket. The templates are the administrator's. Nothing here can make a command run that the
//! actions file does not name: `run`/`failrun` are split into words before substitution, so a
//! value with spaces never becomes extra arguments.
//!
//! Formatting follows the Python `%` operator with a mapping, which portnanny used: `%%` is a
//! percent sign, `%(name)` is followed by optional flags (`#0- +`), width, `.precision`, a
//! length letter (ignored) and a conversion (`s r a d i u o x X c f F`). Numbers (ports, line
//! numbers, seconds) format with `d`; strings with `d` are an error, as in Python. A `%` that is
//! not `%%` or `%(name)...` is an error (Python would format the whole mapping or fail).
//!
//! Names: built-ins win over `subst` names only when the built-in is defined for this
//! connection (hostname facts only when looked up, identd only when it answered, and so on);
//! an unknown name, or a built-in that is undefined and has no `subst`, is an error that names
//! the class, the directive and the name. `subst` values are expanded once, in chain order, each
//! seeing the ones before it. `record` strings see no `subst` names.

use std::fmt;
use std::net::SocketAddr;

use crate::actions::{Actions, ClassAction};
use crate::decide::{faillog_source, failmsg_source, Decision, Disposition, FailLog, Refusal};
use crate::facts::{Classification, HostInfo, MatchedClass, SeenTimes};
pub use crate::template::{format_template, ExpandErrorKind, Value, BUILTINS};

// The internal default log lines are portnanny 2's, byte for byte: they are an interface
// (log watchers and summaries match on them), and issue 2 asks for the same log lines.

/// Internal default `log` message (accepted connection).
pub const DEFAULT_LOG: &str = "accepted: %(connsum)s by %(class)s";
/// Internal default `faillog` message for `reject`.
pub const DEFAULT_REJECT_LOG: &str = "rejected: %(connsum)s by %(class)s";
/// Internal default `faillog` message for a connection limit.
pub const DEFAULT_LIMIT_LOG: &str = "refused: %(connsum)s rejected by %(class)s %(limit)s limit";

/// What the parent knows about a connection when it renders the decision.
#[derive(Clone, Copy, Debug)]
pub struct ExpandFacts<'a> {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// Hostname lookup result, if the rules looked the host up.
    pub host: Option<&'a HostInfo>,
    /// The identd answer, if the rules asked and identd answered.
    pub identd: Option<&'a str>,
    /// First/last seen, if the rules consulted the history.
    pub seen: Option<SeenTimes>,
    pub classes: &'a Classification,
}

/// A log line and whether the class asked for `norepeatlog` (the caller compares it with the
/// last log line it wrote).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub text: String,
    pub norepeat: bool,
}

/// Everything the parent needs to carry out a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// Run / FailRun: the argv.
    pub argv: Option<Result<Vec<String>, ExpandError>>,
    /// `setenv` values for Run / FailRun (empty otherwise), merged through `see`.
    pub env: Result<Vec<(String, String)>, ExpandError>,
    /// Msg / FailMsg: the text to send; None for a `msgfile` (the parent sends the file).
    pub message: Option<Result<String, ExpandError>>,
    /// The `log` / `faillog` line, including defaults, when the decision says to log.
    pub log: Option<Result<LogLine, ExpandError>>,
    /// One per `decision.records`, in the same order.
    pub records: Vec<Result<String, ExpandError>>,
}

/// A substitution error: the class whose text failed, the directive, and what failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpandError {
    /// The class whose directive holds the text (a see target or default class included).
    pub class: String,
    /// The directive (`run`, `faillog`, `setenv NAME`, `subst NAME`...).
    pub directive: String,
    /// The action class it was rendered for, when that is a different class.
    pub for_class: Option<String>,
    pub kind: ExpandErrorKind,
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "class {}, {}", self.class, self.directive)?;
        if let Some(c) = &self.for_class {
            write!(f, " (used for class {c})")?;
        }
        match &self.kind {
            ExpandErrorKind::Unknown(n) => {
                write!(f, ": %({n})s is not a known substitution")
            }
            ExpandErrorKind::Undefined(n) => {
                write!(f, ": %({n})s is not defined for this connection")
            }
            ExpandErrorKind::BadFormat(why) => write!(f, ": {why}"),
            ExpandErrorKind::Missing => write!(f, ": the class has no such directive"),
            ExpandErrorKind::NoSuchClass(i) => {
                write!(f, ": no class number {i} in the actions table")
            }
        }
    }
}

impl std::error::Error for ExpandError {}

/// The built-in names for one class of one connection.
struct Builtins<'a> {
    facts: &'a ExpandFacts<'a>,
    class: &'a str,
    matched: Option<&'a MatchedClass>,
    limit: Option<&'static str>,
}

impl Builtins<'_> {
    fn get(&self, name: &str) -> Option<Value> {
        let f = self.facts;
        let s = |v: &str| Some(Value::Str(v.to_owned()));
        // Formatted only for the names that use it: most messages name no address at all.
        let ip = || f.remote.ip().to_string();
        let hostname = || {
            f.host
                .and_then(HostInfo::verified)
                .map_or_else(ip, str::to_owned)
        };
        let who = || match f.identd {
            Some(id) if !id.is_empty() => format!("{id}@"),
            _ => String::new(),
        };
        match name {
            "ip" => Some(Value::Str(ip())),
            "remport" => Some(Value::Int(i64::from(f.remote.port()))),
            "localip" => Some(Value::Str(f.local.ip().to_string())),
            "port" => Some(Value::Int(i64::from(f.local.port()))),
            "hnstatus" => f.host.and_then(|h| s(h.status.as_str())),
            "claimedhn" => f.host.and_then(|h| h.claimed.as_deref()).and_then(s),
            "hostname" => Some(Value::Str(hostname())),
            "identd" => f.identd.filter(|i| !i.is_empty()).and_then(s),
            "seensince" => f
                .seen
                .map(|t| Value::Int(i64::try_from(t.first_secs_ago).unwrap_or(i64::MAX))),
            "lastseen" => f
                .seen
                .and_then(|t| t.last_secs_ago)
                .map(|n| Value::Int(i64::try_from(n).unwrap_or(i64::MAX))),
            "connsum" => Some(Value::Str(format!("{}{}", who(), hostname()))),
            "connipsum" => Some(Value::Str(format!("{}{}", who(), ip()))),
            "class" => s(self.class),
            "lineno" => self.matched.map(|m| Value::Int(i64::from(m.lineno))),
            "label" => self
                .matched
                .and_then(|m| m.label.as_deref())
                .filter(|l| !l.is_empty())
                .map(|l| Value::Str(l.replace('_', " "))),
            "cr" => s("\r"),
            "nl" => s("\n"),
            "eol" => s("\r\n"),
            "limit" => self.limit.and_then(s),
            _ => None,
        }
    }

    /// Built-in if defined, else `subst`, else an error saying which.
    fn lookup(&self, name: &str, subst: &[(String, String)]) -> Result<Value, ExpandErrorKind> {
        if let Some(v) = self.get(name) {
            return Ok(v);
        }
        if let Some((_, v)) = subst.iter().find(|(n, _)| n == name) {
            return Ok(Value::Str(v.clone()));
        }
        if BUILTINS.contains(&name) {
            Err(ExpandErrorKind::Undefined(name.to_owned()))
        } else {
            Err(ExpandErrorKind::Unknown(name.to_owned()))
        }
    }
}

/// The expansion context for one class's strings.
struct Expander<'a> {
    builtins: Builtins<'a>,
    subst: Vec<(String, String)>,
    on: bool,
}

impl Expander<'_> {
    fn expand(&self, template: &str) -> Result<String, ExpandErrorKind> {
        if !self.on {
            return Ok(template.to_owned());
        }
        format_template(template, &|n| self.builtins.lookup(n, &self.subst))
    }
}

fn err_for(
    src: &str,
    directive: impl Into<String>,
    action: &str,
    kind: ExpandErrorKind,
) -> ExpandError {
    ExpandError {
        class: src.to_owned(),
        directive: directive.into(),
        for_class: (src != action).then(|| action.to_owned()),
        kind,
    }
}

/// Renders a decision: argv, environment, message, log line and record lines.
pub fn render(
    actions: &Actions,
    decision: &Decision,
    facts: &ExpandFacts,
    substitutions: bool,
) -> Rendered {
    let limit = decision.refusal.and_then(Refusal::limit_name);
    let records = decision
        .records
        .iter()
        .map(|&idx| {
            let Some(rc) = actions.get(idx) else {
                return Err(ExpandError {
                    class: String::new(),
                    directive: "record".to_owned(),
                    for_class: None,
                    kind: ExpandErrorKind::NoSuchClass(idx),
                });
            };
            let Some(text) = rc.record.as_deref() else {
                return Err(err_for(
                    &rc.name,
                    "record",
                    &rc.name,
                    ExpandErrorKind::Missing,
                ));
            };
            let ex = Expander {
                builtins: Builtins {
                    facts,
                    class: &rc.name,
                    matched: facts.classes.get(&rc.name),
                    limit,
                },
                subst: Vec::new(),
                on: substitutions,
            };
            ex.expand(text)
                .map_err(|k| err_for(&rc.name, "record", &rc.name, k))
        })
        .collect();

    let mut out = Rendered {
        argv: None,
        env: Ok(Vec::new()),
        message: None,
        log: None,
        records,
    };
    let Some(ci) = decision.action_class else {
        return out;
    };
    let Some(class) = actions.get(ci) else {
        let e = ExpandError {
            class: String::new(),
            directive: "action".to_owned(),
            for_class: None,
            kind: ExpandErrorKind::NoSuchClass(ci),
        };
        out.env = Err(e.clone());
        out.log = decision.log.then(|| Err(e.clone()));
        match decision.disposition {
            Disposition::Run | Disposition::FailRun => out.argv = Some(Err(e)),
            Disposition::Msg | Disposition::FailMsg => out.message = Some(Err(e)),
            Disposition::Close => {}
        }
        return out;
    };
    let name = class.name.as_str();
    let mut ex = Expander {
        builtins: Builtins {
            facts,
            class: name,
            matched: facts.classes.get(name),
            limit,
        },
        subst: Vec::new(),
        on: substitutions,
    };

    // subst values are expanded once, in order, each seeing those before it (which is how
    // the first class of a chain can feed a later class's subst).
    let mut subst_err = None;
    if substitutions {
        for (k, v) in &class.subst {
            match ex.expand(v) {
                Ok(text) => ex.subst.push((k.clone(), text)),
                Err(kind) => {
                    let src = source_of(actions, class, &format!("subst {k}"));
                    subst_err = Some(err_for(src, format!("subst {k}"), name, kind));
                    break;
                }
            }
        }
    }
    // A failed subst spoils every string of the action class, as it did in the original.
    let run = |src: &str, directive: &str, text: &str| -> Result<String, ExpandError> {
        if let Some(e) = &subst_err {
            return Err(e.clone());
        }
        ex.expand(text)
            .map_err(|k| err_for(src, directive, name, k))
    };

    match decision.disposition {
        Disposition::Run | Disposition::FailRun => {
            let (directive, words) = if decision.disposition == Disposition::Run {
                ("run", class.run.as_ref())
            } else {
                ("failrun", class.failrun.as_ref())
            };
            let src = source_of(actions, class, directive);
            out.argv = Some(match words {
                Some(words) => words.iter().map(|w| run(src, directive, w)).collect(),
                None => Err(err_for(name, directive, name, ExpandErrorKind::Missing)),
            });
            out.env = class
                .setenv
                .iter()
                .map(|(k, v)| {
                    let src = source_of(actions, class, &format!("setenv {k}"));
                    run(src, &format!("setenv {k}"), v).map(|t| (k.clone(), t))
                })
                .collect();
        }
        // A msgfile's bytes are the parent's, read at load time and sent as they are: nothing
        // to expand, so no message here.
        Disposition::Msg if class.msgfile.is_some() => {}
        Disposition::Msg => {
            let src = source_of(actions, class, "msg");
            out.message = Some(match &class.msg {
                Some(m) => run(src, "msg", m),
                None => Err(err_for(name, "msg", name, ExpandErrorKind::Missing)),
            });
        }
        Disposition::FailMsg => {
            let found = decision
                .refusal
                .and_then(|r| failmsg_source(actions, class, r));
            out.message = Some(match found {
                Some((src, m)) => {
                    let src = if std::ptr::eq(src, class) {
                        source_of(actions, class, "failmsg")
                    } else {
                        src.name.as_str()
                    };
                    run(src, "failmsg", m)
                }
                None => Err(err_for(name, "failmsg", name, ExpandErrorKind::Missing)),
            });
        }
        Disposition::Close => {}
    }

    if decision.log {
        let line = match decision.refusal {
            None => match &class.log {
                Some(Some(m)) => {
                    let src = source_of(actions, class, "log");
                    run(src, "log", m)
                }
                Some(None) => internal(&ex, name, "log", DEFAULT_LOG),
                None => Err(err_for(name, "log", name, ExpandErrorKind::Missing)),
            },
            Some(refusal) => match faillog_source(actions, class, refusal) {
                Some(FailLog::Text(src, m)) => {
                    let src = if std::ptr::eq(src, class) {
                        source_of(actions, class, "faillog")
                    } else {
                        src.name.as_str()
                    };
                    run(src, "faillog", m)
                }
                Some(FailLog::Internal) => {
                    let template = if refusal == Refusal::Reject {
                        DEFAULT_REJECT_LOG
                    } else {
                        DEFAULT_LIMIT_LOG
                    };
                    internal(&ex, name, "faillog", template)
                }
                None => Err(err_for(name, "faillog", name, ExpandErrorKind::Missing)),
            },
        };
        out.log = Some(line.map(|text| LogLine {
            text,
            norepeat: class.norepeatlog,
        }));
    }
    out
}

/// Internal default messages are ours, not the administrator's, so they are expanded even when
/// substitutions are off (the original would have logged the raw template).
fn internal(
    ex: &Expander,
    class: &str,
    directive: &str,
    template: &str,
) -> Result<String, ExpandError> {
    format_template(template, &|n| ex.builtins.lookup(n, &[]))
        .map_err(|k| err_for(class, format!("{directive} (built-in default)"), class, k))
}

/// The class in `class`'s see chain whose own text supplied `directive` (for error messages).
fn source_of<'a>(actions: &'a Actions, class: &'a ClassAction, directive: &str) -> &'a str {
    actions
        .index_of(&class.name)
        .into_iter()
        .flat_map(|ci| actions.chain(ci))
        .filter_map(|i| actions.get(i))
        .find(|c| c.own_directives.iter().any(|d| d == directive))
        .map_or(class.name.as_str(), |c| c.name.as_str())
}

/// Looks a name up as a string, for tests and for `-C` style previews.
pub fn builtin_value(
    name: &str,
    facts: &ExpandFacts,
    class: &str,
    refusal: Option<Refusal>,
) -> Option<String> {
    Builtins {
        facts,
        class,
        matched: facts.classes.get(class),
        limit: refusal.and_then(Refusal::limit_name),
    }
    .get(name)
    .map(|v| v.as_text())
}
