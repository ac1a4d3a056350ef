//! Differential test of the data path: the real embedded object runs, through
//! `BPF_PROG_TEST_RUN`, generated and mutated frames (see `intercept_tests::framegen`) in six
//! deliberately chosen states of its maps, and every verdict, output frame and counter delta must
//! equal what the reference model (`intercept_tests::model`) says. No frame may be aborted, and
//! every SYN-ACK the program sends must carry valid IP and TCP checksums and a well-formed option
//! list.
//!
//! `DIFFTEST_FRAMES` sets the number of frames (default [`CI_FRAMES`]), `DIFFTEST_SEED` the seed
//! (default: from the clock; printed, so a failure can be reproduced). `./x difftest` runs a
//! longer pass.
//!
//! The program reads a coarse clock for the cookie's time slot and its `TSval`; the model is run
//! at the clock read before and after the program, and when those fall in different slots (or
//! `TSval` clock ticks) the program must match one of the two. The state the program writes with
//! the frame's time (a handoff in flight in `PROVEN`) is read back, checked, and pinned by the
//! harness to a time either far ahead (the handoff stays in flight) or long past (it ran out), so
//! the followers' verdicts do not depend on how long a run takes.
use std::time::Instant;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use intercept_common::{
    Counter,
    config::{
        Config, DropMode, FlowKey, HalfOpen, Mode, Proven, flags, proven_state, socket_bucket,
        table_word, time_wait_bucket,
    },
    cookie::{Secrets, slot_of},
    maps::{self, CounterBlock, PROG_XDP},
    parse::{Dissected, IPPROTO_TCP, L3, L4, dissect, tcp_flags},
    tcpopt,
};
use intercept_ctl::{
    control::{Maps, Prefix},
    netns::Netns,
};
use intercept_tests::{
    Loaded,
    framegen::{FlowSpec, Gen, KINDS, Rng, pool, truncations},
    model::{HashMap as DetMap, Model, Outcome, ScopeRule, XDP_ABORTED, XDP_TX, verdict_name},
    require_root, test_secrets,
};

/// Frames `./x test` (CI) runs.
const CI_FRAMES: usize = 1_000_000;
/// A time no run reaches (monotonic ns): a handoff pinned here stays in flight, a time-wait
/// flow stays live, the cookie grace never ends.
const FAR_NS: u64 = 1 << 62;
/// How far behind the clock read before the run the program's clock may be: it caches the
/// coarse clock per CPU per jiffy, so up to two ticks (HZ >= 100).
const SLACK_NS: u64 = 20_000_000;
/// Frames between checks of the maps the program writes against the model.
const CHECK_EVERY: usize = 25_000;

/// One state of the maps under test.
struct Plan {
    name: &'static str,
    /// Share of the frames.
    weight: usize,
    cfg: Config,
    secrets: Secrets,
    /// Protected prefixes and their ports (`None`: every port).
    scope: Vec<(&'static str, Option<Vec<u16>>)>,
    exempt: Vec<&'static str>,
    /// Socket table seeded (else every ACK failing the cookie asks the kernel).
    seeded: bool,
    /// Pool flows in the socket table.
    established: usize,
    /// Pool flows in the time-wait table: live, then expired.
    time_wait: (usize, usize),
    /// Pool flows tracked as half-open (every third marked closing).
    half_open: usize,
    /// Pool flows queued for closing.
    closing: usize,
    /// The closing gate open.
    gate: bool,
}

fn trie_scope() -> Vec<(&'static str, Option<Vec<u16>>)> {
    vec![
        ("198.18.1.0/24", Some(vec![80, 443])),
        ("198.18.0.1/32", None),
        ("2001:db8:1::/64", Some(vec![443])),
        ("2001:db8::1/128", None),
    ]
}

fn exempt_list() -> Vec<&'static str> {
    vec!["198.19.77.0/24", "2001:db8:ee::/48"]
}

