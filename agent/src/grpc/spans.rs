//! gRPC calls: SERVER spans from `handleStream` (start, status, end on one
//! goroutine) and CLIENT spans from `Invoke`/`NewStream` (start and end on
//! one goroutine), with OpenTelemetry's RPC conventions.

use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
};

use agent_common::{
    grpc::{
        CODE_NOT_STATUS, GrpcClientEnd, GrpcClientStart, GrpcServerEnd, GrpcServerStart,
        GrpcServerStatus, GrpcTraceparent, GrpcTracestate,
    },
    propagate::SpanIds,
};
use opentelemetry::{
    InstrumentationScope,
    trace::{SpanId, SpanKind, TraceId},
};

use crate::{
    clock::WallClock,
    export::{EncodedSpan, encode_scope, wire::SpanWriter},
    spans::{
        Goroutines, Incomplete, OpenTable, PairingStats, ParentSpan, Sampler,
        ids::IdGenerator,
        sampling,
        traceparent::{self, RemoteParent},
        tracestate,
    },
};

/// (target slot, goroutine id): a call starts and ends on one goroutine.
type Key = (u32, u64);

const SPAN_CAPACITY: usize = 384;

/// OTLP `SpanFlags` beside the W3C trace flags: whether the parent is
/// remote is known (it is not).
const FLAGS_LOCAL: u32 = 0x100;
/// OTLP `SpanFlags`: the parent is remote.
const FLAGS_REMOTE: u32 = 0x100 | 0x200;

/// Trace contexts kept at most waiting for their call's start.
const MAX_PENDING: usize = 4096;

/// (target slot, `*http2Server`, HTTP/2 stream id).
type StreamKey = (u32, u64, u32);

/// gRPC status codes a SERVER span reports as errors (OpenTelemetry's RPC
/// conventions): Unknown, DeadlineExceeded, Unimplemented, Internal,
/// Unavailable, DataLoss.
const SERVER_ERROR_CODES: [i32; 6] = [2, 4, 12, 13, 14, 15];

#[derive(Debug)]
struct OpenServer {
    start_ns: u64,
    stream: u64,
    trace_id: TraceId,
    span_id: SpanId,
    method: String,
    code: Option<i32>,
    /// The caller's span, from the call's `traceparent`.
    parent: Option<RemoteParent>,
    /// The caller's vendor state, from the call's `tracestate`, normalized
    /// (exported only with the caller as parent).
    trace_state: Option<String>,
    /// The span's W3C trace flags: whether its trace is sampled.
    flags: u8,
}

/// A call's incoming trace context, waiting for its start.
#[derive(Debug)]
struct Pending {
    parent: RemoteParent,
    trace_state: Option<String>,
}

#[derive(Debug)]
struct OpenClient {
    start_ns: u64,
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    flags: u8,
    method: String,
    target: String,
}

/// Counters beyond pairing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrpcStats {
    pub server: PairingStats,
    pub client: PairingStats,
    /// Client calls with no span open on their goroutine (a new trace).
    pub unparented: u64,
    /// Served calls that continued a caller's trace.
    pub traceparents: u64,
    /// Starts seen twice (the entry probe fires again when the goroutine's
    /// stack grows at function entry).
    pub duplicates: u64,
}

/// Builds gRPC spans.
#[derive(Debug)]
pub struct GrpcSpanBuilder {
    server: OpenTable<Key, OpenServer>,
    client: OpenTable<Key, OpenClient>,
    clock: WallClock,
    ids: IdGenerator,
    scope: std::sync::Arc<[u8]>,
    unparented: u64,
    duplicates: u64,
    traceparents: u64,
    /// Incoming trace contexts whose call has not started yet, oldest
    /// first in `pending_order`.
    pending: HashMap<StreamKey, Pending>,
    pending_order: VecDeque<StreamKey>,
    /// Which traces are exported.
    sampler: Sampler,
    /// Spans not exported: their trace was sampled out.
    sampled_out: u64,
}

fn text(bytes: &[u8], len: u32) -> String {
    let n = (len as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[..n]).into_owned()
}

