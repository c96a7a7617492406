//! The conntrack part of the control protocol (pyctd's job): what `nannyctl conntrack` and the
//! XML-RPC front end ask of the netfilter worker, and what it answers.
//!
//! These types travel three ways: JSON on the control socket (inside [`crate::control::Request`]
//! and [`crate::control::Reply`]), bincode from the control worker to the parent and from the
//! parent to the netfilter worker ([`crate::proto::ParentToNetfilter`]), and bincode back. Field
//! names are the `--json` output's: keep them stable. Shapes that decoding alone does not bound
//! are checked by [`CtRequest::check`], by every receiver.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;

/// Most rows one `conntrack list` answer carries: the page is bounded whatever the client asks.
/// A row is about 120 bytes of bincode, at most about 450 with IPv6 tuples, counters and a
/// 256-byte user name, so a full page stays below half a frame's cap (`wire::MAX_FRAME`).
pub const MAX_CT_PAGE: u64 = 1000;
/// Most ids, addresses, ports or protocols in one request's lists.
pub const MAX_CT_LIST: usize = 4096;

/// A conntrack request (`nannyctl conntrack …`, or an XML-RPC procedure).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum CtRequest {
    /// pyctd's `view`: the snapshot, filtered, ordered, paged.
    List(CtQuery),
    /// pyctd's `kill`: delete the entries named by id, or whose original source or destination
    /// is in one of `ip`.
    Kill(CtKill),
    /// pyctd's `change`: set an entry's mark or timeout (a 32-bit unsigned value).
    Change { id: u32, field: CtField, value: u32 },
    /// pyctd's `refresh`: take a new snapshot now.
    Refresh,
    /// pyctd's `set_autorefresh`: while on, every `list` works on a fresh snapshot.
    Autorefresh { on: bool },
}

impl CtRequest {
    /// Whether only root may ask it (`list` is a read; everything else changes the kernel's
    /// table or the shared snapshot, as in pyctd where every procedure needs a login).
    pub fn changes(&self) -> bool {
        !matches!(self, CtRequest::List(_))
    }

