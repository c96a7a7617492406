//! The SIGUSR2 status report.
//!
//! Runs in the parent. The per-class counts, evaluation statistics and history size come from
//! the classifier's `Status` answer (already admitted); everything else is the parent's own
//! bookkeeping. Peer-derived text in the report (class names are validated newtypes; addresses
//! are formatted by us) cannot break a line.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::conns::{Conns, State};
use crate::log;

/// One running service, as the report shows it.
struct ActiveLine<'a> {
    pid: i32,
    conn: u64,
    remote: SocketAddr,
    local: SocketAddr,
    classes: &'a [String],
    started: Instant,
}

/// The classifier's side of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassifierStats {
    pub evaluations: u64,
    pub eval_micros_total: u64,
    pub class_counts: Vec<(String, u32)>,
    pub history_entries: u64,
}

/// The parent's side of the report.
pub struct ParentStats {
    pub lifetime: u64,
    pub pending: usize,
    pub messages: usize,
    pub gen: u32,
}

/// Builds every line of the report, in order; the running services come from the connection
/// table.
pub fn report(
    p: &ParentStats,
    conns: &Conns,
    c: Option<&ClassifierStats>,
    now: Instant,
) -> Vec<String> {
    let mut active: Vec<ActiveLine<'_>> = conns
        .iter()
        .filter_map(|c| match &c.state {
            State::Running { pid, served, .. } => Some(ActiveLine {
                pid: *pid,
                conn: c.id.0,
                remote: c.remote,
                local: c.local,
                classes: &served.classes,
                started: served.started,
            }),
            _ => None,
        })
        .collect();
    let mut out = vec![format!(
        "status: total lifetime connections: {} (policy generation {}, {} awaiting a verdict, {} messages being written)",
        p.lifetime, p.gen, p.pending, p.messages
    )];
    if active.is_empty() {
        out.push("status: no active connections".to_owned());
    } else {
        out.push(format!("status: {} active connections:", active.len()));
        active.sort_by_key(|a| a.pid);
        for a in active.iter() {
            out.push(format!(
                "status: pid={} conn={} peer={} local={} classes={} age={}s",
                a.pid,
                a.conn,
                a.remote,
                a.local,
                log::escape(&a.classes.join(",")),
                now.saturating_duration_since(a.started).as_secs()
            ));
        }
    }
    match c {
        None => out.push("status: classifier not running; no counts available".to_owned()),
        Some(c) => {
            if c.class_counts.is_empty() {
                out.push("status: no counted connections in any class".to_owned());
            }
            for (class, n) in &c.class_counts {
                out.push(format!("status: class {} count={n}", log::escape(class)));
            }
            out.push(format!(
                "status: per IP first/last connection times entries: {}",
                c.history_entries
            ));
            if let Some(avg) = c.eval_micros_total.checked_div(c.evaluations) {
                let avg = Duration::from_micros(avg);
                out.push(format!(
                    "status: average rule evaluation time over {} evals: {:.4} seconds",
                    c.evaluations,
                    avg.as_secs_f64()
                ));
            } else {
                out.push("status: no rule evaluations yet".to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parent::conns::Served;
    use privsep::proto::{ConnId, Gen};

    #[test]
    fn report_lines() {
        let t0 = Instant::now();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut conns = Conns::default();
        let (remote, local) = (
            "127.0.0.5:4711".parse().unwrap(),
            "127.0.0.1:4040".parse().unwrap(),
        );
        conns.add_pending(ConnId(17), stream, remote, local, Gen(3), t0, None);
        let Some(crate::parent::conns::Taken::Live(p, _)) = conns.take_pending(ConnId(17)) else {
            panic!("pending")
        };
        let served = Served {
            classes: vec!["local".to_owned(), "GLOBAL".to_owned()],
            action_class: "local".to_owned(),
            label: None,
            gen: Gen(3),
            user: None,
            started: t0,
        };
        conns.add_running(p.meta, 812, true, served);
        let p = ParentStats {
            lifetime: 42,
            pending: 1,
            messages: 0,
            gen: 3,
        };
        let c = ClassifierStats {
            evaluations: 4,
            eval_micros_total: 2000,
            class_counts: vec![("local".into(), 1)],
            history_entries: 7,
        };
        let lines = report(&p, &conns, Some(&c), t0 + Duration::from_secs(5));
        let all = lines.join("\n");
        assert!(all.contains("total lifetime connections: 42"));
        assert!(all.contains(
            "pid=812 conn=17 peer=127.0.0.5:4711 local=127.0.0.1:4040 classes=local,GLOBAL age=5s"
        ));
        assert!(all.contains("class local count=1"));
        assert!(all.contains("entries: 7"));
        assert!(all.contains("over 4 evals: 0.0005 seconds"));
        let lines = report(&p, &Conns::default(), None, t0);
        assert!(lines.iter().any(|l| l.contains("no active connections")));
        assert!(lines.iter().any(|l| l.contains("classifier not running")));
    }
}
