//! What each class of an actions table needs from this host, resolved by the parent when it
//! loads the file: the sandbox's user and group (passwd and group databases), its `chdir`
//! directory, and the bytes of its `msgfile`.
//!
//! Runs in the parent (at start, in the loader thread on reload, and for `-C`), privileged,
//! on the administrator's actions file; nothing here comes from a worker. A verdict names a
//! class; the service is then set up from this table of the verdict's generation, never from
//! anything the classifier sent. Every problem is a diagnostic at the value as written
//! (file:line:col): H006 a user or group that does not exist, H007 a `chdir` that is not a
//! directory, H008 a `msgfile` that cannot be read (the rules of the policy files: regular files
//! only, O_NONBLOCK, capped) or is over the message cap. They are errors, so a load with one
//! fails like a load with a syntax error (onfileerror applies on reload).
//!
//! Each value is resolved once per place it is written (classes that `see` it share it).

use std::collections::HashMap;
use std::ffi::CString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::{Group, User};
use policy::actions::{Actions, At, Pos, Sandbox, UserSpec, MAX_MSG_BYTES};
use policy::{Diagnostic, Severity, SourceFile};

use super::spawn::{self, Creds, ServiceSandbox};
use crate::files;

/// One class's host-resolved parts.
#[derive(Clone, Debug, Default)]
struct ClassHost {
    sandbox: Option<Arc<ServiceSandbox>>,
    msgfile: Option<Arc<[u8]>>,
}

/// The host-resolved parts of one actions table, by class index.
#[derive(Debug, Default)]
pub struct HostTable {
    classes: Vec<ClassHost>,
    /// The msgfiles read (path as resolved), for the reload watch.
    msgfiles: Vec<std::path::PathBuf>,
}

impl HostTable {
    /// The sandbox of class `idx` (None: it has no sandbox directives).
    pub fn sandbox(&self, idx: u32) -> Option<&ServiceSandbox> {
        self.classes.get(idx as usize)?.sandbox.as_deref()
    }

    /// The bytes of class `idx`'s msgfile.
    pub fn msgfile(&self, idx: u32) -> Option<&Arc<[u8]>> {
        self.classes.get(idx as usize)?.msgfile.as_ref()
    }

    /// Every msgfile this table was built from.
    pub fn msgfile_paths(&self) -> &[std::path::PathBuf] {
        &self.msgfiles
    }
}

/// How to resolve: relative msgfiles are taken from nanny.conf's directory (as `rulefile`
/// and `ipfile:`); `root`: whether the class users apply (as nanny.conf's `user`, they are
/// looked up but ignored, with a warning, when the daemon is not root).
#[derive(Clone, Debug)]
pub struct HostCtx {
    pub conf_path: std::path::PathBuf,
    pub root: bool,
}

/// -C: the host diagnostics of every value written in the actions file (see
/// [`policy::actions::host_values`]), even when the file has syntax errors elsewhere.
pub fn check(name: &str, text: &str, ctx: &HostCtx) -> Vec<Diagnostic> {
    let src = SourceFile::new(name, text);
    let diag = |code, pos: Pos, msg: String| {
        src.diagnostic(Severity::Error, code, pos.0, pos.1, pos.2, msg)
    };
    let v = policy::actions::host_values(name, text);
    let mut out = Vec::new();
    for u in &v.users {
        if let Err(m) = resolve_spec(&u.value) {
            out.push(diag("H006", u.pos, m));
        }
    }
    for d in &v.dirs {
        if let Err(m) = check_dir(d) {
            out.push(diag("H007", d.pos, m));
        }
    }
    for f in &v.msgfiles {
        let path = crate::files::resolve_relative(&ctx.conf_path, &f.value);
        if let Err(m) = read_msgfile(&path) {
            out.push(diag("H008", f.pos, m));
        }
    }
    out
}

