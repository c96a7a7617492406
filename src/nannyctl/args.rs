//! `nannyctl`'s command line, parsed with getopts into the typed [`Request`] the daemon takes.
//!
//! Runs in `nannyctl`; the words are the operator's. Every value is checked here (addresses,
//! CIDRs, class names, TIMESPECs, columns) and the request passes [`Request::check`] before
//! anything is sent, so a mistake is a usage error (exit 2) that names the word, without a
//! round trip to the daemon.
//!
//! Shape: `nannyctl [-s PATH] [--json] COMMAND [ARGS]`; the global options may also follow
//! the command.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use getopts::{Matches, Options, ParsingStyle};
use policy::timespec::parse_timespec;
use privsep::control::{
    Cidr, Column, ConnState, ExplainAsk, KillTarget, ListQuery, OrderBy, Request,
};
use privsep::proto::{ClassName, HostName, IdentUser};

use super::codes::Fail;

/// The socket when neither `-s` nor `$NANNYCTL_SOCKET` names one.
pub const DEFAULT_SOCKET: &str = "/run/portnanny/control";
/// The environment variable that names the socket.
pub const SOCKET_ENV: &str = "NANNYCTL_SOCKET";
/// `watch`'s refresh interval unless `--interval` says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Shortest refresh interval: faster than this a table cannot be read anyway.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest refresh interval: the control worker drops a client idle for 600 s.
pub const MAX_INTERVAL: Duration = Duration::from_secs(300);

/// What was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    Help,
    Version,
    /// One request, one reply.
    Once(Request),
    /// `list` again and again on one connection.
    Watch {
        interval: Duration,
        query: ListQuery,
    },
}

/// The whole command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub socket: PathBuf,
    pub json: bool,
    pub cmd: Cmd,
}

/// Parses the words after the program name; `env_socket` is `$NANNYCTL_SOCKET`.
pub fn parse(words: &[String], env_socket: Option<&str>) -> Result<Invocation, Fail> {
    let mut global = Options::new();
    global.parsing_style(ParsingStyle::StopAtFirstFree);
    global_opts(&mut global);
    let g = global
        .parse(words)
        .map_err(|e| Fail::Usage(e.to_string()))?;
    if g.opt_present("help") {
        return invocation(&g, None, env_socket, Cmd::Help);
    }
    if g.opt_present("version") {
        return invocation(&g, None, env_socket, Cmd::Version);
    }
    let Some((name, rest)) = g.free.split_first() else {
        return Err(Fail::Usage("no command given".into()));
    };
    let mut o = Options::new();
    global_opts(&mut o);
    command_opts(name, &mut o)?;
    let m = o
        .parse(rest)
        .map_err(|e| Fail::Usage(format!("{name}: {e}")))?;
    if m.opt_present("help") {
        return invocation(&g, Some(&m), env_socket, Cmd::Help);
    }
    let cmd = command(name, &m).map_err(|e| Fail::Usage(format!("{name}: {e}")))?;
    if let Cmd::Once(req) = &cmd {
        req.check()
            .map_err(|e| Fail::Usage(format!("{name}: {e}")))?;
    }
    invocation(&g, Some(&m), env_socket, cmd)
}

fn invocation(
    g: &Matches,
    m: Option<&Matches>,
    env_socket: Option<&str>,
    cmd: Cmd,
) -> Result<Invocation, Fail> {
    let socket = m
        .and_then(|m| m.opt_str("socket"))
        .or_else(|| g.opt_str("socket"))
        .or_else(|| env_socket.filter(|s| !s.is_empty()).map(str::to_owned))
        .unwrap_or_else(|| DEFAULT_SOCKET.to_owned());
    if socket.is_empty() {
        return Err(Fail::Usage("-s: the socket path is empty".into()));
    }
    let json = g.opt_present("json") || m.is_some_and(|m| m.opt_present("json"));
    Ok(Invocation {
        socket: PathBuf::from(socket),
        json,
        cmd,
    })
}

fn global_opts(o: &mut Options) {
    o.optopt("s", "socket", "the control socket", "PATH");
    o.optflag("", "json", "print the reply as JSON");
    o.optflag("h", "help", "this help");
    o.optflag("", "version", "the version");
}

