//! Counting: per-CPU, plain increments (no atomics on the fast path).
use aya_ebpf::bindings::xdp_action;
use intercept_common::{Counter, maps::COUNTERS_DATA_PATH};

use crate::maps::COUNTERS;

/// Adds one to `c` on this CPU.
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(COUNTERS_DATA_PATH) {
        // SAFETY: this CPU's block, written only by this program on this CPU while it runs;
        // `c` is below `Counter::Count`, the block's length.
        unsafe { (*p)[c as usize] += 1 };
    }
}

/// Adds one to `c` on this CPU with an atomic add: for programs that may run in process context
/// (the socket-table tracepoint), where the XDP program can interrupt them on the same CPU
/// between the load and the store of a plain increment and one of the two would be lost. The
/// XDP program itself runs with bottom halves disabled, so nothing counting here interrupts it.
#[inline(always)]
pub fn count_atomic(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(COUNTERS_DATA_PATH) {
        // SAFETY: this CPU's block; `c` is below `Counter::Count`, the block's length.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                &raw mut (*p)[c as usize],
                1,
            )
        };
    }
}

/// Counts `reason` (unless it is `Passed` itself) and `Passed`; returns XDP_PASS.
#[inline(always)]
pub fn pass(reason: Counter) -> u32 {
    if reason as u32 != Counter::Passed as u32 {
        count(reason);
    }
    count(Counter::Passed);
    xdp_action::XDP_PASS
}

/// Counts `reason` and `Dropped`; returns XDP_DROP.
#[inline(always)]
pub fn drop(reason: Counter) -> u32 {
    count(reason);
    count(Counter::Dropped);
    xdp_action::XDP_DROP
}

/// Records why the packet is aborted (see `events::abort`; `rc` the kernel's return code, 0 if
/// no kernel call failed) and counts `Aborted`; returns XDP_ABORTED. Only for internal failures:
/// the entry point logs each one.
#[inline(always)]
pub fn aborted(why: crate::events::Abort, rc: i64) -> u32 {
    crate::events::abort(why, rc);
    count(Counter::Aborted);
    xdp_action::XDP_ABORTED
}
