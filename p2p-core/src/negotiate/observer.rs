//! Observing mappings as they are made and torn down: the hook a DMA sanitizer hangs on (as
//! Linux's DMA-API debugging hooks `dma_map_*` / `dma_unmap_*`).

use super::{Segment, Strategy};
use crate::access::Access;
use crate::addr::{AddrRange, Offset};
use crate::pci::PciAddr;
use crate::traits::{ExporterId, InvalidationKind};

/// One mapping as an observer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingEvent {
    /// The mapping's id in the registry.
    pub mapping: u64,
    /// The device that will DMA.
    pub importer: PciAddr,
    /// Whose memory.
    pub exporter: ExporterId,
    /// Which bytes of it.
    pub range: AddrRange<Offset>,
    /// What the device is programmed with.
    pub segments: Vec<Segment>,
    /// What the device may do.
    pub access: Access,
    /// How it was established.
    pub strategy: Strategy,
}

/// Why a mapping went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeardownCause {
    /// Its handle was dropped.
    Dropped,
    /// Its memory moved or was revoked.
    Invalidated(InvalidationKind),
}

impl std::fmt::Display for TeardownCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TeardownCause::Dropped => "dropped",
            TeardownCause::Invalidated(InvalidationKind::Move) => "invalidated: the memory moved",
            TeardownCause::Invalidated(InvalidationKind::Revoke) => "revoked",
        })
    }
}

/// Told of every mapping the negotiator establishes and tears down, in registry order: it is
/// called with the registry lock held, so a teardown never reaches it before the set-up it undoes.
/// It must not block for long and must not call back into the negotiator.
pub trait MappingObserver: Send + Sync + std::fmt::Debug {
    /// A mapping is live: its segments may be used from now on.
    fn established(&self, event: &MappingEvent);
    /// A mapping is going away: its segments must not be used from now on. Called after the
    /// importer acknowledged an invalidation and before the IOMMU mapping is removed.
    fn torn_down(&self, event: &MappingEvent, cause: TeardownCause);
}
