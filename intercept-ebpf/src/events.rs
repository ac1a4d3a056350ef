//! Rare events of the data path, told to the daemon's log through aya-log: a handoff the kernel
//! refused, a flow the socket table could not record, a kernel call that failed where it should
//! not (the verdict is then XDP_ABORTED). Never per packet: each is a failure, also counted by its
//! own counter; this says what the counter cannot (the kernel's return code, the flow).
//!
//! The level is the loader's: aya-log's `AYA_LOG_LEVEL` lives in read-only data that the kernel
//! freezes at load, so the verifier knows it, follows no branch of a disabled level and removes
//! its code: a level turned off costs nothing. Each CPU logs at most
//! [`LOG_LINES_PER_SECOND`] lines a second; the lines cut are counted (`log_suppressed`) and the
//! daemon says how many, so a flood of failures cannot flood its log.
use aya_ebpf::{
    helpers::generated::bpf_ktime_get_ns, macros::map, maps::PerCpuArray, programs::XdpContext,
};
use aya_log_ebpf::macro_support::{Level, level_enabled};
use intercept_common::{Counter, maps::LOG_LINES_PER_SECOND};

use crate::stats::count_atomic;

/// Each CPU's budget of lines: the second it is for (monotonic), the lines logged in it
/// (`intercept_common::maps::LOG_BUDGET`). Per CPU, so no atomics; a program in process context
/// (the socket-table tracepoint) interrupted here by one in softirq context on the same CPU may
/// lose one of the two updates, which lets at most a line more through.
#[map(name = "LOG_BUDGET")]
static LOG_BUDGET: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Whether a line at `level` may be logged now: the level is on (the very check aya-log's macros
/// make, here first so that a line of a disabled level spends no budget), and this CPU has
/// logged fewer than [`LOG_LINES_PER_SECOND`] lines this second. A line cut is counted.
#[inline(always)]
pub fn admit(level: Level) -> bool {
    if !level_enabled(level) {
        return false;
    }
    let Some(budget) = LOG_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's entry, in map memory.
    let budget = unsafe { &mut *budget };
    // SAFETY: a helper without side effects, allowed in every program type (the data path's
    // coarse clock is not: tracepoints may not read it).
    let second = unsafe { bpf_ktime_get_ns() } / 1_000_000_000;
    if budget[0] != second {
        budget[0] = second;
        budget[1] = 0;
    }
    if budget[1] >= LOG_LINES_PER_SECOND {
        count_atomic(Counter::LogSuppressed);
        return false;
    }
    budget[1] += 1;
    true
}

/// Logs a rare event with aya-log's `error!` or `warn!` (same arguments) if [`admit`] lets it.
macro_rules! rare {
    (error, $ctx:expr, $($arg:tt)+) => {
        if $crate::events::admit(aya_log_ebpf::macro_support::Level::Error) {
            aya_log_ebpf::error!($ctx, $($arg)+);
        }
    };
    (warn, $ctx:expr, $($arg:tt)+) => {
        if $crate::events::admit(aya_log_ebpf::macro_support::Level::Warn) {
            aya_log_ebpf::warn!($ctx, $($arg)+);
        }
    };
}
pub(crate) use rare;

/// Why the XDP program returned XDP_ABORTED (see [`abort`]).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Abort {
    /// The SYN-ACK could not be written over the SYN (a failed lookup or store that the bounds
    /// checks before it rule out).
    SynAckWrite = 1,
    /// `bpf_xdp_adjust_tail` refused to resize the SYN into its SYN-ACK.
    AdjustTail,
    /// `bpf_xdp_adjust_meta` refused room for a verified ACK's handoff metadata (a driver
    /// without XDP metadata support; `meta_unsupported`).
    NoMetadata,
    /// The kernel-cookie engine could not copy a segment's headers for the kernel's cookie
    /// helpers (`bpf_xdp_load_bytes`).
    KernelCookieCopy,
    /// Gateway mode: a stage of the data path missing from `GW_PROGS` (the tail call failed),
    /// or a segment the gateway builds could not be written over the frame.
    Gateway,
}

/// Per CPU, the last [`Abort`] recorded and the kernel's return code with it: written where the
/// XDP program decides to abort, read by its entry point once the verdict is out.
#[map(name = "LAST_ABORT")]
static LAST_ABORT: PerCpuArray<[i64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Records why this packet's verdict will be XDP_ABORTED, and the kernel's return code (0 if no
/// kernel call failed), for [`log_abort`].
#[inline(always)]
pub fn abort(why: Abort, rc: i64) {
    if let Some(last) = LAST_ABORT.get_ptr_mut(0) {
        // SAFETY: this CPU's entry, in map memory; the XDP program runs with bottom halves off,
        // so nothing else on this CPU writes it meanwhile.
        unsafe { *last = [why as i64, rc] };
    }
}

/// Logs an XDP_ABORTED verdict with the reason [`abort`] recorded. Called once, by the entry
/// point on the verdict its paths returned, not where each path aborts: there the verifier
/// walks the log's code once for every state the path can be in (43,000 instructions more when
/// the ACK and SYN paths logged their aborts themselves), here the paths have joined and it
/// walks it a few times. Not inlined: inlined, its buffers grew the entry point's frame from
/// 160 to 184 bytes, which 6.1 rounds to 192, and the chain through the ACK path would reach
/// the 512-byte limit.
#[inline(never)]
pub fn log_abort(ctx: &XdpContext) {
    let Some(last) = LAST_ABORT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's entry, in map memory. Cleared once read, so an abort whose path
    // recorded nothing is not told with another's reason; word by word and volatile, or LLVM
    // makes the zero fill a call to `memset` (see `ack::write_meta` for what that costs on 6.1).
    let [why, rc] = unsafe {
        let [why, rc] = *last;
        (&raw mut (*last)[0]).write_volatile(0);
        (&raw mut (*last)[1]).write_volatile(0);
        [why, rc]
    };
    if why == Abort::AdjustTail as i64 {
        rare!(
            error,
            ctx,
            "XDP_ABORTED: bpf_xdp_adjust_tail returned {} resizing a SYN into its SYN-ACK",
            rc
        );
    } else if why == Abort::NoMetadata as i64 {
        rare!(
            error,
            ctx,
            "XDP_ABORTED: no XDP metadata for a verified ACK's handoff (bpf_xdp_adjust_meta \
             refused; a driver without metadata support needs generic mode)"
        );
    } else if why == Abort::KernelCookieCopy as i64 {
        rare!(
            error,
            ctx,
            "XDP_ABORTED: bpf_xdp_load_bytes failed copying headers for the kernel's cookie"
        );
    } else if why == Abort::SynAckWrite as i64 {
        rare!(
            error,
            ctx,
            "XDP_ABORTED: a SYN-ACK could not be written over its SYN"
        );
    } else if why == Abort::Gateway as i64 {
        rare!(
            error,
            ctx,
            "XDP_ABORTED: gateway: a stage missing from GW_PROGS, or a segment not written ({})",
            rc
        );
    } else {
        rare!(error, ctx, "XDP_ABORTED (no reason recorded)");
    }
}
