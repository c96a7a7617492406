//! pyctd 0.4.4's procedures over the typed conntrack requests: `login`, `view`, `kill`,
//! `change`, `refresh`, `set_autorefresh`, with pyctd's arguments, field names and types, and
//! the faults for everything else.
//!
//! Runs in the control worker; the arguments are a remote frontend's, already decoded into
//! XML-RPC values ([`super::codec`]). A procedure is either answered here (login, faults) or
//! turned into one [`CtRequest`] for the parent, whose [`Reply`] [`answer`] turns back into a
//! response.
//!
//! pyctd's numbers are XML-RPC's 32-bit signed `int`s, but conntrack ids, marks and IPv4
//! addresses are unsigned 32-bit values: they travel as an `int` holding the same 32 bits (so
//! an id above 2^31 shows as negative and is passed back unchanged, as Python's xmlrpc.client
//! can send nothing wider), and a decimal string is accepted too. Timeouts, ports and
//! protocols must be non-negative.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use privsep::conntrack::{
    CtColumn, CtField, CtKill, CtOrder, CtPage, CtQuery, CtRequest, CtRow, CtTuple, MAX_CT_PAGE,
};
use privsep::control::{Cidr, ErrorKind, Reply};
use privsep::xmlrpc::{XmlrpcAuth, XmlrpcUser};

use super::codec::{encode_fault, encode_response, Call, Value};
use super::sessions::{Refused, Sessions};

/// Fault codes. The negative ones are the XML-RPC interoperability codes (xmlrpc-epi's
/// "specification for fault code interoperability"); the positive ones are ours.
pub mod fault {
    /// No such session: expired, forged or malformed.
    pub const BAD_SESSION: i32 = 1;
    /// login refused.
    pub const LOGIN_FAILED: i32 = 2;
    /// A connection id names no entry.
    pub const UNKNOWN_ID: i32 = 3;
    /// The conntrack table could not be read or changed.
    pub const FAILED: i32 = 4;
    pub const PARSE_ERROR: i32 = -32700;
    pub const INVALID_REQUEST: i32 = -32600;
    pub const NO_SUCH_METHOD: i32 = -32601;
    pub const BAD_PARAMS: i32 = -32602;
}

/// What a procedure waits for from the parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    View,
    Kill,
    Done,
}

/// What a call comes to.
#[derive(Debug)]
pub enum Outcome {
    /// A response (or fault) body, ready now.
    Answer(Vec<u8>),
    /// Ask the parent; answer with [`answer`] when it replies.
    Forward {
        user: XmlrpcUser,
        req: Box<CtRequest>,
        expect: Expect,
    },
}

/// Who is logging in, for the log line.
pub struct LoginNote(pub String);

type Fault = (i32, String);

fn bad(msg: impl Into<String>) -> Fault {
    (fault::BAD_PARAMS, msg.into())
}

/// The procedures and their arity (pyctd's signatures).
const PROCS: [&str; 6] = [
    "login",
    "view",
    "kill",
    "change",
    "refresh",
    "set_autorefresh",
];

/// Handles one decoded call. The note is for the log (logins, refusals).
pub fn call(
    c: &Call,
    auth: &XmlrpcAuth,
    sessions: &mut Sessions,
    idle_secs: u32,
    now: Instant,
) -> (Outcome, Option<String>) {
    match dispatch(c, auth, sessions, idle_secs, now) {
        Ok(Step::Answer(v, note)) => (Outcome::Answer(encode_response(&v)), note),
        Ok(Step::Forward(user, req, expect)) => (
            Outcome::Forward {
                user,
                req: Box::new(req),
                expect,
            },
            None,
        ),
        Err(((code, msg), note)) => (Outcome::Answer(encode_fault(code, &msg)), note),
    }
}

enum Step {
    Answer(Value, Option<String>),
    Forward(XmlrpcUser, CtRequest, Expect),
}

type Failed = (Fault, Option<String>);

