//! Sending encoded `ExportTraceServiceRequest` bodies to an OTLP endpoint,
//! over gRPC (unary `TraceService/Export`) or HTTP/protobuf (POST), in
//! cleartext for `http://` endpoints and only over TLS for `https://` ones
//! (tonic's connector refuses an `https` URI without TLS; reqwest is given
//! the TLS configuration and follows the scheme). With gzip, gRPC frames are
//! compressed by tonic (`grpc-encoding: gzip`) and HTTP bodies here
//! (`Content-Encoding: gzip`).
//!
//! The body is encoded once per batch; a retry resends the same bytes. What
//! is retried follows the OTLP specification: gRPC UNAVAILABLE,
//! RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, DATA_LOSS,
//! CANCELLED; HTTP 429, 502, 503, 504; and transport errors (connection
//! refused, reset, timeout), but not TLS failures (a certificate the agent
//! rejects, or one the collector rejects, does not heal in seconds).

use std::{io::Write as _, time::Duration};

use bytes::{Buf as _, BufMut as _, Bytes};
use tokio::sync::watch;
use tonic::{
    Code,
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Channel, Endpoint},
};

use super::{
    config::{Compression, OtlpConfig, OtlpProtocol},
    tls::{ClientTls, TlsError},
};

/// Why a send failed, as a user would name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Nothing listens there (or a firewall says so).
    Refused,
    /// No answer in time.
    TimedOut,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// The collector answered with an error status.
    Status,
    /// Anything else (DNS, reset, protocol).
    Other,
}

/// A failed send.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub message: String,
    /// Whether the OTLP specification allows a retry.
    pub retryable: bool,
    pub cause: Cause,
}

/// Failure to set the transport up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid OTLP endpoint {0:?}")]
    Endpoint(String, #[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("invalid OTLP header {0:?}")]
    Header(String),
    #[error(transparent)]
    Tls(Box<TlsError>),
}

impl From<TlsError> for TransportError {
    fn from(err: TlsError) -> Self {
        Self::Tls(Box::new(err))
    }
}

/// The cause of a transport failure, from the chain of errors behind it,
/// and the innermost message (the one that names what happened).
fn classify(err: &(dyn std::error::Error + 'static)) -> (Cause, String) {
    let mut cause = Cause::Other;
    let mut innermost = err.to_string();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => cause = Cause::Refused,
                std::io::ErrorKind::TimedOut => cause = Cause::TimedOut,
                _ => {}
            }
        }
        if e.downcast_ref::<rustls::Error>().is_some() {
            cause = Cause::Tls;
        }
        if let Some(r) = e.downcast_ref::<reqwest::Error>()
            && r.is_timeout()
        {
            cause = Cause::TimedOut;
        }
        let text = e.to_string();
        if cause == Cause::Other {
            let lower = text.to_ascii_lowercase();
            if lower.contains("tls") || lower.contains("certificate") || lower.contains("alpn") {
                cause = Cause::Tls;
            } else if lower.contains("timed out") || lower.contains("deadline") {
                cause = Cause::TimedOut;
            }
        }
        if !text.is_empty() {
            innermost = text;
        }
        current = e.source();
    }
    (cause, innermost)
}

/// What a cause is called in the log.
fn describe(cause: Cause, detail: &str) -> String {
    match cause {
        Cause::Refused => "connection refused".to_owned(),
        Cause::TimedOut if detail.to_ascii_lowercase().contains("timed out") => {
            "timed out".to_owned()
        }
        Cause::TimedOut => format!("timed out ({detail})"),
        Cause::Tls => format!("TLS handshake failed: {detail}"),
        Cause::Status | Cause::Other => detail.to_owned(),
    }
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
        gzip: bool,
    },
}

