//! The classic BPF program the sentry attaches to its capture socket, so that the kernel hands
//! it only what could be a probe: packets addressed to this host (not outgoing, not broadcast
//! or multicast, not on the loopback interface), unfragmented IPv4 or IPv6 (stepping over up to
//! [`IPV6_EXT_MAX`] hop-by-hop, routing and destination-options headers), carrying either a TCP
//! segment without ACK to a destination port below the TCP limit, or a UDP datagram to a port
//! below the UDP limit. Everything else (an established
//! connection's traffic above all) is dropped in the kernel before it is queued, so a flood of
//! ordinary traffic costs the sentry nothing. Accepted packets are cut to [`SNAP`] bytes: the
//! headers are all the sentry reads.
//!
//! The program runs on an AF_PACKET SOCK_DGRAM socket, so offset 0 is the network header.
//! Built at start from the settings; pure (no I/O), so it is tested by running it through the
//! small interpreter in the tests on packets built with etherparse.
//!
//! Not seen (PortSentry has the same blind spots, or worse): IPv4 fragments (`nmap -f` splits
//! the TCP header itself), IPv6 with a fragment header or more than [`IPV6_EXT_MAX`] extension
//! headers, a TCP header that ends past [`SNAP`], and probes with flag combinations that include
//! ACK (`nmap -sA`, `-sW`, `-sM`), which look like stray segments of real connections.

use libc::sock_filter;

/// Bytes of an accepted packet passed to the sentry: a 60-byte IPv4 header plus a 60-byte TCP
/// header, or an IPv6 header with extension headers of up to 136 bytes in all before one.
pub const SNAP: u32 = 256;
/// IPv6 extension headers the filter steps over (hop-by-hop options, routing, destination
/// options, in any order); a packet with more is dropped.
pub const IPV6_EXT_MAX: usize = 3;
// Next-header values of the extension headers stepped over.
const IPV6_HOPOPTS: u32 = 0;
const IPV6_ROUTING: u32 = 43;
const IPV6_DSTOPTS: u32 = 60;

const SKF_AD_OFF: u32 = 0xFFFF_F000; // -0x1000 as u32
const SKF_AD_PKTTYPE: u32 = 4;
const SKF_AD_IFINDEX: u32 = 8;
const PACKET_HOST: u32 = 0;

const TCP_ACK: u32 = 0x10;

// Instruction classes and modes (linux/filter.h); the libc constants are u32 too.
use libc::{
    BPF_ABS, BPF_ADD, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_IMM, BPF_IND, BPF_JA, BPF_JEQ, BPF_JGE,
    BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_LDX, BPF_LSH, BPF_MEM, BPF_MISC, BPF_MSH, BPF_RET,
    BPF_ST, BPF_TAX, BPF_W, BPF_X,
};

/// A jump target while assembling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L {
    Next,
    Drop,
    Accept,
    V4,
    V6,
    /// The n-th IPv6 extension header.
    Ext(usize),
    Proto,
    Tcp,
    Udp,
}

/// An instruction with symbolic jump targets.
enum I {
    /// A statement: code and k.
    S(u32, u32),
    /// A conditional jump: code, k, where to go if true, where if false.
    J(u32, u32, L, L),
    /// An unconditional jump.
    Ja(L),
    Label(L),
}

