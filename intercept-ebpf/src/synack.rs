//! SYN path: answer a protected SYN with a cookie SYN-ACK built in place, sent back with XDP_TX.
use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext,
};
use intercept_common::{
    Counter,
    config::flags,
    cookie,
    handshake::{SynRequest, build_synack, header_checksum_ok},
    kcookie,
    parse::{
        ETH_P_8021AD, ETH_P_8021Q, Frame, IPV4_MIN_HLEN, IPV6_HLEN, Ip, TCP_MAX_HLEN_MASK, Tcp,
    },
    splice::ServerKey,
};

use crate::{
    events::Abort,
    frame::Pkt,
    maps::{CONFIG, GW_SERVER_OPTS, SCRATCH, SECRETS},
    scope,
    stats::{aborted, count, drop, pass},
};

/// Handles a SYN (no ACK, no RST) in intercept mode. Not inlined: a BPF-to-BPF call keeps its
/// stack frame apart from the ACK path's ("BPF stack limit is exceeded" when both share one).
#[inline(never)]
pub fn handle(ctx: &XdpContext, ip: &Ip, tcp: &Tcp) -> u32 {
    answer::<true, false>(ctx, ip, tcp)
}

/// [`handle`] for the gateway, which has no listener: our own cookies only (the kernel-cookie
/// engine's branch compiled out, and with it its cost to the verifier).
#[inline(never)]
pub fn handle_own_cookie(ctx: &XdpContext, ip: &Ip, tcp: &Tcp) -> u32 {
    answer::<false, true>(ctx, ip, tcp)
}

