//! The IOTLB: a direct-mapped cache of 4 KiB translations in front of the page-table walk. Reads
//! take no lock (a tag/data/tag check per slot), so a hit costs a few loads.
//!
//! A fill races an unmap without any lock between them, so each slot's tag carries a version that
//! every invalidation of the slot bumps. A walk reads the slot's tag *before* it reads the page
//! table ([`Iotlb::fill_ticket`]) and fills only if the tag is still that value
//! ([`Iotlb::fill`]). An unmap clears the entry first and invalidates after: if the walk read the
//! old entry, it read the ticket before the invalidation, so its fill fails; if it read the
//! cleared entry, it has nothing to fill. Either way no fill can bring back a translation a
//! strict unmap removed (every access is sequentially consistent).
//!
//! Dropping everything (a lazy drain, an invalidation of more pages than the cache has slots) is
//! one increment of the cache's *epoch*, not a write to every slot: an entry is usable only if it
//! was filled in the current epoch (each slot keeps the epoch its fill's ticket read, a full
//! 64-bit word, so it never wraps), so a clear makes every entry, and every fill whose ticket
//! predates it, unusable at once.

use crate::sync::{spin, AtomicU64, Ordering::SeqCst};
use p2p_core::access::Access;
use std::sync::atomic::AtomicU64 as StatCounter;

/// Slots in the cache. A loom model explores every interleaving of every slot access, so it gets
/// a cache small enough to explore (collisions included).
#[cfg(not(loom))]
const SLOTS: usize = 256;
#[cfg(loom)]
const SLOTS: usize = 4;

/// Tag layout: bit 0 valid, bit 1 busy (a fill is writing the data word), bits 2–37 the page
/// number (a 48-bit IOVA has 36), bits 38–63 the version.
const VALID: u64 = 1;
const BUSY: u64 = 2;
const PAGE_SHIFT: u32 = 2;
const PAGE_MASK: u64 = ((1 << 36) - 1) << PAGE_SHIFT;
const VERSION_ONE: u64 = 1 << 38;

#[derive(Debug, Default)]
struct Slot {
    tag: AtomicU64,
    /// Physical page address | access bits (bit 0 read, bit 1 write).
    data: AtomicU64,
    /// The cache's epoch when the fill's ticket was taken: the entry is usable only in it.
    epoch: AtomicU64,
}

/// What [`Iotlb::fill_ticket`] saw of a slot, and the epoch, before the walk; [`Iotlb::fill`]
/// needs the slot unchanged and tags the entry with that epoch.
#[derive(Debug, Clone, Copy)]
pub struct FillTicket {
    tag: u64,
    epoch: u64,
}

/// The epoch, on a pair of cache lines of its own (128 bytes: adjacent-line prefetching pairs
/// lines): every lookup reads it, only clears write it.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Epoch(AtomicU64);

/// One thread's share of the counters, on a pair of cache lines of its own: threads translating
/// and unmapping side by side never write the same line to count, nor lines an adjacent-line
/// prefetcher pairs (threads take consecutive shards, so at 64 bytes two threads' shards were
/// one pair).
#[derive(Debug, Default)]
#[repr(align(128))]
struct StatShard {
    hits: StatCounter,
    misses: StatCounter,
    invalidations: StatCounter,
}

/// Shards of the counters; a thread counts in shard `its index % STAT_SHARDS`.
const STAT_SHARDS: usize = 16;

/// Counters, summed over the shards. Exact unless two threads share a shard and race (they are
/// statistics).
#[derive(Debug, Default)]
pub struct IotlbStats {
    shards: [StatShard; STAT_SHARDS],
}

impl IotlbStats {
    fn mine(&self) -> &StatShard {
        &self.shards[crate::sync::thread_ordinal() % STAT_SHARDS]
    }
}

/// The cache.
#[derive(Debug)]
pub struct Iotlb {
    slots: Box<[Slot]>,
    epoch: Epoch,
    stats: IotlbStats,
}

impl Default for Iotlb {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            epoch: Epoch::default(),
            stats: IotlbStats::default(),
        }
    }
}

