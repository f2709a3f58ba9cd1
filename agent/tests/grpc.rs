//! End to end, as root: a Go program built from source with
//! google.golang.org/grpc (the fixture module `fixtures/grpcapp`), serving
//! the health and reflection services, whose HTTP handler calls them as a
//! gRPC client; the agent attached with `--pid`, spans over OTLP.
//!
//! What the agent guarantees and the test asserts:
//! - each client call is one CLIENT span, a child of the HTTP SERVER span
//!   of the handler that made it (same trace);
//! - each served call is one SERVER span; grpc-go sends no trace context
//!   of its own (the agent does not inject one), so a served call is the
//!   root of its own trace, unless its metadata carries a `traceparent`
//!   (the fixture's first call does): then it continues that trace, as a
//!   child of the remote span it names.

mod support;
use support::agent::AGENT_EXIT;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use support::{
    agent::attach_grpc,
    fixture::{self, Running},
    otlp::{FlatSpan, Receiver, hex, split_net},
};

/// The trace context the fixture's first call sends in its metadata.
const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

/// `GET /call` over a fresh connection: the body.
fn call(addr: SocketAddr) -> String {
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    conn.write_all(b"GET /call HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .expect("body")
}

fn code_attr(span: &FlatSpan) -> Option<&str> {
    span.attr("rpc.grpc.status_code")
}

fn status(span: &FlatSpan) -> i32 {
    span.span.status.as_ref().map_or(0, |s| s.code)
}

#[test]
fn grpc_client_and_server_calls_become_spans() {
    let binary = fixture::build_module("grpcapp", &[]);
    let (mut app, addr) = fixture::start_httpserver(&binary);
    let receiver = Receiver::grpc();
    let mut agent = attach_grpc(app.pid(), &receiver);
    agent.wait_for_stderr("grpc v1.85.0: ", Duration::from_secs(5));

    let body = call(addr);
    assert!(body.contains("check: OK"), "{body}");
    assert!(body.contains("missing: NotFound"), "{body}");
    assert!(body.contains("stream: OK"), "{body}");
    let grpc_port: u16 = body
        .lines()
        .find_map(|l| l.strip_prefix("target: 127.0.0.1:"))
        .and_then(|p| p.parse().ok())
        .expect("gRPC address in the body");

    // 1 HTTP + 3 client + 3 server.
    receiver.wait_for_spans(7, Duration::from_secs(20));
    terminate(&mut app);
    let status_code = agent.wait(AGENT_EXIT);
    assert!(status_code.success(), "agent exit: {status_code}");
    // The client's connection: one dial (its lookup is of an IP literal).
    let (net, spans) = split_net(receiver.spans());
    assert_eq!(net, [format!("connect 127.0.0.1:{grpc_port}")]);
    assert_eq!(
        spans.len(),
        7,
        "{:#?}",
        spans
            .iter()
            .map(|s| (&s.span.name, s.span.kind))
            .collect::<Vec<_>>()
    );

    let http = spans
        .iter()
        .find(|s| s.span.name == "GET /call")
        .expect("the HTTP span");
    assert_eq!(http.scope, "agent/net/http");
    let of_kind = |kind: SpanKind| -> Vec<&FlatSpan> {
        let mut v: Vec<&FlatSpan> = spans
            .iter()
            .filter(|s| s.scope == "agent/grpc" && s.span.kind == kind as i32)
            .collect();
        v.sort_by_key(|s| s.span.start_time_unix_nano);
        v
    };

    // Client calls, in the order the handler made them.
    let clients = of_kind(SpanKind::Client);
    let expected = [
        (
            "grpc.health.v1.Health/Check",
            "grpc.health.v1.Health",
            "Check",
            "0",
        ),
        (
            "grpc.health.v1.Health/Check",
            "grpc.health.v1.Health",
            "Check",
            "5",
        ),
        (
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "grpc.reflection.v1.ServerReflection",
            "ServerReflectionInfo",
            "0",
        ),
    ];
    assert_eq!(clients.len(), 3);
    for (span, (name, service, method, code)) in clients.iter().zip(expected) {
        assert_eq!(span.span.name, name);
        assert_eq!(span.attr("rpc.system"), Some("grpc"), "{name}");
        assert_eq!(span.attr("rpc.service"), Some(service), "{name}");
        assert_eq!(span.attr("rpc.method"), Some(method), "{name}");
        assert_eq!(code_attr(span), Some(code), "{name}");
        assert_eq!(span.attr("server.address"), Some("127.0.0.1"), "{name}");
        assert_eq!(
            span.attr("server.port"),
            Some(grpc_port.to_string().as_str()),
            "{name}"
        );
        // A child of the handler's span, in its trace.
        assert_eq!(span.span.trace_id, http.span.trace_id, "{name}");
        assert_eq!(span.span.parent_span_id, http.span.span_id, "{name}");
        assert!(
            span.span.start_time_unix_nano >= http.span.start_time_unix_nano
                && span.span.end_time_unix_nano <= http.span.end_time_unix_nano,
            "{name} within the HTTP span"
        );
        // Every non-OK code is an error for a client.
        let want = if code == "0" {
            0
        } else {
            StatusCode::Error as i32
        };
        assert_eq!(status(span), want, "{name} code {code}");
    }

    // Served calls: the first continues the trace its metadata names, the
    // others are roots of their own traces.
    let servers = of_kind(SpanKind::Server);
    assert_eq!(servers.len(), 3);
    assert_eq!(hex(&servers[0].span.trace_id), CALLER_TRACE);
    assert_eq!(hex(&servers[0].span.parent_span_id), CALLER_SPAN);
    assert_eq!(
        servers[0].span.flags & 0x301,
        0x301,
        "sampled, remote parent"
    );
    for (span, (name, service, method, code)) in servers.iter().zip(expected).skip(1) {
        assert!(span.span.parent_span_id.is_empty(), "{name} is a root");
        assert_ne!(span.span.trace_id, http.span.trace_id, "{name}");
        assert_eq!(span.span.flags & 0x300, 0x100, "{name}: no remote parent");
        let _ = (service, method, code);
    }
    for (span, (name, service, method, code)) in servers.iter().zip(expected) {
        assert_eq!(span.span.name, name);
        assert_eq!(span.attr("rpc.system"), Some("grpc"), "{name}");
        assert_eq!(span.attr("rpc.service"), Some(service), "{name}");
        assert_eq!(span.attr("rpc.method"), Some(method), "{name}");
        assert_eq!(code_attr(span), Some(code), "{name}");
        // NotFound is not a server error (OpenTelemetry's RPC conventions).
        assert_eq!(status(span), 0, "{name} code {code}");
    }
    // Each served call lies within its client call.
    for (client, server) in clients.iter().zip(&servers) {
        assert!(
            server.span.start_time_unix_nano >= client.span.start_time_unix_nano,
            "{} starts after its client call",
            server.span.name
        );
    }
    let unary: Vec<_> = clients.iter().zip(&servers).take(2).collect();
    for (client, server) in unary {
        assert!(
            server.span.end_time_unix_nano <= client.span.end_time_unix_nano,
            "{} ends before its unary client call returns",
            server.span.name
        );
    }
}

/// A stripped binary (no DWARF, no symbols): the grpc struct offsets come
/// from the module table for its grpc version, and it is traced (the exact
/// spans of stripped builds are asserted in tests/version_matrix.rs).
#[test]
fn stripped_binary_is_traced_from_the_module_table() {
    let binary = fixture::build_module("grpcapp", &["-ldflags=-s -w"]);
    let (mut app, addr) = fixture::start_httpserver(&binary);
    let receiver = Receiver::grpc();
    let mut agent = attach_grpc(app.pid(), &receiver);
    let line = agent.wait_for_stderr("grpc v1.85.0: ", Duration::from_secs(5));
    assert!(!line.contains("cannot be traced"), "{line}");
    let body = call(addr);
    assert!(body.contains("stream: OK"), "{body}");
    receiver.wait_for_spans(7, Duration::from_secs(20));
    terminate(&mut app);
    assert!(agent.wait(AGENT_EXIT).success());
    let (net, spans) = split_net(receiver.spans());
    assert_eq!(net.len(), 1, "the client's dial: {net:?}");
    assert!(net[0].starts_with("connect 127.0.0.1:"), "{net:?}");
    assert_eq!(spans.len(), 7, "the HTTP span and six gRPC spans");
    assert_eq!(spans.iter().filter(|s| s.scope == "agent/grpc").count(), 6);
}

fn terminate(app: &mut Running) {
    app.terminate();
}
