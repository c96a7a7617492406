//! `portnanny --import-portsentry PORTSENTRY.CONF DIR [MODE...]`: turns a PortSentry 1.2
//! configuration into the nanny.conf, rules and actions files that do PortSentry's job.
//!
//! Runs in the parent's process, as whoever started it, before anything else; nothing is bound
//! and no worker is started. The bytes are the operator's portsentry.conf. The conversion
//! ([`parse_portsentry`], [`parse_modes`], [`convert`]) is pure; [`write_files`] is the only
//! I/O besides reading the input. The mapping is the table "A PortSentry configuration in
//! portnanny's terms" of docs/configuration.md; every option that has no counterpart, or that
//! the chosen modes do not use, becomes a comment in the generated nanny.conf saying why.
//!
//! Invariants: the three files are written only if none of them exists with other contents
//! (an identical one is left alone), so an import never clobbers a hand-edited file; errors in
//! the input or the modes are exit 100 (do not retry), I/O failures 111.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use policy::sentry::{parse_ports, PortList, PortRange};

use crate::exit::{Error, Result};

/// The generated file names, relative to DIR (nanny.conf names the other two relatively, so
/// the directory can be moved as a whole).
pub const CONF_NAME: &str = "nanny.conf";
pub const RULES_NAME: &str = "nanny-rules";
pub const ACTIONS_NAME: &str = "nanny-actions";

/// Every key PortSentry 1.2 reads from portsentry.conf.
pub const KNOWN_KEYS: &[&str] = &[
    "TCP_PORTS",
    "UDP_PORTS",
    "ADVANCED_PORTS_TCP",
    "ADVANCED_PORTS_UDP",
    "ADVANCED_EXCLUDE_TCP",
    "ADVANCED_EXCLUDE_UDP",
    "IGNORE_FILE",
    "HISTORY_FILE",
    "BLOCKED_FILE",
    "RESOLVE_HOST",
    "BLOCK_TCP",
    "BLOCK_UDP",
    "KILL_ROUTE",
    "KILL_HOSTS_DENY",
    "KILL_RUN_CMD",
    "KILL_RUN_CMD_FIRST",
    "SCAN_TRIGGER",
    "PORT_BANNER",
];

/// A parsed portsentry.conf: the last value of each known key and the line it came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PsConf {
    pub values: BTreeMap<&'static str, (String, u32)>,
}

impl PsConf {
    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|(v, _)| v.as_str())
    }

    fn line(&self, key: &str) -> u32 {
        self.values.get(key).map_or(0, |(_, l)| *l)
    }
}

/// Parses portsentry.conf: `KEY="VALUE"` lines (spaces around `=` allowed, as Debian's own
/// `RESOLVE_HOST = "0"` has them; an unquoted value is taken trimmed), `#` comment lines and
/// blank lines. A later key overrides an earlier one. Returns the values and the warnings
/// (unknown keys and malformed lines, each with its line number); those lines are skipped.
pub fn parse_portsentry(name: &str, text: &str) -> (PsConf, Vec<String>) {
    let mut conf = PsConf::default();
    let mut warnings = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let lineno = u32::try_from(n + 1).unwrap_or(u32::MAX);
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            warnings.push(format!(
                "{name}:{lineno}: warning: not a KEY=\"VALUE\" line, skipped"
            ));
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            // PortSentry takes what is between the quotes and ignores the rest of the line.
            Some(rest) => match rest.split_once('"') {
                Some((v, _)) => v,
                None => {
                    warnings.push(format!(
                        "{name}:{lineno}: warning: {key}'s value has no closing quote, skipped"
                    ));
                    continue;
                }
            },
            None => value,
        };
        match KNOWN_KEYS.iter().find(|k| **k == key) {
            Some(k) => {
                conf.values.insert(k, (value.to_owned(), lineno));
            }
            None => warnings.push(format!(
                "{name}:{lineno}: warning: unknown key '{}', skipped (PortSentry 1.2 knows {})",
                key.escape_default(),
                KNOWN_KEYS.join(", ")
            )),
        }
    }
    (conf, warnings)
}

/// PortSentry's TCP modes (`-tcp`, `-stcp`, `-atcp`); it runs at most one at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpMode {
    Tcp,
    Stcp,
    Atcp,
}

