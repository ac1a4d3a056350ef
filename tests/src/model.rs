//! A reference model of `xdp_intercept`, the XDP program, in plain Rust: for a frame, the state
//! of the maps the program reads and the time it reads, the verdict, the frame it leaves (the
//! SYN-ACK for `XDP_TX`, the metadata a handoff prepends for `XDP_PASS`) and the counters it
//! moves, and the map writes it makes.
//!
//! The model re-derives the program's decisions (mode, scope and exempt sources, the socket
//! table, time-wait flows, the cookie check, handoffs in flight, watch mode's tracking, the
//! SYN-ACK and every counter) from what the README and the data path's documentation say they
//! are. It leans on intercept-common only for what is unit-tested there on its own: the
//! dissector, the TCP option walk, the cookie's MAC and the map slot hashes; the SYN-ACK is
//! built with `craft`, whose checksums are independent of the data path's word sums. The
//! differential test (`tests/tests/difftest.rs`) runs the real object on the same frames and
//! compares.
use std::{
    collections::{HashMap as StdHashMap, HashSet as StdHashSet, hash_map::DefaultHasher},
    hash::BuildHasherDefault,
};

/// Maps and sets that iterate in the same order in every run (the default hasher is keyed at
/// random per process), so a seed reproduces the same frames.
pub type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<DefaultHasher>>;
/// See [`HashMap`].
pub type HashSet<K> = StdHashSet<K, BuildHasherDefault<DefaultHasher>>;

use intercept_common::{
    Counter,
    checksum::{fold, pseudo_v4, pseudo_v6, verifies},
    config::{
        Config, FOLLOW_FLIP, FlowKey, HalfOpen, PROVEN_SEQ_SPAN, PROVEN_WINDOW_NS, Proven,
        REQUEST_SOCK_LIFETIME_NS, RING_SLOTS, proven_slot, time_wait_bucket,
    },
    cookie::{
        self, CookieOpts, Flow, MSS_TABLE_V4, MSS_TABLE_V6, Secrets, SynInput, WSCALE_MAX,
        WSCALE_NONE, ip_of, mss_index, slot_of,
    },
    craft::{Link, TcpSegment, tcp_frame},
    parse::{Dissected, IPPROTO_TCP, Ip, L3, L4, Tcp, dissect, tcp_flags},
    tcpopt,
};

/// `XDP_ABORTED`.
pub const XDP_ABORTED: u32 = 0;
/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// `XDP_TX`.
pub const XDP_TX: u32 = 3;

/// The name of a verdict, for reports.
#[must_use]
pub fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        _ => "XDP_?",
    }
}

/// One protected (prefix, port) pair of the scope; port 0 means every port.
#[derive(Clone, Copy, Debug)]
pub struct ScopeRule {
    /// Address words ([`Flow`] form, IPv4-mapped for IPv4).
    pub addr: [u32; 4],
    /// Prefix length on the 128-bit address (96 + n for an IPv4 /n).
    pub bits: u32,
    /// Port, or 0 for every port.
    pub port: u16,
}

/// Whether `a` lies in the prefix `net`/`bits` (on 128-bit words).
#[must_use]
pub fn in_prefix(a: &[u32; 4], net: &[u32; 4], bits: u32) -> bool {
    a.iter()
        .zip(net)
        .zip([0u32, 32, 64, 96])
        .all(|((x, n), at)| {
            let b = bits.saturating_sub(at).min(32);
            let m = if b == 0 { 0 } else { u32::MAX << (32 - b) };
            x & m == n & m
        })
}

/// What the program does at a frame: verdict, the frame it leaves, counter deltas (non-zero
/// ones, in [`Counter::ALL`] order, as `deltas` lists them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// XDP verdict.
    pub verdict: u32,
    /// The frame after the program (with any metadata in front, as `BPF_PROG_TEST_RUN` returns it).
    pub frame: Vec<u8>,
    /// Counter deltas.
    pub counters: Vec<(Counter, u64)>,
}

/// Watch mode's per-CPU insertion ring (`RING`), as the program keeps it.
#[derive(Clone, Debug)]
pub struct RingModel {
    /// Next slot to write.
    pub head: u32,
    /// Oldest slot not yet consumed.
    pub tail: u32,
    /// The flows.
    pub keys: Vec<FlowKey>,
}

