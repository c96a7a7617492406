//! Reloading the rules and actions files when they change.
//!
//! Runs in the parent. The files are the administrator's (trusted, but possibly half-written
//! or broken). Each file is stat'ed every second and on SIGHUP. A file is read only once it
//! has stopped changing: its identity, size and mtime must be the same on two consecutive
//! checks and its mtime at least [`SETTLE`] old, so an editor or a slow `cat > rules` caught
//! mid-write is never loaded. A file renamed into place whose mtime is already that old (a
//! new inode) loads at once; SIGHUP (`force`) loads at once whatever the file looks like, as
//! does the first load at start-up. An empty file that replaces one with content is refused
//! like a broken one (a truncation caught before the rewrite, `: > rules`), so under
//! `use-old` the old policy stays; a policy that should be empty says so with a comment line.
//! A file that fails to load (unreadable, missing, not a regular file, too big, not UTF-8,
//! empty, or with errors) has every diagnostic logged with file:line:col and then
//! onfileerror decides: `use-old` keeps the last good version, `drop` empties it until it
//! loads again (an empty rules or actions file makes every connection close). A successful
//! load or a drop bumps the policy generation; the caller ships the new texts to the
//! classifier.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use policy::actions::Actions;
use policy::conf::OnFileError;
use policy::{Diagnostic, Severity};

use super::classhost::{self, HostCtx, HostTable};
use crate::files;

/// How long a changed file must have been left alone before a periodic check loads it.
/// Longer than the pauses of a slow writer seen in practice (a script that writes a header,
/// then sleeps 2 s, then the rest); write-then-rename never needs it.
pub const SETTLE: Duration = Duration::from_secs(3);

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

impl Stamp {
    fn of(m: &Metadata) -> Stamp {
        Stamp::Seen {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }

    /// How long ago the file was last written, by its mtime; None for a missing file or an
    /// mtime in the future (a skewed clock), where only our own observation counts.
    fn age(&self, now: SystemTime) -> Option<Duration> {
        let Stamp::Seen {
            mtime, mtime_nsec, ..
        } = *self
        else {
            return None;
        };
        let secs = u64::try_from(mtime).ok()?;
        let nanos = u32::try_from(mtime_nsec).ok()?;
        let written = UNIX_EPOCH.checked_add(Duration::new(secs, nanos))?;
        now.duration_since(written).ok()
    }

    fn inode(&self) -> Option<(u64, u64)> {
        match *self {
            Stamp::Seen { dev, ino, .. } => Some((dev, ino)),
            Stamp::Missing => None,
        }
    }
}

fn stamp(path: &Path) -> Stamp {
    match std::fs::metadata(path) {
        Ok(m) => Stamp::of(&m),
        Err(_) => Stamp::Missing,
    }
}

/// One watched file.
#[derive(Debug)]
pub struct Watched {
    pub path: PathBuf,
    /// The name used in diagnostics (the path as resolved).
    pub name: String,
    /// The stamp of the version last returned by `poll`.
    last: Option<Stamp>,
    /// A change seen but not yet settled, and when we first saw it.
    pending: Option<(Stamp, Instant)>,
    /// Whether the text last returned had content (an empty file may not replace it).
    had_content: bool,
    settle: Duration,
}

impl Watched {
    pub fn new(path: PathBuf) -> Watched {
        Watched::with_settle(path, SETTLE)
    }

    fn with_settle(path: PathBuf, settle: Duration) -> Watched {
        let name = path.display().to_string();
        Watched {
            path,
            name,
            last: None,
            pending: None,
            had_content: false,
            settle,
        }
    }

    /// Returns the file's text when it changed since the last call and has settled (or
    /// `force`), None when it did not. A missing or unreadable file is reported once per
    /// change; an empty file replacing one with content is an error (see the module comment).
    pub fn poll(&mut self, force: bool) -> Option<Result<String, String>> {
        let now = stamp(&self.path);
        if !force && !self.settled(now) {
            return None;
        }
        self.pending = None;
        let before = self.last.replace(now);
        let (bytes, after) = match files::read_bytes(&self.path, &self.name) {
            Ok(r) => r,
            Err(e) => return Some(Err(e.to_string())),
        };
        let read_stamp = Stamp::of(&after);
        if read_stamp != now && !force {
            // Written to while we read it: not settled after all; wait for it again.
            self.last = before;
            self.pending = Some((read_stamp, Instant::now()));
            return None;
        }
        self.last = Some(read_stamp);
        let blank = bytes.iter().all(u8::is_ascii_whitespace);
        if blank && self.had_content {
            return Some(Err(format!(
                "{}: the file is now empty, which would replace a policy that had content; not \
                 loading it (write the new file under another name and rename it into place; \
                 a policy meant to be empty needs a comment line)",
                self.name
            )));
        }
        let text = policy::decode::decode(&self.name, &bytes).map_err(|d| d.to_string());
        if text.is_ok() {
            self.had_content = !blank;
        }
        Some(text)
    }

