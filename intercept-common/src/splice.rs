//! Gateway mode: the state of a spliced connection and the arithmetic of the splice, written
//! once for the data path (`intercept-ebpf`'s `gateway` module) and the controller, and tested
//! here on the host.
//!
//! In gateway mode the box forwards between clients and the servers `scope` names. A client's
//! SYN is answered with a cookie SYN-ACK (sequence number `k`), as in host mode; its ACK, once
//! the cookie verifies, becomes the SYN of the connection to the server, with the client's own
//! ISN `c` and the options the cookie carried. The server answers with its ISN `s`; its SYN-ACK
//! is turned into the handshake's ACK and sent back to it, and never reaches the client. From
//! then on both halves are one connection whose numbers differ only on the server's side:
//!
//! - the server's sequence numbers are `k`'s plus `seq_delta = s - k`: subtracted from the
//!   server's sequence numbers, added to the client's acknowledgment numbers and the SACK
//!   blocks it sends (which acknowledge the server's data);
//! - the server's timestamp clock is ours plus `ts_delta`'s complement: the client saw our
//!   TSval in the SYN-ACK, so `ts_delta = our_tsval - server_tsval` is added to the server's
//!   TSvals and subtracted from the TSecrs the client echoes; the client's TSvals reach the
//!   server unchanged (its SYN carried the client's clock);
//! - the server's advertised windows are scaled by its window scale, the client reads them by
//!   ours: rescaled when the two differ ([`rescale_window`]).
//!
//! The client's sequence numbers are the same on both sides (the server's SYN carried `c`), so
//! nothing of the client's data needs translating: the server's acknowledgments and SACK blocks
//! pass as they are.
use crate::{
    checksum::{self, add_words, fold64},
    config::FlowKey,
    cookie::{Flow, WSCALE_NONE},
    handshake::{SynAck, pseudo_words},
    parse::{IPPROTO_TCP, tcp_flags},
};

/// [`Splice::state`]: our SYN went to the server, whose SYN-ACK has not come back.
pub const SYN_SENT: u32 = 1;
/// [`Splice::state`]: the server answered; segments are translated both ways.
pub const OPEN: u32 = 2;
/// [`Splice::state`]: a flow the gateway did not open (learned from the server's side: a
/// connection older than the attachment, an exempt client's, one completed in watch mode):
/// forwarded untranslated, and its client's segments pass in intercept mode.
pub const PASSTHROUGH: u32 = 3;
/// [`Splice::state`]: ended by a RST from either side, or by both FINs; kept (translated as
/// before) for [`LINGER_NS`] so late segments still find their numbers, then freed.
pub const CLOSED: u32 = 4;

/// Bits of [`Splice::flags`].
pub mod splice_flags {
    /// Timestamps are on: the client sent them (the cookie says so) and so did the server.
    pub const TS: u32 = 1;
    /// The client's FIN went through.
    pub const CLIENT_FIN: u32 = 2;
    /// The server's FIN went through.
    pub const SERVER_FIN: u32 = 4;
    /// A data segment of the client waits in `HELD` for the server's SYN-ACK.
    pub const HELD: u32 = 8;
    /// The server answered without timestamps though the client uses them: the client's TS
    /// options still reach it (it ignores them), the server's segments carry none.
    pub const SERVER_NO_TS: u32 = 16;
    /// The server's SYN-ACK came and its numbers are recorded (`seq_delta`, `ts_delta`,
    /// `server_wscale`): set once, by the first one.
    pub const ANSWERED: u32 = 32;
    /// Opened by the gateway for a proven client (not learned): counted against its address
    /// (see [`crate::maps::GW_SOURCES`]).
    pub const OPENED: u32 = 64;
}

/// A spliced connection ([`crate::maps::SPLICE`], keyed by the client-to-server [`FlowKey`]).
/// Created by the data path when a cookie verifies (or when it learns a flow from the server's
/// side); its numbers are written by the data path only; the controller only reads it and
/// deletes it once idle, closed or never answered (see [`idle_verdict`]); the data path deletes
/// an ended one when a new SYN reuses its 4-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Splice {
    /// [`SYN_SENT`], [`OPEN`], [`PASSTHROUGH`] or [`CLOSED`].
    pub state: u32,
    /// [`splice_flags`] bits.
    pub flags: u32,
    /// Monotonic time (ns) the entry was created.
    pub created_ns: u64,
    /// Monotonic time (ns) of the latest segment either way (written without a lock; a torn or
    /// stale value only delays the idle sweep).
    pub last_ns: u64,
    /// The client's ISN (`c`), the SYN to the server's.
    pub client_isn: u32,
    /// Our cookie SYN-ACK's ISN (`k`).
    pub cookie_isn: u32,
    /// `s - k` once [`OPEN`].
    pub seq_delta: u32,
    /// `our_tsval - server_tsval` once [`OPEN`] with timestamps.
    pub ts_delta: u32,
    /// The TSval our SYN-ACK carried (the client's first TSecr), to compute `ts_delta`.
    pub our_tsval: u32,
    /// The client's TSval of its handshake ACK, sent on our SYN to the server.
    pub client_tsval: u32,
    /// The MSS our SYN to the server offers (the client's, as the cookie kept it).
    pub mss: u16,
    /// The client's window scale (`WSCALE_NONE` if it sent none).
    pub client_wscale: u8,
    /// The window scale our SYN-ACK gave the client (`WSCALE_NONE` if none).
    pub our_wscale: u8,
    /// The server's window scale (`WSCALE_NONE` if it sent none).
    pub server_wscale: u8,
    /// 1 if the client sent SACK-permitted (and so our SYN to the server does).
    pub sack: u8,
    /// The window field of the client's handshake ACK (scaled by its window scale), for the
    /// ACK the gateway sends the server on its behalf.
    pub client_window: u16,
    /// The latest acknowledgment the server sent: where it expects the client's next byte (its
    /// RCV.NXT as last seen). A client's RST counts only at exactly this number, a FIN only
    /// near it (see [`observe`]).
    pub client_acked: u32,
    /// The latest acknowledgment the client sent, in the server's sequence space: the server's
    /// RST and FIN are judged against it.
    pub server_acked: u32,
}
const _: () = assert!(size_of::<Splice>() == 64);

