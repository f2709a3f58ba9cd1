//! The export pipeline: a bounded queue off the event path, batching, and
//! one or more sinks (OTLP over gRPC or HTTP, the console, a JSONL file).
//!
//! Spans travel as encoded OTLP `Span` messages ([`EncodedSpan`]): the hot
//! path writes them straight from the ring-buffer record ([`wire`]), other
//! producers hand in `SpanData`, encoded once at the sender. Producers call
//! [`SpanSender::send`], which never blocks: when the queue is full the span
//! is dropped and counted. One task batches the queue into one encoded
//! `ExportTraceServiceRequest` per batch and hands it to every sink; each sink
//! has its own task and bounded queue, so a slow or dead collector holds back
//! no other output. OTLP sends are retried on the same bytes.

pub mod config;
mod console;
mod jsonl;
mod otlp_json;
mod span_buffers;
mod span_data;
mod stall;
mod streams;
pub mod tls;
pub mod transport;
pub mod wire;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use opentelemetry::InstrumentationScope;
use opentelemetry_proto::{
    tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::InstrumentationScope as ProtoScope, resource::v1::Resource as ProtoResource,
    },
    transform::common::tonic::ResourceAttributesWithSchema,
};
use opentelemetry_sdk::{Resource, trace::SpanData};
use prost::Message as _;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

pub use config::{BatchSettings, ConfigError, ExportConfig, OtlpConfig, OtlpProtocol, Output};
pub use console::{ConsoleExporter, render};
pub use jsonl::JsonlExporter;
pub use span_buffers::{recycle_span_buffer, span_buffer};
pub use span_data::{decode as decode_span, encode_attributes};
use streams::Stream;
pub use streams::StreamCounts;

/// A span ready for export: its encoded `Span` message and the encoded
/// `InstrumentationScope` it belongs to.
#[derive(Clone, Debug)]
pub struct EncodedSpan {
    pub scope: Arc<[u8]>,
    pub bytes: Vec<u8>,
}

/// Encoded spans of one scope, back to back in one buffer: a bulk
/// producer's chunk ([`SpanSender::send_chunk_blocking`]).
#[derive(Clone, Debug, Default)]
pub struct SpanChunk {
    pub scope: Arc<[u8]>,
    /// The `Span` messages.
    pub bytes: Vec<u8>,
    /// Where each span's message ends in `bytes`.
    pub ends: Vec<u32>,
}

impl SpanChunk {
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// The chunk as chunks of at most `max` spans (at least one).
    fn split(self, max: usize) -> Vec<SpanChunk> {
        let max = max.max(1);
        let mut parts = Vec::with_capacity(self.len().div_ceil(max));
        let mut start = 0usize;
        for ends in self.ends.chunks(max) {
            let end = ends.last().map_or(start, |e| *e as usize);
            let base = start as u32;
            parts.push(SpanChunk {
                scope: self.scope.clone(),
                bytes: self.bytes.get(start..end).unwrap_or_default().to_vec(),
                ends: ends.iter().map(|e| e - base).collect(),
            });
            start = end;
        }
        parts
    }

    /// Each span's message.
    fn spans(&self) -> impl Iterator<Item = &[u8]> {
        messages(&self.bytes, &self.ends)
    }
}

/// The messages laid back to back in `bytes`, each ending where `ends`
/// says (a [`SpanChunk`]'s layout).
pub fn messages<'a>(bytes: &'a [u8], ends: &'a [u32]) -> impl Iterator<Item = &'a [u8]> {
    let mut start = 0;
    ends.iter().map(move |end| {
        let end = *end as usize;
        let message = bytes.get(start..end).unwrap_or_default();
        start = end;
        message
    })
}

/// Encodes an `InstrumentationScope` message.
pub fn encode_scope(scope: &InstrumentationScope) -> Arc<[u8]> {
    ProtoScope {
        name: scope.name().to_owned(),
        version: scope.version().map(str::to_owned).unwrap_or_default(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }
    .encode_to_vec()
    .into()
}

/// Encodes the resource once per pipeline.
fn encode_resource(resource: &Resource) -> Vec<u8> {
    let attributes = ResourceAttributesWithSchema::from(resource);
    ProtoResource {
        attributes: attributes.attributes.0,
        dropped_attributes_count: 0,
        entity_refs: Vec::new(),
    }
    .encode_to_vec()
}

/// Counters of the pipeline's front, shared with the senders.
#[derive(Debug, Default)]
struct QueueStats {
    queued: AtomicU64,
    dropped_queue_full: AtomicU64,
}

/// The kinds of output, for per-output counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    Otlp,
    Console,
    Jsonl,
}

