//! The TCP option walk on arbitrary bytes, at an arbitrary header offset and length (including
//! lengths past 60 and past the frame): never panics, agrees with a plain reference walk over a
//! byte slice, its fields are consistent (window scale clamped, timestamps zero unless found),
//! and `timestamps` (the ACK path's fast path) reads NOP NOP TS where it says, and otherwise agrees
//! with the full walk for every header length a TCP header can have.
#![no_main]

use intercept_common::{
    cookie::{WSCALE_MAX, WSCALE_NONE},
    tcpopt::{MAX_OPTIONS, TcpOptions, parse, timestamps},
};
use libfuzzer_sys::fuzz_target;

/// The walk as RFC 9293 section 3.2 describes it, over the bytes of the frame, with the limits the
/// data path sets (at most `MAX_OPTIONS` options, a header of at most 60 bytes); a value cut off
/// by the end of the frame is not read. Also returns how many timestamps options it read.
fn reference(frame: &[u8], tcp_off: usize, hdr_len: usize) -> (TcpOptions, usize) {
    let mut o = TcpOptions::default();
    let mut timestamps = 0;
    let hdr_len = hdr_len.min(60);
    let byte = |rel: usize| frame.get(tcp_off + rel).copied();
    let bytes = |rel: usize, n: usize| frame.get(tcp_off + rel..tcp_off + rel + n);
    let mut rel = 20;
    for _ in 0..MAX_OPTIONS {
        if rel >= hdr_len {
            break;
        }
        let Some(kind) = byte(rel) else {
            o.malformed = true;
            break;
        };
        match kind {
            0 => break,
            1 => {
                rel += 1;
                continue;
            }
            _ => {}
        }
        let len = usize::from(byte(rel + 1).unwrap_or(0));
        if len < 2 || rel + len > hdr_len {
            o.malformed = true;
            break;
        }
        match (kind, len) {
            (2, 4) => o.mss = bytes(rel + 2, 2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]])),
            (3, 3) => {
                if let Some(w) = byte(rel + 2) {
                    o.wscale = w.min(WSCALE_MAX);
                }
            }
            (4, 2) => o.sack_perm = true,
            (8, 10) => {
                if let Some(b) = bytes(rel + 2, 8) {
                    o.ts_ok = true;
                    o.tsval = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    o.tsecr = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                    timestamps += 1;
                }
            }
            _ => {}
        }
        if kind == 19 || kind == 29 {
            o.signed = true;
        }
        rel += len;
    }
    (o, timestamps)
}

fuzz_target!(|d: &[u8]| {
    let [a, b, frame @ ..] = d else { return };
    // Header length: any value up to 255 (the walk clamps at 60); offset: up to 31.
    let hdr_len = usize::from(*a);
    let tcp_off = usize::from(*b & 0x1f);
    let o = parse(frame, tcp_off, hdr_len);
    let (want, ts_options) = reference(frame, tcp_off, hdr_len);
    assert_eq!(o, want, "hdr_len {hdr_len} off {tcp_off}");
    assert!(o.wscale <= WSCALE_MAX || o.wscale == WSCALE_NONE, "{o:?}");
    assert_eq!(o.has_wscale(), o.wscale != WSCALE_NONE);
    if !o.ts_ok {
        assert_eq!((o.tsval, o.tsecr), (0, 0), "{o:?}");
    }
    let ts = timestamps(frame, tcp_off, hdr_len);
    let walked = o.ts_ok.then_some((o.tsval, o.tsecr));
    let at = tcp_off + 20;
    let word = |off: usize| {
        frame
            .get(off..off + 4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
    };
    // The fast path reads NOP NOP TS when the header is exactly that (32 bytes); else walks.
    let expected = if hdr_len == 32 && word(at) == Some(0x0101_080a) {
        word(at + 4).zip(word(at + 8))
    } else if hdr_len >= 32 {
        walked
    } else {
        None
    };
    assert_eq!(ts, expected, "hdr_len {hdr_len} {o:?}");
    if hdr_len % 4 == 0 {
        // doff * 4: the fast path finds exactly what the walk finds, two timestamps options
        // included (both keep the last, as the kernel does).
        assert_eq!(ts, walked, "hdr_len {hdr_len} {o:?} ({ts_options} timestamps options)");
    }
});
