//! The options of one `listen` line (an extension to portnanny 2): the words after `PORT[@IP]`.
//!
//! Runs in the parent, as root, while nanny.conf is parsed (and in `-C`); the words are the
//! administrator's. Pure: no I/O.
//!
//! Grammar, options in any order, each at most once per line:
//!
//! ```text
//! listen PORT[@IP] [proxy from ADDRSPEC[,ADDRSPEC...] [ADDRSPEC...]] [backlog N] [nodelay] [keepalive]
//! ```
//!
//! - `proxy from`: connections must come from one of these load balancers and start with a
//!   PROXY protocol header (v1 or v2); the addresses run to the next option word or the end of
//!   the line, as comma lists, separate words or both. An ADDRSPEC is what `ip:` takes.
//! - `backlog N`: the listen(2) backlog, 1 to 65535 (the kernel caps it at
//!   net.core.somaxconn); default [`DEFAULT_BACKLOG`].
//! - `nodelay`: TCP_NODELAY on every accepted connection (tcpserver's -D).
//! - `keepalive`: SO_KEEPALIVE on every accepted connection (tcpserver's -k).
//!
//! A line without options means what it meant in portnanny 2. Every problem is error C020 at
//! the offending word.

use std::fmt;

use crate::addr::{parse_addrspec, AddrSet};
use crate::source::{Diagnostic, LogicalLine, Severity, SourceFile};

/// The listen(2) backlog without `backlog N`: large, because a small backlog drops SYNs under
/// bursts (tcpserver's default of 20 does at concurrency 64); the kernel caps it anyway.
pub const DEFAULT_BACKLOG: u32 = 1024;

/// The largest `backlog N` accepted (the kernel's own cap, somaxconn, is at most this).
pub const MAX_BACKLOG: u32 = 65535;

/// The option words, as the documentation lists them.
pub const OPTIONS: &[&str] = &["proxy", "backlog", "nodelay", "keepalive"];

/// `proxy from ADDRSPEC...`: the load balancers allowed to connect, which must send a PROXY
/// protocol header first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyFrom {
    /// The ADDRSPECs as written, in order (for printing the configuration back).
    pub specs: Vec<String>,
    /// The ADDRSPECs merged.
    pub set: AddrSet,
}

/// The options of one `listen` line. The default is a portnanny 2 `listen`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenOptions {
    pub proxy: Option<ProxyFrom>,
    /// None: [`DEFAULT_BACKLOG`].
    pub backlog: Option<u32>,
    pub nodelay: bool,
    pub keepalive: bool,
}

impl ListenOptions {
    /// Whether this is a plain `listen` line (no option given).
    pub fn is_plain(&self) -> bool {
        *self == ListenOptions::default()
    }

    pub fn backlog(&self) -> u32 {
        self.backlog.unwrap_or(DEFAULT_BACKLOG)
    }
}

impl fmt::Display for ListenOptions {
    /// The options as written after `PORT[@IP]`, each with a leading space (nothing when plain).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.proxy {
            write!(f, " proxy from {}", p.specs.join(","))?;
        }
        if let Some(b) = self.backlog {
            write!(f, " backlog {b}")?;
        }
        if self.nodelay {
            f.write_str(" nodelay")?;
        }
        if self.keepalive {
            f.write_str(" keepalive")?;
        }
        Ok(())
    }
}

/// Parses the words after `PORT[@IP]` (`words` are (offset in the logical line, word)).
/// Problems go to `diags` as C020; the options that did parse are returned either way.
pub fn parse_options(
    src: &SourceFile,
    ll: &LogicalLine,
    words: &[(usize, &str)],
    diags: &mut Vec<Diagnostic>,
) -> ListenOptions {
    let mut o = ListenOptions::default();
    let mut bad = |off: usize, word: &str, msg: String| {
        diags.push(src.diag_at(Severity::Error, "C020", ll, off..off + word.len(), msg));
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut i = 0;
    while let Some(&(off, word)) = words.get(i) {
        i += 1;
        if OPTIONS.contains(&word) {
            if seen.contains(&word) {
                bad(
                    off,
                    word,
                    format!("'{word}' is given twice on this listen line"),
                );
            }
            seen.push(word);
        }
        match word {
            "nodelay" => o.nodelay = true,
            "keepalive" => o.keepalive = true,
            "backlog" => match words.get(i) {
                Some(&(n_off, n)) if !OPTIONS.contains(&n) => {
                    i += 1;
                    match crate::words::parse_u32(n) {
                        Some(b) if (1..=MAX_BACKLOG).contains(&b) => o.backlog = Some(b),
                        _ => bad(
                            n_off,
                            n,
                            format!(
                                "backlog must be a whole number from 1 to {MAX_BACKLOG}, not '{n}'"
                            ),
                        ),
                    }
                }
                _ => bad(
                    off,
                    word,
                    "'backlog' needs a number, as in 'backlog 4096'".to_owned(),
                ),
            },
            "proxy" => {
                if words.get(i).map(|w| w.1) != Some("from") {
                    bad(
                        off,
                        word,
                        "'proxy' is followed by 'from' and the load balancers' addresses, as in \
                         'proxy from 192.0.2.10,192.0.2.11'"
                            .to_owned(),
                    );
                    continue;
                }
                let from_off = words.get(i).map_or(off, |w| w.0);
                i += 1;
                let mut p = ProxyFrom::default();
                let mut ranges = Vec::new();
                let mut any = false;
                while let Some(&(a_off, spec_word)) = words.get(i) {
                    if OPTIONS.contains(&spec_word) {
                        break;
                    }
                    i += 1;
                    any = true;
                    if spec_word.starts_with('#') {
                        bad(
                            a_off,
                            spec_word,
                            "a comment must be on a line of its own".to_owned(),
                        );
                        // The rest is the would-be comment's words.
                        i = words.len();
                        break;
                    }
                    let mut at = a_off;
                    for spec in spec_word.split(',') {
                        match parse_addrspec(spec) {
                            Ok(r) => {
                                ranges.push(r);
                                p.specs.push(spec.to_owned());
                            }
                            Err(e) => bad(
                                at,
                                spec.get(..).filter(|s| !s.is_empty()).unwrap_or(","),
                                format!("proxy from takes load balancers' addresses: {e}"),
                            ),
                        }
                        at += spec.len() + 1;
                    }
                }
                if !any {
                    bad(
                        from_off,
                        "from",
                        "'proxy from' needs the load balancers' addresses, as in \
                         'proxy from 192.0.2.10,192.0.2.11'"
                            .to_owned(),
                    );
                }
                p.set = AddrSet::from_ranges(ranges);
                o.proxy = Some(p);
            }
            _ => {
                let hint = if word.starts_with('#') {
                    " (a comment must be on a line of its own)"
                } else {
                    ""
                };
                bad(
                    off,
                    word,
                    format!(
                        "unknown listen option '{word}' (known: proxy from ADDRSPEC, backlog N, \
                         nodelay, keepalive){hint}"
                    ),
                );
                if word.starts_with('#') {
                    break;
                }
            }
        }
    }
    o
}