fn list_opts(o: &mut Options) {
    o.optmulti("", "addr", "peer in this address or CIDR", "CIDR");
    o.optmulti("", "class", "action or matched class", "CLASS");
    o.optmulti("", "port", "local port", "N");
    o.optmulti("", "user", "the service's user", "USER");
    o.optopt("", "min-age", "at least this old", "TIMESPEC");
    o.optopt("", "max-age", "at most this old", "TIMESPEC");
    o.optmulti("", "state", "pending, running, writing or ending", "STATE");
    o.optopt(
        "",
        "sort",
        "columns, -COL or COL:desc descending",
        "COL[,COL...]",
    );
    o.optopt("", "offset", "skip this many rows", "N");
    o.optopt("", "limit", "at most this many rows", "N");
}

fn command_opts(name: &str, o: &mut Options) -> Result<(), Fail> {
    match name {
        "list" => list_opts(o),
        "watch" => {
            list_opts(o);
            o.optopt("", "interval", "seconds between refreshes", "SECS");
        }
        "kill" => {
            o.optmulti(
                "",
                "ip",
                "every connection from this address or CIDR",
                "CIDR",
            );
            o.optmulti("", "class", "every connection of this class", "CLASS");
        }
        "explain" => {
            o.optopt("", "local", "the local end", "ADDR:PORT");
            o.optopt("", "ident", "the identd answer to assume", "NAME");
            o.optopt("", "hostname", "the verified hostname to assume", "NAME");
        }
        "change" | "block" | "unblock" | "blocked" | "reload" | "status" | "flush" | "metrics" => {}
        other => {
            return Err(Fail::Usage(format!(
                "unknown command '{}'",
                other.escape_debug()
            )))
        }
    }
    Ok(())
}

/// The command's request from its options and words.
fn command(name: &str, m: &Matches) -> Result<Cmd, String> {
    let free = &m.free;
    let arity = |min: usize, max: usize| {
        if free.len() < min {
            Err("missing arguments".to_owned())
        } else if free.len() > max {
            Err(format!(
                "unexpected argument '{}'",
                free.get(max).map_or("", String::as_str).escape_debug()
            ))
        } else {
            Ok(())
        }
    };
    let req = match name {
        "list" => {
            arity(0, 0)?;
            Request::List(list_query(m)?)
        }
        "watch" => {
            arity(0, 0)?;
            let interval = match m.opt_str("interval") {
                Some(s) => interval(&s)?,
                None => DEFAULT_INTERVAL,
            };
            return Ok(Cmd::Watch {
                interval,
                query: list_query(m)?,
            });
        }
        "kill" => {
            let ids = free.iter().map(|w| id(w)).collect::<Result<_, _>>()?;
            let t = KillTarget {
                ids,
                ip: cidrs(&m.opt_strs("ip"))?,
                class: classes(&m.opt_strs("class"))?,
            };
            if t.ids.is_empty() && t.ip.is_empty() && t.class.is_empty() {
                return Err("give connection ids, --ip CIDR or --class CLASS".into());
            }
            Request::Kill(t)
        }
        "change" => {
            arity(3, 3)?;
            let (i, field, value) = (&free[0], &free[1], &free[2]);
            if field != "timeout" {
                return Err(format!(
                    "only the timeout can be changed, not '{}'",
                    field.escape_debug()
                ));
            }
            Request::Change {
                id: id(i)?,
                timeout: seconds(value)?,
            }
        }
        "block" => {
            arity(1, 2)?;
            let seconds = match free.get(1) {
                Some(t) => Some(timespec(t)?),
                None => None,
            };
            Request::Block {
                addr: addr(&free[0])?,
                seconds,
            }
        }
        "unblock" => {
            arity(1, 1)?;
            Request::Unblock {
                addr: addr(&free[0])?,
            }
        }
        "explain" => {
            arity(1, 1)?;
            let local = match m.opt_str("local") {
                Some(s) => Some(s.parse::<SocketAddr>().map_err(|_| {
                    format!(
                        "--local: '{}' is not ADDR:PORT ([ADDR]:PORT for IPv6)",
                        s.escape_debug()
                    )
                })?),
                None => None,
            };
            let ident = match m.opt_str("ident") {
                Some(s) => Some(IdentUser::try_from(s.clone()).map_err(|e| {
                    format!(
                        "--ident: '{}' is not an identd answer: {e}",
                        s.escape_debug()
                    )
                })?),
                None => None,
            };
            let hostname = match m.opt_str("hostname") {
                Some(s) => Some(HostName::try_from(s.clone()).map_err(|e| {
                    format!("--hostname: '{}' is not a hostname: {e}", s.escape_debug())
                })?),
                None => None,
            };
            Request::Explain(ExplainAsk {
                addr: addr(&free[0])?,
                local,
                ident,
                hostname,
            })
        }
        "blocked" | "reload" | "status" | "flush" | "metrics" => {
            arity(0, 0)?;
            match name {
                "blocked" => Request::Blocked,
                "reload" => Request::Reload,
                "status" => Request::Status,
                "flush" => Request::Flush,
                _ => Request::Metrics,
            }
        }
        other => return Err(format!("unknown command '{}'", other.escape_debug())),
    };
    Ok(Cmd::Once(req))
}

