//! Framing: a 4-byte big-endian length, then a bincode body. The ONLY file that calls bincode,
//! so the codec can be swapped without touching anything else.
//!
//! Runs in every role, on bytes that come from another process (a less privileged one when the
//! parent decodes). Invariants:
//! - a declared length of 0 or more than the receiver's cap is refused before anything is
//!   allocated ([`frame_len`]). The cap is per direction: [`MAX_FRAME`] for every frame from a
//!   less trusted peer (classifier or resolver to the parent, resolver to the classifier, and
//!   by default everywhere); [`MAX_TRUSTED_FRAME`] only where the receiver trusts the sender
//!   (the classifier reading the parent, whose `Policy` carries the whole rules and actions
//!   text). Senders may encode up to [`MAX_TRUSTED_FRAME`]: the cap protects the receiver,
//!   which checks it whatever the sender did;
//! - a body is decoded with a byte limit equal to its own length, so no length field inside it
//!   can make the decoder allocate more than the frame already holds;
//! - every byte of the body must be consumed ([`Violation::Trailing`]).
//!
//! Codec choice: bincode 1.3.3 (`=1.3.3`, complete and in maintenance; RUSTSEC-2025-0141 marks
//! it unmaintained, acknowledged because it is pinned and confined to this file) with
//! `DefaultOptions` switched to FIXINT encoding, little-endian bodies. Fixint over varint
//! because every value then has exactly one encoding (no over-long varints), which makes
//! `encode(decode(x)) == x` hold byte for byte — a property the frame fuzz targets assert — and
//! the size of fixed-shape messages is predictable. Our messages are small, so the bytes varint
//! would save do not matter.
//!
//! Trailing bytes: bincode's `reject_trailing_bytes()` only reports a leftover as an opaque
//! string error and only on the slice reader, whose byte limit bincode 1.3.3 silently replaces
//! with "infinite". We therefore decode through a reader that honours the limit and check the
//! remaining length ourselves, which gives the same guarantee and the exact count.

use std::io;

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::error::Violation;

/// Largest frame body in bytes from a less trusted peer (the default cap of every receiver).
/// Every message but the parent's `Policy` is far smaller. Such a peer can make a receiver
/// buffer at most this much (plus one read chunk) per channel.
pub const MAX_FRAME: usize = 1 << 20;

/// Largest rules file, and largest actions file, that the configuration accepts: the binary's
/// per-file cap (`MAX_CONFIG_BYTES`, 16 MiB, which `-C` and reloads apply), repeated here
/// because privsep depends on neither: keep the two equal.
pub const MAX_POLICY_FILE: usize = 16 << 20;

/// Largest frame body a receiver accepts from a peer it trusts: the parent's `Policy` to the
/// classifier carries the rules and the actions text whole, each up to [`MAX_POLICY_FILE`], so
/// any policy `-C` accepts must fit; 1 MiB of margin covers the rest of the message (length
/// fields, settings). Fits a u32 header.
pub const MAX_TRUSTED_FRAME: usize = 2 * MAX_POLICY_FILE + (1 << 20);

/// Length of the frame header (a big-endian u32 body length).
pub const HEADER: usize = 4;

fn options(limit: u64) -> impl Options + Copy {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(limit)
        .allow_trailing_bytes()
}

/// Check a frame header and return the body length it declares. Refuses 0 and anything over
/// [`MAX_FRAME`] before the caller allocates a byte for the body.
pub fn frame_len(header: [u8; HEADER]) -> Result<usize, Violation> {
    frame_len_within(header, MAX_FRAME)
}

/// [`frame_len`] with the receiver's own cap (`max`, at most [`MAX_TRUSTED_FRAME`]).
pub fn frame_len_within(header: [u8; HEADER], max: usize) -> Result<usize, Violation> {
    let max = max.min(MAX_TRUSTED_FRAME);
    let len = u32::from_be_bytes(header);
    match usize::try_from(len) {
        Ok(n) if n > 0 && n <= max => Ok(n),
        // A u32 that does not fit a usize is certainly over the cap.
        Ok(n) => Err(Violation::FrameSize(n)),
        Err(_) => Err(Violation::FrameSize(usize::MAX)),
    }
}

/// A frame body and the bytes after its frame.
pub type Split<'a> = (&'a [u8], &'a [u8]);

