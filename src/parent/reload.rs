//! Reloading the rules and actions files when they change.
//!
//! Runs in the parent. The files are the administrator's (trusted, but possibly half-written
//! or broken). Each file is stat'ed every second and on SIGHUP; a file whose identity, size or
//! mtime changed is re-read and parsed as a unit. A file that fails to load (unreadable,
//! missing, or with errors) has every diagnostic logged with file:line:col and then onfileerror
//! decides: `use-old` keeps the last good version, `drop` empties it until it loads again
//! (an empty rules or actions file makes every connection close). A successful load or a drop
//! bumps the policy generation; the caller ships the new texts to the classifier.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use policy::actions::Actions;
use policy::conf::OnFileError;
use policy::{Diagnostic, Severity};

/// What a file looked like when last checked; a change in any field means "reload".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stamp {
    Missing,
    Seen {
        dev: u64,
        ino: u64,
        size: u64,
        mtime: i64,
        mtime_nsec: i64,
    },
}

fn stamp(path: &Path) -> Stamp {
    match std::fs::metadata(path) {
        Ok(m) => Stamp::Seen {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        },
        Err(_) => Stamp::Missing,
    }
}

/// One watched file.
#[derive(Debug)]
pub struct Watched {
    pub path: PathBuf,
    /// The name used in diagnostics (the path as resolved).
    pub name: String,
    last: Option<Stamp>,
}

impl Watched {
    pub fn new(path: PathBuf) -> Watched {
        let name = path.display().to_string();
        Watched {
            path,
            name,
            last: None,
        }
    }

    /// Returns the file's text when it changed since the last call (or `force`), `Ok(None)` when
    /// it did not. A missing file is reported once per disappearance.
    pub fn poll(&mut self, force: bool) -> Option<Result<String, String>> {
        let now = stamp(&self.path);
        if !force && self.last == Some(now) {
            return None;
        }
        self.last = Some(now);
        Some(
            std::fs::read_to_string(&self.path)
                .map_err(|e| format!("{}: cannot read: {e}", self.name)),
        )
    }
}

/// The loaded (or dropped) policy texts and the parent's parsed copies.
#[derive(Debug, Default)]
pub struct PolicyFiles {
    /// Rules text (None: dropped / never loaded) and the class names it can produce.
    pub rules: Option<(String, Vec<String>)>,
    pub actions: Option<(String, Arc<Actions>)>,
}

/// The outcome of loading one file, for logging.
#[derive(Debug)]
pub enum LoadError {
    Read(String),
    Diagnostics(Vec<Diagnostic>),
}

impl LoadError {
    /// Every line to log, one per diagnostic.
    pub fn lines(&self) -> Vec<String> {
        match self {
            LoadError::Read(m) => vec![m.clone()],
            LoadError::Diagnostics(d) => d.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Parses a rules file; warnings are returned for logging even on success.
pub fn load_rules(name: &str, text: &str) -> Result<(Vec<String>, Vec<Diagnostic>), LoadError> {
    let parsed = policy::rules::parse_rules(name, text);
    match parsed.value {
        Some(rules) => Ok((rules.class_names(), warnings(parsed.diagnostics))),
        None => Err(LoadError::Diagnostics(parsed.diagnostics)),
    }
}

/// Parses an actions file; warnings are returned for logging even on success.
pub fn load_actions(name: &str, text: &str) -> Result<(Actions, Vec<Diagnostic>), LoadError> {
    let parsed = policy::actions::parse_actions(name, text);
    match parsed.value {
        Some(a) => Ok((a, warnings(parsed.diagnostics))),
        None => Err(LoadError::Diagnostics(parsed.diagnostics)),
    }
}

fn warnings(d: Vec<Diagnostic>) -> Vec<Diagnostic> {
    d.into_iter()
        .filter(|d| d.severity == Severity::Warning)
        .collect()
}

/// What happened to one file on a reload check.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Loaded,
    /// Failed; the old version is kept (use-old, or drop with nothing to drop).
    KeptOld,
    /// Failed; the file is now empty (drop).
    Dropped,
}

impl Outcome {
    /// Whether the classifier needs a new generation.
    pub fn changes_policy(&self) -> bool {
        matches!(self, Outcome::Loaded | Outcome::Dropped)
    }
}

/// Applies onfileerror to a failed load of a file currently held in `slot`.
pub fn on_error<T>(slot: &mut Option<T>, mode: OnFileError) -> Outcome {
    match mode {
        OnFileError::UseOld => Outcome::KeptOld,
        OnFileError::Drop => {
            if slot.take().is_some() {
                Outcome::Dropped
            } else {
                Outcome::KeptOld
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_reports_changes_once() {
        let dir = std::env::temp_dir().join(format!("pn-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("rules");
        std::fs::write(&f, "a: ALL\n").unwrap();
        let mut w = Watched::new(f.clone());
        assert_eq!(w.poll(false), Some(Ok("a: ALL\n".to_owned())));
        assert_eq!(w.poll(false), None);
        assert_eq!(w.poll(true), Some(Ok("a: ALL\n".to_owned())));
        std::fs::write(&f, "a: ALL\nb: ALL\n").unwrap();
        assert_eq!(w.poll(false), Some(Ok("a: ALL\nb: ALL\n".to_owned())));
        std::fs::remove_file(&f).unwrap();
        assert!(matches!(w.poll(false), Some(Err(_))));
        assert_eq!(w.poll(false), None, "a missing file is reported once");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn onfileerror_rows() {
        let mut held = Some(1);
        assert_eq!(on_error(&mut held, OnFileError::UseOld), Outcome::KeptOld);
        assert_eq!(held, Some(1));
        assert_eq!(on_error(&mut held, OnFileError::Drop), Outcome::Dropped);
        assert_eq!(held, None);
        assert_eq!(on_error(&mut held, OnFileError::Drop), Outcome::KeptOld);
        assert!(Outcome::Dropped.changes_policy() && Outcome::Loaded.changes_policy());
        assert!(!Outcome::KeptOld.changes_policy());
    }
}
