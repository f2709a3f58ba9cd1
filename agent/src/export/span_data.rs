//! The SDK's `SpanData` as an OTLP `Span` message, written directly.
//!
//! Spans that are built as `SpanData` (a flight-recorder dump's tasks,
//! regions and goroutine periods, decoded traces, the families that build
//! them) went through opentelemetry-proto's conversion: a prost `Span` with
//! an owned `String` per attribute key and value and a `Vec` per list, then
//! encoded. On a 10 MiB dump (about 150,000 spans) that conversion and
//! encoding was about a third of the decoder thread's CPU time (perf,
//! BENCHMARKS.md "Flight dumps joined to the live spans"). This writes the
//! same message (the same fields, in field order, defaults left out as prost
//! leaves them out) from the `SpanData` by reference; the tests decode it
//! with the prost types and compare it with the conversion's result.

use std::time::{SystemTime, UNIX_EPOCH};

use std::borrow::Cow;
use std::time::Duration;

use opentelemetry::{
    Array, InstrumentationScope, KeyValue, StringValue, Value,
    trace::{Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue as ProtoKeyValue, any_value},
    trace::v1::{Span as ProtoSpan, status::StatusCode},
};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use prost::Message as _;

use super::wire::{
    AttrField, FIXED32, FIXED64, VARINT, put_len_field, put_nested, put_tag, put_varint,
};

/// `Span.flags`: the W3C flags, and whether the parent's remoteness is known
/// (always) and is remote (`SpanFlags` in trace.proto).
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn put_fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_tag(buf, field, VARINT);
        put_varint(buf, v);
    }
}

fn put_str(buf: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_len_field(buf, field, s.as_bytes());
    }
}

/// `AnyValue`'s fields for `value`.
fn any_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => {
            put_tag(buf, 2, VARINT);
            put_varint(buf, u64::from(*b));
        }
        Value::I64(i) => {
            put_tag(buf, 3, VARINT);
            put_varint(buf, *i as u64);
        }
        Value::F64(f) => put_fixed64(buf, 4, f.to_bits()),
        Value::String(s) => put_len_field(buf, 1, s.as_str().as_bytes()),
        Value::Array(array) => put_nested(buf, 5, |values| array_values(values, array)),
        // A kind of value added to the API after this was written: as the
        // conversion would have it, by its text.
        other => put_len_field(buf, 1, other.as_str().as_bytes()),
    }
}

fn array_values(buf: &mut Vec<u8>, array: &Array) {
    fn each<T>(buf: &mut Vec<u8>, values: &[T], write: impl Fn(&mut Vec<u8>, &T)) {
        for v in values {
            put_nested(buf, 1, |any| write(any, v));
        }
    }
    match array {
        Array::Bool(v) => each(buf, v, |b, x| any_value(b, &Value::Bool(*x))),
        Array::I64(v) => each(buf, v, |b, x| any_value(b, &Value::I64(*x))),
        Array::F64(v) => each(buf, v, |b, x| any_value(b, &Value::F64(*x))),
        Array::String(v) => each(buf, v, |b, x: &StringValue| {
            put_len_field(b, 1, x.as_str().as_bytes());
        }),
        _ => {}
    }
}

/// `KeyValue`s as repeated field `field`.
fn attributes<'a>(buf: &mut Vec<u8>, field: u32, kvs: impl IntoIterator<Item = &'a KeyValue>) {
    for kv in kvs {
        put_nested(buf, field, |b| {
            put_str(b, 1, kv.key.as_str());
            put_nested(b, 2, |any| any_value(any, &kv.value));
        });
    }
}

/// `kvs` as attribute frames of `field`, for copying into messages written
/// directly (attributes every span of a batch carries, say).
pub fn encode_attributes(kvs: &[KeyValue], field: AttrField) -> Vec<u8> {
    let mut buf = Vec::new();
    attributes(&mut buf, field.number(), kvs);
    buf
}

