//! Frames for the differential test: valid frames of every kind the data path decides on, built
//! from a pool of flows that the state under test knows (protected, unprotected, exempt,
//! established, time-wait, tracked, proven), then varied (VLAN stacks, IPv4 options, IPv6
//! extension chains, fragments, padding, TCP option lists that lie) and mutated (a field
//! corrupted, cut short); and random bytes. Deterministic for a seed.
#![expect(
    clippy::cast_possible_truncation,
    reason = "random bytes and small lengths are cut to the widths of header fields on purpose"
)]
#![expect(
    clippy::many_single_char_names,
    reason = "segments, layouts and options are short-lived locals"
)]
use std::net::IpAddr;

use intercept_common::{
    checksum::{add_bytes, finish},
    config::{FlowKey, flags},
    cookie::{self, CookieOpts, Flow, SLOT_SHIFT, SynInput, WSCALE_NONE, ip_of, mss_index},
    craft::{TcpSegment, ipv4_header, ipv6_header, tcp_bytes},
    parse::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, tcp_flags},
};

use crate::model::Model;

/// `SplitMix64`: small, fast, and the same sequence for a seed on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// The next 32 random bits.
    pub fn u32(&mut self) -> u32 {
        (self.u64() >> 32) as u32
    }
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
    /// True with probability `pct` percent.
    pub fn pct(&mut self, pct: u32) -> bool {
        self.below(100) < pct as usize
    }
    /// One of `xs`.
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u64() as u8).collect()
    }
    /// 1 to `n` random bytes.
    pub fn some_bytes(&mut self, n: usize) -> Vec<u8> {
        let k = 1 + self.below(n);
        self.bytes(k)
    }
    /// 0 to `n` - 1 random bytes.
    pub fn bytes_below(&mut self, n: usize) -> Vec<u8> {
        let k = self.below(n);
        self.bytes(k)
    }
}

/// A client -> server 4-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSpec {
    /// Client address.
    pub src: IpAddr,
    /// Server address.
    pub dst: IpAddr,
    /// Client port.
    pub sport: u16,
    /// Server port.
    pub dport: u16,
}

impl FlowSpec {
    /// Its key, as the data path keys flows.
    #[must_use]
    pub fn key(&self) -> FlowKey {
        FlowKey::of(&self.flow())
    }
    /// Its flow.
    #[must_use]
    pub fn flow(&self) -> Flow {
        Flow {
            saddr: cookie::words_of(self.src),
            daddr: cookie::words_of(self.dst),
            sport: self.sport,
            dport: self.dport,
        }
    }
    /// The flow of a key.
    #[must_use]
    pub fn of_key(k: &FlowKey) -> FlowSpec {
        FlowSpec {
            src: ip_of(&k.saddr),
            dst: ip_of(&k.daddr),
            sport: k.sport,
            dport: k.dport,
        }
    }
}

/// Servers: protected by some states' scope, not by others.
pub const SERVERS_V4: [&str; 4] = ["198.18.0.1", "198.18.1.7", "198.18.1.200", "198.18.2.5"];
/// IPv6 servers.
pub const SERVERS_V6: [&str; 4] = [
    "2001:db8::1",
    "2001:db8:1::7",
    "2001:db8:1::1:200",
    "2001:db8:2::5",
];
/// Server ports.
pub const PORTS: [u16; 5] = [80, 443, 8080, 22, 84];