/// Resolves every class of `actions` (parsed from `text`, named `name`): the table, and the
/// diagnostics (any error means the table must not be used).
pub fn resolve(
    actions: &Actions,
    name: &str,
    text: &str,
    ctx: &HostCtx,
) -> (HostTable, Vec<Diagnostic>) {
    let src = SourceFile::new(name, text);
    let mut diags = Vec::new();
    let diag = |severity, code, pos: Pos, msg: String| {
        src.diagnostic(severity, code, pos.0, pos.1, pos.2, msg)
    };
    let mut users: HashMap<Pos, Option<Creds>> = HashMap::new();
    let mut dirs: HashMap<Pos, Option<CString>> = HashMap::new();
    let mut files: HashMap<Pos, Option<Arc<[u8]>>> = HashMap::new();
    let mut table = HostTable::default();
    for c in actions.iter() {
        let mut host = ClassHost::default();
        if let Some(f) = &c.msgfile {
            let bytes = files.entry(f.pos).or_insert_with(|| {
                let path = crate::files::resolve_relative(&ctx.conf_path, &f.value);
                let r = read_msgfile(&path);
                table.msgfiles.push(path);
                r.map_err(|m| diags.push(diag(Severity::Error, "H008", f.pos, m)))
                    .ok()
            });
            host.msgfile = bytes.clone();
        }
        if !c.sandbox.is_empty() {
            let creds = match &c.sandbox.user {
                None => None,
                Some(u) => users
                    .entry(u.pos)
                    .or_insert_with(|| match resolve_spec(&u.value) {
                        Ok(creds) if ctx.root => Some(creds),
                        Ok(_) => {
                            diags.push(diag(
                                Severity::Warning,
                                "H006",
                                u.pos,
                                format!(
                                    "not running as root: 'user {}' is ignored; services run \
                                     as uid {}",
                                    spec_text(&u.value),
                                    nix::unistd::getuid()
                                ),
                            ));
                            None
                        }
                        Err(m) => {
                            diags.push(diag(Severity::Error, "H006", u.pos, m));
                            None
                        }
                    })
                    .clone(),
            };
            let chdir = c.sandbox.chdir.as_ref().and_then(|d| {
                dirs.entry(d.pos)
                    .or_insert_with(|| {
                        check_dir(d)
                            .map_err(|m| diags.push(diag(Severity::Error, "H007", d.pos, m)))
                            .ok()
                    })
                    .clone()
            });
            host.sandbox = Some(Arc::new(service_sandbox(&c.sandbox, creds, chdir)));
        }
        table.classes.push(host);
    }
    (table, diags)
}

fn spec_text(u: &UserSpec) -> String {
    match &u.group {
        Some(g) => format!("{}:{g}", u.user),
        None => u.user.clone(),
    }
}

/// The user's credentials (initgroups semantics), with GROUP as the primary group when given:
/// the supplementary groups are then those a login with that group would get (the group
/// file's, plus GROUP), as `initgroups(USER, GROUP)` gives.
fn resolve_spec(u: &UserSpec) -> Result<Creds, String> {
    let user = match User::from_name(&u.user) {
        Ok(Some(user)) => user,
        Ok(None) => return Err(format!("user '{}' does not exist on this host", u.user)),
        Err(e) => return Err(format!("cannot look up user '{}': {e}", u.user)),
    };
    let Some(g) = &u.group else {
        return spawn::resolve_user(&u.user);
    };
    let group = match Group::from_name(g) {
        Ok(Some(group)) => group,
        Ok(None) => return Err(format!("group '{g}' does not exist on this host")),
        Err(e) => return Err(format!("cannot look up group '{g}': {e}")),
    };
    let cname = CString::new(u.user.as_str()).map_err(|_| format!("bad user name {:?}", u.user))?;
    let groups = nix::unistd::getgrouplist(&cname, group.gid)
        .map_err(|e| format!("cannot list the groups of {}: {e}", u.user))?;
    Ok(Creds {
        name: u.user.clone(),
        uid: user.uid.as_raw(),
        gid: group.gid.as_raw(),
        groups: groups.into_iter().map(nix::unistd::Gid::as_raw).collect(),
        home: user.dir.to_string_lossy().into_owned(),
        shell: user.shell.to_string_lossy().into_owned(),
    })
}

/// The directory must exist now (checked as root; the service enters it after taking the
/// user's ids, so one the user may not enter fails that service's set-up).
fn check_dir(d: &At<String>) -> Result<CString, String> {
    match std::fs::metadata(&d.value) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("chdir {}: not a directory", d.value)),
        Err(e) => return Err(format!("chdir {}: {e}", d.value)),
    }
    CString::new(d.value.as_str()).map_err(|_| format!("chdir {:?}: a NUL byte", d.value))
}