/// The SYN path; `KERNEL_COOKIE`: whether the kernel-cookie engine may be configured;
/// `GATEWAY`: the SYN is a gateway's, whose server may refuse options its client offers.
#[inline(always)]
fn answer<const KERNEL_COOKIE: bool, const GATEWAY: bool>(
    ctx: &XdpContext,
    ip: &Ip,
    tcp: &Tcp,
) -> u32 {
    // Config is fetched here, not passed: LLVM promotes pointer arguments of a subprogram to
    // scalars, and past five arguments it spills to a stack the kernel does not have ("R11 is
    // invalid"). An array lookup is inlined by the verifier and costs next to nothing.
    let Some(cfg) = CONFIG.get(0) else {
        return pass(Counter::Passed);
    };
    let pkt = Pkt::new(ctx);
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return aborted(Abort::SynAckWrite, 0);
    };
    // SAFETY: this CPU's scratch slot; nothing else runs on this CPU while we use it.
    let scratch = unsafe { &mut *scratch };
    if !SynRequest::read_into(&pkt, ip, tcp, &mut scratch.req) {
        // Options we will not parse may still be ones the kernel accepts.
        return to_kernel(Counter::Malformed);
    }
    let req = &scratch.req;
    if !scope::protected(&req.flow, cfg) {
        return pass(Counter::Passed);
    }
    count(Counter::SynProtected);
    if scope::exempt(&req.flow, cfg) {
        return pass(Counter::PassExempt);
    }
    let now = crate::clock::now_ns();
    if crate::track::kernel_held(&intercept_common::config::FlowKey::of(&req.flow), now) {
        // A SYN reusing the 4-tuple of a time-wait socket: the kernel decides whether the new
        // connection may replace it (`tcp_timewait_state_process`), and its request socket's
        // handshake passes here as the time-wait flow's. A cookie handshake would meet the
        // time-wait socket in the established hash and be dropped. Likewise a retransmitted SYN
        // of a handshake the kernel answered itself (its first SYN came over another
        // interface): its request socket answers it.
        return pass(Counter::PassTimeWait);
    }
    if req.opts.signed {
        // A TCP-MD5/AO peer needs a signed SYN-ACK, and only the kernel has its key. Passed on,
        // every forged signed SYN would cost the kernel an skb and a signature check and make
        // the socket table ask the kernel again: dropped, counted; such peers are exempted.
        return drop(Counter::SynSigned);
    }
    if tcp.payload_len > 0 {
        // Data on a SYN (TCP Fast Open) cannot ride on a cookie. As the kernel's own cookies do
        // (`tcp_conn_request` sends a cookie SYN-ACK whatever the SYN carries), answer the
        // handshake and let the client send its data again after it: a flood padded with one
        // byte gets nothing more from the kernel than any other. The payload is not summed, so
        // its checksum is not checked: a corrupted SYN with data draws one SYN-ACK, as a spoofed
        // one would, and nothing else.
        count(Counter::SynDataIgnored);
    } else if !header_checksum_ok(&pkt, &req.flow, req.v6, tcp) {
        return drop(Counter::SynBadChecksum);
    }
    let sa = &mut scratch.sa;
    if KERNEL_COOKIE && cfg.flags & flags::KERNEL_COOKIE != 0 {
        let rc = crate::kcookie::syn_cookie(
            ctx,
            ip.l3_off as u32,
            tcp.off as u32,
            tcp.hdr_len as u32,
            u32::from(req.v6),
        );
        if rc < 0 {
            return match rc {
                crate::kcookie::NO_LISTENER => pass(Counter::SynNoListener),
                crate::kcookie::NOT_LISTENER => pass(Counter::PassEstablished),
                crate::kcookie::OWN_WINDOW => pass(Counter::SynOwnWindow),
                crate::kcookie::REFUSED => pass(Counter::SynCookieRefused),
                _ => aborted(Abort::KernelCookieCopy, 0),
            };
        }
        // What the kernel's cookie keeps of the SYN's options.
        let req = &mut scratch.req;
        let (tsval, co) = kcookie::offered(req, cfg, now);
        build_synack(req, cfg, co, rc as u32, tsval, sa);
    } else {
        let Some((idx, key, ts_offset)) = SECRETS.get(0).and_then(|s| s.current_key()) else {
            return to_kernel(Counter::PassNoSecret);
        };
        if GATEWAY {
            // The client agrees with us to what its server will do, as far as its SYN-ACKs
            // taught us (see `intercept_common::splice::strip_refused`).
            let req = &mut scratch.req;
            // SAFETY: read-only lookup.
            if let Some(o) = unsafe { GW_SERVER_OPTS.get(&ServerKey::of(&req.flow)) } {
                intercept_common::splice::strip_refused(&mut req.opts, o.refused_at(now));
            }
        }
        let req = &scratch.req;
        let input = req.cookie_input(cfg, now);
        let c = cookie::make(key, idx, ts_offset, &input);
        // The kernel continues the connection's timestamps from our TSval (its `ts_off`).
        build_synack(req, cfg, input.opts, c.isn, c.tsval, sa);
    }
    let req = &scratch.req;
    // The route back, looked up last: nothing of it stays live across the cookie's hashing,
    // whose paths it would multiply for the verifier.
    let hop = next_hop(ctx, req, &mut scratch.fib);
    if hop == HOP_UNROUTABLE {
        return drop(Counter::SynUnroutable);
    }

    // Lengths re-derived here, not read back from the map: a value loaded from map memory has no
    // bounds ("math between pkt pointer and register with unbounded min value is not allowed").
    let ip_len = if req.v6 { IPV6_HLEN } else { IPV4_MIN_HLEN };
    let tcp_len = sa.tcp_len & TCP_MAX_HLEN_MASK;
    let l3 = ip.l3_off;
    let new_len = l3 + ip_len + tcp_len;
    let delta = new_len as i32 - pkt.len() as i32;
    let Some(macs) = pkt.load::<12>(0) else {
        return pass(Counter::Malformed);
    };
    if delta != 0 {
        // SAFETY: ctx is the program's own context.
        let rc = unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) };
        if rc != 0 {
            return aborted(Abort::AdjustTail, rc);
        }
    }
    // Packet pointers changed: a fresh view re-reads data/data_end.
    let pkt = Pkt::new(ctx);
    let mut eth = crate::frame::swapped_macs(&macs);
    if hop == HOP_VIA {
        // SAFETY: on success the helper wrote the MACs over the request's mark.
        let via = unsafe { scratch.fib.__bindgen_anon_6.__bindgen_anon_2 };
        if via.dmac != [macs[6], macs[7], macs[8], macs[9], macs[10], macs[11]] {
            eth[..6].copy_from_slice(&via.dmac);
            eth[6..].copy_from_slice(&via.smac);
            count(Counter::SynAckToNextHop);
        }
    }
    if pkt.store(0, &eth).is_none() {
        return aborted(Abort::SynAckWrite, 0);
    }
    let ok = if req.v6 {
        pkt.store_words::<10>(l3, &sa.ip).is_some()
    } else {
        let h = [sa.ip[0], sa.ip[1], sa.ip[2], sa.ip[3], sa.ip[4]];
        pkt.store_words::<5>(l3, &h).is_some()
    };
    if !ok {
        return aborted(Abort::SynAckWrite, 0);
    }
    let toff = l3 + ip_len;
    // One fixed-size copy per possible length: the verifier needs a constant size for each store
    // ("invalid variable-offset ... access"), and one bounds check beats ten.
    let ok = match tcp_len {
        40 => store_prefix::<10>(&pkt, toff, &sa.tcp),
        36 => store_prefix::<9>(&pkt, toff, &sa.tcp),
        32 => store_prefix::<8>(&pkt, toff, &sa.tcp),
        28 => store_prefix::<7>(&pkt, toff, &sa.tcp),
        24 => store_prefix::<6>(&pkt, toff, &sa.tcp),
        _ => false,
    };
    if !ok {
        return aborted(Abort::SynAckWrite, 0);
    }
    count(Counter::SynAckSent);
    xdp_action::XDP_TX
}

