//! A tracing session: one target process, the families planned for it, the
//! probes they attached, the ring buffer, the export pipeline, and every
//! count. `agent --pid N` builds [`SessionOptions`] from its command line
//! and drives a [`Session`]:
//!
//! 1. [`Session::plan`]: opens the target, analyses its executable once as
//!    a Go binary, and asks every registered family
//!    ([`crate::family::FAMILIES`]) what it would attach. A process with
//!    nothing to trace is refused here, with every family's reason, before
//!    anything is loaded.
//! 2. [`Session::run`]: loads the eBPF object, has each family attach and
//!    start, then drains the shared ring buffer, handing each record to the
//!    family that declared its kind, until a signal or the target's exit.
//!    Then every family stops (probes detached, target state restored),
//!    what the kernel already wrote is drained, open spans are flushed and
//!    the pipeline gets a bounded time to export.

pub mod counters;
pub mod shared;

use std::{
    cell::RefCell,
    error::Error,
    path::Path,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::event::MAX_KIND;
use opentelemetry_sdk::Resource;
use tokio::signal::unix::{SignalKind, signal};

pub use counters::{Counters, SessionCounts};

use crate::{
    binary::{BinaryError, GoBinary, error_chain},
    clock::WallClock,
    export::{BatchConfig, ExportConfig, Pipeline, PipelineError},
    family::{FAMILIES, Family, FamilyError, FamilyOptions, Plan, PlanContext, RecordContext},
    http_server::MIN_GO,
    probes::{DetachedLink, LoadOptions, ProbeError, Probes},
    resource::ProcessInfo,
    ringbuf::{self, RingBufReader, record},
    spans::Goroutines,
    target::{ExitWatch, ExitWatchError, Target, TargetError},
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
/// Chunks of records drained per turn of the event loop at most (65,536
/// records: about 30 ms of work at the agent's fastest).
const CHUNKS_PER_TURN: usize = 32;
/// The size of the flight ring when no family asks for more.
const SMALLEST_RING: u32 = 4096;

/// Resolves when a flight-recorder dump's join wants the ring buffer
/// drained now; never without a flight-recorder family.
async fn drain_wanted(recent: Option<&crate::gotrace::RecentSpans>) {
    match recent {
        Some(recent) => recent.drain_wanted().await,
        None => std::future::pending().await,
    }
}

/// What a session is told.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub families: FamilyOptions,
    /// Size of the shared ring buffer.
    pub ring_buffer_bytes: u32,
    /// Spans the export queue holds.
    pub export_queue: usize,
}

/// Why a session could not start or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("PID {pid} ({exe}) has nothing to trace: {reasons}")]
    NothingToTrace {
        pid: u32,
        exe: String,
        reasons: String,
    },
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("{0}")]
    Family(String),
    #[error("cannot watch PID {pid} for its exit")]
    ExitWatch {
        pid: u32,
        #[source]
        source: ExitWatchError,
    },
    #[error("cannot watch the ring buffer")]
    RingBuffer(#[source] std::io::Error),
    #[error("cannot handle {signal}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot let the launched program run")]
    Release(#[source] std::io::Error),
}

/// Why a process cannot be traced as a Go program.
#[derive(Debug, thiserror::Error)]
enum GoUnusable {
    #[error("PID {pid} ({exe}) cannot be traced")]
    Open {
        pid: u32,
        exe: String,
        #[source]
        source: BinaryError,
    },
    #[error(
        "PID {pid} ({exe}) was built with {version}: the agent needs Go 1.17 or newer (register-based calling convention)"
    )]
    TooOld {
        pid: u32,
        exe: String,
        version: String,
    },
}

/// Why the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Signal(&'static str),
    TargetExited,
}

/// How a session ended, and what it counted.
#[derive(Debug)]
pub struct Outcome {
    pub stop: Stop,
    pub counters: Counters,
}

