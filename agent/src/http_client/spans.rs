//! net/http client calls: start and end records paired per goroutine into
//! one CLIENT span each, with OpenTelemetry's HTTP client attributes, as a
//! child of the span open on the calling goroutine (the server span of the
//! request being handled) when there is one.

use std::{borrow::Cow, collections::HashMap, path::PathBuf};

use agent_common::http_client::{
    CLIENT_END_ERR_TYPE, CLIENT_END_PROTO, CLIENT_END_STATUS, CLIENT_FIELD_HOST,
    CLIENT_FIELD_METHOD, CLIENT_FIELD_PATH, CLIENT_FIELD_QUERY, CLIENT_FIELD_SCHEME, HttpClientEnd,
    HttpClientStart,
};
use agent_common::propagate::SpanIds;
use opentelemetry::{
    InstrumentationScope,
    trace::{SpanId, SpanKind, TraceId},
};

use crate::{
    clock::WallClock,
    export::{EncodedSpan, encode_scope, wire::SpanWriter},
    http_server::spans::{known_method, split_host_port},
    spans::{
        Goroutines, Incomplete, OpenTable, PairingStats, ParentSpan, Sampler,
        ids::IdGenerator,
        sampling,
        url::{QueryPolicy, build_full},
    },
};

/// Key of an open call: (target slot, goroutine id). A goroutine makes one
/// `roundTrip` call at a time.
type Key = (u32, u64);

/// Bytes reserved for a span's encoding.
const SPAN_CAPACITY: usize = 512;

/// OTLP `SpanFlags`: W3C trace flags in the low byte; whether the parent is
/// remote is known (bit 8).
const SPAN_FLAGS_HAS_IS_REMOTE: u32 = 0x100;

/// A call whose return has not been seen yet.
#[derive(Debug)]
struct OpenCall {
    start_ns: u64,
    request: u64,
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    flags: u8,
    /// The span's name and start attributes, encoded.
    encoded: Vec<u8>,
}

/// Names of error types, from the executable: a static itab's symbol
/// (`go:itab.*net.OpError,error`), else the name in the type descriptor
/// the itab points to (found through the `type:*` symbol, as
/// `runtime.(*_type).string` does). Read the first time an error needs one.
/// A stripped binary has neither: its errors say `_OTHER`.
#[derive(Debug, Default)]
pub struct ErrorTypes {
    /// The executable, as the agent opens it.
    path: Option<PathBuf>,
    /// Where a PIE's mapping at file offset 0 starts in the process.
    mapped_at: Option<u64>,
    /// Load bias of the running executable (0 unless PIE), known once the
    /// executable's segments are read.
    bias: u64,
    /// What was read of the executable; `None` until first needed.
    loaded: Option<Symbols>,
}

#[derive(Debug, Default)]
struct Symbols {
    /// Link-time address of an itab to `error` to its type's name.
    itabs: HashMap<u64, String>,
    /// Link-time address of `runtime.types` (`moduledata.types`), else of
    /// `type:*` (`type.*` before Go 1.20).
    types_base: Option<u64>,
    /// PT_LOAD segments: (vaddr, file offset, file size).
    segments: Vec<(u64, u64, u64)>,
    file: Option<std::fs::File>,
}

/// Smallest page size: segments are mapped at page boundaries.
const PAGE: u64 = 4096;

impl Symbols {
    fn load(path: &std::path::Path) -> Result<Self, String> {
        use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = object::File::parse(&*data).map_err(|e| e.to_string())?;
        let mut out = Symbols {
            file: std::fs::File::open(path).ok(),
            ..Symbols::default()
        };
        for seg in file.segments() {
            let (offset, size) = seg.file_range();
            out.segments.push((seg.address(), offset, size));
        }
        let mut runtime_types = None;
        for sym in file.symbols() {
            let Ok(name) = sym.name() else { continue };
            if let Some(ty) = name
                .strip_prefix("go:itab.")
                .or_else(|| name.strip_prefix("go.itab."))
                .and_then(|rest| rest.strip_suffix(",error"))
            {
                out.itabs.insert(sym.address(), ty.to_owned());
            } else if name == "runtime.types" {
                runtime_types = Some(sym.address());
            } else if name == "type:*" || name == "type.*" {
                out.types_base = Some(sym.address());
            }
        }
        // Name offsets count from `moduledata.types`, which is
        // `runtime.types`; `type:*` is the same address except in a PIE,
        // where it comes 8 bytes later.
        out.types_base = runtime_types.or(out.types_base);
        Ok(out)
    }