/// Largest client data segment the gateway holds while the server has not answered (the MSS of
/// a 1500-byte MTU over IPv4); a larger one is left to the client to send again.
pub const HELD_MAX: usize = 1460;
/// Largest held frame: IPv6 header, a TCP header with the longest options, [`HELD_MAX`].
pub const HELD_FRAME_MAX: usize = 40 + 60 + HELD_MAX;

/// The client's first data segment while the server has not answered yet
/// ([`crate::maps::HELD`]): its IP packet as it arrived, replayed in place of the server's
/// SYN-ACK, so the server's handshake completes with the client's request and the client
/// retransmits nothing.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Held {
    /// Bytes of `frame` in use (the IP packet, from its IP header).
    pub len: u32,
    /// The sequence number of its first byte.
    pub seq: u32,
    /// The IP packet.
    pub frame: [u8; HELD_FRAME_MAX],
}
const _: () = assert!(size_of::<Held>() == 8 + HELD_FRAME_MAX);

/// [`crate::maps::GW_ROLE`] value of an interface facing clients: protected SYNs are answered
/// there, and segments to protected destinations translated.
pub const ROLE_CLIENT: u32 = 1;
/// [`crate::maps::GW_ROLE`] value of an interface facing the servers: segments from protected
/// destinations are translated, the servers' SYN-ACKs completed. Only frames arriving here are
/// trusted to come from a server.
pub const ROLE_SERVER: u32 = 2;

/// How long an entry lives without a segment either way once [`OPEN`] or [`PASSTHROUGH`]:
/// past Linux's default keepalive time (two hours), so an idle connection kept alive by it is
/// never freed under it (conntrack's established timeout is five days; ours is bounded by the
/// table).
pub const IDLE_NS: u64 = 7_800 * 1_000_000_000;
/// How long a [`SYN_SENT`] entry waits for the server's SYN-ACK (the client's data
/// retransmissions send the SYN again meanwhile).
pub const SYN_SENT_NS: u64 = 30 * 1_000_000_000;
/// How long a [`CLOSED`] entry stays, for late segments (retransmitted FINs, their ACKs).
pub const LINGER_NS: u64 = 10 * 1_000_000_000;

/// How far past the receiver's last acknowledgment a FIN may lie and still end a splice's
/// half (1 MiB: a blind sender must guess the sequence number to within it).
pub const FIN_WINDOW: u32 = 1 << 20;
/// How far one acknowledgment may move [`Splice::client_acked`] or [`Splice::server_acked`] on
/// (a quarter of the sequence space: further is taken as old).
const ACK_ADVANCE_MAX: u32 = 1 << 30;

/// The bookkeeping of a splice's segment, after which its state says whether it ended: a RST
/// at exactly the receiver's last acknowledgment (RFC 5961: what the receiver itself accepts;
/// any other is a blind guess, and the receiver ignores it too), or both FINs near it.
/// `from_server`: the segment's direction; `seq` and `ack` in the server's sequence space
/// where they are the server's (a server's sequence number, a client's acknowledgment
/// translated); `len` its payload.
#[inline(always)]
pub fn observe(e: &mut Splice, from_server: bool, flags: u8, seq: u32, len: u32, ack: u32) {
    if flags & tcp_flags::ACK != 0 {
        let cur = if from_server {
            e.client_acked
        } else {
            e.server_acked
        };
        let step = ack.wrapping_sub(cur);
        if step != 0 && step < ACK_ADVANCE_MAX {
            if from_server {
                e.client_acked = ack;
            } else {
                e.server_acked = ack;
            }
        }
    }
    // Where the receiver of this segment expects the sender's next byte.
    let expected = if from_server {
        e.server_acked
    } else {
        e.client_acked
    };
    if flags & tcp_flags::RST != 0 {
        if seq == expected {
            e.state = CLOSED;
        }
        return;
    }
    if flags & tcp_flags::FIN != 0 && seq.wrapping_add(len).wrapping_sub(expected) < FIN_WINDOW {
        e.flags |= if from_server {
            splice_flags::SERVER_FIN
        } else {
            splice_flags::CLIENT_FIN
        };
    }
    let both = splice_flags::CLIENT_FIN | splice_flags::SERVER_FIN;
    if e.flags & both == both {
        e.state = CLOSED;
    }
}

