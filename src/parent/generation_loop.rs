//! The loop's side of policy generations: when the files are checked, what a finished load
//! ships to the classifier, which action tables are dropped, when a generation has run long
//! enough to come back to, and the roll-back to it.
//!
//! Runs in the parent, on its poll loop; [`super::generations::Generations`] keeps the
//! bookkeeping, this file decides when to act on it.

use std::time::{Duration, Instant};

use super::generations::Reloaded;
use super::Parent;
use crate::log;

/// A generation counts as one that ran once a classifier has kept it this long.
const GOOD_AFTER: Duration = Duration::from_secs(5);

/// Worker failures after a reload, before the generation that ran last is restored.
pub(super) const ROLLBACK_AFTER: u32 = 2;

/// The loop's side: when to check the files, what a finished load ships, which tables to drop,
/// and when a generation has run long enough to come back to.
impl Parent {
    /// The workers keep failing under a generation that never ran: go back to the last one
    /// that did (the restarted classifier is greeted with it). If that one fails too, the
    /// back-off gives up as for any failure.
    pub(super) fn roll_back(&mut self) {
        let bad = self.policy.gen;
        let Some(good) = self.policy.good_gen() else {
            return;
        };
        if let Some(new) = self.policy.roll_back() {
            self.failed_since_ship = 0;
            log::crit(&format!(
                "the workers failed {ROLLBACK_AFTER} times after policy generation {} was \
                 loaded: going back to the policy of generation {} (the last that ran) as \
                 generation {}; the files on disk are loaded again when they change",
                bad.0, good.0, new.0
            ));
        }
    }

    /// A generation the classifier has kept for [`GOOD_AFTER`] is one to come back to.
    pub(super) fn note_good_policy(&mut self, now: Instant) {
        if let (Some(g), Some(at)) = (self.shipped.acked, self.shipped.acked_at) {
            if self.workers_ready() && now.saturating_duration_since(at) >= GOOD_AFTER {
                if self.policy.mark_good(g) {
                    // The snapshot it replaced may have been a large policy's.
                    super::memory::give_back();
                }
                self.failed_since_ship = 0;
            }
        }
    }

    /// Drops action tables no pending verdict can name any more.
    pub(super) fn prune_tables(&mut self) {
        let mut oldest = self.policy.gen;
        if self.classifier.is_some() {
            oldest = oldest.min(self.shipped.oldest());
        }
        if let Some(m) = self.conns.oldest_pending_gen() {
            oldest = oldest.min(m);
        }
        let before = self.policy.tables.len();
        self.policy.prune(oldest);
        if self.policy.tables.len() < before {
            super::memory::give_back();
        }
    }

    /// Checks both files; a change is parsed off the loop and applied by [`Parent::loaded`].
    pub(super) fn reload(&mut self, force: bool) {
        if force {
            self.reload_xmlrpc_users();
        }
        if let Some(changed) = self.policy.reload(force, self.settings.onfileerror) {
            self.reloaded(changed);
        }
    }

    /// The loader finished: apply what it parsed.
    pub(super) fn loaded(&mut self) {
        if let Some(changed) = self.policy.finish_load(self.settings.onfileerror) {
            self.reloaded(changed);
        }
        // A forced reload asked for while this one ran starts now, not at the next check.
        if self.policy.reload_pending() {
            self.reload(false);
        }
    }

    /// Ships a new generation.
    fn reloaded(&mut self, changed: Reloaded) {
        if changed.actions_loaded {
            // norepeatlog remembers the last line of one loaded actions file.
            self.last_log = None;
        }
        if changed.policy {
            self.prune_tables();
            if let Err(f) = self.ship_policy() {
                self.worker_failed(f);
            }
        }
        if !self.policy.reload_pending() {
            self.answer_reload(&changed);
        }
    }
}
