//! The XML-RPC password file (`xmlrpcusers PATH`): one `USER:PHC-HASH` line per user (argon2id
//! with the argon2 crate's default parameters: 19 MiB, 2 passes, 1 lane — OWASP's minimum),
//! `#` comments and blank lines ignored. Read by the parent at start and on every reload (the
//! control worker that verifies passwords is chrooted and cannot), checked by `-C`, and
//! written by `portnanny --xmlrpc-passwd FILE USER` (password from stdin; the file replaced
//! atomically, mode 0600, that user's line replaced).
//!
//! Runs in the parent (root) and in the `--xmlrpc-passwd` tool; the file is the
//! administrator's.

use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::Argon2;
use privsep::xmlrpc::{XmlrpcCredential, XmlrpcUser, MAX_PASSWORD_HASH, MAX_XMLRPC_USERS};

/// Largest password file read.
const MAX_FILE: u64 = 1 << 20;
/// Longest password accepted by the tool.
const MAX_PASSWORD: usize = 1024;

/// Parses the file's text; Err names `name:line` and what is wrong.
pub fn parse(name: &str, text: &str) -> Result<Vec<XmlrpcCredential>, String> {
    let mut out: Vec<XmlrpcCredential> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!("{name}:{n}: expected USER:HASH"));
        };
        let user = XmlrpcUser::try_from(user.to_owned())
            .map_err(|e| format!("{name}:{n}: bad user name '{}': {e}", user.escape_debug()))?;
        if hash.len() > MAX_PASSWORD_HASH || PasswordHash::new(hash).is_err() {
            return Err(format!(
                "{name}:{n}: the hash of {user} is not a PHC string (make it with \
                 portnanny --xmlrpc-passwd)"
            ));
        }
        if out.iter().any(|c| c.user == user) {
            return Err(format!("{name}:{n}: {user} is given twice"));
        }
        if out.len() >= MAX_XMLRPC_USERS {
            return Err(format!("{name}:{n}: more than {MAX_XMLRPC_USERS} users"));
        }
        out.push(XmlrpcCredential {
            user,
            hash: hash.to_owned(),
        });
    }
    Ok(out)
}

/// Reads and parses the file.
pub fn read(path: &Path) -> Result<Vec<XmlrpcCredential>, String> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| format!("{name}: {e}"))?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return Err(format!(
            "{name}: not a regular file of at most {MAX_FILE} bytes"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    parse(&name, &text)
}

/// A PHC hash of `password` with a fresh random salt.
pub fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("random source: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// `--xmlrpc-passwd FILE USER`: sets USER's password (one line read from `input`), keeping
/// every other line; the new file is written beside the old one with mode 0600 and renamed
/// over it.
pub fn set_user(path: &Path, user: &str, input: &mut dyn BufRead) -> Result<(), String> {
    let user = XmlrpcUser::try_from(user.to_owned())
        .map_err(|e| format!("bad user name '{}': {e}", user.escape_debug()))?;
    let mut pw = String::new();
    std::io::Read::take(input, MAX_PASSWORD as u64 + 2)
        .read_line(&mut pw)
        .map_err(|e| format!("reading the password: {e}"))?;
    let pw = pw.trim_end_matches(['\n', '\r']);
    if pw.is_empty() || pw.len() > MAX_PASSWORD {
        return Err(format!(
            "the password (one line on stdin) must be 1 to {MAX_PASSWORD} bytes"
        ));
    }
    let old = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    parse(&path.display().to_string(), &old)?;
    let prefix = format!("{user}:");
    let mut text: String = old
        .lines()
        .filter(|l| !l.trim().starts_with(&prefix))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("{user}:{}\n", hash(pw)?));
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{}: {e}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn set_user_writes_0600_and_replaces_only_that_line() {
        let dir = std::env::temp_dir().join(format!("pn-xmlpw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let f = dir.join("pw");
        set_user(&f, "alice", &mut &b"one\n"[..]).unwrap();
        set_user(&f, "bob", &mut &b"two\n"[..]).unwrap();
        set_user(&f, "alice", &mut &b"three\n"[..]).unwrap();
        let mode = std::fs::metadata(&f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let users = read(&f).unwrap();
        let names: Vec<&str> = users.iter().map(|c| c.user.as_str()).collect();
        assert_eq!(names, ["bob", "alice"]);
        assert!(users[1].hash.starts_with("$argon2id$"));
        assert!(set_user(&f, "a b", &mut &b"x\n"[..]).is_err());
        assert!(set_user(&f, "c", &mut &b"\n"[..]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parse_names_the_bad_line() {
        let e = parse(
            "pw",
            "# c\n\nalice:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\nbob\n",
        )
        .unwrap_err();
        assert_eq!(e, "pw:4: expected USER:HASH");
        let e = parse("pw", "bob:plain\n").unwrap_err();
        assert!(e.starts_with("pw:1: the hash of bob"), "{e}");
    }
}
