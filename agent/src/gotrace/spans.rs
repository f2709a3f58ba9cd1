//! Mapping the decoded event stream to OpenTelemetry spans.
//!
//! - Each task is a span; a child task is a child span of its parent task. A
//!   task that ends on another goroutine is still one span (it is keyed by
//!   task ID, not goroutine).
//! - Each region is a child span of the enclosing region on the same
//!   goroutine (same task), else of its task; a region of the background
//!   task with no enclosing region is a root span.
//! - Each `trace.Log` is a span event on the innermost region of its
//!   goroutine (same task), else on its task's span, as Go's parser
//!   attributes it (`go.task.id` on the event): also a log that comes after
//!   its task ended (an ended task is held, within [`HELD_TASKS_MAX`] and
//!   [`HELD_EVENTS_MAX`], until the end of the trace before it is exported),
//!   and a log of a task whose begin is not in the trace.
//! - Ranges (GC mark phase, stop-the-world, mark assist, sweep) are internal
//!   spans; goroutine-scoped ones are children of the goroutine's current
//!   region or task, the others are roots.
//! - A goroutine blocking (`Running -> Waiting`) or being woken
//!   (`Waiting -> Runnable`) while inside a region, or inside a task it began,
//!   is a span event on that span, with the reason.
//! - A task, region or range whose begin is not in the trace (a flight
//!   recorder window starts in the middle of things) starts at the first
//!   event of the trace; one still open at the end ends at the last event.
//!   Both are exported and marked with `go.trace.truncated` (and
//!   `go.trace.truncated.side`); the side the trace has keeps its exact time.
//!   A task known only by reference (a child's parent ID, a region, a log)
//!   is exported once, truncated on both sides.
//! - A task's span says how its goroutine (the one that began it) spent the
//!   time while the task was its innermost and it was not running, summed:
//!   `go.sched.wait_ns` (runnable, waiting for a CPU), `go.block.ns` and
//!   `go.block.ns.<reason>` (blocked; the reason with `_` for spaces),
//!   `go.syscall.ns`, `go.gc.assist_ns` (its GC mark assists). Attributes,
//!   not child spans: a request has many short waits, and Jaeger shows a
//!   span's attributes at a glance where hundreds of tiny children would
//!   bury its tasks and regions.
//! - With [`SpanOptions::join`] (the agent's own spans of the process), a
//!   task with no parent task, a region outside any task and region, and a
//!   goroutine range outside both, begun on a goroutine while one of the
//!   agent's spans is open on it (or inherited by it: the trace shows which
//!   goroutine created which), is that span's child, in its trace.
//! - With a join, the time of each of the agent's spans the trace shows
//!   (a request), on its goroutine and on the goroutines it created
//!   (inherited, while the request lasts): each period a goroutine was
//!   blocked (with the reason and the stack it blocked at), runnable
//!   waiting for a CPU, or in a system call, at least
//!   [`SpanOptions::period_min`] long, is a child span (`blocked: REASON`,
//!   `runnable`, `syscall`; `trace.event.kind = period`) of the goroutine's
//!   innermost region or task when it began, else of the request; every
//!   period, short ones included, is summed on one `goroutine time` span
//!   per request (`trace.event.kind = breakdown`, the request's child, over
//!   the part of it the trace covers: `go.sched.wait_ns`, `go.block.ns` and
//!   by reason, `go.syscall.ns`, `go.gc.assist_ns`, `go.goroutines`,
//!   `go.goroutine.ids`, `go.periods.exported`, `go.periods.summed`). Child
//!   spans rather than span events: a period has a duration, and Jaeger
//!   draws a child span as a bar on the request's timeline, where the gap
//!   it explains is, while an event is a tick with no length; the threshold
//!   keeps the hundreds of sub-millisecond waits of a busy request out of
//!   the tree (their sum is on the breakdown). GC assists are the `GC mark
//!   assist` range spans already (any length), and summed too.
//! - Times: wall clock from the generation's clock snapshot (Go 1.25+); for
//!   older traces the first event is anchored to
//!   [`SpanOptions::anchor_wall_time`] (default: now) and every span carries
//!   `go.trace.time.approximate = true`.
//!
//! Memory: open spans are kept until they end; events per span are capped
//! ([`MAX_EVENTS_PER_SPAN`]); ended tasks held for late logs are bounded
//! ([`HELD_TASKS_MAX`], [`HELD_EVENTS_MAX`]: beyond, the oldest is exported
//! and a later log of it is counted in [`SpanSummary::unattached_logs`]), and
//! the table of ended tasks kept to link late children is bounded
//! ([`ENDED_TASKS_KEPT`]).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::Read;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::SpanData;

use crate::export::wire::{
    AttrField, FIXED32, FIXED64, LEN, VARINT, attr_bool, attr_int, attr_int_array, attr_str,
    attr_str_array, put_len_field, put_tag, put_varint,
};
use crate::export::{SpanChunk, decode_span, encode_attributes, encode_scope, messages};

use super::event::{Event, EventKind, Resource, Stack};
use super::join::{Interval, JoinIndex, Joiner, unix_ns};
use super::{DecodeError, IdMap, NO_GOROUTINE, NO_TASK, Reader, goroutine_state};

/// Span events kept per span; more are counted as dropped.
pub const MAX_EVENTS_PER_SPAN: usize = 256;
/// Ended tasks remembered so that children beginning later still link.
pub const ENDED_TASKS_KEPT: usize = 1 << 16;
/// Ended tasks held (not yet exported) so that logs coming after their end
/// still reach them; beyond, the oldest is exported.
pub const HELD_TASKS_MAX: usize = 1 << 9;
/// Span events, in all, of the held ended tasks; beyond, the oldest held
/// task is exported.
pub const HELD_EVENTS_MAX: usize = 1 << 12;

/// Default of [`SpanOptions::period_min`]: periods shorter than this are only
/// summed.
pub const PERIOD_MIN_DEFAULT: Duration = Duration::from_millis(1);

/// Options for [`trace_to_spans`].
#[derive(Debug, Clone)]
pub struct SpanOptions {
    /// Wall-clock time of the trace's first event, for traces without a
    /// clock snapshot (before Go 1.25). `None`: the time of decoding.
    pub anchor_wall_time: Option<SystemTime>,
    /// Frames kept in `code.stacktrace.frames` (0: no frame list).
    pub max_frames: usize,
    /// Attributes added to every span (e.g. the dump's identity).
    pub extra_attributes: Vec<KeyValue>,
    /// The agent's own spans of the traced process: a task (or a region
    /// or range outside any task) begun on a goroutine inside one of them
    /// becomes its child (see the `join` module).
    pub join: Option<Arc<JoinIndex>>,
    /// With [`join`](Self::join): a joined request's goroutine periods
    /// (blocked, runnable, in a syscall) at least this long become spans of
    /// their own; all are summed on the request's `goroutine time` span.
    pub period_min: Duration,
}

impl Default for SpanOptions {
    fn default() -> Self {
        SpanOptions {
            anchor_wall_time: None,
            max_frames: 16,
            extra_attributes: Vec::new(),
            join: None,
            period_min: PERIOD_MIN_DEFAULT,
        }
    }
}

