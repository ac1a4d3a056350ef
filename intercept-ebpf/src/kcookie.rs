//! The kernel-cookie engine's data path (Linux >= 5.3; see `intercept_common::kcookie`): the
//! SYN-ACK carries the cookie the listener's own `bpf_tcp_gen_syncookie` makes, forged ACKs are
//! dropped after `bpf_tcp_check_syncookie`, and a valid ACK goes to the listener, which checks
//! the cookie again and creates the connection itself (`cookie_v4_check`, `cookie_v6_check`).
//!
//! The helpers read the headers from the frame's copy in scratch memory (`KcHeaders`): the
//! verifier wants a constant bound on each header's size, which a packet pointer at a variable
//! offset does not give.
use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock, bpf_sock_tuple},
    helpers::{
        bpf_probe_read_kernel,
        generated::{
            bpf_sk_release, bpf_skc_lookup_tcp, bpf_skc_to_tcp_sock, bpf_tcp_check_syncookie,
            bpf_tcp_gen_syncookie, bpf_xdp_load_bytes,
        },
    },
    programs::XdpContext,
};
use intercept_common::{
    config::{ListenerOffsets, tcp_state},
    kcookie::SOCK_RCVBUF_LOCK,
    parse::{IPV4_MIN_HLEN, IPV6_HLEN, TCP_MIN_HLEN},
};

use crate::maps::{KcHeaders, SCRATCH};

const _: () = assert!(core::mem::offset_of!(KcHeaders, tcp) == 40);

/// Where the listener's window fields are, set by the loader from the kernel's BTF. Read
/// volatile: the compiler must not fold the initial value.
#[unsafe(no_mangle)]
static LISTENER_OFFSETS: ListenerOffsets = ListenerOffsets {
    userlocks: 0,
    userlocks_shift: 0,
    window_clamp: 0,
    reserved: 0,
};

/// [`syn_cookie`]: no socket for the flow at all (no listener on the port).
pub const NO_LISTENER: i64 = -1;
/// [`syn_cookie`]: the flow's socket is not a listener (a request socket or connection of the
/// same 4-tuple): the kernel's.
pub const NOT_LISTENER: i64 = -2;
/// [`syn_cookie`]: the listener sets its own receive window.
pub const OWN_WINDOW: i64 = -3;
/// [`syn_cookie`]: the kernel made no cookie.
pub const REFUSED: i64 = -4;
/// [`syn_cookie`] and [`check_ack`]: the headers could not be copied (a helper failed).
pub const FAILED: i64 = -5;

/// [`check_ack`]: the cookie is valid; the listener completes the handshake.
pub const VALID: i64 = 0;
/// [`check_ack`]: a socket other than a listener holds the flow (a connection, a request
/// socket, a time-wait socket): it is the kernel's.
pub const KERNEL_SOCKET: i64 = 1;
/// [`check_ack`]: no socket at all.
pub const NO_SOCKET: i64 = 2;
/// [`check_ack`]: a time-wait socket holds the flow (a connection the server closed first).
pub const TIME_WAIT: i64 = 4;
/// [`check_ack`]: the kernel's helper could not check the cookie (an error other than "no such
/// cookie": IPv6 cookies of a kernel whose IPv6 is a module, say): the listener checks it.
pub const UNCHECKED: i64 = 5;

/// `-ENOENT`: what `bpf_tcp_check_syncookie` answers for a cookie that is not the listener's
/// (or a listener that issued none in two minutes).
const ENOENT: i64 = -2;
/// [`check_ack`]: a listener holds the flow and the cookie is not valid.
pub const INVALID: i64 = 3;