/// PortSentry's UDP modes (`-udp`, `-sudp`, `-audp`); at most one at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpMode {
    Udp,
    Sudp,
    Audp,
}

/// The modes PortSentry would be started in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modes {
    pub tcp: Option<TcpMode>,
    pub udp: Option<UdpMode>,
}

impl Modes {
    /// The words, as `mode:` spells them.
    fn words(&self) -> Vec<&'static str> {
        let mut w = Vec::new();
        match self.tcp {
            Some(TcpMode::Tcp) => w.push("tcp"),
            Some(TcpMode::Stcp) => w.push("stcp"),
            Some(TcpMode::Atcp) => w.push("atcp"),
            None => {}
        }
        match self.udp {
            Some(UdpMode::Udp) => w.push("udp"),
            Some(UdpMode::Sudp) => w.push("sudp"),
            Some(UdpMode::Audp) => w.push("audp"),
            None => {}
        }
        w
    }
}

/// Parses the MODE words (`tcp udp stcp atcp sudp audp`, each with or without a leading `-`).
/// None given: `tcp udp`, as Debian's /etc/default/portsentry starts it. Two TCP modes or two
/// UDP modes are an error, because PortSentry runs only one of each.
pub fn parse_modes(words: &[String]) -> std::result::Result<Modes, String> {
    if words.is_empty() {
        return Ok(Modes {
            tcp: Some(TcpMode::Tcp),
            udp: Some(UdpMode::Udp),
        });
    }
    let mut tcp: Option<(TcpMode, &str)> = None;
    let mut udp: Option<(UdpMode, &str)> = None;
    for w in words {
        let m = w.strip_prefix('-').unwrap_or(w);
        let (t, u) = match m {
            "tcp" => (Some(TcpMode::Tcp), None),
            "stcp" => (Some(TcpMode::Stcp), None),
            "atcp" => (Some(TcpMode::Atcp), None),
            "udp" => (None, Some(UdpMode::Udp)),
            "sudp" => (None, Some(UdpMode::Sudp)),
            "audp" => (None, Some(UdpMode::Audp)),
            _ => {
                return Err(format!(
                    "unknown PortSentry mode '{}': a mode is tcp, udp, stcp, atcp, sudp or audp",
                    w.escape_default()
                ))
            }
        };
        if let Some(t) = t {
            if let Some((_, first)) = tcp.filter(|(old, _)| *old != t) {
                return Err(format!(
                    "modes '{first}' and '{w}' both watch TCP: PortSentry runs only one TCP mode \
                     (tcp, stcp or atcp) at a time"
                ));
            }
            tcp = Some((t, w));
        }
        if let Some(u) = u {
            if let Some((_, first)) = udp.filter(|(old, _)| *old != u) {
                return Err(format!(
                    "modes '{first}' and '{w}' both watch UDP: PortSentry runs only one UDP mode \
                     (udp, sudp or audp) at a time"
                ));
            }
            udp = Some((u, w));
        }
    }
    Ok(Modes {
        tcp: tcp.map(|(t, _)| t),
        udp: udp.map(|(u, _)| u),
    })
}

/// The three generated files and the warnings the import printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub conf: String,
    pub rules: String,
    pub actions: String,
}

/// A port list value of portsentry.conf (`1,7,9`; PortSentry also tolerates spaces).
fn ports_of(ps: &PsConf, name: &str, key: &str) -> std::result::Result<Vec<PortRange>, String> {
    let Some(v) = ps.get(key) else {
        return Err(format!(
            "{name}: the modes asked for need {key}, which is not set"
        ));
    };
    let joined: String = v.chars().filter(|c| !c.is_whitespace()).collect();
    let joined = joined.trim_end_matches(',');
    parse_ports(joined).map_err(|(_, m)| format!("{name}:{}: {key}: {m}", ps.line(key)))
}

/// An optional port list (ADVANCED_EXCLUDE_*): empty when not set.
fn maybe_ports(ps: &PsConf, name: &str, key: &str) -> std::result::Result<Vec<PortRange>, String> {
    match ps.get(key) {
        None => Ok(Vec::new()),
        Some(v) if v.trim().is_empty() => Ok(Vec::new()),
        Some(_) => ports_of(ps, name, key),
    }
}

