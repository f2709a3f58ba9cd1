//! The USDT fixture (`tests/fixtures/usdt`), built from source once per test
//! binary, and a handle on a running instance of it.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::OnceLock,
};

/// The built fixture: the Go program, its shared library, and the library
/// it loads only on command (`loadlib`).
pub struct Fixture {
    pub exe: PathBuf,
    pub lib: PathBuf,
    pub runtime_lib: PathBuf,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Builds `out` with gcc from `sources` in `tests/fixtures/usdt/lib`.
fn shared_library(out: &Path, sources: &[&str]) {
    let lib_dir = fixtures_dir().join("usdt/lib");
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-g", "-o"])
        .arg(out)
        .args(sources.iter().map(|source| lib_dir.join(source)))
        .status()
        .expect("running gcc");
    assert!(status.success(), "gcc failed to build {}", out.display());
}

/// Builds the fixture into `CARGO_TARGET_TMPDIR/usdt-fixture-<name>` (one
/// directory per test binary, so parallel test binaries do not race).
pub fn fixture(name: &str) -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("usdt-fixture-{name}"));
        std::fs::create_dir_all(&out).expect("creating the fixture output directory");
        let exe = out.join("usdt");
        let lib = out.join("libfix.so");
        shared_library(&lib, &["fixlib.c", "fixlib_guarded.c"]);
        let runtime_lib = out.join("libruntime.so");
        shared_library(&runtime_lib, &["runtime.c"]);
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&exe)
            .arg("./usdt")
            .current_dir(fixtures_dir())
            .env("CGO_ENABLED", "1")
            .status()
            .expect("running go build");
        assert!(status.success(), "go build failed for the usdt fixture");
        Fixture {
            exe,
            lib,
            runtime_lib,
        }
    })
}

/// A running fixture process, driven through stdin/stdout.
pub struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

impl Running {
    /// Starts the fixture and waits until it has loaded its library.
    pub fn start(fixture: &Fixture) -> Self {
        let mut child = Command::new(&fixture.exe)
            .arg(&fixture.lib)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the usdt fixture");
        let stdin = child.stdin.take().expect("fixture stdin");
        let stdout = BufReader::new(child.stdout.take().expect("fixture stdout"));
        let pid = child.id();
        let mut running = Self {
            child,
            stdin,
            stdout,
            pid,
        };
        let line = running.read_line();
        assert_eq!(line, format!("ready {pid}"), "fixture did not start");
        running
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("reading the fixture's output");
        line.trim_end().to_owned()
    }

    /// Sends one command and returns the fixture's one-line answer.
    pub fn command(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("writing to the fixture");
        self.stdin.flush().expect("flushing the fixture's stdin");
        self.read_line()
    }

    /// Fires every probe once.
    pub fn fire(&mut self) {
        assert_eq!(self.command("fire"), "fired");
    }

    /// The guarded probe's semaphore, as the fixture reads it.
    pub fn semaphore(&mut self) -> u16 {
        let line = self.command("sema");
        line.strip_prefix("sema ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected answer to sema: {line:?}"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `readelf -n` of `path`, reduced to (provider, name, location, base,
/// semaphore, arguments) per USDT note.
pub fn readelf_notes(path: &Path) -> Vec<(String, String, u64, u64, u64, String)> {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(path)
        .output()
        .expect("running readelf");
    assert!(out.status.success(), "readelf -n failed");
    let text = String::from_utf8(out.stdout).expect("readelf output is UTF-8");
    let mut notes = Vec::new();
    let mut cur: Option<(String, String, u64, u64, u64)> = None;
    let hex = |s: &str| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).expect("hex");
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Provider: ") {
            cur = Some((rest.to_owned(), String::new(), 0, 0, 0));
        } else if let Some(rest) = line.strip_prefix("Name: ")
            && let Some(c) = cur.as_mut()
        {
            c.1 = rest.to_owned();
        } else if let Some(rest) = line.strip_prefix("Location: ")
            && let Some(c) = cur.as_mut()
        {
            let fields: Vec<&str> = rest.split(", ").collect();
            c.2 = hex(fields[0]);
            c.3 = hex(fields[1].trim_start_matches("Base: "));
            c.4 = hex(fields[2].trim_start_matches("Semaphore: "));
        } else if let Some(rest) = line.strip_prefix("Arguments:")
            && let Some((p, n, l, b, s)) = cur.take()
        {
            notes.push((p, n, l, b, s, rest.trim().to_owned()));
        }
    }
    notes
}
