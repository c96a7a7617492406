//! nanny.conf's XML-RPC directives (pyctd's API, an extension): `xmlrpc ADDR:PORT
//! [allow-remote]` (off without it), `xmlrpcusers PATH` (the argon2 password file, written by
//! `portnanny --xmlrpc-passwd`) or `xmlrpcauth none` (pyctd without mod_auth: a proxy in front
//! authenticates, and `login` accepts anything), and `xmlrpcidle SECS` (a session's idle
//! expiry; pyctd's 10 s by default).
//!
//! The API is served by the control worker and asks the netfilter worker, so `xmlrpc` needs
//! `control` and `conntrack on` (an error without them). A non-loopback address is refused
//! unless `allow-remote` says so (pyctd's advice: keep it on localhost and put a proxy in
//! front). Parsed here; the binary's `-C` checks the password file on the host.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::source::{Diagnostic, LogicalLine, Severity, SourceFile};

/// Every XML-RPC directive, in the order the documentation gives them.
pub const DIRECTIVES: &[&str] = &["xmlrpc", "xmlrpcusers", "xmlrpcauth", "xmlrpcidle"];

/// pyctd's session time-out.
pub const DEFAULT_IDLE_SECS: u32 = 10;
/// Longest `xmlrpcidle`: a day.
pub const MAX_IDLE_SECS: u32 = 86_400;

/// The XML-RPC directives' values.
#[derive(Clone, Debug, Default)]
pub struct XmlrpcConf {
    /// Where the API listens (None: off).
    pub addr: Option<SocketAddr>,
    /// `allow-remote` was given.
    pub allow_remote: bool,
    /// `xmlrpcusers PATH`, absolute.
    pub users: Option<String>,
    /// `xmlrpcauth none`.
    pub no_auth: bool,
    /// `xmlrpcidle` (None: [`DEFAULT_IDLE_SECS`]).
    pub idle_secs: Option<u32>,
    /// (line, col) of `xmlrpc`, and of the first XML-RPC directive, for file-level checks.
    addr_at: Option<(u32, u32)>,
    first_at: Option<(u32, u32, &'static str)>,
    seen: Vec<&'static str>,
}

/// Equal when they configure the same.
impl PartialEq for XmlrpcConf {
    fn eq(&self, o: &Self) -> bool {
        self.addr == o.addr
            && self.allow_remote == o.allow_remote
            && self.users == o.users
            && self.no_auth == o.no_auth
            && self.idle_secs == o.idle_secs
    }
}

impl Eq for XmlrpcConf {}

impl XmlrpcConf {
    pub fn idle(&self) -> u32 {
        self.idle_secs.unwrap_or(DEFAULT_IDLE_SECS)
    }
}

impl fmt::Display for XmlrpcConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(a) = &self.addr {
            let remote = if self.allow_remote {
                " allow-remote"
            } else {
                ""
            };
            writeln!(f, "xmlrpc {a}{remote}")?;
        }
        if let Some(u) = &self.users {
            writeln!(f, "xmlrpcusers {u}")?;
        }
        if self.no_auth {
            writeln!(f, "xmlrpcauth none")?;
        }
        if let Some(s) = self.idle_secs {
            writeln!(f, "xmlrpcidle {s}")?;
        }
        Ok(())
    }
}

fn usage(directive: &str) -> &'static str {
    match directive {
        "xmlrpc" => "xmlrpc 127.0.0.1:8000 [allow-remote]",
        "xmlrpcusers" => "xmlrpcusers /etc/portnanny/xmlrpc.passwd",
        "xmlrpcauth" => "xmlrpcauth none",
        _ => "xmlrpcidle 10",
    }
}

/// `127.0.0.1:8000`, `[::1]:8000`, or `localhost:8000` (loopback IPv4).
fn parse_addr(s: &str) -> Option<SocketAddr> {
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port.parse().ok()?;
        return Some(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port));
    }
    s.parse().ok()
}

