//! [`SoftIommu`]: an [`IommuDomain`] on a real-format page table, an IOTLB with strict or lazy
//! invalidation, and the IOVA allocator.

use crate::format::Format;
use crate::iotlb::Iotlb;
use crate::iova::IovaAllocator;
use crate::pagetable::{Leaf, PageTable};
use crate::sync::Mutex;
use p2p_core::access::Access;
use p2p_core::addr::{is_aligned, AddrRange, Iova, PhysAddr};
use p2p_core::page::{PageSizes, SZ_4K};
use p2p_core::traits::{
    check_map_args, unmap_and_free_in_steps, DomainKind, IommuDomain, IotlbGather, MapAttrs,
    MapPiece, ReservedKind, ReservedRegion, Translation,
};
use p2p_core::{Error, Result};

/// How unmaps reach the IOTLB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// `unmap` invalidates the IOTLB for the range before it returns (Linux `iommu.strict=1`).
    Strict,
    /// `unmap` leaves the IOTLB alone; `flush` queues, and every `batch` queued flushes the IOTLB
    /// is invalidated, freed tables and deferred IOVA frees are released (Linux's flush queue).
    /// Until then stale translations stay usable: [`SoftIommu::queued_flushes`] is that window.
    Lazy {
        /// Queued flushes that force the real one (Linux: 256).
        batch: usize,
    },
}

#[derive(Debug, Default)]
struct Queue {
    pending: usize,
    frees: Vec<(u64, u64)>,
    /// A lazy unmap removed entries the IOTLB may still hold, and no drain has run since: a
    /// freed IOVA range must wait for the drain even when no flush is queued yet.
    unflushed: bool,
}

/// A software IOMMU domain in page-table format `F`.
///
/// ```
/// use backend_iommu::{FlushPolicy, SoftIommu, VtdSecondLevel};
/// use p2p_core::prelude::*;
/// let d = SoftIommu::<VtdSecondLevel>::new(FlushPolicy::Strict).unwrap();
/// let iova = d.alloc_iova(2 << 20, dma_mask(32)).unwrap();
/// d.map(iova, PhysAddr(0x4000_0000), 2 << 20, Access::READ).unwrap();
/// assert_eq!(d.translate(Iova(iova.0 + 42)).unwrap().phys, PhysAddr(0x4000_002a));
/// assert_eq!(d.unmap(iova, 2 << 20).unwrap(), 2 << 20);
/// ```
#[derive(Debug)]
pub struct SoftIommu<F: Format> {
    /// Shared by every thread without a lock: see the pagetable module.
    table: PageTable<F>,
    iotlb: Iotlb,
    iova: IovaAllocator,
    aperture: AddrRange<Iova>,
    reserved: Vec<ReservedRegion>,
    policy: FlushPolicy,
    queue: Mutex<Queue>,
}

/// Where page-table frames live in the simulated physical address space (far above RAM).
const FRAMES_BASE: u64 = 0x7f00_0000_0000;

impl<F: Format> SoftIommu<F> {
    /// A translated domain with a 2^IAS aperture and the x86 MSI window reserved.
    pub fn new(policy: FlushPolicy) -> Result<Self> {
        let aperture = AddrRange::new(Iova(0), 1u64 << F::IAS)?;
        let mut d = Self {
            table: PageTable::new(FRAMES_BASE)?,
            iotlb: Iotlb::default(),
            // IOVA 0 is never handed out.
            iova: IovaAllocator::new(SZ_4K, 1u64 << F::IAS),
            aperture,
            reserved: Vec::new(),
            policy,
            queue: Mutex::default(),
        };
        d.reserve(
            AddrRange::new(Iova(0xfee0_0000), 0x10_0000)?,
            ReservedKind::Msi,
        );
        Ok(d)
    }

    /// Reserves a region: no allocation or map may touch it.
    pub fn reserve(&mut self, range: AddrRange<Iova>, kind: ReservedKind) {
        self.iova.reserve(range.start().0, range.end().0);
        self.reserved.push(ReservedRegion { range, kind });
    }

    /// The IOVA allocator.
    pub fn allocator(&self) -> &IovaAllocator {
        &self.iova
    }

    /// Page-table frames in use.
    pub fn live_frames(&self) -> usize {
        self.table.live_frames()
    }

    /// Physical address of the root table.
    pub fn root_phys(&self) -> u64 {
        self.table.root_phys()
    }

    /// Limits the page-table frames in use to `limit` (a budget of table memory; `None`: no
    /// limit): an allocation beyond it fails with [`Error::NoTableMemory`].
    pub fn set_frame_limit(&self, limit: Option<usize>) {
        self.table.frames().set_limit(limit);
    }

    /// Fault injection inside the page table: every frame allocation asks `fault` (given the IOVA
    /// it is for) and fails with [`Error::NoTableMemory`] if it says so, so a map can fail midway
    /// and its rollback is exercised. The simulated machine connects its fault injector here.
    pub fn set_fault_hook(&self, fault: Option<crate::frames::FrameFault>) {
        self.table.frames().set_fault(fault);
    }

