//! Service children: run an admitted verdict's command with the connection on fds 0, 1 and 2.
//!
//! Runs in the parent (root, or the invoking user in non-root mode). The argv and environment
//! were rendered by the parent from its own actions table; the only peer-derived values in them
//! are validated newtypes (addresses, a checked hostname, a printable identd answer). The
//! credentials were resolved from nanny.conf's `user` at start, while /etc was visible.
//!
//! Invariants: the child gets exactly fds 0, 1, 2 (every descriptor of the parent is
//! close-on-exec, and `main` marks inherited ones close-on-exec at start); credentials change
//! inside `pre_exec`, in the order setgroups → setresgid → setresuid, because std's own
//! uid/gid switching runs before `pre_exec` and knows nothing of supplementary groups; a failed
//! step aborts that child before exec (spawn returns the error). The signal mask is emptied and
//! SIGPIPE reset to default, since std and the parent's signal handling leave them changed.

use std::ffi::CString;
use std::io;
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::unistd::{Gid, User};

/// Who a service runs as: uid, primary gid and the supplementary groups a login would give
/// (initgroups semantics: the groups file plus the primary group).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
}

/// Looks up `name` in the password and group databases (call it while /etc is visible).
pub fn resolve_user(name: &str) -> Result<Creds, String> {
    let user = User::from_name(name)
        .map_err(|e| format!("cannot look up user {name}: {e}"))?
        .ok_or_else(|| format!("no such user: {name}"))?;
    let cname = CString::new(name).map_err(|_| format!("bad user name: {name:?}"))?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid)
        .map_err(|e| format!("cannot list the groups of {name}: {e}"))?;
    Ok(Creds {
        name: name.to_owned(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: groups.into_iter().map(Gid::as_raw).collect(),
    })
}

/// Starts `argv` (PATH searched like execvp) with `stream` on fds 0, 1 and 2, the parent's
/// environment plus `env`, as `creds` (None: as the parent's own user). Returns the pid.
/// The caller drops its copy of the stream right after, so the peer sees EOF when the service
/// closes, as with inetd.
pub fn spawn_service(
    argv: &[String],
    env: &[(String, String)],
    creds: Option<&Creds>,
    stream: TcpStream,
) -> io::Result<u32> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    // The accepted socket is non-blocking for the parent's own use; the flag lives in the shared
    // open file description, and services expect ordinary blocking stdio.
    stream.set_nonblocking(false)?;
    let out = stream.try_clone()?;
    let err = stream.try_clone()?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::from(OwnedFd::from(stream)))
        .stdout(Stdio::from(OwnedFd::from(out)))
        .stderr(Stdio::from(OwnedFd::from(err)));
    let ids = creds.map(|c| (c.uid, c.gid, c.groups.clone()));
    // SAFETY: the closure runs in the forked child between fork and exec. async-signal-safe:
    // no alloc, no locks — it only reads the `ids` captured (allocated in the parent) and makes
    // raw system calls (sigprocmask, signal, setgroups, setresgid, setresuid);
    // io::Error::last_os_error does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            if let Some((uid, gid, groups)) = &ids {
                // ORDER: groups and gid first, while we still have the privilege to set them;
                // the uid last, which gives that privilege up.
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setresgid(*gid, *gid, *gid) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setresuid(*uid, *uid, *uid) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(child.id())
}

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

/// The UCSPI variables (tcpserver's) plus portnanny's own, in the order they are set; `setenv`
/// values are added after these by the caller and win on a clash.
pub struct ServiceEnv<'a> {
    pub remote: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
    pub host: Option<&'a str>,
    pub identd: Option<&'a str>,
    pub class: &'a str,
    pub classes: &'a [&'a str],
    pub label: Option<&'a str>,
}

impl ServiceEnv<'_> {
    pub fn vars(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("PROTO".to_owned(), "TCP".to_owned()),
            ("TCPLOCALIP".to_owned(), self.local.ip().to_string()),
            ("TCPLOCALPORT".to_owned(), self.local.port().to_string()),
            ("TCPREMOTEIP".to_owned(), self.remote.ip().to_string()),
            ("TCPREMOTEPORT".to_owned(), self.remote.port().to_string()),
        ];
        if let Some(h) = self.host {
            v.push(("TCPREMOTEHOST".to_owned(), h.to_owned()));
        }
        if let Some(i) = self.identd {
            v.push(("TCPREMOTEINFO".to_owned(), i.to_owned()));
        }
        v.push(("NANNY_CLASS".to_owned(), self.class.to_owned()));
        v.push(("NANNY_CLASSES".to_owned(), self.classes.join(" ")));
        if let Some(l) = self.label {
            v.push(("NANNY_LABEL".to_owned(), l.to_owned()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn env_rows() {
        let e = ServiceEnv {
            remote: "[::1]:4711".parse().unwrap(),
            local: "127.0.0.1:4040".parse().unwrap(),
            host: Some("a.example"),
            identd: None,
            class: "local",
            classes: &["local", "GLOBAL"],
            label: Some("lab"),
        };
        let v = e.vars();
        let get = |k: &str| v.iter().find(|(n, _)| n == k).map(|(_, x)| x.as_str());
        assert_eq!(get("PROTO"), Some("TCP"));
        assert_eq!(get("TCPREMOTEIP"), Some("::1"));
        assert_eq!(get("TCPREMOTEPORT"), Some("4711"));
        assert_eq!(get("TCPLOCALIP"), Some("127.0.0.1"));
        assert_eq!(get("TCPLOCALPORT"), Some("4040"));
        assert_eq!(get("TCPREMOTEHOST"), Some("a.example"));
        assert_eq!(get("TCPREMOTEINFO"), None);
        assert_eq!(get("NANNY_CLASSES"), Some("local GLOBAL"));
        assert_eq!(get("NANNY_LABEL"), Some("lab"));
    }

    #[test]
    fn resolve_root_and_unknown() {
        let root = resolve_user("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        assert!(resolve_user("no-such-user-portnanny-test").is_err());
    }

    #[test]
    fn service_gets_socket_on_stdio_and_env() {
        cloexec_inherited().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        let argv: Vec<String> = ["sh", "-c", "echo \"$FOO\"; ls /proc/self/fd | wc -l >&2"]
            .map(String::from)
            .to_vec();
        let pid = spawn_service(&argv, &[("FOO".into(), "bar".into())], None, s).unwrap();
        assert!(pid > 0);
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        // fds 0,1,2 plus the one ls opens for the directory listing.
        assert_eq!(out, "bar\n4\n");
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
    }

    #[test]
    fn missing_program_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let argv = vec!["/nonexistent/portnanny-test".to_owned()];
        assert!(spawn_service(&argv, &[], None, s).is_err());
        assert!(spawn_service(
            &[],
            &[],
            None,
            TcpStream::connect(l.local_addr().unwrap()).unwrap()
        )
        .is_err());
    }
}
