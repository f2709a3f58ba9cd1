//! Where metrics go: resolved from flags and the standard variables, the
//! way every OpenTelemetry SDK reads them.
//!
//! - Exporters: `OTEL_METRICS_EXPORTER` (comma-separated: `otlp`,
//!   `prometheus`, `none`); unset, `otlp` when an endpoint is set. The
//!   `--metrics-listen ADDR` flag always serves `/metrics`.
//! - OTLP: every setting (endpoint, protocol, headers, timeout, compression,
//!   TLS files, insecure) is read by [`resolve_otlp`] for
//!   [`Signal::Metrics`], with the rules of `export/config.rs`: a scheme-less
//!   `host:port` is `https://` unless insecure, the generic endpoint gets
//!   `/v1/metrics` for HTTP, the per-signal one is used as given, gRPC by
//!   default on port 4317.
//! - The `--otlp-*` flags: for spans they win over every variable; for
//!   metrics they stand between the two layers of variables:
//!   `OTEL_EXPORTER_OTLP_METRICS_*` wins over a flag (so metrics can go
//!   elsewhere than spans), a flag wins over `OTEL_EXPORTER_OTLP_*`. Headers
//!   merge: generic, then metrics, then `--otlp-header` (later wins per
//!   key), as for spans. An `--otlp-endpoint` that is the traces' full URL
//!   (`.../v1/traces`) is taken as its base.
//! - `http://localhost:4317` when `otlp` is asked for with no endpoint.
//! - Interval: `OTEL_METRIC_EXPORT_INTERVAL` (ms, default 60 s).
//! - Prometheus: `--metrics-listen`, else `OTEL_EXPORTER_PROMETHEUS_HOST`
//!   and `OTEL_EXPORTER_PROMETHEUS_PORT` (default `localhost:9464`).
//! - `OTEL_SDK_DISABLED=true` turns metrics off.

use std::{net::SocketAddr, time::Duration};

use crate::export::config::{ConfigError, OtlpConfig, OtlpFlags, Signal, resolve_otlp};

/// A resolved OTLP metrics destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpMetrics {
    /// Endpoint, protocol, headers, timeout, compression and TLS files.
    pub config: OtlpConfig,
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
    /// The `--otlp-*` flags, as the spans' exporter has them.
    pub otlp: OtlpFlags,
}