#[expect(clippy::too_many_lines, reason = "one literal per plan")]
fn plans() -> Vec<Plan> {
    let rotated = Secrets {
        current: 1,
        ..test_secrets()
    };
    let mut many_exempt = exempt_list();
    many_exempt.extend([
        "198.19.100.0/24",
        "198.19.101.0/24",
        "198.19.102.0/24",
        "198.19.103.0/24",
        "198.19.104.0/24",
        "2001:db8:e1::/48",
        "2001:db8:e2::/48",
        "198.19.1.40/30",
    ]);
    vec![
        Plan {
            name: "intercept: trie scope, exempt list, authoritative socket table, time-wait",
            weight: 30,
            cfg: Config {
                mode: Mode::Intercept as u32,
                ..Config::default()
            },
            secrets: test_secrets(),
            scope: trie_scope(),
            exempt: exempt_list(),
            seeded: true,
            established: 10,
            time_wait: (6, 2),
            half_open: 0,
            closing: 0,
            gate: false,
        },
        Plan {
            name: "intercept: list scope, exempt trie, rotated secret, no ECN, own SYN-ACK \
                   settings, unseeded table (kernel lookups), watch leftovers tracked and closing",
            weight: 20,
            cfg: Config {
                mode: Mode::Intercept as u32,
                flags: flags::TRACKING,
                mss_v4: 1400,
                mss_v6: 1380,
                window: 29200,
                wscale: 9,
                ttl: 128,
                ..Config::default()
            },
            secrets: rotated,
            scope: vec![
                ("198.18.0.1/32", Some(vec![8080, 80])),
                ("198.18.1.7/32", None),
                ("2001:db8::1/128", Some(vec![8080])),
                ("2001:db8:1::7/128", None),
            ],
            exempt: many_exempt,
            seeded: false,
            established: 0,
            time_wait: (3, 1),
            half_open: 12,
            closing: 6,
            gate: true,
        },
        Plan {
            name: "watch: host-hash scope, cookie grace after intercept, tracked and closing \
                   handshakes",
            weight: 20,
            cfg: Config {
                mode: Mode::Watch as u32,
                flags: flags::ECN | flags::TRACKING,
                cookie_grace_until_ns: FAR_NS,
                ..Config::default()
            },
            secrets: test_secrets(),
            scope: vec![
                ("198.18.0.1/32", Some(vec![80, 443, 8080])),
                ("198.18.1.7/32", None),
                ("198.18.1.200/32", Some(vec![80, 81, 82, 83, 84, 85])),
                ("2001:db8::1/128", Some(vec![443, 80])),
                ("2001:db8:1::7/128", None),
            ],
            exempt: exempt_list(),
            seeded: true,
            established: 8,
            time_wait: (4, 1),
            half_open: 12,
            closing: 6,
            gate: true,
        },
        Plan {
            name: "auto, watching, aggressive (drop-mode oldest)",
            weight: 12,
            cfg: Config {
                mode: Mode::Auto as u32,
                active: Mode::Watch as u32,
                aggressive: 1,
                drop_mode: DropMode::Oldest as u32,
                ..Config::default()
            },
            secrets: test_secrets(),
            scope: trie_scope(),
            exempt: exempt_list(),
            seeded: true,
            established: 4,
            time_wait: (0, 0),
            half_open: 8,
            closing: 0,
            gate: false,
        },
        Plan {
            name: "auto, intercepting, no secret (SYNs left to the kernel)",
            weight: 10,
            cfg: Config {
                mode: Mode::Auto as u32,
                active: Mode::Intercept as u32,
                ..Config::default()
            },
            secrets: Secrets::default(),
            scope: trie_scope(),
            exempt: exempt_list(),
            seeded: true,
            established: 6,
            time_wait: (3, 1),
            half_open: 0,
            closing: 0,
            gate: false,
        },
        Plan {
            name: "off",
            weight: 8,
            cfg: Config::default(),
            secrets: test_secrets(),
            scope: trie_scope(),
            exempt: exempt_list(),
            seeded: true,
            established: 2,
            time_wait: (1, 0),
            half_open: 0,
            closing: 0,
            gate: false,
        },
    ]
}

