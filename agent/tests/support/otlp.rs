//! OTLP receivers on real sockets: gRPC (tonic) and HTTP/protobuf (hyper),
//! decoding what the agent sends into flat, assertable spans.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span,
};
use prost::Message as _;

/// One export request and the headers (or gRPC metadata) it came with.
#[derive(Clone, Debug)]
pub struct Received {
    pub request: ExportTraceServiceRequest,
    pub headers: BTreeMap<String, String>,
}

/// A span with its resource and scope, attributes as strings.
#[derive(Clone, Debug)]
pub struct FlatSpan {
    pub resource: BTreeMap<String, String>,
    pub scope: String,
    pub span: Span,
    pub attributes: BTreeMap<String, String>,
}

impl FlatSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_nanos(
            self.span
                .end_time_unix_nano
                .saturating_sub(self.span.start_time_unix_nano),
        )
    }
}

/// Renders an attribute value the way assertions compare it.
/// Lowercase hex of an id, as W3C `traceparent` spells it.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn value_to_string(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::ArrayValue(a)) => format!(
            "[{}]",
            a.values
                .iter()
                .map(value_to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

pub fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(value_to_string).unwrap_or_default(),
            )
        })
        .collect()
}

/// Flattens export requests into spans.
pub fn flatten<'a>(
    requests: impl IntoIterator<Item = &'a ExportTraceServiceRequest>,
) -> Vec<FlatSpan> {
    let mut out = Vec::new();
    for request in requests {
        for rs in &request.resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                let scope = ss
                    .scope
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                for span in &ss.spans {
                    out.push(FlatSpan {
                        resource: resource.clone(),
                        scope: scope.clone(),
                        attributes: attributes(&span.attributes),
                        span: span.clone(),
                    });
                }
            }
        }
    }
    out
}

type Store = Arc<Mutex<Vec<Received>>>;

/// How a receiver listens: TLS with this certificate (and, for mutual TLS,
/// the CA client certificates must chain to), or cleartext.
#[derive(Clone, Debug, Default)]
pub struct Listen {
    /// Where to listen: 127.0.0.1 on a free port when `None`.
    pub addr: Option<SocketAddr>,
    /// Server certificate chain and key, PEM.
    pub tls: Option<(String, String)>,
    /// CA of the client certificates, PEM: set for mutual TLS.
    pub client_ca: Option<String>,
}

/// A rustls acceptor for `listen`'s certificate (HTTP/1.1).
fn http_acceptor(listen: &Listen) -> Option<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let (cert, key) = listen.tls.as_ref()?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .expect("server certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("server key PEM");
    #[allow(deprecated, reason = "the agent's provider too: see export/tls.rs")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match &listen.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(cert.expect("client CA PEM")).expect("client CA");
            }
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .expect("client verifier"),
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .expect("server certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The body of an HTTP export, inflated when it came gzip-compressed.
fn inflate(headers: &BTreeMap<String, String>, body: bytes::Bytes) -> Option<bytes::Bytes> {
    use std::io::Read as _;
    match headers.get("content-encoding").map(String::as_str) {
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .ok()?;
            Some(out.into())
        }
        None => Some(body),
        Some(_) => None,
    }
}

/// A running receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    store: Store,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("addr", &self.addr)
            .finish()
    }
}

