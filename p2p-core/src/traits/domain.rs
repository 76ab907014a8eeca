//! IOMMU domains: the translation a device's requests go through.

use crate::access::Access;
use crate::addr::{AddrRange, Iova, PhysAddr};
use crate::error::{Error, Result};
use crate::page::PageSizes;
use crate::traits::FileSlice;
use std::fmt;

/// The kind of a domain (Linux: IDENTITY, DMA/UNMANAGED, BLOCKED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DomainKind {
    /// Passthrough: IOVA = physical; map is not possible.
    Identity,
    /// Translated through page tables.
    Translated,
    /// Every DMA faults.
    Blocked,
}

impl DomainKind {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            DomainKind::Identity => "identity",
            DomainKind::Translated => "translated",
            DomainKind::Blocked => "blocked",
        }
    }
}

impl fmt::Display for DomainKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a region of IOVA space is off limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservedKind {
    /// The MSI doorbell window (x86: 0xfee00000–0xfeefffff).
    Msi,
    /// A host-bridge window: an IOVA there would be claimed by a switch as a peer's BAR.
    PciWindow,
    /// Identity-mapped for firmware (RMRR).
    Direct,
    /// Otherwise reserved.
    Reserved,
}

/// A reserved region of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedRegion {
    /// The IOVAs.
    pub range: AddrRange<Iova>,
    /// Why.
    pub kind: ReservedKind,
}

/// What an IOVA translates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The physical address.
    pub phys: PhysAddr,
    /// What the mapping allows.
    pub access: Access,
}

bitflags::bitflags! {
    /// Memory attributes of a mapping beyond its permissions (Linux's `IOMMU_MMIO` and friends in
    /// the `prot` argument of `iommu_map`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct MapAttrs: u8 {
        /// The pages are device MMIO (a BAR), not RAM: formats with memory types map them as
        /// device memory (ARM stage 2: Device-nGnRE, never cacheable), so that a peer's BAR is
        /// never given cacheable attributes.
        const MMIO = 1;
    }
}

