//! Flight-recorder dumps: records of the probes on
//! `runtime/trace.(*FlightRecorder).WriteTo` (and `golang.org/x/exp/trace`'s).
//!
//! One dump is a [`FlightStart`] (the entry site), then one [`FlightChunk`]
//! per piece of every `w.Write` call WriteTo makes (the call sites), then a
//! [`FlightEnd`] (a return site). All go through the dedicated `FLIGHT_RING`
//! ring buffer. Chunks carry a per-dump sequence number and the byte offset
//! of their data in the dump, so the agent detects any gap: a capture is
//! complete or reported incomplete.

use crate::event::EventHeader;

/// `EventHeader::kind` of a [`FlightStart`] record.
pub const KIND_FLIGHT_START: u32 = 4;
/// `EventHeader::kind` of a [`FlightChunk`] record.
pub const KIND_FLIGHT_CHUNK: u32 = 5;
/// `EventHeader::kind` of a [`FlightEnd`] record.
pub const KIND_FLIGHT_END: u32 = 6;

/// Payload sizes of the chunk record classes: a piece of a write goes into
/// the smallest class that holds it (ring-buffer records have a size fixed
/// at verification time).
pub const CHUNK_SMALL: usize = 256;
pub const CHUNK_MEDIUM: usize = 4096;
pub const CHUNK_LARGE: usize = 16384;
/// Chunks one `w.Write` call is split into at most: larger writes lose the
/// rest (counted in [`FlightEnd::lost_bytes`]). Go's runtime writes trace
/// batches of at most 64 KiB.
pub const MAX_CHUNKS_PER_WRITE: u32 = 64;

/// `EventHeader::site` of a flight probe: which `WriteTo` it belongs to.
pub const VARIANT_RUNTIME: u32 = 1;
/// `golang.org/x/exp/trace.(*FlightRecorder).WriteTo`.
pub const VARIANT_X_EXP: u32 = 2;

/// `FlightChunkHeader::flags`: reading the target's bytes failed; `len`
/// bytes of zeroes stand in for them.
pub const CHUNK_READ_FAILED: u32 = 1;

/// Per-target configuration (the `FLIGHT_CONFIG` array, by target slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlightConfig {
    /// Non-zero once filled.
    pub active: u32,
    pub _pad: u32,
    /// `runtime.g.goid`.
    pub g_goid: u64,
}

const _: () = assert!(core::mem::size_of::<FlightConfig>() == 16);

/// Key of the in-kernel state of a dump in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlightKey {
    /// Process id (tgid).
    pub pid: u32,
    pub _pad: u32,
    pub goid: u64,
}

const _: () = assert!(core::mem::size_of::<FlightKey>() == 16);

/// In-kernel state of a dump in progress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlightState {
    pub dump_id: u64,
    /// Bytes the `w.Write` calls were handed so far (offset of the next).
    pub offset: u64,
    /// Bytes lost (ring buffer full, or a write over the per-write limit).
    pub lost_bytes: u64,
    /// Next chunk sequence number.
    pub next_seq: u32,
    /// `w.Write` calls so far.
    pub writes: u32,
    /// Chunks not written (ring buffer full).
    pub lost_chunks: u32,
    /// Chunks whose bytes could not be read.
    pub failed_chunks: u32,
}

const _: () = assert!(core::mem::size_of::<FlightState>() == 40);

/// WriteTo was entered: `KIND_FLIGHT_START`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlightStart {
    pub header: EventHeader,
    /// Identifies the dump in the process (the `bpf_ktime_get_ns` of the
    /// entry).
    pub dump_id: u64,
    /// `*FlightRecorder`.
    pub recorder: u64,
    /// The `io.Writer` destination: itab and data pointer.
    pub writer_itab: u64,
    pub writer_data: u64,
    /// The writer's concrete type (`itab._type`); 0 if unreadable.
    pub writer_type: u64,
}

const _: () = assert!(core::mem::size_of::<FlightStart>() == 32 + 40);

/// The fixed part of a `KIND_FLIGHT_CHUNK` record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlightChunkHeader {
    pub header: EventHeader,
    pub dump_id: u64,
    /// Byte offset of `data[0]` in the dump.
    pub offset: u64,
    /// Chunk sequence number in the dump, from 0.
    pub seq: u32,
    /// Bytes of `data` in use.
    pub len: u32,
    /// Which `w.Write` call of the dump, from 0.
    pub write_index: u32,
    /// `CHUNK_*` flags.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<FlightChunkHeader>() == 32 + 32);

/// A chunk record with `N` bytes of payload (one of the `CHUNK_*` sizes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlightChunk<const N: usize> {
    pub head: FlightChunkHeader,
    /// `head.len` bytes of the dump; the rest is zero.
    pub data: [u8; N],
}

const _: () = assert!(core::mem::size_of::<FlightChunk<CHUNK_SMALL>>() == 64 + CHUNK_SMALL);
const _: () = assert!(core::mem::size_of::<FlightChunk<CHUNK_LARGE>>() == 64 + CHUNK_LARGE);

/// WriteTo returned: `KIND_FLIGHT_END`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlightEnd {
    pub header: EventHeader,
    pub dump_id: u64,
    /// WriteTo's `n`: bytes the writer accepted.
    pub returned: i64,
    /// WriteTo's `err` (itab, data); zero when nil.
    pub err_itab: u64,
    pub err_data: u64,
    /// Bytes handed to the `w.Write` calls.
    pub offered: u64,
    pub lost_bytes: u64,
    /// Chunks written (sequence numbers 0..chunks).
    pub chunks: u32,
    pub writes: u32,
    pub lost_chunks: u32,
    pub failed_chunks: u32,
}

const _: () = assert!(core::mem::size_of::<FlightEnd>() == 32 + 48 + 16);
