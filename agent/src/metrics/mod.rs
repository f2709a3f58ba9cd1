//! Metrics, through the OpenTelemetry metrics SDK: request rate, errors and
//! latency per route and per call ([`requests`], derived from every
//! finished span before export, so dashboards work whatever happens to the
//! spans later), and the agent's own health ([`agent`], from the session's
//! counters). Exported over OTLP by `opentelemetry-otlp` (a periodic
//! reader, and a final collection at shutdown) and served for Prometheus
//! ([`prometheus`]); [`config`] reads the flags and `OTEL_*` variables.
//!
//! The hooks are free functions on process-wide state, so that what feeds
//! the metrics stays one line where it is: [`observe_span`] where every span
//! enters the export pipeline ([`crate::export::SpanSender`]),
//! [`publish_counters`] and [`publish_attached`] in the session. With
//! metrics off (the default without an endpoint or a listen address) each
//! is one relaxed atomic load.

pub mod agent;
pub mod config;
pub mod prometheus;
pub mod requests;
pub mod span_view;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::{InstrumentationScope, metrics::MeterProvider as _};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        ManualReader, PeriodicReader, SdkMeterProvider, Temporality, data::ResourceMetrics,
        exporter::PushMetricExporter,
    },
};
use tokio::task::JoinHandle;

pub use agent::{Attached, QueueFill};
pub use config::{MetricsConfig, MetricsConfigError, MetricsInputs, OtlpMetrics};
use prometheus::SharedReader;
use requests::Requests;

use crate::{
    export::{
        config::{Compression, OtlpConfig, OtlpProtocol},
        tls::{self, ClientTls, TlsError},
    },
    session::Counters,
};

/// Whether metrics are on: the hooks' first and, when off, only check.
static ON: AtomicBool = AtomicBool::new(false);
/// The request histograms, while metrics are on.
static REQUESTS: Mutex<Option<Requests>> = Mutex::new(None);
/// What the agent metrics' callbacks read, while metrics are on.
static AGENT: Mutex<Option<agent::Shared>> = Mutex::new(None);

/// Records a finished span (its encoded OTLP `Span`) in the request
/// metrics. The hook where spans enter the export pipeline.
pub fn observe_span(bytes: &[u8]) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let mut requests = REQUESTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(requests) = requests.as_mut() {
        requests.observe(bytes);
    }
}

/// The session's counters (and its export queue) as they are now: what the
/// agent metrics report until the next call.
pub fn publish_counters(counters: &Counters, queue: Option<QueueFill>) {
    with_agent(|s| s.set_counters(counters, queue));
}

/// The probes and targets the session attached.
pub fn publish_attached(attached: Attached) {
    with_agent(|s| s.set_attached(attached));
}

