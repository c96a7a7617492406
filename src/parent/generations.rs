//! Policy generations: the loaded rules and actions files, the generation number, and the
//! action tables the parent keeps per generation so that a verdict made under an older one can
//! still be rendered.
//!
//! Runs in the parent. The files are the administrator's (read and parsed by reload.rs); this
//! module decides when a new generation starts (a file loaded, or dropped by onfileerror drop)
//! and which tables may be forgotten. [`Generations`] holds no worker state: the loop's side
//! (generation_loop.rs) ships [`Generations::policy_msg`] to the classifier, tells
//! [`Generations::prune`] the oldest generation anything still refers to, marks a generation
//! that ran as one to come back to, and rolls back to it when the workers keep failing.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use policy::conf::OnFileError;
use privsep::proto::{ClassifierSettings, Gen, ParentToClassifier};

use super::admit::GenTable;
use super::classhost::HostCtx;
use super::loader::{Loader, Parsed};
use super::reload::{self, LoadedActions, Outcome, PolicyFiles, RuleNames, Watched};
use crate::exit::{Error, Result};
use crate::log;

/// The files of one generation, as loaded (None: dropped by onfileerror drop).
#[derive(Clone, Debug)]
struct Snapshot {
    gen: Gen,
    rules: Option<(String, RuleNames)>,
    actions: Option<(String, LoadedActions)>,
}

#[derive(Debug)]
pub struct Generations {
    pub gen: Gen,
    pub tables: BTreeMap<Gen, Arc<GenTable>>,
    files: PolicyFiles,
    /// The newest generation that ran (see [`Generations::mark_good`]), to go back to when a
    /// newer one keeps making the workers fail.
    good: Option<Snapshot>,
    /// nanny.conf's `substitutions`: templates are checked when they will be expanded.
    substitutions: bool,
    /// A parse of changed files in progress.
    loading: Option<Loader>,
    /// Parses started: names the running loader's descriptor for the loop's epoll set.
    loads: u64,
    /// A forced check (SIGHUP) arrived while a parse ran: check every file again after it.
    again: bool,
    rules_watch: Watched,
    actions_watch: Watched,
    /// The aftermaxthreads class (a class every generation may produce).
    aftermax: Option<String>,
    /// The `ipfile:` address lists the current rules name, read by the parent (relative to
    /// nanny.conf's directory) and shipped with the policy; reloaded when they change.
    ipfiles: BTreeMap<String, IpFile>,
    /// nanny.conf, for relative ipfile names.
    conf_path: std::path::PathBuf,
    /// An ipfile changed while a parse ran: the next applied load makes a new generation.
    ipfiles_changed: bool,
    /// How the actions file's host parts are resolved (classhost.rs).
    host: HostCtx,
    /// The msgfiles of the current actions: one that changes reloads the actions file, which
    /// reads it again (a msgfile is part of its actions file's unit, onfileerror included).
    msgfiles: Vec<Watched>,
}

#[derive(Debug)]
struct IpFile {
    watch: Watched,
    /// Its text, empty if it could not be read (a list that cannot be read holds nothing).
    text: String,
    /// Left out of the policy message, which it would have taken to this many bytes (over
    /// `files::MAX_POLICY_BYTES`): it holds no address until the policy fits.
    over: Option<usize>,
}

impl Generations {
    /// Loads both files for generation 1. The first policy must load: a daemon that starts
    /// with a broken file would silently drop every connection.
    pub fn load_first(
        conf_path: &std::path::Path,
        rules: std::path::PathBuf,
        actions: std::path::PathBuf,
        aftermax: Option<String>,
        substitutions: bool,
        host: HostCtx,
    ) -> Result<Generations> {
        let mut rules_watch = Watched::new(rules);
        let mut actions_watch = Watched::new(actions);
        let mut errors: Vec<String> = Vec::new();
        let mut files = PolicyFiles::default();
        match rules_watch.poll(true) {
            Some(Ok(text)) => match reload::load_rules(&rules_watch.name, &text) {
                Ok((classes, warns)) => {
                    warns.iter().for_each(|w| log::warn(&w.to_string()));
                    files.rules = Some((text, classes));
                }
                Err(e) => errors.extend(e.lines()),
            },
            Some(Err(e)) => errors.push(e),
            None => errors.push(format!("{}: not read", rules_watch.name)),
        }
        match actions_watch.poll(true) {
            Some(Ok(text)) => {
                match reload::load_actions(&actions_watch.name, &text, substitutions, &host) {
                    Ok((a, warns)) => {
                        warns.iter().for_each(|w| log::warn(&w.to_string()));
                        files.actions = Some((text, a));
                    }
                    Err(e) => errors.extend(e.lines()),
                }
            }
            Some(Err(e)) => errors.push(e),
            None => errors.push(format!("{}: not read", actions_watch.name)),
        }
        if !errors.is_empty() {
            return Err(Error::Config(errors.join("\n")));
        }
        let mut g = Generations {
            gen: Gen(1),
            tables: BTreeMap::new(),
            files,
            rules_watch,
            actions_watch,
            aftermax,
            good: None,
            substitutions,
            loading: None,
            loads: 0,
            again: false,
            ipfiles: BTreeMap::new(),
            conf_path: conf_path.to_path_buf(),
            ipfiles_changed: false,
            host,
            msgfiles: Vec::new(),
        };
        g.sync_ipfiles(true);
        g.sync_msgfiles();
        g.install_table();
        Ok(g)
    }

