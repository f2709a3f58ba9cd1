//! End to end, as root: a Go HTTP server whose handler runs SQL through
//! database/sql and the pure-Go SQLite driver (`fixtures/sqlapp`, a module
//! of its own), the agent attached with `--pid`, spans over OTLP gRPC.
//! Every database/sql call must arrive as exactly one CLIENT span, child of
//! the request's SERVER span, with exact attributes, and no literal of any
//! statement anywhere in what is exported.

mod support;
use support::agent::AGENT_EXIT;
use support::sqlapp::SQL_SPANS;

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use support::{
    agent::attach_grpc,
    fixture::{self, start_httpserver},
    http_client::Connection,
    otlp::Receiver,
};

/// Literals of the fixture's statements: none may be exported.
const LITERALS: [&str; 6] = [
    "secret-widget",
    "9.99",
    "hidden-value",
    "tx-secret",
    "1234",
    "42",
];

#[test]
fn database_sql_calls_are_client_spans_under_the_request() {
    let binary = fixture::build_module("sqlapp", &[]);
    let (server, addr) = start_httpserver(&binary);
    let receiver = Receiver::grpc();
    let mut agent = attach_grpc(server.pid(), &receiver);

    let mut conn = Connection::open(addr);
    let (status, body) = conn.request("GET", "/run", b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    let spans = receiver.wait_for_spans(1 + SQL_SPANS.len(), Duration::from_secs(20));
    // Nothing more arrives (the rollback after the commit is no span).
    std::thread::sleep(Duration::from_millis(500));
    let spans = {
        let more = receiver.spans();
        assert_eq!(
            more.len(),
            spans.len(),
            "{:#?}",
            more.iter().map(|s| &s.span.name).collect::<Vec<_>>()
        );
        more
    };
    assert_eq!(
        spans.len(),
        1 + SQL_SPANS.len(),
        "{:#?}",
        spans.iter().map(|s| &s.span.name).collect::<Vec<_>>()
    );
    let server_span = spans
        .iter()
        .find(|s| s.span.kind == SpanKind::Server as i32)
        .expect("the request's span");
    assert_eq!(server_span.span.name, "GET /run");

    let mut sql: Vec<_> = spans
        .iter()
        .filter(|s| s.scope == "agent/database/sql")
        .collect();
    sql.sort_by_key(|s| s.span.start_time_unix_nano);
    assert_eq!(sql.len(), SQL_SPANS.len());
    for (span, (name, op, coll, text, fails)) in sql.iter().zip(SQL_SPANS) {
        let s = &span.span;
        assert_eq!(s.name, name);
        assert_eq!(s.kind, SpanKind::Client as i32, "{name}");
        assert_eq!(s.trace_id, server_span.span.trace_id, "{name}");
        assert_eq!(s.parent_span_id, server_span.span.span_id, "{name}");
        assert!(s.start_time_unix_nano >= server_span.span.start_time_unix_nano);
        assert!(s.end_time_unix_nano <= server_span.span.end_time_unix_nano);
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
        assert_eq!(span.attr("db.system.name"), Some("sqlite"), "{name}");
        assert_eq!(span.attr("db.operation.name"), op, "{name}");
        assert_eq!(span.attr("db.collection.name"), coll, "{name}");
        assert_eq!(span.attr("db.query.text"), text, "{name}");
        let status = s.status.as_ref().map_or(0, |st| st.code);
        if fails {
            assert_eq!(status, StatusCode::Error as i32, "{name}");
            assert_eq!(
                span.attr("error.type"),
                Some("*modernc.org/sqlite.Error"),
                "{name}"
            );
        } else {
            assert_eq!(status, StatusCode::Unset as i32, "{name}");
            assert_eq!(span.attr("error.type"), None, "{name}");
        }
        assert_eq!(
            span.attr("goroutine.id"),
            server_span.attr("goroutine.id"),
            "{name} runs on the handler's goroutine"
        );
        let mut keys: Vec<&str> = span.attributes.keys().map(String::as_str).collect();
        keys.retain(|k| {
            !matches!(
                *k,
                "db.system.name"
                    | "db.operation.name"
                    | "db.collection.name"
                    | "db.query.text"
                    | "error.type"
                    | "goroutine.id"
                    | "thread.id"
            )
        });
        assert!(keys.is_empty(), "{name}: unexpected attributes {keys:?}");
    }
    // Numbers the program did not send (ports, ids, sizes) may contain a
    // literal's digits by chance: every other attribute is checked.
    const MEASURED: [&str; 5] = [
        "client.port",
        "server.port",
        "goroutine.id",
        "thread.id",
        "http.response.body.size",
    ];
    for span in &spans {
        let sent: Vec<(&String, &String)> = span
            .attributes
            .iter()
            .filter(|(key, _)| !MEASURED.contains(&key.as_str()))
            .collect();
        let all = format!("{} {sent:?} {:?}", span.span.name, span.span.status);
        for literal in LITERALS {
            assert!(!all.contains(literal), "{literal:?} exported: {all}");
        }
    }

    let mut server = server;
    server.terminate();
    let status = agent.wait(AGENT_EXIT);
    assert!(status.success(), "agent exit: {status}");
    let stderr = agent.stderr_lines().join("\n");
    for counter in [
        "SQL ends without start: 0",
        "SQL expired: 0",
        "SQL replaced: 0",
    ] {
        assert!(stderr.contains(counter), "{counter}: {stderr}");
    }
}
