//! `cargo xtask image`: the agent's container image, built here without a
//! registry. The image is one static (musl) release binary and the CA bundle
//! its OTLP/TLS exporter trusts, on `FROM scratch`: nothing else to patch.
//!
//! 1. builds `agent` for `x86_64-unknown-linux-musl` (its own target
//!    directory, `target/image`, so that it never waits on or invalidates
//!    the usual one);
//! 2. lays the image's root filesystem out in `target/image/rootfs`
//!    (`/usr/local/bin/agent` without its debug information, `/etc/ssl/certs/ca-certificates.crt`, an
//!    empty `/tmp`), which `agent/tests/container_image.rs` runs the agent
//!    from as a container would (its own mount namespace, the host's PID
//!    namespace, the least-privilege capability set);
//! 3. when podman is installed (`cargo xtask setup` installs it), builds the
//!    OCI image `localhost/agent:latest` from that root filesystem with
//!    `scripts/container/Containerfile` and saves it as
//!    `target/image/agent-oci.tar` (`podman load` / `docker load` take it).
//!
//! The top-level `Dockerfile` builds the same image from source where a
//! registry is reachable (its build stage needs `rust:1.95-bookworm`).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{exec, output, root};

/// The musl target: a binary with no interpreter and no shared library.
const TARGET: &str = "x86_64-unknown-linux-musl";
/// Debian's CA bundle (package ca-certificates), which rustls-native-certs
/// reads at the same path inside the image.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where the image puts the binary (the systemd unit's path too).
const BINARY_IN_IMAGE: &str = "usr/local/bin/agent";
/// The image's name in podman's local store.
const IMAGE_NAME: &str = "localhost/agent:latest";

/// `target/image`: the cargo target directory, the rootfs and the archive.
pub fn dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), PathBuf::from)
        .join("image")
}

pub fn run() -> anyhow::Result<()> {
    let out = dir();
    let binary = build(&out)?;
    let rootfs = out.join("rootfs");
    lay_out(&binary, &rootfs)?;
    eprintln!("image: root filesystem in {}", rootfs.display());
    if output(Command::new("podman").arg("--version")).is_none() {
        eprintln!("image: podman is not installed: no OCI archive (the root filesystem is built)");
        return Ok(());
    }
    let archive = out.join("agent-oci.tar");
    exec(
        Command::new("podman")
            .args(["build", "--quiet", "--tag", IMAGE_NAME, "--file"])
            .arg(root().join("scripts/container/Containerfile"))
            .arg(&rootfs),
    )?;
    let _ = fs::remove_file(&archive);
    exec(
        Command::new("podman")
            .args(["save", "--quiet", "--format", "oci-archive", "--output"])
            .arg(&archive)
            .arg(IMAGE_NAME),
    )?;
    eprintln!("image: {IMAGE_NAME}, saved as {}", archive.display());
    Ok(())
}

/// Builds the static release binary; returns its path.
fn build(out: &Path) -> anyhow::Result<PathBuf> {
    exec(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
            .current_dir(root())
            .args([
                "build",
                "--release",
                "--locked",
                "-p",
                "agent",
                "--target",
                TARGET,
            ])
            .env("CARGO_TARGET_DIR", out),
    )?;
    let binary = out.join(TARGET).join("release/agent");
    let elf = fs::read(&binary).with_context(|| format!("cannot read {}", binary.display()))?;
    if has_interpreter(&elf) {
        bail!(
            "{} is not static: it names an interpreter",
            binary.display()
        );
    }
    Ok(binary)
}

/// Whether an ELF64 file has a `PT_INTERP` program header (a dynamic
/// executable); an unreadable header counts as one.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(entsize), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    (0..usize::from(count)).any(|i| {
        let at = usize::try_from(phoff).unwrap_or(usize::MAX) + i * usize::from(entsize);
        elf.get(at..at + 4)
            .is_none_or(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == PT_INTERP)
    })
}

/// Replaces `rootfs` with the image's files.
fn lay_out(binary: &Path, rootfs: &Path) -> anyhow::Result<()> {
    if rootfs.exists() {
        fs::remove_dir_all(rootfs)
            .with_context(|| format!("cannot remove {}", rootfs.display()))?;
    }
    let place = |from: &Path, to: &str, mode: u32| -> anyhow::Result<()> {
        let to = rootfs.join(to);
        fs::create_dir_all(to.parent().context("no parent")?)
            .with_context(|| format!("cannot create {}", to.display()))?;
        fs::copy(from, &to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot chmod {}", to.display()))
    };
    place(binary, BINARY_IN_IMAGE, 0o755)?;
    // The release profile keeps debug information (for profiling); the
    // image does not need it (symbols stay, for backtraces).
    exec(
        Command::new("strip")
            .arg("--strip-debug")
            .arg(rootfs.join(BINARY_IN_IMAGE)),
    )?;
    place(
        Path::new(CA_BUNDLE),
        CA_BUNDLE.trim_start_matches('/'),
        0o644,
    )
    .context("the CA bundle (Debian package ca-certificates)")?;
    // Mount points a runtime fills (`/proc`, `/sys`) and a scratch `/tmp`.
    for (path, mode) in [("proc", 0o555), ("sys", 0o555), ("tmp", 0o1777)] {
        let path = rootfs.join(path);
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot chmod {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_program_is_dynamic_and_garbage_is_not_static() {
        let me = fs::read(std::env::current_exe().expect("exe")).expect("read");
        // The test binary is linked against glibc: it has an interpreter.
        assert!(has_interpreter(&me));
        assert!(has_interpreter(b"\x7fELF"));
    }
}
