//! From a captured packet to a report: parse with etherparse, classify the probe (SYN, FIN,
//! NULL, XMAS, UDP), keep only watched ports without a listener and packets that belong to no
//! socket of this host, and rate-limit duplicates.
//!
//! Runs in the sentry. Every packet is hostile: it may be truncated, malformed, or forged in
//! every field, so parsing goes through etherparse's checked slices and a failure only drops
//! the packet. Whether a packet is the host's own is decided twice. First by the socket
//! table, re-read at most every [`REFRESH`] (it knows a port has a listener whatever the
//! address the listener is bound to; in the sentry it comes from sock_diag's listener dumps,
//! or /proc/net). Then, for a packet that passed that and the rate limits, by asking the
//! kernel about that one packet ([`Sockets::lookup`], sock_diag's exact lookup in the sentry):
//! asked after the packet arrived, so a connection or UDP socket younger than the table's copy
//! is still found. A host that cannot answer that (no tcp_diag/udp_diag) gets the older check:
//! the /proc/net table, which also lists connections, re-read if older than [`RECHECK`]. The
//! rate limits come first, so a flood costs neither table reads nor lookups.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use privsep::proto::{ProbeKind, ProbeReport, SentrySettings};

use super::netstat::{Proto, SocketTable};
use super::report::{check_report, mode_for};

/// The socket table is re-read at most this often in the ordinary course.
pub const REFRESH: Duration = Duration::from_millis(200);
/// Without exact lookups: before reporting, the table is re-read if it is older than this.
pub const RECHECK: Duration = Duration::from_millis(10);
/// The same (source, port, kind) is reported at most once per this period.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(1);
/// Most reports per second in all, whatever their sources (forged sources defeat the
/// per-source limit); the rest are counted and summarised in a log line.
pub const MAX_REPORTS_PER_SEC: u32 = 200;
/// Most reports per second from one source: far more than any `hits:` threshold needs, and
/// small enough that one fast scanner cannot take the whole [`MAX_REPORTS_PER_SEC`] and hide
/// another (measured: with one shared cap, back-to-back scans hid every second scanner).
pub const MAX_REPORTS_PER_SOURCE_PER_SEC: u32 = 20;
/// Reading the socket table may take at most about 1/READ_SHARE of the sentry's time: on a
/// host with a huge table (131,072 TIME_WAIT sockets made one read cost tens of milliseconds)
/// the re-reads are spaced out to READ_SHARE times a read's cost.
const READ_SHARE: u32 = 20;
/// Most (source, port, kind) entries remembered for the duplicate check.
pub const MAX_RECENT: usize = 8192;

/// CPU time this thread has used (the sentry is single-threaded).
fn thread_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let Ok(u) = getrusage(UsageWho::RUSAGE_THREAD) else {
        return Duration::ZERO;
    };
    let t = |tv: nix::sys::time::TimeVal| {
        Duration::new(
            u64::try_from(tv.tv_sec()).unwrap_or(0),
            u32::try_from(tv.tv_usec())
                .unwrap_or(0)
                .saturating_mul(1000),
        )
    };
    t(u.user_time()) + t(u.system_time())
}

/// A parsed packet: what the detection needs of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: Proto,
    /// The probe this packet is, if any (TCP with ACK or RST, or odd flags, is none).
    pub kind: Option<ProbeKind>,
}

/// The probe kind of a TCP segment with these flags, or None (an ACK means an existing
/// connection or an ACK scan, which this mode does not report; a RST is no probe).
pub fn classify_tcp(
    syn: bool,
    fin: bool,
    rst: bool,
    psh: bool,
    urg: bool,
    ack: bool,
) -> Option<ProbeKind> {
    if ack || rst {
        return None;
    }
    match (syn, fin, psh, urg) {
        (true, _, _, _) => Some(ProbeKind::Syn),
        (false, true, true, true) => Some(ProbeKind::Xmas),
        (false, true, false, false) => Some(ProbeKind::Fin),
        (false, false, false, false) => Some(ProbeKind::Null),
        // FIN with PSH or URG alone, PSH/URG without FIN: no scan nmap names.
        _ => None,
    }
}

