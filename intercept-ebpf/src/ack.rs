//! ACK path: an ACK to a protected destination either belongs to an existing socket (passed), or
//! completes one of our cookie handshakes (verified here, handed to TC in metadata), or is dropped.
use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple},
    helpers::generated::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_xdp_adjust_meta},
    programs::XdpContext,
};
use intercept_common::{
    Counter,
    config::{Config, FOLLOW_FLIP, FlowKey, Handoff, Proven, TcpReqAttrs, flags, proven_slot},
    cookie::{self, CookieError, Flow, slot_of},
    handshake::handoff_attrs,
    parse::{Ip, L3, Tcp, tcp_flags},
    tcpopt,
};

use crate::{
    frame::Pkt,
    maps::{PROVEN, SECRETS, SOCKETS},
    scope,
    stats::{count, drop, pass},
};

/// `bpf_sock.state` of a listener.
const TCP_LISTEN: u32 = intercept_common::config::tcp_state::LISTEN as u32;

/// What the socket table holds for a flow.
pub enum Sock {
    /// Nothing: no connection, no listener.
    None,
    /// A listening socket.
    Listener,
    /// Anything else: established, request (SYN_RECV), time-wait...
    Other,
}

/// Builds the lookup tuple of `flow` (client -> server, as on the wire).
#[inline(always)]
pub fn tuple_of(flow: &Flow, v6: bool) -> (bpf_sock_tuple, u32) {
    // SAFETY: an all-zero tuple is valid.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    if v6 {
        // SAFETY: writing the ipv6 member of a zeroed union.
        let a = unsafe { &mut t.__bindgen_anon_1.ipv6 };
        a.saddr = be_words(&flow.saddr);
        a.daddr = be_words(&flow.daddr);
        a.sport = flow.sport.to_be();
        a.dport = flow.dport.to_be();
        (t, 36)
    } else {
        // SAFETY: writing the ipv4 member of a zeroed union.
        let a = unsafe { &mut t.__bindgen_anon_1.ipv4 };
        a.saddr = flow.saddr[3].to_be();
        a.daddr = flow.daddr[3].to_be();
        a.sport = flow.sport.to_be();
        a.dport = flow.dport.to_be();
        (t, 12)
    }
}

/// Address words in network byte order in memory (`__be32`).
#[inline(always)]
fn be_words(a: &[u32; 4]) -> [u32; 4] {
    [a[0].to_be(), a[1].to_be(), a[2].to_be(), a[3].to_be()]
}

/// Looks the flow up in the socket table of this network namespace.
#[inline(always)]
fn lookup(ctx: &XdpContext, flow: &Flow, v6: bool) -> Sock {
    let (mut t, size) = tuple_of(flow, v6);
    // SAFETY: valid context and tuple; the reference is released below.
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx.cast(),
            &raw mut t,
            size,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return Sock::None;
    }
    // SAFETY: sk is a valid, referenced bpf_sock until released.
    let state = unsafe { (*sk).state };
    unsafe { bpf_sk_release(sk.cast()) };
    if state == TCP_LISTEN {
        Sock::Listener
    } else {
        Sock::Other
    }
}

/// Handles an ACK (no SYN, no RST) in intercept mode. Not inlined (see `synack::handle`).
///
/// In order: a flow in the socket table belongs to an existing socket and passes (one hash
/// lookup); otherwise the cookie decides. A valid one leads its handshake's handoff to TC, which
/// creates the connection in the listener, unless it follows a handoff in flight (the client's
/// request in the same poll as its ACK): then it passes, marked for TC (see `Proven`). A failed
/// one passes if it follows a handoff in flight (a later segment of the request, a FIN) or
/// belongs to a socket the kernel holds outside the table (a time-wait connection, or a request
/// socket of a SYN that came over another interface: to the kernel, which answers it); otherwise
/// it is dropped,
/// unless the table is not authoritative (not yet seeded, refused an insert, or the kernel's own
/// handshakes may still complete): then the kernel's socket table is asked first, as the kernel's
/// XDP synproxy does for every ACK.
#[inline(never)]
pub fn handle(ctx: &XdpContext, ip: &Ip, tcp: &Tcp) -> u32 {
    verify(ctx, ip, tcp, true)
}

