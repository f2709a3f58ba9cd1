//! A request's goroutine story, exactly: `agent --pid` on the flightrec
//! fixture, `GET /story` requests whose handler makes a task with regions
//! and logs, blocks on a channel fed by a goroutine it spawns (which
//! sleeps), and sleeps in a `nanosleep` system call; then a flight-recorder
//! dump. Each request's exported tree (the HTTP server span, its task, the
//! task's regions, the logs as events, the periods its goroutines were
//! blocked or in a system call, and its `goroutine time` breakdown) is
//! asserted whole, trace ids included; a request with an incoming
//! `traceparent` carries the caller's trace id all the way down.

mod support;
use support::agent::AGENT_EXIT;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use support::{
    agent::{Agent, command},
    fixture,
    http_client::Connection,
    otlp::{FlatSpan, flatten, hex, value_to_string},
};

/// Periods at least this long are spans (`--period-min`): well above the
/// runnable waits of a quiet request, well below the 20 and 15 ms the
/// handler blocks and sleeps.
const PERIOD_MIN: &str = "5ms";
const PERIOD_MIN_NS: u64 = 5_000_000;
const WAIT_MS: u64 = 20;
const SLEEP_MS: u64 = 15;

/// Runs the fixture under the agent, sends `/story` for each `(id,
/// traceparent)`, dumps the flight recorder, and returns every span.
fn story_run(requests: &[(&str, Option<&str>)]) -> Vec<FlatSpan> {
    let binary = fixture::build("flightrec", &[]);
    let (server, addr) = fixture::start_httpserver(&binary);
    let dir = tempfile::tempdir().expect("tempdir");
    let jsonl = dir.path().join("spans.jsonl");
    let mut cmd = command();
    cmd.args(["--pid", &server.pid().to_string()])
        .arg(format!("--output=jsonl={}", jsonl.display()))
        .arg(format!("--period-min={PERIOD_MIN}"));
    let mut agent = Agent::start(cmd);
    agent.wait_for_stderr("flight recorder:", Duration::from_secs(60));
    agent.wait_attached();

    let mut conn = Connection::open(addr);
    for (id, traceparent) in requests {
        let path = format!("/story?id={id}&wait={WAIT_MS}ms&sleep={SLEEP_MS}ms");
        let headers: Vec<(&str, &str)> =
            traceparent.iter().map(|tp| ("traceparent", *tp)).collect();
        let (status, body) = conn.request_with("GET", &path, &headers, b"");
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
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

    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&jsonl)
        .unwrap_or_default()
        .contains("\"goroutine time\"")
    {
        assert!(Instant::now() < deadline, "no breakdown spans within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait(AGENT_EXIT).success());
    let requests: Vec<ExportTraceServiceRequest> = std::fs::read_to_string(&jsonl)
        .expect("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("OTLP JSON"))
        .collect();
    flatten(requests.iter())
}

/// The `GET /story` server spans, in the order the requests were sent.
fn story_requests(spans: &[FlatSpan]) -> Vec<&FlatSpan> {
    let mut v: Vec<&FlatSpan> = spans
        .iter()
        .filter(|s| s.scope == "agent/net/http" && s.span.name == "GET /story")
        .collect();
    v.sort_by_key(|s| s.span.start_time_unix_nano);
    v
}

fn children<'a>(spans: &'a [FlatSpan], parent: &FlatSpan) -> Vec<&'a FlatSpan> {
    let mut v: Vec<&FlatSpan> = spans
        .iter()
        .filter(|s| {
            s.span.parent_span_id == parent.span.span_id && !s.span.parent_span_id.is_empty()
        })
        .collect();
    v.sort_by(|a, b| {
        (a.span.name.as_str(), a.span.start_time_unix_nano)
            .cmp(&(b.span.name.as_str(), b.span.start_time_unix_nano))
    });
    v
}

fn event_line(e: &opentelemetry_proto::tonic::trace::v1::span::Event) -> String {
    let attr = |k: &str| {
        e.attributes
            .iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.as_ref())
            .map(value_to_string)
    };
    match attr("go.log.message") {
        Some(m) => format!("{}={m}", e.name),
        None => format!(
            "{}({})",
            e.name,
            attr("go.block.reason").unwrap_or_default()
        ),
    }
}