/// What [`trace_to_spans`] produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanSummary {
    /// Events decoded.
    pub events: u64,
    /// Spans handed to the sink, by kind.
    pub spans: u64,
    pub tasks: u64,
    pub regions: u64,
    pub ranges: u64,
    /// Spans marked truncated.
    pub truncated: u64,
    /// Logs attached as span events.
    pub logs: u64,
    /// Logs outside any task or region, or of a task already exported (held
    /// tasks evicted past [`HELD_TASKS_MAX`] or [`HELD_EVENTS_MAX`]); not
    /// exported.
    pub unattached_logs: u64,
    /// Whether wall-clock times are approximate (no clock snapshot).
    pub approximate_time: bool,
    /// Spans made children of the agent's own spans
    /// ([`SpanOptions::join`]).
    pub joined: u64,
    /// Goroutine periods of joined requests exported as spans (at least
    /// [`SpanOptions::period_min`] long).
    pub periods: u64,
    /// Shorter periods of joined requests, only summed.
    pub periods_summed: u64,
    /// `goroutine time` spans: one per joined request the trace shows.
    pub breakdowns: u64,
}

/// Spans of a decoded trace, their OTLP `Span` messages (scope [`scope`])
/// back to back in one buffer: one allocation per batch rather than per
/// span, and one free on the export pipeline's thread (a free of memory
/// another thread allocated takes its allocator arena's lock: 7% of a
/// dump's decoding when each span had a buffer of its own, perf).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanBatch {
    bytes: Vec<u8>,
    /// Where each span's message ends in `bytes` (a [`SpanChunk`]'s layout).
    ends: Vec<u32>,
    /// Each span's trace ID.
    trace_ids: Vec<TraceId>,
}

/// One span of a [`SpanBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceSpan<'a> {
    pub trace_id: TraceId,
    /// The encoded `Span` message.
    pub bytes: &'a [u8],
}

impl TraceSpan<'_> {
    /// The span as the SDK's `SpanData` (for tests and tools that inspect
    /// spans; the export path sends the bytes as they are).
    pub fn to_span_data(&self) -> Result<SpanData, prost::DecodeError> {
        decode_span(self.bytes, scope())
    }
}

impl SpanBatch {
    fn with_capacity(spans: usize, bytes: usize) -> Self {
        SpanBatch {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(spans),
            trace_ids: Vec::with_capacity(spans),
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Adds the span whose message `bytes` ends with.
    fn push_end(&mut self, trace_id: TraceId) {
        self.ends
            .push(u32::try_from(self.bytes.len()).unwrap_or(u32::MAX));
        self.trace_ids.push(trace_id);
    }

    /// The spans, in the order they ended.
    pub fn iter(&self) -> impl Iterator<Item = TraceSpan<'_>> {
        self.trace_ids
            .iter()
            .zip(messages(&self.bytes, &self.ends))
            .map(|(trace_id, bytes)| TraceSpan {
                trace_id: *trace_id,
                bytes,
            })
    }

    /// Keeps the spans whose trace `keep` says yes to (a sampler).
    pub fn retain(&mut self, mut keep: impl FnMut(TraceId) -> bool) {
        let (mut read, mut write) = (0usize, 0usize);
        let mut kept = 0;
        for i in 0..self.ends.len() {
            let (trace_id, end) = (self.trace_ids[i], self.ends[i] as usize);
            if keep(trace_id) {
                self.bytes.copy_within(read..end, write);
                write += end - read;
                self.ends[kept] = write as u32;
                self.trace_ids[kept] = trace_id;
                kept += 1;
            }
            read = end;
        }
        self.bytes.truncate(write);
        self.ends.truncate(kept);
        self.trace_ids.truncate(kept);
    }

    /// The batch as the export pipeline takes it, under [`scope`].
    pub fn into_chunk(self) -> SpanChunk {
        static SCOPE: OnceLock<Arc<[u8]>> = OnceLock::new();
        SpanChunk {
            scope: Arc::clone(SCOPE.get_or_init(|| encode_scope(&scope()))),
            bytes: self.bytes,
            ends: self.ends,
        }
    }
}

/// The instrumentation scope of the spans decoded from traces.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("agent.gotrace")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// Decodes a trace and hands every span to `sink`. The mapping:
///
/// - Each task is a span; a child task is a child span of its parent task. A
///   task that ends on another goroutine is still one span (it is keyed by
///   task ID, not goroutine).
/// - Each region is a child span of the enclosing region on the same
///   goroutine (same task), else of its task; a region of the background
///   task with no enclosing region is a root span.
/// - Each `trace.Log` is a span event on the innermost region of its
///   goroutine (same task), else on its task's span, as Go's parser
///   attributes it (`go.task.id` on the event): also a log that comes after
///   its task ended (ended tasks are held until the end of the trace, within
///   [`HELD_TASKS_MAX`] and [`HELD_EVENTS_MAX`]), and a log of a task whose
///   begin is not in the trace.
/// - Ranges (GC mark phase, stop-the-world, mark assist, sweep) are internal
///   spans; goroutine-scoped ones are children of the goroutine's current
///   region or task, the others are roots.
/// - A goroutine blocking (`Running -> Waiting`) or being woken
///   (`Waiting -> Runnable`) while inside a region, or inside a task it began,
///   is a span event on that span, with the reason.
/// - A task, region or range whose begin is not in the trace (a flight
///   recorder window starts in the middle of things) starts at the first
///   event of the trace; one still open at the end ends at the last event.
///   Both are exported and marked with `go.trace.truncated`; the side the
///   trace has keeps its exact time. A task known only by reference (a
///   child's parent ID, a region, a log) is exported once, truncated on both
///   sides.
/// - Times: wall clock from the generation's clock snapshot (Go 1.25+); for
///   older traces the first event is anchored to
///   [`SpanOptions::anchor_wall_time`] (default: now) and every span carries
///   `go.trace.time.approximate = true`.
///
/// Spans are handed over as they end, in batches of [`SPAN_BATCH`], except
/// tasks, held after their end (see above) and handed over when evicted or
/// at the end of the trace. On a decoding error, the spans that ended
/// before it are handed over, then the error is returned.
/// Each is written as OTLP bytes as it is built (attributes as they are
/// known, a stack's and the options' attributes encoded once and copied):
/// about 150,000 spans come out of a 10 MiB flight-recorder dump.
///
/// Memory: open spans are kept until they end; events per span are capped
/// ([`MAX_EVENTS_PER_SPAN`]), held ended tasks are bounded, and the table of
/// ended tasks kept to link late children is bounded ([`ENDED_TASKS_KEPT`]).
pub fn trace_to_spans(
    input: impl Read,
    opts: &SpanOptions,
    sink: &mut dyn FnMut(SpanBatch),
) -> Result<SpanSummary, DecodeError> {
    reader_to_spans(Reader::new(input)?, opts, sink)
}

/// [`trace_to_spans`] over a reader already made (e.g.
/// [`Reader::from_file`], which keeps memory low on large files).
pub fn reader_to_spans<R: Read>(
    mut r: Reader<R>,
    opts: &SpanOptions,
    sink: &mut dyn FnMut(SpanBatch),
) -> Result<SpanSummary, DecodeError> {
    let joiner = opts.join.as_deref().map(Joiner::new);
    let mut m = Mapper::new(opts, sink, joiner);
    let read = loop {
        match r.read_event() {
            Ok(Some(e)) => {
                m.summary.events += 1;
                m.event(&e);
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    if read.is_ok() {
        m.finish();
    }
    // The spans that ended before an error are handed over too.
    m.hand_over();
    read.map(|()| m.summary)
}

/// Spans handed to the sink at once (the last batch of a trace may be
/// shorter): one hand-over, and one wakeup of the export pipeline, per
/// batch rather than per span.
pub const SPAN_BATCH: usize = 256;

/// Generates span and trace IDs (SplitMix64 from a random seed).
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u64 {
        loop {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            if z != 0 {
                return z;
            }
        }
    }
    fn span(&mut self) -> SpanId {
        SpanId::from_bytes(self.next().to_be_bytes())
    }
    fn trace(&mut self) -> TraceId {
        let hi = self.next().to_be_bytes();
        let lo = self.next().to_be_bytes();
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&hi);
        b[8..].copy_from_slice(&lo);
        TraceId::from_bytes(b)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Task,
    Region,
    Range,
    /// A goroutine period of a joined request (blocked, runnable, syscall).
    Period,
    /// A joined request's goroutine time, summed.
    Breakdown,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::Region => "region",
            Kind::Range => "range",
            Kind::Period => "period",
            Kind::Breakdown => "breakdown",
        }
    }
}

/// A span begun and not yet exported. Its attributes and events are OTLP
/// bytes already (`Span.attributes`, `Span.events` fields).
struct Open {
    trace_id: TraceId,
    span_id: SpanId,
    parent: SpanId,
    name: String,
    kind: Kind,
    /// Wall-clock start (Unix ns), converted with the clock of its own
    /// generation.
    start: u64,
    begin_missing: bool,
    goroutine: i64,
    attrs: Vec<u8>,
    events: Vec<u8>,
    event_count: usize,
    dropped_events: u32,
    /// A task's goroutine's time, broken down (tasks only, once any).
    sched: Option<Box<SchedTimes>>,
}

impl Open {
    /// Adds an encoded `Span.Event` message, within [`MAX_EVENTS_PER_SPAN`].
    fn add_event(&mut self, event: &[u8]) {
        if self.event_count < MAX_EVENTS_PER_SPAN {
            if self.events.is_empty() {
                self.events.reserve(EVENTS_ROOM.max(event.len() + 4));
            }
            put_len_field(&mut self.events, 11, event);
            self.event_count += 1;
        } else {
            self.dropped_events = self.dropped_events.saturating_add(1);
        }
    }
}

/// The time a task's goroutine (the one that began it) spent, while the
/// task was its innermost, not running: runnable waiting for a CPU, blocked
/// (by reason), in a syscall, assisting the GC.
#[derive(Debug, Default)]
struct SchedTimes {
    wait_ns: i64,
    syscall_ns: i64,
    assist_ns: i64,
    block_ns: Vec<(String, i64)>,
}

impl SchedTimes {
    fn add(&mut self, state: u8, reason: &str, d: i64) {
        match state {
            goroutine_state::RUNNABLE => self.wait_ns += d,
            goroutine_state::SYSCALL => self.syscall_ns += d,
            _ => match self.block_ns.iter_mut().find(|(r, _)| r == reason) {
                Some((_, n)) => *n += d,
                None => self.block_ns.push((reason.to_string(), d)),
            },
        }
    }

