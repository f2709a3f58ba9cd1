//! OTLP protobuf, written directly.
//!
//! The hot path (one span per HTTP request) encodes its `Span` message
//! straight from the ring-buffer record into bytes: no intermediate structs,
//! no allocation per attribute. Batches are assembled from encoded spans into
//! one `ExportTraceServiceRequest` body, encoded once and resent as is on a
//! retry. Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`
//! and `common/v1/common.proto`; the tests decode what this writes with the
//! prost types of opentelemetry-proto.
//!
//! Why spans do not go through the SDK's `SpanData` and `SpanExporter`, while
//! metrics do go through the SDK (`crate::metrics`): a span is built once per
//! request on the agent's hot path, and the SDK's path builds a `SpanData`
//! (owned strings and a `Vec` per attribute), converts it to the prost
//! types and encodes those; USDT spans were moved off that path onto this
//! writer for that reason, measured in BENCHMARKS.md ("Direct encoding,
//! cheaper program, OTLP export", and the allocations per span after it).
//! Metrics have no such per-request encoding: the
//! histograms aggregate in memory and are encoded once per export, so the
//! SDK's aggregation, views and OTLP exporter cost nothing per span.

use opentelemetry::trace::{SpanId, SpanKind, TraceId};

pub(crate) const VARINT: u8 = 0;
pub(crate) const FIXED64: u8 = 1;
pub(crate) const LEN: u8 = 2;
pub(crate) const FIXED32: u8 = 5;

/// One-byte tags of an attribute's frame: `Span.attributes` (9),
/// `KeyValue.key` (1), `KeyValue.value` (2), `AnyValue.string_value` (1),
/// `AnyValue.int_value` (3).
const KV_TAG: u8 = 9 << 3 | LEN;
const KEY_TAG: u8 = 1 << 3 | LEN;
const VALUE_TAG: u8 = 2 << 3 | LEN;
const STRING_TAG: u8 = 1 << 3 | LEN;
const INT_TAG: u8 = 3 << 3 | VARINT;

pub(crate) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

