//! net/http server requests: start and end records paired per goroutine into
//! one SERVER span each, with OpenTelemetry's HTTP server attributes.

use std::borrow::Cow;

use agent_common::http::{
    END_FIELD_PATTERN, END_FIELD_STATUS, END_FIELD_WRITTEN, FIELD_CONTENT_LENGTH, FIELD_HOST,
    FIELD_METHOD, FIELD_PATH, FIELD_PROTO, FIELD_REMOTE, FIELD_TLS, FIELD_TLS_KNOWN, HttpServerEnd,
    HttpServerStart,
};
use opentelemetry::{InstrumentationScope, trace::SpanKind};

use super::{OpenTable, PairingStats, ids::IdGenerator};
use crate::{
    clock::WallClock,
    export::{EncodedSpan, encode_scope, wire::SpanWriter},
};

/// Key of an open request: (target slot, goroutine id).
type Key = (u32, u64);

/// A request whose end has not been seen yet.
#[derive(Debug)]
struct OpenRequest {
    start_ns: u64,
    response: u64,
    tid: u32,
    method: Option<Method>,
    path: Option<String>,
    host: Option<String>,
    remote: Option<String>,
    content_length: Option<i64>,
    proto: Option<(u16, u16)>,
    /// The request came over TLS; `None` when unknown.
    tls: Option<bool>,
}

/// Why a span ended without its end record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incomplete {
    /// No end within the time-to-live.
    Expired,
    /// Pushed out of a full table.
    Evicted,
    /// The goroutine started another request first.
    Replaced,
    /// Still open when the agent stopped.
    Shutdown,
}

impl Incomplete {
    /// The value of the `agent.span.incomplete` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Evicted => "evicted",
            Self::Replaced => "replaced",
            Self::Shutdown => "shutdown",
        }
    }
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
}

fn text(bytes: &[u8], len: u32) -> String {
    let n = (len as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[..n]).into_owned()
}

