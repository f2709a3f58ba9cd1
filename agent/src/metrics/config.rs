//! Where metrics go: resolved from flags and the standard variables, the
//! way every OpenTelemetry SDK reads them.
//!
//! - Exporters: `OTEL_METRICS_EXPORTER` (comma-separated: `otlp`,
//!   `prometheus`, `none`); unset, `otlp` when an endpoint is set. The
//!   `--metrics-listen ADDR` flag always serves `/metrics`.
//! - OTLP endpoint: `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (used as given),
//!   else `--otlp-endpoint`, else `OTEL_EXPORTER_OTLP_ENDPOINT` (both a base:
//!   for HTTP `/v1/metrics` is appended, a trailing `/v1/traces` replaced);
//!   `http://localhost:4317` when `otlp` is asked for with none. A
//!   scheme-less `host:port` means `http://host:port`.
//! - Protocol: `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`, else `--otlp-protocol`,
//!   else `OTEL_EXPORTER_OTLP_PROTOCOL`, else gRPC for port 4317 and
//!   `http/protobuf` otherwise.
//! - Headers: `OTEL_EXPORTER_OTLP_HEADERS`, then
//!   `OTEL_EXPORTER_OTLP_METRICS_HEADERS`, then `--otlp-header` (later wins).
//! - Timeout: `OTEL_EXPORTER_OTLP_METRICS_TIMEOUT`, else
//!   `OTEL_EXPORTER_OTLP_TIMEOUT` (ms, default 10 s); interval:
//!   `OTEL_METRIC_EXPORT_INTERVAL` (ms, default 60 s).
//! - Compression: `OTEL_EXPORTER_OTLP_METRICS_COMPRESSION`, else
//!   `OTEL_EXPORTER_OTLP_COMPRESSION` (`gzip`), read by the exporter itself.
//! - Prometheus: `--metrics-listen`, else `OTEL_EXPORTER_PROMETHEUS_HOST`
//!   and `OTEL_EXPORTER_PROMETHEUS_PORT` (default `localhost:9464`).
//! - `OTEL_SDK_DISABLED=true` turns metrics off.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

/// Wire protocol of the OTLP metrics exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsProtocol {
    Grpc,
    HttpProtobuf,
}

/// A resolved OTLP metrics destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpMetrics {
    pub protocol: MetricsProtocol,
    /// Full URL: for HTTP it includes the `/v1/metrics` path.
    pub endpoint: String,
    pub headers: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Time between exports.
    pub interval: Duration,
}

/// Every metrics destination of this run; neither: metrics are off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    pub otlp: Option<OtlpMetrics>,
    /// Where `/metrics` is served.
    pub prometheus: Option<SocketAddr>,
}

impl MetricsConfig {
    /// Whether any destination is configured.
    pub fn enabled(&self) -> bool {
        self.otlp.is_some() || self.prometheus.is_some()
    }
}

/// The flags that bear on metrics.
#[derive(Clone, Debug, Default)]
pub struct MetricsInputs {
    /// `--metrics-listen`.
    pub listen: Option<String>,
    /// `--otlp-endpoint`, `--otlp-protocol`, `--otlp-header`.
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub headers: Vec<String>,
}

