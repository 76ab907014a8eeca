//! Device memory (a GPU's VRAM object) exported through a BAR window, movable to host RAM and
//! revocable, with nothing behind it but its addresses: the test doubles' GPU, and the core the
//! simulated machine's GPU adds bytes, a log and injected faults to.

use super::GrantBook;
use crate::addr::{AddrRange, BusAddr, Offset, PhysAddr};
use crate::error::{Error, Result};
use crate::page::SZ_4K;
use crate::pci::PciAddr;
use crate::topology::{Bar, DeviceClass, Topology};
use crate::traits::{
    Chunk, ChunkList, ExportGrant, ExporterId, ExporterInfo, MemoryExporter, MemoryKind, Residency,
};
use parking_lot::Mutex;

#[derive(Debug)]
struct State {
    residency: Residency,
    revoked: bool,
    /// The grants, each holding the window pages its range touches while in the BAR.
    book: GrantBook,
}

/// `size` bytes of a device's memory behind its largest BAR, reached through a window of
/// `window_pages` 4 KiB pages, which migrate to host RAM at `host_base`.
///
/// The window maps each grant at a slot of its own by default (an aperture smaller than the
/// object, as a GPU's BAR1); [`linear`](Self::linear) makes the BAR hold the whole object
/// instead, with the window a budget of pages.
#[derive(Debug)]
pub struct DeviceMemory {
    id: ExporterId,
    device: PciAddr,
    bar: Bar,
    size: u64,
    window_pages: u64,
    linear: bool,
    movable: bool,
    pinnable: bool,
    host_base: PhysAddr,
    host_numa: u32,
    state: Mutex<State>,
}

impl DeviceMemory {
    /// `size` bytes of `device`'s memory in its largest BAR of the topology, through a window of
    /// at most `window_pages` pages (no more than the BAR holds); they would migrate to host RAM
    /// at 4 GiB (see [`with_host_base`](Self::with_host_base)).
    pub fn new(
        topology: &Topology,
        device: PciAddr,
        size: u64,
        window_pages: u64,
        kind: MemoryKind,
    ) -> Result<Self> {
        let MemoryKind { movable, pinnable } = kind;
        let bar = topology.largest_bar(device)?;
        let window_pages = window_pages.min(bar.size / SZ_4K);
        // Messages name the device as a person reads it: `GPU 0000:03:00.0`.
        let what = match topology.endpoint(device)?.class {
            DeviceClass::Gpu => "GPU",
            DeviceClass::Nic => "NIC",
            DeviceClass::Nvme => "NVMe",
            DeviceClass::Accelerator => "accelerator",
            DeviceClass::Other => "device",
        };
        let id = ExporterId::fresh_named(format!("{what} {device}"));
        Ok(Self {
            id,
            device,
            bar,
            size,
            window_pages,
            linear: false,
            movable,
            pinnable,
            host_base: PhysAddr(0x1_0000_0000),
            host_numa: topology.numa_of(device)?,
            state: Mutex::new(State {
                residency: Residency::Device(device),
                revoked: false,
                book: GrantBook::new(id, size).with_placed_window(window_pages),
            }),
        })
    }

    /// The same memory laid out linearly in the BAR (offset `o` at BAR byte `o`), the window a
    /// budget of pages; [`Error::OutOfBounds`] if the BAR cannot hold the object.
    pub fn linear(mut self) -> Result<Self> {
        if self.size == 0 || self.size > self.bar.size {
            return Err(Error::OutOfBounds {
                kind: "offset",
                start: 0,
                len: self.size,
                limit_start: 0,
                limit_len: self.bar.size,
            });
        }
        self.linear = true;
        self.state.get_mut().book =
            GrantBook::new(self.id, self.size).with_window(self.window_pages);
        Ok(self)
    }

    /// The same memory, migrating to host RAM at `base`.
    pub fn with_host_base(self, base: PhysAddr) -> Self {
        Self {
            host_base: base,
            ..self
        }
    }

    /// The device.
    pub fn device(&self) -> PciAddr {
        self.device
    }

    /// The BAR.
    pub fn bar(&self) -> Bar {
        self.bar
    }