/// An IOMMU domain and its IOVA allocator (which sits beside it, as Linux's dma-iommu layer).
///
/// Contract, from Linux's `iommu_map` / `iommu_unmap`:
/// - [`map_attrs`](Self::map_attrs) (and [`map`](Self::map), the same without attributes) needs
///   a translated domain (else [`Error::WrongDomainKind`](crate::Error::WrongDomainKind)),
///   `iova`, `phys` and `len` aligned to the smallest page size (else
///   [`Error::Misaligned`](crate::Error::Misaligned)), `len` non-zero (else
///   [`Error::EmptyRange`](crate::Error::EmptyRange)), and a range inside the aperture (else
///   [`Error::OutOfBounds`](crate::Error::OutOfBounds)) that touches no reserved region (else
///   [`Error::Reserved`](crate::Error::Reserved)); [`check_map_args`] checks all but the kind,
///   in that order. It is all or nothing: a failure midway undoes what it did; mapping over a
///   live entry fails with [`Error::AlreadyMapped`](crate::Error::AlreadyMapped).
///   A domain whose entries have memory types honours [`MapAttrs::MMIO`]; one whose entries have
///   none (VT-d second level without snoop control, a kernel that picks attributes itself, an
///   identity domain) ignores it.
/// - [`unmap`](Self::unmap) returns the bytes unmapped. It walks across leaves of any size and
///   stops only at the first IOVA that is not mapped (so it returns less than asked there, and 0
///   if nothing is mapped at `iova`); a range whose ends would cut a larger page is refused with
///   an error and nothing unmapped.
/// - [`flush`](Self::flush) invalidates the IOTLB: after it no stale translation is usable. A
///   strict domain invalidates in `unmap` already (its `flush` may do nothing); a lazy one queues
///   flushes, performs the queue within a bounded number of them, and until then may keep stale
///   translations (of the page that was mapped, never another) usable, which
///   [`flush_all`](Self::flush_all) forces.
/// - [`dma_translate`](Self::dma_translate) answers as a device's request is answered (through
///   the IOTLB); [`translate`](Self::translate) walks the tables. They differ only for an IOVA
///   unmapped in a lazy domain whose flush has not been performed yet: `translate` answers
///   nothing for an IOVA as soon as its unmap returns, in every domain.
/// - [`alloc_iova`](Self::alloc_iova) returns a size-aligned free range whose last byte is at most
///   `limit`, outside reserved regions; [`free_iova`](Self::free_iova) gives it back, but the
///   domain must not hand it out again while a translation of it may still be usable: in a
///   strict domain that is after its unmap; in a lazy one, or after a flush that failed, after
///   the next flush that succeeds has performed the invalidation (a lazy domain: its queue).
/// - Every method may be called from several threads at once; map and unmap of disjoint ranges
///   never disturb each other, and a map of a range any part of which is mapped fails with
///   `AlreadyMapped` leaving nothing of it mapped.
pub trait IommuDomain: Send + Sync + fmt::Debug {
    /// Identity, translated or blocked.
    fn kind(&self) -> DomainKind;
    /// The IOVAs the hardware can translate.
    fn aperture(&self) -> AddrRange<Iova>;
    /// Supported page sizes.
    fn page_sizes(&self) -> PageSizes;
    /// Regions no allocation or map may touch.
    fn reserved_regions(&self) -> Vec<ReservedRegion>;
    /// Maps `[iova, iova+len)` to `[phys, phys+len)` with `access` and memory attributes `attrs`.
    fn map_attrs(
        &self,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        access: Access,
        attrs: MapAttrs,
    ) -> Result<()>;
    /// Maps `[iova, iova+len)` to `[phys, phys+len)` as RAM (no attributes).
    fn map(&self, iova: Iova, phys: PhysAddr, len: u64, access: Access) -> Result<()> {
        self.map_attrs(iova, phys, len, access, MapAttrs::empty())
    }
    /// Unmaps, returning the bytes unmapped.
    fn unmap(&self, iova: Iova, len: u64) -> Result<u64>;
    /// Walks the tables for one IOVA.
    fn translate(&self, iova: Iova) -> Option<Translation>;
    /// Translates one IOVA as a device's request is translated: through the IOTLB, filling it.
    /// A domain without an IOTLB model answers with the walk.
    fn dma_translate(&self, iova: Iova) -> Option<Translation> {
        self.translate(iova)
    }
    /// Invalidates the IOTLB (a lazy domain may queue it).
    fn flush(&self) -> Result<()>;
    /// Performs every queued invalidation now, and the IOVA frees waiting on them (Linux's
    /// `iommu_flush_iotlb_all`, a flush queue's timeout). Defaults to [`flush`](Self::flush),
    /// which is right for a domain that queues nothing.
    fn flush_all(&self) -> Result<()> {
        self.flush()
    }
    /// Allocates `len` bytes of IOVA space at or below `limit`.
    fn alloc_iova(&self, len: u64, limit: u64) -> Result<Iova>;
    /// Frees an allocation.
    fn free_iova(&self, iova: Iova, len: u64) -> Result<()>;

    /// Maps one piece at `iova`: as [`map_attrs`](Self::map_attrs) with the piece's address,
    /// length and attributes, with the same errors and the same translation afterwards
    /// (`piece.phys`). A domain that maps by file (iommufd) maps `piece.file` when it is given,
    /// so the kernel reaches the memory through the file rather than an address; the default
    /// ignores the file. Wrappers forward this method, or the file is lost on the way down.
    fn map_piece(&self, iova: Iova, piece: &MapPiece, access: Access) -> Result<()> {
        self.map_attrs(iova, piece.phys, piece.len, access, piece.attrs)
    }

    /// Maps `pieces` back to back from `iova` (Linux's `iommu_map_sg`), all or nothing: a failure
    /// unmaps what the call mapped before it returns. Each piece is mapped by one
    /// [`map_piece`](Self::map_piece) call, so each can be unmapped as it was mapped.
    fn map_pieces(&self, iova: Iova, pieces: &[MapPiece], access: Access) -> Result<()> {
        let mut at = iova;
        for (i, p) in pieces.iter().enumerate() {
            if let Err(e) = self.map_piece(at, p, access) {
                let mut gather = IotlbGather::default();
                let mut back = iova;
                for q in &pieces[..i] {
                    // Rolling back what this call mapped: its own error is the one to report.
                    let _ = self.unmap_gather(back, q.len, &mut gather);
                    back = Iova(back.0 + q.len);
                }
                let _ = self.iotlb_sync(&gather);
                return Err(e);
            }
            at = Iova(at.0 + p.len);
        }
        Ok(())
    }

