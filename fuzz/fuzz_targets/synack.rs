//! The host-side SYN path on arbitrary frames and SYN-ACK settings: for every frame the dissector
//! takes as a TCP SYN, read the request, make its cookie, build the SYN-ACK, and check the
//! SYN-ACK as its client would: it dissects as a TCP SYN-ACK of the same flow, reversed, with
//! valid checksums, our cookie as its sequence number, the client's ISN + 1 acknowledged, and the
//! options the cookie carries; and the ACK completing it verifies, with those options.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use intercept_common::{
    checksum::{add_words, fold64},
    config::{Config, flags},
    cookie::{Key, Secrets, check, make, slot_of},
    handshake::{SynAck, SynRequest, build_synack, header_checksum_ok},
    parse::{Dissected, L3, L4, TcpKind, classify, dissect, tcp_flags},
    tcpopt,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Settings {
    mss_v4: u16,
    mss_v6: u16,
    window: u16,
    wscale: u8,
    ttl: u8,
    ecn: bool,
    key: [u64; 2],
    key_idx: bool,
    ts_offset: u32,
    now_ns: u64,
}

fuzz_target!(|d: &[u8]| {
    let mut u = Unstructured::new(d);
    let Ok(s) = Settings::arbitrary(&mut u) else {
        return;
    };
    let frame = u.take_rest();
    let Ok(Dissected::Ip(ip)) = dissect(frame) else {
        return;
    };
    let L4::Tcp(tcp) = ip.l4 else { return };
    if classify(tcp.flags) != TcpKind::Syn {
        return;
    }
    let Some(req) = SynRequest::read(frame, &ip, &tcp) else {
        panic!("a dissected SYN's addresses are inside the frame")
    };
    assert_eq!(req.v6, matches!(ip.l3, L3::V6 { .. }));
    let cfg = Config {
        mss_v4: s.mss_v4,
        mss_v6: s.mss_v6,
        window: s.window,
        wscale: s.wscale,
        ttl: s.ttl,
        flags: if s.ecn { flags::ECN } else { 0 },
        ..Config::default()
    };
    let key = Key {
        k: [s.key[0] | 1, s.key[1]],
    };
    let idx = u32::from(s.key_idx);
    let mut secrets = Secrets {
        current: idx,
        ..Secrets::default()
    };
    secrets.keys[idx as usize] = key;
    secrets.ts_offset[idx as usize] = s.ts_offset;
    let input = req.cookie_input(&cfg, s.now_ns);
    let c = make(&key, idx, s.ts_offset, &input);
    let mut sa = SynAck::ZERO;
    build_synack(&req, &cfg, input.opts, c.isn, c.tsval, &mut sa);

    // The SYN-ACK on the wire: Ethernet, then the headers built.
    assert_eq!(sa.ip_len, if req.v6 { 40 } else { 20 });
    assert!(
        sa.tcp_len >= 24 && sa.tcp_len <= 40 && sa.tcp_len % 4 == 0,
        "{sa:?}"
    );
    let (iph, tcph) = sa.bytes();
    let mut out = vec![0u8; 12];
    out.extend_from_slice(&(if req.v6 { 0x86ddu16 } else { 0x0800 }).to_be_bytes());
    out.extend_from_slice(&iph[..sa.ip_len]);
    out.extend_from_slice(&tcph[..sa.tcp_len]);
    let Ok(Dissected::Ip(rip)) = dissect(&out[..]) else {
        panic!("our SYN-ACK does not dissect: {out:02x?}")
    };
    let L4::Tcp(rt) = rip.l4 else {
        panic!("our SYN-ACK is not TCP: {rip:?}")
    };
    assert_eq!(rt.payload_len, 0);
    assert_eq!(classify(rt.flags), TcpKind::SynAck);
    assert_eq!(rt.flags & tcp_flags::ECE != 0, input.opts.ecn);
    assert_eq!(input.opts.ecn, req.ecn_setup && s.ecn && input.ts);
    assert_eq!((rt.sport, rt.dport), (req.flow.dport, req.flow.sport));
    assert_eq!((rt.seq, rt.ack_seq), (c.isn, req.isn.wrapping_add(1)));
    assert_eq!(rt.window, if s.window == 0 { 65535 } else { s.window });
    // Checksums: TCP over the reversed flow; IPv4's header.
    let reply = SynRequest::read(&out[..], &rip, &rt).expect("addresses");
    assert_eq!(reply.flow.saddr, req.flow.daddr);
    assert_eq!(reply.flow.daddr, req.flow.saddr);
    assert!(
        header_checksum_ok(&out[..], &reply.flow, req.v6, &rt),
        "{out:02x?}"
    );
    if !req.v6 {
        let w: [u32; 5] = core::array::from_fn(|i| sa.ip[i]);
        assert_eq!(fold64(add_words(0, &w)), 0xffff, "IPv4 header checksum");
    }
    // Its options: ours, and what the cookie carries.
    let o = tcpopt::parse(&out[..], rt.off, rt.hdr_len);
    assert!(!o.malformed && !o.signed, "{o:?}");
    assert_eq!(o.mss, if req.v6 { s.mss_v6 } else { s.mss_v4 });
    assert_eq!(o.sack_perm, req.opts.sack_perm);
    assert_eq!(o.has_wscale(), req.opts.has_wscale());
    if o.has_wscale() {
        assert_eq!(o.wscale, s.wscale.min(14));
    }
    assert_eq!(o.ts_ok, req.opts.ts_ok);
    if o.ts_ok {
        assert_eq!((o.tsval, o.tsecr), (c.tsval, req.opts.tsval));
    }
    // The client's ACK: its TSecr echoes our TSval; it verifies in this slot and the next, with
    // the options the cookie carries.
    let tsecr = o.ts_ok.then_some(o.tsval);
    let slot = slot_of(s.now_ns);
    for now in [slot, slot + 1] {
        assert_eq!(
            check(&secrets, &req.flow, req.isn, rt.seq, tsecr, now),
            Ok(input.opts),
            "slot {now}"
        );
    }
});
