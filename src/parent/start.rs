//! Start-up of the parent, from the command line to a [`Parent`] ready to start its workers:
//! nanny.conf, the service user, the workers' credentials and chroot, the first policy
//! generation, the listeners and the signal handlers.
//!
//! Runs in the parent, privileged, before any worker exists (STYLE.md §2.6 steps 1–4). The
//! files are the administrator's; errors are exit 100 (configuration) or 111 (system).

use std::time::Instant;

use privsep::proto::{ClassName, ClassifierSettings, Gen, ResolverSettings};

use super::blocker::{unix_now, BlockConf, Blocker};
use super::blocks::Increment;
use super::confwatch::ConfWatch;
use super::conns::Conns;
use super::from_classifier::Shipped;
use super::generations::Generations;
use super::workers::{Restarts, WorkerPlan};
use super::{
    activation, from_sentry, listen, neverblock, sdnotify, setup, signals, spawn, traps, Parent,
    Settings, RELOAD_EVERY,
};
use crate::args::Args;
use crate::exit::{Error, Result};
use crate::log;

/// Resolver threads per classifier evaluation thread: the widest or-list of lookups that runs
/// in one round trip while every evaluation is busy. The resolver caps the total.
const RESOLVER_THREADS_PER_EVALUATION: u32 = 8;

