//! Carrying out blocks: the one place that changes the blocked set and keeps everything that
//! mirrors it in step — the blockfile, the historyfile, hosts.deny, the rbldnsd zone and the
//! block and unblock commands — and refuses the blocks it must not do (neverblock addresses,
//! forgeable detections over the budget).
//!
//! Runs in the parent. Requests come from admitted verdicts and probe reports (their address
//! is validated; a worker never names a file or a command); the files and commands are the
//! administrator's. A file that cannot be written is logged and the block still holds in
//! memory: blocking matters more than its bookkeeping. SIGUSR1 never touches any of this.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use policy::addr::AddrSet;

use super::blockcmd::{self, Job, Runner, Vars};
use super::blocks::{self, Block, Blocked, BlockedSet, Budget, Increment, Request};
use super::hostsdeny;
use crate::log;

/// What the blocked set is kept in and does (from nanny.conf).
#[derive(Clone, Debug, Default)]
pub struct BlockConf {
    pub blockfile: Option<PathBuf>,
    pub historyfile: Option<PathBuf>,
    pub hostsdeny: Option<PathBuf>,
    /// The zone file and the zone's name.
    pub blockzone: Option<(PathBuf, String)>,
    /// Command lines, run in order for every new block / every unblock.
    pub blockcmd: Vec<String>,
    pub unblockcmd: Vec<String>,
    pub neverblock: AddrSet,
    /// New blocks per minute from forgeable detections (stealth scans, UDP).
    pub budget: u32,
    pub increment: Option<Increment>,
    /// A block also ends the blocked address's running services (`blockkills on`).
    pub kills: bool,
}

/// What became of a block request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Blocked(Block),
    Extended(Block),
    AlreadyBlocked,
    /// Not done: the address is in neverblock.
    Never,
    /// Not done: the forgeable-detection budget for this minute is spent.
    OverBudget,
}

/// Blocks listed in the status report, newest first.
const STATUS_RECENT: usize = 10;

/// Seconds since the Unix epoch: blocks end at wall-clock times that must survive a restart.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub struct Blocker {
    conf: BlockConf,
    set: BlockedSet,
    budget: Budget,
    /// Budget refusals: (the minute, how many in it), for the log's summary.
    refused: (u64, u64),
    runner: Runner,
    /// The budget's warnings, for the unit tests to read (they go to the log otherwise).
    #[cfg(test)]
    warned: Vec<String>,
}

