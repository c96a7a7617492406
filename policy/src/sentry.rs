//! The sentry settings of nanny.conf (PortSentry's job in portnanny's language) and the address
//! list files that `ipfile:` and `neverblock` read.
//!
//! Parsed in the parent, as root, from the administrator's nanny.conf (see [`crate::conf`],
//! which calls [`parse_directive`] for every sentry directive); address list files are read by
//! the parent and parsed here (no I/O). Nobody consumes these yet: the parent (blocked set,
//! commands), the classifier (`blocked`, `hits:`) and the `sentry` worker (raw sockets) will.
//!
//! Directives: `trap tcp|udp PORTS[@IP]`, `stealth tcp|udp PORTS`, `stealth tcp|udp below N
//! [except PORTS]`, `blockfile FILE`, `historyfile FILE`, `blockcmd CMD...`, `unblockcmd
//! CMD...`, `hostsdeny FILE`, `neverblock ADDRSPEC...|auto`, `blockzone FILE [ZONE]`,
//! `blockbudget N`, `blockincrement FACTOR MAX`, `blockkills on|off`. PORTS is a comma list of
//! ports and inclusive ranges (`1,7,9,11-15,31337`).
//!
//! Diagnostic codes (nanny.conf's C series): C005 a bad value; C008 a bad port list (port 0, a
//! range whose end is below its start, a port given twice in one list); C009 a trap port that
//! is already trapped or listened on at an overlapping address; C010 an unknown `%(name)s` or a
//! malformed `%` in `blockcmd`/`unblockcmd`; C011 an address list file's bad line; C012 a
//! `stealth` list port that a `listen` or `trap` binds.

use std::fmt;
use std::net::IpAddr;
use std::ops::Range;

use crate::addr::{parse_addrspec, AddrSet};
use crate::facts::SentryMode;
use crate::source::{Diagnostic, LogicalLine, Severity, SourceFile};
use crate::template::{format_template, ExpandErrorKind, Value};
use crate::timespec::parse_timespec;
use crate::words::Listen;

pub use crate::ipfile::parse_ipfile;

/// New blocks per minute that forgeable modes (stealth, UDP) may cause before they only log.
pub const DEFAULT_BLOCKBUDGET: u32 = 10;

/// The names `blockcmd` and `unblockcmd` may use: the blocked address, the port and mode that
/// caused the block, when it ends (seconds since the epoch, 0 for never) and how long it lasts
/// (seconds, 0 for forever).
pub const BLOCKCMD_NAMES: &[&str] = &["ip", "port", "mode", "until", "seconds"];

/// The [`BLOCKCMD_NAMES`] whose value is a number (they format with `%d`).
const BLOCKCMD_NUMERIC: &[&str] = &["port", "until", "seconds"];

/// The transport of a trap or stealth watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// An inclusive range of ports, `lo <= hi`, neither 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }

    fn overlaps(&self, other: &PortRange) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// A port list as written back: `1,7,11-15`.
pub struct PortList<'a>(pub &'a [PortRange]);

impl fmt::Display for PortList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Whether `port` is in one of the ranges of `list`.
pub fn list_contains(list: &[PortRange], port: u16) -> bool {
    list.iter().any(|r| r.contains(port))
}

/// One `trap tcp|udp PORTS[@IP]`: ports bound only to catch scanners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trap {
    pub proto: Proto,
    /// In the order written; no port twice.
    pub ports: Vec<PortRange>,
    /// None: every address of the machine.
    pub addr: Option<IpAddr>,
}

impl Trap {
    /// `tcp` or `udp` (PortSentry's classic modes).
    pub fn mode(&self) -> SentryMode {
        match self.proto {
            Proto::Tcp => SentryMode::Tcp,
            Proto::Udp => SentryMode::Udp,
        }
    }
}

