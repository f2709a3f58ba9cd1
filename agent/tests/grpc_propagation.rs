//! End to end, as root: W3C trace context into outgoing gRPC calls over
//! plaintext HTTP/2 (`--propagate`, grpc-go with insecure credentials)
//! under this kernel's lockdown (no memory writes).
//!
//! Two Go services (`fixtures/grpcprop`), each traced by an agent of its
//! own with `--pid`, each exporting over OTLP gRPC to a receiver of its own:
//! the front's `GET /front` calls the back's `Health/Check("hop")`, whose
//! handler calls the back's own `Check("leaf")`. Every Check answers with
//! the `traceparent` its call's metadata came with, so the test sees what
//! went over the wire.
//!
//! With `--propagate`: one trace of five spans across both services, with
//! the parents of the tree below, the `traceparent` on the wire naming each
//! CLIENT span (the one under an HTTP server span, the one under a gRPC
//! server span); a call the program makes with a `traceparent` of its own
//! goes out as it was, and the back continues that trace. Without it: the
//! calls carry nothing.
//!
//! ```text
//! front  GET /front    SERVER
//! front  Health/Check  CLIENT  child of front SERVER
//! back   Health/Check  SERVER  child of front CLIENT (through the wire: "hop")
//! back   Health/Check  CLIENT  child of back SERVER
//! back   Health/Check  SERVER  child of back CLIENT (through the wire: "leaf")
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

/// What the start line says on this host about gRPC.
const START_LINE: &str = "gRPC calls over plaintext HTTP/2 (traceparent appended to the HEADERS frame; not the tracestate)";

/// The trace context `/front-own` sends of its own (see the fixture).
const OWN_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

const CHECK: &str = "grpc.health.v1.Health/Check";

/// The front and the back, running.
struct Services {
    _back: Running,
    _front: Running,
    back_pid: u32,
    front_pid: u32,
    front: SocketAddr,
}

