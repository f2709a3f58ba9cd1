//! Building opentelemetry-otlp exporters from a resolved [`OtlpConfig`].

use std::collections::HashMap;

use std::time::Duration;

use opentelemetry_otlp::{
    ExporterBuildError, Protocol, RetryPolicy, SpanExporter, WithExportConfig as _,
    WithHttpConfig as _, WithTonicConfig as _,
};

use super::config::{OtlpConfig, OtlpProtocol};

/// Retries of one batch: the exporter encodes the batch once and retries
/// what the OTLP spec calls retryable (unavailable, throttled, 502/503/504,
/// transport errors) with exponential backoff: 100 ms doubling to 5 s, eight
/// times, about 20 s in all, while the queue in front keeps absorbing spans.
fn retry_policy() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(8)
        .with_initial_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
}

/// Creates the exporter. gRPC channels connect lazily, so a collector that
/// is down at start-up does not stop tracing: exports fail and are retried.
pub fn build(config: &OtlpConfig) -> Result<SpanExporter, ExporterBuildError> {
    match config.protocol {
        OtlpProtocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (key, value) in &config.headers {
                let key =
                    tonic::metadata::MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes());
                let value = value.parse();
                match (key, value) {
                    (Ok(key), Ok(value)) => {
                        metadata.insert(key, value);
                    }
                    _ => log::warn!("ignoring OTLP header that is not valid gRPC metadata"),
                }
            }
            SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.timeout)
                .with_metadata(metadata)
                .with_retry_policy(retry_policy())
                .build()
        }
        OtlpProtocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_endpoint(config.endpoint.clone())
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(config.timeout)
            .with_retry_policy(retry_policy())
            .with_headers(
                config
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>(),
            )
            .build(),
    }
}
