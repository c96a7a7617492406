//! nanny.conf: the main configuration file, read once at start (and by `-C`).
//!
//! Runs in the parent, as root, before anything else; the bytes are the administrator's file.
//! Every directive takes exactly one argument (`directive ARGUMENT`), except `passenv`, which
//! takes any number of names, `listen`, whose `PORT[@IP]` may be followed by options (see
//! [`crate::listenopts`]), and the sentry directives (see [`crate::sentry`]). All directives
//! except `listen`, `passenv`, `trap`, `stealth`, `blockcmd`, `unblockcmd` and `neverblock` may be
//! given once. The file must name the rules file and the actions file and have
//! at least one `listen`. Every problem is reported (not just the first), each with file, line
//! and column; the value is returned only when there were none.
//!
//! Besides portnanny's own directives this accepts the extensions of this implementation:
//! `privsepuser`, `chrootdir`, `dnstimeout`, `identdtimeout`, `answersontimeout`, `cachettl`,
//! `cachesize`, `passenv` (xinetd's), `ipv4prefix` and `ipv6prefix` (see [`crate::grouping`]),
//! the listen options, and the sentry directives (`trap`, `stealth`,
//! `blockfile`, `historyfile`, `blockcmd`, `unblockcmd`, `hostsdeny`, `neverblock`,
//! `blockzone`, `blockbudget`, `blockincrement`, `blockkills`), parsed by [`crate::sentry`].

use std::collections::HashMap;
use std::fmt;

pub use crate::listenopts::ListenOptions;
pub use crate::words::{parse_listen, Listen};
use crate::words::{parse_u32, words};

use crate::control_conf::ControlConf;
use crate::grouping::{parse_prefix, Grouping, DEFAULT_IPV4_PREFIX, DEFAULT_IPV6_PREFIX};
use crate::sentry::{SentryBuilder, SentryConf};
use crate::source::{Diagnostic, LogicalLine, Parsed, Severity, SourceFile};
use crate::timespec::parse_timespec;

/// The parsed nanny.conf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NannyConf {
    /// The rules file, as written (the binary resolves a relative path against the directory
    /// of the configuration file).
    pub rulefile: String,
    /// The actions file, as written.
    pub actionfile: String,
    /// Where to listen; never empty.
    pub listens: Vec<Listen>,
    /// Extension: the options of the `listen` lines that have any (PROXY protocol, backlog,
    /// TCP_NODELAY, SO_KEEPALIVE), keyed by their listen (unique: a listen is never given
    /// twice). A listen not here is a portnanny 2 one; see [`NannyConf::listen_options`].
    pub listen_options: Vec<(Listen, ListenOptions)>,
    /// Services run as this user.
    pub user: Option<String>,
    /// Forget an address's connection times after this many idle seconds.
    pub dropipafter: Option<u64>,
    /// Seconds between expiry sweeps (0: at every connection). Default 60.
    pub expireevery: u64,
    pub onfileerror: OnFileError,
    /// `substitutions on|off`; default on.
    pub substitutions: bool,
    /// Rules evaluations at once; 0 (the default) means one at a time.
    pub maxthreads: u32,
    /// The class connections get when `maxthreads` evaluations are already running.
    pub aftermaxthreads: Option<String>,
    /// Extension: the user the classifier and the resolver run as.
    pub privsepuser: Option<String>,
    /// Extension: the classifier's empty root directory (the binary picks a default).
    pub chrootdir: Option<String>,
    /// Extension: per-query DNS timeout in milliseconds (default 5000).
    pub dnstimeout_ms: u32,
    /// Extension: identd query timeout in milliseconds (default 10000).
    pub identdtimeout_ms: u32,
    /// Extension: `answerson:` connect timeout in milliseconds (default 5000).
    pub answersontimeout_ms: u32,
    /// Extension: how long the resolver caches an answer, in seconds (default 300).
    pub cachettl_secs: u32,
    /// Extension: most entries the resolver caches (default 10000; 0 turns caching off).
    pub cachesize: u32,
    /// Extension (xinetd's `passenv`): None (no `passenv` line) means services inherit the
    /// daemon's whole environment, as under tcpserver; Some(names) means they start from a
    /// minimal one plus these variables of the daemon's. Every `passenv` line adds its names,
    /// in order, without duplicates.
    pub passenv: Option<Vec<String>>,
    /// Extension: the sentry directives (traps, stealth watches, blocking); see
    /// [`crate::sentry`].
    pub sentry: SentryConf,
    /// Extension: the control socket; see [`crate::control_conf`].
    pub control: ControlConf,
    /// Extension: `ipv4prefix` and `ipv6prefix`, how source addresses are grouped for ipmax,
    /// `rate:` and the history (default 32 and 128: not at all).
    pub grouping: Grouping,
}

