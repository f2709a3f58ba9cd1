//! Host mode's shared eBPF object: one loaded object, one ring buffer and
//! one event loop, on a thread of their own, for every target whose
//! families can share it ([`Family::shares_object`]).
//!
//! Each target planned elsewhere ([`Session::plan_with`]) is handed over
//! as a [`Job`] and gets a *slot* of the object ([`Target::slot`]): its
//! probes' attach cookies carry it, so its records carry it in their
//! header, and every family's config array holds the target's offsets at
//! that index. The loop drains the one ring and routes each record by slot,
//! then by kind, to the target's own families, span tables, goroutine table
//! and export pipeline (with the target's own resource). A target that
//! exits is stopped and flushed alone; its uprobes are removed on the
//! process's removal thread (the kernel takes about 0.1 s for each, which
//! the other targets must not wait for, and a removal holds up any attach
//! meanwhile, so removals pause while a target attaches), and its slot is handed out again only once
//! they are all gone and what they wrote is drained: a record with a slot
//! always belongs to the target that slot names.
//!
//! Counts stay true per target: the records routed to it, its families'
//! counters, its own stream of the one pipeline (`SpanSender::for_resource`:
//! what it queued, and what each sink delivered or failed of it). The
//! kernel-side counters (`STATS`: ring buffer full, interleaved records,
//! each family's records lost) are the object's, so they are reported once
//! for the agent ([`SharedObject::stop`], [`Counters::of_object`]), never
//! copied into each target's.

use std::{cell::RefCell, rc::Rc, time::Instant};

use agent_common::{event::MAX_KIND, target::MAX_TARGETS};
use opentelemetry_sdk::Resource;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::{JoinHandle, LocalSet},
};

use super::{
    CHUNKS_PER_TURN, Counters, DRAIN_INTERVAL, HOUSEKEEPING_INTERVAL, NO_FAMILY, Outcome,
    REPORT_INTERVAL, SHUTDOWN_BUDGET, SMALLEST_RING, Session, SessionCounts, SessionError,
    SessionOptions, Stop, dispatch_table, family_error,
};
use crate::{
    clock::WallClock,
    export::{BatchConfig, ExportConfig, Pipeline, SpanSender, StreamCounts},
    family::{FAMILIES, Family, FamilyError, RecordContext},
    probes::{DetachedLink, KernelStats, LoadOptions, Probes, StatsReader},
    resource::ProcessInfo,
    ringbuf::{self, RingBufReader, record},
    spans::Goroutines,
    target::{ExitWatch, Target, TargetError},
};

/// Returns the heap's free memory to the kernel (glibc keeps the peak of
/// every thread's arena otherwise; musl's malloc returns memory as it goes).
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no preconditions; it only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often a stopped target's spans are looked at until the pipeline has
/// delivered or failed them all.
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Said in each target's losses: the kernel side's are not its own.
const OBJECT_COUNTS: &str = "records the kernel lost are the shared object's (in the totals)";

/// Lets a held target run, once its probes are attached.
pub type Release = Box<dyn FnOnce() -> std::io::Result<()> + Send>;
/// Told how a target's tracing ended (or why it never started).
pub type Done = Box<dyn FnOnce(Result<Outcome, SessionError>) + Send>;