impl fmt::Display for Trap {
    /// As written in nanny.conf, after `trap `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.proto.as_str(), PortList(&self.ports))?;
        match self.addr {
            Some(IpAddr::V6(a)) => write!(f, "@[{a}]"),
            Some(a) => write!(f, "@{a}"),
            None => Ok(()),
        }
    }
}

/// Which ports a `stealth` line watches on the raw socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StealthPorts {
    /// `stealth tcp|udp PORTS`: these ports (PortSentry's `-stcp`/`-sudp`).
    List(Vec<PortRange>),
    /// `stealth tcp|udp below N [except PORTS]`: every port from 1 to N-1 that nothing listens
    /// on, except these (PortSentry's advanced `-atcp`/`-audp`, ADVANCED_PORTS_* and
    /// ADVANCED_EXCLUDE_*).
    Below { below: u16, except: Vec<PortRange> },
}

/// One `stealth` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stealth {
    pub proto: Proto,
    pub ports: StealthPorts,
}

impl Stealth {
    /// `stcp`/`sudp` for a list, `atcp`/`audp` for `below`.
    pub fn mode(&self) -> SentryMode {
        match (self.proto, &self.ports) {
            (Proto::Tcp, StealthPorts::List(_)) => SentryMode::Stcp,
            (Proto::Udp, StealthPorts::List(_)) => SentryMode::Sudp,
            (Proto::Tcp, StealthPorts::Below { .. }) => SentryMode::Atcp,
            (Proto::Udp, StealthPorts::Below { .. }) => SentryMode::Audp,
        }
    }

    /// Whether a probe to `port` is watched by this line. For `below`, the caller must also
    /// check that nothing listens on the port (PortSentry's advanced mode skips bound ports).
    pub fn watches(&self, port: u16) -> bool {
        match &self.ports {
            StealthPorts::List(l) => list_contains(l, port),
            StealthPorts::Below { below, except } => {
                port != 0 && port < *below && !list_contains(except, port)
            }
        }
    }
}

impl fmt::Display for Stealth {
    /// As written in nanny.conf, after `stealth `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.proto.as_str())?;
        match &self.ports {
            StealthPorts::List(l) => write!(f, "{}", PortList(l)),
            StealthPorts::Below { below, except } if except.is_empty() => {
                write!(f, "below {below}")
            }
            StealthPorts::Below { below, except } => {
                write!(f, "below {below} except {}", PortList(except))
            }
        }
    }
}

/// `neverblock ADDRSPEC... | auto`: addresses a block is refused for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NeverBlock {
    /// `auto`: the machine's own addresses, its gateways, its nameservers and loopback, which
    /// only the parent can find out (at start and on reload).
    pub auto: bool,
    /// The ADDRSPECs as written, in order.
    pub specs: Vec<String>,
    /// The ADDRSPECs merged.
    pub set: AddrSet,
}

/// `blockzone FILE [ZONE]`: the blocked set also kept as an rbldnsd zone file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockZone {
    pub file: String,
    /// The zone's name, for the file's header and the documentation's `dnsbl:` example.
    pub zone: Option<String>,
}

/// `blockincrement FACTOR MAX` (fail2ban's bantime.increment): each new block of an address
/// blocked before lasts FACTOR times its previous block, at most `max_secs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockIncrement {
    pub factor: u32,
    pub max_secs: u64,
}

