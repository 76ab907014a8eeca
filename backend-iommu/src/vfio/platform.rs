//! A machine whose devices of interest are owned through VFIO: they share one domain (a type1
//! container's, or an iommufd IOAS's); other devices are not ours to program.

use p2p_core::topology::Topology;
use p2p_core::traits::{DomainKind, IommuDomain, MemoryExporter, Platform};
use p2p_core::{Error, PciAddr, Result, VfioProblem};
use std::path::Path;
use std::sync::Arc;

/// Which kernel interface owns the devices' DMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VfioBackend {
    /// iommufd: an IOAS, device cdevs, maps by file ([`crate::iommufd`]).
    Iommufd,
    /// VFIO type1: a container and groups, maps by virtual address ([`crate::vfio`]).
    Type1,
}

impl VfioBackend {
    /// iommufd when the kernel offers it for every one of `devices`: `/dev/iommu` exists and
    /// each device, bound to vfio-pci, has a cdev (`vfio-dev/vfioN` under `sys`). Otherwise
    /// type1, which every VFIO kernel has.
    pub fn detect(dev: &Path, sys: &Path, devices: &[PciAddr]) -> Self {
        let has_cdev = |d: &PciAddr| crate::iommufd::cdev_of(sys, *d).is_ok();
        if dev.join("iommu").exists() && devices.iter().all(has_cdev) {
            VfioBackend::Iommufd
        } else {
            VfioBackend::Type1
        }
    }
}

impl std::fmt::Display for VfioBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VfioBackend::Iommufd => "iommufd",
            VfioBackend::Type1 => "type1",
        })
    }
}

/// The platform a VFIO user sees: the topology (from sysfs), the domain of the devices attached
/// to it ([`VfioDomain`](super::VfioDomain) or [`IommufdDomain`](crate::iommufd::IommufdDomain)),
/// and host memory for bounce buffers.
#[derive(Debug)]
pub struct VfioPlatform {
    topology: Arc<Topology>,
    domain: Arc<dyn IommuDomain>,
    devices: Vec<PciAddr>,
    host: Arc<dyn MemoryExporter>,
}

impl VfioPlatform {
    /// `devices` are the ones whose DMA goes through `domain` (attached to its container or
    /// IOAS).
    pub fn new(
        topology: Topology,
        domain: Arc<dyn IommuDomain>,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs tree and a /dev with the files detect looks at, in a fresh temporary directory.
    fn tree(name: &str, iommu: bool, cdevs: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
        let root =
            std::env::temp_dir().join(format!("p2pdma-detect-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (sys, dev) = (root.join("sys"), root.join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        if iommu {
            std::fs::write(dev.join("iommu"), b"").unwrap();
        }
        for (i, d) in cdevs.iter().enumerate() {
            let dir = sys.join(format!("bus/pci/devices/{d}/vfio-dev/vfio{i}"));
            std::fs::create_dir_all(dir).unwrap();
        }
        (sys, dev)
    }

    #[test]
    fn iommufd_only_when_the_kernel_offers_it_for_every_device() {
        let a: PciAddr = "0000:00:02.0".parse().unwrap();
        let b: PciAddr = "0000:00:03.0".parse().unwrap();
        let both = ["0000:00:02.0", "0000:00:03.0"];
        let (sys, dev) = tree("both", true, &both);
        assert_eq!(
            VfioBackend::detect(&dev, &sys, &[a, b]),
            VfioBackend::Iommufd
        );
        assert_eq!(
            crate::iommufd::cdev_of(&sys, b).unwrap(),
            std::path::PathBuf::from("/dev/vfio/devices/vfio1")
        );
        let (sys, dev) = tree("no-iommu", false, &both);
        assert_eq!(VfioBackend::detect(&dev, &sys, &[a, b]), VfioBackend::Type1);
        let (sys, dev) = tree("one-cdev", true, &both[..1]);
        assert_eq!(VfioBackend::detect(&dev, &sys, &[a, b]), VfioBackend::Type1);
        assert!(matches!(
            crate::iommufd::cdev_of(&sys, b),
            Err(Error::Os { .. }) | Err(Error::Vfio { .. })
        ));
        assert_eq!(VfioBackend::Iommufd.to_string(), "iommufd");
    }
}
