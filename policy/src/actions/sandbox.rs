//! The per-class sandbox directives of the actions file (an extension to portnanny 2, after
//! xinetd's per-service settings): `user USER[:GROUP]`, `nice N`, `rlimit NAME VALUE`,
//! `umask OOO`, `timeout TIMESPEC`, `chdir DIR`.
//!
//! Runs wherever the actions file is parsed (parent, classifier, `-C`); the text is the
//! administrator's. Only the shape of each value is checked here (no I/O): whether the user,
//! the group and the directory exist is for the parent, which resolves them when it loads the
//! file, from its own copy of the table. The values apply only to programs the class runs
//! (`run`, `failrun`); nothing in them ever comes from a verdict.

use serde::{Deserialize, Serialize};

/// Where a directive's argument is written: (line, column, width), for the parent's host
/// checks, which report at the text as written (not at a class that `see`s it).
pub type Pos = (u32, u32, u32);

/// A value and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct At<T> {
    pub value: T,
    pub pos: Pos,
}

/// `user USER[:GROUP]`: GROUP, when given, replaces the user's primary group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSpec {
    pub user: String,
    pub group: Option<String>,
}

/// The resources `rlimit` may set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RlimitName {
    /// Address space, bytes.
    As,
    /// CPU time, seconds.
    Cpu,
    /// Open descriptors.
    Nofile,
    /// Processes (and threads) of the service's user.
    Nproc,
    /// Core file size, bytes.
    Core,
    /// Largest file written, bytes.
    Fsize,
}

impl RlimitName {
    pub const ALL: [RlimitName; 6] = [
        RlimitName::As,
        RlimitName::Cpu,
        RlimitName::Nofile,
        RlimitName::Nproc,
        RlimitName::Core,
        RlimitName::Fsize,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RlimitName::As => "as",
            RlimitName::Cpu => "cpu",
            RlimitName::Nofile => "nofile",
            RlimitName::Nproc => "nproc",
            RlimitName::Core => "core",
            RlimitName::Fsize => "fsize",
        }
    }

    fn from_name(s: &str) -> Option<RlimitName> {
        RlimitName::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// One `rlimit`: soft and hard limits, None meaning unlimited (`SOFT:HARD`, or one value for
/// both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    pub name: RlimitName,
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// A class's sandbox, merged along its `see` chain like the other directives: the first class
/// in the chain that gives a directive wins; `rlimit`s are merged resource by resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sandbox {
    pub user: Option<At<UserSpec>>,
    /// Absolute niceness, -20 to 19 (as xinetd's `nice`, not relative to the parent's).
    pub nice: Option<i32>,
    pub rlimits: Vec<Rlimit>,
    pub umask: Option<u32>,
    /// Seconds a service may run before its process group gets SIGTERM (more than 0).
    pub timeout: Option<u64>,
    /// An absolute directory, entered after the user's ids are taken.
    pub chdir: Option<At<String>>,
}

impl Sandbox {
    pub fn is_empty(&self) -> bool {
        self == &Sandbox::default()
    }

    /// Fills what this class does not give from `seen` (the class it sees, already merged).
    pub(super) fn merge_from(&mut self, seen: &Sandbox) {
        if self.user.is_none() {
            self.user.clone_from(&seen.user);
        }
        self.nice = self.nice.or(seen.nice);
        self.umask = self.umask.or(seen.umask);
        self.timeout = self.timeout.or(seen.timeout);
        if self.chdir.is_none() {
            self.chdir.clone_from(&seen.chdir);
        }
        for r in &seen.rlimits {
            if !self.rlimits.iter().any(|o| o.name == r.name) {
                self.rlimits.push(*r);
            }
        }
    }
}

/// Directive names of the sandbox, in the order the documentation lists them.
pub const SANDBOX_DIRECTIVES: [&str; 6] = ["user", "nice", "rlimit", "umask", "timeout", "chdir"];

/// One parsed sandbox directive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Value {
    User(UserSpec),
    Nice(i32),
    Rlimit(Rlimit),
    Umask(u32),
    Timeout(u64),
    Chdir(String),
}