/// A session, planned and ready to run.
pub struct Session {
    target: Target,
    process: ProcessInfo,
    families: Vec<Box<dyn Family>>,
    options: SessionOptions,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.target)
            .field(
                "families",
                &self.families.iter().map(|f| f.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Opens a target's executable as a Go binary: by default anew for each
/// session; a host-mode agent hands out one analysis per binary file.
pub type OpenBinary<'a> = &'a mut dyn FnMut(&Path) -> Result<Arc<GoBinary>, BinaryError>;

fn open_binary(path: &Path) -> Result<Arc<GoBinary>, BinaryError> {
    GoBinary::open(path).map(Arc::new)
}

/// Never a kind's family: the dispatch table's empty entry.
const NO_FAMILY: u8 = u8::MAX;

impl Session {
    /// Opens PID `pid` and plans every family for it. A target that exits
    /// meanwhile is said to have exited, whatever step noticed it.
    pub fn plan(pid: u32, options: SessionOptions) -> Result<Self, SessionError> {
        Self::plan_with(pid, options, &mut open_binary)
    }

    /// As [`Self::plan`], the executable opened by `open`.
    pub fn plan_with(
        pid: u32,
        options: SessionOptions,
        open: OpenBinary<'_>,
    ) -> Result<Self, SessionError> {
        Self::plan_for(pid, options, open).map_err(|err| match err {
            SessionError::Target(
                TargetError::NoSuchProcess { .. } | TargetError::Exited { .. },
            ) => err,
            _ if crate::target::has_exited(pid) => TargetError::Exited { pid }.into(),
            _ => err,
        })
    }

    fn plan_for(
        pid: u32,
        options: SessionOptions,
        open: OpenBinary<'_>,
    ) -> Result<Self, SessionError> {
        Self::plan_target_with(Target::open(pid)?, options, open)
    }

    /// Plans every family for `target` (see [`Target::launched`] for a
    /// process the agent started).
    pub fn plan_target(target: Target, options: SessionOptions) -> Result<Self, SessionError> {
        Self::plan_target_with(target, options, &mut open_binary)
    }

    fn plan_target_with(
        target: Target,
        options: SessionOptions,
        open: OpenBinary<'_>,
    ) -> Result<Self, SessionError> {
        let pid = target.pid;
        let exe = target.exe_in_target.display().to_string();
        let (namespaced_pid, container_id) = crate::resource::container_details(pid);
        let mut process = ProcessInfo {
            pid,
            executable_path: exe.clone(),
            runtime_version: None,
            namespaced_pid,
            container_id,
            kubernetes: crate::resource::kubernetes_pod(pid),
        };
        let go = open(&target.exe_path)
            .map_err(|source| GoUnusable::Open {
                pid,
                exe: exe.clone(),
                source,
            })
            .and_then(|bin| {
                let info = bin.build_info();
                process.runtime_version = Some(info.go_version_raw.clone());
                if info.go_version < MIN_GO {
                    return Err(GoUnusable::TooOld {
                        pid,
                        exe: exe.clone(),
                        version: info.go_version_raw.clone(),
                    });
                }
                Ok(bin)
            });
        let clock = WallClock::measure();
        let ctx = PlanContext {
            target: &target,
            go: go.as_deref().map_err(|e| e as &(dyn Error + Send + Sync)),
            options: &options.families,
            clock,
        };
        let mut families = Vec::new();
        let mut reasons = Vec::new();
        let mut traceable = false;
        for entry in FAMILIES {
            if !options.families.categories.any(entry.categories) {
                // Turned off: not even planned, so nothing is attached.
                reasons.push((
                    entry.name,
                    format!(
                        "{} is turned off (--instrument {})",
                        entry.name, options.families.categories
                    ),
                    log::Level::Debug,
                ));
                continue;
            }
            match (entry.plan)(&ctx) {
                Plan::Ready(family) => {
                    traceable |= !family.provides_goroutine_parents();
                    families.push(family);
                }
                Plan::Idle { family, why, level } => {
                    families.push(family);
                    reasons.push((entry.name, why, level));
                }
                Plan::Absent { why, level } => reasons.push((entry.name, why, level)),
                Plan::Nothing => {}
            }
        }
        if !traceable {
            let reasons: Vec<String> = reasons.into_iter().map(|(_, why, _)| why).collect();
            return Err(SessionError::NothingToTrace {
                pid,
                exe,
                reasons: reasons.join("; "),
            });
        }
        for (name, why, level) in reasons {
            log::log!(level, "no {name} probes: {why}");
        }
        // Goroutine creation is probed only for a family that uses it.
        let parents_wanted = families.iter().any(|f| f.wants_goroutine_parents());
        families.retain(|f| parents_wanted || !f.provides_goroutine_parents());
        Ok(Self {
            target,
            process,
            families,
            options,
        })
    }

    /// The process, for the resource.
    pub fn process(&self) -> &ProcessInfo {
        &self.process
    }

    /// Whether every family planned can go into an eBPF object other
    /// targets use too ([`Family::shares_object`]).
    pub fn shares_object(&self) -> bool {
        self.families.iter().all(|f| f.shares_object())
    }

    /// What the session was told.
    pub fn options(&self) -> &SessionOptions {
        &self.options
    }

    /// Loads, attaches and traces until SIGINT, SIGTERM or the target's
    /// exit; then detaches, drains, flushes and exports.
    pub async fn run(
        self,
        export: &ExportConfig,
        resource: &Resource,
    ) -> Result<Outcome, SessionError> {
        self.run_released(export, resource, || Ok(())).await
    }

    /// As [`Self::run`], calling `release` once every family has attached
    /// and before the event loop: launch mode lets the program it holds
    /// run then.
    pub async fn run_released(
        self,
        export: &ExportConfig,
        resource: &Resource,
        release: impl FnOnce() -> std::io::Result<()>,
    ) -> Result<Outcome, SessionError> {
        let Self {
            target,
            process,
            mut families,
            options,
        } = self;
        let mut load = LoadOptions {
            ring_buffer_bytes: options.ring_buffer_bytes,
            flight_ring_bytes: SMALLEST_RING,
        };
        for family in &families {
            family.configure_load(&mut load);
        }
        let mut probes = Probes::load(load)?;
        let attaching = crate::probes::attaching();
        for index in 0..families.len() {
            if let Err(err) = families[index].attach(&mut probes, &target) {
                // Undo what the families before it did.
                for family in &mut families[..index] {
                    family.stop(&mut probes);
                }
                // A target that exited meanwhile makes the kernel refuse
                // with "no such process": say what happened instead.
                if crate::target::has_exited(target.pid) {
                    return Err(TargetError::Exited { pid: target.pid }.into());
                }
                return Err(family_error(&err));
            }
        }
        drop(attaching);
        // From here on, every exit path stops the families (restoring what
        // they changed in the target) before returning.
        let result = match release() {
            Ok(()) => {
                trace(
                    &target,
                    &process,
                    &mut families,
                    &mut probes,
                    &options,
                    export,
                    resource,
                )
                .await
            }
            Err(err) => Err(SessionError::Release(err)),
        };
        if result.is_err() {
            for family in &mut families {
                family.stop(&mut probes);
            }
        }
        result
    }
}

fn family_error(err: &FamilyError) -> SessionError {
    SessionError::Family(error_chain(err.as_ref()))
}

/// Kind to family index, for every kind a family declared.
fn dispatch_table(families: &[Box<dyn Family>]) -> [u8; MAX_KIND as usize + 1] {
    let mut table = [NO_FAMILY; MAX_KIND as usize + 1];
    for (index, family) in families.iter().enumerate() {
        for &kind in family.kinds() {
            if let (Some(slot), Ok(index)) = (table.get_mut(kind as usize), u8::try_from(index)) {
                *slot = index;
            }
        }
    }
    table
}

/// The shared ring buffer and where its records go.
struct Records {
    reader: RingBufReader,
    /// Kind to family index.
    table: [u8; MAX_KIND as usize + 1],
    /// Records no family takes, or that their family cannot decode.
    bad: u64,
}

impl Records {
    /// Hands each waiting record to the family of its kind, in chunks of at
    /// most [`ringbuf::MAX_PER_DRAIN`] until a chunk comes back short or
    /// `max_chunks` were drained, yielding in between so that the export
    /// tasks take each chunk's spans before the next. Returns whether it
    /// stopped with records still waiting.
    async fn drain(
        &mut self,
        families: &mut [Box<dyn Family>],
        cx: &mut RecordContext<'_>,
        max_chunks: usize,
    ) -> bool {
        for _ in 0..max_chunks {
            if self.drain_chunk(families, cx) < ringbuf::MAX_PER_DRAIN {
                return false;
            }
            tokio::task::yield_now().await;
        }
        true
    }

    fn drain_chunk(
        &mut self,
        families: &mut [Box<dyn Family>],
        cx: &mut RecordContext<'_>,
    ) -> usize {
        let Self { reader, table, bad } = self;
        reader.drain(|bytes| {
            let result = record::kind(bytes).map_err(Into::into).and_then(|kind| {
                match table.get(kind as usize).copied() {
                    Some(index) if index != NO_FAMILY => {
                        families[usize::from(index)].on_record(bytes, cx)
                    }
                    _ => Err(record::RecordError::UnknownKind { kind }.into()),
                }
            });
            if let Err(err) = result {
                *bad += 1;
                log::debug!("bad record: {err}");
            }
        })
    }
}

async fn trace(
    target: &Target,
    process: &ProcessInfo,
    families: &mut [Box<dyn Family>],
    probes: &mut Probes,
    options: &SessionOptions,
    export: &ExportConfig,
    resource: &Resource,
) -> Result<Outcome, SessionError> {
    let pid = target.pid;
    let reader = RingBufReader::new(probes.take_ring_buffer(crate::probes::EVENTS_MAP)?)
        .map_err(SessionError::RingBuffer)?;
    let stats = probes.take_stats()?;
    let exit = ExitWatch::new(pid).map_err(|source| SessionError::ExitWatch { pid, source })?;
    let pipeline = Pipeline::start(
        export,
        resource,
        BatchConfig {
            // --export-queue, which reads OTEL_BSP_MAX_QUEUE_SIZE itself.
            queue_capacity: options.export_queue,
            ..BatchConfig::default().with(&export.batch)
        },
    )?;
    let sender = pipeline.sender();
    for family in families.iter_mut() {
        family
            .start(probes, &sender)
            .map_err(|err| family_error(&err))?;
    }
    let mut records = Records {
        reader,
        table: dispatch_table(families),
        bad: 0,
    };

    // Signals are handled from before the line that says the agent is
    // attached: a SIGINT sent on reading it must stop the session cleanly,
    // not kill the agent with the default action.
    let signal_stream = |kind, name| {
        signal(kind).map_err(|source| SessionError::Signal {
            signal: name,
            source,
        })
    };
    let mut sigint = signal_stream(SignalKind::interrupt(), "SIGINT")?;
    let mut sigterm = signal_stream(SignalKind::terminate(), "SIGTERM")?;
    let counts: Vec<String> = FAMILIES
        .iter()
        .map(|entry| format!("{} {} probes", probes.attached_by(entry.name), entry.name))
        .collect();
    log::info!(
        "attached to PID {pid} ({}, {}): {}",
        target.exe_in_target.display(),
        process.runtime_version.as_deref().unwrap_or("not Go"),
        counts.join(", "),
    );
    let sampler = options.families.sampler;
    if sampler != crate::spans::Sampler::default() {
        log::info!("sampling: {sampler}");
    }
    crate::metrics::publish_attached(crate::metrics::Attached::of(probes));

    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    let mut counts = SessionCounts::default();
    let mut reported_losses = 0;
    let mut last_report = Instant::now();
    let mut send = |span| sender.send_encoded(span);
    let mut goroutines = Goroutines::new(families.iter().any(|f| f.wants_goroutine_parents()));
    let mut cx = RecordContext {
        spans: &mut send,
        goroutines: &mut goroutines,
    };

    let recent = sender.recent();
    let stop = loop {
        tokio::select! {
            () = drain_wanted(recent.as_deref()) => {}
            _ = sigint.recv() => break Stop::Signal("SIGINT"),
            _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
            () = exit.exited() => break Stop::TargetExited,
            result = records.reader.readable() => {
                if let Err(err) = result {
                    log::warn!("ring buffer wait failed: {err}");
                }
            }
            _ = drain_tick.tick() => {}
            _ = housekeeping.tick() => {
                let now = WallClock::monotonic_now_ns();
                for family in families.iter_mut() {
                    family.housekeeping(probes, now, &mut cx);
                }
                cx.goroutines.expire(now);
                probes.flush_ebpf_logs();
                counts.kernel = stats.read();
                counts.export = pipeline.snapshot();
                counts.bad_records = records.bad;
                let counters = Counters::collect(&counts, families);
                crate::metrics::publish_counters(&counters, Some(sender.queue_fill()));
                let lost = counters.lost();
                if lost > reported_losses && last_report.elapsed() >= REPORT_INTERVAL {
                    log::warn!("losses so far: {}", counters.describe());
                    reported_losses = lost;
                    last_report = Instant::now();
                }
            }
        }
        // A bounded drain: under a load the agent cannot keep up with, the
        // loop must still come back to signals, the target's exit and
        // housekeeping. What is left is drained on the next turn, which the
        // backlog's wakeup or the drain tick brings at once.
        let drain_began = WallClock::monotonic_now_ns();
        if records.drain(families, &mut cx, CHUNKS_PER_TURN).await {
            drain_tick.reset_immediately();
        } else if let Some(recent) = &recent {
            recent.mark_drained(drain_began);
        }
    };

    match stop {
        Stop::Signal(name) => log::info!("{name}: detaching from PID {pid}"),
        Stop::TargetExited => log::info!("PID {pid} exited"),
    }
    // Tracing stops now, for every family at once; detaching takes longer
    // (the kernel removes uprobes one at a time) and the program runs on.
    let stopped_at = WallClock::monotonic_now_ns();
    for family in families.iter_mut() {
        family.stop_at(stopped_at);
    }
    // The kernel removes uprobes one at a time, up to a tenth of a second
    // each on a loaded host: they are removed on a thread of their own while
    // this one goes on draining and exporting. Removed here, they held the
    // whole runtime, and an export the collector had answered meanwhile
    // timed out and was counted failed.
    let detached = Rc::new(RefCell::new(Vec::new()));
    let sink = detached.clone();
    probes.detach_elsewhere(Box::new(move |link| sink.borrow_mut().push(link)));
    for family in families.iter_mut() {
        family.stop(probes);
    }
    probes.detach_all();
    let removed = remove_on_a_thread(std::mem::take(&mut *detached.borrow_mut()));
    tokio::pin!(removed);
    loop {
        tokio::select! {
            () = &mut removed => break,
            _ = drain_tick.tick() => {}
        }
        records.drain(families, &mut cx, CHUNKS_PER_TURN).await;
    }
    // The probes are detached: what the kernel wrote is finite.
    records.drain(families, &mut cx, usize::MAX).await;
    probes.flush_ebpf_logs();
    let now = WallClock::monotonic_now_ns();
    for family in families.iter_mut() {
        family.finish(now, &mut cx);
    }
    counts.kernel = stats.read();
    counts.bad_records = records.bad;
    drop(sender);
    counts.export = pipeline.shutdown(SHUTDOWN_BUDGET).await;
    Ok(Outcome {
        stop,
        counters: Counters::collect(&counts, families),
    })
}

/// Drops `links` (the kernel removes each uprobe as its link goes) on the
/// process's removal thread; resolves once they are all gone.
async fn remove_on_a_thread(links: Vec<DetachedLink>) {
    if links.is_empty() {
        return;
    }
    let (done, removed) = tokio::sync::oneshot::channel();
    crate::probes::remove_then(links, move || {
        let _ = done.send(());
    });
    // A dropped sender (a panic while removing) also means it is over.
    let _ = removed.await;
}
