//! Counts of live counted connections per class and per source address, for ipmax and connmax.
//!
//! Runs in the classifier. Connection ids come from the parent (trusted, but a classifier that
//! restarted learns them again through `Seed`); addresses are the peers the parent accepted.
//!
//! Invariants:
//! - A connection is counted once per class it matched (GLOBAL included) and once for its
//!   address, from the verdict that said `counted: true` until `ConnClosed`.
//! - Check-and-count is atomic: callers hold the table's lock across `policy::decide::decide`
//!   and [`Conntrack::up`] (see verdict.rs), so limits stay exact under concurrent evaluations.
//! - The per-address count is per group of nanny.conf's `ipv4prefix`/`ipv6prefix` (one
//!   /64 is one source under `ipv6prefix 64`). Each connection keeps its real address, so the
//!   grouping is applied the same way to new connections and to those re-seeded after a
//!   restart, and could be re-applied to every live connection.
//! - Zero counts are removed, so the maps hold only live classes and addresses; the table is
//!   bounded by the number of live services, which the parent caps.

use std::collections::HashMap;
use std::net::IpAddr;

use policy::decide::Counts;
use policy::grouping::Grouping;
use privsep::proto::ConnId;

#[derive(Clone, Debug)]
struct Counted {
    ip: IpAddr,
    classes: Vec<String>,
}

/// The live counted connections.
#[derive(Debug, Default)]
pub struct Conntrack {
    conns: HashMap<ConnId, Counted>,
    by_class: HashMap<String, u32>,
    /// Keyed by the group of the address (the address itself by default).
    by_ip: HashMap<IpAddr, u32>,
    grouping: Grouping,
}

impl Conntrack {
    pub fn new() -> Conntrack {
        Conntrack::default()
    }

    /// Count `conn` from `ip` as a member of `classes`. Returns false if `conn` was already
    /// counted; its old entry is released first so the counts stay exact.
    pub fn up(&mut self, conn: ConnId, ip: IpAddr, classes: Vec<String>) -> bool {
        let fresh = !self.down(conn);
        let mut unique: Vec<String> = Vec::with_capacity(classes.len());
        for class in classes {
            if !unique.contains(&class) {
                unique.push(class);
            }
        }
        for class in &unique {
            *self.by_class.entry(class.clone()).or_insert(0) += 1;
        }
        *self.by_ip.entry(self.grouping.key(ip)).or_insert(0) += 1;
        self.conns.insert(
            conn,
            Counted {
                ip,
                classes: unique,
            },
        );
        fresh
    }

    /// Release `conn`. Returns false if it was not counted.
    pub fn down(&mut self, conn: ConnId) -> bool {
        let Some(old) = self.conns.remove(&conn) else {
            return false;
        };
        for class in &old.classes {
            decrement(&mut self.by_class, class);
        }
        decrement(&mut self.by_ip, &self.grouping.key(old.ip));
        true
    }

    /// nanny.conf's grouping; the live connections are counted again under it.
    pub fn set_grouping(&mut self, grouping: Grouping) {
        if grouping == self.grouping {
            return;
        }
        self.grouping = grouping;
        self.by_ip.clear();
        for c in self.conns.values() {
            *self.by_ip.entry(grouping.key(c.ip)).or_insert(0) += 1;
        }
    }

    /// Replace the whole table with the parent's list of live counted connections.
    pub fn seed(&mut self, live: impl IntoIterator<Item = (ConnId, IpAddr, Vec<String>)>) {
        self.conns.clear();
        self.by_class.clear();
        self.by_ip.clear();
        for (conn, ip, classes) in live {
            self.up(conn, ip, classes);
        }
    }

    pub fn class_count(&self, class: &str) -> u32 {
        self.by_class.get(class).copied().unwrap_or(0)
    }

    /// Counted connections from `ip`'s group.
    pub fn ip_count(&self, ip: IpAddr) -> u32 {
        self.by_ip.get(&self.grouping.key(ip)).copied().unwrap_or(0)
    }

    /// Every class with live connections and its count, sorted by name.
    pub fn class_counts(&self) -> Vec<(String, u32)> {
        let mut counts: Vec<(String, u32)> =
            self.by_class.iter().map(|(c, n)| (c.clone(), *n)).collect();
        counts.sort();
        counts
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// The live counts one connection's decision sees: per class, and for its own address.
pub struct IpCounts<'a> {
    pub table: &'a Conntrack,
    pub ip: IpAddr,
}

impl Counts for IpCounts<'_> {
    fn class_count(&self, class: &str) -> u32 {
        self.table.class_count(class)
    }

