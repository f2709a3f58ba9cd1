//! Fuzzes the decoder of the system-call family's ring-buffer records
//! (`syscalls::records::decode`) and what they feed: the process and call
//! spans (`syscalls::spans`) and the `-c` table (`syscalls::summary`). The
//! input is a sequence of records, each behind a little-endian u16: its
//! length (low 13 bits) and how far off 8-byte alignment its bytes are
//! placed (high 3 bits).
//!
//! Decoding never panics and decodes a record only when it holds a whole
//! one, in place and aligned. Every span built is a valid OTLP `Span`
//! message; every process forked or exited gets at most one process span;
//! the table counts exactly the returned calls it was given.
#![no_main]

use agent::{
    clock::WallClock,
    export::EncodedSpan,
    ringbuf::RecordError,
    spans::Goroutines,
    syscalls::{
        Summary,
        records::{SyscallEvent, decode},
        spans::ProcessSpans,
    },
};
use agent_common::{
    event::EventHeader,
    syscalls::{
        FLAG_NO_RETURN, KIND_PROCESS_EXITED, KIND_PROCESS_FORKED, KIND_SYSCALL,
        KIND_SYSCALL_SOURCE, MAX_SYSCALLS, ProcessExited, ProcessForked, SyscallRecord,
        SyscallSourceRecord,
    },
};
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

fn layout(kind: u32) -> Option<(usize, usize)> {
    Some(match kind {
        KIND_SYSCALL => (size_of::<SyscallRecord>(), align_of::<SyscallRecord>()),
        KIND_SYSCALL_SOURCE => (
            size_of::<SyscallSourceRecord>(),
            align_of::<SyscallSourceRecord>(),
        ),
        KIND_PROCESS_FORKED => (size_of::<ProcessForked>(), align_of::<ProcessForked>()),
        KIND_PROCESS_EXITED => (size_of::<ProcessExited>(), align_of::<ProcessExited>()),
        _ => return None,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut spans = ProcessSpans::new(
        WallClock::with_offset_ns(0),
        std::time::Duration::ZERO,
        true,
    );
    spans.start_root(1, &["/bin/prog".to_owned(), "arg".to_owned()], 0);
    let mut goroutines = Goroutines::new(true);
    let mut summary = Summary::default();
    let mut returned = 0u64;
    let mut built = 0usize;
    let mut out = |span: EncodedSpan| {
        let decoded = Span::decode(&span.bytes[..]).expect("a valid Span message");
        assert_eq!(decoded.trace_id.len(), 16);
        assert_eq!(decoded.span_id.len(), 8);
        assert!(matches!(decoded.parent_span_id.len(), 0 | 8));
        assert!(!decoded.name.is_empty());
        built += 1;
    };
    let mut rest = data;
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
        match decode(rec) {
            Err(RecordError::NoHeader { len }) => {
                assert!(len < size_of::<EventHeader>());
            }
            Err(RecordError::Short {
                kind: k,
                len,
                expected,
            }) => {
                assert_eq!(Some(k), kind);
                assert_eq!(layout(k).map(|l| l.0), Some(expected));
                assert!(len < expected);
            }
            Err(RecordError::UnknownKind { kind: k }) => assert!(layout(k).is_none()),
            Err(RecordError::Unaligned { kind: k, align }) => {
                assert_eq!(layout(k).map(|l| l.1), Some(align));
                assert_ne!(rec.as_ptr() as usize % align, 0);
            }
            Ok(SyscallEvent::Syscall(s)) => {
                assert_eq!(kind, Some(KIND_SYSCALL));
                if s.flags & FLAG_NO_RETURN == 0 {
                    // Numbers past the kernel's bitmap are not counted.
                    returned += u64::from(s.nr < MAX_SYSCALLS);
                    summary.add(s.nr, s.ret, s.header.ktime_ns.saturating_sub(s.enter_ns));
                }
                spans.syscall(s, None, true, &mut goroutines, &mut out);
            }
            Ok(SyscallEvent::Source(s)) => {
                assert_eq!(kind, Some(KIND_SYSCALL_SOURCE));
                let s = &s.call;
                if s.flags & FLAG_NO_RETURN == 0 {
                    returned += u64::from(s.nr < MAX_SYSCALLS);
                    summary.add(s.nr, s.ret, s.header.ktime_ns.saturating_sub(s.enter_ns));
                }
                spans.syscall(s, None, true, &mut goroutines, &mut out);
            }
            Ok(SyscallEvent::Forked(f)) => spans.forked(f),
            Ok(SyscallEvent::Exited(e)) => spans.exited(e.header.tid, e.header.ktime_ns, &mut out),
        }
    }
    spans.finish(u64::MAX / 2, &mut out);
    let counted: u64 = summary.rows().iter().map(|(_, t)| t.calls).sum();
    assert_eq!(counted, returned);
    let _ = summary.table();
    assert!(built as u64 >= spans.syscall_spans());
});
