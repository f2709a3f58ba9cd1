//! Decoding the connection set-up family's ring-buffer records, viewed in
//! place.

use agent_common::net::{
    KIND_DIAL_END, KIND_DIAL_START, KIND_DNS_END, KIND_DNS_START, KIND_TLS_END, KIND_TLS_START,
    NetEnd, NetStart,
};

use crate::ringbuf::record::{RecordError, kind, view};

/// The record kinds of this family.
pub const KINDS: &[u32] = &[
    KIND_TLS_START,
    KIND_TLS_END,
    KIND_DNS_START,
    KIND_DNS_END,
    KIND_DIAL_START,
    KIND_DIAL_END,
];

/// Which operation a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Tls,
    Dns,
    Dial,
}

/// A decoded record.
#[derive(Clone, Copy, Debug)]
pub enum NetRecord<'a> {
    Start(Op, &'a NetStart),
    End(Op, &'a NetEnd),
}

/// Decodes one record of this family.
pub fn decode(bytes: &[u8]) -> Result<NetRecord<'_>, RecordError> {
    let kind = kind(bytes)?;
    let start = |op| Ok(NetRecord::Start(op, view(bytes, kind)?));
    let end = |op| Ok(NetRecord::End(op, view(bytes, kind)?));
    match kind {
        KIND_TLS_START => start(Op::Tls),
        KIND_DNS_START => start(Op::Dns),
        KIND_DIAL_START => start(Op::Dial),
        KIND_TLS_END => end(Op::Tls),
        KIND_DNS_END => end(Op::Dns),
        KIND_DIAL_END => end(Op::Dial),
        kind => Err(RecordError::UnknownKind { kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_unknown_records_are_errors() {
        let mut words = vec![0u64; 6];
        // SAFETY: a u64 buffer is a valid byte buffer 8x as long.
        let bytes: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), 48) };
        bytes[0] = KIND_DNS_END as u8;
        assert!(matches!(
            decode(bytes),
            Err(RecordError::Short {
                kind: KIND_DNS_END,
                ..
            })
        ));
        bytes[0] = 1;
        assert_eq!(
            decode(bytes).unwrap_err(),
            RecordError::UnknownKind { kind: 1 }
        );
    }
}