/// The first complete frame at the start of `buf`: `Ok(Some((body, rest)))`, or `Ok(None)` if
/// `buf` holds only part of one. The header is checked as soon as its four bytes are there,
/// before the caller waits for (or buffers) any of the body.
pub fn split_frame(buf: &[u8]) -> Result<Option<Split<'_>>, Violation> {
    split_frame_within(buf, MAX_FRAME)
}

/// [`split_frame`] with the receiver's own cap (see [`frame_len_within`]).
pub fn split_frame_within(buf: &[u8], max: usize) -> Result<Option<Split<'_>>, Violation> {
    let Some((header, after)) = buf.split_first_chunk::<HEADER>() else {
        return Ok(None);
    };
    let len = frame_len_within(*header, max)?;
    Ok(after.split_at_checked(len))
}

/// Encode `msg` as one complete frame: header plus body, at most [`MAX_TRUSTED_FRAME`] (the
/// receiver applies its own cap, smaller unless it trusts us).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, Violation> {
    // Counting first avoids building an oversize body only to throw it away.
    let size = options(u64::MAX)
        .serialized_size(msg)
        .map_err(|e| Violation::Encode(e.to_string()))?;
    let body_len = usize::try_from(size).map_err(|_| Violation::FrameSize(usize::MAX))?;
    if body_len == 0 || body_len > MAX_TRUSTED_FRAME {
        return Err(Violation::FrameSize(body_len));
    }
    let header = u32::try_from(body_len).map_err(|_| Violation::FrameSize(body_len))?;
    let mut frame = Vec::with_capacity(HEADER + body_len);
    frame.extend_from_slice(&header.to_be_bytes());
    options(size)
        .serialize_into(&mut frame, msg)
        .map_err(|e| Violation::Encode(e.to_string()))?;
    if frame.len() != HEADER + body_len {
        // serialized_size and serialize disagree: a bug in a Serialize impl, not the peer.
        return Err(Violation::Encode(format!(
            "encoded {} bytes, expected {body_len}",
            frame.len().saturating_sub(HEADER)
        )));
    }
    Ok(frame)
}

/// Decode one frame body (without its header) as a `T`. The body must be 1..=MAX_FRAME bytes
/// and must be consumed exactly.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Violation> {
    decode_within(body, MAX_FRAME)
}

/// [`decode`] with the receiver's own cap (see [`frame_len_within`]).
pub fn decode_within<T: DeserializeOwned>(body: &[u8], max: usize) -> Result<T, Violation> {
    if body.is_empty() || body.len() > max.min(MAX_TRUSTED_FRAME) {
        return Err(Violation::FrameSize(body.len()));
    }
    let mut rest = body;
    // The limit equals the body length: a length field claiming more than the frame holds
    // fails before the reader sizes a buffer for it.
    let msg = options(body.len() as u64)
        .deserialize_from(&mut rest)
        .map_err(classify)?;
    if !rest.is_empty() {
        return Err(Violation::Trailing(rest.len()));
    }
    Ok(msg)
}

/// The frame fuzz property, shared by `fuzz/fuzz_targets/frame_*.rs` and the unit tests (so
/// `cargo test` exercises it on stable): walk `data` as a stream of frames as a receiver would;
/// decoding never panics; every message that decodes re-encodes into a frame that decodes to
/// the same value (the first violation or an incomplete frame ends the stream, as it ends a
/// channel). Returns how many messages decoded, or what broke the property.
#[doc(hidden)]
pub fn check_frames<T>(data: &[u8]) -> Result<usize, String>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut rest = data;
    let mut decoded = 0;
    while let Ok(Some((body, after))) = split_frame(rest) {
        rest = after;
        let Ok(msg) = decode::<T>(body) else {
            break;
        };
        decoded += 1;
        let frame = encode(&msg).map_err(|e| format!("re-encoding {msg:?}: {e}"))?;
        let again = match split_frame(&frame) {
            Ok(Some((b, []))) => b,
            other => return Err(format!("re-encoded frame does not split: {other:?}")),
        };
        let back: T = decode(again).map_err(|e| format!("re-decoding {msg:?}: {e}"))?;
        if back != msg {
            return Err(format!("round trip changed {msg:?} into {back:?}"));
        }
        // Shape-normalising newtypes (HostName lower-cases) may change bytes once, never twice.
        if encode(&back).as_deref() != Ok(frame.as_slice()) {
            return Err(format!("encoding of {msg:?} is not stable"));
        }
    }
    Ok(decoded)
}

