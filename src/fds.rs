//! Process-wide descriptor hygiene, done once at start before anything else is opened: the
//! standard descriptors exist, and nothing inherited from the invoking shell or supervisor can
//! leak into a service.
//!
//! Runs in the parent (and in `main` before it knows which role it is); handles no peer bytes.

use std::io;

/// Marks every descriptor above 2 that the process inherited close-on-exec, so nothing the
/// invoking shell or supervisor left open can reach a service child. Called once at start,
/// before the parent opens anything of its own.
pub fn cloexec_inherited() -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Kernels before 5.11: walk /proc/self/fd instead.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a number that may or may not still be open only sets a flag.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Makes sure fds 0, 1 and 2 are open (on /dev/null if not), so that no socket the parent
/// opens later lands on a standard descriptor and gets written to as if it were stderr.
pub fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries; open/dup2 of /dev/null onto a closed standard fd.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) == -1 {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 && null != fd {
                    libc::dup2(null, fd);
                    libc::close(null);
                }
            }
        }
    }
}