fn with_agent(f: impl FnOnce(&mut agent::Snapshot)) {
    if !ON.load(Ordering::Relaxed) {
        return;
    }
    let shared = AGENT.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if let Some(shared) = shared {
        f(&mut shared.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Why metrics could not start: one line naming the setting or address.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Config(#[from] MetricsConfigError),
    #[error("OTLP metrics export to {endpoint}")]
    Tls {
        endpoint: String,
        #[source]
        source: Box<TlsError>,
    },
    #[error("invalid OTLP metrics header {0:?}")]
    Header(String),
    #[error("cannot export metrics to {endpoint}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("cannot build the HTTP client of metrics export to {endpoint}: {reason}")]
    HttpClient { endpoint: String, reason: String },
    #[error(transparent)]
    Listen(#[from] prometheus::ListenError),
}

/// Time the final collection and export get at shutdown: with the spans'
/// 1.5 s (`session`), the agent still exits within 2 s of a signal. A
/// collector that does not answer in time misses the last export (said in
/// one line); a live one takes milliseconds.
const SHUTDOWN_BUDGET: Duration = Duration::from_millis(400);

/// Running metrics: the meter provider, its readers and `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    provider: SdkMeterProvider,
    /// Where the final export goes, for the warning when it fails.
    otlp_endpoint: Option<String>,
    /// The OTLP exports and their failures, said at shutdown.
    exports: Arc<ExportCounts>,
    server: Option<(SocketAddr, JoinHandle<()>)>,
}

impl Metrics {
    /// Starts what `config` asks for, on the current tokio runtime; `None`
    /// when it asks for nothing. Only one may run at a time.
    pub async fn start(
        config: &MetricsConfig,
        resource: &Resource,
    ) -> Result<Option<Self>, MetricsError> {
        if !config.enabled() {
            return Ok(None);
        }
        let mut builder = SdkMeterProvider::builder().with_resource(resource.clone());
        let exports = Arc::<ExportCounts>::default();
        if let Some(otlp) = &config.otlp {
            let cause = FailureCause::default();
            let exporter = Logged {
                inner: otlp_exporter(&otlp.config, &cause)?,
                endpoint: otlp.config.endpoint.clone(),
                counts: exports.clone(),
                cause,
            };
            builder = builder.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(otlp.interval)
                    .build(),
            );
        }
        let mut server = None;
        if let Some(addr) = config.prometheus {
            let reader = SharedReader(Arc::new(ManualReader::builder().build()));
            builder = builder.with_reader(reader.clone());
            server = Some(prometheus::serve(addr, reader).await?);
        }
        let provider = builder.build();
        let meter = provider.meter_with_scope(
            InstrumentationScope::builder("agent")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        let shared = agent::Shared::default();
        agent::register(&meter, &shared);
        *AGENT.lock().unwrap_or_else(PoisonError::into_inner) = Some(shared);
        *REQUESTS.lock().unwrap_or_else(PoisonError::into_inner) = Some(Requests::new(&meter));
        ON.store(true, Ordering::Relaxed);
        if let Some(otlp) = &config.otlp {
            log::info!(
                "metrics: OTLP to {} every {:?}",
                otlp.config.endpoint,
                otlp.interval
            );
        }
        if let Some((addr, _)) = &server {
            log::info!("metrics: serving http://{addr}/metrics");
        }
        Ok(Some(Self {
            provider,
            otlp_endpoint: config.otlp.as_ref().map(|o| o.config.endpoint.clone()),
            exports,
            server,
        }))
    }

    /// Where `/metrics` is served.
    pub fn prometheus_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(|(addr, _)| *addr)
    }

    /// Publishes the session's final counters (none when it failed), then
    /// collects and exports one last time (within a bounded time) and stops;
    /// says how many OTLP exports failed, if any did.
    pub async fn shutdown(self, counters: Option<&Counters>) {
        if let Some(counters) = counters {
            publish_counters(counters, None);
        }
        // Detached by now.
        publish_attached(Attached::default());
        ON.store(false, Ordering::Relaxed);
        let provider = self.provider;
        // The periodic reader exports from its own thread and waits for it;
        // the gRPC exporter's connection runs on this runtime, which must
        // stay free meanwhile.
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        let to = self.otlp_endpoint.as_deref().unwrap_or("/metrics");
        match tokio::time::timeout(SHUTDOWN_BUDGET, flush).await {
            Ok(Ok(Ok(()))) => {}
            // The exporter said why (`Logged`).
            Ok(Ok(Err(err))) => log::debug!("metrics: shutdown: {err}"),
            Ok(Err(err)) => log::warn!("metrics: final export to {to} failed: {err}"),
            Err(_) => log::warn!(
                "metrics: final export to {to} took longer than {SHUTDOWN_BUDGET:?}: not sent"
            ),
        }
        let failed = self.exports.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let done = self.exports.done.load(Ordering::Relaxed);
            log::warn!("metrics: {failed} of {done} exports to {to} failed");
        }
        if let Some((_, task)) = self.server {
            task.abort();
        }
        *REQUESTS.lock().unwrap_or_else(PoisonError::into_inner) = None;
        *AGENT.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// The OTLP exporter of `otlp`: over TLS (its PEM files read and checked
/// here, at start) when the endpoint is `https://`, never in cleartext.
fn otlp_exporter(
    otlp: &OtlpConfig,
    cause: &FailureCause,
) -> Result<opentelemetry_otlp::MetricExporter, MetricsError> {
    let tls_error = |source| MetricsError::Tls {
        endpoint: otlp.endpoint.clone(),
        source: Box::new(source),
    };
    let client_tls = if otlp.is_tls() {
        Some(ClientTls::load(&otlp.tls).map_err(tls_error)?)
    } else {
        None
    };
    let compression = match otlp.compression {
        Compression::Gzip => Some(opentelemetry_otlp::Compression::Gzip),
        Compression::None => None,
    };
    // The exporter adds the header variables it reads itself after the
    // configured headers, so a flag would lose to them: the resolved
    // headers are set on every request last (an interceptor, the HTTP
    // client), replacing whatever the exporter put under the same names.
    let mut headers = http::HeaderMap::new();
    for (key, value) in &otlp.headers {
        let name = http::HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| MetricsError::Header(key.clone()))?;
        let value =
            http::HeaderValue::from_str(value).map_err(|_| MetricsError::Header(key.clone()))?;
        headers.insert(name, value);
    }
    let built = match otlp.protocol {
        OtlpProtocol::Grpc => {
            let metadata = tonic::metadata::MetadataMap::from_headers(headers);
            let set_headers = move |mut request: tonic::Request<()>| {
                for entry in metadata.iter() {
                    if let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry {
                        request.metadata_mut().insert(key.clone(), value.clone());
                    }
                }
                Ok(request)
            };
            let mut builder = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(&otlp.endpoint)
                .with_timeout(otlp.timeout)
                .with_interceptor(set_headers);
            if let Some(tls) = &client_tls {
                builder = builder.with_tls_config(tls.grpc());
            }
            if let Some(compression) = compression {
                builder = builder.with_compression(compression);
            }
            builder.build()
        }
        OtlpProtocol::HttpProtobuf => {
            let mut builder = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_endpoint(&otlp.endpoint)
                .with_timeout(otlp.timeout)
                .with_http_client(HttpClientWithCause {
                    client: http_client(otlp, client_tls.as_ref())?,
                    headers,
                    cause: cause.clone(),
                });
            if let Some(compression) = compression {
                builder = builder.with_compression(compression);
            }
            builder.build()
        }
    };
    built.map_err(|source| MetricsError::Exporter {
        endpoint: otlp.endpoint.clone(),
        source,
    })
}

/// The blocking reqwest client of the HTTP exporter: `https` only with the
/// configured roots (and client certificate) when the endpoint is
/// `https://`, else a client that trusts nothing, so a redirect to
/// `https://` cannot succeed unverified. Built on a thread of its own, as
/// the exporter builds its default one: a blocking client owns a runtime,
/// which tokio forbids creating inside another.
fn http_client(
    otlp: &OtlpConfig,
    client_tls: Option<&ClientTls>,
) -> Result<reqwest::blocking::Client, MetricsError> {
    let tls_error = |source| MetricsError::Tls {
        endpoint: otlp.endpoint.clone(),
        source: Box::new(source),
    };
    let builder = reqwest::blocking::Client::builder().timeout(otlp.timeout);
    let builder = match client_tls {
        Some(tls) => builder
            .use_preconfigured_tls(tls.http().map_err(tls_error)?)
            .https_only(true),
        None => builder.use_preconfigured_tls(tls::cleartext_http().map_err(tls_error)?),
    };
    let built = std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || builder.build())
        .map_err(|e| e.to_string())
        .and_then(|thread| {
            thread
                .join()
                .map_err(|_| "the thread building it panicked".to_owned())
        })
        .and_then(|client| client.map_err(|e| e.to_string()));
    built.map_err(|reason| MetricsError::HttpClient {
        endpoint: otlp.endpoint.clone(),
        reason,
    })
}

/// OTLP exports that finished (sent or failed), and those that failed.
#[derive(Debug, Default)]
struct ExportCounts {
    done: AtomicU64,
    failed: AtomicU64,
}

/// The OTLP exporter, saying when exports fail: the first failure, then
/// at every power of two (the SDK's own reports go to `tracing`, which the
/// agent does not print).
#[derive(Debug)]
struct Logged {
    inner: opentelemetry_otlp::MetricExporter,
    endpoint: String,
    counts: Arc<ExportCounts>,
    /// Why the last HTTP request failed, which the exporter's error does
    /// not say.
    cause: FailureCause,
}

impl PushMetricExporter for Logged {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        let cause = self
            .cause
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.counts.done.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = &result {
            let n = self.counts.failed.fetch_add(1, Ordering::Relaxed) + 1;
            let cause = cause.map(|c| format!(": {c}")).unwrap_or_default();
            if n.is_power_of_two() {
                log::warn!(
                    "metrics: export to {} failed ({n} so far): {err}{cause}",
                    self.endpoint
                );
            }
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// Why the last HTTP request of the exporter failed, with every error of
/// the chain (`invalid peer certificate: UnknownIssuer`, `Connection
/// refused`): the exporter reduces it to "network error".
type FailureCause = Arc<Mutex<Option<String>>>;

/// The HTTP exporter's client: reqwest's, setting the resolved headers and
/// keeping the cause of a failure.
#[derive(Debug)]
struct HttpClientWithCause {
    client: reqwest::blocking::Client,
    headers: http::HeaderMap,
    cause: FailureCause,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpClientWithCause {
    async fn send_bytes(
        &self,
        mut request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        for (name, value) in &self.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let result = self.client.send_bytes(request).await;
        if let Err(err) = &result {
            let mut chain = err.to_string();
            let mut source = err.source();
            while let Some(e) = source {
                chain.push_str(": ");
                chain.push_str(&e.to_string());
                source = e.source();
            }
            *self.cause.lock().unwrap_or_else(PoisonError::into_inner) = Some(chain);
        }
        result
    }
}
