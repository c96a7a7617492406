//! The uid-to-name map for `conntrackuidmask` (pyctd's --uid-mask shows a username).
//!
//! Runs in the netfilter worker, once, right after exec and BEFORE the privilege drop chroots
//! it (the passwd database, /etc/passwd or NSS, is out of reach afterwards), so a name is as of
//! the worker's start; restarting the worker (or the daemon) picks up new users. Resolving here
//! keeps the parent out of it and lets both `nannyctl` and XML-RPC clients see the same names.

use std::collections::HashMap;
use std::ffi::CStr;

/// Most users kept (a huge directory is cut, not allowed to grow the worker without bound).
pub const MAX_USERS: usize = 200_000;
/// Longest name kept.
const MAX_NAME: usize = 256;

/// Every user the passwd database lists (the first name for a uid wins, as getpwuid does).
pub fn load() -> HashMap<u32, String> {
    let mut map = HashMap::new();
    // SAFETY: getpwent/setpwent/endpwent use static state; this runs in a freshly exec'd,
    // single-threaded worker before anything else could call them. Each returned pointer is
    // read (and its name copied) before the next call, which may overwrite it.
    unsafe {
        libc::setpwent();
        while map.len() < MAX_USERS {
            let pw = libc::getpwent();
            if pw.is_null() {
                break;
            }
            let name_ptr = (*pw).pw_name;
            if name_ptr.is_null() {
                continue;
            }
            let name = CStr::from_ptr(name_ptr).to_string_lossy();
            if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
                continue;
            }
            map.entry((*pw).pw_uid).or_insert_with(|| name.into_owned());
        }
        libc::endpwent();
    }
    map
}
