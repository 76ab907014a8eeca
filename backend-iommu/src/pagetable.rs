//! A 4-level page table in a real format, stored in [`Frames`], that many threads map, unmap and
//! walk at once without a lock, as Linux's io-pgtable does:
//!
//! - **Tables are installed by compare-and-swap.** A mapper that finds an empty entry on its way
//!   down allocates a table and swaps it in; if another thread won, it gives its frame back (it
//!   was never reachable) and follows the winner's.
//! - **Leaves are set and cleared in place** with compare-and-swap: a map never overwrites a live
//!   entry (all or nothing: a clash takes back what the call set and fails with `AlreadyMapped`),
//!   an unmap clears only leaves. Mapping picks the largest leaf the page sizes and alignment
//!   allow and fills a run of entries per table, so a long range costs about one store a page;
//!   a run that goes into a table the mapper makes is written before the table is installed
//!   (nobody can see it yet), with plain stores instead of compare-and-swaps.
//! - **Unmap walks across leaves of every size** (a 2 MiB block followed by 4 KiB pages is one
//!   range) and stops only at a hole; it never splits a leaf: a range that would cut one is
//!   refused before anything changes.
//! - **Tables are unlinked only when empty**, either because an unmap covered their whole span or
//!   by [`PageTable::reclaim`] at a full flush, with a two-step protocol against a mapper that is
//!   installing into the table at the same moment: the unlinker marks the parent's entry
//!   ([`UNLINKING`]), checks the table is empty, then clears the entry; a mapper re-reads, after
//!   installing, every entry its descent went through (one load a level, no walk from the root:
//!   see the `descend` module for why the link of its own table alone is not enough), and if one
//!   changed takes its entries back, takes out any table it installed under an unlinked one, and
//!   starts again. Either the unlinker sees the mapper's entry and backs off,
//!   or the mapper sees the mark and retreats (a full fence between each side's store and load:
//!   the Dekker pattern).
//! - **An unmap that covers a table's whole span, all of it leaves, detaches it whole** (Linux
//!   frees such a subtree without clearing its leaves): under the same mark, a scan finds no
//!   hole, then the one entry is cleared and the subtree's tables wait on the freelist, zeroed
//!   when reused (the `detach` module).
//! - **Unlinked tables are freed only after the flush that follows** (Linux's
//!   `iommu_iotlb_gather` freelist, [`PageTable::release_freelist`]) and then reused only after
//!   every walk that could still read them has ended (the domain's grace periods, see
//!   `Frames::retire`).
//!
//! - **One 4 KiB page whose tables exist** (the DMA-API case) takes a fast path of the same
//!   protocol: a walk of three entries, one compare-and-swap, and for a map the fence and the
//!   re-read; anything unusual makes it decline, unchanged, to the general path (`one_page`).
//!
//! The protocol is model-checked with loom in `tests/loom_pagetable.rs`.

use crate::format::{index, level_size, Format, Pte};
use crate::frames::{Frames, Retired, Table, ENTRIES};
use crate::sync::{fence, spin, AtomicBool, Mutex, Ordering::SeqCst};
use p2p_core::access::Access;
use p2p_core::{Error, Result};
use std::marker::PhantomData;

/// The root is level 3.
const ROOT: usize = 3;

/// The smallest leaf (level 0), which every format has.
const PAGE: u64 = 4096;

/// A software bit in a table entry: the table below it is being unlinked. Bit 58 is ignored by
/// both formats' walkers (VT-d second level: bits 52–61 are ignored; ARM stage 2: bits 55–58 are
/// for software) and lies above every output-address field, so decoding never sees it.
pub const UNLINKING: u64 = 1 << 58;

/// A leaf found by a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// First IOVA it maps.
    pub iova: u64,
    /// Its size.
    pub size: u64,
    /// Where it maps to.
    pub phys: u64,
    /// Its permissions.
    pub access: Access,
    /// The raw entry, as the hardware reads it (memory attributes included).
    pub pte: u64,
}

