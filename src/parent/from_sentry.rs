//! The parent's side of the sentry channel (issue 10's stealth detection): the sentry's
//! settings from nanny.conf's `stealth` lines, its greeting, and the admission of its
//! messages — every probe report is checked against the settings it was given
//! (`sentry::report::check_report`) before it becomes a probe for the rules.
//!
//! Runs in the parent (root). The sentry reads raw packets from the network and holds
//! CAP_NET_RAW: everything it sends is treated as possibly forged. A bad report is a protocol
//! violation, like a bad verdict: the sentry is killed and restarted alone (roles.rs), and a
//! sentry that keeps failing is given up, loudly: stealth detection is not worth the daemon.

use std::net::SocketAddr;
use std::time::Instant;

use policy::sentry::{Proto, SentryConf, StealthPorts};
use privsep::proto::{ParentToSentry, PortSet, SentrySettings, SentryToParent, Watch};
use privsep::Role;

use super::workers::Failure;
use super::Parent;
use crate::log;

/// What the sentry is to watch, from the `stealth` lines; None when there are none. Several
/// lines for one protocol are merged: `below` lines into the widest limit with every `except`,
/// lists into one list (a list beside a `below` line adds nothing the `below` line lacks,
/// except ports at or above its limit, which then raise the limit to cover them).
pub fn settings(conf: &SentryConf) -> Result<Option<SentrySettings>, String> {
    let mut out = SentrySettings {
        tcp: None,
        udp: None,
    };
    for proto in [Proto::Tcp, Proto::Udp] {
        let mut list: Vec<u16> = Vec::new();
        let mut below: Option<(u16, Vec<u16>)> = None;
        for s in conf.stealth.iter().filter(|s| s.proto == proto) {
            match &s.ports {
                StealthPorts::List(ranges) => {
                    list.extend(ranges.iter().flat_map(|r| r.lo..=r.hi));
                }
                StealthPorts::Below { below: n, except } => {
                    let ex = except.iter().flat_map(|r| r.lo..=r.hi);
                    let (lim, exs) = below.get_or_insert((0, Vec::new()));
                    *lim = (*lim).max(*n);
                    exs.extend(ex);
                }
            }
        }
        let watch = match below {
            Some((n, except)) => {
                let except: Vec<u16> = except.into_iter().filter(|p| !list.contains(p)).collect();
                let n = list.iter().map(|p| p.saturating_add(1)).fold(n, u16::max);
                Some(Watch::Below {
                    below: n,
                    except: PortSet::new(except).map_err(|e| format!("stealth except: {e}"))?,
                })
            }
            None if !list.is_empty() => Some(Watch::Ports(
                PortSet::new(list).map_err(|e| format!("stealth ports: {e}"))?,
            )),
            None => None,
        };
        match proto {
            Proto::Tcp => out.tcp = watch,
            Proto::Udp => out.udp = watch,
        }
    }
    Ok((out.tcp.is_some() || out.udp.is_some()).then_some(out))
}

impl Parent {
    /// Admits one message from the sentry and acts on it.
    pub(super) fn on_sentry(&mut self, msg: SentryToParent) -> Result<(), Failure> {
        let (Some(w), Some(settings)) = (self.sentry.as_mut(), self.sentry_settings.as_ref())
        else {
            return Ok(());
        };
        let violation = |why: String| Failure::violation(Role::Sentry, why);
        match msg {
            SentryToParent::Hello { build } => w.greeted(&self.build, &build)?,
            _ if !w.hello => {
                return Err(violation("sentry message refused: before Hello".into()));
            }
            SentryToParent::Log(rec) => w.relay_log(rec)?,
            SentryToParent::Probe(r) => {
                if let Err(why) = crate::sentry::report::check_report(settings, &r) {
                    return Err(violation(format!("sentry Probe refused: {why}")));
                }
                self.classify_probe(
                    SocketAddr::new(r.src, 0),
                    SocketAddr::new(r.dst, r.port),
                    r.mode,
                    Instant::now(),
                )?;
            }
        }
        Ok(())
    }

    /// Starts the sentry (when `stealth` is configured) and greets it with its settings.
    pub(super) fn start_sentry(&mut self) -> crate::exit::Result<()> {
        let Some(settings) = self.sentry_settings.clone() else {
            return Ok(());
        };
        let s = match super::workers::start_one(&self.plan, Role::Sentry, None, None) {
            Ok(s) => s,
            Err(e) => return self.start_failed(Role::Sentry, e),
        };
        log::debug(2, &format!("started sentry={}", s.pid));
        let mut w = super::workers::Worker::new(s);
        let hello = ParentToSentry::Hello {
            build: self.build.clone(),
            settings,
        };
        let r = w.queue(&hello, "Hello");
        self.sentry = Some(w);
        if let Err(f) = r {
            self.worker_failed(f);
        }
        Ok(())
    }
}