impl OutputKind {
    /// Every kind, in the order the counters list them.
    pub const ALL: [Self; 3] = [Self::Otlp, Self::Console, Self::Jsonl];

    fn index(self) -> usize {
        self as usize
    }
}

/// What the outputs of one kind wrote and failed to write (summed when
/// there are several of a kind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputCount {
    /// At least one output of this kind is configured.
    pub configured: bool,
    pub written: u64,
    pub failed: u64,
}

/// A point-in-time copy of the pipeline's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportSnapshot {
    /// Per output kind, indexed as [`OutputKind::ALL`].
    pub outputs: [OutputCount; 3],
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
    /// What the outputs of `kind` wrote and failed to write.
    pub fn output(&self, kind: OutputKind) -> OutputCount {
        self.outputs[kind.index()]
    }

    /// Every span lost on the export side.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full + self.dropped_export_failed
    }
}

type ScopeCache = HashMap<(String, Option<String>), Arc<[u8]>>;

/// Hands spans to the pipeline; cheap to clone.
#[derive(Clone, Debug)]
pub struct SpanSender {
    tx: mpsc::Sender<Queued>,
    stats: Arc<QueueStats>,
    /// The resource its spans go under, and their counts.
    stream: Arc<Stream>,
    /// The sinks' kinds, in order, for new streams.
    sink_kinds: Arc<[OutputKind]>,
    scopes: Arc<Mutex<ScopeCache>>,
    /// The spans with a goroutine kept for flight-recorder joins, once a
    /// flight-recorder family asks ([`SpanSender::keep_recent`]).
    recent: Arc<std::sync::OnceLock<Arc<crate::gotrace::RecentSpans>>>,
    /// Shown every span sent with [`SpanSender::send_encoded`], once set
    /// ([`SpanSender::watch`]).
    watch: Arc<std::sync::OnceLock<SpanWatch>>,
    /// Room for the spans of chunks in the queue.
    bulk: Arc<BulkRoom>,
    /// The most spans of a chunk queued as one item: a batch's.
    max_chunk: usize,
}

/// Looks at each encoded span the live families send (`--dump-on-slow`).
#[derive(Clone)]
pub struct SpanWatch(pub Arc<WatchFn>);

/// What a [`SpanWatch`] calls with each span's encoded bytes.
pub type WatchFn = dyn Fn(&[u8]) + Send + Sync;

impl std::fmt::Debug for SpanWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpanWatch")
    }
}

impl SpanSender {
    fn encode(&self, span: SpanData) -> EncodedSpan {
        let key = (
            span.instrumentation_scope.name().to_owned(),
            span.instrumentation_scope.version().map(str::to_owned),
        );
        let scope = match self.scopes.lock() {
            Ok(mut cache) => cache
                .entry(key)
                .or_insert_with(|| encode_scope(&span.instrumentation_scope))
                .clone(),
            Err(_) => encode_scope(&span.instrumentation_scope),
        };
        EncodedSpan {
            scope,
            bytes: span_data::encode(&span),
        }
    }

    fn accepted(&self, result: bool, spans: u64) {
        self.stream.accepted(result, spans);
        let counter = if result {
            &self.stats.queued
        } else {
            &self.stats.dropped_queue_full
        };
        counter.fetch_add(spans, Ordering::Relaxed);
    }

    /// Queues an encoded span; never blocks. A full queue drops it, counted.
    pub fn send_encoded(&self, span: EncodedSpan) {
        crate::metrics::observe_span(&span.bytes);
        if let Some(recent) = self.recent.get() {
            recent.record_encoded(&span.bytes);
        }
        if let Some(watch) = self.watch.get() {
            (watch.0)(&span.bytes);
        }
        let queued = Queued {
            stream: self.stream.clone(),
            spans: QueuedSpans::One(span),
        };
        self.accepted(self.tx.try_send(queued).is_ok(), 1);
    }