/// A page table of format `F`.
#[derive(Debug)]
pub struct PageTable<F: Format> {
    frames: Frames,
    root: u32,
    /// Tables unlinked since the last flush, retired at the next one.
    freelist: Mutex<Vec<Retired>>,
    /// Whether `freelist` may hold something: read on every strict unmap, written only when a
    /// table is unlinked, so threads unmapping side by side do not meet on the freelist's lock.
    pending: AtomicBool,
    _format: PhantomData<F>,
}

/// The tables on the way down to an address: `path[l]` is the level-`l` table for every `l` from
/// `level` up to the root; `leaf` says whether the walk ended at a leaf (in `path[level]`)
/// rather than at an empty entry.
#[derive(Debug, Clone, Copy)]
struct Walk<'a> {
    path: [&'a Table; ROOT + 1],
    level: usize,
    leaf: bool,
}

impl<F: Format> PageTable<F> {
    /// An empty table whose frames start at physical `frames_base`.
    pub fn new(frames_base: u64) -> Result<Self> {
        let frames = Frames::new(frames_base)?;
        let root = frames.alloc(0)?;
        Ok(Self {
            frames,
            root,
            freelist: Mutex::default(),
            pending: AtomicBool::new(false),
            _format: PhantomData,
        })
    }

    /// The frames.
    pub fn frames(&self) -> &Frames {
        &self.frames
    }

    /// Physical address of the root table (what a context entry points at).
    pub fn root_phys(&self) -> u64 {
        self.frames.phys(self.root)
    }

    /// Frames in use, including unlinked tables waiting on the freelist.
    pub fn live_frames(&self) -> usize {
        self.frames.live()
    }

    /// Retires the tables unlinked since the last call: call it after the IOTLB flush that
    /// follows their unmap.
    #[inline]
    pub fn release_freelist(&self) {
        // A load first: the swap writes the line, and strict unmaps on every core come here.
        if self.pending.load(SeqCst) {
            self.release_pending();
        }
    }

    #[cold]
    #[inline(never)]
    fn release_pending(&self) {
        if !self.pending.swap(false, SeqCst) {
            return;
        }
        let gathered = std::mem::take(&mut *self.freelist.lock());
        self.frames.retire_all(gathered);
    }

    fn table(&self, frame: u32) -> &Table {
        self.frames.table(frame)
    }

    /// The root table.
    fn root_table(&self) -> &Table {
        self.table(self.root)
    }

    /// The table at `level` that covers `iova`, creating tables on the way if `create`.
    /// `Ok(None)` when absent and not creating; `AlreadyMapped` if a leaf covers it higher up.
    fn table_at(&self, iova: u64, level: usize, create: bool) -> Result<Option<&Table>> {
        Ok(self.descend(iova, level, create, NO_RUN)?.map(|d| d.table))
    }

    /// Maps `[iova, iova+len)` to `[phys, phys+len)`; on failure nothing of it stays mapped. A
    /// range outside the 2^IAS input space is refused with [`Error::OutOfBounds`].
    #[inline]
    pub fn map(&self, iova: u64, phys: u64, len: u64, access: Access, mmio: bool) -> Result<()> {
        self.check_space(iova, len)?;
        let _walking = self.frames.pin();
        if len == PAGE && (iova | phys) % PAGE == 0 {
            let leaf = F::leaf(phys, 0, access, mmio);
            if self.map_page_fast(iova, leaf).is_some() {
                return Ok(());
            }
        }
        self.map_general(iova, phys, len, access, mmio)
    }

    /// `[iova, iova+len)` inside the 2^IAS input space: the walk uses the address's index bits
    /// only, so an address above it would reach the entries of the one it aliases.
    #[inline]
    fn check_space(&self, iova: u64, len: u64) -> Result<()> {
        let space = 1u64 << F::IAS;
        if iova < space && len <= space - iova {
            return Ok(());
        }
        Err(Error::OutOfBounds {
            kind: "iova",
            start: iova,
            len,
            limit_start: 0,
            limit_len: space,
        })
    }

