//! The gateway's data path on real packets (BPF_PROG_TEST_RUN of the real `xdp_gateway`): a
//! client's handshake answered with a cookie, its ACK turned into the SYN to the server, its
//! early data held and replayed in place of the server's SYN-ACK, and every number of the
//! splice translated both ways with checksums that verify. The server's frames arrive on an
//! interface marked server-facing (`GW_ROLE`).
use std::net::IpAddr;

use aya::{
    maps::{HashMap, MapData},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use intercept_common::{
    Counter,
    checksum::{pseudo_v4, pseudo_v6, verifies},
    config::FlowKey,
    cookie::Flow,
    craft::{Link, TcpSegment, linux_syn_options, tcp_frame},
    maps::{GW_ROLE, PROG_GATEWAY, SPLICE},
    parse::{Dissected, L3, L4, Tcp, dissect, tcp_flags},
    splice::{OPEN, ROLE_SERVER, SYN_SENT, Splice},
    tcpopt,
};
use intercept_tests::{Loaded, configure_intercept, deltas, require_root};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// Ingress index that marks a frame as the server's in [`Gw::run`] (replaced by the veth
/// device's real index).
const SERVER_SIDE: u32 = u32::MAX;

struct Gw {
    obj: Loaded,
    /// The configuration maps (taken out of the object by `configure_intercept`).
    maps: intercept_ctl::control::Maps,
    /// The server-facing device of the test's namespace: a test run needs a real device for an
    /// ingress index (without one, the kernel runs it as arriving on loopback, which has no
    /// role: a client's side).
    server_if: u32,
}

/// Runs `f` on a thread in a new namespace holding a veth device, the gateway's
/// server-facing interface there.
fn in_lab(f: impl FnOnce(Gw) + Send + 'static) {
    let ns = intercept_ctl::netns::Netns::new("gwp").expect("namespace");
    ns.ip(&[
        "link", "add", "gws0", "type", "veth", "peer", "name", "gws1",
    ])
    .expect("dummy");
    ns.ip(&["link", "set", "gws0", "up"]).expect("up");
    let shown = ns.ip(&["-o", "link", "show", "gws0"]).expect("link");
    let server_if: u32 = shown
        .split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .expect("ifindex");
    let r = ns.spawn(move || f(Gw::new(server_if))).join();
    drop(ns);
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}

impl Gw {
    fn new(server_if: u32) -> Gw {
        let mut obj = Loaded::new(&[PROG_GATEWAY]);
        intercept_ctl::loader::load_gateway_stages(&mut obj.ebpf).expect("gateway stages");
        let maps = configure_intercept(&mut obj);
        let mut roles: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(obj.ebpf.map_mut(GW_ROLE).expect("GW_ROLE")).expect("hash");
        roles.insert(&server_if, &ROLE_SERVER, 0).expect("role");
        Gw {
            obj,
            maps,
            server_if,
        }
    }

    /// Runs the program on `frame` arriving on `ingress` (0: a client-facing interface).
    fn run(&self, frame: &[u8], ingress: u32) -> (u32, Vec<u8>) {
        let ingress = if ingress == SERVER_SIDE {
            self.server_if
        } else {
            ingress
        };
        let p: &Xdp = self
            .obj
            .ebpf
            .program(PROG_GATEWAY)
            .expect("program")
            .try_into()
            .expect("XDP");
        let md: [u32; 6] = [0, u32::try_from(frame.len()).unwrap(), 0, ingress, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = vec![0u8; frame.len() + 2048];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: (ingress != 0).then_some(&ctx[..]),
                ..TestRunOptions::default()
            })
            .expect("test run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn splice(&self, flow: &Flow) -> Option<Splice> {
        let m: HashMap<&MapData, FlowKey, Splice> =
            HashMap::try_from(self.obj.ebpf.map(SPLICE).expect("SPLICE")).expect("hash");
        m.get(&FlowKey::of(flow), 0).ok()
    }

    /// A client's cookie handshake (Linux's SYN options, ISN `isn`, then the ACK with
    /// timestamps) from `client`:`sport` to `server`:`dport`: the verdict on the ACK, the frame
    /// it made, and our SYN-ACK (its ISN is our cookie, its TSval ours).
    fn handshake(
        &self,
        client: IpAddr,
        server: IpAddr,
        sport: u16,
        dport: u16,
        isn: u32,
    ) -> (u32, Seg, Seg) {
        let mut syn = seg(client, server, sport, dport, tcp_flags::SYN, isn, 0);
        syn.options = linux_syn_options(1460, 7000, 7);
        let (v, out) = self.run(&frame(&syn), 0);
        assert_eq!(v, XDP_TX, "SYN answered");
        let sa = parse(&out);
        let mut ack = seg(
            client,
            server,
            sport,
            dport,
            tcp_flags::ACK,
            isn + 1,
            sa.tcp.seq.wrapping_add(1),
        );
        ack.options = ts(7001, sa.opts.tsval);
        let (v, out) = self.run(&frame(&ack), 0);
        (v, parse(&out), sa)
    }
}

/// A parsed output frame.
struct Seg {
    tcp: Tcp,
    v6: bool,
    ttl: u8,
    src: IpAddr,
    dst: IpAddr,
    opts: tcpopt::TcpOptions,
    payload: Vec<u8>,
    sack: Vec<u32>,
}

fn parse(f: &[u8]) -> Seg {
    let Ok(Dissected::Ip(ip)) = dissect(f) else {
        panic!("not IP: {f:02x?}")
    };
    let L4::Tcp(tcp) = ip.l4 else {
        panic!("not TCP")
    };
    let v6 = matches!(ip.l3, L3::V6 { .. });
    let o = ip.l3_off;
    let (src, dst, ttl) = if v6 {
        let s: [u8; 16] = f[o + 8..o + 24].try_into().unwrap();
        let d: [u8; 16] = f[o + 24..o + 40].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d), f[o + 7])
    } else {
        assert!(verifies(0, &f[o..o + 20]), "IPv4 header checksum");
        let s: [u8; 4] = f[o + 12..o + 16].try_into().unwrap();
        let d: [u8; 4] = f[o + 16..o + 20].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d), f[o + 8])
    };
    let seg = &f[tcp.off..tcp.off + tcp.hdr_len + tcp.payload_len];
    let pseudo = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo_v4(s.octets(), d.octets(), 6, u16::try_from(seg.len()).unwrap())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => pseudo_v6(
            &s.octets(),
            &d.octets(),
            6,
            u32::try_from(seg.len()).unwrap(),
        ),
        _ => unreachable!(),
    };
    assert!(verifies(pseudo, seg), "TCP checksum of {seg:02x?}");
    let opts = tcpopt::parse(f, tcp.off, tcp.hdr_len);
    // SACK blocks, by hand.
    let mut sack = Vec::new();
    let mut i = 20;
    while i < tcp.hdr_len {
        match seg[i] {
            0 => break,
            1 => i += 1,
            k => {
                let l = usize::from(seg[i + 1]);
                if k == 5 {
                    for b in (i + 2..i + l).step_by(4) {
                        sack.push(u32::from_be_bytes(seg[b..b + 4].try_into().unwrap()));
                    }
                }
                i += l;
            }
        }
    }
    Seg {
        tcp,
        v6,
        ttl,
        src,
        dst,
        opts,
        payload: seg[tcp.hdr_len..].to_vec(),
        sack,
    }
}

