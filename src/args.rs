//! The command line: `portnanny [switches] CONFIGFILE`, parsed with getopts.
//!
//! Runs in the parent before anything else; the bytes are the operator's. Switches are the
//! original portnanny's (-l -v -V -p -C -M -S) plus -h and --version. A bad command line is a
//! usage error (exit 100) with a message that names the switch and the bad value.
//!
//! Worker roles are not parsed here: `main` dispatches the hidden `--privsep-role` argument
//! before getopts ever sees the command line (see [`RoleArgs`]).

use std::path::PathBuf;

use getopts::Options;

/// The program name used in the usage text and as the default log ident.
pub const DEFAULT_PROGNAME: &str = "portnanny";

/// The RLIMIT_STACK soft limit requested with -S.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackLimit {
    /// -S unlimited
    Unlimited,
    /// -S KIB: the limit in bytes (the switch takes KiB, like the original).
    Bytes(u64),
}

/// Everything the parent needs from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// -l: log to syslog (facility daemon) instead of stderr.
    pub syslog: bool,
    /// -v (1 each time) or -V NUM.
    pub verbosity: u8,
    /// -p NAME: program name for log lines and the syslog ident.
    pub progname: String,
    /// -C: check the three files, print every diagnostic, exit 0 or 1.
    pub check: bool,
    /// -M MAXTHREADS: overrides nanny.conf's maxthreads.
    pub maxthreads: Option<u32>,
    /// -S STACKSIZE|unlimited.
    pub stack: Option<StackLimit>,
    /// The nanny.conf path.
    pub config: PathBuf,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Run(Args),
    Help,
    Version,
    /// `--xmlrpc-passwd FILE USER`: set USER's XML-RPC password (see [`crate::xmlrpc_passwd`]).
    XmlrpcPasswd {
        file: PathBuf,
        user: String,
    },
    /// `--import-portsentry PORTSENTRY.CONF DIR [MODE...]` (see [`crate::import`]).
    ImportPortsentry {
        input: PathBuf,
        dir: PathBuf,
        modes: Vec<String>,
    },
}

/// A usage error: the message says what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn options() -> Options {
    let mut o = Options::new();
    o.optflag("l", "", "log to syslog (facility daemon) instead of stderr");
    o.optflagmulti("v", "", "verbose: log each connection (repeat for more)");
    o.optopt("V", "", "set the verbosity level to NUM", "NUM");
    o.optopt(
        "p",
        "",
        "program name for log lines and the syslog ident",
        "NAME",
    );
    o.optflag(
        "C",
        "",
        "check the configuration, rules and actions files and exit",
    );
    o.optopt(
        "M",
        "",
        "evaluate at most MAXTHREADS connections at once (overrides maxthreads)",
        "MAXTHREADS",
    );
    o.optopt(
        "S",
        "",
        "set the stack size soft limit in KiB, or 'unlimited'",
        "STACKSIZE",
    );
    o.optflag("h", "help", "print this help and exit");
    o.optflag("", "version", "print the version and exit");
    o.optflag(
        "",
        IMPORT_SWITCH,
        "(first argument, then PORTSENTRY.CONF DIR [MODE...]) write nanny.conf, nanny-rules \
         and nanny-actions into DIR doing what PortSentry does with that file in those modes \
         (tcp udp stcp atcp sudp audp; default tcp udp)",
    );
    o
}

/// The importer's switch; it must be the first argument, because the modes after it (`-tcp`,
/// `-stcp`...) are PortSentry's switches, not ours.
pub const IMPORT_SWITCH: &str = "import-portsentry";

/// The importer's synopsis.
pub fn import_synopsis() -> String {
    format!("usage: {DEFAULT_PROGNAME} --{IMPORT_SWITCH} PORTSENTRY.CONF DIR [MODE...]")
}

/// `--import-portsentry PORTSENTRY.CONF DIR [MODE...]`, taken as plain words (no getopts).
fn parse_import(rest: &[String]) -> Result<Command, UsageError> {
    match rest {
        [input, dir, modes @ ..] => Ok(Command::ImportPortsentry {
            input: PathBuf::from(input),
            dir: PathBuf::from(dir),
            modes: modes.to_vec(),
        }),
        _ => Err(UsageError(format!(
            "--{IMPORT_SWITCH} needs PORTSENTRY.CONF and DIR ({})",
            import_synopsis()
        ))),
    }
}

/// The password tool's switch; like the importer's, it must come first.
pub const XMLRPC_PASSWD_SWITCH: &str = "xmlrpc-passwd";

