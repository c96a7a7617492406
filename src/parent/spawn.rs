//! Service children: run an admitted verdict's command with the connection on fds 0, 1 and 2.
//!
//! Runs in the parent (root, or the invoking user in non-root mode). The argv and environment
//! were rendered by the parent from its own actions table; the only peer-derived values in them
//! are validated newtypes (addresses, a checked hostname, a printable identd answer). The
//! credentials were resolved from nanny.conf's `user` at start, or from the action class's own
//! `user` when its actions file was loaded, while /etc was visible; the class's sandbox
//! (rlimits, nice, umask, chdir) was built then too (classhost.rs).
//!
//! Invariants: the child gets exactly fds 0, 1, 2 (every descriptor of the parent is
//! close-on-exec, and `main` marks inherited ones close-on-exec at start); credentials change
//! in the child between clone and exec, in the order setgroups → setresgid → setresuid (std's
//! `Command` cannot set supplementary groups, and waits for every exec, see [`spawn_service`]);
//! a failed step aborts that child before exec. The signal mask is emptied and the parent's
//! signal dispositions (including the ignored SIGPIPE) are reset to default. Each service leads
//! a session and process group of its own (setsid), so signals aimed at the daemon's group
//! (a terminal's Ctrl-C) never reach it. The child is
//! created vfork-style (`clone(CLONE_VM | CLONE_VFORK)`: no copy of the parent's page tables,
//! no copy-on-write faults in the parent afterwards), so until its execve it runs in the
//! parent's memory and may only read it: everything it uses is prepared before the clone.

use std::borrow::Cow;
use std::ffi::{CStr, CString};
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use nix::unistd::{Gid, User};
use policy::actions::RlimitName;

/// A class's sandbox, ready for the service child (everything it reads is built here, so the
/// child between clone and exec only makes system calls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSandbox {
    /// The class's `user` (None: nanny.conf's, or not running as root).
    pub creds: Option<Creds>,
    pub nice: Option<i32>,
    /// (resource, soft, hard), `libc::RLIM_INFINITY` for unlimited.
    pub rlimits: Vec<(RlimitName, u64, u64)>,
    pub umask: Option<libc::mode_t>,
    pub chdir: Option<CString>,
    pub timeout: Option<std::time::Duration>,
}

/// Who a service runs as: uid, primary gid and the supplementary groups a login would give
/// (initgroups semantics: the groups file plus the primary group), and the passwd entry's home
/// and shell for the login variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    pub home: String,
    pub shell: String,
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
        home: user.dir.to_string_lossy().into_owned(),
        shell: user.shell.to_string_lossy().into_owned(),
    })
}

/// HOME, USER, LOGNAME and SHELL of the user services run as, from the passwd entry (the
/// daemon's own, or a setuid to root, must never leak into a service run as `nobody`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Login {
    user: String,
    home: String,
    shell: String,
}

impl Login {
    fn of(c: &Creds) -> Login {
        Login {
            user: c.name.clone(),
            home: c.home.clone(),
            shell: c.shell.clone(),
        }
    }

    /// The variables, NAME=value.
    fn vars(&self) -> [(&'static str, &str); 4] {
        [
            ("HOME", self.home.as_str()),
            ("USER", self.user.as_str()),
            ("LOGNAME", self.user.as_str()),
            ("SHELL", self.shell.as_str()),
        ]
    }
}

/// The names [`Login`] sets.
const LOGIN_VARS: [&str; 4] = ["HOME", "USER", "LOGNAME", "SHELL"];

/// What a service's environment starts from, decided once at start from nanny.conf: the
/// daemon's whole environment (no `passenv`, tcpserver's behaviour), or xinetd's minimal one
/// (PATH plus the `passenv` names the daemon has). Either way the login variables are the
/// service user's, and the UCSPI, NANNY_ and `setenv` variables are added per connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEnvPolicy {
    passenv: Option<Vec<String>>,
    /// The user services run as when the verdict has no [`Creds`] (no `user`, or not root):
    /// the daemon's own. None if its uid has no passwd entry: the login variables are then
    /// left out rather than inherited.
    own: Option<Login>,
}

impl ServiceEnvPolicy {
    /// The policy nanny.conf asks for. Call at start, while /etc is visible (the daemon's own
    /// passwd entry is looked up here).
    pub fn from_conf(conf: &policy::conf::NannyConf) -> ServiceEnvPolicy {
        ServiceEnvPolicy {
            passenv: conf.passenv.clone(),
            own: own_login(),
        }
    }

