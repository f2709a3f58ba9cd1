//! `agent --pid N`: turns the command line into a session's options, runs
//! the session ([`agent::session`]) and reports what it counted.

use std::{process::ExitCode, time::Duration};

use agent::{
    family::FamilyOptions,
    http_server::{SitePolicy, SpanNaming},
    metrics::{Metrics, MetricsConfig, MetricsInputs},
    probes,
    resource::{self, ResourceOptions},
    session::{Session, SessionOptions},
    spans::url::QueryPolicy,
    usdt::mapping::MappingConfig,
};
use anyhow::Context as _;

use crate::cli::{ExportArgs, TraceArgs};

/// The session's options from the command line (the USDT mapping read and
/// checked).
fn options(args: &TraceArgs) -> anyhow::Result<SessionOptions> {
    let usdt_mapping = if args.no_usdt {
        None
    } else {
        Some(match &args.usdt_config {
            Some(path) => MappingConfig::from_file(path)
                .with_context(|| format!("invalid --usdt-config {}", path.display()))?,
            None => MappingConfig::builtin(),
        })
    };
    Ok(SessionOptions {
        families: FamilyOptions {
            entry_site: match args.entry_site.as_str() {
                "function-start" => SitePolicy::FunctionStart,
                _ => SitePolicy::Cheapest,
            },
            usdt_mapping,
            usdt_mapping_given: args.usdt_config.is_some(),
            flight_recorder: !args.no_flight_recorder,
            save_dumps: args.save_dumps.clone(),
            max_open_spans: args.max_open_spans,
            span_ttl: Duration::from_secs(args.span_ttl),
            sql_keep_literals: args.sql_literals == "keep",
            url_query: match args.url_query.as_str() {
                "keep" => QueryPolicy::Keep,
                _ => QueryPolicy::Redact,
            },
            span_naming: match args.span_name.as_str() {
                "path" => SpanNaming::Path,
                _ => SpanNaming::Route,
            },
        },
        ring_buffer_bytes: args.ring_buffer_size,
        export_queue: args.export_queue,
    })
}

pub async fn run(pid: u32, args: &TraceArgs, export: &ExportArgs) -> anyhow::Result<ExitCode> {
    probes::preflight()?;
    let session = Session::plan(pid, options(args)?)?;
    let export_config = super::export_config(export)?;
    let metrics_config = MetricsConfig::resolve(
        &MetricsInputs {
            listen: args.metrics_listen.clone(),
            endpoint: export.otlp_endpoint.clone(),
            protocol: export.otlp_protocol.clone(),
            headers: export.otlp_headers.clone(),
        },
        |name| std::env::var(name).ok(),
    )?;
    let (resource, warnings) = resource::build(
        Some(session.process()),
        &ResourceOptions::from_env(export.service_name.clone()),
    );
    for warning in warnings {
        log::warn!("{warning}");
    }
    let metrics = Metrics::start(&metrics_config, &resource).await?;
    let outcome = session.run(&export_config, &resource).await;
    if let Some(metrics) = metrics {
        metrics
            .shutdown(outcome.as_ref().ok().map(|o| &o.counters))
            .await;
    }
    let outcome = outcome?;
    let counters = &outcome.counters;
    eprintln!(
        "agent: {} spans exported{}; {} records from the kernel; losses: {}",
        counters.get("spans_exported").unwrap_or(0),
        counters.per_output(),
        counters.get("records").unwrap_or(0),
        counters.describe()
    );
    if let Some(path) = &args.summary_file {
        std::fs::write(path, counters.summary_file())
            .with_context(|| format!("cannot write the summary to {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
