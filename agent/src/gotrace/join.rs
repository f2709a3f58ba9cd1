//! Joining a decoded trace to the agent's own spans of the same process:
//! a task begun on a goroutine while one of the agent's spans was open on it
//! (or inherited by it from the goroutine that created it) becomes that
//! span's child, in its trace; regions and logs follow their task.
//!
//! [`JoinIndex`] holds, per goroutine, the time intervals of the agent's
//! spans (wall clock, as exported). [`LiveSpans`] reads them from the
//! agent's JSONL output (`--output jsonl`, OTLP JSON lines), keyed by
//! process, for `agent decode --join`.
//!
//! Goroutine IDs are unique within a process for its lifetime, so
//! (process, goroutine, time) names one span. The trace's wall times come
//! from its clock snapshots (Go 1.25+), the spans' from the agent's clock:
//! both are CLOCK_MONOTONIC readings converted to CLOCK_REALTIME, so they
//! agree to well under the microseconds between a handler's start and the
//! task it creates.

use std::collections::{BTreeSet, VecDeque};
use std::io::BufRead;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;

use super::IdMap;

/// How many goroutine creations a span is inherited through at most (as
/// the live agent's `spans::goroutines::MAX_DEPTH`).
pub const MAX_INHERIT_DEPTH: u8 = 4;
/// How long a created goroutine keeps an inherited span (as the live
/// agent's `spans::goroutines::INHERIT_TTL_NS`).
pub const INHERIT_TTL: Duration = Duration::from_secs(30);
/// Intervals scanned back from the last one begun before a time, looking
/// for one still open then (spans nest shallowly on a goroutine).
const MAX_SCAN_BACK: usize = 64;

/// One span of the agent: when it was open, and its ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub start: SystemTime,
    pub end: SystemTime,
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

/// The agent's spans of one process, by goroutine, sorted by start.
#[derive(Debug, Default, Clone)]
pub struct JoinIndex {
    /// Index into `tracks`: a small entry, so that the table of a few
    /// tens of thousands of goroutines stays in cache (a lookup per
    /// goroutine state change of a decoded trace).
    by_goroutine: IdMap<i64, u32>,
    tracks: Vec<Track>,
    spans: usize,
}

/// One goroutine's spans, sorted by start, with their times in Unix ns
/// beside them (a lookup compares integers in two dense arrays) and how far
/// the spans up to each reach: a lookup between requests stops at once
/// instead of scanning back.
#[derive(Debug, Default, Clone)]
struct Track {
    intervals: Vec<Interval>,
    start: Vec<u64>,
    end: Vec<u64>,
    /// `reach[i]`: the latest end of `intervals[..=i]`.
    reach: Vec<u64>,
}

/// A time as Unix ns (0 before the epoch).
pub(crate) fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl JoinIndex {
    /// Adds a span open on goroutine `goid`.
    pub fn add(&mut self, goid: i64, interval: Interval) {
        let next = u32::try_from(self.tracks.len()).unwrap_or(u32::MAX);
        let i = *self.by_goroutine.entry(goid).or_insert(next);
        if i == next {
            self.tracks.push(Track::default());
        }
        if let Some(track) = self.tracks.get_mut(i as usize) {
            track.intervals.push(interval);
            self.spans += 1;
        }
    }

    fn track(&self, goid: i64) -> Option<&Track> {
        self.tracks.get(*self.by_goroutine.get(&goid)? as usize)
    }

    /// Sorts the intervals; call once after the last [`add`](Self::add).
    pub fn finish(mut self) -> Self {
        for track in &mut self.tracks {
            track.intervals.sort_by_key(|i| i.start);
            track.start = track.intervals.iter().map(|i| unix_ns(i.start)).collect();
            track.end = track.intervals.iter().map(|i| unix_ns(i.end)).collect();
            let mut reach = 0;
            track.reach = track
                .end
                .iter()
                .map(|e| {
                    reach = reach.max(*e);
                    reach
                })
                .collect();
        }
        self
    }

    /// Spans indexed.
    pub fn len(&self) -> usize {
        self.spans
    }

    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }

    /// The innermost span open on `goid` at `t` (the latest begun before
    /// it that had not ended).
    pub fn open_at(&self, goid: i64, t: SystemTime) -> Option<(TraceId, SpanId)> {
        self.interval_at(goid, t).map(|i| (i.trace_id, i.span_id))
    }

    /// The innermost span open on `goid` at `t`, whole.
    pub fn interval_at(&self, goid: i64, t: SystemTime) -> Option<&Interval> {
        self.track(goid)?.at(unix_ns(t))
    }
}

