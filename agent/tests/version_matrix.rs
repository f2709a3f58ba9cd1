//! The agent on the binaries people ship: the HTTP fixture built by every Go
//! release from 1.17 to the newest, plain and stripped (`-s -w`), plus a PIE
//! and a cgo build, each traced for real. Every build must give the same
//! correct spans. Toolchains come from Debian (Go 1.19) and the module proxy
//! (`GOTOOLCHAIN=goX.Y.Z`, cached by the go command). HTTP/2 is checked on
//! both layouts of the bundled HTTP/2 server's structs (1.17-1.19 and 1.20
//! on), stripped (offsets from the table), and on the newest release.

mod support;
use support::agent::AGENT_EXIT;
use support::sqlapp::SQL_SPANS;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use agent::binary::HIDE_TABLE_ENV;
use support::{
    agent::{Agent, attach_grpc, command as agent_command},
    fixture::{fixtures_dir, start_httpclient, start_httpserver, start_httpserver_with},
    http_client::Connection,
    otlp::{FlatSpan, Receiver, hex, split_net},
};

const DEBIAN_GO_119: &str = "/usr/lib/go-1.19/bin/go";

const TRACEPARENT_CROWDED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACEPARENT_ALONE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// Sent with `TRACEPARENT_CROWDED`; the span keeps it as it is.
const TRACESTATE_CROWDED: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

#[derive(Clone, Copy, Debug)]
enum Build {
    Plain,
    Stripped,
    Pie,
    /// `-buildmode=pie -ldflags=-s -w`.
    PieStripped,
    Cgo,
}

/// Builds the fixture with `toolchain` ("local", "debian-1.19" or a release).
fn build(toolchain: &str, kind: Build) -> PathBuf {
    build_package("httpserver", toolchain, kind)
}

/// Builds `fixtures/<name>` (or the cgo fixture) with `toolchain`.
fn build_package(name: &str, toolchain: &str, kind: Build) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("version_matrix");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let out = dir.join(format!("{name}-{toolchain}-{kind:?}"));
    let package = format!("./{name}");
    let mut cmd = match toolchain {
        "debian-1.19" => {
            assert!(
                Path::new(DEBIAN_GO_119).exists(),
                "Go 1.19 is needed at {DEBIAN_GO_119}: `cargo xtask setup` installs Debian's golang-1.19-go"
            );
            let mut c = Command::new(DEBIAN_GO_119);
            c.env("GOTOOLCHAIN", "local");
            c
        }
        "local" => {
            let mut c = Command::new("go");
            c.env("GOTOOLCHAIN", "local");
            c
        }
        release => {
            let mut c = Command::new("go");
            c.env("GOTOOLCHAIN", release);
            c
        }
    };
    // Go 1.17 rejects -buildvcs, which GOFLAGS may carry on build machines.
    cmd.env("GOFLAGS", "-mod=mod").current_dir(fixtures_dir());
    cmd.arg("build").arg("-o").arg(&out);
    let package = match kind {
        Build::Plain => package.as_str(),
        Build::Stripped => {
            cmd.arg("-ldflags=-s -w");
            package.as_str()
        }
        Build::Pie => {
            cmd.arg("-buildmode=pie");
            package.as_str()
        }
        Build::PieStripped => {
            cmd.args(["-buildmode=pie", "-ldflags=-s -w"]);
            package.as_str()
        }
        Build::Cgo => {
            cmd.env("CGO_ENABLED", "1");
            "./cgohttp"
        }
    };
    if !matches!(kind, Build::Cgo) {
        cmd.env("CGO_ENABLED", "0");
    }
    let output = cmd.arg(package).output().expect("run go build");
    assert!(
        output.status.success(),
        "{toolchain} {kind:?}: go build failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// Traces one build and checks its spans.
fn trace(toolchain: &str, kind: Build) {
    trace_with(toolchain, kind, None);
}

/// The agent on `pid`, exporting to `receiver`; `hide`: the Go release
/// (`1.27`) the offsets table is made not to know (the test-only
/// `AGENT_TEST_HIDE_TABLE_RELEASES`), so every offset a stripped build
/// needs is inferred from the binary.
fn attach(pid: u32, receiver: &Receiver, hide: Option<&str>) -> Agent {
    let Some(release) = hide else {
        return attach_grpc(pid, receiver);
    };
    let mut cmd = agent_command();
    cmd.env(HIDE_TABLE_ENV, release)
        .args(["--pid", &pid.to_string()])
        .args([
            "--otlp-endpoint",
            &receiver.url(),
            "--otlp-protocol",
            "grpc",
        ]);
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    agent
}

/// `agent inspect` on a stripped build of a release hidden from the table:
/// every offset the HTTP server probes read comes from the binary itself
/// (type metadata; the goid from machine code), none from the table.
fn assert_inferred(binary: &Path, release: &str) {
    let out = agent_command()
        .env(HIDE_TABLE_ENV, release)
        .arg("inspect")
        .arg(binary)
        .output()
        .expect("agent inspect");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let fields: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(": offset ") || l.contains(": unavailable: "))
        .collect();
    let goid = fields
        .iter()
        .find(|l| l.trim_start().starts_with("runtime.g.goid:"))
        .unwrap_or_else(|| panic!("no goid line:\n{text}"));
    assert!(goid.contains("from machine code ("), "{goid}");
    for line in &fields {
        assert!(!line.contains("from table"), "{line}");
        assert!(!line.contains("from DWARF"), "{line}");
    }
    for wanted in [
        "net/http.Request.Method:",
        "net/http.Request.URL:",
        "net/url.URL.Path:",
        "net/http.response.status:",
    ] {
        assert!(
            fields
                .iter()
                .any(|l| l.trim_start().starts_with(wanted) && l.contains("from type metadata")),
            "{wanted}\n{text}"
        );
    }
}

