//! The export pipeline: a bounded queue off the event path, batching, and
//! one or more sinks (OTLP over gRPC or HTTP, the console, a JSONL file).
//!
//! Producers call [`SpanSender::send`], which never blocks: when the queue is
//! full the span is dropped and counted. One task batches the queue and hands
//! each batch to every sink; OTLP exports that fail are retried with backoff
//! while the queue keeps absorbing (and, when full, counting) new spans.

pub mod config;
mod console;
mod jsonl;
mod otlp;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry_sdk::{
    Resource,
    trace::{SpanData, SpanExporter as _},
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

pub use config::{ConfigError, ExportConfig, OtlpConfig, OtlpProtocol, Output};
pub use console::ConsoleExporter;
pub use jsonl::{JsonlExporter, spans_to_json_line};

/// Counters of the pipeline, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans accepted into the queue.
    pub queued: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
}

impl ExportStats {
    /// A point-in-time copy.
    pub fn snapshot(&self) -> ExportSnapshot {
        ExportSnapshot {
            queued: self.queued.load(Ordering::Relaxed),
            exported: 0,
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            dropped_export_failed: 0,
        }
    }
}

/// Plain copy of [`ExportStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportSnapshot {
    /// Spans accepted into the queue.
    pub queued: u64,
    /// Spans every sink delivered.
    pub exported: u64,
    /// Spans dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Spans the worst sink failed to deliver (after retries, or because its
    /// own queue was full).
    pub dropped_export_failed: u64,
}

impl ExportSnapshot {
    /// Every span lost on the export side.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full + self.dropped_export_failed
    }
}

/// Hands spans to the pipeline; cheap to clone.
#[derive(Clone, Debug)]
pub struct SpanSender {
    tx: mpsc::Sender<SpanData>,
    stats: Arc<ExportStats>,
}

impl SpanSender {
    /// Queues a span; never blocks. A full queue drops the span and counts it.
    pub fn send(&self, span: SpanData) {
        match self.tx.try_send(span) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One destination of spans.
#[derive(Debug)]
enum Sink {
    Otlp {
        exporter: Box<opentelemetry_otlp::SpanExporter>,
        endpoint: String,
    },
    Console(ConsoleExporter),
    Jsonl(JsonlExporter),
}

impl Sink {
    fn name(&self) -> String {
        match self {
            Self::Otlp { endpoint, .. } => format!("OTLP {endpoint}"),
            Self::Console(_) => "console".to_owned(),
            Self::Jsonl(j) => format!("JSONL {}", j.describe()),
        }
    }

    async fn export(&self, batch: Vec<SpanData>) -> Result<(), String> {
        let result = match self {
            Self::Otlp { exporter, .. } => exporter.export(batch).await,
            Self::Console(c) => c.export(batch).await,
            Self::Jsonl(j) => j.export(batch).await,
        };
        result.map_err(|e| e.to_string())
    }

    fn shutdown(&mut self) {
        let result = match self {
            Self::Otlp { exporter, .. } => {
                exporter.shutdown_with_timeout(Duration::from_millis(200))
            }
            Self::Console(c) => c.shutdown(),
            Self::Jsonl(j) => j.shutdown(),
        };
        if let Err(err) = result {
            log::warn!("closing {}: {err}", self.name());
        }
    }
}

/// Batching limits.
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    /// Spans the queue holds before dropping.
    pub queue_capacity: usize,
    /// Spans per export call.
    pub max_batch: usize,
    /// How long a span may wait for its batch to fill.
    pub max_delay: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 8192,
            max_batch: 512,
            max_delay: Duration::from_millis(200),
        }
    }
}

/// Failure to start the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot create the OTLP exporter for {endpoint}")]
    Otlp {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("cannot open the JSONL output")]
    Jsonl(#[source] std::io::Error),
}

