//! Bad input gets one clear error line and a non-zero exit, leaves nothing
//! attached, and loses nothing already captured.

mod support;
use support::agent::AGENT_EXIT;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use nix::sys::signal::Signal;
use support::{
    agent::{Agent, command},
    fixture::{self, Running},
    http_client::Connection,
    otlp::flatten,
};

/// Tests here check the kernel's list of loaded programs, so they run one
/// at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Names (as the kernel truncates them) of the agent's HTTP programs still
/// loaded: a failed or finished agent must leave none behind (no pins, no
/// leaked links). Test binaries run one at a time, and the tests here one at
/// a time, so any found belong to an agent these tests started.
fn agent_programs_loaded() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .filter(|name| name.starts_with("http_server_"))
        .collect()
}

/// Runs the agent to completion; returns (exit code, stderr lines).
fn run_agent(args: &[&str]) -> (i32, Vec<String>) {
    let output = command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run agent");
    let stderr: Vec<String> = String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_owned)
        .collect();
    (output.status.code().unwrap_or(-1), stderr)
}

/// Asserts a fatal error: exit 1, exactly one line, containing `needle`.
fn assert_one_clear_error(args: &[&str], needle: &str) {
    let (code, stderr) = run_agent(args);
    assert_eq!(code, 1, "exit code for {args:?}: {stderr:?}");
    assert_eq!(stderr.len(), 1, "one line for {args:?}: {stderr:#?}");
    assert!(stderr[0].starts_with("agent: "), "{stderr:?}");
    assert!(
        stderr[0].contains(needle),
        "{:?} should mention {needle:?}",
        stderr[0]
    );
    assert!(
        !stderr[0].contains("panicked"),
        "no panic for {args:?}: {stderr:?}"
    );
    assert_eq!(
        agent_programs_loaded(),
        Vec::<String>::new(),
        "nothing left loaded"
    );
}

#[test]
fn wrong_pid() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_one_clear_error(&["--pid", "4194000"], "no process with PID 4194000");
    assert_one_clear_error(&["--pid", "0"], "no process with PID 0");
}

#[test]
fn non_go_process() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sleeper = Running {
        child: Command::new("sleep").arg("60").spawn().expect("sleep"),
    };
    let pid = sleeper.pid().to_string();
    assert_one_clear_error(&["--pid", &pid], "not a Go binary");
}

#[test]
fn go_program_without_net_http() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let binary = fixture::build("nohttp", &[]);
    let mut child = Command::new(&binary)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start nohttp");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready");
    let program = Running { child };
    let pid = program.pid().to_string();
    assert_one_clear_error(&["--pid", &pid], "does not serve HTTP with net/http");
}

#[test]
fn go_too_old_for_the_register_abi() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A copy of the fixture whose build info claims Go 1.16 (same length, so
    // the binary still runs).
    let binary = fixture::build("httpserver", &[]);
    let version = fixture::go_version();
    let minor: String = version
        .trim_start_matches("go1.")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert_eq!(
        minor.len(),
        2,
        "test assumes a two-digit minor version: {version}"
    );
    let old = version.replacen(&format!("go1.{minor}"), "go1.16", 1);
    let mut bytes = std::fs::read(&binary).expect("read fixture");
    let mut replaced = 0;
    let needle = version.as_bytes();
    let mut i = 0;
    while i + needle.len() <= bytes.len() {
        if &bytes[i..i + needle.len()] == needle {
            bytes[i..i + needle.len()].copy_from_slice(old.as_bytes());
            replaced += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    assert!(replaced > 0, "version string found in the binary");
    let dir = tempfile::tempdir().expect("tempdir");
    let patched = dir.path().join("httpserver-go116");
    std::fs::write(&patched, &bytes).expect("write patched binary");
    std::fs::set_permissions(
        &patched,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let (server, _addr) = fixture::start_httpserver(&patched);
    let pid = server.pid().to_string();
    assert_one_clear_error(&["--pid", &pid], "needs Go 1.17 or newer");
}

#[test]
fn missing_privileges() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let binary = fixture::build("httpserver", &[]);
    let (server, _addr) = fixture::start_httpserver(&binary);
    // The agent as nobody, with no capabilities.
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_agent"))
        .args(["--pid", &server.pid().to_string()])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
    assert_eq!(agent_programs_loaded(), Vec::<String>::new());
}

#[test]
fn bad_export_settings() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let binary = fixture::build("httpserver", &[]);
    let (server, _addr) = fixture::start_httpserver(&binary);
    let pid = server.pid().to_string();
    assert_one_clear_error(
        &["--pid", &pid, "--otlp-endpoint", "ftp://collector:4317"],
        "invalid OTLP endpoint",
    );
    assert_one_clear_error(
        &[
            "--pid",
            &pid,
            "--otlp-endpoint",
            "http://127.0.0.1:4317",
            "--otlp-protocol",
            "http/json",
        ],
        "unsupported OTLP protocol",
    );
    assert_one_clear_error(&["--pid", &pid, "--output", "xml"], "invalid --output");
}

/// A collector that is down never blocks tracing: the other outputs get every
/// span, and the spans the collector could not take are counted at exit.
#[test]
fn dead_collector_loses_nothing_captured() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let binary = fixture::build("httpserver", &[]);
    let (server, addr) = fixture::start_httpserver(&binary);
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let dir = tempfile::tempdir().expect("tempdir");
    let jsonl = dir.path().join("spans.jsonl");
    let mut cmd = command();
    cmd.args(["--pid", &server.pid().to_string()])
        .args(["--otlp-endpoint", &format!("http://127.0.0.1:{dead_port}")])
        .args(["--otlp-protocol", "http/protobuf"])
        .arg(format!("--output=jsonl={}", jsonl.display()));
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    let mut conn = Connection::open(addr);
    for path in ["/hello", "/items/a", "/fail"] {
        conn.request("GET", path, b"");
    }
    // The JSONL output gets the spans while the OTLP exporter is still
    // retrying the dead collector.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&jsonl).map_or(0, |t| t.matches("\"spanId\"").count()) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "spans reached the JSONL output"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.signal(Signal::SIGTERM);
    let status = agent.wait(AGENT_EXIT);
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&jsonl).expect("jsonl");
    let requests: Vec<_> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("OTLP JSON"))
        .collect();
    let spans = flatten(requests.iter());
    let mut names: Vec<_> = spans.iter().map(|s| s.span.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["GET /fail", "GET /hello", "GET /items/"]);
    let summary = agent.wait_for_stderr("spans exported", Duration::from_secs(1));
    assert!(summary.contains("export failed: 3 spans"), "{summary}");
    assert_eq!(agent_programs_loaded(), Vec::<String>::new());
}
