//! The passthrough platform: every device's DMA is untranslated.

use crate::domain::IdentityDomain;
use p2p_core::addr::dma_mask;
use p2p_core::topology::sysfs::{self, SysfsScan};
use p2p_core::topology::Topology;
use p2p_core::traits::{IommuDomain, MemoryExporter, Platform};
use p2p_core::{Error, PciAddr, Result};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// A machine whose devices reach memory by bus address: no IOMMU, `iommu=pt`, or identity
/// default domains. Host memory (for bounce buffers) is whatever exporter the caller gives,
/// normally a [`LockedHostMemory`](crate::LockedHostMemory).
#[derive(Debug)]
pub struct PassthroughPlatform {
    topology: RwLock<Arc<Topology>>,
    host: Arc<dyn MemoryExporter>,
    identity: Arc<IdentityDomain>,
    /// Devices whose IOMMU group translates: why identity DMA would fault for them.
    translated: HashMap<PciAddr, String>,
    masks: HashMap<PciAddr, u64>,
}

impl PassthroughPlatform {
    /// A platform over a topology, with host memory for bounce buffers.
    pub fn new(topology: Topology, host: Arc<dyn MemoryExporter>) -> Self {
        Self {
            topology: RwLock::new(Arc::new(topology)),
            host,
            identity: Arc::new(IdentityDomain::new()),
            translated: HashMap::new(),
            masks: HashMap::new(),
        }
    }

    /// This machine (or the sysfs tree at `root`): the topology, each device's DMA mask, and
    /// which devices sit in an IOMMU group whose domain translates (`type` other than
    /// `identity`), for which [`domain`](Platform::domain) refuses.
    pub fn from_sysfs(root: &Path, host: Arc<dyn MemoryExporter>) -> Result<(Self, SysfsScan)> {
        let scan = sysfs::scan(root)?;
        let mut p = Self::new(scan.topology.clone(), host);
        for d in &scan.devices {
            if let Some(bits) = d.dma_mask_bits {
                p.masks.insert(d.addr, dma_mask(bits));
            }
            if let Some(group) = d.iommu_group {
                let path = root.join(format!("kernel/iommu_groups/{group}/type"));
                let kind = match std::fs::read_to_string(&path) {
                    Ok(t) => t.trim().to_owned(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => "unknown".into(),
                    Err(e) => {
                        return Err(Error::Sysfs {
                            path: path.display().to_string(),
                            message: format!("cannot read: {e}"),
                        })
                    }
                };
                if kind != "identity" {
                    p.translated
                        .insert(d.addr, format!("IOMMU group {group} has a {kind} domain"));
                }
            }
        }
        Ok((p, scan))
    }

    /// A device's DMA mask as its driver set it (from sysfs), when known.
    pub fn dma_mask(&self, device: PciAddr) -> Option<u64> {
        self.masks.get(&device).copied()
    }

    /// Replaces the topology (hot plug, ACS change): cached plans are dropped.
    pub fn set_topology(&self, topology: Topology) {
        *self.topology.write() = Arc::new(topology);
    }
}

impl Platform for PassthroughPlatform {
    fn topology(&self) -> Arc<Topology> {
        self.topology.read().clone()
    }

    fn domain(&self, device: PciAddr) -> Result<Arc<dyn IommuDomain>> {
        self.topology.read().lookup(device)?;
        if let Some(why) = self.translated.get(&device) {
            return Err(Error::DeviceTranslated {
                device,
                why: why.clone(),
            });
        }
        Ok(self.identity.clone())
    }

    fn host_memory(&self) -> Arc<dyn MemoryExporter> {
        self.host.clone()
    }
}