/// `/pkg.Service/Method` split into service and method (either may be
/// empty for a malformed name).
pub fn split_method(full: &str) -> (&str, &str) {
    let trimmed = full.strip_prefix('/').unwrap_or(full);
    match trimmed.rsplit_once('/') {
        Some((service, method)) => (service, method),
        None => ("", trimmed),
    }
}

/// The host and port a dial target names: `host:port`,
/// `dns:///host:port`, `dns://resolver/host:port`, `passthrough:///h:p`,
/// `[v6]:port`; `unix:` targets name a path and no port.
pub fn target_host_port(target: &str) -> Option<(Cow<'_, str>, Option<i64>)> {
    let (scheme, rest) = match target.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest.split_once('/').map_or("", |(_, p)| p)),
        None => match target.split_once(':') {
            Some((scheme @ ("dns" | "passthrough" | "unix" | "unix-abstract"), rest)) => {
                (Some(scheme), rest)
            }
            _ => (None, target),
        },
    };
    if matches!(scheme, Some("unix" | "unix-abstract")) {
        let path = if target.contains("://") {
            &target[target.find("://").map_or(0, |i| i + 3)..]
        } else {
            rest
        };
        return (!path.is_empty()).then_some((Cow::Borrowed(path), None));
    }
    if rest.is_empty() {
        return None;
    }
    if let Some(inner) = rest.strip_prefix('[')
        && let Some((host, tail)) = inner.split_once(']')
    {
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((Cow::Borrowed(host), port));
    }
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((Cow::Borrowed(host), port.parse().ok())),
        _ => Some((Cow::Borrowed(rest), None)),
    }
}

impl GrpcSpanBuilder {
    pub fn new(clock: WallClock, capacity: usize, ttl_ns: u64) -> Self {
        Self {
            server: OpenTable::new(capacity, ttl_ns),
            client: OpenTable::new(capacity, ttl_ns),
            clock,
            ids: IdGenerator::default(),
            scope: encode_scope(
                &InstrumentationScope::builder("agent/grpc")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            ),
            unparented: 0,
            duplicates: 0,
            traceparents: 0,
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            sampler: Sampler::default(),
            sampled_out: 0,
        }
    }