/// Whether the controller frees `s` at `now_ns`: closed and lingered, never answered, or idle.
#[must_use]
pub fn idle_verdict(s: &Splice, now_ns: u64) -> bool {
    let quiet = now_ns.saturating_sub(s.last_ns.max(s.created_ns));
    match s.state {
        SYN_SENT => quiet > SYN_SENT_NS,
        CLOSED => quiet > LINGER_NS,
        _ => quiet > IDLE_NS,
    }
}

/// The key of a segment travelling from server to client: the flow as the client sent it.
#[inline(always)]
#[must_use]
pub const fn client_key(server_side: &FlowKey) -> FlowKey {
    FlowKey {
        saddr: server_side.daddr,
        daddr: server_side.saddr,
        sport: server_side.dport,
        dport: server_side.sport,
    }
}

/// A TCP window field advertised under window scale `from` (`WSCALE_NONE`: unscaled) as read
/// under `to`: the same number of bytes, rounded up to a whole unit as Linux rounds its own
/// window to its scale (rounded down, a window below one unit would read as zero and stall the
/// sender), at most 65,535 units.
#[inline(always)]
#[must_use]
pub const fn rescale_window(win: u16, from: u8, to: u8) -> u16 {
    let from = if from > crate::cookie::WSCALE_MAX {
        0
    } else {
        from
    };
    let to = if to > crate::cookie::WSCALE_MAX {
        0
    } else {
        to
    };
    if from == to {
        return win;
    }
    let bytes = (win as u64) << from;
    let units = (bytes + (1 << to) - 1) >> to;
    if units > 0xffff { 0xffff } else { units as u16 }
}

/// The checksum field after a 32-bit field at byte offset `off` of the summed data changed from
/// `old` to `new` (RFC 1624). An odd offset puts the field's bytes across 16-bit words one byte
/// later, which byte-swaps its contribution to the sum.
#[inline(always)]
#[must_use]
pub const fn update32(check: u16, old: u32, new: u32, off: usize) -> u16 {
    if off & 1 == 0 {
        let c = checksum::update16(check, (old >> 16) as u16, (new >> 16) as u16);
        checksum::update16(c, old as u16, new as u16)
    } else {
        // The delta of the byte-swapped words, byte-swapped back.
        let acc = checksum::add_u16(
            checksum::add_u16(
                checksum::add_u16(checksum::add_u16(0, !(old >> 16) as u16), !old as u16),
                (new >> 16) as u16,
            ),
            new as u16,
        );
        let delta = checksum::fold(acc).swap_bytes();
        !checksum::fold(checksum::add_u16(!check as u32, delta))
    }
}

/// [`update32`] for a 16-bit field.
#[inline(always)]
#[must_use]
pub const fn update16_at(check: u16, old: u16, new: u16, off: usize) -> u16 {
    if off & 1 == 0 {
        checksum::update16(check, old, new)
    } else {
        checksum::update16(check, old.swap_bytes(), new.swap_bytes())
    }
}

/// Builds into `out` the SYN the gateway sends the server for a proven client (`flow`, client
/// to server): the client's ISN, the MSS, window scale and SACK-permitted the cookie kept, and
/// the client's own TSval if it uses timestamps; `window` the SYN's (unscaled) window. Options
/// at fixed places, NOP-padded: MSS, SACK-permitted + timestamps, NOP + window scale (40
/// bytes), or without timestamps MSS, NOP NOP SACK-permitted, NOP + window scale (32 bytes).
#[inline(always)]
pub fn build_syn(flow: &Flow, v6: bool, e: &Splice, window: u16, ttl: u8, out: &mut SynAck) {
    let ts = e.flags & splice_flags::TS != 0;
    let sack = e.sack != 0;
    let nops = 0x0101_0101;
    let ws = if e.client_wscale == WSCALE_NONE {
        nops
    } else {
        u32::from_be_bytes([1, 3, 3, e.client_wscale])
    };
    let (w6, w7, w8, w9, len) = if ts {
        let head = if sack { 0x0402_080a } else { 0x0101_080a };
        (head, e.client_tsval, 0, ws, 40)
    } else {
        let w6 = if sack { 0x0101_0402 } else { nops };
        (w6, ws, 0, 0, 32)
    };
    let tcp = [
        u32::from(flow.sport) << 16 | u32::from(flow.dport),
        e.client_isn,
        0,
        (len / 4) << 28 | u32::from(tcp_flags::SYN) << 16 | u32::from(window),
        0,
        0x0204_0000 | u32::from(e.mss),
        w6,
        w7,
        w8,
        w9,
    ];
    finish_segment(flow, v6, tcp, len, ttl, out);
}

/// Builds into `out` the ACK that completes the server's handshake on the client's behalf
/// (`flow`, client to server): the server's ISN `server_isn` acknowledged, with the client's
/// handshake TSval and the server's `server_tsval` echoed when timestamps are on (the client
/// sent them and the server answered with them).
#[inline(always)]
pub fn build_ack(
    flow: &Flow,
    v6: bool,
    e: &Splice,
    server_isn: u32,
    server_tsval: u32,
    ttl: u8,
    out: &mut SynAck,
) {
    let ts = e.flags & (splice_flags::TS | splice_flags::SERVER_NO_TS) == splice_flags::TS;
    let window = client_window_for_server(e, e.client_window);
    let len = if ts { 32 } else { 20 };
    let tcp = [
        u32::from(flow.sport) << 16 | u32::from(flow.dport),
        e.client_isn.wrapping_add(1),
        server_isn.wrapping_add(1),
        (len / 4) << 28 | u32::from(tcp_flags::ACK) << 16 | u32::from(window),
        0,
        if ts { 0x0101_080a } else { 0 },
        if ts { e.client_tsval } else { 0 },
        if ts { server_tsval } else { 0 },
        0,
        0,
    ];
    finish_segment(flow, v6, tcp, len, ttl, out);
}

