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
    agent::Agent,
    fixture::{self, Running, start_httpserver_with},
    http_client::Connection,
    otlp::{Receiver, hex},
    propagation::{answer_field, context, find, id, number_before, parent, stop},
};

/// What the start line says on this host about h2c.
const START_LINE: &str = "net/http HTTP/2 requests without TLS (h2c; traceparent, and the caller's tracestate, appended to the HEADERS frame)";

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
    support::propagation::attach(pid, receiver, propagate, &[])
}

/// What the back's `/work` and `/leaf` came with: their traceparent and
/// tracestate ("none": without).
struct Seen {
    work: String,
    leaf: String,
    work_state: String,
    leaf_state: String,
}

/// The front's answer to `GET path` (with `headers`).
fn seen(front: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Seen {
    let (status, body) = Connection::open(front).request_with("GET", path, headers, b"");
    let body = String::from_utf8(body).expect("text");
    assert_eq!(status, 200, "{body}");
    let field = |key: &str| answer_field(&body, key);
    Seen {
        work: field("work"),
        leaf: field("leaf"),
        work_state: field("work-state"),
        leaf_state: field("leaf-state"),
    }
}

/// The traceparents the back's `/work` and `/leaf` came with.
fn get(front: SocketAddr, path: &str) -> (String, String) {
    let seen = seen(front, path, &[]);
    (seen.work, seen.leaf)
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
            "trace context sent in 0 HTTP/1.1 requests, 0 gRPC calls and 1 h2c requests (0 with the caller's tracestate, 0 tracestates not sent); left untouched: 0 HTTP/2 requests whose headers needed CONTINUATION frames, 0 whose HEADERS frame had no room, 0 over TLS, 1 with a traceparent already, 0 with headers too long to check, 0 refused by the kernel, 0 not seen on a traced connection, 0 of unknown layout, 0 contexts not kept"
        ),
        "{front_exit}"
    );
    assert!(
        back_exit.contains(
            "0 gRPC calls and 2 h2c requests (0 with the caller's tracestate, 0 tracestates not sent); left untouched: 0 HTTP/2 requests whose headers needed CONTINUATION frames, 0 whose HEADERS frame had no room, 0 over TLS, 0 with a traceparent already, 0 with headers too long to check, 0 refused by the kernel, 0 not seen on a traced connection, 0 of unknown layout, 0 contexts not kept"
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

/// The caller's `tracestate` goes on with the `traceparent`, exactly as it
/// came: from an HTTP/1.1 server span into its h2c request (the front),
/// and from an HTTP/2 server span into its own (the back's `/work` to
/// `/leaf`). One longer than the kernel sends on leaves the request with
/// its `traceparent` only, intact (the back answers), and is counted.
#[test]
fn h2c_requests_carry_the_callers_tracestate() {
    const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";
    const STATE: &str = "vendor=value,other=x";
    let services = start_services();
    let front_receiver = Receiver::grpc();
    let back_receiver = Receiver::grpc();
    let mut back_agent = attach(services.back_pid, &back_receiver, true);
    let mut front_agent = attach(services.front_pid, &front_receiver, true);

    let with_state = seen(
        services.front,
        "/front",
        &[
            (
                "traceparent",
                &format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"),
            ),
            ("tracestate", STATE),
        ],
    );
    let (work_trace, work_parent) = context(&with_state.work);
    let (leaf_trace, leaf_parent) = context(&with_state.leaf);
    assert_eq!(
        (work_trace.as_str(), leaf_trace.as_str()),
        (CALLER_TRACE, CALLER_TRACE)
    );
    assert_eq!(with_state.work_state, STATE, "the front's request");
    assert_eq!(
        with_state.leaf_state, STATE,
        "the back's, under its HTTP/2 span"
    );
    // Longer than the 256 bytes the kernel sends on.
    let long = (0..12)
        .map(|i| format!("m{i:02}={}", "v".repeat(20)))
        .collect::<Vec<_>>()
        .join(",");
    assert!(long.len() > 256);
    let long_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let too_long = seen(
        services.front,
        "/front",
        &[
            ("traceparent", &format!("00-{long_trace}-{CALLER_SPAN}-01")),
            ("tracestate", &long),
        ],
    );
    assert_eq!(context(&too_long.work).0, long_trace);
    assert_eq!(context(&too_long.leaf).0, long_trace);
    assert_eq!(
        (too_long.work_state.as_str(), too_long.leaf_state.as_str()),
        ("none", "none")
    );

    let front_exit = stop(&mut front_agent);
    let back_exit = stop(&mut back_agent);
    let front_spans = front_receiver.wait_for_spans(4, Duration::from_secs(10));
    let back_spans = back_receiver.wait_for_spans(6, Duration::from_secs(10));
    assert_eq!(front_spans.len(), 4, "{front_spans:#?}");
    assert_eq!(back_spans.len(), 6, "{back_spans:#?}");

    let back = services.back;
    let client = find(
        &front_spans,
        CALLER_TRACE,
        SpanKind::Client,
        "url.full",
        &format!("http://{back}/work"),
    );
    assert_eq!(id(client), work_parent, "the wire names the front CLIENT");
    let work = find(
        &back_spans,
        CALLER_TRACE,
        SpanKind::Server,
        "url.path",
        "/work",
    );
    assert_eq!(parent(work), id(client));
    assert_eq!(work.span.trace_state, STATE, "{work:#?}");
    let leaf_call = find(
        &back_spans,
        CALLER_TRACE,
        SpanKind::Client,
        "url.full",
        &format!("http://{back}/leaf"),
    );
    assert_eq!(id(leaf_call), leaf_parent, "the wire names the back CLIENT");
    let leaf = find(
        &back_spans,
        CALLER_TRACE,
        SpanKind::Server,
        "url.path",
        "/leaf",
    );
    assert_eq!(leaf.span.trace_state, STATE, "{leaf:#?}");
    assert!(
        back_spans
            .iter()
            .filter(|s| hex(&s.span.trace_id) == long_trace && s.attr("url.path") == Some("/leaf"))
            .all(|s| s.span.trace_state.is_empty()),
        "{back_spans:#?}"
    );

    for (exit, sent, skipped) in [(&front_exit, 1, 1), (&back_exit, 1, 0)] {
        assert_eq!(
            number_before(exit, " with the caller's tracestate"),
            sent,
            "{exit}"
        );
        assert_eq!(
            number_before(exit, " tracestates not sent"),
            skipped,
            "{exit}"
        );
        assert_eq!(number_before(exit, " h2c requests"), 2, "{exit}");
    }
}
