//! Gateway mode: the protection of servers behind this box (see `intercept_common::splice` for
//! the splice and its numbers). One program on the client-facing and the server-facing
//! interfaces; `GW_ROLE` says which a frame arrived on, and only frames arriving on a
//! server-facing one are taken to come from a server.
//!
//! Client side: protected SYNs are answered with cookies (intercept) or tracked (watch), as in
//! host mode; a verified cookie ACK becomes the SYN to the server; segments of a splice are
//! translated and forwarded. Server side: the server's SYN-ACK becomes the handshake's ACK (or
//! the client's held first data segment) and goes back to the server; everything else of a
//! splice is translated and forwarded to the client. Forwarding: the kernel's route lookup
//! (`bpf_fib_lookup`), then an XDP redirect when the route leaves through one of the gateway's
//! interfaces and its neighbour is known; otherwise the kernel forwards.
use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, bpf_fib_lookup as FibLookup, xdp_action},
    helpers::generated::{
        bpf_fib_lookup, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
        bpf_xdp_store_bytes,
    },
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};
use intercept_common::{
    Counter,
    config::{FlowKey, Mode, flags},
    cookie::{self, Flow, WSCALE_NONE, slot_of},
    handshake::{SynAck, flow_of},
    maps::{
        GW_STAGE_CLIENT, GW_STAGE_COMPLETE, GW_STAGE_COOKIE, GW_STAGE_FORWARD, GW_STAGE_OPEN,
        GW_STAGE_REPLAY, GW_STAGE_SERVER, GW_STAGE_SYN,
    },
    parse::{
        Dissected, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, Frame, IPV4_MIN_HLEN, IPV6_HLEN, Ip, L3, L4,
        MAX_VLANS, TCP_MAX_HLEN_MASK, TcpKind, VLAN_HLEN, classify, dissect, tcp_flags,
    },
    splice::{
        self, CLOSED, HELD_FRAME_MAX, Held, OPEN, PASSTHROUGH, ROLE_SERVER, SYN_SENT, ServerKey,
        ServerOpts, Splice, splice_flags, update16_at, update32,
    },
    tcpopt,
};

use crate::{
    events::Abort,
    frame::Pkt,
    maps::{
        CONFIG, GW_PORTS, GW_PROGS, GW_ROLE, GW_SERVER_OPTS, GW_SOURCE_KEY, GW_SOURCES, HALF_OPEN,
        HELD, SECRETS, SPLICE, WATCH,
    },
    scope,
    stats::{aborted, count, drop, pass},
};

/// Per-CPU scratch of the gateway: what is built or copied here is too large for the stack.
pub struct GwScratch {
    /// A segment the gateway builds (SYN, ACK, RST).
    seg: SynAck,
    /// A route lookup.
    fib: FibLookup,
    /// A client data segment being held.
    held: Held,
    /// A splice entry being created.
    entry: Splice,
    /// A server's SYN-ACK options (see [`server_options`]).
    opts: tcpopt::TcpOptions,
    /// What `gw_open` is to do ([`OPEN_NEW`] or [`RESEND_SYN`]).
    op: u32,
    /// A client's TSval and TSecr (see [`client_timestamps`]).
    ts: [u32; 2],
}

/// See [`GwScratch`].
#[map(name = "GW_SCRATCH")]
static GW_SCRATCH: PerCpuArray<GwScratch> = PerCpuArray::with_max_entries(1, 0);

/// `-EEXIST`: inserting an existing key with `BPF_NOEXIST`.
const EEXIST: i32 = -17;

/// The verdict of a stage that translated its segment for forwarding: its program then
/// tail-calls `gw_forward`. Not an XDP action.
const FORWARD: u32 = 0x100;
/// The verdict of `gw_client` for a verified cookie: `gw_open` creates the splice staged in the
/// scratch map's entry and sends the SYN to the server. Not an XDP action.
const OPEN_NEW: u32 = 0x101;
/// The verdict of `gw_client` for a retransmission of the held segment: `gw_open` sends the SYN
/// to the server again. Not an XDP action.
const RESEND_SYN: u32 = 0x102;
/// The verdict of `gw_client` for a segment of no splice: `gw_cookie` decides. Not an XDP
/// action.
const UNKNOWN_FLOW: u32 = 0x103;
/// The verdict of `gw_server` for a server's SYN-ACK of a splice: `gw_complete` completes it.
/// Not an XDP action.
const COMPLETE: u32 = 0x104;
/// The verdict of `gw_complete` when the client's data waits: `gw_replay` sends it to the
/// server in place of the SYN-ACK. Not an XDP action.
const REPLAY: u32 = 0x105;

/// Entry of `xdp_gateway`: counts and classifies the frame and tail-calls the stage that
/// handles it (see `intercept_common::maps::GW_PROGS`).
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> u32 {
    count(Counter::Packets);
    let d = dissect(&Pkt::new(ctx));
    crate::account(&d);
    let (Ok(Dissected::Ip(ip)), Some(cfg)) = (d, CONFIG.get(0)) else {
        return pass(Counter::Passed);
    };
    let mode = Mode::effective(cfg);
    let L4::Tcp(tcp) = ip.l4 else {
        // As in host mode: nothing a server behind us could reassemble into a SYN passes.
        if mode == Mode::Intercept {
            if ip.l4 == L4::SynFragment {
                return drop(Counter::SynFragmentDropped);
            }
            if ip.l4.unwalked_chain() {
                return drop(Counter::Ipv6ChainDropped);
            }
        }
        return pass(Counter::Passed);
    };
    // SAFETY: ctx is the program's own context.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    // SAFETY: read-only lookup.
    let from_server = unsafe { GW_ROLE.get(&ingress) }.is_some_and(|r| *r == ROLE_SERVER);
    if classify(tcp.flags) == TcpKind::Ack {
        // Most of what crosses the gateway: a segment of an open splice, translated here
        // without a tail call or a second dissection.
        let verdict = established(ctx, &ip, &tcp, u32::from(from_server));
        if verdict != NOT_ESTABLISHED {
            return finish(ctx, verdict);
        }
    }
    let stage = if from_server {
        GW_STAGE_SERVER
    } else {
        match (mode, classify(tcp.flags)) {
            (Mode::Intercept | Mode::Watch, TcpKind::Syn) => GW_STAGE_SYN,
            (_, TcpKind::Syn | TcpKind::SynAck) => return pass(Counter::Passed),
            _ => GW_STAGE_CLIENT,
        }
    };
    stage_to(ctx, stage)
}

/// [`established`]: not a segment of an open splice; the stages decide.
const NOT_ESTABLISHED: u32 = 0x1ff;

/// A segment (ACK, data, FIN; no SYN or RST) of an open or learned splice: translated (an
/// open one) and [`FORWARD`]; anything else [`NOT_ESTABLISHED`]. `from_server`: it arrived on
/// a server-facing interface. The scope is not asked: a splice exists only for a flow that
/// was protected when it was opened, and must outlive a change of scope.
#[inline(never)]
fn established(
    ctx: &XdpContext,
    ip: &Ip,
    tcp: &intercept_common::parse::Tcp,
    from_server: u32,
) -> u32 {
    let Some(f) = flow_of(&Pkt::new(ctx), ip, tcp) else {
        return NOT_ESTABLISHED;
    };
    let key = if from_server != 0 {
        splice::client_key(&FlowKey::of(&f))
    } else {
        FlowKey::of(&f)
    };
    let Some(e) = SPLICE.get_ptr_mut(&key) else {
        return NOT_ESTABLISHED;
    };
    // SAFETY: a valid map value; only this flow's segments write it (see `Splice`).
    let e = unsafe { &mut *e };
    match e.state {
        OPEN => {
            e.last_ns = crate::clock::now_ns();
            let ok = if from_server != 0 {
                server_to_client(ctx, tcp, e)
            } else {
                client_to_server(ctx, tcp, e)
            };
            if !ok {
                return pass(Counter::Malformed);
            }
            count(Counter::GwSpliced);
            FORWARD
        }
        PASSTHROUGH => {
            e.last_ns = crate::clock::now_ns();
            splice::observe(
                e,
                from_server != 0,
                tcp.flags,
                tcp.seq,
                tcp.payload_len as u32,
                tcp.ack_seq,
            );
            FORWARD
        }
        _ => NOT_ESTABLISHED,
    }
}

