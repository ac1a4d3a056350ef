//! xdp-intercept's data path. This file holds only the entry points; the work is in the modules.
#![no_std]
#![no_main]
// Atomic adds: the BPF target has 64-bit atomics but no compare-and-swap, so core's atomic
// types offer no fetch_add; the intrinsic lowers to BPF's atomic add.
#![feature(core_intrinsics)]
#![allow(internal_features)]
// The verifier sees every call as a BPF-to-BPF call with its own stack frame and argument
// rules: what must be inlined is said, not left to LLVM's judgement.
#![allow(clippy::inline_always)]
// Kernel memory is read with `bpf_probe_read_kernel`, which copies: the pointer's alignment does
// not matter to it.
#![allow(clippy::cast_ptr_alignment)]
// Entry points take their context by value: aya's program macros define that signature.
#![allow(clippy::needless_pass_by_value)]
// aya's `#[classifier]` generates a public entry point taking the kernel's raw skb pointer.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod ack;
mod clock;
mod events;
mod frame;
mod gateway;
mod handoff;
mod kcookie;
mod maps;
mod scope;
mod stats;
mod synack;
mod track;
mod watch;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, fentry, sock_ops, tracepoint, xdp},
    programs::{FEntryContext, SockOpsContext, TcContext, TracePointContext, XdpContext},
};
use intercept_common::{
    Counter,
    config::{Mode, flags},
    parse::{Dissected, L3, L4, Malformed, TcpKind, classify, dissect, tcp_flags},
};

use crate::{
    frame::Pkt,
    maps::CONFIG,
    stats::{count, drop, pass},
};

/// Main program: dissect, count, then (in intercept mode) answer protected SYNs with cookies and
/// verify the ACKs that complete them; everything else passes.
#[xdp]
pub fn xdp_intercept(ctx: XdpContext) -> u32 {
    count(Counter::Packets);
    let d = dissect(&Pkt::new(&ctx));
    account(&d);
    let (Ok(Dissected::Ip(ip)), Some(cfg)) = (d, CONFIG.get(0)) else {
        return pass(Counter::Passed);
    };
    let L4::Tcp(tcp) = ip.l4 else {
        // What intercept mode cannot see into, the kernel could still find a SYN in: a TCP
        // fragment (it reassembles), an IPv6 chain longer than we walk. No legitimate TCP sends
        // either; dropped, not left to the kernel's SYN queue.
        if Mode::effective(cfg) == Mode::Intercept {
            if ip.l4 == L4::SynFragment {
                return drop(Counter::SynFragmentDropped);
            }
            if ip.l4.unwalked_chain() {
                return drop(Counter::Ipv6ChainDropped);
            }
        }
        return pass(Counter::Passed);
    };
    let verdict = match (Mode::effective(cfg), classify(tcp.flags)) {
        (Mode::Intercept, TcpKind::Syn) => synack::handle(&ctx, &ip, &tcp),
        // Watch mode's handshakes still tracked or being closed (a switch to intercept mode
        // leaves them to the kernel): an ACK of one being closed is dropped as in watch mode.
        (Mode::Intercept, TcpKind::Ack)
            if (cfg.flags & flags::TRACKING != 0 || watch::closing_gate())
                && watch::closing(&ctx, &ip, &tcp) =>
        {
            drop(Counter::ClosingDropped)
        }
        (Mode::Intercept, TcpKind::Ack) if cfg.flags & flags::KERNEL_COOKIE != 0 => {
            ack::handle_kernel_cookie(&ctx, &ip, &tcp, true)
        }
        (Mode::Intercept, TcpKind::Ack) => ack::handle(&ctx, &ip, &tcp),
        (Mode::Watch, TcpKind::Syn) => watch::syn(&ctx, &ip, &tcp),
        (Mode::Watch, TcpKind::Ack | TcpKind::Rst) => match watch::segment(&ctx, &ip, &tcp) {
            watch::VERIFY_COOKIE if cfg.flags & flags::KERNEL_COOKIE != 0 => {
                ack::handle_kernel_cookie(&ctx, &ip, &tcp, false)
            }
            watch::VERIFY_COOKIE => ack::handle_grace(&ctx, &ip, &tcp),
            verdict => verdict,
        },
        (Mode::Watch, TcpKind::Other) if tcp.flags & tcp_flags::FIN != 0 => {
            watch::segment(&ctx, &ip, &tcp)
        }
        _ => pass(Counter::Passed),
    };
    if verdict == xdp_action::XDP_ABORTED {
        events::log_abort(&ctx);
    }
    verdict
}

/// Gateway mode: the same protection for servers behind this box, attached to its
/// client-facing and server-facing interfaces (see `gateway`).
#[xdp]
pub fn xdp_gateway(ctx: XdpContext) -> u32 {
    gateway::handle(&ctx)
}