impl Blocker {
    /// Restores the blocked set from the blockfile (blocks that ended while the daemon was
    /// down are unblocked now, commands included); a missing blockfile is an empty set.
    pub fn start(conf: BlockConf, now: u64) -> Blocker {
        let mut set = BlockedSet::default();
        let mut ended = Vec::new();
        if let Some(path) = &conf.blockfile {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let name = path.display().to_string();
                    let (s, expired, errors) = BlockedSet::parse(&name, &text, now);
                    for e in errors {
                        log::err(&format!("{e}; line skipped"));
                    }
                    set = s;
                    ended = expired;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::err(&format!("{}: cannot read: {e}", path.display())),
            }
        }
        let budget = Budget::new(conf.budget);
        let mut b = Blocker {
            conf,
            set,
            budget,
            refused: (0, 0),
            runner: Runner::default(),
            #[cfg(test)]
            warned: Vec::new(),
        };
        if !b.set.is_empty() {
            log::notice(&format!("restored {} blocked addresses", b.set.len()));
        }
        for blk in ended {
            b.ended(&blk, "expire", now);
        }
        b.persist();
        b
    }

    /// Whether blocking is configured or anything is blocked (the status report says so).
    pub fn in_use(&self) -> bool {
        let c = &self.conf;
        !self.set.is_empty()
            || c.blockfile.is_some()
            || c.historyfile.is_some()
            || c.hostsdeny.is_some()
            || c.blockzone.is_some()
            || !c.blockcmd.is_empty()
            || !c.neverblock.is_empty()
    }

    pub fn set(&self) -> &BlockedSet {
        &self.set
    }

    pub fn runner(&mut self) -> &mut Runner {
        &mut self.runner
    }

    /// Blocks `req.addr` unless it must not be; `forgeable` detections spend the budget.
    pub fn block(&mut self, req: Request, forgeable: bool, now: u64) -> Outcome {
        let probe = unrecorded(&req, now);
        if self.conf.neverblock.contains(req.addr) {
            self.history(now, "refuse", &probe);
            log::warn(&format!(
                "not blocking {}: it is in neverblock ({})",
                req.addr, req.reason
            ));
            return Outcome::Never;
        }
        if forgeable && !self.set.contains(req.addr) && !self.budget.take(now) {
            self.over_budget(&probe, "blocking", now);
            return Outcome::OverBudget;
        }
        match self.set.block(req, now, self.conf.increment) {
            Blocked::Unchanged => Outcome::AlreadyBlocked,
            // The history line is written before the log line, so whoever reads the log sees
            // a block the historyfile already holds.
            Blocked::Extended(b) => {
                self.history(now, "extend", &b);
                log::notice(&format!("block of {} extended: {}", b.addr, until(&b)));
                self.persist();
                Outcome::Extended(b)
            }
            Blocked::New(b) => {
                self.history(now, "block", &b);
                log::notice(&format!(
                    "blocked {} ({}, port {} {}): {}",
                    b.addr,
                    log::escape(&b.reason),
                    b.port,
                    if b.mode.is_empty() { "-" } else { &b.mode },
                    until(&b)
                ));
                self.mirror(&b, true);
                self.persist();
                self.commands(&self.conf.blockcmd.clone(), "blockcmd", &b, now);
                Outcome::Blocked(b)
            }
        }
    }

    /// Whether a block ends the address's running services.
    pub fn kills(&self) -> bool {
        self.conf.kills
    }

    /// `block cmdonly` (PortSentry's BLOCK_TCP 2): runs the block commands for `req` and
    /// nothing else; neverblock still holds, and so does the budget: the commands are the
    /// block (a firewall rule, a blackhole route), so a forged sweep must not run them for
    /// every forged address either (`forgeable` as for [`Blocker::block`]).
    /// Returns whether the commands were started.
    pub fn commands_only(&mut self, req: &Request, forgeable: bool, now: u64) -> bool {
        let b = unrecorded(req, now);
        if self.conf.neverblock.contains(req.addr) {
            self.history(now, "refuse", &b);
            log::warn(&format!(
                "not running the block commands for {}: it is in neverblock ({})",
                req.addr, req.reason
            ));
            return false;
        }
        if forgeable && !self.budget.take(now) {
            self.over_budget(&b, "running the block commands for", now);
            return false;
        }
        self.history(now, "command", &b);
        self.commands(&self.conf.blockcmd.clone(), "blockcmd", &b, now);
        true
    }

    /// Records a request the budget refused. A forged sweep means thousands of these: the
    /// first of each minute is logged, the rest counted (every one is in the history file).
    fn over_budget(&mut self, probe: &Block, doing: &str, now: u64) {
        self.history(now, "refuse", probe);
        let minute = now / 60;
        if self.refused.0 != minute {
            if self.refused.1 > 1 {
                log::warn(&format!(
                    "{} more blocks refused by the block budget in the previous minute",
                    self.refused.1 - 1
                ));
            }
            self.refused = (minute, 0);
        }
        if self.refused.1 == 0 {
            let line = format!(
                "not {doing} {}: more than {} new blocks this minute from forgeable \
                 detections ({}); further refusals this minute are counted",
                probe.addr,
                self.conf.budget,
                log::escape(&probe.reason)
            );
            log::warn(&line);
            #[cfg(test)]
            self.warned.push(line);
        }
        self.refused.1 += 1;
    }

    /// Ends the block of `addr` by hand.
    pub fn unblock(&mut self, addr: IpAddr, now: u64) -> Option<Block> {
        let b = self.set.unblock(addr)?;
        self.ended(&b, "unblock", now);
        self.persist();
        Some(b)
    }

    /// Ends the blocks whose time is up; returns their addresses.
    pub fn expire(&mut self, now: u64) -> Vec<IpAddr> {
        let gone = self.set.expire(now);
        for b in &gone {
            self.ended(b, "expire", now);
        }
        if !gone.is_empty() {
            self.persist();
        }
        gone.into_iter().map(|b| b.addr).collect()
    }

    /// When the next block ends (unix seconds).
    pub fn next_expiry(&self) -> Option<u64> {
        self.set.next_expiry()
    }

    /// The loop's once-a-second work: block commands past their time, blocks that ended
    /// (returned, for the classifier's mirror).
    pub fn tick(&mut self, now: std::time::Instant) -> Vec<IpAddr> {
        self.runner.check_timeout(now);
        if self.next_expiry().is_some_and(|t| t <= unix_now()) {
            self.expire(unix_now())
        } else {
            Vec::new()
        }
    }

    /// The running block command's output and pid, for the loop's epoll set.
    pub fn runner_fd(&self) -> Option<(std::os::fd::BorrowedFd<'_>, nix::unistd::Pid)> {
        self.runner.fd()
    }

    /// When the running block command is killed.
    pub fn runner_deadline(&self) -> Option<std::time::Instant> {
        self.runner.deadline()
    }

    /// Status lines (SIGUSR2): the blocked count and the most recent blocks.
    pub fn status(&self, now: u64) -> Vec<String> {
        let mut recent: Vec<&Block> = self.set.iter().collect();
        recent.sort_by_key(|b| std::cmp::Reverse(b.since));
        let mut out = vec![format!("status: {} addresses blocked", self.set.len())];
        for b in recent.iter().take(STATUS_RECENT) {
            let left = b
                .remaining(now)
                .map_or_else(|| "forever".to_owned(), |s| format!("{s}s left"));
            out.push(format!(
                "status: blocked {} since {} ({left}; port {} {}; {})",
                b.addr,
                b.since,
                b.port,
                if b.mode.is_empty() { "-" } else { &b.mode },
                log::escape(&b.reason)
            ));
        }
        out
    }

    fn ended(&mut self, b: &Block, event: &str, now: u64) {
        self.history(now, event, b);
        log::notice(&format!("{event}: {} is no longer blocked", b.addr));
        self.mirror(b, false);
        self.commands(&self.conf.unblockcmd.clone(), "unblockcmd", b, now);
    }

    fn commands(&mut self, lines: &[String], what: &str, b: &Block, now: u64) {
        let vars = Vars {
            ip: b.addr,
            port: b.port,
            mode: b.mode.clone(),
            until: b.until,
            seconds: b.remaining(now),
        };
        let mut jobs = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let name = format!("{what} {} for {}", i + 1, b.addr);
            match blockcmd::render(line, &vars) {
                Ok(argv) => jobs.push(Job { argv, what: name }),
                Err(e) => log::err(&format!("{name}: {e}")),
            }
        }
        self.runner.push(jobs);
    }

    /// hosts.deny and the zone follow the set.
    fn mirror(&self, b: &Block, add: bool) {
        if let Some(p) = &self.conf.hostsdeny {
            if let Err(e) = hostsdeny::update(p, b.addr, add) {
                log::err(&format!("{}: {e}", p.display()));
            }
        }
        if let Some((p, zone)) = &self.conf.blockzone {
            if let Err(e) = hostsdeny::write_zone(p, zone, self.set.iter()) {
                log::err(&format!("{}: {e}", p.display()));
            }
        }
    }

    fn persist(&self) {
        if let Some(p) = &self.conf.blockfile {
            if let Err(e) = blocks::write_atomic(p, self.set.to_text().as_bytes()) {
                log::err(&format!(
                    "{}: cannot write the blocked set: {e}",
                    p.display()
                ));
            }
        }
    }

    fn history(&self, now: u64, event: &str, b: &Block) {
        let Some(p) = &self.conf.historyfile else {
            return;
        };
        let line = blocks::history_line(now, event, b);
        let r = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(p)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = r {
            log::err(&format!("{}: {e}", p.display()));
        }
    }
}