/// Builds into `out` a bare RST with sequence number `seq` from `flow.saddr` to `flow.daddr`
/// (the gateway refusing a proven client when the splice table is full: `flow` is then the
/// server-to-client direction).
#[inline(always)]
pub fn build_rst(flow: &Flow, v6: bool, seq: u32, ttl: u8, out: &mut SynAck) {
    // The words past the header are never sent; an opaque zero keeps LLVM from making their
    // zero fill a call to `memset` in the data path.
    let z = core::hint::black_box(0);
    let tcp = [
        u32::from(flow.sport) << 16 | u32::from(flow.dport),
        seq,
        0,
        5 << 28 | u32::from(tcp_flags::RST) << 16,
        0,
        z,
        z,
        z,
        z,
        z,
    ];
    finish_segment(flow, v6, tcp, 20, ttl, out);
}

/// The client's window field as the server must read it: unchanged, unless the server refused
/// window scaling that the client uses (then the client's scaled window is sent unscaled).
#[inline(always)]
#[must_use]
pub const fn client_window_for_server(e: &Splice, win: u16) -> u16 {
    if e.server_wscale == WSCALE_NONE && e.client_wscale != WSCALE_NONE && e.state != SYN_SENT {
        rescale_window(win, e.client_wscale, WSCALE_NONE)
    } else {
        win
    }
}

/// The IP header and TCP checksum of a segment from the client (`flow.saddr`) to the server,
/// whose TCP header words (checksum zero, words past `len` zero) are `tcp`.
#[inline(always)]
fn finish_segment(flow: &Flow, v6: bool, mut tcp: [u32; 10], len: u32, ttl: u8, out: &mut SynAck) {
    let ttl = u32::from(ttl);
    let proto = u32::from(IPPROTO_TCP);
    let acc = pseudo_words(&flow.saddr, &flow.daddr, v6, len);
    tcp[4] = u32::from(!fold64(add_words(acc, &tcp))) << 16;
    out.tcp = tcp;
    out.tcp_len = len as usize;
    if v6 {
        let (s, d) = (&flow.saddr, &flow.daddr);
        out.ip = [
            0x6000_0000,
            len << 16 | proto << 8 | ttl,
            s[0],
            s[1],
            s[2],
            s[3],
            d[0],
            d[1],
            d[2],
            d[3],
        ];
        out.ip_len = 40;
    } else {
        let mut ip = [
            0x4500_0000 | (20 + len),
            0x0000_4000,
            ttl << 24 | proto << 16,
            flow.saddr[3],
            flow.daddr[3],
        ];
        ip[2] |= u32::from(!fold64(add_words(0, &ip)));
        out.ip = [ip[0], ip[1], ip[2], ip[3], ip[4], 0, 0, 0, 0, 0];
        out.ip_len = 20;
    }
}

/// The [`crate::maps::GW_SOURCES`] bucket of a client address (host-order words, IPv4-mapped
/// for IPv4): its IPv4 address, or its IPv6 /64 (what one host is given), hashed with the
/// attachment's own random `key` ([`crate::maps::GW_SOURCE_KEY`]) by multiply-shift (the high
/// bits of the product with an odd 64-bit multiplier: two addresses share a bucket with
/// probability about 2 in 65,536 over the keys), so no one who does not know the key can pick
/// addresses that share a victim's bucket. (Not SipHash: it did not fit in the stack 6.1 gives
/// the stage that would compute it.)
#[inline(always)]
#[must_use]
pub const fn source_bucket(addr: &[u32; 4], key: &crate::cookie::Key) -> u32 {
    let v4 = addr[0] == 0 && addr[1] == 0 && addr[2] == 0xffff;
    let word = if v4 {
        1 << 32 | addr[3] as u64
    } else {
        (addr[0] as u64) << 32 | addr[1] as u64
    };
    let h = (word ^ key.k[0]).wrapping_mul(key.k[1] | 1);
    (h >> (64 - crate::maps::GW_SOURCE_BUCKET_BITS)) as u32
}

/// Whether an entry counts against its client's [`crate::maps::GW_SOURCES`] bucket: one the
/// gateway opened for a proven client ([`splice_flags::OPENED`]; a learned flow does not, even
/// once closed).
#[inline(always)]
#[must_use]
pub const fn counts_against_source(e: &Splice) -> bool {
    e.flags & splice_flags::OPENED != 0
}

/// Key of [`crate::maps::GW_SERVER_OPTS`]: a protected server's address (IPv4-mapped for IPv4)
/// and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServerKey {
    /// The server's address words, host order.
    pub addr: [u32; 4],
    /// The server's port.
    pub port: u16,
    /// Zero.
    pub pad: u16,
}
const _: () = assert!(size_of::<ServerKey>() == 20);

impl ServerKey {
    /// The server of `flow` (client to server).
    #[inline(always)]
    #[must_use]
    pub const fn of(flow: &Flow) -> ServerKey {
        ServerKey {
            addr: flow.daddr,
            port: flow.dport,
            pad: 0,
        }
    }
}

