//! What the integration tests that drive the negotiator through the software IOMMU share.
#![allow(dead_code)]

use backend_iommu::{SoftIommu, VtdSecondLevel};
use p2p_core::prelude::*;
use p2p_core::testing::TestHostMemory;
use std::sync::Arc;

/// A platform whose every device's DMA goes through one `SoftIommu` (VT-d format).
#[derive(Debug)]
pub struct SoftPlatform {
    pub topology: Arc<Topology>,
    pub nic: Arc<SoftIommu<VtdSecondLevel>>,
    pub host: Arc<TestHostMemory>,
}

impl Platform for SoftPlatform {
    fn topology(&self) -> Arc<Topology> {
        self.topology.clone()
    }
    fn domain(&self, _device: PciAddr) -> Result<Arc<dyn IommuDomain>> {
        Ok(self.nic.clone())
    }
    fn host_memory(&self) -> Arc<dyn MemoryExporter> {
        self.host.clone()
    }
}
