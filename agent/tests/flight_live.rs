//! The live agent catches a flight-recorder dump as it happens: `agent --pid`
//! on a Go 1.25+ server that dumps its runtime/trace.FlightRecorder on
//! request. The dump's spans and the server's HTTP spans come out of one
//! pipeline with one resource, and `--save-dumps` keeps the exact bytes.

mod support;
use support::agent::AGENT_EXIT;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use support::{
    agent::{Agent, command},
    fixture,
    http_client::Connection,
    otlp::flatten,
};

#[test]
fn live_agent_exports_a_dump_beside_the_http_spans() {
    let binary = fixture::build("flightrec", &[]);
    let (server, addr) = fixture::start_httpserver(&binary);
    let dir = tempfile::tempdir().expect("tempdir");
    let saved = dir.path().join("saved");
    std::fs::create_dir(&saved).expect("mkdir");
    let jsonl = dir.path().join("spans.jsonl");
    let mut cmd = command();
    cmd.args(["--pid", &server.pid().to_string()])
        .arg(format!("--output=jsonl={}", jsonl.display()))
        .arg("--save-dumps")
        .arg(&saved);
    let mut agent = Agent::start(cmd);
    agent.wait_for_stderr("flight recorder:", Duration::from_secs(60));
    agent.wait_attached();

    let mut conn = Connection::open(addr);
    for id in ["a", "b", "c"] {
        let (status, _) = conn.request("GET", &format!("/work?id={id}&spin=2000"), b"");
        assert_eq!(status, 200);
    }
    let program_copy = dir.path().join("dump.trace");
    let (status, body) = conn.request(
        "GET",
        &format!("/dump?to=file&path={}", program_copy.display()),
        b"",
    );
    assert_eq!(status, 200);
    let body = String::from_utf8_lossy(&body).into_owned();
    assert!(body.ends_with("err=<nil>"), "{body}");

    // Spans of the dump arrive once it is decoded.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&jsonl)
        .unwrap_or_default()
        .contains("flight_recorder.dump.id")
    {
        assert!(Instant::now() < deadline, "no dump spans within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait(AGENT_EXIT).success());
    let summary = agent.wait_for_stderr("spans exported", Duration::from_secs(1));
    assert!(
        summary.contains("flight-recorder dumps: 1 (1 complete, 0 incomplete"),
        "{summary}"
    );

    // The saved copy is byte-identical to what the program wrote.
    let written = std::fs::read(&program_copy).expect("the program's dump");
    let files: Vec<_> = std::fs::read_dir(&saved)
        .expect("saved dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0]
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    assert!(
        name.ends_with(".trace") && !name.contains("incomplete"),
        "{name}"
    );
    assert_eq!(std::fs::read(&files[0]).expect("saved dump"), written);

    let requests: Vec<ExportTraceServiceRequest> = std::fs::read_to_string(&jsonl)
        .expect("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("OTLP JSON"))
        .collect();
    let spans = flatten(requests.iter());
    let dump_spans: Vec<_> = spans
        .iter()
        .filter(|s| s.attr("flight_recorder.dump.id").is_some())
        .collect();
    let size = written.len().to_string();
    for s in &dump_spans {
        assert_eq!(s.attr("flight_recorder.dump.size"), Some(size.as_str()));
        assert_eq!(s.attr("flight_recorder.dump.complete"), Some("true"));
    }
    let work_tasks = dump_spans
        .iter()
        .filter(|s| s.span.name == "work" && s.attr("trace.event.kind") == Some("task"))
        .count();
    assert!(
        work_tasks >= 3,
        "the three /work tasks are in the dump: {work_tasks}"
    );
    let http: Vec<_> = spans
        .iter()
        .filter(|s| s.scope == "agent/net/http")
        .map(|s| s.span.name.as_str())
        .collect();
    assert_eq!(
        http.iter().filter(|n| **n == "GET /work").count(),
        3,
        "{http:?}"
    );
    assert_eq!(
        http.iter().filter(|n| **n == "GET /dump").count(),
        1,
        "{http:?}"
    );
    // One process, one resource for both.
    let pid = server.pid().to_string();
    for s in &spans {
        assert_eq!(s.resource.get("process.pid"), Some(&pid));
        assert_eq!(
            s.resource.get("service.name").map(String::as_str),
            Some("flightrec")
        );
    }
}
