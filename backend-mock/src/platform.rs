//! The simulated machine: a [`MockPlatform`] (topology, memory, domains, host RAM, sanitizer,
//! event log, fault injector) and the [`Machine`] that pairs it with a negotiator and makes GPUs
//! and NICs.

use crate::dma::DmaEngine;
use crate::domain::{FlushMode, MockDomain};
use crate::events::EventLog;
use crate::faults::{FaultInjector, FaultPoint};
use crate::gpu::MockGpu;
use crate::host::MockHostMemory;
use crate::memory::PhysMemory;
use crate::nic::MockNic;
use crate::sanitizer::{Finding, Sanitizer, SanitizerMode};
use crate::wrap::{Faulty, Sanitized};
use backend_iommu::{ArmLpaeS2, FlushPolicy, Format, SoftIommu, VtdSecondLevel};
use p2p_core::addr::{AddrRange, Iova, Offset, PhysAddr};
use p2p_core::export::DeviceMemory;
use p2p_core::negotiate::{InvalidationReport, MappingObserver, Negotiator};
use p2p_core::topology::Topology;
use p2p_core::traits::{
    DomainKind, ImporterCaps, InvalidationKind, IommuDomain, MemoryExporter, MemoryKind, Platform,
    ReservedKind, ReservedRegion,
};
use p2p_core::{Error, PciAddr, Result};
use std::collections::HashMap;
use std::sync::Arc;

/// How to build a machine.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Seeds everything random (fault injection, the story's data).
    pub seed: u64,
    /// Bytes of host RAM, from physical 0.
    pub ram_bytes: u64,
    /// Bytes at the top of RAM kept for bounce buffers.
    pub bounce_pool: u64,
    /// The kind of every device's IOMMU domain.
    pub domain_kind: DomainKind,
    /// Strict or lazy IOTLB invalidation.
    pub flush: FlushMode,
    /// Which domain implementation every translated device gets (wrapped, whatever it is, in
    /// the sanitizer and the fault injector).
    pub domains: DomainChoice,
    /// Reserve every BAR's bus range in every domain (Linux's `iova_reserve_pci_windows`).
    pub reserve_pci_windows: bool,
    /// What the sanitizer does with findings.
    pub sanitizer: SanitizerMode,
}

impl MockConfig {
    /// 4 GiB of RAM, translated strict domains with PCI windows reserved, a panicking sanitizer.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            ram_bytes: 4 << 30,
            bounce_pool: 64 << 20,
            domain_kind: DomainKind::Translated,
            flush: FlushMode::Strict,
            domains: DomainChoice::SoftVtd,
            reserve_pci_windows: true,
            sanitizer: SanitizerMode::Panic,
        }
    }
}

/// Makes the domain of one device, given the regions it must reserve.
pub type DomainFactory =
    Arc<dyn Fn(PciAddr, &[ReservedRegion]) -> Result<Arc<dyn IommuDomain>> + Send + Sync>;

/// The implementation behind every translated device's domain.
#[derive(Clone, Default)]
pub enum DomainChoice {
    /// `SoftIommu<VtdSecondLevel>`, with the configured flush mode: the default, so every mock
    /// test runs the real page-table code.
    #[default]
    SoftVtd,
    /// `SoftIommu<ArmLpaeS2>`.
    SoftArm,
    /// The reference [`MockDomain`] (a map of 4 KiB pages), which [`MockPlatform::mock_domain`]
    /// then hands out for inspection.
    Reference,
    /// Any domain, out-of-tree ones included.
    Custom(DomainFactory),
}

impl std::fmt::Debug for DomainChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DomainChoice::SoftVtd => "SoftVtd",
            DomainChoice::SoftArm => "SoftArm",
            DomainChoice::Reference => "Reference",
            DomainChoice::Custom(_) => "Custom(..)",
        })
    }
}

/// A device's domain as the machine holds it: the chosen implementation, its calls logged and
/// checked by the sanitizer, its faults injected by the machine's injector.
pub type MockIommu = Faulty<Sanitized<Arc<dyn IommuDomain>>>;

