//! The privilege drop of a worker (STYLE.md §2.6, "each child, right after exec"), step by
//! step, each failure named in [`DropError::step`].
//!
//! Runs in every worker (each row of the role table: classifier, resolver, sentry, control,
//! netfilter) right after `take_worker_fds`, still with the parent's credentials (root, or the
//! invoking user in development) and before any thread exists or any message is read. Nothing
//! here handles a peer's bytes; the plan comes from the parent through argv and the role's
//! row. After a failure the process must exit (111) without serving: the parent counts it as a
//! failed worker and restarts it with back-off (and refuses to go on without a working
//! classifier).
//!
//! Order, as root: check the chroot dir → chroot → chdir("/") → shrink the capability bounding
//! set to the kept set, clear ambient and inheritable → (keepcaps on, if any capability is kept)
//! → setgroups([gid]) → setresgid → setresuid → permitted and effective = the kept set, keepcaps
//! off → verify (ids, groups, setuid(0)/setgid(0) fail, exactly the kept capabilities in
//! bounding/permitted/effective and none in ambient/inheritable, keepcaps off, root dir) →
//! dumpable off →
//! NO_NEW_PRIVS (verified) → PDEATHSIG(SIGKILL) and the parent is still ours → rlimits
//! (RLIMIT_CORE 0, RLIMIT_NOFILE, RLIMIT_FSIZE 0). Forbidding new processes comes later, at the
//! point each role's main chooses, the way its row's `no_processes` says: RLIMIT_NPROC 0
//! ([`forbid_new_processes`]) once the classifier has started its threads, the sentry has
//! opened its capture socket and the netfilter worker its netlink socket (the control worker
//! once it has read the parent's Hello); the resolver, which starts threads on demand, installs
//! a seccomp filter instead.
//!
//! The kept set comes from the role's row in the role table (`role::Profile::keep_caps`): empty
//! for the classifier, the resolver and the control worker; CAP_NET_RAW alone for the sentry
//! (its AF_PACKET socket), CAP_NET_ADMIN alone for the netfilter worker (conntrack over
//! netlink).
//!
//! Not root (development): chroot and id changes are impossible and skipped; every capability
//! outside the kept set is dropped; verification checks "never privileged" instead; the rest
//! is the same. The caller logs the one warning line.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::{prctl, stat};
use nix::unistd::{
    chdir, chroot, geteuid, getppid, setgroups, setresgid, setresuid, Gid, Pid, Uid,
};

use crate::error::DropError;
use crate::role::Profile;
use crate::verify;

/// What a worker becomes. Built by the role main from the arguments the parent passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropPlan {
    /// The dedicated privsep user. Never 0 (refused).
    pub uid: Uid,
    /// Its group; the supplementary group list becomes exactly `[gid]`. Never 0 (refused).
    pub gid: Gid,
    /// An empty, root-owned directory to chroot into (classifier), or None (resolver: it
    /// needs /etc for the system resolver).
    pub chroot: Option<PathBuf>,
    /// RLIMIT_NOFILE (soft and hard; never raised above the current hard limit), or None to
    /// leave it.
    pub nofile: Option<u64>,
    /// RLIMIT_FSIZE 0: the process can create no file content (classifier).
    pub fsize_zero: bool,
    /// Exactly the capabilities kept (bounding, permitted, effective); empty for most roles.
    pub keep: Vec<Capability>,
    /// The parent pid the worker was started by (`getppid()` at the top of the role main).
    /// After PR_SET_PDEATHSIG the worker checks it still has this parent: if the parent died
    /// before the signal was armed, nothing would ever kill the worker.
    pub parent: Pid,
}

impl DropPlan {
    /// A plan with no chroot, no NOFILE change, file writes allowed and no capability kept.
    pub fn new(uid: Uid, gid: Gid, parent: Pid) -> DropPlan {
        DropPlan {
            uid,
            gid,
            chroot: None,
            nofile: None,
            fsize_zero: false,
            keep: Vec::new(),
            parent,
        }
    }

    /// The plan for a role's row of the role table: its limits and kept capabilities, and
    /// `chroot_dir` if the row asks for a chroot.
    pub fn for_profile(
        profile: &Profile,
        uid: Uid,
        gid: Gid,
        chroot_dir: Option<PathBuf>,
        parent: Pid,
    ) -> DropPlan {
        DropPlan {
            uid,
            gid,
            chroot: chroot_dir.filter(|_| profile.chroot),
            nofile: Some(profile.nofile),
            fsize_zero: profile.fsize_zero,
            keep: profile.keep_caps.to_vec(),
            parent,
        }
    }

