//! `agent --pid N`: attach to a running process and export its requests:
//! net/http server requests of a Go program, and the USDT probe pairs a
//! mapping names (any language).

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use agent_common::event::KIND_USDT;

use agent::{
    binary::{GoBinary, GoVersion},
    clock::WallClock,
    export::{BatchConfig, ExportSnapshot, Pipeline},
    flight::{self, FlightReader, ReaderConfig, ReaderStats},
    probes::{self, KernelStats, LoadOptions, Probes, http_server},
    resource::{self, ProcessInfo, ResourceOptions},
    ringbuf::{self, Record, RingBufReader},
    spans::{
        PairingStats,
        http::HttpSpanBuilder,
        usdt::{UsdtSpanBuilder, UsdtStats},
    },
    target::{ExitWatch, Target},
    usdt::{ScannedFiles, UsdtProbe, mapping::MappingConfig},
};
use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use super::usdt_session::{UsdtSession, probe_names, usable_probes};
use crate::cli::{ExportArgs, TraceArgs};

/// The oldest Go with the register-based calling convention the probes read.
const MIN_GO: GoVersion = GoVersion {
    major: 1,
    minor: 17,
    patch: 0,
};

/// How often the ring buffer is drained when no wakeup comes. Busy targets
/// fill a quarter of the ring sooner and wake the agent themselves, so this
/// only paces quieter ones. Every drain has a fixed price (a timer wakeup,
/// often of an idle CPU, and the export tasks woken to take the spans): at
/// 10 ms the agent spent 15-20% more CPU per span than at 50-100 ms, under
/// `wrk` and under the USDT *work* load alike (BENCHMARKS.md, session 5).
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);
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
    usdt: UsdtStats,
    export: ExportSnapshot,
    bad_records: u64,
    /// Requests that continued a caller's trace (a valid `traceparent`).
    traceparents: u64,
    /// Flight-recorder dumps, once the reader has stopped.
    flight: Option<ReaderStats>,
}

/// One counter of a session: its key in `--summary-file`, its words in the
/// exit line (`None`: not shown there) and whether it is a loss.
struct Counter {
    key: &'static str,
    label: Option<(&'static str, &'static str)>,
    value: u64,
    loss: bool,
}

const fn counter(
    key: &'static str,
    label: Option<(&'static str, &'static str)>,
    value: u64,
    loss: bool,
) -> Counter {
    Counter {
        key,
        label,
        value,
        loss,
    }
}

impl Losses {
    /// Every counter, in the order the exit line and the summary file list
    /// them.
    fn counters(&self) -> Vec<Counter> {
        let flight = self.flight.unwrap_or_default();
        let (u, p) = (&self.usdt, &self.pairing);
        vec![
            counter("spans_exported", None, self.export.exported, false),
            counter("records", None, self.kernel.events_written, false),
            counter(
                "ringbuf_full",
                Some(("ring buffer full", " records")),
                self.kernel.ringbuf_full,
                true,
            ),
            counter(
                "interleaved",
                Some(("records dropped by preempted probes", "")),
                self.kernel.interleaved,
                true,
            ),
            counter(
                "bad_records",
                Some(("unreadable records", "")),
                self.bad_records,
                true,
            ),
            counter(
                "unmatched_ends",
                Some(("ends without start", "")),
                p.unmatched_ends,
                true,
            ),
            counter("expired", Some(("expired", "")), p.expired, true),
            counter("evicted", Some(("evicted", "")), p.evicted, true),
            counter("http_traceparents", None, self.traceparents, false),
            counter(
                "http_headers_unsearched",
                None,
                self.kernel.headers_incomplete,
                false,
            ),
            counter("usdt_started", None, u.pairing.started, false),
            counter("usdt_completed", None, u.pairing.completed, false),
            counter(
                "usdt_unmatched_ends",
                Some(("USDT ends without start", "")),
                u.pairing.unmatched_ends,
                true,
            ),
            counter(
                "usdt_expired",
                Some(("USDT expired", "")),
                u.pairing.expired,
                true,
            ),
            counter(
                "usdt_evicted",
                Some(("USDT evicted", "")),
                u.pairing.evicted,
                true,
            ),
            counter(
                "usdt_replaced",
                Some(("USDT replaced", "")),
                u.pairing.replaced,
                true,
            ),
            counter(
                "usdt_unreadable_ids",
                Some(("USDT unreadable request ids", "")),
                u.unreadable_ids,
                true,
            ),
            counter("usdt_unmapped", None, u.unmapped, true),
            counter(
                "dropped_queue_full",
                Some(("export queue full", " spans")),
                self.export.dropped_queue_full,
                true,
            ),
            counter(
                "dropped_export_failed",
                Some(("export failed", " spans")),
                self.export.dropped_export_failed,
                true,
            ),
            counter("flight_dumps", None, flight.dumps, false),
            counter("flight_dumps_complete", None, flight.complete, false),
            counter("flight_dumps_incomplete", None, flight.incomplete, true),
            counter("flight_dumps_dropped", None, flight.dropped_dumps, true),
            counter("flight_dumps_failed", None, flight.errors, true),
            counter("flight_spans", None, flight.spans, false),
        ]
    }