/// Value of [`crate::maps::GW_SERVER_OPTS`]: what a server refused, and when that was learned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerOpts {
    /// [`refused`] bits.
    pub refused: u32,
    /// Zero.
    pub pad: u32,
    /// Monotonic time (ns) it was learned.
    pub learned_ns: u64,
}
const _: () = assert!(size_of::<ServerOpts>() == 16);

/// How long what a server refused is believed: a refused option is no longer offered, so no
/// SYN-ACK can say the server takes it up again; past this, the next client is offered all it
/// offers, and that server's SYN-ACK is learned anew. A server whose configuration changed is
/// thus followed within 10 minutes, at the cost of one client in 10 minutes per server with the
/// options it refuses.
pub const SERVER_OPTS_TTL_NS: u64 = 600 * 1_000_000_000;

impl ServerOpts {
    /// The [`refused`] bits still believed at `now_ns` (none once [`SERVER_OPTS_TTL_NS`]
    /// passed).
    #[inline(always)]
    #[must_use]
    pub const fn refused_at(&self, now_ns: u64) -> u32 {
        if now_ns.saturating_sub(self.learned_ns) < SERVER_OPTS_TTL_NS {
            self.refused
        } else {
            0
        }
    }
}

/// Bits of [`ServerOpts::refused`]: the options a server left out of its SYN-ACK although the
/// gateway's SYN offered them.
pub mod refused {
    /// Timestamps (RFC 7323).
    pub const TIMESTAMPS: u32 = 1;
    /// SACK-permitted (RFC 2018).
    pub const SACK: u32 = 2;
    /// Window scaling (RFC 7323).
    pub const WSCALE: u32 = 4;
}

/// What a server refuses after its SYN-ACK to the SYN of `e` carried timestamps (`ts`),
/// SACK-permitted (`sack`) and a window scale (`wscale`) or not; `old` what was known before.
/// An option the SYN did not offer says nothing of the server: its bit stays as it was. An
/// option the server takes up again (its configuration changed) is no longer refused.
///
/// SACK and window scaling left out are taken for refusals only when the SYN offered
/// timestamps: a Linux server answering with a SYN cookie (`tcp_syncookies=2`, or a full SYN
/// queue) has nowhere to keep them without timestamps and leaves them out for that one SYN
/// (`tcp_conn_request`), and one client without timestamps would otherwise take SACK and window
/// scaling from every client of that server.
#[inline(always)]
#[must_use]
pub const fn learn_refused(old: u32, e: &Splice, ts: bool, sack: bool, wscale: bool) -> u32 {
    let with_ts = e.flags & splice_flags::TS != 0;
    let mut judged = 0;
    let mut out = 0;
    if with_ts {
        judged |= refused::TIMESTAMPS;
        if !ts {
            out |= refused::TIMESTAMPS;
        }
    }
    if e.sack != 0 && (with_ts || sack) {
        judged |= refused::SACK;
        if !sack {
            out |= refused::SACK;
        }
    }
    if e.client_wscale != WSCALE_NONE && (with_ts || wscale) {
        judged |= refused::WSCALE;
        if !wscale {
            out |= refused::WSCALE;
        }
    }
    (old & !judged) | out
}

