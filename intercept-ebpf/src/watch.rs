//! Watch mode: SYNs reach the server; every protected half-open handshake is tracked in HALF_OPEN
//! until the kernel completes it (the socket-table tracepoint sees its socket go SYN_RECV ->
//! ESTABLISHED) or drops it (the controller asks the kernel after each RST of the client). The
//! client's segments never untrack a flow here: their numbers are the kernel's to judge, and a
//! spoofed ACK or RST must not hide a half-open connection. The controller closes on the server
//! those that outlive the watch timeout. While aggressive, each new SYN displaces the oldest (or
//! a random) tracked handshake, which the controller then closes (Cisco's drop-mode); a full
//! table evicts the same way. From the decision to close a handshake until it is closed, the
//! client's ACKs and FINs of it are dropped (see `CLOSE_GRACE_NS`).
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32, programs::XdpContext};
use intercept_common::{
    Counter,
    config::{Config, DropMode, FlowKey, HalfOpen, RING_SLOTS, Ring},
    parse::{Ip, Tcp, TcpKind, classify, tcp_flags},
};

use crate::{
    frame::Pkt,
    maps::{CLOSING, CLOSING_GATE, HALF_OPEN, RING},
    scope,
    stats::{count, count_atomic, drop, pass},
};

/// `-E2BIG`: what inserting into a full preallocated hash map returns (`alloc_htab_elem`,
/// kernel/bpf/hashtab.c).
const E2BIG: i32 = -7;
/// `-EEXIST`: what inserting an existing key with `BPF_NOEXIST` returns.
const EEXIST: i32 = -17;

/// A protected SYN in watch mode: track it (or count a retransmission), displace a victim while
/// aggressive, and pass it to the server. Not inlined (see `synack::handle`).
#[inline(never)]
pub fn syn(ctx: &XdpContext, ip: &Ip, tcp: &Tcp) -> u32 {
    let (cfg, flow) = match scope::in_scope(&Pkt::new(ctx), ip, tcp) {
        Ok(x) => x,
        Err(verdict) => return verdict,
    };
    count(Counter::SynProtected);
    if scope::exempt(&flow, cfg) {
        return pass(Counter::PassExempt);
    }
    let key = FlowKey::of(&flow);
    if let Some(e) = HALF_OPEN.get_ptr_mut(&key) {
        // SAFETY: a valid map value pointer; concurrent writers only ever bump the same counters.
        unsafe {
            (*e).syns += 1;
            (*e).isn = tcp.seq;
        }
        return pass(Counter::SynRetransmit);
    }
    // Tick resolution is plenty for timeouts in seconds (see `clock`).
    let now = crate::clock::now_ns();
    // A retransmission of a handshake being closed is not tracked again: its ACKs must stay
    // dropped until the close (see `client_segment`).
    // SAFETY: read-only lookup, behind the gate.
    if closing_gate() && unsafe { CLOSING.get(&key) }.is_some() {
        return pass(Counter::SynRetransmit);
    }
    if cfg.aggressive != 0 {
        displace(cfg);
    }
    // The zero fields from an opaque zero: sixteen bytes of literal zeros become a call to
    // `memset`, which 6.1's verifier charges a frame of the call chain's 512 bytes.
    let zero = core::hint::black_box(0);
    let entry = HalfOpen {
        first_seen_ns: now,
        isn: tcp.seq,
        syns: 1,
        resets: zero,
        closing: zero,
        server_isn: zero,
        answered: zero,
    };
    match HALF_OPEN.insert(&key, &entry, u64::from(BPF_NOEXIST)) {
        Ok(()) => tracked(&key),
        // Full: room is made as drop-mode oldest makes it (the victim is closed on the server by
        // the controller), so every half-open connection the server holds stays tracked or
        // being closed. Without a victim (this CPU's ring holds none still tracked, or
        // `CLOSING` is full) the SYN passes untracked, and the count stays what the table holds.
        Err(E2BIG) => {
            if make_room()
                && HALF_OPEN
                    .insert(&key, &entry, u64::from(BPF_NOEXIST))
                    .is_ok()
            {
                tracked(&key);
            } else {
                count(Counter::HalfOpenTableFull);
            }
        }
        // EEXIST: the same SYN tracked on another CPU meanwhile.
        Err(_) => {}
    }
    pass(Counter::Passed)
}

/// Counts a new tracked handshake and appends it to this CPU's insertion ring.
#[inline(always)]
fn tracked(key: &FlowKey) {
    remember(key);
    count(Counter::HalfOpenNew);
}

