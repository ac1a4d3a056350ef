//! The handshake, written once for both sides: what a SYN asks for, the SYN-ACK that answers it
//! (headers built in fixed-size buffers with checksums, so the data path only copies them), and
//! the attributes a verified ACK hands to the kernel.
use crate::{
    checksum::{add_bytes, finish, pseudo_v4, pseudo_v6},
    config::{Config, TcpReqAttrs, flags},
    cookie::{CookieOpts, Flow, WSCALE_NONE, mapped, mss_index},
    parse::{Frame, IPPROTO_TCP, Ip, L3, Tcp, tcp_flags},
    tcpopt::{self, TcpOptions},
};

/// The flow of a segment as the client sent it (source = client). `None` if the addresses cannot
/// be read (the dissector already checked they are inside the frame).
#[inline(always)]
pub fn flow_of<F: Frame + ?Sized>(f: &F, ip: &Ip, tcp: &Tcp) -> Option<Flow> {
    match ip.l3 {
        L3::V4 { .. } => {
            let s: [u8; 4] = f.load(ip.l3_off + 12)?;
            let d: [u8; 4] = f.load(ip.l3_off + 16)?;
            Some(Flow::v4(s, d, tcp.sport, tcp.dport))
        }
        L3::V6 { .. } => {
            let saddr: [u8; 16] = f.load(ip.l3_off + 8)?;
            let daddr: [u8; 16] = f.load(ip.l3_off + 24)?;
            Some(Flow { saddr, daddr, sport: tcp.sport, dport: tcp.dport })
        }
    }
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
            ecn_setup: tcp.flags & (tcp_flags::ECE | tcp_flags::CWR) == tcp_flags::ECE | tcp_flags::CWR,
        })
    }

    /// What the cookie records of this SYN under `cfg`.
    #[inline(always)]
    #[must_use]
    pub fn cookie_opts(&self, cfg: &Config) -> CookieOpts {
        // RFC 9293 section 3.7.1: no MSS option means 536 (IPv4) / 1220 (IPv6), index 0.
        let mss = if self.opts.mss == 0 { 0 } else { self.opts.mss };
        CookieOpts {
            mss_idx: mss_index(mss, self.v6),
            wscale: match self.opts.wscale {
                Some(w) => w,
                None => WSCALE_NONE,
            },
            sack: self.opts.sack_perm,
            ecn: self.ecn_setup && cfg.flags & flags::ECN != 0,
        }
    }
}

/// The headers of a SYN-ACK: IP (20 or 40 bytes) and TCP (24 to 40 bytes), checksums included;
/// bytes past `ip_len` / `tcp_len` are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynAck {
    /// IP header.
    pub ip: [u8; 40],
    /// 20 (IPv4) or 40 (IPv6).
    pub ip_len: usize,
    /// TCP header with options.
    pub tcp: [u8; 40],
    /// TCP header length, a multiple of 4.
    pub tcp_len: usize,
}

#[inline(always)]
fn put(buf: &mut [u8; 40], at: usize, bytes: &[u8]) {
    let mut i = 0;
    while i < bytes.len() {
        buf[at + i] = bytes[i];
        i += 1;
    }
}