    fn read(&self, vaddr: u64, buf: &mut [u8]) -> Option<()> {
        use std::os::unix::fs::FileExt as _;
        let &(seg_vaddr, offset, size) = self
            .segments
            .iter()
            .find(|(v, _, size)| vaddr >= *v && vaddr - v < *size)?;
        if vaddr - seg_vaddr + buf.len() as u64 > size {
            return None;
        }
        self.file
            .as_ref()?
            .read_exact_at(buf, offset + (vaddr - seg_vaddr))
            .ok()
    }

    /// The name in the type descriptor at link-time address `addr`.
    fn type_name(&self, addr: u64) -> Option<String> {
        crate::binary::type_descriptor_name(self.types_base?, addr, 1024, |at, buf| {
            self.read(at, buf)
        })
    }
}

impl ErrorTypes {
    /// Reads names from `path` when needed; `mapped_at` is where a
    /// position-independent executable's first page is mapped (`None`: not
    /// PIE, addresses are link-time addresses).
    pub fn new(path: PathBuf, mapped_at: Option<u64>) -> Self {
        Self {
            path: Some(path),
            mapped_at,
            bias: 0,
            loaded: None,
        }
    }

    /// Names by itab address only (for tests).
    pub fn from_itabs(itabs: HashMap<u64, String>) -> Self {
        Self {
            path: None,
            mapped_at: None,
            bias: 0,
            loaded: Some(Symbols {
                itabs,
                ..Symbols::default()
            }),
        }
    }

    /// The dynamic type's name of an error with run-time itab address
    /// `itab` and type descriptor address `type_addr` (0: unknown).
    pub fn name(&mut self, itab: u64, type_addr: u64) -> Option<String> {
        if self.loaded.is_none() {
            let symbols = self
                .path
                .as_deref()
                .map(|path| {
                    Symbols::load(path).unwrap_or_else(|err| {
                        log::debug!("net/http client: no error type names: {err}");
                        Symbols::default()
                    })
                })
                .unwrap_or_default();
            // The bias of a PIE: where its first page is, less the address
            // it was linked for (Go links PIEs at 0x400000 or at 0).
            if let (Some(mapped_at), Some(&(vaddr, _, _))) = (
                self.mapped_at,
                symbols.segments.iter().find(|(_, offset, _)| *offset == 0),
            ) {
                self.bias = mapped_at.wrapping_sub(vaddr & !(PAGE - 1));
            }
            self.loaded = Some(symbols);
        }
        let symbols = self.loaded.as_ref()?;
        if let Some(name) = itab
            .checked_sub(self.bias)
            .and_then(|at| symbols.itabs.get(&at))
        {
            return Some(name.clone());
        }
        symbols.type_name(type_addr.checked_sub(self.bias).filter(|&a| a != 0)?)
    }
}

/// Builds HTTP client spans.
#[derive(Debug)]
pub struct HttpClientSpanBuilder {
    open: OpenTable<Key, OpenCall>,
    clock: WallClock,
    ids: IdGenerator,
    scope: std::sync::Arc<[u8]>,
    query_policy: QueryPolicy,
    types: ErrorTypes,
    /// Calls made where no span was open: root spans.
    unparented: u64,
    /// Start records that repeated an open start (the entry probe fires
    /// again when the goroutine's stack grows and the function restarts).
    duplicates: u64,
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

impl HttpClientSpanBuilder {
    /// A builder holding at most `capacity` open calls for `ttl_ns` each.
    pub fn new(
        clock: WallClock,
        capacity: usize,
        ttl_ns: u64,
        query_policy: QueryPolicy,
        types: ErrorTypes,
    ) -> Self {
        Self {
            open: OpenTable::new(capacity, ttl_ns),
            clock,
            ids: IdGenerator::default(),
            scope: encode_scope(
                &InstrumentationScope::builder("agent/net/http/client")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            ),
            query_policy,
            types,
            unparented: 0,
            duplicates: 0,
            sampler: Sampler::default(),
            sampled_out: 0,
        }
    }

    /// The builder with `sampler` deciding for the calls that start a trace
    /// (default: `parentbased_always_on`).
    pub fn with_sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = sampler;
        self
    }