/// Parses the argument of sandbox directive `directive`; Err is the diagnostic's message
/// (error A022).
pub(super) fn parse(directive: &str, arg: &str) -> Result<Value, String> {
    match directive {
        "user" => parse_user(arg).map(Value::User),
        "nice" => {
            let n = arg
                .strip_prefix('+')
                .unwrap_or(arg)
                .parse::<i32>()
                .ok()
                .filter(|n| (-20..=19).contains(n));
            n.map(Value::Nice)
                .ok_or_else(|| format!("'nice' takes a whole number from -20 to 19, not '{arg}'"))
        }
        "rlimit" => parse_rlimit(arg).map(Value::Rlimit),
        "umask" => {
            let ok =
                (1..=4).contains(&arg.len()) && arg.bytes().all(|b| (b'0'..=b'7').contains(&b));
            match u32::from_str_radix(arg, 8) {
                Ok(n) if ok && n <= 0o777 => Ok(Value::Umask(n)),
                _ => Err(format!(
                    "'umask' takes an octal mode from 000 to 777 (as in 022 or 0027), not '{arg}'"
                )),
            }
        }
        "timeout" => match crate::timespec::parse_timespec(arg) {
            Ok(0) => Err("'timeout 0s' would end every service at once".to_owned()),
            Ok(s) => Ok(Value::Timeout(s)),
            Err(e) => Err(format!(
                "'timeout' takes a time (as in 30s, 10m or 2h), not '{arg}': {e}"
            )),
        },
        "chdir" => {
            if !arg.starts_with('/') {
                return Err(format!(
                    "'chdir' takes an absolute directory (starting with '/'), not '{arg}'"
                ));
            }
            if arg.contains('\0') {
                return Err("'chdir' directory contains a NUL byte".to_owned());
            }
            Ok(Value::Chdir(arg.to_owned()))
        }
        _ => Err(format!("'{directive}' is not a sandbox directive")),
    }
}

/// Whether `s` can be a user or group name (what useradd accepts, loosely: no spaces, no ':',
/// printable).
fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

fn parse_user(arg: &str) -> Result<UserSpec, String> {
    let (user, group) = match arg.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (arg, None),
    };
    if !name_ok(user) || group.is_some_and(|g| !name_ok(g)) {
        return Err(format!(
            "'user' takes a user name, optionally ':' and a group name (as in nobody or \
             nobody:nogroup), not '{arg}'"
        ));
    }
    Ok(UserSpec {
        user: user.to_owned(),
        group: group.map(str::to_owned),
    })
}

fn parse_rlimit(arg: &str) -> Result<Rlimit, String> {
    let words: Vec<&str> = arg.split_whitespace().collect();
    let names = || {
        RlimitName::ALL
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let [name, value] = words.as_slice() else {
        return Err(format!(
            "'rlimit' takes a resource ({}) and a value, not '{arg}'",
            names()
        ));
    };
    let Some(r) = RlimitName::from_name(name) else {
        return Err(format!(
            "unknown resource '{name}' for 'rlimit' (known: {})",
            names()
        ));
    };
    let (soft, hard) = match value.split_once(':') {
        Some((s, h)) => (limit_value(r, s)?, limit_value(r, h)?),
        None => {
            let v = limit_value(r, value)?;
            (v, v)
        }
    };
    // None is unlimited, above every number.
    let above = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, Some(_)) => true,
        (Some(x), Some(y)) => x > y,
        _ => false,
    };
    if above(soft, hard) {
        return Err(format!(
            "'rlimit {name} {value}': the soft limit is above the hard limit"
        ));
    }
    if r == RlimitName::Nofile && hard.is_none() {
        // Linux refuses an unlimited RLIMIT_NOFILE (it is capped by fs.nr_open).
        return Err("'rlimit nofile' cannot be unlimited; give a number".to_owned());
    }
    Ok(Rlimit {
        name: r,
        soft,
        hard,
    })
}

