//! Helpers shared by the nanny.conf tests (conf.rs, sentry_conf.rs): parse a text that must
//! load, or one that must fail with its diagnostics as golden strings.

use policy::conf::{parse_conf, NannyConf};

/// The three directives every nanny.conf needs.
pub const BASE: &str = "rulefile r\nactionfile a\nlisten 80\n";

/// `text` as nanny.conf; panics with every diagnostic if it does not load.
pub fn ok(text: &str) -> NannyConf {
    let p = parse_conf("nanny.conf", text);
    let msgs: Vec<String> = p.diagnostics.iter().map(|d| d.to_string()).collect();
    match p.value {
        Some(v) => v,
        None => panic!("expected {text:?} to load, got {msgs:#?}"),
    }
}

/// The diagnostics of a nanny.conf `text` that must not load.
pub fn errors(text: &str) -> Vec<String> {
    let p = parse_conf("nanny.conf", text);
    assert!(p.value.is_none(), "expected {text:?} to fail");
    p.diagnostics.iter().map(|d| d.to_string()).collect()
}
