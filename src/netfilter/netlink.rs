//! The netfilter worker's conversation with the kernel: ctnetlink over NETLINK_NETFILTER.
//!
//! Runs in the netfilter worker (non-root, CAP_NET_ADMIN only, chrooted). Every byte read here
//! comes from the kernel, but is still decoded without a panic path: the rust-netlink crates
//! (netlink-packet-core, netlink-packet-netfilter) parse the messages. A dump's entries (100,000
//! and more) are the one hot path: each is framed by netlink-packet-core's `NetlinkBuffer` and
//! its attributes walked with the same crate's `NlasIterator`, the ones a row shows decoded one
//! by one with netlink-packet-netfilter's own attribute parsers (`IPTuple`, `ProtoTuple`,
//! `ProtoInfoTCP`, `ConntrackAttribute` for status, timeout and mark) straight into the row,
//! rather than building the crate's whole `Vec`-of-`Vec`s message first and converting it
//! (that tree and its frees were half of a refresh); attributes no row shows are not decoded.
//! The few attributes netlink-packet-netfilter 0.4 does not model (CTA_ID, CTA_ZONE,
//! CTA_COUNTERS_*, the ICMP tuple fields) are read with netlink-packet-core's integer parsers.
//! Every other message (the dump's end, acks, errors) goes through the crates' whole-message
//! decode. Nothing here is a hand-written codec.
//!
//! Deleting and changing go by the entry's original tuple plus its id (and zone): the kernel
//! looks the entry up by tuple, and a delete whose CTA_ID no longer matches fails with ENOENT,
//! so a recycled tuple is never hit. A delete without a tuple would flush the whole table,
//! which is why every message built here carries one.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{
    parse_u16_be, parse_u32_be, parse_u64_be, DecodeError, DefaultNla, NetlinkMessage,
    NetlinkPayload, NlaBuffer, NlasIterator, Parseable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfoTCP, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use privsep::conntrack::{CtCounters, CtField, CtRow, CtTuple, TcpState, L3};

use crate::nlsock::{self, undecodable};

// The message types of a conntrack entry: (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
// (what a dump sends) or IPCTNL_MSG_CT_GET (linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h).
const CT_NEW: u16 = 1 << 8;
const CT_GET: u16 = (1 << 8) | 1;
/// `struct nfgenmsg`, before a conntrack message's attributes (read by `NetfilterHeader::parse`).
const NFGENMSG_LEN: usize = 4;
// Attribute kinds netlink-packet-netfilter 0.4 models; the hot path picks them out by kind and
// hands each to that crate's parser.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
// Attributes netlink-packet-netfilter 0.4 leaves as DefaultNla (linux/netfilter/
// nfnetlink_conntrack.h).
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;

/// The kernel answers within milliseconds; a socket that stays silent this long is broken.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// Receive buffer per read. A dump comes in multi-message datagrams the kernel fills to at most
/// 32 KiB once a reader offers that much (netlink_dump; ~100 entries each), so a larger buffer
/// or SO_RCVBUF saves no reads.
const RECV_BUF: usize = 256 * 1024;
/// Most entries one snapshot keeps (memory bound: about 200 bytes each); the rest are counted.
pub const MAX_ENTRIES: usize = 2_000_000;

/// A ctnetlink socket.
pub struct Ctnetlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// What one dump found.
pub struct Dump {
    pub rows: Vec<CtRow>,
    /// Entries not kept (over [`MAX_ENTRIES`]) or not understood.
    pub skipped: u64,
}

impl Ctnetlink {
    /// Opens and connects the socket (needs CAP_NET_ADMIN to be of any use).
    pub fn open() -> io::Result<Ctnetlink> {
        let sock = nlsock::open(NETLINK_NETFILTER, RECV_TIMEOUT)?;
        // Best effort: a larger buffer only saves reads.
        let _ = sock.set_rx_buf_sz(1 << 20);
        Ok(Ctnetlink {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    fn send(
        &mut self,
        flags: u16,
        family: NetfilterProtoFamily,
        msg: ConntrackMessage,
    ) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        nlsock::send(
            &self.sock,
            flags,
            self.seq,
            NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), msg),
        )?;
        Ok(self.seq)
    }