    fn kept(&self) -> CapsHashSet {
        self.keep.iter().copied().collect()
    }
}

fn step<T, E: Into<std::io::Error>>(name: &'static str, r: Result<T, E>) -> Result<T, DropError> {
    r.map_err(|e| DropError::os(name, e))
}

fn caps_step(name: &'static str, r: Result<(), caps::errors::CapsError>) -> Result<(), DropError> {
    r.map_err(|e| DropError::caps(name, e))
}

/// Drop privileges according to `plan` and prove it worked. See the module header for the
/// order. Call while the process has exactly one thread.
pub fn demote(plan: &DropPlan) -> Result<(), DropError> {
    // Capabilities and the bounding set are per thread: a second thread would keep its own.
    verify::single_thread()?;
    if geteuid().is_root() {
        demote_root(plan)?;
    } else {
        demote_unprivileged(plan)?;
    }
    finish(plan)
}

fn demote_root(plan: &DropPlan) -> Result<(), DropError> {
    if plan.uid.is_root() || plan.gid.as_raw() == 0 {
        return Err(DropError::check(
            "plan",
            "refusing to run a worker as uid 0 or gid 0",
        ));
    }
    let mut root_id = None;
    if let Some(dir) = &plan.chroot {
        check_chroot_dir(dir)?;
        let st = step("chroot", stat::stat(dir.as_path()))?;
        root_id = Some((st.st_dev, st.st_ino));
        step("chroot", chroot(dir.as_path()))?;
        // ORDER: chdir after chroot, or the old cwd stays a way out of the new root.
        step("chdir", chdir("/"))?;
    }
    let keep = plan.kept();
    // ORDER: the bounding set first: dropping from it needs CAP_SETPCAP, which the uid change
    // takes away. Then ambient and inheritable, so nothing can come back at an exec.
    shrink_bounding(&keep)?;
    caps_step("ambient", caps::clear(None, CapSet::Ambient))?;
    caps_step("inheritable", caps::clear(None, CapSet::Inheritable))?;
    if !keep.is_empty() {
        // ORDER: keepcaps before setresuid, or leaving uid 0 empties the permitted set.
        step("keepcaps", prctl::set_keepcaps(true))?;
    }
    // ORDER: groups, then gid, then uid: each call needs a privilege the next one removes.
    step("setgroups", setgroups(&[plan.gid]))?;
    step("setresgid", setresgid(plan.gid, plan.gid, plan.gid))?;
    step("setresuid", setresuid(plan.uid, plan.uid, plan.uid))?;
    if !keep.is_empty() {
        // ORDER: permitted before effective (effective must stay a subset of permitted); the
        // uid change already emptied effective.
        caps_step("permitted", caps::set(None, CapSet::Permitted, &keep))?;
        caps_step("effective", caps::set(None, CapSet::Effective, &keep))?;
        step("keepcaps", prctl::set_keepcaps(false))?;
    }
    verify::dropped(
        &verify::Expected {
            uid: plan.uid,
            gid: plan.gid,
            keep: &keep,
        },
        root_id,
    )
}

fn demote_unprivileged(plan: &DropPlan) -> Result<(), DropError> {
    let keep = plan.kept();
    // The bounding set can only shrink with CAP_SETPCAP (e.g. a binary with file caps).
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        shrink_bounding(&keep)?;
    }
    caps_step("ambient", caps::clear(None, CapSet::Ambient))?;
    caps_step("inheritable", caps::clear(None, CapSet::Inheritable))?;
    // Whatever of the kept set this process happens to have (file capabilities), and nothing
    // else. ORDER: effective before permitted: effective must stay a subset of permitted.
    let have = caps::read(None, CapSet::Permitted).map_err(|e| DropError::caps("permitted", e))?;
    let keep: CapsHashSet = have.intersection(&keep).copied().collect();
    caps_step("effective", caps::set(None, CapSet::Effective, &keep))?;
    caps_step("permitted", caps::set(None, CapSet::Permitted, &keep))?;
    verify::never_privileged(&keep)
}