/// One planned target for the shared object.
pub struct Job {
    pub session: Session,
    pub resource: Resource,
    pub release: Release,
    pub done: Done,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

enum Command {
    Trace(Box<Job>),
    Stop(&'static str),
}

/// A handle for handing targets to the shared object; cheap to clone.
#[derive(Clone, Debug)]
pub struct SharedHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl SharedHandle {
    /// Hands `job` over. When the object is stopping or gone, `job.done`
    /// hears that its target was not traced.
    pub fn trace(&self, job: Job) {
        if let Err(mpsc::error::SendError(Command::Trace(job))) =
            self.commands.send(Command::Trace(Box::new(job)))
        {
            let pid = job.session.target.pid;
            (job.done)(Err(TargetError::Exited { pid }.into()));
        }
    }
}

/// The shared object's thread.
#[derive(Debug)]
pub struct SharedObject {
    handle: SharedHandle,
    finished: oneshot::Receiver<Counters>,
}

impl SharedObject {
    /// Loads the object (every program verified) and starts its thread.
    /// Every target handed to it is exported to `export`.
    pub fn start(options: &SessionOptions, export: &ExportConfig) -> Result<Self, SessionError> {
        let load = LoadOptions {
            ring_buffer_bytes: options.ring_buffer_bytes,
            flight_ring_bytes: SMALLEST_RING,
        };
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (finished_tx, finished) = oneshot::channel();
        let (loaded_tx, loaded_rx) = std::sync::mpsc::channel();
        let options = options.clone();
        let export = export.clone();
        std::thread::Builder::new()
            .name("shared-object".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = loaded_tx.send(Err(SessionError::Family(format!(
                            "cannot start an event loop: {err}"
                        ))));
                        return;
                    }
                };
                let local = LocalSet::new();
                let counters = local.block_on(&runtime, async move {
                    let hub = match Hub::new(load, options, export) {
                        Ok(hub) => {
                            let _ = loaded_tx.send(Ok(()));
                            hub
                        }
                        Err(err) => {
                            let _ = loaded_tx.send(Err(err));
                            return None;
                        }
                    };
                    Some(hub.run(commands_rx).await)
                });
                if let Some(counters) = counters {
                    let _ = finished_tx.send(counters);
                }
            })
            .map_err(|err| SessionError::Family(format!("cannot start a thread: {err}")))?;
        match loaded_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                handle: SharedHandle { commands },
                finished,
            }),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(SessionError::Family(
                "the shared eBPF object's thread ended".to_owned(),
            )),
        }
    }

    /// A handle for handing it targets.
    pub fn handle(&self) -> SharedHandle {
        self.handle.clone()
    }

    /// Stops tracing every target (each one's `done` hears how it ended)
    /// and returns the object's own counters once the last is flushed.
    pub async fn stop(self, signal: &'static str) -> Option<Counters> {
        let _ = self.handle.commands.send(Command::Stop(signal));
        drop(self.handle);
        self.finished.await.ok()
    }
}

/// The uprobes [`Probes`] took out since the last look: a stopped target's,
/// removed together on the process's removal thread.
type Detached = Rc<RefCell<Vec<DetachedLink>>>;

/// (slot, generation) of a target, both ends.
type SlotChannel = (
    mpsc::UnboundedSender<(u32, u64)>,
    mpsc::UnboundedReceiver<(u32, u64)>,
);

/// A slot of the object.
enum Slot {
    Free,
    /// A target traced, or stopping.
    Busy(Box<Traced>),
    /// A target finished (or one that never started): free once its
    /// uprobes are gone. What they still write is after its stop.
    Quarantine(u64),
}

/// One target of the object.
struct Traced {
    generation: u64,
    target: Target,
    process: ProcessInfo,
    families: Vec<Box<dyn Family>>,
    table: [u8; MAX_KIND as usize + 1],
    /// Its spans go into the shared pipeline under its own resource.
    sender: SpanSender,
    counts: StreamCounts,
    goroutines: Goroutines,
    /// Records routed to it.
    records: u64,
    /// Records of its slot no family of it took or could decode.
    bad: u64,
    /// Why it is stopping, once it is.
    stop: Option<Stop>,
    exit_task: JoinHandle<()>,
    done: Option<Done>,
    reported_losses: u64,
    last_report: Instant,
}

impl Traced {
    fn on_record(&mut self, kind: u32, bytes: &[u8]) {
        let Self {
            families,
            table,
            sender,
            goroutines,
            records,
            bad,
            ..
        } = self;
        *records += 1;
        let mut send = |span| sender.send_encoded(span);
        let mut cx = RecordContext {
            spans: &mut send,
            goroutines,
        };
        let result = match table.get(kind as usize).copied() {
            Some(index) if index != NO_FAMILY => {
                families[usize::from(index)].on_record(bytes, &mut cx)
            }
            _ => Err(record::RecordError::UnknownKind { kind }.into()),
        };
        if let Err(err) = result {
            *bad += 1;
            log::debug!("PID {}: bad record: {err}", self.target.pid);
        }
    }