/// Builds the SYN-ACK answering `req` with sequence number `cookie`; `tsval` is our timestamp (sent
/// only if the client sent timestamps). Options as Linux orders them: MSS, SACK-permitted +
/// timestamps (or NOP NOP + one of them), NOP + window scale.
#[inline(always)]
#[must_use]
pub fn build_synack(req: &SynRequest, cfg: &Config, co: CookieOpts, cookie: u32, tsval: u32) -> SynAck {
    let mut tcp = [0u8; 40];
    put(&mut tcp, 0, &req.flow.dport.to_be_bytes());
    put(&mut tcp, 2, &req.flow.sport.to_be_bytes());
    put(&mut tcp, 4, &cookie.to_be_bytes());
    put(&mut tcp, 8, &req.isn.wrapping_add(1).to_be_bytes());
    tcp[13] = tcp_flags::SYN | tcp_flags::ACK | if co.ecn { tcp_flags::ECE } else { 0 };
    let window = if cfg.window == 0 { 65535 } else { cfg.window };
    put(&mut tcp, 14, &window.to_be_bytes());
    let mss = if req.v6 { cfg.mss_v6 } else { cfg.mss_v4 };
    let m = mss.to_be_bytes();
    put(&mut tcp, 20, &[2, 4, m[0], m[1]]);
    let mut len = 24;
    match req.opts.ts {
        Some((client_tsval, _)) => {
            if req.opts.sack_perm {
                put(&mut tcp, len, &[4, 2, 8, 10]);
            } else {
                put(&mut tcp, len, &[1, 1, 8, 10]);
            }
            put(&mut tcp, len + 4, &tsval.to_be_bytes());
            put(&mut tcp, len + 8, &client_tsval.to_be_bytes());
            len += 12;
        }
        None => {
            if req.opts.sack_perm {
                put(&mut tcp, len, &[1, 1, 4, 2]);
                len += 4;
            }
        }
    }
    if req.opts.wscale.is_some() {
        put(&mut tcp, len, &[1, 3, 3, cfg.wscale.min(crate::cookie::WSCALE_MAX)]);
        len += 4;
    }
    tcp[12] = ((len / 4) as u8) << 4;

    let mut ip = [0u8; 40];
    let (ip_len, acc) = if req.v6 {
        ip[0] = 0x60;
        put(&mut ip, 4, &(len as u16).to_be_bytes());
        ip[6] = IPPROTO_TCP;
        ip[7] = cfg.ttl;
        put(&mut ip, 8, &req.flow.daddr);
        put(&mut ip, 24, &req.flow.saddr);
        (40, pseudo_v6(&req.flow.daddr, &req.flow.saddr, IPPROTO_TCP, len as u32))
    } else {
        let (s, d) = (&req.flow.daddr, &req.flow.saddr);
        let (src, dst) = ([s[12], s[13], s[14], s[15]], [d[12], d[13], d[14], d[15]]);
        ip[0] = 0x45;
        put(&mut ip, 2, &((20 + len) as u16).to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = cfg.ttl;
        ip[9] = IPPROTO_TCP;
        put(&mut ip, 12, &src);
        put(&mut ip, 16, &dst);
        let c = finish(add_bytes(0, &ip[..20]));
        put(&mut ip, 10, &c.to_be_bytes());
        (20, pseudo_v4(src, dst, IPPROTO_TCP, len as u16))
    };
    // Bytes past `len` are zero and add nothing to the sum.
    let c = finish(add_bytes(acc, &tcp));
    put(&mut tcp, 16, &c.to_be_bytes());
    SynAck { ip, ip_len, tcp, tcp_len: len }
}

/// The attributes the kernel needs to create the connection from a verified ACK: the options the
/// cookie recorded, our own window scale, and the ACK's timestamps (if any).
#[inline(always)]
#[must_use]
pub fn handoff_attrs(co: CookieOpts, v6: bool, cfg: &Config, ack_ts: Option<(u32, u32)>) -> TcpReqAttrs {
    let wscale_ok = co.wscale != WSCALE_NONE;
    let (rcv_tsval, rcv_tsecr, tstamp_ok) = match ack_ts {
        Some((v, e)) => (v, e, 1),
        None => (0, 0, 0),
    };
    TcpReqAttrs {
        rcv_tsval,
        rcv_tsecr,
        mss: co.mss(v6),
        rcv_wscale: if wscale_ok { cfg.wscale.min(crate::cookie::WSCALE_MAX) } else { 0 },
        snd_wscale: if wscale_ok { co.wscale } else { 0 },
        ecn_ok: u8::from(co.ecn),
        wscale_ok: u8::from(wscale_ok),
        sack_ok: u8::from(co.sack),
        tstamp_ok,
        usec_ts_ok: 0,
        reserved: [0; 3],
    }
}

/// The address bytes of a flow in its own family (4 or 16), for building frames on the host.
#[must_use]
pub fn is_mapped_v4(a: &[u8; 16]) -> bool {
    a[..12] == mapped([0, 0, 0, 0])[..12]
}

#[cfg(test)]
mod tests {
    use core::net::IpAddr;

    use super::*;
    use crate::{
        checksum::verifies,
        cookie::{Key, Secrets, check, make},
        craft::{Link, TcpSegment, linux_syn_options, tcp_frame},
        parse::{Dissected, L4, dissect},
    };

    fn syn_frame(v6: bool, options: Vec<u8>, flags: u8) -> Vec<u8> {
        let (s, d): (IpAddr, IpAddr) = if v6 {
            ("2001:db8::2".parse().unwrap(), "2001:db8::1".parse().unwrap())
        } else {
            ("198.18.0.2".parse().unwrap(), "198.18.0.1".parse().unwrap())
        };
        let mut seg = TcpSegment::new(s, d, 40000, 8080, flags);
        seg.seq = 0x1111_2222;
        seg.options = options;
        tcp_frame(&Link::default(), &seg)
    }

    fn request(f: &[u8]) -> SynRequest {
        let Ok(Dissected::Ip(ip @ Ip { l4: L4::Tcp(t), .. })) = dissect(f) else { panic!("not TCP") };
        SynRequest::read(f, &ip, &t).expect("request")
    }

    /// Builds the reply frame the way the data path does and checks it parses, checksums, and
    /// carries what was asked for.
    #[test]
    fn synack_round_trip_v4_v6_with_every_option_mix() {
        let cfg = Config::default();
        let secrets = Secrets { keys: [Key { k: [3, 4] }, Key::default()], current: 0, generation: 0 };
        for v6 in [false, true] {
            for (opts, ecn_flags) in [
                (linux_syn_options(1460, 77, 7), 0),
                (vec![], 0),
                (vec![2, 4, 5, 0xb4, 1, 1, 4, 2], tcp_flags::ECE | tcp_flags::CWR),
                (vec![1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0], 0),
                (vec![1, 3, 3, 2], 0),
            ] {
                let f = syn_frame(v6, opts, tcp_flags::SYN | ecn_flags);
                let req = request(&f);
                let co = req.cookie_opts(&cfg);
                let cookie = make(&secrets.keys[0], 0, &req.flow, req.isn, 9, co);
                let sa = build_synack(&req, &cfg, co, cookie, 0xabcd);
                let mut out = f[..14].to_vec();
                out.extend_from_slice(&sa.ip[..sa.ip_len]);
                out.extend_from_slice(&sa.tcp[..sa.tcp_len]);
                let Ok(Dissected::Ip(ip @ Ip { l4: L4::Tcp(t), .. })) = dissect(&out[..]) else { panic!("reply does not parse") };
                assert_eq!(t.flags & (tcp_flags::SYN | tcp_flags::ACK), tcp_flags::SYN | tcp_flags::ACK);
                assert_eq!(t.flags & tcp_flags::ECE != 0, ecn_flags != 0, "ECE answers an ECN setup SYN");
                assert_eq!((t.sport, t.dport, t.ack_seq, t.seq), (8080, 40000, 0x1111_2223, cookie));
                assert!(t.window > 0);
                let back = flow_of(&out[..], &ip, &t).unwrap();
                assert_eq!((back.saddr, back.daddr), (req.flow.daddr, req.flow.saddr));
                let o = tcpopt::parse(&out[..], t.off, t.hdr_len);
                assert!(!o.malformed);
                assert_eq!(o.mss, if v6 { 1440 } else { 1460 });
                assert_eq!(o.sack_perm, req.opts.sack_perm);
                assert_eq!(o.ts, req.opts.ts.map(|(v, _)| (0xabcd, v)));
                assert_eq!(o.wscale, req.opts.wscale.map(|_| 7));
                let tcp = &out[t.off..];
                let acc = if v6 {
                    pseudo_v6(&back.saddr, &back.daddr, IPPROTO_TCP, tcp.len() as u32)
                } else {
                    verifies(0, &out[14..34]).then_some(()).expect("IPv4 header checksum");
                    pseudo_v4(back.saddr[12..].try_into().unwrap(), back.daddr[12..].try_into().unwrap(), IPPROTO_TCP, tcp.len() as u16)
                };
                assert!(verifies(acc, tcp), "TCP checksum");
                // The completing ACK decodes to what was negotiated.
                let got = check(&secrets, &req.flow, req.isn, cookie, 9).expect("cookie");
                let a = handoff_attrs(got, v6, &cfg, o.ts.map(|(v, e)| (e + 1, v)));
                assert_eq!(a.sack_ok, u8::from(req.opts.sack_perm));
                assert_eq!(a.wscale_ok, u8::from(req.opts.wscale.is_some()));
                assert_eq!(a.snd_wscale, req.opts.wscale.unwrap_or(0));
                assert_eq!(a.tstamp_ok, u8::from(req.opts.ts.is_some()));
                assert!(a.mss >= 536);
            }
        }
    }
}
