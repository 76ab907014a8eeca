//! Devices opened through whichever VFIO interface the kernel offers: the platform chooses
//! iommufd where it can, type1 otherwise, and hands out one domain and one kind of peer-BAR
//! exporter to match.

use super::{VfioBackend, VfioBar, VfioContainer, VfioDevice, VfioDomain, VfioGroup, VfioPlatform};
use crate::iommufd::{open_cdev, Ioas, IommufdDomain, VfioDmaBuf};
use p2p_core::addr::VirtAddr;
use p2p_core::negotiate::{InvalidationReport, Negotiator};
use p2p_core::topology::{Bar, Topology};
use p2p_core::traits::{Chunk, IommuDomain, MemoryExporter};
use p2p_core::{Error, PciAddr, Result, VfioProblem};
use std::path::Path;
use std::sync::Arc;

/// The kernel objects that keep the devices' DMA in one domain.
#[derive(Debug)]
enum Kernel {
    /// A container with the devices' groups attached (the groups' fds keep them there).
    Type1 {
        domain: Arc<VfioDomain>,
        _container: Arc<VfioContainer>,
        _groups: Vec<VfioGroup>,
    },
    /// An IOAS the devices' cdevs are attached to.
    Iommufd {
        domain: Arc<IommufdDomain>,
        _ioas: Arc<Ioas>,
    },
}

/// Devices of interest opened through VFIO, their DMA in one domain.
///
/// [`open`](Self::open) asks [`VfioBackend::detect`] which interface to use: iommufd (an IOAS,
/// the devices' cdevs bound and attached) on a kernel that has it for every device, VFIO type1
/// (a container and the devices' groups) otherwise. The rest does not depend on the choice:
/// [`domain`](Self::domain), [`peer_bar`](Self::peer_bar) (a BAR mapped by its virtual address
/// under type1, exported as a dma-buf and mapped by file under iommufd),
/// [`add_host_memory`](Self::add_host_memory), [`platform`](Self::platform).
///
/// ```no_run
/// use backend_iommu::vfio::VfioSession;
/// use std::path::Path;
/// # fn main() -> p2p_core::Result<()> {
/// let devs = ["0000:00:02.0".parse()?, "0000:00:03.0".parse()?];
/// let session = VfioSession::open(Path::new("/sys"), Path::new("/dev"), &devs)?;
/// println!("VFIO backend: {}", session.backend());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct VfioSession {
    // Fields drop in order: the devices (detached as their fds close) before the IOAS or the
    // container they were attached to, which the kernel refuses to destroy while in use. Only
    // when nothing else holds them: a `PeerBar` keeps its device, a platform the domain.
    devices: Vec<Arc<VfioDevice>>,
    kernel: Kernel,
}

impl VfioSession {
    /// Opens `devices` (each bound to vfio-pci) through the interface the kernel offers: `sys`
    /// is sysfs, `dev` the device directory (`/sys`, `/dev` on a real machine).
    ///
    /// A kernel with iommufd but without VFIO dma-bufs (6.2 to 6.18) could not share a peer's
    /// BAR through iommufd (it refuses a BAR's virtual address): there the session is opened
    /// through type1 instead.
    pub fn open(sys: &Path, dev: &Path, devices: &[PciAddr]) -> Result<Self> {
        if VfioBackend::detect(dev, sys, devices) == VfioBackend::Iommufd {
            let session = Self::open_iommufd(sys, devices)?;
            match session.devices.first() {
                Some(d) if !VfioDmaBuf::supported(d)? => {
                    tracing::info!(device = %d.addr(), "iommufd without VFIO dma-bufs: using type1");
                    drop(session);
                }
                _ => return Ok(session),
            }
        }
        Self::open_type1(sys, devices)
    }

    /// Through iommufd: an IOAS, each device's cdev bound and attached, then the domain (after
    /// every attach, as each may narrow the usable IOVAs).
    pub fn open_iommufd(sys: &Path, devices: &[PciAddr]) -> Result<Self> {
        let ioas = Arc::new(Ioas::open()?);
        let opened = devices
            .iter()
            .map(|&d| open_cdev(sys, d, &ioas).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let domain = Arc::new(IommufdDomain::over(ioas.clone())?);
        Ok(Self {
            kernel: Kernel::Iommufd {
                domain,
                _ioas: ioas,
            },
            devices: opened,
        })
    }

    /// Through VFIO type1: a container, each device's group attached (once), the domain, and
    /// only then the device fds (the kernel hands them out once the container has its IOMMU).
    pub fn open_type1(sys: &Path, devices: &[PciAddr]) -> Result<Self> {
        let container = Arc::new(VfioContainer::open()?);
        let mut groups: Vec<VfioGroup> = Vec::new();
        let mut group_of = Vec::with_capacity(devices.len());
        for &d in devices {
            let id = VfioGroup::id_of(sys, d)?;
            let at = match groups.iter().position(|g| g.id() == id) {
                Some(at) => at,
                None => {
                    let g = VfioGroup::open(id)?;
                    container.attach(&g)?;
                    groups.push(g);
                    groups.len() - 1
                }
            };
            group_of.push(at);
        }
        let domain = Arc::new(VfioDomain::new(container.clone())?);
        let opened = devices
            .iter()
            .zip(group_of)
            .map(|(&d, g)| groups[g].device(d).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            kernel: Kernel::Type1 {
                domain,
                _container: container,
                _groups: groups,
            },
            devices: opened,
        })
    }

