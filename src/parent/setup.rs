//! Start-up of the parent: reading nanny.conf and the two policy files, -C check mode, users,
//! the classifier's chroot directory and the stack limit.
//!
//! Runs in the parent, privileged, before any worker exists and before any listener is bound
//! (STYLE.md §2.6 steps 1–3). The files are the administrator's; every error is reported with
//! file:line:col, and a configuration that does not load is exit 100.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::unistd::User;
use policy::conf::NannyConf;
use policy::{Diagnostic, Severity};

use crate::args::{Args, StackLimit};
use crate::exit::{Error, Result};
use crate::files::{self, FileError};
use crate::log;

/// The classifier's empty root when nanny.conf has no `chrootdir` (OpenSSH's choice).
pub const DEFAULT_CHROOT: &str = "/var/empty";

/// The dedicated privsep user looked for when nanny.conf has no `privsepuser`.
pub const DEDICATED_USER: &str = "portnanny";

/// The fallback privsep user.
pub const FALLBACK_USER: &str = "nobody";

/// nanny.conf and the resolved paths of the files it names.
#[derive(Debug)]
pub struct Config {
    pub conf: NannyConf,
    pub conf_path: PathBuf,
    pub rules_path: PathBuf,
    pub actions_path: PathBuf,
}

pub use crate::files::resolve_relative;

/// Reads and parses nanny.conf, then makes the host checks -C makes (users exist, the
/// privsep user is not root, the chroot directory is safe), so a daemon that cannot run says
/// which line of nanny.conf is wrong. Errors: every diagnostic, one per line, then exit 100.
pub fn load_conf(path: &Path) -> Result<Config> {
    let name = path.display().to_string();
    let text = files::read_text(path, &name).map_err(|e| Error::Config(e.to_string()))?;
    let parsed = policy::conf::parse_conf(&name, &text);
    let mut diags = parsed.diagnostics;
    let root = nix::unistd::geteuid().is_root();
    if let Some(conf) = &parsed.value {
        diags.extend(host_checks((&name, &text), conf, root, false));
    }
    for d in diags.iter().filter(|d| d.severity == Severity::Warning) {
        log::warn(&d.to_string());
    }
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    let conf = match parsed.value {
        Some(conf) if errors.is_empty() => conf,
        _ => return Err(Error::Config(errors.join("\n"))),
    };
    Ok(Config {
        rules_path: resolve_relative(path, &conf.rulefile),
        actions_path: resolve_relative(path, &conf.actionfile),
        conf,
        conf_path: path.to_path_buf(),
    })
}

/// What the host must provide for nanny.conf to work, as diagnostics at the directive: the
/// `user` exists (H001); the privsep user exists and is not root (H002; when `root`, the only
/// case where the daemon uses it, or when `check`, for -C); an existing chroot directory
/// passes the daemon's checks (H003; only when `root`, the only case where the daemon
/// chroots). A missing chroot directory is created by the daemon at start, so -C only
/// mentions it (H004).
pub fn host_checks(
    conf_src: (&str, &str),
    conf: &NannyConf,
    root: bool,
    check: bool,
) -> Vec<Diagnostic> {
    let diag = |directive: &str, severity: Severity, code: &'static str, message: String| {
        policy::check::conf_value_diagnostic(conf_src, directive, severity, code, message)
    };
    let mut out = Vec::new();
    if let Some(u) = &conf.user {
        match User::from_name(u) {
            Ok(Some(_)) => {}
            Ok(None) => out.push(diag(
                "user",
                Severity::Error,
                "H001",
                format!("user '{u}' does not exist on this host"),
            )),
            Err(e) => out.push(diag(
                "user",
                Severity::Error,
                "H001",
                format!("cannot look up user '{u}': {e}"),
            )),
        }
    }
    if root || check {
        if let Err(e) = privsep_user(conf) {
            out.push(diag("privsepuser", Severity::Error, "H002", e.to_string()));
        }
    }
    if root {
        let dir = Path::new(conf.chrootdir.as_deref().unwrap_or(DEFAULT_CHROOT));
        if dir.exists() {
            if let Err(e) = check_chroot(dir) {
                out.push(diag("chrootdir", Severity::Error, "H003", e));
            }
        } else if check {
            out.push(diag(
                "chrootdir",
                Severity::Warning,
                "H004",
                format!(
                    "chroot directory {} does not exist; portnanny creates it at start \
                     (owned by root, mode 0755)",
                    dir.display()
                ),
            ));
        }
    }
    out.extend(control_checks(conf, &diag));
    out
}

