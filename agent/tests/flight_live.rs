//! The live agent catches a flight-recorder dump as it happens: `agent --pid`
//! on a Go 1.25+ server that dumps its runtime/trace.FlightRecorder on
//! request. The dump's spans and the server's HTTP spans come out of one
//! pipeline with one resource, and `--save-dumps` keeps the exact bytes. The
//! tasks the handlers made are children of their requests' HTTP spans, in
//! the live capture and in `agent decode --join` of the saved dump.

mod support;
use support::agent::AGENT_EXIT;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use support::{
    agent::{Agent, command},
    fixture,
    http_client::Connection,
    otlp::{FlatSpan, flatten, hex},
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
    // The dump captured live joins the requests the agent traced: each task
    // is its request's child, in its trace.
    let http_refs: Vec<&FlatSpan> = spans
        .iter()
        .filter(|s| s.scope == "agent/net/http")
        .collect();
    assert_tasks_joined(&spans, &http_refs, "live capture");

    // The same dump decoded later with the live spans (`agent decode
    // --join`): the same join.
    let joined = dir.path().join("joined.jsonl");
    decode_with_join(&program_copy, &jsonl, &joined);
    let joined_requests: Vec<ExportTraceServiceRequest> = std::fs::read_to_string(&joined)
        .expect("joined jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("OTLP JSON"))
        .collect();
    let joined_spans = flatten(joined_requests.iter());
    assert_tasks_joined(&joined_spans, &http_refs, "agent decode --join");

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

/// The `work` task spans of `spans` joined to the `GET /work` request spans
/// they were created in: each task is the child of its request's span, in
/// its trace, and its regions follow it. Requests are matched to tasks by
/// the task's `id` log (the requests went out a, b, c in order).
fn assert_tasks_joined(spans: &[FlatSpan], http: &[&FlatSpan], what: &str) {
    let mut requests: Vec<&&FlatSpan> =
        http.iter().filter(|s| s.span.name == "GET /work").collect();
    requests.sort_by_key(|s| s.span.start_time_unix_nano);
    assert_eq!(requests.len(), 3, "{what}");
    let tasks: Vec<&FlatSpan> = spans
        .iter()
        .filter(|s| s.span.name == "work" && s.attr("trace.event.kind") == Some("task"))
        .collect();
    assert_eq!(tasks.len(), 3, "{what}: the three /work tasks");
    for (request, id) in requests.iter().zip(["a", "b", "c"]) {
        let task = tasks
            .iter()
            .find(|t| {
                t.span.events.iter().any(|e| {
                    e.attributes.iter().any(|kv| {
                        kv.key == "go.log.message"
                            && kv
                                .value
                                .as_ref()
                                .map(support::otlp::value_to_string)
                                .as_deref()
                                == Some(id)
                    })
                })
            })
            .unwrap_or_else(|| panic!("{what}: no task logged id {id}"));
        assert_eq!(
            hex(&task.span.trace_id),
            hex(&request.span.trace_id),
            "{what}: task {id} in its request's trace"
        );
        assert_eq!(
            hex(&task.span.parent_span_id),
            hex(&request.span.span_id),
            "{what}: task {id} is its request's child"
        );
        assert_eq!(task.attr("goroutine.id"), request.attr("goroutine.id"));
        assert!(
            task.span.start_time_unix_nano >= request.span.start_time_unix_nano
                && task.span.end_time_unix_nano <= request.span.end_time_unix_nano,
            "{what}: task {id} within its request"
        );
        // Its regions: parse and compute under the task, inner under compute.
        let children = |parent: &FlatSpan| -> Vec<String> {
            let mut v: Vec<String> = spans
                .iter()
                .filter(|s| s.span.parent_span_id == parent.span.span_id)
                .filter(|s| s.attr("trace.event.kind") == Some("region"))
                .map(|s| {
                    assert_eq!(s.span.trace_id, request.span.trace_id, "{what}");
                    s.span.name.clone()
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(children(task), ["compute", "parse"], "{what}: task {id}");
        let compute = spans
            .iter()
            .find(|s| s.span.name == "compute" && s.span.parent_span_id == task.span.span_id)
            .expect("compute");
        assert_eq!(children(compute), ["inner"], "{what}: task {id}");
    }
}

/// `agent decode --join SPANS.jsonl` on a dump of a traced server: the tasks
/// its handlers made join the HTTP spans the live agent exported.
fn decode_with_join(dump: &std::path::Path, live_jsonl: &std::path::Path, out: &std::path::Path) {
    let output = command()
        .arg("decode")
        .arg(dump)
        .arg("--join")
        .arg(live_jsonl)
        .arg(format!("--output=jsonl={}", out.display()))
        .env("AGENT_LOG", "info")
        .output()
        .expect("running agent decode --join");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "agent decode --join: {stderr}");
    assert!(
        stderr.contains("joined to the agent's spans"),
        "the summary says how many joined: {stderr}"
    );
}