    /// The leaf mapping `iova` (page-table walk, no IOTLB).
    pub fn leaf(&self, iova: u64) -> Option<Leaf> {
        self.table.translate(iova)
    }

    /// Flushes queued and not yet performed (lazy): while non-zero, unmapped IOVAs may still
    /// translate through the IOTLB.
    pub fn queued_flushes(&self) -> usize {
        self.queue.lock().pending
    }

    /// IOTLB (hits, misses, invalidations).
    pub fn iotlb_stats(&self) -> (u64, u64, u64) {
        self.iotlb.stats()
    }

    /// Maps a scatter list into one contiguous IOVA range at or below `limit` (Linux's
    /// `iommu_dma_map_sg`): every piece must be page aligned; all or nothing, and on failure the
    /// IOVA range is freed. Returns the range; piece `i` starts at the sum of the lengths before it.
    pub fn map_sg(
        &self,
        pieces: &[(PhysAddr, u64)],
        limit: u64,
        access: Access,
    ) -> Result<AddrRange<Iova>> {
        let mut total = 0u64;
        for &(phys, len) in pieces {
            if !is_aligned(phys.0, SZ_4K) || !is_aligned(len, SZ_4K) || len == 0 {
                return Err(Error::Misaligned {
                    what: "scatter-list piece",
                    value: phys.0 | len,
                    align: SZ_4K,
                });
            }
            total = total.checked_add(len).ok_or(Error::AddressOverflow {
                kind: "iova",
                addr: total,
                len,
            })?;
        }
        if total == 0 {
            return Err(Error::EmptyRange {
                what: "scatter list",
            });
        }
        let iova = self.alloc_iova(total, limit)?;
        let pieces: Vec<MapPiece> = pieces
            .iter()
            .map(|&(phys, len)| MapPiece::at(phys, len, MapAttrs::empty()))
            .collect();
        if let Err(e) = self.map_pieces(iova, &pieces, access) {
            // map_pieces took back what it mapped; the range is freed only after a flush (a
            // lazy domain defers it to the queued one), every step run even if one fails, so the
            // IOVA is never leaked. The map's own error is the one reported.
            for step in [self.flush(), self.free_iova(iova, total)] {
                if let Err(err) = step {
                    tracing::warn!(%err, %iova, "rolling back a partial scatter-list map");
                }
            }
            return Err(e);
        }
        AddrRange::new(iova, total)
    }

    /// Performs the real IOTLB invalidation: drops the cache, retires the tables unlinked since
    /// the last flush and frees the deferred IOVA ranges. ([`flush_all`](IommuDomain::flush_all)
    /// also unlinks every table left empty first.)
    ///
    /// The queue is taken before the IOTLB is cleared: an unmap that marked it before the take is
    /// covered by this clear (its entries were cleared before it marked, and no fill brings them
    /// back); one that marks it after leaves the mark for the next drain.
    pub fn drain(&self) {
        let frees = {
            let mut q = self.queue.lock();
            q.pending = 0;
            q.unflushed = false;
            std::mem::take(&mut q.frees)
        };
        self.iotlb.clear();
        self.table.release_freelist();
        for (a, l) in frees {
            self.iova.free(a, l);
        }
    }
}

impl<F: Format> IommuDomain for SoftIommu<F> {
    fn kind(&self) -> DomainKind {
        DomainKind::Translated
    }

    fn aperture(&self) -> AddrRange<Iova> {
        self.aperture
    }

    fn page_sizes(&self) -> PageSizes {
        F::PAGE_SIZES
    }

    fn reserved_regions(&self) -> Vec<ReservedRegion> {
        self.reserved.clone()
    }

    fn map_attrs(
        &self,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        access: Access,
        attrs: MapAttrs,
    ) -> Result<()> {
        check_map_args(&self.aperture, &self.reserved, iova, phys, len, SZ_4K)?;
        if !access.intersects(Access::READ | Access::WRITE) {
            return Err(Error::NoAccess { iova: iova.0 });
        }
        // let-else, not `ok_or`: an `Error` built eagerly is also dropped on every map.
        let Some(end) = phys.0.checked_add(len) else {
            return Err(Error::AddressOverflow {
                kind: "phys",
                addr: phys.0,
                len,
            });
        };
        if end > 1u64 << F::OAS {
            return Err(Error::OutOfBounds {
                kind: "phys",
                start: phys.0,
                len,
                limit_start: 0,
                limit_len: 1u64 << F::OAS,
            });
        }
        self.table
            .map(iova.0, phys.0, len, access, attrs.contains(MapAttrs::MMIO))
    }

