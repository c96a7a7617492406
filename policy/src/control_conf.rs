//! nanny.conf's control directives (an extension to portnanny 2): `control PATH` (the local
//! control socket nannyctl talks to; off without it) and `controlgroup GROUP` (its members may
//! make read requests; root may do everything), and pyctd's job on the same channel:
//! `conntrack on` (the netfilter worker serves `nannyctl conntrack`; off by default),
//! `conntrackuidmask MASK` (pyctd's --uid-mask: the mark's bits that hold a uid) and
//! `blockflush on` (a newly blocked address's tracked flows are deleted too).
//!
//! Parsed here, checked on the host by the binary (the group must exist, the socket's directory
//! too). A portnanny 2 configuration has neither and means the same.

use std::fmt;

use crate::source::{Diagnostic, LogicalLine, Severity, SourceFile};

/// Every control directive, in the order the documentation gives them.
pub const DIRECTIVES: &[&str] = &[
    "control",
    "controlgroup",
    "conntrack",
    "conntrackuidmask",
    "blockflush",
];

/// The control directives' values.
#[derive(Clone, Debug, Default)]
pub struct ControlConf {
    /// The control socket's path, absolute.
    pub socket: Option<String>,
    /// The group whose members may read.
    pub group: Option<String>,
    /// `conntrack on`: start the netfilter worker.
    pub conntrack: bool,
    /// `conntrackuidmask`: 0 when not given.
    pub uid_mask: u32,
    /// `blockflush on`: a block deletes the address's conntrack entries.
    pub blockflush: bool,
    /// pyctd's XML-RPC API (`xmlrpc…` directives, [`crate::xmlrpc_conf`]).
    pub xmlrpc: crate::xmlrpc_conf::XmlrpcConf,
    /// (line, col) of `controlgroup` when there is no `control` line, for the warning.
    group_at: Option<(u32, u32)>,
    /// (line, col) of `conntrack on`, for the warning when there is no `control` line.
    conntrack_at: Option<(u32, u32)>,
    /// Directives already seen (each may be given once).
    seen: Vec<&'static str>,
}

/// Equal when they configure the same (where a line was written does not matter).
impl PartialEq for ControlConf {
    fn eq(&self, o: &Self) -> bool {
        self.socket == o.socket
            && self.group == o.group
            && self.conntrack == o.conntrack
            && self.uid_mask == o.uid_mask
            && self.blockflush == o.blockflush
            && self.xmlrpc == o.xmlrpc
    }
}

impl Eq for ControlConf {}

impl fmt::Display for ControlConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.socket {
            writeln!(f, "control {s}")?;
        }
        if let Some(g) = &self.group {
            writeln!(f, "controlgroup {g}")?;
        }
        if self.conntrack {
            writeln!(f, "conntrack on")?;
        }
        if self.uid_mask != 0 {
            writeln!(f, "conntrackuidmask {:#x}", self.uid_mask)?;
        }
        if self.blockflush {
            writeln!(f, "blockflush on")?;
        }
        write!(f, "{}", self.xmlrpc)
    }
}

fn usage(directive: &str) -> &'static str {
    match directive {
        "control" => "control /run/portnanny/control",
        "conntrack" => "conntrack on|off",
        "conntrackuidmask" => "conntrackuidmask 0xffff",
        "blockflush" => "blockflush on|off",
        _ => "controlgroup GROUP",
    }
}

