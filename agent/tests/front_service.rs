//! End to end, as root: one request to a realistic front service
//! (`fixtures/frontapp`, a Go module of its own) whose handler calls a back
//! service over HTTP/1.1 and HTTP/2, a refused port and a 503, calls gRPC
//! (OK and NotFound), queries SQLite through database/sql (a query with
//! literals, one on a goroutine the handler starts, one with a syntax
//! error). The agent is attached with `--pid`, spans arrive over OTLP gRPC,
//! and the test asserts the exact tree: every span, its parent, kind, name,
//! attributes and status, and that no credential, secret query value or SQL
//! literal is exported anywhere.
//!
//! The tree, as the agent builds it today:
//!
//! ```text
//! GET /front                      SERVER  root
//! ├── GET  http://BACK/ok         CLIENT  HTTP/1.1 200
//! ├── GET  https://TLSBACK/ok     CLIENT  HTTP/2 200
//! ├── GET  http://REFUSED/refused CLIENT  error *net.OpError
//! ├── GET  http://BACK/unavailable CLIENT error 503
//! ├── GET  http://BACK/ok?token=REDACTED  CLIENT 200 (credentials dropped)
//! ├── grpc.health.v1.Health/Check CLIENT  code 0
//! ├── grpc.health.v1.Health/Check CLIENT  code 5, error
//! ├── SELECT items                CLIENT  on the handler's goroutine
//! ├── SELECT items                CLIENT  on the goroutine the handler started
//! └── sqlite                      CLIENT  syntax error
//! GET /ok, GET /ok (HTTP/2), GET /unavailable, GET /ok?token  SERVER roots
//! grpc.health.v1.Health/Check ×2  SERVER  roots
//! ```
//!
//! The back service's SERVER spans are roots of traces of their own: the
//! agent reads memory and never writes it, so net/http's client sends no
//! `traceparent` and grpc-go no trace metadata, and nothing links a served
//! call to the client call that made it.

mod support;

use std::{collections::BTreeMap, time::Duration};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use prost::Message as _;
use support::{
    agent::attach_grpc,
    fixture::{self, ClientAddrs, start_httpclient},
    http_client::Connection,
    otlp::{FlatSpan, Receiver, hex, split_net},
};

/// Where a span hangs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parent {
    /// The root of a trace of its own.
    Root,
    /// A child of the expected span at this index, in its trace.
    Of(usize),
}

/// Which goroutine a span says it ran on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Goroutine {
    /// The span has no `goroutine.id` (the gRPC client's records carry none).
    None,
    /// The front handler's goroutine (that of span 0).
    Handler,
    /// A goroutine of its own, not the handler's.
    Other,
}

/// Attributes whose value the run decides (a port the kernel picked, a
/// thread, a goroutine, a body size): their presence is asserted, their
/// value is `*` in the expectations.
const MEASURED: [&str; 4] = [
    "client.port",
    "goroutine.id",
    "thread.id",
    "http.response.body.size",
];

/// One expected span.
#[derive(Debug)]
struct Want {
    scope: &'static str,
    kind: SpanKind,
    name: &'static str,
    parent: Parent,
    error: bool,
    goroutine: Goroutine,
    /// Every attribute, exactly (measured ones as `*`).
    attributes: BTreeMap<String, String>,
}

fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The index of the front request's span in [`expected`].
const FRONT: usize = 0;

