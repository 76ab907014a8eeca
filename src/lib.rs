//! # p2pdma
//!
//! DMA between devices and memory — peer-to-peer between a GPU's BAR and an RDMA NIC, or device
//! to host RAM — through pluggable backends.
//!
//! This facade re-exports the workspace's crates: [`core`] (vocabulary, topology, traits and
//! negotiator) and the backends. Start with [`core::negotiate::Negotiator`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use backend_iommu as iommu;
pub use backend_mock as mock;
pub use backend_passthrough as passthrough;
pub use p2p_core as core;
pub use p2p_core::prelude;

/// The README's quickstart, compiled and run as a doc test so that it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
