//! Frame dissection, written once for both sides.
//!
//! [`dissect`] walks Ethernet, up to two 802.1Q/802.1ad tags, IPv4 (honouring IHL and total
//! length) or IPv6 (with up to [`MAX_IPV6_EXT`] extension headers), and TCP (honouring doff). It
//! reads the frame only through [`Frame`], which the eBPF side implements on the XDP context
//! (one bounds check per read, against `data_end`) and the host implements on byte slices, so the
//! code the verifier sees is the code the unit tests run.

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// EtherType of an 802.1Q (customer) VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
use network_types::{
    bitfield::BitfieldU16,
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    vlan::VlanHdr,
};

/// EtherType of an 802.1ad (service, "QinQ" outer) VLAN tag.
pub const ETH_P_8021AD: u16 = 0x88A8;
/// Ethernet header length (no FCS in XDP).
pub const ETH_HLEN: usize = EthHdr::LEN;
/// One VLAN tag: TCI (2) + inner EtherType (2).
pub const VLAN_HLEN: usize = VlanHdr::LEN;
/// VLAN tags we parse through; a third tag is passed as not-TCP.
pub const MAX_VLANS: usize = 2;
/// IPv4 header without options.
pub const IPV4_MIN_HLEN: usize = Ipv4Hdr::LEN;
/// IPv6 fixed header.
pub const IPV6_HLEN: usize = Ipv6Hdr::LEN;
/// TCP header without options.
pub const TCP_MIN_HLEN: usize = TcpHdr::LEN;
/// The largest TCP header (data offset 15 words): a length masked with it is a multiple of 4 no
/// larger than that, which the verifier can bound.
pub const TCP_MAX_HLEN_MASK: usize = 0x3c;
/// Where the flags byte sits in the TCP header (after the data offset's byte).
pub const TCP_FLAGS_AT: usize = core::mem::offset_of!(TcpHdr, _bitfield_1) + 1;
/// The More Fragments bit of the IPv4 header's three flag bits (`Ipv4Hdr::frag_flags`, RFC
/// 791 section 3.1: reserved, DF, MF).
const IPV4_MORE_FRAGMENTS: u8 = 0b001;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IPv6 extension headers we walk through (hop-by-hop, routing, destination options).
pub const MAX_IPV6_EXT: usize = 3;
/// IPv6 next-header values of the extension headers we walk (RFC 8200 section 4).
const IPV6_EXT_HOPOPTS: u8 = 0;
const IPV6_EXT_ROUTING: u8 = 43;
const IPV6_EXT_DSTOPTS: u8 = 60;
/// IPv6 fragment header (RFC 8200 section 4.5).
const IPV6_EXT_FRAGMENT: u8 = 44;

/// TCP flag bits (RFC 9293 section 3.1).
pub mod tcp_flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field is significant.
    pub const URG: u8 = 0x20;
    /// ECN-Echo (RFC 3168).
    pub const ECE: u8 = 0x40;
    /// Congestion Window Reduced (RFC 3168).
    pub const CWR: u8 = 0x80;
}

/// What a frame can be read as: a header of network-types (whose fields hold the bytes in wire
/// order; its accessors convert them) or plain bytes.
///
/// # Safety
/// Only for `Copy` types without padding for which every bit pattern is a valid value, so a
/// value may be read from any bytes of a frame.
pub unsafe trait Wire: Copy {}

// SAFETY: bytes.
unsafe impl<const N: usize> Wire for [u8; N] {}
// SAFETY: the headers are `repr(C)` structs of byte arrays and u16s, without padding (sizes
// asserted below), every bit pattern valid.
unsafe impl Wire for EthHdr {}
// SAFETY: as above.
unsafe impl Wire for VlanHdr {}
// SAFETY: as above.
unsafe impl Wire for Ipv4Hdr {}
// SAFETY: as above.
unsafe impl Wire for Ipv6Hdr {}
// SAFETY: as above.
unsafe impl Wire for TcpHdr {}
// No padding: each header is exactly as long as on the wire.
const _: () = assert!(
    EthHdr::LEN == 14
        && VlanHdr::LEN == 4
        && Ipv4Hdr::LEN == 20
        && Ipv6Hdr::LEN == 40
        && TcpHdr::LEN == 20
        && size_of::<BitfieldU16>() == 2
);

