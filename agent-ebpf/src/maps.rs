//! The maps every family shares: the ring buffer, the counters, the wakeup
//! pacing. A family's own maps live in its module.

use agent_common::stats;
use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};

/// Records for the agent. Its size is set by the agent at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 21, 0);

/// Per-CPU counters, indexed by `agent_common::stats::*`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// When this CPU last looked at the ring buffer's backlog to decide on a
/// wakeup (`bpf_ktime_get_ns`).
#[map]
pub static LAST_WAKEUP_CHECK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Adds one to counter `index` on this CPU.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from the map lookup and is valid for this
        // CPU's value; per-CPU values are never touched concurrently.
        unsafe { *counter += 1 };
    }
}