/// One limit: `unlimited`; for cpu a TIMESPEC or a number of seconds; for sizes (as, core,
/// fsize) bytes with an optional k, m or g (powers of 1024); for counts (nofile, nproc) a
/// plain number.
fn limit_value(r: RlimitName, text: &str) -> Result<Option<u64>, String> {
    if text == "unlimited" {
        return Ok(None);
    }
    let what = match r {
        RlimitName::Cpu => "a number of seconds, a time (as in 30s or 5m) or 'unlimited'",
        RlimitName::As | RlimitName::Core | RlimitName::Fsize => {
            "a number of bytes with an optional k, m or g (as in 512m) or 'unlimited'"
        }
        RlimitName::Nofile | RlimitName::Nproc => "a whole number or 'unlimited'",
    };
    let bad = || format!("'rlimit {}' takes {what}, not '{text}'", r.as_str());
    let (digits, mult) = match (r, text.chars().last()) {
        (RlimitName::Cpu, Some('s' | 'm' | 'h' | 'd')) => {
            return crate::timespec::parse_timespec(text)
                .map(Some)
                .map_err(|_| bad());
        }
        (RlimitName::As | RlimitName::Core | RlimitName::Fsize, Some(c @ ('k' | 'm' | 'g'))) => {
            let shift = match c {
                'k' => 10,
                'm' => 20,
                _ => 30,
            };
            (&text[..text.len() - 1], 1u64 << shift)
        }
        _ => (text, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        // RLIM_INFINITY is u64::MAX: a number may not mean "unlimited" by accident.
        .filter(|n| *n < u64::MAX)
        .map(Some)
        .ok_or_else(|| format!("'rlimit {}': '{text}' is too large", r.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rl(name: RlimitName, soft: Option<u64>, hard: Option<u64>) -> Value {
        Value::Rlimit(Rlimit { name, soft, hard })
    }

    #[test]
    fn rows() {
        use RlimitName::*;
        // directive, argument, want (Err: a word the message must contain)
        let rows: &[(&str, &str, Result<Value, &str>)] = &[
            (
                "user",
                "nobody",
                Ok(Value::User(UserSpec {
                    user: "nobody".into(),
                    group: None,
                })),
            ),
            (
                "user",
                "www:web",
                Ok(Value::User(UserSpec {
                    user: "www".into(),
                    group: Some("web".into()),
                })),
            ),
            ("user", "a:", Err("user name")),
            ("user", ":g", Err("user name")),
            ("user", "a:b:c", Err("user name")),
            ("nice", "10", Ok(Value::Nice(10))),
            ("nice", "-20", Ok(Value::Nice(-20))),
            ("nice", "+19", Ok(Value::Nice(19))),
            ("nice", "20", Err("-20 to 19")),
            ("nice", "-21", Err("-20 to 19")),
            ("nice", "x", Err("-20 to 19")),
            ("umask", "022", Ok(Value::Umask(0o22))),
            ("umask", "0027", Ok(Value::Umask(0o27))),
            ("umask", "7", Ok(Value::Umask(7))),
            ("umask", "0777", Ok(Value::Umask(0o777))),
            ("umask", "1000", Err("octal")),
            ("umask", "08", Err("octal")),
            ("umask", "00000", Err("octal")),
            ("umask", "", Err("octal")),
            ("timeout", "1s", Ok(Value::Timeout(1))),
            ("timeout", "2h", Ok(Value::Timeout(7200))),
            ("timeout", "0s", Err("at once")),
            ("timeout", "10", Err("time")),
            ("chdir", "/srv/x", Ok(Value::Chdir("/srv/x".into()))),
            ("chdir", "srv", Err("absolute")),
            ("rlimit", "nofile 64", Ok(rl(Nofile, Some(64), Some(64)))),
            (
                "rlimit",
                "as 512m",
                Ok(rl(As, Some(512 << 20), Some(512 << 20))),
            ),
            (
                "rlimit",
                "fsize 1k:2k",
                Ok(rl(Fsize, Some(1024), Some(2048))),
            ),
            ("rlimit", "core 0", Ok(rl(Core, Some(0), Some(0)))),
            ("rlimit", "cpu 5m", Ok(rl(Cpu, Some(300), Some(300)))),
            ("rlimit", "cpu 10", Ok(rl(Cpu, Some(10), Some(10)))),
            ("rlimit", "cpu 10:unlimited", Ok(rl(Cpu, Some(10), None))),
            ("rlimit", "nproc unlimited", Ok(rl(Nproc, None, None))),
            ("rlimit", "nofile unlimited", Err("cannot be unlimited")),
            ("rlimit", "nofile 1k", Err("whole number")),
            ("rlimit", "as 1t", Err("bytes")),
            ("rlimit", "stack 1m", Err("unknown resource 'stack'")),
            ("rlimit", "as", Err("a resource")),
            ("rlimit", "as 1 2", Err("a resource")),
            ("rlimit", "as 2:1", Err("above the hard")),
            ("rlimit", "as unlimited:1", Err("above the hard")),
            ("rlimit", "as 99999999999g", Err("too large")),
            ("rlimit", "nproc 18446744073709551615", Err("too large")),
        ];
        for (d, arg, want) in rows {
            let got = parse(d, arg);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(w, g, "{d} {arg}"),
                (Err(word), Err(m)) => assert!(m.contains(word), "{d} {arg}: {m}"),
                _ => panic!("{d} {arg}: got {got:?}, want {want:?}"),
            }
        }
    }
}
