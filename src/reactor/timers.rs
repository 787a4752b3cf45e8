//! Deadlines in a min-heap. The poll timeout is the time to the nearest one.
//! Timers are never cancelled: a key carries whatever its owner needs to tell
//! a stale firing from a live one (a generation, or a state re-check).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// A heap of `(deadline, key)`.
pub struct Timers<K: Ord> {
    heap: BinaryHeap<Reverse<(Instant, u64, K)>>,
    seq: u64,
}

impl<K: Ord> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<K: Ord> Timers<K> {
    /// Fire `key` at `at`.
    pub fn at(&mut self, at: Instant, key: K) {
        // The sequence number keeps equal deadlines in insertion order.
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, key)));
    }

    /// The next key whose deadline has passed.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        if self
            .heap
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            return self.heap.pop().map(|Reverse((_, _, k))| k);
        }
        None
    }

    /// The nearest deadline.
    pub fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// How long until the nearest deadline (`None`: no timers).
    pub fn until_next(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse((at, _, _))| at.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_order() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.at(t0 + Duration::from_secs(2), "b");
        t.at(t0 + Duration::from_secs(1), "a");
        t.at(t0 + Duration::from_secs(2), "c");
        assert_eq!(t.until_next(t0), Some(Duration::from_secs(1)));
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(t.pop_due(t0 + Duration::from_secs(5)), Some("a"));
        assert_eq!(t.pop_due(t0 + Duration::from_secs(5)), Some("b"));
        assert_eq!(t.pop_due(t0 + Duration::from_secs(5)), Some("c"));
        assert_eq!(t.until_next(t0), None);
    }
}