struct GrpcService {
    store: Store,
}

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        self.store.lock().expect("store").push(Received {
            request: request.into_inner(),
            headers,
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("receiver runtime")
}

impl Receiver {
    /// An OTLP/gRPC receiver on 127.0.0.1.
    pub fn grpc() -> Self {
        Self::grpc_with(&Listen::default())
    }

    /// An OTLP/gRPC receiver on 127.0.0.1, over TLS when `listen` says so;
    /// it takes gzip-compressed requests.
    pub fn grpc_with(listen: &Listen) -> Self {
        let runtime = runtime();
        let store: Store = Arc::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(
                listen.addr.unwrap_or_else(|| ([127, 0, 0, 1], 0).into()),
            ))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = TraceServiceServer::new(GrpcService {
            store: store.clone(),
        })
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let mut server = tonic::transport::Server::builder();
        if let Some((cert, key)) = &listen.tls {
            let mut tls = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key));
            if let Some(ca) = &listen.client_ca {
                tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
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
            runtime: Some(runtime),
        }
    }

    /// An OTLP/HTTP (protobuf) receiver on 127.0.0.1, answering POST /v1/traces.
    pub fn http() -> Self {
        Self::http_with(&Listen::default())
    }

    /// An OTLP/HTTP receiver on 127.0.0.1, over TLS when `listen` says so;
    /// it takes gzip-compressed bodies.
    pub fn http_with(listen: &Listen) -> Self {
        use http_body_util::BodyExt as _;
        let acceptor = http_acceptor(listen);
        let runtime = runtime();
        let store: Store = Arc::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(
                listen.addr.unwrap_or_else(|| ([127, 0, 0, 1], 0).into()),
            ))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accept_store = store.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let store = accept_store.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let store = store.clone();
                            async move {
                                let path = req.uri().path().to_owned();
                                let headers = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or_default().to_owned())
                                    })
                                    .collect();
                                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                                let body = body.ok().and_then(|b| inflate(&headers, b));
                                let status = match (path.as_str(), body) {
                                    ("/v1/traces", Some(bytes)) => {
                                        match ExportTraceServiceRequest::decode(bytes) {
                                            Ok(request) => {
                                                store
                                                    .lock()
                                                    .expect("store")
                                                    .push(Received { request, headers });
                                                200
                                            }
                                            Err(_) => 400,
                                        }
                                    }
                                    _ => 404,
                                };
                                let body = if status == 200 {
                                    ExportTraceServiceResponse::default().encode_to_vec()
                                } else {
                                    Vec::new()
                                };
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/x-protobuf")
                                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
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
        Self {
            addr,
            store,
            runtime: Some(runtime),
        }
    }

    /// The base URL of the receiver.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.store.lock().expect("store").clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<FlatSpan> {
        let received = self.received();
        flatten(received.iter().map(|r| &r.request))
    }

    /// Waits until at least `n` spans arrived (panics after `timeout`).
    pub fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<FlatSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} spans, got {} within {timeout:?}: {spans:#?}",
                spans.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A rustls acceptor for `listen`'s certificate (HTTP/1.1), for receivers
/// of other services than traces; `None` for cleartext.
pub fn tls_acceptor(listen: &Listen) -> Option<tokio_rustls::TlsAcceptor> {
    http_acceptor(listen)
}

/// tonic's server configuration for `listen`'s certificate, for receivers
/// of other services than traces; `None` for cleartext.
pub fn grpc_server_tls(listen: &Listen) -> Option<tonic::transport::ServerTlsConfig> {
    let (cert, key) = listen.tls.as_ref()?;
    let mut tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key));
    if let Some(ca) = &listen.client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
    }
    Some(tls)
}

/// Certificates made for one test (rcgen), in a temporary directory: a CA
/// (`ca.pem`), a server certificate it signed for 127.0.0.1 and localhost,
/// a client certificate it signed (`client.pem`, `client-key.pem`), and a
/// CA that signed nothing here (`other-ca.pem`).
pub struct TestPki {
    pub dir: tempfile::TempDir,
    ca_pem: String,
    server: (String, String),
}

impl TestPki {
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let new_ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = new_ca("agent test CA");
        let other = new_ca("someone else's CA");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &ca).expect("server certificate");
        let mut params = CertificateParams::new(vec!["agent".to_owned()]).expect("client params");
        params.distinguished_name.push(DnType::CommonName, "agent");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().expect("client key");
        let client = params
            .signed_by(&client_key, &ca)
            .expect("client certificate");
        for (name, text) in [
            ("ca.pem", ca.pem()),
            ("other-ca.pem", other.pem()),
            ("client.pem", client.pem()),
            ("client-key.pem", client_key.serialize_pem()),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write PEM");
        }
        Self {
            dir,
            ca_pem: ca.pem(),
            server: (cert.pem(), key.serialize_pem()),
        }
    }

    /// A file of the directory.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// TLS with the server certificate.
    pub fn listen(&self) -> Listen {
        Listen {
            tls: Some(self.server.clone()),
            ..Listen::default()
        }
    }

    /// Mutual TLS: clients must show a certificate the CA signed.
    pub fn listen_mutual(&self) -> Listen {
        Listen {
            tls: Some(self.server.clone()),
            client_ca: Some(self.ca_pem.clone()),
            ..Listen::default()
        }
    }
}

/// Splits off the connection set-up family's spans (scope `agent/net`:
/// TLS handshakes, lookups and dials, asserted exactly in
/// tests/net_spans.rs): their names, sorted, and every other span.
pub fn split_net(spans: Vec<FlatSpan>) -> (Vec<String>, Vec<FlatSpan>) {
    let (net, rest): (Vec<FlatSpan>, Vec<FlatSpan>) =
        spans.into_iter().partition(|s| s.scope == "agent/net");
    let mut names: Vec<String> = net.into_iter().map(|s| s.span.name).collect();
    names.sort();
    (names, rest)
}
