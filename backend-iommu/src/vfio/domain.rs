//! An [`IommuDomain`] backed by a VFIO container: maps go to the kernel's IOMMU driver.

use super::container::{IommuInfo, VfioContainer};
use crate::kernel_book::{IovaLayout, MapBook, Windows};
use p2p_core::access::Access;
use p2p_core::addr::{AddrRange, Iova, PhysAddr, VirtAddr};
use p2p_core::page::PageSizes;
use p2p_core::traits::{DomainKind, IommuDomain, MapAttrs, ReservedRegion, Translation};
use p2p_core::Result;
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
    layout: IovaLayout,
    page_sizes: PageSizes,
    /// Physical ranges and the virtual addresses behind them.
    windows: Windows<VirtAddr>,
    maps: MapBook,
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
        let layout =
            IovaLayout::from_ranges(&info.iova_ranges, "VFIO_IOMMU_GET_INFO (IOVA ranges)")?;
        Ok(Self {
            kernel,
            layout,
            page_sizes,
            windows: Windows::default(),
            maps: MapBook::default(),
        })
    }

    /// Registers `len` bytes mapped at `va` in this process, whose CPU physical address is
    /// `phys`. The memory must stay mapped while any DMA mapping made from it lives.
    pub fn add_window(&self, va: VirtAddr, phys: PhysAddr, len: u64) -> Result<()> {
        AddrRange::new(va, len)?;
        self.windows.add(phys, len, va)
    }
}

impl IommuDomain for VfioDomain {
    fn kind(&self) -> DomainKind {
        DomainKind::Translated
    }

    fn aperture(&self) -> AddrRange<Iova> {
        self.layout.aperture
    }

    fn page_sizes(&self) -> PageSizes {
        self.page_sizes
    }

    fn reserved_regions(&self) -> Vec<ReservedRegion> {
        self.layout.reserved.clone()
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
        // The book stays locked across the kernel call (see MapBook); the kernel serialises
        // these calls per container anyway.
        self.maps
            .map(&self.layout, page, iova, phys, len, access, || {
                // Register the memory with `VfioDomain::add_window` first.
                let (va, off) = self.windows.lookup(phys.0, len)?;
                self.kernel.map_dma(va.0 + off, iova.0, len, access)
            })
    }

    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        // The kernel removes every map inside its range, holes or not (and iommufd part of a
        // range it then refuses): the book hands it only the run the trait promises.
        self.maps.unmap(AddrRange::new(iova, len)?, |iova, span| {
            self.kernel.unmap_dma(iova, span)
        })
    }

    fn translate(&self, iova: Iova) -> Option<Translation> {
        self.maps.translate(iova)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn alloc_iova(&self, len: u64, limit: u64) -> Result<Iova> {
        self.layout.alloc(len, limit)
    }

    fn free_iova(&self, iova: Iova, len: u64) -> Result<()> {
        self.layout.free(iova, len);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
