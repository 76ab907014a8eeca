//! Simple in-memory implementations of the four traits, for tests, examples and `p2pctl`: the
//! no-op backend, in the spirit of wgpu-hal's. They keep real state (a page table in a
//! `BTreeMap`, a first-fit IOVA allocator, a BAR window that fills up) but model no hardware
//! timing or format; the mock backend does that.

use crate::access::Access;
use crate::addr::{align_up, AddrRange, BusAddr, Iova, Offset, PhysAddr};
use crate::error::{Error, Result};
use crate::page::{PageSizes, SZ_4K};
use crate::pci::PciAddr;
use crate::topology::Topology;
use crate::traits::*;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// First-fit allocation of `len` bytes aligned to `align` in `[lo, hi]` avoiding `taken`
/// (start → len), searching from the top down as Linux's IOVA allocator does. A simple reference
/// (O(n) in the allocations), shared by the in-memory doubles and the mock backend.
pub fn alloc_top_down(
    taken: &BTreeMap<u64, u64>,
    lo: u64,
    hi: u64,
    len: u64,
    align: u64,
) -> Option<u64> {
    // Merge the taken ranges (they may overlap: reserved regions nest) into disjoint
    // [start, end) intervals, then walk the gaps from the top.
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (&s, &l) in taken {
        let e = s.saturating_add(l);
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut ceiling = hi.checked_add(1)?; // exclusive
    for &(s, e) in merged.iter().rev().chain(std::iter::once(&(0, 0))) {
        let floor = e.max(lo);
        if ceiling >= len && ceiling > floor {
            let start = crate::addr::align_down(ceiling - len, align);
            if start >= floor && start + len <= ceiling {
                return Some(start);
            }
        }
        ceiling = ceiling.min(s);
        if ceiling <= lo {
            return None;
        }
    }
    None
}

/// A translated (or identity, or blocked) domain with a `BTreeMap` page table of 4 KiB pages.
#[derive(Debug)]
pub struct TestDomain {
    kind: DomainKind,
    aperture: AddrRange<Iova>,
    reserved: Vec<ReservedRegion>,
    pages: Mutex<BTreeMap<u64, Translation>>,
    iovas: Mutex<BTreeMap<u64, u64>>,
    flushes: AtomicU64,
    /// Fail the map call after this many more successful page stores (fault injection).
    fail_after: Mutex<Option<usize>>,
}

impl TestDomain {
    /// A domain of `kind` with a 48-bit aperture and the x86 MSI window reserved.
    pub fn new(kind: DomainKind) -> Self {
        let msi = ReservedRegion {
            range: AddrRange::new(Iova(0xfee0_0000), 0x10_0000).unwrap_or_else(|_| unreachable!()),
            kind: ReservedKind::Msi,
        };
        Self {
            kind,
            aperture: AddrRange::new(Iova(0), 1 << 48).unwrap_or_else(|_| unreachable!()),
            reserved: vec![msi],
            pages: Mutex::default(),
            iovas: Mutex::default(),
            flushes: AtomicU64::new(0),
            fail_after: Mutex::new(None),
        }
    }

    /// Adds a reserved region (a host-bridge window, say).
    pub fn reserve(&mut self, range: AddrRange<Iova>, kind: ReservedKind) {
        self.reserved.push(ReservedRegion { range, kind });
    }

    /// Makes the `n+1`-th page store from now fail.
    pub fn fail_after(&self, n: usize) {
        *self.fail_after.lock() = Some(n);
    }

    /// Pages mapped now.
    pub fn mapped_pages(&self) -> usize {
        self.pages.lock().len()
    }

    /// IOVA allocations live now.
    pub fn live_iovas(&self) -> usize {
        self.iovas.lock().len()
    }

    /// IOTLB flushes so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

impl IommuDomain for TestDomain {
    fn kind(&self) -> DomainKind {
        self.kind
    }
    fn aperture(&self) -> AddrRange<Iova> {
        self.aperture
    }
    fn page_sizes(&self) -> PageSizes {
        PageSizes::SIZE_4K
    }
    fn reserved_regions(&self) -> Vec<ReservedRegion> {
        self.reserved.clone()
    }
    fn map_attrs(
        &self,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        access: Access,
        _attrs: MapAttrs,
    ) -> Result<()> {
        if self.kind != DomainKind::Translated {
            return Err(Error::WrongDomainKind {
                op: "map",
                kind: self.kind.name(),
            });
        }
        check_map_args(&self.aperture, &self.reserved, iova, phys, len, SZ_4K)?;
        let mut pages = self.pages.lock();
        if let Some((&at, _)) = pages.range(iova.0..iova.0 + len).next() {
            return Err(Error::AlreadyMapped(at));
        }
        let mut fail = self.fail_after.lock();
        for i in 0..len / SZ_4K {
            if let Some(n) = fail.as_mut() {
                if *n == 0 {
                    *fail = None;
                    // All or nothing: remove what this call stored.
                    for j in 0..i {
                        pages.remove(&(iova.0 + j * SZ_4K));
                    }
                    return Err(Error::Backend {
                        backend: "test-domain",
                        message: format!("injected map failure at iova {:#x}", iova.0 + i * SZ_4K),
                    });
                }
                *n -= 1;
            }
            pages.insert(
                iova.0 + i * SZ_4K,
                Translation {
                    phys: PhysAddr(phys.0 + i * SZ_4K),
                    access,
                },
            );
        }
        Ok(())
    }
    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        if self.kind != DomainKind::Translated {
            return Err(Error::WrongDomainKind {
                op: "unmap",
                kind: self.kind.name(),
            });
        }
        let mut pages = self.pages.lock();
        let mut done = 0;
        while done < len && pages.remove(&(iova.0 + done)).is_some() {
            done += SZ_4K;
        }
        Ok(done)
    }
    fn translate(&self, iova: Iova) -> Option<Translation> {
        match self.kind {
            DomainKind::Identity => Some(Translation {
                phys: PhysAddr(iova.0),
                access: Access::all(),
            }),
            DomainKind::Blocked => None,
            DomainKind::Translated => {
                let base = crate::addr::align_down(iova.0, SZ_4K);
                self.pages.lock().get(&base).map(|t| Translation {
                    phys: PhysAddr(t.phys.0 + iova.0 - base),
                    access: t.access,
                })
            }
        }
    }
    fn flush(&self) -> Result<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn alloc_iova(&self, len: u64, limit: u64) -> Result<Iova> {
        let exhausted = Error::IovaExhausted { len, limit };
        let size = align_up(len, SZ_4K).ok_or(exhausted.clone())?;
        let align = size.checked_next_power_of_two().ok_or(exhausted.clone())?;
        let hi = limit.min(self.aperture.last().map_or(0, |a| a.0));
        let mut iovas = self.iovas.lock();
        // Reserved regions are allocations nobody frees.
        let mut taken = iovas.clone();
        for r in &self.reserved {
            taken.insert(r.range.start().0, r.range.len());
        }
        let start = alloc_top_down(&taken, self.aperture.start().0.max(SZ_4K), hi, size, align)
            .ok_or(exhausted)?;
        iovas.insert(start, size);
        Ok(Iova(start))
    }
    fn free_iova(&self, iova: Iova, len: u64) -> Result<()> {
        let mut iovas = self.iovas.lock();
        match iovas.get(&iova.0) {
            Some(&size) if align_up(len, SZ_4K) == Some(size) => {
                iovas.remove(&iova.0);
                Ok(())
            }
            _ => Err(Error::NotMapped(iova.0)),
        }
    }
}

#[derive(Debug)]
struct ExporterState {
    residency: Residency,
    revoked: bool,
    next_grant: u64,
    /// grant id → (grant, first window slot)
    grants: HashMap<u64, (ExportGrant, u64)>,
    /// window slots in use: first slot → count
    slots: BTreeMap<u64, u64>,
    /// Ranges of the object handed out by `allocate`: start → length.
    carved: BTreeMap<u64, u64>,
    /// grant id → start of the range `allocate` carved for it.
    carved_by: HashMap<u64, u64>,
}

/// Device memory exported through a BAR window of `window_pages` 4 KiB pages: a GPU whose VRAM
/// object is `size` bytes and which can move it to host RAM.
#[derive(Debug)]
pub struct TestExporter {
    id: ExporterId,
    bar_cpu: PhysAddr,
    bar_bus: BusAddr,
    window_pages: u64,
    size: u64,
    movable: bool,
    pinnable: bool,
    /// Where the memory lands in host RAM after a migration.
    host_base: PhysAddr,
    host_numa: u32,
    state: Mutex<ExporterState>,
}

impl TestExporter {
    /// Exports `size` bytes of `device`'s memory of `kind` through its largest BAR of the
    /// topology, which holds at most `window_pages` pages at once.
    pub fn new(
        topology: &Topology,
        device: PciAddr,
        size: u64,
        window_pages: u64,
        kind: MemoryKind,
    ) -> Result<Self> {
        let MemoryKind { movable, pinnable } = kind;
        let bar = topology
            .endpoint(device)?
            .bars
            .iter()
            .max_by_key(|b| b.size)
            .copied()
            .ok_or_else(|| {
                Error::InvalidTopology(format!("device {device} has no BAR to export"))
            })?;
        let window_pages = window_pages.min(bar.size / SZ_4K);
        Ok(Self {
            id: ExporterId::fresh(),
            bar_cpu: bar.cpu,
            bar_bus: bar.bus,
            window_pages,
            size,
            movable,
            pinnable,
            host_base: PhysAddr(0x1_0000_0000),
            host_numa: topology.numa_of(device)?,
            state: Mutex::new(ExporterState {
                residency: Residency::Device(device),
                revoked: false,
                next_grant: 0,
                grants: HashMap::new(),
                slots: BTreeMap::new(),
                carved: BTreeMap::new(),
                carved_by: HashMap::new(),
            }),
        })
    }

    /// Moves the memory to host RAM (call [`Negotiator::invalidate`] first).
    ///
    /// [`Negotiator::invalidate`]: crate::negotiate::Negotiator::invalidate
    pub fn migrate_to_host(&self) {
        self.state.lock().residency = Residency::Host {
            numa: self.host_numa,
        };
    }

    /// Revokes the memory: every later export fails.
    pub fn revoke(&self) {
        self.state.lock().revoked = true;
    }

    /// Grants outstanding.
    pub fn grants(&self) -> usize {
        self.state.lock().grants.len()
    }

    fn grant(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
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
        let slot = if matches!(s.residency, Residency::Device(_)) {
            let used: u64 = s.slots.values().sum();
            let last = self.window_pages.checked_sub(1).ok_or(Error::WindowFull {
                exporter: self.id,
                requested: range.len(),
                available: 0,
            })?;
            alloc_top_down(&s.slots, 0, last, pages, 1).ok_or(Error::WindowFull {
                exporter: self.id,
                requested: range.len(),
                available: (self.window_pages - used) * SZ_4K,
            })?
        } else {
            0
        };
        if matches!(s.residency, Residency::Device(_)) {
            s.slots.insert(slot, pages);
        }
        s.next_grant += 1;
        let g = ExportGrant {
            exporter: self.id,
            id: s.next_grant,
            range,
            pinned: pin,
        };
        s.grants.insert(g.id, (g.clone(), slot));
        Ok(g)
    }
}

impl MemoryExporter for TestExporter {
    fn id(&self) -> ExporterId {
        self.id
    }
    fn info(&self) -> ExporterInfo {
        let residency = self.state.lock().residency;
        let bus_window = match residency {
            Residency::Device(_) => AddrRange::new(self.bar_bus, self.window_pages * SZ_4K),
            Residency::Host { .. } => AddrRange::new(BusAddr(self.host_base.0), self.size),
        }
        .unwrap_or_else(|_| unreachable!("checked at construction"));
        ExporterInfo {
            residency,
            size: self.size,
            movable: self.movable,
            pinnable: self.pinnable,
            bus_window,
        }
    }
    fn export(&self, range: AddrRange<Offset>, pin: bool) -> Result<ExportGrant> {
        let whole = AddrRange::new(Offset(0), self.size)?;
        if !whole.contains_range(&range) || range.is_empty() {
            return Err(Error::OutOfBounds {
                kind: "offset",
                start: range.start().0,
                len: range.len(),
                limit_start: 0,
                limit_len: self.size,
            });
        }
        self.grant(range, pin)
    }
    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        // Fresh bytes: a page-aligned range of the object no other allocation holds.
        let size = align_up(len, SZ_4K)
            .filter(|&s| s > 0)
            .ok_or(Error::EmptyRange { what: "allocation" })?;
        let at = {
            let mut s = self.state.lock();
            let used: u64 = s.carved.values().sum();
            let at = alloc_top_down(&s.carved, 0, self.size.saturating_sub(1), size, SZ_4K)
                .filter(|_| self.size > 0)
                .ok_or(Error::WindowFull {
                    exporter: self.id,
                    requested: len,
                    available: self.size - used,
                })?;
            s.carved.insert(at, size);
            at
        };
        let granted = AddrRange::new(Offset(at), size).and_then(|r| self.export(r, pin));
        let mut s = self.state.lock();
        match granted {
            Ok(g) => {
                s.carved_by.insert(g.id, at);
                Ok(g)
            }
            Err(e) => {
                s.carved.remove(&at);
                Err(e)
            }
        }
    }
    fn chunks(&self, grant: &ExportGrant) -> Result<Vec<Chunk>> {
        let s = self.state.lock();
        let (g, slot) = s
            .grants
            .get(&grant.id)
            .filter(|(g, _)| g.exporter == grant.exporter)
            .ok_or(Error::UnknownGrant {
                exporter: self.id,
                grant: grant.id,
            })?;
        let span = g.range.pages(SZ_4K)?;
        let (off, len) = (span.start(), span.len());
        Ok(vec![match s.residency {
            Residency::Device(_) => Chunk {
                offset: off,
                len,
                phys: PhysAddr(self.bar_cpu.0 + slot * SZ_4K),
                bus: BusAddr(self.bar_bus.0 + slot * SZ_4K),
                mmio: true,
            },
            Residency::Host { .. } => {
                let at = self.host_base.0 + off.0;
                Chunk {
                    offset: off,
                    len,
                    phys: PhysAddr(at),
                    bus: BusAddr(at),
                    mmio: false,
                }
            }
        }])
    }
    fn release(&self, grant: &ExportGrant) -> Result<()> {
        let mut s = self.state.lock();
        let unknown = Error::UnknownGrant {
            exporter: self.id,
            grant: grant.id,
        };
        // Another exporter's grant is unknown here, whatever its id.
        if grant.exporter != self.id {
            return Err(unknown);
        }
        let (_, slot) = s.grants.remove(&grant.id).ok_or(unknown)?;
        s.slots.remove(&slot);
        if let Some(at) = s.carved_by.remove(&grant.id) {
            s.carved.remove(&at);
        }
        Ok(())
    }
}