/// `controlgroup` must exist (H009, an error: the daemon would not start) and the control
/// socket's directory too (H010, an error for the same reason).
fn control_checks(
    conf: &NannyConf,
    diag: &dyn Fn(&str, Severity, &'static str, String) -> Diagnostic,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let c = &conf.control;
    if let (Some(g), Some(_)) = (&c.group, &c.socket) {
        match nix::unistd::Group::from_name(g) {
            Ok(Some(_)) => {}
            Ok(None) => out.push(diag(
                "controlgroup",
                Severity::Error,
                "H009",
                format!("group '{g}' does not exist on this host"),
            )),
            Err(e) => out.push(diag(
                "controlgroup",
                Severity::Error,
                "H009",
                format!("cannot look up group '{g}': {e}"),
            )),
        }
    }
    if let Some(dir) = c.socket.as_deref().map(Path::new).and_then(Path::parent) {
        if !dir.is_dir() {
            out.push(diag(
                "control",
                Severity::Error,
                "H010",
                format!(
                    "{} is not a directory, so the control socket cannot be made there",
                    dir.display()
                ),
            ));
        }
    }
    // The XML-RPC password file must be readable and parse (H012, an error: the daemon would
    // not start).
    if let (Some(_), Some(users)) = (c.xmlrpc.addr, c.xmlrpc.users.as_deref()) {
        if let Err(e) = crate::xmlrpc_passwd::read(Path::new(users)) {
            out.push(diag("xmlrpcusers", Severity::Error, "H012", e));
        }
    }
    out
}

/// -C: the files the sentry directives name (`blockfile`, `historyfile`, `hostsdeny`,
/// `blockzone`) are written by the parent, so the directory each is in must exist; resolved like
/// `rulefile`. A missing one is warning H005 at the directive.
fn sentry_paths(conf_src: (&str, &str), conf: &NannyConf, conf_path: &Path) -> Vec<Diagnostic> {
    let s = &conf.sentry;
    let files = [
        ("blockfile", s.blockfile.as_deref()),
        ("historyfile", s.historyfile.as_deref()),
        ("hostsdeny", s.hostsdeny.as_deref()),
        ("blockzone", s.blockzone.as_ref().map(|z| z.file.as_str())),
    ];
    let mut out = Vec::new();
    for (directive, file) in files {
        let Some(file) = file else { continue };
        let path = resolve_relative(conf_path, file);
        let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
            continue;
        };
        if !dir.is_dir() {
            out.push(policy::check::conf_value_diagnostic(
                conf_src,
                directive,
                Severity::Warning,
                "H005",
                format!(
                    "{} is not a directory, so {} cannot be written there",
                    dir.display(),
                    path.display()
                ),
            ));
        }
    }
    out
}

