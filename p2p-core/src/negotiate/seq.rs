//! A mapping's sequence number, as Linux's `mmu_interval_notifier` keeps one: even while no
//! invalidation covers the mapping, odd while at least one does. The protocol that uses it is
//! written down in [`protocol`](super::protocol).

use crate::sync::{yield_now, AtomicU32, AtomicU64, Ordering};

/// A mapping's sequence number and the count of invalidations covering it now.
///
/// The value changes only when the count goes 0 → 1 (even → odd) and 1 → 0 (odd → even), so two
/// overlapping invalidations keep it odd until both have ended. Both changes are made under the
/// registry lock; readers load the value without it.
///
/// On 128-byte lines of its own: the count of its `Arc` is written on every map and drop, and
/// its fields by invalidations, and sequences are small allocations that would otherwise share
/// a line with another thread's.
#[derive(Debug)]
#[repr(align(128))]
pub struct Sequence {
    value: AtomicU64,
    active: AtomicU32,
}

impl Default for Sequence {
    fn default() -> Self {
        // Linux starts the mm's invalidate_seq at 2.
        Self {
            value: AtomicU64::new(2),
            active: AtomicU32::new(0),
        }
    }
}

/// How many times [`Sequence::read_begin`] yields before it starts sleeping between looks: an
/// invalidation that moves memory can take milliseconds (a copy), and a spinning reader would
/// steal the core the copy runs on.
const SPINS_BEFORE_SLEEP: u32 = 64;

impl Sequence {
    /// The current value.
    pub fn current(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }

    /// Waits until no invalidation covers the mapping and returns the (even) sequence
    /// (`mmu_interval_read_begin`).
    pub fn read_begin(&self) -> u64 {
        let mut spins = 0u32;
        loop {
            let v = self.current();
            if v % 2 == 0 {
                return v;
            }
            if spins < SPINS_BEFORE_SLEEP || cfg!(loom) {
                spins += 1;
                yield_now();
            } else {
                #[cfg(not(loom))]
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        }
    }

    /// Whether an invalidation began or ended since `seq` was read (`mmu_interval_read_retry`).
    pub fn read_retry(&self, seq: u64) -> bool {
        self.current() != seq
    }

    /// An invalidation now covers the mapping; returns the (odd) value. Called under the
    /// registry lock.
    pub(crate) fn begin_invalidate(&self) -> u64 {
        if self.active.fetch_add(1, Ordering::AcqRel) == 0 {
            self.value.fetch_add(1, Ordering::AcqRel);
        }
        self.current()
    }

    /// One covering invalidation ended; when it was the last, the value goes even again (and
    /// differs from every value a reader saw before). Called under the registry lock.
    pub(crate) fn end_invalidate(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.value.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(all(test, not(loom)))]
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

    #[test]
    fn overlapping_invalidations_keep_it_odd_until_the_last_ends() {
        let s = Sequence::default();
        assert_eq!(s.begin_invalidate(), 3);
        assert_eq!(
            s.begin_invalidate(),
            3,
            "a second one does not make it even"
        );
        s.end_invalidate();
        assert_eq!(s.current(), 3, "still covered by the first");
        s.end_invalidate();
        assert_eq!(s.current(), 4);
    }
}
