//! Watch mode on the real object through BPF_PROG_TEST_RUN: tracking on SYN, retransmission,
//! the client's segments left to the kernel, completion seen by the socket-table tracepoint, the
//! table full, and drop-mode oldest/random.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use intercept_common::{
    Counter::{self, *},
    config::{Config, DropMode, FlowKey, HalfOpen, Mode, flags},
    cookie::mapped,
    craft::{Link, TcpSegment, tcp_frame},
    maps::{CLOSING, HALF_OPEN, HALF_OPEN_ENTRIES, PROG_XDP},
    parse::tcp_flags,
};
use intercept_ctl::{control::Maps, netns::Netns, watchctl::half_open_count};
use intercept_tests::{Loaded, configure_intercept, deltas, require_root};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn client(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0xc613_0000 + i) // 198.19.x.y
}

fn seg(i: u32, flags: u8) -> Vec<u8> {
    let mut t = TcpSegment::new(
        IpAddr::V4(client(i)),
        IpAddr::V4(SERVER),
        40000,
        8080,
        flags,
    );
    t.seq = 1000 + i;
    t.ack_seq = if flags & tcp_flags::ACK != 0 { 5000 } else { 0 };
    tcp_frame(&Link::default(), &t)
}

fn key(i: u32) -> FlowKey {
    FlowKey {
        saddr: mapped(u32::from(client(i))),
        daddr: mapped(u32::from(SERVER)),
        sport: 40000,
        dport: 8080,
    }
}

struct Env {
    obj: Loaded,
    maps: Maps,
}

impl Env {
    fn run(&self, what: &str, frame: &[u8], counters: &[Counter]) {
        let out = self
            .obj
            .run_expect(PROG_XDP, what, frame, XDP_PASS, counters);
        assert_eq!(out, frame, "{what}: watch mode passes frames unchanged");
    }

    fn table(&self) -> HashMap<&MapData, FlowKey, HalfOpen> {
        HashMap::try_from(self.obj.ebpf.map(HALF_OPEN).expect("map")).expect("hash map")
    }

    /// Runs a frame the program must drop as a segment of a handshake being closed.
    fn drops(&self, what: &str, frame: &[u8], kind: Counter) {
        let _ = self.obj.run_expect(
            PROG_XDP,
            what,
            frame,
            XDP_DROP,
            &[Packets, Ipv4, Tcp, kind, ClosingDropped, Dropped],
        );
    }

    /// The flows queued to be closed, sorted.
    fn closing(&self) -> Vec<FlowKey> {
        let m: HashMap<&MapData, FlowKey, u64> =
            HashMap::try_from(self.obj.ebpf.map(CLOSING).expect("map")).expect("hash map");
        let mut keys: Vec<FlowKey> = m.keys().filter_map(Result::ok).collect();
        keys.sort_by_key(|k| (k.saddr, k.sport));
        keys
    }

    fn set(&mut self, aggressive: bool, drop: DropMode) {
        let cfg = Config {
            mode: Mode::Watch as u32,
            aggressive: u32::from(aggressive),
            drop_mode: drop as u32,
            ..self.maps.config().unwrap()
        };
        self.maps.set_config(&cfg).unwrap();
    }
}

const SYN_C: [Counter; 7] = [Packets, Ipv4, Tcp, Syn, SynProtected, HalfOpenNew, Passed];

