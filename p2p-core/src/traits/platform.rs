//! Platforms: what a backend hands the negotiator.

use crate::error::Result;
use crate::negotiate::MappingObserver;
use crate::pci::PciAddr;
use crate::topology::Topology;
use crate::traits::{IommuDomain, MemoryExporter};
use std::sync::Arc;

/// A machine as a backend sees it: its topology, the IOMMU domain each device's requests go
/// through (devices of one IOMMU group share one), and host RAM as an exporter (bounce buffers
/// come from it; in simulated machines its offsets are CPU physical addresses, on a real one they
/// are offsets into a locked buffer).
pub trait Platform: Send + Sync + std::fmt::Debug {
    /// The topology now. A new topology (hot plug, ACS change) has a new generation, which drops
    /// cached plans.
    fn topology(&self) -> Arc<Topology>;
    /// The domain a device's DMA goes through.
    fn domain(&self, device: PciAddr) -> Result<Arc<dyn IommuDomain>>;
    /// Host RAM.
    fn host_memory(&self) -> Arc<dyn MemoryExporter>;
    /// Who is told of every mapping made and torn down (a DMA sanitizer); none by default.
    fn observer(&self) -> Option<Arc<dyn MappingObserver>> {
        None
    }
}