/// -C: checks all three files at once, plus what the host must provide (users, the chroot
/// directory), and prints every diagnostic with its excerpt on stderr. Exit 0 when there are
/// no errors (warnings allowed), 1 for any problem found, including a nanny.conf that cannot
/// be read.
pub fn check(args: &Args) -> Result<ExitCode> {
    let conf_name = args.config.display().to_string();
    let mut extra: Vec<String> = Vec::new();
    let mut diags: Vec<Diagnostic> = Vec::new();
    let mut unreadable = |e: FileError, diags: &mut Vec<Diagnostic>| match e {
        FileError::Io { name, what } => extra.push(format!("{name}: error: {what}")),
        FileError::Decode(d) => diags.push(d),
    };
    let conf_text = match files::read_text(&args.config, &conf_name) {
        Ok(t) => Some(t),
        Err(e) => {
            unreadable(e, &mut diags);
            None
        }
    };
    let mut rules: Option<(String, String)> = None;
    let mut actions: Option<(String, String)> = None;
    if let Some(conf_text) = &conf_text {
        let root = nix::unistd::geteuid().is_root();
        if let Some(conf) = policy::conf::parse_conf(&conf_name, conf_text).value {
            for (file, slot) in [
                (&conf.rulefile, &mut rules),
                (&conf.actionfile, &mut actions),
            ] {
                let path = resolve_relative(&args.config, file);
                let name = path.display().to_string();
                match files::read_text(&path, &name) {
                    Ok(t) => *slot = Some((name, t)),
                    Err(e) => unreadable(e, &mut diags),
                }
            }
            diags.extend(host_checks((&conf_name, conf_text), &conf, root, true));
            diags.extend(sentry_paths((&conf_name, conf_text), &conf, &args.config));
            // The address lists `ipfile:` names: each must be readable and parse (C011).
            let ipfiles = rules
                .as_ref()
                .and_then(|(n, t)| policy::rules::parse_rules(n, t).value)
                .map(|r| r.ipfiles())
                .unwrap_or_default();
            // (as written, as read, text): the text the daemon would ship, empty if unreadable.
            let mut lists: Vec<(String, String, String)> = Vec::new();
            for file in ipfiles {
                let path = resolve_relative(&args.config, &file);
                let name = path.display().to_string();
                let text = match files::read_text(&path, &name) {
                    Ok(t) => {
                        diags.extend(policy::sentry::parse_ipfile(&name, &t).diagnostics);
                        t
                    }
                    Err(e) => {
                        unreadable(e, &mut diags);
                        String::new()
                    }
                };
                lists.push((file, name, text));
            }
            // Every list must fit in the policy message with the rules and actions, as the
            // daemon decides it at every load (H013 at the list's `ipfile:` operand).
            if let Some((rules_name, rules_text)) = &rules {
                let base = rules_text.len() + actions.as_ref().map_or(0, |(_, t)| t.len());
                let sizes = lists.iter().map(|(w, _, t)| (w.as_str(), t.as_str()));
                for (i, total) in files::over_policy_budget(base, sizes) {
                    if let Some((written, name, _)) = lists.get(i) {
                        diags.push(policy::check::ipfile_diagnostic(
                            (rules_name, rules_text),
                            written,
                            Severity::Error,
                            "H013",
                            files::over_policy_budget_message(name, total),
                        ));
                    }
                }
            }
        }
        // What the actions' classes need from this host (users, chdir directories,
        // msgfiles): H006-H008 at the value as written, as the daemon's load reports them.
        if let Some((name, text)) = &actions {
            let ctx = super::classhost::HostCtx {
                conf_path: args.config.clone(),
                root: nix::unistd::geteuid().is_root(),
            };
            diags.extend(super::classhost::check(name, text, &ctx));
        }
        diags.extend(policy::check::check_all(
            (&conf_name, conf_text),
            rules.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
            actions.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
        ));
    }
    // nanny.conf first, then rules, then actions; by position within each.
    let rank = |file: &str| -> usize {
        [
            Some(conf_name.as_str()),
            rules.as_ref().map(|r| r.0.as_str()),
            actions.as_ref().map(|a| a.0.as_str()),
        ]
        .iter()
        .position(|n| *n == Some(file))
        .unwrap_or(3)
    };
    diags.sort_by_key(|d| (rank(&d.file), d.line, d.col));
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count()
        + extra.len();
    let warnings = diags.len() + extra.len() - errors;
    let mut out = String::new();
    for e in &extra {
        out.push_str(e);
        out.push_str("\n\n");
    }
    for d in &diags {
        out.push_str(&d.excerpt());
        out.push_str("\n\n");
    }
    out.push_str(&format!(
        "{}: {errors} error{}, {warnings} warning{}\n",
        args.progname,
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" }
    ));
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
    Ok(ExitCode::from(u8::from(errors > 0)))
}

