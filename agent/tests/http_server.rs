//! End to end, as root: a Go HTTP server built from source, the agent
//! attached to it as a separate process with `--pid`, and OTLP receivers on
//! real sockets. Every request must arrive as exactly one span with exact
//! attribute values.

mod support;
use support::agent::AGENT_EXIT;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::sys::signal::Signal;
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    trace::v1::{span::SpanKind, status::StatusCode},
};
use support::{
    agent::{Agent, attach_grpc, command},
    fixture,
    http_client::Connection,
    otlp::{FlatSpan, Receiver, flatten, hex, split_net},
};

/// A request the test sends and what its span must say.
struct Case {
    method: &'static str,
    target: &'static str,
    path: &'static str,
    /// `url.query`: every value redacted (the agent's default).
    query: Option<&'static str>,
    body: &'static [u8],
    status: u16,
    /// ServeMux pattern (Go 1.23+ records it on the request).
    route: Option<&'static str>,
    response_body: Option<u64>,
}

const FIRST_CONNECTION: [Case; 3] = [
    Case {
        method: "GET",
        target: "/hello",
        path: "/hello",
        query: None,
        body: b"",
        status: 200,
        route: Some("/hello"),
        response_body: Some(5),
    },
    Case {
        method: "POST",
        target: "/items/abc",
        path: "/items/abc",
        query: None,
        body: b"hello world",
        status: 201,
        route: Some("/items/"),
        response_body: Some(6),
    },
    Case {
        method: "PUT",
        target: "/fail",
        path: "/fail",
        query: None,
        body: b"",
        status: 500,
        route: Some("/fail"),
        response_body: None,
    },
];

const SECOND_CONNECTION: [Case; 3] = [
    Case {
        method: "DELETE",
        target: "/missing",
        path: "/missing",
        query: None,
        body: b"",
        status: 404,
        route: None,
        response_body: None,
    },
    Case {
        method: "GET",
        target: "/slow?ms=30",
        path: "/slow",
        query: Some("ms=REDACTED"),
        body: b"",
        status: 200,
        route: Some("/slow"),
        response_body: Some(4),
    },
    Case {
        method: "PATCH",
        target: "/items/z%20y?x=1&Signature=abc",
        path: "/items/z y",
        query: Some("x=REDACTED&Signature=REDACTED"),
        body: b"x",
        status: 200,
        route: Some("/items/"),
        response_body: Some(5),
    },
];

/// Sends every case; returns the local ports of the two connections.
fn send_requests(addr: SocketAddr) -> [u16; 2] {
    let mut ports = [0; 2];
    for (i, cases) in [&FIRST_CONNECTION[..], &SECOND_CONNECTION[..]]
        .into_iter()
        .enumerate()
    {
        let mut conn = Connection::open(addr);
        ports[i] = conn.local_port();
        for case in cases {
            let (status, _) = conn.request(case.method, case.target, case.body);
            assert_eq!(status, case.status, "{} {}", case.method, case.target);
        }
    }
    ports
}

/// `{method} {url.path}` of a server span, which the cases are keyed by.
fn request_line(span: &FlatSpan) -> String {
    format!(
        "{} {}",
        span.attr("http.request.method").unwrap_or_default(),
        span.attr("url.path").unwrap_or_default()
    )
}

fn go_minor(version: &str) -> u32 {
    version
        .trim_start_matches("go")
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .expect("go version")
}

