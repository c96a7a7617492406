//! pyctd's job against a real kernel table (issue 12): portnanny runs in a "host" network
//! namespace with `conntrack on`; a peer namespace joined by a veth pair makes TCP, UDP and
//! ICMP flows over IPv4 and IPv6, and conntrack-tools inserts more entries (`conntrack -I`).
//! `nannyctl conntrack` (the library half the nannyctl binary routes to) must agree with
//! `conntrack -L` on every field it shows; filters, ordering and paging are checked against an
//! answer computed from `conntrack -L`; kill removes exactly the chosen entries; change of mark
//! and timeout shows in `conntrack -L`; the netfilter worker holds CAP_NET_ADMIN only.
//! pyctd's XML-RPC API is driven the same way by Python's standard-library xmlrpc.client
//! (tests/data/pyctd_client.py), as an existing pyctd frontend would.
//!
//! Root only ("skipped: needs root" otherwise; skipped with a note when conntrack, nft, ip or
//! nc is missing). The daemon and conntrack-tools run inside the namespaces this test creates
//! and deletes (`ip netns exec`), so the host's own table is never touched; every wait is
//! bounded and only the daemon this test started is killed, by pid.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use privsep::control::{Reply, Request};
use util::*;

const HOST4: &str = "10.204.0.1";
const PEER4: &str = "10.204.0.2";
const HOST6: &str = "fd04::1";
const PEER6: &str = "fd04::2";
const WAIT: Duration = Duration::from_secs(10);

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(st.success(), "{args:?} failed: {st}");
}

/// Two namespaces joined by a veth pair, conntrack hooked in the host one; deleted on drop.
struct Lab {
    host: String,
    peer: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.host, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let id = std::process::id();
        let lab = Lab {
            host: format!("pnct-h{tag}-{id}"),
            peer: format!("pnct-p{tag}-{id}"),
        };
        let (h, p) = (lab.host.as_str(), lab.peer.as_str());
        sh(&["ip", "netns", "add", h]);
        sh(&["ip", "netns", "add", p]);
        sh(&[
            "ip", "-n", h, "link", "add", "vh", "type", "veth", "peer", "name", "vp", "netns", p,
        ]);
        for (ns, dev, a4, a6) in [(h, "vh", HOST4, HOST6), (p, "vp", PEER4, PEER6)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{a4}/24"),
                "dev",
                dev,
            ]);
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{a6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        // A rule that uses conntrack makes the kernel track this namespace's packets; the
        // counters make `packets=`/`bytes=` part of what is compared.
        let ruleset = "add table inet pnct { chain in { type filter hook input priority 0; \
                       ct state new accept; }; }";
        sh(&["ip", "netns", "exec", h, "nft", ruleset]);
        sh(&[
            "ip",
            "netns",
            "exec",
            h,
            "sysctl",
            "-qw",
            "net.netfilter.nf_conntrack_acct=1",
        ]);
        lab
    }

    fn in_host(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.host])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn in_peer(&self, args: &[&str]) {
        let _ = Command::new("timeout")
            .arg("5")
            .args(["ip", "netns", "exec", &self.peer])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// `conntrack -L` in the host namespace, parsed, by id.
    fn table(&self) -> BTreeMap<u32, Entry> {
        self.in_host(&["conntrack", "-L", "-o", "id"])
            .lines()
            .filter_map(Entry::parse)
            .map(|e| (e.id, e))
            .collect()
    }
}

/// One `conntrack -L -o id` line.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    id: u32,
    proto: u8,
    timeout: u32,
    state: Option<String>,
    /// (src, dst, sport, dport, type, code, icmp id) per direction, as printed.
    orig: Vec<(String, String)>,
    reply: Vec<(String, String)>,
    mark: u32,
    zone: u16,
    /// (orig packets, orig bytes, reply packets, reply bytes)
    counters: Option<(u64, u64, u64, u64)>,
}

