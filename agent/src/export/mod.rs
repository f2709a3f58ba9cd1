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
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry_sdk::{
    Resource,
    trace::{SpanData, SpanExporter as _},
};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

pub use config::{ConfigError, ExportConfig, OtlpConfig, OtlpProtocol, Output};
pub use console::ConsoleExporter;
pub use jsonl::{JsonlExporter, spans_to_json_line};

/// Counters of the pipeline, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans accepted into the queue.
    pub queued: AtomicU64,
    /// Spans every sink accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Spans dropped because a sink failed to take them after retries.
    pub dropped_export_failed: AtomicU64,
    /// Failed export attempts (each retry counts).
    pub export_errors: AtomicU64,
}

impl ExportStats {
    /// A point-in-time copy.
    pub fn snapshot(&self) -> ExportSnapshot {
        ExportSnapshot {
            queued: self.queued.load(Ordering::Relaxed),
            exported: self.exported.load(Ordering::Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            dropped_export_failed: self.dropped_export_failed.load(Ordering::Relaxed),
            export_errors: self.export_errors.load(Ordering::Relaxed),
        }
    }
}

/// Plain copy of [`ExportStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportSnapshot {
    pub queued: u64,
    pub exported: u64,
    pub dropped_queue_full: u64,
    pub dropped_export_failed: u64,
    pub export_errors: u64,
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
                self.stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One destination of spans.
#[derive(Debug)]
enum Sink {
    Otlp {
        exporter: opentelemetry_otlp::SpanExporter,
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

    fn retries(&self) -> bool {
        matches!(self, Self::Otlp { .. })
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
            Self::Otlp { exporter, .. } => exporter.shutdown_with_timeout(Duration::from_millis(200)),
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
    /// How long one batch is retried before it is dropped.
    pub retry_for: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 8192,
            max_batch: 512,
            max_delay: Duration::from_millis(200),
            retry_for: Duration::from_secs(30),
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
    stopping: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Pipeline {
    /// Starts the pipeline on the current tokio runtime.
    pub fn start(
        config: &ExportConfig,
        resource: &Resource,
        batch: BatchConfig,
    ) -> Result<Self, PipelineError> {
        let mut sinks = Vec::new();
        for output in &config.outputs {
            let mut sink = match output {
                Output::Otlp(otlp) => Sink::Otlp {
                    exporter: otlp::build(otlp).map_err(|source| PipelineError::Otlp {
                        endpoint: otlp.endpoint.clone(),
                        source,
                    })?,
                    endpoint: otlp.endpoint.clone(),
                },
                Output::Console => Sink::Console(ConsoleExporter::stdout()),
                Output::Jsonl(path) => Sink::Jsonl(
                    JsonlExporter::open(path.as_deref()).map_err(PipelineError::Jsonl)?,
                ),
            };
            match &mut sink {
                Sink::Otlp { exporter, .. } => exporter.set_resource(resource),
                Sink::Console(c) => c.set_resource(resource),
                Sink::Jsonl(j) => j.set_resource(resource),
            }
            sinks.push(sink);
        }
        let stats = Arc::new(ExportStats::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(batch.queue_capacity.max(1));
        let task = tokio::spawn(run(rx, sinks, batch, stats.clone(), stopping.clone()));
        Ok(Self {
            sender: SpanSender {
                tx,
                stats: stats.clone(),
            },
            stats,
            stopping,
            task,
        })
    }

    /// A handle for producers.
    pub fn sender(&self) -> SpanSender {
        self.sender.clone()
    }

    /// The pipeline's counters.
    pub fn stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }

    /// Flushes what is queued and stops, within `deadline`. Every
    /// [`SpanSender`] must have been dropped for the queue to end; spans that
    /// cannot be exported in time are counted as dropped.
    pub async fn shutdown(self, deadline: Duration) -> ExportSnapshot {
        let Self {
            sender,
            stats,
            stopping,
            mut task,
        } = self;
        drop(sender);
        let deadline = Instant::now() + deadline;
        // Past the retry budget, stop retrying: give the last attempts the
        // remaining time, then abandon them.
        let soft = deadline - Duration::from_millis(300).min(deadline - Instant::now());
        tokio::select! {
            _ = &mut task => {}
            _ = tokio::time::sleep_until(soft) => {
                stopping.store(true, Ordering::Relaxed);
                if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                    task.abort();
                    log::warn!("export did not finish in time; unexported spans are counted as dropped");
                }
            }
        }
        let mut snapshot = stats.snapshot();
        // Whatever was queued and neither exported nor dropped is lost now.
        let accounted = snapshot.exported + snapshot.dropped_export_failed;
        if snapshot.queued > accounted {
            snapshot.dropped_export_failed += snapshot.queued - accounted;
        }
        snapshot
    }
}

async fn run(
    mut rx: mpsc::Receiver<SpanData>,
    mut sinks: Vec<Sink>,
    config: BatchConfig,
    stats: Arc<ExportStats>,
    stopping: Arc<AtomicBool>,
) {
    let mut failing = vec![false; sinks.len()];
    loop {
        let mut batch = Vec::with_capacity(config.max_batch);
        if rx.recv_many(&mut batch, config.max_batch).await == 0 {
            break;
        }
        let deadline = Instant::now() + config.max_delay;
        let mut closed = false;
        while batch.len() < config.max_batch && !stopping.load(Ordering::Relaxed) {
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
        export_batch(&sinks, &mut failing, batch, &config, &stats, &stopping).await;
        if closed {
            break;
        }
    }
    for sink in &mut sinks {
        sink.shutdown();
    }
}

async fn export_batch(
    sinks: &[Sink],
    failing: &mut [bool],
    batch: Vec<SpanData>,
    config: &BatchConfig,
    stats: &ExportStats,
    stopping: &AtomicBool,
) {
    let len = batch.len() as u64;
    let mut all_ok = true;
    for (index, sink) in sinks.iter().enumerate() {
        let give_up = Instant::now() + config.retry_for;
        let mut backoff = Duration::from_millis(100);
        loop {
            match sink.export(batch.clone()).await {
                Ok(()) => {
                    if failing[index] {
                        log::info!("export to {} recovered", sink.name());
                        failing[index] = false;
                    }
                    break;
                }
                Err(err) => {
                    stats.export_errors.fetch_add(1, Ordering::Relaxed);
                    if !failing[index] {
                        log::warn!("export to {} failed, retrying: {err}", sink.name());
                        failing[index] = true;
                    }
                    let now = Instant::now();
                    if !sink.retries() || stopping.load(Ordering::Relaxed) || now + backoff > give_up
                    {
                        log::warn!("dropping {len} spans that {} did not take: {err}", sink.name());
                        all_ok = false;
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    if all_ok {
        stats.exported.fetch_add(len, Ordering::Relaxed);
    } else {
        stats.dropped_export_failed.fetch_add(len, Ordering::Relaxed);
    }
}
