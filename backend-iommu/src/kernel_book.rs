//! What a domain whose page tables the kernel owns (VFIO type1, iommufd) must remember itself:
//! the kernel takes addresses or files and hides its tables, while the p2p-core trait speaks
//! physical addresses and promises `translate`. Both kernel domains keep the same three books:
//!
//! - [`IovaLayout`]: the kernel's usable IOVA ranges, checked, as an aperture and reserved gaps;
//! - [`Windows`]: which physical ranges this process can name to the kernel, and how (a virtual
//!   address, a file);
//! - [`MapBook`]: the maps made, so that `translate` answers and `unmap` asks the kernel only
//!   for what the trait promises.

use crate::iova::IovaAllocator;
use p2p_core::access::Access;
use p2p_core::addr::{AddrRange, Iova, PhysAddr};
use p2p_core::traits::{check_map_args, ReservedKind, ReservedRegion, Translation};
use p2p_core::{Error, Result};
use parking_lot::Mutex;
use std::collections::BTreeMap;

/// x86's MSI doorbell window, which VT-d reports as a hole in the IOVA ranges.
const MSI: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

/// The kernel's usable IOVA ranges as the trait describes them, and the allocator of IOVAs in
/// them.
#[derive(Debug)]
pub(crate) struct IovaLayout {
    /// From the first usable IOVA to the last.
    pub aperture: AddrRange<Iova>,
    /// The gaps between usable ranges (the MSI window named as such).
    pub reserved: Vec<ReservedRegion>,
    /// IOVAs in the aperture outside the reserved gaps (IOVA 0 is never handed out).
    iova: IovaAllocator,
}

impl IovaLayout {
    /// Checks the kernel's usable ranges (inclusive `(start, last)` pairs) before they are
    /// used: at least one, each well formed, in increasing order and disjoint. A reply that
    /// breaks this is refused with [`Error::KernelReply`] naming `call`, never indexed blindly.
    pub fn from_ranges(ranges: &[(u64, u64)], call: &'static str) -> Result<Self> {
        let bad = |detail: String| Error::KernelReply { call, detail };
        let (Some(&(first, _)), Some(&(_, last))) = (ranges.first(), ranges.last()) else {
            return Err(bad("no usable IOVA range".into()));
        };
        if let Some(&(s, l)) = ranges.iter().find(|&&(s, l)| s > l) {
            return Err(bad(format!("range {s:#x}..={l:#x} ends before it starts")));
        }
        if let Some(w) = ranges.windows(2).find(|w| w[1].0 <= w[0].1) {
            return Err(bad(format!(
                "ranges {:#x}..={:#x} and {:#x}..={:#x} overlap or are out of order",
                w[0].0, w[0].1, w[1].0, w[1].1
            )));
        }
        // The aperture is half open: the very last byte of the 64-bit space is lost.
        let aperture = AddrRange::new(Iova(first), (last - first).saturating_add(1))?;
        let mut reserved = Vec::new();
        for w in ranges.windows(2) {
            // Sorted and disjoint (checked), so w[0].1 < w[1].0 and the + 1 cannot wrap.
            let (gap_start, gap_end) = (w[0].1 + 1, w[1].0);
            if gap_end > gap_start {
                let kind = if gap_start <= MSI.0 && MSI.1 < gap_end {
                    ReservedKind::Msi
                } else {
                    ReservedKind::Reserved
                };
                reserved.push(ReservedRegion {
                    range: AddrRange::new(Iova(gap_start), gap_end - gap_start)?,
                    kind,
                });
            }
        }
        let iova = IovaAllocator::new(first.max(4096), aperture.end().0);
        for r in &reserved {
            iova.reserve(r.range.start().0, r.range.end().0);
        }
        Ok(Self {
            aperture,
            reserved,
            iova,
        })
    }

    /// [`IommuDomain::alloc_iova`](p2p_core::IommuDomain::alloc_iova): `len` bytes below
    /// `limit` and the aperture's top.
    pub fn alloc(&self, len: u64, limit: u64) -> Result<Iova> {
        let top = self.aperture.last().map_or(0, |a| a.0);
        self.iova.alloc(len, limit.min(top)).map(Iova)
    }

    /// [`IommuDomain::free_iova`](p2p_core::IommuDomain::free_iova), at once: both kernels
    /// invalidate the IOTLB before their unmap returns, so nothing stale is left to wait for.
    pub fn free(&self, iova: Iova, len: u64) {
        self.iova.free(iova.0, len);
    }
}