/// A `SoftIommu` of format `F` with `reserved` regions and the flush mode's policy, whose
/// page-table frame allocations ask the machine's fault injector ([`FaultPoint::PageTableAlloc`]),
/// so that a map can fail midway through its tables and its rollback is exercised.
fn soft<F: Format>(
    flush: FlushMode,
    reserved: &[ReservedRegion],
    faults: &Arc<FaultInjector>,
    log: &Arc<EventLog>,
) -> Result<Arc<dyn IommuDomain>> {
    let policy = match flush {
        FlushMode::Strict => FlushPolicy::Strict,
        FlushMode::Lazy { batch } => FlushPolicy::Lazy { batch },
    };
    let mut d = SoftIommu::<F>::new(policy)?;
    for r in reserved {
        d.reserve(r.range, r.kind);
    }
    let (faults, log) = (faults.clone(), log.clone());
    d.set_fault_hook(Some(Arc::new(move |iova| {
        faults.should_fail(
            FaultPoint::PageTableAlloc,
            || format!("page-table frame for iova {iova:#x}"),
            &log,
        )
    })));
    Ok(Arc::new(d))
}

/// The simulated platform handed to the negotiator.
#[derive(Debug)]
pub struct MockPlatform {
    topology: Arc<Topology>,
    memory: Arc<PhysMemory>,
    domains: HashMap<PciAddr, Arc<MockIommu>>,
    /// The reference domains, when the machine was built with [`DomainChoice::Reference`].
    reference: HashMap<PciAddr, Arc<MockDomain>>,
    host: Arc<MockHostMemory>,
    log: Arc<EventLog>,
    faults: Arc<FaultInjector>,
    sanitizer: Arc<Sanitizer>,
}

impl MockPlatform {
    /// Builds the platform; every BAR must lie above RAM.
    pub fn new(topology: Topology, config: &MockConfig) -> Result<Self> {
        let log = Arc::new(EventLog::default());
        let faults = Arc::new(FaultInjector::new(config.seed));
        let sanitizer = Arc::new(Sanitizer::new(config.sanitizer, log.clone()));
        let memory = Arc::new(PhysMemory::default());
        let host = Arc::new(MockHostMemory::new(
            config.ram_bytes,
            config.bounce_pool,
            log.clone(),
            memory.clone(),
        ));
        let mut windows = Vec::new();
        for (a, e) in topology.endpoints() {
            for b in &e.bars {
                if b.cpu.0 < config.ram_bytes {
                    return Err(Error::InvalidTopology(format!(
                        "BAR{} of {a} at {:#x} overlaps host RAM (0..{:#x})",
                        b.index, b.cpu.0, config.ram_bytes
                    )));
                }
                windows.push(ReservedRegion {
                    range: AddrRange::new(Iova(b.bus.0), b.size)?,
                    kind: ReservedKind::PciWindow,
                });
            }
        }
        if !config.reserve_pci_windows {
            windows.clear();
        }
        let mut domains = HashMap::new();
        let mut reference = HashMap::new();
        for (a, _) in topology.endpoints() {
            let inner: Arc<dyn IommuDomain> = match (&config.domains, config.domain_kind) {
                (DomainChoice::Custom(make), _) => make(a, &windows)?,
                (DomainChoice::SoftVtd, DomainKind::Translated) => {
                    soft::<VtdSecondLevel>(config.flush, &windows, &faults, &log)?
                }
                (DomainChoice::SoftArm, DomainKind::Translated) => {
                    soft::<ArmLpaeS2>(config.flush, &windows, &faults, &log)?
                }
                // The reference, and every identity or blocked domain (SoftIommu only translates).
                (_, kind) => {
                    let d = Arc::new(MockDomain::new(kind, config.flush, windows.clone()));
                    reference.insert(a, d.clone());
                    d
                }
            };
            let sanitized = Sanitized::new(inner, a, log.clone(), sanitizer.clone());
            let stack = Faulty::new(sanitized, faults.clone(), log.clone());
            domains.insert(a, Arc::new(stack));
        }
        Ok(Self {
            topology: Arc::new(topology),
            memory,
            domains,
            reference,
            host,
            log,
            faults,
            sanitizer,
        })
    }

    pub(crate) fn topology_ref(&self) -> &Topology {
        &self.topology
    }

    /// The bytes.
    pub fn memory(&self) -> &PhysMemory {
        &self.memory
    }

    /// The event log.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// The fault injector.
    pub fn faults(&self) -> &FaultInjector {
        &self.faults
    }

    /// The sanitizer.
    pub fn sanitizer(&self) -> &Sanitizer {
        &self.sanitizer
    }