/// A random flow: a client in `198.19.0.0/16` or `2001:db8:c::/48` (now and then an exempt one,
/// `198.19.77.0/24` or `2001:db8:ee::/48`), a server of the lists, a server port of [`PORTS`] (or
/// any).
///
/// # Panics
/// Never: the addresses it formats are valid.
pub fn random_flow(rng: &mut Rng) -> FlowSpec {
    let v6 = rng.pct(45);
    let exempt = rng.pct(8);
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        let src = if exempt {
            format!("2001:db8:ee::{:x}", rng.below(4) + 1)
        } else {
            format!("2001:db8:c::{:x}", rng.below(40) + 1)
        };
        (src.parse().unwrap(), rng.pick(&SERVERS_V6).parse().unwrap())
    } else {
        let src = if exempt {
            format!("198.19.77.{}", rng.below(4) + 1)
        } else {
            format!("198.19.{}.{}", rng.below(3), rng.below(40) + 1)
        };
        (src.parse().unwrap(), rng.pick(&SERVERS_V4).parse().unwrap())
    };
    let dport = if rng.pct(10) {
        rng.u32() as u16
    } else {
        rng.pick(&PORTS)
    };
    FlowSpec {
        src,
        dst,
        sport: 1024 + (rng.u32() % 64_000) as u16,
        dport,
    }
}

/// A pool of `n` random flows, which the frames then reuse (so state keyed by flow is hit).
pub fn pool(rng: &mut Rng, n: usize) -> Vec<FlowSpec> {
    (0..n).map(|_| random_flow(rng)).collect()
}

/// What a SYN offered, to build both the SYN and the ACK completing its cookie.
#[derive(Clone, Copy, Debug)]
struct Offer {
    mss: u16,
    wscale: Option<u8>,
    sack: bool,
    ts: bool,
    ecn: bool,
    tsval: u32,
}

fn offer(rng: &mut Rng) -> Offer {
    Offer {
        mss: rng.pick(&[
            0, 536, 1220, 1300, 1380, 1420, 1440, 1460, 8940, 9000, 65535,
        ]),
        wscale: if rng.pct(75) {
            Some(rng.pick(&[0, 1, 2, 5, 6, 7, 8, 9, 10, 14, 15, 200]))
        } else {
            None
        },
        sack: rng.pct(75),
        ts: rng.pct(70),
        ecn: rng.pct(20),
        tsval: rng.u32(),
    }
}

/// The SYN options of an offer in one of the layouts real stacks send.
fn syn_options(rng: &mut Rng, o: &Offer) -> Vec<u8> {
    let mut v = Vec::new();
    let mss = |v: &mut Vec<u8>| {
        if o.mss != 0 {
            v.extend_from_slice(&[2, 4]);
            v.extend_from_slice(&o.mss.to_be_bytes());
        }
    };
    let ts = |v: &mut Vec<u8>| {
        if o.ts {
            v.extend_from_slice(&[8, 10]);
            v.extend_from_slice(&o.tsval.to_be_bytes());
            v.extend_from_slice(&[0; 4]);
        }
    };
    match rng.below(3) {
        // Linux: MSS, SACK-permitted, TS, NOP, WS (NOP NOP before TS without SACK).
        0 => {
            mss(&mut v);
            if o.sack {
                v.extend_from_slice(&[4, 2]);
            } else if o.ts {
                v.extend_from_slice(&[1, 1]);
            }
            ts(&mut v);
            if let Some(w) = o.wscale {
                v.extend_from_slice(&[1, 3, 3, w]);
            }
        }
        // macOS: MSS, NOP, WS, NOP, NOP, TS, SACK-permitted, EOL.
        1 => {
            mss(&mut v);
            if let Some(w) = o.wscale {
                v.extend_from_slice(&[1, 3, 3, w]);
            }
            if o.ts {
                v.extend_from_slice(&[1, 1]);
            }
            ts(&mut v);
            if o.sack {
                v.extend_from_slice(&[4, 2, 0, 0]);
            }
        }
        // Windows: MSS, NOP, WS, NOP, NOP, SACK-permitted (+ TS).
        _ => {
            mss(&mut v);
            if let Some(w) = o.wscale {
                v.extend_from_slice(&[1, 3, 3, w]);
            }
            if o.sack {
                v.extend_from_slice(&[1, 1, 4, 2]);
            }
            if o.ts {
                v.extend_from_slice(&[1, 1]);
            }
            ts(&mut v);
        }
    }
    v
}