    fn attributes(&self, out: &mut Vec<u8>) {
        let f = AttrField::SPAN;
        if self.wait_ns > 0 {
            attr_int(out, f, "go.sched.wait_ns", self.wait_ns);
        }
        if self.syscall_ns > 0 {
            attr_int(out, f, "go.syscall.ns", self.syscall_ns);
        }
        if self.assist_ns > 0 {
            attr_int(out, f, "go.gc.assist_ns", self.assist_ns);
        }
        let total: i64 = self.block_ns.iter().map(|(_, n)| n).sum();
        if total > 0 {
            attr_int(out, f, "go.block.ns", total);
            let mut key = String::new();
            for (reason, n) in &self.block_ns {
                key.clear();
                key.push_str("go.block.ns.");
                if reason.is_empty() {
                    key.push_str("unknown");
                } else {
                    key.extend(reason.chars().map(|c| if c == ' ' { '_' } else { c }));
                }
                attr_int(out, f, &key, *n);
            }
        }
    }
}

/// A goroutine's current not-running period, while it has a task or is in
/// a joined request.
struct Period {
    state: u8,
    since: i64,
    reason: String,
    /// The trace began with the goroutine in this state.
    begin_missing: bool,
    /// Its joined request, when it is in one.
    detail: Option<Box<PeriodDetail>>,
}

/// Where a joined request's period goes.
struct PeriodDetail {
    /// The period span's parent: the goroutine's innermost region or task
    /// when it began, else the request.
    parent: (TraceId, SpanId),
    /// The request (the agent's span) whose time it is, and the goroutine
    /// it is open on.
    request: Interval,
    owner: i64,
    /// The goroutine's stack when the period began.
    stack: Option<Rc<StackAttrs>>,
}

/// A joined request's goroutine time, summed over its goroutines.
struct RequestTimes {
    request: Interval,
    owner: i64,
    sched: SchedTimes,
    goroutines: Vec<i64>,
    exported: u64,
    summed: u64,
}

impl RequestTimes {
    fn new(request: Interval, owner: i64) -> Self {
        RequestTimes {
            request,
            owner,
            sched: SchedTimes::default(),
            goroutines: Vec::new(),
            exported: 0,
            summed: 0,
        }
    }
}

/// An ended task held for late logs.
struct Held {
    id: u64,
    span: Open,
    end: u64,
}

/// What the mapping follows of one goroutine.
#[derive(Default)]
struct GoroutineState {
    /// Open regions, innermost last.
    regions: Vec<OpenRegion>,
    /// Tasks it began and has not ended, innermost last.
    tasks: Vec<u64>,
    /// Its current not-running period, while it has a task or is in a
    /// joined request: since when, in which state.
    period: Option<Period>,
    /// Why it blocked, while it is blocked in a region or task (for the
    /// `goroutine.unblock` event).
    block_reason: Option<String>,
}

impl GoroutineState {
    fn is_empty(&self) -> bool {
        self.regions.is_empty()
            && self.tasks.is_empty()
            && self.period.is_none()
            && self.block_reason.is_none()
    }
}

struct OpenRegion {
    task: u64,
    name: Vec<u8>,
    span: Open,
}

/// A stack's attributes (`code.function.name`, `code.file.path`,
/// `code.line.number`, `code.stacktrace.frames`), encoded once per stack
/// and generation, as span attributes and as event attributes.
struct StackAttrs {
    span: Vec<u8>,
    event: Vec<u8>,
}

/// Converts trace time to wall time (Unix ns).
#[derive(Debug, Clone, Copy)]
struct Clock {
    trace: i64,
    wall: i64,
}

impl Clock {
    fn wall(&self, t: i64) -> u64 {
        self.wall.saturating_add(t.wrapping_sub(self.trace)).max(0) as u64
    }
}

fn system_time(ns: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(ns)
}

/// Bytes [`Mapper::emit`] writes beyond the span's attributes so far, its
/// name, the options' attributes, its events and its scheduling sums: ids,
/// kind, times, flags, and the attributes it adds (most spans: more only
/// grows the batch's buffer).
const EMIT_ROOM: usize = 128;
/// Bytes of a task's scheduling sums, most tasks.
const SCHED_ROOM: usize = 192;
/// A span's attributes buffer, as it opens: room beyond its stack's
/// attributes for those added before it ends (a task's ID and parent ID).
const OPEN_ROOM: usize = 96;
/// Span buffers kept for reuse, and the largest kept.
const POOLED_BUFFERS: usize = 1024;
const POOLED_BUFFER_MAX: usize = 16 << 10;
/// A batch is handed over once this large, whatever its span count (a
/// span's events can make it large).
const BATCH_BYTES_MAX: usize = 4 << 20;

/// The first allocation of a span's events: most spans with any have a
/// few.
const EVENTS_ROOM: usize = 1024;

/// `Span.flags`: sampled, and the parent known not to be remote
/// (`SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`).
const SPAN_FLAGS: u32 = 0x01 | 0x100;

fn lossy(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

struct Mapper<'a> {
    opts: &'a SpanOptions,
    sink: &'a mut dyn FnMut(SpanBatch),
    /// Spans not yet handed to the sink (up to [`SPAN_BATCH`]).
    out: SpanBatch,
    /// Buffers of spans already written, for the next ones to open (at
    /// most [`POOLED_BUFFERS`]).
    pool: Vec<Vec<u8>>,
    /// The size of the last batch handed over.
    batch_bytes: usize,
    ids: Ids,
    /// [`SpanOptions::extra_attributes`], encoded once.
    extra: Vec<u8>,
    /// A span event being written.
    scratch: Vec<u8>,
    clock: Option<Clock>,
    approximate: bool,
    first_time: Option<i64>,
    /// Wall-clock time of the first event (the clock of its generation).
    first_wall: u64,
    last_time: i64,
    tasks: IdMap<u64, Open>,
    ended_tasks: IdMap<u64, (TraceId, SpanId)>,
    ended_order: VecDeque<u64>,
    /// Ended tasks not yet exported, oldest first (a late log searches it
    /// from the newest; a deque keeps task ends cheap, which are many).
    held: VecDeque<Held>,
    held_events: usize,
    /// Per goroutine: its open regions, tasks, current period (one table:
    /// a goroutine's state change, the most frequent event by far, looks
    /// it up once or twice).
    goroutines: IdMap<i64, GoroutineState>,
    ranges: Vec<((Vec<u8>, Resource), Open)>,
    /// Joined requests' goroutine time, by the request's span ID.
    requests: IdMap<u64, RequestTimes>,
    /// Attributes derived from each stack of the current generation (stack
    /// IDs are per generation; cleared at each Sync).
    stack_cache: IdMap<u64, Rc<StackAttrs>>,
    summary: SpanSummary,
    joiner: Option<Joiner<'a>>,
}

impl<'a> Mapper<'a> {
    fn new(
        opts: &'a SpanOptions,
        sink: &'a mut dyn FnMut(SpanBatch),
        joiner: Option<Joiner<'a>>,
    ) -> Self {
        Mapper {
            opts,
            sink,
            out: SpanBatch::default(),
            pool: Vec::new(),
            batch_bytes: 0,
            ids: Ids(rand::random::<u64>()),
            extra: encode_attributes(&opts.extra_attributes, AttrField::SPAN),
            scratch: Vec::with_capacity(512),
            clock: None,
            approximate: false,
            first_time: None,
            first_wall: 0,
            last_time: 0,
            tasks: IdMap::default(),
            ended_tasks: IdMap::default(),
            ended_order: VecDeque::new(),
            held: VecDeque::new(),
            held_events: 0,
            goroutines: IdMap::default(),
            ranges: Vec::new(),
            requests: IdMap::default(),
            stack_cache: IdMap::default(),
            summary: SpanSummary::default(),
            joiner,
        }
    }

