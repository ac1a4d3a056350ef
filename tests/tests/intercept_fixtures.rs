//! Intercept mode on the real object through BPF_PROG_TEST_RUN: every branch of the SYN and ACK
//! paths, with the exact output frame (checksums verified here with an independent sum) and the
//! exact counter deltas. Runs inside a fresh network namespace that holds the listener the ACK
//! path looks up.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};

use intercept_common::{
    Counter::{self, *},
    config::{
        Config, FOLLOW_FLIP, FOLLOW_MAGIC, FlowKey, HANDOFF_MAGIC, Mode, Proven, TcpReqAttrs,
        flags, proven_slot, proven_state,
    },
    cookie::{
        CookieOpts, Flow, Key, SLOT_SHIFT, Secrets, SynCookie, SynInput, WSCALE_NONE, make,
        words_of,
    },
    craft::{Link, TcpSegment, linux_syn_options, tcp_frame},
    maps::PROG_XDP,
    parse::{ETH_P_8021AD, ETH_P_8021Q, tcp_flags},
};
use intercept_ctl::{control::Maps, netns::Netns};
use intercept_tests::{
    Loaded, configure_intercept, connect_from, deltas, now_slot, require_root, start_socket_table,
    test_secrets,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const PORT: u16 = 8080;
const NO_LISTENER_PORT: u16 = 8081;
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xc];
const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x5];

fn secrets() -> Secrets {
    test_secrets()
}

fn ips(v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        )
    }
}

fn link(vlans: usize) -> Link {
    let tags = [(ETH_P_8021AD, 100), (ETH_P_8021Q, 200)];
    Link {
        dst: SERVER_MAC,
        src: CLIENT_MAC,
        vlans: tags[2 - vlans..].to_vec(),
    }
}

/// RFC 1071 sum written here on its own (not intercept_common::checksum), to check the data path.
fn ones_complement_ok(pseudo: &[u8], data: &[u8]) -> bool {
    let mut sum: u64 = 0;
    for chunk in pseudo.chunks(2).chain(data.chunks(2)) {
        sum += u64::from(chunk[0]) << 8 | u64::from(*chunk.get(1).unwrap_or(&0));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// Checks the IP and TCP checksums of a frame (no VLAN offset given: `l3` is the IP offset).
fn checksums_ok(frame: &[u8], l3: usize) -> bool {
    if frame[l3] >> 4 == 4 {
        let ihl = usize::from(frame[l3] & 15) * 4;
        let tot = usize::from(u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]));
        let tcp = &frame[l3 + ihl..l3 + tot];
        let mut pseudo = frame[l3 + 12..l3 + 20].to_vec();
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&u16::try_from(tcp.len()).unwrap().to_be_bytes());
        ones_complement_ok(&[], &frame[l3..l3 + ihl]) && ones_complement_ok(&pseudo, tcp)
    } else {
        let plen = usize::from(u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]));
        let tcp = &frame[l3 + 40..l3 + 40 + plen];
        let mut pseudo = frame[l3 + 8..l3 + 40].to_vec();
        pseudo.extend_from_slice(&u32::try_from(tcp.len()).unwrap().to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 6]);
        ones_complement_ok(&pseudo, tcp)
    }
}

struct Env {
    obj: Loaded,
    maps: Maps,
}

impl Env {
    fn new() -> Env {
        let mut obj = Loaded::new(&[PROG_XDP]);
        let maps = configure_intercept(&mut obj);
        Env { obj, maps }
    }

    /// Runs a frame; checks verdict and counter deltas; returns the output.
    fn run(&self, what: &str, frame: &[u8], verdict: u32, counters: &[Counter]) -> Vec<u8> {
        self.obj
            .run_expect(PROG_XDP, what, frame, verdict, counters)
    }
}

fn syn(v6: bool, options: Vec<u8>) -> TcpSegment {
    let (c, s) = ips(v6);
    let mut t = TcpSegment::new(c, s, 40000, PORT, tcp_flags::SYN);
    t.seq = 0x0abc_def0;
    t.options = options;
    t
}

/// The SYN-ACK the data path must produce for `seg` on `link`, given the cookie options it should
/// record and our TSval (read from the output: it is the kernel clock at run time).
fn expected_synack(
    l: &Link,
    seg: &TcpSegment,
    co: CookieOpts,
    cookie: u32,
    tsval: u32,
    ecn: bool,
) -> Vec<u8> {
    let v6 = seg.src.is_ipv6();
    let cfg = Config::default();
    let mut o = Vec::new();
    o.extend_from_slice(&[2, 4]);
    o.extend_from_slice(&(if v6 { cfg.mss_v6 } else { cfg.mss_v4 }).to_be_bytes());
    let client = intercept_common::tcpopt::parse(
        &tcp_frame(&Link::default(), seg)[..],
        if v6 { 54 } else { 34 },
        20 + seg.options.len().div_ceil(4) * 4,
    );
    if client.ts_ok {
        o.extend_from_slice(if client.sack_perm {
            &[4, 2, 8, 10]
        } else {
            &[1, 1, 8, 10]
        });
        o.extend_from_slice(&tsval.to_be_bytes());
        o.extend_from_slice(&client.tsval.to_be_bytes());
    } else if client.sack_perm {
        o.extend_from_slice(&[1, 1, 4, 2]);
    }
    if co.wscale != WSCALE_NONE {
        o.extend_from_slice(&[1, 3, 3, cfg.wscale]);
    }
    let mut r = TcpSegment::new(
        seg.dst,
        seg.src,
        seg.dport,
        seg.sport,
        tcp_flags::SYN | tcp_flags::ACK | if ecn { tcp_flags::ECE } else { 0 },
    );
    r.seq = cookie;
    r.ack_seq = seg.seq.wrapping_add(1);
    r.window = cfg.window;
    r.options = o;
    let rl = Link {
        dst: l.src,
        src: l.dst,
        vlans: l.vlans.clone(),
    };
    tcp_frame(&rl, &r)
}

