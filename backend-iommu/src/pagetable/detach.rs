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
//! (nothing unreachable stays mapped, no table is lost or freed twice), whichever goes first.
//!
//! Freed twice is the danger: the links *inside* a detached subtree still look live, and a
//! thread already inside it (a mapper taking out a table it installed there, another unmap of an
//! overlapping range) may try to take a table out through one of them. So the detach retires the
//! top table (its link is the marked entry, which only the marker changes) and, below it, only
//! the tables whose link it clears itself with a compare-and-swap: whoever clears a link retires
//! what it pointed at, and only one can. A link a reclaim has marked meanwhile is waited for
//! (the reclaim finds the table full and puts the link back), or the table would be left in no
//! one's hands.

use super::{PageTable, Walk, ROOT, UNLINKING};
use crate::format::{index, level_size, Format, Pte};
use crate::frames::{Retired, Table};
use crate::sync::{fence, spin, AtomicU64, Ordering::SeqCst};

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
        let mut links = Vec::new();
        if !self.all_leaves(phys, level - 1, &mut links) {
            slot.store(cur, SeqCst);
            return false;
        }
        // Only the marker changes a marked entry: the top table is this call's to retire.
        slot.store(0, SeqCst);
        let mut retired = vec![Retired {
            frame: self.frames.frame_at(phys),
            dirty: true,
        }];
        // A table below is retired by whoever takes its link out, and only by them: a mapper
        // that installed it under the detached table (and takes it out when its path check
        // fails), or another unmap racing this one over the same range, may reach the same link
        // through the detached tables. The compare-and-swap decides; the loser leaves it.
        for (link, pte, child) in links {
            if take_link(link, pte) {
                retired.push(Retired {
                    frame: self.frames.frame_at(child),
                    dirty: true,
                });
            }
        }
        self.freelist.lock().extend(retired);
        self.pending.store(true, SeqCst);
        true
    }

    /// Whether every entry of the level-`level` table at `phys`, and of every table below it, is
    /// a leaf; collects the links between those tables into `links` (the entry, the value read,
    /// the table it points at). Depth is at most three.
    fn all_leaves<'a>(
        &'a self,
        phys: u64,
        level: usize,
        links: &mut Vec<(&'a AtomicU64, u64, u64)>,
    ) -> bool {
        for e in self.frames.table_at(phys) {
            let pte = e.load(SeqCst);
            if pte & UNLINKING != 0 {
                return false;
            }
            match F::decode(pte, level) {
                Pte::Leaf { .. } => {}
                Pte::Table(below) if level > 0 => {
                    links.push((e, pte, below));
                    if !self.all_leaves(below, level - 1, links) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        true
    }
}

/// Clears `link` if it still holds `pte`: whether this call took the table below. A link an
/// unlinker has marked (a reclaim deciding whether the table is empty) is waited for: the
/// unlinker puts it back or clears it without waiting on anyone, and a failed take while it was
/// marked would leave the table in no one's hands.
fn take_link(link: &AtomicU64, pte: u64) -> bool {
    loop {
        match link.compare_exchange(pte, 0, SeqCst, SeqCst) {
            Ok(_) => return true,
            Err(cur) if cur == pte | UNLINKING => spin(),
            Err(_) => return false,
        }
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
        t.frames().collect();
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

    /// A mapper installs a prefilled last-level table into a hole of a level-1 table; before its
    /// path check, an unmap of the whole 1 GiB detaches the subtree with that table in it. The
    /// mapper's retreat must not retire the table the detach already took (one frame would
    /// then be handed to two tables).
    #[test]
    fn a_table_installed_under_a_detached_one_is_retired_once() {
        use crate::format::Format;
        use crate::pagetable::descend::Run;
        use crate::sync::{fence, Ordering::SeqCst};
        let t = table();
        t.map(SZ_1G, 0x4000_0000, SZ_1G - SZ_2M, RW, false).unwrap();
        assert_eq!(t.live_frames(), 3);
        let va = 2 * SZ_1G - SZ_2M;
        let bits = VtdSecondLevel::leaf(0, 0, RW, false);
        let leaf = |k: usize| (0x1_0000_1000 + k as u64 * SZ_4K) | bits;
        let pinned = t.frames().pin();
        // The mapper, up to its fence: a new table, prefilled, installed.
        let run = Run {
            first: 0,
            n: 512,
            leaf: &leaf,
        };
        let d = t.descend(va, 0, true, Some(run)).unwrap().unwrap();
        assert!(d.filled);
        // The unmap takes the whole subtree, the mapper's table included.
        assert_eq!(t.unmap(SZ_1G, SZ_1G).unwrap(), SZ_1G);
        // The mapper resumes: its path broke, so it withdraws and takes out what it installed.
        fence(SeqCst);
        assert!(!t.path_intact(&d.path, 0));
        crate::pagetable::withdraw(&d.table[..512], leaf);
        t.abandon(&d.path, 0);
        t.release_freelist();
        assert_eq!(t.live_frames(), 2, "root and level-2 table");
        drop(pinned);
        t.frames().collect();
        let got: Vec<u32> = (0..3).map(|_| t.frames().alloc(0).unwrap()).collect();
        assert!(
            got[0] != got[1] && got[1] != got[2] && got[0] != got[2],
            "a frame handed out twice: {got:?}"
        );
    }

    /// Two unmaps over one subtree (the callers' race): the second walked into it before the
    /// first detached it whole, and then tries to detach a table inside it. It finds the link
    /// gone and takes nothing, so no table is retired twice.
    #[test]
    fn an_unmap_inside_a_detached_subtree_takes_nothing() {
        let t = table();
        t.map(SZ_1G, SZ_1G + SZ_4K, SZ_1G, RW, false).unwrap();
        let _pinned = t.frames().pin();
        let late = t.walk(SZ_1G + SZ_2M);
        assert_eq!(t.unmap(SZ_1G, SZ_1G).unwrap(), SZ_1G);
        assert_eq!(t.detach_covered(&late, SZ_1G + SZ_2M, SZ_2M), None);
        t.release_freelist();
        assert_eq!(t.live_frames(), 2, "root and level-2 table");
    }

    /// The walk uses an address's index bits only: an address at or above 2^48 would reach the
    /// entries of the one it aliases, and one near 2^64 would overflow the unlink's range.
    #[test]
    fn addresses_above_the_input_space_are_refused() {
        let t = table();
        t.map(SZ_1G, 0x4000_0000, SZ_4K, RW, false).unwrap();
        let above = SZ_1G + (1 << 48);
        assert!(matches!(
            t.unmap(above, SZ_4K),
            Err(p2p_core::Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            t.map(above, 0x5000_0000, SZ_4K, RW, false),
            Err(p2p_core::Error::OutOfBounds { .. })
        ));
        assert!(t.unmap(0xffff_ffff_ffff_e000, SZ_4K).is_err());
        assert!(t.unmap((1 << 48) - SZ_4K, 2 * SZ_4K).is_err());
        assert_eq!(t.translate(SZ_1G).map(|l| l.phys), Some(0x4000_0000));
    }
}
