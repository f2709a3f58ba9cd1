//! End to end, as root: a Go program whose HTTP handler makes an HTTPS call
//! to a TLS server in the same process (net/http dials, looks `localhost`
//! up with Go's own resolver and shakes hands, client and server), looks a
//! name up, fails a lookup, dials a closed port and fails a handshake; the
//! agent attached, and every TLS, DNS and dial span asserted exactly: name,
//! parent (the handler's SERVER span, the HTTP call's CLIENT span, the dial
//! a lookup belongs to, or none for the server's handshakes), kind, status
//! and attributes. The same on a stripped build, where the offsets come
//! from the per-release table and error types have no names.

mod support;
use support::agent::AGENT_EXIT;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use support::{
    agent::attach_grpc,
    fixture::{Running, build},
    http_client::Connection,
    otlp::{FlatSpan, Receiver},
};

/// The addresses the `netapp` fixture prints.
struct Addrs {
    front: SocketAddr,
    tls_back: SocketAddr,
    refused: SocketAddr,
}

fn start_netapp(binary: &Path) -> (Running, Addrs) {
    let mut child = Command::new(binary)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fixture");
    let stdout = child.stdout.take().expect("stdout");
    let running = Running { child };
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut tls_back, mut refused) = (None, None);
    let front = loop {
        assert!(Instant::now() < deadline, "fixture did not start");
        let line = lines
            .next()
            .expect("fixture exited before listening")
            .expect("read fixture stdout");
        let addr = |prefix: &str| -> Option<SocketAddr> {
            line.strip_prefix(prefix)
                .map(|a| a.parse().expect("fixture address"))
        };
        if let Some(a) = addr("tls back on ") {
            tls_back = Some(a);
        } else if let Some(a) = addr("refused on ") {
            refused = Some(a);
        } else if let Some(a) = addr("listening on ") {
            break a;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let addrs = Addrs {
        front,
        tls_back: tls_back.expect("tls back address"),
        refused: refused.expect("refused address"),
    };
    (running, addrs)
}

/// Spans of one `/net`: the handler's SERVER span, the HTTPS call's CLIENT
/// span, the TLS server's SERVER span, and eleven of this family.
const SPANS: usize = 14;

/// Runs one `/net` under the agent; the spans and how many addresses
/// `localhost` has here.
fn run(binary: &Path) -> (Addrs, Vec<FlatSpan>, usize) {
    let (mut fixture, addrs) = start_netapp(binary);
    let receiver = Receiver::grpc();
    let mut agent = attach_grpc(fixture.pid(), &receiver);
    let mut conn = Connection::open(addrs.front);
    let (status, body) = conn.request("GET", "/net", b"");
    assert_eq!(status, 200);
    let body = String::from_utf8_lossy(&body).into_owned();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 5, "{body}");
    assert_eq!(
        [lines[0], lines[2], lines[3], lines[4]],
        [
            "200 HTTP/1.1",
            "lookup error",
            "dial error",
            "handshake error"
        ],
        "{body}"
    );
    let answers: usize = lines[1]
        .strip_suffix(" addresses")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{body}"));
    assert!(answers >= 1, "{body}");
    receiver.wait_for_spans(SPANS, Duration::from_secs(20));
    // Whatever else would come has come by now.
    std::thread::sleep(Duration::from_millis(300));
    fixture.terminate();
    let status = agent.wait(AGENT_EXIT);
    assert!(status.success(), "agent exit: {status}");
    let summary = agent.wait_for_stderr("spans exported", Duration::from_secs(1));
    assert!(
        summary.contains(&format!("agent: {SPANS} spans exported")),
        "{summary}"
    );
    (addrs, receiver.spans(), answers)
}

/// The one span of this family named `name` under `parent` (`None`: a
/// root span) whose status is an error or not.
fn one<'a>(
    spans: &'a [FlatSpan],
    name: &str,
    parent: Option<&FlatSpan>,
    error: bool,
) -> &'a FlatSpan {
    let found: Vec<&FlatSpan> = spans
        .iter()
        .filter(|s| s.scope == "agent/net" && s.span.name == name)
        .filter(|s| match parent {
            Some(p) => s.span.parent_span_id == p.span.span_id,
            None => s.span.parent_span_id.is_empty(),
        })
        .filter(|s| s.span.status.as_ref().is_some_and(|st| st.code != 0) == error)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{name} (error: {error}) under {:?}: {:#?}",
        parent.map(|p| &p.span.name),
        spans
            .iter()
            .map(|s| (&s.scope, &s.span.name, &s.attributes))
            .collect::<Vec<_>>()
    );
    found[0]
}

