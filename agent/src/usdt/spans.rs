//! USDT probe pairs: start and end events paired by request id into spans,
//! as the [`MappingConfig`] says.
//!
//! - Pairing is by (target slot, mapping, request id): a start and its end
//!   may fire on different threads or goroutines.
//! - Nesting: each thread (the goroutine when the record carries a goroutine
//!   id, else the kernel thread) keeps a stack of the spans it started that
//!   are still open; a span started while another is open on the same stack
//!   becomes its child (same trace id, the other's span id as parent).
//! - Starts that never end expire after the mapping's `open_span_timeout_ms`
//!   (else the agent's `--span-ttl`); the table of open starts holds at most
//!   `max_open_spans` (else `--max-open-spans`) and evicts the oldest. Both
//!   are exported marked `agent.span.incomplete` and counted, as are ends
//!   that find no start and events whose request id could not be read.

use std::{collections::HashMap, sync::Arc, time::Duration};

use foldhash::fast::RandomState;
use opentelemetry::{
    InstrumentationScope,
    trace::{SpanId, SpanKind, TraceId},
};

use crate::{
    clock::WallClock,
    export::{EncodedSpan, encode_scope, wire::SpanWriter},
    spans::{Incomplete, OpenTable, PairingStats, Sampler, ids::IdGenerator, sampling},
    usdt::{
        UsdtEvent,
        mapping::{self, ArgValue, MappingConfig, RequestId, Role},
    },
};

/// An open span's key: (target slot, mapping index, request id).
type Key = (u32, usize, RequestId);

/// Whose stack a span is on: (target slot, goroutine id or thread id, is a
/// goroutine id).
type ThreadKey = (u32, u64, bool);

fn thread_of(event: &UsdtEvent) -> ThreadKey {
    let h = &event.header;
    if h.goid != 0 {
        (h.target, h.goid, true)
    } else {
        (h.target, u64::from(h.tid), false)
    }
}

/// A start waiting for its end.
#[derive(Debug)]
struct OpenSpan {
    start: UsdtEvent,
    trace_id: TraceId,
    span_id: SpanId,
    parent: SpanId,
    thread: ThreadKey,
    /// The span's W3C trace flags: whether its trace is sampled.
    flags: u8,
}

/// Counters of USDT pairing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtStats {
    pub pairing: PairingStats,
    /// Events whose request id could not be read (dropped, no span).
    pub unreadable_ids: u64,
    /// Events of probes no mapping names.
    pub unmapped: u64,
}

impl UsdtStats {
    /// Events that did not become a complete span.
    pub fn lost(&self) -> u64 {
        self.pairing.unmatched_ends
            + self.pairing.expired
            + self.pairing.evicted
            + self.pairing.replaced
            + self.unreadable_ids
            + self.unmapped
    }
}

/// Builds spans from USDT events.
#[derive(Debug)]
pub struct UsdtSpanBuilder {
    config: MappingConfig,
    /// Boxed: a start with its arguments inline is a few hundred bytes, which
    /// the table would otherwise copy on every insert and removal.
    open: OpenTable<Key, Box<OpenSpan>>,
    /// Per thread, the open spans it started, innermost last. Every span
    /// leaving the table (end, expiry, eviction, replacement) leaves its
    /// stack too, so the top is always an open span.
    stacks: HashMap<ThreadKey, Vec<(TraceId, SpanId, u8)>, RandomState>,
    clock: WallClock,
    ids: IdGenerator,
    /// The encoded `InstrumentationScope` of every span.
    scope: Arc<[u8]>,
    unreadable_ids: u64,
    unmapped: u64,
    /// Which traces are exported.
    sampler: Sampler,
    /// Spans not exported: their trace was sampled out.
    sampled_out: u64,
}

fn kind(kind: mapping::SpanKind) -> SpanKind {
    match kind {
        mapping::SpanKind::Internal => SpanKind::Internal,
        mapping::SpanKind::Server => SpanKind::Server,
        mapping::SpanKind::Client => SpanKind::Client,
        mapping::SpanKind::Producer => SpanKind::Producer,
        mapping::SpanKind::Consumer => SpanKind::Consumer,
    }
}

