//! The data path's clock: `CLOCK_MONOTONIC` at tick resolution, for cookie slots (68.7 s) and
//! SYN-ACK TSvals (milliseconds).
//!
//! `bpf_ktime_get_coarse_ns` converts through a timespec (about 15 ns here); the precise clock
//! reads the TSC (about 20 ns in a VM). The coarse clock only moves when the tick updates the
//! timekeeper, together with `jiffies`, and `bpf_jiffies64` is inlined by the verifier into one
//! load. So each CPU keeps the coarse time of the last jiffy it saw and asks again only when
//! `jiffies` moved.
use aya_ebpf::{
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::PerCpuArray,
};

/// The coarse time at a given jiffy.
pub struct Cached {
    jiffies: u64,
    ns: u64,
}

/// Per CPU (no sharing, no atomics).
#[map(name = "CLOCK")]
static CLOCK: PerCpuArray<Cached> = PerCpuArray::with_max_entries(1, 0);

/// Monotonic nanoseconds, at most a tick behind.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helpers without side effects.
    let j = unsafe { bpf_jiffies64() };
    let Some(c) = CLOCK.get_ptr_mut(0) else {
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's slot; nothing else runs on this CPU while we use it.
    let c = unsafe { &mut *c };
    if c.jiffies != j || c.ns == 0 {
        c.ns = unsafe { bpf_ktime_get_coarse_ns() };
        c.jiffies = j;
    }
    c.ns
}
