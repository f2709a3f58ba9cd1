//! `--dump-on-slow`: a slow request makes the agent ask the program for a
//! flight-recorder dump (the flightrec fixture writes one on SIGUSR1), the
//! dump is captured through the ordinary capture path, and the slow
//! request's goroutine time is in it, joined to its span. A second slow
//! request within `--dump-interval` is counted, not acted on; fast requests
//! never ask.

mod support;
use support::agent::AGENT_EXIT;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use support::{
    agent::{Agent, command},
    fixture,
    http_client::Connection,
    otlp::{flatten, hex},
};

#[test]
fn a_slow_request_asks_for_a_dump_once_per_interval() {
    let binary = fixture::build("flightrec", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let dumps = dir.path().join("dumps");
    std::fs::create_dir(&dumps).expect("mkdir");
    let signal_dir = format!("-dump-signal-dir={}", dumps.display());
    let (server, addr) = fixture::start_httpserver_with(&binary, &[&signal_dir]);
    let jsonl = dir.path().join("spans.jsonl");
    let summary_file = dir.path().join("summary.txt");
    let mut cmd = command();
    cmd.args(["--pid", &server.pid().to_string()])
        .arg(format!("--output=jsonl={}", jsonl.display()))
        .arg(format!("--summary-file={}", summary_file.display()))
        .args(["--dump-on-slow", "80ms", "--dump-signal", "SIGUSR1"])
        .args(["--dump-interval", "60s", "--period-min", "5ms"]);
    let mut agent = Agent::start(cmd);
    agent.wait_for_stderr("flight recorder:", Duration::from_secs(60));
    agent.wait_attached();

    let mut conn = Connection::open(addr);
    // Fast requests: no dump.
    for _ in 0..3 {
        let (status, _) = conn.request("GET", "/slow?d=1ms", b"");
        assert_eq!(status, 200);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_dir(&dumps).expect("dumps").count(), 0);

    // A slow one: the program is signalled and writes its recorder.
    let (status, _) = conn.request("GET", "/slow?d=150ms", b"");
    assert_eq!(status, 200);
    let written = dumps.join("dump-1.trace");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::metadata(&written).is_ok_and(|m| m.len() > 0) {
        assert!(Instant::now() < deadline, "no dump written within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its spans come through the capture.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&jsonl)
        .unwrap_or_default()
        .contains("\"goroutine time\"")
    {
        assert!(Instant::now() < deadline, "no dump spans within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A second slow request within the interval: counted, no dump.
    let (status, _) = conn.request("GET", "/slow?d=150ms", b"");
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(800));

    agent.signal(Signal::SIGTERM);
    assert!(agent.wait(AGENT_EXIT).success());
    let exit = agent.wait_for_stderr("spans exported", Duration::from_secs(1));
    assert!(
        exit.contains("flight-recorder dumps: 1 (1 complete, 0 incomplete")
            && exit.contains(
                "dump on slow: 2 slow requests, 1 dumps asked for, 1 within the interval, 0 failed"
            ),
        "{exit}"
    );
    let names: Vec<String> = std::fs::read_dir(&dumps)
        .expect("dumps")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["dump-1.trace"], "one dump only");
    let summary = std::fs::read_to_string(&summary_file).expect("summary file");
    for line in [
        "dump_on_slow_requests=2",
        "dump_on_slow_asked=1",
        "dump_on_slow_rate_limited=1",
        "dump_on_slow_failed=0",
        "flight_dumps_complete=1",
    ] {
        assert!(summary.lines().any(|l| l == line), "{line} in {summary}");
    }

    // The slow request's story is in the dump, under its span.
    let requests: Vec<ExportTraceServiceRequest> = std::fs::read_to_string(&jsonl)
        .expect("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("OTLP JSON"))
        .collect();
    let spans = flatten(requests.iter());
    let mut slow: Vec<_> = spans
        .iter()
        .filter(|s| s.scope == "agent/net/http" && s.span.name == "GET /slow")
        .filter(|s| s.duration() >= Duration::from_millis(80))
        .collect();
    slow.sort_by_key(|s| s.span.start_time_unix_nano);
    assert_eq!(slow.len(), 2, "two slow requests");
    let first = slow[0];
    let under: Vec<_> = spans
        .iter()
        .filter(|s| s.span.parent_span_id == first.span.span_id)
        .collect();
    let mut names: Vec<&str> = under.iter().map(|s| s.span.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["blocked: sleep", "goroutine time"], "{names:?}");
    for s in &under {
        assert_eq!(hex(&s.span.trace_id), hex(&first.span.trace_id));
        assert!(s.attr("flight_recorder.dump.id").is_some());
    }
    let blocked = under
        .iter()
        .find(|s| s.span.name == "blocked: sleep")
        .expect("blocked");
    assert!(
        blocked.duration() >= Duration::from_millis(140),
        "{:?}",
        blocked.duration()
    );
    assert_eq!(blocked.attr("goroutine.id"), first.attr("goroutine.id"));
}