/// Read access to a frame: every read goes through [`Frame::read`], the one bounds check, which
/// returns `None` when the bytes asked for are not all inside the frame, never reading out of
/// bounds.
pub trait Frame {
    /// Length of the frame in bytes.
    fn len(&self) -> usize;
    /// The `T` at `off` (a header, or bytes), or `None` if it does not fit.
    fn read<T: Wire>(&self, off: usize) -> Option<T>;

    /// The `N` bytes at `off`, or `None` if they do not fit.
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        self.read(off)
    }

    /// Whether the frame is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The byte at `off`.
    #[inline(always)]
    fn u8_at(&self, off: usize) -> Option<u8> {
        self.load::<1>(off).map(|b| b[0])
    }
    /// The big-endian u16 at `off`.
    #[inline(always)]
    fn be16_at(&self, off: usize) -> Option<u16> {
        self.load::<2>(off).map(u16::from_be_bytes)
    }
    /// The big-endian u32 at `off`.
    #[inline(always)]
    fn be32_at(&self, off: usize) -> Option<u32> {
        self.load::<4>(off).map(u32::from_be_bytes)
    }
}

impl Frame for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn read<T: Wire>(&self, off: usize) -> Option<T> {
        let bytes = self.get(off..off.checked_add(size_of::<T>())?)?;
        // SAFETY: `bytes` holds size_of::<T>() bytes, read unaligned; any bytes are a valid T
        // (`Wire`).
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
    }
}

/// Why a frame was judged malformed. Each is a truncation or a header that lies about a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than an Ethernet header.
    EthTruncated,
    /// A VLAN tag is cut off.
    VlanTruncated,
    /// IPv4 header cut off, version is not 4, or IHL < 5.
    Ipv4Header,
    /// IPv4 total length shorter than IHL, or longer than the frame.
    Ipv4Length,
    /// IPv6 header cut off or version is not 6.
    Ipv6Header,
    /// IPv6 payload length longer than the frame, or an extension header cut off / past it.
    Ipv6Length,
    /// An IPv4-mapped IPv6 address (`::ffff:0:0/96`) as source or destination. Such addresses
    /// never appear on the wire (RFC 4291 section 2.5.5.2) and the kernel's TCP refuses them
    /// (`tcp_v6_conn_request`); as flows they would read as the IPv4 flow of the same addresses.
    Ipv6Mapped,
    /// TCP header cut off, doff < 5, or doff beyond the IP payload.
    TcpHeader,
}

/// Network layer of a dissected frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    /// IPv4 with its header length (from IHL) and total length.
    V4 {
        /// IHL * 4.
        hdr_len: usize,
        /// Total length field.
        total_len: usize,
    },
    /// IPv6 with its payload length field.
    V6 {
        /// Payload length field.
        payload_len: usize,
    },
}

/// A well-formed TCP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp {
    /// Offset of the TCP header in the frame.
    pub off: usize,
    /// doff * 4.
    pub hdr_len: usize,
    /// Bytes of payload (IP payload minus TCP header).
    pub payload_len: usize,
    /// Source port (host order).
    pub sport: u16,
    /// Destination port (host order).
    pub dport: u16,
    /// Sequence number (host order).
    pub seq: u32,
    /// Acknowledgment number (host order).
    pub ack_seq: u32,
    /// Flags byte (see [`tcp_flags`]).
    pub flags: u8,
    /// Window field (host order, unscaled).
    pub window: u16,
}