    /// Records the current files as generation `self.gen`.
    fn install_table(&mut self) {
        let classes = self
            .files
            .rules
            .as_ref()
            .map(|(_, n)| n.classes.clone())
            .unwrap_or_default();
        let actions = self.files.actions.as_ref().map(|(_, a)| a.clone());
        let t = GenTable::new(self.gen, actions, classes, self.aftermax.as_deref());
        self.tables.insert(self.gen, Arc::new(t));
    }

    /// Generation `gen` ran: a classifier loaded it and kept running. Only the current
    /// generation's files are at hand, so an older one is not recorded.
    pub fn mark_good(&mut self, gen: Gen) -> bool {
        if gen != self.gen || self.good.as_ref().is_some_and(|g| g.gen == gen) {
            return false;
        }
        self.good = Some(Snapshot {
            gen,
            rules: self.files.rules.clone(),
            actions: self.files.actions.clone(),
        });
        true
    }

    /// The generation to go back to, if the current one is newer than the last that ran.
    pub fn good_gen(&self) -> Option<Gen> {
        self.good.as_ref().map(|g| g.gen).filter(|g| *g < self.gen)
    }

    /// Goes back to the files of the last generation that ran, as a new generation (so that
    /// verdicts made under the failed one are refused as stale). Returns the new generation;
    /// None when there is nothing to go back to. The files on disk are left alone: they are
    /// loaded again when they change.
    pub fn roll_back(&mut self) -> Option<Gen> {
        self.good_gen()?;
        let good = self.good.clone()?;
        self.files.rules = good.rules;
        self.files.actions = good.actions;
        self.sync_msgfiles();
        // Other texts, another budget for the lists.
        self.fit_ipfiles();
        self.gen = Gen(self.gen.0.saturating_add(1));
        self.install_table();
        // The restored files are what ran; they stay the known-good policy.
        self.good = Some(Snapshot {
            gen: self.gen,
            rules: self.files.rules.clone(),
            actions: self.files.actions.clone(),
        });
        Some(self.gen)
    }

    /// Forgets the action tables older than `oldest` (the oldest generation a pending
    /// verdict or the classifier may still name); the current one is always kept.
    pub fn prune(&mut self, oldest: Gen) {
        let keep_from = oldest.min(self.gen);
        self.tables.retain(|g, _| *g >= keep_from);
    }

    /// The current generation, as the classifier gets it.
    pub fn policy_msg(&self, settings: &ClassifierSettings) -> ParentToClassifier {
        ParentToClassifier::Policy {
            gen: self.gen,
            rules: self.files.rules.as_ref().map(|(t, _)| t.clone()),
            actions: self.files.actions.as_ref().map(|(t, _)| t.clone()),
            settings: settings.clone(),
            // A list left out holds no address: the classifier matches a name it was not sent
            // against nothing.
            ipfiles: self
                .ipfiles
                .iter()
                .filter(|(_, f)| f.over.is_none())
                .map(|(name, f)| (name.clone(), f.text.clone()))
                .collect(),
        }
    }

    /// Checks both files (both at once when `force`); a file that changed is parsed by a
    /// [`Loader`] thread, off the loop. Returns what changed when the parse was done here
    /// (no thread could be started); otherwise [`Generations::finish_load`] applies it once
    /// the loader's descriptor is readable. While a parse runs, checks wait for it.
    pub fn reload(&mut self, force: bool, mode: OnFileError) -> Option<Reloaded> {
        if self.loading.is_some() {
            self.again |= force;
            return None;
        }
        let force = force || std::mem::take(&mut self.again);
        self.ipfiles_changed |= self.sync_ipfiles(force);
        // Every watch is checked (each records its new stamp), then the actions file is read
        // again if any changed.
        let msgfile_changed = self
            .msgfiles
            .iter_mut()
            .fold(false, |any, w| w.changed(force) | any);
        if msgfile_changed && !force {
            log::info("a msgfile changed: reloading the actions file");
        }
        let rules = self
            .rules_watch
            .poll(force)
            .map(|r| (self.rules_watch.name.clone(), r));
        let actions = self
            .actions_watch
            .poll(force || msgfile_changed)
            .map(|r| (self.actions_watch.name.clone(), r));
        if rules.is_none() && actions.is_none() {
            if !std::mem::take(&mut self.ipfiles_changed) {
                return None;
            }
            // Only an address list changed: the same rules and actions, a new generation.
            self.new_generation();
            return Some(Reloaded {
                policy: true,
                ..Reloaded::default()
            });
        }
        match Loader::start(rules, actions, self.substitutions, &self.host) {
            Ok(l) => {
                self.loading = Some(l);
                self.loads += 1;
                None
            }
            Err(parsed) => Some(self.apply(*parsed, mode)),
        }
    }