/// Checks the spans against the cases, exactly.
fn check_spans(spans: &[FlatSpan], addr: SocketAddr, ports: [u16; 2], started: SystemTime) {
    assert_eq!(
        spans.len(),
        6,
        "exactly one span per request: {:#?}",
        spans.iter().map(|s| &s.span.name).collect::<Vec<_>>()
    );
    // Looked up by request (names by route repeat without a route).
    let by_name: BTreeMap<String, &FlatSpan> = spans.iter().map(|s| (request_line(s), s)).collect();
    let version = fixture::go_version();
    let records_route = go_minor(&version) >= 23;
    let now = SystemTime::now();
    let mut goroutines = [None, None];
    for (conn, cases) in [&FIRST_CONNECTION[..], &SECOND_CONNECTION[..]]
        .into_iter()
        .enumerate()
    {
        for case in cases {
            let name = format!("{} {}", case.method, case.path);
            let span = by_name
                .get(name.as_str())
                .unwrap_or_else(|| panic!("no span {name:?} in {:?}", by_name.keys()));
            // Named by route (`{method} {http.route}`), else by method.
            let expected_name = match case.route.filter(|_| records_route) {
                Some(route) => format!("{} {route}", case.method),
                None => case.method.to_owned(),
            };
            assert_eq!(span.span.name, expected_name, "{name}");
            assert_eq!(span.span.kind, SpanKind::Server as i32, "{name}");
            assert_eq!(span.scope, "agent/net/http");
            assert_eq!(
                span.span.parent_span_id,
                Vec::<u8>::new(),
                "{name} is a root span"
            );
            assert_eq!(span.span.trace_id.len(), 16);
            assert_eq!(span.span.span_id.len(), 8);
            let a = |k: &str| span.attr(k).map(str::to_owned);
            assert_eq!(
                a("http.request.method").as_deref(),
                Some(case.method),
                "{name}"
            );
            assert_eq!(a("url.path").as_deref(), Some(case.path), "{name}");
            assert_eq!(a("url.query").as_deref(), case.query, "{name}");
            assert_eq!(a("url.scheme").as_deref(), Some("http"), "{name}");
            assert_eq!(
                a("http.response.status_code"),
                Some(case.status.to_string()),
                "{name}"
            );
            assert_eq!(a("server.address").as_deref(), Some("127.0.0.1"), "{name}");
            assert_eq!(a("server.port"), Some(addr.port().to_string()), "{name}");
            assert_eq!(a("client.address").as_deref(), Some("127.0.0.1"), "{name}");
            assert_eq!(a("client.port"), Some(ports[conn].to_string()), "{name}");
            assert_eq!(a("network.protocol.name").as_deref(), Some("http"));
            assert_eq!(a("network.protocol.version").as_deref(), Some("1.1"));
            let body_size = (!case.body.is_empty()).then(|| case.body.len().to_string());
            assert_eq!(a("http.request.body.size"), body_size, "{name}");
            if let Some(size) = case.response_body {
                assert_eq!(
                    a("http.response.body.size"),
                    Some(size.to_string()),
                    "{name}"
                );
            }
            if records_route {
                assert_eq!(a("http.route").as_deref(), case.route, "{name}");
            }
            let status = span.span.status.as_ref().map_or(0, |s| s.code);
            if case.status >= 500 {
                assert_eq!(status, StatusCode::Error as i32, "{name}");
                assert_eq!(a("error.type"), Some(case.status.to_string()));
            } else {
                assert_eq!(status, StatusCode::Unset as i32, "{name}");
                assert_eq!(a("error.type"), None);
            }
            assert!(a("agent.span.incomplete").is_none(), "{name} is complete");
            // One connection is served by one goroutine: its requests share it.
            let goid: u64 = a("goroutine.id")
                .expect("goroutine.id")
                .parse()
                .expect("goid");
            assert!(goid > 0);
            match goroutines[conn] {
                None => goroutines[conn] = Some(goid),
                Some(g) => assert_eq!(g, goid, "{name}: same connection, same goroutine"),
            }
            let start = UNIX_EPOCH + Duration::from_nanos(span.span.start_time_unix_nano);
            let end = UNIX_EPOCH + Duration::from_nanos(span.span.end_time_unix_nano);
            assert!(
                started <= start && start <= end && end <= now,
                "{name}: wall-clock times"
            );
        }
    }
    assert_ne!(
        goroutines[0], goroutines[1],
        "two connections, two goroutines"
    );
    assert!(by_name["GET /slow"].duration() >= Duration::from_millis(30));
}

