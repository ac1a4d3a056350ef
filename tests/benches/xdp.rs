//! BPF_PROG_TEST_RUN cost per packet of each path of the real object, next to a trivial XDP_PASS
//! program measured the same way. One run per call (`repeat` would feed the program the frame it
//! modified on the previous run, e.g. a SYN-ACK instead of a SYN); the figure is the median of the
//! kernel-reported durations. Needs root. Prints figures; asserts nothing.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};

use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use intercept_common::{
    cookie::{CookieOpts, Flow, make, mapped},
    craft::{Link, TcpSegment, linux_syn_options, tcp_frame},
    maps::{PROG_XDP, PROG_XDP_PASS},
    parse::tcp_flags,
};
use intercept_ctl::netns::Netns;
use intercept_tests::{
    Loaded, configure_intercept, connect_from, now_slot, require_root, start_socket_table,
    test_secrets,
};

const RUNS: usize = 20_000;

/// One single run of `prog` on `frame`: the kernel-measured ns.
fn run_once(p: &Xdp, frame: &[u8], out: &mut [u8]) -> u128 {
    p.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(out),
        ..TestRunOptions::default()
    })
    .expect("test_run")
    .duration
    .as_nanos()
}

fn median(mut d: Vec<u128>) -> f64 {
    d.sort_unstable();
    d[d.len() / 2] as f64
}

/// Rounds of [`interleaved`].
const ROUNDS: usize = 5;

/// Net ns of each (program, frame) case after the first (the baseline), per round: the median of
/// `RUNS / ROUNDS` runs minus the baseline's median of the same round. The cases are interleaved,
/// one run of each in turn, so every row and the baseline see the same machine; the rounds show
/// how much this VM's noise (which comes in bursts and slows everything) moved the figures.
fn interleaved(obj: &Loaded, cases: &[(&str, &[u8])]) -> Vec<Vec<f64>> {
    let progs: Vec<&Xdp> = cases
        .iter()
        .map(|(p, _)| {
            obj.ebpf
                .program(p)
                .expect("program")
                .try_into()
                .expect("XDP")
        })
        .collect();
    let mut out = vec![0u8; 256];
    (0..ROUNDS)
        .map(|_| {
            let mut d = vec![Vec::with_capacity(RUNS / ROUNDS); cases.len()];
            for _ in 0..RUNS / ROUNDS {
                for (i, (_, f)) in cases.iter().enumerate() {
                    d[i].push(run_once(progs[i], f, &mut out));
                }
            }
            let m: Vec<f64> = d.into_iter().map(median).collect();
            m.iter().map(|x| x - m[0]).chain([m[0]]).collect()
        })
        .collect()
}

/// (lowest, highest) over rounds of case `i` of [`interleaved`]'s result.
fn spread(rounds: &[Vec<f64>], i: usize) -> (f64, f64) {
    rounds.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| {
        (lo.min(r[i]), hi.max(r[i]))
    })
}

/// Median ns of `prog` on each frame of `measured`, running `setup[i]` (unmeasured) before
/// `measured[i]`, interleaved with the baseline program on `measured[i]`. Returns (frames,
/// baseline).
fn median_ns_seq(
    obj: &Loaded,
    prog: &str,
    setup: Option<&[Vec<u8>]>,
    measured: &[Vec<u8>],
) -> (f64, f64) {
    let p: &Xdp = obj
        .ebpf
        .program(prog)
        .expect("program")
        .try_into()
        .expect("XDP");
    let b: &Xdp = obj
        .ebpf
        .program(PROG_XDP_PASS)
        .expect("program")
        .try_into()
        .expect("XDP");
    let mut out = vec![0u8; 256];
    let (mut d, mut base) = (Vec::new(), Vec::new());
    for (i, f) in measured.iter().enumerate() {
        if let Some(s) = setup {
            run_once(p, &s[i], &mut out);
        }
        d.push(run_once(p, f, &mut out));
        base.push(run_once(b, f, &mut out));
    }
    (median(d), median(base))
}