/// Tail-calls the stage `index`; returns only if it is missing.
#[inline(always)]
fn stage_to(ctx: &XdpContext, index: u32) -> u32 {
    // SAFETY: a tail call with the program's own context.
    unsafe { GW_PROGS.tail_call(ctx, index) };
    aborted(Abort::Gateway, i64::from(index))
}

/// Re-dissects the frame for a stage (the entry's dissection does not survive the tail call):
/// its IP and TCP headers, or the verdict for anything else.
#[inline(always)]
fn tcp_of(ctx: &XdpContext) -> Result<(Ip, intercept_common::parse::Tcp), u32> {
    let mut ip = core::mem::MaybeUninit::<Ip>::uninit();
    if dissect_into(ctx, ip.as_mut_ptr()) == 0 {
        return Err(pass(Counter::Passed));
    }
    // SAFETY: `dissect_into` wrote it.
    let ip = unsafe { ip.assume_init() };
    let L4::Tcp(tcp) = ip.l4 else {
        return Err(pass(Counter::Passed));
    };
    Ok((ip, tcp))
}

/// Dissects the frame into `out` if it is TCP (1), else leaves it (0). Not inlined: the
/// dissector's temporaries then live in a frame of their own, popped before the stage's calls,
/// not in the stage's, which every call chain of the stage counts against the 512-byte stack.
#[inline(never)]
fn dissect_into(ctx: &XdpContext, out: *mut Ip) -> u32 {
    // Opaque, so LLVM passes the context itself, not the packet bounds it would load from it
    // (scalars to the verifier, which then refuses the packet pointers made from them).
    let ctx = core::hint::black_box(ctx);
    match dissect(&Pkt::new(ctx)) {
        Ok(Dissected::Ip(ip)) if matches!(ip.l4, L4::Tcp(_)) => {
            // SAFETY: `out` points to the caller's uninitialised Ip.
            unsafe { out.write(ip) };
            1
        }
        _ => 0,
    }
}

/// Stage `gw_syn`: a protected SYN from a client, answered with a cookie (intercept) or
/// tracked (watch).
#[inline(always)]
pub fn stage_syn(ctx: &XdpContext) -> u32 {
    let (ip, tcp) = match tcp_of(ctx) {
        Ok(x) => x,
        Err(v) => return v,
    };
    let Some(cfg) = CONFIG.get(0) else {
        return pass(Counter::Passed);
    };
    let _ = reuse(ctx, &ip, &tcp);
    let verdict = if Mode::effective(cfg) == Mode::Intercept {
        crate::synack::handle_own_cookie(ctx, &ip, &tcp)
    } else {
        crate::watch::syn(ctx, &ip, &tcp)
    };
    if verdict == xdp_action::XDP_ABORTED {
        crate::events::log_abort(ctx);
    }
    verdict
}

/// A new SYN of a 4-tuple whose splice has ended: the ended splice goes (1), so that the new
/// handshake's ACK opens a splice of its own instead of being translated with the old one's
/// numbers. (The controller frees ended splices too, later; a second delete is harmless.)
#[inline(never)]
fn reuse(ctx: &XdpContext, ip: &Ip, tcp: &intercept_common::parse::Tcp) -> u32 {
    let Some(f) = flow_of(&Pkt::new(ctx), ip, tcp) else {
        return 0;
    };
    let key = FlowKey::of(&f);
    // SAFETY: read-only lookup.
    match unsafe { SPLICE.get(&key) } {
        Some(e) if e.state == CLOSED => {
            let _ = SPLICE.remove(&key);
            let _ = HELD.remove(&key);
            1
        }
        _ => 0,
    }
}

/// Stage `gw_client`: a client's segment other than a SYN.
#[inline(always)]
pub fn stage_client(ctx: &XdpContext) -> u32 {
    let (ip, tcp) = match tcp_of(ctx) {
        Ok(x) => x,
        Err(v) => return v,
    };
    finish(ctx, client_side(ctx, &ip, &tcp))
}

/// Stage `gw_server`: a segment from a server.
#[inline(always)]
pub fn stage_server(ctx: &XdpContext) -> u32 {
    let (ip, tcp) = match tcp_of(ctx) {
        Ok(x) => x,
        Err(v) => return v,
    };
    finish(ctx, server_side(ctx, &ip, &tcp))
}

/// Stage `gw_forward`: forwards a segment a stage translated.
#[inline(always)]
pub fn stage_forward(ctx: &XdpContext) -> u32 {
    let verdict = forward(ctx);
    if verdict == xdp_action::XDP_ABORTED {
        crate::events::log_abort(ctx);
    }
    verdict
}

/// A stage's verdict: [`FORWARD`] goes on to `gw_forward`, [`OPEN_NEW`] and [`RESEND_SYN`] to
/// `gw_open`.
#[inline(always)]
fn finish(ctx: &XdpContext, verdict: u32) -> u32 {
    if verdict == FORWARD {
        if CONFIG
            .get(0)
            .is_some_and(|c| c.flags & flags::GW_REDIRECT != 0)
        {
            return stage_to(ctx, GW_STAGE_FORWARD);
        }
        return pass(Counter::Passed);
    }
    if verdict == UNKNOWN_FLOW {
        return stage_to(ctx, GW_STAGE_COOKIE);
    }
    if verdict == COMPLETE {
        return stage_to(ctx, GW_STAGE_COMPLETE);
    }
    if verdict == REPLAY {
        return stage_to(ctx, GW_STAGE_REPLAY);
    }
    if verdict == OPEN_NEW || verdict == RESEND_SYN {
        if let Some(s) = GW_SCRATCH.get_ptr_mut(0) {
            // SAFETY: this CPU's scratch, read by the stage called next on this CPU.
            unsafe { (*s).op = verdict };
        }
        return stage_to(ctx, GW_STAGE_OPEN);
    }
    if verdict == xdp_action::XDP_ABORTED {
        crate::events::log_abort(ctx);
    }
    verdict
}

/// A segment from a client (not a SYN): a splice's is translated (or held, while the server
/// has not answered); any other goes on to `gw_cookie` ([`UNKNOWN_FLOW`]).
#[inline(never)]
fn client_side(ctx: &XdpContext, ip: &Ip, tcp: &intercept_common::parse::Tcp) -> u32 {
    let pkt = Pkt::new(ctx);
    let Some(flow) = flow_of(&pkt, ip, tcp) else {
        return pass(Counter::Malformed);
    };
    let Some(cfg) = CONFIG.get(0) else {
        return pass(Counter::Passed);
    };
    match judge(&flow) {
        OUT_OF_SCOPE => return pass(Counter::Passed),
        EXEMPT => return pass(Counter::PassExempt),
        _ => {}
    }
    let key = FlowKey::of(&flow);
    let now = crate::clock::now_ns();
    if let Some(e) = SPLICE.get_ptr_mut(&key) {
        // SAFETY: a valid map value; only this flow's segments write it (see `Splice`).
        let e = unsafe { &mut *e };
        e.last_ns = now;
        return match e.state {
            SYN_SENT => pending(ctx, ip, tcp, e),
            PASSTHROUGH => {
                splice::observe(
                    e,
                    false,
                    tcp.flags,
                    tcp.seq,
                    tcp.payload_len as u32,
                    tcp.ack_seq,
                );
                FORWARD
            }
            _ => {
                if !client_to_server(ctx, tcp, e) {
                    return pass(Counter::Malformed);
                }
                count(Counter::GwSpliced);
                FORWARD
            }
        };
    }
    let _ = cfg;
    UNKNOWN_FLOW
}

/// Stage `gw_cookie`: a client's segment of no splice (see [`cookie_side`]).
#[inline(always)]
pub fn stage_cookie(ctx: &XdpContext) -> u32 {
    let (ip, tcp) = match tcp_of(ctx) {
        Ok(x) => x,
        Err(v) => return v,
    };
    finish(ctx, cookie_side(ctx, &ip, &tcp))
}