fn start_services() -> Services {
    let binary = fixture::build_module("grpcprop", &[]);
    let (back, back_addr) = start_httpserver_with(&binary, &["-role", "back"]);
    let back_arg = back_addr.to_string();
    let (front, front_addr) =
        start_httpserver_with(&binary, &["-role", "front", "-back", &back_arg]);
    Services {
        back_pid: back.pid(),
        front_pid: front.pid(),
        _back: back,
        _front: front,
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
    // The trees asserted here are the call spans, not connection set-up.
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

/// The traceparents the back's "hop" and "leaf" calls came with.
fn get(front: SocketAddr, path: &str) -> (String, String) {
    let (status, body) = Connection::open(front).request_with("GET", path, &[], b"");
    let body = String::from_utf8(body).expect("text");
    assert_eq!(status, 200, "{body}");
    let mut lines = body.lines();
    let hop = lines.next().and_then(|l| l.strip_prefix("hop: "));
    let leaf = lines.next().and_then(|l| l.strip_prefix("leaf: "));
    match (hop, leaf) {
        (Some(hop), Some(leaf)) => (hop.to_owned(), leaf.to_owned()),
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

/// The one span of `kind` in `trace` whose parent is `parent_id`.
fn child<'a>(spans: &'a [FlatSpan], trace: &str, kind: SpanKind, parent_id: &str) -> &'a FlatSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| {
            hex(&s.span.trace_id) == trace && s.span.kind == kind as i32 && parent(s) == parent_id
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind:?} span under {parent_id} in trace {trace}: {spans:#?}"
    );
    found[0]
}

#[test]
fn grpc_calls_carry_the_client_span_to_the_callee() {
    let services = start_services();
    let front_receiver = Receiver::grpc();
    let back_receiver = Receiver::grpc();
    let mut back_agent = attach(services.back_pid, &back_receiver, true);
    let mut front_agent = attach(services.front_pid, &front_receiver, true);
    for agent in [&mut back_agent, &mut front_agent] {
        let line = agent.wait_for_stderr(START_LINE, Duration::from_secs(5));
        assert!(line.contains("TLS: no"), "{line}");
    }

    // 1. No trace context comes in: the agents make one trace.
    let (hop, leaf) = get(services.front, "/front");
    let (trace, hop_parent) = context(&hop);
    let (leaf_trace, leaf_parent) = context(&leaf);
    assert_eq!(leaf_trace, trace, "one trace through both services");
    // 2. The program's own trace context goes out as it was; the back
    // continues that trace under a gRPC server span.
    let (own_hop, own_leaf) = get(services.front, "/front-own");
    assert_eq!(own_hop, OWN_TRACEPARENT, "left as it is");
    let (own_trace, own_span) = (&OWN_TRACEPARENT[3..35], &OWN_TRACEPARENT[36..52]);
    let (own_leaf_trace, own_leaf_parent) = context(&own_leaf);
    assert_eq!(own_leaf_trace, own_trace);

    let front_exit = stop(&mut front_agent);
    let back_exit = stop(&mut back_agent);
    let front_spans = front_receiver.wait_for_spans(4, Duration::from_secs(10));
    let back_spans = back_receiver.wait_for_spans(6, Duration::from_secs(10));
    assert_eq!(front_spans.len(), 4, "{front_spans:#?}");
    assert_eq!(back_spans.len(), 6, "{back_spans:#?}");

    // The tree of the module's doc, in one trace.
    let server = child(&front_spans, &trace, SpanKind::Server, "");
    assert_eq!(server.attr("url.path"), Some("/front"));
    let client = child(&front_spans, &trace, SpanKind::Client, &id(server));
    assert_eq!(client.span.name, CHECK);
    assert_eq!(id(client), hop_parent, "the wire names the front CLIENT");
    let hop_server = child(&back_spans, &trace, SpanKind::Server, &id(client));
    assert_eq!(hop_server.span.name, CHECK);
    assert_eq!(
        hop_server.span.flags & 0x300,
        0x300,
        "the parent is remote: {hop_server:#?}"
    );
    let leaf_call = child(&back_spans, &trace, SpanKind::Client, &id(hop_server));
    assert_eq!(id(leaf_call), leaf_parent, "the wire names the back CLIENT");
    let leaf_server = child(&back_spans, &trace, SpanKind::Server, &id(leaf_call));
    assert_eq!(leaf_server.span.name, CHECK);
    let in_trace = front_spans
        .iter()
        .chain(&back_spans)
        .filter(|s| hex(&s.span.trace_id) == trace)
        .count();
    assert_eq!(in_trace, 5, "five spans in the trace");

    // The own context: the back's spans are in its trace, under its span.
    let own_server = child(&back_spans, own_trace, SpanKind::Server, own_span);
    let own_call = child(&back_spans, own_trace, SpanKind::Client, &id(own_server));
    assert_eq!(id(own_call), own_leaf_parent);
    child(&back_spans, own_trace, SpanKind::Server, &id(own_call));
    let own_front = front_spans
        .iter()
        .find(|s| s.attr("url.path") == Some("/front-own"))
        .expect("front SERVER of /front-own");
    assert_ne!(hex(&own_front.span.trace_id), own_trace);

    // The counts by reason.
    assert!(
        front_exit.contains(
            "trace context sent in 0 HTTP/1.1 requests (0 with the caller's tracestate, 0 tracestates not sent), 1 gRPC calls and 0 h2c requests; left untouched: 0 HTTP/2 requests whose headers needed CONTINUATION frames, 0 whose HEADERS frame had no room, 0 over TLS, 1 with a traceparent already, 0 with headers too long to check, 0 refused by the kernel, 0 not seen on a traced connection, 0 of unknown layout, 0 contexts not kept"
        ),
        "{front_exit}"
    );
    assert!(
        back_exit.contains(
            "2 gRPC calls and 0 h2c requests; left untouched: 0 HTTP/2 requests whose headers needed CONTINUATION frames, 0 whose HEADERS frame had no room, 0 over TLS, 0 with a traceparent already, 0 with headers too long to check, 0 refused by the kernel, 0 not seen on a traced connection, 0 of unknown layout, 0 contexts not kept"
        ),
        "{back_exit}"
    );
}

#[test]
fn without_propagate_grpc_calls_carry_nothing() {
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
    // The spans are still there, each service its own trace.
    let front_spans = front_receiver.wait_for_spans(2, Duration::from_secs(10));
    let back_spans = back_receiver.wait_for_spans(3, Duration::from_secs(10));
    assert!(front_spans.iter().all(|f| {
        back_spans
            .iter()
            .all(|b| f.span.trace_id != b.span.trace_id)
    }));
}

/// The number right before `phrase` in `line`.
fn number_before(line: &str, phrase: &str) -> u64 {
    let at = line
        .find(phrase)
        .unwrap_or_else(|| panic!("{phrase:?} not in {line}"));
    let digits: String = line[..at]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number before {phrase:?} in {line}"))
}

/// Header blocks around HTTP/2's smallest maximum frame size (16,384
/// bytes): those with room for the field carry it; those without, and
/// those split into CONTINUATION frames, go out untouched; the counts by
/// reason are what the back received.
#[test]
fn headers_without_room_go_out_untouched_and_counted() {
    let services = start_services();
    let front_receiver = Receiver::grpc();
    let mut front_agent = attach(services.front_pid, &front_receiver, true);
    let (from, to) = (16_150, 16_450);
    let (status, body) = Connection::open(services.front).request_with(
        "GET",
        &format!("/front-pad?from={from}&to={to}"),
        &[],
        b"",
    );
    let body = String::from_utf8(body).expect("text");
    assert_eq!(status, 200, "{body}");
    let seen: Vec<_> = body
        .lines()
        .map(|l| {
            let (n, tp) = l.split_once(' ').expect("n TP");
            (n.parse::<u32>().expect("n"), tp.to_owned())
        })
        .collect();
    assert_eq!(seen.len(), (to - from + 1) as usize, "{body}");
    let sent = seen.iter().filter(|(_, tp)| tp != "none").count() as u64;
    let untouched = seen.iter().filter(|(_, tp)| tp == "none").count() as u64;
    // Larger blocks never carry it when a smaller one did not: one cut.
    let first_untouched = seen.iter().position(|(_, tp)| tp == "none");
    if let Some(cut) = first_untouched {
        assert!(seen[cut..].iter().all(|(_, tp)| tp == "none"), "{body}");
    }
    for (_, tp) in seen.iter().filter(|(_, tp)| tp != "none") {
        context(tp);
    }
    let exit = stop(&mut front_agent);
    let injected = number_before(&exit, " gRPC calls and");
    let continuation = number_before(
        &exit,
        " HTTP/2 requests whose headers needed CONTINUATION frames",
    );
    let no_room = number_before(&exit, " whose HEADERS frame had no room");
    assert_eq!(injected, sent, "{exit}");
    assert_eq!(continuation + no_room, untouched, "{exit}");
    assert!(sent > 0 && continuation > 0, "{exit}");
    // The blocks grow a byte a call: 69 of them (the field's length) had
    // no room (give or take the connection's first, whose block is larger).
    assert!((68..=70).contains(&no_room), "{exit}");
}
