//! Where spans go: resolved from flags and the standard OpenTelemetry
//! variables, the way the SDKs read them.
//!
//! Every OTLP setting is read for one signal ([`Signal::Traces`] or
//! [`Signal::Metrics`]) by [`resolve_otlp`]: a flag first (traces only), then
//! `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_*`, then `OTEL_EXPORTER_OTLP_*`.
//!
//! - Endpoint: `http://` or `https://` URLs; a scheme-less `host:port` is
//!   `https://` unless `OTEL_EXPORTER_OTLP_INSECURE=true` (the specification
//!   says so for gRPC; the agent applies the same rule to HTTP, so a bare
//!   endpoint never goes cleartext by default). An explicit scheme wins over
//!   `INSECURE`. For HTTP, the generic endpoint gets `/v1/traces` (or
//!   `/v1/metrics`) appended; the per-signal one is used as given.
//! - Protocol: `grpc` or `http/protobuf`; by default gRPC on port 4317,
//!   else HTTP.
//! - TLS: `CERTIFICATE` (CA file, instead of the system roots),
//!   `CLIENT_CERTIFICATE` + `CLIENT_KEY` (mutual TLS). Read in `tls.rs`.
//! - `COMPRESSION` (`gzip` or `none`), `HEADERS` (generic, then per signal,
//!   then flags, later ones winning per key; the variables' values are
//!   percent-decoded), `TIMEOUT` (milliseconds, per export with its
//!   retries; default 10 s).
//!
//! The batch processor's variables (`OTEL_BSP_*`) are [`BatchSettings`];
//! `OTEL_SDK_DISABLED=true` turns OTLP export off. With no endpoint and no
//! `--output`, spans go to the console.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

/// Wire protocol of an OTLP exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

impl OtlpProtocol {
    fn parse(s: &str) -> Result<Self, ConfigError> {
        match s.trim() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" | "http" => Ok(Self::HttpProtobuf),
            other => Err(ConfigError::Protocol(other.to_owned())),
        }
    }
}

/// The telemetry signal an exporter carries: it picks the per-signal
/// variables and the HTTP path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// `TRACES` or `METRICS`, as in `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    fn variable_part(self) -> &'static str {
        match self {
            Self::Traces => "TRACES",
            Self::Metrics => "METRICS",
        }
    }

    /// The OTLP/HTTP path: `/v1/traces` or `/v1/metrics`.
    pub fn http_path(self) -> &'static str {
        match self {
            Self::Traces => "/v1/traces",
            Self::Metrics => "/v1/metrics",
        }
    }
}

/// Request body compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

/// The PEM files of a TLS connection; `None` where the default applies
/// (the system's roots, no client certificate).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates the server's certificate must chain to.
    pub certificate: Option<PathBuf>,
    /// Client certificate chain for mutual TLS.
    pub client_certificate: Option<PathBuf>,
    /// The client certificate's private key.
    pub client_key: Option<PathBuf>,
}

/// A resolved OTLP destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    pub protocol: OtlpProtocol,
    /// Full URL with its scheme: for HTTP it includes the signal's path.
    pub endpoint: String,
    pub headers: BTreeMap<String, String>,
    /// Bound of one export, its retries included.
    pub timeout: Duration,
    pub compression: Compression,
    /// Used when the endpoint is `https://`.
    pub tls: TlsFiles,
}

impl OtlpConfig {
    /// Whether the endpoint is sent over TLS.
    pub fn is_tls(&self) -> bool {
        self.endpoint.starts_with("https://")
    }
}

/// One destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Otlp(OtlpConfig),
    Console,
    /// OTLP JSON lines to a file, or stdout when `None`.
    Jsonl(Option<PathBuf>),
}

/// The batch span processor's variables; `None` keeps the agent's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchSettings {
    /// `OTEL_BSP_MAX_QUEUE_SIZE`.
    pub max_queue: Option<usize>,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.
    pub max_batch: Option<usize>,
    /// `OTEL_BSP_SCHEDULE_DELAY` (milliseconds).
    pub schedule_delay: Option<Duration>,
    /// `OTEL_BSP_EXPORT_TIMEOUT` (milliseconds).
    pub export_timeout: Option<Duration>,
}

