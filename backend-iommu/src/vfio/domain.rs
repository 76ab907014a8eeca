//! An [`IommuDomain`] backed by a VFIO container: maps go to the kernel's IOMMU driver.

use super::container::{IommuInfo, VfioContainer};
use crate::iova::IovaAllocator;
use p2p_core::access::Access;
use p2p_core::addr::{AddrRange, Iova, PhysAddr, VirtAddr};
use p2p_core::page::PageSizes;
use p2p_core::traits::{
    check_map_args, DomainKind, IommuDomain, MapAttrs, ReservedKind, ReservedRegion, Translation,
};
use p2p_core::{Error, Result};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a domain needs of the kernel: VFIO type1's calls on a container. [`VfioContainer`] is
/// the real one; tests put a model of type1's rules behind it.
pub trait Type1: Send + Sync + std::fmt::Debug {
    /// `VFIO_IOMMU_GET_INFO`.
    fn info(&self) -> Result<IommuInfo>;
    /// `VFIO_IOMMU_MAP_DMA`.
    fn map_dma(&self, vaddr: u64, iova: u64, size: u64, access: Access) -> Result<()>;
    /// `VFIO_IOMMU_UNMAP_DMA`: the bytes unmapped.
    fn unmap_dma(&self, iova: u64, size: u64) -> Result<u64>;
}

impl Type1 for VfioContainer {
    fn info(&self) -> Result<IommuInfo> {
        VfioContainer::info(self)
    }
    fn map_dma(&self, vaddr: u64, iova: u64, size: u64, access: Access) -> Result<()> {
        VfioContainer::map_dma(self, vaddr, iova, size, access)
    }
    fn unmap_dma(&self, iova: u64, size: u64) -> Result<u64> {
        VfioContainer::unmap_dma(self, iova, size)
    }
}

/// How many bytes from `start` one `UNMAP_DMA` may cover so that it unmaps what
/// [`IommuDomain::unmap`] promises: the run of recorded maps that begin back to back at `start`
/// and end by `end` (0 when nothing is mapped at `start`). Where a map straddles `start` or
/// `end`, the whole `end - start` is returned so that the kernel refuses the split (EINVAL) and
/// unmaps nothing.
fn unmap_span(maps: &BTreeMap<u64, Mapped>, start: u64, end: u64) -> u64 {
    let straddles_start = maps
        .range(..start)
        .next_back()
        .is_some_and(|(&at, m)| at + m.len > start);
    if straddles_start {
        return end - start;
    }
    let mut at = start;
    while let Some(m) = maps.get(&at).filter(|_| at < end) {
        if at + m.len > end {
            return end - start;
        }
        at += m.len;
    }
    at - start
}

/// x86's MSI doorbell window, which VT-d reports as a hole in the IOVA ranges.
const MSI: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

/// Memory this process has mapped whose CPU physical address is known: locked host RAM, or a
/// peer's BAR mmapped from its VFIO device.
#[derive(Debug, Clone, Copy)]
struct Window {
    phys: u64,
    va: u64,
    len: u64,
}

#[derive(Debug, Clone, Copy)]
struct Mapped {
    len: u64,
    phys: u64,
    access: Access,
}

/// The IOMMU context of a VFIO container as a p2p-core domain.
///
/// The trait maps physical addresses, VFIO maps this process's virtual addresses: so the memory
/// to be mapped is first registered as a window ([`add_window`](Self::add_window): virtual
/// address and the physical address behind it), and [`map`](IommuDomain::map) looks the physical
/// range up there. The kernel pins by virtual address, so a page that migrated since the window
/// was registered is still the one the device reaches.
///
/// [`translate`](IommuDomain::translate) answers from the record of this domain's own maps (the
/// kernel does not expose its tables); [`flush`](IommuDomain::flush) has nothing to do, as type1
/// invalidates the IOTLB before `UNMAP_DMA` returns.
#[derive(Debug)]
pub struct VfioDomain {
    kernel: Arc<dyn Type1>,
    aperture: AddrRange<Iova>,
    reserved: Vec<ReservedRegion>,
    page_sizes: PageSizes,
    iova: IovaAllocator,
    windows: Mutex<Vec<Window>>,
    maps: Mutex<BTreeMap<u64, Mapped>>,
}

/// Checks the kernel's usable IOVA ranges (inclusive `(start, last)` pairs) before they are used:
/// at least one, each well formed, in increasing order and disjoint. A reply that breaks this
/// is refused with [`Error::KernelReply`] naming it, never indexed blindly.
fn check_iova_ranges(ranges: &[(u64, u64)]) -> Result<()> {
    let bad = |detail: String| Error::KernelReply {
        call: "VFIO_IOMMU_GET_INFO (IOVA ranges)",
        detail,
    };
    if ranges.is_empty() {
        return Err(bad("no usable IOVA range".into()));
    }
    if let Some(&(s, l)) = ranges.iter().find(|&&(s, l)| s > l) {
        return Err(bad(format!("range {s:#x}..={l:#x} ends before it starts")));
    }
    if let Some(w) = ranges.windows(2).find(|w| w[1].0 <= w[0].1) {
        return Err(bad(format!(
            "ranges {:#x}..={:#x} and {:#x}..={:#x} overlap or are out of order",
            w[0].0, w[0].1, w[1].0, w[1].1
        )));
    }
    Ok(())
}