/// The ACK path in watch mode during the grace period after intercept mode: a valid cookie is
/// still handed off (the handshake started under intercept), anything else passes to the kernel,
/// which watch mode leaves in charge.
#[inline(never)]
pub fn handle_grace(ctx: &XdpContext, ip: &Ip, tcp: &Tcp) -> u32 {
    verify(ctx, ip, tcp, false)
}

/// What every ACK path does first: the scope (out of it: passed), the socket table (a flow it
/// holds: passed as established), the exempt sources (passed). The rest goes on with its
/// configuration, flow and key, or ends with the verdict.
#[inline(always)]
fn admit(
    pkt: &Pkt<XdpContext>,
    ip: &Ip,
    tcp: &Tcp,
) -> Result<(&'static Config, Flow, FlowKey), u32> {
    let (cfg, flow) = scope::in_scope(pkt, ip, tcp)?;
    // The filter first: a zero bucket proves the flow absent without hashing it.
    let key = FlowKey::of(&flow);
    // SAFETY: read-only lookup.
    if crate::track::may_hold(&key) && unsafe { SOCKETS.get(&key) }.is_some() {
        return Err(established(&flow, tcp, cfg));
    }
    if scope::exempt(&flow, cfg) {
        return Err(pass(Counter::PassExempt));
    }
    Ok((cfg, flow, key))
}

/// The ACK path; `strict` drops what fails (intercept mode), otherwise it passes.
#[inline(always)]
fn verify(ctx: &XdpContext, ip: &Ip, tcp: &Tcp, strict: bool) -> u32 {
    // Config is fetched in `in_scope`, not passed: LLVM promotes pointer arguments of a
    // subprogram to scalars, and past five arguments it spills to a stack the kernel does not
    // have ("R11 is invalid"). An array lookup is inlined by the verifier and costs next to nothing.
    let pkt = Pkt::new(ctx);
    let (cfg, flow, key) = match admit(&pkt, ip, tcp) {
        Ok(x) => x,
        Err(verdict) => return verdict,
    };
    let Some(secrets) = SECRETS.get(0) else {
        return pass(Counter::PassNoSecret);
    };
    let now = crate::clock::now_ns();
    // With timestamps, part of the cookie comes back as the TSecr (see `cookie`). Read once: the
    // handoff needs them too, and a second option walk would double the verifier's states.
    let ts = tcpopt::timestamps(&pkt, tcp.off, tcp.hdr_len);
    let err = match cookie::check(
        secrets,
        &flow,
        tcp.seq.wrapping_sub(1),
        tcp.ack_seq.wrapping_sub(1),
        ts.map(|(_, tsecr)| tsecr),
        slot_of(now),
    ) {
        Ok(co) => {
            if !lead(&key, tcp, now) {
                return follow(ctx, cfg);
            }
            let v6 = matches!(ip.l3, L3::V6 { .. });
            return handoff(ctx, co, v6, cfg, &key, ts);
        }
        Err(_) if !strict => return pass(Counter::Passed),
        Err(e) => e,
    };
    // The client's later segments of a handshake just handed off (its request beyond the first
    // segment, a FIN) repeat no cookie: they follow the handoff. A pure ACK never does (before
    // the server sends, the client has nothing to acknowledge), so a forged-ACK flood of pure
    // ACKs costs nothing more here.
    if (tcp.payload_len > 0 || tcp.flags & tcp_flags::FIN != 0)
        && PROVEN
            .get(proven_slot(&key))
            .is_some_and(|p| p.follows(&key, tcp.seq, tcp.ack_seq, now))
    {
        return follow(ctx, cfg);
    }
    // A connection the server closed first lives on as a time-wait socket, which the table does
    // not hold; its peer's late segments must reach it. So must the ACK of a handshake the
    // kernel answered itself, its SYN having come over another interface (a request socket).
    if crate::track::kernel_held(&key, now) {
        return pass(Counter::PassTimeWait);
    }
    if !crate::track::state().authoritative(now) {
        count(Counter::SocketLookups);
        if let Sock::Other = lookup(ctx, &flow, matches!(ip.l3, L3::V6 { .. })) {
            return established(&flow, tcp, cfg);
        }
    }
    drop(match err {
        CookieError::BadMac => Counter::AckBadMac,
    })
}

