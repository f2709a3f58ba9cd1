//! End to end, as root: a Go HTTP server whose handler runs SQL through
//! database/sql and the pure-Go SQLite driver (`fixtures/sqlapp`, a module
//! of its own), the agent attached with `--pid`, spans over OTLP gRPC.
//! Every database/sql call must arrive as exactly one CLIENT span, child of
//! the request's SERVER span, with exact attributes, and no literal of any
//! statement anywhere in what is exported.

mod support;
use support::agent::AGENT_EXIT;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use support::{
    agent::attach_grpc,
    fixture::{self, start_httpserver},
    http_client::Connection,
    otlp::Receiver,
};

/// Builds `fixtures/sqlapp` (its own Go module: modernc.org/sqlite is large,
/// so the binary is kept in the target directory and rebuilt only when its
/// sources change).
fn build_sqlapp() -> PathBuf {
    let src = fixture::fixtures_dir().join("sqlapp");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures/sqlapp");
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    let fresh = modified(&out).is_some_and(|built| {
        ["main.go", "go.mod", "go.sum"]
            .iter()
            .all(|f| modified(&src.join(f)).is_some_and(|m| m <= built))
    });
    if fresh {
        return out;
    }
    std::fs::create_dir_all(out.parent().expect("parent")).expect("create fixture dir");
    let output = Command::new(fixture::go())
        .current_dir(&src)
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("run go build (is Go installed?)");
    assert!(
        output.status.success(),
        "go build sqlapp failed (modules: `go mod download` in {}):\n{}",
        src.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// One expected SQL span: name, operation, collection, query text
/// (sanitized), whether it fails.
type Expected = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    bool,
);

/// The SQL spans the handler's calls make, in order.
const EXPECTED: [Expected; 12] = [
    (
        "CREATE TABLE items",
        Some("CREATE TABLE"),
        Some("items"),
        Some("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT, price REAL)"),
        false,
    ),
    (
        "DELETE items",
        Some("DELETE"),
        Some("items"),
        Some("DELETE FROM items"),
        false,
    ),
    (
        "INSERT items",
        Some("INSERT"),
        Some("items"),
        Some("INSERT INTO items (id, name, price) VALUES (?, ?, ?)"),
        false,
    ),
    (
        "SELECT items",
        Some("SELECT"),
        Some("items"),
        Some("SELECT id, name FROM items WHERE id IN (?, ?, ?) AND name <> ?"),
        false,
    ),
    ("BEGIN", Some("BEGIN"), None, None, false),
    (
        "INSERT items",
        Some("INSERT"),
        Some("items"),
        Some("INSERT INTO items (id, name, price) VALUES (?, ?, ?)"),
        false,
    ),
    ("COMMIT", Some("COMMIT"), None, None, false),
    ("BEGIN", Some("BEGIN"), None, None, false),
    ("ROLLBACK", Some("ROLLBACK"), None, None, false),
    (
        "PREPARE items",
        Some("PREPARE"),
        Some("items"),
        Some("SELECT name FROM items WHERE id = ?"),
        false,
    ),
    (
        "SELECT items",
        Some("SELECT"),
        Some("items"),
        Some("SELECT name FROM items WHERE id = ?"),
        false,
    ),
    (
        "sqlite",
        None,
        None,
        Some("SELEC * FORM items WHERE id = ?"),
        true,
    ),
];

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
    let binary = build_sqlapp();
    let (server, addr) = start_httpserver(&binary);
    let receiver = Receiver::grpc();
    let mut agent = attach_grpc(server.pid(), &receiver);

    let mut conn = Connection::open(addr);
    let (status, body) = conn.request("GET", "/run", b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    let spans = receiver.wait_for_spans(1 + EXPECTED.len(), Duration::from_secs(20));
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
        1 + EXPECTED.len(),
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
    assert_eq!(sql.len(), EXPECTED.len());
    for (span, (name, op, coll, text, fails)) in sql.iter().zip(EXPECTED) {
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
