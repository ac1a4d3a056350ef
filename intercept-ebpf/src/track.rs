//! The socket table: keeps `SOCKETS` equal to the set of non-listening TCP sockets of the
//! attachment's network namespace, from the `sock:inet_sock_set_state` tracepoint (every TCP
//! state change of a full socket, in every network namespace of the host: the others' are
//! ignored). See `intercept_common::config::SocketTable`. The same state changes tell watch mode
//! which tracked handshakes the kernel completed. Sockets the kernel holds outside the table
//! (time-wait sockets, and request sockets hashed in intercept mode, from a tracing program on
//! the kernel function that hashes them) are kept in `TIME_WAIT`.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, BPF_SOCK_OPS_TIMEOUT_INIT},
    helpers::{bpf_probe_read_kernel, generated::bpf_get_netns_cookie},
    programs::{SockOpsContext, TracePointContext},
};
use intercept_common::{
    config::{
        FlowKey, Mode, REQUEST_SOCK_LIFETIME_NS, SockOffsets, SocketTable, TIME_WAIT_NS,
        proven_slot, socket_bucket, table_word, tcp_state, time_wait_bucket,
    },
    cookie::{mapped, words},
    maps::trace_field,
};

use crate::{
    events::rare,
    maps::{CONFIG, PROVEN, SOCKET_FILTER, SOCKET_TABLE, SOCKETS, TIME_WAIT, TIME_WAIT_FILTER},
};

/// The attachment's namespace and the kernel's field offsets (see
/// `intercept_common::config::SockOffsets`), set by the loader; all zero if unknown (then every
/// namespace's sockets are kept, as before the loader knew them, and request sockets are not
/// read). Read volatile: the compiler must not fold the initial value.
#[unsafe(no_mangle)]
static SOCK_OFFSETS: SockOffsets = SockOffsets {
    netns_cookie: 0,
    skc_net: 0,
    net_cookie: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
};

/// The loader's [`SOCK_OFFSETS`].
#[inline(always)]
fn offsets() -> SockOffsets {
    // SAFETY: a loader-set constant, read volatile so the compiler keeps the loads.
    unsafe { core::ptr::read_volatile(&raw const SOCK_OFFSETS) }
}

/// Whether the socket at `sk` (any `struct sock_common` at its start: a full, request or
/// time-wait socket) lives in the attachment's network namespace: its `skc_net`, then that
/// namespace's `net_cookie` (`sock_net`, include/net/sock.h). True when the offsets are unknown;
/// `None` when the kernel's memory cannot be read.
#[inline(always)]
fn ours(sk: *const u8, o: &SockOffsets) -> Option<bool> {
    if !o.filters_netns() {
        return Some(true);
    }
    // SAFETY: bpf_probe_read_kernel checks the addresses; a failed read is reported.
    let net = unsafe { bpf_probe_read_kernel(sk.add(o.skc_net as usize).cast::<*const u8>()) };
    let cookie =
        unsafe { bpf_probe_read_kernel(net.ok()?.add(o.net_cookie as usize).cast::<u64>()) };
    Some(cookie.ok()? == o.netns_cookie)
}

/// `EEXIST` (include/uapi/asm-generic/errno-base.h).
const EEXIST: i32 = 17;

const IPPROTO_TCP: u16 = 6;
// The tracepoint's states are ints.
const TCP_ESTABLISHED: i32 = tcp_state::ESTABLISHED as i32;
const TCP_SYN_RECV: i32 = tcp_state::SYN_RECV as i32;
const TCP_FIN_WAIT1: i32 = tcp_state::FIN_WAIT1 as i32;
const TCP_FIN_WAIT2: i32 = tcp_state::FIN_WAIT2 as i32;
const TCP_CLOSE: i32 = tcp_state::CLOSE as i32;
const TCP_LISTEN: i32 = tcp_state::LISTEN as i32;
const TCP_CLOSING: i32 = tcp_state::CLOSING as i32;