impl Default for RingModel {
    fn default() -> Self {
        RingModel {
            head: 0,
            tail: 0,
            keys: vec![FlowKey::default(); RING_SLOTS],
        }
    }
}

/// The state the program reads (and the part it writes), as the model holds it.
#[derive(Clone, Debug)]
pub struct Model {
    /// `CONFIG`.
    pub cfg: Config,
    /// `SECRETS`.
    pub secrets: Secrets,
    /// `SCOPE` (and its hash and list forms: they hold the same entries).
    pub scope: Vec<ScopeRule>,
    /// `EXEMPT` (and its list form): (address words, prefix length).
    pub exempt: Vec<([u32; 4], u32)>,
    /// `SOCKETS`.
    pub sockets: HashSet<FlowKey>,
    /// `SOCKET_TABLE`: seeded.
    pub seeded: bool,
    /// `SOCKET_TABLE`: refused inserts.
    pub refused: u64,
    /// `SOCKET_TABLE`: request sockets possible until (monotonic ns).
    pub lookup_until_ns: u64,
    /// `TIME_WAIT`: flow -> until.
    pub time_wait: HashMap<FlowKey, u64>,
    /// `TIME_WAIT_FILTER`: bucket -> latest until.
    pub time_wait_filter: HashMap<u32, u64>,
    /// `PROVEN`: slot -> handoff in flight.
    pub proven: HashMap<u32, Proven>,
    /// `HALF_OPEN`.
    pub half_open: HashMap<FlowKey, HalfOpen>,
    /// `CLOSING` (its values, the time queued, are the controller's only).
    pub closing: HashSet<FlowKey>,
    /// `CLOSING_GATE` is nonzero.
    pub gate: bool,
    /// `RING` of the CPU the test runs on.
    pub ring: RingModel,
}

/// One run of the model on a frame.
#[derive(Clone, Debug)]
pub struct Step {
    /// What the program should do.
    pub outcome: Outcome,
    /// The `PROVEN` slot it wrote with the frame's time (the harness reads it back).
    pub proven_written: Option<u32>,
}

/// Counts and verdict of one frame under way.
struct Run {
    counts: [u64; Counter::Count as usize],
    proven_written: Option<u32>,
    meta: Option<[u8; 24]>,
}

impl Run {
    fn count(&mut self, c: Counter) {
        self.counts[c as usize] += 1;
    }
    /// Every `XDP_PASS` counts `Passed`, and its reason when it has one.
    fn pass(&mut self, reason: Counter) -> u32 {
        if reason != Counter::Passed {
            self.count(reason);
        }
        self.count(Counter::Passed);
        XDP_PASS
    }
    /// Every `XDP_DROP` counts `Dropped` and its reason.
    fn drop(&mut self, reason: Counter) -> u32 {
        self.count(reason);
        self.count(Counter::Dropped);
        XDP_DROP
    }
}

/// The data path's modes, as `Config::mode` and `Config::active` encode them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Acting {
    Off,
    Intercept,
    Watch,
}

/// How a segment's flags classify it (RST first, then SYN with or without ACK, then ACK).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Syn,
    SynAck,
    Rst,
    Ack,
    Other,
}

fn kind(flags: u8) -> Kind {
    if flags & tcp_flags::RST != 0 {
        Kind::Rst
    } else if flags & tcp_flags::SYN != 0 {
        if flags & tcp_flags::ACK != 0 {
            Kind::SynAck
        } else {
            Kind::Syn
        }
    } else if flags & tcp_flags::ACK != 0 {
        Kind::Ack
    } else {
        Kind::Other
    }
}

/// What watch mode knows of a client's segment's flow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    Untracked,
    Tracked,
    Closing,
}

/// The flow of a dissected TCP segment (client = source); IPv4 addresses IPv4-mapped.
fn flow_of(f: &[u8], ip: &Ip, tcp: &Tcp) -> Flow {
    let w = |o: usize| u32::from_be_bytes(f[o..o + 4].try_into().unwrap());
    let o = ip.l3_off;
    match ip.l3 {
        L3::V4 { .. } => Flow::v4(w(o + 12), w(o + 16), tcp.sport, tcp.dport),
        L3::V6 { .. } => Flow {
            saddr: [w(o + 8), w(o + 12), w(o + 16), w(o + 20)],
            daddr: [w(o + 24), w(o + 28), w(o + 32), w(o + 36)],
            sport: tcp.sport,
            dport: tcp.dport,
        },
    }
}