/// Every sentry setting of nanny.conf. The default (no sentry directive) watches nothing and
/// blocks with no command and no file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentryConf {
    pub traps: Vec<Trap>,
    pub stealth: Vec<Stealth>,
    /// The blocked set (address, since, until, reason, port, mode), rewritten atomically and
    /// restored at start. None: blocks are forgotten at restart.
    pub blockfile: Option<String>,
    /// Append-only record of every block and unblock.
    pub historyfile: Option<String>,
    /// `blockcmd` lines, raw, in order; each is split on whitespace and then substituted
    /// ([`BLOCKCMD_NAMES`]), like `run`.
    pub blockcmds: Vec<String>,
    /// `unblockcmd` lines, raw, in order.
    pub unblockcmds: Vec<String>,
    /// The hosts.deny file to add blocked addresses to (and remove them from on unblock).
    pub hostsdeny: Option<String>,
    /// None: no `neverblock` line (check mode suggests `neverblock auto`).
    pub neverblock: Option<NeverBlock>,
    pub blockzone: Option<BlockZone>,
    /// New blocks per minute for forgeable modes (stealth, UDP); beyond it they only log.
    pub blockbudget: u32,
    pub blockincrement: Option<BlockIncrement>,
    /// `blockkills on`: a block also ends the blocked address's running services.
    pub blockkills: bool,
}

impl Default for SentryConf {
    fn default() -> SentryConf {
        SentryConf {
            traps: Vec::new(),
            stealth: Vec::new(),
            blockfile: None,
            historyfile: None,
            blockcmds: Vec::new(),
            unblockcmds: Vec::new(),
            hostsdeny: None,
            neverblock: None,
            blockzone: None,
            blockbudget: DEFAULT_BLOCKBUDGET,
            blockincrement: None,
            blockkills: false,
        }
    }
}

impl SentryConf {
    /// Whether anything can hit a trap (a `trap` or a `stealth` line).
    pub fn watches_anything(&self) -> bool {
        !self.traps.is_empty() || !self.stealth.is_empty()
    }
}

impl fmt::Display for SentryConf {
    /// The sentry directives as nanny.conf lines that parse back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.traps {
            writeln!(f, "trap {t}")?;
        }
        for s in &self.stealth {
            writeln!(f, "stealth {s}")?;
        }
        if let Some(b) = &self.blockfile {
            writeln!(f, "blockfile {b}")?;
        }
        if let Some(h) = &self.historyfile {
            writeln!(f, "historyfile {h}")?;
        }
        for c in &self.blockcmds {
            writeln!(f, "blockcmd {c}")?;
        }
        for c in &self.unblockcmds {
            writeln!(f, "unblockcmd {c}")?;
        }
        if let Some(h) = &self.hostsdeny {
            writeln!(f, "hostsdeny {h}")?;
        }
        if let Some(n) = &self.neverblock {
            f.write_str("neverblock")?;
            if n.auto {
                f.write_str(" auto")?;
            }
            for s in &n.specs {
                write!(f, " {s}")?;
            }
            writeln!(f)?;
        }
        if let Some(z) = &self.blockzone {
            match &z.zone {
                Some(zone) => writeln!(f, "blockzone {} {zone}", z.file)?,
                None => writeln!(f, "blockzone {}", z.file)?,
            }
        }
        writeln!(f, "blockbudget {}", self.blockbudget)?;
        if let Some(i) = &self.blockincrement {
            writeln!(f, "blockincrement {} {}s", i.factor, i.max_secs)?;
        }
        writeln!(
            f,
            "blockkills {}",
            if self.blockkills { "on" } else { "off" }
        )
    }
}

/// The sentry directives, as [`crate::conf::DIRECTIVES`] lists them.
pub const DIRECTIVES: &[&str] = &[
    "trap",
    "stealth",
    "blockfile",
    "historyfile",
    "blockcmd",
    "unblockcmd",
    "hostsdeny",
    "neverblock",
    "blockzone",
    "blockbudget",
    "blockincrement",
    "blockkills",
];

/// Directives that may be given more than once.
const REPEATABLE: &[&str] = &["trap", "stealth", "blockcmd", "unblockcmd", "neverblock"];

