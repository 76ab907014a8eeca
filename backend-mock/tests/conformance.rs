//! The conformance suite against the simulated machine: the reference domain alone, every
//! device's full domain stack as the machine holds it (fault injector, sanitizer, `SoftIommu` or
//! the reference underneath), the GPU and host-memory exporters, the platform and the NIC.
//! `cargo test --workspace conformance` runs these with every other backend's.

use backend_mock::{
    DomainChoice, FlushMode, Machine, MockConfig, MockDomain, MockPlatform, SanitizerMode,
};
use p2p_core::conformance::{
    check_domain, check_domain_with, check_exporter, check_importer, check_platform, stress_domain,
    DomainConfig, StressConfig,
};
use p2p_core::prelude::*;
use p2p_core::topology::presets;
use std::sync::Arc;

const GPU: &str = "0000:03:00.0";
const NIC: &str = "0000:05:00.0";

fn addr(s: &str) -> PciAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn topo() -> Topology {
    presets::workstation().unwrap_or_else(|e| panic!("{e}"))
}

/// The checks misuse domains on purpose (unmaps of nothing, say), which the sanitizer reports:
/// it collects here instead of panicking.
fn config(domains: DomainChoice, flush: FlushMode) -> MockConfig {
    MockConfig {
        domains,
        flush,
        sanitizer: SanitizerMode::Collect,
        ..MockConfig::new(11)
    }
}

/// The domain stack of the NIC on a fresh machine built with `cfg`.
fn stack(cfg: MockConfig) -> impl Fn() -> Arc<dyn IommuDomain> {
    move || {
        let p = MockPlatform::new(topo(), &cfg).unwrap_or_else(|e| panic!("{e}"));
        let d = p.iommu(addr(NIC)).unwrap_or_else(|e| panic!("{e}"));
        d.clone() as Arc<dyn IommuDomain>
    }
}

#[test]
fn conformance_mock_domain_reference() {
    let strict = || {
        Arc::new(MockDomain::new(
            DomainKind::Translated,
            FlushMode::Strict,
            vec![],
        ))
    };
    check_domain(move || strict() as Arc<dyn IommuDomain>).unwrap_or_else(|v| panic!("{v}"));
    for batch in [1, 4] {
        let lazy = move || {
            let d = MockDomain::new(DomainKind::Translated, FlushMode::Lazy { batch }, vec![]);
            Arc::new(d) as Arc<dyn IommuDomain>
        };
        check_domain_with(lazy, &DomainConfig::lazy(batch))
            .unwrap_or_else(|v| panic!("batch {batch}: {v}"));
    }
    for kind in [DomainKind::Identity, DomainKind::Blocked] {
        let d = move || Arc::new(MockDomain::new(kind, FlushMode::Strict, vec![]));
        check_domain(move || d() as Arc<dyn IommuDomain>).unwrap_or_else(|v| panic!("{v}"));
    }
}

#[test]
fn conformance_mock_domain_stack_soft_iommu() {
    for choice in [DomainChoice::SoftVtd, DomainChoice::SoftArm] {
        let name = format!("{choice:?}");
        check_domain(stack(config(choice.clone(), FlushMode::Strict)))
            .unwrap_or_else(|v| panic!("{name}, strict: {v}"));
        let lazy = config(choice, FlushMode::Lazy { batch: 4 });
        check_domain_with(stack(lazy), &DomainConfig::lazy(4))
            .unwrap_or_else(|v| panic!("{name}, lazy: {v}"));
    }
}

#[test]
fn conformance_mock_domain_stack_reference() {
    check_domain(stack(config(DomainChoice::Reference, FlushMode::Strict)))
        .unwrap_or_else(|v| panic!("{v}"));
}

/// The stack under concurrent use: the sanitizer's records and the fault wrapper's held-back
/// frees must keep the domain's answers as the contract says, from several threads at once.
#[test]
fn conformance_mock_domain_stack_under_stress() {
    for choice in [DomainChoice::SoftVtd, DomainChoice::Reference] {
        for seed in [1, 2] {
            let d = stack(config(choice.clone(), FlushMode::Strict))();
            stress_domain(d, &StressConfig::quick(seed))
                .unwrap_or_else(|e| panic!("{choice:?}: {e}"));
        }
    }
}

