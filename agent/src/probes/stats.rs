//! The kernel side's per-CPU counters (`STATS`), summed over CPUs.

use agent_common::{event::MAX_KIND, stats};
use aya::maps::{MapData, PerCpuArray};

/// Totals of the kernel-side counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// [`Self::ringbuf_full`] by record kind.
    pub lost_by_kind: [u64; MAX_KIND as usize + 1],
}

impl Default for KernelStats {
    fn default() -> Self {
        Self {
            ringbuf_full: 0,
            read_failed: 0,
            no_config: 0,
            events_written: 0,
            headers_incomplete: 0,
            interleaved: 0,
            lost_by_kind: [0; MAX_KIND as usize + 1],
        }
    }
}

impl KernelStats {
    /// Records of `kind` lost because the ring buffer was full.
    pub fn lost(&self, kind: u32) -> u64 {
        self.lost_by_kind.get(kind as usize).copied().unwrap_or(0)
    }
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
            lost_by_kind: std::array::from_fn(|kind| {
                u32::try_from(kind).map_or(0, |kind| self.sum(stats::lost_by_kind(kind)))
            }),
        }
    }
}