    /// The parent's environment as the policy filters it, without the login variables.
    fn base(&self) -> EnvEntries {
        let keep = |name: &[u8]| -> bool {
            if LOGIN_VARS.iter().any(|v| v.as_bytes() == name) {
                return false;
            }
            match &self.passenv {
                None => true,
                Some(names) => name == b"PATH" || names.iter().any(|n| n.as_bytes() == name),
            }
        };
        let mut out: EnvEntries = std::env::vars_os()
            .filter_map(|(k, v)| {
                let name = k.as_bytes().to_vec();
                if !keep(&name) {
                    return None;
                }
                let mut kv = name.clone();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok().map(|c| (name, c))
            })
            .collect();
        if self.passenv.is_some() && !out.iter().any(|(n, _)| n == b"PATH") {
            if let Ok(c) = CString::new(format!("PATH={DEFAULT_PATH}")) {
                out.push((b"PATH".to_vec(), c));
            }
        }
        out
    }
}

/// The daemon's own passwd entry (the user its services run as without `user`).
fn own_login() -> Option<Login> {
    let user = User::from_uid(nix::unistd::geteuid()).ok()??;
    Some(Login {
        user: user.name,
        home: user.dir.to_string_lossy().into_owned(),
        shell: user.shell.to_string_lossy().into_owned(),
    })
}

/// Environment entries as (name, `NAME=value`), ready for envp.
type EnvEntries = Vec<(Vec<u8>, CString)>;

/// The policy set by [`set_env_policy`] and the base it filters out of the parent's
/// environment; until it is set (unit tests), the whole environment with the daemon's own login
/// variables.
static ENV_POLICY: OnceLock<(ServiceEnvPolicy, EnvEntries)> = OnceLock::new();

fn env_policy() -> &'static (ServiceEnvPolicy, EnvEntries) {
    ENV_POLICY.get_or_init(|| {
        let p = ServiceEnvPolicy {
            passenv: None,
            own: own_login(),
        };
        let base = p.base();
        (p, base)
    })
}

/// Sets the environment policy of every later service, once, at start (the parent never
/// changes its own environment, so the filtered base is built here once). A second call is
/// ignored: nanny.conf is read only at start.
pub fn set_env_policy(p: ServiceEnvPolicy) {
    let base = p.base();
    let _ = ENV_POLICY.set((p, base));
}

/// Exit status of a service child whose set-up failed before exec (dup2 or a credential
/// change); the parent logs it when it reaps the child.
pub const EXIT_SETUP_FAILED: i32 = 126;
/// Exit status of a service child whose execve failed.
pub const EXIT_EXEC_FAILED: i32 = 127;

/// The PATH used to find a command when neither the service environment nor the parent's has
/// one (execvp's default, without the current directory).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "argument or environment value contains a NUL byte",
        )
    })
}

/// The environment for one service: the policy's base (the parent's environment, filtered by
/// `passenv`), then the login variables of the user it runs as (`creds`, else the daemon's
/// own), then `extra` (later entries win, so setenv beats the built-in variables). The base
/// entries are borrowed, not copied for every service.
fn service_env(
    extra: &[(String, String)],
    creds: Option<&Creds>,
) -> io::Result<Vec<Cow<'static, CStr>>> {
    let (policy, base) = env_policy();
    let in_extra = |name: &[u8]| extra.iter().any(|(k, _)| k.as_bytes() == name);
    let mut out: Vec<Cow<'static, CStr>> = base
        .iter()
        .filter(|(name, _)| !in_extra(name))
        .map(|(_, kv)| Cow::Borrowed(kv.as_c_str()))
        .collect();
    let login = match creds {
        Some(c) => Some(Login::of(c)),
        None => policy.own.clone(),
    };
    if let Some(login) = login {
        for (k, v) in login.vars() {
            if !in_extra(k.as_bytes()) {
                out.push(Cow::Owned(cstring(&format!("{k}={v}"))?));
            }
        }
    }
    for (i, (k, v)) in extra.iter().enumerate() {
        if extra
            .get(i + 1..)
            .is_some_and(|rest| rest.iter().any(|(k2, _)| k2 == k))
        {
            continue;
        }
        if k.is_empty() || k.contains('=') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad environment variable name {k:?}"),
            ));
        }
        out.push(Cow::Owned(cstring(&format!("{k}={v}"))?));
    }
    Ok(out)
}

