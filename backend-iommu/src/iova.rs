//! The IOVA allocator: a tree of free ranges searched top-down below a limit, with size-aligned
//! allocations, and per-thread caches of recently freed sizes in front of it (Linux's
//! `alloc_iova_fast` rcache: magazines of 127 entries per power-of-two class of 1–32 pages, a
//! shared depot behind them). In front of the magazines, single pages of the allocator a thread
//! used last sit in a small thread-local array without a destructor (the `front` module): the
//! DMA-API case, one page at a time, costs a thread-local access and a compare.

use p2p_core::addr::align_down;
use p2p_core::{Error, Result};
use parking_lot::Mutex;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

mod front;

const PAGE_SHIFT: u32 = 12;
/// Size classes cached: 1, 2, 4, … 32 pages.
const CLASSES: usize = 6;
/// Entries per magazine.
const MAG: usize = 127;
/// Full magazines the depot keeps per class before freeing to the tree.
const DEPOT: usize = 32;
/// Ranges an empty magazine is refilled with at once: sixteen 4 KiB pages are two cache lines of
/// last-level page-table entries, the pair an adjacent-line prefetcher fetches together (so two
/// threads working in freshly carved runs never share a pair either; freed ranges can still
/// reach another thread through the depot).
const REFILL: u64 = 16;

/// The shared tree and depot.
#[derive(Debug)]
struct Shared {
    /// Free ranges: start → end (exclusive), in bytes; never adjacent (merged on free).
    free: Mutex<BTreeMap<u64, u64>>,
    /// Full magazines per class.
    depot: Mutex<Vec<Vec<Vec<u64>>>>,
}

/// A thread's magazines for one allocator.
#[derive(Debug, Default)]
struct ThreadCache {
    loaded: [Vec<u64>; CLASSES],
    prev: [Vec<u64>; CLASSES],
}

/// This thread's caches, one per live allocator. When the thread exits, what they hold goes back
/// to the trees (Linux frees a dead CPU's magazines likewise).
#[derive(Debug, Default)]
struct Caches(Vec<(Weak<Shared>, ThreadCache)>);

impl Drop for Caches {
    fn drop(&mut self) {
        // The front has no destructor: it is still there, and its pages are one entry's.
        let front = front::take();
        for (weak, tc) in self.0.drain(..) {
            if let Some(shared) = weak.upgrade() {
                let alloc = IovaAllocator { shared };
                for c in 0..CLASSES {
                    for a in tc.loaded[c].iter().chain(tc.prev[c].iter()) {
                        alloc.tree_free(*a, (1u64 << c) << PAGE_SHIFT);
                    }
                }
                for f in front.iter().filter(|f| f.owner == alloc.id()) {
                    for &a in &f.pages[..f.len] {
                        alloc.tree_free(a, 1 << PAGE_SHIFT);
                    }
                }
            }
        }
    }
}

thread_local! {
    // Const-initialised: no lazy-init check on every access.
    static CACHES: RefCell<Caches> = const { RefCell::new(Caches(Vec::new())) };
}

/// An IOVA allocator over `[start, end)`.
#[derive(Debug, Clone)]
pub struct IovaAllocator {
    shared: Arc<Shared>,
}

/// The cache class of a size in pages, if cached.
fn class(pages: u64) -> Option<usize> {
    (pages <= 32).then(|| pages.next_power_of_two().trailing_zeros() as usize)
}

impl IovaAllocator {
    /// All of `[start, end)` free (page aligned).
    pub fn new(start: u64, end: u64) -> Self {
        let mut free = BTreeMap::new();
        if end > start {
            free.insert(start, end);
        }
        Self {
            shared: Arc::new(Shared {
                free: Mutex::new(free),
                depot: Mutex::new(vec![Vec::new(); CLASSES]),
            }),
        }
    }

