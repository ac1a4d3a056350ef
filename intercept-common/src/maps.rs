//! Names of the maps the XDP program declares and the controller opens (by these names in the
//! object, and as file names under the interface's bpffs pin directory).

/// `PerCpuArray<u64>` of [`crate::Counter::Count`] entries; written by the data path only.
pub const COUNTERS: &str = "COUNTERS";

/// Name of the main XDP program in the object.
pub const PROG_XDP: &str = "xdp_intercept";
/// Name of the pass-through XDP program (for the peer of a veth carrying XDP_TX traffic, and as
/// the baseline in benchmarks).
pub const PROG_XDP_PASS: &str = "xdp_pass";
