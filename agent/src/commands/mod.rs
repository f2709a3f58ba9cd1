//! One module per command.

mod decode;
mod host;
mod inspect;
mod probes;
mod trace;
mod watch;

use std::process::ExitCode;

use agent::export::{
    ExportConfig, Output,
    config::{ExportInputs, OtlpFlags},
    tls::ClientTls,
};

use crate::cli::{Cli, Command, ExportArgs};

/// Runs the command the command line asked for.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None if !cli.trace.launch.command.is_empty() => {
            trace::launch(&cli.trace.launch.command, &cli.trace, &cli.export).await
        }
        None => {
            let selectors = agent::discovery::Selectors::resolve(
                &cli.trace.pid,
                &cli.trace.exe,
                &cli.trace.port,
                cli.trace.go,
                |name| std::env::var(name).ok(),
            )?;
            match selectors.single_pid() {
                Some(pid) => trace::run(pid, &cli.trace, &cli.export).await,
                None if selectors.is_empty() => anyhow::bail!(
                    "nothing to do: give --pid N, --exe PATTERN, --port N or --go to trace processes, or -- CMD to start one (see --help)"
                ),
                None => host::run(selectors, &cli.trace, &cli.export).await,
            }
        }
        Some(Command::Decode(args)) => decode::run(&args, &cli.export).await,
        Some(Command::Watch(args)) => watch::run(&args, &cli.export).await,
        Some(Command::Inspect(args)) => inspect::run(&args),
        Some(Command::Probes(args)) => probes::run(&args),
    }
}

/// Starts the export pipeline for `process` (none for trace files): the
/// resource from flags and environment, warnings about it logged.
pub fn start_pipeline(
    export: &ExportArgs,
    process: Option<&agent::resource::ProcessInfo>,
    batch: agent::export::BatchConfig,
) -> anyhow::Result<agent::export::Pipeline> {
    let config = export_config(export)?;
    let (resource, warnings) = agent::resource::build(
        process,
        &agent::resource::ResourceOptions::from_env(export.service_name.clone()),
    );
    for warning in warnings {
        log::warn!("{warning}");
    }
    Ok(agent::export::Pipeline::start(
        &config,
        &resource,
        batch.with(&config.batch),
    )?)
}

/// The export configuration from flags and environment; the TLS files of
/// an `https://` endpoint are read and checked here, before anything starts.
pub fn export_config(args: &ExportArgs) -> anyhow::Result<ExportConfig> {
    let config = ExportConfig::resolve(
        &ExportInputs {
            otlp: OtlpFlags {
                endpoint: args.otlp_endpoint.clone(),
                protocol: args.otlp_protocol.clone(),
                headers: args.otlp_headers.clone(),
                certificate: args.otlp_certificate.clone(),
                client_certificate: args.otlp_client_certificate.clone(),
                client_key: args.otlp_client_key.clone(),
                insecure: args.otlp_insecure,
                compression: args.otlp_compression.clone(),
            },
            outputs: args.output.clone(),
        },
        |name| std::env::var(name).ok(),
    )?;
    for output in &config.outputs {
        if let Output::Otlp(otlp) = output
            && otlp.is_tls()
        {
            ClientTls::load(&otlp.tls)?;
        }
    }
    Ok(config)
}