/// What the frame carries above the network layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// A well-formed TCP header.
    Tcp(Tcp),
    /// Another IP protocol (ICMP, UDP, ...), or IPv6 behind more extension headers than we walk
    /// (then the next header is still one of them: see [`L4::unwalked_chain`]).
    Other(u8),
    /// An IP fragment that cannot hold a TCP SYN; never parsed.
    Fragment,
    /// The first fragment of a datagram that may be a TCP SYN: TCP (or, for IPv6, an extension
    /// header that may lead to TCP) whose flags have SYN set or do not fit in the fragment. The
    /// kernel would reassemble it and answer the SYN from its own SYN queue. (A variant of its
    /// own rather than a payload of `Fragment`: an enum payload left unset on other paths is an
    /// uninitialised register to the verifier.)
    SynFragment,
}

impl L4 {
    /// Whether this is an IPv6 extension-header chain longer than the dissector walks: what
    /// lies behind it (TCP, perhaps) is unknown.
    #[must_use]
    #[inline(always)]
    pub const fn unwalked_chain(&self) -> bool {
        matches!(
            self,
            L4::Other(IPV6_EXT_HOPOPTS | IPV6_EXT_ROUTING | IPV6_EXT_DSTOPTS)
        )
    }
}

/// A dissected IP frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ip {
    /// Number of VLAN tags before the IP header (0..=2).
    pub vlans: usize,
    /// Offset of the IP header in the frame.
    pub l3_off: usize,
    /// IPv4 or IPv6, with their lengths.
    pub l3: L3,
    /// Payload above IP.
    pub l4: L4,
}

/// Result of [`dissect`] for a frame that is not malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dissected {
    /// Not IP: the EtherType after any VLAN tags (or a third VLAN tag's EtherType).
    NotIp {
        /// Number of VLAN tags walked.
        vlans: usize,
        /// The EtherType found.
        ether_type: u16,
    },
    /// IPv4 or IPv6.
    Ip(Ip),
}

/// How a TCP segment's flags classify it, for counting and for the data path's decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpKind {
    /// SYN without ACK or RST.
    Syn,
    /// SYN with ACK, without RST.
    SynAck,
    /// RST (with or without other flags).
    Rst,
    /// ACK without SYN or RST (pure ACK, data, FIN).
    Ack,
    /// None of those (e.g. a bare FIN or a null scan).
    Other,
}

/// Classifies a TCP flags byte.
#[inline(always)]
#[must_use]
pub const fn classify(flags: u8) -> TcpKind {
    use tcp_flags::{ACK, RST, SYN};
    if flags & RST != 0 {
        TcpKind::Rst
    } else if flags & SYN != 0 {
        if flags & ACK != 0 {
            TcpKind::SynAck
        } else {
            TcpKind::Syn
        }
    } else if flags & ACK != 0 {
        TcpKind::Ack
    } else {
        TcpKind::Other
    }
}

/// Dissects a frame. See the module documentation.
///
/// # Errors
/// [`Malformed`] when a header is truncated or lies about a length.
#[inline(always)]
pub fn dissect<F: Frame + ?Sized>(f: &F) -> Result<Dissected, Malformed> {
    let eth: EthHdr = f.read(0).ok_or(Malformed::EthTruncated)?;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut off = ETH_HLEN;
    let mut vlans = 0;
    // At most MAX_VLANS tags; written out (not a loop) so the offsets stay constants.
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let tag: VlanHdr = f.read(off).ok_or(Malformed::VlanTruncated)?;
        ether_type = u16::from_be(tag.ether_type);
        off += VLAN_HLEN;
        vlans = 1;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            let tag: VlanHdr = f.read(off).ok_or(Malformed::VlanTruncated)?;
            ether_type = u16::from_be(tag.ether_type);
            off += VLAN_HLEN;
            vlans = 2;
        }
    }
    match ether_type {
        ETH_P_IP => dissect_ipv4(f, vlans, off).map(Dissected::Ip),
        ETH_P_IPV6 => dissect_ipv6(f, vlans, off).map(Dissected::Ip),
        _ => Ok(Dissected::NotIp { vlans, ether_type }),
    }
}

