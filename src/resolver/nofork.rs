//! Forbids the resolver to create processes while still letting it create threads: a seccomp
//! filter that refuses `clone` without `CLONE_THREAD`, `fork`, `vfork`, `execve` and
//! `execveat` (EPERM), and `clone3` (ENOSYS, whose flags live in memory a filter cannot read;
//! the C library then falls back to `clone` for threads).
//!
//! Runs in the resolver, after the privilege drop (no_new_privs is set, which seccomp
//! requires), before its first thread. The classifier forbids processes with RLIMIT_NPROC 0
//! instead; the resolver cannot, because Linux counts threads against that limit too and the
//! resolver starts its lookup threads on demand (pool.rs). The filter covers every thread
//! (TSYNC) and is inherited by the threads started later.
//!
//! Only x86_64 and aarch64 are known here; elsewhere [`forbid_new_processes`] returns an error
//! and the resolver does not start (fail closed).

use std::io;

/// `struct seccomp_data` offsets: the system call number, the architecture, the low half of
/// the first argument on a little-endian machine.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LO: u32 = 16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The system calls refused with EPERM (besides `clone` without `CLONE_THREAD`).
#[cfg(target_arch = "x86_64")]
const REFUSED: [libc::c_long; 4] = [
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_execve,
    libc::SYS_execveat,
];
#[cfg(target_arch = "aarch64")]
const REFUSED: [libc::c_long; 2] = [libc::SYS_execve, libc::SYS_execveat];

/// The filter program.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn program() -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let nr = |n: libc::c_long| n as u32;
    let mut p = vec![
        // A system call of another architecture's table could alias anything: kill.
        stmt(BPF_LD | BPF_W | BPF_ABS, OFF_ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD | BPF_W | BPF_ABS, OFF_NR),
        jump(BPF_JMP | BPF_JEQ | BPF_K, nr(libc::SYS_clone3), 0, 1),
        stmt(BPF_RET | BPF_K, enosys),
        // clone: a thread (CLONE_THREAD set) passes, anything else is a new process.
        jump(BPF_JMP | BPF_JEQ | BPF_K, nr(libc::SYS_clone), 0, 4),
        stmt(BPF_LD | BPF_W | BPF_ABS, OFF_ARG0_LO),
        jump(BPF_JMP | BPF_JSET | BPF_K, libc::CLONE_THREAD as u32, 0, 1),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
        stmt(BPF_RET | BPF_K, eperm),
    ];
    for n in REFUSED {
        p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, nr(n), 0, 1));
        p.push(stmt(BPF_RET | BPF_K, eperm));
    }
    p.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
    p
}

/// Installs the filter on every thread of this process. Needs no_new_privs (or
/// CAP_SYS_ADMIN). Irreversible.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn forbid_new_processes() -> io::Result<()> {
    let prog = program();
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| io::Error::other("filter too long"))?,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points to `prog`, alive for the call; the kernel copies the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            std::ptr::from_ref(&fprog),
        )
    };
    match r {
        0 => Ok(()),
        // TSYNC reports the id of a thread it could not synchronise.
        r if r > 0 => Err(io::Error::other(format!(
            "seccomp: thread {r} could not take the filter"
        ))),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn forbid_new_processes() -> io::Result<()> {
    Err(io::Error::other(
        "no process-creation filter for this architecture",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const CHILD_ENV: &str = "PORTNANNY_NOFORK_TEST_CHILD";

    /// The filter is irreversible, so it is tried in a copy of this test binary that runs only
    /// this test: threads still start there, processes do not.
    #[test]
    fn threads_start_but_processes_do_not() {
        if std::env::var_os(CHILD_ENV).is_some() {
            // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) only sets a flag of this process.
            assert_eq!(
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
                0
            );
            forbid_new_processes().unwrap();
            let t = std::thread::spawn(|| 7).join().unwrap();
            assert_eq!(t, 7, "a thread starts after the filter");
            let e = Command::new("/bin/true").spawn().unwrap_err();
            println!("spawn refused: {e}");
            // SAFETY: fork in a test child; the child (if any) exits at once.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                unsafe { libc::_exit(0) };
            }
            assert_eq!(pid, -1, "fork is refused");
            assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EPERM));
            println!("nofork child ok");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = Command::new(exe)
            .args([
                "--exact",
                "resolver::nofork::tests::threads_start_but_processes_do_not",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("nofork child ok"),
            "{text}"
        );
    }
}
