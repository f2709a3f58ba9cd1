//! End to end, as root: server spans named by route. Each router (gin,
//! chi, gorilla/mux, echo) and ServeMux (1.22+ patterns, and Go 1.21's,
//! which records none) serves from a fixture module built from source; the
//! agent attaches with `--pid`; every request's span name and `http.route`
//! are asserted exactly.

mod support;
use support::agent::AGENT_EXIT;

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent::binary::{GoBinary, LIBRARY_FIELDS, OffsetSource};
use nix::sys::signal::Signal;
use support::{
    agent::{Agent, attach_grpc, command},
    fixture::{self, Running},
    http_client::Connection,
    otlp::{FlatSpan, Receiver},
};

/// A request and what its span must say: method, target, status, span
/// name, `http.route`.
type Case = (
    &'static str,
    &'static str,
    u16,
    &'static str,
    Option<&'static str>,
);

/// Builds the fixture module `fixtures/<name>` (its own go.mod); a
/// `name` ending in `-stripped` is built with `-ldflags=-s -w`.
fn build(name: &str) -> PathBuf {
    let (module, flags): (&str, &[&str]) = match name.strip_suffix("-stripped") {
        Some(module) => (module, &["-ldflags=-s -w"]),
        None => (name, &[]),
    };
    fixture::build_module(module, flags)
}

/// Starts a built fixture with the environment as it is (its go.mod
/// decides its GODEBUG defaults) and waits for its address.
fn start(binary: &Path) -> (Running, SocketAddr) {
    let mut child = Command::new(binary)
        .env_remove("GODEBUG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fixture");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        assert!(Instant::now() < deadline, "fixture did not start");
        let line = lines
            .next()
            .expect("fixture exited before listening")
            .expect("read fixture stdout");
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.parse().expect("fixture address");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Running { child }, addr)
}

