//! The handshake, written once for both sides: what a SYN asks for, the SYN-ACK that answers it
//! (headers built in fixed-size buffers with checksums, so the data path only copies them), and
//! the attributes a verified ACK hands to the kernel.
use crate::{
    checksum::{add_words, fold64},
    config::{Config, TcpReqAttrs, flags},
    cookie::{CookieOpts, Flow, SynInput, WSCALE_NONE, mss_index},
    parse::{Frame, IPPROTO_TCP, Ip, L3, Tcp, tcp_flags},
    tcpopt::{self, TcpOptions},
};

/// The flow of a segment as the client sent it (source = client). `None` if the addresses cannot
/// be read (the dissector already checked they are inside the frame).
#[inline(always)]
pub fn flow_of<F: Frame + ?Sized>(f: &F, ip: &Ip, tcp: &Tcp) -> Option<Flow> {
    match ip.l3 {
        L3::V4 { .. } => {
            let s = f.be32_at(ip.l3_off + 12)?;
            let d = f.be32_at(ip.l3_off + 16)?;
            Some(Flow::v4(s, d, tcp.sport, tcp.dport))
        }
        L3::V6 { .. } => {
            let o = ip.l3_off;
            let saddr = [
                f.be32_at(o + 8)?,
                f.be32_at(o + 12)?,
                f.be32_at(o + 16)?,
                f.be32_at(o + 20)?,
            ];
            let daddr = [
                f.be32_at(o + 24)?,
                f.be32_at(o + 28)?,
                f.be32_at(o + 32)?,
                f.be32_at(o + 36)?,
            ];
            Some(Flow {
                saddr,
                daddr,
                sport: tcp.sport,
                dport: tcp.dport,
            })
        }
    }
}

/// Whether the TCP checksum of a segment without payload (header and options only, as every SYN
/// we answer is) is one a sender's stack leaves: correct, or the pseudo-header sum alone that a
/// sender using checksum offload leaves for its NIC to complete (a veth or virtio peer in the
/// same host hands such frames over uncompleted; the kernel trusts them). A corrupted SYN must
/// not be answered: the kernel would drop it too (`TcpInCsumErrors`). The header is summed in
/// 32-bit words at constant offsets from the TCP header (its length is a multiple of 4), at most
/// 15 of them.
#[inline(always)]
pub fn header_checksum_ok<F: Frame + ?Sized>(f: &F, flow: &Flow, v6: bool, tcp: &Tcp) -> bool {
    let len = tcp.hdr_len;
    let pseudo = pseudo_words(&flow.saddr, &flow.daddr, v6, len as u32);
    let mut acc = pseudo;
    let mut check = 0u32;
    let mut i = 0;
    while i < 15 {
        if 4 * i < len {
            match f.load::<4>(tcp.off + 4 * i) {
                Some(w) => {
                    let w = u32::from_be_bytes(w);
                    if i == 4 {
                        check = w >> 16;
                    }
                    acc += u64::from(w);
                }
                None => return false,
            }
        }
        i += 1;
    }
    fold64(acc) == 0xffff || check == u32::from(fold64(pseudo))
}

/// A SYN to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynRequest {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// The client's flow.
    pub flow: Flow,
    /// Client ISN.
    pub isn: u32,
    /// The SYN's options.
    pub opts: TcpOptions,
    /// ECN setup SYN: ECE and CWR both set (RFC 3168 section 6.1.1).
    pub ecn_setup: bool,
}

impl SynRequest {
    /// Reads the request from a SYN already dissected.
    #[inline(always)]
    pub fn read<F: Frame + ?Sized>(f: &F, ip: &Ip, tcp: &Tcp) -> Option<SynRequest> {
        Some(SynRequest {
            v6: matches!(ip.l3, L3::V6 { .. }),
            flow: flow_of(f, ip, tcp)?,
            isn: tcp.seq,
            opts: tcpopt::parse(f, tcp.off, tcp.hdr_len),
            ecn_setup: tcp.flags & (tcp_flags::ECE | tcp_flags::CWR)
                == tcp_flags::ECE | tcp_flags::CWR,
        })
    }

