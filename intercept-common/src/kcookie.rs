//! The kernel-cookie engine's arithmetic: what the kernel's own SYN cookies
//! (net/ipv4/syncookies.c) expect of a SYN-ACK made for them in XDP.
//!
//! The ISN is the kernel's cookie itself, made by the helper `bpf_tcp_gen_syncookie` from the
//! listener; it carries the 4-tuple, the client's ISN, a minute counter and an index into the
//! kernel's MSS table (`msstab`). The other options ride in the low six bits of our TSval, which
//! the client echoes as the TSecr of its ACK: bits 0-3 the client's window scale (15: none),
//! bit 4 SACK-permitted, bit 5 ECN (`cookie_init_timestamp`, decoded by
//! `cookie_timestamp_decode`). The kernel reads the TSecr as it is only with
//! `net.ipv4.tcp_timestamps=2` (timestamps without a random per-connection offset): with 1 it
//! first subtracts an offset of its own (`secure_tcp_ts_off`) our SYN-ACK never added.
//!
//! What the kernel cannot know from the ACK, it computes again: its own window scale, from the
//! listener and the sysctls ([`rcv_wscale`]); our SYN-ACK must have offered that very value.
//! Without timestamps from the client, no option but the MSS survives (the kernel clears them),
//! so the SYN-ACK offers none.
use crate::{
    config::{Config, flags},
    cookie::{CookieOpts, WSCALE_MAX, WSCALE_NONE},
    handshake::SynRequest,
};

/// Bits of the TSval that carry options (`TSBITS`).
pub const TS_BITS: u32 = 6;
/// The window-scale field of the option bits; all ones: no window scaling.
pub const TS_OPT_WSCALE_MASK: u32 = 0xf;
/// SACK-permitted.
pub const TS_OPT_SACK: u32 = 1 << 4;
/// ECN (never set by us: the engine does not negotiate ECN).
pub const TS_OPT_ECN: u32 = 1 << 5;

/// `SOCK_RCVBUF_LOCK` (include/net/sock.h): the application set `SO_RCVBUF`.
pub const SOCK_RCVBUF_LOCK: u8 = 2;

/// The options a kernel cookie's TSval carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TsOptions {
    /// The client's window scale (0..=14), or [`WSCALE_NONE`].
    pub wscale: u8,
    /// SACK permitted.
    pub sack: bool,
}

/// The TSval of a SYN-ACK carrying `o` at monotonic time `now_ns`, as `cookie_init_timestamp`
/// makes it: the millisecond clock with its low six bits replaced by the options, never ahead
/// of the clock (the connection's later timestamps continue from the clock, and the client's
/// PAWS check rejects a TSval that goes backwards).
#[inline(always)]
#[must_use]
pub const fn tsval(now_ns: u64, o: TsOptions) -> u32 {
    let clock = now_ns / 1_000_000;
    let mut bits = if o.wscale > WSCALE_MAX {
        TS_OPT_WSCALE_MASK
    } else {
        o.wscale as u32
    };
    if o.sack {
        bits |= TS_OPT_SACK;
    }
    let mut ts = (clock >> TS_BITS) << TS_BITS | bits as u64;
    if ts > clock {
        ts = ts.wrapping_sub(1 << TS_BITS);
    }
    ts as u32
}

/// What a SYN-ACK for the kernel's cookie offers in answer to `req` under `cfg`, at monotonic
/// time `now_ns`: takes from `req` the options the kernel will not keep (with no timestamps from
/// the client, all but the MSS; the window scale where `cfg.wscale` is [`WSCALE_NONE`], the
/// kernel's window scaling being off; SACK under [`flags::NO_SACK`]), so that
/// [`crate::handshake::build_synack`] offers exactly what the kernel decodes from the ACK; and
/// returns our TSval and the options to build with (no ECN: the engine does not negotiate it).
#[inline(always)]
pub fn offered(req: &mut SynRequest, cfg: &Config, now_ns: u64) -> (u32, CookieOpts) {
    let o = &mut req.opts;
    if !o.ts_ok || cfg.wscale > WSCALE_MAX {
        o.wscale = WSCALE_NONE;
    }
    if !o.ts_ok || cfg.flags & flags::NO_SACK != 0 {
        o.sack_perm = false;
    }
    let tsval = if o.ts_ok {
        tsval(
            now_ns,
            TsOptions {
                wscale: o.wscale,
                sack: o.sack_perm,
            },
        )
    } else {
        0
    };
    let co = CookieOpts {
        mss_idx: 0,
        wscale: o.wscale,
        sack: o.sack_perm,
        ecn: false,
    };
    (tsval, co)
}

/// What the kernel decodes from an ACK's TSecr (`cookie_timestamp_decode`, with window scaling
/// and SACK enabled).
#[inline(always)]
#[must_use]
pub const fn decode(tsecr: u32) -> TsOptions {
    let w = tsecr & TS_OPT_WSCALE_MASK;
    TsOptions {
        wscale: if w == TS_OPT_WSCALE_MASK {
            WSCALE_NONE
        } else {
            w as u8
        },
        sack: tsecr & TS_OPT_SACK != 0,
    }
}

