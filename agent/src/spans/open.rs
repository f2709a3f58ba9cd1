//! A bounded table of open spans: starts waiting for their end.
//!
//! Every start goes in under a key (a goroutine, a request id); its end takes
//! it out. Starts that never end expire after a time-to-live; when the table
//! is full the oldest start is evicted. Nothing leaves silently: the caller
//! gets what expired or was evicted back, and every outcome is counted.

use std::{
    collections::{HashMap, VecDeque, hash_map},
    hash::Hash,
};

use foldhash::fast::RandomState;

/// Why a span ended without its end record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incomplete {
    /// No end within the time-to-live.
    Expired,
    /// Pushed out of a full table.
    Evicted,
    /// A later request reused its response object first (Go freed it, so
    /// this one will never end: a hijacked connection, a panic).
    Replaced,
    /// Still open when the agent stopped.
    Shutdown,
}

impl Incomplete {
    /// The value of the `agent.span.incomplete` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Evicted => "evicted",
            Self::Replaced => "replaced",
            Self::Shutdown => "shutdown",
        }
    }
}

/// Counters of one table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairingStats {
    /// Starts put in.
    pub started: u64,
    /// Starts taken out by their end.
    pub completed: u64,
    /// Ends that found no start.
    pub unmatched_ends: u64,
    /// Starts that waited longer than the time-to-live.
    pub expired: u64,
    /// Starts pushed out because the table was full.
    pub evicted: u64,
    /// Starts that replaced an open start under the same key.
    pub replaced: u64,
    /// Starts still open when the agent stopped, taken out by [`OpenTable::drain`]
    /// (exported incomplete).
    pub open_at_stop: u64,
    /// Starts after the agent stopped tracing, and ends after it that
    /// found no start: requests the agent chose not to trace, not losses.
    pub after_stop: u64,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    seq: u64,
}

/// Stale queue items tolerated beyond the open starts before the queue is
/// compacted.
const QUEUE_SLACK: usize = 1024;

/// Open starts keyed by `K`.
///
/// Starts are queued in the order they arrive, which is their time order
/// up to the small skew between CPUs of one ring buffer. An end only removes
/// its start from the map; its queue item goes stale and is dropped when it
/// reaches the front (or when stale items pile up), so opening and closing
/// cost one hash operation and one queue push each.
#[derive(Debug)]
pub struct OpenTable<K, V> {
    entries: HashMap<K, Entry<V>, RandomState>,
    /// (opened_ns, seq, key), oldest first; live while the entry under key
    /// has the same seq.
    order: VecDeque<(u64, u64, K)>,
    capacity: usize,
    ttl_ns: u64,
    next_seq: u64,
    stats: PairingStats,
    /// When the agent stopped tracing (kernel monotonic ns); `u64::MAX`
    /// while it traces.
    stop_ns: u64,
}

impl<K: Hash + Eq + Clone, V> OpenTable<K, V> {
    /// A table holding at most `capacity` starts, each for at most `ttl_ns`.
    pub fn new(capacity: usize, ttl_ns: u64) -> Self {
        Self {
            entries: HashMap::with_capacity_and_hasher(capacity.min(4096), RandomState::default()),
            order: VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(1),
            ttl_ns,
            next_seq: 0,
            stats: PairingStats::default(),
            stop_ns: u64::MAX,
        }
    }

    /// The agent stops tracing at `stop_ns` and then detaches its probes,
    /// one after another, while the program runs on: a start after it is
    /// not opened, and an end after it that finds no start belongs to a
    /// request that began after it (or whose start record was lost, which
    /// the ring buffer's counters count), so neither is a loss.
    pub fn stop_at(&mut self, stop_ns: u64) {
        self.stop_ns = stop_ns;
    }

    /// Counters so far.
    pub fn stats(&self) -> PairingStats {
        self.stats
    }