/// ADVANCED_PORTS_*: `below N`, N from 2 to 65535.
fn below_of(ps: &PsConf, name: &str, key: &str) -> std::result::Result<u16, String> {
    let Some(v) = ps.get(key) else {
        return Err(format!(
            "{name}: the modes asked for need {key}, which is not set"
        ));
    };
    match v.trim().parse::<u16>() {
        Ok(n) if n >= 2 => Ok(n),
        _ => Err(format!(
            "{name}:{}: {key} must be a port number from 2 to 65535, not '{}'",
            ps.line(key),
            v.escape_default()
        )),
    }
}

/// BLOCK_TCP/BLOCK_UDP: 0, 1 or 2 (PortSentry's default is 0 when the key is missing).
fn block_level(ps: &PsConf, name: &str, key: &str) -> std::result::Result<u8, String> {
    match ps.get(key).map(str::trim) {
        None => Ok(0),
        Some("0") => Ok(0),
        Some("1") => Ok(1),
        Some("2") => Ok(2),
        Some(v) => Err(format!(
            "{name}:{}: {key} must be 0, 1 or 2, not '{}'",
            ps.line(key),
            v.escape_default()
        )),
    }
}

/// A PortSentry command template as a `blockcmd` line: `$TARGET$` → `%(ip)s`, `$PORT$` →
/// `%(port)d`, `$MODE$` → `%(mode)s`, and a literal `%` doubled so it stays literal.
/// Unknown `$NAME$` tokens stay as written (PortSentry leaves them too); they are reported.
pub fn convert_command(cmd: &str) -> (String, Vec<String>) {
    let escaped = cmd.trim().replace('%', "%%");
    let out = escaped
        .replace("$TARGET$", "%(ip)s")
        .replace("$PORT$", "%(port)d")
        .replace("$MODE$", "%(mode)s");
    let mut unknown = Vec::new();
    let mut rest = out.as_str();
    while let Some(start) = rest.find('$') {
        let after = rest.get(start + 1..).unwrap_or_default();
        match after.find('$') {
            Some(end) => {
                let tok = after.get(..end).unwrap_or_default();
                if !tok.is_empty() && tok.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                    unknown.push(format!("${tok}$"));
                }
                rest = after.get(end + 1..).unwrap_or_default();
            }
            None => break,
        }
    }
    (out, unknown)
}

/// The command that undoes a KILL_ROUTE, when it is a route addition: `ip route add …` or
/// `route add …` with `add` turned into `del`. None for anything else (a firewall rule, a
/// script): its inverse cannot be known.
pub fn unblock_of(blockcmd: &str) -> Option<String> {
    let words: Vec<&str> = blockcmd.split_whitespace().collect();
    let prog = words.first()?.rsplit('/').next()?;
    let add_at = match prog {
        "ip" => {
            let r = words.iter().position(|w| *w == "route" || *w == "r")?;
            (words.get(r + 1) == Some(&"add")).then_some(r + 1)?
        }
        "route" => words.iter().position(|w| *w == "add")?,
        _ => return None,
    };
    let mut out: Vec<&str> = words.clone();
    *out.get_mut(add_at)? = "del";
    Some(out.join(" "))
}

/// A loopback port for the one `listen` nanny.conf requires (C006): the highest port that no
/// TCP trap or stealth list uses and that a `below` watch does not cover.
fn listen_port(tcp_lists: &[&[PortRange]], below: Option<u16>) -> Option<u16> {
    (1..=65535u16)
        .rev()
        .filter(|p| below.is_none_or(|b| *p >= b))
        .find(|p| !tcp_lists.iter().any(|l| l.iter().any(|r| r.contains(*p))))
}

/// The text of a `msg`: `%` doubled; ` : ` would end the text in the actions file, so it
/// becomes ` - ` (reported).
fn banner_text(b: &str) -> (String, bool) {
    let t = b.trim().replace('%', "%%");
    let cut = t.contains(" : ");
    (t.replace(" : ", " - "), cut)
}

