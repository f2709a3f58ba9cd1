//! Decoding the net/http server family's ring-buffer records, viewed in
//! place (a start record is 544 bytes; copying it out was a few percent of
//! the agent's time under load).

use agent_common::http::{
    HttpServerEnd, HttpServerStart, HttpTraceparent, HttpTracestate, KIND_HTTP_SERVER_END,
    KIND_HTTP_SERVER_START, KIND_HTTP_TRACEPARENT, KIND_HTTP_TRACESTATE,
};

use agent_common::http_route::{HttpRoute, KIND_HTTP_ROUTE};
use agent_common::propagate::{KIND_SERVER_IDS, SpanIds};

use crate::ringbuf::record::{RecordError, kind, view};

/// The record kinds of this family.
pub const KINDS: &[u32] = &[
    KIND_HTTP_SERVER_START,
    KIND_HTTP_SERVER_END,
    KIND_HTTP_TRACEPARENT,
    KIND_HTTP_TRACESTATE,
    KIND_HTTP_ROUTE,
    KIND_SERVER_IDS,
];

/// A decoded record.
#[derive(Clone, Copy, Debug)]
pub enum HttpRecord<'a> {
    Start(&'a HttpServerStart),
    End(&'a HttpServerEnd),
    Traceparent(&'a HttpTraceparent),
    Tracestate(&'a HttpTracestate),
    Route(&'a HttpRoute),
    /// The ids the kernel made for a span (`--propagate`).
    Ids(&'a SpanIds),
}

/// Decodes one record of this family.
pub fn decode(bytes: &[u8]) -> Result<HttpRecord<'_>, RecordError> {
    let kind = kind(bytes)?;
    match kind {
        KIND_HTTP_SERVER_START => Ok(HttpRecord::Start(view(bytes, kind)?)),
        KIND_HTTP_SERVER_END => Ok(HttpRecord::End(view(bytes, kind)?)),
        KIND_HTTP_TRACEPARENT => Ok(HttpRecord::Traceparent(view(bytes, kind)?)),
        KIND_HTTP_TRACESTATE => Ok(HttpRecord::Tracestate(view(bytes, kind)?)),
        KIND_SERVER_IDS => Ok(HttpRecord::Ids(view(bytes, kind)?)),
        KIND_HTTP_ROUTE => Ok(HttpRecord::Route(view(bytes, kind)?)),
        kind => Err(RecordError::UnknownKind { kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert_eq!(
            decode(&[0; 4]).unwrap_err(),
            RecordError::NoHeader { len: 4 }
        );
        let mut bytes = vec![0u8; 40];
        bytes[0] = KIND_HTTP_SERVER_START as u8;
        assert!(matches!(
            decode(&bytes),
            Err(RecordError::Short {
                kind: KIND_HTTP_SERVER_START,
                len: 40,
                ..
            })
        ));
        bytes[0] = 0;
        assert_eq!(
            decode(&bytes).unwrap_err(),
            RecordError::UnknownKind { kind: 0 }
        );
        bytes[0] = 9;
        assert_eq!(
            decode(&bytes).unwrap_err(),
            RecordError::UnknownKind { kind: 9 }
        );
    }

    #[test]
    fn misaligned_records_are_errors() {
        let mut bytes = vec![0u64; size_of::<HttpServerEnd>() / 8 + 1];
        let raw: &mut [u8] = bytemuck_bytes(&mut bytes);
        raw[1] = KIND_HTTP_SERVER_END as u8;
        assert!(matches!(
            decode(&raw[1..]),
            Err(RecordError::Unaligned {
                kind: KIND_HTTP_SERVER_END,
                align: 8
            })
        ));
    }

    /// The bytes of a `u64` buffer (8-byte aligned).
    fn bytemuck_bytes(words: &mut [u64]) -> &mut [u8] {
        // SAFETY: any u64 buffer is also a valid byte buffer of 8x the length.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) }
    }

    #[test]
    fn end_record_round_trips() {
        let mut words = vec![0u64; size_of::<HttpServerEnd>() / 8];
        let bytes = bytemuck_bytes(&mut words);
        bytes[0] = KIND_HTTP_SERVER_END as u8;
        bytes[16] = 42; // goid
        match decode(bytes).expect("decodes") {
            HttpRecord::End(end) => assert_eq!(end.header.goid, 42),
            other => panic!("unexpected {other:?}"),
        }
    }
}