/// Physical ranges this process can name to the kernel, each with how to name it (`B`: a
/// virtual address, a file and offset). Windows never overlap.
#[derive(Debug)]
pub(crate) struct Windows<B> {
    list: Mutex<Vec<(AddrRange<PhysAddr>, B)>>,
}

impl<B> Default for Windows<B> {
    fn default() -> Self {
        Self {
            list: Mutex::new(Vec::new()),
        }
    }
}

impl<B: Clone> Windows<B> {
    /// Registers `len` bytes at `phys`, named by `backing`; refused if it overlaps a window.
    pub fn add(&self, phys: PhysAddr, len: u64, backing: B) -> Result<()> {
        let r = AddrRange::new(phys, len)?;
        let mut list = self.list.lock();
        if let Some((o, _)) = list.iter().find(|(o, _)| o.overlaps(&r)) {
            return Err(Error::WindowOverlap {
                start: phys.0,
                len,
                other_start: o.start().0,
                other_len: o.len(),
            });
        }
        list.push((r, backing));
        Ok(())
    }

    /// The window holding all of `[phys, phys + len)`: its backing and `phys`'s offset in it.
    /// A range outside every window, or straddling one's end, is [`Error::NotRegistered`].
    pub fn lookup(&self, phys: u64, len: u64) -> Result<(B, u64)> {
        let not_registered = Error::NotRegistered { phys, len };
        let want = AddrRange::new(PhysAddr(phys), len).map_err(|_| not_registered.clone())?;
        self.list
            .lock()
            .iter()
            .find(|(w, _)| w.contains_range(&want))
            .map(|(w, b)| (b.clone(), phys - w.start().0))
            .ok_or(not_registered)
    }
}

/// One map the kernel holds for this domain.
#[derive(Debug, Clone, Copy)]
struct Mapped {
    len: u64,
    phys: u64,
    access: Access,
}

/// The maps made through a kernel domain, by IOVA. Callers hold [`MapBook::lock`] across the
/// kernel call, so that the check, the call and the record agree: two racing maps of one range
/// cannot both pass the check, and an unmap cannot forget a map made between its kernel call
/// and its update.
#[derive(Debug, Default)]
pub(crate) struct MapBook {
    maps: Mutex<BTreeMap<u64, Mapped>>,
}

/// The book, locked (see [`MapBook`]).
pub(crate) struct LockedBook<'a>(parking_lot::MutexGuard<'a, BTreeMap<u64, Mapped>>);

impl MapBook {
    /// [`IommuDomain::map_attrs`](p2p_core::IommuDomain::map_attrs) through a kernel: the
    /// arguments checked against `layout` in `page`s ([`check_map_args`]), the range checked
    /// free in the record, then `kernel()` (the map call) made under the book's lock, and the
    /// map recorded only if the kernel took it.
    #[allow(clippy::too_many_arguments)]
    pub fn map(
        &self,
        layout: &IovaLayout,
        page: u64,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        access: Access,
        kernel: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        check_map_args(&layout.aperture, &layout.reserved, iova, phys, len, page)?;
        let r = AddrRange::new(iova, len)?;
        let mut book = self.lock();
        book.check_free(r)?;
        kernel()?;
        book.insert(iova, phys, len, access);
        Ok(())
    }

    /// Locks the book for one map or unmap.
    pub fn lock(&self) -> LockedBook<'_> {
        LockedBook(self.maps.lock())
    }

    /// [`IommuDomain::unmap`](p2p_core::IommuDomain::unmap) through a kernel: `kernel(iova,
    /// len)` is asked to unmap the run [`LockedBook::unmap_span`] allows (not at all when it is
    /// empty), under the book's lock, and the record forgets what it removed.
    ///
    /// If the kernel fails, the record is kept as it was. For the run asked that is right
    /// unless something outside this domain races the same IOAS (iommufd's `EBUSY` for an area
    /// another user holds, after it removed the areas before it): the record can then keep
    /// maps the kernel dropped, and the domain is not the IOAS's only user, which it assumes.
    pub fn unmap(
        &self,
        r: AddrRange<Iova>,
        kernel: impl FnOnce(u64, u64) -> Result<u64>,
    ) -> Result<u64> {
        let mut book = self.lock();
        let span = book.unmap_span(r)?;
        if span == 0 {
            return Ok(0);
        }
        let done = kernel(r.start().0, span)?;
        book.remove_span(r.start(), span);
        Ok(done)
    }

    /// What `iova` translates to, from the record.
    pub fn translate(&self, iova: Iova) -> Option<Translation> {
        let maps = self.maps.lock();
        let (&at, m) = maps.range(..=iova.0).next_back()?;
        (iova.0 - at < m.len).then(|| Translation {
            phys: PhysAddr(m.phys + (iova.0 - at)),
            access: m.access,
        })
    }
}