/// Every destination of this run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportConfig {
    pub outputs: Vec<Output>,
    pub batch: BatchSettings,
}

/// A bad export setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unsupported OTLP protocol {0:?}: use grpc or http/protobuf")]
    Protocol(String),
    #[error(
        "invalid OTLP endpoint {0:?}: expected http://HOST:PORT, https://HOST:PORT or HOST:PORT"
    )]
    Endpoint(String),
    #[error("invalid OTLP header {0:?}: expected key=value")]
    Header(String),
    #[error("invalid {name} {value:?}: expected {expected}")]
    Value {
        name: String,
        value: String,
        expected: &'static str,
    },
    #[error("invalid --output {0:?}: expected console, jsonl or jsonl=FILE")]
    Output(String),
    #[error(
        "OTEL_SDK_DISABLED=true turns OTLP export off and no --output is given: nothing would be written"
    )]
    Disabled,
}

/// The flags of the OTLP exporter (traces); `None` leaves it to the variables.
#[derive(Clone, Debug, Default)]
pub struct OtlpFlags {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub headers: Vec<String>,
    pub certificate: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub insecure: bool,
    pub compression: Option<String>,
}

/// The raw inputs: flags, and a lookup for environment variables.
#[derive(Clone, Debug, Default)]
pub struct ExportInputs {
    pub otlp: OtlpFlags,
    /// `--output` values.
    pub outputs: Vec<String>,
}

/// Looks up a variable, treating an empty value as unset.
fn lookup(env: &impl Fn(&str) -> Option<String>, name: &str) -> Option<(String, String)> {
    env(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .map(|v| (name.to_owned(), v))
}

/// `OTEL_EXPORTER_OTLP_{SIGNAL}_{key}`, else `OTEL_EXPORTER_OTLP_{key}`:
/// the variable's name and value.
fn signal_var(
    env: &impl Fn(&str) -> Option<String>,
    signal: Signal,
    key: &str,
) -> Option<(String, String)> {
    lookup(
        env,
        &format!("OTEL_EXPORTER_OTLP_{}_{key}", signal.variable_part()),
    )
    .or_else(|| lookup(env, &format!("OTEL_EXPORTER_OTLP_{key}")))
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ConfigError::Value {
            name: name.to_owned(),
            value: value.to_owned(),
            expected: "true or false",
        }),
    }
}

fn parse_millis(name: &str, value: &str) -> Result<Duration, ConfigError> {
    value
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| ConfigError::Value {
            name: name.to_owned(),
            value: value.to_owned(),
            expected: "milliseconds",
        })
}

fn parse_count(name: &str, value: &str) -> Result<usize, ConfigError> {
    value
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ConfigError::Value {
            name: name.to_owned(),
            value: value.to_owned(),
            expected: "a positive number",
        })
}

fn parse_compression(name: &str, value: &str) -> Result<Compression, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "gzip" => Ok(Compression::Gzip),
        "none" => Ok(Compression::None),
        _ => Err(ConfigError::Value {
            name: name.to_owned(),
            value: value.to_owned(),
            expected: "gzip or none",
        }),
    }
}