/// A bad metrics setting: one line naming it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricsConfigError {
    #[error("unsupported OTEL_METRICS_EXPORTER {0:?}: use otlp, prometheus or none")]
    Exporter(String),
    #[error("unsupported OTLP metrics protocol {0:?}: use grpc or http/protobuf")]
    Protocol(String),
    #[error("invalid OTLP metrics endpoint {0:?}: expected a URL such as http://localhost:4317")]
    Endpoint(String),
    #[error("invalid OTLP header {0:?}: expected key=value")]
    Header(String),
    #[error("invalid {name} {value:?}: expected milliseconds")]
    Millis { name: &'static str, value: String },
    #[error("invalid metrics listen address {0:?}: expected HOST:PORT, such as 0.0.0.0:9464")]
    Listen(String),
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

impl MetricsConfig {
    /// Resolves the flags and the variables `env` gives.
    pub fn resolve(
        inputs: &MetricsInputs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, MetricsConfigError> {
        let env = |name: &str| {
            env(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Self::default());
        }
        let signal_endpoint = env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
        let base_endpoint = inputs
            .endpoint
            .clone()
            .filter(|e| !e.trim().is_empty())
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let (mut otlp, mut prometheus) = (false, false);
        match env("OTEL_METRICS_EXPORTER") {
            None => otlp = signal_endpoint.is_some() || base_endpoint.is_some(),
            Some(list) => {
                for name in list.split(',').map(str::trim) {
                    match name {
                        "otlp" => otlp = true,
                        "prometheus" => prometheus = true,
                        "none" => {}
                        other => return Err(MetricsConfigError::Exporter(other.to_owned())),
                    }
                }
            }
        }
        let listen = match &inputs.listen {
            Some(addr) => Some(parse_listen(addr)?),
            None if prometheus => {
                let host = env("OTEL_EXPORTER_PROMETHEUS_HOST").unwrap_or("localhost".into());
                let port = env("OTEL_EXPORTER_PROMETHEUS_PORT").unwrap_or("9464".into());
                Some(parse_listen(&format!("{host}:{port}"))?)
            }
            None => None,
        };
        let otlp = if otlp {
            Some(resolve_otlp(inputs, &env, signal_endpoint, base_endpoint)?)
        } else {
            None
        };
        Ok(Self {
            otlp,
            prometheus: listen,
        })
    }
}

fn resolve_otlp(
    inputs: &MetricsInputs,
    env: &impl Fn(&str) -> Option<String>,
    signal_endpoint: Option<String>,
    base_endpoint: Option<String>,
) -> Result<OtlpMetrics, MetricsConfigError> {
    let (raw, as_given) = match (signal_endpoint, base_endpoint) {
        (Some(e), _) => (e, true),
        (None, Some(e)) => (e, false),
        (None, None) => ("http://localhost:4317".to_owned(), false),
    };
    let endpoint = with_scheme(raw.trim());
    let port = endpoint_port(&endpoint).ok_or_else(|| MetricsConfigError::Endpoint(raw.clone()))?;
    let protocol = env("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
        .or_else(|| inputs.protocol.clone())
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
    let protocol = match protocol.as_deref().map(str::trim) {
        Some("grpc") => MetricsProtocol::Grpc,
        Some("http/protobuf" | "http") => MetricsProtocol::HttpProtobuf,
        Some(other) => return Err(MetricsConfigError::Protocol(other.to_owned())),
        None if port == 4317 => MetricsProtocol::Grpc,
        None => MetricsProtocol::HttpProtobuf,
    };
    let endpoint = match protocol {
        MetricsProtocol::HttpProtobuf if !as_given => {
            let base = endpoint.trim_end_matches('/');
            let base = base.strip_suffix("/v1/traces").unwrap_or(base);
            if base.ends_with("/v1/metrics") {
                base.to_owned()
            } else {
                format!("{base}/v1/metrics")
            }
        }
        _ => endpoint,
    };
    let mut headers = BTreeMap::new();
    let lists = [
        env("OTEL_EXPORTER_OTLP_HEADERS"),
        env("OTEL_EXPORTER_OTLP_METRICS_HEADERS"),
    ];
    for member in lists
        .iter()
        .flatten()
        .flat_map(|list| list.split(','))
        .filter(|m| !m.trim().is_empty())
        .chain(inputs.headers.iter().map(String::as_str))
    {
        let (key, value) = parse_header(member)?;
        headers.insert(key, value);
    }
    let millis = |name: &'static str| -> Result<Option<Duration>, MetricsConfigError> {
        env(name)
            .map(|value| {
                value
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| MetricsConfigError::Millis { name, value })
            })
            .transpose()
    };
    let timeout = match millis("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT")? {
        Some(t) => t,
        None => millis("OTEL_EXPORTER_OTLP_TIMEOUT")?.unwrap_or(DEFAULT_TIMEOUT),
    };
    let interval = millis("OTEL_METRIC_EXPORT_INTERVAL")?
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_INTERVAL);
    Ok(OtlpMetrics {
        protocol,
        endpoint,
        headers,
        timeout,
        interval,
    })
}

/// `host:port` as the SDKs take it: `http://host:port`.
fn with_scheme(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

/// The port of an `http(s)://host[:port][/path]` URL (the scheme's default
/// when none is given); `None` for anything else.
fn endpoint_port(endpoint: &str) -> Option<u16> {
    let (scheme, rest) = endpoint.split_once("://")?;
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return None;
    }
    let port = match authority.rsplit_once(':') {
        Some((_, port)) if !authority.ends_with(']') => port.parse().ok()?,
        _ => default,
    };
    Some(port)
}