/// Checks kind, trace, status, time inside the parent and the attributes,
/// exactly (the goroutine and thread ids only for being there).
fn check(span: &FlatSpan, parent: Option<&FlatSpan>, want: &[(&str, String)]) {
    let what = format!("{} {:?}", span.span.name, span.attributes);
    assert_eq!(span.span.kind, SpanKind::Internal as i32, "{what}");
    let error = want.iter().any(|(k, _)| *k == "error.type");
    let code = span.span.status.as_ref().map_or(0, |s| s.code);
    let want_code = if error {
        StatusCode::Error
    } else {
        StatusCode::Unset
    };
    assert_eq!(code, want_code as i32, "{what}");
    if let Some(parent) = parent {
        assert_eq!(span.span.trace_id, parent.span.trace_id, "{what}");
        assert!(
            parent.span.start_time_unix_nano <= span.span.start_time_unix_nano
                && span.span.end_time_unix_nano <= parent.span.end_time_unix_nano,
            "{what}: inside its parent"
        );
    }
    assert_eq!(span.span.flags, 0x101, "{what}: sampled, local parent");
    let mut got = span.attributes.clone();
    for key in ["goroutine.id", "thread.id"] {
        let value = got.remove(key).unwrap_or_default();
        assert!(value.parse::<u64>().is_ok(), "{what}: {key}");
    }
    let want: BTreeMap<String, String> = want
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    assert_eq!(got, want, "{}", span.span.name);
}

/// What a stripped build names error types (it has no type names).
fn error_name(stripped: bool, name: &str) -> String {
    if stripped {
        "_OTHER".to_owned()
    } else {
        name.to_owned()
    }
}

fn assert_spans(addrs: &Addrs, spans: &[FlatSpan], answers: usize, stripped: bool) {
    assert_eq!(spans.len(), SPANS);
    let front = spans
        .iter()
        .find(|s| s.scope == "agent/net/http" && s.attr("url.path") == Some("/net"))
        .expect("the handler's server span");
    let client = spans
        .iter()
        .find(|s| s.scope == "agent/net/http/client")
        .expect("the HTTPS call's client span");
    assert_eq!(client.span.parent_span_id, front.span.span_id);
    let handler = front.attr("goroutine.id").expect("goroutine.id");
    let s = |v: &str| v.to_owned();
    let tls_port = addrs.tls_back.port().to_string();
    let tls_back = format!("localhost:{tls_port}");
    let tls13 = [
        ("tls.protocol.name", s("tls")),
        ("tls.protocol.version", s("1.3")),
        ("tls.cipher", s("TLS_AES_128_GCM_SHA256")),
    ];
    let connect_back = [
        ("server.address", s("localhost")),
        ("server.port", tls_port.clone()),
        ("network.transport", s("tcp")),
    ];
    let lookup_localhost = [
        ("dns.question.name", s("localhost")),
        ("dns.answers.count", answers.to_string()),
    ];

    // 1. The HTTPS call: net/http dials and shakes hands on goroutines the
    // call's goroutine created, which inherit its CLIENT span.
    let dial = one(spans, &format!("connect {tls_back}"), Some(client), false);
    check(dial, Some(client), &connect_back);
    assert_ne!(
        dial.attr("goroutine.id"),
        Some(handler),
        "its own goroutine"
    );
    let lookup = one(spans, "DNS lookup localhost", Some(dial), false);
    check(lookup, Some(dial), &lookup_localhost);
    let handshake = one(spans, "TLS client handshake localhost", Some(client), false);
    let mut ok = vec![("server.address", s("localhost"))];
    ok.extend(tls13.iter().cloned());
    ok.extend([("tls.resumed", s("false")), ("tls.established", s("true"))]);
    check(handshake, Some(client), &ok);
    // The server's side: on the connection's goroutine, where no span is
    // open (a root span); the name is the one the client asked for (SNI).
    let served = one(spans, "TLS server handshake", None, false);
    check(served, None, &ok);

    // 2. and 3. Lookups on the handler's goroutine.
    let lookup = one(spans, "DNS lookup localhost", Some(front), false);
    check(lookup, Some(front), &lookup_localhost);
    assert_eq!(lookup.attr("goroutine.id"), Some(handler));
    let failed = one(spans, "DNS lookup no..such", Some(front), true);
    check(
        failed,
        Some(front),
        &[
            ("dns.question.name", s("no..such")),
            ("error.type", error_name(stripped, "*net.DNSError")),
        ],
    );

    // 4. The refused dial (its lookup of an IP literal is no span).
    let refused = one(
        spans,
        &format!("connect {}", addrs.refused),
        Some(front),
        true,
    );
    check(
        refused,
        Some(front),
        &[
            ("server.address", s("127.0.0.1")),
            ("server.port", addrs.refused.port().to_string()),
            ("network.transport", s("tcp")),
            ("error.type", error_name(stripped, "*net.OpError")),
        ],
    );
    assert_eq!(refused.attr("goroutine.id"), Some(handler));

    // 5. tls.Dial: a dial (with its lookup), then a handshake the client
    // fails (it does not trust the certificate) and so does the server.
    let dial = one(spans, &format!("connect {tls_back}"), Some(front), false);
    check(dial, Some(front), &connect_back);
    let lookup = one(spans, "DNS lookup localhost", Some(dial), false);
    check(lookup, Some(dial), &lookup_localhost);
    let rejected = one(spans, "TLS client handshake localhost", Some(front), true);
    let mut failed = vec![("server.address", s("localhost"))];
    failed.extend(tls13.iter().cloned());
    failed.push(("tls.established", s("false")));
    let mut client_failed = failed.clone();
    client_failed.push((
        "error.type",
        error_name(stripped, "*crypto/tls.CertificateVerificationError"),
    ));
    check(rejected, Some(front), &client_failed);
    assert_eq!(rejected.attr("goroutine.id"), Some(handler));
    let refused_by_client = one(spans, "TLS server handshake", None, true);
    let mut server_failed = failed;
    server_failed.push((
        "error.type",
        error_name(stripped, "*crypto/tls.permanentError"),
    ));
    check(refused_by_client, None, &server_failed);
}

