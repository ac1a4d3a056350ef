//! TCP options of a SYN or of the ACK that completes a handshake (RFC 9293 section 3.2,
//! RFC 7323 for window scale and timestamps, RFC 2018 for SACK-permitted).
//!
//! The walk is bounded ([`MAX_OPTIONS`] options) and reads through [`Frame`], one bounds check per
//! read, so the verifier accepts it; a SYN padded with more options than that keeps what was found
//! before the limit (the handshake then simply negotiates less).
use crate::parse::Frame;

/// Options walked at most. Linux sends 5 on a SYN (MSS, SACK-permitted, timestamps, NOP, wscale).
pub const MAX_OPTIONS: usize = 12;

const KIND_EOL: u8 = 0;
const KIND_NOP: u8 = 1;
const KIND_MSS: u8 = 2;
const KIND_WSCALE: u8 = 3;
const KIND_SACK_PERM: u8 = 4;
const KIND_TIMESTAMP: u8 = 8;

/// What the options said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    /// MSS option value, 0 if absent.
    pub mss: u16,
    /// Window scale, if offered (clamped to 14 as RFC 7323 section 2.3 says).
    pub wscale: Option<u8>,
    /// SACK-permitted seen.
    pub sack_perm: bool,
    /// Timestamps (TSval, TSecr), if present.
    pub ts: Option<(u32, u32)>,
    /// The walk stopped on a malformed option (length < 2 or past the header).
    pub malformed: bool,
}

/// Parses the options of the TCP header at `tcp_off` with header length `hdr_len` (doff * 4).
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(f: &F, tcp_off: usize, hdr_len: usize) -> TcpOptions {
    let mut o = TcpOptions::default();
    let end = tcp_off + hdr_len;
    let mut off = tcp_off + 20;
    for _ in 0..MAX_OPTIONS {
        if off >= end {
            break;
        }
        let Some(kind) = f.u8_at(off) else {
            o.malformed = true;
            break;
        };
        if kind == KIND_EOL {
            break;
        }
        if kind == KIND_NOP {
            off += 1;
            continue;
        }
        let Some(len) = f.u8_at(off + 1) else {
            o.malformed = true;
            break;
        };
        let len = usize::from(len);
        if len < 2 || off + len > end {
            o.malformed = true;
            break;
        }
        match (kind, len) {
            (KIND_MSS, 4) => o.mss = f.be16_at(off + 2).unwrap_or(0),
            (KIND_WSCALE, 3) => o.wscale = f.u8_at(off + 2).map(|w| w.min(crate::cookie::WSCALE_MAX)),
            (KIND_SACK_PERM, 2) => o.sack_perm = true,
            (KIND_TIMESTAMP, 10) => {
                if let (Some(v), Some(e)) = (f.be32_at(off + 2), f.be32_at(off + 6)) {
                    o.ts = Some((v, e));
                }
            }
            _ => {}
        }
        off += len;
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(opts: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h.extend_from_slice(opts);
        while h.len() % 4 != 0 {
            h.push(0);
        }
        h
    }

    #[test]
    fn linux_syn_options() {
        let h = hdr(&crate::craft::linux_syn_options(1460, 0xabcd, 7));
        let o = parse(&h[..], 0, h.len());
        assert_eq!(o, TcpOptions { mss: 1460, wscale: Some(7), sack_perm: true, ts: Some((0xabcd, 0)), malformed: false });
    }

    #[test]
    fn none_and_clamped_and_unknown() {
        let h = hdr(&[]);
        assert_eq!(parse(&h[..], 0, 20), TcpOptions::default());
        let h = hdr(&[3, 3, 20, 30, 4, 1, 2, 2, 4, 0x04, 0xb4]);
        let o = parse(&h[..], 0, h.len());
        assert_eq!((o.wscale, o.mss, o.malformed), (Some(14), 0x04b4, false), "wscale clamped, unknown kind 30 skipped");
    }

    #[test]
    fn malformed_lengths_stop_the_walk() {
        let h = hdr(&[2, 4, 5, 0xb4, 8, 1]);
        let o = parse(&h[..], 0, h.len());
        assert!(o.malformed && o.mss == 1460);
        let h = hdr(&[8, 10, 0, 0]);
        assert!(parse(&h[..], 0, h.len()).malformed, "timestamp running past doff");
        // Header claims 40 bytes but the frame is cut after 24.
        let h = hdr(&[2, 4, 5, 0xb4, 1, 1, 1, 1]);
        assert!(parse(&h[..26], 0, 28).malformed);
    }

    #[test]
    fn walk_is_bounded() {
        let mut opts = vec![1u8; 16];
        opts.extend_from_slice(&[2, 4, 5, 0xb4]);
        let h = hdr(&opts);
        assert_eq!(parse(&h[..], 0, h.len()).mss, 0, "an MSS after 16 NOPs is past the limit");
    }
}
