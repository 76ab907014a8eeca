//! The grant book-keeping an exporter needs: which ranges are granted, which were carved out
//! by `allocate` (bounce buffers, scratch windows), and which pages of a BAR window each grant
//! holds. Every exporter in the workspace keeps its grants here, so the contract's rules on
//! grants (exact ranges, unknown and forged grants, fresh allocations, a window that fills)
//! are written once.

use crate::addr::{align_up, AddrRange, Offset};
use crate::error::{Error, Result};
use crate::range_alloc::alloc_top_down;
use crate::slab::Slab;
use crate::traits::{ExportGrant, ExporterId};
use std::collections::BTreeMap;

const ALIGN: u64 = 4096;

/// One outstanding grant and what it holds.
#[derive(Debug)]
struct Held {
    grant: ExportGrant,
    /// The window pages it holds (every page its range touches), if it holds any.
    window: Option<Hold>,
    /// Whether `allocate` carved its range (released with it).
    carved: bool,
}

impl Held {
    /// Whether this is `grant`: the id names one grant for the life of the book (its slot and
    /// the slot's generation), and the exporter tells another book's grant with the same id.
    fn is(&self, grant: &ExportGrant) -> bool {
        self.grant.id == grant.id && self.grant.exporter == grant.exporter
    }
}

/// Window pages a grant holds: how many, and the first one where the window places grants.
#[derive(Debug, Clone, Copy)]
struct Hold {
    pages: u64,
    slot: Option<u64>,
}

/// A BAR window of `pages` 4 KiB pages through which device memory is reached.
#[derive(Debug)]
struct Window {
    pages: u64,
    used: u64,
    /// Where grants are placed (first slot → pages held), top down and first fit, when the
    /// window maps each grant at its own slot; `None` when it is a budget of pages only.
    slots: Option<BTreeMap<u64, u64>>,
}

/// The grants of one exporter whose memory object is `size` bytes: [`export`](Self::export)
/// checks the range, [`allocate`](Self::allocate) carves fresh page-aligned space (top down, from
/// the pool, by default the whole object), and [`release`](Self::release) forgets a grant and
/// frees what it carved and the window pages it held. With [`with_window`](Self::with_window),
/// every grant also holds window pages, and an export that does not fit is refused with
/// [`Error::WindowFull`].
#[derive(Debug)]
pub struct GrantBook {
    exporter: ExporterId,
    size: u64,
    /// What each outstanding grant holds, in slots: a grant's id is its slot in the low 32 bits
    /// and the slot's generation above, so a lookup is an index and a compare, and an old grant
    /// of a reused slot is told apart by its generation (see [`grant_slot`]).
    grants: Slab<Held>,
    /// Ranges handed out by `allocate`: start → length.
    carved: BTreeMap<u64, u64>,
    /// Where `allocate` carves: the first and last byte.
    pool: Option<(u64, u64)>,
    window: Option<Window>,
}

impl GrantBook {
    /// An empty book for `exporter`'s object of `size` bytes, allocating anywhere in it.
    pub fn new(exporter: ExporterId, size: u64) -> Self {
        Self {
            exporter,
            size,
            grants: Slab::default(),
            carved: BTreeMap::new(),
            pool: size.checked_sub(1).map(|last| (0, last)),
            window: None,
        }
    }

    /// The same book, allocating only inside `pool` (host RAM's bounce pool, say; an empty
    /// pool refuses every allocation); an error if the pool is not inside the object.
    pub fn with_pool(mut self, pool: AddrRange<Offset>) -> Result<Self> {
        if pool.is_empty() {
            self.pool = None;
            return Ok(self);
        }
        let last = pool.last().filter(|l| l.0 < self.size);
        let Some(last) = last else {
            return Err(self.out_of_bounds(pool));
        };
        self.pool = Some((pool.start().0, last.0));
        Ok(self)
    }

    /// The same book, where every grant holds the window pages its range touches, out of a
    /// budget of `pages` (a BAR that maps the whole object, reached through a limited window).
    pub fn with_window(mut self, pages: u64) -> Self {
        self.window = Some(Window {
            pages,
            used: 0,
            slots: None,
        });
        self
    }