/// TCP options that lie: lengths 0 or 1, lengths past the header, unknown kinds, signatures,
/// two timestamps options, more options than the walk follows, an early EOL.
fn lying_options(rng: &mut Rng) -> Vec<u8> {
    let mut v = Vec::new();
    let n = rng.below(14);
    for _ in 0..n {
        match rng.below(12) {
            0 => v.push(1),
            1 => v.push(0),
            2 => v.extend_from_slice(&[2, 4, 5, 0xb4]),
            3 => v.extend_from_slice(&[3, 3, rng.u32() as u8]),
            4 => v.extend_from_slice(&[4, 2]),
            5 => {
                v.extend_from_slice(&[8, 10]);
                v.extend_from_slice(&rng.bytes(8));
            }
            6 => v.extend_from_slice(&[rng.pick(&[2, 3, 4, 8, 19, 29, 30]), rng.pick(&[0, 1])]),
            7 => {
                // A length running past the header.
                v.extend_from_slice(&[rng.pick(&[2, 8, 30]), 40 + rng.u32() as u8 % 200]);
            }
            8 => {
                v.extend_from_slice(&[19, 18]);
                v.extend_from_slice(&[0xaa; 16]);
            }
            9 => v.extend_from_slice(&[29, 4, 1, 2]),
            10 => {
                let k = rng.u32() as u8;
                let l = rng.below(8) as u8;
                v.extend_from_slice(&[k, l]);
                v.extend_from_slice(&rng.bytes(usize::from(l.saturating_sub(2))));
            }
            _ => v.extend_from_slice(&rng.bytes_below(6)),
        }
        if v.len() >= 40 {
            break;
        }
    }
    v.truncate(40);
    v
}

/// How a frame's IP layer is laid out.
#[derive(Clone, Debug, Default)]
struct Layout {
    /// VLAN tags (TPID, TCI).
    vlans: Vec<(u16, u16)>,
    /// IPv4 options (a multiple of 4, at most 40 bytes).
    v4_options: Vec<u8>,
    /// IPv6 extension headers: (next-header value naming this header, its bytes after the
    /// two-byte next/length prefix, padded to a multiple of 8 with the prefix).
    v6_ext: Vec<(u8, usize)>,
    /// IPv4 fragment fields (flags and offset word), or 0.
    v4_frag: u16,
    /// An IPv6 fragment header just before the upper layer.
    v6_frag: bool,
    /// Bytes of Ethernet padding after the datagram.
    padding: usize,
}

fn layout(rng: &mut Rng, v6: bool) -> Layout {
    let mut l = Layout::default();
    let tags = match rng.below(100) {
        0..70 => 0,
        70..82 => 1,
        82..94 => 2,
        _ => 3 + rng.below(3),
    };
    for _ in 0..tags {
        l.vlans.push((
            rng.pick(&[ETH_P_8021Q, ETH_P_8021AD]),
            (rng.u32() & 0xffff) as u16,
        ));
    }
    if v6 {
        if rng.pct(12) {
            for _ in 0..=rng.below(5) {
                l.v6_ext.push((rng.pick(&[0, 43, 60]), rng.below(3)));
            }
        }
        l.v6_frag = rng.pct(3);
    } else {
        if rng.pct(10) {
            let n = 4 * (1 + rng.below(10));
            let mut o = vec![1u8; n];
            if rng.pct(50) {
                // Record route, its length honest.
                o[0] = 7;
                o[1] = (n.min(39)) as u8;
                o[2] = 4;
            }
            o[n - 1] = 0;
            l.v4_options = o;
        }
        if rng.pct(4) {
            l.v4_frag = rng.pick(&[0x2000, 0x2000 | 5, 5, 0x4000 | 0x2000, 0x1fff]);
        }
    }
    if rng.pct(5) {
        l.padding = 1 + rng.below(30);
    }
    l
}