fn ts(tsval: u32, tsecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&tsecr.to_be_bytes());
    o
}

fn seg(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
) -> TcpSegment {
    TcpSegment {
        seq,
        ack_seq: ack,
        ..TcpSegment::new(src, dst, sport, dport, flags)
    }
}

fn frame(s: &TcpSegment) -> Vec<u8> {
    tcp_frame(&Link::default(), s)
}

/// One client's whole splice, for a family: the cookie handshake, the SYN to the server, the
/// held request replayed as the server's handshake ACK, and the numbers of both directions.
fn splice_one(gw: &Gw, client: IpAddr, server: IpAddr, sport: u16) {
    let c_isn = 0xffff_ff00_u32;
    let mut syn = seg(client, server, sport, 80, tcp_flags::SYN, c_isn, 0);
    syn.options = linux_syn_options(1460, 5000, 7);
    let before = gw.obj.counters();
    let (v, out) = gw.run(&frame(&syn), 0);
    assert_eq!(
        v,
        XDP_TX,
        "the SYN is answered: {:?}",
        deltas(&before, &gw.obj.counters())
    );
    let sa = parse(&out);
    assert_eq!(sa.tcp.flags, tcp_flags::SYN | tcp_flags::ACK);
    let (k, our_ts) = (sa.tcp.seq, sa.opts.tsval);

    let before = gw.obj.counters();
    let mut ack = seg(
        client,
        server,
        sport,
        80,
        tcp_flags::ACK,
        c_isn + 1,
        k.wrapping_add(1),
    );
    ack.options = ts(5001, our_ts);
    ack.window = 502;
    let (v, out) = gw.run(&frame(&ack), 0);
    assert_eq!(
        v, XDP_PASS,
        "the SYN to the server goes to the kernel to forward here"
    );
    let s = parse(&out);
    assert_eq!((s.src, s.dst, s.ttl), (client, server, 64));
    assert_eq!(
        (s.tcp.flags, s.tcp.seq, s.tcp.ack_seq),
        (tcp_flags::SYN, c_isn, 0)
    );
    assert!(
        s.opts.mss > 1000 && s.opts.mss <= 1460,
        "MSS {}",
        s.opts.mss
    );
    assert_eq!(
        (s.opts.wscale, s.opts.sack_perm, s.opts.tsval, s.opts.tsecr),
        (7, true, 5001, 0)
    );
    let d = deltas(&before, &gw.obj.counters());
    assert!(
        d.contains(&(Counter::AckValid, 1)) && d.contains(&(Counter::GwSynSent, 1)),
        "{d:?}"
    );
    let flow = Flow {
        saddr: intercept_common::cookie::words_of(client),
        daddr: intercept_common::cookie::words_of(server),
        sport,
        dport: 80,
    };
    assert_eq!(gw.splice(&flow).expect("splice").state, SYN_SENT);

    // The request, before the server answered: held.
    let mut req = seg(
        client,
        server,
        sport,
        80,
        tcp_flags::ACK | tcp_flags::PSH,
        c_isn + 1,
        k.wrapping_add(1),
    );
    req.options = ts(5002, our_ts);
    req.payload = b"GET / HTTP/1.0\r\n\r\n".to_vec();
    let before = gw.obj.counters();
    let (v, _) = gw.run(&frame(&req), 0);
    assert_eq!(v, XDP_DROP, "held");
    assert!(deltas(&before, &gw.obj.counters()).contains(&(Counter::GwHeld, 1)));

    // The server's SYN-ACK comes back as the held request, to the server.
    let s_isn = 0x7000_0000_u32;
    let mut sa = seg(
        server,
        client,
        80,
        sport,
        tcp_flags::SYN | tcp_flags::ACK,
        s_isn,
        c_isn + 1,
    );
    let mut o = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
    o.extend_from_slice(&9000u32.to_be_bytes());
    o.extend_from_slice(&5001u32.to_be_bytes());
    o.extend_from_slice(&[1, 3, 3, 9]);
    sa.options = o;
    let before = gw.obj.counters();
    let (v, out) = gw.run(&frame(&sa), SERVER_SIDE);
    assert_eq!(v, XDP_TX, "the SYN-ACK goes back to the server");
    let d = deltas(&before, &gw.obj.counters());
    assert!(
        d.contains(&(Counter::GwOpened, 1)) && d.contains(&(Counter::GwHeldReplayed, 1)),
        "{d:?}"
    );
    let r = parse(&out);
    assert_eq!(
        &out[..6],
        &Link::default().src,
        "back to the SYN-ACK's sender"
    );
    assert_eq!((r.src, r.dst, r.ttl), (client, server, 63));
    assert_eq!((r.tcp.seq, r.tcp.ack_seq), (c_isn + 1, s_isn + 1));
    assert_eq!(
        (r.opts.tsval, r.opts.tsecr),
        (5002, 9000),
        "TSecr in the server's clock"
    );
    assert_eq!(r.payload, req.payload);
    let e = gw.splice(&flow).expect("splice");
    assert_eq!(
        (e.state, e.seq_delta, e.server_wscale),
        (OPEN, s_isn.wrapping_sub(k), 9)
    );

    // The server's response: our sequence space, our clock, our window scale.
    let mut resp = seg(
        server,
        client,
        80,
        sport,
        tcp_flags::ACK | tcp_flags::PSH,
        s_isn + 1,
        c_isn + 1 + 18,
    );
    resp.options = ts(9010, 5002);
    resp.window = 100;
    resp.payload = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
    let (v, out) = gw.run(&frame(&resp), SERVER_SIDE);
    assert_eq!(v, XDP_PASS);
    let r = parse(&out);
    assert_eq!((r.src, r.dst), (server, client));
    assert_eq!(
        (r.tcp.seq, r.tcp.ack_seq),
        (k.wrapping_add(1), c_isn + 1 + 18)
    );
    assert_eq!(
        (r.opts.tsval, r.opts.tsecr),
        (our_ts.wrapping_add(10), 5002)
    );
    assert_eq!(r.tcp.window, 400, "100 << 9 >> 7");
    assert_eq!(r.payload, resp.payload);

    // The client's ACK with a SACK block: the server's numbers.
    let mut sack = seg(
        client,
        server,
        sport,
        80,
        tcp_flags::ACK,
        c_isn + 19,
        k.wrapping_add(20),
    );
    let mut o = ts(5003, our_ts.wrapping_add(10));
    o.extend_from_slice(&[1, 1, 5, 10]);
    o.extend_from_slice(&k.wrapping_add(100).to_be_bytes());
    o.extend_from_slice(&k.wrapping_add(200).to_be_bytes());
    sack.options = o;
    let (v, out) = gw.run(&frame(&sack), 0);
    assert_eq!(v, XDP_PASS);
    let r = parse(&out);
    assert_eq!(r.tcp.ack_seq, s_isn + 20);
    assert_eq!((r.opts.tsval, r.opts.tsecr), (5003, 9010));
    assert_eq!(r.sack, vec![s_isn + 100, s_isn + 200]);
    assert_eq!(r.v6, client.is_ipv6());
}

