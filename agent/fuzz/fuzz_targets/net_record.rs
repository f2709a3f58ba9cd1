//! Fuzzes the decoder of the connection set-up family's ring-buffer
//! records (`net::records::decode`) and the span building they feed
//! (`net::spans`). The input is a sequence of records, each behind a
//! little-endian u16: its length (low 13 bits) and how far off 8-byte
//! alignment its bytes are placed (high 3 bits).
//!
//! Decoding never panics and decodes a record only when it holds a whole
//! one, in place and aligned; an error says truly what is wrong. Every
//! span built is a valid OTLP `Span` message, and no more spans are built
//! than operations started; after `finish` no operation is left on a
//! goroutine.
#![no_main]

use agent::{
    clock::WallClock,
    export::EncodedSpan,
    http_client::ErrorTypes,
    net::{
        NetSpanBuilder,
        records::{NetRecord, decode},
    },
    ringbuf::RecordError,
    spans::Goroutines,
};
use agent_common::{
    event::EventHeader,
    net::{
        KIND_DIAL_END, KIND_DIAL_START, KIND_DNS_END, KIND_DNS_START, KIND_TLS_END,
        KIND_TLS_START, NetEnd, NetStart,
    },
};
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

/// Size and alignment of the record type `kind` names, if one of this
/// family's.
fn layout(kind: u32) -> Option<(usize, usize)> {
    Some(match kind {
        KIND_TLS_START | KIND_DNS_START | KIND_DIAL_START => {
            (size_of::<NetStart>(), align_of::<NetStart>())
        }
        KIND_TLS_END | KIND_DNS_END | KIND_DIAL_END => (size_of::<NetEnd>(), align_of::<NetEnd>()),
        _ => return None,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut spans = NetSpanBuilder::new(
        WallClock::with_offset_ns(0),
        64,
        1_000_000_000,
        ErrorTypes::default(),
    );
    let mut goroutines = Goroutines::new(true);
    let mut keys = Vec::new();
    let mut built = 0usize;
    let mut starts = 0usize;
    let mut out = |span: EncodedSpan| {
        let decoded = Span::decode(&span.bytes[..]).expect("a valid Span message");
        assert_eq!(decoded.trace_id.len(), 16);
        assert_eq!(decoded.span_id.len(), 8);
        assert!(matches!(decoded.parent_span_id.len(), 0 | 8));
        assert!(!decoded.name.is_empty());
        built += 1;
    };
    let mut rest = data;
    let mut buf = vec![0u64; 8192 / 8 + 1];
    while let Some((head, tail)) = rest.split_first_chunk::<2>() {
        let word = u16::from_le_bytes(*head);
        let len = usize::from(word & 0x1fff).min(tail.len());
        let shift = usize::from(word >> 13);
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        // SAFETY: a u64 buffer is also a byte buffer of 8x the length.
        let raw: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), buf.len() * 8) };
        let rec = &mut raw[shift..shift + len];
        rec.copy_from_slice(bytes);
        let rec = &*rec;
        let kind = rec
            .get(..4)
            .map(|k| u32::from_le_bytes(k.try_into().unwrap()));
        match decode(rec) {
            Err(RecordError::NoHeader { len }) => {
                assert_eq!(len, rec.len());
                assert!(len < size_of::<EventHeader>());
            }
            Err(RecordError::Short {
                kind: k,
                len,
                expected,
            }) => {
                assert_eq!(Some(k), kind);
                assert_eq!(layout(k).map(|l| l.0), Some(expected));
                assert!(len < expected);
            }
            Err(RecordError::UnknownKind { kind: k }) => {
                assert_eq!(Some(k), kind);
                assert!(layout(k).is_none());
            }
            Err(RecordError::Unaligned { kind: k, align }) => {
                assert_eq!(layout(k).map(|l| l.1), Some(align));
                assert_ne!(rec.as_ptr() as usize % align, 0);
            }
            Ok(NetRecord::Start(op, s)) => {
                assert_eq!(Some(s.header.kind), kind);
                assert_eq!(std::ptr::from_ref(s).cast::<u8>(), rec.as_ptr());
                starts += 1;
                keys.push((s.header.target, s.header.goid));
                spans.on_start(&mut goroutines, op, s, &mut out);
            }
            Ok(NetRecord::End(op, e)) => {
                assert_eq!(Some(e.header.kind), kind);
                assert_eq!(std::ptr::from_ref(e).cast::<u8>(), rec.as_ptr());
                spans.on_end(&mut goroutines, op, e, &mut out);
            }
        }
    }
    spans.finish(&mut goroutines, u64::MAX / 2, &mut out);
    assert!(built <= starts, "{built} spans from {starts} starts");
    for key in keys {
        assert_eq!(goroutines.parent(key, 0), None, "left on {key:?}");
    }
});
