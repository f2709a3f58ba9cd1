//! What every family's per-target configuration shares: the target slot
//! (the attach cookie's high half indexes each family's config array) and the
//! marker of a struct field a binary does not have.

/// Maximum number of targets one agent traces at once (entries of each family's config array).
pub const MAX_TARGETS: u32 = 64;

/// Sentinel for an offset this binary does not have. Probes skip the field
/// instead of reading at a silent zero.
pub const OFFSET_ABSENT: u64 = u64::MAX;