#[test]
fn a_splice_translates_every_number_both_ways() {
    require_root("a_splice_translates_every_number_both_ways");
    in_lab(|gw| {
        splice_one(
            &gw,
            "198.18.0.2".parse().unwrap(),
            "198.18.0.1".parse().unwrap(),
            40000,
        );
        splice_one(
            &gw,
            "2001:db8::2".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            40001,
        );
    });
}

#[test]
fn forged_acks_and_refusals_reach_no_server() {
    require_root("forged_acks_and_refusals_reach_no_server");
    in_lab(|gw| forged_and_refused(&gw));
}

fn forged_and_refused(gw: &Gw) {
    let (client, server): (IpAddr, IpAddr) =
        ("198.18.0.2".parse().unwrap(), "198.18.0.1".parse().unwrap());
    // A forged ACK: dropped, no splice.
    let before = gw.obj.counters();
    let mut ack = seg(client, server, 41000, 80, tcp_flags::ACK, 1, 0x1234_5678);
    ack.options = ts(1, 2);
    assert_eq!(gw.run(&frame(&ack), 0).0, XDP_DROP);
    assert!(deltas(&before, &gw.obj.counters()).contains(&(Counter::AckBadMac, 1)));
    // A SYN-ACK from the client side is no server's.
    let sa = seg(
        server,
        client,
        80,
        41000,
        tcp_flags::SYN | tcp_flags::ACK,
        5,
        2,
    );
    assert_eq!(gw.run(&frame(&sa), 0).0, XDP_PASS);

    // A proven client whose server refuses (RST): the client is reset at the number it expects.
    let mut syn = seg(client, server, 41001, 80, tcp_flags::SYN, 100, 0);
    syn.options = linux_syn_options(1460, 7000, 7);
    let (_, out) = gw.run(&frame(&syn), 0);
    let k = parse(&out).tcp.seq;
    let tsv = parse(&out).opts.tsval;
    let mut ack = seg(
        client,
        server,
        41001,
        80,
        tcp_flags::ACK,
        101,
        k.wrapping_add(1),
    );
    ack.options = ts(7001, tsv);
    assert_eq!(gw.run(&frame(&ack), 0).0, XDP_PASS);
    let rst = seg(
        server,
        client,
        80,
        41001,
        tcp_flags::RST | tcp_flags::ACK,
        0,
        101,
    );
    let before = gw.obj.counters();
    let (v, out) = gw.run(&frame(&rst), SERVER_SIDE);
    assert_eq!(v, XDP_PASS);
    assert!(deltas(&before, &gw.obj.counters()).contains(&(Counter::GwServerReset, 1)));
    let r = parse(&out);
    assert_eq!(
        (r.tcp.flags, r.tcp.seq),
        (tcp_flags::RST, k.wrapping_add(1))
    );
    // A SYN-ACK that does not acknowledge our SYN: dropped.
    let mut syn = seg(client, server, 41002, 80, tcp_flags::SYN, 200, 0);
    syn.options = linux_syn_options(1460, 7000, 7);
    let (_, out) = gw.run(&frame(&syn), 0);
    let k = parse(&out).tcp.seq;
    let tsv = parse(&out).opts.tsval;
    let mut ack = seg(
        client,
        server,
        41002,
        80,
        tcp_flags::ACK,
        201,
        k.wrapping_add(1),
    );
    ack.options = ts(7001, tsv);
    assert_eq!(gw.run(&frame(&ack), 0).0, XDP_PASS);
    let bad = seg(
        server,
        client,
        80,
        41002,
        tcp_flags::SYN | tcp_flags::ACK,
        9,
        999,
    );
    assert_eq!(gw.run(&frame(&bad), SERVER_SIDE).0, XDP_DROP);
    // Without held data, the SYN-ACK becomes the handshake's ACK to the server.
    let mut good = seg(
        server,
        client,
        80,
        41002,
        tcp_flags::SYN | tcp_flags::ACK,
        9,
        201,
    );
    good.options = {
        let mut o = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
        o.extend_from_slice(&3u32.to_be_bytes());
        o.extend_from_slice(&7001u32.to_be_bytes());
        o.extend_from_slice(&[1, 3, 3, 7]);
        o
    };
    let (v, out) = gw.run(&frame(&good), SERVER_SIDE);
    assert_eq!(v, XDP_TX);
    let r = parse(&out);
    assert_eq!(
        (r.src, r.dst, r.tcp.flags),
        (client, server, tcp_flags::ACK)
    );
    assert_eq!(
        (r.tcp.seq, r.tcp.ack_seq, r.opts.tsval, r.opts.tsecr),
        (201, 10, 7001, 3)
    );
    assert_eq!(r.payload, Vec::<u8>::new());
}

