//! The Linux iommufd path to a real IOMMU: IOAS objects, VFIO device cdevs, and peer BARs shared
//! as dma-bufs.
//!
//! An [`Ioas`] is an I/O address space in an iommufd (`/dev/iommu`); devices join it through
//! their VFIO cdevs ([`open_cdev`]: bind to the iommufd, attach to the IOAS). [`IommufdDomain`]
//! is the IOAS as a p2p-core [`IommuDomain`](p2p_core::IommuDomain): host memory is mapped by
//! virtual address (`IOMMU_IOAS_MAP`) or by file (`IOMMU_IOAS_MAP_FILE` on a memfd), and a peer's
//! BAR by file, as the dma-buf its own VFIO driver exports ([`VfioDmaBuf`], since Linux 6.19):
//! no CPU mapping of the BAR is needed, which is why iommufd refuses the type1 way (a BAR's
//! virtual address) with `EFAULT`.
//!
//! The kernel can revoke such a dma-buf (its device reset, its memory disabled): iommufd then
//! unmaps it. [`VfioDmaBuf::revoke`] does that in the library's order: importers told and their
//! mappings torn down first (the negotiator's forced revoke), then the kernel revokes.
//!
//! ```no_run
//! use backend_iommu::iommufd::{open_cdev, Ioas, IommufdDomain};
//! use std::path::Path;
//! use std::sync::Arc;
//! # fn main() -> p2p_core::Result<()> {
//! let dev: p2p_core::PciAddr = "0000:00:03.0".parse()?;
//! let ioas = Arc::new(Ioas::open()?);                     // /dev/iommu, IOMMU_IOAS_ALLOC
//! let device = open_cdev(Path::new("/sys"), dev, &ioas)?; // bind + attach
//! device.enable_bus_master()?;
//! let domain = IommufdDomain::over(ioas.clone())?;        // after every attach
//! # Ok(()) }
//! ```
//!
//! Same shape as [`vfio`](crate::vfio): the kernel behind a small trait ([`IoasOps`]) that tests
//! replace with a model of iommufd's rules. Errors name the ioctl and the errno.

mod cdev;
mod dmabuf;
mod domain;
mod ioas;
mod sys;

pub use cdev::{cdev_of, open_cdev};
pub use dmabuf::VfioDmaBuf;
pub use domain::IommufdDomain;
pub use ioas::{Ioas, IoasOps, IoasRanges};