/// `key=value`, the value percent-decoded as the SDKs' header lists are.
fn parse_header(member: &str) -> Result<(String, String), MetricsConfigError> {
    let (key, value) = member
        .split_once('=')
        .filter(|(k, _)| !k.trim().is_empty())
        .ok_or_else(|| MetricsConfigError::Header(member.to_owned()))?;
    Ok((
        key.trim().to_ascii_lowercase(),
        percent_decode(value.trim()),
    ))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `HOST:PORT`, the host a name (`localhost`) or an address.
fn parse_listen(addr: &str) -> Result<SocketAddr, MetricsConfigError> {
    use std::net::ToSocketAddrs as _;
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| MetricsConfigError::Listen(addr.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        inputs: &MetricsInputs,
        pairs: &[(&str, &str)],
    ) -> Result<MetricsConfig, MetricsConfigError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        MetricsConfig::resolve(inputs, |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    fn otlp(config: &MetricsConfig) -> &OtlpMetrics {
        config.otlp.as_ref().expect("otlp")
    }

    #[test]
    fn off_when_nothing_is_configured() {
        let c = resolve(&MetricsInputs::default(), &[]).expect("config");
        assert!(!c.enabled());
    }

    #[test]
    fn otlp_by_default_when_an_endpoint_is_set() {
        let c = resolve(
            &MetricsInputs::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")],
        )
        .expect("config");
        assert_eq!(otlp(&c).protocol, MetricsProtocol::HttpProtobuf);
        assert_eq!(otlp(&c).endpoint, "http://collector:4318/v1/metrics");
        assert_eq!(otlp(&c).interval, DEFAULT_INTERVAL);
        assert_eq!(c.prometheus, None);

        let c = resolve(
            &MetricsInputs {
                endpoint: Some("collector:4317".into()),
                ..MetricsInputs::default()
            },
            &[],
        )
        .expect("config");
        assert_eq!(otlp(&c).protocol, MetricsProtocol::Grpc);
        assert_eq!(otlp(&c).endpoint, "http://collector:4317");

        // The traces' full URL: the metrics path replaces the traces one.
        let c = resolve(
            &MetricsInputs {
                endpoint: Some("http://c:4318/v1/traces".into()),
                ..MetricsInputs::default()
            },
            &[],
        )
        .expect("config");
        assert_eq!(otlp(&c).endpoint, "http://c:4318/v1/metrics");
    }

    #[test]
    fn the_metrics_variables_win() {
        let c = resolve(
            &MetricsInputs {
                endpoint: Some("http://traces:4317".into()),
                protocol: Some("grpc".into()),
                ..MetricsInputs::default()
            },
            &[
                (
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    "http://m:9000/custom",
                ),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
                ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "500"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "250"),
            ],
        )
        .expect("config");
        let o = otlp(&c);
        assert_eq!(o.endpoint, "http://m:9000/custom", "used as given");
        assert_eq!(o.protocol, MetricsProtocol::HttpProtobuf);
        assert_eq!(o.timeout, Duration::from_millis(500));
        assert_eq!(o.interval, Duration::from_millis(250));
    }

    #[test]
    fn headers_merge_later_winning() {
        let c = resolve(
            &MetricsInputs {
                headers: vec!["c=flag".into()],
                ..MetricsInputs::default()
            },
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=1, b=generic,c=env"),
                ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "B=metrics%20only"),
            ],
        )
        .expect("config");
        let headers: Vec<(&str, &str)> = otlp(&c)
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(headers, [("a", "1"), ("b", "metrics only"), ("c", "flag")]);
    }

    #[test]
    fn exporters_by_name() {
        let c = resolve(
            &MetricsInputs::default(),
            &[
                ("OTEL_METRICS_EXPORTER", "prometheus"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
                ("OTEL_EXPORTER_PROMETHEUS_PORT", "9999"),
            ],
        )
        .expect("config");
        assert_eq!(c.otlp, None, "only what the list names");
        assert_eq!(c.prometheus, Some("127.0.0.1:9999".parse().expect("addr")));

        let c = resolve(
            &MetricsInputs::default(),
            &[
                ("OTEL_METRICS_EXPORTER", "none"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ],
        )
        .expect("config");
        assert!(!c.enabled());

        let c = resolve(
            &MetricsInputs {
                listen: Some("127.0.0.1:0".into()),
                ..MetricsInputs::default()
            },
            &[("OTEL_METRICS_EXPORTER", "otlp,prometheus")],
        )
        .expect("config");
        assert_eq!(otlp(&c).endpoint, "http://localhost:4317");
        assert_eq!(c.prometheus, Some("127.0.0.1:0".parse().expect("addr")));

        let c = resolve(
            &MetricsInputs::default(),
            &[
                ("OTEL_SDK_DISABLED", "true"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ],
        )
        .expect("config");
        assert!(!c.enabled());
    }

    #[test]
    fn bad_values_are_one_clear_error() {
        let env = [("OTEL_METRICS_EXPORTER", "statsd")];
        assert_eq!(
            resolve(&MetricsInputs::default(), &env),
            Err(MetricsConfigError::Exporter("statsd".into()))
        );
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"),
        ];
        assert_eq!(
            resolve(&MetricsInputs::default(), &env),
            Err(MetricsConfigError::Protocol("http/json".into()))
        );
        let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c")];
        assert_eq!(
            resolve(&MetricsInputs::default(), &env),
            Err(MetricsConfigError::Endpoint("ftp://c".into()))
        );
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
        ];
        assert_eq!(
            resolve(&MetricsInputs::default(), &env),
            Err(MetricsConfigError::Millis {
                name: "OTEL_METRIC_EXPORT_INTERVAL",
                value: "soon".into()
            })
        );
        let listen = MetricsInputs {
            listen: Some("nowhere".into()),
            ..MetricsInputs::default()
        };
        assert_eq!(
            resolve(&listen, &[]),
            Err(MetricsConfigError::Listen("nowhere".into()))
        );
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
        ];
        assert_eq!(
            resolve(&MetricsInputs::default(), &env),
            Err(MetricsConfigError::Header("novalue".into()))
        );
    }
}