    fn wall(&self, t: i64) -> u64 {
        match self.clock {
            Some(c) => c.wall(t),
            None => 0,
        }
    }

    fn event(&mut self, e: &Event<'_>) {
        let t = e.time();
        let first = self.first_time.is_none();
        if first {
            self.first_time = Some(t);
        }
        self.last_time = t;
        match e.kind() {
            EventKind::Sync => self.sync(e),
            EventKind::TaskBegin => self.task_begin(e),
            EventKind::TaskEnd => self.task_end(e),
            EventKind::RegionBegin => self.region_begin(e),
            EventKind::RegionEnd => self.region_end(e),
            EventKind::Log => self.log(e),
            EventKind::RangeBegin | EventKind::RangeActive => self.range_begin(e),
            EventKind::RangeEnd => self.range_end(e),
            EventKind::StateTransition => self.transition(e),
            _ => {}
        }
        if first {
            // After the first Sync has set the clock.
            self.first_wall = self.wall(t);
        }
    }

    fn sync(&mut self, e: &Event<'_>) {
        self.stack_cache.clear();
        let Some(s) = e.sync() else { return };
        if let Some(c) = s.clock_snapshot {
            let wall = if c.wall_sec >= 0 {
                c.wall_sec
                    .saturating_mul(1_000_000_000)
                    .saturating_add(c.wall_nsec)
            } else {
                0
            };
            self.clock = Some(Clock {
                trace: c.trace,
                wall,
            });
            self.approximate = false;
        } else if self.clock.is_none() {
            let anchor = self.opts.anchor_wall_time.unwrap_or_else(SystemTime::now);
            self.clock = Some(Clock {
                trace: e.time(),
                wall: i64::try_from(unix_ns(anchor)).unwrap_or(i64::MAX),
            });
            self.approximate = true;
            self.summary.approximate_time = true;
        }
    }

    /// The attributes of stack `st` (none for no stack), from the cache.
    fn stack_attrs(&mut self, st: &Stack<'_>) -> Option<Rc<StackAttrs>> {
        let id = st.id();
        if id == 0 {
            return None;
        }
        if let Some(cached) = self.stack_cache.get(&id) {
            return Some(Rc::clone(cached));
        }
        let mut attrs = StackAttrs {
            span: Vec::new(),
            event: Vec::new(),
        };
        let mut frames = st.frames();
        if let Some(top) = frames.next() {
            let list: Vec<String> = if self.opts.max_frames > 0 {
                std::iter::once(top)
                    .chain(frames)
                    .take(self.opts.max_frames)
                    .map(|f| format!("{} ({}:{})", lossy(f.func), lossy(f.file), f.line))
                    .collect()
            } else {
                Vec::new()
            };
            for (out, field) in [
                (&mut attrs.span, AttrField::SPAN),
                (&mut attrs.event, AttrField::EVENT),
            ] {
                attr_str(out, field, "code.function.name", &lossy(top.func));
                attr_str(out, field, "code.file.path", &lossy(top.file));
                attr_int(out, field, "code.line.number", top.line as i64);
                if self.opts.max_frames > 0 {
                    attr_str_array(out, field, "code.stacktrace.frames", &list);
                }
            }
        }
        let attrs = Rc::new(attrs);
        self.stack_cache.insert(id, Rc::clone(&attrs));
        Some(attrs)
    }

