//! intercept-ctl as a library: loading and attaching the embedded XDP object, the bpffs layout,
//! counters, and the network-namespace lab (used by the binary's `lab` verb and by the tests).

pub mod batch;
pub mod btf_patch;
pub mod config;
pub mod control;
pub mod datalog;
pub mod engine;
pub mod errors;
pub mod faults;
pub mod gateway;
pub mod gwlab;
pub mod health;
pub mod lab;
pub mod loader;
pub mod lock;
pub mod metrics;
pub mod netns;
pub mod pins;
pub mod soak;
pub mod sockdiag;
pub mod stats;
pub mod sysctl;
pub mod watchctl;

/// The eBPF object built by aya-build from intercept-ebpf, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/intercept"));

/// Where `run` records its pid for an interface (one-shot commands check it).
#[must_use]
pub fn pid_file(iface: &str, netns: Option<&str>) -> std::path::PathBuf {
    std::path::PathBuf::from("/run/xdp-intercept").join(match netns {
        Some(ns) => format!("netns-{ns}-{iface}.pid"),
        None => format!("{iface}.pid"),
    })
}

/// Whether a `run` daemon is alive for this interface (it holds its pid file's lock).
#[must_use]
pub fn daemon_running(iface: &str, netns: Option<&str>) -> bool {
    lock::daemon_running(iface, netns)
}
