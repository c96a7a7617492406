//! What `nannyctl` prints for a reply: the reply's inner value as one line of JSON with
//! `--json`, else aligned tables and sentences; and the exit code that goes with it.
//!
//! Runs in `nannyctl`. The reply is the daemon's, so it is outside input: a reply of the wrong
//! kind for the request is a failure, and every string printed for a human goes through
//! [`clean`] (Prometheus text excepted: `metrics` prints it as is, for scrapers).

use std::fmt::Write;

use privsep::control::{BlockRow, ConnRow, EndedRow, ErrorKind, ExplainReport, Reply, Request};

use super::codes::{code_of, kind_name, EXIT_FAILED, EXIT_NO_SUCH_ID};
use super::table::{clean, Align, Table};

/// Text for stdout and stderr, and the exit code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shown {
    pub out: String,
    pub err: String,
    pub code: u8,
}

/// How `reply` is shown as the answer to `req`; `now` is the Unix time (for blocks' ages).
pub fn show(req: &Request, reply: &Reply, json: bool, now: u64) -> Shown {
    if let Reply::Error { kind, message } = reply {
        return error(*kind, message, json);
    }
    if !fits(req, reply) {
        return Shown {
            out: String::new(),
            err: format!(
                "the daemon answered {} with a reply of another kind",
                req.name()
            ),
            code: EXIT_FAILED,
        };
    }
    let mut s = Shown::default();
    if let Reply::Ended { missing, .. } = reply {
        if !missing.is_empty() {
            let ids: Vec<String> = missing.iter().map(u64::to_string).collect();
            s.err = format!("no such id: {}", ids.join(", "));
            s.code = EXIT_NO_SUCH_ID;
        }
    }
    if json {
        match inner_json(reply) {
            Some(j) => s.out = j + "\n",
            None => {
                return Shown {
                    out: String::new(),
                    err: "cannot encode the reply as JSON".into(),
                    code: EXIT_FAILED,
                }
            }
        }
        return s;
    }
    s.out = match (req, reply) {
        (Request::List(q), Reply::Conns { total, rows }) => conns(rows, *total, q.offset),
        (_, Reply::Ended { ended, missing }) => ended_table(ended, missing.is_empty()),
        (_, Reply::Changed { id, timeout }) => match timeout {
            0 => format!("connection {id}: ended\n"),
            t => format!("connection {id}: ends in {t} s\n"),
        },
        (_, Reply::Blocks(rows)) => blocks(rows, now),
        (_, Reply::Lines(lines)) => lines.iter().map(|l| clean(l) + "\n").collect(),
        (_, Reply::Done(text)) => clean(text) + "\n",
        (_, Reply::Explained(r)) => explained(r),
        (_, Reply::Metrics(text)) => {
            if text.is_empty() || text.ends_with('\n') {
                text.clone()
            } else {
                format!("{text}\n")
            }
        }
        _ => String::new(),
    };
    s
}

/// An error reply: its message on stderr (and its inner object on stdout with `--json`).
pub fn error(kind: ErrorKind, message: &str, json: bool) -> Shown {
    let out = if json {
        serde_json::json!({ "kind": kind, "message": message }).to_string() + "\n"
    } else {
        String::new()
    };
    Shown {
        out,
        err: format!("{}: {}", kind_name(kind), clean(message)),
        code: code_of(kind),
    }
}

/// Whether `reply` is the kind of answer `req` gets.
fn fits(req: &Request, reply: &Reply) -> bool {
    matches!(
        (req, reply),
        (Request::List(_), Reply::Conns { .. })
            | (Request::Kill(_), Reply::Ended { .. })
            | (Request::Change { .. }, Reply::Changed { .. })
            | (Request::Blocked, Reply::Blocks(_))
            | (Request::Status, Reply::Lines(_))
            | (
                Request::Block { .. } | Request::Unblock { .. } | Request::Reload | Request::Flush,
                Reply::Done(_)
            )
            | (Request::Explain(_), Reply::Explained(_))
            | (Request::Metrics, Reply::Metrics(_))
    )
}

/// The reply's inner value (`{"conns":X}` → `X`) as one line of JSON, fields in
/// control.rs's order (a `serde_json::Value` would sort them).
pub fn inner_json(reply: &Reply) -> Option<String> {
    let whole = serde_json::to_string(reply).ok()?;
    // Every reply variant carries a value, so the encoding is `{"tag":VALUE}`; the tags are
    // kebab-case words, without a colon.
    let rest = whole.strip_prefix("{\"")?.strip_suffix('}')?;
    let (_, value) = rest.split_once("\":")?;
    Some(value.to_owned())
}