    /// [`map`](Self::map) of any range, pinned by the caller; out of line, so that the one-page
    /// path stays small.
    #[inline(never)]
    fn map_general(
        &self,
        iova: u64,
        phys: u64,
        len: u64,
        access: Access,
        mmio: bool,
    ) -> Result<()> {
        let mut done = 0u64;
        let result = self.map_inner(iova, phys, len, access, mmio, &mut done);
        if result.is_err() {
            // Only leaves this call made are in [iova, iova+done): no split is possible. Tables
            // made for it stay until a reclaim finds them empty.
            // (Fewer only if an unmap of an overlapping range raced this map: the callers'
            // race, which leaves the table consistent either way.)
            self.unmap_range(iova, done);
        }
        result
    }

    fn map_inner(
        &self,
        iova: u64,
        phys: u64,
        len: u64,
        access: Access,
        mmio: bool,
        done: &mut u64,
    ) -> Result<()> {
        while *done < len {
            let (va, pa, rem) = (iova + *done, phys + *done, len - *done);
            // let-else, not `ok_or`: an `Error` built eagerly is also dropped on every map.
            let Some(size) = F::PAGE_SIZES.best_fit(va | pa, rem) else {
                return Err(Error::Misaligned {
                    what: "iova",
                    value: va,
                    align: 4096,
                });
            };
            let level = size.trailing_zeros() as usize / 9 - 1;
            let first = index(va, level);
            let n = ((rem >> size.trailing_zeros()) as usize)
                .min(ENTRIES - first)
                .max(1);
            // The attribute bits once per run, not per entry (see `Format::leaf`).
            let bits = F::leaf(0, level, access, mmio);
            debug_assert_eq!(F::leaf(pa, level, access, mmio), pa | bits);
            let leaf = |k: usize| (pa + k as u64 * size) | bits;
            let run = Run {
                first,
                n,
                leaf: &leaf,
            };
            let d = self
                .descend(va, level, true, Some(run))?
                .unwrap_or_else(|| unreachable!("created"));
            let entries = &d.table[first..first + n];
            if !d.filled {
                for k in 0..n {
                    if !self.install(d.table, first + k, level, leaf(k)) {
                        withdraw(&entries[..k], leaf);
                        return Err(Error::AlreadyMapped(va + k as u64 * size));
                    }
                }
            }
            // Store (our entries) then load (the path): with the unlinker's store (its mark) then
            // load (the table), a Dekker pattern: a full fence on both sides makes the order
            // explicit, also to loom, which models SeqCst accesses as acquire / release only
            // (tokio-rs/loom#180).
            fence(SeqCst);
            if self.path_intact(&d.path, level) {
                *done += n as u64 * size;
            } else {
                // A table on the way was being unlinked while we filled ours: take the run back
                // and place it again, in whatever tables the path holds now.
                withdraw(entries, leaf);
                self.abandon(&d.path, level);
            }
        }
        Ok(())
    }

    /// Sets entry `idx` of `table` (a level-`level` table) to `leaf` if it is empty. An entry
    /// that points at an empty table (left by unmaps of smaller pages) is cleared first, as
    /// Linux's `arm_lpae_init_pte` replaces an empty table with a block. False if it maps
    /// something.
    fn install(&self, table: &Table, idx: usize, level: usize, leaf: u64) -> bool {
        let e = &table[idx];
        loop {
            match e.compare_exchange(0, leaf, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(cur) if cur & UNLINKING != 0 => spin(),
                Err(cur) => match F::decode(cur, level) {
                    Pte::Table(_) if self.try_unlink(table, idx, level) => {}
                    // Another thread's empty table came and went: look again.
                    Pte::Invalid => {}
                    _ => return false,
                },
            }
        }
    }

    /// The leaf mapping `iova`, by a walk that reads entries exactly as hardware would.
    pub fn translate(&self, iova: u64) -> Option<Leaf> {
        if iova >> F::IAS != 0 {
            return None;
        }
        let _walking = self.frames.pin();
        let mut table_phys = self.frames.phys(self.root);
        for level in (0..=ROOT).rev() {
            let pte = self
                .frames
                .read_phys(table_phys + 8 * index(iova, level) as u64);
            match F::decode(pte, level) {
                Pte::Invalid => return None,
                Pte::Table(next) => table_phys = next,
                Pte::Leaf { phys, access } => {
                    let size = level_size(level);
                    return Some(Leaf {
                        iova: iova & !(size - 1),
                        size,
                        phys,
                        access,
                        pte,
                    });
                }
            }
        }
        None
    }