    /// As [`SynRequest::read`], into `out`; returns false if the addresses cannot be read. (The data
    /// path points `out` into a per-CPU map: the verifier does not track map memory, so the many
    /// paths through the option walk do not carry over into the rest of the program.)
    #[inline(always)]
    pub fn read_into<F: Frame + ?Sized>(f: &F, ip: &Ip, tcp: &Tcp, out: &mut SynRequest) -> bool {
        let Some(flow) = flow_of(f, ip, tcp) else {
            return false;
        };
        out.v6 = matches!(ip.l3, L3::V6 { .. });
        out.flow = flow;
        out.isn = tcp.seq;
        out.ecn_setup =
            tcp.flags & (tcp_flags::ECE | tcp_flags::CWR) == tcp_flags::ECE | tcp_flags::CWR;
        out.opts = tcpopt::parse(f, tcp.off, tcp.hdr_len);
        true
    }

    /// What the cookie of this SYN is made of at `now_ns` under `cfg`: its options as the cookie
    /// carries them (see [`CookieOpts::carried`]; the SYN-ACK offers exactly these), and the
    /// layout its timestamps choose.
    #[inline(always)]
    #[must_use]
    pub fn cookie_input(&self, cfg: &Config, now_ns: u64) -> SynInput {
        let ts = self.opts.ts_ok;
        SynInput {
            flow: self.flow,
            isn: self.isn,
            now_ns,
            opts: self.cookie_opts(cfg).carried(ts),
            ts,
        }
    }

    /// What the cookie records of this SYN under `cfg`.
    #[inline(always)]
    #[must_use]
    pub fn cookie_opts(&self, cfg: &Config) -> CookieOpts {
        // RFC 9293 section 3.7.1: no MSS option means 536 (IPv4) / 1220 (IPv6), index 0.
        let mss = if self.opts.mss == 0 { 0 } else { self.opts.mss };
        CookieOpts {
            mss_idx: mss_index(mss, self.v6),
            wscale: self.opts.wscale,
            sack: self.opts.sack_perm,
            ecn: self.ecn_setup && cfg.flags & flags::ECN != 0,
        }
    }
}

impl SynRequest {
    /// All zero (IPv4, no options).
    pub const ZERO: SynRequest = SynRequest {
        v6: false,
        flow: Flow {
            saddr: [0; 4],
            daddr: [0; 4],
            sport: 0,
            dport: 0,
        },
        isn: 0,
        opts: TcpOptions {
            mss: 0,
            wscale: WSCALE_NONE,
            sack_perm: false,
            ts_ok: false,
            tsval: 0,
            tsecr: 0,
            malformed: false,
            signed: false,
        },
        ecn_setup: false,
    };
}

impl SynAck {
    /// All zero.
    pub const ZERO: SynAck = SynAck {
        ip: [0; 10],
        ip_len: 0,
        tcp: [0; 10],
        tcp_len: 0,
    };

    /// The IP and TCP headers as bytes on the wire.
    #[must_use]
    pub fn bytes(&self) -> ([u8; 40], [u8; 40]) {
        let b =
            |w: &[u32; 10]| -> [u8; 40] { core::array::from_fn(|i| w[i / 4].to_be_bytes()[i % 4]) };
        (b(&self.ip), b(&self.tcp))
    }
}

/// The headers of a SYN-ACK: IP (20 or 40 bytes) and TCP (24 to 40 bytes), checksums included,
/// as 32-bit words (word `i` holds bytes `4i..4i+4`, the first the most significant); words past
/// `ip_len` / `tcp_len` are zero. Words, not bytes: the data path builds, sums and stores them a
/// word at a time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynAck {
    /// IP header.
    pub ip: [u32; 10],
    /// 20 (IPv4) or 40 (IPv6).
    pub ip_len: usize,
    /// TCP header with options.
    pub tcp: [u32; 10],
    /// TCP header length, a multiple of 4.
    pub tcp_len: usize,
}