fn slot_of(page: u64) -> usize {
    (page.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize % SLOTS
}

fn page_bits(page: u64) -> u64 {
    (page << PAGE_SHIFT) & PAGE_MASK
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
        let s = &self.slots[slot_of(page)];
        let t1 = s.tag.load(SeqCst);
        if t1 & (VALID | BUSY) == VALID && t1 & PAGE_MASK == page_bits(page) {
            let d = s.data.load(SeqCst);
            let filled_in = s.epoch.load(SeqCst);
            if s.tag.load(SeqCst) == t1 && filled_in == self.epoch.0.load(SeqCst) {
                bump(&self.stats.mine().hits);
                return Some((d & !0xfff, Access::from_bits_truncate((d & 0b11) as u8)));
            }
        }
        bump(&self.stats.mine().misses);
        None
    }

    /// Reads the slot of `iova` before a walk that may fill it.
    pub fn fill_ticket(&self, iova: u64) -> FillTicket {
        FillTicket {
            tag: self.slots[slot_of(iova >> 12)].tag.load(SeqCst),
            epoch: self.epoch.0.load(SeqCst),
        }
    }

    /// Caches a translation found by a walk that started after `ticket` was taken; skipped if
    /// the slot changed since (an invalidation, or another fill).
    pub fn fill(&self, ticket: FillTicket, iova: u64, phys_page: u64, access: Access) {
        let page = iova >> 12;
        let s = &self.slots[slot_of(page)];
        let t0 = ticket.tag;
        if t0 & BUSY != 0
            || s.tag
                .compare_exchange(t0, t0 | BUSY, SeqCst, SeqCst)
                .is_err()
        {
            return;
        }
        let bits = u64::from(access.bits()) & 0b11;
        s.data.store(phys_page | bits, SeqCst);
        s.epoch.store(ticket.epoch, SeqCst);
        let version = t0 & !(VERSION_ONE - 1);
        s.tag.store(version | page_bits(page) | VALID, SeqCst);
    }

    /// Invalidates one slot: bumps its version (so that no fill that read it before succeeds)
    /// and drops its entry if it caches `page`.
    fn invalidate_slot(&self, s: &Slot, page: u64) {
        loop {
            let t = s.tag.load(SeqCst);
            if t & BUSY != 0 {
                // A fill is between its claim and its publish: a few instructions.
                spin();
                continue;
            }
            let drop_entry = t & PAGE_MASK == page_bits(page);
            let keep = if drop_entry {
                0
            } else {
                t & (VALID | PAGE_MASK)
            };
            let next = (t & !(VERSION_ONE - 1)).wrapping_add(VERSION_ONE) | keep;
            if s.tag.compare_exchange(t, next, SeqCst, SeqCst).is_ok() {
                return;
            }
        }
    }

    /// Drops every cached page in `[iova, iova+len)`.
    #[inline]
    pub fn invalidate_range(&self, iova: u64, len: u64) {
        bump(&self.stats.mine().invalidations);
        if (iova & 0xfff) + len <= 4096 {
            // One page (a strict unmap of a DMA-API page): its slot alone.
            let page = iova >> 12;
            return self.invalidate_slot(&self.slots[slot_of(page)], page);
        }
        self.invalidate_pages(iova, len);
    }

    /// [`invalidate_range`](Self::invalidate_range) of more than one page.
    #[inline(never)]
    fn invalidate_pages(&self, iova: u64, len: u64) {
        let pages = len.div_ceil(4096);
        if pages >= SLOTS as u64 {
            return self.next_epoch();
        }
        for p in 0..pages {
            let page = (iova >> 12) + p;
            self.invalidate_slot(&self.slots[slot_of(page)], page);
        }
    }

    /// Drops everything.
    pub fn clear(&self) {
        bump(&self.stats.mine().invalidations);
        self.next_epoch();
    }

    /// Makes every entry, and every fill whose ticket was taken before, unusable: the next
    /// epoch.
    fn next_epoch(&self) {
        self.epoch.0.fetch_add(1, SeqCst);
    }

    /// (hits, misses, invalidations).
    pub fn stats(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let sum = |f: fn(&StatShard) -> &StatCounter| -> u64 {
            self.stats.shards.iter().map(|s| f(s).load(Relaxed)).sum()
        };
        (
            sum(|s| &s.hits),
            sum(|s| &s.misses),
            sum(|s| &s.invalidations),
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
        let ticket = t.fill_ticket(0x5123);
        t.fill(ticket, 0x5123, 0x9000, Access::READ);
        assert_eq!(t.lookup(0x5fff), Some((0x9000, Access::READ)));
        t.invalidate_range(0x5000, 0x1000);
        assert_eq!(t.lookup(0x5000), None);
        let ticket = t.fill_ticket(0x5000);
        t.fill(ticket, 0x5000, 0x9000, Access::READ | Access::WRITE);
        t.clear();
        assert_eq!(t.lookup(0x5000), None);
        assert_eq!(t.stats(), (1, 3, 2));
    }

    #[test]
    fn a_fill_whose_slot_was_invalidated_since_its_ticket_is_dropped() {
        let t = Iotlb::default();
        let ticket = t.fill_ticket(0x7000); // the walk starts...
        t.invalidate_range(0x7000, 0x1000); // ...an unmap invalidates...
        t.fill(ticket, 0x7000, 0xa000, Access::READ); // ...the walk's result arrives
        assert_eq!(t.lookup(0x7000), None);
    }
}
