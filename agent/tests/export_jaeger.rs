//! As root, against a real backend: Jaeger (v2, all-in-one, in memory) built
//! by `cargo xtask setup`, the agent tracing the `httpclient` fixture (a
//! handler calling other servers: a SERVER span, CLIENT spans under it,
//! SERVER spans of the called servers under those), exporting over gRPC and
//! over HTTP. The spans are read back from Jaeger's HTTP query API and
//! compared with what the agent wrote to a JSONL file beside the export:
//! every span, its attributes, its parent and its service.

mod support;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, trace::v1::span::SpanKind,
};
use serde_json::Value;
use support::{
    agent::{AGENT_EXIT, Agent, command},
    fixture::{build, start_httpclient},
    http_client::Connection,
    otlp::{FlatSpan, flatten, hex, split_net},
};

/// The spans of one `/call`: the front SERVER span, six CLIENT spans, and
/// the five SERVER spans of the back servers (see tests/http_client.rs).
const SPANS_PER_CALL: usize = 12;

/// Where `cargo xtask setup` puts Jaeger (xtask/src/jaeger.rs; its unit
/// test checks the release named here).
fn jaeger_binary() -> PathBuf {
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        }
    };
    let binary = cache.join("agent").join("jaeger-v1.75.0").join("jaeger");
    assert!(
        binary.is_file(),
        "Jaeger is not built: {} is missing; run `cargo xtask setup`",
        binary.display()
    );
    binary
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A running Jaeger, killed when dropped.
struct Jaeger {
    child: Child,
    otlp_grpc: SocketAddr,
    otlp_http: SocketAddr,
    query: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Jaeger {
    fn start() -> Self {
        let binary = jaeger_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let (otlp_grpc, otlp_http, query, query_grpc) = (
            addr(free_port()),
            addr(free_port()),
            addr(free_port()),
            addr(free_port()),
        );
        // The all-in-one configuration cut down to OTLP in, memory storage
        // and the query API, every port chosen here (the defaults, 4317,
        // 4318 and 16686, may be taken on a CI machine).
        let config = format!(
            r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: "{query}"
    grpc:
      endpoint: "{query_grpc}"
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: "{otlp_grpc}"
      http:
        endpoint: "{otlp_http}"
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
        );
        let path = dir.path().join("jaeger.yaml");
        std::fs::write(&path, config).expect("write Jaeger config");
        let log = std::fs::File::create(dir.path().join("jaeger.log")).expect("log file");
        let child = Command::new(&binary)
            .arg("--config")
            .arg(format!("file:{}", path.display()))
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut jaeger = Self {
            child,
            otlp_grpc,
            otlp_http,
            query,
            _dir: dir,
        };
        jaeger.wait_ready();
        jaeger
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("jaeger.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Jaeger exited ({status}):\n{}", self.log());
            }
            let up = TcpStream::connect(self.otlp_grpc).is_ok()
                && TcpStream::connect(self.otlp_http).is_ok()
                && self.get("/api/services").0 == 200;
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Jaeger did not come up within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// GET over HTTP/1.0 (so the body is not chunked): status and body.
    fn get(&self, path: &str) -> (u16, String) {
        let Ok(mut stream) = TcpStream::connect(self.query) else {
            return (0, String::new());
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let request = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.query);
        if stream.write_all(request.as_bytes()).is_err() {
            return (0, String::new());
        }
        let mut response = String::new();
        if stream.read_to_string(&mut response).is_err() {
            return (0, String::new());
        }
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, body.to_owned())
    }

