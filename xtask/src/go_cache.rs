//! Puts every Go toolchain and Go module the tests build with into the Go
//! module cache, before any test runs.
//!
//! The tests build fixtures with `GOTOOLCHAIN=go1.X.Y` and build modules
//! with requirements (golang.org/x/exp). Left to the tests, the go command
//! downloads those on first use, so a proxy hiccup fails a random test (CI
//! once lost a run to `go: download go1.25.5 for linux/amd64: toolchain not
//! available`). Here they are fetched once, with retries, and a proxy that
//! keeps refusing fails set-up with one line naming what it refused;
//! `cargo xtask test` then runs the tests with `GOPROXY=off`, so a test can
//! only use the cache and anything missing from it fails at once, the same
//! way every time.
//!
//! Each item is first tried with `GOPROXY=off`, exactly as the tests will use
//! it: when that works the item is cached and nothing is fetched, which keeps
//! a set-up with a warm cache to a fraction of a second per item.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::Duration,
};

use anyhow::bail;

use crate::util::{describe, output, root};

/// Every `go1.X.Y` release the tests and examples build with through
/// `GOTOOLCHAIN` (fetched by the go command from the module proxy as the
/// module golang.org/toolchain). Go 1.19 is not here: it comes from
/// Debian's golang-1.19-go (see setup's PACKAGES); the newest release is the
/// installed Go. The unit test below fails when a test names a release
/// missing from this list.
pub const TOOLCHAINS: [&str; 10] = [
    "go1.17.13",
    "go1.18.10",
    "go1.20.14",
    "go1.21.13",
    "go1.22.12",
    "go1.23.12",
    "go1.24.13",
    "go1.25.5",
    "go1.25.8",
    "go1.27.4",
];

/// Attempts per item: enough to ride out a proxy's brief refusals.
const ATTEMPTS: u32 = 4;

/// The pause after the first failed attempt; it doubles after each one
/// (2 s, 4 s, 8 s: 14 s in all before giving up).
const FIRST_BACKOFF: Duration = Duration::from_secs(2);

/// The go command the tests run: `$GO`, else `go` on PATH.
fn go() -> Command {
    Command::new(std::env::var("GO").unwrap_or_else(|_| "go".to_owned()))
}

/// `go version` under `toolchain`: the go command downloads the toolchain
/// into the module cache before running it.
fn toolchain_command(toolchain: &str) -> Command {
    let mut cmd = go();
    cmd.arg("version")
        .env("GOTOOLCHAIN", toolchain)
        // Go 1.17 rejects -buildvcs, which a user's GOFLAGS may carry (the
        // tests override GOFLAGS the same way).
        .env("GOFLAGS", "-mod=mod");
    cmd
}

/// `go mod download` in the module at `dir`: every module its packages need.
fn module_command(dir: &Path) -> Command {
    let mut cmd = go();
    cmd.args(["mod", "download"]).current_dir(dir);
    cmd
}

/// The files under `dir` whose name passes `keep`, in a stable order;
/// `target` (cargo's output) and hidden directories are skipped.
fn find(dir: &Path, keep: &dyn Fn(&str) -> bool, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if file_name != "target" && !file_name.starts_with('.') {
                find(&path, keep, found);
            }
        } else if keep(&file_name) {
            found.push(path);
        }
    }
}

/// Every Go module in the workspace that requires other modules (a module
/// without requirements needs nothing from the proxy).
fn modules_with_requirements(root: &Path) -> Vec<PathBuf> {
    let mut go_mods = Vec::new();
    find(root, &|name| name == "go.mod", &mut go_mods);
    go_mods
        .into_iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .is_ok_and(|text| text.lines().any(|l| l.trim_start().starts_with("require")))
        })
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect()
}

/// `cmd` as a shell line, with the variables it sets (the toolchain is one).
fn shown(cmd: &Command) -> String {
    let mut s = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            s.push_str(&format!(
                "{}={} ",
                key.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
    }
    s + &describe(cmd)
}

/// What the go command said, on one line, without its progress lines.
fn said(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("go: downloading"))
        .collect();
    if lines.is_empty() {
        format!("exited with {}", out.status)
    } else {
        lines.join("; ")
    }
}