impl VfioDomain {
    /// The domain of a container that has at least one group attached.
    pub fn new(container: Arc<VfioContainer>) -> Result<Self> {
        Self::over(container)
    }

    /// The domain over any [`Type1`] implementation.
    pub fn over(kernel: Arc<dyn Type1>) -> Result<Self> {
        let info = kernel.info()?;
        let page_sizes = PageSizes::from_bits_truncate(info.page_sizes);
        check_iova_ranges(&info.iova_ranges)?;
        let (Some(&(first, _)), Some(&(_, last))) =
            (info.iova_ranges.first(), info.iova_ranges.last())
        else {
            unreachable!("check_iova_ranges refuses an empty list")
        };
        // The aperture is a half-open range: the very last byte of the 64-bit space is lost.
        let aperture = AddrRange::new(Iova(first), (last - first).saturating_add(1))?;
        let mut reserved = Vec::new();
        for w in info.iova_ranges.windows(2) {
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
            kernel,
            aperture,
            reserved,
            page_sizes,
            iova,
            windows: Mutex::new(Vec::new()),
            maps: Mutex::new(BTreeMap::new()),
        })
    }

    /// Registers `len` bytes mapped at `va` in this process, whose CPU physical address is
    /// `phys`. The memory must stay mapped while any DMA mapping made from it lives.
    pub fn add_window(&self, va: VirtAddr, phys: PhysAddr, len: u64) -> Result<()> {
        let r = AddrRange::new(phys, len)?;
        AddrRange::new(va, len)?;
        let mut w = self.windows.lock();
        if let Some(o) = w
            .iter()
            .find(|o| AddrRange::new(PhysAddr(o.phys), o.len).is_ok_and(|or| or.overlaps(&r)))
        {
            return Err(Error::WindowOverlap {
                start: phys.0,
                len,
                other_start: o.phys,
                other_len: o.len,
            });
        }
        w.push(Window {
            phys: phys.0,
            va: va.0,
            len,
        });
        Ok(())
    }

    /// The virtual address behind `[phys, phys+len)`, which must lie in one window.
    fn va_of(&self, phys: u64, len: u64) -> Result<u64> {
        self.windows
            .lock()
            .iter()
            .find(|w| phys >= w.phys && phys - w.phys + len <= w.len)
            .map(|w| w.va + (phys - w.phys))
            // Register it with `VfioDomain::add_window` first.
            .ok_or(Error::NotRegistered { phys, len })
    }
}

impl IommuDomain for VfioDomain {
    fn kind(&self) -> DomainKind {
        DomainKind::Translated
    }

    fn aperture(&self) -> AddrRange<Iova> {
        self.aperture
    }

    fn page_sizes(&self) -> PageSizes {
        self.page_sizes
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
        _attrs: MapAttrs,
    ) -> Result<()> {
        let page = self.page_sizes.min_page().unwrap_or(4096);
        check_map_args(&self.aperture, &self.reserved, iova, phys, len, page)?;
        let r = AddrRange::new(iova, len)?;
        // The record is locked across the kernel call, so that the check, the MAP_DMA and the
        // record agree: two racing maps of one range cannot both pass the check, and an unmap
        // cannot forget a map made between its UNMAP_DMA and its update (the kernel serialises
        // these calls per container anyway).
        let mut maps = self.maps.lock();
        if let Some((&at, _)) = maps
            .range(..r.end().0)
            .next_back()
            .filter(|(&at, m)| AddrRange::new(Iova(at), m.len).is_ok_and(|mr| mr.overlaps(&r)))
        {
            return Err(Error::AlreadyMapped(at.max(iova.0)));
        }
        let va = self.va_of(phys.0, len)?;
        self.kernel.map_dma(va, iova.0, len, access)?;
        maps.insert(
            iova.0,
            Mapped {
                len,
                phys: phys.0,
                access,
            },
        );
        Ok(())
    }

    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        let r = AddrRange::new(iova, len)?;
        let mut maps = self.maps.lock();
        // Type1's UNMAP_DMA removes every mapping inside its range, holes or not, while the
        // trait stops at the first hole: so the kernel gets only the run of back-to-back maps.
        let span = unmap_span(&maps, r.start().0, r.end().0);
        if span == 0 {
            return Ok(0);
        }
        let done = self.kernel.unmap_dma(iova.0, span)?;
        let gone: Vec<u64> = maps.range(iova.0..iova.0 + span).map(|(&a, _)| a).collect();
        for at in gone {
            maps.remove(&at);
        }
        Ok(done)
    }

    fn translate(&self, iova: Iova) -> Option<Translation> {
        let maps = self.maps.lock();
        let (&at, m) = maps.range(..=iova.0).next_back()?;
        (iova.0 - at < m.len).then(|| Translation {
            phys: PhysAddr(m.phys + (iova.0 - at)),
            access: m.access,
        })
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn alloc_iova(&self, len: u64, limit: u64) -> Result<Iova> {
        let top = self.aperture.last().map_or(0, |a| a.0);
        self.iova.alloc(len, limit.min(top)).map(Iova)
    }

    fn free_iova(&self, iova: Iova, len: u64) -> Result<()> {
        // UNMAP_DMA flushed synchronously: the range is reusable at once.
        self.iova.free(iova.0, len);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