    /// Its counters now: the records routed to it stand for the kernel's
    /// (the object's counters are not its own).
    fn counters(&self) -> Counters {
        Counters::collect(
            &SessionCounts {
                kernel: KernelStats {
                    events_written: self.records,
                    ..KernelStats::default()
                },
                export: self.counts.snapshot(),
                bad_records: self.bad,
            },
            &self.families,
        )
    }

    fn housekeeping(&mut self, probes: &mut Probes, now: u64) {
        let Self {
            families,
            sender,
            goroutines,
            ..
        } = self;
        let mut send = |span| sender.send_encoded(span);
        let mut cx = RecordContext {
            spans: &mut send,
            goroutines,
        };
        for family in families.iter_mut() {
            family.housekeeping(probes, now, &mut cx);
        }
        cx.goroutines.expire(now);
        let counters = self.counters();
        let lost = counters.lost();
        if lost > self.reported_losses && self.last_report.elapsed() >= REPORT_INTERVAL {
            log::warn!(
                "PID {}: losses so far: {}",
                self.target.pid,
                counters.describe()
            );
            self.reported_losses = lost;
            self.last_report = Instant::now();
        }
    }
}

/// The object, its ring and its targets, on the object's thread.
struct Hub {
    probes: Probes,
    reader: RingBufReader,
    stats: StatsReader,
    slots: Vec<Slot>,
    next_generation: u64,
    /// Records whose slot names no target, or unreadable.
    unrouted: u64,
    /// Records of a finished target's slot while its uprobes were being
    /// removed: written after its tracing stopped, not lost.
    after_stop: u64,
    /// The one export pipeline, and a sender each target's derives from.
    pipeline: Pipeline,
    sender: SpanSender,
    /// Set once the pipeline has shut down: what a target's stream still
    /// lacks then is lost.
    pipeline_closed: watch::Sender<bool>,
    exits: SlotChannel,
    /// Stopped targets to finish: (slot, generation).
    stopped: SlotChannel,
    /// Stopped targets whose uprobes are all gone: (slot, generation).
    reaped: SlotChannel,
    detached: Detached,
    /// Targets being flushed and exported.
    flushing: Vec<JoinHandle<()>>,
    /// One finished family of each name, for the part of its counters
    /// that is the object's ([`Counters::of_object`]).
    finished_families: Rc<RefCell<Vec<Box<dyn Family>>>>,
}