/// Gateway stage: protected SYNs (see `intercept_common::maps::GW_PROGS`).
#[xdp]
pub fn gw_syn(ctx: XdpContext) -> u32 {
    gateway::stage_syn(&ctx)
}

/// Gateway stage: clients' other segments.
#[xdp]
pub fn gw_client(ctx: XdpContext) -> u32 {
    gateway::stage_client(&ctx)
}

/// Gateway stage: servers' segments.
#[xdp]
pub fn gw_server(ctx: XdpContext) -> u32 {
    gateway::stage_server(&ctx)
}

/// Gateway stage: the cookie of a client's segment of no splice.
#[xdp]
pub fn gw_cookie(ctx: XdpContext) -> u32 {
    gateway::stage_cookie(&ctx)
}

/// Gateway stage: opening a proven client's connection to its server.
#[xdp]
pub fn gw_open(ctx: XdpContext) -> u32 {
    gateway::stage_open(&ctx)
}

/// Gateway stage: completing a server's handshake.
#[xdp]
pub fn gw_complete(ctx: XdpContext) -> u32 {
    gateway::stage_complete(&ctx)
}

/// Gateway stage: replaying a client's held data to its server.
#[xdp]
pub fn gw_replay(ctx: XdpContext) -> u32 {
    gateway::stage_replay(&ctx)
}

/// Gateway stage: forwarding a translated segment.
#[xdp]
pub fn gw_forward(ctx: XdpContext) -> u32 {
    gateway::stage_forward(&ctx)
}

/// TC ingress: completes handshakes the XDP program verified (see `handoff`).
#[classifier]
pub fn tc_handoff(ctx: TcContext) -> i32 {
    handoff::handle(&ctx)
}

/// Keeps the socket table (see `track`).
#[tracepoint]
pub fn track_sockets(ctx: TracePointContext) -> u32 {
    track::handle(&ctx);
    0
}

/// Records the kernel's new request sockets (see `track::request_sock`): runs on entry of
/// `inet_csk_reqsk_queue_hash_add(sk, req, timeout)` (`intercept_common::maps::REQSK_FUNCTION`).
#[fentry(function = "inet_csk_reqsk_queue_hash_add")]
pub fn track_request_socks(ctx: FEntryContext) -> i32 {
    track::request_sock(ctx.arg::<*const u8>(1));
    0
}

/// [`track_request_socks`] for kernels that refuse fentry programs (one locked down in
/// integrity mode answers their load with `EPERM`): a sock_ops program on the cgroup v2 root,
/// which the kernel runs for a new request socket just before hashing it (see
/// `track::request_sock_ops`). Returns 1, as every sock_ops program must to let TCP go on.
#[sock_ops]
pub fn track_request_socks_sockops(ctx: SockOpsContext) -> u32 {
    track::request_sock_ops(&ctx);
    1
}

/// Seeds the socket table with one flow: run by the controller with BPF_PROG_TEST_RUN on a frame
/// holding a `FlowKey` after the Ethernet header, for each socket that existed before the
/// tracepoint. Never attached to an interface.
#[xdp]
pub fn seed_socket(ctx: XdpContext) -> u32 {
    use intercept_common::{config::FlowKey, parse::Frame as _};
    let pkt = Pkt::new(&ctx);
    let Some(b) = pkt.load::<{ size_of::<FlowKey>() }>(intercept_common::parse::ETH_HLEN) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: FlowKey is plain integers; every bit pattern is valid.
    let key: FlowKey = unsafe { core::mem::transmute(b) };
    track::insert(&ctx, &key);
    xdp_action::XDP_DROP
}

/// Pass-through program: for the peer veth of an interface that sends XDP_TX frames (veth drops
/// them unless its peer runs XDP), and the baseline the benchmarks subtract.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Counts the frame's layers.
#[inline(always)]
pub(crate) fn account(d: &Result<Dissected, Malformed>) {
    match d {
        Err(_) => count(Counter::Malformed),
        Ok(Dissected::NotIp { vlans, .. }) => {
            if *vlans > 0 {
                count(Counter::Vlan);
            }
            count(Counter::NonTcp);
        }
        Ok(Dissected::Ip(ip)) => {
            if ip.vlans > 0 {
                count(Counter::Vlan);
            }
            count(match ip.l3 {
                L3::V4 { .. } => Counter::Ipv4,
                L3::V6 { .. } => Counter::Ipv6,
            });
            match ip.l4 {
                L4::Fragment | L4::SynFragment => count(Counter::Fragment),
                L4::Other(_) => count(Counter::NonTcp),
                L4::Tcp(tcp) => {
                    count(Counter::Tcp);
                    match classify(tcp.flags) {
                        TcpKind::Syn => count(Counter::Syn),
                        TcpKind::SynAck => count(Counter::SynAck),
                        TcpKind::Ack => count(Counter::Ack),
                        TcpKind::Rst => count(Counter::Rst),
                        TcpKind::Other => {}
                    }
                }
            }
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no panic is reachable; this only satisfies no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