/// Opens a splice for `client`:`sport` through the cookie handshake and the server's SYN-ACK
/// (no held data); returns our ISN `k`, our TSval and the server's ISN.
fn open_one(gw: &Gw, client: IpAddr, server: IpAddr, sport: u16, c_isn: u32) -> (u32, u32, u32) {
    let (v, _, sa) = gw.handshake(client, server, sport, 80, c_isn);
    assert_eq!(v, XDP_PASS, "SYN to the server");
    let (k, our_ts) = (sa.tcp.seq, sa.opts.tsval);
    let s_isn = 0x5000_0000;
    let mut good = seg(
        server,
        client,
        80,
        sport,
        tcp_flags::SYN | tcp_flags::ACK,
        s_isn,
        c_isn + 1,
    );
    good.options = {
        let mut o = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
        o.extend_from_slice(&3u32.to_be_bytes());
        o.extend_from_slice(&7001u32.to_be_bytes());
        o.extend_from_slice(&[1, 3, 3, 7]);
        o
    };
    assert_eq!(
        gw.run(&frame(&good), SERVER_SIDE).0,
        XDP_TX,
        "ACK to the server"
    );
    (k, our_ts, s_isn)
}

fn flow(client: IpAddr, server: IpAddr, sport: u16) -> Flow {
    Flow {
        saddr: intercept_common::cookie::words_of(client),
        daddr: intercept_common::cookie::words_of(server),
        sport,
        dport: 80,
    }
}