fn list_query(m: &Matches) -> Result<ListQuery, String> {
    let mut q = ListQuery::default();
    q.filter.addr = cidrs(&m.opt_strs("addr"))?;
    q.filter.class = classes(&m.opt_strs("class"))?;
    q.filter.local_port = m
        .opt_strs("port")
        .iter()
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| format!("--port: '{}' is not a port number", p.escape_debug()))
        })
        .collect::<Result<_, _>>()?;
    q.filter.user = m.opt_strs("user");
    if let Some(u) = q.filter.user.iter().find(|u| u.is_empty()) {
        return Err(format!("--user: empty user name '{u}'"));
    }
    q.filter.min_age = m.opt_str("min-age").map(|t| timespec(&t)).transpose()?;
    q.filter.max_age = m.opt_str("max-age").map(|t| timespec(&t)).transpose()?;
    q.filter.state = m
        .opt_strs("state")
        .iter()
        .map(|s| state(s))
        .collect::<Result<_, _>>()?;
    if let Some(s) = m.opt_str("sort") {
        q.order = sort(&s)?;
    }
    q.offset = m
        .opt_str("offset")
        .map(|n| count("--offset", &n))
        .transpose()?
        .unwrap_or(0);
    q.limit = m
        .opt_str("limit")
        .map(|n| count("--limit", &n))
        .transpose()?;
    Ok(q)
}

/// `--sort COL[,COL…]`: each column ascending, or descending as `-COL` or `COL:desc`
/// (`+COL` and `COL:asc` say ascending outright).
pub fn sort(text: &str) -> Result<Vec<OrderBy>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let (name, descending) = if let Some(n) = part.strip_prefix('-') {
            (n, true)
        } else if let Some(n) = part.strip_prefix('+') {
            (n, false)
        } else if let Some(n) = part.strip_suffix(":desc") {
            (n, true)
        } else if let Some(n) = part.strip_suffix(":asc") {
            (n, false)
        } else {
            (part, false)
        };
        let column = Column::from_name(name).ok_or_else(|| {
            let all: Vec<&str> = Column::ALL.iter().map(|c| c.as_str()).collect();
            format!(
                "--sort: unknown column '{}' (columns: {})",
                name.escape_debug(),
                all.join(", ")
            )
        })?;
        out.push(OrderBy { column, descending });
    }
    Ok(out)
}

fn state(s: &str) -> Result<ConnState, String> {
    [
        ConnState::Pending,
        ConnState::Running,
        ConnState::Writing,
        ConnState::Ending,
    ]
    .into_iter()
    .find(|st| st.as_str() == s)
    .ok_or_else(|| {
        format!(
            "--state: '{}' is not pending, running, writing or ending",
            s.escape_debug()
        )
    })
}

fn cidrs(words: &[String]) -> Result<Vec<Cidr>, String> {
    words.iter().map(|w| w.parse::<Cidr>()).collect()
}

fn classes(words: &[String]) -> Result<Vec<ClassName>, String> {
    words
        .iter()
        .map(|w| {
            ClassName::try_from(w.clone())
                .map_err(|e| format!("'{}' is not a class name: {e}", w.escape_debug()))
        })
        .collect()
}