/// A bad metrics setting: one line naming it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricsConfigError {
    #[error("unsupported OTEL_METRICS_EXPORTER {0:?}: use otlp, prometheus or none")]
    Exporter(String),
    #[error(transparent)]
    Otlp(#[from] ConfigError),
    #[error("invalid {name} {value:?}: expected milliseconds")]
    Millis { name: &'static str, value: String },
    #[error("invalid metrics listen address {0:?}: expected HOST:PORT, such as 0.0.0.0:9464")]
    Listen(String),
}

const DEFAULT_ENDPOINT: &str = "http://localhost:4317";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

impl MetricsConfig {
    /// Resolves the flags and the variables `env` gives.
    pub fn resolve(
        inputs: &MetricsInputs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, MetricsConfigError> {
        let set = |name: &str| {
            env(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(Self::default());
        }
        let flags = metrics_flags(&inputs.otlp, &set);
        let configured = resolve_otlp(Signal::Metrics, &flags, &env)?;
        let (mut otlp, mut prometheus) = (false, false);
        match set("OTEL_METRICS_EXPORTER") {
            None => otlp = configured.is_some(),
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
                let host = set("OTEL_EXPORTER_PROMETHEUS_HOST").unwrap_or("localhost".into());
                let port = set("OTEL_EXPORTER_PROMETHEUS_PORT").unwrap_or("9464".into());
                Some(parse_listen(&format!("{host}:{port}"))?)
            }
            None => None,
        };
        let otlp = if otlp {
            let config = match configured {
                Some(config) => config,
                None => {
                    let flags = OtlpFlags {
                        endpoint: Some(DEFAULT_ENDPOINT.to_owned()),
                        ..flags
                    };
                    resolve_otlp(Signal::Metrics, &flags, &env)?
                        .ok_or_else(|| ConfigError::Endpoint(DEFAULT_ENDPOINT.to_owned()))?
                }
            };
            let name = "OTEL_METRIC_EXPORT_INTERVAL";
            let interval = match set(name) {
                Some(value) => value
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| MetricsConfigError::Millis { name, value })?,
                None => DEFAULT_INTERVAL,
            };
            Some(OtlpMetrics {
                config,
                interval: Some(interval)
                    .filter(|d| !d.is_zero())
                    .unwrap_or(DEFAULT_INTERVAL),
            })
        } else {
            None
        };
        Ok(Self {
            otlp,
            prometheus: listen,
        })
    }
}

/// The command line's flags as metrics take them: each one that an
/// `OTEL_EXPORTER_OTLP_METRICS_*` variable sets is left out, so that the
/// variable wins; the endpoint is a base, without the traces' path.
fn metrics_flags(flags: &OtlpFlags, set: &impl Fn(&str) -> Option<String>) -> OtlpFlags {
    let unset = |key: &str| set(&format!("OTEL_EXPORTER_OTLP_METRICS_{key}")).is_none();
    let keep = |flag: &Option<std::path::PathBuf>, key: &str| flag.clone().filter(|_| unset(key));
    OtlpFlags {
        endpoint: flags
            .endpoint
            .as_deref()
            .map(|e| e.trim().trim_end_matches('/'))
            .filter(|e| !e.is_empty() && unset("ENDPOINT"))
            .map(|e| {
                e.strip_suffix(Signal::Traces.http_path())
                    .unwrap_or(e)
                    .to_owned()
            }),
        protocol: flags.protocol.clone().filter(|_| unset("PROTOCOL")),
        headers: flags.headers.clone(),
        certificate: keep(&flags.certificate, "CERTIFICATE"),
        client_certificate: keep(&flags.client_certificate, "CLIENT_CERTIFICATE"),
        client_key: keep(&flags.client_key, "CLIENT_KEY"),
        insecure: flags.insecure && unset("INSECURE"),
        compression: flags.compression.clone().filter(|_| unset("COMPRESSION")),
    }
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
    use std::path::PathBuf;

    use super::*;
    use crate::export::config::{Compression, OtlpProtocol};

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

    fn with_flags(otlp: OtlpFlags) -> MetricsInputs {
        MetricsInputs { listen: None, otlp }
    }

    fn endpoint_flag(endpoint: &str) -> MetricsInputs {
        with_flags(OtlpFlags {
            endpoint: Some(endpoint.into()),
            ..OtlpFlags::default()
        })
    }

    fn otlp(config: &MetricsConfig) -> &OtlpConfig {
        &config.otlp.as_ref().expect("otlp").config
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
        assert_eq!(otlp(&c).protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(otlp(&c).endpoint, "http://collector:4318/v1/metrics");
        assert_eq!(c.otlp.as_ref().expect("otlp").interval, DEFAULT_INTERVAL);
        assert_eq!(c.prometheus, None);

        // Scheme-less: TLS, as for spans, unless insecure.
        let c = resolve(&endpoint_flag("collector:4317"), &[]).expect("config");
        assert_eq!(otlp(&c).protocol, OtlpProtocol::Grpc);
        assert_eq!(otlp(&c).endpoint, "https://collector:4317");
        assert!(otlp(&c).is_tls());
        let mut inputs = endpoint_flag("collector:4317");
        inputs.otlp.insecure = true;
        let c = resolve(&inputs, &[]).expect("config");
        assert_eq!(otlp(&c).endpoint, "http://collector:4317");

        // The traces' full URL: the metrics path replaces the traces one.
        let c = resolve(&endpoint_flag("http://c:4318/v1/traces"), &[]).expect("config");
        assert_eq!(otlp(&c).endpoint, "http://c:4318/v1/metrics");
    }

    #[test]
    fn the_metrics_variables_win_over_flags_which_win_over_generic_ones() {
        let mut inputs = endpoint_flag("http://traces:4317");
        inputs.otlp.protocol = Some("grpc".into());
        inputs.otlp.certificate = Some("/flag/ca.pem".into());
        inputs.otlp.compression = Some("gzip".into());
        let c = resolve(
            &inputs,
            &[
                (
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    "https://m:9000/custom",
                ),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "/metrics/ca.pem"),
                ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
                ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "500"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "250"),
            ],
        )
        .expect("config");
        let o = otlp(&c);
        assert_eq!(o.endpoint, "https://m:9000/custom", "used as given");
        assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(o.tls.certificate, Some(PathBuf::from("/metrics/ca.pem")));
        assert_eq!(o.compression, Compression::None);
        assert_eq!(o.timeout, Duration::from_millis(500));
        assert_eq!(
            c.otlp.as_ref().expect("otlp").interval,
            Duration::from_millis(250)
        );

        // Without the metrics variables the flags win over the generic ones.
        let c = resolve(
            &inputs,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/generic/ca.pem"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ],
        )
        .expect("config");
        let o = otlp(&c);
        assert_eq!(o.endpoint, "http://traces:4317");
        assert_eq!(o.protocol, OtlpProtocol::Grpc);
        assert_eq!(o.tls.certificate, Some(PathBuf::from("/flag/ca.pem")));
        assert_eq!(o.compression, Compression::Gzip);
    }

    #[test]
    fn headers_merge_later_winning() {
        let inputs = with_flags(OtlpFlags {
            headers: vec!["c=flag".into()],
            ..OtlpFlags::default()
        });
        let c = resolve(
            &inputs,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=1, b=generic,c=env"),
                ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "b=metrics%20only"),
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
        assert_eq!(otlp(&c).protocol, OtlpProtocol::Grpc);
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
            Err(ConfigError::Protocol("http/json".into()).into())
        );
        let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c")];
        assert_eq!(
            resolve(&MetricsInputs::default(), &env),
            Err(ConfigError::Endpoint("ftp://c".into()).into())
        );
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "zstd"),
        ];
        assert_eq!(
            resolve(&MetricsInputs::default(), &env)
                .expect_err("zstd")
                .to_string(),
            "invalid OTEL_EXPORTER_OTLP_METRICS_COMPRESSION \"zstd\": expected gzip or none"
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
            Err(ConfigError::Header("novalue".into()).into())
        );
    }
}