/// An off-path sender's RST or FIN (any number but the one the receiver expects) ends no
/// splice, and no spoofed handshake makes the gateway learn a flow: only a server's
/// acknowledgment of a completed one does, and never an exempt client's.
#[test]
fn blind_resets_and_spoofed_handshakes_change_no_state() {
    require_root("blind_resets_and_spoofed_handshakes_change_no_state");
    in_lab(|gw| {
        let (client, server): (IpAddr, IpAddr) =
            ("198.18.0.2".parse().unwrap(), "198.18.0.1".parse().unwrap());
        let c_isn = 0x100;
        let (k, our_ts, _) = open_one(&gw, client, server, 42000, c_isn);
        let f = flow(client, server, 42000);
        for (what, flags, seq) in [
            (
                "a RST one past the server's RCV.NXT",
                tcp_flags::RST,
                c_isn + 2,
            ),
            ("a RST far off", tcp_flags::RST, c_isn + 100_000),
            (
                "a FIN far out of the window",
                tcp_flags::FIN | tcp_flags::ACK,
                c_isn + (1 << 21),
            ),
        ] {
            let mut s = seg(client, server, 42000, 80, flags, seq, k.wrapping_add(1));
            s.options = ts(7002, our_ts);
            let _ = gw.run(&frame(&s), 0);
            let e = gw.splice(&f).expect("splice");
            assert_eq!(e.state, OPEN, "{what} ended the splice");
            assert_eq!(
                e.flags & intercept_common::splice::splice_flags::CLIENT_FIN,
                0,
                "{what}"
            );
        }
        // The RST the server would accept (at its RCV.NXT) ends it.
        let rst = seg(client, server, 42000, 80, tcp_flags::RST, c_isn + 1, 0);
        assert_eq!(gw.run(&frame(&rst), 0).0, XDP_PASS);
        assert_eq!(
            gw.splice(&f).expect("splice").state,
            intercept_common::splice::CLOSED
        );
        // The client's next connection on the same 4-tuple gets a splice of its own.
        let new_isn = 0x9000;
        let _ = open_one(&gw, client, server, 42000, new_isn);
        let e = gw.splice(&f).expect("a new splice");
        assert_eq!(
            (e.state, e.client_isn),
            (OPEN, new_isn),
            "the ended splice was reused"
        );

        // A server's SYN-ACK (to a spoofed SYN that got through, an exempt client's): not
        // learned. Its acknowledgment of a completed handshake: learned. An exempt client's:
        // not learned (its segments pass anyway).
        let sa = seg(
            server,
            client,
            80,
            42001,
            tcp_flags::SYN | tcp_flags::ACK,
            9,
            77,
        );
        assert_eq!(gw.run(&frame(&sa), SERVER_SIDE).0, XDP_PASS);
        assert!(
            gw.splice(&flow(client, server, 42001)).is_none(),
            "learned from a SYN-ACK"
        );
        let data = seg(server, client, 80, 42002, tcp_flags::ACK, 9, 77);
        assert_eq!(gw.run(&frame(&data), SERVER_SIDE).0, XDP_PASS);
        let learned = gw.splice(&flow(client, server, 42002)).expect("learned");
        assert_eq!(
            (learned.state, learned.client_acked, learned.server_acked),
            (intercept_common::splice::PASSTHROUGH, 77, 9)
        );
        let exempt: IpAddr = "198.18.0.77".parse().unwrap();
        let data = seg(server, exempt, 80, 42003, tcp_flags::ACK, 9, 77);
        assert_eq!(gw.run(&frame(&data), SERVER_SIDE).0, XDP_PASS);
        assert!(
            gw.splice(&flow(exempt, server, 42003)).is_none(),
            "learned an exempt flow"
        );
    });
}