    /// Unmaps like [`unmap`](Self::unmap), but may leave the IOTLB invalidation of the range to
    /// the [`iotlb_sync`](Self::iotlb_sync) of `gather` (Linux's `iommu_unmap_fast` with an
    /// `iommu_iotlb_gather`): unmapping many ranges then syncing once costs one invalidation.
    /// Until that sync returns, the range may still translate through the IOTLB; its IOVAs must
    /// not be freed before. The default unmaps at once (strictly, if the domain is strict).
    fn unmap_gather(&self, iova: Iova, len: u64, gather: &mut IotlbGather) -> Result<u64> {
        let n = self.unmap(iova, len)?;
        gather.add(iova, n);
        Ok(n)
    }

    /// Performs the IOTLB invalidation `gather` collected, and frees the page tables the
    /// gathered unmaps emptied (Linux's `iommu_iotlb_sync`). The default has nothing to do, as
    /// the default [`unmap_gather`](Self::unmap_gather) invalidated already.
    fn iotlb_sync(&self, gather: &IotlbGather) -> Result<()> {
        let _ = gather;
        Ok(())
    }

    /// Gives back what [`alloc_iova`](Self::alloc_iova) and [`map_pieces`](Self::map_pieces)
    /// set up (Linux's `__iommu_dma_unmap`): unmaps each of `pieces` (`(iova, len)`, one
    /// [`unmap_gather`](Self::unmap_gather) each, as they were mapped), syncs the gather once,
    /// [`flush`](Self::flush)es, and frees the allocation `range`. Every step runs even if an
    /// earlier one failed, and the first error is returned; otherwise the bytes unmapped.
    /// Afterwards the pieces translate as after those steps taken one by one.
    ///
    /// The default takes the steps through this trait's methods
    /// ([`unmap_and_free_in_steps`]); a domain may do them in one pass. Wrappers that observe
    /// the steps keep the default, so that they see each of them.
    fn unmap_and_free(&self, range: AddrRange<Iova>, pieces: &[(Iova, u64)]) -> Result<u64> {
        unmap_and_free_in_steps(self, range, pieces)
    }
}

/// [`IommuDomain::unmap_and_free`] as its steps: every piece's
/// [`unmap_gather`](IommuDomain::unmap_gather), one [`iotlb_sync`](IommuDomain::iotlb_sync),
/// [`flush`](IommuDomain::flush), [`free_iova`](IommuDomain::free_iova) of `range`. The free
/// happens even if a step before it failed: the domain's contract is never to hand a range out
/// again before a flush covering it has succeeded.
pub fn unmap_and_free_in_steps<D: IommuDomain + ?Sized>(
    domain: &D,
    range: AddrRange<Iova>,
    pieces: &[(Iova, u64)],
) -> Result<u64> {
    let mut first: Option<Error> = None;
    let mut unmapped = 0u64;
    let mut gather = IotlbGather::default();
    for &(at, len) in pieces {
        match domain.unmap_gather(at, len, &mut gather) {
            Ok(n) => unmapped += n,
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    // One step at a time, not an array of their results: an `Error` is large, and the array
    // was copied on every unmap.
    let mut keep = |step: Result<()>| {
        if let Err(e) = step {
            first.get_or_insert(e);
        }
    };
    keep(domain.iotlb_sync(&gather));
    keep(domain.flush());
    keep(domain.free_iova(range.start(), range.len()));
    first.map_or(Ok(unmapped), Err)
}

/// One piece of a [`IommuDomain::map_pieces`] call, or the argument of
/// [`IommuDomain::map_piece`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapPiece {
    /// Where the piece is.
    pub phys: PhysAddr,
    /// Its bytes (a multiple of the domain's smallest page).
    pub len: u64,
    /// Its memory attributes.
    pub attrs: MapAttrs,
    /// The file holding the piece's bytes, when its exporter knows one (a memfd, a dma-buf):
    /// a domain that maps by file uses it; others map `phys`. Copied from the chunk's
    /// [`Chunk::file`](crate::traits::Chunk::file).
    pub file: Option<FileSlice>,
}

impl MapPiece {
    /// A piece known only by its physical address.
    pub fn at(phys: PhysAddr, len: u64, attrs: MapAttrs) -> Self {
        Self {
            phys,
            len,
            attrs,
            file: None,
        }
    }
}

/// The IOVA span a series of [`IommuDomain::unmap_gather`] calls left for one
/// [`IommuDomain::iotlb_sync`]: the smallest range covering them (Linux's `iommu_iotlb_gather`
/// keeps a start and an end the same way). Holds no allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IotlbGather {
    span: Option<(u64, u64)>,
}

