//! Fuzzes the decoder of the HTTP ring-buffer records
//! (`http_server::records::decode`) and the span building they feed
//! (`http_server::spans`). The input is
//! a sequence of records, each behind a little-endian u16: its length
//! (low 13 bits) and how far off 8-byte alignment its bytes are placed
//! (high 3 bits: the ring buffer aligns records, other sources might not).
//!
//! Decoding never panics and its length checks hold: a record decodes as
//! the type its kind names only when it holds a whole one, in place and
//! aligned; an error says truly what is wrong. Every span built from the
//! decoded records is a valid OTLP `Span` message (UTF-8 strings, 16-byte
//! trace and 8-byte span ids), one per request seen.
#![no_main]

use agent::{
    clock::WallClock,
    export::EncodedSpan,
    http_server::{
        HttpSpanBuilder,
        records::{HttpRecord, decode},
    },
    ringbuf::RecordError,
    spans::Goroutines,
};
use agent_common::{
    event::EventHeader,
    http::{
        HttpServerEnd, HttpServerStart, HttpTraceparent, HttpTracestate, KIND_HTTP_SERVER_END,
        KIND_HTTP_SERVER_START, KIND_HTTP_TRACEPARENT, KIND_HTTP_TRACESTATE,
    },
    http_route::{HttpRoute, KIND_HTTP_ROUTE},
    propagate::{KIND_SERVER_IDS, SpanIds},
};
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

/// Size and alignment of the record type `kind` names, if an HTTP one.
fn layout(kind: u32) -> Option<(usize, usize)> {
    Some(match kind {
        KIND_HTTP_SERVER_START => (size_of::<HttpServerStart>(), align_of::<HttpServerStart>()),
        KIND_HTTP_SERVER_END => (size_of::<HttpServerEnd>(), align_of::<HttpServerEnd>()),
        KIND_HTTP_TRACEPARENT => (size_of::<HttpTraceparent>(), align_of::<HttpTraceparent>()),
        KIND_HTTP_TRACESTATE => (size_of::<HttpTracestate>(), align_of::<HttpTracestate>()),
        KIND_HTTP_ROUTE => (size_of::<HttpRoute>(), align_of::<HttpRoute>()),
        KIND_SERVER_IDS => (size_of::<SpanIds>(), align_of::<SpanIds>()),
        _ => return None,
    })
}

fn check_span(span: &EncodedSpan) {
    let decoded = Span::decode(&span.bytes[..]).expect("a valid Span message");
    assert_eq!(decoded.trace_id.len(), 16);
    assert_eq!(decoded.span_id.len(), 8);
    assert!(matches!(decoded.parent_span_id.len(), 0 | 8));
    assert!(!decoded.name.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let mut spans = HttpSpanBuilder::new(WallClock::with_offset_ns(0), 64, 1_000_000_000);
    // On, so that the goroutine bookkeeping is fuzzed too.
    let mut goroutines = Goroutines::new(true);
    let mut goroutine_keys = Vec::new();
    let mut built = 0usize;
    let mut starts = 0usize;
    let mut out = |span: EncodedSpan| {
        check_span(&span);
        built += 1;
    };
    let mut rest = data;
    // 8-byte aligned storage for one record, placed at 0..7 bytes past it.
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
        let decoded = decode(rec);
        match decoded {
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
                assert_eq!(len, rec.len());
                assert_eq!(layout(k).map(|l| l.0), Some(expected));
                assert!(len < expected);
            }
            Err(RecordError::UnknownKind { kind: k }) => {
                // Zeroed memory, or another family's kind.
                assert_eq!(Some(k), kind);
                assert!(layout(k).is_none());
            }
            Err(RecordError::Unaligned { kind: k, align }) => {
                assert_eq!(Some(k), kind);
                let (size, want) = layout(k).expect("an HTTP kind");
                assert_eq!(align, want);
                assert!(rec.len() >= size);
                assert_ne!(rec.as_ptr() as usize % align, 0);
            }
            Ok(ref r) => {
                let (at, k) = match r {
                    HttpRecord::Start(s) => (std::ptr::from_ref(*s).cast::<u8>(), s.header.kind),
                    HttpRecord::End(e) => (std::ptr::from_ref(*e).cast::<u8>(), e.header.kind),
                    HttpRecord::Traceparent(t) => {
                        (std::ptr::from_ref(*t).cast::<u8>(), t.header.kind)
                    }
                    HttpRecord::Tracestate(t) => {
                        (std::ptr::from_ref(*t).cast::<u8>(), t.header.kind)
                    }
                    HttpRecord::Route(r) => (std::ptr::from_ref(*r).cast::<u8>(), r.header.kind),
                    HttpRecord::Ids(i) => (std::ptr::from_ref(*i).cast::<u8>(), i.header.kind),
                };
                assert_eq!(Some(k), kind);
                let (size, align) = layout(k).expect("an HTTP kind");
                assert!(rec.len() >= size, "{} bytes decoded as kind {k}", rec.len());
                assert_eq!(at, rec.as_ptr(), "decoded in place");
                assert_eq!(at as usize % align, 0);
            }
        }
        match decoded {
            Ok(HttpRecord::Start(s)) => {
                starts += 1;
                goroutine_keys.push((s.header.target, s.header.goid));
                spans.on_start(&mut goroutines, s, &mut out);
            }
            Ok(HttpRecord::End(e)) => spans.on_end(&mut goroutines, e, &mut out),
            Ok(HttpRecord::Traceparent(t)) => {
                spans.on_traceparent(&mut goroutines, t);
            }
            Ok(HttpRecord::Tracestate(t)) => spans.on_tracestate(&mut goroutines, t),
            Ok(HttpRecord::Route(r)) => spans.on_route(r),
            Ok(HttpRecord::Ids(i)) => spans.on_ids(&mut goroutines, i),
            Err(_) => {}
        }
    }
    spans.finish(&mut goroutines, u64::MAX, &mut out);
    // Every span ended, so none is left open on any goroutine.
    for key in goroutine_keys {
        assert_eq!(goroutines.parent(key, 0), None, "{key:?} still open");
    }
    assert!(built <= starts, "{built} spans from {starts} requests");
});