/// One line per span of the tree under `node`, indented by depth: name,
/// kind, goroutine role (`handler` for the request's goroutine, `spawned`
/// for the one it created), events. `runnable` periods (a goroutine waiting
/// for a CPU at least `PERIOD_MIN` long: rare on a quiet machine, not
/// something the handler does) are checked (inside their parent, at least
/// `PERIOD_MIN`) and left out of the picture.
fn render(
    spans: &[FlatSpan],
    node: &FlatSpan,
    roles: &BTreeMap<String, &'static str>,
    trace_id: &str,
    depth: usize,
    out: &mut Vec<String>,
) {
    assert_eq!(hex(&node.span.trace_id), trace_id, "{}", node.span.name);
    let kind = node.attr("trace.event.kind").unwrap_or("http");
    let role = node
        .attr("goroutine.id")
        .map(|g| roles.get(g).copied().unwrap_or("other"))
        .unwrap_or("-");
    let events: Vec<String> = node.span.events.iter().map(event_line).collect();
    out.push(format!(
        "{}{} [{kind}, {role}] {}",
        "  ".repeat(depth),
        node.span.name,
        events.join(" ")
    ));
    for child in children(spans, node) {
        assert!(
            child.span.start_time_unix_nano >= node.span.start_time_unix_nano
                && child.span.end_time_unix_nano <= node.span.end_time_unix_nano,
            "{} within {}",
            child.span.name,
            node.span.name
        );
        if child.span.name == "runnable" {
            assert_eq!(child.attr("go.period.state"), Some("runnable"));
            assert!(child.duration().as_nanos() as u64 >= PERIOD_MIN_NS);
            continue;
        }
        render(spans, child, roles, trace_id, depth + 1, out);
    }
}

fn find<'a>(spans: &'a [FlatSpan], root: &FlatSpan, path: &[&str]) -> &'a FlatSpan {
    let mut node = spans
        .iter()
        .find(|s| s.span.span_id == root.span.span_id)
        .expect("root");
    for name in path {
        node = children(spans, node)
            .into_iter()
            .find(|c| c.span.name == *name)
            .unwrap_or_else(|| panic!("no {name} under {}", node.span.name));
    }
    node
}

fn frames(s: &FlatSpan) -> &str {
    s.attr("code.stacktrace.frames").unwrap_or_default()
}

fn int_attr(s: &FlatSpan, key: &str) -> u64 {
    s.attr(key)
        .unwrap_or_else(|| panic!("{}: no {key}", s.span.name))
        .parse()
        .expect("integer")
}

/// Asserts the tree of one `/story` request exactly, and its times.
fn assert_story_tree(spans: &[FlatSpan], request: &FlatSpan, id: &str) {
    let trace_id = hex(&request.span.trace_id);
    let handler = request
        .attr("goroutine.id")
        .expect("goroutine.id")
        .to_owned();
    let breakdown = find(spans, request, &["goroutine time"]);
    let ids = breakdown.attr("go.goroutine.ids").expect("goroutine ids");
    let ids: Vec<&str> = ids.trim_matches(['[', ']']).split(',').collect();
    assert_eq!(
        ids.len(),
        2,
        "{id}: the handler and the goroutine it spawned: {ids:?}"
    );
    assert!(ids.contains(&handler.as_str()), "{id}: {ids:?}");
    let spawned = ids
        .iter()
        .find(|g| **g != handler)
        .expect("spawned")
        .to_string();
    let roles: BTreeMap<String, &'static str> =
        [(handler.clone(), "handler"), (spawned, "spawned")].into();

    let mut lines = Vec::new();
    render(spans, request, &roles, &trace_id, 0, &mut lines);
    let expected = [
        "GET /story [http, handler] ".to_owned(),
        "  blocked: sleep [period, spawned] ".to_owned(),
        "  goroutine time [breakdown, handler] ".to_owned(),
        format!("  story [task, handler] id={id} done={id}"),
        "    sleep [region, handler] ".to_owned(),
        "      syscall [period, handler] ".to_owned(),
        format!(
            "    wait [region, handler] goroutine.block(chan receive) goroutine.unblock(chan receive) waited={id}"
        ),
        "      blocked: chan receive [period, handler] ".to_owned(),
    ];
    assert_eq!(lines, expected, "{id}: the request's tree");

    // The periods: how long, why, where, woken by whom.
    let wait = WAIT_MS * 1_000_000;
    let sleep = SLEEP_MS * 1_000_000;
    let chan = find(spans, request, &["story", "wait", "blocked: chan receive"]);
    assert_eq!(chan.attr("go.period.state"), Some("blocked"));
    assert_eq!(chan.attr("go.block.reason"), Some("chan receive"));
    assert!(
        frames(chan).contains("main.story.func1 "),
        "{id}: {}",
        frames(chan)
    );
    assert!(
        chan.duration().as_nanos() as u64 >= wait * 3 / 4,
        "{id}: {:?}",
        chan.duration()
    );
    let spawned_g = roles
        .iter()
        .find(|(_, r)| **r == "spawned")
        .map(|(g, _)| g.as_str());
    assert_eq!(chan.attr("go.unblocked_by.goroutine.id"), spawned_g, "{id}");
    let slept = find(spans, request, &["blocked: sleep"]);
    assert_eq!(slept.attr("go.block.reason"), Some("sleep"));
    assert!(
        frames(slept).contains("main.story.func1.1 "),
        "{id}: {}",
        frames(slept)
    );
    assert!(slept.duration().as_nanos() as u64 >= wait * 3 / 4, "{id}");
    let syscall = find(spans, request, &["story", "sleep", "syscall"]);
    assert_eq!(syscall.attr("go.period.state"), Some("syscall"));
    assert!(
        frames(syscall).contains("syscall.Nanosleep "),
        "{id}: {}",
        frames(syscall)
    );
    assert!(
        syscall.duration().as_nanos() as u64 >= sleep * 3 / 4,
        "{id}"
    );
    for p in [chan, slept, syscall] {
        assert!(
            p.attr("go.trace.truncated").is_none(),
            "{id}: {}",
            p.span.name
        );
    }

    // The sums: the breakdown over both goroutines, the task over its own.
    let block_chan = int_attr(breakdown, "go.block.ns.chan_receive");
    let block_sleep = int_attr(breakdown, "go.block.ns.sleep");
    assert!(block_chan >= chan.duration().as_nanos() as u64, "{id}");
    assert!(block_sleep >= slept.duration().as_nanos() as u64, "{id}");
    let reasons: u64 = breakdown
        .attributes
        .iter()
        .filter(|(k, _)| k.starts_with("go.block.ns."))
        .map(|(_, v)| v.parse::<u64>().expect("ns"))
        .sum();
    assert_eq!(int_attr(breakdown, "go.block.ns"), reasons, "{id}");
    assert!(int_attr(breakdown, "go.syscall.ns") >= syscall.duration().as_nanos() as u64);
    let exported = spans
        .iter()
        .filter(|s| s.attr("trace.event.kind") == Some("period"))
        .filter(|s| hex(&s.span.trace_id) == trace_id)
        .count() as u64;
    assert_eq!(int_attr(breakdown, "go.periods.exported"), exported, "{id}");
    assert_eq!(int_attr(breakdown, "go.goroutines"), 2);
    assert!(
        breakdown.span.start_time_unix_nano == request.span.start_time_unix_nano
            && breakdown.span.end_time_unix_nano == request.span.end_time_unix_nano,
        "{id}: the breakdown covers the request"
    );
    let task = find(spans, request, &["story"]);
    assert!(int_attr(task, "go.block.ns.chan_receive") >= chan.duration().as_nanos() as u64);
    assert!(
        task.attr("go.block.ns.sleep").is_none(),
        "{id}: the task's own goroutine only"
    );
    assert!(int_attr(task, "go.syscall.ns") >= syscall.duration().as_nanos() as u64);
    assert!(int_attr(task, "go.syscall.ns") <= int_attr(breakdown, "go.syscall.ns"));
}

