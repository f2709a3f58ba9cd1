//! End to end, as root: W3C trace context into outgoing requests
//! (`--propagate`) under this kernel's lockdown (no memory writes).
//!
//! Two Go services (`fixtures/propagate`), each traced by an agent of its
//! own with `--pid`, each exporting over OTLP gRPC to a receiver of its own:
//! the front's `GET /front` calls the back's `GET /work` over HTTP/1.1, and
//! the back's handler calls its own `GET /leaf`. The back answers with the
//! exact bytes its `/work` request came with, so the test sees what went
//! over the wire.
//!
//! With `--propagate`: one trace of five spans across both services, with
//! the parents of the tree below, the `traceparent` line on the wire naming
//! the front's CLIENT span; an incoming `traceparent` keeps the caller's
//! trace through both services; a request the program sends with its own
//! `Traceparent` goes out as it was. Without it: the bytes are those the
//! program sends untraced, byte for byte. With the front sampling a
//! quarter of its traces: every call carries the decision, and each trace
//! is exported whole by both agents or not at all. One agent that finds
//! both services by their executable (`--exe`) makes the same trace.
//!
//! ```text
//! front  GET /front   SERVER  (parent: the incoming traceparent, if any)
//! front  GET .../work CLIENT  child of front SERVER
//! back   GET /work    SERVER  child of front CLIENT (through the wire)
//! back   GET .../leaf CLIENT  child of back SERVER
//! back   GET /leaf    SERVER  child of back CLIENT (through the wire)
//! ```

mod support;

use std::{net::SocketAddr, time::Duration};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use support::{
    agent::{Agent, command},
    fixture::{self, Running, start_httpserver_with},
    http_client::Connection,
    otlp::{FlatSpan, Receiver, hex},
    propagation::{attach, find, id, number_before, parent, stop},
};

/// What the start line says on this host.
const START_LINE: &str = "propagation: trace context goes into plaintext HTTP/1.1 requests (traceparent, and the caller's tracestate)";

/// The trace context `/front-own` sends of its own (see the fixture).
const OWN_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The front and the back, running.
struct Services {
    _back: Running,
    _front: Running,
    back_pid: u32,
    front_pid: u32,
    back: SocketAddr,
    front: SocketAddr,
}

fn start_services() -> Services {
    let binary = fixture::build("propagate", &[]);
    let (back, back_addr) = start_httpserver_with(&binary, &["-role", "back"]);
    let back_arg = back_addr.to_string();
    let (front, front_addr) =
        start_httpserver_with(&binary, &["-role", "front", "-back", &back_arg]);
    Services {
        back_pid: back.pid(),
        front_pid: front.pid(),
        _back: back,
        _front: front,
        back: back_addr,
        front: front_addr,
    }
}

/// What the back received for `/work`, as text.
fn get(front: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let (status, body) = Connection::open(front).request_with("GET", path, headers, b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    String::from_utf8(body).expect("the back's bytes are text")
}

/// The bytes Go's client sends for the front's call, with `extra` header
/// lines after the request line.
fn work_request(back: SocketAddr, extra: &str) -> String {
    format!(
        "GET /work HTTP/1.1\r\n{extra}Host: {back}\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n"
    )
}

/// The `traceparent` line the back received: (trace id, parent id).
fn sent_context(received: &str) -> (String, String) {
    let (line, parts) = sent_traceparent(received);
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{line}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// The `traceparent` line the back received, and its four fields.
fn sent_traceparent(received: &str) -> (&str, Vec<&str>) {
    let line = received
        .lines()
        .find(|l| l.starts_with("traceparent: "))
        .unwrap_or_else(|| panic!("no traceparent in {received:?}"));
    let parts: Vec<_> = line["traceparent: ".len()..].split('-').collect();
    assert_eq!(parts.len(), 4, "{line}");
    (line, parts)
}

/// The five spans of one front request in `trace`, with the parents of the
/// tree in the module's doc; returns the front's SERVER span.
fn assert_tree<'a>(
    front_spans: &'a [FlatSpan],
    back_spans: &[FlatSpan],
    trace: &str,
    front: SocketAddr,
    back: SocketAddr,
    front_path: &str,
    sent_span: &str,
) -> &'a FlatSpan {
    let server = find(front_spans, trace, SpanKind::Server, "url.path", front_path);
    let client = find(
        front_spans,
        trace,
        SpanKind::Client,
        "url.full",
        &format!("http://{back}/work"),
    );
    let work = find(back_spans, trace, SpanKind::Server, "url.path", "/work");
    let leaf_call = find(
        back_spans,
        trace,
        SpanKind::Client,
        "url.full",
        &format!("http://{back}/leaf"),
    );
    let leaf = find(back_spans, trace, SpanKind::Server, "url.path", "/leaf");
    assert_eq!(
        server.attr("server.port"),
        Some(front.port().to_string().as_str())
    );
    assert_eq!(
        parent(client),
        id(server),
        "front CLIENT under front SERVER"
    );
    assert_eq!(id(client), sent_span, "the wire names the front CLIENT");
    assert_eq!(parent(work), id(client), "back SERVER under front CLIENT");
    assert_eq!(parent(leaf_call), id(work), "back CLIENT under back SERVER");
    assert_eq!(parent(leaf), id(leaf_call), "leaf SERVER under back CLIENT");
    server
}

