//! A peer device's BAR, mmapped from its VFIO device and registered with the domain, as an
//! exporter: the IOMMU then maps it for another device (peer-to-peer through the host bridge).

use super::device::VfioDevice;
use super::domain::VfioDomain;
use super::sys::MappedRegion;
use p2p_core::addr::{AddrRange, Offset, VirtAddr};
use p2p_core::export::BarExporter;
use p2p_core::topology::{Bar, Topology};
use p2p_core::traits::{ChunkList, ExportGrant, ExporterId, ExporterInfo, MemoryExporter};
use p2p_core::Result;

/// A BAR of a VFIO device as peer-to-peer memory: its CPU physical address from the topology,
/// its bytes through the mapping, and a window in the domain so that `map` can hand the kernel
/// the virtual address it needs.
#[derive(Debug)]
pub struct VfioBar {
    region: MappedRegion,
    exporter: BarExporter,
}

impl VfioBar {
    /// Maps BAR `index` of `device` (described by `topology`) and registers it with `domain`.
    pub fn new(
        device: &VfioDevice,
        topology: &Topology,
        index: u8,
        domain: &VfioDomain,
    ) -> Result<Self> {
        let exporter = BarExporter::new(topology, device.addr(), index)?;
        let region = device.map_bar(u32::from(index))?;
        let bar = exporter.bar();
        let len = bar.size.min(region.len());
        domain.add_window(VirtAddr(region.va()), bar.cpu, len)?;
        Ok(Self { region, exporter })
    }

    /// The BAR as the topology describes it.
    pub fn bar(&self) -> Bar {
        self.exporter.bar()
    }

    /// The BAR's bytes, as the CPU sees them.
    pub fn region(&self) -> &MappedRegion {
        &self.region
    }
}

impl MemoryExporter for VfioBar {
    fn id(&self) -> ExporterId {
        self.exporter.id()
    }
    fn info(&self) -> ExporterInfo {
        self.exporter.info()
    }
    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        self.exporter.export(range, pin)
    }
    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        self.exporter.allocate(len, pin)
    }
    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
        self.exporter.chunks(grant)
    }
    fn release(&self, grant: &ExportGrant) -> Result<()> {
        self.exporter.release(grant)
    }
}