/// Parses one XML-RPC directive line (`ws`: its words with their offsets).
pub fn parse_directive(
    src: &SourceFile,
    ll: &LogicalLine,
    ws: &[(usize, &str)],
    c: &mut XmlrpcConf,
    diags: &mut Vec<Diagnostic>,
) {
    let Some(&(d_off, directive)) = ws.first() else {
        return;
    };
    let Some(&directive) = DIRECTIVES.iter().find(|d| **d == directive) else {
        return;
    };
    let err = |range: std::ops::Range<usize>, code: &'static str, msg: String| {
        src.diag_at(Severity::Error, code, ll, range, msg)
    };
    let dspan = d_off..d_off + directive.len();
    if c.first_at.is_none() {
        let (line, col) = src.position(ll, d_off);
        c.first_at = Some((line, col, directive));
    }
    let Some(&(a_off, arg)) = ws.get(1) else {
        diags.push(err(
            dspan,
            "C002",
            format!("'{directive}' needs an argument ({})", usage(directive)),
        ));
        return;
    };
    let most = if directive == "xmlrpc" { 3 } else { 2 };
    if let Some(&(x_off, _)) = ws.get(most) {
        let end = ll.text.trim_end().len();
        diags.push(err(
            x_off..end,
            "C003",
            format!(
                "'{directive}' takes {} ({}); this is extra",
                if most == 3 {
                    "an address and at most one option"
                } else {
                    "exactly one argument"
                },
                usage(directive)
            ),
        ));
        return;
    }
    if c.seen.contains(&directive) {
        diags.push(err(
            dspan,
            "C004",
            format!("'{directive}' may be given only once"),
        ));
        return;
    }
    c.seen.push(directive);
    let aspan = a_off..a_off + arg.len();
    match directive {
        "xmlrpc" => {
            let Some(addr) = parse_addr(arg) else {
                diags.push(err(
                    aspan,
                    "C005",
                    format!(
                        "xmlrpc takes ADDR:PORT (127.0.0.1:8000, [::1]:8000); '{arg}' is not one"
                    ),
                ));
                return;
            };
            if addr.port() == 0 {
                diags.push(err(
                    aspan,
                    "C005",
                    "xmlrpc needs a port other than 0".into(),
                ));
                return;
            }
            let remote = match ws.get(2) {
                None => false,
                Some(&(_, "allow-remote")) => true,
                Some(&(o_off, other)) => {
                    diags.push(err(
                        o_off..o_off + other.len(),
                        "C005",
                        format!("unknown xmlrpc option '{other}' (known: allow-remote)"),
                    ));
                    return;
                }
            };
            if !addr.ip().is_loopback() && !remote {
                diags.push(err(
                    aspan,
                    "C021",
                    format!(
                        "xmlrpc on {} would serve pyctd's API beyond this host; pyctd's advice \
                         is to listen on loopback behind a proxy. Say 'xmlrpc {arg} \
                         allow-remote' if this is meant",
                        addr.ip()
                    ),
                ));
                return;
            }
            if !addr.ip().is_loopback() {
                diags.push(src.diag_at(
                    Severity::Warning,
                    "C021",
                    ll,
                    aspan,
                    format!(
                        "xmlrpc on {}, not loopback: passwords and session ids travel in clear \
                         text; put a TLS proxy in front",
                        addr.ip()
                    ),
                ));
            }
            c.addr = Some(addr);
            c.allow_remote = remote;
            c.addr_at = Some(src.position(ll, d_off));
        }
        "xmlrpcusers" if !arg.starts_with('/') => diags.push(err(
            aspan,
            "C005",
            format!("xmlrpcusers takes the absolute path of a password file; '{arg}' is not"),
        )),
        "xmlrpcusers" => c.users = Some(arg.to_owned()),
        "xmlrpcauth" if arg == "none" => c.no_auth = true,
        "xmlrpcauth" => diags.push(err(
            aspan,
            "C005",
            format!(
                "xmlrpcauth takes 'none' (a proxy in front authenticates); for passwords use \
                 xmlrpcusers PATH. '{arg}' is neither"
            ),
        )),
        _ => match arg.parse::<u32>() {
            Ok(s) if (1..=MAX_IDLE_SECS).contains(&s) => c.idle_secs = Some(s),
            _ => diags.push(err(
                aspan,
                "C005",
                format!("xmlrpcidle is 1 to {MAX_IDLE_SECS} seconds; '{arg}' is not"),
            )),
        },
    }
}

