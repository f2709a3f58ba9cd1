//! `/metrics` in the Prometheus text format (0.0.4), rendered from the
//! SDK's `ManualReader` at each scrape.
//!
//! Why not `opentelemetry-prometheus`: its releases stop at the 0.31 SDK
//! (and the `prometheus` crate's registry it feeds); it does not build
//! against the 0.33 SDK the agent uses. The text format is small, and the
//! names follow OpenTelemetry's Prometheus compatibility rules: characters
//! outside `[a-zA-Z0-9_:]` become `_`, the unit is a suffix (`_seconds`,
//! `_milliseconds`), monotonic sums end in `_total`, histograms are
//! `_bucket{le}`/`_sum`/`_count`.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Weak},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use opentelemetry::KeyValue;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    metrics::{
        InstrumentKind, ManualReader, Pipeline, Temporality,
        data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics},
        reader::MetricReader,
    },
};
use tokio::{net::TcpListener, task::JoinHandle};

/// A `ManualReader` the provider and the server share.
#[derive(Clone, Debug)]
pub struct SharedReader(pub Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// Why `/metrics` cannot be served.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve /metrics on {addr}")]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` and serves `/metrics` from `reader` until aborted.
pub async fn serve(
    addr: SocketAddr,
    reader: SharedReader,
) -> Result<(SocketAddr, JoinHandle<()>), ListenError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ListenError { addr, source })?;
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    log::debug!("/metrics: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let reader = reader.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let response = respond(&reader, req.method(), req.uri().path());
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                if let Err(err) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await
                {
                    log::debug!("/metrics: connection: {err}");
                }
            });
        }
    });
    Ok((bound, task))
}

fn respond(
    reader: &SharedReader,
    method: &hyper::Method,
    path: &str,
) -> hyper::Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&hyper::Method::GET, "/metrics") => {
            let mut rm = ResourceMetrics::default();
            match reader.collect(&mut rm) {
                Ok(()) => (200, "text/plain; version=0.0.4; charset=utf-8", render(&rm)),
                Err(err) => (503, "text/plain", format!("metrics unavailable: {err}\n")),
            }
        }
        _ => (404, "text/plain", "not found: try /metrics\n".to_owned()),
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Every metric of `rm` in the text format.
pub fn render(rm: &ResourceMetrics) -> String {
    let mut out = String::new();
    for scope in rm.scope_metrics() {
        for metric in scope.metrics() {
            match metric.data() {
                AggregatedMetrics::F64(data) => write_metric(&mut out, metric, data),
                AggregatedMetrics::U64(data) => write_metric(&mut out, metric, data),
                AggregatedMetrics::I64(data) => write_metric(&mut out, metric, data),
            }
        }
    }
    out
}

/// A sample value as Prometheus writes it.
trait Sample: Copy {
    fn text(self) -> String;
}

impl Sample for f64 {
    fn text(self) -> String {
        float(self)
    }
}
impl Sample for u64 {
    fn text(self) -> String {
        self.to_string()
    }
}
impl Sample for i64 {
    fn text(self) -> String {
        self.to_string()
    }
}

fn float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v.is_nan() {
        "NaN".to_owned()
    } else {
        format!("{v}")
    }
}

