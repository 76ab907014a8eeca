//! The Linux VFIO path to a real IOMMU (type1v2).
//!
//! A [`VfioContainer`] is an IOMMU context; [`VfioGroup`]s (the IOMMU's isolation units) join
//! it; [`VfioDevice`]s are opened from a group once the container has its IOMMU set, and give
//! their regions: BARs to mmap, configuration space (bus mastering). [`VfioDomain`] is the
//! container's context as a p2p-core [`IommuDomain`](p2p_core::IommuDomain): the negotiator maps
//! through it with `VFIO_IOMMU_MAP_DMA`. [`VfioBar`] exports a device's BAR into that domain for
//! another device: peer-to-peer through the IOMMU.
//!
//! ```no_run
//! use backend_iommu::vfio::{VfioContainer, VfioDomain, VfioGroup};
//! use std::sync::Arc;
//! # fn main() -> p2p_core::Result<()> {
//! let dev: p2p_core::PciAddr = "0000:00:03.0".parse()?;
//! let container = Arc::new(VfioContainer::open()?);
//! let group = VfioGroup::open(VfioGroup::id_of(std::path::Path::new("/sys"), dev)?)?;
//! container.attach(&group)?;            // sets the type1v2 IOMMU on first attach
//! let device = group.device(dev)?;      // only after the IOMMU is set
//! device.enable_bus_master()?;
//! let domain = VfioDomain::new(container)?;
//! # Ok(()) }
//! ```
//!
//! Errors name the ioctl and the errno (`VFIO_IOMMU_MAP_DMA on iova 0x1000 size 0x1000 vaddr
//! 0x7f…: Invalid argument (os error 22)`).
//!
//! Most users want [`VfioSession`] instead: it opens the devices through iommufd
//! ([`crate::iommufd`]) when the kernel offers it and through type1 otherwise
//! ([`VfioBackend::detect`]), and gives one domain, peer BARs ([`PeerBar`]) and a
//! [`VfioPlatform`] whichever it chose.

mod bar;
mod container;
mod device;
mod domain;
mod group;
mod platform;
mod session;
pub(crate) mod sys;

pub use bar::VfioBar;
pub use container::{parse_iommu_info, IommuInfo, VfioContainer};
pub use device::{RegionInfo, VfioDevice};
pub use domain::{Type1, VfioDomain};
pub use group::VfioGroup;
pub use platform::{VfioBackend, VfioPlatform};
pub use session::{PeerBar, VfioSession};
pub use sys::MappedRegion;