/// Every span of one `GET /front`, in the order they start.
fn expected(a: &ClientAddrs, grpc_port: u16) -> Vec<Want> {
    let back_port = a.back.port().to_string();
    let tls_port = a.tls_back.port().to_string();
    let refused_port = a.refused.port().to_string();
    let grpc_port = grpc_port.to_string();
    let front_port = a.front.port().to_string();

    let front = Want {
        scope: "agent/net/http",
        kind: SpanKind::Server,
        name: "GET /front",
        parent: Parent::Root,
        error: false,
        goroutine: Goroutine::Handler,
        attributes: attrs(&[
            ("client.address", "127.0.0.1"),
            ("client.port", "*"),
            ("goroutine.id", "*"),
            ("http.request.method", "GET"),
            ("http.response.body.size", "*"),
            ("http.response.status_code", "200"),
            ("http.route", "/front"),
            ("network.protocol.name", "http"),
            ("network.protocol.version", "1.1"),
            ("server.address", "127.0.0.1"),
            ("server.port", &front_port),
            ("thread.id", "*"),
            ("url.path", "/front"),
            ("url.scheme", "http"),
        ]),
    };
    // A net/http client call made on the handler's goroutine.
    let client = |url: String, port: &str, status: Option<&str>, protocol: Option<&str>| {
        let mut attributes = attrs(&[
            ("goroutine.id", "*"),
            ("http.request.method", "GET"),
            ("server.address", "127.0.0.1"),
            ("server.port", port),
            ("thread.id", "*"),
            ("url.full", &url),
        ]);
        if let Some(status) = status {
            attributes.insert("http.response.status_code".into(), status.into());
        }
        if let Some(protocol) = protocol {
            attributes.insert("network.protocol.version".into(), protocol.into());
        }
        Want {
            scope: "agent/net/http/client",
            kind: SpanKind::Client,
            name: "GET",
            parent: Parent::Of(FRONT),
            error: false,
            goroutine: Goroutine::Handler,
            attributes,
        }
    };
    // A request the back service served: a root (no trace context came).
    let served = |route: &str, port: &str, scheme: &str, protocol: &str, status: &str| Want {
        scope: "agent/net/http",
        kind: SpanKind::Server,
        name: "",
        parent: Parent::Root,
        error: false,
        goroutine: Goroutine::Other,
        attributes: attrs(&[
            ("client.address", "127.0.0.1"),
            ("client.port", "*"),
            ("goroutine.id", "*"),
            ("http.request.method", "GET"),
            ("http.response.body.size", "*"),
            ("http.response.status_code", status),
            ("http.route", route),
            ("network.protocol.name", "http"),
            ("network.protocol.version", protocol),
            ("server.address", "127.0.0.1"),
            ("server.port", port),
            ("thread.id", "*"),
            ("url.path", route),
            ("url.scheme", scheme),
        ]),
    };
    let grpc_client = |code: &str| Want {
        scope: "agent/grpc",
        kind: SpanKind::Client,
        name: "grpc.health.v1.Health/Check",
        parent: Parent::Of(FRONT),
        // Every code but OK is an error for a client.
        error: code != "0",
        goroutine: Goroutine::None,
        attributes: attrs(&[
            ("rpc.grpc.status_code", code),
            ("rpc.method", "Check"),
            ("rpc.service", "grpc.health.v1.Health"),
            ("rpc.system", "grpc"),
            ("server.address", "127.0.0.1"),
            ("server.port", &grpc_port),
        ]),
    };
    // A served gRPC call: a root, never an error for NotFound (the RPC
    // conventions leave that to the client).
    let grpc_server = |code: &str| Want {
        scope: "agent/grpc",
        kind: SpanKind::Server,
        name: "grpc.health.v1.Health/Check",
        parent: Parent::Root,
        error: false,
        goroutine: Goroutine::Other,
        attributes: attrs(&[
            ("goroutine.id", "*"),
            ("rpc.grpc.status_code", code),
            ("rpc.method", "Check"),
            ("rpc.service", "grpc.health.v1.Health"),
            ("rpc.system", "grpc"),
        ]),
    };
    let select = |text: &str, goroutine: Goroutine| Want {
        scope: "agent/database/sql",
        kind: SpanKind::Client,
        name: "SELECT items",
        parent: Parent::Of(FRONT),
        error: false,
        goroutine,
        attributes: attrs(&[
            ("db.collection.name", "items"),
            ("db.operation.name", "SELECT"),
            ("db.query.text", text),
            ("db.system.name", "sqlite"),
            ("goroutine.id", "*"),
            ("thread.id", "*"),
        ]),
    };

    let back = a.back;
    vec![
        front,
        client(
            format!("http://{back}/ok"),
            &back_port,
            Some("200"),
            Some("1.1"),
        ),
        served("/ok", &back_port, "http", "1.1", "200"),
        client(
            format!("https://{}/ok", a.tls_back),
            &tls_port,
            Some("200"),
            Some("2"),
        ),
        served("/ok", &tls_port, "https", "2", "200"),
        // No answer: no status, no protocol.
        Want {
            error: true,
            ..with(
                client(
                    format!("http://{}/refused", a.refused),
                    &refused_port,
                    None,
                    None,
                ),
                &[("error.type", "*net.OpError")],
            )
        },
        Want {
            error: true,
            ..with(
                client(
                    format!("http://{back}/unavailable"),
                    &back_port,
                    Some("503"),
                    Some("1.1"),
                ),
                &[("error.type", "503")],
            )
        },
        // A 5xx is a server error too.
        Want {
            error: true,
            ..with(
                served("/unavailable", &back_port, "http", "1.1", "503"),
                &[("error.type", "503")],
            )
        },
        // The URL had `user:hunter2@` and `?token=tok-s3cr3t`: credentials
        // dropped, the query value redacted, on both sides.
        client(
            format!("http://{back}/ok?token=REDACTED"),
            &back_port,
            Some("200"),
            Some("1.1"),
        ),
        with(
            served("/ok", &back_port, "http", "1.1", "200"),
            &[("url.query", "token=REDACTED")],
        ),
        grpc_client("0"),
        grpc_server("0"),
        grpc_client("5"),
        grpc_server("5"),
        select(
            "SELECT id, name FROM items WHERE id IN (?, ?, ?) AND name <> ? AND price > ?",
            Goroutine::Handler,
        ),
        // Started by `go func()` in the handler: the goroutine inherited the
        // handler's open span, so the query is the handler's child.
        select(
            "SELECT name FROM items WHERE name = ? AND id <> ?",
            Goroutine::Other,
        ),
        // Unparsable: no operation, no collection; named after the system.
        Want {
            scope: "agent/database/sql",
            kind: SpanKind::Client,
            name: "sqlite",
            parent: Parent::Of(FRONT),
            error: true,
            goroutine: Goroutine::Handler,
            attributes: attrs(&[
                ("db.query.text", "SELEC name FORM items WHERE id = ?"),
                ("db.system.name", "sqlite"),
                ("error.type", "*modernc.org/sqlite.Error"),
                ("goroutine.id", "*"),
                ("thread.id", "*"),
            ]),
        },
    ]
}

