//! Decoding the database/sql family's ring-buffer records, viewed in place.

use agent_common::sql::{KIND_SQL_END, KIND_SQL_START, SqlEnd, SqlStart};

use crate::ringbuf::record::{RecordError, kind, view};

/// The record kinds of this family.
pub const KINDS: &[u32] = &[KIND_SQL_START, KIND_SQL_END];

/// A decoded record.
#[derive(Clone, Copy, Debug)]
pub enum SqlRecord<'a> {
    Start(&'a SqlStart),
    End(&'a SqlEnd),
}

/// Decodes one record of this family.
pub fn decode(bytes: &[u8]) -> Result<SqlRecord<'_>, RecordError> {
    let kind = kind(bytes)?;
    match kind {
        KIND_SQL_START => Ok(SqlRecord::Start(view(bytes, kind)?)),
        KIND_SQL_END => Ok(SqlRecord::End(view(bytes, kind)?)),
        kind => Err(RecordError::UnknownKind { kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of a `u64` buffer (8-byte aligned).
    fn bytes(words: &mut [u64]) -> &mut [u8] {
        // SAFETY: any u64 buffer is also a valid byte buffer of 8x the length.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) }
    }

    #[test]
    fn records_decode_and_short_ones_are_errors() {
        let mut words = vec![0u64; size_of::<SqlStart>() / 8];
        let raw = bytes(&mut words);
        raw[0] = KIND_SQL_START as u8;
        raw[16] = 7; // goid
        match decode(raw).expect("decodes") {
            SqlRecord::Start(start) => assert_eq!(start.header.goid, 7),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            decode(&raw[..100]),
            Err(RecordError::Short {
                kind: KIND_SQL_START,
                ..
            })
        ));
        raw[0] = KIND_SQL_END as u8;
        assert!(matches!(decode(raw), Ok(SqlRecord::End(_))));
        raw[0] = 99;
        assert_eq!(
            decode(raw).unwrap_err(),
            RecordError::UnknownKind { kind: 99 }
        );
        assert_eq!(
            decode(&[0; 4]).unwrap_err(),
            RecordError::NoHeader { len: 4 }
        );
    }
}
