//! Kernel monotonic time (what `bpf_ktime_get_ns` returns) to wall-clock time.
//!
//! The offset between CLOCK_REALTIME and CLOCK_MONOTONIC is measured once at
//! start-up: each sample brackets a realtime read between two monotonic reads
//! and the tightest bracket wins, so the offset is off by at most half of it
//! (well under a microsecond here).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::time::{ClockId, clock_gettime};

/// Converts monotonic nanoseconds to `SystemTime`.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// realtime - monotonic, in nanoseconds.
    offset_ns: i128,
}

fn read_ns(clock: ClockId) -> i128 {
    match clock_gettime(clock) {
        Ok(ts) => i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec()),
        // clock_gettime cannot fail for these clocks on Linux; 0 keeps the
        // conversion total instead of panicking.
        Err(_) => 0,
    }
}

impl WallClock {
    /// Measures the realtime/monotonic offset now.
    pub fn measure() -> Self {
        let mut best: Option<(i128, i128)> = None; // (bracket width, offset)
        for _ in 0..16 {
            let before = read_ns(ClockId::CLOCK_MONOTONIC);
            let wall = read_ns(ClockId::CLOCK_REALTIME);
            let after = read_ns(ClockId::CLOCK_MONOTONIC);
            let width = after - before;
            let offset = wall - (before + width / 2);
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, offset));
            }
        }
        Self {
            offset_ns: best.map_or(0, |(_, offset)| offset),
        }
    }

    /// A clock with a fixed offset, for tests.
    pub fn with_offset_ns(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// The wall-clock time of monotonic instant `mono_ns`.
    pub fn to_system_time(&self, mono_ns: u64) -> SystemTime {
        let wall = i128::from(mono_ns) + self.offset_ns;
        let wall = u64::try_from(wall.max(0)).unwrap_or(u64::MAX);
        UNIX_EPOCH + Duration::from_nanos(wall)
    }

    /// Nanoseconds since the Unix epoch of monotonic instant `mono_ns`.
    pub fn to_unix_ns(&self, mono_ns: u64) -> u64 {
        let wall = i128::from(mono_ns) + self.offset_ns;
        u64::try_from(wall.max(0)).unwrap_or(u64::MAX)
    }

    /// The current monotonic time, in the clock `bpf_ktime_get_ns` uses.
    pub fn monotonic_now_ns() -> u64 {
        u64::try_from(read_ns(ClockId::CLOCK_MONOTONIC)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_offset_maps_now_to_now() {
        let clock = WallClock::measure();
        let mono = WallClock::monotonic_now_ns();
        let converted = clock.to_system_time(mono);
        let now = SystemTime::now();
        let diff = now
            .duration_since(converted)
            .unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_millis(50), "off by {diff:?}");
    }

    #[test]
    fn fixed_offset_is_exact() {
        let clock = WallClock::with_offset_ns(1_000_000_000_000);
        assert_eq!(
            clock.to_system_time(500),
            UNIX_EPOCH + Duration::from_nanos(1_000_000_000_500)
        );
    }
}
