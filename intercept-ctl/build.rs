//! Builds the eBPF object (intercept-ebpf) with aya-build for the bpfel target, using the toolchain
//! pinned in rust-toolchain.toml, and leaves it in OUT_DIR for `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};

use intercept_ebpf as _;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pin = root.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", pin.display());
    let text = std::fs::read_to_string(&pin).with_context(|| format!("read {}", pin.display()))?;
    let toolchain = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|l| l.split('"').nth(1))
        .ok_or_else(|| anyhow!("no channel in {}", pin.display()))?
        .to_owned();
    let ebpf = root.join("intercept-ebpf");
    let ebpf = ebpf
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf.display()))?;
    // aya-build turns every line the inner cargo prints into a `cargo:warning`, so a first build
    // would show dozens of "warning: ... Compiling ..." lines. Quiet, the inner cargo prints only
    // what matters (errors; compiler warnings still come through as warnings), and the outer
    // cargo's own progress line covers the build.
    // SAFETY: the build script is single-threaded here.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "intercept-ebpf",
            root_dir: ebpf,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