    /// Host RAM's physical range.
    pub fn host_ram(&self) -> AddrRange<PhysAddr> {
        self.host.ram()
    }

    /// Host RAM as its concrete type.
    pub fn host(&self) -> &Arc<MockHostMemory> {
        &self.host
    }

    /// A device's reference domain, for inspection (its pages, IOTLB, flush queue): there is one
    /// when the machine was built with [`DomainChoice::Reference`] or the device's domain is
    /// identity or blocked; otherwise [`Error::WrongDomainKind`].
    pub fn mock_domain(&self, device: PciAddr) -> Result<&Arc<MockDomain>> {
        self.topology.endpoint(device)?;
        self.reference.get(&device).ok_or(Error::WrongDomainKind {
            op: "inspect as the reference domain",
            kind: "non-reference",
        })
    }

    /// `device`'s domain as the machine holds it (any implementation, sanitized and with
    /// injectable faults).
    pub fn iommu(&self, device: PciAddr) -> Result<&Arc<MockIommu>> {
        self.domains
            .get(&device)
            .ok_or(Error::UnknownDevice(device))
    }
}

impl Platform for MockPlatform {
    fn topology(&self) -> Arc<Topology> {
        self.topology.clone()
    }

    fn topology_generation(&self) -> u64 {
        self.topology.generation()
    }

    fn domain(&self, device: PciAddr) -> Result<Arc<dyn IommuDomain>> {
        Ok(self.iommu(device)?.clone())
    }

    fn domain_kind(&self, device: PciAddr) -> Result<DomainKind> {
        Ok(self.iommu(device)?.kind())
    }

    fn host_memory(&self) -> Arc<dyn MemoryExporter> {
        self.host.clone()
    }

    fn observer(&self) -> Option<Arc<dyn MappingObserver>> {
        Some(self.sanitizer.clone())
    }
}

/// A simulated machine: the platform, a negotiator on it, and the devices made on it.
///
/// Dropping it reports every mapping still live as leaked (a panic in
/// [`SanitizerMode::Panic`]); [`Machine::finish`] does the same and returns all findings.
#[derive(Debug)]
pub struct Machine {
    platform: Arc<MockPlatform>,
    negotiator: Negotiator,
    finished: bool,
}

impl Machine {
    /// A machine of `topology` configured by `config`.
    pub fn new(topology: Topology, config: &MockConfig) -> Result<Self> {
        let platform = Arc::new(MockPlatform::new(topology, config)?);
        Ok(Self {
            negotiator: Negotiator::new(platform.clone()),
            platform,
            finished: false,
        })
    }

    /// The platform.
    pub fn platform(&self) -> &Arc<MockPlatform> {
        &self.platform
    }

    /// The negotiator.
    pub fn negotiator(&self) -> &Negotiator {
        &self.negotiator
    }

    /// A GPU exporting `size` bytes of memory of `kind` in `device`'s largest BAR through a
    /// window of `window_pages` 4 KiB pages, with a migration target carved out of host RAM.
    pub fn gpu(
        &self,
        device: PciAddr,
        size: u64,
        window_pages: u64,
        kind: MemoryKind,
    ) -> Result<Arc<MockGpu>> {
        let topo = self.platform.topology_ref();
        let mem = DeviceMemory::new(topo, device, size, window_pages, kind)?.linear()?;
        let host_base = self.platform.host.carve(size)?;
        Ok(Arc::new(MockGpu::new(
            mem.with_host_base(host_base),
            self.platform.memory.clone(),
            self.platform.log.clone(),
            self.platform.faults.clone(),
        )))
    }

    /// A NIC at `device` with `caps`.
    pub fn nic(&self, device: PciAddr, caps: ImporterCaps) -> Result<Arc<MockNic>> {
        self.platform.topology_ref().endpoint(device)?;
        Ok(Arc::new(MockNic::new(device, caps, self.platform.clone())))
    }