/// Steps common to both modes, after the credentials are final.
fn finish(plan: &DropPlan) -> Result<(), DropError> {
    // Another process of the same (shared privsep) user must not ptrace or read our memory;
    // the kernel already clears this on a uid change, we make it explicit for both modes.
    step("dumpable", prctl::set_dumpable(false))?;
    step("no_new_privs", prctl::set_no_new_privs())?;
    if !step("verify_no_new_privs", prctl::get_no_new_privs())? {
        return Err(DropError::check(
            "verify_no_new_privs",
            "PR_GET_NO_NEW_PRIVS is 0",
        ));
    }
    // ORDER: PDEATHSIG after the credential change, because the kernel clears it then; and the
    // parent check after arming it, or a parent that died in between would go unnoticed.
    step("pdeathsig", prctl::set_pdeathsig(Signal::SIGKILL))?;
    if step("pdeathsig", prctl::get_pdeathsig())? != Some(Signal::SIGKILL) {
        return Err(DropError::check(
            "pdeathsig",
            "PR_GET_PDEATHSIG is not SIGKILL",
        ));
    }
    let ppid = getppid();
    if ppid != plan.parent {
        return Err(DropError::check(
            "verify_parent",
            format!("parent is pid {ppid}, expected {}", plan.parent),
        ));
    }
    step("rlimit_core", setrlimit(Resource::RLIMIT_CORE, 0, 0))?;
    // Only ever lower NOFILE: without root a hard limit cannot be raised, and a limit above
    // the current one would not be "small" anyway.
    let nofile = match plan.nofile {
        Some(n) => Some(n.min(step("rlimit_nofile", getrlimit(Resource::RLIMIT_NOFILE))?.1)),
        None => None,
    };
    if let Some(n) = nofile {
        step("rlimit_nofile", setrlimit(Resource::RLIMIT_NOFILE, n, n))?;
    }
    if plan.fsize_zero {
        // A write past the limit raises SIGXFSZ, whose default action kills the process; with
        // it ignored the write fails with EFBIG instead (a stray panic message to a stderr that
        // is a regular file must not be what kills the classifier).
        // SAFETY: SIG_IGN installs no handler code.
        step("rlimit_fsize", unsafe {
            signal(Signal::SIGXFSZ, SigHandler::SigIgn)
        })?;
        step("rlimit_fsize", setrlimit(Resource::RLIMIT_FSIZE, 0, 0))?;
    }
    verify::rlimit("verify_rlimits", Resource::RLIMIT_CORE, 0)?;
    if let Some(n) = nofile {
        verify::rlimit("verify_rlimits", Resource::RLIMIT_NOFILE, n)?;
    }
    if plan.fsize_zero {
        verify::rlimit("verify_rlimits", Resource::RLIMIT_FSIZE, 0)?;
    }
    Ok(())
}

