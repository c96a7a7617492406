//! The XML-RPC part of the control protocol (pyctd's API, `xmlrpc ADDR:PORT`): what the parent
//! tells the control worker about XML-RPC users, and who an XML-RPC request came from.
//!
//! The parent reads the password file (the worker is chrooted into an empty directory) and
//! sends [`XmlrpcSettings`] in the control worker's Hello, and [`XmlrpcAuth`] again on every
//! reload. The worker verifies passwords itself and forwards each procedure as a typed
//! conntrack request naming the logged-in [`XmlrpcUser`]
//! ([`crate::proto::ControlToParent::XmlrpcRequest`]). Shapes are checked while decoding
//! (`serde(try_from)`) and by [`XmlrpcSettings::check`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ShapeError;

/// Longest XML-RPC user name.
pub const MAX_XMLRPC_USER: usize = 64;
/// Most users a password file may hold: the list travels in one frame to the worker.
pub const MAX_XMLRPC_USERS: usize = 1024;
/// Longest password hash (a PHC string; argon2id with the default parameters is ~100 bytes).
pub const MAX_PASSWORD_HASH: usize = 256;

/// An XML-RPC user's name: 1 to [`MAX_XMLRPC_USER`] bytes of letters, digits, `.`, `_`, `-`,
/// `@` (so it can be logged as is and stands alone in a password file line).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct XmlrpcUser(String);

impl XmlrpcUser {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for XmlrpcUser {
    type Error = ShapeError;
    fn try_from(s: String) -> Result<Self, ShapeError> {
        if s.is_empty() || s.len() > MAX_XMLRPC_USER {
            return Err(ShapeError("xmlrpc user name length"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
        {
            return Err(ShapeError("xmlrpc user name character"));
        }
        Ok(XmlrpcUser(s))
    }
}

impl From<XmlrpcUser> for String {
    fn from(u: XmlrpcUser) -> String {
        u.0
    }
}

impl fmt::Display for XmlrpcUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One line of the password file: a user and its PHC hash string (`$argon2id$...`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XmlrpcCredential {
    pub user: XmlrpcUser,
    pub hash: String,
}

/// How `login` authenticates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum XmlrpcAuth {
    /// `xmlrpcauth none`: pyctd without mod_auth. A proxy in front authenticates; `login`
    /// accepts any arguments.
    None,
    /// `xmlrpcusers PATH`: login(user, password) against these hashes.
    Users(Vec<XmlrpcCredential>),
}

impl XmlrpcAuth {
    /// The limits decoding alone does not enforce.
    pub fn check(&self) -> Result<(), String> {
        let XmlrpcAuth::Users(users) = self else {
            return Ok(());
        };
        if users.len() > MAX_XMLRPC_USERS {
            return Err(format!(
                "{} xmlrpc users (at most {MAX_XMLRPC_USERS})",
                users.len()
            ));
        }
        if let Some(c) = users.iter().find(|c| c.hash.len() > MAX_PASSWORD_HASH) {
            return Err(format!("the password hash of {} is too long", c.user));
        }
        Ok(())
    }
}

/// `xmlrpc ADDR:PORT` is configured: what the control worker needs to serve it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XmlrpcSettings {
    pub auth: XmlrpcAuth,
    /// `xmlrpcidle SECS`: a session unused this long is gone (pyctd: 10 s).
    pub idle_secs: u32,
}

impl XmlrpcSettings {
    pub fn check(&self) -> Result<(), String> {
        self.auth.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_checked() {
        for ok in ["alice", "a.b-c_d@example", "x"] {
            assert!(XmlrpcUser::try_from(ok.to_owned()).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_XMLRPC_USER + 1);
        for bad in ["", "a b", "a:b", "é", "a\n", long.as_str()] {
            assert!(XmlrpcUser::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn auth_is_bounded() {
        let c = |h: &str| XmlrpcCredential {
            user: XmlrpcUser::try_from("u".to_owned()).unwrap(),
            hash: h.to_owned(),
        };
        assert!(XmlrpcAuth::Users(vec![c("$argon2id$x")]).check().is_ok());
        let long = "x".repeat(MAX_PASSWORD_HASH + 1);
        assert!(XmlrpcAuth::Users(vec![c(&long)]).check().is_err());
        let many = vec![c("h"); MAX_XMLRPC_USERS + 1];
        assert!(XmlrpcAuth::Users(many).check().is_err());
        assert!(XmlrpcAuth::None.check().is_ok());
    }
}
