//! Counting: per-CPU, plain increments (no atomics on the fast path).
use intercept_common::Counter;

use crate::maps::COUNTERS;

/// Adds one to `c` on this CPU.
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, only this program on this CPU writes it while it runs.
        unsafe { *p += 1 };
    }
}
