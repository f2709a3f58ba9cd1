//! The maps shared with the agent.

use agent_common::{
    http::{TAIL_SLOTS, TRACEPARENT_CAP},
    stats,
    target::{MAX_TARGETS, TargetConfig},
};
use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray, ProgramArray, RingBuf},
};

use crate::{
    headers::{SCRATCH_LEN, Scan},
    record::RunSeq,
};

/// Records for the agent. Its size is set by the agent at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 21, 0);

/// Per-CPU counters, indexed by `agent_common::stats::*`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// Per-target configuration, indexed by the target slot in the attach cookie.
#[map]
pub static TARGETS: Array<TargetConfig> = Array::with_max_entries(MAX_TARGETS, 0);

/// When this CPU last looked at the ring buffer's backlog to decide on a
/// wakeup (`bpf_ktime_get_ns`).
#[map]
pub static LAST_WAKEUP_CHECK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The header searches the HTTP start program chains to, in the slots
/// `agent_common::http::TAIL_*` name.
#[map]
pub static HTTP_TAIL: ProgramArray = ProgramArray::with_max_entries(TAIL_SLOTS, 0);

/// The working memory of the header searches (`http_server_traceparent`,
/// then `http_server_tracestate`), per CPU: the loop state, a group or
/// bucket of the header map, the `traceparent` value found.
#[repr(C)]
pub struct HeaderSearch {
    /// Bumped by each run; a run whose number changed under it was
    /// interleaved with another and drops its result.
    pub seq: RunSeq,
    pub value: [u8; TRACEPARENT_CAP],
    pub scan: Scan,
    pub scratch: [u8; SCRATCH_LEN],
}

/// One [`HeaderSearch`] per CPU.
#[map]
pub static HTTP_HEADERS: PerCpuArray<HeaderSearch> = PerCpuArray::with_max_entries(1, 0);

/// Adds one to counter `index` on this CPU.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from the map lookup and is valid for this
        // CPU's value; per-CPU values are never touched concurrently.
        unsafe { *counter += 1 };
    }
}