    fn open(
        &mut self,
        kind: Kind,
        name: String,
        parent: Option<(TraceId, SpanId)>,
        e: &Event<'_>,
        begin_missing: bool,
    ) -> Open {
        let (trace_id, parent) = match parent {
            Some((t, s)) => (t, s),
            None => (self.ids.trace(), SpanId::INVALID),
        };
        // The span's bytes begin with its attributes: room for the rest
        // of it, so that emitting it rarely grows the buffer.
        let stack = if begin_missing {
            None
        } else {
            self.stack_attrs(&e.stack())
        };
        let mut attrs = self.buffer(OPEN_ROOM + stack.as_ref().map_or(0, |s| s.span.len()));
        if let Some(stack) = stack {
            attrs.extend_from_slice(&stack.span);
        }
        Open {
            trace_id,
            span_id: self.ids.span(),
            parent,
            name,
            kind,
            start: if begin_missing {
                self.first_wall
            } else {
                self.wall(e.time())
            },
            begin_missing,
            goroutine: e.goroutine(),
            attrs,
            events: Vec::new(),
            event_count: 0,
            dropped_events: 0,
            sched: None,
        }
    }

    /// Writes `o` as an OTLP `Span` message and hands it to the sink.
    fn emit(&mut self, o: Open, end: u64, end_missing: bool) {
        match o.kind {
            Kind::Task => self.summary.tasks += 1,
            Kind::Region => self.summary.regions += 1,
            Kind::Range => self.summary.ranges += 1,
            Kind::Period => self.summary.periods += 1,
            Kind::Breakdown => self.summary.breakdowns += 1,
        }
        self.summary.spans += 1;
        let end = end.max(o.start);
        let sched = if o.sched.is_some() { SCHED_ROOM } else { 0 };
        if self.out.is_empty() {
            // Room for a batch like the last one.
            self.out = SpanBatch::with_capacity(SPAN_BATCH, self.batch_bytes);
        }
        let b = &mut self.out.bytes;
        b.reserve(
            o.attrs.len() + EMIT_ROOM + sched + o.name.len() + self.extra.len() + o.events.len(),
        );
        // The attributes so far come first (fields may come in any order).
        b.extend_from_slice(&o.attrs);
        put_len_field(b, 1, &o.trace_id.to_bytes());
        put_len_field(b, 2, &o.span_id.to_bytes());
        if o.parent != SpanId::INVALID {
            put_len_field(b, 4, &o.parent.to_bytes());
        }
        if !o.name.is_empty() {
            put_len_field(b, 5, o.name.as_bytes());
        }
        put_tag(b, 6, VARINT);
        put_varint(b, 1); // SPAN_KIND_INTERNAL
        put_tag(b, 7, FIXED64);
        b.extend_from_slice(&o.start.to_le_bytes());
        put_tag(b, 8, FIXED64);
        b.extend_from_slice(&end.to_le_bytes());
        let f = AttrField::SPAN;
        attr_int(b, f, "goroutine.id", o.goroutine);
        attr_str(b, f, "trace.event.kind", o.kind.as_str());
        if o.begin_missing || end_missing {
            attr_bool(b, f, "go.trace.truncated", true);
            let side = match (o.begin_missing, end_missing) {
                (true, true) => "both",
                (true, false) => "begin",
                _ => "end",
            };
            attr_str(b, f, "go.trace.truncated.side", side);
            self.summary.truncated += 1;
        }
        if self.approximate {
            attr_bool(b, f, "go.trace.time.approximate", true);
        }
        b.extend_from_slice(&self.extra);
        if let Some(s) = &o.sched {
            s.attributes(b);
        }
        b.extend_from_slice(&o.events);
        if o.dropped_events > 0 {
            put_tag(b, 12, VARINT);
            put_varint(b, u64::from(o.dropped_events));
        }
        // Status unset: an empty message, as the SDK's conversion writes it.
        b.extend_from_slice(&[15 << 3 | LEN, 0]);
        put_tag(b, 16, FIXED32);
        b.extend_from_slice(&SPAN_FLAGS.to_le_bytes());
        self.out.push_end(o.trace_id);
        self.recycle(o.attrs);
        self.recycle(o.events);
        if self.out.len() >= SPAN_BATCH || self.out.bytes.len() >= BATCH_BYTES_MAX {
            self.hand_over();
        }
    }