/// Builds into `out` the SYN-ACK answering `req` with sequence number `cookie`; `tsval` is our
/// timestamp (sent only if the client sent timestamps). Options as Linux orders them: MSS,
/// SACK-permitted + timestamps (or NOP NOP + one of them), NOP + window scale. (`out` rather than
/// a return value: the data path keeps it in a per-CPU map, off its 512-byte stack.)
#[inline(always)]
pub fn build_synack(
    req: &SynRequest,
    cfg: &Config,
    co: CookieOpts,
    cookie: u32,
    tsval: u32,
    out: &mut SynAck,
) {
    let flags = tcp_flags::SYN | tcp_flags::ACK | if co.ecn { tcp_flags::ECE } else { 0 };
    let window = if cfg.window == 0 { 65535 } else { cfg.window };
    let mss = if req.v6 { cfg.mss_v6 } else { cfg.mss_v4 };
    // Options go in five fixed 4-byte words after the header; the booleans only choose the words'
    // values, never where they go. (A write offset that depends on which options are present makes
    // the verifier track every combination exactly; this SYN path then blew past its 1M limit.)
    let (ts, sack, ws) = (req.opts.ts_ok, req.opts.sack_perm, req.opts.has_wscale());
    let nop_ws = u32::from_be_bytes([1, 3, 3, cfg.wscale.min(crate::cookie::WSCALE_MAX)]);
    let nop_sack = u32::from_be_bytes([1, 1, 4, 2]);
    let w0 = u32::from(mss) | 0x0204_0000;
    let (w1, w2, w3, w4, words) = if ts {
        let head = if sack { 0x0402_080a } else { 0x0101_080a };
        (
            head,
            tsval,
            req.opts.tsval,
            if ws { nop_ws } else { 0 },
            4 + u32::from(ws),
        )
    } else {
        let w1 = if sack {
            nop_sack
        } else if ws {
            nop_ws
        } else {
            0
        };
        let w2 = if sack && ws { nop_ws } else { 0 };
        (w1, w2, 0, 0, 1 + u32::from(sack) + u32::from(ws))
    };
    let len = 20 + 4 * words;
    out.tcp = [
        u32::from(req.flow.dport) << 16 | u32::from(req.flow.sport),
        cookie,
        req.isn.wrapping_add(1),
        (len / 4) << 28 | u32::from(flags) << 16 | u32::from(window),
        0,
        w0,
        w1,
        w2,
        w3,
        w4,
    ];
    let ttl = u32::from(cfg.ttl);
    let proto = u32::from(IPPROTO_TCP);
    let ip_len = if req.v6 {
        let (d, s) = (&req.flow.daddr, &req.flow.saddr);
        out.ip = [
            0x6000_0000,
            len << 16 | proto << 8 | ttl,
            d[0],
            d[1],
            d[2],
            d[3],
            s[0],
            s[1],
            s[2],
            s[3],
        ];
        40
    } else {
        let (src, dst) = (req.flow.daddr[3], req.flow.saddr[3]);
        // Version 4, IHL 5, total length; ID 0, DF; TTL, protocol, checksum; addresses.
        let mut ip = [
            0x4500_0000 | (20 + len),
            0x0000_4000,
            ttl << 24 | proto << 16,
            src,
            dst,
        ];
        let c = !fold64(add_words(0, &ip));
        ip[2] |= u32::from(c);
        out.ip = [ip[0], ip[1], ip[2], ip[3], ip[4], 0, 0, 0, 0, 0];
        20
    };
    // Words past `len` are zero and add nothing to the sum.
    let acc = pseudo_words(&req.flow.daddr, &req.flow.saddr, req.v6, len);
    let c = !fold64(add_words(acc, &out.tcp));
    out.tcp[4] = u32::from(c) << 16;
    out.ip_len = ip_len;
    out.tcp_len = len as usize;
}

/// The attributes the kernel needs to create the connection from a verified ACK: the options the
/// cookie recorded, our own window scale, and the ACK's timestamps (`ts`: its TSval and TSecr,
/// from [`tcpopt::timestamps`]).
#[inline(always)]
#[must_use]
pub fn handoff_attrs(
    co: CookieOpts,
    v6: bool,
    cfg: &Config,
    ts: Option<(u32, u32)>,
) -> TcpReqAttrs {
    let wscale_ok = co.wscale != WSCALE_NONE;
    let (rcv_tsval, rcv_tsecr, tstamp_ok) = match ts {
        Some((tsval, tsecr)) => (tsval, tsecr, 1),
        None => (0, 0, 0),
    };
    TcpReqAttrs {
        rcv_tsval,
        rcv_tsecr,
        mss: co.mss(v6),
        rcv_wscale: if wscale_ok {
            cfg.wscale.min(crate::cookie::WSCALE_MAX)
        } else {
            0
        },
        snd_wscale: if wscale_ok { co.wscale } else { 0 },
        ecn_ok: u8::from(co.ecn),
        wscale_ok: u8::from(wscale_ok),
        sack_ok: u8::from(co.sack),
        tstamp_ok,
        usec_ts_ok: 0,
        reserved: [0; 3],
    }
}

/// The TCP pseudo-header sum (RFC 9293 section 3.1, RFC 8200 section 8.1) of a segment of
/// `l4_len` bytes from address words, in the accumulator of [`add_words`]. (An IPv4-mapped
/// address sums to its IPv4 address plus 0xffff, which folds to nothing.)
#[inline(always)]
#[must_use]
pub fn pseudo_words(src: &[u32; 4], dst: &[u32; 4], v6: bool, l4_len: u32) -> u64 {
    let tail = u64::from(l4_len) + u64::from(IPPROTO_TCP);
    if v6 {
        add_words(add_words(tail, src), dst)
    } else {
        tail + u64::from(src[3]) + u64::from(dst[3])
    }
}

