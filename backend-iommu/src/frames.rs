//! Simulated physical memory for page tables: 4 KiB frames of 512 64-bit entries, addressed by
//! physical address, as an IOMMU's page-table walker sees them. Every entry is an atomic word, so
//! tables are read and written by many threads without a lock (as hardware and Linux's
//! io-pgtable share them). All the frames a domain may use are one array reserved at once and
//! never moved: untouched frames cost address space, not memory (a zeroed allocation of that
//! size is fresh zero pages the kernel supplies on first touch), and finding a table from a
//! physical address is an index, not a search.
//!
//! A frame that was ever reachable from the root is given back with
//! [`Frames::retire`]: it is counted free at once but reused only after every thread that may
//! still be walking through it has moved on (the domain's grace periods, as Linux frees tables
//! after an RCU grace period or the IOTLB sync: the `grace` module). Frames that never became
//! reachable go back at once with [`Frames::release`].

use crate::grace::Grace;
pub use crate::grace::Pin;
use crate::sync::{spin, AtomicU64, Mutex, Ordering};
use p2p_core::{Error, Result};
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::Arc;

/// Entries per table (4 KiB / 8 bytes).
pub const ENTRIES: usize = 512;

/// A frame of page-table memory.
pub type Table = [AtomicU64; ENTRIES];

/// Frames at most: 65 536 × 4 KiB = 256 MiB of page tables per domain (address space reserved,
/// memory used only as tables are written), enough to map 128 GiB as 4 KiB pages at once, and far
/// more in larger leaves.
#[cfg(not(loom))]
const MAX_FRAMES: usize = 1 << 16;
#[cfg(loom)]
const MAX_FRAMES: usize = 16;

/// Frames given back: `clean` ones hold only zero entries; `dirty` ones are whole tables an
/// unmap detached with their entries in place (Linux frees such a subtree without clearing it),
/// zeroed when they are handed out again. Both are reusable now; `limbo` holds retired frames
/// with the epoch they were unlinked in, until a grace period has passed.
#[derive(Debug, Default)]
struct FreeFrames {
    clean: Vec<u32>,
    dirty: Vec<u32>,
    limbo: Vec<(u64, Vec<Retired>)>,
}

impl FreeFrames {
    /// Moves the retired frames whose grace period has passed to the reusable lists, advancing
    /// the epoch as far as running walks allow (two steps free what was retired just now).
    fn collect(&mut self, grace: &Grace) {
        if self.limbo.is_empty() {
            return;
        }
        for _ in 0..2 {
            grace.try_advance();
        }
        // In place (the order of the batches does not matter): no allocation under the lock.
        let mut i = 0;
        while i < self.limbo.len() {
            if !grace.has_passed(self.limbo[i].0) {
                i += 1;
                continue;
            }
            let (_, frames) = self.limbo.swap_remove(i);
            for r in frames {
                if r.dirty {
                    self.dirty.push(r.frame);
                } else {
                    self.clean.push(r.frame);
                }
            }
        }
    }
}

/// Decides, at each page-table frame allocation, whether it fails (fault injection), given the
/// IOVA the table is for: a machine's fault injector, a countdown in a test.
pub type FrameFault = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// Which frames are handed out, a bit each, in debug builds: a frame given back twice (or never
/// handed out) is a bug in a page-table protocol that would later hand one frame to two tables,
/// so it panics at the second give-back instead. Plain std atomics, also under loom: a check,
/// not part of any protocol.
#[cfg(debug_assertions)]
struct Owned(Box<[std::sync::atomic::AtomicU64]>);

#[cfg(debug_assertions)]
impl Owned {
    fn new() -> Self {
        Self(
            (0..MAX_FRAMES.div_ceil(64))
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        )
    }

    fn bit(frame: u32) -> (usize, u64) {
        (frame as usize / 64, 1 << (frame % 64))
    }

    fn take(&self, frame: u32) {
        let (word, bit) = Self::bit(frame);
        let old = self.0[word].fetch_or(bit, std::sync::atomic::Ordering::Relaxed);
        assert!(old & bit == 0, "frame {frame} handed out twice");
    }