impl Track {
    /// The innermost interval open at `t` (Unix ns).
    fn at(&self, t: u64) -> Option<&Interval> {
        self.at_from(t, &mut 0)
    }

    /// [`Self::at`], starting from `hint`, the spans begun by the last
    /// lookup's time (and left at this one's): a decoded trace looks a
    /// goroutine up at times that mostly increase, a few spans apart.
    fn at_from(&self, t: u64, hint: &mut u32) -> Option<&Interval> {
        let mut n = (*hint as usize).min(self.start.len());
        if n > 0 && self.start[n - 1] > t {
            n = self.start.partition_point(|s| *s <= t);
        } else {
            let mut steps = 0;
            while n < self.start.len() && self.start[n] <= t {
                n += 1;
                steps += 1;
                if steps == 8 {
                    n = self.start.partition_point(|s| *s <= t);
                    break;
                }
            }
        }
        *hint = u32::try_from(n).unwrap_or(u32::MAX);
        for i in (n.saturating_sub(MAX_SCAN_BACK)..n).rev() {
            if self.reach[i] < t {
                // None of the spans begun so far is still open.
                return None;
            }
            if self.end[i] >= t {
                return self.intervals.get(i);
            }
        }
        None
    }
}

/// Why the agent's spans could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("reading the spans failed")]
    Io(#[from] std::io::Error),
    #[error("line {line}: not an OTLP JSON trace request: {source}")]
    Json {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// The agent's spans read from its JSONL output, with their process.
#[derive(Debug, Default, Clone)]
pub struct LiveSpans {
    spans: Vec<(u32, i64, Interval)>,
}

fn int_value(v: Option<&AnyValue>) -> Option<i64> {
    match v?.value.as_ref()? {
        any_value::Value::IntValue(i) => Some(*i),
        any_value::Value::StringValue(s) => s.parse().ok(),
        _ => None,
    }
}

fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs.iter().find(|kv| kv.key == key)?.value.as_ref()
}

fn ns(t: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(t)
}

/// The goroutine, process (if the span says) and interval of one of the
/// agent's spans; `None` for a span without a goroutine or valid ids, or
/// decoded from an execution trace (`trace.event.kind`).
fn span_interval(s: &ProtoSpan) -> Option<(i64, Option<i64>, Interval)> {
    if find(&s.attributes, "trace.event.kind").is_some() {
        return None;
    }
    let goid = int_value(find(&s.attributes, "goroutine.id"))?;
    let pid = int_value(find(&s.attributes, "process.pid"));
    let interval = Interval {
        start: ns(s.start_time_unix_nano),
        end: ns(s.end_time_unix_nano),
        trace_id: TraceId::from_bytes(<[u8; 16]>::try_from(&s.trace_id[..]).ok()?),
        span_id: SpanId::from_bytes(<[u8; 8]>::try_from(&s.span_id[..]).ok()?),
    };
    if interval.trace_id == TraceId::INVALID || interval.span_id == SpanId::INVALID {
        return None;
    }
    Some((goid, pid, interval))
}

/// Spans of the live agent kept for the joins of flight-recorder dumps of
/// the same process.
pub const RECENT_SPANS_KEPT: usize = 1 << 16;

/// The last [`RECENT_SPANS_KEPT`] spans with a goroutine that one process's
/// pipeline exported, for joining its flight-recorder dumps as they are
/// captured (the export pipeline records them, see
/// `export::SpanSender::keep_recent`).
///
/// A dump's join waits until the session has drained its ring buffer past
/// the dump's end, so that the requests that ended before it are in: the
/// reader asks for a drain ([`Self::wait_drained`]), the session's loop
/// does it at once ([`Self::drain_wanted`]) and says so
/// ([`Self::mark_drained`]).
#[derive(Debug, Default)]
pub struct RecentSpans {
    spans: Mutex<VecDeque<(i64, Interval)>>,
    drain: tokio::sync::Notify,
    /// Monotonic time (the kernel's clock) at which the last complete drain
    /// began: every span that ended before it is recorded.
    drained: Mutex<u64>,
    drained_cv: Condvar,
}

impl RecentSpans {
    /// Resolves when a dump's join asks for a drain.
    pub async fn drain_wanted(&self) {
        self.drain.notified().await;
    }

    /// The session drained everything the kernel had written by `ktime_ns`.
    pub fn mark_drained(&self, ktime_ns: u64) {
        if let Ok(mut d) = self.drained.lock() {
            *d = (*d).max(ktime_ns);
            self.drained_cv.notify_all();
        }
    }

    /// Asks the session for a drain and waits until one that began after
    /// `ktime_ns` is done, or `timeout`; whether it was.
    pub fn wait_drained(&self, ktime_ns: u64, timeout: Duration) -> bool {
        self.drain.notify_one();
        let deadline = std::time::Instant::now() + timeout;
        let Ok(mut d) = self.drained.lock() else {
            return false;
        };
        while *d < ktime_ns {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.drained_cv.wait_timeout(d, left) {
                Ok((guard, _)) => d = guard,
                Err(_) => return false,
            }
        }
        true
    }

    /// Records an encoded OTLP `Span` if it has a goroutine.
    pub fn record_encoded(&self, bytes: &[u8]) {
        let Ok(span) = ProtoSpan::decode(bytes) else {
            return;
        };
        let Some((goid, _, interval)) = span_interval(&span) else {
            return;
        };
        if let Ok(mut spans) = self.spans.lock() {
            if spans.len() >= RECENT_SPANS_KEPT {
                spans.pop_front();
            }
            spans.push_back((goid, interval));
        }
    }

    /// The index of the spans recorded so far.
    pub fn index(&self) -> JoinIndex {
        let mut index = JoinIndex::default();
        if let Ok(spans) = self.spans.lock() {
            for (goid, interval) in spans.iter() {
                index.add(*goid, *interval);
            }
        }
        index.finish()
    }
}

impl LiveSpans {
    /// Reads OTLP JSON lines (one `ExportTraceServiceRequest` a line, as
    /// `--output jsonl` writes them). Kept: spans with a `goroutine.id`
    /// attribute, a valid trace and span id, and a process (`process.pid`
    /// on the resource or the span). Spans decoded from execution traces
    /// (scope `agent.gotrace`) are not joined to.
    pub fn read_jsonl(input: impl BufRead) -> Result<Self, JoinError> {
        let mut out = LiveSpans::default();
        for (i, line) in input.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let req: ExportTraceServiceRequest =
                serde_json::from_str(&line).map_err(|source| JoinError::Json {
                    line: i + 1,
                    source,
                })?;
            out.add_request(&req);
        }
        Ok(out)
    }

    /// Adds the spans of one request.
    pub fn add_request(&mut self, req: &ExportTraceServiceRequest) {
        for rs in &req.resource_spans {
            let resource_pid = rs
                .resource
                .as_ref()
                .and_then(|r| int_value(find(&r.attributes, "process.pid")));
            for ss in &rs.scope_spans {
                if ss.scope.as_ref().is_some_and(|s| s.name == "agent.gotrace") {
                    continue;
                }
                for s in &ss.spans {
                    let Some((goid, span_pid, interval)) = span_interval(s) else {
                        continue;
                    };
                    let Some(pid) = resource_pid
                        .or(span_pid)
                        .and_then(|p| u32::try_from(p).ok())
                    else {
                        continue;
                    };
                    self.spans.push((pid, goid, interval));
                }
            }
        }
    }

    /// The processes the spans come from.
    pub fn pids(&self) -> BTreeSet<u32> {
        self.spans.iter().map(|(p, _, _)| *p).collect()
    }

    /// The index of process `pid`'s spans.
    pub fn index_for(&self, pid: u32) -> JoinIndex {
        let mut index = JoinIndex::default();
        for (p, goid, interval) in &self.spans {
            if *p == pid {
                index.add(*goid, *interval);
            }
        }
        index.finish()
    }
}