/// Drop every capability but `keep` from the bounding set: the ones the `caps` crate knows,
/// then any newer ones it does not (PR_CAPBSET_READ answers EINVAL past the kernel's last
/// capability).
fn shrink_bounding(keep: &CapsHashSet) -> Result<(), DropError> {
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps_step("bounding", caps::drop(None, CapSet::Bounding, cap))?;
        }
    }
    for cap in 0..64u8 {
        if keep.iter().any(|k| k.index() == cap) {
            continue;
        }
        // SAFETY: PR_CAPBSET_READ/DROP take a capability number and touch no memory.
        let present =
            unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) };
        if present < 0 {
            break;
        }
        // SAFETY: as above.
        if present == 1
            && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) } != 0
        {
            return Err(DropError::os("bounding", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Set RLIMIT_NPROC to 0 and verify it: from now on this process can create neither
/// processes nor threads (Linux counts threads; the limit is per user, so the privsep user
/// must be dedicated). Every role whose row says `NoProcesses::RlimitNproc` calls this once
/// its threads and sockets exist (the classifier after starting its evaluation threads).
pub fn forbid_new_processes() -> Result<(), DropError> {
    step("rlimit_nproc", setrlimit(Resource::RLIMIT_NPROC, 0, 0))?;
    verify::rlimit("verify_nproc", Resource::RLIMIT_NPROC, 0)?;
    verify::cannot_spawn()
}

/// Check a chroot directory as sshd does for ChrootDirectory: an absolute path whose every
/// component (after resolving symlinks) is a root-owned directory writable by nobody else, and
/// which is empty (nothing to find or execute inside). Run by the parent at start and again by
/// the worker.
pub fn check_chroot_dir(path: &Path) -> Result<(), DropError> {
    const STEP: &str = "chroot_dir";
    let shown = path.display();
    if !path.is_absolute() {
        return Err(DropError::check(
            STEP,
            format!("{shown}: not an absolute path"),
        ));
    }
    // Check the directories the kernel will actually walk: with symlinks resolved, an
    // innocent-looking path could lead through a directory someone else can write.
    let real =
        std::fs::canonicalize(path).map_err(|e| DropError::check(STEP, format!("{shown}: {e}")))?;
    for dir in real.ancestors() {
        let m = std::fs::metadata(dir)
            .map_err(|e| DropError::check(STEP, format!("{}: {e}", dir.display())))?;
        if !m.is_dir() {
            return Err(DropError::check(
                STEP,
                format!("{}: not a directory", dir.display()),
            ));
        }
        if m.uid() != 0 {
            return Err(DropError::check(
                STEP,
                format!("{}: owned by uid {}, not root", dir.display(), m.uid()),
            ));
        }
        if m.mode() & 0o022 != 0 {
            return Err(DropError::check(
                STEP,
                format!(
                    "{}: group- or world-writable (mode {:04o})",
                    dir.display(),
                    m.mode() & 0o7777
                ),
            ));
        }
    }
    let mut entries = std::fs::read_dir(path)
        .map_err(|e| DropError::check(STEP, format!("{shown}: cannot list: {e}")))?;
    if let Some(entry) = entries.next() {
        let name = entry
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(DropError::check(
            STEP,
            format!("{shown}: not empty (contains {name:?})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A fresh directory under /run/portnanny-tests: root-owned and not writable by others
    /// whatever the checkout's location (a clone under /tmp would fail the ancestor check).
    fn scratch(tag: &str) -> PathBuf {
        let base = PathBuf::from("/run/portnanny-tests");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = base.join(format!("chroot-check-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn check_chroot_dir_rows() {
        if !geteuid().is_root() {
            println!("skipped: needs root");
            return;
        }
        let good = scratch("good");
        let not_root = scratch("owner");
        nix::unistd::chown(&not_root, Some(Uid::from_raw(65534)), None).unwrap();
        let world = scratch("world");
        std::fs::set_permissions(&world, std::fs::Permissions::from_mode(0o757)).unwrap();
        let group = scratch("group");
        std::fs::set_permissions(&group, std::fs::Permissions::from_mode(0o775)).unwrap();
        let full = scratch("full");
        std::fs::create_dir(full.join("bin")).unwrap();
        let file = scratch("file").join("f");
        std::fs::write(&file, b"").unwrap();
        let tmp_child = std::env::temp_dir().join(format!("chroot-check-{}", std::process::id()));
        let _ = std::fs::create_dir(&tmp_child);
        std::fs::set_permissions(&tmp_child, std::fs::Permissions::from_mode(0o755)).unwrap();
        let missing = good.join("missing");
        // A symlink from a good place into a world-writable one is judged by its target.
        let link = good.with_file_name(format!("chroot-check-link-{}", std::process::id()));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&tmp_child, &link).unwrap();

        let rows: [(&str, &Path, Option<&str>); 10] = [
            ("empty root-owned 0755", &good, None),
            (
                "not root-owned",
                &not_root,
                Some("owned by uid 65534, not root"),
            ),
            (
                "world-writable",
                &world,
                Some("group- or world-writable (mode 0757)"),
            ),
            (
                "group-writable",
                &group,
                Some("group- or world-writable (mode 0775)"),
            ),
            ("not empty", &full, Some("not empty (contains \"bin\")")),
            ("not a directory", &file, Some("not a directory")),
            ("missing", &missing, Some("No such file or directory")),
            (
                "relative path",
                Path::new("var/empty"),
                Some("not an absolute path"),
            ),
            (
                "world-writable ancestor (/tmp)",
                &tmp_child,
                Some("group- or world-writable (mode 1777)"),
            ),
            (
                "symlink into /tmp",
                &link,
                Some("group- or world-writable (mode 1777)"),
            ),
        ];
        for (label, path, want) in rows {
            match (check_chroot_dir(path), want) {
                (Ok(()), None) => {}
                (Err(e), Some(text)) => {
                    assert_eq!(e.step, "chroot_dir", "{label}");
                    assert!(e.to_string().contains(text), "{label}: {e}");
                }
                (got, _) => panic!("{label}: {got:?}"),
            }
        }
        for d in [&good, &not_root, &world, &group, &full, &tmp_child] {
            std::fs::remove_dir_all(d).unwrap();
        }
        std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
        std::fs::remove_file(&link).unwrap();
    }

    #[test]
    fn drop_error_names_the_step() {
        let e = DropError::check("verify_groups", "groups [0], want [65534]");
        assert_eq!(
            e.to_string(),
            "privilege drop failed at verify_groups: groups [0], want [65534]"
        );
    }
}