fn addr(w: &str) -> Result<IpAddr, String> {
    w.parse()
        .map_err(|_| format!("'{}' is not an IP address", w.escape_debug()))
}

fn id(w: &str) -> Result<u64, String> {
    w.parse()
        .map_err(|_| format!("'{}' is not a connection id", w.escape_debug()))
}

fn count(what: &str, w: &str) -> Result<u64, String> {
    w.parse()
        .map_err(|_| format!("{what}: '{}' is not a whole number", w.escape_debug()))
}

fn timespec(w: &str) -> Result<u64, String> {
    parse_timespec(w).map_err(|e| format!("'{}': {e}", w.escape_debug()))
}

/// A number of seconds, bare (`30`) or as a TIMESPEC (`30s`, `5m`).
fn seconds(w: &str) -> Result<u64, String> {
    if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) {
        return w
            .parse()
            .map_err(|_| format!("'{}': that time is too large", w.escape_debug()));
    }
    timespec(w)
}

fn interval(w: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "--interval: '{}' is not a number of seconds from {} to {}",
            w.escape_debug(),
            MIN_INTERVAL.as_secs_f64(),
            MAX_INTERVAL.as_secs()
        )
    };
    let s: f64 = w.parse().map_err(|_| bad())?;
    if !s.is_finite() || s < MIN_INTERVAL.as_secs_f64() || s > MAX_INTERVAL.as_secs_f64() {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(s))
}

/// The one-line synopsis printed after a usage error.
pub fn synopsis() -> &'static str {
    "usage: nannyctl [-s PATH] [--json] COMMAND [ARGS]   (nannyctl --help for more)"
}

