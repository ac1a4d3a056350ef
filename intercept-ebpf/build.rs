//! Re-run the eBPF build when bpf-linker changes (it is not a Cargo dependency, so Cargo cannot
//! know): a bpf-linker rebuilt against another LLVM must relink the object.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!(
            "cargo:warning=bpf-linker not found ({err}); run ./x setup (scripts/setup.sh) first"
        ),
    }
}
