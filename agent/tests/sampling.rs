//! End to end, as root: head sampling (`--sampler`, `OTEL_TRACES_SAMPLER`)
//! and instrumentation categories (`--instrument`, `--no-instrument`) on Go
//! servers built from source (`fixtures/httpserver`, `fixtures/sqlapp`,
//! `fixtures/frontapp`),
//! spans over OTLP gRPC to a real receiver, counts from `--summary-file`.
//!
//! A trace is decided once, where it enters the process: every span under
//! a sampled server span is exported, none under an unsampled one, and
//! every span left out is counted as `sampled_out`.

mod support;
use support::agent::AGENT_EXIT;
use support::sqlapp::SQL_SPANS;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use support::{
    agent::{Agent, command},
    fixture::{self, Running, start_httpclient, start_httpserver},
    http_client::Connection,
    otlp::{FlatSpan, Receiver, hex},
};

/// Spans one `GET /run` of the sqlapp fixture makes: its SERVER span and
/// its SQL calls.
const RUN_SPANS: usize = 1 + SQL_SPANS.len();

/// Starts the agent on `server` with `args` (and `env`), exporting to
/// `receiver` and writing its summary to `summary`; waits until attached.
fn agent(
    server: &Running,
    receiver: &Receiver,
    summary: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Agent {
    let mut cmd = command();
    cmd.args(["--pid", &server.pid().to_string()])
        .args([
            "--otlp-endpoint",
            &receiver.url(),
            "--otlp-protocol",
            "grpc",
        ])
        .arg("--summary-file")
        .arg(summary)
        .args(args)
        .envs(env.iter().copied());
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    agent
}

/// Stops the server (the agent exits with it) and returns the agent's
/// summary as key → value.
fn finish(mut server: Running, mut agent: Agent, summary: &Path) -> BTreeMap<String, u64> {
    server.terminate();
    let status = agent.wait(AGENT_EXIT);
    assert!(status.success(), "agent exit: {status}");
    let text = std::fs::read_to_string(summary).expect("summary file");
    text.lines()
        .filter_map(|line| line.split_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

fn count(summary: &BTreeMap<String, u64>, key: &str) -> u64 {
    *summary
        .get(key)
        .unwrap_or_else(|| panic!("{key} in the summary: {summary:?}"))
}

/// The body of a GET of the agent's `/metrics`.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The W3C trace flags of a span (OTLP keeps them in the low byte).
fn w3c_flags(span: &FlatSpan) -> u32 {
    span.span.flags & 0xff
}

/// The rule of the OpenTelemetry Go and Rust SDKs, written out again here:
/// the trace id's last 8 bytes, big-endian, shifted right once, below
/// `ratio * 2^63`.
fn ratio_keeps(trace_id: &[u8], ratio: f64) -> bool {
    let low = u64::from_be_bytes(trace_id[8..16].try_into().expect("16-byte trace id"));
    (low >> 1) < (ratio * (1u64 << 63) as f64) as u64
}

#[test]
fn trace_id_ratio_keeps_a_quarter_of_the_traces() {
    const REQUESTS: u64 = 4000;
    let binary = fixture::build("httpserver", &[]);
    let (server, addr) = start_httpserver(&binary);
    let receiver = Receiver::grpc();
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = dir.path().join("summary.txt");
    let agent = agent(
        &server,
        &receiver,
        &summary,
        &["--sampler", "traceidratio", "--sampler-arg", "0.25"],
        &[],
    );
    let mut conn = Connection::open(addr);
    for _ in 0..REQUESTS {
        assert_eq!(conn.request("GET", "/hello", b"").0, 200);
    }
    drop(conn);
    let summary = finish(server, agent, &summary);
    let spans = receiver.spans();
    let kept = spans.len() as u64;
    let low = REQUESTS * 22 / 100;
    let high = REQUESTS * 28 / 100;
    assert!(
        (low..=high).contains(&kept),
        "{kept} of {REQUESTS} traces kept: 25% +- 3% is {low}..={high}"
    );
    assert_eq!(count(&summary, "spans_exported"), kept);
    assert_eq!(
        count(&summary, "sampled_out"),
        REQUESTS - kept,
        "every request is exported or counted: {summary:?}"
    );
    for span in &spans {
        assert_eq!(span.span.kind, SpanKind::Server as i32);
        assert_eq!(w3c_flags(span), 0x01, "exported spans say sampled");
        assert!(
            ratio_keeps(&span.span.trace_id, 0.25),
            "trace {} kept against the SDKs' rule",
            hex(&span.span.trace_id)
        );
    }
}

/// `traceparent` values for request `i`: a trace id and span id of its own.
fn traceparent(i: u64, sampled: bool) -> String {
    format!(
        "00-{:016x}{:016x}-{:016x}-{}",
        0x5a5a_0000_0000_0000_u64 + i,
        0x1234_5678_9abc_def0_u64 ^ i,
        0xbeef_0000_0000_0000_u64 + i + 1,
        if sampled { "01" } else { "00" }
    )
}

#[test]
fn parent_based_follows_the_caller_and_keeps_or_drops_whole_traces() {
    const EACH: u64 = 5;
    let binary = fixture::build_module("sqlapp", &[]);
    let (server, addr) = start_httpserver(&binary);
    let receiver = Receiver::grpc();
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = dir.path().join("summary.txt");
    // The default sampler, parentbased_always_on, and an environment value
    // the specification says to warn about and ignore.
    let agent = agent(
        &server,
        &receiver,
        &summary,
        &[],
        &[("OTEL_TRACES_SAMPLER", "sometimes")],
    );
    let mut conn = Connection::open(addr);
    let mut sampled = Vec::new();
    for i in 0..2 * EACH {
        let keep = i % 2 == 0;
        let value = traceparent(i, keep);
        let (status, _) = conn.request_with("GET", "/run", &[("traceparent", &value)], b"");
        assert_eq!(status, 200);
        if keep {
            sampled.push(value);
        }
    }
    // And requests without a trace context: roots, sampled.
    for _ in 0..EACH {
        assert_eq!(conn.request("GET", "/run", b"").0, 200);
    }
    drop(conn);
    let warnings: Vec<String> = agent
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("OTEL_TRACES_SAMPLER"))
        .collect();
    assert_eq!(warnings.len(), 1, "warned once: {warnings:#?}");
    assert!(
        warnings[0].contains("\"sometimes\"") && warnings[0].contains("parentbased_always_on"),
        "{warnings:?}"
    );
    receiver.wait_for_spans(2 * EACH as usize * RUN_SPANS, Duration::from_secs(30));
    let summary = finish(server, agent, &summary);
    let spans = receiver.spans();

    let mut traces: BTreeMap<Vec<u8>, Vec<&FlatSpan>> = BTreeMap::new();
    for span in &spans {
        traces
            .entry(span.span.trace_id.clone())
            .or_default()
            .push(span);
    }
    assert_eq!(
        traces.len() as u64,
        2 * EACH,
        "the sampled callers' traces and the roots, nothing of the others"
    );
    for value in &sampled {
        let trace_id: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&value[3 + 2 * i..5 + 2 * i], 16).expect("hex"))
            .collect();
        let trace = traces
            .get(&trace_id)
            .unwrap_or_else(|| panic!("the sampled caller's trace {value} is exported"));
        assert_eq!(trace.len(), RUN_SPANS, "all of {value}: {trace:#?}");
        let server_span = trace
            .iter()
            .find(|s| s.span.kind == SpanKind::Server as i32)
            .expect("its server span");
        assert_eq!(hex(&server_span.span.parent_span_id), &value[36..52]);
        assert_eq!(server_span.span.flags, 0x301, "sampled, remote parent");
        for span in trace {
            assert_eq!(w3c_flags(span), 0x01, "{}", span.span.name);
            if span.span.kind != SpanKind::Server as i32 {
                assert_eq!(span.scope, "agent/database/sql");
                assert_eq!(span.span.parent_span_id, server_span.span.span_id);
            }
        }
    }
    for (id, trace) in &traces {
        assert_eq!(trace.len(), RUN_SPANS, "trace {} whole", hex(id));
        assert!(trace.iter().all(|s| w3c_flags(s) == 0x01));
    }
    assert_eq!(count(&summary, "spans_exported"), spans.len() as u64);
    assert_eq!(
        count(&summary, "sampled_out"),
        EACH * RUN_SPANS as u64,
        "every span of the unsampled callers' traces, and only those: {summary:?}"
    );
}