/// Everything before the first worker starts: nanny.conf, users, the workers' plan, the first
/// policy, the listeners and the signal handlers, in the order STYLE.md §2.6 gives.
pub(super) fn prepare(args: &Args) -> Result<Parent> {
    // ORDER: systemd's variables leave the environment before set_env_policy captures it for
    // the services, and while no thread exists (activation.rs, sdnotify.rs).
    let inherited = activation::take()?;
    let notify = sdnotify::Notifier::from_env();
    super::memory::one_arena();
    if let Some(s) = args.stack {
        setup::set_stack(s);
    }
    match spawn::raise_nofile() {
        Ok(n) => log::debug(3, &format!("descriptor limit {n}")),
        Err(e) => log::warn(&format!("cannot raise the descriptor limit: {e}")),
    }
    let cfg = setup::load_conf(&args.config)?;
    let conf = &cfg.conf;
    let root = nix::unistd::geteuid().is_root();

    // Users, while /etc is visible (STYLE.md §2.6 step 2).
    let creds = match (&conf.user, root) {
        (Some(u), true) => Some(spawn::resolve_user(u).map_err(Error::Config)?),
        (Some(u), false) => {
            let c = spawn::resolve_user(u).map_err(Error::Config)?;
            if c.uid != nix::unistd::getuid().as_raw() {
                log::warn(&format!(
                    "not running as root: ignoring user {u}; services run as uid {}",
                    nix::unistd::getuid()
                ));
            }
            None
        }
        (None, true) => {
            // Like the original portnanny and inetd: no `user` means services run as root.
            log::warn("no user in nanny.conf: services will run as root");
            None
        }
        (None, false) => None,
    };
    spawn::set_env_policy(spawn::ServiceEnvPolicy::from_conf(conf));
    let plan = if root {
        let (name, uid, gid) = setup::privsep_user(conf)?;
        let dir =
            std::path::PathBuf::from(conf.chrootdir.as_deref().unwrap_or(setup::DEFAULT_CHROOT));
        setup::prepare_chroot(&dir)?;
        log::debug(
            2,
            &format!(
                "workers run as {name} (uid {uid}, gid {gid}); classifier root {}",
                dir.display()
            ),
        );
        WorkerPlan {
            uid,
            gid,
            chroot: Some(dir),
        }
    } else {
        log::warn(
            "not running as root: workers are not chrooted and keep this user's ids (development mode)",
        );
        WorkerPlan {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            chroot: None,
        }
    };

    let maxthreads = args.maxthreads.unwrap_or(conf.maxthreads);
    let aftermax = match &conf.aftermaxthreads {
        None => None,
        Some(c) => Some(
            ClassName::try_from(c.clone())
                .map_err(|e| Error::Config(format!("aftermaxthreads {c}: {e}")))?,
        ),
    };
    let settings = Settings {
        onfileerror: conf.onfileerror,
        substitutions: conf.substitutions,
        classifier: ClassifierSettings {
            // Sent as configured: 0 (threading off) means aftermaxthreads never applies, as in
            // portnanny 2; the classifier still evaluates on one thread.
            maxthreads,
            aftermaxthreads: aftermax,
            dropipafter_secs: conf.dropipafter,
            expireevery_secs: conf.expireevery,
            dns_timeout_ms: conf.dnstimeout_ms,
            identd_timeout_ms: conf.identdtimeout_ms,
            answerson_timeout_ms: conf.answersontimeout_ms,
            grouping: conf.grouping,
        },
        resolver: ResolverSettings {
            // Lookups block a resolver thread each, and one evaluation starts all the lookups
            // of an or-list at once (five dnsbl: zones, say). With fewer threads than busy
            // evaluations times that width, K zones cost K rounds instead of one (measured:
            // 8 evaluations x 5 zones at 200 ms took 1 s on 8 threads).
            threads: maxthreads
                .max(1)
                .saturating_mul(RESOLVER_THREADS_PER_EVALUATION),
            dns_timeout_ms: conf.dnstimeout_ms,
            identd_timeout_ms: conf.identdtimeout_ms,
            answerson_timeout_ms: conf.answersontimeout_ms,
            cache_ttl_secs: conf.cachettl_secs,
            cache_entries: conf.cachesize,
        },
    };

    // Bind (step 4).
    let lines: Vec<_> = conf.listens.iter().map(|l| (l.port, l.addr)).collect();
    // Sockets the service manager handed over take their lines; the rest is bound here.
    let rest = inherited.split(&lines, &trap_specs(&conf.sentry))?;
    let options = |port: u16, addr: Option<std::net::IpAddr>| {
        conf.listens
            .iter()
            .find(|l| l.port == port && l.addr == addr)
            .map(|l| conf.listen_options(l))
            .unwrap_or_default()
    };
    let own: Vec<_> = rest
        .lines
        .iter()
        .map(|(port, addr)| (*port, *addr, options(*port, *addr)))
        .collect();
    let (mut listeners, skipped) = listen::bind_all(&own)
        .map_err(|(addr, e)| Error::system(format!("cannot listen on {addr}"), e))?;
    for s in skipped {
        log::warn(&format!("no IPv6 on this host: not listening on {s}"));
    }
    let traps = traps::bind_all(&rest.traps).map_err(|e| Error::System(e.to_string()))?;
    listeners.extend(traps.tcp);
    // An inherited socket serves its listen line's options too (its backlog is the unit's).
    for mut l in rest.listeners {
        let line = conf
            .listens
            .iter()
            .find(|x| x.port == l.addr.port() && x.addr.is_none_or(|a| a == l.addr.ip()));
        if let Some(x) = line {
            listen::apply_options(&mut l, &conf.listen_options(x))
                .map_err(|e| Error::system(format!("options of inherited {}", l.addr), e))?;
        }
        listeners.push(l);
    }
    let blocker = Blocker::start(block_conf(&cfg), unix_now());
    let control = control_side(&conf.control, root)?;

    // Signals before the first child, so no SIGCHLD can be missed.
    let signals = signals::Signals::install().map_err(|e| Error::system("signal handlers", e))?;

    let policy = Generations::load_first(
        &cfg.conf_path,
        cfg.rules_path.clone(),
        cfg.actions_path.clone(),
        conf.aftermaxthreads.clone(),
        conf.substitutions,
        super::classhost::HostCtx {
            conf_path: cfg.conf_path.clone(),
            root,
        },
    )?;
    let p = Parent {
        build: privsep::build_id(),
        settings,
        listeners,
        accepting: true,
        accept_paused_until: None,
        turn: 0,
        exhausted: None,
        next_conn: 1,
        lifetime: 0,
        conns: Conns::default(),
        endings: super::ending::Endings::default(),
        control,
        netfilter: (conf.control.conntrack || conf.control.blockflush).then(|| {
            super::from_netfilter::NetfilterSide::new(
                conf.control.uid_mask,
                conf.control.blockflush,
            )
        }),
        counters: super::counters::Counters::default(),
        classifier: None,
        resolver: None,
        shipped: Shipped::new(Gen(1)),
        ever_ready: false,
        plan,
        restarts: Restarts::default(),
        group_started: None,
        failed_since_ship: 0,
        policy,
        blocker,
        udp_traps: rest.udp.into_iter().chain(traps.udp).collect(),
        sentry: None,
        sentry_settings: from_sentry::settings(&conf.sentry).map_err(Error::Config)?,
        conf_watch: ConfWatch::new(cfg.conf_path.clone()),
        next_reload: Instant::now() + RELOAD_EVERY,
        creds,
        last_log: None,
        status_wanted: false,
        signals,
        fatal: None,
        notify,
    };
    Ok(p)
}

