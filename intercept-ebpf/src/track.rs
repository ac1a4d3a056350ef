//! The socket table: keeps `SOCKETS` equal to the set of non-listening TCP sockets, from the
//! `sock:inet_sock_set_state` tracepoint (every TCP state change of a full socket, in every
//! network namespace). See `intercept_common::config::SocketTable`. The same state changes tell
//! watch mode which tracked handshakes the kernel completed.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::BPF_NOEXIST, programs::TracePointContext};
use intercept_common::{
    config::{
        FlowKey, REQUEST_SOCK_LIFETIME_NS, SocketTable, TIME_WAIT_NS, proven_slot, socket_bucket,
        table_word, time_wait_bucket,
    },
    cookie::words,
    maps::trace_field,
};

use crate::maps::{PROVEN, SOCKET_FILTER, SOCKET_TABLE, SOCKETS, TIME_WAIT, TIME_WAIT_FILTER};

/// `EEXIST` (include/uapi/asm-generic/errno-base.h).
const EEXIST: i32 = 17;

const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_FIN_WAIT2: i32 = 5;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;
const TCP_CLOSING: i32 = 11;

/// Handles one state change.
#[inline(always)]
pub fn handle(ctx: &TracePointContext) {
    // SAFETY: reads of the tracepoint record at the offsets of its format (checked at attach).
    let read = || unsafe {
        Some((
            ctx.read_at::<u16>(trace_field::PROTOCOL.offset).ok()?,
            ctx.read_at::<i32>(trace_field::OLDSTATE.offset).ok()?,
            ctx.read_at::<i32>(trace_field::NEWSTATE.offset).ok()?,
            ctx.read_at::<u16>(trace_field::SPORT.offset).ok()?,
            ctx.read_at::<u16>(trace_field::DPORT.offset).ok()?,
            ctx.read_at::<[u8; 16]>(trace_field::SADDR_V6.offset).ok()?,
            ctx.read_at::<[u8; 16]>(trace_field::DADDR_V6.offset).ok()?,
        ))
    };
    let Some((proto, old, state, local_port, remote_port, local, remote)) = read() else {
        refused();
        return;
    };
    if proto != IPPROTO_TCP || state == TCP_LISTEN {
        return;
    }
    // The flow as its inbound segments carry it: remote -> local.
    let key = FlowKey {
        saddr: words(&remote),
        daddr: words(&local),
        sport: remote_port,
        dport: local_port,
    };
    if state == TCP_CLOSE {
        remove(&key);
        // Closed by the server first: `tcp_time_wait` replaces the socket with a time-wait one,
        // which fires no state change of its own, and its peer's late segments (a retransmitted
        // FIN, data on a connection it thinks open, a SYN reusing the 4-tuple) must reach it.
        if matches!(old, TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSING) {
            // The precise clock: tracepoints may not read the coarse one (the data path's), which
            // runs at most a tick behind it, so the expiry is at worst a tick generous.
            // SAFETY: a helper without side effects.
            time_wait(&key, unsafe {
                aya_ebpf::helpers::generated::bpf_ktime_get_ns()
            });
        }
    } else {
        insert(&key);
        // The connection exists: a handoff of this flow in flight is complete, and from now on
        // the table passes its segments.
        settled(&key);
        // The kernel accepted the client's ACK: a handshake watch mode tracked is complete.
        // (A Fast Open child is created in SYN_RECV at the SYN; only ESTABLISHED completes it.)
        if old == TCP_SYN_RECV && state == TCP_ESTABLISHED {
            crate::watch::completed(&key);
        }
    }
}

/// Records that `key` lives on as a time-wait socket from `now` on.
#[inline(always)]
pub fn time_wait(key: &FlowKey, now: u64) {
    let until = now + TIME_WAIT_NS;
    if TIME_WAIT.insert(key, &until, 0).is_ok()
        && let Some(b) = TIME_WAIT_FILTER.get_ptr_mut(time_wait_bucket(key))
    {
        // SAFETY: a valid u64 in map memory. Writers store nearly the same time (now + 70 s, now
        // monotonic), so a race loses microseconds of a bucket's time at worst.
        unsafe { *b = until };
    }
}