impl IotlbGather {
    /// Adds `[iova, iova+len)` to the span (nothing for an empty range).
    pub fn add(&mut self, iova: Iova, len: u64) {
        if len == 0 {
            return;
        }
        let end = iova.0.saturating_add(len);
        self.span = Some(match self.span {
            None => (iova.0, end),
            Some((s, e)) => (s.min(iova.0), e.max(end)),
        });
    }

    /// The covering range, `(start, len)`, if anything was added.
    pub fn span(&self) -> Option<(Iova, u64)> {
        self.span.map(|(s, e)| (Iova(s), e - s))
    }
}

/// The argument checks every [`IommuDomain::map`] makes, in Linux's order: `iova`, `phys` and
/// `len` aligned to `page` and `len` non-zero, then the range inside `aperture` and clear of every
/// reserved region. Backends call this first so that they all refuse the same inputs the same way.
/// Inlined: the callers' page size and aperture are often constants, and the call itself cost
/// as much as the checks.
#[inline]
pub fn check_map_args(
    aperture: &AddrRange<Iova>,
    reserved: &[ReservedRegion],
    iova: Iova,
    phys: PhysAddr,
    len: u64,
    page: u64,
) -> Result<()> {
    // Every map of every backend comes here: the common case (page a power of two, everything
    // aligned, nothing wraps, inside the aperture, no reserved region hit) is a few compares,
    // and the error is worked out only when one fails.
    let fine = page.is_power_of_two()
        && (iova.0 | phys.0 | len) & (page - 1) == 0
        && len != 0
        && phys.0.checked_add(len).is_some()
        && iova.0.checked_add(len).is_some_and(|end| {
            iova >= aperture.start()
                && end <= aperture.end().0
                && !reserved
                    .iter()
                    .any(|r| iova.0 < r.range.end().0 && r.range.start().0 < end)
        });
    if fine {
        return Ok(());
    }
    map_args_error(aperture, reserved, iova, phys, len, page)
}

/// Which of [`check_map_args`]'s checks fails, in Linux's order.
#[cold]
#[inline(never)]
fn map_args_error(
    aperture: &AddrRange<Iova>,
    reserved: &[ReservedRegion],
    iova: Iova,
    phys: PhysAddr,
    len: u64,
    page: u64,
) -> Result<()> {
    for (what, v) in [("iova", iova.0), ("phys", phys.0), ("length", len)] {
        if !crate::addr::is_aligned(v, page) {
            return Err(Error::Misaligned {
                what,
                value: v,
                align: page,
            });
        }
    }
    if len == 0 {
        return Err(Error::EmptyRange { what: "map" });
    }
    AddrRange::new(phys, len)?;
    check_iova_range(aperture, reserved, iova, len)
}

/// Whether `[iova, iova+len)` lies inside `aperture` and touches no reserved region.
pub fn check_iova_range(
    aperture: &AddrRange<Iova>,
    reserved: &[ReservedRegion],
    iova: Iova,
    len: u64,
) -> Result<()> {
    let r = AddrRange::new(iova, len)?;
    if !aperture.contains_range(&r) {
        return Err(Error::OutOfBounds {
            kind: "iova",
            start: iova.0,
            len,
            limit_start: aperture.start().0,
            limit_len: aperture.len(),
        });
    }
    match reserved.iter().find(|res| res.range.overlaps(&r)) {
        Some(res) => Err(Error::Reserved {
            start: iova.0,
            len,
            region: format!("{:?} {}", res.kind, res.range),
        }),
        None => Ok(()),
    }
}