/// Traces one build and checks its spans (`hide`: see [`attach`]).
fn trace_with(toolchain: &str, kind: Build, hide: Option<&str>) {
    let binary = build(toolchain, kind);
    if let Some(release) = hide {
        assert_inferred(&binary, release);
    }
    let (server, addr) = start_httpserver(&binary);
    let receiver = Receiver::grpc();
    let mut agent = attach(server.pid(), &receiver, hide);
    let mut conn = Connection::open(addr);
    // The cgo fixture answers 200 to everything (its handler calls C).
    let cases = match kind {
        Build::Cgo => [
            ("GET", "/hello", 200),
            ("POST", "/items/m", 200),
            ("PUT", "/fail", 200),
        ],
        _ => [
            ("GET", "/hello", 200),
            ("POST", "/items/m", 201),
            ("PUT", "/fail", 500),
        ],
    };
    for (method, path, status) in cases {
        assert_eq!(
            conn.request(method, path, b"xy").0,
            status,
            "{toolchain} {kind:?}"
        );
    }
    // Trace context from the caller: among twenty-two more headers (a swiss
    // table of four groups, or four buckets and maybe an overflow bucket),
    // and alone in a small map.
    // Two of them have a name as long as "Traceparent", and two as long as
    // "Tracestate", so their names are read and compared too. The crowded
    // request also carries a `tracestate`.
    let fillers: Vec<(String, String)> = (0..18)
        .map(|i| (format!("X-Filler-Header-{i}"), format!("value {i}")))
        .chain((0..2).map(|i| (format!("X-Decoy-00{i}"), "00-decoy".to_owned())))
        .chain((0..2).map(|i| (format!("X-Decoy-1{i}"), "decoy=1".to_owned())))
        .collect();
    let mut crowded: Vec<(&str, &str)> = fillers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    crowded.insert(4, ("traceparent", TRACEPARENT_CROWDED));
    crowded.insert(12, ("tracestate", TRACESTATE_CROWDED));
    for (path, headers) in [
        ("/items/crowded", crowded.as_slice()),
        ("/items/alone", &[("Traceparent", TRACEPARENT_ALONE)][..]),
    ] {
        assert_eq!(
            conn.request_with("GET", path, headers, b"").0,
            200,
            "{toolchain} {kind:?} {path}"
        );
    }
    let spans = receiver.wait_for_spans(cases.len() + 2, Duration::from_secs(20));
    drop(server);
    assert!(agent.wait(AGENT_EXIT).success());
    assert_eq!(
        spans.len(),
        cases.len() + 2,
        "{toolchain} {kind:?}: one span per request"
    );
    for (name, traceparent, tracestate) in [
        (
            "GET /items/crowded",
            TRACEPARENT_CROWDED,
            TRACESTATE_CROWDED,
        ),
        ("GET /items/alone", TRACEPARENT_ALONE, ""),
    ] {
        let span = spans
            .iter()
            .find(|s| request_line(s) == name)
            .unwrap_or_else(|| panic!("{toolchain} {kind:?}: no span {name}"));
        let trace_id = hex(&span.span.trace_id);
        let parent = hex(&span.span.parent_span_id);
        assert_eq!(
            format!("00-{trace_id}-{parent}-01"),
            traceparent,
            "{toolchain} {kind:?} {name}: a child of the caller's span"
        );
        assert_eq!(span.span.flags, 0x301, "{toolchain} {kind:?} {name}");
        assert_eq!(
            span.span.trace_state, tracestate,
            "{toolchain} {kind:?} {name}: the caller's tracestate"
        );
    }
    let mut goroutine = None;
    for (method, path, status) in cases {
        let name = format!("{method} {path}");
        let span = spans
            .iter()
            .find(|s| request_line(s) == name)
            .unwrap_or_else(|| panic!("{toolchain} {kind:?}: no span {name}"));
        let what = format!("{toolchain} {kind:?} {name}");
        assert_eq!(span.attr("http.request.method"), Some(method), "{what}");
        assert_eq!(span.attr("url.path"), Some(path), "{what}");
        assert_eq!(span.attr("url.scheme"), Some("http"), "{what}");
        assert_eq!(
            span.attr("http.response.status_code"),
            Some(status.to_string().as_str()),
            "{what}"
        );
        assert_eq!(
            span.attr("server.port"),
            Some(addr.port().to_string().as_str()),
            "{what}"
        );
        assert_eq!(span.attr("client.address"), Some("127.0.0.1"), "{what}");
        assert_eq!(span.attr("http.request.body.size"), Some("2"), "{what}");
        assert_eq!(span.attr("network.protocol.version"), Some("1.1"), "{what}");
        assert!(span.span.parent_span_id.is_empty(), "{what}: a root span");
        let goid = span.attr("goroutine.id").expect("goroutine.id").to_owned();
        assert_ne!(goid, "0", "{what}");
        // One keep-alive connection: one goroutine for all three.
        assert_eq!(
            *goroutine.get_or_insert_with(|| goid.clone()),
            goid,
            "{what}"
        );
    }
}