/// -S: sets the RLIMIT_STACK soft limit (the hard limit is kept). Like the original, a failure
/// is logged and start-up goes on.
pub fn set_stack(limit: StackLimit) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let soft = match limit {
        StackLimit::Unlimited => RLIM_INFINITY,
        StackLimit::Bytes(b) => b,
    };
    let res = getrlimit(Resource::RLIMIT_STACK)
        .and_then(|(_, hard)| setrlimit(Resource::RLIMIT_STACK, soft, hard));
    if let Err(e) = res {
        log::err(&format!("cannot set the stack limit to {soft}: {e}"));
    }
}

/// The unprivileged user the workers run as: `privsepuser`, else the dedicated `portnanny`
/// user when it exists, else `nobody`. Root is refused.
pub fn privsep_user(conf: &NannyConf) -> Result<(String, u32, u32)> {
    let candidates: Vec<&str> = match &conf.privsepuser {
        Some(u) => vec![u.as_str()],
        None => vec![DEDICATED_USER, FALLBACK_USER],
    };
    for name in &candidates {
        match User::from_name(name) {
            Ok(Some(u)) => {
                if u.uid.is_root() {
                    return Err(Error::Config(format!(
                        "privsepuser {name} is root; the workers must run unprivileged"
                    )));
                }
                return Ok((name.to_string(), u.uid.as_raw(), u.gid.as_raw()));
            }
            Ok(None) => continue,
            Err(e) => return Err(Error::system(format!("looking up user {name}"), e)),
        }
    }
    Err(Error::Config(format!(
        "no privsep user: none of {} exists (set privsepuser in nanny.conf)",
        candidates.join(", ")
    )))
}

/// Makes sure the classifier's root exists and is safe. A missing directory is created
/// root-owned with mode 0755 (it stays empty); an existing one is never changed, only checked
/// (root-owned, not group/world-writable, empty): if it is wrong, the administrator must fix
/// it, because silently chmod-ing a directory someone else uses would hide the problem.
pub fn prepare_chroot(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::system(format!("creating {}", dir.display()), e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::system(format!("chmod {}", dir.display()), e))?;
        std::os::unix::fs::chown(dir, Some(0), Some(0))
            .map_err(|e| Error::system(format!("chown {}", dir.display()), e))?;
        log::notice(&format!(
            "created the empty chroot directory {}",
            dir.display()
        ));
    }
    check_chroot(dir).map_err(Error::Config)
}

/// The checks an existing chroot directory must pass (the daemon's and -C's).
fn check_chroot(dir: &Path) -> std::result::Result<(), String> {
    privsep::drop::check_chroot_dir(dir)
        .map_err(|e| format!("chroot directory {}: {e}", dir.display()))?;
    // check_chroot_dir covers the ownership and emptiness rules; the mode is repeated here in
    // the message so the administrator sees what is expected.
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "chroot directory {} must be owned by root and not group/world-writable (mode 0755)",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_follow_the_config() {
        let rows = [
            ("/etc/pn/nanny.conf", "rules", "/etc/pn/rules"),
            ("/etc/pn/nanny.conf", "/abs/rules", "/abs/rules"),
            ("nanny.conf", "rules", "rules"),
            ("conf/nanny.conf", "../r", "conf/../r"),
        ];
        for (conf, file, want) in rows {
            assert_eq!(resolve_relative(Path::new(conf), file), PathBuf::from(want));
        }
    }
}
