//! A 4-level page table in a real format, stored in [`Frames`]. Mapping picks the largest leaf
//! the page sizes and alignment allow and keeps its place in the last table between pages, so a
//! long range costs about one entry store per page. Unmapping walks across leaves of every size
//! (a 2 MiB block followed by 4 KiB pages is one range) and stops only at a hole; it never splits
//! a leaf: a range that would cut one is refused before anything changes. Tables left empty are
//! unlinked at once and freed only by [`PageTable::release_freelist`], which the owner calls
//! after the IOTLB flush that follows (Linux's `iommu_iotlb_gather` freelist): a walker that
//! cached a path through them never reads a reused frame.

use crate::format::{index, level_size, Format, Pte};
use crate::frames::{Frames, ENTRIES};
use p2p_core::access::Access;
use p2p_core::{Error, Result};
use std::marker::PhantomData;

/// The root is level 3.
const ROOT: usize = 3;

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
    /// Tables emptied by unmap, freed at the next flush.
    freelist: Vec<u32>,
    _format: PhantomData<F>,
}

/// The table holding the entries for an address at some level.
#[derive(Debug, Clone, Copy)]
struct Slot {
    table: u32,
    level: usize,
}

impl<F: Format> PageTable<F> {
    /// An empty table whose frames start at physical `frames_base`.
    pub fn new(frames_base: u64) -> Result<Self> {
        let mut frames = Frames::new(frames_base);
        let root = frames.alloc(0)?;
        Ok(Self {
            frames,
            root,
            freelist: Vec::new(),
            _format: PhantomData,
        })
    }

    /// The frames.
    pub fn frames(&self) -> &Frames {
        &self.frames
    }

    /// Mutable frames (fault injection).
    pub fn frames_mut(&mut self) -> &mut Frames {
        &mut self.frames
    }

    /// Physical address of the root table (what a context entry points at).
    pub fn root_phys(&self) -> u64 {
        self.frames.phys(self.root)
    }

    /// Frames in use, including tables waiting on the freelist.
    pub fn live_frames(&self) -> usize {
        self.frames.live()
    }

    /// Frees the tables emptied since the last call (the IOTLB flush has happened).
    pub fn release_freelist(&mut self) {
        // Drained in place: the list keeps its capacity for the next unmap.
        while let Some(f) = self.freelist.pop() {
            self.frames.release(f);
        }
    }

    /// The table at `level` that covers `iova`, creating tables on the way if `create`.
    /// `Ok(None)` when absent and not creating; an error if a leaf covers it at a higher level.
    fn table_at(&mut self, iova: u64, level: usize, create: bool) -> Result<Option<u32>> {
        let mut table = self.root;
        for l in (level + 1..=ROOT).rev() {
            let i = index(iova, l);
            let pte = self.frames.table(table)[i];
            table = match F::decode(pte, l) {
                Pte::Table(phys) => self.frames.frame_at(phys),
                Pte::Leaf { .. } => return Err(Error::AlreadyMapped(iova & !(level_size(l) - 1))),
                Pte::Invalid if !create => return Ok(None),
                Pte::Invalid => {
                    let child = self.frames.alloc(iova)?;
                    let phys = self.frames.phys(child);
                    self.frames.table_mut(table)[i] = F::table(phys);
                    self.frames.add_count(table, 1);
                    child
                }
            };
        }
        Ok(Some(table))
    }

    /// Maps `[iova, iova+len)` to `[phys, phys+len)`; on failure nothing stays mapped.
    pub fn map(
        &mut self,
        iova: u64,
        phys: u64,
        len: u64,
        access: Access,
        mmio: bool,
    ) -> Result<()> {
        let mut done = 0u64;
        let result = self.map_inner(iova, phys, len, access, mmio, &mut done);
        if result.is_err() {
            // Only leaves this call made are in [iova, iova+done): no split is possible.
            let undone = self.unmap_range(iova, done);
            debug_assert_eq!(undone, done);
            // Tables made for the page that failed may be empty.
            let (path, level, _) = self.path(iova + done);
            self.prune(&path, level, iova + done);
            // The emptied tables join the freelist and wait for the next flush with the tables
            // earlier unmaps left there: freeing the list here would free those before their
            // flush.
        }
        result
    }

    fn map_inner(
        &mut self,
        iova: u64,
        phys: u64,
        len: u64,
        access: Access,
        mmio: bool,
        done: &mut u64,
    ) -> Result<()> {
        let mut cached: Option<(u64, Slot)> = None; // (iova >> shift of the table's coverage, slot)
        while *done < len {
            let (va, pa, rem) = (iova + *done, phys + *done, len - *done);
            let size = F::PAGE_SIZES
                .best_fit(va | pa, rem)
                .ok_or(Error::Misaligned {
                    what: "iova",
                    value: va,
                    align: 4096,
                })?;
            let level = size.trailing_zeros() as usize / 9 - 1;
            let cover = level_size(level + 1).trailing_zeros();
            let slot = match cached {
                Some((key, s)) if key == va >> cover && s.level == level => s,
                _ => {
                    let t = self
                        .table_at(va, level, true)?
                        .unwrap_or_else(|| unreachable!("created"));
                    let s = Slot { table: t, level };
                    cached = Some((va >> cover, s));
                    s
                }
            };
            // Fill consecutive entries of this table while the same leaf size still fits.
            let first = index(va, level);
            let n = ((rem >> size.trailing_zeros()) as usize)
                .min(ENTRIES - first)
                .max(1);
            let table = self.frames.table_mut(slot.table);
            for k in 0..n {
                if table[first + k] != 0 {
                    *done += k as u64 * size;
                    self.frames.add_count(slot.table, k as i32);
                    return Err(Error::AlreadyMapped(va + k as u64 * size));
                }
                table[first + k] = F::leaf(pa + k as u64 * size, level, access, mmio);
            }
            self.frames.add_count(slot.table, n as i32);
            *done += n as u64 * size;
        }
        Ok(())
    }