impl fmt::Display for NannyConf {
    /// The configuration as a nanny.conf that parses back to the same value (every directive
    /// written out, defaults included).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rulefile {}", self.rulefile)?;
        writeln!(f, "actionfile {}", self.actionfile)?;
        for l in &self.listens {
            writeln!(f, "listen {l}{}", self.listen_options(l))?;
        }
        if let Some(u) = &self.user {
            writeln!(f, "user {u}")?;
        }
        if let Some(d) = self.dropipafter {
            writeln!(f, "dropipafter {d}s")?;
        }
        writeln!(f, "expireevery {}s", self.expireevery)?;
        let ofe = match self.onfileerror {
            OnFileError::UseOld => "use-old",
            OnFileError::Drop => "drop",
        };
        writeln!(f, "onfileerror {ofe}")?;
        let subst = if self.substitutions { "on" } else { "off" };
        writeln!(f, "substitutions {subst}")?;
        writeln!(f, "maxthreads {}", self.maxthreads)?;
        if let Some(c) = &self.aftermaxthreads {
            writeln!(f, "aftermaxthreads {c}")?;
        }
        if let Some(u) = &self.privsepuser {
            writeln!(f, "privsepuser {u}")?;
        }
        if let Some(d) = &self.chrootdir {
            writeln!(f, "chrootdir {d}")?;
        }
        writeln!(f, "dnstimeout {}ms", self.dnstimeout_ms)?;
        writeln!(f, "identdtimeout {}ms", self.identdtimeout_ms)?;
        writeln!(f, "answersontimeout {}ms", self.answersontimeout_ms)?;
        writeln!(f, "cachettl {}s", self.cachettl_secs)?;
        writeln!(f, "cachesize {}", self.cachesize)?;
        if let Some(names) = &self.passenv {
            f.write_str("passenv")?;
            for n in names {
                write!(f, " {n}")?;
            }
            writeln!(f)?;
        }
        if !self.grouping.is_identity() {
            writeln!(f, "ipv4prefix {}", self.grouping.v4())?;
            writeln!(f, "ipv6prefix {}", self.grouping.v6())?;
        }
        write!(f, "{}", self.sentry)?;
        write!(f, "{}", self.control)
    }
}

impl NannyConf {
    /// The options of listen `l` (the default, a plain listen, when it has none).
    pub fn listen_options(&self, l: &Listen) -> ListenOptions {
        self.listen_options
            .iter()
            .find(|(k, _)| k == l)
            .map(|(_, o)| o.clone())
            .unwrap_or_default()
    }
}

/// What to do when a reloaded rules or actions file has an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnFileError {
    /// Keep using the old version until the new one loads.
    #[default]
    UseOld,
    /// Act as if the file were empty until it loads.
    Drop,
}

pub const DEFAULT_EXPIREEVERY: u64 = 60;
pub const DEFAULT_DNSTIMEOUT_MS: u32 = 5000;
pub const DEFAULT_IDENTDTIMEOUT_MS: u32 = 10_000;
pub const DEFAULT_ANSWERSONTIMEOUT_MS: u32 = 5000;
pub const DEFAULT_CACHETTL_SECS: u32 = 300;
pub const DEFAULT_CACHESIZE: u32 = 10_000;