/// Makes `make()` succeed from the cache alone, fetching through the
/// configured proxy when it does not. Returns whether anything was fetched.
pub fn ensure(what: &str, make: impl Fn() -> Command) -> anyhow::Result<bool> {
    if make()
        .env("GOPROXY", "off")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(false);
    }
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let mut cmd = make();
        eprintln!(
            "setup: fetching {what} (attempt {attempt}/{ATTEMPTS}): {}",
            shown(&cmd)
        );
        last = match cmd.output() {
            Ok(out) if out.status.success() => return Ok(true),
            Ok(out) => said(&out),
            Err(e) => format!("cannot run {}: {e}", shown(&cmd)),
        };
        eprintln!("setup: {what}: {last}");
        if attempt < ATTEMPTS {
            thread::sleep(backoff);
            backoff *= 2;
        }
    }
    let proxy = output(go().args(["env", "GOPROXY"])).unwrap_or_default();
    bail!(
        "setup: cannot fetch {what} into the Go module cache (GOPROXY={}) after {ATTEMPTS} attempts: {last}",
        proxy.trim()
    )
}

/// Fetches what is missing of [`TOOLCHAINS`] and of the requirements of
/// every Go module in the workspace.
pub fn prefetch() -> anyhow::Result<()> {
    let mut fetched = 0;
    for toolchain in TOOLCHAINS {
        fetched += usize::from(ensure(&format!("Go toolchain {toolchain}"), || {
            toolchain_command(toolchain)
        })?);
    }
    let root = root();
    let modules = modules_with_requirements(&root);
    for dir in &modules {
        let name = dir.strip_prefix(&root).unwrap_or(dir).display();
        fetched += usize::from(ensure(&format!("the Go modules {name} requires"), || {
            module_command(dir)
        })?);
    }
    let state = if fetched == 0 { "cached" } else { "fetched" };
    eprintln!(
        "setup: Go toolchains {} and the requirements of {} Go modules {state}",
        TOOLCHAINS.join(" "),
        modules.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `"go1.X.Y"` string literals in `text`.
    fn releases(text: &str) -> Vec<&str> {
        let mut found = Vec::new();
        for (start, _) in text.match_indices("\"go1.") {
            let rest = &text[start + 1..];
            let Some(end) = rest.find('"') else { continue };
            let literal = &rest[..end];
            let parts: Vec<&str> = literal["go".len()..].split('.').collect();
            if parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            {
                found.push(literal);
            }
        }
        found
    }

    #[test]
    fn releases_are_the_full_literals_only() {
        assert_eq!(
            releases(r#"("go1.22.12") "go1.16" "go1.2x.1" "go1.25.5""#),
            ["go1.22.12", "go1.25.5"]
        );
    }

    /// The tests' sources: everything under agent/tests and agent/examples
    /// (the benches), and any other Rust file outside xtask that sets
    /// GOTOOLCHAIN. xtask's own uses (`cargo xtask offsets`) are a
    /// maintainer's tool that fetches on demand, not part of the tests.
    fn test_sources(root: &Path) -> Vec<PathBuf> {
        let mut all = Vec::new();
        find(root, &|name| name.ends_with(".rs"), &mut all);
        all.into_iter()
            .filter(|f| {
                let rel = f.strip_prefix(root).unwrap_or(f);
                !rel.starts_with("xtask")
                    && (rel.starts_with("agent/tests")
                        || rel.starts_with("agent/examples")
                        || rel.starts_with("agent/benches")
                        || std::fs::read_to_string(f).is_ok_and(|t| t.contains("GOTOOLCHAIN")))
            })
            .collect()
    }

    /// Every release a test builds with is prefetched: a release missing here
    /// would make its test fail under `GOPROXY=off`.
    #[test]
    fn every_release_the_tests_name_is_prefetched() {
        let root = root();
        let sources = test_sources(&root);
        assert!(
            sources
                .iter()
                .any(|f| f.ends_with("agent/tests/version_matrix.rs")),
            "the scan found no test sources under {}",
            root.display()
        );
        let mut missing = Vec::new();
        for file in &sources {
            let text = std::fs::read_to_string(file).expect("reading a test source");
            for release in releases(&text) {
                if !TOOLCHAINS.contains(&release) && !missing.iter().any(|(r, _)| *r == release) {
                    missing.push((release.to_owned(), file.clone()));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "add to go_cache::TOOLCHAINS: {}",
            missing
                .iter()
                .map(|(r, f)| format!("{r} (in {})", f.strip_prefix(&root).unwrap_or(f).display()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    #[test]
    fn the_fixture_modules_with_requirements_are_found() {
        let modules = modules_with_requirements(&root());
        for dir in [
            "agent/tests/fixtures/tracedump",
            "agent/tests/fixtures/flightrec/xexp",
        ] {
            assert!(modules.contains(&root().join(dir)), "{dir} in {modules:?}");
        }
        // The main fixtures module requires nothing.
        assert!(!modules.contains(&root().join("agent/tests/fixtures")));
    }
}
