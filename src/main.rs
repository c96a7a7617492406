//! `portnanny [switches] CONFIGFILE` — and, with the hidden `--privsep-role ROLE UID GID
//! [CHROOT]` argument, the worker roles; `portnanny --import-portsentry PORTSENTRY.CONF DIR
//! [MODE...]` writes a PortSentry configuration's equivalent files and exits (see `import`).
//!
//! Runs first in every process. For the parent: parse the command line, set up logging, hand
//! over to `parent::run`. For a worker (re-exec'd by the parent through privsep::spawn_worker):
//! take exactly the descriptors it was given, drop privileges per the plan in argv (the parent
//! wrote it; privsep::drop verifies the result), then run the role. What each role receives
//! (its channels, fd 3 = parent first), whether it is chrooted, its rlimits and the capabilities
//! it keeps are its row of privsep's role table (`privsep::ROLES`).
//!
//! Exit codes: 0 normal, 100 usage or configuration error, 111 system error (s6 convention);
//! `-C` exits 0 when the files have no errors and 1 otherwise.

use std::ffi::OsString;
use std::process::ExitCode;

use nix::unistd::{getppid, Gid, Uid};
use portnanny::args::{self, Command, RoleArgs};
use portnanny::exit::{Error, Result, EXIT_SYSTEM};
use portnanny::fds::{cloexec_inherited, ensure_std_fds};
use portnanny::log;
use privsep::proto::{
    ClassifierToParent, ControlToParent, LogLevel, LogRecord, NetfilterToParent,
    ParentToClassifier, ParentToControl, ParentToNetfilter, ParentToResolver, ParentToSentry,
    ResolverToParent, SentryToParent, MAX_LOG_LINE,
};
use privsep::{Channel, DropPlan, Role};

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if let Some((role, rest)) = privsep::spawn::worker_role(&argv) {
        return worker_main(role, rest);
    }
    // Before anything is opened: standard fds exist, inherited ones do not leak to services.
    ensure_std_fds();
    let cloexec = cloexec_inherited();
    match run(&argv, cloexec) {
        Ok(code) => code,
        Err(e) => {
            match &e {
                Error::Usage(m) => {
                    log::stderr_line(args::DEFAULT_PROGNAME, m);
                    eprintln!("{}", args::synopsis());
                }
                other => {
                    for line in other.to_string().lines() {
                        log::crit(line);
                    }
                }
            }
            e.exit_code()
        }
    }
}

