//! `cargo xtask ci` and `cargo xtask test`.

use std::process::Command;

use anyhow::bail;

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
    // Default members: agent-ebpf is built by the agent's build script.
    exec(cargo().args(["test", "--locked"]).args(extra))
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
    test(&[])
}