/// Builds the three files for `modes` from `ps` (read from `name`). Notes that are not errors
/// are returned as warnings and also written as comments.
pub fn convert(
    name: &str,
    ps: &PsConf,
    modes: Modes,
) -> std::result::Result<(Output, Vec<String>), String> {
    let mut warnings = Vec::new();
    let mut conf = String::new();
    let mut notes: Vec<String> = Vec::new();
    let mode_words = modes.words().join(" ");
    let header = format!(
        "# Generated by portnanny --import-portsentry from {name} for PortSentry's modes: \
         {mode_words}.\n"
    );
    let _ = write!(conf, "{header}");
    conf.push_str(&format!(
        "rulefile {RULES_NAME}\nactionfile {ACTIONS_NAME}\n"
    ));

    // The watches.
    let mut watch = String::new();
    let mut tcp_lists: Vec<Vec<PortRange>> = Vec::new();
    let mut tcp_below = None;
    let is_set = |k: &str| ps.values.contains_key(k);
    let unused = |k: &str, why: &str, notes: &mut Vec<String>| {
        if is_set(k) {
            notes.push(format!("{k} (line {}) dropped: {why}", ps.line(k)));
        }
    };
    match modes.tcp {
        Some(TcpMode::Tcp) => {
            let p = ports_of(ps, name, "TCP_PORTS")?;
            let _ = writeln!(watch, "# TCP_PORTS, mode tcp");
            let _ = writeln!(watch, "trap tcp {}", PortList(&p));
            tcp_lists.push(p);
        }
        Some(TcpMode::Stcp) => {
            let p = ports_of(ps, name, "TCP_PORTS")?;
            let _ = writeln!(watch, "# TCP_PORTS, mode stcp");
            let _ = writeln!(watch, "stealth tcp {}", PortList(&p));
            tcp_lists.push(p);
        }
        Some(TcpMode::Atcp) => {
            let n = below_of(ps, name, "ADVANCED_PORTS_TCP")?;
            let ex = maybe_ports(ps, name, "ADVANCED_EXCLUDE_TCP")?;
            let _ = writeln!(
                watch,
                "# ADVANCED_PORTS_TCP and ADVANCED_EXCLUDE_TCP, mode atcp"
            );
            if ex.is_empty() {
                let _ = writeln!(watch, "stealth tcp below {n}");
            } else {
                let _ = writeln!(watch, "stealth tcp below {n} except {}", PortList(&ex));
            }
            tcp_below = Some(n);
        }
        None => {}
    }
    match modes.udp {
        Some(UdpMode::Udp) => {
            let p = ports_of(ps, name, "UDP_PORTS")?;
            let _ = writeln!(watch, "# UDP_PORTS, mode udp");
            let _ = writeln!(watch, "trap udp {}", PortList(&p));
        }
        Some(UdpMode::Sudp) => {
            let p = ports_of(ps, name, "UDP_PORTS")?;
            let _ = writeln!(watch, "# UDP_PORTS, mode sudp");
            let _ = writeln!(watch, "stealth udp {}", PortList(&p));
        }
        Some(UdpMode::Audp) => {
            let n = below_of(ps, name, "ADVANCED_PORTS_UDP")?;
            let ex = maybe_ports(ps, name, "ADVANCED_EXCLUDE_UDP")?;
            let _ = writeln!(
                watch,
                "# ADVANCED_PORTS_UDP and ADVANCED_EXCLUDE_UDP, mode audp"
            );
            if ex.is_empty() {
                let _ = writeln!(watch, "stealth udp below {n}");
            } else {
                let _ = writeln!(watch, "stealth udp below {n} except {}", PortList(&ex));
            }
        }
        None => {}
    }
    // Options the chosen modes do not read (PortSentry would not read them either).
    let classic_tcp = matches!(modes.tcp, Some(TcpMode::Tcp | TcpMode::Stcp));
    let classic_udp = matches!(modes.udp, Some(UdpMode::Udp | UdpMode::Sudp));
    if !classic_tcp {
        unused(
            "TCP_PORTS",
            "only the tcp and stcp modes use it",
            &mut notes,
        );
    }
    if !classic_udp {
        unused(
            "UDP_PORTS",
            "only the udp and sudp modes use it",
            &mut notes,
        );
    }
    if modes.tcp != Some(TcpMode::Atcp) {
        for k in ["ADVANCED_PORTS_TCP", "ADVANCED_EXCLUDE_TCP"] {
            unused(k, "only the atcp mode uses it", &mut notes);
        }
    }
    if modes.udp != Some(UdpMode::Audp) {
        for k in ["ADVANCED_PORTS_UDP", "ADVANCED_EXCLUDE_UDP"] {
            unused(k, "only the audp mode uses it", &mut notes);
        }
    }

    // The one listen nanny.conf requires; PortSentry serves nothing.
    let lists: Vec<&[PortRange]> = tcp_lists.iter().map(Vec::as_slice).collect();
    let Some(lport) = listen_port(&lists, tcp_below) else {
        return Err(format!(
            "{name}: every TCP port is watched, so there is no port left for the loopback \
             listen nanny.conf requires"
        ));
    };
    conf.push_str(
        "# nanny.conf requires a 'listen' (C006), but PortSentry serves nothing: this one is on\n\
         # loopback only, on a port nothing here watches; no rule gives its connections a class,\n\
         # so they are closed at once.\n",
    );
    let _ = writeln!(conf, "listen {lport}@127.0.0.1");
    conf.push_str(&watch);

    // Files.
    if let Some(f) = ps.get("BLOCKED_FILE") {
        let _ = writeln!(
            conf,
            "# BLOCKED_FILE: PortSentry keeps one file per mode (the name plus .tcp, .udp...);\n\
             # portnanny keeps one blocked set for every mode, restored at start."
        );
        let _ = writeln!(conf, "blockfile {}", f.trim());
    }
    if let Some(f) = ps.get("HISTORY_FILE") {
        let _ = writeln!(conf, "historyfile {}", f.trim());
    }

    // Commands, in PortSentry's order: KILL_RUN_CMD before KILL_ROUTE with
    // KILL_RUN_CMD_FIRST=1, after it otherwise.
    let mut route_lines = String::new();
    if let Some(kr) = ps.get("KILL_ROUTE").filter(|v| !v.trim().is_empty()) {
        let (cmd, unk) = convert_command(kr);
        for u in unk {
            warnings.push(format!(
                "{name}:{}: KILL_ROUTE: {u} is not $TARGET$, $PORT$ or $MODE$; kept as written",
                ps.line("KILL_ROUTE")
            ));
        }
        let _ = writeln!(route_lines, "# KILL_ROUTE");
        let _ = writeln!(route_lines, "blockcmd {cmd}");
        match unblock_of(&cmd) {
            Some(un) => {
                let _ = writeln!(route_lines, "unblockcmd {un}");
            }
            None => {
                let _ = writeln!(
                    route_lines,
                    "# No unblockcmd: KILL_ROUTE is not an 'ip route add' or 'route add' command,\n\
                     # so its inverse is not known; add one by hand if blocks should expire."
                );
            }
        }
    }
    let mut run_lines = String::new();
    if let Some(rc) = ps.get("KILL_RUN_CMD").filter(|v| !v.trim().is_empty()) {
        let (cmd, unk) = convert_command(rc);
        for u in unk {
            warnings.push(format!(
                "{name}:{}: KILL_RUN_CMD: {u} is not $TARGET$, $PORT$ or $MODE$; kept as written",
                ps.line("KILL_RUN_CMD")
            ));
        }
        let _ = writeln!(
            run_lines,
            "# KILL_RUN_CMD (PortSentry ran it through a shell; here there is no shell)"
        );
        let _ = writeln!(run_lines, "blockcmd {cmd}");
    }
    let run_first = ps.get("KILL_RUN_CMD_FIRST").map(str::trim) == Some("1");
    if is_set("KILL_RUN_CMD_FIRST") {
        let where_ = if run_first { "before" } else { "after" };
        let _ = writeln!(
            conf,
            "# KILL_RUN_CMD_FIRST={}: block commands run in the order written, so KILL_RUN_CMD\n\
             # comes {where_} KILL_ROUTE.",
            ps.get("KILL_RUN_CMD_FIRST").unwrap_or_default().trim()
        );
    }
    if run_first {
        conf.push_str(&run_lines);
        conf.push_str(&route_lines);
    } else {
        conf.push_str(&route_lines);
        conf.push_str(&run_lines);
    }
    if ps
        .get("KILL_HOSTS_DENY")
        .is_some_and(|v| !v.trim().is_empty())
    {
        let _ = writeln!(
            conf,
            "# KILL_HOSTS_DENY: portnanny writes its own hosts.deny line (and removes it on\n\
             # unblock); the template '{}' is dropped.",
            ps.get("KILL_HOSTS_DENY").unwrap_or_default().trim()
        );
        let _ = writeln!(conf, "hostsdeny /etc/hosts.deny");
    }
    conf.push_str(
        "# Never block this machine's own addresses, gateways, nameservers and loopback.\n\
         neverblock auto\n",
    );

    // Rules and actions.
    let trigger = match ps.get("SCAN_TRIGGER").map(str::trim) {
        None => 0,
        Some(v) => v.parse::<u32>().map_err(|_| {
            format!(
                "{name}:{}: SCAN_TRIGGER must be a whole number, not '{}'",
                ps.line("SCAN_TRIGGER"),
                v.escape_default()
            )
        })?,
    };
    let hits = match trigger.checked_add(1) {
        Some(n) if trigger > 0 => format!(" AND hits: {n}"),
        _ => String::new(),
    };
    if trigger > 0 {
        notes.push(format!(
            "SCAN_TRIGGER={trigger} (line {}) became 'hits: {}': portnanny counts distinct trapped ports \
             within an hour, PortSentry counted connections since it started",
            ps.line("SCAN_TRIGGER"),
            trigger + 1
        ));
    }
    let mut rules = String::new();
    let mut actions = String::new();
    let _ = write!(rules, "{header}");
    let _ = write!(actions, "{header}");
    if let Some(f) = ps.get("IGNORE_FILE").filter(|v| !v.trim().is_empty()) {
        let _ = writeln!(
            rules,
            "# IGNORE_FILE: first, so an ignored address is never a scanner. (neverblock takes\n\
             # addresses, not a file; copy them there too to refuse blocks outright.)"
        );
        let _ = writeln!(rules, "ignored: ipfile: {}", f.trim());
        let _ = writeln!(
            actions,
            "ignored: drop : log ignored %(ip)s on port %(port)d (IGNORE_FILE)"
        );
    }
    let block_word = |level: u8| match level {
        1 => " : block",
        2 => " : block cmdonly",
        _ => "",
    };
    let tcp_level = match modes.tcp {
        Some(_) => block_level(ps, name, "BLOCK_TCP")?,
        None => 0,
    };
    let udp_level = match modes.udp {
        Some(_) => block_level(ps, name, "BLOCK_UDP")?,
        None => 0,
    };
    if tcp_level == 0 && udp_level == 0 && !(route_lines.is_empty() && run_lines.is_empty()) {
        notes.push(
            "BLOCK_TCP and BLOCK_UDP are 0 for these modes: no class blocks, so the block \
             commands above only run once 'block' is added to a class in nanny-actions"
                .to_owned(),
        );
    }
    // PortSentry's 2 runs KILL_RUN_CMD only; 'block cmdonly' runs every blockcmd line.
    let cmdonly: Vec<&str> = [("BLOCK_TCP", tcp_level), ("BLOCK_UDP", udp_level)]
        .into_iter()
        .filter(|(_, l)| *l == 2)
        .map(|(k, _)| k)
        .collect();
    if !cmdonly.is_empty() && !route_lines.is_empty() {
        let msg = format!(
            "{}=2: 'block cmdonly' runs every blockcmd line, KILL_ROUTE's included; PortSentry \
             ran only KILL_RUN_CMD (remove KILL_ROUTE's lines if that matters)",
            cmdonly.join(" and ")
        );
        warnings.push(format!("{name}: warning: {msg}"));
        notes.push(msg);
    }
    if modes.tcp.is_some() {
        let level = tcp_level;
        let _ = writeln!(rules, "scanner-tcp: trap AND mode: tcp,stcp,atcp{hits}");
        let banner = match (modes.tcp, ps.get("PORT_BANNER")) {
            (Some(TcpMode::Tcp), Some(b)) if !b.trim().is_empty() => {
                let (t, cut) = banner_text(b);
                if cut {
                    warnings.push(format!(
                        "{name}:{}: PORT_BANNER: ' : ' ends a text in the actions file; \
                         written as ' - '",
                        ps.line("PORT_BANNER")
                    ));
                }
                format!("msg {t}%(nl)s : ")
            }
            (_, Some(b)) if !b.trim().is_empty() => {
                notes.push(format!(
                    "PORT_BANNER (line {}) dropped: a stealth mode completes no connection, \
                     so there is nobody to send it to",
                    ps.line("PORT_BANNER")
                ));
                "drop : ".to_owned()
            }
            _ => "drop : ".to_owned(),
        };
        let _ = writeln!(
            actions,
            "scanner-tcp: {banner}log attackalert: %(ip)s touched trapped TCP port \
             %(port)d{}",
            block_word(level)
        );
    } else {
        unused("BLOCK_TCP", "no TCP mode was asked for", &mut notes);
        unused("PORT_BANNER", "no TCP mode was asked for", &mut notes);
    }
    if modes.udp.is_some() {
        let level = udp_level;
        let _ = writeln!(rules, "scanner-udp: trap AND mode: udp,sudp,audp{hits}");
        let _ = writeln!(
            actions,
            "scanner-udp: drop : log attackalert: %(ip)s touched trapped UDP port %(port)d{}",
            block_word(level)
        );
    } else {
        unused("BLOCK_UDP", "no UDP mode was asked for", &mut notes);
    }
    if is_set("RESOLVE_HOST") {
        notes.push(format!(
            "RESOLVE_HOST (line {}) dropped: portnanny looks a host name up only when a rule or \
             a substitution needs it, and these need none",
            ps.line("RESOLVE_HOST")
        ));
    }
    let relative: Vec<&str> = ["IGNORE_FILE", "HISTORY_FILE", "BLOCKED_FILE"]
        .into_iter()
        .filter(|k| {
            ps.get(k)
                .is_some_and(|f| !f.trim().is_empty() && !f.trim().starts_with('/'))
        })
        .collect();
    if !relative.is_empty() {
        notes.push(format!(
            "{} relative: PortSentry took such names from its working directory, portnanny \
             takes them from nanny.conf's directory",
            relative.join(", ")
        ));
    }
    if !notes.is_empty() {
        conf.push_str("# Not carried over, or changed:\n");
        for n in &notes {
            let _ = writeln!(conf, "# - {n}");
        }
    }
    Ok((
        Output {
            conf,
            rules,
            actions,
        },
        warnings,
    ))
}