    pub fn name(&self) -> &'static str {
        match self {
            CtRequest::List(_) => "conntrack list",
            CtRequest::Kill(_) => "conntrack kill",
            CtRequest::Change { .. } => "conntrack change",
            CtRequest::Refresh => "conntrack refresh",
            CtRequest::Autorefresh { .. } => "conntrack autorefresh",
        }
    }

    /// The limits decoding alone does not enforce.
    pub fn check(&self) -> Result<(), String> {
        let list = |what: &str, n: usize| {
            if n > MAX_CT_LIST {
                Err(format!("too many {what}: {n} (at most {MAX_CT_LIST})"))
            } else {
                Ok(())
            }
        };
        match self {
            CtRequest::List(q) => {
                let f = &q.filter;
                list("ids", f.id.len())?;
                list("protocols", f.l4proto.len())?;
                list("addresses", f.src.len() + f.dst.len())?;
                list("ports", f.sport.len() + f.dport.len())?;
                list("order columns", q.order.len())?;
                if q.limit.is_some_and(|l| l > MAX_CT_PAGE) {
                    return Err(format!("a page is at most {MAX_CT_PAGE} rows"));
                }
                Ok(())
            }
            CtRequest::Kill(k) => {
                list("ids", k.ids.len())?;
                list("addresses", k.ip.len())?;
                if k.ids.is_empty() && k.ip.is_empty() {
                    return Err("conntrack kill needs ids or --ip".into());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// `conntrack list`: filters (every one given must hold; within a list, any value may match),
/// ordering (columns in priority order; ties by id), then paging.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CtQuery {
    pub filter: CtFilter,
    pub order: Vec<CtOrder>,
    pub offset: u64,
    /// None: [`MAX_CT_PAGE`] rows.
    pub limit: Option<u64>,
    /// Show the connections between two loopback addresses too (pyctd 0.4.2 hides them).
    pub local: bool,
}

/// pyctd's filters, by field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CtFilter {
    pub id: Vec<u32>,
    pub mark: Option<u32>,
    pub timeout: Option<u32>,
    /// IP protocol numbers (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6…).
    pub l4proto: Vec<u8>,
    /// The original direction's source is in one of these.
    pub src: Vec<Cidr>,
    pub dst: Vec<Cidr>,
    pub sport: Vec<u16>,
    pub dport: Vec<u16>,
}

/// A conntrack column, for ordering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CtColumn {
    Id,
    L3proto,
    L4proto,
    Src,
    Dst,
    Sport,
    Dport,
    ReplySrc,
    ReplyDst,
    ReplySport,
    ReplyDport,
    State,
    Mark,
    Timeout,
    Zone,
    Packets,
    Bytes,
    Uid,
    User,
}

impl CtColumn {
    pub const ALL: [CtColumn; 19] = [
        CtColumn::Id,
        CtColumn::L3proto,
        CtColumn::L4proto,
        CtColumn::Src,
        CtColumn::Dst,
        CtColumn::Sport,
        CtColumn::Dport,
        CtColumn::ReplySrc,
        CtColumn::ReplyDst,
        CtColumn::ReplySport,
        CtColumn::ReplyDport,
        CtColumn::State,
        CtColumn::Mark,
        CtColumn::Timeout,
        CtColumn::Zone,
        CtColumn::Packets,
        CtColumn::Bytes,
        CtColumn::Uid,
        CtColumn::User,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CtColumn::Id => "id",
            CtColumn::L3proto => "l3proto",
            CtColumn::L4proto => "l4proto",
            CtColumn::Src => "src",
            CtColumn::Dst => "dst",
            CtColumn::Sport => "sport",
            CtColumn::Dport => "dport",
            CtColumn::ReplySrc => "reply-src",
            CtColumn::ReplyDst => "reply-dst",
            CtColumn::ReplySport => "reply-sport",
            CtColumn::ReplyDport => "reply-dport",
            CtColumn::State => "state",
            CtColumn::Mark => "mark",
            CtColumn::Timeout => "timeout",
            CtColumn::Zone => "zone",
            CtColumn::Packets => "packets",
            CtColumn::Bytes => "bytes",
            CtColumn::Uid => "uid",
            CtColumn::User => "user",
        }
    }

    /// A column by its name, or by pyctd's field name (`orig_ipv4_src`, `orig_port_dst`…).
    pub fn from_name(s: &str) -> Option<CtColumn> {
        let pyctd = match s {
            "orig_l4proto" => Some(CtColumn::L4proto),
            "orig_ipv4_src" | "orig_ipv6_src" => Some(CtColumn::Src),
            "orig_ipv4_dst" | "orig_ipv6_dst" => Some(CtColumn::Dst),
            "orig_port_src" => Some(CtColumn::Sport),
            "orig_port_dst" => Some(CtColumn::Dport),
            "repl_ipv4_src" | "repl_ipv6_src" => Some(CtColumn::ReplySrc),
            "repl_ipv4_dst" | "repl_ipv6_dst" => Some(CtColumn::ReplyDst),
            "repl_port_src" => Some(CtColumn::ReplySport),
            "repl_port_dst" => Some(CtColumn::ReplyDport),
            "tcp_state" => Some(CtColumn::State),
            "username" => Some(CtColumn::User),
            _ => None,
        };
        pyctd.or_else(|| CtColumn::ALL.into_iter().find(|c| c.as_str() == s))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtOrder {
    pub column: CtColumn,
    #[serde(default)]
    pub descending: bool,
}

/// `conntrack kill ID…` / `--ip ADDRSPEC`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CtKill {
    pub ids: Vec<u32>,
    pub ip: Vec<Cidr>,
}

/// The fields `change` may set (pyctd: only these two).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CtField {
    Mark,
    Timeout,
}

impl CtField {
    pub fn as_str(self) -> &'static str {
        match self {
            CtField::Mark => "mark",
            CtField::Timeout => "timeout",
        }
    }
}

impl fmt::Display for CtField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One direction of a tracked flow. Ports for TCP, UDP, SCTP, DCCP and UDP-Lite; type, code
/// and id for ICMP and ICMPv6.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub icmp_id: Option<u16>,
}

/// Packet and byte counters of both directions (only when the kernel accounts:
/// net.netfilter.nf_conntrack_acct=1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtCounters {
    pub orig_packets: u64,
    pub orig_bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

/// The network protocol of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum L3 {
    Ipv4,
    Ipv6,
}

impl L3 {
    pub fn as_str(self) -> &'static str {
        match self {
            L3::Ipv4 => "ipv4",
            L3::Ipv6 => "ipv6",
        }
    }
}

/// A TCP entry's state, by conntrack-tools' names (in the kernel's order, which is also the
/// order `--order state` uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    None,
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
    #[serde(rename = "SYN_SENT2")]
    SynSent2,
}