    /// Whether the file changed since the last call (and has settled, unless `force`),
    /// without reading it: for files another load reads (msgfiles, read with their actions
    /// file). The first call only records the file's stamp.
    pub fn changed(&mut self, force: bool) -> bool {
        let now = stamp(&self.path);
        let first = self.last.is_none();
        if first || force || self.settled(now) {
            self.pending = None;
            return self.last.replace(now) != Some(now) && !first;
        }
        false
    }

    /// Whether a periodic check may load the file now (see the module comment).
    fn settled(&mut self, now: Stamp) -> bool {
        if self.last == Some(now) {
            self.pending = None;
            return false;
        }
        let age = now.age(SystemTime::now());
        let moved_in = now.inode().is_some() && now.inode() != self.last.and_then(|l| l.inode());
        if moved_in && age.is_some_and(|a| a >= self.settle) {
            return true;
        }
        match self.pending {
            Some((p, seen)) if p == now => {
                let quiet = age.unwrap_or_else(|| seen.elapsed());
                quiet >= self.settle
            }
            _ => {
                self.pending = Some((now, Instant::now()));
                false
            }
        }
    }
}

/// What the parent needs from a rules file: the classes it can produce (admission), and the
/// address list files its `ipfile:` matchers name (the parent reads and ships them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleNames {
    pub classes: Vec<String>,
    pub ipfiles: Vec<String>,
}