/// Runs `f` on a thread pinned to CPU 0 inside a fresh namespace (the insertion ring is per-CPU).
fn on_cpu0(f: impl FnOnce() + Send + 'static) {
    let ns = Netns::new("wfx").expect("netns");
    ns.spawn(move || {
        // SAFETY: a zeroed cpu_set_t with bit 0 set, for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set),
                0
            );
        }
        f();
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn env() -> Env {
    let mut obj = Loaded::new(&[PROG_XDP]);
    let maps = configure_intercept(&mut obj);
    let mut e = Env { obj, maps };
    e.set(false, DropMode::Oldest);
    e
}

#[test]
fn tracking_retransmit_and_the_clients_segments() {
    require_root("tracking_retransmit_and_the_clients_segments");
    on_cpu0(|| {
        let e = env();
        e.run("SYN of a new handshake", &seg(1, tcp_flags::SYN), &SYN_C);
        let t = e.table();
        let first = t.get(&key(1), 0).expect("tracked");
        assert_eq!((first.isn, first.syns), (1001, 1));
        assert!(first.first_seen_ns > 0);
        e.run(
            "retransmitted SYN",
            &seg(1, tcp_flags::SYN),
            &[Packets, Ipv4, Tcp, Syn, SynProtected, SynRetransmit, Passed],
        );
        let again = t.get(&key(1), 0).expect("still tracked");
        assert_eq!(
            (again.syns, again.first_seen_ns),
            (2, first.first_seen_ns),
            "age kept from the first SYN"
        );
        // The client's ACK, FIN and RST go to the kernel, which alone knows whether their
        // numbers complete or abort the handshake (a spoofed ACK or RST carries any numbers):
        // the flow stays tracked until the kernel says so.
        for (flags, what, c) in [
            (tcp_flags::ACK, "ACK", Ack),
            (tcp_flags::FIN | tcp_flags::ACK, "FIN", Ack),
            (tcp_flags::RST, "RST", Rst),
        ] {
            e.run(
                &format!("the client's {what} passes"),
                &seg(1, flags),
                &[Packets, Ipv4, Tcp, c, Passed],
            );
            assert!(
                t.get(&key(1), 0).is_ok(),
                "client 1 after its {what}: still tracked"
            );
        }
        let mut other = TcpSegment::new(
            IpAddr::V4(client(9)),
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9)),
            1,
            8080,
            tcp_flags::SYN,
        );
        other.seq = 1;
        e.run(
            "SYN to an unprotected destination is not tracked",
            &tcp_frame(&Link::default(), &other),
            &[Packets, Ipv4, Tcp, Syn, Passed],
        );
    });
}

/// The kernel completing a tracked handshake (the socket-table tracepoint sees the server's
/// socket go SYN_RECV -> ESTABLISHED) untracks it and counts it completed.
#[test]
fn the_kernel_completing_a_handshake_untracks_it() {
    require_root("the_kernel_completing_a_handshake_untracks_it");
    let ns = Netns::new("wfx").expect("netns");
    for a in ["198.18.0.1/32", "198.19.0.5/32"] {
        ns.ip(&["addr", "add", a, "dev", "lo"]).unwrap();
    }
    ns.spawn(|| {
        let mut e = env();
        let _track =
            intercept_ctl::loader::attach_socket_tracker(&mut e.obj.ebpf).expect("tracepoint");
        let l = TcpListener::bind((SERVER, 8080)).expect("listen");
        let c = IpAddr::V4(client(5));
        // The handshake's SYN as XDP sees it on the wire (XDP does not run on lo).
        let mut syn = TcpSegment::new(c, IpAddr::V4(SERVER), 40005, 8080, tcp_flags::SYN);
        syn.seq = 7;
        e.run("SYN", &tcp_frame(&Link::default(), &syn), &SYN_C);
        let k = FlowKey {
            saddr: mapped(u32::from(client(5))),
            daddr: mapped(u32::from(SERVER)),
            sport: 40005,
            dport: 8080,
        };
        assert!(e.table().get(&k, 0).is_ok(), "tracked");
        let before = e.obj.counters();
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::new(c, 40005).into()).unwrap();
        s.connect(&SocketAddr::new(IpAddr::V4(SERVER), 8080).into())
            .expect("connect");
        let _srv = l.accept().expect("accept");
        let start = Instant::now();
        while e.table().get(&k, 0).is_ok() {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "198.19.0.5:40005 -> 198.18.0.1:8080 still tracked after the kernel completed it"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            deltas(&before, &e.obj.counters()),
            vec![(HalfOpenCompleted, 1)],
            "completed once, by the tracepoint"
        );
    })
    .join()
    .unwrap_or_else(|err| std::panic::resume_unwind(err));
}