    fn ip_count(&self) -> u32 {
        self.table.ip_count(self.ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn classes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counts_exactly_and_releases() {
        let mut t = Conntrack::new();
        let a = ip("192.0.2.1");
        let b = ip("192.0.2.2");
        assert!(t.up(ConnId(1), a, classes(&["smtp", "GLOBAL"])));
        assert!(t.up(ConnId(2), a, classes(&["smtp", "GLOBAL"])));
        assert!(t.up(ConnId(3), b, classes(&["local", "GLOBAL"])));
        // (label, class, want)
        let rows = [
            ("smtp", "smtp", 2),
            ("local", "local", 1),
            ("GLOBAL", "GLOBAL", 3),
            ("never seen", "other", 0),
        ];
        for (label, class, want) in rows {
            assert_eq!(t.class_count(class), want, "{label}");
        }
        assert_eq!(t.ip_count(a), 2);
        assert_eq!(t.ip_count(b), 1);
        let view = IpCounts { table: &t, ip: a };
        assert_eq!((view.ip_count(), view.class_count("smtp")), (2, 2));

        assert!(t.down(ConnId(1)));
        assert!(!t.down(ConnId(1)), "second release is a no-op");
        assert!(!t.down(ConnId(99)), "unknown id is a no-op");
        assert_eq!(t.class_count("smtp"), 1);
        assert_eq!(t.ip_count(a), 1);
        assert_eq!(t.class_count("GLOBAL"), 2);
        t.down(ConnId(2));
        t.down(ConnId(3));
        assert!(t.is_empty());
        assert!(t.class_counts().is_empty(), "zero counts are removed");
        assert_eq!(t.ip_count(a), 0);
    }

    #[test]
    fn duplicate_up_and_duplicate_classes_count_once() {
        let mut t = Conntrack::new();
        let a = ip("192.0.2.1");
        assert!(t.up(ConnId(1), a, classes(&["x", "x", "GLOBAL"])));
        assert_eq!(t.class_count("x"), 1);
        assert!(!t.up(ConnId(1), a, classes(&["y", "GLOBAL"])));
        assert_eq!(t.class_count("x"), 0);
        assert_eq!(t.class_count("y"), 1);
        assert_eq!(t.ip_count(a), 1);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn grouping_counts_a_prefix_as_one_source_seeded_or_not() {
        let mut t = Conntrack::new();
        t.up(ConnId(1), ip("127.70.1.1"), classes(&["a", "GLOBAL"]));
        t.up(ConnId(2), ip("2001:db8::1"), classes(&["a", "GLOBAL"]));
        assert_eq!(t.ip_count(ip("127.70.1.2")), 0, "no grouping by default");
        t.set_grouping(Grouping::new(24, 64).unwrap());
        assert_eq!(
            t.ip_count(ip("127.70.1.2")),
            1,
            "regrouped live connections"
        );
        assert_eq!(t.ip_count(ip("2001:db8::ffff:2")), 1, "same /64");
        // A restarted classifier is seeded with real addresses; it groups them the same way.
        t.seed(vec![
            (ConnId(3), ip("127.70.1.1"), classes(&["a", "GLOBAL"])),
            (ConnId(4), ip("127.70.1.2"), classes(&["a", "GLOBAL"])),
            (ConnId(5), ip("127.70.2.1"), classes(&["a", "GLOBAL"])),
        ]);
        assert_eq!(t.ip_count(ip("127.70.1.200")), 2);
        assert_eq!(t.ip_count(ip("127.70.2.1")), 1);
        assert!(t.down(ConnId(4)));
        assert_eq!(t.ip_count(ip("127.70.1.1")), 1);
        assert!(t.down(ConnId(3)));
        assert_eq!(t.ip_count(ip("127.70.1.1")), 0);
        assert!(
            !t.by_ip.contains_key(&ip("127.70.1.0")),
            "zero counts are removed"
        );
    }

    #[test]
    fn seed_replaces_the_table() {
        let mut t = Conntrack::new();
        t.up(ConnId(7), ip("198.51.100.1"), classes(&["old", "GLOBAL"]));
        t.seed(vec![
            (ConnId(1), ip("192.0.2.1"), classes(&["smtp", "GLOBAL"])),
            (ConnId(2), ip("192.0.2.1"), classes(&["smtp", "GLOBAL"])),
            (ConnId(3), ip("2001:db8::5"), classes(&["pop", "GLOBAL"])),
        ]);
        assert_eq!(t.class_count("old"), 0);
        assert_eq!(t.ip_count(ip("198.51.100.1")), 0);
        assert_eq!(
            t.class_counts(),
            vec![
                ("GLOBAL".to_string(), 3),
                ("pop".to_string(), 1),
                ("smtp".to_string(), 2)
            ]
        );
        assert_eq!(t.ip_count(ip("192.0.2.1")), 2);
        assert!(t.down(ConnId(3)));
        assert_eq!(t.class_count("pop"), 0);
    }
}
