//! The netfilter worker's conversation with the kernel: ctnetlink over NETLINK_NETFILTER.
//!
//! Runs in the netfilter worker (non-root, CAP_NET_ADMIN only, chrooted). Every byte read here
//! comes from the kernel, but is still decoded without a panic path: the rust-netlink crates
//! (netlink-packet-core, netlink-packet-netfilter) parse the messages; the few attributes
//! netlink-packet-netfilter 0.4 does not model (CTA_ID, CTA_ZONE, CTA_COUNTERS_*, the ICMP
//! tuple fields) arrive as its `DefaultNla`s and are read with the same crates' NLA iterator
//! and integer parsers. Nothing here is a hand-written codec.
//!
//! Deleting and changing go by the entry's original tuple plus its id (and zone): the kernel
//! looks the entry up by tuple, and a delete whose CTA_ID no longer matches fails with ENOENT,
//! so a recycled tuple is never hit. A delete without a tuple would flush the whole table,
//! which is why every message built here carries one.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    parse_u16_be, parse_u32_be, parse_u64_be, DefaultNla, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, Nla, NlaBuffer, NlasIterator, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Protocol,
    Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use privsep::conntrack::{CtCounters, CtField, CtRow, CtTuple};

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
/// Receive buffer per read: a dump comes in multi-message datagrams of up to a few pages.
const RECV_BUF: usize = 256 * 1024;
/// Most entries one snapshot keeps (memory bound: about 200 bytes each); the rest are counted.
pub const MAX_ENTRIES: usize = 2_000_000;

/// conntrack-tools' names for the TCP states (nf_conntrack_tcp.h order).
const TCP_STATES: [&str; 10] = [
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
];

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

fn other(why: impl Into<String>) -> io::Error {
    io::Error::other(why.into())
}