/// What a goroutine inherited from its creator.
#[derive(Debug, Clone, Copy)]
struct Inherited {
    parent: Interval,
    /// The goroutine the span is open on.
    owner: i64,
    depth: u8,
    /// Unix ns.
    since: u64,
}

/// The join state of one decoding: the index and the spans goroutines
/// inherited when the trace shows their creation. Times are Unix ns.
#[derive(Debug)]
pub(crate) struct Joiner<'a> {
    index: &'a JoinIndex,
    inherited: IdMap<i64, Inherited>,
    /// Per goroutine of the trace: its track in the index ([`NO_TRACK`]:
    /// none) and where its last lookup left off. The index's own table
    /// holds every goroutine of the agent's recent spans; this one only
    /// those the trace looks up, again and again.
    cursors: IdMap<i64, (u32, u32)>,
}

/// A goroutine without spans in the index.
const NO_TRACK: u32 = u32::MAX;

impl<'a> Joiner<'a> {
    pub(crate) fn new(index: &'a JoinIndex) -> Self {
        Joiner {
            index,
            inherited: IdMap::default(),
            cursors: IdMap::default(),
        }
    }

    /// The agent's span `goid` is in at `t`: its own innermost open span,
    /// else the one it inherited (within [`INHERIT_TTL`]).
    pub(crate) fn parent(&mut self, goid: i64, t: u64) -> Option<(TraceId, SpanId)> {
        self.lookup(goid, t)
            .map(|(p, _, _)| (p.trace_id, p.span_id))
    }