/// `span` as an encoded OTLP `Span` message.
pub fn encode(span: &SpanData) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    let b = &mut buf;
    let context = &span.span_context;
    put_len_field(b, 1, &context.trace_id().to_bytes());
    put_len_field(b, 2, &context.span_id().to_bytes());
    put_str(b, 3, &context.trace_state().header());
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        put_len_field(b, 4, &span.parent_span_id.to_bytes());
    }
    put_str(b, 5, &span.name);
    put_uint(b, 6, super::wire::kind_value(&span.span_kind));
    put_fixed64(b, 7, nanos(span.start_time));
    put_fixed64(b, 8, nanos(span.end_time));
    attributes(b, 9, &span.attributes);
    put_uint(b, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        put_nested(b, 11, |e| {
            put_fixed64(e, 1, nanos(event.timestamp));
            put_str(e, 2, &event.name);
            attributes(e, 3, &event.attributes);
            put_uint(e, 4, u64::from(event.dropped_attributes_count));
        });
    }
    put_uint(b, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        put_nested(b, 13, |l| {
            let context = &link.span_context;
            put_len_field(l, 1, &context.trace_id().to_bytes());
            put_len_field(l, 2, &context.span_id().to_bytes());
            put_str(l, 3, &context.trace_state().header());
            attributes(l, 4, &link.attributes);
            put_uint(l, 5, u64::from(link.dropped_attributes_count));
            let mut flags = u32::from(context.trace_flags().to_u8()) | HAS_IS_REMOTE;
            if context.is_remote() {
                flags |= IS_REMOTE;
            }
            put_tag(l, 6, FIXED32);
            l.extend_from_slice(&flags.to_le_bytes());
        });
    }
    put_uint(b, 14, u64::from(span.links.dropped_count));
    put_nested(b, 15, |s| {
        let (message, code) = match &span.status {
            Status::Unset => ("", 0),
            Status::Ok => ("", 1),
            Status::Error { description } => (description.as_ref(), 2),
        };
        put_str(s, 2, message);
        put_uint(s, 3, code);
    });
    let mut flags = u32::from(context.trace_flags().to_u8()) | HAS_IS_REMOTE;
    if span.parent_span_is_remote {
        flags |= IS_REMOTE;
    }
    put_tag(b, 16, FIXED32);
    b.extend_from_slice(&flags.to_le_bytes());
    buf
}

/// An encoded OTLP `Span` message as the SDK's `SpanData`, under `scope`:
/// the inverse of [`encode`], for tests and tools that inspect spans the
/// agent writes directly.
pub fn decode(bytes: &[u8], scope: InstrumentationScope) -> Result<SpanData, prost::DecodeError> {
    let span = ProtoSpan::decode(bytes)?;
    let trace_id = TraceId::from_bytes(fixed(&span.trace_id));
    let id = |b: &[u8]| SpanId::from_bytes(fixed(b));
    let flags = span.flags;
    let context = SpanContext::new(
        trace_id,
        id(&span.span_id),
        TraceFlags::new(flags as u8),
        false,
        span.trace_state.parse().unwrap_or_default(),
    );
    let mut events = SpanEvents::default();
    events.events = span
        .events
        .into_iter()
        .map(|e| {
            Event::new(
                e.name,
                time(e.time_unix_nano),
                values(e.attributes),
                e.dropped_attributes_count,
            )
        })
        .collect();
    events.dropped_count = span.dropped_events_count;
    let mut links = SpanLinks::default();
    links.links = span
        .links
        .into_iter()
        .map(|l| {
            let state: TraceState = l.trace_state.parse().unwrap_or_default();
            let context = SpanContext::new(
                TraceId::from_bytes(fixed(&l.trace_id)),
                id(&l.span_id),
                TraceFlags::new(l.flags as u8),
                l.flags & IS_REMOTE != 0,
                state,
            );
            Link::new(context, values(l.attributes), l.dropped_attributes_count)
        })
        .collect();
    links.dropped_count = span.dropped_links_count;
    let status = match span.status {
        Some(s) if s.code == StatusCode::Ok as i32 => Status::Ok,
        Some(s) if s.code == StatusCode::Error as i32 => Status::error(s.message),
        _ => Status::Unset,
    };
    Ok(SpanData {
        span_context: context,
        parent_span_id: if span.parent_span_id.is_empty() {
            SpanId::INVALID
        } else {
            id(&span.parent_span_id)
        },
        parent_span_is_remote: flags & IS_REMOTE != 0,
        span_kind: match span.kind {
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Internal,
        },
        name: Cow::Owned(span.name),
        start_time: time(span.start_time_unix_nano),
        end_time: time(span.end_time_unix_nano),
        attributes: values(span.attributes),
        dropped_attributes_count: span.dropped_attributes_count,
        events,
        links,
        status,
        instrumentation_scope: scope,
    })
}