    /// The DMA engine of `device`, whose requests above `dma_mask` are refused: for an importer
    /// of your own (its invalidation, its capabilities) whose DMA the machine routes, checks
    /// and applies like a [`MockNic`]'s.
    ///
    /// ```
    /// use backend_mock::{DmaEngine, Machine, MockConfig};
    /// use p2p_core::prelude::*;
    /// use p2p_core::topology::presets;
    /// use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
    ///
    /// /// An out-of-tree importer: an NVMe controller that counts the invalidations it gets.
    /// #[derive(Debug)]
    /// struct Nvme { engine: DmaEngine, caps: ImporterCaps, told: AtomicUsize }
    ///
    /// impl DmaImporter for Nvme {
    ///     fn device(&self) -> PciAddr { self.engine.device() }
    ///     fn caps(&self) -> ImporterCaps { self.caps }
    ///     fn invalidate(&self, _: &Invalidation) -> p2p_core::Result<()> {
    ///         self.told.fetch_add(1, Ordering::Relaxed);
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # fn main() -> p2p_core::Result<()> {
    /// let m = Machine::new(presets::workstation()?, &MockConfig::new(3))?;
    /// let gpu = m.gpu("0000:03:00.0".parse()?, 1 << 20, 256, MemoryKind::MOVABLE)?;
    /// let caps = ImporterCaps { flags: ImporterFlags::ODP | ImporterFlags::P2P, dma_mask: dma_mask(64), max_segment: 0 };
    /// let nvme: PciAddr = "0000:05:00.0".parse()?;
    /// let nvme = Arc::new(Nvme { engine: m.dma_engine(nvme, caps.dma_mask)?, caps, told: AtomicUsize::new(0) });
    ///
    /// let (exp, imp): (Arc<dyn MemoryExporter>, Arc<dyn DmaImporter>) = (gpu.clone(), nvme.clone());
    /// let map = m.negotiator().map(&exp, &imp, AddrRange::new(Offset(0), 4096)?, Access::WRITE, &Policy::default())?;
    /// nvme.engine.dma_write(map.segments()?[0].addr, b"from nvme").unwrap();
    /// assert_eq!(gpu.cpu_read(0, 9), b"from nvme");
    /// m.migrate(&gpu)?; // the mapping is invalidated: the importer is told
    /// assert_eq!(nvme.told.load(Ordering::Relaxed), 1);
    /// drop(map);
    /// assert!(m.finish().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn dma_engine(&self, device: PciAddr, dma_mask: u64) -> Result<DmaEngine> {
        self.platform.topology_ref().endpoint(device)?;
        Ok(DmaEngine::new(device, dma_mask, self.platform.clone()))
    }

    /// Moves a GPU's memory to host RAM: the copy happens inside the invalidation, so no
    /// mapping set up meanwhile can see the old place.
    pub fn migrate(&self, gpu: &MockGpu) -> Result<InvalidationReport> {
        let inv =
            self.negotiator
                .begin_invalidation(gpu.id(), whole(gpu)?, InvalidationKind::Move)?;
        gpu.migrate_to_host();
        Ok(inv.end())
    }

    /// Revokes a GPU's memory inside the invalidation: afterwards no grant can be made. Refused
    /// with [`Error::Pinned`] while a pinned mapping holds it (see [`revoke_forced`](Self::revoke_forced)).
    pub fn revoke(&self, gpu: &MockGpu) -> Result<InvalidationReport> {
        let inv =
            self.negotiator
                .begin_invalidation(gpu.id(), whole(gpu)?, InvalidationKind::Revoke)?;
        gpu.revoke();
        Ok(inv.end())
    }

    /// Revokes a GPU's memory without asking, as a device reset does: every mapping of it,
    /// pinned ones included, is torn down and dead, and DMA through it afterwards faults (the
    /// sanitizer reports [`FindingKind::AfterRevoke`](crate::FindingKind::AfterRevoke)).
    pub fn revoke_forced(&self, gpu: &MockGpu) -> Result<InvalidationReport> {
        let inv = self.negotiator.begin_forced_revoke(gpu.id(), whole(gpu)?)?;
        gpu.revoke();
        Ok(inv.end())
    }

    /// Reports leaked mappings and returns every finding (Collect mode).
    pub fn finish(mut self) -> Vec<Finding> {
        self.finished = true;
        self.platform.sanitizer.check_leaks();
        self.platform.sanitizer.findings()
    }
}

fn whole(gpu: &MockGpu) -> Result<AddrRange<Offset>> {
    AddrRange::new(Offset(0), gpu.info().size)
}

impl Drop for Machine {
    fn drop(&mut self) {
        if !self.finished {
            self.platform.sanitizer.check_leaks();
        }
    }
}