/// [`next_hop`]: back to the frame's sender. The interface does not forward (the kernel's route
/// lookup for XDP, `bpf_fib_lookup`, answers only for forwarding interfaces), or the route leaves
/// through another interface (asymmetric routing: the router that sent us the SYN forwards the
/// answer), or its neighbour is not resolved yet, or the lookup could not say.
const HOP_SENDER: u32 = 0;
/// [`next_hop`]: the route back leaves through this interface, to the neighbour and from the
/// address the lookup left in its request.
const HOP_VIA: u32 = 1;
/// [`next_hop`]: no route back (blackhole, unreachable, prohibit): the kernel could not answer
/// either.
const HOP_UNROUTABLE: u32 = 2;

/// The route back to the SYN's sender, as the kernel's own SYN-ACK would take it (an output
/// route lookup from our address, `bpf_fib_lookup`): replying to the frame's Ethernet source
/// instead lets a host on this segment spoof any address and read our cookies. The kernel
/// answers such lookups only on an interface that forwards (`net.ipv4.conf.IFACE.forwarding`,
/// `net.ipv6.conf.IFACE.forwarding`): a router, or the gateway in front of servers; elsewhere
/// the reply goes to the sender, as documented.
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    req: &SynRequest,
    fib: &mut aya_ebpf::bindings::bpf_fib_lookup,
) -> u32 {
    use aya_ebpf::bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LKUP_RET_UNREACHABLE, bpf_fib_lookup,
    };
    // A tagged frame's reply keeps its tags, and the route's neighbour may be on another VLAN:
    // to the sender. (Read from the frame here, not carried from the dissection: a value live
    // across the cookie's hashing costs the verifier states and the subprogram stack.)
    let pkt = Pkt::new(ctx);
    match pkt.load::<2>(12).map(u16::from_be_bytes) {
        Some(ETH_P_8021Q | ETH_P_8021AD) | None => return HOP_SENDER,
        Some(_) => {}
    }
    // SAFETY: all-zero is a valid lookup request.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.l4_protocol = 6;
    p.sport = req.flow.dport.to_be();
    p.dport = req.flow.sport.to_be();
    if req.v6 {
        p.family = 10; // AF_INET6
        let (s, d) = (&req.flow.daddr, &req.flow.saddr);
        p.__bindgen_anon_3.ipv6_src = [s[0].to_be(), s[1].to_be(), s[2].to_be(), s[3].to_be()];
        p.__bindgen_anon_4.ipv6_dst = [d[0].to_be(), d[1].to_be(), d[2].to_be(), d[3].to_be()];
    } else {
        p.family = 2; // AF_INET
        p.__bindgen_anon_3.ipv4_src = req.flow.daddr[3].to_be();
        p.__bindgen_anon_4.ipv4_dst = req.flow.saddr[3].to_be();
    }
    // SAFETY: ctx is the program's own context.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    // A forwarding lookup, as for a packet to the client arriving here: the whole routing table
    // decides (an output lookup would prefer routes through this device and miss the one the
    // kernel's own reply takes).
    p.ifindex = ingress;
    // Word by word, volatile: a plain assignment lets LLVM turn the request's zero tail into a
    // call to `memset`, which 6.1's verifier charges 32 bytes of the chain's 512 though it uses
    // none (see `ack::write_meta`).
    // SAFETY: the request is 16 plain u32 words.
    let words: [u32; 16] = unsafe { core::mem::transmute(p) };
    let dst = (&raw mut *fib).cast::<u32>();
    let mut i = 0;
    while i < 16 {
        // SAFETY: within the request in map memory, aligned for u32 as the struct is.
        unsafe { dst.add(i).write_volatile(words[i]) };
        i += 1;
    }
    // SAFETY: the request lives in map memory for the call; the helper checks its size.
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_fib_lookup(
            ctx.ctx.cast(),
            &raw mut *fib,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS if fib.ifindex == ingress => HOP_VIA,
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            HOP_UNROUTABLE
        }
        _ => HOP_SENDER,
    }
}

/// Stores the first `N` words of `src` at `off`.
#[inline(always)]
fn store_prefix<const N: usize>(pkt: &Pkt<XdpContext>, off: usize, src: &[u32; 10]) -> bool {
    let w: [u32; N] = core::array::from_fn(|i| src[i]);
    pkt.store_words(off, &w).is_some()
}

/// Passes a SYN the kernel may answer with a request socket of its own, which the socket table
/// does not see: until that could have expired, ACKs failing the cookie ask the kernel (see
/// `track::kernel_handshake`). (Not for an exempt source, whose ACKs pass before any cookie
/// check, nor a bad checksum, which the kernel drops.)
#[inline(always)]
fn to_kernel(reason: Counter) -> u32 {
    crate::track::kernel_handshake(crate::clock::now_ns());
    pass(reason)
}