    /// The same book, where every grant holds a run of `pages` window pages of its own (a BAR
    /// aperture smaller than the object that maps each grant at its slot: see
    /// [`window_slot`](Self::window_slot)). A free run must hold the grant, so the window can
    /// fragment.
    pub fn with_placed_window(mut self, pages: u64) -> Self {
        self.window = Some(Window {
            pages,
            used: 0,
            slots: Some(BTreeMap::new()),
        });
        self
    }

    /// The memory left the BAR (it migrated to host RAM): later grants hold no window pages;
    /// outstanding ones are forgotten as usual when released.
    pub fn leave_window(&mut self) {
        self.window = None;
    }

    fn out_of_bounds(&self, range: AddrRange<Offset>) -> Error {
        Error::OutOfBounds {
            kind: "offset",
            start: range.start().0,
            len: range.len(),
            limit_start: 0,
            limit_len: self.size,
        }
    }

    /// The window pages for `range`, if the book has a window; [`Error::WindowFull`] if the
    /// pages the range touches do not fit (in a placed window: no free run holds them).
    fn take_window(&mut self, range: AddrRange<Offset>) -> Result<Option<Hold>> {
        let Some(w) = self.window.as_mut() else {
            return Ok(None);
        };
        let pages = range.pages(ALIGN)?.len() / ALIGN;
        let full = Error::WindowFull {
            exporter: self.exporter,
            requested: range.len(),
            available: (w.pages - w.used) * ALIGN,
        };
        let slot = match w.slots.as_mut() {
            None if w.used + pages > w.pages => return Err(full),
            None => None,
            Some(slots) => {
                let at = w
                    .pages
                    .checked_sub(1)
                    .and_then(|last| alloc_top_down(slots, 0, last, pages, 1))
                    .ok_or(full)?;
                slots.insert(at, pages);
                Some(at)
            }
        };
        w.used += pages;
        Ok(Some(Hold { pages, slot }))
    }

    fn insert(&mut self, range: AddrRange<Offset>, pin: bool, carved: bool) -> Result<ExportGrant> {
        let Some(slot) = self.grants.next_slot() else {
            return Err(Error::TooManyGrants {
                exporter: self.exporter,
                limit: Slab::<Held>::CAPACITY,
            });
        };
        let window = self.take_window(range)?;
        let grant = ExportGrant {
            exporter: self.exporter,
            // The slot's generation never repeats (the slab retires a slot before it wraps), so
            // no two grants of this book ever have the same id.
            id: (u64::from(self.grants.generation(slot)) << 32) | u64::from(slot),
            range,
            pinned: pin,
        };
        let held = Held {
            grant: grant.clone(),
            window,
            carved,
        };
        if self.grants.insert(held).is_none() {
            unreachable!("next_slot named a free slot");
        }
        Ok(grant)
    }

    /// A grant of `range`, which must lie inside the memory object (and fit the window).
    pub fn export(&mut self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        if range.is_empty() || range.end().0 > self.size {
            return Err(self.out_of_bounds(range));
        }
        self.insert(range, pin, false)
    }

    /// A grant of `len` fresh bytes (page aligned) of the pool that no other allocation holds.
    pub fn allocate(&mut self, len: u64, pin: bool) -> Result<ExportGrant> {
        let size = align_up(len, ALIGN)
            .filter(|&s| s > 0)
            .ok_or(Error::EmptyRange { what: "allocation" })?;
        let (lo, hi) = self.pool.unwrap_or((0, 0));
        let used: u64 = self.carved.values().sum();
        let at = self
            .pool
            .and_then(|_| alloc_top_down(&self.carved, lo, hi, size, ALIGN))
            .ok_or(Error::WindowFull {
                exporter: self.exporter,
                requested: len,
                available: self.pool.map_or(0, |_| hi - lo + 1 - used),
            })?;
        let grant = self.insert(AddrRange::new(Offset(at), size)?, pin, true)?;
        self.carved.insert(at, size);
        Ok(grant)
    }