/// `CLOCK_MONOTONIC_COARSE`: the clock `bpf_ktime_get_coarse_ns` reads.
fn coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap()
}

/// The clock part of our `TSval` (milliseconds plus the secret's offset, in units of 2^18 ms), as
/// the cookie documentation specifies it.
#[expect(
    clippy::cast_possible_truncation,
    reason = "milliseconds modulo 2^32, as the data path's 32-bit sum takes them"
)]
fn ts_clock(now: u64, offset: u32) -> u32 {
    let ms = (now / 1_000_000) as u32;
    (ms.wrapping_add(offset) >> 18) & 0x3fff
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// RFC 1071 sum, written here on its own.
fn sum_ok(parts: &[&[u8]]) -> bool {
    let mut s: u64 = 0;
    for p in parts {
        for c in p.chunks(2) {
            s += u64::from(c[0]) << 8 | u64::from(*c.get(1).unwrap_or(&0));
        }
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s == 0xffff
}

/// What every SYN-ACK the program sends must be, whatever the model says: a SYN-ACK with no
/// payload, valid IP and TCP checksums, and a well-formed option list.
fn check_emitted(out: &[u8]) -> Result<(), String> {
    let Ok(Dissected::Ip(ip)) = dissect(out) else {
        return Err("does not dissect as IP".into());
    };
    let L4::Tcp(t) = ip.l4 else {
        return Err("not TCP".into());
    };
    if t.flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST | tcp_flags::FIN)
        != tcp_flags::SYN | tcp_flags::ACK
    {
        return Err(format!("flags {:#04x} are not a SYN-ACK's", t.flags));
    }
    if t.payload_len != 0 || t.off + t.hdr_len != out.len() {
        return Err("payload or trailing bytes after the TCP header".into());
    }
    let o = ip.l3_off;
    let seg = &out[t.off..];
    let len = u32::try_from(seg.len()).unwrap();
    let ok = match ip.l3 {
        L3::V4 { hdr_len, .. } => {
            if !sum_ok(&[&out[o..o + hdr_len]]) {
                return Err("IPv4 header checksum".into());
            }
            let mut ph = [0u8; 12];
            ph[0..4].copy_from_slice(&out[o + 12..o + 16]);
            ph[4..8].copy_from_slice(&out[o + 16..o + 20]);
            ph[9] = IPPROTO_TCP;
            ph[10..12].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
            sum_ok(&[&ph, seg])
        }
        L3::V6 { .. } => {
            let mut ph = out[o + 8..o + 40].to_vec();
            ph.extend_from_slice(&len.to_be_bytes());
            ph.extend_from_slice(&[0, 0, 0, IPPROTO_TCP]);
            sum_ok(&[&ph, seg])
        }
    };
    if !ok {
        return Err("TCP checksum".into());
    }
    let opts = tcpopt::parse(out, t.off, t.hdr_len);
    if opts.malformed || opts.mss == 0 {
        return Err(format!("option list {opts:?}"));
    }
    Ok(())
}

/// The loaded object under test, its maps, and the model of them.
struct Target {
    obj: Loaded,
    maps: Maps,
    counters: PerCpuArray<MapData, CounterBlock>,
    sockets: HashMap<MapData, FlowKey, u32>,
    socket_filter: Array<MapData, u64>,
    socket_table: Array<MapData, u64>,
    time_wait: HashMap<MapData, FlowKey, u64>,
    time_wait_filter: Array<MapData, u64>,
    proven: Array<MapData, Proven>,
    half_open: HashMap<MapData, FlowKey, HalfOpen>,
    closing: HashMap<MapData, FlowKey, u64>,
    gate: Array<MapData, u64>,
    model: Model,
    /// What the plan in force put in the maps, taken out before the next one.
    plan_scope: Vec<(Prefix, Option<Vec<u16>>)>,
    plan_exempt: Vec<Prefix>,
}

fn take<T: TryFrom<Map>>(obj: &mut Loaded, name: &str) -> T
where
    <T as TryFrom<Map>>::Error: std::fmt::Debug,
{
    T::try_from(
        obj.ebpf
            .take_map(name)
            .unwrap_or_else(|| panic!("map {name}")),
    )
    .unwrap_or_else(|e| panic!("map {name}: {e:?}"))
}

impl Target {
    /// Loads the object (mode off, maps empty, as after attach before any configuration).
    fn load() -> Target {
        let mut obj = Loaded::new(&[PROG_XDP]);
        // SOCKETS and SOCKET_TABLE go to `Maps`: second handles by id to write them.
        let by_id = |obj: &Loaded, name: &str| {
            let id = match obj.ebpf.map(name) {
                Some(Map::HashMap(d) | Map::Array(d)) => d.info().expect("map info").id(),
                _ => panic!("{name}: unexpected map type"),
            };
            MapData::from_id(id).expect("map by id")
        };
        let sockets = HashMap::try_from(Map::HashMap(by_id(&obj, maps::SOCKETS))).unwrap();
        let socket_table = Array::try_from(Map::Array(by_id(&obj, maps::SOCKET_TABLE))).unwrap();
        let counters = take(&mut obj, maps::COUNTERS);
        let socket_filter = take(&mut obj, maps::SOCKET_FILTER);
        let time_wait = take(&mut obj, maps::TIME_WAIT);
        let time_wait_filter = take(&mut obj, maps::TIME_WAIT_FILTER);
        let proven = take(&mut obj, maps::PROVEN);
        let half_open = take(&mut obj, maps::HALF_OPEN);
        let closing = take(&mut obj, maps::CLOSING);
        let gate = take(&mut obj, maps::CLOSING_GATE);
        let maps = Maps::from_ebpf(&mut obj.ebpf).expect("maps");
        Target {
            obj,
            maps,
            counters,
            sockets,
            socket_filter,
            socket_table,
            time_wait,
            time_wait_filter,
            proven,
            half_open,
            closing,
            gate,
            model: Model::new(Config::default(), Secrets::default()),
            plan_scope: Vec::new(),
            plan_exempt: Vec::new(),
        }
    }

    /// The data path's counters, summed over CPUs.
    fn counters(&self) -> [u64; Counter::Count as usize] {
        let mut sum = [0u64; Counter::Count as usize];
        for block in self
            .counters
            .get(&maps::COUNTERS_DATA_PATH, 0)
            .unwrap()
            .iter()
        {
            for (s, v) in sum.iter_mut().zip(block) {
                *s = s.wrapping_add(*v);
            }
        }
        sum
    }

    /// Puts `plan` in force, as an operator would on a running attachment: the previous plan's
    /// scope, exempt sources, established and time-wait flows go, the new ones come; what the
    /// program wrote (handoffs in flight, tracked and closing handshakes, the watch ring) stays,
    /// and the model carries it over. Returns the plan's time-wait flows.
    #[expect(clippy::too_many_lines, reason = "one block per map, in order")]
    fn apply(&mut self, plan: &Plan, pool: &[FlowSpec]) -> Vec<FlowSpec> {
        let m = &mut self.maps;
        let model = &mut self.model;
        for (p, ports) in self.plan_scope.drain(..) {
            m.scope_del(&p, ports.as_deref()).expect("scope del");
        }
        for p in self.plan_exempt.drain(..) {
            m.exempt_del(&p).expect("exempt del");
        }
        model.scope.clear();
        model.exempt.clear();
        for (p, ports) in &plan.scope {
            let prefix: Prefix = p.parse().unwrap();
            m.scope_add(&prefix, ports.as_deref()).expect("scope add");
            let (addr, bits) = prefix.words();
            for port in ports.clone().unwrap_or(vec![0]) {
                model.scope.push(ScopeRule { addr, bits, port });
            }
            self.plan_scope.push((prefix, ports.clone()));
        }
        for p in &plan.exempt {
            let prefix: Prefix = p.parse().unwrap();
            m.exempt_add(&prefix).expect("exempt add");
            model.exempt.push(prefix.words());
            self.plan_exempt.push(prefix);
        }
        // Twice: a switch away from intercept mode sets a cookie grace of its own; the second
        // write, from the same mode, keeps the plan's.
        m.set_config(&plan.cfg).expect("config");
        m.set_config(&plan.cfg).expect("config");
        m.set_secrets(&plan.secrets).expect("secrets");
        self.socket_table
            .set(table_word::SEEDED, &u64::from(plan.seeded), 0)
            .expect("seeded");
        m.set_lookup_until(0).expect("lookup window");
        model.cfg = m.config().expect("config");
        model.secrets = plan.secrets;
        model.seeded = plan.seeded;
        model.lookup_until_ns = 0;
        assert_eq!(
            model.cfg.flags & !flags::DERIVED,
            plan.cfg.flags,
            "{}: operator flags kept",
            plan.name
        );
        assert_eq!(
            model.cfg.cookie_grace_until_ns, plan.cfg.cookie_grace_until_ns,
            "{}: cookie grace",
            plan.name
        );

        for k in model.sockets.drain() {
            self.sockets.remove(&k).expect("SOCKETS remove");
            let b = socket_bucket(&k);
            let n = self.socket_filter.get(&b, 0).unwrap();
            self.socket_filter
                .set(b, &(n - 1), 0)
                .expect("SOCKET_FILTER");
        }
        for (k, _) in model.time_wait.drain() {
            self.time_wait.remove(&k).expect("TIME_WAIT remove");
        }
        for (b, _) in model.time_wait_filter.drain() {
            self.time_wait_filter
                .set(b, &0, 0)
                .expect("TIME_WAIT_FILTER");
        }
        let mut flows = pool.iter().copied();
        let mut next = || flows.next().expect("pool large enough for the plan");
        for _ in 0..plan.established {
            let k = next().key();
            if model.sockets.insert(k) {
                self.sockets.insert(&k, &1, 0).expect("SOCKETS insert");
                let b = socket_bucket(&k);
                let n = self.socket_filter.get(&b, 0).unwrap();
                self.socket_filter
                    .set(b, &(n + 1), 0)
                    .expect("SOCKET_FILTER");
            }
        }
        let mut tw_flows = Vec::new();
        for i in 0..plan.time_wait.0 + plan.time_wait.1 {
            let f = next();
            let k = f.key();
            let until = if i < plan.time_wait.0 { FAR_NS } else { 1 };
            self.time_wait
                .insert(&k, &until, 0)
                .expect("TIME_WAIT insert");
            let b = time_wait_bucket(&k);
            let latest = model
                .time_wait_filter
                .get(&b)
                .copied()
                .unwrap_or(0)
                .max(until);
            self.time_wait_filter
                .set(b, &latest, 0)
                .expect("TIME_WAIT_FILTER");
            model.time_wait_filter.insert(b, latest);
            model.time_wait.insert(k, until);
            tw_flows.push(f);
        }
        for i in 0..plan.half_open {
            let k = next().key();
            let e = HalfOpen {
                first_seen_ns: 1,
                isn: 0x1000 + u32::try_from(i).unwrap(),
                syns: 1,
                resets: 0,
                closing: u32::from(i % 3 == 2),
                ..HalfOpen::default()
            };
            self.half_open.insert(&k, &e, 0).expect("HALF_OPEN insert");
            model.half_open.insert(k, e);
        }
        for _ in 0..plan.closing {
            let k = next().key();
            self.closing.insert(&k, &1, 0).expect("CLOSING insert");
            model.closing.insert(k);
        }
        self.gate
            .set(0, &u64::from(plan.gate), 0)
            .expect("CLOSING_GATE");
        model.gate = plan.gate;
        tw_flows
    }

    /// Checks the maps the program writes against the model; clears the half-open table when
    /// it grows large (the model does not follow a full one) and ends a lookup window the
    /// program opened (75 s long: it must not run out in the middle of a pass).
    fn check_maps(&mut self, what: &str) {
        let mut got: DetMap<FlowKey, HalfOpen> = DetMap::default();
        for kv in &self.half_open {
            let (k, v) = kv.expect("HALF_OPEN read");
            got.insert(k, v);
        }
        assert_eq!(
            got.len(),
            self.model.half_open.len(),
            "{what}: HALF_OPEN size"
        );
        for (k, v) in &self.model.half_open {
            let g = got
                .get(k)
                .unwrap_or_else(|| panic!("{what}: HALF_OPEN lacks {k:?}"));
            assert_eq!(
                (g.isn, g.syns, g.resets, g.closing),
                (v.isn, v.syns, v.resets, v.closing),
                "{what}: HALF_OPEN entry {k:?}"
            );
        }
        let mut closing = 0;
        for k in self.closing.keys() {
            let k = k.expect("CLOSING read");
            assert!(self.model.closing.contains(&k), "{what}: CLOSING has {k:?}");
            closing += 1;
        }
        assert_eq!(closing, self.model.closing.len(), "{what}: CLOSING size");
        assert_eq!(
            self.gate.get(&0, 0).unwrap() != 0,
            self.model.gate,
            "{what}: CLOSING_GATE"
        );
        let t = self.maps.socket_table().unwrap();
        assert_eq!(
            t.lookup_until_ns != 0,
            self.model.lookup_until_ns != 0,
            "{what}: lookup window"
        );
        if t.lookup_until_ns != 0 {
            self.maps.set_lookup_until(0).unwrap();
            self.model.lookup_until_ns = 0;
        }
        if self.model.half_open.len() > 20_000 {
            for k in self.model.half_open.keys() {
                self.half_open.remove(k).expect("HALF_OPEN remove");
            }
            self.model.half_open.clear();
        }
    }
}

/// Per-run tallies.
#[derive(Default)]
struct Tally {
    frames: usize,
    by_kind: DetMap<&'static str, usize>,
    by_verdict: [usize; 4],
    counters: DetMap<&'static str, u64>,
    ambiguous: usize,
}

/// Runs `frame` through the program and the model; panics with a report on any difference.
#[expect(
    clippy::too_many_lines,
    reason = "run, compare, report, check what it wrote"
)]
fn one(
    t: &mut Target,
    pin: &mut Rng,
    before: &mut [u64; Counter::Count as usize],
    frame: &[u8],
    kind: &'static str,
    ctx: &dyn Fn() -> String,
    tally: &mut Tally,
) {
    let t_lo = coarse_ns().saturating_sub(SLACK_NS);
    let res = t.obj.run(PROG_XDP, frame);
    let t_hi = coarse_ns();
    let after = t.counters();
    let d = Counter::ALL
        .iter()
        .map(|c| (*c, after[*c as usize].wrapping_sub(before[*c as usize])))
        .filter(|(_, n)| *n != 0)
        .collect();
    *before = after;
    let (verdict, out) = res.unwrap_or_else(|e| panic!("{}: test_run failed: {e:?}", ctx()));
    let prog = Outcome {
        verdict,
        frame: out,
        counters: d,
    };
    let offs = t.model.secrets.ts_offset;
    let same_time = slot_of(t_lo) == slot_of(t_hi)
        && offs
            .iter()
            .all(|o| ts_clock(t_lo, *o) == ts_clock(t_hi, *o));
    let step = if same_time {
        t.model
            .step(frame, t_hi)
            .expect("a frame of 14 bytes or more")
    } else {
        // The clock moved to another slot (or TSval tick) around the run: either is right.
        tally.ambiguous += 1;
        let mut a = t.model.clone();
        let sa = a.step(frame, t_lo).expect("frame");
        let mut b = t.model.clone();
        let sb = b.step(frame, t_hi).expect("frame");
        if sa.outcome == prog {
            t.model = a;
            sa
        } else {
            t.model = b;
            sb
        }
    };
    let model = &step.outcome;
    if *model != prog || prog.verdict == XDP_ABORTED {
        let mut all: Vec<Counter> = model
            .counters
            .iter()
            .chain(prog.counters.iter())
            .map(|(c, _)| *c)
            .collect();
        all.sort_by_key(|c| *c as u32);
        all.dedup();
        let get = |v: &[(Counter, u64)], c: Counter| {
            v.iter().find(|(k, _)| *k == c).map_or(0, |(_, n)| *n)
        };
        let rows: Vec<String> = all
            .iter()
            .map(|c| {
                let (m, p) = (get(&model.counters, *c), get(&prog.counters, *c));
                format!(
                    "    {:<20} model {m:>2}  program {p:>2}{}",
                    c.name(),
                    if m == p { "" } else { "   <--" }
                )
            })
            .collect();
        panic!(
            "{}: MISMATCH on a {kind} frame\n  frame ({} bytes): {}\n  dissected: {:?}\n  \
             verdict: model {} program {}\n  counters:\n{}\n  output frame equal: {}\n  model \
             output:   {}\n  program output: {}\n",
            ctx(),
            frame.len(),
            hex(frame),
            dissect(frame),
            verdict_name(model.verdict),
            verdict_name(prog.verdict),
            rows.join("\n"),
            model.frame == prog.frame,
            hex(&model.frame),
            hex(&prog.frame),
        );
    }
    if prog.verdict == XDP_TX
        && let Err(e) = check_emitted(&prog.frame)
    {
        panic!(
            "{}: the SYN-ACK sent for a {kind} frame is not well formed ({e})\n  frame: {}\n  \
             SYN-ACK: {}",
            ctx(),
            hex(frame),
            hex(&prog.frame)
        );
    }
    if let Some(slot) = step.proven_written {
        let got = t.proven.get(&slot, 0).expect("PROVEN read");
        let want = t.model.proven[&slot];
        assert!(
            got.key == want.key
                && got.state == proven_state::PENDING
                && (got.client_next, got.server_next) == (want.client_next, want.server_next)
                && got.at_ns >= t_lo
                && got.at_ns <= t_hi + SLACK_NS,
            "{}: PROVEN slot {slot} after a {kind} frame: {got:?}, model {want:?} (time \
             {t_lo}..{t_hi})\n  frame: {}",
            ctx(),
            hex(frame)
        );
        // Pinned: in flight for good, or run out long ago (see the module docs).
        let at = if pin.pct(75) { FAR_NS } else { 1 };
        let pinned = Proven { at_ns: at, ..got };
        t.proven.set(slot, &pinned, 0).expect("PROVEN write");
        t.model.proven.insert(slot, pinned);
    }
    tally.frames += 1;
    *tally.by_kind.entry(kind).or_default() += 1;
    tally.by_verdict[prog.verdict.min(3) as usize] += 1;
    for (c, n) in &prog.counters {
        *tally.counters.entry(c.name()).or_default() += n;
    }
}

fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        let v = v.trim();
        let r = v
            .strip_prefix("0x")
            .map_or_else(|| v.parse(), |h| u64::from_str_radix(h, 16));
        r.unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

/// Runs `frames` frames from `seed` over every plan in turn, on one loaded object; returns the
/// tally.
fn difftest(frames: usize, seed: u64) -> Tally {
    let plans = plans();
    let total_weight: usize = plans.iter().map(|p| p.weight).sum();
    let mut tally = Tally::default();
    let mut t = Target::load();
    let mut before = t.counters();
    for (i, plan) in plans.iter().enumerate() {
        let share = if i + 1 == plans.len() {
            frames - tally.frames
        } else {
            frames * plan.weight / total_weight
        };
        let state_seed = seed ^ (0x5151_0000_0000 + i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut prng = Rng::new(state_seed);
        let flows = pool(&mut prng, 64);
        let tw = t.apply(plan, &flows);
        let mut frames_of = Gen::new(state_seed ^ 1, flows, tw);
        let mut pin = Rng::new(state_seed ^ 2);
        let start = tally.frames;
        let label = format!("state {} ({})", i + 1, plan.name);
        // Truncation at every offset of a few frames of each kind, then the random stream.
        let mut sweep = Vec::new();
        while sweep.len() < 24 {
            let (f, k) = frames_of.next(&t.model, slot_of(coarse_ns()));
            if k != "random" && k != "arp" {
                sweep.push((f, k));
            }
        }
        for (f, k) in sweep {
            for cut in truncations(&f) {
                if tally.frames - start >= share {
                    break;
                }
                let n = tally.frames;
                let ctx = || format!("{label}, frame {n} (seed {seed:#x})");
                one(&mut t, &mut pin, &mut before, &cut, k, &ctx, &mut tally);
            }
        }
        while tally.frames - start < share {
            let (f, k) = frames_of.next(&t.model, slot_of(coarse_ns()));
            let n = tally.frames;
            let ctx = || format!("{label}, frame {n} (seed {seed:#x})");
            one(&mut t, &mut pin, &mut before, &f, k, &ctx, &mut tally);
            if (tally.frames - start) % CHECK_EVERY == 0 {
                t.check_maps(&ctx());
            }
        }
        t.check_maps(&format!("{label}, end"));
        println!(
            "difftest: {label}: {} frames, half-open {}, closing {}, proven {}",
            tally.frames - start,
            t.model.half_open.len(),
            t.model.closing.len(),
            t.model.proven.len()
        );
    }
    tally
}

#[test]
fn program_matches_the_model_on_generated_frames() {
    require_root("program_matches_the_model_on_generated_frames");
    let frames = env_num("DIFFTEST_FRAMES").map_or(CI_FRAMES, |n| usize::try_from(n).unwrap());
    let seed = env_num("DIFFTEST_SEED").unwrap_or_else(|| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &raw mut ts) };
        ts.tv_sec.cast_unsigned().wrapping_mul(1_000_000_007) ^ ts.tv_nsec.cast_unsigned()
    });
    println!("difftest: {frames} frames, seed {seed:#x} (reproduce: DIFFTEST_SEED={seed:#x})");
    let ns = Netns::new("dt").expect("netns");
    let t0 = Instant::now();
    let tally = ns
        .spawn(move || {
            // One CPU: the program's per-CPU state (the watch ring, the clock cache) is then
            // the one the model follows.
            // SAFETY: plain libc calls on this thread.
            unsafe {
                let cpu = libc::sched_getcpu();
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(usize::try_from(cpu).unwrap(), &mut set);
                assert_eq!(
                    libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set),
                    0,
                    "pin to CPU {cpu}"
                );
            }
            difftest(frames, seed)
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    let secs = t0.elapsed().as_secs_f64();
    let kinds: Vec<String> = KINDS
        .iter()
        .filter_map(|k| tally.by_kind.get(k).map(|n| format!("{k} {n}")))
        .collect();
    let mut counters: Vec<(&str, u64)> = tally.counters.iter().map(|(k, v)| (*k, *v)).collect();
    counters.sort_unstable();
    println!(
        "difftest: {} frames, seed {seed:#x}, {secs:.1} s ({:.0} frames/s), no mismatch\n  \
         kinds: {}\n  verdicts: aborted {} drop {} pass {} tx {}\n  runs at a slot/TSval \
         boundary: {}\n  counters: {:?}",
        tally.frames,
        f64::from(u32::try_from(tally.frames).unwrap_or(u32::MAX)) / secs,
        kinds.join(", "),
        tally.by_verdict[0],
        tally.by_verdict[1],
        tally.by_verdict[2],
        tally.by_verdict[3],
        tally.ambiguous,
        counters
    );
    assert_eq!(tally.frames, frames);
}