/// A frame: Ethernet (with `l.vlans`), then IPv4 or IPv6 per `l`, protocol `proto` and payload
/// `l4` from `src` to `dst`.
fn frame(l: &Layout, src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut f = Vec::with_capacity(128 + l4.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x05]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0c]);
    for (tpid, tci) in &l.vlans {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&ETH_P_IP.to_be_bytes());
            let mut h = ipv4_header(s.octets(), d.octets(), proto, 64, l4.len()).to_vec();
            h.extend_from_slice(&l.v4_options);
            h[0] = 0x40 | u8::try_from(h.len() / 4).unwrap();
            let total = u16::try_from(h.len() + l4.len()).unwrap();
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[6..8].copy_from_slice(&l.v4_frag.to_be_bytes());
            h[10..12].copy_from_slice(&[0, 0]);
            let c = finish(add_bytes(0, &h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            // Extension chain: each header names the next; the fixed header names the first.
            let mut chain: Vec<(u8, Vec<u8>)> = l
                .v6_ext
                .iter()
                .map(|(nh, units)| {
                    let mut b = vec![0u8; 8 * (units + 1)];
                    b[1] = u8::try_from(*units).unwrap();
                    // PadN over the rest, so the options are well formed.
                    b[2] = 1;
                    b[3] = u8::try_from(b.len() - 4).unwrap();
                    (*nh, b)
                })
                .collect();
            if l.v6_frag {
                let mut b = vec![0u8; 8];
                b[2..4].copy_from_slice(&rng.pick(&[1u16, 8, 9]).to_be_bytes());
                b[4..8].copy_from_slice(&rng.u32().to_be_bytes());
                chain.push((44, b));
            }
            let first = chain.first().map_or(proto, |(nh, _)| *nh);
            let mut ext = Vec::new();
            for i in 0..chain.len() {
                let next = chain.get(i + 1).map_or(proto, |(nh, _)| *nh);
                let mut b = chain[i].1.clone();
                b[0] = next;
                ext.extend_from_slice(&b);
            }
            f.extend_from_slice(&ipv6_header(
                s.octets(),
                d.octets(),
                first,
                64,
                ext.len() + l4.len(),
            ));
            f.extend_from_slice(&ext);
        }
        _ => unreachable!("mixed families"),
    }
    f.extend_from_slice(l4);
    f.extend_from_slice(&rng.bytes(l.padding));
    f
}

/// A TCP frame of `seg` laid out per `l`.
fn tcp_frame_in(l: &Layout, seg: &TcpSegment, rng: &mut Rng) -> Vec<u8> {
    frame(l, seg.src, seg.dst, IPPROTO_TCP, &tcp_bytes(seg), rng)
}

/// The kinds of frame [`Gen::next`] makes, for the run's summary.
pub const KINDS: [&str; 16] = [
    "syn",
    "cookie-ack",
    "follower",
    "established",
    "forged-ack",
    "rst",
    "fin",
    "syn-ack",
    "tracked",
    "time-wait",
    "udp",
    "icmp",
    "arp",
    "random",
    "random-ip",
    "replay",
];

/// The frame generator of one state.
pub struct Gen {
    /// Randomness.
    pub rng: Rng,
    /// Flows the frames reuse.
    pub pool: Vec<FlowSpec>,
    /// Flows of the state's time-wait table.
    pub time_wait: Vec<FlowSpec>,
    /// Recent frames that completed a cookie handshake (replayed as duplicates).
    recent: Vec<Vec<u8>>,
}

impl Gen {
    /// A generator with `seed`, reusing `pool`, aware of the `time_wait` flows.
    #[must_use]
    pub fn new(seed: u64, pool: Vec<FlowSpec>, time_wait: Vec<FlowSpec>) -> Gen {
        Gen {
            rng: Rng::new(seed),
            pool,
            time_wait,
            recent: Vec::new(),
        }
    }

