//! Host RAM as an exporter: offsets are CPU physical addresses. Bounce buffers come from a pool
//! at the top of RAM; GPUs carve their migration targets out of the bottom.

use crate::events::{Event, EventLog};
use crate::memory::PhysMemory;
use p2p_core::addr::{align_up, AddrRange, Offset, PhysAddr};
use p2p_core::export::HostRam;
use p2p_core::page::SZ_4K;
use p2p_core::traits::{
    check_grant_access, ChunkList, ExportGrant, ExporterId, ExporterInfo, MemoryExporter,
};
use p2p_core::{Error, Result};
use parking_lot::Mutex;
use std::sync::Arc;

/// Host RAM `[0, size)`: [`HostRam`] with its grants logged, and carve-outs for migration
/// targets below the bounce pool.
#[derive(Debug)]
pub struct MockHostMemory {
    ram: HostRam,
    log: Arc<EventLog>,
    /// The bytes behind RAM (and everything else), for the CPU's reads and writes.
    memory: Arc<PhysMemory>,
    /// Next free byte for carve-outs.
    carve: Mutex<u64>,
}

impl MockHostMemory {
    pub(crate) fn new(
        ram_bytes: u64,
        pool_bytes: u64,
        log: Arc<EventLog>,
        memory: Arc<PhysMemory>,
    ) -> Self {
        Self {
            ram: HostRam::new(ram_bytes, pool_bytes.min(ram_bytes / 2)),
            log,
            memory,
            // The first 1 MiB stays unused, as on a PC.
            carve: Mutex::new(1 << 20),
        }
    }

    /// The grant and bounds checks of [`MemoryExporter::read_grant`] (offsets are physical
    /// addresses; the grant book refuses a grant it does not hold, another exporter's included).
    fn check_outstanding(&self, grant: &ExportGrant, offset: Offset, len: usize) -> Result<()> {
        self.ram.chunks(grant)?;
        check_grant_access(grant, offset, len)
    }

    /// RAM's physical range.
    pub fn ram(&self) -> AddrRange<PhysAddr> {
        self.ram.ram()
    }

    /// Reserves `len` bytes of RAM for good (a GPU's migration target).
    pub(crate) fn carve(&self, len: u64) -> Result<PhysAddr> {
        let mut carve = self.carve.lock();
        let size = align_up(len, SZ_4K).ok_or(Error::EmptyRange { what: "carve-out" })?;
        let (at, pool) = (*carve, self.ram.pool().start().0);
        if at + size > pool {
            return Err(Error::WindowFull {
                exporter: self.ram.id(),
                requested: len,
                available: pool - at,
            });
        }
        *carve += size;
        Ok(PhysAddr(at))
    }

    /// Grants outstanding.
    pub fn grants(&self) -> usize {
        self.ram.grants()
    }

    /// Logs a grant RAM made.
    fn logged(&self, g: Result<ExportGrant>) -> Result<ExportGrant> {
        let g = g?;
        self.log.push(Event::Grant {
            exporter: "host".into(),
            grant: g.id,
            offset: g.range.start().0,
            len: g.range.len(),
            pinned: g.pinned,
        });
        Ok(g)
    }
}

impl MemoryExporter for MockHostMemory {
    fn id(&self) -> ExporterId {
        self.ram.id()
    }

    fn info(&self) -> ExporterInfo {
        self.ram.info()
    }

    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        self.logged(self.ram.export(range, pin))
    }

    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        self.logged(self.ram.allocate(len, pin))
    }

    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
        self.ram.chunks(grant)
    }

    fn read_grant(&self, grant: &ExportGrant, offset: Offset, buf: &mut [u8]) -> Result<()> {
        self.check_outstanding(grant, offset, buf.len())?;
        buf.copy_from_slice(&self.memory.read(offset.0, buf.len()));
        Ok(())
    }

    fn write_grant(&self, grant: &ExportGrant, offset: Offset, data: &[u8]) -> Result<()> {
        self.check_outstanding(grant, offset, data.len())?;
        self.memory.write(offset.0, data);
        Ok(())
    }

    fn release(&self, grant: &ExportGrant) -> Result<()> {
        self.ram.release(grant)?;
        self.log.push(Event::Release {
            exporter: "host".into(),
            grant: grant.id,
        });
        Ok(())
    }
}