    /// A sender into the same pipeline whose spans go under `resource`
    /// (a `ResourceSpans` of their own in each batch) and are counted
    /// apart ([`Self::counts`]): one target of several.
    pub fn for_resource(&self, resource: &Resource) -> Self {
        Self {
            stream: Arc::new(Stream::new(encode_resource(resource), &self.sink_kinds)),
            ..self.clone()
        }
    }

    /// The counts of the spans sent under this sender's resource.
    pub fn counts(&self) -> StreamCounts {
        StreamCounts(self.stream.clone())
    }

    /// From now on, every span sent with [`Self::send_encoded`] (the live
    /// families' spans) that has a goroutine is also kept, the last
    /// [`crate::gotrace::join::RECENT_SPANS_KEPT`], for joining
    /// flight-recorder dumps of the process; every clone of this sender
    /// shares them.
    pub fn keep_recent(&self) -> Arc<crate::gotrace::RecentSpans> {
        self.recent.get_or_init(Arc::default).clone()
    }

    /// From now on, `watch` sees every span sent with
    /// [`Self::send_encoded`] (the live families' spans), on the sending
    /// thread: it must be quick. One watch per pipeline; `false` if one was
    /// set already.
    pub fn watch(&self, watch: SpanWatch) -> bool {
        self.watch.set(watch).is_ok()
    }

    /// The spans kept for flight-recorder joins, if a family asked.
    pub fn recent(&self) -> Option<Arc<crate::gotrace::RecentSpans>> {
        self.recent.get().cloned()
    }

    /// Spans waiting in the queue, and how many it holds.
    pub fn queue_fill(&self) -> crate::metrics::QueueFill {
        let capacity = self.tx.max_capacity();
        crate::metrics::QueueFill {
            waiting: capacity.saturating_sub(self.tx.capacity()) as u64,
            capacity: capacity as u64,
        }
    }

    /// Queues a span; never blocks. A full queue drops it, counted.
    pub fn send(&self, span: SpanData) {
        self.send_encoded(self.encode(span));
    }

    /// Queues a chunk of encoded spans as one item, waiting for room: for
    /// producers that are not real time (decoding a file or a dump), where
    /// dropping would lose what a wait can keep; not from async code. For a
    /// producer of many spans at once (a flight-recorder dump's 150,000), which woke the pipeline's
    /// task once per span when it sent them one by one (a quarter of its
    /// CPU time, measured). The queue still holds at most its capacity in
    /// spans: a chunk waits until its spans fit ([`BulkRoom`]).
    pub fn send_chunk_blocking(&self, chunk: SpanChunk) {
        if chunk.len() > self.max_chunk {
            // A batch holds at most `max_batch` spans, and a chunk is not
            // split between batches.
            for part in chunk.split(self.max_chunk) {
                self.send_chunk_blocking(part);
            }
            return;
        }
        let n = chunk.len();
        if n == 0 {
            return;
        }
        if !self.bulk.take(n, || self.tx.is_closed()) {
            self.accepted(false, n as u64);
            return;
        }
        let item = Queued {
            stream: self.stream.clone(),
            spans: QueuedSpans::Chunk(chunk),
        };
        let sent = self.tx.blocking_send(item).is_ok();
        if !sent {
            self.bulk.give(n);
        }
        self.accepted(sent, n as u64);
    }
}

/// Spans in the queue, with the stream they belong to.
#[derive(Debug)]
struct Queued {
    stream: Arc<Stream>,
    spans: QueuedSpans,
}

/// One span (a live family's), or a chunk of a bulk producer's.
#[derive(Debug)]
enum QueuedSpans {
    One(EncodedSpan),
    Chunk(SpanChunk),
}

impl QueuedSpans {
    fn len(&self) -> usize {
        match self {
            QueuedSpans::One(_) => 1,
            QueuedSpans::Chunk(chunk) => chunk.len(),
        }
    }

    /// Each span, with its scope.
    fn each<'a>(&'a self, mut f: impl FnMut(&'a [u8], &'a [u8])) {
        match self {
            QueuedSpans::One(span) => f(&span.scope, &span.bytes),
            QueuedSpans::Chunk(chunk) => chunk.spans().for_each(|span| f(&chunk.scope, span)),
        }
    }
}

/// Room in the queue for the spans of chunks
/// ([`SpanSender::send_chunk_blocking`]): a chunk takes one slot of
/// the channel but its spans are counted here, so that chunks never hold
/// more spans than the queue's capacity.
#[derive(Debug)]
struct BulkRoom {
    capacity: usize,
    used: Mutex<usize>,
    freed: std::sync::Condvar,
}

