//! database/sql calls: start and end records paired per goroutine and
//! operation into one CLIENT span each, with OpenTelemetry's database
//! client attributes.
//!
//! The span's name is `{db.operation.name} {db.collection.name}` when both
//! are known, else `{db.operation.name}`, else `{db.system.name}`. Its parent
//! is the span open on the calling goroutine (the HTTP server span of the
//! request whose handler runs the query), and it is itself open on that
//! goroutine while the call runs.

use agent_common::sql::{
    OP_BEGIN, OP_COMMIT, OP_PREPARE, OP_ROLLBACK, START_CONNECTOR, START_DRIVER, START_QUERY,
    START_TX_DONE, SqlEnd, SqlStart,
};
use opentelemetry::{
    InstrumentationScope,
    trace::{SpanId, SpanKind, TraceId},
};

use super::{
    sanitize::sanitize,
    types::{DSN_CONNECTOR, ItabNames, system_name},
};
use crate::{
    clock::WallClock,
    export::{EncodedSpan, encode_scope, wire::SpanWriter},
    spans::{
        Goroutines, Incomplete, OpenTable, PairingStats, ParentSpan, Sampler, ids::IdGenerator,
        sampling,
    },
};

/// Key of an open call: (target slot, goroutine id, operation). One
/// goroutine runs one call of each operation at a time (none of them calls
/// itself).
type Key = (u32, u64, u32);

/// A start under a key already open this soon after it is the same call
/// seen again (the entry probe fires again when the goroutine's stack grows
/// and the function restarts), not a new one.
const RESTART_WINDOW_NS: u64 = 10_000_000;

/// Bytes reserved for a span's encoding.
const SPAN_CAPACITY: usize = 512;

/// A call whose end has not been seen yet.
#[derive(Debug)]
struct OpenCall {
    start_ns: u64,
    /// `None`: a commit or rollback of a finished transaction, which
    /// reaches no database: its end is dropped silently.
    span: Option<SpanIds>,
    /// The span's name and start attributes, encoded.
    encoded: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
struct SpanIds {
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    flags: u8,
}

/// Settings of the span builder.
#[derive(Clone, Copy, Debug)]
pub struct SqlSpanOptions {
    /// Export `db.query.text` with its literals (`--sql-literals=keep`).
    pub keep_literals: bool,
}

/// Counters of the span builder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SqlSpanStats {
    /// Spans with no span open on their goroutine to be a child of.
    pub unparented: u64,
    /// Starts that repeated an open start.
    pub duplicates: u64,
    /// Commits and rollbacks of finished transactions (no span).
    pub tx_done: u64,
}

/// Builds database/sql spans.
#[derive(Debug)]
pub struct SqlSpanBuilder {
    open: OpenTable<Key, OpenCall>,
    clock: WallClock,
    ids: IdGenerator,
    scope: std::sync::Arc<[u8]>,
    options: SqlSpanOptions,
    types: ItabNames,
    stats: SqlSpanStats,
    /// Which traces are exported.
    sampler: Sampler,
    /// Spans not exported: their trace was sampled out.
    sampled_out: u64,
}