/// Evicts this CPU's oldest tracked handshake from the full table; false if there is none (the
/// caller's insert tells whether room was made).
#[inline(always)]
fn make_room() -> bool {
    let Some(r) = RING.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; nothing else runs here meanwhile.
    oldest(unsafe { &mut *r }, Counter::HalfOpenEvicted)
}

/// Appends `key` to this CPU's insertion ring.
#[inline(always)]
fn remember(key: &FlowKey) {
    let Some(r) = RING.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot; nothing else runs here meanwhile.
    let r = unsafe { &mut *r };
    r.keys[(r.head as usize) % RING_SLOTS] = *key;
    r.head = r.head.wrapping_add(1);
    if r.head.wrapping_sub(r.tail) as usize > RING_SLOTS {
        r.tail = r.head.wrapping_sub(RING_SLOTS as u32);
    }
}

/// Picks a tracked handshake (this CPU's oldest, or a random one of its ring), queues it for the
/// controller to close on the server, and forgets it. Entries already gone are skipped.
#[inline(always)]
fn displace(cfg: &Config) {
    let Some(r) = RING.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot.
    let r = unsafe { &mut *r };
    if cfg.drop_mode == DropMode::Random as u32 {
        let live = r.head.wrapping_sub(r.tail);
        if live > 0 {
            // SAFETY: helper without side effects.
            let pick = r.tail.wrapping_add(unsafe { bpf_get_prandom_u32() } % live);
            let key = r.keys[(pick as usize) % RING_SLOTS];
            if evict(&key, Counter::HalfOpenDropped) {
                return;
            }
        }
    }
    oldest(r, Counter::HalfOpenDropped);
}

/// Evicts the oldest handshake of this CPU's ring still tracked, counting it as `reason`; a few
/// stale slots (handshakes completed meanwhile) are skipped. False if none was found.
#[inline(always)]
fn oldest(r: &mut Ring, reason: Counter) -> bool {
    let mut tries = 0;
    while tries < 8 && r.tail != r.head {
        let key = r.keys[(r.tail as usize) % RING_SLOTS];
        r.tail = r.tail.wrapping_add(1);
        if evict(&key, reason) {
            return true;
        }
        tries += 1;
    }
    false
}

/// Queues `key` for the controller to close on the server and untracks it, counting it as
/// `reason` (whoever removes an entry counts it, once). False if it is not tracked (try
/// another); true if it was evicted, or stays tracked because `CLOSING` is full (stop trying).
#[inline(always)]
fn evict(key: &FlowKey, reason: Counter) -> bool {
    // SAFETY: read-only lookup.
    if unsafe { HALF_OPEN.get(key) }.is_none() {
        return false;
    }
    let now = crate::clock::now_ns();
    // The gate first, then `CLOSING`, then the untracking: at no moment is the flow neither
    // tracked nor found closing, so its ACKs are dropped from now until the controller closes
    // it (see `CLOSE_GRACE_NS`).
    if let Some(gate) = CLOSING_GATE.get_ptr_mut(0) {
        // SAFETY: a valid u64 in map memory. A plain store of 1: the controller clearing it at
        // the same time is covered (see `intercept_common::maps::CLOSING_GATE`).
        unsafe { *gate = 1 };
    }
    match CLOSING.insert(key, &now, u64::from(BPF_NOEXIST)) {
        // EEXIST: already queued (a handshake of this 4-tuple displaced before and not yet
        // closed); one close serves both.
        Ok(()) | Err(EEXIST) => {}
        Err(_) => {
            count(Counter::VictimQueueFull);
            return true;
        }
    }
    if HALF_OPEN.remove(key).is_ok() {
        count(reason);
    }
    true
}

/// What the data path knows of the flow of a client's segment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not a handshake it tracks.
    Untracked,
    /// A tracked half-open handshake.
    Tracked,
    /// A half-open handshake the controller is closing (marked closing in `HALF_OPEN`, or
    /// queued in `CLOSING`): the client's ACKs and FINs are dropped (see `CLOSE_GRACE_NS`).
    Closing,
}