#[test]
fn requests_carry_the_client_span_to_the_callee() {
    let services = start_services();
    let front_receiver = Receiver::grpc();
    let back_receiver = Receiver::grpc();
    let mut back_agent = attach(services.back_pid, &back_receiver, true, &[]);
    let mut front_agent = attach(services.front_pid, &front_receiver, true, &[]);
    for agent in [&mut back_agent, &mut front_agent] {
        let line = agent.wait_for_stderr(START_LINE, Duration::from_secs(5));
        assert!(
            line.contains("gRPC: no (the program makes no grpc-go client calls)")
                && line.contains("TLS: no"),
            "{line}"
        );
    }

    // 1. No trace context comes in: the agents start one trace.
    let first = get(services.front, "/front", &[]);
    let (trace1, sent1) = sent_context(&first);
    assert_eq!(
        first,
        work_request(
            services.back,
            &format!("traceparent: 00-{trace1}-{sent1}-01\r\n")
        ),
        "the line goes right after the request line, nothing else changes"
    );
    // 2. The caller's context comes in: its trace goes on through both.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let incoming = format!("00-{caller_trace}-{caller_span}-01");
    let state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let second = get(
        services.front,
        "/front",
        &[("traceparent", &incoming), ("tracestate", state)],
    );
    let (trace2, sent2) = sent_context(&second);
    assert_eq!(trace2, caller_trace, "{second}");
    // The caller's tracestate follows, padded with spaces (optional
    // whitespace, which HTTP strips) to 64 bytes.
    let state_line = format!("tracestate: {state:<50}\r\n");
    assert_eq!(
        second,
        work_request(
            services.back,
            &format!("traceparent: 00-{trace2}-{sent2}-01\r\n{state_line}")
        ),
    );
    // 3. The program's own trace context goes out as it was.
    let third = get(services.front, "/front-own", &[]);
    assert_eq!(
        third,
        format!(
            "GET /work HTTP/1.1\r\nHost: {}\r\nUser-Agent: Go-http-client/1.1\r\nTraceparent: {OWN_TRACEPARENT}\r\nAccept-Encoding: gzip\r\n\r\n",
            services.back
        ),
        "a request with a traceparent is left as it is"
    );

    let front_exit = stop(&mut front_agent);
    let back_exit = stop(&mut back_agent);
    let front_spans = front_receiver.wait_for_spans(6, Duration::from_secs(10));
    let back_spans = back_receiver.wait_for_spans(9, Duration::from_secs(10));
    assert_eq!(front_spans.len(), 6, "{front_spans:#?}");
    assert_eq!(back_spans.len(), 9, "{back_spans:#?}");

    let root = assert_tree(
        &front_spans,
        &back_spans,
        &trace1,
        services.front,
        services.back,
        "/front",
        &sent1,
    );
    assert!(root.span.parent_span_id.is_empty(), "{root:#?}");
    let continued = assert_tree(
        &front_spans,
        &back_spans,
        caller_trace,
        services.front,
        services.back,
        "/front",
        &sent2,
    );
    assert_eq!(
        parent(continued),
        caller_span,
        "front SERVER under the caller"
    );
    for span in [continued].into_iter().chain(back_spans.iter().filter(|s| {
        hex(&s.span.trace_id) == caller_trace && s.span.kind == SpanKind::Server as i32
    })) {
        assert_eq!(span.span.trace_state, state, "{span:#?}");
    }

    // The own context: the back's spans are in its trace, under its span.
    let (own_trace, own_span) = (&OWN_TRACEPARENT[3..35], &OWN_TRACEPARENT[36..52]);
    let work = find(
        &back_spans,
        own_trace,
        SpanKind::Server,
        "url.path",
        "/work",
    );
    assert_eq!(parent(work), own_span);
    let own_front = front_spans
        .iter()
        .find(|s| s.attr("url.path") == Some("/front-own"))
        .expect("front SERVER of /front-own");
    assert_ne!(hex(&own_front.span.trace_id), own_trace);

    assert!(
        front_exit.contains(
            "trace context sent in 2 HTTP/1.1 requests, 0 gRPC calls and 0 h2c requests (1 with the caller's tracestate, 0 tracestates not sent); left untouched: 0 HTTP/2 requests whose headers needed CONTINUATION frames, 0 whose HEADERS frame had no room, 0 over TLS, 1 with a traceparent already, 0 with headers too long to check, 0 refused by the kernel, 0 not seen on a traced connection, 0 of unknown layout, 0 contexts not kept"
        ),
        "{front_exit}"
    );
    assert!(
        back_exit.contains("trace context sent in 3 HTTP/1.1 requests, 0 gRPC calls and 0 h2c requests (1 with the caller's tracestate, 0 tracestates not sent); left untouched: 0 HTTP/2 requests whose headers needed CONTINUATION frames, 0 whose HEADERS frame had no room, 0 over TLS, 0 with a traceparent already"),
        "{back_exit}"
    );
}