const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// A request method: the standard ones without an allocation.
#[derive(Debug)]
enum Method {
    Known(&'static str),
    Other(String),
}

impl Method {
    fn parse(bytes: &[u8], len: u32) -> Self {
        let n = (len as usize).min(bytes.len());
        let raw = &bytes[..n];
        match KNOWN_METHODS.iter().find(|m| m.as_bytes() == raw) {
            Some(known) => Self::Known(known),
            None => Self::Other(String::from_utf8_lossy(raw).into_owned()),
        }
    }
}

/// Splits `host[:port]` / `[v6]:port`.
fn split_host_port(s: &str) -> (Cow<'_, str>, Option<i64>) {
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
        }
    }

    /// Pairing counters.
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
    pub fn on_start(&mut self, rec: &HttpServerStart, out: &mut impl FnMut(EncodedSpan)) {
        let key = (rec.header.target, rec.header.goid);
        if let Some(open) = self.open.get(&key)
            && open.response == rec.response
        {
            // The same call seen twice (the entry probe fires again when the
            // goroutine's stack grows and the function restarts): keep the
            // first, earlier start.
            self.duplicates += 1;
            return;
        }
        let has = |flag| rec.fields & flag != 0;
        let request = OpenRequest {
            start_ns: rec.header.ktime_ns,
            response: rec.response,
            tid: rec.header.tid,
            method: has(FIELD_METHOD).then(|| Method::parse(&rec.method, rec.method_len)),
            path: has(FIELD_PATH).then(|| text(&rec.path, rec.path_len)),
            host: has(FIELD_HOST).then(|| text(&rec.host, rec.host_len)),
            remote: has(FIELD_REMOTE).then(|| text(&rec.remote, rec.remote_len)),
            content_length: has(FIELD_CONTENT_LENGTH).then_some(rec.content_length),
            proto: has(FIELD_PROTO).then_some((rec.proto_major, rec.proto_minor)),
            tls: has(FIELD_TLS_KNOWN).then_some(has(FIELD_TLS)),
        };
        if let Some((key, displaced)) = self.open.open(key, request, rec.header.ktime_ns) {
            let reason = if key == (rec.header.target, rec.header.goid) {
                Incomplete::Replaced
            } else {
                Incomplete::Evicted
            };
            out(self.span(key, displaced, rec.header.ktime_ns, None, Some(reason)));
        }
    }

    /// A request's response is being finished.
    pub fn on_end(&mut self, rec: &HttpServerEnd, out: &mut impl FnMut(EncodedSpan)) {
        let key = (rec.header.target, rec.header.goid);
        if let Some(open) = self
            .open
            .close_if(&key, |open| open.response == rec.response)
        {
            out(self.span(key, open, rec.header.ktime_ns, Some(rec), None));
        }
    }

    /// Exports requests open longer than the time-to-live, marked expired.
    pub fn expire(&mut self, now_ns: u64, out: &mut impl FnMut(EncodedSpan)) {
        for (key, open) in self.open.expire(now_ns) {
            out(self.span(key, open, now_ns, None, Some(Incomplete::Expired)));
        }
    }

    /// Exports every open request, marked as cut short by shutdown.
    pub fn finish(&mut self, now_ns: u64, out: &mut impl FnMut(EncodedSpan)) {
        for (key, open) in self.open.drain() {
            out(self.span(key, open, now_ns, None, Some(Incomplete::Shutdown)));
        }
    }

    fn span(
        &mut self,
        key: Key,
        open: OpenRequest,
        end_ns: u64,
        end: Option<&HttpServerEnd>,
        incomplete: Option<Incomplete>,
    ) -> EncodedSpan {
        let mut bytes = Vec::with_capacity(512);
        let mut w = SpanWriter::new(&mut bytes);
        w.ids(self.ids.trace_id(), self.ids.span_id(), None);
        let name_method = match &open.method {
            Some(Method::Known(m)) => m,
            _ => "HTTP",
        };
        match &open.path {
            Some(path) if !path.is_empty() => w.name(&[name_method, " ", path]),
            _ => w.name(&[name_method]),
        };
        w.kind(&SpanKind::Server).times(
            self.clock.to_unix_ns(open.start_ns),
            self.clock.to_unix_ns(end_ns.max(open.start_ns)),
        );
        match &open.method {
            Some(Method::Known(method)) => {
                w.attr_str("http.request.method", method);
            }
            Some(Method::Other(method)) => {
                w.attr_str("http.request.method", "_OTHER");
                w.attr_str("http.request.method_original", method);
            }
            None => {}
        }
        if let Some(path) = &open.path {
            w.attr_str("url.path", path);
        }
        if let Some(tls) = open.tls {
            w.attr_str("url.scheme", if tls { "https" } else { "http" });
        }
        if let Some(host) = open.host.as_deref().filter(|h| !h.is_empty()) {
            let (address, port) = split_host_port(host);
            w.attr_str("server.address", &address);
            if let Some(port) = port {
                w.attr_int("server.port", port);
            }
        }
        if let Some(remote) = open.remote.as_deref().filter(|r| !r.is_empty()) {
            let (address, port) = split_host_port(remote);
            w.attr_str("client.address", &address);
            if let Some(port) = port {
                w.attr_int("client.port", port);
            }
        }
        if let Some((major, minor)) = open.proto {
            w.attr_str("network.protocol.name", "http");
            match (major, minor) {
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
        if let Some(length) = open.content_length.filter(|l| *l > 0) {
            w.attr_int("http.request.body.size", length);
        }
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
            if end.fields & END_FIELD_PATTERN != 0 && end.pattern_len > 0 {
                let n = (end.pattern_len as usize).min(end.pattern.len());
                w.attr_str("http.route", &String::from_utf8_lossy(&end.pattern[..n]));
            }
        }
        w.attr_int("goroutine.id", key.1 as i64);
        w.attr_int("thread.id", i64::from(open.tid));
        if let Some(reason) = incomplete {
            w.attr_str("agent.span.incomplete", reason.as_str());
        }
        if error {
            w.status_error("");
        }
        w.flags(0x1);
        EncodedSpan {
            scope: self.scope.clone(),
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{
        event::{EventHeader, KIND_HTTP_SERVER_END, KIND_HTTP_SERVER_START},
        http::{HOST_CAP, METHOD_CAP, PATH_CAP, PATTERN_CAP, REMOTE_CAP},
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

    fn start(goid: u64, t: u64, response: u64, method: &str, path: &str) -> HttpServerStart {
        let (method, method_len) = fill::<METHOD_CAP>(method);
        let (path, path_len) = fill::<PATH_CAP>(path);
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
            fields: FIELD_METHOD
                | FIELD_PATH
                | FIELD_HOST
                | FIELD_REMOTE
                | FIELD_PROTO
                | FIELD_TLS_KNOWN
                | FIELD_TLS,
            method_len,
            path_len,
            host_len,
            remote_len,
            method,
            path,
            host,
            remote,
        }
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
        let mut spans = Vec::new();
        b.on_start(&start(7, 1_000, 0xa, "POST", "/items/x"), &mut |s| {
            spans.push(s)
        });
        b.on_start(&start(7, 1_500, 0xa, "POST", "/items/x"), &mut |s| {
            spans.push(s)
        });
        assert!(spans.is_empty());
        b.on_end(&end(7, 3_000, 0xa, 503), &mut |s| spans.push(s));
        assert_eq!(spans.len(), 1);
        let s = &decode(&spans[0]);
        assert_eq!(s.name, "POST /items/x");
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
        let mut spans = Vec::new();
        b.on_end(&end(1, 10, 0xa, 200), &mut |s| spans.push(s));
        assert!(spans.is_empty());
        assert_eq!(b.stats().unmatched_ends, 1);
        b.on_start(&start(2, 10, 0xb, "PURGE", "/c"), &mut |s| spans.push(s));
        b.on_end(&end(2, 20, 0xb, 0), &mut |s| spans.push(s));
        let spans: Vec<ProtoSpan> = spans.iter().map(decode).collect();
        assert_eq!(spans[0].name, "HTTP /c");
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
        let mut spans = Vec::new();
        b.on_start(&start(1, 0, 0xa, "GET", "/a"), &mut |s| spans.push(s));
        b.on_start(&start(2, 150, 0xb, "GET", "/b"), &mut |s| spans.push(s));
        b.expire(200, &mut |s| spans.push(s));
        assert_eq!(spans.len(), 1);
        assert_eq!(
            attr(&decode(&spans[0]), "agent.span.incomplete").as_deref(),
            Some("expired")
        );
        b.finish(300, &mut |s| spans.push(s));
        let spans: Vec<ProtoSpan> = spans.iter().map(decode).collect();
        assert_eq!(
            attr(&spans[1], "agent.span.incomplete").as_deref(),
            Some("shutdown")
        );
        assert!(attr(&spans[1], "http.response.status_code").is_none());
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
