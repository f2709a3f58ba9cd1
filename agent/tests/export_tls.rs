//! OTLP export over TLS, with gzip and with the batch processor's variables,
//! as a user sets it up: certificates
//! made here (rcgen), receivers on real sockets, and `agent decode` on a
//! trace written by a Go program, so the spans are real and no root is
//! needed. An `https://` endpoint must never see a cleartext byte.

mod support;

use std::{
    collections::BTreeSet,
    io::Read as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use support::{
    agent::command,
    otlp::{Listen, Receiver},
};

/// The span names of the `nested` trace program.
const NESTED: [&str; 5] = ["root", "child", "outer", "inner", "sleepy"];

/// Certificates of one test: a CA, a server certificate for 127.0.0.1 and
/// localhost, a client certificate, and a CA that signed none of them.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    server: (String, String),
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("leaf params");
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("client"),
    );
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("leaf");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = new_ca("agent test CA");
        let other = new_ca("someone else's CA");
        let server = leaf(
            &ca,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(&ca, &["agent"], ExtendedKeyUsagePurpose::ClientAuth);
        for (name, text) in [
            ("ca.pem", ca.pem()),
            ("other-ca.pem", other.pem()),
            ("client.pem", client_cert),
            ("client-key.pem", client_key),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write PEM");
        }
        Self {
            dir,
            ca_pem: ca.pem(),
            server,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn listen(&self) -> Listen {
        Listen {
            tls: Some(self.server.clone()),
            ..Listen::default()
        }
    }

    fn listen_mutual(&self) -> Listen {
        Listen {
            tls: Some(self.server.clone()),
            client_ca: Some(self.ca_pem.clone()),
            ..Listen::default()
        }
    }
}

fn trace(dir: &Path) -> PathBuf {
    support::fixture::generate_trace(dir, "nested", None, None)
}

/// `agent decode TRACE` exporting to `endpoint` with `protocol`, with the
/// extra arguments and variables.
fn decode(
    trace: &Path,
    endpoint: &str,
    protocol: &str,
    args: &[&str],
    env: &[(&str, &Path)],
) -> Output {
    let mut cmd = command();
    cmd.arg("decode")
        .arg(trace)
        .args(["--otlp-endpoint", endpoint, "--otlp-protocol", protocol])
        .args(args);
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.output().expect("agent decode")
}

/// The export succeeded and the receiver holds every span of `nested`.
fn assert_delivered(output: &Output, receiver: &Receiver) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let spans = receiver.spans();
    let names: BTreeSet<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
    for name in NESTED {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    assert!(
        stderr.contains(&format!(
            "agent: {} spans exported from 1 of 1 files; 0 dropped",
            spans.len()
        )),
        "{stderr}"
    );
}

#[test]
fn tls_with_the_ca_file_over_grpc_and_http() {
    let pki = Pki::new();
    let trace = trace(pki.dir.path());
    let ca = pki.path("ca.pem");
    for (protocol, receiver) in [
        ("grpc", Receiver::grpc_with(&pki.listen())),
        ("http/protobuf", Receiver::http_with(&pki.listen())),
    ] {
        let endpoint = format!("https://{}", receiver.addr);
        let output = decode(
            &trace,
            &endpoint,
            protocol,
            &[],
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca)],
        );
        assert_delivered(&output, &receiver);
        // The flag does the same.
        let receiver_flag = match protocol {
            "grpc" => Receiver::grpc_with(&pki.listen()),
            _ => Receiver::http_with(&pki.listen()),
        };
        let endpoint = format!("https://localhost:{}", receiver_flag.addr.port());
        let ca_arg = ca.to_str().expect("utf-8 path");
        let output = decode(
            &trace,
            &endpoint,
            protocol,
            &["--otlp-certificate", ca_arg],
            &[],
        );
        assert_delivered(&output, &receiver_flag);
    }
}