/// Every directive nanny.conf knows, in the order the documentation gives them.
pub const DIRECTIVES: &[&str] = &[
    "rulefile",
    "actionfile",
    "listen",
    "user",
    "dropipafter",
    "expireevery",
    "onfileerror",
    "substitutions",
    "maxthreads",
    "aftermaxthreads",
    "privsepuser",
    "chrootdir",
    "dnstimeout",
    "identdtimeout",
    "answersontimeout",
    "cachettl",
    "cachesize",
    "passenv",
    "ipv4prefix",
    "ipv6prefix",
];

/// Every directive nanny.conf accepts: [`DIRECTIVES`], then the sentry, control and XML-RPC
/// groups', each in the order the documentation gives them. nanny.conf is read once, at start,
/// so a change to any of them needs a restart (the parent's reload says so with this list).
pub fn all_directives() -> impl Iterator<Item = &'static str> {
    DIRECTIVES
        .iter()
        .chain(crate::sentry::DIRECTIVES)
        .chain(crate::control_conf::DIRECTIVES)
        .chain(crate::xmlrpc_conf::DIRECTIVES)
        .copied()
}

/// A nanny.conf directive (the words are [`DIRECTIVES`], in the same order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Dir {
    RuleFile,
    ActionFile,
    Listen,
    User,
    DropIpAfter,
    ExpireEvery,
    OnFileError,
    Substitutions,
    MaxThreads,
    AfterMaxThreads,
    PrivsepUser,
    Chroot,
    DnsTimeout,
    IdentdTimeout,
    AnswersOnTimeout,
    CacheTtl,
    CacheSize,
    PassEnv,
    Ipv4Prefix,
    Ipv6Prefix,
}

const DIRS: [Dir; 20] = [
    Dir::RuleFile,
    Dir::ActionFile,
    Dir::Listen,
    Dir::User,
    Dir::DropIpAfter,
    Dir::ExpireEvery,
    Dir::OnFileError,
    Dir::Substitutions,
    Dir::MaxThreads,
    Dir::AfterMaxThreads,
    Dir::PrivsepUser,
    Dir::Chroot,
    Dir::DnsTimeout,
    Dir::IdentdTimeout,
    Dir::AnswersOnTimeout,
    Dir::CacheTtl,
    Dir::CacheSize,
    Dir::PassEnv,
    Dir::Ipv4Prefix,
    Dir::Ipv6Prefix,
];

/// Where some directives were written, for check mode's cross-file warnings.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConfPositions {
    /// (line, col, width) of the aftermaxthreads argument.
    pub aftermaxthreads: Option<(u32, u32, u32)>,
}

/// Parses nanny.conf.
pub fn parse_conf(name: &str, text: &str) -> Parsed<NannyConf> {
    parse_conf_positions(name, text).0
}

#[derive(Default)]
struct Builder {
    seen: HashMap<&'static str, u32>,
    rulefile: Option<String>,
    actionfile: Option<String>,
    listens: Vec<(Listen, u32, u32, u32)>,
    listen_options: Vec<(Listen, ListenOptions)>,
    user: Option<String>,
    dropipafter: Option<u64>,
    expireevery: Option<u64>,
    onfileerror: Option<OnFileError>,
    substitutions: Option<bool>,
    maxthreads: Option<u32>,
    aftermaxthreads: Option<String>,
    privsepuser: Option<String>,
    chrootdir: Option<String>,
    dnstimeout_ms: Option<u32>,
    identdtimeout_ms: Option<u32>,
    answersontimeout_ms: Option<u32>,
    cachettl_secs: Option<u32>,
    cachesize: Option<u32>,
    passenv: Option<Vec<String>>,
    ipv4prefix: Option<u8>,
    ipv6prefix: Option<u8>,
    sentry: SentryBuilder,
    control: ControlConf,
}

