//! Decoding the grpc family's ring-buffer records, viewed in place.

use agent_common::{
    grpc::{
        GrpcClientEnd, GrpcClientStart, GrpcServerEnd, GrpcServerStart, GrpcServerStatus,
        GrpcTraceparent, GrpcTracestate, KIND_GRPC_CLIENT_END, KIND_GRPC_CLIENT_START,
        KIND_GRPC_SERVER_END, KIND_GRPC_SERVER_START, KIND_GRPC_SERVER_STATUS,
        KIND_GRPC_TRACEPARENT, KIND_GRPC_TRACESTATE,
    },
    propagate::{KIND_GRPC_CLIENT_IDS, KIND_GRPC_SERVER_IDS, SpanIds},
};

use crate::ringbuf::record::{RecordError, kind, view};

/// The record kinds of this family.
pub const KINDS: &[u32] = &[
    KIND_GRPC_SERVER_START,
    KIND_GRPC_SERVER_END,
    KIND_GRPC_SERVER_STATUS,
    KIND_GRPC_CLIENT_START,
    KIND_GRPC_CLIENT_END,
    KIND_GRPC_TRACEPARENT,
    KIND_GRPC_TRACESTATE,
    KIND_GRPC_SERVER_IDS,
    KIND_GRPC_CLIENT_IDS,
];

/// A decoded record.
#[derive(Clone, Copy, Debug)]
pub enum GrpcRecord<'a> {
    ServerStart(&'a GrpcServerStart),
    ServerEnd(&'a GrpcServerEnd),
    ServerStatus(&'a GrpcServerStatus),
    ClientStart(&'a GrpcClientStart),
    ClientEnd(&'a GrpcClientEnd),
    Traceparent(&'a GrpcTraceparent),
    /// The `tracestate` beside a call's `traceparent`, right after it.
    Tracestate(&'a GrpcTracestate),
    /// The ids the kernel made for a server span (`--propagate`).
    ServerIds(&'a SpanIds),
    /// The ids the kernel made for a client span, the ones it sends.
    ClientIds(&'a SpanIds),
}

/// Decodes one record of this family.
pub fn decode(bytes: &[u8]) -> Result<GrpcRecord<'_>, RecordError> {
    let kind = kind(bytes)?;
    match kind {
        KIND_GRPC_SERVER_START => Ok(GrpcRecord::ServerStart(view(bytes, kind)?)),
        KIND_GRPC_SERVER_END => Ok(GrpcRecord::ServerEnd(view(bytes, kind)?)),
        KIND_GRPC_SERVER_STATUS => Ok(GrpcRecord::ServerStatus(view(bytes, kind)?)),
        KIND_GRPC_CLIENT_START => Ok(GrpcRecord::ClientStart(view(bytes, kind)?)),
        KIND_GRPC_CLIENT_END => Ok(GrpcRecord::ClientEnd(view(bytes, kind)?)),
        KIND_GRPC_TRACEPARENT => Ok(GrpcRecord::Traceparent(view(bytes, kind)?)),
        KIND_GRPC_TRACESTATE => Ok(GrpcRecord::Tracestate(view(bytes, kind)?)),
        KIND_GRPC_SERVER_IDS => Ok(GrpcRecord::ServerIds(view(bytes, kind)?)),
        KIND_GRPC_CLIENT_IDS => Ok(GrpcRecord::ClientIds(view(bytes, kind)?)),
        kind => Err(RecordError::UnknownKind { kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_unknown_records_are_errors() {
        let mut words = vec![0u64; 8];
        // SAFETY: any u64 buffer is a valid byte buffer of 8x the length.
        let bytes: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), 64) };
        bytes[0] = KIND_GRPC_SERVER_START as u8;
        assert!(matches!(
            decode(&bytes[..40]),
            Err(RecordError::Short { .. })
        ));
        bytes[0] = KIND_GRPC_SERVER_END as u8;
        assert!(matches!(decode(bytes), Ok(GrpcRecord::ServerEnd(_))));
        bytes[0] = 9;
        assert_eq!(
            decode(bytes).unwrap_err(),
            RecordError::UnknownKind { kind: 9 }
        );
    }
}
