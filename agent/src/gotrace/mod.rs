//! The Go execution-trace decoder (Go 1.22+ wire format) and its mapping to
//! OpenTelemetry spans.
//!
//! - [`Reader`] streams a trace generation by generation and yields the
//!   same events, in the same order, with the same timestamps, as Go's own
//!   reader (`internal/trace`, `golang.org/x/exp/trace`): its ordering state
//!   machine is a port of Go's `order.go`, and the conformance tests compare
//!   the two event streams. [`Reader::new`] takes any `io::Read` and holds one
//!   generation at a time; [`Reader::from_file`] reads each batch of events
//!   from the file when it gets to it, and holds only the generation's string
//!   and stack tables.
//! - [`dump_events`] / [`dump_reader`] print the event stream in a stable
//!   text form, one event per line (`agent decode --dump events`).
//! - [`trace_to_spans`] / [`reader_to_spans`] turn tasks, regions, logs and
//!   runtime ranges into spans, each written as OTLP bytes and handed over
//!   256 at a time ([`SpanBatch`]; see the `spans` module docs for the
//!   mapping); with
//!   [`SpanOptions::join`], tasks join the agent's own spans of the process
//!   ([`join`]).
//! - [`watch`] yields new `*.trace` files in a directory once complete.
//! - [`text`] converts Go's text form of traces (its test data) to bytes.
//!
//! Errors carry the byte offset where the input went wrong; corrupt input
//! is an error, never a panic, and no allocation is sized by untrusted
//! numbers beyond the format's own limits (64 KiB batches, 1 KiB strings,
//! 128 frames). Pre-1.22 traces (the v1 format) are refused with
//! [`DecodeError::PreGo122`]. Go 1.27's format is not known to this decoder
//! (Go's own reader at 1.26 refuses it too): it is refused with
//! [`DecodeError::UnsupportedVersion`].
//!
//! One deliberate difference from Go's reader: Go treats a bare `io.EOF`
//! from a varint cut off at the very end of a batch as the clean end of the
//! trace; this decoder reports it as an error.

mod dump;
mod event;
mod generation;
pub mod join;
mod order;
mod pdqsort;
mod reader;
mod source;
mod spans;
pub mod spec;
pub mod text;
pub mod watch;

use std::hash::{BuildHasherDefault, Hasher};

pub use dump::{DumpSummary, dump_events, dump_reader, write_event};
pub use event::{
    ClockSnapshot, Event, EventKind, Experimental, Label, Log, Metric, Range, Region, Resource,
    Stack, StackFrame, StateTransition, Sync, Task, go_state_name, proc_state_name,
};
pub use generation::ExperimentalBatch;
pub use join::{JoinError, JoinIndex, LiveSpans, RecentSpans};
pub use reader::{ReadStats, Reader};
pub use spans::{
    ENDED_TASKS_KEPT, HELD_EVENTS_MAX, HELD_TASKS_MAX, MAX_EVENTS_PER_SPAN, PERIOD_MIN_DEFAULT,
    SPAN_BATCH, SpanBatch, SpanOptions, SpanSummary, TraceSpan, reader_to_spans, scope,
    trace_to_spans,
};

/// No thread (Go's `NoThread`).
pub const NO_THREAD: i64 = -1;
/// No proc (Go's `NoProc`).
pub const NO_PROC: i64 = -1;
/// No goroutine (Go's `NoGoroutine`).
pub const NO_GOROUTINE: i64 = -1;
/// No task (Go's `NoTask`).
pub const NO_TASK: u64 = u64::MAX;
/// The background task (Go's `BackgroundTask`).
pub const BACKGROUND_TASK: u64 = 0;

/// Goroutine states as the reader reports them (Go's `trace.GoState`).
pub mod goroutine_state {
    pub const UNDETERMINED: u8 = 0;
    pub const NOT_EXIST: u8 = 1;
    pub const RUNNABLE: u8 = 2;
    pub const RUNNING: u8 = 3;
    pub const WAITING: u8 = 4;
    pub const SYSCALL: u8 = 5;

    /// Go's `tracev2GoStatus2GoState`.
    pub(crate) fn from_status(s: u64) -> u8 {
        use super::spec::gostatus as g;
        match s {
            g::RUNNABLE => RUNNABLE,
            g::RUNNING => RUNNING,
            g::WAITING => WAITING,
            g::SYSCALL => SYSCALL,
            _ => UNDETERMINED,
        }
    }
}

/// Proc states as the reader reports them (Go's `trace.ProcState`).
pub mod proc_state {
    pub const UNDETERMINED: u8 = 0;
    pub const NOT_EXIST: u8 = 1;
    pub const RUNNING: u8 = 2;
    pub const IDLE: u8 = 3;

    /// Go's `tracev2ProcStatus2ProcState`.
    pub(crate) fn from_status(s: u64) -> u8 {
        use super::spec::procstatus as p;
        match s {
            p::RUNNING | p::SYSCALL => RUNNING,
            p::IDLE | p::SYSCALL_ABANDONED => IDLE,
            _ => UNDETERMINED,
        }
    }
}

/// Why a trace could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The input does not start with a Go execution trace header.
    #[error("bad file format: not a Go execution trace")]
    NotATrace,
    /// A Go 1.11–1.21 trace: the v1 format, which this decoder does not read.
    #[error(
        "Go 1.{version} execution traces use the pre-1.22 format, which is not supported; record the trace with Go 1.22 or newer"
    )]
    PreGo122 { version: u32 },
    /// A version this decoder does not know (including Go 1.27+).
    #[error("unknown or unsupported trace version go 1.{version}")]
    UnsupportedVersion { version: u32 },
    /// Reading the input failed.
    #[error("reading the trace failed at byte offset {offset}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    /// The trace is malformed or inconsistent.
    #[error("invalid trace at byte offset {offset}: {reason}")]
    Invalid { offset: u64, reason: String },
    /// A previous call already failed; the reader does not go on.
    #[error("trace reader already failed: {reason}")]
    Fused { reason: String },
    /// Writing the output failed (for [`dump_events`]).
    #[error("writing the output failed")]
    Output(#[source] std::io::Error),
}

impl DecodeError {
    pub(crate) fn invalid(offset: u64, reason: impl Into<String>) -> Self {
        DecodeError::Invalid {
            offset,
            reason: reason.into(),
        }
    }

    /// The byte offset the error refers to, if any.
    pub fn offset(&self) -> Option<u64> {
        match self {
            DecodeError::Io { offset, .. } | DecodeError::Invalid { offset, .. } => Some(*offset),
            DecodeError::NotATrace => Some(0),
            _ => None,
        }
    }
}

/// Go's `frequency.mul`: a raw timestamp times ns-per-tick, converted to
/// `int64` as amd64 does (out-of-range and NaN become `i64::MIN`).
#[inline]
pub(crate) fn freq_mul(freq: f64, t: u64) -> i64 {
    go_f64_to_i64(t as f64 * freq)
}

#[inline]
fn go_f64_to_i64(f: f64) -> i64 {
    // CVTTSD2SQ yields 0x8000000000000000 for NaN and out-of-range values.
    const TWO_63: f64 = (1u64 << 63) as f64;
    if f.is_nan() || !(-TWO_63..TWO_63).contains(&f) {
        i64::MIN
    } else {
        f as i64
    }
}

/// A fast hasher for small integer keys (FxHash).
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn write_i64(&mut self, i: i64) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<IdHasher>>;