#[inline(always)]
fn dissect_ipv4<F: Frame + ?Sized>(f: &F, vlans: usize, l3_off: usize) -> Result<Ip, Malformed> {
    let hdr: Ipv4Hdr = f.read(l3_off).ok_or(Malformed::Ipv4Header)?;
    let hdr_len = usize::from(hdr.ihl());
    if hdr.version() != 4 || hdr_len < IPV4_MIN_HLEN {
        return Err(Malformed::Ipv4Header);
    }
    let total_len = usize::from(hdr.tot_len());
    // Ethernet padding may follow the datagram, so the frame may be longer, never shorter.
    if total_len < hdr_len || l3_off + total_len > f.len() {
        return Err(Malformed::Ipv4Length);
    }
    let l3 = L3::V4 { hdr_len, total_len };
    // More-fragments flag or a non-zero offset: a fragment (RFC 791 section 3.1).
    let (first, proto) = (hdr.frag_offset() == 0, hdr.proto);
    if hdr.frag_flags() & IPV4_MORE_FRAGMENTS != 0 || !first {
        return Ok(Ip {
            vlans,
            l3_off,
            l3,
            l4: if proto == IPPROTO_TCP
                && first
                && may_hold_syn(f, l3_off + hdr_len, l3_off + total_len)
            {
                L4::SynFragment
            } else {
                L4::Fragment
            },
        });
    }
    let l4 = if proto == IPPROTO_TCP {
        L4::Tcp(dissect_tcp(f, l3_off + hdr_len, l3_off + total_len)?)
    } else {
        L4::Other(proto)
    };
    Ok(Ip {
        vlans,
        l3_off,
        l3,
        l4,
    })
}

/// Whether the TCP header at `tcp_off` of a first fragment ending at `end` may be a SYN's: its
/// flags have SYN set, or do not fit in the fragment (the next fragment brings them).
#[inline(always)]
fn may_hold_syn<F: Frame + ?Sized>(f: &F, tcp_off: usize, end: usize) -> bool {
    // The read first, its own bounds check before any comparison with `end` (see dissect_ipv6).
    // Two bytes (data offset and flags): a one-byte read's bounds check compiles to a form the
    // verifier does not take as a range.
    let word: Option<[u8; 2]> = f.load(tcp_off + TCP_FLAGS_AT - 1);
    match word {
        Some(b) if tcp_off + TCP_FLAGS_AT < end => b[1] & tcp_flags::SYN != 0,
        _ => true,
    }
}

/// Whether a 16-byte IPv6 address is IPv4-mapped (`::ffff:a.b.c.d`).
#[inline(always)]
fn is_v4_mapped(a: &[u8]) -> bool {
    a.len() == 16 && a[..10].iter().all(|&b| b == 0) && a[10] == 0xff && a[11] == 0xff
}

