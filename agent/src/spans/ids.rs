//! Random trace and span ids from a fast generator seeded by the OS.

use opentelemetry::trace::{SpanId, TraceId};
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

/// Generates W3C-valid (non-zero) ids.
#[derive(Debug)]
pub struct IdGenerator {
    rng: SmallRng,
}

impl Default for IdGenerator {
    fn default() -> Self {
        Self {
            rng: SmallRng::from_os_rng(),
        }
    }
}

impl IdGenerator {
    /// A new random trace id.
    pub fn trace_id(&mut self) -> TraceId {
        loop {
            let id: u128 = self.rng.random();
            if id != 0 {
                return TraceId::from(id);
            }
        }
    }

    /// A new random span id.
    pub fn span_id(&mut self) -> SpanId {
        loop {
            let id: u64 = self.rng.random();
            if id != 0 {
                return SpanId::from(id);
            }
        }
    }
}