fn dispatch(
    c: &Call,
    auth: &XmlrpcAuth,
    sessions: &mut Sessions,
    idle_secs: u32,
    now: Instant,
) -> Result<Step, Failed> {
    let p = c.params.as_slice();
    let plain = |f: Fault| (f, None);
    if !PROCS.contains(&c.method.as_str()) {
        return Err(plain((
            fault::NO_SUCH_METHOD,
            format!(
                "no such procedure '{}' (pyctd's are: {})",
                c.method.escape_debug(),
                PROCS.join(", ")
            ),
        )));
    }
    if c.method == "login" {
        return login(p, auth, sessions, now);
    }
    let arity = |lo: usize, hi: usize| {
        if p.len() < lo || p.len() > hi {
            Err(plain(bad(format!(
                "{} takes {} arguments, not {}",
                c.method,
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo} to {hi}")
                },
                p.len()
            ))))
        } else {
            Ok(())
        }
    };
    let sid = match p.first() {
        Some(Value::Str(s)) => s.as_str(),
        Some(v) => {
            return Err(plain(bad(format!(
                "the session id is a string, not {}",
                v.type_name()
            ))))
        }
        None => return Err(plain(bad(format!("{} needs a session id", c.method)))),
    };
    let user = sessions.touch(sid, now).map_err(|r| {
        let msg = match r {
            Refused::Malformed => {
                "bad session id: not one this server gives out; call login".into()
            }
            Refused::Unknown => format!(
                "bad session id: no such session (it expired after {idle_secs} s unused, or \
                 never existed); call login again"
            ),
        };
        ((fault::BAD_SESSION, msg), None)
    })?;
    let rest = p.get(1..).unwrap_or_default();
    let (req, expect) = match c.method.as_str() {
        "view" => {
            arity(1, 6)?;
            (
                CtRequest::List(view_query(rest).map_err(plain)?),
                Expect::View,
            )
        }
        "kill" => {
            arity(2, 2)?;
            let ids = match rest.first() {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| bits32(v, "a connection id"))
                    .collect::<Result<Vec<u32>, Fault>>()
                    .map_err(plain)?,
                Some(v) => {
                    return Err(plain(bad(format!(
                        "kill takes an array of connection ids, not {}",
                        v.type_name()
                    ))))
                }
                None => Vec::new(),
            };
            if ids.is_empty() {
                return Err(plain(bad("kill needs at least one connection id")));
            }
            let k = CtRequest::Kill(CtKill { ids, ip: vec![] });
            k.check().map_err(|e| plain(bad(e)))?;
            (k, Expect::Kill)
        }
        "change" => {
            arity(4, 4)?;
            let field = match rest.first() {
                Some(Value::Str(s)) if s == "mark" => CtField::Mark,
                Some(Value::Str(s)) if s == "timeout" => CtField::Timeout,
                Some(Value::Str(s)) => {
                    return Err(plain(bad(format!(
                        "change can set 'mark' or 'timeout', not '{}'",
                        s.escape_debug()
                    ))))
                }
                Some(v) => {
                    return Err(plain(bad(format!(
                        "the field name is a string, not {}",
                        v.type_name()
                    ))))
                }
                None => return Err(plain(bad("change needs a field name"))),
            };
            let id =
                bits32(rest.get(1).unwrap_or(&Value::Nil), "the connection id").map_err(plain)?;
            let v = rest.get(2).unwrap_or(&Value::Nil);
            let value = match field {
                CtField::Mark => bits32(v, "a mark"),
                CtField::Timeout => unsigned(v, "a timeout", u64::from(u32::MAX)).map(|t| t as u32),
            }
            .map_err(plain)?;
            (CtRequest::Change { id, field, value }, Expect::Done)
        }
        "refresh" => {
            arity(1, 1)?;
            (CtRequest::Refresh, Expect::Done)
        }
        _ => {
            arity(2, 2)?;
            let on = match rest.first() {
                Some(Value::Int(i)) => *i != 0,
                Some(Value::Bool(b)) => *b,
                Some(v) => {
                    return Err(plain(bad(format!(
                        "set_autorefresh takes an integer (0 off, 1 on), not {}",
                        v.type_name()
                    ))))
                }
                None => false,
            };
            (CtRequest::Autorefresh { on }, Expect::Done)
        }
    };
    Ok(Step::Forward(user, req, expect))
}