/// A client's segment of no splice: a watched handshake's completes it; otherwise a valid
/// cookie opens the connection to the server (in `gw_open`), and in intercept mode anything
/// else is dropped.
#[inline(never)]
fn cookie_side(ctx: &XdpContext, ip: &Ip, tcp: &intercept_common::parse::Tcp) -> u32 {
    let pkt = Pkt::new(ctx);
    let Some(flow) = flow_of(&pkt, ip, tcp) else {
        return pass(Counter::Malformed);
    };
    let Some(cfg) = CONFIG.get(0) else {
        return pass(Counter::Passed);
    };
    let key = FlowKey::of(&flow);
    let now = crate::clock::now_ns();
    let mode = Mode::effective(cfg);
    if (mode == Mode::Watch || cfg.flags & flags::TRACKING != 0)
        && let Some(h) = HALF_OPEN.get_ptr_mut(&key)
    {
        // SAFETY: a valid map value.
        let h = unsafe { &mut *h };
        if tcp.flags & tcp_flags::RST != 0 {
            // Counted, never untracked: only the server knows whether its sequence number
            // ended the handshake, and a blind RST must not hide a half-open one from the
            // watch timeout, which resets it on both ends if it is still there.
            h.resets += 1;
            return pass(Counter::Passed);
        }
        if h.answered != 0 && tcp.ack_seq == h.server_isn.wrapping_add(1) {
            // The handshake completed through the box: no longer half-open, and its
            // connection passes in intercept mode too.
            let _ = HALF_OPEN.remove(&key);
            count(Counter::HalfOpenCompleted);
            learn(&key, now, tcp.seq, tcp.ack_seq);
        }
        return pass(Counter::Passed);
    }
    if tcp.flags & tcp_flags::RST != 0 {
        // Nothing of ours to reset; the server judges it as without us.
        return pass(Counter::Passed);
    }
    let strict = mode == Mode::Intercept;
    let Some(secrets) = SECRETS.get(0) else {
        return pass(Counter::PassNoSecret);
    };
    let ts = if client_timestamps(ctx, tcp.off, tcp.hdr_len) != 0 {
        GW_SCRATCH.get(0).map(|s| (s.ts[0], s.ts[1]))
    } else {
        None
    };
    match cookie::check(
        secrets,
        &flow,
        tcp.seq.wrapping_sub(1),
        tcp.ack_seq.wrapping_sub(1),
        ts.map(|(_, tsecr)| tsecr),
        slot_of(now),
    ) {
        Ok(co) => {
            count(Counter::AckValid);
            let Some(s) = GW_SCRATCH.get_ptr_mut(0) else {
                return aborted(Abort::Gateway, 0);
            };
            // SAFETY: this CPU's scratch.
            let e = unsafe { &mut (*s).entry };
            let v6 = matches!(ip.l3, L3::V6 { .. });
            let (tsval, tsecr, ts_flag) = match ts {
                Some((v, e)) => (v, e, splice_flags::TS),
                None => (0, 0, 0),
            };
            e.state = SYN_SENT;
            e.flags = ts_flag | splice_flags::OPENED;
            e.created_ns = now;
            e.last_ns = now;
            e.client_isn = tcp.seq.wrapping_sub(1);
            e.cookie_isn = tcp.ack_seq.wrapping_sub(1);
            e.seq_delta = 0;
            e.ts_delta = 0;
            e.our_tsval = tsecr;
            e.client_tsval = tsval;
            e.mss = co.mss(v6);
            e.client_wscale = co.wscale;
            e.our_wscale = if co.wscale == WSCALE_NONE {
                WSCALE_NONE
            } else if cfg.wscale > cookie::WSCALE_MAX {
                cookie::WSCALE_MAX
            } else {
                cfg.wscale
            };
            e.server_wscale = WSCALE_NONE;
            e.sack = u8::from(co.sack);
            e.client_window = tcp.window;
            e.client_acked = tcp.seq;
            e.server_acked = 0;
            OPEN_NEW
        }
        Err(_) if strict => drop(Counter::AckBadMac),
        Err(_) => pass(Counter::Passed),
    }
}

/// Stage `gw_open`: a proven client's splice is created ([`OPEN_NEW`]), or its SYN sent
/// again ([`RESEND_SYN`]); which, `gw_client` left in the scratch map's `op`.
#[inline(always)]
pub fn stage_open(ctx: &XdpContext) -> u32 {
    finish(ctx, open_stage(ctx))
}

/// The work of [`stage_open`], in a frame of its own: the stage's entry frame then stays
/// small, and its longest call chain within the 512-byte stack.
#[inline(never)]
fn open_stage(ctx: &XdpContext) -> u32 {
    let (ip, tcp) = match tcp_of(ctx) {
        Ok(x) => x,
        Err(v) => return v,
    };
    if GW_SCRATCH.get(0).map_or(0, |s| s.op) == RESEND_SYN {
        resend(ctx, &ip, &tcp)
    } else {
        open(ctx, &ip, &tcp)
    }
}

/// Sends the SYN of a splice still waiting for its server again.
#[inline(never)]
fn resend(ctx: &XdpContext, ip: &Ip, tcp: &intercept_common::parse::Tcp) -> u32 {
    let pkt = Pkt::new(ctx);
    match flow_of(&pkt, ip, tcp).and_then(|f| SPLICE.get_ptr(&FlowKey::of(&f))) {
        // SAFETY: a valid map value.
        Some(e) => to_syn(ctx, ip, tcp, unsafe { &*e }),
        None => drop(Counter::GwHeldLost),
    }
}

/// A proven client: its splice (staged in the scratch entry) is created, its data (if the ACK
/// carries any) held, and the ACK becomes the SYN to the server. A full table refuses the
/// client with a RST.
#[inline(never)]
fn open(ctx: &XdpContext, ip: &Ip, tcp: &intercept_common::parse::Tcp) -> u32 {
    let pkt = Pkt::new(ctx);
    let Some(flow) = flow_of(&pkt, ip, tcp) else {
        return pass(Counter::Malformed);
    };
    let key = FlowKey::of(&flow);
    let Some(s) = GW_SCRATCH.get_ptr_mut(0) else {
        return aborted(Abort::Gateway, 0);
    };
    // SAFETY: this CPU's scratch.
    let s = unsafe { &mut *s };
    // What its address holds already (see `intercept_common::maps::GW_SOURCES`).
    let bucket = GW_SOURCE_KEY
        .get(0)
        .map_or(0, |k| splice::source_bucket(&key.saddr, k));
    let held = GW_SOURCES.get_ptr_mut(bucket);
    let limit = WATCH.get(0).map_or(0, |w| u64::from(w.splices_per_source));
    let at_limit = match held {
        // SAFETY: a valid map value (read racing other CPUs' adds: at worst a few over).
        Some(n) if limit != 0 => (unsafe { *n }) >= limit,
        _ => false,
    };
    if at_limit {
        return refuse(ctx, ip, &flow, tcp.ack_seq, Counter::GwSourceLimit);
    }
    match SPLICE.insert(&key, &s.entry, u64::from(BPF_NOEXIST)) {
        Ok(()) => {}
        // Another CPU opened it with the same ACK's duplicate: that one sends the SYN.
        Err(e) if e == EEXIST => return drop(Counter::GwHeldLost),
        Err(_) => return refuse(ctx, ip, &flow, tcp.ack_seq, Counter::GwTableFull),
    }
    if let Some(n) = held {
        // SAFETY: a valid map value, added to atomically (other CPUs add to it too; the BPF
        // target's atomic types have no fetch_add, see main.rs).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                n, 1,
            )
        };
    }
    if tcp.payload_len > 0 {
        hold(ctx, ip, tcp, &key);
    }
    let Some(e) = SPLICE.get_ptr_mut(&key) else {
        return aborted(Abort::Gateway, 0);
    };
    // SAFETY: a valid map value.
    to_syn(ctx, ip, tcp, unsafe { &*e })
}

/// A client segment while the server has not answered: the first data segment is held, a
/// retransmission of it sends the SYN again (ours may have been lost), anything else waits for
/// the client's retransmission.
#[inline(never)]
fn pending(ctx: &XdpContext, ip: &Ip, tcp: &intercept_common::parse::Tcp, e: &mut Splice) -> u32 {
    if tcp.flags & tcp_flags::RST != 0 {
        // To the server, which judges it against the request its SYN made; the splice ends
        // only with one the server accepts (at the client's ISN + 1: it sent no data yet).
        if tcp.seq == e.client_isn.wrapping_add(1) {
            e.state = CLOSED;
        }
        return FORWARD;
    }
    // Only the client's first bytes (at its ISN + 1, acknowledging our cookie) are held: a
    // segment anywhere else is not its first (or not its at all), and held it would take the
    // place of the request the server's handshake completes with.
    if tcp.payload_len == 0
        || tcp.seq != e.client_isn.wrapping_add(1)
        || tcp.ack_seq != e.cookie_isn.wrapping_add(1)
    {
        return drop(Counter::GwHeldLost);
    }
    let pkt = Pkt::new(ctx);
    let Some(flow) = flow_of(&pkt, ip, tcp) else {
        return pass(Counter::Malformed);
    };
    let key = FlowKey::of(&flow);
    // SAFETY: read-only lookup.
    match unsafe { HELD.get(&key) } {
        None => {
            if hold(ctx, ip, tcp, &key) {
                e.flags |= splice_flags::HELD;
                xdp_action::XDP_DROP
            } else {
                drop(Counter::GwHeldLost)
            }
        }
        Some(h) if h.seq == tcp.seq => RESEND_SYN,
        Some(_) => drop(Counter::GwHeldLost),
    }
}