/// A block as requested, for history lines and commands of blocks the set does not hold
/// (refused ones, `block cmdonly`).
fn unrecorded(req: &Request, now: u64) -> Block {
    Block {
        addr: req.addr,
        since: now,
        until: req.seconds.map(|s| now.saturating_add(s)),
        port: req.port,
        mode: req.mode.clone(),
        repeat: 0,
        reason: req.reason.clone(),
    }
}

fn until(b: &Block) -> String {
    match b.until {
        None => "forever".to_owned(),
        Some(u) => format!("until {u} ({} s)", u.saturating_sub(b.since)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("pn-blocker-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn req(ip: &str, seconds: Option<u64>) -> Request {
        Request {
            addr: ip.parse().unwrap(),
            port: 31337,
            mode: "tcp".into(),
            reason: "trap".into(),
            seconds,
        }
    }

    fn conf(d: &Dir) -> BlockConf {
        BlockConf {
            blockfile: Some(d.0.join("blocks")),
            historyfile: Some(d.0.join("history")),
            hostsdeny: Some(d.0.join("hosts.deny")),
            blockzone: Some((d.0.join("zone"), "bl.test".into())),
            neverblock: AddrSet::from_ranges([policy::addr::parse_addrspec("192.0.2.1").unwrap()]),
            budget: 1,
            ..BlockConf::default()
        }
    }

    #[test]
    fn a_block_reaches_every_mirror_and_survives_a_restart() {
        let d = dir("mirrors");
        let mut b = Blocker::start(conf(&d), 1000);
        assert!(matches!(
            b.block(req("192.0.2.7", Some(600)), false, 1000),
            Outcome::Blocked(_)
        ));
        assert_eq!(
            b.block(req("192.0.2.7", Some(60)), false, 1001),
            Outcome::AlreadyBlocked
        );
        let read = |f: &str| std::fs::read_to_string(d.0.join(f)).unwrap();
        assert!(read("blocks").contains("block 192.0.2.7 1000 1600 31337 tcp 1 trap"));
        assert_eq!(read("hosts.deny"), "ALL: 192.0.2.7 # portnanny\n");
        assert!(read("zone").contains("192.0.2.7 :127.0.0.2:trap"));
        assert_eq!(
            read("history"),
            "1000 block 192.0.2.7 31337 tcp 1600 trap\n"
        );

        // A restart with time left keeps it; after its end, the restart unblocks it.
        let again = Blocker::start(conf(&d), 1200);
        assert!(again.set().contains("192.0.2.7".parse().unwrap()));
        let mut later = Blocker::start(conf(&d), 2000);
        assert!(later.set().is_empty());
        assert_eq!(read("hosts.deny"), "");
        assert!(!read("zone").contains("192.0.2.7"));
        assert!(read("history").ends_with("2000 expire 192.0.2.7 31337 tcp 1600 trap\n"));
        assert!(!read("blocks").contains("block 192.0.2.7"));
        assert!(read("blocks").contains("offence 192.0.2.7 1 1000"));
        assert!(later.expire(3000).is_empty());
    }

    #[test]
    fn neverblock_and_the_budget_refuse_and_are_recorded() {
        let d = dir("refuse");
        let mut b = Blocker::start(conf(&d), 1000);
        assert_eq!(b.block(req("192.0.2.1", None), false, 1000), Outcome::Never);
        assert!(matches!(
            b.block(req("198.51.100.1", None), true, 1000),
            Outcome::Blocked(_)
        ));
        assert_eq!(
            b.block(req("198.51.100.2", None), true, 1001),
            Outcome::OverBudget,
            "budget 1 per minute"
        );
        assert!(
            matches!(
                b.block(req("198.51.100.3", None), false, 1002),
                Outcome::Blocked(_)
            ),
            "a full connect is not forgeable: no budget"
        );
        let h = std::fs::read_to_string(d.0.join("history")).unwrap();
        assert!(h.contains("1000 refuse 192.0.2.1 "), "{h}");
        assert!(h.contains("1001 refuse 198.51.100.2 "), "{h}");
        assert_eq!(b.set().len(), 2);
        assert!(b.unblock("198.51.100.1".parse().unwrap(), 1100).is_some());
        assert_eq!(b.set().len(), 1);
    }

    /// The administrator's own script: it appends its arguments (each value one argument) as a
    /// line to the returned log.
    fn logging_script(d: &Dir) -> (std::path::PathBuf, std::path::PathBuf) {
        let out = d.0.join("cmds.log");
        let script = d.0.join("log.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho \"$@\" >> {}\n", out.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        (script, out)
    }

    #[test]
    fn block_and_unblock_commands_run_with_the_blocks_values() {
        let d = dir("cmds");
        let (script, out) = logging_script(&d);
        let mut c = conf(&d);
        c.blockcmd = vec![format!(
            "{} add %(ip)s %(port)s %(seconds)s",
            script.display()
        )];
        c.unblockcmd = vec![format!("{} del %(ip)s", script.display())];
        let mut b = Blocker::start(c, 1000);
        b.block(req("192.0.2.7", Some(600)), false, 1000);
        b.unblock("192.0.2.7".parse().unwrap(), 1001);
        run_commands(&mut b);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "add 192.0.2.7 31337 600\ndel 192.0.2.7\n"
        );
    }

    /// Runs the queued block commands to the end (bounded: 10 s).
    fn run_commands(b: &mut Blocker) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !b.runner().is_idle() && std::time::Instant::now() < end {
            b.runner().on_output();
            // Stand in for the daemon's SIGCHLD reaper (only our own child: tests run in
            // threads of one process).
            if let Some(pid) = b.runner().running_pid() {
                if let Ok(st) =
                    nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                {
                    if st.pid().is_some() {
                        b.runner().on_exit(pid, st);
                    }
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// `block cmdonly` from a forgeable detection spends the block budget like a block: past
    /// the limit the command does not run, the refusal is in the history and logged once a
    /// minute. A TCP trap's (completed handshake) never counts; neverblock still holds.
    #[test]
    fn commands_only_honours_the_block_budget() {
        let d = dir("cmdonly-budget");
        let (script, out) = logging_script(&d);
        let mut c = conf(&d);
        c.blockcmd = vec![format!("{} %(ip)s %(mode)s", script.display())];
        let mut b = Blocker::start(c, 1000);
        let udp = |ip: &str| Request {
            mode: "udp".into(),
            ..req(ip, Some(600))
        };
        assert!(
            b.commands_only(&udp("198.51.100.1"), true, 1000),
            "within the budget"
        );
        assert!(
            !b.commands_only(&udp("198.51.100.2"), true, 1001),
            "budget 1 per minute: limit + 1 is refused"
        );
        assert!(!b.commands_only(&udp("198.51.100.3"), true, 1002));
        assert!(
            b.commands_only(&req("198.51.100.4", Some(600)), false, 1003),
            "a TCP trap is not forgeable: no budget"
        );
        assert!(
            !b.commands_only(&udp("192.0.2.1"), true, 1004),
            "neverblock"
        );
        // The budget is shared with full blocks: this minute's is spent.
        assert_eq!(
            b.block(udp("198.51.100.5"), true, 1005),
            Outcome::OverBudget
        );
        // A new minute, a new budget.
        assert!(b.commands_only(&udp("198.51.100.6"), true, 1020));
        run_commands(&mut b);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "198.51.100.1 udp\n198.51.100.4 tcp\n198.51.100.6 udp\n"
        );
        // One warning for the minute's refusals (the rest are counted), then the count.
        assert_eq!(
            b.warned,
            vec![
                "not running the block commands for 198.51.100.2: more than 1 new blocks this \
                 minute from forgeable detections (trap); further refusals this minute are \
                 counted"
                    .to_owned()
            ]
        );
        let h = std::fs::read_to_string(d.0.join("history")).unwrap();
        let events: Vec<String> = h
            .lines()
            .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            events,
            [
                "1000 command 198.51.100.1",
                "1001 refuse 198.51.100.2",
                "1002 refuse 198.51.100.3",
                "1003 command 198.51.100.4",
                "1004 refuse 192.0.2.1",
                "1005 refuse 198.51.100.5",
                "1020 command 198.51.100.6",
            ]
        );
        assert!(b.set().is_empty(), "cmdonly never blocks");
    }
}