/// Past its capacity each new handshake evicts its CPU's oldest (queued for the controller to
/// close, as drop-mode oldest does), and the half-open count the counters give stays equal to
/// what the table holds.
#[test]
fn a_full_table_keeps_the_count_exact() {
    require_root("a_full_table_keeps_the_count_exact");
    on_cpu0(|| {
        let e = env();
        let n = HALF_OPEN_ENTRIES + 64;
        for i in 0..n {
            let (v, _) = e.obj.run(PROG_XDP, &seg(i, tcp_flags::SYN)).unwrap();
            assert_eq!(v, XDP_PASS, "SYN {i}");
        }
        let t = e.table();
        let live = t.keys().filter_map(Result::ok).count() as u64;
        assert_eq!(
            half_open_count(&e.obj.counters()),
            live,
            "the count equals the table after {n} SYNs"
        );
        // The controller reads it in batches: the same entries, each once.
        let mut by_key: Vec<(FlowKey, HalfOpen)> = t.iter().filter_map(Result::ok).collect();
        let mut batched: Vec<(FlowKey, HalfOpen)> = intercept_ctl::batch::entries(
            e.obj
                .ebpf
                .map(HALF_OPEN)
                .and_then(|m| match m {
                    aya::maps::Map::HashMap(d) => Some(d),
                    _ => None,
                })
                .expect("HALF_OPEN"),
        )
        .expect("batch read");
        let order = |v: &mut Vec<(FlowKey, HalfOpen)>| v.sort_by_key(|(k, _)| (k.saddr, k.sport));
        order(&mut by_key);
        order(&mut batched);
        assert!(
            batched == by_key,
            "the batch read differs from the key-by-key one"
        );
        assert_eq!(live, u64::from(HALF_OPEN_ENTRIES), "the table is full");
        let c = e.obj.counters();
        assert_eq!(
            (
                c.get(HalfOpenNew),
                c.get(HalfOpenEvicted),
                c.get(HalfOpenTableFull)
            ),
            (u64::from(n), 64, 0),
            "each of the last 64 SYNs evicted one and was tracked"
        );
        assert!(
            t.get(&key(n - 1), 0).is_ok(),
            "the newest handshake is tracked"
        );
        // This CPU's ring holds its last 256 SYNs: SYN j (from n - 64 on) evicted j - 256.
        for i in n - 320..n - 256 {
            assert!(t.get(&key(i), 0).is_err(), "client {i} was evicted");
        }
        assert!(
            t.get(&key(0), 0).is_ok(),
            "older ones stay (timed out later)"
        );
        let mut victims: Vec<FlowKey> = (n - 320..n - 256).map(key).collect();
        victims.sort_by_key(|k| (k.saddr, k.sport));
        assert_eq!(e.closing(), victims, "the victims are queued to be closed");
    });
}

#[test]
fn drop_mode_oldest_and_random() {
    require_root("drop_mode_oldest_and_random");
    on_cpu0(|| {
        let mut e = env();
        for i in 1..=4 {
            e.run(&format!("SYN {i}"), &seg(i, tcp_flags::SYN), &SYN_C);
        }
        // Client 2 completes: the socket-table tracepoint untracks it.
        let mut t: HashMap<&mut MapData, FlowKey, HalfOpen> =
            HashMap::try_from(e.obj.ebpf.map_mut(HALF_OPEN).expect("map")).expect("hash map");
        t.remove(&key(2)).expect("client 2 tracked");
        e.set(true, DropMode::Oldest);
        let displaced = [
            Packets,
            Ipv4,
            Tcp,
            Syn,
            SynProtected,
            HalfOpenDropped,
            HalfOpenNew,
            Passed,
        ];
        e.run(
            "aggressive: SYN 5 displaces the oldest",
            &seg(5, tcp_flags::SYN),
            &displaced,
        );
        assert_eq!(e.closing(), vec![key(1)], "oldest is client 1");
        e.run(
            "SYN 6 displaces the next oldest still half-open (2 completed)",
            &seg(6, tcp_flags::SYN),
            &displaced,
        );
        assert_eq!(
            e.closing(),
            vec![key(1), key(3)],
            "client 2 completed, so client 3 is next"
        );
        let t = e.table();
        for (i, tracked) in [
            (1, false),
            (2, false),
            (3, false),
            (4, true),
            (5, true),
            (6, true),
        ] {
            assert_eq!(t.get(&key(i), 0).is_ok(), tracked, "client {i}");
        }
        // Until the controller closes it, the victim's ACKs are dropped and its SYN is not
        // tracked again.
        e.drops("client 1's ACK, being closed", &seg(1, tcp_flags::ACK), Ack);
        e.run(
            "client 1's retransmitted SYN, being closed",
            &seg(1, tcp_flags::SYN),
            &[Packets, Ipv4, Tcp, Syn, SynProtected, SynRetransmit, Passed],
        );
        assert!(t.get(&key(1), 0).is_err(), "client 1 is not tracked again");
        e.set(true, DropMode::Random);
        e.run(
            "random: SYN 7 displaces one of 4, 5, 6",
            &seg(7, tcp_flags::SYN),
            &displaced,
        );
        let v: Vec<FlowKey> = e
            .closing()
            .into_iter()
            .filter(|k| ![key(1), key(3)].contains(k))
            .collect();
        assert_eq!(v.len(), 1, "one victim per new SYN: {v:?}");
        assert!([key(4), key(5), key(6)].contains(&v[0]), "victim {v:?}");
        let t = e.table();
        assert!(t.get(&v[0], 0).is_err(), "the victim is untracked");
        assert!(t.get(&key(7), 0).is_ok());
    });
}