/// Copies the client's data segment (its IP packet) into `HELD`; false if it cannot.
#[inline(always)]
#[expect(
    clippy::manual_range_contains,
    reason = "two comparisons give the verifier the bound of the helper's length; `contains` compiles to one it cannot follow"
)]
fn hold(ctx: &XdpContext, ip: &Ip, tcp: &intercept_common::parse::Tcp, key: &FlowKey) -> bool {
    let len = match ip.l3 {
        L3::V4 { total_len, .. } => total_len,
        L3::V6 { payload_len } => IPV6_HLEN + payload_len,
    };
    let ip_hlen = match ip.l3 {
        L3::V4 { hdr_len, .. } => hdr_len,
        L3::V6 { .. } => IPV6_HLEN,
    };
    // Replayed, it is found again by its IP header alone (no extension headers).
    if len > HELD_FRAME_MAX || len < IPV4_MIN_HLEN || tcp.off != ip.l3_off + ip_hlen {
        return false;
    }
    let Some(s) = GW_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch.
    let h = unsafe { &mut (*s).held };
    h.len = len as u32;
    h.seq = tcp.seq;
    // SAFETY: `len` is within the frame buffer (checked above); the helper checks the packet.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            ip.l3_off as u32,
            h.frame.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if rc != 0 || HELD.insert(key, h, u64::from(BPF_NOEXIST)).is_err() {
        return false;
    }
    count(Counter::GwHeld);
    if let Some(e) = SPLICE.get_ptr_mut(key) {
        // SAFETY: a valid map value.
        unsafe { (*e).flags |= splice_flags::HELD };
    }
    true
}

/// Turns the client's segment into the SYN to the server and forwards it.
#[inline(always)]
fn to_syn(ctx: &XdpContext, ip: &Ip, tcp: &intercept_common::parse::Tcp, e: &Splice) -> u32 {
    let pkt = Pkt::new(ctx);
    let Some(flow) = flow_of(&pkt, ip, tcp) else {
        return pass(Counter::Malformed);
    };
    let v6 = matches!(ip.l3, L3::V6 { .. });
    let ttl = pkt.u8_at(ip.l3_off + if v6 { 7 } else { 8 }).unwrap_or(64);
    let Some(s) = GW_SCRATCH.get_ptr_mut(0) else {
        return aborted(Abort::Gateway, 0);
    };
    // SAFETY: this CPU's scratch.
    let seg = unsafe { &mut (*s).seg };
    let window = splice::rescale_window(tcp.window, e.client_wscale, WSCALE_NONE);
    splice::build_syn(&flow, v6, e, window, ttl, seg);
    if !write_segment(ctx, ip.l3_off, seg, false) {
        return aborted(Abort::Gateway, 0);
    }
    count(Counter::GwSynSent);
    FORWARD
}

/// Refuses a proven client whose splice the full table has no room for, or whose address holds
/// its share of it (`counter` says which): its ACK becomes a RST back to it.
#[inline(always)]
fn refuse(ctx: &XdpContext, ip: &Ip, flow: &Flow, ack_seq: u32, counter: Counter) -> u32 {
    let Some(s) = GW_SCRATCH.get_ptr_mut(0) else {
        return aborted(Abort::Gateway, 0);
    };
    // SAFETY: this CPU's scratch.
    let seg = unsafe { &mut (*s).seg };
    let back = flow.reversed();
    splice::build_rst(&back, matches!(ip.l3, L3::V6 { .. }), ack_seq, 64, seg);
    if !write_segment(ctx, ip.l3_off, seg, true) {
        return aborted(Abort::Gateway, 0);
    }
    count(counter);
    xdp_action::XDP_TX
}

/// A segment from a server (arrived on a server-facing interface).
#[inline(never)]
fn server_side(ctx: &XdpContext, ip: &Ip, tcp: &intercept_common::parse::Tcp) -> u32 {
    let pkt = Pkt::new(ctx);
    let Some(from_server) = flow_of(&pkt, ip, tcp) else {
        return pass(Counter::Malformed);
    };
    let flow = from_server.reversed();
    let scope = judge(&flow);
    if scope == OUT_OF_SCOPE {
        return pass(Counter::Passed);
    }
    let key = FlowKey::of(&flow);
    let now = crate::clock::now_ns();
    let kind = classify(tcp.flags);
    let Some(e) = SPLICE.get_ptr_mut(&key) else {
        if kind == TcpKind::SynAck
            && let Some(h) = HALF_OPEN.get_ptr_mut(&key)
        {
            // A watched handshake: the box resets it with these numbers if it times out.
            // SAFETY: a valid map value.
            unsafe {
                (*h).server_isn = tcp.seq;
                (*h).answered = 1;
            }
            return pass(Counter::Passed);
        }
        if kind == TcpKind::Ack && scope != EXEMPT {
            // An established connection the gateway did not open (older than the attachment):
            // from now on it is known. Only from the server's side, and never from a SYN-ACK:
            // a server acknowledges data only of a handshake that completed, so no spoofed
            // SYN makes the gateway learn a flow. An exempt client's segments pass anyway.
            learn(&key, now, tcp.ack_seq, tcp.seq);
        }
        return pass(Counter::Passed);
    };
    // SAFETY: a valid map value; only this flow's segments write it.
    let e = unsafe { &mut *e };
    e.last_ns = now;
    match (e.state, kind) {
        (PASSTHROUGH, _) => {
            splice::observe(
                e,
                true,
                tcp.flags,
                tcp.seq,
                tcp.payload_len as u32,
                tcp.ack_seq,
            );
            FORWARD
        }
        (_, TcpKind::SynAck) => COMPLETE,
        (SYN_SENT, TcpKind::Rst) => {
            // The server refused the connection (no listener): the client, which believes
            // it open, is reset at the sequence number it expects.
            e.state = CLOSED;
            let _ = HELD.remove(&key);
            let seq = e.cookie_isn.wrapping_add(1);
            let Some(h) = pkt.span::<20>(tcp.off) else {
                return pass(Counter::Malformed);
            };
            // SAFETY: the fixed header is inside the frame (the span).
            unsafe {
                let check = get16(h, 16);
                let flags_word = get16(h, 12);
                let new_flags = flags_word & !u16::from(tcp_flags::ACK);
                let c = update32(check, tcp.seq, seq, 4);
                let c = update32(c, tcp.ack_seq, 0, 8);
                let c = update16_at(c, flags_word, new_flags, 12);
                put32(h, 4, seq);
                put32(h, 8, 0);
                put16(h, 12, new_flags);
                put16(h, 16, c);
            }
            count(Counter::GwServerReset);
            FORWARD
        }
        (SYN_SENT, _) => drop(Counter::GwSynAckMismatch),
        _ => {
            if kind == TcpKind::Rst {
                count(Counter::GwServerReset);
            }
            if !server_to_client(ctx, tcp, e) {
                return pass(Counter::Malformed);
            }
            count(Counter::GwSpliced);
            FORWARD
        }
    }
}

/// [`judge`]: the flow's destination is not protected.
const OUT_OF_SCOPE: u32 = 0;
/// [`judge`]: protected.
const PROTECTED: u32 = 1;
/// [`judge`]: protected, but the source is exempt.
const EXEMPT: u32 = 2;

/// Whether `flow` (client to server) is protected and its client exempt. Not inlined: the
/// lookups' many paths end here, in one verdict, instead of multiplying everything after them
/// for the verifier.
#[inline(never)]
fn judge(flow: &Flow) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        return OUT_OF_SCOPE;
    };
    if !scope::protected(flow, cfg) {
        OUT_OF_SCOPE
    } else if scope::exempt(flow, cfg) {
        EXEMPT
    } else {
        PROTECTED
    }
}