    /// Spans not exported because their trace was sampled out.
    pub fn sampled_out(&self) -> u64 {
        self.sampled_out
    }

    /// Pairing counters.
    /// Stops tracing at `at_ns` (see [`crate::spans::OpenTable::stop_at`]).
    pub fn stop_at(&mut self, at_ns: u64) {
        self.open.stop_at(at_ns);
    }

    pub fn stats(&self) -> PairingStats {
        self.open.stats()
    }

    /// Calls that found no span open on their goroutine.
    pub fn unparented(&self) -> u64 {
        self.unparented
    }

    /// Start records that repeated an open start.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// A call started.
    pub fn on_start(
        &mut self,
        goroutines: &mut Goroutines,
        rec: &HttpClientStart,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        let key = (rec.header.target, rec.header.goid);
        if self
            .open
            .get(&key)
            .is_some_and(|open| open.request == rec.request)
        {
            self.duplicates += 1;
            return;
        }
        let parent = goroutines.parent(key, rec.header.ktime_ns);
        if parent.is_none() {
            self.unparented += 1;
        }
        let span_id = self.ids.span_id();
        let (trace_id, parent_id, flags) = match parent {
            Some(p) => (p.trace_id, Some(p.span_id), Sampler::child_flags(p.flags)),
            None => {
                let trace_id = self.ids.trace_id();
                (trace_id, None, self.sampler.root_flags(trace_id, None))
            }
        };
        goroutines.enter(
            key,
            ParentSpan {
                trace_id,
                span_id,
                flags,
            },
        );
        let call = OpenCall {
            start_ns: rec.header.ktime_ns,
            request: rec.request,
            trace_id,
            span_id,
            parent: parent_id,
            flags,
            // A sampled-out span is never encoded.
            encoded: if sampling::is_sampled(flags) {
                encode_start(rec, self.query_policy)
            } else {
                Vec::new()
            },
        };
        if let Some((displaced_key, displaced)) = self.open.open(key, call, rec.header.ktime_ns) {
            let reason = if displaced_key == key {
                Incomplete::Replaced
            } else {
                Incomplete::Evicted
            };
            if let Some(span) = self.span(
                goroutines,
                displaced_key,
                displaced,
                rec.header.ktime_ns,
                None,
                Some(reason),
            ) {
                out(span);
            }
        }
    }

    /// The ids the kernel made for the call open on the record's goroutine,
    /// the ones it sent in the request's `traceparent` (`--propagate`): the
    /// span is exported with exactly those.
    pub fn on_ids(&mut self, goroutines: &mut Goroutines, rec: &SpanIds) {
        if rec.trace_id == [0; 16] || rec.span_id == [0; 8] {
            return;
        }
        let key = (rec.header.target, rec.header.goid);
        let Some(open) = self.open.get_mut(&key) else {
            return;
        };
        if open.request != rec.key {
            return;
        }
        let old = open.span_id;
        open.trace_id = TraceId::from_bytes(rec.trace_id);
        open.span_id = SpanId::from_bytes(rec.span_id);
        open.parent = (rec.parent_id != [0; 8]).then(|| SpanId::from_bytes(rec.parent_id));
        open.flags = rec.flags;
        goroutines.reassign(
            key,
            old,
            ParentSpan {
                trace_id: open.trace_id,
                span_id: open.span_id,
                flags: open.flags,
            },
        );
    }

    /// A call returned.
    pub fn on_end(
        &mut self,
        goroutines: &mut Goroutines,
        rec: &HttpClientEnd,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        let key = (rec.header.target, rec.header.goid);
        if let Some(open) = self.open.close(&key, rec.header.ktime_ns)
            && let Some(span) =
                self.span(goroutines, key, open, rec.header.ktime_ns, Some(rec), None)
        {
            out(span);
        }
    }

    /// Exports calls open longer than the time-to-live, marked expired.
    pub fn expire(
        &mut self,
        goroutines: &mut Goroutines,
        now_ns: u64,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        for (key, open) in self.open.expire(now_ns) {
            if let Some(span) = self.span(
                goroutines,
                key,
                open,
                now_ns,
                None,
                Some(Incomplete::Expired),
            ) {
                out(span);
            }
        }
    }

