//! OTLP JSON straight from the encoded protobuf: the JSONL output writes
//! each batch's `ExportTraceServiceRequest` bytes as one JSON line by
//! walking the wire format, with no message tree in between. Decoding the
//! batch with prost and serialising it with serde allocated every string,
//! id and attribute twice and cost about 9 ms of agent CPU per 1,000 spans,
//! six times the OTLP path (`cargo bench --bench jsonl` measures both).
//!
//! The output is exactly what `serde_json` makes of the decoded request with
//! opentelemetry-proto's `with-serde` feature (field names, field order,
//! defaults written out, ids in hex, 64-bit integers as strings, bytes in
//! base64), which the tests check on every field. A field this writer does
//! not know makes it fail, and the caller falls back to that slow path.

use base64::Engine as _;

/// The bytes are not an `ExportTraceServiceRequest` this writer handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot transcode the OTLP request to JSON: {0}")]
pub struct TranscodeError(&'static str);

type Result<T> = std::result::Result<T, TranscodeError>;

/// One field's value on the wire.
#[derive(Clone, Copy, Debug)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// The fields of one message, in wire order.
struct Fields<'a> {
    buf: &'a [u8],
}

#[inline]
fn varint(buf: &mut &[u8]) -> Result<u64> {
    // Most varints here (tags, lengths of short fields) are one byte.
    if let Some((&byte, rest)) = buf.split_first()
        && byte < 0x80
    {
        *buf = rest;
        return Ok(u64::from(byte));
    }
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf
            .split_first()
            .ok_or(TranscodeError("truncated varint"))?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(TranscodeError("varint too long"))
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if buf.len() < n {
        return Err(TranscodeError("truncated field"));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

impl<'a> Fields<'a> {
    #[inline]
    fn field(&mut self) -> Result<(u64, Wire<'a>)> {
        let key = varint(&mut self.buf)?;
        let value = match key & 7 {
            0 => Wire::Varint(varint(&mut self.buf)?),
            1 => {
                let b = take(&mut self.buf, 8)?;
                Wire::Fixed64(u64::from_le_bytes(b.try_into().unwrap_or_default()))
            }
            2 => {
                let len = usize::try_from(varint(&mut self.buf)?)
                    .map_err(|_| TranscodeError("length overflow"))?;
                Wire::Bytes(take(&mut self.buf, len)?)
            }
            5 => {
                let b = take(&mut self.buf, 4)?;
                Wire::Fixed32(u32::from_le_bytes(b.try_into().unwrap_or_default()))
            }
            _ => return Err(TranscodeError("unsupported wire type")),
        };
        Ok((key >> 3, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Wire<'a>)>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let item = self.field();
        if item.is_err() {
            self.buf = &[];
        }
        Some(item)
    }
}

fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf }
}

fn bytes(value: Wire<'_>) -> Result<&[u8]> {
    match value {
        Wire::Bytes(b) => Ok(b),
        _ => Err(TranscodeError("expected a length-delimited field")),
    }
}

fn uint(value: Wire<'_>) -> Result<u64> {
    match value {
        Wire::Varint(v) => Ok(v),
        _ => Err(TranscodeError("expected a varint")),
    }
}

fn fixed64(value: Wire<'_>) -> Result<u64> {
    match value {
        Wire::Fixed64(v) => Ok(v),
        _ => Err(TranscodeError("expected a fixed64")),
    }
}

fn fixed32(value: Wire<'_>) -> Result<u32> {
    match value {
        Wire::Fixed32(v) => Ok(v),
        _ => Err(TranscodeError("expected a fixed32")),
    }
}

/// A JSON line being written.
struct Out<'o> {
    buf: &'o mut Vec<u8>,
}

impl Out<'_> {
    fn raw(&mut self, s: &str) {
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// A JSON string from UTF-8 bytes (replacing what is not UTF-8, where
    /// the slow path would refuse the whole batch).
    fn string(&mut self, bytes: &[u8]) {
        // Most strings need no escaping: copied as they are.
        if bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
            && std::str::from_utf8(bytes).is_ok()
        {
            self.buf.reserve(bytes.len() + 2);
            self.buf.push(b'"');
            self.buf.extend_from_slice(bytes);
            self.buf.push(b'"');
            return;
        }
        let text = String::from_utf8_lossy(bytes);
        // serde_json's escaping: writing a str to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.buf, text.as_ref());
    }

    /// `[]`, or [`Self::repeated`] when the message has the field.
    fn repeated_if(
        &mut self,
        present: bool,
        message: &[u8],
        number: u64,
        item: impl FnMut(&mut Self, &[u8]) -> Result<()>,
    ) -> Result<()> {
        if present {
            self.repeated(message, number, item)
        } else {
            self.raw("[]");
            Ok(())
        }
    }

    fn hex(&mut self, bytes: &[u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        self.buf.push(b'"');
        for &b in bytes {
            self.buf.push(DIGITS[usize::from(b >> 4)]);
            self.buf.push(DIGITS[usize::from(b & 15)]);
        }
        self.buf.push(b'"');
    }

    fn number(&mut self, n: u64) {
        let mut fmt = itoa::Buffer::new();
        self.raw(fmt.format(n));
    }

    fn quoted_number(&mut self, n: impl itoa::Integer) {
        let mut fmt = itoa::Buffer::new();
        self.buf.push(b'"');
        self.raw(fmt.format(n));
        self.buf.push(b'"');
    }

    /// `[item, ...]` of every occurrence of field `number` in `message`.
    fn repeated(
        &mut self,
        message: &[u8],
        number: u64,
        mut item: impl FnMut(&mut Self, &[u8]) -> Result<()>,
    ) -> Result<()> {
        self.buf.push(b'[');
        let mut first = true;
        for field in fields(message) {
            let (n, value) = field?;
            if n == number {
                if !first {
                    self.buf.push(b',');
                }
                first = false;
                item(self, bytes(value)?)?;
            }
        }
        self.buf.push(b']');
        Ok(())
    }

    /// A sub-message or `null` when absent.
    fn optional(
        &mut self,
        message: Option<&[u8]>,
        item: impl FnOnce(&mut Self, &[u8]) -> Result<()>,
    ) -> Result<()> {
        match message {
            Some(m) => item(self, m),
            None => {
                self.raw("null");
                Ok(())
            }
        }
    }
}

/// Writes the OTLP JSON of the encoded `ExportTraceServiceRequest` in
/// `request` to `out` (no newline). On error `out` may hold a partial line.
pub fn write_request(request: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let mut out = Out { buf: out };
    for field in fields(request) {
        if field?.0 != 1 {
            return Err(TranscodeError("unknown request field"));
        }
    }
    out.raw("{\"resourceSpans\":");
    out.repeated(request, 1, resource_spans)?;
    out.raw("}");
    Ok(())
}

fn resource_spans(out: &mut Out<'_>, m: &[u8]) -> Result<()> {
    let (mut resource, mut schema) = (None, &[][..]);
    for field in fields(m) {
        match field? {
            (1, v) => resource = Some(bytes(v)?),
            (2, _) => {}
            (3, v) => schema = bytes(v)?,
            _ => return Err(TranscodeError("unknown ResourceSpans field")),
        }
    }
    out.raw("{\"resource\":");
    out.optional(resource, write_resource)?;
    out.raw(",\"scopeSpans\":");
    out.repeated(m, 2, scope_spans)?;
    out.raw(",\"schemaUrl\":");
    out.string(schema);
    out.raw("}");
    Ok(())
}

fn write_resource(out: &mut Out<'_>, m: &[u8]) -> Result<()> {
    let mut dropped = 0;
    for field in fields(m) {
        match field? {
            (1, _) => {}
            (2, v) => dropped = uint(v)?,
            _ => return Err(TranscodeError("unknown Resource field")),
        }
    }
    out.raw("{\"attributes\":");
    out.repeated(m, 1, key_value)?;
    out.raw(",\"droppedAttributesCount\":");
    out.number(dropped);
    out.raw(",\"entityRefs\":[]}");
    Ok(())
}

fn scope_spans(out: &mut Out<'_>, m: &[u8]) -> Result<()> {
    let (mut scope, mut schema) = (None, &[][..]);
    for field in fields(m) {
        match field? {
            (1, v) => scope = Some(bytes(v)?),
            (2, _) => {}
            (3, v) => schema = bytes(v)?,
            _ => return Err(TranscodeError("unknown ScopeSpans field")),
        }
    }
    out.raw("{\"scope\":");
    out.optional(scope, write_scope)?;
    out.raw(",\"spans\":");
    out.repeated(m, 2, span)?;
    out.raw(",\"schemaUrl\":");
    out.string(schema);
    out.raw("}");
    Ok(())
}

fn write_scope(out: &mut Out<'_>, m: &[u8]) -> Result<()> {
    let (mut name, mut version, mut dropped) = (&[][..], &[][..], 0);
    for field in fields(m) {
        match field? {
            (1, v) => name = bytes(v)?,
            (2, v) => version = bytes(v)?,
            (3, _) => {}
            (4, v) => dropped = uint(v)?,
            _ => return Err(TranscodeError("unknown InstrumentationScope field")),
        }
    }
    out.raw("{\"name\":");
    out.string(name);
    out.raw(",\"version\":");
    out.string(version);
    out.raw(",\"attributes\":");
    out.repeated(m, 3, key_value)?;
    out.raw(",\"droppedAttributesCount\":");
    out.number(dropped);
    out.raw("}");
    Ok(())
}

/// The scalar fields of a `Span`.
#[derive(Default)]
struct SpanScalars<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    trace_state: &'a [u8],
    parent_span_id: &'a [u8],
    flags: u32,
    name: &'a [u8],
    kind: u64,
    start: u64,
    end: u64,
    dropped_attributes: u64,
    dropped_events: u64,
    dropped_links: u64,
    status: Option<&'a [u8]>,
    has_attributes: bool,
    has_events: bool,
    has_links: bool,
}

fn span(out: &mut Out<'_>, m: &[u8]) -> Result<()> {
    let mut s = SpanScalars::default();
    for field in fields(m) {
        match field? {
            (1, v) => s.trace_id = bytes(v)?,
            (2, v) => s.span_id = bytes(v)?,
            (3, v) => s.trace_state = bytes(v)?,
            (4, v) => s.parent_span_id = bytes(v)?,
            (5, v) => s.name = bytes(v)?,
            (6, v) => s.kind = uint(v)?,
            (7, v) => s.start = fixed64(v)?,
            (8, v) => s.end = fixed64(v)?,
            (9, _) => s.has_attributes = true,
            (11, _) => s.has_events = true,
            (13, _) => s.has_links = true,
            (10, v) => s.dropped_attributes = uint(v)?,
            (12, v) => s.dropped_events = uint(v)?,
            (14, v) => s.dropped_links = uint(v)?,
            (15, v) => s.status = Some(bytes(v)?),
            (16, v) => s.flags = fixed32(v)?,
            _ => return Err(TranscodeError("unknown Span field")),
        }
    }
    out.raw("{\"traceId\":");
    out.hex(s.trace_id);
    out.raw(",\"spanId\":");
    out.hex(s.span_id);
    out.raw(",\"traceState\":");
    out.string(s.trace_state);
    out.raw(",\"parentSpanId\":");
    out.hex(s.parent_span_id);
    out.raw(",\"flags\":");
    out.number(u64::from(s.flags));
    out.raw(",\"name\":");
    out.string(s.name);
    out.raw(",\"kind\":");
    out.number(s.kind);
    out.raw(",\"startTimeUnixNano\":");
    out.quoted_number(s.start);
    out.raw(",\"endTimeUnixNano\":");
    out.quoted_number(s.end);
    out.raw(",\"attributes\":");
    out.repeated_if(s.has_attributes, m, 9, key_value)?;
    out.raw(",\"droppedAttributesCount\":");
    out.number(s.dropped_attributes);
    out.raw(",\"events\":");
    out.repeated_if(s.has_events, m, 11, event)?;
    out.raw(",\"droppedEventsCount\":");
    out.number(s.dropped_events);
    out.raw(",\"links\":");
    out.repeated_if(s.has_links, m, 13, link)?;
    out.raw(",\"droppedLinksCount\":");
    out.number(s.dropped_links);
    out.raw(",\"status\":");
    out.optional(s.status, status)?;
    out.raw("}");
    Ok(())
}

fn event(out: &mut Out<'_>, m: &[u8]) -> Result<()> {
    let (mut time, mut name, mut dropped) = (0, &[][..], 0);
    for field in fields(m) {
        match field? {
            (1, v) => time = fixed64(v)?,
            (2, v) => name = bytes(v)?,
            (3, _) => {}
            (4, v) => dropped = uint(v)?,
            _ => return Err(TranscodeError("unknown Event field")),
        }
    }
    out.raw("{\"timeUnixNano\":");
    out.quoted_number(time);
    out.raw(",\"name\":");
    out.string(name);
    out.raw(",\"attributes\":");
    out.repeated(m, 3, key_value)?;
    out.raw(",\"droppedAttributesCount\":");
    out.number(dropped);
    out.raw("}");
    Ok(())
}

fn link(out: &mut Out<'_>, m: &[u8]) -> Result<()> {
    let (mut trace_id, mut span_id, mut state, mut dropped, mut flags) =
        (&[][..], &[][..], &[][..], 0, 0);
    for field in fields(m) {
        match field? {
            (1, v) => trace_id = bytes(v)?,
            (2, v) => span_id = bytes(v)?,
            (3, v) => state = bytes(v)?,
            (4, _) => {}
            (5, v) => dropped = uint(v)?,
            (6, v) => flags = fixed32(v)?,
            _ => return Err(TranscodeError("unknown Link field")),
        }
    }
    out.raw("{\"traceId\":");
    out.hex(trace_id);
    out.raw(",\"spanId\":");
    out.hex(span_id);
    out.raw(",\"traceState\":");
    out.string(state);
    out.raw(",\"attributes\":");
    out.repeated(m, 4, key_value)?;
    out.raw(",\"droppedAttributesCount\":");
    out.number(dropped);
    out.raw(",\"flags\":");
    out.number(u64::from(flags));
    out.raw("}");
    Ok(())
}

fn status(out: &mut Out<'_>, m: &[u8]) -> Result<()> {
    let (mut message, mut code) = (&[][..], 0);
    for field in fields(m) {
        match field? {
            (2, v) => message = bytes(v)?,
            (3, v) => code = uint(v)?,
            _ => return Err(TranscodeError("unknown Status field")),
        }
    }
    out.raw("{\"message\":");
    out.string(message);
    out.raw(",\"code\":");
    out.number(code);
    out.raw("}");
    Ok(())
}

fn key_value(out: &mut Out<'_>, m: &[u8]) -> Result<()> {
    let (mut key, mut value) = (&[][..], None);
    for field in fields(m) {
        match field? {
            (1, v) => key = bytes(v)?,
            (2, v) => value = Some(bytes(v)?),
            _ => return Err(TranscodeError("unknown KeyValue field")),
        }
    }
    out.raw("{\"key\":");
    out.string(key);
    out.raw(",\"value\":");
    out.optional(value, any_value)?;
    out.raw("}");
    Ok(())
}

fn any_value(out: &mut Out<'_>, m: &[u8]) -> Result<()> {
    let mut last = None;
    for field in fields(m) {
        last = Some(field?);
    }
    // A oneof: the last occurrence wins, as in prost.
    match last {
        Some((1, v)) => {
            out.raw("{\"stringValue\":");
            out.string(bytes(v)?);
        }
        Some((2, v)) => {
            out.raw(if uint(v)? != 0 {
                "{\"boolValue\":true"
            } else {
                "{\"boolValue\":false"
            });
        }
        Some((3, v)) => {
            out.raw("{\"intValue\":");
            out.quoted_number(uint(v)?.cast_signed());
        }
        Some((4, v)) => {
            out.raw("{\"doubleValue\":");
            let _ = serde_json::to_writer(&mut *out.buf, &f64::from_bits(fixed64(v)?));
        }
        Some((5, v)) => {
            out.raw("{\"arrayValue\":{\"values\":");
            out.repeated(bytes(v)?, 1, any_value)?;
            out.raw("}");
        }
        Some((6, v)) => {
            out.raw("{\"kvlistValue\":{\"values\":");
            out.repeated(bytes(v)?, 1, key_value)?;
            out.raw("}");
        }
        Some((7, v)) => {
            out.raw("{\"bytesValue\":\"");
            let encoded = base64::engine::general_purpose::STANDARD.encode(bytes(v)?);
            out.raw(&encoded);
            out.raw("\"");
        }
        _ => return Err(TranscodeError("unknown AnyValue field")),
    }
    out.raw("}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{
            AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
        },
        resource::v1::Resource,
        trace::v1::{
            ResourceSpans, ScopeSpans, Span, Status,
            span::{Event, Link},
        },
    };
    use prost::Message as _;

    fn kv(key: &str, value: Option<Value>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.map(|v| AnyValue { value: Some(v) }),
            key_strindex: 0,
        }
    }

    fn rich_request() -> ExportTraceServiceRequest {
        let span = Span {
            trace_id: (1..=16).collect(),
            span_id: vec![0xab; 8],
            trace_state: "k=v".into(),
            parent_span_id: vec![0, 1, 2, 3, 4, 5, 6, 0xff],
            flags: 0x301,
            name: "GET /x \"quoted\" \\ \u{1}\u{e9}".into(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_123_456_789,
            end_time_unix_nano: u64::MAX,
            attributes: vec![
                kv("s", Some(Value::StringValue("line\nbreak\ttab".into()))),
                kv("i", Some(Value::IntValue(-3))),
                kv("max", Some(Value::IntValue(i64::MAX))),
                kv("t", Some(Value::BoolValue(true))),
                kv("f", Some(Value::BoolValue(false))),
                kv("d", Some(Value::DoubleValue(1.5e-7))),
                kv("nan", Some(Value::DoubleValue(f64::NAN))),
                kv("y", Some(Value::BytesValue(vec![1, 2, 250]))),
                kv(
                    "a",
                    Some(Value::ArrayValue(ArrayValue {
                        values: vec![
                            AnyValue {
                                value: Some(Value::IntValue(1)),
                            },
                            AnyValue {
                                value: Some(Value::StringValue(String::new())),
                            },
                        ],
                    })),
                ),
                kv(
                    "m",
                    Some(Value::KvlistValue(KeyValueList {
                        values: vec![kv("q", Some(Value::StringValue("r".into())))],
                    })),
                ),
                kv("none", None),
            ],
            dropped_attributes_count: 4,
            events: vec![Event {
                time_unix_nano: 7,
                name: "exception".into(),
                attributes: vec![kv("exception.type", Some(Value::StringValue("E".into())))],
                dropped_attributes_count: 1,
            }],
            dropped_events_count: 2,
            links: vec![Link {
                trace_id: vec![3; 16],
                span_id: vec![4; 8],
                trace_state: "t".into(),
                attributes: vec![],
                dropped_attributes_count: 0,
                flags: 1,
            }],
            dropped_links_count: 3,
            status: Some(Status {
                message: "boom".into(),
                code: 2,
            }),
        };
        let bare = Span {
            name: "bare".into(),
            ..Span::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![kv("service.name", Some(Value::StringValue("s".into())))],
                        dropped_attributes_count: 0,
                        entity_refs: vec![],
                    }),
                    scope_spans: vec![
                        ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: "agent/http".into(),
                                version: "0.1.0".into(),
                                attributes: vec![kv("x", Some(Value::IntValue(0)))],
                                dropped_attributes_count: 0,
                            }),
                            spans: vec![span, bare],
                            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                        },
                        ScopeSpans::default(),
                    ],
                    schema_url: String::new(),
                },
                ResourceSpans::default(),
            ],
        }
    }

    #[test]
    fn writes_what_serde_writes_for_every_field() {
        for request in [rich_request(), ExportTraceServiceRequest::default()] {
            let bytes = request.encode_to_vec();
            let mut line = Vec::new();
            write_request(&bytes, &mut line).expect("transcoding");
            let ours: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
            let serde = serde_json::to_value(&request).expect("serde");
            assert_eq!(ours, serde, "{}", String::from_utf8_lossy(&line));
            // The same text, field order included.
            assert_eq!(
                String::from_utf8(line).expect("UTF-8"),
                serde_json::to_string(&request).expect("serde")
            );
        }
    }

    #[test]
    fn unknown_and_broken_input_is_refused() {
        let bytes = rich_request().encode_to_vec();
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                write_request(&bytes[..cut], &mut Vec::new()).is_err(),
                "{cut}"
            );
        }
        // Field 2 of the request does not exist.
        assert!(write_request(&[0x12, 0x00], &mut Vec::new()).is_err());
    }
}
