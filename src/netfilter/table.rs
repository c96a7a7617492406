//! The netfilter worker's snapshot of the conntrack table and pyctd's `view` over it: filters,
//! ordering by any column both ways, offset and length, local-only entries hidden unless asked,
//! and the uid (and its name) held in the mark under `conntrackuidmask`.
//!
//! Runs in the netfilter worker. No I/O: the rows come from `netlink.rs`, the query from the
//! parent (already checked); only a bounded page leaves.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use privsep::conntrack::{CtColumn, CtFilter, CtPage, CtQuery, CtRow, MAX_CT_PAGE};

/// While autorefresh is on, a snapshot younger than this is fresh enough (pyctd 0.4.3 refreshes
/// "only when needed"; this keeps a client polling in a loop from dumping the table each time).
pub const AUTOREFRESH_MIN: Duration = Duration::from_secs(1);

/// The snapshot and what is needed to show it.
///
/// Id order is the rows' natural order (a `list` without an order, `kill`'s order) and what
/// finds a row by id, but a dump comes in the kernel's hash order and most pages are asked in
/// another order anyway: the rows are sorted by id only when something first needs it
/// ([`Table::by_id`]), not at every refresh (a fifth of a refresh at 100,000 entries).
pub struct Table {
    rows: Vec<CtRow>,
    /// Whether `rows` is in id order now.
    sorted: bool,
    pub taken: Option<Instant>,
    pub autorefresh: bool,
    uid_mask: u32,
    users: HashMap<u32, String>,
}

impl Table {
    pub fn new(uid_mask: u32, users: HashMap<u32, String>) -> Table {
        Table {
            rows: Vec::new(),
            sorted: true,
            taken: None,
            autorefresh: false,
            uid_mask,
            users,
        }
    }

    /// Whether a `list` must dump first: never dumped, or autorefresh on and the snapshot stale.
    pub fn wants_refresh(&self, now: Instant) -> bool {
        match self.taken {
            None => true,
            Some(t) => self.autorefresh && now.saturating_duration_since(t) >= AUTOREFRESH_MIN,
        }
    }

    /// Replaces the snapshot, deriving each row's uid and user from its mark.
    pub fn replace(&mut self, mut rows: Vec<CtRow>, now: Instant) {
        if self.uid_mask != 0 {
            let shift = self.uid_mask.trailing_zeros();
            for r in &mut rows {
                let uid = (r.mark & self.uid_mask) >> shift;
                r.uid = Some(uid);
                r.user = self.users.get(&uid).cloned();
            }
        }
        // The dump reserved a little more than it needed; a snapshot is kept until the next one.
        rows.shrink_to_fit();
        self.rows = rows;
        self.sorted = false;
        self.taken = Some(now);
    }

    /// Entries in the snapshot.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows in id order (sorting them the first time after a refresh).
    pub fn by_id(&mut self) -> &[CtRow] {
        if !self.sorted {
            self.rows.sort_unstable_by_key(|r| r.id);
            self.sorted = true;
        }
        &self.rows
    }

    pub fn get(&mut self, id: u32) -> Option<&CtRow> {
        let rows = self.by_id();
        rows.binary_search_by_key(&id, |r| r.id)
            .ok()
            .and_then(|i| rows.get(i))
    }