    /// The agent's span `goid` is in at `t` (as [`parent`](Self::parent)),
    /// whole (its interval says when the request began and ended), with
    /// the goroutine it is open on (`goid`, or the creator it inherited it
    /// from).
    pub(crate) fn request(&mut self, goid: i64, t: u64) -> Option<(Interval, i64)> {
        self.lookup(goid, t).map(|(p, _, owner)| (p, owner))
    }

    fn lookup(&mut self, goid: i64, t: u64) -> Option<(Interval, u8, i64)> {
        let index = self.index;
        let (track, hint) = self.cursors.entry(goid).or_insert_with(|| {
            let track = index.by_goroutine.get(&goid).copied().unwrap_or(NO_TRACK);
            (track, 0)
        });
        if let Some(p) = index
            .tracks
            .get(*track as usize)
            .and_then(|tr| tr.at_from(t, hint))
        {
            return Some((*p, 0, goid));
        }
        if self.inherited.is_empty() {
            return None;
        }
        let inh = self.inherited.get(&goid)?;
        let age = t.saturating_sub(inh.since);
        (age <= INHERIT_TTL.as_nanos() as u64).then_some((inh.parent, inh.depth, inh.owner))
    }

    /// Goroutine `child` was created by `creator` at `t`.
    pub(crate) fn spawned(&mut self, creator: i64, child: i64, t: u64) {
        if let Some((parent, depth, owner)) = self.lookup(creator, t)
            && depth < MAX_INHERIT_DEPTH
        {
            self.inherited.insert(
                child,
                Inherited {
                    parent,
                    owner,
                    depth: depth + 1,
                    since: t,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn ms(ms: u64) -> u64 {
        ms * 1_000_000
    }

    fn iv(start: u64, end: u64, n: u8) -> Interval {
        Interval {
            start: at(start),
            end: at(end),
            trace_id: TraceId::from_bytes([n; 16]),
            span_id: SpanId::from_bytes([n; 8]),
        }
    }

    #[test]
    fn innermost_open_span_and_inheritance() {
        let mut idx = JoinIndex::default();
        idx.add(7, iv(100, 200, 1)); // a request
        idx.add(7, iv(120, 130, 2)); // a query inside it
        idx.add(7, iv(300, 400, 3)); // the next request on the connection
        let idx = idx.finish();
        assert_eq!(idx.len(), 3);
        let id = |n: u8| Some((TraceId::from_bytes([n; 16]), SpanId::from_bytes([n; 8])));
        assert_eq!(idx.open_at(7, at(110)), id(1));
        assert_eq!(idx.open_at(7, at(125)), id(2));
        assert_eq!(idx.open_at(7, at(150)), id(1));
        assert_eq!(idx.open_at(7, at(250)), None);
        assert_eq!(idx.open_at(7, at(400)), id(3));
        assert_eq!(idx.open_at(8, at(110)), None);

        let mut j = Joiner::new(&idx);
        j.spawned(7, 9, ms(150)); // go f() inside the request
        assert_eq!(j.parent(9, ms(160)), id(1));
        assert_eq!(j.parent(9, ms(150 + 31_000)), None);
        j.spawned(7, 10, ms(250)); // between requests: nothing to inherit
        assert_eq!(j.parent(10, ms(260)), None);
        // Depth-limited chains.
        let mut g = 9;
        for child in 20..30 {
            j.spawned(g, child, ms(160));
            g = child;
        }
        assert!(j.parent(22, ms(170)).is_some());
        assert_eq!(j.parent(23, ms(170)), None);
    }

    #[test]
    fn lookups_from_a_cursor_agree_with_a_search_in_any_order() {
        // A goroutine serving requests back to back, some with a query
        // inside, and one long span the others nest in.
        let mut idx = JoinIndex::default();
        idx.add(7, iv(0, 100_000, 1));
        for k in 0..300u64 {
            let start = 10 + k * 300;
            idx.add(7, iv(start, start + 200, (k % 200 + 2) as u8));
            if k % 3 == 0 {
                idx.add(7, iv(start + 50, start + 60, 250));
            }
        }
        let idx = idx.finish();
        let mut j = Joiner::new(&idx);
        let mut times: Vec<u64> = (0..2000).map(|i| i * 53 % 100_500).collect();
        let ascending = {
            let mut t = times.clone();
            t.sort_unstable();
            t
        };
        times.extend(ascending.iter().rev());
        times.extend(ascending);
        for t in times {
            assert_eq!(j.parent(7, ms(t)), idx.open_at(7, at(t)), "at {t} ms");
        }
    }
}