    /// The losses, for the log and the exit line.
    fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .counters()
            .into_iter()
            .filter_map(|c| {
                c.label
                    .map(|(words, unit)| format!("{words}: {}{unit}", c.value))
            })
            .collect();
        if let Some(f) = self.flight {
            parts.push(format!(
                "flight-recorder dumps: {} ({} complete, {} incomplete, {} dropped, {} failed to decode or save)",
                f.dumps, f.complete, f.incomplete, f.dropped_dumps, f.errors
            ));
        }
        parts.join(", ")
    }

    /// Everything lost, summed.
    fn total(&self) -> u64 {
        self.counters()
            .iter()
            .filter(|c| c.loss)
            .map(|c| c.value)
            .sum()
    }

    /// The `--summary-file` text: one `key=value` line per counter.
    fn summary_file(&self) -> String {
        self.counters()
            .iter()
            .map(|c| format!("{}={}\n", c.key, c.value))
            .collect()
    }
}

/// What the Go analysis found: the net/http probe plan.
struct HttpTarget {
    plan: http_server::HttpServerPlan,
}

/// What the Go binary offers: net/http probes (or why not) and a flight
/// recorder to catch dumps of.
struct GoTarget {
    http: anyhow::Result<HttpTarget>,
    flight: Option<flight::FlightPlan>,
}

/// Analyses the executable for net/http probes; the error says why the
/// process cannot be traced that way (not Go, too old, no net/http).
fn plan_go(
    pid: u32,
    target: &Target,
    args: &TraceArgs,
    process: &mut ProcessInfo,
) -> anyhow::Result<GoTarget> {
    let bin = GoBinary::open(&target.exe_path).with_context(|| {
        format!(
            "PID {pid} ({}) cannot be traced",
            target.exe_in_target.display()
        )
    })?;
    let info = bin.build_info();
    process.runtime_version = Some(info.go_version_raw.clone());
    if info.go_version < MIN_GO {
        anyhow::bail!(
            "PID {pid} ({}) was built with {}: the agent needs Go 1.17 or newer (register-based calling convention)",
            target.exe_in_target.display(),
            info.go_version_raw
        );
    }
    let flight = if args.no_flight_recorder {
        None
    } else {
        match flight::plan(&bin) {
            Ok(plan) => plan,
            Err(err) => {
                log::warn!(
                    "flight-recorder dumps will not be captured: {:#}",
                    anyhow::Error::new(err)
                );
                None
            }
        }
    };
    let policy = match args.entry_site.as_str() {
        "function-start" => http_server::SitePolicy::FunctionStart,
        _ => http_server::SitePolicy::Cheapest,
    };
    let http = http_server::plan(&bin, policy)
        .with_context(|| {
            format!(
                "PID {pid} ({}, {}) cannot be traced",
                target.exe_in_target.display(),
                info.go_version_raw
            )
        })
        .map(|plan| {
            for missing in &plan.missing {
                log::debug!("optional field unavailable: {missing}");
            }
            log::debug!("struct offsets: {:?}", plan.offsets);
            HttpTarget { plan }
        });
    Ok(GoTarget { http, flight })
}

