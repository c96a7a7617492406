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

/// A relative rulefile/actionfile is taken relative to the directory of nanny.conf, so a
/// configuration works the same whatever the current directory.
pub fn resolve_relative(conf_path: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match conf_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::config(path.display(), e))
}

/// Reads and parses nanny.conf. Errors: every diagnostic, one per line, then exit 100.
pub fn load_conf(path: &Path) -> Result<Config> {
    let name = path.display().to_string();
    let text = read(path)?;
    let parsed = policy::conf::parse_conf(&name, &text);
    for d in parsed
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
    {
        log::warn(&d.to_string());
    }
    let Some(conf) = parsed.value else {
        let lines: Vec<String> = parsed
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(ToString::to_string)
            .collect();
        return Err(Error::Config(lines.join("\n")));
    };
    Ok(Config {
        rules_path: resolve_relative(path, &conf.rulefile),
        actions_path: resolve_relative(path, &conf.actionfile),
        conf,
        conf_path: path.to_path_buf(),
    })
}

/// -C: checks all three files at once and prints every diagnostic with its excerpt on stderr.
/// Exit 0 when there are no errors (warnings allowed), 1 otherwise.
pub fn check(args: &Args) -> Result<ExitCode> {
    let conf_name = args.config.display().to_string();
    let conf_text = read(&args.config)?;
    let mut extra: Vec<String> = Vec::new();
    let mut rules: Option<(String, String)> = None;
    let mut actions: Option<(String, String)> = None;
    if let Some(conf) = policy::conf::parse_conf(&conf_name, &conf_text).value {
        for (file, slot) in [
            (&conf.rulefile, &mut rules),
            (&conf.actionfile, &mut actions),
        ] {
            let path = resolve_relative(&args.config, file);
            match std::fs::read_to_string(&path) {
                Ok(t) => *slot = Some((path.display().to_string(), t)),
                Err(e) => extra.push(format!("{}: error: cannot read: {e}", path.display())),
            }
        }
    }
    let diags: Vec<Diagnostic> = policy::check::check_all(
        (&conf_name, &conf_text),
        rules.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
        actions.as_ref().map(|(n, t)| (n.as_str(), t.as_str())),
    );
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
    privsep::drop::check_chroot_dir(dir)
        .map_err(|e| Error::Config(format!("chroot directory {}: {e}", dir.display())))?;
    // check_chroot_dir covers the ownership and emptiness rules; the mode is repeated here in
    // the message so the administrator sees what is expected.
    let meta = std::fs::metadata(dir).map_err(|e| Error::system(dir.display(), e))?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(Error::Config(format!(
            "chroot directory {} must be owned by root and not group/world-writable (mode 0755)",
            dir.display()
        )));
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