impl TcpState {
    /// The kernel's number (nf_conntrack_tcp.h), if it is one.
    pub fn from_kernel(n: u8) -> Option<TcpState> {
        Some(match n {
            0 => TcpState::None,
            1 => TcpState::SynSent,
            2 => TcpState::SynRecv,
            3 => TcpState::Established,
            4 => TcpState::FinWait,
            5 => TcpState::CloseWait,
            6 => TcpState::LastAck,
            7 => TcpState::TimeWait,
            8 => TcpState::Close,
            9 => TcpState::SynSent2,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::SynSent2 => "SYN_SENT2",
        }
    }
}

/// One conntrack entry as `conntrack list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtRow {
    pub id: u32,
    /// `ipv4` or `ipv6`.
    pub l3proto: L3,
    /// The IP protocol number.
    pub l4proto: u8,
    pub orig: CtTuple,
    pub reply: CtTuple,
    /// The TCP state as conntrack-tools names it (`ESTABLISHED`…); None for other protocols.
    pub state: Option<TcpState>,
    /// The status bits (`IPS_*`), as the kernel gives them.
    pub status: u32,
    pub mark: u32,
    /// Seconds left, as of the snapshot.
    pub timeout: u32,
    pub zone: u16,
    pub counters: Option<CtCounters>,
    /// The uid held in the mark under `conntrackuidmask` (None without one).
    pub uid: Option<u32>,
    /// That uid's name, when the host knows it.
    pub user: Option<String>,
}

/// The answer to `conntrack list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtPage {
    /// Entries that passed the filter, before paging.
    pub total: u64,
    /// Entries in the snapshot (local-only ones included).
    pub tracked: u64,
    /// How old the snapshot is, milliseconds.
    pub age_ms: u64,
    pub autorefresh: bool,
    pub rows: Vec<CtRow>,
}

/// What `conntrack kill` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtKilled {
    /// Entries deleted from the kernel's table.
    pub killed: Vec<u32>,
    /// Ids given that name no entry of the snapshot, or that the kernel no longer had.
    pub missing: Vec<u32>,
}

/// An IP protocol number's name, as conntrack-tools prints it.
pub fn l4proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        2 => "igmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        33 => "dccp".into(),
        47 => "gre".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => n.to_string(),
    }
}

/// A protocol given by name or number.
pub fn l4proto_from_name(s: &str) -> Option<u8> {
    match s.to_ascii_lowercase().as_str() {
        "icmp" => Some(1),
        "igmp" => Some(2),
        "tcp" => Some(6),
        "udp" => Some(17),
        "dccp" => Some(33),
        "gre" => Some(47),
        "icmpv6" | "ipv6-icmp" => Some(58),
        "sctp" => Some(132),
        "udplite" => Some(136),
        n => n.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_bound_requests() {
        assert!(CtRequest::Kill(CtKill::default()).check().is_err());
        let big = CtRequest::List(CtQuery {
            limit: Some(MAX_CT_PAGE + 1),
            ..CtQuery::default()
        });
        assert!(big.check().is_err());
        let many = CtRequest::Kill(CtKill {
            ids: vec![1; MAX_CT_LIST + 1],
            ip: vec![],
        });
        assert!(many.check().is_err());
        assert!(!CtRequest::List(CtQuery::default()).changes());
        assert!(CtRequest::Refresh.changes());
    }

    #[test]
    fn column_names() {
        for c in CtColumn::ALL {
            assert_eq!(CtColumn::from_name(c.as_str()), Some(c));
        }
        assert_eq!(CtColumn::from_name("orig_ipv4_src"), Some(CtColumn::Src));
        assert_eq!(CtColumn::from_name("orig_port_dst"), Some(CtColumn::Dport));
        assert_eq!(CtColumn::from_name("nope"), None);
        assert_eq!(l4proto_from_name("TCP"), Some(6));
        assert_eq!(l4proto_from_name("58"), Some(58));
        assert_eq!(l4proto_name(17), "udp");
        // The JSON names (serde's) are checked against conntrack -L by tests/conntrack_netns.rs.
        assert_eq!(
            TcpState::from_kernel(3).map(TcpState::as_str),
            Some("ESTABLISHED")
        );
        assert_eq!(
            TcpState::from_kernel(9).map(TcpState::as_str),
            Some("SYN_SENT2")
        );
        assert_eq!(TcpState::from_kernel(10), None);
        assert_eq!(L3::Ipv6.as_str(), "ipv6");
    }
}