pub(crate) fn put_tag(buf: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

/// A length-delimited field with `bytes` as its payload.
pub fn put_len_field(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(buf, field, LEN);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Size of a length-delimited field (tag < 16) with a payload of `len` bytes.
fn len_field_size(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Writes a length-delimited field whose payload `write` produces, without
/// knowing its size first: reserves one length byte and moves the payload if
/// it turns out longer than 127 bytes.
pub fn put_nested(buf: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    put_tag(buf, field, LEN);
    let at = buf.len();
    buf.push(0);
    write(buf);
    let len = buf.len() - at - 1;
    if len < 0x80 {
        buf[at] = len as u8;
    } else {
        let mut prefix = [0u8; 10];
        let (mut v, mut n) = (len as u64, 0);
        while v >= 0x80 {
            prefix[n] = (v as u8) | 0x80;
            v >>= 7;
            n += 1;
        }
        prefix[n] = v as u8;
        buf.splice(at..=at, prefix[..=n].iter().copied());
    }
}

/// The repeated `KeyValue` field an attribute is written as: its one-byte
/// tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttrField(u8);

impl AttrField {
    /// `Span.attributes`.
    pub const SPAN: Self = Self(KV_TAG);
    /// `Span.Event.attributes`.
    pub const EVENT: Self = Self(3 << 3 | LEN);

    /// The field's number.
    pub fn number(self) -> u32 {
        u32::from(self.0 >> 3)
    }
}

/// The frame of an attribute up to its `AnyValue`'s payload, which the
/// caller writes next and which is `any` bytes long: no length is guessed,
/// so nothing is moved afterwards.
fn kv_head(buf: &mut Vec<u8>, field: AttrField, key: &str, any: usize) {
    // KeyValue { key = 1, value = 2: AnyValue }
    let kv = len_field_size(key.len()) + len_field_size(any);
    if kv < 0x80 {
        // Every length under 128: each prefix is one byte, written in a
        // few copies with room for the rest.
        buf.reserve(2 + kv);
        buf.extend_from_slice(&[field.0, kv as u8, KEY_TAG, key.len() as u8]);
        buf.extend_from_slice(key.as_bytes());
        buf.extend_from_slice(&[VALUE_TAG, any as u8]);
        return;
    }
    buf.push(field.0);
    put_varint(buf, kv as u64);
    put_len_field(buf, 1, key.as_bytes());
    buf.push(VALUE_TAG);
    put_varint(buf, any as u64);
}

/// A string attribute.
pub fn attr_str(buf: &mut Vec<u8>, field: AttrField, key: &str, value: &str) {
    // AnyValue { string_value = 1 }
    kv_head(buf, field, key, len_field_size(value.len()));
    buf.push(STRING_TAG);
    put_varint(buf, value.len() as u64);
    buf.extend_from_slice(value.as_bytes());
}

/// An integer attribute.
pub fn attr_int(buf: &mut Vec<u8>, field: AttrField, key: &str, value: i64) {
    // AnyValue { int_value = 3 }
    kv_head(buf, field, key, 1 + varint_len(value as u64));
    buf.push(INT_TAG);
    put_varint(buf, value as u64);
}

/// A boolean attribute.
pub fn attr_bool(buf: &mut Vec<u8>, field: AttrField, key: &str, value: bool) {
    // AnyValue { bool_value = 2 }
    kv_head(buf, field, key, 2);
    buf.extend_from_slice(&[2 << 3 | VARINT, u8::from(value)]);
}

/// An array-of-strings attribute.
pub fn attr_str_array<S: AsRef<str>>(buf: &mut Vec<u8>, field: AttrField, key: &str, values: &[S]) {
    // AnyValue { array_value = 5: ArrayValue { values = 1: AnyValue {
    // string_value = 1 } } }
    let array: usize = values
        .iter()
        .map(|v| len_field_size(len_field_size(v.as_ref().len())))
        .sum();
    kv_head(buf, field, key, len_field_size(array));
    buf.push(5 << 3 | LEN);
    put_varint(buf, array as u64);
    for v in values {
        let v = v.as_ref().as_bytes();
        buf.push(1 << 3 | LEN);
        put_varint(buf, len_field_size(v.len()) as u64);
        put_len_field(buf, 1, v);
    }
}

/// An array-of-integers attribute.
pub fn attr_int_array(buf: &mut Vec<u8>, field: AttrField, key: &str, values: &[i64]) {
    // AnyValue { array_value = 5: ArrayValue { values = 1: AnyValue {
    // int_value = 3 } } }
    let array: usize = values
        .iter()
        .map(|v| len_field_size(1 + varint_len(*v as u64)))
        .sum();
    kv_head(buf, field, key, len_field_size(array));
    buf.push(5 << 3 | LEN);
    put_varint(buf, array as u64);
    for v in values {
        buf.push(1 << 3 | LEN);
        put_varint(buf, (1 + varint_len(*v as u64)) as u64);
        buf.push(INT_TAG);
        put_varint(buf, *v as u64);
    }
}

/// Writes the fields of one `Span` message.
#[derive(Debug)]
pub struct SpanWriter<'a> {
    buf: &'a mut Vec<u8>,
}

/// OTLP `Span.SpanKind` values.
pub(crate) fn kind_value(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

impl<'a> SpanWriter<'a> {
    /// Starts a span in `buf` (which should be empty or hold earlier spans
    /// of the same writer: each span is one message, kept separately).
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Self { buf }
    }

    pub fn ids(&mut self, trace_id: TraceId, span_id: SpanId, parent: Option<SpanId>) -> &mut Self {
        put_len_field(self.buf, 1, &trace_id.to_bytes());
        put_len_field(self.buf, 2, &span_id.to_bytes());
        if let Some(parent) = parent.filter(|p| *p != SpanId::INVALID) {
            put_len_field(self.buf, 4, &parent.to_bytes());
        }
        self
    }

    /// The W3C `tracestate` of the span's context (`Span.trace_state`).
    pub fn trace_state(&mut self, state: &str) -> &mut Self {
        put_len_field(self.buf, 3, state.as_bytes());
        self
    }

    pub fn name(&mut self, parts: &[&str]) -> &mut Self {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        put_tag(self.buf, 5, LEN);
        put_varint(self.buf, len as u64);
        for part in parts {
            self.buf.extend_from_slice(part.as_bytes());
        }
        self
    }

    pub fn kind(&mut self, kind: &SpanKind) -> &mut Self {
        put_tag(self.buf, 6, VARINT);
        put_varint(self.buf, kind_value(kind));
        self
    }

    pub fn times(&mut self, start_unix_ns: u64, end_unix_ns: u64) -> &mut Self {
        put_tag(self.buf, 7, FIXED64);
        self.buf.extend_from_slice(&start_unix_ns.to_le_bytes());
        put_tag(self.buf, 8, FIXED64);
        self.buf.extend_from_slice(&end_unix_ns.to_le_bytes());
        self
    }

    /// A string attribute.
    pub fn attr_str(&mut self, key: &str, value: &str) -> &mut Self {
        attr_str(self.buf, AttrField::SPAN, key, value);
        self
    }

    /// An integer attribute.
    pub fn attr_int(&mut self, key: &str, value: i64) -> &mut Self {
        attr_int(self.buf, AttrField::SPAN, key, value);
        self
    }

    /// A boolean attribute.
    pub fn attr_bool(&mut self, key: &str, value: bool) -> &mut Self {
        attr_bool(self.buf, AttrField::SPAN, key, value);
        self
    }

    /// An array-of-strings attribute (`AnyValue.array_value`).
    pub fn attr_str_array(&mut self, key: &str, values: &[&str]) -> &mut Self {
        attr_str_array(self.buf, AttrField::SPAN, key, values);
        self
    }

    /// Status ERROR (code 2) with an optional message.
    pub fn status_error(&mut self, message: &str) -> &mut Self {
        put_nested(self.buf, 15, |b| {
            if !message.is_empty() {
                put_len_field(b, 2, message.as_bytes());
            }
            put_tag(b, 3, VARINT);
            put_varint(b, 2);
        });
        self
    }

    /// Span flags: W3C trace flags (sampled) in the low byte.
    pub fn flags(&mut self, flags: u32) -> &mut Self {
        put_tag(self.buf, 16, FIXED32);
        self.buf.extend_from_slice(&flags.to_le_bytes());
        self
    }
}

/// Assembles `ExportTraceServiceRequest` bodies from encoded spans.
///
/// `resource` is an encoded `Resource` message; scopes are encoded
/// `InstrumentationScope` messages; spans are encoded `Span` messages.
pub fn request(resource: &[u8], scopes: &[(&[u8], &[&[u8]])]) -> Vec<u8> {
    let mut scope_spans_len = Vec::with_capacity(scopes.len());
    let mut resource_spans = len_field_size(resource.len());
    for (scope, spans) in scopes {
        let len = len_field_size(scope.len())
            + spans.iter().map(|s| len_field_size(s.len())).sum::<usize>();
        scope_spans_len.push(len);
        resource_spans += len_field_size(len);
    }
    let mut out = Vec::with_capacity(len_field_size(resource_spans));
    put_tag(&mut out, 1, LEN);
    put_varint(&mut out, resource_spans as u64);
    put_len_field(&mut out, 1, resource);
    for ((scope, spans), len) in scopes.iter().zip(scope_spans_len) {
        put_tag(&mut out, 2, LEN);
        put_varint(&mut out, len as u64);
        put_len_field(&mut out, 1, scope);
        for span in *spans {
            put_len_field(&mut out, 2, span);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{InstrumentationScope, any_value::Value},
        resource::v1::Resource,
        trace::v1::Span,
    };
    use prost::Message as _;

    use super::*;

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn encoded_span_decodes_with_prost() {
        let mut buf = Vec::new();
        let long = "x".repeat(300);
        SpanWriter::new(&mut buf)
            .ids(
                TraceId::from(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10_u128),
                SpanId::from(0x1112_1314_1516_1718_u64),
                Some(SpanId::from(7u64)),
            )
            .name(&["GET", " ", "/a"])
            .kind(&SpanKind::Server)
            .times(1_000, 2_500)
            .attr_str("url.path", "/a")
            .attr_str("long", &long)
            .attr_int("http.response.status_code", 503)
            .attr_int("negative", -5)
            .status_error("")
            .flags(1);
        let span = Span::decode(buf.as_slice()).expect("valid Span");
        assert_eq!(span.name, "GET /a");
        assert_eq!(span.kind, 2);
        assert_eq!(span.trace_id, (1u8..=16).collect::<Vec<_>>());
        assert_eq!(span.parent_span_id, 7u64.to_be_bytes().to_vec());
        assert_eq!(
            (span.start_time_unix_nano, span.end_time_unix_nano),
            (1_000, 2_500)
        );
        let attr = |k: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(attr("url.path"), Some(Value::StringValue("/a".into())));
        assert_eq!(attr("long"), Some(Value::StringValue(long.clone())));
        assert_eq!(
            attr("http.response.status_code"),
            Some(Value::IntValue(503))
        );
        assert_eq!(attr("negative"), Some(Value::IntValue(-5)));
        assert_eq!(span.status.map(|s| s.code), Some(2));
        assert_eq!(span.flags, 1);

        let resource = Resource {
            attributes: vec![],
            dropped_attributes_count: 0,
            entity_refs: vec![],
        }
        .encode_to_vec();
        let scope = InstrumentationScope {
            name: "s".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let body = request(&resource, &[(&scope, &[&buf, &buf])]);
        let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("valid request");
        assert_eq!(req.resource_spans.len(), 1);
        assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), 2);
        assert_eq!(req.resource_spans[0].scope_spans[0].spans[1].name, "GET /a");
    }

    #[test]
    fn attributes_of_spans_and_events_decode_with_prost() {
        use opentelemetry_proto::tonic::{
            common::v1::{AnyValue, ArrayValue},
            trace::v1::span::Event,
        };
        let long = "y".repeat(200);
        let frames = ["main.f (/a.go:1)".to_owned(), "z".repeat(150)];
        let write = |b: &mut Vec<u8>, field: AttrField| {
            attr_str(b, field, "s", "v");
            attr_str(b, field, &long, &long);
            attr_int(b, field, "i", -3);
            attr_bool(b, field, "yes", true);
            attr_bool(b, field, "no", false);
            attr_str_array(b, field, "frames", &frames);
            attr_int_array(b, field, "ids", &[1, 300, -1]);
            attr_int_array(b, field, "none", &[]);
        };
        let string = |s: &str| AnyValue {
            value: Some(Value::StringValue(s.to_owned())),
        };
        let int = |i: i64| AnyValue {
            value: Some(Value::IntValue(i)),
        };
        let expected: Vec<(String, Value)> = vec![
            ("s".into(), Value::StringValue("v".into())),
            (long.clone(), Value::StringValue(long.clone())),
            ("i".into(), Value::IntValue(-3)),
            ("yes".into(), Value::BoolValue(true)),
            ("no".into(), Value::BoolValue(false)),
            (
                "frames".into(),
                Value::ArrayValue(ArrayValue {
                    values: frames.iter().map(|f| string(f)).collect(),
                }),
            ),
            (
                "ids".into(),
                Value::ArrayValue(ArrayValue {
                    values: vec![int(1), int(300), int(-1)],
                }),
            ),
            (
                "none".into(),
                Value::ArrayValue(ArrayValue { values: vec![] }),
            ),
        ];
        let pairs = |kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
            kvs.iter()
                .map(|kv| {
                    let v = kv.value.clone().and_then(|v| v.value).expect("a value");
                    (kv.key.clone(), v)
                })
                .collect::<Vec<_>>()
        };
        let mut span = Vec::new();
        write(&mut span, AttrField::SPAN);
        let decoded = Span::decode(span.as_slice()).expect("valid Span");
        assert_eq!(pairs(&decoded.attributes), expected);
        let mut event = Vec::new();
        write(&mut event, AttrField::EVENT);
        let decoded = Event::decode(event.as_slice()).expect("valid Event");
        assert_eq!(pairs(&decoded.attributes), expected);
    }

    #[test]
    fn nested_fields_longer_than_a_byte() {
        let mut buf = Vec::new();
        put_nested(&mut buf, 15, |b| put_len_field(b, 2, &[b'e'; 200]));
        let status =
            opentelemetry_proto::tonic::trace::v1::Status::decode(&buf[3..]).expect("status");
        assert_eq!(status.message.len(), 200);
        // Three length bytes.
        let mut buf = vec![7];
        put_nested(&mut buf, 15, |b| put_len_field(b, 2, &[b'e'; 20_000]));
        assert_eq!(buf[0], 7);
        let status =
            opentelemetry_proto::tonic::trace::v1::Status::decode(&buf[5..]).expect("status");
        assert_eq!(status.message.len(), 20_000);
    }
}
