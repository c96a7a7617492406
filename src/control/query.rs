//! `list`'s view over the connection table (pyctd's view): filter, order, then page.
//!
//! Runs in the control worker on the table the parent sent, so the parent only copies its
//! rows; the query is the client's, already shape-checked.

use std::cmp::Ordering;

use privsep::control::{Column, ConnRow, Filter, ListQuery, OrderBy};

/// The rows `q` selects: (how many passed the filter, the page of them).
pub fn page(rows: Vec<ConnRow>, q: &ListQuery) -> (u64, Vec<ConnRow>) {
    let mut rows: Vec<ConnRow> = rows.into_iter().filter(|r| keep(r, &q.filter)).collect();
    let total = rows.len() as u64;
    if q.order.is_empty() {
        rows.sort_by_key(|r| r.id);
    } else {
        rows.sort_by(|a, b| order(a, b, &q.order));
    }
    let offset = usize::try_from(q.offset).unwrap_or(usize::MAX);
    let limit = q
        .limit
        .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let page = rows.into_iter().skip(offset).take(limit).collect();
    (total, page)
}

fn keep(r: &ConnRow, f: &Filter) -> bool {
    let any = |empty: bool, hit: bool| empty || hit;
    any(
        f.addr.is_empty(),
        f.addr.iter().any(|n| n.contains(r.peer.ip())),
    ) && any(
        f.class.is_empty(),
        f.class.iter().any(|c| {
            let c = c.as_str();
            r.class.as_deref() == Some(c) || r.classes.iter().any(|m| m == c)
        }),
    ) && any(
        f.local_port.is_empty(),
        f.local_port.contains(&r.local.port()),
    ) && any(
        f.user.is_empty(),
        r.user.as_ref().is_some_and(|u| f.user.contains(u)),
    ) && any(f.state.is_empty(), f.state.contains(&r.state))
        && f.min_age.is_none_or(|s| r.age_ms >= s.saturating_mul(1000))
        && f.max_age.is_none_or(|s| r.age_ms <= s.saturating_mul(1000))
}

/// Compares by each column in turn; the id breaks ties, so pages never overlap.
fn order(a: &ConnRow, b: &ConnRow, by: &[OrderBy]) -> Ordering {
    for o in by {
        let c = column(a, b, o.column);
        let c = if o.descending { c.reverse() } else { c };
        if c != Ordering::Equal {
            return c;
        }
    }
    a.id.cmp(&b.id)
}

fn column(a: &ConnRow, b: &ConnRow, c: Column) -> Ordering {
    match c {
        Column::Id => a.id.cmp(&b.id),
        Column::Pid => a.pid.cmp(&b.pid),
        Column::Peer => (a.peer.ip(), a.peer.port()).cmp(&(b.peer.ip(), b.peer.port())),
        Column::Local => (a.local.ip(), a.local.port()).cmp(&(b.local.ip(), b.local.port())),
        Column::Class => a.class.cmp(&b.class),
        Column::Classes => a.classes.cmp(&b.classes),
        Column::Label => a.label.cmp(&b.label),
        Column::User => a.user.cmp(&b.user),
        Column::Age => a.age_ms.cmp(&b.age_ms),
        Column::Gen => a.gen.cmp(&b.gen),
        Column::State => a.state.cmp(&b.state),
        Column::Timeout => a.timeout.cmp(&b.timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use privsep::control::{Cidr, ConnState};
    use privsep::proto::ClassName;

    fn row(id: u64, peer: &str, class: &str, age_ms: u64) -> ConnRow {
        ConnRow {
            id,
            pid: Some(1000 + id as i32),
            peer: format!("{peer}:40000").parse().unwrap(),
            local: "127.0.0.1:4040".parse().unwrap(),
            class: Some(class.to_owned()),
            classes: vec![class.to_owned(), "all".to_owned()],
            label: None,
            user: Some("nobody".to_owned()),
            age_ms,
            gen: 1,
            state: ConnState::Running,
            timeout: None,
        }
    }

    fn rows() -> Vec<ConnRow> {
        vec![
            row(1, "127.1.0.1", "web", 5000),
            row(2, "127.2.0.1", "mail", 1000),
            row(3, "127.1.0.2", "mail", 9000),
            row(4, "10.0.0.1", "web", 3000),
        ]
    }

    fn ids(r: &[ConnRow]) -> Vec<u64> {
        r.iter().map(|r| r.id).collect()
    }

    #[test]
    fn filters_combine_and_values_within_one_are_alternatives() {
        let mut q = ListQuery::default();
        q.filter.addr = vec!["127.1.0.0/16".parse::<Cidr>().unwrap()];
        let (total, r) = page(rows(), &q);
        assert_eq!((total, ids(&r)), (2, vec![1, 3]));
        q.filter.class = vec![ClassName::try_from("mail".to_owned()).unwrap()];
        assert_eq!(ids(&page(rows(), &q).1), vec![3]);
        let mut q = ListQuery::default();
        q.filter.min_age = Some(3);
        q.filter.max_age = Some(5);
        assert_eq!(ids(&page(rows(), &q).1), vec![1, 4]);
        // A matched (not action) class counts too.
        let mut q = ListQuery::default();
        q.filter.class = vec![ClassName::try_from("all".to_owned()).unwrap()];
        assert_eq!(page(rows(), &q).0, 4);
        let mut q = ListQuery::default();
        q.filter.local_port = vec![4041];
        assert_eq!(page(rows(), &q).0, 0);
    }

    #[test]
    fn order_by_columns_then_page() {
        let mut q = ListQuery {
            order: vec![
                OrderBy {
                    column: Column::Class,
                    descending: false,
                },
                OrderBy {
                    column: Column::Age,
                    descending: true,
                },
            ],
            ..ListQuery::default()
        };
        assert_eq!(ids(&page(rows(), &q).1), vec![3, 2, 1, 4]);
        q.offset = 1;
        q.limit = Some(2);
        let (total, r) = page(rows(), &q);
        assert_eq!((total, ids(&r)), (4, vec![2, 1]));
        q.offset = 10;
        assert!(page(rows(), &q).1.is_empty());
        let q = ListQuery {
            order: vec![OrderBy {
                column: Column::Peer,
                descending: false,
            }],
            ..ListQuery::default()
        };
        assert_eq!(ids(&page(rows(), &q).1), vec![4, 1, 3, 2]);
    }
}