/// A running pipeline.
#[derive(Debug)]
pub struct Pipeline {
    sender: SpanSender,
    stats: Arc<ExportStats>,
    sink_stats: Vec<Arc<SinkStats>>,
    stopping: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What one sink delivered and lost.
#[derive(Debug, Default)]
struct SinkStats {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl Pipeline {
    /// Starts the pipeline on the current tokio runtime: one batching task,
    /// and one task per sink with its own bounded queue of batches, so a slow
    /// or dead collector holds back no other output.
    pub fn start(
        config: &ExportConfig,
        resource: &Resource,
        batch: BatchConfig,
    ) -> Result<Self, PipelineError> {
        let mut sinks = Vec::new();
        for output in &config.outputs {
            let mut sink = match output {
                Output::Otlp(otlp) => Sink::Otlp {
                    exporter: otlp::build(otlp).map(Box::new).map_err(|source| {
                        PipelineError::Otlp {
                            endpoint: otlp.endpoint.clone(),
                            source,
                        }
                    })?,
                    endpoint: otlp.endpoint.clone(),
                },
                Output::Console => Sink::Console(ConsoleExporter::stdout()),
                Output::Jsonl(path) => {
                    Sink::Jsonl(JsonlExporter::open(path.as_deref()).map_err(PipelineError::Jsonl)?)
                }
            };
            match &mut sink {
                Sink::Otlp { exporter, .. } => exporter.set_resource(resource),
                Sink::Console(c) => c.set_resource(resource),
                Sink::Jsonl(j) => j.set_resource(resource),
            }
            sinks.push(sink);
        }
        let stats = Arc::new(ExportStats::default());
        let (stopping, stop_rx) = watch::channel(false);
        let (tx, rx) = mpsc::channel(batch.queue_capacity.max(1));
        let batches_per_sink = (batch.queue_capacity / batch.max_batch.max(1)).max(2);
        let mut tasks = Vec::new();
        let mut sink_txs = Vec::new();
        let mut sink_stats = Vec::new();
        for sink in sinks {
            let (sink_tx, sink_rx) = mpsc::channel(batches_per_sink);
            let counters = Arc::new(SinkStats::default());
            tasks.push(tokio::spawn(run_sink(sink, sink_rx, counters.clone())));
            sink_txs.push((sink_tx, counters.clone()));
            sink_stats.push(counters);
        }
        tasks.insert(0, tokio::spawn(run_batcher(rx, sink_txs, batch, stop_rx)));
        Ok(Self {
            sender: SpanSender {
                tx,
                stats: stats.clone(),
            },
            stats,
            sink_stats,
            stopping,
            tasks,
        })
    }

    /// A handle for producers.
    pub fn sender(&self) -> SpanSender {
        self.sender.clone()
    }

    /// Current counters: `exported` is what every sink delivered,
    /// `dropped_export_failed` what the worst sink lost.
    pub fn snapshot(&self) -> ExportSnapshot {
        snapshot(&self.stats, &self.sink_stats)
    }

