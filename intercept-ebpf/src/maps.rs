//! Maps of the data path. Names match `intercept_common::maps`; the controller pins them under
//! the interface's bpffs directory.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use intercept_common::Counter;

/// Per-CPU counters, indexed by [`Counter`]; written here, summed by the controller.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::Count as u32, 0);
