//! A peer device's BAR exported as a dma-buf by its VFIO driver: peer-to-peer memory that the
//! importer's IOAS maps by file, with no CPU mapping, and that the owner can take back.

use super::sys::{export_dma_buf, probe_dma_buf};
use crate::vfio::VfioDevice;
use p2p_core::addr::{AddrRange, Offset};
use p2p_core::export::BarExporter;
use p2p_core::negotiate::{InvalidationReport, Negotiator};
use p2p_core::topology::{Bar, Topology};
use p2p_core::traits::{
    ChunkList, ExportGrant, ExporterId, ExporterInfo, FileSlice, MemoryExporter,
};
use p2p_core::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// BAR `index` of a VFIO device as a dma-buf (`VFIO_DEVICE_FEATURE_DMA_BUF`, one range: the
/// whole BAR), and as an exporter whose chunks carry that dma-buf and their offset in it, so an
/// [`IommufdDomain`](super::IommufdDomain) maps them with `IOMMU_IOAS_MAP_FILE`. Addresses come
/// from the topology, as for any BAR.
///
/// [`revoke`](Self::revoke) takes the memory back: importers first, then the kernel.
///
/// The kernel revokes per device, not per dma-buf: turning memory decoding off revokes every
/// dma-buf exported from any BAR of the device, and turning it back on (this crate's
/// `enable_bus_master` or `set_memory_enabled(true)`, or anyone writing the command register)
/// makes the kernel serve them again. Export one `VfioDmaBuf` per device and revoke through it,
/// or revoke all of a device's together. A revoke the kernel starts itself (a device reset, the
/// command register written elsewhere) is not seen here: iommufd unmaps the memory from the
/// hardware, so DMA faults, but the domain's record and the negotiator's mappings stay until
/// [`revoke`](Self::revoke) (or a drop) tears them down.
#[derive(Debug)]
pub struct VfioDmaBuf {
    device: Arc<VfioDevice>,
    buf: Arc<std::fs::File>,
    exporter: BarExporter,
    revoked: AtomicBool,
}

impl VfioDmaBuf {
    /// Exports BAR `index` of `device` (described by `topology`) as a dma-buf. The device's
    /// memory decoding must be on (a dma-buf made while it is off starts revoked).
    pub fn new(device: Arc<VfioDevice>, topology: &Topology, index: u8) -> Result<Self> {
        let exporter = BarExporter::new(topology, device.addr(), index)?;
        let size = exporter.bar().size;
        let on = format!("{} BAR{index}", device.addr());
        let buf = export_dma_buf(device.file(), u32::from(index), 0, size, &on)?;
        Ok(Self {
            device,
            buf: Arc::new(buf),
            exporter,
            revoked: AtomicBool::new(false),
        })
    }

    /// Whether the kernel can export `device`'s BARs as dma-bufs (Linux 6.19 and later).
    pub fn supported(device: &VfioDevice) -> Result<bool> {
        probe_dma_buf(device.file(), &device.addr().to_string())
    }

    /// The BAR as the topology describes it.
    pub fn bar(&self) -> Bar {
        self.exporter.bar()
    }

    /// The dma-buf's file (for a map outside the negotiator, or to hand to another process).
    pub fn file(&self) -> &Arc<std::fs::File> {
        &self.buf
    }

    /// Whether [`revoke`](Self::revoke) has run.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Takes the BAR back, as a device reset or a driver reclaiming its memory does.
    ///
    /// 1. Every importer is told and every mapping of the BAR torn down, pinned ones included
    ///    ([`Negotiator::begin_forced_revoke`]): their DMA stops and their IOVAs are unmapped.
    /// 2. While that holds, the kernel revokes: memory decoding is turned off, vfio-pci revokes
    ///    the dma-buf, and iommufd unmaps it from every IOAS it was mapped into, including maps
    ///    made outside this library.
    /// 3. From then on this exporter refuses new grants with [`Error::Revoked`].
    ///
    /// Returns what the negotiator tore down. If the kernel refuses, the error is returned and
    /// the state is half done, on purpose: the library's mappings are gone and this exporter
    /// refuses new grants, while the kernel still serves the dma-buf (to maps made outside the
    /// negotiator, say); retry the revoke or drop the device.
    pub fn revoke(&self, negotiator: &Negotiator) -> Result<InvalidationReport> {
        let whole = AddrRange::new(Offset(0), self.exporter.bar().size)?;
        let guard = negotiator.begin_forced_revoke(self.id(), whole)?;
        self.revoked.store(true, Ordering::Release);
        self.device.set_memory_enabled(false)?;
        Ok(guard.end())
    }

    fn check_live(&self) -> Result<()> {
        if self.is_revoked() {
            return Err(Error::Revoked(self.id()));
        }
        Ok(())
    }
}

impl MemoryExporter for VfioDmaBuf {
    fn id(&self) -> ExporterId {
        self.exporter.id()
    }
    fn info(&self) -> ExporterInfo {
        self.exporter.info()
    }
    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        self.check_live()?;
        self.exporter.export(range, pin)
    }
    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        self.check_live()?;
        self.exporter.allocate(len, pin)
    }
    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
        let mut chunks = self.exporter.chunks(grant)?;
        for c in &mut chunks {
            c.file = Some(FileSlice {
                file: self.buf.clone(),
                offset: c.offset.0,
            });
        }
        Ok(chunks)
    }
    fn release(&self, grant: &ExportGrant) -> Result<()> {
        self.exporter.release(grant)
    }
}