/// A msgfile's bytes: read with the policy files' rules (files.rs), and at most the cap of
/// one message (a larger file is refused rather than cut: it is probably the wrong file).
fn read_msgfile(path: &Path) -> Result<Arc<[u8]>, String> {
    let name = path.display().to_string();
    let (bytes, _) = files::read_bytes(path, &name).map_err(|e| format!("msgfile {e}"))?;
    if bytes.len() > MAX_MSG_BYTES {
        return Err(format!(
            "msgfile {name} is {} bytes, over the {MAX_MSG_BYTES}-byte cap of a message",
            bytes.len()
        ));
    }
    Ok(Arc::from(bytes))
}

fn service_sandbox(s: &Sandbox, creds: Option<Creds>, chdir: Option<CString>) -> ServiceSandbox {
    let lim = |v: Option<u64>| v.unwrap_or(libc::RLIM_INFINITY);
    ServiceSandbox {
        creds,
        nice: s.nice,
        rlimits: s
            .rlimits
            .iter()
            .map(|r| (r.name, lim(r.soft), lim(r.hard)))
            .collect(),
        umask: s.umask.map(|m| m as libc::mode_t),
        chdir,
        timeout: s.timeout.map(Duration::from_secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> HostCtx {
        HostCtx {
            conf_path: std::env::temp_dir().join("nanny.conf"),
            root: true,
        }
    }

    #[test]
    fn host_errors_name_the_value_as_written() {
        let text = "a: run /bin/true : user pn-no-such-user\n\
                    b: run /bin/true : user root:pn-no-such-group : chdir /nonexistent-pn\n\
                    c: msgfile /nonexistent-pn/banner\n\
                    d: see a\n";
        let actions = policy::actions::parse_actions("actions", text)
            .value
            .expect("parses");
        let (_, diags) = resolve(&actions, "actions", text, &ctx());
        let got: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        let want = [
            "actions:1:25: error[H006]: user 'pn-no-such-user' does not exist on this host",
            "actions:2:25: error[H006]: group 'pn-no-such-group' does not exist on this host",
            "actions:2:55: error[H007]: chdir /nonexistent-pn: No such file or directory (os error 2)",
            "actions:3:12: error[H008]: msgfile /nonexistent-pn/banner: cannot open: No such file or directory (os error 2)",
        ];
        // 'd' sees 'a': the same written value, reported once.
        assert_eq!(got, want);
        // -C finds the same even when another line has a syntax error.
        let broken = format!("{text}x: nice 99\n");
        let got: Vec<String> = check("actions", &broken, &ctx())
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn values_are_resolved() {
        let dir = std::env::temp_dir().join(format!("pn-classhost-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("banner"), b"hi\xff\n").unwrap();
        let text = "a: run /bin/true : user root:root : rlimit as 1m : rlimit cpu unlimited \
                    : nice 3 : umask 027 : timeout 5s : chdir /\nb: msgfile banner\n";
        let actions = policy::actions::parse_actions("actions", text)
            .value
            .unwrap();
        let c = HostCtx {
            conf_path: dir.join("nanny.conf"),
            ..ctx()
        };
        let (t, diags) = resolve(&actions, "actions", text, &c);
        assert!(diags.is_empty(), "{diags:?}");
        let s = t.sandbox(0).unwrap();
        assert_eq!(s.creds.as_ref().map(|c| (c.uid, c.gid)), Some((0, 0)));
        assert_eq!(
            s.rlimits,
            vec![
                (policy::actions::RlimitName::As, 1 << 20, 1 << 20),
                (
                    policy::actions::RlimitName::Cpu,
                    libc::RLIM_INFINITY,
                    libc::RLIM_INFINITY
                )
            ]
        );
        assert_eq!((s.nice, s.umask), (Some(3), Some(0o27)));
        assert_eq!(s.timeout, Some(Duration::from_secs(5)));
        assert_eq!(s.chdir.as_deref().and_then(|c| c.to_str().ok()), Some("/"));
        assert!(t.sandbox(1).is_none());
        assert_eq!(t.msgfile(1).map(|b| &b[..]), Some(&b"hi\xff\n"[..]));
        assert_eq!(t.msgfile_paths(), &[dir.join("banner")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