fn check_resource(span: &FlatSpan, fixture_pid: u32, binary: &Path, service: &str) {
    let r = &span.resource;
    assert_eq!(r.get("service.name").map(String::as_str), Some(service));
    assert_eq!(r.get("process.pid"), Some(&fixture_pid.to_string()));
    assert_eq!(
        r.get("process.executable.path").map(String::as_str),
        Some(binary.to_str().expect("utf-8 path"))
    );
    assert_eq!(
        r.get("process.runtime.name").map(String::as_str),
        Some("go")
    );
    assert_eq!(
        r.get("process.runtime.version"),
        Some(&fixture::go_version())
    );
    let host = nix::unistd::gethostname().expect("hostname");
    assert_eq!(r.get("host.name").map(String::as_str), host.to_str());
    assert_eq!(
        r.get("telemetry.sdk.language").map(String::as_str),
        Some("rust")
    );
    assert_eq!(
        r.get("telemetry.sdk.name").map(String::as_str),
        Some("opentelemetry")
    );
}

#[test]
fn grpc_export_and_target_exit() {
    let binary = fixture::build("httpserver", &[]);
    let (mut server, addr) = fixture::start_httpserver(&binary);
    let receiver = Receiver::grpc();
    let mut agent = attach_grpc(server.pid(), &receiver);
    let started = SystemTime::now();
    let ports = send_requests(addr);
    receiver.wait_for_spans(6, Duration::from_secs(20));

    // The target exits: the agent flushes and exits 0 on its own.
    server.terminate();
    let status = agent.wait(AGENT_EXIT);
    assert!(status.success(), "agent exit: {status}");
    agent.wait_for_stderr("exited", Duration::from_secs(1));
    let spans = receiver.spans();
    check_spans(&spans, addr, ports, started);
    check_resource(&spans[0], server.pid(), &binary, "httpserver");
    let summary = agent.wait_for_stderr("spans exported", Duration::from_secs(1));
    assert!(summary.contains("agent: 6 spans exported"), "{summary}");
    assert!(summary.contains("ring buffer full: 0 records"), "{summary}");
}

#[test]
fn http_export_with_standard_variables_and_sigterm() {
    let binary = fixture::build("httpserver", &[]);
    let (server, addr) = fixture::start_httpserver(&binary);
    let receiver = Receiver::http();
    let mut cmd = command();
    cmd.args(["--pid", &server.pid().to_string()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cr3t")
        .env("OTEL_SERVICE_NAME", "checkout")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=test,service.namespace=shop",
        );
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    let started = SystemTime::now();
    let ports = send_requests(addr);
    receiver.wait_for_spans(6, Duration::from_secs(20));

    agent.signal(Signal::SIGTERM);
    let status = agent.wait(AGENT_EXIT);
    assert!(status.success(), "agent exit: {status}");
    let spans = receiver.spans();
    check_spans(&spans, addr, ports, started);
    check_resource(&spans[0], server.pid(), &binary, "checkout");
    let r = &spans[0].resource;
    assert_eq!(
        r.get("deployment.environment.name").map(String::as_str),
        Some("test")
    );
    assert_eq!(r.get("service.namespace").map(String::as_str), Some("shop"));
    for received in receiver.received() {
        assert_eq!(
            received.headers.get("x-api-key").map(String::as_str),
            Some("s3cr3t")
        );
    }
}

#[test]
fn jsonl_output_and_sigint() {
    let binary = fixture::build("httpserver", &[]);
    let (server, addr) = fixture::start_httpserver(&binary);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spans.jsonl");
    let mut cmd = command();
    cmd.args(["--pid", &server.pid().to_string()])
        .arg(format!("--output=jsonl={}", path.display()))
        .args(["--service-name", "from-flag"]);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    let started = SystemTime::now();
    let ports = send_requests(addr);
    // Spans are exported in batches within 200 ms; SIGINT flushes the rest.
    std::thread::sleep(Duration::from_millis(300));
    agent.signal(Signal::SIGINT);
    let status = agent.wait(AGENT_EXIT);
    assert!(status.success(), "agent exit: {status}");

    let text = std::fs::read_to_string(&path).expect("jsonl written");
    let requests: Vec<ExportTraceServiceRequest> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is an OTLP JSON request"))
        .collect();
    assert!(!requests.is_empty());
    // The OTLP JSON encoding: hex ids, camelCase fields, enums as integers.
    let first: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("line")).expect("json");
    let span = &first["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"].as_str().map(str::len), Some(32), "{span}");
    assert_eq!(span["spanId"].as_str().map(str::len), Some(16), "{span}");
    assert_eq!(span["kind"], 2, "{span}");
    let spans = flatten(requests.iter());
    check_spans(&spans, addr, ports, started);
    check_resource(&spans[0], server.pid(), &binary, "from-flag");
}