/// Resolves the OTLP exporter of `signal`: `None` when no endpoint is set.
/// `flags` are the command line's (pass `OtlpFlags::default()` for a signal
/// without flags).
pub fn resolve_otlp(
    signal: Signal,
    flags: &OtlpFlags,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<OtlpConfig>, ConfigError> {
    let generic = lookup(&env, "OTEL_EXPORTER_OTLP_ENDPOINT");
    let specific = lookup(
        &env,
        &format!("OTEL_EXPORTER_OTLP_{}_ENDPOINT", signal.variable_part()),
    );
    let (endpoint, used_as_given) = match (&flags.endpoint, specific, generic) {
        (Some(flag), _, _) => (flag.trim().to_owned(), false),
        (None, Some((_, e)), _) => (e, true),
        (None, None, Some((_, e))) => (e, false),
        (None, None, None) => return Ok(None),
    };
    let insecure = match signal_var(&env, signal, "INSECURE") {
        _ if flags.insecure => true,
        Some((name, value)) => parse_bool(&name, &value)?,
        None => false,
    };
    let endpoint = with_scheme(&endpoint, insecure)?;
    let port = endpoint_port(&endpoint).ok_or_else(|| ConfigError::Endpoint(endpoint.clone()))?;
    let protocol = match flags
        .protocol
        .clone()
        .or_else(|| signal_var(&env, signal, "PROTOCOL").map(|(_, v)| v))
    {
        Some(p) => OtlpProtocol::parse(&p)?,
        None if port == 4317 => OtlpProtocol::Grpc,
        None => OtlpProtocol::HttpProtobuf,
    };
    let path = signal.http_path();
    let endpoint = match protocol {
        OtlpProtocol::HttpProtobuf if !used_as_given && !endpoint.ends_with(path) => {
            format!("{}{path}", endpoint.trim_end_matches('/'))
        }
        _ => endpoint,
    };
    let mut headers = BTreeMap::new();
    let specific_headers = format!("OTEL_EXPORTER_OTLP_{}_HEADERS", signal.variable_part());
    for (_, raw) in [
        lookup(&env, "OTEL_EXPORTER_OTLP_HEADERS"),
        lookup(&env, &specific_headers),
    ]
    .into_iter()
    .flatten()
    {
        for member in raw.split(',').filter(|m| !m.trim().is_empty()) {
            let (k, v) = parse_header(member)?;
            headers.insert(k, percent_decoded(&v));
        }
    }
    for member in &flags.headers {
        let (k, v) = parse_header(member)?;
        headers.insert(k, v);
    }
    let timeout = match signal_var(&env, signal, "TIMEOUT") {
        Some((name, ms)) => parse_millis(&name, &ms)?,
        None => Duration::from_secs(10),
    };
    let compression = match (&flags.compression, signal_var(&env, signal, "COMPRESSION")) {
        (Some(flag), _) => parse_compression("--otlp-compression", flag)?,
        (None, Some((name, value))) => parse_compression(&name, &value)?,
        (None, None) => Compression::None,
    };
    let file = |flag: &Option<PathBuf>, key: &str| {
        flag.clone()
            .or_else(|| signal_var(&env, signal, key).map(|(_, v)| PathBuf::from(v)))
    };
    let tls = TlsFiles {
        certificate: file(&flags.certificate, "CERTIFICATE"),
        client_certificate: file(&flags.client_certificate, "CLIENT_CERTIFICATE"),
        client_key: file(&flags.client_key, "CLIENT_KEY"),
    };
    Ok(Some(OtlpConfig {
        protocol,
        endpoint,
        headers,
        timeout,
        compression,
        tls,
    }))
}

/// The `OTEL_BSP_*` variables.
pub fn resolve_batch(env: impl Fn(&str) -> Option<String>) -> Result<BatchSettings, ConfigError> {
    let count = |name: &str| {
        lookup(&env, name)
            .map(|(n, v)| parse_count(&n, &v))
            .transpose()
    };
    let millis = |name: &str| {
        lookup(&env, name)
            .map(|(n, v)| parse_millis(&n, &v))
            .transpose()
    };
    Ok(BatchSettings {
        max_queue: count("OTEL_BSP_MAX_QUEUE_SIZE")?,
        max_batch: count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?,
        schedule_delay: millis("OTEL_BSP_SCHEDULE_DELAY")?,
        export_timeout: millis("OTEL_BSP_EXPORT_TIMEOUT")?.filter(|d| !d.is_zero()),
    })
}

impl ExportConfig {
    /// Resolves the configuration; `env` looks variables up.
    pub fn resolve(
        inputs: &ExportInputs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let disabled = match lookup(&env, "OTEL_SDK_DISABLED") {
            Some((name, value)) => parse_bool(&name, &value)?,
            None => false,
        };
        let mut outputs = Vec::new();
        if !disabled && let Some(otlp) = resolve_otlp(Signal::Traces, &inputs.otlp, &env)? {
            outputs.push(Output::Otlp(otlp));
        }
        for raw in &inputs.outputs {
            let output = match raw.as_str() {
                "console" => Output::Console,
                "jsonl" | "jsonl=-" => Output::Jsonl(None),
                other => match other.strip_prefix("jsonl=") {
                    Some(path) if !path.is_empty() => Output::Jsonl(Some(PathBuf::from(path))),
                    _ => return Err(ConfigError::Output(other.to_owned())),
                },
            };
            if !outputs.contains(&output) {
                outputs.push(output);
            }
        }
        if outputs.is_empty() {
            if disabled {
                return Err(ConfigError::Disabled);
            }
            outputs.push(Output::Console);
        }
        Ok(Self {
            outputs,
            batch: resolve_batch(&env)?,
        })
    }
}

/// `endpoint` with a scheme: as given when it has `http://` or `https://`,
/// else `https://` (or `http://` when `insecure`) before a `host:port`.
fn with_scheme(endpoint: &str, insecure: bool) -> Result<String, ConfigError> {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        return Ok(endpoint.to_owned());
    }
    if endpoint.contains("://") || endpoint.is_empty() || endpoint.starts_with('/') {
        return Err(ConfigError::Endpoint(endpoint.to_owned()));
    }
    let scheme = if insecure { "http" } else { "https" };
    Ok(format!("{scheme}://{endpoint}"))
}