impl Hub {
    fn new(
        load: LoadOptions,
        options: SessionOptions,
        export: ExportConfig,
    ) -> Result<Self, SessionError> {
        let mut probes = Probes::load(load)?;
        // Loading parsed the kernel's BTF and the object: a peak of some
        // 30 MB that the heap would otherwise keep.
        trim_heap();
        let reader = RingBufReader::new(probes.take_ring_buffer(crate::probes::EVENTS_MAP)?)
            .map_err(SessionError::RingBuffer)?;
        let stats = probes.take_stats()?;
        let pipeline = Pipeline::start(
            &export,
            &Resource::builder_empty().build(),
            BatchConfig {
                queue_capacity: options.export_queue,
                ..BatchConfig::default().with(&export.batch)
            },
        )?;
        let sender = pipeline.sender();
        let detached = Detached::default();
        let sink = detached.clone();
        probes.detach_elsewhere(Box::new(move |link| sink.borrow_mut().push(link)));
        Ok(Self {
            probes,
            reader,
            stats,
            slots: (0..MAX_TARGETS).map(|_| Slot::Free).collect(),
            next_generation: 0,
            unrouted: 0,
            after_stop: 0,
            pipeline,
            sender,
            pipeline_closed: watch::channel(false).0,
            exits: mpsc::unbounded_channel(),
            stopped: mpsc::unbounded_channel(),
            reaped: mpsc::unbounded_channel(),
            detached,
            flushing: Vec::new(),
            finished_families: Rc::default(),
        })
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) -> Counters {
        let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        let mut stopping = None;
        loop {
            // Every target finished: its uprobes may still be going (about
            // 0.1 s each, one at a time in the kernel: minutes for many
            // targets, longer than a service manager waits), but all that
            // it traced is out.
            if let Some(signal) = stopping
                && self
                    .slots
                    .iter()
                    .all(|s| matches!(s, Slot::Free | Slot::Quarantine(_)))
            {
                log::debug!("shared object: every target stopped after {signal}");
                break;
            }
            tokio::select! {
                command = commands.recv(), if stopping.is_none() => match command {
                    Some(Command::Trace(job)) => self.start(*job),
                    Some(Command::Stop(signal)) => {
                        stopping = Some(signal);
                        self.stop_all(signal);
                    }
                    None => {
                        stopping = Some("the agent's exit");
                        self.stop_all("the agent's exit");
                    }
                },
                Some((slot, generation)) = self.exits.1.recv() => {
                    self.stop_target(slot, generation, Stop::TargetExited);
                }
                Some((slot, generation)) = self.stopped.1.recv() => {
                    self.finish(slot, generation).await;
                }
                Some((slot, generation)) = self.reaped.1.recv() => {
                    self.detached(slot, generation).await;
                }
                result = self.reader.readable() => {
                    if let Err(err) = result {
                        log::warn!("ring buffer wait failed: {err}");
                    }
                }
                _ = drain_tick.tick() => {}
                _ = housekeeping.tick() => self.housekeeping(),
            }
            if self.drain(CHUNKS_PER_TURN).await {
                drain_tick.reset_immediately();
            }
        }
        // Jobs sent meanwhile are told they were not traced.
        commands.close();
        while let Some(command) = commands.recv().await {
            if let Command::Trace(job) = command {
                let pid = job.session.target.pid;
                (job.done)(Err(TargetError::Exited { pid }.into()));
            }
        }
        self.probes.flush_ebpf_logs();
        let kernel = self.stats.read();
        // Every target's spans are in the queue: the pipeline gets its
        // budget, then what a target's stream still lacks is lost.
        let Self {
            pipeline,
            sender,
            pipeline_closed,
            flushing,
            unrouted,
            after_stop,
            finished_families,
            ..
        } = self;
        drop(sender);
        pipeline.shutdown(SHUTDOWN_BUDGET).await;
        pipeline_closed.send_replace(true);
        for task in flushing {
            let _ = task.await;
        }
        // The object's own counters, once: the kernel's, the records no
        // target took, and what the kernel lost of each family's records.
        let families = finished_families.borrow();
        let families: Vec<&dyn Family> = families.iter().map(AsRef::as_ref).collect();
        Counters::of_object(&kernel, unrouted, after_stop, &families)
    }

    /// Routes waiting records, in chunks, as [`super::Records::drain`].
    async fn drain(&mut self, max_chunks: usize) -> bool {
        for _ in 0..max_chunks {
            if self.drain_chunk() < ringbuf::MAX_PER_DRAIN {
                return false;
            }
            tokio::task::yield_now().await;
        }
        true
    }

    fn drain_chunk(&mut self) -> usize {
        let Self {
            reader,
            slots,
            unrouted,
            after_stop,
            ..
        } = self;
        reader.drain(|bytes| match record::kind_and_target(bytes) {
            Ok((kind, slot)) => match slots.get_mut(slot as usize) {
                Some(Slot::Busy(traced)) => traced.on_record(kind, bytes),
                Some(Slot::Quarantine(_)) => *after_stop += 1,
                _ => {
                    *unrouted += 1;
                    log::debug!("a record of kind {kind} for slot {slot}, which has no target");
                }
            },
            Err(err) => {
                *unrouted += 1;
                log::debug!("bad record: {err}");
            }
        })
    }

    fn housekeeping(&mut self) {
        let now = WallClock::monotonic_now_ns();
        let Self { slots, probes, .. } = self;
        for slot in slots.iter_mut() {
            if let Slot::Busy(traced) = slot
                && traced.stop.is_none()
            {
                traced.housekeeping(probes, now);
            }
        }
        self.probes.flush_ebpf_logs();
    }