    /// Reads the ipfiles the current rules name that are new or changed (all when `force`);
    /// forgets those no longer named. Returns whether any text changed.
    fn sync_ipfiles(&mut self, force: bool) -> bool {
        let wanted: Vec<String> = self
            .files
            .rules
            .as_ref()
            .map(|(_, n)| n.ipfiles.clone())
            .unwrap_or_default();
        let before = self.ipfiles.len();
        self.ipfiles.retain(|name, _| wanted.contains(name));
        let mut changed = self.ipfiles.len() != before;
        for name in wanted {
            let conf_path = &self.conf_path;
            let new = !self.ipfiles.contains_key(&name);
            let f = self.ipfiles.entry(name.clone()).or_insert_with(|| IpFile {
                watch: Watched::new(super::setup::resolve_relative(conf_path, &name)),
                text: String::new(),
                over: None,
            });
            let Some(res) = f.watch.poll(force || new) else {
                continue;
            };
            let text = match res {
                Ok(text) => {
                    let parsed = policy::sentry::parse_ipfile(&f.watch.name, &text);
                    for d in &parsed.diagnostics {
                        log::err(&d.to_string());
                    }
                    if parsed.value.is_none() {
                        log::err(&format!(
                            "ipfile {name} has errors: it holds no address until it is fixed"
                        ));
                    }
                    text
                }
                Err(e) => {
                    log::err(&format!(
                        "ipfile {name}: {e}; it holds no address until it loads"
                    ));
                    String::new()
                }
            };
            if text != f.text || new {
                if !new {
                    log::info(&format!("reloaded ipfile {}", f.watch.name));
                }
                f.text = text;
                changed = true;
            }
        }
        self.fit_ipfiles() | changed
    }

    /// Decides which lists the policy message carries, as `-C` decides (files.rs's budget,
    /// counted after the rules and actions texts in the order the rules name the lists), and
    /// logs each list that stops fitting (H013, at its `ipfile:` operand) or fits again.
    /// Returns whether that changed what is shipped.
    fn fit_ipfiles(&mut self) -> bool {
        let Some((rules_text, names)) = self.files.rules.as_ref() else {
            return false;
        };
        let base = rules_text.len() + self.files.actions.as_ref().map_or(0, |(t, _)| t.len());
        let lists: Vec<(&str, &str)> = names
            .ipfiles
            .iter()
            .filter_map(|n| self.ipfiles.get(n).map(|f| (n.as_str(), f.text.as_str())))
            .collect();
        let over: BTreeMap<String, usize> =
            crate::files::over_policy_budget(base, lists.iter().copied())
                .into_iter()
                .filter_map(|(i, total)| lists.get(i).map(|(n, _)| ((*n).to_owned(), total)))
                .collect();
        let mut changed = false;
        let mut lines = Vec::new();
        for (name, f) in self.ipfiles.iter_mut() {
            let now = over.get(name).copied();
            match (f.over, now) {
                (None, Some(total)) => {
                    let message = crate::files::over_policy_budget_message(&f.watch.name, total);
                    let d = policy::check::ipfile_diagnostic(
                        (&self.rules_watch.name, rules_text),
                        name,
                        policy::Severity::Error,
                        "H013",
                        message,
                    );
                    lines.push((true, d.to_string()));
                }
                (Some(_), None) => lines.push((
                    false,
                    format!("ipfile {} fits in the policy again", f.watch.name),
                )),
                _ => {}
            }
            changed |= f.over.is_some() != now.is_some();
            f.over = now;
        }
        for (error, line) in lines {
            if error {
                log::err(&line);
            } else {
                log::info(&line);
            }
        }
        changed
    }

    /// The rules file's name as the logs give it.
    pub fn rules_name(&self) -> &str {
        &self.rules_watch.name
    }

