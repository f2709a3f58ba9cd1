//! `cargo xtask offsets`: regenerates the per-Go-version struct offset table
//! (`agent/src/binary/offsets_table.json`) from DWARF of real builds.
//!
//! For every release in [`TOOLCHAINS`] it builds the net/http fixture
//! (`agent/tests/fixtures/httpserver`) with `GOTOOLCHAIN=<release>` (the go
//! command fetches the toolchain through the module proxy and caches it),
//! then runs the agent's `analyze --offset-table` example, which reads the
//! fields the probes need from each build's DWARF, checks them (inside the
//! struct, aligned) and writes the table. The agent uses the table for
//! binaries without DWARF (`-ldflags=-w`), matching on the Go minor release.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// One release per minor version since 1.17 (the newest patch of each).
/// Add the new release here when Go ships one, then run `cargo xtask offsets`.
pub const TOOLCHAINS: &[&str] = &[
    "go1.17.13",
    "go1.18.10",
    "go1.19.13",
    "go1.20.14",
    "go1.21.13",
    "go1.22.12",
    "go1.23.12",
    "go1.24.13",
    "go1.25.8",
    "go1.26.8",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Builds the fixture with every toolchain and writes the table to `out`.
pub fn run(out: &Path) -> anyhow::Result<()> {
    let root = root();
    let fixtures = root.join("agent/tests/fixtures");
    let work = std::env::temp_dir().join("agent-xtask-offsets");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut binaries = Vec::new();
    for toolchain in TOOLCHAINS {
        let bin = work.join(format!("httpserver-{toolchain}"));
        run_checked(
            Command::new("go")
                .args(["build", "-o"])
                .arg(&bin)
                .arg("./httpserver")
                .current_dir(&fixtures)
                .env("GOTOOLCHAIN", toolchain)
                // Go 1.17 rejects -buildvcs, which a user's GOFLAGS may set.
                .env("GOFLAGS", "-mod=mod"),
        )
        .with_context(|| {
            format!("building the fixture with {toolchain} (is the Go module proxy reachable?)")
        })?;
        binaries.push(bin);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run_checked(
        Command::new(cargo)
            .args([
                "run",
                "--release",
                "-q",
                "-p",
                "agent",
                "--example",
                "analyze",
                "--",
                "--offset-table",
            ])
            .arg(out)
            .args(&binaries)
            .current_dir(&root),
    )?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
