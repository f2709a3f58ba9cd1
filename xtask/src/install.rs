//! `cargo xtask install`: the agent as a host service. Builds the release
//! binary as the user who runs it, then, as root, puts in place
//! `PREFIX/bin/agent`, the unit `/etc/systemd/system/agent.service` (its
//! `ExecStart` naming that binary) and the commented configuration
//! `/etc/agent/agent.toml` (never overwritten: it is the user's). Run by a
//! user who is not root, it builds and prints the one command to run as
//! root, with this program's absolute path (root's PATH has no
//! `~/.cargo/bin`).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{exec, is_root, root};

/// The unit's binary path as shipped, replaced by `PREFIX/bin/agent`.
const SHIPPED_BINARY: &str = "/usr/local/bin/agent";

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Where the binary goes: PREFIX/bin/agent.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Install under this directory instead of `/` (a staging root, for
    /// packaging and tests).
    #[arg(long, value_name = "DIR")]
    destdir: Option<PathBuf>,
    /// Install what is built (`target/release/agent`) without building.
    #[arg(long)]
    no_build: bool,
}

pub fn run(args: &InstallArgs) -> anyhow::Result<()> {
    let target = target_dir()?;
    if !args.no_build {
        exec(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
                .current_dir(root())
                .args(["build", "--release", "-p", "agent"])
                .env("CARGO_TARGET_DIR", &target),
        )?;
    }
    let binary = target.join("release/agent");
    if !binary.exists() {
        bail!(
            "{} is not built: run `cargo xtask install` (it builds) first",
            binary.display()
        );
    }
    if args.destdir.is_none() && !is_root() {
        let me = std::env::current_exe().context("cannot find this program's path")?;
        eprintln!(
            "install: built {}; now install it as root:\n  sudo {} install --no-build --prefix {}",
            binary.display(),
            me.display(),
            args.prefix.display()
        );
        return Ok(());
    }
    let installed = install(
        &binary,
        &root().join("scripts/systemd"),
        &args.prefix,
        args.destdir.as_deref().unwrap_or(Path::new("/")),
    )?;
    for line in installed {
        eprintln!("install: {line}");
    }
    eprintln!(
        "install: next, edit /etc/agent/agent.toml, then `systemctl daemon-reload && systemctl enable --now agent`"
    );
    Ok(())
}

/// The target directory this program was built in (`<target>/debug/xtask`),
/// so that `sudo <target>/debug/xtask install --no-build` finds the binary
/// without cargo's environment; else `CARGO_TARGET_DIR` or `target`.
fn target_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let me = std::env::current_exe().context("cannot find this program's path")?;
    Ok(me
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| root().join("target"), Path::to_path_buf))
}

/// Copies the binary, the unit and (when absent) the configuration under
/// `destdir`; returns what it did, one line each.
fn install(
    binary: &Path,
    scripts: &Path,
    prefix: &Path,
    destdir: &Path,
) -> anyhow::Result<Vec<String>> {
    let under = |path: &Path| destdir.join(path.strip_prefix("/").unwrap_or(path));
    let installed_binary = prefix.join("bin/agent");
    let mut done = Vec::new();

    let to = under(&installed_binary);
    copy(binary, &to, 0o755)?;
    done.push(format!("{}", to.display()));

    let unit = fs::read_to_string(scripts.join("agent.service"))
        .context("cannot read scripts/systemd/agent.service")?;
    let unit = unit.replace(
        SHIPPED_BINARY,
        installed_binary.to_str().context("PREFIX is not UTF-8")?,
    );
    let to = under(Path::new("/etc/systemd/system/agent.service"));
    write(&to, unit.as_bytes(), 0o644)?;
    done.push(format!("{}", to.display()));

    let to = under(Path::new("/etc/agent/agent.toml"));
    if to.exists() {
        done.push(format!("{} kept (it exists)", to.display()));
    } else {
        copy(&scripts.join("agent.toml"), &to, 0o644)?;
        done.push(format!("{}", to.display()));
    }
    Ok(done)
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let bytes = fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    write(to, &bytes, mode)
}

/// Writes `to` through a temporary file and a rename: a running binary is
/// replaced, not written into (ETXTBSY).
fn write(to: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = to.parent().context("no parent directory")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = to.with_extension("install-tmp");
    fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
    fs::rename(&tmp, to).with_context(|| format!("cannot write {}", to.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_under_destdir_and_keeps_an_existing_config() {
        let dest = std::env::temp_dir().join(format!("xtask-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dest);
        let binary = dest.with_extension("bin");
        fs::write(&binary, b"#!/bin/sh\n").expect("fake binary");
        let scripts = root().join("scripts/systemd");

        let done = install(&binary, &scripts, Path::new("/opt/agent"), &dest).expect("install");
        assert_eq!(done.len(), 3, "{done:?}");
        let bin = dest.join("opt/agent/bin/agent");
        assert_eq!(
            fs::metadata(&bin).expect("binary").permissions().mode() & 0o777,
            0o755
        );
        let unit = fs::read_to_string(dest.join("etc/systemd/system/agent.service")).expect("unit");
        assert!(
            unit.contains("ExecStart=/opt/agent/bin/agent --config /etc/agent/agent.toml"),
            "{unit}"
        );
        let config = dest.join("etc/agent/agent.toml");
        assert_eq!(
            fs::read(&config).expect("config"),
            fs::read(scripts.join("agent.toml")).expect("example")
        );

        // A second install keeps the user's configuration.
        fs::write(&config, "exe = [\"mine\"]\n").expect("edit");
        let done = install(&binary, &scripts, Path::new("/opt/agent"), &dest).expect("again");
        assert!(done[2].ends_with("kept (it exists)"), "{done:?}");
        assert_eq!(
            fs::read_to_string(&config).expect("config"),
            "exe = [\"mine\"]\n"
        );
        fs::remove_dir_all(&dest).expect("clean up");
        fs::remove_file(&binary).expect("clean up");
    }
}
