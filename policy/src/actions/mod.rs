//! The actions file: per-class limits, what to do with a connection, and what to log.
//!
//! Parsed in the parent (which keeps the table and renders commands, messages and logs from it)
//! and in the classifier (which needs the limits to decide). The bytes are the administrator's
//! file. A line is `CLASS: DIRECTIVE [ARGS] [ : DIRECTIVE [ARGS] ...]`, where only a colon with
//! whitespace on both sides separates directives, so arguments may contain `a: b`.
//!
//! Invariants of a loaded [`Actions`]: class names are unique; every `see` target exists and no
//! chain of `see`s loops; each [`ClassAction`] already holds the values merged along its `see`
//! chain (the first class in the chain that gives a directive wins; `setenv` and `subst` are
//! merged name by name, first value winning). `drop`/`run`/`msg` are merged as a group, as are
//! `failrun`/`failmsg`, because the original picks the first class in the chain that names any
//! of them and then uses that class's choice. `block` (issue 10) is merged like `log`: the
//! first class in the chain that gives one decides; a class that ends up with both `run` and
//! `block` is an error (A021), because a blocked address gets no service.

mod parse;
mod resolve;
mod sandbox;
mod templates;

pub use sandbox::{At, Pos, Rlimit, RlimitName, Sandbox, UserSpec, SANDBOX_DIRECTIVES};

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::source::Parsed;

/// Every directive of the actions file, as the documentation lists them.
pub const DIRECTIVES: &[&str] = &[
    "run",
    "msg",
    "failrun",
    "failmsg",
    "drop",
    "reject",
    "quiet",
    "log",
    "faillog",
    "norepeatlog",
    "record",
    "ipmax",
    "connmax",
    "setenv",
    "subst",
    "see",
    "block",
    "msgfile",
    "user",
    "nice",
    "rlimit",
    "umask",
    "timeout",
    "chdir",
];

/// The most bytes of one `msg`/`failmsg` that are sent (the rest is cut and logged): far more
/// than any banner, and it bounds what a stalled peer can pin. A message template longer than
/// this is a warning when the file is read (A017). The parent's message writer uses this same
/// constant.
pub const MAX_MSG_BYTES: usize = 64 * 1024;

/// The classes the decision procedure looks at for default `faillog`/`failmsg` settings.
pub const DEFAULT_REJECT: &str = "DEFAULT-REJECT";
pub const DEFAULT_IPMAX: &str = "DEFAULT-IPMAX";
pub const DEFAULT_CONNMAX: &str = "DEFAULT-CONNMAX";
pub const DEFAULTMSGS: &str = "DEFAULTMSGS";
/// The four classes above.
pub const DEFAULT_NAMES: [&str; 4] = [DEFAULT_REJECT, DEFAULT_IPMAX, DEFAULT_CONNMAX, DEFAULTMSGS];

/// One check the decision procedure makes for a class, in the order it makes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `reject`: always refuses.
    Reject,
    /// `ipmax N`: refuses when the peer address already has N or more counted connections.
    IpMax(i64),
    /// `connmax N`: refuses when the class already has N or more counted connections.
    ConnMax(i64),
}

/// `block [TIMESPEC]` or `block cmdonly`: what the parent does to the peer address of a
/// connection or probe whose action class has it (see [`crate::decide::block_request`]).
/// PortSentry's BLOCK_TCP/BLOCK_UDP 0 is no `block`, 1 is `block`, 2 is `block cmdonly`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockRequest {
    /// How long the block lasts, before `blockincrement`; None: until unblocked by hand.
    pub seconds: Option<u64>,
    /// `block cmdonly`: run the `blockcmd` lines and nothing else: no entry in the blocked
    /// set (so no `blocked`, blockfile, hostsdeny, blockzone or unblockcmd), no kills.
    pub cmd_only: bool,
}

impl std::fmt::Display for BlockRequest {
    /// The directive as written in the actions file.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.cmd_only, self.seconds) {
            (true, _) => f.write_str("block cmdonly"),
            (false, None) => f.write_str("block"),
            (false, Some(s)) => write!(f, "block {s}s"),
        }
    }
}