/// HTTP/2 requests over TLS (curl, one connection) to one build.
fn trace_h2(toolchain: &str, kind: Build) {
    trace_h2_with(toolchain, kind, None);
}

/// [`trace_h2`], with `hide` as [`attach`] takes it.
fn trace_h2_with(toolchain: &str, kind: Build, hide: Option<&str>) {
    let binary = build(toolchain, kind);
    let (server, addr) = start_httpserver_with(&binary, &["-tls"]);
    let receiver = Receiver::grpc();
    let mut agent = attach(server.pid(), &receiver, hide);
    let out = Command::new("curl")
        .args(["-sk", "--http2", "-o", "/dev/null", "-w", "%{http_code}\\n"])
        .arg(format!("https://{addr}/hello"))
        .args([
            "--next",
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\\n",
        ])
        .args(["-X", "PUT", &format!("https://{addr}/fail")])
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200\n500\n",
        "{toolchain} {kind:?}: {out:?}"
    );
    // Two requests, and curl's connection's TLS handshake.
    receiver.wait_for_spans(3, Duration::from_secs(20));
    drop(server);
    assert!(agent.wait(AGENT_EXIT).success());
    let (net, spans) = split_net(receiver.spans());
    assert_eq!(net, ["TLS server handshake"], "{toolchain} {kind:?}");
    assert_eq!(spans.len(), 2, "{toolchain} {kind:?}: one span per request");
    for (name, status, body) in [("GET /hello", "200", "5"), ("PUT /fail", "500", "18")] {
        let what = format!("{toolchain} {kind:?} HTTP/2 {name}");
        let span = spans
            .iter()
            .find(|s| request_line(s) == name)
            .unwrap_or_else(|| panic!("{what}: no span"));
        assert_eq!(
            span.attr("http.response.status_code"),
            Some(status),
            "{what}"
        );
        assert_eq!(span.attr("http.response.body.size"), Some(body), "{what}");
        assert_eq!(span.attr("network.protocol.version"), Some("2"), "{what}");
        assert_eq!(span.attr("url.scheme"), Some("https"), "{what}");
        assert_eq!(span.attr("agent.span.incomplete"), None, "{what}");
    }
}

