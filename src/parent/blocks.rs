//! The blocked set (the sentry job's memory): which addresses are blocked, since when, until
//! when and why; how often each address offended, so a repeat block lasts longer (fail2ban's
//! bantime.increment); the blockfile that keeps it across restarts; the history lines; and the
//! budget that limits new blocks from forgeable detections.
//!
//! Runs in the parent, which owns the set: it is changed only by the parent's own decisions
//! (admitted verdicts and probe reports) and by the administrator's blockfile. Nothing here runs
//! a command or touches the network.
//!
//! Blockfile format, one record a line (`#` comments and blank lines ignored), written whole and
//! atomically (temporary file, fsync, rename, fsync of the directory) on every change:
//!
//! ```text
//! block ADDR SINCE UNTIL PORT MODE REPEAT REASON...
//! offence ADDR COUNT LAST
//! ```
//!
//! SINCE, UNTIL and LAST are Unix seconds, UNTIL is `forever` for a block without end; MODE is
//! the detection (`tcp`, `udp`, `stcp`, `sudp`, `atcp`, `audp`) or `-`; REASON is free text.
//! `offence` lines remember past blocks of addresses no longer blocked. A line that does not
//! parse is reported with its line number and skipped; the rest is kept.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::Path;

/// One blocked address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub addr: IpAddr,
    /// Unix seconds.
    pub since: u64,
    /// Unix seconds; None: until unblocked by hand.
    pub until: Option<u64>,
    pub port: u16,
    pub mode: String,
    /// 1 for a first block, n for the n-th block of this address.
    pub repeat: u32,
    pub reason: String,
}

impl Block {
    /// Seconds left at `now` (None: forever).
    pub fn remaining(&self, now: u64) -> Option<u64> {
        self.until.map(|u| u.saturating_sub(now))
    }
}

/// How long a repeat block lasts: the first block's length times `factor` for every earlier
/// block of the address, at most `max` seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Increment {
    pub factor: f64,
    pub max: u64,
}

/// A request to block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub addr: IpAddr,
    pub port: u16,
    pub mode: String,
    pub reason: String,
    /// The configured length in seconds (None: forever).
    pub seconds: Option<u64>,
}

/// What [`BlockedSet::block`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// A new block.
    New(Block),
    /// Already blocked; the block now ends later (or never).
    Extended(Block),
    /// Already blocked at least as long; nothing changed.
    Unchanged,
}

/// The set, with the offence counts of every address ever blocked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockedSet {
    blocks: BTreeMap<IpAddr, Block>,
    /// Address → (blocks so far, unix seconds of the last).
    offences: BTreeMap<IpAddr, (u32, u64)>,
}