/// A proven client finding the splice table full is refused with a RST at the sequence number
/// it expects, and nothing goes to the server.
#[test]
fn a_full_splice_table_refuses_proven_clients_with_a_reset() {
    require_root("a_full_splice_table_refuses_proven_clients_with_a_reset");
    in_lab(|mut gw| {
        {
            let mut t: HashMap<&mut MapData, FlowKey, Splice> =
                HashMap::try_from(gw.obj.ebpf.map_mut(SPLICE).expect("SPLICE")).expect("hash");
            for i in 0..intercept_common::maps::SPLICE_ENTRIES {
                let key = FlowKey {
                    saddr: [0, 0, 0xffff, 0xc613_0000 | (i >> 16)],
                    daddr: [0, 0, 0xffff, 0xc612_0001],
                    sport: (i & 0xffff) as u16,
                    dport: 80,
                };
                t.insert(&key, &Splice::default(), 0).expect("fill");
            }
        }
        let (client, server): (IpAddr, IpAddr) =
            ("198.18.0.2".parse().unwrap(), "198.18.0.1".parse().unwrap());
        let before = gw.obj.counters();
        let (v, r, sa) = gw.handshake(client, server, 43000, 80, 500);
        let cookie = sa.tcp.seq;
        assert_eq!(v, XDP_TX, "refused back to the client");
        assert!(deltas(&before, &gw.obj.counters()).contains(&(Counter::GwTableFull, 1)));
        assert_eq!(
            (r.src, r.dst, r.tcp.sport, r.tcp.dport),
            (server, client, 80, 43000)
        );
        assert_eq!(
            (r.tcp.flags, r.tcp.seq),
            (tcp_flags::RST, cookie.wrapping_add(1))
        );
    });
}

/// One client address holds at most `splices_per_source` splices: past it, a proven client is
/// refused with a RST and nothing reaches the server, while another address gets through; once
/// the controller's sweep finds one of its splices gone, it gets one again.
#[test]
fn one_address_holds_at_most_its_splices() {
    require_root("one_address_holds_at_most_its_splices");
    in_lab(|mut gw| {
        use intercept_common::cookie::{Key, words_of};
        let key = Key {
            k: [0x2545_f491_4f6c_dd1d, 0x9e37_79b9_7f4a_7c15],
        };
        {
            let mut w: aya::maps::Array<&mut MapData, intercept_common::config::Watch> =
                aya::maps::Array::try_from(gw.obj.ebpf.map_mut("WATCH").expect("WATCH"))
                    .expect("array");
            let mut v = w.get(&0, 0).expect("watch");
            v.splices_per_source = 2;
            w.set(0, &v, 0).expect("set");
            let mut k: aya::maps::Array<&mut MapData, Key> = aya::maps::Array::try_from(
                gw.obj
                    .ebpf
                    .map_mut(intercept_common::maps::GW_SOURCE_KEY)
                    .expect("GW_SOURCE_KEY"),
            )
            .expect("array");
            k.set(0, &key, 0).expect("key");
        }
        let server: IpAddr = "198.18.0.1".parse().unwrap();
        let handshake =
            |gw: &Gw, client: IpAddr, port: u16| gw.handshake(client, server, port, 80, 700);
        let bucket = |ip: IpAddr| intercept_common::splice::source_bucket(&words_of(ip), &key);
        // `a` in the upper half of the buckets (a mapping of the wrong stride never reaches
        // them), `b` another address.
        let a: IpAddr = (2..250u8)
            .map(|i| IpAddr::from([198, 18, 0, i]))
            .find(|&ip| bucket(ip) >= intercept_common::maps::GW_SOURCE_BUCKETS / 2)
            .expect("an address in the upper half");
        let b: IpAddr = "198.18.1.3".parse().unwrap();
        assert_ne!(bucket(a), bucket(b));
        // The data path's own view of a bucket (the kernel's array, not the controller's map).
        let held = |gw: &Gw, ip: IpAddr| {
            let m: aya::maps::Array<&MapData, u64> = aya::maps::Array::try_from(
                gw.obj
                    .ebpf
                    .map(intercept_common::maps::GW_SOURCES)
                    .expect("GW_SOURCES"),
            )
            .expect("array");
            m.get(&bucket(ip), 0).expect("bucket")
        };
        for port in [45000, 45001] {
            let (v, out, _) = handshake(&gw, a, port);
            assert_eq!(v, XDP_PASS, "splice {port} of the limit's 2");
            assert_eq!(
                (out.dst, out.tcp.flags),
                (server, tcp_flags::SYN),
                "to the server"
            );
        }
        assert_eq!(held(&gw, a), 2);
        let refused = |gw: &Gw, port: u16| {
            let before = gw.obj.counters();
            let (v, out, sa) = handshake(gw, a, port);
            let cookie = sa.tcp.seq;
            assert_eq!(
                v, XDP_TX,
                "a third splice of one address is refused back to it"
            );
            assert!(deltas(&before, &gw.obj.counters()).contains(&(Counter::GwSourceLimit, 1)));
            assert_eq!(
                (out.dst, out.tcp.flags, out.tcp.seq),
                (a, tcp_flags::RST, cookie.wrapping_add(1))
            );
            assert!(gw.splice(&flow(a, server, port)).is_none(), "nothing kept");
        };
        refused(&gw, 45002);
        let (v, out, _) = handshake(&gw, b, 45002);
        assert_eq!(
            (v, out.tcp.flags),
            (XDP_PASS, tcp_flags::SYN),
            "another address"
        );
        // The controller's sweep, reading the table, leaves the buckets as they are when
        // nothing was freed ...
        let sweep = |gw: &Gw| {
            let data = |name: &str| match gw.obj.ebpf.map(name) {
                Some(aya::maps::Map::HashMap(d) | aya::maps::Map::Array(d)) => d,
                _ => panic!("{name}: unexpected map type"),
            };
            let counts = intercept_ctl::gateway::SourceCounts::of(
                data(intercept_common::maps::GW_SOURCES),
                key,
            )
            .expect("mmap");
            let before = counts.snapshot();
            let entries: Vec<(FlowKey, Splice)> =
                intercept_ctl::batch::entries(data(SPLICE)).expect("entries");
            counts.set_from(&before, &entries);
        };
        sweep(&gw);
        assert_eq!((held(&gw, a), held(&gw, b)), (2, 1));
        refused(&gw, 45003);
        // ... and gives back what was freed.
        {
            let mut t: HashMap<&mut MapData, FlowKey, Splice> =
                HashMap::try_from(gw.obj.ebpf.map_mut(SPLICE).expect("SPLICE")).expect("hash");
            t.remove(&FlowKey::of(&flow(a, server, 45000)))
                .expect("free");
        }
        sweep(&gw);
        assert_eq!((held(&gw, a), held(&gw, b)), (1, 1));
        let (v, out, _) = handshake(&gw, a, 45004);
        assert_eq!((v, out.tcp.flags), (XDP_PASS, tcp_flags::SYN), "given back");
    });
}