/// The kernel's cookie for the SYN whose IP header is at `l3` and TCP header (`th_len` bytes)
/// at `l4` (`v6`: IPv6), as a non-negative number (the ISN in its low 32 bits), or one of the
/// negative verdicts above. Inlined into the SYN path (`synack::handle`): a frame of its own
/// below that one would pass the 512-byte stack.
#[inline(always)]
pub fn syn_cookie(ctx: &XdpContext, l3: u32, l4: u32, th_len: u32, v6: u32) -> i64 {
    let Some(h) = copy_headers(ctx, l3, l4, th_len, v6) else {
        return FAILED;
    };
    let sk = lookup(ctx, h, v6);
    if sk.is_null() {
        return NO_LISTENER;
    }
    // SAFETY: sk is a valid, referenced socket until released below.
    if unsafe { (*sk).state } != u32::from(tcp_state::LISTEN) {
        unsafe { bpf_sk_release(sk.cast()) };
        return NOT_LISTENER;
    }
    if own_window(sk) {
        unsafe { bpf_sk_release(sk.cast()) };
        return OWN_WINDOW;
    }
    let (iph, ip_len) = ip_header(h, v6);
    let th_len = tcp_len(th_len);
    // SAFETY: the headers live in this CPU's scratch map value for the call; the lengths are
    // within their arrays.
    let rc =
        unsafe { bpf_tcp_gen_syncookie(sk.cast(), iph, ip_len, (&raw mut h.tcp).cast(), th_len) };
    unsafe { bpf_sk_release(sk.cast()) };
    if rc < 0 { REFUSED } else { rc & 0xffff_ffff }
}

/// Checks the cookie of the ACK whose IP header is at `l3` and TCP header at `l4` against the
/// flow's socket: one of [`VALID`], [`KERNEL_SOCKET`], [`TIME_WAIT`], [`NO_SOCKET`],
/// [`INVALID`], [`UNCHECKED`], [`FAILED`].
/// Inlined into the ACK path's own subprogram (`ack::handle_kernel_cookie`).
#[inline(always)]
pub fn check_ack(ctx: &XdpContext, l3: u32, l4: u32, v6: u32) -> i64 {
    let Some(h) = copy_headers(ctx, l3, l4, TCP_MIN_HLEN as u32, v6) else {
        return FAILED;
    };
    let sk = lookup(ctx, h, v6);
    if sk.is_null() {
        return NO_SOCKET;
    }
    // SAFETY: sk is a valid, referenced socket until released below.
    let state = unsafe { (*sk).state };
    if state != u32::from(tcp_state::LISTEN) {
        unsafe { bpf_sk_release(sk.cast()) };
        return if state == u32::from(tcp_state::TIME_WAIT) {
            TIME_WAIT
        } else {
            KERNEL_SOCKET
        };
    }
    let (iph, ip_len) = ip_header(h, v6);
    // SAFETY: as in `syn_cookie`; the helper reads the fixed TCP header only.
    let rc = unsafe {
        bpf_tcp_check_syncookie(
            sk.cast(),
            iph,
            ip_len,
            (&raw mut h.tcp).cast(),
            TCP_MIN_HLEN as u32,
        )
    };
    unsafe { bpf_sk_release(sk.cast()) };
    match rc {
        0 => VALID,
        ENOENT => INVALID,
        _ => UNCHECKED,
    }
}

/// Copies the IP header (its fixed part) and `th_len` bytes of TCP header into scratch memory.
#[inline(always)]
fn copy_headers(
    ctx: &XdpContext,
    l3: u32,
    l4: u32,
    th_len: u32,
    v6: u32,
) -> Option<&'static mut KcHeaders> {
    // SAFETY: this CPU's scratch slot; nothing else runs on this CPU while we use it.
    let h = unsafe { &mut (*SCRATCH.get_ptr_mut(0)?).kc };
    let th_len = tcp_len(th_len);
    // SAFETY: the helper checks the frame's bounds and writes within the arrays.
    let rc = unsafe {
        if v6 != 0 {
            bpf_xdp_load_bytes(ctx.ctx, l3, (&raw mut h.ip).cast(), IPV6_HLEN as u32)
        } else {
            bpf_xdp_load_bytes(
                ctx.ctx,
                l3,
                (&raw mut h.ip).cast::<u8>().add(KcHeaders::V4_AT).cast(),
                IPV4_MIN_HLEN as u32,
            )
        }
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: as above.
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, l4, (&raw mut h.tcp).cast(), th_len) } != 0 {
        return None;
    }
    Some(h)
}