/// `want` with more attributes.
fn with(mut want: Want, more: &[(&str, &str)]) -> Want {
    want.attributes.extend(attrs(more));
    want
}

/// A served HTTP request is named after its method and route.
fn name_of(want: &Want) -> String {
    if want.name.is_empty() {
        format!("GET {}", want.attributes["http.route"])
    } else {
        want.name.to_owned()
    }
}

/// Credentials, the secret query value, and every SQL literal the handler
/// sent: none may appear in any byte exported.
const SECRETS: [&str; 12] = [
    "hunter2",
    "user:",
    "tok-s3cr3t",
    "s3cr3t",
    "lit-hidden",
    "lit-goroutine",
    "8100001",
    "8100002",
    "8100003",
    "8100009",
    "31.0625",
    "8675309",
];

/// The tree as text, for failure messages.
fn render(spans: &[&FlatSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {:?} {:?} trace={} id={} parent={} status={:?} {:?}",
                s.scope,
                SpanKind::try_from(s.span.kind),
                s.span.name,
                hex(&s.span.trace_id),
                hex(&s.span.span_id),
                hex(&s.span.parent_span_id),
                s.span.status.as_ref().map(|st| st.code),
                s.attributes
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn one_front_request_is_one_exact_tree() {
    let (mut app, addrs) = start_httpclient(&fixture::build_module("frontapp", &[]));
    let receiver = Receiver::grpc();
    let mut agent = attach_grpc(app.pid(), &receiver);

    let mut conn = Connection::open(addrs.front);
    let (status, body) = conn.request("GET", "/front", b"");
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{body}");
    let grpc_port: u16 = body
        .lines()
        .find_map(|l| l.strip_prefix("grpc: 127.0.0.1:"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("gRPC address in {body:?}"));
    assert_eq!(
        body.lines().skip(1).collect::<Vec<_>>(),
        [
            "http: 200 HTTP/1.1",
            "http: 200 HTTP/2.0",
            "http: error",
            "http: 503 HTTP/1.1",
            "http: 200 HTTP/1.1",
            "check: OK",
            "missing: NotFound",
            "select: <nil>",
            "goroutine select: <nil>",
            "bad query: failed",
        ],
        "what the handler's calls returned"
    );

    let want = expected(&addrs, grpc_port);
    receiver.wait_for_spans(want.len(), Duration::from_secs(20));
    // Stop the target: the agent drains, exports what is left and exits,
    // so a span that would come late is in what is asserted below. Its exit
    // waits for every uprobe's release, and the kernel ends each one with
    // an RCU tasks-trace grace period (`uprobe_unregister_sync`): about
    // 0.1 s each, one after the other, and this target has some 70 probes.
    app.terminate();
    let exit = agent.wait(Duration::from_secs(60));
    assert!(exit.success(), "agent exit: {exit}");

    // The connections the calls set up (one per server, the plain one
    // kept alive; the TLS handshake on both sides; the gRPC client's).
    let (net, spans) = split_net(receiver.spans());
    let mut want_net = vec![
        format!("connect {}", addrs.back),
        format!("connect {}", addrs.tls_back),
        format!("connect {}", addrs.refused),
        format!("connect 127.0.0.1:{grpc_port}"),
        "TLS client handshake 127.0.0.1".to_owned(),
        "TLS server handshake".to_owned(),
    ];
    want_net.sort();
    assert_eq!(net, want_net);
    let mut got: Vec<&FlatSpan> = spans.iter().collect();
    got.sort_by_key(|s| s.span.start_time_unix_nano);
    let tree = render(&got);
    assert_eq!(got.len(), want.len(), "exactly these spans:\n{tree}");

    let front = got[FRONT];
    let handler_goroutine = front.attr("goroutine.id").expect("goroutine.id");
    for (i, (span, want)) in got.iter().zip(&want).enumerate() {
        let name = name_of(want);
        let what = format!("span {i} ({name}) in\n{tree}");
        let s = &span.span;
        assert_eq!(span.scope, want.scope, "{what}");
        assert_eq!(s.kind, want.kind as i32, "{what}");
        assert_eq!(s.name, name, "{what}");

        // Its place in the tree.
        match want.parent {
            Parent::Root => {
                assert!(s.parent_span_id.is_empty(), "a root: {what}");
                if i != FRONT {
                    assert_ne!(
                        s.trace_id, front.span.trace_id,
                        "not in the front request's trace: {what}"
                    );
                }
            }
            Parent::Of(p) => {
                let parent = &got[p].span;
                assert_eq!(s.trace_id, parent.trace_id, "{what}");
                assert_eq!(s.parent_span_id, parent.span_id, "{what}");
                assert!(
                    parent.start_time_unix_nano <= s.start_time_unix_nano
                        && s.end_time_unix_nano <= parent.end_time_unix_nano,
                    "inside its parent: {what}"
                );
            }
        }
        assert_eq!(s.flags, 0x101, "sampled, local or no parent: {what}");
        assert!(s.start_time_unix_nano <= s.end_time_unix_nano, "{what}");

        // Exactly these attributes.
        let mut attributes = span.attributes.clone();
        for key in MEASURED {
            if let Some(value) = attributes.get_mut(key) {
                *value = "*".to_owned();
            }
        }
        assert_eq!(attributes, want.attributes, "{what}");

        let code = s.status.as_ref().map_or(0, |st| st.code);
        let want_code = if want.error {
            StatusCode::Error
        } else {
            StatusCode::Unset
        };
        assert_eq!(code, want_code as i32, "{what}");

        let goroutine = span.attr("goroutine.id");
        match want.goroutine {
            Goroutine::None => assert_eq!(goroutine, None, "{what}"),
            Goroutine::Handler => assert_eq!(goroutine, Some(handler_goroutine), "{what}"),
            Goroutine::Other => {
                assert!(goroutine.is_some_and(|g| g != handler_goroutine), "{what}");
            }
        }
    }
    // Every root is a trace of its own.
    let mut roots: Vec<&[u8]> = got
        .iter()
        .filter(|s| s.span.parent_span_id.is_empty())
        .map(|s| s.span.trace_id.as_slice())
        .collect();
    let n = roots.len();
    roots.sort_unstable();
    roots.dedup();
    assert_eq!(roots.len(), n, "one trace per root:\n{tree}");
    assert_eq!(n, 7, "the front request, four served HTTP, two served gRPC");

    // No secret in any byte the agent sent: names, attributes, statuses,
    // resource, everything.
    for received in receiver.received() {
        let bytes = received.request.encode_to_vec();
        for secret in SECRETS {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret:?} exported:\n{tree}"
            );
        }
    }

    let stderr = agent.stderr_lines().join("\n");
    assert!(
        stderr.contains(&format!(
            "agent: {} spans exported",
            want.len() + want_net.len()
        )),
        "{stderr}"
    );
    for counter in [
        "SQL ends without start: 0",
        "SQL expired: 0",
        "SQL replaced: 0",
    ] {
        assert!(stderr.contains(counter), "{counter}: {stderr}");
    }
}
