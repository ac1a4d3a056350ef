//! The frame dissector on arbitrary bytes: never panics, and whatever it reports is consistent
//! with the bytes: every offset inside the frame, the IP header where the tags end, the TCP header
//! inside the IP payload, each field the bytes at its offset.
#![no_main]

use intercept_common::parse::{
    Dissected, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPV4_MIN_HLEN, IPV6_HLEN,
    Ip, L3, L4, MAX_VLANS, Malformed, TCP_MIN_HLEN, VLAN_HLEN, classify, dissect,
};
use libfuzzer_sys::fuzz_target;

fn be16(d: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([d[off], d[off + 1]])
}

fn be32(d: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([d[off], d[off + 1], d[off + 2], d[off + 3]])
}

fn check_ip(d: &[u8], ip: &Ip) {
    assert!(ip.vlans <= MAX_VLANS, "{ip:?}");
    assert_eq!(ip.l3_off, ETH_HLEN + VLAN_HLEN * ip.vlans, "{ip:?}");
    // Every tag walked is a VLAN tag.
    for i in 0..ip.vlans {
        let t = be16(d, 12 + VLAN_HLEN * i);
        assert!(t == ETH_P_8021Q || t == ETH_P_8021AD, "{ip:?}");
    }
    let ether_type = be16(d, ip.l3_off - 2);
    // Where the IP payload ends (TCP must end there exactly).
    let end = match ip.l3 {
        L3::V4 { hdr_len, total_len } => {
            assert_eq!(ether_type, ETH_P_IP);
            assert_eq!(d[ip.l3_off] >> 4, 4);
            assert_eq!(hdr_len, usize::from(d[ip.l3_off] & 0x0f) * 4);
            assert!(hdr_len >= IPV4_MIN_HLEN, "{ip:?}");
            assert_eq!(total_len, usize::from(be16(d, ip.l3_off + 2)));
            assert!(total_len >= hdr_len, "{ip:?}");
            assert!(ip.l3_off + total_len <= d.len(), "{ip:?}");
            if let L4::Tcp(t) = ip.l4 {
                assert_eq!(t.off, ip.l3_off + hdr_len, "{ip:?}");
                assert_eq!(d[ip.l3_off + 9], 6);
            }
            if matches!(ip.l4, L4::Fragment | L4::SynFragment) {
                assert_ne!(be16(d, ip.l3_off + 6) & 0x3fff, 0);
                if ip.l4 == L4::SynFragment {
                    // A first fragment of TCP whose flags say SYN or are cut off.
                    assert_eq!(d[ip.l3_off + 9], 6);
                    assert_eq!(be16(d, ip.l3_off + 6) & 0x1fff, 0);
                    let flags_at = ip.l3_off + hdr_len + 13;
                    assert!(flags_at >= ip.l3_off + total_len || d[flags_at] & 2 != 0);
                } else if d[ip.l3_off + 9] == 6 && be16(d, ip.l3_off + 6) & 0x1fff == 0 {
                    // A first TCP fragment that is not one holds flags without SYN.
                    let flags_at = ip.l3_off + hdr_len + 13;
                    assert!(flags_at < ip.l3_off + total_len && d[flags_at] & 2 == 0);
                }
            } else {
                assert_eq!(be16(d, ip.l3_off + 6) & 0x3fff, 0);
            }
            if let L4::Other(p) = ip.l4 {
                assert_eq!(p, d[ip.l3_off + 9]);
                assert_ne!(p, 6);
            }
            ip.l3_off + total_len
        }
        L3::V6 { payload_len } => {
            assert_eq!(ether_type, ETH_P_IPV6);
            assert!(ip.l3_off + IPV6_HLEN <= d.len(), "{ip:?}");
            assert_eq!(d[ip.l3_off] >> 4, 6);
            assert_eq!(payload_len, usize::from(be16(d, ip.l3_off + 4)));
            assert!(ip.l3_off + IPV6_HLEN + payload_len <= d.len(), "{ip:?}");
            if let L4::Tcp(t) = ip.l4 {
                // After the fixed header and whole 8-byte extension headers.
                assert!(t.off >= ip.l3_off + IPV6_HLEN, "{ip:?}");
                assert_eq!((t.off - ip.l3_off - IPV6_HLEN) % 8, 0, "{ip:?}");
            }
            ip.l3_off + IPV6_HLEN + payload_len
        }
    };
    if let L4::Tcp(t) = ip.l4 {
        assert!(t.hdr_len >= TCP_MIN_HLEN && t.hdr_len <= 60 && t.hdr_len % 4 == 0);
        assert_eq!(t.hdr_len, usize::from(d[t.off + 12] >> 4) * 4);
        // Inside the IP payload, to its end, which is inside the frame.
        assert_eq!(t.off + t.hdr_len + t.payload_len, end, "{ip:?}");
        assert!(end <= d.len());
        assert_eq!(t.sport, be16(d, t.off));
        assert_eq!(t.dport, be16(d, t.off + 2));
        assert_eq!(t.seq, be32(d, t.off + 4));
        assert_eq!(t.ack_seq, be32(d, t.off + 8));
        assert_eq!(t.flags, d[t.off + 13]);
        assert_eq!(t.window, be16(d, t.off + 14));
        let _ = classify(t.flags);
        // The option walk over what the dissector found never panics either.
        let _ = intercept_common::tcpopt::parse(d, t.off, t.hdr_len);
        let _ = intercept_common::tcpopt::timestamps(d, t.off, t.hdr_len);
    }
}

fuzz_target!(|d: &[u8]| {
    match dissect(d) {
        Ok(Dissected::Ip(ip)) => check_ip(d, &ip),
        Ok(Dissected::NotIp { vlans, ether_type }) => {
            assert!(vlans <= MAX_VLANS);
            let off = ETH_HLEN + VLAN_HLEN * vlans;
            assert!(off <= d.len());
            assert_eq!(ether_type, be16(d, off - 2));
            assert!(ether_type != ETH_P_IP && ether_type != ETH_P_IPV6);
            if vlans < MAX_VLANS {
                assert!(ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD);
            }
        }
        Err(Malformed::EthTruncated) => assert!(d.len() < ETH_HLEN),
        Err(_) => assert!(d.len() >= ETH_HLEN),
    }
});
