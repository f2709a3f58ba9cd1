//! Decoding ring-buffer records into typed values.

use agent_common::{
    event::{
        EventHeader, KIND_HTTP_SERVER_END, KIND_HTTP_SERVER_START, KIND_HTTP_TRACEPARENT,
        KIND_HTTP_TRACESTATE,
    },
    http::{HttpServerEnd, HttpServerStart, HttpTraceparent, HttpTracestate},
};

/// A record that cannot be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of {len} bytes is shorter than its header")]
    NoHeader { len: usize },
    #[error("record of kind {kind} has {len} bytes, expected at least {expected}")]
    Short {
        kind: u32,
        len: usize,
        expected: usize,
    },
    #[error("unknown record kind {kind}")]
    UnknownKind { kind: u32 },
    /// The ring buffer aligns every record to 8 bytes; bytes from elsewhere
    /// might not be.
    #[error("record of kind {kind} is not aligned to {align} bytes")]
    Unaligned { kind: u32, align: usize },
}

/// A decoded record: the ring buffer's bytes, viewed in place (a start
/// record is 544 bytes; copying it out was a few percent of the agent's
/// time under load).
#[derive(Clone, Copy, Debug)]
pub enum Record<'a> {
    HttpServerStart(&'a HttpServerStart),
    HttpServerEnd(&'a HttpServerEnd),
    HttpTraceparent(&'a HttpTraceparent),
    HttpTracestate(&'a HttpTracestate),
    /// A record of another probe family, handed on as bytes.
    Other {
        header: EventHeader,
        bytes: &'a [u8],
    },
}

/// Copies a `T` out of the front of `bytes`.
fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, RecordError> {
    check_len::<T>(bytes, kind)?;
    // SAFETY: `bytes` holds at least size_of::<T>() bytes; `T` is one of the
    // agent-common record types, for which every bit pattern is valid; the
    // read is unaligned-safe.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

fn check_len<T>(bytes: &[u8], kind: u32) -> Result<(), RecordError> {
    let expected = size_of::<T>();
    if bytes.len() < expected {
        return Err(RecordError::Short {
            kind,
            len: bytes.len(),
            expected,
        });
    }
    Ok(())
}

/// The `T` at the front of `bytes`, in place.
fn view<T>(bytes: &[u8], kind: u32) -> Result<&T, RecordError> {
    check_len::<T>(bytes, kind)?;
    let ptr = bytes.as_ptr();
    if !ptr.cast::<T>().is_aligned() {
        return Err(RecordError::Unaligned {
            kind,
            align: align_of::<T>(),
        });
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes at an address
    // aligned for `T`, borrowed for the returned lifetime; `T` is one of the
    // agent-common record types (`repr(C)` integers and byte arrays), for
    // which every bit pattern is valid.
    Ok(unsafe { &*ptr.cast::<T>() })
}

/// Decodes one record.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, RecordError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(RecordError::NoHeader { len: bytes.len() });
    }
    let header: EventHeader = read(bytes, 0)?;
    match header.kind {
        KIND_HTTP_SERVER_START => Ok(Record::HttpServerStart(view(bytes, header.kind)?)),
        KIND_HTTP_SERVER_END => Ok(Record::HttpServerEnd(view(bytes, header.kind)?)),
        KIND_HTTP_TRACEPARENT => Ok(Record::HttpTraceparent(view(bytes, header.kind)?)),
        KIND_HTTP_TRACESTATE => Ok(Record::HttpTracestate(view(bytes, header.kind)?)),
        0 => Err(RecordError::UnknownKind { kind: 0 }),
        _ => Ok(Record::Other { header, bytes }),
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
        assert!(matches!(decode(&bytes), Ok(Record::Other { .. })));
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
        let mut bytes = vec![0u8; size_of::<HttpServerEnd>()];
        bytes[0] = KIND_HTTP_SERVER_END as u8;
        bytes[16] = 42; // goid
        match decode(&bytes).expect("decodes") {
            Record::HttpServerEnd(end) => assert_eq!(end.header.goid, 42),
            other => panic!("unexpected {other:?}"),
        }
    }
}
