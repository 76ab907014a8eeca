//! A simulated GPU exporter: VRAM laid out linearly in its largest BAR, a BAR window of N pages
//! that can fill up, movable or pinnable memory, and migration to host RAM.

use crate::events::{Event, EventLog};
use crate::faults::{FaultInjector, FaultPoint};
use crate::memory::PhysMemory;
use p2p_core::addr::{AddrRange, BusAddr, Offset, PhysAddr};
use p2p_core::page::SZ_4K;
use p2p_core::topology::Bar;
use p2p_core::traits::{
    check_grant_access, Chunk, ExportGrant, ExporterId, ExporterInfo, MemoryExporter, MemoryKind,
    Residency,
};
use p2p_core::{Error, PciAddr, Result};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// The byte written over BAR memory that moved away, so stale peer DMA reads garbage.
pub const POISON: u8 = 0x6b;

#[derive(Debug)]
struct State {
    residency: Residency,
    revoked: bool,
    next_grant: u64,
    /// grant id → (grant, window pages it holds).
    grants: HashMap<u64, (ExportGrant, u64)>,
    /// Pages of the window in use.
    window_used: u64,
}

/// A GPU's exportable memory object.
#[derive(Debug)]
pub struct MockGpu {
    id: ExporterId,
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
    state: Mutex<State>,
}

impl MockGpu {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        device: PciAddr,
        bar: Bar,
        size: u64,
        window_pages: u64,
        kind: MemoryKind,
        host_base: PhysAddr,
        host_numa: u32,
        memory: Arc<PhysMemory>,
        log: Arc<EventLog>,
        faults: Arc<FaultInjector>,
    ) -> Self {
        Self {
            id: ExporterId::fresh_named(format!("GPU {device}")),
            device,
            bar,
            size,
            window_pages,
            movable: kind.movable,
            pinnable: kind.pinnable,
            host_base,
            host_numa,
            memory,
            log,
            faults,
            state: Mutex::new(State {
                residency: Residency::Device(device),
                revoked: false,
                next_grant: 0,
                grants: HashMap::new(),
                window_used: 0,
            }),
        }
    }

    /// The GPU's PCI address.
    pub fn device(&self) -> PciAddr {
        self.device
    }

    /// Grants outstanding.
    pub fn grants(&self) -> usize {
        self.state.lock().grants.len()
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

    /// Where `len` bytes at `offset` of an outstanding grant are now; the bounds and grant
    /// checks of [`MemoryExporter::read_grant`].
    fn grant_phys(&self, grant: &ExportGrant, offset: Offset, len: usize) -> Result<PhysAddr> {
        let s = self.state.lock();
        if !s.grants.contains_key(&grant.id) || grant.exporter != self.id {
            return Err(Error::UnknownGrant {
                exporter: self.id,
                grant: grant.id,
            });
        }
        check_grant_access(grant, offset, len)?;
        Ok(match s.residency {
            Residency::Device(_) => PhysAddr(self.bar.cpu.0 + offset.0),
            Residency::Host { .. } => PhysAddr(self.host_base.0 + offset.0),
        })
    }

    /// Moves the object to host RAM: copies it, poisons the BAR copy. Run the invalidation
    /// protocol first ([`Machine::migrate`](crate::Machine::migrate) does both).
    pub(crate) fn migrate_to_host(&self) {
        let mut s = self.state.lock();
        if matches!(s.residency, Residency::Device(_)) {
            self.memory
                .copy(self.bar.cpu.0, self.host_base.0, self.size as usize);
            self.memory.fill(self.bar.cpu.0, self.size as usize, POISON);
            s.residency = Residency::Host {
                numa: self.host_numa,
            };
            self.log.push(Event::Migrate {
                exporter: self.device.to_string(),
                len: self.size,
            });
        }
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
        let name = self.device.to_string();
        if self.faults.should_fail(
            FaultPoint::ExporterRevoke,
            || format!("{name} revoked during export"),
            &self.log,
        ) {
            self.revoke();
        }
        if range.is_empty() || range.end().0 > self.size {
            return Err(Error::OutOfBounds {
                kind: "offset",
                start: range.start().0,
                len: range.len(),
                limit_start: 0,
                limit_len: self.size,
            });
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
        // The window holds whole pages: every page the range touches.
        let pages = range.pages(SZ_4K)?.len() / SZ_4K;
        let in_bar = matches!(s.residency, Residency::Device(_));
        let free = self.window_pages - s.window_used;
        let injected = in_bar
            && self.faults.should_fail(
                FaultPoint::BarWindow,
                || format!("{name} BAR window full"),
                &self.log,
            );
        if in_bar && (pages > free || injected) {
            return Err(Error::WindowFull {
                exporter: self.id,
                requested: range.len(),
                available: if injected { 0 } else { free * SZ_4K },
            });
        }
        let window = if in_bar { pages } else { 0 };
        s.window_used += window;
        s.next_grant += 1;
        let g = ExportGrant {
            exporter: self.id,
            id: s.next_grant,
            range,
            pinned: pin,
        };
        s.grants.insert(g.id, (g.clone(), window));
        self.log.push(Event::Grant {
            exporter: name,
            grant: g.id,
            offset: range.start().0,
            len: range.len(),
            pinned: pin,
        });
        Ok(g)
    }

    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        self.export(AddrRange::new(Offset(0), len)?, pin)
    }

    fn chunks(&self, grant: &ExportGrant) -> Result<Vec<Chunk>> {
        let s = self.state.lock();
        let (g, _) = s.grants.get(&grant.id).ok_or(Error::UnknownGrant {
            exporter: self.id,
            grant: grant.id,
        })?;
        let span = g.range.pages(SZ_4K)?;
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
        let mut s = self.state.lock();
        let (g, window) = s.grants.remove(&grant.id).ok_or(Error::UnknownGrant {
            exporter: self.id,
            grant: grant.id,
        })?;
        s.window_used -= window;
        self.log.push(Event::Release {
            exporter: self.device.to_string(),
            grant: g.id,
        });
        Ok(())
    }
}
