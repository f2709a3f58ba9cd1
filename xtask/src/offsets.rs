//! `cargo xtask offsets`: regenerates the struct offset tables the agent
//! uses for binaries without DWARF, from DWARF of real builds. Needs the Go
//! module proxy (toolchains and grpc releases are fetched on demand); CI
//! never runs it.
//!
//! - The per-Go-release table (`agent/src/binary/offsets_table.json`): for
//!   every release in [`TOOLCHAINS`] it builds the net/http fixture
//!   (`agent/tests/fixtures/httpserver`) and the database/sql one
//!   (`agent/tests/fixtures/sqltypes`) with `GOTOOLCHAIN=<release>`, then
//!   runs the agent's `analyze --offset-table` example, which reads the
//!   fields the probes need from each release's builds, checks them (inside
//!   the struct, aligned) and writes the table. The agent matches it on the
//!   Go minor release.
//! - The per-module-version table (`agent/src/binary/module_offsets_table.json`):
//!   for every grpc release in [`GRPC_VERSIONS`] it builds
//!   `agent/tests/fixtures/grpcapp-old/main.go` in a scratch module that
//!   requires exactly that release (`go mod tidy` picks the x/net, genproto
//!   and protobuf that release asks for), with the newest Go in
//!   [`TOOLCHAINS`]; the oldest and the newest grpc releases are also built
//!   with the oldest Go each supports, and every build of one module version
//!   must measure the same layouts (`analyze --module-offset-table` fails
//!   otherwise). The agent matches it on the module versions in the
//!   binary's build info.
//!
//! `cargo xtask offsets --check` only asks the module proxy for the newest
//! Go release and fails when [`TOOLCHAINS`] (and so the table) lacks it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// One release per minor version since 1.17 (the newest patch of each when
/// it was added). Add the new release here when Go ships one, then run
/// `cargo xtask offsets` (`cargo xtask offsets --check` says when).
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
    "go1.27.4",
];

/// One grpc release per minor version (the newest patch) of the last three
/// years: v1.56 (June 2023) to the newest. Add the new release here when
/// grpc ships one, then run `cargo xtask offsets`.
pub const GRPC_VERSIONS: &[&str] = &[
    "v1.56.3", "v1.57.2", "v1.58.3", "v1.59.0", "v1.60.1", "v1.61.1", "v1.62.1", "v1.63.2",
    "v1.64.1", "v1.65.1", "v1.66.2", "v1.67.3", "v1.68.1", "v1.69.4", "v1.70.0", "v1.71.1",
    "v1.72.2", "v1.73.0", "v1.74.3", "v1.75.1", "v1.76.0", "v1.77.0", "v1.78.0", "v1.79.3",
    "v1.80.0", "v1.81.1", "v1.82.1", "v1.83.2", "v1.84.0", "v1.85.0",
];

/// Which tables `cargo xtask offsets` regenerates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tables {
    All,
    Go,
    Modules,
}

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

fn go(toolchain: &str) -> Command {
    let mut cmd = Command::new("go");
    cmd.env("GOTOOLCHAIN", toolchain)
        // Go 1.17 rejects -buildvcs, which a user's GOFLAGS may set.
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0");
    cmd
}

fn work_dir() -> anyhow::Result<PathBuf> {
    let work = std::env::temp_dir().join("agent-xtask-offsets");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    Ok(work)
}

/// Runs the agent's `analyze` example with `args`.
fn analyze(args: &[&str], binaries: &[PathBuf]) -> anyhow::Result<()> {
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
            ])
            .args(args)
            .args(binaries)
            .current_dir(root()),
    )
}

/// Regenerates the tables.
pub fn run(tables: Tables) -> anyhow::Result<()> {
    if matches!(tables, Tables::All | Tables::Go) {
        go_table(&root().join("agent/src/binary/offsets_table.json"))?;
    }
    if matches!(tables, Tables::All | Tables::Modules) {
        module_table(&root().join("agent/src/binary/module_offsets_table.json"))?;
    }
    Ok(())
}

/// Builds the fixtures with every toolchain and writes the Go table to `out`.
fn go_table(out: &Path) -> anyhow::Result<()> {
    let fixtures = root().join("agent/tests/fixtures");
    let work = work_dir()?;
    let mut binaries = Vec::new();
    for toolchain in TOOLCHAINS {
        for package in ["httpserver", "sqltypes"] {
            let bin = work.join(format!("{package}-{toolchain}"));
            run_checked(
                go(toolchain)
                    .args(["build", "-o"])
                    .arg(&bin)
                    .arg(format!("./{package}"))
                    .current_dir(&fixtures),
            )
            .with_context(|| {
                format!("building {package} with {toolchain} (is the Go module proxy reachable?)")
            })?;
            binaries.push(bin);
        }
    }
    let out = out.to_str().context("output path")?;
    analyze(&["--offset-table", out], &binaries)?;
    eprintln!("wrote {out}");
    Ok(())
}

/// The `go` directive of a go.mod: `1.21` of `go 1.21.0`.
fn go_directive(go_mod: &str) -> Option<(u32, u32)> {
    let line = go_mod.lines().find_map(|l| l.trim().strip_prefix("go "))?;
    let mut parts = line.trim().split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The oldest release of [`TOOLCHAINS`] a module with this go directive
/// builds with.
fn oldest_toolchain(directive: (u32, u32)) -> Option<&'static str> {
    TOOLCHAINS.iter().copied().find(|t| {
        let mut parts = t.trim_start_matches("go").split('.');
        let v = (
            parts.next().and_then(|p| p.parse().ok()).unwrap_or(0),
            parts.next().and_then(|p| p.parse().ok()).unwrap_or(0),
        );
        v >= directive
    })
}