/// Sends every case to `fixture` traced by an agent with `args`; returns
/// the spans and the agent's stderr.
fn trace(fixture: &str, args: &[&str], cases: &[Case]) -> (Vec<FlatSpan>, String) {
    let binary = build(fixture);
    let (server, addr) = start(&binary);
    let receiver = Receiver::grpc();
    let mut agent = if args.is_empty() {
        attach_grpc(server.pid(), &receiver)
    } else {
        let mut cmd = command();
        cmd.args(["--pid", &server.pid().to_string()])
            .args([
                "--otlp-endpoint",
                &receiver.url(),
                "--otlp-protocol",
                "grpc",
            ])
            .args(args);
        let mut agent = Agent::start(cmd);
        agent.wait_attached();
        agent
    };
    let mut conn = Connection::open(addr);
    for (method, target, status, _, _) in cases {
        assert_eq!(
            conn.request(method, target, b"").0,
            *status,
            "{fixture}: {method} {target}"
        );
    }
    receiver.wait_for_spans(cases.len(), Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    agent.signal(Signal::SIGINT);
    assert!(agent.wait(AGENT_EXIT).success());
    drop(server);
    agent.wait_for_stderr("spans exported", Duration::from_secs(1));
    (receiver.spans(), agent.stderr_lines().join("\n"))
}

/// Exactly one span per case, in order, with the case's name and route.
fn check(fixture: &str, (spans, _): &(Vec<FlatSpan>, String), cases: &[Case]) {
    let mut spans: Vec<&FlatSpan> = spans.iter().collect();
    spans.sort_by_key(|s| s.span.start_time_unix_nano);
    let got: Vec<(&str, Option<&str>)> = spans
        .iter()
        .map(|s| (s.span.name.as_str(), s.attr("http.route")))
        .collect();
    let want: Vec<(&str, Option<&str>)> = cases
        .iter()
        .map(|(_, _, _, name, route)| (*name, *route))
        .collect();
    assert_eq!(got, want, "{fixture}: (span name, http.route) per request");
    for (span, (method, target, status, _, _)) in spans.iter().zip(cases) {
        assert_eq!(span.attr("http.request.method"), Some(*method), "{fixture}");
        assert_eq!(
            span.attr("url.path"),
            Some(*target),
            "{fixture}: raw path kept"
        );
        assert_eq!(
            span.attr("http.response.status_code"),
            Some(status.to_string().as_str()),
            "{fixture}"
        );
    }
}

#[test]
fn gin_routes() {
    let cases = router_cases("routes-gin");
    check("routes-gin", &trace("routes-gin", &[], &cases), &cases);
}

#[test]
fn chi_routes() {
    let cases: [Case; 4] = [
        (
            "GET",
            "/users/42",
            200,
            "GET /users/{id}",
            Some("/users/{id}"),
        ),
        (
            "POST",
            "/files/a/b.txt",
            201,
            "POST /files/*",
            Some("/files/*"),
        ),
        (
            "GET",
            "/api/v1/items/7",
            200,
            "GET /api/v1/items/{item}",
            Some("/api/v1/items/{item}"),
        ),
        ("GET", "/nope", 404, "GET", None),
    ];
    check("routes-chi", &trace("routes-chi", &[], &cases), &cases);
}

#[test]
fn gorilla_mux_routes() {
    let cases = router_cases("routes-mux");
    check("routes-mux", &trace("routes-mux", &[], &cases), &cases);
}

#[test]
fn echo_routes() {
    let cases = router_cases("routes-echo");
    check("routes-echo", &trace("routes-echo", &[], &cases), &cases);
}

#[test]
fn servemux_patterns() {
    let cases: [Case; 3] = [
        (
            "GET",
            "/users/42",
            200,
            "GET /users/{id}",
            Some("/users/{id}"),
        ),
        (
            "GET",
            "/static/app.js",
            200,
            "GET /static/",
            Some("/static/"),
        ),
        ("GET", "/nope", 404, "GET", None),
    ];
    check(
        "routes-servemux",
        &trace("routes-servemux", &[], &cases),
        &cases,
    );
}

/// go.mod says `go 1.21`: Go 1.21's ServeMux, no `Request.Pattern`, so no
/// route: spans are named by method.
#[test]
fn servemux_121_has_no_route() {
    let cases: [Case; 3] = [
        ("GET", "/users/42", 200, "GET", None),
        ("GET", "/static/app.js", 200, "GET", None),
        ("GET", "/nope", 404, "GET", None),
    ];
    check(
        "routes-servemux121",
        &trace("routes-servemux121", &[], &cases),
        &cases,
    );
}

/// `--span-name=path`: the raw path names the span; the route is kept.
#[test]
fn span_name_path_keeps_the_old_naming() {
    let cases: [Case; 2] = [
        ("GET", "/users/42", 200, "GET /users/42", Some("/users/:id")),
        ("GET", "/nope", 404, "GET /nope", None),
    ];
    check(
        "routes-gin",
        &trace("routes-gin", &["--span-name=path"], &cases),
        &cases,
    );
}

/// The cases each router fixture serves (gin's, mux's and echo's patterns
/// differ only in their syntax).
fn router_cases(router: &str) -> [Case; 4] {
    let (user, files, item): (Case, Case, Case) = match router {
        "routes-gin" => (
            (
                "GET",
                "/users/42",
                200,
                "GET /users/:id",
                Some("/users/:id"),
            ),
            (
                "POST",
                "/files/a/b.txt",
                201,
                "POST /files/*path",
                Some("/files/*path"),
            ),
            (
                "GET",
                "/api/v1/items/7",
                200,
                "GET /api/v1/items/:item",
                Some("/api/v1/items/:item"),
            ),
        ),
        "routes-mux" => (
            (
                "GET",
                "/users/42",
                200,
                "GET /users/{id}",
                Some("/users/{id}"),
            ),
            (
                "POST",
                "/files/a/b.txt",
                201,
                "POST /files/{path:.*}",
                Some("/files/{path:.*}"),
            ),
            (
                "GET",
                "/api/v1/items/7",
                200,
                "GET /api/v1/items/{item}",
                Some("/api/v1/items/{item}"),
            ),
        ),
        "routes-echo" => (
            (
                "GET",
                "/users/42",
                200,
                "GET /users/:id",
                Some("/users/:id"),
            ),
            (
                "POST",
                "/files/a/b.txt",
                201,
                "POST /files/*",
                Some("/files/*"),
            ),
            (
                "GET",
                "/api/v1/items/7",
                200,
                "GET /api/v1/items/:item",
                Some("/api/v1/items/:item"),
            ),
        ),
        other => panic!("no cases for {other}"),
    };
    [user, files, item, ("GET", "/nope", 404, "GET", None)]
}

/// A stripped binary has no DWARF for the routers' structs: the offsets
/// come from the binary's own type descriptors, and the spans are named by
/// route exactly as with DWARF.
#[test]
fn stripped_routers_are_named_by_route() {
    for router in ["routes-gin", "routes-mux", "routes-echo"] {
        let stripped = format!("{router}-stripped");
        let cases = router_cases(router);
        let traced = trace(&stripped, &[], &cases);
        assert!(
            !traced.1.contains("router routes unavailable"),
            "{stripped}: {}",
            traced.1
        );
        check(&stripped, &traced, &cases);
    }
}

/// The routers' offsets read from type descriptors equal DWARF's, on the
/// fixtures built with DWARF, so a wrong inference fails here and not a
/// user's stripped binary.
#[test]
fn router_offsets_from_type_descriptors_equal_dwarf() {
    let mut compared = 0;
    for router in ["routes-gin", "routes-mux", "routes-echo"] {
        let bin = GoBinary::open(&build(router)).expect("open the fixture");
        assert!(bin.has_dwarf(), "{router} is built with DWARF");
        for (type_name, fields) in LIBRARY_FIELDS {
            for field in *fields {
                let Ok(dwarf) = bin.struct_field_offset(type_name, field) else {
                    // Another router's struct.
                    continue;
                };
                assert_eq!(
                    dwarf.source,
                    OffsetSource::Dwarf,
                    "{router}: {type_name}.{field}"
                );
                let inferred = bin
                    .inferred_field_offset(type_name, field)
                    .unwrap_or_else(|e| panic!("{router}: {type_name}.{field}: {e}"));
                assert_eq!(inferred.source, OffsetSource::TypeMetadata);
                assert_eq!(
                    (inferred.offset, inferred.size),
                    (dwarf.offset, dwarf.size),
                    "{router}: {type_name}.{field}"
                );
                compared += 1;
            }
        }
    }
    // gin's one field, mux's four, echo's one.
    assert_eq!(compared, 6);
}