fn syn_case(env: &Env, what: &str, vlans: usize, seg: &TcpSegment, co: CookieOpts, ecn: bool) {
    let l = link(vlans);
    let frame = tcp_frame(&l, seg);
    let v6 = seg.src.is_ipv6();
    let flow = Flow {
        saddr: words_of(seg.src),
        daddr: words_of(seg.dst),
        sport: seg.sport,
        dport: seg.dport,
    };
    let mut counters = vec![
        Packets,
        Tcp,
        Syn,
        SynProtected,
        SynAckSent,
        if v6 { Ipv6 } else { Ipv4 },
    ];
    if vlans > 0 {
        counters.push(Vlan);
    }
    if !seg.payload.is_empty() {
        counters.push(SynDataIgnored);
    }
    for _ in 0..3 {
        let slot = now_slot();
        let out = env.run(what, &frame, XDP_TX, &counters);
        if now_slot() != slot {
            continue; // crossed a slot boundary while running: the cookie may use either slot
        }
        let l3 = 14 + 4 * vlans;
        let toff = l3 + if v6 { 40 } else { 20 };
        assert!(
            checksums_ok(&out, l3),
            "{what}: IP/TCP checksums of the SYN-ACK"
        );
        let tsval = if out.len() > toff + 32 && out[toff + 26] == 8 {
            u32::from_be_bytes(out[toff + 28..toff + 32].try_into().unwrap())
        } else {
            0
        };
        let ts = !seg.options.is_empty()
            && intercept_common::tcpopt::parse(
                &frame[..],
                toff,
                20 + seg.options.len().div_ceil(4) * 4,
            )
            .ts_ok;
        let co = co.carried(ts);
        let c = make(
            &secrets().keys[0],
            0,
            secrets().ts_offset[0],
            &SynInput {
                flow,
                isn: seg.seq,
                now_ns: u64::from(slot) << SLOT_SHIFT,
                opts: co,
                ts,
            },
        );
        // The TSval's clock bits are the data path's time; its MAC and option bits are the
        // cookie's.
        assert_eq!(
            tsval & 0x3ffff,
            c.tsval & 0x3ffff,
            "{what}: TSval cookie bits"
        );
        let want = expected_synack(&l, seg, co, c.isn, tsval, ecn && ts);
        assert_eq!(out, want, "{what}: SYN-ACK frame");
        return;
    }
    panic!("{what}: crossed a slot boundary three times in a row");
}

fn opts(mss_idx: u8, wscale: u8, sack: bool, ecn: bool) -> CookieOpts {
    CookieOpts {
        mss_idx,
        wscale,
        sack,
        ecn,
    }
}

