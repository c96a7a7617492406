//! The words and addresses of one configuration line: splitting a logical line into words
//! with their positions, numeric addresses as portnanny 2 accepted them, and `PORT[@IP]`.
//!
//! Pure functions, shared by nanny.conf, the actions file and the sentry directives (so none
//! of those files needs another's).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// One `listen PORT[@IP]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Listen {
    pub port: u16,
    /// None: every address of the machine (`PORT`, `PORT@`, `PORT@*`).
    pub addr: Option<IpAddr>,
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            None => write!(f, "{}@*", self.port),
            Some(a) => write!(f, "{}@{a}", self.port),
        }
    }
}

/// A whitespace-separated word of a logical line and its byte range there.
pub fn words(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                out.push((s, &text[s..i]));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push((s, &text[s..]));
    }
    out
}

/// Parses `PORT`, `PORT@`, `PORT@*`, `PORT@IP` (IPv4 or IPv6, optionally in brackets).
pub fn parse_listen(arg: &str) -> Result<Listen, String> {
    let (port_s, host) = match arg.split_once('@') {
        Some((p, h)) => (p, h),
        None => (arg, ""),
    };
    if port_s.is_empty() || port_s == "*" {
        return Err(format!(
            "listen needs a port number, as in 80 or 80@127.0.0.1; '{arg}' has none"
        ));
    }
    let port = match parse_u32(port_s) {
        Some(p) if (1..=65535).contains(&p) => p as u16,
        Some(_) => return Err(format!("bad port '{port_s}': a port is 1 to 65535")),
        None if parse_ip(port_s).is_some() => {
            return Err(format!(
                "listen needs a port; '{arg}' is only an address (write PORT@{arg})"
            ))
        }
        None => return Err(format!("bad port '{port_s}': a port must be a number")),
    };
    let addr = match host {
        "" | "*" => None,
        h => match parse_ip(h) {
            Some(a) => Some(a),
            None => {
                return Err(format!(
                    "bad address '{h}': listen takes a numeric IPv4 or IPv6 address or '*'"
                ))
            }
        },
    };
    Ok(Listen { port, addr })
}

/// A numeric address. IPv4 octets may have leading zeros (portnanny accepted `001.010.090.05`,
/// meaning decimal); IPv6 may be written in brackets.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(a) = s.parse::<IpAddr>() {
        return Some(a);
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (o, p) in octets.iter_mut().zip(&parts) {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}
/// A whole number, optionally with a leading `+`.
pub fn parse_u32(arg: &str) -> Option<u32> {
    let digits = arg.strip_prefix('+').unwrap_or(arg);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}