/// Host RAM: offsets are CPU physical addresses; bounce buffers come from a pool at its top.
#[derive(Debug)]
pub struct TestHostMemory {
    id: ExporterId,
    ram: AddrRange<PhysAddr>,
    pool: AddrRange<PhysAddr>,
    state: Mutex<HostState>,
}

#[derive(Debug, Default)]
struct HostState {
    next_grant: u64,
    grants: HashMap<u64, ExportGrant>,
    /// Bounce-pool allocations: start → length.
    pool: BTreeMap<u64, u64>,
}

impl TestHostMemory {
    /// `ram_bytes` of RAM from physical 0; the top `pool_bytes` serve bounce buffers.
    pub fn new(ram_bytes: u64, pool_bytes: u64) -> Self {
        let ram = AddrRange::new(PhysAddr(0), ram_bytes).unwrap_or_else(|_| unreachable!());
        let pool = AddrRange::new(
            PhysAddr(ram_bytes.saturating_sub(pool_bytes)),
            pool_bytes.min(ram_bytes),
        )
        .unwrap_or_else(|_| unreachable!());
        Self {
            id: ExporterId::fresh(),
            ram,
            pool,
            state: Mutex::default(),
        }
    }

    /// Grants outstanding.
    pub fn grants(&self) -> usize {
        self.state.lock().grants.len()
    }

