//! In-process parenting without a `context.Context`: which span is open on
//! which goroutine, and which goroutine inherited which span from the
//! goroutine that created it.
//!
//! Every family that opens a span on a goroutine says so
//! ([`Goroutines::enter`]) and says when it ends ([`Goroutines::exit`]); a
//! span that starts on a goroutine asks for its parent
//! ([`Goroutines::parent`]): the innermost span open on that goroutine, or
//! else the one it inherited. A goroutine created while a span is open on
//! its creator ([`Goroutines::spawned`], from the runtime family's probe on
//! goroutine creation) inherits that span, to a bounded depth and for a
//! bounded time, so a handler that runs its queries in an errgroup still
//! gets one tree.
//!
//! Keys are (target slot, goroutine id): goroutine ids are unique within a
//! process for its lifetime, and never reused.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use opentelemetry::trace::{SpanId, TraceId};
use smallvec::SmallVec;

/// How many goroutine creations a span is inherited through at most
/// (`go f()` inside `go g()` inside a handler is depth 2).
pub const MAX_DEPTH: u8 = 4;

/// How long a created goroutine keeps its inherited parent when it opens
/// no span of its own: a worker started by a request and kept alive for
/// later ones must not parent their spans forever.
pub const INHERIT_TTL_NS: u64 = 30_000_000_000;

/// Goroutines with an open span or an inherited parent kept at most; past
/// it the oldest inheritances are dropped (counted).
pub const MAX_GOROUTINES: usize = 65_536;

/// What a child span needs of its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParentSpan {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
}

/// A goroutine's key: (target slot, goroutine id).
pub type GoroutineKey = (u32, u64);

#[derive(Clone, Copy, Debug)]
struct Inherited {
    parent: ParentSpan,
    depth: u8,
    since_ns: u64,
}

/// Counters of in-process parenting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoroutineStats {
    /// Spans that found a parent on their goroutine.
    pub parented: u64,
    /// Goroutines that inherited a span from their creator.
    pub inherited: u64,
    /// Creations past [`MAX_DEPTH`]: the new goroutine inherits nothing.
    pub too_deep: u64,
    /// Inheritances dropped because the table was full.
    pub dropped: u64,
}

/// The open spans and inherited parents of every traced goroutine.
#[derive(Debug, Default)]
pub struct Goroutines {
    /// Off when no attached family parents its spans in-process: then
    /// spans are not tracked at all, and cost nothing.
    enabled: bool,
    /// Spans open on a goroutine, innermost last.
    open: HashMap<GoroutineKey, SmallVec<[ParentSpan; 2]>, RandomState>,
    inherited: HashMap<GoroutineKey, Inherited, RandomState>,
    stats: GoroutineStats,
}

