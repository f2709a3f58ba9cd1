//! Decoding the net/http client family's ring-buffer records, viewed in
//! place.

use agent_common::{
    http_client::{HttpClientEnd, HttpClientStart, KIND_HTTP_CLIENT_END, KIND_HTTP_CLIENT_START},
    propagate::{KIND_CLIENT_IDS, SpanIds},
};

use crate::ringbuf::record::{RecordError, kind, view};

/// The record kinds of this family.
pub const KINDS: &[u32] = &[
    KIND_HTTP_CLIENT_START,
    KIND_HTTP_CLIENT_END,
    KIND_CLIENT_IDS,
];

/// A decoded record.
#[derive(Clone, Copy, Debug)]
pub enum ClientRecord<'a> {
    Start(&'a HttpClientStart),
    End(&'a HttpClientEnd),
    /// The ids the kernel made for a call whose context it sends
    /// (`--propagate`).
    Ids(&'a SpanIds),
}

/// Decodes one record of this family.
pub fn decode(bytes: &[u8]) -> Result<ClientRecord<'_>, RecordError> {
    let kind = kind(bytes)?;
    match kind {
        KIND_HTTP_CLIENT_START => Ok(ClientRecord::Start(view(bytes, kind)?)),
        KIND_HTTP_CLIENT_END => Ok(ClientRecord::End(view(bytes, kind)?)),
        KIND_CLIENT_IDS => Ok(ClientRecord::Ids(view(bytes, kind)?)),
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
        bytes[0] = KIND_HTTP_CLIENT_START as u8;
        assert!(matches!(
            decode(bytes),
            Err(RecordError::Short {
                kind: KIND_HTTP_CLIENT_START,
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
