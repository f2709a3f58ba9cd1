//! `agent --pid N`: attach to a running Go program and export its requests.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use agent::{
    binary::{GoBinary, GoVersion},
    clock::WallClock,
    export::{BatchConfig, ExportSnapshot, Pipeline},
    probes::{self, KernelStats, LoadOptions, Probes, http_server},
    resource::{self, ProcessInfo, ResourceOptions},
    ringbuf::{self, Record, RingBufReader},
    spans::{PairingStats, http::HttpSpanBuilder},
    target::{ExitWatch, Target},
};
use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{ExportArgs, TraceArgs};

/// The oldest Go with the register-based calling convention the probes read.
const MIN_GO: GoVersion = GoVersion {
    major: 1,
    minor: 17,
    patch: 0,
};

/// How often the ring buffer is drained when no wakeup comes.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// How often open spans are expired and losses reported.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// How often a still-growing loss is logged.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Time left for exporting after SIGINT/SIGTERM (the agent exits within 2 s).
const SHUTDOWN_BUDGET: Duration = Duration::from_millis(1500);

/// Why the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Signal(&'static str),
    TargetExited,
}

/// Everything counted during a session.
#[derive(Debug, Default, Clone, Copy)]
struct Losses {
    kernel: KernelStats,
    pairing: PairingStats,
    export: ExportSnapshot,
    bad_records: u64,
}

impl Losses {
    fn describe(&self) -> String {
        format!(
            "ring buffer full: {} records, unreadable records: {}, ends without start: {}, expired: {}, evicted: {}, export queue full: {} spans, export failed: {} spans",
            self.kernel.ringbuf_full,
            self.bad_records,
            self.pairing.unmatched_ends,
            self.pairing.expired,
            self.pairing.evicted,
            self.export.dropped_queue_full,
            self.export.dropped_export_failed,
        )
    }

    fn total(&self) -> u64 {
        self.kernel.ringbuf_full
            + self.bad_records
            + self.pairing.unmatched_ends
            + self.pairing.expired
            + self.pairing.evicted
            + self.export.dropped()
    }
}