/// The loaded (or dropped) policy texts and the parent's parsed copies.
#[derive(Debug, Default)]
pub struct PolicyFiles {
    /// Rules text (None: dropped / never loaded) and the names the parent needs from it.
    pub rules: Option<(String, RuleNames)>,
    pub actions: Option<(String, LoadedActions)>,
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
pub fn load_rules(name: &str, text: &str) -> Result<(RuleNames, Vec<Diagnostic>), LoadError> {
    let parsed = policy::rules::parse_rules(name, text);
    match parsed.value {
        Some(rules) => Ok((
            RuleNames {
                classes: rules.class_names(),
                ipfiles: rules.ipfiles(),
            },
            warnings(parsed.diagnostics),
        )),
        None => Err(LoadError::Diagnostics(parsed.diagnostics)),
    }
}

/// An actions file as the parent keeps it: the parsed table and what its classes need from
/// this host (users, directories, msgfile bytes; see classhost.rs).
#[derive(Clone, Debug)]
pub struct LoadedActions {
    pub actions: Arc<Actions>,
    pub host: Arc<HostTable>,
}

/// Parses an actions file and resolves its host parts; warnings are returned for logging even
/// on success. When `substitutions` is on (nanny.conf), every template is checked as `-C`
/// checks it. A user, directory or msgfile that is not there fails the load like a syntax
/// error, with its file:line:col.
pub fn load_actions(
    name: &str,
    text: &str,
    substitutions: bool,
    host: &HostCtx,
) -> Result<(LoadedActions, Vec<Diagnostic>), LoadError> {
    let parsed = policy::actions::parse_actions_expanding(name, text, substitutions);
    let Some(a) = parsed.value else {
        return Err(LoadError::Diagnostics(parsed.diagnostics));
    };
    let (table, host_diags) = classhost::resolve(&a, name, text, host);
    let mut diags = parsed.diagnostics;
    diags.extend(host_diags);
    if diags.iter().any(|d| d.severity == Severity::Error) {
        diags.sort_by_key(|d| (d.line, d.col));
        return Err(LoadError::Diagnostics(diags));
    }
    Ok((
        LoadedActions {
            actions: Arc::new(a),
            host: Arc::new(table),
        },
        warnings(diags),
    ))
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

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pn-reload-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn watched_reports_changes_once() {
        let dir = scratch("once");
        let f = dir.join("rules");
        std::fs::write(&f, "a: ALL\n").unwrap();
        let mut w = Watched::with_settle(f.clone(), Duration::ZERO);
        assert_eq!(w.poll(false), Some(Ok("a: ALL\n".to_owned())));
        assert_eq!(w.poll(false), None);
        assert_eq!(w.poll(true), Some(Ok("a: ALL\n".to_owned())));
        std::fs::write(&f, "a: ALL\nb: ALL\n").unwrap();
        assert_eq!(w.poll(false), None, "a change must be seen twice");
        assert_eq!(w.poll(false), Some(Ok("a: ALL\nb: ALL\n".to_owned())));
        std::fs::remove_file(&f).unwrap();
        assert_eq!(w.poll(false), None);
        assert!(matches!(w.poll(false), Some(Err(_))));
        assert_eq!(w.poll(false), None, "a missing file is reported once");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 9 item 1: a file still being written (fresh mtime) is not loaded, however often
    /// it is checked, until it has been left alone for the settle interval.
    #[test]
    fn a_fresh_change_waits_for_the_settle_interval() {
        let dir = scratch("settle");
        let f = dir.join("rules");
        std::fs::write(&f, "a: ALL\n").unwrap();
        let mut w = Watched::with_settle(f.clone(), Duration::from_secs(3600));
        assert!(w.poll(true).is_some(), "start-up loads at once");
        std::fs::write(&f, "b: ").unwrap();
        for _ in 0..3 {
            assert_eq!(w.poll(false), None, "a fresh file is not settled");
        }
        assert_eq!(
            w.poll(true),
            Some(Ok("b: ".to_owned())),
            "SIGHUP loads at once"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A finished file renamed into place (a new inode, old mtime) loads on the first check.
    #[test]
    fn rename_of_an_old_file_loads_at_once() {
        let dir = scratch("rename");
        let f = dir.join("rules");
        std::fs::write(&f, "a: ALL\n").unwrap();
        let mut w = Watched::with_settle(f.clone(), Duration::from_secs(60));
        assert!(w.poll(true).is_some());
        let tmp = dir.join("rules.new");
        std::fs::write(&tmp, "b: ALL\n").unwrap();
        let old = std::fs::File::options().write(true).open(&tmp).unwrap();
        old.set_modified(SystemTime::now() - Duration::from_secs(120))
            .unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert_eq!(w.poll(false), Some(Ok("b: ALL\n".to_owned())));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_emptied_file_is_refused_but_an_empty_start_is_not() {
        let dir = scratch("empty");
        let f = dir.join("rules");
        std::fs::write(&f, "").unwrap();
        let mut w = Watched::with_settle(f.clone(), Duration::ZERO);
        assert_eq!(
            w.poll(true),
            Some(Ok(String::new())),
            "empty at start loads"
        );
        std::fs::write(&f, "a: ALL\n").unwrap();
        assert_eq!(w.poll(true), Some(Ok("a: ALL\n".to_owned())));
        std::fs::write(&f, "").unwrap();
        let e = w.poll(true).unwrap().unwrap_err();
        assert!(e.contains("the file is now empty"), "{e}");
        std::fs::write(&f, "# nothing on purpose\n").unwrap();
        assert_eq!(w.poll(true), Some(Ok("# nothing on purpose\n".to_owned())));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = scratch("fifo");
        let f = dir.join("rules");
        nix::unistd::mkfifo(&f, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut w = Watched::new(f.clone());
        let e = w.poll(true).unwrap().unwrap_err();
        assert!(
            e.ends_with("not a regular file (a FIFO); only regular files are read"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The stamp-only check msgfiles use: the first call records, a change is seen once it
    /// settles (or at once when forced), and an unchanged file is never reported.
    #[test]
    fn changed_sees_a_change_once() {
        let dir = scratch("changed");
        let f = dir.join("banner");
        std::fs::write(&f, "a").unwrap();
        let mut w = Watched::with_settle(f.clone(), Duration::ZERO);
        assert!(!w.changed(false), "the first call only records");
        assert!(!w.changed(true), "unchanged, even when forced");
        std::fs::write(&f, "bb").unwrap();
        assert!(!w.changed(false), "a change must be seen twice");
        assert!(w.changed(false));
        assert!(!w.changed(false), "reported once");
        std::fs::write(&f, "ccc").unwrap();
        assert!(w.changed(true), "forced: at once");
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
