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
        log::warn(&format!(
            "{} changed since start: nanny.conf is not re-read on reload; restart portnanny \
             to apply it (every setting in it needs a restart: listen, user, privsepuser, \
             chrootdir, rulefile, actionfile, maxthreads, aftermaxthreads, onfileerror, \
             substitutions, dropipafter, expireevery, the timeouts and the cache)",
            self.path.display()
        ));
    }
}
