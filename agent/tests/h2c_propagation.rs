//! End to end, as root: W3C trace context into net/http's own HTTP/2
//! requests without TLS (h2c: Go 1.24+'s `Transport.Protocols` with
//! UnencryptedHTTP2) under `--propagate`, under this kernel's lockdown (no
//! memory writes).
//!
//! Two Go services (`fixtures/h2cprop`), each traced by an agent of its
//! own with `--pid`, each exporting over OTLP gRPC to a receiver of its own:
//! the front's `GET /front` calls the back's `GET /work` over h2c, whose
//! handler calls the back's own `GET /leaf` over h2c. The back answers with
//! the `traceparent` each request came with, so the test sees what went
//! over the wire.
//!
//! ```text
//! front  GET /front     SERVER
//! front  GET .../work   CLIENT  child of front SERVER
//! back   GET /work      SERVER  child of front CLIENT (through the wire)
//! back   GET .../leaf   CLIENT  child of back SERVER
//! back   GET /leaf      SERVER  child of back CLIENT (through the wire)
//! ```

mod support;

use std::{net::SocketAddr, time::Duration};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use support::{
    agent::{AGENT_EXIT, Agent, command},
    fixture::{self, Running, start_httpserver_with},
    http_client::Connection,
    otlp::{FlatSpan, Receiver, hex},
};

/// What the start line says on this host about h2c.
const START_LINE: &str = "net/http HTTP/2 requests without TLS (h2c; traceparent appended to the HEADERS frame; not the tracestate)";

/// The trace context `/front-own` sends of its own (see the fixture).
const OWN_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

struct Services {
    _back: Running,
    _front: Running,
    back_pid: u32,
    front_pid: u32,
    back: SocketAddr,
    front: SocketAddr,
}

fn start_services() -> Services {
    let binary = fixture::build("h2cprop", &[]);
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

/// An agent on `pid` exporting to `receiver`, attached.
fn attach(pid: u32, receiver: &Receiver, propagate: bool) -> Agent {
    let mut cmd = command();
    cmd.args(["--pid", &pid.to_string()]).args([
        "--otlp-endpoint",
        &receiver.url(),
        "--otlp-protocol",
        "grpc",
    ]);
    if propagate {
        cmd.arg("--propagate");
    }
    // The trees asserted here are the request spans, not connection set-up.
    cmd.args(["--no-instrument", "tls,dns,net"]);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    agent
}

/// Stops an agent and returns its exit line.
fn stop(agent: &mut Agent) -> String {
    agent.signal(nix::sys::signal::Signal::SIGINT);
    let status = agent.wait(AGENT_EXIT);
    assert!(
        status.success(),
        "agent failed: {status}: {:#?}",
        agent.stderr_lines()
    );
    agent
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains("spans exported"))
        .expect("exit line")
}

/// The traceparents the back's `/work` and `/leaf` came with.
fn get(front: SocketAddr, path: &str) -> (String, String) {
    let (status, body) = Connection::open(front).request_with("GET", path, &[], b"");
    let body = String::from_utf8(body).expect("text");
    assert_eq!(status, 200, "{body}");
    let mut lines = body.lines();
    let work = lines.next().and_then(|l| l.strip_prefix("work: "));
    let leaf = lines.next().and_then(|l| l.strip_prefix("leaf: "));
    match (work, leaf) {
        (Some(work), Some(leaf)) => (work.to_owned(), leaf.to_owned()),
        _ => panic!("unexpected answer {body:?}"),
    }
}

/// A `traceparent` value's (trace id, parent id), checked sampled.
fn context(value: &str) -> (String, String) {
    let parts: Vec<_> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

fn id(span: &FlatSpan) -> String {
    hex(&span.span.span_id)
}

fn parent(span: &FlatSpan) -> String {
    hex(&span.span.parent_span_id)
}

/// The one span of `kind` in `trace` whose `attr` is `value`.
fn find<'a>(
    spans: &'a [FlatSpan],
    trace: &str,
    kind: SpanKind,
    attr: &str,
    value: &str,
) -> &'a FlatSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| {
            hex(&s.span.trace_id) == trace
                && s.span.kind == kind as i32
                && s.attr(attr) == Some(value)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind:?} span with {attr}={value} in trace {trace}: {spans:#?}"
    );
    found[0]
}