/// ServeMux patterns over HTTP/2 without TLS (`curl --http2-prior-knowledge`,
/// one connection) to the routes fixture built by `toolchain`: each span is
/// named by its route. Go 1.27 moved the HTTP/2 server to
/// net/http/internal/http2, whose end holds no `*http.Request`: the kernel
/// keeps the one the start saw for the pattern.
fn trace_h2_routes(toolchain: &str, kind: Build) {
    let binary = build_module("routes-servemux", toolchain, kind);
    let (server, addr) = start_httpserver_with(&binary, &[]);
    let receiver = Receiver::grpc();
    let mut agent = attach_grpc(server.pid(), &receiver);
    let cases = [
        ("/users/42", "200", "GET /users/{id}", Some("/users/{id}")),
        ("/static/app.js", "200", "GET /static/", Some("/static/")),
        ("/nope", "404", "GET", None),
    ];
    // One connection per request: curl 7.88 sends nothing for a second
    // request on a reused prior-knowledge connection.
    for (path, status, _, _) in cases {
        let out = Command::new("curl")
            .args(["-s", "--http2-prior-knowledge", "-o", "/dev/null"])
            .args(["-w", "%{http_code}"])
            .arg(format!("http://{addr}{path}"))
            .output()
            .expect("curl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            status,
            "{toolchain} {kind:?} {path}: {out:?}"
        );
    }
    let spans = receiver.wait_for_spans(cases.len(), Duration::from_secs(20));
    drop(server);
    assert!(agent.wait(AGENT_EXIT).success());
    assert_eq!(
        spans.len(),
        cases.len(),
        "{toolchain} {kind:?}: one span per request"
    );
    for (path, status, name, route) in cases {
        let what = format!("{toolchain} {kind:?} HTTP/2 {path}");
        let span = spans
            .iter()
            .find(|s| s.attr("url.path") == Some(path))
            .unwrap_or_else(|| panic!("{what}: no span"));
        assert_eq!(span.span.name, name, "{what}");
        assert_eq!(span.attr("http.route"), route, "{what}");
        assert_eq!(
            span.attr("http.response.status_code"),
            Some(status),
            "{what}"
        );
        assert_eq!(span.attr("network.protocol.version"), Some("2"), "{what}");
        assert_eq!(span.attr("url.scheme"), Some("http"), "{what}");
        assert_eq!(span.attr("agent.span.incomplete"), None, "{what}");
    }
}

/// The newest release the module proxy serves (also in the offsets table):
/// HTTP/1 and HTTP/2 over TLS, plain, stripped (offsets from the table) and
/// PIE, and ServeMux routes over HTTP/2.
#[test]
fn go_1_27() {
    trace("go1.27.4", Build::Plain);
    trace("go1.27.4", Build::Stripped);
    trace("go1.27.4", Build::Pie);
    trace_h2("go1.27.4", Build::Stripped);
    trace_h2("go1.27.4", Build::Pie);
    trace_h2_routes("go1.27.4", Build::Plain);
    trace_h2_routes("go1.27.4", Build::Stripped);
}

/// Go 1.27 stripped and PIE (`-s -w`) with the offsets table made not to
/// know 1.27: every struct offset comes from the binary's own type
/// descriptors and machine code, and the spans are as exact as with DWARF
/// (the same assertions as every other build: methods, paths, statuses,
/// body sizes, trace context through the Header map, one goroutine id per
/// connection; HTTP/2 over TLS, with its TLS handshake span).
#[test]
fn go_1_27_unknown_to_the_table() {
    trace_with("go1.27.4", Build::Stripped, Some("1.27"));
    trace_with("go1.27.4", Build::PieStripped, Some("1.27"));
    trace_h2_with("go1.27.4", Build::Stripped, Some("1.27"));
    trace_h2_with("go1.27.4", Build::PieStripped, Some("1.27"));
}

