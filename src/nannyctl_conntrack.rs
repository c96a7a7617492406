//! `nannyctl conntrack list|kill|change|refresh|autorefresh`: pyctd's job from the command line.
//!
//! Runs in the nannyctl client (any user; root for everything but `list`). Parses the
//! subcommand's words into a typed [`Request::Conntrack`], sends it as one JSON line on the
//! control socket, and prints the answer as text or, with `--json`, as the reply's JSON object
//! (`CtPage` for `list`, `CtKilled` for `kill`, `{"done": "..."}` otherwise).
//!
//! Kept in its own file so the nannyctl binary only has to route the `conntrack` word here:
//! `"conntrack" => portnanny::nannyctl_conntrack::main(&socket, &words_after_conntrack)`.
//!
//! Exit codes: 0 done; 1 the daemon could not do it; 2 usage or a bad request; 3 not
//! authorised; 4 no such id; 111 the socket could not be used.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use privsep::conntrack::{
    l4proto_from_name, l4proto_name, CtColumn, CtField, CtKill, CtOrder, CtPage, CtQuery,
    CtRequest, CtRow, CtTuple,
};
use privsep::control::{Cidr, ErrorKind, Reply, Request};

/// The longest the daemon may take to answer (a dump of a huge table included).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest answer line read (a full page is far below it).
const MAX_ANSWER: u64 = 64 << 20;

pub const USAGE: &str = "\
usage: nannyctl conntrack list [--json] [--local] [--id N,..] [--mark N] [--timeout N]
                              [--proto P,..] [--src CIDR,..] [--dst CIDR,..] [--sport N,..]
                              [--dport N,..] [--order COL[:desc],..] [--offset N] [--limit N]
       nannyctl conntrack kill [--json] ID.. | --ip ADDR[/PREFIX],..
       nannyctl conntrack change [--json] ID mark N | ID timeout SECS
       nannyctl conntrack refresh [--json]
       nannyctl conntrack autorefresh [--json] on|off";

