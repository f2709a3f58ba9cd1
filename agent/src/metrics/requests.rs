//! Request metrics, derived from every finished span before it is queued
//! for export (so before any sampling or loss): the OpenTelemetry semantic
//! conventions' duration histograms, with their names, units, bucket
//! boundaries and attributes.
//!
//! | metric | unit | from | attributes |
//! |---|---|---|---|
//! | `http.server.request.duration` | s | SERVER spans with `http.request.method` | `http.request.method`, `url.scheme`, `http.route`, `http.response.status_code`, `error.type`, `network.protocol.version` |
//! | `http.client.request.duration` | s | CLIENT spans with `http.request.method` | `http.request.method`, `server.address`, `server.port`, `http.response.status_code`, `error.type`, `network.protocol.version` |
//! | `rpc.server.duration` | ms | SERVER spans with `rpc.system` | `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `error.type` |
//! | `rpc.client.duration` | ms | CLIENT spans with `rpc.system` | the same, `server.address`, `server.port` |
//! | `db.client.operation.duration` | s | spans with `db.system.name` | `db.system.name`, `db.operation.name`, `db.collection.name`, `error.type` |
//!
//! Never the raw path (`url.path`, `url.full`): a route or nothing.
//! Spans the agent exported cut short (`agent.span.incomplete`: expired,
//! evicted, flushed at shutdown) have no true duration and are left out.
//!
//! Cost: a span's bytes are read in place ([`SpanView`]), the attributes
//! the metric takes are written into a reused key buffer, and the key finds
//! a histogram already bound to that attribute set (the SDK's bound
//! instruments: no attribute lookup on record). Only a new attribute set
//! allocates. Past [`MAX_SERIES`] sets, spans go to one overflow series
//! (`otel.metric.overflow=true`), as the SDK's cardinality limit does.
//! `examples/metrics_bench` measures the hook alone: about 2,450
//! instructions per HTTP server span (callgrind), 180-280 ns on the
//! development machine.

use std::collections::HashMap;

use opentelemetry::{
    KeyValue,
    metrics::{BoundHistogram, Histogram, Meter},
};

use super::span_view::{KIND_CLIENT, KIND_SERVER, SpanView, Value, key};

/// Attribute sets bound at most, over every request metric.
pub const MAX_SERIES: usize = 2000;

/// The conventions' advice for HTTP and database durations, in seconds.
const HTTP_BOUNDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const DB_BOUNDS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];
/// The RPC durations are in milliseconds (`rpc.server.duration`,
/// `rpc.client.duration`): the HTTP advice scaled.
const RPC_BOUNDS: [f64; 15] = [
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];

/// The request metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Metric {
    HttpServer = 0,
    HttpClient = 1,
    RpcServer = 2,
    RpcClient = 3,
    DbClient = 4,
}

impl Metric {
    const ALL: [Metric; 5] = [
        Metric::HttpServer,
        Metric::HttpClient,
        Metric::RpcServer,
        Metric::RpcClient,
        Metric::DbClient,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::HttpServer => "http.server.request.duration",
            Self::HttpClient => "http.client.request.duration",
            Self::RpcServer => "rpc.server.duration",
            Self::RpcClient => "rpc.client.duration",
            Self::DbClient => "db.client.operation.duration",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Self::RpcServer | Self::RpcClient => "ms",
            _ => "s",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Self::HttpServer => "Duration of HTTP server requests.",
            Self::HttpClient => "Duration of HTTP client requests.",
            Self::RpcServer => "Duration of inbound RPCs.",
            Self::RpcClient => "Duration of outbound RPCs.",
            Self::DbClient => "Duration of database client operations.",
        }
    }

    fn bounds(self) -> &'static [f64] {
        match self {
            Self::HttpServer | Self::HttpClient => &HTTP_BOUNDS,
            Self::RpcServer | Self::RpcClient => &RPC_BOUNDS,
            Self::DbClient => &DB_BOUNDS,
        }
    }

    /// Nanoseconds per unit.
    fn ns_per_unit(self) -> f64 {
        match self {
            Self::RpcServer | Self::RpcClient => 1e6,
            _ => 1e9,
        }
    }

    /// The attributes it takes, in [`super::span_view::KEYS`] positions.
    fn attributes(self) -> &'static [usize] {
        use key::*;
        match self {
            Self::HttpServer => &[
                METHOD,
                URL_SCHEME,
                ROUTE,
                STATUS,
                ERROR_TYPE,
                PROTOCOL_VERSION,
            ],
            Self::HttpClient => &[
                METHOD,
                SERVER_ADDRESS,
                SERVER_PORT,
                STATUS,
                ERROR_TYPE,
                PROTOCOL_VERSION,
            ],
            Self::RpcServer => &[
                RPC_SYSTEM,
                RPC_SERVICE,
                RPC_METHOD,
                RPC_GRPC_STATUS,
                ERROR_TYPE,
            ],
            Self::RpcClient => &[
                RPC_SYSTEM,
                RPC_SERVICE,
                RPC_METHOD,
                RPC_GRPC_STATUS,
                SERVER_ADDRESS,
                SERVER_PORT,
                ERROR_TYPE,
            ],
            Self::DbClient => &[DB_SYSTEM, DB_OPERATION, DB_COLLECTION, ERROR_TYPE],
        }
    }

    /// The metric a finished span feeds, if any.
    pub fn of(span: &SpanView<'_>) -> Option<Self> {
        if span.get(key::INCOMPLETE).is_some() {
            return None;
        }
        let has = |slot| span.get(slot).is_some();
        match span.kind {
            _ if has(key::DB_SYSTEM) => Some(Self::DbClient),
            KIND_SERVER if has(key::RPC_SYSTEM) => Some(Self::RpcServer),
            KIND_CLIENT if has(key::RPC_SYSTEM) => Some(Self::RpcClient),
            KIND_SERVER if has(key::METHOD) => Some(Self::HttpServer),
            KIND_CLIENT if has(key::METHOD) => Some(Self::HttpClient),
            _ => None,
        }
    }
}