/// Parses a PORTS list. On error: the byte range within `text` at fault and the message.
pub fn parse_ports(text: &str) -> Result<Vec<PortRange>, (Range<usize>, String)> {
    let mut out: Vec<PortRange> = Vec::new();
    let mut off = 0;
    for item in text.split(',') {
        let span = off..off + item.len();
        off += item.len() + 1;
        let here = |m: String| Err((span.clone(), m));
        if item.is_empty() {
            return here(
                "an empty port in the list: ports are separated by single commas, as in \
                 1,7,11-15"
                    .to_owned(),
            );
        }
        let (lo_s, hi_s) = item.split_once('-').unwrap_or((item, item));
        let (Some(lo), Some(hi)) = (port(lo_s), port(hi_s)) else {
            return here(format!(
                "'{item}' is not a port or a range of ports (a port is 1 to 65535; a range is \
                 LOW-HIGH)"
            ));
        };
        if lo == 0 || hi == 0 {
            return here(format!(
                "'{item}': port 0 cannot be watched; ports are 1 to 65535"
            ));
        }
        if hi < lo {
            return here(format!(
                "'{item}': a range goes from the lower port to the higher one ({hi}-{lo})"
            ));
        }
        let r = PortRange { lo, hi };
        if let Some(prev) = out.iter().find(|p| p.overlaps(&r)) {
            return here(format!(
                "'{item}' repeats port(s) already in this list ({prev})"
            ));
        }
        out.push(r);
    }
    Ok(out)
}

fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The sentry part of nanny.conf's builder.
#[derive(Debug, Default)]
pub(crate) struct SentryBuilder {
    pub conf: SentryConf,
    /// The line of each trap in `conf.traps`, for overlap messages.
    trap_lines: Vec<u32>,
    /// The first line of each once-only directive.
    seen: Vec<(&'static str, u32)>,
    /// For each `stealth` line, the (line, col, width) of each element of its port list (empty
    /// for `below`).
    stealth_pos: Vec<Vec<(u32, u32, u32)>>,
}

impl SentryBuilder {
    /// Checks that need the whole file: a `stealth tcp|udp PORTS` port that a `listen` (TCP)
    /// or a `trap` of the same protocol binds (C012). Every connection to such a port would be
    /// taken for a probe, so clients of a real service would be trapped (`below` skips bound
    /// ports by design, so it is not checked).
    pub(crate) fn finish(
        &self,
        src: &SourceFile,
        listens: &[(Listen, u32)],
        diags: &mut Vec<Diagnostic>,
    ) {
        for (st, pos) in self.conf.stealth.iter().zip(&self.stealth_pos) {
            let StealthPorts::List(list) = &st.ports else {
                continue;
            };
            for (r, &(line, col, width)) in list.iter().zip(pos) {
                let listened = (st.proto == Proto::Tcp)
                    .then(|| listens.iter().find(|(l, _)| r.contains(l.port)))
                    .flatten()
                    .map(|(l, n)| format!("'listen {l}' (line {n})"));
                let trapped = || {
                    self.conf
                        .traps
                        .iter()
                        .zip(&self.trap_lines)
                        .filter(|(t, _)| t.proto == st.proto)
                        .find_map(|(t, n)| {
                            t.ports
                                .iter()
                                .find(|p| p.overlaps(r))
                                .map(|p| format!("'trap {} {p}' (line {n})", t.proto.as_str()))
                        })
                };
                if let Some(what) = listened.or_else(trapped) {
                    diags.push(src.diagnostic(
                        Severity::Error,
                        "C012",
                        line,
                        col,
                        width,
                        format!(
                            "stealth port(s) {r} are bound by {what}: every connection to them \
                             would count as a probe"
                        ),
                    ));
                }
            }
        }
    }