    /// The interface in use.
    pub fn backend(&self) -> VfioBackend {
        match self.kernel {
            Kernel::Type1 { .. } => VfioBackend::Type1,
            Kernel::Iommufd { .. } => VfioBackend::Iommufd,
        }
    }

    /// The domain every opened device's DMA goes through.
    pub fn domain(&self) -> Arc<dyn IommuDomain> {
        match &self.kernel {
            Kernel::Type1 { domain, .. } => domain.clone(),
            Kernel::Iommufd { domain, .. } => domain.clone(),
        }
    }

    /// An opened device.
    pub fn device(&self, addr: PciAddr) -> Result<&Arc<VfioDevice>> {
        self.devices
            .iter()
            .find(|d| d.addr() == addr)
            .ok_or_else(|| Error::Vfio {
                target: addr.to_string(),
                problem: VfioProblem::NotAttached,
            })
    }

    /// BAR `index` of an opened device as peer memory for the others: under type1 mmapped and
    /// registered by its virtual address ([`VfioBar`]), under iommufd exported as a dma-buf
    /// ([`VfioDmaBuf`], memory decoding turned on first, as a dma-buf made without it starts
    /// revoked).
    pub fn peer_bar(&self, topology: &Topology, addr: PciAddr, index: u8) -> Result<PeerBar> {
        let device = self.device(addr)?;
        match &self.kernel {
            Kernel::Type1 { domain, .. } => Ok(PeerBar::Mapped(Arc::new(VfioBar::new(
                device, topology, index, domain,
            )?))),
            Kernel::Iommufd { .. } => {
                device.set_memory_enabled(true)?;
                let buf = VfioDmaBuf::new(device.clone(), topology, index)?;
                Ok(PeerBar::DmaBuf(Arc::new(buf)))
            }
        }
    }

    /// Registers host memory mapped at `va` (its `chunks` as its exporter reports them) so that
    /// the domain can map it: by virtual address, except under iommufd for chunks that carry
    /// their file (a memfd), which are mapped by file and need nothing registered.
    pub fn add_host_memory(&self, va: VirtAddr, chunks: &[Chunk]) -> Result<()> {
        for c in chunks {
            let at = VirtAddr(va.0 + c.offset.0);
            match &self.kernel {
                Kernel::Type1 { domain, .. } => domain.add_window(at, c.phys, c.len)?,
                Kernel::Iommufd { .. } if c.file.is_some() => {}
                Kernel::Iommufd { domain, .. } => domain.add_window(at, c.phys, c.len)?,
            }
        }
        Ok(())
    }

    /// The platform the negotiator needs: `topology`, the opened devices in this session's
    /// domain, and `host` for bounce buffers.
    pub fn platform(&self, topology: Topology, host: Arc<dyn MemoryExporter>) -> VfioPlatform {
        let devices = self.devices.iter().map(|d| d.addr()).collect();
        VfioPlatform::new(topology, self.domain(), devices, host)
    }
}

/// A peer's BAR as [`VfioSession::peer_bar`] made it for the interface in use.
#[derive(Debug, Clone)]
pub enum PeerBar {
    /// Type1: mmapped, mapped by its virtual address.
    Mapped(Arc<VfioBar>),
    /// iommufd: a dma-buf, mapped by file.
    DmaBuf(Arc<VfioDmaBuf>),
}

impl PeerBar {
    /// The BAR as an exporter for the negotiator.
    pub fn exporter(&self) -> Arc<dyn MemoryExporter> {
        match self {
            PeerBar::Mapped(b) => b.clone(),
            PeerBar::DmaBuf(b) => b.clone(),
        }
    }

    /// The BAR as the topology describes it.
    pub fn bar(&self) -> Bar {
        match self {
            PeerBar::Mapped(b) => b.bar(),
            PeerBar::DmaBuf(b) => b.bar(),
        }
    }

    /// Takes the BAR back with the negotiator's forced revoke (every importer told, every
    /// mapping torn down), then, for a dma-buf, the kernel's revoke (see
    /// [`VfioDmaBuf::revoke`]). A type1 BAR has no kernel object to revoke: the forced revoke is
    /// all there is, and the BAR stays mmapped in this process.
    pub fn revoke(&self, negotiator: &Negotiator) -> Result<InvalidationReport> {
        match self {
            PeerBar::Mapped(b) => {
                let whole = p2p_core::AddrRange::new(p2p_core::Offset(0), b.bar().size)?;
                negotiator.revoke_forced(b.id(), whole)
            }
            PeerBar::DmaBuf(b) => b.revoke(negotiator),
        }
    }
}
