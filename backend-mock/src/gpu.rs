//! A simulated GPU exporter: VRAM laid out linearly in its largest BAR, a BAR window of N pages
//! that can fill up, movable or pinnable memory, and migration to host RAM.

use crate::events::{Event, EventLog};
use crate::faults::{FaultInjector, FaultPoint};
use crate::memory::PhysMemory;
use p2p_core::addr::{AddrRange, Offset, PhysAddr};
use p2p_core::export::{DeviceMemory, GrantBook};
use p2p_core::traits::{
    check_grant_access, ChunkList, ExportGrant, ExporterId, ExporterInfo, MemoryExporter,
};
use p2p_core::{Error, PciAddr, Result};
use std::sync::Arc;

/// The byte written over BAR memory that moved away, so stale peer DMA reads garbage.
pub const POISON: u8 = 0x6b;

/// A GPU's exportable memory object: [`DeviceMemory`] laid out linearly in the BAR, with its
/// bytes in the machine's memory, its grants and moves logged and its faults injected.
#[derive(Debug)]
pub struct MockGpu {
    mem: DeviceMemory,
    size: u64,
    memory: Arc<PhysMemory>,
    log: Arc<EventLog>,
    faults: Arc<FaultInjector>,
}

impl MockGpu {
    pub(crate) fn new(
        mem: DeviceMemory,
        memory: Arc<PhysMemory>,
        log: Arc<EventLog>,
        faults: Arc<FaultInjector>,
    ) -> Self {
        Self {
            size: mem.info().size,
            mem,
            memory,
            log,
            faults,
        }
    }

    /// The GPU's PCI address.
    pub fn device(&self) -> PciAddr {
        self.mem.device()
    }

    /// Grants outstanding.
    pub fn grants(&self) -> usize {
        self.mem.grants()
    }

    /// Whether the memory lives in host RAM now.
    pub fn in_host_ram(&self) -> bool {
        self.mem.in_host_ram()
    }

    /// Where offset `off` of the object is, physically, now.
    pub fn phys_of(&self, off: u64) -> PhysAddr {
        if self.mem.in_host_ram() {
            PhysAddr(self.mem.host_base().0 + off)
        } else {
            PhysAddr(self.mem.bar().cpu.0 + off)
        }
    }

    /// The CPU's view of the object: reads `len` bytes at `off` wherever they are.
    pub fn cpu_read(&self, off: u64, len: usize) -> Vec<u8> {
        self.memory.read(self.phys_of(off).0, len)
    }

    /// The CPU's view of the object: writes at `off`.
    pub fn cpu_write(&self, off: u64, data: &[u8]) {
        self.memory.write(self.phys_of(off).0, data);
    }

    /// Where `len` bytes at `offset` of an outstanding grant are now; the bounds and grant
    /// checks of [`MemoryExporter::read_grant`] (the grant book refuses a grant it does not hold,
    /// another exporter's included).
    fn grant_phys(&self, grant: &ExportGrant, offset: Offset, len: usize) -> Result<PhysAddr> {
        self.mem.chunks(grant)?;
        check_grant_access(grant, offset, len)?;
        Ok(self.phys_of(offset.0))
    }

    /// Moves the object to host RAM: copies it, poisons the BAR copy. Run the invalidation
    /// protocol first ([`Machine::migrate`](crate::Machine::migrate) does both).
    pub(crate) fn migrate_to_host(&self) {
        let (bar, host, len) = (self.mem.bar().cpu.0, self.mem.host_base().0, self.size);
        let moved = self.mem.migrate_to_host_with(|| {
            self.memory.copy(bar, host, len as usize);
            self.memory.fill(bar, len as usize, POISON);
        });
        if moved {
            self.log.push(Event::Migrate {
                exporter: self.device().to_string(),
                len,
            });
        }
    }

    /// A grant of `requested` bytes made by `make`, after the injected revoke and, while the
    /// memory is in the BAR, the injected full window; logged.
    fn grant(
        &self,
        requested: u64,
        pin: bool,
        make: impl FnOnce(&mut GrantBook) -> Result<ExportGrant>,
    ) -> Result<ExportGrant> {
        let name = self.device().to_string();
        if self.faults.should_fail(
            FaultPoint::ExporterRevoke,
            || format!("{name} revoked during export"),
            &self.log,
        ) {
            self.revoke();
        }
        let window_fault = |in_bar: bool| {
            let full = in_bar
                && self.faults.should_fail(
                    FaultPoint::BarWindow,
                    || format!("{name} BAR window full"),
                    &self.log,
                );
            if !full {
                return Ok(());
            }
            Err(Error::WindowFull {
                exporter: self.mem.id(),
                requested,
                available: 0,
            })
        };
        let g = self.mem.grant_with(pin, window_fault, make)?;
        self.log.push(Event::Grant {
            exporter: name,
            grant: g.id,
            offset: g.range.start().0,
            len: g.range.len(),
            pinned: pin,
        });
        Ok(g)
    }

    /// Revokes the memory: every later export fails.
    pub(crate) fn revoke(&self) {
        if self.mem.revoke_once() {
            self.log.push(Event::Revoke {
                exporter: self.device().to_string(),
            });
        }
    }
}

impl MemoryExporter for MockGpu {
    fn id(&self) -> ExporterId {
        self.mem.id()
    }

    fn info(&self) -> ExporterInfo {
        self.mem.info()
    }

    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        self.grant(range.len(), pin, |book| book.export(range, pin))
    }

    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        self.grant(len, pin, |book| book.allocate(len, pin))
    }

    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
        self.mem.chunks(grant)
    }

    fn read_grant(&self, grant: &ExportGrant, offset: Offset, buf: &mut [u8]) -> Result<()> {
        let phys = self.grant_phys(grant, offset, buf.len())?;
        buf.copy_from_slice(&self.memory.read(phys.0, buf.len()));
        Ok(())
    }

    fn write_grant(&self, grant: &ExportGrant, offset: Offset, data: &[u8]) -> Result<()> {
        let phys = self.grant_phys(grant, offset, data.len())?;
        self.memory.write(phys.0, data);
        Ok(())
    }

    fn release(&self, grant: &ExportGrant) -> Result<()> {
        self.mem.release(grant)?;
        self.log.push(Event::Release {
            exporter: self.device().to_string(),
            grant: grant.id,
        });
        Ok(())
    }
}