/// The ACK path of the kernel-cookie engine in intercept mode: after the socket table and the
/// exemptions, as for our own cookies, the kernel's socket table and the listener's own cookie
/// check decide. A valid cookie passes to the listener, which completes the handshake itself; so
/// do the client's later segments of it (its request, a FIN), which carry the same
/// acknowledgment number and so the same cookie until the connection exists. Not inlined: a
/// frame of its own, apart from [`handle`]'s (the helpers' tuple on top of that one would pass
/// the 512-byte stack). `strict`: intercept mode; otherwise watch mode's grace period after
/// it, where a cookie that fails passes (the kernel is in charge), and a valid one is counted.
#[inline(never)]
pub fn handle_kernel_cookie(ctx: &XdpContext, ip: &Ip, tcp: &Tcp, strict: bool) -> u32 {
    let pkt = Pkt::new(ctx);
    let (cfg, flow, key) = match admit(&pkt, ip, tcp) {
        Ok(x) => x,
        Err(verdict) => return verdict,
    };
    let now = crate::clock::now_ns();
    // The client's later segments of a handshake whose first one just passed (its request
    // split over segments, a FIN) carry the same cookie, but the kernel's check takes the
    // client's ISN from each segment's sequence number, which has moved on: they follow that
    // one to the listener, which has the connection by the time it reads them (see `Proven`).
    if (tcp.payload_len > 0 || tcp.flags & tcp_flags::FIN != 0)
        && PROVEN
            .get(proven_slot(&key))
            .is_some_and(|p| p.follows(&key, tcp.seq, tcp.ack_seq, now))
    {
        return pass(Counter::PassProven);
    }
    let v6 = u32::from(matches!(ip.l3, L3::V6 { .. }));
    match crate::kcookie::check_ack(ctx, ip.l3_off as u32, tcp.off as u32, v6) {
        crate::kcookie::VALID => {
            let _ = lead(&key, tcp, now);
            count(Counter::AckValid);
            // Handed to the listener, which creates the connection itself.
            count(Counter::HandedOff);
            pass(Counter::Passed)
        }
        crate::kcookie::KERNEL_SOCKET => established(&flow, tcp, cfg),
        crate::kcookie::TIME_WAIT => pass(Counter::PassTimeWait),
        // No listener: the kernel resets it, as without us.
        crate::kcookie::NO_SOCKET => pass(Counter::AckNoListener),
        crate::kcookie::INVALID if strict => drop(Counter::AckBadMac),
        crate::kcookie::INVALID => pass(Counter::Passed),
        crate::kcookie::UNCHECKED => pass(Counter::AckCookieUnchecked),
        _ => crate::stats::aborted(crate::events::Abort::KernelCookieCopy, 0),
    }
}

/// Passes a segment of an existing connection.
#[inline(always)]
fn established(flow: &Flow, tcp: &Tcp, cfg: &Config) -> u32 {
    // A handshake started in watch mode may still be tracked: it is complete now.
    if cfg.flags & flags::TRACKING != 0 {
        crate::watch::untrack(flow, tcp);
    }
    pass(Counter::PassEstablished)
}

/// Whether a segment whose cookie verified leads its handshake's handoff: no handoff of this
/// flow in flight (then its slot records this one), or one it does not follow (an older
/// handshake of the same 4-tuple, or another flow in the slot: the newer takes it). Otherwise it
/// follows the handoff in flight and must not get a second one (see `Proven`).
#[inline(always)]
fn lead(key: &FlowKey, tcp: &Tcp, now: u64) -> bool {
    let Some(slot) = PROVEN.get_ptr_mut(proven_slot(key)) else {
        return true;
    };
    // SAFETY: a valid slot in map memory. Another CPU may write it at the same time only for a
    // flow of the same slot; a torn slot then matches neither flow (its key and numbers come
    // from different handshakes), and its followers are handed off as if it were absent.
    let slot = unsafe { &mut *slot };
    if slot.follows(key, tcp.seq, tcp.ack_seq, now) {
        return false;
    }
    let new = Proven::new(*key, tcp.seq, tcp.ack_seq, now);
    // The key word by word, volatile: LLVM cannot prove `key` apart from map memory, and its
    // copy becomes a call to `memmove` (see `write_meta` for what a call costs the stack on
    // older kernels).
    // SAFETY: FlowKey is nine plain u32 words.
    let words: [u32; 9] = unsafe { core::mem::transmute(*key) };
    let dst = (&raw mut slot.key).cast::<u32>();
    let mut i = 0;
    while i < 9 {
        // SAFETY: within the slot's key, which map memory aligns for u32.
        unsafe { dst.add(i).write_volatile(words[i]) };
        i += 1;
    }
    slot.state = new.state;
    slot.at_ns = new.at_ns;
    slot.client_next = new.client_next;
    slot.server_next = new.server_next;
    true
}

