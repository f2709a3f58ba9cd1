//! What request metrics need from a finished span, read in place from its
//! encoded OTLP `Span` message: kind, times, and the few attributes the
//! conventions put on the duration histograms. No allocation: every value
//! borrows the span's bytes.
//!
//! Attributes framed as `SpanWriter` writes them (one-byte lengths, the
//! key before the value) are read without the general decoder; anything
//! else goes through it. A `KeyValue` whose value comes before its key (no
//! encoder in the agent writes one, nor does prost) is not read.

use crate::cursor::uvarint;

/// OTLP `Span.kind` values.
pub const KIND_SERVER: u64 = 2;
pub const KIND_CLIENT: u64 = 3;

/// An attribute value as encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Str(&'a [u8]),
    Int(i64),
}

/// The attributes the request metrics read, by position in [`KEYS`].
pub const KEYS: [&str; 16] = [
    "http.request.method",
    "http.route",
    "http.response.status_code",
    "error.type",
    "server.address",
    "server.port",
    "url.scheme",
    "rpc.system",
    "rpc.service",
    "rpc.method",
    "rpc.grpc.status_code",
    "db.system.name",
    "db.operation.name",
    "db.collection.name",
    "agent.span.incomplete",
    "network.protocol.version",
];

/// Positions in [`KEYS`].
pub mod key {
    pub const METHOD: usize = 0;
    pub const ROUTE: usize = 1;
    pub const STATUS: usize = 2;
    pub const ERROR_TYPE: usize = 3;
    pub const SERVER_ADDRESS: usize = 4;
    pub const SERVER_PORT: usize = 5;
    pub const URL_SCHEME: usize = 6;
    pub const RPC_SYSTEM: usize = 7;
    pub const RPC_SERVICE: usize = 8;
    pub const RPC_METHOD: usize = 9;
    pub const RPC_GRPC_STATUS: usize = 10;
    pub const DB_SYSTEM: usize = 11;
    pub const DB_OPERATION: usize = 12;
    pub const DB_COLLECTION: usize = 13;
    pub const INCOMPLETE: usize = 14;
    pub const PROTOCOL_VERSION: usize = 15;
}

/// A span as the request metrics see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpanView<'a> {
    pub kind: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attrs: [Option<Value<'a>>; KEYS.len()],
}

impl<'a> SpanView<'a> {
    /// Reads `bytes`, an encoded `Span`; `None` when it is malformed.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let mut view = Self::default();
        view.read(bytes)?;
        Some(view)
    }

    /// [`Self::parse`] into a view the caller holds (a fresh one: only what
    /// the span has is written), saving the copy of a returned view.
    pub fn read(&mut self, bytes: &'a [u8]) -> Option<()> {
        let view = self;
        let mut fields = Fields(bytes);
        loop {
            // Most of a span is attributes with a one-byte length, as
            // `SpanWriter` writes them: taken without the general decoder.
            if let [KV_TAG, len, tail @ ..] = fields.0
                && *len < 0x80
            {
                let n = usize::from(*len);
                let kv = tail.get(..n)?;
                fields.0 = &tail[n..];
                view.attribute(kv)?;
                continue;
            }
            let Some((field, wire)) = fields.next()? else {
                break;
            };
            match (field, wire) {
                (6, Wire::Varint(kind)) => view.kind = kind,
                (7, Wire::Fixed64(t)) => view.start_ns = t,
                (8, Wire::Fixed64(t)) => view.end_ns = t,
                (9, Wire::Len(kv)) => view.attribute(kv)?,
                _ => {}
            }
        }
        Some(())
    }

    /// One `KeyValue`: its key is looked at first, and the value read only
    /// for the few keys the metrics take (most attributes are others).
    #[inline(always)]
    fn attribute(&mut self, kv: &'a [u8]) -> Option<()> {
        // The key first, one-byte lengths: as `SpanWriter` and prost write.
        if let [KEY_TAG, klen, tail @ ..] = kv
            && *klen < 0x80
        {
            let (key, rest) = tail.split_at_checked(usize::from(*klen))?;
            let Some(slot) = slot_of(key) else {
                return Some(());
            };
            if let [VALUE_TAG, vlen, any @ ..] = rest
                && *vlen < 0x80
                && any.len() == usize::from(*vlen)
            {
                if let Some(value) = any_value(any)? {
                    self.attrs[slot] = Some(value);
                }
                return Some(());
            }
        }
        let mut fields = Fields(kv);
        let mut slot = None;
        while let Some((field, wire)) = fields.next()? {
            match (field, wire) {
                (1, Wire::Len(key)) => match slot_of(key) {
                    Some(s) => slot = Some(s),
                    None => return Some(()),
                },
                (2, Wire::Len(any)) => {
                    if let (Some(slot), Some(value)) = (slot, any_value(any)?) {
                        self.attrs[slot] = Some(value);
                    }
                }
                _ => {}
            }
        }
        Some(())
    }

    /// The attribute at position `slot` of [`KEYS`].
    pub fn get(&self, slot: usize) -> Option<Value<'a>> {
        self.attrs.get(slot).copied().flatten()
    }

    /// The duration in nanoseconds.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// The position of `key` in [`KEYS`]. Most of a span's attributes are none