/// File-level checks once every line is read: `xmlrpc` needs `control`, `conntrack on` and
/// exactly one way to authenticate; the other directives need `xmlrpc`.
pub fn finish(
    src: &SourceFile,
    c: &XmlrpcConf,
    control: bool,
    conntrack: bool,
    diags: &mut Vec<Diagnostic>,
) {
    let Some((line, col, first)) = c.first_at else {
        return;
    };
    let at = |sev, msg: String| {
        let (line, col, width) = match c.addr_at {
            Some((l, k)) => (l, k, "xmlrpc".len()),
            None => (line, col, first.len()),
        };
        src.diagnostic(sev, "C022", line, col, width as u32, msg)
    };
    if c.addr.is_none() {
        if c.addr_at.is_none() && !c.seen.contains(&"xmlrpc") {
            diags.push(at(
                Severity::Warning,
                format!("{first} has no effect without an 'xmlrpc ADDR:PORT' line"),
            ));
        }
        return;
    }
    if !control {
        diags.push(at(
            Severity::Error,
            "xmlrpc needs a 'control' socket: the control worker serves it".into(),
        ));
    }
    if !conntrack {
        diags.push(at(
            Severity::Error,
            "xmlrpc needs 'conntrack on': its procedures ask the netfilter worker".into(),
        ));
    }
    match (&c.users, c.no_auth) {
        (Some(_), true) => diags.push(at(
            Severity::Error,
            "xmlrpcusers and 'xmlrpcauth none' contradict each other; keep one".into(),
        )),
        (None, false) => diags.push(at(
            Severity::Error,
            "xmlrpc needs 'xmlrpcusers PATH' (passwords) or 'xmlrpcauth none' (a proxy in \
             front authenticates)"
                .into(),
        )),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::conf::parse_conf;

    fn conf(extra: &str) -> (Option<crate::conf::NannyConf>, Vec<String>) {
        let text = format!(
            "rulefile /r\nactionfile /a\nlisten 80\ncontrol /run/pn\nconntrack on\n{extra}"
        );
        let p = parse_conf("nanny.conf", &text);
        let d = p
            .diagnostics
            .iter()
            .map(|d| format!("{}:{}: {} {}", d.line, d.col, d.code, d.message))
            .collect();
        (p.value, d)
    }

    #[test]
    fn accepted_forms() {
        let (c, d) = conf("xmlrpc 127.0.0.1:8000\nxmlrpcusers /etc/pw\nxmlrpcidle 3\n");
        assert!(d.is_empty(), "{d:?}");
        let x = c.unwrap().control.xmlrpc;
        assert_eq!(x.addr, Some("127.0.0.1:8000".parse().unwrap()));
        assert_eq!(x.users.as_deref(), Some("/etc/pw"));
        assert_eq!(x.idle(), 3);
        let (c, d) = conf("xmlrpc [::1]:80\nxmlrpcauth none\n");
        assert!(d.is_empty(), "{d:?}");
        let x = c.unwrap().control.xmlrpc;
        assert!(x.no_auth && x.idle() == 10);
        // Non-loopback only with allow-remote, and then with a warning.
        let (c, d) = conf("xmlrpc 0.0.0.0:8000 allow-remote\nxmlrpcauth none\n");
        assert!(c.is_some());
        assert!(d.len() == 1 && d[0].contains("C021"), "{d:?}");
    }

    #[test]
    fn refused_forms_name_line_and_column() {
        for (extra, want) in [
            ("xmlrpc 10.0.0.1:8000\nxmlrpcauth none\n", "6:8: C021"),
            ("xmlrpc 127.0.0.1\nxmlrpcauth none\n", "6:8: C005"),
            ("xmlrpc 127.0.0.1:0\nxmlrpcauth none\n", "6:8: C005"),
            ("xmlrpc 127.0.0.1:1 remote\nxmlrpcauth none\n", "6:20: C005"),
            ("xmlrpc 127.0.0.1:1\n", "6:1: C022"),
            (
                "xmlrpc 127.0.0.1:1\nxmlrpcauth none\nxmlrpcusers /x\n",
                "6:1: C022",
            ),
            ("xmlrpc 127.0.0.1:1\nxmlrpcauth yes\n", "7:12: C005"),
            ("xmlrpc 127.0.0.1:1\nxmlrpcusers pw\n", "7:13: C005"),
            (
                "xmlrpc 127.0.0.1:1\nxmlrpcauth none\nxmlrpcidle 0\n",
                "8:12: C005",
            ),
            (
                "xmlrpc 127.0.0.1:1\nxmlrpcauth none\nxmlrpcidle\n",
                "8:1: C002",
            ),
            (
                "xmlrpc 127.0.0.1:1\nxmlrpc 127.0.0.1:2\nxmlrpcauth none\n",
                "7:1: C004",
            ),
        ] {
            let (_, d) = conf(extra);
            assert!(d.iter().any(|l| l.starts_with(want)), "{extra:?}: {d:?}");
        }
        // Needs control and conntrack on.
        let p = parse_conf(
            "nanny.conf",
            "rulefile /r\nactionfile /a\nlisten 80\nxmlrpc 127.0.0.1:1\nxmlrpcauth none\n",
        );
        let msgs: Vec<&str> = p.diagnostics.iter().map(|d| d.message.as_str()).collect();
        assert!(
            msgs.iter().any(|m| m.contains("'control' socket")),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.contains("conntrack on")), "{msgs:?}");
    }
}