    /// The builder with `sampler` deciding for the calls that start or
    /// continue a trace (default: `parentbased_always_on`).
    pub fn with_sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = sampler;
        self
    }

    /// Spans not exported because their trace was sampled out.
    pub fn sampled_out(&self) -> u64 {
        self.sampled_out
    }

    /// A call's HEADERS frame carried `traceparent`: kept for its start
    /// (which follows on another goroutine) when valid.
    pub fn on_traceparent(&mut self, rec: &GrpcTraceparent) {
        let kept = (rec.len as usize).min(rec.value.len());
        let Some(parent) = traceparent::parse(&rec.value[..kept], rec.len as usize) else {
            return;
        };
        let key = (rec.header.target, rec.transport, rec.stream_id);
        let pending = Pending {
            parent,
            trace_state: None,
        };
        if self.pending.insert(key, pending).is_none() {
            self.pending_order.push_back(key);
        }
        while self.pending.len() > MAX_PENDING
            && let Some(oldest) = self.pending_order.pop_front()
        {
            self.pending.remove(&oldest);
        }
        if self.pending_order.len() > 2 * MAX_PENDING {
            let pending = &self.pending;
            self.pending_order.retain(|k| pending.contains_key(k));
        }
    }

    /// The `tracestate` beside a call's `traceparent` (its record follows
    /// the `traceparent`'s): kept with it when the `traceparent` was valid
    /// and the value is too.
    pub fn on_tracestate(&mut self, rec: &GrpcTracestate) {
        let key = (rec.header.target, rec.transport, rec.stream_id);
        if let Some(pending) = self.pending.get_mut(&key) {
            let kept = (rec.len as usize).min(rec.value.len());
            pending.trace_state = tracestate::parse(&rec.value[..kept], rec.len as usize);
        }
    }

    /// Stops tracing at `at_ns` (see [`crate::spans::OpenTable::stop_at`]).
    pub fn stop_at(&mut self, at_ns: u64) {
        self.server.stop_at(at_ns);
        self.client.stop_at(at_ns);
    }

    pub fn stats(&self) -> GrpcStats {
        GrpcStats {
            server: self.server.stats(),
            client: self.client.stats(),
            unparented: self.unparented,
            traceparents: self.traceparents,
            duplicates: self.duplicates,
        }
    }

    pub fn on_server_start(
        &mut self,
        g: &mut Goroutines,
        rec: &GrpcServerStart,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        let key = (rec.header.target, rec.header.goid);
        if self
            .server
            .get(&key)
            .is_some_and(|open| open.stream == rec.stream)
        {
            self.duplicates += 1;
            return;
        }
        let (parent, trace_state) =
            match self
                .pending
                .remove(&(rec.header.target, rec.transport, rec.stream_id))
            {
                Some(p) => (Some(p.parent), p.trace_state),
                None => (None, None),
            };
        if parent.is_some() {
            self.traceparents += 1;
        }
        let trace_id = match parent {
            Some(p) => p.trace_id,
            None => self.ids.trace_id(),
        };
        let flags = self.sampler.root_flags(trace_id, parent.map(|p| p.flags));
        let sampled = sampling::is_sampled(flags);
        let span_id = self.ids.span_id();
        g.enter(
            key,
            ParentSpan {
                trace_id,
                span_id,
                flags,
            },
        );
        let open = OpenServer {
            parent,
            trace_state,
            start_ns: rec.header.ktime_ns,
            stream: rec.stream,
            trace_id,
            span_id,
            method: if sampled {
                text(&rec.method, rec.method_len)
            } else {
                String::new()
            },
            code: None,
            flags,
        };
        if let Some((old_key, old)) = self.server.open(key, open, rec.header.ktime_ns) {
            let reason = if old_key == key {
                Incomplete::Replaced
            } else {
                Incomplete::Evicted
            };
            if let Some(span) = self.server_span(g, old_key, old, rec.header.ktime_ns, Some(reason))
            {
                out(span);
            }
        }
    }

    /// The ids the kernel made for the server span open on the record's
    /// goroutine, the ones it sends on in the calls made under it
    /// (`--propagate`): the span is exported with exactly those, and with
    /// the caller as its parent only when the kernel adopted the caller's
    /// trace too.
    pub fn on_server_ids(&mut self, g: &mut Goroutines, rec: &SpanIds) {
        if rec.trace_id == [0; 16] || rec.span_id == [0; 8] {
            return;
        }
        let key = (rec.header.target, rec.header.goid);
        let Some(open) = self
            .server
            .get_mut(&key)
            .filter(|open| open.stream == rec.key)
        else {
            return;
        };
        let old = open.span_id;
        open.trace_id = TraceId::from_bytes(rec.trace_id);
        open.span_id = SpanId::from_bytes(rec.span_id);
        open.flags = rec.flags;
        open.parent = (rec.parent_id != [0; 8]).then(|| RemoteParent {
            trace_id: open.trace_id,
            span_id: SpanId::from_bytes(rec.parent_id),
            flags: rec.flags,
        });
        g.reassign(
            key,
            old,
            ParentSpan {
                trace_id: open.trace_id,
                span_id: open.span_id,
                flags: open.flags,
            },
        );
    }

    /// The ids the kernel made for the client call open on the record's
    /// goroutine, the ones its `traceparent` carries (`--propagate`).
    pub fn on_client_ids(&mut self, rec: &SpanIds) {
        if rec.trace_id == [0; 16] || rec.span_id == [0; 8] {
            return;
        }
        let key = (rec.header.target, rec.header.goid);
        let Some(open) = self.client.get_mut(&key) else {
            return;
        };
        open.trace_id = TraceId::from_bytes(rec.trace_id);
        open.span_id = SpanId::from_bytes(rec.span_id);
        open.parent = (rec.parent_id != [0; 8]).then(|| SpanId::from_bytes(rec.parent_id));
        open.flags = rec.flags;
    }

    pub fn on_server_status(&mut self, rec: &GrpcServerStatus) {
        if let Some(open) = self
            .server
            .get_mut(&(rec.header.target, rec.header.goid))
            .filter(|open| open.stream == rec.stream)
            && rec.code >= 0
        {
            open.code = Some(rec.code);
        }
    }

    pub fn on_server_end(
        &mut self,
        g: &mut Goroutines,
        rec: &GrpcServerEnd,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        let key = (rec.header.target, rec.header.goid);
        if let Some(open) = self.server.close(&key, rec.header.ktime_ns)
            && let Some(span) = self.server_span(g, key, open, rec.header.ktime_ns, None)
        {
            out(span);
        }
    }

    pub fn on_client_start(
        &mut self,
        g: &mut Goroutines,
        rec: &GrpcClientStart,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        let key = (rec.header.target, rec.header.goid);
        if self.client.get(&key).is_some() {
            // A call cannot start while its goroutine is blocked in one:
            // the same entry, seen again after a stack growth.
            self.duplicates += 1;
            return;
        }
        let (trace_id, parent, flags) = match g.parent(key, rec.header.ktime_ns) {
            Some(p) => (p.trace_id, Some(p.span_id), Sampler::child_flags(p.flags)),
            None => {
                self.unparented += 1;
                let trace_id = self.ids.trace_id();
                (trace_id, None, self.sampler.root_flags(trace_id, None))
            }
        };
        let sampled = sampling::is_sampled(flags);
        let open = OpenClient {
            start_ns: rec.header.ktime_ns,
            trace_id,
            span_id: self.ids.span_id(),
            parent,
            flags,
            method: if sampled {
                text(&rec.method, rec.method_len)
            } else {
                String::new()
            },
            target: if sampled {
                text(&rec.target, rec.target_len)
            } else {
                String::new()
            },
        };
        if let Some((old_key, old)) = self.client.open(key, open, rec.header.ktime_ns) {
            let reason = if old_key == key {
                Incomplete::Replaced
            } else {
                Incomplete::Evicted
            };
            if let Some(span) = self.client_span(old, rec.header.ktime_ns, None, Some(reason)) {
                out(span);
            }
        }
    }

    pub fn on_client_end(
        &mut self,
        rec: &GrpcClientEnd,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        let key = (rec.header.target, rec.header.goid);
        if let Some(open) = self.client.close(&key, rec.header.ktime_ns)
            && let Some(span) = self.client_span(open, rec.header.ktime_ns, Some(rec.code), None)
        {
            out(span);
        }
    }

    pub fn expire(
        &mut self,
        g: &mut Goroutines,
        now_ns: u64,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        for (key, open) in self.server.expire(now_ns) {
            if let Some(span) = self.server_span(g, key, open, now_ns, Some(Incomplete::Expired)) {
                out(span);
            }
        }
        for (_, open) in self.client.expire(now_ns) {
            if let Some(span) = self.client_span(open, now_ns, None, Some(Incomplete::Expired)) {
                out(span);
            }
        }
    }

    pub fn finish(
        &mut self,
        g: &mut Goroutines,
        now_ns: u64,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        for (key, open) in self.server.drain() {
            if let Some(span) = self.server_span(g, key, open, now_ns, Some(Incomplete::Shutdown)) {
                out(span);
            }
        }
        for (_, open) in self.client.drain() {
            if let Some(span) = self.client_span(open, now_ns, None, Some(Incomplete::Shutdown)) {
                out(span);
            }
        }
    }

    fn server_span(
        &mut self,
        g: &mut Goroutines,
        key: Key,
        open: OpenServer,
        end_ns: u64,
        incomplete: Option<Incomplete>,
    ) -> Option<EncodedSpan> {
        g.exit(key, open.span_id);
        if !sampling::is_sampled(open.flags) {
            self.sampled_out += 1;
            return None;
        }
        let mut bytes = crate::export::span_buffer(SPAN_CAPACITY);
        let mut w = SpanWriter::new(&mut bytes);
        w.ids(open.trace_id, open.span_id, open.parent.map(|p| p.span_id));
        if let (Some(_), Some(state)) = (open.parent, &open.trace_state) {
            w.trace_state(state);
        }
        let error = open.code.is_some_and(|c| SERVER_ERROR_CODES.contains(&c));
        self.common(
            &mut w,
            SpanKind::Server,
            &open.method,
            open.start_ns,
            end_ns,
            open.code,
            key.1,
        );
        if let Some(reason) = incomplete {
            w.attr_str("agent.span.incomplete", reason.as_str());
        }
        if error {
            w.status_error("");
        }
        w.flags(
            u32::from(open.flags)
                | match open.parent {
                    Some(_) => FLAGS_REMOTE,
                    None => FLAGS_LOCAL,
                },
        );
        Some(EncodedSpan {
            scope: self.scope.clone(),
            bytes,
        })
    }

    fn client_span(
        &mut self,
        open: OpenClient,
        end_ns: u64,
        code: Option<i32>,
        incomplete: Option<Incomplete>,
    ) -> Option<EncodedSpan> {
        if !sampling::is_sampled(open.flags) {
            self.sampled_out += 1;
            return None;
        }
        let mut bytes = crate::export::span_buffer(SPAN_CAPACITY);
        let mut w = SpanWriter::new(&mut bytes);
        w.ids(open.trace_id, open.span_id, open.parent);
        // A non-nil error of another type is Unknown (as status.Code says).
        let code = match code {
            Some(CODE_NOT_STATUS) => Some(2),
            Some(c) if c >= 0 => Some(c),
            _ => None,
        };
        self.common(
            &mut w,
            SpanKind::Client,
            &open.method,
            open.start_ns,
            end_ns,
            code,
            0,
        );
        if let Some((host, port)) = target_host_port(&open.target) {
            w.attr_str("server.address", &host);
            if let Some(port) = port {
                w.attr_int("server.port", port);
            }
        }
        if let Some(reason) = incomplete {
            w.attr_str("agent.span.incomplete", reason.as_str());
        }
        if code.is_some_and(|c| c != 0) {
            w.status_error("");
        }
        w.flags(u32::from(open.flags) | FLAGS_LOCAL);
        Some(EncodedSpan {
            scope: self.scope.clone(),
            bytes,
        })
    }

    /// Name, kind, times and the RPC attributes both kinds share.
    #[allow(clippy::too_many_arguments)]
    fn common(
        &self,
        w: &mut SpanWriter<'_>,
        kind: SpanKind,
        method: &str,
        start_ns: u64,
        end_ns: u64,
        code: Option<i32>,
        goid: u64,
    ) {
        let (service, name) = split_method(method);
        let trimmed = method.strip_prefix('/').unwrap_or(method);
        w.name(&[if trimmed.is_empty() { "grpc" } else { trimmed }]);
        w.kind(&kind).times(
            self.clock.to_unix_ns(start_ns),
            self.clock.to_unix_ns(end_ns.max(start_ns)),
        );
        w.attr_str("rpc.system", "grpc");
        if !service.is_empty() {
            w.attr_str("rpc.service", service);
        }
        if !name.is_empty() {
            w.attr_str("rpc.method", name);
        }
        if let Some(code) = code {
            w.attr_int("rpc.grpc.status_code", i64::from(code));
        }
        if goid != 0 {
            w.attr_int("goroutine.id", goid as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{
        event::EventHeader,
        grpc::{
            KIND_GRPC_SERVER_END, KIND_GRPC_SERVER_START, KIND_GRPC_TRACEPARENT,
            KIND_GRPC_TRACESTATE, METHOD_CAP, TRACEPARENT_CAP,
        },
        http::TRACESTATE_CAP,
    };
    use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
    use prost::Message as _;

    use super::*;

    fn fill<const N: usize>(s: &str) -> ([u8; N], u32) {
        let mut buf = [0u8; N];
        let n = s.len().min(N);
        buf[..n].copy_from_slice(&s.as_bytes()[..n]);
        (buf, s.len() as u32)
    }

    fn header(kind: u32, goid: u64, ktime_ns: u64) -> EventHeader {
        EventHeader {
            kind,
            target: 0,
            tid: 7,
            site: 0,
            goid,
            ktime_ns,
        }
    }

    /// The server span of one call whose HEADERS carried `traceparent` and
    /// (unless `None`) `tracestate`.
    fn served(traceparent: &str, tracestate: Option<&str>) -> ProtoSpan {
        let mut b = GrpcSpanBuilder::new(WallClock::with_offset_ns(0), 16, 1_000_000_000);
        let mut g = Goroutines::new(true);
        let mut spans = Vec::new();
        let (transport, stream_id) = (0x70, 3);
        let (value, len) = fill::<TRACEPARENT_CAP>(traceparent);
        b.on_traceparent(&GrpcTraceparent {
            header: header(KIND_GRPC_TRACEPARENT, 0, 5),
            transport,
            stream_id,
            len,
            value,
        });
        if let Some(state) = tracestate {
            let (value, len) = fill::<TRACESTATE_CAP>(state);
            b.on_tracestate(&GrpcTracestate {
                header: header(KIND_GRPC_TRACESTATE, 0, 6),
                transport,
                stream_id,
                len,
                value,
            });
        }
        let (method, method_len) = fill::<METHOD_CAP>("/grpc.health.v1.Health/Check");
        b.on_server_start(
            &mut g,
            &GrpcServerStart {
                header: header(KIND_GRPC_SERVER_START, 9, 10),
                stream: 0x50,
                transport,
                method_len,
                stream_id,
                method,
            },
            &mut |s| spans.push(s),
        );
        b.on_server_end(
            &mut g,
            &GrpcServerEnd {
                header: header(KIND_GRPC_SERVER_END, 9, 20),
            },
            &mut |s| spans.push(s),
        );
        assert_eq!(spans.len(), 1);
        ProtoSpan::decode(spans[0].bytes.as_slice()).expect("a valid OTLP Span")
    }

    #[test]
    fn the_callers_tracestate_goes_on_the_server_span() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = served(parent, Some("vendor=value, other=x"));
        assert_eq!(span.trace_state, "vendor=value,other=x", "normalized");
        assert_eq!(
            span.parent_span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(served(parent, None).trace_state, "");
        assert_eq!(
            served(parent, Some("Bad Key=1")).trace_state,
            "",
            "malformed"
        );
        let span = served(&parent.replace("00-4b", "00-xb"), Some("vendor=value"));
        assert_eq!(
            span.trace_state, "",
            "no valid traceparent: not the caller's"
        );
        assert!(span.parent_span_id.is_empty());
    }

    #[test]
    fn methods_split_into_service_and_method() {
        assert_eq!(
            split_method("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        assert_eq!(split_method("Check"), ("", "Check"));
    }

    #[test]
    fn dial_targets_give_host_and_port() {
        let hp = |t| target_host_port(t).map(|(h, p)| (h.into_owned(), p));
        assert_eq!(
            hp("127.0.0.1:50051"),
            Some(("127.0.0.1".into(), Some(50051)))
        );
        assert_eq!(
            hp("dns:///example.com:443"),
            Some(("example.com".into(), Some(443)))
        );
        assert_eq!(
            hp("dns://8.8.8.8/example.com:443"),
            Some(("example.com".into(), Some(443)))
        );
        assert_eq!(
            hp("passthrough:///[::1]:80"),
            Some(("::1".into(), Some(80)))
        );
        assert_eq!(hp("example.com"), Some(("example.com".into(), None)));
        assert_eq!(hp("unix:///tmp/s.sock"), Some(("/tmp/s.sock".into(), None)));
        assert_eq!(hp("unix:/tmp/s.sock"), Some(("/tmp/s.sock".into(), None)));
        assert_eq!(hp(""), None);
    }
}