/// The trace id and the sampled flag of the `traceparent` line the back
/// received.
fn sent_trace_and_flag(received: &str) -> (String, bool) {
    let (line, parts) = sent_traceparent(received);
    let sampled = match parts[3] {
        "01" => true,
        "00" => false,
        other => panic!("flags {other} in {line}"),
    };
    (parts[1].to_owned(), sampled)
}

/// HTTP/1.1 requests that carried the context, from an exit line.
fn sent_http1(exit: &str) -> usize {
    number_before(exit, " HTTP/1.1 requests,") as usize
}

/// Requests with a context never seen on a socket, from an exit line.
fn not_seen(exit: &str) -> usize {
    number_before(exit, " not seen on a traced connection") as usize
}

#[test]
fn a_ratio_sampled_front_keeps_or_drops_each_trace_whole_across_both_services() {
    const REQUESTS: usize = 4000;
    let services = start_services();
    let front_receiver = Receiver::grpc();
    let back_receiver = Receiver::grpc();
    // The back keeps the default sampler, parentbased_always_on: it follows
    // the flag the front's decision put on the wire.
    let mut back_agent = attach(services.back_pid, &back_receiver, true, &[]);
    let mut front_agent = attach(
        services.front_pid,
        &front_receiver,
        true,
        &["--sampler", "traceidratio", "--sampler-arg", "0.25"],
    );
    let mut conn = Connection::open(services.front);
    let mut on_the_wire = std::collections::BTreeMap::new();
    let mut without_context = 0;
    for _ in 0..REQUESTS {
        let (status, body) = conn.request("GET", "/front", b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let body = String::from_utf8_lossy(&body);
        if !body.contains("traceparent: ") {
            without_context += 1;
            continue;
        }
        let (trace, sampled) = sent_trace_and_flag(&body);
        assert!(
            on_the_wire.insert(trace.clone(), sampled).is_none(),
            "trace {trace} sent twice"
        );
    }
    drop(conn);
    let front_exit = stop(&mut front_agent);
    let back_exit = stop(&mut back_agent);
    // Sampled out or not, every call carries the decision. The one
    // exception, counted: a writer goroutine that moved to another thread
    // between `(*Request).write` and the socket write (rare: a few in ten
    // thousand), whose request goes out untouched.
    let (front_sent, front_unseen) = (sent_http1(&front_exit), not_seen(&front_exit));
    let (back_sent, back_unseen) = (sent_http1(&back_exit), not_seen(&back_exit));
    assert_eq!(front_sent, on_the_wire.len(), "{front_exit}");
    assert_eq!(front_unseen, without_context, "{front_exit}");
    assert_eq!(back_sent + back_unseen, REQUESTS, "{back_exit}");
    assert!(
        front_unseen + back_unseen <= REQUESTS / 200,
        "untouched requests are rare: {front_exit}\n{back_exit}"
    );

    let by_trace = |spans: Vec<FlatSpan>| {
        let mut traces = std::collections::BTreeMap::<String, Vec<FlatSpan>>::new();
        for span in spans {
            traces
                .entry(hex(&span.span.trace_id))
                .or_default()
                .push(span);
        }
        traces
    };
    let front = by_trace(front_receiver.spans());
    let mut back = by_trace(back_receiver.spans());
    // A back call to /leaf that went out untouched starts a trace of its
    // own at /leaf (the back's sampler keeps a root): one per such call.
    let leaf_roots: Vec<String> = back
        .iter()
        .filter(|(trace, spans)| {
            !on_the_wire.contains_key(*trace)
                && spans.len() == 1
                && spans[0].attr("url.path") == Some("/leaf")
                && spans[0].span.parent_span_id.is_empty()
        })
        .map(|(trace, _)| trace.clone())
        .collect();
    assert_eq!(leaf_roots.len(), back_unseen, "{back_exit}");
    for trace in &leaf_roots {
        back.remove(trace);
    }
    // Likewise a front call that went out untouched: the back's /work
    // starts a trace of its own.
    let work_roots: Vec<String> = back
        .iter()
        .filter(|(trace, spans)| {
            !on_the_wire.contains_key(*trace)
                && spans.iter().any(|s| {
                    s.attr("url.path") == Some("/work") && s.span.parent_span_id.is_empty()
                })
        })
        .map(|(trace, _)| trace.clone())
        .collect();
    assert_eq!(work_roots.len(), without_context, "{front_exit}");
    for trace in &work_roots {
        back.remove(trace);
    }
    let kept = on_the_wire.values().filter(|&&sampled| sampled).count();
    let sent = on_the_wire.len();
    let (low, high) = (sent * 22 / 100, sent * 28 / 100);
    assert!(
        (low..=high).contains(&kept),
        "{kept} of {sent} traces kept: 25% +- 3% is {low}..={high}"
    );
    // All or none: a trace the wire calls sampled has all five spans, the
    // front's two and the back's three (two when its /leaf call went out
    // untouched); any other has none anywhere.
    let mut short = 0;
    for (trace, sampled) in &on_the_wire {
        let in_front = front.get(trace).map_or(0, Vec::len);
        let in_back = back.get(trace).map_or(0, Vec::len);
        let expected = if *sampled { (2, 3) } else { (0, 0) };
        if *sampled && (in_front, in_back) == (2, 2) {
            short += 1;
            continue;
        }
        assert_eq!(
            (in_front, in_back),
            expected,
            "trace {trace} (sampled: {sampled}): spans in the front and in the back"
        );
    }
    assert!(short <= back_unseen, "{short} traces short of their /leaf");
    assert_eq!(front.len(), kept, "no trace the wire did not name");
    assert_eq!(back.len(), kept, "no trace the wire did not name");
    // The parents of each kept trace, on a few of them (each is the tree
    // the first test asserts span by span).
    for (trace, _) in on_the_wire.iter().filter(|(_, sampled)| **sampled).take(20) {
        let client = find(
            &front[trace],
            trace,
            SpanKind::Client,
            "url.full",
            &format!("http://{}/work", services.back),
        );
        let work = find(&back[trace], trace, SpanKind::Server, "url.path", "/work");
        assert_eq!(parent(work), id(client), "back SERVER under front CLIENT");
    }
}

/// One agent in host mode (`--exe`) finds both services as they start and
/// traces them each under its own resource: the same one trace of five
/// spans across them, exported by the one agent.
#[test]
fn one_agent_that_discovers_both_services_makes_one_trace() {
    // A name of this test's own (at most 15 bytes, the kernel's `comm`), so
    // that the other tests' services do not match.
    let name = format!("pg{}", std::process::id());
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("propagation");
    std::fs::create_dir_all(&dir).expect("create dir");
    let binary = dir.join(&name);
    std::fs::copy(fixture::build("propagate", &[]), &binary).expect("copy fixture");

    let receiver = Receiver::grpc();
    let mut cmd = command();
    cmd.args(["--exe", &name, "--propagate"])
        .args([
            "--otlp-endpoint",
            &receiver.url(),
            "--otlp-protocol",
            "grpc",
        ])
        .args(["--no-instrument", "tls,dns,net"]);
    let mut agent = Agent::start(cmd);
    agent.wait_for_stderr("watching for new processes", Duration::from_secs(60));
    // Each is held at its exec until it is attached.
    let (back, back_addr) = start_httpserver_with(&binary, &["-role", "back"]);
    let back_arg = back_addr.to_string();
    let (front, front_addr) =
        start_httpserver_with(&binary, &["-role", "front", "-back", &back_arg]);
    for pid in [back.pid(), front.pid()] {
        agent.wait_for_stderr(&format!("attached to PID {pid} "), Duration::from_secs(30));
    }

    let received = get(front_addr, "/front", &[]);
    let (trace, sent) = sent_context(&received);
    assert_eq!(
        received,
        work_request(back_addr, &format!("traceparent: 00-{trace}-{sent}-01\r\n"))
    );
    let spans = receiver.wait_for_spans(5, Duration::from_secs(20));
    let exit = stop(&mut agent);
    let of = |pid: u32| -> Vec<FlatSpan> {
        spans
            .iter()
            .filter(|s| s.resource.get("process.pid") == Some(&pid.to_string()))
            .cloned()
            .collect()
    };
    let (front_spans, back_spans) = (of(front.pid()), of(back.pid()));
    assert_eq!((front_spans.len(), back_spans.len()), (2, 3), "{spans:#?}");
    let root = assert_tree(
        &front_spans,
        &back_spans,
        &trace,
        front_addr,
        back_addr,
        "/front",
        &sent,
    );
    assert!(root.span.parent_span_id.is_empty(), "{root:#?}");
    assert!(exit.contains("spans exported"), "{exit}");
}

#[test]
fn without_propagate_requests_are_unchanged() {
    let services = start_services();
    // Untraced: what the program sends on its own.
    let untraced = get(services.front, "/front", &[]);
    assert_eq!(untraced, work_request(services.back, ""));

    let front_receiver = Receiver::grpc();
    let back_receiver = Receiver::grpc();
    let mut back_agent = attach(services.back_pid, &back_receiver, false, &[]);
    let mut front_agent = attach(services.front_pid, &front_receiver, false, &[]);
    let traced = get(services.front, "/front", &[]);
    assert_eq!(traced.as_bytes(), untraced.as_bytes(), "byte for byte");
    let front_exit = stop(&mut front_agent);
    let back_exit = stop(&mut back_agent);
    for (agent, exit) in [(&front_agent, &front_exit), (&back_agent, &back_exit)] {
        assert!(
            !agent.stderr_lines().iter().any(|l| l.contains(START_LINE)),
            "no start line without --propagate"
        );
        assert!(!exit.contains("trace context sent"), "{exit}");
    }
    // The spans are still there, each service its own trace.
    let front_spans = front_receiver.wait_for_spans(2, Duration::from_secs(10));
    let back_spans = back_receiver.wait_for_spans(3, Duration::from_secs(10));
    let work = back_spans
        .iter()
        .find(|s| s.attr("url.path") == Some("/work"))
        .expect("back SERVER");
    assert!(work.span.parent_span_id.is_empty(), "{work:#?}");
    assert!(
        front_spans
            .iter()
            .all(|s| s.span.trace_id != work.span.trace_id)
    );
}

#[test]
fn with_no_cgroup2_mounted_the_agent_mounts_its_own() {
    let services = start_services();
    let receiver = Receiver::grpc();
    // A mount namespace of its own without any cgroup2 mount (a host with
    // cgroup v1 only): the agent mounts the hierarchy at /run/agent/cgroup2.
    let script = format!(
        "awk '$(NF-2) == \"cgroup2\" {{ print $5 }}' /proc/self/mountinfo | xargs -r -n1 umount; \
         exec {} --pid {} --propagate --otlp-endpoint {} --otlp-protocol grpc",
        env!("CARGO_BIN_EXE_agent"),
        services.front_pid,
        receiver.url()
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    for (key, _) in std::env::vars() {
        if key.starts_with("OTEL_") {
            cmd.env_remove(key);
        }
    }
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    let line = agent.wait_for_stderr(START_LINE, Duration::from_secs(5));
    assert!(line.contains("sockops on /run/agent/cgroup2"), "{line}");
    let received = get(services.front, "/front", &[]);
    let (trace, sent) = sent_context(&received);
    let exit = stop(&mut agent);
    assert!(
        exit.contains("trace context sent in 1 HTTP/1.1 requests"),
        "{exit}"
    );
    let spans = receiver.wait_for_spans(2, Duration::from_secs(10));
    let client = find(
        &spans,
        &trace,
        SpanKind::Client,
        "url.full",
        &format!("http://{}/work", services.back),
    );
    assert_eq!(id(client), sent);
}