#[cfg(test)]
mod tests {
    use core::net::IpAddr;

    use super::*;
    use crate::{
        checksum::verifies,
        cookie::{Key, SLOT_SHIFT, Secrets, check, make},
        craft::{Link, TcpSegment, linux_syn_options, tcp_frame},
        parse::{Dissected, L4, dissect},
    };

    fn syn_frame(v6: bool, options: Vec<u8>, flags: u8) -> Vec<u8> {
        let (s, d): (IpAddr, IpAddr) = if v6 {
            (
                "2001:db8::2".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
            )
        } else {
            ("198.18.0.2".parse().unwrap(), "198.18.0.1".parse().unwrap())
        };
        let mut seg = TcpSegment::new(s, d, 40000, 8080, flags);
        seg.seq = 0x1111_2222;
        seg.options = options;
        tcp_frame(&Link::default(), &seg)
    }

    fn request(f: &[u8]) -> SynRequest {
        let Ok(Dissected::Ip(ip @ Ip { l4: L4::Tcp(t), .. })) = dissect(f) else {
            panic!("not TCP")
        };
        SynRequest::read(f, &ip, &t).expect("request")
    }

    /// Builds the reply frame the way the data path does and checks it parses, checksums, and
    /// carries what was asked for.
    #[test]
    fn header_checksum_is_checked() {
        for v6 in [false, true] {
            let mut f = syn_frame(v6, linux_syn_options(1460, 1, 7), tcp_flags::SYN);
            let Ok(Dissected::Ip(ip @ Ip { l4: L4::Tcp(t), .. })) = dissect(&f[..]) else {
                panic!()
            };
            let flow = flow_of(&f[..], &ip, &t).unwrap();
            assert!(header_checksum_ok(&f[..], &flow, v6, &t));
            let last = t.off + t.hdr_len - 1;
            f[last] ^= 0x40;
            assert!(
                !header_checksum_ok(&f[..], &flow, v6, &t),
                "a flipped option bit must fail"
            );
        }
    }

    /// A SYN whose checksum field holds only the pseudo-header sum (a sender that left it to
    /// checksum offload, as a veth peer does) is taken as sent; one changed bit of it is not.
    #[test]
    fn an_offload_pseudo_header_checksum_is_accepted() {
        for v6 in [false, true] {
            let mut f = syn_frame(v6, linux_syn_options(1460, 1, 7), tcp_flags::SYN);
            let Ok(Dissected::Ip(ip @ Ip { l4: L4::Tcp(t), .. })) = dissect(&f[..]) else {
                panic!()
            };
            let flow = flow_of(&f[..], &ip, &t).unwrap();
            // The pseudo header, summed here byte pair by byte pair (RFC 9293 section 3.1,
            // RFC 8200 section 8.1): addresses, protocol, TCP length.
            let (src, dst) = if v6 {
                (
                    &f[ip.l3_off + 8..ip.l3_off + 24],
                    &f[ip.l3_off + 24..ip.l3_off + 40],
                )
            } else {
                (
                    &f[ip.l3_off + 12..ip.l3_off + 16],
                    &f[ip.l3_off + 16..ip.l3_off + 20],
                )
            };
            let mut sum: u32 = src
                .chunks(2)
                .chain(dst.chunks(2))
                .map(|p| u32::from(u16::from_be_bytes([p[0], p[1]])))
                .sum();
            sum += 6 + u32::try_from(t.hdr_len).unwrap();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            f[t.off + 16..t.off + 18].copy_from_slice(&u16::try_from(sum).unwrap().to_be_bytes());
            assert!(header_checksum_ok(&f[..], &flow, v6, &t), "v6={v6}");
            f[t.off + 17] ^= 1;
            assert!(!header_checksum_ok(&f[..], &flow, v6, &t), "v6={v6}");
        }
    }

