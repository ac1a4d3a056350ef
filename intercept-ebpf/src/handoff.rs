//! TC ingress: completes a handshake the XDP program verified. The kfunc that creates the
//! connection (`bpf_sk_assign_tcp_reqsk`, net/core/filter.c, Linux >= 6.9) exists for TC only,
//! so XDP leaves the decoded options in the frame's metadata and this program finishes the job.
//! Segments XDP marked as following a handoff (see `intercept_common::config::Proven`) pass if
//! that handoff was made, and are dropped if it was refused.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_F_CURRENT_NETNS, TC_ACT_SHOT, tcx_action_base::TCX_NEXT},
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_skc_to_tcp_sock},
    },
    programs::TcContext,
};
use intercept_common::{
    Counter,
    config::{FOLLOW_FLIP, FlowKey, Handoff, Proven, TcpReqAttrs, proven_slot, proven_state},
    handshake::flow_of,
    parse::{Dissected, L3, L4, dissect},
};

use crate::{
    ack::tuple_of,
    events::rare,
    frame::Pkt,
    maps::{CONFIG, PROVEN},
    stats::count,
};

/// What this program returns for every frame it does not drop: go on to the next program of the
/// TCX chain (`TCX_NEXT`; under a clsact qdisc the same value, `TC_ACT_UNSPEC`, means the same).
/// `TC_ACT_OK` would end the chain, and the programs other agents attached after ours would never
/// see a packet.
const NEXT: i32 = TCX_NEXT;

/// Offset of `sk_ack_backlog` in the kernel's `struct sock` (the accept queue's length), set by
/// the loader from the kernel's BTF; 0 if unknown (no check). Read volatile: the compiler must
/// not fold the initial value.
#[unsafe(no_mangle)]
static SK_ACK_BACKLOG_OFFSET: u32 = 0;

/// Offset of `sk_max_ack_backlog` in `struct sock` (the listen backlog), as above.
#[unsafe(no_mangle)]
static SK_MAX_ACK_BACKLOG_OFFSET: u32 = 0;

use intercept_common::config::tcp_state::LISTEN as TCP_LISTEN;

/// Kernel types named in the kfunc's signature. Only their names matter: the loader declares
/// the kfunc in the object's BTF with these struct names (see intercept-ctl's `btf_patch`), and
/// the kernel checks the call against its own BTF.
#[repr(C)]
pub struct Sock {
    _opaque: [u8; 0],
}

unsafe extern "C" {
    /// `int bpf_sk_assign_tcp_reqsk(struct __sk_buff *skb, struct sock *sk,
    ///  struct bpf_tcp_req_attrs *attrs, int attrs__sz)`.
    fn bpf_sk_assign_tcp_reqsk(
        skb: *mut __sk_buff,
        sk: *mut Sock,
        attrs: *mut TcpReqAttrs,
        attrs_sz: i32,
    ) -> i32;
}