    fn insert(&self, range: AddrRange<Offset>, pin: bool, pool_slot: Option<u64>) -> ExportGrant {
        let mut s = self.state.lock();
        s.next_grant += 1;
        let g = ExportGrant {
            exporter: self.id,
            id: s.next_grant,
            range,
            pinned: pin,
        };
        s.grants.insert(g.id, g.clone());
        if let Some(at) = pool_slot {
            s.pool.insert(at, range.len());
        }
        g
    }
}

impl MemoryExporter for TestHostMemory {
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
        Ok(self.insert(range, pin, None))
    }
    fn allocate(&self, len: u64, pin: bool) -> Result<ExportGrant> {
        let size = align_up(len, SZ_4K).ok_or(Error::EmptyRange {
            what: "bounce buffer",
        })?;
        let at = {
            let s = self.state.lock();
            let used: u64 = s.pool.values().sum();
            alloc_top_down(
                &s.pool,
                self.pool.start().0,
                self.pool.last().map_or(0, |l| l.0),
                size,
                SZ_4K,
            )
            .ok_or(Error::WindowFull {
                exporter: self.id,
                requested: len,
                available: self.pool.len() - used,
            })?
        };
        Ok(self.insert(AddrRange::new(Offset(at), size)?, pin, Some(at)))
    }
    fn chunks(&self, grant: &ExportGrant) -> Result<Vec<Chunk>> {
        let s = self.state.lock();
        let g = s
            .grants
            .get(&grant.id)
            .filter(|g| g.exporter == grant.exporter)
            .ok_or(Error::UnknownGrant {
                exporter: self.id,
                grant: grant.id,
            })?;
        let span = g.range.pages(SZ_4K)?;
        Ok(vec![Chunk {
            offset: span.start(),
            len: span.len(),
            phys: PhysAddr(span.start().0),
            bus: BusAddr(span.start().0),
            mmio: false,
        }])
    }
    fn release(&self, grant: &ExportGrant) -> Result<()> {
        let mut s = self.state.lock();
        let unknown = Error::UnknownGrant {
            exporter: self.id,
            grant: grant.id,
        };
        // Another exporter's grant is unknown here, whatever its id.
        if grant.exporter != self.id {
            return Err(unknown);
        }
        let g = s.grants.remove(&grant.id).ok_or(unknown)?;
        s.pool.remove(&g.range.start().0);
        Ok(())
    }
}