    /// The leaf mapping `iova`, by a walk that reads entries exactly as hardware would.
    pub fn translate(&self, iova: u64) -> Option<Leaf> {
        if iova >> F::IAS != 0 {
            return None;
        }
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
                    let base = iova & !(size - 1);
                    return Some(Leaf {
                        iova: base,
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
    /// [`Error::Backend`] naming the leaf, and nothing is unmapped.
    pub fn unmap(&mut self, iova: u64, len: u64) -> Result<u64> {
        if len == 0 {
            return Ok(0);
        }
        let end = iova.checked_add(len).ok_or(Error::AddressOverflow {
            kind: "iova",
            addr: iova,
            len,
        })?;
        let split = |leaf_start: u64, size: u64| {
            Error::Backend {
            backend: "soft-iommu",
            message: format!("unmap of {iova:#x}+{len:#x} would split the {size:#x}-byte page at {leaf_start:#x}; unmap whole pages"),
        }
        };
        let first_path = self.path(iova);
        let (_, level, leaf) = first_path;
        let first_end = if leaf {
            let size = level_size(level);
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
            if let (_, level, true) = self.path(end - 1) {
                let size = level_size(level);
                let start = (end - 1) & !(size - 1);
                if start + size > end {
                    return Err(split(start, size));
                }
            }
        }
        Ok(self.unmap_range_from(iova, len, Some(first_path)))
    }

    /// Clears whole leaves from `iova` until `len` bytes or a hole; unlinks emptied tables.
    fn unmap_range(&mut self, iova: u64, len: u64) -> u64 {
        self.unmap_range_from(iova, len, None)
    }

    /// [`unmap_range`](Self::unmap_range) given the walk to `iova` if the caller has it.
    ///
    /// Each step clears the run of leaves of one size in one table, then walks again from the
    /// next address: a table entry there (smaller pages follow) or a leaf of another size is
    /// simply the next step; only an empty entry (a hole) ends the unmap.
    fn unmap_range_from(
        &mut self,
        iova: u64,
        len: u64,
        mut known: Option<([u32; ROOT + 1], usize, bool)>,
    ) -> u64 {
        let mut done = 0u64;
        while done < len {
            let va = iova + done;
            let walk = known.take().unwrap_or_else(|| self.path(va));
            let (path, level, true) = walk else { break };
            let size = level_size(level);
            let table_id = path[level];
            let first = index(va, level);
            let n = (((len - done) >> size.trailing_zeros()) as usize)
                .min(ENTRIES - first)
                .max(1);
            let table = self.frames.table_mut(table_id);
            let mut cleared = 0;
            while cleared < n
                && matches!(F::decode(table[first + cleared], level), Pte::Leaf { .. })
            {
                table[first + cleared] = 0;
                cleared += 1;
            }
            self.frames.add_count(table_id, -(cleared as i32));
            done += cleared as u64 * size;
            self.prune(&path, level, va);
        }
        done.min(len)
    }

    /// The tables on the way down to `va`: `path[l]` is the level-`l` table for every `l` from
    /// the returned level up to the root; the flag says whether the walk ended at a leaf (in
    /// `path[level]`) rather than at an empty entry.
    fn path(&self, va: u64) -> ([u32; ROOT + 1], usize, bool) {
        let mut path = [self.root; ROOT + 1];
        let mut table = self.root;
        for level in (0..=ROOT).rev() {
            path[level] = table;
            match F::decode(self.frames.table(table)[index(va, level)], level) {
                Pte::Invalid => return (path, level, false),
                Pte::Table(phys) => table = self.frames.frame_at(phys),
                Pte::Leaf { .. } => return (path, level, true),
            }
        }
        unreachable!("level-0 entries are leaves or invalid")
    }

    /// Unlinks the empty tables of `path` from `level` upward (never the root); they wait on the
    /// freelist for the next IOTLB flush.
    fn prune(&mut self, path: &[u32; ROOT + 1], level: usize, va: u64) {
        for l in level..ROOT {
            let child = path[l];
            if self.frames.count(child) != 0 {
                return;
            }
            let parent = path[l + 1];
            self.frames.table_mut(parent)[index(va, l + 1)] = 0;
            self.frames.add_count(parent, -1);
            self.freelist.push(child);
        }
    }
}

#[cfg(test)]
mod tests;