fn machine() -> Machine {
    let cfg = config(DomainChoice::SoftVtd, FlushMode::Strict);
    Machine::new(topo(), &cfg).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn conformance_mock_gpu_with_revoke() {
    let m = machine();
    let gpu = m
        .gpu(addr(GPU), 1 << 20, 64, MemoryKind::MOVABLE)
        .unwrap_or_else(|e| panic!("{e}"));
    let revoke = || {
        m.revoke(&gpu).unwrap_or_else(|e| panic!("revoke: {e}"));
    };
    check_exporter(&*gpu, Some(&revoke)).unwrap_or_else(|v| panic!("{v}"));
}

#[test]
fn conformance_mock_gpu_unpinnable_then_in_host_ram() {
    let m = machine();
    let gpu = m
        .gpu(addr(GPU), 1 << 20, 64, MemoryKind::DEVICE_PRIVATE)
        .unwrap_or_else(|e| panic!("{e}"));
    check_exporter(&*gpu, None).unwrap_or_else(|v| panic!("unpinnable: {v}"));
    m.migrate(&gpu).unwrap_or_else(|e| panic!("migrate: {e}"));
    check_exporter(&*gpu, None).unwrap_or_else(|v| panic!("in host RAM: {v}"));
}

#[test]
fn conformance_mock_host_memory() {
    let m = machine();
    check_exporter(&**m.platform().host(), None).unwrap_or_else(|v| panic!("{v}"));
}

#[test]
fn conformance_mock_platform_and_nic() {
    for kind in [DomainKind::Translated, DomainKind::Identity] {
        let cfg = MockConfig {
            domain_kind: kind,
            ..config(DomainChoice::SoftVtd, FlushMode::Strict)
        };
        let m = Machine::new(topo(), &cfg).unwrap_or_else(|e| panic!("{e}"));
        check_platform(&**m.platform()).unwrap_or_else(|v| panic!("{kind}: {v}"));
        let caps = ImporterCaps {
            flags: ImporterFlags::ODP | ImporterFlags::P2P,
            dma_mask: dma_mask(48),
            max_segment: 1 << 16,
        };
        let nic = m.nic(addr(NIC), caps).unwrap_or_else(|e| panic!("{e}"));
        check_importer(&*nic).unwrap_or_else(|v| panic!("{kind}: {v}"));
    }
}

/// The machine's fault injector failing each step of a map in turn (its up-front check in
/// `Faulty`, then each page-table frame the SoftIommu allocates): all or nothing every time, on
/// the domain stack as a device sees it.
#[test]
fn conformance_mock_domain_stack_under_faults_at_every_step() {
    use p2p_core::conformance::{check_map_under_faults, DomainConfig, FaultyDomain};
    for domains in [DomainChoice::SoftVtd, DomainChoice::SoftArm] {
        let cfg = config(domains, FlushMode::Strict);
        let factory = || -> FaultyDomain {
            let p = Arc::new(MockPlatform::new(topo(), &cfg).unwrap_or_else(|e| panic!("{e}")));
            let d = p.iommu(addr(NIC)).unwrap_or_else(|e| panic!("{e}")).clone();
            let arm = move |n: Option<u64>| match n {
                Some(n) => p.faults().fail_nth(n),
                None => p.faults().clear(),
            };
            (d as Arc<dyn IommuDomain>, Box::new(arm))
        };
        check_map_under_faults(factory, &DomainConfig::strict())
            .unwrap_or_else(|v| panic!("{:?}: {v}", cfg.domains));
    }
}

/// A domain that remembers the file each `map_piece` brought, over the reference domain.
#[derive(Debug)]
struct FileRecorder {
    inner: MockDomain,
    seen: parking_lot::Mutex<Vec<Option<u64>>>,
}

impl IommuDomain for FileRecorder {
    p2p_core::forward_domain_description!(inner);
    fn map_attrs(&self, i: Iova, p: PhysAddr, len: u64, a: Access, at: MapAttrs) -> Result<()> {
        self.seen.lock().push(None);
        self.inner.map_attrs(i, p, len, a, at)
    }
    fn map_piece(&self, i: Iova, piece: &MapPiece, a: Access) -> Result<()> {
        self.seen.lock().push(piece.file.as_ref().map(|f| f.offset));
        self.inner
            .map_attrs(i, piece.phys, piece.len, a, piece.attrs)
    }
    fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        self.inner.unmap(iova, len)
    }
    fn translate(&self, iova: Iova) -> Option<Translation> {
        self.inner.translate(iova)
    }
    fn dma_translate(&self, iova: Iova) -> Option<Translation> {
        self.inner.dma_translate(iova)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn alloc_iova(&self, len: u64, limit: u64) -> Result<Iova> {
        self.inner.alloc_iova(len, limit)
    }
    fn free_iova(&self, iova: Iova, len: u64) -> Result<()> {
        self.inner.free_iova(iova, len)
    }
}

/// The machine's stack (fault injector, sanitizer) and `Traced` hand `map_piece`'s file down to
/// the domain: a domain that maps by file (iommufd) under them still gets it.
#[test]
fn the_wrappers_forward_the_file_of_a_piece() {
    use p2p_core::conformance::check_map_by_file;
    use p2p_core::traits::FileSlice;
    use p2p_core::wrap::Traced;
    let recorder = Arc::new(FileRecorder {
        inner: MockDomain::new(DomainKind::Translated, FlushMode::Strict, vec![]),
        seen: parking_lot::Mutex::new(Vec::new()),
    });
    let inner = recorder.clone();
    let cfg = config(
        DomainChoice::Custom(Arc::new(move |_, _| {
            Ok(Arc::new(Traced::new(inner.clone(), "recorder")) as Arc<dyn IommuDomain>)
        })),
        FlushMode::Strict,
    );
    let d = stack(cfg)();
    let file = FileSlice {
        file: Arc::new(std::fs::File::open("/dev/null").unwrap()),
        offset: 0x5000,
    };
    check_map_by_file(&*d, &DomainConfig::strict(), file).unwrap_or_else(|v| panic!("{v}"));
    let seen = recorder.seen.lock().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|s| *s == Some(0x5000)),
        "{seen:?}"
    );
}