/// Handles one state change.
#[inline(always)]
pub fn handle(ctx: &TracePointContext) {
    // SAFETY: reads of the tracepoint record at the offsets of its format (checked at attach).
    let read = || unsafe {
        Some((
            ctx.read_at::<u64>(trace_field::SKADDR.offset).ok()?,
            ctx.read_at::<u16>(trace_field::PROTOCOL.offset).ok()?,
            ctx.read_at::<i32>(trace_field::OLDSTATE.offset).ok()?,
            ctx.read_at::<i32>(trace_field::NEWSTATE.offset).ok()?,
            ctx.read_at::<u16>(trace_field::SPORT.offset).ok()?,
            ctx.read_at::<u16>(trace_field::DPORT.offset).ok()?,
            ctx.read_at::<[u8; 16]>(trace_field::SADDR_V6.offset).ok()?,
            ctx.read_at::<[u8; 16]>(trace_field::DADDR_V6.offset).ok()?,
        ))
    };
    let Some((sk, proto, old, state, local_port, remote_port, local, remote)) = read() else {
        rare!(
            warn,
            ctx,
            "socket table: a state change's record could not be read; the table is no longer \
             authoritative"
        );
        refused();
        return;
    };
    if proto != IPPROTO_TCP || state == TCP_LISTEN {
        return;
    }
    // Another namespace's socket (a container's, with perhaps the very 4-tuple of one of ours)
    // must neither remove our flow at its close nor add one that would pass forged segments.
    match ours(sk as *const u8, &offsets()) {
        Some(true) => {}
        Some(false) => return,
        None => {
            rare!(
                warn,
                ctx,
                "socket table: a socket's namespace could not be read (bpf_probe_read_kernel); \
                 the table is no longer authoritative"
            );
            refused();
            return;
        }
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
            let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() };
            kernel_holds(&key, now + TIME_WAIT_NS);
        }
    } else {
        insert(ctx, &key);
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

/// Records a new request socket of the kernel's, `req` (a `struct request_sock`, which begins
/// with its `struct sock_common`), if it is of the attachment's namespace and intercept mode is
/// in force: its flow's segments then go to the kernel for as long as it can live.
///
/// Such a socket exists only if the kernel answered the SYN itself: in intercept mode, because
/// it came over another interface (asymmetric routing) or the data path left it to the kernel.
/// The client's ACK then arrives here with none of our cookies; without this record it would be
/// dropped as forged once the table is authoritative. Outside intercept mode nothing is
/// recorded: nothing is dropped on the table then, and when intercept mode comes into force the
/// controller opens the lookup window, which covers the request sockets made before.
#[inline(always)]
pub fn request_sock(req: *const u8) {
    let o = offsets();
    if !o.reads_request_socks() || !intercepting() || ours(req, &o) != Some(true) {
        return;
    }
    // The flow as its inbound segments carry it: remote -> local. Both families keep the
    // addresses in the IPv6 fields (an IPv4 request's IPv4-mapped, `sk_daddr_set`), as the
    // tracepoint's record does.
    // SAFETY: bpf_probe_read_kernel checks the addresses; a failed read records nothing.
    let read = || unsafe {
        Some((
            bpf_probe_read_kernel(req.add(o.skc_v6_daddr as usize).cast::<[u8; 16]>()).ok()?,
            bpf_probe_read_kernel(req.add(o.skc_v6_rcv_saddr as usize).cast::<[u8; 16]>()).ok()?,
            bpf_probe_read_kernel(req.add(o.skc_dport as usize).cast::<u16>()).ok()?,
            bpf_probe_read_kernel(req.add(o.skc_num as usize).cast::<u16>()).ok()?,
        ))
    };
    let Some((remote, local, remote_port, local_port)) = read() else {
        return;
    };
    request_held(&FlowKey {
        saddr: words(&remote),
        daddr: words(&local),
        sport: u16::from_be(remote_port),
        dport: local_port,
    });
}

/// [`request_sock`] from a sock_ops program: the kernel calls it with `BPF_SOCK_OPS_TIMEOUT_INIT`
/// for a request socket (not a full one) right before hashing it (`tcp_conn_request`:
/// `tcp_timeout_init(req)`, then `inet_csk_reqsk_queue_hash_add`), and not for one it answers
/// with a cookie of its own. Its namespace comes from `bpf_get_netns_cookie`, its flow from the
/// context's fields, so no offset is needed but the attachment namespace's cookie.
#[inline(always)]
pub fn request_sock_ops(ctx: &SockOpsContext) {
    /// `AF_INET` (include/linux/socket.h).
    const AF_INET: u32 = 2;
    let ops = ctx.ops;
    // SAFETY: the program's own context, only read.
    let c = unsafe { &*ops };
    // Each field read as the u32 it is: the verifier refuses wider loads of context fields.
    // SAFETY: a field of the context.
    let field = |f: *const u32| unsafe { core::ptr::read_volatile(f) };
    let o = offsets();
    if field(&raw const c.op) != BPF_SOCK_OPS_TIMEOUT_INIT
        || field(&raw const c.is_fullsock) != 0
        || o.netns_cookie == 0
        || !intercepting()
        // SAFETY: a helper reading the context's socket.
        || unsafe { bpf_get_netns_cookie(ops.cast()) } != o.netns_cookie
    {
        return;
    }
    // The context's addresses are in network order. A request of an IPv6 listener has its IPv4
    // addresses IPv4-mapped in the IPv6 fields (`sk_daddr_set`). Every field is read before
    // either family's is chosen: read in the branches, the compiler made one load at an offset
    // computed from the branch taken, which the verifier refuses ("dereference of modified ctx
    // ptr").
    let family = field(&raw const c.family);
    let v4 = [
        field(&raw const c.remote_ip4),
        field(&raw const c.local_ip4),
    ];
    let w = |a: *const [u32; 4], i: usize| u32::from_be(field(a.cast::<u32>().wrapping_add(i)));
    let (r, l) = (&raw const c.remote_ip6, &raw const c.local_ip6);
    let v6 = [
        [w(r, 0), w(r, 1), w(r, 2), w(r, 3)],
        [w(l, 0), w(l, 1), w(l, 2), w(l, 3)],
    ];
    let (remote, local) = if family == AF_INET {
        (mapped(u32::from_be(v4[0])), mapped(u32::from_be(v4[1])))
    } else {
        (v6[0], v6[1])
    };
    request_held(&FlowKey {
        saddr: remote,
        daddr: local,
        // The remote port is a network-order u32 (the kernel loads the 16-bit port and, on a
        // little-endian host, shifts it into the upper half: `sock_ops_convert_ctx_access`);
        // the local port is in host order.
        sport: u32::from_be(field(&raw const c.remote_port)) as u16,
        dport: field(&raw const c.local_port) as u16,
    });
}

/// Whether intercept mode is in force: only then are the kernel's request sockets recorded.
#[inline(always)]
fn intercepting() -> bool {
    CONFIG
        .get(0)
        .is_some_and(|cfg| Mode::effective(cfg) == Mode::Intercept)
}

/// Records a request socket of the kernel's for `key`, for as long as one can live.
#[inline(always)]
fn request_held(key: &FlowKey) {
    // SAFETY: a helper without side effects.
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_ns() };
    kernel_holds(key, now + REQUEST_SOCK_LIFETIME_NS);
}