/// An importer that records the invalidations it gets and can be told to fail them.
#[derive(Debug)]
pub struct TestImporter {
    device: PciAddr,
    caps: ImporterCaps,
    invalidations: Mutex<Vec<Invalidation>>,
    fail: AtomicBool,
    calls: AtomicUsize,
}

impl TestImporter {
    /// An importer at `device` with `caps`.
    pub fn new(device: PciAddr, caps: ImporterCaps) -> Self {
        Self {
            device,
            caps,
            invalidations: Mutex::default(),
            fail: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
        }
    }

    /// Notices received so far.
    pub fn invalidations(&self) -> Vec<Invalidation> {
        self.invalidations.lock().clone()
    }

    /// Makes later invalidations fail (or succeed again).
    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, Ordering::Relaxed);
    }
}

impl DmaImporter for TestImporter {
    fn device(&self) -> PciAddr {
        self.device
    }
    fn caps(&self) -> ImporterCaps {
        self.caps
    }
    fn invalidate(&self, notice: &Invalidation) -> Result<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.fail.load(Ordering::Relaxed) {
            return Err(Error::Backend {
                backend: "test-importer",
                message: "could not quiesce the queue".into(),
            });
        }
        self.invalidations.lock().push(notice.clone());
        Ok(())
    }
}