/// The attribute set a span gives its metric, as `KeyValue`s (for binding
/// a new series; the hot path compares encoded keys instead).
pub fn key_values(metric: Metric, span: &SpanView<'_>) -> Vec<KeyValue> {
    metric
        .attributes()
        .iter()
        .filter_map(|&slot| {
            let name = super::span_view::KEYS[slot];
            span.get(slot).map(|value| match value {
                Value::Str(s) => KeyValue::new(name, String::from_utf8_lossy(s).into_owned()),
                Value::Int(i) => KeyValue::new(name, i),
            })
        })
        .collect()
}

/// The duration histograms and their bound series.
pub struct Requests {
    histograms: [Histogram<f64>; 5],
    /// Encoded attribute set (metric, then each attribute) to its series.
    series: HashMap<Box<[u8]>, BoundHistogram<f64>, foldhash::fast::RandomState>,
    overflow: [Option<BoundHistogram<f64>>; 5],
    /// Reused for each span's key.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests")
            .field("series", &self.series.len())
            .finish_non_exhaustive()
    }
}

impl Requests {
    /// The histograms, created on `meter`.
    pub fn new(meter: &Meter) -> Self {
        let histograms = Metric::ALL.map(|metric| {
            meter
                .f64_histogram(metric.name())
                .with_unit(metric.unit())
                .with_description(metric.description())
                .with_boundaries(metric.bounds().to_vec())
                .build()
        });
        Self {
            histograms,
            series: HashMap::default(),
            overflow: Default::default(),
            scratch: Vec::with_capacity(256),
        }
    }

    /// Records one finished span (its encoded `Span` message); spans that
    /// feed no request metric are skipped.
    pub fn observe(&mut self, bytes: &[u8]) {
        let mut span = SpanView::default();
        if span.read(bytes).is_none() {
            return;
        }
        let Some(metric) = Metric::of(&span) else {
            return;
        };
        let value = span.duration_ns() as f64 / metric.ns_per_unit();
        self.encode_key(metric, &span);
        if let Some(series) = self.series.get(self.scratch.as_slice()) {
            series.record(value);
            return;
        }
        let histogram = &self.histograms[metric as usize];
        if self.series.len() >= MAX_SERIES {
            self.overflow[metric as usize]
                .get_or_insert_with(|| {
                    histogram.bind(&[KeyValue::new("otel.metric.overflow", true)])
                })
                .record(value);
            return;
        }
        let series = histogram.bind(&key_values(metric, &span));
        series.record(value);
        self.series.insert(self.scratch.as_slice().into(), series);
    }

    /// Attribute sets bound so far.
    pub fn series(&self) -> usize {
        self.series.len()
    }