    /// Exports every open call, marked as cut short by shutdown.
    pub fn finish(
        &mut self,
        goroutines: &mut Goroutines,
        now_ns: u64,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        for (key, open) in self.open.drain() {
            if let Some(span) = self.span(
                goroutines,
                key,
                open,
                now_ns,
                None,
                Some(Incomplete::Shutdown),
            ) {
                out(span);
            }
        }
    }

    fn span(
        &mut self,
        goroutines: &mut Goroutines,
        key: Key,
        open: OpenCall,
        end_ns: u64,
        end: Option<&HttpClientEnd>,
        incomplete: Option<Incomplete>,
    ) -> Option<EncodedSpan> {
        goroutines.exit(key, open.span_id);
        if !sampling::is_sampled(open.flags) {
            self.sampled_out += 1;
            return None;
        }
        let mut bytes = open.encoded;
        let mut w = SpanWriter::new(&mut bytes);
        w.ids(open.trace_id, open.span_id, open.parent);
        w.kind(&SpanKind::Client).times(
            self.clock.to_unix_ns(open.start_ns),
            self.clock.to_unix_ns(end_ns.max(open.start_ns)),
        );
        let mut error = false;
        if let Some(end) = end {
            let has = |flag| end.fields & flag != 0;
            if has(CLIENT_END_PROTO) {
                match (end.proto_major, end.proto_minor) {
                    (1, 1) => w.attr_str("network.protocol.version", "1.1"),
                    (1, 0) => w.attr_str("network.protocol.version", "1.0"),
                    (major, 0) if major >= 2 => {
                        w.attr_str("network.protocol.version", &major.to_string())
                    }
                    (major, minor) => {
                        w.attr_str("network.protocol.version", &format!("{major}.{minor}"))
                    }
                };
            }
            if end.err_itab != 0 {
                // Failed without a response: the error's type names it.
                let type_addr = if has(CLIENT_END_ERR_TYPE) {
                    end.err_type
                } else {
                    0
                };
                let name = self.types.name(end.err_itab, type_addr);
                if name.is_none() {
                    log::debug!(
                        "net/http client: no name for the error type (itab {:#x}, type {type_addr:#x})",
                        end.err_itab
                    );
                }
                w.attr_str("error.type", name.as_deref().unwrap_or("_OTHER"));
                error = true;
            } else if has(CLIENT_END_STATUS) {
                w.attr_int("http.response.status_code", end.status);
                if end.status >= 400 {
                    w.attr_str("error.type", &end.status.to_string());
                    error = true;
                }
            }
        }
        if let Some(reason) = incomplete {
            w.attr_str("agent.span.incomplete", reason.as_str());
        }
        if error {
            w.status_error("");
        }
        w.flags(u32::from(open.flags) | SPAN_FLAGS_HAS_IS_REMOTE);
        Some(EncodedSpan {
            scope: self.scope.clone(),
            bytes,
        })
    }
}

/// The default port of a URL scheme.
fn default_port(scheme: &str) -> Option<i64> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// The span's name and every attribute a start record gives, encoded.
fn encode_start(rec: &HttpClientStart, query_policy: QueryPolicy) -> Vec<u8> {
    let has = |flag| rec.fields & flag != 0;
    let mut bytes = crate::export::span_buffer(SPAN_CAPACITY);
    let mut w = SpanWriter::new(&mut bytes);
    let method_bytes = &rec.method[..(rec.method_len as usize).min(rec.method.len())];
    let method = has(CLIENT_FIELD_METHOD).then_some(method_bytes);
    // net/http sends an empty method as GET.
    let known = method.and_then(|m| {
        if m.is_empty() {
            Some("GET")
        } else {
            known_method(m)
        }
    });
    w.name(&[known.unwrap_or("HTTP")]);
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
    let scheme = if has(CLIENT_FIELD_SCHEME) {
        text(&rec.scheme, rec.scheme_len)
    } else {
        Cow::Borrowed("")
    };
    let host = if has(CLIENT_FIELD_HOST) {
        text(&rec.host, rec.host_len)
    } else {
        Cow::Borrowed("")
    };
    if has(CLIENT_FIELD_SCHEME) && has(CLIENT_FIELD_HOST) && has(CLIENT_FIELD_PATH) {
        let path = text(&rec.path, rec.path_len);
        let query = has(CLIENT_FIELD_QUERY).then(|| text(&rec.query, rec.query_len));
        let query_complete = rec.query_len as usize <= rec.query.len();
        let full = build_full(
            &scheme,
            &host,
            &path,
            query.as_deref().filter(|q| !q.is_empty()),
            query_complete,
            query_policy,
        );
        w.attr_str("url.full", &full);
    }
    if !host.is_empty() {
        let (address, port) = split_host_port(&host);
        w.attr_str("server.address", &address);
        if let Some(port) = port.or_else(|| default_port(&scheme)) {
            w.attr_int("server.port", port);
        }
    }
    w.attr_int("goroutine.id", rec.header.goid as i64);
    w.attr_int("thread.id", i64::from(rec.header.tid));
    bytes
}

