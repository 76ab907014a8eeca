//! Host RAM as an exporter: offsets are CPU physical addresses. Bounce buffers come from a pool
//! at the top of RAM; GPUs carve their migration targets out of the bottom.

use crate::events::{Event, EventLog};
use p2p_core::addr::{align_up, AddrRange, BusAddr, Offset, PhysAddr};
use p2p_core::export::GrantBook;
use p2p_core::page::SZ_4K;
use p2p_core::traits::{Chunk, ExportGrant, ExporterId, ExporterInfo, MemoryExporter, Residency};
use p2p_core::{Error, Result};
use parking_lot::Mutex;
use std::sync::Arc;

#[derive(Debug)]
struct State {
    /// The grants; `allocate` carves from the bounce pool.
    book: GrantBook,
    /// Next free byte for carve-outs.
    carve: u64,
}

/// Host RAM `[0, size)`.
#[derive(Debug)]
pub struct MockHostMemory {
    id: ExporterId,
    ram: AddrRange<PhysAddr>,
    pool: AddrRange<PhysAddr>,
    log: Arc<EventLog>,
    state: Mutex<State>,
}

impl MockHostMemory {
    pub(crate) fn new(ram_bytes: u64, pool_bytes: u64, log: Arc<EventLog>) -> Result<Self> {
        let pool_bytes = pool_bytes.min(ram_bytes / 2);
        let id = ExporterId::fresh();
        let pool = AddrRange::new(PhysAddr(ram_bytes - pool_bytes), pool_bytes)?;
        let book = GrantBook::new(id, ram_bytes)
            .with_pool(AddrRange::new(Offset(pool.start().0), pool.len())?)?;
        Ok(Self {
            id,
            ram: AddrRange::new(PhysAddr(0), ram_bytes)?,
            pool,
            log,
            // The first 1 MiB stays unused, as on a PC.
            state: Mutex::new(State {
                book,
                carve: 1 << 20,
            }),
        })
    }

    /// RAM's physical range.
    pub fn ram(&self) -> AddrRange<PhysAddr> {
        self.ram
    }

    /// Reserves `len` bytes of RAM for good (a GPU's migration target).
    pub(crate) fn carve(&self, len: u64) -> Result<PhysAddr> {
        let mut s = self.state.lock();
        let size = align_up(len, SZ_4K).ok_or(Error::EmptyRange { what: "carve-out" })?;
        let at = s.carve;
        if at + size > self.pool.start().0 {
            return Err(Error::WindowFull {
                exporter: self.id,
                requested: len,
                available: self.pool.start().0 - at,
            });
        }
        s.carve += size;
        Ok(PhysAddr(at))
    }

    /// Grants outstanding.
    pub fn grants(&self) -> usize {
        self.state.lock().book.live()
    }

    /// Logs a grant the book made.
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
        self.id
    }

    fn info(&self) -> ExporterInfo {
        ExporterInfo {
            residency: Residency::Host { numa: 0 },
            size: self.ram.len(),
            movable: false,
            pinnable: true,
            bus_window: AddrRange::new(BusAddr(0), self.ram.len())
                .unwrap_or_else(|_| unreachable!()),
        }
    }

    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        self.logged(self.state.lock().book.export(range, pin))
    }

    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        self.logged(self.state.lock().book.allocate(len, pin))
    }

    fn chunks(&self, grant: &ExportGrant) -> Result<Vec<Chunk>> {
        let span = self.state.lock().book.get(grant)?.range.pages(SZ_4K)?;
        Ok(vec![Chunk {
            offset: span.start(),
            len: span.len(),
            phys: PhysAddr(span.start().0),
            bus: BusAddr(span.start().0),
            mmio: false,
        }])
    }

    fn release(&self, grant: &ExportGrant) -> Result<()> {
        self.state.lock().book.release(grant)?;
        self.log.push(Event::Release {
            exporter: "host".into(),
            grant: grant.id,
        });
        Ok(())
    }
}
