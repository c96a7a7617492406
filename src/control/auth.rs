//! Who a control client is (SO_PEERCRED, SO_PEERGROUPS) and what it may do: root everything,
//! members of `controlgroup` reading, everyone else nothing.
//!
//! Runs in the control worker. The credentials are the kernel's, taken when the client
//! connected; nothing a client sends changes them.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use privsep::control::Access;
use privsep::proto::ControlSettings;

/// A client's credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
}

impl Peer {
    /// For a client refused before its credentials were read: nobody, no groups.
    pub fn unknown() -> Peer {
        Peer {
            uid: u32::MAX,
            gid: u32::MAX,
            pid: 0,
            groups: Vec::new(),
        }
    }
}

/// The peer's credentials, as the kernel recorded them at connect(2).
pub fn peer_of(fd: BorrowedFd<'_>) -> std::io::Result<Peer> {
    let cred = getsockopt(&fd, PeerCredentials)?;
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
        groups: peer_groups(fd)?,
    })
}

/// SO_PEERGROUPS (Linux 4.13): the supplementary groups the peer had at connect(2).
fn peer_groups(fd: BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    // Bounded: NGROUPS_MAX is 65536, so at most two rounds grow the buffer.
    for _ in 0..3 {
        let mut len = libc::socklen_t::try_from(std::mem::size_of_val(groups.as_slice()))
            .map_err(|_| std::io::Error::from_raw_os_error(libc::ERANGE))?;
        // SAFETY: the buffer is `len` bytes of gid_t the kernel may fill; `len` is updated to
        // the bytes it wrote (or needs, with ERANGE).
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if r == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || n <= groups.len() {
            return Err(e);
        }
        groups.resize(n, 0);
    }
    Err(std::io::Error::from_raw_os_error(libc::ERANGE))
}

/// Whether `p` may make a request of kind `access`; Err says why not.
pub fn may(p: &Peer, access: Access, s: &ControlSettings) -> Result<(), String> {
    if p.uid == 0 || p.uid == s.admin_uid {
        return Ok(());
    }
    let member = s.group.is_some_and(|g| p.gid == g || p.groups.contains(&g));
    match (access, member) {
        (Access::Read, true) => Ok(()),
        (Access::Change, true) => {
            Err("only root may change things; controlgroup may only read".into())
        }
        _ => Err("only root and members of controlgroup may use the control socket".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: 1,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_changes_members_read_others_nothing() {
        let s = ControlSettings {
            group: Some(50),
            admin_uid: 0,
            xmlrpc: None,
        };
        assert!(may(&peer(0, 0, &[]), Access::Change, &s).is_ok());
        assert!(may(&peer(1000, 50, &[]), Access::Read, &s).is_ok());
        assert!(may(&peer(1000, 100, &[7, 50]), Access::Read, &s).is_ok());
        assert!(may(&peer(1000, 50, &[]), Access::Change, &s).is_err());
        assert!(may(&peer(1000, 100, &[7]), Access::Read, &s).is_err());
        let none = ControlSettings {
            group: None,
            admin_uid: 0,
            xmlrpc: None,
        };
        assert!(may(&peer(1000, 50, &[50]), Access::Read, &none).is_err());
        // Non-root daemon: its own user is the administrator.
        let dev = ControlSettings {
            group: None,
            admin_uid: 1000,
            xmlrpc: None,
        };
        assert!(may(&peer(1000, 1000, &[]), Access::Change, &dev).is_ok());
    }

    #[test]
    fn credentials_of_a_socketpair_are_our_own() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = peer_of(a.as_fd()).unwrap();
        assert_eq!(p.uid, nix::unistd::getuid().as_raw());
        assert_eq!(p.gid, nix::unistd::getgid().as_raw());
        assert_eq!(p.pid, std::process::id() as i32);
        let mut ours: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        let mut got = p.groups.clone();
        ours.sort();
        got.sort();
        assert_eq!(got, ours);
    }
}