impl Entry {
    fn parse(line: &str) -> Option<Entry> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let proto: u8 = words.get(1)?.parse().ok()?;
        let timeout: u32 = words.get(2)?.parse().ok()?;
        let mut state = None;
        let (mut orig, mut reply) = (Vec::new(), Vec::new());
        let (mut mark, mut zone, mut id) = (0, 0, None);
        let mut packets: Vec<u64> = Vec::new();
        let mut bytes: Vec<u64> = Vec::new();
        let mut srcs = 0;
        for w in words.iter().skip(3) {
            let Some((k, v)) = w.split_once('=') else {
                if !w.starts_with('[') && srcs == 0 {
                    state = Some((*w).to_owned());
                }
                continue;
            };
            match k {
                "src" => {
                    srcs += 1;
                    let t = if srcs == 1 { &mut orig } else { &mut reply };
                    t.push((k.to_owned(), v.to_owned()));
                }
                "dst" | "sport" | "dport" | "type" | "code" if srcs > 0 => {
                    let t = if srcs == 1 { &mut orig } else { &mut reply };
                    t.push((k.to_owned(), v.to_owned()));
                }
                // An ICMP tuple's id follows its code; the entry's own id comes last.
                "id" if srcs > 0 && {
                    let t = if srcs == 1 { &orig } else { &reply };
                    t.iter().any(|(k, _)| k == "code") && !t.iter().any(|(k, _)| k == "id")
                } =>
                {
                    let t = if srcs == 1 { &mut orig } else { &mut reply };
                    t.push((k.to_owned(), v.to_owned()));
                }
                "id" => id = v.parse().ok(),
                "mark" => mark = v.parse().ok()?,
                "zone" => zone = v.parse().ok()?,
                "packets" => packets.push(v.parse().ok()?),
                "bytes" => bytes.push(v.parse().ok()?),
                _ => {}
            }
        }
        let counters = match (packets.as_slice(), bytes.as_slice()) {
            ([op, rp], [ob, rb]) => Some((*op, *ob, *rp, *rb)),
            _ => None,
        };
        Some(Entry {
            id: id?,
            proto,
            timeout,
            state,
            orig,
            reply,
            mark,
            zone,
            counters,
        })
    }
}

fn tuple_pairs(t: &serde_json::Value) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let s = |x: &serde_json::Value| match x {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    v.push(("src".to_owned(), s(&t["src"])));
    v.push(("dst".to_owned(), s(&t["dst"])));
    if !t["sport"].is_null() {
        v.push(("sport".to_owned(), s(&t["sport"])));
        v.push(("dport".to_owned(), s(&t["dport"])));
    }
    if !t["icmp_type"].is_null() {
        v.push(("type".to_owned(), s(&t["icmp_type"])));
        v.push(("code".to_owned(), s(&t["icmp_code"])));
        v.push(("id".to_owned(), s(&t["icmp_id"])));
    }
    v
}

/// Our row and conntrack's agree on every field we show (timeout within the seconds between
/// the two reads).
fn assert_agrees(row: &serde_json::Value, e: &Entry) {
    let id = row["id"].as_u64().unwrap_or(0);
    assert_eq!(
        row["l4proto"].as_u64(),
        Some(u64::from(e.proto)),
        "proto of {id}"
    );
    assert_eq!(tuple_pairs(&row["orig"]), e.orig, "orig of {id}");
    assert_eq!(tuple_pairs(&row["reply"]), e.reply, "reply of {id}");
    assert_eq!(
        row["mark"].as_u64(),
        Some(u64::from(e.mark)),
        "mark of {id}"
    );
    assert_eq!(
        row["zone"].as_u64(),
        Some(u64::from(e.zone)),
        "zone of {id}"
    );
    assert_eq!(row["state"].as_str(), e.state.as_deref(), "state of {id}");
    let t = row["timeout"].as_u64().unwrap_or(0);
    assert!(
        t.abs_diff(u64::from(e.timeout)) <= 3,
        "timeout of {id}: {t} vs {}",
        e.timeout
    );
    let ours = row["counters"].as_object().map(|c| {
        let g = |k: &str| c.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        (
            g("orig_packets"),
            g("orig_bytes"),
            g("reply_packets"),
            g("reply_bytes"),
        )
    });
    assert_eq!(ours, e.counters, "counters of {id}");
}

