//! The parts of a ring-buffer record every family shares: the header that
//! says whose it is, and viewing a family's fixed-size record in place.
//!
//! The session reads the header's kind and hands the bytes to the family
//! that declared it; the family decodes the rest (see
//! `crate::http_server::records`, `crate::usdt::decode_usdt_record`).

use std::mem::offset_of;

use agent_common::event::EventHeader;

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

/// Copies a `T` out of the front of `bytes` (any alignment).
pub fn read<T: aya::Pod>(bytes: &[u8], kind: u32) -> Result<T, RecordError> {
    check_len::<T>(bytes, kind)?;
    // SAFETY: `bytes` holds at least size_of::<T>() bytes; `T` is `Pod`, so
    // every bit pattern is valid; the read is unaligned-safe.
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
pub fn view<T: aya::Pod>(bytes: &[u8], kind: u32) -> Result<&T, RecordError> {
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
    // `Pod` type (`repr(C)` integers and byte arrays), for which every bit
    // pattern is valid.
    Ok(unsafe { &*ptr.cast::<T>() })
}

/// The kind of a record (its first field), checking that it holds a whole
/// header: what dispatching needs, without copying the header out. A kind
/// of 0 is zeroed memory, not a record.
#[inline]
pub fn kind(bytes: &[u8]) -> Result<u32, RecordError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(RecordError::NoHeader { len: bytes.len() });
    }
    match bytes.first_chunk::<4>().map(|k| u32::from_le_bytes(*k)) {
        Some(0) | None => Err(RecordError::UnknownKind { kind: 0 }),
        Some(kind) => Ok(kind),
    }
}

/// The kind and the target slot in a record's header (checked as
/// [`kind`]): where an object several targets share routes it.
pub fn kind_and_target(bytes: &[u8]) -> Result<(u32, u32), RecordError> {
    let kind = kind(bytes)?;
    let target = bytes
        .get(offset_of!(EventHeader, target)..)
        .and_then(|rest| rest.first_chunk::<4>())
        .map_or(0, |t| u32::from_le_bytes(*t));
    Ok((kind, target))
}

/// The header at the front of a record. A kind of 0 is zeroed memory, not
/// a record.
pub fn header(bytes: &[u8]) -> Result<EventHeader, RecordError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(RecordError::NoHeader { len: bytes.len() });
    }
    let header: EventHeader = read(bytes, 0)?;
    if header.kind == 0 {
        return Err(RecordError::UnknownKind { kind: 0 });
    }
    Ok(header)
}
