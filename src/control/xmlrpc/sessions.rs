//! XML-RPC sessions (pyctd's `login` → session id): who logged in, and when the session was
//! last used. Ids are 128 bits from the kernel's random source (getrandom(2), which works in
//! the chroot), written as 32 lower-case hex digits. A session unused for the idle time
//! (`xmlrpcidle`, pyctd's 10 s) is gone; at most [`MAX_SESSIONS`] live at once, and a login
//! beyond that evicts the session idle the longest (a frontend that stopped calling loses its
//! session rather than a new operator being locked out).
//!
//! Runs in the control worker; the ids come back from remote frontends and are only ever
//! looked up, never parsed further.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use privsep::xmlrpc::XmlrpcUser;

/// Most live sessions.
pub const MAX_SESSIONS: usize = 64;
/// Bytes of randomness in a session id.
const ID_BYTES: usize = 16;

#[derive(Debug)]
struct Session {
    user: XmlrpcUser,
    last_used: Instant,
}

#[derive(Debug)]
pub struct Sessions {
    live: HashMap<String, Session>,
    idle: Duration,
}

/// Why a session id was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// It named a session that expired (or never existed: the two cannot be told apart
    /// without keeping old ids, so the message says both).
    Unknown,
    /// It is not even shaped like one of our ids.
    Malformed,
}

impl Sessions {
    pub fn new(idle: Duration) -> Sessions {
        Sessions {
            live: HashMap::new(),
            idle,
        }
    }

    pub fn set_idle(&mut self, idle: Duration) {
        self.idle = idle;
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// A new session for `user`; Err when the random source fails.
    pub fn open(&mut self, user: XmlrpcUser, now: Instant) -> Result<String, String> {
        self.expire(now);
        if self.live.len() >= MAX_SESSIONS {
            let oldest = self
                .live
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.live.remove(&k);
            }
        }
        let mut raw = [0u8; ID_BYTES];
        getrandom::fill(&mut raw).map_err(|e| format!("the random source failed: {e}"))?;
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        self.live.insert(
            id.clone(),
            Session {
                user,
                last_used: now,
            },
        );
        Ok(id)
    }

    /// The user of session `id`, which is then used at `now`.
    pub fn touch(&mut self, id: &str, now: Instant) -> Result<XmlrpcUser, Refused> {
        if id.len() != 2 * ID_BYTES || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(Refused::Malformed);
        }
        self.expire(now);
        let s = self.live.get_mut(id).ok_or(Refused::Unknown)?;
        s.last_used = now;
        Ok(s.user.clone())
    }

    /// Drops the sessions idle for the idle time.
    pub fn expire(&mut self, now: Instant) {
        let idle = self.idle;
        self.live
            .retain(|_, s| now.saturating_duration_since(s.last_used) < idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: &str) -> XmlrpcUser {
        XmlrpcUser::try_from(n.to_owned()).unwrap()
    }

    #[test]
    fn ids_are_random_hex_and_expire_when_idle() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(10));
        let a = s.open(user("alice"), t0).unwrap();
        let b = s.open(user("bob"), t0).unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert_eq!(s.touch(&a, t0 + Duration::from_secs(9)), Ok(user("alice")));
        // Used at 9 s: alive until 19 s. b was not: gone at 10 s.
        assert_eq!(
            s.touch(&b, t0 + Duration::from_secs(10)),
            Err(Refused::Unknown)
        );
        assert!(s.touch(&a, t0 + Duration::from_secs(18)).is_ok());
        assert_eq!(
            s.touch(&a, t0 + Duration::from_secs(29)),
            Err(Refused::Unknown)
        );
        for forged in ["", "zz", &"0".repeat(32), &"A".repeat(32), &"0".repeat(33)] {
            assert!(s.touch(forged, t0).is_err(), "{forged}");
        }
        assert_eq!(s.touch("nope", t0), Err(Refused::Malformed));
    }

    #[test]
    fn the_number_is_capped_by_evicting_the_longest_idle() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(100));
        let first = s.open(user("u"), t0).unwrap();
        let mut last = String::new();
        for i in 1..MAX_SESSIONS as u64 {
            last = s.open(user("u"), t0 + Duration::from_millis(i)).unwrap();
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        // Using the first makes the second the longest idle.
        s.touch(&first, t0 + Duration::from_secs(1)).unwrap();
        s.open(user("u"), t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.touch(&first, t0 + Duration::from_secs(2)).is_ok());
        assert!(s.touch(&last, t0 + Duration::from_secs(2)).is_ok());
    }
}
