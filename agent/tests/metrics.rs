//! End to end, as root: request metrics and the agent's own. A ServeMux
//! fixture (Go 1.22 patterns) built from source gets N requests of known
//! routes and statuses; the agent exports spans to an OTLP receiver,
//! metrics over OTLP/gRPC to an in-test `MetricsService`, and serves
//! `/metrics`. Both show a count equal to N per route, method and status,
//! never a raw path; the loss counters equal the exit summary's
//! (`--summary-file`).

mod support;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    metrics::v1::{Metric, metric::Data, number_data_point},
};
use support::{
    agent::{AGENT_EXIT, Agent, command},
    fixture,
    http_client::Connection,
    otlp::{Listen, Receiver, TestPki, attributes, grpc_server_tls, tls_acceptor},
};

type Store = Arc<Mutex<Vec<ExportMetricsServiceRequest>>>;

/// The headers (gRPC metadata) of each request.
type Headers = Arc<Mutex<Vec<BTreeMap<String, String>>>>;

struct Metrics {
    store: Store,
    /// The `grpc-encoding` of each request.
    encodings: Arc<Mutex<Vec<String>>>,
    headers: Headers,
}

#[tonic::async_trait]
impl MetricsService for Metrics {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let encoding = request
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("identity")
            .to_owned();
        self.encodings.lock().expect("encodings").push(encoding);
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        self.headers.lock().expect("headers").push(headers);
        self.store.lock().expect("store").push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// A real OTLP/gRPC metrics receiver on 127.0.0.1.
struct MetricsReceiver {
    addr: SocketAddr,
    store: Store,
    encodings: Arc<Mutex<Vec<String>>>,
    headers: Headers,
    _runtime: tokio::runtime::Runtime,
}

impl MetricsReceiver {
    fn start() -> Self {
        Self::start_with(&Listen::default())
    }

    /// A gRPC receiver over TLS when `listen` says so.
    fn start_with(listen: &Listen) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let store = Store::default();
        let encodings = Arc::<Mutex<Vec<String>>>::default();
        let headers = Headers::default();
        let service = MetricsServiceServer::new(Metrics {
            store: store.clone(),
            encodings: encodings.clone(),
            headers: headers.clone(),
        })
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = grpc_server_tls(listen) {
            server = server.tls_config(tls).expect("server TLS");
        }
        runtime.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = server
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Self {
            addr,
            store,
            encodings,
            headers,
            _runtime: runtime,
        }
    }

    /// The metric `name` of the last export that has it.
    fn last(&self, name: &str) -> Option<(Metric, BTreeMap<String, String>)> {
        let store = self.store.lock().expect("store");
        store.iter().rev().find_map(|request| {
            request.resource_metrics.iter().find_map(|rm| {
                let resource = rm
                    .resource
                    .as_ref()
                    .map(|r| attributes(&r.attributes))
                    .unwrap_or_default();
                rm.scope_metrics
                    .iter()
                    .flat_map(|sm| &sm.metrics)
                    .find(|m| m.name == name)
                    .map(|m| (m.clone(), resource))
            })
        })
    }
}

/// A real OTLP/HTTP (protobuf) metrics receiver on 127.0.0.1, answering
/// POST /v1/metrics.
fn http_receiver() -> MetricsReceiver {
    http_receiver_with(&Listen::default())
}

/// The same, over TLS when `listen` says so.
fn http_receiver_with(listen: &Listen) -> MetricsReceiver {
    use http_body_util::BodyExt as _;
    let acceptor = tls_acceptor(listen);
    use prost::Message as _;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let store = Store::default();
    let accept_store = store.clone();
    let headers = Headers::default();
    let accept_headers = headers.clone();
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = accept_store.clone();
            let headers = accept_headers.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        let headers = headers.clone();
                        async move {
                            let ok = req.uri().path() == "/v1/metrics";
                            headers.lock().expect("headers").push(
                                req.headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or_default().to_owned())
                                    })
                                    .collect(),
                            );
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let status = match body.map(ExportMetricsServiceRequest::decode) {
                                Ok(Ok(request)) if ok => {
                                    store.lock().expect("store").push(request);
                                    200
                                }
                                _ => 400,
                            };
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/x-protobuf")
                                .body(http_body_util::Full::new(bytes::Bytes::from(
                                    ExportMetricsServiceResponse::default().encode_to_vec(),
                                )))
                        }
                    },
                );
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match acceptor {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(tls) => {
                            http.serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                .await
                        }
                        // A client that does not trust the certificate.
                        Err(_) => return,
                    },
                    None => {
                        http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await
                    }
                };
            });
        }
    });
    MetricsReceiver {
        addr,
        store,
        encodings: Arc::default(),
        headers,
        _runtime: runtime,
    }
}