/// of these, so each key is first told by its length and its first and last
/// bytes (distinct for every key in the list), which rejects almost every
/// other key without a comparison; a candidate is then compared whole.
#[inline(always)]
fn slot_of(key: &[u8]) -> Option<usize> {
    let (&first, &last) = (key.first()?, key.last()?);
    let slot = match (key.len(), first, last) {
        (19, b'h', b'd') => key::METHOD,
        (10, b'h', b'e') => key::ROUTE,
        (25, b'h', b'e') => key::STATUS,
        (10, b'e', b'e') => key::ERROR_TYPE,
        (14, b's', b's') => key::SERVER_ADDRESS,
        (11, b's', b't') => key::SERVER_PORT,
        (10, b'u', b'e') => key::URL_SCHEME,
        (10, b'r', b'm') => key::RPC_SYSTEM,
        (11, b'r', b'e') => key::RPC_SERVICE,
        (10, b'r', b'd') => key::RPC_METHOD,
        (20, b'r', b'e') => key::RPC_GRPC_STATUS,
        (14, b'd', b'e') => key::DB_SYSTEM,
        (17, b'd', b'e') => key::DB_OPERATION,
        (18, b'd', b'e') => key::DB_COLLECTION,
        (21, b'a', b'e') => key::INCOMPLETE,
        (24, b'n', b'n') => key::PROTOCOL_VERSION,
        _ => return None,
    };
    (KEYS[slot].as_bytes() == key).then_some(slot)
}

/// Tags of `Span.attributes` (9), `KeyValue.key` (1), `KeyValue.value`
/// (2), `AnyValue.string_value` (1), all length-delimited.
const KV_TAG: u8 = 9 << 3 | 2;
const KEY_TAG: u8 = 1 << 3 | 2;
const VALUE_TAG: u8 = 2 << 3 | 2;
const STRING_TAG: u8 = 1 << 3 | 2;
/// `AnyValue.int_value` (3), a varint.
const INT_TAG: u8 = 3 << 3;

/// An `AnyValue`'s string or integer; `Some(None)` for other types.
#[inline(always)]
fn any_value(bytes: &[u8]) -> Option<Option<Value<'_>>> {
    if let [STRING_TAG, len, s @ ..] = bytes
        && s.len() == usize::from(*len)
        && *len < 0x80
    {
        return Some(Some(Value::Str(s)));
    }
    if let [INT_TAG, varint @ ..] = bytes
        && let Ok((i, n)) = uvarint(varint)
        && n == varint.len()
    {
        return Some(Some(Value::Int(i as i64)));
    }
    let mut fields = Fields(bytes);
    let mut value = None;
    while let Some((field, wire)) = fields.next()? {
        match (field, wire) {
            (1, Wire::Len(s)) => value = Some(Value::Str(s)),
            (3, Wire::Varint(i)) => value = Some(Value::Int(i as i64)),
            _ => {}
        }
    }
    Some(value)
}

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32,
}

/// The fields of one protobuf message.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    /// The next field; `Some(None)` at the end, `None` when malformed.
    fn next(&mut self) -> Option<Option<(u64, Wire<'a>)>> {
        if self.0.is_empty() {
            return Some(None);
        }
        let (tag, n) = uvarint(self.0).ok()?;
        let rest = &self.0[n..];
        let (wire, used) = match tag & 7 {
            0 => {
                let (v, n) = uvarint(rest).ok()?;
                (Wire::Varint(v), n)
            }
            1 => {
                let b: [u8; 8] = rest.get(..8)?.try_into().ok()?;
                (Wire::Fixed64(u64::from_le_bytes(b)), 8)
            }
            2 => {
                let (len, n) = uvarint(rest).ok()?;
                let end = n.checked_add(usize::try_from(len).ok()?)?;
                (Wire::Len(rest.get(n..end)?), end)
            }
            5 => {
                rest.get(..4)?;
                (Wire::Fixed32, 4)
            }
            _ => return None,
        };
        self.0 = &rest[used..];
        Some(Some((tag >> 3, wire)))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, SpanKind, TraceId};

    use super::*;
    use crate::export::wire::SpanWriter;

    #[test]
    fn reads_what_the_span_writer_wrote() {
        let mut bytes = Vec::new();
        let mut w = SpanWriter::new(&mut bytes);
        w.name(&["GET /users/{id}"])
            .attr_str("http.request.method", "GET")
            .attr_str("url.path", "/users/42")
            .ids(TraceId::from(7), SpanId::from(9), None)
            .kind(&SpanKind::Server)
            .times(1_000, 4_500)
            .attr_int("http.response.status_code", 503)
            .attr_str("http.route", "/users/{id}")
            .status_error("");
        let view = SpanView::parse(&bytes).expect("parses");
        assert_eq!(view.kind, KIND_SERVER);
        assert_eq!(view.duration_ns(), 3_500);
        assert_eq!(view.get(key::METHOD), Some(Value::Str(b"GET")));
        assert_eq!(view.get(key::ROUTE), Some(Value::Str(b"/users/{id}")));
        assert_eq!(view.get(key::STATUS), Some(Value::Int(503)));
        assert_eq!(view.get(key::ERROR_TYPE), None);
        assert_eq!(
            SpanView::parse(&bytes[..bytes.len() - 1]),
            None,
            "cut short"
        );
        for (slot, key) in KEYS.iter().enumerate() {
            assert_eq!(slot_of(key.as_bytes()), Some(slot), "{key}");
        }
        for other in [
            &b"url.path"[..],
            b"client.address",
            b"client.port",
            b"http.rouTe",
            b"",
        ] {
            assert_eq!(slot_of(other), None);
        }
    }
}
