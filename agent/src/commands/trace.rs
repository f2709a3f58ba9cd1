//! `agent --pid N`: turns the command line into a session's options, runs
//! the session ([`agent::session`]) and reports what it counted.

use std::{process::ExitCode, time::Duration};

use agent::{
    family::FamilyOptions,
    flight::slow::{DumpTrigger, SlowDumpOptions},
    http_server::{SitePolicy, SpanNaming},
    instrument::Categories,
    metrics::{Metrics, MetricsConfig, MetricsInputs},
    probes,
    resource::{self, ResourceOptions},
    session::{Outcome, Session, SessionOptions, Stop},
    spans::{
        Sampler,
        sampling::{self, SamplerError},
        url::QueryPolicy,
    },
    syscalls::{SummaryOut, SyscallFilter, SyscallOptions},
    target::{
        Target,
        launch::{Ended, Launched},
    },
    usdt::mapping::MappingConfig,
};
use anyhow::Context as _;
use nix::sys::signal::Signal;

use crate::cli::{ExportArgs, LaunchArgs, TraceArgs};

/// The session's options from the command line (the USDT mapping read and
/// checked).
pub(super) fn options(args: &TraceArgs) -> anyhow::Result<SessionOptions> {
    let usdt_mapping = if args.no_usdt {
        None
    } else {
        Some(match &args.usdt_config {
            Some(path) => MappingConfig::from_file(path)
                .with_context(|| format!("invalid --usdt-config {}", path.display()))?,
            None => MappingConfig::builtin(),
        })
    };
    let usdt_mapping = usdt_mapping.map(|mut mapping| {
        if args.span_name == "path" {
            mapping.name_builtin_http_by_path();
        }
        mapping
    });
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
            period_min: args.period_min,
            slow_dumps: slow_dumps(args)?,
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
            syscalls: syscall_options(&args.launch)?,
            sampler: sampler(args)?,
            categories: Categories::resolve(
                args.instrument.as_deref(),
                args.no_instrument.as_deref(),
                |name| std::env::var(name).ok(),
            )?,
            propagate: args.propagate,
        },
        ring_buffer_bytes: args.ring_buffer_size,
        export_queue: args.export_queue,
    })
}

/// The sampler from `--sampler`/`--sampler-arg` and `OTEL_TRACES_SAMPLER*`;
/// what is wrong in the environment is said once and ignored.
/// `--dump-on-slow` with its trigger (`--dump-signal` or `--dump-url`).
fn slow_dumps(args: &TraceArgs) -> anyhow::Result<Option<SlowDumpOptions>> {
    let Some(threshold) = args.dump_on_slow else {
        return Ok(None);
    };
    let trigger = match (&args.dump_signal, &args.dump_url) {
        (Some(signal), None) => DumpTrigger::signal(signal).context("invalid --dump-signal")?,
        (None, Some(url)) => DumpTrigger::url(url).context("invalid --dump-url")?,
        _ => anyhow::bail!(
            "--dump-on-slow needs a way to ask the program for a dump: --dump-signal SIGNAL or --dump-url URL"
        ),
    };
    anyhow::ensure!(
        !args.no_flight_recorder,
        "--dump-on-slow asks for flight-recorder dumps, which --no-flight-recorder does not capture"
    );
    Ok(Some(SlowDumpOptions {
        threshold,
        trigger,
        interval: args.dump_interval,
    }))
}

fn sampler(args: &TraceArgs) -> anyhow::Result<Sampler> {
    let (sampler, warnings) = sampling::resolve(
        args.sampler.as_deref(),
        args.sampler_arg.as_deref(),
        |name| std::env::var(name).ok(),
    )
    .map_err(|err| {
        let flag = match err {
            SamplerError::BadRatio(_) | SamplerError::NoArgument { .. } => "--sampler-arg",
            SamplerError::Unknown(_) => "--sampler",
        };
        anyhow::anyhow!("invalid {flag}: {err}")
    })?;
    for warning in warnings {
        log::warn!("{warning}");
    }
    Ok(sampler)
}