fn login(
    p: &[Value],
    auth: &XmlrpcAuth,
    sessions: &mut Sessions,
    now: Instant,
) -> Result<Step, Failed> {
    let name = |v: Option<&Value>| match v {
        Some(Value::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let user = match auth {
        // pyctd without mod_auth: the arguments do not matter; the proxy authenticated.
        XmlrpcAuth::None => name(p.first())
            .and_then(|n| XmlrpcUser::try_from(n).ok())
            .or_else(|| XmlrpcUser::try_from("anonymous".to_owned()).ok()),
        XmlrpcAuth::Users(users) => {
            let (Some(n), Some(pw), 2) = (name(p.first()), name(p.get(1)), p.len()) else {
                return Err((bad("login takes two strings: user name and password"), None));
            };
            let found = users.iter().find(|c| c.user.as_str() == n);
            let ok = match found {
                Some(c) => verify(&pw, &c.hash),
                None => {
                    // The same work for an unknown user, so timing does not tell which
                    // names exist.
                    let _ = verify(&pw, dummy_hash());
                    false
                }
            };
            if !ok {
                let shown: String = n.chars().take(64).collect();
                return Err((
                    (
                        fault::LOGIN_FAILED,
                        "login failed: wrong user name or password".into(),
                    ),
                    Some(format!(
                        "xmlrpc: failed login as '{}'",
                        shown.escape_debug()
                    )),
                ));
            }
            found.map(|c| c.user.clone())
        }
    };
    let Some(user) = user else {
        return Err(((fault::FAILED, "no user".into()), None));
    };
    let id = sessions
        .open(user.clone(), now)
        .map_err(|e| ((fault::FAILED, e), None))?;
    Ok(Step::Answer(
        Value::Str(id),
        Some(format!("xmlrpc: {user} logged in")),
    ))
}

/// Constant-time comparison is the argon2 crate's (`verify_password`).
fn verify(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of nothing anyone knows, made once, for logins with an unknown user name.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::encode_b64(b"portnanny-dummy!").ok();
        salt.and_then(|s| {
            Argon2::default()
                .hash_password(b"not a password anyone has", &s)
                .ok()
                .map(|h| h.to_string())
        })
        .unwrap_or_default()
    })
}

/// An unsigned 32-bit quantity carried as the same 32 bits (see the file header).
fn bits32(v: &Value, what: &str) -> Result<u32, Fault> {
    match v {
        Value::Int(i) => {
            if let Ok(n) = u32::try_from(*i) {
                Ok(n)
            } else if let Ok(n) = i32::try_from(*i) {
                Ok(n as u32)
            } else {
                Err(bad(format!("{what} is a 32-bit value; {i} is not")))
            }
        }
        Value::Str(s) => s.trim().parse::<u32>().map_err(|_| {
            bad(format!(
                "{what} is a 32-bit unsigned integer, not '{}'",
                s.escape_debug()
            ))
        }),
        other => Err(bad(format!(
            "{what} is an integer, not {}",
            other.type_name()
        ))),
    }
}

/// A non-negative integer up to `max`.
fn unsigned(v: &Value, what: &str, max: u64) -> Result<u64, Fault> {
    let n = match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::Str(s) => s.trim().parse::<u64>().ok(),
        other => {
            return Err(bad(format!(
                "{what} is an integer, not {}",
                other.type_name()
            )))
        }
    };
    n.filter(|n| *n <= max)
        .ok_or_else(|| bad(format!("{what} is an integer from 0 to {max}")))
}

/// An address filter: an integer (IPv4, as its 32 bits) or a string (address or CIDR).
fn addr(v: &Value, what: &str) -> Result<Cidr, Fault> {
    match v {
        Value::Int(_) => {
            let ip = Ipv4Addr::from(bits32(v, what)?);
            Ok(Cidr {
                addr: IpAddr::V4(ip),
                prefix: 32,
            })
        }
        Value::Str(s) => s.trim().parse::<Cidr>().map_err(|_| {
            bad(format!(
                "{what} '{}' is not an address or CIDR",
                s.escape_debug()
            ))
        }),
        other => Err(bad(format!(
            "{what} is an integer or a string, not {}",
            other.type_name()
        ))),
    }
}