/// execvp's search, done in the parent before the clone so the child only calls execve: a name
/// with a slash is used as is; otherwise the first executable `DIR/name` along PATH (the
/// service environment's PATH if it sets one, else the parent's, else [`DEFAULT_PATH`]).
pub fn find_program(prog: &str, env: &[(String, String)]) -> io::Result<CString> {
    if prog.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    }
    if prog.contains('/') {
        let c = cstring(prog)?;
        // SAFETY: access only reads the NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(c);
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| DEFAULT_PATH.to_owned());
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = cstring(&format!("{dir}/{prog}"))?;
        // SAFETY: access only reads the NUL-terminated path.
        if unsafe { libc::access(cand.as_ptr(), libc::X_OK) } == 0 {
            return Ok(cand);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{prog} not found in PATH"),
    ))
}

/// Starts `argv` (PATH searched like execvp) with `stream` on fds 0, 1 and 2, the parent's
/// environment plus `env`, as `creds` (None: as the parent's own user), inside the class's
/// `sandbox` (rlimits, nice, umask, chdir; its own user is already in `creds`). Returns the
/// pid.
///
/// The parent waits only until the child's execve has replaced its memory (CLONE_VFORK), not
/// for its outcome (std's `Command` reports exec errors through a pipe): the program is found
/// before the clone, and a failure after it shows up as exit status [`EXIT_SETUP_FAILED`] or
/// [`EXIT_EXEC_FAILED`] when the child is reaped. The caller's copy of the stream is closed
/// here, right after the clone, so the peer sees EOF when the service closes, as with inetd.
pub fn spawn_service(
    argv: &[String],
    env: &[(String, String)],
    creds: Option<&Creds>,
    sandbox: Option<&ServiceSandbox>,
    stream: TcpStream,
) -> io::Result<u32> {
    let prog = argv
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let path = find_program(prog, env)?;
    let args: Vec<CString> = argv.iter().map(|a| cstring(a)).collect::<io::Result<_>>()?;
    let envs = service_env(env, creds)?;
    let mut argp: Vec<*const libc::c_char> = args.iter().map(|c| c.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = envs.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    let fd = stream.as_raw_fd();
    let nofile = SERVICE_NOFILE.load(Ordering::Relaxed);
    let ids: Option<(libc::uid_t, libc::gid_t, &[libc::gid_t])> =
        creds.map(|c| (c.uid, c.gid, c.groups.as_slice()));

    let child = ChildArgs {
        nofile,
        fd,
        ids,
        sandbox,
        path: &path,
        argp: &argp,
        envp: &envp,
    };

    // ORDER: block every signal across the clone, so no handler in the parent's process (any a
    // library may install) can run in the child, which shares the parent's memory, before it
    // resets them; the parent restores its mask (the signalfd's signals stay blocked) right
    // after.
    // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask only touch these sets.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
    }
    let pid = CHILD_STACK.with(|stack| match stack {
        Ok(stack) => {
            // SAFETY: CLONE_VM | CLONE_VFORK suspends this thread until the child has called
            // execve or _exit, so `child` and everything it points to (on this stack and the
            // heap) stay valid and unchanged while the child reads them, and the child runs on
            // its own stack (`stack.top()`, nothing else uses it). The child runs only
            // `child_entry` → `service_child`, which is async-signal-safe, allocates nothing,
            // takes no lock and writes no memory the parent reads afterwards (only errno).
            unsafe {
                libc::clone(
                    child_entry,
                    stack.top(),
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                    std::ptr::from_ref(&child).cast_mut().cast(),
                )
            }
        }
        // No child stack (mmap failed once in this thread): a plain fork, the child on a copy
        // of this stack.
        // SAFETY: as for clone; after fork the child has its own copy of memory.
        Err(()) => unsafe {
            let pid = libc::fork();
            if pid == 0 {
                service_child(&child)
            }
            pid
        },
    });
    let err = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(stream);
    if pid < 0 {
        return Err(err);
    }
    u32::try_from(pid).map_err(|_| io::Error::other("clone returned a bad pid"))
}

/// Bytes of stack for a service child between clone and execve; [`service_child`] needs a few
/// hundred. A guard page below it turns an overflow into a fault instead of a write into the
/// parent's memory.
const CHILD_STACK_BYTES: usize = 64 * 1024;