pub(crate) fn parse_conf_positions(name: &str, text: &str) -> (Parsed<NannyConf>, ConfPositions) {
    let src = SourceFile::new(name, text);
    let mut diags = Vec::new();
    let mut pos = ConfPositions::default();
    let lines = match src.logical_lines() {
        Ok(l) => l,
        Err(d) => {
            return (
                Parsed {
                    value: None,
                    diagnostics: vec![d],
                },
                pos,
            )
        }
    };
    let mut b = Builder::default();
    for ll in &lines {
        parse_line(&src, ll, &mut b, &mut diags, &mut pos);
    }

    let listens: Vec<(Listen, u32)> = b.listens.iter().map(|l| (l.0, l.1)).collect();
    b.sentry.finish(&src, &listens, &mut diags);
    crate::control_conf::finish(&src, &b.control, &mut diags);

    // Completeness: these are file-level errors, so they point at the start of the file.
    let missing = |what: &str, why: &str| {
        src.diagnostic(
            Severity::Error,
            "C006",
            1,
            1,
            1,
            format!("there is no '{what}' directive; {why}"),
        )
    };
    if b.rulefile.is_none() {
        diags.push(missing(
            "rulefile",
            "the configuration must name the rules file",
        ));
    }
    if b.actionfile.is_none() {
        diags.push(missing(
            "actionfile",
            "the configuration must name the actions file",
        ));
    }
    if b.listens.is_empty() {
        diags.push(missing(
            "listen",
            "the configuration needs at least one 'listen PORT[@IP]'",
        ));
    }

    diags.sort_by_key(|d| (d.line, d.col));
    let has_errors = diags.iter().any(|d| d.severity == Severity::Error);
    let value = match (b.rulefile, b.actionfile) {
        (Some(rulefile), Some(actionfile)) if !has_errors => Some(NannyConf {
            rulefile,
            actionfile,
            listens: b.listens.iter().map(|l| l.0).collect(),
            listen_options: b.listen_options,
            user: b.user,
            dropipafter: b.dropipafter,
            expireevery: b.expireevery.unwrap_or(DEFAULT_EXPIREEVERY),
            onfileerror: b.onfileerror.unwrap_or_default(),
            substitutions: b.substitutions.unwrap_or(true),
            maxthreads: b.maxthreads.unwrap_or(0),
            aftermaxthreads: b.aftermaxthreads,
            privsepuser: b.privsepuser,
            chrootdir: b.chrootdir,
            dnstimeout_ms: b.dnstimeout_ms.unwrap_or(DEFAULT_DNSTIMEOUT_MS),
            identdtimeout_ms: b.identdtimeout_ms.unwrap_or(DEFAULT_IDENTDTIMEOUT_MS),
            answersontimeout_ms: b.answersontimeout_ms.unwrap_or(DEFAULT_ANSWERSONTIMEOUT_MS),
            cachettl_secs: b.cachettl_secs.unwrap_or(DEFAULT_CACHETTL_SECS),
            cachesize: b.cachesize.unwrap_or(DEFAULT_CACHESIZE),
            passenv: b.passenv,
            sentry: b.sentry.conf,
            control: b.control,
            // Both lengths were range-checked by parse_prefix.
            grouping: Grouping::new(
                b.ipv4prefix.unwrap_or(DEFAULT_IPV4_PREFIX),
                b.ipv6prefix.unwrap_or(DEFAULT_IPV6_PREFIX),
            )
            .unwrap_or_default(),
        }),
        _ => None,
    };
    (
        Parsed {
            value,
            diagnostics: diags,
        },
        pos,
    )
}