/// The options of a server's SYN-ACK the splice needs (window scale, timestamps, SACK), walked in a
/// frame of their own and returned through the scratch map (see [`judge`] for why).
#[inline(never)]
fn server_options(ctx: &XdpContext, tcp_off: usize, hdr_len: usize) -> u32 {
    let pkt = Pkt::new(ctx);
    let tcp_off = tcp_off & 0x3ff;
    let w = walk(&pkt, tcp_off, hdr_len);
    let mut o = tcpopt::TcpOptions::default();
    let ws = launder(w.wscale);
    if ws != 0
        && let Some(p) = pkt.span::<3>(tcp_off + ws)
    {
        // SAFETY: the option's 3 bytes are inside the frame (the span).
        let v = unsafe { *p.add(2) };
        o.wscale = if v > cookie::WSCALE_MAX {
            cookie::WSCALE_MAX
        } else {
            v
        };
    }
    o.sack_perm = w.sack_perm != 0;
    // Options the walk did not reach may be there: nothing is learned from them.
    o.malformed = !w.complete;
    let ts = launder(w.ts);
    if ts != 0
        && let Some(p) = pkt.span::<10>(tcp_off + ts)
    {
        o.ts_ok = true;
        // SAFETY: the option's 10 bytes are inside the frame (the span).
        (o.tsval, o.tsecr) = unsafe { (get32(p, 2), get32(p, 6)) };
    }
    if let Some(s) = GW_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch.
        unsafe { (*s).opts = o };
    }
    0
}

/// Whether the client's segment has timestamps; if so, they are left in the scratch map's
/// `ts` (see [`judge`] for why not inlined).
#[inline(never)]
fn client_timestamps(ctx: &XdpContext, tcp_off: usize, hdr_len: usize) -> u32 {
    let Some((tsval, tsecr)) = tcpopt::timestamps(&Pkt::new(ctx), tcp_off, hdr_len) else {
        return 0;
    };
    if let Some(s) = GW_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch.
        unsafe { (*s).ts = [tsval, tsecr] };
        return 1;
    }
    0
}

/// Records a connection the gateway did not open, to be forwarded untranslated, with the
/// numbers each end last acknowledged (see [`splice::observe`]).
#[inline(always)]
fn learn(key: &FlowKey, now: u64, client_acked: u32, server_acked: u32) {
    // Zero fields from an opaque zero (see `watch::syn`): literal zeros become `memset`.
    let zero = core::hint::black_box(0u32);
    let e = Splice {
        state: PASSTHROUGH,
        flags: zero,
        created_ns: now,
        last_ns: now,
        client_isn: zero,
        cookie_isn: zero,
        seq_delta: zero,
        ts_delta: zero,
        our_tsval: zero,
        client_tsval: zero,
        mss: zero as u16,
        client_wscale: WSCALE_NONE,
        our_wscale: WSCALE_NONE,
        server_wscale: WSCALE_NONE,
        sack: zero as u8,
        client_window: zero as u16,
        client_acked,
        server_acked,
    };
    if SPLICE.insert(key, &e, u64::from(BPF_NOEXIST)).is_ok() {
        count(Counter::GwLearned);
    }
}

/// The server's SYN-ACK: the splice opens (its numbers recorded the first time), and the
/// SYN-ACK becomes the client's held data segment, or the handshake's ACK, sent back to the
/// server. It never reaches the client.
#[inline(never)]
fn complete(ctx: &XdpContext, ip: &Ip, tcp: &intercept_common::parse::Tcp, e: &mut Splice) -> u32 {
    if tcp.ack_seq != e.client_isn.wrapping_add(1) {
        return drop(Counter::GwSynAckMismatch);
    }
    let _ = server_options(ctx, tcp.off, tcp.hdr_len);
    let Some(o) = GW_SCRATCH.get(0).map(|s| s.opts) else {
        return aborted(Abort::Gateway, 0);
    };
    if e.flags & splice_flags::ANSWERED == 0 {
        if e.state != SYN_SENT {
            // The client reset it before the server answered: no splice to complete (the
            // server's request expires on its own).
            return drop(Counter::GwSynAckMismatch);
        }
        e.seq_delta = tcp.seq.wrapping_sub(e.cookie_isn);
        e.server_acked = tcp.seq.wrapping_add(1);
        e.server_wscale = if e.client_wscale == WSCALE_NONE {
            WSCALE_NONE
        } else {
            o.wscale
        };
        if e.flags & splice_flags::TS != 0 {
            if o.ts_ok {
                e.ts_delta = e.our_tsval.wrapping_sub(o.tsval);
            } else {
                e.flags |= splice_flags::SERVER_NO_TS;
            }
        }
        e.flags |= splice_flags::ANSWERED;
        learn_server(ctx, ip, tcp, e);
        // Last, and kept last by the compiler: a client segment on another CPU that sees the
        // splice open finds its numbers written (x86 keeps stores in order; so does the BPF
        // JIT of every architecture with a weaker model, which fences atomics only, hence
        // this is the order that matters here).
        // SAFETY: a valid map value.
        unsafe { (&raw mut e.state).write_volatile(OPEN) };
        count(Counter::GwOpened);
    }
    if e.flags & splice_flags::HELD != 0 {
        return REPLAY;
    }
    send_ack(ctx, ip, tcp, e)
}

/// Records what the server refused of the options of our SYN (see
/// `intercept_common::maps::GW_SERVER_OPTS`), so its next clients are not offered them.
#[inline(never)]
fn learn_server(ctx: &XdpContext, ip: &Ip, tcp: &intercept_common::parse::Tcp, e: &Splice) {
    // The SYN-ACK's options, as `server_options` left them (a sixth argument would not fit in
    // the registers of a BPF call).
    let Some(o) = GW_SCRATCH.get(0).map(|s| s.opts) else {
        return;
    };
    if o.malformed {
        return;
    }
    // The SYN-ACK's flow is the server's: its source.
    let Some(f) = flow_of(&Pkt::new(ctx), ip, tcp) else {
        return;
    };
    let key = ServerKey::of(&f.reversed());
    let now = crate::clock::now_ns();
    // SAFETY: read-only lookup.
    let old = unsafe { GW_SERVER_OPTS.get(&key) }.map_or(0, |v| v.refused_at(now));
    let new = splice::learn_refused(old, e, o.ts_ok, o.sack_perm, o.wscale != WSCALE_NONE);
    // Written only when it changes or expired (and not at all for a server refusing nothing): a
    // refusal is never renewed by a SYN-ACK to a SYN that did not offer the option (see
    // `SERVER_OPTS_TTL_NS`).
    if old != new {
        let v = ServerOpts {
            refused: new,
            pad: 0,
            learned_ns: now,
        };
        let _ = GW_SERVER_OPTS.insert(&key, &v, 0);
    }
}

/// Turns the server's SYN-ACK into the ACK of its handshake, back to it.
#[inline(never)]
fn send_ack(ctx: &XdpContext, ip: &Ip, tcp: &intercept_common::parse::Tcp, e: &Splice) -> u32 {
    let pkt = Pkt::new(ctx);
    let Some(flow) = flow_of(&pkt, ip, tcp) else {
        return pass(Counter::Malformed);
    };
    let to_server = flow.reversed();
    let Some(s) = GW_SCRATCH.get_ptr_mut(0) else {
        return aborted(Abort::Gateway, 0);
    };
    // SAFETY: this CPU's scratch.
    let s = unsafe { &mut *s };
    splice::build_ack(
        &to_server,
        matches!(ip.l3, L3::V6 { .. }),
        e,
        tcp.seq,
        s.opts.tsval,
        64,
        &mut s.seg,
    );
    if !write_segment(ctx, ip.l3_off, &s.seg, true) {
        return aborted(Abort::Gateway, 0);
    }
    xdp_action::XDP_TX
}

/// The splice of a server's segment, by the client-to-server key.
#[inline(always)]
fn splice_of_server(
    ctx: &XdpContext,
    ip: &Ip,
    tcp: &intercept_common::parse::Tcp,
) -> Option<*mut Splice> {
    let f = flow_of(&Pkt::new(ctx), ip, tcp)?;
    let to_server = f.reversed();
    SPLICE.get_ptr_mut(&FlowKey::of(&to_server))
}

