//! Names of the maps the XDP program declares and the controller opens (by these names in the
//! object, and as file names under the interface's bpffs pin directory).

/// `PerCpuArray<u64>` of [`crate::Counter::Count`] entries; written by the data path only.
pub const COUNTERS: &str = "COUNTERS";

/// Name of the main XDP program in the object.
pub const PROG_XDP: &str = "xdp_intercept";
/// Name of the pass-through XDP program (for the peer of a veth carrying XDP_TX traffic, and as
/// the baseline in benchmarks).
pub const PROG_XDP_PASS: &str = "xdp_pass";

/// `Array<Config>` of one entry; written by the controller.
pub const CONFIG: &str = "CONFIG";
/// `Array<Secrets>` of one entry; written by the controller (attach, rotate-secret).
pub const SECRETS: &str = "SECRETS";
/// `LpmTrie<ScopeKey, ScopeValue>`: protected destinations and ports; written by the controller.
pub const SCOPE: &str = "SCOPE";
/// `LpmTrie<AddrKey, u32>`: exempt sources; written by the controller.
pub const EXEMPT: &str = "EXEMPT";
/// Name of the TC ingress program that completes verified handshakes.
pub const PROG_TC: &str = "tc_handoff";
/// Entries of the SCOPE and EXEMPT tries.
pub const SCOPE_ENTRIES: u32 = 4096;