/// A private stack for the children of [`spawn_service`], mapped once per thread (the parent
/// has one; unit tests spawn from several) and reused: with CLONE_VFORK at most one child of
/// this thread runs on it at a time, until its execve.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    fn map() -> Result<ChildStack, ()> {
        // SAFETY: sysconf only queries.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| *p > 0)
            .unwrap_or(4096);
        let len = CHILD_STACK_BYTES + page;
        // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of our own mapping becomes the guard page.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(());
        }
        Ok(stack)
    }

    /// The initial stack pointer (stacks grow down on every Linux target Rust supports),
    /// 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        let top = self.base.cast::<u8>().wrapping_add(self.len);
        top.wrapping_sub(top as usize % 16).cast()
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no child can be running on it
        // (CLONE_VFORK returned before the owner could be dropped).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

thread_local! {
    static CHILD_STACK: Result<ChildStack, ()> = ChildStack::map();
}

/// What the child of [`spawn_service`] needs, prepared by the parent before the clone.
struct ChildArgs<'a> {
    nofile: u64,
    fd: libc::c_int,
    ids: Option<(libc::uid_t, libc::gid_t, &'a [libc::gid_t])>,
    sandbox: Option<&'a ServiceSandbox>,
    path: &'a CStr,
    argp: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
}