#[test]
fn a_wrong_ca_is_reported_and_the_spans_counted_as_dropped() {
    let pki = Pki::new();
    let trace = trace(pki.dir.path());
    let other = pki.path("other-ca.pem");
    for (protocol, receiver) in [
        ("grpc", Receiver::grpc_with(&pki.listen())),
        ("http/protobuf", Receiver::http_with(&pki.listen())),
    ] {
        let endpoint = format!("https://{}", receiver.addr);
        let output = decode(
            &trace,
            &endpoint,
            protocol,
            &[],
            &[("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", &other)],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(
            stderr.contains("TLS handshake failed") && stderr.contains("UnknownIssuer"),
            "{protocol}: the cause is named: {stderr}"
        );
        assert!(receiver.spans().is_empty(), "{protocol}");
        // Every span the decoder produced is counted as dropped.
        let line = stderr
            .lines()
            .find(|l| l.contains("spans exported from"))
            .unwrap_or_else(|| panic!("{stderr}"));
        let dropped: u64 = line
            .rsplit("; ")
            .next()
            .and_then(|d| d.strip_suffix(" dropped"))
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(line.starts_with("agent: 0 spans exported"), "{line}");
        assert!(dropped >= NESTED.len() as u64, "{line}");
    }
}

#[test]
fn mutual_tls_with_a_client_certificate() {
    let pki = Pki::new();
    let trace = trace(pki.dir.path());
    let ca = pki.path("ca.pem");
    let cert = pki.path("client.pem");
    let key = pki.path("client-key.pem");
    for (protocol, receiver) in [
        ("grpc", Receiver::grpc_with(&pki.listen_mutual())),
        ("http/protobuf", Receiver::http_with(&pki.listen_mutual())),
    ] {
        let endpoint = format!("https://{}", receiver.addr);
        // Without a client certificate the server refuses the handshake.
        let output = decode(
            &trace,
            &endpoint,
            protocol,
            &[],
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca)],
        );
        assert!(
            !output.status.success(),
            "{protocol}: no client certificate"
        );
        assert!(receiver.spans().is_empty(), "{protocol}");
        let output = decode(
            &trace,
            &endpoint,
            protocol,
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &cert),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &key),
            ],
        );
        assert_delivered(&output, &receiver);
    }
}

/// Accepts one connection and returns its first bytes.
fn first_bytes(listener: &TcpListener) -> Vec<u8> {
    listener.set_nonblocking(false).expect("blocking listener");
    let (mut stream, _) = listener.accept().expect("accept");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while got.len() < 16 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

#[test]
fn an_https_endpoint_never_gets_cleartext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = trace(dir.path());
    // https:// over both protocols, and a scheme-less endpoint (TLS unless
    // OTEL_EXPORTER_OTLP_INSECURE=true, as the specification says).
    for (scheme, protocol) in [
        ("https://", "grpc"),
        ("https://", "http/protobuf"),
        ("", "grpc"),
        ("", "http/protobuf"),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let endpoint = format!("{scheme}{}", listener.local_addr().expect("addr"));
        let agent = std::thread::spawn({
            let trace = trace.clone();
            move || {
                let mut cmd = command();
                cmd.arg("decode")
                    .arg(&trace)
                    .args(["--otlp-endpoint", &endpoint, "--otlp-protocol", protocol])
                    .env("OTEL_EXPORTER_OTLP_TIMEOUT", "3000")
                    .output()
                    .expect("agent decode")
            }
        });
        let bytes = first_bytes(&listener);
        drop(listener);
        let output = agent.join().expect("agent thread");
        assert!(
            bytes.len() >= 6,
            "{scheme}{protocol}: too few bytes: {bytes:?}"
        );
        // A TLS record of type handshake (22), version 3.x, carrying a
        // ClientHello (handshake type 1).
        assert_eq!(bytes[0], 0x16, "{scheme}{protocol}: not TLS: {bytes:?}");
        assert_eq!(bytes[1], 0x03, "{scheme}{protocol}: not TLS: {bytes:?}");
        assert_eq!(bytes[5], 0x01, "{scheme}{protocol}: not a ClientHello");
        assert!(!bytes.starts_with(b"PRI * HTTP/2"), "{scheme}{protocol}");
        assert!(!bytes.starts_with(b"POST"), "{scheme}{protocol}");
        assert!(
            !output.status.success(),
            "{scheme}{protocol}: nothing took the spans"
        );
    }
}

