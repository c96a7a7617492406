//! Fuzz target: frames from the classifier, as the parent decodes them.
//!
//! Runs only under libFuzzer (and as a plain function over a corpus); the bytes stand in for a
//! compromised classifier, the least trusted peer the root parent decodes. Properties, beyond
//! "no panic":
//! - the input read as one frame BODY (what `wire::decode` sees after the header check) either
//!   gives a `Violation` or a message that re-encodes into a frame decoding to the same value,
//!   whose encoding is stable (no second normalisation);
//! - the input read as a byte STREAM of frames (headers included, as the parent's channel reads
//!   it) gives the same guarantees for every frame up to the first violation, and an oversize
//!   or zero length is refused from the header alone.
//!
//! Both come from `privsep::wire::check_frames`, which the privsep unit tests also run over
//! seeded mutations on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;
use privsep::proto::ClassifierToParent;
use privsep::wire::{check_frames, MAX_FRAME};

/// The property, as a plain function so it can be replayed over a corpus.
pub fn check(data: &[u8]) {
    if let Err(e) = check_frames::<ClassifierToParent>(data) {
        panic!("as a stream: {e}");
    }
    if data.is_empty() || data.len() > MAX_FRAME {
        return;
    }
    let Ok(len) = u32::try_from(data.len()) else {
        return;
    };
    let mut framed = Vec::with_capacity(4 + data.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(data);
    if let Err(e) = check_frames::<ClassifierToParent>(&framed) {
        panic!("as one body: {e}");
    }
}

fuzz_target!(|data: &[u8]| check(data));
