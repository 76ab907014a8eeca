//! A device BAR as an exporter: peer-to-peer memory addressed by bus address. It does no I/O:
//! its addresses come from the topology, so every backend (identity, VFIO, simulated) can use it.

use super::GrantBook;
use crate::addr::{AddrRange, BusAddr, Offset, PhysAddr};
use crate::error::{Error, Result};
use crate::pci::PciAddr;
use crate::topology::{Bar, Topology};
use crate::traits::{
    Chunk, ChunkList, ExportGrant, ExporterId, ExporterInfo, MemoryExporter, Residency,
};
use parking_lot::Mutex;

/// A memory BAR of a device (a GPU's VRAM aperture, an NVMe CMB, a p2pmem window). Its chunks
/// carry both addresses: the CPU physical address an IOMMU maps, and the bus address a switch
/// routes and an identity domain programs, which differ by the host bridge's window offset.
///
/// Aligned to 128 bytes (a pair of cache lines): every mapping writes its grant book and its
/// reference count, and two exporters allocated one after the other, each mapped by its own
/// thread, would otherwise share a line.
#[derive(Debug)]
#[repr(align(128))]
pub struct BarExporter {
    id: ExporterId,
    device: PciAddr,
    bar: Bar,
    book: Mutex<GrantBook>,
}

impl BarExporter {
    /// BAR `index` of `device` as the topology describes it.
    pub fn new(topology: &Topology, device: PciAddr, index: u8) -> Result<Self> {
        let bar = topology
            .endpoint(device)?
            .bars
            .iter()
            .find(|b| b.index == index)
            .copied()
            .ok_or_else(|| {
                Error::InvalidTopology(format!("device {device} has no memory BAR{index}"))
            })?;
        // Named, so that errors say "BAR0 of 0000:03:00.0" rather than an id.
        let id = ExporterId::fresh_named(format!("BAR{index} of {device}"));
        Ok(Self {
            id,
            device,
            bar,
            book: Mutex::new(GrantBook::new(id, bar.size)),
        })
    }

    /// The BAR.
    pub fn bar(&self) -> Bar {
        self.bar
    }
}

impl BarExporter {
    /// The one chunk holding the pages `range` touches (the BAR is contiguous).
    fn chunks_of(&self, range: AddrRange<Offset>) -> Result<ChunkList> {
        let span = range.pages(4096)?;
        let (start, end) = (span.start().0, span.end().0.min(self.bar.size));
        Ok(ChunkList::from(Chunk {
            offset: Offset(start),
            len: end - start,
            phys: PhysAddr(self.bar.cpu.0 + start),
            bus: BusAddr(self.bar.bus.0 + start),
            mmio: true,
            file: None,
        }))
    }
}

impl MemoryExporter for BarExporter {
    fn id(&self) -> ExporterId {
        self.id
    }

    fn info(&self) -> ExporterInfo {
        ExporterInfo {
            residency: Residency::Device(self.device),
            size: self.bar.size,
            movable: false,
            pinnable: true,
            bus_window: AddrRange::new(self.bar.bus, self.bar.size)
                .unwrap_or_else(|_| unreachable!("the topology builder checked the BAR")),
        }
    }

    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        self.book.lock().export(range, pin)
    }

    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        self.book.lock().allocate(len, pin)
    }

    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
        let range = self.book.lock().get(grant)?.range;
        self.chunks_of(range)
    }

    /// One lock for both: the grant's range is the one asked, so its chunks need no lookup.
    fn export_with_chunks(
        &self,
        range: AddrRange<Offset>,
        pin: bool,
    ) -> Result<(ExportGrant, ChunkList)> {
        let mut book = self.book.lock();
        let grant = book.export(range, pin)?;
        match self.chunks_of(grant.range) {
            Ok(chunks) => Ok((grant, chunks)),
            Err(e) => {
                // Cannot fail: the grant was made just now, under this lock.
                let _ = book.release(&grant);
                Err(e)
            }
        }
    }

    fn release(&self, grant: &ExportGrant) -> Result<()> {
        self.book.lock().release(grant)
    }
}
