//! # backend-iommu
//!
//! A software IOMMU for p2pdma: page tables in real hardware formats ([`VtdSecondLevel`],
//! [`ArmLpaeS2`]) stored in frames of simulated physical memory so that a hardware-style walk
//! reads exactly what hardware would; 4 KiB / 2 MiB / 1 GiB leaves chosen from the page-size
//! bitmap; an IOTLB with strict and lazy invalidation; and the IOVA allocator with per-thread
//! caches. [`SoftIommu`] puts them together as a p2p-core [`IommuDomain`](p2p_core::IommuDomain).
//!
//! Unmapping part of a larger page is refused (nothing is unmapped, the error names the page),
//! as Linux's io-pgtable-arm has done since split-on-unmap was removed.
//!
//! [`vfio`] drives a real kernel IOMMU through VFIO type1: container, groups, devices, DMA maps,
//! and peer BARs mapped for another device. [`iommufd`] drives it through iommufd, the modern
//! interface: an IOAS, device cdevs, memfds and peer BARs mapped by file (dma-bufs), and their
//! revoke. [`vfio::VfioBackend::detect`] says which one a machine offers. These two modules are
//! the crate's only `unsafe` code (ioctls, mmap), each block with its safety argument.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod domain;
pub mod format;
pub mod frames;
mod grace;
#[allow(unsafe_code)]
pub mod iommufd;
pub mod iotlb;
pub mod iova;
mod kernel_book;
pub mod pagetable;
mod sync;
#[allow(unsafe_code)]
pub mod vfio;

pub use domain::{FlushPolicy, SoftIommu};
pub use format::{ArmLpaeS2, Format, VtdSecondLevel};
pub use iova::IovaAllocator;
pub use pagetable::PageTable;