    /// Reads datagrams until `Done` (dump) or the ack (`Error` with code 0 or an errno) of
    /// request `seq`, handing the attributes of every conntrack message to `each`.
    fn collect(
        &mut self,
        seq: u32,
        mut each: impl FnMut(&[u8]) -> Result<(), DecodeError>,
    ) -> io::Result<()> {
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            for frame in nlsock::messages(self.buf.get(..n).unwrap_or_default(), seq) {
                let frame = frame?;
                // A dump's entries: no message tree, the row is read from the attributes.
                if matches!(frame.message_type(), CT_NEW | CT_GET) {
                    let payload = frame.payload();
                    NetfilterHeader::parse(payload).map_err(undecodable)?;
                    each(payload.get(NFGENMSG_LEN..).unwrap_or(&[])).map_err(undecodable)?;
                    continue;
                }
                let msg = <NetlinkMessage<NetfilterMessage>>::deserialize(frame.into_inner())
                    .map_err(undecodable)?;
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(c) => Err(io::Error::from_raw_os_error(-c.get())),
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Dumps the whole table, IPv4 and IPv6. `expect` is how many entries there were last
    /// time: room for a few more is reserved at once, so the rows are not copied as they grow.
    pub fn dump(&mut self, expect: usize) -> io::Result<Dump> {
        let seq = self.send(
            NLM_F_REQUEST | NLM_F_DUMP,
            NetfilterProtoFamily::Unspec,
            ConntrackMessage::Get(vec![]),
        )?;
        let mut rows = Vec::with_capacity(expect.saturating_add(expect / 16).min(MAX_ENTRIES));
        let mut skipped = 0u64;
        self.collect(seq, |attrs| {
            if rows.len() >= MAX_ENTRIES {
                skipped += 1;
                return Ok(());
            }
            match row_of(attrs)? {
                Some(r) => rows.push(r),
                None => skipped += 1,
            }
            Ok(())
        })?;
        Ok(Dump { rows, skipped })
    }

    /// Deletes the entry `row` names (tuple, zone and id must all still match).
    pub fn delete(&mut self, row: &CtRow) -> io::Result<()> {
        let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(tuple_attrs(
            &row.orig,
            row.l4proto,
        ))];
        attrs.push(ConntrackAttribute::Other(DefaultNla::new(
            CTA_ID,
            row.id.to_be_bytes().to_vec(),
        )));
        if row.zone != 0 {
            attrs.push(zone_attr(row.zone));
        }
        let seq = self.send(
            NLM_F_REQUEST | NLM_F_ACK,
            family(&row.orig),
            ConntrackMessage::Delete(attrs),
        )?;
        self.collect(seq, |_| Ok(()))
    }

    /// Sets the mark or the timeout of the entry `row` names.
    pub fn change(&mut self, row: &CtRow, field: CtField, value: u32) -> io::Result<()> {
        let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(tuple_attrs(
            &row.orig,
            row.l4proto,
        ))];
        if row.zone != 0 {
            attrs.push(zone_attr(row.zone));
        }
        attrs.push(match field {
            CtField::Mark => ConntrackAttribute::CtaMark(value),
            CtField::Timeout => ConntrackAttribute::CtaTimeout(value),
        });
        // IPCTNL_MSG_CT_NEW without NLM_F_CREATE or NLM_F_EXCL: change an existing entry only.
        let seq = self.send(
            NLM_F_REQUEST | NLM_F_ACK,
            family(&row.orig),
            ConntrackMessage::New(attrs),
        )?;
        self.collect(seq, |_| Ok(()))
    }
}

fn family(t: &CtTuple) -> NetfilterProtoFamily {
    match t.src {
        IpAddr::V4(_) => NetfilterProtoFamily::IPv4,
        IpAddr::V6(_) => NetfilterProtoFamily::IPv6,
    }
}

fn zone_attr(zone: u16) -> ConntrackAttribute {
    ConntrackAttribute::Other(DefaultNla::new(CTA_ZONE, zone.to_be_bytes().to_vec()))
}

