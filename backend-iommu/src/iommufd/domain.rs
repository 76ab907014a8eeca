//! An [`IommuDomain`] over an iommufd IOAS: maps go to the kernel by virtual address or by file.

use super::ioas::{IoasOps, IoasRanges};
use crate::kernel_book::{IovaLayout, MapBook, Windows};
use p2p_core::access::Access;
use p2p_core::addr::{AddrRange, Iova, PhysAddr, VirtAddr};
use p2p_core::page::PageSizes;
use p2p_core::traits::{
    DomainKind, FileSlice, IommuDomain, MapAttrs, MapPiece, ReservedRegion, Translation,
};
use p2p_core::{Error, Result};
use std::sync::Arc;

/// How this process names a physical range to the kernel.
#[derive(Debug, Clone)]
enum Backing {
    /// Mapped in this process at that virtual address (`IOMMU_IOAS_MAP`).
    Va(VirtAddr),
    /// In that file from that offset (`IOMMU_IOAS_MAP_FILE`).
    File(FileSlice),
}

/// The library maps in whole 4 KiB pages, whatever the kernel allows below that (its IOVA
/// alignment is at most the CPU page).
const PAGE: u64 = 4096;

/// An iommufd IOAS as a p2p-core domain.
///
/// The trait maps physical addresses, iommufd maps virtual addresses or files. A piece that
/// carries its file ([`MapPiece::file`], from [`Chunk::file`](p2p_core::traits::Chunk::file)) is
/// mapped by file with `IOMMU_IOAS_MAP_FILE`: that is how a peer's BAR exported as a dma-buf is
/// reached, with no CPU mapping at all, and how a memfd is pinned by the kernel rather than
/// through a virtual address. Any other physical range must first be registered as a window,
/// by virtual address ([`add_window`](Self::add_window)) or by file
/// ([`add_file_window`](Self::add_file_window)).
///
/// [`translate`](IommuDomain::translate) answers from the record of this domain's own maps (the
/// kernel does not expose its tables). [`flush`](IommuDomain::flush) has nothing to do: iommufd
/// invalidates the IOTLB before `IOMMU_IOAS_UNMAP` returns, so freed IOVAs are reusable at once.
///
/// When the kernel revokes a dma-buf (its device reset or its memory disabled), iommufd unmaps it
/// from the hardware on its own; the area stays in the IOAS until unmapped, and this domain's
/// record keeps it until then. The library's forced revoke unmaps first (see
/// [`VfioDmaBuf::revoke`](super::VfioDmaBuf::revoke)).
#[derive(Debug)]
pub struct IommufdDomain {
    ioas: Arc<dyn IoasOps>,
    layout: IovaLayout,
    windows: Windows<Backing>,
    maps: MapBook,
}

impl IommufdDomain {
    /// The domain of an IOAS, with its IOVA ranges read now: attach the devices first, as each
    /// attach narrows the ranges.
    pub fn over(ioas: Arc<dyn IoasOps>) -> Result<Self> {
        let IoasRanges { ranges, alignment } = ioas.iova_ranges()?;
        let layout = IovaLayout::from_ranges(&ranges, "IOMMU_IOAS_IOVA_RANGES")?;
        // The kernel promises an alignment of at most the CPU page; anything else is refused
        // rather than trusted, as every map would fail.
        if !(1..=4096).contains(&alignment) || !alignment.is_power_of_two() {
            return Err(Error::KernelReply {
                call: "IOMMU_IOAS_IOVA_RANGES",
                detail: format!(
                    "IOVA alignment {alignment:#x} (a power of two <= 0x1000 expected)"
                ),
            });
        }
        Ok(Self {
            ioas,
            layout,
            windows: Windows::default(),
            maps: MapBook::default(),
        })
    }

    /// Registers `len` bytes mapped at `va` in this process, whose CPU physical address is
    /// `phys` (locked host memory, a BAR mmapped from its VFIO device). The memory must stay
    /// mapped while any DMA mapping made from it lives.
    pub fn add_window(&self, va: VirtAddr, phys: PhysAddr, len: u64) -> Result<()> {
        AddrRange::new(va, len)?;
        self.windows.add(phys, len, Backing::Va(va))
    }

    /// Registers `len` bytes of a file (from `file.offset`) whose CPU physical address is `phys`:
    /// maps of that physical range then go to the kernel by file.
    pub fn add_file_window(&self, file: FileSlice, phys: PhysAddr, len: u64) -> Result<()> {
        file.offset.checked_add(len).ok_or(Error::AddressOverflow {
            kind: "file window",
            addr: file.offset,
            len,
        })?;
        self.windows.add(phys, len, Backing::File(file))
    }
}

impl IommuDomain for IommufdDomain {
    fn kind(&self) -> DomainKind {
        DomainKind::Translated
    }

    fn aperture(&self) -> AddrRange<Iova> {
        self.layout.aperture
    }

    fn page_sizes(&self) -> PageSizes {
        PageSizes::SIZE_4K
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
        self.maps
            .map(&self.layout, PAGE, iova, phys, len, access, || {
                match self.windows.lookup(phys.0, len)? {
                    (Backing::Va(va), off) => self.ioas.map_va(va.0 + off, iova.0, len, access),
                    (Backing::File(f), off) => {
                        let at = f.advance(off).ok_or(Error::AddressOverflow {
                            kind: "file offset",
                            addr: f.offset,
                            len: off,
                        })?;
                        self.ioas.map_file(&at, iova.0, len, access)
                    }
                }
            })
    }

    fn map_piece(&self, iova: Iova, piece: &MapPiece, access: Access) -> Result<()> {
        match &piece.file {
            Some(file) => {
                let (phys, len) = (piece.phys, piece.len);
                self.maps
                    .map(&self.layout, PAGE, iova, phys, len, access, || {
                        self.ioas.map_file(file, iova.0, len, access)
                    })
            }
            None => self.map_attrs(iova, piece.phys, piece.len, access, piece.attrs),
        }
    }

    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        // The kernel removes every map inside its range, holes or not (and iommufd part of a
        // range it then refuses): the book hands it only the run the trait promises.
        self.maps.unmap(AddrRange::new(iova, len)?, |iova, span| {
            self.ioas.unmap(iova, span)
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