#[inline(always)]
fn dissect_ipv6<F: Frame + ?Sized>(f: &F, vlans: usize, l3_off: usize) -> Result<Ip, Malformed> {
    // The whole fixed header in one read: one bounds check the verifier sees as such (a separate
    // length comparison would let LLVM drop a later packet-pointer check as redundant, and the
    // verifier then rejects the read: "invalid access to packet").
    let hdr: Ipv6Hdr = f.read(l3_off).ok_or(Malformed::Ipv6Header)?;
    if hdr.version() != 6 {
        return Err(Malformed::Ipv6Header);
    }
    let payload_len = usize::from(hdr.payload_len());
    let end = l3_off + IPV6_HLEN + payload_len;
    if end > f.len() {
        return Err(Malformed::Ipv6Length);
    }
    if is_v4_mapped(&hdr.src_addr) || is_v4_mapped(&hdr.dst_addr) {
        return Err(Malformed::Ipv6Mapped);
    }
    let l3 = L3::V6 { payload_len };
    let mut next = hdr.next_hdr;
    let mut off = l3_off + IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT {
        if next != IPV6_EXT_HOPOPTS && next != IPV6_EXT_ROUTING && next != IPV6_EXT_DSTOPTS {
            break;
        }
        let ext: [u8; 2] = f.load(off).ok_or(Malformed::Ipv6Length)?;
        next = ext[0];
        off += (usize::from(ext[1]) + 1) * 8;
        if off > end {
            return Err(Malformed::Ipv6Length);
        }
    }
    let l4 = match next {
        IPPROTO_TCP => L4::Tcp(dissect_tcp(f, off, end)?),
        IPV6_EXT_FRAGMENT => {
            // The 8-byte fragment header, read whole (a separate comparison with `end` would let
            // LLVM drop the read's own bounds check, which the verifier needs).
            let fh: [u8; 8] = f.load(off).ok_or(Malformed::Ipv6Length)?;
            let first = u16::from_be_bytes([fh[2], fh[3]]) >> 3 == 0;
            let syn = match fh[0] {
                IPPROTO_TCP => may_hold_syn(f, off + 8, end),
                // TCP may follow behind more extension headers: not walked, assumed.
                IPV6_EXT_HOPOPTS | IPV6_EXT_ROUTING | IPV6_EXT_DSTOPTS => true,
                _ => false,
            };
            if first && syn {
                L4::SynFragment
            } else {
                L4::Fragment
            }
        }
        other => L4::Other(other),
    };
    Ok(Ip {
        vlans,
        l3_off,
        l3,
        l4,
    })
}

/// Parses the TCP header at `off`; `end` is where the IP payload ends.
#[inline(always)]
fn dissect_tcp<F: Frame + ?Sized>(f: &F, off: usize, end: usize) -> Result<Tcp, Malformed> {
    let h: TcpHdr = f.read(off).ok_or(Malformed::TcpHeader)?;
    // Data offset and flags as the two bytes they are. network-types models them as a bindgen
    // bitfield whose getters (`doff`, `syn`, ...) test and set one bit at a time, a branch per
    // bit: the verifier walked 148,000 more instructions of the XDP program with them.
    // SAFETY: `BitfieldU16` is `repr(C)` around its two bytes of storage (size asserted).
    let [doff, flags] = unsafe { core::mem::transmute::<BitfieldU16, [u8; 2]>(h._bitfield_1) };
    let hdr_len = usize::from(doff >> 4) * 4;
    if hdr_len < TCP_MIN_HLEN || off + hdr_len > end {
        return Err(Malformed::TcpHeader);
    }
    Ok(Tcp {
        off,
        hdr_len,
        payload_len: end - off - hdr_len,
        sport: u16::from_be_bytes(h.source),
        dport: u16::from_be_bytes(h.dest),
        seq: u32::from_be_bytes(h.seq),
        ack_seq: u32::from_be_bytes(h.ack_seq),
        flags,
        window: u16::from_be_bytes(h.window),
    })
}

#[cfg(test)]
mod tests {
    use core::net::IpAddr;

    use super::*;
    use crate::craft::{Link, TcpSegment, linux_syn_options, tcp_frame};

    fn v4() -> (IpAddr, IpAddr) {
        ("198.18.0.2".parse().unwrap(), "198.18.0.1".parse().unwrap())
    }
    fn v6() -> (IpAddr, IpAddr) {
        (
            "2001:db8::2".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        )
    }
    fn syn(src: IpAddr, dst: IpAddr) -> TcpSegment {
        let mut s = TcpSegment::new(src, dst, 40000, 80, tcp_flags::SYN);
        s.seq = 0x0102_0304;
        s.options = linux_syn_options(1460, 7, 7);
        s
    }
    fn tcp_of(f: &[u8]) -> (Ip, Tcp) {
        match dissect(f) {
            Ok(Dissected::Ip(ip @ Ip { l4: L4::Tcp(t), .. })) => (ip, t),
            other => panic!("expected TCP, got {other:?}"),
        }
    }