fn main() {
    require_root("the XDP benchmark");
    let ns = Netns::new("bench").expect("netns");
    ns.ip(&["addr", "add", "198.18.0.1/32", "dev", "lo"])
        .unwrap();
    ns.ip(&["addr", "add", "198.18.0.2/32", "dev", "lo"])
        .unwrap();
    ns.spawn(|| {
        let mut obj = Loaded::new(&[PROG_XDP, PROG_XDP_PASS]);
        let mut maps = configure_intercept(&mut obj);
        // The socket table as an attachment keeps it (tracepoint, seeded, authoritative).
        let _track = start_socket_table(&mut obj, &mut maps);
        let listener = TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 8080)).unwrap();
        let (c, s) = (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)));
        // A real established connection whose data segments the ACK path must pass.
        let client = connect_from(c, s, 8080);
        let _server = listener.accept().unwrap();
        let cport = client.local_addr().unwrap().port();

        let l = Link::default();
        let mut syn = TcpSegment::new(c, s, 40000, 8080, tcp_flags::SYN);
        syn.seq = 77;
        let bare_syn = tcp_frame(&l, &syn);
        syn.options = linux_syn_options(1460, 1, 7);
        let linux_syn = tcp_frame(&l, &syn);
        let co = CookieOpts { mss_idx: 3, wscale: 7, sack: true, ecn: false };
        let flow = Flow { saddr: mapped(0xc612_0002), daddr: mapped(0xc612_0001), sport: 40000, dport: 8080 };
        let mut ack = TcpSegment::new(c, s, 40000, 8080, tcp_flags::ACK);
        ack.seq = 78;
        ack.options = vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 1];
        ack.ack_seq = make(&test_secrets().keys[0], 0, &flow, 77, now_slot(), co).wrapping_add(1);
        let valid_ack = tcp_frame(&l, &ack);
        ack.ack_seq ^= 0x8000_0000;
        let forged_ack = tcp_frame(&l, &ack);
        let mut data = TcpSegment::new(c, s, cport, 8080, tcp_flags::ACK | tcp_flags::PSH);
        data.payload = vec![0x61; 100];
        let established = tcp_frame(&l, &data);
        let mut udp = tcp_frame(&l, &TcpSegment::new(c, s, 1, 2, 0));
        udp[23] = 17;

        let frames: [(&str, &[u8], Option<u32>); 6] = [
            ("SYN, Linux options (XDP_TX)", &linux_syn, Some(240)),
            ("SYN, no options (XDP_TX)", &bare_syn, None),
            ("valid cookie ACK (handoff)", &valid_ack, Some(155)),
            ("forged ACK (drop)", &forged_ack, Some(100)),
            ("established data segment (pass)", &established, None),
            ("non-TCP (UDP, pass)", &udp, None),
        ];
        // For `perf record -a`: loop one frame for 5 s instead of measuring.
        if let Ok(i) = std::env::var("XDP_BENCH_PROFILE") {
            let (what, f, _) = frames[i.parse::<usize>().expect("XDP_BENCH_PROFILE: a row number")];
            println!("profiling: {what}");
            let p: &Xdp = obj.ebpf.program(PROG_XDP).unwrap().try_into().unwrap();
            let mut out = vec![0u8; 256];
            let t = std::time::Instant::now();
            while t.elapsed().as_secs() < 5 {
                run_once(p, f, &mut out);
            }
            return;
        }
        let mut cases = vec![(PROG_XDP_PASS, &linux_syn[..])];
        cases.extend(frames.iter().map(|(_, f, _)| (PROG_XDP, *f)));
        // Scope: one protected host (all ports); no exempt source. Then the same with one exempt
        // prefix, whose trie lookup every SYN and unknown ACK then pays.
        maps.exempt_del(&"198.18.0.77/32".parse().unwrap()).unwrap();
        let plain = interleaved(&obj, &cases);
        maps.exempt_add(&"198.18.1.0/24".parse().unwrap()).unwrap();
        let exempt = interleaved(&obj, &cases);
        maps.exempt_del(&"198.18.1.0/24".parse().unwrap()).unwrap();
        // Scope with a prefix: looked up in the LPM trie (list and hash hold single addresses).
        maps.scope_add(&"198.18.4.0/24".parse().unwrap(), None).unwrap();
        let trie = interleaved(&obj, &cases);
        maps.scope_del(&"198.18.4.0/24".parse().unwrap(), None).unwrap();
        let n = cases.len();
        let (base, base_hi) = spread(&plain, n);
        println!(
            "BPF_PROG_TEST_RUN, {ROUNDS} rounds of {} single runs per row, rows interleaved; ns per packet",
            RUNS / ROUNDS
        );
        println!("net = a row's median minus the trivial XDP_PASS program's median of the same round;");
        println!("shown: the lowest round and the highest (noise); target: the issue's, on net ns.");
        println!("scope: two protected hosts (scanned list); then with one exempt prefix; then scope in the trie");
        println!(
            "{:<34} {:>8} {:>9} {:>7}   {:>12} {:>10}",
            "frame", "net ns", "highest", "target", "+exempt net", "trie net"
        );
        println!("{:<34} {base:>8.0} {base_hi:>9.0} {:>7}   (the baseline itself, ns)", "trivial XDP_PASS program", "-");
        for (i, (what, _, target)) in frames.iter().enumerate() {
            let t = target.map_or("-".to_owned(), |t| format!("< {t}"));
            let (lo, hi) = spread(&plain, i + 1);
            println!(
                "{what:<34} {lo:>8.0} {hi:>9.0} {t:>7}   {:>12.0} {:>10.0}",
                spread(&exempt, i + 1).0,
                spread(&trie, i + 1).0
            );
        }

        // Watch mode: every SYN a new handshake (distinct clients), and the ACK completing one.
        let mut cfg = maps.config().unwrap();
        cfg.mode = intercept_common::config::Mode::Watch as u32;
        maps.set_config(&cfg).unwrap();
        let client = |i: usize| IpAddr::V4(Ipv4Addr::from(0xc613_0000 + u32::try_from(i).unwrap()));
        let syns: Vec<Vec<u8>> = (0..RUNS).map(|i| tcp_frame(&l, &TcpSegment { seq: 9, ..TcpSegment::new(client(i), s, 40000, 8080, tcp_flags::SYN) })).collect();
        let syns2: Vec<Vec<u8>> = (0..RUNS).map(|i| tcp_frame(&l, &TcpSegment { seq: 9, ..TcpSegment::new(client(RUNS + i), s, 40000, 8080, tcp_flags::SYN) })).collect();
        let acks: Vec<Vec<u8>> = (0..RUNS).map(|i| tcp_frame(&l, &TcpSegment { seq: 10, ack_seq: 1, ..TcpSegment::new(client(RUNS + i), s, 40000, 8080, tcp_flags::ACK) })).collect();
        let (w_syn, b1) = median_ns_seq(&obj, PROG_XDP, None, &syns);
        let (w_ack, b2) = median_ns_seq(&obj, PROG_XDP, Some(&syns2), &acks);
        println!("{:<34} {:>8.0}   (median of {RUNS}; baseline {b1:.0} ns)", "watch: SYN of a new handshake", w_syn - b1);
        println!("{:<34} {:>8.0}   (median of {RUNS}; baseline {b2:.0} ns)", "watch: completing ACK", w_ack - b2);
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}