fn classify(e: bincode::Error) -> Violation {
    match e.as_ref() {
        bincode::ErrorKind::SizeLimit => Violation::Truncated,
        bincode::ErrorKind::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            Violation::Truncated
        }
        other => Violation::Decode(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use super::*;
    use crate::proto::*;

    fn body(frame: &[u8]) -> &[u8] {
        &frame[HEADER..]
    }

    /// encode → check header → decode gives the same value, and re-encoding is byte-identical.
    fn round_trip<T>(label: &str, msg: T)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let frame = encode(&msg).unwrap_or_else(|e| panic!("{label}: encode: {e}"));
        let len = frame_len(frame[..HEADER].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - HEADER, "{label}: header");
        let back: T = decode(body(&frame)).unwrap_or_else(|e| panic!("{label}: decode: {e}"));
        assert_eq!(back, msg, "{label}");
        assert_eq!(encode(&back).unwrap(), frame, "{label}: canonical");
    }

    fn name(s: &str) -> ClassName {
        ClassName::try_from(s.to_owned()).unwrap()
    }

    fn host(s: &str) -> HostName {
        HostName::try_from(s.to_owned()).unwrap()
    }

    fn v4(a: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, a)), port)
    }

    fn v6(port: u16) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
            port,
        )
    }

    fn build() -> BuildId {
        BuildId("0.1.0-1:2-3-4.5".to_owned())
    }

    fn log() -> LogRecord {
        LogRecord {
            level: LogLevel::Warning,
            verbosity: 2,
            text: "dnsbl timeout".to_owned(),
        }
    }

    fn facts() -> VerdictFacts {
        VerdictFacts {
            classes: vec![
                MatchedClassFact {
                    name: name("remote"),
                    lineno: 3,
                    label: None,
                },
                MatchedClassFact {
                    name: name("bl"),
                    lineno: 9,
                    label: Some(Label::try_from("dip DE".to_owned()).unwrap()),
                },
            ],
            host: Some(HostFacts {
                status: HnStatus::Good,
                claimed: Some(host("mail.example.org")),
            }),
            identd: Some(IdentUser::try_from("cks".to_owned()).unwrap()),
            seen: Some(SeenTimes {
                first_secs_ago: 100,
                last_secs_ago: Some(5),
            }),
        }
    }

    fn c2p_messages() -> Vec<ClassifierToParent> {
        let decision = Decision {
            action_class: Some(3),
            disposition: Disposition::FailMsg,
            refusal: Some(Refusal::IpMax),
            counted: false,
            log: true,
            records: vec![1, 4],
        };
        vec![
            ClassifierToParent::Hello { build: build() },
            ClassifierToParent::PolicyLoaded { gen: Gen(7) },
            ClassifierToParent::Verdict {
                conn: ConnId(2),
                gen: Gen(7),
                decision,
                facts: facts(),
            },
            ClassifierToParent::Log(log()),
            ClassifierToParent::Status {
                evaluations: 10,
                eval_micros_total: 1234,
                class_counts: vec![(name("remote"), 3)],
                history_entries: 2,
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        let settings = ClassifierSettings {
            maxthreads: 4,
            aftermaxthreads: Some(name("busy")),
            dropipafter_secs: Some(3600),
            expireevery_secs: 60,
            dns_timeout_ms: 5000,
            identd_timeout_ms: 10000,
            answerson_timeout_ms: 5000,
            grouping: policy::grouping::Grouping::new(24, 64).unwrap(),
        };
        let p2c = [
            ParentToClassifier::Hello { build: build() },
            ParentToClassifier::Policy {
                gen: Gen(7),
                rules: Some("remote: ALL\n".to_owned()),
                actions: None,
                settings,
                ipfiles: Vec::new(),
            },
            ParentToClassifier::Seed {
                live: vec![LiveConn {
                    conn: ConnId(1),
                    remote: v6(25),
                    classes: vec![name("a")],
                }],
            },
            ParentToClassifier::ConnAccepted {
                conn: ConnId(2),
                remote: v4(7, 4711),
                local: v6(25),
                trap: Some(SentryMode::Stcp),
            },
            ParentToClassifier::Probe {
                conn: ConnId(3),
                remote: v4(7, 4711),
                local: v6(25),
                mode: SentryMode::Audp,
            },
            ParentToClassifier::Blocked {
                addrs: vec![v4(7, 1).ip()],
                on: true,
            },
            ParentToClassifier::ConnClosed { conn: ConnId(2) },
            ParentToClassifier::Flush,
            ParentToClassifier::StatusRequest,
        ];
        for (i, m) in p2c.into_iter().enumerate() {
            round_trip(&format!("ParentToClassifier #{i}"), m);
        }
        let c2p = c2p_messages();
        for (i, m) in c2p.into_iter().enumerate() {
            round_trip(&format!("ClassifierToParent #{i}"), m);
        }
        let queries = [
            Query::Host { ip: v4(1, 0).ip() },
            Query::Forward {
                name: host("example.org"),
            },
            Query::Dnsbl {
                ip: v6(0).ip(),
                zone: host("zen.example.net"),
            },
            Query::Identd {
                remote: v4(7, 4711),
                local: v4(1, 25),
            },
            Query::AnswersOn {
                ip: v4(7, 0).ip(),
                port: 113,
                local_ip: v4(1, 0).ip(),
            },
        ];
        let answers = [
            Answer::Host(HostFacts {
                status: HnStatus::Unknown,
                claimed: None,
            }),
            Answer::Addrs(vec![v4(2, 0).ip(), v6(0).ip()]),
            Answer::Identd(None),
            Answer::AnswersOn(true),
        ];
        round_trip(
            "ClassifierToResolver::Hello",
            ClassifierToResolver::Hello { build: build() },
        );
        round_trip(
            "ResolverToClassifier::Hello",
            ResolverToClassifier::Hello { build: build() },
        );
        for (i, q) in queries.iter().enumerate() {
            round_trip(
                &format!("Lookup #{i}"),
                ClassifierToResolver::Lookup {
                    req: ReqId(i as u64),
                    query: q.clone(),
                },
            );
            for (j, a) in answers.iter().enumerate() {
                round_trip(
                    &format!("LookupResult #{i}/{j}"),
                    ResolverToClassifier::LookupResult {
                        req: ReqId(9),
                        query: q.clone(),
                        answer: a.clone(),
                    },
                );
            }
        }
        let rs = ResolverSettings {
            threads: 8,
            dns_timeout_ms: 5000,
            identd_timeout_ms: 10000,
            answerson_timeout_ms: 5000,
            cache_ttl_secs: 300,
            cache_entries: 10000,
        };
        round_trip(
            "ParentToResolver::Hello",
            ParentToResolver::Hello {
                build: build(),
                settings: rs,
            },
        );
        round_trip("ParentToResolver::Flush", ParentToResolver::Flush);
        round_trip(
            "ResolverToParent::Hello",
            ResolverToParent::Hello { build: build() },
        );
        round_trip("ResolverToParent::Log", ResolverToParent::Log(log()));
    }

    /// Table of malformed frames, each with the violation it must produce.
    #[test]
    fn violations() {
        let hello = encode(&ClassifierToParent::Hello { build: build() }).unwrap();
        let verdict = encode(&ClassifierToParent::PolicyLoaded { gen: Gen(1) }).unwrap();
        let mut trailing = body(&verdict).to_vec();
        trailing.extend_from_slice(&[0, 0]);
        // Variant index 7 is one past the last ClassifierToParent variant.
        let unknown_variant = 7u32.to_le_bytes().to_vec();
        // Hello whose BuildId string claims 1000 bytes but the frame holds 3.
        let mut lying_len = 0u32.to_le_bytes().to_vec();
        lying_len.extend_from_slice(&1000u64.to_le_bytes());
        lying_len.extend_from_slice(b"abc");
        // A Hello whose BuildId is not UTF-8.
        let bad_utf8 = {
            let mut b = 0u32.to_le_bytes().to_vec();
            b.extend_from_slice(&2u64.to_le_bytes());
            b.extend_from_slice(&[0xff, 0xfe]);
            b
        };
        // A Log record whose Warning level index is out of range.
        let bad_level = {
            let mut b = 3u32.to_le_bytes().to_vec();
            b.extend_from_slice(&99u32.to_le_bytes());
            b
        };
        let bad_host = encode(&ResolverToClassifier::LookupResult {
            req: ReqId(1),
            query: Query::Forward {
                name: host("example.org"),
            },
            answer: Answer::AnswersOn(false),
        })
        .unwrap();
        // Replace "example.org" by "example\norg" inside the encoded body: the HostName shape
        // check must refuse it while decoding.
        let mut bad_host = body(&bad_host).to_vec();
        let at = bad_host
            .windows(11)
            .position(|w| w == b"example.org")
            .unwrap();
        bad_host[at + 7] = b'\n';

        // A Hello whose BuildId carries an escape sequence.
        let bad_build = {
            let mut b = 0u32.to_le_bytes().to_vec();
            b.extend_from_slice(&4u64.to_le_bytes());
            b.extend_from_slice(b"a\x1b[J");
            b
        };

        let oversize = vec![0u8; MAX_FRAME + 1];
        type Row<'a> = (&'a str, &'a [u8], fn(&Violation) -> bool);
        let rows: Vec<Row> = vec![
            ("empty frame", &[], |v| *v == Violation::FrameSize(0)),
            ("oversize frame", &oversize, |v| {
                *v == Violation::FrameSize(MAX_FRAME + 1)
            }),
            (
                "truncated frame",
                &body(&hello)[..body(&hello).len() - 1],
                |v| *v == Violation::Truncated,
            ),
            ("length field past the end", &lying_len, |v| {
                *v == Violation::Truncated
            }),
            ("trailing bytes", &trailing, |v| {
                *v == Violation::Trailing(2)
            }),
            ("unknown variant", &unknown_variant, |v| {
                matches!(v, Violation::Decode(_))
            }),
            ("invalid utf-8", &bad_utf8, |v| {
                matches!(v, Violation::Decode(_))
            }),
            ("nested unknown variant", &bad_level, |v| {
                matches!(v, Violation::Decode(_))
            }),
            (
                "build id shape",
                &bad_build,
                |v| matches!(v, Violation::Decode(s) if s.contains("build id")),
            ),
            (
                "hostname shape",
                &bad_host,
                |v| matches!(v, Violation::Decode(s) if s.contains("hostname")),
            ),
        ];
        for (label, input, want) in rows {
            let got = if label == "hostname shape" {
                decode::<ResolverToClassifier>(input).map(|_| ())
            } else {
                decode::<ClassifierToParent>(input).map(|_| ())
            };
            match got {
                Err(v) => assert!(want(&v), "{label}: wrong violation {v:?}"),
                Ok(()) => panic!("{label}: decoded"),
            }
        }
    }

    /// Issue 13: prefix lengths are checked again when they reach the classifier.
    #[test]
    fn grouping_out_of_range_is_refused() {
        use policy::grouping::Grouping;
        for (v4, v6, ok) in [
            (24u8, 64u8, true),
            (0, 64, false),
            (33, 64, false),
            (24, 129, false),
        ] {
            let frame = encode(&(v4, v6)).unwrap();
            let got = decode::<Grouping>(body(&frame));
            assert_eq!(got.is_ok(), ok, "/{v4} /{v6}: {got:?}");
        }
    }

    #[test]
    fn header_limits() {
        assert_eq!(frame_len(0u32.to_be_bytes()), Err(Violation::FrameSize(0)));
        assert_eq!(frame_len(1u32.to_be_bytes()), Ok(1));
        assert_eq!(frame_len((MAX_FRAME as u32).to_be_bytes()), Ok(MAX_FRAME));
        assert_eq!(
            frame_len((MAX_FRAME as u32 + 1).to_be_bytes()),
            Err(Violation::FrameSize(MAX_FRAME + 1))
        );
        assert!(frame_len(u32::MAX.to_be_bytes()).is_err());
        // The trusted cap, and no cap above it whatever a receiver asks for.
        let t = MAX_TRUSTED_FRAME as u32;
        assert_eq!(
            frame_len_within(t.to_be_bytes(), MAX_TRUSTED_FRAME),
            Ok(MAX_TRUSTED_FRAME)
        );
        assert_eq!(
            frame_len_within((t + 1).to_be_bytes(), usize::MAX),
            Err(Violation::FrameSize(MAX_TRUSTED_FRAME + 1))
        );
        assert_eq!(
            split_frame(&t.to_be_bytes()),
            Err(Violation::FrameSize(MAX_TRUSTED_FRAME)),
            "the default (untrusted) cap"
        );
        const { assert!(MAX_TRUSTED_FRAME >= 2 * MAX_POLICY_FILE) };
        const { assert!(MAX_TRUSTED_FRAME <= u32::MAX as usize) };
    }

    #[test]
    fn encode_refuses_oversize_and_empty() {
        // A Policy whose text alone exceeds the largest frame: refused, not truncated.
        let big = ParentToClassifier::Policy {
            gen: Gen(1),
            rules: Some("x".repeat(MAX_TRUSTED_FRAME)),
            actions: None,
            settings: ClassifierSettings {
                maxthreads: 1,
                aftermaxthreads: None,
                dropipafter_secs: None,
                expireevery_secs: 60,
                dns_timeout_ms: 5000,
                identd_timeout_ms: 10000,
                answerson_timeout_ms: 5000,
                grouping: Default::default(),
            },
            ipfiles: Vec::new(),
        };
        assert!(matches!(encode(&big), Err(Violation::FrameSize(n)) if n > MAX_TRUSTED_FRAME));
        // The largest body that fits is accepted (limit, then limit + 1 above).
        let fits = LogRecord {
            level: LogLevel::Info,
            verbosity: 0,
            text: String::new(),
        };
        let overhead = encode(&fits).unwrap().len() - HEADER;
        let fits = LogRecord {
            text: "y".repeat(MAX_TRUSTED_FRAME - overhead),
            ..fits
        };
        let frame = encode(&fits).unwrap();
        assert_eq!(frame.len(), HEADER + MAX_TRUSTED_FRAME);
        assert_eq!(
            decode_within::<LogRecord>(body(&frame), MAX_TRUSTED_FRAME).unwrap(),
            fits
        );
        // ... but only for a receiver that raised its cap.
        assert_eq!(
            decode::<LogRecord>(body(&frame)),
            Err(Violation::FrameSize(MAX_TRUSTED_FRAME))
        );
        let over = LogRecord {
            text: "y".repeat(MAX_TRUSTED_FRAME - overhead + 1),
            ..fits
        };
        assert_eq!(
            encode(&over),
            Err(Violation::FrameSize(MAX_TRUSTED_FRAME + 1))
        );
        // A zero-sized message cannot be framed (a length of 0 is refused on receipt).
        assert_eq!(encode(&()), Err(Violation::FrameSize(0)));
    }

    /// The fuzz property on a seed stream (every ClassifierToParent variant) and on 20000
    /// deterministic mutations of it: byte flips, truncations, insertions, length rewrites.
    #[test]
    fn frame_property_on_seeds_and_mutations() {
        let msgs = c2p_messages();
        let mut seed = Vec::new();
        for m in &msgs {
            seed.extend_from_slice(&encode(m).unwrap());
        }
        assert_eq!(check_frames::<ClassifierToParent>(&seed), Ok(msgs.len()));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut decoded_some = 0;
        for case in 0..20_000 {
            let mut data = seed.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % data.len() as u64) as usize;
                match next() % 4 {
                    0 => data[at] ^= 1 << (next() % 8),
                    1 => data.truncate(at.max(1)),
                    2 => data.insert(at, next() as u8),
                    _ => data[at] = next() as u8,
                }
            }
            match check_frames::<ClassifierToParent>(&data) {
                Ok(n) => decoded_some += usize::from(n > 0),
                Err(e) => panic!("case {case}: {e}"),
            }
        }
        // The mutations must not all be rejected at the first frame, or the test proves little.
        assert!(decoded_some > 1000, "{decoded_some}");
    }

    #[test]
    fn split_frame_rows() {
        let f = encode(&ClassifierToParent::PolicyLoaded { gen: Gen(2) }).unwrap();
        assert_eq!(split_frame(&f[..3]), Ok(None));
        assert_eq!(split_frame(&f[..f.len() - 1]), Ok(None));
        assert_eq!(split_frame(&f), Ok(Some((&f[HEADER..], &[][..]))));
        let mut two = f.clone();
        two.push(7);
        assert_eq!(split_frame(&two), Ok(Some((&f[HEADER..], &[7u8][..]))));
        assert_eq!(split_frame(&[0, 0, 0, 0, 1]), Err(Violation::FrameSize(0)));
        assert_eq!(
            split_frame(&[0, 0x10, 0, 1]),
            Err(Violation::FrameSize(MAX_FRAME + 1))
        );
    }
}
