//! TC ingress: completes a handshake the XDP program verified. The kfunc that creates the
//! connection (`bpf_sk_assign_tcp_reqsk`, net/core/filter.c, Linux >= 6.9) exists for TC only,
//! so XDP leaves the decoded options in the frame's metadata and this program finishes the job.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_F_CURRENT_NETNS, TC_ACT_OK},
    helpers::generated::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_skc_to_tcp_sock},
    programs::TcContext,
};
use intercept_common::{
    Counter,
    config::{HANDOFF_MAGIC, Handoff, TcpReqAttrs},
    handshake::flow_of,
    parse::{Dissected, L3, L4, dissect},
};

use crate::{ack::tuple_of, frame::Pkt, stats::count};

/// `TCP_LISTEN` in include/net/tcp_states.h.
const TCP_LISTEN: u8 = 10;

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
        return TC_ACT_OK;
    }
    // SAFETY: [meta, meta + 24) is inside the metadata area, checked just above.
    let mut h: Handoff = unsafe { core::ptr::read_unaligned(meta as *const Handoff) };
    if h.magic != HANDOFF_MAGIC {
        return TC_ACT_OK;
    }
    let pkt = Pkt::new(ctx);
    let Ok(Dissected::Ip(ip)) = dissect(&pkt) else {
        count(Counter::HandoffFailed);
        return TC_ACT_OK;
    };
    let L4::Tcp(tcp) = ip.l4 else {
        count(Counter::HandoffFailed);
        return TC_ACT_OK;
    };
    let Some(flow) = flow_of(&pkt, &ip, &tcp) else {
        count(Counter::HandoffFailed);
        return TC_ACT_OK;
    };
    let (mut t, size) = tuple_of(&flow, matches!(ip.l3, L3::V6 { .. }));
    // SAFETY: valid context and tuple; every reference taken is released below.
    let sk =
        unsafe { bpf_skc_lookup_tcp(skb.cast(), &raw mut t, size, BPF_F_CURRENT_NETNS as u64, 0) };
    if sk.is_null() {
        // The listener went away between XDP and here; the kernel answers the ACK with a RST.
        count(Counter::AckNoListener);
        return TC_ACT_OK;
    }
    if unsafe { (*sk).state } != u32::from(TCP_LISTEN) {
        // The connection exists by now: this is one of the client's first data segments, which
        // repeat the handshake ACK's numbers (or a duplicate of that ACK). It is the socket's.
        unsafe { bpf_sk_release(sk.cast()) };
        count(Counter::PassEstablished);
        return TC_ACT_OK;
    }
    // The kfunc wants a full tcp_sock; passing the sock_common pointer is rejected by the
    // verifier ("arg#1 ... expected pointer to struct sock").
    let tsk = unsafe { bpf_skc_to_tcp_sock(sk.cast()) };
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
    count(if rc == 0 {
        Counter::HandedOff
    } else {
        Counter::HandoffFailed
    });
    TC_ACT_OK
}
