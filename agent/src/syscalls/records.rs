//! Decoding the system-call family's ring-buffer records, viewed in place.

use agent_common::syscalls::{
    KIND_PROCESS_EXITED, KIND_PROCESS_FORKED, KIND_SYSCALL, KIND_SYSCALL_SOURCE, ProcessExited,
    ProcessForked, SyscallRecord, SyscallSourceRecord,
};

use crate::ringbuf::record::{RecordError, kind, view};

/// The record kinds of this family.
pub const KINDS: &[u32] = &[
    KIND_SYSCALL,
    KIND_SYSCALL_SOURCE,
    KIND_PROCESS_FORKED,
    KIND_PROCESS_EXITED,
];

/// A decoded record.
#[derive(Clone, Copy, Debug)]
pub enum SyscallEvent<'a> {
    Syscall(&'a SyscallRecord),
    /// A call with the user stack it was made from (`--source`).
    Source(&'a SyscallSourceRecord),
    Forked(&'a ProcessForked),
    Exited(&'a ProcessExited),
}

/// Decodes one record of this family.
pub fn decode(bytes: &[u8]) -> Result<SyscallEvent<'_>, RecordError> {
    let kind = kind(bytes)?;
    match kind {
        KIND_SYSCALL => Ok(SyscallEvent::Syscall(view(bytes, kind)?)),
        KIND_SYSCALL_SOURCE => Ok(SyscallEvent::Source(view(bytes, kind)?)),
        KIND_PROCESS_FORKED => Ok(SyscallEvent::Forked(view(bytes, kind)?)),
        KIND_PROCESS_EXITED => Ok(SyscallEvent::Exited(view(bytes, kind)?)),
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
        // u64-aligned storage, as the ring buffer gives.
        let mut storage = [0u64; 9];
        // SAFETY: a u64 array is also a byte array of 8x the length.
        let bytes: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(storage.as_mut_ptr().cast(), 72) };
        bytes[0] = KIND_SYSCALL as u8;
        assert!(matches!(
            decode(&bytes[..40]),
            Err(RecordError::Short {
                kind: KIND_SYSCALL,
                len: 40,
                expected: 72
            })
        ));
        assert!(matches!(decode(bytes), Ok(SyscallEvent::Syscall(_))));
        bytes[0] = 1;
        assert!(matches!(
            decode(bytes),
            Err(RecordError::UnknownKind { kind: 1 })
        ));
    }
}