/// view's arguments after the session id: filters, order_by, order_dir, start, length.
fn view_query(rest: &[Value]) -> Result<CtQuery, Fault> {
    let mut q = CtQuery::default();
    match rest.first() {
        None | Some(Value::Nil) => {}
        Some(Value::Struct(members)) => {
            for (k, v) in members {
                let f = &mut q.filter;
                match k.as_str() {
                    "mark" => f.mark = Some(bits32(v, "mark")?),
                    "timeout" => f.timeout = Some(unsigned(v, "timeout", u32::MAX.into())? as u32),
                    "orig_l4proto" => f.l4proto.push(unsigned(v, "orig_l4proto", 255)? as u8),
                    "orig_ipv4_src" | "orig_ipv6_src" => f.src.push(addr(v, k)?),
                    "orig_ipv4_dst" | "orig_ipv6_dst" => f.dst.push(addr(v, k)?),
                    "orig_port_src" => f.sport.push(unsigned(v, k, 65535)? as u16),
                    "orig_port_dst" => f.dport.push(unsigned(v, k, 65535)? as u16),
                    "id" => f.id.push(bits32(v, "id")?),
                    other => {
                        return Err(bad(format!(
                            "no filter on '{}' (pyctd's are: mark, timeout, orig_l4proto, \
                             orig_ipv4_src, orig_ipv4_dst, orig_port_src, orig_port_dst, id)",
                            other.escape_debug()
                        )))
                    }
                }
            }
        }
        Some(v) => return Err(bad(format!("filters is a struct, not {}", v.type_name()))),
    }
    let descending = match rest.get(2) {
        None | Some(Value::Nil) => false,
        Some(Value::Str(s)) if s.is_empty() || s.eq_ignore_ascii_case("asc") => false,
        Some(Value::Str(s)) if s.eq_ignore_ascii_case("desc") => true,
        Some(v) => {
            return Err(bad(format!(
                "order_dir is 'ASC' or 'DESC', not {}",
                match v {
                    Value::Str(s) => format!("'{}'", s.escape_debug()),
                    other => other.type_name().to_owned(),
                }
            )))
        }
    };
    match rest.get(1) {
        None | Some(Value::Nil) => {}
        Some(Value::Str(s)) if s.is_empty() => {}
        Some(Value::Str(s)) => {
            let column = CtColumn::from_name(s)
                .ok_or_else(|| bad(format!("no field '{}' to order by", s.escape_debug())))?;
            q.order.push(CtOrder { column, descending });
        }
        Some(v) => {
            return Err(bad(format!(
                "order_by is a field name, not {}",
                v.type_name()
            )))
        }
    }
    if let Some(v) = rest.get(3).filter(|v| **v != Value::Nil) {
        q.offset = unsigned(v, "start", u64::from(u32::MAX))?;
    }
    // pyctd's length: 0 (or none) means a whole page; more than a page is a page.
    if let Some(v) = rest.get(4).filter(|v| **v != Value::Nil) {
        let n = unsigned(v, "length", u64::from(u32::MAX))?;
        q.limit = Some(if n == 0 {
            MAX_CT_PAGE
        } else {
            n.min(MAX_CT_PAGE)
        });
    }
    Ok(q)
}

/// The 32 bits of an unsigned value as XML-RPC's signed int.
fn int32(n: u32) -> Value {
    Value::Int(i64::from(n as i32))
}