/// The clone entry point: the child of [`spawn_service`] starts here, on the child stack.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that spawn_service passed to clone; the parent is
    // suspended (CLONE_VFORK) until we exec or exit, so it is alive and unchanged.
    unsafe { service_child(&*arg.cast::<ChildArgs<'_>>()) }
}

/// Credential system calls made directly, not through glibc: its setgroups/setresgid/setresuid
/// wrappers broadcast the change to every thread glibc knows of, and a CLONE_VM child still
/// sees the parent's thread list (in unit tests, a multi-threaded process). The raw call changes
/// only the calling thread, which is the whole child process.
mod raw {
    #[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
    use libc::{
        SYS_setgroups as SETGROUPS, SYS_setresgid as SETRESGID, SYS_setresuid as SETRESUID,
    };
    #[cfg(any(target_arch = "x86", target_arch = "arm"))]
    use libc::{
        SYS_setgroups32 as SETGROUPS, SYS_setresgid32 as SETRESGID, SYS_setresuid32 as SETRESUID,
    };

    /// # Safety
    /// `groups` must point to `len` readable gids.
    pub unsafe fn setgroups(len: usize, groups: *const libc::gid_t) -> libc::c_long {
        libc::syscall(SETGROUPS, len, groups)
    }

    /// # Safety
    /// Changes the calling thread's credentials only.
    pub unsafe fn setresgid(gid: libc::gid_t) -> libc::c_long {
        libc::syscall(SETRESGID, gid, gid, gid)
    }

    /// # Safety
    /// Changes the calling thread's credentials only.
    pub unsafe fn setresuid(uid: libc::uid_t) -> libc::c_long {
        libc::syscall(SETRESUID, uid, uid, uid)
    }
}

/// The child side of [`spawn_service`]. async-signal-safe: no alloc, no locks, and no write to
/// memory shared with the parent (the child shares it until execve) except errno; it only reads
/// values prepared by the parent and makes system calls (signal, dup2, getrlimit/setrlimit,
/// setpriority, umask, setgroups, setresgid, setresuid, chdir, sigprocmask, setsid, execve,
/// _exit).
///
/// # Safety
/// Call only in the child of `clone(CLONE_VM | CLONE_VFORK)` or `fork`, with valid
/// NUL-terminated `path` and NULL-terminated pointer arrays `argp` and `envp`.
unsafe fn service_child(a: &ChildArgs<'_>) -> ! {
    // Defaults for every signal the parent handles (it installs no handler today, but a
    // child must not depend on that), and SIGPIPE back to default (Rust ignores it, and an ignored signal stays ignored
    // across exec). Without CLONE_SIGHAND the child has its own copy of the dispositions.
    for sig in [
        libc::SIGCHLD,
        libc::SIGHUP,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGPIPE,
    ] {
        libc::signal(sig, libc::SIG_DFL);
    }
    // A session (and process group) of its own: a terminal's Ctrl-C or `kill -INT -PGID`
    // aimed at the daemon must not reach running services, which SIGTERM also leaves running;
    // and a service's own job control cannot signal the daemon's group. Never fails in a fresh
    // child (it is not a group leader), but a child that could not detach must not run.
    if libc::setsid() < 0 {
        libc::_exit(EXIT_SETUP_FAILED);
    }
    // dup2 clears close-on-exec on the copies; the original (CLOEXEC, above 2 because fds 0-2
    // are always open in the parent) closes at exec.
    let fd = a.fd;
    if libc::dup2(fd, 0) < 0 || libc::dup2(fd, 1) < 0 || libc::dup2(fd, 2) < 0 {
        libc::_exit(EXIT_SETUP_FAILED);
    }
    // ORDER: the class's rlimits and nice while still root: raising a hard limit needs
    // CAP_SYS_RESOURCE and a negative nice CAP_SYS_NICE, which the uid change takes away; and
    // RLIMIT_NPROC must be in place when the uid changes, so the kernel checks the user's
    // process count against it (execve then fails with EAGAIN when the user has too many).
    let class_nofile = a
        .sandbox
        .is_some_and(|s| s.rlimits.iter().any(|r| r.0 == RlimitName::Nofile));
    if a.nofile != u64::MAX && !class_nofile {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = a.nofile;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    if let Some(sb) = a.sandbox {
        for &(name, soft, hard) in &sb.rlimits {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            let res = match name {
                RlimitName::As => libc::RLIMIT_AS,
                RlimitName::Cpu => libc::RLIMIT_CPU,
                RlimitName::Nofile => libc::RLIMIT_NOFILE,
                RlimitName::Nproc => libc::RLIMIT_NPROC,
                RlimitName::Core => libc::RLIMIT_CORE,
                RlimitName::Fsize => libc::RLIMIT_FSIZE,
            };
            if libc::setrlimit(res, &lim) != 0 {
                libc::_exit(EXIT_SETUP_FAILED);
            }
        }
        // Absolute, as xinetd's nice: the parent's own niceness does not add to it.
        if let Some(n) = sb.nice {
            if libc::setpriority(libc::PRIO_PROCESS, 0, n) != 0 {
                libc::_exit(EXIT_SETUP_FAILED);
            }
        }
        if let Some(m) = sb.umask {
            libc::umask(m);
        }
    }
    if let Some((uid, gid, groups)) = a.ids {
        // ORDER: groups and gid first, while we still have the privilege to set them; the uid
        // last, which gives that privilege up. Any failure aborts this child before exec.
        if raw::setgroups(groups.len(), groups.as_ptr()) != 0
            || raw::setresgid(gid) != 0
            || raw::setresuid(uid) != 0
        {
            libc::_exit(EXIT_SETUP_FAILED);
        }
    }
    // ORDER: chdir after the uid change, so the directory is entered with the service user's
    // rights: one the user could not enter fails the set-up instead of running the service
    // somewhere it could not have gone (root-squashed NFS homes, 0700 directories).
    if let Some(dir) = a.sandbox.and_then(|s| s.chdir.as_deref()) {
        if libc::chdir(dir.as_ptr()) != 0 {
            libc::_exit(EXIT_SETUP_FAILED);
        }
    }
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    libc::execve(a.path.as_ptr(), a.argp.as_ptr(), a.envp.as_ptr());
    libc::_exit(EXIT_EXEC_FAILED)
}

/// The RLIMIT_NOFILE soft limit the parent was started with, restored in every service child
/// (u64::MAX: not changed). See [`raise_nofile`].
static SERVICE_NOFILE: AtomicU64 = AtomicU64::new(u64::MAX);

/// Most descriptors the parent asks for.
const PARENT_NOFILE: u64 = 65_536;

/// Raises the parent's RLIMIT_NOFILE soft limit towards the hard limit (at most
/// [`PARENT_NOFILE`]): every connection awaiting a verdict or a msg write holds a descriptor,
/// and the common default of 1024 is below `MAX_PENDING`. Services get the original soft limit
/// back, so a select()-based program never sees descriptors it cannot handle. Returns the new
/// soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let want = hard.min(PARENT_NOFILE);
    if want <= soft {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, want, hard)?;
    SERVICE_NOFILE.store(soft, Ordering::Relaxed);
    Ok(want)
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
        crate::fds::cloexec_inherited().unwrap();
        // Accepted the way the parent accepts (its listeners are non-blocking).
        let l = super::super::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut c = TcpStream::connect(l.addr).unwrap();
        let mut accepted = None;
        for _ in 0..200 {
            if let super::super::listen::AcceptResult::Conn(a) = super::super::listen::accept(&l) {
                accepted = Some(a.stream);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let s = accepted.expect("accepted");
        // fdinfo's flags are octal; O_NONBLOCK is 04000: services get blocking stdio.
        let script = "echo \"$FOO\"; ls /proc/self/fd | wc -l >&2; \
                      f=$(awk '/^flags/ { print $2 }' /proc/self/fdinfo/0); \
                      [ $(( 0$f & 04000 )) -eq 0 ] && echo blocking";
        let argv: Vec<String> = ["sh", "-c", script].map(String::from).to_vec();
        let pid = spawn_service(&argv, &[("FOO".into(), "bar".into())], None, None, s).unwrap();
        assert!(pid > 0);
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        // fds 0,1,2 plus the one ls opens for the directory listing.
        assert_eq!(out, "bar\n4\nblocking\n");
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
    }

    #[test]
    fn env_merging_and_path_search() {
        let env = service_env(
            &[
                ("PROTO".into(), "TCP".into()),
                ("X".into(), "1".into()),
                ("X".into(), "2".into()),
            ],
            None,
        )
        .unwrap();
        let strs: Vec<&str> = env.iter().map(|c| c.to_str().unwrap()).collect();
        assert!(strs.contains(&"PROTO=TCP"));
        assert!(strs.contains(&"X=2") && !strs.contains(&"X=1"));
        assert!(service_env(&[("A=B".into(), "x".into())], None).is_err());
        assert!(service_env(&[("A".into(), "x\0y".into())], None).is_err());
        assert_eq!(
            find_program("/bin/sh", &[]).unwrap().to_str().unwrap(),
            "/bin/sh"
        );
        let sh = find_program("sh", &[("PATH".into(), "/nonexistent:/bin".into())]).unwrap();
        assert_eq!(sh.to_str().unwrap(), "/bin/sh");
        assert!(find_program("sh", &[("PATH".into(), "/nonexistent".into())]).is_err());
        assert!(find_program("", &[]).is_err());
    }

    #[test]
    fn missing_program_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let argv = vec!["/nonexistent/portnanny-test".to_owned()];
        assert!(spawn_service(&argv, &[], None, None, TcpStream::connect(addr).unwrap()).is_err());
        let argv = vec!["no-such-program-portnanny".to_owned()];
        assert!(spawn_service(&argv, &[], None, None, TcpStream::connect(addr).unwrap()).is_err());
        assert!(spawn_service(&[], &[], None, None, TcpStream::connect(addr).unwrap()).is_err());
    }

    /// The class sandbox is applied in the child (as whoever runs the test: lowering limits,
    /// a positive nice, umask and chdir need no privilege).
    #[test]
    fn sandbox_is_applied_before_exec() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let sb = ServiceSandbox {
            creds: None,
            nice: Some(11),
            rlimits: vec![(RlimitName::Nofile, 40, 50), (RlimitName::Core, 0, 0)],
            umask: Some(0o037),
            chdir: Some(CString::new("/proc").unwrap()),
            timeout: None,
        };
        let script = "umask; ulimit -Sn; ulimit -Hn; ulimit -c; pwd; \
                      cut -d' ' -f19 /proc/self/stat";
        let argv: Vec<String> = ["sh", "-c", script].map(String::from).to_vec();
        let pid = spawn_service(&argv, &[], None, Some(&sb), s).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(out, "0037\n40\n50\n0\n/proc\n11\n");
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);

        // A step that fails (a directory that does not exist) ends the child before exec.
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let bad = ServiceSandbox {
            chdir: Some(CString::new("/nonexistent-portnanny").unwrap()),
            ..sb
        };
        let pid = spawn_service(&argv, &[], None, Some(&bad), s).unwrap();
        let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None).unwrap();
        assert_eq!(
            st,
            nix::sys::wait::WaitStatus::Exited(
                nix::unistd::Pid::from_raw(pid as i32),
                EXIT_SETUP_FAILED
            )
        );
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(out, "");
    }

    #[test]
    fn exec_failure_after_fork_is_exit_127() {
        // Executable by access(2) but not by execve: a truncated ELF header makes execve fail
        // with ENOEXEC in the child, after the fork.
        let dir = std::env::temp_dir().join(format!("pn-spawn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("noexec");
        std::fs::write(&f, [0x7f, b'E', b'L', b'F', 0, 0]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let argv = vec![f.to_string_lossy().into_owned()];
        let pid = spawn_service(&argv, &[], None, None, s).unwrap();
        let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None).unwrap();
        assert_eq!(
            st,
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid as i32), 127)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