fn parse_line(
    src: &SourceFile,
    ll: &LogicalLine,
    b: &mut Builder,
    diags: &mut Vec<Diagnostic>,
    pos: &mut ConfPositions,
) {
    let ws = words(&ll.text);
    let Some(&(d_off, dword)) = ws.first() else {
        return;
    };
    let err = |range: std::ops::Range<usize>, code: &'static str, msg: String| {
        src.diag_at(Severity::Error, code, ll, range, msg)
    };
    let dspan = d_off..d_off + dword.len();
    if crate::sentry::DIRECTIVES.contains(&dword) {
        let listens: Vec<(Listen, u32)> = b.listens.iter().map(|l| (l.0, l.1)).collect();
        crate::sentry::parse_directive(src, ll, &ws, &listens, &mut b.sentry, diags);
        return;
    }
    if crate::control_conf::DIRECTIVES.contains(&dword) {
        crate::control_conf::parse_directive(src, ll, &ws, &mut b.control, diags);
        return;
    }
    if crate::xmlrpc_conf::DIRECTIVES.contains(&dword) {
        crate::xmlrpc_conf::parse_directive(src, ll, &ws, &mut b.control.xmlrpc, diags);
        return;
    }
    let Some((dir, &directive)) = DIRS.iter().zip(DIRECTIVES).find(|(_, d)| **d == dword) else {
        diags.push(err(
            dspan,
            "C001",
            format!(
                "unknown directive '{dword}' (known: {}, {}, {}, {})",
                DIRECTIVES.join(", "),
                crate::sentry::DIRECTIVES.join(", "),
                crate::control_conf::DIRECTIVES.join(", "),
                crate::xmlrpc_conf::DIRECTIVES.join(", ")
            ),
        ));
        return;
    };
    if *dir == Dir::PassEnv {
        parse_passenv(src, ll, ws.get(1..).unwrap_or_default(), b, diags);
        return;
    }
    let Some(&(a_off, arg)) = ws.get(1) else {
        diags.push(err(
            dspan,
            "C002",
            format!("'{directive}' needs an argument ({})", usage(*dir)),
        ));
        return;
    };
    // Listen options are parsed with the listen, below.
    if let Some(&(x_off, extra)) = ws.get(2).filter(|_| *dir != Dir::Listen) {
        let end = ll.text.trim_end().len();
        let hint = if extra.starts_with('#') {
            " (a comment must be on a line of its own)"
        } else {
            ""
        };
        diags.push(err(
            x_off..end,
            "C003",
            format!(
                "'{directive}' takes exactly one argument ({}); this is extra{hint}",
                usage(*dir)
            ),
        ));
        return;
    }
    let aspan = a_off..a_off + arg.len();
    if *dir != Dir::Listen {
        if let Some(first) = b.seen.get(directive) {
            diags.push(err(
                dspan,
                "C004",
                format!(
                    "'{directive}' may be given only once; it was already given on line {first}"
                ),
            ));
            return;
        }
        b.seen.insert(directive, ll.lineno);
    }
    let bad = |msg: String| err(aspan.clone(), "C005", msg);
    match dir {
        // Handled before the one-argument checks, by parse_passenv.
        Dir::PassEnv => {}
        Dir::RuleFile => b.rulefile = Some(arg.to_owned()),
        Dir::ActionFile => b.actionfile = Some(arg.to_owned()),
        Dir::User => b.user = Some(arg.to_owned()),
        Dir::PrivsepUser => b.privsepuser = Some(arg.to_owned()),
        // The classifier's root must not depend on the directory portnanny was started from.
        Dir::Chroot if !arg.starts_with('/') => {
            diags.push(bad(format!(
                "chrootdir must be an absolute path; '{arg}' is not"
            )));
        }
        Dir::Chroot => b.chrootdir = Some(arg.to_owned()),
        // The class crosses to the classifier as a ClassName: printable ASCII, 256 bytes.
        Dir::AfterMaxThreads
            if arg.len() > 256 || !arg.bytes().all(|c| (0x21..0x7f).contains(&c)) =>
        {
            diags.push(bad(format!(
                "class names are printable ASCII without spaces, at most 256 bytes; '{arg}' is not"
            )));
        }
        Dir::AfterMaxThreads => {
            let (line, col) = src.position(ll, a_off);
            pos.aftermaxthreads = Some((line, col, arg.chars().count() as u32));
            b.aftermaxthreads = Some(arg.to_owned());
        }
        Dir::Listen => match parse_listen(arg) {
            Ok(l) => {
                let (line, col) = src.position(ll, a_off);
                if let Some(clash) = listen_clash(&b.listens, &l) {
                    diags.push(err(aspan.clone(), "C007", clash));
                } else if let Some(clash) = b.sentry.trap_for_listen(&l) {
                    diags.push(err(aspan.clone(), "C009", clash));
                }
                b.listens.push((l, line, col, arg.chars().count() as u32));
                let opts = crate::listenopts::parse_options(
                    src,
                    ll,
                    ws.get(2..).unwrap_or_default(),
                    diags,
                );
                if !opts.is_plain() {
                    b.listen_options.push((l, opts));
                }
            }
            Err(msg) => {
                diags.push(bad(msg));
                // Still checked, so one run reports every problem of the line.
                crate::listenopts::parse_options(src, ll, ws.get(2..).unwrap_or_default(), diags);
            }
        },
        Dir::DropIpAfter => match parse_timespec(arg) {
            Ok(s) => b.dropipafter = Some(s),
            Err(e) => diags.push(bad(format!("bad time '{arg}': {e}"))),
        },
        // The document allows a bare '0' ("at every connection").
        Dir::ExpireEvery if arg == "0" => b.expireevery = Some(0),
        Dir::ExpireEvery => match parse_timespec(arg) {
            Ok(s) => b.expireevery = Some(s),
            Err(e) => diags.push(bad(format!("bad time '{arg}': {e}"))),
        },
        Dir::OnFileError => match arg {
            "use-old" => b.onfileerror = Some(OnFileError::UseOld),
            "drop" => b.onfileerror = Some(OnFileError::Drop),
            _ => diags.push(bad(format!(
                "onfileerror must be 'use-old' or 'drop', not '{arg}'"
            ))),
        },
        Dir::Substitutions => match arg {
            "on" => b.substitutions = Some(true),
            "off" => b.substitutions = Some(false),
            _ => diags.push(bad(format!(
                "substitutions must be 'on' or 'off', not '{arg}'"
            ))),
        },
        Dir::MaxThreads => match parse_u32(arg) {
            Some(n) => b.maxthreads = Some(n),
            None => diags.push(bad(format!(
                "maxthreads must be a whole number (0 or more), not '{arg}'"
            ))),
        },
        Dir::CacheSize => match parse_u32(arg) {
            Some(n) => b.cachesize = Some(n),
            None => diags.push(bad(format!(
                "cachesize must be a whole number of entries, not '{arg}'"
            ))),
        },
        Dir::CacheTtl => match parse_timespec(arg).ok().and_then(|s| u32::try_from(s).ok()) {
            Some(s) => b.cachettl_secs = Some(s),
            None => diags.push(bad(format!(
                "bad time '{arg}': a time is a whole number followed by s, m, h or d"
            ))),
        },
        Dir::DnsTimeout | Dir::IdentdTimeout | Dir::AnswersOnTimeout => match parse_timeout_ms(arg)
        {
            Ok(ms) => {
                let slot = match dir {
                    Dir::DnsTimeout => &mut b.dnstimeout_ms,
                    Dir::IdentdTimeout => &mut b.identdtimeout_ms,
                    _ => &mut b.answersontimeout_ms,
                };
                *slot = Some(ms);
            }
            Err(msg) => diags.push(bad(msg)),
        },
        Dir::Ipv4Prefix => match parse_prefix(arg, 32) {
            Ok(n) => b.ipv4prefix = Some(n),
            Err(msg) => diags.push(bad(format!("ipv4prefix: {msg}"))),
        },
        Dir::Ipv6Prefix => match parse_prefix(arg, 128) {
            Ok(n) => b.ipv6prefix = Some(n),
            Err(msg) => diags.push(bad(format!("ipv6prefix: {msg}"))),
        },
    }
}

