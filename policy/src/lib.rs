//! portnanny's policy: the three configuration languages (nanny.conf, rules, actions), the
//! lazy rule evaluator, the decision procedure and `%(name)s` substitution.
//!
//! This crate does no I/O. It takes file names and text, and returns values plus diagnostics
//! that carry file, line and column. Lookups (DNS, identd, history) reach it only through the
//! [`facts::Facts`] trait, which the classifier implements.

pub mod actions;
pub mod addr;
pub mod check;
pub mod conf;
pub mod control_conf;
pub mod decide;
pub mod decode;
pub mod expand;
pub mod explain;
pub mod facts;
pub mod grouping;
pub mod ipfile;
pub mod listenopts;
pub mod rate;
pub mod rules;
pub mod sentry;
pub mod source;
pub mod template;
pub mod timespec;
pub mod words;
pub mod xmlrpc_conf;

pub use source::{Diagnostic, Parsed, Severity, SourceFile};