    fn encode_key(&mut self, metric: Metric, span: &SpanView<'_>) {
        let out = &mut self.scratch;
        out.clear();
        out.push(metric as u8);
        for &slot in metric.attributes() {
            match span.get(slot) {
                None => out.push(0),
                Some(Value::Int(i)) => {
                    out.push(1);
                    out.extend_from_slice(&i.to_le_bytes());
                }
                Some(Value::Str(s)) => {
                    out.push(2);
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::{
        Value as OtelValue,
        trace::{SpanId, SpanKind, TraceId},
    };

    use super::*;
    use crate::export::wire::SpanWriter;

    fn span(kind: SpanKind, attrs: &[(&str, &str)], ints: &[(&str, i64)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut w = SpanWriter::new(&mut bytes);
        w.ids(TraceId::from(1), SpanId::from(2), None)
            .kind(&kind)
            .times(10_000_000, 35_000_000);
        for (k, v) in attrs {
            w.attr_str(k, v);
        }
        for (k, v) in ints {
            w.attr_int(k, *v);
        }
        bytes
    }

    fn mapped(bytes: &[u8]) -> Option<(Metric, Vec<(String, String)>)> {
        let view = SpanView::parse(bytes)?;
        let metric = Metric::of(&view)?;
        let mut kvs: Vec<(String, String)> = key_values(metric, &view)
            .into_iter()
            .map(|kv| {
                let v = match kv.value {
                    OtelValue::I64(i) => format!("{i}"),
                    other => other.as_str().into_owned(),
                };
                (kv.key.as_str().to_owned(), v)
            })
            .collect();
        kvs.sort();
        Some((metric, kvs))
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = list
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn http_server_takes_the_route_never_the_path() {
        let bytes = span(
            SpanKind::Server,
            &[
                ("http.request.method", "GET"),
                ("url.path", "/users/42"),
                ("url.scheme", "http"),
                ("http.route", "/users/{id}"),
                ("client.address", "10.0.0.1"),
                ("error.type", "500"),
            ],
            &[("http.response.status_code", 500), ("goroutine.id", 9)],
        );
        assert_eq!(
            mapped(&bytes),
            Some((
                Metric::HttpServer,
                pairs(&[
                    ("error.type", "500"),
                    ("http.request.method", "GET"),
                    ("http.response.status_code", "500"),
                    ("http.route", "/users/{id}"),
                    ("url.scheme", "http"),
                ])
            ))
        );
    }

    #[test]
    fn http_client_takes_the_server() {
        let bytes = span(
            SpanKind::Client,
            &[
                ("http.request.method", "POST"),
                ("url.full", "http://api:8080/x?q=REDACTED"),
                ("server.address", "api"),
            ],
            &[("server.port", 8080), ("http.response.status_code", 201)],
        );
        assert_eq!(
            mapped(&bytes),
            Some((
                Metric::HttpClient,
                pairs(&[
                    ("http.request.method", "POST"),
                    ("http.response.status_code", "201"),
                    ("server.address", "api"),
                    ("server.port", "8080"),
                ])
            ))
        );
    }

    #[test]
    fn rpc_and_db() {
        let server = span(
            SpanKind::Server,
            &[
                ("rpc.system", "grpc"),
                ("rpc.service", "shop.Cart"),
                ("rpc.method", "Add"),
            ],
            &[("rpc.grpc.status_code", 0)],
        );
        assert_eq!(
            mapped(&server),
            Some((
                Metric::RpcServer,
                pairs(&[
                    ("rpc.grpc.status_code", "0"),
                    ("rpc.method", "Add"),
                    ("rpc.service", "shop.Cart"),
                    ("rpc.system", "grpc"),
                ])
            ))
        );
        let client = span(
            SpanKind::Client,
            &[("rpc.system", "grpc"), ("server.address", "cart")],
            &[("server.port", 50051), ("rpc.grpc.status_code", 14)],
        );
        assert_eq!(mapped(&client).map(|(m, _)| m), Some(Metric::RpcClient));
        let db = span(
            SpanKind::Client,
            &[
                ("db.system.name", "sqlite"),
                ("db.operation.name", "SELECT"),
                ("db.collection.name", "items"),
                ("db.query.text", "SELECT * FROM items WHERE id = ?"),
            ],
            &[],
        );
        assert_eq!(
            mapped(&db),
            Some((
                Metric::DbClient,
                pairs(&[
                    ("db.collection.name", "items"),
                    ("db.operation.name", "SELECT"),
                    ("db.system.name", "sqlite"),
                ])
            ))
        );
    }

    #[test]
    fn incomplete_and_other_spans_feed_nothing() {
        let expired = span(
            SpanKind::Server,
            &[
                ("http.request.method", "GET"),
                ("agent.span.incomplete", "expired"),
            ],
            &[],
        );
        assert_eq!(mapped(&expired), None);
        let internal = span(SpanKind::Internal, &[("http.request.method", "GET")], &[]);
        assert_eq!(mapped(&internal), None);
        let usdt = span(SpanKind::Internal, &[("request.id", "7")], &[]);
        assert_eq!(mapped(&usdt), None);
    }

    #[test]
    fn units_and_bounds_follow_the_conventions() {
        assert_eq!(Metric::HttpServer.unit(), "s");
        assert_eq!(Metric::RpcClient.unit(), "ms");
        assert_eq!(Metric::DbClient.bounds()[0], 0.001);
        assert_eq!(Metric::HttpClient.bounds().len(), 14);
        // 25 ms: 0.025 s, 25 ms.
        let bytes = span(SpanKind::Server, &[], &[]);
        let view = SpanView::parse(&bytes).expect("view");
        assert_eq!(
            view.duration_ns() as f64 / Metric::HttpServer.ns_per_unit(),
            0.025
        );
        assert_eq!(
            view.duration_ns() as f64 / Metric::RpcServer.ns_per_unit(),
            25.0
        );
    }
}