/// Stage `gw_complete`: a server's SYN-ACK of a splice (see [`complete`]).
#[inline(always)]
pub fn stage_complete(ctx: &XdpContext) -> u32 {
    let (ip, tcp) = match tcp_of(ctx) {
        Ok(x) => x,
        Err(v) => return v,
    };
    let Some(e) = splice_of_server(ctx, &ip, &tcp) else {
        return drop(Counter::GwSynAckMismatch);
    };
    // SAFETY: a valid map value.
    finish(ctx, complete(ctx, &ip, &tcp, unsafe { &mut *e }))
}

/// Stage `gw_replay`: the server's SYN-ACK becomes the client's held data segment (see
/// [`replay`]); if it cannot, the handshake's ACK, and the client sends its data again.
#[inline(always)]
pub fn stage_replay(ctx: &XdpContext) -> u32 {
    let (ip, tcp) = match tcp_of(ctx) {
        Ok(x) => x,
        Err(v) => return v,
    };
    let pkt = Pkt::new(ctx);
    let Some(f) = flow_of(&pkt, &ip, &tcp) else {
        return pass(Counter::Malformed);
    };
    let key = splice::client_key(&FlowKey::of(&f));
    let Some(e) = SPLICE.get_ptr_mut(&key) else {
        return drop(Counter::GwSynAckMismatch);
    };
    // SAFETY: a valid map value.
    let e = unsafe { &mut *e };
    e.flags &= !splice_flags::HELD;
    let verdict = replay(ctx, ip.l3_off, &key, e);
    let _ = HELD.remove(&key);
    if verdict == xdp_action::XDP_TX {
        count(Counter::GwHeldReplayed);
        return verdict;
    }
    if verdict == SPOILED {
        return drop(Counter::GwHeldLost);
    }
    count(Counter::GwHeldLost);
    // The frame is still the server's SYN-ACK (perhaps longer: `send_ack` resizes it).
    let (ip, tcp) = match tcp_of(ctx) {
        Ok(x) => x,
        Err(v) => return v,
    };
    let verdict = send_ack(ctx, &ip, &tcp, e);
    if verdict == xdp_action::XDP_ABORTED {
        crate::events::log_abort(ctx);
    }
    verdict
}

/// [`replay`] failed after it began to write the frame, which is then neither the SYN-ACK
/// nor the held segment: dropped (the server sends its SYN-ACK again, and the handshake's ACK
/// answers it).
const SPOILED: u32 = xdp_action::XDP_ABORTED;

/// Replaces the frame's IP packet with the held one of `key`, translated for the server, to go
/// back where the frame came from. XDP_TX; XDP_DROP if it could not and left the frame as it
/// was (then the caller sends the ACK instead, and the client retransmits its data); or
/// [`SPOILED`].
#[inline(never)]
#[expect(
    clippy::manual_range_contains,
    reason = "two comparisons give the verifier the bound of the helper's length; `contains` compiles to one it cannot follow"
)]
fn replay(ctx: &XdpContext, l3_off: usize, key: &FlowKey, e: &mut Splice) -> u32 {
    let Some(h) = HELD.get_ptr(key) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: a valid map value.
    let h = unsafe { &*h };
    let len = h.len as usize;
    if len > HELD_FRAME_MAX || len < IPV4_MIN_HLEN || l3_off > 64 {
        return xdp_action::XDP_DROP;
    }
    // Its TTL (hop limit) must survive forwarding, checked before anything is written.
    let ttl = if h.frame[0] >> 4 == 6 {
        h.frame[7]
    } else {
        h.frame[8]
    };
    if ttl <= 1 {
        return xdp_action::XDP_DROP;
    }
    let pkt = Pkt::new(ctx);
    let Some(macs) = pkt.load::<12>(0) else {
        return xdp_action::XDP_DROP;
    };
    if !resize(ctx, l3_off, (l3_off + len) as i32 - pkt.len() as i32) {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: `len` bytes of the held frame; the helper checks the packet's bounds.
    let rc = unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            l3_off as u32,
            h.frame.as_ptr().cast_mut().cast(),
            len as u32,
        )
    };
    if rc != 0 {
        return SPOILED;
    }
    let pkt = Pkt::new(ctx);
    if !swap_macs(&pkt, &macs) {
        return SPOILED;
    }
    // The held packet's TCP header follows its IP header (see `hold`).
    let Some(h) = pkt.span::<20>(l3_off) else {
        return SPOILED;
    };
    // SAFETY: 20 bytes of the IP header are inside the frame (the span).
    let first = unsafe { *h };
    let (l3, ip_len) = if first >> 4 == 6 {
        (L3::V6 { payload_len: 0 }, IPV6_HLEN)
    } else {
        (
            L3::V4 {
                hdr_len: IPV4_MIN_HLEN,
                total_len: 0,
            },
            usize::from(first & 0xf) * 4,
        )
    };
    let toff = l3_off + (ip_len & 0x3c);
    let Some(t) = pkt.span::<20>(toff) else {
        return SPOILED;
    };
    // SAFETY: the fixed TCP header is inside the frame (the span).
    let tcp = unsafe {
        intercept_common::parse::Tcp {
            off: toff,
            hdr_len: usize::from(*t.add(12) >> 4) * 4,
            payload_len: len.saturating_sub((ip_len & 0x3c) + usize::from(*t.add(12) >> 4) * 4),
            sport: get16(t, 0),
            dport: get16(t, 2),
            seq: get32(t, 4),
            ack_seq: get32(t, 8),
            flags: *t.add(13),
            window: get16(t, 14),
        }
    };
    if !client_to_server(ctx, &tcp, e) || !decrement_ttl(&pkt, l3_off, &l3) {
        return SPOILED;
    }
    xdp_action::XDP_TX
}

/// Translates a client's segment for the server in place (acknowledgment and SACK blocks into
/// the server's sequence space, the TSecr into its clock, the window when the server refused
/// scaling), with the checksum updated incrementally; false if the frame is too short.
#[inline(never)]
fn client_to_server(ctx: &XdpContext, tcp: &intercept_common::parse::Tcp, e: &mut Splice) -> bool {
    let pkt = Pkt::new(ctx);
    let Some(h) = pkt.span::<20>(tcp.off) else {
        return false;
    };
    // SAFETY: the 20 bytes of the fixed header are inside the frame (the span).
    let mut check = unsafe { get16(h, 16) };
    if tcp.flags & tcp_flags::ACK != 0 && e.seq_delta != 0 {
        let ack = tcp.ack_seq.wrapping_add(e.seq_delta);
        check = update32(check, tcp.ack_seq, ack, 8);
        // SAFETY: as above.
        unsafe { put32(h, 8, ack) };
    }
    let win = splice::client_window_for_server(e, tcp.window);
    if win != tcp.window {
        check = update16_at(check, tcp.window, win, 14);
        // SAFETY: as above.
        unsafe { put16(h, 14, win) };
    }
    if tcp.hdr_len > 20 {
        let ts = e.flags & splice_flags::TS != 0 && e.flags & splice_flags::SERVER_NO_TS == 0;
        check = fix_options(
            ctx,
            (tcp.off as u32 & 0xffff) | (tcp.hdr_len as u32 & 0xff) << 16 | 6 << 24,
            if ts { 0u32.wrapping_sub(e.ts_delta) } else { 0 },
            e.seq_delta,
            u32::from(check),
        ) as u16;
    }
    splice::observe(
        e,
        false,
        tcp.flags,
        tcp.seq,
        tcp.payload_len as u32,
        tcp.ack_seq.wrapping_add(e.seq_delta),
    );
    let Some(h) = pkt.span::<20>(tcp.off) else {
        return false;
    };
    // SAFETY: as above.
    unsafe { put16(h, 16, check) };
    true
}

/// Translates a server's segment for the client in place (sequence number into ours, TSval
/// into our clock, window into our scale).
#[inline(never)]
fn server_to_client(ctx: &XdpContext, tcp: &intercept_common::parse::Tcp, e: &mut Splice) -> bool {
    let pkt = Pkt::new(ctx);
    let Some(h) = pkt.span::<20>(tcp.off) else {
        return false;
    };
    // SAFETY: the 20 bytes of the fixed header are inside the frame (the span).
    let mut check = unsafe { get16(h, 16) };
    splice::observe(
        e,
        true,
        tcp.flags,
        tcp.seq,
        tcp.payload_len as u32,
        tcp.ack_seq,
    );
    if e.seq_delta != 0 {
        let seq = tcp.seq.wrapping_sub(e.seq_delta);
        check = update32(check, tcp.seq, seq, 4);
        // SAFETY: as above.
        unsafe { put32(h, 4, seq) };
    }
    let win = splice::rescale_window(tcp.window, e.server_wscale, e.our_wscale);
    if win != tcp.window {
        check = update16_at(check, tcp.window, win, 14);
        // SAFETY: as above.
        unsafe { put16(h, 14, win) };
    }
    if tcp.hdr_len > 20 && e.ts_delta != 0 {
        check = fix_options(
            ctx,
            (tcp.off as u32 & 0xffff) | (tcp.hdr_len as u32 & 0xff) << 16 | 2 << 24,
            e.ts_delta,
            0,
            u32::from(check),
        ) as u16;
    }
    let Some(h) = pkt.span::<20>(tcp.off) else {
        return false;
    };
    // SAFETY: as above.
    unsafe { put16(h, 16, check) };
    true
}

