//! portnanny's process split: the message contract between roles ([`proto`]), framing
//! ([`wire`]), typed channels ([`channel`]), the role table ([`role`]), re-exec of worker roles
//! ([`spawn`]) and the privilege-drop checklist ([`drop`], [`verify`]).
//!
//! Runs in every process (parent, classifier, resolver). No policy logic lives here. Anything
//! derived from a peer's bytes goes through `Result`; panicking helpers are denied outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod channel;
pub mod cidr;
pub mod conntrack;
pub mod control;
pub mod drop;
pub mod error;
pub mod proto;
pub mod role;
pub mod spawn;
mod verify;
pub mod wire;
pub mod xmlrpc;

pub use channel::{Channel, Receiver, Sender};
pub use drop::{check_chroot_dir, demote, forbid_new_processes, DropPlan};
pub use error::{ChannelError, DropCause, DropError, SpawnError, Violation};
pub use role::{NoProcesses, Peer, Profile, Role, ROLES};
pub use spawn::{build_id, spawn_worker, take_worker_fds, take_worker_fds_as, Worker, ROLE_ARG};
pub use wire::MAX_FRAME;
