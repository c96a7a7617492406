//! pyctd's XML-RPC API on the parent's side: the TCP listener of `xmlrpc ADDR:PORT`, bound at
//! start (as root, so a low port works) and handed to the control worker as its fd 5, and the
//! password file, read at start and again on every forced reload (SIGHUP, `nannyctl reload`)
//! and sent to the worker, which is chrooted and verifies passwords itself.
//!
//! Runs in the parent. nanny.conf is not re-read after start (confwatch.rs), so the address
//! never changes under a running daemon; the password file does.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use privsep::xmlrpc::{XmlrpcAuth, XmlrpcSettings};

use crate::log;

/// The bound listener and where the users come from.
#[derive(Debug)]
pub struct XmlrpcSide {
    pub listener: OwnedFd,
    /// `xmlrpcusers PATH` (None: `xmlrpcauth none`).
    pub users: Option<PathBuf>,
}

/// Binds the listener and reads the password file: what start-up needs.
pub fn set_up(
    c: &policy::xmlrpc_conf::XmlrpcConf,
) -> Result<Option<(XmlrpcSide, XmlrpcSettings)>, String> {
    let Some(addr) = c.addr else {
        return Ok(None);
    };
    let users = c.users.as_ref().map(PathBuf::from);
    let auth = read_auth(users.as_ref())?;
    let listener = TcpListener::bind(addr).map_err(|e| format!("xmlrpc {addr}: bind: {e}"))?;
    log::debug(2, &format!("xmlrpc listening on {addr}"));
    let side = XmlrpcSide {
        listener: OwnedFd::from(listener),
        users,
    };
    let settings = XmlrpcSettings {
        auth,
        idle_secs: c.idle(),
    };
    settings.check()?;
    Ok(Some((side, settings)))
}

/// The users of the password file (or none: `xmlrpcauth none`).
pub fn read_auth(users: Option<&PathBuf>) -> Result<XmlrpcAuth, String> {
    match users {
        None => Ok(XmlrpcAuth::None),
        Some(p) => crate::xmlrpc_passwd::read(p)
            .map(XmlrpcAuth::Users)
            .map_err(|e| format!("xmlrpcusers {e}")),
    }
}

impl super::Parent {
    /// A forced reload: the password file is read again and sent to the control worker. A
    /// file that fails to load keeps the old users (and says so).
    pub(super) fn reload_xmlrpc_users(&mut self) {
        let Some(c) = self.control.as_mut() else {
            return;
        };
        let Some(x) = c.xmlrpc.as_ref() else {
            return;
        };
        let Some(path) = x.users.clone() else {
            return;
        };
        let auth = match read_auth(Some(&path)) {
            Ok(a) => a,
            Err(e) => {
                log::err(&format!("{e}; keeping the users loaded before"));
                return;
            }
        };
        let msg = privsep::proto::ParentToControl::XmlrpcUsers(auth.clone());
        c.set_xmlrpc_auth(auth);
        let r = match c.worker.as_mut() {
            Some(w) => w.queue(&msg, "XmlrpcUsers"),
            None => return,
        };
        if let Err(f) = r {
            self.worker_failed(f);
        }
    }
}