/// The value of every data point of the sums `names`, by the attribute
/// `key` (or the metric's name when the point has none).
fn sums(receiver: &MetricsReceiver, names: &[(&str, &str)]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (name, key) in names {
        let (metric, _) = receiver.last(name).unwrap_or_else(|| panic!("{name}"));
        let Some(Data::Sum(sum)) = &metric.data else {
            panic!("a sum: {metric:?}");
        };
        assert!(sum.is_monotonic, "{name}");
        for point in &sum.data_points {
            let attrs = attributes(&point.attributes);
            let value = match point.value {
                Some(number_data_point::Value::AsInt(v)) => v as u64,
                other => panic!("an integer: {other:?}"),
            };
            let label = attrs
                .get(*key)
                .cloned()
                .unwrap_or_else(|| (*name).to_owned());
            out.insert(label, value);
        }
    }
    out
}

fn read_summary(path: &std::path::Path) -> BTreeMap<String, u64> {
    std::fs::read_to_string(path)
        .expect("summary file")
        .lines()
        .filter_map(|line| {
            let (k, v) = line.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// (method, route, status) to the requests sent.
type Expected = BTreeMap<(String, Option<String>, String), u64>;

/// A GET of `/metrics`.
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
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// `name{labels} value` lines of a scrape: the labels and the value.
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, labels)) => (metric, labels.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let labels = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

#[test]
fn request_counts_per_route_and_losses_match_the_summary() {
    let binary = fixture::build_module("routes-servemux", &[]);
    let (server, addr) = fixture::start_httpserver(&binary);
    let traces = Receiver::grpc();
    let metrics = MetricsReceiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = dir.path().join("summary.txt");

    let mut cmd = command();
    cmd.args(["--pid", &server.pid().to_string()])
        .args(["--otlp-endpoint", &traces.url(), "--otlp-protocol", "grpc"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .arg("--summary-file")
        .arg(&summary)
        .env(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("http://{}", metrics.addr),
        )
        .env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc")
        .env("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "gzip")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .env("OTEL_SERVICE_NAME", "metrics-test");
    let mut agent = Agent::start(cmd);
    let line = agent.wait_for_stderr("metrics: serving http://", Duration::from_secs(30));
    let listen: SocketAddr = line
        .split("serving http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .expect("address in the log line")
        .parse()
        .expect("listen address");
    agent.wait_attached();

    // (method, target, status, route): N requests each.
    let cases: [(&str, &str, u16, Option<&str>, u64); 4] = [
        ("GET", "/users/", 200, Some("/users/{id}"), 5),
        ("GET", "/static/app-", 200, Some("/static/"), 3),
        ("GET", "/nope/", 404, None, 4),
        ("POST", "/users/", 405, None, 2),
    ];
    let mut expected = Expected::new();
    let mut conn = Connection::open(addr);
    let mut total = 0;
    for (method, prefix, status, route, n) in cases {
        for i in 0..n {
            let target = format!("{prefix}{i}");
            assert_eq!(
                conn.request(method, &target, b"").0,
                status,
                "{method} {target}"
            );
        }
        *expected
            .entry((
                method.to_owned(),
                route.map(str::to_owned),
                status.to_string(),
            ))
            .or_default() += n;
        total += n as usize;
    }
    traces.wait_for_spans(total, Duration::from_secs(20));

    // `/metrics`, once the counts are in (spans are counted as they are
    // queued, the agent's counters published once a second).
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = scrape(listen);
        let counted: f64 = samples(&text, "http_server_request_duration_seconds_count")
            .iter()
            .map(|(_, v)| v)
            .sum();
        if counted as usize >= total && text.contains("agent_records_total") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "counts never reached {total}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut scraped = Expected::new();
    for (labels, value) in samples(&text, "http_server_request_duration_seconds_count") {
        assert!(
            !labels.contains_key("url_path"),
            "never the raw path: {labels:?}"
        );
        assert_eq!(labels.get("url_scheme").map(String::as_str), Some("http"));
        *scraped
            .entry((
                labels["http_request_method"].clone(),
                labels.get("http_route").cloned(),
                labels["http_response_status_code"].clone(),
            ))
            .or_default() += value as u64;
    }
    assert_eq!(
        scraped, expected,
        "/metrics: count per method, route, status"
    );
    // Buckets are cumulative and end in +Inf with the count.
    let inf: f64 = samples(&text, "http_server_request_duration_seconds_bucket")
        .iter()
        .filter(|(labels, _)| labels.get("le").map(String::as_str) == Some("+Inf"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(inf as usize, total);
    let scraped_losses: BTreeMap<String, u64> = samples(&text, "agent_losses_total")
        .into_iter()
        .map(|(labels, v)| (labels["agent_loss_reason"].clone(), v as u64))
        .collect();
    assert!(
        text.contains("agent_probes_attached{agent_family=\"net/http\"}"),
        "{text}"
    );
    assert!(text.contains("agent_targets_attached 1\n"), "{text}");

    agent.signal(Signal::SIGINT);
    assert!(agent.wait(AGENT_EXIT).success());
    drop(server);
    let summary = read_summary(&summary);
    for (reason, value) in &scraped_losses {
        assert_eq!(
            summary.get(reason),
            Some(value),
            "/metrics loss {reason} against the summary"
        );
    }
    assert!(
        scraped_losses.contains_key("ringbuf_full"),
        "{scraped_losses:?}"
    );
    assert!(scraped_losses.contains_key("dropped_export_failed"));

    // Every export compressed, as OTEL_EXPORTER_OTLP_METRICS_COMPRESSION says.
    let encodings = metrics.encodings.lock().expect("encodings").clone();
    assert!(!encodings.is_empty());
    assert!(encodings.iter().all(|e| e == "gzip"), "{encodings:?}");
    // OTLP: the final export, made at shutdown, has every count.
    let (histogram, resource) = metrics
        .last("http.server.request.duration")
        .expect("http.server.request.duration over OTLP");
    assert_eq!(
        resource.get("service.name").map(String::as_str),
        Some("metrics-test")
    );
    assert_eq!(histogram.unit, "s");
    let Some(Data::Histogram(h)) = &histogram.data else {
        panic!("a histogram: {histogram:?}");
    };
    let mut exported = Expected::new();
    for point in &h.data_points {
        let attrs = attributes(&point.attributes);
        assert!(!attrs.contains_key("url.path"), "{attrs:?}");
        assert_eq!(
            point.explicit_bounds,
            [
                0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
            ]
        );
        assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count);
        *exported
            .entry((
                attrs["http.request.method"].clone(),
                attrs.get("http.route").cloned(),
                attrs["http.response.status_code"].clone(),
            ))
            .or_default() += point.count;
    }
    assert_eq!(exported, expected, "OTLP: count per method, route, status");

    // Every counter of the summary, exported with its value.
    let otlp_counters = sums(
        &metrics,
        &[
            ("agent.losses", "agent.loss.reason"),
            ("agent.counts", "agent.count.name"),
        ],
    );
    assert_eq!(otlp_counters, summary, "OTLP counters against the summary");
    let (records, _) = metrics.last("agent.records").expect("agent.records");
    let Some(Data::Sum(records)) = &records.data else {
        panic!("a sum");
    };
    assert_eq!(
        records.data_points[0].value,
        Some(number_data_point::Value::AsInt(summary["records"] as i64))
    );
    assert!(summary["records"] >= 2 * total as u64, "{summary:?}");
    assert_eq!(summary["spans_exported"], total as u64, "{summary:?}");
}

/// Spans sent to a collector that is not there: every one is lost, and the
/// loss counters exported over OTLP/HTTP at exit say what the summary says.
#[test]
fn export_failures_counted_over_otlp_http_as_the_summary_says() {
    let binary = fixture::build_module("routes-servemux", &[]);
    let (server, addr) = fixture::start_httpserver(&binary);
    let metrics = http_receiver();
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = nobody.local_addr().expect("addr");
    drop(nobody);
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = dir.path().join("summary.txt");
    let mut cmd = command();
    cmd.args(["--pid", &server.pid().to_string()])
        .args(["--otlp-endpoint", &format!("http://{dead}")])
        .args(["--otlp-protocol", "http/protobuf"])
        .arg("--summary-file")
        .arg(&summary)
        .env(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("http://{}/v1/metrics", metrics.addr),
        )
        .env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "300");
    let mut agent = Agent::start(cmd);
    agent.wait_attached();
    let n = 6;
    let mut conn = Connection::open(addr);
    for i in 0..n {
        assert_eq!(conn.request("GET", &format!("/users/{i}"), b"").0, 200);
    }
    // The periodic export has the requests before the agent stops.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counted = metrics
            .last("http.server.request.duration")
            .and_then(|(m, _)| match m.data {
                Some(Data::Histogram(h)) => Some(h.data_points.iter().map(|p| p.count).sum()),
                _ => None,
            })
            .unwrap_or(0u64);
        if counted == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{counted} of {n} requests counted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.signal(Signal::SIGINT);
    assert!(agent.wait(AGENT_EXIT).success());
    drop(server);
    let summary = read_summary(&summary);
    assert_eq!(summary["dropped_export_failed"], n, "{summary:?}");
    assert_eq!(summary["spans_exported"], 0, "{summary:?}");
    let losses = sums(&metrics, &[("agent.losses", "agent.loss.reason")]);
    assert_eq!(losses["dropped_export_failed"], n);
    for (reason, value) in &losses {
        assert_eq!(summary.get(reason), Some(value), "{reason}");
    }
    let failures = sums(&metrics, &[("agent.export.failures", "")]);
    assert_eq!(failures["agent.export.failures"], n);
}

/// database/sql calls: `db.client.operation.duration` per operation and
/// table, from the sqlapp fixture's known calls (`GET /run`, twice).
#[test]
fn database_calls_counted_per_operation_and_table() {
    let binary = fixture::build_module("sqlapp", &[]);
    let (server, addr) = fixture::start_httpserver(&binary);
    let traces = Receiver::grpc();
    let mut cmd = command();
    cmd.args(["--pid", &server.pid().to_string()])
        .args(["--otlp-endpoint", &traces.url(), "--otlp-protocol", "grpc"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("OTEL_METRICS_EXPORTER", "none");
    let mut agent = Agent::start(cmd);
    let line = agent.wait_for_stderr("metrics: serving http://", Duration::from_secs(30));
    let listen: SocketAddr = line
        .split("serving http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .expect("address in the log line")
        .parse()
        .expect("listen address");
    agent.wait_attached();
    let runs = 2;
    let mut conn = Connection::open(addr);
    for _ in 0..runs {
        assert_eq!(conn.request("GET", "/run", b"").0, 200);
    }
    let per_run = 1 + support::sqlapp::SQL_SPANS.len();
    traces.wait_for_spans(runs * per_run, Duration::from_secs(20));
    // (operation, table, failed) to calls.
    let mut expected: BTreeMap<(Option<String>, Option<String>, bool), u64> = BTreeMap::new();
    for (_, op, table, _, fails) in support::sqlapp::SQL_SPANS {
        *expected
            .entry((op.map(str::to_owned), table.map(str::to_owned), fails))
            .or_default() += runs as u64;
    }
    let text = scrape(listen);
    let mut scraped = BTreeMap::new();
    for (labels, value) in samples(&text, "db_client_operation_duration_seconds_count") {
        assert_eq!(
            labels.get("db_system_name").map(String::as_str),
            Some("sqlite")
        );
        assert!(!labels.contains_key("db_query_text"), "{labels:?}");
        *scraped
            .entry((
                labels.get("db_operation_name").cloned(),
                labels.get("db_collection_name").cloned(),
                labels.contains_key("error_type"),
            ))
            .or_default() += value as u64;
    }
    assert_eq!(scraped, expected, "/metrics: calls per operation and table");
    let served: f64 = samples(&text, "http_server_request_duration_seconds_count")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert_eq!(served as usize, runs, "{text}");
    agent.signal(Signal::SIGINT);
    assert!(agent.wait(AGENT_EXIT).success());
    drop(server);
}

/// gRPC: `rpc.client.duration` and `rpc.server.duration` (milliseconds)
/// per service, method and status code, from the grpcapp fixture's known
/// calls (`GET /call`: Check OK, Check NotFound, a reflection stream).
#[test]
fn grpc_calls_counted_per_method_and_code() {
    let binary = fixture::build_module("grpcapp", &[]);
    let (server, addr) = fixture::start_httpserver(&binary);
    let traces = Receiver::grpc();
    let mut cmd = command();
    cmd.args(["--pid", &server.pid().to_string()])
        .args(["--otlp-endpoint", &traces.url(), "--otlp-protocol", "grpc"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("OTEL_METRICS_EXPORTER", "none");
    let mut agent = Agent::start(cmd);
    let line = agent.wait_for_stderr("metrics: serving http://", Duration::from_secs(30));
    let listen: SocketAddr = line
        .split("serving http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .expect("address in the log line")
        .parse()
        .expect("listen address");
    agent.wait_attached();
    agent.wait_for_stderr("grpc v1.85.0: ", Duration::from_secs(5));
    let runs = 2;
    for _ in 0..runs {
        let mut conn = TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        conn.write_all(b"GET /call HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut response = String::new();
        conn.read_to_string(&mut response).expect("read");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    // Per call: 1 HTTP + 3 client + 3 server spans.
    traces.wait_for_spans(runs * 7, Duration::from_secs(20));
    let text = scrape(listen);
    let expected: BTreeMap<(String, String, String), u64> = [
        ("grpc.health.v1.Health", "Check", "0"),
        ("grpc.health.v1.Health", "Check", "5"),
        (
            "grpc.reflection.v1.ServerReflection",
            "ServerReflectionInfo",
            "0",
        ),
    ]
    .into_iter()
    .map(|(s, m, c)| ((s.to_owned(), m.to_owned(), c.to_owned()), runs as u64))
    .collect();
    for (name, client) in [
        ("rpc_client_duration_milliseconds_count", true),
        ("rpc_server_duration_milliseconds_count", false),
    ] {
        let mut scraped = BTreeMap::new();
        for (labels, value) in samples(&text, name) {
            assert_eq!(labels.get("rpc_system").map(String::as_str), Some("grpc"));
            assert_eq!(
                labels.get("server_address").map(String::as_str),
                client.then_some("127.0.0.1"),
                "{name}: {labels:?}"
            );
            *scraped
                .entry((
                    labels["rpc_service"].clone(),
                    labels["rpc_method"].clone(),
                    labels["rpc_grpc_status_code"].clone(),
                ))
                .or_default() += value as u64;
        }
        assert_eq!(scraped, expected, "{name}");
    }
    assert!(
        text.contains("# TYPE rpc_server_duration_milliseconds histogram"),
        "{text}"
    );
    agent.signal(Signal::SIGINT);
    assert!(agent.wait(AGENT_EXIT).success());
    drop(server);
}

/// net/http client calls: `http.client.request.duration` per method,
/// server port, status and error, from the httpclient fixture's known
/// calls (`GET /call`: two plain GETs, one over HTTP/2, a refused
/// connection, a 503, a PURGE); never the URL.
#[test]
fn http_client_calls_counted_per_server_and_status() {
    let (fixture, a) = fixture::start_httpclient(&fixture::build("httpclient", &[]));
    let traces = Receiver::grpc();
    let mut cmd = command();
    cmd.args(["--pid", &fixture.pid().to_string()])
        .args(["--otlp-endpoint", &traces.url(), "--otlp-protocol", "grpc"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("OTEL_METRICS_EXPORTER", "none");
    let mut agent = Agent::start(cmd);
    let line = agent.wait_for_stderr("metrics: serving http://", Duration::from_secs(30));
    let listen: SocketAddr = line
        .split("serving http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .expect("address in the log line")
        .parse()
        .expect("listen address");
    agent.wait_attached();
    let mut conn = Connection::open(a.front);
    assert_eq!(conn.request("GET", "/call", b"").0, 200);
    traces.wait_for_spans(12, Duration::from_secs(20));
    let text = scrape(listen);
    // (method, port, status, error.type) to calls.
    let key = |m: &str, port: u16, status: &str, error: &str| {
        (
            m.to_owned(),
            port.to_string(),
            status.to_owned(),
            error.to_owned(),
        )
    };
    let expected: BTreeMap<_, u64> = [
        (key("GET", a.back.port(), "200", ""), 2),
        (key("GET", a.tls_back.port(), "200", ""), 1),
        (key("GET", a.refused.port(), "", "*net.OpError"), 1),
        (key("GET", a.back.port(), "503", "503"), 1),
        (key("_OTHER", a.back.port(), "200", ""), 1),
    ]
    .into_iter()
    .collect();
    let mut scraped = BTreeMap::new();
    for (labels, value) in samples(&text, "http_client_request_duration_seconds_count") {
        assert!(!labels.contains_key("url_full"), "{labels:?}");
        assert!(labels.contains_key("server_address"), "{labels:?}");
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        *scraped
            .entry((
                get("http_request_method"),
                get("server_port"),
                get("http_response_status_code"),
                get("error_type"),
            ))
            .or_default() += value as u64;
    }
    assert_eq!(scraped, expected, "/metrics: client calls");
    agent.signal(Signal::SIGINT);
    assert!(agent.wait(AGENT_EXIT).success());
    drop(fixture);
}

/// The agent's metrics over `https://` with the CA file of
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`, to TLS receivers over gRPC and HTTP;
/// with a CA that did not sign the receiver's certificate, nothing
/// arrives and the agent says why; a CA file that is not PEM stops it at
/// start with one line.
#[test]
fn metrics_over_tls_with_the_ca_file_and_a_wrong_ca_said() {
    let binary = fixture::build_module("routes-servemux", &[]);
    let (server, addr) = fixture::start_httpserver(&binary);
    let pki = TestPki::new();
    let traces = Receiver::grpc();
    let run = |protocol: &str, endpoint: &str, ca: &std::path::Path| {
        let mut cmd = command();
        cmd.args(["--pid", &server.pid().to_string()])
            .args(["--otlp-endpoint", &traces.url(), "--otlp-protocol", "grpc"])
            .args(["--otlp-header", "x-team=flag"])
            .env("OTEL_EXPORTER_OTLP_HEADERS", "x-team=env,x-env=only%20env")
            .env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", protocol)
            .env("OTEL_EXPORTER_OTLP_CERTIFICATE", ca)
            .env("OTEL_METRIC_EXPORT_INTERVAL", "300");
        Agent::start(cmd)
    };
    for protocol in ["grpc", "http/protobuf"] {
        let (receiver, path) = match protocol {
            "grpc" => (MetricsReceiver::start_with(&pki.listen()), ""),
            _ => (http_receiver_with(&pki.listen()), "/v1/metrics"),
        };
        let endpoint = format!("https://{}{path}", receiver.addr);

        // The right CA: the requests' histogram arrives.
        let mut agent = run(protocol, &endpoint, &pki.path("ca.pem"));
        agent.wait_attached();
        let n = 3;
        let mut conn = Connection::open(addr);
        for i in 0..n {
            assert_eq!(conn.request("GET", &format!("/users/{i}"), b"").0, 200);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let counted = receiver
                .last("http.server.request.duration")
                .and_then(|(m, _)| match m.data {
                    Some(Data::Histogram(h)) => Some(h.data_points.iter().map(|p| p.count).sum()),
                    _ => None,
                })
                .unwrap_or(0u64);
            if counted == n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{protocol}: {counted} of {n} requests counted over TLS: {:?}",
                agent.stderr_lines()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        agent.signal(Signal::SIGINT);
        assert!(agent.wait(AGENT_EXIT).success(), "{protocol}");
        let failed: Vec<String> = agent
            .stderr_lines()
            .into_iter()
            .filter(|l| l.contains("metrics: export") || l.contains(" exports to "))
            .collect();
        assert!(failed.is_empty(), "{protocol}: {failed:?}");
        // The headers as resolved: the flag wins over the variable.
        let headers = receiver.headers.lock().expect("headers").clone();
        assert!(!headers.is_empty(), "{protocol}");
        for h in &headers {
            assert_eq!(h.get("x-team").map(String::as_str), Some("flag"), "{h:?}");
            assert_eq!(
                h.get("x-env").map(String::as_str),
                Some("only env"),
                "{h:?}"
            );
        }

        // A CA that did not sign the receiver's certificate.
        let before = receiver.store.lock().expect("store").len();
        let mut agent = run(protocol, &endpoint, &pki.path("other-ca.pem"));
        let line = agent.wait_for_stderr(
            &format!("metrics: export to {endpoint} failed"),
            Duration::from_secs(20),
        );
        assert!(
            line.contains("UnknownIssuer") || line.contains("certificate"),
            "{protocol}: the cause is named: {line}"
        );
        // The failure can come before the attach is done (an HTTP connect
        // fails at once); a SIGINT before then would end the agent by the
        // default action, not stop it.
        agent.wait_attached();
        agent.signal(Signal::SIGINT);
        assert!(agent.wait(AGENT_EXIT).success(), "{protocol}");
        assert_eq!(
            receiver.store.lock().expect("store").len(),
            before,
            "{protocol}: nothing arrived"
        );
        // Every export failed, and the exit says how many.
        let lines = agent.stderr_lines();
        let counted = lines
            .iter()
            .find_map(|l| {
                l.split("metrics: ")
                    .nth(1)?
                    .strip_suffix(&format!(" exports to {endpoint} failed"))
            })
            .unwrap_or_else(|| panic!("{protocol}: no count of failed exports: {lines:?}"));
        let (failed, done) = counted.split_once(" of ").expect("N of M");
        assert_eq!(failed, done, "{protocol}: {counted}");
        assert!(failed.parse::<u64>().expect("a count") >= 1, "{counted}");
    }

    // Not PEM: one line at start, naming the file.
    let bad = pki.path("not-pem.pem");
    std::fs::write(&bad, "not a certificate\n").expect("write");
    let output = command()
        .args(["--pid", &server.pid().to_string()])
        .args(["--otlp-endpoint", &traces.url(), "--otlp-protocol", "grpc"])
        .env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "https://127.0.0.1:1")
        .env("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", &bad)
        .output()
        .expect("agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("agent: "))
        .collect();
    assert_eq!(
        errors,
        [format!(
            "agent: OTLP metrics export to https://127.0.0.1:1: the CA file {} holds no PEM certificate",
            bad.display()
        )],
        "{stderr}"
    );
}

/// Mutual TLS for metrics: with the client certificate and key of
/// `OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE`/`_KEY` the exports arrive
/// at receivers that require one, over gRPC and HTTP; without, none does.
#[test]
fn metrics_over_mutual_tls_with_a_client_certificate() {
    let binary = fixture::build_module("routes-servemux", &[]);
    let (server, _addr) = fixture::start_httpserver(&binary);
    let pki = TestPki::new();
    let traces = Receiver::grpc();
    for protocol in ["grpc", "http/protobuf"] {
        for with_identity in [true, false] {
            let (receiver, path) = match protocol {
                "grpc" => (MetricsReceiver::start_with(&pki.listen_mutual()), ""),
                _ => (http_receiver_with(&pki.listen_mutual()), "/v1/metrics"),
            };
            let endpoint = format!("https://{}{path}", receiver.addr);
            let mut cmd = command();
            cmd.args(["--pid", &server.pid().to_string()])
                .args(["--otlp-endpoint", &traces.url(), "--otlp-protocol", "grpc"])
                .env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &endpoint)
                .env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", protocol)
                .env("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", pki.path("ca.pem"))
                .env("OTEL_METRIC_EXPORT_INTERVAL", "300");
            if with_identity {
                cmd.env(
                    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
                    pki.path("client.pem"),
                )
                .env(
                    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
                    pki.path("client-key.pem"),
                );
            }
            let mut agent = Agent::start(cmd);
            agent.wait_attached();
            if with_identity {
                let deadline = Instant::now() + Duration::from_secs(20);
                while receiver.last("agent.records").is_none() {
                    assert!(
                        Instant::now() < deadline,
                        "{protocol}: no export with a client certificate: {:?}",
                        agent.stderr_lines()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            } else {
                agent.wait_for_stderr(
                    &format!("metrics: export to {endpoint} failed"),
                    Duration::from_secs(20),
                );
            }
            agent.signal(Signal::SIGINT);
            assert!(agent.wait(AGENT_EXIT).success(), "{protocol}");
            let failed = agent
                .stderr_lines()
                .into_iter()
                .any(|l| l.contains(&format!(" exports to {endpoint} failed")));
            assert_eq!(failed, !with_identity, "{protocol}");
            if !with_identity {
                assert!(
                    receiver.store.lock().expect("store").is_empty(),
                    "{protocol}: nothing arrives without a client certificate"
                );
            }
        }
    }
}