/// Parses one control directive line (`ws`: its words with their offsets).
pub fn parse_directive(
    src: &SourceFile,
    ll: &LogicalLine,
    ws: &[(usize, &str)],
    c: &mut ControlConf,
    diags: &mut Vec<Diagnostic>,
) {
    let Some(&(d_off, directive)) = ws.first() else {
        return;
    };
    let err = |range: std::ops::Range<usize>, code: &'static str, msg: String| {
        src.diag_at(Severity::Error, code, ll, range, msg)
    };
    let dspan = d_off..d_off + directive.len();
    let Some(&(a_off, arg)) = ws.get(1) else {
        diags.push(err(
            dspan,
            "C002",
            format!("'{directive}' needs an argument ({})", usage(directive)),
        ));
        return;
    };
    if let Some(&(x_off, _)) = ws.get(2) {
        let end = ll.text.trim_end().len();
        diags.push(err(
            x_off..end,
            "C003",
            format!(
                "'{directive}' takes exactly one argument ({}); this is extra",
                usage(directive)
            ),
        ));
        return;
    }
    let aspan = a_off..a_off + arg.len();
    let already = match directive {
        "control" => c.socket.is_some(),
        "controlgroup" => c.group.is_some(),
        d => c.seen.contains(&d),
    };
    if let Some(d) = DIRECTIVES.iter().find(|d| **d == directive) {
        if !already {
            c.seen.push(d);
        }
    }
    let on_off = |v: &str| match v {
        "on" | "yes" => Some(true),
        "off" | "no" => Some(false),
        _ => None,
    };
    if already {
        diags.push(err(
            dspan,
            "C004",
            format!("'{directive}' may be given only once"),
        ));
        return;
    }
    match directive {
        // A socket path: never a network address, and independent of the start directory.
        "control" if !arg.starts_with('/') => diags.push(err(
            aspan,
            "C005",
            format!(
                "control must be the absolute path of a Unix socket (it is never a network \
                 port); '{arg}' is not"
            ),
        )),
        // sun_path holds 108 bytes, NUL included.
        "control" if arg.len() > 107 => diags.push(err(
            aspan,
            "C005",
            format!(
                "a Unix socket path is at most 107 bytes; this one is {}",
                arg.len()
            ),
        )),
        "control" => c.socket = Some(arg.to_owned()),
        "conntrack" | "blockflush" => match on_off(arg) {
            Some(v) if directive == "conntrack" => {
                c.conntrack = v;
                c.conntrack_at = Some(src.position(ll, d_off));
            }
            Some(v) => c.blockflush = v,
            None => diags.push(err(
                aspan,
                "C005",
                format!("'{directive}' is on or off, not '{arg}'"),
            )),
        },
        "conntrackuidmask" => {
            let parsed = match arg.strip_prefix("0x").or_else(|| arg.strip_prefix("0X")) {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => arg.parse::<u32>().ok(),
            };
            match parsed {
                Some(m) if m != 0 => c.uid_mask = m,
                _ => diags.push(err(
                    aspan,
                    "C005",
                    format!(
                        "conntrackuidmask is a non-zero 32-bit mask (0xffff, or decimal); '{arg}' \
                         is not"
                    ),
                )),
            }
        }
        _ if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_graphic()) => {
            diags.push(err(aspan, "C005", format!("bad group name '{arg}'")))
        }
        _ => {
            c.group = Some(arg.to_owned());
            c.group_at = Some(src.position(ll, d_off));
        }
    }
}

/// File-level checks once every line is read.
pub fn finish(src: &SourceFile, c: &ControlConf, diags: &mut Vec<Diagnostic>) {
    crate::xmlrpc_conf::finish(src, &c.xmlrpc, c.socket.is_some(), c.conntrack, diags);
    if let (None, true, Some((line, col))) = (&c.socket, c.conntrack, c.conntrack_at) {
        diags.push(src.diagnostic(
            Severity::Warning,
            "C013",
            line,
            col,
            "conntrack".len() as u32,
            "conntrack on without a 'control' socket: nothing can ask for the table".to_owned(),
        ));
    }
    if let (None, Some((line, col))) = (&c.socket, c.group_at) {
        diags.push(src.diagnostic(
            Severity::Warning,
            "C013",
            line,
            col,
            "controlgroup".len() as u32,
            "controlgroup has no effect without a 'control' socket".to_owned(),
        ));
    }
}
