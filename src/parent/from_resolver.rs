//! The parent's side of the resolver channel: every `ResolverToParent` message is admitted here
//! (admit.rs) and handed to its `on_<variant>` handler.
//!
//! Runs in the parent (root). Every message came from the resolver, which talks to DNS servers
//! and identd on the network; nothing is acted on before `admit::admit_resolver` accepted it.
//! Handlers return a [`Failure`] instead of restarting anything themselves.

use privsep::proto::{ParentToResolver, ResolverToParent};
use privsep::Role;

use super::admit::{self, AdmittedResolver};
use super::workers::Failure;
use super::Parent;

impl Parent {
    /// Admits one message from the resolver and hands it to its handler.
    pub(super) fn on_resolver(&mut self, msg: ResolverToParent) -> Result<(), Failure> {
        let Some(w) = self.resolver.as_mut() else {
            return Ok(());
        };
        match admit::admit_resolver(&self.build, w.hello, msg) {
            Err(v) => return Err(Failure::violation(Role::Resolver, format!("resolver {v}"))),
            Ok(AdmittedResolver::Hello) => self.on_resolver_hello(),
            Ok(AdmittedResolver::Log {
                level,
                verbosity,
                text,
            }) => w.log(level, verbosity, &text),
        }
        Ok(())
    }

    fn on_resolver_hello(&mut self) {
        if let Some(w) = self.resolver.as_mut() {
            w.hello = true;
        }
        if self.workers_ready() {
            self.ever_ready = true;
        }
    }

    /// Greets a new resolver with the settings it runs with.
    pub(super) fn greet_resolver(&mut self) -> Result<(), Failure> {
        let msg = ParentToResolver::Hello {
            build: self.build.clone(),
            settings: self.settings.resolver.clone(),
        };
        match self.resolver.as_mut() {
            Some(w) => w.queue(&msg, "Hello"),
            None => Ok(()),
        }
    }
}
