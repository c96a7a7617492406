//! Reaping: services, block commands and workers that exited, collected after SIGCHLD.
//!
//! Runs in the parent. The input is waitpid(2) for our own children; a service's end releases
//! its connection's count in the classifier, a worker's death is a failure for the loop.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::conns;
use super::spawn;
use super::workers::Failure;
use super::Parent;
use crate::log;

impl Parent {
    /// Reaps every child that exited: a service's row leaves the connection table (and its
    /// count is released); a worker's death is returned for the loop to restart its group.
    pub(super) fn reap(&mut self) -> Option<Failure> {
        let mut failed = None;
        // Bounded: each iteration reaps one child; there cannot be more zombies than children.
        for _ in 0..100_000 {
            let st = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return failed,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::err(&format!("waitpid: {e}"));
                    return failed;
                }
                Ok(st) => st,
            };
            let pid = match st {
                WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _) => pid,
                _ => continue,
            };
            // Only for log lines, so built only when one is written.
            let how = || match st {
                WaitStatus::Signaled(_, sig, _) => format!("signal={}", sig.as_str()),
                WaitStatus::Exited(_, code) => format!("exit={code}"),
                _ => String::new(),
            };
            if let Some(c) = self.conns.end_service(pid.as_raw()) {
                let conns::State::Running {
                    counted, served, ..
                } = c.state
                else {
                    continue;
                };
                let hint = match st {
                    WaitStatus::Exited(_, spawn::EXIT_SETUP_FAILED) => Some(
                        "its set-up failed before exec (dup2, the class's rlimit, nice or \
                             chdir, or the user's ids)",
                    ),
                    WaitStatus::Exited(_, spawn::EXIT_EXEC_FAILED) => {
                        Some("execve failed (not an executable?)")
                    }
                    _ => None,
                };
                let age = served.started.elapsed();
                if let (Some(h), true) = (hint, age < Duration::from_secs(1)) {
                    log::err(&format!("service pid={pid} conn={} {}: {h}", c.id.0, how()));
                }
                if log::enabled(1) {
                    log::debug(
                        1,
                        &format!(
                            "end pid={pid} conn={} {} secs={}",
                            c.id.0,
                            how(),
                            age.as_secs()
                        ),
                    );
                }
                self.service_reaped(c.id, pid.as_raw());
                if let Err(f) = self.conn_closed(c.id, counted) {
                    failed.get_or_insert(f);
                }
                continue;
            }
            if self.blocker.runner().on_exit(pid, st) {
                continue;
            }
            let worker = self.links().find(|w| w.pid() == pid).map(|w| w.role());
            match worker {
                Some(role) => {
                    failed.get_or_insert(Failure::new(
                        role,
                        format!("the {role} (pid {pid}) died: {}", how()),
                    ));
                }
                None => log::debug(3, &format!("reaped pid={pid} {}", how())),
            }
        }
        failed
    }
}