/// `nannyctl --help`.
pub fn help() -> String {
    format!(
        "nannyctl: look at and steer a running portnanny through its control socket

usage: nannyctl [-s PATH] [--json] COMMAND [ARGS]

  -s, --socket PATH  the control socket (default: ${SOCKET_ENV}, else {DEFAULT_SOCKET})
  --json             print the reply as JSON (the field names of the README), one line
  -h, --help         this help;  --version  the version

commands:
  list [FILTER...] [--sort COL[,COL...]] [--offset N] [--limit N]
        live connections. FILTER: --addr CIDR, --class CLASS, --port N, --user USER,
        --state pending|running|writing|ending (each repeatable, any value may match),
        --min-age TIMESPEC, --max-age TIMESPEC (30s, 10m, 2h, 1d); every filter must hold.
        COL: id pid peer local class classes label user age gen state timeout; -COL or
        COL:desc sorts descending. Default order: id.
  watch [--interval SECS] [list's options]
        list, redrawn every SECS (default {}; {}..{}); ^C ends it
  kill ID...   kill --ip CIDR   kill --class CLASS
        end connections (the service's process group gets SIGTERM, then SIGKILL)
  change ID timeout SECS     end connection ID in SECS seconds (0: now)
  block ADDR [TIMESPEC]      block ADDR (without TIMESPEC: until unblocked)
  unblock ADDR    blocked    the sentry's blocked set
  reload          re-read the rules and actions files now (as SIGHUP)
  status          what SIGUSR2 logs
  flush           empty the IP history and the lookup caches (as SIGUSR1)
  explain ADDR [--local ADDR:PORT] [--ident NAME] [--hostname NAME]
        what would happen to a connection from ADDR now, rule by rule
  metrics         the counters, Prometheus text format

exit codes:
  0  done
  1  the daemon failed to do it (failed), or did not answer in time
  2  bad command line, or the daemon refused the request as malformed (bad-request)
  3  not authorised (root may do everything, controlgroup members may only read)
  4  no such connection id (kill: when any id given was missing; the rest are ended)
  5  the daemon is not running (no socket, connection refused, closed without a reply)",
        DEFAULT_INTERVAL.as_secs(),
        MIN_INTERVAL.as_secs_f64(),
        MAX_INTERVAL.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn req(s: &str) -> Request {
        match parse(&words(s), None) {
            Ok(Invocation {
                cmd: Cmd::Once(r), ..
            }) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn usage(s: &str) -> String {
        match parse(&words(s), None) {
            Err(Fail::Usage(m)) => m,
            other => panic!("{s}: expected a usage error, got {other:?}"),
        }
    }

    fn class(c: &str) -> ClassName {
        ClassName::try_from(c.to_owned()).unwrap()
    }

    #[test]
    fn commands_become_the_documented_requests() {
        let rows: Vec<(&str, Request)> = vec![
            ("list", Request::List(ListQuery::default())),
            (
                "kill 3 4",
                Request::Kill(KillTarget {
                    ids: vec![3, 4],
                    ..KillTarget::default()
                }),
            ),
            (
                "kill --ip 127.0.0.0/8 --class web --class mail",
                Request::Kill(KillTarget {
                    ids: vec![],
                    ip: vec!["127.0.0.0/8".parse().unwrap()],
                    class: vec![class("web"), class("mail")],
                }),
            ),
            (
                "change 3 timeout 30",
                Request::Change { id: 3, timeout: 30 },
            ),
            (
                "change 3 timeout 2m",
                Request::Change {
                    id: 3,
                    timeout: 120,
                },
            ),
            ("change 3 timeout 0", Request::Change { id: 3, timeout: 0 }),
            (
                "block 192.0.2.1 1h",
                Request::Block {
                    addr: "192.0.2.1".parse().unwrap(),
                    seconds: Some(3600),
                },
            ),
            (
                "block 2001:db8::1",
                Request::Block {
                    addr: "2001:db8::1".parse().unwrap(),
                    seconds: None,
                },
            ),
            (
                "unblock 192.0.2.1",
                Request::Unblock {
                    addr: "192.0.2.1".parse().unwrap(),
                },
            ),
            ("blocked", Request::Blocked),
            ("reload", Request::Reload),
            ("status", Request::Status),
            ("flush", Request::Flush),
            ("metrics", Request::Metrics),
            (
                "explain 127.0.0.5",
                Request::Explain(ExplainAsk {
                    addr: "127.0.0.5".parse().unwrap(),
                    local: None,
                    ident: None,
                    hostname: None,
                }),
            ),
            (
                "explain 127.0.0.5 --local 127.0.0.1:4040 --ident bob --hostname a.example",
                Request::Explain(ExplainAsk {
                    addr: "127.0.0.5".parse().unwrap(),
                    local: Some("127.0.0.1:4040".parse().unwrap()),
                    ident: Some(IdentUser::try_from("bob".to_owned()).unwrap()),
                    hostname: Some(HostName::try_from("a.example".to_owned()).unwrap()),
                }),
            ),
        ];
        for (line, want) in rows {
            assert_eq!(req(line), want, "{line}");
        }
    }

    #[test]
    fn list_filters_sorting_and_paging() {
        let r = req(
            "list --addr 127.1.0.0/16 --addr 10.0.0.1 --class web --port 25 --port 4040 \
             --user nobody --min-age 30s --max-age 2h --state running --state writing \
             --sort -age,peer,class:desc,+id,gen:asc --offset 10 --limit 5",
        );
        let Request::List(q) = r else { panic!("{r:?}") };
        assert_eq!(
            q.filter.addr,
            vec![
                "127.1.0.0/16".parse::<Cidr>().unwrap(),
                "10.0.0.1".parse().unwrap()
            ]
        );
        assert_eq!(q.filter.class, vec![class("web")]);
        assert_eq!(q.filter.local_port, vec![25, 4040]);
        assert_eq!(q.filter.user, vec!["nobody".to_owned()]);
        assert_eq!((q.filter.min_age, q.filter.max_age), (Some(30), Some(7200)));
        assert_eq!(q.filter.state, vec![ConnState::Running, ConnState::Writing]);
        let o = |column, descending| OrderBy { column, descending };
        assert_eq!(
            q.order,
            vec![
                o(Column::Age, true),
                o(Column::Peer, false),
                o(Column::Class, true),
                o(Column::Id, false),
                o(Column::Gen, false),
            ]
        );
        assert_eq!((q.offset, q.limit), (10, Some(5)));
        // The JSON on the wire is the documented one.
        let json =
            serde_json::to_string(&req("list --addr 127.0.0.0/8 --sort -age --limit 50")).unwrap();
        assert_eq!(
            json,
            "{\"list\":{\"filter\":{\"addr\":[\"127.0.0.0/8\"],\"class\":[],\"local_port\":[],\
             \"user\":[],\"min_age\":null,\"max_age\":null,\"state\":[]},\
             \"order\":[{\"column\":\"age\",\"descending\":true}],\"offset\":0,\"limit\":50}}"
        );
        // --sort with a separate word beginning with '-' is the value, not an option.
        let Request::List(q) = req("list --sort -timeout") else {
            panic!()
        };
        assert_eq!(q.order, vec![o(Column::Timeout, true)]);
    }

    #[test]
    fn watch_and_global_options() {
        let inv = parse(
            &words("watch --interval 0.5 --class web --json"),
            Some("/env/ctl"),
        )
        .unwrap();
        assert_eq!(inv.socket, PathBuf::from("/env/ctl"));
        assert!(inv.json);
        let Cmd::Watch { interval, query } = inv.cmd else {
            panic!("{:?}", inv.cmd)
        };
        assert_eq!(interval, Duration::from_millis(500));
        assert_eq!(query.filter.class, vec![class("web")]);
        let inv = parse(&words("-s /x/ctl list -s /y/ctl"), Some("/env/ctl")).unwrap();
        assert_eq!(inv.socket, PathBuf::from("/y/ctl"), "the later -s wins");
        let inv = parse(&words("--socket /x/ctl --json status"), Some("")).unwrap();
        assert_eq!((inv.socket, inv.json), (PathBuf::from("/x/ctl"), true));
        let inv = parse(&words("status"), Some("")).unwrap();
        assert_eq!(inv.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(parse(&words("--help"), None).unwrap().cmd, Cmd::Help);
        assert_eq!(parse(&words("kill -h"), None).unwrap().cmd, Cmd::Help);
        assert_eq!(parse(&words("--version"), None).unwrap().cmd, Cmd::Version);
    }

    #[test]
    fn mistakes_are_usage_errors_naming_the_word() {
        let rows: &[(&str, &str)] = &[
            ("", "no command given"),
            ("frobnicate", "unknown command 'frobnicate'"),
            ("list --addr 300.1.1.1", "'300.1.1.1' is not an address"),
            ("list --port 70000", "'70000' is not a port number"),
            ("list --min-age 30", "'30': a time must end in s"),
            ("list --state dead", "'dead' is not pending, running"),
            (
                "list --sort bogus",
                "unknown column 'bogus' (columns: id, pid",
            ),
            ("list --limit -1", "'-1' is not a whole number"),
            ("list extra", "unexpected argument 'extra'"),
            ("list --bogus", "Unrecognized option: 'bogus'"),
            ("list --class é", "'é' is not a class name"),
            ("kill", "give connection ids, --ip CIDR or --class CLASS"),
            ("kill 3x", "'3x' is not a connection id"),
            (
                "change 3 mark 4",
                "only the timeout can be changed, not 'mark'",
            ),
            ("change 3 timeout", "missing arguments"),
            ("change 3 timeout 99999999999", "out of range"),
            ("block 192.0.2.1 0s", "a block of 0 seconds"),
            ("block host.example", "'host.example' is not an IP address"),
            ("block 192.0.2.1 1h more", "unexpected argument 'more'"),
            ("unblock", "missing arguments"),
            ("explain 127.0.0.1 --local 127.0.0.1", "is not ADDR:PORT"),
            ("explain 127.0.0.1 --hostname a..b", "is not a hostname"),
            (
                "watch --interval 0",
                "is not a number of seconds from 0.1 to 300",
            ),
            ("watch --interval nan", "is not a number of seconds"),
            ("status now", "unexpected argument 'now'"),
        ];
        for (line, want) in rows {
            let m = usage(line);
            assert!(m.contains(want), "{line}: {m}");
        }
    }

    #[test]
    fn help_names_every_exit_code_and_command() {
        let h = help();
        for w in [
            "0  done",
            "1  the daemon failed",
            "2  bad command line",
            "3  not authorised",
            "4  no such connection id",
            "5  the daemon is not running",
            "list",
            "watch",
            "kill",
            "change",
            "block",
            "unblock",
            "blocked",
            "reload",
            "status",
            "flush",
            "explain",
            "metrics",
            SOCKET_ENV,
            DEFAULT_SOCKET,
        ] {
            assert!(h.contains(w), "{w}");
        }
    }
}