    fn give(&self, frame: u32) {
        let (word, bit) = Self::bit(frame);
        let old = self.0[word].fetch_and(!bit, std::sync::atomic::Ordering::Relaxed);
        assert!(
            old & bit != 0,
            "frame {frame} given back twice, or never handed out"
        );
    }
}

/// A frame given back after it was reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retired {
    /// The frame.
    pub frame: u32,
    /// Whether it may still hold entries (a table detached whole, with its leaves).
    pub dirty: bool,
}

/// The frames page tables live in, starting at physical `base`.
pub struct Frames {
    base: u64,
    /// Every frame, zero until used.
    arena: Box<[Table]>,
    /// Frames never handed out yet start here.
    next: AtomicU32,
    /// Frames given back, reusable now or after their grace period.
    free: Mutex<FreeFrames>,
    /// When retired frames may be reused.
    grace: Grace,
    live: AtomicUsize,
    /// Which frames are handed out, checked in debug builds.
    #[cfg(debug_assertions)]
    owned: Owned,
    /// Allocation fails once this many frames are live (`usize::MAX`: never): a domain's budget
    /// of table memory.
    limit: AtomicUsize,
    /// Fault injection, asked at every allocation.
    fault: std::sync::RwLock<Option<FrameFault>>,
}

impl std::fmt::Debug for Frames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frames")
            .field("base", &self.base)
            .field("live", &self.live())
            .finish_non_exhaustive()
    }
}

/// Frames whose memory a new arena touches at once (256 KiB): a domain's first tables.
const PREFAULTED: usize = 64;

/// Collections an allocation tries when the arena is used up and retired frames may come back
/// (a spin-loop hint between them). A frame retired after the allocating walk's own pin began
/// cannot come back before that walk ends, so such an allocation can fail with frames in limbo:
/// the caller's map fails with `NoTableMemory` and a later one succeeds.
const COLLECT_TRIES: usize = 8;

/// `MAX_FRAMES` zeroed frames. A zeroed allocation (`calloc`): the pages are the kernel's zero
/// pages until written, so reserving the arena costs one `mmap`.
#[cfg(not(loom))]
fn zeroed_arena() -> Result<Box<[Table]>> {
    use zerocopy::FromZeros;
    <[Table]>::new_box_zeroed_with_elems(MAX_FRAMES).map_err(|_| Error::NoTableMemory { iova: 0 })
}

/// loom's atomics cannot be made from zeroed memory; its arenas are a few frames.
#[cfg(loom)]
fn zeroed_arena() -> Result<Box<[Table]>> {
    Ok((0..MAX_FRAMES)
        .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
        .collect())
}

impl Frames {
    /// Frames at physical addresses from `base` (4 KiB aligned) up; fails with
    /// [`Error::NoTableMemory`] if the address space for them cannot be reserved.
    pub fn new(base: u64) -> Result<Self> {
        let arena = zeroed_arena()?;
        // The first tables' pages are touched now, so that a new domain's first maps do not
        // each take a page fault for the kernel's zero page (a store of the zero already there).
        for table in arena.iter().take(PREFAULTED) {
            table[0].store(0, Ordering::Relaxed);
        }
        Ok(Self {
            base,
            arena,
            next: AtomicU32::new(0),
            free: Mutex::default(),
            grace: Grace::default(),
            live: AtomicUsize::new(0),
            #[cfg(debug_assertions)]
            owned: Owned::new(),
            limit: AtomicUsize::new(usize::MAX),
            fault: std::sync::RwLock::new(None),
        })
    }

    /// Makes every allocation ask `fault` first, and fail if it says so (`None`: never).
    pub fn set_fault(&self, fault: Option<FrameFault>) {
        *self
            .fault
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fault;
    }