    /// Flushes what is queued and stops, within `deadline`. Every
    /// [`SpanSender`] must have been dropped for the queue to end; spans that
    /// cannot be exported in time are counted as dropped.
    pub async fn shutdown(self, deadline: Duration) -> ExportSnapshot {
        let Self {
            sender,
            stats,
            sink_stats,
            stopping,
            tasks,
        } = self;
        drop(sender);
        let deadline = Instant::now() + deadline;
        // Near the deadline, stop batching: the last exports get the
        // remaining time, then are abandoned.
        let soft = deadline - Duration::from_millis(300).min(deadline - Instant::now());
        let mut all = futures_join(tasks);
        tokio::select! {
            () = &mut all.wait => {}
            () = tokio::time::sleep_until(soft) => {
                let _ = stopping.send(true);
                if tokio::time::timeout_at(deadline, &mut all.wait).await.is_err() {
                    all.abort();
                    log::warn!("export did not finish in time; unexported spans are counted as dropped");
                }
            }
        }
        let mut snapshot = snapshot(&stats, &sink_stats);
        // Whatever was queued and neither exported nor dropped is lost now.
        let accounted = snapshot.exported + snapshot.dropped_export_failed;
        if snapshot.queued > accounted {
            snapshot.dropped_export_failed += snapshot.queued - accounted;
        }
        snapshot
    }
}

fn snapshot(stats: &ExportStats, sinks: &[Arc<SinkStats>]) -> ExportSnapshot {
    let mut snapshot = stats.snapshot();
    snapshot.exported = sinks
        .iter()
        .map(|s| s.delivered.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0);
    snapshot.dropped_export_failed = sinks
        .iter()
        .map(|s| s.failed.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    snapshot
}

/// Waits for every task; can abort the rest.
struct JoinAll {
    handles: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    wait: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl JoinAll {
    fn abort(&self) {
        if let Ok(handles) = self.handles.lock() {
            for h in handles.iter() {
                h.abort();
            }
        }
    }
}

fn futures_join(tasks: Vec<JoinHandle<()>>) -> JoinAll {
    let handles = Arc::new(std::sync::Mutex::new(
        tasks.iter().map(JoinHandle::abort_handle).collect(),
    ));
    JoinAll {
        handles,
        wait: Box::pin(async move {
            for task in tasks {
                let _ = task.await;
            }
        }),
    }
}

/// Collects spans into batches and hands each batch to every sink's queue.
async fn run_batcher(
    mut rx: mpsc::Receiver<SpanData>,
    sinks: Vec<(mpsc::Sender<Vec<SpanData>>, Arc<SinkStats>)>,
    config: BatchConfig,
    stopping: watch::Receiver<bool>,
) {
    loop {
        let mut batch = Vec::with_capacity(config.max_batch);
        if rx.recv_many(&mut batch, config.max_batch).await == 0 {
            break;
        }
        let deadline = Instant::now() + config.max_delay;
        let mut closed = false;
        while batch.len() < config.max_batch && !*stopping.borrow() {
            let room = config.max_batch - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let len = batch.len() as u64;
        let mut batch = Some(batch);
        for (i, (tx, counters)) in sinks.iter().enumerate() {
            let copy = if i + 1 == sinks.len() {
                batch.take().unwrap_or_default()
            } else {
                batch.clone().unwrap_or_default()
            };
            if tx.try_send(copy).is_err() {
                counters.failed.fetch_add(len, Ordering::Relaxed);
            }
        }
        if closed {
            break;
        }
    }
}

/// Exports the batches of one sink. OTLP exporters retry inside (see
/// `otlp::retry_policy`); what still fails is counted and logged.
async fn run_sink(mut sink: Sink, mut rx: mpsc::Receiver<Vec<SpanData>>, counters: Arc<SinkStats>) {
    let mut failing = false;
    while let Some(batch) = rx.recv().await {
        let len = batch.len() as u64;
        match sink.export(batch).await {
            Ok(()) => {
                counters.delivered.fetch_add(len, Ordering::Relaxed);
                if failing {
                    log::info!("export to {} recovered", sink.name());
                    failing = false;
                }
            }
            Err(err) => {
                counters.failed.fetch_add(len, Ordering::Relaxed);
                if !failing {
                    log::warn!(
                        "export to {} failed, dropping spans until it recovers: {err}",
                        sink.name()
                    );
                    failing = true;
                } else {
                    log::debug!(
                        "dropped {len} spans that {} did not take: {err}",
                        sink.name()
                    );
                }
            }
        }
    }
    sink.shutdown();
}

impl SpanSender {
    /// Queues a span, waiting for room: for producers that are not real time
    /// (decoding a file), where dropping would lose what a wait can keep.
    /// Must not be called from async code.
    pub fn send_blocking(&self, span: SpanData) {
        match self.tx.blocking_send(span) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
