//! How a worker stops itself from creating processes, as its row in the role table says
//! (privsep's `Profile::no_processes`): RLIMIT_NPROC 0 for a role whose threads are all started
//! by then (Linux counts threads against the limit), the seccomp filter of
//! `resolver::nofork` for a role that starts threads on demand.
//!
//! Runs in a worker, after its privilege drop, at the point its main chose (once the sockets
//! and threads it needs exist). The privilege drop cannot do this itself: the sentry opens its
//! capture socket and the classifier starts its pool only after the drop.

use privsep::{NoProcesses, Role};

/// Forbids new processes for the rest of this worker's life, the way `role`'s row says.
pub fn forbid(role: Role) -> Result<(), String> {
    match role.profile().no_processes {
        NoProcesses::RlimitNproc => privsep::forbid_new_processes().map_err(|e| e.to_string()),
        NoProcesses::Seccomp => {
            crate::resolver::nofork::forbid_new_processes().map_err(|e| e.to_string())
        }
    }
}