/// A TCP header length (20 to 60, a multiple of 4, as the dissector checked it) in a form whose
/// bounds the verifier knows from the arithmetic alone, 20 to 80: a lower bound learnt from a
/// comparison is lost on Linux 6.1 when the value was spilled to the stack before it ("invalid
/// access to map value ... size=0"). Hence the copy's 80 bytes.
#[inline(always)]
fn tcp_len(th_len: u32) -> u32 {
    TCP_MIN_HLEN as u32 + (th_len.wrapping_sub(TCP_MIN_HLEN as u32) & 0x3c)
}

/// The copied IP header and its length.
#[inline(always)]
fn ip_header(h: &mut KcHeaders, v6: u32) -> (*mut core::ffi::c_void, u32) {
    let at = if v6 != 0 { 0 } else { KcHeaders::V4_AT };
    // SAFETY: within `ip`.
    let p = unsafe { (&raw mut h.ip).cast::<u8>().add(at) };
    let len = if v6 != 0 { IPV6_HLEN } else { IPV4_MIN_HLEN };
    (p.cast(), len as u32)
}

/// The socket of the flow in the copied headers (client -> server, as on the wire), referenced,
/// or null. The tuple is the copy's own bytes: the addresses, then the ports (see `KcHeaders`).
#[inline(always)]
fn lookup(ctx: &XdpContext, h: &mut KcHeaders, v6: u32) -> *mut bpf_sock {
    // IPv6: source and destination at 8..40 of its header; IPv4: at 12..20 of its own, which
    // sits at `V4_AT`.
    let (at, size) = if v6 != 0 {
        (8, 36)
    } else {
        (KcHeaders::V4_AT + 12, 12)
    };
    // SAFETY: within the copy; the helper reads `size` bytes from there, through the ports.
    let t = unsafe { (&raw mut h.ip).cast::<u8>().add(at) }.cast::<bpf_sock_tuple>();
    // SAFETY: valid context and tuple; the caller releases the reference.
    unsafe { bpf_skc_lookup_tcp(ctx.ctx.cast(), t, size, BPF_F_CURRENT_NETNS as u64, 0) }
}

/// Whether the listener `sk` chose its own receive window (`SO_RCVBUF`: `SOCK_RCVBUF_LOCK` in
/// `sk_userlocks`; `TCP_WINDOW_CLAMP`: a `window_clamp`), which changes the window scale the
/// kernel gives its connections. True when that cannot be read: the kernel then answers.
#[inline(always)]
fn own_window(sk: *mut bpf_sock) -> bool {
    // SAFETY: a loader-set constant, read volatile so the compiler keeps the loads.
    let o = unsafe { core::ptr::read_volatile(&raw const LISTENER_OFFSETS) };
    if !o.known() {
        return true;
    }
    // SAFETY: sk is a valid, referenced socket; the helper returns a typed pointer or null.
    let tsk = unsafe { bpf_skc_to_tcp_sock(sk.cast()) }.cast::<u8>();
    if tsk.is_null() {
        return true;
    }
    // SAFETY: bpf_probe_read_kernel checks the addresses; a failed read says "own window".
    let (locks, clamp) = unsafe {
        (
            bpf_probe_read_kernel(tsk.add(o.userlocks as usize)),
            bpf_probe_read_kernel(tsk.add(o.window_clamp as usize).cast::<u32>()),
        )
    };
    match (locks, clamp) {
        (Ok(l), Ok(c)) => (l >> (o.userlocks_shift & 7)) & SOCK_RCVBUF_LOCK != 0 || c != 0,
        _ => true,
    }
}