    /// Unmaps `[iova, iova+len)`, returning the bytes unmapped: it crosses leaves of any size and
    /// stops at the first hole. A range whose ends would cut a larger leaf is refused with
    /// [`Error::WouldSplit`] naming the leaf, and nothing is unmapped. Tables whose whole span the
    /// unmap covered are unlinked and wait on the freelist for the next flush. A range outside the
    /// 2^IAS input space is refused with [`Error::OutOfBounds`].
    #[inline]
    pub fn unmap(&self, iova: u64, len: u64) -> Result<u64> {
        self.check_space(iova, len)?;
        if len == PAGE && iova % PAGE == 0 {
            let _walking = self.frames.pin();
            if let Some(n) = self.unmap_page_fast(iova) {
                return Ok(n);
            }
        }
        self.unmap_general(iova, len)
    }

    /// [`unmap`](Self::unmap) of any range; out of line, so that the one-page path stays small.
    #[inline(never)]
    fn unmap_general(&self, iova: u64, len: u64) -> Result<u64> {
        if len == 0 {
            return Ok(0);
        }
        // `unmap` checked the range lies in the 2^IAS input space: no overflow.
        let end = iova + len;
        let _walking = self.frames.pin();
        let split = |page_start: u64, page_size: u64| Error::WouldSplit {
            iova,
            len,
            page_start,
            page_size,
        };
        let first = self.walk(iova);
        let first_end = if first.leaf {
            let size = level_size(first.level);
            let start = iova & !(size - 1);
            if start < iova || start + size > end {
                return Err(split(start, size));
            }
            start + size
        } else {
            iova
        };
        // The last leaf can cut the range only if the range goes past the first leaf.
        if first_end < end {
            let last = self.walk(end - 1);
            if last.leaf {
                let size = level_size(last.level);
                let start = (end - 1) & !(size - 1);
                if start + size > end {
                    return Err(split(start, size));
                }
            }
        }
        let done = self.unmap_range_from(iova, len, Some(first));
        self.unlink_covered(iova, done);
        Ok(done)
    }

    /// Clears whole leaves from `iova` until `len` bytes or a hole. Each step clears the run of
    /// leaves of one size in one table, then walks again from the next address: a table entry
    /// there (smaller pages follow) or a leaf of another size is simply the next step; only an
    /// empty entry (a hole) ends the unmap.
    fn unmap_range(&self, iova: u64, len: u64) -> u64 {
        self.unmap_range_from(iova, len, None)
    }

    /// [`unmap_range`](Self::unmap_range) given the walk to `iova` if the caller has it.
    fn unmap_range_from(&self, iova: u64, len: u64, mut known: Option<Walk>) -> u64 {
        let mut done = 0u64;
        while done < len {
            let va = iova + done;
            let w = known.take().unwrap_or_else(|| self.walk(va));
            if !w.leaf {
                break;
            }
            if let Some(span) = self.detach_covered(&w, va, len - done) {
                done += span;
                continue;
            }
            let size = level_size(w.level);
            let first = index(va, w.level);
            let n = (((len - done) >> size.trailing_zeros()) as usize)
                .min(ENTRIES - first)
                .max(1);
            let entries = &w.path[w.level][first..first + n];
            let mut cleared = 0;
            for e in entries {
                let cur = e.load(SeqCst);
                let is_leaf = matches!(F::decode(cur, w.level), Pte::Leaf { .. });
                if !is_leaf || e.compare_exchange(cur, 0, SeqCst, SeqCst).is_err() {
                    break;
                }
                cleared += 1;
            }
            if cleared == 0 {
                // Cleared by someone else between the walk and here: a hole now.
                break;
            }
            done += cleared as u64 * size;
        }
        done.min(len)
    }

