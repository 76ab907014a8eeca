//! Unmapping a whole subtree at once, as Linux's io-pgtable does when an unmap covers a table
//! entry's span (`__arm_lpae_unmap` clears the table entry and frees the tables below after the
//! TLB sync, without clearing their leaves): one entry cleared instead of every leaf below it.
//!
//! The unmap's semantics must not change: it still removes only leaves, from its start up to the
//! first hole. So a subtree is detached only if every entry below it is a leaf, found by a scan
//! under the same mark the empty-table unlink uses ([`UNLINKING`]):
//!
//! 1. mark the entry (a mapper descending through it now waits);
//! 2. full fence, then scan the subtree: any hole, or a table being unlinked below, ends it, the
//!    mark is taken off and the unmap clears leaves one by one as before;
//! 3. clear the entry; the subtree's tables go on the freelist as *dirty* (they still hold their
//!    leaves) and are retired after the flush, zeroed when a table is next allocated from them.
//!
//! A mapper that read the entry before the mark and installs into a hole of the subtree is the
//! mapper of the empty-table unlink, and the same Dekker pattern settles it: either the scan sees
//! its leaf, or the mapper's re-read sees the mark (and it retreats and retries). A map into a
//! range an unmap is removing at the same time is the callers' race: the table stays consistent
//! (nothing unreachable stays mapped, no table is lost), whichever of them goes first.

use super::{PageTable, Walk, ROOT, UNLINKING};
use crate::format::{index, level_size, Format, Pte};
use crate::frames::{Retired, Table};
use crate::sync::{fence, Ordering::SeqCst};

impl<F: Format> PageTable<F> {
    /// Detaches the largest table on the walk to `va` whose whole span starts at `va`, lies in
    /// the `rest` bytes still to unmap, and holds only leaves. Returns the bytes it unmapped.
    pub(super) fn detach_covered(&self, w: &Walk<'_>, va: u64, rest: u64) -> Option<u64> {
        // The level-`level` entry on the walk points at the level-`level - 1` table.
        for level in (w.level + 1..=ROOT).rev() {
            let span = level_size(level);
            if va % span != 0 || span > rest {
                continue;
            }
            if self.try_detach(w.path[level], index(va, level), level) {
                return Some(span);
            }
        }
        None
    }

    /// Clears entry `idx` of `parent` (a level-`level` table) if it points at a table whose
    /// subtree is all leaves, and puts the subtree's tables on the freelist. Whether it did.
    fn try_detach(&self, parent: &Table, idx: usize, level: usize) -> bool {
        let slot = &parent[idx];
        let cur = slot.load(SeqCst);
        if cur & UNLINKING != 0 {
            return false;
        }
        let Pte::Table(phys) = F::decode(cur, level) else {
            return false;
        };
        if slot
            .compare_exchange(cur, cur | UNLINKING, SeqCst, SeqCst)
            .is_err()
        {
            return false;
        }
        // The unlinker's half of the Dekker pattern: mark, fence, then look.
        fence(SeqCst);
        let mut tables = Vec::new();
        if !self.all_leaves(phys, level - 1, &mut tables) {
            slot.store(cur, SeqCst);
            return false;
        }
        // Only the marker changes a marked entry.
        slot.store(0, SeqCst);
        self.freelist.lock().extend(
            tables
                .into_iter()
                .map(|frame| Retired { frame, dirty: true }),
        );
        self.pending.store(true, SeqCst);
        true
    }

    /// Whether every entry of the level-`level` table at `phys`, and of every table below it, is
    /// a leaf; collects the tables' frames into `tables`. Depth is at most three.
    fn all_leaves(&self, phys: u64, level: usize, tables: &mut Vec<u32>) -> bool {
        tables.push(self.frames.frame_at(phys));
        for e in self.frames.table_at(phys) {
            let pte = e.load(SeqCst);
            if pte & UNLINKING != 0 {
                return false;
            }
            match F::decode(pte, level) {
                Pte::Leaf { .. } => {}
                Pte::Table(below) if level > 0 => {
                    if !self.all_leaves(below, level - 1, tables) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::format::VtdSecondLevel;
    use crate::pagetable::PageTable;
    use p2p_core::access::Access;
    use p2p_core::page::{SZ_1G, SZ_2M, SZ_4K};

    const RW: Access = Access::READ.union(Access::WRITE);

    fn table() -> PageTable<VtdSecondLevel> {
        PageTable::new(0x7f00_0000_0000).unwrap()
    }

    #[test]
    fn a_fully_mapped_subtree_is_unmapped_whole_and_its_tables_reused_clean() {
        let t = table();
        // 1 GiB of 4 KiB pages: a level-1 table and 512 last-level tables below one root entry.
        t.map(SZ_1G, SZ_1G + SZ_4K, SZ_1G, RW, false).unwrap();
        let live = t.live_frames();
        assert_eq!(live, 1 + 1 + 1 + 512);
        assert_eq!(t.unmap(SZ_1G, SZ_1G).unwrap(), SZ_1G);
        assert_eq!(t.translate(SZ_1G), None);
        assert_eq!(t.translate(2 * SZ_1G - SZ_4K), None);
        t.release_freelist();
        assert_eq!(t.live_frames(), 2, "root and the level-2 table stay");
        // The detached tables come back zeroed: a new map sees only its own entries.
        for _ in 0..64 {
            crossbeam_epoch::pin().flush();
        }
        t.map(SZ_1G, 0x8000_0000, SZ_2M, RW, false).unwrap();
        t.map(SZ_1G + SZ_2M, 0x9000_0000, SZ_4K, RW, false).unwrap();
        assert_eq!(t.translate(SZ_1G + SZ_2M + SZ_4K), None);
        assert_eq!(t.translate(SZ_1G + 2 * SZ_2M), None);
        assert_eq!(
            t.translate(SZ_1G + SZ_2M).map(|l| l.phys),
            Some(0x9000_0000)
        );
    }

    #[test]
    fn a_subtree_with_a_hole_is_not_detached_and_the_unmap_stops_at_the_hole() {
        let t = table();
        t.map(SZ_1G, 0x4000_0000, SZ_2M, RW, false).unwrap();
        // A hole at SZ_1G + SZ_2M, then more pages the unmap must not reach.
        t.map(SZ_1G + 2 * SZ_2M, 0x5000_0000, SZ_2M, RW, false)
            .unwrap();
        assert_eq!(t.unmap(SZ_1G, SZ_1G).unwrap(), SZ_2M);
        assert_eq!(
            t.translate(SZ_1G + 2 * SZ_2M).map(|l| l.phys),
            Some(0x5000_0000)
        );
    }
}
