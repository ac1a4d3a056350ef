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

fn median_ns(obj: &Loaded, prog: &str, frame: &[u8]) -> f64 {
    let frames = vec![frame.to_vec(); RUNS];
    median_ns_seq(obj, prog, None, &frames)
}

/// Median ns of `prog` on each frame of `measured`, running `setup[i]` (unmeasured) before
/// `measured[i]`.
fn median_ns_seq(obj: &Loaded, prog: &str, setup: Option<&[Vec<u8>]>, measured: &[Vec<u8>]) -> f64 {
    let p: &Xdp = obj
        .ebpf
        .program(prog)
        .expect("program")
        .try_into()
        .expect("XDP");
    let mut out = vec![0u8; 256];
    let mut run = |f: &[u8]| {
        p.test_run(TestRunOptions {
            data_in: Some(f),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .expect("test_run")
        .duration
        .as_nanos()
    };
    let mut d: Vec<u128> = measured
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if let Some(s) = setup {
                run(&s[i]);
            }
            run(f)
        })
        .collect();
    d.sort_unstable();
    d[d.len() / 2] as f64
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

        let base = median_ns(&obj, PROG_XDP_PASS, &linux_syn);
        println!("BPF_PROG_TEST_RUN, median of {RUNS} single runs, ns per packet (net = minus trivial XDP_PASS)");
        println!("{:<34} {:>8} {:>8}", "frame", "ns", "net ns");
        println!("{:<34} {:>8.0} {:>8}", "trivial XDP_PASS program", base, "-");
        let frames = [
            ("SYN, Linux options (XDP_TX)", &linux_syn),
            ("SYN, no options (XDP_TX)", &bare_syn),
            ("valid cookie ACK (handoff)", &valid_ack),
            ("forged ACK (drop)", &forged_ack),
            ("established data segment (pass)", &established),
            ("non-TCP (UDP, pass)", &udp),
        ];
        let rows: Vec<f64> = frames.iter().map(|(_, f)| median_ns(&obj, PROG_XDP, f)).collect();
        // The same frames with no exempt prefix configured (one LPM lookup less).
        maps.exempt_del(&"198.18.0.77/32".parse().unwrap()).unwrap();
        let no_exempt: Vec<f64> = frames.iter().map(|(_, f)| median_ns(&obj, PROG_XDP, f)).collect();
        println!("{:<34} {:>8} {:>8}   {:>22}", "", "", "", "no exempt prefix: net ns");
        for (i, (what, _)) in frames.iter().enumerate() {
            println!("{what:<34} {:>8.0} {:>8.0}   {:>22.0}", rows[i], rows[i] - base, no_exempt[i] - base);
        }

        // Watch mode: every SYN a new handshake (distinct clients), and the ACK completing one.
        let mut cfg = maps.config().unwrap();
        cfg.mode = intercept_common::config::Mode::Watch as u32;
        maps.set_config(&cfg).unwrap();
        let client = |i: usize| IpAddr::V4(Ipv4Addr::from(0xc613_0000 + u32::try_from(i).unwrap()));
        let syns: Vec<Vec<u8>> = (0..RUNS).map(|i| tcp_frame(&l, &TcpSegment { seq: 9, ..TcpSegment::new(client(i), s, 40000, 8080, tcp_flags::SYN) })).collect();
        let syns2: Vec<Vec<u8>> = (0..RUNS).map(|i| tcp_frame(&l, &TcpSegment { seq: 9, ..TcpSegment::new(client(RUNS + i), s, 40000, 8080, tcp_flags::SYN) })).collect();
        let acks: Vec<Vec<u8>> = (0..RUNS).map(|i| tcp_frame(&l, &TcpSegment { seq: 10, ack_seq: 1, ..TcpSegment::new(client(RUNS + i), s, 40000, 8080, tcp_flags::ACK) })).collect();
        let w_syn = median_ns_seq(&obj, PROG_XDP, None, &syns);
        let w_ack = median_ns_seq(&obj, PROG_XDP, Some(&syns2), &acks);
        println!("{:<34} {w_syn:>8.0} {:>8.0}   (intercept: {:.0})", "watch: SYN of a new handshake", w_syn - base, rows[0] - base);
        println!("{:<34} {w_ack:>8.0} {:>8.0}   (intercept valid ACK: {:.0})", "watch: completing ACK", w_ack - base, rows[2] - base);
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}
