//! net/http server requests: start and end records paired per response into
//! one SERVER span each, with OpenTelemetry's HTTP server attributes.
//!
//! Everything the start record says is encoded into the span's protobuf
//! bytes when the start arrives; the end adds its fields, the ids and the
//! times. So an open request holds one buffer, not a string per field.
//!
//! The name is written last, when the span completes: it is
//! `{method} {http.route}` (OpenTelemetry's HTTP server conventions), and
//! the route is known only once a router has matched the request (a route
//! record) or the request has ended (ServeMux's `Request.Pattern`). Without
//! a route it is `{method}`: raw paths would make every URL an operation.

use std::{borrow::Cow, collections::HashMap};

use agent_common::http::{
    END_FIELD_PATTERN, END_FIELD_STATUS, END_FIELD_WRITTEN, FIELD_CONTENT_LENGTH, FIELD_HOST,
    FIELD_METHOD, FIELD_METHOD_IN_URI, FIELD_PROTO, FIELD_REMOTE, FIELD_TLS, FIELD_TLS_KNOWN,
    FIELD_URI, HttpServerEnd, HttpServerStart, HttpTraceparent, HttpTracestate,
};
use agent_common::http_route::HttpRoute;
use agent_common::propagate::{SpanIds, TRACEPARENT_ADOPTED};
use foldhash::fast::RandomState;
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
        url::{QueryPolicy, sanitize_query},
    },
};

/// Key of an open request: (target slot, the `*http.response` or
/// `*http2responseWriter` that both its start and its end see).
type Key = (u32, u64);

/// Bytes reserved for a span's encoding: a span with every attribute and
/// strings of usual lengths (about 450 bytes) fits without a reallocation.
const SPAN_CAPACITY: usize = 640;

/// A request whose end has not been seen yet.
#[derive(Debug)]
struct OpenRequest {
    start_ns: u64,
    goid: u64,
    /// The span's ids, chosen at its start so that spans starting on its
    /// goroutine meanwhile can name it as their parent; the trace id is
    /// the caller's once a valid `traceparent` arrives.
    trace_id: TraceId,
    span_id: SpanId,
    /// The caller's span, from the request's `traceparent`.
    parent: Option<RemoteParent>,
    /// The span's W3C trace flags: whether its trace is sampled.
    flags: u8,
    /// The caller's vendor state, from its `tracestate`, normalized.
    trace_state: Option<String>,
    /// The ids are the kernel's (`--propagate`): the caller is taken as
    /// parent only when the kernel took its trace too.
    kernel_ids: bool,
    /// The span's start attributes, encoded (the name comes at the end).
    encoded: Vec<u8>,
    /// The start record, kept unencoded while the request is sampled out
    /// but a `traceparent` may still bring it in (encoded if it ends
    /// sampled: a copy costs less than an encoding most requests drop).
    deferred: Option<Box<HttpServerStart>>,
    /// The method as the name spells it (`HTTP` for a non-standard one).
    name_method: &'static str,
    /// The path, for [`SpanNaming::Path`] only.
    name_path: Option<Box<str>>,
    /// The route a router matched (its last word wins: nested routers).
    route: Option<Box<str>>,
}

/// How a server span is named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpanNaming {
    /// `{method} {http.route}`, or `{method}` when no route is known.
    #[default]
    Route,
    /// `{method} {url.path}` (the agent's naming before routes).
    Path,
}

/// Builds HTTP server spans.
#[derive(Debug)]
pub struct HttpSpanBuilder {
    open: OpenTable<Key, OpenRequest>,
    clock: WallClock,
    ids: IdGenerator,
    /// The encoded `InstrumentationScope` of every span.
    scope: std::sync::Arc<[u8]>,
    /// Start records that repeated an open start (a probe hit twice when the
    /// goroutine's stack grew at function entry).
    duplicates: u64,
    /// What `url.query` keeps of query values.
    query_policy: QueryPolicy,
    naming: SpanNaming,
    /// The open request of each goroutine (slot, goid) -> response, for
    /// route records, which know only their goroutine.
    by_goroutine: HashMap<(u32, u64), u64, RandomState>,
    /// Route records that found no open request on their goroutine.
    routes_unmatched: u64,
    /// Which traces are exported.
    sampler: Sampler,
    /// Spans not exported: their trace was sampled out.
    sampled_out: u64,
}

/// The first `len` bytes of a string area (all of it when truncated).
fn text(bytes: &[u8], len: u32) -> Cow<'_, str> {
    let n = (len as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[..n])
}

const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The standard method `raw` spells, if it is one.
pub(crate) fn known_method(raw: &[u8]) -> Option<&'static str> {
    KNOWN_METHODS.iter().copied().find(|m| m.as_bytes() == raw)
}

/// Splits `host[:port]` / `[v6]:port`.
pub(crate) fn split_host_port(s: &str) -> (Cow<'_, str>, Option<i64>) {
    if let Some(rest) = s.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return (Cow::Borrowed(host), port);
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (Cow::Borrowed(host), Some(port)),
            Err(_) => (Cow::Borrowed(s), None),
        },
        _ => (Cow::Borrowed(s), None),
    }
}

