//! # backend-iommu
//!
//! The software IOMMU of p2pdma: page tables in real hardware formats (Intel VT-d second level,
//! ARM LPAE), an IOTLB with strict and lazy invalidation, the IOVA allocator, and the Linux VFIO
//! path to a real kernel IOMMU.
//!
//! This crate is empty until its issue is done: nothing here pretends to work. The traits it will
//! implement live in [`p2p_core::traits`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]