/// ServeMux routes over HTTP/2 on the bundled server (Go 1.26), whose end
/// reads the request from its own state.
#[test]
fn h2_routes_local() {
    trace_h2_routes("local", Build::Plain);
    trace_h2_routes("local", Build::Stripped);
}

/// The client fixture's calls from one handler: six CLIENT spans, each a
/// child of the handler's SERVER span. A stripped binary has no symbols to
/// name an error's type by.
fn trace_client(toolchain: &str, kind: Build) {
    let binary = build_package("httpclient", toolchain, kind);
    let (server, addrs) = start_httpclient(&binary);
    let receiver = Receiver::grpc();
    let mut agent = attach_grpc(server.pid(), &receiver);
    let mut conn = Connection::open(addrs.front);
    assert_eq!(conn.request("GET", "/call", b"").0, 200);
    // Twelve, and the five connection set-up spans (tests/http_client.rs).
    receiver.wait_for_spans(17, Duration::from_secs(20));
    drop(server);
    assert!(agent.wait(AGENT_EXIT).success());
    let (net, spans) = split_net(receiver.spans());
    assert_eq!(net.len(), 5, "{toolchain} {kind:?}: {net:?}");
    let what = format!("{toolchain} {kind:?}");
    let front = spans
        .iter()
        .find(|s| s.scope == "agent/net/http" && request_line(s) == "GET /call")
        .unwrap_or_else(|| panic!("{what}: no front span"));
    let mut clients: Vec<_> = spans
        .iter()
        .filter(|s| s.scope == "agent/net/http/client")
        .collect();
    clients.sort_by_key(|s| s.span.start_time_unix_nano);
    let refused_type = match kind {
        Build::Stripped => "_OTHER",
        _ => "*net.OpError",
    };
    let (back, tls, refused) = (addrs.back, addrs.tls_back, addrs.refused);
    let want = [
        (
            "GET",
            format!("http://{back}/ok"),
            Some("200"),
            Some("1.1"),
            None,
        ),
        (
            "GET",
            format!("https://{tls}/ok"),
            Some("200"),
            Some("2"),
            None,
        ),
        (
            "GET",
            format!("http://{refused}/refused"),
            None,
            None,
            Some(refused_type),
        ),
        (
            "GET",
            format!("http://{back}/unavailable"),
            Some("503"),
            Some("1.1"),
            Some("503"),
        ),
        (
            "GET",
            format!("http://{back}/ok?token=REDACTED&q=REDACTED"),
            Some("200"),
            Some("1.1"),
            None,
        ),
        (
            "HTTP",
            format!("http://{back}/ok"),
            Some("200"),
            Some("1.1"),
            None,
        ),
    ];
    assert_eq!(clients.len(), want.len(), "{what}");
    for (span, (name, url, status, proto, error)) in clients.iter().zip(want) {
        let what = format!("{what} {url}");
        assert_eq!(span.span.name, name, "{what}");
        assert_eq!(span.span.parent_span_id, front.span.span_id, "{what}");
        assert_eq!(span.span.trace_id, front.span.trace_id, "{what}");
        assert_eq!(span.attr("url.full"), Some(url.as_str()), "{what}");
        assert_eq!(span.attr("http.response.status_code"), status, "{what}");
        assert_eq!(span.attr("network.protocol.version"), proto, "{what}");
        assert_eq!(span.attr("error.type"), error, "{what}");
    }
}

#[test]
fn go_1_17() {
    trace("go1.17.13", Build::Plain);
    trace("go1.17.13", Build::Stripped);
    trace_h2("go1.17.13", Build::Stripped);
    trace_client("go1.17.13", Build::Plain);
    trace_client("go1.17.13", Build::Stripped);
}

#[test]
fn go_1_18() {
    trace("go1.18.10", Build::Plain);
    trace("go1.18.10", Build::Stripped);
}

#[test]
fn go_1_19_debian() {
    trace("debian-1.19", Build::Plain);
    trace("debian-1.19", Build::Stripped);
}

#[test]
fn go_1_20() {
    trace("go1.20.14", Build::Plain);
    trace("go1.20.14", Build::Stripped);
    trace_h2("go1.20.14", Build::Stripped);
}