    /// Attaches a planned target in a free slot and starts exporting its
    /// spans; its `done` hears why when it cannot.
    fn start(&mut self, job: Job) {
        let Job {
            session,
            resource,
            release,
            done,
        } = job;
        let pid = session.target.pid;
        let Some(slot) = self.slots.iter().position(|s| matches!(s, Slot::Free)) else {
            done(Err(SessionError::Family(format!(
                "PID {pid}: the shared eBPF object traces {MAX_TARGETS} processes at most, all in use"
            ))));
            return;
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        let Session {
            mut target,
            process,
            mut families,
            options: _,
        } = session;
        target.slot = slot as u32;
        target.slots = MAX_TARGETS;
        let before: Vec<usize> = FAMILIES
            .iter()
            .map(|entry| self.probes.attached_by(entry.name))
            .collect();
        let sender = self.sender.for_resource(&resource);
        match self.attach(&target, &mut families, &sender, release) {
            Ok(exit) => {
                let exits = self.exits.0.clone();
                let exit_task = tokio::task::spawn_local(async move {
                    exit.exited().await;
                    let _ = exits.send((slot as u32, generation));
                });
                let traced = Traced {
                    generation,
                    table: dispatch_table(&families),
                    goroutines: Goroutines::new(
                        families.iter().any(|f| f.wants_goroutine_parents()),
                    ),
                    target,
                    process,
                    families,
                    counts: sender.counts(),
                    sender,
                    records: 0,
                    bad: 0,
                    stop: None,
                    exit_task,
                    done: Some(done),
                    reported_losses: 0,
                    last_report: Instant::now(),
                };
                let counts: Vec<String> = FAMILIES
                    .iter()
                    .zip(before)
                    .map(|(entry, before)| {
                        let now = self.probes.attached_by(entry.name);
                        format!("{} {} probes", now.saturating_sub(before), entry.name)
                    })
                    .collect();
                log::info!(
                    "attached to PID {pid} ({}, {}): {} (slot {slot} of the shared object)",
                    traced.target.exe_in_target.display(),
                    traced
                        .process
                        .runtime_version
                        .as_deref()
                        .unwrap_or("not Go"),
                    counts.join(", "),
                );
                self.slots[slot] = Slot::Busy(Box::new(traced));
                // Planning analysed its binary on a thread now gone.
                trim_heap();
            }
            Err(err) => {
                // What was attached goes; the slot waits for it.
                for family in &mut families {
                    family.stop(&mut self.probes);
                }
                self.quarantine(slot, generation);
                let err = if crate::target::has_exited(pid) {
                    TargetError::Exited { pid }.into()
                } else {
                    err
                };
                done(Err(err));
            }
        }
    }

    fn attach(
        &mut self,
        target: &Target,
        families: &mut [Box<dyn Family>],
        sender: &SpanSender,
        release: Release,
    ) -> Result<ExitWatch, SessionError> {
        let pid = target.pid;
        let _attaching = crate::probes::attaching();
        for family in families.iter_mut() {
            family
                .attach(&mut self.probes, target)
                .map_err(|err: FamilyError| family_error(&err))?;
        }
        for family in families.iter_mut() {
            family
                .start(&mut self.probes, sender)
                .map_err(|err| family_error(&err))?;
        }
        let exit = ExitWatch::new(pid).map_err(|source| SessionError::ExitWatch { pid, source })?;
        release().map_err(SessionError::Release)?;
        Ok(exit)
    }

    /// The uprobes attached in `slot` are gone once the thread removing
    /// them is done.
    fn quarantine(&mut self, slot: usize, generation: u64) {
        self.slots[slot] = Slot::Quarantine(generation);
        self.remove_detached(slot as u32, generation);
    }

    /// Removes the uprobes taken out since the last call on the process's
    /// removal thread (the kernel takes about 0.1 s for each; they wait
    /// while a target attaches, `probes::remove_then`), then reports
    /// `(slot, generation)` as detached.
    fn remove_detached(&mut self, slot: u32, generation: u64) {
        let links = std::mem::take(&mut *self.detached.borrow_mut());
        let reaped = self.reaped.0.clone();
        let count = links.len();
        let queued = Instant::now();
        crate::probes::remove_then(links, move || {
            if count > 0 {
                log::info!(
                    "slot {slot} of the shared object free again: {count} uprobes removed in {:.1} s",
                    queued.elapsed().as_secs_f64()
                );
            }
            let _ = reaped.send((slot, generation));
        });
    }

    fn stop_all(&mut self, signal: &'static str) {
        for slot in 0..self.slots.len() {
            if let Slot::Busy(traced) = &self.slots[slot] {
                let generation = traced.generation;
                self.stop_target(slot as u32, generation, Stop::Signal(signal));
            }
        }
    }

    /// Tracing of the target in `slot` stops now; its uprobes go to the
    /// thread that removes them, and it is finished at once ([`Self::finish`]),
    /// not once they are gone.
    fn stop_target(&mut self, slot: u32, generation: u64, stop: Stop) {
        let Some(Slot::Busy(traced)) = self.slots.get_mut(slot as usize) else {
            return;
        };
        if traced.generation != generation || traced.stop.is_some() {
            return;
        }
        let pid = traced.target.pid;
        match stop {
            Stop::Signal(name) => log::info!("{name}: detaching from PID {pid}"),
            Stop::TargetExited => log::info!("PID {pid} exited"),
        }
        traced.stop = Some(stop);
        traced.exit_task.abort();
        let stopped_at = WallClock::monotonic_now_ns();
        for family in traced.families.iter_mut() {
            family.stop_at(stopped_at);
        }
        for family in traced.families.iter_mut() {
            family.stop(&mut self.probes);
        }
        self.remove_detached(slot, generation);
        let _ = self.stopped.0.send((slot, generation));
    }

    /// Every uprobe of the target in `slot` is gone: the slot is free (a
    /// target not finished yet is finished first).
    async fn detached(&mut self, slot: u32, generation: u64) {
        self.finish(slot, generation).await;
        let index = slot as usize;
        if matches!(self.slots.get(index), Some(Slot::Quarantine(g)) if *g == generation) {
            self.slots[index] = Slot::Free;
        }
    }

    /// The target in `slot` has stopped: what it wrote until then is
    /// drained, its open spans are flushed, and its slot is quarantined
    /// until its uprobes are gone. It is reported once the pipeline has
    /// delivered or failed each of its spans (or has shut down: then what
    /// is missing is lost).
    async fn finish(&mut self, slot: u32, generation: u64) {
        let index = slot as usize;
        match self.slots.get(index) {
            Some(Slot::Busy(traced)) if traced.generation == generation => {}
            _ => return,
        }
        self.drain(usize::MAX).await;
        let Slot::Busy(traced) =
            std::mem::replace(&mut self.slots[index], Slot::Quarantine(generation))
        else {
            return;
        };
        let Traced {
            mut families,
            sender,
            counts,
            mut goroutines,
            records,
            bad,
            stop,
            done,
            ..
        } = *traced;
        let now = WallClock::monotonic_now_ns();
        {
            let mut send = |span| sender.send_encoded(span);
            let mut cx = RecordContext {
                spans: &mut send,
                goroutines: &mut goroutines,
            };
            for family in families.iter_mut() {
                family.finish(now, &mut cx);
            }
        }
        drop(sender);
        let stop = stop.unwrap_or(Stop::TargetExited);
        self.flushing.retain(|task| !task.is_finished());
        let mut closed = self.pipeline_closed.subscribe();
        let finished_families = self.finished_families.clone();
        self.flushing.push(tokio::task::spawn_local(async move {
            while !counts.settled() {
                if *closed.borrow_and_update() {
                    counts.abandon_unsettled();
                    break;
                }
                tokio::select! {
                    _ = closed.changed() => {}
                    () = tokio::time::sleep(SETTLE_POLL) => {}
                }
            }
            let export = counts.snapshot();
            let counters = Counters::collect(
                &SessionCounts {
                    kernel: KernelStats {
                        events_written: records,
                        ..KernelStats::default()
                    },
                    export,
                    bad_records: bad,
                },
                &families,
            )
            .with_note(OBJECT_COUNTS.to_owned());
            let mut kept = finished_families.borrow_mut();
            for family in families {
                if !kept.iter().any(|f| f.name() == family.name()) {
                    kept.push(family);
                }
            }
            drop(kept);
            if let Some(done) = done {
                done(Ok(Outcome { stop, counters }));
            }
        }));
    }
}
