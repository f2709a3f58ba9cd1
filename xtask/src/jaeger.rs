//! Jaeger, the real backend of the export test (agent/tests/export_jaeger.rs):
//! `github.com/jaegertracing/jaeger/cmd/jaeger` (Jaeger v2, an OpenTelemetry
//! Collector build: OTLP in, the query API out, traces in memory) built from
//! its Go module at a pinned release into a cache directory, once.
//!
//! `go install PKG@VERSION` refuses this module (its go.mod has `replace`
//! directives), so set-up takes the module's source from the module cache,
//! copies it out of the read-only cache and builds `./cmd/jaeger` there with
//! `GOFLAGS=-mod=mod`, fetching through the proxy with the retries of the
//! Go toolchains ([`crate::go_cache::ensure`]).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{go_cache, util::exec};

/// The pinned release. agent/tests/export_jaeger.rs looks for the binary
/// under the same name (a unit test below checks that they agree).
pub const VERSION: &str = "v1.75.0";

const MODULE: &str = "github.com/jaegertracing/jaeger";

/// `$XDG_CACHE_HOME/agent`, else `~/.cache/agent`.
fn cache_root() -> PathBuf {
    match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("agent"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/agent"),
    }
}

/// Where the binary goes: `~/.cache/agent/jaeger-v1.75.0/jaeger`.
pub fn binary() -> PathBuf {
    cache_root()
        .join(format!("jaeger-{VERSION}"))
        .join("jaeger")
}

fn go() -> Command {
    Command::new(std::env::var("GO").unwrap_or_else(|_| "go".to_owned()))
}

/// The module's source directory in the module cache, downloaded if missing.
fn module_source() -> anyhow::Result<PathBuf> {
    let spec = format!("{MODULE}@{VERSION}");
    go_cache::ensure(&format!("the Go module {spec}"), || {
        let mut cmd = go();
        cmd.args(["mod", "download", &spec]);
        cmd
    })?;
    let out = go()
        .args(["mod", "download", "-json", &spec])
        .env("GOPROXY", "off")
        .output()
        .with_context(|| format!("cannot run go mod download {spec}"))?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("go mod download -json {spec} printed no JSON"))?;
    match json.get("Dir").and_then(serde_json::Value::as_str) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => bail!("go mod download -json {spec} gave no source directory: {json}"),
    }
}

/// Builds the binary unless it is there already.
pub fn ensure() -> anyhow::Result<()> {
    let binary = binary();
    if binary.is_file() {
        eprintln!("setup: Jaeger {VERSION} present ({})", binary.display());
        return Ok(());
    }
    let source = module_source()?;
    let dir = binary
        .parent()
        .context("the Jaeger binary's path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // A writable copy of the module (the module cache is read-only), built
    // as its own main module so its replace directives apply.
    let work = dir.join("src");
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("cannot remove {}", work.display()))?;
    }
    exec(Command::new("cp").arg("-r").arg(&source).arg(&work))?;
    exec(Command::new("chmod").args(["-R", "u+w"]).arg(&work))?;
    let partial = dir.join("jaeger.partial");
    eprintln!("setup: building Jaeger {VERSION} (a few minutes the first time)");
    let built = go_cache::ensure(&format!("Jaeger {VERSION}"), || build(&work, &partial));
    let result = built.and_then(|_| {
        std::fs::rename(&partial, &binary)
            .with_context(|| format!("cannot move the build to {}", binary.display()))
    });
    let _ = std::fs::remove_dir_all(&work);
    result?;
    eprintln!("setup: Jaeger {VERSION} built ({})", binary.display());
    Ok(())
}

fn build(work: &Path, out: &Path) -> Command {
    let mut cmd = go();
    cmd.args(["build", "-o"])
        .arg(out)
        .arg("./cmd/jaeger")
        .current_dir(work)
        .env("GOFLAGS", "-mod=mod");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_looks_for_the_release_set_up_builds() {
        let test = crate::util::root().join("agent/tests/export_jaeger.rs");
        let text = std::fs::read_to_string(&test).expect("reading the Jaeger test");
        assert!(
            text.contains(&format!("\"jaeger-{VERSION}\"")),
            "{} must look for jaeger-{VERSION}",
            test.display()
        );
    }
}