/// The system-call family's options, when `--syscalls` or `-c` is given.
fn syscall_options(args: &LaunchArgs) -> anyhow::Result<Option<SyscallOptions>> {
    if args.syscalls.is_none() && !args.summary {
        anyhow::ensure!(
            !args.follow_forks,
            "--follow-forks needs --syscalls or --summary"
        );
        anyhow::ensure!(
            args.syscall_min_duration.is_zero(),
            "--syscall-min-duration needs --syscalls"
        );
        anyhow::ensure!(!args.source, "--source needs --syscalls");
        return Ok(None);
    }
    let filter = match &args.syscalls {
        Some(spec) => SyscallFilter::parse(spec)?,
        None => SyscallFilter::all(),
    };
    Ok(Some(SyscallOptions {
        filter,
        spans: args.syscalls.is_some(),
        min_duration: args.syscall_min_duration,
        follow_forks: args.follow_forks,
        source: args.source && args.syscalls.is_some(),
        summary: args.summary.then(SummaryOut::default),
        command: (!args.command.is_empty()).then(|| args.command.clone()),
    }))
}

pub async fn run(pid: u32, args: &TraceArgs, export: &ExportArgs) -> anyhow::Result<ExitCode> {
    probes::preflight()?;
    let session = Session::plan(pid, options(args)?)?;
    run_session(session, args, export, || Ok(())).await?;
    Ok(ExitCode::SUCCESS)
}

/// `agent [options] -- CMD [ARGS...]`: starts the program held, attaches,
/// lets it run, traces it until it exits and exits with its exit code.
pub async fn launch(
    argv: &[String],
    args: &TraceArgs,
    export: &ExportArgs,
) -> anyhow::Result<ExitCode> {
    probes::preflight()?;
    let options = options(args)?;
    let mut program = Launched::spawn(argv)?;
    let target = Target::launched(program.pid(), &program.exe);
    let session = Session::plan_target(target, options)?;
    let outcome = run_session(session, args, export, || program.release()).await?;
    if let Stop::Signal(name) = outcome.stop {
        // The agent was told to stop: so is the program it started.
        let signal = if name == "SIGINT" {
            Signal::SIGINT
        } else {
            Signal::SIGTERM
        };
        program.signal(signal);
    }
    let ended = program.wait()?;
    match ended {
        Ended::Exited(code) => log::info!("{} exited with {code}", argv[0]),
        Ended::Signaled(signal) => log::info!("{} was killed by signal {signal}", argv[0]),
    }
    Ok(ExitCode::from(ended.exit_code()))
}

/// Runs a planned session (calling `release` once attached), prints the
/// exit line and writes the summary file.
async fn run_session(
    session: Session,
    args: &TraceArgs,
    export: &ExportArgs,
    release: impl FnOnce() -> std::io::Result<()>,
) -> anyhow::Result<Outcome> {
    let export_config = super::export_config(export)?;
    let metrics_config = MetricsConfig::resolve(
        &MetricsInputs {
            listen: args.metrics_listen.clone(),
            otlp: export.otlp_flags(),
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
    let syscall_summary = session
        .options()
        .families
        .syscalls
        .as_ref()
        .and_then(|o| o.summary.clone());
    let metrics = Metrics::start(&metrics_config, &resource).await?;
    let outcome = session
        .run_released(&export_config, &resource, release)
        .await;
    if let Some(metrics) = metrics {
        metrics
            .shutdown(outcome.as_ref().ok().map(|o| &o.counters))
            .await;
    }
    let outcome = outcome?;
    let counters = &outcome.counters;
    let sampled_out = match counters.get("sampled_out") {
        Some(n) if n > 0 => format!(", {n} sampled out"),
        _ => String::new(),
    };
    eprintln!(
        "agent: {} spans exported{}{sampled_out}; {} records from the kernel; losses: {}",
        counters.get("spans_exported").unwrap_or(0),
        counters.per_output(),
        counters.get("records").unwrap_or(0),
        counters.describe()
    );
    if let Some(path) = &args.summary_file {
        let mut text = counters.summary_file();
        if let Some(lines) = syscall_summary.and_then(|s| s.lock().ok().map(|l| l.clone())) {
            text.push_str(&lines);
        }
        std::fs::write(path, text)
            .with_context(|| format!("cannot write the summary to {}", path.display()))?;
    }
    Ok(outcome)
}