/// A platform of a topology, one [`TestDomain`] per device (made on first use with the default
/// kind) and a [`TestHostMemory`] of 64 GiB with a 64 MiB bounce pool.
#[derive(Debug)]
pub struct TestPlatform {
    topology: Mutex<Arc<Topology>>,
    default_kind: DomainKind,
    domains: Mutex<HashMap<PciAddr, Arc<TestDomain>>>,
    host: Arc<TestHostMemory>,
    observer: Option<Arc<dyn crate::negotiate::MappingObserver>>,
}

impl TestPlatform {
    /// A platform whose devices get domains of `default_kind`.
    pub fn new(topology: Topology, default_kind: DomainKind) -> Self {
        Self {
            topology: Mutex::new(Arc::new(topology)),
            default_kind,
            domains: Mutex::default(),
            host: Arc::new(TestHostMemory::new(64 << 30, 64 << 20)),
            observer: None,
        }
    }

    /// The same platform, reporting mappings to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn crate::negotiate::MappingObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Replaces the topology (a hot-plug or an ACS change).
    pub fn set_topology(&self, topology: Topology) {
        *self.topology.lock() = Arc::new(topology);
    }

    /// Gives a device its own domain.
    pub fn set_domain(&self, device: PciAddr, domain: TestDomain) {
        self.domains.lock().insert(device, Arc::new(domain));
    }

    /// The domain of a device, as its concrete type.
    pub fn test_domain(&self, device: PciAddr) -> Result<Arc<TestDomain>> {
        self.topology.lock().endpoint(device)?;
        Ok(self
            .domains
            .lock()
            .entry(device)
            .or_insert_with(|| Arc::new(TestDomain::new(self.default_kind)))
            .clone())
    }