impl LockedBook<'_> {
    /// Fails with [`Error::AlreadyMapped`] if any recorded map overlaps `r`.
    pub fn check_free(&self, r: AddrRange<Iova>) -> Result<()> {
        match self
            .0
            .range(..r.end().0)
            .next_back()
            .filter(|(&at, m)| at + m.len > r.start().0)
        {
            Some((&at, _)) => Err(Error::AlreadyMapped(at.max(r.start().0))),
            None => Ok(()),
        }
    }

    /// Records a map the kernel accepted.
    pub fn insert(&mut self, iova: Iova, phys: PhysAddr, len: u64, access: Access) {
        self.0.insert(
            iova.0,
            Mapped {
                len,
                phys: phys.0,
                access,
            },
        );
    }

    /// How many bytes from `r`'s start one kernel unmap may cover so that it unmaps what
    /// [`IommuDomain::unmap`](p2p_core::IommuDomain::unmap) promises: the run of recorded maps
    /// that begin back to back at the start and end by the end (0 when nothing is mapped at
    /// the start). The kernels remove every map inside their range, holes or not, while the
    /// trait stops at the first hole.
    ///
    /// A map that straddles the start or the run's end is refused here with
    /// [`Error::WouldSplit`] naming it, before the kernel is asked: the kernel keeps each map
    /// whole, and iommufd's `IOMMU_IOAS_UNMAP` removes the areas before the straddling one and
    /// only then fails (drivers/iommu/iommufd/io_pagetable.c, `iopt_unmap_iova_range`), which
    /// would leave the record and the kernel disagreeing.
    pub fn unmap_span(&self, r: AddrRange<Iova>) -> Result<u64> {
        let (start, end) = (r.start().0, r.end().0);
        let split = |at: u64, m: &Mapped| Error::WouldSplit {
            iova: start,
            len: end - start,
            page_start: at,
            page_size: m.len,
        };
        if let Some((&at, m)) = self.0.range(..start).next_back() {
            if at + m.len > start {
                return Err(split(at, m));
            }
        }
        let mut at = start;
        while let Some(m) = self.0.get(&at).filter(|_| at < end) {
            if at + m.len > end {
                return Err(split(at, m));
            }
            at += m.len;
        }
        Ok(at - start)
    }

    /// Forgets the maps that begin in `[start, start + len)` (after the kernel unmapped them).
    pub fn remove_span(&mut self, start: Iova, len: u64) {
        let gone: Vec<u64> = self
            .0
            .range(start.0..start.0.saturating_add(len))
            .map(|(&a, _)| a)
            .collect();
        for at in gone {
            self.0.remove(&at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A range is in a window only if all of it is: from the window's start, a map longer than
    /// the window is refused (it once passed, its length saturating the check to zero), as are
    /// ranges that start before, straddle the end, or lie past it.
    #[test]
    fn a_window_holds_only_ranges_wholly_inside_it() {
        let w = Windows::default();
        w.add(PhysAddr(0x10_0000), 0x1000, 7u8).unwrap();
        w.add(PhysAddr(0x20_0000), 0x4000, 8u8).unwrap();
        assert_eq!(w.lookup(0x10_0000, 0x1000), Ok((7, 0)));
        assert_eq!(w.lookup(0x20_3000, 0x1000), Ok((8, 0x3000)));
        for (phys, len) in [
            (0x10_0000, 0x2000),   // longer than the window, from its start
            (0x20_0000, 0x5000),   // the same in the larger window
            (0x0f_f000, 0x2000),   // starts before
            (0x20_3000, 0x2000),   // straddles the end
            (0x10_1000, 0x1000),   // just past the end
            (0x20_0000, u64::MAX), // absurd
        ] {
            assert_eq!(
                w.lookup(phys, len),
                Err(Error::NotRegistered { phys, len }),
                "{phys:#x}+{len:#x}"
            );
        }
    }
}