#[test]
fn a_request_and_everything_under_it_follow_the_callers_flag() {
    let (app, addrs) = start_httpclient(&fixture::build_module("frontapp", &[]));
    let receiver = Receiver::grpc();
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = dir.path().join("summary.txt");
    // Without the connection set-up spans: the first request opens the
    // connections the second reuses, so only the other spans make trees of
    // the same size for both.
    let agent = agent(
        &app,
        &receiver,
        &summary,
        &["--no-instrument", "tls,dns,net"],
        &[],
    );
    // The front handler calls the back service over HTTP/1.1 and HTTP/2,
    // gRPC, and SQLite, one query on a goroutine it starts.
    let (unsampled, sampled) = (traceparent(100, false), traceparent(101, true));
    let mut conn = Connection::open(addrs.front);
    for value in [&unsampled, &sampled] {
        let (status, body) = conn.request_with("GET", "/front", &[("traceparent", value)], b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    drop(conn);
    std::thread::sleep(Duration::from_secs(1));
    let summary = finish(app, agent, &summary);
    let spans = receiver.spans();
    let trace_of = |value: &str| value[3..35].to_owned();
    let in_trace = |value: &str| -> Vec<&FlatSpan> {
        spans
            .iter()
            .filter(|s| hex(&s.span.trace_id) == trace_of(value))
            .collect()
    };
    assert!(
        in_trace(&unsampled).is_empty(),
        "nothing of the unsampled caller's trace"
    );
    let tree = in_trace(&sampled);
    let front = tree
        .iter()
        .find(|s| s.span.kind == SpanKind::Server as i32)
        .expect("the front request's span");
    assert_eq!(front.span.name, "GET /front");
    assert!(tree.len() > 5, "the front request's children: {tree:#?}");
    let scopes: Vec<&str> = tree.iter().map(|s| s.scope.as_str()).collect();
    for scope in ["agent/net/http/client", "agent/grpc", "agent/database/sql"] {
        assert!(scopes.contains(&scope), "{scope} in the tree: {scopes:?}");
    }
    assert!(
        tree.iter().any(|s| s.scope == "agent/database/sql"
            && s.attr("goroutine.id") != front.attr("goroutine.id")),
        "the query on the goroutine the handler started is in the tree"
    );
    for span in &tree {
        assert_eq!(w3c_flags(span), 0x01, "{}", span.span.name);
    }
    // The back service's served calls are roots of their own (nothing
    // propagates the context to them), sampled for both requests.
    let roots: Vec<&FlatSpan> = spans
        .iter()
        .filter(|s| hex(&s.span.trace_id) != trace_of(&sampled))
        .collect();
    assert!(!roots.is_empty());
    for root in &roots {
        assert!(root.span.parent_span_id.is_empty(), "{}", root.span.name);
        assert_eq!(
            root.span.kind,
            SpanKind::Server as i32,
            "{}",
            root.span.name
        );
    }
    assert_eq!(roots.len() % 2, 0, "as many for each request: {roots:#?}");
    assert_eq!(count(&summary, "spans_exported"), spans.len() as u64);
    assert_eq!(
        count(&summary, "sampled_out"),
        tree.len() as u64,
        "the unsampled caller's tree, span for span as large as the sampled one's"
    );
}

#[test]
fn always_off_exports_nothing_and_counts_everything() {
    const RUNS: u64 = 6;
    let binary = fixture::build_module("sqlapp", &[]);
    let (server, addr) = start_httpserver(&binary);
    let receiver = Receiver::grpc();
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = dir.path().join("summary.txt");
    let mut agent = agent(
        &server,
        &receiver,
        &summary,
        &["--metrics-listen", "127.0.0.1:0"],
        &[("OTEL_TRACES_SAMPLER", "always_off")],
    );
    agent.wait_for_stderr("sampling: always_off", Duration::from_secs(5));
    let listen = agent.wait_for_stderr("metrics: serving http://", Duration::from_secs(1));
    let listen: SocketAddr = listen
        .split("serving http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|addr| addr.parse().ok())
        .expect("the metrics address in the log line");
    let mut conn = Connection::open(addr);
    for i in 0..RUNS {
        // Not even a sampled caller's trace.
        let value = traceparent(i, true);
        let headers: &[(&str, &str)] = if i % 2 == 0 {
            &[("traceparent", &value)]
        } else {
            &[]
        };
        assert_eq!(conn.request_with("GET", "/run", headers, b"").0, 200);
    }
    drop(conn);
    // The agent's metrics say the same (published once a second).
    let expected = format!(
        "agent_spans_sampled_out_total {}\n",
        RUNS * RUN_SPANS as u64
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(listen);
        if text.contains(&expected) {
            break;
        }
        assert!(Instant::now() < deadline, "{expected:?} never in:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let summary = finish(server, agent, &summary);
    assert_eq!(receiver.spans().len(), 0, "nothing exported");
    assert_eq!(count(&summary, "spans_exported"), 0);
    assert_eq!(
        count(&summary, "sampled_out"),
        RUNS * RUN_SPANS as u64,
        "every span counted: {summary:?}"
    );
    assert_eq!(count(&summary, "unmatched_ends"), 0);
}

#[test]
fn no_instrument_sql_attaches_no_sql_probes_and_still_traces_http() {
    let binary = fixture::build_module("sqlapp", &[]);
    let (server, addr) = start_httpserver(&binary);
    let receiver = Receiver::grpc();
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = dir.path().join("summary.txt");
    let mut agent = agent(
        &server,
        &receiver,
        &summary,
        &["-v", "--no-instrument", "sql"],
        &[],
    );
    let lines = agent.stderr_lines();
    let attached = |family: &str| {
        lines
            .iter()
            .filter(|l| l.contains(&format!("{family}: ")) && l.contains(" attached at "))
            .count()
    };
    assert!(attached("net/http") > 0, "HTTP probes attached: {lines:#?}");
    assert_eq!(attached("database/sql"), 0, "no SQL probe: {lines:#?}");
    let line = agent.wait_for_stderr("attached to PID", Duration::from_secs(1));
    assert!(line.contains(" 0 database/sql probes"), "{line}");

    let mut conn = Connection::open(addr);
    assert_eq!(conn.request("GET", "/run", b"").0, 200);
    drop(conn);
    let spans = receiver.wait_for_spans(1, Duration::from_secs(20));
    let summary = finish(server, agent, &summary);
    let spans_after = receiver.spans();
    assert_eq!(spans_after.len(), spans.len(), "nothing more arrived");
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(spans[0].span.name, "GET /run");
    assert_eq!(count(&summary, "spans_exported"), 1);

    // The environment's list, and a list that leaves nothing to trace.
    let (server, _) = start_httpserver(&binary);
    let output = command()
        .args(["--pid", &server.pid().to_string()])
        .env("AGENT_INSTRUMENT", "sql,grpc")
        .env("AGENT_NO_INSTRUMENT", "sql")
        .stdin(Stdio::null())
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("has nothing to trace"), "{stderr}");
    assert!(
        stderr.contains("net/http is turned off (--instrument grpc)"),
        "{stderr}"
    );
}

#[test]
fn bad_values_get_one_clear_line() {
    for (args, needle) in [
        (
            &["--sampler", "sometimes"][..],
            "invalid --sampler: unknown sampler \"sometimes\"",
        ),
        (
            &["--sampler", "traceidratio", "--sampler-arg", "1.5"],
            "invalid --sampler-arg: \"1.5\" is not a ratio",
        ),
        (
            &["--sampler-arg", "0.5"],
            "invalid --sampler-arg: the sampler parentbased_always_on takes no argument",
        ),
        (
            &["--instrument", "http,kafka"],
            "--instrument: unknown category \"kafka\"",
        ),
        (
            &["--no-instrument", "sq"],
            "--no-instrument: unknown category \"sq\"",
        ),
    ] {
        let output = command()
            .args(["--pid", &std::process::id().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run agent");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("agent: "), "{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