/// The one-line synopsis printed with usage errors.
pub fn synopsis() -> String {
    format!(
        "usage: {DEFAULT_PROGNAME} [-l] [-v | -V NUM] [-p NAME] [-C] [-M MAXTHREADS] \
         [-S STACKSIZE|unlimited] CONFIGFILE\n       \
         {DEFAULT_PROGNAME} --{IMPORT_SWITCH} PORTSENTRY.CONF DIR [MODE...]\n       \
         {DEFAULT_PROGNAME} --{XMLRPC_PASSWD_SWITCH} FILE USER < password"
    )
}

/// The full help text for -h.
pub fn help() -> String {
    options().usage(&format!(
        "{}\n\nA privilege-separated front end for TCP services.",
        synopsis()
    ))
}

/// Parses the switches and operands after the program name.
pub fn parse(argv: &[String]) -> Result<Command, UsageError> {
    if let Some(rest) = argv
        .split_first()
        .filter(|(first, _)| first.strip_prefix("--") == Some(IMPORT_SWITCH))
        .map(|(_, rest)| rest)
    {
        return parse_import(rest);
    }
    if let Some((_, rest)) = argv
        .split_first()
        .filter(|(first, _)| first.strip_prefix("--") == Some(XMLRPC_PASSWD_SWITCH))
    {
        return match rest {
            [file, user] => Ok(Command::XmlrpcPasswd {
                file: PathBuf::from(file),
                user: user.clone(),
            }),
            _ => Err(UsageError(format!(
                "--{XMLRPC_PASSWD_SWITCH} takes FILE and USER (the password is read from stdin)"
            ))),
        };
    }
    let m = options()
        .parse(argv)
        .map_err(|e| UsageError(e.to_string()))?;
    if m.opt_present("h") {
        return Ok(Command::Help);
    }
    if m.opt_present("version") {
        return Ok(Command::Version);
    }
    if m.opt_present(IMPORT_SWITCH) {
        return Err(UsageError(format!(
            "--{IMPORT_SWITCH} must be the first argument ({})",
            import_synopsis()
        )));
    }
    let mut verbosity = u8::try_from(m.opt_count("v")).unwrap_or(u8::MAX);
    if let Some(v) = m.opt_str("V") {
        verbosity = v
            .parse::<u8>()
            .map_err(|_| UsageError(format!("-V wants a number from 0 to 255, not '{v}'")))?;
    }
    let progname = match m.opt_str("p") {
        Some(p) if p.is_empty() || p.chars().any(|c| c.is_control() || c == ' ') => {
            return Err(UsageError(format!(
                "-p wants a name without spaces or control characters, not '{}'",
                p.escape_default()
            )))
        }
        Some(p) => p,
        None => DEFAULT_PROGNAME.to_owned(),
    };
    let maxthreads = match m.opt_str("M") {
        None => None,
        Some(s) => Some(s.parse::<u32>().map_err(|_| {
            UsageError(format!(
                "-M wants a number of threads (0 or more), not '{s}'"
            ))
        })?),
    };
    let stack = match m.opt_str("S") {
        None => None,
        Some(s) if s == "unlimited" => Some(StackLimit::Unlimited),
        Some(s) => {
            let kib = s.parse::<u64>().ok().filter(|k| *k > 0);
            let bytes = kib.and_then(|k| k.checked_mul(1024));
            match bytes {
                Some(b) => Some(StackLimit::Bytes(b)),
                None => {
                    return Err(UsageError(format!(
                        "-S wants a stack size in KiB (more than 0) or 'unlimited', not '{s}'"
                    )))
                }
            }
        }
    };
    let config = match m.free.as_slice() {
        [one] => PathBuf::from(one),
        [] => return Err(UsageError("missing CONFIGFILE".to_owned())),
        more => {
            return Err(UsageError(format!(
                "expected one CONFIGFILE, got {} operands",
                more.len()
            )))
        }
    };
    Ok(Command::Run(Args {
        syslog: m.opt_present("l"),
        verbosity,
        progname,
        check: m.opt_present("C"),
        maxthreads,
        stack,
        config,
    }))
}

/// The hidden worker command line the parent builds: `--privsep-role ROLE UID GID [CHROOT]`.
/// This is the part after ROLE (privsep's `worker_role` picks the role). Only the parent writes
/// it; a worker that cannot parse it exits 111 before touching anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleArgs {
    pub uid: u32,
    pub gid: u32,
    pub chroot: Option<PathBuf>,
}