/// A client's segment (ACK, RST or FIN) of a possibly tracked handshake. An RST is counted in
/// the entry for the controller, which asks the kernel whether the request socket survived it.
/// Nothing is untracked here: the kernel alone decides whether the segment's numbers complete
/// the handshake (then the socket-table tracepoint untracks it, see [`completed`]) or end it
/// (`tcp_check_req` drops a request socket only for an RST in its window; a wrong ACK leaves it,
/// to be timed out).
#[inline(always)]
pub fn client_segment(key: &FlowKey, tcp: &Tcp) -> Seen {
    let Some(e) = HALF_OPEN.get_ptr_mut(key) else {
        // SAFETY: read-only lookup, behind the gate (one array load for every other segment).
        return if closing_gate() && unsafe { CLOSING.get(key) }.is_some() {
            Seen::Closing
        } else {
            Seen::Untracked
        };
    };
    // SAFETY: a valid map value pointer. `resets`: racing writers only ever bump it, and a lost
    // increment of a simultaneous RST is seen with the next one (or the timeout). `closing`:
    // written by the controller only.
    unsafe {
        if tcp.flags & tcp_flags::RST != 0 {
            (*e).resets = (*e).resets.wrapping_add(1);
        }
        if (*e).closing != 0 {
            return Seen::Closing;
        }
    }
    Seen::Tracked
}

/// Whether `CLOSING` may hold flows (see `intercept_common::maps::CLOSING_GATE`).
#[inline(always)]
pub fn closing_gate() -> bool {
    CLOSING_GATE.get(0).is_some_and(|gate| *gate != 0)
}

/// [`client_segment`] by the name the intercept-mode ACK path calls it (`ack::established`,
/// for handshakes started in watch mode): whether the flow is tracked.
#[inline(always)]
pub fn untrack(flow: &intercept_common::cookie::Flow, tcp: &Tcp) -> bool {
    client_segment(&FlowKey::of(flow), tcp) != Seen::Untracked
}

/// An ACK in intercept mode while watch mode's handshakes may still be tracked or closing
/// (`flags::TRACKING`, or the `CLOSING` gate open): true if its flow is being closed, so the
/// caller drops it as [`segment`] does in watch mode. Counts nothing: otherwise the caller's
/// ACK path counts the segment's verdict. (Not `scope::in_scope`, which counts the pass it
/// returns for a flow out of scope: every such ACK was counted passed twice.)
#[inline(never)]
pub fn closing(ctx: &XdpContext, ip: &Ip, tcp: &Tcp) -> bool {
    let pkt = Pkt::new(ctx);
    let (Some(cfg), Some(flow)) = (
        crate::maps::CONFIG.get(0),
        intercept_common::handshake::flow_of(&pkt, ip, tcp),
    ) else {
        return false;
    };
    scope::protected(&flow, cfg) && client_segment(&FlowKey::of(&flow), tcp) == Seen::Closing
}

/// The kernel completed a handshake: the socket-table tracepoint saw the server's socket of
/// `key` go SYN_RECV -> ESTABLISHED (`tcp_rcv_state_process`, after `tcp_check_req` accepted the
/// client's ACK). Untracks it and counts it completed, if it was tracked: whoever removes an
/// entry counts it, once.
#[inline(always)]
pub fn completed(key: &FlowKey) {
    if HALF_OPEN.remove(key).is_ok() {
        count_atomic(Counter::HalfOpenCompleted);
    }
}

/// Not an XDP verdict: `segment` asks its caller to run the cookie check (the caller, not
/// `segment`, makes that call: three nested frames exceed the verifier's combined stack limit,
/// "combined stack size of 3 calls is 672").
pub const VERIFY_COOKIE: u32 = u32::MAX;

/// An ACK, RST or FIN from a client in watch mode. Tracked: passed to the kernel (see
/// [`client_segment`]). Being closed: an RST passes (it can only end the request socket too), an
/// ACK or FIN is dropped. Untracked ACK during the grace period after intercept mode: returns
/// [`VERIFY_COOKIE`], since our cookie may still complete it.
#[inline(never)]
pub fn segment(ctx: &XdpContext, ip: &Ip, tcp: &Tcp) -> u32 {
    let (cfg, flow) = match scope::in_scope(&Pkt::new(ctx), ip, tcp) {
        Ok(x) => x,
        Err(verdict) => return verdict,
    };
    match client_segment(&FlowKey::of(&flow), tcp) {
        Seen::Closing if tcp.flags & tcp_flags::RST == 0 => {
            return drop(Counter::ClosingDropped);
        }
        Seen::Closing | Seen::Tracked => return pass(Counter::Passed),
        Seen::Untracked => {}
    }
    if classify(tcp.flags) == TcpKind::Ack
        && cfg.cookie_grace_until_ns != 0
        && crate::clock::now_ns() < cfg.cookie_grace_until_ns
    {
        return VERIFY_COOKIE;
    }
    pass(Counter::Passed)
}
