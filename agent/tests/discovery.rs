//! Host mode, as root: the agent started first with `--exe NAME`, then Go
//! HTTP servers built from source started under that name, several at once,
//! killed and started again. Every request of every process must arrive as
//! one span whose resource names that process; a server that lives 200 ms
//! is traced from its first request (the agent holds it at exec until it
//! has attached).

mod support;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use support::{
    agent::{AGENT_EXIT, Agent, command},
    fixture::{self, Running},
    http_client::Connection,
    otlp::Receiver,
};

/// The httpserver fixture under a name of this test's own (15 bytes at
/// most, the kernel's `comm`), so that no other program on the machine
/// matches `--exe NAME`.
fn renamed_fixture(tag: &str) -> (PathBuf, String) {
    let name = format!("hs{tag}{}", std::process::id());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("discovery");
    std::fs::create_dir_all(&dir).expect("create dir");
    let path = dir.join(&name);
    std::fs::copy(fixture::build("httpserver", &[]), &path).expect("copy fixture");
    (path, name)
}

fn start_agent(name: &str, receiver: &Receiver) -> Agent {
    let mut cmd = command();
    cmd.args(["--exe", name]).args([
        "--otlp-endpoint",
        &receiver.url(),
        "--otlp-protocol",
        "grpc",
    ]);
    let mut agent = Agent::start(cmd);
    agent.wait_for_stderr("watching for new processes", Duration::from_secs(60));
    agent
}

/// Sends `n` requests to `addr`, each to a path naming `round`.
fn send(addr: SocketAddr, round: &str, n: usize) -> Vec<String> {
    let mut conn = Connection::open(addr);
    (0..n)
        .map(|i| {
            let path = format!("/items/{round}-{i}");
            let (status, _) = conn.request("GET", &path, b"");
            assert_eq!(status, 200, "{path}");
            path
        })
        .collect()
}

/// Stops the agent and returns its exit line.
fn stop(mut agent: Agent) -> String {
    agent.signal(Signal::SIGINT);
    let status = agent.wait(AGENT_EXIT);
    assert!(status.success(), "agent exit: {status}");
    agent
        .stderr_lines()
        .into_iter()
        .find(|l| l.starts_with("agent: "))
        .expect("exit line")
}

/// url.path to the process.pid of its span's resource, checking that
/// every span has one.
fn paths_by_pid(receiver: &Receiver, n: usize) -> BTreeMap<String, String> {
    receiver
        .wait_for_spans(n, Duration::from_secs(30))
        .into_iter()
        .map(|s| {
            let pid = s.resource.get("process.pid").expect("process.pid").clone();
            let path = s.attr("url.path").expect("url.path").to_owned();
            (path, pid)
        })
        .collect()
}

#[test]
fn restarts_and_replicas_are_all_traced() {
    let (binary, name) = renamed_fixture("r");
    let receiver = Receiver::grpc();
    let mut agent = start_agent(&name, &receiver);
    let mut expected: BTreeMap<String, u32> = BTreeMap::new();
    let mut record = |server: &Running, paths: Vec<String>| {
        for path in paths {
            expected.insert(path, server.pid());
        }
    };

    // Two replicas at once, then a restart, then another.
    let (mut a, addr_a) = fixture::start_httpserver(&binary);
    let (mut b, addr_b) = fixture::start_httpserver(&binary);
    for server in [&a, &b] {
        agent.wait_for_stderr(
            &format!("attached to PID {}", server.pid()),
            Duration::from_secs(30),
        );
    }
    record(&a, send(addr_a, "a", 5));
    record(&b, send(addr_b, "b", 5));
    a.terminate();
    b.terminate();
    for round in ["c", "d"] {
        let (mut server, addr) = fixture::start_httpserver(&binary);
        agent.wait_for_stderr(
            &format!("attached to PID {}", server.pid()),
            Duration::from_secs(30),
        );
        record(&server, send(addr, round, 5));
        server.terminate();
        agent.wait_for_stderr(
            &format!("PID {} exited", server.pid()),
            Duration::from_secs(30),
        );
    }

    let got = paths_by_pid(&receiver, expected.len());
    let expected: BTreeMap<String, String> = expected
        .into_iter()
        .map(|(path, pid)| (path, pid.to_string()))
        .collect();
    assert_eq!(got, expected, "one span per request, from its own process");
    let pids: std::collections::BTreeSet<&String> = got.values().collect();
    assert_eq!(pids.len(), 4, "four processes: {pids:?}");
    for span in receiver.spans() {
        assert_eq!(span.resource.get("service.name"), Some(&name));
    }
    agent.signal(Signal::SIGINT);
    assert!(agent.wait(AGENT_EXIT).success());
    let lines = agent.stderr_lines();
    let exit = lines
        .iter()
        .find(|l| l.starts_with("agent: "))
        .expect("exit line");
    assert!(
        exit.starts_with("agent: 20 spans exported from 4 processes;"),
        "{exit}"
    );
    // Four processes of one executable file: analysed once.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("1 binaries analysed for 4 processes")),
        "{lines:#?}"
    );
}

#[test]
fn a_short_lived_target_is_traced_from_its_start() {
    let (binary, name) = renamed_fixture("s");
    let receiver = Receiver::grpc();
    let agent = start_agent(&name, &receiver);
    let started = Instant::now();
    // The fixture prints its address once it runs: with the agent holding
    // it at exec, only after the probes are in.
    let (mut server, addr) = fixture::start_httpserver(&binary);
    let running = Instant::now();
    let mut paths = Vec::new();
    let mut conn = Connection::open(addr);
    while running.elapsed() < Duration::from_millis(200) {
        let path = format!("/items/s-{}", paths.len());
        let (status, _) = conn.request("GET", &path, b"");
        assert_eq!(status, 200);
        paths.push(path);
    }
    server.terminate();
    eprintln!(
        "exec to running: {:?}; {} requests in 200 ms",
        running - started,
        paths.len()
    );
    let got = paths_by_pid(&receiver, paths.len());
    let pid = server.pid().to_string();
    let expected: BTreeMap<String, String> = paths.into_iter().map(|p| (p, pid.clone())).collect();
    assert_eq!(got, expected);
    let exit = stop(agent);
    assert!(exit.contains("from 1 processes"), "{exit}");
}

/// Bad selectors: one clear error line each, before anything is loaded.
#[test]
fn bad_selectors_are_one_clear_error() {
    let cases: [(&[&str], Option<&str>, &str); 3] = [
        (
            &["--exe", ""],
            None,
            "--exe: an empty pattern matches nothing",
        ),
        (
            &["--exe", "x"],
            Some("12,abc"),
            "AGENT_PID: \"abc\" is not a PID",
        ),
        (
            &["--exe", "x", "--service-name-map", "x"],
            None,
            "--service-name-map: \"x\" is not EXE=NAME",
        ),
    ];
    for (args, env_pid, message) in cases {
        let mut cmd = command();
        cmd.args(args);
        match env_pid {
            Some(value) => cmd.env("AGENT_PID", value),
            None => cmd.env_remove("AGENT_PID"),
        };
        let out = cmd.output().expect("run agent");
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines, [format!("agent: {message}")], "{args:?}");
    }
}
