//! Pairing the family's start and end records per goroutine into spans, as
//! children of the span open on that goroutine (the CLIENT span of the
//! HTTP call a dial or handshake serves, which its goroutine inherited; the
//! SERVER span of the request whose handler dials; the dial a lookup is
//! part of). Each operation is itself registered as open on its goroutine
//! while it runs, so a lookup inside a dial is the dial's child.

use std::{borrow::Cow, collections::HashMap};

use agent_common::net::{NET_END_ERR_TYPE, NET_START_NAME, NET_START_NETWORK, NetEnd, NetStart};
use opentelemetry::{
    InstrumentationScope,
    trace::{SpanId, SpanKind, TraceId},
};

use super::{dial, dns, records::Op, tls};
use crate::{
    clock::WallClock,
    export::{EncodedSpan, encode_scope, wire::SpanWriter},
    http_client::ErrorTypes,
    spans::{
        Goroutines, Incomplete, OpenTable, PairingStats, ParentSpan, Sampler, ids::IdGenerator,
        sampling,
    },
};

/// Key of an open operation: (target slot, goroutine id, operation). A
/// goroutine runs one operation of each kind at a time (a lookup runs
/// inside a dial).
type Key = (u32, u64, Op);

/// Bytes reserved for a span's encoding.
const SPAN_CAPACITY: usize = 512;

/// OTLP `SpanFlags`: W3C trace flags in the low byte; whether the parent is
/// remote is known (bit 8).
const SPAN_FLAGS_HAS_IS_REMOTE: u32 = 0x100;

/// Lookups of IP literals in flight kept at most (they are not spans; see
/// [`dns::is_literal`]).
const MAX_LITERALS: usize = 4096;

/// An operation whose end has not been seen yet.
#[derive(Debug)]
pub struct OpenOp {
    pub start_ns: u64,
    /// What tells a restarted entry from a new operation.
    pub object: u64,
    pub tid: u32,
    /// `TLS_SIDE_*` for a handshake.
    pub side: u32,
    /// The TLS server name, the host looked up or the address dialed, when
    /// read.
    pub name: Option<String>,
    /// The network, when read (lookups and dials).
    pub network: Option<String>,
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    flags: u8,
}

/// The first `len` bytes of a string area (all of it when truncated).
pub fn text(bytes: &[u8], len: u32) -> Cow<'_, str> {
    let n = (len as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[..n])
}

/// Counters of the builder beyond pairing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Operations started where no span was open: root spans.
    pub unparented: u64,
    /// Start records that repeated an open start (a restarted entry).
    pub duplicates: u64,
    /// Lookups of IP literals, answered without a lookup: not spans.
    pub literals: u64,
    /// Handshakes whose end could not read what was negotiated.
    pub tls_state_unread: u64,
}

/// Builds TLS, DNS and dial spans.
#[derive(Debug)]
pub struct NetSpanBuilder {
    open: OpenTable<Key, OpenOp>,
    /// Lookups of IP literals in flight, by (slot, goroutine), with their
    /// start.
    literals: HashMap<(u32, u64), u64>,
    ttl_ns: u64,
    clock: WallClock,
    ids: IdGenerator,
    scope: std::sync::Arc<[u8]>,
    types: ErrorTypes,
    stats: NetStats,
    /// Decides for the operations that start a trace (no span open on
    /// their goroutine); the others follow their parent's flags.
    sampler: Sampler,
    /// Spans not exported: their trace was sampled out.
    sampled_out: u64,
}

impl NetSpanBuilder {
    /// A builder holding at most `capacity` open operations for `ttl_ns`
    /// each.
    pub fn new(clock: WallClock, capacity: usize, ttl_ns: u64, types: ErrorTypes) -> Self {
        Self {
            open: OpenTable::new(capacity, ttl_ns),
            literals: HashMap::new(),
            ttl_ns,
            clock,
            ids: IdGenerator::default(),
            scope: encode_scope(
                &InstrumentationScope::builder("agent/net")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            ),
            types,
            stats: NetStats::default(),
            sampler: Sampler::default(),
            sampled_out: 0,
        }
    }