/// What a server's SYN-ACK refused is learned only from options walked to their end: a SYN-ACK
/// whose options hide past the walk's hops (NOP padding) teaches nothing, while one that plainly
/// leaves SACK out is learned (review finding: the padded one was taken as refusing all three,
/// for every client of the server for 10 minutes).
#[test]
fn only_options_walked_to_their_end_are_learned() {
    require_root("only_options_walked_to_their_end_are_learned");
    in_lab(|gw| {
        let (client, server): (IpAddr, IpAddr) =
            ("198.18.0.2".parse().unwrap(), "198.18.0.1".parse().unwrap());
        // A client's handshake to `port`, then the server's SYN-ACK with `options`.
        let answer = |port: u16, options: Vec<u8>| {
            let (v, _, _) = gw.handshake(client, server, 46000, port, 900);
            assert_eq!(v, XDP_PASS, "the SYN to the server");
            let mut s = seg(
                server,
                client,
                port,
                46000,
                tcp_flags::SYN | tcp_flags::ACK,
                0x5000_0000,
                901,
            );
            s.options = options;
            assert_eq!(
                gw.run(&frame(&s), SERVER_SIDE).0,
                XDP_TX,
                "the handshake's ACK"
            );
        };
        let learned = |port: u16| {
            let m: HashMap<
                &MapData,
                intercept_common::splice::ServerKey,
                intercept_common::splice::ServerOpts,
            > = HashMap::try_from(
                gw.obj
                    .ebpf
                    .map(intercept_common::maps::GW_SERVER_OPTS)
                    .expect("map"),
            )
            .expect("hash");
            m.get(
                &intercept_common::splice::ServerKey {
                    addr: intercept_common::cookie::words_of(server),
                    port,
                    pad: 0,
                },
                0,
            )
            .ok()
            .map(|v| v.refused)
        };
        // MSS, SACK-permitted, timestamps, window scale: behind 12 NOPs, past the walk's hops.
        let mut padded = vec![1u8; 12];
        padded.extend_from_slice(&[2, 4, 0x05, 0xb4, 4, 2, 8, 10]);
        padded.extend_from_slice(&9000u32.to_be_bytes());
        padded.extend_from_slice(&7001u32.to_be_bytes());
        padded.extend_from_slice(&[1, 3, 3, 9]);
        answer(81, padded);
        assert_eq!(
            learned(81).unwrap_or(0),
            0,
            "nothing learned from a padded SYN-ACK"
        );
        // MSS, timestamps, window scale, no SACK-permitted: SACK refused.
        let mut no_sack = vec![2, 4, 0x05, 0xb4, 1, 1, 8, 10];
        no_sack.extend_from_slice(&9000u32.to_be_bytes());
        no_sack.extend_from_slice(&7001u32.to_be_bytes());
        no_sack.extend_from_slice(&[1, 3, 3, 9]);
        answer(82, no_sack);
        assert_eq!(learned(82), Some(intercept_common::splice::refused::SACK));
    });
}

