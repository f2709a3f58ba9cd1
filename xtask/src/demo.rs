//! `cargo xtask demo`: the agent on the bundled Go HTTP server, end to end.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::util::{exec, is_root, root};

/// Builds the agent (release) and the fixture; returns their paths.
pub fn build_all() -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let agent = build_agent()?;
    let fixture = build_go(std::path::Path::new("agent/tests/fixtures"), "httpserver")?;
    Ok((agent, fixture))
}

/// Builds the agent in release; returns its path.
pub fn build_agent() -> anyhow::Result<std::path::PathBuf> {
    let root = root();
    exec(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "agent",
    ]))?;
    Ok(root.join("target/release/agent"))
}

/// Builds the Go package `./<package>` of the module at `module` (relative
/// to the repository) into `target/xtask/<package>`; returns its path.
pub fn build_go(module: &std::path::Path, package: &str) -> anyhow::Result<std::path::PathBuf> {
    let root = root();
    let out = root.join("target/xtask");
    std::fs::create_dir_all(&out)?;
    let binary = out.join(package);
    exec(
        Command::new("go")
            .current_dir(root.join(module))
            .args(["build", "-o"])
            .arg(&binary)
            .arg(format!("./{package}")),
    )?;
    Ok(binary)
}

/// A child killed on drop.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the fixture; returns it and its address.
pub fn start_fixture(
    fixture: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> anyhow::Result<(Guard, SocketAddr)> {
    start_fixture_with(fixture, extra_env, &[])
}

/// [`start_fixture`] with command-line arguments.
pub fn start_fixture_with(
    fixture: &std::path::Path,
    extra_env: &[(&str, &str)],
    args: &[&str],
) -> anyhow::Result<(Guard, SocketAddr)> {
    let mut child = Command::new(fixture)
        .args(args)
        .envs(extra_env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the fixture")?;
    let stdout = child.stdout.take().context("fixture stdout")?;
    let guard = Guard(child);
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().context("fixture exited early")??;
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.parse()?;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((guard, addr))
}

/// Starts the agent; returns once it has attached (its stderr is echoed).
pub fn start_agent(
    agent: &std::path::Path,
    args: &[String],
    stdout: Stdio,
    envs: &[(&str, &str)],
) -> anyhow::Result<Guard> {
    let mut child = Command::new(agent)
        .args(args)
        .envs(envs.iter().copied())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the agent")?;
    let stderr = child.stderr.take().context("agent stderr")?;
    let guard = Guard(child);
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let Some(line) = lines.next() else {
            bail!("the agent exited before attaching");
        };
        let line = line?;
        eprintln!("{line}");
        if line.contains("attached to PID") {
            break;
        }
    }
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
    Ok(guard)
}

fn request(addr: SocketAddr, method: &str, target: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.lines().next().unwrap_or_default().to_owned())
}

/// Sends SIGTERM to the child and waits for it.
pub fn terminate(mut guard: Guard) -> anyhow::Result<std::process::ExitStatus> {
    exec(Command::new("kill").args(["-TERM", &guard.0.id().to_string()]))?;
    Ok(guard.0.wait()?)
}

pub fn run() -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the demo loads BPF programs into the kernel: run it as root (sudo -E cargo xtask demo)"
        );
    }
    crate::setup::run()?;
    let (agent, fixture) = build_all()?;
    let (server, addr) = start_fixture(&fixture, &[])?;
    eprintln!("demo: Go HTTP server {} listening on {addr}", server.0.id());
    let agent = start_agent(
        &agent,
        &["--pid".to_owned(), server.0.id().to_string()],
        Stdio::inherit(),
        &[],
    )?;
    for (method, target) in [
        ("GET", "/hello"),
        ("POST", "/items/demo"),
        ("GET", "/slow?ms=25"),
        ("PUT", "/fail"),
        ("GET", "/nope"),
    ] {
        eprintln!(
            "demo: {method} {target} -> {}",
            request(addr, method, target)?
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let status = terminate(agent)?;
    drop(server);
    if !status.success() {
        bail!("the agent exited with {status}");
    }
    Ok(())
}
