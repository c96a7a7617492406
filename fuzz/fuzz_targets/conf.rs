//! Fuzz target: the nanny.conf parser.
//!
//! Runs only under libFuzzer, on arbitrary bytes standing in for an administrator's file.
//! Properties checked, beyond "no panic":
//! - `parse_conf` returns a value exactly when it reports no error, and only errors (nanny.conf
//!   has no warnings);
//! - every diagnostic points inside the file (line 1..=lines, column >= 1) and they come in
//!   position order;
//! - a loaded configuration has at least one listen, no port 0, no port listened on both for all
//!   addresses and for one address;
//! - printing a loaded configuration and parsing the result gives the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::Severity;

/// The properties, as a plain function so they can be replayed over a corpus.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = policy::conf::parse_conf("fuzz", text);
    assert_eq!(parsed.value.is_some(), !parsed.has_errors());
    let lines = text.lines().count().max(1) as u32;
    for d in &parsed.diagnostics {
        assert_eq!(d.severity, Severity::Error);
        assert!(d.line >= 1 && d.line <= lines && d.col >= 1, "{d}");
    }
    assert!(parsed
        .diagnostics
        .windows(2)
        .all(|w| (w[0].line, w[0].col) <= (w[1].line, w[1].col)));
    let Some(conf) = parsed.value else {
        return;
    };
    assert!(!conf.listens.is_empty());
    for l in &conf.listens {
        assert_ne!(l.port, 0);
        let same_port = conf.listens.iter().filter(|m| m.port == l.port);
        if l.addr.is_none() {
            assert_eq!(same_port.count(), 1, "{l} with another listen on that port");
        }
    }
    let printed = conf.to_string();
    let again = policy::conf::parse_conf("fuzz", &printed);
    assert_eq!(again.value.as_ref(), Some(&conf), "{printed}");
}

fuzz_target!(|data: &[u8]| check(data));