impl SqlSpanBuilder {
    /// A builder holding at most `capacity` open calls for `ttl_ns` each.
    pub fn new(
        clock: WallClock,
        capacity: usize,
        ttl_ns: u64,
        options: SqlSpanOptions,
        types: ItabNames,
    ) -> Self {
        Self {
            open: OpenTable::new(capacity, ttl_ns),
            clock,
            ids: IdGenerator::default(),
            scope: encode_scope(
                &InstrumentationScope::builder("agent/database/sql")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            ),
            options,
            types,
            stats: SqlSpanStats::default(),
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

    /// The itab names, at the process's addresses.
    pub fn set_types(&mut self, types: ItabNames) {
        self.types = types;
    }

    /// Pairing counters.
    pub fn pairing(&self) -> PairingStats {
        self.open.stats()
    }

    /// The builder's own counters.
    /// Stops tracing at `at_ns` (see [`crate::spans::OpenTable::stop_at`]).
    pub fn stop_at(&mut self, at_ns: u64) {
        self.open.stop_at(at_ns);
    }

    pub fn stats(&self) -> SqlSpanStats {
        self.stats
    }

    /// A call started.
    pub fn on_start(
        &mut self,
        goroutines: &mut Goroutines,
        rec: &SqlStart,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        let h = &rec.header;
        let key = (h.target, h.goid, rec.op);
        if let Some(open) = self.open.get(&key)
            && h.ktime_ns.saturating_sub(open.start_ns) < RESTART_WINDOW_NS
        {
            self.stats.duplicates += 1;
            return;
        }
        let call = if rec.flags & START_TX_DONE != 0 {
            self.stats.tx_done += 1;
            OpenCall {
                start_ns: h.ktime_ns,
                span: None,
                encoded: Vec::new(),
            }
        } else {
            let goroutine = (h.target, h.goid);
            let ids = match goroutines.parent(goroutine, h.ktime_ns) {
                Some(parent) => SpanIds {
                    trace_id: parent.trace_id,
                    span_id: self.ids.span_id(),
                    parent: Some(parent.span_id),
                    flags: Sampler::child_flags(parent.flags),
                },
                None => {
                    self.stats.unparented += 1;
                    let trace_id = self.ids.trace_id();
                    SpanIds {
                        trace_id,
                        span_id: self.ids.span_id(),
                        parent: None,
                        flags: self.sampler.root_flags(trace_id, None),
                    }
                }
            };
            goroutines.enter(
                goroutine,
                ParentSpan {
                    trace_id: ids.trace_id,
                    span_id: ids.span_id,
                    flags: ids.flags,
                },
            );
            OpenCall {
                start_ns: h.ktime_ns,
                span: Some(ids),
                // A sampled-out span is never encoded.
                encoded: if sampling::is_sampled(ids.flags) {
                    self.encode_start(rec)
                } else {
                    Vec::new()
                },
            }
        };
        if let Some((displaced_key, displaced)) = self.open.open(key, call, h.ktime_ns) {
            let reason = if displaced_key == key {
                Incomplete::Replaced
            } else {
                Incomplete::Evicted
            };
            self.emit(
                goroutines,
                displaced_key,
                displaced,
                h.ktime_ns,
                None,
                Some(reason),
                out,
            );
        }
    }

    /// A call returned.
    pub fn on_end(
        &mut self,
        goroutines: &mut Goroutines,
        rec: &SqlEnd,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        let h = &rec.header;
        let key = (h.target, h.goid, rec.op);
        if let Some(open) = self.open.close(&key, h.ktime_ns) {
            self.emit(goroutines, key, open, h.ktime_ns, Some(rec), None, out);
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
            self.emit(
                goroutines,
                key,
                open,
                now_ns,
                None,
                Some(Incomplete::Expired),
                out,
            );
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
            self.emit(
                goroutines,
                key,
                open,
                now_ns,
                None,
                Some(Incomplete::Shutdown),
                out,
            );
        }
    }

    /// Completes an open call's span with its ids, times and what the end
    /// record (if any) says, and hands it to `out`.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        goroutines: &mut Goroutines,
        (slot, goid, _): Key,
        open: OpenCall,
        end_ns: u64,
        end: Option<&SqlEnd>,
        incomplete: Option<Incomplete>,
        out: &mut (impl FnMut(EncodedSpan) + ?Sized),
    ) {
        let Some(ids) = open.span else { return };
        goroutines.exit((slot, goid), ids.span_id);
        if !sampling::is_sampled(ids.flags) {
            self.sampled_out += 1;
            return;
        }
        let mut bytes = open.encoded;
        let mut w = SpanWriter::new(&mut bytes);
        w.ids(ids.trace_id, ids.span_id, ids.parent);
        w.kind(&SpanKind::Client).times(
            self.clock.to_unix_ns(open.start_ns),
            self.clock.to_unix_ns(end_ns.max(open.start_ns)),
        );
        let mut error = false;
        if let Some(end) = end
            && end.err_itab != 0
        {
            w.attr_str(
                "error.type",
                self.types.name(end.err_itab).unwrap_or("_OTHER"),
            );
            error = true;
        }
        if let Some(reason) = incomplete {
            w.attr_str("agent.span.incomplete", reason.as_str());
        }
        if error {
            w.status_error("");
        }
        w.flags(u32::from(ids.flags) | SPAN_FLAGS_HAS_IS_REMOTE);
        out(EncodedSpan {
            scope: self.scope.clone(),
            bytes,
        });
    }

    /// The database system of the `*sql.DB` a start record names.
    fn system(&self, rec: &SqlStart) -> &'static str {
        if rec.flags & START_CONNECTOR == 0 {
            return "other_sql";
        }
        match self.types.name(rec.connector_itab) {
            Some(DSN_CONNECTOR) if rec.flags & START_DRIVER != 0 => self
                .types
                .name(rec.driver_itab)
                .map_or("other_sql", system_name),
            Some(connector) => system_name(connector),
            None => "other_sql",
        }
    }

    /// The span's name and every attribute a start record gives, encoded.
    fn encode_start(&self, rec: &SqlStart) -> Vec<u8> {
        let system = self.system(rec);
        let (text, operation, collection) = match rec.op {
            OP_BEGIN => (None, Some("BEGIN".to_owned()), None),
            OP_COMMIT => (None, Some("COMMIT".to_owned()), None),
            OP_ROLLBACK => (None, Some("ROLLBACK".to_owned()), None),
            op if rec.flags & START_QUERY != 0 => {
                let kept = (rec.query_len as usize).min(rec.query.len());
                let truncated = kept < rec.query_len as usize;
                let s = sanitize(&rec.query[..kept], truncated, self.options.keep_literals);
                // A prepare runs nothing: its operation is the preparing.
                let operation = if op == OP_PREPARE {
                    Some("PREPARE".to_owned())
                } else {
                    s.operation
                };
                (s.text, operation, s.collection)
            }
            OP_PREPARE => (None, Some("PREPARE".to_owned()), None),
            _ => (None, None, None),
        };
        let mut bytes = crate::export::span_buffer(SPAN_CAPACITY);
        let mut w = SpanWriter::new(&mut bytes);
        match (&operation, &collection) {
            (Some(op), Some(coll)) => w.name(&[op, " ", coll]),
            (Some(op), None) => w.name(&[op]),
            (None, _) => w.name(&[system]),
        };
        w.attr_str("db.system.name", system);
        if let Some(op) = &operation {
            w.attr_str("db.operation.name", op);
        }
        if let Some(coll) = &collection {
            w.attr_str("db.collection.name", coll);
        }
        if let Some(text) = &text {
            w.attr_str("db.query.text", text);
        }
        w.attr_int("goroutine.id", rec.header.goid as i64);
        w.attr_int("thread.id", i64::from(rec.header.tid));
        bytes
    }
}

/// OTLP `SpanFlags`: the W3C trace flags in the low byte; whether the
/// parent is remote is known (bit 8; it is not: bit 9 clear).
const SPAN_FLAGS_HAS_IS_REMOTE: u32 = 0x100;
