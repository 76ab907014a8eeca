//! A simulated GPU exporter: VRAM laid out linearly in its largest BAR, a BAR window of N pages
//! that can fill up, movable or pinnable memory, and migration to host RAM.

use crate::events::{Event, EventLog};
use crate::faults::{FaultInjector, FaultPoint};
use crate::memory::PhysMemory;
use p2p_core::addr::{AddrRange, BusAddr, Offset, PhysAddr};
use p2p_core::export::GrantBook;
use p2p_core::page::SZ_4K;
use p2p_core::topology::Bar;
use p2p_core::traits::{Chunk, ExportGrant, ExporterId, ExporterInfo, MemoryExporter, Residency};
use p2p_core::{Error, PciAddr, Result};
use parking_lot::Mutex;
use std::sync::Arc;

/// The byte written over BAR memory that moved away, so stale peer DMA reads garbage.
pub const POISON: u8 = 0x6b;

#[derive(Debug)]
struct State {
    residency: Residency,
    revoked: bool,
    /// The grants, each holding the window pages its range touches while the memory is in
    /// the BAR.
    book: GrantBook,
}

/// A GPU's exportable memory object.
#[derive(Debug)]
pub struct MockGpu {
    id: ExporterId,
    device: PciAddr,
    bar: Bar,
    size: u64,
    movable: bool,
    pinnable: bool,
    host_base: PhysAddr,
    host_numa: u32,
    memory: Arc<PhysMemory>,
    log: Arc<EventLog>,
    faults: Arc<FaultInjector>,
    state: Mutex<State>,
}

impl MockGpu {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        device: PciAddr,
        bar: Bar,
        size: u64,
        window_pages: u64,
        movable: bool,
        pinnable: bool,
        host_base: PhysAddr,
        host_numa: u32,
        memory: Arc<PhysMemory>,
        log: Arc<EventLog>,
        faults: Arc<FaultInjector>,
    ) -> Self {
        let id = ExporterId::fresh();
        Self {
            id,
            device,
            bar,
            size,
            movable,
            pinnable,
            host_base,
            host_numa,
            memory,
            log,
            faults,
            state: Mutex::new(State {
                residency: Residency::Device(device),
                revoked: false,
                book: GrantBook::new(id, size).with_window(window_pages),
            }),
        }
    }

    /// The GPU's PCI address.
    pub fn device(&self) -> PciAddr {
        self.device
    }

    /// Grants outstanding.
    pub fn grants(&self) -> usize {
        self.state.lock().book.live()
    }

    /// Whether the memory lives in host RAM now.
    pub fn in_host_ram(&self) -> bool {
        matches!(self.state.lock().residency, Residency::Host { .. })
    }

    /// Where offset `off` of the object is, physically, now.
    pub fn phys_of(&self, off: u64) -> PhysAddr {
        match self.state.lock().residency {
            Residency::Device(_) => PhysAddr(self.bar.cpu.0 + off),
            Residency::Host { .. } => PhysAddr(self.host_base.0 + off),
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

    /// Moves the object to host RAM: copies it, poisons the BAR copy. Run the invalidation
    /// protocol first ([`Machine::migrate`](crate::Machine::migrate) does both).
    pub(crate) fn migrate_to_host(&self) {
        let mut s = self.state.lock();
        if matches!(s.residency, Residency::Device(_)) {
            self.memory
                .copy(self.bar.cpu.0, self.host_base.0, self.size as usize);
            self.memory.fill(self.bar.cpu.0, self.size as usize, POISON);
            s.book.leave_window();
            s.residency = Residency::Host {
                numa: self.host_numa,
            };
            self.log.push(Event::Migrate {
                exporter: self.device.to_string(),
                len: self.size,
            });
        }
    }

    /// A grant of `requested` bytes made by `make` from the book, after the rules every grant
    /// follows: the injected revoke, pinning, revocation and the injected full window (while in
    /// the BAR).
    fn grant(
        &self,
        requested: u64,
        pin: bool,
        make: impl FnOnce(&mut GrantBook) -> Result<ExportGrant>,
    ) -> Result<ExportGrant> {
        let name = self.device.to_string();
        if self.faults.should_fail(
            FaultPoint::ExporterRevoke,
            || format!("{name} revoked during export"),
            &self.log,
        ) {
            self.revoke();
        }
        if pin && !self.pinnable {
            return Err(Error::NotPinnable {
                exporter: self.id,
                reason: "device-private memory cannot be pinned",
            });
        }
        let mut s = self.state.lock();
        if s.revoked {
            return Err(Error::Revoked(self.id));
        }
        let in_bar = matches!(s.residency, Residency::Device(_));
        if in_bar
            && self.faults.should_fail(
                FaultPoint::BarWindow,
                || format!("{name} BAR window full"),
                &self.log,
            )
        {
            return Err(Error::WindowFull {
                exporter: self.id,
                requested,
                available: 0,
            });
        }
        let g = make(&mut s.book)?;
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
        let mut s = self.state.lock();
        if !s.revoked {
            s.revoked = true;
            self.log.push(Event::Revoke {
                exporter: self.device.to_string(),
            });
        }
    }
}

impl MemoryExporter for MockGpu {
    fn id(&self) -> ExporterId {
        self.id
    }

    fn info(&self) -> ExporterInfo {
        let residency = self.state.lock().residency;
        let bus_window = match residency {
            Residency::Device(_) => AddrRange::new(self.bar.bus, self.size),
            Residency::Host { .. } => AddrRange::new(BusAddr(self.host_base.0), self.size),
        }
        .unwrap_or_else(|_| unreachable!("checked when the GPU was made"));
        ExporterInfo {
            residency,
            size: self.size,
            movable: self.movable,
            pinnable: self.pinnable,
            bus_window,
        }
    }

    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        self.grant(range.len(), pin, |book| book.export(range, pin))
    }

    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        self.grant(len, pin, |book| book.allocate(len, pin))
    }

    fn chunks(&self, grant: &ExportGrant) -> Result<Vec<Chunk>> {
        let s = self.state.lock();
        let span = s.book.get(grant)?.range.pages(SZ_4K)?;
        let (start, len) = (span.start().0, span.len());
        Ok(vec![match s.residency {
            Residency::Device(_) => Chunk {
                offset: Offset(start),
                len,
                phys: PhysAddr(self.bar.cpu.0 + start),
                bus: BusAddr(self.bar.bus.0 + start),
                mmio: true,
            },
            Residency::Host { .. } => Chunk {
                offset: Offset(start),
                len,
                phys: PhysAddr(self.host_base.0 + start),
                bus: BusAddr(self.host_base.0 + start),
                mmio: false,
            },
        }])
    }

    fn release(&self, grant: &ExportGrant) -> Result<()> {
        self.state.lock().book.release(grant)?;
        self.log.push(Event::Release {
            exporter: self.device.to_string(),
            grant: grant.id,
        });
        Ok(())
    }
}