    /// Open starts now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is open.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The open start under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|e| &e.value)
    }

    /// The open start under `key`, to amend.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|e| &mut e.value)
    }

    /// Whether a start at `start_ns` comes after the stop (then it is
    /// counted, and [`Self::open`] would not open it): for a caller with
    /// work to skip before opening.
    pub fn refuses(&mut self, start_ns: u64) -> bool {
        let after = start_ns > self.stop_ns;
        self.stats.after_stop += u64::from(after);
        after
    }

    /// Puts a start in. Returns what it displaced: the start that was open
    /// under the same key, or the oldest start when the table was full.
    pub fn open(&mut self, key: K, value: V, now_ns: u64) -> Option<(K, V)> {
        if self.refuses(now_ns) {
            return None;
        }
        self.stats.started += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        // A new key in a full table evicts the oldest start; otherwise one
        // hash lookup below puts the start in.
        let evicted = if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let oldest = self.pop_oldest();
            if oldest.is_some() {
                self.stats.evicted += 1;
            }
            oldest
        } else {
            None
        };
        self.compact_order();
        self.order.push_back((now_ns, seq, key.clone()));
        match self.entries.entry(key) {
            hash_map::Entry::Occupied(mut slot) => {
                self.stats.replaced += 1;
                let old = std::mem::replace(slot.get_mut(), Entry { value, seq });
                Some((slot.key().clone(), old.value))
            }
            hash_map::Entry::Vacant(slot) => {
                slot.insert(Entry { value, seq });
                evicted
            }
        }
    }

    /// Drops the queue items of closed starts once they pile up.
    fn compact_order(&mut self) {
        if self.order.len() < 2 * self.entries.len() + QUEUE_SLACK {
            return;
        }
        if self.entries.is_empty() {
            self.order.clear();
            return;
        }
        let entries = &self.entries;
        self.order
            .retain(|(_, seq, key)| entries.get(key).is_some_and(|e| e.seq == *seq));
    }

    /// Takes the start under `key` out for its end at `end_ns`; counts an
    /// end with no start.
    pub fn close(&mut self, key: &K, end_ns: u64) -> Option<V> {
        match self.entries.remove(key) {
            Some(entry) => {
                self.stats.completed += 1;
                Some(entry.value)
            }
            None if end_ns > self.stop_ns => {
                self.stats.after_stop += 1;
                None
            }
            None => {
                self.stats.unmatched_ends += 1;
                None
            }
        }
    }

    /// Removes and returns the starts older than the time-to-live.
    pub fn expire(&mut self, now_ns: u64) -> Vec<(K, V)> {
        let mut out = Vec::new();
        while let Some((opened_ns, seq, key)) = self.order.front() {
            if !self.is_live(key, *seq) {
                self.order.pop_front();
                continue;
            }
            if now_ns.saturating_sub(*opened_ns) <= self.ttl_ns {
                break;
            }
            if let Some(kv) = self.pop_oldest() {
                self.stats.expired += 1;
                out.push(kv);
            }
        }
        out
    }

    /// Removes and returns every open start, oldest first (at shutdown).
    pub fn drain(&mut self) -> Vec<(K, V)> {
        let mut out = Vec::with_capacity(self.entries.len());
        while let Some(kv) = self.pop_oldest() {
            out.push(kv);
        }
        self.stats.open_at_stop += out.len() as u64;
        out
    }

    fn is_live(&self, key: &K, seq: u64) -> bool {
        self.entries.get(key).is_some_and(|e| e.seq == seq)
    }

    fn pop_oldest(&mut self) -> Option<(K, V)> {
        while let Some((_, seq, key)) = self.order.pop_front() {
            if self.is_live(&key, seq)
                && let Some(entry) = self.entries.remove(&key)
            {
                return Some((key, entry.value));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_counts() {
        let mut t = OpenTable::new(8, 1_000);
        assert!(t.open(1u64, "a", 10).is_none());
        assert!(t.open(2, "b", 20).is_none());
        assert_eq!(t.close(&1, 0), Some("a"));
        assert_eq!(t.close(&1, 0), None);
        let s = t.stats();
        assert_eq!((s.started, s.completed, s.unmatched_ends), (2, 1, 1));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn after_the_stop_nothing_opens_and_orphan_ends_are_not_losses() {
        let mut t = OpenTable::new(8, 1_000);
        t.open(1u64, "before", 10);
        t.stop_at(100);
        // A start at the stop still opens; one after it does not.
        assert!(t.open(2, "at", 100).is_none());
        assert!(t.open(3, "after", 101).is_none());
        assert_eq!(t.len(), 2);
        // The ends of starts it saw pair as ever.
        assert_eq!(t.close(&1, 150), Some("before"));
        // An end after the stop without a start: not a loss.
        assert_eq!(t.close(&3, 160), None);
        // An end before the stop without a start: a loss.
        assert_eq!(t.close(&4, 90), None);
        let s = t.stats();
        assert_eq!(
            (s.started, s.completed, s.unmatched_ends, s.after_stop),
            (2, 1, 1, 2)
        );
        assert_eq!(t.drain(), vec![(2, "at")]);
    }

    #[test]
    fn full_table_evicts_the_oldest() {
        let mut t = OpenTable::new(2, 1_000);
        t.open(1u64, "a", 10);
        t.open(2, "b", 20);
        assert_eq!(t.open(3, "c", 30), Some((1, "a")));
        assert_eq!(t.stats().evicted, 1);
        assert_eq!(t.drain(), vec![(2, "b"), (3, "c")]);
    }

    #[test]
    fn same_key_replaces() {
        let mut t = OpenTable::new(4, 1_000);
        t.open(7u64, "first", 10);
        assert_eq!(t.open(7, "second", 20), Some((7, "first")));
        assert_eq!(t.stats().replaced, 1);
        assert_eq!(t.close(&7, 0), Some("second"));
        assert!(t.is_empty());
    }

    #[test]
    fn same_key_in_a_full_table_replaces_without_evicting() {
        let mut t = OpenTable::new(2, 1_000);
        t.open(1u64, "a", 10);
        t.open(2, "b", 20);
        assert_eq!(t.open(2, "b2", 30), Some((2, "b")));
        assert_eq!(t.stats().replaced, 1);
        assert_eq!(t.stats().evicted, 0);
        assert_eq!(t.drain(), vec![(1, "a"), (2, "b2")]);
    }

    #[test]
    fn old_starts_expire_in_order() {
        let mut t = OpenTable::new(8, 100);
        t.open(1u64, "a", 0);
        t.open(2, "b", 50);
        t.open(3, "c", 150);
        assert_eq!(t.expire(160), vec![(1, "a"), (2, "b")]);
        assert_eq!(t.stats().expired, 2);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn closed_and_replaced_starts_leave_the_queue() {
        let mut t = OpenTable::new(4, 100);
        for i in 0..10_000u64 {
            t.open(i, i, i);
            assert_eq!(t.close(&i, 0), Some(i));
        }
        assert!(t.order.len() <= 2 + QUEUE_SLACK, "stale items compacted");
        t.open(1, 1, 20_000);
        t.open(1, 2, 20_001);
        t.open(2, 3, 20_002);
        assert_eq!(
            t.drain(),
            vec![(1, 2), (2, 3)],
            "the replaced start is gone"
        );
        assert!(t.expire(1_000_000).is_empty());
        assert!(t.order.is_empty());
    }

    #[test]
    fn eviction_skips_closed_starts() {
        let mut t = OpenTable::new(2, 1_000);
        t.open(1u64, "a", 10);
        t.open(2, "b", 20);
        t.close(&1, 0);
        t.open(3, "c", 30);
        assert_eq!(t.open(4, "d", 40), Some((2, "b")), "the oldest open start");
        assert_eq!(t.stats().evicted, 1);
    }
}
