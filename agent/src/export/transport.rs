//! Sending encoded `ExportTraceServiceRequest` bodies to an OTLP endpoint,
//! over gRPC (unary `TraceService/Export`) or HTTP/protobuf (POST).
//!
//! The body is encoded once per batch; a retry resends the same bytes. What
//! is retried follows the OTLP specification: gRPC UNAVAILABLE,
//! RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, DATA_LOSS,
//! CANCELLED; HTTP 429, 502, 503, 504; and transport errors (connection
//! refused, reset, timeout).

use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes};
use tokio::sync::watch;
use tonic::{
    Code,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Channel, Endpoint},
};

use super::config::{OtlpConfig, OtlpProtocol};

/// A failed send.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub message: String,
    /// Whether the OTLP specification allows a retry.
    pub retryable: bool,
}

/// Failure to set the transport up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid OTLP endpoint {0:?}")]
    Endpoint(String, #[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("invalid OTLP header {0:?}")]
    Header(String),
}

/// gRPC codec passing pre-encoded bytes through and discarding the response
/// (an `ExportTraceServiceResponse`, whose partial-success details are not
/// acted on).
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

#[derive(Clone, Copy, Debug, Default)]
struct RawEncoder;

#[derive(Clone, Copy, Debug, Default)]
struct DiscardDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for DiscardDecoder {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        let n = src.remaining();
        src.advance(n);
        Ok(Some(()))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = DiscardDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> DiscardDecoder {
        DiscardDecoder
    }
}

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A connection to one OTLP endpoint.
/// Cheap to clone: clones share the connection pool (HTTP) or channel (gRPC).
#[derive(Clone, Debug)]
pub enum Transport {
    Grpc {
        grpc: tonic::client::Grpc<Channel>,
        metadata: MetadataMap,
        timeout: Duration,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: reqwest::header::HeaderMap,
    },
}

impl Transport {
    /// Sets the transport up; gRPC connects lazily, so a collector that is
    /// down at start-up only makes the first exports fail.
    pub fn new(config: &OtlpConfig) -> Result<Self, TransportError> {
        match config.protocol {
            OtlpProtocol::Grpc => {
                let endpoint = Endpoint::from_shared(config.endpoint.clone())
                    .map_err(|e| TransportError::Endpoint(config.endpoint.clone(), Box::new(e)))?
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout);
                let channel = endpoint.connect_lazy();
                let mut metadata = MetadataMap::new();
                for (key, value) in &config.headers {
                    let k = MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
                        .map_err(|_| TransportError::Header(key.clone()))?;
                    let v = MetadataValue::try_from(value.as_str())
                        .map_err(|_| TransportError::Header(key.clone()))?;
                    metadata.insert(k, v);
                }
                Ok(Self::Grpc {
                    grpc: tonic::client::Grpc::new(channel),
                    metadata,
                    timeout: config.timeout,
                })
            }
            OtlpProtocol::HttpProtobuf => {
                let client = reqwest::Client::builder()
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout)
                    .build()
                    .map_err(|e| TransportError::Endpoint(config.endpoint.clone(), Box::new(e)))?;
                let mut headers = reqwest::header::HeaderMap::new();
                headers.insert(
                    reqwest::header::CONTENT_TYPE,
                    reqwest::header::HeaderValue::from_static("application/x-protobuf"),
                );
                for (key, value) in &config.headers {
                    let k = reqwest::header::HeaderName::from_bytes(key.as_bytes())
                        .map_err(|_| TransportError::Header(key.clone()))?;
                    let v = reqwest::header::HeaderValue::from_str(value)
                        .map_err(|_| TransportError::Header(key.clone()))?;
                    headers.insert(k, v);
                }
                Ok(Self::Http {
                    client,
                    url: config.endpoint.clone(),
                    headers,
                })
            }
        }
    }

    /// Sends one body once.
    pub async fn send(&mut self, body: Bytes) -> Result<(), SendError> {
        match self {
            Self::Grpc {
                grpc,
                metadata,
                timeout,
            } => {
                grpc.ready().await.map_err(|e| SendError {
                    message: format!("gRPC channel not ready: {e}"),
                    retryable: true,
                })?;
                let mut request = tonic::Request::new(body);
                *request.metadata_mut() = metadata.clone();
                request.set_timeout(*timeout);
                let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
                grpc.unary(request, path, RawCodec)
                    .await
                    .map(drop)
                    .map_err(|status| SendError {
                        retryable: matches!(
                            status.code(),
                            Code::Unavailable
                                | Code::ResourceExhausted
                                | Code::DeadlineExceeded
                                | Code::Aborted
                                | Code::OutOfRange
                                | Code::DataLoss
                                | Code::Cancelled
                        ),
                        message: format!("gRPC {:?}: {}", status.code(), status.message()),
                    })
            }
            Self::Http {
                client,
                url,
                headers,
            } => {
                let response = client
                    .post(url.as_str())
                    .headers(headers.clone())
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| SendError {
                        message: format!("HTTP request failed: {e}"),
                        retryable: true,
                    })?;
                let status = response.status();
                if status.is_success() {
                    return Ok(());
                }
                Err(SendError {
                    retryable: matches!(status.as_u16(), 429 | 502 | 503 | 504),
                    message: format!("HTTP {status}"),
                })
            }
        }
    }
}

/// Sends `body`, retrying what may be retried with exponential backoff
/// (100 ms doubling to 5 s, 8 retries, about 20 s); shutdown cuts it short.
pub async fn send_with_retry(
    transport: &mut Transport,
    body: Bytes,
    stopping: &mut watch::Receiver<bool>,
) -> Result<(), SendError> {
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        match transport.send(body.clone()).await {
            Ok(()) => return Ok(()),
            Err(err) if err.retryable && attempt < 8 && !*stopping.borrow() => {
                attempt += 1;
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stopping.wait_for(|stop| *stop) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(err),
        }
    }
}