#[test]
fn h2c_requests_carry_the_client_span_to_the_callee() {
    let services = start_services();
    let front_receiver = Receiver::grpc();
    let back_receiver = Receiver::grpc();
    let mut back_agent = attach(services.back_pid, &back_receiver, true);
    let mut front_agent = attach(services.front_pid, &front_receiver, true);
    for agent in [&mut back_agent, &mut front_agent] {
        agent.wait_for_stderr(START_LINE, Duration::from_secs(5));
    }

    // 1. No trace context comes in: the agents make one trace.
    let (work_tp, leaf_tp) = get(services.front, "/front");
    let (trace, work_parent) = context(&work_tp);
    let (leaf_trace, leaf_parent) = context(&leaf_tp);
    assert_eq!(leaf_trace, trace, "one trace through both services");
    // 2. The program's own trace context goes out as it was; the back
    // continues that trace.
    let (own_work, own_leaf) = get(services.front, "/front-own");
    assert_eq!(own_work, OWN_TRACEPARENT, "left as it is");
    let (own_trace, own_span) = (&OWN_TRACEPARENT[3..35], &OWN_TRACEPARENT[36..52]);
    let (own_leaf_trace, own_leaf_parent) = context(&own_leaf);
    assert_eq!(own_leaf_trace, own_trace);

    let front_exit = stop(&mut front_agent);
    let back_exit = stop(&mut back_agent);
    let front_spans = front_receiver.wait_for_spans(4, Duration::from_secs(10));
    let back_spans = back_receiver.wait_for_spans(6, Duration::from_secs(10));
    assert_eq!(front_spans.len(), 4, "{front_spans:#?}");
    assert_eq!(back_spans.len(), 6, "{back_spans:#?}");

    let back = services.back;
    let server = find(&front_spans, &trace, SpanKind::Server, "url.path", "/front");
    assert!(server.span.parent_span_id.is_empty(), "{server:#?}");
    let client = find(
        &front_spans,
        &trace,
        SpanKind::Client,
        "url.full",
        &format!("http://{back}/work"),
    );
    assert_eq!(
        parent(client),
        id(server),
        "front CLIENT under front SERVER"
    );
    assert_eq!(id(client), work_parent, "the wire names the front CLIENT");
    let work = find(&back_spans, &trace, SpanKind::Server, "url.path", "/work");
    assert_eq!(
        work.attr("network.protocol.version"),
        Some("2"),
        "{work:#?}"
    );
    assert_eq!(parent(work), id(client), "back SERVER under front CLIENT");
    let leaf_call = find(
        &back_spans,
        &trace,
        SpanKind::Client,
        "url.full",
        &format!("http://{back}/leaf"),
    );
    assert_eq!(parent(leaf_call), id(work), "back CLIENT under back SERVER");
    assert_eq!(id(leaf_call), leaf_parent, "the wire names the back CLIENT");
    let leaf = find(&back_spans, &trace, SpanKind::Server, "url.path", "/leaf");
    assert_eq!(parent(leaf), id(leaf_call), "leaf SERVER under back CLIENT");

    // The own context: the back's spans are in its trace, under its span.
    let own_work_span = find(
        &back_spans,
        own_trace,
        SpanKind::Server,
        "url.path",
        "/work",
    );
    assert_eq!(parent(own_work_span), own_span);
    let own_call = find(
        &back_spans,
        own_trace,
        SpanKind::Client,
        "url.full",
        &format!("http://{back}/leaf"),
    );
    assert_eq!(id(own_call), own_leaf_parent);

    assert!(
        front_exit.contains(
            "trace context sent in 0 HTTP/1.1 requests (0 with the caller's tracestate, 0 tracestates not sent), 0 gRPC calls and 1 h2c requests; left untouched: 0 HTTP/2 requests whose headers needed CONTINUATION frames, 0 whose HEADERS frame had no room, 0 over TLS, 1 with a traceparent already, 0 with headers too long to check, 0 refused by the kernel, 0 not seen on a traced connection, 0 of unknown layout, 0 contexts not kept"
        ),
        "{front_exit}"
    );
    assert!(
        back_exit.contains(
            "0 gRPC calls and 2 h2c requests; left untouched: 0 HTTP/2 requests whose headers needed CONTINUATION frames, 0 whose HEADERS frame had no room, 0 over TLS, 0 with a traceparent already, 0 with headers too long to check, 0 refused by the kernel, 0 not seen on a traced connection, 0 of unknown layout, 0 contexts not kept"
        ),
        "{back_exit}"
    );
}

#[test]
fn without_propagate_h2c_requests_carry_nothing() {
    let services = start_services();
    let front_receiver = Receiver::grpc();
    let back_receiver = Receiver::grpc();
    let mut back_agent = attach(services.back_pid, &back_receiver, false);
    let mut front_agent = attach(services.front_pid, &front_receiver, false);
    assert_eq!(
        get(services.front, "/front"),
        ("none".to_owned(), "none".to_owned())
    );
    let front_exit = stop(&mut front_agent);
    let back_exit = stop(&mut back_agent);
    for exit in [&front_exit, &back_exit] {
        assert!(!exit.contains("trace context sent"), "{exit}");
    }
    let front_spans = front_receiver.wait_for_spans(2, Duration::from_secs(10));
    let back_spans = back_receiver.wait_for_spans(3, Duration::from_secs(10));
    assert!(front_spans.iter().all(|f| {
        back_spans
            .iter()
            .all(|b| f.span.trace_id != b.span.trace_id)
    }));
}