#[test]
fn console_output_by_default() {
    let binary = fixture::build("httpserver", &[]);
    let (server, addr) = fixture::start_httpserver(&binary);
    let mut cmd = command();
    cmd.args(["--pid", &server.pid().to_string()]);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    let mut conn = Connection::open(addr);
    assert_eq!(conn.request("GET", "/hello", b"").0, 200);
    assert_eq!(conn.request("PUT", "/fail", b"").0, 500);
    std::thread::sleep(Duration::from_millis(300));
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait(AGENT_EXIT).success());
    let out = agent.stdout_lines();
    let traces = out.iter().filter(|l| l.starts_with("trace ")).count();
    assert_eq!(traces, 2, "one trace per request:\n{}", out.join("\n"));
    assert!(
        out.iter().any(|l| l.starts_with("  GET /hello Server ")),
        "{}",
        out.join("\n")
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("  PUT /fail Server ") && l.ends_with(" ERROR")),
        "{}",
        out.join("\n")
    );
    assert!(
        out.iter()
            .any(|l| l.contains("http.response.status_code=500")),
        "{}",
        out.join("\n")
    );
}

/// One request of the HTTP/2 test: method, target, body, status, response
/// body size.
type H2Case = (&'static str, &'static str, &'static str, u16, i64);

const H2_TRACEPARENT: &str = "00-5ce0e9a56015fec5aadfa328ae398115-ab54a98ceb1f0ad2-01";
/// Sent with it, with whitespace and an empty member the span's copy drops.
const H2_TRACESTATE: &str = "rojo=00f067aa0ba902b7, ,congo=t61rcWkgMzE";

const H2_CASES: [H2Case; 4] = [
    ("GET", "/hello", "", 200, 5),
    ("POST", "/items/h2", "twelve bytes", 201, 5),
    ("PUT", "/fail", "", 500, 18),
    ("DELETE", "/missing", "", 404, 19),
];

/// HTTPS with ALPN: HTTP/2 requests (one connection, one stream and one
/// goroutine per request, ended by `http2responseWriter.handlerDone`) and an
/// HTTP/1.1 request over TLS, each exactly one span.
#[test]
fn http2_and_tls_requests() {
    let binary = fixture::build("httpserver", &[]);
    let (server, addr) = fixture::start_httpserver_with(&binary, &["-tls"]);
    let receiver = Receiver::grpc();
    let mut agent = attach_grpc(server.pid(), &receiver);

    // One curl run: its requests share one HTTP/2 connection.
    let mut curl = std::process::Command::new("curl");
    for (i, (method, target, body, _, _)) in H2_CASES.iter().enumerate() {
        if i > 0 {
            curl.arg("--next");
        }
        curl.args(["-sk", "--http2", "-X", method, "-o", "/dev/null"])
            .args(["-w", "%{http_code} %{http_version}\\n"]);
        if i == 0 {
            // Trace context over HTTP/2: the first request continues a trace.
            curl.args(["-H", &format!("traceparent: {H2_TRACEPARENT}")]);
            curl.args(["-H", &format!("tracestate: {H2_TRACESTATE}")]);
        }
        if !body.is_empty() {
            curl.args(["--data-binary", body]);
        }
        curl.arg(format!("https://{addr}{target}"));
    }
    let out = curl.output().expect("curl (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let expected: Vec<String> = H2_CASES
        .iter()
        .map(|(_, _, _, status, _)| format!("{status} 2"))
        .collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), expected, "curl: {out:?}");
    // And HTTP/1.1 over TLS: the HTTP/1 end probe.
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .arg(format!("https://{addr}/slow?ms=20"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 1.1");

    receiver.wait_for_spans(H2_CASES.len() + 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    agent.signal(Signal::SIGINT);
    assert!(agent.wait(AGENT_EXIT).success());
    // Each curl connection's TLS handshake, served by the fixture.
    let (net, spans) = split_net(receiver.spans());
    assert_eq!(net, ["TLS server handshake", "TLS server handshake"]);
    let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    assert_eq!(
        spans.len(),
        H2_CASES.len() + 1,
        "one span per request: {names:?}"
    );
    let records_route = go_minor(&fixture::go_version()) >= 23;
    let mut h2_ports = Vec::new();
    let mut goroutines = Vec::new();
    for (method, target, body, status, response_size) in H2_CASES {
        let name = format!("{method} {target}");
        let span = spans
            .iter()
            .find(|s| request_line(s) == name)
            .unwrap_or_else(|| panic!("no span {name:?} in {names:?}"));
        let a = |k: &str| span.attr(k).map(str::to_owned);
        assert_eq!(a("http.request.method").as_deref(), Some(method), "{name}");
        assert_eq!(a("url.path").as_deref(), Some(target), "{name}");
        assert_eq!(
            a("http.response.status_code"),
            Some(status.to_string()),
            "{name}"
        );
        assert_eq!(
            a("network.protocol.version").as_deref(),
            Some("2"),
            "{name}"
        );
        assert_eq!(a("url.scheme").as_deref(), Some("https"), "{name}");
        assert_eq!(
            a("http.response.body.size"),
            Some(response_size.to_string()),
            "{name}"
        );
        let request_size = (!body.is_empty()).then(|| body.len().to_string());
        assert_eq!(a("http.request.body.size"), request_size, "{name}");
        assert_eq!(a("server.port"), Some(addr.port().to_string()), "{name}");
        assert!(a("agent.span.incomplete").is_none(), "{name} is complete");
        if records_route && status != 404 {
            assert!(a("http.route").is_some(), "{name}: route");
        }
        let error = span.span.status.as_ref().map_or(0, |s| s.code);
        let expected = if status >= 500 {
            StatusCode::Error
        } else {
            StatusCode::Unset
        };
        assert_eq!(error, expected as i32, "{name}");
        let parent = hex(&span.span.parent_span_id);
        if (method, target) == ("GET", "/hello") {
            let trace = hex(&span.span.trace_id);
            assert_eq!(format!("00-{trace}-{parent}-01"), H2_TRACEPARENT, "{name}");
            assert_eq!(
                span.span.trace_state, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
                "{name}"
            );
        } else {
            assert!(parent.is_empty(), "{name} is a root span");
            assert!(span.span.trace_state.is_empty(), "{name}");
        }
        h2_ports.push(a("client.port").expect("client.port"));
        goroutines.push(a("goroutine.id").expect("goroutine.id"));
    }
    h2_ports.dedup();
    assert_eq!(h2_ports.len(), 1, "one HTTP/2 connection: {h2_ports:?}");
    goroutines.sort();
    goroutines.dedup();
    assert_eq!(goroutines.len(), H2_CASES.len(), "one goroutine per stream");

    let tls1 = spans
        .iter()
        .find(|s| request_line(s) == "GET /slow")
        .unwrap_or_else(|| panic!("no HTTP/1.1 span in {names:?}"));
    assert_eq!(tls1.attr("network.protocol.version"), Some("1.1"));
    assert_eq!(tls1.attr("url.scheme"), Some("https"));
    assert_eq!(tls1.attr("http.response.status_code"), Some("200"));
    assert!(tls1.duration() >= Duration::from_millis(20));
}