/// The filter for these destination-port limits (one past the highest port watched, per
/// protocol; 0 drops the protocol entirely) and the loopback interface's index.
pub fn program(tcp_limit: u32, udp_limit: u32, lo_ifindex: u32) -> Vec<sock_filter> {
    use I::{Ja, Label, J, S};
    let mut src = vec![
        S(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE),
        J(BPF_JMP | BPF_JEQ | BPF_K, PACKET_HOST, L::Next, L::Drop),
        S(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_IFINDEX),
        J(BPF_JMP | BPF_JEQ | BPF_K, lo_ifindex, L::Drop, L::Next),
        S(BPF_LD | BPF_B | BPF_ABS, 0),
        S(BPF_ALU | BPF_AND | BPF_K, 0xF0),
        J(BPF_JMP | BPF_JEQ | BPF_K, 0x40, L::V4, L::Next),
        J(BPF_JMP | BPF_JEQ | BPF_K, 0x60, L::V6, L::Drop),
        Label(L::V4),
        // Flags and fragment offset: MF set or an offset means a fragment.
        S(BPF_LD | BPF_H | BPF_ABS, 6),
        J(BPF_JMP | BPF_JSET | BPF_K, 0x3FFF, L::Drop, L::Next),
        // X = the IPv4 header length, 4 * IHL.
        S(BPF_LDX | BPF_B | BPF_MSH, 0),
        S(BPF_LD | BPF_B | BPF_ABS, 9),
        Ja(L::Proto),
        Label(L::V6),
        S(BPF_LDX | BPF_W | BPF_IMM, 40),
        S(BPF_LD | BPF_B | BPF_ABS, 6),
    ];
    // A = the next header, X = where it starts. Each extension header stepped over: its own
    // next-header byte becomes A (kept in M[0] meanwhile), and X moves by its length,
    // 8 * (Hdr Ext Len + 1).
    for n in 0..IPV6_EXT_MAX {
        src.extend([
            J(BPF_JMP | BPF_JEQ | BPF_K, IPV6_HOPOPTS, L::Ext(n), L::Next),
            J(BPF_JMP | BPF_JEQ | BPF_K, IPV6_ROUTING, L::Ext(n), L::Next),
            J(BPF_JMP | BPF_JEQ | BPF_K, IPV6_DSTOPTS, L::Ext(n), L::Proto),
            Label(L::Ext(n)),
            S(BPF_LD | BPF_B | BPF_IND, 0),
            S(BPF_ST, 0),
            S(BPF_LD | BPF_B | BPF_IND, 1),
            S(BPF_ALU | BPF_ADD | BPF_K, 1),
            S(BPF_ALU | BPF_LSH | BPF_K, 3),
            S(BPF_ALU | BPF_ADD | BPF_X, 0),
            S(BPF_MISC | BPF_TAX, 0),
            S(BPF_LD | BPF_MEM, 0),
        ]);
    }
    src.extend([
        Label(L::Proto),
        J(
            BPF_JMP | BPF_JEQ | BPF_K,
            libc::IPPROTO_TCP as u32,
            L::Tcp,
            L::Next,
        ),
        J(
            BPF_JMP | BPF_JEQ | BPF_K,
            libc::IPPROTO_UDP as u32,
            L::Udp,
            L::Drop,
        ),
        Label(L::Tcp),
        S(BPF_LD | BPF_H | BPF_IND, 2),
        J(BPF_JMP | BPF_JGE | BPF_K, tcp_limit, L::Drop, L::Next),
        S(BPF_LD | BPF_B | BPF_IND, 13),
        J(BPF_JMP | BPF_JSET | BPF_K, TCP_ACK, L::Drop, L::Accept),
        Label(L::Udp),
        S(BPF_LD | BPF_H | BPF_IND, 2),
        J(BPF_JMP | BPF_JGE | BPF_K, udp_limit, L::Drop, L::Accept),
        Label(L::Accept),
        S(BPF_RET | BPF_K, SNAP),
        Label(L::Drop),
        S(BPF_RET | BPF_K, 0),
    ]);
    assemble(&src)
}