/// The USDT probes of `pid` that the mapping names and that can be
/// attached, or why there are none; `scanned` remembers the files read.
fn usdt_probes(
    pid: u32,
    config: &MappingConfig,
    scanned: &mut ScannedFiles,
) -> Result<Vec<UsdtProbe>, String> {
    let all = scanned.scan(pid).map_err(|err| {
        format!(
            "reading its USDT probes failed: {:#}",
            anyhow::Error::new(err)
        )
    })?;
    let found = all.len();
    let usable = usable_probes(all, config);
    if usable.is_empty() {
        return Err(format!(
            "it has no USDT probes that a mapping names ({found} USDT probes found)"
        ));
    }
    Ok(usable)
}

/// The USDT mapping: the built-ins, merged with `--usdt-config`.
fn usdt_config(args: &TraceArgs) -> anyhow::Result<Option<MappingConfig>> {
    if args.no_usdt {
        return Ok(None);
    }
    Ok(Some(match &args.usdt_config {
        Some(path) => MappingConfig::from_file(path)
            .with_context(|| format!("invalid --usdt-config {}", path.display()))?,
        None => MappingConfig::builtin(),
    }))
}

pub async fn run(pid: u32, args: &TraceArgs, export: &ExportArgs) -> anyhow::Result<ExitCode> {
    probes::preflight()?;
    let target = Target::open(pid)?;
    let mut process = ProcessInfo {
        pid,
        executable_path: target.exe_in_target.display().to_string(),
        runtime_version: None,
    };
    let mapping = usdt_config(args)?;
    let (http, flight_plan) = match plan_go(pid, &target, args, &mut process) {
        Ok(go) => (go.http, go.flight),
        Err(err) => (Err(err), None),
    };
    let mut scanned = ScannedFiles::default();
    let usdt = match &mapping {
        Some(config) => usdt_probes(pid, config, &mut scanned),
        None => Err("USDT probes are off (--no-usdt)".to_owned()),
    };
    // With USDT probes off, the target is not watched for new ones either.
    let scanned = mapping.is_some().then_some(scanned);
    let (http, usdt_found) = match (http, usdt) {
        (Err(http_err), Err(usdt_err)) if flight_plan.is_some() => {
            log::info!("no net/http probes: {http_err:#}; no USDT probes: {usdt_err}");
            (None, Vec::new())
        }
        (Err(http_err), Err(usdt_err)) => {
            return Err(http_err.context(format!(
                "PID {pid} ({}) has nothing to trace: {usdt_err}, and no net/http server",
                target.exe_in_target.display()
            )));
        }
        (Ok(http), Err(usdt_err)) => {
            if args.usdt_config.is_some() {
                log::warn!("no USDT probes attached: {usdt_err}");
            } else {
                log::debug!("no USDT probes attached: {usdt_err}");
            }
            (Some(http), Vec::new())
        }
        (Err(http_err), Ok(found)) => {
            log::info!("no net/http probes: {http_err:#}");
            (None, found)
        }
        (Ok(http), Ok(found)) => (Some(http), found),
    };

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
        flight_ring_bytes: if flight_plan.is_some() {
            16 << 20
        } else {
            4096
        },
    })?;
    if let Some(http) = &http {
        http_server::attach(&mut probes, &target, 0, &http.plan)?;
        log::info!(
            "net/http: {} probes (start at {:#x}: {}, end at {:#x}: {}, HTTP/2 end {})",
            probes.attached().len(),
            http.plan.start.address,
            http.plan.start.instruction,
            http.plan.end.address,
            http.plan.end.instruction,
            http.plan
                .h2_end
                .as_ref()
                .map_or("not attached".to_owned(), |s| format!(
                    "at {:#x}: {}",
                    s.address, s.instruction
                )),
        );
    }
    let clock = WallClock::measure();
    let ttl = Duration::from_secs(args.span_ttl);
    let mut usdt = UsdtSession::new(
        pid,
        UsdtSpanBuilder::new(
            mapping.unwrap_or_else(MappingConfig::builtin),
            clock,
            args.max_open_spans,
            ttl,
        ),
        scanned,
    );
    if !usdt_found.is_empty() {
        usdt.attach(probes.ebpf_mut(), &usdt_found)
            .with_context(|| format!("cannot attach to the USDT probes of PID {pid}"))?;
        let names = probe_names(&usdt_found);
        let guarded = usdt_found.iter().filter(|p| p.semaphore.is_some()).count();
        log::info!(
            "USDT: {} probes at {} sites ({} semaphore-guarded): {}",
            names.len(),
            usdt_found.len(),
            guarded,
            names.join(", ")
        );
    }
    let flight = match &flight_plan {
        Some(plan) => {
            let attachment = flight::attach(probes.ebpf_mut(), &target, 0, plan)
                .with_context(|| format!("cannot attach to the flight recorder of PID {pid}"))?;
            let ring = flight::take_ring_buffer(probes.ebpf_mut())?;
            log::info!(
                "flight recorder: {} probes on WriteTo and its writes",
                attachment.probes()
            );
            Some((attachment, ring))
        }
        None => None,
    };
    // From here on, errors detach the USDT probes (restoring semaphores)
    // before returning.
    let result = session(
        pid,
        args,
        &export_config,
        &resource,
        &target,
        &mut probes,
        &mut usdt,
        flight,
        process.runtime_version.as_deref(),
        clock,
    )
    .await;
    usdt.detach(&mut probes);
    result
}