pub async fn run(pid: u32, args: &TraceArgs, export: &ExportArgs) -> anyhow::Result<ExitCode> {
    probes::preflight()?;
    let target = Target::open(pid)?;
    let bin = GoBinary::open(&target.exe_path).with_context(|| {
        format!(
            "PID {pid} ({}) cannot be traced",
            target.exe_in_target.display()
        )
    })?;
    let info = bin.build_info();
    if info.go_version < MIN_GO {
        anyhow::bail!(
            "PID {pid} ({}) was built with {}: the agent needs Go 1.17 or newer (register-based calling convention)",
            target.exe_in_target.display(),
            info.go_version_raw
        );
    }
    let policy = match args.entry_site.as_str() {
        "function-start" => http_server::SitePolicy::FunctionStart,
        _ => http_server::SitePolicy::Cheapest,
    };
    let plan = http_server::plan(&bin, policy).with_context(|| {
        format!(
            "PID {pid} ({}, {}) cannot be traced",
            target.exe_in_target.display(),
            info.go_version_raw
        )
    })?;
    for missing in &plan.missing {
        log::debug!("optional field unavailable: {missing}");
    }
    log::debug!("struct offsets: {:?}", plan.offsets);
    let process = ProcessInfo {
        pid,
        executable_path: target.exe_in_target.display().to_string(),
        runtime_version: Some(info.go_version_raw.clone()),
        main_module: Some(info.main.path.clone()).filter(|p| !p.is_empty()),
    };
    let go_version = info.go_version_raw.clone();
    drop(bin);

    let export_config = super::export_config(export)?;
    let (resource, warnings) = resource::build(
        Some(&process),
        &ResourceOptions::from_env(export.service_name.clone()),
    );
    for warning in warnings {
        log::warn!("{warning}");
    }

    let mut probes = Probes::load(LoadOptions {
        ring_buffer_bytes: args.ring_buffer_size,
    })?;
    http_server::attach(&mut probes, &target, 0, &plan)?;
    let mut reader =
        RingBufReader::new(probes.take_ring_buffer()?).context("cannot watch the ring buffer")?;
    let stats = probes.take_stats()?;
    let exit = ExitWatch::new(pid)?;

    let pipeline = Pipeline::start(
        &export_config,
        &resource,
        BatchConfig {
            queue_capacity: args.export_queue,
            ..BatchConfig::default()
        },
    )?;
    let sender = pipeline.sender();
    let clock = WallClock::measure();
    let mut builder = HttpSpanBuilder::new(
        clock,
        args.max_open_spans,
        args.span_ttl.saturating_mul(1_000_000_000),
    );

    log::info!(
        "attached to PID {pid} ({}, {go_version}): {} probes (start at {:#x}: {}, end at {:#x}: {})",
        target.exe_in_target.display(),
        probes.attached().len(),
        plan.start.address,
        plan.start.instruction,
        plan.end.address,
        plan.end.instruction,
    );

    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    let mut losses = Losses::default();
    let mut reported_losses = 0;
    let mut last_report = Instant::now();
    let mut send = |span| sender.send(span);

    let mut drain =
        |reader: &mut RingBufReader, builder: &mut HttpSpanBuilder, losses: &mut Losses| {
            reader.drain(|bytes| match ringbuf::record::decode(bytes) {
                Ok(Record::HttpServerStart(start)) => builder.on_start(&start, &mut send),
                Ok(Record::HttpServerEnd(end)) => builder.on_end(&end, &mut send),
                Ok(Record::Other { header, .. }) => {
                    log::trace!("ignoring record of kind {}", header.kind);
                }
                Err(err) => {
                    losses.bad_records += 1;
                    log::debug!("bad record: {err}");
                }
            });
        };

    let stop = loop {
        tokio::select! {
            _ = sigint.recv() => break Stop::Signal("SIGINT"),
            _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
            () = exit.exited() => break Stop::TargetExited,
            result = reader.readable() => {
                if let Err(err) = result {
                    log::warn!("ring buffer wait failed: {err}");
                }
            }
            _ = drain_tick.tick() => {}
            _ = housekeeping.tick() => {
                builder.expire(WallClock::monotonic_now_ns(), &mut |span| sender.send(span));
                losses.kernel = stats.read();
                losses.pairing = builder.stats();
                losses.export = pipeline.snapshot();
                let total = losses.total();
                if total > reported_losses && last_report.elapsed() >= REPORT_INTERVAL {
                    log::warn!("losses so far: {}", losses.describe());
                    reported_losses = total;
                    last_report = Instant::now();
                }
            }
        }
        drain(&mut reader, &mut builder, &mut losses);
    };

    match stop {
        Stop::Signal(name) => log::info!("{name}: detaching from PID {pid}"),
        Stop::TargetExited => log::info!("PID {pid} exited"),
    }
    probes.detach_all();
    drain(&mut reader, &mut builder, &mut losses);
    builder.finish(WallClock::monotonic_now_ns(), &mut |span| sender.send(span));
    losses.kernel = stats.read();
    losses.pairing = builder.stats();
    drop(sender);
    drop(probes);
    losses.export = pipeline.shutdown(SHUTDOWN_BUDGET).await;
    eprintln!(
        "agent: {} spans exported; {} records from the kernel; losses: {}",
        losses.export.exported,
        losses.kernel.events_written,
        losses.describe()
    );
    if let Some(path) = &args.summary_file {
        let summary = format!(
            "spans_exported={}\nrecords={}\nringbuf_full={}\nbad_records={}\nunmatched_ends={}\nexpired={}\nevicted={}\ndropped_queue_full={}\ndropped_export_failed={}\n",
            losses.export.exported,
            losses.kernel.events_written,
            losses.kernel.ringbuf_full,
            losses.bad_records,
            losses.pairing.unmatched_ends,
            losses.pairing.expired,
            losses.pairing.evicted,
            losses.export.dropped_queue_full,
            losses.export.dropped_export_failed,
        );
        std::fs::write(path, summary)
            .with_context(|| format!("cannot write the summary to {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