    /// A `listen` that takes a port a TCP trap already takes at an overlapping address.
    pub(crate) fn trap_for_listen(&self, l: &Listen) -> Option<String> {
        self.conf
            .traps
            .iter()
            .zip(&self.trap_lines)
            .filter(|(t, _)| t.proto == Proto::Tcp && addrs_overlap(t.addr, l.addr))
            .find_map(|(t, line)| {
                list_contains(&t.ports, l.port).then(|| {
                    format!(
                        "port {} is already a trap (line {line}): a port can be bound only once \
                         for the same address",
                        l.port
                    )
                })
            })
    }
}

/// Whether two bind addresses overlap (None is every address).
fn addrs_overlap(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    a.is_none() || b.is_none() || a == b
}

/// One sentry directive line. `ws` are the line's words (the directive first); `listens` the
/// `listen` lines seen so far with their line numbers. Every problem goes to `diags`.
pub(crate) fn parse_directive(
    src: &SourceFile,
    ll: &LogicalLine,
    ws: &[(usize, &str)],
    listens: &[(Listen, u32)],
    b: &mut SentryBuilder,
    diags: &mut Vec<Diagnostic>,
) {
    let Some(&(d_off, directive)) = ws.first() else {
        return;
    };
    let Some(&directive) = DIRECTIVES.iter().find(|d| **d == directive) else {
        return;
    };
    let err = |range: Range<usize>, code: &'static str, msg: String| {
        src.diag_at(Severity::Error, code, ll, range, msg)
    };
    let dspan = d_off..d_off + directive.len();
    let args = ws.get(1..).unwrap_or_default();
    let Some(&(a_off, arg)) = args.first() else {
        diags.push(err(
            dspan,
            "C002",
            format!("'{directive}' needs an argument ({})", usage(directive)),
        ));
        return;
    };
    let aspan = a_off..a_off + arg.len();
    let end = ll.text.trim_end().len();
    // Word counts for the fixed-shape directives: (fewest, most) arguments.
    let counts = match directive {
        "trap" => Some((2, 2)),
        "stealth" => Some((2, 5)),
        "blockfile" | "historyfile" | "hostsdeny" | "blockbudget" | "blockkills" => Some((1, 1)),
        "blockzone" => Some((1, 2)),
        "blockincrement" => Some((2, 2)),
        _ => None,
    };
    if let Some((least, most)) = counts {
        if let Some(&(x_off, extra)) = args.get(most) {
            let hint = if extra.starts_with('#') {
                " (a comment must be on a line of its own)"
            } else {
                ""
            };
            diags.push(err(
                x_off..end,
                "C003",
                format!(
                    "'{directive}' takes {} ({}); this is extra{hint}",
                    if most == 1 {
                        "exactly one argument".to_owned()
                    } else {
                        format!("at most {most} arguments")
                    },
                    usage(directive)
                ),
            ));
            return;
        }
        if args.len() < least {
            diags.push(err(
                a_off..end,
                "C002",
                format!(
                    "'{directive}' needs {least} arguments ({})",
                    usage(directive)
                ),
            ));
            return;
        }
    }
    if !REPEATABLE.contains(&directive) {
        if let Some((_, first)) = b.seen.iter().find(|(d, _)| *d == directive) {
            diags.push(err(
                dspan,
                "C004",
                format!(
                    "'{directive}' may be given only once; it was already given on line {first}"
                ),
            ));
            return;
        }
        b.seen.push((directive, ll.lineno));
    }
    let bad = |range: Range<usize>, msg: String| err(range, "C005", msg);
    let c = &mut b.conf;
    match directive {
        "trap" | "stealth" => {
            let proto = match arg {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                _ => {
                    diags.push(bad(
                        aspan,
                        format!("'{directive}' is followed by tcp or udp, not '{arg}'"),
                    ));
                    return;
                }
            };
            let rest = args.get(1..).unwrap_or_default();
            if directive == "trap" {
                if let Some(t) = parse_trap(src, ll, proto, rest, diags) {
                    trap_clashes(src, ll, rest, &t, &c.traps, &b.trap_lines, listens, diags);
                    c.traps.push(t);
                    b.trap_lines.push(ll.lineno);
                }
            } else if let Some(st) = parse_stealth(src, ll, proto, rest, diags) {
                // Where each element of a port list is, for the check at the end of the file.
                if let (StealthPorts::List(_), Some(&(off, word))) = (&st.ports, rest.first()) {
                    let mut at = off;
                    let mut pos = Vec::new();
                    for item in word.split(',') {
                        let (line, col) = src.position(ll, at);
                        let width = u32::try_from(item.chars().count()).unwrap_or(1);
                        pos.push((line, col, width));
                        at += item.len() + 1;
                    }
                    b.stealth_pos.push(pos);
                } else {
                    b.stealth_pos.push(Vec::new());
                }
                c.stealth.push(st);
            }
        }
        "blockfile" => c.blockfile = Some(arg.to_owned()),
        "historyfile" => c.historyfile = Some(arg.to_owned()),
        "hostsdeny" => c.hostsdeny = Some(arg.to_owned()),
        "blockcmd" | "unblockcmd" => {
            let text = ll.text.get(a_off..end).unwrap_or(arg);
            let mut ok = true;
            for &(off, word) in args {
                for (range, msg) in check_blockcmd_word(word) {
                    ok = false;
                    diags.push(err(
                        off + range.start..off + range.end,
                        "C010",
                        format!("{directive}: {msg}"),
                    ));
                }
            }
            if ok {
                if directive == "blockcmd" {
                    c.blockcmds.push(text.to_owned());
                } else {
                    c.unblockcmds.push(text.to_owned());
                }
            }
        }
        "neverblock" => {
            let nb = c.neverblock.get_or_insert_with(NeverBlock::default);
            for &(off, word) in args {
                if word == "auto" {
                    nb.auto = true;
                    continue;
                }
                match parse_addrspec(word) {
                    Ok(r) => {
                        nb.set.insert(r);
                        nb.specs.push(word.to_owned());
                    }
                    Err(e) => {
                        let hint = if word.starts_with('#') {
                            " (a comment must be on a line of its own)"
                        } else {
                            ""
                        };
                        diags.push(bad(
                            off..off + word.len(),
                            format!("neverblock takes addresses or 'auto': {e}{hint}"),
                        ));
                        if word.starts_with('#') {
                            break;
                        }
                    }
                }
            }
        }
        "blockzone" => {
            let zone = match args.get(1) {
                None => None,
                Some(&(z_off, z)) => {
                    let lower = z.to_ascii_lowercase();
                    if !crate::rules::matchers::valid_hostname(&lower) || lower.starts_with('.') {
                        diags.push(bad(
                            z_off..z_off + z.len(),
                            format!(
                                "'{z}' is not a DNS zone name (letters, digits, '.', '-', '_')"
                            ),
                        ));
                        return;
                    }
                    Some(lower)
                }
            };
            c.blockzone = Some(BlockZone {
                file: arg.to_owned(),
                zone,
            });
        }
        "blockbudget" => match whole_u32(arg) {
            Some(n) => c.blockbudget = n,
            None => diags.push(bad(
                aspan,
                format!("blockbudget must be a whole number of blocks per minute, not '{arg}'"),
            )),
        },
        "blockincrement" => {
            let factor = match whole_u32(arg) {
                Some(n) if n >= 1 => n,
                _ => {
                    diags.push(bad(
                        aspan,
                        format!(
                            "the blockincrement factor must be a whole number, 1 or more, not \
                             '{arg}'"
                        ),
                    ));
                    return;
                }
            };
            let Some(&(m_off, max)) = args.get(1) else {
                return;
            };
            match parse_timespec(max) {
                Ok(0) => diags.push(bad(
                    m_off..m_off + max.len(),
                    "the longest block must be more than 0s".to_owned(),
                )),
                Ok(max_secs) => c.blockincrement = Some(BlockIncrement { factor, max_secs }),
                Err(e) => diags.push(bad(
                    m_off..m_off + max.len(),
                    format!("bad time '{max}': {e}"),
                )),
            }
        }
        "blockkills" => match arg {
            "on" => c.blockkills = true,
            "off" => c.blockkills = false,
            _ => diags.push(bad(
                aspan,
                format!("blockkills must be 'on' or 'off', not '{arg}'"),
            )),
        },
        _ => {}
    }
}