    /// Whether a load is running, or a forced one waits for it to finish.
    pub fn reload_pending(&self) -> bool {
        self.loading.is_some() || self.again
    }

    /// The running loader's wake-up descriptor, for the loop's epoll set, with a number no
    /// other loader's descriptor has.
    pub fn loader_fd(&self) -> Option<(BorrowedFd<'_>, u64)> {
        self.loading.as_ref().map(|l| (l.fd(), self.loads))
    }

    /// Applies a finished parse; None while the loader is still at work.
    pub fn finish_load(&mut self, mode: OnFileError) -> Option<Reloaded> {
        let parsed = self.loading.as_mut()?.try_finish()?;
        self.loading = None;
        let r = self.apply(parsed, mode);
        // Parsing a large file leaves freed heap behind; give it back to the system.
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe { libc::malloc_trim(0) };
        Some(r)
    }

    fn apply(&mut self, parsed: Parsed, mode: OnFileError) -> Reloaded {
        let mut changed = Reloaded::default();
        if let Some((name, loaded)) = parsed.rules {
            let outcome = match loaded {
                Ok((text, classes, warns)) => {
                    warns.iter().for_each(|w| log::warn(&w.to_string()));
                    self.files.rules = Some((text, classes));
                    log::info(&format!("reloaded rules file {name}"));
                    Outcome::Loaded
                }
                Err(e) => {
                    e.lines().iter().for_each(|l| log::err(l));
                    changed
                        .errors
                        .extend(e.lines().iter().map(|l| l.to_string()));
                    report_failed(
                        &name,
                        "rules",
                        mode,
                        reload::on_error(&mut self.files.rules, mode),
                        &mut changed.errors,
                    )
                }
            };
            changed.policy |= outcome.changes_policy();
        }
        if let Some((name, loaded)) = parsed.actions {
            let outcome = match loaded {
                Ok((text, actions, warns)) => {
                    warns.iter().for_each(|w| log::warn(&w.to_string()));
                    self.files.actions = Some((text, actions));
                    changed.actions_loaded = true;
                    log::info(&format!("reloaded actions file {name}"));
                    Outcome::Loaded
                }
                Err(e) => {
                    e.lines().iter().for_each(|l| log::err(l));
                    changed
                        .errors
                        .extend(e.lines().iter().map(|l| l.to_string()));
                    report_failed(
                        &name,
                        "actions",
                        mode,
                        reload::on_error(&mut self.files.actions, mode),
                        &mut changed.errors,
                    )
                }
            };
            changed.policy |= outcome.changes_policy();
        }
        // The actions may now read other msgfiles, or none (dropped).
        self.sync_msgfiles();
        // New rules may name other address lists.
        changed.policy |= self.sync_ipfiles(false) | std::mem::take(&mut self.ipfiles_changed);
        if changed.policy {
            self.new_generation();
        }
        changed
    }

    /// Watches the msgfiles the current actions read (a watch already kept keeps its stamp, so
    /// a change made while the file was being loaded is still seen).
    fn sync_msgfiles(&mut self) {
        let paths: Vec<std::path::PathBuf> = self
            .files
            .actions
            .as_ref()
            .map(|(_, a)| a.host.msgfile_paths().to_vec())
            .unwrap_or_default();
        let mut old = std::mem::take(&mut self.msgfiles);
        for p in paths {
            let w = match old.iter().position(|w| w.path == p) {
                Some(i) => old.swap_remove(i),
                None => {
                    let mut w = Watched::new(p);
                    w.changed(false);
                    w
                }
            };
            self.msgfiles.push(w);
        }
    }

    fn new_generation(&mut self) {
        self.gen = Gen(self.gen.0.saturating_add(1));
        self.install_table();
        log::debug(2, &format!("policy generation {}", self.gen.0));
    }
}

/// What a reload check changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// A new generation exists.
    pub policy: bool,
    /// A new actions file was loaded (norepeatlog forgets its last line).
    pub actions_loaded: bool,
    /// What was logged about files that failed to load (`nannyctl reload` answers with it).
    pub errors: Vec<String>,
}

/// Logs what onfileerror did about a file that failed to load.
fn report_failed(
    name: &str,
    what: &str,
    mode: OnFileError,
    outcome: Outcome,
    errors: &mut Vec<String>,
) -> Outcome {
    let line = match (mode, &outcome) {
        (OnFileError::Drop, Outcome::Dropped) => format!(
            "{what} file {name} has errors: dropped until it loads (every connection is closed)"
        ),
        (OnFileError::Drop, _) => format!("{what} file {name} still has errors: still dropped"),
        _ => format!("{what} file {name} has errors: keeping the old {what}"),
    };
    log::err(&line);
    errors.push(line);
    outcome
}