/// Watch mode on the gateway: a client's RST, whatever its number, does not untrack a
/// half-open handshake (only the server knows whether it ended it; the watch timeout resets
/// what is left on both ends).
#[test]
fn a_blind_reset_does_not_hide_a_watched_handshake() {
    require_root("a_blind_reset_does_not_hide_a_watched_handshake");
    in_lab(|mut gw| {
        let mut cfg = gw.maps.config().expect("config");
        cfg.mode = intercept_common::config::Mode::Watch as u32;
        gw.maps.set_config(&cfg).expect("watch mode");
        let (client, server): (IpAddr, IpAddr) =
            ("198.18.0.2".parse().unwrap(), "198.18.0.1".parse().unwrap());
        let mut syn = seg(client, server, 44000, 80, tcp_flags::SYN, 900, 0);
        syn.options = linux_syn_options(1460, 7000, 7);
        assert_eq!(gw.run(&frame(&syn), 0).0, XDP_PASS, "watched SYNs pass");
        let key = FlowKey::of(&flow(client, server, 44000));
        let tracked = |gw: &Gw| {
            let t: HashMap<&MapData, FlowKey, intercept_common::config::HalfOpen> =
                HashMap::try_from(
                    gw.obj
                        .ebpf
                        .map(intercept_common::maps::HALF_OPEN)
                        .expect("HALF_OPEN"),
                )
                .expect("hash");
            t.get(&key, 0).ok()
        };
        assert!(tracked(&gw).is_some(), "tracked");
        let rst = seg(client, server, 44000, 80, tcp_flags::RST, 12345, 0);
        assert_eq!(gw.run(&frame(&rst), 0).0, XDP_PASS);
        let h = tracked(&gw).expect("still tracked after a blind RST");
        assert_eq!(h.resets, 1);
        // The server's SYN-ACK records its ISN for the box's resets.
        let sa = seg(
            server,
            client,
            80,
            44000,
            tcp_flags::SYN | tcp_flags::ACK,
            4242,
            901,
        );
        assert_eq!(gw.run(&frame(&sa), SERVER_SIDE).0, XDP_PASS);
        let h = tracked(&gw).expect("tracked");
        assert_eq!((h.server_isn, h.answered), (4242, 1));
        // The client's ACK of it completes the handshake, and the flow is known from then on.
        let ack = seg(client, server, 44000, 80, tcp_flags::ACK, 901, 4243);
        assert_eq!(gw.run(&frame(&ack), 0).0, XDP_PASS);
        assert!(tracked(&gw).is_none(), "completed");
        assert_eq!(
            gw.splice(&flow(client, server, 44000))
                .expect("learned")
                .state,
            intercept_common::splice::PASSTHROUGH
        );
    });
}

/// While the server has not answered, only the client's first data segment (at its ISN + 1,
/// acknowledging our cookie) is held: a segment an off-path sender injects at any other
/// number is dropped, and the client's own request is still held and replayed.
#[test]
fn only_the_clients_first_bytes_are_held() {
    require_root("only_the_clients_first_bytes_are_held");
    in_lab(|gw| {
        let (client, server): (IpAddr, IpAddr) =
            ("198.18.0.2".parse().unwrap(), "198.18.0.1".parse().unwrap());
        let c_isn = 0x7000;
        let (v, _, sa) = gw.handshake(client, server, 45000, 80, c_isn);
        assert_eq!(v, XDP_PASS, "SYN to the server");
        let k = sa.tcp.seq;
        for (what, seq, ack_seq) in [
            ("past the first byte", c_isn + 1001, k.wrapping_add(1)),
            (
                "acknowledging something else",
                c_isn + 1,
                k.wrapping_add(77),
            ),
        ] {
            let mut forged = seg(
                client,
                server,
                45000,
                80,
                tcp_flags::ACK | tcp_flags::PSH,
                seq,
                ack_seq,
            );
            forged.payload = b"injected".to_vec();
            let before = gw.obj.counters();
            assert_eq!(gw.run(&frame(&forged), 0).0, XDP_DROP, "{what}");
            let d = deltas(&before, &gw.obj.counters());
            assert!(
                d.contains(&(Counter::GwHeldLost, 1)),
                "a segment {what} was held: {d:?}"
            );
        }
        let mut req = seg(
            client,
            server,
            45000,
            80,
            tcp_flags::ACK | tcp_flags::PSH,
            c_isn + 1,
            k.wrapping_add(1),
        );
        req.payload = b"GET /".to_vec();
        let before = gw.obj.counters();
        assert_eq!(gw.run(&frame(&req), 0).0, XDP_DROP, "held");
        assert!(deltas(&before, &gw.obj.counters()).contains(&(Counter::GwHeld, 1)));
    });
}