#[test]
fn gzip_over_grpc_and_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = trace(dir.path());
    for (protocol, receiver, header, env_var) in [
        (
            "grpc",
            Receiver::grpc(),
            "grpc-encoding",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ),
        (
            "http/protobuf",
            Receiver::http(),
            "content-encoding",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        ),
    ] {
        let mut cmd = command();
        let output = cmd
            .arg("decode")
            .arg(&trace)
            .args([
                "--otlp-endpoint",
                &receiver.url(),
                "--otlp-protocol",
                protocol,
            ])
            .env(env_var, "gzip")
            .output()
            .expect("agent decode");
        assert_delivered(&output, &receiver);
        for received in receiver.received() {
            assert_eq!(
                received.headers.get(header).map(String::as_str),
                Some("gzip"),
                "{protocol}: {:?}",
                received.headers
            );
        }
    }
    // The flag too, and no header without it.
    let receiver = Receiver::http();
    let output = command()
        .arg("decode")
        .arg(&trace)
        .args([
            "--otlp-endpoint",
            &receiver.url(),
            "--otlp-compression",
            "gzip",
        ])
        .output()
        .expect("agent decode");
    assert_delivered(&output, &receiver);
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.headers.get("content-encoding").map(String::as_str) == Some("gzip"))
    );
    let receiver = Receiver::http();
    let output = command()
        .arg("decode")
        .arg(&trace)
        .args(["--otlp-endpoint", &receiver.url()])
        .output()
        .expect("agent decode");
    assert_delivered(&output, &receiver);
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| !r.headers.contains_key("content-encoding"))
    );
}

#[test]
fn bad_certificate_files_are_one_line_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing-ca.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello\n").expect("write");
    let key_only = dir.path().join("key-only.pem");
    std::fs::write(&key_only, "").expect("write");
    for (env, expected) in [
        (
            vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", missing.clone())],
            format!("cannot read the CA file {}", missing.display()),
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", garbage.clone())],
            format!("the CA file {} holds no PEM certificate", garbage.display()),
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_CLIENT_KEY", key_only.clone())],
            "a client certificate needs its key".to_owned(),
        ),
    ] {
        let mut cmd = command();
        // No trace file is read before the configuration is checked.
        cmd.args(["decode", "/nonexistent.trace"])
            .args(["--otlp-endpoint", "https://127.0.0.1:1"]);
        for (key, value) in &env {
            cmd.env(key, value);
        }
        let output = cmd.output().expect("agent");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(
            lines[0].starts_with("agent: ") && lines[0].contains(&expected),
            "{stderr}"
        );
    }
}

#[test]
fn batch_size_variable_splits_the_export() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = trace(dir.path());
    let receiver = Receiver::grpc();
    let output = command()
        .arg("decode")
        .arg(&trace)
        .args([
            "--otlp-endpoint",
            &receiver.url(),
            "--otlp-protocol",
            "grpc",
        ])
        .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
        .env("OTEL_BSP_SCHEDULE_DELAY", "1000")
        .output()
        .expect("agent decode");
    assert_delivered(&output, &receiver);
    let sizes: Vec<usize> = receiver
        .received()
        .iter()
        .map(|r| support::otlp::flatten([&r.request]).len())
        .collect();
    assert!(sizes.iter().all(|n| *n <= 2), "{sizes:?}");
    assert_eq!(
        sizes.iter().sum::<usize>(),
        receiver.spans().len(),
        "{sizes:?}"
    );
    assert!(sizes.len() >= 3, "{sizes:?}");

    let output = command()
        .arg("decode")
        .arg(&trace)
        .args(["--otlp-endpoint", &receiver.url()])
        .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0")
        .output()
        .expect("agent decode");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(
        stderr.trim(),
        "agent: invalid OTEL_BSP_MAX_EXPORT_BATCH_SIZE \"0\": expected a positive number"
    );
}

#[test]
fn an_error_status_is_named_and_the_spans_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = trace(dir.path());
    let receiver = Receiver::http();
    // The receiver answers 404 off /v1/traces.
    let output = command()
        .arg("decode")
        .arg(&trace)
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/elsewhere", receiver.url()),
        )
        .output()
        .expect("agent decode");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "export to OTLP {}/elsewhere failed",
            receiver.url()
        )) && stderr.contains("HTTP 404 Not Found"),
        "{stderr}"
    );
    assert!(
        stderr.contains("agent: 0 spans exported from 1 of 1 files; 6 dropped"),
        "{stderr}"
    );
}