/// Writes one attribute; a u64 beyond i64 becomes its decimal string.
fn put_attr(span: &mut SpanWriter<'_>, key: &str, value: &ArgValue<'_>) {
    match value {
        ArgValue::I64(v) => span.attr_int(key, *v),
        ArgValue::U64(v) => match i64::try_from(*v) {
            Ok(v) => span.attr_int(key, v),
            Err(_) => span.attr_str(key, &v.to_string()),
        },
        ArgValue::Str(s) => span.attr_str(key, s),
    };
}

impl UsdtSpanBuilder {
    /// A builder for `config`'s spans. The mapping's own limits win over
    /// `default_capacity` open starts and `default_ttl`.
    pub fn new(
        config: MappingConfig,
        clock: WallClock,
        default_capacity: usize,
        default_ttl: Duration,
    ) -> Self {
        let capacity = config.max_open_spans.unwrap_or(default_capacity);
        let ttl = config.open_span_timeout.unwrap_or(default_ttl);
        let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        Self {
            config,
            open: OpenTable::new(capacity, ttl_ns),
            stacks: HashMap::default(),
            clock,
            ids: IdGenerator::default(),
            scope: encode_scope(
                &InstrumentationScope::builder("agent/usdt")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            ),
            unreadable_ids: 0,
            unmapped: 0,
            sampler: Sampler::default(),
            sampled_out: 0,
        }
    }