/// The window scale the kernel gives a connection it completes from a cookie, for a listener
/// that sets neither `SO_RCVBUF` nor `TCP_WINDOW_CLAMP` and a route without a window metric
/// (`tcp_select_initial_window`): the scale that fits the largest receive buffer the connection
/// may grow to, `max(tcp_rmem[2], rmem_max)`, in 16 bits. [`WSCALE_NONE`] with
/// `net.ipv4.tcp_window_scaling=0`.
#[inline(always)]
#[must_use]
pub const fn rcv_wscale(tcp_rmem_max: u32, rmem_max: u32, window_scaling: bool) -> u8 {
    if !window_scaling {
        return WSCALE_NONE;
    }
    let space = if tcp_rmem_max > rmem_max {
        tcp_rmem_max
    } else {
        rmem_max
    };
    if space == 0 {
        return 0;
    }
    let log = space.ilog2();
    if log <= 15 {
        0
    } else if log - 15 > WSCALE_MAX as u32 {
        WSCALE_MAX
    } else {
        (log - 15) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsval_carries_the_options_and_never_runs_ahead_of_the_clock() {
        for now_ms in [
            0u64,
            1,
            63,
            64,
            65,
            1_000_000,
            4_294_967_295,
            4_294_967_296 + 7,
        ] {
            for wscale in [0u8, 7, 14, WSCALE_NONE] {
                for sack in [false, true] {
                    let o = TsOptions { wscale, sack };
                    let now_ns = now_ms * 1_000_000 + 999_999;
                    let ts = tsval(now_ns, o);
                    assert_eq!(decode(ts), o, "now {now_ms} ms");
                    // The kernel's clock is 32 bits of milliseconds: within 64 ms behind it.
                    let behind = (now_ms as u32).wrapping_sub(ts);
                    assert!(
                        behind < 64 || now_ms < 64,
                        "now {now_ms}: {ts} is {behind} behind"
                    );
                }
            }
        }
    }

    #[test]
    fn the_bits_are_the_kernels() {
        // syncookies.c: wscale 7 and SACK are 0b01_0111; no window scaling is 0xf.
        assert_eq!(
            tsval(
                128_000_000,
                TsOptions {
                    wscale: 7,
                    sack: true
                }
            ) & 0x3f,
            0x17
        );
        assert_eq!(
            tsval(
                128_000_000,
                TsOptions {
                    wscale: WSCALE_NONE,
                    sack: false
                }
            ) & 0x3f,
            0xf
        );
        assert_eq!(
            decode(0x2f),
            TsOptions {
                wscale: WSCALE_NONE,
                sack: false
            }
        );
    }

    #[test]
    fn offered_keeps_what_the_kernel_keeps() {
        use crate::{cookie::Flow, tcpopt::TcpOptions};
        let syn = |ts_ok| SynRequest {
            v6: false,
            flow: Flow::v4(0xc612_0001, 0xc612_0002, 40000, 80),
            isn: 7,
            opts: TcpOptions {
                mss: 1460,
                wscale: 9,
                sack_perm: true,
                ts_ok,
                tsval: 5,
                tsecr: 0,
                malformed: false,
                signed: false,
            },
            ecn_setup: true,
        };
        let cfg = Config::default();
        let now = 1_000_000_000_000;
        let mut r = syn(true);
        let (ts, co) = offered(&mut r, &cfg, now);
        assert_eq!((r.opts.wscale, r.opts.sack_perm, co.ecn), (9, true, false));
        assert_eq!(
            decode(ts),
            TsOptions {
                wscale: 9,
                sack: true
            }
        );
        // Without timestamps the kernel keeps only the MSS: nothing else is offered.
        let mut r = syn(false);
        let (ts, co) = offered(&mut r, &cfg, now);
        assert_eq!(
            (r.opts.wscale, r.opts.sack_perm, ts, co.ecn),
            (WSCALE_NONE, false, 0, false)
        );
        // The kernel's window scaling or SACK turned off: not offered, and the TSval says so.
        let off = Config {
            wscale: WSCALE_NONE,
            flags: flags::NO_SACK,
            ..Config::default()
        };
        let mut r = syn(true);
        let (ts, _) = offered(&mut r, &off, now);
        assert_eq!((r.opts.wscale, r.opts.sack_perm), (WSCALE_NONE, false));
        assert_eq!(
            decode(ts),
            TsOptions {
                wscale: WSCALE_NONE,
                sack: false
            }
        );
        // What the SYN-ACK then carries: no window-scale option, no SACK-permitted.
        let mut sa = crate::handshake::SynAck::ZERO;
        crate::handshake::build_synack(
            &r,
            &off,
            CookieOpts {
                mss_idx: 0,
                wscale: WSCALE_NONE,
                sack: false,
                ecn: false,
            },
            1,
            ts,
            &mut sa,
        );
        let (_, tcp) = sa.bytes();
        let opts = &tcp[20..sa.tcp_len];
        assert!(
            !opts.windows(2).any(|w| w == [3, 3] || w == [4, 2]),
            "{opts:?}"
        );
    }

    #[test]
    fn rcv_wscale_is_the_kernels_choice() {
        // Linux defaults: tcp_rmem[2] 6 MiB, rmem_max 208 KiB: scale 7.
        assert_eq!(rcv_wscale(6_291_456, 212_992, true), 7);
        assert_eq!(rcv_wscale(4_194_304, 212_992, true), 7);
        assert_eq!(rcv_wscale(4_194_303, 212_992, true), 6);
        assert_eq!(rcv_wscale(32 << 20, 0, true), 10);
        assert_eq!(rcv_wscale(65_535, 0, true), 0);
        assert_eq!(rcv_wscale(131_072, 0, true), 2);
        assert_eq!(rcv_wscale(u32::MAX, u32::MAX, true), 14);
        assert_eq!(rcv_wscale(6_291_456, 212_992, false), WSCALE_NONE);
    }
}
