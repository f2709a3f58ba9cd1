//! Host mode's shared eBPF object, as root: Go HTTP servers built from
//! source, of two executables, traced at once by one agent with one loaded
//! object, one ring buffer and one export pipeline. Every span must carry
//! its own process's resource (`process.pid`, `service.name`), and each
//! process's counts (its exit line) must be exactly its own requests, also
//! for one that exits while the others run on and one started after it.
//! The same scenario with `--object-per-target` (an object, ring and
//! pipeline per process: the benchmarks' baseline) gives the same spans.

mod support;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::signal::Signal;
use support::{
    agent::{AGENT_EXIT, Agent, command},
    fixture::{self, Running},
    http_client::Connection,
    otlp::Receiver,
};

/// The httpserver fixture under a name of this test's own (15 bytes at
/// most, the kernel's `comm`), so that no other program matches `--exe`.
fn renamed_fixture(tag: &str) -> (PathBuf, String) {
    let name = format!("so{tag}{}", std::process::id());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shared_object");
    std::fs::create_dir_all(&dir).expect("create dir");
    let path = dir.join(&name);
    std::fs::copy(fixture::build("httpserver", &[]), &path).expect("copy fixture");
    (path, name)
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

/// One server: its process, the service name it must be exported under
/// and the paths it was sent.
struct Server {
    running: Running,
    service: String,
    paths: Vec<String>,
}

/// Starts a server of `binary` and waits until the agent says it is
/// attached; returns the attach line.
fn start(agent: &mut Agent, binary: &Path, service: &str) -> (Server, SocketAddr, String) {
    let (running, addr) = fixture::start_httpserver(binary);
    let line = agent.wait_for_stderr(
        &format!("attached to PID {} ", running.pid()),
        Duration::from_secs(60),
    );
    let server = Server {
        running,
        service: service.to_owned(),
        paths: Vec::new(),
    };
    (server, addr, line)
}

/// The slot an attach line names.
fn slot_of(line: &str) -> &str {
    line.rsplit("(slot ")
        .next()
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("no slot in {line}"))
}

fn scenario(per_target: bool) {
    let tag = if per_target { "p" } else { "s" };
    let (binary_a, name_a) = renamed_fixture(&format!("{tag}a"));
    let (binary_b, name_b) = renamed_fixture(&format!("{tag}b"));
    let receiver = Receiver::grpc();
    let summary = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("shared_object")
        .join(format!("summary-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&summary);
    let mut cmd = command();
    cmd.args(["--exe", &name_a, "--exe", &name_b])
        .args(["--service-name-map", &format!("{name_a}=svc-a")])
        .args(["--service-name-map", &format!("{name_b}=svc-b")])
        .args([
            "--otlp-endpoint",
            &receiver.url(),
            "--otlp-protocol",
            "grpc",
        ])
        .arg("--summary-file")
        .arg(&summary);
    if per_target {
        cmd.arg("--object-per-target");
    }
    let mut agent = Agent::start(cmd);
    agent.wait_for_stderr("watching for new processes", Duration::from_secs(60));

    // Three replicas of one executable and one of another, at once.
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    let mut lines = Vec::new();
    for (binary, service) in [
        (&binary_a, "svc-a"),
        (&binary_a, "svc-a"),
        (&binary_b, "svc-b"),
        (&binary_a, "svc-a"),
    ] {
        let (server, addr, line) = start(&mut agent, binary, service);
        servers.push(server);
        addrs.push(addr);
        lines.push(line);
    }
    for line in &lines {
        assert_eq!(line.contains("of the shared object"), !per_target, "{line}");
    }
    if !per_target {
        // Four slots of one object, none shared by two live processes.
        let mut slots: Vec<&str> = lines.iter().map(String::as_str).map(slot_of).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), 4, "{lines:#?}");
    }
    // A different number of requests each, interleaved.
    for round in 0..5 {
        for (i, server) in servers.iter_mut().enumerate() {
            if round <= i + 1 {
                let paths = send(addrs[i], &format!("{tag}{i}r{round}"), 1);
                server.paths.extend(paths);
            }
        }
    }
    // The first exits while the others run on; its count is its own.
    servers[0].running.terminate();
    let first = servers[0].running.pid();
    let exited = agent.wait_for_stderr(
        &format!("PID {first} ({}): ", binary_a.display()),
        Duration::from_secs(60),
    );
    assert!(
        exited.contains(&format!(": {} spans exported;", servers[0].paths.len())),
        "{exited}"
    );
    // A fifth starts after it: in its slot, free again (the lowest) once
    // its uprobes are gone.
    if !per_target {
        agent.wait_for_stderr(
            &format!(
                "slot {} of the shared object free again",
                slot_of(&lines[0])
            ),
            Duration::from_secs(60),
        );
    }
    let (mut fifth, addr, line) = start(&mut agent, &binary_a, "svc-a");
    if !per_target {
        assert_eq!(slot_of(&line), slot_of(&lines[0]), "{line}");
    }
    fifth.paths = send(addr, &format!("{tag}late"), 6);
    servers.push(fifth);

    let total: usize = servers.iter().map(|s| s.paths.len()).sum();
    let spans = receiver.wait_for_spans(total, Duration::from_secs(30));
    assert_eq!(spans.len(), total, "one span per request");
    let mut expected: BTreeMap<String, (String, String)> = BTreeMap::new();
    for server in &servers {
        for path in &server.paths {
            expected.insert(
                path.clone(),
                (server.running.pid().to_string(), server.service.clone()),
            );
        }
    }
    let got: BTreeMap<String, (String, String)> = spans
        .iter()
        .map(|s| {
            let path = s.attr("url.path").expect("url.path").to_owned();
            let pid = s.resource.get("process.pid").expect("process.pid").clone();
            let service = s
                .resource
                .get("service.name")
                .expect("service.name")
                .clone();
            (path, (pid, service))
        })
        .collect();
    assert_eq!(got, expected, "each span under its own process's resource");

    for server in &mut servers[1..] {
        server.running.terminate();
    }
    agent.signal(Signal::SIGINT);
    assert!(agent.wait(AGENT_EXIT).success());
    let lines = agent.stderr_lines();
    if per_target {
        // Each session detaches on the thread that runs its pipeline: on a
        // loaded machine an export the collector took can time out meanwhile
        // (counted as failed). The spans above are what this baseline is
        // held to; exact counts are the shared object's.
        assert!(
            lines.iter().any(|l| l.starts_with("agent: ")
                && l.contains(&format!("from {} processes", servers.len()))),
            "{lines:#?}"
        );
        return;
    }
    // Each process's own exit line counts exactly its requests.
    for server in &servers {
        let pid = server.running.pid();
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("PID {pid} (")) && l.contains("spans exported"))
            .unwrap_or_else(|| panic!("no exit line for PID {pid}: {lines:#?}"));
        assert!(
            line.contains(&format!(": {} spans exported;", server.paths.len())),
            "PID {pid} was sent {} requests: {line}",
            server.paths.len()
        );
    }
    let exit = lines
        .iter()
        .find(|l| l.starts_with("agent: "))
        .expect("exit line");
    assert!(
        exit.starts_with(&format!(
            "agent: {total} spans exported from {} processes;",
            servers.len()
        )),
        "{exit}"
    );
    let summary = std::fs::read_to_string(&summary).expect("summary file");
    let value = |key: &str| {
        summary
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {summary}"))
            .to_owned()
    };
    assert_eq!(value("targets"), servers.len().to_string(), "{summary}");
    assert_eq!(value("spans_exported"), total.to_string(), "{summary}");
    for loss in [
        "ringbuf_full",
        "bad_records",
        "unmatched_ends",
        "requests_lost",
        "dropped_queue_full",
        "dropped_export_failed",
    ] {
        assert_eq!(value(loss), "0", "{loss}: {summary}");
    }
}