impl Transport {
    /// Sets the transport up; gRPC connects lazily, so a collector that is
    /// down at start-up only makes the first exports fail. The TLS files are
    /// read here: a bad one fails the start.
    pub fn new(config: &OtlpConfig) -> Result<Self, TransportError> {
        let tls = if config.is_tls() {
            Some(ClientTls::load(&config.tls)?)
        } else {
            None
        };
        let bad_endpoint = |e: Box<dyn std::error::Error + Send + Sync>| {
            TransportError::Endpoint(config.endpoint.clone(), e)
        };
        match config.protocol {
            OtlpProtocol::Grpc => {
                let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
                    .map_err(|e| bad_endpoint(Box::new(e)))?
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout);
                if let Some(tls) = &tls {
                    endpoint = endpoint
                        .tls_config(tls.grpc())
                        .map_err(|e| bad_endpoint(Box::new(e)))?;
                }
                let channel = endpoint.connect_lazy();
                let mut metadata = MetadataMap::new();
                for (key, value) in &config.headers {
                    let k = MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
                        .map_err(|_| TransportError::Header(key.clone()))?;
                    let v = MetadataValue::try_from(value.as_str())
                        .map_err(|_| TransportError::Header(key.clone()))?;
                    metadata.insert(k, v);
                }
                let mut grpc = tonic::client::Grpc::new(channel);
                if config.compression == Compression::Gzip {
                    grpc = grpc.send_compressed(CompressionEncoding::Gzip);
                }
                Ok(Self::Grpc {
                    grpc,
                    metadata,
                    timeout: config.timeout,
                })
            }
            OtlpProtocol::HttpProtobuf => {
                let mut builder = reqwest::Client::builder()
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout);
                builder = match &tls {
                    Some(tls) => builder.use_preconfigured_tls(tls.http()?).https_only(true),
                    None => builder.use_preconfigured_tls(super::tls::cleartext_http()?),
                };
                let client = builder.build().map_err(|e| bad_endpoint(Box::new(e)))?;
                let mut headers = reqwest::header::HeaderMap::new();
                headers.insert(
                    reqwest::header::CONTENT_TYPE,
                    reqwest::header::HeaderValue::from_static("application/x-protobuf"),
                );
                let gzip = config.compression == Compression::Gzip;
                if gzip {
                    headers.insert(
                        reqwest::header::CONTENT_ENCODING,
                        reqwest::header::HeaderValue::from_static("gzip"),
                    );
                }
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
                    gzip,
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
                grpc.ready().await.map_err(|e| {
                    let (cause, detail) = classify(&e);
                    SendError {
                        message: describe(cause, &detail),
                        retryable: cause != Cause::Tls,
                        cause,
                    }
                })?;
                let mut request = tonic::Request::new(body);
                *request.metadata_mut() = metadata.clone();
                request.set_timeout(*timeout);
                let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
                grpc.unary(request, path, RawCodec)
                    .await
                    .map(drop)
                    .map_err(|status| grpc_error(&status))
            }
            Self::Http {
                client,
                url,
                headers,
                gzip,
            } => {
                let body = if *gzip { gzip_body(&body) } else { body };
                let response = client
                    .post(url.as_str())
                    .headers(headers.clone())
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| {
                        let (cause, detail) = classify(&e);
                        SendError {
                            message: describe(cause, &detail),
                            retryable: cause != Cause::Tls,
                            cause,
                        }
                    })?;
                let status = response.status();
                if status.is_success() {
                    return Ok(());
                }
                Err(SendError {
                    retryable: matches!(status.as_u16(), 429 | 502 | 503 | 504),
                    message: format!("HTTP {status}"),
                    cause: Cause::Status,
                })
            }
        }
    }
}

/// A failed gRPC call: a status the collector sent, or one tonic made of a
/// transport failure (then its source says what failed).
fn grpc_error(status: &tonic::Status) -> SendError {
    let retryable = matches!(
        status.code(),
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::DataLoss
            | Code::Cancelled
    );
    match std::error::Error::source(status) {
        Some(source) => {
            let (cause, detail) = classify(source);
            SendError {
                message: describe(cause, &detail),
                retryable: retryable && cause != Cause::Tls,
                cause,
            }
        }
        None if status.code() == Code::DeadlineExceeded || status.code() == Code::Cancelled => {
            SendError {
                message: describe(
                    Cause::TimedOut,
                    &format!("gRPC {:?}: {}", status.code(), status.message()),
                ),
                retryable,
                cause: Cause::TimedOut,
            }
        }
        None => SendError {
            message: format!("gRPC {:?}: {}", status.code(), status.message()),
            retryable,
            cause: Cause::Status,
        },
    }
}

/// `body` gzip-compressed.
fn gzip_body(body: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(body);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// Attempts and their outcome, as they happen: the stall report watches them.
pub trait AttemptObserver: Send + Sync {
    /// An attempt failed (a retry may follow).
    fn failed(&self, err: &SendError);
    /// An attempt succeeded.
    fn succeeded(&self);
}

/// Sends `body`, retrying what may be retried with exponential backoff
/// (100 ms doubling to 5 s) until it succeeds, fails for good, `deadline`
/// passes (`OTEL_EXPORTER_OTLP_TIMEOUT` / `OTEL_BSP_EXPORT_TIMEOUT`), or
/// shutdown cuts it short.
pub async fn send_with_retry(
    transport: &mut Transport,
    body: Bytes,
    deadline: Duration,
    observer: &dyn AttemptObserver,
    stopping: &mut watch::Receiver<bool>,
) -> Result<(), SendError> {
    let mut last: Option<SendError> = None;
    let attempts = async {
        let mut backoff = Duration::from_millis(100);
        loop {
            match transport.send(body.clone()).await {
                Ok(()) => {
                    observer.succeeded();
                    return Ok(());
                }
                Err(err) => {
                    observer.failed(&err);
                    if !err.retryable || *stopping.borrow() {
                        return Err(err);
                    }
                    last = Some(err);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stopping.wait_for(|stop| *stop) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    };
    let result = tokio::time::timeout(deadline, attempts).await;
    match result {
        Ok(result) => result,
        Err(_) => {
            let err = SendError {
                message: match &last {
                    Some(last) => format!(
                        "not delivered within {deadline:?}, the last attempt: {}",
                        last.message
                    ),
                    None => describe(Cause::TimedOut, &format!("no answer within {deadline:?}")),
                },
                retryable: false,
                cause: last.as_ref().map_or(Cause::TimedOut, |l| l.cause),
            };
            observer.failed(&err);
            Err(err)
        }
    }
}