/// The `list` table; a last line says which rows of how many when a page is shown.
pub fn conns(rows: &[ConnRow], total: u64, offset: u64) -> String {
    let mut t = Table::new(&[
        ("ID", Align::Right),
        ("PID", Align::Right),
        ("PEER", Align::Left),
        ("LOCAL", Align::Left),
        ("CLASS", Align::Left),
        ("CLASSES", Align::Left),
        ("LABEL", Align::Left),
        ("USER", Align::Left),
        ("AGE", Align::Right),
        ("GEN", Align::Right),
        ("STATE", Align::Left),
        ("TIMEOUT", Align::Right),
    ]);
    for r in rows {
        t.row(vec![
            r.id.to_string(),
            opt(r.pid),
            r.peer.to_string(),
            r.local.to_string(),
            opt_str(&r.class),
            if r.classes.is_empty() {
                "-".into()
            } else {
                r.classes.join(",")
            },
            opt_str(&r.label),
            opt_str(&r.user),
            duration(r.age_ms / 1000),
            r.gen.to_string(),
            r.state.as_str().into(),
            r.timeout.map_or("-".into(), duration),
        ]);
    }
    let mut out = t.render();
    let shown = rows.len() as u64;
    if shown != total {
        if shown == 0 {
            let _ = writeln!(out, "(none from offset {offset}; {total} in all)");
        } else {
            let _ = writeln!(
                out,
                "({}-{} of {total})",
                offset.saturating_add(1),
                offset.saturating_add(shown)
            );
        }
    }
    out
}

fn ended_table(ended: &[EndedRow], nothing_missing: bool) -> String {
    if ended.is_empty() {
        return if nothing_missing {
            "no connection matched\n".into()
        } else {
            String::new()
        };
    }
    let mut t = Table::new(&[
        ("ID", Align::Right),
        ("PID", Align::Right),
        ("PEER", Align::Left),
        ("CLASS", Align::Left),
        ("HOW", Align::Left),
    ]);
    for e in ended {
        t.row(vec![
            e.id.to_string(),
            opt(e.pid),
            e.peer.to_string(),
            opt_str(&e.class),
            e.how.clone(),
        ]);
    }
    t.render()
}

fn blocks(rows: &[BlockRow], now: u64) -> String {
    if rows.is_empty() {
        return "no address is blocked\n".into();
    }
    let mut t = Table::new(&[
        ("ADDR", Align::Left),
        ("PORT", Align::Right),
        ("MODE", Align::Left),
        ("SINCE", Align::Right),
        ("LEFT", Align::Right),
        ("REPEAT", Align::Right),
        ("REASON", Align::Left),
    ]);
    for b in rows {
        t.row(vec![
            b.addr.to_string(),
            if b.port == 0 {
                "-".into()
            } else {
                b.port.to_string()
            },
            if b.mode.is_empty() {
                "-".into()
            } else {
                b.mode.clone()
            },
            format!("{} ago", duration(now.saturating_sub(b.since))),
            b.until
                .map_or("forever".into(), |u| duration(u.saturating_sub(now))),
            b.repeat.to_string(),
            b.reason.clone(),
        ]);
    }
    t.render()
}

fn explained(r: &ExplainReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "explain {} -> {} (policy generation {})",
        r.addr, r.local, r.gen
    );
    o.push_str("facts:\n");
    if r.facts.is_empty() {
        o.push_str("  (none)\n");
    }
    let mut f = Table::new(&[("", Align::Left), ("", Align::Left)]);
    for (k, v) in &r.facts {
        f.row(vec![k.clone(), v.clone()]);
    }
    // The facts' table without its (empty) header line.
    for line in f.render().lines().skip(1) {
        let _ = writeln!(o, "  {line}");
    }
    o.push_str("rules:\n");
    let mut t = Table::new(&[
        ("WHERE", Align::Left),
        ("CLASS", Align::Left),
        ("MATCHED", Align::Left),
        ("RULE", Align::Left),
        ("WHY", Align::Left),
    ]);
    for rule in &r.rules {
        t.row(vec![
            rule.at.clone(),
            rule.class.clone(),
            match rule.matched {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "-".into(),
            },
            rule.rule.clone(),
            rule.why.clone(),
        ]);
    }
    for line in t.render().lines() {
        let _ = writeln!(o, "  {line}");
    }
    let classes: Vec<String> = r.classes.iter().map(|c| clean(c)).collect();
    let _ = writeln!(
        o,
        "classes: {}",
        if classes.is_empty() {
            "(none)".into()
        } else {
            classes.join(", ")
        }
    );
    let _ = writeln!(
        o,
        "action class: {}",
        opt_str(&r.action_class.as_ref().map(|c| clean(c)))
    );
    let _ = writeln!(o, "action: {}", clean(&r.action));
    if r.admitted {
        o.push_str("admitted\n");
    } else {
        let _ = writeln!(
            o,
            "refused by {}",
            r.refusal.as_deref().map_or("-".into(), clean)
        );
    }
    o
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn opt_str(v: &Option<String>) -> String {
    match v.as_deref() {
        None | Some("") => "-".into(),
        Some(s) => s.to_owned(),
    }
}