impl BlockedSet {
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn get(&self, addr: IpAddr) -> Option<&Block> {
        self.blocks.get(&addr)
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.blocks.contains_key(&addr)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Block> {
        self.blocks.values()
    }

    /// Blocks `req.addr` at `now`. A repeat offender's block lasts longer per `inc`.
    pub fn block(&mut self, req: Request, now: u64, inc: Option<Increment>) -> Blocked {
        let earlier = self.offences.get(&req.addr).map_or(0, |o| o.0);
        let seconds = req.seconds.map(|s| lengthen(s, earlier, inc));
        let until = seconds.map(|s| now.saturating_add(s));
        if let Some(b) = self.blocks.get_mut(&req.addr) {
            let longer = match (b.until, until) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(old), Some(new)) => new > old,
            };
            if !longer {
                return Blocked::Unchanged;
            }
            b.until = until;
            return Blocked::Extended(b.clone());
        }
        let repeat = earlier.saturating_add(1);
        self.offences.insert(req.addr, (repeat, now));
        let b = Block {
            addr: req.addr,
            since: now,
            until,
            port: req.port,
            mode: req.mode,
            repeat,
            reason: req.reason,
        };
        self.blocks.insert(b.addr, b.clone());
        Blocked::New(b)
    }

    /// Ends the block of `addr` (by hand); its offences are remembered.
    pub fn unblock(&mut self, addr: IpAddr) -> Option<Block> {
        self.blocks.remove(&addr)
    }

    /// Ends every block whose time is up at `now`; returns them, oldest end first.
    pub fn expire(&mut self, now: u64) -> Vec<Block> {
        let due: Vec<IpAddr> = self
            .blocks
            .values()
            .filter(|b| b.until.is_some_and(|u| u <= now))
            .map(|b| b.addr)
            .collect();
        let mut out: Vec<Block> = due.iter().filter_map(|a| self.blocks.remove(a)).collect();
        out.sort_by_key(|b| b.until);
        out
    }

    /// When the next block ends (unix seconds).
    pub fn next_expiry(&self) -> Option<u64> {
        self.blocks.values().filter_map(|b| b.until).min()
    }

    /// The blockfile text.
    pub fn to_text(&self) -> String {
        let mut s = String::from("# portnanny blocked set; rewritten on every change\n");
        for b in self.blocks.values() {
            let until = b
                .until
                .map_or_else(|| "forever".to_owned(), |u| u.to_string());
            let mode = if b.mode.is_empty() { "-" } else { &b.mode };
            let _ = writeln!(
                s,
                "block {} {} {until} {} {mode} {} {}",
                b.addr,
                b.since,
                b.port,
                b.repeat,
                one_line(&b.reason)
            );
        }
        for (a, (n, last)) in &self.offences {
            if !self.blocks.contains_key(a) {
                let _ = writeln!(s, "offence {a} {n} {last}");
            }
        }
        s
    }

    /// Reads a blockfile written by [`BlockedSet::to_text`]. Blocks already over at `now` are
    /// returned apart (the caller unblocks them as expired); lines that do not parse are
    /// reported as `NAME:LINE: why` and skipped.
    pub fn parse(name: &str, text: &str, now: u64) -> (BlockedSet, Vec<Block>, Vec<String>) {
        let mut set = BlockedSet::default();
        let mut expired = Vec::new();
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line) {
                Ok(Line::Block(b)) => {
                    let entry = set.offences.entry(b.addr).or_insert((0, 0));
                    *entry = (entry.0.max(b.repeat), entry.1.max(b.since));
                    if b.until.is_some_and(|u| u <= now) {
                        expired.push(b);
                    } else {
                        set.blocks.insert(b.addr, b);
                    }
                }
                Ok(Line::Offence(a, n, last)) => {
                    let entry = set.offences.entry(a).or_insert((0, 0));
                    *entry = (entry.0.max(n), entry.1.max(last));
                }
                Err(why) => errors.push(format!("{name}:{}: {why}", i + 1)),
            }
        }
        (set, expired, errors)
    }
}