/// The daemon in the host namespace; killed by pid on drop.
struct Daemon {
    child: std::process::Child,
    log: PathBuf,
    ctl: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(lab: &Lab, s: &Scratch, extra: &str) -> Daemon {
        let empty = s.empty_dir("empty");
        s.write("nanny-rules", "a: ALL\n");
        s.write("nanny-actions", "a: msg hello%(nl)s\n");
        let conf = s.write(
            "nanny.conf",
            &format!(
                "rulefile {r}\nactionfile {a}\nlisten 4040@{HOST4}\nlisten 4040@[{HOST6}]\n\
                 chrootdir {e}\nprivsepuser nobody\ncontrol {c}\nconntrack on\n\
                 conntrackuidmask 0xffff\n{extra}\n",
                r = s.path("nanny-rules").display(),
                a = s.path("nanny-actions").display(),
                e = empty.display(),
                c = s.path("ctl").display(),
            ),
        );
        let log = s.path("nanny.stderr");
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.host])
            .arg(BIN)
            .arg("-v")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("portnanny");
        let d = Daemon {
            child,
            log,
            ctl: s.path("ctl"),
        };
        let up = wait_for(START_TIMEOUT, || {
            d.log().contains("started: listening").then_some(())
        });
        assert!(up.is_some(), "daemon did not start:\n{}", d.log());
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn netfilter_pid(&self) -> Option<i32> {
        self.worker_pid("netfilter")
    }

    fn worker_pid(&self, role: &str) -> Option<i32> {
        let pid = i32::try_from(self.child.id()).ok()?;
        children_of(pid).into_iter().find(|p| {
            cmdline(*p)
                .windows(2)
                .any(|w| w[0] == "--privsep-role" && w[1] == role)
        })
    }

    /// `nannyctl conntrack WORDS` → (stdout, exit code).
    fn ctl(&self, words: &str) -> (String, u8) {
        let w: Vec<String> = words.split_whitespace().map(str::to_owned).collect();
        let (out, err, code) = portnanny::nannyctl_conntrack::main(Path::new(&self.ctl), &w);
        assert!(code == 0 || !out.is_empty() || !err.is_empty());
        (out + &err, code)
    }

    fn json(&self, words: &str) -> serde_json::Value {
        let (out, code) = self.ctl(&format!("{words} --json"));
        assert_eq!(code, 0, "{words}: {out}\n{}", self.log());
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{words}: {e}: {out}"))
    }
}