impl BulkRoom {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            used: Mutex::new(0),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Waits until `n` more spans fit (a chunk larger than the capacity
    /// goes alone), then counts them; `false` once `closed` says the
    /// pipeline is gone.
    fn take(&self, n: usize, closed: impl Fn() -> bool) -> bool {
        let Ok(mut used) = self.used.lock() else {
            return false;
        };
        while *used > 0 && *used + n > self.capacity {
            if closed() {
                return false;
            }
            used = match self.freed.wait_timeout(used, Duration::from_millis(100)) {
                Ok((used, _)) => used,
                Err(_) => return false,
            };
        }
        *used += n;
        true
    }

    /// `n` spans left the queue.
    fn give(&self, n: usize) {
        if let Ok(mut used) = self.used.lock() {
            *used = used.saturating_sub(n);
        }
        self.freed.notify_all();
    }
}

/// One batch, encoded once for every sink.
#[derive(Debug)]
struct Batch {
    body: Bytes,
    spans: u64,
    /// How many of its spans each stream has.
    streams: Vec<(Arc<Stream>, u64)>,
}

impl Batch {
    /// Sink `sink` delivered it, or failed to.
    fn exported(&self, sink: usize, delivered: bool) {
        for (stream, spans) in &self.streams {
            stream.exported(sink, *spans, delivered);
        }
    }
}

impl Batch {
    fn decode(&self) -> Result<ExportTraceServiceRequest, String> {
        ExportTraceServiceRequest::decode(self.body.clone()).map_err(|e| e.to_string())
    }
}

/// One destination of spans.
#[derive(Debug)]
enum Sink {
    /// Exported concurrently, each request retried on its own.
    Otlp {
        transport: Box<transport::Transport>,
        endpoint: String,
        /// Bound of one export with its retries.
        deadline: Duration,
    },
    /// Written one batch at a time, in order.
    Local(LocalSink),
}

impl Sink {
    fn kind(&self) -> OutputKind {
        match self {
            Self::Otlp { .. } => OutputKind::Otlp,
            Self::Local(LocalSink::Console(_)) => OutputKind::Console,
            Self::Local(LocalSink::Jsonl(_)) => OutputKind::Jsonl,
        }
    }
}

/// An output on this machine.
#[derive(Debug)]
enum LocalSink {
    Console(ConsoleExporter),
    Jsonl(JsonlExporter),
}

impl LocalSink {
    fn name(&self) -> String {
        match self {
            Self::Console(_) => "console".to_owned(),
            Self::Jsonl(j) => format!("JSONL {}", j.describe()),
        }
    }

    fn export(&mut self, batch: &Batch) -> Result<(), String> {
        match self {
            Self::Console(c) => c.export(&batch.decode()?),
            Self::Jsonl(j) => j.export_encoded(&batch.body),
        }
    }

    fn shutdown(&mut self) {
        let result = match self {
            Self::Console(_) => Ok(()),
            Self::Jsonl(j) => j.flush(),
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
    /// Bound of one export, retries included (with the exporter's own
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, the shorter wins).
    pub export_timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 8192,
            max_batch: 512,
            max_delay: Duration::from_millis(200),
            export_timeout: Duration::from_secs(30),
        }
    }
}

impl BatchConfig {
    /// These limits with what the `OTEL_BSP_*` variables set.
    pub fn with(self, settings: &BatchSettings) -> Self {
        Self {
            queue_capacity: settings.max_queue.unwrap_or(self.queue_capacity),
            max_batch: settings.max_batch.unwrap_or(self.max_batch),
            max_delay: settings.schedule_delay.unwrap_or(self.max_delay),
            export_timeout: settings.export_timeout.unwrap_or(self.export_timeout),
        }
    }
}

/// Failure to start the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot set up the OTLP exporter for {endpoint}")]
    Otlp {
        endpoint: String,
        #[source]
        source: transport::TransportError,
    },
    #[error("cannot open the JSONL output")]
    Jsonl(#[source] std::io::Error),
}