#[test]
fn tls_dns_and_dial_spans_are_children_of_the_span_open_on_their_goroutine() {
    let (addrs, spans, answers) = run(&build("netapp", &[]));
    assert_spans(&addrs, &spans, answers, false);
}

#[test]
fn a_stripped_build_gets_the_same_spans() {
    let (addrs, spans, answers) = run(&build("netapp", &["-ldflags=-s -w"]));
    assert_spans(&addrs, &spans, answers, true);
}

/// One release per minor version since Go 1.17, as `cargo xtask offsets`
/// measures them: the ones `cargo xtask setup` fetches, Debian's Go 1.19
/// (which it installs) and the installed Go (1.26).
const RELEASES: &[&str] = &[
    "go1.17.13",
    "go1.18.10",
    "debian-1.19",
    "go1.20.14",
    "go1.21.13",
    "go1.22.12",
    "go1.23.12",
    "go1.24.13",
    "go1.25.8",
    "local",
    "go1.27.4",
];

/// Where `cargo xtask setup` installs Debian's Go 1.19.
const DEBIAN_GO_119: &str = "/usr/lib/go-1.19/bin/go";

/// The functions, their argument registers and the table's offsets hold on
/// every release: the same spans from a stripped build of each.
#[test]
fn every_go_release_from_1_17_stripped() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("net_spans");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for release in RELEASES {
        let out = dir.join(format!("netapp-{release}-stripped"));
        let (go, toolchain) = match *release {
            "debian-1.19" => {
                assert!(
                    Path::new(DEBIAN_GO_119).exists(),
                    "Go 1.19 is needed at {DEBIAN_GO_119}: `cargo xtask setup` installs it"
                );
                (DEBIAN_GO_119.to_owned(), "local")
            }
            other => (support::fixture::go(), other),
        };
        let built = Command::new(go)
            .env("GOTOOLCHAIN", toolchain)
            .env("GOFLAGS", "-mod=mod")
            .env("CGO_ENABLED", "0")
            .current_dir(support::fixture::fixtures_dir())
            .args(["build", "-ldflags=-s -w", "-o"])
            .arg(&out)
            .arg("./netapp")
            .output()
            .expect("run go build");
        assert!(
            built.status.success(),
            "{release}: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        eprintln!("--- {release}");
        let (addrs, spans, answers) = run(&out);
        assert_spans(&addrs, &spans, answers, true);
    }
}