    #[test]
    fn synack_round_trip_v4_v6_with_every_option_mix() {
        let cfg = Config::default();
        let secrets = Secrets {
            keys: [Key { k: [3, 4] }, Key::default()],
            current: 0,
            generation: 0,
            ts_offset: [0x0bad_cafe, 0],
        };
        for v6 in [false, true] {
            for (opts, ecn_flags) in [
                (linux_syn_options(1460, 77, 7), 0),
                (vec![], 0),
                (
                    vec![2, 4, 5, 0xb4, 1, 1, 4, 2],
                    tcp_flags::ECE | tcp_flags::CWR,
                ),
                (
                    linux_syn_options(1460, 77, 7),
                    tcp_flags::ECE | tcp_flags::CWR,
                ),
                (vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0], 0),
                (vec![1, 3, 3, 2], 0),
            ] {
                let f = syn_frame(v6, opts, tcp_flags::SYN | ecn_flags);
                let req = request(&f);
                let input = req.cookie_input(&cfg, 9 << SLOT_SHIFT);
                let c = make(&secrets.keys[0], 0, secrets.ts_offset[0], &input);
                let mut sa = SynAck::ZERO;
                build_synack(&req, &cfg, input.opts, c.isn, c.tsval, &mut sa);
                let mut out = f[..14].to_vec();
                let (ip_bytes, tcp_bytes) = sa.bytes();
                out.extend_from_slice(&ip_bytes[..sa.ip_len]);
                out.extend_from_slice(&tcp_bytes[..sa.tcp_len]);
                let Ok(Dissected::Ip(ip @ Ip { l4: L4::Tcp(t), .. })) = dissect(&out[..]) else {
                    panic!("reply does not parse")
                };
                assert_eq!(
                    t.flags & (tcp_flags::SYN | tcp_flags::ACK),
                    tcp_flags::SYN | tcp_flags::ACK
                );
                assert_eq!(
                    t.flags & tcp_flags::ECE != 0,
                    ecn_flags != 0 && req.opts.ts_ok,
                    "ECE answers an ECN setup SYN with timestamps (the cookie has no room for \
                     ECN without)"
                );
                assert_eq!(
                    (t.sport, t.dport, t.ack_seq, t.seq),
                    (8080, 40000, 0x1111_2223, c.isn)
                );
                assert!(t.window > 0);
                let back = flow_of(&out[..], &ip, &t).unwrap();
                assert_eq!((back.saddr, back.daddr), (req.flow.daddr, req.flow.saddr));
                let o = tcpopt::parse(&out[..], t.off, t.hdr_len);
                assert!(!o.malformed);
                assert_eq!(o.mss, if v6 { 1440 } else { 1460 });
                assert_eq!(o.sack_perm, req.opts.sack_perm);
                assert_eq!(o.ts_ok, req.opts.ts_ok);
                if o.ts_ok {
                    assert_eq!((o.tsval, o.tsecr), (c.tsval, req.opts.tsval));
                }
                assert_eq!(o.has_wscale(), req.opts.has_wscale());
                if o.has_wscale() {
                    assert_eq!(o.wscale, 7);
                }
                let tcp = &out[t.off..];
                let be = |a: &[u32; 4]| -> [u8; 16] {
                    core::array::from_fn(|i| a[i / 4].to_be_bytes()[i % 4])
                };
                let acc = if v6 {
                    crate::checksum::pseudo_v6(
                        &be(&back.saddr),
                        &be(&back.daddr),
                        IPPROTO_TCP,
                        tcp.len() as u32,
                    )
                } else {
                    assert!(verifies(0, &out[14..34]), "IPv4 header checksum");
                    crate::checksum::pseudo_v4(
                        back.saddr[3].to_be_bytes(),
                        back.daddr[3].to_be_bytes(),
                        IPPROTO_TCP,
                        tcp.len() as u16,
                    )
                };
                assert!(verifies(acc, tcp), "TCP checksum");
                // The completing ACK decodes to what was negotiated.
                let got = check(
                    &secrets,
                    &req.flow,
                    req.isn,
                    c.isn,
                    o.ts_ok.then_some(o.tsval),
                    9,
                )
                .expect("cookie");
                assert_eq!(got, input.opts);
                let a = handoff_attrs(got, v6, &cfg, o.ts_ok.then_some((o.tsecr + 1, o.tsval)));
                assert_eq!(a.sack_ok, u8::from(req.opts.sack_perm));
                assert_eq!(a.wscale_ok, u8::from(req.opts.has_wscale()));
                assert_eq!(
                    a.snd_wscale,
                    if req.opts.has_wscale() {
                        req.opts.wscale
                    } else {
                        0
                    }
                );
                assert_eq!(a.tstamp_ok, u8::from(req.opts.ts_ok));
                assert_eq!(a.rcv_tsecr, if o.ts_ok { c.tsval } else { 0 });
                assert!(a.mss >= 536);
            }
        }
    }
}