#[test]
fn each_request_tree_is_exported_exactly() {
    let ids = ["a", "b", "c"];
    let reqs: Vec<(&str, Option<&str>)> = ids.iter().map(|id| (*id, None)).collect();
    let spans = story_run(&reqs);
    let requests = story_requests(&spans);
    assert_eq!(requests.len(), 3);
    let mut traces = std::collections::BTreeSet::new();
    for (request, id) in requests.iter().zip(ids) {
        assert!(
            request.span.parent_span_id.is_empty(),
            "a root: no traceparent"
        );
        assert_story_tree(&spans, request, id);
        traces.insert(hex(&request.span.trace_id));
    }
    assert_eq!(traces.len(), 3, "one trace per request");
    // Every span of the dump a request's tree does not hold is outside the
    // three traces (the /dump request, the runtime's own ranges).
    for s in spans
        .iter()
        .filter(|s| s.attr("flight_recorder.dump.id").is_some())
    {
        let t = hex(&s.span.trace_id);
        if traces.contains(&t) {
            let mut node = s;
            while !node.span.parent_span_id.is_empty() {
                node = spans
                    .iter()
                    .find(|p| p.span.span_id == node.span.parent_span_id)
                    .unwrap_or_else(|| panic!("{}: parent not exported", s.span.name));
            }
            assert_eq!(node.span.name, "GET /story", "{}", s.span.name);
        }
    }
}

#[test]
fn incoming_traceparent_reaches_the_task_spans() {
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{caller_trace}-{caller_span}-01");
    let spans = story_run(&[("t", Some(&traceparent))]);
    let requests = story_requests(&spans);
    assert_eq!(requests.len(), 1);
    let request = requests[0];
    assert_eq!(hex(&request.span.trace_id), caller_trace);
    assert_eq!(hex(&request.span.parent_span_id), caller_span);
    assert_story_tree(&spans, request, "t");
    let task = find(&spans, request, &["story"]);
    assert_eq!(hex(&task.span.trace_id), caller_trace);
    assert_eq!(hex(&task.span.parent_span_id), hex(&request.span.span_id));
}