fn usage(dir: Dir) -> &'static str {
    match dir {
        Dir::RuleFile | Dir::ActionFile => "a file name",
        Dir::Listen => "PORT or PORT@IP, then options",
        Dir::User | Dir::PrivsepUser => "a user name",
        Dir::DropIpAfter | Dir::CacheTtl => "a time such as 30s, 10m, 2h or 1d",
        Dir::ExpireEvery => "a time such as 30s, 10m, 2h or 1d, or 0",
        Dir::OnFileError => "use-old or drop",
        Dir::Substitutions => "on or off",
        Dir::MaxThreads | Dir::CacheSize => "a number",
        Dir::AfterMaxThreads => "a class name",
        Dir::Chroot => "a directory",
        Dir::DnsTimeout | Dir::IdentdTimeout | Dir::AnswersOnTimeout => {
            "a time such as 500ms, 5s or 1m"
        }
        Dir::PassEnv => "environment variable names",
        Dir::Ipv4Prefix => "a prefix length from 1 to 32",
        Dir::Ipv6Prefix => "a prefix length from 1 to 128",
    }
}

/// `passenv [NAME...]`: repeatable; each line adds its names (a line without names still
/// switches services to the minimal environment). A bad name is reported at its own column.
fn parse_passenv(
    src: &SourceFile,
    ll: &LogicalLine,
    names: &[(usize, &str)],
    b: &mut Builder,
    diags: &mut Vec<Diagnostic>,
) {
    let list = b.passenv.get_or_insert_with(Vec::new);
    for &(off, name) in names {
        if !is_env_name(name) {
            let comment = name.starts_with('#');
            let hint = if comment {
                " (a comment must be on a line of its own)"
            } else {
                ""
            };
            diags.push(src.diag_at(
                Severity::Error,
                "C005",
                ll,
                off..off + name.len(),
                format!(
                    "passenv takes environment variable names (letters, digits and '_', not \
                     starting with a digit); '{name}' is not one{hint}"
                ),
            ));
            if comment {
                // The rest is the would-be comment's words, not more bad names.
                break;
            }
        } else if !list.iter().any(|n| n == name) {
            list.push(name.to_owned());
        }
    }
}

