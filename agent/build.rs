//! Builds the eBPF programs (`agent-ebpf`) with aya-build and leaves the
//! object in OUT_DIR, where `include_bytes_aligned!` picks it up. Without
//! the `ebpf` feature there is nothing to do: the object is left out (and
//! aya-build, an optional dependency, is not there to call).

#[cfg(not(feature = "ebpf"))]
fn main() {}

#[cfg(feature = "ebpf")]
fn main() -> anyhow::Result<()> {
    use std::path::Path;

    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir).join("..").join("agent-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    // The eBPF crate needs a nightly (for build-std) whose LLVM matches the
    // one bpf-linker is built against (LLVM 22): pinned in one file that
    // `cargo xtask setup` reads too.
    let pin = Path::new(ebpf_dir).join("nightly-toolchain");
    println!("cargo:rerun-if-changed={}", pin.display());
    let toolchain = std::fs::read_to_string(&pin)?;
    let toolchain = toolchain.trim();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(toolchain),
    )
    .map_err(|err| {
        anyhow::anyhow!(
            "building the eBPF programs failed: {err:#}\n\
             (a fresh machine needs `cargo xtask setup` first: nightly rust-src, LLVM 22, bpf-linker)"
        )
    })
}