/// A request target (`Request.RequestURI`) split as net/http splits it into
/// `URL.Path` and `URL.RawQuery`: origin form `/p?q`, absolute form
/// `http://host/p?q`, `*`, or authority form (`CONNECT host:443`, no path).
/// `complete` says whether the whole target was captured; a query cut short
/// is left out rather than reported wrong.
fn split_target(target: &[u8], complete: bool) -> (&[u8], Option<&[u8]>) {
    let from_path = if target.first() == Some(&b'/') || target == b"*" {
        target
    } else if let Some(scheme_end) = find(target, b"://") {
        let rest = &target[scheme_end + 3..];
        match rest.iter().position(|&b| b == b'/' || b == b'?') {
            Some(i) => &rest[i..],
            None => &[],
        }
    } else {
        &[]
    };
    match from_path.iter().position(|&b| b == b'?') {
        Some(i) => {
            let query = &from_path[i + 1..];
            (
                &from_path[..i],
                (complete && !query.is_empty()).then_some(query),
            )
        }
        None => (from_path, None),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `%XX` escapes decoded, as `URL.Path` holds them; a malformed escape
/// (which net/http would have refused) is kept as it is.
fn unescape_path(raw: &[u8]) -> Cow<'_, str> {
    if !raw.contains(&b'%') {
        return String::from_utf8_lossy(raw);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

impl HttpSpanBuilder {
    /// A builder holding at most `capacity` open requests for `ttl_ns` each.
    pub fn new(clock: WallClock, capacity: usize, ttl_ns: u64) -> Self {
        Self {
            open: OpenTable::new(capacity, ttl_ns),
            clock,
            ids: IdGenerator::default(),
            scope: encode_scope(
                &InstrumentationScope::builder("agent/net/http")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            ),
            duplicates: 0,
            query_policy: QueryPolicy::default(),
            naming: SpanNaming::default(),
            by_goroutine: HashMap::default(),
            routes_unmatched: 0,
            sampler: Sampler::default(),
            sampled_out: 0,
        }
    }

    /// The builder with `sampler` deciding which traces are exported
    /// (default: `parentbased_always_on`).
    pub fn with_sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = sampler;
        self
    }

    /// Spans not exported because their trace was sampled out.
    pub fn sampled_out(&self) -> u64 {
        self.sampled_out
    }

    /// The builder with `naming` for span names (default: by route).
    pub fn with_naming(mut self, naming: SpanNaming) -> Self {
        self.naming = naming;
        self
    }

    /// Route records that found no open request on their goroutine.
    pub fn routes_unmatched(&self) -> u64 {
        self.routes_unmatched
    }

    /// A router matched the request open on the record's goroutine: its
    /// route names the span (a later one replaces an earlier one, as a
    /// nested router refines its parent's match).
    pub fn on_route(&mut self, rec: &HttpRoute) {
        let slot = rec.header.target;
        let open = self
            .by_goroutine
            .get(&(slot, rec.header.goid))
            .copied()
            .and_then(|response| self.open.get_mut(&(slot, response)));
        let Some(open) = open else {
            self.routes_unmatched += 1;
            return;
        };
        let kept = (rec.len as usize).min(rec.route.len());
        // A route cut short is no route: the span keeps its method name.
        if kept == rec.len as usize && kept > 0 {
            open.route = Some(String::from_utf8_lossy(&rec.route[..kept]).into());
        }
    }

    /// The builder with `policy` for `url.query` (default: every value
    /// redacted).
    pub fn with_query_policy(mut self, policy: QueryPolicy) -> Self {
        self.query_policy = policy;
        self
    }

    /// Pairing counters.
    /// Stops tracing at `at_ns` (see [`crate::spans::OpenTable::stop_at`]).
    pub fn stop_at(&mut self, at_ns: u64) {
        self.open.stop_at(at_ns);
    }

    pub fn stats(&self) -> PairingStats {
        self.open.stats()
    }

    /// Start records that repeated an open start.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Requests in flight.
    pub fn open_requests(&self) -> usize {
        self.open.len()
    }

    /// A request started.
    pub fn on_start(
        &mut self,
        goroutines: &mut Goroutines,
        rec: &HttpServerStart,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        let key = (rec.header.target, rec.response);
        if let Some(open) = self.open.get(&key)
            && open.goid == rec.header.goid
        {
            // The same call seen twice (the entry probe fires again when the
            // goroutine's stack grows and the function restarts): keep the
            // first, earlier start.
            self.duplicates += 1;
            return;
        }
        let (trace_id, span_id) = (self.ids.trace_id(), self.ids.span_id());
        // The trace starts here, unless a `traceparent` follows (records
        // from the same probe hit, before any child's): then it is decided
        // again, on the caller's trace.
        let flags = self.sampler.root_flags(trace_id, None);
        goroutines.enter(
            (rec.header.target, rec.header.goid),
            ParentSpan {
                trace_id,
                span_id,
                flags,
            },
        );
        // A sampled-out span is never encoded: its record is kept, unless
        // no trace context can make it sampled.
        let (start, deferred) = if sampling::is_sampled(flags) {
            (encode_start(rec, self.query_policy, self.naming), None)
        } else {
            let unencoded = Start {
                encoded: Vec::new(),
                method: "",
                path: None,
            };
            let deferred = (!self.sampler.never_samples()).then(|| Box::new(*rec));
            (unencoded, deferred)
        };
        let request = OpenRequest {
            start_ns: rec.header.ktime_ns,
            goid: rec.header.goid,
            trace_id,
            span_id,
            parent: None,
            flags,
            trace_state: None,
            kernel_ids: false,
            encoded: start.encoded,
            deferred,
            name_method: start.method,
            name_path: start.path,
            route: None,
        };
        self.by_goroutine
            .insert((rec.header.target, rec.header.goid), rec.response);
        if let Some((displaced_key, displaced)) = self.open.open(key, request, rec.header.ktime_ns)
        {
            let reason = if displaced_key == key {
                Incomplete::Replaced
            } else {
                Incomplete::Evicted
            };
            if let Some(span) = self.span(
                goroutines,
                displaced_key.0,
                displaced,
                rec.header.ktime_ns,
                None,
                Some(reason),
            ) {
                out(span);
            }
        }
    }

    /// A request's `Traceparent` header, found right after its start: a
    /// valid one makes the request's span a child of the caller's. Returns
    /// whether it did.
    pub fn on_traceparent(&mut self, goroutines: &mut Goroutines, rec: &HttpTraceparent) -> bool {
        let slot = rec.header.target;
        let Some(open) = self.open.get_mut(&(slot, rec.response)) else {
            return false;
        };
        let kept = (rec.len as usize).min(rec.value.len());
        open.parent = traceparent::parse(&rec.value[..kept], rec.len as usize);
        if open.kernel_ids && rec._pad != TRACEPARENT_ADOPTED {
            // The kernel kept its own trace for what it sends on: so does
            // the span.
            open.parent = None;
        }
        if let Some(parent) = open.parent {
            open.trace_id = parent.trace_id;
            open.flags = self.sampler.root_flags(parent.trace_id, Some(parent.flags));
            goroutines.retrace((slot, open.goid), open.span_id, parent.trace_id, open.flags);
        }
        open.parent.is_some()
    }

    /// The ids the kernel made for a request's span, the ones it sends on
    /// in the requests made under it (`--propagate`), right after its
    /// start: the span is exported with exactly those.
    pub fn on_ids(&mut self, goroutines: &mut Goroutines, rec: &SpanIds) {
        if rec.trace_id == [0; 16] || rec.span_id == [0; 8] {
            return;
        }
        let slot = rec.header.target;
        let Some(open) = self.open.get_mut(&(slot, rec.key)) else {
            return;
        };
        if open.goid != rec.header.goid {
            return;
        }
        let old = open.span_id;
        open.trace_id = TraceId::from_bytes(rec.trace_id);
        open.span_id = SpanId::from_bytes(rec.span_id);
        // The kernel's sampling decision is the one the wire carries: the
        // span follows it, or a trace would be kept by the callee and not
        // here (the decision made on the ids this span had before).
        open.flags = rec.flags;
        open.kernel_ids = true;
        goroutines.reassign(
            (slot, open.goid),
            old,
            ParentSpan {
                trace_id: open.trace_id,
                span_id: open.span_id,
                flags: rec.flags,
            },
        );
    }

    /// A request's `Tracestate` header, found after its `Traceparent`: kept
    /// for the span when the `traceparent` was valid and the value is too.
    pub fn on_tracestate(&mut self, _goroutines: &mut Goroutines, rec: &HttpTracestate) {
        let Some(open) = self.open.get_mut(&(rec.header.target, rec.response)) else {
            return;
        };
        if open.parent.is_some() {
            let kept = (rec.len as usize).min(rec.value.len());
            open.trace_state = tracestate::parse(&rec.value[..kept], rec.len as usize);
        }
    }

    /// A request's response is being finished.
    pub fn on_end(
        &mut self,
        goroutines: &mut Goroutines,
        rec: &HttpServerEnd,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        let slot = rec.header.target;
        if let Some(open) = self.open.close(&(slot, rec.response), rec.header.ktime_ns)
            && let Some(span) =
                self.span(goroutines, slot, open, rec.header.ktime_ns, Some(rec), None)
        {
            out(span);
        }
    }

    /// Exports requests open longer than the time-to-live, marked expired.
    pub fn expire(
        &mut self,
        goroutines: &mut Goroutines,
        now_ns: u64,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        for ((slot, _), open) in self.open.expire(now_ns) {
            if let Some(span) = self.span(
                goroutines,
                slot,
                open,
                now_ns,
                None,
                Some(Incomplete::Expired),
            ) {
                out(span);
            }
        }
    }

    /// Exports every open request, marked as cut short by shutdown.
    pub fn finish(
        &mut self,
        goroutines: &mut Goroutines,
        now_ns: u64,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        for ((slot, _), open) in self.open.drain() {
            if let Some(span) = self.span(
                goroutines,
                slot,
                open,
                now_ns,
                None,
                Some(Incomplete::Shutdown),
            ) {
                out(span);
            }
        }
    }

    /// Completes an open request's encoding with its ids, times and what the
    /// end record (if any) says; `None` (counted) when its trace is sampled
    /// out.
    fn span(
        &mut self,
        goroutines: &mut Goroutines,
        slot: u32,
        open: OpenRequest,
        end_ns: u64,
        end: Option<&HttpServerEnd>,
        incomplete: Option<Incomplete>,
    ) -> Option<EncodedSpan> {
        goroutines.exit((slot, open.goid), open.span_id);
        if let std::collections::hash_map::Entry::Occupied(entry) =
            self.by_goroutine.entry((slot, open.goid))
            && self.open.get(&(slot, *entry.get())).is_none()
        {
            entry.remove();
        }
        if !sampling::is_sampled(open.flags) {
            self.sampled_out += 1;
            return None;
        }
        let mut open = open;
        if let Some(rec) = open.deferred.take() {
            // Sampled after all (by its `traceparent`).
            let start = encode_start(&rec, self.query_policy, self.naming);
            open.encoded = start.encoded;
            open.name_method = start.method;
            open.name_path = start.path;
        }
        let mut bytes = open.encoded;
        let mut w = SpanWriter::new(&mut bytes);
        // A request that carries a trace context continues that trace, as a
        // child of the caller's span; otherwise it starts one.
        let (parent, flags) = match open.parent {
            Some(p) => (
                Some(p.span_id),
                u32::from(open.flags) | SPAN_FLAGS_HAS_IS_REMOTE | SPAN_FLAGS_IS_REMOTE,
            ),
            None => (None, u32::from(open.flags) | SPAN_FLAGS_HAS_IS_REMOTE),
        };
        w.ids(open.trace_id, open.span_id, parent);
        if let (Some(_), Some(state)) = (open.parent, &open.trace_state) {
            w.trace_state(state);
        }
        w.kind(&SpanKind::Server).times(
            self.clock.to_unix_ns(open.start_ns),
            self.clock.to_unix_ns(end_ns.max(open.start_ns)),
        );
        let mut error = false;
        if let Some(end) = end {
            if end.fields & END_FIELD_STATUS != 0 {
                // net/http answers 200 when the handler wrote no header;
                // finishRequest writes it after the probe has read 0.
                let code = if end.status == 0 { 200 } else { end.status };
                w.attr_int("http.response.status_code", code);
                if code >= 500 {
                    w.attr_str("error.type", &code.to_string());
                    error = true;
                }
            }
            if end.fields & END_FIELD_WRITTEN != 0 {
                w.attr_int("http.response.body.size", end.written);
            }
        }
        // A router's route, else ServeMux's pattern (its path part: a
        // pattern may say `GET example.com/items/{id}`).
        let pattern = end
            .filter(|end| {
                end.fields & END_FIELD_PATTERN != 0
                    && end.pattern_len > 0
                    && end.pattern_len as usize <= end.pattern.len()
            })
            .map(|end| text(&end.pattern, end.pattern_len));
        let route = open
            .route
            .as_deref()
            .or_else(|| pattern.as_deref().map(pattern_path))
            .filter(|route| !route.is_empty());
        if let Some(route) = route {
            w.attr_str("http.route", route);
        }
        match (self.naming, route, open.name_path.as_deref()) {
            (SpanNaming::Route, Some(route), _) => w.name(&[open.name_method, " ", route]),
            (SpanNaming::Path, _, Some(path)) if !path.is_empty() => {
                w.name(&[open.name_method, " ", path])
            }
            _ => w.name(&[open.name_method]),
        };
        if let Some(reason) = incomplete {
            w.attr_str("agent.span.incomplete", reason.as_str());
        }
        if error {
            w.status_error("");
        }
        w.flags(flags);
        Some(EncodedSpan {
            scope: self.scope.clone(),
            bytes,
        })
    }
}

/// OTLP `SpanFlags`: the W3C trace flags in the low byte; whether the
/// parent is remote is known (bit 8) and whether it is (bit 9).
const SPAN_FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const SPAN_FLAGS_IS_REMOTE: u32 = 0x200;

/// An address and port attribute pair from a `host[:port]` string area;
/// nothing for an empty string.
fn attr_host_port(w: &mut SpanWriter<'_>, keys: (&str, &str), bytes: &[u8], len: u32) {
    if len == 0 {
        return;
    }
    let text = text(bytes, len);
    let (address, port) = split_host_port(&text);
    w.attr_str(keys.0, &address);
    if let Some(port) = port {
        w.attr_int(keys.1, port);
    }
}

/// The path part of a ServeMux pattern `[METHOD ][HOST]/PATH`.
fn pattern_path(pattern: &str) -> &str {
    let rest = pattern.split_once(' ').map_or(pattern, |(_, rest)| rest);
    rest.find('/').map_or("", |at| &rest[at..])
}

/// What a start record gives a span: its encoded attributes and the parts
/// of its name.
struct Start {
    encoded: Vec<u8>,
    method: &'static str,
    path: Option<Box<str>>,
}

/// Every attribute a start record gives, encoded, and the parts of the
/// span's name.
fn encode_start(rec: &HttpServerStart, query_policy: QueryPolicy, naming: SpanNaming) -> Start {
    let has = |flag| rec.fields & flag != 0;
    let mut bytes = crate::export::span_buffer(SPAN_CAPACITY);
    let mut w = SpanWriter::new(&mut bytes);

    let (method, target): (&[u8], &[u8]) = if has(FIELD_METHOD_IN_URI) {
        let at = usize::from(rec.uri_at).min(rec.uri.len());
        let method_end = (rec.method_len as usize).min(at);
        let target_end = at.saturating_add(rec.uri_len as usize).min(rec.uri.len());
        (&rec.uri[..method_end], &rec.uri[at..target_end])
    } else {
        let method_end = (rec.method_len as usize).min(rec.method.len());
        let target_end = (rec.uri_len as usize).min(rec.uri.len());
        (&rec.method[..method_end], &rec.uri[..target_end])
    };
    let target_complete = target.len() == rec.uri_len as usize;
    let method = has(FIELD_METHOD).then_some(method);
    let known = method.and_then(known_method);
    let (path, query) = if has(FIELD_URI) {
        let (path, query) = split_target(target, target_complete);
        (Some(unescape_path(path)), query)
    } else {
        (None, None)
    };

    let name_method = known.unwrap_or("HTTP");
    let name_path = match (&path, naming) {
        (Some(path), SpanNaming::Path) => Some(Box::from(&**path)),
        _ => None,
    };
    match (known, method) {
        (Some(known), _) => {
            w.attr_str("http.request.method", known);
        }
        (None, Some(other)) => {
            w.attr_str("http.request.method", "_OTHER");
            w.attr_str(
                "http.request.method_original",
                &String::from_utf8_lossy(other),
            );
        }
        (None, None) => {}
    }
    if let Some(path) = &path {
        w.attr_str("url.path", path);
    }
    if let Some(query) = query {
        w.attr_str(
            "url.query",
            &sanitize_query(&String::from_utf8_lossy(query), query_policy),
        );
    }
    if has(FIELD_TLS_KNOWN) {
        w.attr_str("url.scheme", if has(FIELD_TLS) { "https" } else { "http" });
    }
    if has(FIELD_HOST) {
        attr_host_port(
            &mut w,
            ("server.address", "server.port"),
            &rec.host,
            rec.host_len,
        );
    }
    if has(FIELD_REMOTE) {
        attr_host_port(
            &mut w,
            ("client.address", "client.port"),
            &rec.remote,
            rec.remote_len,
        );
    }
    if has(FIELD_PROTO) {
        w.attr_str("network.protocol.name", "http");
        match (rec.proto_major, rec.proto_minor) {
            (1, 1) => w.attr_str("network.protocol.version", "1.1"),
            (1, 0) => w.attr_str("network.protocol.version", "1.0"),
            (major, 0) if major >= 2 => w.attr_str("network.protocol.version", &major.to_string()),
            (major, minor) => w.attr_str("network.protocol.version", &format!("{major}.{minor}")),
        };
    }
    if has(FIELD_CONTENT_LENGTH) && rec.content_length > 0 {
        w.attr_int("http.request.body.size", rec.content_length);
    }
    w.attr_int("goroutine.id", rec.header.goid as i64);
    w.attr_int("thread.id", i64::from(rec.header.tid));
    Start {
        encoded: bytes,
        method: name_method,
        path: name_path,
    }
}

#[cfg(test)]
mod tests {
    use crate::spans::Goroutines;
    use agent_common::{
        event::EventHeader,
        http::{
            HOST_CAP, KIND_HTTP_SERVER_END, KIND_HTTP_SERVER_START, KIND_HTTP_TRACEPARENT,
            KIND_HTTP_TRACESTATE, METHOD_CAP, PATTERN_CAP, REMOTE_CAP, TRACEPARENT_CAP,
            TRACESTATE_CAP, URI_CAP,
        },
        http_route::{KIND_HTTP_ROUTE, ROUTE_CAP},
    };

    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_proto::tonic::{common::v1::any_value::Value, trace::v1::Span as ProtoSpan};
    use prost::Message as _;

    use super::*;

    fn fill<const N: usize>(s: &str) -> ([u8; N], u32) {
        let mut buf = [0u8; N];
        let n = s.len().min(N);
        buf[..n].copy_from_slice(&s.as_bytes()[..n]);
        (buf, s.len() as u32)
    }

    /// A start record as HTTP/2 gives it: method and target read apart.
    fn start(goid: u64, t: u64, response: u64, method: &str, target: &str) -> HttpServerStart {
        let (method, method_len) = fill::<METHOD_CAP>(method);
        let (uri, uri_len) = fill::<URI_CAP>(target);
        let (host, host_len) = fill::<HOST_CAP>("localhost:8080");
        let (remote, remote_len) = fill::<REMOTE_CAP>("127.0.0.1:50000");
        HttpServerStart {
            header: EventHeader {
                kind: KIND_HTTP_SERVER_START,
                target: 0,
                tid: 99,
                site: 0,
                goid,
                ktime_ns: t,
            },
            request: 0x1000,
            response,
            content_length: 0,
            proto_major: 1,
            proto_minor: 1,
            uri_at: 0,
            fields: FIELD_METHOD
                | FIELD_URI
                | FIELD_HOST
                | FIELD_REMOTE
                | FIELD_PROTO
                | FIELD_TLS_KNOWN
                | FIELD_TLS,
            method_len,
            uri_len,
            host_len,
            remote_len,
            method,
            uri,
            host,
            remote,
        }
    }

    /// A start record as HTTP/1 gives it: `line` is the request line up to
    /// the target's end, copied with one read; `target_len` may exceed what
    /// fits (a truncated target).
    fn start_line(response: u64, line: &str, target_len: Option<u32>) -> HttpServerStart {
        let (method, target) = line.split_once(' ').expect("method and target");
        let mut rec = start(3, 100, response, "", "");
        let (uri, _) = fill::<URI_CAP>(line);
        rec.uri = uri;
        rec.uri_at = (method.len() + 1) as u16;
        rec.method_len = method.len() as u32;
        rec.uri_len = target_len.unwrap_or(target.len() as u32);
        rec.fields |= FIELD_METHOD_IN_URI;
        rec
    }

    fn end(goid: u64, t: u64, response: u64, status: i64) -> HttpServerEnd {
        let (pattern, _) = fill::<PATTERN_CAP>("");
        HttpServerEnd {
            header: EventHeader {
                kind: KIND_HTTP_SERVER_END,
                target: 0,
                tid: 99,
                site: 1,
                goid,
                ktime_ns: t,
            },
            response,
            status,
            written: 5,
            fields: END_FIELD_STATUS | END_FIELD_WRITTEN,
            pattern_len: 0,
            pattern,
        }
    }

    fn decode(span: &EncodedSpan) -> ProtoSpan {
        ProtoSpan::decode(span.bytes.as_slice()).expect("a valid OTLP Span")
    }

    fn attr(span: &ProtoSpan, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                other => format!("{other:?}"),
            })
    }

    #[test]
    fn start_and_end_make_one_server_span() {
        let mut b = HttpSpanBuilder::new(WallClock::with_offset_ns(0), 16, 1_000_000_000);
        let mut g = Goroutines::new(true);
        let mut spans = Vec::new();
        b.on_start(
            &mut g,
            &start(7, 1_000, 0xa, "POST", "/items/x"),
            &mut |s| spans.push(s),
        );
        b.on_start(
            &mut g,
            &start(7, 1_500, 0xa, "POST", "/items/x"),
            &mut |s| spans.push(s),
        );
        assert!(spans.is_empty());
        b.on_end(&mut g, &end(7, 3_000, 0xa, 503), &mut |s| spans.push(s));
        assert_eq!(spans.len(), 1);
        let s = &decode(&spans[0]);
        assert_eq!(s.name, "POST", "no route: the method alone");
        assert_eq!(s.kind, 2, "SERVER");
        assert_eq!(attr(s, "http.request.method").as_deref(), Some("POST"));
        assert_eq!(attr(s, "url.path").as_deref(), Some("/items/x"));
        assert_eq!(attr(s, "url.scheme").as_deref(), Some("https"));
        assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("503"));
        assert_eq!(attr(s, "server.address").as_deref(), Some("localhost"));
        assert_eq!(attr(s, "server.port").as_deref(), Some("8080"));
        assert_eq!(attr(s, "client.port").as_deref(), Some("50000"));
        assert_eq!(attr(s, "network.protocol.version").as_deref(), Some("1.1"));
        assert_eq!(attr(s, "goroutine.id").as_deref(), Some("7"));
        assert_eq!(attr(s, "error.type").as_deref(), Some("503"));
        assert_eq!(s.status.as_ref().map(|st| st.code), Some(2), "ERROR");
        assert_eq!(
            s.end_time_unix_nano - s.start_time_unix_nano,
            2_000,
            "the duplicate start must not move the start time"
        );
        assert_eq!(b.duplicates(), 1);
    }

    #[test]
    fn unknown_method_and_unmatched_end() {
        let mut b = HttpSpanBuilder::new(WallClock::with_offset_ns(0), 16, 1_000_000_000);
        let mut g = Goroutines::new(true);
        let mut spans = Vec::new();
        b.on_end(&mut g, &end(1, 10, 0xa, 200), &mut |s| spans.push(s));
        assert!(spans.is_empty());
        assert_eq!(b.stats().unmatched_ends, 1);
        b.on_start(&mut g, &start(2, 10, 0xb, "PURGE", "/c"), &mut |s| {
            spans.push(s)
        });
        b.on_end(&mut g, &end(2, 20, 0xb, 0), &mut |s| spans.push(s));
        let spans: Vec<ProtoSpan> = spans.iter().map(decode).collect();
        assert_eq!(spans[0].name, "HTTP");
        assert_eq!(
            attr(&spans[0], "http.request.method").as_deref(),
            Some("_OTHER")
        );
        assert_eq!(
            attr(&spans[0], "http.request.method_original").as_deref(),
            Some("PURGE")
        );
        assert_eq!(
            attr(&spans[0], "http.response.status_code").as_deref(),
            Some("200")
        );
        assert_eq!(spans[0].status, None, "UNSET");
    }

    #[test]
    fn open_requests_expire_and_flush_marked() {
        let mut b = HttpSpanBuilder::new(WallClock::with_offset_ns(0), 16, 100);
        let mut g = Goroutines::new(true);
        let mut spans = Vec::new();
        b.on_start(&mut g, &start(1, 0, 0xa, "GET", "/a"), &mut |s| {
            spans.push(s)
        });
        b.on_start(&mut g, &start(2, 150, 0xb, "GET", "/b"), &mut |s| {
            spans.push(s)
        });
        b.expire(&mut g, 200, &mut |s| spans.push(s));
        assert_eq!(spans.len(), 1);
        assert_eq!(
            attr(&decode(&spans[0]), "agent.span.incomplete").as_deref(),
            Some("expired")
        );
        b.finish(&mut g, 300, &mut |s| spans.push(s));
        let spans: Vec<ProtoSpan> = spans.iter().map(decode).collect();
        assert_eq!(
            attr(&spans[1], "agent.span.incomplete").as_deref(),
            Some("shutdown")
        );
        assert!(attr(&spans[1], "http.response.status_code").is_none());
    }

    fn one_span(rec: &HttpServerStart) -> ProtoSpan {
        one_span_with(rec, QueryPolicy::Redact)
    }

    fn one_span_with(rec: &HttpServerStart, policy: QueryPolicy) -> ProtoSpan {
        let mut b = HttpSpanBuilder::new(WallClock::with_offset_ns(0), 16, 1_000_000_000)
            .with_query_policy(policy);
        let mut g = Goroutines::new(true);
        let mut spans = Vec::new();
        b.on_start(&mut g, rec, &mut |s| spans.push(s));
        b.on_end(&mut g, &end(0, 200, rec.response, 200), &mut |s| {
            spans.push(s)
        });
        assert_eq!(spans.len(), 1);
        decode(&spans[0])
    }

    #[test]
    fn request_line_read_in_one_piece() {
        let s = one_span(&start_line(0xa, "GET /a%20b/c?x=1&sig=s3cret&y", None));
        assert_eq!(s.name, "GET");
        assert_eq!(attr(&s, "http.request.method").as_deref(), Some("GET"));
        assert_eq!(attr(&s, "url.path").as_deref(), Some("/a b/c"));
        assert_eq!(
            attr(&s, "url.query").as_deref(),
            Some("x=REDACTED&sig=REDACTED&y"),
            "every value redacted by default"
        );
        assert_eq!(attr(&s, "goroutine.id").as_deref(), Some("3"));
        let s = one_span_with(
            &start_line(0xa, "GET /a%20b/c?x=1&sig=s3cret&y", None),
            QueryPolicy::Keep,
        );
        assert_eq!(
            attr(&s, "url.query").as_deref(),
            Some("x=1&sig=REDACTED&y"),
            "sig is one of the keys OpenTelemetry says to redact"
        );
    }

    #[test]
    fn target_forms() {
        let cases = [
            ("OPTIONS *", "*", None),
            (
                "GET http://example.com:8080/p/q?k=v",
                "/p/q",
                Some("k=REDACTED"),
            ),
            ("GET http://example.com", "", None),
            ("CONNECT example.com:443", "", None),
            ("GET /bad%zzescape", "/bad%zzescape", None),
            ("GET /?", "/", None),
        ];
        for (line, path, query) in cases {
            let s = one_span(&start_line(0xa, line, None));
            assert_eq!(attr(&s, "url.path").as_deref(), Some(path), "{line}");
            assert_eq!(attr(&s, "url.query").as_deref(), query, "{line}");
        }
    }

    #[test]
    fn truncated_target_keeps_path_drops_partial_query() {
        let s = one_span(&start_line(0xa, "GET /p?k=v", Some(5000)));
        assert_eq!(attr(&s, "url.path").as_deref(), Some("/p"));
        assert_eq!(attr(&s, "url.query"), None);
    }

    #[test]
    fn reused_response_replaces_a_request_that_never_ended() {
        let mut b = HttpSpanBuilder::new(WallClock::with_offset_ns(0), 16, 1_000_000_000);
        let mut g = Goroutines::new(true);
        let mut spans = Vec::new();
        b.on_start(&mut g, &start(1, 10, 0xa, "GET", "/ws"), &mut |s| {
            spans.push(s)
        });
        b.on_start(&mut g, &start(2, 20, 0xa, "GET", "/next"), &mut |s| {
            spans.push(s)
        });
        b.on_end(&mut g, &end(0, 30, 0xa, 200), &mut |s| spans.push(s));
        let spans: Vec<ProtoSpan> = spans.iter().map(decode).collect();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].name, "GET");
        assert_eq!(
            attr(&spans[0], "agent.span.incomplete").as_deref(),
            Some("replaced")
        );
        assert_eq!(spans[1].name, "GET");
        assert_eq!(attr(&spans[1], "agent.span.incomplete"), None);
    }

    #[test]
    fn incoming_traceparent_makes_a_child_of_the_remote_span() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (found, s, _) = traced(value, 5, Sampler::default());
        let s = s.expect("sampled upstream: exported");
        assert!(found);
        assert_eq!(
            s.trace_id,
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736")
                .unwrap()
                .to_bytes()
        );
        assert_eq!(
            s.parent_span_id,
            SpanId::from_hex("00f067aa0ba902b7").unwrap().to_bytes()
        );
        assert_eq!(s.flags, 0x301, "sampled upstream, remote parent");

        let (found, s, _) = traced(&value.replace("00-4b", "00-xb"), 5, Sampler::default());
        let s = s.expect("a root: sampled");
        assert!(!found);
        assert!(s.parent_span_id.is_empty(), "a malformed value is ignored");
        assert_eq!(s.flags, 0x101);

        let (found, s, _) = traced(value, 0, Sampler::default());
        assert!(found, "the traceparent record has no goroutine id");
        assert!(!s.expect("exported").parent_span_id.is_empty());
    }

    /// With `--propagate` the kernel makes the span's ids and decides its
    /// sampling: the span follows the flags the kernel sent on, whatever
    /// the sampler said of the ids it had before.
    #[test]
    fn the_kernels_ids_bring_their_sampling_decision() {
        for (kernel_flags, exported) in [(0u8, false), (1, true)] {
            for root in ["always_on", "parentbased_always_off"] {
                let sampler = Sampler::parse(root, None).expect("sampler");
                let mut b = HttpSpanBuilder::new(WallClock::with_offset_ns(0), 16, 1_000_000_000)
                    .with_sampler(sampler);
                let mut g = Goroutines::new(true);
                let mut spans = Vec::new();
                b.on_start(&mut g, &start(5, 10, 0xa, "GET", "/x"), &mut |s| {
                    spans.push(s)
                });
                let ids = SpanIds {
                    header: EventHeader {
                        kind: agent_common::propagate::KIND_SERVER_IDS,
                        target: 0,
                        tid: 99,
                        site: 0,
                        goid: 5,
                        ktime_ns: 11,
                    },
                    key: 0xa,
                    trace_id: [7; 16],
                    span_id: [8; 8],
                    parent_id: [0; 8],
                    flags: kernel_flags,
                    _pad: [0; 7],
                };
                b.on_ids(&mut g, &ids);
                let child = g.parent((0, 5), 12).expect("the request is open");
                assert_eq!(child.flags, kernel_flags, "{root}: what a child sends on");
                b.on_end(&mut g, &end(0, 20, 0xa, 200), &mut |s| spans.push(s));
                let spans: Vec<ProtoSpan> = spans.iter().map(decode).collect();
                assert_eq!(
                    spans.len(),
                    usize::from(exported),
                    "{root}, flags {kernel_flags}"
                );
                assert_eq!(b.sampled_out(), u64::from(!exported), "{root}");
                if let Some(s) = spans.first() {
                    assert_eq!(s.trace_id, vec![7; 16]);
                    assert_eq!(s.span_id, vec![8; 8]);
                    assert_eq!(s.name, "GET", "{root}: the start encoded late");
                }
            }
        }
    }

    /// One request with the `traceparent` `value` (its record's goroutine
    /// `goid`): whether it was valid, the span if exported, and the flags a
    /// child starting in the handler gets.
    fn traced(value: &str, goid: u64, sampler: Sampler) -> (bool, Option<ProtoSpan>, u8) {
        let mut b = HttpSpanBuilder::new(WallClock::with_offset_ns(0), 16, 1_000_000_000)
            .with_sampler(sampler);
        let mut g = Goroutines::new(true);
        let mut spans = Vec::new();
        b.on_start(&mut g, &start(5, 10, 0xa, "GET", "/child"), &mut |s| {
            spans.push(s)
        });
        let (bytes, len) = fill::<TRACEPARENT_CAP>(value);
        let found = b.on_traceparent(
            &mut g,
            &HttpTraceparent {
                header: EventHeader {
                    kind: KIND_HTTP_TRACEPARENT,
                    target: 0,
                    tid: 99,
                    site: 0,
                    goid,
                    ktime_ns: 11,
                },
                response: 0xa,
                len,
                _pad: 0,
                value: bytes,
            },
        );
        let child = g.parent((0, 5), 12).expect("the request is open").flags;
        b.on_end(&mut g, &end(0, 20, 0xa, 200), &mut |s| spans.push(s));
        assert_eq!(
            spans.len() as u64 + b.sampled_out(),
            1,
            "counted either way"
        );
        (found, spans.first().map(decode), child)
    }

    #[test]
    fn the_sampler_decides_once_for_the_request_and_its_children() {
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let none = "none";
        // parentbased_always_on: the caller decides; a root is sampled.
        let (_, s, child) = traced(unsampled, 5, Sampler::default());
        assert!(s.is_none(), "the caller did not sample it");
        assert_eq!(child, 0x00, "nor its children");
        let (_, s, child) = traced(none, 5, Sampler::default());
        assert_eq!((s.map(|s| s.flags), child), (Some(0x101), 0x01));
        // always_on: sampled whatever the caller says.
        let (_, s, child) = traced(unsampled, 5, Sampler::ALWAYS_ON);
        assert_eq!((s.map(|s| s.flags), child), (Some(0x301), 0x01));
        // always_off: nothing, not even with a sampled caller.
        let (_, s, child) = traced(sampled, 5, Sampler::ALWAYS_OFF);
        assert_eq!((s, child), (None, 0x00));
        // parentbased_always_off: only what the caller sampled.
        let pb_off = Sampler::parse("parentbased_always_off", None).unwrap();
        let (_, s, child) = traced(sampled, 5, pb_off);
        let s = s.expect("the caller sampled it");
        assert_eq!((s.flags, child), (0x301, 0x01));
        // Not encoded at its start (sampled out then), encoded at its end.
        assert_eq!(s.name, "GET");
        assert_eq!(attr(&s, "url.path").as_deref(), Some("/child"));
        assert_eq!(attr(&s, "http.request.method").as_deref(), Some("GET"));
        let (_, s, child) = traced(none, 5, pb_off);
        assert_eq!((s, child), (None, 0x00));
        // traceidratio: the caller's trace id decides; this one's low 8
        // bytes (a3ce929d0e0e4736) are about 0.64 of the way up.
        let (_, s, _) = traced(sampled, 5, Sampler::ratio(0.6, false));
        assert!(s.is_none());
        let (_, s, _) = traced(unsampled, 5, Sampler::ratio(0.7, false));
        assert_eq!(s.map(|s| s.flags), Some(0x301));
    }

    #[test]
    fn tracestate_is_kept_only_with_a_valid_traceparent() {
        let header = |kind| EventHeader {
            kind,
            target: 0,
            tid: 99,
            site: 0,
            goid: 0,
            ktime_ns: 11,
        };
        let traced = |traceparent: &str, tracestate: &str| {
            let mut b = HttpSpanBuilder::new(WallClock::with_offset_ns(0), 16, 1_000_000_000);
            let mut g = Goroutines::new(true);
            let mut spans = Vec::new();
            b.on_start(&mut g, &start(5, 10, 0xa, "GET", "/child"), &mut |s| {
                spans.push(s)
            });
            let (value, len) = fill::<TRACEPARENT_CAP>(traceparent);
            b.on_traceparent(
                &mut g,
                &HttpTraceparent {
                    header: header(KIND_HTTP_TRACEPARENT),
                    response: 0xa,
                    len,
                    _pad: 0,
                    value,
                },
            );
            let (value, len) = fill::<TRACESTATE_CAP>(tracestate);
            b.on_tracestate(
                &mut g,
                &HttpTracestate {
                    header: header(KIND_HTTP_TRACESTATE),
                    response: 0xa,
                    len,
                    _pad: 0,
                    value,
                },
            );
            b.on_end(&mut g, &end(0, 20, 0xa, 200), &mut |s| spans.push(s));
            decode(&spans[0]).trace_state
        };
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(traced(parent, "congo=t61rcWkgMzE"), "congo=t61rcWkgMzE");
        assert_eq!(traced(parent, "Bad Key=1"), "", "a malformed list");
        assert_eq!(
            traced(&parent.replace("00-4b", "00-xb"), "congo=t61rcWkgMzE"),
            "",
            "no valid traceparent: the state is not the caller's"
        );
    }

    fn route(goid: u64, t: u64, route: &str) -> HttpRoute {
        let (bytes, len) = fill::<ROUTE_CAP>(route);
        HttpRoute {
            header: EventHeader {
                kind: KIND_HTTP_ROUTE,
                target: 0,
                tid: 99,
                site: 1,
                goid,
                ktime_ns: t,
            },
            len,
            router: 1,
            route: bytes,
        }
    }

    /// One request: start, the route records, an end with `pattern`.
    fn routed(naming: SpanNaming, routes: &[&str], pattern: &str) -> (ProtoSpan, u64) {
        let mut b = HttpSpanBuilder::new(WallClock::with_offset_ns(0), 16, 1_000_000_000)
            .with_naming(naming);
        let mut g = Goroutines::new(true);
        let mut spans = Vec::new();
        b.on_start(&mut g, &start(7, 10, 0xa, "GET", "/users/42"), &mut |s| {
            spans.push(s)
        });
        for r in routes {
            b.on_route(&route(7, 11, r));
        }
        let mut end = end(7, 20, 0xa, 200);
        let (bytes, len) = fill::<PATTERN_CAP>(pattern);
        end.pattern = bytes;
        end.pattern_len = len;
        end.fields |= END_FIELD_PATTERN;
        b.on_end(&mut g, &end, &mut |s| spans.push(s));
        assert_eq!(spans.len(), 1);
        (decode(&spans[0]), b.routes_unmatched())
    }

    #[test]
    fn route_names_the_span() {
        let (s, _) = routed(SpanNaming::Route, &["/users/:id"], "");
        assert_eq!(s.name, "GET /users/:id");
        assert_eq!(attr(&s, "http.route").as_deref(), Some("/users/:id"));
        assert_eq!(attr(&s, "url.path").as_deref(), Some("/users/42"));

        // Nested routers: the last word wins; a router beats ServeMux.
        let (s, _) = routed(SpanNaming::Route, &["/api/*", "/api/users/{id}"], "/api/");
        assert_eq!(s.name, "GET /api/users/{id}");

        // ServeMux alone: the pattern's path part.
        let (s, _) = routed(SpanNaming::Route, &[], "GET localhost/users/{id}");
        assert_eq!(s.name, "GET /users/{id}");
        assert_eq!(attr(&s, "http.route").as_deref(), Some("/users/{id}"));
        let (s, _) = routed(SpanNaming::Route, &[], "/users/");
        assert_eq!(s.name, "GET /users/");

        // The old naming keeps the path, whatever the route.
        let (s, _) = routed(SpanNaming::Path, &["/users/:id"], "");
        assert_eq!(s.name, "GET /users/42");
        assert_eq!(attr(&s, "http.route").as_deref(), Some("/users/:id"));
    }

    #[test]
    fn routes_of_other_goroutines_or_cut_short_are_not_used() {
        let mut b = HttpSpanBuilder::new(WallClock::with_offset_ns(0), 16, 1_000_000_000);
        let mut g = Goroutines::new(true);
        let mut spans = Vec::new();
        b.on_route(&route(7, 5, "/before"));
        b.on_start(&mut g, &start(7, 10, 0xa, "GET", "/x"), &mut |s| {
            spans.push(s)
        });
        b.on_route(&route(8, 11, "/other"));
        let mut long = route(7, 12, "/long");
        long.len = 500;
        b.on_route(&long);
        b.on_end(&mut g, &end(7, 20, 0xa, 200), &mut |s| spans.push(s));
        b.on_route(&route(7, 25, "/after"));
        let s = decode(&spans[0]);
        assert_eq!(s.name, "GET");
        assert_eq!(attr(&s, "http.route"), None);
        assert_eq!(b.routes_unmatched(), 3, "before, other goroutine, after");
    }

    #[test]
    fn pattern_path_parts() {
        assert_eq!(pattern_path("/a/{b}"), "/a/{b}");
        assert_eq!(pattern_path("GET /a"), "/a");
        assert_eq!(pattern_path("POST host.example/a/"), "/a/");
        assert_eq!(pattern_path("host.example/"), "/");
        assert_eq!(pattern_path("GET host"), "");
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a.b:80"), (Cow::Borrowed("a.b"), Some(80)));
        assert_eq!(
            split_host_port("[::1]:8080"),
            (Cow::Borrowed("::1"), Some(8080))
        );
        assert_eq!(split_host_port("a.b"), (Cow::Borrowed("a.b"), None));
        assert_eq!(split_host_port("::1"), (Cow::Borrowed("::1"), None));
    }
}
