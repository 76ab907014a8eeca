//! The doubles p2p-core's own tests and doc examples use, and other crates' tests that need no
//! simulated bytes: a domain with an injectable map failure ([`TestDomain`]), an importer that
//! records its invalidations ([`TestImporter`]) and a platform of them ([`TestPlatform`]). The
//! exporters are the backend-free ones of [`export`](crate::export), under the names tests
//! know ([`TestExporter`], [`TestHostMemory`]). Their state lives where the mock backend's
//! lives too ([`reference`](crate::reference), [`GrantBook`](crate::export::GrantBook)): the
//! mock (backend-mock) adds bytes, PCIe routing, an IOTLB, faults and the sanitizer on top, and
//! this module repeats none of it.

use crate::access::Access;
use crate::addr::{AddrRange, Iova, PhysAddr};
use crate::error::{Error, Result};
use crate::fault::FailNth;
use crate::page::SZ_4K;
use crate::pci::PciAddr;
use crate::reference::{Geometry, IovaSpace, PageMap};
use crate::topology::Topology;
use crate::traits::*;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// A translated (or identity, or blocked) domain of 4 KiB pages, keeping its state in the
/// [`reference`](crate::reference) page map and IOVA space.
#[derive(Debug)]
pub struct TestDomain {
    geometry: Geometry,
    pages: Mutex<PageMap>,
    iovas: Mutex<IovaSpace>,
    flushes: AtomicU64,
    /// Injected map failures, counted in page stores.
    fail: Mutex<FailNth>,
}

impl TestDomain {
    /// A domain of `kind` with a 48-bit aperture and the x86 MSI window reserved.
    pub fn new(kind: DomainKind) -> Self {
        Self {
            geometry: Geometry::new(kind, []),
            pages: Mutex::default(),
            iovas: Mutex::default(),
            flushes: AtomicU64::new(0),
            fail: Mutex::default(),
        }
    }

    /// Adds a reserved region (a host-bridge window, say).
    pub fn reserve(&mut self, range: AddrRange<Iova>, kind: ReservedKind) {
        self.geometry.reserve(ReservedRegion { range, kind });
    }

    /// Makes the `n`-th page store from now fail (1 = the next), with [`FailNth`]'s countdown
    /// (the mock's `FaultInjector::fail_nth` counts the same way). The map it is part of
    /// stores nothing (all or nothing) and fails with [`Error::Injected`].
    pub fn fail_nth(&self, n: u64) {
        self.fail.lock().arm(n);
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
    crate::forward_domain_description!(geometry);
    fn map_attrs(&self, i: Iova, p: PhysAddr, len: u64, a: Access, _at: MapAttrs) -> Result<()> {
        self.geometry.check_map(i, p, len)?;
        let mut pages = self.pages.lock();
        pages.check_free(i, len)?;
        if let Some(k) = self.fail.lock().check_many(len / SZ_4K) {
            return Err(Error::Injected {
                point: "page store",
                detail: format!("iova {:#x}", i.0 + k * SZ_4K),
            });
        }
        pages.map(i, p, len, a)
    }
    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        self.geometry.require_translated("unmap")?;
        Ok(self.pages.lock().unmap(iova, len))
    }
    fn translate(&self, iova: Iova) -> Option<Translation> {
        self.geometry
            .translate(iova, || self.pages.lock().translate(iova))
    }
    fn flush(&self) -> Result<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn alloc_iova(&self, len: u64, limit: u64) -> Result<Iova> {
        self.geometry.alloc_iova(&mut self.iovas.lock(), len, limit)
    }
    fn free_iova(&self, iova: Iova, len: u64) -> Result<()> {
        let mut iovas = self.iovas.lock();
        iovas.size_of(iova, len)?;
        iovas.free(iova);
        Ok(())
    }
}

/// A GPU for tests: [`DeviceMemory`](crate::export::DeviceMemory) (a window that places each
/// grant at its own slot) under the name the doubles share.
pub use crate::export::DeviceMemory as TestExporter;

/// Host RAM for tests: [`HostRam`](crate::export::HostRam) under the name the doubles share.
pub use crate::export::HostRam as TestHostMemory;

/// An importer that records the invalidations it gets and can be told to fail them. Aligned to
/// 128 bytes, as a driver's per-device state would be: every mapping writes its reference count,
/// and two importers allocated one after the other would otherwise share a cache line.
#[derive(Debug)]
#[repr(align(128))]
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
            return Err(Error::Injected {
                point: "importer invalidation",
                detail: format!(
                    "{} could not quiesce mapping {}",
                    self.device, notice.mapping
                ),
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
        d.fail_nth(4);
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
