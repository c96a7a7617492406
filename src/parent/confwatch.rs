//! nanny.conf after start: it is read once (its settings shape the listeners, the users, the
//! workers and their limits, none of which can change under a running daemon), so a reload
//! must say so when the file was edited instead of silently ignoring the edit.
//!
//! Runs in the parent; only stats the administrator's file.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::log;

/// The file's identity, size and modification time; None when it cannot be stat'ed.
type Stamp = Option<(u64, u64, u64, i64, i64)>;

fn stamp(path: &PathBuf) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

#[derive(Debug)]
pub struct ConfWatch {
    path: PathBuf,
    /// As read at start.
    loaded: Stamp,
    /// The last change already reported.
    reported: Stamp,
}

impl ConfWatch {
    pub fn new(path: PathBuf) -> ConfWatch {
        let loaded = stamp(&path);
        ConfWatch {
            path,
            loaded,
            reported: loaded,
        }
    }

    /// On a reload: warns (once per edit) that nanny.conf changed and is not re-read.
    pub fn check(&mut self) {
        let now = stamp(&self.path);
        if now == self.loaded || now == self.reported {
            return;
        }
        self.reported = now;
        log::warn(&message(&self.path));
    }
}

/// The warning for an edited nanny.conf. Its list is every directive the parser knows, not a
/// hand-kept one: nothing of nanny.conf is applied by a reload.
fn message(path: &std::path::Path) -> String {
    format!(
        "{} changed since start: nanny.conf is not re-read on reload; restart portnanny to \
         apply it (every directive in it needs a restart: {}; a reload re-reads only the rules \
         and actions files, the ipfile: lists and msgfiles they name, and, on SIGHUP or \
         nannyctl reload, the xmlrpcusers file)",
        path.display(),
        policy::conf::all_directives()
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    /// The list names every directive, those that came after the first list was written
    /// (passenv, ipv4prefix, ipv6prefix, the sentry, control and XML-RPC ones) included.
    #[test]
    fn the_warning_names_every_directive() {
        let m = super::message(std::path::Path::new("/etc/nanny.conf"));
        for d in [
            "passenv",
            "ipv4prefix",
            "ipv6prefix",
            "trap",
            "stealth",
            "blockfile",
            "neverblock",
            "control",
            "conntrack",
            "xmlrpc",
            "xmlrpcusers",
        ] {
            assert!(m.contains(&format!(" {d},")), "{d}: {m}");
        }
        for d in policy::conf::all_directives() {
            assert!(m.contains(&format!(" {d}")), "{d}: {m}");
        }
    }
}