/// Drains the ring buffer with `drain_chunk` (one call takes at most
/// [`ringbuf::MAX_PER_DRAIN`] records) until a call comes back short,
/// yielding in between so that the export tasks take each chunk's spans
/// before the next.
async fn drain_backlog(mut drain_chunk: impl FnMut() -> usize) {
    while drain_chunk() == ringbuf::MAX_PER_DRAIN {
        tokio::task::yield_now().await;
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call, from run: the session's parts"
)]
async fn session(
    pid: u32,
    args: &TraceArgs,
    export_config: &agent::export::ExportConfig,
    resource: &opentelemetry_sdk::Resource,
    target: &Target,
    probes: &mut Probes,
    usdt: &mut UsdtSession,
    flight: Option<(
        flight::FlightAttachment,
        aya::maps::RingBuf<aya::maps::MapData>,
    )>,
    go_version: Option<&str>,
    clock: WallClock,
) -> anyhow::Result<ExitCode> {
    let mut reader =
        RingBufReader::new(probes.take_ring_buffer()?).context("cannot watch the ring buffer")?;
    let stats = probes.take_stats()?;
    let exit = ExitWatch::new(pid)?;

    let pipeline = Pipeline::start(
        export_config,
        resource,
        BatchConfig {
            queue_capacity: args.export_queue,
            ..BatchConfig::default()
        },
    )?;
    let sender = pipeline.sender();
    // Dumps are reassembled and decoded on a thread of their own: decoding a
    // 10 MiB dump takes about a second and must not hold the event loop.
    let mut flight = match flight {
        Some((attachment, ring)) => {
            let dump_sender = sender.clone();
            let reader = FlightReader::spawn(
                ring,
                ReaderConfig {
                    save_dir: args.save_dumps.clone(),
                    ..ReaderConfig::default()
                },
                move |span| dump_sender.send_blocking(span),
            )
            .context("cannot start the flight-recorder reader")?;
            reader.watch(&attachment);
            Some((attachment, reader))
        }
        None => None,
    };
    let mut builder = HttpSpanBuilder::new(
        clock,
        args.max_open_spans,
        args.span_ttl.saturating_mul(1_000_000_000),
    );

    log::info!(
        "attached to PID {pid} ({}, {}): {} net/http probes, {} USDT probes",
        target.exe_in_target.display(),
        go_version.unwrap_or("not Go"),
        probes.attached().len(),
        usdt.site_count(),
    );

    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    let mut losses = Losses::default();
    let mut reported_losses = 0;
    let mut last_report = Instant::now();
    let mut send = |span| sender.send_encoded(span);

    let mut drain = |reader: &mut RingBufReader,
                     builder: &mut HttpSpanBuilder,
                     usdt: &mut UsdtSession,
                     losses: &mut Losses| {
        reader.drain(|bytes| match ringbuf::record::decode(bytes) {
            Ok(Record::HttpServerStart(start)) => builder.on_start(start, &mut send),
            Ok(Record::HttpServerEnd(end)) => builder.on_end(end, &mut send),
            Ok(Record::HttpTraceparent(rec)) => {
                if builder.on_traceparent(rec) {
                    losses.traceparents += 1;
                }
            }
            Ok(Record::HttpTracestate(rec)) => builder.on_tracestate(rec),
            Ok(Record::Other { header, bytes }) if header.kind == KIND_USDT => {
                usdt.on_record(bytes, &mut losses.bad_records, &mut send);
            }
            Ok(Record::Other { header, .. }) => {
                log::trace!("ignoring record of kind {}", header.kind);
            }
            Err(err) => {
                losses.bad_records += 1;
                log::debug!("bad record: {err}");
            }
        })
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
                usdt.discover(probes.ebpf_mut());
                let now = WallClock::monotonic_now_ns();
                builder.expire(now, &mut |span| sender.send_encoded(span));
                usdt.builder.expire(now, &mut |span| sender.send_encoded(span));
                losses.kernel = stats.read();
                losses.pairing = builder.stats();
                losses.usdt = usdt.builder.stats();
                losses.export = pipeline.snapshot();
                let total = losses.total();
                if total > reported_losses && last_report.elapsed() >= REPORT_INTERVAL {
                    log::warn!("losses so far: {}", losses.describe());
                    reported_losses = total;
                    last_report = Instant::now();
                }
            }
        }
        drain_backlog(|| drain(&mut reader, &mut builder, usdt, &mut losses)).await;
    };

    match stop {
        Stop::Signal(name) => log::info!("{name}: detaching from PID {pid}"),
        Stop::TargetExited => log::info!("PID {pid} exited"),
    }
    probes.detach_all();
    usdt.detach(probes);
    if let Some((attachment, reader)) = flight.take() {
        if let Err(err) = attachment.detach(probes.ebpf_mut()) {
            log::warn!(
                "detaching the flight-recorder probes: {:#}",
                anyhow::Error::new(err)
            );
        }
        losses.flight = Some(reader.stop());
    }
    drain_backlog(|| drain(&mut reader, &mut builder, usdt, &mut losses)).await;
    let now = WallClock::monotonic_now_ns();
    builder.finish(now, &mut |span| sender.send_encoded(span));
    usdt.builder
        .finish(now, &mut |span| sender.send_encoded(span));
    losses.kernel = stats.read();
    losses.pairing = builder.stats();
    losses.usdt = usdt.builder.stats();
    drop(sender);
    losses.export = pipeline.shutdown(SHUTDOWN_BUDGET).await;
    eprintln!(
        "agent: {} spans exported; {} records from the kernel; losses: {}",
        losses.export.exported,
        losses.kernel.events_written,
        losses.describe()
    );
    if let Some(path) = &args.summary_file {
        let summary = losses.summary_file();
        std::fs::write(path, summary)
            .with_context(|| format!("cannot write the summary to {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