#[test]
fn syn_path_fixtures() {
    require_root("syn_path_fixtures");
    let ns = Netns::new("fx").expect("netns");
    ns.spawn(|| {
        let mut env = Env::new();
        for v6 in [false, true] {
            for vlans in 0..=2 {
                let seg = syn(v6, linux_syn_options(1460, 0x1234, 7));
                let idx = if v6 { 2 } else { 3 }; // 1460 -> v6 table {1220, 1420, 1440, 8940}: 1440
                syn_case(
                    &env,
                    &format!(
                        "{} SYN, Linux options, {vlans} VLAN",
                        if v6 { "v6" } else { "v4" }
                    ),
                    vlans,
                    &seg,
                    opts(idx, 7, true, false),
                    false,
                );
            }
            syn_case(
                &env,
                "SYN without options",
                0,
                &syn(v6, vec![]),
                opts(0, WSCALE_NONE, false, false),
                false,
            );
        }
        syn_case(
            &env,
            "SYN, MSS + wscale (no SACK, no TS)",
            0,
            &syn(false, vec![2, 4, 5, 0x14, 1, 3, 3, 8]),
            opts(1, 8, false, false),
            false,
        );
        syn_case(
            &env,
            "SYN, SACK only",
            0,
            &syn(false, vec![1, 1, 4, 2]),
            opts(0, WSCALE_NONE, true, false),
            false,
        );
        syn_case(
            &env,
            "SYN, TS only",
            0,
            &syn(false, vec![1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 0]),
            opts(0, WSCALE_NONE, false, false),
            false,
        );
        syn_case(
            &env,
            "SYN, wscale 14 clamp (sent 20)",
            0,
            &syn(false, vec![1, 3, 3, 20]),
            opts(0, 14, false, false),
            false,
        );
        let mut ecn = syn(false, linux_syn_options(1440, 9, 7));
        ecn.flags |= tcp_flags::ECE | tcp_flags::CWR;
        syn_case(&env, "ECN setup SYN", 0, &ecn, opts(2, 7, true, true), true);

        // Data on a SYN is ignored, as the kernel's cookies ignore it: the same SYN-ACK as for
        // the SYN without it (the client sends the data again after the handshake). One byte is
        // what a flood would add to bypass the cookies.
        for (v6, vlans, payload) in [
            (false, 0, &b"x"[..]),
            (false, 0, &b"TFO data"[..]),
            (true, 1, &b"TFO data"[..]),
        ] {
            let mut data = syn(v6, linux_syn_options(1460, 1, 7));
            data.payload = payload.to_vec();
            // MSS 1460 is table entry 3 for IPv4 (1460), 2 for IPv6 (1440).
            let co = opts(if v6 { 2 } else { 3 }, 7, true, false);
            syn_case(
                &env,
                &format!("SYN with {} bytes of data, v6={v6}", payload.len()),
                vlans,
                &data,
                co,
                false,
            );
        }
        // IPv6 between IPv4-mapped addresses of a protected IPv4 host: no such frame is on the
        // wire, and read as a flow it would be the IPv4 one. Not answered.
        let mut mapped = syn(true, linux_syn_options(1460, 1, 7));
        mapped.src = "::ffff:198.18.0.2".parse().unwrap();
        mapped.dst = "::ffff:198.18.0.1".parse().unwrap();
        let f = tcp_frame(&link(0), &mapped);
        assert_eq!(
            env.run(
                "SYN between IPv4-mapped IPv6 addresses",
                &f,
                XDP_PASS,
                &[Packets, Malformed, Passed]
            ),
            f
        );
        // Signed with TCP-MD5 (BGP): only the kernel could sign the reply; dropped.
        let mut md5 = linux_syn_options(1460, 1, 7);
        md5.extend([19, 18]);
        md5.extend([0xaa; 16]);
        env.run(
            "SYN signed with TCP-MD5",
            &tcp_frame(&link(0), &syn(false, md5)),
            XDP_DROP,
            &[Packets, Ipv4, Tcp, Syn, SynProtected, SynSigned, Dropped],
        );
        // A corrupted SYN: dropped, as the kernel would drop it, without costing it an skb.
        let mut bad = tcp_frame(&link(0), &syn(false, linux_syn_options(1460, 1, 7)));
        bad[34 + 17] ^= 1; // TCP checksum
        env.run(
            "SYN with a bad TCP checksum",
            &bad,
            XDP_DROP,
            &[
                Packets,
                Ipv4,
                Tcp,
                Syn,
                SynProtected,
                SynBadChecksum,
                Dropped,
            ],
        );
        // Pass verdicts: the frame leaves unchanged.
        let mut other = syn(false, vec![]);
        other.dst = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9));
        let f = tcp_frame(&link(0), &other);
        assert_eq!(
            env.run(
                "SYN to an unprotected destination",
                &f,
                XDP_PASS,
                &[Packets, Ipv4, Tcp, Syn, Passed]
            ),
            f
        );
        let mut ex = syn(false, vec![]);
        ex.src = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 77));
        let f = tcp_frame(&link(0), &ex);
        assert_eq!(
            env.run(
                "SYN from an exempt source",
                &f,
                XDP_PASS,
                &[Packets, Ipv4, Tcp, Syn, SynProtected, PassExempt, Passed]
            ),
            f
        );
        let full = tcp_frame(&link(0), &syn(false, linux_syn_options(1460, 1, 7)));
        let cut = full[..34 + 30].to_vec();
        assert_eq!(
            env.run(
                "SYN with truncated options",
                &cut,
                XDP_PASS,
                &[Packets, Malformed, Passed]
            ),
            cut
        );
        env.maps.set_mode(Mode::Off).unwrap();
        let f = tcp_frame(&link(0), &syn(false, vec![]));
        assert_eq!(
            env.run(
                "SYN in mode off",
                &f,
                XDP_PASS,
                &[Packets, Ipv4, Tcp, Syn, Passed]
            ),
            f
        );
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// The completing ACK of a handshake whose SYN had Linux options: our cookie back as its
/// acknowledgment number, our TSval as its TSecr (the client's own TSval 0x1234).
fn ack(v6: bool, dport: u16, isn: u32, cookie: SynCookie) -> TcpSegment {
    let (c, s) = ips(v6);
    let mut t = TcpSegment::new(c, s, 40000, dport, tcp_flags::ACK);
    t.seq = isn.wrapping_add(1);
    t.ack_seq = cookie.isn.wrapping_add(1);
    t.options = vec![1, 1, 8, 10, 0, 0, 0x12, 0x34];
    t.options.extend_from_slice(&cookie.tsval.to_be_bytes());
    t
}

/// The cookie (ISN and TSval) of a handshake whose SYN had timestamps, made in `slot`.
fn cookie_for(
    v6: bool,
    dport: u16,
    isn: u32,
    key_idx: usize,
    slot: u32,
    co: CookieOpts,
) -> SynCookie {
    let (c, s) = ips(v6);
    let flow = Flow {
        saddr: words_of(c),
        daddr: words_of(s),
        sport: 40000,
        dport,
    };
    make(
        &secrets().keys[key_idx],
        u32::try_from(key_idx).unwrap(),
        secrets().ts_offset[key_idx],
        &SynInput {
            flow,
            isn,
            now_ns: u64::from(slot) << SLOT_SHIFT,
            opts: co,
            ts: true,
        },
    )
}

/// `c` with the ISN bits of `mask` flipped.
fn flip(c: SynCookie, mask: u32) -> SynCookie {
    SynCookie {
        isn: c.isn ^ mask,
        ..c
    }
}