    /// [`unmap_gather`](IommuDomain::unmap_gather) and [`iotlb_sync`](IommuDomain::iotlb_sync)
    /// of one range, without the gather.
    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        let n = self.table.unmap(iova.0, len)?;
        if n > 0 {
            match self.policy {
                FlushPolicy::Strict => self.invalidate(iova, n),
                FlushPolicy::Lazy { .. } => self.mark_unflushed(),
            }
        }
        Ok(n)
    }

    /// Clears the entries; the IOTLB invalidation (strict) waits for
    /// [`iotlb_sync`](IommuDomain::iotlb_sync), so that many unmaps share one.
    fn unmap_gather(&self, iova: Iova, len: u64, gather: &mut IotlbGather) -> Result<u64> {
        let n = self.table.unmap(iova.0, len)?;
        if n > 0 && self.policy != FlushPolicy::Strict {
            self.mark_unflushed();
        }
        gather.add(iova, n);
        Ok(n)
    }

    fn iotlb_sync(&self, gather: &IotlbGather) -> Result<()> {
        if let (FlushPolicy::Strict, Some((iova, len))) = (self.policy, gather.span()) {
            self.invalidate(iova, len);
        }
        Ok(())
    }

    fn translate(&self, iova: Iova) -> Option<Translation> {
        let leaf = self.table.translate(iova.0)?;
        Some(Translation {
            phys: PhysAddr(leaf.phys + (iova.0 - leaf.iova)),
            access: leaf.access,
        })
    }

    /// The IOTLB first, then a walk that fills it. In lazy mode this can return a translation
    /// whose page-table entry is gone.
    fn dma_translate(&self, iova: Iova) -> Option<Translation> {
        let iova = iova.0;
        let off = iova & (SZ_4K - 1);
        if let Some((page, access)) = self.iotlb.lookup(iova) {
            return Some(Translation {
                phys: PhysAddr(page + off),
                access,
            });
        }
        // The ticket is taken before the walk: a strict unmap that clears the entry and then
        // invalidates the slot makes this fill fail if the walk saw the old entry, so no fill
        // brings back a translation an unmap removed.
        let ticket = self.iotlb.fill_ticket(iova);
        let leaf = self.table.translate(iova)?;
        let phys = leaf.phys + (iova - leaf.iova);
        self.iotlb
            .fill(ticket, iova, phys & !(SZ_4K - 1), leaf.access);
        Some(Translation {
            phys: PhysAddr(phys),
            access: leaf.access,
        })
    }

    fn flush(&self) -> Result<()> {
        match self.policy {
            // unmap already invalidated what it removed.
            FlushPolicy::Strict => Ok(()),
            FlushPolicy::Lazy { batch } => {
                let full = {
                    let mut q = self.queue.lock();
                    q.pending += 1;
                    q.pending >= batch
                };
                if full {
                    self.drain();
                }
                Ok(())
            }
        }
    }

    /// Unlinks every table left empty (unmaps of small pages keep their tables, as Linux's do),
    /// then drains: the memory of ranges no longer mapped is given back.
    fn flush_all(&self) -> Result<()> {
        self.table.reclaim();
        self.drain();
        Ok(())
    }

    fn alloc_iova(&self, len: u64, limit: u64) -> Result<Iova> {
        let top = self.aperture.last().map_or(0, |a| a.0);
        self.iova.alloc(len, limit.min(top)).map(Iova)
    }

    /// Strict: the steps in one pass, without a call per step (they are most of a mapping's
    /// teardown). Lazy: the steps as the trait takes them.
    fn unmap_and_free(&self, range: AddrRange<Iova>, pieces: &[(Iova, u64)]) -> Result<u64> {
        if self.policy != FlushPolicy::Strict {
            return unmap_and_free_in_steps(self, range, pieces);
        }
        let (mut first, mut unmapped) = (None, 0);
        let mut gather = IotlbGather::default();
        for &(at, len) in pieces {
            match self.table.unmap(at.0, len) {
                Ok(n) => {
                    gather.add(at, n);
                    unmapped += n;
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        if let Some((iova, len)) = gather.span() {
            self.invalidate(iova, len);
        }
        // Strict: every entry is invalidated, so the range can be handed out again now.
        self.iova.free(range.start().0, range.len());
        first.map_or(Ok(unmapped), Err)
    }

    fn free_iova(&self, iova: Iova, len: u64) -> Result<()> {
        // Strict: every unmap invalidated before it returned, so nothing is ever deferred, and
        // threads freeing side by side need not meet on the queue's lock.
        if self.policy == FlushPolicy::Strict || !self.defer_free(iova, len) {
            self.iova.free(iova.0, len);
        }
        Ok(())
    }
}

impl<F: Format> SoftIommu<F> {
    /// Strict: the IOTLB invalidation of an unmapped range. Entries first, then the IOTLB (see
    /// the iotlb module), then the tables the unmaps unlinked (Linux's gather: freed after the
    /// sync).
    fn invalidate(&self, iova: Iova, len: u64) {
        self.iotlb.invalidate_range(iova.0, len);
        self.table.release_freelist();
    }

    /// Lazy: the IOTLB may keep entries an unmap removed until the next drain.
    fn mark_unflushed(&self) {
        self.queue.lock().unflushed = true;
    }

    /// Lazy mode: queues the free of `[iova, iova+len)` for the next drain if a stale IOTLB
    /// entry of it may still be usable (a flush is queued, or an unmap has not been flushed).
    /// Returns whether it did.
    #[cold]
    #[inline(never)]
    fn defer_free(&self, iova: Iova, len: u64) -> bool {
        let mut q = self.queue.lock();
        if q.pending > 0 || q.unflushed {
            q.frees.push((iova.0, len));
            return true;
        }
        false
    }
}
