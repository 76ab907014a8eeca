//! A machine whose devices of interest are owned through VFIO: they share one container's
//! domain; other devices are not ours to program.

use super::domain::VfioDomain;
use p2p_core::topology::Topology;
use p2p_core::traits::{DomainKind, IommuDomain, MemoryExporter, Platform};
use p2p_core::{Error, PciAddr, Result, VfioProblem};
use std::sync::Arc;

/// The platform a VFIO user sees: the topology (from sysfs), the container's domain for the
/// devices attached to it, and host memory for bounce buffers.
#[derive(Debug)]
pub struct VfioPlatform {
    topology: Arc<Topology>,
    domain: Arc<VfioDomain>,
    devices: Vec<PciAddr>,
    host: Arc<dyn MemoryExporter>,
}

impl VfioPlatform {
    /// `devices` are the ones opened through the container of `domain`.
    pub fn new(
        topology: Topology,
        domain: Arc<VfioDomain>,
        devices: Vec<PciAddr>,
        host: Arc<dyn MemoryExporter>,
    ) -> Self {
        Self {
            topology: Arc::new(topology),
            domain,
            devices,
            host,
        }
    }

    /// A device the topology has and the container holds, or the error `domain` returns.
    fn attached(&self, device: PciAddr) -> Result<()> {
        self.topology.lookup(device)?;
        if !self.devices.contains(&device) {
            return Err(Error::Vfio {
                target: device.to_string(),
                problem: VfioProblem::NotAttached,
            });
        }
        Ok(())
    }
}

impl Platform for VfioPlatform {
    fn topology(&self) -> Arc<Topology> {
        self.topology.clone()
    }

    fn topology_generation(&self) -> u64 {
        self.topology.generation()
    }

    fn domain(&self, device: PciAddr) -> Result<Arc<dyn IommuDomain>> {
        self.attached(device)?;
        Ok(self.domain.clone())
    }

    fn domain_kind(&self, device: PciAddr) -> Result<DomainKind> {
        self.attached(device)?;
        Ok(self.domain.kind())
    }

    fn host_memory(&self) -> Arc<dyn MemoryExporter> {
        self.host.clone()
    }
}