    /// Host RAM, as its concrete type.
    pub fn test_host(&self) -> Arc<TestHostMemory> {
        self.host.clone()
    }
}

impl Platform for TestPlatform {
    fn topology(&self) -> Arc<Topology> {
        self.topology.lock().clone()
    }
    fn domain(&self, device: PciAddr) -> Result<Arc<dyn IommuDomain>> {
        Ok(self.test_domain(device)?)
    }
    fn host_memory(&self) -> Arc<dyn MemoryExporter> {
        self.host.clone()
    }
    fn observer(&self) -> Option<Arc<dyn crate::negotiate::MappingObserver>> {
        self.observer.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_down_allocation_respects_alignment_and_holes() {
        let mut taken = BTreeMap::new();
        assert_eq!(
            alloc_top_down(&taken, 0, 0xffff, 0x1000, 0x1000),
            Some(0xf000)
        );
        taken.insert(0xf000, 0x1000);
        assert_eq!(
            alloc_top_down(&taken, 0, 0xffff, 0x2000, 0x2000),
            Some(0xc000)
        );
        taken.insert(0x1000, 0xe000);
        assert_eq!(alloc_top_down(&taken, 0, 0xffff, 0x1000, 0x1000), Some(0));
        assert_eq!(alloc_top_down(&taken, 0x800, 0xffff, 0x1000, 0x1000), None);
    }

    #[test]
    fn top_down_allocation_handles_nested_reservations() {
        // An MSI window inside a PCI window, both reserved.
        let taken = BTreeMap::from([(0xf000_0000, 0x1000_0000), (0xfee0_0000, 0x10_0000)]);
        assert_eq!(
            alloc_top_down(&taken, 0x1000, 0xffff_ffff, 0x1000, 0x1000),
            Some(0xefff_f000)
        );
    }

    proptest::proptest! {
        #[test]
        fn top_down_allocation_never_overlaps(
            taken in proptest::collection::btree_map(0u64..64, 1u64..8, 0..10),
            len in 1u64..8,
            hi in 0u64..80,
        ) {
            let taken: BTreeMap<u64, u64> = taken.into_iter().map(|(s, l)| (s * 0x1000, l * 0x1000)).collect();
            let (len, hi) = (len * 0x1000, hi * 0x1000 + 0xfff);
            let got = alloc_top_down(&taken, 0, hi, len, 0x1000);
            // The reference: the highest aligned start whose range is free and below hi.
            let free = |s: u64| taken.iter().all(|(&t, &l)| s + len <= t || t + l <= s);
            let want = (0..=hi / 0x1000).rev().map(|p| p * 0x1000).find(|&s| s + len - 1 <= hi && free(s));
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn domain_alloc_stays_below_limit_and_out_of_reserved() {
        let d = TestDomain::new(DomainKind::Translated);
        let a = d.alloc_iova(0x10_0000, 0xffff_ffff).unwrap();
        assert!(a.0 + 0x10_0000 <= 0x1_0000_0000);
        assert!(
            a.0 + 0x10_0000 <= 0xfee0_0000 || a.0 >= 0xfef0_0000,
            "{a:?}"
        );
        assert!(d.alloc_iova(1 << 40, 0xffff_ffff).is_err());
        d.free_iova(a, 0x10_0000).unwrap();
        assert!(d.free_iova(a, 0x10_0000).is_err());
    }

    #[test]
    fn domain_map_is_all_or_nothing() {
        let d = TestDomain::new(DomainKind::Translated);
        d.fail_after(3);
        assert!(d
            .map(Iova(0x10000), PhysAddr(0x20000), 0x8000, Access::READ)
            .is_err());
        assert_eq!(d.mapped_pages(), 0);
        d.map(Iova(0x10000), PhysAddr(0x20000), 0x8000, Access::READ)
            .unwrap();
        assert_eq!(
            d.map(Iova(0x17000), PhysAddr(0), 0x1000, Access::READ),
            Err(Error::AlreadyMapped(0x17000))
        );
        assert_eq!(d.translate(Iova(0x10042)).unwrap().phys, PhysAddr(0x20042));
        assert_eq!(d.unmap(Iova(0x10000), 0x10000).unwrap(), 0x8000);
        assert!(TestDomain::new(DomainKind::Identity)
            .map(Iova(0), PhysAddr(0), 0x1000, Access::READ)
            .is_err());
    }
}