    fn flow(&mut self, m: &Model) -> FlowSpec {
        match self.rng.below(100) {
            0..55 => self.rng.pick(&self.pool),
            55..65 if !m.sockets.is_empty() => {
                let i = self.rng.below(m.sockets.len());
                FlowSpec::of_key(m.sockets.iter().nth(i).unwrap())
            }
            65..72 if !m.half_open.is_empty() => {
                let i = self.rng.below(m.half_open.len().min(64));
                FlowSpec::of_key(m.half_open.keys().nth(i).unwrap())
            }
            72..76 if !m.closing.is_empty() => {
                let i = self.rng.below(m.closing.len().min(64));
                FlowSpec::of_key(m.closing.iter().nth(i).unwrap())
            }
            _ => random_flow(&mut self.rng),
        }
    }

    /// The next frame and its kind, for the state `m` at cookie slot `slot`.
    pub fn next(&mut self, m: &Model, slot: u32) -> (Vec<u8>, &'static str) {
        let rng = &mut self.rng;
        let pick = rng.below(1000);
        let (mut f, kind, ip) = match pick {
            0..180 => (self.syn(m), "syn", true),
            180..350 => (self.cookie_ack(m, slot), "cookie-ack", true),
            350..420 => match self.follower(m) {
                Some(f) => (f, "follower", true),
                None => (self.cookie_ack(m, slot), "cookie-ack", true),
            },
            420..480 => (
                self.plain(m, tcp_flags::ACK | tcp_flags::PSH, true),
                "established",
                true,
            ),
            480..560 => (self.forged_ack(m), "forged-ack", true),
            560..600 => {
                let fl = self
                    .rng
                    .pick(&[tcp_flags::RST, tcp_flags::RST | tcp_flags::ACK]);
                (self.plain(m, fl, false), "rst", true)
            }
            600..640 => {
                let fl = self
                    .rng
                    .pick(&[tcp_flags::FIN, tcp_flags::FIN | tcp_flags::ACK]);
                (self.plain(m, fl, false), "fin", true)
            }
            640..660 => (
                self.plain(m, tcp_flags::SYN | tcp_flags::ACK, false),
                "syn-ack",
                true,
            ),
            660..700 => (self.tracked(m), "tracked", true),
            700..730 if !self.time_wait.is_empty() => (self.time_wait_seg(), "time-wait", true),
            700..750 => (self.other_ip(17), "udp", true),
            750..780 => (self.other_ip(1), "icmp", true),
            780..800 => (self.arp(), "arp", false),
            800..880 => {
                let n = 14 + self.rng.below(200);
                (self.rng.bytes(n), "random", false)
            }
            880..950 => (self.random_ip(), "random-ip", true),
            _ if self.recent.is_empty() => (self.syn(m), "syn", true),
            _ => {
                let i = self.rng.below(self.recent.len());
                (self.recent[i].clone(), "replay", true)
            }
        };
        if ip {
            self.mutate(&mut f);
        }
        (f, kind)
    }

    /// A SYN of a pool flow, with real stacks' options (now and then lying ones, a signature, or
    /// data), ECN setup now and then.
    fn syn(&mut self, m: &Model) -> Vec<u8> {
        let fl = self.flow(m);
        let rng = &mut self.rng;
        let o = offer(rng);
        let mut s = TcpSegment::new(fl.src, fl.dst, fl.sport, fl.dport, tcp_flags::SYN);
        s.seq = rng.u32();
        s.options = match rng.below(100) {
            0..8 => lying_options(rng),
            8..11 => {
                let mut v = vec![2, 4, 5, 0xb4, 19, 18];
                v.extend([0xaa; 16]);
                v
            }
            _ => syn_options(rng, &o),
        };
        if o.ecn {
            s.flags |= tcp_flags::ECE | tcp_flags::CWR;
        }
        if rng.pct(5) {
            s.payload = rng.some_bytes(20);
        }
        let v6 = fl.src.is_ipv6();
        let l = layout(rng, v6);
        tcp_frame_in(&l, &s, rng)
    }