/// Walks the options: adds `ts_add` to the timestamps option's word at `ts_at` (2: TSval, 6:
/// TSecr; nothing if `ts_add` is 0) and `sack_add` to every SACK block edge; returns the
/// checksum updated for each change. `at` packs the TCP header's offset (low 16 bits), its
/// length (next 8) and `ts_at` (top 8). Not inlined: one copy of the walk, verified on its own
/// frame, not once per translation that inlines it.
#[inline(never)]
fn fix_options(ctx: &XdpContext, at: u32, ts_add: u32, sack_add: u32, check: u32) -> u32 {
    let pkt = Pkt::new(ctx);
    // A TCP header starts within the first KiB (Ethernet, two tags, IPv6 and its walked
    // extension headers); the mask tells the verifier, whose packet ranges end at 64 KiB.
    let tcp_off = (at & 0x3ff) as usize;
    let hdr_len = ((at >> 16) & 0xff) as usize;
    let ts_at = if at >> 24 == 2 { 2 } else { 6 };
    let mut check = check as u16;
    let w = walk(&pkt, tcp_off, hdr_len);
    let (ts_rel, sack_rel, sack_len) = (w.ts, w.sack, w.sack_len);
    let ts_rel = launder(ts_rel);
    if ts_rel != 0
        && ts_add != 0
        && let Some(o) = pkt.span::<10>(tcp_off + ts_rel)
    {
        // SAFETY: the option's 10 bytes are inside the frame (the span).
        let v = unsafe { get32(o, ts_at) };
        // An echoed zero is "no timestamp to echo", not ours to translate.
        if !(ts_at == 6 && v == 0) {
            let new = v.wrapping_add(ts_add);
            // SAFETY: as above.
            unsafe { put32(o, ts_at, new) };
            check = update32(check, v, new, ts_rel + ts_at);
        }
    }
    let sack_rel = launder(sack_rel);
    let blocks = if sack_len >= 10 {
        (sack_len - 2) / 8
    } else {
        0
    };
    if sack_rel != 0 && sack_add != 0 {
        let mut b = 0;
        while b < 4 {
            if b >= blocks {
                break;
            }
            let at = sack_rel + 2 + 8 * b;
            if let Some(o) = pkt.span::<8>(tcp_off + at) {
                // SAFETY: the block's 8 bytes are inside the frame (the span).
                let (l, r) = unsafe { (get32(o, 0), get32(o, 4)) };
                let (nl, nr) = (l.wrapping_add(sack_add), r.wrapping_add(sack_add));
                // SAFETY: as above.
                unsafe {
                    put32(o, 0, nl);
                    put32(o, 4, nr);
                }
                check = update32(check, l, nl, at);
                check = update32(check, r, nr, at + 4);
            }
            b += 1;
        }
    }
    u32::from(check)
}

/// The big-endian u32 at `p + at`.
///
/// # Safety
/// `p + at .. p + at + 4` lies inside a span of the frame.
#[inline(always)]
unsafe fn get32(p: *mut u8, at: usize) -> u32 {
    // SAFETY: the caller's.
    u32::from_be(unsafe { core::ptr::read_unaligned(p.add(at).cast::<u32>()) })
}

/// Writes `v` big-endian at `p + at`.
///
/// # Safety
/// As [`get32`].
#[inline(always)]
unsafe fn put32(p: *mut u8, at: usize, v: u32) {
    // SAFETY: the caller's.
    unsafe { core::ptr::write_unaligned(p.add(at).cast::<u32>(), v.to_be()) };
}

/// The big-endian u16 at `p + at`.
///
/// # Safety
/// `p + at .. p + at + 2` lies inside a span of the frame.
#[inline(always)]
unsafe fn get16(p: *mut u8, at: usize) -> u16 {
    // SAFETY: the caller's.
    u16::from_be(unsafe { core::ptr::read_unaligned(p.add(at).cast::<u16>()) })
}

/// Writes `v` big-endian at `p + at`.
///
/// # Safety
/// As [`get16`].
#[inline(always)]
unsafe fn put16(p: *mut u8, at: usize, v: u16) {
    // SAFETY: the caller's.
    unsafe { core::ptr::write_unaligned(p.add(at).cast::<u16>(), v.to_be()) };
}

/// Where a segment's options are, from the TCP header (0: absent).
#[derive(Default)]
struct Offsets {
    /// The timestamps option.
    ts: usize,
    /// The SACK option.
    sack: usize,
    /// Its length.
    sack_len: usize,
    /// The window scale option.
    wscale: usize,
    /// The SACK-permitted option.
    sack_perm: usize,
    /// The walk reached the end of the options (their last byte or an end-of-list), within
    /// its hops: an option it did not find is absent.
    complete: bool,
}

/// Walks the options of the TCP header at `tcp_off` (`hdr_len` long) and says where the ones
/// the gateway reads or rewrites are; read and written after the walk, never in it: writes or
/// many-field results inside it multiplied the states the verifier explores per hop past its
/// budget (on 6.1 even tcpopt's full parse, alone in a subprogram, did).
#[inline(always)]
fn walk(pkt: &Pkt<XdpContext>, tcp_off: usize, hdr_len: usize) -> Offsets {
    let hdr_len = if hdr_len > 60 { 60 } else { hdr_len };
    let mut rel = 20;
    let mut n = 0;
    let mut w = Offsets::default();
    while n < tcpopt::MAX_OPTIONS {
        n += 1;
        if rel >= hdr_len {
            w.complete = true;
            break;
        }
        // Kind and length in one read: a one-byte read's bounds check compiles to a comparison
        // the verifier learns no range from (`pkt < pkt_end` at offset 0). A NOP in the last
        // byte of a header without payload ends the walk one byte early, which changes nothing.
        let Some([kind, len]) = pkt.load::<2>(tcp_off + rel) else {
            break;
        };
        if kind == 0 {
            w.complete = true;
            break;
        }
        if kind == 1 {
            rel = launder(rel + 1);
            continue;
        }
        let len = usize::from(len);
        if len < 2 || rel + len > hdr_len {
            break;
        }
        // Found here, fixed after the walk: writes inside it multiplied the states the
        // verifier explores per hop past its budget.
        if kind == 8 && len == 10 {
            w.ts = rel;
        } else if kind == 5 {
            w.sack = rel;
            w.sack_len = len;
        } else if kind == 3 && len == 3 {
            w.wscale = rel;
        } else if kind == 4 && len == 2 {
            w.sack_perm = rel;
        }
        rel = launder(rel + len);
    }
    // The last hop may end the options exactly (or leave one trailing NOP byte, which a
    // two-byte read cannot take).
    if rel + 1 >= hdr_len {
        w.complete = true;
    }
    w
}

/// See `tcpopt::launder`: the same shape of offset at the top of every hop.
#[inline(always)]
fn launder(rel: usize) -> usize {
    core::hint::black_box(rel) & 0x3f
}