/// One class's action rule, with everything its `see` chain supplies merged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassAction {
    pub name: String,
    /// Line of the actions file where the class is defined.
    pub lineno: u32,
    /// `run`: argv, split on whitespace before any substitution.
    pub run: Option<Vec<String>>,
    pub msg: Option<String>,
    /// `failrun`: argv, split on whitespace before any substitution.
    pub failrun: Option<Vec<String>>,
    pub failmsg: Option<String>,
    pub drop: bool,
    pub reject: bool,
    pub quiet: bool,
    /// `log` (Some(None)) or `log MESSAGE` (Some(Some(..))).
    pub log: Option<Option<String>>,
    pub faillog: Option<String>,
    pub norepeatlog: bool,
    pub record: Option<String>,
    pub ipmax: Option<i64>,
    pub connmax: Option<i64>,
    /// `block`: the first class in the `see` chain that gives one decides.
    pub block: Option<BlockRequest>,
    /// `msgfile FILE` (an extension): merged with `run`/`msg`/`drop` as one group. The parent
    /// reads the file when it loads the actions file and sends its bytes as they are.
    pub msgfile: Option<At<String>>,
    /// The per-class sandbox (extensions), merged through `see`; it applies to `run` and
    /// `failrun` only.
    pub sandbox: Sandbox,
    /// Environment for run/failrun, in chain order, first value of a name winning.
    pub setenv: Vec<(String, String)>,
    /// Extra substitutions, in the order they are expanded (chain order, then file order).
    pub subst: Vec<(String, String)>,
    /// The class's own `see` target, if any.
    pub see: Option<String>,
    /// The table index of the class this class sees (its `see` target), if any. The whole
    /// chain is [`Actions::chain`]; it is not stored per class, because a long chain stored in
    /// every member is quadratic in memory.
    pub see_idx: Option<u32>,
    /// The refusal checks in the order the decision procedure makes them: along the chain,
    /// `reject`, `ipmax`, `connmax` of each class, each limit only from the first class in the
    /// chain that sets it (a later, stricter one is shadowed), and nothing after a `reject`.
    pub limits: Vec<Limit>,
    /// The directives this class gives itself (not through `see`), as `run`, `log`,
    /// `setenv NAME`, `subst NAME`...; used to name the right class in error messages.
    pub own_directives: Vec<String>,
}

impl ClassAction {
    /// Whether this class wants something done with accepted connections.
    pub fn has_action(&self) -> bool {
        self.drop || self.run.is_some() || self.has_msg()
    }

    /// Whether accepted connections get a message: `msg` or `msgfile`.
    pub fn has_msg(&self) -> bool {
        self.msg.is_some() || self.msgfile.is_some()
    }
}

/// A loaded actions file. Cheap to share between threads (no interior mutability).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actions {
    classes: Vec<ClassAction>,
    index: HashMap<String, u32>,
}

impl Actions {
    pub fn index_of(&self, class: &str) -> Option<u32> {
        self.index.get(class).copied()
    }

    pub fn get(&self, idx: u32) -> Option<&ClassAction> {
        self.classes.get(idx as usize)
    }

    /// The class named `class`, if the file defines it.
    pub fn by_name(&self, class: &str) -> Option<&ClassAction> {
        self.index_of(class).and_then(|i| self.get(i))
    }

    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Class names in file order.
    pub fn class_names(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.name.clone()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ClassAction> {
        self.classes.iter()
    }

    /// The `see` chain of class `idx`: the class itself first, then each class it sees, as
    /// table indices. Finite: a loaded table has no `see` loops.
    pub fn chain(&self, idx: u32) -> impl Iterator<Item = u32> + '_ {
        let first = self.get(idx).map(|_| idx);
        std::iter::successors(first, |&i| self.get(i).and_then(|c| c.see_idx))
    }
}

/// The values of an actions file that the parent checks against the host (users, `chdir`
/// directories, msgfiles), as written, in file order, from every directive that parses, even
/// when other lines have errors: `-C` reports host problems with the syntax ones, at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostValues {
    pub users: Vec<At<UserSpec>>,
    pub dirs: Vec<At<String>>,
    pub msgfiles: Vec<At<String>>,
}

/// See [`HostValues`].
pub fn host_values(name: &str, text: &str) -> HostValues {
    let (raw, _, _) = parse::parse_file(name, text);
    let mut out = HostValues::default();
    for c in raw {
        out.users.extend(c.sandbox.user);
        out.dirs.extend(c.sandbox.chdir);
        out.msgfiles.extend(c.msgfile);
    }
    out
}

/// Parses an actions file: every error and warning, and the table when there were no errors.
/// `%(name)s` templates are not checked (see [`parse_actions_expanding`]): this is the
/// classifier's view, which only needs the limits and must accept whatever the parent loaded.
pub fn parse_actions(name: &str, text: &str) -> Parsed<Actions> {
    parse_actions_expanding(name, text, false)
}

/// Parses an actions file whose strings will be expanded when `substitutions` is true (the
/// parent's view, and -C's): then every template is also checked as it will be expanded, and
/// what would fail for every connection is an error here. A malformed `%` (A018); a name that
/// is not a built-in and that no `subst` of the class, or of a class that sees it, defines (any
/// class's for the default classes' texts, none for `record`) (A019). With substitutions off
/// the strings are sent as written, so they are not checked.
pub fn parse_actions_expanding(name: &str, text: &str, substitutions: bool) -> Parsed<Actions> {
    let (raw, mut diags, src) = parse::parse_file(name, text);
    let value = resolve::resolve(&src, raw, &mut diags, substitutions);
    diags.sort_by_key(|d| (d.line, d.col));
    let value = if diags
        .iter()
        .any(|d| d.severity == crate::source::Severity::Error)
    {
        None
    } else {
        value
    };
    Parsed {
        value,
        diagnostics: diags,
    }
}
