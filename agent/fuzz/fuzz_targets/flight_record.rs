//! Fuzzes the flight-recorder capture (`flight::FlightCapture::on_bytes`),
//! which reassembles `runtime/trace` flight-recorder dumps from the
//! `FLIGHT_RING` records. The input is a sequence of records, each behind
//! a little-endian u16 length.
//!
//! Whatever the records, capture never panics and stays within its limits
//! (dumps open at once, bytes kept per dump); it counts as bad exactly the
//! records too short for what their kind says they hold; a dump completes
//! only on an end record, and one reported complete has no problem and
//! holds exactly the bytes WriteTo returned. Dumps whose end never came are
//! reported incomplete.
#![no_main]

use agent::flight::{CaptureOptions, CompletedDump, FlightCapture};
use agent_common::{
    event::EventHeader,
    flight::{
        FlightChunkHeader, FlightEnd, FlightStart, KIND_FLIGHT_CHUNK, KIND_FLIGHT_END,
        KIND_FLIGHT_START,
    },
};
use libfuzzer_sys::fuzz_target;

const OPTIONS: CaptureOptions = CaptureOptions {
    max_dump_bytes: 1 << 16,
    max_open_dumps: 4,
    idle_timeout_ns: 1_000_000,
};

fn u32_at(rec: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(rec[at..at + 4].try_into().unwrap())
}

/// Whether the capture must count `rec` as bad: shorter than its header,
/// or than the record its kind names (with a chunk's data).
fn is_bad(rec: &[u8]) -> bool {
    if rec.len() < size_of::<EventHeader>() {
        return true;
    }
    match u32_at(rec, 0) {
        KIND_FLIGHT_START => rec.len() < size_of::<FlightStart>(),
        KIND_FLIGHT_CHUNK => {
            let head = size_of::<FlightChunkHeader>();
            let len_at = std::mem::offset_of!(FlightChunkHeader, len);
            rec.len() < head || rec.len() - head < u32_at(rec, len_at) as usize
        }
        KIND_FLIGHT_END => rec.len() < size_of::<FlightEnd>(),
        _ => false,
    }
}

fn check_dump(dump: &CompletedDump) {
    assert!(dump.bytes.len() <= OPTIONS.max_dump_bytes);
    assert_eq!(dump.complete, dump.problems.is_empty());
    if dump.complete {
        assert_eq!(dump.returned, dump.bytes.len() as i64);
        assert!(dump.bytes.len() as u64 <= dump.offered);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut capture = FlightCapture::new(OPTIONS);
    let mut bad = 0u64;
    let mut rest = data;
    while let Some((head, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_le_bytes(*head)).min(tail.len());
        let (rec, tail) = tail.split_at(len);
        rest = tail;
        let is_end = !is_bad(rec) && u32_at(rec, 0) == KIND_FLIGHT_END;
        bad += u64::from(is_bad(rec));
        let done = capture.on_bytes(rec);
        assert_eq!(done.is_some(), is_end, "a dump completes on an end record");
        if let Some(dump) = &done {
            check_dump(dump);
        }
        assert_eq!(capture.bad_records, bad);
        assert!(capture.open_dumps() <= OPTIONS.max_open_dumps);
    }
    let open = capture.open_dumps();
    let expired = capture.expire(u64::MAX);
    assert!(expired.len() <= open);
    for dump in &expired {
        check_dump(dump);
        assert!(!dump.complete, "a dump without its end reported complete");
        assert_eq!(dump.returned, -1);
    }
});