/// Builds the grpc program against `grpc` with `toolchain` in a scratch
/// module; returns the binary and the module's go directive.
fn build_grpc(work: &Path, grpc: &str, toolchain: &str) -> anyhow::Result<(PathBuf, (u32, u32))> {
    let dir = work.join(format!("grpc-{grpc}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let main = root().join("agent/tests/fixtures/grpcapp-old/main.go");
    std::fs::copy(&main, dir.join("main.go"))
        .with_context(|| format!("copying {}", main.display()))?;
    let go_mod = dir.join("go.mod");
    if !go_mod.exists() {
        std::fs::write(
            &go_mod,
            format!(
                "module agent.offsets/grpc\n\ngo 1.17\n\nrequire google.golang.org/grpc {grpc}\n"
            ),
        )?;
        let newest = TOOLCHAINS.last().copied().unwrap_or("local");
        // Tidy raises the go directive to what the requirements need.
        run_checked(go(newest).args(["mod", "tidy"]).current_dir(&dir)).with_context(|| {
            format!("resolving grpc {grpc} (is the Go module proxy reachable?)")
        })?;
    }
    let directive = go_directive(&std::fs::read_to_string(&go_mod)?)
        .with_context(|| format!("no go directive in {}", go_mod.display()))?;
    let bin = work.join(format!("grpc-{grpc}-{toolchain}"));
    run_checked(
        go(toolchain)
            .args(["build", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(&dir),
    )
    .with_context(|| format!("building grpc {grpc} with {toolchain}"))?;
    Ok((bin, directive))
}

/// Builds the grpc program against every release of [`GRPC_VERSIONS`] and
/// writes the module table to `out`.
fn module_table(out: &Path) -> anyhow::Result<()> {
    let work = work_dir()?;
    let newest = TOOLCHAINS.last().copied().context("no toolchains")?;
    let mut binaries = Vec::new();
    for (i, grpc) in GRPC_VERSIONS.iter().enumerate() {
        let (bin, directive) = build_grpc(&work, grpc, newest)?;
        binaries.push(bin);
        // The layouts must not depend on the Go release: the ends of the
        // range are also built with the oldest Go they support.
        if i == 0 || i + 1 == GRPC_VERSIONS.len() {
            let oldest = oldest_toolchain(directive)
                .with_context(|| format!("no toolchain for go {directive:?}"))?;
            if oldest != newest {
                binaries.push(build_grpc(&work, grpc, oldest)?.0);
            }
        }
    }
    let out = out.to_str().context("output path")?;
    analyze(&["--module-offset-table", out], &binaries)?;
    eprintln!("wrote {out}");
    Ok(())
}

/// The newest Go release the module proxy serves (as `go1.X.Y`).
fn newest_served() -> anyhow::Result<String> {
    let out = Command::new("go")
        .args(["list", "-m", "-versions", "golang.org/toolchain"])
        .env("GOTOOLCHAIN", "local")
        .output()
        .context("running go list")?;
    if !out.status.success() {
        bail!(
            "go list -m -versions golang.org/toolchain failed (the module proxy is needed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    newest_release(&String::from_utf8_lossy(&out.stdout))
        .context("the module proxy lists no Go release for linux-amd64")
}

/// The newest `go1.X.Y` among `v0.0.1-go1.X.Y.linux-amd64` versions (no
/// release candidates, no betas).
fn newest_release(versions: &str) -> Option<String> {
    versions
        .split_whitespace()
        .filter_map(|v| {
            let release = v.strip_prefix("v0.0.1-go")?.strip_suffix(".linux-amd64")?;
            let parts: Vec<u32> = release
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            (parts.len() == 3).then(|| (parts, release.to_owned()))
        })
        .max()
        .map(|(_, release)| format!("go{release}"))
}

/// Fails when the table lacks the newest Go release the proxy serves.
pub fn check() -> anyhow::Result<()> {
    let newest = newest_served()?;
    let table = std::fs::read_to_string(root().join("agent/src/binary/offsets_table.json"))?;
    let in_table = table.contains(&format!("\"go\": \"{}\"", newest.trim_start_matches("go")));
    if !TOOLCHAINS.contains(&newest.as_str()) || !in_table {
        bail!(
            "{newest} is the newest Go release and the offset table lacks it: add it to TOOLCHAINS in xtask/src/offsets.rs and run `cargo xtask offsets`"
        );
    }
    eprintln!("the offset table has {newest}, the newest Go release");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_release_skips_candidates_and_other_platforms() {
        let listed = "v0.0.1-go1.9.2.linux-amd64 v0.0.1-go1.27.4.linux-amd64 \
                      v0.0.1-go1.28rc1.linux-amd64 v0.0.1-go1.27.10.darwin-arm64 \
                      v0.0.1-go1.27.3.linux-amd64 v0.0.1-go1.18beta1.linux-amd64";
        assert_eq!(newest_release(listed).as_deref(), Some("go1.27.4"));
        assert_eq!(newest_release(""), None);
    }

    #[test]
    fn the_table_has_every_toolchain() {
        let table =
            std::fs::read_to_string(root().join("agent/src/binary/offsets_table.json")).unwrap();
        for t in TOOLCHAINS {
            let entry = format!("\"go\": \"{}\"", t.trim_start_matches("go"));
            assert!(table.contains(&entry), "{t}: run `cargo xtask offsets`");
        }
    }

    #[test]
    fn go_directives() {
        assert_eq!(go_directive("module x\n\ngo 1.21.0\n"), Some((1, 21)));
        assert_eq!(go_directive("module x\ngo 1.17\n"), Some((1, 17)));
        assert_eq!(oldest_toolchain((1, 21)), Some("go1.21.13"));
        assert_eq!(oldest_toolchain((1, 99)), None);
    }
}