    /// Allocates a zeroed frame for a table that maps `for_iova`; fails with
    /// [`Error::NoTableMemory`] when the frame limit (fault injection) or the arena is reached.
    pub fn alloc(&self, for_iova: u64) -> Result<u32> {
        let exhausted = || Error::NoTableMemory { iova: for_iova };
        let injected = self
            .fault
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|f| f(for_iova));
        if injected {
            return Err(exhausted());
        }
        let limit = self.limit.load(std::sync::atomic::Ordering::Relaxed);
        if self
            .live
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Relaxed,
                |l| (l < limit).then_some(l + 1),
            )
            .is_err()
        {
            return Err(exhausted());
        }
        let taken = self
            .reused()
            .or_else(|| self.fresh())
            .or_else(|| self.reused_after_collecting());
        match taken {
            Some(f) => {
                #[cfg(debug_assertions)]
                self.owned.take(f);
                Ok(f)
            }
            None => {
                self.live.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                Err(exhausted())
            }
        }
    }

    /// A frame from the free lists, zeroed: a clean one first, else a dirty one, collecting the
    /// retired frames whose grace period has passed if both lists are empty.
    fn reused(&self) -> Option<u32> {
        let (f, dirty) = {
            let mut free = self.free.lock();
            if free.clean.is_empty() && free.dirty.is_empty() {
                free.collect(&self.grace);
            }
            match free.clean.pop() {
                Some(f) => (f, false),
                None => (free.dirty.pop()?, true),
            }
        };
        if dirty {
            // Nobody can read it any more (its grace period has passed): plain stores do.
            for e in self.table(f) {
                e.store(0, Ordering::Relaxed);
            }
        }
        debug_assert!(self.is_empty(f), "reusing a table that maps something");
        Some(f)
    }

    /// A frame never handed out, if the arena has one. Never past the end: a counter that kept
    /// counting failures would wrap round to the root's frame.
    fn fresh(&self) -> Option<u32> {
        self.next
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |n| ((n as usize) < MAX_FRAMES).then_some(n + 1),
            )
            .ok()
    }

    /// The arena is used up: frames retired but not yet past their grace period may come back
    /// once the walks pinned before it end (Linux's flush-and-retry). A few tries, then none.
    #[cold]
    #[inline(never)]
    fn reused_after_collecting(&self) -> Option<u32> {
        (0..COLLECT_TRIES).find_map(|_| {
            spin();
            self.reused()
        })
    }

    /// Gives back a frame that never became reachable (its entries are all zero): reusable now.
    pub fn release(&self, frame: u32) {
        debug_assert!(
            self.is_empty(frame),
            "releasing a table that maps something"
        );
        #[cfg(debug_assertions)]
        self.owned.give(frame);
        self.free.lock().clean.push(frame);
        self.live.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Gives back a frame that was reachable (now unlinked): counted free now, reused once no
    /// thread can still be walking through it. A mapper that went through it may still be
    /// taking its entries back, so they need to be zero only by then (checked at reuse).
    pub fn retire(&self, frame: u32) {
        self.retire_all(vec![Retired {
            frame,
            dirty: false,
        }]);
    }

    /// [`retire`](Self::retire) for many frames at once (one deferred job), some of which may
    /// still hold entries (`dirty`: zeroed when reused).
    pub fn retire_all(&self, frames: Vec<Retired>) {
        if frames.is_empty() {
            return;
        }
        #[cfg(debug_assertions)]
        for r in &frames {
            self.owned.give(r.frame);
        }
        self.live
            .fetch_sub(frames.len(), std::sync::atomic::Ordering::AcqRel);
        // The caller unlinked them before this read: a walk pinned at this epoch or before may
        // still hold them, one pinned later cannot reach them.
        let tag = self.grace.epoch();
        let mut free = self.free.lock();
        free.limbo.push((tag, frames));
        free.collect(&self.grace);
    }

    /// Pins the grace period for a walk: no frame unlinked and retired after this call is
    /// reused while the pin lives. Every walk that reads tables without a lock holds one (the
    /// page table's own do; a walker of its own over [`read_phys`](Self::read_phys) needs it
    /// too). Cheap: an increment and, when it ends, a decrement of a counter on the thread's stripe,
    /// and two reads of the epoch's line, which only a retirement writes.
    #[inline]
    pub fn pin(&self) -> Pin<'_> {
        self.grace.pin()
    }

    /// Moves every retired frame whose grace period has passed to the reusable lists.
    pub fn collect(&self) {
        self.free.lock().collect(&self.grace);
    }

    /// Frames in use (retired frames waiting for their grace period count as free).
    pub fn live(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Makes allocation fail once `limit` frames are in use (`None`: no limit).
    pub fn set_limit(&self, limit: Option<usize>) {
        self.limit.store(
            limit.unwrap_or(usize::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Physical address of a frame.
    #[inline]
    pub fn phys(&self, frame: u32) -> u64 {
        self.base + (u64::from(frame) << 12)
    }

    /// The frame at a physical address.
    #[inline]
    pub fn frame_at(&self, phys: u64) -> u32 {
        ((phys - self.base) >> 12) as u32
    }

    /// A frame's entries.
    #[inline]
    pub fn table(&self, frame: u32) -> &Table {
        &self.arena[frame as usize]
    }

    /// Whether every entry of a frame is zero.
    pub fn is_empty(&self, frame: u32) -> bool {
        self.table(frame)
            .iter()
            .all(|e| e.load(Ordering::SeqCst) == 0)
    }

    /// The table at a physical address (what a table entry points at).
    #[inline]
    pub fn table_at(&self, phys: u64) -> &Table {
        self.table(self.frame_at(phys))
    }

    /// Reads the 64-bit entry at a physical address, as a hardware walker does.
    #[inline]
    pub fn read_phys(&self, phys: u64) -> u64 {
        let frame = self.frame_at(phys & !0xfff);
        self.table(frame)[((phys & 0xfff) >> 3) as usize].load(Ordering::SeqCst)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A table retired with its entries in place is handed out again zeroed, once its grace
    /// period has passed.
    #[test]
    fn a_dirty_frame_is_reused_zeroed() {
        let frames = Frames::new(0x7f00_0000_0000).unwrap();
        let f = frames.alloc(0).unwrap();
        for (i, e) in frames.table(f).iter().enumerate() {
            e.store((0x1000 * i as u64) | 3, Ordering::Relaxed);
        }
        frames.retire_all(vec![Retired {
            frame: f,
            dirty: true,
        }]);
        assert_eq!(frames.live(), 0);
        assert!(
            frames.free.lock().dirty.contains(&f),
            "no walk is pinned: the retired frame is reusable at once"
        );
        let g = frames.alloc(0).unwrap();
        assert_eq!(g, f, "no clean frame is free, so the dirty one is reused");
        assert!(frames.is_empty(g), "a dirty frame came back with entries");
    }

    /// A frame retired while a walk is pinned is not handed out again until the walk ends.
    #[test]
    fn a_frame_retired_under_a_walk_waits_for_it() {
        let frames = Frames::new(0x7f00_0000_0000).unwrap();
        let f = frames.alloc(0).unwrap();
        let walk = frames.pin();
        frames.retire(f);
        let g = frames.alloc(0).unwrap();
        assert_ne!(g, f, "reused under a walk that may still read it");
        frames.collect();
        assert!(!frames.free.lock().clean.contains(&f));
        drop(walk);
        frames.collect();
        assert!(frames.free.lock().clean.contains(&f), "the walk ended");
        assert_eq!(frames.alloc(0).unwrap(), f);
    }

    /// Past the end of the arena every fresh allocation fails (and keeps failing: the counter
    /// of fresh frames must not wrap round to the root's), and a frame given back is reused.
    #[test]
    fn an_exhausted_arena_refuses_and_reuses_what_is_given_back() {
        let frames = Frames::new(0x7f00_0000_0000).unwrap();
        let mut last = 0;
        for _ in 0..MAX_FRAMES {
            last = frames.alloc(0).unwrap();
        }
        for _ in 0..1000 {
            assert!(matches!(
                frames.alloc(0x1234_5000),
                Err(Error::NoTableMemory { iova: 0x1234_5000 })
            ));
        }
        assert_eq!(frames.live(), MAX_FRAMES);
        frames.release(last);
        assert_eq!(frames.alloc(0).unwrap(), last);
    }
}
