//! The common case on its own: one 4 KiB page whose tables all exist (a DMA-API map or unmap of
//! a page, in a range the domain has mapped before). It is the general path's protocol with
//! nothing that cannot happen here: no table to make, no run, no leaf size to choose, no split
//! to refuse. A walk down three table entries finds the leaf's slot; a map sets it with one
//! compare-and-swap, then (after the full fence) re-reads the three entries exactly as
//! [`path_intact`](PageTable::path_intact) does; an unmap clears it with one compare-and-swap.
//!
//! Whenever anything else is found (an entry being unlinked, a missing table, a larger leaf on
//! the way, a busy slot, a path that changed under the map) the fast path changes nothing, or
//! takes back the one entry it set, and answers `None`: the caller runs the general path, which
//! handles every case. So the fast path can only be right or decline.

use super::{PageTable, ROOT, UNLINKING};
use crate::format::{index, Format, Pte};
use crate::sync::{fence, AtomicU64, Ordering::SeqCst};

/// The last-level slot of a page and the three entries above it with the values the walk read
/// (`links[l]` is the level-`l` entry, for `l` in 1..=3).
struct PageSlot<'a> {
    slot: &'a AtomicU64,
    links: [(&'a AtomicU64, u64); ROOT + 1],
}

impl<F: Format> PageTable<F> {
    /// The level-0 slot of `iova` if every table above it exists and none is being unlinked.
    #[inline]
    fn page_slot(&self, iova: u64) -> Option<PageSlot<'_>> {
        let mut table = self.root_table();
        let mut links = [(&table[0], 0); ROOT + 1];
        for level in (1..=ROOT).rev() {
            let slot = &table[index(iova, level)];
            let pte = slot.load(SeqCst);
            if pte & UNLINKING != 0 {
                return None;
            }
            let Pte::Table(phys) = F::decode(pte, level) else {
                return None;
            };
            links[level] = (slot, pte);
            table = self.frames.table_at(phys);
        }
        Some(PageSlot {
            slot: &table[index(iova, 0)],
            links,
        })
    }

    /// Maps the page at `iova` to the leaf entry `leaf` if the fast path applies: `Some(())`
    /// when mapped, `None` when nothing changed and the general path must run. Called pinned.
    #[inline]
    pub(super) fn map_page_fast(&self, iova: u64, leaf: u64) -> Option<()> {
        let page = self.page_slot(iova)?;
        page.slot.compare_exchange(0, leaf, SeqCst, SeqCst).ok()?;
        // The mapper's half of the Dekker pattern with the unlinker (see the module above).
        fence(SeqCst);
        if page.links[1..]
            .iter()
            .all(|&(s, pte)| s.load(SeqCst) == pte)
        {
            return Some(());
        }
        // A table on the way is being unlinked: take the entry back; the general path waits for
        // the unlinker's verdict and places it again.
        let _ = page.slot.compare_exchange(leaf, 0, SeqCst, SeqCst);
        None
    }

    /// Unmaps the 4 KiB leaf at `iova` if the fast path applies: `Some(4096)` when it cleared
    /// it, `None` when nothing changed (no leaf there, or not a 4 KiB one, or its tables are
    /// missing) and the general path must run. Called pinned.
    #[inline]
    pub(super) fn unmap_page_fast(&self, iova: u64) -> Option<u64> {
        let page = self.page_slot(iova)?;
        let cur = page.slot.load(SeqCst);
        if !matches!(F::decode(cur, 0), Pte::Leaf { .. }) {
            return None;
        }
        page.slot.compare_exchange(cur, 0, SeqCst, SeqCst).ok()?;
        Some(4096)
    }
}