    fn held(&self, grant: &ExportGrant) -> Result<&Held> {
        // A match, not `ok_or`: the error would be built and dropped on every lookup.
        match self.grants.get(grant_slot(grant.id)) {
            Some(h) if h.is(grant) => Ok(h),
            _ => Err(self.unknown(grant)),
        }
    }

    fn unknown(&self, grant: &ExportGrant) -> Error {
        Error::UnknownGrant {
            exporter: self.exporter,
            grant: grant.id,
        }
    }

    /// The grant as recorded; [`Error::UnknownGrant`] if it is not outstanding (released, or
    /// another exporter's, whatever its id).
    pub fn get(&self, grant: &ExportGrant) -> Result<&ExportGrant> {
        self.held(grant).map(|h| &h.grant)
    }

    /// The first window page the grant holds in a placed window (`None` when it holds none:
    /// the window is a budget or there is none, or the grant was made after
    /// [`leave_window`](Self::leave_window)).
    pub fn window_slot(&self, grant: &ExportGrant) -> Result<Option<u64>> {
        self.held(grant).map(|h| h.window.and_then(|w| w.slot))
    }

    /// Forgets a grant, freeing what it carved and its window pages; an error if it is unknown
    /// (released twice, or another exporter's).
    pub fn release(&mut self, grant: &ExportGrant) -> Result<()> {
        let Some(h) = self.grants.remove_if(grant_slot(grant.id), |h| h.is(grant)) else {
            return Err(self.unknown(grant));
        };
        if h.carved {
            self.carved.remove(&h.grant.range.start().0);
        }
        if let (Some(hold), Some(w)) = (h.window, self.window.as_mut()) {
            w.used -= hold.pages;
            if let (Some(slot), Some(slots)) = (hold.slot, w.slots.as_mut()) {
                slots.remove(&slot);
            }
        }
        Ok(())
    }

    /// Grants outstanding.
    pub fn live(&self) -> usize {
        self.grants.len()
    }
}

