//! nanny.conf's control directives (an extension to portnanny 2): `control PATH` (the local
//! control socket nannyctl talks to; off without it) and `controlgroup GROUP` (its members may
//! make read requests; root may do everything).
//!
//! Parsed here, checked on the host by the binary (the group must exist, the socket's directory
//! too). A portnanny 2 configuration has neither and means the same.

use std::fmt;

use crate::source::{Diagnostic, LogicalLine, Severity, SourceFile};

/// Every control directive, in the order the documentation gives them.
pub const DIRECTIVES: &[&str] = &["control", "controlgroup"];

/// The control directives' values.
#[derive(Clone, Debug, Default)]
pub struct ControlConf {
    /// The control socket's path, absolute.
    pub socket: Option<String>,
    /// The group whose members may read.
    pub group: Option<String>,
    /// (line, col) of `controlgroup` when there is no `control` line, for the warning.
    group_at: Option<(u32, u32)>,
}

/// Equal when they configure the same (where a line was written does not matter).
impl PartialEq for ControlConf {
    fn eq(&self, o: &Self) -> bool {
        self.socket == o.socket && self.group == o.group
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
        Ok(())
    }
}

fn usage(directive: &str) -> &'static str {
    match directive {
        "control" => "control /run/portnanny/control",
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
        _ => c.group.is_some(),
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