    /// The builder with `sampler` deciding for the spans that start a trace
    /// (default: `parentbased_always_on`).
    pub fn with_sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = sampler;
        self
    }

    /// Spans not exported because their trace was sampled out.
    pub fn sampled_out(&self) -> u64 {
        self.sampled_out
    }

    /// The mapping in use.
    pub fn config(&self) -> &MappingConfig {
        &self.config
    }

    /// Which mapping (by index) and which end of it probe `provider:name`
    /// is; resolve once per attached site and pass it to [`Self::on_event`].
    pub fn resolve(&self, provider: &str, name: &str) -> Option<(usize, Role)> {
        self.config.find_index(provider, name)
    }

    /// Counters so far.
    /// Stops tracing at `at_ns` (see [`crate::spans::OpenTable::stop_at`]).
    pub fn stop_at(&mut self, at_ns: u64) {
        self.open.stop_at(at_ns);
    }

    pub fn stats(&self) -> UsdtStats {
        UsdtStats {
            pairing: self.open.stats(),
            unreadable_ids: self.unreadable_ids,
            unmapped: self.unmapped,
        }
    }

    /// Starts waiting for their end.
    pub fn open_spans(&self) -> usize {
        self.open.len()
    }

    /// Counts an event of a probe no mapping names (a site the agent could
    /// not resolve).
    pub fn on_unmapped(&mut self) {
        self.unmapped += 1;
    }

    /// One event of probe `resolved` (from [`Self::resolve`]).
    pub fn on_event(
        &mut self,
        resolved: (usize, Role),
        event: UsdtEvent,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        let (index, role) = resolved;
        let Some(mapping) = self.config.spans.get(index) else {
            self.unmapped += 1;
            return;
        };
        let Some(id) = mapping.request_id(role, &event) else {
            self.unreadable_ids += 1;
            return;
        };
        let key = (event.header.target, index, id);
        match role {
            Role::Start => self.on_start(key, event, out),
            Role::End => self.on_end(&key, &event, out),
        }
    }

    fn on_start(
        &mut self,
        key: Key,
        event: UsdtEvent,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        if self.open.refuses(event.header.ktime_ns) {
            return;
        }
        let thread = thread_of(&event);
        let stack = self.stacks.entry(thread).or_default();
        let (trace_id, parent, flags) = match stack.last() {
            Some(&(trace_id, span_id, flags)) => (trace_id, span_id, Sampler::child_flags(flags)),
            None => {
                let trace_id = self.ids.trace_id();
                (
                    trace_id,
                    SpanId::INVALID,
                    self.sampler.root_flags(trace_id, None),
                )
            }
        };
        let span_id = self.ids.span_id();
        stack.push((trace_id, span_id, flags));
        let now = event.header.ktime_ns;
        let span = Box::new(OpenSpan {
            start: event,
            trace_id,
            span_id,
            parent,
            thread,
            flags,
        });
        let displaced = self.open.open(key, span, now);
        if let Some((old_key, old)) = displaced {
            // The same key is in the table again (the new start) when it
            // was replaced; an evicted start's key is gone.
            let reason = if self.open.get(&old_key).is_some() {
                Incomplete::Replaced
            } else {
                Incomplete::Evicted
            };
            self.unstack(&old);
            if let Some(span) = self.span(old_key.1, &old, now, None, Some(reason)) {
                out(span);
            }
        }
    }

    fn on_end(
        &mut self,
        key: &Key,
        event: &UsdtEvent,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        if let Some(open) = self.open.close(key, event.header.ktime_ns) {
            self.unstack(&open);
            if let Some(span) = self.span(key.1, &open, event.header.ktime_ns, Some(event), None) {
                out(span);
            }
        }
    }

    /// Takes `open` off its thread's stack (wherever it is: ends may come
    /// out of order). An emptied stack stays for the thread's next span
    /// (no allocation per span) while few threads have one; past
    /// `IDLE_STACKS_KEPT` it is dropped, so exited threads cannot pile up.
    fn unstack(&mut self, open: &OpenSpan) {
        if let Some(stack) = self.stacks.get_mut(&open.thread) {
            if let Some(pos) = stack.iter().rposition(|&(_, id, _)| id == open.span_id) {
                stack.remove(pos);
            }
            if stack.is_empty() && self.stacks.len() > IDLE_STACKS_KEPT {
                self.stacks.remove(&open.thread);
            }
        }
    }

    /// Exports starts open longer than the timeout, marked expired.
    pub fn expire(&mut self, now_ns: u64, out: &mut (impl FnMut(EncodedSpan) + ?Sized)) {
        for (key, open) in self.open.expire(now_ns) {
            self.unstack(&open);
            if let Some(span) = self.span(key.1, &open, now_ns, None, Some(Incomplete::Expired)) {
                out(span);
            }
        }
    }

    /// Exports every open start, marked as cut short by shutdown.
    pub fn finish(&mut self, now_ns: u64, out: &mut (impl FnMut(EncodedSpan) + ?Sized)) {
        for (key, open) in self.open.drain() {
            if let Some(span) = self.span(key.1, &open, now_ns, None, Some(Incomplete::Shutdown)) {
                out(span);
            }
        }
        self.stacks.clear();
    }

    fn span(
        &mut self,
        index: usize,
        open: &OpenSpan,
        end_ns: u64,
        end: Option<&UsdtEvent>,
        incomplete: Option<Incomplete>,
    ) -> Option<EncodedSpan> {
        if !sampling::is_sampled(open.flags) {
            self.sampled_out += 1;
            return None;
        }
        let start_ns = open.start.header.ktime_ns;
        let mapping = self.config.spans.get(index);
        let name = mapping.map(|m| m.span_name(&open.start, end));
        let kind = mapping.map_or(SpanKind::Internal, |m| self::kind(m.kind));
        // Room for the ids, name, times and a handful of attributes
        // without a reallocation.
        let mut bytes = crate::export::span_buffer(384);
        let mut span = SpanWriter::new(&mut bytes);
        span.ids(open.trace_id, open.span_id, Some(open.parent))
            .name(&[name.as_deref().unwrap_or("?")])
            .kind(&kind)
            .times(
                self.clock.to_unix_ns(start_ns),
                self.clock.to_unix_ns(end_ns.max(start_ns)),
            );
        if let Some(mapping) = mapping {
            let events = [(Role::Start, Some(&open.start)), (Role::End, end)];
            for (role, event) in events {
                let Some(event) = event else { continue };
                for arg in mapping.args(role) {
                    if let Some(key) = &arg.attribute
                        && let Some(value) = mapping::SpanMapping::value(arg, event)
                    {
                        put_attr(&mut span, key, &value);
                    }
                }
            }
        }
        span.attr_int("thread.id", i64::from(open.start.header.tid));
        if open.start.header.goid != 0 {
            span.attr_int(
                "goroutine.id",
                i64::try_from(open.start.header.goid).unwrap_or(i64::MAX),
            );
        }
        if let Some(reason) = incomplete {
            span.attr_str("agent.span.incomplete", reason.as_str());
        }
        if let (Some(mapping), Some(end)) = (mapping, end)
            && mapping.is_error(&open.start, end)
        {
            span.status_error(&self.error_description(mapping, &open.start, end));
        }
        span.flags(u32::from(open.flags));
        Some(EncodedSpan {
            scope: Arc::clone(&self.scope),
            bytes,
        })
    }

    /// The status message of a span its rule marks as an error: `arg = value`.
    fn error_description(
        &self,
        mapping: &mapping::SpanMapping,
        start: &UsdtEvent,
        end: &UsdtEvent,
    ) -> String {
        let Some(rule) = mapping.status.as_ref() else {
            return String::new();
        };
        let value = mapping
            .end_args
            .iter()
            .map(|a| (a, end))
            .chain(mapping.start_args.iter().map(|a| (a, start)))
            .find(|(a, _)| a.name == rule.arg)
            .and_then(|(a, e)| mapping::SpanMapping::value(a, e));
        match value {
            Some(v) => format!("{} = {v}", rule.arg),
            None => rule.arg.clone(),
        }
    }
}