/// A whole number that fits 32 bits.
fn whole_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

pub(crate) fn usage(directive: &str) -> &'static str {
    match directive {
        "trap" => "tcp|udp PORTS[@IP], as in 'trap tcp 1,11-15,31337@192.0.2.1'",
        "stealth" => "tcp|udp PORTS, or tcp|udp below N [except PORTS]",
        "blockfile" | "historyfile" | "hostsdeny" => "a file name",
        "blockcmd" | "unblockcmd" => "a command and its arguments",
        "neverblock" => "addresses, netblocks, ranges or 'auto'",
        "blockzone" => "a file name and optionally the zone's name",
        "blockbudget" => "a number of blocks per minute",
        "blockincrement" => "a factor and the longest block, as in '2 30d'",
        "blockkills" => "on or off",
        _ => "",
    }
}

/// `PORTS[@IP]` after `trap tcp|udp`.
fn parse_trap(
    src: &SourceFile,
    ll: &LogicalLine,
    proto: Proto,
    rest: &[(usize, &str)],
    diags: &mut Vec<Diagnostic>,
) -> Option<Trap> {
    let &(off, word) = rest.first()?;
    let (ports_s, host) = match word.split_once('@') {
        Some((p, h)) => (p, Some(h)),
        None => (word, None),
    };
    let addr = match host {
        None | Some("") | Some("*") => None,
        Some(h) => match crate::words::parse_ip(h) {
            Some(a) => Some(a),
            None => {
                let at = off + ports_s.len() + 1;
                diags.push(src.diag_at(
                    Severity::Error,
                    "C005",
                    ll,
                    at..at + h.len(),
                    format!("bad address '{h}': trap takes a numeric IPv4 or IPv6 address or '*'"),
                ));
                return None;
            }
        },
    };
    match parse_ports(ports_s) {
        Ok(ports) => Some(Trap { proto, ports, addr }),
        Err((r, msg)) => {
            diags.push(src.diag_at(
                Severity::Error,
                "C008",
                ll,
                off + r.start..off + r.end.max(r.start + 1),
                msg,
            ));
            None
        }
    }
}