/// Handles one ingress skb.
#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    let skb: *mut __sk_buff = ctx.as_ptr().cast();
    // SAFETY: skb is the program's own context.
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    if meta + size_of::<Handoff>() > data {
        return NEXT;
    }
    // SAFETY: [meta, meta + 24) is inside the metadata area, checked just above.
    let mut h: Handoff = unsafe { core::ptr::read_unaligned(meta as *const Handoff) };
    let Some(tag) = CONFIG.get(0).map(|c| c.meta_tag) else {
        return NEXT;
    };
    let follows = h.magic == tag ^ FOLLOW_FLIP;
    if h.magic != tag && !follows {
        return NEXT;
    }
    let pkt = Pkt::new(ctx);
    let Ok(Dissected::Ip(ip)) = dissect(&pkt) else {
        count(Counter::HandoffFailed);
        return NEXT;
    };
    let L4::Tcp(tcp) = ip.l4 else {
        count(Counter::HandoffFailed);
        return NEXT;
    };
    let Some(flow) = flow_of(&pkt, &ip, &tcp) else {
        count(Counter::HandoffFailed);
        return NEXT;
    };
    let key = FlowKey::of(&flow);
    let slot = PROVEN.get_ptr_mut(proven_slot(&key));
    // SAFETY: a valid slot in map memory; TC writes only its state word, and only for this flow.
    let slot = slot.map(|p| unsafe { &mut *p }).filter(|p| p.key == key);
    if follows {
        return follower(slot);
    }
    let (mut t, size) = tuple_of(&flow, matches!(ip.l3, L3::V6 { .. }));
    // SAFETY: valid context and tuple; every reference taken is released below.
    let sk =
        unsafe { bpf_skc_lookup_tcp(skb.cast(), &raw mut t, size, BPF_F_CURRENT_NETNS as u64, 0) };
    if sk.is_null() {
        // The listener went away between XDP and here; the kernel answers the ACK with a RST.
        settle(slot, proven_state::REFUSED);
        count(Counter::AckNoListener);
        return NEXT;
    }
    if unsafe { (*sk).state } != u32::from(TCP_LISTEN) {
        // The connection exists by now (a retransmission of the handshake's first segment after
        // the connection was made). It is the socket's, and so are its followers.
        unsafe { bpf_sk_release(sk.cast()) };
        settle(slot, proven_state::HANDED);
        count(Counter::PassEstablished);
        return NEXT;
    }
    // The kfunc wants a full tcp_sock; passing the sock_common pointer is rejected by the
    // verifier ("arg#1 ... expected pointer to struct sock").
    let tsk = unsafe { bpf_skc_to_tcp_sock(sk.cast()) };
    if !tsk.is_null() && accept_queue_full(tsk.cast()) {
        // The kernel would create the connection only to drop it (`tcp_v4_syn_recv_sock`:
        // ListenOverflows) and leave the client's next segments to a listener that resets
        // them. Dropped here, the client retransmits and tries again, as with the kernel's
        // own cookies.
        unsafe { bpf_sk_release(sk.cast()) };
        settle(slot, proven_state::REFUSED);
        count(Counter::AckQueueFull);
        return TC_ACT_SHOT;
    }
    let mut rc = -1;
    if !tsk.is_null() {
        rc = unsafe {
            bpf_sk_assign_tcp_reqsk(
                skb,
                tsk.cast(),
                &raw mut h.attrs,
                size_of::<TcpReqAttrs>() as i32,
            )
        };
    }
    unsafe { bpf_sk_release(sk.cast()) };
    if rc == 0 {
        settle(slot, proven_state::HANDED);
        count(Counter::HandedOff);
    } else {
        settle(slot, proven_state::REFUSED);
        count(Counter::HandoffFailed);
        let (client, port) = (ipv6(&key.saddr), key.sport);
        if tsk.is_null() {
            rare!(
                warn,
                ctx,
                "handoff refused: the listener of port {} is not a full TCP socket \
                 (bpf_skc_to_tcp_sock); client [{:i}]:{}",
                key.dport,
                client,
                port
            );
        } else {
            // -EINVAL from `bpf_sk_assign_tcp_reqsk` (net/core/filter.c) most often means the
            // listener's namespace turned off an option the cookie carries (tcp_sack,
            // tcp_window_scaling, tcp_timestamps) or the listener is MPTCP.
            rare!(
                warn,
                ctx,
                "handoff refused: bpf_sk_assign_tcp_reqsk returned {} for port {}; client \
                 [{:i}]:{}",
                rc,
                key.dport,
                client,
                port
            );
        }
    }
    NEXT
}

/// An address of a flow key (IPv4 ones IPv4-mapped), for a log line.
#[inline(always)]
fn ipv6(w: &[u32; 4]) -> core::net::Ipv6Addr {
    let hi = |w: u32| (w >> 16) as u16;
    core::net::Ipv6Addr::new(
        hi(w[0]),
        w[0] as u16,
        hi(w[1]),
        w[1] as u16,
        hi(w[2]),
        w[2] as u16,
        hi(w[3]),
        w[3] as u16,
    )
}

/// Records what became of a handshake's handoff in its slot, for the segments following it.
#[inline(always)]
fn settle(slot: Option<&mut Proven>, state: u32) {
    if let Some(s) = slot {
        s.state = state;
    }
}

/// A segment XDP passed as following a handoff: it goes on if that handoff was made (TCP,
/// processing this batch in order, delivers it to the connection the first segment creates) or
/// its slot no longer holds it (the connection exists: the tracepoint freed the slot; or another
/// handshake took the slot). If the handoff was refused, or never reached TC, it is dropped: the
/// listener would reset it, and dropped, its retransmission leads a handoff of its own.
#[inline(always)]
fn follower(slot: Option<&mut Proven>) -> i32 {
    match slot {
        Some(s) if s.at_ns != 0 && s.state != proven_state::HANDED => {
            count(Counter::FollowerDropped);
            TC_ACT_SHOT
        }
        _ => NEXT,
    }
}

/// Whether the listener `sk` (a `struct sock`) has a full accept queue: `sk_acceptq_is_full`
/// (include/net/sock.h), read at the offsets the loader found in the kernel's BTF. False when
/// they are unknown or unreadable: then the kernel decides, as it always did.
#[inline(always)]
fn accept_queue_full(sk: *const u8) -> bool {
    // SAFETY: loader-set constants, read volatile so the compiler keeps the loads.
    let (len_at, max_at) = unsafe {
        (
            core::ptr::read_volatile(&raw const SK_ACK_BACKLOG_OFFSET),
            core::ptr::read_volatile(&raw const SK_MAX_ACK_BACKLOG_OFFSET),
        )
    };
    if len_at == 0 || max_at == 0 {
        return false;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a failed read says "not full".
    let read = |at: u32| unsafe { bpf_probe_read_kernel(sk.add(at as usize).cast::<u32>()) };
    match (read(len_at), read(max_at)) {
        (Ok(len), Ok(max)) => len > max,
        _ => false,
    }
}