/// Writes the three files into `dir` (created if missing). Refuses, before writing anything,
/// when one of them exists with other contents; an identical one is left as it is. Returns a
/// line per file saying what was done.
pub fn write_files(dir: &Path, out: &Output) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::system(dir.display(), e))?;
    let files: [(PathBuf, &str); 3] = [
        (dir.join(CONF_NAME), &out.conf),
        (dir.join(RULES_NAME), &out.rules),
        (dir.join(ACTIONS_NAME), &out.actions),
    ];
    let mut same = [false; 3];
    for (i, (path, text)) in files.iter().enumerate() {
        match std::fs::read(path) {
            Ok(old) if old == text.as_bytes() => {
                if let Some(s) = same.get_mut(i) {
                    *s = true;
                }
            }
            Ok(_) => {
                return Err(Error::Config(format!(
                    "{} already exists and differs from what the import would write; not \
                     overwriting it (nothing was written): move it away or import into another \
                     directory",
                    path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::system(path.display(), e)),
        }
    }
    let mut done = Vec::new();
    for ((path, text), same) in files.iter().zip(same) {
        if same {
            done.push(format!("{}: unchanged (identical)", path.display()));
            continue;
        }
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::system(path.display(), e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::system(path.display(), e))?;
        done.push(format!("{}: written", path.display()));
    }
    Ok(done)
}

/// The whole command: read, convert, write, and say what happened (warnings on stderr, one
/// line per file on stdout).
pub fn run(input: &Path, dir: &Path, mode_words: &[String]) -> Result<()> {
    let modes = parse_modes(mode_words).map_err(Error::Usage)?;
    let name = input.display().to_string();
    let text = std::fs::read(input).map_err(|e| Error::config(&name, e))?;
    let text = String::from_utf8_lossy(&text);
    let (ps, mut warnings) = parse_portsentry(&name, &text);
    let (out, more) = convert(&name, &ps, modes).map_err(Error::Config)?;
    warnings.extend(more);
    // -C reads every ipfile: and reports a missing one as an error; Debian's init script
    // builds PortSentry's ignore file at start, so it may well not exist yet.
    if let Some(f) = ps
        .get("IGNORE_FILE")
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        // A relative name is relative to nanny.conf's directory for portnanny.
        if !dir.join(f).exists() {
            warnings.push(format!(
                "{name}:{}: warning: IGNORE_FILE {f} does not exist; 'portnanny -C' and the \
                 'ignored' rule need it (an address list, one or more addresses a line)",
                ps.line("IGNORE_FILE")
            ));
        }
    }
    for w in &warnings {
        crate::log::stderr_line(crate::args::DEFAULT_PROGNAME, w);
    }
    for line in write_files(dir, &out)? {
        println!("{line}");
    }
    println!("check with: portnanny -C {}", dir.join(CONF_NAME).display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(w: &[&str]) -> std::result::Result<Modes, String> {
        parse_modes(&w.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn modes() {
        let rows: &[(&[&str], Option<TcpMode>, Option<UdpMode>)] = &[
            (&[], Some(TcpMode::Tcp), Some(UdpMode::Udp)),
            (&["-stcp"], Some(TcpMode::Stcp), None),
            (&["audp", "-atcp"], Some(TcpMode::Atcp), Some(UdpMode::Audp)),
            (&["tcp", "-tcp"], Some(TcpMode::Tcp), None),
        ];
        for (w, t, u) in rows {
            assert_eq!(m(w), Ok(Modes { tcp: *t, udp: *u }), "{w:?}");
        }
        assert!(m(&["tcp", "stcp"]).is_err_and(|e| e.contains("only one TCP mode")));
        assert!(m(&["udp", "-audp"]).is_err_and(|e| e.contains("only one UDP mode")));
        assert!(m(&["xtcp"]).is_err_and(|e| e.contains("unknown PortSentry mode")));
    }

    #[test]
    fn parse_lines() {
        let (c, w) = parse_portsentry(
            "p",
            "# c\n\nTCP_PORTS=\"1,2\"\nRESOLVE_HOST = \"0\"\nFOO=\"x\"\nTCP_PORTS=\"3\"\nbad\n",
        );
        assert_eq!(c.get("TCP_PORTS"), Some("3"));
        assert_eq!(c.line("TCP_PORTS"), 6);
        assert_eq!(c.get("RESOLVE_HOST"), Some("0"));
        assert_eq!(w.len(), 2);
        assert!(w[0].starts_with("p:5: warning: unknown key 'FOO'"), "{w:?}");
        assert!(w[1].starts_with("p:7:"), "{w:?}");
    }

    #[test]
    fn commands() {
        let rows = [
            (
                "/sbin/route add -host $TARGET$ reject",
                "/sbin/route add -host %(ip)s reject",
                Some("/sbin/route del -host %(ip)s reject"),
            ),
            (
                "/sbin/ip route add blackhole $TARGET$",
                "/sbin/ip route add blackhole %(ip)s",
                Some("/sbin/ip route del blackhole %(ip)s"),
            ),
            (
                "/sbin/iptables -I INPUT -s $TARGET$ -j DROP",
                "/sbin/iptables -I INPUT -s %(ip)s -j DROP",
                None,
            ),
            (
                "/bin/echo 100% $TARGET$ $PORT$ $MODE$",
                "/bin/echo 100%% %(ip)s %(port)d %(mode)s",
                None,
            ),
        ];
        for (ps, want, un) in rows {
            let (got, unk) = convert_command(ps);
            assert_eq!(got, want);
            assert!(unk.is_empty());
            assert_eq!(unblock_of(&got).as_deref(), un, "{ps}");
        }
        assert_eq!(convert_command("x $FOO$").1, vec!["$FOO$".to_owned()]);
    }

    #[test]
    fn listen_port_avoids_watches() {
        let l = [PortRange {
            lo: 65000,
            hi: 65535,
        }];
        assert_eq!(listen_port(&[&l], None), Some(64999));
        assert_eq!(listen_port(&[], Some(1024)), Some(65535));
    }
}
