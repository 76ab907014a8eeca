//! The IOTLB: a direct-mapped cache of 4 KiB translations in front of the page-table walk. Reads
//! take no lock (a tag/data/tag check per slot), so a hit costs a few loads.

use crate::sync::{AtomicU64, Ordering};
use p2p_core::access::Access;
use std::sync::atomic::AtomicU64 as StatCounter;

/// Slots in the cache. A loom model explores every interleaving of every slot access, so it gets
/// a cache small enough to explore (collisions included).
#[cfg(not(loom))]
const SLOTS: usize = 256;
#[cfg(loom)]
const SLOTS: usize = 4;
const BUSY: u64 = u64::MAX;

#[derive(Debug, Default)]
struct Slot {
    /// `page << 1 | 1` when valid, 0 when empty, BUSY while being written.
    tag: AtomicU64,
    /// Physical page address | access bits (bit 0 read, bit 1 write).
    data: AtomicU64,
}

/// Counters. Exact without contention; approximate when threads race (they are statistics).
#[derive(Debug, Default)]
pub struct IotlbStats {
    hits: StatCounter,
    misses: StatCounter,
    invalidations: StatCounter,
}

/// The cache.
#[derive(Debug)]
pub struct Iotlb {
    slots: Box<[Slot]>,
    stats: IotlbStats,
}

impl Default for Iotlb {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            stats: IotlbStats::default(),
        }
    }
}

fn slot_of(page: u64) -> usize {
    (page.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize % SLOTS
}

fn bump(c: &StatCounter) {
    use std::sync::atomic::Ordering::Relaxed;
    // A plain load/store instead of a locked add: a hit must stay a few nanoseconds.
    c.store(c.load(Relaxed) + 1, Relaxed);
}

impl Iotlb {
    /// The cached translation of the page holding `iova`: (physical page, access).
    pub fn lookup(&self, iova: u64) -> Option<(u64, Access)> {
        let page = iova >> 12;
        let want = page << 1 | 1;
        let s = &self.slots[slot_of(page)];
        let t1 = s.tag.load(Ordering::Acquire);
        if t1 == want {
            let d = s.data.load(Ordering::Acquire);
            if s.tag.load(Ordering::Acquire) == t1 {
                bump(&self.stats.hits);
                return Some((d & !0xfff, Access::from_bits_truncate((d & 0b11) as u8)));
            }
        }
        bump(&self.stats.misses);
        None
    }

    /// Caches a translation (skipped if another writer holds the slot).
    pub fn insert(&self, iova: u64, phys_page: u64, access: Access) {
        let page = iova >> 12;
        let s = &self.slots[slot_of(page)];
        let cur = s.tag.load(Ordering::Acquire);
        if cur == BUSY
            || s.tag
                .compare_exchange(cur, BUSY, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let bits = u64::from(access.bits()) & 0b11;
        s.data.store(phys_page | bits, Ordering::Release);
        s.tag.store(page << 1 | 1, Ordering::Release);
    }

    /// Drops every cached page in `[iova, iova+len)`.
    pub fn invalidate_range(&self, iova: u64, len: u64) {
        bump(&self.stats.invalidations);
        let pages = len.div_ceil(4096);
        if pages >= SLOTS as u64 {
            return self.clear();
        }
        for p in 0..pages {
            let page = (iova >> 12) + p;
            let s = &self.slots[slot_of(page)];
            let _ = s
                .tag
                .compare_exchange(page << 1 | 1, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Drops everything.
    pub fn clear(&self) {
        bump(&self.stats.invalidations);
        for s in self.slots.iter() {
            let t = s.tag.load(Ordering::Acquire);
            if t != 0 && t != BUSY {
                let _ = s
                    .tag
                    .compare_exchange(t, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// (hits, misses, invalidations).
    pub fn stats(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        (
            s.hits.load(Relaxed),
            s.misses.load(Relaxed),
            s.invalidations.load(Relaxed),
        )
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn hit_miss_invalidate() {
        let t = Iotlb::default();
        assert_eq!(t.lookup(0x5000), None);
        t.insert(0x5123, 0x9000, Access::READ);
        assert_eq!(t.lookup(0x5fff), Some((0x9000, Access::READ)));
        t.invalidate_range(0x5000, 0x1000);
        assert_eq!(t.lookup(0x5000), None);
        t.insert(0x5000, 0x9000, Access::READ | Access::WRITE);
        t.clear();
        assert_eq!(t.lookup(0x5000), None);
        assert_eq!(t.stats(), (1, 3, 2));
    }
}