/// Parses the words after `conntrack`; Ok((request, json)).
pub fn parse(words: &[String]) -> Result<(CtRequest, bool), String> {
    let json = words.iter().any(|w| w == "--json");
    let words: Vec<&str> = words
        .iter()
        .map(String::as_str)
        .filter(|w| *w != "--json")
        .collect();
    let Some((&cmd, rest)) = words.split_first() else {
        return Err("conntrack needs a subcommand".into());
    };
    let num = |what: &str, s: &str| -> Result<u32, String> {
        let parsed = match s.strip_prefix("0x") {
            Some(h) => u32::from_str_radix(h, 16).ok(),
            None => s.parse::<u32>().ok(),
        };
        parsed.ok_or_else(|| format!("{what} must be a 32-bit unsigned number, not '{s}'"))
    };
    let list_of = |s: &str| {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let req = match cmd {
        "list" => {
            let mut q = CtQuery::default();
            let mut it = rest.iter();
            while let Some(&opt) = it.next() {
                if opt == "--local" {
                    q.local = true;
                    continue;
                }
                let Some(&v) = it.next() else {
                    return Err(format!("{opt} needs a value"));
                };
                let f = &mut q.filter;
                match opt {
                    "--id" => {
                        for x in list_of(v) {
                            f.id.push(num("an id", &x)?);
                        }
                    }
                    "--mark" => f.mark = Some(num("a mark", v)?),
                    "--timeout" => f.timeout = Some(num("a timeout", v)?),
                    "--proto" => {
                        for x in list_of(v) {
                            f.l4proto.push(
                                l4proto_from_name(&x)
                                    .ok_or_else(|| format!("unknown protocol '{x}'"))?,
                            );
                        }
                    }
                    "--src" | "--dst" => {
                        for x in list_of(v) {
                            let c: Cidr = x.parse()?;
                            if opt == "--src" {
                                f.src.push(c)
                            } else {
                                f.dst.push(c)
                            }
                        }
                    }
                    "--sport" | "--dport" => {
                        for x in list_of(v) {
                            let p: u16 = x.parse().map_err(|_| format!("bad port '{x}'"))?;
                            if opt == "--sport" {
                                f.sport.push(p)
                            } else {
                                f.dport.push(p)
                            }
                        }
                    }
                    "--order" => {
                        for x in list_of(v) {
                            let (name, descending) = match x.split_once(':') {
                                Some((n, "desc")) => (n.to_owned(), true),
                                Some((n, "asc")) => (n.to_owned(), false),
                                Some(_) => {
                                    return Err(format!(
                                        "bad order '{x}' (COL, COL:asc or COL:desc)"
                                    ))
                                }
                                None => (x.clone(), false),
                            };
                            let column = CtColumn::from_name(&name).ok_or_else(|| {
                                let all: Vec<&str> =
                                    CtColumn::ALL.iter().map(|c| c.as_str()).collect();
                                format!("unknown column '{name}' (one of {})", all.join(", "))
                            })?;
                            q.order.push(CtOrder { column, descending });
                        }
                    }
                    "--offset" => q.offset = v.parse().map_err(|_| format!("bad offset '{v}'"))?,
                    "--limit" => q.limit = Some(v.parse().map_err(|_| format!("bad limit '{v}'"))?),
                    _ => return Err(format!("unknown option '{opt}'")),
                }
            }
            CtRequest::List(q)
        }
        "kill" => {
            let mut k = CtKill::default();
            let mut it = rest.iter();
            while let Some(&w) = it.next() {
                if w == "--ip" {
                    let Some(&v) = it.next() else {
                        return Err("--ip needs ADDR[/PREFIX]".into());
                    };
                    for x in list_of(v) {
                        k.ip.push(x.parse()?);
                    }
                } else {
                    k.ids.push(num("an id", w)?);
                }
            }
            CtRequest::Kill(k)
        }
        "change" => match rest {
            [id, field, value] => {
                let field = match *field {
                    "mark" => CtField::Mark,
                    "timeout" => CtField::Timeout,
                    f => return Err(format!("only mark and timeout can be changed, not '{f}'")),
                };
                CtRequest::Change {
                    id: num("an id", id)?,
                    field,
                    value: num(field.as_str(), value)?,
                }
            }
            _ => return Err("conntrack change ID mark N | ID timeout SECS".into()),
        },
        "refresh" if rest.is_empty() => CtRequest::Refresh,
        "autorefresh" => match rest {
            ["on"] => CtRequest::Autorefresh { on: true },
            ["off"] => CtRequest::Autorefresh { on: false },
            _ => return Err("conntrack autorefresh on|off".into()),
        },
        other => return Err(format!("unknown conntrack subcommand '{other}'")),
    };
    req.check()?;
    Ok((req, json))
}

/// Sends one request on the control socket and reads its answer.
pub fn ask(socket: &Path, req: &Request) -> Result<Reply, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(ANSWER_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    s.write_all(line.as_bytes())
        .map_err(|e| format!("sending: {e}"))?;
    let mut answer = String::new();
    BufReader::new(std::io::Read::take(&s, MAX_ANSWER))
        .read_line(&mut answer)
        .map_err(|e| format!("reading the answer: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("undecodable answer: {e}"))
}

fn tuple_text(t: &CtTuple) -> String {
    let mut s = format!("src={} dst={}", t.src, t.dst);
    if let (Some(a), Some(b)) = (t.sport, t.dport) {
        s.push_str(&format!(" sport={a} dport={b}"));
    }
    if let (Some(ty), Some(c), Some(id)) = (t.icmp_type, t.icmp_code, t.icmp_id) {
        s.push_str(&format!(" type={ty} code={c} id={id}"));
    }
    s
}

/// One entry, in conntrack -L's order of fields.
pub fn row_text(r: &CtRow) -> String {
    let mut s = format!(
        "{:<5} {:<7} {:>3} {:>10} ",
        r.l3proto.as_str(),
        l4proto_name(r.l4proto),
        r.l4proto,
        r.timeout
    );
    if let Some(st) = r.state {
        s.push_str(st.as_str());
        s.push(' ');
    }
    s.push_str(&tuple_text(&r.orig));
    if let Some(c) = r.counters {
        s.push_str(&format!(
            " packets={} bytes={}",
            c.orig_packets, c.orig_bytes
        ));
    }
    s.push(' ');
    s.push_str(&tuple_text(&r.reply));
    if let Some(c) = r.counters {
        s.push_str(&format!(
            " packets={} bytes={}",
            c.reply_packets, c.reply_bytes
        ));
    }
    s.push_str(&format!(" mark={}", r.mark));
    if r.zone != 0 {
        s.push_str(&format!(" zone={}", r.zone));
    }
    match (&r.user, r.uid) {
        (Some(u), _) => s.push_str(&format!(" user={u}")),
        (None, Some(uid)) => s.push_str(&format!(" uid={uid}")),
        _ => {}
    }
    s.push_str(&format!(" id={}", r.id));
    s
}

fn page_text(p: &CtPage) -> String {
    let mut out = String::new();
    for r in &p.rows {
        out.push_str(&row_text(r));
        out.push('\n');
    }
    out.push_str(&format!(
        "# {} shown of {} matching, {} tracked; snapshot {} ms old; autorefresh {}\n",
        p.rows.len(),
        p.total,
        p.tracked,
        p.age_ms,
        if p.autorefresh { "on" } else { "off" }
    ));
    out
}

/// The answer as text or JSON, and the exit code.
pub fn render(reply: &Reply, json: bool) -> (String, u8) {
    let j = |v: serde_json::Result<String>| v.unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    match reply {
        Reply::CtPage(p) if json => (j(serde_json::to_string(p)) + "\n", 0),
        Reply::CtPage(p) => (page_text(p), 0),
        Reply::CtKilled(k) if json => (j(serde_json::to_string(k)) + "\n", 0),
        Reply::CtKilled(k) => {
            let ids = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
            let mut s = format!("killed {} entries: {}\n", k.killed.len(), ids(&k.killed));
            if !k.missing.is_empty() {
                s.push_str(&format!("no such entry: {}\n", ids(&k.missing)));
            }
            (s, 0)
        }
        Reply::Done(m) if json => (
            j(serde_json::to_string(&serde_json::json!({ "done": m }))) + "\n",
            0,
        ),
        Reply::Done(m) => (format!("{m}\n"), 0),
        Reply::Error { kind, message } => {
            let code = match kind {
                ErrorKind::Failed => 1,
                ErrorKind::BadRequest => 2,
                ErrorKind::NotAuthorised => 3,
                ErrorKind::NoSuchId => 4,
            };
            let text = if json {
                j(serde_json::to_string(
                    &serde_json::json!({ "error": kind, "message": message }),
                ))
            } else {
                format!("nannyctl: {message}")
            };
            (text + "\n", code)
        }
        other => (format!("nannyctl: unexpected answer {other:?}\n"), 1),
    }
}

/// The whole subcommand: (what to print on stdout, what on stderr, exit code).
pub fn main(socket: &Path, words: &[String]) -> (String, String, u8) {
    let (req, json) = match parse(words) {
        Ok(x) => x,
        Err(e) => return (String::new(), format!("nannyctl: {e}\n{USAGE}\n"), 2),
    };
    match ask(socket, &Request::Conntrack(req)) {
        Ok(reply) => {
            let (text, code) = render(&reply, json);
            if code == 0 || json {
                (text, String::new(), code)
            } else {
                (String::new(), text, code)
            }
        }
        Err(e) => (String::new(), format!("nannyctl: {e}\n"), 111),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_subcommands() {
        let (r, json) = parse(&w(
            "list --json --proto tcp,udp --src 10.0.0.0/8 --order dport:desc,id --limit 5",
        ))
        .unwrap();
        assert!(json);
        match r {
            CtRequest::List(q) => {
                assert_eq!(q.filter.l4proto, vec![6, 17]);
                assert_eq!(q.order.len(), 2);
                assert!(q.order[0].descending);
                assert_eq!(q.limit, Some(5));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(parse(&w("kill 1 2 --ip 192.0.2.1")).unwrap().0, CtRequest::Kill(k) if k.ids == [1, 2] && k.ip.len() == 1)
        );
        assert!(matches!(
            parse(&w("change 7 timeout 30")).unwrap().0,
            CtRequest::Change {
                id: 7,
                field: CtField::Timeout,
                value: 30
            }
        ));
        // label, words: each must be refused
        for bad in [
            "",
            "kill",
            "change 7 timeout 4294967296",
            "change 7 status 1",
            "list --order nope",
            "list --limit 1001",
            "autorefresh maybe",
            "list --sport 70000",
        ] {
            assert!(parse(&w(bad)).is_err(), "{bad}");
        }
    }
}