fn tuple_fields(out: &mut Vec<(String, Value)>, dir: &str, t: &CtTuple) {
    for (end, ip) in [("src", t.src), ("dst", t.dst)] {
        match ip {
            IpAddr::V4(a) => out.push((format!("{dir}_ipv4_{end}"), int32(u32::from(a)))),
            IpAddr::V6(a) => out.push((format!("{dir}_ipv6_{end}"), Value::Str(a.to_string()))),
        }
        out.push((format!("{dir}_{end}"), Value::Str(ip.to_string())));
    }
    for (name, port) in [("port_src", t.sport), ("port_dst", t.dport)] {
        if let Some(p) = port {
            out.push((format!("{dir}_{name}"), Value::Int(i64::from(p))));
        }
    }
    for (name, v) in [
        ("icmp_type", t.icmp_type.map(i64::from)),
        ("icmp_code", t.icmp_code.map(i64::from)),
        ("icmp_id", t.icmp_id.map(i64::from)),
    ] {
        if let Some(v) = v {
            out.push((format!("{dir}_{name}"), Value::Int(v)));
        }
    }
}

/// One entry with pyctd's (pynetfilter_conntrack's) field names.
pub fn row(r: &CtRow) -> Value {
    let mut m: Vec<(String, Value)> = vec![
        ("id".into(), int32(r.id)),
        ("orig_l3proto".into(), Value::Str(r.l3proto.as_str().into())),
        ("orig_l4proto".into(), Value::Int(i64::from(r.l4proto))),
    ];
    tuple_fields(&mut m, "orig", &r.orig);
    tuple_fields(&mut m, "repl", &r.reply);
    if let Some(s) = r.state {
        m.push(("tcp_state".into(), Value::Str(s.as_str().into())));
    }
    m.push(("status".into(), int32(r.status)));
    m.push(("mark".into(), int32(r.mark)));
    m.push(("timeout".into(), Value::Int(i64::from(r.timeout))));
    m.push(("zone".into(), Value::Int(i64::from(r.zone))));
    if let Some(c) = r.counters {
        for (k, v) in [
            ("orig_packets", c.orig_packets),
            ("orig_bytes", c.orig_bytes),
            ("repl_packets", c.reply_packets),
            ("repl_bytes", c.reply_bytes),
        ] {
            m.push((k.into(), Value::Int(i64::try_from(v).unwrap_or(i64::MAX))));
        }
    }
    if let Some(u) = r.uid {
        m.push(("uid".into(), int32(u)));
    }
    if let Some(u) = &r.user {
        m.push(("username".into(), Value::Str(u.clone())));
    }
    Value::Struct(m)
}

fn page(p: &CtPage) -> Value {
    Value::Struct(vec![
        (
            "count".into(),
            Value::Int(i64::try_from(p.total).unwrap_or(i64::MAX)),
        ),
        (
            "connections".into(),
            Value::Array(p.rows.iter().map(row).collect()),
        ),
        (
            "tracked".into(),
            Value::Int(i64::try_from(p.tracked).unwrap_or(i64::MAX)),
        ),
        (
            "age_ms".into(),
            Value::Int(i64::try_from(p.age_ms).unwrap_or(i64::MAX)),
        ),
        ("autorefresh".into(), Value::Bool(p.autorefresh)),
    ])
}