/// From the controller's decision to close a half-open handshake (a timeout marks it closing)
/// until it is closed, the client's ACKs and FINs of it are dropped, in watch mode and in
/// intercept mode after a switch: none may turn the request socket into a connection the close
/// would reset. An RST passes (it can only end the request socket too).
#[test]
fn segments_of_a_handshake_being_closed_are_dropped() {
    require_root("segments_of_a_handshake_being_closed_are_dropped");
    on_cpu0(|| {
        let mut e = env();
        e.run("SYN", &seg(1, tcp_flags::SYN), &SYN_C);
        let mut t: HashMap<&mut MapData, FlowKey, HalfOpen> =
            HashMap::try_from(e.obj.ebpf.map_mut(HALF_OPEN).expect("map")).expect("hash map");
        let entry = t.get(&key(1), 0).expect("tracked");
        t.insert(
            &key(1),
            &HalfOpen {
                closing: 1,
                ..entry
            },
            0,
        )
        .expect("mark closing");
        e.drops("ACK", &seg(1, tcp_flags::ACK), Ack);
        e.drops("FIN", &seg(1, tcp_flags::FIN | tcp_flags::ACK), Ack);
        e.run(
            "RST",
            &seg(1, tcp_flags::RST),
            &[Packets, Ipv4, Tcp, Rst, Passed],
        );
        assert_eq!(e.table().get(&key(1), 0).unwrap().resets, 1, "RST noted");
        let cfg = e.maps.config().unwrap();
        e.maps
            .set_config(&Config {
                mode: Mode::Intercept as u32,
                flags: cfg.flags | flags::TRACKING,
                ..cfg
            })
            .unwrap();
        e.drops("ACK in intercept mode", &seg(1, tcp_flags::ACK), Ack);
    });
}

/// In intercept mode while watch mode's handshakes may still be tracked (`flags::TRACKING`) or
/// closing (the gate open), an ACK to a destination out of scope passes counted once, as every
/// frame is: the check for a handshake being closed must not count a pass of its own before the
/// ACK path counts the real one (found by the differential test: `passed` moved by two, so
/// `packets == passed + dropped + syn_ack_sent + aborted` no longer held).
#[test]
fn an_ack_out_of_scope_after_watch_mode_is_counted_once() {
    require_root("an_ack_out_of_scope_after_watch_mode_is_counted_once");
    on_cpu0(|| {
        let mut e = env();
        let cfg = e.maps.config().unwrap();
        e.maps
            .set_config(&Config {
                mode: Mode::Intercept as u32,
                flags: cfg.flags | flags::TRACKING,
                ..cfg
            })
            .unwrap();
        let mut t = TcpSegment::new(
            IpAddr::V4(client(1)),
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9)),
            40000,
            8080,
            tcp_flags::ACK,
        );
        (t.seq, t.ack_seq) = (1001, 5000);
        e.run(
            "ACK to an unprotected destination, TRACKING set",
            &tcp_frame(&Link::default(), &t),
            &[Packets, Ipv4, Tcp, Ack, Passed],
        );
    });
}