impl RoleArgs {
    /// Parses the words after the role.
    pub fn parse(words: &[String]) -> Result<RoleArgs, UsageError> {
        let bad = || {
            UsageError(format!(
                "bad worker arguments {words:?}: want UID GID [CHROOT]"
            ))
        };
        match words {
            [uid, gid, rest @ ..] if rest.len() <= 1 => Ok(RoleArgs {
                uid: uid.parse().map_err(|_| bad())?,
                gid: gid.parse().map_err(|_| bad())?,
                chroot: rest.first().map(PathBuf::from),
            }),
            _ => Err(bad()),
        }
    }

    /// The words the parent passes after the role.
    pub fn to_words(&self) -> Vec<String> {
        let mut w = vec![self.uid.to_string(), self.gid.to_string()];
        if let Some(c) = &self.chroot {
            w.push(c.to_string_lossy().into_owned());
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn run(args: &[&str]) -> Args {
        match p(args) {
            Ok(Command::Run(a)) => a,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let a = run(&["nanny.conf"]);
        assert_eq!(
            a,
            Args {
                syslog: false,
                verbosity: 0,
                progname: "portnanny".into(),
                check: false,
                maxthreads: None,
                stack: None,
                config: PathBuf::from("nanny.conf"),
            }
        );
    }

    #[test]
    fn every_switch() {
        let a = run(&[
            "-l",
            "-V",
            "3",
            "-p",
            "pn2",
            "-C",
            "-M",
            "8",
            "-S",
            "512",
            "/etc/n.conf",
        ]);
        assert!(a.syslog && a.check);
        assert_eq!(a.verbosity, 3);
        assert_eq!(a.progname, "pn2");
        assert_eq!(a.maxthreads, Some(8));
        assert_eq!(a.stack, Some(StackLimit::Bytes(512 * 1024)));
        assert_eq!(a.config, PathBuf::from("/etc/n.conf"));
        assert_eq!(
            run(&["-S", "unlimited", "c"]).stack,
            Some(StackLimit::Unlimited)
        );
        assert_eq!(run(&["-v", "-v", "c"]).verbosity, 2);
        assert_eq!(run(&["-vV", "5", "c"]).verbosity, 5);
    }

    #[test]
    fn help_and_version() {
        assert_eq!(p(&["-h"]), Ok(Command::Help));
        assert_eq!(p(&["--help"]), Ok(Command::Help));
        assert_eq!(p(&["--version"]), Ok(Command::Version));
        assert!(help().contains("-S STACKSIZE"));
    }

    #[test]
    fn usage_errors() {
        let rows: &[(&[&str], &str)] = &[
            (&[], "missing CONFIGFILE"),
            (&["a", "b"], "expected one CONFIGFILE, got 2"),
            (&["-V", "x", "c"], "-V wants a number"),
            (&["-V", "256", "c"], "-V wants a number"),
            (&["-M", "-1", "c"], "-M wants a number"),
            (&["-S", "0", "c"], "-S wants a stack size"),
            (&["-S", "big", "c"], "-S wants a stack size"),
            (&["-S", "99999999999999999999", "c"], "-S wants"),
            (&["-p", "a b", "c"], "-p wants a name"),
            (&["-x", "c"], "Unrecognized option"),
            (&["-V"], "Argument to option 'V' missing"),
            (
                &["--import-portsentry", "p.conf"],
                "needs PORTSENTRY.CONF and DIR",
            ),
            (
                &["-v", "--import-portsentry", "p", "d"],
                "must be the first argument",
            ),
        ];
        for (args, want) in rows {
            match p(args) {
                Err(UsageError(m)) => assert!(m.contains(want), "{args:?}: {m}"),
                ok => panic!("{args:?} parsed: {ok:?}"),
            }
        }
    }

    #[test]
    fn import_portsentry() {
        assert_eq!(
            p(&["--import-portsentry", "ps.conf", "out", "-stcp", "udp"]),
            Ok(Command::ImportPortsentry {
                input: PathBuf::from("ps.conf"),
                dir: PathBuf::from("out"),
                modes: vec!["-stcp".into(), "udp".into()],
            })
        );
    }

    #[test]
    fn role_args_round_trip() {
        let r = RoleArgs {
            uid: 65534,
            gid: 65534,
            chroot: Some(PathBuf::from("/var/empty")),
        };
        assert_eq!(RoleArgs::parse(&r.to_words()), Ok(r));
        let r = RoleArgs {
            uid: 1,
            gid: 2,
            chroot: None,
        };
        assert_eq!(RoleArgs::parse(&r.to_words()), Ok(r));
        assert!(RoleArgs::parse(&["1".into()]).is_err());
        assert!(RoleArgs::parse(&["u".into(), "1".into()]).is_err());
        let four: Vec<String> = ["1", "2", "/", "/x"].map(String::from).to_vec();
        assert!(RoleArgs::parse(&four).is_err());
    }
}
