//! Fuzz target: XML-RPC `methodCall` bodies, as the control worker decodes them.
//!
//! Runs only under libFuzzer (and as a plain function over a corpus); the bytes stand in for a
//! remote frontend's POST body, already capped by the HTTP layer. Properties, beyond "no
//! panic": a body is refused, or it decodes to a call that encodes to a body decoding to the
//! same call, whose encoding is stable (`codec::check_call`, which the unit tests also run over
//! seeded mutations on stable).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portnanny::control::xmlrpc::codec::check_call;

/// The property, as a plain function so it can be replayed over a corpus.
pub fn check(data: &[u8]) {
    if let Err(e) = check_call(data) {
        panic!("{e}");
    }
}

fuzz_target!(|data: &[u8]| check(data));