#[test]
fn targets_share_one_object_each_under_its_own_resource_with_its_own_counts() {
    scenario(false);
}

#[test]
fn an_object_per_target_gives_the_same_spans() {
    scenario(true);
}

/// A program whose tracing needs an object of its own (the flight
/// recorder's dumps come through a ring of their own) gets one, beside
/// the shared object's targets, under one agent and one exit line.
#[test]
fn a_target_that_cannot_share_gets_an_object_of_its_own() {
    let (server_binary, server_name) = renamed_fixture("mh");
    let recorder_name = format!("somf{}", std::process::id());
    let recorder_binary = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("shared_object")
        .join(&recorder_name);
    std::fs::copy(fixture::build("flightrec", &[]), &recorder_binary).expect("copy fixture");
    let receiver = Receiver::grpc();
    let mut cmd = command();
    cmd.args(["--exe", &server_name, "--exe", &recorder_name])
        .args([
            "--otlp-endpoint",
            &receiver.url(),
            "--otlp-protocol",
            "grpc",
        ]);
    let mut agent = Agent::start(cmd);
    agent.wait_for_stderr("watching for new processes", Duration::from_secs(60));
    let (mut recorder, recorder_addr, recorder_line) =
        start(&mut agent, &recorder_binary, &recorder_name);
    let (mut server, server_addr, server_line) = start(&mut agent, &server_binary, &server_name);
    assert!(
        !recorder_line.contains("shared object") && recorder_line.contains("flight-recorder"),
        "{recorder_line}"
    );
    assert!(
        server_line.contains("of the shared object"),
        "{server_line}"
    );
    let mut conn = Connection::open(recorder_addr);
    let (status, _) = conn.request("GET", "/work?id=mixed&spin=1", b"");
    assert_eq!(status, 200);
    recorder.paths.push("/work".to_owned());
    server.paths = send(server_addr, "mixed", 2);

    let spans = receiver.wait_for_spans(3, Duration::from_secs(30));
    for (who, pid, name) in [
        (&recorder, recorder.running.pid(), &recorder_name),
        (&server, server.running.pid(), &server_name),
    ] {
        let mut paths: Vec<&str> = spans
            .iter()
            .filter(|s| s.resource.get("process.pid") == Some(&pid.to_string()))
            .inspect(|s| assert_eq!(s.resource.get("service.name"), Some(name)))
            .filter_map(|s| s.attr("url.path"))
            .collect();
        paths.sort_unstable();
        let mut expected: Vec<&str> = who.paths.iter().map(String::as_str).collect();
        expected.sort_unstable();
        assert_eq!(paths, expected, "spans of PID {pid}");
    }
    recorder.running.terminate();
    server.running.terminate();
    agent.signal(Signal::SIGINT);
    assert!(agent.wait(AGENT_EXIT).success());
    let lines = agent.stderr_lines();
    let exit = lines
        .iter()
        .find(|l| l.starts_with("agent: "))
        .expect("exit line");
    assert!(exit.contains(" from 2 processes;"), "{exit}");
}