fn write_metric<T: Sample>(out: &mut String, metric: &Metric, data: &MetricData<T>) {
    let base = name_with_unit(metric.name(), metric.unit());
    let help = metric
        .description()
        .replace('\\', "\\\\")
        .replace('\n', "\\n");
    match data {
        MetricData::Gauge(gauge) => {
            header(out, &base, &help, "gauge");
            for p in gauge.data_points() {
                sample(out, &base, p.attributes(), None, &p.value().text());
            }
        }
        MetricData::Sum(sum) => {
            let (name, kind) = if sum.is_monotonic() {
                (format!("{base}_total"), "counter")
            } else {
                (base.clone(), "gauge")
            };
            header(out, &name, &help, kind);
            for p in sum.data_points() {
                sample(out, &name, p.attributes(), None, &p.value().text());
            }
        }
        MetricData::Histogram(hist) => {
            header(out, &base, &help, "histogram");
            for p in hist.data_points() {
                let mut cumulative = 0u64;
                let bucket = format!("{base}_bucket");
                for (bound, count) in p.bounds().zip(p.bucket_counts()) {
                    cumulative += count;
                    sample(
                        out,
                        &bucket,
                        p.attributes(),
                        Some(&float(bound)),
                        &cumulative.to_string(),
                    );
                }
                sample(
                    out,
                    &bucket,
                    p.attributes(),
                    Some("+Inf"),
                    &p.count().to_string(),
                );
                sample(
                    out,
                    &format!("{base}_sum"),
                    p.attributes(),
                    None,
                    &p.sum().text(),
                );
                sample(
                    out,
                    &format!("{base}_count"),
                    p.attributes(),
                    None,
                    &p.count().to_string(),
                );
            }
        }
        MetricData::ExponentialHistogram(_) => {}
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    if !help.is_empty() {
        let _ = writeln!(out, "# HELP {name} {help}");
    }
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample<'a>(
    out: &mut String,
    name: &str,
    attributes: impl Iterator<Item = &'a KeyValue>,
    le: Option<&str>,
    value: &str,
) {
    out.push_str(name);
    let mut labels: Vec<(String, String)> = attributes
        .map(|kv| (sanitize(kv.key.as_str()), kv.value.as_str().into_owned()))
        .collect();
    labels.sort();
    if let Some(le) = le {
        labels.push(("le".to_owned(), le.to_owned()));
    }
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(out, "{k}=\"{v}\"");
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// A metric or label name with every character outside `[a-zA-Z0-9_:]`
/// replaced by `_` (and no leading digit).
pub fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// The metric's Prometheus name: sanitized, with its unit as a suffix.
pub fn name_with_unit(name: &str, unit: &str) -> String {
    let suffix = match unit {
        "s" => "seconds",
        "ms" => "milliseconds",
        "By" => "bytes",
        "1" | "" => "",
        other if other.starts_with('{') => "",
        other => other,
    };
    let name = sanitize(name);
    if suffix.is_empty() || name.ends_with(suffix) {
        name
    } else {
        format!("{name}_{}", sanitize(suffix))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    use super::*;

    #[test]
    fn names_follow_the_compatibility_rules() {
        assert_eq!(
            name_with_unit("http.server.request.duration", "s"),
            "http_server_request_duration_seconds"
        );
        assert_eq!(
            name_with_unit("rpc.client.duration", "ms"),
            "rpc_client_duration_milliseconds"
        );
        assert_eq!(name_with_unit("agent.records", ""), "agent_records");
        assert_eq!(sanitize("9lives.x-y"), "_9lives_x_y");
    }

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let reader = SharedReader(Arc::new(ManualReader::builder().build()));
        let provider = SdkMeterProvider::builder()
            .with_reader(reader.clone())
            .build();
        let meter = provider.meter("test");
        let counter = meter.u64_counter("agent.things").build();
        counter.add(3, &[KeyValue::new("agent.loss.reason", "ring\"full")]);
        let hist = meter
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_boundaries(vec![0.1, 1.0])
            .build();
        let attrs = [
            KeyValue::new("http.route", "/users/{id}"),
            KeyValue::new("http.response.status_code", 200),
        ];
        hist.record(0.05, &attrs);
        hist.record(0.5, &attrs);
        hist.record(5.0, &attrs);
        let mut rm = ResourceMetrics::default();
        reader.collect(&mut rm).expect("collect");
        let text = render(&rm);
        assert!(
            text.contains("# TYPE agent_things_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("agent_things_total{agent_loss_reason=\"ring\\\"full\"} 3\n"),
            "{text}"
        );
        let labels = "http_response_status_code=\"200\",http_route=\"/users/{id}\"";
        for line in [
            "# TYPE http_server_request_duration_seconds histogram".to_owned(),
            format!("http_server_request_duration_seconds_bucket{{{labels},le=\"0.1\"}} 1"),
            format!("http_server_request_duration_seconds_bucket{{{labels},le=\"1\"}} 2"),
            format!("http_server_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3"),
            format!("http_server_request_duration_seconds_sum{{{labels}}} 5.55"),
            format!("http_server_request_duration_seconds_count{{{labels}}} 3"),
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line} in {text}");
        }
    }
}