/// A repeat block's length: `base` times `factor` per earlier block, capped.
fn lengthen(base: u64, earlier: u32, inc: Option<Increment>) -> u64 {
    let Some(inc) = inc.filter(|i| i.factor > 1.0 && earlier > 0) else {
        return base;
    };
    let grown = (base as f64) * inc.factor.powi(i32::try_from(earlier).unwrap_or(i32::MAX));
    if !grown.is_finite() || grown >= inc.max as f64 {
        inc.max.max(base)
    } else {
        (grown as u64).max(base)
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

enum Line {
    Block(Block),
    Offence(IpAddr, u32, u64),
}

fn parse_line(line: &str) -> Result<Line, String> {
    let mut w = line.split_whitespace();
    let kind = w.next().unwrap_or_default();
    let addr: IpAddr = w
        .next()
        .ok_or("no address")?
        .parse()
        .map_err(|_| "not an IP address".to_owned())?;
    let num = |w: Option<&str>, what: &str| -> Result<u64, String> {
        w.ok_or(format!("no {what}"))?
            .parse::<u64>()
            .map_err(|_| format!("{what} is not a number"))
    };
    match kind {
        "block" => {
            let since = num(w.next(), "start time")?;
            let until = match w.next().ok_or("no end time")? {
                "forever" => None,
                t => Some(num(Some(t), "end time")?),
            };
            let port = u16::try_from(num(w.next(), "port")?).map_err(|_| "port out of range")?;
            let mode = match w.next().ok_or("no mode")? {
                "-" => String::new(),
                m => m.to_owned(),
            };
            let repeat = u32::try_from(num(w.next(), "repeat count")?)
                .map_err(|_| "repeat count out of range")?;
            let reason = w.collect::<Vec<_>>().join(" ");
            Ok(Line::Block(Block {
                addr,
                since,
                until,
                port,
                mode,
                repeat,
                reason,
            }))
        }
        "offence" => {
            let n = u32::try_from(num(w.next(), "count")?).map_err(|_| "count out of range")?;
            let last = num(w.next(), "time")?;
            Ok(Line::Offence(addr, n, last))
        }
        other => Err(format!("unknown record {other:?} (want block or offence)")),
    }
}

/// Writes `bytes` to `path` so that a crash at any moment leaves either the old file or the new
/// one, never a mix: a temporary file in the same directory, fsync, rename over `path`, fsync
/// of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let write = || -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    let r = write();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// One historyfile line: `UNIXTIME EVENT ADDR PORT MODE UNTIL REASON`, where EVENT is
/// `block`, `extend`, `unblock`, `expire`, `refuse` (a block or `block cmdonly` not done:
/// neverblock or budget) or `command` (`block cmdonly` ran), MODE is `-` when empty, UNTIL is
/// unix seconds or `forever`, and REASON (the rest of the line) has its control characters
/// turned into spaces. docs/configuration.md ("historyfile") describes each field.
pub fn history_line(now: u64, event: &str, b: &Block) -> String {
    let until = b
        .until
        .map_or_else(|| "forever".to_owned(), |u| u.to_string());
    let mode = if b.mode.is_empty() { "-" } else { &b.mode };
    format!(
        "{now} {event} {} {} {mode} {until} {}\n",
        b.addr,
        b.port,
        one_line(&b.reason)
    )
}

/// New blocks allowed per minute for forgeable detections (stealth scans and UDP, whose source
/// address costs an attacker nothing to forge): beyond the budget they are only logged, so a
/// forged sweep cannot make the host block half the Internet.
#[derive(Clone, Debug)]
pub struct Budget {
    per_minute: u32,
    window: u64,
    used: u32,
}

impl Budget {
    pub fn new(per_minute: u32) -> Budget {
        Budget {
            per_minute,
            window: 0,
            used: 0,
        }
    }

    /// Takes one new block from the budget at `now` (unix seconds); false when spent.
    pub fn take(&mut self, now: u64) -> bool {
        let window = now / 60;
        if window != self.window {
            self.window = window;
            self.used = 0;
        }
        if self.used >= self.per_minute {
            return false;
        }
        self.used += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ip: &str, seconds: Option<u64>) -> Request {
        Request {
            addr: ip.parse().unwrap(),
            port: 31337,
            mode: "stcp".into(),
            reason: "hits 3".into(),
            seconds,
        }
    }

    #[test]
    fn block_extend_expire_and_repeat_offenders() {
        let inc = Some(Increment {
            factor: 2.0,
            max: 3000,
        });
        let mut s = BlockedSet::default();
        let Blocked::New(b) = s.block(req("192.0.2.7", Some(600)), 1000, inc) else {
            panic!()
        };
        assert_eq!((b.until, b.repeat), (Some(1600), 1));
        assert!(s.contains("192.0.2.7".parse().unwrap()));
        assert_eq!(
            s.block(req("192.0.2.7", Some(60)), 1001, inc),
            Blocked::Unchanged
        );
        assert_eq!(s.next_expiry(), Some(1600));
        assert!(s.expire(1599).is_empty());
        let gone = s.expire(1600);
        assert_eq!(gone.len(), 1);
        assert!(s.is_empty());
        // The second block lasts twice as long, the third four times, then the cap.
        let Blocked::New(b) = s.block(req("192.0.2.7", Some(600)), 2000, inc) else {
            panic!()
        };
        assert_eq!((b.until, b.repeat), (Some(3200), 2));
        s.unblock(b.addr);
        let Blocked::New(b) = s.block(req("192.0.2.7", Some(600)), 4000, inc) else {
            panic!()
        };
        assert_eq!((b.until, b.repeat), (Some(6400), 3));
        s.unblock(b.addr);
        let Blocked::New(b) = s.block(req("192.0.2.7", Some(600)), 7000, inc) else {
            panic!()
        };
        assert_eq!(b.until, Some(10_000), "capped at max");
        // Forever beats any time; nothing beats forever.
        assert!(matches!(
            s.block(req("192.0.2.7", None), 7001, inc),
            Blocked::Extended(Block { until: None, .. })
        ));
        assert_eq!(
            s.block(req("192.0.2.7", Some(10)), 7002, inc),
            Blocked::Unchanged
        );
    }

    #[test]
    fn blockfile_round_trip_keeps_remaining_time_and_offences() {
        let mut s = BlockedSet::default();
        s.block(req("192.0.2.7", Some(600)), 1000, None);
        s.block(req("2001:db8::1", None), 1000, None);
        s.block(req("198.51.100.9", Some(10)), 1000, None);
        s.expire(1010);
        let text = s.to_text();
        let (back, expired, errors) = BlockedSet::parse("blocks", &text, 1200);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(expired.is_empty());
        assert_eq!(back, s, "{text}");
        let b = back.get("192.0.2.7".parse().unwrap()).unwrap();
        assert_eq!(b.remaining(1200), Some(400));
        // After the block's end, a restart returns it as expired; offences stay.
        let (later, expired, _) = BlockedSet::parse("blocks", &text, 5000);
        assert_eq!(expired.len(), 1);
        assert_eq!(later.len(), 1, "the forever block stays");
        let Blocked::New(b) = later
            .clone()
            .block(req("198.51.100.9", Some(10)), 6000, None)
        else {
            panic!()
        };
        assert_eq!(b.repeat, 2, "an offence survives the restart");
    }

    #[test]
    fn a_corrupt_line_is_reported_and_the_rest_kept() {
        let text = "# c\nblock 192.0.2.7 1000 forever 22 tcp 1 hits\nblock nonsense\n\
                    block 192.0.2.8 1000 2000 99999 tcp 1 x\nfrobnicate 192.0.2.9\n\
                    offence 192.0.2.10 3 900\n";
        let (s, _, errors) = BlockedSet::parse("/var/lib/pn/blocks", text, 1500);
        assert_eq!(s.len(), 1);
        assert_eq!(
            errors,
            vec![
                "/var/lib/pn/blocks:3: not an IP address",
                "/var/lib/pn/blocks:4: port out of range",
                "/var/lib/pn/blocks:5: unknown record \"frobnicate\" (want block or offence)",
            ]
        );
    }

    #[test]
    fn atomic_write_replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("pn-blocks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("blocks");
        write_atomic(&f, b"one\n").unwrap();
        write_atomic(&f, b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "two\n");
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn history_lines_and_the_budget() {
        let mut s = BlockedSet::default();
        let Blocked::New(b) = s.block(req("192.0.2.7", Some(60)), 100, None) else {
            panic!()
        };
        assert_eq!(
            history_line(100, "block", &b),
            "100 block 192.0.2.7 31337 stcp 160 hits 3\n"
        );
        // The documented forms of the other fields: no mode, no end, a reason with spaces and
        // a control character.
        let by_hand = Block {
            until: None,
            mode: String::new(),
            port: 0,
            reason: "nannyctl (uid 0)\tx\n".into(),
            ..b.clone()
        };
        assert_eq!(
            history_line(200, "unblock", &by_hand),
            "200 unblock 192.0.2.7 0 - forever nannyctl (uid 0) x\n"
        );
        let mut budget = Budget::new(2);
        assert!(budget.take(120) && budget.take(121));
        assert!(!budget.take(122), "limit + 1 in the same minute");
        assert!(budget.take(180), "a new minute");
    }
}
