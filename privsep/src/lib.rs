//! portnanny's process split: the message contract between roles ([`proto`]), framing
//! ([`wire`]), channels, re-exec of worker roles and the privilege-drop checklist.
//!
//! No policy logic lives here.

pub mod proto;