/// An ID's bytes; zeros where the length is wrong.
fn fixed<const N: usize>(b: &[u8]) -> [u8; N] {
    b.try_into().unwrap_or([0; N])
}

fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn values(kvs: Vec<ProtoKeyValue>) -> Vec<KeyValue> {
    kvs.into_iter()
        .map(|kv| KeyValue::new(kv.key, value(kv.value)))
        .collect()
}

/// An `AnyValue` as an attribute value. An array takes the kind of its
/// first element (an empty one is an empty array of strings); kinds the
/// SDK has no attribute value for (bytes, maps, mixed arrays) become their
/// debug text.
fn value(v: Option<AnyValue>) -> Value {
    use any_value::Value as V;
    match v.and_then(|v| v.value) {
        None => Value::from(""),
        Some(V::StringValue(s)) => Value::from(s),
        Some(V::BoolValue(b)) => Value::Bool(b),
        Some(V::IntValue(i)) => Value::I64(i),
        Some(V::DoubleValue(f)) => Value::F64(f),
        Some(V::ArrayValue(a)) => {
            let items: Vec<Option<V>> = a.values.into_iter().map(|v| v.value).collect();
            // The array as all values of one kind, if they are.
            fn all<T>(items: &[Option<V>], kind: impl Fn(&V) -> Option<T>) -> Option<Vec<T>> {
                items.iter().map(|v| v.as_ref().and_then(&kind)).collect()
            }
            let array = if let Some(v) = all(&items, |v| match v {
                V::StringValue(s) => Some(StringValue::from(s.clone())),
                _ => None,
            }) {
                Array::String(v)
            } else if let Some(v) = all(&items, |v| match v {
                V::IntValue(i) => Some(*i),
                _ => None,
            }) {
                Array::I64(v)
            } else if let Some(v) = all(&items, |v| match v {
                V::BoolValue(b) => Some(*b),
                _ => None,
            }) {
                Array::Bool(v)
            } else if let Some(v) = all(&items, |v| match v {
                V::DoubleValue(f) => Some(*f),
                _ => None,
            }) {
                Array::F64(v)
            } else {
                return Value::from(format!("{items:?}"));
            };
            Value::Array(array)
        }
        Some(other) => Value::from(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, time::Duration};

    use opentelemetry::{
        InstrumentationScope,
        trace::{Event, Link, SpanContext, SpanId, SpanKind, TraceFlags, TraceId, TraceState},
    };
    use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;

    use super::*;

    fn span(kind: SpanKind, status: Status, remote_parent: bool) -> SpanData {
        let t0 = UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789);
        let state = TraceState::from_key_value([("vendor", "value"), ("other", "x")])
            .expect("a valid tracestate");
        let context = SpanContext::new(
            TraceId::from(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            SpanId::from(0x1112_1314_1516_1718),
            TraceFlags::SAMPLED,
            false,
            state,
        );
        let long = "x".repeat(300);
        let mut events = SpanEvents::default();
        events.events.push(Event::new(
            "log",
            t0 + Duration::from_micros(3),
            vec![
                KeyValue::new("go.log.category", "cat"),
                KeyValue::new("go.log.message", long.clone()),
            ],
            2,
        ));
        events.events.push(Event::new("bare", t0, Vec::new(), 0));
        events.dropped_count = 5;
        let mut links = SpanLinks::default();
        links.links.push(Link::new(
            SpanContext::new(
                TraceId::from(7),
                SpanId::from(8),
                TraceFlags::default(),
                true,
                TraceState::default(),
            ),
            vec![KeyValue::new("link.kind", "follows")],
            1,
        ));
        links.dropped_count = 3;
        SpanData {
            span_context: context,
            parent_span_id: SpanId::from(0x2122_2324_2526_2728),
            parent_span_is_remote: remote_parent,
            span_kind: kind,
            name: Cow::Owned("GET /items/{id}".to_owned()),
            start_time: t0,
            end_time: t0 + Duration::from_millis(12),
            attributes: vec![
                KeyValue::new("s", "short"),
                KeyValue::new("long", long),
                KeyValue::new("i", -42_i64),
                KeyValue::new("big", i64::MAX),
                KeyValue::new("f", 2.5_f64),
                KeyValue::new("b", true),
                KeyValue::new("nb", false),
                KeyValue::new("zero", 0_i64),
                KeyValue::new("empty", ""),
                KeyValue::new(
                    "frames",
                    Value::Array(Array::String(vec!["a".into(), "".into(), "c".into()])),
                ),
                KeyValue::new("ints", Value::Array(Array::I64(vec![1, 0, -1]))),
                KeyValue::new("floats", Value::Array(Array::F64(vec![0.0, 1.5]))),
                KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
            ],
            dropped_attributes_count: 4,
            events,
            links,
            status,
            instrumentation_scope: InstrumentationScope::builder("agent.test").build(),
        }
    }

    fn same_as_the_conversion(span: SpanData) {
        let bytes = encode(&span);
        let ours = ProtoSpan::decode(bytes.as_slice()).expect("a Span message");
        let theirs = ProtoSpan::from(span);
        assert_eq!(ours, theirs);
        // Byte for byte, too: the same fields in the same order.
        assert_eq!(bytes, theirs.encode_to_vec());
    }

    #[test]
    fn decoding_gives_back_the_span() {
        for status in [
            Status::Unset,
            Status::Ok,
            Status::error("deadline exceeded"),
        ] {
            let original = span(SpanKind::Client, status, true);
            let decoded = decode(&encode(&original), original.instrumentation_scope.clone())
                .expect("a Span message");
            assert_eq!(decoded, original);
        }
        assert!(decode(b"\x0a\xff", InstrumentationScope::default()).is_err());
    }

    #[test]
    fn every_field_and_value_kind_as_the_sdk_conversion_writes_it() {
        same_as_the_conversion(span(SpanKind::Server, Status::Unset, true));
        same_as_the_conversion(span(SpanKind::Internal, Status::Ok, false));
        same_as_the_conversion(span(
            SpanKind::Client,
            Status::error("deadline exceeded"),
            false,
        ));
        same_as_the_conversion(span(SpanKind::Producer, Status::error(""), false));
    }

    #[test]
    fn a_root_span_with_nothing_else_as_the_sdk_conversion_writes_it() {
        let mut root = span(SpanKind::Consumer, Status::Unset, false);
        root.parent_span_id = SpanId::INVALID;
        root.attributes.clear();
        root.events = SpanEvents::default();
        root.links = SpanLinks::default();
        root.dropped_attributes_count = 0;
        root.name = Cow::Borrowed("");
        root.span_context = SpanContext::new(
            TraceId::from(1),
            SpanId::from(2),
            TraceFlags::default(),
            false,
            TraceState::default(),
        );
        same_as_the_conversion(root);
    }
}
