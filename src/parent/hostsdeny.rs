//! `hostsdeny FILE` (PortSentry's KILL_HOSTS_DENY, done safely) and `blockzone FILE [ZONE]`
//! (the blocked set as rbldnsd data, so other hosts can share it through DNS and `dnsbl:`).
//!
//! Runs in the parent. Both files are the administrator's: hosts.deny holds lines portnanny
//! must never touch, so only the lines it added (marked with a trailing comment) are added or
//! removed, under an exclusive lock (tcpd and other editors may hold it too), with the rest of
//! the file byte for byte as it was; the whole file is replaced atomically. The zone files are
//! portnanny's own and rewritten whole on every change.

use std::fs::File;
use std::io::Read;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::blocks::{write_atomic, Block};

/// The comment that marks hosts.deny lines portnanny manages.
const MARK: &str = "# portnanny";

/// The hosts.deny line for `addr` (tcpwrappers wants IPv6 addresses in brackets).
fn deny_line(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("ALL: {a} {MARK}"),
        IpAddr::V6(a) => format!("ALL: [{a}] {MARK}"),
    }
}

/// `text` with `addr`'s managed line added (`add`) or removed; None when nothing changes.
/// Lines portnanny did not write are never touched, and no duplicate is ever added.
pub fn edit(text: &str, addr: IpAddr, add: bool) -> Option<String> {
    let line = deny_line(addr);
    let present = text.lines().any(|l| l.trim_end() == line);
    match (add, present) {
        (true, true) | (false, false) => None,
        (true, false) => {
            let mut out = text.to_owned();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&line);
            out.push('\n');
            Some(out)
        }
        (false, true) => {
            let mut out = String::with_capacity(text.len());
            for l in text.split_inclusive('\n') {
                if l.trim_end() != line {
                    out.push_str(l);
                }
            }
            Some(out)
        }
    }
}

/// Adds or removes `addr` in the hosts.deny file at `path`, under an exclusive lock on it.
pub fn update(path: &Path, addr: IpAddr, add: bool) -> std::io::Result<bool> {
    let mut f = match File::options().read(true).open(path) {
        Ok(f) => f,
        // A missing file is created with just our line.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && add => {
            write_atomic(path, format!("{}\n", deny_line(addr)).as_bytes())?;
            return Ok(true);
        }
        Err(e) => return Err(e),
    };
    // SAFETY: flock on a descriptor we own; released when `f` is closed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    match edit(&text, addr, add) {
        Some(new) => {
            write_atomic(path, new.as_bytes())?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The rbldnsd data for the blocked set: IPv4 blocks as an `ip4set` dataset (written to
/// `FILE`), IPv6 blocks as an `ip6trie` dataset (written to `FILE.ip6`); serve them with
/// `rbldnsd … ZONE:ip4set:FILE ZONE:ip6trie:FILE.ip6`. Each entry answers 127.0.0.2 with
/// the block's reason as TXT.
pub fn zone_texts<'a>(blocks: impl Iterator<Item = &'a Block>, zone: &str) -> (String, String) {
    let head = format!(
        "# portnanny blocked set for {zone}; rewritten on every change\n:127.0.0.2:blocked by portnanny\n"
    );
    let (mut v4, mut v6) = (head.clone(), head);
    for b in blocks {
        let reason: String = b
            .reason
            .chars()
            .filter(|c| !c.is_control() && *c != ':')
            .collect();
        match b.addr {
            IpAddr::V4(a) => v4.push_str(&format!("{a} :127.0.0.2:{reason}\n")),
            IpAddr::V6(a) => v6.push_str(&format!("{a} :127.0.0.2:{reason}\n")),
        }
    }
    (v4, v6)
}

/// Rewrites the zone files for `blocks` (both atomically).
pub fn write_zone<'a>(
    path: &Path,
    zone: &str,
    blocks: impl Iterator<Item = &'a Block>,
) -> std::io::Result<()> {
    let (v4, v6) = zone_texts(blocks, zone);
    write_atomic(path, v4.as_bytes())?;
    let mut p6 = path.as_os_str().to_owned();
    p6.push(".ip6");
    write_atomic(Path::new(&p6), v6.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_lines_are_added_and_removed() {
        let admin = "# local policy\nsshd: 198.51.100.0/24\nALL: 192.0.2.7\n";
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let added = edit(admin, ip, true).unwrap();
        assert_eq!(added, format!("{admin}ALL: 192.0.2.7 # portnanny\n"));
        assert_eq!(edit(&added, ip, true), None, "no duplicate");
        let removed = edit(&added, ip, false).unwrap();
        assert_eq!(
            removed, admin,
            "the administrator's own line for the same address stays"
        );
        assert_eq!(edit(admin, ip, false), None);
        let v6 = edit("x", "2001:db8::1".parse().unwrap(), true).unwrap();
        assert_eq!(v6, "x\nALL: [2001:db8::1] # portnanny\n");
    }

    #[test]
    fn update_keeps_the_rest_of_the_file() {
        let dir = std::env::temp_dir().join(format!("pn-hostsdeny-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("hosts.deny");
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert!(update(&f, ip, true).unwrap(), "created");
        std::fs::write(&f, "in.telnetd: ALL\nALL: 192.0.2.9 # portnanny\n").unwrap();
        assert!(!update(&f, ip, true).unwrap());
        assert!(update(&f, ip, false).unwrap());
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "in.telnetd: ALL\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn zone_data_per_family() {
        let b = |a: &str, r: &str| Block {
            addr: a.parse().unwrap(),
            since: 1,
            until: None,
            port: 1,
            mode: "tcp".into(),
            repeat: 1,
            reason: r.into(),
        };
        let blocks = [
            b("192.0.2.7", "hits 3: ports 1,2"),
            b("2001:db8::1", "trap"),
        ];
        let (v4, v6) = zone_texts(blocks.iter(), "bl.example");
        assert!(
            v4.ends_with("192.0.2.7 :127.0.0.2:hits 3 ports 1,2\n"),
            "{v4}"
        );
        assert!(!v4.contains("2001:db8"));
        assert!(v6.ends_with("2001:db8::1 :127.0.0.2:trap\n"), "{v6}");
    }
}
