//! Proofs that the privilege drop worked (STYLE.md §2.6 step 8 and the rlimit checks). Each
//! check reads the state back from the kernel rather than trusting that a call succeeded, and
//! a mismatch is a [`DropError`] naming the check.
//!
//! Runs in a worker during `demote` / `forbid_new_processes`; handles no peer bytes.

use caps::{CapSet, CapsHashSet};
use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::resource::{getrlimit, Resource};
use nix::unistd::{getgroups, getresgid, getresuid, setgid, setuid, Gid, Uid};

use crate::error::DropError;

/// What the drop must have produced.
pub(crate) struct Expected<'a> {
    pub uid: Uid,
    pub gid: Gid,
    /// Exactly these capabilities in bounding, permitted and effective.
    pub keep: &'a CapsHashSet,
}

/// The process has exactly one thread (capabilities are per thread). Fails closed if /proc
/// cannot tell.
pub(crate) fn single_thread() -> Result<(), DropError> {
    let n = std::fs::read_dir("/proc/self/task")
        .map_err(|e| DropError::os("single_thread", e))?
        .count();
    if n != 1 {
        return Err(DropError::check(
            "single_thread",
            format!("{n} threads running"),
        ));
    }
    Ok(())
}

/// After the id change as root: ids, groups, no way back to 0, exactly the kept capabilities,
/// root dir.
pub(crate) fn dropped(plan: &Expected<'_>, root_id: Option<(u64, u64)>) -> Result<(), DropError> {
    let u = getresuid().map_err(|e| DropError::os("verify_uid", e))?;
    if u.real != plan.uid || u.effective != plan.uid || u.saved != plan.uid {
        return Err(DropError::check(
            "verify_uid",
            format!(
                "uids {}/{}/{}, want {}",
                u.real, u.effective, u.saved, plan.uid
            ),
        ));
    }
    let g = getresgid().map_err(|e| DropError::os("verify_gid", e))?;
    if g.real != plan.gid || g.effective != plan.gid || g.saved != plan.gid {
        return Err(DropError::check(
            "verify_gid",
            format!(
                "gids {}/{}/{}, want {}",
                g.real, g.effective, g.saved, plan.gid
            ),
        ));
    }
    let groups = getgroups().map_err(|e| DropError::os("verify_groups", e))?;
    if groups != [plan.gid] {
        return Err(DropError::check(
            "verify_groups",
            format!("groups {groups:?}, want [{}]", plan.gid),
        ));
    }
    cannot_regain_root()?;
    exactly_capabilities(plan.keep)?;
    bounding_exactly(plan.keep)?;
    keepcaps_off()?;
    if let Some((dev, ino)) = root_id {
        let st = nix::sys::stat::stat("/").map_err(|e| DropError::os("verify_chroot", e))?;
        if (st.st_dev, st.st_ino) != (dev, ino) {
            return Err(DropError::check(
                "verify_chroot",
                "/ is not the chroot directory",
            ));
        }
    }
    Ok(())
}

/// Started without root: make sure we never were privileged and hold no capability but
/// (some of) the kept ones.
pub(crate) fn never_privileged(keep: &CapsHashSet) -> Result<(), DropError> {
    let u = getresuid().map_err(|e| DropError::os("verify_uid", e))?;
    if u.real.is_root() || u.effective.is_root() || u.saved.is_root() {
        return Err(DropError::check(
            "verify_uid",
            format!("uids {}/{}/{} include 0", u.real, u.effective, u.saved),
        ));
    }
    cannot_regain_root()?;
    exactly_capabilities(keep)?;
    keepcaps_off()
}

/// OpenSSH's test: trying to get the old ids back must fail with EPERM. If it succeeds we are
/// root again, and the caller's error makes the process exit.
fn cannot_regain_root() -> Result<(), DropError> {
    match setuid(Uid::from_raw(0)) {
        Err(Errno::EPERM) => {}
        Ok(()) => return Err(DropError::check("verify_setuid", "setuid(0) succeeded")),
        Err(e) => return Err(DropError::os("verify_setuid", e)),
    }
    match setgid(Gid::from_raw(0)) {
        Err(Errno::EPERM) => Ok(()),
        Ok(()) => Err(DropError::check("verify_setgid", "setgid(0) succeeded")),
        Err(e) => Err(DropError::os("verify_setgid", e)),
    }
}

fn names(set: &CapsHashSet) -> String {
    let mut names: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    names.sort();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(",")
    }
}

/// Permitted and effective are exactly `keep`; ambient and inheritable are empty.
fn exactly_capabilities(keep: &CapsHashSet) -> Result<(), DropError> {
    let none = CapsHashSet::new();
    for (set, name, want) in [
        (CapSet::Permitted, "permitted", keep),
        (CapSet::Effective, "effective", keep),
        (CapSet::Ambient, "ambient", &none),
        (CapSet::Inheritable, "inheritable", &none),
    ] {
        let have = caps::read(None, set).map_err(|e| DropError::caps("verify_caps", e))?;
        if &have != want {
            return Err(DropError::check(
                "verify_caps",
                format!("{name} set is {}, want {}", names(&have), names(want)),
            ));
        }
    }
    Ok(())
}

/// The bounding set holds exactly `keep`, including capabilities newer than the `caps` crate.
fn bounding_exactly(keep: &CapsHashSet) -> Result<(), DropError> {
    for cap in 0..64u8 {
        // SAFETY: PR_CAPBSET_READ takes a capability number and touches no memory.
        let present =
            unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) };
        if present < 0 {
            break;
        }
        let kept = keep.iter().any(|k| k.index() == cap);
        if (present == 1) != kept {
            return Err(DropError::check(
                "verify_bounding",
                format!(
                    "capability {cap} {} the bounding set",
                    if kept { "missing from" } else { "still in" }
                ),
            ));
        }
    }
    Ok(())
}

fn keepcaps_off() -> Result<(), DropError> {
    if prctl::get_keepcaps().map_err(|e| DropError::os("verify_keepcaps", e))? {
        return Err(DropError::check("verify_keepcaps", "PR_GET_KEEPCAPS is 1"));
    }
    Ok(())
}

/// Soft and hard limit of `res` both equal `want`.
pub(crate) fn rlimit(step: &'static str, res: Resource, want: u64) -> Result<(), DropError> {
    let (soft, hard) = getrlimit(res).map_err(|e| DropError::os(step, e))?;
    if soft != want || hard != want {
        return Err(DropError::check(
            step,
            format!("{res:?} is {soft}/{hard}, want {want}"),
        ));
    }
    Ok(())
}

/// With RLIMIT_NPROC 0, creating a thread must fail, unless the kernel exempts us (uid 0 or
/// CAP_SYS_RESOURCE/CAP_SYS_ADMIN, which a dropped worker never has): then we can only trust
/// the limit we read back.
pub(crate) fn cannot_spawn() -> Result<(), DropError> {
    let exempt = nix::unistd::getuid().is_root()
        || [
            caps::Capability::CAP_SYS_RESOURCE,
            caps::Capability::CAP_SYS_ADMIN,
        ]
        .into_iter()
        .any(|c| caps::has_cap(None, caps::CapSet::Effective, c).unwrap_or(true));
    if exempt {
        return Ok(());
    }
    match std::thread::Builder::new().spawn(|| ()) {
        Err(_) => Ok(()),
        Ok(handle) => {
            let _ = handle.join();
            Err(DropError::check(
                "verify_nproc",
                "a thread could still be created",
            ))
        }
    }
}
