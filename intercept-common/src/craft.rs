//! Building frames on the host (tests, fixtures and the lab's traffic generator): Ethernet, up to
//! two VLAN tags, IPv4 or IPv6, TCP with options and payload, with correct checksums unless
//! asked otherwise. Userspace only (`user` feature).
extern crate std;
use std::vec::Vec;

use core::net::IpAddr;

use crate::checksum::{add_bytes, finish, pseudo_v4, pseudo_v6};
use crate::parse::{ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP};

/// A TCP segment to build.
#[derive(Clone, Debug)]
pub struct TcpSegment {
    /// Source address; family must match `dst`.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack_seq: u32,
    /// Flags byte.
    pub flags: u8,
    /// Window field.
    pub window: u16,
    /// Raw option bytes; padded with EOL to a multiple of 4.
    pub options: Vec<u8>,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// IPv4 TTL / IPv6 hop limit.
    pub ttl: u8,
}

impl TcpSegment {
    /// A segment with no options or payload, window 64240, TTL 64.
    #[must_use]
    pub fn new(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Self {
        TcpSegment {
            src,
            dst,
            sport,
            dport,
            seq: 0,
            ack_seq: 0,
            flags,
            window: 64240,
            options: Vec::new(),
            payload: Vec::new(),
            ttl: 64,
        }
    }
}

/// Link layer of a frame to build.
#[derive(Clone, Debug)]
pub struct Link {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// VLAN tags, outermost first: (TPID, TCI).
    pub vlans: Vec<(u16, u16)>,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            dst: [0x02, 0, 0, 0, 0, 2],
            src: [0x02, 0, 0, 0, 0, 1],
            vlans: Vec::new(),
        }
    }
}

/// Options a Linux client typically puts on a SYN: MSS 1460, SACK-permitted, timestamps, NOP,
/// window scale 7 (20 bytes).
#[must_use]
pub fn linux_syn_options(mss: u16, tsval: u32, wscale: u8) -> Vec<u8> {
    let mut o = Vec::with_capacity(20);
    o.extend_from_slice(&[2, 4]);
    o.extend_from_slice(&mss.to_be_bytes());
    o.extend_from_slice(&[4, 2, 8, 10]);
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&0u32.to_be_bytes());
    o.extend_from_slice(&[1, 3, 3, wscale]);
    o
}

/// The TCP header and payload of `seg`, checksum included.
///
/// # Panics
/// If the segment is longer than a TCP length field holds.
#[must_use]
pub fn tcp_bytes(seg: &TcpSegment) -> Vec<u8> {
    let mut opts = seg.options.clone();
    while opts.len() % 4 != 0 {
        opts.push(0);
    }
    let doff = u8::try_from((20 + opts.len()) / 4).expect("TCP options longer than 40 bytes");
    let mut t = Vec::with_capacity(20 + opts.len() + seg.payload.len());
    t.extend_from_slice(&seg.sport.to_be_bytes());
    t.extend_from_slice(&seg.dport.to_be_bytes());
    t.extend_from_slice(&seg.seq.to_be_bytes());
    t.extend_from_slice(&seg.ack_seq.to_be_bytes());
    t.push(doff << 4);
    t.push(seg.flags);
    t.extend_from_slice(&seg.window.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    t.extend_from_slice(&opts);
    t.extend_from_slice(&seg.payload);
    let len = t.len();
    let acc = match (seg.src, seg.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => pseudo_v4(
            s.octets(),
            d.octets(),
            IPPROTO_TCP,
            u16::try_from(len).expect("segment too long"),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => pseudo_v6(
            &s.octets(),
            &d.octets(),
            IPPROTO_TCP,
            u32::try_from(len).expect("segment too long"),
        ),
        _ => panic!(
            "TcpSegment with mixed address families: {} -> {}",
            seg.src, seg.dst
        ),
    };
    let c = finish(add_bytes(acc, &t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// An IPv4 header for `payload_len` bytes of `proto`, checksum included (id 0, DF set).
///
/// # Panics
/// If the payload is longer than an IPv4 total length holds.
#[must_use]
pub fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, payload_len: usize) -> [u8; 20] {
    let total = u16::try_from(20 + payload_len).expect("IPv4 datagram too long");
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = ttl;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let c = finish(add_bytes(0, &h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// An IPv6 header for `payload_len` bytes of `next` (flow label 0).
///
/// # Panics
/// If the payload is longer than an IPv6 payload length holds.
#[must_use]
pub fn ipv6_header(
    src: [u8; 16],
    dst: [u8; 16],
    next: u8,
    hop_limit: u8,
    payload_len: usize,
) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(
        &u16::try_from(payload_len)
            .expect("IPv6 payload too long")
            .to_be_bytes(),
    );
    h[6] = next;
    h[7] = hop_limit;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h
}

/// Ethernet header (with VLAN tags) for `ether_type`.
#[must_use]
pub fn eth_header(link: &Link, ether_type: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(22);
    f.extend_from_slice(&link.dst);
    f.extend_from_slice(&link.src);
    for (tpid, tci) in &link.vlans {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

/// A whole frame carrying `seg`.
///
/// # Panics
/// If the segment is longer than an IP packet holds.
#[must_use]
pub fn tcp_frame(link: &Link, seg: &TcpSegment) -> Vec<u8> {
    let tcp = tcp_bytes(seg);
    match (seg.src, seg.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut f = eth_header(link, ETH_P_IP);
            f.extend_from_slice(&ipv4_header(
                s.octets(),
                d.octets(),
                IPPROTO_TCP,
                seg.ttl,
                tcp.len(),
            ));
            f.extend_from_slice(&tcp);
            f
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut f = eth_header(link, ETH_P_IPV6);
            f.extend_from_slice(&ipv6_header(
                s.octets(),
                d.octets(),
                IPPROTO_TCP,
                seg.ttl,
                tcp.len(),
            ));
            f.extend_from_slice(&tcp);
            f
        }
        _ => panic!(
            "TcpSegment with mixed address families: {} -> {}",
            seg.src, seg.dst
        ),
    }
}

/// The IP packet (no link layer) carrying `seg`, for raw IP sockets.
#[must_use]
pub fn tcp_packet(seg: &TcpSegment) -> Vec<u8> {
    let f = tcp_frame(&Link::default(), seg);
    f[14..].to_vec()
}