    /// The ACK that completes a cookie handshake of a flow, made as the data path makes cookies
    /// (the state's secrets, the current slot), now and then with the other secret, an older
    /// slot, data or a FIN, or its timestamps laid out differently.
    fn cookie_ack(&mut self, m: &Model, slot: u32) -> Vec<u8> {
        let fl = self.flow(m);
        let rng = &mut self.rng;
        let o = offer(rng);
        let v6 = fl.src.is_ipv6();
        let co = CookieOpts {
            mss_idx: mss_index(o.mss, v6),
            wscale: o.wscale.map_or(WSCALE_NONE, |w| w.min(14)),
            sack: o.sack,
            ecn: o.ecn && m.cfg.flags & flags::ECN != 0,
        }
        .carried(o.ts);
        let mut idx = (m.secrets.current & 1) as usize;
        if rng.pct(10) {
            idx ^= 1;
        }
        let age = match rng.below(100) {
            0..6 => 1,
            6..9 => 2,
            _ => 0,
        };
        let isn = rng.u32();
        let c = cookie::make(
            &m.secrets.keys[idx],
            idx as u32,
            m.secrets.ts_offset[idx],
            &SynInput {
                flow: fl.flow(),
                isn,
                now_ns: u64::from(slot.wrapping_sub(age)) << SLOT_SHIFT
                    | (rng.u64() & 0xf_ffff_ffff),
                opts: co,
                ts: o.ts,
            },
        );
        let mut s = TcpSegment::new(fl.src, fl.dst, fl.sport, fl.dport, tcp_flags::ACK);
        s.seq = isn.wrapping_add(1);
        s.ack_seq = c.isn.wrapping_add(1);
        if o.ts {
            let mut ts = vec![8, 10];
            ts.extend_from_slice(&rng.u32().to_be_bytes());
            ts.extend_from_slice(&c.tsval.to_be_bytes());
            s.options = match rng.below(10) {
                0 => [ts, vec![1, 1]].concat(),
                1 => [vec![1, 1, 4, 2], ts].concat(),
                2 => [vec![1, 1], ts, vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]].concat(),
                _ => [vec![1, 1], ts].concat(),
            };
        }
        match rng.below(100) {
            0..15 => s.payload = rng.some_bytes(100),
            15..20 => s.flags |= tcp_flags::FIN,
            20..25 => s.flags |= tcp_flags::PSH,
            _ => {}
        }
        let l = layout(rng, v6);
        let f = tcp_frame_in(&l, &s, rng);
        if self.recent.len() < 64 {
            self.recent.push(f.clone());
        } else {
            let i = self.rng.below(64);
            self.recent[i] = f.clone();
        }
        f
    }

    /// A segment following a handoff in flight (data or FIN, numbers near the handoff's), or
    /// just missing it.
    fn follower(&mut self, m: &Model) -> Option<Vec<u8>> {
        if m.proven.is_empty() {
            return None;
        }
        let i = self.rng.below(m.proven.len().min(64));
        let p = *m.proven.values().nth(i).unwrap();
        let fl = FlowSpec::of_key(&p.key);
        let rng = &mut self.rng;
        let mut s = TcpSegment::new(fl.src, fl.dst, fl.sport, fl.dport, tcp_flags::ACK);
        s.seq = p.client_next.wrapping_add(match rng.below(10) {
            0 => 0x1_0000 + rng.u32() % 16,
            1 => 0u32.wrapping_sub(1 + rng.u32() % 16),
            _ => rng.u32() % 3000,
        });
        s.ack_seq = p.server_next.wrapping_add(u32::from(rng.pct(10)));
        match rng.below(10) {
            0..6 => s.payload = rng.some_bytes(200),
            6..8 => s.flags |= tcp_flags::FIN,
            _ => {}
        }
        if rng.pct(60) {
            s.options = vec![1, 1, 8, 10];
            s.options.extend_from_slice(&rng.bytes(8));
        }
        let l = layout(rng, fl.src.is_ipv6());
        Some(tcp_frame_in(&l, &s, rng))
    }

    /// A segment with `flags` and random numbers on a flow (an established one as often as the
    /// state has them), with data if `data`.
    fn plain(&mut self, m: &Model, flags: u8, data: bool) -> Vec<u8> {
        let fl = self.flow(m);
        let rng = &mut self.rng;
        let mut s = TcpSegment::new(fl.src, fl.dst, fl.sport, fl.dport, flags);
        s.seq = rng.u32();
        s.ack_seq = rng.u32();
        if rng.pct(50) {
            s.options = vec![1, 1, 8, 10];
            s.options.extend_from_slice(&rng.bytes(8));
        }
        if data && rng.pct(70) {
            s.payload = rng.some_bytes(300);
        }
        let l = layout(rng, fl.src.is_ipv6());
        tcp_frame_in(&l, &s, rng)
    }

    /// A forged ACK: random numbers (half with timestamps), now and then data or a FIN, or
    /// options that lie.
    fn forged_ack(&mut self, m: &Model) -> Vec<u8> {
        let fl = self.flow(m);
        let rng = &mut self.rng;
        let mut s = TcpSegment::new(fl.src, fl.dst, fl.sport, fl.dport, tcp_flags::ACK);
        s.seq = rng.u32();
        s.ack_seq = rng.u32();
        s.options = match rng.below(10) {
            0..4 => {
                let mut v = vec![1, 1, 8, 10];
                v.extend_from_slice(&rng.bytes(8));
                v
            }
            4..6 => lying_options(rng),
            _ => Vec::new(),
        };
        match rng.below(10) {
            0..2 => s.payload = rng.some_bytes(100),
            2 => s.flags |= tcp_flags::FIN,
            3 => s.flags |= rng.u32() as u8 & !(tcp_flags::SYN | tcp_flags::RST),
            _ => {}
        }
        let l = layout(rng, fl.src.is_ipv6());
        tcp_frame_in(&l, &s, rng)
    }

    /// A client segment (ACK, RST, FIN, SYN again) of a handshake watch mode tracks or closes.
    fn tracked(&mut self, m: &Model) -> Vec<u8> {
        let fl = if !m.half_open.is_empty() && self.rng.pct(70) {
            let i = self.rng.below(m.half_open.len().min(64));
            FlowSpec::of_key(m.half_open.keys().nth(i).unwrap())
        } else if !m.closing.is_empty() && self.rng.pct(70) {
            let i = self.rng.below(m.closing.len().min(64));
            FlowSpec::of_key(m.closing.iter().nth(i).unwrap())
        } else {
            self.rng.pick(&self.pool)
        };
        let rng = &mut self.rng;
        let flags = rng.pick(&[
            tcp_flags::ACK,
            tcp_flags::ACK | tcp_flags::PSH,
            tcp_flags::RST,
            tcp_flags::RST | tcp_flags::ACK,
            tcp_flags::FIN,
            tcp_flags::FIN | tcp_flags::ACK,
            tcp_flags::SYN,
        ]);
        let mut s = TcpSegment::new(fl.src, fl.dst, fl.sport, fl.dport, flags);
        s.seq = rng.u32();
        s.ack_seq = rng.u32();
        if rng.pct(30) {
            s.payload = rng.some_bytes(50);
        }
        let l = layout(rng, fl.src.is_ipv6());
        tcp_frame_in(&l, &s, rng)
    }

    /// A segment (late data, a FIN, a new SYN) of a time-wait flow.
    fn time_wait_seg(&mut self) -> Vec<u8> {
        let fl = self.rng.pick(&self.time_wait);
        let rng = &mut self.rng;
        let flags = rng.pick(&[
            tcp_flags::ACK | tcp_flags::PSH,
            tcp_flags::FIN | tcp_flags::ACK,
            tcp_flags::SYN,
            tcp_flags::ACK,
        ]);
        let mut s = TcpSegment::new(fl.src, fl.dst, fl.sport, fl.dport, flags);
        s.seq = rng.u32();
        s.ack_seq = rng.u32();
        if flags & tcp_flags::PSH != 0 {
            s.payload = rng.some_bytes(50);
        }
        if flags == tcp_flags::SYN {
            let o = offer(rng);
            s.options = syn_options(rng, &o);
        }
        let l = layout(rng, fl.src.is_ipv6());
        tcp_frame_in(&l, &s, rng)
    }

    /// UDP (17) or ICMP / `ICMPv6` (1: 58 on IPv6) to a pool flow's addresses.
    fn other_ip(&mut self, proto: u8) -> Vec<u8> {
        let fl = self.rng.pick(&self.pool);
        let rng = &mut self.rng;
        let proto = if proto == 1 && fl.src.is_ipv6() {
            58
        } else {
            proto
        };
        let n = 8 + rng.below(60);
        let l4 = rng.bytes(n);
        let l = layout(rng, fl.src.is_ipv6());
        frame(&l, fl.src, fl.dst, proto, &l4, rng)
    }

    /// An ARP request (maybe behind VLAN tags).
    fn arp(&mut self) -> Vec<u8> {
        let rng = &mut self.rng;
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0c]);
        for _ in 0..rng.below(3) {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&rng.bytes(2));
        }
        f.extend_from_slice(&0x0806u16.to_be_bytes());
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&rng.bytes(20));
        f
    }

    /// Random bytes behind an IP `EtherType` (and a plausible version nibble).
    fn random_ip(&mut self) -> Vec<u8> {
        let rng = &mut self.rng;
        let v6 = rng.pct(50);
        let mut f = vec![0x02, 0, 0, 0, 0, 0x05, 0x02, 0, 0, 0, 0, 0x0c];
        f.extend_from_slice(&(if v6 { ETH_P_IPV6 } else { ETH_P_IP }).to_be_bytes());
        let n = rng.below(150);
        let mut b = rng.bytes(n);
        if let Some(x) = b.first_mut() {
            *x = if v6 { 0x60 | (*x & 0x0f) } else { 0x45 };
        }
        if !v6 && b.len() > 9 && rng.pct(70) {
            b[9] = IPPROTO_TCP;
            b[6] &= 0x40;
            b[7] = 0;
        }
        if v6 && b.len() > 6 && rng.pct(70) {
            b[6] = rng.pick(&[IPPROTO_TCP, 0, 43, 60, 44]);
        }
        f.extend_from_slice(&b);
        f
    }

    /// One field corrupted, or the frame cut short, now and then.
    fn mutate(&mut self, f: &mut Vec<u8>) {
        let rng = &mut self.rng;
        match rng.below(100) {
            // A random byte anywhere in the first 100.
            0..12 => {
                let i = rng.below(f.len().min(100));
                f[i] = rng.u32() as u8;
            }
            // A bit flipped anywhere.
            12..18 => {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
            // Cut short at any offset (never below the Ethernet header: the kernel refuses
            // those before the program runs).
            18..26 => {
                let n = 14 + rng.below(f.len().saturating_sub(14).max(1));
                f.truncate(n.min(f.len()));
            }
            _ => {}
        }
    }
}

/// Every cut of `f` from 14 bytes to its full length: truncation at every offset.
#[must_use]
pub fn truncations(f: &[u8]) -> Vec<Vec<u8>> {
    (14..=f.len()).map(|n| f[..n].to_vec()).collect()
}