    /// The walk to `va` (see [`Walk`]).
    fn walk(&self, va: u64) -> Walk<'_> {
        let mut table = self.root_table();
        let mut path = [table; ROOT + 1];
        for level in (0..=ROOT).rev() {
            path[level] = table;
            match F::decode(table[index(va, level)].load(SeqCst), level) {
                Pte::Invalid => {
                    return Walk {
                        path,
                        level,
                        leaf: false,
                    }
                }
                Pte::Table(phys) => table = self.frames.table_at(phys),
                Pte::Leaf { .. } => {
                    return Walk {
                        path,
                        level,
                        leaf: true,
                    }
                }
            }
        }
        unreachable!("level-0 entries are leaves or invalid")
    }

    /// Unlinks the tables whose whole span lies in `[iova, iova+len)`, lowest level first, so
    /// that a parent emptied by its children's unlinking goes too. The parent table is looked up
    /// once per run of spans it holds, and an entry that is not a table costs one load.
    fn unlink_covered(&self, iova: u64, len: u64) {
        let end = iova + len;
        for level in 1..=ROOT {
            let span = level_size(level);
            let mut base = iova.next_multiple_of(span);
            while base.checked_add(span).is_some_and(|e| e <= end) {
                // The entries from `base` to the end of their table (or of the range): their
                // table is looked up once, and a missing one skips them all.
                let run_end = if level == ROOT {
                    end
                } else {
                    (base | (level_size(level + 1) - 1))
                        .saturating_add(1)
                        .min(end)
                };
                let Some(table) = self.table_at(base, level, false).ok().flatten() else {
                    base = run_end;
                    continue;
                };
                while base.checked_add(span).is_some_and(|e| e <= run_end) {
                    let idx = index(base, level);
                    let pte = table[idx].load(SeqCst);
                    if matches!(F::decode(pte, level), Pte::Table(_)) {
                        self.try_unlink(table, idx, level);
                    }
                    base += span;
                }
            }
        }
    }

    /// Unlinks the table that entry `idx` of `parent` (a level-`level` table) points at, if it
    /// is empty. Returns whether it did.
    fn try_unlink(&self, parent: &Table, idx: usize, level: usize) -> bool {
        let slot = &parent[idx];
        let cur = slot.load(SeqCst);
        let Pte::Table(phys) = F::decode(cur, level) else {
            return false;
        };
        if cur & UNLINKING != 0
            || slot
                .compare_exchange(cur, cur | UNLINKING, SeqCst, SeqCst)
                .is_err()
        {
            return false;
        }
        let child = self.frames.frame_at(phys);
        // The other half of the mapper's fence: mark, fence, then look.
        fence(SeqCst);
        if !self.frames.is_empty(child) {
            // A mapper got there first (or it was never empty): keep it.
            slot.store(cur, SeqCst);
            return false;
        }
        // Only the unlinker changes a marked entry.
        slot.store(0, SeqCst);
        self.freelist.lock().push(Retired {
            frame: child,
            dirty: false,
        });
        self.pending.store(true, SeqCst);
        true
    }

    /// Unlinks every empty table (bottom up), for the freelist: the memory a long-running domain
    /// would otherwise keep for ranges it no longer maps. Safe while other threads map and walk.
    pub fn reclaim(&self) {
        let _walking = self.frames.pin();
        self.reclaim_below(self.root_table(), ROOT);
    }

    fn reclaim_below(&self, table: &Table, level: usize) {
        for idx in 0..ENTRIES {
            let pte = table[idx].load(SeqCst);
            if let Pte::Table(phys) = F::decode(pte, level) {
                if level > 1 {
                    self.reclaim_below(self.frames.table_at(phys), level - 1);
                }
                self.try_unlink(table, idx, level);
            }
        }
    }
}

/// Takes back the entries a map call set in `entries` (each is still the leaf `leaf(k)`: nobody
/// else clears a leaf it did not map, unless it unmaps a range it does not own).
fn withdraw(entries: &[crate::sync::AtomicU64], leaf: impl Fn(usize) -> u64) {
    for (k, e) in entries.iter().enumerate() {
        let _ = e.compare_exchange(leaf(k), 0, SeqCst, SeqCst);
    }
}

mod descend;
mod detach;
mod one_page;
use descend::{Run, NO_RUN};

#[cfg(all(test, not(loom)))]
mod tests;