#[cfg(test)]
mod tests {
    use agent_common::{
        event::EventHeader,
        http_client::{
            CLIENT_HOST_CAP, CLIENT_METHOD_CAP, CLIENT_PATH_CAP, CLIENT_QUERY_CAP,
            CLIENT_SCHEME_CAP, KIND_HTTP_CLIENT_END, KIND_HTTP_CLIENT_START,
        },
    };
    use opentelemetry_proto::tonic::{common::v1::any_value::Value, trace::v1::Span as ProtoSpan};
    use prost::Message as _;

    use super::*;

    fn fill<const N: usize>(s: &str) -> ([u8; N], u32) {
        let mut buf = [0u8; N];
        let n = s.len().min(N);
        buf[..n].copy_from_slice(&s.as_bytes()[..n]);
        (buf, s.len() as u32)
    }

    fn header(kind: u32, goid: u64, t: u64) -> EventHeader {
        EventHeader {
            kind,
            target: 0,
            tid: 9,
            site: 0,
            goid,
            ktime_ns: t,
        }
    }

    fn start(goid: u64, t: u64, method: &str, url: (&str, &str, &str, &str)) -> HttpClientStart {
        let (method, method_len) = fill::<CLIENT_METHOD_CAP>(method);
        let (scheme, scheme_len) = fill::<CLIENT_SCHEME_CAP>(url.0);
        let (host, host_len) = fill::<CLIENT_HOST_CAP>(url.1);
        let (path, path_len) = fill::<CLIENT_PATH_CAP>(url.2);
        let (query, query_len) = fill::<CLIENT_QUERY_CAP>(url.3);
        HttpClientStart {
            header: header(KIND_HTTP_CLIENT_START, goid, t),
            request: 0x100 + goid,
            fields: CLIENT_FIELD_METHOD
                | CLIENT_FIELD_SCHEME
                | CLIENT_FIELD_HOST
                | CLIENT_FIELD_PATH
                | CLIENT_FIELD_QUERY,
            method_len,
            scheme_len,
            host_len,
            path_len,
            query_len,
            method,
            scheme,
            host,
            path,
            query,
        }
    }