#[test]
fn ack_path_fixtures() {
    require_root("ack_path_fixtures");
    let ns = Netns::new("fx").expect("netns");
    for a in ["198.18.0.1/32", "198.18.0.2/32"] {
        ns.ip(&["addr", "add", a, "dev", "lo"]).unwrap();
    }
    ns.spawn(|| {
        // The listener the ACK path finds: dual-stack, so IPv4 lookups find it too.
        let l = TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), PORT))
            .expect("listen");
        let (c, s) = ips(false);
        // A connection from before the attachment, and a data segment of it.
        let before = connect_from(c, s, PORT);
        let _before_srv = l.accept().unwrap();
        let data_of = |conn: &std::net::TcpStream| {
            let mut d = TcpSegment::new(
                c,
                s,
                conn.local_addr().unwrap().port(),
                PORT,
                tcp_flags::ACK | tcp_flags::PSH,
            );
            // An acknowledgment number that is no cookie of this flow but carries the current
            // slot bits, so a drop is a MAC failure, never "expired".
            let not_cookie = cookie_for(
                false,
                PORT,
                0x0102_0303,
                0,
                now_slot(),
                opts(3, 7, true, false),
            );
            (d.seq, d.ack_seq) = (0x0102_0304, (not_cookie.isn ^ 0x8000_0000).wrapping_add(1));
            d.payload = vec![0x61; 10];
            tcp_frame(&link(0), &d)
        };
        let mut env = Env::new();
        let co = opts(3, 7, true, false);
        let isn = 0x5555_0000;
        let drop_ = |r: Counter, v6: bool, vl: bool| {
            let mut c = vec![Packets, if v6 { Ipv6 } else { Ipv4 }, Tcp, Ack, r, Dropped];
            if vl {
                c.push(Vlan);
            }
            c
        };
        let established = [Packets, Ipv4, Tcp, Ack, PassEstablished, Passed];
        let looked_up = [
            Packets,
            Ipv4,
            Tcp,
            Ack,
            SocketLookups,
            PassEstablished,
            Passed,
        ];
        // The socket table is not authoritative yet (not seeded, and intercept mode just came
        // into force): ACKs failing the cookie are checked against the kernel's sockets.
        env.run(
            "established, before the table",
            &data_of(&before),
            XDP_PASS,
            &looked_up,
        );
        // Current slot bits, one MAC bit flipped.
        let forged = tcp_frame(
            &link(0),
            &ack(
                false,
                PORT,
                isn,
                flip(cookie_for(false, PORT, isn, 0, now_slot(), co), 0x8000_0000),
            ),
        );
        let mut want = drop_(AckBadMac, false, false);
        want.push(SocketLookups);
        env.run("forged, before the table", &forged, XDP_DROP, &want);
        // Seeded, tracepoint attached, window over: the table answers alone.
        let _track = start_socket_table(&mut env.obj, &mut env.maps);
        env.run(
            "established, seeded from sock_diag",
            &data_of(&before),
            XDP_PASS,
            &established,
        );
        let after = connect_from(c, s, PORT);
        let after_srv = l.accept().unwrap();
        env.run(
            "established after the tracepoint",
            &data_of(&after),
            XDP_PASS,
            &established,
        );
        env.run(
            "forged, authoritative table",
            &forged,
            XDP_DROP,
            &drop_(AckBadMac, false, false),
        );
        // Closed by the client first: the server's socket ends (LAST_ACK, then CLOSE) and the
        // tracepoint removes the flow; a late segment of it belongs to no one.
        let key_of = |f: &[u8]| {
            intercept_common::config::FlowKey::of(&Flow {
                saddr: words_of(c),
                daddr: words_of(s),
                sport: u16::from_be_bytes([f[34], f[35]]),
                dport: PORT,
            })
        };
        let gone = |env: &Env, key: &intercept_common::config::FlowKey| {
            let start = std::time::Instant::now();
            while env.maps.socket_known(key).unwrap() {
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(5),
                    "flow still in the table after close"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        let f = data_of(&after);
        drop(after);
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(after_srv);
        gone(&env, &key_of(&f));
        env.run(
            "segment of a connection the client closed first",
            &f,
            XDP_DROP,
            &drop_(AckBadMac, false, false),
        );
        // Closed by the server first: its socket lives on as a time-wait one, outside the table
        // but in the time-wait map; late data (which it resets) and the peer's FIN (which it
        // acknowledges again) reach it, without asking the kernel's socket table.
        let third = connect_from(c, s, PORT);
        let third_srv = l.accept().unwrap();
        let f = data_of(&third);
        drop(third_srv);
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(third);
        let key = key_of(&f);
        gone(&env, &key);
        let time_wait = [Packets, Ipv4, Tcp, Ack, PassTimeWait, Passed];
        env.run(
            "data on a connection the server closed",
            &f,
            XDP_PASS,
            &time_wait,
        );
        let fin = {
            let mut seg = TcpSegment::new(c, s, key.sport, PORT, tcp_flags::FIN | tcp_flags::ACK);
            // The data segment's numbers (its acknowledgment field: bytes 42..46).
            (seg.seq, seg.ack_seq) = (
                0x0102_0304,
                u32::from_be_bytes(f[42..46].try_into().unwrap()),
            );
            tcp_frame(&link(0), &seg)
        };
        env.run("FIN to a time-wait socket", &fin, XDP_PASS, &time_wait);
        for (v6, vlans) in [(false, 0), (true, 2)] {
            for (what, age) in [("valid cookie", 0), ("cookie from the previous slot", 1)] {
                let slot = now_slot();
                let cookie = cookie_for(v6, PORT, isn, 0, slot - age, co);
                let seg = ack(v6, PORT, isn, cookie);
                let f = tcp_frame(&link(vlans), &seg);
                let mut c = vec![
                    Packets,
                    if v6 { Ipv6 } else { Ipv4 },
                    Tcp,
                    Ack,
                    AckValid,
                    Passed,
                ];
                if vlans > 0 {
                    c.push(Vlan);
                }
                let out = env.run(&format!("{what}, v6={v6}"), &f, XDP_PASS, &c);
                // Output = 24 bytes of metadata for the TC program, then the untouched frame.
                assert_eq!(&out[24..], &f[..], "{what}: frame after the metadata");
                let magic = u32::from_ne_bytes(out[0..4].try_into().unwrap());
                assert_eq!(magic, HANDOFF_MAGIC);
                // SAFETY: 20 bytes of plain integers, read unaligned.
                let a: TcpReqAttrs =
                    unsafe { std::ptr::read_unaligned(out[4..24].as_ptr().cast()) };
                let want = TcpReqAttrs {
                    rcv_tsval: 0x1234,
                    rcv_tsecr: cookie.tsval,
                    mss: if v6 { 8940 } else { 1460 },
                    rcv_wscale: 7,
                    snd_wscale: 7,
                    ecn_ok: 0,
                    wscale_ok: 1,
                    sack_ok: 1,
                    tstamp_ok: 1,
                    usec_ts_ok: 0,
                    reserved: [0; 3],
                };
                assert_eq!(a, want, "{what}: handoff attributes");
            }
            let slot = now_slot();
            let f = tcp_frame(
                &link(vlans),
                &ack(v6, PORT, isn, cookie_for(v6, PORT, isn, 0, slot - 2, co)),
            );
            assert_eq!(
                env.run(
                    "cookie three slots old (its parity says the previous slot: the MAC fails)",
                    &f,
                    XDP_DROP,
                    &drop_(AckBadMac, v6, vlans > 0)
                )
                .len(),
                f.len()
            );
        }
        // A handshake without timestamps: the cookie alone carries it (24 MAC bits, options
        // rounded as the cookie carries them); with a TSecr added it is another layout, refused;
        // a timestamps cookie with one TSecr MAC bit flipped is refused.
        let isn0 = 0x4444_0000;
        let (c4, s4) = ips(false);
        let plain = make(
            &secrets().keys[0],
            0,
            secrets().ts_offset[0],
            &SynInput {
                flow: Flow {
                    saddr: words_of(c4),
                    daddr: words_of(s4),
                    sport: 40000,
                    dport: PORT,
                },
                isn: isn0,
                now_ns: u64::from(now_slot()) << SLOT_SHIFT,
                opts: co,
                ts: false,
            },
        );
        let mut a0 = ack(false, PORT, isn0, plain);
        a0.options.clear();
        let out = env.run(
            "valid cookie without timestamps",
            &tcp_frame(&link(0), &a0),
            XDP_PASS,
            &[Packets, Ipv4, Tcp, Ack, AckValid, Passed],
        );
        // SAFETY: 20 bytes of plain integers, read unaligned.
        let a: TcpReqAttrs = unsafe { std::ptr::read_unaligned(out[4..24].as_ptr().cast()) };
        assert_eq!(
            (a.tstamp_ok, a.sack_ok, a.snd_wscale, a.ecn_ok, a.mss),
            (0, 1, 7, 0, 1460),
            "without timestamps: {a:?}"
        );
        env.run(
            "cookie without timestamps presented with a TSecr",
            &tcp_frame(&link(0), &ack(false, PORT, isn0, plain)),
            XDP_DROP,
            &drop_(AckBadMac, false, false),
        );
        let tsc = cookie_for(false, PORT, isn0 ^ 4, 0, now_slot(), co);
        env.run(
            "timestamps cookie with a TSecr MAC bit flipped",
            &tcp_frame(
                &link(0),
                &ack(
                    false,
                    PORT,
                    isn0 ^ 4,
                    SynCookie {
                        tsval: tsc.tsval ^ 0x40,
                        ..tsc
                    },
                ),
            ),
            XDP_DROP,
            &drop_(AckBadMac, false, false),
        );
        // Forged: a cookie of the current slot with a wrong MAC.
        let slot = now_slot();
        let good = cookie_for(false, PORT, isn, 0, slot, co);
        let f = tcp_frame(&link(0), &ack(false, PORT, isn, flip(good, 0x8000_0000)));
        env.run(
            "forged cookie (MAC bit flipped)",
            &f,
            XDP_DROP,
            &drop_(AckBadMac, false, false),
        );
        let f = tcp_frame(&link(0), &ack(false, PORT, isn ^ 1, good));
        env.run(
            "cookie of another ISN",
            &f,
            XDP_DROP,
            &drop_(AckBadMac, false, false),
        );
        // Rotation: one rotation keeps the old cookie valid, a second one retires it.
        let mut s = secrets();
        s.keys[1] = Key { k: [7, 8] };
        s.current = 1;
        env.maps.set_secrets(&s).unwrap();
        let f = tcp_frame(
            &link(0),
            &ack(
                false,
                PORT,
                isn,
                cookie_for(false, PORT, isn, 0, now_slot(), co),
            ),
        );
        env.run(
            "old-secret cookie after one rotation",
            &f,
            XDP_PASS,
            &[Packets, Ipv4, Tcp, Ack, AckValid, Passed],
        );
        s.keys[0] = Key { k: [9, 10] };
        s.current = 0;
        env.maps.set_secrets(&s).unwrap();
        env.run(
            "old-secret cookie after two rotations",
            &f,
            XDP_DROP,
            &drop_(AckBadMac, false, false),
        );
        env.maps.set_secrets(&secrets()).unwrap();
        // A valid cookie to a port without listener: XDP cannot know (it never asks the kernel
        // about a valid cookie); TC finds no listener, counts ack_no_listener, and the kernel
        // answers with a RST.
        let f = tcp_frame(
            &link(0),
            &ack(
                false,
                NO_LISTENER_PORT,
                isn,
                cookie_for(false, NO_LISTENER_PORT, isn, 0, now_slot(), co),
            ),
        );
        env.run(
            "valid ACK to a protected port without listener",
            &f,
            XDP_PASS,
            &[Packets, Ipv4, Tcp, Ack, AckValid, Passed],
        );
        // A SYN with data is answered like any other: no request socket of the kernel's, so the
        // table stays authoritative, and one such SYN a minute cannot make every forged ACK pay
        // for a kernel lookup.
        let mut data = syn(false, linux_syn_options(1460, 1, 7));
        data.payload = b"TFO data".to_vec();
        env.run(
            "SYN with payload",
            &tcp_frame(&link(0), &data),
            XDP_TX,
            &[
                Packets,
                Ipv4,
                Tcp,
                Syn,
                SynProtected,
                SynDataIgnored,
                SynAckSent,
            ],
        );
        let now = intercept_ctl::watchctl::monotonic_ns();
        assert!(env.maps.socket_table().unwrap().authoritative(now));
        env.run(
            "forged, after a SYN with data",
            &forged,
            XDP_DROP,
            &drop_(AckBadMac, false, false),
        );
        // With no secret loaded, SYNs go to the kernel (fail open), which may answer them with a
        // request socket the table does not see: until such a socket could have expired, ACKs
        // failing the cookie are checked against the kernel's sockets again. The operator, not a
        // packet, decides that.
        let zero = Secrets {
            keys: [Key { k: [0, 0] }, Key { k: [0, 0] }],
            current: 0,
            generation: 2,
            ts_offset: [0, 0],
        };
        env.maps.set_secrets(&zero).unwrap();
        env.run(
            "SYN with no secret loaded",
            &tcp_frame(&link(0), &syn(false, linux_syn_options(1460, 1, 7))),
            XDP_PASS,
            &[Packets, Ipv4, Tcp, Syn, SynProtected, PassNoSecret, Passed],
        );
        // A cookie made with the all-zero key (anyone can make one): never valid, whatever the
        // attachment's state (before, a crash between pinning the link and writing the secrets
        // left an attachment that accepted these).
        let (c, s) = ips(false);
        let zero_cookie = make(
            &zero.keys[0],
            0,
            0,
            &SynInput {
                flow: Flow {
                    saddr: words_of(c),
                    daddr: words_of(s),
                    sport: 40000,
                    dport: PORT,
                },
                isn,
                now_ns: u64::from(now_slot()) << SLOT_SHIFT,
                opts: co,
                ts: true,
            },
        );
        let mut want = drop_(AckBadMac, false, false);
        want.push(SocketLookups);
        env.run(
            "ACK with a cookie of the all-zero key",
            &tcp_frame(&link(0), &ack(false, PORT, isn, zero_cookie)),
            XDP_DROP,
            &want,
        );
        env.maps.set_secrets(&secrets()).unwrap();
        let now = intercept_ctl::watchctl::monotonic_ns();
        let t = env.maps.socket_table().unwrap();
        assert!(t.lookup_until_ns > now + 60_000_000_000, "{t:?}");
        assert!(!t.authoritative(now));
        let mut want = drop_(AckBadMac, false, false);
        want.push(SocketLookups);
        env.run(
            "forged, after a SYN left to the kernel",
            &forged,
            XDP_DROP,
            &want,
        );
        // Unprotected destination: passed untouched.
        let mut seg = ack(false, PORT, isn, SynCookie { isn: 0, tsval: 0 });
        seg.dst = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9));
        let f = tcp_frame(&link(0), &seg);
        assert_eq!(
            env.run(
                "ACK to an unprotected destination",
                &f,
                XDP_PASS,
                &[Packets, Ipv4, Tcp, Ack, Passed]
            ),
            f
        );
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// Moves the handoff in flight of `key` back by `ns` (as if it had left XDP that long ago).
fn age_handoff(obj: &mut Loaded, key: &FlowKey, ns: u64) -> Proven {
    let mut a: aya::maps::Array<&mut aya::maps::MapData, Proven> = aya::maps::Array::try_from(
        obj.ebpf
            .map_mut(intercept_common::maps::PROVEN)
            .expect("PROVEN"),
    )
    .expect("PROVEN is an array");
    let i = proven_slot(key);
    let p = a.get(&i, 0).expect("slot");
    assert_eq!(p.key, *key, "the handoff is recorded in its flow's slot");
    a.set(
        i,
        &Proven {
            at_ns: p.at_ns - ns,
            ..p
        },
        0,
    )
    .unwrap();
    p
}