/// The nested CTA_TUPLE_* attributes of a tuple.
fn tuple_attrs(t: &CtTuple, l4proto: u8) -> Vec<Tuple> {
    let mut proto = vec![ProtoTuple::Protocol(Protocol::from(l4proto))];
    if let Some(p) = t.sport {
        proto.push(ProtoTuple::SourcePort(p));
    }
    if let Some(p) = t.dport {
        proto.push(ProtoTuple::DestinationPort(p));
    }
    let v6 = l4proto == 58;
    let (id_k, type_k, code_k) = if v6 {
        (
            CTA_PROTO_ICMPV6_ID,
            CTA_PROTO_ICMPV6_TYPE,
            CTA_PROTO_ICMPV6_CODE,
        )
    } else {
        (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
    };
    if let Some(id) = t.icmp_id {
        proto.push(ProtoTuple::Other(DefaultNla::new(
            id_k,
            id.to_be_bytes().to_vec(),
        )));
    }
    if let Some(ty) = t.icmp_type {
        proto.push(ProtoTuple::Other(DefaultNla::new(type_k, vec![ty])));
    }
    if let Some(c) = t.icmp_code {
        proto.push(ProtoTuple::Other(DefaultNla::new(code_k, vec![c])));
    }
    vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(t.src),
            IPTuple::DestinationAddress(t.dst),
        ]),
        Tuple::Proto(proto),
    ]
}

/// A nested counters attribute's value: (packets, bytes).
fn counters(v: &[u8]) -> Option<(u64, u64)> {
    let (mut packets, mut bytes) = (None, None);
    for a in NlasIterator::new(v) {
        let a: NlaBuffer<&[u8]> = a.ok()?;
        match a.kind() {
            CTA_COUNTERS_PACKETS => packets = parse_u64_be(a.value()).ok(),
            CTA_COUNTERS_BYTES => bytes = parse_u64_be(a.value()).ok(),
            _ => {}
        }
    }
    Some((packets?, bytes?))
}