impl Goroutines {
    /// A table that tracks spans when `enabled`.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
        }
    }

    /// Whether spans are tracked.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Counters so far.
    pub fn stats(&self) -> GoroutineStats {
        self.stats
    }

    /// The parent of a span starting on `key` at `now_ns`: the innermost
    /// span open there, else the span the goroutine inherited (while fresh).
    pub fn parent(&mut self, key: GoroutineKey, now_ns: u64) -> Option<ParentSpan> {
        let found = self.current(key, now_ns).map(|(parent, _)| parent);
        if found.is_some() {
            self.stats.parented += 1;
        }
        found
    }

    fn current(&self, key: GoroutineKey, now_ns: u64) -> Option<(ParentSpan, u8)> {
        if let Some(innermost) = self.open.get(&key).and_then(|spans| spans.last()) {
            return Some((*innermost, 0));
        }
        self.inherited
            .get(&key)
            .filter(|i| now_ns.saturating_sub(i.since_ns) <= INHERIT_TTL_NS)
            .map(|i| (i.parent, i.depth))
    }

    /// A span opened on `key`.
    #[inline]
    pub fn enter(&mut self, key: GoroutineKey, span: ParentSpan) {
        if !self.enabled {
            return;
        }
        self.open.entry(key).or_default().push(span);
    }

    /// A span open on `key` got the ids the kernel made for it
    /// (`--propagate`): it is known by those from now on.
    #[inline]
    pub fn reassign(&mut self, key: GoroutineKey, old: SpanId, span: ParentSpan) {
        if let Some(open) = self
            .open
            .get_mut(&key)
            .and_then(|spans| spans.iter_mut().rev().find(|s| s.span_id == old))
        {
            *open = span;
        }
    }

    /// A span open on `key` now carries another trace (its request's
    /// `traceparent` arrived after its start).
    #[inline]
    pub fn retrace(&mut self, key: GoroutineKey, span_id: SpanId, trace_id: TraceId, flags: u8) {
        if let Some(span) = self
            .open
            .get_mut(&key)
            .and_then(|spans| spans.iter_mut().rev().find(|s| s.span_id == span_id))
        {
            span.trace_id = trace_id;
            span.flags = flags;
        }
    }

    /// The span `span_id` on `key` ended (or was given up).
    #[inline]
    pub fn exit(&mut self, key: GoroutineKey, span_id: SpanId) {
        if !self.enabled {
            return;
        }
        if let Some(spans) = self.open.get_mut(&key) {
            if let Some(at) = spans.iter().rposition(|s| s.span_id == span_id) {
                spans.remove(at);
            }
            if spans.is_empty() {
                self.open.remove(&key);
            }
        }
    }

    /// Goroutine `child` was created by `parent` at `now_ns`: it inherits
    /// the span current on `parent`, one level deeper.
    pub fn spawned(&mut self, parent: GoroutineKey, child: GoroutineKey, now_ns: u64) {
        if !self.enabled {
            return;
        }
        let Some((span, depth)) = self.current(parent, now_ns) else {
            return;
        };
        if depth >= MAX_DEPTH {
            self.stats.too_deep += 1;
            return;
        }
        if self.inherited.len() >= MAX_GOROUTINES && !self.inherited.contains_key(&child) {
            self.expire(now_ns);
            if self.inherited.len() >= MAX_GOROUTINES {
                self.stats.dropped += 1;
                return;
            }
        }
        self.stats.inherited += 1;
        self.inherited.insert(
            child,
            Inherited {
                parent: span,
                depth: depth + 1,
                since_ns: now_ns,
            },
        );
    }

    /// Drops inheritances older than [`INHERIT_TTL_NS`].
    pub fn expire(&mut self, now_ns: u64) {
        self.inherited
            .retain(|_, i| now_ns.saturating_sub(i.since_ns) <= INHERIT_TTL_NS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: u64) -> ParentSpan {
        ParentSpan {
            trace_id: TraceId::from(u128::from(id) << 64 | 1),
            span_id: SpanId::from(id),
            flags: 1,
        }
    }

    #[test]
    fn the_innermost_open_span_is_the_parent() {
        let mut g = Goroutines::new(true);
        assert_eq!(g.parent((0, 7), 0), None);
        g.enter((0, 7), span(1));
        g.enter((0, 7), span(2));
        assert_eq!(g.parent((0, 7), 0), Some(span(2)));
        assert_eq!(g.parent((0, 8), 0), None, "another goroutine");
        assert_eq!(g.parent((1, 7), 0), None, "another target");
        g.exit((0, 7), span(2).span_id);
        assert_eq!(g.parent((0, 7), 0), Some(span(1)));
        g.exit((0, 7), span(1).span_id);
        assert_eq!(g.parent((0, 7), 0), None);
        assert_eq!(g.stats().parented, 2);
    }

    #[test]
    fn created_goroutines_inherit_to_a_bounded_depth_and_time() {
        let mut g = Goroutines::new(true);
        g.enter((0, 1), span(9));
        g.spawned((0, 1), (0, 2), 100);
        assert_eq!(g.parent((0, 2), 100), Some(span(9)));
        // A span of its own comes first.
        g.enter((0, 2), span(10));
        assert_eq!(g.parent((0, 2), 100), Some(span(10)));
        g.exit((0, 2), span(10).span_id);
        // Grandchildren, up to MAX_DEPTH creations away.
        let mut parent = 2;
        for child in 3..3 + u64::from(MAX_DEPTH) {
            g.spawned((0, parent), (0, child), 100);
            parent = child;
        }
        assert_eq!(g.parent((0, parent - 1), 100), Some(span(9)));
        assert_eq!(g.parent((0, parent), 100), None, "one creation too deep");
        assert_eq!(g.stats().too_deep, 1);
        // Stale after the time-to-live.
        assert_eq!(g.parent((0, 2), 100 + INHERIT_TTL_NS + 1), None);
        g.expire(100 + INHERIT_TTL_NS + 1);
        assert!(g.inherited.is_empty());
    }

    #[test]
    fn a_disabled_table_tracks_nothing() {
        let mut g = Goroutines::new(false);
        g.enter((0, 1), span(1));
        g.spawned((0, 1), (0, 2), 0);
        assert_eq!(g.parent((0, 1), 0), None);
        assert_eq!(g.parent((0, 2), 0), None);
    }

    #[test]
    fn a_late_traceparent_moves_the_span_to_the_callers_trace() {
        let mut g = Goroutines::new(true);
        g.enter((0, 1), span(1));
        let caller = TraceId::from(0xabcd_u128);
        g.retrace((0, 1), span(1).span_id, caller, 0);
        let parent = g.parent((0, 1), 0).expect("open");
        assert_eq!((parent.trace_id, parent.flags), (caller, 0));
    }
}