/// Parses the network-layer bytes of a captured packet (possibly cut short after the
/// transport header). None for anything that is not an unfragmented IPv4/IPv6 TCP or UDP
/// packet with a whole transport header.
pub fn parse(bytes: &[u8]) -> Option<Packet> {
    let p = LaxSlicedPacket::from_ip(bytes).ok()?;
    let (src, dst, fragmented) = match p.net.as_ref()? {
        LaxNetSlice::Ipv4(v4) => (
            IpAddr::V4(v4.header().source_addr()),
            IpAddr::V4(v4.header().destination_addr()),
            v4.is_payload_fragmented(),
        ),
        LaxNetSlice::Ipv6(v6) => (
            IpAddr::V6(v6.header().source_addr()),
            IpAddr::V6(v6.header().destination_addr()),
            v6.is_payload_fragmented(),
        ),
        LaxNetSlice::Arp(_) => return None,
    };
    if fragmented {
        return None;
    }
    match p.transport.as_ref()? {
        TransportSlice::Tcp(t) => Some(Packet {
            src: SocketAddr::new(src, t.source_port()),
            dst: SocketAddr::new(dst, t.destination_port()),
            proto: Proto::Tcp,
            kind: classify_tcp(t.syn(), t.fin(), t.rst(), t.psh(), t.urg(), t.ack()),
        }),
        TransportSlice::Udp(u) => Some(Packet {
            src: SocketAddr::new(src, u.source_port()),
            dst: SocketAddr::new(dst, u.destination_port()),
            proto: Proto::Udp,
            kind: Some(ProbeKind::Udp),
        }),
        _ => None,
    }
}

/// Where the socket table comes from (the /proc files in the sentry, text in tests).
pub trait Sockets {
    fn read(&mut self) -> Option<SocketTable>;
    /// The kernel's answer, asked now, for this one packet (arrived on `ifindex`): does it
    /// belong to one of the host's sockets? None when the host cannot say.
    fn lookup(&mut self, p: &Packet, ifindex: u32) -> Option<bool>;
}

/// The detection state.
pub struct Detector<S: Sockets> {
    settings: SentrySettings,
    sockets: S,
    table: SocketTable,
    read_at: Option<Instant>,
    recent: HashMap<(IpAddr, u16, ProbeKind), Instant>,
    second: Instant,
    in_second: u32,
    /// Reports per source in the current second.
    per_source: HashMap<IpAddr, u32>,
    /// What the last socket-table read cost.
    read_cost: Duration,
    /// Reports suppressed by the per-second cap or a full duplicate table since the last
    /// [`Detector::take_dropped`].
    dropped: u64,
    /// Probes whose source was the host's own address (forged: the host does not probe
    /// itself over the wire), since the last [`Detector::take_self_sourced`].
    self_sourced: u64,
}

impl<S: Sockets> Detector<S> {
    pub fn new(settings: SentrySettings, sockets: S, now: Instant) -> Detector<S> {
        Detector {
            settings,
            sockets,
            table: SocketTable::default(),
            read_at: None,
            recent: HashMap::new(),
            second: now,
            in_second: 0,
            per_source: HashMap::new(),
            read_cost: Duration::ZERO,
            dropped: 0,
            self_sourced: 0,
        }
    }

    pub fn sockets_mut(&mut self) -> &mut S {
        &mut self.sockets
    }

    pub fn settings(&self) -> &SentrySettings {
        &self.settings
    }

    /// How many probes came with the host's own address as source since the last call.
    pub fn take_self_sourced(&mut self) -> u64 {
        std::mem::take(&mut self.self_sourced)
    }