/// What one sink delivered and lost.
#[derive(Debug)]
struct SinkStats {
    kind: OutputKind,
    /// Its place among the pipeline's sinks.
    index: usize,
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl SinkStats {
    fn new(kind: OutputKind, index: usize) -> Self {
        Self {
            kind,
            index,
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

/// A running pipeline.
#[derive(Debug)]
pub struct Pipeline {
    sender: SpanSender,
    stats: Arc<QueueStats>,
    sink_stats: Vec<Arc<SinkStats>>,
    stopping: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
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
            sinks.push(match output {
                Output::Otlp(otlp) => Sink::Otlp {
                    transport: Box::new(transport::Transport::new(otlp).map_err(|source| {
                        PipelineError::Otlp {
                            endpoint: otlp.endpoint.clone(),
                            source,
                        }
                    })?),
                    endpoint: otlp.endpoint.clone(),
                    deadline: otlp.timeout.min(batch.export_timeout),
                },
                Output::Console => Sink::Local(LocalSink::Console(ConsoleExporter::stdout())),
                Output::Jsonl(path) => Sink::Local(LocalSink::Jsonl(
                    JsonlExporter::open(path.as_deref()).map_err(PipelineError::Jsonl)?,
                )),
            });
        }
        let sink_kinds: Arc<[OutputKind]> = sinks.iter().map(Sink::kind).collect();
        let stream = Arc::new(Stream::new(encode_resource(resource), &sink_kinds));
        let stats = Arc::new(QueueStats::default());
        let (stopping, stop_rx) = watch::channel(false);
        let (tx, rx) = mpsc::channel(batch.queue_capacity.max(1));
        let batches_per_sink = (batch.queue_capacity / batch.max_batch.max(1)).max(2);
        let mut tasks = Vec::new();
        let mut sink_txs = Vec::new();
        let mut sink_stats = Vec::new();
        for (index, sink) in sinks.into_iter().enumerate() {
            let (sink_tx, sink_rx) = mpsc::channel(batches_per_sink);
            let counters = Arc::new(SinkStats::new(sink.kind(), index));
            tasks.push(tokio::spawn(run_sink(
                sink,
                sink_rx,
                counters.clone(),
                stop_rx.clone(),
            )));
            sink_txs.push((sink_tx, counters.clone()));
            sink_stats.push(counters);
        }
        let bulk = Arc::new(BulkRoom::new(batch.queue_capacity));
        let max_batch = batch.max_batch.max(1);
        tasks.insert(
            0,
            tokio::spawn(run_batcher(rx, bulk.clone(), sink_txs, batch, stop_rx)),
        );
        Ok(Self {
            sender: SpanSender {
                tx,
                stats: stats.clone(),
                stream,
                sink_kinds,
                scopes: Arc::default(),
                recent: Arc::default(),
                watch: Arc::default(),
                bulk,
                max_chunk: max_batch,
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
        // Near the deadline, stop batching and retrying: the last sends get
        // the remaining time, then are abandoned.
        let soft = deadline - Duration::from_millis(300).min(deadline - Instant::now());
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let mut all = Box::pin(async move {
            for task in tasks {
                let _ = task.await;
            }
        });
        tokio::select! {
            () = &mut all => {}
            () = tokio::time::sleep_until(soft) => {
                let _ = stopping.send(true);
                if tokio::time::timeout_at(deadline, &mut all).await.is_err() {
                    for abort in &aborts {
                        abort.abort();
                    }
                    log::warn!("export did not finish in time; unexported spans are counted as dropped");
                }
            }
        }
        // Whatever a sink was handed and neither wrote nor dropped is lost
        // now, for that sink.
        let queued = stats.queued.load(Ordering::Relaxed);
        for sink in &sink_stats {
            let accounted =
                sink.delivered.load(Ordering::Relaxed) + sink.failed.load(Ordering::Relaxed);
            sink.failed
                .fetch_add(queued.saturating_sub(accounted), Ordering::Relaxed);
        }
        snapshot(&stats, &sink_stats)
    }
}

fn snapshot(stats: &QueueStats, sinks: &[Arc<SinkStats>]) -> ExportSnapshot {
    let mut outputs = [OutputCount::default(); 3];
    for sink in sinks {
        let out = &mut outputs[sink.kind.index()];
        out.configured = true;
        out.written += sink.delivered.load(Ordering::Relaxed);
        out.failed += sink.failed.load(Ordering::Relaxed);
    }
    ExportSnapshot {
        outputs,
        queued: stats.queued.load(Ordering::Relaxed),
        dropped_queue_full: stats.dropped_queue_full.load(Ordering::Relaxed),
        exported: sinks
            .iter()
            .map(|s| s.delivered.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0),
        dropped_export_failed: sinks
            .iter()
            .map(|s| s.failed.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0),
    }
}

/// Encodes a batch of spans into one request body: a `ResourceSpans` per
/// stream (a message's repeated fields concatenate), its spans grouped by
/// scope. Returns the body and how many spans each stream has in it.
/// Spans as (encoded scope, encoded span).
type ScopedSpans<'a> = Vec<(&'a [u8], &'a [u8])>;

fn encode_batch(spans: &[Queued]) -> (Bytes, Vec<(Arc<Stream>, u64)>) {
    let mut streams: Vec<(&Arc<Stream>, ScopedSpans<'_>)> = Vec::new();
    for queued in spans {
        let at = match streams
            .iter()
            .position(|(stream, _)| Arc::ptr_eq(stream, &queued.stream))
        {
            Some(at) => at,
            None => {
                streams.push((&queued.stream, Vec::new()));
                streams.len() - 1
            }
        };
        let list = &mut streams[at].1;
        queued.spans.each(|scope, span| list.push((scope, span)));
    }
    let mut body = Vec::new();
    for (stream, spans) in &streams {
        let mut scopes: Vec<(&[u8], Vec<&[u8]>)> = Vec::new();
        for (scope, span) in spans {
            match scopes.iter_mut().find(|(s, _)| s == scope) {
                Some((_, list)) => list.push(span),
                None => scopes.push((scope, vec![span])),
            }
        }
        let grouped: Vec<(&[u8], &[&[u8]])> =
            scopes.iter().map(|(s, l)| (*s, l.as_slice())).collect();
        body.extend_from_slice(&wire::request(&stream.resource, &grouped));
    }
    let counts = streams
        .into_iter()
        .map(|(stream, spans)| (stream.clone(), spans.len() as u64))
        .collect();
    (Bytes::from(body), counts)
}

/// Collects spans into batches and hands each encoded batch to every sink.
async fn run_batcher(
    mut rx: mpsc::Receiver<Queued>,
    bulk: Arc<BulkRoom>,
    sinks: Vec<(mpsc::Sender<Arc<Batch>>, Arc<SinkStats>)>,
    config: BatchConfig,
    stopping: watch::Receiver<bool>,
) {
    let mut spans: Vec<Queued> = Vec::with_capacity(config.max_batch);
    // Items received beyond a batch's `max_batch` spans (a chunk is one
    // item of many spans): the next batch begins with them.
    let mut carried: Vec<Queued> = Vec::new();
    let mut closed = false;
    // Spans in `spans`.
    let count = |spans: &[Queued]| spans.iter().map(|q| q.spans.len()).sum::<usize>();
    loop {
        spans.clear();
        spans.append(&mut carried);
        if spans.is_empty() && (closed || rx.recv_many(&mut spans, config.max_batch).await == 0) {
            break;
        }
        let deadline = Instant::now() + config.max_delay;
        let mut n = count(&spans);
        while n < config.max_batch && !closed && !*stopping.borrow() {
            let room = config.max_batch - n;
            let before = spans.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut spans, room)).await {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(_) => n += count(&spans[before..]),
                Err(_) => break,
            }
        }
        // At most `max_batch` spans (each item holds at most that many:
        // senders split larger chunks); the rest waits for the next batch.
        let mut kept = 0;
        if let Some(at) = spans.iter().position(|q| {
            kept += q.spans.len();
            kept > config.max_batch
        }) {
            let at = at.max(1);
            carried.extend(spans.drain(at..));
            n = count(&spans);
        }
        let (body, streams) = encode_batch(&spans);
        let batch = Arc::new(Batch {
            body,
            spans: n as u64,
            streams,
        });
        for queued in spans.drain(..) {
            match queued.spans {
                QueuedSpans::One(span) => recycle_span_buffer(span.bytes),
                QueuedSpans::Chunk(chunk) => bulk.give(chunk.len()),
            }
        }
        for (tx, counters) in &sinks {
            if tx.try_send(batch.clone()).is_err() {
                counters.failed.fetch_add(batch.spans, Ordering::Relaxed);
                batch.exported(counters.index, false);
            }
        }
    }
}

/// Exports sent to one OTLP endpoint at once. One at a time, a flood
/// outran a collector a round trip away (measured: a local sink under a
/// 1M-record/s USDT flood); the OTLP spec lets clients send concurrently.
const OTLP_IN_FLIGHT: usize = 4;

/// Exports the batches of one sink; what fails is counted and logged.
async fn run_sink(
    sink: Sink,
    rx: mpsc::Receiver<Arc<Batch>>,
    counters: Arc<SinkStats>,
    stopping: watch::Receiver<bool>,
) {
    match sink {
        Sink::Otlp {
            transport,
            endpoint,
            deadline,
        } => run_otlp_sink(*transport, &endpoint, deadline, rx, &counters, stopping).await,
        Sink::Local(mut sink) => {
            run_local_sink(&mut sink, rx, &counters).await;
            sink.shutdown();
        }
    }
}

/// Logs the first export of a run of failures that dropped its spans (the
/// stall monitor reports the stall itself, and the recovery).
#[derive(Debug, Default)]
struct FailureLog {
    failing: bool,
}

impl FailureLog {
    fn record(
        &mut self,
        sink: &str,
        counters: &SinkStats,
        batch: &Batch,
        result: Result<(), String>,
    ) {
        let spans = batch.spans;
        batch.exported(counters.index, result.is_ok());
        match result {
            Ok(()) => {
                counters.delivered.fetch_add(spans, Ordering::Relaxed);
                if self.failing {
                    log::debug!("export to {sink} delivers again");
                    self.failing = false;
                }
            }
            Err(err) => {
                counters.failed.fetch_add(spans, Ordering::Relaxed);
                if self.failing {
                    log::debug!("dropped {spans} spans that {sink} did not take: {err}");
                } else {
                    log::warn!("export to {sink} failed, dropping spans until it recovers: {err}");
                    self.failing = true;
                }
            }
        }
    }
}

/// How often a sink looks for a stalled export (see [`stall`]).
const STALL_CHECK: Duration = Duration::from_millis(250);

/// Up to [`OTLP_IN_FLIGHT`] exports at once, each retried on its own;
/// a stall is reported while it happens.
async fn run_otlp_sink(
    transport: transport::Transport,
    endpoint: &str,
    deadline: Duration,
    mut rx: mpsc::Receiver<Arc<Batch>>,
    counters: &SinkStats,
    stopping: watch::Receiver<bool>,
) {
    let name = format!("OTLP {endpoint}");
    let mut log = FailureLog::default();
    let monitor = Arc::new(stall::StallMonitor::new(name.clone(), deadline));
    let mut started: HashMap<tokio::task::Id, Instant> = HashMap::new();
    let mut stall_check = tokio::time::interval(STALL_CHECK);
    stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            batch = rx.recv(), if open && in_flight.len() < OTLP_IN_FLIGHT => match batch {
                Some(batch) => {
                    let mut transport = transport.clone();
                    let mut stopping = stopping.clone();
                    let monitor = monitor.clone();
                    let task = in_flight.spawn(async move {
                        let result = transport::send_with_retry(
                            &mut transport,
                            batch.body.clone(),
                            deadline,
                            &*monitor,
                            &mut stopping,
                        )
                        .await
                        .map_err(|e| e.to_string());
                        (batch, result)
                    });
                    started.insert(task.id(), Instant::now());
                }
                None => open = false,
            },
            Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => match done {
                Ok((id, (batch, result))) => {
                    started.remove(&id);
                    log.record(&name, counters, &batch, result);
                }
                Err(err) => {
                    started.remove(&err.id());
                    log::warn!("export task to {name} ended: {err}");
                }
            },
            _ = stall_check.tick() => {
                monitor.check(
                    started.values().min().map(|t| t.into_std()),
                    std::time::Instant::now(),
                );
            }
        }
    }
}

/// One export at a time, in order (console and file output).
async fn run_local_sink(
    sink: &mut LocalSink,
    mut rx: mpsc::Receiver<Arc<Batch>>,
    counters: &SinkStats,
) {
    let name = sink.name();
    let mut log = FailureLog::default();
    while let Some(batch) = rx.recv().await {
        let result = sink.export(&batch);
        log.record(&name, counters, &batch, result);
    }
}