    /// The builder with `sampler` deciding for operations that start a
    /// trace.
    pub fn with_sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = sampler;
        self
    }

    /// Spans not exported because their trace was sampled out.
    pub fn sampled_out(&self) -> u64 {
        self.sampled_out
    }

    /// Stops tracing at `at_ns` (see [`crate::spans::OpenTable::stop_at`]).
    pub fn stop_at(&mut self, at_ns: u64) {
        self.open.stop_at(at_ns);
    }

    /// Pairing counters.
    pub fn pairing(&self) -> PairingStats {
        self.open.stats()
    }

    /// The other counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// An operation started.
    pub fn on_start(
        &mut self,
        goroutines: &mut Goroutines,
        op: Op,
        rec: &NetStart,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        let goroutine = (rec.header.target, rec.header.goid);
        let key = (goroutine.0, goroutine.1, op);
        if self
            .open
            .get(&key)
            .is_some_and(|open| open.object == rec.object)
        {
            self.stats.duplicates += 1;
            return;
        }
        let name = (rec.fields & NET_START_NAME != 0).then(|| text(&rec.name, rec.name_len));
        if op == Op::Dns && name.as_deref().is_some_and(dns::is_literal) {
            if self.literals.len() < MAX_LITERALS || self.literals.contains_key(&goroutine) {
                self.literals.insert(goroutine, rec.header.ktime_ns);
            }
            return;
        }
        if self.open.refuses(rec.header.ktime_ns) {
            return;
        }
        let parent = goroutines.parent(goroutine, rec.header.ktime_ns);
        if parent.is_none() {
            self.stats.unparented += 1;
        }
        let span_id = self.ids.span_id();
        let (trace_id, parent_id, flags) = match parent {
            Some(p) => (p.trace_id, Some(p.span_id), p.flags),
            None => {
                let trace_id = self.ids.trace_id();
                (trace_id, None, self.sampler.root_flags(trace_id, None))
            }
        };
        goroutines.enter(
            goroutine,
            ParentSpan {
                trace_id,
                span_id,
                flags,
            },
        );
        let open = OpenOp {
            start_ns: rec.header.ktime_ns,
            object: rec.object,
            tid: rec.header.tid,
            side: rec.side,
            name: name.map(Cow::into_owned),
            network: (rec.fields & NET_START_NETWORK != 0)
                .then(|| text(&rec.network, rec.network_len).into_owned()),
            trace_id,
            span_id,
            parent: parent_id,
            flags,
        };
        if let Some((displaced_key, displaced)) = self.open.open(key, open, rec.header.ktime_ns) {
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

    /// An operation returned.
    pub fn on_end(
        &mut self,
        goroutines: &mut Goroutines,
        op: Op,
        rec: &NetEnd,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        let goroutine = (rec.header.target, rec.header.goid);
        if op == Op::Dns && self.literals.remove(&goroutine).is_some() {
            self.stats.literals += 1;
            return;
        }
        let key = (goroutine.0, goroutine.1, op);
        if let Some(open) = self.open.close(&key, rec.header.ktime_ns)
            && let Some(span) =
                self.span(goroutines, key, open, rec.header.ktime_ns, Some(rec), None)
        {
            out(span);
        }
    }

    /// Exports operations open longer than the time-to-live, marked
    /// expired.
    pub fn expire(
        &mut self,
        goroutines: &mut Goroutines,
        now_ns: u64,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        let ttl = self.ttl_ns;
        self.literals
            .retain(|_, start| now_ns.saturating_sub(*start) <= ttl);
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

    /// Exports every open operation, marked as cut short by shutdown.
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
        open: OpenOp,
        end_ns: u64,
        end: Option<&NetEnd>,
        incomplete: Option<Incomplete>,
    ) -> Option<EncodedSpan> {
        let (slot, goid, op) = key;
        goroutines.exit((slot, goid), open.span_id);
        if !sampling::is_sampled(open.flags) {
            self.sampled_out += 1;
            return None;
        }
        let error_type = end.filter(|e| e.err_itab != 0).map(|e| {
            let type_addr = if e.fields & NET_END_ERR_TYPE != 0 {
                e.err_type
            } else {
                0
            };
            self.types
                .name(e.err_itab, type_addr)
                .unwrap_or_else(|| "_OTHER".to_owned())
        });
        let failed = error_type.is_some();
        if op == Op::Tls
            && end.is_some_and(|e| e.fields & agent_common::net::NET_END_TLS_STATE == 0)
        {
            self.stats.tls_state_unread += 1;
        }
        let mut bytes = crate::export::span_buffer(SPAN_CAPACITY);
        let mut w = SpanWriter::new(&mut bytes);
        let name = match op {
            Op::Tls => tls::name(&open),
            Op::Dns => dns::name(&open),
            Op::Dial => dial::name(&open),
        };
        w.name(&[&name]);
        w.ids(open.trace_id, open.span_id, open.parent);
        w.kind(&SpanKind::Internal).times(
            self.clock.to_unix_ns(open.start_ns),
            self.clock.to_unix_ns(end_ns.max(open.start_ns)),
        );
        match op {
            Op::Tls => tls::write(&mut w, &open, end, failed),
            Op::Dns => dns::write(&mut w, &open, end, failed),
            Op::Dial => dial::write(&mut w, &open),
        }
        if let Some(error_type) = &error_type {
            w.attr_str("error.type", error_type);
        }
        w.attr_int("goroutine.id", goid as i64);
        w.attr_int("thread.id", i64::from(open.tid));
        if let Some(reason) = incomplete {
            w.attr_str("agent.span.incomplete", reason.as_str());
        }
        if failed {
            w.status_error("");
        }
        w.flags(u32::from(open.flags) | SPAN_FLAGS_HAS_IS_REMOTE);
        Some(EncodedSpan {
            scope: self.scope.clone(),
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{
        event::EventHeader,
        net::{
            KIND_DIAL_END, KIND_DIAL_START, KIND_DNS_END, KIND_DNS_START, KIND_TLS_END,
            KIND_TLS_START, NET_END_ANSWERS, NET_END_NAME, NET_END_TLS_STATE, NET_NAME_CAP,
            NET_NETWORK_CAP, TLS_SIDE_CLIENT, TLS_SIDE_SERVER,
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

    fn start(kind: u32, goid: u64, t: u64, side: u32, name: &str, network: &str) -> NetStart {
        let (name_buf, name_len) = fill::<NET_NAME_CAP>(name);
        let (network_buf, network_len) = fill::<NET_NETWORK_CAP>(network);
        NetStart {
            header: header(kind, goid, t),
            object: 0x100 + goid,
            side,
            fields: NET_START_NAME
                | if network.is_empty() {
                    0
                } else {
                    NET_START_NETWORK
                },
            name_len,
            network_len,
            name: name_buf,
            network: network_buf,
        }
    }

    fn end(kind: u32, goid: u64, t: u64, err_type: Option<u64>) -> NetEnd {
        NetEnd {
            header: header(kind, goid, t),
            err_itab: err_type.map_or(0, |t| t - 0x3d00),
            err_type: err_type.unwrap_or(0),
            answers: 2,
            tls_version: 0x0304,
            tls_cipher: 0x1301,
            tls_resumed: 0,
            _pad: [0; 3],
            fields: NET_END_ANSWERS
                | NET_END_TLS_STATE
                | if err_type.is_some() {
                    NET_END_ERR_TYPE
                } else {
                    0
                },
            name_len: 0,
            name: [0; NET_NAME_CAP],
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
                Value::BoolValue(b) => b.to_string(),
                other => format!("{other:?}"),
            })
    }

    fn builder() -> NetSpanBuilder {
        let names = HashMap::from([(0x300, "*net.OpError".to_owned())]);
        NetSpanBuilder::new(
            WallClock::with_offset_ns(0),
            16,
            1_000_000_000,
            ErrorTypes::from_itabs(names),
        )
    }

    fn decode(spans: &[EncodedSpan]) -> Vec<ProtoSpan> {
        spans
            .iter()
            .map(|s| ProtoSpan::decode(s.bytes.as_slice()).expect("span"))
            .collect()
    }

    #[test]
    fn a_dial_with_its_lookup_under_a_server_span() {
        let mut b = builder();
        let mut g = Goroutines::new(true);
        let server = ParentSpan {
            trace_id: TraceId::from(0xabc_u128),
            span_id: SpanId::from(0xdef_u64),
            flags: 1,
        };
        g.enter((0, 7), server);
        let mut out = Vec::new();
        let mut push = |s| out.push(s);
        b.on_start(
            &mut g,
            Op::Dial,
            &start(KIND_DIAL_START, 7, 10, 0, "localhost:8443", "tcp"),
            &mut push,
        );
        b.on_start(
            &mut g,
            Op::Dns,
            &start(KIND_DNS_START, 7, 20, 0, "localhost", "ip"),
            &mut push,
        );
        b.on_end(&mut g, Op::Dns, &end(KIND_DNS_END, 7, 30, None), &mut push);
        // A dial of the address it found: a literal, not a lookup.
        b.on_start(
            &mut g,
            Op::Dns,
            &start(KIND_DNS_START, 7, 31, 0, "127.0.0.1", "ip"),
            &mut push,
        );
        b.on_end(&mut g, Op::Dns, &end(KIND_DNS_END, 7, 32, None), &mut push);
        b.on_end(
            &mut g,
            Op::Dial,
            &end(KIND_DIAL_END, 7, 40, Some(0x4000)),
            &mut push,
        );
        let spans = decode(&out);
        assert_eq!(spans.len(), 2);
        let (dns, dial) = (&spans[0], &spans[1]);
        assert_eq!(dial.name, "connect localhost:8443");
        assert_eq!(dial.kind, 1, "INTERNAL");
        assert_eq!(dial.parent_span_id, server.span_id.to_bytes());
        assert_eq!(dial.trace_id, server.trace_id.to_bytes());
        assert_eq!(attr(dial, "server.address").as_deref(), Some("localhost"));
        assert_eq!(attr(dial, "server.port").as_deref(), Some("8443"));
        assert_eq!(attr(dial, "network.transport").as_deref(), Some("tcp"));
        assert_eq!(attr(dial, "error.type").as_deref(), Some("*net.OpError"));
        assert_eq!(dial.status.as_ref().map(|s| s.code), Some(2));
        assert_eq!(dns.name, "DNS lookup localhost");
        assert_eq!(dns.parent_span_id, dial.span_id, "the dial's child");
        assert_eq!(attr(dns, "dns.question.name").as_deref(), Some("localhost"));
        assert_eq!(attr(dns, "dns.answers.count").as_deref(), Some("2"));
        assert_eq!(dns.status, None);
        assert_eq!(b.stats().literals, 1);
        assert_eq!(b.pairing().unmatched_ends, 0);
        assert_eq!(g.parent((0, 7), 0), Some(server), "both left");
    }

    #[test]
    fn handshakes_client_and_server() {
        let mut b = builder();
        let mut g = Goroutines::new(true);
        let mut out = Vec::new();
        let mut push = |s| out.push(s);
        b.on_start(
            &mut g,
            Op::Tls,
            &start(KIND_TLS_START, 1, 10, TLS_SIDE_CLIENT, "localhost", ""),
            &mut push,
        );
        b.on_end(&mut g, Op::Tls, &end(KIND_TLS_END, 1, 20, None), &mut push);
        b.on_start(
            &mut g,
            Op::Tls,
            &start(KIND_TLS_START, 2, 10, TLS_SIDE_SERVER, "", ""),
            &mut push,
        );
        let mut server_end = end(KIND_TLS_END, 2, 30, Some(0x5000));
        let (sni, sni_len) = fill::<NET_NAME_CAP>("localhost");
        server_end.name = sni;
        server_end.name_len = sni_len;
        server_end.fields |= NET_END_NAME;
        b.on_end(&mut g, Op::Tls, &server_end, &mut push);
        let spans = decode(&out);
        let (client, server) = (&spans[0], &spans[1]);
        assert_eq!(client.name, "TLS client handshake localhost");
        assert!(client.parent_span_id.is_empty());
        assert_eq!(attr(client, "server.address").as_deref(), Some("localhost"));
        assert_eq!(attr(client, "tls.protocol.name").as_deref(), Some("tls"));
        assert_eq!(attr(client, "tls.protocol.version").as_deref(), Some("1.3"));
        assert_eq!(
            attr(client, "tls.cipher").as_deref(),
            Some("TLS_AES_128_GCM_SHA256")
        );
        assert_eq!(attr(client, "tls.resumed").as_deref(), Some("false"));
        assert_eq!(attr(client, "tls.established").as_deref(), Some("true"));
        assert_eq!(server.name, "TLS server handshake");
        assert_eq!(attr(server, "server.address").as_deref(), Some("localhost"));
        assert_eq!(attr(server, "error.type").as_deref(), Some("_OTHER"));
        assert_eq!(attr(server, "tls.resumed"), None);
        assert_eq!(attr(server, "tls.established").as_deref(), Some("false"));
        assert_eq!(server.status.as_ref().map(|s| s.code), Some(2));
        assert_eq!(b.stats().unparented, 2);
    }

    #[test]
    fn a_restarted_entry_is_one_operation_and_open_ones_expire() {
        let mut b = builder();
        let mut g = Goroutines::new(true);
        let mut out = Vec::new();
        let s = start(KIND_DIAL_START, 4, 10, 0, "h:1", "tcp");
        b.on_start(&mut g, Op::Dial, &s, &mut |x| out.push(x));
        b.on_start(&mut g, Op::Dial, &s, &mut |x| out.push(x));
        assert_eq!(b.stats().duplicates, 1);
        assert!(out.is_empty());
        b.expire(&mut g, 2_000_000_000, &mut |x| out.push(x));
        let spans = decode(&out);
        assert_eq!(spans.len(), 1);
        assert_eq!(
            attr(&spans[0], "agent.span.incomplete").as_deref(),
            Some("expired")
        );
        assert_eq!(g.parent((0, 4), 0), None, "the dial left its goroutine");
    }
}