/// Resolves labels into relative jump offsets. Every jump in [`program`] goes forward and
/// fewer than 256 instructions, so the offsets always fit (checked by the tests).
fn assemble(src: &[I]) -> Vec<sock_filter> {
    let mut at = Vec::new();
    let mut n = 0usize;
    for i in src {
        match i {
            I::Label(l) => at.push((*l, n)),
            _ => n += 1,
        }
    }
    let pos = |l: L, here: usize| -> u8 {
        let target = match l {
            L::Next => here + 1,
            l => at
                .iter()
                .find(|(x, _)| *x == l)
                .map_or(here + 1, |(_, p)| *p),
        };
        u8::try_from(target.saturating_sub(here + 1)).unwrap_or(0)
    };
    let mut out = Vec::with_capacity(n);
    for i in src {
        let here = out.len();
        match *i {
            I::Label(_) => {}
            I::S(code, k) => out.push(sock_filter {
                code: code as u16,
                jt: 0,
                jf: 0,
                k,
            }),
            // An unconditional jump takes its offset in k.
            I::Ja(t) => out.push(sock_filter {
                code: (BPF_JMP | BPF_JA) as u16,
                jt: 0,
                jf: 0,
                k: u32::from(pos(t, here)),
            }),
            I::J(code, k, t, f) => out.push(sock_filter {
                code: code as u16,
                jt: pos(t, here),
                jf: pos(f, here),
                k,
            }),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    /// Metadata the kernel supplies to the ancillary loads.
    #[derive(Clone, Copy)]
    pub struct Meta {
        pub pkttype: u32,
        pub ifindex: u32,
    }

    pub const HOST: Meta = Meta {
        pkttype: 0,
        ifindex: 2,
    };

    /// A classic BPF interpreter for the instructions [`program`] uses, with the kernel's
    /// semantics: an out-of-bounds load drops the packet.
    pub fn run(prog: &[sock_filter], pkt: &[u8], meta: Meta) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let mut mem = [0u32; 16];
        let load = |off: u32, size: usize| -> Option<u32> {
            let o = off as usize;
            let b = pkt.get(o..o + size)?;
            Some(b.iter().fold(0u32, |acc, &v| (acc << 8) | u32::from(v)))
        };
        loop {
            let ins = prog[pc];
            let code = u32::from(ins.code);
            pc += 1;
            let class = code & 0x07;
            match class {
                c if c == BPF_LD => {
                    let size = match code & 0x18 {
                        s if s == BPF_W => 4,
                        s if s == BPF_H => 2,
                        _ => 1,
                    };
                    let off = match code & 0xe0 {
                        m if m == BPF_ABS => ins.k,
                        m if m == BPF_IND => x.wrapping_add(ins.k),
                        m if m == BPF_MEM => {
                            a = mem[ins.k as usize];
                            continue;
                        }
                        m => panic!("ld mode {m:#x}"),
                    };
                    a = if off == SKF_AD_OFF + SKF_AD_PKTTYPE {
                        meta.pkttype
                    } else if off == SKF_AD_OFF + SKF_AD_IFINDEX {
                        meta.ifindex
                    } else {
                        match load(off, size) {
                            Some(v) => v,
                            None => return 0,
                        }
                    };
                }
                c if c == BPF_LDX => match code & 0xe0 {
                    m if m == BPF_MSH => match load(ins.k, 1) {
                        Some(v) => x = 4 * (v & 0xf),
                        None => return 0,
                    },
                    m if m == BPF_IMM => x = ins.k,
                    m => panic!("ldx mode {m:#x}"),
                },
                c if c == BPF_ST => mem[ins.k as usize] = a,
                c if c == BPF_MISC => {
                    assert_eq!(code & 0xf8, BPF_TAX);
                    x = a;
                }
                c if c == BPF_ALU => {
                    let operand = if code & BPF_X != 0 { x } else { ins.k };
                    match code & 0xf0 {
                        op if op == BPF_AND => a &= operand,
                        op if op == BPF_ADD => a = a.wrapping_add(operand),
                        op if op == BPF_LSH => a = a.wrapping_shl(operand),
                        op => panic!("alu op {op:#x}"),
                    }
                }
                c if c == BPF_JMP => {
                    let op = code & 0xf0;
                    if op == BPF_JA {
                        pc += ins.k as usize;
                        continue;
                    }
                    let taken = match op {
                        o if o == BPF_JEQ => a == ins.k,
                        o if o == BPF_JGE => a >= ins.k,
                        o if o == BPF_JSET => a & ins.k != 0,
                        o => panic!("jmp op {o:#x}"),
                    };
                    pc += usize::from(if taken { ins.jt } else { ins.jf });
                }
                c if c == BPF_RET => return ins.k,
                c => panic!("class {c:#x}"),
            }
        }
    }

    pub fn tcp4(port: u16, flags: &str) -> Vec<u8> {
        tcp4_from([10, 99, 0, 2], port, flags)
    }

    /// As [`tcp4`], from source address `src`.
    pub fn tcp4_from(src: [u8; 4], port: u16, flags: &str) -> Vec<u8> {
        tcp(PacketBuilder::ipv4(src, [10, 99, 0, 1], 64), port, flags)
    }

    pub fn tcp6(port: u16, flags: &str) -> Vec<u8> {
        let s = [0xfd, 0, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut d = s;
        d[15] = 1;
        tcp(PacketBuilder::ipv6(s, d, 64), port, flags)
    }

    fn tcp(
        b: etherparse::PacketBuilderStep<etherparse::IpHeaders>,
        port: u16,
        flags: &str,
    ) -> Vec<u8> {
        let mut b = b.tcp(40000, port, 1, 1024);
        for f in flags.chars() {
            b = match f {
                'S' => b.syn(),
                'F' => b.fin(),
                'A' => b.ack(0),
                'P' => b.psh(),
                'U' => b.urg(0),
                'R' => b.rst(),
                _ => panic!("flag {f}"),
            };
        }
        let mut out = Vec::new();
        b.write(&mut out, &[]).unwrap();
        out
    }

    pub fn udp4(port: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 99, 0, 2], [10, 99, 0, 1], 64)
            .udp(40000, port)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    pub fn udp6(port: u16) -> Vec<u8> {
        let s = [0xfd, 0, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut d = s;
        d[15] = 1;
        let mut out = Vec::new();
        PacketBuilder::ipv6(s, d, 64)
            .udp(40000, port)
            .write(&mut out, b"x")
            .unwrap();
        out
    }

    /// `pkt` (an IPv6 packet) with extension headers inserted after its fixed header: (next
    /// header value, Hdr Ext Len) each, filled with Pad1 options.
    fn with_ext(pkt: Vec<u8>, exts: &[(u8, u8)]) -> Vec<u8> {
        let (fixed, payload) = pkt.split_at(40);
        let mut out = fixed.to_vec();
        let mut chain = Vec::new();
        let kinds: Vec<u8> = exts.iter().map(|e| e.0).chain([fixed[6]]).collect();
        for (i, (_, len)) in exts.iter().enumerate() {
            let mut h = vec![0u8; 8 * (usize::from(*len) + 1)];
            h[0] = kinds[i + 1];
            h[1] = *len;
            chain.extend(h);
        }
        out[6] = kinds[0];
        let total = u16::try_from(chain.len() + payload.len()).unwrap();
        out[4..6].copy_from_slice(&total.to_be_bytes());
        out.extend(chain);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn the_filter_passes_probes_only() {
        let p = program(1024, 200, 1);
        assert!(p.len() < 256);
        let rows: [(&str, Vec<u8>, Meta, bool); 20] = [
            ("v4 syn", tcp4(22, "S"), HOST, true),
            ("v4 fin", tcp4(22, "F"), HOST, true),
            ("v4 null", tcp4(22, ""), HOST, true),
            ("v4 xmas", tcp4(22, "FPU"), HOST, true),
            ("v4 syn above the tcp limit", tcp4(1024, "S"), HOST, false),
            ("v4 syn+ack", tcp4(22, "SA"), HOST, false),
            ("v4 ack", tcp4(22, "A"), HOST, false),
            ("v4 fin+ack", tcp4(22, "FA"), HOST, false),
            ("v4 psh+ack data", tcp4(22, "PA"), HOST, false),
            ("v6 syn", tcp6(22, "S"), HOST, true),
            ("v6 xmas", tcp6(1023, "FPU"), HOST, true),
            ("v6 ack", tcp6(22, "A"), HOST, false),
            ("v4 udp", udp4(69, b"x"), HOST, true),
            ("v4 udp above the udp limit", udp4(200, b"x"), HOST, false),
            ("v6 udp", udp6(161), HOST, true),
            (
                "outgoing",
                tcp4(22, "S"),
                Meta {
                    pkttype: 4,
                    ifindex: 2,
                },
                false,
            ),
            (
                "broadcast",
                udp4(69, b"x"),
                Meta {
                    pkttype: 1,
                    ifindex: 2,
                },
                false,
            ),
            (
                "loopback interface",
                tcp4(22, "S"),
                Meta {
                    pkttype: 0,
                    ifindex: 1,
                },
                false,
            ),
            ("truncated", tcp4(22, "S")[..30].to_vec(), HOST, false),
            ("not ip", vec![0x00; 60], HOST, false),
        ];
        for (label, pkt, meta, want) in rows {
            let got = run(&p, &pkt, meta);
            assert_eq!(got != 0, want, "{label}");
            if want {
                assert_eq!(got, SNAP, "{label}");
            }
        }
        // A fragment (MF set) and a later fragment (offset) are dropped.
        let mut frag = tcp4(22, "S");
        frag[6] |= 0x20;
        assert_eq!(run(&p, &frag, HOST), 0);
        let mut later = tcp4(22, "S");
        later[7] = 1;
        assert_eq!(run(&p, &later, HOST), 0);
        // IPv4 options move the TCP header: X follows IHL.
        let mut opts = tcp4(22, "A");
        let tcp_at = 20;
        let mut with_opts = opts[..tcp_at].to_vec();
        with_opts[0] = 0x46;
        with_opts.extend_from_slice(&[1, 1, 1, 0]);
        with_opts.extend_from_slice(&opts.split_off(tcp_at));
        assert_eq!(run(&p, &with_opts, HOST), 0, "ack after options");
        with_opts[24 + 13] = 0x02;
        assert_eq!(run(&p, &with_opts, HOST), SNAP, "syn after options");
        // IPv6 extension headers: up to IPV6_EXT_MAX are stepped over, in any order, and the
        // detector reads the same probe from what the filter passes.
        let rows: [(&str, Vec<u8>, bool); 7] = [
            ("hop-by-hop, syn", with_ext(tcp6(22, "S"), &[(0, 0)]), true),
            ("hop-by-hop, ack", with_ext(tcp6(22, "A"), &[(0, 0)]), false),
            (
                "three headers, fin",
                with_ext(tcp6(23, "F"), &[(0, 1), (43, 0), (60, 2)]),
                true,
            ),
            (
                "destination options, udp",
                with_ext(udp6(161), &[(60, 0)]),
                true,
            ),
            (
                "four headers",
                with_ext(tcp6(22, "S"), &[(0, 0), (60, 0), (60, 0), (60, 0)]),
                false,
            ),
            (
                "fragment header",
                with_ext(tcp6(22, "S"), &[(44, 0)]),
                false,
            ),
            (
                "above the limit after a header",
                with_ext(tcp6(1024, "S"), &[(60, 0)]),
                false,
            ),
        ];
        for (label, pkt, want) in rows {
            let got = run(&p, &pkt, HOST);
            assert_eq!(got != 0, want, "{label}");
            if want {
                let seen = &pkt[..pkt.len().min(got as usize)];
                let parsed = crate::sentry::detect::parse(seen).expect(label);
                assert!(parsed.kind.is_some(), "{label}: {parsed:?}");
            }
        }
        // No watch for a protocol: limit 0 drops it all.
        let none = program(0, 0, 1);
        assert_eq!(run(&none, &tcp4(1, "S"), HOST), 0);
        assert_eq!(run(&none, &udp4(1, b""), HOST), 0);
    }
}
