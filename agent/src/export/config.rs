//! Where spans go: resolved from flags and the standard OTLP variables.
//!
//! Endpoint: `--otlp-endpoint`, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! (used as given), else `OTEL_EXPORTER_OTLP_ENDPOINT`. For HTTP, a base URL
//! (any URL not already ending in `/v1/traces`) gets `/v1/traces` appended.
//! Protocol: `--otlp-protocol`, else `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`,
//! else `OTEL_EXPORTER_OTLP_PROTOCOL`, else gRPC for port 4317 and
//! `http/protobuf` otherwise. Headers: `OTEL_EXPORTER_OTLP_HEADERS`, then
//! `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, then `--otlp-header`, later ones
//! winning per key. With no endpoint and no `--output`, spans go to the console.

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

/// A resolved OTLP destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    pub protocol: OtlpProtocol,
    /// Full URL: for HTTP it includes the `/v1/traces` path.
    pub endpoint: String,
    pub headers: BTreeMap<String, String>,
    /// Per-export timeout.
    pub timeout: Duration,
}

/// One destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Otlp(OtlpConfig),
    Console,
    /// OTLP JSON lines to a file, or stdout when `None`.
    Jsonl(Option<PathBuf>),
}

/// Every destination of this run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportConfig {
    pub outputs: Vec<Output>,
}

/// A bad export setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unsupported OTLP protocol {0:?}: use grpc or http/protobuf")]
    Protocol(String),
    #[error("invalid OTLP endpoint {0:?}: expected a URL such as http://localhost:4317")]
    Endpoint(String),
    #[error("invalid OTLP header {0:?}: expected key=value")]
    Header(String),
    #[error("invalid OTEL_EXPORTER_OTLP_TIMEOUT {0:?}: expected milliseconds")]
    Timeout(String),
    #[error("invalid --output {0:?}: expected console, jsonl or jsonl=FILE")]
    Output(String),
}

/// The raw inputs: flags, and a lookup for environment variables.
#[derive(Clone, Debug, Default)]
pub struct ExportInputs {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub headers: Vec<String>,
    /// `--output` values.
    pub outputs: Vec<String>,
}

impl ExportConfig {
    /// Resolves the configuration; `env` looks variables up.
    pub fn resolve(
        inputs: &ExportInputs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let mut outputs = Vec::new();
        let (endpoint, signal_specific) = match &inputs.endpoint {
            Some(e) => (Some(e.clone()), false),
            None => match env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                Some(e) => (Some(e), true),
                None => (env("OTEL_EXPORTER_OTLP_ENDPOINT"), false),
            },
        };
        if let Some(endpoint) = endpoint {
            let endpoint = endpoint.trim().to_owned();
            let port =
                endpoint_port(&endpoint).ok_or_else(|| ConfigError::Endpoint(endpoint.clone()))?;
            let protocol = match inputs
                .protocol
                .clone()
                .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
                .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            {
                Some(p) => OtlpProtocol::parse(&p)?,
                None if port == 4317 => OtlpProtocol::Grpc,
                None => OtlpProtocol::HttpProtobuf,
            };
            let endpoint = match protocol {
                OtlpProtocol::HttpProtobuf
                    if !signal_specific && !endpoint.ends_with("/v1/traces") =>
                {
                    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                }
                _ => endpoint,
            };
            let mut headers = BTreeMap::new();
            for raw in [
                env("OTEL_EXPORTER_OTLP_HEADERS"),
                env("OTEL_EXPORTER_OTLP_TRACES_HEADERS"),
            ]
            .into_iter()
            .flatten()
            {
                for member in raw.split(',').filter(|m| !m.trim().is_empty()) {
                    let (k, v) = parse_header(member)?;
                    headers.insert(k, v);
                }
            }
            for member in &inputs.headers {
                let (k, v) = parse_header(member)?;
                headers.insert(k, v);
            }
            let timeout = match env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
                .or_else(|| env("OTEL_EXPORTER_OTLP_TIMEOUT"))
            {
                Some(ms) => Duration::from_millis(
                    ms.trim()
                        .parse()
                        .map_err(|_| ConfigError::Timeout(ms.clone()))?,
                ),
                None => Duration::from_secs(10),
            };
            outputs.push(Output::Otlp(OtlpConfig {
                protocol,
                endpoint,
                headers,
                timeout,
            }));
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
            outputs.push(Output::Console);
        }
        Ok(Self { outputs })
    }
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

    #[test]
    fn console_when_nothing_is_configured() {
        let c = ExportConfig::resolve(&ExportInputs::default(), env_of(&[])).expect("config");
        assert_eq!(c.outputs, vec![Output::Console]);
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

        let c = ExportConfig::resolve(
            &ExportInputs {
                endpoint: Some("http://127.0.0.1:5555".into()),
                protocol: Some("grpc".into()),
                ..Default::default()
            },
            env_of(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]),
        )
        .expect("config");
        assert_eq!(otlp(&c).protocol, OtlpProtocol::Grpc);
    }

    #[test]
    fn headers_merge_with_flags_winning() {
        let c = ExportConfig::resolve(
            &ExportInputs {
                endpoint: Some("http://h:4318".into()),
                headers: vec!["x-team=core".into()],
                ..Default::default()
            },
            env_of(&[("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cr3t, x-team=env")]),
        )
        .expect("config");
        let h = &otlp(&c).headers;
        assert_eq!(h.get("api-key").map(String::as_str), Some("s3cr3t"));
        assert_eq!(h.get("x-team").map(String::as_str), Some("core"));
    }

    #[test]
    fn bad_values_are_rejected() {
        let bad =
            |inputs: ExportInputs| ExportConfig::resolve(&inputs, env_of(&[])).expect_err("bad");
        assert_eq!(
            bad(ExportInputs {
                endpoint: Some("collector:4317".into()),
                ..Default::default()
            }),
            ConfigError::Endpoint("collector:4317".into())
        );
        assert_eq!(
            bad(ExportInputs {
                endpoint: Some("http://c:4317".into()),
                protocol: Some("http/json".into()),
                ..Default::default()
            }),
            ConfigError::Protocol("http/json".into())
        );
        assert_eq!(
            bad(ExportInputs {
                outputs: vec!["xml".into()],
                ..Default::default()
            }),
            ConfigError::Output("xml".into())
        );
    }

    #[test]
    fn outputs_combine() {
        let c = ExportConfig::resolve(
            &ExportInputs {
                endpoint: Some("http://c:4317".into()),
                outputs: vec!["jsonl=/tmp/x.jsonl".into(), "console".into()],
                ..Default::default()
            },
            env_of(&[]),
        )
        .expect("config");
        assert_eq!(c.outputs.len(), 3);
        assert_eq!(c.outputs[1], Output::Jsonl(Some("/tmp/x.jsonl".into())));
    }
}
