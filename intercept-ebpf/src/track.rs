//! The socket table: keeps `SOCKETS` equal to the set of non-listening TCP sockets, from the
//! `sock:inet_sock_set_state` tracepoint (every TCP state change of a full socket, in every
//! network namespace). See `intercept_common::config::SocketTable`.
use aya_ebpf::programs::TracePointContext;
use intercept_common::{config::FlowKey, cookie::words};

use crate::maps::{SOCKET_TABLE, SOCKETS};

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
        let _ = SOCKETS.remove(&key);
    } else if SOCKETS.insert(&key, &1, 0).is_err() {
        refused();
    }
}

/// Counts a change the table could not record: it is no longer authoritative.
#[inline(always)]
fn refused() {
    if let Some(t) = SOCKET_TABLE.get_ptr_mut(0) {
        // SAFETY: a valid u64 in map memory. Not atomic (the BPF target has no fetch_add in
        // core): racing CPUs may lose an increment, but never bring it back to zero.
        unsafe { (*t).refused = (*t).refused.wrapping_add(1).max(1) };
    }
}