fn ids(page: &serde_json::Value) -> Vec<u32> {
    page["rows"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["id"].as_u64())
                .map(|i| i as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// Flows of every kind from the peer, and entries inserted by conntrack-tools.
fn make_flows(lab: &Lab) {
    for host in [HOST4, HOST6] {
        // TCP to the daemon's listener (answered "hello"), UDP to a closed port, ICMP echo.
        lab.in_peer(&["nc", "-w", "2", host, "4040"]);
        lab.in_peer(&["sh", "-c", &format!("echo x | nc -u -w 1 {host} 5353")]);
        lab.in_peer(&["ping", "-c", "1", "-W", "2", host]);
    }
    let h = lab.host.clone();
    let ins = |args: &[&str]| {
        let mut a = vec!["ip", "netns", "exec", &h, "conntrack", "-I"];
        a.extend_from_slice(args);
        sh(&a);
    };
    for (i, sport) in [1001u16, 1002, 1003, 1004, 1005].iter().enumerate() {
        let sport = sport.to_string();
        let mark = (1000 + i).to_string();
        let src = format!("192.0.2.{}", 10 + i);
        ins(&[
            "-s",
            &src,
            "-d",
            "198.51.100.1",
            "-p",
            "tcp",
            "--sport",
            &sport,
            "--dport",
            &(80 + i).to_string(),
            "--state",
            "ESTABLISHED",
            "-t",
            "3000",
            "-u",
            "SEEN_REPLY",
            "--mark",
            &mark,
        ]);
    }
    ins(&[
        "-s",
        "2001:db8::5",
        "-d",
        "2001:db8::6",
        "-p",
        "udp",
        "--sport",
        "53",
        "--dport",
        "5353",
        "-t",
        "3000",
    ]);
    ins(&[
        "-s",
        "127.0.0.1",
        "-d",
        "127.0.0.1",
        "-p",
        "tcp",
        "--sport",
        "5555",
        "--dport",
        "25",
        "--state",
        "ESTABLISHED",
        "-t",
        "3000",
    ]);
}

#[test]
fn nannyctl_conntrack_agrees_with_conntrack_tools_and_changes_the_kernel_table() {
    let name = "nannyctl_conntrack_agrees_with_conntrack_tools_and_changes_the_kernel_table";
    if skip_unless_root(name) {
        return;
    }
    if !have("conntrack") || !have("nft") || !have("ip") || !have("nc") || !have("ping") {
        println!("{name}: skipped: needs conntrack, nft, ip, nc and ping (.ci/install-test-deps)");
        return;
    }
    let s = Scratch::new("conntrack");
    let lab = Lab::new("a");
    let d = Daemon::start(&lab, &s, "");
    make_flows(&lab);

    // The worker: nobody, CAP_NET_ADMIN (bit 12) and nothing else, no_new_privs.
    let w = wait_for(WAIT, || d.netfilter_pid()).expect("netfilter worker");
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    assert_eq!(status_ids(w, "Uid"), nobody.map(|u| vec![u; 4]), "uids");
    for f in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            status_field(w, f).as_deref(),
            Some("0000000000001000"),
            "{f}"
        );
    }
    for f in ["CapInh", "CapAmb"] {
        assert_eq!(
            status_field(w, f).as_deref(),
            Some("0000000000000000"),
            "{f}"
        );
    }
    assert_eq!(status_field(w, "NoNewPrivs").as_deref(), Some("1"));
    let root = std::fs::read_link(format!("/proc/{w}/root")).expect("root link");
    assert_eq!(root, s.path("empty"), "chrooted into the empty directory");
    // RLIMIT_NPROC 0, soft and hard, as its row says (set once its netlink socket is open).
    let nproc = || {
        let limits = std::fs::read_to_string(format!("/proc/{w}/limits")).unwrap_or_default();
        let line = limits.lines().find(|l| l.starts_with("Max processes"))?;
        let f: Vec<&str> = line.split_whitespace().skip(2).take(2).collect();
        Some(f.join(" "))
    };
    let zero = wait_for(WAIT, || nproc().filter(|l| l == "0 0"));
    assert!(zero.is_some(), "RLIMIT_NPROC: {:?}", nproc());

    // Every field agrees with conntrack -L, for every entry (local ones shown on request).
    let refreshed = d.json("refresh");
    assert!(refreshed["done"].is_string(), "{refreshed}");
    let page = d.json("list --local --limit 1000");
    let table = lab.table();
    let rows = page["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), table.len(), "{page}\n{table:?}");
    let mut kinds = std::collections::BTreeSet::new();
    for r in &rows {
        let id = r["id"].as_u64().unwrap_or(0) as u32;
        let e = table
            .get(&id)
            .unwrap_or_else(|| panic!("{id} not in conntrack -L"));
        assert_agrees(r, e);
        kinds.insert((r["l3proto"].as_str().unwrap_or("").to_owned(), e.proto));
    }
    for want in [
        ("ipv4", 6),
        ("ipv4", 17),
        ("ipv4", 1),
        ("ipv6", 6),
        ("ipv6", 17),
        ("ipv6", 58),
    ] {
        assert!(
            kinds.contains(&(want.0.to_owned(), want.1)),
            "no {want:?} flow: {kinds:?}"
        );
    }
    // uid-from-mark: mark 1000 under 0xffff is uid 1000 (a name only if the host has one).
    let marked = rows
        .iter()
        .find(|r| r["mark"] == 1000)
        .expect("marked entry");
    assert_eq!(marked["uid"], 1000);

    // Local-only entries are hidden unless asked (pyctd 0.4.2).
    let hidden = d.json("list --limit 1000");
    let local: Vec<u32> = table
        .values()
        .filter(|e| e.orig.first().is_some_and(|(_, v)| v == "127.0.0.1"))
        .map(|e| e.id)
        .collect();
    assert_eq!(local.len(), 1);
    assert!(!ids(&hidden).contains(&local[0]));
    assert_eq!(hidden["total"].as_u64(), Some(table.len() as u64 - 1));

    // Filters, ordering and paging against an answer computed from conntrack -L.
    let field = |e: &Entry, k: &str| e.orig.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut want: Vec<&Entry> = table
        .values()
        .filter(|e| e.proto == 6)
        .filter(|e| field(e, "src").is_some_and(|s| s.starts_with("192.0.2.")))
        .collect();
    let dport = |e: &Entry| field(e, "dport").and_then(|p| p.parse::<u16>().ok());
    want.sort_by(|a, b| dport(b).cmp(&dport(a)).then(a.id.cmp(&b.id)));
    let want_ids: Vec<u32> = want.iter().skip(1).take(2).map(|e| e.id).collect();
    let got = d.json("list --proto tcp --src 192.0.2.0/24 --order dport:desc --offset 1 --limit 2");
    assert_eq!(ids(&got), want_ids);
    assert_eq!(got["total"].as_u64(), Some(want.len() as u64));
    let by_mark = d.json("list --mark 1002");
    assert_eq!(ids(&by_mark).len(), 1);
    let by_dport = d.json("list --dport 81,83 --order id:desc");
    let mut two: Vec<u32> = table
        .values()
        .filter(|e| matches!(dport(e), Some(81 | 83)) && e.proto == 6)
        .map(|e| e.id)
        .collect();
    two.sort_by(|a, b| b.cmp(a));
    assert_eq!(ids(&by_dport), two);

    // change mark and timeout: visible with conntrack -L.
    let target = want[0].id;
    d.json(&format!("change {target} mark 4242"));
    d.json(&format!("change {target} timeout 777"));
    let after = lab.table();
    assert_eq!(after[&target].mark, 4242);
    assert!(after[&target].timeout <= 777 && after[&target].timeout >= 770);
    let (out, code) = d.ctl(&format!("change {target} timeout 4294967296"));
    assert_eq!(code, 2, "{out}");
    let (out, code) = d.ctl("change 1 mark 5");
    assert_eq!(code, 4, "{out}");

    // kill removes exactly the chosen entries.
    let victims: Vec<u32> = want.iter().skip(1).take(2).map(|e| e.id).collect();
    let killed = d.json(&format!("kill {} {} 3", victims[0], victims[1]));
    let mut k: Vec<u32> = killed["killed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    k.sort();
    let mut v = victims.clone();
    v.sort();
    assert_eq!(k, v);
    assert_eq!(killed["missing"], serde_json::json!([3]));
    let left = lab.table();
    for id in table.keys() {
        // ICMP and UDP flows may time out on their own meanwhile; the rest must stay.
        let expiring = matches!(table[id].proto, 1 | 58 | 17) && table[id].timeout < 200;
        assert_eq!(
            left.contains_key(id),
            !victims.contains(id) || expiring,
            "{id}"
        );
    }
    // kill --ip: every entry of that address.
    d.json("kill --ip 192.0.2.10");
    assert!(!lab
        .table()
        .values()
        .any(|e| field(e, "src").as_deref() == Some("192.0.2.10")));

    // Autorefresh: a list sees a new entry without refresh once on.
    d.json("autorefresh on");
    sh(&[
        "ip",
        "netns",
        "exec",
        &lab.host,
        "conntrack",
        "-I",
        "-s",
        "192.0.2.99",
        "-d",
        "198.51.100.1",
        "-p",
        "udp",
        "--sport",
        "9",
        "--dport",
        "9",
        "-t",
        "3000",
    ]);
    std::thread::sleep(Duration::from_millis(1100));
    let seen = d.json("list --src 192.0.2.99");
    assert_eq!(seen["total"], 1, "{seen}");
    assert!(
        d.log().contains("conntrack kill"),
        "audit line:\n{}",
        d.log()
    );
}

#[test]
fn blockflush_deletes_a_newly_blocked_address_s_flows() {
    let name = "blockflush_deletes_a_newly_blocked_address_s_flows";
    if skip_unless_root(name) {
        return;
    }
    if !have("conntrack") || !have("nft") || !have("ip") {
        println!("{name}: skipped: needs conntrack, nft and ip (.ci/install-test-deps)");
        return;
    }
    ensure_test_user();
    let s = Scratch::new("blockflush");
    let lab = Lab::new("b");
    let group = TEST_GROUPS[0];
    let d = Daemon::start(&lab, &s, &format!("blockflush on\ncontrolgroup {group}"));
    let h = lab.host.clone();
    for (src, dst, sport) in [
        ("192.0.2.50", "198.51.100.1", "1"),
        ("198.51.100.1", "192.0.2.50", "2"),
        ("192.0.2.51", "198.51.100.1", "3"),
    ] {
        sh(&[
            "ip",
            "netns",
            "exec",
            &h,
            "conntrack",
            "-I",
            "-s",
            src,
            "-d",
            dst,
            "-p",
            "udp",
            "--sport",
            sport,
            "--dport",
            "9",
            "-t",
            "3000",
        ]);
    }
    wait_for(WAIT, || d.netfilter_pid()).expect("netfilter worker");
    let req = Request::Block {
        addr: "192.0.2.50".parse().unwrap(),
        seconds: Some(60),
    };
    let r = portnanny::nannyctl_conntrack::ask(&d.ctl, &req).expect("block");
    assert!(matches!(r, Reply::Done(_)), "{r:?}");
    let gone = wait_for(WAIT, || {
        let t = lab.table();
        (t.len() == 1).then_some(t)
    });
    let t = gone.unwrap_or_else(|| panic!("{:?}\n{}", lab.table(), d.log()));
    let left = t.values().next().unwrap();
    assert_eq!(
        left.orig.first().map(|(_, v)| v.as_str()),
        Some("192.0.2.51")
    );
    let logged = wait_for(WAIT, || {
        d.log().contains("blockflush: deleted 2").then_some(())
    });
    assert!(logged.is_some(), "{}", d.log());
}

/// Runs `calls` ([method, [args…]] each) through Python's xmlrpc.client in the host namespace,
/// on one kept-alive connection; one JSON result per call.
fn pyctd(lab: &Lab, calls: serde_json::Value) -> Vec<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pyctd_client.py");
    let out = Command::new("timeout")
        .arg("60")
        .args(["ip", "netns", "exec", &lab.host, "python3", script])
        .arg(format!("http://127.0.0.1:{XMLRPC_PORT}"))
        .arg(calls.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str::<Vec<serde_json::Value>>(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)))
}

