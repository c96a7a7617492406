//! The `portnanny` binary's code, as a library so the role mains, the parent and the tests
//! share it.
//!
//! Roles (DESIGN.md §1): the parent ([`parent`]) binds, accepts, spawns and reaps as root; the
//! classifier ([`classifier`]) and the resolver ([`resolver`]) run unprivileged, re-exec'd from
//! the same binary with the hidden `--privsep-role` argument (see `main.rs`). [`args`] parses
//! the command line, [`log`] is the only way anything reaches stderr or syslog, [`exit`] holds
//! the exit codes. [`nannyctl`] is the second binary's code, the control socket's client.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod args;
pub mod classifier;
pub mod control;
pub mod exit;
pub mod fds;
pub mod files;
pub mod import;
pub mod log;
pub mod nannyctl;
pub mod nannyctl_conntrack;
pub mod netfilter;
pub mod nlsock;
pub mod noprocs;
pub mod parent;
pub mod resolver;
pub mod sentry;
pub mod xmlrpc_passwd;
