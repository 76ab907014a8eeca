//! The mmu-interval-notifier sequence protocol: even when idle, odd while an invalidation runs.
//!
//! A reader (an ODP fault handler) takes `seq = read_begin()`, works out the translation, then
//! under its own lock checks `read_retry(seq)` before it programs device PTEs, and starts over if
//! the sequence moved.

use std::sync::atomic::{AtomicU64, Ordering};

/// A mapping's sequence number.
#[derive(Debug)]
pub struct Sequence(AtomicU64);

impl Default for Sequence {
    fn default() -> Self {
        // Linux starts the mm's invalidate_seq at 2.
        Self(AtomicU64::new(2))
    }
}

impl Sequence {
    /// The current value.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Waits until no invalidation runs and returns the (even) sequence.
    pub fn read_begin(&self) -> u64 {
        loop {
            let v = self.current();
            if v % 2 == 0 {
                return v;
            }
            std::thread::yield_now();
        }
    }

    /// Whether an invalidation started since `seq` was read.
    pub fn read_retry(&self, seq: u64) -> bool {
        self.current() != seq
    }

    /// Marks an invalidation as running; returns the odd value.
    pub(crate) fn begin_invalidate(&self) -> u64 {
        self.0.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Marks it done; the value is even again.
    pub(crate) fn end_invalidate(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_idle_odd_during_invalidation() {
        let s = Sequence::default();
        let seq = s.read_begin();
        assert_eq!(seq, 2);
        assert!(!s.read_retry(seq));
        assert_eq!(s.begin_invalidate() % 2, 1);
        assert!(s.read_retry(seq));
        s.end_invalidate();
        assert_eq!(s.read_begin(), 4);
        assert!(s.read_retry(seq));
    }
}