#[test]
fn go_1_21() {
    trace("go1.21.13", Build::Plain);
    trace("go1.21.13", Build::Stripped);
}

#[test]
fn go_1_22() {
    trace("go1.22.12", Build::Plain);
    trace("go1.22.12", Build::Stripped);
}

#[test]
fn go_1_23() {
    trace("go1.23.12", Build::Plain);
    trace("go1.23.12", Build::Stripped);
}

#[test]
fn go_1_24() {
    trace("go1.24.13", Build::Plain);
    trace("go1.24.13", Build::Stripped);
}

#[test]
fn go_1_25() {
    trace("go1.25.8", Build::Plain);
    trace("go1.25.8", Build::Stripped);
}

#[test]
fn newest_plain_stripped_pie_and_cgo() {
    trace("local", Build::Plain);
    trace("local", Build::Stripped);
    trace("local", Build::Pie);
    trace("local", Build::Cgo);
    trace_h2("local", Build::Plain);
    trace_client("local", Build::Plain);
    trace_client("local", Build::Stripped);
    trace_client("local", Build::Pie);
}

/// Builds the fixture module `fixtures/<module>` (one with requirements,
/// prefetched by `cargo xtask setup`) with `toolchain`, stripped or PIE.
fn build_module(module: &str, toolchain: &str, kind: Build) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("version_matrix");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let out = dir.join(format!("{module}-{toolchain}-{kind:?}"));
    let mut cmd = Command::new("go");
    cmd.env("GOTOOLCHAIN", toolchain)
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0")
        .current_dir(fixtures_dir().join(module))
        .args(["build", "-o"])
        .arg(&out);
    match kind {
        Build::Stripped => cmd.arg("-ldflags=-s -w"),
        Build::Pie => cmd.arg("-buildmode=pie"),
        Build::PieStripped => cmd.args(["-buildmode=pie", "-ldflags=-s -w"]),
        Build::Plain | Build::Cgo => &mut cmd,
    };
    let output = cmd.arg(".").output().expect("run go build");
    assert!(
        output.status.success(),
        "{module} {toolchain} {kind:?}: go build failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// The SQL fixture (`module`: sqlapp, or sqlapp-old with an older
/// modernc.org/sqlite for older Go) built by `toolchain`: every
/// database/sql call one exact CLIENT span under the request's span. A
/// stripped binary has no itab symbols to name the driver or an error's
/// type by (its offsets come from the table).
fn trace_sql(module: &str, toolchain: &str, kind: Build) {
    let binary = build_module(module, toolchain, kind);
    let (mut server, addr) = start_httpserver(&binary);
    let receiver = Receiver::grpc();
    let mut agent = attach_grpc(server.pid(), &receiver);
    let what = format!("{module} {toolchain} {kind:?}");
    let mut conn = Connection::open(addr);
    let (status, body) = conn.request("GET", "/run", b"");
    assert_eq!(status, 200, "{what}: {}", String::from_utf8_lossy(&body));
    receiver.wait_for_spans(1 + SQL_SPANS.len(), Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    server.terminate();
    assert!(agent.wait(AGENT_EXIT).success(), "{what}");
    let spans = receiver.spans();
    assert_eq!(
        spans.len(),
        1 + SQL_SPANS.len(),
        "{what}: {:#?}",
        spans.iter().map(|s| &s.span.name).collect::<Vec<_>>()
    );
    let request = spans
        .iter()
        .find(|s| request_line(s) == "GET /run")
        .unwrap_or_else(|| panic!("{what}: no request span"));
    let mut sql: Vec<_> = spans
        .iter()
        .filter(|s| s.scope == "agent/database/sql")
        .collect();
    sql.sort_by_key(|s| s.span.start_time_unix_nano);
    assert_eq!(sql.len(), SQL_SPANS.len(), "{what}");
    let (system, error_type) = match kind {
        Build::Stripped => ("other_sql", "_OTHER"),
        _ => ("sqlite", "*modernc.org/sqlite.Error"),
    };
    for (span, (name, op, coll, text, fails)) in sql.iter().zip(SQL_SPANS) {
        let name = if name == "sqlite" { system } else { name };
        let what = format!("{what} {name}");
        let s = &span.span;
        assert_eq!(s.name, name, "{what}");
        assert_eq!(s.kind, 3, "{what}: CLIENT");
        assert_eq!(s.trace_id, request.span.trace_id, "{what}");
        assert_eq!(s.parent_span_id, request.span.span_id, "{what}");
        assert!(s.start_time_unix_nano >= request.span.start_time_unix_nano);
        assert!(s.end_time_unix_nano <= request.span.end_time_unix_nano);
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
        assert_eq!(span.attr("db.system.name"), Some(system), "{what}");
        assert_eq!(span.attr("db.operation.name"), op, "{what}");
        assert_eq!(span.attr("db.collection.name"), coll, "{what}");
        assert_eq!(span.attr("db.query.text"), text, "{what}");
        let status = s.status.as_ref().map_or(0, |st| st.code);
        assert_eq!(status, if fails { 2 } else { 0 }, "{what}: status");
        assert_eq!(
            span.attr("error.type"),
            fails.then_some(error_type),
            "{what}"
        );
        assert_eq!(
            span.attr("goroutine.id"),
            request.attr("goroutine.id"),
            "{what}: on the handler's goroutine"
        );
    }
}

/// `GET /call` of the grpc fixtures: the body.
fn grpc_call(addr: std::net::SocketAddr) -> String {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
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

/// The grpc fixture (`module`: grpcapp, or grpcapp-old pinning an old grpc)
/// built by `toolchain`: three CLIENT spans under the handler's span, three
/// SERVER spans, the first continuing the caller's trace from its metadata
/// (as tests/grpc.rs asserts). A stripped binary takes its offsets from the
/// module table, and has no itab symbol to recognise a status error by (nor
/// has any Go 1.27 build): its failed client call is Unknown (2).
fn trace_grpc(module: &str, toolchain: &str, kind: Build, grpc: &str, reflection: &'static str) {
    let binary = build_module(module, toolchain, kind);
    let (mut app, addr) = start_httpserver(&binary);
    let receiver = Receiver::grpc();
    let mut agent = attach_grpc(app.pid(), &receiver);
    let what = format!("{module} {toolchain} {kind:?}");
    agent.wait_for_stderr(&format!("grpc {grpc}: "), Duration::from_secs(5));
    let body = grpc_call(addr);
    assert!(body.contains("check: OK"), "{what}: {body}");
    assert!(body.contains("missing: NotFound"), "{what}: {body}");
    assert!(body.contains("stream: OK"), "{what}: {body}");
    let grpc_port = body
        .lines()
        .find_map(|l| l.strip_prefix("target: 127.0.0.1:"))
        .expect("gRPC address in the body")
        .to_owned();
    // Seven, and the client's dial where it dials on its first call
    // (`grpc.NewClient`; `grpc.Dial` in grpcapp-old connects at start,
    // before the agent attaches).
    let want_net: Vec<String> = if module == "grpcapp" {
        vec![format!("connect 127.0.0.1:{grpc_port}")]
    } else {
        Vec::new()
    };
    receiver.wait_for_spans(7 + want_net.len(), Duration::from_secs(20));
    app.terminate();
    assert!(agent.wait(AGENT_EXIT).success(), "{what}");
    let (net, spans) = split_net(receiver.spans());
    assert_eq!(net, want_net, "{what}");
    assert_eq!(
        spans.len(),
        7,
        "{what}: {:#?}",
        spans
            .iter()
            .map(|s| (&s.span.name, s.span.kind))
            .collect::<Vec<_>>()
    );
    let http = spans
        .iter()
        .find(|s| request_line(s) == "GET /call")
        .unwrap_or_else(|| panic!("{what}: no HTTP span"));
    let of_kind = |kind: i32| {
        let mut v: Vec<_> = spans
            .iter()
            .filter(|s| s.scope == "agent/grpc" && s.span.kind == kind)
            .collect();
        v.sort_by_key(|s| s.span.start_time_unix_nano);
        v
    };
    // The client's status code needs the `go:itab.*status.Error,error`
    // symbol: a stripped binary has no symbols, and Go 1.27 names no itab
    // symbols at all. Without it a failed call is Unknown (2).
    let itab_symbol = !matches!(kind, Build::Stripped) && !toolchain.starts_with("go1.27");
    let missing_client = if itab_symbol { "5" } else { "2" };
    let calls = [
        ("grpc.health.v1.Health", "Check", "0", "0"),
        ("grpc.health.v1.Health", "Check", missing_client, "5"),
        (reflection, "ServerReflectionInfo", "0", "0"),
    ];
    let clients = of_kind(3);
    let servers = of_kind(2);
    assert_eq!((clients.len(), servers.len()), (3, 3), "{what}");
    for ((client, server), (service, method, client_code, server_code)) in
        clients.iter().zip(&servers).zip(calls)
    {
        let name = format!("{service}/{method}");
        let what = format!("{what} {name}");
        for (span, code) in [(client, client_code), (server, server_code)] {
            assert_eq!(span.span.name, name, "{what}");
            assert_eq!(span.attr("rpc.system"), Some("grpc"), "{what}");
            assert_eq!(span.attr("rpc.service"), Some(service), "{what}");
            assert_eq!(span.attr("rpc.method"), Some(method), "{what}");
            assert_eq!(span.attr("rpc.grpc.status_code"), Some(code), "{what}");
        }
        assert_eq!(client.attr("server.address"), Some("127.0.0.1"), "{what}");
        assert_eq!(
            client.attr("server.port"),
            Some(grpc_port.as_str()),
            "{what}"
        );
        assert_eq!(client.span.trace_id, http.span.trace_id, "{what}");
        assert_eq!(client.span.parent_span_id, http.span.span_id, "{what}");
        let client_status = client.span.status.as_ref().map_or(0, |s| s.code);
        assert_eq!(
            client_status,
            if client_code == "0" { 0 } else { 2 },
            "{what}"
        );
        let server_status = server.span.status.as_ref().map_or(0, |s| s.code);
        assert_eq!(server_status, 0, "{what}: NotFound is no server error");
        assert!(
            server.span.start_time_unix_nano >= client.span.start_time_unix_nano,
            "{what}"
        );
    }
    assert_eq!(hex(&servers[0].span.trace_id), &TRACEPARENT_CROWDED[3..35]);
    assert_eq!(
        hex(&servers[0].span.parent_span_id),
        &TRACEPARENT_CROWDED[36..52]
    );
    for server in &servers[1..] {
        assert!(server.span.parent_span_id.is_empty(), "{what}: a root");
        assert_ne!(server.span.trace_id, http.span.trace_id, "{what}");
    }
}

const V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";
const V1: &str = "grpc.reflection.v1.ServerReflection";

/// The oldest Go modernc.org/sqlite builds with here (v1.29, Go 1.21).
#[test]
fn sql_go_1_21() {
    trace_sql("sqlapp-old", "go1.21.13", Build::Stripped);
    trace_sql("sqlapp-old", "go1.21.13", Build::Pie);
}

#[test]
fn sql_newest() {
    trace_sql("sqlapp", "local", Build::Stripped);
    trace_sql("sqlapp", "local", Build::Pie);
}

/// grpc v1.56 (June 2023: the frame in RBX, WriteStatus, no ServerStream)
/// built by Go 1.20; its fixture calls the v1alpha reflection service.
#[test]
fn grpc_v1_56_go_1_20() {
    trace_grpc(
        "grpcapp-old",
        "go1.20.14",
        Build::Stripped,
        "v1.56.3",
        V1ALPHA,
    );
    trace_grpc("grpcapp-old", "go1.20.14", Build::Pie, "v1.56.3", V1ALPHA);
}

/// The newest grpc built by the newest Go release.
#[test]
fn grpc_newest_go_1_27() {
    trace_grpc("grpcapp", "go1.27.4", Build::Stripped, "v1.85.0", V1);
    trace_grpc("grpcapp", "go1.27.4", Build::Pie, "v1.85.0", V1);
}

/// `{method} {url.path}` of a server span: its name by path, which the
/// cases look spans up by (names by route repeat across these requests).
fn request_line(span: &FlatSpan) -> String {
    format!(
        "{} {}",
        span.attr("http.request.method").unwrap_or_default(),
        span.attr("url.path").unwrap_or_default()
    )
}