/// A trap's port that another trap of the same protocol, or a `listen` (TCP), already takes at
/// an overlapping address: reported at the port in the list.
#[allow(clippy::too_many_arguments)]
fn trap_clashes(
    src: &SourceFile,
    ll: &LogicalLine,
    rest: &[(usize, &str)],
    t: &Trap,
    traps: &[Trap],
    trap_lines: &[u32],
    listens: &[(Listen, u32)],
    diags: &mut Vec<Diagnostic>,
) {
    let Some(&(off, word)) = rest.first() else {
        return;
    };
    let ports_s = word.split('@').next().unwrap_or(word);
    let mut at = off;
    for (item, r) in ports_s.split(',').zip(&t.ports) {
        let span = at..at + item.len();
        at += item.len() + 1;
        let clash = traps
            .iter()
            .zip(trap_lines)
            .filter(|(o, _)| o.proto == t.proto && addrs_overlap(o.addr, t.addr))
            .find_map(|(o, line)| {
                o.ports
                    .iter()
                    .find(|p| p.overlaps(r))
                    .map(|p| format!("'trap {} {p}' on line {line}", t.proto.as_str()))
            })
            .or_else(|| {
                if t.proto != Proto::Tcp {
                    return None;
                }
                listens
                    .iter()
                    .find(|(l, _)| r.contains(l.port) && addrs_overlap(l.addr, t.addr))
                    .map(|(l, line)| format!("'listen {l}' on line {line}"))
            });
        if let Some(what) = clash {
            diags.push(src.diag_at(
                Severity::Error,
                "C009",
                ll,
                span,
                format!(
                    "trap port(s) {r} overlap {what}: a port can be bound only once for the same \
                     address"
                ),
            ));
        }
    }
}