fn endpoint_port(endpoint: &str) -> Option<u16> {
    let rest = endpoint
        .strip_prefix("http://")
        .map(|r| (r, 80))
        .or_else(|| endpoint.strip_prefix("https://").map(|r| (r, 443)));
    let (rest, default_port) = rest?;
    let authority = rest.split('/').next()?;
    if authority.is_empty() {
        return None;
    }
    // [v6]:port or host:port
    let port = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            if host.starts_with('[') && !host.ends_with(']') {
                return Some(default_port);
            }
            port.parse().ok()?
        }
        _ => default_port,
    };
    Some(port)
}

/// A header value of the variables, which are percent-encoded (the W3C
/// baggage format the specification names): `Bearer%20x` is `Bearer x`.
fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push(((hex(h).unwrap_or(0) << 4) | hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| value.to_owned())
}

fn parse_header(member: &str) -> Result<(String, String), ConfigError> {
    match member.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(ConfigError::Header(member.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn otlp(config: &ExportConfig) -> &OtlpConfig {
        match &config.outputs[0] {
            Output::Otlp(o) => o,
            other => panic!("expected OTLP, got {other:?}"),
        }
    }

    fn flags(endpoint: &str) -> ExportInputs {
        ExportInputs {
            otlp: OtlpFlags {
                endpoint: Some(endpoint.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn console_when_nothing_is_configured() {
        let c = ExportConfig::resolve(&ExportInputs::default(), env_of(&[])).expect("config");
        assert_eq!(c.outputs, vec![Output::Console]);
        assert_eq!(c.batch, BatchSettings::default());
    }

    #[test]
    fn protocol_follows_port_and_variables() {
        let c = ExportConfig::resolve(
            &ExportInputs::default(),
            env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]),
        )
        .expect("config");
        assert_eq!(otlp(&c).protocol, OtlpProtocol::Grpc);
        assert_eq!(otlp(&c).endpoint, "http://collector:4317");

        let c = ExportConfig::resolve(
            &ExportInputs::default(),
            env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]),
        )
        .expect("config");
        assert_eq!(otlp(&c).protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(otlp(&c).endpoint, "http://collector:4318/v1/traces");

        let c = ExportConfig::resolve(
            &ExportInputs::default(),
            env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:1"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:9999/custom"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]),
        )
        .expect("config");
        assert_eq!(otlp(&c).endpoint, "http://c:9999/custom");

        let mut inputs = flags("http://127.0.0.1:5555");
        inputs.otlp.protocol = Some("grpc".into());
        let c = ExportConfig::resolve(
            &inputs,
            env_of(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]),
        )
        .expect("config");
        assert_eq!(otlp(&c).protocol, OtlpProtocol::Grpc);
    }

    #[test]
    fn scheme_less_endpoints_are_tls_unless_insecure() {
        let c = ExportConfig::resolve(
            &ExportInputs::default(),
            env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "otel-collector:4318")]),
        )
        .expect("config");
        assert_eq!(otlp(&c).endpoint, "https://otel-collector:4318/v1/traces");
        assert!(otlp(&c).is_tls());

        let c = ExportConfig::resolve(
            &ExportInputs::default(),
            env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "otel-collector:4317"),
                ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
            ]),
        )
        .expect("config");
        assert_eq!(otlp(&c).endpoint, "http://otel-collector:4317");
        assert_eq!(otlp(&c).protocol, OtlpProtocol::Grpc);

        // The per-signal variable wins over the generic one.
        let c = ExportConfig::resolve(
            &ExportInputs::default(),
            env_of(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317"),
                ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
                ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "false"),
            ]),
        )
        .expect("config");
        assert_eq!(otlp(&c).endpoint, "https://c:4317");

        // An explicit scheme wins over INSECURE, both ways.
        let c = ExportConfig::resolve(
            &flags("https://c:4317"),
            env_of(&[("OTEL_EXPORTER_OTLP_INSECURE", "true")]),
        )
        .expect("config");
        assert!(otlp(&c).is_tls());
        let c = ExportConfig::resolve(
            &flags("http://c:4317"),
            env_of(&[("OTEL_EXPORTER_OTLP_INSECURE", "false")]),
        )
        .expect("config");
        assert!(!otlp(&c).is_tls());

        // The flag.
        let mut inputs = flags("c:4317");
        inputs.otlp.insecure = true;
        let c = ExportConfig::resolve(&inputs, env_of(&[])).expect("config");
        assert_eq!(otlp(&c).endpoint, "http://c:4317");
    }

    #[test]
    fn tls_files_compression_and_timeout_per_signal() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/generic/ca.pem"),
            ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "/metrics/ca.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/c.pem"),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/k.pem"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "700"),
        ]);
        let traces = resolve_otlp(Signal::Traces, &OtlpFlags::default(), &env)
            .expect("traces")
            .expect("configured");
        assert_eq!(
            traces.tls,
            TlsFiles {
                certificate: Some("/generic/ca.pem".into()),
                client_certificate: Some("/c.pem".into()),
                client_key: Some("/k.pem".into()),
            }
        );
        assert_eq!(traces.compression, Compression::Gzip);
        assert_eq!(traces.timeout, Duration::from_millis(2500));

        let metrics = resolve_otlp(Signal::Metrics, &OtlpFlags::default(), &env)
            .expect("metrics")
            .expect("configured");
        assert_eq!(
            metrics.tls.certificate,
            Some(PathBuf::from("/metrics/ca.pem"))
        );
        assert_eq!(metrics.tls.client_key, None);
        assert_eq!(metrics.compression, Compression::None);
        assert_eq!(metrics.timeout, Duration::from_millis(700));

        // Flags win over variables.
        let flags = OtlpFlags {
            certificate: Some("/flag/ca.pem".into()),
            compression: Some("none".into()),
            ..Default::default()
        };
        let traces = resolve_otlp(Signal::Traces, &flags, &env)
            .expect("traces")
            .expect("configured");
        assert_eq!(traces.tls.certificate, Some(PathBuf::from("/flag/ca.pem")));
        assert_eq!(traces.compression, Compression::None);
    }

    #[test]
    fn metrics_endpoint_gets_its_own_path() {
        let env = env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]);
        let m = resolve_otlp(Signal::Metrics, &OtlpFlags::default(), &env)
            .expect("metrics")
            .expect("configured");
        assert_eq!(m.endpoint, "http://c:4318/v1/metrics");
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9090/m"),
        ]);
        let m = resolve_otlp(Signal::Metrics, &OtlpFlags::default(), &env)
            .expect("metrics")
            .expect("configured");
        assert_eq!(m.endpoint, "http://m:9090/m");
        assert_eq!(
            resolve_otlp(Signal::Metrics, &OtlpFlags::default(), env_of(&[])),
            Ok(None)
        );
    }

    #[test]
    fn batch_variables() {
        let c = ExportConfig::resolve(
            &ExportInputs::default(),
            env_of(&[
                ("OTEL_BSP_MAX_QUEUE_SIZE", "4096"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100"),
                ("OTEL_BSP_SCHEDULE_DELAY", "50"),
                ("OTEL_BSP_EXPORT_TIMEOUT", "3000"),
            ]),
        )
        .expect("config");
        assert_eq!(
            c.batch,
            BatchSettings {
                max_queue: Some(4096),
                max_batch: Some(100),
                schedule_delay: Some(Duration::from_millis(50)),
                export_timeout: Some(Duration::from_secs(3)),
            }
        );
        let err = ExportConfig::resolve(
            &ExportInputs::default(),
            env_of(&[("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0")]),
        )
        .expect_err("zero batch");
        assert_eq!(
            err.to_string(),
            "invalid OTEL_BSP_MAX_EXPORT_BATCH_SIZE \"0\": expected a positive number"
        );
    }

    #[test]
    fn sdk_disabled_turns_otlp_off() {
        let env = env_of(&[
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ]);
        assert_eq!(
            ExportConfig::resolve(&ExportInputs::default(), &env),
            Err(ConfigError::Disabled)
        );
        let c = ExportConfig::resolve(
            &ExportInputs {
                outputs: vec!["jsonl".into()],
                ..Default::default()
            },
            &env,
        )
        .expect("config");
        assert_eq!(c.outputs, vec![Output::Jsonl(None)]);
        let c = ExportConfig::resolve(
            &ExportInputs::default(),
            env_of(&[
                ("OTEL_SDK_DISABLED", "false"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ]),
        )
        .expect("config");
        assert!(matches!(c.outputs[0], Output::Otlp(_)));
    }

    #[test]
    fn headers_merge_with_flags_winning() {
        let mut inputs = flags("http://h:4318");
        inputs.otlp.headers = vec!["x-team=core".into()];
        let c = ExportConfig::resolve(
            &inputs,
            env_of(&[(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=s3cr3t, x-team=env,authorization=Bearer%20a%2Cb",
            )]),
        )
        .expect("config");
        let h = &otlp(&c).headers;
        assert_eq!(h.get("api-key").map(String::as_str), Some("s3cr3t"));
        assert_eq!(h.get("x-team").map(String::as_str), Some("core"));
        assert_eq!(
            h.get("authorization").map(String::as_str),
            Some("Bearer a,b")
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        let bad = |inputs: ExportInputs, env: &[(&str, &str)]| {
            ExportConfig::resolve(&inputs, env_of(env)).expect_err("bad")
        };
        assert_eq!(
            bad(flags("ftp://collector:4317"), &[]),
            ConfigError::Endpoint("ftp://collector:4317".into())
        );
        let mut inputs = flags("http://c:4317");
        inputs.otlp.protocol = Some("http/json".into());
        assert_eq!(bad(inputs, &[]), ConfigError::Protocol("http/json".into()));
        assert_eq!(
            bad(
                ExportInputs {
                    outputs: vec!["xml".into()],
                    ..Default::default()
                },
                &[]
            ),
            ConfigError::Output("xml".into())
        );
        assert_eq!(
            bad(
                flags("c:4317"),
                &[("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "yes")]
            )
            .to_string(),
            "invalid OTEL_EXPORTER_OTLP_TRACES_INSECURE \"yes\": expected true or false"
        );
        assert_eq!(
            bad(
                flags("c:4317"),
                &[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]
            )
            .to_string(),
            "invalid OTEL_EXPORTER_OTLP_COMPRESSION \"zstd\": expected gzip or none"
        );
        assert_eq!(
            bad(flags("c:4317"), &[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).to_string(),
            "invalid OTEL_EXPORTER_OTLP_TIMEOUT \"10s\": expected milliseconds"
        );
    }

    #[test]
    fn outputs_combine() {
        let mut inputs = flags("http://c:4317");
        inputs.outputs = vec!["jsonl=/tmp/x.jsonl".into(), "console".into()];
        let c = ExportConfig::resolve(&inputs, env_of(&[])).expect("config");
        assert_eq!(c.outputs.len(), 3);
        assert_eq!(c.outputs[1], Output::Jsonl(Some("/tmp/x.jsonl".into())));
    }
}