/// Whether the TCP checksum of a segment's header (all of it when there is no payload) is right.
fn header_checksum_ok(f: &[u8], ip: &Ip, tcp: &Tcp) -> bool {
    let seg = &f[tcp.off..tcp.off + tcp.hdr_len];
    let len = tcp.hdr_len;
    let o = ip.l3_off;
    let acc = match ip.l3 {
        L3::V4 { .. } => pseudo_v4(
            f[o + 12..o + 16].try_into().unwrap(),
            f[o + 16..o + 20].try_into().unwrap(),
            IPPROTO_TCP,
            u16::try_from(len).unwrap(),
        ),
        L3::V6 { .. } => pseudo_v6(
            f[o + 8..o + 24].try_into().unwrap(),
            f[o + 24..o + 40].try_into().unwrap(),
            IPPROTO_TCP,
            u32::try_from(len).unwrap(),
        ),
    };
    // Correct, or the pseudo-header sum alone (checksum offload left for the NIC).
    let check = u16::from_be_bytes([seg[16], seg[17]]);
    verifies(acc, seg) || check == fold(acc)
}

/// The 24 bytes of XDP metadata a handoff (or a follower's mark) puts in front of the frame:
/// `Handoff` as the data path writes it (native byte order: the TC program reads it in place).
fn meta_bytes(magic: u32, a: &intercept_common::config::TcpReqAttrs) -> [u8; 24] {
    let mut m = [0u8; 24];
    m[0..4].copy_from_slice(&magic.to_ne_bytes());
    m[4..8].copy_from_slice(&a.rcv_tsval.to_ne_bytes());
    m[8..12].copy_from_slice(&a.rcv_tsecr.to_ne_bytes());
    m[12..14].copy_from_slice(&a.mss.to_ne_bytes());
    m[14] = a.rcv_wscale;
    m[15] = a.snd_wscale;
    m[16] = a.ecn_ok;
    m[17] = a.wscale_ok;
    m[18] = a.sack_ok;
    m[19] = a.tstamp_ok;
    m[20] = a.usec_ts_ok;
    m
}

impl Model {
    /// A model of a freshly loaded object (everything zero: mode off) with `cfg` and `secrets`.
    #[must_use]
    pub fn new(cfg: Config, secrets: Secrets) -> Model {
        Model {
            cfg,
            secrets,
            scope: Vec::new(),
            exempt: Vec::new(),
            sockets: HashSet::default(),
            seeded: false,
            refused: 0,
            lookup_until_ns: 0,
            time_wait: HashMap::default(),
            time_wait_filter: HashMap::default(),
            proven: HashMap::default(),
            half_open: HashMap::default(),
            closing: HashSet::default(),
            gate: false,
            ring: RingModel::default(),
        }
    }

    fn acting(&self) -> Acting {
        match self.cfg.mode {
            1 => Acting::Intercept,
            // Auto: the mode in force, which the controller keeps in `active`.
            3 if self.cfg.active == 1 => Acting::Intercept,
            2 | 3 => Acting::Watch,
            _ => Acting::Off,
        }
    }

    /// Whether the destination of `flow` is protected: an entry for its port or every port whose
    /// prefix holds the address.
    #[must_use]
    pub fn protected(&self, flow: &Flow) -> bool {
        self.scope.iter().any(|r| {
            (r.port == 0 || r.port == flow.dport) && in_prefix(&flow.daddr, &r.addr, r.bits)
        })
    }

    /// Whether the source of `flow` is exempt.
    #[must_use]
    pub fn exempt(&self, flow: &Flow) -> bool {
        self.exempt
            .iter()
            .any(|(net, bits)| in_prefix(&flow.saddr, net, *bits))
    }

    fn in_time_wait(&self, key: &FlowKey, now: u64) -> bool {
        self.time_wait_filter
            .get(&time_wait_bucket(key))
            .is_some_and(|u| *u > now)
            && self.time_wait.get(key).is_some_and(|u| *u > now)
    }

    fn authoritative(&self, now: u64) -> bool {
        self.seeded && self.refused == 0 && now >= self.lookup_until_ns
    }

