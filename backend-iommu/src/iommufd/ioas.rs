//! An IOAS (I/O address space) of an iommufd, and the small trait a domain needs of it.

use super::sys::{from_ioctls, iova_ranges};
use iommufd_bindings::iommufd::{
    iommu_ioas_map, iommu_ioas_map_file, iommu_ioas_unmap,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA as FIXED,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE as READABLE,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE as WRITEABLE,
};
use iommufd_ioctls::{IommuFd, IommufdIoas};
use p2p_core::access::Access;
use p2p_core::traits::FileSlice;
use p2p_core::Result;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

/// An IOAS's usable IOVA ranges (inclusive `(start, last)` pairs, in order) and the alignment
/// every map's IOVA and length must keep (`IOMMU_IOAS_IOVA_RANGES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoasRanges {
    /// The usable ranges. Outside them: reserved (the MSI window, the top of the address width).
    pub ranges: Vec<(u64, u64)>,
    /// `out_iova_alignment`: at most the CPU page size.
    pub alignment: u64,
}

/// What an [`IommufdDomain`](super::IommufdDomain) needs of the kernel: an IOAS's calls.
/// [`Ioas`] is the real one; tests put a model of iommufd's rules (drivers/iommu/iommufd/
/// io_pagetable.c) behind it.
///
/// The kernel's rules, which implementations keep:
/// - a map is refused with `EINVAL` when its IOVA or length breaks the alignment or it touches
///   a reserved IOVA, and with `EEXIST` when it overlaps a map;
/// - an unmap removes every map inside its range, holes or not; it fails with `ENOENT` when
///   one straddles the range's edge (nothing is removed) or when nothing was mapped in it;
/// - every call may come from several threads at once.
pub trait IoasOps: Send + Sync + std::fmt::Debug {
    /// `IOMMU_IOAS_IOVA_RANGES`.
    fn iova_ranges(&self) -> Result<IoasRanges>;
    /// `IOMMU_IOAS_MAP` with a fixed IOVA: `len` bytes of this process's memory at `va`.
    fn map_va(&self, va: u64, iova: u64, len: u64, access: Access) -> Result<()>;
    /// `IOMMU_IOAS_MAP_FILE` with a fixed IOVA: `len` bytes of `file` from its offset (a memfd,
    /// or a single-range VFIO dma-buf).
    fn map_file(&self, file: &FileSlice, iova: u64, len: u64, access: Access) -> Result<()>;
    /// `IOMMU_IOAS_UNMAP`: the bytes unmapped.
    fn unmap(&self, iova: u64, len: u64) -> Result<u64>;
}

fn map_flags(access: Access) -> u32 {
    let mut flags = FIXED;
    if access.contains(Access::READ) {
        flags |= READABLE;
    }
    if access.contains(Access::WRITE) {
        flags |= WRITEABLE;
    }
    flags
}

/// An IOAS on a freshly opened `/dev/iommu`. Devices attach to it
/// ([`open_cdev`](super::open_cdev)); it is destroyed when dropped.
pub struct Ioas {
    iommufd: Arc<IommuFd>,
    ioas: IommufdIoas,
}

impl std::fmt::Debug for Ioas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ioas")
            .field("iommufd", &self.iommufd.as_raw_fd())
            .field("id", &self.ioas.id())
            .finish()
    }
}

impl Ioas {
    /// Opens `/dev/iommu` and allocates an IOAS in it (`IOMMU_IOAS_ALLOC`).
    pub fn open() -> Result<Self> {
        let iommufd = Arc::new(IommuFd::new().map_err(|e| from_ioctls("open", "/dev/iommu", e))?);
        let ioas = IommufdIoas::new(iommufd.clone())
            .map_err(|e| from_ioctls("IOMMU_IOAS_ALLOC", "/dev/iommu", e))?;
        Ok(Self { iommufd, ioas })
    }

    /// The IOAS's id, which devices attach to.
    pub fn id(&self) -> u32 {
        self.ioas.id()
    }

    /// The iommufd's file descriptor, which devices bind to.
    pub fn iommufd_fd(&self) -> RawFd {
        self.iommufd.as_raw_fd()
    }

    fn target(&self, iova: u64, len: u64) -> String {
        format!("IOAS {} iova {iova:#x}+{len:#x}", self.id())
    }
}

impl IoasOps for Ioas {
    fn iova_ranges(&self) -> Result<IoasRanges> {
        let (ranges, alignment) = iova_ranges(&*self.iommufd, self.id())?;
        Ok(IoasRanges { ranges, alignment })
    }

    fn map_va(&self, va: u64, iova: u64, len: u64, access: Access) -> Result<()> {
        let map = iommu_ioas_map {
            size: std::mem::size_of::<iommu_ioas_map>() as u32,
            flags: map_flags(access),
            ioas_id: self.id(),
            __reserved: 0,
            user_va: va,
            length: len,
            iova,
        };
        self.iommufd.map_iommu_ioas(&map).map_err(|e| {
            from_ioctls(
                "IOMMU_IOAS_MAP",
                &format!("{} va {va:#x}", self.target(iova, len)),
                e,
            )
        })
    }

    fn map_file(&self, file: &FileSlice, iova: u64, len: u64, access: Access) -> Result<()> {
        // Built here rather than with IommufdIoas::map_file, which always asks for READABLE:
        // the access asked is the access granted.
        let map = iommu_ioas_map_file {
            size: std::mem::size_of::<iommu_ioas_map_file>() as u32,
            flags: map_flags(access),
            ioas_id: self.id(),
            fd: file.file.as_raw_fd(),
            start: file.offset,
            length: len,
            iova,
        };
        self.iommufd.map_iommu_ioas_file(&map).map_err(|e| {
            let on = format!(
                "{} fd {} offset {:#x}",
                self.target(iova, len),
                map.fd,
                file.offset
            );
            from_ioctls("IOMMU_IOAS_MAP_FILE", &on, e)
        })
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<u64> {
        let mut unmap = iommu_ioas_unmap {
            size: std::mem::size_of::<iommu_ioas_unmap>() as u32,
            ioas_id: self.id(),
            iova,
            length: len,
        };
        self.iommufd
            .unmap_iommu_ioas(&mut unmap)
            .map_err(|e| from_ioctls("IOMMU_IOAS_UNMAP", &self.target(iova, len), e))?;
        // The kernel writes back how many bytes it unmapped.
        Ok(unmap.length)
    }
}