/// Seconds as `42s`, `3m07s`, `2h05m`, `3d04h`.
pub fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use privsep::control::{ConnState, ListQuery, RuleTrace};

    fn row(id: u64) -> ConnRow {
        ConnRow {
            id,
            pid: Some(4000 + id as i32),
            peer: format!("127.0.0.{id}:5000").parse().unwrap(),
            local: "127.0.0.1:4040".parse().unwrap(),
            class: Some("web".into()),
            classes: vec!["web".into(), "all".into()],
            label: None,
            user: Some("nobody".into()),
            age_ms: 65_400,
            gen: 1,
            state: ConnState::Running,
            timeout: if id == 2 { Some(30) } else { None },
        }
    }

    #[test]
    fn list_is_a_table_with_a_page_line() {
        let req = Request::List(ListQuery::default());
        let reply = Reply::Conns {
            total: 2,
            rows: vec![row(1), row(2)],
        };
        let s = show(&req, &reply, false, 0);
        assert_eq!(s.code, 0);
        assert_eq!(
            s.out,
            "ID   PID  PEER            LOCAL           CLASS  CLASSES  LABEL  USER      AGE  \
             GEN  STATE    TIMEOUT\n \
             1  4001  127.0.0.1:5000  127.0.0.1:4040  web    web,all  -      nobody  1m05s    \
             1  running        -\n \
             2  4002  127.0.0.2:5000  127.0.0.1:4040  web    web,all  -      nobody  1m05s    \
             1  running      30s\n"
        );
        let q = ListQuery {
            offset: 5,
            limit: Some(1),
            ..ListQuery::default()
        };
        let paged = show(
            &Request::List(q),
            &Reply::Conns {
                total: 9,
                rows: vec![row(1)],
            },
            false,
            0,
        );
        assert!(paged.out.ends_with("\n(6-6 of 9)\n"), "{}", paged.out);
    }

    #[test]
    fn json_is_the_inner_value_with_the_wire_names() {
        let req = Request::List(ListQuery::default());
        let reply = Reply::Conns {
            total: 1,
            rows: vec![row(1)],
        };
        let s = show(&req, &reply, true, 0);
        assert_eq!(
            s.out,
            "{\"total\":1,\"rows\":[{\"id\":1,\"pid\":4001,\"peer\":\"127.0.0.1:5000\",\
             \"local\":\"127.0.0.1:4040\",\"class\":\"web\",\"classes\":[\"web\",\"all\"],\
             \"label\":null,\"user\":\"nobody\",\"age_ms\":65400,\"gen\":1,\
             \"state\":\"running\",\"timeout\":null}]}\n"
        );
        let done = show(&Request::Reload, &Reply::Done("ok".into()), true, 0);
        assert_eq!(done.out, "\"ok\"\n");
        let e = show(
            &Request::Reload,
            &Reply::error(ErrorKind::NotAuthorised, "reload: read only"),
            true,
            0,
        );
        assert_eq!(
            e.out,
            "{\"kind\":\"not-authorised\",\"message\":\"reload: read only\"}\n"
        );
        assert_eq!(
            (e.code, e.err.as_str()),
            (3, "not-authorised: reload: read only")
        );
    }

    #[test]
    fn kill_prints_what_it_ended_and_exits_4_for_missing_ids() {
        let req = Request::Kill(Default::default());
        let reply = Reply::Ended {
            ended: vec![EndedRow {
                id: 3,
                pid: Some(99),
                peer: "127.0.0.3:1".parse().unwrap(),
                class: Some("web".into()),
                how: "sigterm".into(),
            }],
            missing: vec![7, 8],
        };
        let s = show(&req, &reply, false, 0);
        assert_eq!(
            s.out,
            "ID  PID  PEER         CLASS  HOW\n 3   99  127.0.0.3:1  web    sigterm\n"
        );
        assert_eq!((s.err.as_str(), s.code), ("no such id: 7, 8", 4));
        let none = show(
            &req,
            &Reply::Ended {
                ended: vec![],
                missing: vec![],
            },
            false,
            0,
        );
        assert_eq!(
            (none.out.as_str(), none.code),
            ("no connection matched\n", 0)
        );
        let j = show(&req, &reply, true, 0);
        assert_eq!(j.code, 4);
        assert!(j.out.starts_with("{\"ended\":[{\"id\":3,"), "{}", j.out);
    }

    #[test]
    fn a_reply_of_the_wrong_kind_fails_and_errors_map_to_codes() {
        let s = show(&Request::Status, &Reply::Done("x".into()), false, 0);
        assert_eq!(s.code, 1, "{s:?}");
        for (kind, code) in [
            (ErrorKind::Failed, 1),
            (ErrorKind::BadRequest, 2),
            (ErrorKind::NotAuthorised, 3),
            (ErrorKind::NoSuchId, 4),
        ] {
            let s = show(&Request::Flush, &Reply::error(kind, "m\x1b[2J"), false, 0);
            assert_eq!(s.code, code);
            assert!(s.err.ends_with(": m\\u{1b}[2J"), "{}", s.err);
        }
    }

    #[test]
    fn blocks_explain_and_small_replies() {
        let rows = vec![BlockRow {
            addr: "192.0.2.1".parse().unwrap(),
            since: 1000,
            until: Some(4600),
            port: 0,
            mode: String::new(),
            reason: "nannyctl (uid 0)".into(),
            repeat: 0,
        }];
        let s = show(&Request::Blocked, &Reply::Blocks(rows), false, 1060);
        assert_eq!(
            s.out,
            "ADDR       PORT  MODE      SINCE    LEFT  REPEAT  REASON\n\
             192.0.2.1     -  -     1m00s ago  59m00s       0  nannyctl (uid 0)\n"
        );
        let s = show(&Request::Blocked, &Reply::Blocks(vec![]), false, 0);
        assert_eq!(s.out, "no address is blocked\n");
        let s = show(
            &Request::Change { id: 3, timeout: 0 },
            &Reply::Changed { id: 3, timeout: 0 },
            false,
            0,
        );
        assert_eq!(s.out, "connection 3: ended\n");
        let s = show(&Request::Metrics, &Reply::Metrics("a 1\n".into()), false, 0);
        assert_eq!(s.out, "a 1\n");
        let r = ExplainReport {
            addr: "127.0.0.5".parse().unwrap(),
            local: "127.0.0.1:4040".parse().unwrap(),
            gen: 2,
            facts: vec![("hostname".into(), "a.example".into())],
            rules: vec![
                RuleTrace {
                    at: "rules:1".into(),
                    class: "in".into(),
                    rule: "in: ip: 10.0.0.0/8".into(),
                    matched: Some(false),
                    why: "ip: no".into(),
                },
                RuleTrace {
                    at: "rules:2".into(),
                    class: "out".into(),
                    rule: "out: ALL".into(),
                    matched: Some(true),
                    why: "ALL".into(),
                },
            ],
            classes: vec!["out".into()],
            action_class: Some("out".into()),
            action: "msg hello".into(),
            admitted: false,
            refusal: Some("ipmax".into()),
        };
        let s = show(
            &Request::Explain(privsep::control::ExplainAsk {
                addr: r.addr,
                local: None,
                ident: None,
                hostname: None,
            }),
            &Reply::Explained(r),
            false,
            0,
        );
        assert_eq!(
            s.out,
            "explain 127.0.0.5 -> 127.0.0.1:4040 (policy generation 2)\n\
             facts:\n  hostname  a.example\n\
             rules:\n  \
             WHERE    CLASS  MATCHED  RULE                WHY\n  \
             rules:1  in     no       in: ip: 10.0.0.0/8  ip: no\n  \
             rules:2  out    yes      out: ALL            ALL\n\
             classes: out\naction class: out\naction: msg hello\nrefused by ipmax\n"
        );
    }

    #[test]
    fn durations() {
        for (s, want) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m00s"),
            (3599, "59m59s"),
            (3600, "1h00m"),
            (86_399, "23h59m"),
            (86_400, "1d00h"),
            (90_000, "1d01h"),
        ] {
            assert_eq!(duration(s), want);
        }
    }
}