    /// Whether the handoff in flight in `key`'s slot is followed by a client segment with these
    /// numbers at `now`: same flow, within the window, acknowledging exactly our ISN + 1, and
    /// sequenced within what the client can have sent.
    fn follows(&self, key: &FlowKey, seq: u32, ack: u32, now: u64) -> bool {
        self.proven.get(&proven_slot(key)).is_some_and(|p| {
            p.at_ns != 0
                && now.saturating_sub(p.at_ns) < PROVEN_WINDOW_NS
                && ack == p.server_next
                && seq.wrapping_sub(p.client_next) < PROVEN_SEQ_SPAN
                && p.key == *key
        })
    }

    /// Runs the model on `frame` at monotonic time `now_ns`; `None` for a frame the kernel
    /// refuses to run (shorter than an Ethernet header). Applies the map writes.
    #[must_use]
    pub fn step(&mut self, frame: &[u8], now_ns: u64) -> Option<Step> {
        if frame.len() < 14 {
            return None;
        }
        let mut r = Run {
            counts: [0; Counter::Count as usize],
            proven_written: None,
            meta: None,
        };
        let mut out: Option<Vec<u8>> = None;
        let verdict = self.decide(&mut r, frame, now_ns, &mut out);
        let frame_out = match (out, r.meta) {
            (Some(f), _) => f,
            (None, Some(m)) => [&m[..], frame].concat(),
            (None, None) => frame.to_vec(),
        };
        let counters = Counter::ALL
            .iter()
            .map(|c| (*c, r.counts[*c as usize]))
            .filter(|(_, n)| *n != 0)
            .collect();
        Some(Step {
            outcome: Outcome {
                verdict,
                frame: frame_out,
                counters,
            },
            proven_written: r.proven_written,
        })
    }

    fn decide(&mut self, r: &mut Run, f: &[u8], now: u64, out: &mut Option<Vec<u8>>) -> u32 {
        r.count(Counter::Packets);
        let d = dissect(f);
        // The layers: counted for every frame, whatever is decided after.
        match &d {
            Err(_) => r.count(Counter::Malformed),
            Ok(Dissected::NotIp { vlans, .. }) => {
                if *vlans > 0 {
                    r.count(Counter::Vlan);
                }
                r.count(Counter::NonTcp);
            }
            Ok(Dissected::Ip(ip)) => {
                if ip.vlans > 0 {
                    r.count(Counter::Vlan);
                }
                r.count(match ip.l3 {
                    L3::V4 { .. } => Counter::Ipv4,
                    L3::V6 { .. } => Counter::Ipv6,
                });
                match ip.l4 {
                    L4::Fragment | L4::SynFragment => r.count(Counter::Fragment),
                    L4::Other(_) => r.count(Counter::NonTcp),
                    L4::Tcp(t) => {
                        r.count(Counter::Tcp);
                        match kind(t.flags) {
                            Kind::Syn => r.count(Counter::Syn),
                            Kind::SynAck => r.count(Counter::SynAck),
                            Kind::Ack => r.count(Counter::Ack),
                            Kind::Rst => r.count(Counter::Rst),
                            Kind::Other => {}
                        }
                    }
                }
            }
        }
        let Ok(Dissected::Ip(ip)) = d else {
            return r.pass(Counter::Passed);
        };
        let L4::Tcp(tcp) = ip.l4 else {
            // Intercept mode drops what it cannot see into but the kernel could find a SYN in.
            if self.acting() == Acting::Intercept {
                if ip.l4 == L4::SynFragment {
                    return r.drop(Counter::SynFragmentDropped);
                }
                if ip.l4.unwalked_chain() {
                    return r.drop(Counter::Ipv6ChainDropped);
                }
            }
            return r.pass(Counter::Passed);
        };
        let flow = flow_of(f, &ip, &tcp);
        let key = FlowKey::of(&flow);
        match (self.acting(), kind(tcp.flags)) {
            (Acting::Intercept, Kind::Syn) => self.syn_intercept(r, f, &ip, &tcp, &flow, now, out),
            (Acting::Intercept, Kind::Ack) => {
                // Handshakes watch mode left tracked or being closed: an ACK of one being
                // closed is dropped, as in watch mode.
                if (self.cfg.flags & intercept_common::config::flags::TRACKING != 0 || self.gate)
                    && self.protected(&flow)
                    && self.client_segment(&key, &tcp) == Seen::Closing
                {
                    return r.drop(Counter::ClosingDropped);
                }
                self.verify(r, f, &ip, &tcp, &flow, now, true)
            }
            (Acting::Watch, Kind::Syn) => self.syn_watch(r, &tcp, &flow),
            (Acting::Watch, Kind::Ack | Kind::Rst) => {
                self.segment_watch(r, f, &ip, &tcp, &flow, now)
            }
            (Acting::Watch, Kind::Other) if tcp.flags & tcp_flags::FIN != 0 => {
                self.segment_watch(r, f, &ip, &tcp, &flow, now)
            }
            _ => r.pass(Counter::Passed),
        }
    }