fn run(argv: &[OsString], cloexec: std::io::Result<()>) -> Result<ExitCode> {
    let mut words = Vec::with_capacity(argv.len());
    for a in argv.iter().skip(1) {
        match a.to_str() {
            Some(s) => words.push(s.to_owned()),
            None => return Err(Error::Usage(format!("argument is not UTF-8: {a:?}"))),
        }
    }
    let args = match args::parse(&words).map_err(|e| Error::Usage(e.0))? {
        Command::Help => {
            println!("{}", args::help());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Version => {
            println!("portnanny {}", env!("CARGO_PKG_VERSION"));
            return Ok(ExitCode::SUCCESS);
        }
        Command::XmlrpcPasswd { file, user } => {
            let stdin = std::io::stdin();
            if std::io::IsTerminal::is_terminal(&stdin) {
                eprintln!("password for {user} (echoed; or pipe it in):");
            }
            portnanny::xmlrpc_passwd::set_user(&file, &user, &mut stdin.lock())
                .map_err(Error::Usage)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::ImportPortsentry { input, dir, modes } => {
            portnanny::import::run(&input, &dir, &modes)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Run(a) => a,
    };
    if args.check {
        return portnanny::parent::setup::check(&args);
    }
    log::init(&args.progname, args.verbosity, args.syslog).map_err(Error::System)?;
    if let Err(e) = cloexec {
        return Err(Error::system(
            "marking inherited descriptors close-on-exec",
            e,
        ));
    }
    portnanny::parent::run(&args)
}

/// A worker role: descriptors, privilege drop, then the role's own main.
fn worker_main(role: Role, rest: &[OsString]) -> ExitCode {
    // ORDER: the parent pid first, before anything can make us outlive it (DropPlan checks it
    // after arming PDEATHSIG).
    let parent = getppid();
    let profile = role.profile();
    let fds = match privsep::take_worker_fds_as(profile.channels) {
        Ok(f) => f,
        Err(e) => {
            // No channel: not started by a parent (run by hand), so stderr is a terminal.
            log::stderr_line(&format!("portnanny {role}"), &format!("descriptors: {e}"));
            return ExitCode::from(EXIT_SYSTEM);
        }
    };
    let mut fds = fds.into_iter();
    let Some(fd3) = fds.next() else {
        return ExitCode::from(EXIT_SYSTEM);
    };
    // The second channel of the roles that have one (classifier and resolver).
    let fd4 = fds.next();
    // Stdout and stderr are /dev/null: what goes wrong from here on is said over the channel.
    let fail = |fd3, what: &str| {
        report_setup_failure(role, fd3, what);
        ExitCode::from(EXIT_SYSTEM)
    };
    let words: Option<Vec<String>> = rest.iter().map(|s| s.to_str().map(str::to_owned)).collect();
    let plan = match words.map(|w| RoleArgs::parse(&w)) {
        Some(Ok(p)) => p,
        Some(Err(e)) => return fail(fd3, &e.0),
        None => return fail(fd3, "worker arguments are not UTF-8"),
    };
    // ORDER: what needs a path is opened before the drop chroots the role: the sentry's
    // /proc/net tables (it re-reads the open files from offset 0 afterwards).
    let sentry_tables = match role {
        Role::Sentry => match portnanny::sentry::netstat::NetTables::open() {
            Ok(t) => Some(t),
            Err(e) => return fail(fd3, &format!("sentry: {e}")),
        },
        Role::Classifier | Role::Resolver | Role::Control | Role::Netfilter => None,
    };
    // The netfilter worker's uid-to-name map needs the passwd database, out of reach once
    // chrooted.
    let users = match role {
        Role::Netfilter => portnanny::netfilter::users::load(),
        _ => Default::default(),
    };
    let drop_plan = DropPlan::for_profile(
        profile,
        Uid::from_raw(plan.uid),
        Gid::from_raw(plan.gid),
        plan.chroot.clone(),
        parent,
    );
    if let Err(e) = privsep::demote(&drop_plan) {
        return fail(fd3, &format!("privilege drop failed: {e}"));
    }
    // The one place a role's name meets its main.
    match (role, fd4, sentry_tables) {
        (Role::Classifier, Some(fd4), _) => {
            portnanny::classifier::run(Channel::from_fd(fd3), Channel::from_fd(fd4))
        }
        (Role::Resolver, Some(fd4), _) => {
            portnanny::resolver::run(Channel::from_fd(fd3), Channel::from_fd(fd4))
        }
        (Role::Sentry, None, Some(tables)) => portnanny::sentry::run(Channel::from_fd(fd3), tables),
        (Role::Control, Some(listener), _) => match fds.next() {
            Some(xmlrpc) => portnanny::control::run(Channel::from_fd(fd3), listener, xmlrpc),
            None => fail(fd3, "descriptors do not match the role's row"),
        },
        (Role::Netfilter, None, _) => portnanny::netfilter::run(Channel::from_fd(fd3), users),
        // take_worker_fds returned exactly the row's channel count, so this is unreachable;
        // fail closed rather than panic.
        _ => fail(fd3, "descriptors do not match the role's row"),
    }
}

/// Tells the parent why this worker cannot start: its Hello (so the parent admits what follows)
/// and one LOG_CRIT record, then the caller exits 111.
fn report_setup_failure(role: Role, fd3: std::os::fd::OwnedFd, what: &str) {
    let build = privsep::build_id();
    let rec = LogRecord {
        level: LogLevel::Crit,
        verbosity: 0,
        text: log::cap(what, MAX_LOG_LINE).to_owned(),
    };
    match role {
        Role::Classifier => {
            let mut ch: Channel<ClassifierToParent, ParentToClassifier> = Channel::from_fd(fd3);
            let _ = ch
                .send(&ClassifierToParent::Hello { build })
                .and_then(|()| ch.send(&ClassifierToParent::Log(rec)));
        }
        Role::Resolver => {
            let mut ch: Channel<ResolverToParent, ParentToResolver> = Channel::from_fd(fd3);
            let _ = ch
                .send(&ResolverToParent::Hello { build })
                .and_then(|()| ch.send(&ResolverToParent::Log(rec)));
        }
        Role::Sentry => {
            let mut ch: Channel<SentryToParent, ParentToSentry> = Channel::from_fd(fd3);
            let _ = ch
                .send(&SentryToParent::Hello { build })
                .and_then(|()| ch.send(&SentryToParent::Log(rec)));
        }
        Role::Control => {
            let mut ch: Channel<ControlToParent, ParentToControl> = Channel::from_fd(fd3);
            let _ = ch
                .send(&ControlToParent::Hello { build })
                .and_then(|()| ch.send(&ControlToParent::Log(rec)));
        }
        Role::Netfilter => {
            let mut ch: Channel<NetfilterToParent, ParentToNetfilter> = Channel::from_fd(fd3);
            let _ = ch
                .send(&NetfilterToParent::Hello { build })
                .and_then(|()| ch.send(&NetfilterToParent::Log(rec)));
        }
    }
}
