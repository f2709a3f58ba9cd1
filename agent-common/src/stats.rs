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

/// Number of counters in the `STATS` map.
pub const COUNT: u32 = 6;

/// Human-readable names, indexed by counter.
pub const NAMES: [&str; COUNT as usize] = [
    "ringbuf_full",
    "read_failed",
    "no_config",
    "events_written",
    "headers_incomplete",
    "interleaved",
];