    /// An empty buffer with room for `capacity` bytes, from the pool.
    fn buffer(&mut self, capacity: usize) -> Vec<u8> {
        match self.pool.pop() {
            Some(mut buf) => {
                buf.reserve(capacity);
                buf
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Keeps a span's buffer for the next span (small ones only).
    fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > 0
            && buf.capacity() <= POOLED_BUFFER_MAX
            && self.pool.len() < POOLED_BUFFERS
        {
            buf.clear();
            self.pool.push(buf);
        }
    }

    /// Hands the spans written so far to the sink.
    fn hand_over(&mut self) {
        if !self.out.is_empty() {
            let batch = std::mem::take(&mut self.out);
            self.batch_bytes = batch.bytes.len();
            (self.sink)(batch);
        }
    }

    /// The agent's span goroutine `g` is in at the event, if joining.
    fn joined_parent(&mut self, g: i64, e: &Event<'_>) -> Option<(TraceId, SpanId)> {
        let t = self.wall(e.time());
        let p = self.joiner.as_mut()?.parent(g, t)?;
        self.summary.joined += 1;
        Some(p)
    }

    fn task_name(typ: &[u8], id: u64) -> String {
        if typ.is_empty() {
            format!("task {id}")
        } else {
            lossy(typ).into_owned()
        }
    }

    /// The span of task `id`: open, recently ended, or a placeholder for a
    /// task whose begin is not in the trace.
    fn task_span(&mut self, id: u64, e: &Event<'_>) -> Option<(TraceId, SpanId)> {
        if id == NO_TASK || id == super::BACKGROUND_TASK {
            return None;
        }
        if let Some(o) = self.tasks.get(&id) {
            return Some((o.trace_id, o.span_id));
        }
        if let Some(ids) = self.ended_tasks.get(&id) {
            return Some(*ids);
        }
        let mut o = self.open(Kind::Task, Self::task_name(&[], id), None, e, true);
        o.goroutine = NO_GOROUTINE;
        attr_int(&mut o.attrs, AttrField::SPAN, "go.task.id", id as i64);
        let ids = (o.trace_id, o.span_id);
        self.tasks.insert(id, o);
        Some(ids)
    }

    fn task_begin(&mut self, e: &Event<'_>) {
        let Some(t) = e.task() else { return };
        let parent = match self.task_span(t.parent, e) {
            Some(p) => Some(p),
            None => self.joined_parent(e.goroutine(), e),
        };
        let mut o = self.open(Kind::Task, Self::task_name(t.typ, t.id), parent, e, false);
        attr_int(&mut o.attrs, AttrField::SPAN, "go.task.id", t.id as i64);
        if t.parent != NO_TASK {
            attr_int(
                &mut o.attrs,
                AttrField::SPAN,
                "go.task.parent_id",
                t.parent as i64,
            );
        }
        if let Some(old) = self.tasks.remove(&t.id) {
            // A placeholder made by a reference that came first: the task
            // keeps its IDs (its children link to them) and its events, and
            // stays the root of its trace.
            o.trace_id = old.trace_id;
            o.span_id = old.span_id;
            o.parent = old.parent;
            let mut events = old.events;
            events.extend_from_slice(&o.events);
            o.events = events;
            o.event_count += old.event_count;
            o.dropped_events = old.dropped_events;
        }
        self.tasks.insert(t.id, o);
        self.goroutines
            .entry(e.goroutine())
            .or_default()
            .tasks
            .push(t.id);
    }

    fn remember_ended(&mut self, id: u64, ids: (TraceId, SpanId)) {
        if self.ended_tasks.insert(id, ids).is_none() {
            self.ended_order.push_back(id);
        }
        while self.ended_order.len() > ENDED_TASKS_KEPT {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended_tasks.remove(&old);
            }
        }
    }

    fn task_end(&mut self, e: &Event<'_>) {
        let Some(t) = e.task() else { return };
        let mut o = match self.tasks.remove(&t.id) {
            Some(o) => o,
            None => {
                let parent = self.task_span(t.parent, e);
                let mut o = self.open(Kind::Task, Self::task_name(t.typ, t.id), parent, e, true);
                attr_int(&mut o.attrs, AttrField::SPAN, "go.task.id", t.id as i64);
                o
            }
        };
        if o.begin_missing && !t.typ.is_empty() && o.name == Self::task_name(&[], t.id) {
            o.name = lossy(t.typ).into_owned();
        }
        if o.goroutine == NO_GOROUTINE || o.begin_missing {
            o.goroutine = e.goroutine();
        } else if o.goroutine != e.goroutine() {
            attr_int(
                &mut o.attrs,
                AttrField::SPAN,
                "go.task.end.goroutine.id",
                e.goroutine(),
            );
        }
        if let Some(list) = self.goroutines.get_mut(&o.goroutine).map(|s| &mut s.tasks)
            && let Some(i) = list.iter().rposition(|x| *x == t.id)
        {
            list.remove(i);
        }
        self.remember_ended(t.id, (o.trace_id, o.span_id));
        self.hold(t.id, o, self.wall(e.time()));
    }

    /// Holds an ended task for logs that come after its end; exports the
    /// oldest held tasks beyond the bounds.
    fn hold(&mut self, id: u64, span: Open, end: u64) {
        self.held_events += span.event_count;
        self.held.push_back(Held { id, span, end });
        self.bound_held();
    }

    fn bound_held(&mut self) {
        while self.held.len() > HELD_TASKS_MAX || self.held_events > HELD_EVENTS_MAX {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            self.held_events -= h.span.event_count;
            self.emit(h.span, h.end, false);
        }
    }

    /// The goroutine's current context: its innermost region, else the
    /// innermost task it began.
    fn context_of(&mut self, g: i64) -> Option<&mut Open> {
        let state = self.goroutines.get_mut(&g)?;
        if !state.regions.is_empty() {
            return state.regions.last_mut().map(|r| &mut r.span);
        }
        let id = *state.tasks.last()?;
        self.tasks.get_mut(&id)
    }

    /// Goroutine `g`'s innermost open region.
    fn region_of(&self, g: i64) -> Option<&OpenRegion> {
        self.goroutines.get(&g)?.regions.last()
    }

    fn context_ids(&mut self, g: i64) -> Option<(TraceId, SpanId)> {
        self.context_of(g).map(|o| (o.trace_id, o.span_id))
    }

    fn region_parent(&mut self, g: i64, task: u64, e: &Event<'_>) -> Option<(TraceId, SpanId)> {
        if let Some(r) = self.region_of(g)
            && (r.task == task || task == super::BACKGROUND_TASK)
        {
            return Some((r.span.trace_id, r.span.span_id));
        }
        self.task_span(task, e)
    }

    fn region_begin(&mut self, e: &Event<'_>) {
        let Some(r) = e.region() else { return };
        let g = e.goroutine();
        let parent = match self.region_parent(g, r.task, e) {
            Some(p) => Some(p),
            None => self.joined_parent(g, e),
        };
        let mut o = self.open(Kind::Region, lossy(r.typ).into_owned(), parent, e, false);
        attr_int(&mut o.attrs, AttrField::SPAN, "go.task.id", r.task as i64);
        self.goroutines
            .entry(g)
            .or_default()
            .regions
            .push(OpenRegion {
                task: r.task,
                name: r.typ.to_vec(),
                span: o,
            });
    }

    fn region_end(&mut self, e: &Event<'_>) {
        let Some(r) = e.region() else { return };
        let g = e.goroutine();
        let matched = self
            .region_of(g)
            .is_some_and(|top| top.task == r.task && top.name == r.typ);
        if matched {
            if let Some(top) = self.goroutines.get_mut(&g).and_then(|s| s.regions.pop()) {
                self.emit(top.span, self.wall(e.time()), false);
            }
            return;
        }
        // Began before the trace: parent is the task (regions still open
        // on this goroutine began later, so they are inside it).
        let parent = self.task_span(r.task, e);
        let mut o = self.open(Kind::Region, lossy(r.typ).into_owned(), parent, e, true);
        attr_int(&mut o.attrs, AttrField::SPAN, "go.task.id", r.task as i64);
        self.emit(o, self.wall(e.time()), false);
    }

    /// Starts a span event in the scratch buffer: its time and name; the
    /// caller adds its attributes (`AttrField::EVENT`).
    fn start_event(&mut self, time: u64, name: &str) -> Vec<u8> {
        let mut ev = std::mem::take(&mut self.scratch);
        ev.clear();
        put_tag(&mut ev, 1, FIXED64);
        ev.extend_from_slice(&time.to_le_bytes());
        if !name.is_empty() {
            put_len_field(&mut ev, 2, name.as_bytes());
        }
        ev
    }

    fn log(&mut self, e: &Event<'_>) {
        let Some(l) = e.log() else { return };
        let g = e.goroutine();
        let name = if l.category.is_empty() {
            Cow::Borrowed("log")
        } else {
            lossy(l.category)
        };
        let mut ev = self.start_event(self.wall(e.time()), &name);
        let f = AttrField::EVENT;
        attr_str(&mut ev, f, "go.log.category", &lossy(l.category));
        attr_str(&mut ev, f, "go.log.message", &lossy(l.message));
        attr_int(&mut ev, f, "goroutine.id", g);
        if l.task != super::BACKGROUND_TASK && l.task != NO_TASK {
            attr_int(&mut ev, f, "go.task.id", l.task as i64);
        }
        if let Some(stack) = self.stack_attrs(&e.stack()) {
            ev.extend_from_slice(&stack.event);
        }
        self.attach_log(g, l.task, &ev, e);
        self.scratch = ev;
    }

    /// Attaches an encoded log event: to the goroutine's innermost region
    /// of the log's task, else to the task (open, or ended and held).
    fn attach_log(&mut self, g: i64, task: u64, ev: &[u8], e: &Event<'_>) {
        let in_region = self
            .region_of(g)
            .is_some_and(|r| r.task == task || task == super::BACKGROUND_TASK);
        if in_region {
            if let Some(r) = self
                .goroutines
                .get_mut(&g)
                .and_then(|s| s.regions.last_mut())
            {
                r.span.add_event(ev);
                self.summary.logs += 1;
            }
            return;
        }
        if self.task_span(task, e).is_some() {
            if let Some(o) = self.tasks.get_mut(&task) {
                o.add_event(ev);
                self.summary.logs += 1;
                return;
            }
            if let Some(h) = self.held.iter_mut().rev().find(|h| h.id == task) {
                // A log after its task's end (Go attributes it to the task).
                let before = h.span.event_count;
                h.span.add_event(ev);
                self.held_events += h.span.event_count - before;
                self.summary.logs += 1;
                self.bound_held();
                return;
            }
        }
        self.summary.unattached_logs += 1;
    }

    /// Whether goroutine `g` has a context (region or task) for events.
    fn has_context(&self, g: i64) -> bool {
        self.goroutines.get(&g).is_some_and(|s| {
            !s.regions.is_empty() || s.tasks.last().is_some_and(|id| self.tasks.contains_key(id))
        })
    }

    fn transition(&mut self, e: &Event<'_>) {
        let Some(s) = e.state_transition() else {
            return;
        };
        let Resource::Goroutine(g) = s.resource else {
            return;
        };
        if s.from == goroutine_state::NOT_EXIST
            && s.to == goroutine_state::RUNNABLE
            && e.goroutine() != NO_GOROUTINE
            && self.joiner.is_some()
        {
            let t = self.wall(e.time());
            if let Some(j) = self.joiner.as_mut() {
                j.spawned(e.goroutine(), g, t);
            }
        }
        self.sched_period(g, &s, e.time(), e.goroutine());
        if s.to == goroutine_state::NOT_EXIST
            && self
                .goroutines
                .get(&g)
                .is_some_and(GoroutineState::is_empty)
        {
            self.goroutines.remove(&g);
            return;
        }
        let blocked = s.to == goroutine_state::WAITING && s.from == goroutine_state::RUNNING;
        let (name, reason) = if blocked {
            // Only a goroutine blocked in a region or task is followed (it
            // cannot gain one while blocked).
            if !self.has_context(g) {
                return;
            }
            let reason = lossy(s.reason);
            if let Some(state) = self.goroutines.get_mut(&g) {
                state.block_reason = Some(reason.clone().into_owned());
            }
            ("goroutine.block", reason)
        } else if s.from == goroutine_state::WAITING && s.to == goroutine_state::RUNNABLE {
            let reason = self
                .goroutines
                .get_mut(&g)
                .and_then(|s| s.block_reason.take())
                .unwrap_or_default();
            if !self.has_context(g) {
                return;
            }
            ("goroutine.unblock", Cow::Owned(reason))
        } else {
            return;
        };
        let mut ev = self.start_event(self.wall(e.time()), name);
        let f = AttrField::EVENT;
        attr_int(&mut ev, f, "goroutine.id", g);
        attr_str(&mut ev, f, "go.block.reason", &reason);
        if !blocked {
            attr_int(&mut ev, f, "go.unblocked_by.goroutine.id", e.goroutine());
        } else if let Some(top) = s.stack.frames().next() {
            attr_str(&mut ev, f, "code.function.name", &lossy(top.func));
            attr_int(&mut ev, f, "code.line.number", top.line as i64);
        }
        if let Some(o) = self.context_of(g) {
            o.add_event(&ev);
        }
        self.scratch = ev;
    }

    /// The innermost task goroutine `g` began and has not ended.
    fn task_of(&mut self, g: i64) -> Option<&mut Open> {
        let id = *self.goroutines.get(&g)?.tasks.last()?;
        self.tasks.get_mut(&id)
    }

    /// Follows a goroutine's not-running periods: each is added to its
    /// innermost task, and, when the goroutine is in a joined request, to
    /// that request's sums and, if long enough, exported as a span.
    fn sched_period(&mut self, g: i64, s: &super::event::StateTransition<'_>, t: i64, by: i64) {
        use goroutine_state::{RUNNABLE, SYSCALL, UNDETERMINED, WAITING};
        if matches!(s.from, RUNNABLE | WAITING | SYSCALL)
            && let Some(p) = self.goroutines.get_mut(&g).and_then(|s| s.period.take())
        {
            let by = (p.state == WAITING && s.to == RUNNABLE).then_some(by);
            self.end_period(g, p, t, by, false);
        }
        if matches!(s.to, RUNNABLE | WAITING | SYSCALL) {
            let detail = self.period_detail(g, t, &s.stack);
            if detail.is_some() || self.task_of(g).is_some() {
                let reason = if s.to == WAITING {
                    lossy(s.reason).into_owned()
                } else {
                    String::new()
                };
                self.goroutines.entry(g).or_default().period = Some(Period {
                    state: s.to,
                    since: t,
                    reason,
                    begin_missing: s.from == UNDETERMINED,
                    detail,
                });
            }
        }
    }

    /// The joined request goroutine `g` is in at `t`, with the period
    /// span's parent and the goroutine's stack; `None` when not joining or
    /// outside the agent's spans (an inherited request counts until it
    /// ends).
    fn period_detail(&mut self, g: i64, t: i64, stack: &Stack<'_>) -> Option<Box<PeriodDetail>> {
        let wall = self.wall(t);
        let (request, owner) = self.joiner.as_mut()?.request(g, wall)?;
        if system_time(wall) > request.end {
            return None;
        }
        let parent = self
            .context_ids(g)
            .unwrap_or((request.trace_id, request.span_id));
        Some(Box::new(PeriodDetail {
            parent,
            request,
            owner,
            stack: self.stack_attrs(stack),
        }))
    }

    /// Ends a period at `t`: sums it into its goroutine's innermost task
    /// (unless the trace ended first: `end_missing`), and into its joined
    /// request, exported as a span if at least [`SpanOptions::period_min`]
    /// long. `by`: the goroutine that unblocked it.
    fn end_period(&mut self, g: i64, p: Period, t: i64, by: Option<i64>, end_missing: bool) {
        use goroutine_state::{RUNNABLE, SYSCALL};
        let d = t.saturating_sub(p.since).max(0);
        if !end_missing && let Some(task) = self.task_of(g) {
            task.sched
                .get_or_insert_with(Box::default)
                .add(p.state, &p.reason, d);
        }
        let Some(detail) = p.detail else { return };
        let key = u64::from_be_bytes(detail.request.span_id.to_bytes());
        let req = self
            .requests
            .entry(key)
            .or_insert_with(|| RequestTimes::new(detail.request, detail.owner));
        req.sched.add(p.state, &p.reason, d);
        if !req.goroutines.contains(&g) {
            req.goroutines.push(g);
        }
        if d < self.opts.period_min.as_nanos() as i64 {
            req.summed += 1;
            self.summary.periods_summed += 1;
            return;
        }
        req.exported += 1;
        let (name, state) = match p.state {
            RUNNABLE => ("runnable".to_string(), "runnable"),
            SYSCALL => ("syscall".to_string(), "syscall"),
            _ if p.reason.is_empty() => ("blocked".to_string(), "blocked"),
            _ => (format!("blocked: {}", p.reason), "blocked"),
        };
        let stack = detail.stack.as_deref().map_or(&[][..], |s| &s.span[..]);
        let mut attrs = self.buffer(OPEN_ROOM + stack.len());
        attrs.extend_from_slice(stack);
        let f = AttrField::SPAN;
        attr_str(&mut attrs, f, "go.period.state", state);
        if state == "blocked" {
            attr_str(&mut attrs, f, "go.block.reason", &p.reason);
        }
        if let Some(by) = by.filter(|b| *b != NO_GOROUTINE) {
            attr_int(&mut attrs, f, "go.unblocked_by.goroutine.id", by);
        }
        let o = Open {
            trace_id: detail.parent.0,
            span_id: self.ids.span(),
            parent: detail.parent.1,
            name,
            kind: Kind::Period,
            start: self.wall(p.since),
            begin_missing: p.begin_missing,
            goroutine: g,
            attrs,
            events: Vec::new(),
            event_count: 0,
            dropped_events: 0,
            sched: None,
        };
        self.emit(o, self.wall(t), end_missing);
    }

    /// At the end of the trace: the periods still going on, then one
    /// `goroutine time` span per joined request, child of the request,
    /// over the part of it the trace covers, with its goroutines' sums.
    fn finish_requests(&mut self) {
        let mut open: Vec<(i64, Period)> = self
            .goroutines
            .iter_mut()
            .filter_map(|(g, s)| Some((*g, s.period.take()?)))
            .filter(|(_, p)| p.detail.is_some())
            .collect();
        open.sort_by_key(|(g, _)| *g);
        for (g, p) in open {
            self.end_period(g, p, self.last_time, None, true);
        }
        let mut reqs: Vec<RequestTimes> = self.requests.drain().map(|(_, r)| r).collect();
        reqs.sort_by_key(|r| r.request.start);
        let (first, last) = (self.first_wall, self.wall(self.last_time));
        for mut r in reqs {
            r.goroutines.sort_unstable();
            let (start, end) = (unix_ns(r.request.start), unix_ns(r.request.end));
            let begin_missing = start < first;
            let end_missing = end > last;
            let mut attrs = self.buffer(OPEN_ROOM + SCHED_ROOM + 128);
            let f = AttrField::SPAN;
            attr_int(&mut attrs, f, "go.goroutines", r.goroutines.len() as i64);
            attr_int_array(&mut attrs, f, "go.goroutine.ids", &r.goroutines);
            attr_int(&mut attrs, f, "go.periods.exported", r.exported as i64);
            attr_int(&mut attrs, f, "go.periods.summed", r.summed as i64);
            r.sched.attributes(&mut attrs);
            let o = Open {
                trace_id: r.request.trace_id,
                span_id: self.ids.span(),
                parent: r.request.span_id,
                name: "goroutine time".to_string(),
                kind: Kind::Breakdown,
                start: start.max(first),
                begin_missing,
                goroutine: r.owner,
                attrs,
                events: Vec::new(),
                event_count: 0,
                dropped_events: 0,
                sched: None,
            };
            self.emit(o, end.min(last), end_missing);
        }
    }

    fn range_begin(&mut self, e: &Event<'_>) {
        let Some(r) = e.range() else { return };
        let key = (r.name.to_vec(), r.scope);
        if self.ranges.iter().any(|(k, _)| *k == key) {
            // RangeActive at a generation boundary for a range we know.
            return;
        }
        let active = e.kind() == EventKind::RangeActive;
        let parent = match r.scope {
            Resource::Goroutine(g) => match self.context_ids(g) {
                Some(p) => Some(p),
                None if !active => self.joined_parent(g, e),
                None => None,
            },
            _ => None,
        };
        let mut o = self.open(Kind::Range, lossy(&r.name).into_owned(), parent, e, active);
        if let Resource::Goroutine(g) = r.scope {
            o.goroutine = g;
        }
        match r.scope {
            Resource::Proc(p) => attr_int(&mut o.attrs, AttrField::SPAN, "go.proc.id", p),
            Resource::Goroutine(_) | Resource::None | Resource::Thread(_) => {}
        }
        self.ranges.push((key, o));
    }

    fn range_end(&mut self, e: &Event<'_>) {
        let Some(r) = e.range() else { return };
        let key = (r.name.to_vec(), r.scope);
        let mut o = match self.ranges.iter().position(|(k, _)| *k == key) {
            Some(i) => self.ranges.swap_remove(i).1,
            None => {
                let parent = match r.scope {
                    Resource::Goroutine(g) => self.context_ids(g),
                    _ => None,
                };
                self.open(Kind::Range, lossy(&r.name).into_owned(), parent, e, true)
            }
        };
        for (k, v) in e.range_attributes() {
            let key = format!("go.gc.{}", k.replace(' ', "_"));
            attr_int(&mut o.attrs, AttrField::SPAN, &key, v as i64);
        }
        if let Resource::Goroutine(g) = r.scope
            && r.name.as_ref() == b"GC mark assist"
            && !o.begin_missing
        {
            let end = self.wall(e.time());
            let d = end.saturating_sub(o.start) as i64;
            if let Some(task) = self.task_of(g) {
                task.sched.get_or_insert_with(Box::default).assist_ns += d;
            }
            if let Some((request, owner)) = self.joiner.as_mut().and_then(|j| j.request(g, end))
                && system_time(o.start) <= request.end
            {
                let key = u64::from_be_bytes(request.span_id.to_bytes());
                let req = self
                    .requests
                    .entry(key)
                    .or_insert_with(|| RequestTimes::new(request, owner));
                req.sched.assist_ns += d;
                if !req.goroutines.contains(&g) {
                    req.goroutines.push(g);
                }
            }
        }
        self.emit(o, self.wall(e.time()), false);
    }

    fn finish(&mut self) {
        self.finish_requests();
        let end = self.wall(self.last_time);
        let mut gs: Vec<i64> = self
            .goroutines
            .iter()
            .filter(|(_, s)| !s.regions.is_empty())
            .map(|(g, _)| *g)
            .collect();
        gs.sort_unstable();
        for g in gs {
            while let Some(r) = self.goroutines.get_mut(&g).and_then(|s| s.regions.pop()) {
                self.emit(r.span, end, true);
            }
        }
        for (_, o) in std::mem::take(&mut self.ranges) {
            self.emit(o, end, true);
        }
        let mut tasks: Vec<(u64, Open)> = self.tasks.drain().collect();
        tasks.sort_by_key(|(id, _)| *id);
        for (_, o) in tasks {
            self.emit(o, end, true);
        }
        while let Some(h) = self.held.pop_front() {
            self.emit(h.span, h.end, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(spans: &[(u8, &[u8])]) -> SpanBatch {
        let mut b = SpanBatch::default();
        for (id, bytes) in spans {
            b.bytes.extend_from_slice(bytes);
            b.push_end(TraceId::from_bytes([*id; 16]));
        }
        b
    }

    fn contents(b: &SpanBatch) -> Vec<(u8, Vec<u8>)> {
        b.iter()
            .map(|s| (s.trace_id.to_bytes()[0], s.bytes.to_vec()))
            .collect()
    }

    #[test]
    fn a_batch_keeps_each_span_whole_through_sampling() {
        let mut b = batch(&[(1, b"aa"), (2, b"b"), (3, b""), (4, b"dddd"), (5, b"e")]);
        assert_eq!(b.len(), 5);
        b.retain(|id| id.to_bytes()[0] % 2 == 0 || id.to_bytes()[0] == 5);
        assert_eq!(
            contents(&b),
            vec![
                (2, b"b".to_vec()),
                (4, b"dddd".to_vec()),
                (5, b"e".to_vec())
            ]
        );
        let chunk = b.clone().into_chunk();
        assert_eq!(chunk.bytes, b"bdddde");
        assert_eq!(chunk.ends, vec![1, 5, 6]);
        b.retain(|_| false);
        assert!(b.is_empty());
        assert!(b.into_chunk().bytes.is_empty());
    }
}
