//! `cargo xtask ci` and `cargo xtask test`.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::util::{exec, is_root, root};

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.current_dir(root());
    cmd
}

/// Every test, as root.
pub fn test(extra: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the tests load BPF programs into the kernel: run them as root (sudo -E cargo xtask test)"
        );
    }
    crate::setup::run()?;
    // The container image (a static release build in its own target
    // directory, then podman): `container_image` runs the agent from it.
    crate::image::run()?;
    // Default members: agent-ebpf is built by the agent's build script.
    // --no-fail-fast: a failing test binary must not hide the results of the
    // ones after it (the totals below cover them all).
    let mut cmd = cargo();
    cmd.args(["test", "--locked", "--no-fail-fast"]).args(extra);
    // Setup put every Go toolchain and module the tests use into the module
    // cache; with the proxy off, one missing from it fails its test at once
    // and the same way every time, instead of a test downloading it and
    // failing whenever the network does. A cached toolchain still switches
    // (the go command looks in the cache before asking the proxy). GOFLAGS
    // stays the user's: the tests that need other flags set their own.
    cmd.env("GOPROXY", "off");
    eprintln!("+ GOPROXY=off {}", crate::util::describe(&cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n
                    .trim_start_matches("ok.")
                    .trim_start_matches("FAILED.")
                    .trim()
                    .parse()
                    .unwrap_or(0);
                match what {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    // One closing line with the totals over every test binary.
    println!("{passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

/// Exactly what CI does.
pub fn run() -> anyhow::Result<()> {
    crate::setup::run()?;
    exec(cargo().args(["fmt", "--all", "--check"]))?;
    exec(cargo().args([
        "clippy",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Every fuzz target (every parser of untrusted bytes), 20 s each on its
    // stored corpus: twelve targets, about four minutes, beside a build of
    // the agent library with sanitizers.
    exec(
        Command::new("bash")
            .arg(root().join("scripts/fuzz.sh"))
            .arg("20"),
    )?;
    // Last, so that CI's output ends with the test totals.
    test(&[])
}