    /// How many reports were suppressed since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    fn refresh(&mut self, now: Instant, max_age: Duration) {
        let max_age = max_age.max(self.read_cost * READ_SHARE);
        if self
            .read_at
            .is_some_and(|t| now.saturating_duration_since(t) < max_age)
        {
            return;
        }
        // A failed read keeps the old table; the next packet tries again. The cost is this
        // thread's CPU time, not the wall clock: on a busy host a read that was merely
        // descheduled would otherwise space the re-reads out far enough to report a stale
        // table's view of the host's own new connections.
        let started = thread_cpu();
        if let Some(t) = self.sockets.read() {
            self.table = t;
            self.read_at = Some(now);
        }
        self.read_cost = thread_cpu().saturating_sub(started);
    }

    /// Is the packet served by, or part of, one of the host's sockets?
    fn is_hosts_own(&self, p: &Packet) -> bool {
        self.table.has_listener(p.proto, p.dst.port()) || self.table.owns(p.proto, p.dst, p.src)
    }

    /// The report for the packet `bytes` (captured on interface `ifindex`), if it is a probe
    /// to report now.
    pub fn examine(&mut self, bytes: &[u8], ifindex: u32, now: Instant) -> Option<ProbeReport> {
        let p = parse(bytes)?;
        let kind = p.kind?;
        let port = p.dst.port();
        let report = ProbeReport {
            src: p.src.ip(),
            dst: p.dst.ip(),
            port,
            mode: mode_for(&self.settings, kind, port)?,
            kind,
        };
        if report.src == report.dst {
            // Never reported (the parent would refuse it), but counted and logged: a forger
            // trying to make the host block itself.
            self.self_sourced += 1;
            return None;
        }
        // The parent would refuse anything else (and restart us): never send it.
        check_report(&self.settings, &report).ok()?;
        let key = (report.src, port, kind);
        if self
            .recent
            .get(&key)
            .is_some_and(|t| now.saturating_duration_since(*t) < DUPLICATE_WINDOW)
        {
            return None;
        }
        self.refresh(now, REFRESH);
        if self.is_hosts_own(&p) {
            return None;
        }
        // ORDER: the per-second cap before the lookup or re-check, so that a flood past the cap
        // (forged sources, every port) costs no lookups and no more /proc reads than REFRESH
        // allows.
        if now.saturating_duration_since(self.second) >= Duration::from_secs(1) {
            self.second = now;
            self.in_second = 0;
            self.per_source.clear();
        }
        let from_source = self.per_source.get(&report.src).copied().unwrap_or(0);
        if self.in_second >= MAX_REPORTS_PER_SEC || from_source >= MAX_REPORTS_PER_SOURCE_PER_SEC {
            self.dropped += 1;
            return None;
        }
        let owned = match self.sockets.lookup(&p, ifindex) {
            Some(owned) => owned,
            // No exact lookup: a connection opened since the last re-read (RECHECK or READ_SHARE
            // reads' cost ago) is not in the copy, and its packet would be reported.
            None => {
                self.refresh(now, RECHECK);
                self.is_hosts_own(&p)
            }
        };
        if owned {
            return None;
        }
        if self.recent.len() >= MAX_RECENT {
            self.recent
                .retain(|_, t| now.saturating_duration_since(*t) < DUPLICATE_WINDOW);
            if self.recent.len() >= MAX_RECENT {
                self.dropped += 1;
                return None;
            }
        }
        self.recent.insert(key, now);
        self.in_second += 1;
        *self.per_source.entry(report.src).or_insert(0) += 1;
        Some(report)
    }

    /// Forgets duplicate-check entries older than the window (call now and then).
    pub fn expire(&mut self, now: Instant) {
        self.recent
            .retain(|_, t| now.saturating_duration_since(*t) < DUPLICATE_WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::super::bpf::tests::{tcp4, tcp4_from, tcp6, udp4, udp6};
    use super::*;
    use privsep::proto::{PortSet, SentryMode, Watch};
    use std::cell::Cell;
    use std::rc::Rc;

    /// A socket table from fixed text, counting reads; and, when `live` holds the kernel's
    /// current sockets as text, exact lookups in them, counted too.
    struct Fake {
        text: Rc<Cell<&'static str>>,
        reads: Rc<Cell<u32>>,
        live: Option<Rc<Cell<&'static str>>>,
        lookups: Rc<Cell<u32>>,
    }

    fn table(text: &str) -> SocketTable {
        let mut t = SocketTable::default();
        t.add_text(Proto::Tcp, text);
        t
    }

    impl Sockets for Fake {
        fn read(&mut self) -> Option<SocketTable> {
            self.reads.set(self.reads.get() + 1);
            Some(table(self.text.get()))
        }

        fn lookup(&mut self, p: &Packet, _ifindex: u32) -> Option<bool> {
            let live = table(self.live.as_ref()?.get());
            self.lookups.set(self.lookups.get() + 1);
            Some(live.owns(p.proto, p.dst, p.src) || live.has_listener(p.proto, p.dst.port()))
        }
    }

    const EMPTY: &str = "header\n";
    // 0.0.0.0:22 LISTEN; 10.99.0.1:5000 <-> 10.99.0.2:40000 ESTABLISHED (little-endian text).
    const BUSY: &str = "header
   0: 00000000:0016 00000000:0000 0A 0
   1: 0100630A:1388 0200630A:9C40 01 0
";

    fn settings() -> SentrySettings {
        SentrySettings {
            tcp: Some(Watch::Below {
                below: 6000,
                except: PortSet::new(vec![113]).unwrap(),
            }),
            udp: Some(Watch::Ports(PortSet::new(vec![69]).unwrap())),
        }
    }

    fn detector(text: &'static str) -> (Detector<Fake>, Rc<Cell<&'static str>>, Rc<Cell<u32>>) {
        let t = Rc::new(Cell::new(text));
        let r = Rc::new(Cell::new(0));
        let d = Detector::new(
            settings(),
            Fake {
                text: t.clone(),
                reads: r.clone(),
                live: None,
                lookups: Rc::default(),
            },
            Instant::now(),
        );
        (d, t, r)
    }

    #[test]
    fn classification_rows() {
        let rows: [(&str, Vec<u8>, Option<ProbeKind>); 12] = [
            ("v4 syn", tcp4(22, "S"), Some(ProbeKind::Syn)),
            ("v4 fin", tcp4(22, "F"), Some(ProbeKind::Fin)),
            ("v4 null", tcp4(22, ""), Some(ProbeKind::Null)),
            ("v4 xmas", tcp4(22, "FPU"), Some(ProbeKind::Xmas)),
            ("v4 syn+ack", tcp4(22, "SA"), None),
            ("v4 fin+ack", tcp4(22, "FA"), None),
            ("v4 rst", tcp4(22, "R"), None),
            ("v4 psh alone", tcp4(22, "P"), None),
            ("v6 syn", tcp6(22, "S"), Some(ProbeKind::Syn)),
            ("v6 fin", tcp6(22, "F"), Some(ProbeKind::Fin)),
            ("v6 null", tcp6(22, ""), Some(ProbeKind::Null)),
            ("v6 xmas", tcp6(22, "FPU"), Some(ProbeKind::Xmas)),
        ];
        for (label, pkt, want) in rows {
            assert_eq!(parse(&pkt).map(|p| p.kind), Some(want), "{label}");
        }
        let u = parse(&udp6(161)).unwrap();
        assert_eq!(
            (u.proto, u.kind, u.dst.port()),
            (Proto::Udp, Some(ProbeKind::Udp), 161)
        );
        let u = parse(&udp4(69, b"x")).unwrap();
        assert_eq!(u.src, "10.99.0.2:40000".parse().unwrap());
        // Cut after the TCP header (as the filter's snap length does to a big packet): parsed.
        let mut big = udp4(69, &[0u8; 1000]);
        big.truncate(28);
        assert_eq!(parse(&big).map(|p| p.kind), Some(Some(ProbeKind::Udp)));
        // Hostile input: no panic, no packet.
        for junk in [
            &[][..],
            &[0x45][..],
            &tcp4(22, "S")[..30],
            &[0x60; 39][..],
            &[0xff; 80][..],
        ] {
            assert_eq!(parse(junk), None);
        }
    }

    #[test]
    fn reports_watched_ports_only() {
        let (mut d, _, _) = detector(EMPTY);
        let now = Instant::now();
        let r = d.examine(&tcp4(22, "S"), 0, now).unwrap();
        assert_eq!(
            (r.src, r.dst, r.port, r.mode, r.kind),
            (
                "10.99.0.2".parse().unwrap(),
                "10.99.0.1".parse().unwrap(),
                22,
                SentryMode::Atcp,
                ProbeKind::Syn
            )
        );
        assert_eq!(
            d.examine(&tcp6(80, "FPU"), 0, now).map(|r| r.mode),
            Some(SentryMode::Atcp)
        );
        assert_eq!(
            d.examine(&udp4(69, b"x"), 0, now).map(|r| r.mode),
            Some(SentryMode::Sudp)
        );
        assert_eq!(
            d.examine(&udp4(70, b"x"), 0, now),
            None,
            "udp port not listed"
        );
        assert_eq!(d.examine(&tcp4(113, "S"), 0, now), None, "excepted");
        assert_eq!(d.examine(&tcp4(6000, "S"), 0, now), None, "not below");
        assert_eq!(d.examine(&tcp4(23, "A"), 0, now), None, "no probe");
    }

    #[test]
    fn listeners_and_own_connections_are_not_probes() {
        let (mut d, text, reads) = detector(BUSY);
        let now = Instant::now();
        assert_eq!(
            d.examine(&tcp4(22, "S"), 0, now),
            None,
            "port 22 has a listener"
        );
        // A FIN from 10.99.0.2:40000 to 10.99.0.1:5000 belongs to the established socket.
        assert_eq!(d.examine(&tcp4(5000, "F"), 0, now), None);
        assert_eq!(
            reads.get(),
            1,
            "one read: the re-check finds the table fresh"
        );
        // The listener goes away: after REFRESH the port is a stealth target again.
        text.set(EMPTY);
        let later = now + REFRESH;
        assert!(d.examine(&tcp4(22, "S"), 0, later).is_some());
        // It gains a listener while running: the re-check before reporting sees it at once.
        text.set(BUSY);
        let soon = later + RECHECK;
        assert_eq!(d.examine(&tcp4(22, "F"), 0, soon), None);
    }

    #[test]
    fn a_connection_younger_than_the_table_is_found_by_the_exact_lookup() {
        let text = Rc::new(Cell::new(EMPTY));
        let live = Rc::new(Cell::new(EMPTY));
        let (reads, lookups) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let mut d = Detector::new(
            settings(),
            Fake {
                text: text.clone(),
                reads: reads.clone(),
                live: Some(live.clone()),
                lookups: lookups.clone(),
            },
            Instant::now(),
        );
        let now = Instant::now();
        assert!(d.examine(&tcp4(22, "S"), 0, now).is_some());
        // The host opens 10.99.0.1:5000 <-> 10.99.0.2:40000 after that read; a FIN forged on
        // its 4-tuple arrives 1 ms later, long before the table may be read again.
        text.set(BUSY);
        live.set(BUSY);
        let soon = now + Duration::from_millis(1);
        assert_eq!(d.examine(&tcp4(5000, "F"), 0, soon), None);
        assert_eq!((reads.get(), lookups.get()), (1, 2));
        // A FIN to a port with no socket is still a probe.
        assert!(d.examine(&tcp4(5001, "F"), 0, soon).is_some());
        // Past the per-source cap, no lookups at all.
        let t = now + DUPLICATE_WINDOW * 2;
        for p in 1000..1100u16 {
            d.examine(&tcp4(p, "S"), 0, t);
        }
        assert_eq!(
            lookups.get(),
            3 + MAX_REPORTS_PER_SOURCE_PER_SEC,
            "lookups only for reports the caps let through"
        );
    }

    #[test]
    fn without_exact_lookups_a_young_connection_is_only_found_after_recheck() {
        let (mut d, text, reads) = detector(EMPTY);
        let now = Instant::now();
        assert!(d.examine(&tcp4(22, "S"), 0, now).is_some());
        text.set(BUSY);
        // The fallback's known limit: within RECHECK of the last read, the copy decides.
        let soon = now + Duration::from_millis(1);
        assert!(d.examine(&tcp4(5000, "F"), 0, soon).is_some());
        assert_eq!(d.examine(&tcp4(5000, ""), 0, now + RECHECK), None);
        assert_eq!(reads.get(), 2);
    }

    #[test]
    fn duplicates_and_floods_are_limited() {
        let (mut d, _, reads) = detector(EMPTY);
        let now = Instant::now();
        assert!(d.examine(&tcp4(22, "S"), 0, now).is_some());
        let n = reads.get();
        for _ in 0..1000 {
            assert_eq!(d.examine(&tcp4(22, "S"), 0, now), None);
        }
        assert_eq!(reads.get(), n, "duplicates cost no /proc read");
        assert!(d.examine(&tcp4(22, "F"), 0, now).is_some(), "another kind");
        assert!(d
            .examine(&tcp4(22, "S"), 0, now + DUPLICATE_WINDOW)
            .is_some());
        // Many ports in one second from one source: capped per source, the excess counted;
        // a second scanner in the same second is still reported.
        let t = now + DUPLICATE_WINDOW * 3;
        let sent = (1..=1000u16)
            .filter(|p| *p != 113 && d.examine(&tcp4(*p, "S"), 0, t).is_some())
            .count();
        assert_eq!(sent, MAX_REPORTS_PER_SOURCE_PER_SEC as usize);
        assert_eq!(
            d.take_dropped(),
            999 - u64::from(MAX_REPORTS_PER_SOURCE_PER_SEC)
        );
        assert!(
            d.examine(&tcp4_from([10, 99, 0, 3], 22, "S"), 0, t)
                .is_some(),
            "another scanner is not hidden by the first"
        );
        // Many sources (a forged flood): the global cap holds.
        let sent = (0..1000u32)
            .filter(|i| {
                let src = [10, 98, (i / 200) as u8, (i % 200) as u8 + 1];
                d.examine(&tcp4_from(src, 22, "S"), 0, t).is_some()
            })
            .count();
        assert_eq!(
            sent + MAX_REPORTS_PER_SOURCE_PER_SEC as usize + 1,
            MAX_REPORTS_PER_SEC as usize
        );
        d.take_dropped();
        // Past the cap, packets within one REFRESH cost no /proc read at all.
        let n = reads.get();
        for p in 1001..2000u16 {
            assert_eq!(d.examine(&tcp4(p, "S"), 0, t + RECHECK * 5), None);
        }
        assert_eq!(reads.get(), n);
        assert_eq!(d.take_dropped(), 999);
        assert_eq!(d.take_dropped(), 0);
    }
}