/// `PORTS` or `below N [except PORTS]` after `stealth tcp|udp`.
fn parse_stealth(
    src: &SourceFile,
    ll: &LogicalLine,
    proto: Proto,
    rest: &[(usize, &str)],
    diags: &mut Vec<Diagnostic>,
) -> Option<Stealth> {
    let err = |range: Range<usize>, code: &'static str, msg: String| {
        src.diag_at(Severity::Error, code, ll, range, msg)
    };
    let ports = |(off, word): (usize, &str), diags: &mut Vec<Diagnostic>| match parse_ports(word) {
        Ok(p) => Some(p),
        Err((r, msg)) => {
            diags.push(err(
                off + r.start..off + r.end.max(r.start + 1),
                "C008",
                msg,
            ));
            None
        }
    };
    let &(off, word) = rest.first()?;
    if word != "below" {
        if let Some(&(x_off, _)) = rest.get(1) {
            let end = ll.text.trim_end().len();
            diags.push(err(
                x_off..end,
                "C003",
                "'stealth tcp|udp PORTS' takes one port list; this is extra".to_owned(),
            ));
            return None;
        }
        return Some(Stealth {
            proto,
            ports: StealthPorts::List(ports((off, word), diags)?),
        });
    }
    let Some(&(n_off, n)) = rest.get(1) else {
        diags.push(err(
            off..off + word.len(),
            "C002",
            "'stealth below' needs a port number, as in 'stealth tcp below 1024'".to_owned(),
        ));
        return None;
    };
    let below = match port(n) {
        Some(p) if p >= 2 => p,
        _ => {
            diags.push(err(
                n_off..n_off + n.len(),
                "C005",
                format!("'below {n}': N must be a port number from 2 to 65535"),
            ));
            return None;
        }
    };
    let except = match (rest.get(2), rest.get(3)) {
        (None, _) => Vec::new(),
        (Some(&(_, "except")), Some(&list)) => ports(list, diags)?,
        (Some(&(e_off, e)), _) => {
            diags.push(err(
                e_off..e_off + e.len(),
                "C005",
                format!("expected 'except PORTS' after 'below {n}', found '{e}'"),
            ));
            return None;
        }
    };
    Some(Stealth {
        proto,
        ports: StealthPorts::Below { below, except },
    })
}

/// Problems of one word of a `blockcmd`/`unblockcmd`: (byte range in the word, message).
/// Checked with the formatter that will expand it, with a stand-in value for each name.
pub fn check_blockcmd_word(word: &str) -> Vec<(Range<usize>, String)> {
    let mut out = Vec::new();
    for r in crate::template::substitutions(word) {
        let (i, end) = (r.start, r.end);
        let seg = word.get(i..end).unwrap_or_default();
        let res = format_template(seg, &|n| {
            if !BLOCKCMD_NAMES.contains(&n) {
                Err(ExpandErrorKind::Unknown(n.to_owned()))
            } else if BLOCKCMD_NUMERIC.contains(&n) {
                Ok(Value::Int(0))
            } else {
                Ok(Value::Str("x".to_owned()))
            }
        });
        match res {
            Ok(_) => {}
            Err(ExpandErrorKind::Unknown(n)) => out.push((
                i..end,
                format!(
                    "unknown name '%({n})': a block command may use {}",
                    BLOCKCMD_NAMES
                        .iter()
                        .map(|n| format!("%({n})s"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            Err(ExpandErrorKind::BadFormat(m)) => out.push((i..end, crate::template::alone(&m))),
            Err(other) => out.push((i..end, format!("{other:?}"))),
        }
    }
    out
}