    #[test]
    fn ipv4_syn_with_options() {
        let (s, d) = v4();
        let f = tcp_frame(&Link::default(), &syn(s, d));
        let (ip, t) = tcp_of(&f);
        assert_eq!((ip.vlans, ip.l3_off), (0, 14));
        assert_eq!(
            ip.l3,
            L3::V4 {
                hdr_len: 20,
                total_len: 60
            }
        );
        assert_eq!((t.off, t.hdr_len, t.payload_len), (34, 40, 0));
        assert_eq!(
            (t.sport, t.dport, t.seq, t.flags),
            (40000, 80, 0x0102_0304, tcp_flags::SYN)
        );
        assert_eq!(classify(t.flags), TcpKind::Syn);
    }

    #[test]
    fn ipv4_mapped_ipv6_addresses_are_never_a_flow() {
        use std::net::{IpAddr, Ipv6Addr};
        let mapped = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc612, 0x0001));
        let (s, d) = v6();
        for (src, dst) in [(mapped, d), (s, mapped), (mapped, mapped)] {
            let f = tcp_frame(
                &Link::default(),
                &TcpSegment::new(src, dst, 1, 2, tcp_flags::SYN),
            );
            assert_eq!(
                dissect(&f[..]),
                Err(Malformed::Ipv6Mapped),
                "{src} -> {dst}"
            );
        }
        // One bit off the mapped prefix is an ordinary address.
        let near = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xfffe, 0xc612, 0x0001));
        let f = tcp_frame(
            &Link::default(),
            &TcpSegment::new(near, d, 1, 2, tcp_flags::SYN),
        );
        assert!(dissect(&f[..]).is_ok());
    }

    #[test]
    fn ipv6_with_payload_and_two_vlans() {
        let (s, d) = v6();
        let mut seg = TcpSegment::new(s, d, 1, 2, tcp_flags::ACK | tcp_flags::PSH);
        seg.payload = b"hello".to_vec();
        let link = Link {
            vlans: vec![(ETH_P_8021AD, 100), (ETH_P_8021Q, 200)],
            ..Link::default()
        };
        let f = tcp_frame(&link, &seg);
        let (ip, t) = tcp_of(&f);
        assert_eq!((ip.vlans, ip.l3_off), (2, 22));
        assert_eq!(ip.l3, L3::V6 { payload_len: 25 });
        assert_eq!((t.off, t.hdr_len, t.payload_len), (62, 20, 5));
        assert_eq!(classify(t.flags), TcpKind::Ack);
    }

    #[test]
    fn ipv4_options_honour_ihl() {
        let (s, d) = v4();
        let mut f = tcp_frame(&Link::default(), &syn(s, d));
        // Insert 8 bytes of IPv4 options (NOPs + EOL): IHL 7, total length + 8.
        f.splice(34..34, [1, 1, 1, 1, 1, 1, 1, 0]);
        f[14] = 0x47;
        f[16..18].copy_from_slice(&68u16.to_be_bytes());
        let (ip, t) = tcp_of(&f);
        assert_eq!(
            ip.l3,
            L3::V4 {
                hdr_len: 28,
                total_len: 68
            }
        );
        assert_eq!(t.off, 42);
    }

    #[test]
    fn ethernet_padding_is_allowed() {
        let (s, d) = v4();
        let mut f = tcp_frame(
            &Link::default(),
            &TcpSegment::new(s, d, 1, 2, tcp_flags::RST),
        );
        f.extend_from_slice(&[0; 6]); // pad to the 60-byte minimum
        let (_, t) = tcp_of(&f);
        assert_eq!((t.payload_len, classify(t.flags)), (0, TcpKind::Rst));
    }

    /// Every truncation of a valid frame, at every byte, is malformed or (before the EtherType's
    /// layer starts) a shorter, still consistent reading; never a panic, never an out-of-range read.
    #[test]
    fn every_truncation_is_malformed() {
        let (s4, d4) = v4();
        let (s6, d6) = v6();
        for f in [
            tcp_frame(&Link::default(), &syn(s4, d4)),
            tcp_frame(
                &Link {
                    vlans: vec![(ETH_P_8021Q, 5)],
                    ..Link::default()
                },
                &syn(s6, d6),
            ),
        ] {
            for cut in 0..f.len() {
                let r = dissect(&f[..cut]);
                assert!(
                    r.is_err(),
                    "frame cut at {cut} of {} parsed as {r:?}",
                    f.len()
                );
            }
        }
    }

    #[test]
    fn lying_lengths_are_malformed() {
        let (s, d) = v4();
        let good = tcp_frame(&Link::default(), &syn(s, d));
        let cases: [(&str, usize, u8, Malformed); 7] = [
            ("IHL 4", 14, 0x44, Malformed::Ipv4Header),
            (
                "version 6 in an IPv4 frame",
                14,
                0x65,
                Malformed::Ipv4Header,
            ),
            (
                "IHL 15 leaves no room for TCP",
                14,
                0x4f,
                Malformed::TcpHeader,
            ),
            ("total length 16 < IHL", 17, 0x10, Malformed::Ipv4Length),
            (
                "total length 0x01xx > frame",
                16,
                0x01,
                Malformed::Ipv4Length,
            ),
            ("doff 4", 14 + 20 + 12, 0x40, Malformed::TcpHeader),
            (
                "doff 15 > IP payload",
                14 + 20 + 12,
                0xf0,
                Malformed::TcpHeader,
            ),
        ];
        for (what, at, byte, want) in cases {
            let mut f = good.clone();
            f[at] = byte;
            assert_eq!(dissect(&f[..]), Err(want), "{what}");
        }
        let (s6, d6) = v6();
        let mut f = tcp_frame(&Link::default(), &syn(s6, d6));
        f[18..20].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(
            dissect(&f[..]),
            Err(Malformed::Ipv6Length),
            "IPv6 payload length > frame"
        );
    }

    #[test]
    fn fragments_and_other_protocols() {
        let (s, d) = v4();
        let mut f = tcp_frame(&Link::default(), &syn(s, d));
        f[20] |= 0x20; // MF
        assert!(matches!(
            dissect(&f[..]),
            Ok(Dissected::Ip(Ip {
                l4: L4::Fragment | L4::SynFragment,
                ..
            }))
        ));
        let mut f = tcp_frame(&Link::default(), &syn(s, d));
        f[23] = 17; // UDP
        assert!(matches!(
            dissect(&f[..]),
            Ok(Dissected::Ip(Ip {
                l4: L4::Other(17),
                ..
            }))
        ));
        let mut arp = [0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(
            dissect(&arp[..]),
            Ok(Dissected::NotIp {
                vlans: 0,
                ether_type: 0x0806
            })
        );
    }

    /// Which fragments may be a SYN: only first fragments, of TCP with SYN set or its flags cut
    /// off, or (IPv6) with an extension header behind the fragment header that may lead to TCP.
    #[test]
    fn first_fragments_that_may_be_a_syn() {
        let l4 = |f: &[u8]| match dissect(f) {
            Ok(Dissected::Ip(ip)) => ip.l4,
            other => panic!("{other:?}"),
        };
        let (s, d) = v4();
        let syn4 = tcp_frame(&Link::default(), &syn(s, d));
        let mut ack4 = syn4.clone();
        ack4[14 + 20 + 13] = tcp_flags::ACK;
        for (what, frame, frag, cut, want) in [
            (
                "IPv4 SYN, first fragment",
                &syn4,
                0x2000u16,
                None,
                L4::SynFragment,
            ),
            (
                "IPv4 SYN, later fragment",
                &syn4,
                0x0003,
                None,
                L4::Fragment,
            ),
            (
                "IPv4 ACK, first fragment",
                &ack4,
                0x2000,
                None,
                L4::Fragment,
            ),
            (
                "IPv4 ACK, flags cut off",
                &ack4,
                0x2000,
                Some(8),
                L4::SynFragment,
            ),
        ] {
            let mut f = frame.clone();
            f[20..22].copy_from_slice(&frag.to_be_bytes());
            if let Some(n) = cut {
                f.truncate(14 + 20 + n);
                let total = u16::try_from(20 + n).unwrap();
                f[16..18].copy_from_slice(&total.to_be_bytes());
            }
            assert_eq!(l4(&f), want, "{what}");
        }
        // IPv6: a fragment header (next, reserved, offset/M, identification) before the TCP
        // header, or before a destination-options header and then TCP.
        let (s6, d6) = v6();
        let base = tcp_frame(&Link::default(), &syn(s6, d6));
        let with = |next: u8, offset: u16, extra: &[u8]| {
            let mut f = base.clone();
            let mut fh = vec![next, 0];
            fh.extend_from_slice(&(offset << 3).to_be_bytes());
            fh.extend_from_slice(&[0, 0, 0, 7]);
            fh.extend_from_slice(extra);
            let n = u16::try_from(fh.len()).unwrap();
            f.splice(54..54, fh);
            f[20] = IPV6_EXT_FRAGMENT;
            let plen = u16::from_be_bytes([f[18], f[19]]) + n;
            f[18..20].copy_from_slice(&plen.to_be_bytes());
            f
        };
        let dstopts = [IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0];
        assert_eq!(
            l4(&with(IPPROTO_TCP, 0, &[])),
            L4::SynFragment,
            "IPv6 SYN, first"
        );
        assert_eq!(
            l4(&with(IPPROTO_TCP, 5, &[])),
            L4::Fragment,
            "IPv6, later fragment"
        );
        assert_eq!(
            l4(&with(IPV6_EXT_DSTOPTS, 0, &dstopts)),
            L4::SynFragment,
            "IPv6, destination options then TCP behind the fragment header"
        );
        assert_eq!(
            l4(&with(17, 0, &[])),
            L4::Fragment,
            "IPv6 UDP, first fragment"
        );
    }

    #[test]
    fn ipv6_extension_headers_are_walked() {
        let (s, d) = v6();
        let mut f = tcp_frame(&Link::default(), &syn(s, d));
        // Insert an 8-byte hop-by-hop header (next = TCP, len 0, PadN) after the fixed header.
        f.splice(54..54, [IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0]);
        f[20] = 0; // next header: hop-by-hop
        let plen = u16::from_be_bytes([f[18], f[19]]) + 8;
        f[18..20].copy_from_slice(&plen.to_be_bytes());
        let (_, t) = tcp_of(&f);
        assert_eq!(t.off, 62);
        f[20] = IPV6_EXT_FRAGMENT;
        assert!(matches!(
            dissect(&f[..]),
            Ok(Dissected::Ip(Ip {
                l4: L4::Fragment | L4::SynFragment,
                ..
            }))
        ));
    }

    #[test]
    fn classify_covers_every_flag_combination() {
        for flags in 0..=255u8 {
            let k = classify(flags);
            let want = if flags & tcp_flags::RST != 0 {
                TcpKind::Rst
            } else if flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK != 0 {
                TcpKind::SynAck
            } else if flags & tcp_flags::SYN != 0 {
                TcpKind::Syn
            } else if flags & tcp_flags::ACK != 0 {
                TcpKind::Ack
            } else {
                TcpKind::Other
            };
            assert_eq!(k, want, "flags {flags:#04x}");
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic and any TCP found lies inside the frame.
        #[test]
        fn arbitrary_bytes_are_safe(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Ok(Dissected::Ip(Ip { l4: L4::Tcp(t), .. })) = dissect(&data[..]) {
                proptest::prop_assert!(t.off + t.hdr_len + t.payload_len <= data.len());
            }
        }
    }
}
