//! The control socket: bound by the parent (as root, so it can own it) and handed to the
//! control worker, which accepts on it.
//!
//! Runs in the parent at start-up. The socket is created with mode 0600 (the umask is
//! narrowed around bind(2), so it is never reachable by anyone else even for an instant), then
//! given to `controlgroup` and widened to 0660. A socket file left by a dead daemon (connect
//! is refused) is replaced; one a live daemon answers on is a start-up error, as is any other
//! kind of file at the path.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use std::os::unix::fs::PermissionsExt;

use nix::sys::stat::{umask, Mode};
use nix::unistd::Gid;

use crate::log;

/// Pending connections the kernel queues for the control worker.
const BACKLOG: i32 = 64;

/// The bound control socket; its path is removed when the daemon stops.
#[derive(Debug)]
pub struct ControlSocket {
    pub path: PathBuf,
    pub fd: OwnedFd,
    /// (device, inode) of the socket file we made, so only our own is removed.
    id: (u64, u64),
}

/// Binds `path` for `group` (None: root only; in non-root mode, the invoking user only).
pub fn bind(path: &Path, group: Option<Gid>) -> Result<ControlSocket, String> {
    let shown = path.display();
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dmeta = std::fs::metadata(dir).map_err(|e| {
        format!(
            "control socket {shown}: its directory {}: {e}",
            dir.display()
        )
    })?;
    if dmeta.mode() & 0o002 != 0 && dmeta.mode() & 0o1000 == 0 {
        return Err(format!(
            "control socket {shown}: its directory {} is writable by everyone without the \
             sticky bit; use a directory only root can write, such as /run/portnanny",
            dir.display()
        ));
    }
    replace_stale(path)?;
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound.map_err(|e| format!("control socket {shown}: bind: {e}"))?;
    let fd = OwnedFd::from(listener);
    let backlog = nix::sys::socket::Backlog::new(BACKLOG)
        .map_err(|e| format!("control socket {shown}: backlog: {e}"))?;
    nix::sys::socket::listen(&fd, backlog)
        .map_err(|e| format!("control socket {shown}: listen: {e}"))?;
    let meta =
        std::fs::symlink_metadata(path).map_err(|e| format!("control socket {shown}: {e}"))?;
    let sock = ControlSocket {
        path: path.to_owned(),
        fd,
        id: (meta.dev(), meta.ino()),
    };
    if let Some(g) = group {
        // Owner stays ours; the group may connect. No symlink is followed: the path was
        // created by bind a moment ago in a directory others cannot write.
        std::os::unix::fs::lchown(path, None, Some(g.as_raw()))
            .map_err(|e| format!("control socket {shown}: chown to group {g}: {e}"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| format!("control socket {shown}: chmod: {e}"))?;
    }
    log::debug(
        2,
        &format!("control socket {shown} (fd {})", sock.fd.as_raw_fd()),
    );
    Ok(sock)
}

/// Removes a socket file no daemon answers on; refuses a live one and anything else.
fn replace_stale(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("control socket {shown}: {e}")),
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "control socket {shown}: the path exists and is not a socket; remove it or \
             choose another path"
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(format!(
            "control socket {shown}: another daemon is serving it (is portnanny already \
             running?)"
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info(&format!(
                "control socket {shown}: replacing a stale socket nothing listens on"
            ));
            std::fs::remove_file(path).map_err(|e| format!("control socket {shown}: {e}"))
        }
        Err(e) => Err(format!("control socket {shown}: {e}")),
    }
}

impl ControlSocket {
    /// Removes the socket file if it is still the one we made.
    pub fn remove(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_0600_replaces_stale_and_refuses_live_or_other_files() {
        let dir = std::env::temp_dir().join(format!("pn-ctlsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("control");

        let s = bind(&path, None).unwrap();
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        // A live one is refused.
        let e = bind(&path, None).unwrap_err();
        assert!(e.contains("another daemon"), "{e}");
        // Dead (its listener closed, the file left): replaced.
        drop(s);
        let s = bind(&path, None).unwrap();
        s.remove();
        assert!(!path.exists());
        // Not a socket: refused, and left alone.
        std::fs::write(&path, "x").unwrap();
        let e = bind(&path, None).unwrap_err();
        assert!(e.contains("not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
