//! Platforms: what a backend hands the negotiator.

use crate::error::Result;
use crate::negotiate::MappingObserver;
use crate::pci::PciAddr;
use crate::topology::Topology;
use crate::traits::{DomainKind, IommuDomain, MemoryExporter};
use std::sync::Arc;

/// A machine as a backend sees it: its topology, the IOMMU domain each device's requests go
/// through (devices of one IOMMU group share one), and host RAM as an exporter (bounce buffers
/// come from it; in simulated machines its offsets are CPU physical addresses, on a real one they
/// are offsets into a locked buffer).
pub trait Platform: Send + Sync + std::fmt::Debug {
    /// The topology now. A new topology (hot plug, ACS change) has a new generation, which drops
    /// cached plans; while the topology is unchanged, so is the generation.
    fn topology(&self) -> Arc<Topology>;
    /// The topology's generation now, always equal to `topology().generation()`: what a cached
    /// plan is checked against on every negotiation. The default takes the topology; a platform
    /// that can answer without cloning an `Arc` (a shared reference count that every mapping
    /// thread would write) should.
    fn topology_generation(&self) -> u64 {
        self.topology().generation()
    }
    /// The domain a device's DMA goes through: the same one (the same `Arc`) on every call while
    /// the topology is unchanged, with a page size and a non-empty aperture if it translates;
    /// an error for a device the topology does not have.
    fn domain(&self, device: PciAddr) -> Result<Arc<dyn IommuDomain>>;
    /// The kind of [`domain`](Self::domain)`(device)`, with the same errors: what a plan reads
    /// of the domain, on every negotiation. The default takes the domain; a platform that can
    /// answer without cloning an `Arc` (a shared reference count that every mapping thread
    /// would write) should.
    fn domain_kind(&self, device: PciAddr) -> Result<DomainKind> {
        Ok(self.domain(device)?.kind())
    }
    /// Host RAM: the same exporter on every call, resident in host RAM, whose pinned
    /// allocations (bounce buffers) have chunks.
    fn host_memory(&self) -> Arc<dyn MemoryExporter>;
    /// Who is told of every mapping made and torn down (a DMA sanitizer); none by default.
    fn observer(&self) -> Option<Arc<dyn MappingObserver>> {
        None
    }
}