/// Records that the kernel holds `key` in a socket the table does not (a time-wait or a request
/// socket) until `until`.
#[inline(always)]
pub fn kernel_holds(key: &FlowKey, until: u64) {
    if TIME_WAIT.insert(key, &until, 0).is_ok()
        && let Some(b) = TIME_WAIT_FILTER.get_ptr_mut(time_wait_bucket(key))
    {
        // SAFETY: a valid u64 in map memory. The later of the two times: time-wait sockets are
        // held 70 s and request sockets 75 s, so a plain store could cut a request socket's
        // bucket short. Two writers racing may still store the earlier one, which then cuts the
        // other flow's last seconds at most (5 s, and only for two flows of one bucket of
        // 65,536 recorded within the same microseconds).
        unsafe { *b = (*b).max(until) };
    }
}

/// Whether the kernel holds `key` in a socket the table does not (time-wait or request) at
/// `now`: its filter bucket's time not yet passed (one array load), then its own.
#[inline(always)]
pub fn kernel_held(key: &FlowKey, now: u64) -> bool {
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
/// reader never sees the flow without its bucket's count. `ctx` is the running program's, for
/// the log.
#[inline(always)]
pub fn insert<C: EbpfContext>(ctx: &C, key: &FlowKey) {
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
                // -E2BIG: the table is full (`SOCKET_ENTRIES`); -ENOMEM: the kernel could not
                // allocate the entry.
                rare!(
                    warn,
                    ctx,
                    "socket table: the kernel refused a flow ({}); the table is no longer \
                     authoritative",
                    e
                );
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
