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
