//! Host RAM as an exporter, with nothing behind it but its addresses: offsets are CPU physical
//! addresses, equal to bus addresses, and bounce buffers come from a pool at the top. The test
//! platform's host memory, and the core the simulated machine's host memory adds bytes, a log
//! and carve-outs to.

use super::GrantBook;
use crate::addr::{AddrRange, BusAddr, Offset, PhysAddr};
use crate::error::Result;
use crate::page::SZ_4K;
use crate::traits::{
    Chunk, ChunkList, ExportGrant, ExporterId, ExporterInfo, MemoryExporter, Residency,
};
use parking_lot::Mutex;

/// RAM `[0, ram_bytes)` on NUMA node 0, whose top `pool_bytes` serve
/// [`allocate`](MemoryExporter::allocate).
#[derive(Debug)]
pub struct HostRam {
    id: ExporterId,
    ram: AddrRange<PhysAddr>,
    pool: AddrRange<PhysAddr>,
    book: Mutex<GrantBook>,
}

impl HostRam {
    /// `ram_bytes` of RAM from physical 0; the top `pool_bytes` (at most all of it) serve
    /// bounce buffers.
    pub fn new(ram_bytes: u64, pool_bytes: u64) -> Self {
        let id = ExporterId::fresh_named("host RAM");
        let pool_bytes = pool_bytes.min(ram_bytes);
        let pool_at = ram_bytes - pool_bytes;
        let book = AddrRange::new(Offset(pool_at), pool_bytes)
            .and_then(|pool| GrantBook::new(id, ram_bytes).with_pool(pool))
            .unwrap_or_else(|_| unreachable!("inside 0..ram_bytes"));
        Self {
            id,
            ram: AddrRange::new(PhysAddr(0), ram_bytes)
                .unwrap_or_else(|_| unreachable!("inside 0..ram_bytes")),
            pool: AddrRange::new(PhysAddr(pool_at), pool_bytes)
                .unwrap_or_else(|_| unreachable!("inside 0..ram_bytes")),
            book: Mutex::new(book),
        }
    }

    /// RAM's physical range.
    pub fn ram(&self) -> AddrRange<PhysAddr> {
        self.ram
    }

    /// The bounce pool's physical range.
    pub fn pool(&self) -> AddrRange<PhysAddr> {
        self.pool
    }

    /// Grants outstanding.
    pub fn grants(&self) -> usize {
        self.book.lock().live()
    }
}

impl MemoryExporter for HostRam {
    fn id(&self) -> ExporterId {
        self.id
    }

    fn info(&self) -> ExporterInfo {
        ExporterInfo {
            residency: Residency::Host { numa: 0 },
            size: self.ram.len(),
            movable: false,
            pinnable: true,
            bus_window: AddrRange::new(BusAddr(0), self.ram.len())
                .unwrap_or_else(|_| unreachable!("RAM's range was checked")),
        }
    }

    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        self.book.lock().export(range, pin)
    }

    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        self.book.lock().allocate(len, pin)
    }

    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
        let span = self.book.lock().get(grant)?.range.pages(SZ_4K)?;
        Ok(ChunkList::from(Chunk {
            offset: span.start(),
            len: span.len(),
            phys: PhysAddr(span.start().0),
            bus: BusAddr(span.start().0),
            mmio: false,
            file: None,
        }))
    }

    fn release(&self, grant: &ExportGrant) -> Result<()> {
        self.book.lock().release(grant)
    }
}
