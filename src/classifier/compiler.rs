//! Compiling a new policy generation off the dispatch thread: a reload of a large rules file
//! must not hold up the connections that arrive meanwhile. They are evaluated with the current
//! generation until the new one is installed, which the parent allows: a verdict may name any
//! generation from the one acknowledged when its connection was accepted.
//!
//! Runs in the classifier. The texts came from the parent (trusted; it already parsed them).
//! One thread, started with the evaluation pool before new threads are forbidden, compiles
//! the generations in the order they were sent, so `PolicyLoaded` acknowledgements stay in
//! order.

use std::sync::{Arc, PoisonError};

use crossbeam_channel as cb;
use privsep::proto::{ClassifierToParent, Gen, LogLevel};

use super::{Loaded, Shared};

/// Generations waiting to be compiled, at most; the parent sends one per reload.
const MAX_WAITING: usize = 16;

/// One generation to compile.
pub struct PolicyJob {
    pub gen: Gen,
    pub rules: String,
    pub actions: String,
    /// `ipfile:` lists: (name as written in the rules, text).
    pub ipfiles: Vec<(String, String)>,
}

/// Parses both texts into a generation; Err with the first error and how many more.
pub fn compile(job: &PolicyJob) -> Result<Loaded, String> {
    let parsed_rules = policy::rules::parse_rules("rules", &job.rules);
    let parsed_actions = policy::actions::parse_actions("actions", &job.actions);
    match (parsed_rules.value, parsed_actions.value) {
        (Some(rules), Some(actions)) => Ok(Loaded {
            gen: job.gen,
            needs_lookups: rules.can_need_lookups(),
            rates: (!rules.rates().is_empty()).then(|| Arc::new(rules.rates().to_vec())),
            rules,
            actions,
            // The parent reported what did not parse; what did is used.
            ipfiles: job
                .ipfiles
                .iter()
                .map(|(name, text)| (name.clone(), address_list(name, text)))
                .collect(),
        }),
        _ => {
            let mut errors = parsed_rules
                .diagnostics
                .iter()
                .chain(parsed_actions.diagnostics.iter())
                .filter(|d| d.severity == policy::Severity::Error);
            let first = errors
                .next()
                .map(|d| d.to_string())
                .unwrap_or_else(|| "no diagnostic".to_string());
            let more = errors.count();
            Err(format!(
                "policy gen={} does not parse in the classifier (the parent accepted it): \
                 {first} (+{more} more); keeping the old policy",
                job.gen.0
            ))
        }
    }
}

/// An `ipfile:` list; one with a bad entry holds nothing until it is fixed (the parent logged
/// the entry with its position), as documented.
fn address_list(name: &str, text: &str) -> policy::addr::AddrSet {
    policy::sentry::parse_ipfile(name, text)
        .value
        .unwrap_or_default()
}

/// Makes `loaded` the current generation and acknowledges it to the parent.
pub fn install(shared: &Shared, loaded: Loaded) {
    let gen = loaded.gen;
    let rates = loaded.rates.clone();
    *shared
        .policy
        .write()
        .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(loaded));
    // ORDER: after the switch. A charge that still used the old rules may recreate a dropped
    // bucket; the minute sweep forgets it once it is full.
    keep_rates(shared, rates.as_ref().map_or(&[], |r| r.as_slice()));
    shared
        .parent
        .send(&ClassifierToParent::PolicyLoaded { gen });
    shared
        .parent
        .log(LogLevel::Info, 2, format!("policy gen={} loaded", gen.0));
}

/// Buckets of rates the new generation still has are kept; the others are forgotten.
fn keep_rates(shared: &Shared, specs: &[policy::rate::RateSpec]) {
    shared
        .rates
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .keep_only(specs);
}

/// The compiling thread.
pub struct Compiler {
    tx: cb::Sender<PolicyJob>,
}

impl Compiler {
    pub fn start(shared: &Arc<Shared>) -> std::io::Result<Compiler> {
        let (tx, rx) = cb::bounded::<PolicyJob>(MAX_WAITING);
        let shared = Arc::clone(shared);
        std::thread::Builder::new()
            .name("compile".into())
            .spawn(move || {
                // Ends when the dispatcher (the only sender) is dropped.
                while let Ok(job) = rx.recv() {
                    match compile(&job) {
                        Ok(loaded) => install(&shared, loaded),
                        Err(e) => shared.parent.log(LogLevel::Crit, 0, e),
                    }
                }
            })?;
        Ok(Compiler { tx })
    }

    /// Queues a generation; gives it back if too many are waiting (the caller compiles it
    /// itself, as before there was a compiler).
    pub fn submit(&self, job: PolicyJob) -> Result<(), PolicyJob> {
        self.tx.try_send(job).map_err(cb::TrySendError::into_inner)
    }
}