/// A CTA_TUPLE_* value: the tuple and its protocol number; Ok(None) when an address is
/// missing. The address and the protocol fields go through netlink-packet-netfilter's own
/// parsers (an error there is the same error its whole-message decode would give).
fn tuple_of(v: &[u8]) -> Result<Option<(CtTuple, Option<u8>)>, DecodeError> {
    let (mut src, mut dst, mut proto) = (None, None, None);
    let mut t = CtTuple {
        src: IpAddr::from([0u8; 4]),
        dst: IpAddr::from([0u8; 4]),
        sport: None,
        dport: None,
        icmp_type: None,
        icmp_code: None,
        icmp_id: None,
    };
    for part in NlasIterator::new(v) {
        let part = part?;
        match part.kind() {
            CTA_TUPLE_IP => {
                for ip in NlasIterator::new(part.value()) {
                    let ip = ip?;
                    if !(CTA_IP_V4_SRC..=CTA_IP_V6_DST).contains(&ip.kind()) {
                        continue;
                    }
                    match IPTuple::parse(&ip)? {
                        IPTuple::SourceAddress(a) => src = Some(a),
                        IPTuple::DestinationAddress(a) => dst = Some(a),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for p in NlasIterator::new(part.value()) {
                    let p = p?;
                    let v = p.value();
                    match p.kind() {
                        CTA_PROTO_NUM..=CTA_PROTO_DST_PORT => match ProtoTuple::parse(&p)? {
                            ProtoTuple::Protocol(n) => proto = Some(u8::from(n)),
                            ProtoTuple::SourcePort(n) => t.sport = Some(n),
                            ProtoTuple::DestinationPort(n) => t.dport = Some(n),
                            _ => {}
                        },
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => t.icmp_id = parse_u16_be(v).ok(),
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            t.icmp_type = v.first().copied()
                        }
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                            t.icmp_code = v.first().copied()
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let (Some(src), Some(dst)) = (src, dst) else {
        return Ok(None);
    };
    t.src = src;
    t.dst = dst;
    Ok(Some((t, proto)))
}

/// The TCP state in a CTA_PROTOINFO value (None for other protocols).
fn tcp_state_of(v: &[u8]) -> Result<Option<TcpState>, DecodeError> {
    let mut state = None;
    for info in NlasIterator::new(v) {
        let info = info?;
        if info.kind() != CTA_PROTOINFO_TCP {
            continue;
        }
        for x in NlasIterator::new(info.value()) {
            let x = x?;
            if x.kind() != CTA_PROTOINFO_TCP_STATE {
                continue;
            }
            if let ProtoInfoTCP::State(s) = ProtoInfoTCP::parse(&x)? {
                state = TcpState::from_kernel(s);
            }
        }
    }
    Ok(state)
}

/// One dumped entry (the attributes after its nfgenmsg) as a row; Ok(None) when it lacks an id
/// or a tuple, an error when an attribute it shows is malformed. `uid`/`user` are filled in by
/// the table.
fn row_of(attrs: &[u8]) -> Result<Option<CtRow>, DecodeError> {
    let (mut id, mut orig, mut reply, mut l4) = (None, None, None, None);
    let (mut state, mut status, mut mark, mut timeout, mut zone) = (None, 0, 0, 0, 0);
    let (mut c_orig, mut c_reply) = (None, None);
    for a in NlasIterator::new(attrs) {
        let a = a?;
        let v = a.value();
        match a.kind() {
            CTA_TUPLE_ORIG => {
                let Some((t, p)) = tuple_of(v)? else {
                    return Ok(None);
                };
                l4 = p;
                orig = Some(t);
            }
            CTA_TUPLE_REPLY => {
                let Some((t, _)) = tuple_of(v)? else {
                    return Ok(None);
                };
                reply = Some(t);
            }
            CTA_PROTOINFO => state = tcp_state_of(v)?,
            CTA_STATUS | CTA_TIMEOUT | CTA_MARK => match ConntrackAttribute::parse(&a)? {
                ConntrackAttribute::CtaStatus(s) => status = s.bits(),
                ConntrackAttribute::CtaTimeout(t) => timeout = t,
                ConntrackAttribute::CtaMark(m) => mark = m,
                _ => {}
            },
            CTA_ID => id = parse_u32_be(v).ok(),
            CTA_ZONE => zone = parse_u16_be(v).unwrap_or(0),
            CTA_COUNTERS_ORIG => c_orig = counters(v),
            CTA_COUNTERS_REPLY => c_reply = counters(v),
            _ => {}
        }
    }
    let (Some(id), Some(orig), Some(reply), Some(l4proto)) = (id, orig, reply, l4) else {
        return Ok(None);
    };
    let counters = match (c_orig, c_reply) {
        (Some((op, ob)), Some((rp, rb))) => Some(CtCounters {
            orig_packets: op,
            orig_bytes: ob,
            reply_packets: rp,
            reply_bytes: rb,
        }),
        _ => None,
    };
    Ok(Some(CtRow {
        id,
        l3proto: if orig.src.is_ipv4() {
            L3::Ipv4
        } else {
            L3::Ipv6
        },
        l4proto,
        reply,
        orig,
        state,
        status,
        mark,
        timeout,
        zone,
        counters,
        uid: None,
        user: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Nla;
    use netlink_packet_core::{NetlinkBuffer, NetlinkHeader};
    use netlink_packet_netfilter::conntrack::ProtoInfo;

    /// An entry as the kernel would send it, through the crates' emit and parse.
    fn round_trip(attrs: Vec<ConntrackAttribute>) -> Option<CtRow> {
        let mut packet = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
                ConntrackMessage::New(attrs),
            )),
        );
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        // The crates' whole-message decode accepts it (what every other message goes through)…
        <NetlinkMessage<NetfilterMessage>>::deserialize(&buf).ok()?;
        // …and the dump's path reads it: framed, typed as an entry, attributes after nfgenmsg.
        let frame = NetlinkBuffer::new_checked(&buf[..]).ok()?;
        assert_eq!(frame.message_type(), CT_NEW);
        row_of(frame.payload().get(NFGENMSG_LEN..)?).ok()?
    }

    fn icmp_tuple(src: &str, dst: &str, ty: u8) -> CtTuple {
        CtTuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport: None,
            dport: None,
            icmp_type: Some(ty),
            icmp_code: Some(0),
            icmp_id: Some(77),
        }
    }

    #[test]
    fn entries_decode_with_the_fields_the_crate_leaves_raw() {
        let orig = icmp_tuple("10.0.0.1", "10.0.0.2", 8);
        let reply = icmp_tuple("10.0.0.2", "10.0.0.1", 0);
        let counters = |p: u64, b: u64| {
            let mut v = Vec::new();
            for (k, x) in [(CTA_COUNTERS_PACKETS, p), (CTA_COUNTERS_BYTES, b)] {
                v.extend_from_slice(&12u16.to_ne_bytes());
                v.extend_from_slice(&k.to_ne_bytes());
                v.extend_from_slice(&x.to_be_bytes());
            }
            v
        };
        let attrs = vec![
            ConntrackAttribute::CtaTupleOrig(tuple_attrs(&orig, 1)),
            ConntrackAttribute::CtaTupleReply(tuple_attrs(&reply, 1)),
            ConntrackAttribute::CtaMark(0x3e8),
            ConntrackAttribute::CtaTimeout(29),
            ConntrackAttribute::Other(DefaultNla::new(
                CTA_ID,
                0xdead_beef_u32.to_be_bytes().to_vec(),
            )),
            zone_attr(7),
            ConntrackAttribute::Other(DefaultNla::new(CTA_COUNTERS_ORIG, counters(3, 252))),
            ConntrackAttribute::Other(DefaultNla::new(CTA_COUNTERS_REPLY, counters(2, 168))),
        ];
        let r = round_trip(attrs.clone()).expect("decoded");
        assert_eq!(r.id, 0xdead_beef);
        assert_eq!(
            (r.l3proto, r.l4proto, r.mark, r.timeout, r.zone),
            (L3::Ipv4, 1, 0x3e8, 29, 7)
        );
        assert_eq!(r.orig, orig);
        assert_eq!(r.reply, reply);
        assert_eq!(
            r.counters,
            Some(CtCounters {
                orig_packets: 3,
                orig_bytes: 252,
                reply_packets: 2,
                reply_bytes: 168
            })
        );
        // Without an id, or with a truncated one, the entry is skipped, never guessed.
        let no_id: Vec<_> = attrs
            .iter()
            .filter(|a| !matches!(a, ConntrackAttribute::Other(n) if n.kind() == CTA_ID))
            .cloned()
            .collect();
        assert!(round_trip(no_id).is_none());
        let mut short = attrs.clone();
        short[4] = ConntrackAttribute::Other(DefaultNla::new(CTA_ID, vec![1, 2]));
        assert!(round_trip(short).is_none());
        // A bad counters attribute leaves counters out rather than failing the entry.
        let mut bad = attrs;
        bad[6] = ConntrackAttribute::Other(DefaultNla::new(CTA_COUNTERS_ORIG, vec![9; 5]));
        assert_eq!(round_trip(bad).map(|r| r.counters), Some(None));
    }

    #[test]
    fn tcp_entries_decode_state_ports_and_status() {
        let t = |src: &str, dst: &str, sp: u16, dp: u16| CtTuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport: Some(sp),
            dport: Some(dp),
            icmp_type: None,
            icmp_code: None,
            icmp_id: None,
        };
        let orig = t("fd04::2", "fd04::1", 40000, 22);
        let reply = t("fd04::1", "fd04::2", 22, 40000);
        let attrs = vec![
            ConntrackAttribute::CtaTupleOrig(tuple_attrs(&orig, 6)),
            ConntrackAttribute::CtaTupleReply(tuple_attrs(&reply, 6)),
            ConntrackAttribute::CtaStatus(
                netlink_packet_netfilter::conntrack::Status::from_bits_retain(0x18e),
            ),
            ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(vec![
                ProtoInfoTCP::State(3),
                ProtoInfoTCP::OriginalWindowScale(7),
            ])]),
            ConntrackAttribute::CtaTimeout(431_999),
            ConntrackAttribute::Other(DefaultNla::new(CTA_ID, 7u32.to_be_bytes().to_vec())),
        ];
        let r = round_trip(attrs).expect("decoded");
        assert_eq!((r.id, r.l3proto, r.l4proto), (7, L3::Ipv6, 6));
        assert_eq!((r.orig, r.reply), (orig, reply));
        assert_eq!(r.state, Some(TcpState::Established));
        assert_eq!(
            (r.status, r.timeout, r.mark, r.zone),
            (0x18e, 431_999, 0, 0)
        );
        assert_eq!(r.counters, None);
    }
}