    /// Takes `[start, end)` out of the free space (a reserved region); overlaps are fine.
    pub fn reserve(&self, start: u64, end: u64) {
        let mut free = self.shared.free.lock();
        let hit: Vec<(u64, u64)> = free
            .range(..end)
            .filter(|(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in hit {
            free.remove(&s);
            if s < start {
                free.insert(s, start);
            }
            if e > end {
                free.insert(end, e);
            }
        }
    }

    /// Allocates `len` bytes (rounded up to pages; sizes up to 32 pages to a power of two),
    /// aligned to the size's power of two, with the last byte at most `limit`.
    #[inline]
    pub fn alloc(&self, len: u64, limit: u64) -> Result<u64> {
        let pages = len.div_ceil(1 << PAGE_SHIFT).max(1);
        if pages == 1 {
            if let Some(a) = front::pop(self.id(), limit) {
                return Ok(a);
            }
            return self.alloc_page_behind_front(limit);
        }
        if let Some(c) = class(pages) {
            let size = (1u64 << c) << PAGE_SHIFT;
            if let Some(a) = self.cache_pop(c, size, limit) {
                return Ok(a);
            }
            return self.alloc_uncached(c, size, limit);
        }
        let size = pages
            .checked_shl(PAGE_SHIFT)
            .ok_or(Error::IovaExhausted { len, limit })?;
        self.tree_alloc(size, limit)
    }

    /// This allocator's identity: the address of its shared state.
    fn id(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    /// One page when the front could not give one: the front goes back to its owner's
    /// magazines, a page comes from this allocator's magazines (or a refill, or the tree), and
    /// the front is refilled with up to half its size from the magazine, for the pages after.
    #[cold]
    #[inline(never)]
    fn alloc_page_behind_front(&self, limit: u64) -> Result<u64> {
        const PAGE: u64 = 1 << PAGE_SHIFT;
        self.hand_back_front();
        let a = match self.cache_pop(0, PAGE, limit) {
            Some(a) => a,
            None => self.alloc_uncached(0, PAGE, limit)?,
        };
        // Straight from the magazine into the front (no vector in between: this runs every
        // half a front of allocations).
        with_cache(&self.shared, |tc| {
            let loaded = &mut tc.loaded[0];
            let keep = loaded.len().saturating_sub(front::FRONT / 2);
            front::adopt(self.id(), &loaded[keep..]);
            loaded.truncate(keep);
        });
        Ok(a)
    }

    /// A page the front had no room for: the front goes back to its owner's magazines and
    /// starts again with this page, now owned by this allocator.
    #[cold]
    #[inline(never)]
    fn free_page_behind_front(&self, addr: u64) {
        self.hand_back_front();
        // The thread's cache entry for this allocator must exist before the front names it.
        with_cache(&self.shared, |_| ());
        front::adopt(self.id(), &[addr]);
    }

    /// Empties the front into its owner's magazines (this allocator's, or another live one's).
    fn hand_back_front(&self) {
        let Some(f) = front::take() else { return };
        if f.owner == 0 || f.len == 0 {
            return;
        }
        let owner = if f.owner == self.id() {
            Some(self.clone())
        } else {
            CACHES.with(|cell| {
                cell.borrow()
                    .0
                    .iter()
                    .find(|(w, _)| w.as_ptr() as usize == f.owner)
                    .and_then(|(w, _)| w.upgrade())
                    .map(|shared| IovaAllocator { shared })
            })
        };
        if let Some(owner) = owner {
            for &a in &f.pages[..f.len] {
                owner.cache_push(0, a);
            }
        }
    }

    /// A cached size class whose magazines had nothing that fits: refill, or the tree. Out of
    /// line, so that the cached path stays a few instructions.
    #[cold]
    #[inline(never)]
    fn alloc_uncached(&self, c: usize, size: u64, limit: u64) -> Result<u64> {
        if let Some(a) = self.refill(c, size, limit) {
            return Ok(a);
        }
        self.tree_alloc(size, limit).or_else(|_| {
            // Linux's flush-and-retry-once: give every cached range back, then try again.
            self.flush_caches();
            self.tree_alloc(size, limit)
        })
    }

    /// Frees an allocation made by [`alloc`](Self::alloc) with the same `len`.
    #[inline]
    pub fn free(&self, addr: u64, len: u64) {
        let pages = len.div_ceil(1 << PAGE_SHIFT).max(1);
        if pages == 1 {
            if !front::push(self.id(), addr) {
                self.free_page_behind_front(addr);
            }
            return;
        }
        match class(pages) {
            Some(c) => self.cache_push(c, addr),
            None => self.tree_free(addr, pages << PAGE_SHIFT),
        }
    }

    /// Bytes free in the tree (cached ranges count as used).
    pub fn tree_free_bytes(&self) -> u64 {
        self.shared.free.lock().iter().map(|(s, e)| e - s).sum()
    }

    /// Gives every range cached by this thread and the depot back to the tree. (Other threads'
    /// magazines stay with them, at most 2 × 127 entries per class each.)
    pub fn flush_caches(&self) {
        self.hand_back_front();
        let mut mine: Vec<(usize, u64)> = Vec::new();
        with_cache(&self.shared, |tc| {
            for c in 0..CLASSES {
                mine.extend(tc.loaded[c].drain(..).map(|a| (c, a)));
                mine.extend(tc.prev[c].drain(..).map(|a| (c, a)));
            }
        });
        let depot = std::mem::replace(&mut *self.shared.depot.lock(), vec![Vec::new(); CLASSES]);
        for (c, mags) in depot.into_iter().enumerate() {
            mine.extend(mags.into_iter().flatten().map(|a| (c, a)));
        }
        for (c, a) in mine {
            self.tree_free(a, (1u64 << c) << PAGE_SHIFT);
        }
    }

    #[inline]
    fn cache_pop(&self, c: usize, size: u64, limit: u64) -> Option<u64> {
        with_cache(&self.shared, |tc| {
            // The common case first: the most recently freed range fits.
            let loaded = &mut tc.loaded[c];
            match loaded.last() {
                Some(&a) if fits(a, size, limit) => {
                    loaded.pop();
                    Some(a)
                }
                _ => self.cache_pop_slow(tc, c, size, limit),
            }
        })
    }

    /// [`cache_pop`](Self::cache_pop) when the last range does not fit: search the magazines,
    /// swap them, or take one from the depot.
    #[cold]
    #[inline(never)]
    fn cache_pop_slow(&self, tc: &mut ThreadCache, c: usize, size: u64, limit: u64) -> Option<u64> {
        let fits = |a: &u64| fits(*a, size, limit);
        for _ in 0..2 {
            if let Some(i) = tc.loaded[c].iter().rposition(fits) {
                return Some(tc.loaded[c].swap_remove(i));
            }
            if !tc.prev[c].is_empty() {
                std::mem::swap(&mut tc.loaded[c], &mut tc.prev[c]);
                continue;
            }
            // Take a full magazine from the depot.
            let mag = self.shared.depot.lock()[c].pop()?;
            let old = std::mem::replace(&mut tc.loaded[c], mag);
            tc.prev[c] = old;
        }
        None
    }

    /// Refills this thread's empty magazine with a run of [`REFILL`] ranges of class `c` carved
    /// from one allocation, and returns the first. A thread then works in IOVAs of its own: the
    /// page-table entries of two threads' IOVAs do not share a pair of cache lines (see [`REFILL`]), so
    /// their maps and unmaps do not bounce it between cores. `None` if the tree has no such run
    /// under `limit` (the caller then allocates one range).
    fn refill(&self, c: usize, size: u64, limit: u64) -> Option<u64> {
        let run = self.tree_alloc(size * REFILL, limit).ok()?;
        // Handed out top down, as the tree would: the highest now, the rest popped from the end.
        with_cache(&self.shared, |tc| {
            tc.loaded[c].extend((0..REFILL - 1).map(|i| run + i * size));
        });
        Some(run + (REFILL - 1) * size)
    }

    #[inline]
    fn cache_push(&self, c: usize, addr: u64) {
        let spill = with_cache(&self.shared, |tc| {
            let loaded = &mut tc.loaded[c];
            if loaded.len() < MAG {
                loaded.push(addr);
                return None;
            }
            swap_or_spill(tc, c, addr)
        });
        if let Some(full) = spill {
            self.spill(c, full);
        }
    }

    /// Gives a full magazine to the depot, or to the tree when the depot is full.
    #[cold]
    #[inline(never)]
    fn spill(&self, c: usize, full: Vec<u64>) {
        let mut depot = self.shared.depot.lock();
        if depot[c].len() < DEPOT {
            depot[c].push(full);
        } else {
            drop(depot);
            for a in full {
                self.tree_free(a, (1u64 << c) << PAGE_SHIFT);
            }
        }
    }

    /// Top-down first fit in the tree, size-aligned.
    fn tree_alloc(&self, size: u64, limit: u64) -> Result<u64> {
        let align = size.checked_next_power_of_two().unwrap_or(size);
        let mut free = self.shared.free.lock();
        let found = free.range(..=limit).rev().find_map(|(&s, &e)| {
            let top = e.min(limit.saturating_add(1));
            let a = align_down(top.checked_sub(size)?, align);
            (a >= s && a + size <= top).then_some((s, e, a))
        });
        let (s, e, a) = found.ok_or(Error::IovaExhausted { len: size, limit })?;
        free.remove(&s);
        if s < a {
            free.insert(s, a);
        }
        if a + size < e {
            free.insert(a + size, e);
        }
        Ok(a)
    }

    fn tree_free(&self, addr: u64, size: u64) {
        let mut free = self.shared.free.lock();
        let (mut s, mut e) = (addr, addr + size);
        if let Some((&ps, &pe)) = free.range(..s).next_back() {
            if pe == s {
                free.remove(&ps);
                s = ps;
            }
        }
        if let Some(&ne) = free.get(&e) {
            free.remove(&e);
            e = ne;
        }
        free.insert(s, e);
    }
}

/// Whether the range of `size` bytes at `a` ends at or below `limit`.
fn fits(a: u64, size: u64, limit: u64) -> bool {
    a.checked_add(size - 1).is_some_and(|last| last <= limit)
}

/// The loaded magazine of class `c` is full: swap in the previous one if it has room, otherwise
/// start a new one and return the full one for the depot.
#[cold]
#[inline(never)]
fn swap_or_spill(tc: &mut ThreadCache, c: usize, addr: u64) -> Option<Vec<u64>> {
    if tc.prev[c].len() < MAG {
        std::mem::swap(&mut tc.loaded[c], &mut tc.prev[c]);
        tc.loaded[c].push(addr);
        return None;
    }
    let full = std::mem::replace(&mut tc.loaded[c], Vec::with_capacity(MAG));
    tc.loaded[c].push(addr);
    Some(full)
}

/// Runs `f` on this thread's cache for `shared`, dropping caches of allocators that are gone.
/// The cache of the allocator used last is kept first, so the common case (a thread working
/// with one domain) costs one comparison instead of a search.
///
/// Inlined, and `f` written once: the cached path of an allocation is this and a magazine pop.
#[inline(always)]
fn with_cache<T>(shared: &Arc<Shared>, f: impl FnOnce(&mut ThreadCache) -> T) -> T {
    CACHES.with(|cell| {
        let caches = &mut cell.borrow_mut().0;
        let mine = |(w, _): &(Weak<Shared>, ThreadCache)| w.as_ptr() == Arc::as_ptr(shared);
        if !caches.first().is_some_and(mine) {
            front(caches, shared);
        }
        f(&mut caches[0].1)
    })
}

/// Moves `shared`'s cache to the front of `caches`, making it if this thread has none yet.
#[cold]
#[inline(never)]
fn front(caches: &mut Vec<(Weak<Shared>, ThreadCache)>, shared: &Arc<Shared>) {
    match caches
        .iter()
        .position(|(w, _)| w.as_ptr() == Arc::as_ptr(shared))
    {
        Some(i) => caches.swap(0, i),
        None => {
            // A front whose allocator is gone is emptied before its entry (whose `Weak` makes
            // the front's owner address an identity) goes.
            front::forget_if(|owner| {
                caches
                    .iter()
                    .any(|(w, _)| w.as_ptr() as usize == owner && w.strong_count() == 0)
            });
            caches.retain(|(w, _)| w.strong_count() > 0);
            caches.push((Arc::downgrade(shared), ThreadCache::default()));
            let last = caches.len() - 1;
            caches.swap(0, last);
        }
    }
}

#[cfg(test)]
mod tests;