/// One call's value, or a panic with the fault.
fn ok(v: &serde_json::Value) -> serde_json::Value {
    match v.get("ok") {
        Some(x) => x.clone(),
        None => panic!("expected a value: {v}"),
    }
}

fn fault_code(v: &serde_json::Value) -> i64 {
    v["fault"][0]
        .as_i64()
        .unwrap_or_else(|| panic!("expected a fault: {v}"))
}

const XMLRPC_PORT: u16 = 8800;
const XMLRPC_IDLE: u64 = 3;

/// The 32 bits of an id or address as XML-RPC carries them.
fn wire_u32(v: &serde_json::Value) -> u32 {
    v.as_i64().map(|i| i as i32 as u32).unwrap_or(u32::MAX)
}

#[test]
fn pyctd_xmlrpc_clients_work_unchanged_against_the_kernel_table() {
    let name = "pyctd_xmlrpc_clients_work_unchanged_against_the_kernel_table";
    if skip_unless_root(name) {
        return;
    }
    if !have("conntrack") || !have("nft") || !have("ip") || !have("nc") || !have("python3") {
        println!("{name}: skipped: needs conntrack, nft, ip, nc and python3");
        return;
    }
    let s = Scratch::new("xmlrpc");
    // The password tool: a 0600 file with an argon2id line.
    let pw = s.path("xmlrpc.passwd");
    let mut tool = Command::new(BIN)
        .arg("--xmlrpc-passwd")
        .arg(&pw)
        .arg("alice")
        .stdin(Stdio::piped())
        .spawn()
        .expect("portnanny --xmlrpc-passwd");
    {
        use std::io::Write;
        let mut stdin = tool.stdin.take().expect("stdin");
        stdin.write_all(b"s3cret\n").expect("password");
    }
    assert!(tool.wait().expect("wait").success());
    let text = std::fs::read_to_string(&pw).expect("password file");
    assert!(text.starts_with("alice:$argon2id$"), "{text}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pw).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let lab = Lab::new("x");
    let d = Daemon::start(
        &lab,
        &s,
        &format!(
            "xmlrpc 127.0.0.1:{XMLRPC_PORT}\nxmlrpcusers {}\nxmlrpcidle {XMLRPC_IDLE}",
            pw.display()
        ),
    );
    make_flows(&lab);

    // The control worker: unprivileged, no capabilities, the TCP listener on fd 5.
    let w = wait_for(WAIT, || d.worker_pid("control")).expect("control worker");
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    assert_eq!(status_ids(w, "Uid"), nobody.map(|u| vec![u; 4]), "uids");
    for f in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(w, f).as_deref(),
            Some("0000000000000000"),
            "{f}"
        );
    }
    let fd5 = fd_target(w, 5).unwrap_or_default();
    let inode = fd5
        .strip_prefix("socket:[")
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or_else(|| panic!("fd 5 is {fd5}"));
    let tcp = std::fs::read_to_string(format!("/proc/{w}/net/tcp")).unwrap_or_default();
    let listening = tcp.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1)
            .is_some_and(|a| a.ends_with(&format!(":{XMLRPC_PORT:04X}")))
            && f.get(3) == Some(&"0A")
            && f.get(9) == Some(&inode)
    });
    assert!(listening, "fd 5 ({fd5}) is not the listener:\n{tcp}");

    // login: a wrong password is a fault; the right one a session id.
    let r = pyctd(
        &lab,
        serde_json::json!([
            ["login", ["alice", "wrong"]],
            ["login", ["mallory", "s3cret"]],
            ["login", ["alice", "s3cret"]],
        ]),
    );
    assert_eq!(fault_code(&r[0]), 2, "{r:?}");
    assert_eq!(fault_code(&r[1]), 2, "{r:?}");
    let sid = ok(&r[2]).as_str().expect("session id").to_owned();
    assert_eq!(sid.len(), 32);

    // refresh, then view with pyctd's filters, order and paging against conntrack -L.
    let table = lab.table();
    let field = |e: &Entry, k: &str| e.orig.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let dport = |e: &Entry| field(e, "dport").and_then(|p| p.parse::<u16>().ok());
    let mut want: Vec<&Entry> = table
        .values()
        .filter(|e| e.proto == 6)
        .filter(|e| field(e, "src").is_some_and(|s| s.starts_with("192.0.2.")))
        .collect();
    want.sort_by(|a, b| dport(b).cmp(&dport(a)).then(a.id.cmp(&b.id)));
    assert_eq!(want.len(), 5, "{table:?}");
    let src11 = i64::from(u32::from(std::net::Ipv4Addr::new(192, 0, 2, 11)) as i32);
    let r = pyctd(
        &lab,
        serde_json::json!([
            ["refresh", [sid]],
            ["view", [sid, {"orig_l4proto": 6, "orig_ipv4_src": "192.0.2.0/24"},
                      "orig_port_dst", "DESC", 1, 2]],
            ["view", [sid, {"orig_ipv4_src": src11}, "", "ASC", 0, 0]],
            ["view", [sid, {"mark": 1003, "orig_port_dst": 83}, "id", "asc", 0, 10]],
            ["view", [sid, {}, "orig_port_dst", "ASC", 0, 1000]],
        ]),
    );
    assert_eq!(ok(&r[0]), serde_json::json!(true));
    let page = ok(&r[1]);
    assert_eq!(page["count"], 5, "{page}");
    let rows = page["connections"].as_array().cloned().unwrap_or_default();
    let got: Vec<u32> = rows.iter().map(|r| wire_u32(&r["id"])).collect();
    let want_ids: Vec<u32> = want.iter().skip(1).take(2).map(|e| e.id).collect();
    assert_eq!(got, want_ids, "{page}");
    for row in &rows {
        let e = &table[&wire_u32(&row["id"])];
        assert_eq!(row["orig_l4proto"], 6);
        assert_eq!(row["orig_port_dst"].as_u64().map(|p| p as u16), dport(e));
        assert_eq!(
            row["orig_port_src"].as_u64().map(|p| p.to_string()),
            field(e, "sport")
        );
        assert_eq!(row["orig_src"].as_str().map(str::to_owned), field(e, "src"));
        let ip = std::net::Ipv4Addr::from(wire_u32(&row["orig_ipv4_src"]));
        assert_eq!(Some(ip.to_string()), field(e, "src"));
        assert_eq!(wire_u32(&row["mark"]), e.mark);
        assert_eq!(row["tcp_state"].as_str(), e.state.as_deref());
        let t = row["timeout"].as_u64().unwrap_or(0) as u32;
        assert!(
            t <= e.timeout + 2 && t + 30 >= e.timeout,
            "{t} {}",
            e.timeout
        );
    }
    let one = ok(&r[2]);
    assert_eq!(one["count"], 1, "{one}");
    assert_eq!(one["connections"][0]["orig_src"], "192.0.2.11");
    assert_eq!(ok(&r[3])["count"], 1);
    // Local-only entries are hidden (pyctd 0.4.2); the rest are all there.
    let all = ok(&r[4]);
    let not_local = table
        .values()
        .filter(|e| !field(e, "src").is_some_and(|s| s.starts_with("127.") || s == "::1"))
        .count();
    assert_eq!(all["count"].as_u64(), Some(not_local as u64), "{all}");

    // change mark and timeout; kill; both checked with conntrack -L.
    let target = want[0].id as i32;
    let victims: Vec<i32> = want.iter().skip(1).take(2).map(|e| e.id as i32).collect();
    let r = pyctd(
        &lab,
        serde_json::json!([
            ["change", [sid, "mark", target, 4242]],
            ["change", [sid, "timeout", target, 777]],
            ["kill", [sid, victims]],
            ["kill", [sid, [3]]],
            ["change", [sid, "mark", 3, 1]],
        ]),
    );
    assert_eq!(ok(&r[0]), serde_json::json!(true), "{r:?}");
    assert_eq!(ok(&r[1]), serde_json::json!(true), "{r:?}");
    assert_eq!(ok(&r[2]), serde_json::json!(true), "{r:?}");
    assert_eq!(fault_code(&r[3]), 3, "{r:?}");
    assert_eq!(fault_code(&r[4]), 3, "{r:?}");
    let after = lab.table();
    let t = &after[&(target as u32)];
    assert_eq!(t.mark, 4242);
    assert!(t.timeout <= 777 && t.timeout >= 770, "{}", t.timeout);
    for v in &victims {
        assert!(!after.contains_key(&(*v as u32)), "{v} still there");
    }
    for e in want.iter().skip(3) {
        assert!(after.contains_key(&e.id), "{} was not to be killed", e.id);
    }

    // set_autorefresh: a view sees a new entry without refresh.
    let r = pyctd(&lab, serde_json::json!([["set_autorefresh", [sid, 1]]]));
    assert_eq!(ok(&r[0]), serde_json::json!(true));
    sh(&[
        "ip",
        "netns",
        "exec",
        &lab.host,
        "conntrack",
        "-I",
        "-s",
        "192.0.2.99",
        "-d",
        "198.51.100.1",
        "-p",
        "udp",
        "--sport",
        "9",
        "--dport",
        "9",
        "-t",
        "3000",
    ]);
    std::thread::sleep(Duration::from_millis(1100));
    let r = pyctd(
        &lab,
        serde_json::json!([
            ["view", [sid, {"orig_ipv4_src": "192.0.2.99"}, "", "", 0, 10]],
            ["set_autorefresh", [sid, 0]],
        ]),
    );
    assert_eq!(ok(&r[0])["count"], 1, "{r:?}");

    // Faults, each followed by a call the server still answers on the same connection.
    let r = pyctd(
        &lab,
        serde_json::json!([
            ["refresh", ["0".repeat(32)]],
            ["refresh", ["forged"]],
            ["view", [sid, 3]],
            ["view", [sid, {"bogus": 1}]],
            ["change", [sid, "mark", target, "abc"]],
            ["change", [sid, "timeout", target, -1]],
            ["kill", [sid, "all"]],
            ["no_such_method", []],
            ["refresh", [sid]],
            ["__huge__", [1 << 20]],
            ["refresh", [sid]],
        ]),
    );
    assert_eq!(fault_code(&r[0]), 1, "{r:?}");
    assert_eq!(fault_code(&r[1]), 1, "{r:?}");
    for i in 2..=6 {
        assert_eq!(fault_code(&r[i]), -32602, "{i}: {r:?}");
    }
    assert_eq!(fault_code(&r[7]), -32601, "{r:?}");
    assert_eq!(ok(&r[8]), serde_json::json!(true), "{r:?}");
    assert_eq!(fault_code(&r[9]), -32600, "{r:?}");
    assert!(
        r[9]["fault"][1]
            .as_str()
            .is_some_and(|m| m.contains("too large")),
        "{r:?}"
    );
    assert_eq!(ok(&r[10]), serde_json::json!(true), "{r:?}");

    // An idle session expires (xmlrpcidle), and a new login works after it.
    std::thread::sleep(Duration::from_secs(XMLRPC_IDLE + 1));
    let r = pyctd(
        &lab,
        serde_json::json!([["refresh", [sid]], ["login", ["alice", "s3cret"]]]),
    );
    assert_eq!(fault_code(&r[0]), 1, "{r:?}");
    assert!(
        r[0]["fault"][1]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{r:?}"
    );
    assert!(ok(&r[1]).is_string());

    // A reload reads the password file again: a user added since logs in.
    let mut tool = Command::new(BIN)
        .arg("--xmlrpc-passwd")
        .arg(&pw)
        .arg("bob")
        .stdin(Stdio::piped())
        .spawn()
        .expect("portnanny --xmlrpc-passwd");
    {
        use std::io::Write;
        let mut stdin = tool.stdin.take().expect("stdin");
        stdin.write_all(b"hunter2\n").expect("password");
    }
    assert!(tool.wait().expect("wait").success());
    let r = pyctd(&lab, serde_json::json!([["login", ["bob", "hunter2"]]]));
    assert_eq!(fault_code(&r[0]), 2, "not before the reload: {r:?}");
    let reloaded = portnanny::nannyctl_conntrack::ask(&d.ctl, &Request::Reload).expect("reload");
    assert!(matches!(reloaded, Reply::Done(_)), "{reloaded:?}");
    let r = pyctd(
        &lab,
        serde_json::json!([
            ["login", ["bob", "hunter2"]],
            ["login", ["alice", "s3cret"]]
        ]),
    );
    assert!(ok(&r[0]).is_string(), "{r:?}");
    assert!(ok(&r[1]).is_string(), "{r:?}");

    // Every change is logged with the XML-RPC user's name.
    let log = d.log();
    assert!(log.contains("xmlrpc: user alice: conntrack kill"), "{log}");
    assert!(
        log.contains("xmlrpc: user alice: conntrack change"),
        "{log}"
    );
    assert!(log.contains("failed login as 'mallory'"), "{log}");
}