/// The slot a grant id names (its low 32 bits).
fn grant_slot(id: u64) -> u32 {
    id as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(start: u64, len: u64) -> AddrRange<Offset> {
        AddrRange::new(Offset(start), len).unwrap()
    }

    #[test]
    fn a_window_fills_and_frees_by_the_pages_a_grant_touches() {
        let mut book = GrantBook::new(ExporterId::fresh(), 1 << 20).with_placed_window(3);
        // Two pages: it crosses a page boundary.
        let a = book.export(r(0xfff, 2), false).unwrap();
        let b = book.export(r(0x5000, 0x1000), false).unwrap();
        assert!(matches!(
            book.export(r(0, 1), false),
            Err(Error::WindowFull { available: 0, .. })
        ));
        assert_ne!(book.window_slot(&a).unwrap(), book.window_slot(&b).unwrap());
        book.release(&a).unwrap();
        book.export(r(0, 0x2000), false).unwrap();
        book.leave_window();
        let c = book.export(r(0, 0x10000), false).unwrap();
        assert_eq!(book.window_slot(&c).unwrap(), None);
        book.release(&b).unwrap();
    }

    /// A released grant whose slot a later grant took is unknown, and releasing it again leaves
    /// the later grant alone; so is one whose slot went round all its generations (the slot is
    /// retired, never reused).
    #[test]
    fn a_released_grant_stays_unknown_after_its_slot_is_reused() {
        let mut book = GrantBook::new(ExporterId::fresh(), 1 << 20);
        let a = book.export(r(0, 0x1000), false).unwrap();
        book.release(&a).unwrap();
        let b = book.export(r(0, 0x1000), false).unwrap();
        assert_eq!(grant_slot(a.id), grant_slot(b.id), "b took a's slot");
        assert_ne!(a.id, b.id);
        assert!(matches!(book.release(&a), Err(Error::UnknownGrant { .. })));
        assert!(matches!(book.get(&a), Err(Error::UnknownGrant { .. })));
        assert_eq!(book.get(&b).unwrap(), &b);
        assert_eq!(book.live(), 1);
        book.release(&b).unwrap();
        assert_eq!(book.live(), 0);
        // The slot's last generation: released, the slot is retired and the next grant takes
        // another, whose id is new too.
        book.grants.set_generation(grant_slot(b.id), u32::MAX);
        let last = book.export(r(0, 0x1000), false).unwrap();
        assert_eq!(grant_slot(last.id), grant_slot(b.id));
        book.release(&last).unwrap();
        let next = book.export(r(0, 0x1000), false).unwrap();
        assert_ne!(grant_slot(next.id), grant_slot(last.id));
        for old in [&a, &b, &last] {
            assert!(matches!(book.release(old), Err(Error::UnknownGrant { .. })));
        }
        book.release(&next).unwrap();
    }

    #[test]
    fn a_budget_window_counts_pages_and_never_fragments() {
        let mut book = GrantBook::new(ExporterId::fresh(), 1 << 20).with_window(3);
        let held: Vec<_> = (0..3)
            .map(|i| book.export(r(i << 12, 1), false).unwrap())
            .collect();
        assert!(book.export(r(0, 1), false).is_err());
        book.release(&held[0]).unwrap();
        book.release(&held[2]).unwrap();
        // Two free pages, not adjacent: a budget takes a two-page grant anyway.
        let g = book.export(r(0, 0x2000), false).unwrap();
        assert_eq!(book.window_slot(&g).unwrap(), None);
    }

    #[test]
    fn forged_grants_are_unknown_and_allocations_stay_in_the_pool() {
        let id = ExporterId::fresh();
        let mut book = GrantBook::new(id, 0x10_0000)
            .with_pool(r(0xf_0000, 0x1_0000))
            .unwrap();
        let g = book.allocate(0x8000, true).unwrap();
        assert_eq!(g.range, r(0xf_8000, 0x8000));
        let h = book.allocate(0x8000, true).unwrap();
        assert_eq!(h.range, r(0xf_0000, 0x8000));
        assert!(matches!(
            book.allocate(1, false),
            Err(Error::WindowFull { .. })
        ));
        let forged = ExportGrant {
            exporter: ExporterId(id.0 ^ 1),
            ..g.clone()
        };
        assert!(matches!(
            book.release(&forged),
            Err(Error::UnknownGrant { .. })
        ));
        book.release(&g).unwrap();
        assert_eq!(book.allocate(0x8000, false).unwrap().range, g.range);
        assert!(GrantBook::new(id, 0x1000).with_pool(r(0, 0x2000)).is_err());
    }

    proptest! {
        /// Against a model (the set of live carved ranges): allocations never overlap, stay
        /// inside the object, and a release gives the space back.
        #[test]
        fn carved_ranges_never_overlap(ops in proptest::collection::vec((any::<bool>(), 1u64..0x9000), 1..60)) {
            let mut book = GrantBook::new(ExporterId::fresh(), 0x40000);
            let mut live: Vec<ExportGrant> = Vec::new();
            for (alloc, len) in ops {
                if alloc || live.is_empty() {
                    match book.allocate(len, false) {
                        Ok(g) => {
                            prop_assert!(g.range.end().0 <= 0x40000);
                            prop_assert!(g.range.len() >= len);
                            for other in &live {
                                prop_assert!(!g.range.overlaps(&other.range));
                            }
                            live.push(g);
                        }
                        Err(Error::WindowFull { .. }) => {
                            // Refused only when no free gap (all boundaries are page aligned)
                            // holds the page-rounded size.
                            let size = align_up(len, ALIGN).unwrap();
                            let mut taken: Vec<(u64, u64)> =
                                live.iter().map(|g| (g.range.start().0, g.range.end().0)).collect();
                            taken.sort_unstable();
                            let mut cursor = 0;
                            for (s, e) in taken.into_iter().chain([(0x40000, 0x40000)]) {
                                prop_assert!(s < cursor || s - cursor < size, "a gap at {cursor:#x} fits {size:#x}");
                                cursor = cursor.max(e);
                            }
                        }
                        Err(e) => prop_assert!(false, "{e}"),
                    }
                } else {
                    let g = live.swap_remove(len as usize % live.len());
                    book.release(&g).unwrap();
                    prop_assert!(book.release(&g).is_err());
                }
                prop_assert_eq!(book.live(), live.len());
            }
        }
    }
}