/// The metadata XDP left in front of `frame` in `out`: its magic.
fn meta_magic(out: &[u8], frame: &[u8]) -> u32 {
    assert_eq!(out.len(), frame.len() + 24, "24 bytes of metadata");
    assert_eq!(&out[24..], frame, "the frame itself untouched");
    u32::from_ne_bytes(out[0..4].try_into().unwrap())
}

/// Only the first segment of a proven handshake carries the handoff to TC; the client's segments
/// that follow it within the window (a duplicate ACK, its request in one or more segments, its
/// FIN) pass bare to the connection the first one creates. Nothing else passes: a pure ACK, a
/// wrong acknowledgment number, another flow, or anything after the window.
#[test]
fn segments_following_a_handoff_pass_without_a_second_one() {
    require_root("segments_following_a_handoff_pass_without_a_second_one");
    let ns = Netns::new("fx").expect("netns");
    ns.spawn(|| {
        let mut env = Env::new();
        let _track = start_socket_table(&mut env.obj, &mut env.maps);
        let co = opts(3, 7, true, false);
        for (v6, isn) in [(false, 0x6666_0000_u32), (true, 0x7777_0000)] {
            let l3 = if v6 { Ipv6 } else { Ipv4 };
            let cookie = cookie_for(v6, PORT, isn, 0, now_slot(), co);
            let hs = ack(v6, PORT, isn, cookie);
            let seg = |flags: u8, offset: u32, payload: usize| {
                let mut t = hs.clone();
                t.flags = flags;
                t.seq = t.seq.wrapping_add(offset);
                t.payload = vec![0x72; payload];
                t
            };
            let lead = [Packets, l3, Tcp, Ack, AckValid, Passed];
            let follows = [Packets, l3, Tcp, Ack, PassProven, Passed];
            let dropped = [Packets, l3, Tcp, Ack, AckBadMac, Dropped];
            let f = tcp_frame(&link(0), &hs);
            let out = env.run("handshake ACK", &f, XDP_PASS, &lead);
            assert_eq!(meta_magic(&out, &f), HANDOFF_MAGIC);
            let psh = tcp_flags::ACK | tcp_flags::PSH;
            for (what, t) in [
                ("duplicate of the handshake ACK", seg(tcp_flags::ACK, 0, 0)),
                ("request, first segment", seg(psh, 0, 6)),
                ("request, second segment", seg(psh, 6, 5)),
                (
                    "request, last segment with FIN",
                    seg(psh | tcp_flags::FIN, 11, 5),
                ),
                ("FIN alone", seg(tcp_flags::ACK | tcp_flags::FIN, 16, 0)),
            ] {
                let f = tcp_frame(&link(0), &t);
                let out = env.run(&format!("{what}, v6={v6}"), &f, XDP_PASS, &follows);
                assert_eq!(meta_magic(&out, &f), FOLLOW_MAGIC, "{what}: marked for TC");
            }
            let mut wrong_ack = seg(psh, 6, 5);
            wrong_ack.ack_seq ^= 1;
            let mut other_flow = seg(psh, 6, 5);
            other_flow.sport += 1;
            for (what, t) in [
                (
                    "pure ACK past the first sequence number",
                    seg(tcp_flags::ACK, 6, 0),
                ),
                ("request segment acknowledging another number", wrong_ack),
                ("request segment of another flow", other_flow),
            ] {
                env.run(
                    &format!("{what}, v6={v6}"),
                    &tcp_frame(&link(0), &t),
                    XDP_DROP,
                    &dropped,
                );
            }
            // The window over (as if the handoff were 60 ms old): a retransmission of the first
            // segment leads a handoff of its own, a later segment is no follower any more.
            let key = FlowKey::of(&Flow {
                saddr: words_of(hs.src),
                daddr: words_of(hs.dst),
                sport: hs.sport,
                dport: PORT,
            });
            let old = age_handoff(&mut env.obj, &key, 60_000_000);
            assert_eq!(
                (old.client_next, old.server_next, old.state),
                (
                    isn.wrapping_add(1),
                    cookie.isn.wrapping_add(1),
                    proven_state::PENDING
                )
            );
            let f = tcp_frame(&link(0), &seg(psh, 0, 16));
            let out = env.run(
                "retransmitted request after the window",
                &f,
                XDP_PASS,
                &lead,
            );
            assert_eq!(meta_magic(&out, &f), HANDOFF_MAGIC);
            let _ = age_handoff(&mut env.obj, &key, 60_000_000);
            env.run(
                "later segment after the window",
                &tcp_frame(&link(0), &seg(psh, 16, 5)),
                XDP_DROP,
                &dropped,
            );
            // Another handshake of the same 4-tuple (a new ISN) leads at once.
            let isn2 = isn ^ 0x0100_0000;
            let hs2 = ack(
                v6,
                PORT,
                isn2,
                cookie_for(v6, PORT, isn2, 0, now_slot(), co),
            );
            let f = tcp_frame(&link(0), &hs2);
            assert_eq!(
                meta_magic(
                    &env.run("a newer handshake of the same flow", &f, XDP_PASS, &lead),
                    &f
                ),
                HANDOFF_MAGIC
            );
        }
        // Watch mode in the grace period after intercept: the same rule for the handshakes
        // intercept mode answered, and everything else passes (watch mode's kernel decides).
        let now = intercept_ctl::watchctl::monotonic_ns();
        env.maps
            .set_config(&Config {
                mode: Mode::Watch as u32,
                cookie_grace_until_ns: now + 10_000_000_000,
                ..env.maps.config().unwrap()
            })
            .unwrap();
        let isn = 0x8888_0000;
        let hs = ack(
            false,
            PORT,
            isn,
            cookie_for(false, PORT, isn, 0, now_slot(), co),
        );
        let out = env.run(
            "grace: handshake ACK",
            &tcp_frame(&link(0), &hs),
            XDP_PASS,
            &[Packets, Ipv4, Tcp, Ack, AckValid, Passed],
        );
        assert_eq!(meta_magic(&out, &tcp_frame(&link(0), &hs)), HANDOFF_MAGIC);
        let mut req = hs.clone();
        req.flags |= tcp_flags::PSH;
        req.payload = vec![0x72; 16];
        env.run(
            "grace: request in the same poll",
            &tcp_frame(&link(0), &req),
            XDP_PASS,
            &[Packets, Ipv4, Tcp, Ack, PassProven, Passed],
        );
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// A proven handshake's ACK arriving with another program's metadata (a frame redirected here
/// keeps it): the handoff replaces it, so it never depends on the room the kernel leaves for
/// metadata, and carries the attachment's own random tag (before, a fixed magic anyone could
/// write in front of a frame).
#[test]
fn handoff_replaces_foreign_metadata_with_the_attachment_tag() {
    require_root("handoff_replaces_foreign_metadata_with_the_attachment_tag");
    let ns = Netns::new("fx").expect("netns");
    ns.spawn(|| {
        let mut env = Env::new();
        let _track = start_socket_table(&mut env.obj, &mut env.maps);
        let tag = 0x1f2e_3d4c;
        env.maps
            .update_config(|c| c.meta_tag = tag)
            .expect("set the tag");
        let co = opts(3, 7, true, false);
        let isn = 0x4242_0000;
        let hs = ack(
            false,
            PORT,
            isn,
            cookie_for(false, PORT, isn, 0, now_slot(), co),
        );
        let f = tcp_frame(&link(0), &hs);
        let before = env.obj.counters();
        let (verdict, out) = env
            .obj
            .run_with_meta(PROG_XDP, &[0xa5; 16], &f)
            .expect("test_run");
        assert_eq!(
            verdict,
            XDP_PASS,
            "{:?}",
            deltas(&before, &env.obj.counters())
        );
        assert_eq!(
            deltas(&before, &env.obj.counters()),
            vec![
                (Packets, 1),
                (Ipv4, 1),
                (Tcp, 1),
                (Ack, 1),
                (Passed, 1),
                (AckValid, 1)
            ]
        );
        assert_eq!(
            meta_magic(&out, &f),
            tag,
            "the attachment's tag, not a fixed one"
        );
        // A segment following it carries the follower tag.
        let mut req = hs.clone();
        req.flags |= tcp_flags::PSH;
        req.payload = vec![0x72; 16];
        let r = tcp_frame(&link(0), &req);
        let (verdict, out) = env
            .obj
            .run_with_meta(PROG_XDP, &[0xa5; 8], &r)
            .expect("test_run");
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(meta_magic(&out, &r), tag ^ FOLLOW_FLIP);
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// The three ways the data path decides scope (a scanned list of up to 8 addresses, an
/// exact-match hash of single addresses, the LPM trie) and the two for exempt sources (list,
/// trie) agree: each configuration protects exactly what it says, checked on real SYNs.
#[test]
fn scope_and_exempt_lookups_agree() {
    require_root("scope_and_exempt_lookups_agree");
    let ns = Netns::new("fx").expect("netns");
    ns.spawn(|| {
        let mut env = Env::new();
        let (c, _) = ips(false);
        let syn_to = |dst: Ipv4Addr, port: u16| {
            let mut t = TcpSegment::new(c, IpAddr::V4(dst), 40000, port, tcp_flags::SYN);
            t.seq = 7;
            tcp_frame(&link(0), &t)
        };
        let answered = [Packets, Ipv4, Tcp, Syn, SynProtected, SynAckSent];
        let passed = [Packets, Ipv4, Tcp, Syn, Passed];
        let exempt = [Packets, Ipv4, Tcp, Syn, SynProtected, PassExempt, Passed];
        let check = |env: &Env, how: &str| {
            let cfg = env.maps.config().unwrap();
            assert_eq!(flags::scope_lookup(cfg.flags), how, "scope lookup in use");
            let host = Ipv4Addr::new(198, 18, 0, 1);
            env.run(
                &format!("{how}: protected host"),
                &syn_to(host, PORT),
                XDP_TX,
                &answered,
            );
            env.run(
                &format!("{how}: other host"),
                &syn_to(Ipv4Addr::new(198, 18, 0, 99), PORT),
                XDP_PASS,
                &passed,
            );
            env.run(
                &format!("{how}: port-specific entry, its port"),
                &syn_to(Ipv4Addr::new(198, 18, 0, 50), 443),
                XDP_TX,
                &answered,
            );
            env.run(
                &format!("{how}: port-specific entry, other port"),
                &syn_to(Ipv4Addr::new(198, 18, 0, 50), 444),
                XDP_PASS,
                &passed,
            );
        };
        env.maps
            .scope_add(&"198.18.0.50/32".parse().unwrap(), Some(&[443]))
            .unwrap();
        check(&env, "list");
        for i in 0..8 {
            env.maps
                .scope_add(&format!("198.18.2.{i}/32").parse().unwrap(), None)
                .unwrap();
        }
        check(&env, "hash");
        env.maps
            .scope_add(&"198.18.3.0/24".parse().unwrap(), None)
            .unwrap();
        check(&env, "trie");
        env.run(
            "trie: inside a protected prefix",
            &syn_to(Ipv4Addr::new(198, 18, 3, 77), 1),
            XDP_TX,
            &answered,
        );
        // Exempt sources: up to 8 prefixes scanned, more in the trie; both exempt the client.
        let host = Ipv4Addr::new(198, 18, 0, 1);
        env.maps
            .exempt_add(&"198.18.0.0/30".parse().unwrap())
            .unwrap();
        let exempt_lookup = |env: &Env| flags::exempt_lookup(env.maps.config().unwrap().flags);
        assert_eq!(exempt_lookup(&env), "list");
        env.run(
            "exempt list: client inside",
            &syn_to(host, PORT),
            XDP_PASS,
            &exempt,
        );
        for i in 0..8 {
            env.maps
                .exempt_add(&format!("2001:db8:{i}::/48").parse().unwrap())
                .unwrap();
        }
        assert_eq!(exempt_lookup(&env), "trie");
        env.run(
            "exempt trie: client inside",
            &syn_to(host, PORT),
            XDP_PASS,
            &exempt,
        );
        env.maps
            .exempt_del(&"198.18.0.0/30".parse().unwrap())
            .unwrap();
        env.maps
            .exempt_del(&"198.18.0.77/32".parse().unwrap())
            .unwrap();
        env.run(
            "exempt trie: client outside",
            &syn_to(host, PORT),
            XDP_TX,
            &answered,
        );
        for i in 0..8 {
            env.maps
                .exempt_del(&format!("2001:db8:{i}::/48").parse().unwrap())
                .unwrap();
        }
        env.maps
            .exempt_add(&"198.18.0.4/30".parse().unwrap())
            .unwrap();
        env.run(
            "exempt list: client outside",
            &syn_to(host, PORT),
            XDP_TX,
            &answered,
        );
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}