/// A portable environment variable name (POSIX: letters, digits, underscore; no leading digit).
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// A timeout: `NNNms`, or a TIMESPEC. Must be more than zero and fit in 32-bit milliseconds.
fn parse_timeout_ms(arg: &str) -> Result<u32, String> {
    let ms: u64 = if let Some(digits) = arg.strip_suffix("ms") {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "bad timeout '{arg}': milliseconds must be a whole number, as in 500ms"
            ));
        }
        digits
            .parse()
            .map_err(|_| format!("bad timeout '{arg}': too large"))?
    } else {
        let secs =
            parse_timespec(arg).map_err(|e| format!("bad timeout '{arg}': {e}, or NNNms"))?;
        secs.checked_mul(1000)
            .ok_or_else(|| format!("bad timeout '{arg}': too large"))?
    };
    if ms == 0 {
        return Err(format!(
            "bad timeout '{arg}': a timeout must be more than zero"
        ));
    }
    u32::try_from(ms).map_err(|_| format!("bad timeout '{arg}': at most 4294967295ms"))
}

/// The operating system will not bind PORT on every address and PORT on one address at the same
/// time, nor the same PORT@IP twice.
fn listen_clash(earlier: &[(Listen, u32, u32, u32)], new: &Listen) -> Option<String> {
    for (l, line, _, _) in earlier {
        if l.port != new.port {
            continue;
        }
        if l == new {
            return Some(format!("'listen {new}' was already given on line {line}"));
        }
        if l.addr.is_none() || new.addr.is_none() {
            return Some(format!(
                "port {} is listened on for all addresses and for one address (line {line}); \
                 the operating system does not allow both",
                new.port
            ));
        }
    }
    None
}
