//! Rebuild the eBPF programs when the `bpf-linker` binary changes: building
//! this crate has an undeclared dependency on it (rustc's BPF target links
//! with it).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!(
            "cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup` to install it"
        ),
    }
}
