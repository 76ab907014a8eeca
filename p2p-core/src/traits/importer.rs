//! DMA importers: devices that issue DMA (an RDMA NIC, an NVMe controller, a DMA engine).

use crate::addr::{AddrRange, Offset};
use crate::error::Result;
use crate::pci::PciAddr;
use crate::traits::ExporterId;
use bitflags::bitflags;
use std::fmt;
use std::sync::Arc;

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
///
/// The default is the least an importer can say: no ODP, no peer memory, no atomics, a 64-bit
/// DMA mask, no segment limit. Set what the device has:
///
/// ```
/// use p2p_core::prelude::*;
/// let caps = ImporterCaps { flags: ImporterFlags::P2P, dma_mask: dma_mask(32), ..ImporterCaps::default() };
/// assert_eq!(caps.max_segment, 0); // no limit
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImporterCaps {
    /// Capabilities.
    pub flags: ImporterFlags,
    /// The highest address it can emit: a mask `2^n - 1` with `n >= 12`, as
    /// [`dma_mask(bits)`](crate::addr::dma_mask) makes.
    pub dma_mask: u64,
    /// The longest scatter-list segment it takes (Linux's `dma_set_max_seg_size`), in bytes;
    /// `0` means no limit. Longer address-contiguous runs are split at this size.
    pub max_segment: u64,
}

impl Default for ImporterCaps {
    fn default() -> Self {
        Self {
            flags: ImporterFlags::empty(),
            dma_mask: u64::MAX,
            max_segment: 0,
        }
    }
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

/// A shared importer is an importer: `&Arc<MyNic>` can be passed wherever an
/// `&impl DmaImporter` is taken.
impl<T: DmaImporter + ?Sized> DmaImporter for Arc<T> {
    fn device(&self) -> PciAddr {
        (**self).device()
    }
    fn caps(&self) -> ImporterCaps {
        (**self).caps()
    }
    fn invalidate(&self, notice: &Invalidation) -> Result<()> {
        (**self).invalidate(notice)
    }
}

/// Turns a shared importer of any type into the trait object the registry keeps (see
/// [`IntoDynExporter`](crate::traits::IntoDynExporter)); implemented for every sized importer
/// and for `dyn DmaImporter`.
pub trait IntoDynImporter: DmaImporter {
    /// The same object as `Arc<dyn DmaImporter>`.
    fn into_dyn(self: Arc<Self>) -> Arc<dyn DmaImporter>;

    /// The same object as `&dyn DmaImporter` (see
    /// [`IntoDynExporter::as_dyn`](crate::traits::IntoDynExporter::as_dyn)).
    fn as_dyn(&self) -> &dyn DmaImporter;
}

impl<T: DmaImporter + 'static> IntoDynImporter for T {
    fn into_dyn(self: Arc<Self>) -> Arc<dyn DmaImporter> {
        self
    }
    fn as_dyn(&self) -> &dyn DmaImporter {
        self
    }
}

impl IntoDynImporter for dyn DmaImporter {
    fn into_dyn(self: Arc<Self>) -> Arc<dyn DmaImporter> {
        self
    }
    fn as_dyn(&self) -> &dyn DmaImporter {
        self
    }
}
