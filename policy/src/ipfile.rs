//! Address list files (`ipfile:` in rules, PortSentry's IGNORE_FILE): one or more ADDRSPECs a
//! line. Pure: the parent reads the file, the classifier gets its text.

use crate::addr::{parse_addrspec, AddrSet};
use crate::source::{Parsed, Severity, SourceFile};
use crate::words::words;

/// Parses an address list file (`ipfile:`, and the parent's own lists): one or more ADDRSPECs
/// per line (what `ip:` accepts), `#` to the end of a line is a comment, blank lines are
/// ignored. Every bad word is an error (C011) at its line and column; the set is returned only
/// when there were none.
pub fn parse_ipfile(name: &str, text: &str) -> Parsed<AddrSet> {
    let src = SourceFile::new(name, text);
    let mut set = AddrSet::new();
    let mut diags = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let lineno = u32::try_from(n + 1).unwrap_or(u32::MAX);
        let content = line.split('#').next().unwrap_or_default();
        for (off, word) in words(content) {
            match parse_addrspec(word) {
                Ok(r) => set.insert(r),
                Err(e) => {
                    let col = line.get(..off).map_or(0, |p| p.chars().count()) + 1;
                    diags.push(src.diagnostic(
                        Severity::Error,
                        "C011",
                        lineno,
                        u32::try_from(col).unwrap_or(u32::MAX),
                        u32::try_from(word.chars().count()).unwrap_or(1),
                        e.to_string(),
                    ));
                }
            }
        }
    }
    let value = diags.is_empty().then_some(set);
    Parsed {
        value,
        diagnostics: diags,
    }
}