    /// Intercept mode, a SYN: answered with a cookie SYN-ACK if protected and nothing says
    /// otherwise.
    #[expect(
        clippy::too_many_arguments,
        clippy::many_single_char_names,
        reason = "the frame's layers, as the data path has them"
    )]
    fn syn_intercept(
        &mut self,
        r: &mut Run,
        f: &[u8],
        ip: &Ip,
        tcp: &Tcp,
        flow: &Flow,
        now: u64,
        out: &mut Option<Vec<u8>>,
    ) -> u32 {
        if !self.protected(flow) {
            return r.pass(Counter::Passed);
        }
        r.count(Counter::SynProtected);
        if self.exempt(flow) {
            return r.pass(Counter::PassExempt);
        }
        if self.in_time_wait(&FlowKey::of(flow), now) {
            return r.pass(Counter::PassTimeWait);
        }
        let opts = tcpopt::parse(f, tcp.off, tcp.hdr_len);
        if opts.signed {
            return r.drop(Counter::SynSigned);
        }
        if tcp.payload_len > 0 {
            r.count(Counter::SynDataIgnored);
        } else if !header_checksum_ok(f, ip, tcp) {
            return r.drop(Counter::SynBadChecksum);
        }
        let idx = self.secrets.current & 1;
        let secret = self.secrets.keys[idx as usize];
        if !secret.is_set() {
            // Left to the kernel, which may make a request socket of its own: the socket table
            // stops being authoritative for its lifetime.
            self.lookup_until_ns = now + REQUEST_SOCK_LIFETIME_NS;
            return r.pass(Counter::PassNoSecret);
        }
        let v6 = matches!(ip.l3, L3::V6 { .. });
        let ecn_setup =
            tcp.flags & (tcp_flags::ECE | tcp_flags::CWR) == tcp_flags::ECE | tcp_flags::CWR;
        let co = CookieOpts {
            mss_idx: mss_index(opts.mss, v6),
            wscale: opts.wscale,
            sack: opts.sack_perm,
            ecn: ecn_setup && self.cfg.flags & intercept_common::config::flags::ECN != 0,
        }
        .carried(opts.ts_ok);
        let c = cookie::make(
            &secret,
            idx,
            self.secrets.ts_offset[idx as usize],
            &SynInput {
                flow: *flow,
                isn: tcp.seq,
                now_ns: now,
                opts: co,
                ts: opts.ts_ok,
            },
        );
        // Options in Linux's order: MSS; SACK-permitted + timestamps (or NOP NOP + one of
        // them); NOP + window scale.
        let mss = if v6 { self.cfg.mss_v6 } else { self.cfg.mss_v4 };
        let mut o = vec![2, 4];
        o.extend_from_slice(&mss.to_be_bytes());
        if opts.ts_ok {
            o.extend_from_slice(if opts.sack_perm {
                &[4, 2, 8, 10]
            } else {
                &[1, 1, 8, 10]
            });
            o.extend_from_slice(&c.tsval.to_be_bytes());
            o.extend_from_slice(&opts.tsval.to_be_bytes());
        } else if opts.sack_perm {
            o.extend_from_slice(&[1, 1, 4, 2]);
        }
        if opts.wscale != WSCALE_NONE {
            o.extend_from_slice(&[1, 3, 3, self.cfg.wscale.min(WSCALE_MAX)]);
        }
        let ece = if co.ecn { tcp_flags::ECE } else { 0 };
        let mut s = TcpSegment::new(
            ip_of(&flow.daddr),
            ip_of(&flow.saddr),
            flow.dport,
            flow.sport,
            tcp_flags::SYN | tcp_flags::ACK | ece,
        );
        s.seq = c.isn;
        s.ack_seq = tcp.seq.wrapping_add(1);
        s.window = if self.cfg.window == 0 {
            65535
        } else {
            self.cfg.window
        };
        s.options = o;
        s.ttl = self.cfg.ttl;
        // The reply keeps the frame's link layer (VLAN tags included) with the addresses
        // swapped, and replaces everything from the IP header on (IPv4 options dropped).
        let mut reply = f[..ip.l3_off].to_vec();
        reply[0..6].copy_from_slice(&f[6..12]);
        reply[6..12].copy_from_slice(&f[0..6]);
        reply.extend_from_slice(&tcp_frame(&Link::default(), &s)[14..]);
        *out = Some(reply);
        r.count(Counter::SynAckSent);
        XDP_TX
    }

    /// The ACK path: `strict` (intercept mode) drops what fails; otherwise (watch mode's grace
    /// after intercept mode) it passes.
    #[expect(
        clippy::too_many_arguments,
        reason = "the frame's layers, as the data path has them"
    )]
    fn verify(
        &mut self,
        r: &mut Run,
        f: &[u8],
        ip: &Ip,
        tcp: &Tcp,
        flow: &Flow,
        now: u64,
        strict: bool,
    ) -> u32 {
        if !self.protected(flow) {
            return r.pass(Counter::Passed);
        }
        let key = FlowKey::of(flow);
        if self.sockets.contains(&key) {
            return r.pass(Counter::PassEstablished);
        }
        if self.exempt(flow) {
            return r.pass(Counter::PassExempt);
        }
        let o = tcpopt::parse(f, tcp.off, tcp.hdr_len);
        let ts = o.ts_ok.then_some((o.tsval, o.tsecr));
        let checked = cookie::check(
            &self.secrets,
            flow,
            tcp.seq.wrapping_sub(1),
            tcp.ack_seq.wrapping_sub(1),
            ts.map(|(_, e)| e),
            slot_of(now),
        );
        match checked {
            Ok(co) => {
                if self.follows(&key, tcp.seq, tcp.ack_seq, now) {
                    return self.follow(r);
                }
                let slot = proven_slot(&key);
                self.proven
                    .insert(slot, Proven::new(key, tcp.seq, tcp.ack_seq, now));
                r.proven_written = Some(slot);
                let v6 = matches!(ip.l3, L3::V6 { .. });
                let wscale_ok = co.wscale != WSCALE_NONE;
                let a = intercept_common::config::TcpReqAttrs {
                    rcv_tsval: ts.map_or(0, |t| t.0),
                    rcv_tsecr: ts.map_or(0, |t| t.1),
                    mss: if v6 {
                        MSS_TABLE_V6[usize::from(co.mss_idx & 3)]
                    } else {
                        MSS_TABLE_V4[usize::from(co.mss_idx & 3)]
                    },
                    rcv_wscale: if wscale_ok {
                        self.cfg.wscale.min(WSCALE_MAX)
                    } else {
                        0
                    },
                    snd_wscale: if wscale_ok { co.wscale } else { 0 },
                    ecn_ok: u8::from(co.ecn),
                    wscale_ok: u8::from(wscale_ok),
                    sack_ok: u8::from(co.sack),
                    tstamp_ok: u8::from(ts.is_some()),
                    usec_ts_ok: 0,
                    reserved: [0; 3],
                };
                r.meta = Some(meta_bytes(self.cfg.meta_tag, &a));
                r.count(Counter::AckValid);
                r.pass(Counter::Passed)
            }
            Err(_) if !strict => r.pass(Counter::Passed),
            Err(_) => {
                if (tcp.payload_len > 0 || tcp.flags & tcp_flags::FIN != 0)
                    && self.follows(&key, tcp.seq, tcp.ack_seq, now)
                {
                    return self.follow(r);
                }
                if self.in_time_wait(&key, now) {
                    return r.pass(Counter::PassTimeWait);
                }
                if !self.authoritative(now) {
                    // The kernel is asked; the test's namespace holds no socket at all.
                    r.count(Counter::SocketLookups);
                }
                r.drop(Counter::AckBadMac)
            }
        }
    }

    fn follow(&self, r: &mut Run) -> u32 {
        r.meta = Some(meta_bytes(
            self.cfg.meta_tag ^ FOLLOW_FLIP,
            &intercept_common::config::TcpReqAttrs::default(),
        ));
        r.pass(Counter::PassProven)
    }

    /// A client's segment of a possibly tracked handshake (an RST is counted in its entry).
    fn client_segment(&mut self, key: &FlowKey, tcp: &Tcp) -> Seen {
        if let Some(e) = self.half_open.get_mut(key) {
            if tcp.flags & tcp_flags::RST != 0 {
                e.resets = e.resets.wrapping_add(1);
            }
            return if e.closing != 0 {
                Seen::Closing
            } else {
                Seen::Tracked
            };
        }
        if self.gate && self.closing.contains(key) {
            Seen::Closing
        } else {
            Seen::Untracked
        }
    }

    /// Watch mode, a SYN: tracked (or counted as a retransmission) and passed.
    fn syn_watch(&mut self, r: &mut Run, tcp: &Tcp, flow: &Flow) -> u32 {
        if !self.protected(flow) {
            return r.pass(Counter::Passed);
        }
        r.count(Counter::SynProtected);
        if self.exempt(flow) {
            return r.pass(Counter::PassExempt);
        }
        let key = FlowKey::of(flow);
        if let Some(e) = self.half_open.get_mut(&key) {
            e.syns += 1;
            e.isn = tcp.seq;
            return r.pass(Counter::SynRetransmit);
        }
        if self.gate && self.closing.contains(&key) {
            return r.pass(Counter::SynRetransmit);
        }
        if self.cfg.aggressive != 0 {
            // Drop-mode oldest (the harness never sets random): this CPU's oldest still tracked.
            self.oldest(r, Counter::HalfOpenDropped);
        }
        assert!(
            self.half_open.len() < intercept_common::maps::HALF_OPEN_ENTRIES as usize,
            "the model does not follow a full HALF_OPEN table; the harness clears it before"
        );
        self.half_open.insert(
            key,
            HalfOpen {
                first_seen_ns: 0,
                isn: tcp.seq,
                syns: 1,
                ..HalfOpen::default()
            },
        );
        let ring = &mut self.ring;
        ring.keys[(ring.head as usize) % RING_SLOTS] = key;
        ring.head = ring.head.wrapping_add(1);
        if ring.head.wrapping_sub(ring.tail) as usize > RING_SLOTS {
            ring.tail = ring.head.wrapping_sub(u32::try_from(RING_SLOTS).unwrap());
        }
        r.count(Counter::HalfOpenNew);
        r.pass(Counter::Passed)
    }

    /// Evicts the oldest tracked handshake of the ring (skipping at most 8 stale slots).
    fn oldest(&mut self, r: &mut Run, reason: Counter) -> bool {
        let mut tries = 0;
        while tries < 8 && self.ring.tail != self.ring.head {
            let key = self.ring.keys[(self.ring.tail as usize) % RING_SLOTS];
            self.ring.tail = self.ring.tail.wrapping_add(1);
            if self.half_open.contains_key(&key) {
                self.gate = true;
                self.closing.insert(key);
                self.half_open.remove(&key);
                r.count(reason);
                return true;
            }
            tries += 1;
        }
        false
    }

    /// Watch mode, a client's ACK, RST or FIN.
    fn segment_watch(
        &mut self,
        r: &mut Run,
        f: &[u8],
        ip: &Ip,
        tcp: &Tcp,
        flow: &Flow,
        now: u64,
    ) -> u32 {
        if !self.protected(flow) {
            return r.pass(Counter::Passed);
        }
        match self.client_segment(&FlowKey::of(flow), tcp) {
            Seen::Closing if tcp.flags & tcp_flags::RST == 0 => {
                return r.drop(Counter::ClosingDropped);
            }
            Seen::Closing | Seen::Tracked => return r.pass(Counter::Passed),
            Seen::Untracked => {}
        }
        let grace = self.cfg.cookie_grace_until_ns;
        if kind(tcp.flags) == Kind::Ack && grace != 0 && now < grace {
            return self.verify(r, f, ip, tcp, flow, now, false);
        }
        r.pass(Counter::Passed)
    }
}
