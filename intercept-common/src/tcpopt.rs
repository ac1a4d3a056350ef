//! TCP options of a SYN or of the ACK that completes a handshake (RFC 9293 section 3.2,
//! RFC 7323 for window scale and timestamps, RFC 2018 for SACK-permitted).
//!
//! The walk hops over at most [`MAX_OPTIONS`] options (macOS sends 8 on a SYN, Linux 5), reading
//! through [`Frame`], one bounds check per read. The verifier tracks packet offsets exactly, so an
//! offset that depends on the lengths seen so far makes it explore every combination of lengths
//! ("BPF program is too large. Processed 1000001 insn"); see [`launder`] for how the walk avoids
//! that. A SYN with more options than the limit keeps what was found before it (the handshake then
//! negotiates less).
use crate::parse::Frame;

/// Options walked at most.
pub const MAX_OPTIONS: usize = 10;

const KIND_EOL: u8 = 0;
const KIND_NOP: u8 = 1;
const KIND_MSS: u8 = 2;
const KIND_WSCALE: u8 = 3;
const KIND_SACK_PERM: u8 = 4;
const KIND_TIMESTAMP: u8 = 8;
/// TCP MD5 signature (RFC 2385).
const KIND_MD5SIG: u8 = 19;
/// TCP Authentication Option (RFC 5925).
const KIND_AO: u8 = 29;

/// What the options said. Plain fields with sentinels, no `Option`s: LLVM reads an `Option`'s
/// payload even when it is `None`, and the verifier rejects the stale value it finds in that stack
/// slot ("R7 pointer arithmetic with <<= operator prohibited").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    /// MSS option value, 0 if absent.
    pub mss: u16,
    /// Window scale (clamped to 14, RFC 7323 section 2.3), or [`crate::cookie::WSCALE_NONE`].
    pub wscale: u8,
    /// SACK-permitted seen.
    pub sack_perm: bool,
    /// Timestamps option seen.
    pub ts_ok: bool,
    /// TSval of the timestamps option (0 if absent).
    pub tsval: u32,
    /// TSecr of the timestamps option (0 if absent).
    pub tsecr: u32,
    /// The walk stopped on a malformed option (length < 2 or past the header).
    pub malformed: bool,
    /// A TCP-MD5 (RFC 2385) or TCP-AO (RFC 5925) option: the segment is signed, and a SYN-ACK
    /// must be signed with the peer's key, which only the kernel holds.
    pub signed: bool,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            mss: 0,
            wscale: crate::cookie::WSCALE_NONE,
            sack_perm: false,
            ts_ok: false,
            tsval: 0,
            tsecr: 0,
            malformed: false,
            signed: false,
        }
    }
}

impl TcpOptions {
    /// Whether window scaling was offered.
    #[inline(always)]
    #[must_use]
    pub const fn has_wscale(&self) -> bool {
        self.wscale != crate::cookie::WSCALE_NONE
    }
}

/// The timestamps option of a segment (TSval, TSecr), if it has one: how the ACK path finds the
/// TSecr that carries half of a cookie before it knows whether the cookie is valid. Linux and
/// most stacks send NOP NOP and the option alone (RFC 7323 appendix A), a 32-byte header, which
/// costs two loads; any other layout takes the full walk, which keeps the last timestamps option
/// as the kernel's `tcp_parse_options` does (so a header with two cannot read one way here and
/// another there).
#[inline(always)]
pub fn timestamps<F: Frame + ?Sized>(f: &F, tcp_off: usize, hdr_len: usize) -> Option<(u32, u32)> {
    if hdr_len < 32 {
        // No room for a timestamps option (10 bytes after the 20-byte header, 4-byte aligned).
        return None;
    }
    if hdr_len == 32 && f.be32_at(tcp_off + 20) == Some(0x0101_080a) {
        return Some((f.be32_at(tcp_off + 24)?, f.be32_at(tcp_off + 28)?));
    }
    let o = parse(f, tcp_off, hdr_len);
    o.ts_ok.then_some((o.tsval, o.tsecr))
}

/// Parses the options of the TCP header at `tcp_off` with header length `hdr_len` (doff * 4).
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(f: &F, tcp_off: usize, hdr_len: usize) -> TcpOptions {
    let mut o = TcpOptions::default();
    let hdr_len = if hdr_len > 60 { 60 } else { hdr_len };
    // Offset of the current option from the start of the TCP header (20..=60).
    let mut rel = 20;
    let mut n = 0;
    while n < MAX_OPTIONS {
        n += 1;
        if rel >= hdr_len {
            break;
        }
        let Some(kind) = f.u8_at(tcp_off + rel) else {
            o.malformed = true;
            break;
        };
        if kind == KIND_EOL {
            break;
        }
        if kind == KIND_NOP {
            rel = launder(rel + 1);
            continue;
        }
        let len = match f.u8_at(tcp_off + rel + 1) {
            Some(l) => usize::from(l),
            None => 0,
        };
        if len < 2 || rel + len > hdr_len {
            o.malformed = true;
            break;
        }
        let next = launder(rel + len);
        let at = tcp_off + rel + 2;
        if kind == KIND_MD5SIG || kind == KIND_AO {
            o.signed = true;
        }
        if kind == KIND_MSS && len == 4 {
            o.mss = f.be16_at(at).unwrap_or(0);
        } else if kind == KIND_WSCALE && len == 3 {
            if let Some(w) = f.u8_at(at) {
                o.wscale = if w > crate::cookie::WSCALE_MAX {
                    crate::cookie::WSCALE_MAX
                } else {
                    w
                };
            }
        } else if kind == KIND_SACK_PERM && len == 2 {
            o.sack_perm = true;
        } else if kind == KIND_TIMESTAMP
            && len == 10
            && let (Some(v), Some(e)) = (f.be32_at(at), f.be32_at(at + 4))
        {
            o.ts_ok = true;
            o.tsval = v;
            o.tsecr = e;
        }
        rel = next;
    }
    o
}