/// The control socket, bound now (as root, before any worker), when nanny.conf has `control`.
fn control_side(
    c: &policy::control_conf::ControlConf,
    root: bool,
) -> Result<Option<super::from_control::ControlSide>> {
    let Some(path) = &c.socket else {
        return Ok(None);
    };
    let group = match &c.group {
        None => None,
        Some(g) => match nix::unistd::Group::from_name(g) {
            Ok(Some(grp)) => Some(grp.gid),
            Ok(None) => return Err(Error::Config(format!("controlgroup {g}: no such group"))),
            Err(e) => return Err(Error::Config(format!("controlgroup {g}: {e}"))),
        },
    };
    let socket = super::ctlsock::bind(std::path::Path::new(path), group).map_err(Error::System)?;
    let xmlrpc = super::xmlrpc::set_up(&c.xmlrpc).map_err(Error::System)?;
    let settings = privsep::proto::ControlSettings {
        xmlrpc: xmlrpc.as_ref().map(|(_, s)| s.clone()),
        group: group.map(|g| g.as_raw()),
        admin_uid: if root {
            0
        } else {
            nix::unistd::getuid().as_raw()
        },
    };
    let mut side = super::from_control::ControlSide::new(socket, settings);
    side.xmlrpc = xmlrpc.map(|(x, _)| x);
    Ok(Some(side))
}

/// One trap spec per port of every `trap` line.
fn trap_specs(s: &policy::sentry::SentryConf) -> Vec<traps::TrapSpec> {
    let mut out = Vec::new();
    for t in &s.traps {
        let proto = t.proto;
        for r in &t.ports {
            for port in r.lo..=r.hi {
                out.push(traps::TrapSpec {
                    proto,
                    port,
                    addr: t.addr,
                });
            }
        }
    }
    out
}

/// The blocker's settings from nanny.conf (relative files next to nanny.conf, like rulefile).
fn block_conf(cfg: &setup::Config) -> BlockConf {
    let s = &cfg.conf.sentry;
    let path = |f: &Option<String>| {
        f.as_ref()
            .map(|f| setup::resolve_relative(&cfg.conf_path, f))
    };
    let neverblock = match &s.neverblock {
        Some(n) => {
            if n.auto {
                let found: Vec<String> = neverblock::auto()
                    .iter()
                    .map(|(a, why)| format!("{a} ({why})"))
                    .collect();
                log::info(&format!("neverblock auto: {}", found.join(", ")));
            }
            neverblock::build(&n.set, n.auto)
        }
        None => policy::addr::AddrSet::new(),
    };
    BlockConf {
        blockfile: path(&s.blockfile),
        historyfile: path(&s.historyfile),
        hostsdeny: path(&s.hostsdeny),
        blockzone: s.blockzone.as_ref().map(|z| {
            (
                setup::resolve_relative(&cfg.conf_path, &z.file),
                z.zone.clone().unwrap_or_else(|| "blocked".to_owned()),
            )
        }),
        blockcmd: s.blockcmds.clone(),
        unblockcmd: s.unblockcmds.clone(),
        neverblock,
        budget: s.blockbudget,
        increment: s.blockincrement.as_ref().map(|i| Increment {
            factor: f64::from(i.factor),
            max: i.max_secs,
        }),
        kills: s.blockkills,
    }
}
