//! intercept-ctl as a library: loading and attaching the embedded XDP object, the bpffs layout,
//! counters, and the network-namespace lab (used by the binary's `lab` verb and by the tests).

pub mod btf_patch;
pub mod control;
pub mod errors;
pub mod lab;
pub mod loader;
pub mod netns;
pub mod pins;
pub mod stats;

/// The eBPF object built by aya-build from intercept-ebpf, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/intercept"));
