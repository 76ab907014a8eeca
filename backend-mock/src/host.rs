//! Host RAM as an exporter: offsets are CPU physical addresses. Bounce buffers come from a pool
//! at the top of RAM; GPUs carve their migration targets out of the bottom.

use crate::events::{Event, EventLog};
use crate::memory::PhysMemory;
use p2p_core::addr::{align_up, AddrRange, BusAddr, Offset, PhysAddr};
use p2p_core::page::SZ_4K;
use p2p_core::testing::alloc_top_down;
use p2p_core::traits::{
    check_grant_access, Chunk, ExportGrant, ExporterId, ExporterInfo, MemoryExporter, Residency,
};
use p2p_core::{Error, Result};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Debug, Default)]
struct State {
    next_grant: u64,
    grants: HashMap<u64, ExportGrant>,
    /// Bounce-pool allocations: start → length.
    pool: BTreeMap<u64, u64>,
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
    /// The bytes behind RAM (and everything else), for the CPU's reads and writes.
    memory: Arc<PhysMemory>,
    state: Mutex<State>,
}

impl MockHostMemory {
    pub(crate) fn new(
        ram_bytes: u64,
        pool_bytes: u64,
        log: Arc<EventLog>,
        memory: Arc<PhysMemory>,
    ) -> Self {
        let pool_bytes = pool_bytes.min(ram_bytes / 2);
        Self {
            id: ExporterId::fresh_named("host RAM"),
            ram: AddrRange::new(PhysAddr(0), ram_bytes).unwrap_or_else(|_| unreachable!()),
            pool: AddrRange::new(PhysAddr(ram_bytes - pool_bytes), pool_bytes)
                .unwrap_or_else(|_| unreachable!()),
            log,
            memory,
            // The first 1 MiB stays unused, as on a PC.
            state: Mutex::new(State {
                carve: 1 << 20,
                ..State::default()
            }),
        }
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
        self.state.lock().grants.len()
    }

    /// The grant and bounds checks of [`MemoryExporter::read_grant`]: offsets are physical addresses.
    fn check_outstanding(&self, grant: &ExportGrant, offset: Offset, len: usize) -> Result<()> {
        if grant.exporter != self.id || !self.state.lock().grants.contains_key(&grant.id) {
            return Err(Error::UnknownGrant {
                exporter: self.id,
                grant: grant.id,
            });
        }
        check_grant_access(grant, offset, len)
    }

    fn insert(&self, range: AddrRange<Offset>, pin: bool, pool: bool) -> ExportGrant {
        let mut s = self.state.lock();
        s.next_grant += 1;
        let g = ExportGrant {
            exporter: self.id,
            id: s.next_grant,
            range,
            pinned: pin,
        };
        s.grants.insert(g.id, g.clone());
        if pool {
            s.pool.insert(range.start().0, range.len());
        }
        self.log.push(Event::Grant {
            exporter: "host".into(),
            grant: g.id,
            offset: range.start().0,
            len: range.len(),
            pinned: pin,
        });
        g
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
        if range.is_empty() || range.end().0 > self.ram.len() {
            return Err(Error::OutOfBounds {
                kind: "phys",
                start: range.start().0,
                len: range.len(),
                limit_start: 0,
                limit_len: self.ram.len(),
            });
        }
        Ok(self.insert(range, pin, false))
    }

    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        let size = align_up(len, SZ_4K).ok_or(Error::EmptyRange {
            what: "bounce buffer",
        })?;
        let at = {
            let s = self.state.lock();
            let used: u64 = s.pool.values().sum();
            let last = self.pool.last().map_or(0, |l| l.0);
            alloc_top_down(&s.pool, self.pool.start().0, last, size, SZ_4K).ok_or(
                Error::WindowFull {
                    exporter: self.id,
                    requested: len,
                    available: self.pool.len() - used,
                },
            )?
        };
        Ok(self.insert(AddrRange::new(Offset(at), size)?, pin, true))
    }

    fn chunks(&self, grant: &ExportGrant) -> Result<Vec<Chunk>> {
        let s = self.state.lock();
        let g = s.grants.get(&grant.id).ok_or(Error::UnknownGrant {
            exporter: self.id,
            grant: grant.id,
        })?;
        let start = g.range.start().0 & !(SZ_4K - 1);
        let end = align_up(g.range.end().0, SZ_4K).unwrap_or(g.range.end().0);
        Ok(vec![Chunk {
            offset: Offset(start),
            len: end - start,
            phys: PhysAddr(start),
            bus: BusAddr(start),
            mmio: false,
        }])
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
        let mut s = self.state.lock();
        let g = s.grants.remove(&grant.id).ok_or(Error::UnknownGrant {
            exporter: self.id,
            grant: grant.id,
        })?;
        if s.pool.get(&g.range.start().0) == Some(&g.range.len()) {
            s.pool.remove(&g.range.start().0);
        }
        self.log.push(Event::Release {
            exporter: "host".into(),
            grant: g.id,
        });
        Ok(())
    }
}
