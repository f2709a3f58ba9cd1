//! Decoding ring-buffer records into typed values.

use agent_common::{
    event::{EventHeader, KIND_HTTP_SERVER_END, KIND_HTTP_SERVER_START, KIND_HTTP_TRACEPARENT},
    http::{HttpServerEnd, HttpServerStart, HttpTraceparent},
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
}

/// A decoded record.
#[derive(Clone, Copy, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "a record lives on the stack for one dispatch; boxing would allocate per event"
)]
pub enum Record<'a> {
    HttpServerStart(HttpServerStart),
    HttpServerEnd(HttpServerEnd),
    HttpTraceparent(HttpTraceparent),
    /// A record of another probe family, handed on as bytes.
    Other {
        header: EventHeader,
        bytes: &'a [u8],
    },
}

/// Copies a `T` out of the front of `bytes`.
fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, RecordError> {
    let expected = size_of::<T>();
    if bytes.len() < expected {
        return Err(RecordError::Short {
            kind,
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes; `T` is one of the
    // agent-common record types, for which every bit pattern is valid; the
    // read is unaligned-safe.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// Decodes one record.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, RecordError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(RecordError::NoHeader { len: bytes.len() });
    }
    let header: EventHeader = read(bytes, 0)?;
    match header.kind {
        KIND_HTTP_SERVER_START => Ok(Record::HttpServerStart(read(bytes, header.kind)?)),
        KIND_HTTP_SERVER_END => Ok(Record::HttpServerEnd(read(bytes, header.kind)?)),
        KIND_HTTP_TRACEPARENT => Ok(Record::HttpTraceparent(read(bytes, header.kind)?)),
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
