//! Go programs the tests build from source in `agent/tests/fixtures`.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

/// The Go module with the fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The `go` command: `$GO` if set, else `go` on PATH.
pub fn go() -> String {
    std::env::var("GO").unwrap_or_else(|_| "go".to_owned())
}

/// Builds `fixtures/<name>` (a package of the fixtures module) with extra
/// `go build` flags, once per test binary and flag set. Panics with Go's
/// output on failure.
pub fn build(name: &str, flags: &[&str]) -> PathBuf {
    build_at(&fixtures_dir(), &format!("./{name}"), name, flags)
}

/// Builds `fixtures/<module>`, a Go module of its own (its requirements are
/// prefetched by `cargo xtask setup`), as [`build`] does.
pub fn build_module(module: &str, flags: &[&str]) -> PathBuf {
    build_at(&fixtures_dir().join(module), ".", module, flags)
}

/// `go build <package>` in `dir`, named after `name` and the flags.
fn build_at(dir: &Path, package: &str, name: &str, flags: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let key = format!("{name} {}", flags.join(" "));
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .expect("fixture lock");
    if let Some(path) = built.get(&key) {
        return path.clone();
    }
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    std::fs::create_dir_all(&out_dir).expect("create fixture dir");
    let suffix: String = flags
        .join("_")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let out = out_dir.join(if suffix.is_empty() {
        name.to_owned()
    } else {
        format!("{name}-{suffix}")
    });
    let output = Command::new(go())
        .current_dir(dir)
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(package)
        .env("CGO_ENABLED", "0")
        .output()
        .expect("run go build (is Go installed?)");
    assert!(
        output.status.success(),
        "go build {name} failed (a module's requirements: `cargo xtask setup`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    built.insert(key, out.clone());
    out
}

/// The Go version string (`go1.26.8`) the fixtures are built with.
pub fn go_version() -> String {
    let output = Command::new(go())
        .args(["env", "GOVERSION"])
        .current_dir(fixtures_dir())
        .output()
        .expect("go env");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A child process killed when dropped.
#[derive(Debug)]
pub struct Running {
    pub child: Child,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and reaps the process.
    pub fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a built HTTP server fixture and waits for its address. The
/// fixtures' go.mod says `go 1.19`, which selects Go 1.21's ServeMux; the
/// fixture runs with Go 1.22's (which records `Request.Pattern`) instead.
pub fn start_httpserver(binary: &Path) -> (Running, SocketAddr) {
    start_httpserver_with(binary, &[])
}

/// [`start_httpserver`] with extra flags (`-tls`).
pub fn start_httpserver_with(binary: &Path, args: &[&str]) -> (Running, SocketAddr) {
    let mut child = Command::new(binary)
        .args(args)
        .env("GODEBUG", "httpmuxgo121=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fixture");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        assert!(Instant::now() < deadline, "fixture did not start");
        let line = lines
            .next()
            .expect("fixture exited before listening")
            .expect("read fixture stdout");
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.parse().expect("fixture address");
        }
    };
    // Keep draining stdout so the fixture never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Running { child }, addr)
}

/// Runs the trace-writing program `traces/<program>` with a toolchain
/// (`None`: the installed Go) and an optional `GODEBUG`, and returns the path
/// of the execution trace it wrote into `dir`.
pub fn generate_trace(
    dir: &Path,
    program: &str,
    toolchain: Option<&str>,
    godebug: Option<&str>,
) -> PathBuf {
    let out = dir.join(format!(
        "{program}-{}-{}.trace",
        toolchain.unwrap_or("local"),
        godebug.unwrap_or("default").replace(['=', ','], "_")
    ));
    let mut cmd = Command::new(go());
    if let Some(d) = godebug {
        cmd.env("GODEBUG", d);
    }
    if let Some(tc) = toolchain {
        cmd.env("GOTOOLCHAIN", tc);
    }
    let res = cmd
        .args(["run", &format!("./traces/{program}")])
        .arg(&out)
        .current_dir(fixtures_dir())
        .output()
        .expect("running go run");
    assert!(
        res.status.success(),
        "go run ./traces/{program} ({toolchain:?}) failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    out
}

/// The addresses of the `httpclient` fixture.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddrs {
    /// The server whose `/call` makes the calls.
    pub front: SocketAddr,
    /// The HTTP/1.1 back server.
    pub back: SocketAddr,
    /// The HTTPS back server (HTTP/2).
    pub tls_back: SocketAddr,
    /// A port nobody listens on.
    pub refused: SocketAddr,
}

/// Starts a build of the `httpclient` fixture and waits for its addresses.
pub fn start_httpclient(binary: &Path) -> (Running, ClientAddrs) {
    let mut child = Command::new(binary)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fixture");
    let stdout = child.stdout.take().expect("stdout");
    let running = Running { child };
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut back, mut tls_back, mut refused) = (None, None, None);
    let front = loop {
        assert!(Instant::now() < deadline, "fixture did not start");
        let line = lines
            .next()
            .expect("fixture exited before listening")
            .expect("read fixture stdout");
        let addr = |prefix: &str| -> Option<SocketAddr> {
            line.strip_prefix(prefix)
                .map(|a| a.parse().expect("fixture address"))
        };
        if let Some(a) = addr("back on ") {
            back = Some(a);
        } else if let Some(a) = addr("tls back on ") {
            tls_back = Some(a);
        } else if let Some(a) = addr("refused on ") {
            refused = Some(a);
        } else if let Some(a) = addr("listening on ") {
            break a;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let addrs = ClientAddrs {
        front,
        back: back.expect("back address"),
        tls_back: tls_back.expect("tls back address"),
        refused: refused.expect("refused address"),
    };
    (running, addrs)
}