/// Passes a segment that follows a handoff in flight, marked for TC (which drops it if that
/// handoff was refused); unmarked if the metadata cannot be added (then TC passes it).
#[inline(always)]
fn follow(ctx: &XdpContext, cfg: &Config) -> u32 {
    let _ = write_meta(
        ctx,
        Handoff {
            magic: cfg.meta_tag ^ FOLLOW_FLIP,
            attrs: TcpReqAttrs::default(),
        },
    );
    pass(Counter::PassProven)
}

/// Makes `h` the frame's XDP metadata, for TC, in place of any the frame carried (a frame
/// redirected from another interface keeps the metadata another program gave it, and the
/// kernel allows 32 bytes in all). False if the driver supports no metadata.
#[inline(always)]
fn write_meta(ctx: &XdpContext, h: Handoff) -> bool {
    // SAFETY: ctx is the program's own context.
    let (meta, data) = unsafe { (i64::from((*ctx.ctx).data_meta), i64::from((*ctx.ctx).data)) };
    let delta = (data - size_of::<Handoff>() as i64 - meta) as i32;
    // SAFETY: ctx is the program's own context; the kernel checks the new bounds.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, delta) } != 0 {
        return false;
    }
    // After adjust_meta, data_meta moved: read it (and data) afresh from the context.
    // SAFETY: ctx.ctx is valid; the range is checked against data before writing.
    let (meta, data) = unsafe { ((*ctx.ctx).data_meta as usize, (*ctx.ctx).data as usize) };
    if meta + size_of::<Handoff>() > data {
        return false;
    }
    // Word by word, each a volatile store of four bytes (the area need not be aligned): a plain
    // copy lets LLVM turn the zero attributes of `follow` into a call to `memset`, and 6.1's
    // verifier (check_max_stack_depth) rounds every frame of a call chain up to 32 bytes, one
    // that uses none too: "combined stack size of 3 calls is 544. Too large" (this program 160,
    // `handle` 352, `memset` 32). Newer kernels count an unused frame as nothing.
    // SAFETY: Handoff is six plain u32 words.
    let words: [u32; 6] = unsafe { core::mem::transmute(h) };
    let mut i = 0;
    while i < 6 {
        // SAFETY: [meta, meta + 24) lies inside the metadata area, checked just above; the
        // store is byte-aligned.
        unsafe {
            (meta as *mut [u8; 4])
                .add(i)
                .write_volatile(words[i].to_ne_bytes());
        }
        i += 1;
    }
    true
}

/// Leaves the decoded options in the metadata for TC and passes the ACK; `ts` its timestamps.
#[inline(always)]
fn handoff(
    ctx: &XdpContext,
    co: cookie::CookieOpts,
    v6: bool,
    cfg: &Config,
    key: &FlowKey,
    ts: Option<(u32, u32)>,
) -> u32 {
    let h = Handoff {
        magic: cfg.meta_tag,
        attrs: handoff_attrs(co, v6, cfg, ts),
    };
    if !write_meta(ctx, h) {
        // Nothing leads this handshake: its next segment must lead it again.
        if let Some(slot) = PROVEN.get_ptr_mut(proven_slot(key)) {
            // SAFETY: a valid slot in map memory (see `lead`).
            let slot = unsafe { &mut *slot };
            if slot.key == *key {
                slot.at_ns = 0;
            }
        }
        count(Counter::MetaUnsupported);
        return crate::stats::aborted(crate::events::Abort::NoMetadata, 0);
    }
    count(Counter::AckValid);
    pass(Counter::Passed)
}
