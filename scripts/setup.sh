#!/usr/bin/env bash
# One-time (and idempotent) machine set-up for xdp-intercept. Sourced by ./x before every command;
# each step checks first and does nothing when its result is already present, so a second run
# costs well under a second.
#
# What it may change on the machine (also listed in README.md):
#   - apt packages: iproute2, ethtool, procps, nftables (only those missing; `apt-get update` first)
#   - rustup: installs the toolchain pinned in rust-toolchain.toml (+ rust-src, rustfmt, clippy),
#     disables rustup self-update
#   - cargo: installs bpf-linker into $CARGO_HOME/tools/bpf-linker-<toolchain>/bin, built against
#     the pinned toolchain's own libLLVM (no other LLVM needed)
#   - mounts bpffs at /sys/fs/bpf if it is not mounted (root only)
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$repo_root/rust-toolchain.toml")
export RUSTUP_AUTO_INSTALL=0
: "${CARGO_HOME:=$HOME/.cargo}"
export CARGO_HOME
export PATH="$CARGO_HOME/bin:$PATH"

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root to run: $*"; return 1
    fi
}

# --- apt packages ------------------------------------------------------------------------------
need_pkgs=()
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v ethtool >/dev/null || need_pkgs+=(ethtool)
command -v sysctl >/dev/null || need_pkgs+=(procps)
command -v nft >/dev/null || need_pkgs+=(nftables)
if ((${#need_pkgs[@]})); then
    log "installing apt packages: ${need_pkgs[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# --- rustup + pinned toolchain -----------------------------------------------------------------
if ! command -v rustup >/dev/null; then
    log "rustup is missing: install it (https://rustup.rs) and run this again"
    exit 1
fi
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    log "installing toolchain $toolchain"
    rustup set auto-self-update disable >/dev/null 2>&1 || true
    rustup toolchain install "$toolchain" --profile minimal \
        --component rust-src,rustfmt,clippy --no-self-update >&2
fi
sysroot=$(rustup run "$toolchain" rustc --print sysroot)
if [ ! -d "$sysroot/lib/rustlib/src/rust/library" ]; then
    log "adding rust-src to $toolchain"
    rustup component add --toolchain "$toolchain" rust-src rustfmt clippy >&2
fi

# --- bpf-linker, built against the pinned toolchain's libLLVM --------------------------------
linker_root="$CARGO_HOME/tools/bpf-linker-$toolchain"
if [ ! -x "$linker_root/bin/bpf-linker" ]; then
    llvm_major=$(rustup run "$toolchain" rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
    llvm_so=$(cd "$sysroot/lib" && ls libLLVM-"$llvm_major"*.so 2>/dev/null | head -n1)
    if [ -z "$llvm_so" ]; then
        log "no libLLVM-$llvm_major*.so in $sysroot/lib: cannot build bpf-linker"
        exit 1
    fi
    llvm_dylib=${llvm_so#lib}
    llvm_dylib=${llvm_dylib%.so}
    log "building bpf-linker 0.13.0 against $llvm_so (about a minute, once)"
    RUSTFLAGS="-L native=$sysroot/lib -l dylib=$llvm_dylib -C link-arg=-Wl,-rpath,$sysroot/lib" \
        rustup run "$toolchain" cargo install bpf-linker --version 0.13.0 --locked \
        --no-default-features --features "llvm-$llvm_major,no-llvm-linking" \
        --root "$linker_root" >&2
fi
export PATH="$linker_root/bin:$PATH"

# --- bpffs (pinning) ---------------------------------------------------------------------------
if [ "$(id -u)" -eq 0 ] && ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
    log "mounting bpffs at /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
fi
