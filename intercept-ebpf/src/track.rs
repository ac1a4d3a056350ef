//! The socket table: keeps `SOCKETS` equal to the set of non-listening TCP sockets, from the
//! `sock:inet_sock_set_state` tracepoint (every TCP state change of a full socket, in every
//! network namespace). See `intercept_common::config::SocketTable`.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::BPF_NOEXIST, programs::TracePointContext};
use intercept_common::{
    config::{FlowKey, REQUEST_SOCK_LIFETIME_NS, socket_bucket, table_word},
    cookie::words,
};

use crate::maps::{SOCKET_FILTER, SOCKET_TABLE, SOCKETS};

/// `EEXIST` (include/uapi/asm-generic/errno-base.h).
const EEXIST: i32 = 17;

/// Field offsets of the tracepoint's record (tracefs `events/sock/inet_sock_set_state/format`;
/// the controller checks them against this kernel's before attaching).
pub mod offsets {
    /// `int newstate`.
    pub const NEWSTATE: usize = 20;
    /// `__u16 sport` (local port, host order).
    pub const SPORT: usize = 24;
    /// `__u16 dport` (remote port, host order).
    pub const DPORT: usize = 26;
    /// `__u16 protocol`.
    pub const PROTOCOL: usize = 30;
    /// `__u8 saddr_v6[16]` (local address; IPv4 ones IPv4-mapped).
    pub const SADDR_V6: usize = 40;
    /// `__u8 daddr_v6[16]` (remote address).
    pub const DADDR_V6: usize = 56;
}

const IPPROTO_TCP: u16 = 6;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

/// Handles one state change.
#[inline(always)]
pub fn handle(ctx: &TracePointContext) {
    // SAFETY: reads of the tracepoint record at the offsets of its format.
    let read = || unsafe {
        Some((
            ctx.read_at::<u16>(offsets::PROTOCOL).ok()?,
            ctx.read_at::<i32>(offsets::NEWSTATE).ok()?,
            ctx.read_at::<u16>(offsets::SPORT).ok()?,
            ctx.read_at::<u16>(offsets::DPORT).ok()?,
            ctx.read_at::<[u8; 16]>(offsets::SADDR_V6).ok()?,
            ctx.read_at::<[u8; 16]>(offsets::DADDR_V6).ok()?,
        ))
    };
    let Some((proto, state, local_port, remote_port, local, remote)) = read() else {
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
    } else {
        insert(&key);
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

/// Whether the table proves a flow it does not hold has no socket (see `SocketTable`), at `now`.
#[inline(always)]
pub fn authoritative(now: u64) -> bool {
    let word = |i| SOCKET_TABLE.get(i).copied().unwrap_or(0);
    word(table_word::SEEDED) == 1
        && word(table_word::REFUSED) == 0
        && now >= word(table_word::KERNEL_UNTIL)
}

/// Notes that the kernel may now create a request socket (a protected SYN passed to it in
/// intercept mode): the table stops being authoritative for a request socket's lifetime.
#[inline(always)]
pub fn kernel_handshake(now: u64) {
    if let Some(w) = SOCKET_TABLE.get_ptr_mut(table_word::KERNEL_UNTIL) {
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
