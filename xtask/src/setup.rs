//! `cargo xtask setup`: installs what a fresh machine lacks, skipping what is
//! there. Safe to run again and again.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{exec, is_root, output, root};

/// Debian packages: LLVM 22 for bpf-linker; wrk for the HTTP benchmark;
/// systemtap-sdt-dev and gcc for the USDT fixtures; Go 1.19 for the version
/// matrix; util-linux for setpriv (the privilege test); curl (with HTTP/2)
/// as the HTTP/2 client of the HTTP server test; libc6-dev (static libc)
/// for the syscall fixture, and strace, whose `-c` counts it is held to;
/// systemd for `systemd-analyze verify` of the unit (host_service test);
/// musl-tools (a C compiler for the static build's C parts), ca-certificates
/// (the bundle the image carries) and podman for `cargo xtask image`.
const PACKAGES: [&str; 14] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "wrk",
    "systemtap-sdt-dev",
    "gcc",
    "golang-1.19-go",
    "util-linux",
    "curl",
    "libc6-dev",
    "strace",
    "systemd",
    "musl-tools",
    "ca-certificates",
    "podman",
];

/// The oldest Go that builds the fixtures and test programs.
const MIN_GO_MINOR: u32 = 22;

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.into_iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("setup: Debian packages present");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "setup: missing Debian packages {}: run `sudo cargo xtask setup` or `sudo apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    exec(Command::new("apt-get").args(["update", "-qq"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly() -> anyhow::Result<()> {
    let pin = std::fs::read_to_string(root().join("agent-ebpf/nightly-toolchain"))
        .context("reading agent-ebpf/nightly-toolchain")?;
    let pin = pin.trim();
    let has_toolchain = output(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|list| list.lines().any(|l| l.starts_with(pin)));
    let has_src = has_toolchain
        && output(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            pin,
        ]))
        .is_some_and(|list| list.lines().any(|l| l.starts_with("rust-src")));
    if has_src {
        eprintln!("setup: toolchain {pin} with rust-src present");
        return Ok(());
    }
    eprintln!("setup: installing toolchain {pin} with rust-src (builds the eBPF programs)");
    exec(Command::new("rustup").args([
        "toolchain",
        "install",
        pin,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

/// The standard library for the static build of `cargo xtask image`.
fn musl_target() -> anyhow::Result<()> {
    let target = "x86_64-unknown-linux-musl";
    if output(Command::new("rustup").args(["target", "list", "--installed"]))
        .is_some_and(|list| list.lines().any(|l| l == target))
    {
        eprintln!("setup: Rust target {target} present");
        return Ok(());
    }
    eprintln!("setup: adding Rust target {target} (the container image's static build)");
    exec(Command::new("rustup").args(["target", "add", target]))
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(version) = output(Command::new("bpf-linker").arg("--version")) {
        eprintln!("setup: {} present", version.trim());
        return Ok(());
    }
    eprintln!("setup: building bpf-linker against LLVM 22");
    exec(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}

fn go() -> anyhow::Result<()> {
    let version = output(Command::new("go").args(["env", "GOVERSION"])).context(
        "setup: Go is not installed: install Go 1.22 or newer (https://go.dev/dl) and put `go` on PATH",
    )?;
    let version = version.trim();
    let minor: u32 = version
        .trim_start_matches("go")
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("setup: cannot read Go version {version:?}"))?;
    if minor < MIN_GO_MINOR {
        bail!(
            "setup: {version} is too old to build the test programs: install Go 1.{MIN_GO_MINOR} or newer"
        );
    }
    eprintln!("setup: {version} present");
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    apt()?;
    nightly()?;
    musl_target()?;
    bpf_linker()?;
    go()?;
    crate::go_cache::prefetch()?;
    crate::jaeger::ensure()?;
    eprintln!("setup: done");
    Ok(())
}
