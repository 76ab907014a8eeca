//! DMA importers: devices that issue DMA (an RDMA NIC, an NVMe controller, a DMA engine).

use crate::addr::{AddrRange, Offset};
use crate::error::Result;
use crate::pci::PciAddr;
use crate::traits::ExporterId;
use bitflags::bitflags;
use std::fmt;

bitflags! {
    /// What an importer can do.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct ImporterFlags: u8 {
        /// On-demand paging: it can take page faults, so its mappings can be revoked and
        /// re-faulted (mlx5 ODP). Without it, memory must be pinned.
        const ODP = 1 << 0;
        /// It handles peer memory without struct pages (dma-buf's `allow_peer2peer`).
        const P2P = 1 << 1;
        /// It issues PCIe AtomicOps.
        const ATOMICS = 1 << 2;
    }
}

/// An importer's capabilities and addressing limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImporterCaps {
    /// Capabilities.
    pub flags: ImporterFlags,
    /// The highest address it can emit: a mask `2^n - 1` with `n >= 12`, as
    /// [`dma_mask(bits)`](crate::addr::dma_mask) makes.
    pub dma_mask: u64,
    /// The longest scatter-list segment it takes.
    pub max_segment: u64,
}

/// Whether memory is moving (old mappings may finish; new maps see the new place) or being
/// revoked (gone for good: maps fail from now on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidationKind {
    /// The memory moves (dma-buf `move_notify`, an HMM migration).
    Move,
    /// The memory is revoked (device reset, decode disabled). A forced revoke
    /// ([`Negotiator::begin_forced_revoke`](crate::negotiate::Negotiator::begin_forced_revoke))
    /// sends this to pinned mappings too: the importer must stop, since its mapping is torn
    /// down whatever it answers.
    Revoke,
}

/// The notice an importer receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// The mapping it concerns.
    pub mapping: u64,
    /// The exporter.
    pub exporter: ExporterId,
    /// The bytes of the exporter's memory that go away (may be larger than the mapping).
    pub range: AddrRange<Offset>,
    /// Move or revoke.
    pub kind: InvalidationKind,
    /// The mapping's sequence number during the invalidation (odd).
    pub seq: u64,
}

/// A device that issues DMA.
///
/// [`device`](Self::device) and [`caps`](Self::caps) answer the same on every call: the
/// negotiator caches plans made from them.
///
/// Contract for [`invalidate`](Self::invalidate): when it returns `Ok`, the device has stopped
/// using the mapping (its PTEs are zapped, outstanding DMA is fenced), so the IOMMU mapping can go
/// and the memory can move. It returns an error only if it could not stop; the memory then does
/// not move. It must not call back into the negotiator for the same mapping.
pub trait DmaImporter: Send + Sync + fmt::Debug {
    /// Its PCI address.
    fn device(&self) -> PciAddr;
    /// What it can do.
    fn caps(&self) -> ImporterCaps;
    /// Stop using a mapping.
    fn invalidate(&self, notice: &Invalidation) -> Result<()>;
}
