//! The parent's counters for `nannyctl metrics`: connections accepted, verdicts by action class,
//! refusals by reason, worker restarts, blocks. The classifier adds its lookup counters; the
//! control worker renders the text.
//!
//! Runs in the parent; updated from admitted verdicts and the parent's own events. Counting a
//! verdict is a hash lookup with no allocation once its class has been seen.

use foldhash::HashMap;
use std::time::Instant;

use privsep::control::{ClassMetrics, LookupMetrics, Metrics};
use privsep::Role;

use super::conns::Conns;

#[derive(Debug)]
pub struct Counters {
    started: Instant,
    /// Verdicts by action class ("-": none).
    by_class: HashMap<String, u64>,
    refused: HashMap<&'static str, u64>,
    restarts: HashMap<Role, u64>,
    blocks: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            started: Instant::now(),
            by_class: HashMap::default(),
            refused: HashMap::default(),
            restarts: HashMap::default(),
            blocks: 0,
        }
    }
}

impl Counters {
    /// A verdict used `class`'s action.
    pub fn verdict(&mut self, class: Option<&str>, refusal: Option<&'static str>) {
        let class = class.unwrap_or("-");
        match self.by_class.get_mut(class) {
            Some(n) => *n += 1,
            None => {
                self.by_class.insert(class.to_owned(), 1);
            }
        }
        if let Some(r) = refusal {
            *self.refused.entry(r).or_insert(0) += 1;
        }
    }

    /// A refusal the parent made itself (too many pending connections, accept failing…).
    pub fn refused(&mut self, reason: &'static str) {
        *self.refused.entry(reason).or_insert(0) += 1;
    }

    pub fn restarted(&mut self, role: Role) {
        *self.restarts.entry(role).or_insert(0) += 1;
    }

    pub fn blocked(&mut self) {
        self.blocks += 1;
    }

    /// Everything, with the live counts read from the connection table; `lifetime`: every
    /// connection accepted so far.
    pub fn snapshot(
        &self,
        lifetime: u64,
        conns: &Conns,
        gen: u32,
        blocked_now: usize,
        lookups: Vec<LookupMetrics>,
    ) -> Metrics {
        let mut active: HashMap<&str, u64> = HashMap::default();
        for c in conns.iter() {
            if let Some(s) = c.served() {
                *active.entry(s.action_class.as_str()).or_insert(0) += 1;
            }
        }
        let mut classes: Vec<ClassMetrics> = self
            .by_class
            .iter()
            .map(|(class, n)| ClassMetrics {
                class: class.clone(),
                accepted: *n,
                active: active.get(class.as_str()).copied().unwrap_or(0),
            })
            .collect();
        for (class, n) in &active {
            if !self.by_class.contains_key(*class) {
                classes.push(ClassMetrics {
                    class: (*class).to_owned(),
                    accepted: 0,
                    active: *n,
                });
            }
        }
        classes.sort_by(|a, b| a.class.cmp(&b.class));
        let mut refused: Vec<(String, u64)> = self
            .refused
            .iter()
            .map(|(r, n)| ((*r).to_owned(), *n))
            .collect();
        refused.sort();
        let mut restarts: Vec<(String, u64)> = privsep::ROLES
            .iter()
            .map(|p| {
                let n = self.restarts.get(&p.role).copied().unwrap_or(0);
                (p.role.as_str().to_owned(), n)
            })
            .collect();
        restarts.sort();
        Metrics {
            uptime_s: self.started.elapsed().as_secs(),
            policy_gen: gen,
            connections_total: lifetime,
            pending: conns.pending_len() as u64,
            running: conns.running_len() as u64,
            writing: conns.writing_len() as u64,
            classes,
            refused,
            lookups,
            blocked_now: blocked_now as u64,
            blocks_total: self.blocks,
            restarts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_refusals_and_restarts_are_counted() {
        let mut c = Counters::default();
        c.verdict(Some("web"), None);
        c.verdict(Some("web"), Some("ipmax"));
        c.verdict(None, None);
        c.restarted(Role::Classifier);
        let m = c.snapshot(2, &Conns::default(), 3, 1, Vec::new());
        assert_eq!(m.connections_total, 2);
        assert_eq!(m.policy_gen, 3);
        let web = m.classes.iter().find(|x| x.class == "web").unwrap();
        assert_eq!((web.accepted, web.active), (2, 0));
        assert!(m.classes.iter().any(|x| x.class == "-" && x.accepted == 1));
        assert_eq!(m.refused, vec![("ipmax".to_owned(), 1)]);
        assert!(m.restarts.contains(&("classifier".to_owned(), 1)));
        assert!(m.restarts.contains(&("resolver".to_owned(), 0)));
        assert_eq!(m.blocked_now, 1);
    }
}