    fn end(goid: u64, t: u64, status: i64, err_type: Option<u64>) -> HttpClientEnd {
        HttpClientEnd {
            header: header(KIND_HTTP_CLIENT_END, goid, t),
            response: if err_type.is_some() { 0 } else { 0x200 },
            status,
            err_itab: err_type.map_or(0, |t| t - 0x3d00),
            err_type: err_type.unwrap_or(0),
            proto_major: if err_type.is_some() { 0 } else { 2 },
            proto_minor: 0,
            _pad: 0,
            fields: if err_type.is_some() {
                CLIENT_END_ERR_TYPE
            } else {
                CLIENT_END_STATUS | CLIENT_END_PROTO
            },
        }
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

    fn builder() -> HttpClientSpanBuilder {
        let names = HashMap::from([(0x300, "*net.OpError".to_owned())]);
        HttpClientSpanBuilder::new(
            WallClock::with_offset_ns(0),
            16,
            1_000_000_000,
            QueryPolicy::Redact,
            ErrorTypes::from_itabs(names),
        )
    }

    fn run(
        b: &mut HttpClientSpanBuilder,
        g: &mut Goroutines,
        recs: &[(HttpClientStart, HttpClientEnd)],
    ) -> Vec<ProtoSpan> {
        let mut spans = Vec::new();
        for (s, e) in recs {
            b.on_start(g, s, &mut |x| spans.push(x));
            b.on_end(g, e, &mut |x| spans.push(x));
        }
        spans
            .iter()
            .map(|s| ProtoSpan::decode(s.bytes.as_slice()).expect("span"))
            .collect()
    }

    #[test]
    fn a_call_under_a_server_span_is_its_child() {
        let mut b = builder();
        let mut g = Goroutines::new(true);
        let server = ParentSpan {
            trace_id: TraceId::from(0xabc_u128),
            span_id: SpanId::from(0xdef_u64),
            flags: 1,
        };
        g.enter((0, 7), server);
        let spans = run(
            &mut b,
            &mut g,
            &[(
                start(
                    7,
                    100,
                    "GET",
                    ("https", "example.com", "/a b", "token=x&y=2"),
                ),
                end(7, 300, 200, None),
            )],
        );
        let s = &spans[0];
        assert_eq!(s.name, "GET");
        assert_eq!(s.kind, 3, "CLIENT");
        assert_eq!(s.trace_id, server.trace_id.to_bytes());
        assert_eq!(s.parent_span_id, server.span_id.to_bytes());
        assert_eq!(
            attr(s, "url.full").as_deref(),
            Some("https://example.com/a%20b?token=REDACTED&y=REDACTED")
        );
        assert_eq!(attr(s, "server.address").as_deref(), Some("example.com"));
        assert_eq!(attr(s, "server.port").as_deref(), Some("443"));
        assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("200"));
        assert_eq!(attr(s, "network.protocol.version").as_deref(), Some("2"));
        assert_eq!(attr(s, "error.type"), None);
        assert_eq!(s.status, None);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 200);
        assert_eq!(b.unparented(), 0);
        // The server span is current on the goroutine again.
        assert_eq!(g.parent((0, 7), 0), Some(server));
    }

    #[test]
    fn failures_and_error_statuses() {
        let mut b = builder();
        let mut g = Goroutines::new(true);
        let spans = run(
            &mut b,
            &mut g,
            &[
                (
                    start(1, 10, "POST", ("http", "127.0.0.1:1", "/x", "")),
                    end(1, 20, 0, Some(0x4000)),
                ),
                (
                    start(1, 30, "PURGE", ("http", "h:8080", "/y", "")),
                    end(1, 40, 503, None),
                ),
                (
                    start(1, 50, "GET", ("http", "h", "", "")),
                    end(1, 60, 0, Some(0x5000)),
                ),
            ],
        );
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0].name, "POST");
        assert_eq!(
            attr(&spans[0], "error.type").as_deref(),
            Some("*net.OpError")
        );
        assert_eq!(attr(&spans[0], "http.response.status_code"), None);
        assert_eq!(spans[0].status.as_ref().map(|s| s.code), Some(2));
        assert!(spans[0].parent_span_id.is_empty());
        assert_eq!(spans[1].name, "HTTP");
        assert_eq!(
            attr(&spans[1], "http.request.method").as_deref(),
            Some("_OTHER")
        );
        assert_eq!(
            attr(&spans[1], "http.request.method_original").as_deref(),
            Some("PURGE")
        );
        assert_eq!(attr(&spans[1], "error.type").as_deref(), Some("503"));
        assert_eq!(attr(&spans[1], "server.port").as_deref(), Some("8080"));
        assert_eq!(spans[1].status.as_ref().map(|s| s.code), Some(2));
        assert_eq!(attr(&spans[2], "error.type").as_deref(), Some("_OTHER"));
        assert_eq!(attr(&spans[2], "url.full").as_deref(), Some("http://h"));
        assert_eq!(attr(&spans[2], "server.port").as_deref(), Some("80"));
        assert_eq!(b.unparented(), 3);
    }

    #[test]
    fn a_restarted_entry_is_one_call_and_open_calls_expire() {
        let mut b = builder();
        let mut g = Goroutines::new(true);
        let mut spans = Vec::new();
        let s = start(4, 10, "GET", ("http", "h", "/", ""));
        b.on_start(&mut g, &s, &mut |x| spans.push(x));
        b.on_start(&mut g, &s, &mut |x| spans.push(x));
        assert_eq!(b.duplicates(), 1);
        assert!(spans.is_empty());
        b.expire(&mut g, 2_000_000_000, &mut |x| spans.push(x));
        assert_eq!(spans.len(), 1);
        let span = ProtoSpan::decode(spans[0].bytes.as_slice()).expect("span");
        assert_eq!(
            attr(&span, "agent.span.incomplete").as_deref(),
            Some("expired")
        );
        assert_eq!(g.parent((0, 4), 0), None, "the call left its goroutine");
    }
}