/// The response body for the parent's answer to a forwarded procedure.
pub fn answer(expect: &Expect, reply: &Reply) -> Vec<u8> {
    match (expect, reply) {
        (Expect::View, Reply::CtPage(p)) => encode_response(&page(p)),
        (Expect::Kill, Reply::CtKilled(k)) if k.missing.is_empty() => {
            encode_response(&Value::Bool(true))
        }
        (Expect::Kill, Reply::CtKilled(k)) => {
            let list = |v: &[u32]| {
                v.iter()
                    .map(|i| (*i as i32).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            encode_fault(
                fault::UNKNOWN_ID,
                &format!(
                    "unknown connection ids: {} (killed: {})",
                    list(&k.missing),
                    if k.killed.is_empty() {
                        "none".into()
                    } else {
                        list(&k.killed)
                    }
                ),
            )
        }
        (Expect::Done, Reply::Done(_)) => encode_response(&Value::Bool(true)),
        (_, Reply::Error { kind, message }) => {
            let code = match kind {
                ErrorKind::NoSuchId => fault::UNKNOWN_ID,
                ErrorKind::BadRequest => fault::BAD_PARAMS,
                ErrorKind::NotAuthorised | ErrorKind::Failed => fault::FAILED,
            };
            encode_fault(code, message)
        }
        _ => encode_fault(fault::FAILED, "an unexpected answer from the daemon"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use privsep::conntrack::{CtKilled, L3};
    use privsep::xmlrpc::XmlrpcCredential;
    use std::time::Duration;

    fn s(x: &str) -> Value {
        Value::Str(x.into())
    }

    fn run(auth: &XmlrpcAuth, ss: &mut Sessions, method: &str, params: Vec<Value>) -> String {
        let c = Call {
            method: method.into(),
            params,
        };
        match call(&c, auth, ss, 10, Instant::now()).0 {
            Outcome::Answer(b) => String::from_utf8(b).unwrap(),
            Outcome::Forward { user, req, expect } => format!("{user} {req:?} {expect:?}"),
        }
    }

    fn hash(pw: &str) -> String {
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        Argon2::default()
            .hash_password(pw.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn login_checks_the_password_and_sessions_gate_the_rest() {
        let auth = XmlrpcAuth::Users(vec![XmlrpcCredential {
            user: XmlrpcUser::try_from("alice".to_owned()).unwrap(),
            hash: hash("secret"),
        }]);
        let mut ss = Sessions::new(Duration::from_secs(10));
        for (args, want) in [
            (vec![s("alice"), s("nope")], "login failed"),
            (vec![s("bob"), s("secret")], "login failed"),
            (vec![s("alice")], "two strings"),
            (vec![s("alice"), Value::Int(1)], "two strings"),
        ] {
            let got = run(&auth, &mut ss, "login", args);
            assert!(got.contains(want), "{got}");
        }
        let ok = run(&auth, &mut ss, "login", vec![s("alice"), s("secret")]);
        let sid = ok
            .split("<string>")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap()
            .to_owned();
        assert_eq!(sid.len(), 32, "{ok}");
        let got = run(&auth, &mut ss, "refresh", vec![s(&sid)]);
        assert_eq!(got, "alice Refresh Done");
        let forged = run(&auth, &mut ss, "refresh", vec![s(&"0".repeat(32))]);
        assert!(
            forged.contains("<int>1</int>") && forged.contains("no such session"),
            "{forged}"
        );
        let none = run(&auth, &mut ss, "nosuch", vec![]);
        assert!(none.contains("-32601"), "{none}");
        // No mod_auth: any arguments log in.
        let open = run(&XmlrpcAuth::None, &mut ss, "login", vec![]);
        assert!(open.contains("<string>"), "{open}");
    }

    #[test]
    fn procedures_map_to_typed_requests() {
        let mut ss = Sessions::new(Duration::from_secs(10));
        let sid = ss
            .open(
                XmlrpcUser::try_from("u".to_owned()).unwrap(),
                Instant::now(),
            )
            .unwrap();
        let a = XmlrpcAuth::None;
        let filters = Value::Struct(vec![
            ("orig_l4proto".into(), Value::Int(6)),
            (
                "orig_ipv4_src".into(),
                Value::Int(0xC000_020A_u32 as i32 as i64),
            ),
            ("orig_ipv4_dst".into(), s("198.51.100.0/24")),
            ("orig_port_dst".into(), Value::Int(80)),
            ("id".into(), s("4000000000")),
        ]);
        let got = run(
            &a,
            &mut ss,
            "view",
            vec![
                s(&sid),
                filters,
                s("orig_port_dst"),
                s("DESC"),
                Value::Int(1),
                Value::Int(2),
            ],
        );
        assert!(
            got.contains("l4proto: [6]") && got.contains("addr: 192.0.2.10, prefix: 32"),
            "{got}"
        );
        assert!(
            got.contains("addr: 198.51.100.0, prefix: 24") && got.contains("dport: [80]"),
            "{got}"
        );
        assert!(
            got.contains("id: [4000000000]") && got.contains("descending: true"),
            "{got}"
        );
        assert!(got.contains("offset: 1, limit: Some(2)"), "{got}");
        let got = run(
            &a,
            &mut ss,
            "kill",
            vec![s(&sid), Value::Array(vec![Value::Int(-1), s("7")])],
        );
        assert!(got.contains("ids: [4294967295, 7]"), "{got}");
        let got = run(
            &a,
            &mut ss,
            "change",
            vec![s(&sid), s("timeout"), Value::Int(5), Value::Int(60)],
        );
        assert!(
            got.contains("Change { id: 5, field: Timeout, value: 60 }"),
            "{got}"
        );
        let got = run(&a, &mut ss, "set_autorefresh", vec![s(&sid), Value::Int(1)]);
        assert!(got.contains("Autorefresh { on: true }"), "{got}");
        for (m, args) in [
            ("view", vec![s(&sid), Value::Int(3)]),
            (
                "view",
                vec![
                    s(&sid),
                    Value::Struct(vec![("bogus".into(), Value::Int(1))]),
                ],
            ),
            ("view", vec![s(&sid), Value::Struct(vec![]), s("nosuch")]),
            ("view", vec![s(&sid), Value::Struct(vec![]), s(""), s("UP")]),
            (
                "view",
                vec![s(&sid), Value::Struct(vec![]), s(""), s(""), Value::Int(-1)],
            ),
            ("kill", vec![s(&sid), Value::Array(vec![])]),
            ("kill", vec![s(&sid), Value::Int(3)]),
            ("kill", vec![s(&sid), Value::Array(vec![s("x")])]),
            (
                "change",
                vec![s(&sid), s("zone"), Value::Int(1), Value::Int(1)],
            ),
            (
                "change",
                vec![s(&sid), s("timeout"), Value::Int(1), Value::Int(-1)],
            ),
            (
                "change",
                vec![s(&sid), s("mark"), Value::Int(1), s("4294967296")],
            ),
            ("change", vec![s(&sid), s("mark"), Value::Int(1)]),
            ("refresh", vec![Value::Int(1)]),
        ] {
            let got = run(&a, &mut ss, m, args.clone());
            assert!(
                got.contains("<fault>") && got.contains("-32602"),
                "{m} {args:?}: {got}"
            );
        }
    }

    #[test]
    fn answers_carry_pyctd_field_names() {
        let t = |a: &str, b: &str| CtTuple {
            src: a.parse().unwrap(),
            dst: b.parse().unwrap(),
            sport: Some(1),
            dport: Some(80),
            icmp_type: None,
            icmp_code: None,
            icmp_id: None,
        };
        let r = CtRow {
            id: 4_000_000_000,
            l3proto: L3::Ipv4,
            l4proto: 6,
            orig: t("192.0.2.1", "198.51.100.1"),
            reply: t("198.51.100.1", "192.0.2.1"),
            state: privsep::conntrack::TcpState::from_kernel(3),
            status: 8,
            mark: 7,
            timeout: 100,
            zone: 0,
            counters: None,
            uid: None,
            user: None,
        };
        let page = CtPage {
            total: 1,
            tracked: 3,
            age_ms: 5,
            autorefresh: false,
            rows: vec![r],
        };
        let body = String::from_utf8(answer(&Expect::View, &Reply::CtPage(page))).unwrap();
        for want in [
            "<name>count</name><value><int>1</int>",
            "<name>id</name><value><int>-294967296</int>",
            "<name>orig_ipv4_src</name><value><int>-1073741311</int>",
            "<name>orig_port_dst</name><value><int>80</int>",
            "<name>tcp_state</name><value><string>ESTABLISHED</string>",
            "<name>repl_ipv4_src</name>",
        ] {
            assert!(body.contains(want), "{want}\n{body}");
        }
        let k = Reply::CtKilled(CtKilled {
            killed: vec![1],
            missing: vec![2],
        });
        let f = String::from_utf8(answer(&Expect::Kill, &k)).unwrap();
        assert!(f.contains("unknown connection ids: 2 (killed: 1)"), "{f}");
        let e = Reply::error(ErrorKind::NoSuchId, "conntrack entry 9 is gone");
        let f = String::from_utf8(answer(&Expect::Done, &e)).unwrap();
        assert!(f.contains("<int>3</int>") && f.contains("9 is gone"), "{f}");
    }
}