    /// Forgets entries the kernel no longer has (one pass, however many; the order is kept).
    pub fn remove(&mut self, ids: &[u32]) {
        if ids.is_empty() {
            return;
        }
        let gone: std::collections::HashSet<u32> = ids.iter().copied().collect();
        self.rows.retain(|r| !gone.contains(&r.id));
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut CtRow> {
        self.by_id();
        match self.rows.binary_search_by_key(&id, |r| r.id) {
            Ok(i) => self.rows.get_mut(i),
            Err(_) => None,
        }
    }

    /// pyctd's `view`: the page of rows that pass the filter, in the asked order.
    pub fn query(&self, q: &CtQuery, now: Instant) -> CtPage {
        let mut hits: Vec<&CtRow> = self
            .rows
            .iter()
            .filter(|r| q.local || !local_only(r))
            .filter(|r| passes(&q.filter, r))
            .collect();
        let total = hits.len() as u64;
        let offset = usize::try_from(q.offset).unwrap_or(usize::MAX);
        let limit = usize::try_from(q.limit.unwrap_or(MAX_CT_PAGE).min(MAX_CT_PAGE)).unwrap_or(0);
        let end = offset.saturating_add(limit).min(hits.len());
        // Without an order the page is in id order: already so when the rows are sorted,
        // otherwise the same partial sort with only the id tie-break.
        if (!q.order.is_empty() || !self.sorted) && offset < hits.len() {
            let cmp = |a: &&CtRow, b: &&CtRow| {
                for o in &q.order {
                    let c = compare(o.column, a, b);
                    let c = if o.descending { c.reverse() } else { c };
                    if c != Ordering::Equal {
                        return c;
                    }
                }
                a.id.cmp(&b.id)
            };
            // Only the page needs its final order: partition around its end, sort the front.
            if end < hits.len() && end > 0 {
                hits.select_nth_unstable_by(end - 1, cmp);
                hits.truncate(end);
            }
            hits.sort_unstable_by(cmp);
        }
        let rows = hits
            .get(offset.min(hits.len())..end.min(hits.len()))
            .unwrap_or(&[])
            .iter()
            .map(|r| (*r).clone())
            .collect();
        CtPage {
            total,
            tracked: self.rows.len() as u64,
            age_ms: self
                .taken
                .map(|t| now.saturating_duration_since(t).as_millis())
                .unwrap_or(0)
                .try_into()
                .unwrap_or(u64::MAX),
            autorefresh: self.autorefresh,
            rows,
        }
    }
}

/// pyctd 0.4.2 hides "unwanted" connections, localhost ones above all: both ends loopback.
pub fn local_only(r: &CtRow) -> bool {
    r.orig.src.is_loopback() && r.orig.dst.is_loopback()
}

fn passes(f: &CtFilter, r: &CtRow) -> bool {
    let any = |v: &[u16], p: Option<u16>| v.is_empty() || p.is_some_and(|p| v.contains(&p));
    (f.id.is_empty() || f.id.contains(&r.id))
        && f.mark.is_none_or(|m| m == r.mark)
        && f.timeout.is_none_or(|t| t == r.timeout)
        && (f.l4proto.is_empty() || f.l4proto.contains(&r.l4proto))
        && (f.src.is_empty() || f.src.iter().any(|c| c.contains(r.orig.src)))
        && (f.dst.is_empty() || f.dst.iter().any(|c| c.contains(r.orig.dst)))
        && any(&f.sport, r.orig.sport)
        && any(&f.dport, r.orig.dport)
}

/// Addresses order IPv4 before IPv6, then numerically.
fn addr_key(a: IpAddr) -> (u8, u128) {
    match a {
        IpAddr::V4(v) => (4, u128::from(u32::from(v))),
        IpAddr::V6(v) => (6, u128::from(v)),
    }
}

fn compare(c: CtColumn, a: &CtRow, b: &CtRow) -> Ordering {
    let packets = |r: &CtRow| r.counters.map(|c| c.orig_packets + c.reply_packets);
    let bytes = |r: &CtRow| r.counters.map(|c| c.orig_bytes + c.reply_bytes);
    match c {
        CtColumn::Id => a.id.cmp(&b.id),
        CtColumn::L3proto => a.l3proto.cmp(&b.l3proto),
        CtColumn::L4proto => a.l4proto.cmp(&b.l4proto),
        CtColumn::Src => addr_key(a.orig.src).cmp(&addr_key(b.orig.src)),
        CtColumn::Dst => addr_key(a.orig.dst).cmp(&addr_key(b.orig.dst)),
        CtColumn::Sport => a.orig.sport.cmp(&b.orig.sport),
        CtColumn::Dport => a.orig.dport.cmp(&b.orig.dport),
        CtColumn::ReplySrc => addr_key(a.reply.src).cmp(&addr_key(b.reply.src)),
        CtColumn::ReplyDst => addr_key(a.reply.dst).cmp(&addr_key(b.reply.dst)),
        CtColumn::ReplySport => a.reply.sport.cmp(&b.reply.sport),
        CtColumn::ReplyDport => a.reply.dport.cmp(&b.reply.dport),
        CtColumn::State => a.state.cmp(&b.state),
        CtColumn::Mark => a.mark.cmp(&b.mark),
        CtColumn::Timeout => a.timeout.cmp(&b.timeout),
        CtColumn::Zone => a.zone.cmp(&b.zone),
        CtColumn::Packets => packets(a).cmp(&packets(b)),
        CtColumn::Bytes => bytes(a).cmp(&bytes(b)),
        CtColumn::Uid => a.uid.cmp(&b.uid),
        CtColumn::User => a.user.cmp(&b.user),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use privsep::conntrack::{CtOrder, CtTuple};

    fn row(id: u32, src: &str, dport: u16, proto: u8, mark: u32) -> CtRow {
        let src: IpAddr = src.parse().unwrap();
        // A loopback source talks to loopback: a local-only entry.
        let dst = if src.is_loopback() {
            src
        } else {
            "10.0.0.1".parse().unwrap()
        };
        let t = CtTuple {
            src,
            dst,
            sport: Some(40000),
            dport: Some(dport),
            icmp_type: None,
            icmp_code: None,
            icmp_id: None,
        };
        CtRow {
            id,
            l3proto: privsep::conntrack::L3::Ipv4,
            l4proto: proto,
            reply: t.clone(),
            orig: t,
            state: None,
            status: 0,
            mark,
            timeout: 100,
            zone: 0,
            counters: None,
            uid: None,
            user: None,
        }
    }

    fn table() -> Table {
        let users = HashMap::from([(1000, "cks".to_owned())]);
        let mut t = Table::new(0xffff, users);
        t.replace(
            vec![
                row(5, "10.0.0.9", 80, 6, 0x1_03e8),
                row(2, "10.0.0.3", 22, 6, 7),
                row(9, "192.0.2.1", 53, 17, 0),
                row(7, "127.0.0.1", 80, 6, 0),
                row(3, "10.0.0.4", 443, 6, 0),
            ],
            Instant::now(),
        );
        t
    }

    fn ids(p: &CtPage) -> Vec<u32> {
        p.rows.iter().map(|r| r.id).collect()
    }

    #[test]
    fn view_rows() {
        // label, query, want ids, want total
        let t = table();
        let order = |c, d| {
            vec![CtOrder {
                column: c,
                descending: d,
            }]
        };
        let rows: Vec<(&str, CtQuery, Vec<u32>, u64)> = vec![
            (
                "all but loopback, by id",
                CtQuery::default(),
                vec![2, 3, 5, 9],
                4,
            ),
            (
                "loopback shown",
                CtQuery {
                    local: true,
                    ..CtQuery::default()
                },
                vec![2, 3, 5, 7, 9],
                5,
            ),
            (
                "tcp by dport desc",
                CtQuery {
                    filter: CtFilter {
                        l4proto: vec![6],
                        ..CtFilter::default()
                    },
                    order: order(CtColumn::Dport, true),
                    ..CtQuery::default()
                },
                vec![3, 5, 2],
                3,
            ),
            (
                "cidr, page 2 of 1",
                CtQuery {
                    filter: CtFilter {
                        src: vec!["10.0.0.0/8".parse().unwrap()],
                        ..CtFilter::default()
                    },
                    order: order(CtColumn::Src, false),
                    offset: 1,
                    limit: Some(1),
                    ..CtQuery::default()
                },
                vec![3],
                3,
            ),
            (
                "mark",
                CtQuery {
                    filter: CtFilter {
                        mark: Some(7),
                        ..CtFilter::default()
                    },
                    ..CtQuery::default()
                },
                vec![2],
                1,
            ),
            (
                "offset past the end",
                CtQuery {
                    offset: 10,
                    ..CtQuery::default()
                },
                vec![],
                4,
            ),
        ];
        // As dumped (hash order, sorted only as a page needs), then once sorted by id.
        let mut sorted = table();
        assert_eq!(
            sorted.by_id().iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![2, 3, 5, 7, 9]
        );
        for (label, q, want, total) in rows {
            for (t, how) in [(&t, "as dumped"), (&sorted, "sorted")] {
                let p = t.query(&q, Instant::now());
                assert_eq!(ids(&p), want, "{label}, {how}");
                assert_eq!(p.total, total, "{label}, {how}");
            }
        }
    }

    #[test]
    fn remove_and_change_find_rows_by_id_in_any_order() {
        let mut t = table();
        t.remove(&[9, 2]);
        assert_eq!(t.len(), 3);
        assert!(t.get(2).is_none() && t.get(9).is_none());
        if let Some(r) = t.get_mut(7) {
            r.mark = 42;
        }
        assert_eq!(t.get(7).map(|r| r.mark), Some(42));
        assert_eq!(
            t.by_id().iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![3, 5, 7]
        );
    }

    #[test]
    fn uid_from_mark() {
        let mut t = table();
        let r = t.get(5).unwrap();
        assert_eq!(r.uid, Some(1000));
        assert_eq!(r.user.as_deref(), Some("cks"));
        assert_eq!(t.get(2).unwrap().user, None);
        let mut shifted = Table::new(0xffff_0000, HashMap::new());
        shifted.replace(vec![row(1, "10.0.0.1", 1, 6, 0x03e8_0001)], Instant::now());
        assert_eq!(shifted.get(1).unwrap().uid, Some(1000));
    }
}