    /// The traces of `service`, waiting until they hold `spans` spans.
    fn traces(&self, service: &str, spans: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get(&format!("/api/traces?service={service}&limit=100"));
            if status == 200 {
                let json: Value = serde_json::from_str(&body).expect("Jaeger's answer is JSON");
                let traces = json["data"].as_array().cloned().unwrap_or_default();
                let found: usize = traces
                    .iter()
                    .map(|t| t["spans"].as_array().map_or(0, Vec::len))
                    .sum();
                if found >= spans {
                    return traces;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Jaeger did not have {spans} spans of {service} within 30 s (last answer {status}: {body})"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A span as Jaeger returns it, with its process's service.
#[derive(Debug)]
struct JaegerSpan {
    trace_id: String,
    span_id: String,
    parent: Option<String>,
    name: String,
    service: String,
    tags: BTreeMap<String, String>,
    process_tags: BTreeMap<String, String>,
}

/// A tag value as the OTLP receiver's `value_to_string` spells it.
fn tag_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn tags(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["key"].as_str()?.to_owned(), tag_value(&t["value"]))))
        .collect()
}

/// Jaeger prints a trace id without the leading zeros of its high half.
fn padded(id: &str, len: usize) -> String {
    format!("{id:0>len$}")
}

fn jaeger_spans(traces: &[Value]) -> Vec<JaegerSpan> {
    let mut out = Vec::new();
    for trace in traces {
        let processes = &trace["processes"];
        for span in trace["spans"].as_array().into_iter().flatten() {
            let process = &processes[span["processID"].as_str().unwrap_or_default()];
            let parent = span["references"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["refType"] == "CHILD_OF")
                .and_then(|r| r["spanID"].as_str())
                .map(|id| padded(id, 16));
            out.push(JaegerSpan {
                trace_id: padded(span["traceID"].as_str().unwrap_or_default(), 32),
                span_id: padded(span["spanID"].as_str().unwrap_or_default(), 16),
                parent,
                name: span["operationName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                service: process["serviceName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                tags: tags(&span["tags"]),
                process_tags: tags(&process["tags"]),
            });
        }
    }
    out
}

/// The agent attached to `pid`, exporting to `endpoint` with `protocol`
/// and writing the same spans to a JSONL file.
fn attach(
    pid: u32,
    endpoint: &str,
    protocol: &str,
    service: &str,
    jsonl: &std::path::Path,
) -> Agent {
    let mut cmd = command();
    cmd.args(["--pid", &pid.to_string()])
        .args(["--otlp-endpoint", endpoint, "--otlp-protocol", protocol])
        .args(["--service-name", service])
        .arg(format!("--output=jsonl={}", jsonl.display()));
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    agent
}

/// Every span the agent wrote to `jsonl`.
fn written(jsonl: &std::path::Path) -> Vec<FlatSpan> {
    let text = std::fs::read_to_string(jsonl).expect("JSONL written");
    let requests: Vec<ExportTraceServiceRequest> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("an OTLP JSON request per line"))
        .collect();
    flatten(requests.iter())
}

/// What Jaeger holds for `service` is exactly what the agent exported.
fn compare(sent: &[FlatSpan], stored: &[JaegerSpan], service: &str) {
    assert_eq!(
        stored.len(),
        sent.len(),
        "{service}: Jaeger holds {:?}",
        stored.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let by_id: BTreeMap<&str, &JaegerSpan> =
        stored.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for span in sent {
        let id = hex(&span.span.span_id);
        let name = &span.span.name;
        let got = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{service}: span {name} {id} is not in Jaeger"));
        assert_eq!(got.trace_id, hex(&span.span.trace_id), "{name}");
        assert_eq!(&got.name, name, "{id}");
        assert_eq!(got.service, service, "{name}");
        let parent = (!span.span.parent_span_id.is_empty()).then(|| hex(&span.span.parent_span_id));
        assert_eq!(got.parent, parent, "{name} {id}: parent");
        for (key, value) in &span.attributes {
            assert_eq!(
                got.tags.get(key),
                Some(value),
                "{service}: {name} {id}: attribute {key}"
            );
        }
        let kind = match SpanKind::try_from(span.span.kind) {
            Ok(SpanKind::Server) => "server",
            Ok(SpanKind::Client) => "client",
            Ok(SpanKind::Internal) => "internal",
            other => panic!("{name}: unexpected kind {other:?}"),
        };
        assert_eq!(
            got.tags.get("span.kind").map(String::as_str),
            Some(kind),
            "{name}"
        );
        assert_eq!(
            got.tags.get("otel.scope.name"),
            Some(&span.scope),
            "{name}: scope"
        );
        for (key, value) in &span.resource {
            if key != "service.name" {
                assert_eq!(
                    got.process_tags.get(key),
                    Some(value),
                    "{name}: resource {key}"
                );
            }
        }
    }
}

#[test]
fn jaeger_stores_every_span_over_grpc_and_http() {
    let jaeger = Jaeger::start();
    let (fixture, addrs) = start_httpclient(&build("httpclient", &[]));
    let dir = tempfile::tempdir().expect("tempdir");
    for (round, (protocol, endpoint)) in [
        ("grpc", format!("http://{}", jaeger.otlp_grpc)),
        ("http/protobuf", format!("http://{}", jaeger.otlp_http)),
    ]
    .into_iter()
    .enumerate()
    {
        // The connections `/call` sets up (tests/http_client.rs): in the
        // first round one per server and the TLS handshake on both sides;
        // the second reuses them, and only dials the refused port again.
        let mut want_net = vec![format!("connect {}", addrs.refused)];
        if round == 0 {
            want_net.extend([
                format!("connect {}", addrs.back),
                format!("connect {}", addrs.tls_back),
                "TLS client handshake 127.0.0.1".to_owned(),
                "TLS server handshake".to_owned(),
            ]);
        }
        want_net.sort();
        let total = SPANS_PER_CALL + want_net.len();
        let service = format!("agent-test-{}", protocol.replace('/', "-"));
        let jsonl = dir.path().join(format!("{service}.jsonl"));
        let mut agent = attach(fixture.pid(), &endpoint, protocol, &service, &jsonl);
        let (status, _) = Connection::open(addrs.front).request("GET", "/call", b"");
        assert_eq!(status, 200);
        let traces = jaeger.traces(&service, total);
        agent.signal(Signal::SIGINT);
        let exit = agent.wait(AGENT_EXIT);
        assert!(exit.success(), "{protocol}: agent exit {exit}");
        let summary = agent.wait_for_stderr("spans exported", Duration::from_secs(1));
        assert!(
            summary.contains(&format!("agent: {total} spans exported")),
            "{protocol}: {summary}"
        );

        let sent = written(&jsonl);
        assert_eq!(sent.len(), total, "{protocol}");
        let (net, _) = split_net(sent.clone());
        assert_eq!(net, want_net, "{protocol}");
        let stored = jaeger_spans(&traces);
        compare(&sent, &stored, &service);
        // The handler's SERVER span is a root with the six CLIENT spans in
        // its trace, under it; the back servers' SERVER spans are roots of
        // their own traces (the agent reads requests, it does not add a
        // traceparent to them).
        let roots: Vec<&JaegerSpan> = stored.iter().filter(|s| s.parent.is_none()).collect();
        // The TLS server's handshake is a root too (no span is open on a
        // connection's goroutine before its request).
        let handshakes = want_net
            .iter()
            .filter(|n| *n == "TLS server handshake")
            .count();
        assert_eq!(
            roots.len(),
            6 + handshakes,
            "{protocol}: the handler and five back requests"
        );
        let front = roots
            .iter()
            .find(|s| s.tags.get("url.path").map(String::as_str) == Some("/call"))
            .unwrap_or_else(|| panic!("{protocol}: no /call span"));
        let under: Vec<&JaegerSpan> = stored
            .iter()
            .filter(|s| s.parent.as_deref() == Some(front.span_id.as_str()))
            .collect();
        assert!(
            under.iter().all(|s| s.trace_id == front.trace_id
                && s.tags.get("span.kind").map(String::as_str) == Some("client")),
            "{protocol}: {under:#?}"
        );
        let children = under.len();
        assert_eq!(
            children, 6,
            "{protocol}: six client calls under the handler"
        );
    }
}
