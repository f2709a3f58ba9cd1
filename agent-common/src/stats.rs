//! Indices of the per-CPU counters the eBPF programs keep in the `STATS` map.
//!
//! Every drop or failure on the kernel side increments one of these; the
//! agent sums them over CPUs and reports them while running and at exit.

/// A ring-buffer reserve failed: the buffer was full and a record was lost.
pub const RINGBUF_FULL: u32 = 0;
/// Reading the target's memory failed (a string or struct field).
pub const READ_FAILED: u32 = 1;
/// The probe fired for a target slot with no configuration.
pub const NO_CONFIG: u32 = 2;
/// Records written to the ring buffer.
pub const EVENTS_WRITTEN: u32 = 3;

/// A request's header map could not be searched completely for
/// `Traceparent` or `Tracestate` (too large, growing, or a read failed): its
/// span may have started a new trace instead of continuing the caller's, or
/// lack the caller's trace state.
pub const HEADERS_INCOMPLETE: u32 = 4;

/// A program's per-CPU working memory was written by another run on the
/// same CPU while it built its record (the first run was preempted, on a
/// kernel with full preemption): the record was dropped.
pub const INTERLEAVED: u32 = 5;

/// Records lost because the ring buffer was full, by record kind: counter
/// `LOST_BY_KIND + kind` (a subset of [`RINGBUF_FULL`]). A family turns the
/// lost starts of its spans into spans lost.
pub const LOST_BY_KIND: u32 = 6;

/// Number of counters in the `STATS` map.
pub const COUNT: u32 = LOST_BY_KIND + crate::event::MAX_KIND + 1;

/// The counter of records of `kind` lost to a full ring buffer (kinds
/// beyond [`crate::event::MAX_KIND`] share the last one, which no kind uses).
#[inline(always)]
pub const fn lost_by_kind(kind: u32) -> u32 {
    if kind <= crate::event::MAX_KIND {
        LOST_BY_KIND + kind
    } else {
        LOST_BY_KIND
    }
}

/// Human-readable names of the counters before [`LOST_BY_KIND`].
pub const NAMES: [&str; LOST_BY_KIND as usize] = [
    "ringbuf_full",
    "read_failed",
    "no_config",
    "events_written",
    "headers_incomplete",
    "interleaved",
];