/// Leaves out of a client's SYN options what its server refuses (`refused` bits), before the
/// cookie records them: the client then agrees with the gateway to what the server will do.
/// Agreed to SACK that the server refused, a client never learns of the segments the server
/// received out of order and recovers every loss towards the server by its retransmission
/// timeout instead of a fast retransmit.
#[inline(always)]
pub fn strip_refused(o: &mut crate::tcpopt::TcpOptions, refused: u32) {
    if refused & refused::TIMESTAMPS != 0 {
        o.ts_ok = false;
        o.tsval = 0;
        o.tsecr = 0;
    }
    if refused & refused::SACK != 0 {
        o.sack_perm = false;
    }
    if refused & refused::WSCALE != 0 {
        o.wscale = WSCALE_NONE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{add_bytes, finish};

    fn sum(b: &[u8]) -> u16 {
        finish(add_bytes(0, b))
    }

    fn same(a: u16, b: u16) -> bool {
        a == b || (a | b) == 0xffff && (a & b) == 0
    }

    proptest::proptest! {
        /// An incremental update of a 32-bit field, at an even or odd offset, gives the
        /// checksum computed afresh.
        #[test]
        fn update32_matches_recompute(mut data in proptest::collection::vec(proptest::num::u8::ANY, 8..80), off in 0usize..76, new in proptest::num::u32::ANY) {
            if data.len() % 2 == 1 { data.push(0); }
            let off = off % (data.len() - 3);
            let before = sum(&data);
            let old = u32::from_be_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]);
            data[off..off + 4].copy_from_slice(&new.to_be_bytes());
            proptest::prop_assert!(same(update32(before, old, new, off), sum(&data)));
        }

        #[test]
        fn update16_at_matches_recompute(mut data in proptest::collection::vec(proptest::num::u8::ANY, 4..80), off in 0usize..78, new in proptest::num::u16::ANY) {
            if data.len() % 2 == 1 { data.push(0); }
            let off = off % (data.len() - 1);
            let before = sum(&data);
            let old = u16::from_be_bytes([data[off], data[off + 1]]);
            data[off..off + 2].copy_from_slice(&new.to_be_bytes());
            proptest::prop_assert!(same(update16_at(before, old, new, off), sum(&data)));
        }

        /// A rescaled window offers the original bytes rounded up to less than one unit of
        /// the new scale (unless it saturates), and never closes an open window.
        #[test]
        fn rescaled_windows_round_up(win in proptest::num::u16::ANY, from in 0u8..15, to in 0u8..15) {
            let out = rescale_window(win, from, to);
            let bytes = u64::from(win) << from;
            let got = u64::from(out) << to;
            proptest::prop_assert!(out == 0xffff || got >= bytes && got - bytes < 1u64 << to);
            proptest::prop_assert!(win == 0 || out > 0);
        }
    }

    #[test]
    fn windows_without_scaling_are_unscaled() {
        let none = crate::cookie::WSCALE_NONE;
        assert_eq!(rescale_window(1000, none, none), 1000);
        assert_eq!(rescale_window(1000, 7, 7), 1000);
        assert_eq!(rescale_window(1000, none, 2), 250);
        assert_eq!(rescale_window(1000, 7, 9), 250);
        assert_eq!(rescale_window(1000, 9, 7), 4000);
        assert_eq!(rescale_window(1, 0, 7), 1, "open stays open");
        assert_eq!(rescale_window(1001, 7, 9), 251);
        assert_eq!(rescale_window(0xffff, 14, 0), 0xffff);
    }

    #[test]
    fn the_sweep_frees_by_state() {
        let s = |state, last_ns| Splice {
            state,
            last_ns,
            created_ns: 1,
            ..Splice::default()
        };
        let now = 100 * 1_000_000_000_u64 + IDLE_NS;
        assert!(idle_verdict(&s(SYN_SENT, now - SYN_SENT_NS - 1), now));
        assert!(!idle_verdict(&s(SYN_SENT, now - SYN_SENT_NS + 1), now));
        assert!(idle_verdict(&s(CLOSED, now - LINGER_NS - 1), now));
        assert!(!idle_verdict(&s(OPEN, now - LINGER_NS - 1), now));
        assert!(idle_verdict(&s(OPEN, now - IDLE_NS - 1), now));
        assert!(!idle_verdict(&s(PASSTHROUGH, now - 1), now));
    }

    fn splice_of(ts: bool, sack: bool, ws: u8) -> Splice {
        Splice {
            state: SYN_SENT,
            flags: if ts { splice_flags::TS } else { 0 },
            client_isn: 0xffff_fff0,
            cookie_isn: 0x1234_5678,
            client_tsval: 0xaabb_ccdd,
            mss: 1460,
            client_wscale: ws,
            our_wscale: 7,
            server_wscale: WSCALE_NONE,
            sack: u8::from(sack),
            client_window: 502,
            ..Splice::default()
        }
    }

    fn frame_of(out: &SynAck) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        if out.ip_len == 40 {
            f[12..14].copy_from_slice(&[0x86, 0xdd]);
        }
        for w in &out.ip[..out.ip_len / 4] {
            f.extend_from_slice(&w.to_be_bytes());
        }
        for w in &out.tcp[..out.tcp_len / 4] {
            f.extend_from_slice(&w.to_be_bytes());
        }
        f
    }

    /// The SYN to the server parses as the kernel would read it: the client's ISN, the cookie's
    /// options, correct checksums, for both families and every option combination.
    #[test]
    fn the_syn_to_the_server_carries_the_clients_handshake() {
        use crate::parse::{Dissected, L4, dissect};
        let flows = [
            Flow::v4(0xc612_0a02, 0xc612_1402, 40000, 80),
            Flow {
                saddr: [0x2001_0db8, 0x10, 0, 2],
                daddr: [0x2001_0db8, 0x20, 0, 2],
                sport: 40000,
                dport: 80,
            },
        ];
        for (i, flow) in flows.iter().enumerate() {
            let v6 = i == 1;
            for (ts, sack, ws) in [
                (true, true, 7),
                (false, true, 7),
                (true, false, WSCALE_NONE),
                (false, false, WSCALE_NONE),
            ] {
                let e = splice_of(ts, sack, ws);
                let mut out = SynAck {
                    ip: [0; 10],
                    ip_len: 0,
                    tcp: [0; 10],
                    tcp_len: 0,
                };
                build_syn(flow, v6, &e, 64240, 64, &mut out);
                let f = frame_of(&out);
                let Ok(Dissected::Ip(ip)) = dissect(&f[..]) else {
                    panic!("not IP")
                };
                let L4::Tcp(tcp) = ip.l4 else {
                    panic!("not TCP")
                };
                assert_eq!(
                    (tcp.seq, tcp.ack_seq, tcp.flags, tcp.window),
                    (e.client_isn, 0, tcp_flags::SYN, 64240)
                );
                let o = crate::tcpopt::parse(&f[..], tcp.off, tcp.hdr_len);
                assert_eq!(
                    (o.mss, o.sack_perm, o.ts_ok, o.wscale),
                    (1460, sack, ts, ws)
                );
                if ts {
                    assert_eq!((o.tsval, o.tsecr), (e.client_tsval, 0));
                }
                let seg = &f[tcp.off..];
                let src = crate::cookie::ip_of(&flow.saddr);
                let dst = crate::cookie::ip_of(&flow.daddr);
                let pseudo = match (src, dst) {
                    (core::net::IpAddr::V4(s), core::net::IpAddr::V4(d)) => {
                        checksum::pseudo_v4(s.octets(), d.octets(), 6, seg.len() as u16)
                    }
                    (core::net::IpAddr::V6(s), core::net::IpAddr::V6(d)) => {
                        checksum::pseudo_v6(&s.octets(), &d.octets(), 6, seg.len() as u32)
                    }
                    _ => unreachable!(),
                };
                assert!(checksum::verifies(pseudo, seg), "TCP checksum");
                if !v6 {
                    assert!(checksum::verifies(0, &f[14..34]), "IP checksum");
                }
            }
        }
    }

    /// The ACK to the server acknowledges its ISN, echoes its TSval, and sends the client's
    /// window unscaled when the server refused scaling.
    #[test]
    fn the_ack_to_the_server_completes_its_handshake() {
        use crate::parse::{Dissected, L4, dissect};
        let flow = Flow::v4(0xc612_0a02, 0xc612_1402, 40000, 80);
        let mut e = splice_of(true, true, 7);
        e.state = OPEN;
        let mut out = SynAck {
            ip: [0; 10],
            ip_len: 0,
            tcp: [0; 10],
            tcp_len: 0,
        };
        build_ack(&flow, false, &e, 0x9000_0000, 0x0102_0304, 64, &mut out);
        let f = frame_of(&out);
        let Ok(Dissected::Ip(ip)) = dissect(&f[..]) else {
            panic!("not IP")
        };
        let L4::Tcp(tcp) = ip.l4 else {
            panic!("not TCP")
        };
        assert_eq!(
            (tcp.seq, tcp.ack_seq, tcp.flags),
            (e.client_isn.wrapping_add(1), 0x9000_0001, tcp_flags::ACK)
        );
        assert_eq!(tcp.window, 502 << 7, "unscaled for the server");
        let o = crate::tcpopt::parse(&f[..], tcp.off, tcp.hdr_len);
        assert_eq!((o.tsval, o.tsecr), (e.client_tsval, 0x0102_0304));
        e.client_window = 600;
        assert_eq!(client_window_for_server(&e, 600), 0xffff, "saturated");
        e.server_wscale = 7;
        build_ack(&flow, false, &e, 0x9000_0000, 0x0102_0304, 64, &mut out);
        let f = frame_of(&out);
        let Ok(Dissected::Ip(ip)) = dissect(&f[..]) else {
            panic!("not IP")
        };
        let L4::Tcp(tcp) = ip.l4 else {
            panic!("not TCP")
        };
        assert_eq!(tcp.window, 600);
        let seg = &f[tcp.off..];
        assert!(checksum::verifies(
            checksum::pseudo_v4([198, 18, 10, 2], [198, 18, 20, 2], 6, seg.len() as u16),
            seg
        ));
    }

    /// A blind RST or FIN ends nothing; the ones the receiver would accept do.
    #[test]
    fn only_segments_at_the_receivers_numbers_end_a_splice() {
        let open = || Splice {
            state: OPEN,
            client_acked: 1_000,
            server_acked: 9_000,
            ..Splice::default()
        };
        let (ack, rst, fin) = (
            tcp_flags::ACK,
            tcp_flags::RST,
            tcp_flags::FIN | tcp_flags::ACK,
        );
        let mut e = open();
        observe(&mut e, false, rst, 1_001, 0, 0);
        observe(&mut e, true, rst | ack, 8_999, 0, 1_000);
        assert_eq!(e.state, OPEN, "RSTs one off the acknowledged number");
        observe(&mut e, false, fin, 1_000 + FIN_WINDOW + 5, 0, 9_000);
        assert_eq!(
            e.flags & splice_flags::CLIENT_FIN,
            0,
            "a FIN far out of the window"
        );
        let mut e = open();
        observe(&mut e, false, rst, 1_000, 0, 0);
        assert_eq!(e.state, CLOSED, "the client's RST at the server's RCV.NXT");
        let mut e = open();
        observe(&mut e, true, rst, 9_000, 0, 0);
        assert_eq!(e.state, CLOSED, "the server's RST at the client's RCV.NXT");
        // Data, acknowledgments, then both FINs.
        let mut e = open();
        observe(&mut e, false, ack, 1_000, 500, 9_000);
        observe(&mut e, true, ack, 9_000, 100, 1_500);
        assert_eq!(e.client_acked, 1_500);
        observe(&mut e, false, fin, 1_500, 0, 9_100);
        assert_eq!(e.server_acked, 9_100);
        assert_eq!(e.state, OPEN, "one FIN");
        observe(&mut e, true, fin, 9_100, 0, 1_501);
        assert_eq!(e.state, CLOSED, "both FINs");
        // An acknowledgment far ahead (forged) does not move the numbers.
        let mut e = open();
        observe(&mut e, false, ack, 1_000, 0, 9_000 + (1 << 31));
        assert_eq!(e.server_acked, 9_000);
    }

    #[test]
    fn the_client_key_swaps_ends() {
        let k = FlowKey {
            saddr: [0, 0, 0xffff, 1],
            daddr: [0, 0, 0xffff, 2],
            sport: 80,
            dport: 40000,
        };
        let c = client_key(&k);
        assert_eq!(
            (c.saddr, c.daddr, c.sport, c.dport),
            (k.daddr, k.saddr, 40000, 80)
        );
        assert_eq!(client_key(&c), k);
    }

    #[test]
    fn servers_refusals_are_learned_for_what_was_offered_only() {
        use super::refused::{SACK, TIMESTAMPS, WSCALE};
        let all = Splice {
            flags: splice_flags::TS,
            sack: 1,
            client_wscale: 7,
            ..Splice::default()
        };
        assert_eq!(learn_refused(0, &all, true, true, true), 0);
        assert_eq!(learn_refused(0, &all, false, true, true), TIMESTAMPS);
        assert_eq!(learn_refused(0, &all, true, false, true), SACK);
        assert_eq!(learn_refused(0, &all, true, true, false), WSCALE);
        assert_eq!(
            learn_refused(0, &all, false, false, false),
            TIMESTAMPS | SACK | WSCALE
        );
        // Taken up again: no longer refused.
        assert_eq!(
            learn_refused(TIMESTAMPS | SACK | WSCALE, &all, true, true, true),
            0
        );
        // Not offered: nothing learned, what was known stays.
        let none = Splice {
            client_wscale: WSCALE_NONE,
            ..Splice::default()
        };
        for old in 0..8 {
            assert_eq!(learn_refused(old, &none, false, false, false), old);
            assert_eq!(learn_refused(old, &none, true, true, true), old);
        }
        let only_sack = Splice {
            sack: 1,
            client_wscale: WSCALE_NONE,
            ..Splice::default()
        };
        // Without timestamps, SACK or window scaling left out may be a SYN cookie's doing:
        // not learned; taken up, they are.
        assert_eq!(
            learn_refused(TIMESTAMPS | WSCALE, &only_sack, false, false, false),
            TIMESTAMPS | WSCALE
        );
        assert_eq!(
            learn_refused(TIMESTAMPS | SACK, &only_sack, false, true, false),
            TIMESTAMPS
        );
        let no_ts = Splice {
            sack: 1,
            client_wscale: 7,
            ..Splice::default()
        };
        assert_eq!(learn_refused(0, &no_ts, false, false, false), 0);
        assert_eq!(learn_refused(SACK | WSCALE, &no_ts, false, true, true), 0);
        assert_eq!(
            learn_refused(SACK | WSCALE, &no_ts, false, false, true),
            SACK
        );
    }

    #[test]
    fn what_a_server_refused_is_believed_for_ten_minutes() {
        let o = ServerOpts {
            refused: refused::SACK,
            pad: 0,
            learned_ns: 1_000,
        };
        assert_eq!(o.refused_at(1_000), refused::SACK);
        assert_eq!(o.refused_at(1_000 + SERVER_OPTS_TTL_NS - 1), refused::SACK);
        assert_eq!(o.refused_at(1_000 + SERVER_OPTS_TTL_NS), 0);
        assert_eq!(
            o.refused_at(0),
            refused::SACK,
            "a clock read before it: believed"
        );
    }

    #[test]
    fn refused_options_are_left_out_of_the_cookie() {
        use super::refused::{SACK, TIMESTAMPS, WSCALE};
        use crate::tcpopt::TcpOptions;
        let offered = TcpOptions {
            mss: 1460,
            wscale: 7,
            sack_perm: true,
            ts_ok: true,
            tsval: 5,
            tsecr: 0,
            ..TcpOptions::default()
        };
        for bits in 0..8 {
            let mut o = offered;
            strip_refused(&mut o, bits);
            assert_eq!(o.mss, 1460, "the MSS is never refused");
            assert_eq!(o.ts_ok, bits & TIMESTAMPS == 0);
            assert_eq!(o.tsval, if bits & TIMESTAMPS == 0 { 5 } else { 0 });
            assert_eq!(o.sack_perm, bits & SACK == 0);
            assert_eq!(o.wscale, if bits & WSCALE == 0 { 7 } else { WSCALE_NONE });
        }
    }

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_slash_64_in_a_keyed_bucket() {
        use crate::cookie::{Key, words_of};
        let key = Key {
            k: [0x9e37_79b9_7f4a_7c15, 0xbf58_476d_1ce4_e5b9],
        };
        let b = |a: &str, key: &Key| source_bucket(&words_of(a.parse().unwrap()), key);
        assert_eq!(
            b("2001:db8:1:2::1", &key),
            b("2001:db8:1:2:ffff::9", &key),
            "one /64"
        );
        assert_ne!(b("2001:db8:1:2::1", &key), b("2001:db8:1:3::1", &key));
        assert_ne!(b("198.18.0.1", &key), b("198.18.0.2", &key));
        // Another attachment's key puts the same addresses elsewhere.
        let other = Key {
            k: [0x94d0_49bb_1331_11eb, 0xd6e8_feb8_6659_fd93],
        };
        let moved = (0..64u32)
            .filter(|i| {
                let a = std::net::Ipv4Addr::from(0xc612_0000 + i).to_string();
                b(&a, &key) != b(&a, &other)
            })
            .count();
        assert!(moved > 60, "{moved} of 64 moved");
        // Neighbouring addresses spread: 4,096 consecutive IPv4 addresses over many buckets.
        let mut seen = std::collections::HashSet::new();
        for i in 0..4096u32 {
            let a = std::net::Ipv4Addr::from(0xc612_0000 + i);
            let k = source_bucket(&words_of(a.into()), &key);
            assert!(k < crate::maps::GW_SOURCE_BUCKETS);
            seen.insert(k);
        }
        assert!(
            seen.len() > 3_900,
            "{} buckets for 4,096 addresses",
            seen.len()
        );
    }
}
