//! The kernel side's per-CPU counters (`STATS`), summed over CPUs.

use agent_common::stats;
use aya::maps::{MapData, PerCpuArray};

/// Totals of the kernel-side counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Records lost because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Reads of target memory that failed.
    pub read_failed: u64,
    /// Probe hits for a target slot without configuration.
    pub no_config: u64,
    /// Records written.
    pub events_written: u64,
    /// Header maps not searched completely for `Traceparent`.
    pub headers_incomplete: u64,
    /// Records dropped because another run on the same CPU wrote the
    /// program's working memory meanwhile.
    pub interleaved: u64,
}

/// Reads `STATS`.
pub struct StatsReader {
    map: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for StatsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsReader").finish_non_exhaustive()
    }
}

impl StatsReader {
    pub(super) fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Self { map }
    }

    fn sum(&self, index: u32) -> u64 {
        self.map
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Current totals.
    pub fn read(&self) -> KernelStats {
        KernelStats {
            ringbuf_full: self.sum(stats::RINGBUF_FULL),
            read_failed: self.sum(stats::READ_FAILED),
            no_config: self.sum(stats::NO_CONFIG),
            events_written: self.sum(stats::EVENTS_WRITTEN),
            headers_incomplete: self.sum(stats::HEADERS_INCOMPLETE),
            interleaved: self.sum(stats::INTERLEAVED),
        }
    }
}