/// Forwards a (translated) segment: an XDP redirect when the kernel's route leaves through one
/// of the gateway's interfaces and its neighbour is resolved, otherwise the kernel's forwarding
/// path (which also answers what needs an ICMP: TTL exceeded, too big).
#[inline(always)]
fn forward(ctx: &XdpContext) -> u32 {
    let pkt = Pkt::new(ctx);
    match pkt.load::<2>(12).map(u16::from_be_bytes) {
        Some(ETH_P_IP | ETH_P_IPV6) => {}
        // Tagged: the kernel knows the VLAN devices.
        _ => return pass(Counter::Passed),
    }
    let Some(s) = GW_SCRATCH.get_ptr_mut(0) else {
        return pass(Counter::Passed);
    };
    // SAFETY: this CPU's scratch.
    let p = unsafe { &mut (*s).fib };
    let words = (&raw mut *p).cast::<u32>();
    let mut i = 0;
    while i < size_of::<FibLookup>() / 4 {
        // SAFETY: within the request in map memory.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    p.l4_protocol = 6;
    // `tot_len` (the MTU check's length) is in host order, unlike the addresses.
    let Some(h) = pkt.span::<20>(ETH_HLEN) else {
        return pass(Counter::Passed);
    };
    // SAFETY: 20 bytes of the IP header are inside the frame (the span).
    let v6 = unsafe { *h } >> 4 == 6;
    if v6 {
        let Some(h) = pkt.span::<IPV6_HLEN>(ETH_HLEN) else {
            return pass(Counter::Passed);
        };
        p.family = 10;
        // SAFETY: the 40 bytes of the IPv6 header are inside the frame (the span); the
        // addresses are copied as they are, in network order.
        unsafe {
            p.__bindgen_anon_1.tot_len = get16(h, 4).wrapping_add(IPV6_HLEN as u16);
            // Word by word: a 16-byte copy becomes a call to `memmove`.
            let w = |at: usize| h.add(at).cast::<u32>().read_unaligned();
            p.__bindgen_anon_3.ipv6_src = [w(8), w(12), w(16), w(20)];
            p.__bindgen_anon_4.ipv6_dst = [w(24), w(28), w(32), w(36)];
        }
    } else {
        p.family = 2;
        // SAFETY: as above, 20 bytes.
        unsafe {
            p.__bindgen_anon_1.tot_len = get16(h, 2);
            p.__bindgen_anon_3.ipv4_src = h.add(12).cast::<u32>().read_unaligned();
            p.__bindgen_anon_4.ipv4_dst = h.add(16).cast::<u32>().read_unaligned();
        }
    }
    // SAFETY: ctx is the program's own context.
    p.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    // SAFETY: the request lives in map memory for the call.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &raw mut *p,
            size_of::<FibLookup>() as i32,
            0,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return pass(Counter::Passed);
    }
    let out = p.ifindex;
    if GW_PORTS.get(out).is_none() {
        return pass(Counter::Passed);
    }
    let l3 = if v6 {
        L3::V6 { payload_len: 0 }
    } else {
        L3::V4 {
            hdr_len: IPV4_MIN_HLEN,
            total_len: 0,
        }
    };
    if !decrement_ttl(&pkt, ETH_HLEN, &l3) {
        return pass(Counter::Passed);
    }
    // SAFETY: on success the helper wrote the MACs over the request's mark.
    let macs = unsafe { p.__bindgen_anon_6.__bindgen_anon_2 };
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&macs.dmac);
    eth[6..].copy_from_slice(&macs.smac);
    if pkt.store(0, &eth).is_none() {
        return aborted(Abort::Gateway, 0);
    }
    match GW_PORTS.redirect(out, 0) {
        Ok(action) => {
            count(Counter::GwRedirected);
            action
        }
        Err(_) => aborted(Abort::Gateway, 0),
    }
}

/// Decrements the TTL (hop limit) as forwarding does, the IPv4 checksum with it; false if the
/// packet must not be forwarded by us (TTL at 1: the kernel answers with an ICMP).
#[inline(always)]
fn decrement_ttl(pkt: &Pkt<XdpContext>, l3_off: usize, l3: &L3) -> bool {
    let Some(h) = pkt.span::<20>(l3_off) else {
        return false;
    };
    let at = if matches!(l3, L3::V6 { .. }) { 7 } else { 8 };
    // SAFETY: 20 bytes of the IP header are inside the frame (the span).
    let ttl = unsafe { *h.add(at) };
    if ttl <= 1 {
        return false;
    }
    // SAFETY: as above.
    unsafe { *h.add(at) = ttl - 1 };
    if let L3::V4 { .. } = l3 {
        // The TTL shares its 16-bit word with the protocol, which does not change.
        // SAFETY: as above.
        unsafe {
            let c = get16(h, 10);
            let c = intercept_common::checksum::update16(
                c,
                u16::from(ttl) << 8,
                u16::from(ttl - 1) << 8,
            );
            put16(h, 10, c);
        }
    }
    true
}

/// Writes the Ethernet source as destination and destination as source, from `macs` (the
/// frame's first 12 bytes as they arrived).
#[inline(always)]
fn swap_macs(pkt: &Pkt<XdpContext>, macs: &[u8; 12]) -> bool {
    pkt.store(0, &crate::frame::swapped_macs(macs)).is_some()
}

/// Makes the frame `seg` (IP and TCP headers, no payload) after its first `l3_off` bytes,
/// resizing it; `reply`: swap the Ethernet addresses (the frame goes back where it came from).
#[inline(always)]
fn write_segment(ctx: &XdpContext, l3_off: usize, seg: &SynAck, reply: bool) -> bool {
    let pkt = Pkt::new(ctx);
    let ip_len = if seg.ip_len == IPV6_HLEN {
        IPV6_HLEN
    } else {
        IPV4_MIN_HLEN
    };
    let tcp_len = seg.tcp_len & TCP_MAX_HLEN_MASK;
    if l3_off > 64 {
        return false;
    }
    let Some(macs) = pkt.load::<12>(0) else {
        return false;
    };
    if !resize(
        ctx,
        l3_off,
        (l3_off + ip_len + tcp_len) as i32 - pkt.len() as i32,
    ) {
        return false;
    }
    let pkt = Pkt::new(ctx);
    if reply && !swap_macs(&pkt, &macs) {
        return false;
    }
    let ok = if ip_len == IPV6_HLEN {
        pkt.store_words::<10>(l3_off, &seg.ip).is_some()
    } else {
        let h = [seg.ip[0], seg.ip[1], seg.ip[2], seg.ip[3], seg.ip[4]];
        pkt.store_words::<5>(l3_off, &h).is_some()
    };
    if !ok {
        return false;
    }
    let toff = l3_off + ip_len;
    match tcp_len {
        40 => store_prefix::<10>(&pkt, toff, &seg.tcp),
        32 => store_prefix::<8>(&pkt, toff, &seg.tcp),
        20 => store_prefix::<5>(&pkt, toff, &seg.tcp),
        _ => false,
    }
}

/// The longest link header the dissector follows: Ethernet and two VLAN tags.
const LINK_MAX: usize = ETH_HLEN + MAX_VLANS * VLAN_HLEN;
const _: () = assert!(LINK_MAX == 22);

/// Resizes the frame by `delta` bytes, its first `l3_off` bytes (the link header) kept at its
/// start, whatever follows them left to the caller to write. At the tail; or, when the frame
/// grows and its tail has no room, at the head, where XDP keeps at least 256 bytes: a frame the
/// driver built on a small socket buffer (veth receiving from a local stack, generic XDP) has
/// only a few bytes of tailroom, and a server's SYN-ACK without timestamps could then not become
/// the client's held request (which waited 200 ms for its retransmission). False, the frame
/// unchanged, if neither end had room.
#[inline(never)]
fn resize(ctx: &XdpContext, l3_off: usize, delta: i32) -> bool {
    // SAFETY: ctx is the program's own context.
    if delta == 0 || unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } == 0 {
        return true;
    }
    if delta < 0 || l3_off > LINK_MAX {
        return false;
    }
    // The link header, in a frame of its own (this function's: the callers' stack is full).
    let z = core::hint::black_box(0u64);
    let mut link = [z, z, z];
    // SAFETY: LINK_MAX bytes into `link` (24 bytes); the helper checks the packet's bounds.
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, link.as_mut_ptr().cast(), LINK_MAX as u32) } != 0 {
        return false;
    }
    // SAFETY: as above.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -delta) } != 0 {
        return false;
    }
    // SAFETY: LINK_MAX bytes of `link` into the grown frame; the helper checks its bounds.
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, link.as_mut_ptr().cast(), LINK_MAX as u32) } == 0 {
        return true;
    }
    // Cannot happen (the frame grew past LINK_MAX); if it did, nothing was written: the head
    // goes back, the frame as it was, as "false" promises.
    // SAFETY: as above.
    let _ = unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) };
    false
}

/// Stores the first `N` words of `src` at `off`.
#[inline(always)]
fn store_prefix<const N: usize>(pkt: &Pkt<XdpContext>, off: usize, src: &[u32; 10]) -> bool {
    let w: [u32; N] = core::array::from_fn(|i| src[i]);
    pkt.store_words(off, &w).is_some()
}