    /// Where the memory lands in host RAM.
    pub fn host_base(&self) -> PhysAddr {
        self.host_base
    }

    /// Grants outstanding.
    pub fn grants(&self) -> usize {
        self.state.lock().book.live()
    }

    /// Whether the memory is in host RAM now.
    pub fn in_host_ram(&self) -> bool {
        matches!(self.state.lock().residency, Residency::Host { .. })
    }

    /// Moves the memory to host RAM (run the invalidation protocol first:
    /// [`Negotiator::begin_invalidation`](crate::negotiate::Negotiator::begin_invalidation)).
    pub fn migrate_to_host(&self) {
        self.migrate_to_host_with(|| ());
    }

    /// Moves the memory to host RAM, running `copy` (what moves the bytes) under the lock that
    /// keeps grants out meanwhile; false, and `copy` not run, if it was there already.
    pub fn migrate_to_host_with(&self, copy: impl FnOnce()) -> bool {
        let mut s = self.state.lock();
        if !matches!(s.residency, Residency::Device(_)) {
            return false;
        }
        copy();
        s.book.leave_window();
        s.residency = Residency::Host {
            numa: self.host_numa,
        };
        true
    }

    /// Revokes the memory: every later export and allocation fails.
    pub fn revoke(&self) {
        self.revoke_once();
    }

    /// Revokes the memory; true if this call did (it was not revoked before).
    pub fn revoke_once(&self) -> bool {
        !std::mem::replace(&mut self.state.lock().revoked, true)
    }

    /// A grant made by `make` from the book, after the pin and revocation rules and `gate`,
    /// which is told whether the memory is in the BAR (an injected fault can refuse there).
    pub fn grant_with(
        &self,
        pin: bool,
        gate: impl FnOnce(bool) -> Result<()>,
        make: impl FnOnce(&mut GrantBook) -> Result<ExportGrant>,
    ) -> Result<ExportGrant> {
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
        gate(matches!(s.residency, Residency::Device(_)))?;
        make(&mut s.book)
    }

    /// Where the grant's first page is now: in the BAR (its slot, or its offset when linear),
    /// or in host RAM.
    fn base_of(&self, s: &State, grant: &ExportGrant, start: u64) -> Result<(u64, u64, bool)> {
        Ok(match s.residency {
            Residency::Device(_) => {
                let at = match s.book.window_slot(grant)? {
                    Some(slot) => slot * SZ_4K,
                    None => start,
                };
                (self.bar.cpu.0 + at, self.bar.bus.0 + at, true)
            }
            Residency::Host { .. } => {
                let at = self.host_base.0 + start;
                (at, at, false)
            }
        })
    }
}

impl MemoryExporter for DeviceMemory {
    fn id(&self) -> ExporterId {
        self.id
    }

    fn info(&self) -> ExporterInfo {
        let residency = self.state.lock().residency;
        let in_bar = if self.linear {
            self.size
        } else {
            self.window_pages * SZ_4K
        };
        let bus_window = match residency {
            Residency::Device(_) => AddrRange::new(self.bar.bus, in_bar),
            Residency::Host { .. } => AddrRange::new(BusAddr(self.host_base.0), self.size),
        }
        .unwrap_or_else(|_| unreachable!("inside the BAR, or host RAM below 2^64"));
        ExporterInfo {
            residency,
            size: self.size,
            movable: self.movable,
            pinnable: self.pinnable,
            bus_window,
        }
    }

    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        self.grant_with(pin, |_| Ok(()), |book| book.export(range, pin))
    }

    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        self.grant_with(pin, |_| Ok(()), |book| book.allocate(len, pin))
    }

    fn chunks(&self, grant: &ExportGrant) -> Result<ChunkList> {
        let s = self.state.lock();
        let span = s.book.get(grant)?.range.pages(SZ_4K)?;
        let (phys, bus, mmio) = self.base_of(&s, grant, span.start().0)?;
        Ok(ChunkList::from(Chunk {
            offset: span.start(),
            len: span.len(),
            phys: PhysAddr(phys),
            bus: BusAddr(bus),
            mmio,
            file: None,
        }))
    }

    fn release(&self, grant: &ExportGrant) -> Result<()> {
        self.state.lock().book.release(grant)
    }
}
