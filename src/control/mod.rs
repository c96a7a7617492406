//! The control worker: serves the local control socket (nannyctl). Being written on branch
//! `ctl`; this first commit only gives the role its entry point.

use std::os::fd::OwnedFd;
use std::process::ExitCode;

use privsep::proto::{ControlToParent, ParentToControl};
use privsep::Channel;

pub fn run(_parent: Channel<ControlToParent, ParentToControl>, _listener: OwnedFd) -> ExitCode {
    ExitCode::from(crate::exit::EXIT_SYSTEM)
}
