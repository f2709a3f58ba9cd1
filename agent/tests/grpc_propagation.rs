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
    agent::Agent,
    fixture::{self, Running, start_httpserver_with},
    http_client::Connection,
    otlp::{FlatSpan, Receiver, hex},
    propagation::{answer_field, context, id, number_before, parent, stop},
};

/// What the start line says on this host about gRPC.
const START_LINE: &str = "gRPC calls over plaintext HTTP/2 (traceparent, and the caller's tracestate, appended to the HEADERS frame)";

/// The trace context `/front-own` sends of its own (see the fixture).
const OWN_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

const CHECK: &str = "grpc.health.v1.Health/Check";

/// A caller's trace context, sent into the front.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const STATE: &str = "vendor=value,other=x";
/// The `tracestate` `/front-own?state=` sends of its own.
const OWN_STATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

/// The front and the back, running.
struct Services {
    _back: Running,
    _front: Running,
    back_pid: u32,
    front_pid: u32,
    front: SocketAddr,
}

/// An agent on `pid` exporting to `receiver`, attached.
fn attach(pid: u32, receiver: &Receiver, propagate: bool) -> Agent {
    support::propagation::attach(pid, receiver, propagate, &[])
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

/// What the back's "hop" and "leaf" calls came with: their traceparent and
/// tracestate ("none": without).
struct Seen {
    hop: String,
    leaf: String,
    hop_state: String,
    leaf_state: String,
}

/// The front's answer to `GET path` (with `headers`).
fn seen(front: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Seen {
    let (status, body) = Connection::open(front).request_with("GET", path, headers, b"");
    let body = String::from_utf8(body).expect("text");
    assert_eq!(status, 200, "{body}");
    let field = |key: &str| answer_field(&body, key);
    Seen {
        hop: field("hop"),
        leaf: field("leaf"),
        hop_state: field("hop-state"),
        leaf_state: field("leaf-state"),
    }
}

/// The traceparents the back's "hop" and "leaf" calls came with.
fn get(front: SocketAddr, path: &str) -> (String, String) {
    let seen = seen(front, path, &[]);
    (seen.hop, seen.leaf)
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
            "trace context sent in 0 HTTP/1.1 requests, 1 gRPC calls and 0 h2c requests (0 with the caller's tracestate, 0 tracestates not sent); left untouched: 0 HTTP/2 requests whose headers needed CONTINUATION frames, 0 whose HEADERS frame had no room, 0 over TLS, 1 with a traceparent already, 0 with headers too long to check, 0 refused by the kernel, 0 not seen on a traced connection, 0 of unknown layout, 0 contexts not kept"
        ),
        "{front_exit}"
    );
    assert!(
        back_exit.contains(
            "2 gRPC calls and 0 h2c requests (0 with the caller's tracestate, 0 tracestates not sent); left untouched: 0 HTTP/2 requests whose headers needed CONTINUATION frames, 0 whose HEADERS frame had no room, 0 over TLS, 0 with a traceparent already, 0 with headers too long to check, 0 refused by the kernel, 0 not seen on a traced connection, 0 of unknown layout, 0 contexts not kept"
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
    let seen: Vec<_> = pad_answer(&body)
        .into_iter()
        .map(|(n, tp, _)| (n, tp))
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

/// `/front-pad`'s answer: (n, traceparent, tracestate) per call.
fn pad_answer(body: &str) -> Vec<(u32, String, String)> {
    body.lines()
        .map(|l| {
            let mut words = l.split(' ');
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some(n), Some(tp), Some(ts), None) => {
                    (n.parse().expect("n"), tp.to_owned(), ts.to_owned())
                }
                _ => panic!("not \"n TP TS\": {l:?}"),
            }
        })
        .collect()
}

/// A valid `tracestate` longer than the 256 bytes the kernel sends on (and
/// shorter than the 512 a span keeps).
fn long_state() -> String {
    let state = (0..12)
        .map(|i| format!("m{i:02}={}", "v".repeat(20)))
        .collect::<Vec<_>>()
        .join(",");
    assert!((257..=512).contains(&state.len()));
    state
}

/// The caller's `tracestate` goes on with the `traceparent`: from an HTTP
/// server span into its gRPC call (the front), and from a gRPC server span
/// that received it into its own call (the back's "hop" to "leaf"), exactly
/// as it came, and on the gRPC server spans the agent exports. One longer
/// than the kernel sends on leaves the call with its `traceparent` only,
/// intact (the back answers), and is counted where it arrived.
#[test]
fn grpc_calls_carry_the_callers_tracestate() {
    let services = start_services();
    let front_receiver = Receiver::grpc();
    let back_receiver = Receiver::grpc();
    let mut back_agent = attach(services.back_pid, &back_receiver, true);
    let mut front_agent = attach(services.front_pid, &front_receiver, true);
    let incoming = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let long = long_state();

    // 1. Into the front over HTTP/1.1: on through both gRPC hops.
    let with_state = seen(
        services.front,
        "/front",
        &[("traceparent", &incoming), ("tracestate", STATE)],
    );
    let (hop_trace, hop_parent) = context(&with_state.hop);
    let (leaf_trace, leaf_parent) = context(&with_state.leaf);
    assert_eq!(
        (hop_trace.as_str(), leaf_trace.as_str()),
        (CALLER_TRACE, CALLER_TRACE)
    );
    assert_eq!(with_state.hop_state, STATE, "the front's call");
    assert_eq!(
        with_state.leaf_state, STATE,
        "the back's call under its gRPC span"
    );
    // 2. A gRPC call with trace context of the program's own: the back's
    // server span takes its tracestate on.
    let own = seen(
        services.front,
        &format!("/front-own?state={OWN_STATE}"),
        &[],
    );
    assert_eq!(
        (own.hop.as_str(), own.hop_state.as_str()),
        (OWN_TRACEPARENT, OWN_STATE)
    );
    let (own_trace, own_span) = (&OWN_TRACEPARENT[3..35], &OWN_TRACEPARENT[36..52]);
    let (own_leaf_trace, own_leaf_parent) = context(&own.leaf);
    assert_eq!(own_leaf_trace, own_trace);
    assert_eq!(own.leaf_state, OWN_STATE, "passed on by the back");
    // 3. Too long to send on, into the front: the traceparent still goes.
    let long_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let too_long = seen(
        services.front,
        "/front",
        &[
            ("traceparent", &format!("00-{long_trace}-{CALLER_SPAN}-01")),
            ("tracestate", &long),
        ],
    );
    assert_eq!(context(&too_long.hop).0, long_trace);
    assert_eq!(context(&too_long.leaf).0, long_trace);
    assert_eq!(
        (too_long.hop_state.as_str(), too_long.leaf_state.as_str()),
        ("none", "none")
    );
    // 4. Too long, into the back over gRPC: its call carries the
    // traceparent alone.
    let own_long = seen(services.front, &format!("/front-own?state={long}"), &[]);
    assert_eq!(own_long.hop_state, long, "the program's own, as it was");
    assert_eq!(context(&own_long.leaf).0, own_trace);
    assert_eq!(own_long.leaf_state, "none");

    let front_exit = stop(&mut front_agent);
    let back_exit = stop(&mut back_agent);
    let front_spans = front_receiver.wait_for_spans(8, Duration::from_secs(10));
    let back_spans = back_receiver.wait_for_spans(12, Duration::from_secs(10));
    assert_eq!(front_spans.len(), 8, "{front_spans:#?}");
    assert_eq!(back_spans.len(), 12, "{back_spans:#?}");

    // The wire named each CLIENT span; the SERVER spans that continued the
    // caller's trace carry its tracestate.
    let server = child(&front_spans, CALLER_TRACE, SpanKind::Server, CALLER_SPAN);
    assert_eq!(server.span.trace_state, STATE);
    let client = child(&front_spans, CALLER_TRACE, SpanKind::Client, &id(server));
    assert_eq!(id(client), hop_parent, "the wire names the front CLIENT");
    let hop_server = child(&back_spans, CALLER_TRACE, SpanKind::Server, &id(client));
    assert_eq!(hop_server.span.trace_state, STATE, "{hop_server:#?}");
    let leaf_call = child(&back_spans, CALLER_TRACE, SpanKind::Client, &id(hop_server));
    assert_eq!(id(leaf_call), leaf_parent, "the wire names the back CLIENT");
    let leaf_server = child(&back_spans, CALLER_TRACE, SpanKind::Server, &id(leaf_call));
    assert_eq!(leaf_server.span.trace_state, STATE, "{leaf_server:#?}");
    // The program's own context: two calls under its span, with its two
    // tracestates.
    let mut own_states: Vec<_> = back_spans
        .iter()
        .filter(|s| {
            hex(&s.span.trace_id) == own_trace
                && s.span.kind == SpanKind::Server as i32
                && parent(s) == own_span
        })
        .map(|s| s.span.trace_state.clone())
        .collect();
    own_states.sort();
    let mut want = vec![OWN_STATE.to_owned(), long.clone()];
    want.sort();
    assert_eq!(own_states, want);
    let own_call = back_spans
        .iter()
        .find(|s| id(s) == own_leaf_parent)
        .expect("the back CLIENT the wire named");
    assert_eq!(hex(&own_call.span.trace_id), own_trace);

    // Sent: the front's call (1); the back's "leaf" calls under the
    // caller's and the program's tracestate (1 and 2). Not sent: each long
    // one, where it arrived (3 at the front, 4 at the back).
    assert_eq!(
        number_before(&front_exit, " with the caller's tracestate"),
        1,
        "{front_exit}"
    );
    assert_eq!(
        number_before(&front_exit, " tracestates not sent"),
        1,
        "{front_exit}"
    );
    assert_eq!(
        number_before(&back_exit, " with the caller's tracestate"),
        2,
        "{back_exit}"
    );
    assert_eq!(
        number_before(&back_exit, " tracestates not sent"),
        1,
        "{back_exit}"
    );
    assert_eq!(
        number_before(&front_exit, " gRPC calls and"),
        2,
        "{front_exit}"
    );
    assert_eq!(
        number_before(&back_exit, " gRPC calls and"),
        4,
        "{back_exit}"
    );
}

/// Header blocks with room for `traceparent` but not for `tracestate`
/// after it (HTTP/2's smallest maximum frame size, 16,384 bytes): those
/// calls carry the `traceparent` alone, and are counted; with more room,
/// both go; with less, neither.
#[test]
fn a_tracestate_without_room_is_left_out_and_counted() {
    let services = start_services();
    let front_receiver = Receiver::grpc();
    let mut front_agent = attach(services.front_pid, &front_receiver, true);
    // One call first: the connection's first header block is larger (the
    // peer's HPACK table starts empty), the blocks below then grow by
    // exactly a byte a call.
    let (status, body) = Connection::open(services.front).request("GET", "/front-plain", b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (from, to) = (16_000, 16_450);
    let incoming = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let (status, body) = Connection::open(services.front).request_with(
        "GET",
        &format!("/front-pad?from={from}&to={to}"),
        &[("traceparent", &incoming), ("tracestate", STATE)],
        b"",
    );
    let body = String::from_utf8(body).expect("text");
    assert_eq!(status, 200, "{body}");
    let seen = pad_answer(&body);
    assert_eq!(seen.len(), (to - from + 1) as usize, "{body}");
    // Each call: 2 both, 1 traceparent alone, 0 neither; never more as the
    // blocks grow.
    let sent: Vec<u8> = seen
        .iter()
        .map(|(_, tp, ts)| match (tp.as_str(), ts.as_str()) {
            ("none", "none") => 0,
            (tp, "none") => {
                assert_eq!(context(tp).0, CALLER_TRACE);
                1
            }
            (tp, ts) => {
                assert_eq!(context(tp).0, CALLER_TRACE);
                assert_eq!(ts, STATE, "exactly as it came");
                2
            }
        })
        .collect();
    assert!(sent.windows(2).all(|w| w[0] >= w[1]), "{body}");
    let both = sent.iter().filter(|&&k| k == 2).count() as u64;
    let alone = sent.iter().filter(|&&k| k == 1).count() as u64;
    let neither = sent.iter().filter(|&&k| k == 0).count() as u64;
    assert!(both > 0 && neither > 0, "{body}");
    let exit = stop(&mut front_agent);
    assert_eq!(
        number_before(&exit, " gRPC calls and"),
        1 + both + alone,
        "{exit}"
    );
    assert_eq!(
        number_before(&exit, " with the caller's tracestate"),
        both,
        "{exit}"
    );
    assert_eq!(
        number_before(&exit, " tracestates not sent"),
        alone,
        "{exit}"
    );
    // The blocks grow a byte a call: 33 of them (the tracestate field's
    // length: 12 + 1 + 20) had room for the traceparent alone.
    assert_eq!(alone, 33, "{exit}");
}