/// The option offset, opaque to LLVM and masked to 6 bits. The value is at most 60 whenever it is
/// used, so the mask changes nothing; it gives the verifier the same shape of offset at the top of
/// every hop, so it can prune instead of exploring each combination of option lengths.
#[inline(always)]
fn launder(rel: usize) -> usize {
    core::hint::black_box(rel) & 0x3f
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
        assert_eq!(
            o,
            TcpOptions {
                mss: 1460,
                wscale: 7,
                sack_perm: true,
                ts_ok: true,
                tsval: 0xabcd,
                tsecr: 0,
                malformed: false,
                signed: false,
            }
        );
    }

    #[test]
    fn two_timestamps_options_read_as_the_kernel_reads_them() {
        // NOP NOP TS(1, 2) then TS(3, 4): the kernel keeps the last.
        let h = hdr(&[
            1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1, 8, 10, 0, 0, 0, 3, 0, 0, 0, 4,
        ]);
        assert_eq!(timestamps(&h[..], 0, h.len()), Some((3, 4)));
        assert_eq!(parse(&h[..], 0, h.len()).tsecr, 4);
    }

    #[test]
    fn timestamps_fast_and_slow() {
        // Linux's ACK: NOP NOP TS.
        let h = hdr(&[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]);
        assert_eq!(timestamps(&h[..], 0, h.len()), Some((7, 9)));
        // Another order: the full walk finds it.
        let h = hdr(&[8, 10, 0, 0, 0, 7, 0, 0, 0, 9, 1, 1]);
        assert_eq!(timestamps(&h[..], 0, h.len()), Some((7, 9)));
        // None: no options, or others only.
        assert_eq!(timestamps(&hdr(&[])[..], 0, 20), None);
        let h = hdr(&[1, 1, 4, 2, 2, 4, 5, 0xb4, 1, 1, 1, 1]);
        assert_eq!(timestamps(&h[..], 0, h.len()), None);
        // Cut short: no timestamps rather than a wrong one.
        let h = hdr(&[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]);
        assert_eq!(timestamps(&h[..28], 0, h.len()), None);
    }

    #[test]
    fn signed_segments_are_recognised() {
        // BGP's SYN: MSS, then TCP-MD5 (kind 19, 18 bytes); then TCP-AO (kind 29) after NOPs.
        let mut md5 = vec![2, 4, 5, 0xb4, 19, 18];
        md5.extend([0xaa; 16]);
        let o = parse(&hdr(&md5)[..], 0, hdr(&md5).len());
        assert!(o.signed && o.mss == 1460, "{o:?}");
        let ao = [1, 1, 29, 6, 1, 2, 0, 0];
        assert!(parse(&hdr(&ao)[..], 0, hdr(&ao).len()).signed);
        let plain = crate::craft::linux_syn_options(1460, 1, 7);
        assert!(!parse(&hdr(&plain)[..], 0, hdr(&plain).len()).signed);
    }

    #[test]
    fn none_and_clamped_and_unknown() {
        let h = hdr(&[]);
        assert_eq!(parse(&h[..], 0, 20), TcpOptions::default());
        let h = hdr(&[3, 3, 20, 30, 4, 1, 2, 2, 4, 0x04, 0xb4]);
        let o = parse(&h[..], 0, h.len());
        assert_eq!(
            (o.wscale, o.mss, o.malformed),
            (14, 0x04b4, false),
            "wscale clamped, unknown kind 30 skipped"
        );
    }

    #[test]
    fn malformed_lengths_stop_the_walk() {
        let h = hdr(&[2, 4, 5, 0xb4, 8, 1]);
        let o = parse(&h[..], 0, h.len());
        assert!(o.malformed && o.mss == 1460);
        let h = hdr(&[8, 10, 0, 0]);
        assert!(
            parse(&h[..], 0, h.len()).malformed,
            "timestamp running past doff"
        );
        // Header claims 40 bytes but the frame is cut after 24.
        let h = hdr(&[2, 4, 5, 0xb4, 1, 1, 1, 1]);
        assert!(parse(&h[..26], 0, 28).malformed);
    }

    #[test]
    fn walk_is_bounded() {
        let mut opts = vec![1u8; 10];
        opts.extend_from_slice(&[2, 4, 5, 0xb4]);
        let h = hdr(&opts);
        assert_eq!(
            parse(&h[..], 0, h.len()).mss,
            0,
            "an MSS after 10 NOPs is past the limit"
        );
        // macOS's SYN: MSS, NOP, WS, NOP, NOP, TS, SACK-permitted, EOL: all found.
        let h = hdr(&[
            2, 4, 5, 0xb4, 1, 3, 3, 6, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 4, 2, 0, 0,
        ]);
        let o = parse(&h[..], 0, h.len());
        assert_eq!(
            (o.mss, o.wscale, o.ts_ok, o.sack_perm),
            (1460, 6, true, true)
        );
    }
}