impl Ctnetlink {
    /// Opens and connects the socket (needs CAP_NET_ADMIN to be of any use).
    pub fn open() -> io::Result<Ctnetlink> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        let tv = nix::sys::time::TimeVal::new(RECV_TIMEOUT.as_secs().try_into().unwrap_or(10), 0);
        let fd = sock.as_raw_fd();
        // SAFETY: `fd` is the socket we own for this call; borrowing it only for setsockopt.
        let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        nix::sys::socket::setsockopt(&bfd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(io::Error::from)?;
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
        let mut hdr = NetlinkHeader::default();
        hdr.flags = flags;
        hdr.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(
            hdr,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(family, 0, 0),
                msg,
            )),
        );
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.sock.send(&out, 0)?;
        Ok(self.seq)
    }

    /// Reads datagrams until `Done` (dump) or the ack (`Error` with code 0 or an errno) of
    /// request `seq`, handing every conntrack message to `each`.
    fn collect(
        &mut self,
        seq: u32,
        mut each: impl FnMut(Vec<ConntrackAttribute>),
    ) -> io::Result<()> {
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0usize;
            while off < n {
                let bytes = self
                    .buf
                    .get(off..n)
                    .ok_or_else(|| other("netlink: bad offset"))?;
                let msg = <NetlinkMessage<NetfilterMessage>>::deserialize(bytes)
                    .map_err(|e| other(format!("netlink: undecodable message: {e}")))?;
                let len = usize::try_from(msg.header.length).unwrap_or(0);
                if len == 0 {
                    return Err(other("netlink: a message of length 0"));
                }
                // Messages are 4-byte aligned in a datagram.
                off = off.saturating_add(len.div_ceil(4) * 4);
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(c) => Err(io::Error::from_raw_os_error(-c.get())),
                        }
                    }
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner:
                            NetfilterMessageInner::Conntrack(
                                ConntrackMessage::New(attrs) | ConntrackMessage::Get(attrs),
                            ),
                        ..
                    }) => each(attrs),
                    _ => {}
                }
            }
        }
    }

    /// Dumps the whole table, IPv4 and IPv6. `uid_of` turns a mark into a uid (or None).
    pub fn dump(&mut self) -> io::Result<Dump> {
        let seq = self.send(
            NLM_F_REQUEST | NLM_F_DUMP,
            NetfilterProtoFamily::Unspec,
            ConntrackMessage::Get(vec![]),
        )?;
        let mut rows = Vec::new();
        let mut skipped = 0u64;
        self.collect(seq, |attrs| {
            if rows.len() >= MAX_ENTRIES {
                skipped += 1;
                return;
            }
            match row_of(attrs) {
                Some(r) => rows.push(r),
                None => skipped += 1,
            }
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
        self.collect(seq, |_| {})
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
        self.collect(seq, |_| {})
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

/// The value bytes of an attribute the crate left undecoded.
fn value_of(nla: &DefaultNla) -> Vec<u8> {
    let mut v = vec![0; nla.value_len()];
    nla.emit_value(&mut v);
    v
}

fn kind_of(nla: &DefaultNla) -> u16 {
    nla.kind() & NLA_TYPE_MASK
}

/// A nested counters attribute: (packets, bytes).
fn counters(nla: &DefaultNla) -> Option<(u64, u64)> {
    let v = value_of(nla);
    let (mut packets, mut bytes) = (None, None);
    for a in NlasIterator::new(&v[..]) {
        let a: NlaBuffer<&[u8]> = a.ok()?;
        match a.kind() & NLA_TYPE_MASK {
            CTA_COUNTERS_PACKETS => packets = parse_u64_be(a.value()).ok(),
            CTA_COUNTERS_BYTES => bytes = parse_u64_be(a.value()).ok(),
            _ => {}
        }
    }
    Some((packets?, bytes?))
}

/// A tuple and its protocol number; None when an address is missing.
fn tuple_of(tuples: Vec<Tuple>) -> Option<(CtTuple, Option<u8>)> {
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
    for tuple in tuples {
        match tuple {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(a),
                        IPTuple::DestinationAddress(a) => dst = Some(a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(u8::from(n)),
                        ProtoTuple::SourcePort(n) => t.sport = Some(n),
                        ProtoTuple::DestinationPort(n) => t.dport = Some(n),
                        ProtoTuple::Other(nla) => {
                            let v = value_of(&nla);
                            match kind_of(&nla) {
                                CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                                    t.icmp_id = parse_u16_be(&v).ok()
                                }
                                CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                                    t.icmp_type = v.first().copied()
                                }
                                CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                                    t.icmp_code = v.first().copied()
                                }
                                _ => {}
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t.src = src?;
    t.dst = dst?;
    Some((t, proto))
}

/// One dumped entry as a row; None when it lacks an id or a tuple. `uid`/`user` are filled in
/// by the table.
fn row_of(attrs: Vec<ConntrackAttribute>) -> Option<CtRow> {
    let (mut id, mut orig, mut reply, mut l4) = (None, None, None, None);
    let (mut state, mut status, mut mark, mut timeout, mut zone) = (None, 0, 0, 0, 0);
    let (mut c_orig, mut c_reply) = (None, None);
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => {
                let (t, p) = tuple_of(t)?;
                l4 = p;
                orig = Some(t);
            }
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(tuple_of(t)?.0),
            ConntrackAttribute::CtaProtoInfo(infos) => {
                for i in infos {
                    if let ProtoInfo::TCP(tcp) = i {
                        for x in tcp {
                            if let ProtoInfoTCP::State(s) = x {
                                state = Some(
                                    TCP_STATES
                                        .get(usize::from(s))
                                        .map_or_else(|| s.to_string(), |n| (*n).to_owned()),
                                );
                            }
                        }
                    }
                }
            }
            ConntrackAttribute::CtaStatus(s) => status = s.bits(),
            ConntrackAttribute::CtaTimeout(t) => timeout = t,
            ConntrackAttribute::CtaMark(m) => mark = m,
            ConntrackAttribute::Other(nla) => match kind_of(&nla) {
                CTA_ID => id = parse_u32_be(&value_of(&nla)).ok(),
                CTA_ZONE => zone = parse_u16_be(&value_of(&nla)).unwrap_or(0),
                CTA_COUNTERS_ORIG => c_orig = counters(&nla),
                CTA_COUNTERS_REPLY => c_reply = counters(&nla),
                _ => {}
            },
            _ => {}
        }
    }
    let orig = orig?;
    let counters = match (c_orig, c_reply) {
        (Some((op, ob)), Some((rp, rb))) => Some(CtCounters {
            orig_packets: op,
            orig_bytes: ob,
            reply_packets: rp,
            reply_bytes: rb,
        }),
        _ => None,
    };
    Some(CtRow {
        id: id?,
        l3proto: if orig.src.is_ipv4() { "ipv4" } else { "ipv6" }.to_owned(),
        l4proto: l4?,
        reply: reply?,
        orig,
        state,
        status,
        mark,
        timeout,
        zone,
        counters,
        uid: None,
        user: None,
    })
}