/// Whether `key` is a time-wait socket of the kernel's at `now`: its filter bucket's time not yet
/// passed (one array load), then its own.
#[inline(always)]
pub fn in_time_wait(key: &FlowKey, now: u64) -> bool {
    TIME_WAIT_FILTER
        .get(time_wait_bucket(key))
        .is_some_and(|until| *until > now)
        // SAFETY: read-only lookup; the value is copied at once.
        && unsafe { TIME_WAIT.get(key) }.is_some_and(|until| *until > now)
}

/// Frees `key`'s slot in the handoffs in flight (see `intercept_common::config::Proven`).
#[inline(always)]
fn settled(key: &FlowKey) {
    if let Some(slot) = PROVEN.get_ptr_mut(proven_slot(key)) {
        // SAFETY: a valid slot in map memory; only its time word is written, and only when it
        // holds this flow.
        let slot = unsafe { &mut *slot };
        if slot.at_ns != 0 && slot.key == *key {
            slot.at_ns = 0;
        }
    }
}

/// The bucket counter of `key` in the filter.
#[inline(always)]
fn bucket(key: &FlowKey) -> Option<*mut u64> {
    SOCKET_FILTER.get_ptr_mut(socket_bucket(key))
}

/// Adds a flow (a no-op if present). The bucket is counted before the flow is inserted, so a
/// reader never sees the flow without its bucket's count.
#[inline(always)]
pub fn insert(key: &FlowKey) {
    let Some(b) = bucket(key) else {
        refused();
        return;
    };
    // SAFETY: a valid u64 in map memory; an atomic add, as CPUs race here.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(b, 1) };
    match SOCKETS.insert(key, &1, BPF_NOEXIST.into()) {
        Ok(()) => {}
        Err(e) => {
            // SAFETY: as above.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(b, u64::MAX) };
            if e != -EEXIST {
                refused();
            }
        }
    }
}

/// Removes a flow (a no-op if absent); its bucket is uncounted after.
#[inline(always)]
fn remove(key: &FlowKey) {
    if SOCKETS.remove(key).is_ok()
        && let Some(b) = bucket(key)
    {
        // SAFETY: a valid u64 in map memory; an atomic add of -1.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(b, u64::MAX) };
    }
}

/// The table's state, from its words.
#[inline(always)]
pub fn state() -> SocketTable {
    let word = |i| SOCKET_TABLE.get(i).copied().unwrap_or(0);
    SocketTable {
        seeded: word(table_word::SEEDED) == 1,
        refused: word(table_word::REFUSED),
        lookup_until_ns: word(table_word::LOOKUP_UNTIL),
    }
}

/// Notes that the kernel may now create a request socket (a protected SYN passed to it in
/// intercept mode): the table stops being authoritative for a request socket's lifetime.
#[inline(always)]
pub fn kernel_handshake(now: u64) {
    if let Some(w) = SOCKET_TABLE.get_ptr_mut(table_word::LOOKUP_UNTIL) {
        // SAFETY: a valid u64 in map memory. A plain store: racing writers store nearly the same
        // time, and any of them keeps the table non-authoritative long enough.
        unsafe { *w = now + REQUEST_SOCK_LIFETIME_NS };
    }
}

/// Whether the table may hold `key`: its bucket is counted (then look it up), or not (absent).
#[inline(always)]
pub fn may_hold(key: &FlowKey) -> bool {
    // SAFETY: a valid u64 in map memory; a plain load (a racing add is ordered by the insert).
    bucket(key).is_none_or(|b| unsafe { core::ptr::read_volatile(b) } != 0)
}

/// Counts a change the table could not record: it is no longer authoritative.
#[inline(always)]
fn refused() {
    if let Some(r) = SOCKET_TABLE.get_ptr_mut(table_word::REFUSED) {
        // SAFETY: a valid u64 in map memory; an atomic add, as CPUs race here.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(r, 1) };
    }
}