/// Threads whose empty span stack is kept for reuse.
const IDLE_STACKS_KEPT: usize = 1024;

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use agent_common::{event::EventHeader, usdt::KIND_USDT};
    use opentelemetry::{
        KeyValue, Value as OtelValue,
        trace::{SpanContext, Status, TraceFlags, TraceState},
    };
    use opentelemetry_proto::tonic::{
        common::v1::{InstrumentationScope as ProtoScope, any_value::Value},
        trace::v1::Span as ProtoSpan,
    };
    use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
    use prost::Message as _;

    use super::*;
    use crate::usdt::UsdtArg;

    /// What the builder wrote, decoded back (with prost) into the SDK's
    /// span type the assertions read.
    fn decode(encoded: EncodedSpan) -> SpanData {
        let span = ProtoSpan::decode(encoded.bytes.as_slice()).expect("a valid Span");
        let scope = ProtoScope::decode(&encoded.scope[..]).expect("a valid scope");
        let id8 = |b: &[u8]| SpanId::from_bytes(b.try_into().unwrap_or([0; 8]));
        let time = |ns| UNIX_EPOCH + Duration::from_nanos(ns);
        let attributes = span
            .attributes
            .iter()
            .map(|kv| {
                let value = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                    Some(Value::IntValue(v)) => OtelValue::I64(v),
                    Some(Value::StringValue(v)) => OtelValue::from(v),
                    other => panic!("unexpected attribute value {other:?}"),
                };
                KeyValue::new(kv.key.clone(), value)
            })
            .collect();
        let status = match span.status {
            Some(s) if s.code == 2 => Status::error(s.message),
            _ => Status::Unset,
        };
        let kind = match span.kind {
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Internal,
        };
        assert_eq!(span.flags, 1, "sampled");
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(span.trace_id.as_slice().try_into().expect("16 bytes")),
                id8(&span.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: id8(&span.parent_span_id),
            parent_span_is_remote: false,
            span_kind: kind,
            name: span.name.into(),
            start_time: time(span.start_time_unix_nano),
            end_time: time(span.end_time_unix_nano),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: InstrumentationScope::builder(scope.name)
                .with_version(scope.version)
                .build(),
        }
    }

    fn ev(tid: u32, goid: u64, t: u64, args: &[Arg]) -> UsdtEvent {
        UsdtEvent {
            header: EventHeader {
                kind: KIND_USDT,
                target: 0,
                tid,
                site: 0,
                goid,
                ktime_ns: t,
            },
            args: args
                .iter()
                .map(|a| match a {
                    Arg::I(v) => UsdtArg {
                        value: *v as u64,
                        failed: false,
                        string: None,
                        truncated: false,
                    },
                    Arg::S(s) => UsdtArg {
                        value: 0x7000,
                        failed: false,
                        string: Some(s.as_bytes().into()),
                        truncated: false,
                    },
                    Arg::Failed => UsdtArg {
                        value: 0,
                        failed: true,
                        string: None,
                        truncated: false,
                    },
                })
                .collect(),
        }
    }

    enum Arg {
        I(i64),
        S(&'static str),
        Failed,
    }
    use Arg::{Failed, I, S};

    fn builder(config: MappingConfig) -> UsdtSpanBuilder {
        UsdtSpanBuilder::new(
            config,
            WallClock::with_offset_ns(1_000_000_000_000),
            1024,
            Duration::from_secs(30),
        )
    }

    fn attrs(span: &SpanData) -> Vec<(String, String)> {
        span.attributes
            .iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn nanos(t: std::time::SystemTime) -> u128 {
        t.duration_since(UNIX_EPOCH)
            .expect("after epoch")
            .as_nanos()
    }

    /// Feeds `probe` with `event`; spans go to `out`.
    fn feed(b: &mut UsdtSpanBuilder, probe: &str, event: UsdtEvent, out: &mut Vec<SpanData>) {
        let resolved = b.resolve("fixture", probe).expect("mapped probe");
        b.on_event(resolved, event, &mut |s| out.push(decode(s)));
    }

    #[test]
    fn the_seed_sequence_nests_on_one_thread() {
        let mut b = builder(MappingConfig::builtin());
        let mut spans = Vec::new();
        let t = 7;
        feed(
            &mut b,
            "request_start",
            ev(t, 0, 100, &[S("req-4")]),
            &mut spans,
        );
        feed(
            &mut b,
            "http_request_start",
            ev(t, 0, 200, &[S("req-1"), S("GET"), S("/api/users")]),
            &mut spans,
        );
        feed(
            &mut b,
            "net_dial_start",
            ev(t, 0, 300, &[S("req-2"), S("db.internal"), I(5432)]),
            &mut spans,
        );
        feed(
            &mut b,
            "tls_handshake_start",
            ev(t, 0, 400, &[S("req-3"), S("api.example.com")]),
            &mut spans,
        );
        feed(
            &mut b,
            "tls_handshake_end",
            ev(t, 0, 500, &[S("req-3"), S("TLS 1.3")]),
            &mut spans,
        );
        feed(
            &mut b,
            "net_dial_end",
            ev(t, 0, 600, &[S("req-2"), I(0)]),
            &mut spans,
        );
        feed(
            &mut b,
            "http_request_end",
            ev(t, 0, 700, &[S("req-1"), I(200), I(15_000_000)]),
            &mut spans,
        );
        feed(
            &mut b,
            "request_end",
            ev(t, 0, 800, &[S("req-4")]),
            &mut spans,
        );
        assert_eq!(spans.len(), 4);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["TLS Handshake", "net.Dial", "GET", "Request"]);
        let (tls, dial, http, req) = (&spans[0], &spans[1], &spans[2], &spans[3]);
        assert_eq!(req.parent_span_id, SpanId::INVALID);
        assert_eq!(http.parent_span_id, req.span_context.span_id());
        assert_eq!(dial.parent_span_id, http.span_context.span_id());
        assert_eq!(tls.parent_span_id, dial.span_context.span_id());
        let trace = req.span_context.trace_id();
        assert!(spans.iter().all(|s| s.span_context.trace_id() == trace));
        assert_eq!(
            [tls.span_kind.clone(), dial.span_kind.clone()],
            [SpanKind::Internal, SpanKind::Client]
        );
        assert_eq!(
            [http.span_kind.clone(), req.span_kind.clone()],
            [SpanKind::Server, SpanKind::Internal]
        );
        assert_eq!(
            attrs(http),
            pairs(&[
                ("http.request.method", "GET"),
                ("url.path", "/api/users"),
                ("http.response.status_code", "200"),
                ("thread.id", "7"),
            ])
        );
        assert_eq!(
            attrs(dial),
            pairs(&[
                ("server.address", "db.internal"),
                ("server.port", "5432"),
                ("thread.id", "7"),
            ])
        );
        assert_eq!(
            attrs(tls),
            pairs(&[
                ("server.address", "api.example.com"),
                ("tls.protocol.version", "TLS 1.3"),
                ("thread.id", "7"),
            ])
        );
        assert_eq!(
            attrs(req),
            pairs(&[("request.id", "req-4"), ("thread.id", "7")])
        );
        assert_eq!(nanos(http.start_time), 1_000_000_000_200);
        assert_eq!(nanos(http.end_time), 1_000_000_000_700);
        assert_eq!(nanos(tls.start_time), 1_000_000_000_400);
        assert_eq!(nanos(tls.end_time), 1_000_000_000_500);
        assert!(spans.iter().all(|s| s.status == Status::Unset));
        let stats = b.stats();
        assert_eq!(stats.pairing.started, 4);
        assert_eq!(stats.pairing.completed, 4);
        assert_eq!(stats.lost(), 0);
        assert_eq!(b.open_spans(), 0);
        assert!(b.stacks.values().all(Vec::is_empty));
    }

    #[test]
    fn pairs_across_threads_and_parents_by_goroutine() {
        let mut b = builder(MappingConfig::builtin());
        let mut spans = Vec::new();
        // Goroutine 42 starts on thread 1, its end comes on thread 2.
        feed(
            &mut b,
            "request_start",
            ev(1, 42, 10, &[S("a")]),
            &mut spans,
        );
        // Same goroutine, now on thread 3: a child.
        feed(
            &mut b,
            "tls_handshake_start",
            ev(3, 42, 20, &[S("t"), S("h")]),
            &mut spans,
        );
        // Another goroutine on thread 1: not a child of anything.
        feed(
            &mut b,
            "request_start",
            ev(1, 43, 25, &[S("b")]),
            &mut spans,
        );
        feed(
            &mut b,
            "tls_handshake_end",
            ev(2, 42, 30, &[S("t"), S("1.2")]),
            &mut spans,
        );
        feed(&mut b, "request_end", ev(2, 99, 40, &[S("a")]), &mut spans);
        feed(&mut b, "request_end", ev(1, 43, 50, &[S("b")]), &mut spans);
        assert_eq!(spans.len(), 3);
        let (tls, a, other) = (&spans[0], &spans[1], &spans[2]);
        assert_eq!(tls.parent_span_id, a.span_context.span_id());
        assert_eq!(tls.span_context.trace_id(), a.span_context.trace_id());
        assert_eq!(other.parent_span_id, SpanId::INVALID);
        assert_ne!(other.span_context.trace_id(), a.span_context.trace_id());
        assert_eq!(nanos(a.end_time) - nanos(a.start_time), 30);
        assert_eq!(
            attrs(a),
            pairs(&[
                ("request.id", "a"),
                ("thread.id", "1"),
                ("goroutine.id", "42")
            ])
        );
        assert_eq!(b.stats().lost(), 0);
        assert!(b.stacks.values().all(Vec::is_empty));
    }

    #[test]
    fn a_closed_parent_is_no_longer_a_parent() {
        let mut b = builder(MappingConfig::builtin());
        let mut spans = Vec::new();
        feed(&mut b, "request_start", ev(5, 0, 10, &[S("p")]), &mut spans);
        feed(&mut b, "request_end", ev(5, 0, 20, &[S("p")]), &mut spans);
        feed(&mut b, "request_start", ev(5, 0, 30, &[S("q")]), &mut spans);
        feed(&mut b, "request_end", ev(5, 0, 40, &[S("q")]), &mut spans);
        assert_eq!(spans[1].parent_span_id, SpanId::INVALID);
        // Out-of-order ends: the inner span's parent ends first.
        feed(&mut b, "request_start", ev(5, 0, 50, &[S("x")]), &mut spans);
        feed(&mut b, "request_start", ev(5, 0, 60, &[S("y")]), &mut spans);
        feed(&mut b, "request_end", ev(5, 0, 70, &[S("x")]), &mut spans);
        feed(&mut b, "request_start", ev(5, 0, 80, &[S("z")]), &mut spans);
        feed(&mut b, "request_end", ev(5, 0, 90, &[S("y")]), &mut spans);
        feed(&mut b, "request_end", ev(5, 0, 100, &[S("z")]), &mut spans);
        let by_id = |id: &str| {
            spans
                .iter()
                .find(|s| attrs(s).contains(&("request.id".to_owned(), id.to_owned())))
                .expect("span")
        };
        assert_eq!(by_id("y").parent_span_id, by_id("x").span_context.span_id());
        assert_eq!(by_id("z").parent_span_id, by_id("y").span_context.span_id());
        assert!(b.stacks.values().all(Vec::is_empty));
    }

    #[test]
    fn status_from_the_rule() {
        let mut b = builder(MappingConfig::builtin());
        let mut spans = Vec::new();
        feed(
            &mut b,
            "http_request_start",
            ev(1, 0, 10, &[S("r"), S("POST"), S("/x")]),
            &mut spans,
        );
        feed(
            &mut b,
            "http_request_end",
            ev(1, 0, 20, &[S("r"), I(503)]),
            &mut spans,
        );
        feed(
            &mut b,
            "net_dial_start",
            ev(1, 0, 30, &[S("d"), S("h"), I(80)]),
            &mut spans,
        );
        feed(
            &mut b,
            "net_dial_end",
            ev(1, 0, 40, &[S("d"), I(-111)]),
            &mut spans,
        );
        assert_eq!(spans[0].name, "POST");
        assert_eq!(spans[0].status, Status::error("status_code = 503"));
        assert_eq!(spans[1].status, Status::error("error = -111"));
        // The error argument has no attribute: not among the attributes.
        assert_eq!(
            attrs(&spans[1]),
            pairs(&[
                ("server.address", "h"),
                ("server.port", "80"),
                ("thread.id", "1"),
            ])
        );
    }

    #[test]
    fn unmatched_ends_unreadable_ids_and_replaced_starts_are_counted() {
        let mut b = builder(MappingConfig::builtin());
        let mut spans = Vec::new();
        feed(
            &mut b,
            "request_end",
            ev(1, 0, 10, &[S("nobody")]),
            &mut spans,
        );
        feed(&mut b, "request_start", ev(1, 0, 20, &[Failed]), &mut spans);
        feed(
            &mut b,
            "request_start",
            ev(1, 0, 30, &[S("dup")]),
            &mut spans,
        );
        feed(
            &mut b,
            "request_start",
            ev(2, 0, 40, &[S("dup")]),
            &mut spans,
        );
        assert_eq!(spans.len(), 1);
        assert_eq!(
            attrs(&spans[0]),
            pairs(&[
                ("request.id", "dup"),
                ("thread.id", "1"),
                ("agent.span.incomplete", "replaced"),
            ])
        );
        assert_eq!(nanos(spans[0].end_time), 1_000_000_000_040);
        // A different mapping with the same id is a different span.
        feed(
            &mut b,
            "tls_handshake_start",
            ev(2, 0, 45, &[S("dup"), S("h")]),
            &mut spans,
        );
        feed(
            &mut b,
            "tls_handshake_end",
            ev(2, 0, 46, &[S("dup"), S("v")]),
            &mut spans,
        );
        feed(&mut b, "request_end", ev(3, 0, 50, &[S("dup")]), &mut spans);
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[1].name, "TLS Handshake");
        assert_eq!(spans[1].parent_span_id, spans[2].span_context.span_id());
        assert_eq!(
            attrs(&spans[2]),
            pairs(&[("request.id", "dup"), ("thread.id", "2")])
        );
        b.on_unmapped();
        let stats = b.stats();
        assert_eq!(stats.pairing.unmatched_ends, 1);
        assert_eq!(stats.pairing.replaced, 1);
        assert_eq!(stats.unreadable_ids, 1);
        assert_eq!(stats.unmapped, 1);
        assert_eq!(stats.lost(), 4);
    }

    #[test]
    fn starts_expire_after_the_mapping_timeout() {
        let config = MappingConfig::from_toml_str("open_span_timeout_ms = 1\n").expect("toml");
        let mut b = builder(config);
        let mut spans = Vec::new();
        feed(
            &mut b,
            "request_start",
            ev(1, 0, 0, &[S("old")]),
            &mut spans,
        );
        feed(
            &mut b,
            "request_start",
            ev(1, 0, 900_000, &[S("young")]),
            &mut spans,
        );
        b.expire(1_500_000, &mut |s| spans.push(decode(s)));
        assert_eq!(spans.len(), 1);
        assert_eq!(
            attrs(&spans[0]),
            pairs(&[
                ("request.id", "old"),
                ("thread.id", "1"),
                ("agent.span.incomplete", "expired"),
            ])
        );
        assert_eq!(nanos(spans[0].start_time), 1_000_000_000_000);
        assert_eq!(nanos(spans[0].end_time), 1_000_001_500_000);
        assert_eq!(b.stats().pairing.expired, 1);
        // "young" was started while "old" was open: its child.
        feed(
            &mut b,
            "request_end",
            ev(1, 0, 2_000_000, &[S("young")]),
            &mut spans,
        );
        assert_eq!(spans[1].parent_span_id, spans[0].span_context.span_id());
        // The expired start's end now finds nothing.
        feed(
            &mut b,
            "request_end",
            ev(1, 0, 2_000_001, &[S("old")]),
            &mut spans,
        );
        assert_eq!(b.stats().pairing.unmatched_ends, 1);
        assert!(b.stacks.values().all(Vec::is_empty));
    }

    #[test]
    fn a_full_table_evicts_the_oldest_and_unstacks_it() {
        let config = MappingConfig::from_toml_str("max_open_spans = 2\n").expect("toml");
        let mut b = builder(config);
        let mut spans = Vec::new();
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            feed(
                &mut b,
                "request_start",
                ev(10 + i as u32, 0, 100 * (i as u64 + 1), &[S(id)]),
                &mut spans,
            );
        }
        assert_eq!(spans.len(), 1);
        assert_eq!(
            attrs(&spans[0]),
            pairs(&[
                ("request.id", "a"),
                ("thread.id", "10"),
                ("agent.span.incomplete", "evicted"),
            ])
        );
        assert_eq!(b.stats().pairing.evicted, 1);
        assert_eq!(b.open_spans(), 2);
        assert!(b.stacks.get(&(0, 10, false)).is_none_or(Vec::is_empty));
        b.finish(1_000, &mut |s| spans.push(decode(s)));
        assert_eq!(spans.len(), 3);
        assert_eq!(
            spans[2].attributes.last().map(|kv| kv.value.to_string()),
            Some("shutdown".to_owned())
        );
    }

    #[test]
    fn custom_mapping_with_integer_ids_and_unsigned_values() {
        let config = MappingConfig::from_toml_str(
            r#"
builtins = false
[[span]]
name = "job {kind}"
kind = "consumer"
start = "app:job_begin"
end = "app:job_done"
request_id = "id"
status = { arg = "rc", error_if = "nonzero" }
[span.start_args]
id = { index = 0, type = "u64", attribute = "job.id" }
kind = { index = 1, type = "str", attribute = "job.kind" }
big = { index = 2, type = "u64", attribute = "job.big" }
[span.end_args]
id = { index = 0, type = "u64" }
rc = { index = 1, type = "i64", attribute = "job.rc" }
"#,
        )
        .expect("toml");
        let mut b = builder(config);
        assert_eq!(b.resolve("other", "job_begin"), None);
        assert_eq!(b.resolve("app", "request_start"), None);
        let start = b.resolve("app", "job_begin").expect("start");
        let end = b.resolve("app", "job_done").expect("end");
        let mut spans = Vec::new();
        b.on_event(start, ev(1, 0, 10, &[I(9), S("resize"), I(-1)]), &mut |s| {
            spans.push(decode(s))
        });
        b.on_event(end, ev(4, 0, 25, &[I(9), I(0)]), &mut |s| {
            spans.push(decode(s))
        });
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].name, "job resize");
        assert_eq!(spans[0].span_kind, SpanKind::Consumer);
        assert_eq!(spans[0].status, Status::Unset);
        assert_eq!(
            attrs(&spans[0]),
            pairs(&[
                ("job.id", "9"),
                ("job.kind", "resize"),
                ("job.big", "18446744073709551615"),
                ("job.rc", "0"),
                ("thread.id", "1"),
            ])
        );
        assert_eq!(spans[0].instrumentation_scope.name(), "agent/usdt");
    }
}
